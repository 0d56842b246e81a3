//! What connection handlers consult: the current view of the mesh (who is
//! at which address, which policies hold), this node's enrolled pods by
//! address (for the same-node fast path), and the mTLS machinery when a CA
//! is configured. Views are replaced whole on a config change, so a
//! connection decides against one consistent snapshot.
use std::{
    net::IpAddr,
    sync::{Arc, RwLock},
};

use mesh_config::LimitSettings;
pub use mesh_discovery::view::MeshView;
use mesh_identity::manager::CertManager;
use mesh_telemetry::Telemetry;
use tokio::sync::watch;

use super::{admission::Admission, balancer::Balancer, own_ports::OwnPorts};
use crate::{datapath::Datapath, local_pods::LocalPods, pod::PodContext};

/// mTLS parts, present when the agent has a CA.
pub struct Mtls {
    pub certs: Arc<CertManager>,
    /// Tunnels to other nodes: the trust bundle, the connection pool, and
    /// what tunnels hold for apps that do not read (both directions).
    pub client: mesh_hbone::client::Client,
}

pub struct ProxyState {
    view: RwLock<Arc<MeshView>>,
    /// This node's enrolled pods (the one registry; see `local_pods`).
    pub local: LocalPods,
    pub datapath: Arc<Datapath>,
    pub mtls: Option<Mtls>,
    pub balancer: Balancer,
    pub telemetry: Arc<Telemetry>,
    pub limits: LimitSettings,
    pub own_ports: OwnPorts,
    /// Every accepted connection holds a place here while it is open.
    pub admission: Arc<Admission>,
    /// True once the agent drains: HBONE connections send GOAWAY, idle
    /// pooled ones close.
    draining: watch::Sender<bool>,
}

impl ProxyState {
    pub fn new(
        datapath: Arc<Datapath>,
        mtls: Option<Mtls>,
        telemetry: Arc<Telemetry>,
        limits: LimitSettings,
        own_ports: OwnPorts,
    ) -> Self {
        Self {
            telemetry,
            view: RwLock::default(),
            local: LocalPods::default(),
            datapath,
            mtls,
            balancer: Balancer::default(),
            admission: Admission::new(limits.max_connections, limits.max_connections_per_source),
            limits,
            own_ports,
            draining: watch::Sender::new(false),
        }
    }

    /// Starts draining (see the field).
    pub fn drain(&self) {
        self.draining.send_replace(true);
    }

    /// Changes to true when the agent starts draining.
    pub fn draining(&self) -> watch::Receiver<bool> {
        self.draining.subscribe()
    }

    pub fn view(&self) -> Arc<MeshView> {
        self.view.read().unwrap().clone()
    }

    pub fn set_view(&self, view: Arc<MeshView>) {
        *self.view.write().unwrap() = view;
    }

    /// An enrolled pod of this node at `ip`.
    pub fn local_pod(&self, ip: IpAddr) -> Option<Arc<PodContext>> {
        self.local.by_ip(ip)
    }
}
