//! A waypoint binding in words, the same in `mesh inspect` and `mesh
//! waypoint status`.
use mesh_discovery::{
    view::WaypointRequirement,
    waypoint::{Waypoint, WaypointBinding},
};

/// `through waypoint shop/wp (10.1.0.8:15008, spiffe://...)`, `direct (no
/// waypoint)`, or why the named waypoint refuses.
pub fn binding(b: &WaypointBinding) -> String {
    match b {
        WaypointBinding::Direct => "direct (no waypoint)".into(),
        WaypointBinding::Through(w) => {
            format!("through waypoint {} ({})", w.gateway.key(), endpoints(w))
        }
        WaypointBinding::Unusable { gateway, why } => {
            format!("waypoint {gateway} cannot be used: {why} — connections are refused")
        }
    }
}

/// `10.1.0.8:15008, spiffe://...; ...`, or that none is ready.
pub fn endpoints(w: &Waypoint) -> String {
    if w.endpoints.is_empty() {
        return "no ready pod: connections through it are refused".into();
    }
    w.endpoints
        .iter()
        .map(|e| format!("{}, {}", e.address, e.identity))
        .collect::<Vec<_>>()
        .join("; ")
}

/// A destination that only its waypoint may reach directly
/// (`mesh.io/require-waypoint`), as the CLI shows it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Requirement {
    pub gateways: Vec<String>,
    /// The only identities that may connect directly; empty: none may.
    pub identities: Vec<String>,
}

impl Requirement {
    pub fn of(r: &WaypointRequirement) -> Self {
        Self {
            gateways: r.gateways.iter().cloned().collect(),
            identities: r.identities.iter().map(ToString::to_string).collect(),
        }
    }
}

/// Whether only the waypoint may connect directly.
pub fn requirement(r: Option<&Requirement>) -> String {
    let Some(r) = r else {
        return "no".into();
    };
    let gateways = r.gateways.join(", ");
    if r.identities.is_empty() {
        format!("yes ({gateways}), and no waypoint pod is ready: nothing may connect")
    } else {
        format!(
            "yes ({gateways}): only {} may connect directly",
            r.identities.join(", ")
        )
    }
}
