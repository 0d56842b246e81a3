//! ReferenceGrant (gateway.networking.k8s.io/v1beta1): whether a route may
//! send traffic to a Service in another namespace. The Service's namespace
//! has to allow it; a route in the Service's own namespace needs no grant.

use serde::{Deserialize, Serialize};

use crate::compile::{BackendRef, RouteKind};
use crate::spec::{GROUP, ObjectMeta};

#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ReferenceGrant {
    pub metadata: ObjectMeta,
    pub spec: ReferenceGrantSpec,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ReferenceGrantSpec {
    #[serde(default)]
    pub from: Vec<GrantFrom>,
    #[serde(default)]
    pub to: Vec<GrantTo>,
}

#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct GrantFrom {
    pub group: String,
    pub kind: String,
    pub namespace: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct GrantTo {
    #[serde(default)]
    pub group: String,
    pub kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

impl RouteKind {
    /// The kind as a ReferenceGrant's `from` names it.
    pub fn kind_name(self) -> &'static str {
        match self {
            RouteKind::Http => "HTTPRoute",
            RouteKind::Grpc => "GRPCRoute",
        }
    }
}

/// Whether a route of `kind` in `route_namespace` may use `backend`: always
/// within its own namespace, else only when a grant in the backend's
/// namespace allows routes of that kind from that namespace to that Service
/// (or to every Service, when the grant names none).
pub fn permits(
    grants: &[ReferenceGrant],
    kind: RouteKind,
    route_namespace: &str,
    backend: &BackendRef,
) -> bool {
    if backend.namespace == route_namespace {
        return true;
    }
    grants.iter().any(|g| {
        let in_backend_ns =
            g.metadata.namespace.as_deref().unwrap_or("default") == backend.namespace;
        let from = g.spec.from.iter().any(|f| {
            f.group == GROUP && f.kind == kind.kind_name() && f.namespace == route_namespace
        });
        let to = g.spec.to.iter().any(|t| {
            (t.group.is_empty() || t.group == "core")
                && t.kind == "Service"
                && t.name.as_deref().is_none_or(|n| n == backend.name)
        });
        in_backend_ns && from && to
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grant(ns: &str, from_ns: &str, kind: &str, to_name: Option<&str>) -> ReferenceGrant {
        ReferenceGrant {
            metadata: ObjectMeta {
                name: "g".into(),
                namespace: Some(ns.into()),
                creation_timestamp: None,
            },
            spec: ReferenceGrantSpec {
                from: vec![GrantFrom {
                    group: GROUP.into(),
                    kind: kind.into(),
                    namespace: from_ns.into(),
                }],
                to: vec![GrantTo {
                    group: String::new(),
                    kind: "Service".into(),
                    name: to_name.map(str::to_owned),
                }],
            },
        }
    }

    fn backend(ns: &str, name: &str) -> BackendRef {
        BackendRef {
            namespace: ns.into(),
            name: name.into(),
            port: 80,
        }
    }

    #[test]
    fn same_namespace_needs_no_grant() {
        assert!(permits(&[], RouteKind::Http, "a", &backend("a", "s")));
        assert!(!permits(&[], RouteKind::Http, "a", &backend("b", "s")));
    }

    #[test]
    fn a_grant_allows_its_kind_from_its_namespace_to_its_service() {
        let g = [grant("b", "a", "HTTPRoute", Some("s"))];
        assert!(permits(&g, RouteKind::Http, "a", &backend("b", "s")));
        assert!(!permits(&g, RouteKind::Http, "a", &backend("b", "other")));
        assert!(!permits(&g, RouteKind::Grpc, "a", &backend("b", "s")));
        assert!(!permits(&g, RouteKind::Http, "c", &backend("b", "s")));
        // A grant lives in the namespace it opens, not elsewhere.
        let elsewhere = [grant("c", "a", "HTTPRoute", None)];
        assert!(!permits(
            &elsewhere,
            RouteKind::Http,
            "a",
            &backend("b", "s")
        ));
        let any_service = [grant("b", "a", "HTTPRoute", None)];
        assert!(permits(
            &any_service,
            RouteKind::Http,
            "a",
            &backend("b", "x")
        ));
    }
}
