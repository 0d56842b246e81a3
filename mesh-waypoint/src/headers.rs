//! What a proxy changes in a request's and a response's head: the
//! hop-by-hop headers (RFC 9110, 7.6.1) end at each hop, except what an
//! upgrade needs; `x-forwarded-proto` says how the client spoke; the W3C
//! trace context continues through the waypoint as a span of its own.
use http::{
    HeaderMap, HeaderName, HeaderValue,
    header::{CONNECTION, TE, TRANSFER_ENCODING, UPGRADE},
};

const KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
const PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");
pub const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
pub const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");

/// Whether a request asks to switch protocols (HTTP/1.1 `Upgrade`, e.g.
/// WebSocket): `Connection` names `upgrade` and an `Upgrade` is present.
pub fn is_upgrade(headers: &HeaderMap) -> bool {
    headers.contains_key(UPGRADE) && connection_tokens(headers).any(|t| t == "upgrade")
}

fn connection_tokens(headers: &HeaderMap) -> impl Iterator<Item = String> + '_ {
    headers
        .get_all(CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|t| t.trim().to_ascii_lowercase())
        .filter(|t| !t.is_empty())
}

/// Removes the hop-by-hop headers. With `upgrade`, `Connection: upgrade`
/// and `Upgrade` pass, since the next hop must see them to switch.
pub fn strip_hop_by_hop(headers: &mut HeaderMap, upgrade: bool) {
    let named: Vec<HeaderName> = connection_tokens(headers)
        .filter_map(|t| HeaderName::from_bytes(t.as_bytes()).ok())
        .collect();
    for name in named {
        if upgrade && name == UPGRADE {
            continue;
        }
        headers.remove(&name);
    }
    for name in [KEEP_ALIVE, PROXY_CONNECTION, TRANSFER_ENCODING] {
        headers.remove(name);
    }
    // `te: trailers` is how a gRPC client says it takes trailers; any
    // other value is this hop's.
    let trailers_only = headers
        .get_all(TE)
        .iter()
        .all(|v| v.as_bytes().eq_ignore_ascii_case(b"trailers"));
    if !trailers_only {
        headers.remove(TE);
    }
    if upgrade {
        headers.insert(CONNECTION, HeaderValue::from_static("upgrade"));
    } else {
        headers.remove(CONNECTION);
        headers.remove(UPGRADE);
    }
}

/// Sets `x-forwarded-proto` to how the client spoke (plain HTTP inside the
/// tunnel), unless a proxy before the mesh already said.
pub fn forwarded_proto(headers: &mut HeaderMap) {
    if !headers.contains_key(X_FORWARDED_PROTO) {
        headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static("http"));
    }
}

/// The trace context of one request through the waypoint.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct TraceContext {
    /// 32 lowercase hex digits.
    pub trace_id: String,
    /// The waypoint's span for this request (16 hex digits): the parent
    /// the upstream sees.
    pub span_id: String,
    /// The client's span, when the request carried one.
    pub parent_span_id: Option<String>,
    pub sampled: bool,
}

impl TraceContext {
    pub fn traceparent(&self) -> String {
        format!(
            "00-{}-{}-{}",
            self.trace_id,
            self.span_id,
            if self.sampled { "01" } else { "00" }
        )
    }
}

/// A W3C `traceparent` as (trace id, parent id, flags), when well formed:
/// version 00 (or a later one, read by its first four fields), ids of the
/// right length in lowercase hex and not all zeros.
fn parse_traceparent(value: &str) -> Option<(&str, &str, u8)> {
    let mut parts = value.trim().split('-');
    let (version, trace, parent, flags) =
        (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    let hex = |s: &str, len: usize| {
        s.len() == len
            && s.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    };
    if !hex(version, 2) || version == "ff" || (version == "00" && parts.next().is_some()) {
        return None;
    }
    if !hex(trace, 32) || !hex(parent, 16) || !hex(flags, 2) {
        return None;
    }
    if trace.bytes().all(|b| b == b'0') || parent.bytes().all(|b| b == b'0') {
        return None;
    }
    Some((trace, parent, u8::from_str_radix(flags, 16).ok()?))
}

/// Continues the request's trace (a new span under the client's) or starts
/// one, and writes the waypoint's `traceparent` for the upstream.
pub fn continue_trace(headers: &mut HeaderMap) -> TraceContext {
    let incoming = headers
        .get(TRACEPARENT)
        .and_then(|v| v.to_str().ok())
        .and_then(parse_traceparent)
        .map(|(t, p, f)| (t.to_owned(), p.to_owned(), f));
    let span_id = format!("{:016x}", fastrand::u64(1..));
    let context = match incoming {
        Some((trace_id, parent, flags)) => TraceContext {
            trace_id,
            span_id,
            parent_span_id: Some(parent),
            sampled: flags & 1 == 1,
        },
        None => TraceContext {
            trace_id: format!("{:032x}", fastrand::u128(1..)),
            span_id,
            parent_span_id: None,
            sampled: true,
        },
    };
    if let Ok(v) = HeaderValue::from_str(&context.traceparent()) {
        headers.insert(TRACEPARENT, v);
    }
    context
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    #[test]
    fn hop_by_hop_headers_end_here_with_those_connection_names() {
        let mut h = headers(&[
            ("connection", "keep-alive, X-Hop"),
            ("keep-alive", "timeout=5"),
            ("x-hop", "1"),
            ("transfer-encoding", "chunked"),
            ("te", "gzip"),
            ("proxy-connection", "keep-alive"),
            ("upgrade", "h2c"),
            ("x-end-to-end", "kept"),
        ]);
        strip_hop_by_hop(&mut h, false);
        let left: Vec<&str> = h.keys().map(|k| k.as_str()).collect();
        assert_eq!(left, ["x-end-to-end"]);
    }

    #[test]
    fn te_trailers_passes_for_grpc() {
        let mut h = headers(&[("te", "trailers")]);
        strip_hop_by_hop(&mut h, false);
        assert_eq!(h.get(TE).unwrap(), "trailers");
    }

    #[test]
    fn an_upgrade_keeps_what_the_next_hop_needs() {
        let mut h = headers(&[
            ("connection", "Upgrade, x-hop"),
            ("upgrade", "websocket"),
            ("x-hop", "1"),
            ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="),
        ]);
        assert!(is_upgrade(&h));
        strip_hop_by_hop(&mut h, true);
        assert_eq!(h.get(CONNECTION).unwrap(), "upgrade");
        assert_eq!(h.get(UPGRADE).unwrap(), "websocket");
        assert!(h.get("x-hop").is_none());
        assert!(h.get("sec-websocket-key").is_some());
        assert!(!is_upgrade(&headers(&[("upgrade", "websocket")])));
        assert!(!is_upgrade(&headers(&[("connection", "upgrade")])));
    }

    #[test]
    fn forwarded_proto_is_added_not_replaced() {
        let mut h = HeaderMap::new();
        forwarded_proto(&mut h);
        assert_eq!(h.get(X_FORWARDED_PROTO).unwrap(), "http");
        let mut h = headers(&[("x-forwarded-proto", "https")]);
        forwarded_proto(&mut h);
        assert_eq!(h.get(X_FORWARDED_PROTO).unwrap(), "https");
    }

    #[test]
    fn a_trace_continues_with_a_new_span_under_the_client_span() {
        let mut h = headers(&[(
            "traceparent",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        )]);
        let t = continue_trace(&mut h);
        assert_eq!(t.trace_id, "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(t.parent_span_id.as_deref(), Some("00f067aa0ba902b7"));
        assert_ne!(t.span_id, "00f067aa0ba902b7");
        assert!(t.sampled);
        let sent = h.get(TRACEPARENT).unwrap().to_str().unwrap();
        assert_eq!(
            sent,
            format!("00-4bf92f3577b34da6a3ce929d0e0e4736-{}-01", t.span_id)
        );
        let mut unsampled = headers(&[(
            "traceparent",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00",
        )]);
        assert!(!continue_trace(&mut unsampled).sampled);
    }

    #[test]
    fn a_missing_or_malformed_traceparent_starts_a_trace() {
        for bad in [
            None,
            Some("garbage"),
            Some("00-00000000000000000000000000000000-00f067aa0ba902b7-01"),
            Some("00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01"),
            Some("ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
            Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-x"),
        ] {
            let mut h = HeaderMap::new();
            if let Some(v) = bad {
                h.insert(TRACEPARENT, HeaderValue::from_static(v));
            }
            let t = continue_trace(&mut h);
            assert_eq!(t.parent_span_id, None, "{bad:?}");
            assert_eq!(t.trace_id.len(), 32);
            assert!(parse_traceparent(h.get(TRACEPARENT).unwrap().to_str().unwrap()).is_some());
        }
    }
}
