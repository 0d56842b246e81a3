//! An in-process waypoint bed on loopback: a test root CA and SVIDs (rcgen),
//! a discovery view parsed from a node file, backend pods (HTTP/1.1,
//! HTTP/2 or TCP echo servers on their own 127.0.N.x addresses) behind an
//! HBONE server that relays each CONNECT to its authority, the waypoint
//! itself on 127.0.0.1:0, and a client workload that reaches it over HBONE
//! as a node agent would. Each test passes its own N, so addresses never
//! collide between tests running at once.
#![allow(dead_code)]

use std::{
    collections::HashMap,
    convert::Infallible,
    future::Future,
    io,
    net::SocketAddr,
    path::Path,
    pin::Pin,
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Empty, Full, combinators::UnsyncBoxBody};
use hyper::{
    body::Incoming,
    client::conn::{http1, http2},
    service::service_fn,
};
use hyper_util::rt::{TokioExecutor, TokioIo};
use mesh_discovery::{NodeConfig, Published};
use mesh_hbone::{
    Pool,
    buffers::BufferBudget,
    client::{Client, Dial, Origin, Timeouts, Tunnel},
    io::H2Io,
    server::{self, Acceptor, Handler, Incoming as HboneIncoming, Refused},
    stream,
};
use mesh_identity::{
    Identity, WorkloadCert,
    tls::{self, CertWatch, TrustBundle},
};
use mesh_telemetry::otlp::ExporterConfig;
use mesh_waypoint::{Limits, Parts, Waypoint, access::AccessLog, telemetry::Telemetry};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, SanType,
};
use rustls::pki_types::PrivatePkcs8KeyDer;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    sync::watch,
    task::JoinHandle,
};

pub const TRUST_DOMAIN: &str = "cluster.local";
pub const WAIT: Duration = Duration::from_secs(10);

pub async fn within<F: Future>(what: &str, f: F) -> F::Output {
    tokio::time::timeout(WAIT, f)
        .await
        .unwrap_or_else(|_| panic!("not within {WAIT:?}: {what}"))
}

pub struct Ca {
    key: KeyPair,
    params: CertificateParams,
    pem: String,
}

pub struct Svid {
    pub identity: Identity,
    pub cert: CertWatch,
}

impl Ca {
    pub fn new() -> Self {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::default();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, "mesh root");
        let pem = params.self_signed(&key).unwrap().pem();
        Self { key, params, pem }
    }

    pub fn bundle(&self) -> TrustBundle {
        TrustBundle::from_pem(&self.pem, TRUST_DOMAIN).unwrap()
    }

    pub fn svid(&self, ns: &str, sa: &str) -> Svid {
        self.svid_in(TRUST_DOMAIN, ns, sa)
    }

    /// A workload certificate for an identity of `trust_domain`.
    pub fn svid_in(&self, trust_domain: &str, ns: &str, sa: &str) -> Svid {
        let identity = Identity::new(trust_domain, ns, sa).unwrap();
        let key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::default();
        p.distinguished_name = DistinguishedName::new();
        p.subject_alt_names = vec![SanType::URI(identity.to_string().try_into().unwrap())];
        p.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let issuer = Issuer::from_params(&self.params, &self.key);
        let cert = p.signed_by(&key, &issuer).unwrap();
        let cert = WorkloadCert::new(
            vec![cert.der().clone()],
            PrivatePkcs8KeyDer::from(key.serialize_der()),
            1,
        )
        .unwrap();
        Svid {
            identity,
            cert: watch::channel(Some(Arc::new(cert))).1,
        }
    }
}

/// Dials the address asked for, except those mapped elsewhere (a pod's
/// HBONE port to the test's HBONE server).
pub struct MapDial {
    map: HashMap<SocketAddr, SocketAddr>,
    /// Where everything else goes, if set (the client: to the waypoint).
    default: Option<SocketAddr>,
}

impl Dial for MapDial {
    fn dial(
        &self,
        to: SocketAddr,
        timeout: Duration,
    ) -> Pin<Box<dyn Future<Output = io::Result<TcpStream>> + Send + '_>> {
        let to = self.map.get(&to).copied().or(self.default).unwrap_or(to);
        Box::pin(async move {
            tokio::time::timeout(timeout, TcpStream::connect(to))
                .await
                .map_err(|_| io::Error::from(io::ErrorKind::TimedOut))?
        })
    }
}

/// The backend pods' HBONE server: relays each CONNECT to its authority
/// and records who asked for what.
pub struct PodHandler {
    pub seen: Mutex<Vec<(Identity, SocketAddr)>>,
}

impl Handler for PodHandler {
    async fn connect(self: Arc<Self>, mut incoming: HboneIncoming) {
        let dst = incoming.request.dst;
        self.seen
            .lock()
            .unwrap()
            .push((incoming.source.clone(), dst));
        let app = match incoming.unless_reset(TcpStream::connect(dst)).await {
            Ok(Ok(app)) => app,
            Ok(Err(_)) => return incoming.refuse(StatusCode::SERVICE_UNAVAILABLE),
            Err(_) => return,
        };
        let Ok((send, recv)) = incoming.accept() else {
            return;
        };
        let _ = stream::relay(app, send, recv, 0, &BufferBudget::new(usize::MAX)).await;
    }

    fn refused(&self, _why: Refused) {}

    fn should_log(&self) -> bool {
        true
    }
}

pub async fn pod_hbone_server(ca: &Ca, svid: &Svid) -> (SocketAddr, Arc<PodHandler>) {
    let acceptor = Arc::new(Acceptor {
        name: "shop/web".into(),
        tls: Arc::new(tls::server_config(&ca.bundle(), svid.cert.clone()).unwrap()),
        cert: Some(svid.cert.clone()),
        trust_domain: TRUST_DOMAIN.into(),
        handshake_timeout: WAIT,
    });
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let handler = Arc::new(PodHandler {
        seen: Mutex::default(),
    });
    let h = handler.clone();
    let (_tx, draining) = watch::channel(false);
    tokio::spawn(async move {
        let _keep = _tx;
        loop {
            let (tcp, peer) = listener.accept().await.unwrap();
            tokio::spawn(server::serve_connection(
                tcp,
                peer,
                acceptor.clone(),
                h.clone(),
                draining.clone(),
            ));
        }
    });
    (addr, handler)
}

type Body = UnsyncBoxBody<Bytes, hyper::Error>;

fn full(b: impl Into<Bytes>) -> Body {
    Full::new(b.into())
        .map_err(|never| match never {})
        .boxed_unsync()
}

/// What a backend app answers: its name for plain requests (with what it
/// saw of the proxy's headers), an echo with gRPC trailers for
/// `/grpc`, and an echo after 101 for WebSocket upgrades.
async fn app(
    name: &'static str,
    hits: Arc<AtomicUsize>,
    mut req: Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
    hits.fetch_add(1, Ordering::SeqCst);
    let header = |n: &str| {
        req.headers()
            .get(n)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned()
    };
    if req.headers().contains_key(http::header::UPGRADE) {
        let upgrade = hyper::upgrade::on(&mut req);
        tokio::spawn(async move {
            if let Ok(up) = upgrade.await {
                let mut io = TokioIo::new(up);
                let mut buf = [0u8; 1024];
                while let Ok(n) = io.read(&mut buf).await {
                    if n == 0 || io.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
            }
        });
        return Ok(Response::builder()
            .status(StatusCode::SWITCHING_PROTOCOLS)
            .header(http::header::CONNECTION, "upgrade")
            .header(http::header::UPGRADE, "websocket")
            .body(full(Bytes::new()))
            .unwrap());
    }
    let proto = header("x-forwarded-proto");
    let trace = header("traceparent");
    // What routing changed on the way: the path, Host, and `x-test-*`
    // headers come back as `x-seen-*`.
    let mut seen = Response::builder()
        .header(
            "x-seen-path",
            req.uri().path_and_query().map_or("/", |p| p.as_str()),
        )
        .header("x-seen-host", header("host"));
    for (name, value) in req.headers() {
        if let Some(rest) = name.as_str().strip_prefix("x-test-") {
            seen = seen.header(format!("x-seen-{rest}"), value);
        }
    }
    if req.uri().path() == "/grpc" {
        let body = req
            .into_body()
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        let mut trailers = http::HeaderMap::new();
        trailers.insert("grpc-status", "0".parse().unwrap());
        trailers.insert("grpc-message", "ok-from-backend".parse().unwrap());
        let frames = data_then_trailers(body, trailers);
        return Ok(Response::builder()
            .header("content-type", "application/grpc")
            .header("x-backend", name)
            .body(frames)
            .unwrap());
    }
    Ok(seen
        .header("x-backend", name)
        .header("x-seen-proto", proto)
        .header("x-seen-traceparent", trace)
        .body(full(name))
        .unwrap())
}

/// A body of given frames: data, then trailers (as a gRPC server sends).
pub struct Frames(std::collections::VecDeque<hyper::body::Frame<Bytes>>);

impl hyper::body::Body for Frames {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, hyper::Error>>> {
        std::task::Poll::Ready(self.0.pop_front().map(Ok))
    }
}

fn data_then_trailers(data: Bytes, trailers: http::HeaderMap) -> Body {
    Frames(
        [
            hyper::body::Frame::data(data),
            hyper::body::Frame::trailers(trailers),
        ]
        .into(),
    )
    .boxed_unsync()
}

/// An HTTP backend app at `addr`.
pub async fn http_backend(addr: SocketAddr, name: &'static str, h2: bool) -> Arc<AtomicUsize> {
    let listener = TcpListener::bind(addr).await.unwrap();
    let hits = Arc::new(AtomicUsize::new(0));
    let counter = hits.clone();
    tokio::spawn(async move {
        loop {
            let (tcp, _) = listener.accept().await.unwrap();
            let hits = counter.clone();
            let svc = service_fn(move |req| app(name, hits.clone(), req));
            tokio::spawn(async move {
                let io = TokioIo::new(tcp);
                if h2 {
                    let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                        .serve_connection(io, svc)
                        .await;
                } else {
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(io, svc)
                        .with_upgrades()
                        .await;
                }
            });
        }
    });
    hits
}

/// What a scripted backend saw of one request.
#[derive(Debug, Clone)]
pub struct Seen {
    pub backend: &'static str,
    pub method: String,
    pub path: String,
    pub host: String,
    pub body: Bytes,
}

/// How scripted backends answer, shared by every backend given it: the
/// statuses of the next answers in turn, then 200 (0: the connection is
/// dropped with no answer); a wait before each answer (in turn, then the
/// standing one); and what each request was, its body read whole.
#[derive(Default)]
pub struct Script {
    statuses: Mutex<std::collections::VecDeque<u16>>,
    waits: Mutex<std::collections::VecDeque<Duration>>,
    standing_wait: Mutex<Duration>,
    seen: Mutex<Vec<Seen>>,
}

impl Script {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// The statuses of the next answers.
    pub fn answer(&self, statuses: &[u16]) {
        self.statuses.lock().unwrap().extend(statuses);
    }

    /// The waits before the next answers.
    pub fn wait(&self, waits: &[Duration]) {
        self.waits.lock().unwrap().extend(waits);
    }

    /// The wait before every answer with no wait of its own.
    pub fn always_wait(&self, wait: Duration) {
        *self.standing_wait.lock().unwrap() = wait;
    }

    /// The requests so far, in the order their bodies ended.
    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    /// Waits until `n` requests have been seen; returns them.
    pub async fn wait_seen(&self, n: usize) -> Vec<Seen> {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let seen = self.seen();
            if seen.len() >= n {
                return seen;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{n} requests not seen within {WAIT:?}; have {seen:#?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

async fn scripted(
    name: &'static str,
    script: Arc<Script>,
    req: Request<Incoming>,
) -> Result<Response<Body>, io::Error> {
    let (parts, body) = req.into_parts();
    let body = body.collect().await.map_err(io::Error::other)?.to_bytes();
    let host = parts
        .headers
        .get(http::header::HOST)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    script.seen.lock().unwrap().push(Seen {
        backend: name,
        method: parts.method.to_string(),
        path: parts
            .uri
            .path_and_query()
            .map_or("/", |p| p.as_str())
            .to_owned(),
        host,
        body,
    });
    let wait = script
        .waits
        .lock()
        .unwrap()
        .pop_front()
        .unwrap_or(*script.standing_wait.lock().unwrap());
    let status = script.statuses.lock().unwrap().pop_front().unwrap_or(200);
    tokio::time::sleep(wait).await;
    if status == 0 {
        // hyper drops the connection of a service that fails.
        return Err(io::Error::other("scripted: no answer"));
    }
    Ok(Response::builder()
        .status(status)
        .header("x-backend", name)
        .body(full(name))
        .unwrap())
}

/// An HTTP/1.1 backend app at `addr` that answers as `script` says.
pub async fn scripted_backend(addr: SocketAddr, name: &'static str, script: Arc<Script>) {
    let listener = TcpListener::bind(addr).await.unwrap();
    tokio::spawn(async move {
        loop {
            let (tcp, _) = listener.accept().await.unwrap();
            let script = script.clone();
            let svc = service_fn(move |req| scripted(name, script.clone(), req));
            tokio::spawn(async move {
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tcp), svc)
                    .await;
            });
        }
    });
}

/// A TCP echo app at `addr`; counts connections.
pub async fn tcp_backend(addr: SocketAddr) -> Arc<AtomicUsize> {
    let listener = TcpListener::bind(addr).await.unwrap();
    let conns = Arc::new(AtomicUsize::new(0));
    let counter = conns.clone();
    tokio::spawn(async move {
        loop {
            let (mut tcp, _) = listener.accept().await.unwrap();
            counter.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let (mut rd, mut wr) = tcp.split();
                let _ = tokio::io::copy(&mut rd, &mut wr).await;
                let _ = wr.shutdown().await;
            });
        }
    });
    conns
}

/// The cluster as the waypoint sees it: namespace `shop` uses waypoint
/// `shop/wp`; Service `web` (VIP 10.96.<n>.1) has an HTTP/1.1 port (80),
/// an HTTP/2 port (81), a TCP port (82) and an undeclared one (83), its
/// endpoints pods web-1 and web-2 at 127.0.<n>.1 and .2; Service `web-v2`
/// (10.96.<n>.3:80, and :81 for HTTP/2) has pod web-3 (127.0.<n>.3).
pub fn node_file(n: u8) -> String {
    format!(
        r#"
kind: AgentConfig
nodeName: n1
---
apiVersion: v1
kind: Namespace
metadata: {{name: shop, labels: {{mesh.io/dataplane-mode: enabled, istio.io/use-waypoint: wp}}}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {{name: wp, namespace: shop}}
spec:
  gatewayClassName: mesh-waypoint
  listeners: [{{name: mesh, port: 15008, protocol: HBONE}}]
---
apiVersion: v1
kind: Pod
metadata: {{name: wp-0, namespace: shop, labels: {{gateway.networking.k8s.io/gateway-name: wp}}}}
spec: {{nodeName: n2, serviceAccountName: wp, containers: [{{name: c}}]}}
status: {{podIPs: [{{ip: 127.0.{n}.9}}]}}
---
apiVersion: v1
kind: Pod
metadata: {{name: web-1, namespace: shop, labels: {{app: web}}}}
spec: {{nodeName: n2, serviceAccountName: web, containers: [{{name: c}}]}}
status: {{podIPs: [{{ip: 127.0.{n}.1}}]}}
---
apiVersion: v1
kind: Pod
metadata: {{name: web-2, namespace: shop, labels: {{app: web}}}}
spec: {{nodeName: n2, serviceAccountName: web, containers: [{{name: c}}]}}
status: {{podIPs: [{{ip: 127.0.{n}.2}}]}}
---
apiVersion: v1
kind: Pod
metadata: {{name: client-0, namespace: shop, labels: {{app: client}}}}
spec: {{nodeName: n2, serviceAccountName: client, containers: [{{name: c}}]}}
status: {{podIPs: [{{ip: 127.0.{n}.5}}]}}
---
apiVersion: v1
kind: Service
metadata: {{name: web, namespace: shop}}
spec:
  clusterIP: 10.96.{n}.1
  selector: {{app: web}}
  ports:
  - {{name: http-web, port: 80, targetPort: 8080}}
  - {{name: grpc-api, port: 81, targetPort: 8081}}
  - {{name: tcp-echo, port: 82, targetPort: 8082}}
  - {{name: other, port: 83, targetPort: 8080}}
---
apiVersion: v1
kind: Pod
metadata: {{name: web-3, namespace: shop, labels: {{app: web-v2}}}}
spec: {{nodeName: n2, serviceAccountName: web, containers: [{{name: c}}]}}
status: {{podIPs: [{{ip: 127.0.{n}.3}}]}}
---
apiVersion: v1
kind: Service
metadata: {{name: web-v2, namespace: shop}}
spec:
  clusterIP: 10.96.{n}.3
  selector: {{app: web-v2}}
  ports:
  - {{name: http, port: 80, targetPort: 8080}}
  - {{name: grpc-api, port: 81, targetPort: 8081}}
---
apiVersion: v1
kind: Service
metadata: {{name: idle, namespace: shop}}
spec:
  clusterIP: 10.96.{n}.2
  selector: {{app: nobody}}
  ports:
  - {{name: http, port: 80, targetPort: 8080}}
"#
    )
}

/// The waypoint's access lines, kept.
#[derive(Default)]
pub struct Lines(Mutex<Vec<String>>);

impl AccessLog for Lines {
    fn enabled(&self) -> bool {
        true
    }

    fn write(&self, line: &str) {
        self.0.lock().unwrap().push(line.to_owned());
    }
}

/// What a test changes in the waypoint it starts.
pub struct Options {
    pub response_timeout: Duration,
    pub otlp: Option<ExporterConfig>,
    /// Changes to the waypoint's limits beyond the bed's own.
    pub limits: fn(&mut Limits),
    /// Documents added to the node file (routes, say).
    pub extra: String,
    /// How the waypoint fetches RequestAuthentications' jwksUri.
    pub jwks: mesh_waypoint::jwks::Settings,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            response_timeout: WAIT,
            otlp: None,
            limits: |_| {},
            extra: String::new(),
            jwks: Default::default(),
        }
    }
}

pub struct Bed {
    pub n: u8,
    pub access: Arc<Lines>,
    pub ca: Ca,
    pub waypoint: Arc<Waypoint>,
    pub waypoint_addr: SocketAddr,
    pub pods: Arc<PodHandler>,
    pub client: Client,
    pub client_svid: Svid,
    client_dial: MapDial,
    views: watch::Sender<Published>,
    _serve: JoinHandle<()>,
}

impl Bed {
    pub async fn start(n: u8) -> Self {
        Self::start_with(n, Options::default()).await
    }

    pub async fn start_with(n: u8, options: Options) -> Self {
        mesh_identity::tls::install_process_default();
        let ca = Ca::new();
        let text = format!("{}{}", node_file(n), options.extra);
        let config = NodeConfig::parse(Path::new("node.yaml"), &text, None).unwrap();
        let (views_tx, views) = watch::channel(Published {
            view: Arc::new(config.view()),
            synced: true,
        });
        let web = ca.svid("shop", "web");
        let (pod_hbone, pods) = pod_hbone_server(&ca, &web).await;
        let map = (1..=3)
            .map(|i| (SocketAddr::from(([127, 0, n, i], 15008)), pod_hbone))
            .collect();
        let wp_svid = ca.svid("shop", "wp");
        let access = Arc::new(Lines::default());
        let (telemetry, export) = Telemetry::new(access.clone(), options.otlp).unwrap();
        if let Some(export) = export {
            tokio::spawn(export.run());
        }
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let waypoint_addr = listener.local_addr().unwrap();
        let mut limits = Limits {
            handshake_timeout: WAIT,
            connect_timeout: Duration::from_secs(2),
            response_timeout: options.response_timeout,
            detect_timeout: Duration::from_secs(2),
            ..Limits::default()
        };
        (options.limits)(&mut limits);
        let waypoint = Waypoint::new(Parts {
            gateway: "shop/wp".parse().unwrap(),
            pod_namespace: "shop".into(),
            pod_name: "wp-0".into(),
            listens: vec![waypoint_addr],
            identity: wp_svid.identity.clone(),
            cert: wp_svid.cert.clone(),
            bundle: ca.bundle(),
            views,
            dial: Arc::new(MapDial { map, default: None }),
            limits,
            telemetry,
            jwks: mesh_waypoint::jwks::Jwks::new(options.jwks).unwrap(),
        })
        .unwrap();
        let serve = {
            let wp = waypoint.clone();
            tokio::spawn(async move { wp.serve(listener).await })
        };
        let client_svid = ca.svid("shop", "client");
        Self {
            n,
            access,
            client: Client {
                bundle: ca.bundle(),
                pool: Pool::default(),
                buffers: BufferBudget::new(usize::MAX),
                timeouts: Timeouts {
                    connect: WAIT,
                    handshake: WAIT,
                },
            },
            client_dial: MapDial {
                map: HashMap::new(),
                default: Some(waypoint_addr),
            },
            ca,
            waypoint,
            waypoint_addr,
            pods,
            client_svid,
            views: views_tx,
            _serve: serve,
        }
    }

    /// Publishes the node file with `extra` in place of what it had, as a
    /// changed file or API object would: requests from now on see it.
    pub fn reconfigure(&self, extra: &str) {
        let text = format!("{}{extra}", node_file(self.n));
        let config = NodeConfig::parse(Path::new("node.yaml"), &text, None).unwrap();
        self.views.send_replace(Published {
            view: Arc::new(config.view()),
            synced: true,
        });
    }

    /// As `reconfigure`, read as a changed file is read at run time: a
    /// policy that cannot be read or compiled stands in for itself instead
    /// of failing the file.
    pub fn reconfigure_lenient(&self, extra: &str) {
        let text = format!("{}{extra}", node_file(self.n));
        let config = mesh_discovery::local::reload(Path::new("node.yaml"), &text, None).unwrap();
        self.views.send_replace(Published {
            view: Arc::new(config.view()),
            synced: true,
        });
    }

    pub fn vip(&self, port: u16) -> SocketAddr {
        SocketAddr::from(([10, 96, self.n, 1], port))
    }

    pub fn pod(&self, i: u8, port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, self.n, i], port))
    }

    /// A tunnel from the client pod to `dst` through the waypoint, as the
    /// client's node agent opens it.
    pub async fn tunnel(&self, dst: SocketAddr) -> Result<Tunnel, mesh_hbone::HboneError> {
        self.tunnel_as(&self.client_svid, self.pod(5, 40000), dst)
            .await
    }

    /// A tunnel with `svid`'s certificate, forwarded for `src`.
    pub async fn tunnel_as(
        &self,
        svid: &Svid,
        src: SocketAddr,
        dst: SocketAddr,
    ) -> Result<Tunnel, mesh_hbone::HboneError> {
        // Pooled connections are per identity: one client's connection is
        // never another's.
        let key = svid.identity.to_string();
        let origin = Origin {
            key: &key,
            namespace: "shop",
            name: "client-0",
            identity: &svid.identity,
            cert: Some(&svid.cert),
            dial: &self.client_dial,
        };
        within(
            "the tunnel to the waypoint",
            self.client.open(
                &origin,
                src,
                dst,
                self.waypoint.identity.clone(),
                &Bytes::new(),
            ),
        )
        .await
    }

    /// The access lines so far, as JSON.
    pub fn access_lines(&self) -> Vec<serde_json::Value> {
        self.access
            .0
            .lock()
            .unwrap()
            .iter()
            .map(|l| serde_json::from_str(l).expect("an access line is JSON"))
            .collect()
    }

    /// Waits until `n` access lines match `pred`; returns them.
    pub async fn wait_access(
        &self,
        n: usize,
        pred: impl Fn(&serde_json::Value) -> bool,
    ) -> Vec<serde_json::Value> {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let lines: Vec<_> = self
                .access_lines()
                .into_iter()
                .filter(|l| pred(l))
                .collect();
            if lines.len() >= n {
                return lines;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{n} access lines not within {WAIT:?}; have {:#?}",
                self.access_lines()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The sum of the series of `family` whose labels include every one
    /// of `labels` (`name="value"`), from the waypoint's exposition;
    /// `None` when no series matches.
    pub fn metric(&self, family: &str, labels: &[&str]) -> Option<f64> {
        let text = self.waypoint.telemetry.encode().unwrap();
        let found: Vec<f64> = text
            .lines()
            .filter(|l| l.starts_with(&format!("{family}{{")))
            .filter(|l| labels.iter().all(|want| l.contains(want)))
            .filter_map(|l| l.rsplit(' ').next()?.parse().ok())
            .collect();
        (!found.is_empty()).then(|| found.iter().sum())
    }

    pub async fn stream(&self, dst: SocketAddr) -> H2Io<Tunnel> {
        H2Io::new(self.tunnel(dst).await.unwrap())
    }

    /// A stream from a client with `svid`'s identity.
    pub async fn stream_as(&self, svid: &Svid, dst: SocketAddr) -> H2Io<Tunnel> {
        H2Io::new(self.tunnel_as(svid, self.pod(5, 40001), dst).await.unwrap())
    }

    /// An HTTP/1.1 client on its own tunnel to `dst`.
    pub async fn http1<B: SendBody>(&self, dst: SocketAddr) -> http1::SendRequest<B> {
        http1_over(self.stream(dst).await).await
    }

    /// An HTTP/1.1 client of `svid`'s identity on its own tunnel to `dst`.
    pub async fn http1_as<B: SendBody>(
        &self,
        svid: &Svid,
        dst: SocketAddr,
    ) -> http1::SendRequest<B> {
        http1_over(self.stream_as(svid, dst).await).await
    }

    /// An HTTP/2 (prior knowledge) client on its own tunnel to `dst`,
    /// sending bodies of type `B`.
    pub async fn http2<B: SendBody>(&self, dst: SocketAddr) -> http2::SendRequest<B> {
        http2_over(self.stream(dst).await).await
    }

    /// An HTTP/2 client of `svid`'s identity on its own tunnel to `dst`.
    pub async fn http2_as<B: SendBody>(
        &self,
        svid: &Svid,
        dst: SocketAddr,
    ) -> http2::SendRequest<B> {
        http2_over(self.stream_as(svid, dst).await).await
    }
}

/// A request body a client connection (HTTP/1.1 or HTTP/2) can send.
pub trait SendBody:
    hyper::body::Body<Data: Send, Error: Into<Box<dyn std::error::Error + Send + Sync>>>
    + Send
    + Unpin
    + 'static
{
}

impl<B> SendBody for B where
    B: hyper::body::Body<Data: Send, Error: Into<Box<dyn std::error::Error + Send + Sync>>>
        + Send
        + Unpin
        + 'static
{
}

/// A gRPC call's request to `uri`, as a gRPC client sends it: POST,
/// `content-type: application/grpc`, `te: trailers`.
pub fn grpc_post(uri: impl AsRef<str>) -> http::request::Builder {
    Request::post(uri.as_ref())
        .header("content-type", "application/grpc")
        .header("te", "trailers")
}

/// The sending half of an HTTP/1.1 client connection.
pub type Http1 = http1::SendRequest<Empty<Bytes>>;

/// Sends `request` and reads the whole answer, each within `WAIT`.
pub async fn exchange(c: &mut Http1, request: Request<Empty<Bytes>>) -> (Response<()>, Bytes) {
    let response = within("a response", c.send_request(request)).await.unwrap();
    let (parts, body) = response.into_parts();
    let body = within("the body", body.collect()).await.unwrap().to_bytes();
    (Response::from_parts(parts, ()), body)
}

/// The HTTP/2 handshake on `io`; the connection is driven by a task of
/// its own.
async fn http2_over<B: SendBody>(io: H2Io<Tunnel>) -> http2::SendRequest<B> {
    let (sender, conn) = within(
        "HTTP/2 handshake",
        http2::handshake(TokioExecutor::new(), TokioIo::new(io)),
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    sender
}

/// The handshake on `io`; the connection is driven by a task of its own.
async fn http1_over<B: SendBody>(io: H2Io<Tunnel>) -> http1::SendRequest<B> {
    let (sender, conn) = within("HTTP/1.1 handshake", http1::handshake(TokioIo::new(io)))
        .await
        .unwrap();
    tokio::spawn(conn);
    sender
}
