//! The echo server: HTTP/1.1 and h2c (prior knowledge) on every port it
//! listens on, each request answered 200 with its [`EchoResponse`] as the
//! body (`Content-Type: application/text`, as Istio's echo); a request
//! with `content-type: application/grpc*` is a gRPC call, answered by
//! Istio's `EchoTestService/Echo` or Gateway API's `GrpcEcho` (see
//! [`super::grpc`]). Both conformance echoes serve gRPC on a port of its
//! own (7070, 3000); one port for all is the test bed's choice, as the
//! conformance manifests' Services send 7070 to the echo's gRPC port.
use std::{convert::Infallible, net::SocketAddr, sync::Arc, time::Duration};

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, Limited, combinators::UnsyncBoxBody};
use hyper::{body::Incoming, service::service_fn};
use hyper_util::{
    rt::{TokioExecutor, TokioIo, TokioTimer},
    server::conn::auto,
};
use prost::Message as _;
use tokio::sync::Semaphore;

use super::{
    grpc::{self, Code, Method, gateway, istio},
    report::{EchoResponse, canonical_header_name},
};

/// Request bodies (and gRPC messages) larger than this are refused.
pub const MAX_BODY: usize = 1 << 20;
/// A client that sends no complete HTTP/1.1 head within this is dropped.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// A request whose body has not fully arrived within this is answered 408.
const BODY_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Connections served at once; past it, accepting waits.
const MAX_CONNECTIONS: usize = 1024;
/// HTTP/2 streams open at once on one connection.
const MAX_STREAMS: u32 = 256;
/// Istio's echo sets this on every HTTP answer.
const CONTENT_TYPE: &str = "application/text";

type Body = UnsyncBoxBody<Bytes, Infallible>;

/// The pod an echo runs as, reported in every answer (`Hostname`,
/// `Namespace`; GrpcEcho's `context`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Workload {
    pub pod: String,
    pub namespace: String,
}

/// The variables the echo reads its pod's name and namespace from: the
/// names Gateway API's echo-basic reads (Kubernetes' downward API); the
/// test bed sets them for every server it starts in a pod.
pub const POD_NAME_ENV: &str = "POD_NAME";
pub const NAMESPACE_ENV: &str = "NAMESPACE";

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "{0} is not set: the echo reports its pod's name and namespace from \
     {POD_NAME_ENV} and {NAMESPACE_ENV} (Cluster::serve sets both)"
)]
pub struct MissingEnv(&'static str);

impl Workload {
    /// The pod named by [`POD_NAME_ENV`] and [`NAMESPACE_ENV`].
    pub fn from_env() -> Result<Self, MissingEnv> {
        let var = |name: &'static str| {
            std::env::var(name)
                .ok()
                .filter(|v| !v.is_empty())
                .ok_or(MissingEnv(name))
        };
        Ok(Self {
            pod: var(POD_NAME_ENV)?,
            namespace: var(NAMESPACE_ENV)?,
        })
    }
}

/// Called with each request's report before it is answered (the test
/// bed's binary prints it, so a test can tell what reached a backend).
pub type Seen = Arc<dyn Fn(&EchoResponse) + Send + Sync>;

/// Serves `listener` until it fails; each connection on a task of its
/// own, at most [`MAX_CONNECTIONS`] at once.
pub async fn serve(
    listener: tokio::net::TcpListener,
    workload: Arc<Workload>,
    seen: Seen,
) -> std::io::Result<()> {
    let port = listener.local_addr()?.port();
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let slot = slots
            .clone()
            .acquire_owned()
            .await
            .expect("the semaphore is never closed");
        let (stream, peer) = listener.accept().await?;
        let (workload, seen) = (workload.clone(), seen.clone());
        tokio::spawn(async move {
            connection(stream, peer, port, workload, seen).await;
            drop(slot);
        });
    }
}

async fn connection(
    stream: tokio::net::TcpStream,
    peer: SocketAddr,
    port: u16,
    workload: Arc<Workload>,
    seen: Seen,
) {
    let _ = stream.set_nodelay(true);
    let service = service_fn(move |request| {
        let (workload, seen) = (workload.clone(), seen.clone());
        async move {
            let arrived = Arrival {
                peer,
                port,
                workload: &workload,
            };
            Ok::<_, Infallible>(respond(request, &arrived, &seen).await)
        }
    });
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT);
    builder.http2().max_concurrent_streams(MAX_STREAMS);
    let _ = builder
        .serve_connection(TokioIo::new(stream), service)
        .await;
}

/// Where and to whom a request arrived.
struct Arrival<'a> {
    peer: SocketAddr,
    port: u16,
    workload: &'a Workload,
}

async fn respond(request: Request<Incoming>, at: &Arrival<'_>, seen: &Seen) -> Response<Body> {
    let grpc = request
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/grpc"));
    let (head, body) = request.into_parts();
    // A gRPC body is the message and its 5-byte prefix.
    let limit = if grpc { MAX_BODY + 5 } else { MAX_BODY };
    let received =
        match tokio::time::timeout(BODY_READ_TIMEOUT, Limited::new(body, limit).collect()).await {
            Ok(Ok(c)) => c.to_bytes(),
            Ok(Err(e)) if grpc => return grpc_error(Code::ResourceExhausted, &e.to_string()),
            Ok(Err(e)) => {
                return plain(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    format!("request body: {e}\n"),
                );
            }
            Err(_) => {
                return plain(
                    StatusCode::REQUEST_TIMEOUT,
                    format!("request body not complete within {BODY_READ_TIMEOUT:?}\n"),
                );
            }
        };
    if grpc {
        return grpc_call(&head, &received, at, seen);
    }
    let report = report_of(&head, at, HeaderStyle::Http, "", None);
    seen(&report);
    let mut r = Response::new(Full::new(Bytes::from(report.render())).boxed_unsync());
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(CONTENT_TYPE));
    r
}

/// How header names are written: as Go's HTTP server hands them to
/// Istio's echo, or as gRPC metadata (lower case, with `:authority`).
#[derive(Clone, Copy, PartialEq, Eq)]
enum HeaderStyle {
    Http,
    Grpc,
}

/// The report of a request: what arrived, and who answered.
fn report_of(
    head: &http::request::Parts,
    at: &Arrival<'_>,
    style: HeaderStyle,
    proto: &str,
    message: Option<String>,
) -> EchoResponse {
    let host = authority(head);
    EchoResponse {
        pod: at.workload.pod.clone(),
        namespace: at.workload.namespace.clone(),
        host: host.clone(),
        url: head
            .uri
            .path_and_query()
            .map_or_else(|| "/".to_owned(), |p| p.to_string()),
        method: head.method.to_string(),
        proto: if proto.is_empty() {
            format!("{:?}", head.version)
        } else {
            proto.to_owned()
        },
        port: Some(at.port),
        ip: Some(at.peer.ip()),
        request_headers: headers(&head.headers, style, &host),
        message,
    }
}

/// The Host header (HTTP/1.1) or `:authority` (HTTP/2), as Go's
/// `Request.Host` holds it.
fn authority(head: &http::request::Parts) -> String {
    head.uri
        .authority()
        .map(|a| a.to_string())
        .or_else(|| {
            head.headers
                .get(header::HOST)
                .map(|h| String::from_utf8_lossy(h.as_bytes()).into_owned())
        })
        .unwrap_or_default()
}

/// Every header value, sorted by name (Istio sorts its keys), values of
/// one name in the order received. Host is not among them for HTTP, as
/// Go moves it out of the header map; gRPC metadata carries
/// `:authority`, as grpc-go's does.
fn headers(map: &HeaderMap, style: HeaderStyle, authority: &str) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = Vec::new();
    if style == HeaderStyle::Grpc && !authority.is_empty() {
        out.push((":authority".into(), authority.to_owned()));
    }
    for name in map.keys() {
        if style == HeaderStyle::Http && name == header::HOST {
            continue;
        }
        let shown = match style {
            HeaderStyle::Http => canonical_header_name(name.as_str()),
            HeaderStyle::Grpc => name.as_str().to_owned(),
        };
        for v in map.get_all(name) {
            out.push((
                shown.clone(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            ));
        }
    }
    // Stable: each name's values keep their order.
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

fn plain(status: StatusCode, text: String) -> Response<Body> {
    let mut r = Response::new(Full::new(Bytes::from(text)).boxed_unsync());
    *r.status_mut() = status;
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    r
}

fn grpc_call(
    head: &http::request::Parts,
    received: &[u8],
    at: &Arrival<'_>,
    seen: &Seen,
) -> Response<Body> {
    let Some(method) = Method::from_path(head.uri.path()) else {
        return grpc_error(
            Code::Unimplemented,
            &format!("unknown method {}", head.uri.path()),
        );
    };
    let message = match grpc::unframe(received, MAX_BODY) {
        Ok(m) => m,
        Err(e) => return grpc_error(e.code(), &e.to_string()),
    };
    match method {
        Method::IstioEcho => {
            let request = match istio::EchoRequest::decode(message) {
                Ok(r) => r,
                Err(e) => return grpc_error(Code::Internal, &format!("EchoRequest: {e}")),
            };
            let report = report_of(head, at, HeaderStyle::Grpc, "GRPC", Some(request.message));
            seen(&report);
            grpc_ok(&istio::EchoResponse {
                message: report.render(),
            })
        }
        Method::Echo | Method::EchoTwo => {
            if let Err(e) = gateway::EchoRequest::decode(message) {
                return grpc_error(Code::Internal, &format!("EchoRequest: {e}"));
            }
            let report = report_of(head, at, HeaderStyle::Grpc, "GRPC", None);
            seen(&report);
            grpc_ok(&gateway::EchoResponse {
                assertions: Some(gateway::Assertions {
                    fully_qualified_method: method.path(),
                    headers: report
                        .request_headers
                        .iter()
                        .map(|(key, value)| gateway::Header {
                            key: key.clone(),
                            value: value.clone(),
                        })
                        .collect(),
                    authority: report.host.clone(),
                    context: Some(gateway::Context {
                        namespace: report.namespace.clone(),
                        pod: report.pod.clone(),
                        ..Default::default()
                    }),
                }),
                request: None,
            })
        }
        Method::EchoThree => grpc_error(Code::Unimplemented, "method EchoThree not implemented"),
    }
}

fn grpc_response(body: Body) -> Response<Body> {
    let mut r = Response::new(body);
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
    r
}

/// 200, the message, and `grpc-status: 0` in the trailers.
fn grpc_ok(message: &impl prost::Message) -> Response<Body> {
    let mut trailers = HeaderMap::new();
    trailers.insert("grpc-status", HeaderValue::from_static(Code::Ok.as_str()));
    grpc_response(
        Full::new(grpc::frame(message))
            .with_trailers(async move { Some(Ok(trailers)) })
            .boxed_unsync(),
    )
}

/// A trailers-only answer: the status in the headers, no message.
fn grpc_error(code: Code, message: &str) -> Response<Body> {
    let mut r = grpc_response(Full::new(Bytes::new()).boxed_unsync());
    let h = r.headers_mut();
    h.insert("grpc-status", HeaderValue::from_static(code.as_str()));
    // grpc-message is percent-encoded; what the echo says is ASCII but
    // may hold bytes outside a header value's set.
    if let Ok(v) = HeaderValue::from_str(&percent_encode(message)) {
        h.insert("grpc-message", v);
    }
    r
}

/// gRPC's grpc-message encoding: printable ASCII but `%` as is,
/// everything else `%XX`.
fn percent_encode(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    for b in message.bytes() {
        if (0x20..=0x7e).contains(&b) && b != b'%' {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;
    use crate::echo::client::{Call, HttpVersion, exchange};

    const T: Duration = Duration::from_secs(10);

    /// An echo on 127.0.0.1 as pod `echo-v1-0` of namespace `ns`; its
    /// address and the reports it has handed to `seen`.
    async fn echo() -> (SocketAddr, Arc<Mutex<Vec<EchoResponse>>>) {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let reports = Arc::new(Mutex::new(Vec::new()));
        let r = reports.clone();
        let seen: Seen = Arc::new(move |e: &EchoResponse| r.lock().unwrap().push(e.clone()));
        let workload = Arc::new(Workload {
            pod: "echo-v1-0".into(),
            namespace: "ns".into(),
        });
        tokio::spawn(serve(l, workload, seen));
        (addr, reports)
    }

    async fn call(addr: SocketAddr, c: &Call, count: u32) -> Vec<crate::echo::Exchange> {
        let s = tokio::net::TcpStream::connect(addr).await.unwrap();
        exchange(s, c, count, T).await.unwrap()
    }

    #[tokio::test]
    async fn http1_requests_come_back_as_the_echo_saw_them() {
        let (addr, seen) = echo().await;
        let c = Call::get("echo-v1.gateway-conformance-mesh", "/add?animal=whale")
            .header("x-header-add", "some-other-value")
            .header("X-Header-Add", "second");
        let got = call(addr, &c, 3).await;
        assert_eq!(got.len(), 3);
        let x = &got[2];
        assert_eq!(x.status, 200);
        assert_eq!(x.version, "HTTP/1.1");
        assert_eq!(
            x.header("content-type").as_deref(),
            Some("application/text")
        );
        let e = x.echoed().unwrap();
        assert_eq!(e.pod, "echo-v1-0");
        assert_eq!(e.namespace, "ns");
        assert_eq!(e.host, "echo-v1.gateway-conformance-mesh");
        assert_eq!(e.url, "/add?animal=whale");
        assert_eq!(e.path(), "/add");
        assert_eq!(e.method, "GET");
        assert_eq!(e.proto, "HTTP/1.1");
        assert_eq!(e.port, Some(addr.port()));
        assert_eq!(e.ip, Some("127.0.0.1".parse().unwrap()));
        assert_eq!(
            e.header("x-header-add").as_deref(),
            Some("some-other-value,second")
        );
        assert!(e.request_headers.iter().any(|(n, _)| n == "X-Header-Add"));
        assert_eq!(
            e.header("host"),
            None,
            "Host is reported as Host=, not a header"
        );
        assert_eq!(seen.lock().unwrap().len(), 3);
        assert_eq!(&seen.lock().unwrap()[2], e);
    }

    #[tokio::test]
    async fn h2c_requests_report_the_authority_and_http2() {
        let (addr, _) = echo().await;
        let c = Call::http(HttpVersion::H2c, "DELETE", "echo:8080", "/v2/example");
        let got = call(addr, &c, 2).await;
        let e = got[1].echoed().unwrap();
        assert_eq!(got[1].version, "HTTP/2.0");
        assert_eq!(e.proto, "HTTP/2.0");
        assert_eq!(e.method, "DELETE");
        assert_eq!(e.host, "echo:8080");
        assert_eq!(e.url, "/v2/example");
    }

    #[tokio::test]
    async fn istios_grpc_echo_answers_with_the_text_report() {
        let (addr, seen) = echo().await;
        let c = Call::grpc("echo:7070", Method::IstioEcho)
            .header("x-test-case", "set")
            .header("x-header-set", "set-overwrites-values");
        let x = &call(addr, &c, 1).await[0];
        assert_eq!(x.status, 200);
        assert_eq!(x.grpc_status(), Some(0));
        let e = x.echoed().unwrap();
        assert_eq!(e.proto, "GRPC");
        assert_eq!(e.message.as_deref(), Some("HelloWorld"));
        assert_eq!(e.host, "echo:7070");
        assert_eq!(e.url, grpc::ISTIO_ECHO_PATH);
        assert_eq!(e.pod, "echo-v1-0");
        assert_eq!(e.header(":authority").as_deref(), Some("echo:7070"));
        assert_eq!(e.header("x-test-case").as_deref(), Some("set"));
        assert_eq!(
            e.header("content-type").as_deref(),
            Some("application/grpc")
        );
        assert_eq!(seen.lock().unwrap().len(), 1);
    }

    #[tokio::test]
    async fn gateway_apis_grpc_echo_answers_its_methods_but_echo_three() {
        let (addr, seen) = echo().await;
        for m in [Method::Echo, Method::EchoTwo] {
            let x = &call(addr, &Call::grpc("echo:7070", m).header("x-a", "b"), 1).await[0];
            assert_eq!(x.grpc_status(), Some(0), "{m:?}");
            let e = x.echoed().unwrap();
            assert_eq!(e.url, m.path());
            assert_eq!(e.pod, "echo-v1-0");
            assert_eq!(e.namespace, "ns");
            assert_eq!(e.host, "echo:7070");
            assert_eq!(e.header("x-a").as_deref(), Some("b"));
            assert_eq!(e.port, None, "GrpcEcho carries no port");
        }
        let x = &call(addr, &Call::grpc("echo:7070", Method::EchoThree), 1).await[0];
        assert_eq!(x.status, 200);
        assert_eq!(x.grpc_status(), Some(12));
        assert!(x.echo.is_none());
        assert_eq!(seen.lock().unwrap().len(), 2, "EchoThree is not echoed");
    }

    /// A raw HTTP/2 POST of `body` to `path` with content-type gRPC.
    async fn raw_grpc(addr: SocketAddr, path: &str, body: &'static [u8]) -> HeaderMap {
        let s = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (mut send, conn) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(s))
                .await
                .unwrap();
        tokio::spawn(conn);
        let r = Request::post(format!("http://echo{path}"))
            .header("content-type", "application/grpc")
            .body(Full::new(Bytes::from_static(body)))
            .unwrap();
        send.send_request(r).await.unwrap().into_parts().0.headers
    }

    #[tokio::test]
    async fn bad_grpc_calls_get_trailers_only_statuses() {
        let (addr, seen) = echo().await;
        let h = raw_grpc(addr, grpc::ISTIO_ECHO_PATH, b"\x01\x00\x00\x00\x00").await;
        assert_eq!(h["grpc-status"], "12", "compressed: {h:?}");
        let h = raw_grpc(addr, grpc::ISTIO_ECHO_PATH, b"\x00\x00\x00\x00\x09abc").await;
        assert_eq!(h["grpc-status"], "13", "short: {h:?}");
        assert!(
            h["grpc-message"].to_str().unwrap().contains("9 bytes"),
            "{h:?}"
        );
        // Field 1 as a varint where a string is declared.
        let h = raw_grpc(addr, grpc::ISTIO_ECHO_PATH, b"\x00\x00\x00\x00\x02\x08\x01").await;
        assert_eq!(h["grpc-status"], "13", "undecodable: {h:?}");
        let h = raw_grpc(
            addr,
            "/proto.EchoTestService/ForwardEcho",
            b"\x00\x00\x00\x00\x00",
        )
        .await;
        assert_eq!(h["grpc-status"], "12", "unknown method: {h:?}");
        assert!(seen.lock().unwrap().is_empty());
    }

    #[test]
    fn grpc_messages_are_percent_encoded() {
        assert_eq!(percent_encode("unknown method /a/b"), "unknown method /a/b");
        assert_eq!(percent_encode("100%\n"), "100%25%0A");
        assert_eq!(percent_encode("é"), "%C3%A9");
    }

    #[test]
    fn http_headers_are_go_cased_sorted_and_without_host() {
        let mut map = HeaderMap::new();
        map.append("x-b", HeaderValue::from_static("1"));
        map.append("host", HeaderValue::from_static("echo"));
        map.append("x-a", HeaderValue::from_static("first"));
        map.append("x-a", HeaderValue::from_static("second"));
        let got = headers(&map, HeaderStyle::Http, "echo");
        let want: Vec<(String, String)> = [("X-A", "first"), ("X-A", "second"), ("X-B", "1")]
            .iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect();
        assert_eq!(got, want);
        let grpc = headers(&map, HeaderStyle::Grpc, "echo:7070");
        assert_eq!(grpc[0], (":authority".into(), "echo:7070".into()));
        assert!(grpc.iter().any(|(n, _)| n == "x-a"));
    }
}
