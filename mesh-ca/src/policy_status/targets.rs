//! What a policy's targets are checked against (pure): the Services (and
//! which waypoint each uses, by its own label or its namespace's, as
//! `mesh_discovery::waypoint` decides it) and the Gateways of the
//! waypoint class that exist. Each target resolves as Istio resolves a
//! waypoint policy's targetRef: bound to a waypoint, not found (a Gateway
//! of another class is no waypoint, and is not found either), or found but
//! served by no waypoint (a Service whose label names no waypoint that
//! exists).
use std::collections::{BTreeMap, BTreeSet};

use mesh_discovery::{model::Labels, waypoint::UseWaypoint};

use super::condition::{Reason, Verdict};

/// One target of a policy, in the policy's namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    Service {
        namespace: String,
        name: String,
    },
    Gateway {
        namespace: String,
        name: String,
    },
    /// Every waypoint of the class, from a policy of `namespace` (only the
    /// root namespace's bind a class).
    GatewayClass {
        namespace: String,
        name: String,
    },
}

impl Target {
    /// Istio's name for it in a flattened message: `Kind.group:ns/name`.
    fn ancestor(&self) -> String {
        match self {
            Target::Service { namespace, name } => format!("Service.core:{namespace}/{name}"),
            Target::Gateway { namespace, name } => {
                format!("Gateway.gateway.networking.k8s.io:{namespace}/{name}")
            }
            Target::GatewayClass { namespace, name } => {
                format!("GatewayClass.gateway.networking.k8s.io:{namespace}/{name}")
            }
        }
    }
}

/// How one target resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolved {
    pub ancestor: String,
    pub bound: bool,
    pub reason: Reason,
    pub message: String,
}

/// The Services, namespaces and waypoints of the cluster, as far as
/// targets need them.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Targets {
    /// The gatewayClassName of waypoints.
    waypoint_class: String,
    /// The namespace whose policies may bind the waypoint class.
    root_namespace: String,
    services: BTreeMap<(String, String), UseWaypoint>,
    namespaces: BTreeMap<String, UseWaypoint>,
    /// Gateways of the waypoint class.
    waypoints: BTreeSet<(String, String)>,
}

impl Targets {
    pub fn new(waypoint_class: &str, root_namespace: &str) -> Self {
        Self {
            waypoint_class: waypoint_class.to_owned(),
            root_namespace: root_namespace.to_owned(),
            ..Self::default()
        }
    }

    /// Returns whether anything changed.
    pub fn set_service(&mut self, namespace: &str, name: &str, labels: &Labels) -> bool {
        let use_ = UseWaypoint::from_labels(labels, namespace);
        self.services
            .insert((namespace.into(), name.into()), use_.clone())
            != Some(use_)
    }

    pub fn remove_service(&mut self, namespace: &str, name: &str) -> bool {
        self.services
            .remove(&(namespace.into(), name.into()))
            .is_some()
    }

    pub fn replace_services(&mut self, all: Vec<(String, String, Labels)>) -> bool {
        let next = all
            .into_iter()
            .map(|(ns, name, labels)| {
                let use_ = UseWaypoint::from_labels(&labels, &ns);
                ((ns, name), use_)
            })
            .collect();
        std::mem::replace(&mut self.services, next) != self.services
    }

    pub fn set_namespace(&mut self, name: &str, labels: &Labels) -> bool {
        let use_ = UseWaypoint::from_labels(labels, name);
        self.namespaces.insert(name.into(), use_.clone()) != Some(use_)
    }

    pub fn remove_namespace(&mut self, name: &str) -> bool {
        self.namespaces.remove(name).is_some()
    }

    pub fn replace_namespaces(&mut self, all: Vec<(String, Labels)>) -> bool {
        let next = all
            .into_iter()
            .map(|(name, labels)| {
                let use_ = UseWaypoint::from_labels(&labels, &name);
                (name, use_)
            })
            .collect();
        std::mem::replace(&mut self.namespaces, next) != self.namespaces
    }

    /// A Gateway and its gatewayClassName: a waypoint when of the class.
    pub fn set_gateway(&mut self, namespace: &str, name: &str, class: &str) -> bool {
        let key = (namespace.to_owned(), name.to_owned());
        if class == self.waypoint_class {
            self.waypoints.insert(key)
        } else {
            self.waypoints.remove(&key)
        }
    }

    pub fn remove_gateway(&mut self, namespace: &str, name: &str) -> bool {
        self.waypoints.remove(&(namespace.into(), name.into()))
    }

    pub fn replace_gateways(&mut self, all: Vec<(String, String, String)>) -> bool {
        let next: BTreeSet<_> = all
            .into_iter()
            .filter(|(_, _, class)| *class == self.waypoint_class)
            .map(|(ns, name, _)| (ns, name))
            .collect();
        std::mem::replace(&mut self.waypoints, next) != self.waypoints
    }

    fn is_waypoint(&self, namespace: &str, name: &str) -> bool {
        self.waypoints
            .contains(&(namespace.to_owned(), name.to_owned()))
    }

    pub fn has_service(&self, namespace: &str, name: &str) -> bool {
        self.services
            .contains_key(&(namespace.to_owned(), name.to_owned()))
    }

    /// The waypoint (`<namespace>/<name>`) that serves a Service, if any:
    /// the one its labels name, if it exists.
    fn waypoint_of(&self, namespace: &str, name: &str) -> Option<String> {
        let own = self
            .services
            .get(&(namespace.to_owned(), name.to_owned()))?
            .clone();
        let of_namespace = self
            .namespaces
            .get(namespace)
            .cloned()
            .unwrap_or(UseWaypoint::Unset);
        match own.or_namespace(of_namespace) {
            UseWaypoint::Named { namespace, name } if self.is_waypoint(&namespace, &name) => {
                Some(format!("{namespace}/{name}"))
            }
            UseWaypoint::Named { .. } => None,
            UseWaypoint::Unset | UseWaypoint::OptOut => None,
        }
    }

    /// One target, resolved as Istio resolves a waypoint policy's.
    pub fn resolve(&self, target: &Target) -> Resolved {
        let ancestor = target.ancestor();
        let (bound, reason, message) = match target {
            Target::Gateway { namespace, name } => {
                if self.is_waypoint(namespace, name) {
                    (
                        true,
                        Reason::Accepted,
                        format!("bound to {namespace}/{name}"),
                    )
                } else {
                    (
                        false,
                        Reason::TargetNotFound,
                        format!(
                            "Gateway {namespace}/{name} of class {} was not found",
                            self.waypoint_class
                        ),
                    )
                }
            }
            Target::Service { namespace, name } => {
                if !self.has_service(namespace, name) {
                    (
                        false,
                        Reason::TargetNotFound,
                        format!("Service {namespace}/{name} was not found"),
                    )
                } else if let Some(waypoint) = self.waypoint_of(namespace, name) {
                    (true, Reason::Accepted, format!("bound to {waypoint}"))
                } else {
                    (
                        false,
                        Reason::AncestorNotBound,
                        format!("Service {namespace}/{name} is not bound to a waypoint"),
                    )
                }
            }
            Target::GatewayClass { namespace, name } => {
                if *namespace != self.root_namespace {
                    (
                        false,
                        Reason::Invalid,
                        format!(
                            "AuthorizationPolicy must be in the root namespace `{}` when referencing a GatewayClass",
                            self.root_namespace
                        ),
                    )
                } else if *name != self.waypoint_class {
                    (
                        false,
                        Reason::TargetNotFound,
                        format!(
                            "GatewayClass {name} is not the waypoint class ({})",
                            self.waypoint_class
                        ),
                    )
                } else {
                    (true, Reason::Accepted, format!("bound to {name}"))
                }
            }
        };
        Resolved {
            ancestor,
            bound,
            reason,
            message,
        }
    }

    /// All of a policy's targets as one verdict, as Istio flattens them:
    /// one target speaks for itself; of several, any bound makes the
    /// policy accepted (PartiallyInvalid when some are not), and the
    /// message lists those that are not.
    pub fn verdict(&self, targets: &[Target]) -> Verdict {
        let resolved: Vec<Resolved> = targets.iter().map(|t| self.resolve(t)).collect();
        if let [one] = resolved.as_slice() {
            return Verdict {
                accepted: one.bound,
                reason: one.reason,
                message: one.message.clone(),
            };
        }
        let unbound: Vec<&Resolved> = resolved.iter().filter(|r| !r.bound).collect();
        let any_bound = unbound.len() < resolved.len();
        if unbound.is_empty() {
            let bound: Vec<&str> = resolved.iter().map(|r| r.message.as_str()).collect();
            return Verdict::accepted(bound.join("; "));
        }
        let message = format!(
            "Invalid targetRefs: {}",
            unbound
                .iter()
                .map(|r| format!("{} ({})", r.ancestor, r.message))
                .collect::<Vec<_>>()
                .join(", ")
        );
        if any_bound {
            Verdict {
                accepted: true,
                reason: Reason::PartiallyInvalid,
                message,
            }
        } else {
            Verdict::refused(Reason::Invalid, message)
        }
    }
}
