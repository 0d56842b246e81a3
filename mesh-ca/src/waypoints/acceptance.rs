//! Whether a Gateway of the waypoint class declares a waypoint the mesh can
//! run, as a pure function of the object: on the refusal the Gateway's
//! Accepted condition names the field and the fix.
use std::fmt;

use super::gateway_api::Gateway;

/// The port and protocol a waypoint serves (Istio ambient's).
pub const HBONE_PORT: i32 = 15008;
pub const HBONE_PROTOCOL: &str = "HBONE";
/// The label (or annotation) saying which traffic goes through the
/// waypoint.
pub const WAYPOINT_FOR: &str = "istio.io/waypoint-for";

/// Which traffic the waypoint handles: to the namespace's services, to its
/// workloads, both, or none.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WaypointFor {
    Service,
    Workload,
    All,
    None,
}

impl fmt::Display for WaypointFor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Service => "service",
            Self::Workload => "workload",
            Self::All => "all",
            Self::None => "none",
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error(
        "spec.listeners: no listener; a waypoint needs {{name: mesh, port: 15008, protocol: HBONE}}"
    )]
    NoListener,
    #[error(
        "spec.listeners[{index}] `{name}`: {protocol} on port {port}; a waypoint serves only protocol HBONE on port 15008 (name: mesh, port: 15008, protocol: HBONE)"
    )]
    Listener {
        index: usize,
        name: String,
        protocol: String,
        port: i32,
    },
    #[error("{WAYPOINT_FOR} `{0}`: use service, workload, all or none")]
    WaypointFor(String),
}

impl Refusal {
    /// The reason of the Accepted=False condition (Gateway API's
    /// `ListenersNotValid` for listener problems, `Invalid` otherwise).
    pub fn reason(&self) -> &'static str {
        match self {
            Self::NoListener | Self::Listener { .. } => "ListenersNotValid",
            Self::WaypointFor(_) => "Invalid",
        }
    }
}

/// The waypoint `gateway` declares, or why it is not one.
pub fn accept(gateway: &Gateway) -> Result<WaypointFor, Refusal> {
    let listeners = &gateway.spec.listeners;
    if listeners.is_empty() {
        return Err(Refusal::NoListener);
    }
    // Every listener must be the HBONE one: a waypoint that quietly left
    // out a listener the Gateway asks for would look accepted and not be.
    if let Some((index, l)) = listeners
        .iter()
        .enumerate()
        .find(|(_, l)| l.port != HBONE_PORT || l.protocol != HBONE_PROTOCOL)
    {
        return Err(Refusal::Listener {
            index,
            name: l.name.clone(),
            protocol: l.protocol.clone(),
            port: l.port,
        });
    }
    let meta = &gateway.metadata;
    let value = meta
        .labels
        .as_ref()
        .and_then(|l| l.get(WAYPOINT_FOR))
        .or_else(|| meta.annotations.as_ref().and_then(|a| a.get(WAYPOINT_FOR)));
    match value.map(String::as_str) {
        None | Some("service") => Ok(WaypointFor::Service),
        Some("workload") => Ok(WaypointFor::Workload),
        Some("all") => Ok(WaypointFor::All),
        Some("none") => Ok(WaypointFor::None),
        Some(other) => Err(Refusal::WaypointFor(other.to_owned())),
    }
}
