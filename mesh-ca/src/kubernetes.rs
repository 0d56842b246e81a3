//! The CA in a Kubernetes cluster: agents prove themselves with their
//! projected service-account token (TokenReview, with a dedicated audience),
//! the node comes from the token's bound pod, the identities a node may have
//! from the pods scheduled on it, and the root from a Secret.
use std::{
    collections::{BTreeMap, HashMap},
    sync::{Mutex, PoisonError},
    time::{Duration, Instant},
};

use k8s_openapi::{
    ByteString,
    api::{
        authentication::v1::{TokenReview, TokenReviewSpec},
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
    error::AuthzError,
    root::{self, Root, RootError},
};

/// The node a bound service-account token was issued for.
const NODE_NAME_EXTRA: &str = "authentication.kubernetes.io/node-name";
/// How long a TokenReview's answer stands for the same token. An agent asks
/// for every workload on its node with one token, so a node starting many
/// pods would otherwise cost one TokenReview per certificate. Acceptance is
/// kept briefly (a deleted pod's token stays usable that long; the pod
/// check in `authorize` is not cached), refusal for less, so a token that
/// was not yet valid is not refused for long.
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
    /// The audience agents' projected tokens are minted for.
    #[serde(default = "default_audience")]
    pub token_audience: String,
    /// `<namespace>/<name>` of the node agents' service account; tokens of
    /// any other account are refused.
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
    agent_username: String,
    reviews: ReviewCache,
}

/// Recent TokenReview answers: the node for an accepted token, the reason
/// for a refused one. Keyed by the token's SHA-256, so the CA's memory
/// holds no usable credential. Failures to reach the API server are not
/// kept: they say nothing about the token.
#[derive(Default)]
struct ReviewCache {
    entries: Mutex<HashMap<[u8; 32], Review>>,
}

/// When the answer stops counting, and the node or the refusal's reason.
type Review = (Instant, Result<String, String>);

impl ReviewCache {
    fn key(token: &str) -> [u8; 32] {
        let digest = ring::digest::digest(&ring::digest::SHA256, token.as_bytes());
        let mut key = [0u8; 32];
        key.copy_from_slice(digest.as_ref());
        key
    }

    fn get(&self, key: &[u8; 32], now: Instant) -> Option<Result<String, AuthzError>> {
        // The map holds no invariant a panicking holder could break.
        let entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        let (expires, answer) = entries.get(key)?;
        (now < *expires).then(|| answer.clone().map_err(AuthzError::Rejected))
    }

    fn put(&self, key: [u8; 32], answer: &Result<String, AuthzError>, now: Instant) {
        let (ttl, kept) = match answer {
            Ok(node) => (REVIEW_ACCEPTED_TTL, Ok(node.clone())),
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
        let (ns, name) = settings
            .agent_service_account
            .split_once('/')
            .filter(|(a, b)| !a.is_empty() && !b.is_empty() && !b.contains('/'))
            .ok_or_else(|| {
                anyhow::anyhow!(
                    "CaConfig.kubernetes.agentServiceAccount `{}`: use <namespace>/<name>",
                    settings.agent_service_account
                )
            })?;
        Ok(Self {
            client,
            audience: settings.token_audience.clone(),
            agent_username: format!("system:serviceaccount:{ns}:{name}"),
            reviews: ReviewCache::default(),
        })
    }

    /// The node whose agent presented this token.
    pub async fn authenticate(&self, authorization: Option<&str>) -> Result<String, AuthzError> {
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

    /// Asks the API server who holds `token`, and refuses anyone but a
    /// node agent bound to a node.
    async fn review(&self, token: &str) -> Result<String, AuthzError> {
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
        let status = answer.status.unwrap_or_default();
        if status.authenticated != Some(true) {
            return Err(AuthzError::Rejected(
                status
                    .error
                    .unwrap_or_else(|| "token not authenticated".into()),
            ));
        }
        if !status
            .audiences
            .as_ref()
            .is_some_and(|a| a.contains(&self.audience))
        {
            return Err(AuthzError::Rejected(format!(
                "token is not for audience {}",
                self.audience
            )));
        }
        let user = status.user.unwrap_or_default();
        if user.username.as_deref() != Some(self.agent_username.as_str()) {
            return Err(AuthzError::Rejected(format!(
                "{} is not the node agents' service account ({})",
                user.username.unwrap_or_default(),
                self.agent_username
            )));
        }
        user.extra
            .as_ref()
            .and_then(|e| e.get(NODE_NAME_EXTRA))
            .and_then(|v| v.first())
            .cloned()
            .ok_or_else(|| {
                AuthzError::Rejected(
                    "token is not bound to a pod on a node (no node-name); use a projected service-account token".into(),
                )
            })
    }

    /// Whether a running pod on `node` has `identity`.
    pub async fn authorize(&self, node: &str, identity: &Identity) -> Result<(), AuthzError> {
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
mod tests;
