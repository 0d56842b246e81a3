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
pub mod condition;
pub mod facts;
pub mod judge;
pub mod kinds;
pub mod reconcile;
pub mod targets;

use std::{
    sync::{Arc, RwLock},
    time::Duration,
};

use futures::{Stream, StreamExt};
use kube::{
    Api, Client,
    api::DynamicObject,
    runtime::{Controller, controller, watcher},
};
use tokio::sync::watch;
use tracing::{info, warn};

use kinds::{PolicyKind, Served};
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

/// How often the served kinds are checked again.
const RECHECK: Duration = Duration::from_secs(60);
/// Changes of targets that come together are reconciled together.
const DEBOUNCE: Duration = Duration::from_millis(500);

/// Runs the controller whenever `leading` says this replica leads, until
/// the channel closes.
pub async fn run(client: Client, scope: Scope, leading: watch::Receiver<bool>) {
    loop {
        let mut wait = leading.clone();
        if wait.wait_for(|l| *l).await.is_err() {
            return;
        }
        let mut lost = leading.clone();
        tokio::select! {
            () = lead(&client, &scope) => {}
            _ = lost.wait_for(|l| !*l) => {}
        }
        info!("policy status: stopped, this replica no longer leads");
    }
}

/// While leading: reports on the served kinds, starting over whenever
/// the set of served kinds changes.
async fn lead(client: &Client, scope: &Scope) {
    let mut said_absent = false;
    loop {
        let served = match Served::probe(client).await {
            Ok(s) => s,
            Err(e) => {
                warn!(error = %e, retry_s = RECHECK.as_secs(),
                    "policy status: cannot tell which policy kinds are served");
                tokio::time::sleep(RECHECK).await;
                continue;
            }
        };
        if served.kinds.is_empty() {
            if !said_absent {
                info!(
                    "policy status: the API server serves none of the policy kinds the waypoint reads; nothing to report"
                );
                said_absent = true;
            }
            tokio::time::sleep(RECHECK).await;
            continue;
        }
        said_absent = false;
        info!(kinds = ?served.kinds.iter().map(|k| k.name()).collect::<Vec<_>>(),
            gateways = served.gateways, "policy status: reporting on policies");
        tokio::select! {
            () = report(client, scope, &served) => {}
            () = until_changed(client, &served) => {
                info!("policy status: the served kinds changed; starting over");
            }
        }
    }
}

async fn until_changed(client: &Client, served: &Served) {
    loop {
        tokio::time::sleep(RECHECK).await;
        match Served::probe(client).await {
            Ok(now) if now != *served => return,
            Ok(_) => {}
            Err(e) => warn!(error = %e, "policy status: checking the served kinds failed"),
        }
    }
}

/// Follows the targets and, once they are listed, runs one controller per
/// served kind. Never returns on its own.
async fn report(client: &Client, scope: &Scope, served: &Served) {
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
            let ctx = Arc::new(Context {
                client: client.clone(),
                kind,
                resource: kind.resource(),
                targets: targets.clone(),
            });
            let on = if kind.has_targets() {
                triggers(changed.clone()).boxed()
            } else {
                futures::stream::pending().boxed()
            };
            control(ctx, on)
        });
        futures::future::join_all(runs).await;
    };
    tokio::join!(follow, controllers);
}

/// Every change of the targets, as a trigger to reconcile every object of
/// a kind.
fn triggers(changes: watch::Receiver<()>) -> impl Stream<Item = ()> + Send + 'static {
    futures::stream::unfold(changes, |mut rx| async move {
        rx.changed().await.ok()?;
        Some(((), rx))
    })
}

async fn control(ctx: Arc<Context>, on: impl Stream<Item = ()> + Send + 'static) {
    let kind: PolicyKind = ctx.kind;
    Controller::new_with(
        Api::<DynamicObject>::all_with(ctx.client.clone(), &ctx.resource),
        watcher::Config::default(),
        ctx.resource.clone(),
    )
    .with_config(controller::Config::default().debounce(DEBOUNCE))
    .reconcile_all_on(on)
    .run(reconcile_policy, retry, ctx)
    .for_each(|result| async move {
        match result {
            // Said by `retry` already (or a lost race, which is not news).
            Ok(_) | Err(controller::Error::ReconcilerFailed(..)) => {}
            Err(e) => warn!(kind = kind.name(), error = %e, "policy status controller"),
        }
    })
    .await;
}

#[cfg(test)]
mod tests;
