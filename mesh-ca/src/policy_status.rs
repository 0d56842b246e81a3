//! The policy status controller: every object of the kinds the waypoint
//! reads beyond routes says on itself whether the waypoint can use it,
//! and if not, the field and the problem, instead of each waypoint only
//! logging it. The mesh's own kinds (`HTTPLocalRateLimitPolicy`,
//! `HTTPFaultInjection`) get `status.conditions` type `Accepted`; Istio's
//! (`AuthorizationPolicy` with targetRefs, `RequestAuthentication` with
//! targetRefs, `DestinationRule`) get `WaypointAccepted`, with the reasons
//! istiod writes for ambient (Accepted, Invalid, TargetNotFound,
//! AncestorNotBound, PartiallyInvalid), so `kubectl get ... -o yaml` reads
//! as it does with Istio. Other conditions on the objects are kept.
//!
//! It runs beside the route status controller, under the same leader
//! Lease (`crate::lease`): only the leader writes. Each kind is optional
//! (its CRD may not be installed): the served kinds are checked now and
//! then, and the controller starts over when they change.
//! That skeleton, and the status write, it shares with the route status
//! controller (`crate::status_controller`).
pub mod condition;
pub mod facts;
pub mod judge;
pub mod kinds;
pub mod reconcile;
pub mod targets;

use std::sync::{Arc, RwLock};

use futures::StreamExt;
use kube::Client;
use tokio::sync::watch;
use tracing::info;

use crate::status_controller::{self, Objects, ServedKinds, control, follow_served, triggers};
use kinds::Served;
use reconcile::{Context, reconcile_policy, retry};
use targets::Targets;

/// What decides whether a target is a waypoint.
#[derive(Debug, Clone)]
pub struct Scope {
    /// The gatewayClassName of waypoints: a Gateway of another class is
    /// no waypoint.
    pub waypoint_class: String,
    /// The namespace whose AuthorizationPolicies may bind the waypoint
    /// class (the agents' and waypoints' `rootNamespace`).
    pub root_namespace: String,
}

/// Names this controller in its logs.
const CONTROLLER: &str = "policy status";

/// Runs the controller whenever `leading` says this replica leads, until
/// the channel closes.
pub async fn run(client: Client, scope: Scope, leading: watch::Receiver<bool>) {
    status_controller::while_leading(CONTROLLER, leading, || {
        follow_served(&client, |served: Served| report(&client, &scope, served))
    })
    .await;
}

impl ServedKinds for Served {
    const CONTROLLER: &'static str = CONTROLLER;
    const CANNOT_PROBE: &'static str = "cannot tell which policy kinds are served";
    const NONE_SERVED: &'static str =
        "the API server serves none of the policy kinds the waypoint reads; nothing to report";
    const CHANGED: &'static str = "the served kinds changed; starting over";

    fn probe(client: &Client) -> impl Future<Output = Result<Self, kube::Error>> + Send {
        Served::probe(client)
    }

    fn any(&self) -> bool {
        !self.kinds.is_empty()
    }
}

/// Follows the targets and, once they are listed, runs one controller per
/// served kind. Never returns on its own.
async fn report(client: &Client, scope: &Scope, served: Served) {
    info!(kinds = ?served.kinds.iter().map(|k| k.name()).collect::<Vec<_>>(),
        gateways = served.gateways, "policy status: reporting on policies");
    let targets = Arc::new(RwLock::new(Targets::new(
        &scope.waypoint_class,
        &scope.root_namespace,
    )));
    let (changed_tx, changed) = watch::channel(());
    let (synced_tx, mut synced) = watch::channel(false);
    let follow = facts::follow(
        client.clone(),
        targets.clone(),
        served.gateways,
        changed_tx,
        synced_tx,
    );
    let controllers = async {
        // Before the targets are listed every one would look missing.
        if synced.wait_for(|s| *s).await.is_err() {
            return;
        }
        let runs = served.kinds.iter().map(|&kind| {
            let resource = kind.resource();
            let ctx = Arc::new(Context {
                client: client.clone(),
                kind,
                resource: resource.clone(),
                targets: targets.clone(),
            });
            let on = if kind.has_targets() {
                triggers(changed.clone()).boxed()
            } else {
                futures::stream::pending().boxed()
            };
            control(
                Objects {
                    controller: CONTROLLER,
                    kind: kind.name(),
                    client: client.clone(),
                    resource,
                },
                on,
                reconcile_policy,
                retry,
                ctx,
            )
        });
        futures::future::join_all(runs).await;
    };
    tokio::join!(follow, controllers);
}

#[cfg(test)]
mod tests;
