//! What an HBONE stream asks for, read from its request head alone: a
//! CONNECT to `ip:port`, the client it carries (`forwarded`), and the trace
//! it belongs to. Kept apart from the
//! listener, which holds sockets, identities and policies, so that the part
//! a peer controls byte for byte can be tested (and fuzzed) on its own.
use std::net::{IpAddr, SocketAddr};

use http::{HeaderMap, Method, StatusCode, Uri};

/// Longest `forwarded` header read. One `for=` pair with an IPv6 address,
/// a port and a `proto` is well under this; longer values are not ours.
pub const MAX_FORWARDED_BYTES: usize = 256;

/// A CONNECT this listener can serve, as far as the request says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectRequest {
    /// The address to deliver to. An IPv4 address written as IPv4-mapped
    /// IPv6 is given as IPv4, the form the pod's addresses, the policies
    /// and the access log use.
    pub dst: SocketAddr,
    /// The trace id of a W3C `traceparent` header, for the access log.
    pub trace_id: Option<String>,
    /// The client's address from `forwarded: for=<ip>` (RFC 7239), as the
    /// sending node agent writes it: the pod the tunnel is for. The peer
    /// chooses it byte for byte, so it names a workload only where the
    /// peer's verified identity agrees; `None` when absent or not exactly
    /// one well-formed address.
    pub forwarded_for: Option<IpAddr>,
}

/// Why a request is answered with an error before anything else is looked
/// at. The texts are the reasons the listener logs.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// HBONE tunnels TCP in CONNECT streams; nothing else is served.
    #[error("only CONNECT is served")]
    NotConnect { method: Method },
    /// The authority must name one address: no host names (the peer has
    /// already resolved the destination to a pod), no default port.
    #[error("authority is not ip:port")]
    BadAuthority { authority: Option<String> },
}

impl Refusal {
    /// The status the stream is answered with.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::NotConnect { .. } => StatusCode::METHOD_NOT_ALLOWED,
            Self::BadAuthority { .. } => StatusCode::BAD_REQUEST,
        }
    }
}

impl ConnectRequest {
    /// Reads a request head. The method is checked first, so a GET with a
    /// good authority is still refused as a GET.
    pub fn parse(method: &Method, uri: &Uri, headers: &HeaderMap) -> Result<Self, Refusal> {
        if method != Method::CONNECT {
            return Err(Refusal::NotConnect {
                method: method.clone(),
            });
        }
        let authority = uri.authority().map(|a| a.as_str());
        let dst: SocketAddr = match authority.map(str::parse) {
            Some(Ok(dst)) => dst,
            _ => {
                return Err(Refusal::BadAuthority {
                    authority: authority.map(str::to_owned),
                });
            }
        };
        let dst = SocketAddr::new(dst.ip().to_canonical(), dst.port());
        Ok(Self {
            dst,
            trace_id: trace_id(headers),
            forwarded_for: forwarded_for(headers),
        })
    }
}

/// The address in the `for=` pair of the one `forwarded` header, strictly:
/// exactly one header of at most [`MAX_FORWARDED_BYTES`], one element (a
/// list names several hops, and which of them is the client is the
/// sender's business), each pair `token=value`, exactly one `for`, whose
/// node is an IP address (IPv4 bare or quoted, IPv6 quoted in brackets, an
/// optional port ignored). `unknown` and obfuscated nodes name no address.
/// An IPv4-mapped IPv6 address is given as IPv4.
pub fn forwarded_for(headers: &HeaderMap) -> Option<IpAddr> {
    let mut values = headers.get_all("forwarded").iter();
    let value = values.next()?;
    if values.next().is_some() || value.len() > MAX_FORWARDED_BYTES {
        return None;
    }
    let value = value.to_str().ok()?;
    if value.contains(',') {
        return None;
    }
    let mut found = None;
    for pair in value.split(';') {
        let (key, node) = pair.trim().split_once('=')?;
        if key.is_empty() || !key.bytes().all(is_token_byte) {
            return None;
        }
        if !key.eq_ignore_ascii_case("for") {
            continue;
        }
        if found.is_some() {
            return None;
        }
        found = Some(node_address(node)?);
    }
    found
}

/// RFC 9110 `tchar`.
fn is_token_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// A `for` value's address: `1.2.3.4`, `"1.2.3.4"`, `"1.2.3.4:80"`,
/// `"[fd00::1]"`, `"[fd00::1]:80"`.
fn node_address(node: &str) -> Option<IpAddr> {
    let (quoted, inner) = match node.strip_prefix('"') {
        Some(rest) => (true, rest.strip_suffix('"')?),
        None => (false, node),
    };
    let ip = if let Some(rest) = inner.strip_prefix('[') {
        // Brackets need quotes (they are not token characters).
        if !quoted {
            return None;
        }
        let (v6, after) = rest.split_once(']')?;
        if !(after.is_empty() || port(after.strip_prefix(':')?)) {
            return None;
        }
        IpAddr::V6(v6.parse().ok()?)
    } else {
        let (v4, port_part) = match inner.split_once(':') {
            // A port needs quotes (':' is not a token character).
            Some((v4, p)) if quoted => (v4, Some(p)),
            Some(_) => return None,
            None => (inner, None),
        };
        if port_part.is_some_and(|p| !port(p)) {
            return None;
        }
        IpAddr::V4(v4.parse().ok()?)
    };
    Some(ip.to_canonical())
}

fn port(p: &str) -> bool {
    !p.is_empty() && p.len() <= 5 && p.parse::<u16>().is_ok()
}

/// The second field of `traceparent` (`version-traceid-parentid-flags`),
/// taken as written: it only labels the access log line, so a malformed
/// one is logged as sent rather than refused.
fn trace_id(headers: &HeaderMap) -> Option<String> {
    headers
        .get("traceparent")
        .and_then(|v| v.to_str().ok())
        .and_then(|t| t.split('-').nth(1))
        .map(str::to_owned)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(method: &str, uri: &str, headers: &[(&str, &str)]) -> http::Request<()> {
        let mut b = http::Request::builder().method(method).uri(uri);
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        b.body(()).unwrap()
    }

    fn read(r: &http::Request<()>) -> Result<ConnectRequest, Refusal> {
        ConnectRequest::parse(r.method(), r.uri(), r.headers())
    }

    #[test]
    fn connect_to_an_address() {
        let r = request("CONNECT", "10.0.0.7:8080", &[]);
        assert_eq!(
            read(&r),
            Ok(ConnectRequest {
                dst: "10.0.0.7:8080".parse().unwrap(),
                trace_id: None,
                forwarded_for: None,
            })
        );
        let r = request("CONNECT", "[fd00::7]:443", &[]);
        assert_eq!(read(&r).unwrap().dst, "[fd00::7]:443".parse().unwrap());
    }

    #[test]
    fn ipv4_mapped_destinations_are_ipv4() {
        let r = request("CONNECT", "[::ffff:10.0.0.7]:8080", &[]);
        assert_eq!(read(&r).unwrap().dst, "10.0.0.7:8080".parse().unwrap());
    }

    #[test]
    fn only_connect_is_served() {
        for method in ["GET", "POST", "connect", "PRI"] {
            let r = request(method, "http://10.0.0.7:8080/", &[]);
            let refusal = read(&r).unwrap_err();
            assert_eq!(
                refusal,
                Refusal::NotConnect {
                    method: Method::from_bytes(method.as_bytes()).unwrap()
                }
            );
            assert_eq!(refusal.status(), StatusCode::METHOD_NOT_ALLOWED);
            assert_eq!(refusal.to_string(), "only CONNECT is served");
        }
    }

    #[test]
    fn authority_must_be_ip_and_port() {
        for (uri, authority) in [
            ("web.shop.svc:8080", Some("web.shop.svc:8080")),
            ("10.0.0.7", Some("10.0.0.7")),
            ("[fd00::7]", Some("[fd00::7]")),
            ("user@10.0.0.7:80", Some("user@10.0.0.7:80")),
            ("/", None),
        ] {
            let r = request("CONNECT", uri, &[]);
            let refusal = read(&r).unwrap_err();
            assert_eq!(
                refusal,
                Refusal::BadAuthority {
                    authority: authority.map(str::to_owned)
                },
                "{uri}"
            );
            assert_eq!(refusal.status(), StatusCode::BAD_REQUEST);
            assert_eq!(refusal.to_string(), "authority is not ip:port");
        }
    }

    #[test]
    fn trace_id_from_traceparent() {
        let r = request(
            "CONNECT",
            "10.0.0.7:8080",
            &[(
                "traceparent",
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            )],
        );
        assert_eq!(
            read(&r).unwrap().trace_id.as_deref(),
            Some("4bf92f3577b34da6a3ce929d0e0e4736")
        );
        let r = request("CONNECT", "10.0.0.7:8080", &[("traceparent", "garbage")]);
        assert_eq!(read(&r).unwrap().trace_id, None);
    }

    fn forwarded(values: &[&str]) -> Option<IpAddr> {
        let pairs: Vec<(&str, &str)> = values.iter().map(|v| ("forwarded", *v)).collect();
        read(&request("CONNECT", "10.0.0.7:8080", &pairs))
            .unwrap()
            .forwarded_for
    }

    #[test]
    fn the_client_address_from_forwarded_for() {
        let ip = |s: &str| Some(s.parse::<IpAddr>().unwrap());
        // As the node agents (and ztunnel) write it.
        assert_eq!(forwarded(&["for=10.244.0.5"]), ip("10.244.0.5"));
        assert_eq!(forwarded(&["for=\"[fd00::5]\""]), ip("fd00::5"));
        // RFC 7239's other spellings.
        assert_eq!(forwarded(&["For=\"10.244.0.5\""]), ip("10.244.0.5"));
        assert_eq!(forwarded(&["for=\"10.244.0.5:4711\""]), ip("10.244.0.5"));
        assert_eq!(forwarded(&["for=\"[fd00::5]:4711\""]), ip("fd00::5"));
        assert_eq!(
            forwarded(&["proto=http; for=10.244.0.5;by=10.0.0.1"]),
            ip("10.244.0.5")
        );
        assert_eq!(forwarded(&["for=\"[::ffff:10.0.0.5]\""]), ip("10.0.0.5"));
        assert_eq!(forwarded(&[]), None);
    }

    #[test]
    fn a_forwarded_header_that_is_not_exactly_one_address_names_none() {
        let long = format!("for=10.0.0.5;x={}", "a".repeat(MAX_FORWARDED_BYTES));
        for bad in [
            "for=10.244.0.5, for=10.244.0.6",
            "for=10.244.0.5;for=10.244.0.6",
            "for=unknown",
            "for=_hidden",
            "for=",
            "for",
            "for=web.shop",
            "for=[fd00::5]",
            "for=10.244.0.5:80",
            "for=\"10.244.0.5:99999\"",
            "for=\"10.244.0.5:\"",
            "for=\"[fd00::5]x\"",
            "for=\"[fd00::5\"",
            "for=\"10.244.0.5",
            "f r=10.244.0.5",
            "proto=http",
            "for=10.244.0.5;=x",
            long.as_str(),
        ] {
            assert_eq!(forwarded(&[bad]), None, "{bad:?}");
        }
        assert_eq!(forwarded(&["for=10.0.0.5", "for=10.0.0.6"]), None);
        let mut h = HeaderMap::new();
        h.insert(
            "forwarded",
            http::HeaderValue::from_bytes(b"for=10.0.0.5;x=\xff").unwrap(),
        );
        assert_eq!(forwarded_for(&h), None);
    }
}
