//! The agent's HTTP endpoints, on three listeners with different audiences:
//! - metrics (`:15020/metrics`) for Prometheus;
//! - status (`:15021`): `/healthz/ready` for the kubelet, and the read-only
//!   `/status` and `/flows` that `mesh status` / `mesh inspect` read (also
//!   through the API server's pod proxy);
//! - admin (`127.0.0.1:15000`): the config dump, the datapath, and the log
//!   level, which only someone on the node may change.
pub mod config_dump;
pub mod logging;

use std::{net::SocketAddr, sync::Arc};

use anyhow::Context;
use axum::{
    Json, Router,
    extract::{Query, State},
    http::{StatusCode, header},
    response::{IntoResponse, Response},
    routing::get,
};
use tokio::net::TcpListener;
use tracing::{info, warn};

use crate::{config::TelemetrySettings, telemetry::health::NodeHealth};
pub use logging::LogControl;

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

    /// Serves until the process ends.
    pub fn spawn(self, health: Arc<NodeHealth>, log: LogControl) {
        let app = AppState { health, log };
        let metrics_router = Router::new()
            .route("/metrics", get(metrics))
            .with_state(app.clone());
        let status_router = Router::new()
            .route("/healthz/ready", get(ready))
            .route("/status", get(status))
            .route("/flows", get(flows))
            .with_state(app.clone());
        let admin_router = Router::new()
            .route("/", get(index))
            .route("/status", get(status))
            .route("/flows", get(flows))
            .route("/config_dump", get(config_dump))
            .route("/datapath", get(datapath))
            .route("/logging", get(get_logging).post(set_logging))
            .with_state(app);
        for (name, listener, router) in [
            ("metrics", self.metrics, metrics_router),
            ("status", self.status, status_router),
            ("admin", self.admin, admin_router),
        ] {
            let addr = listener.local_addr().ok();
            info!(endpoint = name, addr = ?addr, "serving");
            tokio::spawn(async move {
                if let Err(e) = axum::serve(listener, router).await {
                    warn!(endpoint = name, error = %e, "endpoint stopped");
                }
            });
        }
    }
}

#[derive(Clone)]
struct AppState {
    health: Arc<NodeHealth>,
    log: LogControl,
}

async fn metrics(State(s): State<AppState>) -> Response {
    match s.health.state.telemetry.encode() {
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
    let health = s.health.clone();
    // Counting map entries walks kernel maps: off the proxy's thread.
    match tokio::task::spawn_blocking(move || health.status()).await {
        Ok(st) => Json(st).into_response(),
        Err(_) => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    }
}

async fn flows(State(s): State<AppState>) -> Response {
    Json(s.health.state.telemetry.flows.snapshot()).into_response()
}

async fn config_dump(State(s): State<AppState>) -> Response {
    Json(config_dump::dump(&s.health)).into_response()
}

async fn datapath(State(s): State<AppState>) -> Response {
    let health = s.health.clone();
    match tokio::task::spawn_blocking(move || health.state.datapath.info(&health.cgroup_root)).await
    {
        Ok(info) => Json(info).into_response(),
        Err(_) => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    }
}

async fn index() -> &'static str {
    "mesh agent admin API\n\
     GET  /status        health summary (as `mesh status` shows it)\n\
     GET  /config_dump   workloads, services, policies, certificates (no keys)\n\
     GET  /datapath      programs, links, map fill levels, kernel counters\n\
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
