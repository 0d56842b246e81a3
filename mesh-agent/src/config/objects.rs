//! The Kubernetes objects of a local-mode file (Namespace, Pod, Service,
//! EndpointSlice, AuthorizationPolicy, PeerAuthentication) in their usual
//! shape, plus one document of the program's own kind. Errors name the file, the line and
//! the field.
use std::{
    collections::{BTreeMap, HashSet},
    path::Path,
};

use k8s_openapi::api::{
    core::v1::{Namespace, Node as K8sNode, Pod, Service as K8sService},
    discovery::v1::EndpointSlice as K8sSlice,
};

use serde::{Deserialize, de::DeserializeOwned};

use super::ConfigError;
use crate::{
    discovery::{convert, store::Store},
    policy::{self, AuthorizationPolicy, model},
};

pub use crate::discovery::model::{Labels, Workload};

/// metadata as this program's own documents carry it.
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
struct PolicyDoc<S> {
    metadata: ObjectMeta,
    #[serde(default)]
    spec: S,
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
    /// Reads an already parsed document into its type; only on error is
    /// the text parsed again, for the line and column of the problem.
    fn typed<T: DeserializeOwned>(
        &self,
        value: serde_yaml::Value,
        file: &Path,
        what: &str,
    ) -> Result<T, ConfigError> {
        match serde_yaml::from_value(value) {
            Ok(v) => Ok(v),
            Err(_) => self.parse(file, what),
        }
    }

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

/// The Kubernetes kinds a local file may hold.
pub const KINDS: [&str; 7] = [
    "Namespace",
    "Node",
    "Pod",
    "Service",
    "EndpointSlice",
    "AuthorizationPolicy",
    "PeerAuthentication",
];

/// Parses every document into a store. `own_kind` documents (e.g.
/// AgentConfig) are returned as they are with their line, for the caller
/// to read.
pub fn parse(
    file: &Path,
    text: &str,
    own_kind: &str,
) -> Result<(Store, Vec<(usize, serde_yaml::Value)>), ConfigError> {
    let mut store = Store::default();
    let mut own = Vec::new();
    let mut seen = HashSet::new();
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
        if kind != own_kind && !KINDS.contains(&kind.as_str()) {
            return Err(ConfigError::UnknownKind {
                file: file.to_owned(),
                line: doc.line,
                kind,
                own_kind: own_kind.to_owned(),
            });
        }
        if kind == own_kind {
            own.push((doc.line, value));
            continue;
        }
        if name.is_empty() {
            return Err(invalid_at(
                file,
                doc.line,
                format!("{kind} metadata.name"),
                "must not be empty",
            ));
        }
        let key = format!("{namespace}/{name}");
        if kind != "Namespace" && kind != "Node" && !seen.insert((kind.clone(), key.clone())) {
            return Err(invalid_at(
                file,
                doc.line,
                format!("{what}: metadata.name"),
                "appears twice",
            ));
        }
        let bad = |e: convert::Invalid| {
            invalid_at(file, doc.line, format!("{what}: {}", e.field), e.problem)
        };
        match kind.as_str() {
            "Namespace" => {
                let ns: Namespace = doc.typed(value, file, &format!("Namespace {name}"))?;
                let (name, labels) = convert::namespace(&ns);
                store.namespaces.apply(name, labels);
            }
            "Node" => {
                let node: K8sNode = doc.typed(value, file, &format!("Node {name}"))?;
                let addrs = convert::node_addresses(&node).map_err(bad)?;
                store.nodes.apply(name, addrs);
            }
            "Pod" => {
                let pod: Pod = doc.typed(value, file, &what)?;
                let mut w = convert::workload(&pod).map_err(bad)?;
                w.namespace = namespace.clone();
                if !w.finished {
                    for (i, ip) in w.ips.iter().enumerate() {
                        if let Some(owner) = seen_ips.insert(*ip, what.clone()) {
                            return Err(invalid_at(
                                file,
                                doc.line,
                                format!("{what}: status.podIPs[{i}].ip"),
                                format!("{ip} is already the address of {owner}"),
                            ));
                        }
                    }
                }
                store.pods.apply(w.uid.clone(), w);
            }
            "Service" => {
                let svc: K8sService = doc.typed(value, file, &what)?;
                let mut svc = convert::service(&svc).map_err(bad)?;
                svc.namespace = namespace.clone();
                store.services.apply(key, svc);
            }
            "EndpointSlice" => {
                let slice: K8sSlice = doc.typed(value, file, &what)?;
                let mut slice = convert::endpoint_slice(&slice).map_err(bad)?;
                slice.namespace = namespace.clone();
                store.slices.apply(key, slice);
            }
            "AuthorizationPolicy" => {
                let p: PolicyDoc<model::AuthorizationPolicySpec> = doc.typed(value, file, &what)?;
                let compiled = AuthorizationPolicy::compile(
                    &namespace,
                    &name,
                    &p.metadata.annotations,
                    &p.spec,
                )
                .map_err(|e| {
                    invalid_at(file, doc.line, format!("{what}: {}", e.field), e.problem)
                })?;
                store.authorization.apply(key, compiled);
            }
            "PeerAuthentication" => {
                let p: PolicyDoc<model::PeerAuthenticationSpec> = doc.typed(value, file, &what)?;
                store.peer_authentication.apply(
                    key.clone(),
                    policy::PeerAuthentication {
                        name: key,
                        namespace,
                        spec: p.spec,
                    },
                );
            }
            _ => unreachable!("kinds are checked above"),
        }
    }
    Ok((store, own))
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
