//! `hboneprobe`: connects to an agent's HBONE port as the tests tell it to —
//! with a good certificate, another CA's, an expired one or none; sending a
//! CONNECT, another method, or garbage — and prints what happened as JSON.
//!
//! With `--attack <kind>` it plays a hostile peer instead (idle or half-open
//! connections, a stream reset flood, an endless header block), so the tests
//! can check how the agent defends itself. Each attack ends by the deadline
//! and prints one JSON object saying what the agent did.
use std::{
    future::poll_fn,
    net::SocketAddr,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll, ready},
    time::Duration,
};

use bytes::Bytes;
use clap::Parser;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, ExtendedKeyUsagePurpose, IsCa, Issuer,
    KeyPair, SanType,
};
use rustls::{
    ClientConfig, DigitallySignedStruct, SignatureScheme,
    client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier},
    pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime},
};
use serde_json::json;
use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt},
    net::TcpStream,
    sync::{Semaphore, mpsc, watch},
    task::JoinSet,
    time::{Instant, timeout_at},
};
use tokio_rustls::client::TlsStream;

#[derive(Parser)]
struct Cli {
    /// The destination pod's address and HBONE port.
    #[arg(long)]
    to: SocketAddr,
    /// The mesh root (PEM), to sign the probe's own certificate.
    #[arg(long)]
    root_cert: std::path::PathBuf,
    #[arg(long)]
    root_key: std::path::PathBuf,
    /// The SPIFFE ID in the probe's certificate.
    #[arg(long, default_value = "spiffe://cluster.local/ns/default/sa/probe")]
    identity: String,
    /// Certificate: mesh (signed by the mesh root), other-ca, expired, none.
    #[arg(long, default_value = "mesh")]
    cert: String,
    #[arg(long, default_value = "CONNECT")]
    method: String,
    /// The CONNECT target (ip:port).
    #[arg(long)]
    authority: Option<String>,
    /// Send bytes that are not TLS and report what came back.
    #[arg(long)]
    garbage: bool,
    /// Act as a hostile peer instead of sending one request.
    #[arg(long, value_enum)]
    attack: Option<Attack>,
    /// Connections (idle, partial-hello) or streams (rst-flood).
    #[arg(long, default_value_t = 100)]
    count: usize,
    /// Bytes of padding header value (big-headers).
    #[arg(long, default_value_t = 1 << 20)]
    bytes: usize,
    /// An attack stops here and reports what it has seen so far.
    #[arg(long, default_value_t = 30)]
    deadline_secs: u64,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum Attack {
    /// Open connections and send nothing.
    Idle,
    /// Open connections, send the start of a ClientHello, then stall.
    PartialHello,
    /// Open streams and reset each at once.
    RstFlood,
    /// One header block that never ends, in CONTINUATION frames.
    BigHeaders,
}

/// The probe checks nothing about the server: it is here to test the server.
#[derive(Debug)]
struct AcceptAny;

impl ServerCertVerifier for AcceptAny {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }
    fn verify_tls13_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        rustls::crypto::ring::default_provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}

fn leaf(
    cli: &Cli,
) -> anyhow::Result<Option<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)>> {
    let issuer_key;
    let issuer = match cli.cert.as_str() {
        "none" => return Ok(None),
        "other-ca" => {
            issuer_key = KeyPair::generate()?;
            let mut p = CertificateParams::default();
            p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            Issuer::new(p, &issuer_key)
        }
        "mesh" | "expired" => {
            issuer_key = KeyPair::from_pem(&std::fs::read_to_string(&cli.root_key)?)?;
            Issuer::from_ca_cert_pem(&std::fs::read_to_string(&cli.root_cert)?, &issuer_key)?
        }
        other => anyhow::bail!("--cert {other}: use mesh, other-ca, expired or none"),
    };
    let key = KeyPair::generate()?;
    let mut p = CertificateParams::default();
    p.distinguished_name = DistinguishedName::new();
    p.subject_alt_names = vec![SanType::URI(cli.identity.clone().try_into()?)];
    p.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ClientAuth,
        ExtendedKeyUsagePurpose::ServerAuth,
    ];
    let now = time::OffsetDateTime::now_utc();
    if cli.cert == "expired" {
        p.not_before = now - time::Duration::hours(2);
        p.not_after = now - time::Duration::hours(1);
    } else {
        p.not_before = now - time::Duration::minutes(1);
        p.not_after = now + time::Duration::hours(1);
    }
    let cert = p.signed_by(&key, &issuer)?;
    Ok(Some((
        vec![cert.der().clone()],
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
    )))
}

/// TLS 1.3 with ALPN h2 over `tcp`, presenting the certificate `--cert` asks
/// for. The error names the stage that failed: "cert" or "tls".
async fn tls_connect<IO: AsyncRead + AsyncWrite + Unpin>(
    cli: &Cli,
    tcp: IO,
) -> Result<TlsStream<IO>, (&'static str, String)> {
    let cert = leaf(cli).map_err(|e| ("cert", e.to_string()))?;
    let builder =
        ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AcceptAny));
    let mut config = match cert {
        Some((chain, key)) => builder.with_client_auth_cert(chain, key).unwrap(),
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"h2".to_vec()];
    let name = ServerName::IpAddress(cli.to.ip().into());
    tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
        .map_err(|e| ("tls", e.to_string()))
}

async fn probe(cli: Cli) -> serde_json::Value {
    let mut tcp = match TcpStream::connect(cli.to).await {
        Ok(t) => t,
        Err(e) => return json!({"stage": "tcp", "error": e.to_string()}),
    };
    if cli.garbage {
        let _ = tcp
            .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n\x00\x01garbage")
            .await;
        let mut buf = vec![0u8; 1024];
        let n = tokio::time::timeout(Duration::from_secs(3), tcp.read(&mut buf)).await;
        return json!({"stage": "garbage", "read": format!("{n:?}")});
    }
    let tls = match tls_connect(&cli, tcp).await {
        Ok(t) => t,
        Err((stage, error)) => return json!({"stage": stage, "error": error}),
    };
    let (sender, conn) = match h2::client::Builder::new().handshake::<_, Bytes>(tls).await {
        Ok(x) => x,
        Err(e) => return json!({"stage": "h2", "error": e.to_string()}),
    };
    tokio::spawn(conn);
    let authority = cli.authority.clone().unwrap_or_else(|| cli.to.to_string());
    let method: http::Method = cli.method.parse().unwrap();
    let uri = if method == http::Method::CONNECT {
        authority.clone()
    } else {
        format!("https://{authority}/")
    };
    let request = http::Request::builder()
        .method(method)
        .uri(uri)
        .body(())
        .unwrap();
    let mut sender = match sender.ready().await {
        Ok(s) => s,
        Err(e) => return json!({"stage": "h2", "error": e.to_string()}),
    };
    let response = match sender.send_request(request, true) {
        Ok((r, _)) => r.await,
        Err(e) => return json!({"stage": "request", "error": e.to_string()}),
    };
    match response {
        Ok(r) => json!({"stage": "response", "status": r.status().as_u16()}),
        Err(e) => json!({"stage": "response", "error": e.to_string()}),
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let cli = Cli::parse();
    let out = match cli.attack {
        None => probe(cli).await,
        Some(kind) => attack(kind, &cli).await,
    };
    println!("{out}");
}

async fn attack(kind: Attack, cli: &Cli) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(cli.deadline_secs);
    match kind {
        Attack::Idle => hold_open("idle", None, cli, deadline).await,
        Attack::PartialHello => {
            hold_open("partial-hello", Some(&PARTIAL_HELLO), cli, deadline).await
        }
        Attack::RstFlood => rst_flood(cli, deadline).await,
        Attack::BigHeaders => big_headers(cli, deadline).await,
    }
}

// ---- idle, partial-hello: connections that never finish a handshake ----

/// A TLS record header announcing 512 bytes of handshake, then the first 20 of
/// a ClientHello (type, length, version, some random): a server that waits for
/// the rest of the record waits forever.
const PARTIAL_HELLO: [u8; 25] = [
    0x16, 0x03, 0x01, 0x02, 0x00, // record: handshake, TLS 1.0 legacy version, 512 bytes
    0x01, 0x00, 0x01, 0xfc, // handshake: ClientHello, 508 bytes
    0x03, 0x03, // legacy_version TLS 1.2
    0x5a, 0x17, 0x9e, 0x03, 0x61, 0xc4, 0x28, 0xb0, 0x7d, 0x33, 0xe2, 0x0f, 0x91,
    0x4c, // random
];

/// Connects at most this many sockets at a time, so a burst of thousands
/// measures the agent's timeouts rather than its listen backlog.
const CONNECTS_IN_FLIGHT: usize = 100;

/// How one held-open connection ended.
enum Fate {
    ConnectFailed(String),
    /// The server closed it this long after the connect; `replied` if it
    /// sent anything first (a TLS alert, say).
    Closed {
        secs: f64,
        replied: bool,
    },
    OpenAtDeadline {
        replied: bool,
    },
}

/// Raises the soft limit on open files to the hard limit, as thousands of
/// sockets need, and returns the soft limit now in force (0 if unknown).
fn raise_nofile_limit() -> libc::rlim_t {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit only read and write the struct passed.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return 0;
        }
        if lim.rlim_cur < lim.rlim_max {
            let raised = libc::rlimit {
                rlim_cur: lim.rlim_max,
                rlim_max: lim.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                lim = raised;
            }
        }
    }
    lim.rlim_cur
}

/// Opens `--count` connections, writes `hello` (if any) on each and waits for
/// the server to close them, up to the deadline.
async fn hold_open(
    name: &str,
    hello: Option<&'static [u8]>,
    cli: &Cli,
    deadline: Instant,
) -> serde_json::Value {
    let nofile = raise_nofile_limit();
    let gate = Arc::new(Semaphore::new(CONNECTS_IN_FLIGHT));
    let mut tasks = JoinSet::new();
    for _ in 0..cli.count {
        tasks.spawn(hold_one(cli.to, hello, deadline, gate.clone()));
    }
    let (mut closed, mut open, mut replied) = (Vec::new(), 0, 0);
    let (mut connect_failed, mut connect_error) = (0, None);
    while let Some(fate) = tasks.join_next().await {
        match fate {
            Ok(Fate::Closed { secs, replied: r }) => {
                closed.push(secs);
                replied += usize::from(r);
            }
            Ok(Fate::OpenAtDeadline { replied: r }) => {
                open += 1;
                replied += usize::from(r);
            }
            Ok(Fate::ConnectFailed(e)) => {
                connect_failed += 1;
                connect_error.get_or_insert(e);
            }
            Err(e) => {
                connect_failed += 1;
                connect_error.get_or_insert(format!("task: {e}"));
            }
        }
    }
    json!({
        "attack": name,
        "opened": closed.len() + open,
        "closed": closed.len(),
        "open_at_deadline": open,
        "close_secs": spread(&mut closed),
        "replied": replied,
        "connect_failed": connect_failed,
        "connect_error": connect_error,
        "nofile_limit": nofile,
    })
}

async fn hold_one(
    to: SocketAddr,
    hello: Option<&'static [u8]>,
    deadline: Instant,
    gate: Arc<Semaphore>,
) -> Fate {
    let connected = {
        let _permit = gate.acquire().await;
        timeout_at(deadline, TcpStream::connect(to)).await
    };
    let mut tcp = match connected {
        Ok(Ok(tcp)) => tcp,
        Ok(Err(e)) => return Fate::ConnectFailed(e.to_string()),
        Err(_) => return Fate::ConnectFailed("deadline passed while connecting".into()),
    };
    let since = Instant::now();
    let closed = |replied| Fate::Closed {
        secs: since.elapsed().as_secs_f64(),
        replied,
    };
    if let Some(hello) = hello {
        match timeout_at(deadline, tcp.write_all(hello)).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) => return closed(false),
            Err(_) => return Fate::OpenAtDeadline { replied: false },
        }
    }
    let mut buf = [0u8; 4096];
    let mut replied = false;
    loop {
        match timeout_at(deadline, tcp.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return closed(replied),
            Ok(Ok(_)) => replied = true,
            Err(_) => return Fate::OpenAtDeadline { replied },
        }
    }
}

/// Min, median and max in seconds (to the millisecond), or null if empty.
fn spread(secs: &mut [f64]) -> serde_json::Value {
    if secs.is_empty() {
        return serde_json::Value::Null;
    }
    secs.sort_by(f64::total_cmp);
    let n = secs.len();
    let median = if n % 2 == 1 {
        secs[n / 2]
    } else {
        (secs[n / 2 - 1] + secs[n / 2]) / 2.0
    };
    let ms = |s: f64| (s * 1000.0).round() / 1000.0;
    json!({"min": ms(secs[0]), "median": ms(median), "max": ms(secs[n - 1])})
}

// ---- TLS for the attacks that speak HTTP/2 ----

/// TCP then TLS, both within the deadline; the error names the stage.
/// `wrap` may put a layer between the two.
async fn connect_tls<IO: AsyncRead + AsyncWrite + Unpin>(
    cli: &Cli,
    deadline: Instant,
    wrap: impl FnOnce(TcpStream) -> IO,
) -> Result<TlsStream<IO>, String> {
    let tcp = match timeout_at(deadline, TcpStream::connect(cli.to)).await {
        Ok(Ok(tcp)) => tcp,
        Ok(Err(e)) => return Err(format!("tcp: {e}")),
        Err(_) => return Err("tcp: deadline passed".into()),
    };
    match timeout_at(deadline, tls_connect(cli, wrap(tcp))).await {
        Ok(Ok(tls)) => Ok(tls),
        Ok(Err((stage, e))) => Err(format!("{stage}: {e}")),
        Err(_) => Err("tls: deadline passed".into()),
    }
}

/// A socket whose writes keep "succeeding" once the peer has closed it,
/// so that the h2 client goes on reading. A peer that ends a flood sends
/// GOAWAY and closes while the flood is still arriving: our next write fails,
/// and h2 would report that broken pipe and never read the GOAWAY waiting in
/// the receive buffer. The first write error is kept for the report.
struct KeepReading {
    tcp: TcpStream,
    write_error: Arc<std::sync::Mutex<Option<String>>>,
}

impl KeepReading {
    /// Records `e` (the first one only) and swallows it.
    fn swallow(&self, e: std::io::Error) {
        if let Ok(mut first) = self.write_error.lock() {
            first.get_or_insert(e.to_string());
        }
    }

    fn broken(&self) -> bool {
        self.write_error.lock().map_or(true, |e| e.is_some())
    }
}

impl AsyncRead for KeepReading {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.tcp).poll_read(cx, buf)
    }
}

impl AsyncWrite for KeepReading {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        if self.broken() {
            return Poll::Ready(Ok(buf.len()));
        }
        match ready!(Pin::new(&mut self.tcp).poll_write(cx, buf)) {
            Ok(n) => Poll::Ready(Ok(n)),
            Err(e) => {
                self.swallow(e);
                Poll::Ready(Ok(buf.len()))
            }
        }
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        if self.broken() {
            return Poll::Ready(Ok(()));
        }
        if let Err(e) = ready!(Pin::new(&mut self.tcp).poll_flush(cx)) {
            self.swallow(e);
        }
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        if self.broken() {
            return Poll::Ready(Ok(()));
        }
        if let Err(e) = ready!(Pin::new(&mut self.tcp).poll_shutdown(cx)) {
            self.swallow(e);
        }
        Poll::Ready(Ok(()))
    }
}

fn connect_request(authority: &str) -> Result<http::Request<()>, String> {
    http::Request::builder()
        .method(http::Method::CONNECT)
        .uri(authority)
        .body(())
        .map_err(|e| format!("request: {e}"))
}

// ---- rst-flood: open a stream, reset it, repeat ----

/// Opens `--count` CONNECT streams and resets each at once, never waiting for
/// an answer: the peer does the work of starting each request and gets nothing
/// to show for it. A defended peer ends the connection with GOAWAY.
async fn rst_flood(cli: &Cli, deadline: Instant) -> serde_json::Value {
    let mut report = json!({
        "attack": "rst-flood", "sent": 0, "goaway": false, "reason": null,
        "reason_code": null, "remote": false, "error": null, "write_error": null,
        "max_concurrent_streams": null,
    });
    let write_error = Arc::new(std::sync::Mutex::new(None));
    let keep_reading = |tcp| KeepReading {
        tcp,
        write_error: write_error.clone(),
    };
    let tls = match connect_tls(cli, deadline, keep_reading).await {
        Ok(tls) => tls,
        Err(e) => {
            report["error"] = e.into();
            return report;
        }
    };
    let (mut sender, mut conn) = match timeout_at(
        deadline,
        h2::client::Builder::new().handshake::<_, Bytes>(tls),
    )
    .await
    {
        Ok(Ok(x)) => x,
        Ok(Err(e)) => return with_h2_error(report, &e),
        Err(_) => {
            report["error"] = "h2: deadline passed".into();
            return report;
        }
    };
    let ping = conn.ping_pong();
    let conn = tokio::spawn(conn);
    let authority = cli.authority.clone().unwrap_or_else(|| cli.to.to_string());

    let mut sent = 0u64;
    let mut h2_error = None;
    let mut other_error = None;
    for _ in 0..cli.count {
        // h2 holds a new stream back until the peer's MAX_CONCURRENT_STREAMS
        // allows it; reset streams free their slots.
        match timeout_at(deadline, poll_fn(|cx| sender.poll_ready(cx))).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                h2_error = Some(e);
                break;
            }
            Err(_) => {
                other_error = Some("deadline passed waiting to open a stream".to_string());
                break;
            }
        }
        let request = match connect_request(&authority) {
            Ok(r) => r,
            Err(e) => {
                other_error = Some(e);
                break;
            }
        };
        match sender.send_request(request, false) {
            Ok((_response, mut stream)) => {
                stream.send_reset(h2::Reason::CANCEL);
                sent += 1;
            }
            Err(e) => {
                h2_error = Some(e);
                break;
            }
        }
        // Let the connection task write the frames and read the peer's, so
        // the flood stops where the peer's GOAWAY arrives.
        tokio::task::yield_now().await;
    }
    // Streams handed to h2: the last few may still have been in its buffer
    // when the connection broke.
    report["sent"] = sent.into();
    // No limit from the peer shows as usize::MAX: report that as null.
    let max_streams = sender.current_max_send_streams();
    if max_streams != usize::MAX {
        report["max_concurrent_streams"] = max_streams.into();
    }

    // A PING answered means the peer has read the whole flood and anything it
    // sent about it has arrived.
    if h2_error.is_none()
        && other_error.is_none()
        && let Some(mut ping) = ping
    {
        match timeout_at(deadline, ping.ping(h2::Ping::opaque())).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => h2_error = Some(e),
            Err(_) => other_error = Some("deadline passed waiting for PING ack".to_string()),
        }
    }
    // With the sender gone the connection task ends: with the peer's GOAWAY
    // as its error if there was one.
    drop(sender);
    let conn_error = match timeout_at(deadline, conn).await {
        Ok(Ok(Err(e))) => Some(e),
        Ok(Err(e)) => {
            other_error.get_or_insert(format!("connection task: {e}"));
            None
        }
        _ => None,
    };
    if let Ok(first) = write_error.lock() {
        report["write_error"] = first.clone().into();
    }
    let errors = [h2_error, conn_error];
    let chosen = errors
        .iter()
        .flatten()
        .find(|e| e.is_go_away())
        .or(errors.iter().flatten().next());
    match (chosen, other_error) {
        (Some(e), _) => with_h2_error(report, e),
        (None, Some(e)) => {
            report["error"] = e.into();
            report
        }
        (None, None) => report,
    }
}

fn with_h2_error(mut report: serde_json::Value, e: &h2::Error) -> serde_json::Value {
    report["goaway"] = (e.is_go_away() && e.is_remote()).into();
    report["remote"] = e.is_remote().into();
    if let Some(reason) = e.reason() {
        report["reason"] = format!("{reason:?}").into();
        report["reason_code"] = u32::from(reason).into();
    }
    report["error"] = e.to_string().into();
    report
}

// ---- big-headers: raw HTTP/2 frames, one endless header block ----

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// The largest frame payload any HTTP/2 peer must accept.
const FRAME_MAX: usize = 16_384;
const FRAME_HEADERS: u8 = 0x1;
const FRAME_RST_STREAM: u8 = 0x3;
const FRAME_SETTINGS: u8 = 0x4;
const FRAME_PING: u8 = 0x6;
const FRAME_GOAWAY: u8 = 0x7;
const FRAME_CONTINUATION: u8 = 0x9;
const FLAG_ACK: u8 = 0x1;
const FLAG_END_HEADERS: u8 = 0x4;
const STREAM: u32 = 1;

/// The 9-byte frame header: 24-bit length, type, flags, 31-bit stream id.
fn frame_header(len: usize, kind: u8, flags: u8, stream: u32) -> [u8; 9] {
    let len = (len as u32).to_be_bytes();
    let id = (stream & 0x7fff_ffff).to_be_bytes();
    [
        len[1], len[2], len[3], kind, flags, id[0], id[1], id[2], id[3],
    ]
}

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let mut f = frame_header(payload.len(), kind, flags, stream).to_vec();
    f.extend_from_slice(payload);
    f
}

#[derive(Debug, PartialEq)]
struct FrameHead {
    len: usize,
    kind: u8,
    flags: u8,
    stream: u32,
}

fn parse_frame_header(b: &[u8]) -> Option<FrameHead> {
    let h: &[u8; 9] = b.get(..9)?.try_into().ok()?;
    Some(FrameHead {
        len: u32::from_be_bytes([0, h[0], h[1], h[2]]) as usize,
        kind: h[3],
        flags: h[4],
        stream: u32::from_be_bytes([h[5], h[6], h[7], h[8]]) & 0x7fff_ffff,
    })
}

/// HPACK integer (RFC 7541 §5.1): `first` holds the bits above the
/// `prefix_bits`-bit prefix.
fn hpack_int(out: &mut Vec<u8>, first: u8, prefix_bits: u32, value: usize) {
    let max = (1usize << prefix_bits) - 1;
    if value < max {
        out.push(first | value as u8);
        return;
    }
    out.push(first | max as u8);
    let mut rest = value - max;
    while rest >= 0x80 {
        out.push(0x80 | (rest & 0x7f) as u8);
        rest >>= 7;
    }
    out.push(rest as u8);
}

/// HPACK string literal without Huffman coding: 7-bit prefixed length, bytes.
fn hpack_str(out: &mut Vec<u8>, s: &[u8]) {
    hpack_int(out, 0x00, 7, s.len());
    out.extend_from_slice(s);
}

/// The header block up to the padding value's bytes: :method CONNECT,
/// :authority, then the name and length of an `x-pad` header `pad_len` long.
/// All literals without indexing, so the peer's table stays empty.
fn block_head(authority: &str, pad_len: usize) -> Vec<u8> {
    let mut b = Vec::new();
    // Indexed names from the static table (:authority 1, :method 2);
    // CONNECT itself is not in it.
    hpack_int(&mut b, 0x00, 4, 2);
    hpack_str(&mut b, b"CONNECT");
    hpack_int(&mut b, 0x00, 4, 1);
    hpack_str(&mut b, authority.as_bytes());
    b.push(0x00); // new name
    hpack_str(&mut b, b"x-pad");
    hpack_int(&mut b, 0x00, 7, pad_len);
    b
}

/// The header block cut into a HEADERS frame and CONTINUATION frames of at
/// most FRAME_MAX bytes, END_HEADERS only on the last. Built one at a time:
/// the block may be far bigger than the probe wants to hold.
struct BlockFrames {
    head: Vec<u8>,
    total: usize,
    offset: usize,
}

impl BlockFrames {
    fn new(authority: &str, pad_len: usize) -> Self {
        let head = block_head(authority, pad_len);
        let total = head.len() + pad_len;
        BlockFrames {
            head,
            total,
            offset: 0,
        }
    }
}

impl Iterator for BlockFrames {
    /// The whole frame and the size of its payload.
    type Item = (Vec<u8>, usize);

    fn next(&mut self) -> Option<Self::Item> {
        if self.offset >= self.total {
            return None;
        }
        let len = FRAME_MAX.min(self.total - self.offset);
        let kind = if self.offset == 0 {
            FRAME_HEADERS
        } else {
            FRAME_CONTINUATION
        };
        let end = self.offset + len;
        let flags = if end == self.total {
            FLAG_END_HEADERS
        } else {
            0
        };
        let mut f = frame_header(len, kind, flags, STREAM).to_vec();
        let from_head = self.head.get(self.offset..end.min(self.head.len()));
        f.extend_from_slice(from_head.unwrap_or(&[]));
        f.resize(9 + len, b'a');
        self.offset = end;
        Some((f, len))
    }
}

/// What the peer has said on the big-headers connection.
#[derive(Default)]
struct Seen {
    /// The last GOAWAY: last stream id, error code.
    goaway: Option<(u32, u32)>,
    rst_stream: Option<u32>,
    /// A response HEADERS on the stream: the peer took the block as a request.
    response: bool,
    closed: bool,
    read_error: Option<String>,
}

impl Seen {
    fn answered(&self) -> bool {
        self.closed || self.goaway.is_some() || self.rst_stream.is_some() || self.response
    }
}

/// Reads the peer's frames until the connection ends, recording the ones the
/// report needs and queueing the acknowledgements a conforming client sends.
async fn read_frames<R: tokio::io::AsyncRead + Unpin>(
    mut rd: R,
    seen: watch::Sender<Seen>,
    ctrl: mpsc::UnboundedSender<Vec<u8>>,
) {
    let mut buf = Vec::new();
    let mut chunk = vec![0u8; 16 * 1024];
    loop {
        match rd.read(&mut chunk).await {
            Ok(0) => break seen.send_modify(|s| s.closed = true),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) => {
                break seen.send_modify(|s| {
                    s.closed = true;
                    s.read_error = Some(e.to_string());
                });
            }
        }
        while let Some(head) = parse_frame_header(&buf) {
            if buf.len() < 9 + head.len {
                break;
            }
            let payload: Vec<u8> = buf.drain(..9 + head.len).skip(9).collect();
            on_frame(&head, &payload, &seen, &ctrl);
        }
    }
}

fn on_frame(
    head: &FrameHead,
    payload: &[u8],
    seen: &watch::Sender<Seen>,
    ctrl: &mpsc::UnboundedSender<Vec<u8>>,
) {
    let word = |at: usize| {
        payload
            .get(at..at + 4)
            .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    };
    match head.kind {
        FRAME_SETTINGS if head.flags & FLAG_ACK == 0 => {
            let _ = ctrl.send(frame(FRAME_SETTINGS, FLAG_ACK, 0, &[]));
        }
        FRAME_PING if head.flags & FLAG_ACK == 0 => {
            let _ = ctrl.send(frame(FRAME_PING, FLAG_ACK, 0, payload));
        }
        FRAME_GOAWAY => {
            if let (Some(last), Some(code)) = (word(0), word(4)) {
                seen.send_modify(|s| s.goaway = Some((last & 0x7fff_ffff, code)));
            }
        }
        FRAME_RST_STREAM if head.stream == STREAM => {
            if let Some(code) = word(0) {
                seen.send_modify(|s| s.rst_stream = Some(code));
            }
        }
        FRAME_HEADERS if head.stream == STREAM => seen.send_modify(|s| s.response = true),
        _ => {}
    }
}

/// Why the writer stopped before the whole block was out.
enum Stopped {
    Deadline,
    /// The reader saw the connection end.
    Closed,
    Io(String),
}

impl std::fmt::Display for Stopped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Stopped::Deadline => f.write_str("deadline passed while writing"),
            Stopped::Closed => f.write_str("closed by the peer"),
            Stopped::Io(e) => f.write_str(e),
        }
    }
}

/// Writes `bytes` and flushes them to the socket, within the deadline: a
/// peer that stops reading stalls the flush.
async fn send<W: tokio::io::AsyncWrite + Unpin>(
    wr: &mut W,
    bytes: &[u8],
    deadline: Instant,
) -> Result<(), Stopped> {
    let write = async {
        wr.write_all(bytes).await?;
        wr.flush().await
    };
    match timeout_at(deadline, write).await {
        Ok(r) => r.map_err(|e| Stopped::Io(e.to_string())),
        Err(_) => Err(Stopped::Deadline),
    }
}

/// Sends one request whose header block is `--bytes` long, in as many
/// CONTINUATION frames as that takes. A defended peer caps the block and
/// answers with GOAWAY (or RST_STREAM) instead of buffering it all.
async fn big_headers(cli: &Cli, deadline: Instant) -> serde_json::Value {
    let mut report = json!({
        "attack": "big-headers", "bytes_sent": 0, "frames_sent": 0, "complete": false,
        "goaway": false, "goaway_code": null, "goaway_last_stream": null,
        "rst_stream_code": null, "response": false, "closed": false, "error": null,
    });
    let tls = match connect_tls(cli, deadline, |tcp| tcp).await {
        Ok(tls) => tls,
        Err(e) => {
            report["error"] = e.into();
            return report;
        }
    };
    report["alpn"] = tls
        .get_ref()
        .1
        .alpn_protocol()
        .map(|p| String::from_utf8_lossy(p).into_owned())
        .into();
    let (rd, mut wr) = tokio::io::split(tls);
    let (seen_tx, mut seen) = watch::channel(Seen::default());
    let (ctrl_tx, mut ctrl) = mpsc::unbounded_channel();
    let reader = tokio::spawn(read_frames(rd, seen_tx, ctrl_tx));

    let authority = cli.authority.clone().unwrap_or_else(|| cli.to.to_string());
    let (mut bytes_sent, mut frames_sent) = (0usize, 0usize);
    let written: Result<(), Stopped> = async {
        let mut opening = PREFACE.to_vec();
        opening.extend(frame(FRAME_SETTINGS, 0, 0, &[]));
        send(&mut wr, &opening, deadline).await?;
        for (f, len) in BlockFrames::new(&authority, cli.bytes) {
            while let Ok(ack) = ctrl.try_recv() {
                send(&mut wr, &ack, deadline).await?;
            }
            if seen.borrow().closed {
                return Err(Stopped::Closed);
            }
            send(&mut wr, &f, deadline).await?;
            bytes_sent += len;
            frames_sent += 1;
        }
        Ok(())
    }
    .await;

    // Block sent (or writing failed): wait for the peer's verdict, still
    // acknowledging its SETTINGS and PINGs, then a moment more for the close
    // that follows a GOAWAY.
    let mut grace = None;
    while !seen.borrow().closed {
        if grace.is_none() && seen.borrow().answered() {
            grace = Some(deadline.min(Instant::now() + Duration::from_secs(1)));
        }
        tokio::select! {
            ack = ctrl.recv() => match ack {
                Some(ack) => {
                    if send(&mut wr, &ack, deadline).await.is_err() {
                        break;
                    }
                }
                None => break,
            },
            changed = seen.changed() => if changed.is_err() {
                break;
            },
            _ = tokio::time::sleep_until(grace.unwrap_or(deadline)) => break,
        }
    }
    reader.abort();

    let s = seen.borrow();
    report["bytes_sent"] = bytes_sent.into();
    report["frames_sent"] = frames_sent.into();
    report["complete"] = written.is_ok().into();
    report["goaway"] = s.goaway.is_some().into();
    report["goaway_code"] = s.goaway.map(|(_, code)| code).into();
    report["goaway_last_stream"] = s.goaway.map(|(last, _)| last).into();
    report["rst_stream_code"] = s.rst_stream.into();
    report["response"] = s.response.into();
    let write_failed = matches!(written, Err(Stopped::Io(_) | Stopped::Closed));
    report["closed"] = (s.closed || write_failed).into();
    report["error"] = match (written, &s.read_error) {
        (Err(e), _) => format!("write: {e}").into(),
        (Ok(()), Some(e)) => format!("read: {e}").into(),
        (Ok(()), None) => serde_json::Value::Null,
    };
    report
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hpack_integers() {
        let enc = |first, bits, v| {
            let mut out = Vec::new();
            hpack_int(&mut out, first, bits, v);
            out
        };
        // RFC 7541 C.1.1 to C.1.3.
        assert_eq!(enc(0, 5, 10), [0x0a]);
        assert_eq!(enc(0, 5, 1337), [0x1f, 0x9a, 0x0a]);
        assert_eq!(enc(0, 8, 42), [0x2a]);
        // The prefix full exactly: a zero continuation byte follows.
        assert_eq!(enc(0, 7, 127), [0x7f, 0x00]);
        assert_eq!(enc(0, 7, 126), [0x7e]);
        assert_eq!(enc(0, 7, 1 << 20), [0x7f, 0x81, 0xff, 0x3f]);
        // Bits above the prefix are kept.
        assert_eq!(enc(0x80, 7, 3), [0x83]);
        assert_eq!(enc(0x40, 6, 70), [0x7f, 0x07]);
    }

    #[test]
    fn header_block_head() {
        let b = block_head("10.0.0.1:80", 300);
        let mut want = vec![0x02, 0x07];
        want.extend_from_slice(b"CONNECT");
        want.extend_from_slice(&[0x01, 0x0b]);
        want.extend_from_slice(b"10.0.0.1:80");
        want.extend_from_slice(&[0x00, 0x05]);
        want.extend_from_slice(b"x-pad");
        // 300 = 127 + 173: 0x7f, then 173 = 0x80|45, 1.
        want.extend_from_slice(&[0x7f, 0xad, 0x01]);
        assert_eq!(b, want);
    }

    #[test]
    fn frame_headers() {
        assert_eq!(
            frame_header(16_384, FRAME_CONTINUATION, FLAG_END_HEADERS, 1),
            [0x00, 0x40, 0x00, 0x09, 0x04, 0, 0, 0, 1]
        );
        // The reserved bit of the stream id is never sent.
        assert_eq!(
            frame_header(0x01_0203, FRAME_GOAWAY, 0, 0xffff_ffff),
            [0x01, 0x02, 0x03, 0x07, 0x00, 0x7f, 0xff, 0xff, 0xff]
        );
        assert_eq!(
            parse_frame_header(&frame(FRAME_PING, FLAG_ACK, 0, &[1; 8])),
            Some(FrameHead {
                len: 8,
                kind: FRAME_PING,
                flags: FLAG_ACK,
                stream: 0
            })
        );
        assert_eq!(parse_frame_header(&[0; 8]), None);
    }

    #[test]
    fn block_split_into_frames() {
        for pad in [0, 10, FRAME_MAX, 3 * FRAME_MAX + 17] {
            let frames: Vec<_> = BlockFrames::new("10.0.0.1:80", pad).collect();
            let mut block = Vec::new();
            for (i, (f, len)) in frames.iter().enumerate() {
                let head = parse_frame_header(f).unwrap();
                assert_eq!((head.len, f.len() - 9), (*len, *len));
                assert!(head.len <= FRAME_MAX);
                assert_eq!(head.stream, STREAM);
                let first = if i == 0 {
                    FRAME_HEADERS
                } else {
                    FRAME_CONTINUATION
                };
                assert_eq!(head.kind, first);
                let last = i + 1 == frames.len();
                assert_eq!(head.flags, if last { FLAG_END_HEADERS } else { 0 });
                block.extend_from_slice(&f[9..]);
            }
            let mut want = block_head("10.0.0.1:80", pad);
            want.resize(want.len() + pad, b'a');
            assert_eq!(block, want, "pad {pad}");
        }
    }

    #[test]
    fn spread_of_close_times() {
        assert_eq!(spread(&mut []), serde_json::Value::Null);
        assert_eq!(
            spread(&mut [3.0, 1.0, 2.0, 10.0]),
            json!({"min": 1.0, "median": 2.5, "max": 10.0})
        );
    }

    fn cli(to: SocketAddr, args: &[&str]) -> Cli {
        let to = to.to_string();
        let mut argv = vec![
            "hboneprobe",
            "--to",
            &to,
            "--root-cert",
            "/nonexistent",
            "--root-key",
            "/nonexistent",
            "--cert",
            "none",
        ];
        argv.extend_from_slice(args);
        Cli::try_parse_from(argv).unwrap()
    }

    /// A listener that closes each connection after `after`.
    async fn closing_server(after: Duration) -> SocketAddr {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                tokio::spawn(async move {
                    tokio::time::sleep(after).await;
                    drop(tcp);
                });
            }
        });
        addr
    }

    #[tokio::test]
    async fn idle_connections_closed_by_the_server() {
        let addr = closing_server(Duration::from_millis(300)).await;
        let c = cli(addr, &["--attack", "idle", "--count", "20"]);
        let v = attack(Attack::Idle, &c).await;
        assert_eq!(v["opened"], 20, "{v}");
        assert_eq!(v["closed"], 20, "{v}");
        assert_eq!(v["open_at_deadline"], 0, "{v}");
        let min = v["close_secs"]["min"].as_f64().unwrap();
        assert!((0.25..5.0).contains(&min), "{v}");
    }

    #[tokio::test]
    async fn partial_hello_left_open_until_the_deadline() {
        let addr = closing_server(Duration::from_secs(60)).await;
        let c = cli(addr, &["--count", "3", "--deadline-secs", "1"]);
        let v = attack(Attack::PartialHello, &c).await;
        assert_eq!(v["attack"], "partial-hello", "{v}");
        assert_eq!(v["open_at_deadline"], 3, "{v}");
        assert_eq!(v["close_secs"], serde_json::Value::Null, "{v}");
    }

    #[tokio::test]
    async fn idle_connect_refused() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        let v = attack(Attack::Idle, &cli(addr, &["--count", "2"])).await;
        assert_eq!(v["connect_failed"], 2, "{v}");
        assert_eq!(v["opened"], 0, "{v}");
        assert!(v["connect_error"].is_string(), "{v}");
    }

    /// An HTTP/2 server over TLS that reads frames but never accepts a
    /// stream, with the defences of the h2 crate configured by `builder`.
    async fn h2_server(builder: h2::server::Builder) -> SocketAddr {
        let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
        let key = PrivateKeyDer::Pkcs8(ck.signing_key.serialize_der().into());
        let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![ck.cert.der().clone()], key)
        .unwrap();
        config.alpn_protocols = vec![b"h2".to_vec()];
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let (acceptor, builder) = (acceptor.clone(), builder.clone());
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let Ok(mut conn) = builder.handshake::<_, Bytes>(tls).await else {
                        return;
                    };
                    let _ = poll_fn(|cx| conn.poll_closed(cx)).await;
                });
            }
        });
        addr
    }

    #[tokio::test]
    async fn rst_flood_meets_goaway() {
        let mut builder = h2::server::Builder::new();
        builder
            .max_concurrent_streams(50)
            .max_pending_accept_reset_streams(20);
        let addr = h2_server(builder).await;
        let c = cli(addr, &["--count", "100000", "--deadline-secs", "10"]);
        let v = attack(Attack::RstFlood, &c).await;
        assert_eq!(v["goaway"], true, "{v}");
        assert_eq!(v["reason"], "ENHANCE_YOUR_CALM", "{v}");
        assert_eq!(v["max_concurrent_streams"], 50, "{v}");
        let sent = v["sent"].as_u64().unwrap();
        assert!((20..100_000).contains(&sent), "{v}");
    }

    #[tokio::test]
    async fn rst_flood_all_sent_to_a_tolerant_peer() {
        let mut builder = h2::server::Builder::new();
        builder.max_pending_accept_reset_streams(100_000);
        let addr = h2_server(builder).await;
        let c = cli(addr, &["--count", "300", "--deadline-secs", "10"]);
        let v = attack(Attack::RstFlood, &c).await;
        assert_eq!(v["sent"], 300, "{v}");
        assert_eq!(v["goaway"], false, "{v}");
        assert_eq!(v["error"], serde_json::Value::Null, "{v}");
    }

    #[tokio::test]
    async fn big_headers_meet_goaway() {
        let mut builder = h2::server::Builder::new();
        builder.max_header_list_size(64 * 1024);
        let addr = h2_server(builder).await;
        let c = cli(addr, &["--bytes", "32000000", "--deadline-secs", "10"]);
        let v = attack(Attack::BigHeaders, &c).await;
        assert_eq!(v["alpn"], "h2", "{v}");
        assert_eq!(v["goaway"], true, "{v}");
        assert_eq!(v["goaway_code"], 11, "{v}"); // ENHANCE_YOUR_CALM
        assert_eq!(v["closed"], true, "{v}");
        assert_eq!(v["complete"], false, "{v}");
        let sent = v["bytes_sent"].as_u64().unwrap();
        assert!((64 * 1024..32_000_000).contains(&sent), "{v}");
    }

    #[tokio::test]
    async fn big_headers_answered_when_small() {
        let addr = h2_server(h2::server::Builder::new()).await;
        let c = cli(addr, &["--bytes", "40000", "--deadline-secs", "2"]);
        let v = attack(Attack::BigHeaders, &c).await;
        assert_eq!(v["complete"], true, "{v}");
        assert_eq!(v["frames_sent"], 3, "{v}");
        assert_eq!(v["goaway"], false, "{v}");
    }
}
