//! The slim objects the agent keeps from either source: only the fields
//! routing, identity, enrollment and policy need, so a large cluster costs
//! little memory.
use std::{collections::BTreeMap, net::IpAddr};

pub type Labels = BTreeMap<String, String>;

pub use mesh_config::DATAPLANE_LABEL;
/// The EndpointSlice label naming the Service a slice belongs to.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// A pod anywhere in the cluster.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Workload {
    /// metadata.uid; local files may leave it out (then `local:<ns>/<name>`).
    pub uid: String,
    pub name: String,
    pub namespace: String,
    pub service_account: String,
    pub node: Option<String>,
    pub ips: Vec<IpAddr>,
    pub labels: Labels,
    pub annotations: Labels,
    /// Host-network pods share the node's netns and are never enrolled.
    pub host_network: bool,
    /// The Ready condition (local files without conditions count as ready).
    pub ready: bool,
    /// Succeeded or Failed: its IPs may already belong to another pod.
    pub finished: bool,
    /// Named container ports, for Services whose targetPort is a name.
    pub ports: BTreeMap<String, u16>,
}

impl Workload {
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }

    /// Whether the pod asks to be in the mesh, given its namespace's labels:
    /// the pod's own label wins (`none` opts out), else the namespace's.
    pub fn wants_mesh(&self, namespace_labels: Option<&Labels>) -> bool {
        if self.host_network || self.finished {
            return false;
        }
        match self.labels.get(DATAPLANE_LABEL).map(String::as_str) {
            Some("enabled") => true,
            Some(_) => false,
            None => namespace_labels
                .and_then(|l| l.get(DATAPLANE_LABEL))
                .is_some_and(|v| v == "enabled"),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub enum TargetPort {
    Number(u16),
    /// A container port name, resolved per endpoint pod.
    Name(String),
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ServicePort {
    /// Empty for a Service's single unnamed port.
    pub name: String,
    pub port: u16,
    pub target: TargetPort,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub enum ServiceKind {
    /// Has virtual IPs the agent load-balances.
    ClusterIp(Vec<IpAddr>),
    /// clusterIP: None — clients resolve pod IPs and connect to them.
    Headless,
    /// A DNS alias to something outside the cluster.
    ExternalName(String),
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Service {
    pub name: String,
    pub namespace: String,
    pub kind: ServiceKind,
    pub ports: Vec<ServicePort>,
    /// Pods backing the service when no EndpointSlice names it.
    pub selector: Option<Labels>,
}

impl Service {
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Endpoint {
    pub addresses: Vec<IpAddr>,
    /// conditions.ready; unset counts as ready, as Kubernetes defines it.
    pub ready: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct EndpointSlice {
    pub name: String,
    pub namespace: String,
    /// From the `kubernetes.io/service-name` label.
    pub service: String,
    /// (port name, target port) pairs.
    pub ports: Vec<(String, u16)>,
    pub endpoints: Vec<Endpoint>,
}
