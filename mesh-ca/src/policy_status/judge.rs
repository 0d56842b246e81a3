//! Whether the waypoint can use one object, and if not, which field and
//! why (pure): each kind is checked by the very function the waypoint's
//! discovery checks it with, so the status says what the waypoint does.
//! `None`: the object is not the waypoint's (an AuthorizationPolicy or
//! RequestAuthentication with a selector, for the node agents or
//! sidecars), and carries no condition of ours.
use kube::api::DynamicObject;
use mesh_discovery::{
    convert::Invalid,
    destination_rule, kubernetes,
    ratelimit::{self, RateLimitTarget},
};
use mesh_policy::{
    l7::{self, Binding},
    load::Failure,
    request_authn::AuthnTarget,
};

use super::{
    condition::{Reason, Verdict},
    kinds::PolicyKind,
    targets::{Target, Targets},
};

pub fn judge(kind: PolicyKind, o: &DynamicObject, targets: &Targets) -> Option<Verdict> {
    let namespace = o.metadata.namespace.as_deref().unwrap_or("default");
    let name = o.metadata.name.as_deref().unwrap_or_default();
    match kind {
        PolicyKind::RateLimit => Some(match rate_limit(namespace, name, o) {
            Err(e) => invalid(
                &e,
                "waypoints keep its last good version, or refuse its scope's requests with 429 when it never was valid",
            ),
            Ok(p) => match p.target {
                RateLimitTarget::Service(key) => targets.verdict(&[service(&key)]),
                RateLimitTarget::Gateway(key) => targets.verdict(&[gateway(&key)]),
                // Only a stand-in's scope, which `compile` never gives.
                RateLimitTarget::Namespace(_) => {
                    Verdict::refused(Reason::Invalid, "spec.targetRef: cannot be read")
                }
            },
        }),
        PolicyKind::Fault => Some(match kubernetes::convert_fault(o) {
            Err(e) => invalid(
                &e,
                "waypoints keep its last good version, or answer 500 to the rules that name it when it never was valid",
            ),
            Ok(_) => Verdict::accepted("routes' ExtensionRef filters may name it"),
        }),
        PolicyKind::Authorization => {
            let annotations = o.metadata.annotations.clone().unwrap_or_default();
            let loaded = l7::load(namespace, name, &annotations, o.data.get("spec"));
            match (loaded.failure, loaded.policy) {
                (Some(failure), _) => Some(Verdict::refused(
                    Reason::Invalid,
                    match failure {
                        Failure::Unreadable(e) => format!(
                            "{e} (the waypoint denies every request in the policy's namespace instead)"
                        ),
                        Failure::Invalid(e) => format!(
                            "{e} (the waypoint denies every request of its targets instead)"
                        ),
                    },
                )),
                (None, None) => None,
                (None, Some(policy)) => {
                    let bound: Vec<Target> = policy
                        .bindings
                        .iter()
                        .filter_map(|b| match b {
                            Binding::Gateway { namespace, name } => Some(Target::Gateway {
                                namespace: namespace.clone(),
                                name: name.clone(),
                            }),
                            Binding::Service { namespace, name } => Some(Target::Service {
                                namespace: namespace.clone(),
                                name: name.clone(),
                            }),
                            Binding::GatewayClass { namespace, name } => {
                                Some(Target::GatewayClass {
                                    namespace: namespace.clone(),
                                    name: name.clone(),
                                })
                            }
                            // Only a stand-in's, which has a failure.
                            Binding::Namespace(_) => None,
                        })
                        .collect();
                    Some(targets.verdict(&bound))
                }
            }
        }
        PolicyKind::RequestAuthentication => {
            match kubernetes::request_authentication_or_last_good(o, None) {
                Err(e) => Some(invalid(
                    &Invalid {
                        field: in_spec(&e.field),
                        problem: e.problem,
                    },
                    LAST_GOOD_OR_LEFT_OUT,
                )),
                Ok(p) if p.targets.is_empty() => None,
                Ok(p) => {
                    let bound: Vec<Target> = p
                        .targets
                        .iter()
                        .map(|t| match t {
                            AuthnTarget::Service(key) => service(key),
                            AuthnTarget::Gateway(key) => gateway(key),
                        })
                        .collect();
                    Some(targets.verdict(&bound))
                }
            }
        }
        PolicyKind::DestinationRule => Some(match destination_rule_of(namespace, name, o) {
            Err(e) => invalid(&e, LAST_GOOD_OR_LEFT_OUT),
            Ok(rule) => {
                let (ns, svc) = (&rule.host.namespace, &rule.host.name);
                if targets.has_service(ns, svc) {
                    Verdict::accepted(format!(
                        "applies to Service {ns}/{svc} at the waypoints that send to it"
                    ))
                } else {
                    Verdict::refused(
                        Reason::TargetNotFound,
                        format!("spec.host: Service {ns}/{svc} was not found"),
                    )
                }
            }
        }),
    }
}

/// As discovery reads it: the spec decoded, then checked.
fn rate_limit(
    namespace: &str,
    name: &str,
    o: &DynamicObject,
) -> Result<ratelimit::RateLimitPolicy, Invalid> {
    let spec = o.data.get("spec").cloned().unwrap_or_default();
    let spec: ratelimit::RateLimitPolicySpec =
        serde_json::from_value(spec).map_err(|e| Invalid {
            field: "spec".into(),
            problem: e.to_string(),
        })?;
    ratelimit::compile(namespace, name, &spec).map_err(|e| Invalid {
        field: e.field,
        problem: e.problem,
    })
}

/// As discovery reads it (`destination_rule::from_api`, without its log
/// of ignored subsets, which is the waypoints' to say).
fn destination_rule_of(
    namespace: &str,
    name: &str,
    o: &DynamicObject,
) -> Result<destination_rule::DestinationRule, Invalid> {
    let spec = o.data.get("spec").cloned().unwrap_or_default();
    let spec: destination_rule::DestinationRuleSpec =
        serde_json::from_value(spec).map_err(|e| Invalid {
            field: "spec".into(),
            problem: e.to_string(),
        })?;
    destination_rule::compile(namespace, name, None, &spec).map_err(|e| Invalid {
        field: e.field,
        problem: e.problem,
    })
}

/// What waypoints do with an object of Istio's kinds that does not check.
const LAST_GOOD_OR_LEFT_OUT: &str =
    "waypoints keep its last good version, or leave it out when it never was valid";

/// The field and the problem first, then what the waypoints do instead.
fn invalid(e: &Invalid, instead: &str) -> Verdict {
    Verdict::refused(
        Reason::Invalid,
        format!("{}: {} ({instead})", e.field, e.problem),
    )
}

/// RequestAuthentication's checks name fields under `spec` without it.
fn in_spec(field: &str) -> String {
    if field == "spec" || field.starts_with("spec.") {
        field.to_owned()
    } else {
        format!("spec.{field}")
    }
}

fn split(key: &str) -> (String, String) {
    let (ns, name) = key.split_once('/').unwrap_or(("default", key));
    (ns.to_owned(), name.to_owned())
}

fn service(key: &str) -> Target {
    let (namespace, name) = split(key);
    Target::Service { namespace, name }
}

fn gateway(key: &str) -> Target {
    let (namespace, name) = split(key);
    Target::Gateway { namespace, name }
}
