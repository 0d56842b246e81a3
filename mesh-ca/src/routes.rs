//! The route status controller: every HTTPRoute and GRPCRoute (Gateway
//! API for meshes, GAMMA) that names a Service as its parent gets, for
//! that Service, a `status.parents` entry under the waypoint controller's
//! name with Gateway API's Accepted and ResolvedRefs conditions
//! (`mesh_route::status`), so that a route the waypoint cannot apply says
//! why instead of being ignored. Other controllers' entries are kept.
//!
//! An HTTPRoute's status depends on the GRPCRoutes besides the Services:
//! on a port a GRPCRoute holds it is Conflicted (GEP-1426), so a change
//! of a GRPCRoute's parents reconciles the HTTPRoutes again.
//!
//! It runs beside the waypoint controller, under the same leader Lease
//! (`crate::lease`): only the leader writes. Without Gateway API's route
//! CRDs there is nothing to do: it checks now and then whether they have
//! been installed, and starts (or restarts) when the served kinds change.
pub mod facts;
pub mod kinds;
pub mod merge;
pub mod reconcile;

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
use mesh_route::{compile::RouteKind, status::Cluster};
use tokio::sync::watch;
use tracing::{info, warn};

use kinds::Served;
use reconcile::{Context, reconcile_route, retry};

/// How often the served kinds are checked again.
const RECHECK: Duration = Duration::from_secs(60);
/// Changes of facts that come together (a namespace of Services applied
/// at once) are reconciled together.
const DEBOUNCE: Duration = Duration::from_millis(500);

/// Runs the controller whenever `leading` says this replica leads, until
/// the channel closes.
pub async fn run(client: Client, controller_name: String, leading: watch::Receiver<bool>) {
    loop {
        let mut wait = leading.clone();
        if wait.wait_for(|l| *l).await.is_err() {
            return;
        }
        let mut lost = leading.clone();
        tokio::select! {
            () = lead(&client, &controller_name) => {}
            _ = lost.wait_for(|l| !*l) => {}
        }
        info!("route status: stopped, this replica no longer leads");
    }
}

/// While leading: waits for a route kind to be served, then reports on
/// the routes, starting over whenever the set of served kinds changes.
async fn lead(client: &Client, controller_name: &str) {
    let mut said_absent = false;
    loop {
        let served = match Served::probe(client).await {
            Ok(s) => s,
            Err(e) => {
                warn!(error = %e, retry_s = RECHECK.as_secs(),
                    "route status: cannot tell whether HTTPRoute and GRPCRoute are served");
                tokio::time::sleep(RECHECK).await;
                continue;
            }
        };
        if !served.any_route() {
            if !said_absent {
                info!(
                    "route status: the API server serves neither HTTPRoute nor GRPCRoute (Gateway API CRDs not installed); nothing to report"
                );
                said_absent = true;
            }
            tokio::time::sleep(RECHECK).await;
            continue;
        }
        said_absent = false;
        info!(
            http_routes = served.http_routes,
            grpc_routes = served.grpc_routes,
            "route status: reporting on routes"
        );
        tokio::select! {
            () = report(client, controller_name, served) => {}
            () = until_changed(client, served) => {
                info!("route status: the served Gateway API kinds changed; starting over");
            }
        }
    }
}

async fn until_changed(client: &Client, served: Served) {
    loop {
        tokio::time::sleep(RECHECK).await;
        match Served::probe(client).await {
            Ok(now) if now != served => return,
            Ok(_) => {}
            Err(e) => warn!(error = %e, "route status: checking the served kinds failed"),
        }
    }
}

/// Follows the facts and, once they are listed, runs one controller per
/// served route kind. Never returns on its own.
async fn report(client: &Client, controller_name: &str, served: Served) {
    let cluster = Arc::new(RwLock::new(Cluster::default()));
    let (services, services_changed) = watch::channel(());
    let (grpc_routes, grpc_routes_changed) = watch::channel(());
    let (synced_tx, mut synced) = watch::channel(false);
    let follow = facts::follow(
        client.clone(),
        cluster.clone(),
        served.grpc_routes,
        facts::Signals {
            services,
            grpc_routes,
            synced: synced_tx,
        },
    );
    let controllers = async {
        // Before the facts are listed every backend would look missing,
        // and every HTTPRoute on a GRPCRoute's port accepted.
        if synced.wait_for(|s| *s).await.is_err() {
            return;
        }
        let runs = served.routes().map(|kind| {
            let ctx = Arc::new(Context {
                client: client.clone(),
                controller_name: controller_name.to_owned(),
                kind,
                resource: kinds::route_resource(kind),
                cluster: cluster.clone(),
            });
            // An HTTPRoute's status depends on the GRPCRoutes too; a
            // GRPCRoute's on no other route.
            let on = match kind {
                RouteKind::Http => futures::stream::select(
                    triggers(services_changed.clone()),
                    triggers(grpc_routes_changed.clone()),
                )
                .boxed(),
                RouteKind::Grpc => triggers(services_changed.clone()).boxed(),
            };
            control(ctx, on)
        });
        futures::future::join_all(runs).await;
    };
    tokio::join!(follow, controllers);
}

/// Every change of some facts, as a trigger to reconcile every route of
/// a kind.
fn triggers(changes: watch::Receiver<()>) -> impl Stream<Item = ()> + Send + 'static {
    futures::stream::unfold(changes, |mut rx| async move {
        rx.changed().await.ok()?;
        Some(((), rx))
    })
}

async fn control(ctx: Arc<Context>, on: impl Stream<Item = ()> + Send + 'static) {
    let kind = ctx.kind;
    Controller::new_with(
        Api::<DynamicObject>::all_with(ctx.client.clone(), &ctx.resource),
        watcher::Config::default(),
        ctx.resource.clone(),
    )
    .with_config(controller::Config::default().debounce(DEBOUNCE))
    .reconcile_all_on(on)
    .run(reconcile_route, retry, ctx)
    .for_each(|result| async move {
        match result {
            // Said by `retry` already (or a lost race, which is not news).
            Ok(_) | Err(controller::Error::ReconcilerFailed(..)) => {}
            Err(e) => warn!(kind = kind.kind_name(), error = %e, "route status controller"),
        }
    })
    .await;
}

#[cfg(test)]
mod tests;
