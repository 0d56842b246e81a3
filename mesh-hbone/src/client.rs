//! Opening a tunnel: reuse a pooled mTLS connection to the destination pod
//! or make one (TCP from where the source workload is, TLS 1.3 presenting
//! the source workload's certificate and pinning the destination's
//! identity, HTTP/2), then send CONNECT for the original destination.
use std::{
    future::Future,
    io,
    net::SocketAddr,
    pin::Pin,
    sync::{Arc, atomic::AtomicBool},
    time::Duration,
};

use bytes::Bytes;
use h2::{RecvStream, SendStream};
use http::{Method, Request, StatusCode};
use mesh_identity::{
    Identity, WorkloadCert,
    tls::{self, CertWatch, TrustBundle},
};
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tracing::{debug, warn};

use super::{
    CERT_WAIT, CONNECTION_WINDOW, HboneError, MAX_FRAME, STREAM_WINDOW,
    buffers::BufferBudget,
    pool::{PoolKey, StreamLease},
};

/// Opens the TCP connections under tunnels. The node agent dials from
/// inside the source pod's network namespace; a test or a proxy that runs
/// in its own namespace dials plainly.
pub trait Dial: Send + Sync {
    /// A connected stream to `to`, given up after `timeout`.
    fn dial(
        &self,
        to: SocketAddr,
        timeout: Duration,
    ) -> Pin<Box<dyn Future<Output = io::Result<TcpStream>> + Send + '_>>;
}

/// The workload a tunnel is opened for.
pub struct Origin<'a> {
    /// Tunnels share pooled connections only within one origin (so each
    /// leaves from its own workload's address): for the agent, the pod's
    /// `<namespace>/<name>`.
    pub key: &'a str,
    pub namespace: &'a str,
    pub name: &'a str,
    pub identity: &'a Identity,
    /// Its certificate; `None` when it has none (the tunnel is refused).
    pub cert: Option<&'a CertWatch>,
    pub dial: &'a dyn Dial,
}

/// Deadlines for making a new pooled connection.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    /// TCP connect.
    pub connect: Duration,
    /// TLS and the HTTP/2 handshake.
    pub handshake: Duration,
}

/// What every tunnel of a node shares: the roots peers are checked against,
/// the pool of connections, and the ledger of what stuck streams hold.
pub struct Client {
    pub bundle: TrustBundle,
    pub pool: super::Pool,
    pub buffers: Arc<BufferBudget>,
    pub timeouts: Timeouts,
}

/// An open CONNECT stream. The lease keeps its pooled connection counted.
pub struct Tunnel {
    pub send: SendStream<Bytes>,
    pub recv: RecvStream,
    pub trace_id: String,
    /// Bytes the app had waiting that were sent with the request; the relay
    /// skips them in the socket.
    pub early: usize,
    /// The node's ledger of what stuck streams hold.
    pub budget: Arc<BufferBudget>,
    _lease: StreamLease,
}

async fn current_cert(origin: &Origin<'_>) -> Result<(CertWatch, Arc<WorkloadCert>), HboneError> {
    let missing = || HboneError::NoCertificate(origin.identity.to_string());
    let mut watch = origin.cert.cloned().ok_or_else(missing)?;
    let cert = tokio::time::timeout(CERT_WAIT, watch.wait_for(|c| c.is_some()))
        .await
        .map_err(|_| missing())?
        .map_err(|_| missing())?
        .clone()
        .ok_or_else(missing)?;
    Ok((watch, cert))
}

async fn connect(
    client: &Client,
    origin: &Origin<'_>,
    source_cert: CertWatch,
    key: PoolKey,
) -> Result<StreamLease, HboneError> {
    let addr = key.address;
    let timeouts = client.timeouts;
    let tcp = origin
        .dial
        .dial(addr, timeouts.connect)
        .await
        .map_err(|source| HboneError::Connect { addr, source })?;
    let config = tls::client_config(&client.bundle, source_cert, key.destination.clone())?;
    // A peer that accepts TCP and then says nothing must not hold the
    // connection (and every stream waiting for it) for ever.
    let handshake = async {
        let tls = TlsConnector::from(Arc::new(config))
            .connect(ServerName::IpAddress(addr.ip().into()), tcp)
            .await
            .map_err(|source| HboneError::Tls { addr, source })?;
        Ok::<_, HboneError>(
            h2::client::Builder::new()
                .initial_window_size(STREAM_WINDOW)
                .initial_connection_window_size(CONNECTION_WINDOW)
                .max_frame_size(MAX_FRAME)
                .handshake::<_, Bytes>(tls)
                .await?,
        )
    };
    let (sender, mut connection) = tokio::time::timeout(timeouts.handshake, handshake)
        .await
        .map_err(|_| HboneError::HandshakeTimeout {
            addr,
            timeout: timeouts.handshake,
        })??;
    let closed = Arc::new(AtomicBool::new(false));
    let flag = closed.clone();
    let peer = key.destination.to_string();
    let mut ping_pong = connection.ping_pong();
    tokio::spawn(async move {
        tokio::pin!(connection);
        loop {
            tokio::select! {
                ended = &mut connection => {
                    if let Err(e) = ended {
                        debug!(%addr, peer, error = %e, "HBONE connection ended");
                    }
                    break;
                }
                alive = keepalive(ping_pong.as_mut()) => if !alive {
                    // Marked closed before the connection is dropped, so no
                    // new stream is put on it; its open streams fail and
                    // their relays reset both ends.
                    warn!(%addr, peer, timeout_s = (KEEPALIVE_INTERVAL + KEEPALIVE_TIMEOUT).as_secs(), "HBONE peer does not answer PING; connection abandoned");
                    break;
                }
            }
        }
        flag.store(true, std::sync::atomic::Ordering::Release);
    });
    debug!(%addr, destination = %key.destination, "HBONE connection opened");
    Ok(client.pool.insert(key, sender, closed))
}

/// A pooled connection is PINGed this often and abandoned when an answer
/// takes longer than `KEEPALIVE_TIMEOUT`: a peer node that lost power is
/// noticed within 15 s, where TCP alone would retransmit for minutes.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(5);

/// Waits one interval, then PINGs: true when the PONG came in time.
async fn keepalive(ping_pong: Option<&mut h2::PingPong>) -> bool {
    let Some(ping_pong) = ping_pong else {
        // h2 hands out the PingPong once; without it, no keepalive.
        return std::future::pending().await;
    };
    tokio::time::sleep(KEEPALIVE_INTERVAL).await;
    matches!(
        tokio::time::timeout(KEEPALIVE_TIMEOUT, ping_pong.ping(h2::Ping::opaque())).await,
        Ok(Ok(_))
    )
}

fn forwarded_for(src: SocketAddr) -> String {
    match src {
        SocketAddr::V4(a) => format!("for={}", a.ip()),
        SocketAddr::V6(a) => format!("for=\"[{}]\"", a.ip()),
    }
}

/// A new W3C trace context per connection, as ztunnel starts one.
fn new_traceparent() -> String {
    let trace: u128 = fastrand::u128(1..);
    let span: u64 = fastrand::u64(1..);
    format!("00-{trace:032x}-{span:016x}-01")
}

impl Client {
    /// Opens a tunnel from `origin` (the app at `src`) to `dst`, whose
    /// workload must prove `expected`. `early` (what the app already sent)
    /// follows the request without waiting for the response; on a retry it
    /// is sent again.
    pub async fn open(
        &self,
        origin: &Origin<'_>,
        src: SocketAddr,
        dst: SocketAddr,
        expected: Identity,
        early: &Bytes,
    ) -> Result<Tunnel, HboneError> {
        let via = SocketAddr::new(dst.ip(), mesh_common::HBONE_PORT);
        self.open_via(origin, src, via, dst, expected, early).await
    }

    /// Opens a tunnel to `dst` through the HBONE listener at `via`, whose
    /// workload must prove `expected`: a waypoint, asked for the original
    /// destination (a Service's virtual IP or a pod's address) as the
    /// CONNECT authority.
    pub async fn open_via(
        &self,
        origin: &Origin<'_>,
        src: SocketAddr,
        via: SocketAddr,
        dst: SocketAddr,
        expected: Identity,
        early: &Bytes,
    ) -> Result<Tunnel, HboneError> {
        let (watch, cert) = current_cert(origin).await?;
        let key = PoolKey {
            source_pod: origin.key.to_owned(),
            source_generation: cert.generation,
            destination: expected,
            address: via,
        };
        let request = || -> Result<Request<()>, HboneError> {
            Ok(Request::builder()
                .method(Method::CONNECT)
                .uri(dst.to_string())
                .header("forwarded", forwarded_for(src))
                .header("traceparent", new_traceparent())
                .header(
                    "baggage",
                    format!(
                        "k8s.namespace.name={},k8s.pod.name={}",
                        origin.namespace, origin.name
                    ),
                )
                .body(())?)
        };
        // A pooled connection may have died since it was last used (peer
        // restarted, idle close); then one fresh connection is tried.
        if let Some(lease) = self.pool.checkout(&key) {
            match connect_stream(lease, request()?, early, &self.buffers).await {
                Ok(t) => return Ok(t),
                Err(HboneError::H2(e)) => {
                    debug!(%dst, error = %e, "pooled HBONE connection failed; opening a new one");
                }
                Err(e) => return Err(e),
            }
        }
        // Single flight: concurrent first connections to one destination wait
        // for one new connection instead of each opening its own.
        // The turn ends once a lease is in hand, so the waiters' CONNECTs go
        // out together on the new connection, not one round trip after another.
        let lease = {
            let connecting = self.pool.connecting(&key);
            let _turn = connecting.lock().await;
            match self.pool.checkout(&key) {
                Some(lease) => lease,
                None => connect(self, origin, watch, key).await?,
            }
        };
        connect_stream(lease, request()?, early, &self.buffers).await
    }
}

async fn connect_stream(
    lease: StreamLease,
    request: Request<()>,
    early: &Bytes,
    budget: &Arc<BufferBudget>,
) -> Result<Tunnel, HboneError> {
    let trace_id = request
        .headers()
        .get("traceparent")
        .and_then(|v| v.to_str().ok())
        .and_then(|t| t.split('-').nth(1))
        .unwrap_or_default()
        .to_owned();
    // A Uri clone shares its bytes; kept for the refusal line.
    let authority = request.uri().clone();
    // A connection the peer is closing (GOAWAY) or that broke is retired,
    // so the retry in `open` makes a new one instead of leasing it again.
    let retire = |e: h2::Error| {
        if e.is_go_away() || e.is_io() {
            lease.retire();
        }
        HboneError::H2(e)
    };
    let mut sender = lease.sender().ready().await.map_err(retire)?;
    let (response, mut send) = sender.send_request(request, false).map_err(retire)?;
    if !early.is_empty() {
        // Within the stream's initial window, so h2 sends it with the
        // request rather than holding it for capacity.
        send.send_data(early.clone(), false).map_err(retire)?;
    }
    let response = response.await.map_err(retire)?;
    if response.status() != StatusCode::OK {
        warn!(%authority, status = %response.status(), "HBONE CONNECT refused");
        return Err(HboneError::Refused(response.status()));
    }
    Ok(Tunnel {
        send,
        recv: response.into_body(),
        trace_id,
        early: early.len(),
        budget: budget.clone(),
        _lease: lease,
    })
}
