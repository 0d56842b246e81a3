//! The agent's own configuration: the `AgentConfig` document of its YAML
//! file (mesh.io/v1alpha1), its settings, and how a file's problems are
//! reported (file, line, field). In local mode the same file also holds
//! Kubernetes objects; `mesh_discovery::file` reads those.
pub mod duration;

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use serde::{Deserialize, Serialize};

/// Label (on a Namespace or a Pod) that enrolls pods into the mesh.
pub const DATAPLANE_LABEL: &str = "mesh.io/dataplane-mode";

/// Pod annotation that tells a local-mode agent where the pod's netns is.
pub const NETNS_ANNOTATION: &str = "mesh.io/netns";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{file}: cannot read: {source}")]
    Read {
        file: PathBuf,
        source: std::io::Error,
    },
    #[error("{file}:{line}: {what}: {message}")]
    Yaml {
        file: PathBuf,
        line: usize,
        what: String,
        message: String,
    },
    #[error(
        "{file}:{line}: `kind: {kind}` is not supported here; use {own_kind}, Namespace, Pod, Service, EndpointSlice, AuthorizationPolicy or PeerAuthentication"
    )]
    UnknownKind {
        file: PathBuf,
        line: usize,
        kind: String,
        own_kind: String,
    },
    #[error("{file}:{line}: {field}: {problem}")]
    Invalid {
        file: PathBuf,
        line: usize,
        field: String,
        problem: String,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AgentConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_version: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// This node's name; pods with another `spec.nodeName` are not ours.
    /// `mesh-agent node --node-name` overrides it (a DaemonSet passes the
    /// node's name from the downward API).
    #[serde(default)]
    pub node_name: String,
    /// Where the cluster's objects come from: `local` (this file, watched
    /// for changes) or `kubernetes` (the API server, via in-cluster config
    /// or the kubeconfig).
    #[serde(default)]
    pub discovery: DiscoveryMode,
    /// The host's /proc, where a Kubernetes-mode agent finds each pod's
    /// netns from its uid (the DaemonSet runs with hostPID).
    #[serde(default = "default_proc_root")]
    pub proc_root: PathBuf,
    /// The cgroup-v2 directory whose subtree holds this node's pods and the
    /// agent (/sys/fs/cgroup on most nodes, /sys/fs/cgroup/unified on hybrid hosts).
    #[serde(default = "default_cgroup_root")]
    pub cgroup_root: PathBuf,
    /// The bpffs mount; state is pinned under `<bpffsRoot>/mesh/<nodeName>`.
    #[serde(default = "default_bpffs_root")]
    pub bpffs_root: PathBuf,
    #[serde(default)]
    pub datapath: DatapathSettings,
    /// The trust domain of workload identities (spiffe://<trustDomain>/...).
    #[serde(default = "default_trust_domain")]
    pub trust_domain: String,
    /// Policies here without a selector apply to the whole mesh (Istio's root namespace).
    #[serde(default = "default_root_namespace")]
    pub root_namespace: String,
    /// Where workload certificates come from. Without it the agent forwards
    /// plaintext (a datapath-only mode for benchmarks and bring-up).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca: Option<CaSettings>,
    #[serde(default)]
    pub telemetry: TelemetrySettings,
    #[serde(default)]
    pub limits: LimitSettings,
    /// The Unix socket where the `mesh-cni` plugin announces new pods'
    /// sandboxes, so that a pod is enrolled before its app runs (the chart
    /// sets `/var/run/mesh/cni.sock`, `mesh_cni::protocol::DEFAULT_SOCKET`).
    /// Unset, nothing listens and pods are enrolled when discovery reports
    /// them; it is unset by default because every agent needs a socket of
    /// its own, and one host may run several (the test bed does).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cni_socket: Option<PathBuf>,
    /// The `gatewayClassName` of the Gateways that declare waypoints
    /// (Istio's is `istio-waypoint`); Gateways of other classes are not
    /// the mesh's and are ignored.
    #[serde(default = "default_waypoint_class")]
    pub waypoint_class: String,
}

impl AgentConfig {
    /// A node's config with every default, as a document holding only
    /// `nodeName` reads. It names its kind and version, so a file written
    /// from it is recognised as the node's own document.
    pub fn new(node_name: impl Into<String>) -> Self {
        Self {
            api_version: Some("mesh.io/v1alpha1".into()),
            kind: Some("AgentConfig".into()),
            node_name: node_name.into(),
            discovery: DiscoveryMode::default(),
            proc_root: default_proc_root(),
            cgroup_root: default_cgroup_root(),
            bpffs_root: default_bpffs_root(),
            datapath: DatapathSettings::default(),
            trust_domain: default_trust_domain(),
            root_namespace: default_root_namespace(),
            ca: None,
            telemetry: TelemetrySettings::default(),
            limits: LimitSettings::default(),
            cni_socket: None,
            waypoint_class: default_waypoint_class(),
        }
    }
}

/// What any peer on the network can hold of the agent, and for how long.
/// Defaults follow ztunnel and Envoy's edge-hardening guide where they
/// state one (each field says which).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LimitSettings {
    /// From TCP accept on 15008 to the first CONNECT request: TLS, the
    /// HTTP/2 preface and the request must all arrive within it (Envoy's
    /// edge guide bounds the TLS handshake and the request headers; one
    /// deadline for the whole chain is stricter).
    #[serde(default = "ten_seconds", with = "duration")]
    pub handshake_timeout: Duration,
    /// Every upstream dial: pods, Service endpoints, HBONE peers. A Service
    /// endpoint that does not answer within it is skipped for the next
    /// (ztunnel and Envoy's edge guide: 10 s).
    #[serde(default = "ten_seconds", with = "duration")]
    pub connect_timeout: Duration,
    /// On SIGTERM, how long open connections may finish before the rest are
    /// reset (Kubernetes' default termination grace).
    #[serde(default = "default_drain_grace", with = "duration")]
    pub drain_grace: Duration,
    /// Connections the agent holds at once, all listeners together; new ones
    /// past it are refused (existing ones are kept).
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// Connections one source address may hold at once on one pod's
    /// listeners.
    #[serde(default = "default_max_connections_per_source")]
    pub max_connections_per_source: usize,
    /// Bytes the agent may hold, all tunnels together, for apps that have
    /// stopped reading; past it, the stuck streams holding the most are
    /// reset (Envoy's overload manager does the same for high-memory
    /// streams).
    #[serde(default = "default_buffer_budget")]
    pub buffer_budget_bytes: usize,
}

impl Default for LimitSettings {
    fn default() -> Self {
        Self {
            handshake_timeout: ten_seconds(),
            connect_timeout: ten_seconds(),
            drain_grace: default_drain_grace(),
            max_connections: default_max_connections(),
            max_connections_per_source: default_max_connections_per_source(),
            buffer_budget_bytes: default_buffer_budget(),
        }
    }
}

fn ten_seconds() -> Duration {
    Duration::from_secs(10)
}
fn default_drain_grace() -> Duration {
    Duration::from_secs(30)
}
fn default_max_connections() -> usize {
    50_000
}
fn default_max_connections_per_source() -> usize {
    1_000
}
/// 64 stuck streams' full windows: a quarter GiB is what apps that do not
/// read may pin in a node's agent.
fn default_buffer_budget() -> usize {
    256 * 1024 * 1024
}

/// Where the agent serves metrics, readiness and its admin API, and how
/// much it records.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TelemetrySettings {
    /// Prometheus exposition (`/metrics`).
    #[serde(default = "default_metrics_addr")]
    pub metrics_addr: SocketAddr,
    /// Readiness (`/healthz/ready`) and the read-only status summary that
    /// `mesh status` reads (`/status`, `/flows`).
    #[serde(default = "default_status_addr")]
    pub status_addr: SocketAddr,
    /// The admin API (config dump, datapath, log level). Loopback only by
    /// default: it can change the agent's log level.
    #[serde(default = "default_admin_addr")]
    pub admin_addr: SocketAddr,
    /// One JSON line per connection at close.
    #[serde(default = "yes")]
    pub access_log: bool,
    /// Most (source, destination, port, direction) series the kernel flow
    /// metrics keep; records beyond it are counted in
    /// mesh_flow_series_overflow_total instead.
    #[serde(default = "default_flow_series_limit")]
    pub flow_series_limit: usize,
    /// A flow series not updated for this long is dropped (its pods are
    /// probably gone), so churn does not fill the limit.
    #[serde(default = "default_flow_series_idle", with = "duration")]
    pub flow_series_idle: Duration,
}

impl Default for TelemetrySettings {
    fn default() -> Self {
        Self {
            metrics_addr: default_metrics_addr(),
            status_addr: default_status_addr(),
            admin_addr: default_admin_addr(),
            access_log: true,
            flow_series_limit: default_flow_series_limit(),
            flow_series_idle: default_flow_series_idle(),
        }
    }
}

fn default_metrics_addr() -> SocketAddr {
    SocketAddr::from(([0, 0, 0, 0], 15020))
}
fn default_status_addr() -> SocketAddr {
    SocketAddr::from(([0, 0, 0, 0], 15021))
}
fn default_admin_addr() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 15000))
}
fn default_flow_series_limit() -> usize {
    10_000
}
fn default_flow_series_idle() -> Duration {
    Duration::from_secs(3600)
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CaSettings {
    /// `host:port` of `mesh-agent ca`.
    pub address: String,
    /// The DNS name in the CA's serving certificate.
    #[serde(default = "default_ca_server_name")]
    pub server_name: String,
    /// The mesh's root certificate (PEM): the CA and every workload chain to it.
    pub root_cert_file: PathBuf,
    /// This node's bootstrap credential, as the CA's `nodes[].tokenFile` holds it.
    pub token_file: PathBuf,
    /// Requested workload certificate lifetime (the CA may cap it), e.g. "24h", "30s".
    #[serde(default = "default_cert_lifetime", with = "duration")]
    pub cert_lifetime: Duration,
}

impl CaSettings {
    /// The CA at `address`, with the default server name and lifetime.
    pub fn new(
        address: impl Into<String>,
        root_cert_file: impl Into<PathBuf>,
        token_file: impl Into<PathBuf>,
    ) -> Self {
        Self {
            address: address.into(),
            server_name: default_ca_server_name(),
            root_cert_file: root_cert_file.into(),
            token_file: token_file.into(),
            cert_lifetime: default_cert_lifetime(),
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DiscoveryMode {
    #[default]
    Local,
    Kubernetes,
}

fn default_proc_root() -> PathBuf {
    PathBuf::from("/proc")
}
/// The default waypoint class (`AgentConfig.waypointClass`).
pub const DEFAULT_WAYPOINT_CLASS: &str = "mesh-waypoint";

fn default_waypoint_class() -> String {
    DEFAULT_WAYPOINT_CLASS.into()
}
fn default_trust_domain() -> String {
    "cluster.local".into()
}
fn default_root_namespace() -> String {
    "istio-system".into()
}
fn default_ca_server_name() -> String {
    "mesh-ca".into()
}
fn default_cert_lifetime() -> Duration {
    Duration::from_secs(24 * 3600)
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DatapathSettings {
    /// Splice local app<->agent hops with sockmap/sk_msg. Off by default:
    /// on Linux 6.18 a blocking read() on a spliced socket can return EAGAIN
    /// when the peer's FIN arrives (tcp_bpf_recvmsg), which breaks apps that
    /// use blocking sockets; poll/epoll-based apps are unaffected.
    #[serde(default)]
    pub splice: bool,
    /// Record per-connection flow statistics in the kernel.
    #[serde(default = "yes")]
    pub flows: bool,
    /// Forward the kernel programs' aya-log output to the agent's log.
    #[serde(default)]
    pub bpf_log: bool,
    /// Which source address apps see on inbound connections.
    #[serde(default)]
    pub source_ip: SourceIp,
}

impl Default for DatapathSettings {
    fn default() -> Self {
        Self {
            splice: false,
            flows: true,
            bpf_log: false,
            source_ip: SourceIp::default(),
        }
    }
}

/// The source address an app sees on a connection the agent delivers to it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SourceIp {
    /// The client's own address (the source pod's for mesh traffic), as
    /// without the mesh. A pod where the agent cannot arrange it gets
    /// `loopback`, with a line saying why.
    #[default]
    Preserve,
    /// 127.0.0.6 (`::1` for IPv6) for every connection.
    Loopback,
}

fn yes() -> bool {
    true
}
fn default_cgroup_root() -> PathBuf {
    PathBuf::from("/sys/fs/cgroup")
}
fn default_bpffs_root() -> PathBuf {
    PathBuf::from("/sys/fs/bpf")
}
