//! The route status controller's I/O for one route: decode it, compute
//! our `status.parents` entries (`mesh_route::status`) against the facts
//! of the moment, merge them into the list (`merge`) and write the list
//! only when it changed (`status_controller::Written::write`: a merge
//! patch that fails on a stale read, since `parents` is an atomic list
//! shared with other controllers).
use std::sync::{Arc, PoisonError, RwLock};

use kube::{
    Client,
    api::{ApiResource, DynamicObject},
    runtime::controller::Action,
};
use mesh_route::{
    compile::{RouteKind, compile_grpc_route, compile_http_route},
    spec::{GrpcRoute, HttpRoute, ParentRef},
    status::{
        Cluster, Observed, RouteParentStatus, grpc_route_parents, http_route_parents,
        unreadable_route_parents,
    },
};
use serde_json::{Value, json};
use tracing::{debug, info, warn};

use super::{
    kinds::route_object,
    merge::{merge_parents, previous_ours},
};
use crate::status_controller::{self, StatusError, Written, now};

/// The field manager of the status writes.
pub const FIELD_MANAGER: &str = "mesh-route-status";

pub struct Context {
    pub client: Client,
    /// Written as each entry's controllerName: the waypoint controller's
    /// (the GatewayClass' controllerName).
    pub controller_name: String,
    pub kind: RouteKind,
    pub resource: ApiResource,
    pub cluster: Arc<RwLock<Cluster>>,
}

/// The entries this controller writes for `route`, of `kind`.
pub fn our_entries(
    kind: RouteKind,
    route: &DynamicObject,
    cluster: &Cluster,
    observed: &Observed<'_>,
) -> Vec<RouteParentStatus> {
    let value = route_object(route);
    let decoded = match kind {
        RouteKind::Http => serde_json::from_value::<HttpRoute>(value).map(|r| {
            let compiled = compile_http_route(&r);
            http_route_parents(&r, &compiled, cluster, observed)
        }),
        RouteKind::Grpc => serde_json::from_value::<GrpcRoute>(value).map(|r| {
            let compiled = compile_grpc_route(&r);
            grpc_route_parents(&r, &compiled, cluster, observed)
        }),
    };
    match decoded {
        Ok(entries) => entries,
        Err(e) => {
            // The parents, at least, may still be read: they are told.
            let parents: Vec<ParentRef> = route
                .data
                .get("spec")
                .and_then(|s| s.get("parentRefs"))
                .and_then(|p| serde_json::from_value(p.clone()).ok())
                .unwrap_or_default();
            unreadable_route_parents(&parents, &e.to_string(), observed)
        }
    }
}

/// Reconciles the status of one route.
pub async fn reconcile_route(
    route: Arc<DynamicObject>,
    ctx: Arc<Context>,
) -> Result<Action, StatusError> {
    let kind = ctx.kind.kind_name();
    let Some(written) = Written::of(kind, &route)? else {
        return Ok(Action::await_change());
    };
    let (namespace, name) = (written.namespace, written.name);
    let previous: Vec<Value> = route
        .data
        .get("status")
        .and_then(|s| s.get("parents"))
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let before = previous_ours(&previous, &ctx.controller_name);
    let now = now();
    let observed = Observed {
        controller_name: &ctx.controller_name,
        generation: route.metadata.generation,
        previous: &before,
        now: &now,
    };
    let ours = {
        let cluster = ctx.cluster.read().unwrap_or_else(PoisonError::into_inner);
        our_entries(ctx.kind, &route, &cluster, &observed)
    };
    let merged = merge_parents(&previous, &ours, &ctx.controller_name);
    if merged.dropped > 0 {
        warn!(%namespace, route = %name, kind, dropped = merged.dropped,
            "route status: other controllers fill status.parents; some of this controller's entries are left out");
    }
    if merged.parents == previous {
        debug!(%namespace, route = %name, kind, "route status unchanged");
        return Ok(Action::await_change());
    }
    written
        .write(
            &ctx.client,
            &ctx.resource,
            FIELD_MANAGER,
            json!({"parents": merged.parents}),
        )
        .await?;
    for entry in &ours {
        for c in entry.conditions.iter().filter(|c| c.status != "True") {
            info!(%namespace, route = %name, kind, parent = %entry.parent_ref.name,
                condition = %c.type_, reason = %c.reason, message = %c.message,
                "route status: not accepted or not resolved");
        }
    }
    Ok(Action::await_change())
}

pub fn retry(_: Arc<DynamicObject>, error: &StatusError, ctx: Arc<Context>) -> Action {
    status_controller::retry_after(super::CONTROLLER, ctx.kind.kind_name(), error)
}
