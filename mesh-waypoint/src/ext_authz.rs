//! CUSTOM authorization: asking an external authorizer over Envoy's
//! ext_authz gRPC API (`envoy.service.auth.v3.Authorization/Check`).
//!
//! The provider a CUSTOM policy names (`providers`) is a mesh Service: it
//! is resolved through the view, one of its ready endpoints is chosen by
//! the balancer, and the call goes over HBONE with the waypoint's identity
//! like any upstream request (plain h2c only to an endpoint outside the
//! mesh, as for any upstream). The HTTP/2 connection inside the tunnel is
//! kept and shared by later checks to that endpoint. What the check says
//! (`answer`) and what is sent (`check_request`) are pure; the caller bounds
//! the call by the provider's `timeout`.
pub mod proto;
pub mod providers;

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{Arc, Mutex, RwLock},
};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use http::{HeaderMap, HeaderName, HeaderValue, Request, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::client::conn::http2;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use mesh_discovery::view::MeshView;
use prost::Message;
use tracing::debug;

use crate::{target, waypoint::Waypoint};
use providers::{Provider, Providers};

/// The largest check response read; an authorizer answering more is
/// broken (or hostile) and counts as an error.
const MAX_RESPONSE_BYTES: usize = 256 * 1024;
/// Connections kept to authorizers' endpoints.
const MAX_KEPT: usize = 64;

/// What the authorizer decided.
#[derive(Debug, Clone, PartialEq)]
pub enum Answer {
    /// OK: the request goes on, with these header changes.
    Allowed(HeaderChanges),
    /// Denied: the client gets this.
    Denied {
        status: StatusCode,
        headers: Vec<(HeaderName, HeaderValue)>,
        body: Bytes,
    },
}

/// `ok_response`'s changes to the request before it goes upstream.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct HeaderChanges {
    pub set: Vec<(HeaderName, HeaderValue, Mode)>,
    pub remove: Vec<HeaderName>,
}

/// How one header of `ok_response` is applied (Envoy's
/// `HeaderAppendAction`, with `append` unset meaning overwrite, as Envoy
/// documents for this message).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Append,
    AddIfAbsent,
    Overwrite,
    OverwriteIfPresent,
}

impl HeaderChanges {
    /// Applies the changes; headers that frame the message or the
    /// connection, and `host`, are never touched (`settable`).
    pub fn apply(&self, headers: &mut HeaderMap) {
        for name in &self.remove {
            if settable(name) {
                headers.remove(name);
            }
        }
        for (name, value, mode) in &self.set {
            if !settable(name) {
                continue;
            }
            match mode {
                Mode::Append => {
                    headers.append(name.clone(), value.clone());
                }
                Mode::AddIfAbsent => {
                    if !headers.contains_key(name) {
                        headers.insert(name.clone(), value.clone());
                    }
                }
                Mode::Overwrite => {
                    headers.insert(name.clone(), value.clone());
                }
                Mode::OverwriteIfPresent => {
                    if headers.contains_key(name) {
                        headers.insert(name.clone(), value.clone());
                    }
                }
            }
        }
    }
}

/// Why a check has no answer (the provider's `failOpen` then decides).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CheckError {
    #[error("{0}")]
    Provider(String),
    #[error("Service {0} is not known")]
    NoService(String),
    #[error("Service {service} has no port {port}")]
    NoPort { service: String, port: u16 },
    #[error("Service {0} has no ready endpoint")]
    NoEndpoint(String),
    #[error("connecting to {addr}: {reason}")]
    Connect { addr: SocketAddr, reason: String },
    #[error("{addr}: {reason}")]
    Call { addr: SocketAddr, reason: String },
    #[error("{addr} answered gRPC status {code} ({message})")]
    Grpc {
        addr: SocketAddr,
        code: i32,
        message: String,
    },
    #[error("no answer within {0:?}")]
    Timeout(std::time::Duration),
}

/// The facts of a request a check sends.
pub struct CheckFacts<'a> {
    pub source: SocketAddr,
    /// The client's SPIFFE id, `spiffe://` included.
    pub source_principal: Option<&'a str>,
    pub destination: SocketAddr,
    pub method: &'a str,
    pub host: &'a str,
    /// With its query.
    pub path: &'a str,
    pub protocol: &'a str,
    pub headers: &'a HeaderMap,
}

/// The CheckRequest for a request: Envoy's attributes (source and
/// destination peers, the HTTP request with its pseudo-headers among the
/// headers), with only the headers the provider includes when it names
/// them.
pub fn check_request(facts: &CheckFacts<'_>, provider: &Provider) -> proto::CheckRequest {
    let mut headers: HashMap<String, String> = HashMap::new();
    let included = |name: &HeaderName| {
        provider
            .include_headers
            .as_ref()
            .is_none_or(|only| only.contains(name))
    };
    for (name, value) in facts.headers {
        if !included(name) {
            continue;
        }
        let value = String::from_utf8_lossy(value.as_bytes()).into_owned();
        headers
            .entry(name.as_str().to_owned())
            .and_modify(|v| {
                v.push(',');
                v.push_str(&value);
            })
            .or_insert(value);
    }
    for (name, value) in [
        (":authority", facts.host),
        (":method", facts.method),
        (":path", facts.path),
        (":scheme", "http"),
    ] {
        headers.insert(name.to_owned(), value.to_owned());
    }
    let peer = |addr: SocketAddr, principal: Option<&str>| proto::attribute_context::Peer {
        address: Some(proto::Address {
            address: Some(proto::address::Address::SocketAddress(
                proto::SocketAddress {
                    address: addr.ip().to_string(),
                    port_specifier: Some(proto::socket_address::PortSpecifier::PortValue(
                        u32::from(addr.port()),
                    )),
                    ..Default::default()
                },
            )),
        }),
        principal: principal.unwrap_or_default().to_owned(),
        ..Default::default()
    };
    let query = facts.path.split_once('?').map_or("", |(_, q)| q);
    proto::CheckRequest {
        attributes: Some(proto::AttributeContext {
            source: Some(peer(facts.source, facts.source_principal)),
            destination: Some(peer(facts.destination, None)),
            request: Some(proto::attribute_context::Request {
                time: None,
                http: Some(proto::attribute_context::HttpRequest {
                    method: facts.method.to_owned(),
                    headers,
                    path: facts.path.to_owned(),
                    host: facts.host.to_owned(),
                    scheme: "http".into(),
                    query: query.to_owned(),
                    size: -1,
                    protocol: facts.protocol.to_owned(),
                    ..Default::default()
                }),
            }),
            ..Default::default()
        }),
    }
}

// `append` is deprecated in Envoy's API, and still honoured by Envoy.
#[allow(deprecated)]
fn header_pairs(options: &[proto::HeaderValueOption]) -> Vec<(HeaderName, HeaderValue, Mode)> {
    options
        .iter()
        .filter_map(|o| {
            let h = o.header.as_ref()?;
            let name = HeaderName::from_bytes(h.key.to_ascii_lowercase().as_bytes()).ok()?;
            if !settable(&name) {
                return None;
            }
            let raw = if h.raw_value.is_empty() {
                h.value.as_bytes()
            } else {
                &h.raw_value
            };
            let value = HeaderValue::from_bytes(raw).ok()?;
            let mode = match (o.append.as_ref().map(|a| a.value), o.append_action) {
                (Some(true), _) => Mode::Append,
                (Some(false), _) => Mode::Overwrite,
                (None, 1) => Mode::AddIfAbsent,
                (None, 3) => Mode::OverwriteIfPresent,
                (None, _) => Mode::Overwrite,
            };
            Some((name, value, mode))
        })
        .collect()
}

/// Whether an authorizer may set or remove a header: never one that
/// frames the message or the connection (a wrong `content-length` would
/// corrupt the exchange), nor `host`, which routing has read.
fn settable(name: &HeaderName) -> bool {
    use http::header::{CONNECTION, CONTENT_LENGTH, HOST, TE, TRANSFER_ENCODING, UPGRADE};
    ![
        CONNECTION,
        CONTENT_LENGTH,
        HOST,
        TE,
        TRANSFER_ENCODING,
        UPGRADE,
    ]
    .contains(name)
        && !["keep-alive", "proxy-connection"].contains(&name.as_str())
}

/// What a CheckResponse decides: status OK allows (with `ok_response`'s
/// header changes); any other status denies with `denied_response`'s
/// status (403 when it has none), headers and body.
pub fn answer(response: proto::CheckResponse) -> Answer {
    let ok = response.status.as_ref().is_none_or(|s| s.code == 0);
    match (ok, response.http_response) {
        (true, Some(proto::check_response::HttpResponse::OkResponse(r))) => {
            Answer::Allowed(HeaderChanges {
                set: header_pairs(&r.headers),
                remove: r
                    .headers_to_remove
                    .iter()
                    .filter_map(|n| HeaderName::from_bytes(n.to_ascii_lowercase().as_bytes()).ok())
                    .collect(),
            })
        }
        (true, _) => Answer::Allowed(HeaderChanges::default()),
        (false, denied) => {
            let denied = match denied {
                Some(
                    proto::check_response::HttpResponse::DeniedResponse(d)
                    | proto::check_response::HttpResponse::ErrorResponse(d),
                ) => d,
                _ => proto::DeniedHttpResponse::default(),
            };
            let status = denied
                .status
                .and_then(|s| u16::try_from(s.code).ok())
                .filter(|c| (200..=599).contains(c))
                .and_then(|c| StatusCode::from_u16(c).ok())
                .unwrap_or(StatusCode::FORBIDDEN);
            Answer::Denied {
                status,
                headers: header_pairs(&denied.headers)
                    .into_iter()
                    .map(|(n, v, _)| (n, v))
                    .collect(),
                body: Bytes::from(denied.body),
            }
        }
    }
}

/// A gRPC message as a length-prefixed frame (uncompressed).
pub fn frame(message: &impl Message) -> Bytes {
    let mut out = BytesMut::with_capacity(5 + message.encoded_len());
    out.put_u8(0);
    out.put_u32(message.encoded_len() as u32);
    message
        .encode(&mut out)
        .expect("a BytesMut grows as needed");
    out.freeze()
}

/// The one message of a unary gRPC response body.
pub fn unframe<M: Message + Default>(mut body: Bytes) -> Result<M, String> {
    if body.len() < 5 {
        return Err("the response has no gRPC message".into());
    }
    if body.get_u8() != 0 {
        return Err("the response is compressed, which was not asked for".into());
    }
    let len = body.get_u32() as usize;
    if body.len() < len {
        return Err("the response's gRPC message is cut short".into());
    }
    M::decode(body.split_to(len)).map_err(|e| format!("the response does not decode: {e}"))
}

/// The providers, and connections to their endpoints.
#[derive(Default)]
pub struct ExtAuthz {
    providers: RwLock<Arc<Providers>>,
    kept: Mutex<HashMap<SocketAddr, http2::SendRequest<Full<Bytes>>>>,
}

impl ExtAuthz {
    /// Replaces the providers (at start, from `--extension-providers`).
    pub fn set_providers(&self, providers: Providers) {
        *self.providers.write().unwrap() = Arc::new(providers);
    }

    pub fn providers(&self) -> Arc<Providers> {
        self.providers.read().unwrap().clone()
    }

    fn kept(&self, addr: SocketAddr) -> Option<http2::SendRequest<Full<Bytes>>> {
        let mut kept = self.kept.lock().unwrap();
        match kept.get(&addr) {
            Some(s) if !s.is_closed() => Some(s.clone()),
            Some(_) => {
                kept.remove(&addr);
                None
            }
            None => None,
        }
    }

    fn forget(&self, addr: SocketAddr) {
        self.kept.lock().unwrap().remove(&addr);
    }

    fn keep(&self, addr: SocketAddr, sender: http2::SendRequest<Full<Bytes>>) {
        let mut kept = self.kept.lock().unwrap();
        kept.retain(|_, s| !s.is_closed());
        if kept.len() < MAX_KEPT || kept.contains_key(&addr) {
            kept.insert(addr, sender);
        }
    }

    /// Asks `provider` about a request (`src`: whom the tunnel carries).
    /// Not bounded in time here: the caller applies the provider's timeout.
    pub async fn check(
        &self,
        wp: &Waypoint,
        view: &MeshView,
        provider: &Provider,
        src: SocketAddr,
        request: &proto::CheckRequest,
    ) -> Result<Answer, CheckError> {
        let key = provider.service.key();
        let route = view
            .service(&key)
            .ok_or_else(|| CheckError::NoService(key.clone()))?;
        let port = route
            .port(provider.port)
            .ok_or_else(|| CheckError::NoPort {
                service: key.clone(),
                port: provider.port,
            })?;
        let endpoints = target::usable(view, &wp.own, port.endpoints.clone());
        let place = wp
            .balancer
            .choose(&endpoints, &[])
            .ok_or_else(|| CheckError::NoEndpoint(key.clone()))?;
        let addr = place.addr;
        let mut sender = match self.kept(addr) {
            Some(s) => s,
            None => {
                let expected = view.expected_identity(addr.ip());
                let io = wp
                    .upstream
                    .open(addr, expected.as_ref(), src)
                    .await
                    .map_err(|e| CheckError::Connect {
                        addr,
                        reason: e.to_string(),
                    })?;
                let (sender, conn) = http2::Builder::new(TokioExecutor::new())
                    .timer(TokioTimer::new())
                    .handshake(TokioIo::new(io))
                    .await
                    .map_err(|e| CheckError::Connect {
                        addr,
                        reason: e.to_string(),
                    })?;
                tokio::spawn(async move {
                    if let Err(e) = conn.await {
                        debug!(%addr, error = %e, "connection to an external authorizer ended");
                    }
                });
                self.keep(addr, sender.clone());
                sender
            }
        };
        // A broken connection is not kept: the next check opens another.
        let call = |reason: String| {
            self.forget(addr);
            CheckError::Call { addr, reason }
        };
        let authority = format!(
            "{}.{}.svc:{}",
            provider.service.name, provider.service.namespace, provider.port
        );
        let grpc = Request::post(format!("http://{authority}{}", proto::CHECK_PATH))
            .header(http::header::CONTENT_TYPE, "application/grpc")
            .header(http::header::TE, "trailers")
            .header(
                "grpc-timeout",
                format!("{}m", provider.timeout.as_millis().clamp(1, 99_999_999)),
            )
            .body(Full::new(frame(request)))
            .map_err(|e| call(e.to_string()))?;
        sender.ready().await.map_err(|e| call(e.to_string()))?;
        let response = sender
            .send_request(grpc)
            .await
            .map_err(|e| call(e.to_string()))?;
        if response.status() != StatusCode::OK {
            return Err(call(format!("answered HTTP {}", response.status())));
        }
        let head = response.headers().clone();
        let collected = Limited::new(response.into_body(), MAX_RESPONSE_BYTES)
            .collect()
            .await
            .map_err(|e| call(e.to_string()))?;
        let trailers = collected.trailers().cloned().unwrap_or_default();
        let status = trailers
            .get("grpc-status")
            .or_else(|| head.get("grpc-status"))
            .and_then(|v| v.to_str().ok()?.parse::<i32>().ok())
            .ok_or_else(|| call("the response has no grpc-status".into()))?;
        if status != 0 {
            let message = trailers
                .get("grpc-message")
                .or_else(|| head.get("grpc-message"))
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_owned();
            return Err(CheckError::Grpc {
                addr,
                code: status,
                message,
            });
        }
        let response: proto::CheckResponse = unframe(collected.to_bytes()).map_err(call)?;
        drop(place);
        Ok(answer(response))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proto::*;

    fn provider(include: Option<Vec<&'static str>>) -> Provider {
        Provider {
            name: "ext".into(),
            service: providers::ServiceRef {
                namespace: "sec".into(),
                name: "authz".into(),
            },
            port: 9000,
            timeout: std::time::Duration::from_secs(1),
            fail_open: false,
            status_on_error: StatusCode::FORBIDDEN,
            include_headers: include.map(|v| v.into_iter().map(HeaderName::from_static).collect()),
        }
    }

    #[allow(deprecated)]
    fn header(key: &str, value: &str, append: Option<bool>, action: i32) -> HeaderValueOption {
        HeaderValueOption {
            header: Some(proto::HeaderValue {
                key: key.into(),
                value: value.into(),
                ..Default::default()
            }),
            append: append.map(|value| BoolValue { value }),
            append_action: action,
            ..Default::default()
        }
    }

    #[test]
    fn the_request_carries_peers_method_path_host_and_headers() {
        let mut headers = HeaderMap::new();
        headers.append("x-user", "a".parse().unwrap());
        headers.append("x-user", "b".parse().unwrap());
        headers.insert("cookie", "secret".parse().unwrap());
        let facts = CheckFacts {
            source: "10.0.0.5:40000".parse().unwrap(),
            source_principal: Some("spiffe://cluster.local/ns/shop/sa/client"),
            destination: "10.96.0.30:80".parse().unwrap(),
            method: "GET",
            host: "web",
            path: "/a?b=c",
            protocol: "HTTP/1.1",
            headers: &headers,
        };
        let r = check_request(&facts, &provider(None));
        let a = r.attributes.unwrap();
        let src = a.source.unwrap();
        assert_eq!(src.principal, "spiffe://cluster.local/ns/shop/sa/client");
        let Some(address::Address::SocketAddress(sa)) = src.address.unwrap().address else {
            panic!("a socket address")
        };
        assert_eq!(
            sa.port_specifier,
            Some(socket_address::PortSpecifier::PortValue(40000))
        );
        let http = a.request.unwrap().http.unwrap();
        assert_eq!(
            (
                http.method.as_str(),
                http.path.as_str(),
                http.query.as_str()
            ),
            ("GET", "/a?b=c", "b=c")
        );
        assert_eq!(http.headers["x-user"], "a,b");
        assert_eq!(http.headers[":path"], "/a?b=c");
        assert_eq!(http.headers["cookie"], "secret");
        let only = check_request(&facts, &provider(Some(vec!["x-user"])));
        let http = only.attributes.unwrap().request.unwrap().http.unwrap();
        assert!(!http.headers.contains_key("cookie"));
        assert_eq!(http.headers["x-user"], "a,b");
        // The frame decodes back.
        let sent = check_request(&facts, &provider(None));
        let back: CheckRequest = unframe(frame(&sent)).unwrap();
        assert_eq!(back, sent);
    }

    #[test]
    fn ok_allows_with_its_header_changes() {
        let a = answer(CheckResponse {
            status: Some(Status::default()),
            http_response: Some(check_response::HttpResponse::OkResponse(OkHttpResponse {
                headers: vec![
                    header("x-user", "alice", None, 0),
                    header("x-tag", "1", Some(true), 0),
                    header("x-once", "1", None, 1),
                    header("x-only", "1", None, 3),
                    header("host", "evil", None, 0),
                    header("content-length", "999", None, 0),
                    header("transfer-encoding", "chunked", None, 0),
                ],
                headers_to_remove: vec!["Authorization".into()],
                ..Default::default()
            })),
            ..Default::default()
        });
        let Answer::Allowed(changes) = a else {
            panic!("{a:?}")
        };
        let mut h = HeaderMap::new();
        h.insert("x-user", "mallory".parse().unwrap());
        h.insert("x-tag", "0".parse().unwrap());
        h.insert("x-once", "0".parse().unwrap());
        h.insert("authorization", "Bearer x".parse().unwrap());
        h.insert("host", "web".parse().unwrap());
        changes.apply(&mut h);
        assert_eq!(h["x-user"], "alice");
        assert_eq!(h.get_all("x-tag").iter().count(), 2);
        assert_eq!(h["x-once"], "0");
        assert!(!h.contains_key("x-only"));
        assert!(!h.contains_key("authorization"));
        assert_eq!(h["host"], "web");
        assert!(!h.contains_key("content-length") && !h.contains_key("transfer-encoding"));
        assert_eq!(
            answer(CheckResponse::default()),
            Answer::Allowed(HeaderChanges::default())
        );
    }

    #[test]
    fn any_other_status_denies_with_the_denied_response() {
        let a = answer(CheckResponse {
            status: Some(Status {
                code: 7,
                message: "no".into(),
                ..Default::default()
            }),
            http_response: Some(check_response::HttpResponse::DeniedResponse(
                DeniedHttpResponse {
                    status: Some(HttpStatus { code: 401 }),
                    headers: vec![
                        header("www-authenticate", "Bearer", None, 0),
                        header("content-length", "1", None, 0),
                        header("connection", "close", None, 0),
                    ],
                    body: "go away".into(),
                },
            )),
            ..Default::default()
        });
        assert_eq!(
            a,
            Answer::Denied {
                status: StatusCode::UNAUTHORIZED,
                headers: vec![(
                    HeaderName::from_static("www-authenticate"),
                    http::HeaderValue::from_static("Bearer")
                )],
                body: Bytes::from_static(b"go away"),
            }
        );
        let bare = answer(CheckResponse {
            status: Some(Status {
                code: 16,
                ..Default::default()
            }),
            ..Default::default()
        });
        assert!(matches!(bare, Answer::Denied { status, .. } if status == StatusCode::FORBIDDEN));
    }

    #[test]
    fn frames_that_do_not_hold_a_message_are_errors() {
        assert!(unframe::<CheckResponse>(Bytes::from_static(b"\0\0\0")).is_err());
        assert!(unframe::<CheckResponse>(Bytes::from_static(b"\x01\0\0\0\0")).is_err());
        assert!(unframe::<CheckResponse>(Bytes::from_static(b"\0\0\0\0\x09ab")).is_err());
        assert_eq!(
            unframe::<CheckResponse>(Bytes::from_static(b"\0\0\0\0\0")).unwrap(),
            CheckResponse::default()
        );
    }
}
