//! The Kubernetes objects of a local-mode file (Namespace, Pod,
//! AuthorizationPolicy, PeerAuthentication) in their usual shape, plus one
//! document of the program's own kind. Errors name the file, the line and
//! the field.
use std::{
    collections::{BTreeMap, HashSet},
    net::IpAddr,
    path::Path,
};

use serde::{Deserialize, de::DeserializeOwned};

use super::ConfigError;
use crate::policy::{self, AuthorizationPolicy, PeerAuthentication, model};

pub type Labels = BTreeMap<String, String>;

#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ObjectMeta {
    pub name: String,
    #[serde(default)]
    pub namespace: Option<String>,
    #[serde(default)]
    pub uid: Option<String>,
    #[serde(default)]
    pub labels: Labels,
    #[serde(default)]
    pub annotations: Labels,
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

#[derive(Debug, Clone, Deserialize)]
struct PolicyDoc<S> {
    metadata: ObjectMeta,
    #[serde(default)]
    spec: S,
}

/// A pod anywhere in the cluster, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Workload {
    pub name: String,
    pub namespace: String,
    pub service_account: String,
    pub node: Option<String>,
    pub ips: Vec<IpAddr>,
    pub labels: Labels,
    pub annotations: Labels,
    /// Whether the pod or its namespace asks to be in the mesh.
    pub enrolled: bool,
}

impl Workload {
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Objects {
    pub workloads: Vec<Workload>,
    pub namespaces: BTreeMap<String, Labels>,
    pub authorization: Vec<AuthorizationPolicy>,
    pub peer_authentication: Vec<PeerAuthentication>,
}

/// A local-mode file's text.
pub fn read(file: &Path) -> Result<String, ConfigError> {
    std::fs::read_to_string(file).map_err(|source| ConfigError::Read {
        file: file.to_owned(),
        source,
    })
}

/// One YAML document and the line of the file where it starts.
struct Document<'a> {
    line: usize,
    text: &'a str,
}

fn split_documents(text: &str) -> Vec<Document<'_>> {
    let mut docs = Vec::new();
    let mut start = 0;
    let mut start_line = 1;
    let mut offset = 0;
    for (i, line) in text.split_inclusive('\n').enumerate() {
        let trimmed = line.trim_end();
        if trimmed == "---" || trimmed.starts_with("--- ") {
            docs.push(Document {
                line: start_line,
                text: &text[start..offset],
            });
            start = offset + line.len();
            start_line = i + 2;
        }
        offset += line.len();
    }
    docs.push(Document {
        line: start_line,
        text: &text[start..],
    });
    docs
}

impl Document<'_> {
    fn parse<T: DeserializeOwned>(&self, file: &Path, what: &str) -> Result<T, ConfigError> {
        serde_yaml::from_str(self.text).map_err(|e| {
            let line = e
                .location()
                .map(|l| self.line + l.line() - 1)
                .unwrap_or(self.line);
            // serde_yaml appends "at line L column C" relative to the document.
            let message = e.to_string();
            let message = message
                .split(" at line ")
                .next()
                .unwrap_or(&message)
                .to_owned();
            ConfigError::Yaml {
                file: file.to_owned(),
                line,
                what: what.to_owned(),
                message,
            }
        })
    }
}

fn invalid_at(file: &Path, line: usize, field: String, problem: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        file: file.to_owned(),
        line,
        field,
        problem: problem.into(),
    }
}

/// Parses every document. `own_kind` documents (e.g. AgentConfig) are
/// returned as they are with their line, for the caller to read.
pub fn parse(
    file: &Path,
    text: &str,
    own_kind: &str,
) -> Result<(Objects, Vec<(usize, serde_yaml::Value)>), ConfigError> {
    let mut objects = Objects::default();
    let mut own = Vec::new();
    let mut seen_pods = HashSet::new();
    let mut seen_ips = BTreeMap::new();
    for doc in split_documents(text) {
        let value: serde_yaml::Value = doc.parse(file, "document")?;
        if value.is_null() {
            continue;
        }
        let kind = value
            .get("kind")
            .and_then(|k| k.as_str())
            .unwrap_or(own_kind)
            .to_owned();
        let name = value
            .get("metadata")
            .and_then(|m| m.get("name"))
            .and_then(|n| n.as_str())
            .unwrap_or_default()
            .to_owned();
        let namespace = value
            .get("metadata")
            .and_then(|m| m.get("namespace"))
            .and_then(|n| n.as_str())
            .unwrap_or("default")
            .to_owned();
        let what = format!("{kind} {namespace}/{name}");
        const KINDS: [&str; 4] = [
            "Namespace",
            "Pod",
            "AuthorizationPolicy",
            "PeerAuthentication",
        ];
        if kind != own_kind && !KINDS.contains(&kind.as_str()) {
            return Err(ConfigError::UnknownKind {
                file: file.to_owned(),
                line: doc.line,
                kind,
                own_kind: own_kind.to_owned(),
            });
        }
        if kind != own_kind && name.is_empty() {
            return Err(invalid_at(
                file,
                doc.line,
                format!("{kind} metadata.name"),
                "must not be empty",
            ));
        }
        match kind.as_str() {
            k if k == own_kind => own.push((doc.line, value)),
            "Namespace" => {
                let ns: NamespaceDoc = doc.parse(file, &format!("Namespace {name}"))?;
                objects
                    .namespaces
                    .insert(ns.metadata.name, ns.metadata.labels);
            }
            "Pod" => {
                let pod: PodDoc = doc.parse(file, &what)?;
                if !seen_pods.insert((namespace.clone(), name.clone())) {
                    return Err(invalid_at(
                        file,
                        doc.line,
                        format!("{what}: metadata.name"),
                        "appears twice",
                    ));
                }
                let mut ips = Vec::new();
                for (i, ip) in pod.status.pod_ips.iter().enumerate() {
                    let field = format!("{what}: status.podIPs[{i}].ip");
                    let parsed: IpAddr = ip.ip.parse().map_err(|_| {
                        invalid_at(
                            file,
                            doc.line,
                            field.clone(),
                            format!("`{}` is not an IP address", ip.ip),
                        )
                    })?;
                    if let Some(owner) = seen_ips.insert(parsed, what.clone()) {
                        return Err(invalid_at(
                            file,
                            doc.line,
                            field,
                            format!("{parsed} is already the address of {owner}"),
                        ));
                    }
                    ips.push(parsed);
                }
                objects.workloads.push(Workload {
                    name,
                    namespace,
                    service_account: pod
                        .spec
                        .service_account_name
                        .unwrap_or_else(|| "default".into()),
                    node: pod.spec.node_name,
                    ips,
                    labels: pod.metadata.labels,
                    annotations: pod.metadata.annotations,
                    enrolled: false,
                });
            }
            "AuthorizationPolicy" => {
                let p: PolicyDoc<model::AuthorizationPolicySpec> = doc.parse(file, &what)?;
                let compiled = AuthorizationPolicy::compile(
                    &namespace,
                    &name,
                    &p.metadata.annotations,
                    &p.spec,
                )
                .map_err(|e| {
                    invalid_at(file, doc.line, format!("{what}: {}", e.field), e.problem)
                })?;
                objects.authorization.extend(compiled);
            }
            "PeerAuthentication" => {
                let p: PolicyDoc<model::PeerAuthenticationSpec> = doc.parse(file, &what)?;
                objects
                    .peer_authentication
                    .push(policy::PeerAuthentication {
                        name: format!("{namespace}/{name}"),
                        namespace,
                        spec: p.spec,
                    });
            }
            _ => {
                return Err(ConfigError::UnknownKind {
                    file: file.to_owned(),
                    line: doc.line,
                    kind,
                    own_kind: own_kind.to_owned(),
                });
            }
        }
    }
    for w in &mut objects.workloads {
        let ns_label = objects
            .namespaces
            .get(&w.namespace)
            .and_then(|l| l.get(super::DATAPLANE_LABEL));
        w.enrolled = match w.labels.get(super::DATAPLANE_LABEL).map(String::as_str) {
            Some("none") => false,
            Some("enabled") => true,
            _ => ns_label.map(String::as_str) == Some("enabled"),
        };
    }
    Ok((objects, own))
}

/// Reads the program's own document into its type, with file and line.
pub fn own_document<T: DeserializeOwned>(
    file: &Path,
    own_kind: &str,
    own: Vec<(usize, serde_yaml::Value)>,
) -> Result<T, ConfigError> {
    let mut own = own.into_iter();
    let (line, value) = own.next().ok_or_else(|| {
        invalid_at(
            file,
            1,
            own_kind.to_owned(),
            format!("missing; add a document with `kind: {own_kind}`"),
        )
    })?;
    if let Some((again, _)) = own.next() {
        return Err(invalid_at(
            file,
            again,
            own_kind.to_owned(),
            "appears twice; keep one",
        ));
    }
    serde_yaml::from_value(value).map_err(|e| ConfigError::Yaml {
        file: file.to_owned(),
        line,
        what: own_kind.to_owned(),
        message: e.to_string(),
    })
}
