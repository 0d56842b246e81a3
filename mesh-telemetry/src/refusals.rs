//! Connections the agent refused to hold before any AuthorizationPolicy
//! was asked: shed at a connection cap, closed at the handshake deadline,
//! traffic to the mesh's own ports, HTTP/2 peers that broke the rules,
//! plaintext under STRICT mTLS. One counter family, so a dashboard shows an
//! attack or a misconfiguration at a glance.
use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family},
    registry::Registry,
};

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct RefusalLabels {
    /// `outbound` (15001), `inbound` (15006) or `hbone` (15008).
    listener: &'static str,
    /// What was hit, e.g. `per_source`, `total`, `handshake_timeout`,
    /// `own_port`, `loopback_source`, `resets`, `strict` (plaintext under
    /// STRICT), `strict_without_ca` (the same on an agent with no CA).
    reason: &'static str,
}

#[derive(Default, Clone)]
pub struct RefusalMetrics {
    refused: Family<RefusalLabels, Counter>,
}

impl RefusalMetrics {
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "mesh_proxy_refused_connections",
            "Connections and streams refused before authorization policy: limits, deadlines, traffic to the agent's own ports, plaintext under STRICT mTLS",
            self.refused.clone(),
        );
    }

    pub fn refused(&self, listener: &'static str, reason: &'static str) {
        self.refused
            .get_or_create(&RefusalLabels { listener, reason })
            .inc();
    }

    pub fn count(&self, listener: &'static str, reason: &'static str) -> u64 {
        self.refused
            .get_or_create(&RefusalLabels { listener, reason })
            .get()
    }
}
