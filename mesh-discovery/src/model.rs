//! The slim objects the agent keeps from either source: only the fields
//! routing, identity, enrollment and policy need, so a large cluster costs
//! little memory.
use std::{collections::BTreeMap, net::IpAddr};

pub type Labels = BTreeMap<String, String>;

pub use mesh_config::{DATAPLANE_LABEL, NETNS_ANNOTATION};

/// The only annotation of a pod anything reads (the netns of a local-mode
/// pod); the rest (e.g. `kubectl.kubernetes.io/last-applied-configuration`,
/// often kilobytes) are dropped on arrival. Policies' own annotations
/// (dry-run) are read from the policy objects, not from here.
pub const POD_ANNOTATIONS: &[&str] = &[NETNS_ANNOTATION];

/// Istio's label naming the waypoint (a Gateway's name) that a Namespace,
/// Service or Pod sends its traffic through; `none` opts out.
pub const USE_WAYPOINT_LABEL: &str = "istio.io/use-waypoint";
/// The waypoint's namespace, when it is not the object's own.
pub const USE_WAYPOINT_NAMESPACE_LABEL: &str = "istio.io/use-waypoint-namespace";
/// On a waypoint's Gateway: what kind of destination it serves
/// (`service`, the default; `workload`; `all`; `none`).
pub const WAYPOINT_FOR_LABEL: &str = "istio.io/waypoint-for";
/// On a Namespace or Service that uses a waypoint: `"true"` makes the
/// destination's agent refuse connections that did not come through it,
/// so its L7 rules cannot be bypassed by dialling a pod directly. Istio
/// has no equivalent; off unless set.
pub const REQUIRE_WAYPOINT_LABEL: &str = "mesh.io/require-waypoint";
/// The label Gateway API implementations (and Istio) put on a Gateway's
/// pods; a waypoint's pods are found by it.
pub const GATEWAY_NAME_LABEL: &str = "gateway.networking.k8s.io/gateway-name";
/// The port and protocol of the listener a waypoint Gateway must have.
pub const WAYPOINT_LISTENER_PORT: u16 = 15008;
pub const WAYPOINT_LISTENER_PROTOCOL: &str = "HBONE";

/// The labels of a namespace anything reads: enrollment and waypoints.
/// (Policies select pods by the pods' labels; no policy kind selects
/// namespaces by theirs.)
pub const NAMESPACE_LABELS: &[&str] = &[
    DATAPLANE_LABEL,
    USE_WAYPOINT_LABEL,
    USE_WAYPOINT_NAMESPACE_LABEL,
    REQUIRE_WAYPOINT_LABEL,
];

/// The labels of a Service anything reads (its selector is kept apart).
pub const SERVICE_LABELS: &[&str] = &[
    USE_WAYPOINT_LABEL,
    USE_WAYPOINT_NAMESPACE_LABEL,
    REQUIRE_WAYPOINT_LABEL,
];

/// The most bytes (keys and values) of labels and kept annotations, or of
/// a Service's selector, that the agent holds for one object. An object
/// over it is refused by name and treated as absent. Kubernetes caps a
/// label value at 63 bytes and a key at 317, so this is ten times a heavily
/// labelled pod's (Helm, Istio and controller labels together come to
/// about 1 KiB) and still bounds what 10,000 pods can make the agent hold.
/// A constant, not a setting: in local mode the objects are read before
/// the `AgentConfig` beside them, and no real pod comes near it.
pub const MAX_METADATA_BYTES: usize = 16 * 1024;

/// Bytes of keys and values in `maps`, as `MAX_METADATA_BYTES` counts them.
pub fn metadata_bytes<'a>(maps: impl IntoIterator<Item = &'a Labels>) -> usize {
    maps.into_iter()
        .flat_map(|m| m.iter())
        .map(|(k, v)| k.len() + v.len())
        .sum()
}
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
    /// All of them: Services select pods by any label, and so do policies,
    /// both changing at run time (see `convert::workload`).
    pub labels: Labels,
    /// Only `POD_ANNOTATIONS`.
    pub annotations: Labels,
    /// Host-network pods share the node's netns and are never enrolled.
    pub host_network: bool,
    /// The Ready condition (local files without conditions count as ready).
    pub ready: bool,
    /// Succeeded or Failed: its IPs may already belong to another pod.
    pub finished: bool,
    /// Named container ports, for Services whose targetPort is a name.
    pub ports: BTreeMap<String, u16>,
    /// The ports the kubelet connects to (readiness, liveness and startup
    /// probes, lifecycle hooks; httpGet, tcpSocket and grpc), sorted: what
    /// plaintext from the node itself may reach under STRICT mTLS.
    pub probe_ports: Vec<u16>,
}

impl Workload {
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }

    /// Whether the kubelet connects to `port` of this pod.
    pub fn is_probe_port(&self, port: u16) -> bool {
        self.probe_ports.binary_search(&port).is_ok()
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
    /// `spec.ports[].appProtocol` (`http`, `kubernetes.io/h2c`, `grpc`, ...).
    pub app_protocol: Option<String>,
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
    /// Only `SERVICE_LABELS`.
    pub labels: Labels,
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

/// Which destinations a waypoint serves (`istio.io/waypoint-for`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum WaypointFor {
    /// Traffic to a Service's virtual IP (Istio's default).
    #[default]
    Service,
    /// Traffic to a pod's own address.
    Workload,
    All,
    None,
}

impl WaypointFor {
    pub fn parse(value: &str) -> Option<Self> {
        Some(match value {
            "service" => Self::Service,
            "workload" => Self::Workload,
            "all" => Self::All,
            "none" => Self::None,
            _ => return None,
        })
    }

    pub fn serves_services(self) -> bool {
        matches!(self, Self::Service | Self::All)
    }

    pub fn serves_workloads(self) -> bool {
        matches!(self, Self::Workload | Self::All)
    }
}

/// A Gateway API Gateway, as much of it as declaring a waypoint needs.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Gateway {
    pub name: String,
    pub namespace: String,
    /// `spec.gatewayClassName`: only the mesh's waypoint class is a waypoint.
    pub class: String,
    pub waypoint_for: WaypointFor,
    /// Whether it has the `{port: 15008, protocol: HBONE}` listener a
    /// waypoint needs; one without it is not used.
    pub hbone_listener: bool,
    /// Which namespaces' Services and pods may use it: the HBONE
    /// listener's `allowedRoutes.namespaces`, as Istio reads it for
    /// waypoints (`Same` unless it says otherwise).
    pub allowed_namespaces: AllowedNamespaces,
}

/// `allowedRoutes.namespaces` of a waypoint's HBONE listener.
#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AllowedNamespaces {
    /// Only the Gateway's own namespace.
    #[default]
    Same,
    All,
    /// Namespaces whose labels match. Only the labels the mesh keeps of a
    /// namespace (`NAMESPACE_LABELS`) and `kubernetes.io/metadata.name`
    /// can match; `None` is a selector the mesh cannot evaluate
    /// (`matchExpressions`), which matches nothing: a waypoint is not
    /// opened wider than its owner can be shown to have meant.
    Selector(Option<Labels>),
}

/// The label Kubernetes puts on every namespace with its own name.
pub const NAMESPACE_NAME_LABEL: &str = "kubernetes.io/metadata.name";

impl AllowedNamespaces {
    /// Whether objects in `namespace` (with its kept labels) may use a
    /// waypoint of `gateway_namespace`. Its own namespace always may.
    pub fn allows(
        &self,
        gateway_namespace: &str,
        namespace: &str,
        labels: Option<&Labels>,
    ) -> bool {
        if namespace == gateway_namespace {
            return true;
        }
        match self {
            Self::Same => false,
            Self::All => true,
            Self::Selector(None) => false,
            Self::Selector(Some(want)) => want.iter().all(|(k, v)| {
                if k == NAMESPACE_NAME_LABEL {
                    return v == namespace;
                }
                labels.and_then(|l| l.get(k)) == Some(v)
            }),
        }
    }
}

impl Gateway {
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }
}
