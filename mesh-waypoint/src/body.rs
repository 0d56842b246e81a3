//! Request bodies that can be sent more than once. A rule that retries or
//! mirrors needs the body again after the first attempt has taken it, so
//! the body is read first, up to a bound in bytes and in time: one that
//! ends within it is kept whole and each attempt or mirror gets its own
//! copy; one that does not is sent once, what was read followed by the
//! rest as the client sends it, with no retry and no mirror. Requests
//! whose rule does neither are never read here: their body streams.
use std::{
    collections::VecDeque,
    pin::Pin,
    task::{Context, Poll},
    time::Duration,
};

use bytes::{Bytes, BytesMut};
use http::HeaderMap;
use http_body_util::BodyExt;
use hyper::body::{Body, Frame, Incoming, SizeHint};

/// The most a request body may hold to be kept for retries and mirrors
/// (Envoy's default `per_request_buffer_limit_bytes` for retries is of
/// this order; more would make every retried request a large allocation).
pub const KEEP_LIMIT: usize = 64 * 1024;

/// How long a client may pause between two parts of a body being kept
/// before it is sent on as it comes. A client that sends part of its body
/// and waits for an answer (a gRPC stream, say) would otherwise wait for
/// the whole bound; it loses retries and mirrors, never its request.
pub const KEEP_GAP: Duration = Duration::from_secs(1);

/// How much of a body is read before it is sent on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bound {
    /// The body is kept only if it holds at most this many bytes.
    pub bytes: usize,
    /// ... and ends within this ...
    pub wait: Duration,
    /// ... with no pause longer than this between two of its frames.
    pub gap: Duration,
}

/// A body read to its end: its data and trailers, copied for each attempt
/// and each mirror.
#[derive(Debug, Clone, Default)]
pub struct Kept {
    data: Bytes,
    trailers: Option<HeaderMap>,
}

impl Kept {
    /// A fresh body with the same data and trailers.
    pub fn copy(&self) -> Replay {
        Replay {
            data: (!self.data.is_empty()).then(|| self.data.clone()),
            trailers: self.trailers.clone(),
        }
    }

    /// Bytes of data it holds.
    pub fn len(&self) -> usize {
        self.data.len()
    }

    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }
}

/// One copy of a kept body: its data, then its trailers.
#[derive(Debug)]
pub struct Replay {
    data: Option<Bytes>,
    trailers: Option<HeaderMap>,
}

impl Replay {
    fn next(&mut self) -> Option<Frame<Bytes>> {
        if let Some(data) = self.data.take() {
            return Some(Frame::data(data));
        }
        self.trailers.take().map(Frame::trailers)
    }

    fn is_end_stream(&self) -> bool {
        self.data.is_none() && self.trailers.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.data.as_ref().map_or(0, |d| d.len() as u64))
    }
}

/// Why a body was not kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unkept {
    /// It holds more than the bound's bytes.
    TooLarge,
    /// It did not end within the bound's time, or paused too long.
    TooSlow,
}

impl Unkept {
    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            Unkept::TooLarge => "body_over_limit",
            Unkept::TooSlow => "body_too_slow",
        }
    }
}

/// What was read of a body that was not kept, then the rest of it.
#[derive(Debug)]
pub struct Resumed<B> {
    read: VecDeque<Bytes>,
    rest: B,
}

impl<B> Resumed<B> {
    /// Bytes read before the body was let go.
    pub fn read_len(&self) -> usize {
        self.read.iter().map(Bytes::len).sum()
    }
}

impl<B: Body<Data = Bytes> + Unpin> Body for Resumed<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        if let Some(data) = self.read.pop_front() {
            return Poll::Ready(Some(Ok(Frame::data(data))));
        }
        Pin::new(&mut self.rest).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.read.is_empty() && self.rest.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        let read = self.read_len() as u64;
        let rest = self.rest.size_hint();
        let mut hint = SizeHint::new();
        hint.set_lower(rest.lower() + read);
        if let Some(upper) = rest.upper() {
            hint.set_upper(upper + read);
        }
        hint
    }
}

/// A body read as far as the bound allows.
#[derive(Debug)]
pub enum Read<B> {
    Kept(Kept),
    Unkept { body: Resumed<B>, why: Unkept },
}

/// Reads `body` until it ends or `bound` is passed. An error of the body
/// (the client reset its stream, broke its chunked encoding) is returned
/// as it is: the request cannot be sent.
pub async fn read<B>(mut body: B, bound: Bound) -> Result<Read<B>, B::Error>
where
    B: Body<Data = Bytes> + Unpin,
{
    let deadline = tokio::time::Instant::now() + bound.wait;
    let mut read: VecDeque<Bytes> = VecDeque::new();
    let mut len = 0usize;
    let mut trailers = None;
    let unkept = loop {
        if body.is_end_stream() {
            break None;
        }
        let until = deadline.min(tokio::time::Instant::now() + bound.gap);
        let frame = match tokio::time::timeout_at(until, body.frame()).await {
            Err(_) => break Some(Unkept::TooSlow),
            Ok(None) => break None,
            Ok(Some(frame)) => frame?,
        };
        match frame.into_data() {
            Ok(data) => {
                len += data.len();
                if !data.is_empty() {
                    read.push_back(data);
                }
                if len > bound.bytes {
                    break Some(Unkept::TooLarge);
                }
            }
            Err(frame) => {
                // Trailers end the body.
                trailers = frame.into_trailers().ok();
                break None;
            }
        }
    };
    if let Some(why) = unkept {
        return Ok(Read::Unkept {
            body: Resumed { read, rest: body },
            why,
        });
    }
    let data = match read.len() {
        0 => Bytes::new(),
        1 => read.pop_front().unwrap_or_default(),
        _ => {
            let mut whole = BytesMut::with_capacity(len);
            for part in read {
                whole.extend_from_slice(&part);
            }
            whole.freeze()
        }
    };
    Ok(Read::Kept(Kept { data, trailers }))
}

/// A request body on its way upstream.
#[derive(Debug)]
pub enum RequestBody {
    /// The client's body as it arrives: a rule that neither retries nor
    /// mirrors.
    Streamed(Incoming),
    /// A copy of a kept body.
    Replayed(Replay),
    /// A body that could not be kept: what was read, then the rest.
    Resumed(Resumed<Incoming>),
}

impl From<Incoming> for RequestBody {
    fn from(body: Incoming) -> Self {
        RequestBody::Streamed(body)
    }
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        match self.get_mut() {
            RequestBody::Streamed(b) => Pin::new(b).poll_frame(cx),
            RequestBody::Replayed(r) => Poll::Ready(r.next().map(Ok)),
            RequestBody::Resumed(b) => Pin::new(b).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            RequestBody::Streamed(b) => b.is_end_stream(),
            RequestBody::Replayed(r) => r.is_end_stream(),
            RequestBody::Resumed(b) => b.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            RequestBody::Streamed(b) => b.size_hint(),
            RequestBody::Replayed(r) => r.size_hint(),
            RequestBody::Resumed(b) => b.size_hint(),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;

    use tokio::sync::mpsc;

    use super::*;

    /// A body whose frames a test sends when it likes.
    #[derive(Debug)]
    struct Drip(mpsc::Receiver<Frame<Bytes>>);

    impl Body for Drip {
        type Data = Bytes;
        type Error = Infallible;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
            self.0.poll_recv(cx).map(|f| f.map(Ok))
        }
    }

    fn drip() -> (mpsc::Sender<Frame<Bytes>>, Drip) {
        let (tx, rx) = mpsc::channel(64);
        (tx, Drip(rx))
    }

    const BOUND: Bound = Bound {
        bytes: 10,
        wait: Duration::from_secs(30),
        gap: Duration::from_secs(1),
    };

    async fn all<B: Body<Data = Bytes> + Unpin>(mut b: B) -> (Vec<u8>, Option<HeaderMap>)
    where
        B::Error: std::fmt::Debug,
    {
        let mut data = Vec::new();
        let mut trailers = None;
        while let Some(f) = b.frame().await {
            match f.unwrap().into_data() {
                Ok(d) => data.extend_from_slice(&d),
                Err(f) => trailers = f.into_trailers().ok(),
            }
        }
        (data, trailers)
    }

    fn kept<B: std::fmt::Debug>(r: Read<B>) -> Kept {
        match r {
            Read::Kept(k) => k,
            other => panic!("not kept: {other:?}"),
        }
    }

    fn unkept<B: std::fmt::Debug>(r: Read<B>) -> (Resumed<B>, Unkept) {
        match r {
            Read::Unkept { body, why } => (body, why),
            other => panic!("kept: {other:?}"),
        }
    }

    #[tokio::test]
    async fn a_body_within_the_bound_is_kept_and_each_copy_is_whole() {
        let (tx, body) = drip();
        for part in ["abc", "", "defg"] {
            tx.send(Frame::data(Bytes::from(part))).await.unwrap();
        }
        let mut t = HeaderMap::new();
        t.insert("grpc-status", "0".parse().unwrap());
        tx.send(Frame::trailers(t.clone())).await.unwrap();
        let k = kept(read(body, BOUND).await.unwrap());
        assert_eq!(k.len(), 7);
        for _ in 0..2 {
            let copy = RequestBody::Replayed(k.copy());
            assert_eq!(copy.size_hint().exact(), Some(7));
            let (data, trailers) = all(copy).await;
            assert_eq!(data, b"abcdefg");
            assert_eq!(trailers.as_ref(), Some(&t));
        }
    }

    #[tokio::test]
    async fn exactly_the_bound_is_kept_one_byte_more_is_not() {
        let (tx, body) = drip();
        tx.send(Frame::data(Bytes::from_static(b"0123456789")))
            .await
            .unwrap();
        drop(tx);
        assert_eq!(kept(read(body, BOUND).await.unwrap()).len(), 10);

        let (tx, body) = drip();
        tx.send(Frame::data(Bytes::from_static(b"01234")))
            .await
            .unwrap();
        tx.send(Frame::data(Bytes::from_static(b"567890")))
            .await
            .unwrap();
        tx.send(Frame::data(Bytes::from_static(b"rest")))
            .await
            .unwrap();
        drop(tx);
        let (resumed, why) = unkept(read(body, BOUND).await.unwrap());
        assert_eq!(why, Unkept::TooLarge);
        assert_eq!(why.label(), "body_over_limit");
        // Reading stopped as soon as it was over: the rest is unread.
        assert_eq!(resumed.read_len(), 11);
        let (data, _) = all(resumed).await;
        assert_eq!(data, b"01234567890rest", "what was read, then the rest");
    }

    #[tokio::test]
    async fn an_empty_body_is_kept_empty() {
        let (tx, body) = drip();
        drop(tx);
        let k = kept(read(body, BOUND).await.unwrap());
        assert!(k.is_empty());
        let copy = k.copy();
        assert!(copy.is_end_stream());
        let (data, trailers) = all(RequestBody::Replayed(copy)).await;
        assert!(data.is_empty() && trailers.is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn a_client_that_pauses_is_sent_on_as_it_comes() {
        let (tx, body) = drip();
        tx.send(Frame::data(Bytes::from_static(b"abc")))
            .await
            .unwrap();
        let started = tokio::time::Instant::now();
        // Nothing more for longer than the gap.
        let (resumed, why) = unkept(read(body, BOUND).await.unwrap());
        assert_eq!(why, Unkept::TooSlow);
        assert_eq!(started.elapsed(), BOUND.gap);
        tx.send(Frame::data(Bytes::from_static(b"def")))
            .await
            .unwrap();
        drop(tx);
        let (data, _) = all(resumed).await;
        assert_eq!(data, b"abcdef");
    }

    #[tokio::test(start_paused = true)]
    async fn a_client_that_trickles_is_let_go_at_the_wait() {
        let (tx, body) = drip();
        let bound = Bound {
            bytes: 1000,
            wait: Duration::from_secs(3),
            gap: Duration::from_secs(1),
        };
        tokio::spawn(async move {
            // A byte every half gap: never a pause, never an end.
            loop {
                if tx
                    .send(Frame::data(Bytes::from_static(b"x")))
                    .await
                    .is_err()
                {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        });
        let started = tokio::time::Instant::now();
        let (resumed, why) = unkept(read(body, bound).await.unwrap());
        assert_eq!(why, Unkept::TooSlow);
        assert_eq!(started.elapsed(), bound.wait);
        assert!(resumed.read_len() >= 5, "{}", resumed.read_len());
    }

    #[tokio::test]
    async fn the_resumed_size_hint_adds_what_was_read() {
        let (tx, body) = drip();
        tx.send(Frame::data(Bytes::from_static(b"0123456789AB")))
            .await
            .unwrap();
        let (resumed, _) = unkept(read(body, BOUND).await.unwrap());
        assert_eq!(resumed.size_hint().lower(), 12);
        assert!(!resumed.is_end_stream());
        drop(tx);
    }
}
