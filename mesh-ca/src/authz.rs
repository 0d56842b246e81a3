//! Who is asking, and may they have this identity? A node agent proves its
//! node with a credential, and may obtain only identities of workloads
//! scheduled on that node (ztunnel's impersonation model).
use std::collections::{BTreeMap, BTreeSet};

use mesh_identity::Identity;

use super::config::CaFile;
pub use super::error::AuthzError;

/// Who decides: the local file's tokens and pods, or the Kubernetes API.
pub enum Authority {
    /// Replaced when the CA's file changes (new pods, new nodes).
    Local(std::sync::Arc<std::sync::RwLock<std::sync::Arc<Authorizer>>>),
    Kubernetes(super::kubernetes::KubeAuthority),
}

impl Authority {
    pub async fn authenticate(&self, authorization: Option<&str>) -> Result<String, AuthzError> {
        match self {
            Authority::Local(a) => {
                let a = a.read().unwrap().clone();
                a.authenticate(authorization).map(str::to_owned)
            }
            Authority::Kubernetes(k) => k.authenticate(authorization).await,
        }
    }

    pub async fn authorize(&self, node: &str, identity: &Identity) -> Result<(), AuthzError> {
        match self {
            Authority::Local(a) => {
                let a = a.read().unwrap().clone();
                a.authorize(node, identity)
            }
            Authority::Kubernetes(k) => k.authorize(node, identity).await,
        }
    }
}

/// Everything the CA decides with, rebuilt when its file changes.
#[derive(Debug, Default)]
pub struct Authorizer {
    /// token -> node name.
    tokens: BTreeMap<String, String>,
    /// node name -> (namespace, service account) of its pods.
    placement: BTreeMap<String, BTreeSet<(String, String)>>,
}

impl Authorizer {
    /// Reads the node credentials; a missing token file, or a token two
    /// nodes share, is an error that names them.
    pub fn from_file(file: &CaFile) -> anyhow::Result<Self> {
        // token -> (node, its token file), the file kept for the error.
        let mut tokens: BTreeMap<String, (String, &std::path::Path)> = BTreeMap::new();
        for node in &file.config.nodes {
            let token = std::fs::read_to_string(&node.token_file).map_err(|e| {
                anyhow::anyhow!(
                    "CaConfig.nodes[{}].tokenFile {}: {e}",
                    node.name,
                    node.token_file.display()
                )
            })?;
            let token = token.trim().to_owned();
            if token.len() < 16 {
                anyhow::bail!(
                    "CaConfig.nodes[{}].tokenFile {}: token shorter than 16 characters; use a random one",
                    node.name,
                    node.token_file.display()
                );
            }
            // A shared token cannot say which node is calling: the later
            // entry would take it over, and the first node's agent would be
            // handed the other node's workload identities.
            if let Some((first, first_file)) = tokens.get(&token) {
                anyhow::bail!(
                    "CaConfig.nodes[{}].tokenFile {} holds the same token as nodes[{first}].tokenFile {}; give each node its own random token (e.g. `head -c 32 /dev/urandom | base64 > {}`) and update that node's agent",
                    node.name,
                    node.token_file.display(),
                    first_file.display(),
                    node.token_file.display()
                );
            }
            tokens.insert(token, (node.name.clone(), &node.token_file));
        }
        let tokens = tokens
            .into_iter()
            .map(|(token, (node, _))| (token, node))
            .collect();
        let mut placement: BTreeMap<String, BTreeSet<_>> = BTreeMap::new();
        for w in file.workloads.iter().filter(|w| !w.finished) {
            if let Some(node) = &w.node {
                placement
                    .entry(node.clone())
                    .or_default()
                    .insert((w.namespace.clone(), w.service_account.clone()));
            }
        }
        Ok(Self { tokens, placement })
    }

    /// The node whose agent holds this `authorization` header value.
    pub fn authenticate(&self, authorization: Option<&str>) -> Result<&str, AuthzError> {
        let token = authorization
            .and_then(|h| h.strip_prefix("Bearer "))
            .ok_or(AuthzError::NoToken)?;
        // Compare every entry, so timing does not reveal a prefix match.
        let mut found = None;
        for (known, node) in &self.tokens {
            if constant_time_eq(known.as_bytes(), token.as_bytes()) {
                found = Some(node.as_str());
            }
        }
        found.ok_or(AuthzError::UnknownToken)
    }

    /// Whether `node` runs a pod with `identity`'s namespace and service
    /// account (the service has checked the trust domain).
    pub fn authorize(&self, node: &str, identity: &Identity) -> Result<(), AuthzError> {
        let key = (
            identity.namespace().to_owned(),
            identity.service_account().to_owned(),
        );
        if self
            .placement
            .get(node)
            .is_some_and(|ids| ids.contains(&key))
        {
            Ok(())
        } else {
            Err(AuthzError::NotOnNode {
                node: node.to_owned(),
                identity: identity.to_string(),
            })
        }
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}
