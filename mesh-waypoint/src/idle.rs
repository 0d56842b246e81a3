//! Bytes both ways between two connections, closed when neither side has
//! moved a byte for a while: a relay nobody uses must not hold its
//! streams, its buffers and its place in the balancer for ever.
use std::{
    io,
    pin::Pin,
    sync::atomic::{AtomicU64, Ordering},
    task::{Context, Poll},
    time::Duration,
};

use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    time::Instant,
};

/// How a relay ended, with the bytes read from each side by then.
#[derive(Debug)]
pub struct Relayed {
    /// Read from the first side (and written to the second).
    pub from_a: u64,
    /// Read from the second side.
    pub from_b: u64,
    pub end: End,
}

#[derive(Debug)]
pub enum End {
    /// Both sides finished.
    Done,
    /// No byte moved in either direction for the idle timeout.
    Idle,
    Failed(io::Error),
}

/// When a byte last moved, as nanoseconds since the relay began.
struct Activity {
    began: Instant,
    last: AtomicU64,
}

impl Activity {
    fn touch(&self) {
        let now = u64::try_from(self.began.elapsed().as_nanos()).unwrap_or(u64::MAX);
        self.last.store(now, Ordering::Relaxed);
    }

    fn last(&self) -> Instant {
        self.began + Duration::from_nanos(self.last.load(Ordering::Relaxed))
    }
}

/// One side, noting each byte read from it and written to it.
struct Watched<'a, T> {
    inner: &'a mut T,
    activity: &'a Activity,
    read: &'a AtomicU64,
}

impl<T: AsyncRead + Unpin> AsyncRead for Watched<'_, T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let polled = Pin::new(&mut *this.inner).poll_read(cx, buf);
        let n = buf.filled().len() - before;
        if n > 0 {
            this.activity.touch();
            this.read.fetch_add(n as u64, Ordering::Relaxed);
        }
        polled
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Watched<'_, T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut *this.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = &polled
            && *n > 0
        {
            this.activity.touch();
        }
        polled
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.get_mut().inner).poll_shutdown(cx)
    }
}

/// Copies `a` ↔ `b` (with half-close) until both end, one fails, or no
/// byte has moved either way for `idle`. The caller closes or resets both
/// sides after an idle end.
pub async fn relay<A, B>(a: &mut A, b: &mut B, idle: Duration) -> Relayed
where
    A: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    let activity = Activity {
        began: Instant::now(),
        last: AtomicU64::new(0),
    };
    let (from_a, from_b) = (AtomicU64::new(0), AtomicU64::new(0));
    let mut wa = Watched {
        inner: a,
        activity: &activity,
        read: &from_a,
    };
    let mut wb = Watched {
        inner: b,
        activity: &activity,
        read: &from_b,
    };
    let quiet = async {
        loop {
            let deadline = activity.last() + idle;
            if Instant::now() >= deadline {
                return;
            }
            tokio::time::sleep_until(deadline).await;
        }
    };
    let end = tokio::select! {
        copied = tokio::io::copy_bidirectional(&mut wa, &mut wb) => match copied {
            Ok(_) => End::Done,
            Err(e) => End::Failed(e),
        },
        () = quiet => End::Idle,
    };
    Relayed {
        from_a: from_a.load(Ordering::Relaxed),
        from_b: from_b.load(Ordering::Relaxed),
        end,
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt, duplex};

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_relay_with_no_bytes_for_the_idle_timeout_ends_idle() {
        let (mut client, mut a) = duplex(1024);
        let (mut b, mut server) = duplex(1024);
        let relay = tokio::spawn(async move {
            let r = relay(&mut a, &mut b, Duration::from_secs(60)).await;
            (r, a, b)
        });
        // Traffic keeps it open past the timeout...
        for _ in 0..3 {
            tokio::time::sleep(Duration::from_secs(40)).await;
            client.write_all(b"ping").await.unwrap();
            let mut got = [0u8; 4];
            server.read_exact(&mut got).await.unwrap();
            server.write_all(b"pong").await.unwrap();
            client.read_exact(&mut got).await.unwrap();
        }
        assert!(!relay.is_finished());
        // ...and silence ends it.
        tokio::time::sleep(Duration::from_secs(61)).await;
        let (r, _, _) = relay.await.unwrap();
        assert!(matches!(r.end, End::Idle), "{r:?}");
        assert_eq!((r.from_a, r.from_b), (12, 12));
    }

    #[tokio::test]
    async fn a_relay_whose_sides_finish_is_done_with_its_counts() {
        let (mut client, mut a) = duplex(1024);
        let (mut b, mut server) = duplex(1024);
        let relay =
            tokio::spawn(async move { relay(&mut a, &mut b, Duration::from_secs(60)).await });
        client.write_all(b"hello").await.unwrap();
        client.shutdown().await.unwrap();
        let mut got = Vec::new();
        server.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"hello");
        server.write_all(b"bye!!!").await.unwrap();
        server.shutdown().await.unwrap();
        let r = relay.await.unwrap();
        assert!(matches!(r.end, End::Done), "{r:?}");
        assert_eq!((r.from_a, r.from_b), (5, 6));
    }
}
