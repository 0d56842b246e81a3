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

use crate::{
    config::{NodeConfig, Workload},
    datapath::Datapath,
    hbone::Pool,
    identity::{Identity, manager::CertManager},
    pod::PodContext,
    policy::PolicySet,
    tls::TrustBundle,
};

/// Everything known about the cluster, from one version of the source.
#[derive(Debug, Default)]
pub struct MeshView {
    pub trust_domain: String,
    by_ip: HashMap<IpAddr, Arc<Workload>>,
    pub policies: PolicySet,
}

impl MeshView {
    pub fn new(config: &NodeConfig) -> Self {
        let mut by_ip = HashMap::new();
        for w in &config.workloads {
            let w = Arc::new(w.clone());
            for ip in &w.ips {
                by_ip.insert(*ip, w.clone());
            }
        }
        Self {
            trust_domain: config.agent.trust_domain.clone(),
            by_ip,
            policies: config.policies.clone(),
        }
    }

    pub fn workload(&self, ip: IpAddr) -> Option<&Arc<Workload>> {
        self.by_ip.get(&ip.to_canonical())
    }

    /// The identity a meshed destination must prove; `None` means the
    /// address is not in the mesh and gets plaintext passthrough.
    pub fn expected_identity(&self, ip: IpAddr) -> Option<Identity> {
        let w = self.workload(ip).filter(|w| w.enrolled)?;
        Identity::new(&self.trust_domain, &w.namespace, &w.service_account).ok()
    }
}

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
}

impl ProxyState {
    pub fn new(datapath: Arc<Datapath>, mtls: Option<Mtls>) -> Self {
        Self {
            view: RwLock::default(),
            local: RwLock::default(),
            datapath,
            mtls,
        }
    }

    pub fn view(&self) -> Arc<MeshView> {
        self.view.read().unwrap().clone()
    }

    pub fn set_view(&self, view: MeshView) {
        *self.view.write().unwrap() = Arc::new(view);
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
