//! Finishing a non-blocking connect: a socket is handed over only once its
//! handshake completed.
//!
//! tokio's `TcpSocket::connect` resolves at the first write event when
//! SO_ERROR is clear. mio documents that this does not prove the connection
//! is up: `getpeername` does (ENOTCONN while the SYN is unanswered). A
//! socket handed over early fails later with the connect's own error
//! (EHOSTUNREACH after ARP gives up), once the relay has started, too late to
//! fail over to another endpoint of a Service. Seen once in CI as a relay
//! reset 3 s after a "successful" connect to a dead endpoint.
use std::io;

use tokio::{io::Interest, net::TcpStream};

/// Events a connect may take before it is given up as stuck: each wait is
/// for a new edge, so only a socket whose readiness keeps firing while it
/// stays unconnected can use them up.
const MAX_WAITS: usize = 64;

/// Waits until `stream` is connected: Ok once `peer_addr` answers, the
/// connect's error if it failed.
pub async fn established(stream: TcpStream) -> io::Result<TcpStream> {
    for _ in 0..MAX_WAITS {
        match stream.peer_addr() {
            Ok(_) => return Ok(stream),
            Err(e) if e.raw_os_error() != Some(libc::ENOTCONN) => return Err(e),
            Err(_) => {}
        }
        if let Some(e) = stream.take_error()? {
            return Err(e);
        }
        if is_closed(&stream)? {
            // Closed with its error already taken: still a failed connect.
            return Err(io::Error::from(io::ErrorKind::ConnectionRefused));
        }
        // Still in SYN_SENT: forget the event that woke us and wait for the
        // next one (established or failed).
        let _ = stream.try_io(Interest::WRITABLE, || {
            Err::<(), _>(io::ErrorKind::WouldBlock.into())
        });
        stream.writable().await?;
    }
    Err(io::Error::new(
        io::ErrorKind::TimedOut,
        "connect kept signalling readiness without completing",
    ))
}

/// The socket is in TCP_CLOSE (per TCP_INFO).
fn is_closed(stream: &TcpStream) -> io::Result<bool> {
    use std::os::fd::AsRawFd;
    let mut info: libc::tcp_info = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
    // SAFETY: `info` is a tcp_info of `len` bytes that outlives the call.
    let rc = unsafe {
        libc::getsockopt(
            stream.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            (&mut info as *mut libc::tcp_info).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    // TCP_CLOSE in include/net/tcp_states.h.
    const TCP_CLOSE: u8 = 7;
    Ok(info.tcpi_state == TCP_CLOSE)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::net::{TcpListener, TcpSocket};

    use super::*;

    /// A loopback listener whose accept queue is full: the kernel drops
    /// further SYNs, so a new connect stays in SYN_SENT.
    async fn full_listener() -> (std::net::TcpListener, Vec<std::net::TcpStream>) {
        let socket = socket2::Socket::new(
            socket2::Domain::IPV4,
            socket2::Type::STREAM,
            Some(socket2::Protocol::TCP),
        )
        .unwrap();
        socket
            .bind(
                &"127.0.0.1:0"
                    .parse::<std::net::SocketAddr>()
                    .unwrap()
                    .into(),
            )
            .unwrap();
        socket.listen(0).unwrap();
        let listener: std::net::TcpListener = socket.into();
        let addr = listener.local_addr().unwrap();
        // Backlog 0 admits one completed connection; a couple more make sure
        // the queue is over its limit whatever the kernel rounds it to.
        let fillers = (0..3)
            .filter_map(|_| {
                let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)
                    .ok()?;
                s.set_nonblocking(true).ok()?;
                let _ = s.connect(&addr.into());
                Some(s.into())
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(100)).await;
        (listener, fillers)
    }

    #[tokio::test]
    async fn a_socket_still_connecting_is_not_handed_over() {
        let (listener, _fillers) = full_listener().await;
        let addr = listener.local_addr().unwrap();
        let socket =
            socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        socket.set_nonblocking(true).unwrap();
        let _ = socket.connect(&addr.into());
        let std_stream: std::net::TcpStream = socket.into();
        // Registered while in SYN_SENT, as tokio's connect leaves a socket
        // after a spurious event.
        let stream = TcpStream::from_std(std_stream).unwrap();
        assert!(
            stream.peer_addr().is_err(),
            "the test needs a socket in SYN_SENT"
        );
        let waited = tokio::time::timeout(Duration::from_millis(300), established(stream)).await;
        assert!(
            waited.is_err(),
            "handed over before the handshake: {waited:?}"
        );
    }

    #[tokio::test]
    async fn a_completed_connect_is_handed_over() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let stream = TcpSocket::new_v4().unwrap().connect(addr).await.unwrap();
        let stream = established(stream).await.unwrap();
        assert_eq!(stream.peer_addr().unwrap(), addr);
    }

    #[tokio::test]
    async fn a_refused_connect_is_an_error() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        let socket =
            socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        socket.set_nonblocking(true).unwrap();
        let _ = socket.connect(&addr.into());
        let stream = TcpStream::from_std(socket.into()).unwrap();
        let e = tokio::time::timeout(Duration::from_secs(5), established(stream))
            .await
            .expect("a refused connect settles at once")
            .unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::ConnectionRefused, "{e}");
    }
}
