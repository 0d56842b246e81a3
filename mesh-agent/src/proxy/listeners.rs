//! The agent's listeners inside a pod's netns.
use std::{
    io,
    net::{Ipv4Addr, Ipv6Addr, SocketAddr},
    time::Duration,
};

use mesh_hbone::relay::reset;
use socket2::{Domain, SockRef};
use tokio::net::{TcpListener, TcpStream};
use tracing::warn;

use super::{
    admission::{Admitted, Source},
    connector::keepalive,
    state::ProxyState,
};
use crate::{netns::SocketFactory, pod::PodContext};

const BACKLOG: i32 = 1024;

/// A listening socket in the pod's netns, registered with tokio.
pub fn listen(sockets: &SocketFactory, addr: SocketAddr) -> io::Result<TcpListener> {
    let domain = if addr.is_ipv4() {
        Domain::IPV4
    } else {
        Domain::IPV6
    };
    let socket = sockets.socket(domain)?;
    socket.set_reuse_address(true)?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    socket.bind(&addr.into())?;
    socket.listen(BACKLOG)?;
    TcpListener::from_std(std::net::TcpListener::from(socket))
}

/// IPv4 and, when the pod has IPv6, IPv6 listeners on `port` at the
/// loopback (`local_only`) or wildcard address.
pub fn listen_dual(
    sockets: &SocketFactory,
    port: u16,
    local_only: bool,
    want_v6: bool,
) -> io::Result<Vec<TcpListener>> {
    let v4 = if local_only {
        Ipv4Addr::LOCALHOST
    } else {
        Ipv4Addr::UNSPECIFIED
    };
    let mut out = vec![listen(sockets, SocketAddr::from((v4, port)))?];
    if want_v6 {
        let v6 = if local_only {
            Ipv6Addr::LOCALHOST
        } else {
            Ipv6Addr::UNSPECIFIED
        };
        out.push(listen(sockets, SocketAddr::from((v6, port)))?);
    }
    Ok(out)
}

/// Which of a pod's listeners a connection came to, for logs and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Listener {
    Outbound,
    Inbound,
    Hbone,
}

impl Listener {
    pub fn label(self) -> &'static str {
        match self {
            Listener::Outbound => "outbound",
            Listener::Inbound => "inbound",
            Listener::Hbone => "hbone",
        }
    }
}

/// An accepted connection with its place under the connection caps.
pub struct Accepted {
    pub stream: TcpStream,
    pub peer: SocketAddr,
    pub place: Admitted,
}

/// After an accept error that means the process or the system is out of
/// file descriptors or memory, wait this long before accepting again: the
/// error repeats at once otherwise and the loop would spin (hyper and
/// Envoy both back off here).
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// The next connection on `listener` that fits under the caps. Connections
/// past a cap are reset at once (the ones held are kept), counted, and
/// logged at most once a second.
pub async fn accept(
    listener: &TcpListener,
    which: Listener,
    pod: &PodContext,
    state: &ProxyState,
) -> Accepted {
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                let exhausted = matches!(
                    e.raw_os_error(),
                    Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
                );
                if state.admission.should_log() {
                    warn!(pod = %pod.key, listener = which.label(), error = %e, "accept failed");
                }
                if exhausted {
                    state
                        .telemetry
                        .refusals
                        .refused(which.label(), "accept_exhausted");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                }
                continue;
            }
        };
        // The outbound listener's peers are the pod's own apps, all on
        // loopback: only the total cap applies there.
        let source =
            (which != Listener::Outbound).then(|| Source::new(pod.netns_cookie, peer.ip()));
        match state.admission.admit(source) {
            Ok(place) => {
                keepalive(SockRef::from(&stream));
                return Accepted {
                    stream,
                    peer,
                    place,
                };
            }
            Err(shed) => {
                state
                    .telemetry
                    .refusals
                    .refused(which.label(), shed.label());
                if state.admission.should_log() {
                    warn!(pod = %pod.key, listener = which.label(), src = %peer, limit = %shed, "connection shed");
                }
                reset(stream);
            }
        }
    }
}
