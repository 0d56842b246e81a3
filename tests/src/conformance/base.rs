//! The suite's base (`conformance/mesh/manifests.yaml`) as the test bed
//! runs it. A node's local file takes no `Deployment`, and a Service
//! without a `clusterIP` has no address to route by, so the manifests are
//! translated, document by document: Namespaces stay (with the labels the
//! bed adds, e.g. the one binding them to the waypoint), Services stay with
//! the `clusterIP` Kubernetes would have assigned, and each Deployment
//! becomes the one pod its single replica would be, named as Kubernetes
//! names it (`<deployment>-<template hash>-<pod hash>`), since the suite
//! tells backends apart by that name.
use std::{collections::BTreeMap, net::Ipv4Addr};

use serde::Deserialize as _;
use serde_yaml::{Mapping, Value};

/// One replica of a Deployment: the pod the test bed creates for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeploymentPod {
    /// The Deployment's name (`echo-v1`).
    pub deployment: String,
    pub namespace: String,
    /// The pod's name: `<deployment>-<10 chars>-<5 chars>`.
    pub pod: String,
    /// The pod template's labels.
    pub labels: BTreeMap<String, String>,
}

/// What the bed loads in place of the manifests.
#[derive(Debug, Clone, PartialEq)]
pub struct Base {
    /// The Namespace and Service documents, as YAML, for every node's file.
    pub documents: String,
    /// The pods standing in for the Deployments, in the manifests' order.
    pub pods: Vec<DeploymentPod>,
}

/// Why the manifests cannot be translated.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BaseError {
    #[error("manifests document {index}: {problem}")]
    Document { index: usize, problem: String },
    #[error("Service {0} has no clusterIP in the test's table; give it one")]
    NoClusterIp(String),
    #[error("{kind} {key}: the test bed has no stand-in for this kind")]
    UnknownKind { kind: String, key: String },
}

/// The addresses Kubernetes would assign, by `<namespace>/<name>`.
pub type ClusterIps<'a> = &'a [(&'a str, Ipv4Addr)];
/// Extra labels for Namespaces, by name.
pub type NamespaceLabels<'a> = &'a [(&'a str, &'a str, &'a str)];

/// Translates `manifests` (multi-document YAML): each Service gets its
/// address from `cluster_ips`, each Namespace named in
/// `namespace_labels` (namespace, key, value) those labels, each
/// Deployment its pod. Any other kind is refused, as is a Service
/// without an address: the bed would silently lack it.
pub fn translate(
    manifests: &str,
    cluster_ips: ClusterIps<'_>,
    namespace_labels: NamespaceLabels<'_>,
) -> Result<Base, BaseError> {
    let mut documents = String::new();
    let mut pods = Vec::new();
    for (index, doc) in serde_yaml::Deserializer::from_str(manifests).enumerate() {
        let bad = |problem: String| BaseError::Document { index, problem };
        let mut value = Value::deserialize(doc).map_err(|e| bad(e.to_string()))?;
        if value.is_null() {
            continue;
        }
        let kind = text(&value, &["kind"]).ok_or_else(|| bad("no kind".into()))?;
        let name =
            text(&value, &["metadata", "name"]).ok_or_else(|| bad("no metadata.name".into()))?;
        let namespace = text(&value, &["metadata", "namespace"]).unwrap_or("default".into());
        let key = format!("{namespace}/{name}");
        match kind.as_str() {
            "Namespace" => {
                for (_, k, v) in namespace_labels.iter().filter(|(ns, ..)| *ns == name) {
                    mapping_at(&mut value, &["metadata", "labels"])
                        .map_err(bad)?
                        .insert((*k).into(), (*v).into());
                }
                push(&mut documents, &value);
            }
            "Service" => {
                let ip = cluster_ips
                    .iter()
                    .find(|(k, _)| *k == key)
                    .map(|(_, ip)| *ip)
                    .ok_or_else(|| BaseError::NoClusterIp(key.clone()))?;
                mapping_at(&mut value, &["spec"])
                    .map_err(bad)?
                    .insert("clusterIP".into(), ip.to_string().into());
                push(&mut documents, &value);
            }
            "Deployment" => {
                let labels = value
                    .get("spec")
                    .and_then(|s| s.get("template"))
                    .and_then(|t| t.get("metadata"))
                    .and_then(|m| m.get("labels"))
                    .and_then(Value::as_mapping)
                    .ok_or_else(|| bad(format!("Deployment {key}: no template labels")))?
                    .iter()
                    .filter_map(|(k, v)| Some((k.as_str()?.to_owned(), v.as_str()?.to_owned())))
                    .collect();
                pods.push(DeploymentPod {
                    pod: pod_name(&namespace, &name),
                    deployment: name,
                    namespace,
                    labels,
                });
            }
            _ => return Err(BaseError::UnknownKind { kind, key }),
        }
    }
    Ok(Base { documents, pods })
}

fn text(v: &Value, path: &[&str]) -> Option<String> {
    path.iter()
        .try_fold(v, |v, k| v.get(*k))?
        .as_str()
        .map(str::to_owned)
}

/// The mapping at `path`, created (empty) where missing.
fn mapping_at<'v>(v: &'v mut Value, path: &[&str]) -> Result<&'v mut Mapping, String> {
    let mut at = v;
    for (i, k) in path.iter().enumerate() {
        let map = at
            .as_mapping_mut()
            .ok_or_else(|| format!("{} is not a mapping", path[..i].join(".")))?;
        at = map
            .entry((*k).into())
            .or_insert_with(|| Value::Mapping(Mapping::new()));
    }
    at.as_mapping_mut()
        .ok_or_else(|| format!("{} is not a mapping", path.join(".")))
}

fn push(out: &mut String, v: &Value) {
    out.push_str("---\n");
    // A Value read from YAML writes back as YAML.
    out.push_str(&serde_yaml::to_string(v).expect("a YAML value serializes"));
}

/// The characters Kubernetes uses for generated name suffixes (no vowels,
/// no look-alikes).
const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";

/// `<deployment>-<10>-<5>`: the shape of a Deployment's pod name, which
/// the suite cuts back to the Deployment's name by dropping the last two
/// `-` parts. The suffixes are derived from namespace and name, so the
/// same Deployment in two namespaces gets two pods (the bed's pod names
/// are unique across namespaces) and a rerun gets the same names.
pub fn pod_name(namespace: &str, deployment: &str) -> String {
    // FNV-1a: a fixed, dependency-free spread of the name's bytes.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in namespace.bytes().chain([b'/']).chain(deployment.bytes()) {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    let mut chars = std::iter::from_fn(|| {
        let c = ALPHABET[(h % ALPHABET.len() as u64) as usize];
        h /= ALPHABET.len() as u64;
        Some(c as char)
    });
    let hash: String = chars.by_ref().take(10).collect();
    let suffix: String = chars.take(5).collect();
    format!("{deployment}-{hash}-{suffix}")
}

#[cfg(test)]
mod tests {
    use super::*;

    const MANIFESTS: &str = include_str!("../../conformance/mesh/manifests.yaml");
    const MESH: &str = "gateway-conformance-mesh";

    fn ips() -> Vec<(&'static str, Ipv4Addr)> {
        vec![
            (
                "gateway-conformance-mesh/echo-v1",
                Ipv4Addr::new(10, 96, 1, 1),
            ),
            (
                "gateway-conformance-mesh/echo-v2",
                Ipv4Addr::new(10, 96, 1, 2),
            ),
            ("gateway-conformance-mesh/echo", Ipv4Addr::new(10, 96, 1, 3)),
        ]
    }

    #[test]
    fn the_suites_base_becomes_namespaces_services_and_one_pod_per_deployment() {
        let labels = [(MESH, "istio.io/use-waypoint", "waypoint")];
        let base = translate(MANIFESTS, &ips(), &labels).unwrap();
        let docs: Vec<Value> = serde_yaml::Deserializer::from_str(&base.documents)
            .map(|d| Value::deserialize(d).unwrap())
            .collect();
        let kinds: Vec<&str> = docs.iter().map(|d| d["kind"].as_str().unwrap()).collect();
        assert_eq!(
            kinds,
            ["Namespace", "Service", "Service", "Service", "Namespace"]
        );
        assert_eq!(
            docs[0]["metadata"]["labels"],
            serde_yaml::from_str::<Value>(
                "{gateway-conformance: mesh, istio.io/use-waypoint: waypoint}"
            )
            .unwrap()
        );
        // The consumer namespace keeps only its own label.
        assert_eq!(
            docs[4]["metadata"]["labels"],
            serde_yaml::from_str::<Value>("{gateway-conformance: mesh-consumer}").unwrap()
        );
        assert_eq!(docs[1]["metadata"]["name"], "echo-v1");
        assert_eq!(docs[1]["spec"]["clusterIP"], "10.96.1.1");
        assert_eq!(docs[3]["spec"]["clusterIP"], "10.96.1.3");
        // The rest of a Service is the upstream text.
        assert_eq!(
            docs[3]["spec"]["ports"][4]["appProtocol"],
            "kubernetes.io/h2c"
        );
        assert_eq!(docs[3]["spec"]["selector"]["app"], "echo");

        let pods: Vec<(&str, &str)> = base
            .pods
            .iter()
            .map(|p| (p.deployment.as_str(), p.namespace.as_str()))
            .collect();
        assert_eq!(
            pods,
            [
                ("echo-v1", MESH),
                ("echo-v2", MESH),
                ("echo-v1", "gateway-conformance-mesh-consumer")
            ]
        );
        assert_eq!(base.pods[1].labels["app"], "echo");
        assert_eq!(base.pods[1].labels["version"], "v2");
        assert_ne!(base.pods[0].pod, base.pods[2].pod);
    }

    #[test]
    fn pod_names_cut_back_to_their_deployment_as_the_suite_does() {
        let name = pod_name(MESH, "echo-v1");
        let parts: Vec<&str> = name.split('-').collect();
        assert_eq!(parts.len(), 4, "{name}");
        assert_eq!(parts[..2].join("-"), "echo-v1");
        assert_eq!(parts[2].len(), 10);
        assert_eq!(parts[3].len(), 5);
        assert!(
            parts[2..]
                .iter()
                .all(|p| p.bytes().all(|b| ALPHABET.contains(&b)))
        );
        assert_eq!(name, pod_name(MESH, "echo-v1"), "stable across runs");
    }

    #[test]
    fn a_service_without_an_address_or_an_unknown_kind_is_refused() {
        let e = translate(MANIFESTS, &ips()[..2], &[]).unwrap_err();
        assert_eq!(
            e,
            BaseError::NoClusterIp("gateway-conformance-mesh/echo".into())
        );
        let e = translate("kind: ConfigMap\nmetadata: {name: x}\n", &[], &[]).unwrap_err();
        assert!(e.to_string().contains("ConfigMap default/x"), "{e}");
    }
}
