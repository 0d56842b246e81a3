//! The Kubernetes objects of a local-mode file (Namespace, Pod, Service,
//! EndpointSlice, AuthorizationPolicy, PeerAuthentication, Gateway,
//! HTTPRoute, GRPCRoute) in their usual shape, plus one document of the
//! program's own kind; ReferenceGrants are accepted and ignored. Errors
//! name the file, the line and the field.
use std::{
    collections::{BTreeMap, HashSet},
    path::Path,
    sync::Once,
};

use k8s_openapi::api::{
    core::v1::{Namespace, Node as K8sNode, Pod, Service as K8sService},
    discovery::v1::EndpointSlice as K8sSlice,
};
use mesh_config::ConfigError;
use mesh_policy::{
    AuthorizationPolicy, PolicySync,
    authz::PolicyError,
    load,
    load::{Failure, Loaded},
    model,
};
use serde::{Deserialize, de::DeserializeOwned};
use tracing::{info, warn};

pub use crate::model::{Labels, Workload};
use crate::{convert, store::Store};

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

/// Decoded only so that serde_yaml positions an error in a policy
/// document; the policy itself is read by `mesh_policy::load`.
#[allow(dead_code)]
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
pub const KINDS: [&str; 15] = [
    "Namespace",
    "Node",
    "Pod",
    "Service",
    "EndpointSlice",
    "AuthorizationPolicy",
    "PeerAuthentication",
    "Gateway",
    "HTTPRoute",
    "GRPCRoute",
    "HTTPFaultInjection",
    "ReferenceGrant",
    "HTTPLocalRateLimitPolicy",
    "RequestAuthentication",
    "DestinationRule",
];

/// What a policy document that cannot be read or enforced does to the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BadPolicies {
    /// Refuse the file, naming the line and field: at start, where the
    /// operator is there to fix it and nothing is served yet.
    Refuse,
    /// Accept the file with a fail-closed stand-in for the policy (deny
    /// all, or STRICT, in its scope), logged with line and field: on a
    /// reload, where keeping the last good file would leave a new DENY
    /// policy unenforced while everything else moved on.
    StandIn,
}

/// Parses every document into a store, refusing bad policies. `own_kind`
/// documents (e.g. AgentConfig) are returned as they are with their line,
/// for the caller to read.
pub fn parse(
    file: &Path,
    text: &str,
    own_kind: &str,
) -> Result<(Store, Vec<(usize, serde_yaml::Value)>), ConfigError> {
    parse_with(file, text, own_kind, BadPolicies::Refuse)
}

/// A policy document's spec as JSON, the form `mesh_policy::load` reads; a spec
/// JSON cannot hold (a map key that is not a string or number) is
/// unreadable.
fn spec_json(value: &serde_yaml::Value) -> Result<Option<serde_json::Value>, PolicyError> {
    value
        .get("spec")
        .map(serde_json::to_value)
        .transpose()
        .map_err(|e| PolicyError {
            field: "spec".into(),
            problem: e.to_string(),
        })
}

/// Logs what loading found, or turns a failure into the file's error.
fn judge<T>(
    file: &Path,
    doc: &Document<'_>,
    what: &str,
    mode: BadPolicies,
    loaded: &Loaded<T>,
    positioned: impl FnOnce() -> Result<(), ConfigError>,
) -> Result<(), ConfigError> {
    for e in &loaded.ignored {
        warn!(file = %file.display(), line = doc.line, object = what, field = %e.field, problem = %e.problem, "unknown field in a DENY rule ignored");
    }
    let Some(failure) = &loaded.failure else {
        return Ok(());
    };
    let e = match failure {
        Failure::Unreadable(e) | Failure::Invalid(e) => e,
    };
    if mode == BadPolicies::Refuse {
        // serde_yaml names the line of the problem itself when it can.
        if matches!(failure, Failure::Unreadable(_)) {
            positioned()?;
        }
        return Err(invalid_at(
            file,
            doc.line,
            format!("{what}: {}", e.field),
            e.problem.clone(),
        ));
    }
    let stand_in = if what.starts_with("PeerAuthentication") {
        "treating it as STRICT in its scope"
    } else {
        "denying all traffic in its scope"
    };
    let why = match failure {
        Failure::Unreadable(_) => "cannot be read",
        Failure::Invalid(_) => "cannot be enforced as written",
    };
    warn!(
        file = %file.display(),
        line = doc.line,
        object = what,
        field = %e.field,
        problem = %e.problem,
        "{what} {why}; {stand_in} until it is fixed"
    );
    Ok(())
}

/// A spec decoded from the document's text, as `Document::typed` falls
/// back to: from text, an untagged `80` also reads as the string "80".
fn typed_from_text<S: DeserializeOwned + Default>(text: &str) -> Result<S, serde_yaml::Error> {
    serde_yaml::from_str::<PolicyDoc<S>>(text).map(|d| d.spec)
}

fn annotations_of(value: &serde_yaml::Value) -> Labels {
    // Unreadable annotations read as none: the policy is then enforced,
    // never silently dry-run.
    value
        .get("metadata")
        .and_then(|m| m.get("annotations"))
        .and_then(|a| serde_yaml::from_value(a.clone()).ok())
        .unwrap_or_default()
}

/// The same document as waypoints read it (`mesh_policy::l7`): nothing
/// unless it names `targetRefs`; read as `load_authorization` reads it.
fn load_waypoint_authorization(
    value: &serde_yaml::Value,
    text: &str,
    namespace: &str,
    name: &str,
) -> Loaded<Option<mesh_policy::l7::WaypointPolicy>> {
    let annotations = annotations_of(value);
    let spec = value.get("spec").cloned().unwrap_or_default();
    let typed = if spec.is_null() {
        Ok(model::AuthorizationPolicySpec::default())
    } else {
        serde_yaml::from_value::<model::AuthorizationPolicySpec>(spec)
            .or_else(|_| typed_from_text(text))
    };
    if let Ok(spec) = typed {
        return mesh_policy::l7::compiled(namespace, name, &annotations, &spec, Vec::new());
    }
    let json = spec_json(value).ok().flatten();
    mesh_policy::l7::load(namespace, name, &annotations, json.as_ref())
}

/// Loads an AuthorizationPolicy document: as YAML first (how the file has
/// always been read), else through `mesh_policy::load`, which names the field
/// and applies the DENY-rule leniency.
fn load_authorization(
    value: &serde_yaml::Value,
    text: &str,
    namespace: &str,
    name: &str,
) -> Loaded<Option<AuthorizationPolicy>> {
    let annotations = annotations_of(value);
    let spec = value.get("spec").cloned().unwrap_or_default();
    let typed = if spec.is_null() {
        Ok(model::AuthorizationPolicySpec::default())
    } else {
        serde_yaml::from_value::<model::AuthorizationPolicySpec>(spec)
            .or_else(|_| typed_from_text(text))
    };
    if let Ok(spec) = typed {
        return load::compiled(namespace, name, &annotations, &spec, Vec::new());
    }
    match spec_json(value) {
        Ok(json) => load::authorization(namespace, name, &annotations, json.as_ref()),
        Err(e) => Loaded {
            policy: Some(AuthorizationPolicy::deny_all(namespace, name, None)),
            ignored: Vec::new(),
            failure: Some(Failure::Unreadable(e)),
        },
    }
}

fn load_peer_authentication(
    value: &serde_yaml::Value,
    text: &str,
    namespace: &str,
    name: &str,
) -> Loaded<mesh_policy::PeerAuthentication> {
    let spec = value.get("spec").cloned().unwrap_or_default();
    let typed = if spec.is_null() {
        Ok(model::PeerAuthenticationSpec::default())
    } else {
        serde_yaml::from_value::<model::PeerAuthenticationSpec>(spec)
            .or_else(|_| typed_from_text(text))
    };
    if let Ok(spec) = typed {
        return Loaded {
            policy: mesh_policy::PeerAuthentication {
                name: format!("{namespace}/{name}"),
                namespace: namespace.to_owned(),
                spec,
            },
            ignored: Vec::new(),
            failure: None,
        };
    }
    match spec_json(value) {
        Ok(json) => load::peer_authentication(namespace, name, json.as_ref()),
        Err(e) => Loaded {
            policy: mesh_policy::PeerAuthentication::strict(namespace, name, None),
            ignored: Vec::new(),
            failure: Some(Failure::Unreadable(e)),
        },
    }
}

/// `parse`, with the choice of what a bad policy does to the file.
pub fn parse_with(
    file: &Path,
    text: &str,
    own_kind: &str,
    bad_policies: BadPolicies,
) -> Result<(Store, Vec<(usize, serde_yaml::Value)>), ConfigError> {
    let mut store = Store {
        // The file is read whole: its policies are complete at once.
        policy_sync: PolicySync::COMPLETE,
        ..Store::default()
    };
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
        let route_error = |e: mesh_route::RouteError| {
            invalid_at(
                file,
                doc.line,
                format!("{what}: {}", e.field),
                e.problem.to_string(),
            )
        };
        match kind.as_str() {
            "Namespace" => {
                let ns: Namespace = doc.typed(value, file, &format!("Namespace {name}"))?;
                let (name, labels) = convert::namespace(&ns).map_err(bad)?;
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
                let loaded = load_authorization(&value, doc.text, &namespace, &name);
                judge(file, &doc, &what, bad_policies, &loaded, || {
                    doc.parse::<PolicyDoc<model::AuthorizationPolicySpec>>(file, &what)
                        .map(drop)
                })?;
                let waypoint = load_waypoint_authorization(&value, doc.text, &namespace, &name);
                if loaded.failure.is_none() {
                    judge(file, &doc, &what, bad_policies, &waypoint, || {
                        doc.parse::<PolicyDoc<model::AuthorizationPolicySpec>>(file, &what)
                            .map(drop)
                    })?;
                }
                store.authorization.apply(
                    key,
                    crate::store::CompiledPolicy {
                        node: loaded.policy,
                        waypoint: waypoint.policy.map(std::sync::Arc::new),
                    },
                );
            }
            "PeerAuthentication" => {
                let loaded = load_peer_authentication(&value, doc.text, &namespace, &name);
                judge(file, &doc, &what, bad_policies, &loaded, || {
                    doc.parse::<PolicyDoc<model::PeerAuthenticationSpec>>(file, &what)
                        .map(drop)
                })?;
                store.peer_authentication.apply(key, loaded.policy);
            }
            "Gateway" => {
                let gw: convert::GatewayObject = doc.typed(value, file, &what)?;
                let mut gw = convert::gateway(&gw).map_err(bad)?;
                gw.namespace = namespace.clone();
                store.gateways.apply(key, gw);
            }
            "HTTPRoute" => {
                let mut route: mesh_route::spec::HttpRoute = doc.typed(value, file, &what)?;
                route.metadata.namespace = Some(namespace.clone());
                let compiled = mesh_route::compile_http_route(&route).map_err(route_error)?;
                store.http_routes.apply(key, compiled);
            }
            "GRPCRoute" => {
                let mut route: mesh_route::spec::GrpcRoute = doc.typed(value, file, &what)?;
                route.metadata.namespace = Some(namespace.clone());
                let compiled = mesh_route::compile_grpc_route(&route).map_err(route_error)?;
                store.grpc_routes.apply(key, compiled);
            }
            "HTTPLocalRateLimitPolicy" => {
                let policy: crate::ratelimit::Document = doc.typed(value, file, &what)?;
                let compiled =
                    crate::ratelimit::compile(&namespace, &name, &policy.spec).map_err(|e| {
                        invalid_at(file, doc.line, format!("{what}: {}", e.field), e.problem)
                    })?;
                store.rate_limits.apply(key, compiled);
            }
            "DestinationRule" => {
                let rule: crate::destination_rule::Document = doc.typed(value, file, &what)?;
                let compiled =
                    crate::destination_rule::compile(&namespace, &name, None, &rule.spec).map_err(
                        |e| invalid_at(file, doc.line, format!("{what}: {}", e.field), e.problem),
                    )?;
                crate::destination_rule::log_ignored_subsets(&what, &compiled);
                store.destination_rules.apply(key, compiled);
            }
            "RequestAuthentication" => {
                let policy: mesh_policy::request_authn::Document = doc.typed(value, file, &what)?;
                let compiled = mesh_policy::request_authn::compile(&namespace, &name, &policy.spec)
                    .map_err(|e| {
                        invalid_at(file, doc.line, format!("{what}: {}", e.field), e.problem)
                    })?;
                store.request_authentications.apply(key, compiled);
            }
            "HTTPFaultInjection" => {
                let object: mesh_route::fault::HttpFaultInjection =
                    doc.typed(value, file, &what)?;
                let fault = mesh_route::fault::compile(&object.spec).map_err(|e| {
                    invalid_at(file, doc.line, format!("{what}: {}", e.field), e.problem)
                })?;
                store.faults.apply(key, fault);
            }
            // Accepted and ignored rather than refused as an unknown kind:
            // Istio accepts ReferenceGrants (its Gateways use them), so
            // manifests carried over from Istio hold them, and a mesh route
            // needs none (GEP-1294). Local mode has no Gateways but
            // waypoints, so there is nothing else a grant could allow.
            // Said once per process: a reload reads the same file again.
            "ReferenceGrant" => {
                static SAID: Once = Once::new();
                SAID.call_once(|| {
                    info!(
                        file = %file.display(),
                        line = doc.line,
                        object = %what,
                        "ReferenceGrant is not needed by mesh routes (GEP-1294); ignored"
                    );
                });
            }
            _ => unreachable!("kinds are checked above"),
        }
    }
    Ok((store, own))
}

/// The text with every policy document blanked out, line for line (so
/// that errors elsewhere keep their line numbers).
pub fn without_policies(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut at = 0;
    for doc in split_documents(text) {
        let start = doc.text.as_ptr() as usize - text.as_ptr() as usize;
        out.push_str(&text[at..start]);
        let kind = serde_yaml::from_str::<serde_yaml::Value>(doc.text)
            .ok()
            .and_then(|v| v.get("kind")?.as_str().map(str::to_owned));
        if matches!(
            kind.as_deref(),
            Some("AuthorizationPolicy" | "PeerAuthentication")
        ) {
            for line in doc.text.split_inclusive('\n') {
                out.push_str(if line.ends_with('\n') { "#\n" } else { "#" });
            }
        } else {
            out.push_str(doc.text);
        }
        at = start + doc.text.len();
    }
    out.push_str(&text[at..]);
    out
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pod_over_the_metadata_bound_refuses_the_file_naming_the_object() {
        let labels: Vec<String> = (0..300)
            .map(|i| format!("k{i:04}: {}", "v".repeat(60)))
            .collect();
        let text = format!(
            "kind: AgentConfig\n---\nkind: Pod\nmetadata: {{name: web, namespace: shop, labels: {{{}}}}}\n",
            labels.join(", ")
        );
        let e = parse(Path::new("f.yaml"), &text, "AgentConfig").unwrap_err();
        let ConfigError::Invalid {
            line,
            field,
            problem,
            ..
        } = &e
        else {
            panic!("{e}");
        };
        assert_eq!(*line, 3);
        assert_eq!(
            field,
            "Pod shop/web: metadata.labels and metadata.annotations"
        );
        assert!(
            problem.contains("19500 bytes") && problem.contains("16384"),
            "{problem}"
        );
    }

    const SERVICE: &str = "kind: Service\nmetadata: {name: echo, namespace: mesh}\nspec: {clusterIP: 10.96.0.10, ports: [{name: http, port: 80, targetPort: 8080}]}\n";

    #[test]
    fn routes_are_read_and_compiled_and_reference_grants_ignored() {
        let text = format!(
            "kind: AgentConfig\n---\n{SERVICE}---\napiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {{name: r, namespace: mesh}}\nspec:\n  parentRefs: [{{group: \"\", kind: Service, name: echo, port: 80}}]\n  rules: [{{backendRefs: [{{name: echo, port: 80}}]}}]\n---\nkind: GRPCRoute\nmetadata: {{name: r, namespace: mesh}}\nspec: {{parentRefs: [{{group: \"\", kind: Service, name: echo}}]}}\n---\nkind: ReferenceGrant\nmetadata: {{name: g, namespace: mesh}}\nspec: {{from: [{{group: gateway.networking.k8s.io, kind: HTTPRoute, namespace: other}}], to: [{{group: \"\", kind: Service}}]}}\n"
        );
        let (store, _) = parse(Path::new("f.yaml"), &text, "AgentConfig").unwrap();
        let http = store.http_routes.get("mesh/r").unwrap();
        assert_eq!(http.id.to_string(), "mesh/r");
        assert_eq!(http.rules[0].backends[0].target.name, "echo");
        assert!(store.grpc_routes.get("mesh/r").is_some());
        let sizes = store.sizes();
        assert_eq!((sizes.routes, sizes.ignored), (2, 0), "{sizes:?}");
        // Ignored whatever it holds, but still a document of the file: a
        // second one of the same name is refused like any other.
        let twice = format!(
            "{text}---\nkind: ReferenceGrant\nmetadata: {{name: g, namespace: mesh}}\nspec: {{from: nobody}}\n"
        );
        let e = parse(Path::new("f.yaml"), &twice, "AgentConfig").unwrap_err();
        assert!(
            e.to_string()
                .contains("ReferenceGrant mesh/g: metadata.name"),
            "{e}"
        );
    }

    #[test]
    fn a_route_that_does_not_compile_refuses_the_file_naming_line_and_field() {
        let text = format!(
            "kind: AgentConfig\n---\n{SERVICE}---\nkind: HTTPRoute\nmetadata: {{name: bad, namespace: mesh}}\nspec:\n  rules:\n  - matches: [{{path: {{type: RegularExpression, value: \"(\"}}}}]\n"
        );
        let e = parse(Path::new("f.yaml"), &text, "AgentConfig").unwrap_err();
        let ConfigError::Invalid { line, field, .. } = &e else {
            panic!("{e}");
        };
        assert_eq!(*line, 7);
        assert_eq!(
            field,
            "HTTPRoute mesh/bad: spec.rules[0].matches[0].path.value"
        );
        assert!(e.to_string().contains("regular expression"), "{e}");
    }

    #[test]
    fn fault_injections_are_read_and_a_bad_one_refuses_the_file_naming_line_and_field() {
        let good = "kind: AgentConfig\n---\napiVersion: mesh.io/v1alpha1\nkind: HTTPFaultInjection\nmetadata: {name: slow, namespace: mesh}\nspec: {delay: {fixedDelay: 200ms, percentage: {value: 50}}}\n";
        let (store, _) = parse(Path::new("f.yaml"), good, "AgentConfig").unwrap();
        let fault = store.faults.get("mesh/slow").unwrap();
        assert_eq!(
            fault.delay.unwrap().fixed,
            std::time::Duration::from_millis(200)
        );
        let bad = format!(
            "{good}---\nkind: HTTPFaultInjection\nmetadata: {{name: bad, namespace: mesh}}\nspec:\n  abort: {{httpStatus: 700}}\n"
        );
        let e = parse(Path::new("f.yaml"), &bad, "AgentConfig").unwrap_err();
        let ConfigError::Invalid { line, field, .. } = &e else {
            panic!("{e}");
        };
        assert_eq!(*line, 8);
        assert_eq!(field, "HTTPFaultInjection mesh/bad: spec.abort.httpStatus");
    }
}
