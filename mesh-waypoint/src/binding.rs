//! Which waypoint this process is, and whether a Service or a workload has
//! it as its waypoint, as discovery binds them (`istio.io/use-waypoint`).
use std::{fmt, str::FromStr};

use mesh_discovery::{
    model::Workload,
    scope::{Scope, WaypointScope},
    view::{MeshView, ServiceRoute},
    waypoint::WaypointBinding,
};

/// The Gateway this waypoint runs for (`--gateway <namespace>/<name>`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize)]
pub struct Gateway {
    pub namespace: String,
    pub name: String,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("--gateway `{0}`: expected <namespace>/<name>, e.g. shop/waypoint")]
pub struct BadGateway(pub String);

impl FromStr for Gateway {
    type Err = BadGateway;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let valid = |part: &str| {
            !part.is_empty()
                && part.len() <= 253
                && part
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.')
        };
        match s.split_once('/') {
            Some((namespace, name)) if valid(namespace) && valid(name) => Ok(Self {
                namespace: namespace.to_owned(),
                name: name.to_owned(),
            }),
            _ => Err(BadGateway(s.to_owned())),
        }
    }
}

impl Gateway {
    /// The discovery view this waypoint builds: what its Gateway can need
    /// (`mesh_discovery::scope`), and the Services of its external
    /// authorizers (`also`, `<namespace>/<name>`), which only its providers
    /// file names.
    pub fn view_scope(&self, also: impl IntoIterator<Item = String>) -> Scope {
        let mut scope = WaypointScope::new(&self.namespace, &self.name);
        scope.also.extend(also);
        Scope::Waypoint(scope)
    }
}

impl fmt::Display for Gateway {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// Whether `binding` sends traffic through this waypoint.
fn is_me(binding: &WaypointBinding, me: &Gateway) -> bool {
    matches!(binding, WaypointBinding::Through(w)
        if w.gateway.namespace == me.namespace && w.gateway.name == me.name)
}

/// Whether traffic to the Service's virtual IP is this waypoint's to serve
/// (its `istio.io/use-waypoint`, or its namespace's, names this Gateway and
/// the Gateway serves Services).
pub fn serves_service(service: &ServiceRoute, me: &Gateway) -> bool {
    is_me(&service.waypoint, me)
}

/// Whether traffic to the pod's own address is this waypoint's to serve
/// (a waypoint for workloads).
pub fn serves_workload(view: &MeshView, workload: &Workload, me: &Gateway) -> bool {
    is_me(&view.waypoint_for_workload(workload), me)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gateway_is_namespace_slash_name() {
        let g: Gateway = "shop/waypoint".parse().unwrap();
        assert_eq!(g.namespace, "shop");
        assert_eq!(g.name, "waypoint");
        assert_eq!(g.to_string(), "shop/waypoint");
        for bad in ["waypoint", "/waypoint", "shop/", "shop/a/b", "Shop/w", ""] {
            let e = bad.parse::<Gateway>().unwrap_err();
            assert_eq!(e, BadGateway(bad.to_owned()));
            assert!(e.to_string().contains("<namespace>/<name>"));
        }
    }

    #[test]
    fn the_view_scope_is_the_gateways_with_its_authorizers() {
        let g: Gateway = "shop/waypoint".parse().unwrap();
        let Scope::Waypoint(s) = g.view_scope(["auth/ext-authz".to_owned()]) else {
            panic!("a waypoint's view is scoped to its Gateway");
        };
        assert_eq!(s.gateway_key(), "shop/waypoint");
        assert_eq!(s.also.into_iter().collect::<Vec<_>>(), ["auth/ext-authz"]);
    }
}
