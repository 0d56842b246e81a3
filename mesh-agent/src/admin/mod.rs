//! The agent's HTTP endpoints, on three listeners with different audiences:
//! - metrics (`:15020/metrics`) for Prometheus;
//! - status (`:15021`): `/healthz/ready` for the kubelet, and the read-only
//!   `/status` and `/flows` that `mesh status` / `mesh inspect` read (also
//!   through the API server's pod proxy);
//! - admin (`127.0.0.1:15000`): the config dump, the datapath, and the log
//!   level, which only someone on the node may change.
//!
//! Each listener answers a bounded number of requests at once, each within
//! a deadline (see `bounded`), and no handler reads the kernel maps: the
//! datapath comes from the health sampler's last reading.
pub mod config_dump;
pub mod logging;

use std::{net::SocketAddr, sync::Arc, time::Duration};

use anyhow::Context;
use axum::{
    Json, Router,
    extract::{Query, Request, State},
    http::{StatusCode, header},
    middleware::{self, Next},
    response::{IntoResponse, Response},
    routing::get,
};
pub use logging::LogControl;
use mesh_config::TelemetrySettings;
use mesh_serve::capped::{CappedListener, ConnectionCap};
use tokio::{net::TcpListener, sync::Semaphore};
use tracing::{info, warn};

use crate::health::NodeHealth;

/// The three listeners, bound before the agent reports ready so a port
/// conflict fails the start with its address.
pub struct Listeners {
    metrics: TcpListener,
    status: TcpListener,
    admin: TcpListener,
}

impl Listeners {
    pub async fn bind(s: &TelemetrySettings) -> anyhow::Result<Self> {
        let bind = |addr: SocketAddr, field: &'static str| async move {
            TcpListener::bind(addr)
                .await
                .with_context(|| format!("AgentConfig.telemetry.{field} {addr}: cannot listen"))
        };
        Ok(Self {
            metrics: bind(s.metrics_addr, "metricsAddr").await?,
            status: bind(s.status_addr, "statusAddr").await?,
            admin: bind(s.admin_addr, "adminAddr").await?,
        })
    }

    /// Serves the three endpoints as tasks of `tasks`, each ending with its
    /// name (the node supervises them).
    pub fn spawn(
        self,
        health: Arc<NodeHealth>,
        log: LogControl,
        tasks: &mut tokio::task::JoinSet<&'static str>,
    ) {
        let app = AppState { health, log };
        let metrics_router = bounded(
            Router::new().route("/metrics", get(metrics)),
            MAX_IN_FLIGHT,
            REQUEST_TIMEOUT,
        )
        .with_state(app.clone());
        // The readiness probe is added after the bound, so it stays outside
        // it: a burst of `/status` reads must not fail the kubelet's probe.
        let status_router = bounded(
            Router::new()
                .route("/status", get(status))
                .route("/flows", get(flows)),
            MAX_IN_FLIGHT,
            REQUEST_TIMEOUT,
        )
        .route("/healthz/ready", get(ready))
        .with_state(app.clone());
        let admin_router = bounded(
            Router::new()
                .route("/", get(index))
                .route("/status", get(status))
                .route("/flows", get(flows))
                .route("/config_dump", get(config_dump))
                .route("/datapath", get(datapath))
                .route("/logging", get(get_logging).post(set_logging)),
            MAX_IN_FLIGHT,
            REQUEST_TIMEOUT,
        )
        .with_state(app);
        for (name, listener, router) in [
            ("metrics", self.metrics, metrics_router),
            ("status", self.status, status_router),
            ("admin", self.admin, admin_router),
        ] {
            let addr = listener.local_addr().ok();
            info!(endpoint = name, addr = ?addr, "serving");
            tasks.spawn(async move {
                let listener =
                    CappedListener::new(listener, ConnectionCap::new(name, MAX_CONNECTIONS));
                if let Err(e) = axum::serve(listener, router).await {
                    warn!(endpoint = name, error = %e, "endpoint stopped");
                }
                name
            });
        }
    }
}

/// Connections one endpoint listener holds at once: scrapers, probes and
/// the CLI keep a handful; past it, new ones are closed (the open ones
/// keep being served), so idle keep-alive connections cannot pile up.
const MAX_CONNECTIONS: usize = 64;

/// Requests one listener serves at once. One more is answered 503 at once
/// rather than queued: work, memory and connections cannot pile up behind
/// a burst of scrapes, and scrapers try again at their next interval.
const MAX_IN_FLIGHT: usize = 4;
/// Longer than any handler needs; a request still unanswered then is
/// dropped with a 503 and frees its place.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// Bounds the routes of `router` together: at most `max` requests at once,
/// each answered within `timeout`. Routes added afterwards are not bounded.
fn bounded<S: Clone + Send + Sync + 'static>(
    router: Router<S>,
    max: usize,
    timeout: Duration,
) -> Router<S> {
    let bound = Bound {
        places: Arc::new(Semaphore::new(max)),
        timeout,
    };
    router.layer(middleware::from_fn_with_state(bound, admit))
}

#[derive(Clone)]
struct Bound {
    places: Arc<Semaphore>,
    timeout: Duration,
}

async fn admit(State(bound): State<Bound>, request: Request, next: Next) -> Response {
    let Ok(_place) = bound.places.try_acquire_owned() else {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            [(header::RETRY_AFTER, "1")],
            "busy: too many requests at once\n",
        )
            .into_response();
    };
    match tokio::time::timeout(bound.timeout, next.run(request)).await {
        Ok(response) => response,
        Err(_) => (StatusCode::SERVICE_UNAVAILABLE, "timed out\n").into_response(),
    }
}

#[derive(Clone)]
struct AppState {
    health: Arc<NodeHealth>,
    log: LogControl,
}

async fn metrics(State(s): State<AppState>) -> Response {
    let health = s.health.clone();
    // The exposition grows with the TCP and flow series, thousands on a
    // busy node: rendered off the proxy's runtime, one thread by default.
    let text = match tokio::task::spawn_blocking(move || health.state.telemetry.encode()).await {
        Ok(text) => text,
        Err(_) => return StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    };
    match text {
        Ok(text) => (
            [(
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            text,
        )
            .into_response(),
        Err(_) => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    }
}

async fn ready(State(s): State<AppState>) -> Response {
    if s.health.state.telemetry.is_ready() {
        (StatusCode::OK, "ready\n").into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready\n").into_response()
    }
}

async fn status(State(s): State<AppState>) -> Response {
    Json(s.health.status()).into_response()
}

async fn flows(State(s): State<AppState>) -> Response {
    Json(s.health.state.telemetry.flows.snapshot()).into_response()
}

async fn config_dump(State(s): State<AppState>) -> Response {
    Json(config_dump::dump(&s.health)).into_response()
}

/// How long `/datapath` waits for a reading that shows the last reconcile
/// (one follows a reconcile within about a second) before it shows the
/// older one.
const FRESH_WAIT: Duration = Duration::from_secs(2);

async fn datapath(State(s): State<AppState>) -> Response {
    // Someone who just enrolled a pod and asks for the maps expects to see
    // it; waiting costs this request alone, and the reading's time is in
    // the answer either way.
    match s.health.datapath_fresh(FRESH_WAIT).await {
        Some(sample) => Json(sample.to_json(std::time::SystemTime::now())).into_response(),
        None => (
            StatusCode::SERVICE_UNAVAILABLE,
            [(header::RETRY_AFTER, "1")],
            "no datapath reading yet\n",
        )
            .into_response(),
    }
}

async fn index() -> &'static str {
    "mesh agent admin API\n\
     GET  /status        health summary (as `mesh status` shows it)\n\
     GET  /config_dump   workloads, services, policies, certificates (no keys)\n\
     GET  /datapath      programs, links, map fill levels, kernel counters (as of sampled_at)\n\
     GET  /flows         kernel flow metric series\n\
     GET  /logging       current log filter\n\
     POST /logging?level=<filter>   e.g. debug, info,mesh::access=off\n"
}

#[derive(serde::Deserialize)]
struct LevelQuery {
    level: Option<String>,
}

async fn get_logging(State(s): State<AppState>) -> Response {
    Json(serde_json::json!({ "level": s.log.current() })).into_response()
}

async fn set_logging(State(s): State<AppState>, Query(q): Query<LevelQuery>) -> Response {
    let Some(level) = q.level else {
        return (
            StatusCode::BAD_REQUEST,
            "missing ?level=<filter>, e.g. ?level=debug or ?level=info,mesh::access=off\n",
        )
            .into_response();
    };
    match s.log.set(&level) {
        Ok(()) => {
            info!(level = %level, "log level changed");
            Json(serde_json::json!({ "level": s.log.current() })).into_response()
        }
        Err(e) => (StatusCode::BAD_REQUEST, format!("level: {e}\n")).into_response(),
    }
}

#[cfg(test)]
mod tests {
    use axum::body::Body;
    use tokio::sync::{mpsc, watch};
    use tower_test::mock::Spawn;

    use super::*;

    async fn get_status(router: &Router, path: &str) -> StatusCode {
        let request = Request::get(path).body(Body::empty()).unwrap();
        // A router is always ready, so a call is all `oneshot` would do.
        match Spawn::new(router.clone()).call(request).await {
            Ok(response) => response.status(),
            Err(never) => match never {},
        }
    }

    /// `/slow` reports each request it starts and answers once released;
    /// `/ready` is added after the bound, as the status listener's probe is.
    fn router(max: usize, timeout: Duration) -> (Router, mpsc::Receiver<()>, watch::Sender<bool>) {
        let (started, starts) = mpsc::channel(16);
        let (release, released) = watch::channel(false);
        let slow = get(move || {
            let started = started.clone();
            let mut released = released.clone();
            async move {
                let _ = started.send(()).await;
                let _ = released.wait_for(|r| *r).await;
                "done"
            }
        });
        let router = bounded(Router::new().route("/slow", slow), max, timeout)
            .route("/ready", get(|| async { "ready" }));
        (router, starts, release)
    }

    #[tokio::test]
    async fn requests_beyond_the_bound_are_refused_at_once_and_the_probe_still_answers() {
        let (router, mut starts, release) = router(2, Duration::from_secs(30));
        let held: Vec<_> = (0..2)
            .map(|_| {
                let router = router.clone();
                tokio::spawn(async move { get_status(&router, "/slow").await })
            })
            .collect();
        for _ in 0..2 {
            starts.recv().await.unwrap();
        }
        // Three more while two are in flight: each refused without waiting.
        for _ in 0..3 {
            let refused =
                tokio::time::timeout(Duration::from_secs(1), get_status(&router, "/slow"));
            assert_eq!(refused.await.unwrap(), StatusCode::SERVICE_UNAVAILABLE);
        }
        assert_eq!(get_status(&router, "/ready").await, StatusCode::OK);
        assert!(
            starts.try_recv().is_err(),
            "a refused request reached its handler"
        );

        release.send_replace(true);
        for h in held {
            assert_eq!(h.await.unwrap(), StatusCode::OK);
        }
        // The places are free again.
        assert_eq!(get_status(&router, "/slow").await, StatusCode::OK);
    }

    #[tokio::test]
    async fn a_request_past_its_deadline_is_answered_and_frees_its_place() {
        let (router, mut starts, _release) = router(1, Duration::from_millis(50));
        for _ in 0..2 {
            let answered =
                tokio::time::timeout(Duration::from_secs(5), get_status(&router, "/slow"));
            assert_eq!(answered.await.unwrap(), StatusCode::SERVICE_UNAVAILABLE);
            // Reached the handler: the first request's place was freed at
            // its deadline, or the second would have been refused as busy.
            starts.try_recv().unwrap();
        }
    }
}
