//! The waypoint controller: turns each Gateway of the waypoint class into
//! the objects that run `mesh-waypoint` for it, and reports in the
//! Gateway's status (Gateway API's Accepted and Programmed) how that went.
//! It runs in the CA, which already talks to the API and holds the root
//! the waypoints must trust, and only on the replica that holds the
//! leader Lease (`crate::lease`). Each waypoint's ServiceAccount may read
//! what the waypoint watches through the chart's reader binding, whose
//! subjects the controller keeps (`readers`, `reader_binding`).
pub mod acceptance;
pub mod gateway_api;
pub mod reader_binding;
pub mod readers;
pub mod reconcile;
pub mod resources;
pub mod settings;
pub mod status;
pub mod waypoint_config;

use std::{sync::Arc, time::Duration};

use futures::StreamExt;
use k8s_openapi::api::{apps::v1::Deployment, core::v1::Secret};
use kube::{
    Api, Client,
    runtime::{Controller, controller::Action, watcher},
};
use tokio::sync::watch;
use tracing::{info, warn};

use crate::kubernetes::{CERT_KEY, SecretRef};
use gateway_api::{Gateway, GatewayClass};
use reconcile::{Context, ReconcileError, reconcile_class, reconcile_gateway};
use resources::{GATEWAY_NAME_LABEL, MeshFacts};
pub use settings::WaypointSettings;

/// A failed reconcile is tried again after this.
const RETRY: Duration = Duration::from_secs(10);
/// Between reads of the root Secret while it is not there yet (the CA
/// creates it on its first start).
const ROOT_RETRY: Duration = Duration::from_secs(2);

/// What the controller takes from the CA's configuration.
#[derive(Debug, Clone)]
pub struct CaFacts {
    pub trust_domain: String,
    pub token_audience: String,
    /// The Secret the root lives in; only its certificate is read.
    pub root_secret: SecretRef,
}

/// Runs the controller whenever `leading` says this replica leads (the
/// process' one `Elector`), until that channel closes.
pub async fn run(
    client: Client,
    settings: WaypointSettings,
    ca: CaFacts,
    leading: watch::Receiver<bool>,
) {
    loop {
        let mut wait = leading.clone();
        if wait.wait_for(|l| *l).await.is_err() {
            return;
        }
        let lost = {
            let mut rx = leading.clone();
            async move {
                // A closed channel means the elector is gone: stop too.
                let _ = rx.wait_for(|l| !*l).await;
            }
        };
        let root_cert_pem = tokio::select! {
            pem = root_cert(&client, &ca.root_secret) => pem,
            () = lost => continue,
        };
        let ctx = Arc::new(Context {
            client: client.clone(),
            settings: settings.clone(),
            mesh: MeshFacts {
                trust_domain: ca.trust_domain.clone(),
                token_audience: ca.token_audience.clone(),
                root_cert_pem,
            },
        });
        info!(class = %settings.class_name, "waypoint controller: reconciling Gateways");
        let lost_for = |rx: watch::Receiver<bool>| async move {
            let mut rx = rx;
            let _ = rx.wait_for(|l| !*l).await;
        };
        let controller = Controller::new(
            Api::<Gateway>::all(client.clone()),
            watcher::Config::default(),
        )
        .owns(
            Api::<Deployment>::all(client.clone()),
            watcher::Config::default().labels(GATEWAY_NAME_LABEL),
        );
        let readers = {
            let resync = reader_binding::resync(ctx.clone(), controller.store());
            let lost = lost_for(leading.clone());
            async move {
                tokio::select! {
                    () = resync => {}
                    () = lost => {}
                }
            }
        };
        let gateways = controller
            .graceful_shutdown_on(lost_for(leading.clone()))
            .run(reconcile_gateway, retry, ctx.clone())
            .for_each(|result| async move {
                if let Err(e) = result {
                    warn!(error = %e, "waypoint controller (Gateways)");
                }
            });
        let classes = Controller::new(
            Api::<GatewayClass>::all(client.clone()),
            watcher::Config::default(),
        )
        .graceful_shutdown_on(lost_for(leading.clone()))
        .run(reconcile_class, retry, ctx)
        .for_each(|result| async move {
            if let Err(e) = result {
                warn!(error = %e, "waypoint controller (GatewayClasses)");
            }
        });
        tokio::join!(gateways, classes, readers);
        info!("waypoint controller: stopped, this replica no longer leads");
    }
}

fn retry<K>(_: Arc<K>, error: &ReconcileError, _: Arc<Context>) -> Action {
    warn!(error = %error, retry_s = RETRY.as_secs(), "waypoint controller: reconcile failed");
    Action::requeue(RETRY)
}

/// The root certificate from the CA's Secret, waiting for it to exist.
async fn root_cert(client: &Client, secret: &SecretRef) -> String {
    let api = Api::<Secret>::namespaced(client.clone(), &secret.namespace);
    loop {
        let problem = match api.get_opt(&secret.name).await {
            Ok(Some(s)) => match s.data.as_ref().and_then(|d| d.get(CERT_KEY)) {
                Some(bytes) => match String::from_utf8(bytes.0.clone()) {
                    Ok(pem) if pem.contains("-----BEGIN CERTIFICATE-----") => return pem,
                    _ => format!("`{CERT_KEY}` is not a PEM certificate"),
                },
                None => format!("has no `{CERT_KEY}`"),
            },
            Ok(None) => "not found yet".to_owned(),
            Err(e) => e.to_string(),
        };
        warn!(namespace = %secret.namespace, name = %secret.name, problem, "waypoint controller: waiting for the root certificate");
        tokio::time::sleep(ROOT_RETRY).await;
    }
}

#[cfg(test)]
mod tests;
