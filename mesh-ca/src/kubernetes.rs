//! The CA in a Kubernetes cluster: callers prove themselves with their
//! projected service-account token (TokenReview, with a dedicated audience).
//! A token of the node agents' service account names a node (from the
//! token's bound pod), and a node may have the identities of the pods
//! scheduled on it; a token of any other service account, bound to a pod,
//! names a workload, which may have exactly its own identity. The root
//! comes from a Secret.
use std::{
    collections::{BTreeMap, HashMap},
    sync::{Mutex, PoisonError},
    time::{Duration, Instant},
};

use k8s_openapi::{
    ByteString,
    api::{
        authentication::v1::{TokenReview, TokenReviewSpec, TokenReviewStatus},
        core::v1::{ConfigMap, Pod, Secret},
    },
};
use kube::{
    Api, Client,
    api::{ListParams, ObjectMeta, Patch, PatchParams, PostParams},
};
use mesh_identity::Identity;
use serde::Deserialize;

use super::{
    authz::{Caller, ServiceAccount},
    error::AuthzError,
    root::{self, Root, RootError},
};

/// The node a bound service-account token was issued for.
const NODE_NAME_EXTRA: &str = "authentication.kubernetes.io/node-name";
/// The pod a bound service-account token was issued for.
const POD_NAME_EXTRA: &str = "authentication.kubernetes.io/pod-name";
/// How long a TokenReview's answer stands for the same token. An agent asks
/// for every workload on its node with one token, so a node starting many
/// pods would otherwise cost one TokenReview per certificate. Acceptance is
/// kept briefly (a deleted pod's token, an agent's or a workload's, stays
/// usable that long; the pod check in `scheduled_on` is not cached),
/// refusal for less, so a token that was not yet valid is not refused for
/// long.
const REVIEW_ACCEPTED_TTL: Duration = Duration::from_secs(60);
const REVIEW_REFUSED_TTL: Duration = Duration::from_secs(5);
/// Far above the agents of any one cluster; bounds what callers presenting
/// ever new tokens can make the CA hold.
const REVIEW_CACHE_ENTRIES: usize = 4096;
pub const CERT_KEY: &str = "ca-cert.pem";
pub const KEY_KEY: &str = "ca-key.pem";

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct KubernetesSettings {
    /// Where the root lives: a Secret with `ca-cert.pem` and `ca-key.pem`.
    pub root_secret: SecretRef,
    /// The audience the projected tokens of node agents and of workloads
    /// asking for themselves (the waypoint) are minted for.
    #[serde(default = "default_audience")]
    pub token_audience: String,
    /// `<namespace>/<name>` of the node agents' service account: its
    /// tokens obtain the identities of pods on the token's node. A token of
    /// any other account obtains only that account's own identity.
    pub agent_service_account: String,
    /// The trust domain's key material is created in the Secret when absent.
    #[serde(default)]
    pub create_root: bool,
    /// A ConfigMap the root certificate (never the key) is published to,
    /// as `root-cert.pem`, for the node agents to mount.
    #[serde(default)]
    pub root_cert_config_map: Option<SecretRef>,
}

/// The key under which the published root certificate sits.
pub const ROOT_CERT_CONFIG_KEY: &str = "root-cert.pem";

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SecretRef {
    pub namespace: String,
    pub name: String,
}

fn default_audience() -> String {
    "mesh-ca".into()
}

#[derive(Debug, thiserror::Error)]
pub enum KubeError {
    #[error("Kubernetes API: {0}")]
    Api(#[from] kube::Error),
    #[error("Secret {namespace}/{name}: {problem}")]
    Secret {
        namespace: String,
        name: String,
        problem: String,
    },
    #[error(transparent)]
    Root(#[from] RootError),
}

pub struct KubeAuthority {
    client: Client,
    audience: String,
    agents: ServiceAccount,
    reviews: ReviewCache,
}

/// Recent TokenReview answers: the caller for an accepted token, the
/// reason for a refused one. Keyed by the token's SHA-256, so the CA's memory
/// holds no usable credential. Failures to reach the API server are not
/// kept: they say nothing about the token.
#[derive(Default)]
struct ReviewCache {
    entries: Mutex<HashMap<[u8; 32], Review>>,
}

/// When the answer stops counting, and the caller or the refusal's reason.
type Review = (Instant, Result<Caller, String>);

impl ReviewCache {
    fn key(token: &str) -> [u8; 32] {
        let digest = ring::digest::digest(&ring::digest::SHA256, token.as_bytes());
        let mut key = [0u8; 32];
        key.copy_from_slice(digest.as_ref());
        key
    }

    fn get(&self, key: &[u8; 32], now: Instant) -> Option<Result<Caller, AuthzError>> {
        // The map holds no invariant a panicking holder could break.
        let entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        let (expires, answer) = entries.get(key)?;
        (now < *expires).then(|| answer.clone().map_err(AuthzError::Rejected))
    }

    fn put(&self, key: [u8; 32], answer: &Result<Caller, AuthzError>, now: Instant) {
        let (ttl, kept) = match answer {
            Ok(caller) => (REVIEW_ACCEPTED_TTL, Ok(caller.clone())),
            Err(AuthzError::Rejected(why)) => (REVIEW_REFUSED_TTL, Err(why.clone())),
            Err(_) => return,
        };
        let mut entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        if entries.len() >= REVIEW_CACHE_ENTRIES && !entries.contains_key(&key) {
            entries.retain(|_, (expires, _)| *expires > now);
            // Still full: drop what would expire first. Refusals live
            // shortest, so a flood of bad tokens displaces itself before it
            // displaces accepted agents.
            if entries.len() >= REVIEW_CACHE_ENTRIES
                && let Some(first) = entries
                    .iter()
                    .min_by_key(|(_, (expires, _))| *expires)
                    .map(|(k, _)| *k)
            {
                entries.remove(&first);
            }
        }
        entries.insert(key, (now + ttl, kept));
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.entries
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }
}

impl KubeAuthority {
    pub fn new(client: Client, settings: &KubernetesSettings) -> anyhow::Result<Self> {
        let agents = ServiceAccount::parse(&settings.agent_service_account)
            .map_err(|e| anyhow::anyhow!("CaConfig.kubernetes.agentServiceAccount {e}"))?;
        Ok(Self {
            client,
            audience: settings.token_audience.clone(),
            agents,
            reviews: ReviewCache::default(),
        })
    }

    /// Who presented this token: a node agent (by its node) or a workload
    /// (by its service account).
    pub async fn authenticate(&self, authorization: Option<&str>) -> Result<Caller, AuthzError> {
        let token = authorization
            .and_then(|h| h.strip_prefix("Bearer "))
            .ok_or(AuthzError::NoToken)?;
        let key = ReviewCache::key(token);
        if let Some(answer) = self.reviews.get(&key, Instant::now()) {
            return answer;
        }
        let answer = self.review(token).await;
        self.reviews.put(key, &answer, Instant::now());
        answer
    }

    /// Asks the API server who holds `token`.
    async fn review(&self, token: &str) -> Result<Caller, AuthzError> {
        let review = TokenReview {
            metadata: ObjectMeta::default(),
            spec: TokenReviewSpec {
                token: token.to_owned(),
                audiences: Some(vec![self.audience.clone()]),
            },
            status: None,
        };
        let answer = Api::<TokenReview>::all(self.client.clone())
            .create(&PostParams::default(), &review)
            .await
            .map_err(|e| AuthzError::Backend(format!("TokenReview: {e}")))?;
        caller_of(
            &answer.status.unwrap_or_default(),
            &self.audience,
            &self.agents,
        )
    }

    /// Whether a running pod on `node` has `identity`.
    pub async fn scheduled_on(&self, node: &str, identity: &Identity) -> Result<(), AuthzError> {
        let pods = Api::<Pod>::namespaced(self.client.clone(), identity.namespace())
            .list(&ListParams::default().fields(&format!("spec.nodeName={node}")))
            .await
            .map_err(|e| AuthzError::Backend(format!("listing pods: {e}")))?;
        let found = pods.items.iter().any(|p| {
            let sa = p
                .spec
                .as_ref()
                .and_then(|s| s.service_account_name.as_deref())
                .unwrap_or("default");
            let phase = p.status.as_ref().and_then(|s| s.phase.as_deref());
            sa == identity.service_account() && !matches!(phase, Some("Succeeded" | "Failed"))
        });
        if found {
            Ok(())
        } else {
            Err(AuthzError::NotOnNode {
                node: node.to_owned(),
                identity: identity.to_string(),
            })
        }
    }
}

/// The caller a TokenReview's answer names: the agents' account bound to a
/// node is a node agent; any other service account bound to a pod is a
/// workload. Everything else is refused: unauthenticated tokens, other
/// audiences, users that are not service accounts, and tokens bound to no
/// pod (a token minted for a pod stops working when the pod is gone; an
/// unbound one lives as long as it was asked to).
fn caller_of(
    status: &TokenReviewStatus,
    audience: &str,
    agents: &ServiceAccount,
) -> Result<Caller, AuthzError> {
    if status.authenticated != Some(true) {
        return Err(AuthzError::Rejected(
            status
                .error
                .clone()
                .unwrap_or_else(|| "token not authenticated".into()),
        ));
    }
    if !status
        .audiences
        .as_ref()
        .is_some_and(|a| a.iter().any(|a| a == audience))
    {
        return Err(AuthzError::Rejected(format!(
            "token is not for audience {audience}"
        )));
    }
    let user = status.user.clone().unwrap_or_default();
    let username = user.username.unwrap_or_default();
    let extra = |key: &str| {
        user.extra
            .as_ref()
            .and_then(|e| e.get(key))
            .and_then(|v| v.first())
            .filter(|v| !v.is_empty())
            .cloned()
    };
    let account = ServiceAccount::from_username(&username).ok_or_else(|| {
        AuthzError::Rejected(format!(
            "{username} is not a service account; present a projected service-account token"
        ))
    })?;
    if account == *agents {
        let node = extra(NODE_NAME_EXTRA).ok_or_else(|| {
            AuthzError::Rejected(format!(
                "{username} (the node agents' service account): token is not bound to a pod on a node (no node-name); use a projected service-account token"
            ))
        })?;
        return Ok(Caller::NodeAgent { node });
    }
    if extra(POD_NAME_EXTRA).is_none() {
        return Err(AuthzError::Rejected(format!(
            "{username}: token is not bound to a pod (no pod-name); use a projected service-account token"
        )));
    }
    Ok(Caller::Workload(account))
}

fn secret_error(r: &SecretRef, problem: impl Into<String>) -> KubeError {
    KubeError::Secret {
        namespace: r.namespace.clone(),
        name: r.name.clone(),
        problem: problem.into(),
    }
}

/// Loads the root from its Secret; with `create`, makes one first when the
/// Secret does not exist (a concurrent replica's creation wins; its root is
/// then loaded).
pub async fn root_from_secret(
    client: Client,
    r: &SecretRef,
    create: bool,
    trust_domain: &str,
) -> Result<Root, KubeError> {
    let api = Api::<Secret>::namespaced(client, &r.namespace);
    let secret = match api.get_opt(&r.name).await? {
        Some(s) => s,
        None if create => {
            let (cert, key) = root::generate(trust_domain, Duration::from_secs(10 * 365 * 86400))?;
            let secret = Secret {
                metadata: ObjectMeta {
                    name: Some(r.name.clone()),
                    namespace: Some(r.namespace.clone()),
                    ..Default::default()
                },
                data: Some(BTreeMap::from([
                    (CERT_KEY.to_owned(), ByteString(cert.into_bytes())),
                    (KEY_KEY.to_owned(), ByteString(key.into_bytes())),
                ])),
                type_: Some("Opaque".into()),
                ..Default::default()
            };
            match api.create(&PostParams::default(), &secret).await {
                Ok(s) => s,
                Err(kube::Error::Api(e)) if e.code == 409 => api.get(&r.name).await?,
                Err(e) => return Err(e.into()),
            }
        }
        None => {
            return Err(secret_error(
                r,
                "not found; create it (mesh-agent ca init, or set kubernetes.createRoot: true)",
            ));
        }
    };
    let data = secret.data.unwrap_or_default();
    let field = |k: &str| {
        data.get(k)
            .map(|b| String::from_utf8_lossy(&b.0).into_owned())
            .ok_or_else(|| secret_error(r, format!("has no `{k}`")))
    };
    let name = format!("Secret {}/{}", r.namespace, r.name);
    Ok(root::from_pem(
        field(CERT_KEY)?,
        &field(KEY_KEY)?,
        &format!("{name} {CERT_KEY}"),
        &format!("{name} {KEY_KEY}"),
    )?)
}

/// Creates or updates the ConfigMap holding the root certificate, so the
/// agents (which must never see the key) can trust it.
pub async fn publish_root_cert(
    client: Client,
    r: &SecretRef,
    cert_pem: &str,
) -> Result<(), KubeError> {
    let api = Api::<ConfigMap>::namespaced(client, &r.namespace);
    let cm = ConfigMap {
        metadata: ObjectMeta {
            name: Some(r.name.clone()),
            namespace: Some(r.namespace.clone()),
            labels: Some(BTreeMap::from([(
                "app.kubernetes.io/part-of".to_owned(),
                "mesh".to_owned(),
            )])),
            ..Default::default()
        },
        data: Some(BTreeMap::from([(
            ROOT_CERT_CONFIG_KEY.to_owned(),
            cert_pem.to_owned(),
        )])),
        ..Default::default()
    };
    api.patch(
        &r.name,
        &PatchParams::apply("mesh-ca").force(),
        &Patch::Apply(&cm),
    )
    .await?;
    Ok(())
}

#[cfg(test)]
pub(crate) mod tests;
