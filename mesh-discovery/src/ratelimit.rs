//! `mesh.io/v1alpha1 HTTPLocalRateLimitPolicy`: local rate limits a
//! waypoint enforces per replica, shaped like Linkerd's kind of the same
//! name (a total rate, a rate per client identity, and overrides for listed
//! client identities), attached by `targetRef` to a Service or to the
//! waypoint's own Gateway. The resource is declared with kube-derive so the
//! watch and the CRD come from the same types; `compile` checks it (pure,
//! errors name the field) into the `RateLimitPolicy` the store holds.
use std::{collections::BTreeSet, num::NonZeroU32};

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Requests per second above this are refused: a typo (an extra zero)
/// rather than a limit anyone means per replica.
pub const MAX_REQUESTS_PER_SECOND: u32 = 1_000_000;

/// Gateway API's group, the group of a Gateway `targetRef`.
pub const GATEWAY_GROUP: &str = "gateway.networking.k8s.io";

/// `mesh.io/v1alpha1 HTTPLocalRateLimitPolicy`.
#[derive(CustomResource, Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[kube(
    group = "mesh.io",
    version = "v1alpha1",
    kind = "HTTPLocalRateLimitPolicy",
    root = "HTTPLocalRateLimitPolicyResource",
    // Written by the CA's policy status controller: Accepted, or why not.
    status = "crate::crd_status::PolicyStatus",
    namespaced,
    schema = "derived",
    // Uninstalling mesh must not delete every policy with its CRD.
    annotation("helm.sh/resource-policy", "keep")
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RateLimitPolicySpec {
    /// What the limits apply to: a Service (its requests through the
    /// waypoint) or the waypoint's Gateway (every request it serves).
    pub target_ref: TargetRef,
    /// All clients together.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub total: Option<Limit>,
    /// Each client identity on its own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity: Option<Limit>,
    /// Listed client identities get their own rate instead of `identity`'s.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub overrides: Vec<Override>,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TargetRef {
    /// `""` (or `core`) for a Service, `gateway.networking.k8s.io` for a Gateway.
    #[serde(default)]
    pub group: String,
    /// `Service` or `Gateway`.
    pub kind: String,
    /// In the policy's namespace.
    pub name: String,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Limit {
    pub requests_per_second: u32,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Override {
    pub requests_per_second: u32,
    pub client_refs: ClientRefs,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ClientRefs {
    pub service_accounts: Vec<ServiceAccountRef>,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ServiceAccountRef {
    pub name: String,
    /// The policy's namespace when left out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
}

/// An object of the kind as read (from a file or the API): its spec is all
/// `compile` needs beside the name.
#[derive(Debug, Clone, Deserialize)]
pub struct Document {
    pub spec: RateLimitPolicySpec,
}

/// What a policy is attached to, in its own namespace.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum RateLimitTarget {
    /// `<namespace>/<name>` of a Service.
    Service(String),
    /// `<namespace>/<name>` of a waypoint's Gateway.
    Gateway(String),
    /// Every Service of a namespace: the scope of a policy whose
    /// `targetRef` cannot be read (see [`Limits::Invalid`]).
    Namespace(String),
}

/// A client identity as a policy names it: a ServiceAccount.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ClientIdentity {
    pub namespace: String,
    pub service_account: String,
}

impl ClientIdentity {
    /// The namespace and ServiceAccount of a SPIFFE id
    /// (`spiffe://<trust domain>/ns/<ns>/sa/<sa>`); `None` for anything else.
    pub fn from_spiffe(id: &str) -> Option<Self> {
        let path = id.strip_prefix("spiffe://")?;
        let mut parts = path.split('/');
        let (_domain, ns_tag, ns, sa_tag, sa) = (
            parts.next()?,
            parts.next()?,
            parts.next()?,
            parts.next()?,
            parts.next()?,
        );
        if ns_tag != "ns" || sa_tag != "sa" || parts.next().is_some() {
            return None;
        }
        Some(Self {
            namespace: ns.to_owned(),
            service_account: sa.to_owned(),
        })
    }
}

/// An override's rate for its listed identities.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdentityOverride {
    pub requests_per_second: NonZeroU32,
    pub clients: BTreeSet<ClientIdentity>,
}

/// A checked policy, as the store and the waypoint hold it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RateLimitPolicy {
    /// `<namespace>/<name>`: the metric's `policy` label.
    pub key: String,
    pub target: RateLimitTarget,
    pub limits: Limits,
}

/// What a policy enforces in its scope.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Limits {
    Rates(Rates),
    /// The object does not validate and no good version of it came before
    /// (from the API; a file that does not validate is refused whole): every
    /// request in its scope is refused, as any policy mesh cannot apply
    /// denies rather than allows. The error names the field.
    Invalid(RateLimitError),
}

/// A valid policy's rates.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Rates {
    pub total: Option<NonZeroU32>,
    pub identity: Option<NonZeroU32>,
    pub overrides: Vec<IdentityOverride>,
}

/// Why a policy cannot be enforced: the field and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {problem}")]
pub struct RateLimitError {
    pub field: String,
    pub problem: String,
}

fn invalid(field: impl Into<String>, problem: impl Into<String>) -> RateLimitError {
    RateLimitError {
        field: field.into(),
        problem: problem.into(),
    }
}

fn rate(field: &str, value: u32) -> Result<NonZeroU32, RateLimitError> {
    match NonZeroU32::new(value) {
        Some(v) if value <= MAX_REQUESTS_PER_SECOND => Ok(v),
        _ => Err(invalid(
            field,
            format!("{value} is not a rate: it must be between 1 and {MAX_REQUESTS_PER_SECOND}"),
        )),
    }
}

/// Checks a policy of `namespace`/`name` and gives what the waypoint enforces.
pub fn compile(
    namespace: &str,
    name: &str,
    spec: &RateLimitPolicySpec,
) -> Result<RateLimitPolicy, RateLimitError> {
    let t = &spec.target_ref;
    if t.name.is_empty() {
        return Err(invalid("spec.targetRef.name", "must not be empty"));
    }
    let target_key = format!("{namespace}/{}", t.name);
    let target = match (t.kind.as_str(), t.group.as_str()) {
        ("Service", "" | "core") => RateLimitTarget::Service(target_key),
        ("Gateway", GATEWAY_GROUP) => RateLimitTarget::Gateway(target_key),
        ("Service" | "Gateway", group) => {
            let want = if t.kind == "Service" {
                "\"\" (core)"
            } else {
                GATEWAY_GROUP
            };
            return Err(invalid(
                "spec.targetRef.group",
                format!("`{group}` is not the group of a {}: use {want}", t.kind),
            ));
        }
        (kind, _) => {
            return Err(invalid(
                "spec.targetRef.kind",
                format!("`{kind}` cannot be rate limited: use Service or Gateway"),
            ));
        }
    };
    let total = spec
        .total
        .as_ref()
        .map(|l| rate("spec.total.requestsPerSecond", l.requests_per_second))
        .transpose()?;
    let identity = spec
        .identity
        .as_ref()
        .map(|l| rate("spec.identity.requestsPerSecond", l.requests_per_second))
        .transpose()?;
    let mut seen = BTreeSet::new();
    let mut overrides = Vec::with_capacity(spec.overrides.len());
    for (i, o) in spec.overrides.iter().enumerate() {
        let requests_per_second = rate(
            &format!("spec.overrides[{i}].requestsPerSecond"),
            o.requests_per_second,
        )?;
        if o.client_refs.service_accounts.is_empty() {
            return Err(invalid(
                format!("spec.overrides[{i}].clientRefs.serviceAccounts"),
                "must list at least one ServiceAccount",
            ));
        }
        let mut clients = BTreeSet::new();
        for (j, sa) in o.client_refs.service_accounts.iter().enumerate() {
            let field = format!("spec.overrides[{i}].clientRefs.serviceAccounts[{j}]");
            if sa.name.is_empty() {
                return Err(invalid(format!("{field}.name"), "must not be empty"));
            }
            let client = ClientIdentity {
                namespace: sa
                    .namespace
                    .clone()
                    .filter(|n| !n.is_empty())
                    .unwrap_or_else(|| namespace.to_owned()),
                service_account: sa.name.clone(),
            };
            if !seen.insert(client.clone()) {
                return Err(invalid(
                    field,
                    format!(
                        "{}/{} is listed twice: an identity has one override",
                        client.namespace, client.service_account
                    ),
                ));
            }
            clients.insert(client);
        }
        overrides.push(IdentityOverride {
            requests_per_second,
            clients,
        });
    }
    if total.is_none() && identity.is_none() && overrides.is_empty() {
        return Err(invalid(
            "spec",
            "sets no limit: give total, identity or overrides",
        ));
    }
    Ok(RateLimitPolicy {
        key: format!("{namespace}/{name}"),
        target,
        limits: Limits::Rates(Rates {
            total,
            identity,
            overrides,
        }),
    })
}

/// What stands in for a policy of `namespace`/`name` that does not
/// validate: it refuses every request in the scope its `targetRef` gives,
/// or in its whole namespace when the target itself cannot be read.
pub fn refusing(
    namespace: &str,
    name: &str,
    target_ref: Option<&TargetRef>,
    error: RateLimitError,
) -> RateLimitPolicy {
    let key = format!("{namespace}/{}", target_ref.map_or("", |t| t.name.as_str()));
    let target = match target_ref.map(|t| (t.kind.as_str(), t.group.as_str(), t.name.is_empty())) {
        Some(("Service", "" | "core", false)) => RateLimitTarget::Service(key),
        Some(("Gateway", GATEWAY_GROUP, false)) => RateLimitTarget::Gateway(key),
        _ => RateLimitTarget::Namespace(namespace.to_owned()),
    };
    RateLimitPolicy {
        key: format!("{namespace}/{name}"),
        target,
        limits: Limits::Invalid(error),
    }
}

/// The per-client rate of `client` under a policy's rates: its
/// override's, else the policy's `identity` rate; `None` when neither
/// applies.
pub fn client_quota(policy: &Rates, client: Option<&ClientIdentity>) -> ClientQuota {
    if let Some(c) = client
        && let Some((i, o)) = policy
            .overrides
            .iter()
            .enumerate()
            .find(|(_, o)| o.clients.contains(c))
    {
        return ClientQuota::Override {
            index: i,
            requests_per_second: o.requests_per_second,
        };
    }
    match policy.identity {
        Some(requests_per_second) => ClientQuota::Identity {
            requests_per_second,
        },
        None => ClientQuota::None,
    }
}

/// Which per-client limiter a request counts against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientQuota {
    /// The override at `index` lists the client.
    Override {
        index: usize,
        requests_per_second: NonZeroU32,
    },
    /// The policy's rate for each identity.
    Identity { requests_per_second: NonZeroU32 },
    /// No per-client limit.
    None,
}

/// The CustomResourceDefinition, as YAML (`---` first).
pub fn crd_yaml() -> Result<String, serde_yaml::Error> {
    use kube::CustomResourceExt;
    Ok(format!(
        "---\n{}",
        serde_yaml::to_string(&HTTPLocalRateLimitPolicyResource::crd())?
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(yaml: &str) -> RateLimitPolicySpec {
        serde_yaml::from_str(yaml).unwrap()
    }

    fn err(yaml: &str) -> RateLimitError {
        compile("shop", "rl", &spec(yaml)).unwrap_err()
    }

    #[test]
    fn a_full_policy_compiles() {
        let p = compile(
            "shop",
            "rl",
            &spec(
                "targetRef: {kind: Service, name: web}\ntotal: {requestsPerSecond: 100}\nidentity: {requestsPerSecond: 10}\noverrides:\n- requestsPerSecond: 50\n  clientRefs: {serviceAccounts: [{name: batch}, {name: ops, namespace: admin}]}\n",
            ),
        )
        .unwrap();
        assert_eq!(p.key, "shop/rl");
        assert_eq!(p.target, RateLimitTarget::Service("shop/web".into()));
        let Limits::Rates(r) = &p.limits else {
            panic!("{p:?}")
        };
        assert_eq!(r.total.map(NonZeroU32::get), Some(100));
        assert_eq!(r.identity.map(NonZeroU32::get), Some(10));
        let clients: Vec<_> = r.overrides[0].clients.iter().cloned().collect();
        assert_eq!(
            clients,
            [
                ClientIdentity {
                    namespace: "admin".into(),
                    service_account: "ops".into()
                },
                ClientIdentity {
                    namespace: "shop".into(),
                    service_account: "batch".into()
                },
            ]
        );
        let gw = compile(
            "shop",
            "rl",
            &spec(
                "targetRef: {group: gateway.networking.k8s.io, kind: Gateway, name: wp}\ntotal: {requestsPerSecond: 1}\n",
            ),
        )
        .unwrap();
        assert_eq!(gw.target, RateLimitTarget::Gateway("shop/wp".into()));
    }

    #[test]
    fn bad_policies_name_the_field() {
        let e = err("targetRef: {kind: Service, name: web}\ntotal: {requestsPerSecond: 0}\n");
        assert_eq!(e.field, "spec.total.requestsPerSecond");
        let e =
            err("targetRef: {kind: Service, name: web}\nidentity: {requestsPerSecond: 2000000}\n");
        assert_eq!(e.field, "spec.identity.requestsPerSecond");
        let e = err("targetRef: {kind: Pod, name: web}\ntotal: {requestsPerSecond: 1}\n");
        assert_eq!(e.field, "spec.targetRef.kind");
        let e = err("targetRef: {kind: Gateway, name: wp}\ntotal: {requestsPerSecond: 1}\n");
        assert_eq!(e.field, "spec.targetRef.group");
        let e = err("targetRef: {kind: Service, name: \"\"}\ntotal: {requestsPerSecond: 1}\n");
        assert_eq!(e.field, "spec.targetRef.name");
        let e = err("targetRef: {kind: Service, name: web}\n");
        assert_eq!(e.field, "spec");
        let e = err(
            "targetRef: {kind: Service, name: web}\noverrides:\n- requestsPerSecond: 5\n  clientRefs: {serviceAccounts: [{name: a}]}\n- requestsPerSecond: 6\n  clientRefs: {serviceAccounts: [{name: b}, {name: a, namespace: shop}]}\n",
        );
        assert_eq!(e.field, "spec.overrides[1].clientRefs.serviceAccounts[1]");
        assert!(e.problem.contains("shop/a"), "{e}");
        let e = err(
            "targetRef: {kind: Service, name: web}\noverrides:\n- requestsPerSecond: 5\n  clientRefs: {serviceAccounts: []}\n",
        );
        assert_eq!(e.field, "spec.overrides[0].clientRefs.serviceAccounts");
        assert!(
            serde_yaml::from_str::<RateLimitPolicySpec>(
                "targetRef: {kind: Service, name: web}\ntotal: {requestPerSecond: 1}\n"
            )
            .is_err(),
            "a misspelt field is refused"
        );
    }

    #[test]
    fn an_override_wins_over_the_identity_rate() {
        let p = compile(
            "shop",
            "rl",
            &spec(
                "targetRef: {kind: Service, name: web}\nidentity: {requestsPerSecond: 2}\noverrides:\n- requestsPerSecond: 9\n  clientRefs: {serviceAccounts: [{name: batch}]}\n",
            ),
        )
        .unwrap();
        let Limits::Rates(p) = p.limits else {
            panic!("{p:?}")
        };
        let batch = ClientIdentity::from_spiffe("spiffe://cluster.local/ns/shop/sa/batch");
        let other = ClientIdentity::from_spiffe("spiffe://cluster.local/ns/shop/sa/web");
        assert_eq!(
            client_quota(&p, batch.as_ref()),
            ClientQuota::Override {
                index: 0,
                requests_per_second: NonZeroU32::new(9).unwrap()
            }
        );
        assert_eq!(
            client_quota(&p, other.as_ref()),
            ClientQuota::Identity {
                requests_per_second: NonZeroU32::new(2).unwrap()
            }
        );
        let only_total = compile(
            "shop",
            "rl",
            &spec("targetRef: {kind: Service, name: web}\ntotal: {requestsPerSecond: 3}\n"),
        )
        .unwrap();
        let Limits::Rates(only_total) = only_total.limits else {
            panic!("{only_total:?}")
        };
        assert_eq!(client_quota(&only_total, other.as_ref()), ClientQuota::None);
    }

    #[test]
    fn a_policy_that_does_not_validate_refuses_its_scope() {
        let error = || invalid("spec.total.requestsPerSecond", "0 is not a rate");
        let service = TargetRef {
            group: String::new(),
            kind: "Service".into(),
            name: "web".into(),
        };
        let p = refusing("shop", "rl", Some(&service), error());
        assert_eq!(p.key, "shop/rl");
        assert_eq!(p.target, RateLimitTarget::Service("shop/web".into()));
        assert_eq!(p.limits, Limits::Invalid(error()));
        let gateway = TargetRef {
            group: GATEWAY_GROUP.into(),
            kind: "Gateway".into(),
            name: "wp".into(),
        };
        assert_eq!(
            refusing("shop", "rl", Some(&gateway), error()).target,
            RateLimitTarget::Gateway("shop/wp".into())
        );
        // A target that cannot be read: the policy's whole namespace.
        for odd in [
            TargetRef {
                kind: "Pod".into(),
                ..service.clone()
            },
            TargetRef {
                name: String::new(),
                ..service.clone()
            },
            TargetRef {
                group: "apps".into(),
                ..service.clone()
            },
        ] {
            assert_eq!(
                refusing("shop", "rl", Some(&odd), error()).target,
                RateLimitTarget::Namespace("shop".into())
            );
        }
        assert_eq!(
            refusing("shop", "rl", None, error()).target,
            RateLimitTarget::Namespace("shop".into())
        );
    }

    #[test]
    fn a_local_file_holds_policies_and_a_bad_one_is_refused_by_line_and_field() {
        use std::path::Path;
        let good = "kind: AgentConfig\n---\napiVersion: mesh.io/v1alpha1\nkind: HTTPLocalRateLimitPolicy\nmetadata: {name: rl, namespace: shop}\nspec:\n  targetRef: {kind: Service, name: web}\n  total: {requestsPerSecond: 5}\n";
        let (store, _) = crate::file::parse(Path::new("f.yaml"), good, "AgentConfig").unwrap();
        let p = store.rate_limits.get("shop/rl").unwrap();
        let Limits::Rates(r) = &p.limits else {
            panic!("{p:?}")
        };
        assert_eq!(r.total.map(NonZeroU32::get), Some(5));
        let bad = good.replace("requestsPerSecond: 5", "requestsPerSecond: 0");
        let e = crate::file::parse(Path::new("f.yaml"), &bad, "AgentConfig").unwrap_err();
        let mesh_config::ConfigError::Invalid { line, field, .. } = &e else {
            panic!("{e}");
        };
        assert_eq!(*line, 3);
        assert_eq!(
            field,
            "HTTPLocalRateLimitPolicy shop/rl: spec.total.requestsPerSecond"
        );
        let typo = good.replace("total:", "totl:");
        let e = crate::file::parse(Path::new("f.yaml"), &typo, "AgentConfig").unwrap_err();
        let mesh_config::ConfigError::Yaml { line, message, .. } = &e else {
            panic!("{e}");
        };
        assert_eq!(*line, 8, "{e}");
        assert!(message.contains("totl"), "{e}");
    }

    /// The chart's template of this CRD, as the type generates it.
    #[test]
    fn the_chart_installs_the_crd_the_type_generates() {
        crate::chart_template::assert_generated(
            "mesh-api-crds.yaml",
            "mesh_discovery::ratelimit",
            &crd_yaml().unwrap(),
        );
    }

    #[test]
    fn spiffe_ids_name_a_service_account() {
        assert_eq!(
            ClientIdentity::from_spiffe("spiffe://td/ns/a/sa/b"),
            Some(ClientIdentity {
                namespace: "a".into(),
                service_account: "b".into()
            })
        );
        assert_eq!(ClientIdentity::from_spiffe("spiffe://td/ns/a/sa/b/c"), None);
        assert_eq!(ClientIdentity::from_spiffe("spiffe://td/x/a/sa/b"), None);
        assert_eq!(ClientIdentity::from_spiffe("td/ns/a/sa/b"), None);
    }
}
