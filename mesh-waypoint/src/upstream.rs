//! Where requests leave: to an endpoint pod's HBONE port (podIP:15008,
//! `:authority` = podIP:targetPort) with the waypoint's own identity,
//! pinning the identity the view expects there; an endpoint outside the
//! mesh gets plain TCP. HTTP connections are pooled per endpoint and
//! identity (HTTP/1.1: idle connections kept for reuse; HTTP/2: one
//! multiplexed connection), idle ones let go after 30 s and the whole pool
//! capped, each inside its own tunnel, and the tunnels
//! share pooled HBONE connections (`mesh_hbone::client`).
use std::{
    collections::HashMap,
    io,
    net::SocketAddr,
    pin::Pin,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    task::{Context, Poll},
    time::{Duration, Instant},
};

use bytes::Bytes;
use http::{Request, Response};
use hyper::{
    body::{Body, Frame, Incoming, SizeHint},
    client::conn::{http1, http2},
};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use mesh_hbone::{
    client::{Client, Dial, Origin, Tunnel},
    io::H2Io,
};
use mesh_identity::{Identity, tls::CertWatch};
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::TcpStream,
};
use tracing::debug;

use crate::{body::RequestBody, protocol::Protocol};

/// Idle HTTP/1.1 connections kept per endpoint; more are closed.
const MAX_IDLE_PER_ENDPOINT: usize = 64;
/// HTTP connections pooled at once, both kinds together: the keys are
/// (endpoint, identity) and a workload target's port is the client's
/// choice, so without a cap clients could make the waypoint hold one
/// connection per port they name. Past it, the least recently used
/// HTTP/2 connection is let go, and an HTTP/1.1 one is not kept.
const MAX_POOLED: usize = 1024;
/// An idle HTTP/1.1 connection older than this is not reused (servers
/// commonly close theirs after 60 s or more; reusing one just as it closes
/// fails the request). An HTTP/2 connection no request has used for this
/// long is let go too (its open streams finish on it).
const IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// HTTP/2 keepalive to endpoints: a dead peer is noticed within this and
/// the timeout below.
const H2_KEEPALIVE: Duration = Duration::from_secs(10);
const H2_KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(5);

/// Dials from the waypoint's own network namespace: it is a pod like any
/// other, so its connections need no socket factory.
pub struct DirectDial;

impl Dial for DirectDial {
    fn dial(
        &self,
        to: SocketAddr,
        timeout: Duration,
    ) -> Pin<Box<dyn std::future::Future<Output = io::Result<TcpStream>> + Send + '_>> {
        Box::pin(async move {
            let tcp = tokio::time::timeout(timeout, TcpStream::connect(to))
                .await
                .map_err(|_| {
                    io::Error::new(
                        io::ErrorKind::TimedOut,
                        format!("no answer within {}s", timeout.as_secs_f32()),
                    )
                })??;
            // Requests and responses are small writes each waiting on the
            // other side's answer: with Nagle, one in flight holds the next
            // until the peer's delayed ACK (40 ms).
            let _ = tcp.set_nodelay(true);
            Ok(tcp)
        })
    }
}

/// The waypoint as the origin of tunnels.
pub struct Own {
    pub namespace: String,
    pub name: String,
    pub identity: Identity,
    pub cert: CertWatch,
    pub dial: Arc<dyn Dial>,
}

/// An upstream request body: the client's, counted as it passes, or a
/// copy of a body kept for retries and mirrors (`body`), counted once
/// when it was read.
pub struct CountedBody {
    inner: RequestBody,
    bytes: Option<Arc<AtomicU64>>,
}

impl CountedBody {
    /// The client's body (as it arrives, or what was read of it then the
    /// rest), its bytes added to `bytes` as they pass.
    pub fn new(inner: impl Into<RequestBody>, bytes: Arc<AtomicU64>) -> Self {
        Self {
            inner: inner.into(),
            bytes: Some(bytes),
        }
    }

    /// A copy of a kept body, not counted again.
    pub fn copy(inner: RequestBody) -> Self {
        Self { inner, bytes: None }
    }
}

impl Body for CountedBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &polled
            && let Some(data) = frame.data_ref()
            && let Some(bytes) = &self.bytes
        {
            bytes.fetch_add(data.len() as u64, Ordering::Relaxed);
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A connection to an endpoint: a tunnel, or plain TCP outside the mesh.
pub enum UpstreamIo {
    Tunnel(Box<H2Io<Tunnel>>),
    Plain(TcpStream),
}

impl AsyncRead for UpstreamIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            UpstreamIo::Tunnel(t) => Pin::new(t.as_mut()).poll_read(cx, buf),
            UpstreamIo::Plain(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for UpstreamIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            UpstreamIo::Tunnel(t) => Pin::new(t.as_mut()).poll_write(cx, buf),
            UpstreamIo::Plain(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            UpstreamIo::Tunnel(t) => Pin::new(t.as_mut()).poll_flush(cx),
            UpstreamIo::Plain(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            UpstreamIo::Tunnel(t) => Pin::new(t.as_mut()).poll_shutdown(cx),
            UpstreamIo::Plain(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}

/// Why a request did not get a response from its endpoint.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    /// Nothing was sent: the endpoint could not be reached (another one
    /// may be tried).
    #[error("connecting to {addr}: {reason}")]
    Connect { addr: SocketAddr, reason: String },
    /// The request was sent (at least in part) and the endpoint reset or
    /// closed it before a response.
    #[error("{addr} reset the request: {source}")]
    Reset {
        addr: SocketAddr,
        source: hyper::Error,
    },
}

/// A request that got no response.
pub enum Failed {
    /// Nothing was sent: the endpoint could not be reached. The request
    /// comes back, for another endpoint.
    Connect {
        error: UpstreamError,
        request: Box<Request<CountedBody>>,
    },
    /// Sent (at least in part), and reset before a response.
    Reset(UpstreamError),
}

impl Failed {
    fn unsent(error: UpstreamError, request: Request<CountedBody>) -> Self {
        Self::Connect {
            error,
            request: Box::new(request),
        }
    }

    fn sent(error: UpstreamError) -> Self {
        Self::Reset(error)
    }
}

/// Pooled HTTP connections are per endpoint and per identity proven there.
type Key = (SocketAddr, Option<Identity>);

struct IdleH1 {
    since: Instant,
    sender: http1::SendRequest<CountedBody>,
    /// Requests it has carried.
    used: u32,
    /// How long it may wait idle for the next.
    idle: Duration,
}

/// A pooled HTTP/2 connection and when a request last took it.
struct PooledH2 {
    last_used: Instant,
    sender: http2::SendRequest<CountedBody>,
    /// Requests it has carried.
    streams: u32,
    idle: Duration,
}

/// Whether a connection last used at `last_used` has been idle `idle`.
fn expired_after(last_used: Instant, now: Instant, idle: Duration) -> bool {
    now.saturating_duration_since(last_used) >= idle
}

/// How the connections a request goes over are kept, as the destination
/// Service's DestinationRule says (`connectionPool`); by default the
/// waypoint's own.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ConnectionSettings {
    /// A new connection (TCP, and for a tunnel TLS and HTTP/2 too) must be
    /// made within this (`tcp.connectTimeout`), and within the waypoint's
    /// own connect timeout whatever this says.
    pub connect_timeout: Option<Duration>,
    /// A connection carries at most this many requests
    /// (`http.maxRequestsPerConnection`).
    pub max_requests_per_connection: Option<std::num::NonZeroU32>,
    /// A connection idle this long is not used again (`http.idleTimeout`;
    /// 30 s by default).
    pub idle_timeout: Option<Duration>,
}

impl ConnectionSettings {
    fn idle(&self) -> Duration {
        self.idle_timeout.unwrap_or(IDLE_TIMEOUT)
    }

    /// Whether a connection that has carried `used` requests takes another.
    fn reusable(&self, used: u32) -> bool {
        self.max_requests_per_connection
            .is_none_or(|max| used < max.get())
    }
}

/// Which HTTP/2 connections to let go, least recently used first, so that
/// one more fits under `cap` beside `others` pooled HTTP/1.1 connections.
fn to_evict<K: Clone>(
    last_used: impl Iterator<Item = (K, Instant)>,
    others: usize,
    cap: usize,
) -> Vec<K> {
    let mut by_age: Vec<(K, Instant)> = last_used.collect();
    let over = (by_age.len() + others + 1).saturating_sub(cap);
    by_age.sort_by_key(|(_, t)| *t);
    by_age.into_iter().take(over).map(|(k, _)| k).collect()
}

/// The upstream side of the waypoint.
pub struct Upstream {
    hbone: Client,
    own: Own,
    key: String,
    connect_timeout: Duration,
    h1_idle: Mutex<HashMap<Key, Vec<IdleH1>>>,
    h2: Mutex<HashMap<Key, PooledH2>>,
    /// Single flight per endpoint for new HTTP/2 connections.
    h2_connecting: Mutex<HashMap<Key, Arc<tokio::sync::Mutex<()>>>>,
}

impl Upstream {
    pub fn new(hbone: Client, own: Own, connect_timeout: Duration) -> Self {
        Self {
            key: format!("{}/{}", own.namespace, own.name),
            hbone,
            own,
            connect_timeout,
            h1_idle: Mutex::default(),
            h2: Mutex::default(),
            h2_connecting: Mutex::default(),
        }
    }

    pub fn hbone(&self) -> &Client {
        &self.hbone
    }

    /// A fresh connection to `addr`: a tunnel when `expected` says the
    /// endpoint is in the mesh, else plain TCP. `src` is whom the tunnel
    /// says it is for (`forwarded`). Plain TCP is only ever reached for a
    /// Service endpoint outside the mesh (as Istio's waypoint does: it has
    /// no identity to pin): `target` refuses unenrolled pods as workload
    /// destinations, and never lists a waypoint's pod or this process.
    pub async fn open(
        &self,
        addr: SocketAddr,
        expected: Option<&Identity>,
        src: SocketAddr,
    ) -> Result<UpstreamIo, UpstreamError> {
        let failed = |reason: String| UpstreamError::Connect { addr, reason };
        match expected {
            Some(identity) => {
                let origin = Origin {
                    key: &self.key,
                    namespace: &self.own.namespace,
                    name: &self.own.name,
                    identity: &self.own.identity,
                    cert: Some(&self.own.cert),
                    dial: self.own.dial.as_ref(),
                };
                let tunnel = self
                    .hbone
                    .open(&origin, src, addr, identity.clone(), &Bytes::new())
                    .await
                    .map_err(|e| failed(e.to_string()))?;
                Ok(UpstreamIo::Tunnel(Box::new(H2Io::new(tunnel))))
            }
            None => {
                let tcp = self
                    .own
                    .dial
                    .dial(addr, self.connect_timeout)
                    .await
                    .map_err(|e| failed(e.to_string()))?;
                let _ = tcp.set_nodelay(true);
                Ok(UpstreamIo::Plain(tcp))
            }
        }
    }

    /// Sends `request` to `addr` over a pooled or new connection of
    /// `protocol` (HTTP/1.1 or HTTP/2). A pooled connection that turns out
    /// closed before the request went out is replaced, once.
    pub async fn send(
        self: &Arc<Self>,
        addr: SocketAddr,
        expected: Option<Identity>,
        protocol: Protocol,
        src: SocketAddr,
        request: Request<CountedBody>,
    ) -> Result<Response<Incoming>, Failed> {
        self.send_with(
            addr,
            expected,
            protocol,
            src,
            request,
            ConnectionSettings::default(),
        )
        .await
    }

    /// `send`, over connections kept as `settings` say.
    pub async fn send_with(
        self: &Arc<Self>,
        addr: SocketAddr,
        expected: Option<Identity>,
        protocol: Protocol,
        src: SocketAddr,
        request: Request<CountedBody>,
        settings: ConnectionSettings,
    ) -> Result<Response<Incoming>, Failed> {
        let key = (addr, expected);
        match protocol {
            Protocol::Http2 => self.send_h2(key, src, request, &settings).await,
            _ => self.send_h1(key, src, request, &settings).await,
        }
    }

    /// A new connection to `addr` within `settings`' connect timeout.
    async fn open_within(
        &self,
        addr: SocketAddr,
        expected: Option<&Identity>,
        src: SocketAddr,
        settings: &ConnectionSettings,
    ) -> Result<UpstreamIo, UpstreamError> {
        let Some(limit) = settings.connect_timeout else {
            return self.open(addr, expected, src).await;
        };
        tokio::time::timeout(limit, self.open(addr, expected, src))
            .await
            .unwrap_or_else(|_| {
                Err(UpstreamError::Connect {
                    addr,
                    reason: format!(
                        "no connection within {}s (the DestinationRule's connectTimeout)",
                        limit.as_secs_f32()
                    ),
                })
            })
    }

    /// An idle connection to `key` and the requests it has carried.
    fn checkout_h1(
        &self,
        key: &Key,
        settings: &ConnectionSettings,
    ) -> Option<(http1::SendRequest<CountedBody>, u32)> {
        let mut idle = self.h1_idle.lock().unwrap();
        let list = idle.get_mut(key)?;
        while let Some(c) = list.pop() {
            if c.since.elapsed() < c.idle.min(settings.idle())
                && c.sender.is_ready()
                && settings.reusable(c.used)
            {
                return Some((c.sender, c.used));
            }
        }
        None
    }

    /// Keeps the connection for the next request once its response has
    /// been read to the end (an upgraded or broken one never comes back,
    /// nor one that has carried all the requests it may).
    fn checkin_h1(
        self: &Arc<Self>,
        key: Key,
        mut sender: http1::SendRequest<CountedBody>,
        used: u32,
        settings: &ConnectionSettings,
    ) {
        if !settings.reusable(used) {
            return;
        }
        let idle_for = settings.idle();
        let this = Arc::downgrade(self);
        tokio::spawn(async move {
            if sender.ready().await.is_err() {
                return;
            }
            let Some(this) = this.upgrade() else { return };
            let mut idle = this.h1_idle.lock().unwrap();
            let pooled = idle.values().map(Vec::len).sum::<usize>() + this.h2.lock().unwrap().len();
            let list = idle.entry(key).or_default();
            list.retain(|c| c.since.elapsed() < c.idle && !c.sender.is_closed());
            if list.len() < MAX_IDLE_PER_ENDPOINT && pooled < MAX_POOLED {
                list.push(IdleH1 {
                    since: Instant::now(),
                    sender,
                    used,
                    idle: idle_for,
                });
            }
        });
    }

    async fn connect_h1(
        &self,
        key: &Key,
        src: SocketAddr,
        settings: &ConnectionSettings,
    ) -> Result<http1::SendRequest<CountedBody>, UpstreamError> {
        let addr = key.0;
        let io = self
            .open_within(addr, key.1.as_ref(), src, settings)
            .await?;
        let (sender, conn) = http1::Builder::new()
            .handshake(TokioIo::new(io))
            .await
            .map_err(|e| UpstreamError::Connect {
                addr,
                reason: e.to_string(),
            })?;
        tokio::spawn(async move {
            if let Err(e) = conn.with_upgrades().await {
                debug!(%addr, error = %e, "upstream HTTP/1.1 connection ended");
            }
        });
        Ok(sender)
    }

    async fn send_h1(
        self: &Arc<Self>,
        key: Key,
        src: SocketAddr,
        request: Request<CountedBody>,
        settings: &ConnectionSettings,
    ) -> Result<Response<Incoming>, Failed> {
        let addr = key.0;
        let mut request = request;
        if let Some((mut sender, used)) = self.checkout_h1(&key, settings) {
            match sender.try_send_request(request).await {
                Ok(response) => {
                    self.checkin_h1(key, sender, used.saturating_add(1), settings);
                    return Ok(response);
                }
                Err(mut e) => match e.take_message() {
                    // Not sent: the pooled connection had closed.
                    Some(back) => request = back,
                    None => {
                        return Err(Failed::sent(UpstreamError::Reset {
                            addr,
                            source: e.into_error(),
                        }));
                    }
                },
            }
        }
        let mut sender = match self.connect_h1(&key, src, settings).await {
            Ok(s) => s,
            Err(e) => return Err(Failed::unsent(e, request)),
        };
        let response = sender
            .send_request(request)
            .await
            .map_err(|source| Failed::sent(UpstreamError::Reset { addr, source }))?;
        self.checkin_h1(key, sender, 1, settings);
        Ok(response)
    }

    async fn h2_sender(
        &self,
        key: &Key,
        src: SocketAddr,
        settings: &ConnectionSettings,
    ) -> Result<http2::SendRequest<CountedBody>, UpstreamError> {
        let pooled = |h2: &Mutex<HashMap<Key, PooledH2>>| {
            let mut h2 = h2.lock().unwrap();
            let now = Instant::now();
            let p = h2.get_mut(key).filter(|p| {
                !p.sender.is_closed()
                    && !expired_after(p.last_used, now, p.idle.min(settings.idle()))
            })?;
            p.last_used = now;
            p.streams = p.streams.saturating_add(1);
            let (sender, spent) = (p.sender.clone(), !settings.reusable(p.streams));
            if spent {
                // Its open streams finish on it; the next request makes
                // a new one.
                h2.remove(key);
            }
            Some(sender)
        };
        if let Some(s) = pooled(&self.h2) {
            return Ok(s);
        }
        let turn = self
            .h2_connecting
            .lock()
            .unwrap()
            .entry(key.clone())
            .or_default()
            .clone();
        let _turn = turn.lock().await;
        if let Some(s) = pooled(&self.h2) {
            return Ok(s);
        }
        let addr = key.0;
        let io = self
            .open_within(addr, key.1.as_ref(), src, settings)
            .await?;
        let (sender, conn) = http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .keep_alive_interval(H2_KEEPALIVE)
            .keep_alive_timeout(H2_KEEPALIVE_TIMEOUT)
            .handshake(TokioIo::new(io))
            .await
            .map_err(|e| UpstreamError::Connect {
                addr,
                reason: e.to_string(),
            })?;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                debug!(%addr, error = %e, "upstream HTTP/2 connection ended");
            }
        });
        if settings.reusable(1) {
            self.pool_h2(key.clone(), sender.clone(), settings.idle());
        }
        Ok(sender)
    }

    /// Keeps `sender` for the next requests to `key`, letting the least
    /// recently used HTTP/2 connections go when the pool is full.
    fn pool_h2(&self, key: Key, sender: http2::SendRequest<CountedBody>, idle: Duration) {
        let h1 = self.h1_idle.lock().unwrap().values().map(Vec::len).sum();
        let mut h2 = self.h2.lock().unwrap();
        h2.remove(&key);
        let evict = to_evict(
            h2.iter().map(|(k, p)| (k.clone(), p.last_used)),
            h1,
            MAX_POOLED,
        );
        if !evict.is_empty() {
            debug!(
                evicted = evict.len(),
                limit = MAX_POOLED,
                "upstream pool full: least recently used HTTP/2 connections let go"
            );
        }
        for k in &evict {
            h2.remove(k);
        }
        if h2.len() + h1 < MAX_POOLED {
            h2.insert(
                key,
                PooledH2 {
                    last_used: Instant::now(),
                    sender,
                    streams: 1,
                    idle,
                },
            );
        }
    }

    async fn send_h2(
        &self,
        key: Key,
        src: SocketAddr,
        request: Request<CountedBody>,
        settings: &ConnectionSettings,
    ) -> Result<Response<Incoming>, Failed> {
        let addr = key.0;
        let mut request = request;
        for fresh in [false, true] {
            if fresh {
                // The pooled connection is gone: forget it, make another.
                self.h2.lock().unwrap().remove(&key);
            }
            let mut sender = match self.h2_sender(&key, src, settings).await {
                Ok(s) => s,
                Err(e) => return Err(Failed::unsent(e, request)),
            };
            if sender.ready().await.is_err() {
                continue;
            }
            match sender.try_send_request(request).await {
                Ok(response) => return Ok(response),
                Err(mut e) => match e.take_message() {
                    Some(back) => request = back,
                    None => {
                        return Err(Failed::sent(UpstreamError::Reset {
                            addr,
                            source: e.into_error(),
                        }));
                    }
                },
            }
        }
        Err(Failed::unsent(
            UpstreamError::Connect {
                addr,
                reason: "the HTTP/2 connection closed before the request could be sent".into(),
            },
            request,
        ))
    }

    /// Drops idle and closed connections (HTTP and HBONE).
    pub fn sweep(&self) {
        self.h1_idle.lock().unwrap().retain(|_, list| {
            list.retain(|c| c.since.elapsed() < c.idle && !c.sender.is_closed());
            !list.is_empty()
        });
        let now = Instant::now();
        self.h2
            .lock()
            .unwrap()
            .retain(|_, p| !p.sender.is_closed() && !expired_after(p.last_used, now, p.idle));
        self.h2_connecting
            .lock()
            .unwrap()
            .retain(|_, turn| Arc::strong_count(turn) > 1);
        self.hbone.pool.sweep();
    }

    /// Closes every idle connection: for the drain.
    pub fn close_idle(&self) {
        self.h1_idle.lock().unwrap().clear();
        let now = Instant::now();
        self.h2
            .lock()
            .unwrap()
            .retain(|_, p| !p.sender.is_closed() && !expired_after(p.last_used, now, p.idle));
        self.hbone.pool.close_idle();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_http2_connection_unused_for_the_idle_timeout_expires() {
        let now = Instant::now() + IDLE_TIMEOUT * 2;
        let expired = |last_used| expired_after(last_used, now, IDLE_TIMEOUT);
        assert!(expired(now - IDLE_TIMEOUT));
        assert!(!expired(now - IDLE_TIMEOUT + Duration::from_millis(1)));
        // A clock read before the connection's last use is not idleness.
        assert!(!expired(now + Duration::from_secs(1)));
    }

    #[test]
    fn connection_settings_bound_reuse_and_idleness() {
        let default = ConnectionSettings::default();
        assert!(default.reusable(u32::MAX - 1));
        assert_eq!(default.idle(), IDLE_TIMEOUT);
        let one = ConnectionSettings {
            max_requests_per_connection: std::num::NonZeroU32::new(2),
            idle_timeout: Some(Duration::from_millis(200)),
            ..default
        };
        assert!(one.reusable(1) && !one.reusable(2));
        let now = Instant::now() + Duration::from_secs(1);
        let expired = |ago| expired_after(now - Duration::from_millis(ago), now, one.idle());
        assert!(expired(200) && !expired(199));
    }

    #[test]
    fn a_full_pool_lets_the_least_recently_used_go() {
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        let pooled = [("c", at(3)), ("a", at(1)), ("b", at(2))];
        // Room for one more: nothing goes.
        assert!(to_evict(pooled.into_iter(), 0, 4).is_empty());
        // Full: the oldest goes.
        assert_eq!(to_evict(pooled.into_iter(), 0, 3), ["a"]);
        // HTTP/1.1 connections count too.
        assert_eq!(to_evict(pooled.into_iter(), 1, 3), ["a", "b"]);
        // More HTTP/1.1 than the cap: every HTTP/2 one goes, and the new
        // one is not kept (the caller checks).
        assert_eq!(to_evict(pooled.into_iter(), 5, 3), ["a", "b", "c"]);
    }
}
