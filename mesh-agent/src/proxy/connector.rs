//! Opening the upstream side of a captured connection from inside a pod's
//! netns, and how TCP-to-TCP relays move bytes.
use std::{io, net::SocketAddr};

use socket2::Domain;
use tokio::net::{TcpSocket, TcpStream};

use super::{
    established,
    relay::{self, Transferred},
    zero_copy,
};
use crate::pod::PodContext;

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

    pub async fn relay(self, a: &mut TcpStream, b: &mut TcpStream) -> io::Result<Transferred> {
        match self {
            RelayMode::ZeroCopy => zero_copy::relay(a, b).await,
            RelayMode::Copy => relay::relay(a, b).await,
        }
    }
}

/// A marked TCP connection from inside the pod's netns, optionally from a
/// fixed source address.
pub async fn agent_connect(
    pod: &PodContext,
    bind: Option<SocketAddr>,
    to: SocketAddr,
) -> io::Result<TcpStream> {
    let domain = if to.is_ipv4() {
        Domain::IPV4
    } else {
        Domain::IPV6
    };
    let socket = pod.sockets.socket(domain)?;
    socket.set_mark(mesh_common::AGENT_MARK)?;
    socket.set_tcp_nodelay(true)?;
    if let Some(addr) = bind {
        socket.bind(&addr.into())?;
    }
    let socket = TcpSocket::from_std_stream(std::net::TcpStream::from(socket));
    established::established(socket.connect(to).await?).await
}
