//! Who is asking, and may they have this identity? Two kinds of caller:
//! - a node agent proves its node with a credential, and may obtain only
//!   identities of workloads scheduled on that node (ztunnel's
//!   impersonation model);
//! - a workload not served by a node agent (the waypoint proxy, which runs
//!   as an ordinary pod) proves its service account, and may obtain exactly
//!   its own identity, `spiffe://<trust domain>/ns/<namespace>/sa/<name>`.
//!
//! The service checks the trust domain before asking here, for both.
use std::{
    collections::{BTreeMap, BTreeSet},
    fmt,
    path::Path,
};

use mesh_identity::Identity;

use super::config::CaFile;
pub use super::error::AuthzError;

/// Who decides: the local file's tokens and pods, or the Kubernetes API.
#[expect(
    clippy::large_enum_variant,
    reason = "one Authority per CA process, never moved in a hot path"
)]
pub enum Authority {
    /// Replaced when the CA's file changes (new pods, nodes, workloads).
    Local(std::sync::Arc<std::sync::RwLock<std::sync::Arc<Authorizer>>>),
    Kubernetes(super::kubernetes::KubeAuthority),
}

impl Authority {
    pub async fn authenticate(&self, authorization: Option<&str>) -> Result<Caller, AuthzError> {
        match self {
            Authority::Local(a) => {
                let a = a.read().unwrap().clone();
                a.authenticate(authorization).cloned()
            }
            Authority::Kubernetes(k) => k.authenticate(authorization).await,
        }
    }

    /// Whether `caller` may obtain `identity` (whose trust domain the
    /// service has checked): its own, or one scheduled on its node.
    pub async fn authorize(&self, caller: &Caller, identity: &Identity) -> Result<(), AuthzError> {
        let node = match caller.grant(identity)? {
            Grant::Own => return Ok(()),
            Grant::IfScheduledOn(node) => node,
        };
        match self {
            Authority::Local(a) => {
                let a = a.read().unwrap().clone();
                a.scheduled_on(node, identity)
            }
            Authority::Kubernetes(k) => k.scheduled_on(node, identity).await,
        }
    }
}

/// A Kubernetes service account, `<namespace>/<name>`, with parts that are
/// valid Kubernetes names (and so valid SPIFFE path segments).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ServiceAccount {
    namespace: String,
    name: String,
}

/// The prefix of a service account's user name in Kubernetes.
const SERVICE_ACCOUNT_USER: &str = "system:serviceaccount:";

impl ServiceAccount {
    /// `namespace` a DNS label, `name` a DNS subdomain, as Kubernetes
    /// names them.
    pub fn new(namespace: &str, name: &str) -> Result<Self, String> {
        if !is_dns_name(namespace, 63, false) {
            return Err(format!(
                "namespace `{namespace}` is not a Kubernetes namespace name (lowercase letters, digits and '-', at most 63)"
            ));
        }
        if !is_dns_name(name, 253, true) {
            return Err(format!(
                "name `{name}` is not a Kubernetes service account name (lowercase letters, digits, '-' and '.', at most 253)"
            ));
        }
        Ok(Self {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
        })
    }

    /// `<namespace>/<name>`, as `CaConfig` writes it.
    pub fn parse(text: &str) -> Result<Self, String> {
        let (namespace, name) = text
            .split_once('/')
            .ok_or_else(|| format!("`{text}`: use <namespace>/<name>"))?;
        Self::new(namespace, name).map_err(|e| format!("`{text}`: {e}"))
    }

    /// The account behind a Kubernetes user name
    /// (`system:serviceaccount:<namespace>:<name>`); `None` for users that
    /// are not service accounts.
    pub fn from_username(username: &str) -> Option<Self> {
        let (namespace, name) = username
            .strip_prefix(SERVICE_ACCOUNT_USER)?
            .split_once(':')?;
        Self::new(namespace, name).ok()
    }

    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Whether `identity` is this account's, in any trust domain.
    pub fn owns(&self, identity: &Identity) -> bool {
        identity.namespace() == self.namespace && identity.service_account() == self.name
    }
}

impl fmt::Display for ServiceAccount {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

fn is_dns_name(s: &str, max: usize, dots: bool) -> bool {
    let edge = |c: Option<char>| c.is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
    s.len() <= max
        && edge(s.chars().next())
        && edge(s.chars().last())
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || (dots && c == '.'))
}

/// A caller the CA has authenticated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    /// A node agent, asking on behalf of the workloads of its node.
    NodeAgent { node: String },
    /// A workload asking for itself.
    Workload(ServiceAccount),
}

impl fmt::Display for Caller {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Caller::NodeAgent { node } => write!(f, "node agent of {node}"),
            Caller::Workload(account) => write!(f, "workload {account}"),
        }
    }
}

/// What the caller alone settles about an identity it asks for.
#[derive(Debug, PartialEq, Eq)]
pub enum Grant<'a> {
    /// Its own identity: nothing more to check.
    Own,
    /// Allowed only if a pod with the identity is scheduled on this node.
    IfScheduledOn(&'a str),
}

impl Caller {
    /// A workload gets its own identity and nothing else; a node agent
    /// whatever runs on its node, which only the pods can tell.
    pub fn grant(&self, identity: &Identity) -> Result<Grant<'_>, AuthzError> {
        match self {
            Caller::NodeAgent { node } => Ok(Grant::IfScheduledOn(node)),
            Caller::Workload(account) if account.owns(identity) => Ok(Grant::Own),
            Caller::Workload(account) => Err(AuthzError::NotOwnIdentity {
                caller: account.clone(),
                identity: identity.to_string(),
            }),
        }
    }
}

/// Everything the CA decides with, rebuilt when its file changes.
#[derive(Debug, Default)]
pub struct Authorizer {
    /// token -> who presents it.
    tokens: BTreeMap<String, Caller>,
    /// node name -> (namespace, service account) of its pods.
    placement: BTreeMap<String, BTreeSet<(String, String)>>,
}

impl Authorizer {
    /// Reads the node agents' and workloads' credentials; a missing token
    /// file, or a token two entries share, is an error that names them.
    pub fn from_file(file: &CaFile) -> anyhow::Result<Self> {
        let nodes = file.config.nodes.iter().map(|node| {
            (
                format!("nodes[{}]", node.name),
                node.token_file.as_path(),
                Caller::NodeAgent {
                    node: node.name.clone(),
                },
            )
        });
        let workloads = file.config.workloads.iter().enumerate().map(|(i, w)| {
            (
                format!("workloads[{i}]"),
                w.token_file.as_path(),
                Caller::Workload(w.service_account.clone()),
            )
        });
        // token -> (caller, its entry, its token file), the last two kept
        // for the error.
        let mut tokens: BTreeMap<String, (Caller, String, &Path)> = BTreeMap::new();
        for (entry, token_file, caller) in nodes.chain(workloads) {
            let token = std::fs::read_to_string(token_file).map_err(|e| {
                anyhow::anyhow!("CaConfig.{entry}.tokenFile {}: {e}", token_file.display())
            })?;
            let token = token.trim().to_owned();
            if token.len() < 16 {
                anyhow::bail!(
                    "CaConfig.{entry}.tokenFile {}: token shorter than 16 characters; use a random one",
                    token_file.display()
                );
            }
            // A shared token cannot say who is calling: the later entry
            // would take it over, and the first entry's holder would be
            // handed the other's identities.
            if let Some((_, first, first_file)) = tokens.get(&token) {
                anyhow::bail!(
                    "CaConfig.{entry}.tokenFile {} holds the same token as {first}.tokenFile {}; give each node agent and workload its own random token (e.g. `head -c 32 /dev/urandom | base64 > {}`) and update its holder",
                    token_file.display(),
                    first_file.display(),
                    token_file.display()
                );
            }
            tokens.insert(token, (caller, entry, token_file));
        }
        let tokens = tokens
            .into_iter()
            .map(|(token, (caller, _, _))| (token, caller))
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

    /// Who holds this `authorization` header value.
    pub fn authenticate(&self, authorization: Option<&str>) -> Result<&Caller, AuthzError> {
        let token = authorization
            .and_then(|h| h.strip_prefix("Bearer "))
            .ok_or(AuthzError::NoToken)?;
        // Compare every entry, so timing does not reveal a prefix match.
        let mut found = None;
        for (known, caller) in &self.tokens {
            if constant_time_eq(known.as_bytes(), token.as_bytes()) {
                found = Some(caller);
            }
        }
        found.ok_or(AuthzError::UnknownToken)
    }

    /// Whether `node` runs a pod with `identity`'s namespace and service
    /// account (the service has checked the trust domain).
    pub fn scheduled_on(&self, node: &str, identity: &Identity) -> Result<(), AuthzError> {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn id(td: &str, ns: &str, sa: &str) -> Identity {
        Identity::new(td, ns, sa).unwrap()
    }

    #[test]
    fn a_workload_is_granted_its_own_identity_and_nothing_else() {
        let caller = Caller::Workload(ServiceAccount::new("shop", "waypoint").unwrap());
        assert_eq!(
            caller.grant(&id("cluster.local", "shop", "waypoint")),
            Ok(Grant::Own)
        );
        for (ns, sa) in [("shop", "web"), ("other", "waypoint"), ("waypoint", "shop")] {
            let asked = id("cluster.local", ns, sa);
            let e = caller.grant(&asked).unwrap_err();
            assert_eq!(
                e,
                AuthzError::NotOwnIdentity {
                    caller: ServiceAccount::new("shop", "waypoint").unwrap(),
                    identity: asked.to_string(),
                }
            );
            let message = e.to_string();
            assert!(
                message.contains("shop/waypoint"),
                "names the caller: {message}"
            );
            assert!(
                message.contains(&asked.to_string()),
                "names what it asked for: {message}"
            );
            assert_eq!(e.status().code(), tonic::Code::PermissionDenied);
        }
    }

    #[test]
    fn a_node_agent_is_sent_to_its_nodes_pods() {
        let caller = Caller::NodeAgent { node: "n1".into() };
        assert_eq!(
            caller.grant(&id("cluster.local", "shop", "web")),
            Ok(Grant::IfScheduledOn("n1"))
        );
    }

    #[test]
    fn service_accounts_are_read_from_config_and_user_names() {
        let sa = ServiceAccount::parse("shop/waypoint").unwrap();
        assert_eq!((sa.namespace(), sa.name()), ("shop", "waypoint"));
        assert_eq!(sa.to_string(), "shop/waypoint");
        assert_eq!(
            ServiceAccount::parse("istio-system/my.proxy-1")
                .unwrap()
                .name(),
            "my.proxy-1"
        );
        for bad in [
            "shop",
            "/waypoint",
            "shop/",
            "shop/way/point",
            "Shop/waypoint",
            "sh.op/waypoint",
            "shop/-waypoint",
            "shop/way point",
            "shop/waypoint:x",
        ] {
            assert!(ServiceAccount::parse(bad).is_err(), "{bad}");
        }
        assert!(ServiceAccount::parse(&format!("{}/a", "n".repeat(64))).is_err());
        assert_eq!(
            ServiceAccount::from_username("system:serviceaccount:shop:waypoint"),
            Some(sa)
        );
        for not_one in [
            "system:node:n1",
            "alice",
            "system:serviceaccount:shop",
            "system:serviceaccount:shop:way:point",
            "system:serviceaccounts:shop:waypoint",
        ] {
            assert_eq!(ServiceAccount::from_username(not_one), None, "{not_one}");
        }
    }

    #[test]
    fn an_account_owns_its_identity_in_any_trust_domain() {
        // The trust domain is the service's check, made for every caller
        // before this one.
        let sa = ServiceAccount::new("shop", "waypoint").unwrap();
        assert!(sa.owns(&id("cluster.local", "shop", "waypoint")));
        assert!(sa.owns(&id("other.example", "shop", "waypoint")));
        assert!(!sa.owns(&id("cluster.local", "shop", "waypoint2")));
    }
}
