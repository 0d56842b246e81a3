//! Calls to the echo, and what came back: over any byte stream (a test's
//! own loopback connection), or from inside a pod through `meshtb
//! echo-request`, whose connections the mesh captures as any app's
//! (a thread that only enters a pod's netns is not in the pod's cgroup,
//! where the agent's connect hook is attached, so it would bypass the
//! mesh).
use std::{net::SocketAddr, time::Duration};

use anyhow::Context as _;
use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method as HttpMethod, Request, Response, Uri, header};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use prost::Message as _;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncWrite};

use super::{
    grpc::{self, Method, gateway, istio},
    report::{EchoResponse, ParseError},
};
use crate::Cluster;

/// Answers larger than this are an error (the echo's are a few KiB).
const MAX_ANSWER: usize = 4 << 20;
/// The message of Istio's gRPC `Echo`, as Istio's echo client sends by
/// default (`--msg`).
pub const ISTIO_MESSAGE: &str = "HelloWorld";

/// One request to make.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Call {
    /// Host (HTTP/1.1) or `:authority` (HTTP/2): the name the client
    /// used, e.g. `echo-v1.gateway-conformance-mesh`. The address it
    /// connects to is given apart, so a test sends `Host: echo-v1` to
    /// echo-v2's address as MeshFrontendHostname does.
    pub authority: String,
    /// Headers besides Host, in order; a name may repeat.
    pub headers: Vec<(String, String)>,
    pub kind: CallKind,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum CallKind {
    /// `method` `path` (with its query, as sent on the wire).
    Http {
        version: HttpVersion,
        method: String,
        path: String,
    },
    /// A unary call (HTTP/2, prior knowledge).
    Grpc { method: Method },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum HttpVersion {
    Http1,
    /// HTTP/2 with prior knowledge.
    H2c,
}

impl Call {
    /// GET `path` over HTTP/1.1, as Istio's echo client sends `http://`.
    pub fn get(authority: &str, path: &str) -> Self {
        Self::http(HttpVersion::Http1, "GET", authority, path)
    }

    pub fn http(version: HttpVersion, method: &str, authority: &str, path: &str) -> Self {
        Self {
            authority: authority.into(),
            headers: Vec::new(),
            kind: CallKind::Http {
                version,
                method: method.into(),
                path: path.into(),
            },
        }
    }

    /// A gRPC call of `method`, to `authority` (`echo:7070`).
    pub fn grpc(authority: &str, method: Method) -> Self {
        Self {
            authority: authority.into(),
            headers: Vec::new(),
            kind: CallKind::Grpc { method },
        }
    }

    /// Adds a header (gRPC: metadata).
    pub fn header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }
}

/// One request's answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Exchange {
    pub status: u16,
    /// `HTTP/1.1` or `HTTP/2.0`.
    pub version: String,
    /// Response headers, names in lower case, in order.
    pub headers: Vec<(String, String)>,
    /// Trailers (gRPC's status), in order.
    pub trailers: Vec<(String, String)>,
    /// What the echo reported, when the answer is the echo's (HTTP:
    /// `Content-Type: application/text`; gRPC: status 0). A proxy's own
    /// answer (a redirect, a 404 for no matching route) has none.
    pub echo: Option<EchoResponse>,
    /// The body as text when it is not the echo's report.
    pub body: String,
}

/// A redirect's `Location`, in the parts the conformance checks
/// (roundtripper.RedirectRequest: scheme, host, port, path).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Location {
    pub scheme: Option<String>,
    pub host: Option<String>,
    pub port: Option<u16>,
    pub path: String,
}

impl Exchange {
    /// The values of response header `name` joined with `,`, as the
    /// conformance compares them.
    pub fn header(&self, name: &str) -> Option<String> {
        joined(&self.headers, name)
    }

    /// `grpc-status`, from the trailers or, for a trailers-only answer,
    /// the headers.
    pub fn grpc_status(&self) -> Option<u32> {
        joined(&self.trailers, "grpc-status")
            .or_else(|| self.header("grpc-status"))
            .and_then(|s| s.parse().ok())
    }

    /// The echo's report, or an error saying what came back instead.
    pub fn echoed(&self) -> anyhow::Result<&EchoResponse> {
        self.echo.as_ref().with_context(|| {
            format!(
                "not the echo's answer: {} {:?} {:?}",
                self.status, self.headers, self.body
            )
        })
    }

    /// `Location`, split; None without one or when it is not a URI.
    pub fn location(&self) -> Option<Location> {
        let uri: Uri = self.header("location")?.parse().ok()?;
        Some(Location {
            scheme: uri.scheme_str().map(str::to_owned),
            host: uri.host().map(str::to_owned),
            port: uri.port_u16(),
            path: uri.path().to_owned(),
        })
    }
}

fn joined(pairs: &[(String, String)], name: &str) -> Option<String> {
    let values: Vec<&str> = pairs
        .iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
        .collect();
    (!values.is_empty()).then(|| values.join(","))
}

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("call to {authority}: {problem}")]
    Call { authority: String, problem: String },
    #[error("HTTP handshake: {0}")]
    Handshake(#[source] hyper::Error),
    #[error("HTTP handshake: none within {0:?}")]
    HandshakeTimeout(Duration),
    #[error("request {n}: {source}")]
    Request {
        n: u32,
        #[source]
        source: hyper::Error,
    },
    #[error("request {n}: no complete answer within {timeout:?}")]
    Timeout { n: u32, timeout: Duration },
    #[error("request {n}: answer body: {problem}")]
    Body { n: u32, problem: String },
    #[error("request {n}: the echo's report: {source}")]
    Report {
        n: u32,
        #[source]
        source: ParseError,
    },
    #[error("request {n}: gRPC answer: {problem}")]
    Grpc { n: u32, problem: String },
}

enum Sender {
    Http1(hyper::client::conn::http1::SendRequest<Full<Bytes>>),
    Http2(hyper::client::conn::http2::SendRequest<Full<Bytes>>),
}

impl Sender {
    async fn send(&mut self, r: Request<Full<Bytes>>) -> Result<Response<Incoming>, hyper::Error> {
        match self {
            Sender::Http1(s) => {
                s.ready().await?;
                s.send_request(r).await
            }
            Sender::Http2(s) => {
                s.ready().await?;
                s.send_request(r).await
            }
        }
    }
}

/// Makes `call` `count` times, one after another, over `io` (HTTP/1.1
/// keep-alive, or streams of one HTTP/2 connection), each bounded by
/// `timeout`.
pub async fn exchange<S>(
    io: S,
    call: &Call,
    count: u32,
    timeout: Duration,
) -> Result<Vec<Exchange>, ClientError>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    // Refuse a call that cannot be built before a byte is sent.
    request(call)?;
    let io = TokioIo::new(io);
    let handshake = async {
        match call.kind {
            CallKind::Http {
                version: HttpVersion::Http1,
                ..
            } => {
                let (s, conn) = hyper::client::conn::http1::handshake(io).await?;
                tokio::spawn(conn);
                Ok(Sender::Http1(s))
            }
            _ => {
                let (s, conn) =
                    hyper::client::conn::http2::handshake(TokioExecutor::new(), io).await?;
                tokio::spawn(conn);
                Ok(Sender::Http2(s))
            }
        }
    };
    let mut sender = tokio::time::timeout(timeout, handshake)
        .await
        .map_err(|_| ClientError::HandshakeTimeout(timeout))?
        .map_err(ClientError::Handshake)?;
    let mut out = Vec::with_capacity(count as usize);
    for n in 1..=count {
        let one = async {
            let answer = sender
                .send(request(call)?)
                .await
                .map_err(|source| ClientError::Request { n, source })?;
            read(n, call, answer).await
        };
        out.push(
            tokio::time::timeout(timeout, one)
                .await
                .map_err(|_| ClientError::Timeout { n, timeout })??,
        );
    }
    Ok(out)
}

/// The request `call` describes.
fn request(call: &Call) -> Result<Request<Full<Bytes>>, ClientError> {
    let bad = |problem: String| ClientError::Call {
        authority: call.authority.clone(),
        problem,
    };
    let absolute = |path: &str| -> Result<Uri, ClientError> {
        format!("http://{}{path}", call.authority)
            .parse()
            .map_err(|e| bad(format!("http://{}{path}: {e}", call.authority)))
    };
    let mut r = match &call.kind {
        CallKind::Http {
            version,
            method,
            path,
        } => {
            let method: HttpMethod = method
                .parse()
                .map_err(|e| bad(format!("method {method:?}: {e}")))?;
            let uri = match version {
                // Origin form, Host apart: as a browser or curl sends it.
                HttpVersion::Http1 => path
                    .parse::<Uri>()
                    .map_err(|e| bad(format!("path {path:?}: {e}")))?,
                // Absolute: hyper takes :scheme and :authority from it.
                HttpVersion::H2c => absolute(path)?,
            };
            let mut r = Request::new(Full::new(Bytes::new()));
            *r.method_mut() = method;
            *r.uri_mut() = uri;
            if *version == HttpVersion::Http1 {
                let host = HeaderValue::from_str(&call.authority)
                    .map_err(|e| bad(format!("Host: {e}")))?;
                r.headers_mut().insert(header::HOST, host);
            } else {
                *r.version_mut() = http::Version::HTTP_2;
            }
            r
        }
        CallKind::Grpc { method } => {
            let body = match method {
                Method::IstioEcho => grpc::frame(&istio::EchoRequest {
                    message: ISTIO_MESSAGE.into(),
                }),
                _ => grpc::frame(&gateway::EchoRequest {}),
            };
            let mut r = Request::new(Full::new(body));
            *r.method_mut() = HttpMethod::POST;
            *r.uri_mut() = absolute(&method.path())?;
            *r.version_mut() = http::Version::HTTP_2;
            let h = r.headers_mut();
            h.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/grpc"),
            );
            h.insert(header::TE, HeaderValue::from_static("trailers"));
            r
        }
    };
    for (name, value) in &call.headers {
        let name: header::HeaderName = name
            .parse()
            .map_err(|e| bad(format!("header name {name:?}: {e}")))?;
        if name == header::HOST {
            return Err(bad(
                "a Host header: set the call's authority instead".to_owned()
            ));
        }
        let value = HeaderValue::from_str(value).map_err(|e| bad(format!("header {name}: {e}")))?;
        r.headers_mut().append(name, value);
    }
    Ok(r)
}

/// Reads one answer whole (bounded) and what the echo said in it.
async fn read(n: u32, call: &Call, answer: Response<Incoming>) -> Result<Exchange, ClientError> {
    let (head, body) = answer.into_parts();
    let collected = Limited::new(body, MAX_ANSWER)
        .collect()
        .await
        .map_err(|e| ClientError::Body {
            n,
            problem: e.to_string(),
        })?;
    let trailers = collected.trailers().map(pairs).unwrap_or_default();
    let bytes = collected.to_bytes();
    let mut x = Exchange {
        status: head.status.as_u16(),
        version: format!("{:?}", head.version),
        headers: pairs(&head.headers),
        trailers,
        echo: None,
        body: String::new(),
    };
    match &call.kind {
        CallKind::Http { .. } => {
            let from_echo = x
                .header("content-type")
                .is_some_and(|t| t == "application/text");
            let text = String::from_utf8_lossy(&bytes).into_owned();
            if from_echo {
                x.echo = Some(
                    EchoResponse::parse(&text)
                        .map_err(|source| ClientError::Report { n, source })?,
                );
            } else {
                x.body = text;
            }
        }
        CallKind::Grpc { method } => {
            if x.grpc_status() == Some(0) {
                x.echo = Some(
                    grpc_report(*method, &bytes)
                        .map_err(|problem| ClientError::Grpc { n, problem })?,
                );
            } else {
                x.body = String::from_utf8_lossy(&bytes).into_owned();
            }
        }
    }
    Ok(x)
}

/// The report in a successful gRPC answer of `method`.
fn grpc_report(method: Method, body: &[u8]) -> Result<EchoResponse, String> {
    let message = grpc::unframe(body, MAX_ANSWER).map_err(|e| e.to_string())?;
    match method {
        Method::IstioEcho => {
            let r =
                istio::EchoResponse::decode(message).map_err(|e| format!("EchoResponse: {e}"))?;
            EchoResponse::parse(&r.message).map_err(|e| e.to_string())
        }
        _ => {
            let r =
                gateway::EchoResponse::decode(message).map_err(|e| format!("EchoResponse: {e}"))?;
            let a = r
                .assertions
                .ok_or_else(|| "EchoResponse without assertions".to_owned())?;
            Ok(EchoResponse::from(&a))
        }
    }
}

fn pairs(map: &HeaderMap) -> Vec<(String, String)> {
    map.iter()
        .map(|(n, v)| {
            (
                n.as_str().to_owned(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect()
}

/// Makes `call` `count` times from inside pod `pod`, connected to `to`
/// (a Service's VIP and port, a pod's address), through `meshtb
/// echo-request` in the pod: its netns and cgroup, so the mesh carries
/// it as it carries the pod's own traffic. Each request is bounded by
/// `timeout`.
pub fn from_pod(
    cluster: &Cluster,
    pod: &str,
    to: SocketAddr,
    call: &Call,
    count: u32,
    timeout: Duration,
) -> anyhow::Result<Vec<Exchange>> {
    let call_json = serde_json::to_string(call)?;
    let (to_s, count_s, ms) = (
        to.to_string(),
        count.to_string(),
        timeout.as_millis().to_string(),
    );
    let args = [
        "echo-request",
        "--to",
        &to_s,
        "--call",
        &call_json,
        "--count",
        &count_s,
        "--timeout-ms",
        &ms,
    ];
    // Each request has its own deadline inside; this one bounds the
    // process, connecting included.
    let whole = timeout.saturating_mul(count.saturating_add(1));
    let out = cluster.client(pod, &args, whole)?;
    serde_json::from_value(out["exchanges"].clone())
        .with_context(|| format!("meshtb echo-request in {pod}: {out}"))
}

/// What `meshtb echo-request` does in the pod: connect, exchange, and
/// the JSON line it prints (`{"exchanges": [...]}`).
pub async fn run_in_pod(
    to: SocketAddr,
    call: &Call,
    count: u32,
    timeout: Duration,
) -> anyhow::Result<serde_json::Value> {
    let stream = tokio::time::timeout(timeout, tokio::net::TcpStream::connect(to))
        .await
        .with_context(|| format!("connecting to {to}: none within {timeout:?}"))?
        .with_context(|| format!("connecting to {to}"))?;
    let _ = stream.set_nodelay(true);
    let exchanges = exchange(stream, call, count, timeout)
        .await
        .with_context(|| format!("{call:?} to {to}"))?;
    Ok(serde_json::json!({ "exchanges": exchanges }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn calls_cross_the_process_boundary_as_json() {
        let calls = [
            Call::get("echo-v1.gateway-conformance-mesh", "/?animal=whale")
                .header("version", "one"),
            Call::http(HttpVersion::H2c, "POST", "echo", "/v2"),
            Call::grpc("echo:7070", Method::IstioEcho).header("x-test-case", "set"),
        ];
        for c in calls {
            let text = serde_json::to_string(&c).unwrap();
            assert_eq!(serde_json::from_str::<Call>(&text).unwrap(), c, "{text}");
        }
        assert_eq!(
            serde_json::to_value(Call::grpc("echo:7070", Method::EchoTwo)).unwrap(),
            serde_json::json!({"authority": "echo:7070", "headers": [],
                               "kind": {"kind": "grpc", "method": "echo-two"}})
        );
    }

    #[test]
    fn a_host_header_or_a_bad_call_is_refused_before_sending() {
        let e = request(&Call::get("echo", "/").header("Host", "echo-v1")).unwrap_err();
        assert!(e.to_string().contains("set the call's authority"), "{e}");
        assert!(request(&Call::http(HttpVersion::Http1, "G ET", "echo", "/")).is_err());
        assert!(request(&Call::get("echo", "/").header("bad name", "x")).is_err());
        assert!(request(&Call::http(HttpVersion::H2c, "GET", "ec ho", "/")).is_err());
    }

    #[test]
    fn requests_carry_the_authority_as_the_version_wants_it() {
        let r = request(
            &Call::get("echo-v2", "/v2?x=1")
                .header("x-a", "1")
                .header("x-a", "2"),
        )
        .unwrap();
        assert_eq!(r.uri(), "/v2?x=1");
        assert_eq!(r.headers()["host"], "echo-v2");
        assert_eq!(r.headers().get_all("x-a").iter().count(), 2);
        let r = request(&Call::http(HttpVersion::H2c, "GET", "echo:8080", "/p")).unwrap();
        assert_eq!(r.uri(), "http://echo:8080/p");
        assert!(r.headers().get("host").is_none());
        let r = request(&Call::grpc("echo:7070", Method::Echo)).unwrap();
        assert_eq!(
            r.uri(),
            "http://echo:7070/gateway_api_conformance.echo_basic.grpcecho.GrpcEcho/Echo"
        );
        assert_eq!(r.method(), "POST");
        assert_eq!(r.headers()["content-type"], "application/grpc");
    }

    #[test]
    fn a_location_splits_as_the_conformance_reads_it() {
        let x = |loc: &str| Exchange {
            status: 302,
            version: "HTTP/1.1".into(),
            headers: vec![("location".into(), loc.into())],
            trailers: vec![],
            echo: None,
            body: String::new(),
        };
        assert_eq!(
            x("https://example.org:8083/port?q=1").location(),
            Some(Location {
                scheme: Some("https".into()),
                host: Some("example.org".into()),
                port: Some(8083),
                path: "/port".into(),
            })
        );
        assert_eq!(
            x("http://echo/replacement-prefix/lemon").location(),
            Some(Location {
                scheme: Some("http".into()),
                host: Some("echo".into()),
                port: None,
                path: "/replacement-prefix/lemon".into(),
            })
        );
        assert_eq!(x("/relative").location().unwrap().host, None);
        assert_eq!(x("not a uri").location(), None);
    }
}
