//! The status the controller writes, as pure functions of what it saw:
//! Gateway API's Accepted and Programmed conditions, the addresses, and a
//! GatewayClass' Accepted condition. A condition whose status did not
//! change keeps its lastTransitionTime, so writing the same status again
//! changes nothing (and wakes no watcher).
use k8s_openapi::jiff::Timestamp;

use super::{
    acceptance::{Refusal, WaypointFor},
    gateway_api::{Condition, GatewayClassStatus, GatewayStatus, GatewayStatusAddress},
};

/// What the controller found of the waypoint it runs for a Gateway.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Deployed {
    /// The Deployment has at least one available replica.
    pub available: bool,
    /// The Service's cluster IP, once assigned.
    pub cluster_ip: Option<String>,
}

/// The outcome for one Gateway: refused, or accepted and deployed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Refused(Refusal),
    Deployed {
        waypoint_for: WaypointFor,
        deployed: Deployed,
    },
}

pub struct Observed<'a> {
    pub previous: &'a [Condition],
    pub generation: Option<i64>,
    pub now: Timestamp,
}

impl Observed<'_> {
    fn condition(&self, type_: &str, status: bool, reason: &str, message: String) -> Condition {
        let status = if status { "True" } else { "False" };
        let since = self
            .previous
            .iter()
            .find(|c| c.type_ == type_ && c.status == status)
            .map(|c| c.last_transition_time.clone())
            .unwrap_or_else(|| self.now.to_string());
        Condition {
            type_: type_.to_owned(),
            status: status.to_owned(),
            reason: reason.to_owned(),
            message,
            last_transition_time: since,
            observed_generation: self.generation,
        }
    }
}

/// The Gateway's status for `outcome`; `deployment` names the waypoint's
/// Deployment in messages.
pub fn gateway_status(
    observed: &Observed<'_>,
    outcome: &Outcome,
    deployment: &str,
) -> GatewayStatus {
    match outcome {
        Outcome::Refused(refusal) => GatewayStatus {
            addresses: Vec::new(),
            conditions: vec![
                observed.condition("Accepted", false, refusal.reason(), refusal.to_string()),
                observed.condition(
                    "Programmed",
                    false,
                    "Invalid",
                    "not accepted, so no waypoint runs; see the Accepted condition".into(),
                ),
            ],
        },
        Outcome::Deployed {
            waypoint_for,
            deployed,
        } => {
            let accepted = observed.condition(
                "Accepted",
                true,
                "Accepted",
                format!("waypoint for {waypoint_for} traffic"),
            );
            let programmed = if deployed.available {
                observed.condition(
                    "Programmed",
                    true,
                    "Programmed",
                    format!("Deployment {deployment} has an available replica"),
                )
            } else {
                observed.condition(
                    "Programmed",
                    false,
                    "Pending",
                    format!("waiting for Deployment {deployment} to have an available replica"),
                )
            };
            GatewayStatus {
                addresses: deployed
                    .cluster_ip
                    .iter()
                    .filter(|ip| !ip.is_empty() && *ip != "None")
                    .map(|ip| GatewayStatusAddress {
                        type_: Some("IPAddress".into()),
                        value: ip.clone(),
                    })
                    .collect(),
                conditions: vec![accepted, programmed],
            }
        }
    }
}

/// The status of a GatewayClass whose controllerName is the controller's.
pub fn class_status(observed: &Observed<'_>, controller_name: &str) -> GatewayClassStatus {
    GatewayClassStatus {
        conditions: vec![observed.condition(
            "Accepted",
            true,
            "Accepted",
            format!(
                "handled by {controller_name} (mesh-ca): Gateways of this class run mesh-waypoint"
            ),
        )],
    }
}
