//! The node's configuration file as the agent reads it: its own
//! `AgentConfig` document, checked, and in local mode the cluster objects
//! beside it (see `file`), from which the node's enrolled pods are read.
use std::{
    collections::BTreeMap,
    net::IpAddr,
    path::{Path, PathBuf},
};

use mesh_config::{AgentConfig, ConfigError, DiscoveryMode, NETNS_ANNOTATION};

use crate::{
    model::Workload,
    store::Store,
    view::{MeshView, ViewSettings},
};

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
        Self::parse(file, &crate::file::read(file)?, node_name)
    }

    pub fn parse(file: &Path, text: &str, node_name: Option<&str>) -> Result<Self, ConfigError> {
        let (store, own) = crate::file::parse(file, text, "AgentConfig")?;
        let mut agent: AgentConfig = crate::file::own_document(file, "AgentConfig", own)?;
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
        if mesh_identity::Identity::new(&agent.trust_domain, "ns", "sa").is_err() {
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
            waypoint_class: self.agent.waypoint_class.clone(),
            scope: crate::scope::Scope::Node,
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
            // With a CNI socket, the pod's sandbox announces its netns
            // when the runtime creates it; until then the pod is not
            // enrolled (and, chained after the network plugin, not running).
            if !w.annotations.contains_key(NETNS_ANNOTATION) && self.agent.cni_socket.is_none() {
                return Err(invalid(
                    format!("metadata.annotations[\"{NETNS_ANNOTATION}\"]"),
                    "missing; set it to the pod's netns path (e.g. /run/netns/<name>), or set AgentConfig.cniSocket and have the mesh-cni plugin announce it",
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use mesh_config::CaSettings;

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
    fn with_a_cni_socket_the_netns_may_come_from_the_sandbox() {
        let text = GOOD.replace("annotations: {mesh.io/netns: /run/netns/web}", "labels: {}");
        let text = text.replacen(
            "kind: AgentConfig\n",
            "kind: AgentConfig\ncniSocket: /var/run/mesh/cni.sock\n",
            1,
        );
        let cfg = parse(&text).unwrap();
        assert_eq!(
            cfg.agent.cni_socket,
            Some(PathBuf::from("/var/run/mesh/cni.sock"))
        );
        // Not enrolled from the file: its netns is not known yet.
        assert!(cfg.enrolled_pods().is_empty());
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
    }
}
