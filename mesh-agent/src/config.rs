//! Local-mode configuration: a multi-document YAML file. One `AgentConfig`
//! document holds the node's own facts; the rest are Kubernetes objects in
//! their usual shape (`Namespace`, `Pod`), so the same file grows into the
//! discovery source and a `kubectl get -o yaml` dump reads almost as is.
use std::{
    collections::{BTreeMap, HashSet},
    net::IpAddr,
    path::{Path, PathBuf},
};

use serde::Deserialize;

/// Pod annotation that tells a local-mode agent where the pod's netns is.
pub const NETNS_ANNOTATION: &str = "mesh.io/netns";
/// Label (on a Namespace or a Pod) that enrolls pods into the mesh.
pub const DATAPLANE_LABEL: &str = "mesh.io/dataplane-mode";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{file}: cannot read: {source}")]
    Read {
        file: PathBuf,
        source: std::io::Error,
    },
    #[error("{file}: document {doc}: {source}")]
    Yaml {
        file: PathBuf,
        doc: usize,
        source: serde_yaml::Error,
    },
    #[error(
        "{file}: document {doc}: `kind: {kind}` is not supported here; use AgentConfig, Namespace or Pod"
    )]
    UnknownKind {
        file: PathBuf,
        doc: usize,
        kind: String,
    },
    #[error("{file}: {field}: {problem}")]
    Invalid {
        file: PathBuf,
        field: String,
        problem: String,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AgentConfig {
    #[serde(default)]
    pub api_version: Option<String>,
    #[serde(default)]
    pub kind: Option<String>,
    /// This node's name; pods with another `spec.nodeName` are not ours.
    pub node_name: String,
    /// The cgroup-v2 directory whose subtree holds this node's pods and the
    /// agent (/sys/fs/cgroup on most nodes, /sys/fs/cgroup/unified on hybrid hosts).
    #[serde(default = "default_cgroup_root")]
    pub cgroup_root: PathBuf,
    /// The bpffs mount; state is pinned under `<bpffsRoot>/mesh/<nodeName>`.
    #[serde(default = "default_bpffs_root")]
    pub bpffs_root: PathBuf,
    #[serde(default)]
    pub datapath: DatapathSettings,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
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

#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ObjectMeta {
    pub name: String,
    #[serde(default)]
    pub namespace: Option<String>,
    #[serde(default)]
    pub uid: Option<String>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
struct PodDoc {
    metadata: ObjectMeta,
    #[serde(default)]
    spec: PodSpec,
    #[serde(default)]
    status: PodStatus,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct PodSpec {
    #[serde(default)]
    node_name: Option<String>,
    #[serde(default)]
    service_account_name: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct PodStatus {
    #[serde(default, rename = "podIPs")]
    pod_ips: Vec<PodIp>,
}

#[derive(Debug, Clone, Deserialize)]
struct PodIp {
    ip: String,
}

#[derive(Debug, Clone, Deserialize)]
struct NamespaceDoc {
    metadata: ObjectMeta,
}

/// A pod this node's agent is responsible for, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalPod {
    pub name: String,
    pub namespace: String,
    pub service_account: String,
    pub ips: Vec<IpAddr>,
    pub netns: PathBuf,
    pub labels: BTreeMap<String, String>,
    /// Whether the pod or its namespace asks to be in the mesh.
    pub enrolled: bool,
}

impl LocalPod {
    /// `<namespace>/<name>`, the pod's name for logs and pins.
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }
}

/// Everything the node agent reads from the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeConfig {
    pub agent: AgentConfig,
    /// Pods scheduled on this node, enrolled or not.
    pub pods: Vec<LocalPod>,
}

impl NodeConfig {
    pub fn load(file: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(file).map_err(|source| ConfigError::Read {
            file: file.to_owned(),
            source,
        })?;
        Self::parse(file, &text)
    }

    pub fn parse(file: &Path, text: &str) -> Result<Self, ConfigError> {
        let mut agent = None;
        let mut pods = Vec::new();
        let mut namespaces = BTreeMap::new();
        for (i, document) in serde_yaml::Deserializer::from_str(text).enumerate() {
            let doc = i + 1;
            let yaml_err = |source| ConfigError::Yaml {
                file: file.to_owned(),
                doc,
                source,
            };
            let value = serde_yaml::Value::deserialize(document).map_err(yaml_err)?;
            if value.is_null() {
                continue;
            }
            let kind = value
                .get("kind")
                .and_then(|k| k.as_str())
                .unwrap_or("AgentConfig")
                .to_owned();
            match kind.as_str() {
                "AgentConfig" => {
                    if agent.is_some() {
                        return Err(invalid(file, "AgentConfig", "appears twice; keep one"));
                    }
                    agent = Some(serde_yaml::from_value::<AgentConfig>(value).map_err(yaml_err)?);
                }
                "Pod" => pods.push(serde_yaml::from_value::<PodDoc>(value).map_err(yaml_err)?),
                "Namespace" => {
                    let ns = serde_yaml::from_value::<NamespaceDoc>(value).map_err(yaml_err)?;
                    namespaces.insert(ns.metadata.name.clone(), ns.metadata.labels);
                }
                _ => {
                    return Err(ConfigError::UnknownKind {
                        file: file.to_owned(),
                        doc,
                        kind,
                    });
                }
            }
        }
        let agent = agent.ok_or_else(|| {
            invalid(
                file,
                "AgentConfig",
                "missing; add a document with `kind: AgentConfig` and `nodeName`",
            )
        })?;
        if agent.node_name.is_empty() {
            return Err(invalid(file, "AgentConfig.nodeName", "must not be empty"));
        }
        if !agent
            .node_name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.')
        {
            return Err(invalid(
                file,
                "AgentConfig.nodeName",
                "use letters, digits, '-' and '.' only (it names a bpffs directory)",
            ));
        }
        let pods = local_pods(file, &agent, pods, &namespaces)?;
        Ok(Self { agent, pods })
    }

    /// Where this node's programs and maps are pinned.
    pub fn pin_dir(&self) -> PathBuf {
        self.agent
            .bpffs_root
            .join("mesh")
            .join(&self.agent.node_name)
    }

    pub fn enrolled_pods(&self) -> impl Iterator<Item = &LocalPod> {
        self.pods.iter().filter(|p| p.enrolled)
    }
}

fn invalid(file: &Path, field: &str, problem: &str) -> ConfigError {
    ConfigError::Invalid {
        file: file.to_owned(),
        field: field.to_owned(),
        problem: problem.to_owned(),
    }
}

fn local_pods(
    file: &Path,
    agent: &AgentConfig,
    docs: Vec<PodDoc>,
    namespaces: &BTreeMap<String, BTreeMap<String, String>>,
) -> Result<Vec<LocalPod>, ConfigError> {
    let mut seen_names = HashSet::new();
    let mut seen_ips = HashSet::new();
    let mut pods = Vec::new();
    for doc in docs {
        let namespace = doc
            .metadata
            .namespace
            .clone()
            .unwrap_or_else(|| "default".into());
        let name = doc.metadata.name.clone();
        let field = |f: &str| format!("Pod {namespace}/{name}: {f}");
        if name.is_empty() {
            return Err(invalid(file, "Pod metadata.name", "must not be empty"));
        }
        if doc.spec.node_name.as_deref() != Some(agent.node_name.as_str()) {
            // Another node's pod: the discovery source will want it, the datapath does not.
            continue;
        }
        if !seen_names.insert((namespace.clone(), name.clone())) {
            return Err(invalid(file, &field("metadata.name"), "appears twice"));
        }
        let mut ips = Vec::new();
        for (i, ip) in doc.status.pod_ips.iter().enumerate() {
            let parsed: IpAddr = ip.ip.parse().map_err(|_| {
                invalid(
                    file,
                    &field(&format!("status.podIPs[{i}].ip")),
                    &format!("`{}` is not an IP address", ip.ip),
                )
            })?;
            if !seen_ips.insert(parsed) {
                return Err(invalid(
                    file,
                    &field(&format!("status.podIPs[{i}].ip")),
                    &format!("{parsed} is already another pod's address"),
                ));
            }
            ips.push(parsed);
        }
        if ips.is_empty() {
            return Err(invalid(
                file,
                &field("status.podIPs"),
                "a pod on this node needs at least one IP",
            ));
        }
        let netns = doc
            .metadata
            .annotations
            .get(NETNS_ANNOTATION)
            .map(PathBuf::from)
            .ok_or_else(|| {
                invalid(
                    file,
                    &field(&format!("metadata.annotations[\"{NETNS_ANNOTATION}\"]")),
                    "missing; set it to the pod's netns path (e.g. /run/netns/<name>)",
                )
            })?;
        let ns_label = namespaces
            .get(&namespace)
            .and_then(|l| l.get(DATAPLANE_LABEL));
        let pod_label = doc.metadata.labels.get(DATAPLANE_LABEL);
        let enrolled = match pod_label.map(String::as_str) {
            Some("none") => false,
            Some("enabled") => true,
            _ => ns_label.map(String::as_str) == Some("enabled"),
        };
        pods.push(LocalPod {
            name,
            namespace,
            service_account: doc
                .spec
                .service_account_name
                .unwrap_or_else(|| "default".into()),
            ips,
            netns,
            labels: doc.metadata.labels,
            enrolled,
        });
    }
    Ok(pods)
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
        NodeConfig::parse(Path::new("mesh.yaml"), text)
    }

    #[test]
    fn reads_node_and_enrollment() {
        let cfg = parse(GOOD).unwrap();
        assert_eq!(cfg.agent.node_name, "node-1");
        assert_eq!(cfg.agent.bpffs_root, PathBuf::from("/sys/fs/bpf"));
        assert!(!cfg.agent.datapath.splice, "splicing is opt-in");
        assert_eq!(cfg.pin_dir(), PathBuf::from("/sys/fs/bpf/mesh/node-1"));
        let names: Vec<_> = cfg.pods.iter().map(|p| (p.key(), p.enrolled)).collect();
        assert_eq!(
            names,
            vec![("shop/web".into(), true), ("shop/legacy".into(), false)]
        );
        assert_eq!(cfg.pods[0].service_account, "web");
        assert_eq!(cfg.enrolled_pods().count(), 1);
    }

    #[test]
    fn yaml_errors_name_the_document_and_position() {
        let err = parse("kind: AgentConfig\nnodeName: [oops\n")
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("mesh.yaml: document 1:"), "{err}");
        assert!(err.contains("line"), "{err}");
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
        assert!(err.contains("already another pod's address"), "{err}");
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
}
