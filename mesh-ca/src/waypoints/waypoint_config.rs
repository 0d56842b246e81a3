//! What the mesh's operator gives every waypoint beyond the mesh's facts:
//! Istio's `extensionProviders` (the external authorizers CUSTOM
//! AuthorizationPolicies name), extra CAs for RequestAuthentication's
//! `jwksUri` fetches, and how often those keys are fetched again.
//!
//! The chart writes the files into a ConfigMap of the mesh's namespace and
//! mounts it into the CA; waypoints run in their users' namespaces, where
//! that ConfigMap cannot be mounted. So the controller reads the files once
//! at start, checks them here, and writes their content into each
//! waypoint's own ConfigMap (`<gateway>-waypoint-config`, owned by the
//! Gateway). A change of values restarts the CA (the chart's checksum), the
//! new content changes [`WaypointConfig::hash`], which the Deployment's pod
//! template carries, so the waypoints roll onto it: `mesh-waypoint` reads
//! these files only at start.
use std::{
    collections::{BTreeMap, BTreeSet},
    io::Read,
    path::{Path, PathBuf},
    time::Duration,
};

/// Where the waypoint's ConfigMap is mounted.
pub const CONFIG_DIR: &str = "/etc/mesh/waypoint";
pub const PROVIDERS_KEY: &str = "extension-providers.yaml";
pub const JWKS_CA_KEY: &str = "jwks-ca.pem";
/// On the pod template: the content's hash, so a change rolls the pods.
pub const HASH_ANNOTATION: &str = "mesh.io/waypoint-config-hash";
/// A ConfigMap holds at most 1 MiB; both files and the root fit under it.
pub const MAX_FILE_BYTES: u64 = 256 * 1024;

/// The checked settings; `Default` is none of them (no ConfigMap, no flag).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WaypointConfig {
    extension_providers: Option<String>,
    jwks_ca_pem: Option<String>,
    jwks_refresh: Option<Duration>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum WaypointConfigError {
    #[error("{flag} {file}: {problem}")]
    File {
        flag: &'static str,
        file: PathBuf,
        problem: String,
    },
    #[error("{flag} {file}: {field}: {problem}")]
    Field {
        flag: &'static str,
        file: PathBuf,
        field: String,
        problem: String,
    },
    #[error("--waypoint-jwks-refresh {0:?}: use a duration of at least one second, e.g. 20m")]
    Refresh(Duration),
}

pub const PROVIDERS_FLAG: &str = "--waypoint-extension-providers-file";
pub const JWKS_CA_FLAG: &str = "--waypoint-jwks-ca-file";

impl WaypointConfig {
    /// Reads and checks the files the CA's flags name.
    pub fn read(
        providers: Option<&Path>,
        jwks_ca: Option<&Path>,
        jwks_refresh: Option<Duration>,
    ) -> Result<Self, WaypointConfigError> {
        let providers = providers
            .map(|p| Ok((read_capped(PROVIDERS_FLAG, p)?, p)))
            .transpose()?;
        let jwks_ca = jwks_ca
            .map(|p| Ok((read_capped(JWKS_CA_FLAG, p)?, p)))
            .transpose()?;
        Self::from_texts(
            providers.as_ref().map(|(t, p)| (t.as_str(), *p)),
            jwks_ca.as_ref().map(|(t, p)| (t.as_str(), *p)),
            jwks_refresh,
        )
    }

    /// Checks the files' texts (each with the path it came from, for the
    /// errors).
    pub fn from_texts(
        providers: Option<(&str, &Path)>,
        jwks_ca: Option<(&str, &Path)>,
        jwks_refresh: Option<Duration>,
    ) -> Result<Self, WaypointConfigError> {
        if let Some((text, file)) = providers {
            check_providers(text, file)?;
        }
        if let Some((text, file)) = jwks_ca {
            check_ca_bundle(text, file)?;
        }
        if let Some(d) = jwks_refresh
            && d < Duration::from_secs(1)
        {
            return Err(WaypointConfigError::Refresh(d));
        }
        Ok(Self {
            extension_providers: providers.map(|(t, _)| t.to_owned()),
            jwks_ca_pem: jwks_ca.map(|(t, _)| t.to_owned()),
            jwks_refresh,
        })
    }

    /// The waypoint ConfigMap's data; None when no file was given (the
    /// waypoint then gets no ConfigMap and no volume).
    pub fn data(&self) -> Option<BTreeMap<String, String>> {
        let data: BTreeMap<String, String> = [
            (PROVIDERS_KEY, &self.extension_providers),
            (JWKS_CA_KEY, &self.jwks_ca_pem),
        ]
        .into_iter()
        .filter_map(|(k, v)| Some((k.to_owned(), v.clone()?)))
        .collect();
        (!data.is_empty()).then_some(data)
    }

    /// SHA-256 of the ConfigMap's data (hex), None without data.
    pub fn hash(&self) -> Option<String> {
        let data = self.data()?;
        let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
        for (k, v) in &data {
            // Lengths first, so no two different maps hash alike.
            for part in [k.as_bytes(), v.as_bytes()] {
                ctx.update(&(part.len() as u64).to_be_bytes());
                ctx.update(part);
            }
        }
        Some(
            ctx.finish()
                .as_ref()
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect(),
        )
    }

    /// `mesh-waypoint`'s flags for these settings, naming the mounted files.
    pub fn args(&self) -> Vec<String> {
        let mut args = Vec::new();
        if self.extension_providers.is_some() {
            args.extend([
                "--extension-providers".to_owned(),
                format!("{CONFIG_DIR}/{PROVIDERS_KEY}"),
            ]);
        }
        if self.jwks_ca_pem.is_some() {
            args.extend([
                "--jwks-ca-file".to_owned(),
                format!("{CONFIG_DIR}/{JWKS_CA_KEY}"),
            ]);
        }
        if let Some(d) = self.jwks_refresh {
            args.extend([
                "--jwks-refresh".to_owned(),
                humantime::format_duration(d).to_string(),
            ]);
        }
        args
    }

    /// A line for `--check-config`.
    pub fn summary(&self) -> String {
        let providers = self
            .extension_providers
            .as_deref()
            .and_then(|t| provider_names(t).ok())
            .map_or_else(|| "none".to_owned(), |n| n.join(", "));
        format!(
            "extension providers: {providers}; JWKS CA: {}; JWKS refresh: {}",
            if self.jwks_ca_pem.is_some() {
                "given"
            } else {
                "system roots only"
            },
            self.jwks_refresh.map_or_else(
                || "the waypoint's default".to_owned(),
                |d| humantime::format_duration(d).to_string()
            )
        )
    }
}

/// The name of a waypoint's ConfigMap (Gateway names are DNS labels, the
/// Service's name, so the suffix keeps it a valid object name).
pub fn config_map_name(gateway: &str) -> String {
    format!("{gateway}-waypoint-config")
}

fn read_capped(flag: &'static str, file: &Path) -> Result<String, WaypointConfigError> {
    let problem = |problem: String| WaypointConfigError::File {
        flag,
        file: file.to_owned(),
        problem,
    };
    let f = std::fs::File::open(file).map_err(|e| problem(e.to_string()))?;
    let mut text = String::new();
    f.take(MAX_FILE_BYTES + 1)
        .read_to_string(&mut text)
        .map_err(|e| problem(e.to_string()))?;
    if text.len() as u64 > MAX_FILE_BYTES {
        return Err(problem(format!(
            "larger than {MAX_FILE_BYTES} bytes; every waypoint's ConfigMap carries it"
        )));
    }
    Ok(text)
}

/// The names in `extensionProviders`, checked as far as the CA can without
/// the waypoint's own parser (which checks each provider's fields): a
/// list of mappings, each with a name of its own.
fn provider_names(text: &str) -> Result<Vec<String>, (String, String)> {
    let doc: serde_yaml::Value =
        serde_yaml::from_str(text).map_err(|e| ("(document)".to_owned(), e.to_string()))?;
    let Some(list) = doc.get("extensionProviders") else {
        return Err((
            "extensionProviders".to_owned(),
            "missing; the file is `extensionProviders: [...]` as in Istio's meshConfig".to_owned(),
        ));
    };
    let list = list.as_sequence().ok_or_else(|| {
        (
            "extensionProviders".to_owned(),
            "must be a list of providers".to_owned(),
        )
    })?;
    let mut seen = BTreeSet::new();
    let mut names = Vec::new();
    for (i, p) in list.iter().enumerate() {
        let field = format!("extensionProviders[{i}].name");
        let name = p
            .get("name")
            .and_then(serde_yaml::Value::as_str)
            .filter(|n| !n.is_empty())
            .ok_or_else(|| {
                (
                    field.clone(),
                    "each provider needs a name (what CUSTOM policies' provider.name says)"
                        .to_owned(),
                )
            })?;
        if !seen.insert(name.to_owned()) {
            return Err((field, format!("`{name}` is named twice")));
        }
        names.push(name.to_owned());
    }
    Ok(names)
}

fn check_providers(text: &str, file: &Path) -> Result<(), WaypointConfigError> {
    provider_names(text)
        .map(drop)
        .map_err(|(field, problem)| WaypointConfigError::Field {
            flag: PROVIDERS_FLAG,
            file: file.to_owned(),
            field,
            problem,
        })
}

/// One or more PEM certificates, each one X.509 parses, nothing else.
fn check_ca_bundle(text: &str, file: &Path) -> Result<(), WaypointConfigError> {
    let bad = |field: String, problem: String| WaypointConfigError::Field {
        flag: JWKS_CA_FLAG,
        file: file.to_owned(),
        field,
        problem,
    };
    let mut count = 0;
    for (i, pem) in x509_parser::pem::Pem::iter_from_buffer(text.as_bytes()).enumerate() {
        let field = format!("PEM block {i}");
        let pem = pem.map_err(|e| bad(field.clone(), e.to_string()))?;
        if pem.label != "CERTIFICATE" {
            return Err(bad(
                field,
                format!("is a {}; only CERTIFICATE blocks belong here", pem.label),
            ));
        }
        pem.parse_x509()
            .map_err(|e| bad(field, format!("not an X.509 certificate: {e}")))?;
        count += 1;
    }
    if count == 0 {
        return Err(bad(
            "(file)".to_owned(),
            "no PEM certificate in it (-----BEGIN CERTIFICATE-----)".to_owned(),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const PROVIDERS: &str = "extensionProviders:\n- name: authz\n  envoyExtAuthzGrpc:\n    service: authz.auth.svc.cluster.local\n    port: 9000\n";

    fn cert_pem() -> String {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        rcgen::CertificateParams::new(vec!["issuer.example".to_owned()])
            .unwrap()
            .self_signed(&key)
            .unwrap()
            .pem()
    }

    fn p() -> &'static Path {
        Path::new("/etc/mesh-ca-waypoint/x")
    }

    #[test]
    fn nothing_given_is_no_data_no_hash_no_args() {
        let c = WaypointConfig::default();
        assert_eq!((c.data(), c.hash(), c.args()), (None, None, vec![]));
    }

    #[test]
    fn the_files_become_data_and_flags_naming_the_mount() {
        let pem = cert_pem();
        let c = WaypointConfig::from_texts(
            Some((PROVIDERS, p())),
            Some((&pem, p())),
            Some(Duration::from_secs(300)),
        )
        .unwrap();
        let data = c.data().unwrap();
        assert_eq!(data[PROVIDERS_KEY], PROVIDERS);
        assert_eq!(data[JWKS_CA_KEY], pem);
        assert_eq!(
            c.args(),
            [
                "--extension-providers",
                "/etc/mesh/waypoint/extension-providers.yaml",
                "--jwks-ca-file",
                "/etc/mesh/waypoint/jwks-ca.pem",
                "--jwks-refresh",
                "5m",
            ]
        );
        assert_eq!(c.hash().unwrap().len(), 64);
        assert!(c.summary().contains("extension providers: authz"));
    }

    #[test]
    fn the_hash_follows_the_content() {
        let a = WaypointConfig::from_texts(Some((PROVIDERS, p())), None, None).unwrap();
        let other = PROVIDERS.replace("9000", "9001");
        let b = WaypointConfig::from_texts(Some((&other, p())), None, None).unwrap();
        let again = WaypointConfig::from_texts(Some((PROVIDERS, p())), None, None).unwrap();
        assert_ne!(a.hash(), b.hash());
        assert_eq!(a.hash(), again.hash());
        // The refresh is a flag, not content: it changes the args instead.
        let r =
            WaypointConfig::from_texts(Some((PROVIDERS, p())), None, Some(Duration::from_secs(60)))
                .unwrap();
        assert_eq!(a.hash(), r.hash());
        assert_ne!(a.args(), r.args());
    }

    #[test]
    fn bad_providers_are_refused_naming_the_field() {
        let field = |text: &str| match WaypointConfig::from_texts(Some((text, p())), None, None) {
            Err(WaypointConfigError::Field { field, flag, .. }) => {
                assert_eq!(flag, PROVIDERS_FLAG);
                field
            }
            other => panic!("{text:?}: {other:?}"),
        };
        assert_eq!(field("meshConfig: {}\n"), "extensionProviders");
        assert_eq!(field("extensionProviders: {}\n"), "extensionProviders");
        assert_eq!(
            field("extensionProviders:\n- envoyExtAuthzGrpc: {}\n"),
            "extensionProviders[0].name"
        );
        assert_eq!(
            field("extensionProviders:\n- name: a\n- name: a\n"),
            "extensionProviders[1].name"
        );
        assert_eq!(field("extensionProviders: [\n"), "(document)");
        // An empty list is a valid file: no CUSTOM provider.
        WaypointConfig::from_texts(Some(("extensionProviders: []\n", p())), None, None).unwrap();
    }

    #[test]
    fn a_bad_ca_bundle_is_refused() {
        for text in [
            "",
            "not pem",
            "-----BEGIN PRIVATE KEY-----\nMIIB\n-----END PRIVATE KEY-----\n",
            "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n",
        ] {
            let e = WaypointConfig::from_texts(None, Some((text, p())), None).unwrap_err();
            assert!(
                matches!(&e, WaypointConfigError::Field { flag, .. } if *flag == JWKS_CA_FLAG),
                "{text:?}: {e:?}"
            );
        }
        let two = format!("{}{}", cert_pem(), cert_pem());
        WaypointConfig::from_texts(None, Some((&two, p())), None).unwrap();
    }

    #[test]
    fn a_refresh_under_a_second_is_refused() {
        assert_eq!(
            WaypointConfig::from_texts(None, None, Some(Duration::from_millis(10))),
            Err(WaypointConfigError::Refresh(Duration::from_millis(10)))
        );
    }

    #[test]
    fn files_are_read_with_a_cap() {
        let dir = tempfile::tempdir().unwrap();
        let big = dir.path().join("big.yaml");
        std::fs::write(&big, "#".repeat(MAX_FILE_BYTES as usize + 1)).unwrap();
        assert!(matches!(
            WaypointConfig::read(Some(&big), None, None),
            Err(WaypointConfigError::File {
                flag: PROVIDERS_FLAG,
                ..
            })
        ));
        let missing = dir.path().join("missing.pem");
        assert!(matches!(
            WaypointConfig::read(None, Some(&missing), None),
            Err(WaypointConfigError::File {
                flag: JWKS_CA_FLAG,
                ..
            })
        ));
        let ok = dir.path().join("providers.yaml");
        std::fs::write(&ok, PROVIDERS).unwrap();
        let c = WaypointConfig::read(Some(&ok), None, None).unwrap();
        assert_eq!(c.data().unwrap()[PROVIDERS_KEY], PROVIDERS);
    }
}
