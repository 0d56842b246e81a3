//! The agent's configuration file: a multi-document YAML. One `AgentConfig`
//! document holds the node's own facts. In local mode the rest are
//! Kubernetes objects in their usual shape (Namespace, Pod, Service,
//! EndpointSlice, AuthorizationPolicy, PeerAuthentication), so a
//! `kubectl get -o yaml` dump reads almost as is; in Kubernetes mode the
//! objects come from the API server instead.
pub mod objects;

use std::{
    collections::BTreeMap,
    net::{IpAddr, SocketAddr},
    path::{Path, PathBuf},
    time::Duration,
};

use serde::{Deserialize, Serialize};

pub use objects::{ObjectMeta, Workload};

pub use crate::discovery::model::DATAPLANE_LABEL;
use crate::discovery::{
    store::Store,
    view::{MeshView, ViewSettings},
};

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

/// Durations written as "30s", "5m", "24h".
pub mod duration {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    /// The form `deserialize` reads back ("10s", "1h 30m", "1day").
    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&humantime::format_duration(*d))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let s = String::deserialize(d)?;
        humantime::parse_duration(&s).map_err(|e| {
            serde::de::Error::custom(format!("`{s}` is not a duration like 30s, 5m or 24h: {e}"))
        })
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
}

impl Default for DatapathSettings {
    fn default() -> Self {
        Self {
            splice: false,
            flows: true,
            bpf_log: false,
        }
    }
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

/// An enrolled pod of this node, with where its netns is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalPod {
    pub uid: String,
    pub name: String,
    pub namespace: String,
    pub service_account: String,
    pub ips: Vec<IpAddr>,
    pub netns: PathBuf,
    pub labels: BTreeMap<String, String>,
}

impl LocalPod {
    pub fn new(w: &Workload, netns: PathBuf) -> Self {
        Self {
            uid: w.uid.clone(),
            name: w.name.clone(),
            namespace: w.namespace.clone(),
            service_account: w.service_account.clone(),
            ips: w.ips.clone(),
            netns,
            labels: w.labels.clone(),
        }
    }

    /// A local-mode pod: its netns is named by the `mesh.io/netns` annotation.
    pub fn from_annotation(w: &Workload) -> Option<Self> {
        let netns = w.annotations.get(NETNS_ANNOTATION)?;
        Some(Self::new(w, PathBuf::from(netns)))
    }

    /// `<namespace>/<name>`, the pod's name for logs and pins.
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }
}

/// Everything the node agent reads from the file.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    pub agent: AgentConfig,
    /// The file's objects (local mode; empty in Kubernetes mode).
    pub store: Store,
}

impl NodeConfig {
    pub fn load(file: &Path, node_name: Option<&str>) -> Result<Self, ConfigError> {
        Self::parse(file, &objects::read(file)?, node_name)
    }

    pub fn parse(file: &Path, text: &str, node_name: Option<&str>) -> Result<Self, ConfigError> {
        let (store, own) = objects::parse(file, text, "AgentConfig")?;
        let mut agent: AgentConfig = objects::own_document(file, "AgentConfig", own)?;
        if let Some(n) = node_name {
            agent.node_name = n.to_owned();
        }
        let invalid = |field: &str, problem: &str| ConfigError::Invalid {
            file: file.to_owned(),
            line: 1,
            field: field.to_owned(),
            problem: problem.to_owned(),
        };
        if agent.node_name.is_empty() {
            return Err(invalid(
                "AgentConfig.nodeName",
                "must not be empty; set it or pass --node-name",
            ));
        }
        if !agent
            .node_name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.')
        {
            return Err(invalid(
                "AgentConfig.nodeName",
                "use letters, digits, '-' and '.' only (it names a bpffs directory)",
            ));
        }
        if crate::identity::Identity::new(&agent.trust_domain, "ns", "sa").is_err() {
            return Err(invalid(
                "AgentConfig.trustDomain",
                "use letters, digits, '-', '_' and '.' only (e.g. cluster.local)",
            ));
        }
        if agent.discovery == DiscoveryMode::Kubernetes && !store.pods.is_empty() {
            return Err(invalid(
                "AgentConfig.discovery",
                "is kubernetes, so objects come from the API server; remove the Pod documents from this file or use `discovery: local`",
            ));
        }
        for (field, value) in [
            (
                "AgentConfig.limits.handshakeTimeout",
                agent.limits.handshake_timeout,
            ),
            (
                "AgentConfig.limits.connectTimeout",
                agent.limits.connect_timeout,
            ),
        ] {
            if value.is_zero() {
                return Err(invalid(field, "must be longer than 0s (e.g. 10s)"));
            }
        }
        for (field, value) in [
            (
                "AgentConfig.limits.maxConnections",
                agent.limits.max_connections,
            ),
            (
                "AgentConfig.limits.maxConnectionsPerSource",
                agent.limits.max_connections_per_source,
            ),
        ] {
            if value == 0 {
                return Err(invalid(
                    field,
                    "must be at least 1 (0 would refuse everything)",
                ));
            }
        }
        let config = Self { agent, store };
        config.check_local_pods(file)?;
        Ok(config)
    }

    pub fn view_settings(&self) -> ViewSettings {
        ViewSettings {
            trust_domain: self.agent.trust_domain.clone(),
            root_namespace: self.agent.root_namespace.clone(),
        }
    }

    pub fn view(&self) -> MeshView {
        MeshView::build(&self.store, &self.view_settings())
    }

    /// Where this node's programs and maps are pinned.
    pub fn pin_dir(&self) -> PathBuf {
        self.agent
            .bpffs_root
            .join("mesh")
            .join(&self.agent.node_name)
    }

    /// The file's enrolled pods on this node, with their netns paths.
    pub fn enrolled_pods(&self) -> Vec<LocalPod> {
        let view = self.view();
        view.enrolled_on(&self.agent.node_name)
            .filter_map(|w| LocalPod::from_annotation(w))
            .collect()
    }

    /// Local-mode pods on this node need their netns named.
    fn check_local_pods(&self, file: &Path) -> Result<(), ConfigError> {
        for w in self.store.pods.values() {
            if w.node.as_deref() != Some(self.agent.node_name.as_str()) || w.host_network {
                continue;
            }
            let invalid = |field: String, problem: &str| ConfigError::Invalid {
                file: file.to_owned(),
                line: 1,
                field: format!("Pod {}: {field}", w.key()),
                problem: problem.to_owned(),
            };
            if w.ips.is_empty() && !w.finished {
                return Err(invalid(
                    "status.podIPs".into(),
                    "a pod on this node needs at least one IP",
                ));
            }
            if !w.annotations.contains_key(NETNS_ANNOTATION) {
                return Err(invalid(
                    format!("metadata.annotations[\"{NETNS_ANNOTATION}\"]"),
                    "missing; set it to the pod's netns path (e.g. /run/netns/<name>)",
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
kind: AgentConfig
nodeName: node-1
cgroupRoot: /sys/fs/cgroup/unified/n1
---
apiVersion: v1
kind: Namespace
metadata:
  name: shop
  labels: {mesh.io/dataplane-mode: enabled}
---
apiVersion: v1
kind: Pod
metadata:
  name: web
  namespace: shop
  annotations: {mesh.io/netns: /run/netns/web}
spec: {nodeName: node-1, serviceAccountName: web}
status: {podIPs: [{ip: 10.244.1.10}]}
---
apiVersion: v1
kind: Pod
metadata:
  name: legacy
  namespace: shop
  labels: {mesh.io/dataplane-mode: none}
  annotations: {mesh.io/netns: /run/netns/legacy}
spec: {nodeName: node-1}
status: {podIPs: [{ip: 10.244.1.11}]}
---
apiVersion: v1
kind: Pod
metadata: {name: elsewhere, namespace: shop}
spec: {nodeName: node-2}
"#;

    fn parse(text: &str) -> Result<NodeConfig, ConfigError> {
        NodeConfig::parse(Path::new("mesh.yaml"), text, None)
    }

    #[test]
    fn reads_node_and_enrollment() {
        let cfg = parse(GOOD).unwrap();
        assert_eq!(cfg.agent.node_name, "node-1");
        assert_eq!(cfg.agent.bpffs_root, PathBuf::from("/sys/fs/bpf"));
        assert!(!cfg.agent.datapath.splice, "splicing is opt-in");
        assert_eq!(cfg.pin_dir(), PathBuf::from("/sys/fs/bpf/mesh/node-1"));
        let enrolled = cfg.enrolled_pods();
        let names: Vec<_> = enrolled.iter().map(|p| p.key()).collect();
        assert_eq!(names, vec!["shop/web".to_owned()]);
        assert_eq!(enrolled[0].service_account, "web");
        assert_eq!(enrolled[0].netns, PathBuf::from("/run/netns/web"));
        assert_eq!(cfg.store.pods.len(), 3);
    }

    #[test]
    fn yaml_errors_name_the_document_and_position() {
        let err = parse("kind: AgentConfig\nnodeName: [oops\n")
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("mesh.yaml:3: document:"), "{err}");
        // Lines count from the top of the file, not of the document.
        let text = GOOD.replace(
            "spec: {nodeName: node-1, serviceAccountName: web}",
            "spec: {nodeName: [node-1}",
        );
        let err = parse(&text).unwrap_err().to_string();
        assert!(err.starts_with("mesh.yaml:18: "), "{err}");
        let text = format!(
            "{GOOD}---\nkind: AuthorizationPolicy\nmetadata: {{name: p, namespace: shop}}\nspec:\n  rules:\n  - from:\n    - source: {{principal: [x]}}\n"
        );
        let err = parse(&text).unwrap_err().to_string();
        assert!(
            err.starts_with("mesh.yaml:41: AuthorizationPolicy shop/p:")
                && err.contains("principal"),
            "{err}"
        );
    }

    #[test]
    fn limits_default_to_ztunnel_and_envoy_values_and_zero_is_refused() {
        let cfg = parse(GOOD).unwrap();
        assert_eq!(cfg.agent.limits.handshake_timeout, Duration::from_secs(10));
        assert_eq!(cfg.agent.limits.connect_timeout, Duration::from_secs(10));
        assert_eq!(cfg.agent.limits.drain_grace, Duration::from_secs(30));
        let text = GOOD.replacen(
            "kind: AgentConfig\n",
            "kind: AgentConfig\nlimits: {connectTimeout: 2s, maxConnectionsPerSource: 5}\n",
            1,
        );
        let cfg = parse(&text).unwrap();
        assert_eq!(cfg.agent.limits.connect_timeout, Duration::from_secs(2));
        assert_eq!(cfg.agent.limits.max_connections_per_source, 5);
        for (bad, field) in [
            (
                "handshakeTimeout: 0s",
                "AgentConfig.limits.handshakeTimeout",
            ),
            ("maxConnections: 0", "AgentConfig.limits.maxConnections"),
        ] {
            let text = GOOD.replacen(
                "kind: AgentConfig\n",
                &format!("kind: AgentConfig\nlimits: {{{bad}}}\n"),
                1,
            );
            let err = parse(&text).unwrap_err().to_string();
            assert!(err.contains(field), "{err}");
        }
    }

    /// The test bed writes its nodes' configs from these types; what they
    /// write must read back as the same config, defaults included.
    #[test]
    fn a_serialized_agent_config_reads_back_unchanged() {
        // `new` holds the defaults a bare document gets.
        let bare = parse("apiVersion: mesh.io/v1alpha1\nkind: AgentConfig\nnodeName: node-1\n")
            .unwrap()
            .agent;
        assert_eq!(bare, AgentConfig::new("node-1"));
        let mut agent = AgentConfig::new("node-1");
        agent.cgroup_root = PathBuf::from("/sys/fs/cgroup/unified/n1");
        agent.datapath.splice = true;
        agent.ca = Some(CaSettings {
            cert_lifetime: Duration::from_secs(30),
            ..CaSettings::new("10.0.0.254:15012", "/etc/mesh/root.pem", "/etc/mesh/token")
        });
        agent.limits.connect_timeout = Duration::from_millis(1500);
        agent.telemetry.flow_series_idle = Duration::from_secs(24 * 3600 + 90);
        let text = serde_yaml::to_string(&agent).unwrap();
        for line in [
            "kind: AgentConfig",
            "nodeName: node-1",
            "  certLifetime: 30s",
            "  handshakeTimeout: 10s",
            "  maxConnectionsPerSource: 1000",
        ] {
            assert!(text.lines().any(|l| l == line), "{line:?} in\n{text}");
        }
        assert_eq!(parse(&text).unwrap().agent, agent, "{text}");
        // Without a CA, and in Kubernetes mode: the optional parts too.
        let mut agent = AgentConfig::new("node-2");
        agent.discovery = DiscoveryMode::Kubernetes;
        let text = serde_yaml::to_string(&agent).unwrap();
        assert!(!text.contains("ca:"), "{text}");
        assert_eq!(parse(&text).unwrap().agent, agent, "{text}");
    }

    #[test]
    fn unknown_fields_are_named() {
        let err = parse("kind: AgentConfig\nnodeName: n\ncgroupRot: /x\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("cgroupRot"), "{err}");
    }

    #[test]
    fn bad_pod_ip_names_the_field() {
        let text = GOOD.replace("10.244.1.10", "10.244.1.999");
        let err = parse(&text).unwrap_err().to_string();
        assert!(err.contains("Pod shop/web: status.podIPs[0].ip"), "{err}");
    }

    #[test]
    fn missing_netns_names_the_annotation_and_fix() {
        let text = GOOD.replace("annotations: {mesh.io/netns: /run/netns/web}", "labels: {}");
        let err = parse(&text).unwrap_err().to_string();
        assert!(
            err.contains("mesh.io/netns") && err.contains("/run/netns/"),
            "{err}"
        );
    }

    #[test]
    fn duplicate_ip_is_refused() {
        let text = GOOD.replace("10.244.1.11", "10.244.1.10");
        let err = parse(&text).unwrap_err().to_string();
        assert!(
            err.contains("10.244.1.10 is already the address of Pod shop/web"),
            "{err}"
        );
    }

    #[test]
    fn unknown_kind_and_missing_agent_config() {
        let err = parse("kind: Gadget\n").unwrap_err().to_string();
        assert!(
            err.contains("Gadget") && err.contains("AgentConfig"),
            "{err}"
        );
        let err = parse("kind: Namespace\nmetadata: {name: a}\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("AgentConfig: missing"), "{err}");
    }

    #[test]
    fn the_examples_parse() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("..")
            .join("examples");
        let node = NodeConfig::load(&root.join("node-local.yaml"), None).unwrap();
        assert_eq!(node.enrolled_pods().len(), 1);
        let view = node.view();
        assert_eq!(view.sizes.pods, 3);
        assert_eq!(view.sizes.services, 2);
        let db = view.service_at("10.96.0.20".parse().unwrap()).unwrap();
        assert_eq!(
            db.port(5432).unwrap().endpoints,
            ["10.244.2.10:5432".parse().unwrap()]
        );
        let billing = view.service("shop/billing").unwrap();
        assert_eq!(
            billing.port(80).unwrap().endpoints,
            ["192.168.50.10:8080".parse().unwrap()]
        );
        assert_eq!(view.policies.authorization.len(), 1);
        assert_eq!(view.policies.peer_authentication.len(), 1);
        assert!(node.agent.ca.is_some());
        let ca = crate::ca::config::CaFile::load(&root.join("ca-local.yaml")).unwrap();
        assert_eq!(ca.config.nodes.len(), 2);
        assert_eq!(ca.workloads.len(), 2);
    }
}
