//! What an HBONE stream asks for, read from its request head alone: a
//! CONNECT to `ip:port`, and the trace it belongs to. Kept apart from the
//! listener, which holds sockets, identities and policies, so that the part
//! a peer controls byte for byte can be tested (and fuzzed) on its own.
use std::net::SocketAddr;

use http::{HeaderMap, Method, StatusCode, Uri};

/// A CONNECT this listener can serve, as far as the request says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectRequest {
    /// The address to deliver to. An IPv4 address written as IPv4-mapped
    /// IPv6 is given as IPv4, the form the pod's addresses, the policies
    /// and the access log use.
    pub dst: SocketAddr,
    /// The trace id of a W3C `traceparent` header, for the access log.
    pub trace_id: Option<String>,
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
        })
    }
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
}
