//! A cap on the connections one listener holds, for the listeners that are
//! not the proxy's (the CA's gRPC port, the metrics, status and admin
//! endpoints): their request limits bound work, but idle keep-alive
//! connections would otherwise pile up without bound. Past the cap a new
//! connection is closed at once and the open ones are kept, as the proxy's
//! listeners shed (`proxy::admission`).
use std::{
    io,
    net::SocketAddr,
    pin::Pin,
    sync::{Arc, Mutex},
    task::{Context, Poll},
    time::{Duration, Instant},
};

use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::{TcpListener, TcpStream},
    sync::{OwnedSemaphorePermit, Semaphore},
};
use tracing::warn;

/// How many connections one listener may hold, and the line when it is full.
pub struct ConnectionCap {
    name: &'static str,
    max: usize,
    permits: Arc<Semaphore>,
    last_log: Mutex<Option<Instant>>,
}

/// A connection holding its place under a [`ConnectionCap`] until dropped.
pub struct Capped<T> {
    io: T,
    _place: OwnedSemaphorePermit,
}

/// A refused connection is logged at most this often.
const LOG_EVERY: Duration = Duration::from_secs(1);

impl ConnectionCap {
    pub fn new(name: &'static str, max: usize) -> Arc<Self> {
        Arc::new(Self {
            name,
            max,
            permits: Arc::new(Semaphore::new(max)),
            last_log: Mutex::new(None),
        })
    }

    /// `io` with a place, or `None` (and `io` closed) when the cap is full.
    pub fn admit<T>(&self, io: T, peer: Option<SocketAddr>) -> Option<Capped<T>> {
        match self.permits.clone().try_acquire_owned() {
            Ok(place) => Some(Capped { io, _place: place }),
            Err(_) => {
                let mut last = self.last_log.lock().unwrap();
                let now = Instant::now();
                if last.is_none_or(|t| now.duration_since(t) >= LOG_EVERY) {
                    *last = Some(now);
                    warn!(listener = self.name, limit = self.max, src = ?peer, "connection refused: the listener holds its limit of connections");
                }
                None
            }
        }
    }

    /// Places taken now.
    pub fn held(&self) -> usize {
        self.max - self.permits.available_permits()
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Capped<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Capped<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

impl tonic::transport::server::Connected for Capped<TcpStream> {
    type ConnectInfo = tonic::transport::server::TcpConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.io.connect_info()
    }
}

/// A TCP listener for axum whose connections hold places under a cap.
pub struct CappedListener {
    inner: TcpListener,
    cap: Arc<ConnectionCap>,
}

impl CappedListener {
    pub fn new(inner: TcpListener, cap: Arc<ConnectionCap>) -> Self {
        Self { inner, cap }
    }
}

impl axum::serve::Listener for CappedListener {
    type Io = Capped<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            let (io, addr) = axum::serve::Listener::accept(&mut self.inner).await;
            if let Some(io) = self.cap.admit(io, Some(addr)) {
                return (io, addr);
            }
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        self.inner.local_addr()
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    #[tokio::test]
    async fn connections_past_the_cap_are_closed_and_places_come_back() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let cap = ConnectionCap::new("test", 1);
        let mut capped = CappedListener::new(listener, cap.clone());
        let first = TcpStream::connect(addr).await.unwrap();
        let (mut held, _) = axum::serve::Listener::accept(&mut capped).await;
        assert_eq!(cap.held(), 1);
        // The second is accepted by the kernel, then closed by the cap.
        let mut second = TcpStream::connect(addr).await.unwrap();
        let accepting = tokio::spawn(async move {
            let (io, _) = axum::serve::Listener::accept(&mut capped).await;
            io
        });
        let mut buf = [0u8; 1];
        let read = tokio::time::timeout(Duration::from_secs(5), second.read(&mut buf))
            .await
            .expect("the refused connection is closed at once");
        assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
        // The held one still works.
        let mut first = first;
        first.write_all(b"x").await.unwrap();
        held.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"x");
        // Its place, once given back, lets the next one in.
        drop(held);
        assert_eq!(cap.held(), 0);
        let _third = TcpStream::connect(addr).await.unwrap();
        let io = tokio::time::timeout(Duration::from_secs(5), accepting)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(cap.held(), 1);
        drop(io);
    }
}
