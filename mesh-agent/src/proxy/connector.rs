//! Opening the upstream side of a captured connection.
use std::{future::Future, io, net::SocketAddr};

use socket2::Domain;
use tokio::{
    io::{AsyncRead, AsyncWrite},
    net::{TcpSocket, TcpStream},
};

use crate::pod::PodContext;

/// Opens the upstream side of an outbound connection on behalf of a pod.
/// The mTLS tunnel (HBONE) is another implementation of this trait.
pub trait Connector: Send + Sync + 'static {
    type Stream: AsyncRead + AsyncWrite + Unpin + Send + 'static;

    fn connect(
        &self,
        from: &PodContext,
        to: SocketAddr,
    ) -> impl Future<Output = io::Result<Self::Stream>> + Send;
}

/// Plain TCP to the original destination, from a socket in the source pod's
/// netns (so the source IP stays the pod's), marked so it is not recaptured.
#[derive(Debug, Clone, Copy, Default)]
pub struct PlaintextConnector;

impl Connector for PlaintextConnector {
    type Stream = TcpStream;

    async fn connect(&self, from: &PodContext, to: SocketAddr) -> io::Result<TcpStream> {
        agent_connect(from, None, to).await
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
    let socket = pod.sockets.socket(domain).await?;
    socket.set_mark(mesh_common::AGENT_MARK)?;
    socket.set_tcp_nodelay(true)?;
    if let Some(addr) = bind {
        socket.bind(&addr.into())?;
    }
    let socket = TcpSocket::from_std_stream(std::net::TcpStream::from(socket));
    socket.connect(to).await
}
