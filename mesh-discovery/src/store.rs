//! The agent's copy of the cluster: every object either source delivered,
//! keyed as Kubernetes keys them, kept as the slim model types. Sources
//! change it one object or one kind at a time; the view is rebuilt from it.
use std::{collections::BTreeMap, sync::Arc};

use mesh_policy::{AuthorizationPolicy, PeerAuthentication, PolicySync};

use super::model::{EndpointSlice, Labels, Service, Workload};

/// One kind's objects by key (`<namespace>/<name>`, a pod's uid, or a
/// namespace's name).
#[derive(Debug)]
pub struct Collection<T>(BTreeMap<String, Arc<T>>);

impl<T> Default for Collection<T> {
    fn default() -> Self {
        Self(BTreeMap::new())
    }
}

impl<T> Clone for Collection<T> {
    fn clone(&self) -> Self {
        Self(self.0.clone())
    }
}

impl<T> Collection<T> {
    pub fn apply(&mut self, key: String, value: T) {
        self.0.insert(key, Arc::new(value));
    }

    pub fn delete(&mut self, key: &str) {
        self.0.remove(key);
    }

    /// Replaces every object of the kind (a full list after a re-list).
    pub fn replace(&mut self, objects: impl IntoIterator<Item = (String, T)>) {
        self.0 = objects.into_iter().map(|(k, v)| (k, Arc::new(v))).collect();
    }

    pub fn get(&self, key: &str) -> Option<&Arc<T>> {
        self.0.get(key)
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = (&String, &Arc<T>)> {
        self.0.iter()
    }

    pub fn values(&self) -> impl Iterator<Item = &Arc<T>> {
        self.0.values()
    }
}

/// A policy object compiles to nothing (AUDIT) or one enforced policy.
pub type CompiledPolicy = Option<AuthorizationPolicy>;

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
    /// Node name → addresses. Local files only: they tell `mesh status`
    /// where the other nodes' agents are (the agent itself needs no Nodes).
    pub nodes: Collection<Vec<std::net::IpAddr>>,
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
        }
    }
}
