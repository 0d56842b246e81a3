//! The kinds the waypoint reads beyond routes, whose objects this
//! controller judges: the mesh's own (`HTTPLocalRateLimitPolicy`,
//! `HTTPFaultInjection`, condition `Accepted`) and Istio's
//! (`AuthorizationPolicy` with targetRefs, `RequestAuthentication`,
//! `DestinationRule`, condition `WaypointAccepted`, as istiod writes it
//! on waypoint-bound AuthorizationPolicies). Each is optional: a kind
//! whose CRD is not installed has nothing to report on.
use kube::{Client, api::ApiResource};

use crate::status_controller::served;

/// The condition type on the mesh's own kinds.
pub const ACCEPTED: &str = "Accepted";
/// Istio's condition type for a policy a waypoint takes.
pub const WAYPOINT_ACCEPTED: &str = "WaypointAccepted";

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum PolicyKind {
    RateLimit,
    Fault,
    Authorization,
    RequestAuthentication,
    DestinationRule,
}

impl PolicyKind {
    pub const ALL: [PolicyKind; 5] = [
        PolicyKind::RateLimit,
        PolicyKind::Fault,
        PolicyKind::Authorization,
        PolicyKind::RequestAuthentication,
        PolicyKind::DestinationRule,
    ];

    pub fn name(self) -> &'static str {
        match self {
            PolicyKind::RateLimit => "HTTPLocalRateLimitPolicy",
            PolicyKind::Fault => mesh_route::fault::KIND,
            PolicyKind::Authorization => "AuthorizationPolicy",
            PolicyKind::RequestAuthentication => "RequestAuthentication",
            PolicyKind::DestinationRule => mesh_discovery::destination_rule::KIND,
        }
    }

    pub fn resource(self) -> ApiResource {
        match self {
            PolicyKind::RateLimit => ApiResource::erase::<
                mesh_discovery::ratelimit::HTTPLocalRateLimitPolicyResource,
            >(&()),
            PolicyKind::Fault => mesh_discovery::kubernetes::fault_resource(),
            PolicyKind::Authorization => {
                ApiResource::erase::<mesh_policy::crd::AuthorizationPolicyResource>(&())
            }
            PolicyKind::RequestAuthentication => {
                mesh_discovery::kubernetes::request_authentication_resource()
            }
            PolicyKind::DestinationRule => mesh_discovery::destination_rule::api_resource(),
        }
    }

    /// The one condition type this controller writes on the kind.
    pub fn condition_type(self) -> &'static str {
        match self {
            PolicyKind::RateLimit | PolicyKind::Fault => ACCEPTED,
            PolicyKind::Authorization
            | PolicyKind::RequestAuthentication
            | PolicyKind::DestinationRule => WAYPOINT_ACCEPTED,
        }
    }

    /// Whether an object's status depends on Services, namespaces or
    /// Gateways (its targets), so that a change of those judges it again.
    pub fn has_targets(self) -> bool {
        !matches!(self, PolicyKind::Fault)
    }
}

/// Which of the kinds (and whether Gateways) the API server serves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Served {
    pub kinds: Vec<PolicyKind>,
    pub gateways: bool,
}

impl Served {
    /// Asks the API server for one object of each kind: a 404 means the
    /// kind's CRD is not installed; any other failure is an error (a
    /// forbidden list is a missing permission, not a missing kind).
    pub async fn probe(client: &Client) -> Result<Served, kube::Error> {
        let mut kinds = Vec::new();
        for kind in PolicyKind::ALL {
            if served(client, &kind.resource()).await? {
                kinds.push(kind);
            }
        }
        let gateways = served(client, &mesh_discovery::kubernetes::gateway_resource()).await?;
        Ok(Served { kinds, gateways })
    }
}
