//! Discovery: one in-memory store of workloads, services, endpoints,
//! namespaces and policies, fed by a local YAML file or by the Kubernetes
//! API, and published to the rest of the agent as immutable views.
#[cfg(test)]
mod chart_template;
pub mod convert;
pub mod crd_status;
pub mod destination_rule;
pub mod file;
pub mod kubernetes;
pub mod local;
pub mod model;
pub mod node_config;
pub mod ratelimit;
pub mod routes;
pub mod scope;
pub mod store;
pub mod view;
pub mod waypoint;

use std::{future::Future, sync::Arc, time::Instant};

pub use node_config::{LocalPod, NodeConfig};
use tokio::sync::watch;
use tracing::info;

use self::{
    store::Store,
    view::{MeshView, ViewSettings},
};

/// A source of cluster objects. It runs until the agent stops, changing
/// its store and publishing a view after each batch of changes.
pub trait Source: Send + 'static {
    fn run(self, publisher: Publisher) -> impl Future<Output = ()> + Send;
}

/// A published view and whether the source has seen the whole cluster at
/// least once (Kubernetes: every kind listed).
#[derive(Debug, Clone)]
pub struct Published {
    pub view: Arc<MeshView>,
    pub synced: bool,
}

/// Builds views from a store and hands them to the agent. Building takes
/// tens of milliseconds for a large cluster: sources call it on a blocking
/// thread, never on the proxy's runtime thread.
#[derive(Clone)]
pub struct Publisher {
    settings: Arc<ViewSettings>,
    tx: Arc<watch::Sender<Published>>,
}

impl Publisher {
    pub fn new(settings: ViewSettings, first: Published) -> (Self, watch::Receiver<Published>) {
        let (tx, rx) = watch::channel(first);
        (
            Self {
                settings: Arc::new(settings),
                tx: Arc::new(tx),
            },
            rx,
        )
    }

    pub fn publish(&self, store: &Store, synced: bool) {
        let started = Instant::now();
        let view = MeshView::build(store, &self.settings);
        let sizes = view.sizes;
        info!(
            build_us = started.elapsed().as_micros() as u64,
            pods = sizes.pods,
            services = sizes.services,
            endpoint_slices = sizes.endpoint_slices,
            namespaces = sizes.namespaces,
            authorization_policies = sizes.authorization_policies,
            routes = sizes.routes,
            synced,
            "discovery view built"
        );
        self.tx.send_replace(Published {
            view: Arc::new(view),
            synced,
        });
    }

    /// False once the agent has stopped listening.
    pub fn is_open(&self) -> bool {
        !self.tx.is_closed()
    }
}
