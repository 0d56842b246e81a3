//! The pieces of an HBONE data path in one process over 127.0.0.1: a root
//! CA and workload SVIDs made with rcgen, a plain loopback `Dial`, an HBONE
//! listener served by `server::serve_connection` with a `Handler` that
//! records what it was asked and relays to the requested address, and an
//! echo server to relay to.
use std::{
    future::Future,
    io,
    net::SocketAddr,
    pin::Pin,
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use bytes::Bytes;
use h2::client::SendRequest;
use http::StatusCode;
use mesh_hbone::{
    Pool,
    buffers::BufferBudget,
    client::{Client, Dial, Origin, Timeouts, Tunnel},
    server::{self, Acceptor, Handler, Incoming, Refused},
    stream,
};
use mesh_identity::{
    Identity, WorkloadCert,
    tls::{self, CertWatch, TrustBundle},
};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, SanType,
};
use rustls::pki_types::{PrivatePkcs8KeyDer, ServerName};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    sync::{Semaphore, watch},
    task::{JoinHandle, JoinSet},
};

pub const TRUST_DOMAIN: &str = "cluster.local";

/// Every wait in these tests is bounded by this.
pub const WAIT: Duration = Duration::from_secs(5);

pub async fn within<F: Future>(what: &str, f: F) -> F::Output {
    tokio::time::timeout(WAIT, f)
        .await
        .unwrap_or_else(|_| panic!("not within {WAIT:?}: {what}"))
}

/// A mesh root.
pub struct Ca {
    key: KeyPair,
    params: CertificateParams,
    pem: String,
}

/// A workload's identity and certificate, as the cert manager hands it out.
pub struct Svid {
    pub identity: Identity,
    pub cert: CertWatch,
}

impl Ca {
    pub fn new(name: &str) -> Self {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::default();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        let pem = params.self_signed(&key).unwrap().pem();
        Self { key, params, pem }
    }

    pub fn bundle(&self) -> TrustBundle {
        TrustBundle::from_pem(&self.pem, TRUST_DOMAIN).unwrap()
    }

    /// An SVID for `spiffe://cluster.local/ns/<ns>/sa/<sa>`: only a URI
    /// SAN, usable both ways, as the mesh CA issues them.
    pub fn svid(&self, ns: &str, sa: &str) -> Svid {
        let identity = Identity::new(TRUST_DOMAIN, ns, sa).unwrap();
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
        assert_eq!(cert.identity(), &identity);
        Svid {
            identity,
            // The receiver keeps the last value once the sender is gone.
            cert: watch::channel(Some(Arc::new(cert))).1,
        }
    }
}

/// Dials plain loopback. The client always asks for the destination's
/// HBONE port (15008); the test listener is on port 0, so the dial goes
/// there instead, and what was asked for is kept for assertions.
pub struct LoopbackDial {
    hbone: SocketAddr,
    pub asked: Mutex<Vec<SocketAddr>>,
    /// When set, a dial waits for a permit before connecting.
    gate: Option<Arc<Semaphore>>,
}

impl LoopbackDial {
    pub fn to(hbone: SocketAddr) -> Self {
        Self {
            hbone,
            asked: Mutex::default(),
            gate: None,
        }
    }

    pub fn gated(hbone: SocketAddr, gate: Arc<Semaphore>) -> Self {
        Self {
            gate: Some(gate),
            ..Self::to(hbone)
        }
    }

    pub fn dials(&self) -> usize {
        self.asked.lock().unwrap().len()
    }
}

impl Dial for LoopbackDial {
    fn dial(
        &self,
        to: SocketAddr,
        timeout: Duration,
    ) -> Pin<Box<dyn Future<Output = io::Result<TcpStream>> + Send + '_>> {
        self.asked.lock().unwrap().push(to);
        Box::pin(async move {
            if let Some(gate) = &self.gate {
                let _permit = gate.acquire().await.map_err(io::Error::other)?;
            }
            tokio::time::timeout(timeout, TcpStream::connect(self.hbone))
                .await
                .map_err(|_| io::Error::from(io::ErrorKind::TimedOut))?
        })
    }
}

/// The source workload of tunnels: its SVID and how it dials.
pub struct Source {
    pub key: String,
    pub namespace: String,
    pub name: String,
    pub svid: Svid,
    pub dial: LoopbackDial,
}

impl Source {
    /// The pod `name` in the SVID's namespace.
    pub fn new(name: &str, svid: Svid, dial: LoopbackDial) -> Self {
        Self {
            key: format!("{}/{name}", svid.identity.namespace()),
            namespace: svid.identity.namespace().to_owned(),
            name: name.to_owned(),
            svid,
            dial,
        }
    }

    pub fn origin(&self) -> Origin<'_> {
        Origin {
            key: &self.key,
            namespace: &self.namespace,
            name: &self.name,
            identity: &self.svid.identity,
            cert: Some(&self.svid.cert),
            dial: &self.dial,
        }
    }
}

/// A node's client trusting `bundle`, with its own pool.
pub fn client(bundle: TrustBundle) -> Client {
    Client {
        bundle,
        pool: Pool::default(),
        buffers: BufferBudget::new(usize::MAX),
        timeouts: Timeouts {
            connect: WAIT,
            handshake: WAIT,
        },
    }
}

/// What the handler does with a CONNECT.
#[derive(Debug, Clone, Copy)]
pub enum Mode {
    /// Dial the requested address and relay, as the agent delivers to a pod.
    Relay,
    Refuse(StatusCode),
}

/// One CONNECT as the handler saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seen {
    /// The HBONE connection's peer address: streams of one connection share it.
    pub peer: SocketAddr,
    pub source: Identity,
    pub dst: SocketAddr,
}

pub struct RecordingHandler {
    mode: Mode,
    seen: watch::Sender<Vec<Seen>>,
    refused: watch::Sender<Vec<Refused>>,
    budget: Arc<BufferBudget>,
}

impl RecordingHandler {
    pub fn new(mode: Mode) -> Arc<Self> {
        Arc::new(Self {
            mode,
            seen: watch::Sender::new(Vec::new()),
            refused: watch::Sender::new(Vec::new()),
            budget: BufferBudget::new(usize::MAX),
        })
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.seen.borrow().clone()
    }

    pub fn refusals(&self) -> Vec<Refused> {
        self.refused.borrow().clone()
    }

    pub async fn wait_refused(&self, why: Refused) {
        let mut rx = self.refused.subscribe();
        within("the server's refusal", rx.wait_for(|r| r.contains(&why)))
            .await
            .unwrap();
    }
}

impl Handler for RecordingHandler {
    async fn connect(self: Arc<Self>, mut incoming: Incoming) {
        let dst = incoming.request.dst;
        self.seen.send_modify(|s| {
            s.push(Seen {
                peer: incoming.peer,
                source: incoming.source.clone(),
                dst,
            })
        });
        if let Mode::Refuse(status) = self.mode {
            incoming.refuse(status);
            return;
        }
        let app = match incoming.unless_reset(TcpStream::connect(dst)).await {
            Ok(Ok(app)) => app,
            Ok(Err(_)) => return incoming.refuse(StatusCode::SERVICE_UNAVAILABLE),
            Err(_) => return,
        };
        let Ok((send, recv)) = incoming.accept() else {
            return;
        };
        let _ = stream::relay(app, send, recv, 0, &self.budget).await;
    }

    fn refused(&self, why: Refused) {
        self.refused.send_modify(|r| r.push(why));
    }

    fn should_log(&self) -> bool {
        true
    }
}

/// An HBONE listener on 127.0.0.1:0 serving the workload `svid`.
pub struct HboneServer {
    pub addr: SocketAddr,
    pub handler: Arc<RecordingHandler>,
    pub draining: watch::Sender<bool>,
    accepts: watch::Sender<usize>,
    ended: watch::Sender<usize>,
    task: JoinHandle<()>,
}

impl HboneServer {
    pub async fn start(
        bundle: &TrustBundle,
        svid: &Svid,
        mode: Mode,
        handshake_timeout: Duration,
    ) -> Self {
        let acceptor = Arc::new(Acceptor {
            name: format!("{}/server-0", svid.identity.namespace()),
            tls: Arc::new(tls::server_config(bundle, svid.cert.clone()).unwrap()),
            cert: Some(svid.cert.clone()),
            trust_domain: bundle.trust_domain.clone(),
            handshake_timeout,
        });
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let handler = RecordingHandler::new(mode);
        let draining = watch::Sender::new(false);
        let accepts = watch::Sender::new(0);
        let ended = watch::Sender::new(0);
        let task = tokio::spawn({
            let (handler, draining, accepts, ended) = (
                handler.clone(),
                draining.subscribe(),
                accepts.clone(),
                ended.clone(),
            );
            async move {
                // Owned here, so aborting the accept loop ends the connections.
                let mut conns = JoinSet::new();
                loop {
                    tokio::select! {
                        accepted = listener.accept() => {
                            let (tcp, peer) = accepted.unwrap();
                            accepts.send_modify(|n| *n += 1);
                            conns.spawn(server::serve_connection(
                                tcp,
                                peer,
                                acceptor.clone(),
                                handler.clone(),
                                draining.clone(),
                            ));
                        }
                        Some(done) = conns.join_next() => {
                            done.unwrap();
                            ended.send_modify(|n| *n += 1);
                        }
                    }
                }
            }
        });
        Self {
            addr,
            handler,
            draining,
            accepts,
            ended,
            task,
        }
    }

    /// TCP connections accepted so far.
    pub fn accepts(&self) -> usize {
        *self.accepts.borrow()
    }

    /// Waits until `n` connections have been served to their end.
    pub async fn wait_ended(&self, n: usize) {
        let mut rx = self.ended.subscribe();
        within(
            "the server to finish its connections",
            rx.wait_for(|e| *e >= n),
        )
        .await
        .unwrap();
    }
}

impl Drop for HboneServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// An upstream app: echoes what it reads and, once its peer has finished
/// sending, writes `TRAILER` and closes, so a test sees that its half-close
/// arrived while it could still read. Keeps what each connection sent.
pub struct Echo {
    pub addr: SocketAddr,
    received: watch::Sender<Vec<Vec<u8>>>,
    task: JoinHandle<()>,
}

pub const TRAILER: &[u8] = b"<eof seen>";

impl Echo {
    pub async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let received = watch::Sender::new(Vec::new());
        let task = tokio::spawn({
            let received = received.clone();
            async move {
                let mut conns = JoinSet::new();
                loop {
                    let (mut tcp, _) = listener.accept().await.unwrap();
                    let mut index = 0;
                    received.send_modify(|r| {
                        index = r.len();
                        r.push(Vec::new());
                    });
                    let received = received.clone();
                    conns.spawn(async move {
                        let mut buf = vec![0u8; 64 * 1024];
                        loop {
                            let n = tcp.read(&mut buf).await?;
                            if n == 0 {
                                break;
                            }
                            received.send_modify(|r| r[index].extend_from_slice(&buf[..n]));
                            tcp.write_all(&buf[..n]).await?;
                        }
                        tcp.write_all(TRAILER).await?;
                        tcp.shutdown().await?;
                        Ok::<_, io::Error>(())
                    });
                    // Finished echo connections need not be kept.
                    while conns.try_join_next().is_some() {}
                }
            }
        });
        Self {
            addr,
            received,
            task,
        }
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> usize {
        self.received.borrow().len()
    }

    /// What connection `index` has sent, once it is at least `len` bytes.
    pub async fn wait_received(&self, index: usize, len: usize) -> Vec<u8> {
        let mut rx = self.received.subscribe();
        within(
            "the upstream to receive",
            rx.wait_for(|r| r.get(index).is_some_and(|b| b.len() >= len)),
        )
        .await
        .unwrap()[index]
            .clone()
    }
}

impl Drop for Echo {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The app's end of a tunnel: a loopback socket whose other end is relayed
/// into the tunnel with `stream::relay`, as the agent's outbound proxy does.
pub struct App {
    pub socket: TcpStream,
    relay: JoinHandle<io::Result<mesh_hbone::relay::Transferred>>,
}

/// A connected loopback pair: (the app's end, the end a proxy accepted).
pub async fn tcp_pair() -> (TcpStream, TcpStream) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let (app, accepted) = tokio::join!(TcpStream::connect(listener.local_addr().unwrap()), async {
        listener.accept().await.unwrap().0
    });
    (app.unwrap(), accepted)
}

impl App {
    /// Relays `accepted` (whose peer is `socket`) into `tunnel`.
    pub fn relay(socket: TcpStream, accepted: TcpStream, tunnel: Tunnel) -> Self {
        let Tunnel {
            send,
            recv,
            early,
            budget,
            ..
        } = tunnel;
        // The tunnel's other fields (its pool lease) live as long as the
        // relay, as they do in the agent.
        let relay =
            tokio::spawn(async move { stream::relay(accepted, send, recv, early, &budget).await });
        Self { socket, relay }
    }

    /// Opens a tunnel to `dst` and relays a fresh app socket into it.
    pub async fn open(
        client: &Client,
        source: &Source,
        dst: SocketAddr,
        expected: &Identity,
    ) -> Self {
        let (socket, accepted) = tcp_pair().await;
        let tunnel = within(
            "the tunnel to open",
            client.open(
                &source.origin(),
                socket.local_addr().unwrap(),
                dst,
                expected.clone(),
                &Bytes::new(),
            ),
        )
        .await
        .unwrap();
        Self::relay(socket, accepted, tunnel)
    }

    /// Writes `data` and reads back as many bytes, at once, so a large
    /// `data` does not wait on itself.
    pub async fn echo(&mut self, data: &[u8]) {
        let (mut rd, mut wr) = self.socket.split();
        let mut back = vec![0u8; data.len()];
        let (wrote, read) = within("the echo", async {
            tokio::join!(wr.write_all(data), rd.read_exact(&mut back))
        })
        .await;
        wrote.unwrap();
        read.unwrap();
        assert!(back == data, "the echo differs from what was sent");
    }

    /// Shuts the app's write side, reads to the end, and returns what came
    /// back after the half-close with what the relay moved.
    pub async fn finish(mut self) -> (Vec<u8>, mesh_hbone::relay::Transferred) {
        self.socket.shutdown().await.unwrap();
        let mut rest = Vec::new();
        within("the end of the tunnel", self.socket.read_to_end(&mut rest))
            .await
            .unwrap();
        let moved = within("the relay to end", &mut self.relay)
            .await
            .unwrap()
            .unwrap();
        (rest, moved)
    }
}

impl Drop for App {
    fn drop(&mut self) {
        self.relay.abort();
    }
}

/// A bare HTTP/2 connection to an HBONE listener, over TLS made with the
/// mesh's own client config: for requests `Client` never sends.
pub async fn raw_h2(
    bundle: &TrustBundle,
    svid: &Svid,
    expected: &Identity,
    to: SocketAddr,
) -> (SendRequest<Bytes>, JoinHandle<Result<(), h2::Error>>) {
    let config = tls::client_config(bundle, svid.cert.clone(), expected.clone()).unwrap();
    let tcp = TcpStream::connect(to).await.unwrap();
    let tls = within(
        "TLS",
        tokio_rustls::TlsConnector::from(Arc::new(config))
            .connect(ServerName::IpAddress(to.ip().into()), tcp),
    )
    .await
    .unwrap();
    let (sender, conn) = within("HTTP/2", h2::client::handshake(tls)).await.unwrap();
    (sender, tokio::spawn(conn))
}

/// Counts in a test whose tasks run at once.
#[derive(Default)]
pub struct Counter(AtomicUsize);

impl Counter {
    pub fn add(&self) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }

    pub fn get(&self) -> usize {
        self.0.load(Ordering::SeqCst)
    }
}

/// The usual bed: a CA, the server pod `shop/db` behind an HBONE server,
/// an echo upstream, and the client pod `shop/web-0` dialling the server.
pub struct Bed {
    pub ca: Ca,
    pub db: Svid,
    pub server: HboneServer,
    pub echo: Echo,
    pub web: Source,
    pub client: Client,
}

impl Bed {
    pub async fn start(mode: Mode, handshake_timeout: Duration) -> Self {
        let ca = Ca::new("mesh root");
        let db = ca.svid("shop", "db");
        let server = HboneServer::start(&ca.bundle(), &db, mode, handshake_timeout).await;
        let echo = Echo::start().await;
        let web = Source::new(
            "web-0",
            ca.svid("shop", "web"),
            LoopbackDial::to(server.addr),
        );
        let client = client(ca.bundle());
        Self {
            ca,
            db,
            server,
            echo,
            web,
            client,
        }
    }
}
