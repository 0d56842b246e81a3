//! An HBONE stream as a byte stream: the two halves of an HTTP/2 CONNECT
//! stream behind tokio's `AsyncRead` + `AsyncWrite`, so that code written
//! for sockets (an HTTP server or client, a protocol sniffer, a copy loop)
//! can run inside a tunnel. Flow control is kept: received capacity is
//! released only as the reader takes the bytes, and a write waits for send
//! capacity instead of queueing without bound. Shutting the write side down
//! ends the stream (END_STREAM), as a TCP FIN would.
use std::{
    io,
    pin::Pin,
    task::{Context, Poll, ready},
};

use bytes::{Buf, Bytes};
use h2::{Reason, RecvStream, SendStream};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::client::Tunnel;

/// A single write offers at most this much to HTTP/2 at once: larger
/// writes are split so one stream does not ask the connection for an
/// unbounded reservation.
const MAX_WRITE: usize = crate::MAX_FRAME as usize;

/// Whatever holds the two halves of a stream, with anything that must live
/// as long as they do (for a client tunnel, its place on the pooled
/// connection).
pub trait StreamHalves: Send + Unpin + 'static {
    fn send(&mut self) -> &mut SendStream<Bytes>;
    fn recv(&mut self) -> &mut RecvStream;
}

/// The halves an accepted server stream gives (`Incoming::accept`).
impl StreamHalves for (SendStream<Bytes>, RecvStream) {
    fn send(&mut self) -> &mut SendStream<Bytes> {
        &mut self.0
    }
    fn recv(&mut self) -> &mut RecvStream {
        &mut self.1
    }
}

/// A client tunnel keeps its pool lease for as long as the stream is used.
impl StreamHalves for Tunnel {
    fn send(&mut self) -> &mut SendStream<Bytes> {
        &mut self.send
    }
    fn recv(&mut self) -> &mut RecvStream {
        &mut self.recv
    }
}

/// An HTTP/2 stream read and written as bytes.
pub struct H2Io<S: StreamHalves> {
    halves: S,
    /// Bytes handed back with [`H2Io::unread`], read before the stream.
    front: Bytes,
    /// What is left of the last DATA frame, not yet taken by the reader;
    /// its capacity is released as it is taken.
    chunk: Bytes,
    /// Read side at its end (END_STREAM seen).
    eof: bool,
    /// Write side ended (END_STREAM sent).
    shut: bool,
}

impl<S: StreamHalves> H2Io<S> {
    pub fn new(halves: S) -> Self {
        Self {
            halves,
            front: Bytes::new(),
            chunk: Bytes::new(),
            eof: false,
            shut: false,
        }
    }

    /// Puts `bytes` back in front of what is still to be read: for a reader
    /// that looked at the first bytes to decide who reads the rest.
    pub fn unread(&mut self, bytes: Bytes) {
        if bytes.is_empty() {
            return;
        }
        if self.front.is_empty() {
            self.front = bytes;
        } else {
            let mut joined = Vec::with_capacity(bytes.len() + self.front.len());
            joined.extend_from_slice(&bytes);
            joined.extend_from_slice(&self.front);
            self.front = Bytes::from(joined);
        }
    }

    /// Ends the stream with RST_STREAM: the peer sees a failure, not an end.
    pub fn reset(&mut self, reason: Reason) {
        self.halves.send().send_reset(reason);
    }

    pub fn get_mut(&mut self) -> &mut S {
        &mut self.halves
    }

    pub fn into_inner(self) -> S {
        self.halves
    }
}

pub fn h2_to_io(e: h2::Error) -> io::Error {
    if e.is_io() {
        e.into_io().unwrap_or_else(|| io::Error::other("h2 I/O"))
    } else {
        io::Error::new(io::ErrorKind::ConnectionReset, e)
    }
}

/// Copies as much of `from` as fits; returns how much.
fn take(from: &mut Bytes, buf: &mut ReadBuf<'_>) -> usize {
    let n = from.len().min(buf.remaining());
    buf.put_slice(&from[..n]);
    from.advance(n);
    n
}

impl<S: StreamHalves> AsyncRead for H2Io<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if buf.remaining() == 0 {
            return Poll::Ready(Ok(()));
        }
        if !this.front.is_empty() {
            take(&mut this.front, buf);
            return Poll::Ready(Ok(()));
        }
        loop {
            if !this.chunk.is_empty() {
                let n = take(&mut this.chunk, buf);
                // Released only now: the window reopens as fast as the
                // reader takes bytes, not as fast as frames arrive.
                let _ = this.halves.recv().flow_control().release_capacity(n);
                return Poll::Ready(Ok(()));
            }
            if this.eof {
                return Poll::Ready(Ok(()));
            }
            match ready!(this.halves.recv().poll_data(cx)) {
                Some(Ok(data)) => this.chunk = data,
                Some(Err(e)) => return Poll::Ready(Err(h2_to_io(e))),
                None => this.eof = true,
            }
        }
    }
}

impl<S: StreamHalves> AsyncWrite for H2Io<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.shut {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "write after the stream was ended",
            )));
        }
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        let send = this.halves.send();
        let want = buf.len().min(MAX_WRITE);
        loop {
            if send.capacity() < want {
                send.reserve_capacity(want);
            }
            let granted = send.capacity();
            if granted > 0 {
                let n = granted.min(want);
                send.send_data(Bytes::copy_from_slice(&buf[..n]), false)
                    .map_err(h2_to_io)?;
                return Poll::Ready(Ok(n));
            }
            match ready!(send.poll_capacity(cx)) {
                Some(Ok(_)) => continue,
                Some(Err(e)) => return Poll::Ready(Err(h2_to_io(e))),
                None => {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::BrokenPipe,
                        "the stream was closed",
                    )));
                }
            }
        }
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // Frames are queued on the connection, whose task writes them out.
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.shut {
            this.shut = true;
            // Capacity reserved for writes that will not come is given back.
            this.halves.send().reserve_capacity(0);
            this.halves
                .send()
                .send_data(Bytes::new(), true)
                .map_err(h2_to_io)?;
        }
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    const WAIT: Duration = Duration::from_secs(10);

    /// A CONNECT stream over an in-memory pipe with small windows, so flow
    /// control binds: (client halves, server halves).
    async fn stream_pair(
        window: u32,
    ) -> (
        (SendStream<Bytes>, RecvStream),
        (SendStream<Bytes>, RecvStream),
    ) {
        let (client_io, server_io) = tokio::io::duplex(64 * 1024);
        let server = tokio::spawn(async move {
            let mut conn = h2::server::Builder::new()
                .initial_window_size(window)
                .initial_connection_window_size(window)
                .handshake::<_, Bytes>(server_io)
                .await
                .unwrap();
            let (request, mut respond) = conn.accept().await.unwrap().unwrap();
            tokio::spawn(async move { while conn.accept().await.is_some() {} });
            let send = respond
                .send_response(http::Response::new(()), false)
                .unwrap();
            (send, request.into_body())
        });
        let (send, recv) = crate::testing::connect(client_io, window).await;
        ((send, recv), server.await.unwrap())
    }

    fn pattern(len: usize) -> Vec<u8> {
        (0..len as u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
            .collect()
    }

    /// Far more than the windows, both ways at once: every byte arrives in
    /// order, so capacity is released as bytes are read and writes wait for
    /// it; shutdown is seen as the end of the stream.
    #[tokio::test]
    async fn bytes_cross_both_ways_beyond_the_window_and_shutdown_ends_the_stream() {
        let (client, server) = stream_pair(16 * 1024).await;
        let a = H2Io::new(client);
        let mut b = H2Io::new(server);
        let up = pattern(1024 * 1024);
        let down: Vec<u8> = up.iter().rev().copied().collect();
        let (up2, down2) = (up.clone(), down.clone());
        let a_task = tokio::spawn(async move {
            let (mut rd, mut wr) = tokio::io::split(a);
            let write = async {
                wr.write_all(&up2).await.unwrap();
                wr.shutdown().await.unwrap();
            };
            let mut got = Vec::new();
            let read = rd.read_to_end(&mut got);
            let ((), n) = tokio::join!(write, read);
            n.unwrap();
            got
        });
        let mut got = Vec::new();
        let read = b.read_to_end(&mut got);
        // b writes only after reading everything: a's write must not need
        // b's writes to progress.
        tokio::time::timeout(WAIT, read).await.unwrap().unwrap();
        assert!(got == up, "upstream bytes differ");
        b.write_all(&down2).await.unwrap();
        b.shutdown().await.unwrap();
        let back = tokio::time::timeout(WAIT, a_task).await.unwrap().unwrap();
        assert!(back == down, "downstream bytes differ");
    }

    #[tokio::test]
    async fn unread_bytes_come_first_then_the_stream() {
        let (client, server) = stream_pair(65_535).await;
        let mut a = H2Io::new(client);
        let mut b = H2Io::new(server);
        a.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
        a.shutdown().await.unwrap();
        let mut first = [0u8; 4];
        b.read_exact(&mut first).await.unwrap();
        assert_eq!(&first, b"GET ");
        b.unread(Bytes::from_static(b"GET "));
        b.unread(Bytes::from_static(b">"));
        let mut all = Vec::new();
        tokio::time::timeout(WAIT, b.read_to_end(&mut all))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(&all[..], b">GET / HTTP/1.1\r\n\r\n");
    }

    #[tokio::test]
    async fn a_reset_is_a_read_error_not_an_end() {
        let (client, server) = stream_pair(65_535).await;
        let mut a = H2Io::new(client);
        let mut b = H2Io::new(server);
        b.write_all(b"partial").await.unwrap();
        b.reset(Reason::CANCEL);
        let mut got = Vec::new();
        let err = tokio::time::timeout(WAIT, a.read_to_end(&mut got))
            .await
            .unwrap()
            .expect_err("a reset stream must not read as complete");
        assert_eq!(err.kind(), io::ErrorKind::ConnectionReset, "{err}");
        // Ending our side of a reset stream may fail; a write after it
        // fails at once either way.
        a.shutdown().await.ok();
        assert_eq!(
            a.write(b"x").await.unwrap_err().kind(),
            io::ErrorKind::BrokenPipe
        );
    }
}
