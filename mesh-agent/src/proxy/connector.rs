//! Opening the upstream side of a captured connection from inside a pod's
//! netns, and how TCP-to-TCP relays move bytes.
use std::{io, net::SocketAddr, time::Duration};

use mesh_hbone::relay::{self, Transferred};
use socket2::{Domain, SockRef, TcpKeepalive};
use tokio::net::{TcpSocket, TcpStream};

use super::{established, zero_copy};
use crate::netns::SocketFactory;

/// How a TCP-to-TCP relay moves bytes. Zero-copy splice(2) cannot read what
/// sk_msg redirected into a socket (that sits in the psock's queue, not the
/// socket's), so with sk_msg splicing on, the relay copies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RelayMode {
    ZeroCopy,
    Copy,
}

impl RelayMode {
    pub fn for_sk_msg_splicing(sk_msg_splice: bool) -> Self {
        if sk_msg_splice {
            RelayMode::Copy
        } else {
            RelayMode::ZeroCopy
        }
    }

    /// On failure both sockets are set to close with a reset, so neither
    /// peer mistakes a broken transfer for a complete one (a FIN would look
    /// like the end of the data).
    pub async fn relay(self, a: &mut TcpStream, b: &mut TcpStream) -> io::Result<Transferred> {
        let result = match self {
            RelayMode::ZeroCopy => zero_copy::relay(a, b).await,
            RelayMode::Copy => relay::relay(a, b).await,
        };
        if result.is_err() {
            relay::reset_on_close(a);
            relay::reset_on_close(b);
        }
        result
    }
}

/// TCP keepalive on every socket the agent holds: a peer that vanished
/// (node powered off, cable pulled) is noticed after 10 s idle plus three
/// unanswered probes 5 s apart, instead of never. 10 s is Linkerd's default
/// for its proxies' sockets.
pub fn keepalive(socket: SockRef<'_>) {
    let ka = TcpKeepalive::new()
        .with_time(Duration::from_secs(10))
        .with_interval(Duration::from_secs(5))
        .with_retries(3);
    let _ = socket.set_tcp_keepalive(&ka);
}

/// A TCP connection from inside the pod's netns, optionally from a fixed
/// source address, given up after `timeout` (a destination that drops SYNs
/// would otherwise hold the dial for the kernel's ~2 minutes of SYN
/// retries). The connect programs leave it alone because this process's
/// cgroup makes it, not because of anything on the socket.
pub async fn agent_connect(
    sockets: &SocketFactory,
    bind: Option<SocketAddr>,
    to: SocketAddr,
    timeout: Duration,
) -> io::Result<TcpStream> {
    let domain = if to.is_ipv4() {
        Domain::IPV4
    } else {
        Domain::IPV6
    };
    let socket = sockets.socket(domain)?;
    if let Some(addr) = bind {
        socket.bind(&addr.into())?;
    }
    connect_prepared(socket, to, timeout).await
}

/// `agent_connect` for a socket the caller made in the pod's netns and
/// bound as it needs (see `proxy::delivery`).
pub async fn connect_prepared(
    socket: socket2::Socket,
    to: SocketAddr,
    timeout: Duration,
) -> io::Result<TcpStream> {
    socket.set_tcp_nodelay(true)?;
    keepalive(SockRef::from(&socket));
    let socket = TcpSocket::from_std_stream(std::net::TcpStream::from(socket));
    let connect = async { established::established(socket.connect(to).await?).await };
    tokio::time::timeout(timeout, connect).await.map_err(|_| {
        io::Error::new(
            io::ErrorKind::TimedOut,
            format!(
                "no answer from {to} within {}s (AgentConfig.limits.connectTimeout)",
                timeout.as_secs_f32()
            ),
        )
    })?
}
