//! The policy status controller's I/O for one object: judge it
//! (`judge`) against the targets of the moment, put our condition into
//! its `status.conditions` (`condition`), and write only when the list
//! changed (`status_controller::Written::write`: a merge patch that fails
//! on a stale read, since the list is shared with other controllers:
//! istiod writes `ZtunnelAccepted` on the same AuthorizationPolicies).
use std::sync::{Arc, PoisonError, RwLock};

use kube::{
    Client,
    api::{ApiResource, DynamicObject},
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
use crate::status_controller::{self, StatusError, Written, now};

/// The field manager of the status writes.
pub const FIELD_MANAGER: &str = "mesh-policy-status";

pub struct Context {
    pub client: Client,
    pub kind: PolicyKind,
    pub resource: ApiResource,
    pub targets: Arc<RwLock<Targets>>,
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
) -> Result<Action, StatusError> {
    let kind = ctx.kind.name();
    let Some(written) = Written::of(kind, &o)? else {
        return Ok(Action::await_change());
    };
    let (namespace, name) = (written.namespace, written.name);
    let now = now();
    let conditions = {
        let targets = ctx.targets.read().unwrap_or_else(PoisonError::into_inner);
        new_conditions(ctx.kind, &o, &targets, &now)
    };
    let Some(conditions) = conditions else {
        debug!(%namespace, object = %name, kind, "policy status unchanged");
        return Ok(Action::await_change());
    };
    written
        .write(
            &ctx.client,
            &ctx.resource,
            FIELD_MANAGER,
            json!({"conditions": conditions}),
        )
        .await?;
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

pub fn retry(_: Arc<DynamicObject>, error: &StatusError, ctx: Arc<Context>) -> Action {
    status_controller::retry_after(super::CONTROLLER, ctx.kind.name(), error)
}
