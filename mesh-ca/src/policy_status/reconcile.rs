//! The policy status controller's I/O for one object: judge it
//! (`judge`) against the targets of the moment, put our condition into
//! its `status.conditions` (`condition`), and write only when the list
//! changed.
//!
//! The write is a JSON merge patch of the status subresource carrying the
//! resourceVersion that was read: the list is shared with other
//! controllers (istiod writes `ZtunnelAccepted` on the same
//! AuthorizationPolicies), so a write based on a stale read must fail
//! (409) and be redone rather than drop what another wrote since.
use std::{
    sync::{Arc, PoisonError, RwLock},
    time::Duration,
};

use kube::{
    Api, Client,
    api::{ApiResource, DynamicObject, Patch, PatchParams},
    runtime::controller::Action,
};
use serde_json::{Value, json};
use tracing::{debug, info};

use super::{
    condition::{condition, merge, previous},
    judge::judge,
    kinds::PolicyKind,
    targets::Targets,
};

/// The field manager of the status writes.
pub const FIELD_MANAGER: &str = "mesh-policy-status";
/// A failed write is tried again after this.
pub const RETRY: Duration = Duration::from_secs(10);
/// After a write lost a race with another writer: soon, on a fresh read.
pub const CONFLICT_RETRY: Duration = Duration::from_secs(1);

pub struct Context {
    pub client: Client,
    pub kind: PolicyKind,
    pub resource: ApiResource,
    pub targets: Arc<RwLock<Targets>>,
}

#[derive(Debug, thiserror::Error)]
pub enum PolicyStatusError {
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

impl PolicyStatusError {
    /// Another writer changed the object between our read and our write.
    pub fn is_conflict(&self) -> bool {
        matches!(self, PolicyStatusError::Write { source: kube::Error::Api(s), .. } if s.code == 409)
    }
}

/// The conditions `o` should carry, from the ones it carries; `None` when
/// they are already so.
pub fn new_conditions(
    kind: PolicyKind,
    o: &DynamicObject,
    targets: &Targets,
    now: &str,
) -> Option<Vec<Value>> {
    let before: Vec<Value> = o
        .data
        .get("status")
        .and_then(|s| s.get("conditions"))
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let type_ = kind.condition_type();
    let ours = judge(kind, o, targets).map(|verdict| {
        condition(
            type_,
            &verdict,
            o.metadata.generation,
            previous(&before, type_),
            now,
        )
    });
    let after = merge(&before, type_, ours);
    (after != before).then_some(after)
}

/// Reconciles the status of one object.
pub async fn reconcile_policy(
    o: Arc<DynamicObject>,
    ctx: Arc<Context>,
) -> Result<Action, PolicyStatusError> {
    let kind = ctx.kind.name();
    let meta = &o.metadata;
    let (Some(namespace), Some(name), Some(version)) = (
        meta.namespace.as_deref(),
        meta.name.as_deref(),
        meta.resource_version.as_deref(),
    ) else {
        return Err(PolicyStatusError::Incomplete(kind));
    };
    if meta.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let now = crate::routes::reconcile::now();
    let conditions = {
        let targets = ctx.targets.read().unwrap_or_else(PoisonError::into_inner);
        new_conditions(ctx.kind, &o, &targets, &now)
    };
    let Some(conditions) = conditions else {
        debug!(%namespace, object = %name, kind, "policy status unchanged");
        return Ok(Action::await_change());
    };
    Api::<DynamicObject>::namespaced_with(ctx.client.clone(), namespace, &ctx.resource)
        .patch_status(
            name,
            &PatchParams {
                field_manager: Some(FIELD_MANAGER.to_owned()),
                ..PatchParams::default()
            },
            &Patch::Merge(json!({
                "metadata": {"resourceVersion": version},
                "status": {"conditions": conditions},
            })),
        )
        .await
        .map_err(|source| PolicyStatusError::Write {
            kind,
            namespace: namespace.to_owned(),
            name: name.to_owned(),
            source,
        })?;
    if let Some(c) = previous(&conditions, ctx.kind.condition_type())
        && c.get("status").and_then(Value::as_str) != Some("True")
    {
        info!(%namespace, object = %name, kind,
            condition = ctx.kind.condition_type(),
            reason = %c["reason"].as_str().unwrap_or_default(),
            message = %c["message"].as_str().unwrap_or_default(),
            "policy status: the waypoint cannot use this object");
    }
    Ok(Action::await_change())
}

pub fn retry(_: Arc<DynamicObject>, error: &PolicyStatusError, ctx: Arc<Context>) -> Action {
    if error.is_conflict() {
        return Action::requeue(CONFLICT_RETRY);
    }
    tracing::warn!(kind = ctx.kind.name(), error = %error, retry_s = RETRY.as_secs(),
        "policy status: reconcile failed");
    Action::requeue(RETRY)
}
