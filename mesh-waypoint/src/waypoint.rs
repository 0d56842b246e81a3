//! The waypoint's shared state and its HBONE listener: what every stream
//! and request consults (the view, the balancer, the upstream pools, the
//! counters), the connection cap, and the drain.
use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use mesh_discovery::{Published, view::MeshView};
use mesh_hbone::{
    buffers::BufferBudget,
    client::{Client, Dial, Timeouts},
    relay,
    server::{self, Acceptor},
};
use mesh_identity::{
    Identity,
    tls::{self, CertWatch, TrustBundle},
};
use tokio::{
    net::TcpListener,
    sync::{Semaphore, watch},
};
use tracing::{Instrument, debug_span, info, warn};

use crate::{
    balancer::Balancer,
    binding::Gateway,
    target::OwnAddrs,
    telemetry::{Refusal, Telemetry},
    upstream::{Own, Upstream},
};

/// Deadlines and caps, as the node agent's (`AgentConfig.limits`).
#[derive(Debug, Clone, serde::Serialize)]
pub struct Limits {
    /// TLS, HTTP/2 preface and first CONNECT of an HBONE connection.
    pub handshake_timeout: Duration,
    /// Each dial to an endpoint (TCP and, for tunnels, TLS and HTTP/2 each).
    pub connect_timeout: Duration,
    /// From sending a request to its response head; past it, 504.
    pub response_timeout: Duration,
    /// An HTTP/1.1 request head must arrive within this.
    pub header_read_timeout: Duration,
    /// How long the first bytes are waited for when the protocol is not
    /// declared.
    pub detect_timeout: Duration,
    /// HBONE connections held at once; past it, new ones are reset.
    pub max_connections: usize,
    /// Requests one downstream HTTP/2 connection may have open at once.
    pub max_concurrent_streams: u32,
    /// On SIGTERM, how long open connections may finish.
    pub drain_grace: Duration,
    /// What stuck tunnel streams may hold together.
    pub buffer_budget_bytes: usize,
    /// Requests in flight to endpoints at once, over every connection;
    /// past it, 503 `UO` (Envoy's circuit breaker `max_requests`).
    pub max_requests: usize,
    /// A downstream HTTP connection with no request open this long is
    /// closed (gracefully: GOAWAY on HTTP/2).
    pub http_idle_timeout: Duration,
    /// An upgraded connection (WebSocket) with no byte either way this
    /// long is closed (`SI`).
    pub stream_idle_timeout: Duration,
    /// A relayed TCP stream with no byte either way this long is closed.
    pub tcp_idle_timeout: Duration,
}

/// Envoy's default circuit breaker `max_requests`.
pub const MAX_REQUESTS: usize = 1024;
/// As the HBONE listener's idle close: the connection below an idle HTTP
/// connection is an open HBONE stream, which that close never sees.
pub const HTTP_IDLE_TIMEOUT: Duration = Duration::from_secs(300);
/// Envoy's `stream_idle_timeout` default, which covers upgraded streams.
pub const STREAM_IDLE_TIMEOUT: Duration = Duration::from_secs(300);
/// Envoy's TCP proxy `idle_timeout` default, what Istio's waypoint uses.
pub const TCP_IDLE_TIMEOUT: Duration = Duration::from_secs(3600);

impl Default for Limits {
    fn default() -> Self {
        let agent = mesh_config::LimitSettings::default();
        Self {
            handshake_timeout: agent.handshake_timeout,
            connect_timeout: agent.connect_timeout,
            response_timeout: Duration::from_secs(60),
            header_read_timeout: Duration::from_secs(30),
            detect_timeout: crate::protocol::DETECT_TIMEOUT,
            max_connections: agent.max_connections,
            max_concurrent_streams: 1000,
            drain_grace: agent.drain_grace,
            buffer_budget_bytes: agent.buffer_budget_bytes,
            max_requests: MAX_REQUESTS,
            http_idle_timeout: HTTP_IDLE_TIMEOUT,
            stream_idle_timeout: STREAM_IDLE_TIMEOUT,
            tcp_idle_timeout: TCP_IDLE_TIMEOUT,
        }
    }
}

/// What a waypoint is made of; the binary builds it from its flags, tests
/// from a test CA and a parsed node file.
pub struct Parts {
    pub gateway: Gateway,
    /// The pod it runs as (`--pod-namespace`/`--pod-name`): names its
    /// tunnels' origin.
    pub pod_namespace: String,
    pub pod_name: String,
    /// The addresses its listeners are bound to (HBONE, admin): never
    /// destinations.
    pub listens: Vec<SocketAddr>,
    pub identity: Identity,
    pub cert: CertWatch,
    pub bundle: TrustBundle,
    pub views: watch::Receiver<Published>,
    /// How TCP connections to endpoints (and their HBONE ports) are made.
    pub dial: Arc<dyn Dial>,
    pub limits: Limits,
    /// Metrics, access log and spans (`Telemetry::new`).
    pub telemetry: Telemetry,
    /// Remote JWKS of RequestAuthentications (`jwks::Jwks::new`).
    pub jwks: crate::jwks::Jwks,
}

pub struct Waypoint {
    pub gateway: Gateway,
    pub identity: Identity,
    pub limits: Limits,
    pub cert: CertWatch,
    pub balancer: Balancer,
    pub telemetry: Telemetry,
    pub upstream: Arc<Upstream>,
    /// Its own pod and listeners, refused as destinations.
    pub own: OwnAddrs,
    views: watch::Receiver<Published>,
    acceptor: Arc<Acceptor>,
    draining: watch::Sender<bool>,
    connections: Arc<Semaphore>,
    /// Requests in flight to endpoints (`Limits::max_requests`).
    pub requests: Arc<Semaphore>,
    /// Mirrored copies in flight (`mirror::MAX_IN_FLIGHT`).
    pub mirrors: crate::mirror::Limiter,
    /// HTTPLocalRateLimitPolicies' limiters, kept across views.
    pub rate_limits: crate::ratelimit::RateLimits,
    /// Retry budgets of the destination Services, kept across views.
    pub retry_budgets: crate::retry_budget::RetryBudgets,
    /// The keys of RequestAuthentications' `jwksUri`s, kept fresh.
    pub jwks: crate::jwks::Jwks,
    /// DestinationRules' per-Service-port state, kept across views.
    pub destinations: crate::destination::Destinations,
    /// CUSTOM authorization's providers and connections to them.
    pub ext_authz: crate::ext_authz::ExtAuthz,
    last_log: Mutex<Option<Instant>>,
}

/// Floods (a slowloris, a reset storm) are logged at most this often.
const LOG_EVERY: Duration = Duration::from_secs(1);
/// After an accept error such as EMFILE, wait before accepting again.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

impl Waypoint {
    pub fn new(parts: Parts) -> Result<Arc<Self>, rustls::Error> {
        let Parts {
            gateway,
            pod_namespace,
            pod_name,
            listens,
            identity,
            cert,
            bundle,
            views,
            dial,
            limits,
            telemetry,
            jwks,
        } = parts;
        let acceptor = Arc::new(Acceptor {
            name: format!("waypoint {gateway}"),
            tls: Arc::new(tls::server_config(&bundle, cert.clone())?),
            cert: Some(cert.clone()),
            trust_domain: bundle.trust_domain.clone(),
            handshake_timeout: limits.handshake_timeout,
        });
        let client = Client {
            bundle,
            pool: Default::default(),
            buffers: BufferBudget::new(limits.buffer_budget_bytes),
            timeouts: Timeouts {
                connect: limits.connect_timeout,
                handshake: limits.handshake_timeout,
            },
        };
        let own_addrs = OwnAddrs {
            pod: Some((pod_namespace.clone(), pod_name.clone())),
            listens,
        };
        let own = Own {
            namespace: pod_namespace,
            name: pod_name,
            identity: identity.clone(),
            cert: cert.clone(),
            dial,
        };
        Ok(Arc::new(Self {
            upstream: Arc::new(Upstream::new(client, own, limits.connect_timeout)),
            connections: Arc::new(Semaphore::new(limits.max_connections)),
            requests: Arc::new(Semaphore::new(limits.max_requests)),
            mirrors: crate::mirror::Limiter::new(crate::mirror::MAX_IN_FLIGHT),
            rate_limits: Default::default(),
            retry_budgets: Default::default(),
            jwks,
            destinations: Default::default(),
            ext_authz: Default::default(),
            own: own_addrs,
            gateway,
            identity,
            limits,
            cert,
            balancer: Balancer::default(),
            telemetry,
            views,
            acceptor,
            draining: watch::Sender::new(false),
            last_log: Mutex::new(None),
        }))
    }

    /// The view of the moment.
    pub fn view(&self) -> Arc<MeshView> {
        self.views.borrow().view.clone()
    }

    /// The views as discovery publishes them.
    pub fn views(&self) -> watch::Receiver<Published> {
        self.views.clone()
    }

    /// Whether discovery has seen the whole cluster once.
    pub fn synced(&self) -> bool {
        self.views.borrow().synced
    }

    pub fn has_certificate(&self) -> bool {
        self.cert.borrow().is_some()
    }

    pub fn draining(&self) -> watch::Receiver<bool> {
        self.draining.subscribe()
    }

    pub fn is_draining(&self) -> bool {
        *self.draining.borrow()
    }

    /// Stops accepting, sends GOAWAY on open connections and lets their
    /// streams finish.
    pub fn drain(&self) {
        self.telemetry.set_ready(false);
        self.draining.send_replace(true);
        self.upstream.close_idle();
    }

    /// HBONE connections open now.
    pub fn open_connections(&self) -> usize {
        self.limits.max_connections - self.connections.available_permits()
    }

    /// Whether a line may be logged now for something that comes in floods.
    pub fn should_log(&self) -> bool {
        let mut last = self.last_log.lock().unwrap();
        let now = Instant::now();
        if last.is_none_or(|t| now.duration_since(t) >= LOG_EVERY) {
            *last = Some(now);
            true
        } else {
            false
        }
    }

    /// Accepts HBONE connections until the drain starts; each is served
    /// by `mesh_hbone::server` with this waypoint as its handler.
    pub async fn serve(self: &Arc<Self>, listener: TcpListener) {
        let mut draining = self.draining();
        info!(addr = ?listener.local_addr().ok(), gateway = %self.gateway, "serving HBONE");
        tokio::spawn(crate::jwks::run(self.clone()));
        loop {
            let accepted = tokio::select! {
                accepted = listener.accept() => accepted,
                () = crate::http::drained(&mut draining) => return,
            };
            let (tcp, peer) = match accepted {
                Ok(x) => x,
                Err(e) => {
                    if self.should_log() {
                        warn!(error = %e, "HBONE accept failed");
                    }
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                    continue;
                }
            };
            let Ok(place) = self.connections.clone().try_acquire_owned() else {
                self.telemetry.refused(Refusal::ConnectionLimit);
                if self.should_log() {
                    warn!(src = %peer, limit = self.limits.max_connections, "HBONE connection refused: the waypoint holds its limit of connections");
                }
                relay::reset(tcp);
                continue;
            };
            let connection = server::serve_connection(
                tcp,
                peer,
                self.acceptor.clone(),
                self.clone(),
                self.draining(),
            );
            let span = debug_span!("hbone", src = %peer);
            tokio::spawn(
                async move {
                    let _place = place;
                    connection.await
                }
                .instrument(span),
            );
        }
    }
}
