//! The agent's listeners inside a pod's netns.
use std::{
    io,
    net::{Ipv4Addr, Ipv6Addr, SocketAddr},
};

use socket2::Domain;
use tokio::net::TcpListener;

use crate::netns::SocketFactory;

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
    socket.set_mark(mesh_common::AGENT_MARK)?;
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
