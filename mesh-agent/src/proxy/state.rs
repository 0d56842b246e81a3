//! What connection handlers consult: the current view of the mesh (who is
//! at which address, which policies hold), this node's enrolled pods by
//! address (for the same-node fast path), and the mTLS machinery when a CA
//! is configured. Views are replaced whole on a config change, so a
//! connection decides against one consistent snapshot.
use std::{
    collections::HashMap,
    net::IpAddr,
    sync::{Arc, RwLock},
};

use super::balancer::Balancer;
pub use crate::discovery::view::MeshView;
use crate::{
    datapath::Datapath, hbone::Pool, identity::manager::CertManager, pod::PodContext,
    telemetry::Telemetry, tls::TrustBundle,
};

/// mTLS parts, present when the agent has a CA.
pub struct Mtls {
    pub bundle: TrustBundle,
    pub certs: Arc<CertManager>,
    pub pool: Pool,
}

pub struct ProxyState {
    view: RwLock<Arc<MeshView>>,
    local: RwLock<HashMap<IpAddr, Arc<PodContext>>>,
    pub datapath: Arc<Datapath>,
    pub mtls: Option<Mtls>,
    pub balancer: Balancer,
    pub telemetry: Arc<Telemetry>,
}

impl ProxyState {
    pub fn new(datapath: Arc<Datapath>, mtls: Option<Mtls>, telemetry: Arc<Telemetry>) -> Self {
        Self {
            telemetry,
            view: RwLock::default(),
            local: RwLock::default(),
            datapath,
            mtls,
            balancer: Balancer::default(),
        }
    }

    pub fn view(&self) -> Arc<MeshView> {
        self.view.read().unwrap().clone()
    }

    pub fn set_view(&self, view: Arc<MeshView>) {
        *self.view.write().unwrap() = view;
    }

    /// An enrolled pod of this node at `ip`.
    pub fn local_pod(&self, ip: IpAddr) -> Option<Arc<PodContext>> {
        self.local.read().unwrap().get(&ip.to_canonical()).cloned()
    }

    pub fn set_local_pods<'a>(&self, pods: impl Iterator<Item = &'a Arc<PodContext>>) {
        let mut map = HashMap::new();
        for p in pods {
            for ip in &p.ips {
                map.insert(*ip, p.clone());
            }
        }
        *self.local.write().unwrap() = map;
    }
}
