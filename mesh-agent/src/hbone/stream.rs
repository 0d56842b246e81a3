//! Moving bytes between a TCP socket and an HTTP/2 stream, with half-close
//! (TCP FIN <-> END_STREAM) and resets carried across (RST_STREAM <-> TCP
//! RST). Sending respects HTTP/2 flow control, so a slow receiver slows the
//! sender instead of growing buffers.
use std::{future::poll_fn, io};

use bytes::{Bytes, BytesMut};
use h2::{RecvStream, SendStream};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

use crate::proxy::relay::{self, Transferred};

const CHUNK: usize = 256 * 1024;

fn h2_io(e: h2::Error) -> io::Error {
    if e.is_io() {
        e.into_io().unwrap_or_else(|| io::Error::other("h2 I/O"))
    } else {
        io::Error::new(io::ErrorKind::ConnectionReset, e)
    }
}

async fn tcp_to_h2<R: AsyncReadExt + Unpin>(
    mut from: R,
    to: &mut SendStream<Bytes>,
) -> io::Result<u64> {
    let mut total = 0u64;
    let mut buf = BytesMut::with_capacity(CHUNK);
    loop {
        if buf.capacity() < CHUNK / 4 {
            buf.reserve(CHUNK);
        }
        let n = from.read_buf(&mut buf).await?;
        if n == 0 {
            to.send_data(Bytes::new(), true).map_err(h2_io)?;
            return Ok(total);
        }
        total += n as u64;
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

async fn h2_to_tcp<W: AsyncWriteExt + Unpin>(from: &mut RecvStream, mut to: W) -> io::Result<u64> {
    let mut total = 0u64;
    while let Some(chunk) = from.data().await {
        let chunk = chunk.map_err(h2_io)?;
        to.write_all(&chunk).await?;
        let _ = from.flow_control().release_capacity(chunk.len());
        total += chunk.len() as u64;
    }
    to.shutdown().await?;
    Ok(total)
}

/// Relays until both directions end. On failure either way, the TCP side
/// is reset and the stream cancelled, so neither peer mistakes a broken
/// transfer for a complete one.
pub async fn relay(
    tcp: TcpStream,
    mut send: SendStream<Bytes>,
    mut recv: RecvStream,
) -> io::Result<Transferred> {
    let mut tcp = tcp;
    let (rd, wr) = tcp.split();
    let result = tokio::try_join!(tcp_to_h2(rd, &mut send), h2_to_tcp(&mut recv, wr));
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
