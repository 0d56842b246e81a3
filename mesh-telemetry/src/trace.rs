//! W3C Trace Context (`traceparent`, `tracestate`), as values: what a
//! proxy reads from a request, the span it opens for it, and the headers
//! it hands upstream. Pure: randomness comes in as an `fastrand::Rng`, so a
//! test can seed it.
//!
//! A malformed `traceparent` is not an error for the request: the proxy
//! starts a new trace (and drops `tracestate`, which only means something
//! next to the parent it came with), as the specification asks.
use std::fmt;

use http::{HeaderMap, HeaderValue, header::HeaderName};

/// The request header naming the caller's span.
pub const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
/// The request header with vendors' trace state, carried unchanged.
pub const TRACESTATE: HeaderName = HeaderName::from_static("tracestate");

/// Longest `tracestate` carried on. The specification asks for at least
/// 512 characters; beyond a few KiB it is abuse of a header every hop
/// copies, and dropping it costs vendors their state, never the trace.
pub const MAX_TRACESTATE_BYTES: usize = 4096;

/// Length of a version-00 `traceparent`: `vv-<32 hex>-<16 hex>-ff`.
const TRACEPARENT_LEN: usize = 55;

/// The flags bits this proxy understands and carries: only `sampled`.
const KNOWN_FLAGS: u8 = TraceFlags::SAMPLED.0;

/// A trace's id: 16 bytes, never all zero.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TraceId([u8; 16]);

/// A span's id: 8 bytes, never all zero.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SpanId([u8; 8]);

impl TraceId {
    /// The id, or `None` for the all-zero value the specification forbids.
    pub fn from_bytes(bytes: [u8; 16]) -> Option<Self> {
        (bytes != [0; 16]).then_some(Self(bytes))
    }

    /// A fresh random id.
    pub fn random(rng: &mut fastrand::Rng) -> Self {
        loop {
            if let Some(id) = Self::from_bytes(rng.u128(..).to_be_bytes()) {
                return id;
            }
        }
    }

    /// The id's bytes, as OTLP carries them.
    pub fn to_bytes(self) -> [u8; 16] {
        self.0
    }
}

impl SpanId {
    /// The id, or `None` for the all-zero value the specification forbids.
    pub fn from_bytes(bytes: [u8; 8]) -> Option<Self> {
        (bytes != [0; 8]).then_some(Self(bytes))
    }

    /// A fresh random id.
    pub fn random(rng: &mut fastrand::Rng) -> Self {
        loop {
            if let Some(id) = Self::from_bytes(rng.u64(..).to_be_bytes()) {
                return id;
            }
        }
    }

    /// The id's bytes, as OTLP carries them.
    pub fn to_bytes(self) -> [u8; 8] {
        self.0
    }
}

/// Lowercase hex, as in the header.
impl fmt::Display for TraceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_hex(f, &self.0)
    }
}

/// Lowercase hex, as in the header.
impl fmt::Display for SpanId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_hex(f, &self.0)
    }
}

fn write_hex(f: &mut fmt::Formatter<'_>, bytes: &[u8]) -> fmt::Result {
    bytes.iter().try_for_each(|b| write!(f, "{b:02x}"))
}

/// The `trace-flags` byte, reduced to the bits this proxy understands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct TraceFlags(u8);

impl TraceFlags {
    /// The caller recorded (or may record) this trace.
    pub const SAMPLED: TraceFlags = TraceFlags(0x01);
    /// Not sampled.
    pub const NONE: TraceFlags = TraceFlags(0);

    /// Flags with only the sampled bit set as asked.
    pub fn sampled_if(sampled: bool) -> Self {
        if sampled { Self::SAMPLED } else { Self::NONE }
    }

    /// Whether the trace is sampled.
    pub fn is_sampled(self) -> bool {
        self.0 & Self::SAMPLED.0 != 0
    }

    /// The byte as the header and OTLP's `Span.flags` carry it.
    pub fn to_byte(self) -> u8 {
        self.0
    }
}

/// Why a `traceparent` value was refused (a new trace starts instead).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TraceParentError {
    #[error("traceparent: more than one header; send exactly one")]
    Repeated,
    #[error(
        "traceparent: {0} bytes; version 00 is exactly 55 (00-<32 hex>-<16 hex>-<2 hex>), later versions at least 55 with '-' after"
    )]
    Length(usize),
    #[error("traceparent: version must be two lowercase hex digits other than ff")]
    Version,
    #[error("traceparent: fields must be separated by '-' at offsets 2, 35 and 52")]
    Delimiter,
    #[error("traceparent: trace-id must be 32 lowercase hex digits, not all zero")]
    TraceId,
    #[error("traceparent: parent-id must be 16 lowercase hex digits, not all zero")]
    ParentId,
    #[error("traceparent: trace-flags must be two lowercase hex digits")]
    Flags,
}

/// A parsed `traceparent`: the caller's trace and span.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceParent {
    pub trace_id: TraceId,
    /// The caller's span, parent of the span this proxy opens.
    pub parent_id: SpanId,
    pub flags: TraceFlags,
}

impl TraceParent {
    /// Parses one header value. Versions after 00 are read as far as
    /// version 00 goes (the specification's rule for forward
    /// compatibility); the proxy writes version 00.
    pub fn parse(value: &[u8]) -> Result<Self, TraceParentError> {
        let v = value.trim_ascii();
        if v.len() < TRACEPARENT_LEN {
            return Err(TraceParentError::Length(v.len()));
        }
        let version = hex_byte(&v[0..2]).ok_or(TraceParentError::Version)?;
        if version == 0xff {
            return Err(TraceParentError::Version);
        }
        if (version == 0 && v.len() != TRACEPARENT_LEN)
            || (v.len() > TRACEPARENT_LEN && v[TRACEPARENT_LEN] != b'-')
        {
            return Err(TraceParentError::Length(v.len()));
        }
        if v[2] != b'-' || v[35] != b'-' || v[52] != b'-' {
            return Err(TraceParentError::Delimiter);
        }
        let trace_id = hex_array::<16>(&v[3..35])
            .and_then(TraceId::from_bytes)
            .ok_or(TraceParentError::TraceId)?;
        let parent_id = hex_array::<8>(&v[36..52])
            .and_then(SpanId::from_bytes)
            .ok_or(TraceParentError::ParentId)?;
        let flags = hex_byte(&v[53..55]).ok_or(TraceParentError::Flags)?;
        Ok(Self {
            trace_id,
            parent_id,
            flags: TraceFlags(flags & KNOWN_FLAGS),
        })
    }
}

/// The header value, version 00.
impl fmt::Display for TraceParent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "00-{}-{}-{:02x}",
            self.trace_id,
            self.parent_id,
            self.flags.to_byte()
        )
    }
}

fn hex_digit(c: u8) -> Option<u8> {
    // Uppercase is malformed: the specification allows lowercase only.
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    }
}

fn hex_byte(two: &[u8]) -> Option<u8> {
    Some(hex_digit(two[0])? << 4 | hex_digit(two[1])?)
}

fn hex_array<const N: usize>(hex: &[u8]) -> Option<[u8; N]> {
    let mut out = [0; N];
    for (o, pair) in out.iter_mut().zip(hex.chunks_exact(2)) {
        *o = hex_byte(pair)?;
    }
    Some(out)
}

/// The `tracestate` list as received (several headers joined with `,` as
/// the specification says), printable ASCII and at most
/// [`MAX_TRACESTATE_BYTES`]. Its members belong to vendors and are not
/// interpreted here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceState(String);

impl TraceState {
    /// The list from every `tracestate` header, or `None` when there is
    /// none, it is empty, too long, or not printable ASCII.
    pub fn from_headers(headers: &HeaderMap) -> Option<Self> {
        let mut joined = String::new();
        for value in headers.get_all(&TRACESTATE) {
            let part = std::str::from_utf8(value.as_bytes()).ok()?.trim();
            if part.is_empty() {
                continue;
            }
            if !part.bytes().all(|b| b == b' ' || b.is_ascii_graphic()) {
                return None;
            }
            if !joined.is_empty() {
                joined.push(',');
            }
            joined.push_str(part);
            if joined.len() > MAX_TRACESTATE_BYTES {
                return None;
            }
        }
        (!joined.is_empty()).then_some(Self(joined))
    }

    /// The list as one header value.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// What a request carried: its caller's span, and the trace state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Incoming {
    pub parent: TraceParent,
    pub state: Option<TraceState>,
}

/// Reads the trace context of a request: `Ok(None)` when it has none,
/// `Err` when its `traceparent` is malformed or repeated (the caller logs
/// it if it likes, and starts a new trace).
pub fn extract(headers: &HeaderMap) -> Result<Option<Incoming>, TraceParentError> {
    let mut values = headers.get_all(&TRACEPARENT).iter();
    let Some(value) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err(TraceParentError::Repeated);
    }
    let parent = TraceParent::parse(value.as_bytes())?;
    Ok(Some(Incoming {
        parent,
        state: TraceState::from_headers(headers),
    }))
}

/// One span of this proxy: its place in the trace and what it passes on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpanContext {
    pub trace_id: TraceId,
    pub span_id: SpanId,
    /// The span this one is a child of; `None` for a trace's root.
    pub parent_id: Option<SpanId>,
    pub flags: TraceFlags,
    pub state: Option<TraceState>,
}

impl SpanContext {
    /// The first span of a new trace, sampled as the proxy's policy says.
    pub fn root(sampled: bool, rng: &mut fastrand::Rng) -> Self {
        Self {
            trace_id: TraceId::random(rng),
            span_id: SpanId::random(rng),
            parent_id: None,
            flags: TraceFlags::sampled_if(sampled),
            state: None,
        }
    }

    /// The proxy's span for a request: a child of the caller's span when
    /// the request named one (keeping the caller's sampling decision),
    /// else the root of a new trace sampled as `sample_new` says.
    pub fn for_request(
        incoming: Option<&Incoming>,
        sample_new: bool,
        rng: &mut fastrand::Rng,
    ) -> Self {
        match incoming {
            Some(i) => Self {
                trace_id: i.parent.trace_id,
                span_id: SpanId::random(rng),
                parent_id: Some(i.parent.parent_id),
                flags: i.parent.flags,
                state: i.state.clone(),
            },
            None => Self::root(sample_new, rng),
        }
    }

    /// [`extract`] then [`Self::for_request`]: a malformed context starts
    /// a new trace.
    pub fn from_headers(headers: &HeaderMap, sample_new: bool, rng: &mut fastrand::Rng) -> Self {
        let incoming = extract(headers).ok().flatten();
        Self::for_request(incoming.as_ref(), sample_new, rng)
    }

    /// A child span in the same trace (the proxy's CLIENT span for the
    /// upstream request, say).
    pub fn child(&self, rng: &mut fastrand::Rng) -> Self {
        Self {
            trace_id: self.trace_id,
            span_id: SpanId::random(rng),
            parent_id: Some(self.span_id),
            flags: self.flags,
            state: self.state.clone(),
        }
    }

    /// Whether spans of this trace are to be recorded.
    pub fn is_sampled(&self) -> bool {
        self.flags.is_sampled()
    }

    /// The `traceparent` that names this span as the next hop's parent.
    pub fn traceparent(&self) -> TraceParent {
        TraceParent {
            trace_id: self.trace_id,
            parent_id: self.span_id,
            flags: self.flags,
        }
    }

    /// Sets `traceparent` (this span as parent) and `tracestate` (as
    /// received) on the upstream request, replacing what was there.
    pub fn inject(&self, headers: &mut HeaderMap) {
        let parent = HeaderValue::try_from(self.traceparent().to_string())
            .expect("a formatted traceparent is lowercase hex and '-'");
        headers.insert(TRACEPARENT, parent);
        headers.remove(&TRACESTATE);
        if let Some(state) = &self.state
            && let Ok(value) = HeaderValue::try_from(state.as_str())
        {
            headers.insert(TRACESTATE, value);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::try_from(*k).unwrap(),
                HeaderValue::try_from(*v).unwrap(),
            );
        }
        h
    }

    #[test]
    fn parses_and_formats_a_version_00_header() {
        let p = TraceParent::parse(GOOD.as_bytes()).unwrap();
        assert_eq!(p.trace_id.to_string(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(p.parent_id.to_string(), "00f067aa0ba902b7");
        assert!(p.flags.is_sampled());
        assert_eq!(p.to_string(), GOOD);
        let unsampled = GOOD.replace("-01", "-00");
        assert!(
            !TraceParent::parse(unsampled.as_bytes())
                .unwrap()
                .flags
                .is_sampled()
        );
    }

    #[test]
    fn later_versions_are_read_as_far_as_00_goes_and_written_as_00() {
        let v = "cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-what-the-future-adds";
        let p = TraceParent::parse(v.as_bytes()).unwrap();
        assert_eq!(p.to_string(), GOOD);
        // Unknown flag bits are not passed on.
        let v = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-ff";
        assert_eq!(
            TraceParent::parse(v.as_bytes()).unwrap().flags,
            TraceFlags::SAMPLED
        );
    }

    #[test]
    fn hostile_and_malformed_values_are_refused_by_field() {
        use TraceParentError::*;
        let long_00 = format!("{GOOD}-extra");
        let cases: Vec<(String, TraceParentError)> = vec![
            (String::new(), Length(0)),
            ("00-abc".into(), Length(6)),
            (long_00, Length(61)),
            (GOOD.replace("00-4b", "ff-4b"), Version),
            (GOOD.replace("00-4b", "0g-4b"), Version),
            (GOOD.replace("00-4b", "0A-4b"), Version),
            (format!("cc-{}x", &GOOD[3..]), Length(56)),
            (GOOD.replacen('-', "_", 1), Delimiter),
            (
                "00-00000000000000000000000000000000-00f067aa0ba902b7-01".into(),
                TraceId,
            ),
            (GOOD.replace("4bf9", "4BF9"), TraceId),
            (GOOD.replace("4bf9", "4bf "), TraceId),
            (
                "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01".into(),
                ParentId,
            ),
            (GOOD.replace("ba902b7", "ba902bz"), ParentId),
            (GOOD.replace("b7-01", "b7-0x"), Flags),
            // Multi-byte UTF-8 where hex is expected must not split a char.
            (GOOD.replace("4bf9", "4bé"), TraceId),
        ];
        for (value, want) in cases {
            assert_eq!(
                TraceParent::parse(value.as_bytes()),
                Err(want.clone()),
                "{value:?}"
            );
        }
        // Non-UTF-8 bytes in the header are refused, not panicked on.
        let mut raw = GOOD.as_bytes().to_vec();
        raw[10] = 0xff;
        assert_eq!(TraceParent::parse(&raw), Err(TraceId));
    }

    #[test]
    fn surrounding_whitespace_is_ignored() {
        let v = format!(" {GOOD}\t");
        assert!(TraceParent::parse(v.as_bytes()).is_ok());
    }

    #[test]
    fn a_request_with_a_parent_continues_its_trace() {
        let h = headers(&[("traceparent", GOOD), ("tracestate", "congo=t61rcWkgMzE")]);
        let mut rng = fastrand::Rng::with_seed(7);
        let server = SpanContext::from_headers(&h, false, &mut rng);
        let parent = TraceParent::parse(GOOD.as_bytes()).unwrap();
        assert_eq!(server.trace_id, parent.trace_id);
        assert_eq!(server.parent_id, Some(parent.parent_id));
        assert_ne!(server.span_id, parent.parent_id);
        // The caller's sampling decision wins over ours.
        assert!(server.is_sampled());

        let client = server.child(&mut rng);
        assert_eq!(client.parent_id, Some(server.span_id));
        let mut upstream = headers(&[("traceparent", GOOD), ("tracestate", "x=y")]);
        client.inject(&mut upstream);
        assert_eq!(
            upstream.get(TRACEPARENT).unwrap(),
            &format!("00-{}-{}-01", parent.trace_id, client.span_id)
        );
        assert_eq!(upstream.get_all(TRACESTATE).iter().count(), 1);
        assert_eq!(upstream.get(TRACESTATE).unwrap(), "congo=t61rcWkgMzE");
    }

    #[test]
    fn a_malformed_or_repeated_parent_starts_a_new_trace_without_its_state() {
        let mut rng = fastrand::Rng::with_seed(1);
        for h in [
            headers(&[("traceparent", "garbage"), ("tracestate", "a=b")]),
            headers(&[("traceparent", GOOD), ("traceparent", GOOD)]),
        ] {
            assert!(extract(&h).is_err());
            let ctx = SpanContext::from_headers(&h, true, &mut rng);
            assert_eq!(ctx.parent_id, None);
            assert_eq!(ctx.state, None);
            assert!(ctx.is_sampled());
            assert_ne!(ctx.trace_id.to_string(), "4bf92f3577b34da6a3ce929d0e0e4736");
        }
        assert_eq!(extract(&HeaderMap::new()), Ok(None));
        let mut upstream = headers(&[("tracestate", "stale=1")]);
        SpanContext::root(false, &mut rng).inject(&mut upstream);
        assert!(upstream.get(TRACESTATE).is_none());
        assert!(
            upstream
                .get(TRACEPARENT)
                .unwrap()
                .to_str()
                .unwrap()
                .ends_with("-00")
        );
    }

    #[test]
    fn tracestate_headers_are_joined_and_bounded() {
        let h = headers(&[("tracestate", "a=1, b=2"), ("tracestate", "c=3")]);
        assert_eq!(
            TraceState::from_headers(&h).unwrap().as_str(),
            "a=1, b=2,c=3"
        );
        let big = "k=".to_owned() + &"v".repeat(MAX_TRACESTATE_BYTES);
        assert_eq!(
            TraceState::from_headers(&headers(&[("tracestate", &big)])),
            None
        );
        let mut h = HeaderMap::new();
        h.insert(TRACESTATE, HeaderValue::from_bytes(b"a=\xff").unwrap());
        assert_eq!(TraceState::from_headers(&h), None);
        assert_eq!(
            TraceState::from_headers(&headers(&[("tracestate", " ")])),
            None
        );
    }

    #[test]
    fn random_ids_are_never_zero_and_differ() {
        let mut rng = fastrand::Rng::with_seed(42);
        let a = SpanContext::root(true, &mut rng);
        let b = SpanContext::root(true, &mut rng);
        assert_ne!(a.trace_id, b.trace_id);
        assert_ne!(a.span_id, b.span_id);
        assert_eq!(TraceId::from_bytes([0; 16]), None);
        assert_eq!(SpanId::from_bytes([0; 8]), None);
    }
}
