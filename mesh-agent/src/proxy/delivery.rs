//! Dialling a pod's app for an admitted inbound connection, from where the
//! pod's `Delivery` says: the client's own address (a transparent socket
//! with the delivery mark, which the pod's netns routes the replies of back
//! here, see `source_ip`; its 4-tuple named to sk_lookup while it connects,
//! so the SYN reaches the app and not the agent's inbound listener), or
//! the reserved loopback source. Every inbound path (plaintext, HBONE, the
//! same-node hand-over) dials through this.
use std::{
    io,
    net::{IpAddr, SocketAddr},
    os::fd::AsRawFd,
    sync::Arc,
    time::Duration,
};

use mesh_common::{DELIVERY_MARK, DELIVERY_MARK_MASK};
use socket2::{Domain, SockRef, Socket};
use tokio::net::TcpStream;
use tracing::warn;

use super::connector::connect_prepared;
use crate::{datapath::Datapath, pod::PodContext, source_ip::DeliveryFrom};

/// Connects to `to` in `pod`'s netns for a connection from `client`;
/// `reserved` is the loopback source the decision named.
pub async fn dial_app(
    pod: &PodContext,
    datapath: &Arc<Datapath>,
    client: SocketAddr,
    to: SocketAddr,
    reserved: SocketAddr,
    timeout: Duration,
) -> io::Result<TcpStream> {
    let domain = if to.is_ipv4() {
        Domain::IPV4
    } else {
        Domain::IPV6
    };
    if let DeliveryFrom::Client(ip) = pod.delivery.from(client, to, reserved) {
        let socket = pod.sockets.socket(domain)?;
        transparent(&socket, ip)?;
        socket.set_mark(DELIVERY_MARK)?;
        socket.bind(&SocketAddr::new(ip, 0).into()).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("binding the delivery to the client's address {ip}: {e}"),
            )
        })?;
        let from = socket
            .local_addr()?
            .as_socket()
            .ok_or_else(|| io::Error::other("the delivery socket has no IP address"))?;
        match datapath.expect_delivery(from, to) {
            Ok(()) => {
                let _expected = Expected { datapath, from, to };
                return connect_prepared(socket, to, timeout).await;
            }
            // A full map (thousands of deliveries connecting at once):
            // this one comes from the reserved source instead.
            Err(e) => {
                warn!(pod = %pod.key, %from, %to, error = %e, "delivery from the client's address not possible; delivering from the reserved source");
            }
        }
    }
    let socket = pod.sockets.socket(domain)?;
    socket.bind(&reserved.into())?;
    connect_prepared(socket, to, timeout).await
}

/// A delivery sk_lookup lets through while it connects; dropped when the
/// dial ends, however it ends (connected, refused, timed out, abandoned).
struct Expected<'a> {
    datapath: &'a Datapath,
    from: SocketAddr,
    to: SocketAddr,
}

impl Drop for Expected<'_> {
    fn drop(&mut self) {
        self.datapath.delivery_connected(self.from, self.to);
    }
}

/// Whether a connection accepted by the agent carries the delivery mark:
/// one of the agent's own deliveries that reached its inbound listener
/// instead of the app (the pod's capture does not know deliveries from a
/// client's address). Marks do not cross into a pod from the network: a
/// packet from outside arrives unmarked, so nothing else carries it but a
/// pod's own connection to itself.
pub fn is_returned_delivery(accepted: &TcpStream) -> bool {
    SockRef::from(accepted)
        .mark()
        .is_ok_and(|m| m & DELIVERY_MARK_MASK == DELIVERY_MARK)
}

/// Lets the socket bind an address its netns does not have (needs
/// CAP_NET_ADMIN or CAP_NET_RAW, which the agent has).
fn transparent(socket: &Socket, ip: IpAddr) -> io::Result<()> {
    let (level, name) = match ip {
        IpAddr::V4(_) => (libc::SOL_IP, libc::IP_TRANSPARENT),
        IpAddr::V6(_) => (libc::SOL_IPV6, libc::IPV6_TRANSPARENT),
    };
    let on: libc::c_int = 1;
    // SAFETY: an int option of the right size on a socket we own.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            level,
            name,
            (&on as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A connected pair over loopback: the accepted end.
    async fn accepted() -> (TcpStream, TcpStream) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        (listener.accept().await.unwrap().0, client)
    }

    #[tokio::test]
    async fn only_the_delivery_mark_under_its_mask_is_a_returned_delivery() {
        let (server, _client) = accepted().await;
        assert!(!is_returned_delivery(&server), "unmarked");
        // Setting a mark needs CAP_NET_ADMIN or CAP_NET_RAW.
        if let Err(e) = SockRef::from(&server).set_mark(DELIVERY_MARK) {
            eprintln!("skipped: cannot set a socket mark here: {e}");
            return;
        }
        assert!(is_returned_delivery(&server));
        // Bits outside the mask are other components' (CNIs use them).
        SockRef::from(&server)
            .set_mark(DELIVERY_MARK | 0x4_0000)
            .unwrap();
        assert!(is_returned_delivery(&server));
        SockRef::from(&server)
            .set_mark(DELIVERY_MARK ^ 0x1)
            .unwrap();
        assert!(!is_returned_delivery(&server));
    }
}
