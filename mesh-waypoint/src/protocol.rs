//! Which protocol a stream speaks: declared by the Service port (its
//! `appProtocol`, else Istio's port-name prefixes), else detected from the
//! first bytes the client sent, within a bound in bytes and in time; what
//! is not recognisably HTTP is relayed as TCP.
use std::time::Duration;

/// How the waypoint handles a stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// HTTP/1.1 (and 1.0), upstream as HTTP/1.1.
    Http1,
    /// HTTP/2 with prior knowledge (h2c, gRPC), upstream as HTTP/2.
    Http2,
    /// Bytes relayed to one endpoint.
    Tcp,
}

impl Protocol {
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Http1 => "http/1.1",
            Protocol::Http2 => "http/2",
            Protocol::Tcp => "tcp",
        }
    }
}

/// What the destination says about its protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Declared {
    Known(Protocol),
    /// HTTP: HTTP/1.1, or HTTP/2 when the client opens with the
    /// prior-knowledge preface (h2c, gRPC), as Envoy serves either on a
    /// port declared `http`.
    Http,
    /// Nothing said: detect.
    Undeclared,
}

/// From a Service port's `appProtocol` (wins when it names something we
/// know) or, as Istio reads them, its name's prefix (`http-web`, `grpc`).
pub fn declared(app_protocol: Option<&str>, port_name: &str) -> Declared {
    if let Some(p) = app_protocol.and_then(from_app_protocol) {
        return p;
    }
    let name = port_name.to_ascii_lowercase();
    // gRPC-Web runs over HTTP/1.1 (and may over HTTP/2): not `grpc`.
    if name == "grpc-web" || name.starts_with("grpc-web-") {
        return Declared::Http;
    }
    let prefix = name.split_once('-').map_or(name.as_str(), |(p, _)| p);
    match prefix {
        "http" => Declared::Http,
        "http2" | "grpc" => Declared::Known(Protocol::Http2),
        // TLS the waypoint cannot read, and protocols that are not HTTP.
        "tcp" | "tls" | "https" | "mongo" | "mysql" | "redis" => Declared::Known(Protocol::Tcp),
        _ => Declared::Undeclared,
    }
}

fn from_app_protocol(value: &str) -> Option<Declared> {
    match value.to_ascii_lowercase().as_str() {
        "http" | "grpc-web" | "kubernetes.io/ws" => Some(Declared::Http),
        "kubernetes.io/h2c" | "http2" | "grpc" => Some(Declared::Known(Protocol::Http2)),
        "tcp" | "tls" | "https" | "kubernetes.io/wss" => Some(Declared::Known(Protocol::Tcp)),
        _ => None,
    }
}

/// At most this many bytes are read before deciding: an HTTP/1.x request
/// line longer than this is relayed as TCP.
pub const DETECT_BYTES: usize = 8 * 1024;
/// At most this long is waited for the client's first bytes: a protocol
/// where the server speaks first (MySQL, SMTP) sends nothing, and is
/// relayed as TCP after this delay (Istio's former protocol detection
/// timeout). Node agents send the client's first bytes with the CONNECT,
/// so HTTP usually needs no wait at all.
pub const DETECT_TIMEOUT: Duration = Duration::from_millis(100);

/// The prior-knowledge preface of HTTP/2 (RFC 9113, 3.4).
pub const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// The longest method read as HTTP/1.x (`PROPPATCH`, `MKCALENDAR` fit).
const MAX_METHOD: usize = 24;

/// What the first bytes say.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sniffed {
    Is(Protocol),
    /// Could still be HTTP: read more (within the bounds).
    NeedMore,
}

/// The decision from the bytes read so far; at the bounds, [`Sniffed::NeedMore`]
/// means TCP (see [`decide`]).
pub fn sniff(first: &[u8]) -> Sniffed {
    if first.len() < H2_PREFACE.len() && H2_PREFACE.starts_with(first) {
        return Sniffed::NeedMore;
    }
    if first.starts_with(H2_PREFACE) {
        return Sniffed::Is(Protocol::Http2);
    }
    // method SP request-target SP HTTP/1.x CRLF
    let method_len = first.iter().take_while(|b| is_tchar(**b)).count();
    if method_len > MAX_METHOD {
        return Sniffed::Is(Protocol::Tcp);
    }
    match first.get(method_len) {
        None => return Sniffed::NeedMore,
        Some(b' ') if method_len > 0 => {}
        Some(_) => return Sniffed::Is(Protocol::Tcp),
    }
    let Some(end) = first.iter().position(|b| *b == b'\n') else {
        // A request target has no control characters.
        return if first[method_len + 1..].iter().any(|b| b.is_ascii_control()) {
            Sniffed::Is(Protocol::Tcp)
        } else {
            Sniffed::NeedMore
        };
    };
    let line = &first[..end];
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let http1 = line.ends_with(b" HTTP/1.1") || line.ends_with(b" HTTP/1.0");
    if http1 && line.len() > method_len + 1 + b" HTTP/1.1".len() {
        Sniffed::Is(Protocol::Http1)
    } else {
        Sniffed::Is(Protocol::Tcp)
    }
}

/// Which HTTP a client of a port declared HTTP speaks: HTTP/2 when its
/// first bytes are the prior-knowledge preface, else HTTP/1.1 (hyper then
/// answers what does not parse with 400).
pub fn sniff_http(first: &[u8]) -> Sniffed {
    if first.starts_with(H2_PREFACE) {
        Sniffed::Is(Protocol::Http2)
    } else if H2_PREFACE.starts_with(first) {
        Sniffed::NeedMore
    } else {
        Sniffed::Is(Protocol::Http1)
    }
}

/// The final decision once reading has stopped (at the byte bound, at the
/// deadline, or at the end of the stream).
pub fn decide(first: &[u8]) -> Protocol {
    match sniff(first) {
        Sniffed::Is(p) => p,
        Sniffed::NeedMore => Protocol::Tcp,
    }
}

/// RFC 9110's token characters.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn app_protocol_wins_over_the_port_name() {
        use Protocol::*;
        assert_eq!(declared(Some("http"), "tcp-x"), Declared::Http);
        assert_eq!(declared(Some("grpc-web"), "grpc"), Declared::Http);
        assert_eq!(
            declared(Some("kubernetes.io/h2c"), ""),
            Declared::Known(Http2)
        );
        assert_eq!(declared(Some("grpc"), "http"), Declared::Known(Http2));
        assert_eq!(declared(Some("TCP"), "http"), Declared::Known(Tcp));
        // An appProtocol we do not know leaves the name to decide.
        assert_eq!(
            declared(Some("example.com/custom"), "grpc-api"),
            Declared::Known(Http2)
        );
    }

    #[test]
    fn istio_port_name_prefixes() {
        use Protocol::*;
        for (name, want) in [
            ("http", Declared::Http),
            ("http-web", Declared::Http),
            ("HTTP-web", Declared::Http),
            ("grpc-web", Declared::Http),
            ("grpc-web-api", Declared::Http),
            ("grpc-webx", Declared::Known(Http2)),
            ("http2-api", Declared::Known(Http2)),
            ("grpc", Declared::Known(Http2)),
            ("grpc-api", Declared::Known(Http2)),
            ("tcp-db", Declared::Known(Tcp)),
            ("mysql", Declared::Known(Tcp)),
            ("httpx", Declared::Undeclared),
            ("web", Declared::Undeclared),
            ("", Declared::Undeclared),
        ] {
            assert_eq!(declared(None, name), want, "{name}");
        }
    }

    #[test]
    fn http1_request_lines_are_http1() {
        for line in [
            &b"GET / HTTP/1.1\r\n"[..],
            b"POST /api?x=1 HTTP/1.0\r\nHost: a\r\n\r\n",
            b"OPTIONS * HTTP/1.1\n",
            b"M-SEARCH * HTTP/1.1\r\n",
        ] {
            assert_eq!(sniff(line), Sniffed::Is(Protocol::Http1), "{line:?}");
        }
    }

    #[test]
    fn the_h2_preface_is_http2_and_its_beginning_needs_more() {
        assert_eq!(sniff(H2_PREFACE), Sniffed::Is(Protocol::Http2));
        let mut more = H2_PREFACE.to_vec();
        more.extend_from_slice(&[0, 0, 0, 4]);
        assert_eq!(sniff(&more), Sniffed::Is(Protocol::Http2));
        assert_eq!(sniff(b"PRI * HTT"), Sniffed::NeedMore);
        assert_eq!(sniff(b""), Sniffed::NeedMore);
    }

    #[test]
    fn a_declared_http_port_serves_http2_on_its_preface_and_http1_otherwise() {
        assert_eq!(sniff_http(H2_PREFACE), Sniffed::Is(Protocol::Http2));
        assert_eq!(sniff_http(b"PRI * HTTP/2.0"), Sniffed::NeedMore);
        assert_eq!(sniff_http(b""), Sniffed::NeedMore);
        for first in [
            &b"GET / HTTP/1.1\r\n"[..],
            b"P",
            b"PRI * HTTP/1.1\r\n",
            b"\x16\x03",
        ] {
            let want = if first == b"P" {
                Sniffed::NeedMore
            } else {
                Sniffed::Is(Protocol::Http1)
            };
            assert_eq!(sniff_http(first), want, "{first:?}");
        }
    }

    #[test]
    fn partial_request_lines_need_more_and_end_as_tcp() {
        for partial in [&b"GE"[..], b"GET ", b"GET /index.html HTTP/1"] {
            assert_eq!(sniff(partial), Sniffed::NeedMore, "{partial:?}");
            assert_eq!(decide(partial), Protocol::Tcp);
        }
    }

    #[test]
    fn what_is_not_http_is_tcp_at_once() {
        for bytes in [
            &b"\x16\x03\x01\x02\x00"[..], // a TLS ClientHello
            b"\x00\x00\x00\x08",
            b"SSH-2.0-OpenSSH_9.6\r\n",
            b"GET / SPDY/3\r\n",
            b"GET\t/ HTTP/1.1\r\n",
            b" GET / HTTP/1.1\r\n",
            b"GET  HTTP/1.1\r\n",
            b"GET /\x01 ",
        ] {
            assert_eq!(sniff(bytes), Sniffed::Is(Protocol::Tcp), "{bytes:?}");
        }
        let long_method = vec![b'A'; MAX_METHOD + 1];
        assert_eq!(sniff(&long_method), Sniffed::Is(Protocol::Tcp));
    }
}
