//! The CA's local-mode file: one `CaConfig` document and the cluster's Pods
//! (the CA needs to know which identities are scheduled on which node).
//! `CaConfig.nodes` holds the node agents' tokens, `CaConfig.workloads`
//! those of workloads that ask for their own identity (the waypoint).
use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use mesh_config::{ConfigError, duration};
use mesh_discovery::model::Workload;
use serde::Deserialize;

use super::authz::ServiceAccount;

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CaConfig {
    #[serde(default)]
    pub api_version: Option<String>,
    #[serde(default)]
    pub kind: Option<String>,
    #[serde(default = "default_trust_domain")]
    pub trust_domain: String,
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// Local mode: the root as files (from `mesh-agent ca init`).
    #[serde(default)]
    pub root_cert_file: Option<PathBuf>,
    #[serde(default)]
    pub root_key_file: Option<PathBuf>,
    /// Kubernetes mode: agents authenticate with service-account tokens and
    /// the root lives in a Secret.
    #[serde(default)]
    pub kubernetes: Option<super::kubernetes::KubernetesSettings>,
    /// Lifetime of a workload certificate when the request names none.
    #[serde(default = "day", with = "duration")]
    pub default_lifetime: Duration,
    /// No certificate lives longer than this, whatever the request asks.
    #[serde(default = "day", with = "duration")]
    pub max_lifetime: Duration,
    /// DNS names for the CA's own serving certificate.
    #[serde(default = "default_server_names")]
    pub server_names: Vec<String>,
    /// Local mode's agent credentials: the bearer token each node's agent presents.
    #[serde(default)]
    pub nodes: Vec<NodeCredential>,
    /// Local mode's workload credentials: the bearer token a workload not
    /// served by a node agent presents to obtain its own identity. In
    /// Kubernetes such workloads use their projected service-account token.
    #[serde(default, deserialize_with = "workload_credentials")]
    pub workloads: Vec<WorkloadCredential>,
    /// A certificate request still unanswered after this is cancelled, so a
    /// slow caller or a stuck API server cannot hold the CA's capacity.
    #[serde(default = "default_request_timeout", with = "duration")]
    pub request_timeout: Duration,
    /// Requests handled at once over all connections; beyond it the CA
    /// answers RESOURCE_EXHAUSTED at once (agents retry with backoff)
    /// rather than queue without bound.
    #[serde(default = "default_max_concurrent_requests")]
    pub max_concurrent_requests: usize,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NodeCredential {
    pub name: String,
    pub token_file: PathBuf,
}

/// One workload's credential: whoever presents the token in `tokenFile`
/// may obtain `spiffe://<trustDomain>/ns/<namespace>/sa/<name>` and no other
/// identity, wherever it runs. Written
/// `{serviceAccount: <namespace>/<name>, tokenFile: <path>}`; several
/// entries may name one account (e.g. while its token is rotated).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkloadCredential {
    pub service_account: ServiceAccount,
    pub token_file: PathBuf,
}

/// A `workloads` entry as written, before its account is checked.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct WorkloadEntry {
    service_account: String,
    token_file: PathBuf,
}

/// Reads `workloads`, naming the entry whose account is malformed (serde
/// alone would name neither the entry nor the field).
fn workload_credentials<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Vec<WorkloadCredential>, D::Error> {
    Vec::<WorkloadEntry>::deserialize(d)?
        .into_iter()
        .enumerate()
        .map(|(i, entry)| {
            let service_account = ServiceAccount::parse(&entry.service_account).map_err(|e| {
                serde::de::Error::custom(format!("workloads[{i}].serviceAccount {e}"))
            })?;
            Ok(WorkloadCredential {
                service_account,
                token_file: entry.token_file,
            })
        })
        .collect()
}

fn default_trust_domain() -> String {
    "cluster.local".into()
}
fn default_listen() -> SocketAddr {
    SocketAddr::from(([0, 0, 0, 0], 15012))
}
fn day() -> Duration {
    Duration::from_secs(24 * 3600)
}
fn default_server_names() -> Vec<String> {
    vec!["mesh-ca".into()]
}
fn default_request_timeout() -> Duration {
    Duration::from_secs(10)
}
/// Signing takes well under a millisecond; a request mostly waits on the
/// Kubernetes API (TokenReview, pod list). 256 in flight absorbs a whole
/// cluster's agents restarting at once while keeping the CA's memory and
/// its load on the API server bounded.
fn default_max_concurrent_requests() -> usize {
    256
}

#[derive(Debug, Clone)]
pub struct CaFile {
    pub config: CaConfig,
    pub workloads: Vec<Workload>,
}

impl CaFile {
    pub fn load(file: &Path) -> Result<Self, ConfigError> {
        Self::parse(file, &mesh_discovery::file::read(file)?)
    }

    pub fn parse(file: &Path, text: &str) -> Result<Self, ConfigError> {
        let (objects, own) = mesh_discovery::file::parse(file, text, "CaConfig")?;
        let config: CaConfig = mesh_discovery::file::own_document(file, "CaConfig", own)?;
        let invalid = |field: &str, problem: String| ConfigError::Invalid {
            file: file.to_owned(),
            line: 1,
            field: format!("CaConfig.{field}"),
            problem,
        };
        if config.default_lifetime > config.max_lifetime {
            return Err(invalid(
                "defaultLifetime",
                "is longer than maxLifetime; shorten it or raise maxLifetime".into(),
            ));
        }
        if config.max_lifetime < Duration::from_secs(10) {
            return Err(invalid("maxLifetime", "must be at least 10s".into()));
        }
        match (
            &config.root_cert_file,
            &config.root_key_file,
            &config.kubernetes,
        ) {
            (Some(_), Some(_), None) | (None, None, Some(_)) => {}
            _ => {
                return Err(invalid(
                    "rootCertFile",
                    "set rootCertFile and rootKeyFile (local mode) or kubernetes (root in a Secret), not both or neither".into(),
                ));
            }
        }
        if config.kubernetes.is_some() && !config.nodes.is_empty() {
            return Err(invalid(
                "nodes",
                "bootstrap tokens are for local mode; in Kubernetes agents use service-account tokens".into(),
            ));
        }
        if config.kubernetes.is_some() && !config.workloads.is_empty() {
            return Err(invalid(
                "workloads",
                "token files are for local mode; in Kubernetes workloads use their projected service-account token (audience kubernetes.tokenAudience)".into(),
            ));
        }
        if config.request_timeout < Duration::from_secs(1) {
            return Err(invalid(
                "requestTimeout",
                "must be at least 1s (a TokenReview alone can take that)".into(),
            ));
        }
        if config.max_concurrent_requests == 0 {
            return Err(invalid(
                "maxConcurrentRequests",
                "must be at least 1; 0 would refuse every request".into(),
            ));
        }
        if config.server_names.is_empty() {
            return Err(invalid("serverNames", "name at least one DNS name".into()));
        }
        Ok(Self {
            config,
            workloads: objects.pods.values().map(|w| w.as_ref().clone()).collect(),
        })
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::CaFile;

    #[test]
    fn the_example_parses() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples");
        let ca = CaFile::load(&root.join("ca-local.yaml")).unwrap();
        assert_eq!(ca.config.nodes.len(), 2);
        assert_eq!(ca.workloads.len(), 2);
    }

    fn parse(extra: &str) -> Result<CaFile, mesh_config::ConfigError> {
        CaFile::parse(
            Path::new("ca.yaml"),
            &format!("kind: CaConfig\nrootCertFile: r.pem\nrootKeyFile: r.key\n{extra}"),
        )
    }

    #[test]
    fn workload_credentials_are_read() {
        let ca = parse(
            "workloads:\n- {serviceAccount: shop/waypoint, tokenFile: /etc/mesh/token-waypoint}\n",
        )
        .unwrap();
        let w = &ca.config.workloads[0];
        assert_eq!(w.service_account.to_string(), "shop/waypoint");
        assert_eq!(w.token_file, Path::new("/etc/mesh/token-waypoint"));
    }

    #[test]
    fn a_bad_workload_entry_is_named() {
        let e = parse(
            "workloads:\n- {serviceAccount: shop/waypoint, tokenFile: /a}\n- {serviceAccount: waypoint, tokenFile: /b}\n",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("workloads[1].serviceAccount"), "{e}");
        assert!(e.contains("<namespace>/<name>"), "{e}");
        let e = parse("workloads:\n- {serviceAccount: shop/waypoint}\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("tokenFile"), "{e}");
        let e = parse("workloads:\n- {serviceAccount: shop/w, tokenFile: /a, node: n1}\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("node"), "{e}");
    }

    #[test]
    fn workload_token_files_are_for_local_mode() {
        let e = CaFile::parse(
            Path::new("ca.yaml"),
            "kind: CaConfig\nkubernetes: {rootSecret: {namespace: m, name: r}, agentServiceAccount: m/a}\nworkloads:\n- {serviceAccount: shop/waypoint, tokenFile: /a}\n",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("CaConfig.workloads"), "{e}");
        assert!(e.contains("projected service-account token"), "{e}");
    }
}
