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
//! That skeleton, and the status write, it shares with the policy status
//! controller (`crate::status_controller`).
pub mod facts;
pub mod kinds;
pub mod merge;
pub mod reconcile;

use std::sync::{Arc, RwLock};

use futures::StreamExt;
use kube::Client;
use mesh_route::{compile::RouteKind, status::Cluster};
use tokio::sync::watch;
use tracing::info;

use crate::status_controller::{self, Objects, ServedKinds, control, follow_served, triggers};
use kinds::Served;
use reconcile::{Context, reconcile_route, retry};

/// Names this controller in its logs.
const CONTROLLER: &str = "route status";

/// Runs the controller whenever `leading` says this replica leads, until
/// the channel closes.
pub async fn run(client: Client, controller_name: String, leading: watch::Receiver<bool>) {
    status_controller::while_leading(CONTROLLER, leading, || {
        follow_served(&client, |served: Served| {
            report(&client, &controller_name, served)
        })
    })
    .await;
}

impl ServedKinds for Served {
    const CONTROLLER: &'static str = CONTROLLER;
    const CANNOT_PROBE: &'static str = "cannot tell whether HTTPRoute and GRPCRoute are served";
    const NONE_SERVED: &'static str = "the API server serves neither HTTPRoute nor GRPCRoute (Gateway API CRDs not installed); nothing to report";
    const CHANGED: &'static str = "the served Gateway API kinds changed; starting over";

    fn probe(client: &Client) -> impl Future<Output = Result<Self, kube::Error>> + Send {
        Served::probe(client)
    }

    fn any(&self) -> bool {
        self.any_route()
    }
}

/// Follows the facts and, once they are listed, runs one controller per
/// served route kind. Never returns on its own.
async fn report(client: &Client, controller_name: &str, served: Served) {
    info!(
        http_routes = served.http_routes,
        grpc_routes = served.grpc_routes,
        "route status: reporting on routes"
    );
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
            let resource = kinds::route_resource(kind);
            let ctx = Arc::new(Context {
                client: client.clone(),
                controller_name: controller_name.to_owned(),
                kind,
                resource: resource.clone(),
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
            control(
                Objects {
                    controller: CONTROLLER,
                    kind: kind.kind_name(),
                    client: client.clone(),
                    resource,
                },
                on,
                reconcile_route,
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
