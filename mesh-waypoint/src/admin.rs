//! The admin listener (`--admin-listen`, 15020): `/ready` for the kubelet
//! (503 until the certificate is issued and discovery has synced, and again
//! once draining), `/metrics` (Prometheus text) and `/config_dump` (what
//! the waypoint serves, as JSON). Bounded: a few requests at once, each
//! within a deadline, and a cap on connections.
use std::{sync::Arc, time::Duration};

use axum::{
    Json, Router,
    extract::{Request, State},
    http::{StatusCode, header},
    middleware::{self, Next},
    response::{IntoResponse, Response},
    routing::get,
};
use mesh_serve::capped::{CappedListener, ConnectionCap};
use serde_json::json;
use tokio::{net::TcpListener, sync::Semaphore};

use crate::{protocol::Declared, target::Target, waypoint::Waypoint};

const MAX_CONNECTIONS: usize = 64;
const MAX_IN_FLIGHT: usize = 4;
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Clone)]
struct AppState {
    wp: Arc<Waypoint>,
    places: Arc<Semaphore>,
}

pub fn router(wp: Arc<Waypoint>) -> Router {
    let state = AppState {
        wp,
        places: Arc::new(Semaphore::new(MAX_IN_FLIGHT)),
    };
    Router::new()
        .route("/metrics", get(metrics))
        .route("/config_dump", get(config_dump))
        .layer(middleware::from_fn_with_state(state.clone(), bounded))
        // Outside the bound: a burst of scrapes must not fail the probe.
        .route("/ready", get(ready))
        .with_state(state)
}

/// Serves the admin endpoints on `listener` until the process ends.
pub async fn serve(listener: TcpListener, wp: Arc<Waypoint>) -> std::io::Result<()> {
    let listener = CappedListener::new(listener, ConnectionCap::new("admin", MAX_CONNECTIONS));
    axum::serve(listener, router(wp)).await
}

async fn bounded(State(s): State<AppState>, request: Request, next: Next) -> Response {
    let Ok(_place) = s.places.try_acquire_owned() else {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            [(header::RETRY_AFTER, "1")],
            "busy: too many requests at once\n",
        )
            .into_response();
    };
    match tokio::time::timeout(REQUEST_TIMEOUT, next.run(request)).await {
        Ok(response) => response,
        Err(_) => (StatusCode::SERVICE_UNAVAILABLE, "timed out\n").into_response(),
    }
}

async fn ready(State(s): State<AppState>) -> Response {
    if s.wp.telemetry.is_ready() {
        (StatusCode::OK, "ready\n").into_response()
    } else {
        let why = match (s.wp.has_certificate(), s.wp.synced(), s.wp.is_draining()) {
            (_, _, true) => "draining",
            (false, _, _) => "no certificate yet",
            (true, false, _) => "discovery not synced",
            (true, true, false) => "starting",
        };
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {why}\n"),
        )
            .into_response()
    }
}

async fn metrics(State(s): State<AppState>) -> Response {
    match s.wp.telemetry.encode() {
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

async fn config_dump(State(s): State<AppState>) -> Response {
    Json(dump(&s.wp)).into_response()
}

/// What the waypoint serves now: its identity and certificate, and per
/// Service port the protocol and ready endpoints requests would go to.
/// All of it is read from the waypoint's own discovery view, which is
/// scoped to its Gateway (`mesh_discovery::scope`): the Services bound to
/// it, their routes' backends and the policies that can apply here, not
/// the whole cluster; `view` counts what that view holds (`mesh inspect`
/// shows the cluster as the node agents see it).
pub fn dump(wp: &Waypoint) -> serde_json::Value {
    let view = wp.view();
    let cert = wp.cert.borrow().as_ref().map(|c| {
        json!({
            "identity": c.identity().to_string(),
            "not_after_unix_s": unix_seconds(c.info.not_after),
            "generation": c.generation,
        })
    });
    let mut services: Vec<serde_json::Value> = Vec::new();
    let mut routes: Vec<_> = view.services().collect();
    routes.sort_by_key(|r| r.service.key());
    for route in routes {
        let Some(vip) = first_vip(&route.service.kind) else {
            continue;
        };
        for port in &route.ports {
            let addr = std::net::SocketAddr::new(vip, port.port);
            if !matches!(
                crate::target::resolve(&view, addr, &wp.gateway, &wp.own),
                Ok(Target::Service { .. })
            ) {
                continue;
            }
            let protocol = match crate::protocol::declared(port.app_protocol.as_deref(), &port.name)
            {
                Declared::Known(p) => p.as_str(),
                Declared::Http => "http",
                Declared::Undeclared => "detect",
            };
            services.push(json!({
                "service": route.service.key(),
                "address": addr.to_string(),
                "port_name": port.name,
                "protocol": protocol,
                "route": crate::record::DEFAULT_ROUTE,
                "endpoints": port.endpoints.iter().map(|e| json!({
                    "address": e.to_string(),
                    "in_flight": wp.balancer.in_flight(e),
                    "identity": view.expected_identity(e.ip()).map(|i| i.to_string()),
                })).collect::<Vec<_>>(),
            }));
        }
    }
    json!({
        "gateway": wp.gateway,
        "identity": wp.identity.to_string(),
        "certificate": cert,
        "ready": wp.telemetry.is_ready(),
        "discovery_synced": wp.synced(),
        "draining": wp.is_draining(),
        "open_connections": wp.open_connections(),
        "limits": wp.limits,
        "view": view.sizes,
        "services": services,
    })
}

fn first_vip(kind: &mesh_discovery::model::ServiceKind) -> Option<std::net::IpAddr> {
    match kind {
        mesh_discovery::model::ServiceKind::ClusterIp(vips) => vips.first().copied(),
        _ => None,
    }
}

fn unix_seconds(t: std::time::SystemTime) -> u64 {
    t.duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}
