//! The route status controller's I/O for one route: decode it, compute
//! our `status.parents` entries (`mesh_route::status`) against the facts
//! of the moment, merge them into the list (`merge`) and write the list
//! only when it changed.
//!
//! The write is a JSON merge patch of the status subresource carrying the
//! resourceVersion that was read: `parents` is an atomic list shared with
//! other controllers, so a write based on a stale read must fail (409)
//! and be redone rather than drop what another controller wrote since.
//! (Server-side apply would make this controller the owner of the whole
//! list and, forced, overwrite theirs.)
use std::{
    sync::{Arc, PoisonError, RwLock},
    time::Duration,
};

use k8s_openapi::jiff::Timestamp;
use kube::{
    Api, Client,
    api::{ApiResource, DynamicObject, Patch, PatchParams},
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

/// The field manager of the status writes.
pub const FIELD_MANAGER: &str = "mesh-route-status";
/// A failed write is tried again after this.
pub const RETRY: Duration = Duration::from_secs(10);
/// After a write lost a race with another writer: soon, on a fresh read.
pub const CONFLICT_RETRY: Duration = Duration::from_secs(1);

pub struct Context {
    pub client: Client,
    /// Written as each entry's controllerName: the waypoint controller's
    /// (the GatewayClass' controllerName).
    pub controller_name: String,
    pub kind: RouteKind,
    pub resource: ApiResource,
    pub cluster: Arc<RwLock<Cluster>>,
}

#[derive(Debug, thiserror::Error)]
pub enum RouteStatusError {
    #[error("writing the status of {kind} {namespace}/{name}: {source}")]
    Write {
        kind: &'static str,
        namespace: String,
        name: String,
        #[source]
        source: kube::Error,
    },
    #[error("{0} without metadata.namespace, metadata.name or metadata.resourceVersion")]
    Incomplete(&'static str),
}

impl RouteStatusError {
    /// Another writer changed the route between our read and our write.
    pub fn is_conflict(&self) -> bool {
        matches!(self, RouteStatusError::Write { source: kube::Error::Api(s), .. } if s.code == 409)
    }
}

/// A time for conditions, to the second as metav1.Time writes it.
pub fn now() -> String {
    Timestamp::from_second(Timestamp::now().as_second())
        .unwrap_or(Timestamp::UNIX_EPOCH)
        .to_string()
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
) -> Result<Action, RouteStatusError> {
    let kind = ctx.kind.kind_name();
    let meta = &route.metadata;
    let (Some(namespace), Some(name), Some(version)) = (
        meta.namespace.as_deref(),
        meta.name.as_deref(),
        meta.resource_version.as_deref(),
    ) else {
        return Err(RouteStatusError::Incomplete(kind));
    };
    if meta.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
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
        generation: meta.generation,
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
    Api::<DynamicObject>::namespaced_with(ctx.client.clone(), namespace, &ctx.resource)
        .patch_status(
            name,
            &PatchParams {
                field_manager: Some(FIELD_MANAGER.to_owned()),
                ..PatchParams::default()
            },
            &Patch::Merge(json!({
                "metadata": {"resourceVersion": version},
                "status": {"parents": merged.parents},
            })),
        )
        .await
        .map_err(|source| RouteStatusError::Write {
            kind,
            namespace: namespace.to_owned(),
            name: name.to_owned(),
            source,
        })?;
    for entry in &ours {
        for c in entry.conditions.iter().filter(|c| c.status != "True") {
            info!(%namespace, route = %name, kind, parent = %entry.parent_ref.name,
                condition = %c.type_, reason = %c.reason, message = %c.message,
                "route status: not accepted or not resolved");
        }
    }
    Ok(Action::await_change())
}

pub fn retry(_: Arc<DynamicObject>, error: &RouteStatusError, _: Arc<Context>) -> Action {
    if error.is_conflict() {
        return Action::requeue(CONFLICT_RETRY);
    }
    warn!(error = %error, retry_s = RETRY.as_secs(), "route status: reconcile failed");
    Action::requeue(RETRY)
}
