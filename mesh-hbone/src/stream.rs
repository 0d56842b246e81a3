//! Moving bytes between a TCP socket and an HTTP/2 stream, with half-close
//! (TCP FIN <-> END_STREAM) and resets carried across (RST_STREAM <-> TCP
//! RST). Sending respects HTTP/2 flow control, so a slow receiver slows the
//! sender instead of growing buffers.
use std::{
    future::{Future, poll_fn},
    io,
    sync::Arc,
    task::Poll,
    time::Duration,
};

use bytes::{Bytes, BytesMut};
use h2::{RecvStream, SendStream};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

use super::buffers::{BufferBudget, Verdict};
use crate::{relay, relay::Transferred};

/// Reads start this small, so a short request/response connection does not
/// carry (and fault in) a bulk-sized buffer, and grow towards `CHUNK` while
/// each read fills what it was offered.
const FIRST_CHUNK: usize = 16 * 1024;
const CHUNK: usize = 256 * 1024;
/// At most this much of what the app sent before its connection was
/// accepted rides with the CONNECT request.
const EARLY: usize = 16 * 1024;

/// What the app has already sent, peeked without waiting: empty when
/// nothing is there yet, at end of stream, or on error (the relay sees
/// those). Sending it together with the CONNECT request, instead of after
/// the response, saves a round trip between the agents on every new
/// connection; HTTP/2 lets a CONNECT request's DATA follow its HEADERS at
/// once, and the destination holds it in the stream's window until it has
/// connected. Peeked, not read: if this tunnel fails, the next endpoint (or
/// path) still finds the bytes in the socket; once it succeeds the relay
/// skips them.
pub fn early_data(tcp: &TcpStream) -> Bytes {
    let mut buf = BytesMut::with_capacity(EARLY);
    // The socket is non-blocking, and tokio's readiness is not consulted: a
    // connection just accepted has not been polled yet.
    match socket2::SockRef::from(tcp).peek(buf.spare_capacity_mut()) {
        Ok(n) => {
            // SAFETY: recv(2) initialised the first `n` bytes of the spare
            // capacity it was given.
            unsafe { buf.set_len(n.min(EARLY)) };
            buf.freeze()
        }
        Err(_) => Bytes::new(),
    }
}

fn h2_io(e: h2::Error) -> io::Error {
    if e.is_io() {
        e.into_io().unwrap_or_else(|| io::Error::other("h2 I/O"))
    } else {
        io::Error::new(io::ErrorKind::ConnectionReset, e)
    }
}

/// `skip`: bytes at the start of `from` already sent (see [`early_data`]).
async fn tcp_to_h2<R: AsyncReadExt + Unpin>(
    mut from: R,
    to: &mut SendStream<Bytes>,
    mut skip: usize,
) -> io::Result<u64> {
    let mut total = 0u64;
    let mut want = FIRST_CHUNK;
    let mut buf = BytesMut::with_capacity(want);
    loop {
        if buf.capacity() < want / 4 {
            buf.reserve(want);
        }
        let offered = buf.capacity() - buf.len();
        let n = from.read_buf(&mut buf).await?;
        if n == offered {
            want = (want * 2).min(CHUNK);
        }
        if n == 0 {
            to.send_data(Bytes::new(), true).map_err(h2_io)?;
            return Ok(total);
        }
        total += n as u64;
        if skip > 0 {
            let skipped = skip.min(buf.len());
            let _ = buf.split_to(skipped);
            skip -= skipped;
        }
        let mut data = buf.split().freeze();
        while !data.is_empty() {
            to.reserve_capacity(data.len());
            let granted = match poll_fn(|cx| to.poll_capacity(cx)).await {
                Some(Ok(n)) => n,
                Some(Err(e)) => return Err(h2_io(e)),
                None => {
                    return Err(io::Error::new(
                        io::ErrorKind::ConnectionReset,
                        "stream closed",
                    ));
                }
            };
            if granted == 0 {
                continue;
            }
            let chunk = data.split_to(granted.min(data.len()));
            to.send_data(chunk, false).map_err(h2_io)?;
        }
    }
}

async fn h2_to_tcp<W: AsyncWriteExt + Unpin>(
    from: &mut RecvStream,
    mut to: W,
    budget: &Arc<BufferBudget>,
) -> io::Result<u64> {
    let mut total = 0u64;
    while let Some(chunk) = from.data().await {
        let chunk = chunk.map_err(h2_io)?;
        write_within_budget(&mut to, &chunk, from, budget).await?;
        let _ = from.flow_control().release_capacity(chunk.len());
        total += chunk.len() as u64;
    }
    to.shutdown().await?;
    Ok(total)
}

/// How often a stream whose app is not reading reports what it holds.
const STUCK_CHECK: Duration = Duration::from_millis(500);

/// Writes `chunk` to the app. The usual write completes at once and costs
/// nothing more; one that waits (the app is not reading) reports what the
/// stream holds to the node's ledger every `STUCK_CHECK`, and gives up with
/// an error (the relay then resets both sides) when the ledger says so.
async fn write_within_budget<W: AsyncWriteExt + Unpin>(
    to: &mut W,
    chunk: &[u8],
    from: &mut RecvStream,
    budget: &Arc<BufferBudget>,
) -> io::Result<()> {
    let mut write = std::pin::pin!(to.write_all(chunk));
    if let Poll::Ready(done) = poll_fn(|cx| Poll::Ready(write.as_mut().poll(cx))).await {
        return done;
    }
    let mut holding = budget.holding();
    let mut check = tokio::time::interval(STUCK_CHECK);
    loop {
        tokio::select! {
            done = &mut write => return done,
            _ = check.tick() => {
                let held = chunk.len() + from.flow_control().used_capacity();
                if let Verdict::Reset { held: total, limit } = holding.update(held) {
                    return Err(io::Error::other(format!(
                        "the app has not read {held} bytes and stuck streams hold {total} of the {limit} bytes allowed (AgentConfig.limits.bufferBudgetBytes); stream reset"
                    )));
                }
            }
        }
    }
}

/// Relays until both directions end; the first `early` bytes waiting on the
/// TCP side were already sent on the stream. On failure either way, the TCP side
/// is reset and the stream cancelled, so neither peer mistakes a broken
/// transfer for a complete one.
pub async fn relay(
    tcp: TcpStream,
    mut send: SendStream<Bytes>,
    mut recv: RecvStream,
    early: usize,
    budget: &Arc<BufferBudget>,
) -> io::Result<Transferred> {
    let mut tcp = tcp;
    let (rd, wr) = tcp.split();
    let result = tokio::try_join!(
        tcp_to_h2(rd, &mut send, early),
        h2_to_tcp(&mut recv, wr, budget)
    );
    match result {
        Ok((up, down)) => Ok(Transferred {
            downstream_to_upstream: up,
            upstream_to_downstream: down,
        }),
        Err(e) => {
            send.send_reset(h2::Reason::CANCEL);
            relay::reset(tcp);
            Err(e)
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::{
        io::{AsyncReadExt, AsyncWriteExt},
        net::{TcpListener, TcpStream},
        task::JoinHandle,
    };

    use super::*;

    /// A loopback TCP pair: (the app's end, the end the agent accepted).
    async fn tcp_pair() -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let app = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (accepted, _) = listener.accept().await.unwrap();
        (app, accepted)
    }

    /// An HTTP/2 CONNECT stream over an in-memory pipe, `early` sent with
    /// the request. The server task answers 200, collects the request body
    /// until END_STREAM, then ends its own side.
    async fn connect_stream(early: &Bytes) -> (SendStream<Bytes>, RecvStream, JoinHandle<Vec<u8>>) {
        let (client_io, server_io) = tokio::io::duplex(1 << 20);
        let server = tokio::spawn(async move {
            let mut conn = h2::server::handshake(server_io).await.unwrap();
            let (request, mut respond) = conn.accept().await.unwrap().unwrap();
            tokio::spawn(async move { while conn.accept().await.is_some() {} });
            let mut send = respond
                .send_response(http::Response::new(()), false)
                .unwrap();
            let mut body = request.into_body();
            let mut got = Vec::new();
            while let Some(chunk) = body.data().await {
                let chunk = chunk.unwrap();
                let _ = body.flow_control().release_capacity(chunk.len());
                got.extend_from_slice(&chunk);
            }
            send.send_data(Bytes::new(), true).unwrap();
            got
        });
        let (sender, conn) = h2::client::handshake(client_io).await.unwrap();
        tokio::spawn(conn);
        let request = http::Request::builder()
            .method(http::Method::CONNECT)
            .uri("10.0.0.1:80")
            .body(())
            .unwrap();
        let (response, mut send) = sender
            .ready()
            .await
            .unwrap()
            .send_request(request, false)
            .unwrap();
        if !early.is_empty() {
            send.send_data(early.clone(), false).unwrap();
        }
        let recv = response.await.unwrap().into_body();
        (send, recv, server)
    }

    /// The bytes peeked as early data go out with the request exactly once:
    /// the relay skips them in the socket and sends only what follows.
    #[tokio::test]
    async fn early_data_is_sent_once_and_then_skipped() {
        let (mut app, accepted) = tcp_pair().await;
        app.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
        // Bounded wait until the bytes are in the accepted socket.
        let mut early = Bytes::new();
        for _ in 0..200 {
            early = early_data(&accepted);
            if early.len() == 18 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert_eq!(&early[..], b"GET / HTTP/1.1\r\n\r\n");
        // Peeked, not consumed: a second look sees the same bytes.
        assert_eq!(early_data(&accepted), early);

        let (send, recv, server) = connect_stream(&early).await;
        app.write_all(b"body").await.unwrap();
        app.shutdown().await.unwrap();
        let relay = tokio::spawn(async move {
            relay(
                accepted,
                send,
                recv,
                early.len(),
                &BufferBudget::new(usize::MAX),
            )
            .await
        });
        let got = tokio::time::timeout(Duration::from_secs(10), server)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(&got[..], b"GET / HTTP/1.1\r\n\r\nbody");
        let mut rest = Vec::new();
        app.read_to_end(&mut rest).await.unwrap();
        assert!(rest.is_empty());
        let moved = relay.await.unwrap().unwrap();
        assert_eq!(moved.downstream_to_upstream, 22);
    }

    /// A transfer large enough that the read buffer grows from 16 KiB to
    /// its largest, while earlier chunks are still queued in h2: every byte
    /// arrives, in order.
    #[tokio::test]
    async fn a_bulk_transfer_arrives_whole_while_the_buffer_grows() {
        let (mut app, accepted) = tcp_pair().await;
        let (send, recv, server) = connect_stream(&Bytes::new()).await;
        let relay = tokio::spawn(async move {
            relay(accepted, send, recv, 0, &BufferBudget::new(usize::MAX)).await
        });
        let sent: Vec<u8> = (0..3 * 1024 * 1024u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
            .collect();
        let expected = sent.clone();
        let writer = tokio::spawn(async move {
            app.write_all(&sent).await.unwrap();
            app.shutdown().await.unwrap();
            app
        });
        let got = tokio::time::timeout(Duration::from_secs(30), server)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(got.len(), expected.len());
        assert!(got == expected, "the bytes differ");
        drop(writer.await.unwrap());
        let moved = relay.await.unwrap().unwrap();
        assert_eq!(moved.downstream_to_upstream, expected.len() as u64);
    }

    /// A stream whose app never reads, on a node whose budget it alone
    /// exceeds, is reset once what it holds is over the budget, and frees
    /// its entry in the ledger; the app's socket is reset, not ended.
    #[tokio::test]
    async fn a_stuck_stream_over_the_budget_is_reset() {
        let (app, accepted) = tcp_pair().await;
        // Small socket buffers, so the kernel takes little of what the
        // peer pushes and the rest stays in the stream.
        let _ = socket2::SockRef::from(&app).set_recv_buffer_size(16 * 1024);
        let _ = socket2::SockRef::from(&accepted).set_send_buffer_size(16 * 1024);
        let (client_io, server_io) = tokio::io::duplex(1 << 20);
        tokio::spawn(async move {
            let mut conn = h2::server::handshake(server_io).await.unwrap();
            let (_request, mut respond) = conn.accept().await.unwrap().unwrap();
            tokio::spawn(async move { while conn.accept().await.is_some() {} });
            let mut send = respond
                .send_response(http::Response::new(()), false)
                .unwrap();
            // Pushes until the stream is reset.
            for _ in 0..512 {
                send.reserve_capacity(64 * 1024);
                match poll_fn(|cx| send.poll_capacity(cx)).await {
                    Some(Ok(n)) if n > 0 => {
                        if send.send_data(Bytes::from(vec![7u8; n]), false).is_err() {
                            return;
                        }
                    }
                    Some(Ok(_)) => {}
                    _ => return,
                }
            }
        });
        let (send, recv) = crate::testing::connect(client_io, STREAM_WINDOW_FOR_TEST).await;
        let budget = BufferBudget::new(1024 * 1024);
        let result = tokio::time::timeout(
            Duration::from_secs(20),
            relay(accepted, send, recv, 0, &budget),
        )
        .await
        .expect("the stuck stream is reset within the deadline");
        let error = result.expect_err("reset, not a clean end").to_string();
        assert!(error.contains("bufferBudgetBytes"), "{error}");
        assert_eq!(budget.held(), 0, "the reset stream left the ledger");
        drop(app);
    }

    const STREAM_WINDOW_FOR_TEST: u32 = 4 * 1024 * 1024;
}
