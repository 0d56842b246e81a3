//! L4 security policy: Istio's AuthorizationPolicy (who may connect) and
//! PeerAuthentication (whether plaintext is accepted), evaluated by the
//! destination's agent.
pub mod authz;
pub mod crd;
pub mod l7;
pub mod load;
pub mod model;
pub mod request_auth;
pub mod request_authn;
pub mod sync;

use std::collections::BTreeMap;

pub use authz::{AuthorizationPolicy, Connection, Verdict};
pub use model::MtlsMode;
pub use request_auth::RequestAuth;
pub use sync::{NotSynced, PolicySync};

/// A compiled PeerAuthentication.
#[derive(Debug, Clone, PartialEq)]
pub struct PeerAuthentication {
    pub name: String,
    pub namespace: String,
    pub spec: model::PeerAuthenticationSpec,
}

/// The workload a decision is about.
#[derive(Debug, Clone, Copy)]
pub struct Target<'a> {
    pub namespace: &'a str,
    pub labels: &'a BTreeMap<String, String>,
}

/// Every policy the agent knows, replaced as a whole when the source changes.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PolicySet {
    pub root_namespace: String,
    pub authorization: Vec<AuthorizationPolicy>,
    pub peer_authentication: Vec<PeerAuthentication>,
    /// Whether both kinds have been read whole. Until then the lists above
    /// are incomplete, and inbound paths refuse instead of deciding.
    pub sync: PolicySync,
}

/// The verdict that is enforced, and what dry-run policies would have done.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub enforced: Verdict,
    /// Set when dry-run policies would have changed the outcome.
    pub dry_run: Option<Verdict>,
}

impl PolicySet {
    pub fn authorize(&self, target: Target<'_>, c: &Connection<'_>) -> Decision {
        let applicable = self
            .authorization
            .iter()
            .filter(|p| p.applies_to(&self.root_namespace, target.namespace, target.labels));
        let enforced = authz::evaluate(applicable.clone().filter(|p| !p.dry_run), c);
        let with_dry_run = authz::evaluate(applicable, c);
        let dry_run = (with_dry_run != enforced).then_some(with_dry_run);
        Decision { enforced, dry_run }
    }

    /// The effective mTLS mode for plaintext arriving at `port` of the
    /// target: workload policy over namespace policy over mesh-wide policy
    /// (root namespace); PERMISSIVE when none says otherwise, as in Istio.
    pub fn mtls_mode(&self, target: Target<'_>, port: u16) -> MtlsMode {
        let mode_of = |pa: &PeerAuthentication| {
            let port_mode = pa
                .spec
                .port_level_mtls
                .get(&port)
                .map(|m| m.mode)
                .unwrap_or_default();
            if port_mode != MtlsMode::Unset {
                port_mode
            } else {
                pa.spec.mtls.as_ref().map(|m| m.mode).unwrap_or_default()
            }
        };
        let workload = self.peer_authentication.iter().find(|pa| {
            pa.namespace == target.namespace
                && pa
                    .spec
                    .selector
                    .as_ref()
                    .is_some_and(|s| s.matches(target.labels))
        });
        let namespace = self
            .peer_authentication
            .iter()
            .find(|pa| pa.namespace == target.namespace && pa.spec.selector.is_none());
        let mesh = self
            .peer_authentication
            .iter()
            .find(|pa| pa.namespace == self.root_namespace && pa.spec.selector.is_none());
        [workload, namespace, mesh]
            .into_iter()
            .flatten()
            .map(mode_of)
            .find(|m| *m != MtlsMode::Unset)
            .unwrap_or(MtlsMode::Permissive)
    }
}

#[cfg(test)]
mod tests;
