//! The agent's copy of the cluster: every object either source delivered,
//! keyed as Kubernetes keys them, kept as the slim model types. Sources
//! change it one object or one kind at a time; the view is rebuilt from it.
use std::{
    collections::{BTreeMap, BTreeSet},
    sync::Arc,
};

use mesh_policy::{AuthorizationPolicy, PeerAuthentication, PolicySync};

use super::model::{EndpointSlice, Gateway, Labels, Service, Workload};

/// One kind's objects by key (`<namespace>/<name>`, a pod's uid, or a
/// namespace's name), and the keys of objects of the kind that exist but
/// could not be used (malformed, over a bound): those count as absent, and
/// are counted so that `mesh status` and a metric show them.
#[derive(Debug)]
pub struct Collection<T> {
    objects: BTreeMap<String, Arc<T>>,
    ignored: BTreeSet<String>,
}

impl<T> Default for Collection<T> {
    fn default() -> Self {
        Self {
            objects: BTreeMap::new(),
            ignored: BTreeSet::new(),
        }
    }
}

impl<T> Clone for Collection<T> {
    fn clone(&self) -> Self {
        Self {
            objects: self.objects.clone(),
            ignored: self.ignored.clone(),
        }
    }
}

impl<T> Collection<T> {
    pub fn apply(&mut self, key: String, value: T) {
        self.ignored.remove(&key);
        self.objects.insert(key, Arc::new(value));
    }

    pub fn delete(&mut self, key: &str) {
        self.ignored.remove(key);
        self.objects.remove(key);
    }

    /// An object that exists but cannot be used: absent, and counted.
    pub fn ignore(&mut self, key: String) {
        self.objects.remove(&key);
        self.ignored.insert(key);
    }

    /// Replaces every object of the kind (a full list after a re-list),
    /// with the keys of the listed objects that could not be used.
    pub fn replace(
        &mut self,
        objects: impl IntoIterator<Item = (String, T)>,
        ignored: impl IntoIterator<Item = String>,
    ) {
        self.objects = objects.into_iter().map(|(k, v)| (k, Arc::new(v))).collect();
        self.ignored = ignored.into_iter().collect();
    }

    pub fn get(&self, key: &str) -> Option<&Arc<T>> {
        self.objects.get(key)
    }

    pub fn len(&self) -> usize {
        self.objects.len()
    }

    pub fn is_empty(&self) -> bool {
        self.objects.is_empty()
    }

    /// Objects of the kind that exist but could not be used.
    pub fn ignored(&self) -> usize {
        self.ignored.len()
    }

    pub fn iter(&self) -> impl Iterator<Item = (&String, &Arc<T>)> {
        self.objects.iter()
    }

    pub fn values(&self) -> impl Iterator<Item = &Arc<T>> {
        self.objects.values()
    }
}

/// An AuthorizationPolicy object compiles to what node agents enforce
/// (`node`: nothing for AUDIT or for a policy bound by `targetRefs`) and
/// what waypoints enforce (`waypoint`: only a policy bound by `targetRefs`).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CompiledPolicy {
    pub node: Option<AuthorizationPolicy>,
    pub waypoint: Option<Arc<mesh_policy::l7::WaypointPolicy>>,
}

#[derive(Debug, Default, Clone)]
pub struct Store {
    /// By uid.
    pub pods: Collection<Workload>,
    pub services: Collection<Service>,
    pub slices: Collection<EndpointSlice>,
    /// Namespace name → labels.
    pub namespaces: Collection<Labels>,
    pub authorization: Collection<CompiledPolicy>,
    pub peer_authentication: Collection<PeerAuthentication>,
    /// Gateway API Gateways of any class, by `<namespace>/<name>`; the
    /// view keeps those of the waypoint class.
    pub gateways: Collection<Gateway>,
    /// Gateway API HTTPRoutes, compiled, by `<namespace>/<name>`. A route
    /// that does not compile is ignored here (absent, counted) and
    /// reported in its status.
    pub http_routes: Collection<mesh_route::CompiledRoute>,
    /// GRPCRoutes, likewise.
    pub grpc_routes: Collection<mesh_route::CompiledRoute>,
    /// HTTPFaultInjections (mesh.io), checked, by `<namespace>/<name>`; one
    /// that does not validate is ignored here (absent, counted), so the
    /// rules that name it answer 500.
    pub faults: Collection<mesh_route::fault::Fault>,
    /// Istio RequestAuthentications, checked (inline JWKS parsed), by
    /// `<namespace>/<name>`; one that does not validate is ignored here
    /// (absent, counted).
    pub request_authentications: Collection<mesh_policy::request_authn::RequestAuthentication>,
    /// Node name → addresses. Local files only: they tell `mesh status`
    /// where the other nodes' agents are (the agent itself needs no Nodes).
    pub nodes: Collection<Vec<std::net::IpAddr>>,
    /// HTTPLocalRateLimitPolicies, checked, by `<namespace>/<name>`; one
    /// that does not validate is ignored here (absent, counted).
    pub rate_limits: Collection<crate::ratelimit::RateLimitPolicy>,
    /// Istio DestinationRules, checked, by `<namespace>/<name>`; one that
    /// does not validate is ignored here (absent, counted).
    pub destination_rules: Collection<crate::destination_rule::DestinationRule>,
    /// Whether `authorization` and `peer_authentication` are complete. A
    /// default store is not: a source says when it has read them whole.
    pub policy_sync: PolicySync,
}

/// How many objects of each kind the store holds, for logs and metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct StoreSizes {
    pub pods: usize,
    pub services: usize,
    pub endpoint_slices: usize,
    pub namespaces: usize,
    pub authorization_policies: usize,
    pub peer_authentications: usize,
    pub gateways: usize,
    pub routes: usize,
    /// Objects of any kind that exist but could not be used (each logged).
    pub ignored: usize,
}

impl Store {
    pub fn sizes(&self) -> StoreSizes {
        StoreSizes {
            pods: self.pods.len(),
            services: self.services.len(),
            endpoint_slices: self.slices.len(),
            namespaces: self.namespaces.len(),
            authorization_policies: self.authorization.len(),
            peer_authentications: self.peer_authentication.len(),
            gateways: self.gateways.len(),
            routes: self.http_routes.len() + self.grpc_routes.len(),
            ignored: self.pods.ignored()
                + self.services.ignored()
                + self.slices.ignored()
                + self.namespaces.ignored()
                + self.authorization.ignored()
                + self.peer_authentication.ignored()
                + self.gateways.ignored()
                + self.http_routes.ignored()
                + self.faults.ignored()
                + self.request_authentications.ignored()
                + self.grpc_routes.ignored()
                + self.rate_limits.ignored()
                + self.destination_rules.ignored(),
        }
    }
}
