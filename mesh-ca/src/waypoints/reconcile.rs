//! The controller's I/O: for a Gateway of the waypoint class, bind its
//! waypoint's ServiceAccount as a reader (`reader_binding`), apply the
//! objects `resources` builds (server-side apply, one field manager) and
//! write the status `status` computes; unbind the account of a Gateway
//! being deleted or refused; for a GatewayClass naming the controller,
//! write its Accepted condition.
use std::{sync::Arc, time::Duration};

use k8s_openapi::{
    api::{
        apps::v1::Deployment,
        core::v1::{ConfigMap, Service, ServiceAccount},
    },
    jiff::Timestamp,
};
use kube::{
    Api, Client, Resource,
    api::{Patch, PatchParams},
    runtime::controller::Action,
};
use serde::{Serialize, de::DeserializeOwned};
use serde_json::json;
use tracing::{info, warn};

use super::{
    acceptance::accept,
    gateway_api::{API_VERSION, Gateway, GatewayClass},
    reader_binding::edit_reader,
    readers::{Edit, Reader},
    resources::{GatewayRef, MeshFacts, waypoint_objects},
    settings::WaypointSettings,
    status::{Deployed, Observed, Outcome, class_status, gateway_status},
};

/// The field manager of everything the controller applies.
pub const FIELD_MANAGER: &str = "mesh-waypoint-controller";
/// While a waypoint is not yet available; its Deployment's changes also
/// wake the controller, this is the fallback.
const PENDING_RECHECK: Duration = Duration::from_secs(30);
/// Objects edited by hand are put back within this.
const DRIFT_RECHECK: Duration = Duration::from_secs(300);

pub struct Context {
    pub client: Client,
    pub settings: WaypointSettings,
    pub mesh: MeshFacts,
}

#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    #[error("{what}: {source}")]
    Api {
        what: String,
        #[source]
        source: kube::Error,
    },
    #[error("object without {0}")]
    Incomplete(&'static str),
}

fn api_error(what: impl Into<String>) -> impl FnOnce(kube::Error) -> ReconcileError {
    let what = what.into();
    move |source| ReconcileError::Api { what, source }
}

async fn apply<K>(
    client: &Client,
    namespace: &str,
    object: &K,
    manager: &str,
) -> Result<K, ReconcileError>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
        + Clone
        + std::fmt::Debug
        + Serialize
        + DeserializeOwned,
{
    let name = object.meta().name.clone().unwrap_or_default();
    Api::<K>::namespaced(client.clone(), namespace)
        .patch(
            &name,
            &PatchParams::apply(manager).force(),
            &Patch::Apply(object),
        )
        .await
        .map_err(api_error(format!(
            "applying {} {namespace}/{name}",
            K::kind(&())
        )))
}

/// Reconciles one Gateway: ignores other classes, refuses (in its status)
/// what is not a waypoint, runs the waypoint otherwise.
pub async fn reconcile_gateway(
    gateway: Arc<Gateway>,
    ctx: Arc<Context>,
) -> Result<Action, ReconcileError> {
    if gateway.spec.gateway_class_name != ctx.settings.class_name {
        return Ok(Action::await_change());
    }
    let reader = Reader::of(&gateway).ok_or(ReconcileError::Incomplete(
        "metadata.namespace or metadata.name",
    ))?;
    if gateway.metadata.deletion_timestamp.is_some() {
        // Its objects go with it (owner references); its account's read
        // access goes now, not at the next resync.
        edit_reader(&ctx, Edit::Remove(reader)).await?;
        return Ok(Action::await_change());
    }
    let gw = GatewayRef::of(&gateway).map_err(ReconcileError::Incomplete)?;
    let outcome = match accept(&gateway) {
        Err(refusal) => {
            edit_reader(&ctx, Edit::Remove(reader)).await?;
            Outcome::Refused(refusal)
        }
        Ok(waypoint_for) => {
            // Bound before the Deployment exists, so its first pod can
            // list what it watches.
            edit_reader(&ctx, Edit::Add(reader)).await?;
            Outcome::Deployed {
                waypoint_for,
                deployed: deploy(&ctx, &gw).await?,
            }
        }
    };
    let previous = gateway
        .status
        .as_ref()
        .map(|s| s.conditions.as_slice())
        .unwrap_or_default();
    let observed = Observed {
        previous,
        generation: gw.generation,
        now: Timestamp::now(),
    };
    let deployment = format!("{}/{}", gw.namespace, gw.name);
    let status = gateway_status(&observed, &outcome, &deployment);
    Api::<Gateway>::namespaced(ctx.client.clone(), &gw.namespace)
        .patch_status(
            &gw.name,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(json!({
                "apiVersion": API_VERSION,
                "kind": "Gateway",
                "status": status,
            })),
        )
        .await
        .map_err(api_error(format!(
            "writing the status of Gateway {deployment}"
        )))?;
    Ok(match outcome {
        Outcome::Refused(refusal) => {
            warn!(namespace = %gw.namespace, gateway = %gw.name, reason = refusal.reason(), problem = %refusal, "waypoint Gateway not accepted");
            Action::await_change()
        }
        Outcome::Deployed { deployed, .. } if !deployed.available => {
            info!(namespace = %gw.namespace, gateway = %gw.name, "waypoint applied; waiting for an available replica");
            Action::requeue(PENDING_RECHECK)
        }
        Outcome::Deployed { .. } => Action::requeue(DRIFT_RECHECK),
    })
}

/// Applies the waypoint's objects and reports what the API server said of
/// its Deployment and Service.
async fn deploy(ctx: &Context, gw: &GatewayRef) -> Result<Deployed, ReconcileError> {
    let objects = waypoint_objects(gw, &ctx.settings, &ctx.mesh);
    let ns = gw.namespace.as_str();
    // Each Gateway applies the shared ConfigMap as a manager of its own,
    // so one Gateway's apply does not drop another's owner reference.
    apply::<ConfigMap>(
        &ctx.client,
        ns,
        &objects.root_cert,
        &format!("{FIELD_MANAGER}/{}", gw.uid),
    )
    .await?;
    if let Some(config) = &objects.waypoint_config {
        // Before the Deployment, so its pods find the files they are told of.
        apply::<ConfigMap>(&ctx.client, ns, config, FIELD_MANAGER).await?;
    }
    apply::<ServiceAccount>(&ctx.client, ns, &objects.service_account, FIELD_MANAGER).await?;
    let service = apply::<Service>(&ctx.client, ns, &objects.service, FIELD_MANAGER).await?;
    let deployment =
        apply::<Deployment>(&ctx.client, ns, &objects.deployment, FIELD_MANAGER).await?;
    Ok(Deployed {
        available: deployment
            .status
            .and_then(|s| s.available_replicas)
            .is_some_and(|n| n > 0),
        cluster_ip: service.spec.and_then(|s| s.cluster_ip),
    })
}

/// Accepts a GatewayClass whose controllerName is the controller's.
pub async fn reconcile_class(
    class: Arc<GatewayClass>,
    ctx: Arc<Context>,
) -> Result<Action, ReconcileError> {
    if class.spec.controller_name != ctx.settings.controller_name {
        return Ok(Action::await_change());
    }
    let name = class
        .metadata
        .name
        .clone()
        .ok_or(ReconcileError::Incomplete("metadata.name"))?;
    let previous = class
        .status
        .as_ref()
        .map(|s| s.conditions.as_slice())
        .unwrap_or_default();
    let observed = Observed {
        previous,
        generation: class.metadata.generation,
        now: Timestamp::now(),
    };
    let status = class_status(&observed, &ctx.settings.controller_name);
    Api::<GatewayClass>::all(ctx.client.clone())
        .patch_status(
            &name,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(json!({
                "apiVersion": API_VERSION,
                "kind": "GatewayClass",
                "status": status,
            })),
        )
        .await
        .map_err(api_error(format!(
            "writing the status of GatewayClass {name}"
        )))?;
    Ok(Action::await_change())
}
