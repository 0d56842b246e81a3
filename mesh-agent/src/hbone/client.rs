//! Opening a tunnel: reuse a pooled mTLS connection to the destination pod
//! or make one (TCP from inside the source pod's netns, TLS 1.3 presenting
//! the source workload's certificate and pinning the destination's
//! identity, HTTP/2), then send CONNECT for the original destination.
use std::{
    net::SocketAddr,
    sync::{Arc, atomic::AtomicBool},
    time::Duration,
};

use bytes::Bytes;
use h2::{RecvStream, SendStream};
use http::{Method, Request, StatusCode};
use rustls::pki_types::ServerName;
use tokio_rustls::TlsConnector;
use tracing::{debug, warn};

use super::{
    CERT_WAIT, CONNECTION_WINDOW, HboneError, MAX_FRAME, STREAM_WINDOW,
    buffers::BufferBudget,
    pool::{PoolKey, StreamLease},
};
use crate::{
    config::LimitSettings,
    identity::{Identity, WorkloadCert},
    pod::PodContext,
    proxy::{connector::agent_connect, state::Mtls},
    tls,
};

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

async fn current_cert(pod: &PodContext) -> Result<(tls::CertWatch, Arc<WorkloadCert>), HboneError> {
    let missing = || HboneError::NoCertificate(pod.identity.to_string());
    let mut watch = pod.cert.clone().ok_or_else(missing)?;
    let cert = tokio::time::timeout(CERT_WAIT, watch.wait_for(|c| c.is_some()))
        .await
        .map_err(|_| missing())?
        .map_err(|_| missing())?
        .clone()
        .ok_or_else(missing)?;
    Ok((watch, cert))
}

async fn connect(
    mtls: &Mtls,
    pod: &PodContext,
    source_cert: tls::CertWatch,
    key: PoolKey,
    limits: &LimitSettings,
) -> Result<StreamLease, HboneError> {
    let addr = key.address;
    let tcp = agent_connect(pod, None, addr, limits.connect_timeout)
        .await
        .map_err(|source| HboneError::Connect { addr, source })?;
    let config = tls::client_config(&mtls.bundle, source_cert, key.destination.clone())?;
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
    let (sender, mut connection) = tokio::time::timeout(limits.handshake_timeout, handshake)
        .await
        .map_err(|_| HboneError::HandshakeTimeout {
            addr,
            timeout: limits.handshake_timeout,
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
    Ok(mtls.pool.insert(key, sender, closed))
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

/// Opens a tunnel from `pod` (the app at `src`) to `dst`, whose workload must
/// prove `expected`. `early` (what the app already sent) follows the request
/// without waiting for the response; on a retry it is sent again.
pub async fn open(
    mtls: &Mtls,
    pod: &PodContext,
    src: SocketAddr,
    dst: SocketAddr,
    expected: Identity,
    early: &Bytes,
    limits: &LimitSettings,
) -> Result<Tunnel, HboneError> {
    let (watch, cert) = current_cert(pod).await?;
    let key = PoolKey {
        source_pod: pod.key.clone(),
        source_generation: cert.generation,
        destination: expected,
        address: SocketAddr::new(dst.ip(), mesh_common::HBONE_PORT),
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
                    pod.namespace, pod.name
                ),
            )
            .body(())?)
    };
    // A pooled connection may have died since it was last used (peer
    // restarted, idle close); then one fresh connection is tried.
    if let Some(lease) = mtls.pool.checkout(&key) {
        match connect_stream(lease, request()?, early, &mtls.buffers).await {
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
        let connecting = mtls.pool.connecting(&key);
        let _turn = connecting.lock().await;
        match mtls.pool.checkout(&key) {
            Some(lease) => lease,
            None => connect(mtls, pod, watch, key, limits).await?,
        }
    };
    connect_stream(lease, request()?, early, &mtls.buffers).await
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
    let mut sender = lease.sender().ready().await?;
    let (response, mut send) = sender.send_request(request, false)?;
    if !early.is_empty() {
        // Within the stream's initial window, so h2 sends it with the
        // request rather than holding it for capacity.
        send.send_data(early.clone(), false)?;
    }
    let response = response.await?;
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
