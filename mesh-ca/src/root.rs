//! The mesh's root: created once by `mesh-agent ca init`, then loaded by
//! every CA replica. The key file is written owner-only and never
//! overwritten.
use std::{
    fs,
    io::Write,
    os::unix::fs::{OpenOptionsExt, PermissionsExt},
    path::{Path, PathBuf},
    time::Duration,
};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, PKCS_ECDSA_P256_SHA256,
};
use time::OffsetDateTime;

#[derive(Debug, thiserror::Error)]
pub enum RootError {
    #[error("{path}: {source}; create a root with `mesh-agent ca init`")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{source_name}: {problem}")]
    Invalid {
        source_name: String,
        problem: String,
    },
    #[error(
        "{path}: mode {mode:04o} lets group or others read the root key; run `chmod 600 {path}` (for a mounted Secret, set defaultMode: 0400)"
    )]
    KeyMode { path: PathBuf, mode: u32 },
    #[error("{path} already exists; refusing to replace a root (remove it first if you mean to)")]
    Exists { path: PathBuf },
    #[error("{path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("generating the root: {0}")]
    Generate(#[from] rcgen::Error),
}

pub struct Root {
    pub cert_pem: String,
    pub not_after: OffsetDateTime,
    pub issuer: Issuer<'static, KeyPair>,
}

impl std::fmt::Debug for Root {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Root")
            .field("not_after", &self.not_after)
            .finish_non_exhaustive()
    }
}

fn write_new(path: &Path, contents: &str, mode: u32) -> Result<(), RootError> {
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(|source| match source.kind() {
            std::io::ErrorKind::AlreadyExists => RootError::Exists {
                path: path.to_owned(),
            },
            _ => RootError::Write {
                path: path.to_owned(),
                source,
            },
        })?;
    f.write_all(contents.as_bytes())
        .map_err(|source| RootError::Write {
            path: path.to_owned(),
            source,
        })
}

/// A new self-signed ECDSA P-256 root for `trust_domain`: (cert, key) PEM.
pub fn generate(trust_domain: &str, lifetime: Duration) -> Result<(String, String), RootError> {
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, trust_domain);
    dn.push(DnType::CommonName, "mesh root CA");
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let now = OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::minutes(5);
    params.not_after = now + lifetime;
    let cert = params.self_signed(&key)?;
    Ok((cert.pem(), key.serialize_pem()))
}

/// Creates a root in two new files; refuses to replace either.
pub fn init(
    cert_path: &Path,
    key_path: &Path,
    trust_domain: &str,
    lifetime: Duration,
) -> Result<(), RootError> {
    for p in [cert_path, key_path] {
        if p.exists() {
            return Err(RootError::Exists { path: p.to_owned() });
        }
    }
    let (cert_pem, key_pem) = generate(trust_domain, lifetime)?;
    write_new(key_path, &key_pem, 0o600)?;
    write_new(cert_path, &cert_pem, 0o644)?;
    Ok(())
}

pub fn load(cert_path: &Path, key_path: &Path) -> Result<Root, RootError> {
    let read = |p: &Path| {
        fs::read_to_string(p).map_err(|source| RootError::Read {
            path: p.to_owned(),
            source,
        })
    };
    check_key_mode(key_path)?;
    from_pem(
        read(cert_path)?,
        &read(key_path)?,
        &cert_path.display().to_string(),
        &key_path.display().to_string(),
    )
}

/// Refuses a root key others on the host can read: whoever reads it can
/// mint any identity in the mesh, and `ca init` writes it 0600, so a wider
/// mode means a copy or a mistake to fix before the CA serves with it. The
/// mode of the file a symlink points to counts, as that is what is read.
fn check_key_mode(path: &Path) -> Result<(), RootError> {
    let meta = fs::metadata(path).map_err(|source| RootError::Read {
        path: path.to_owned(),
        source,
    })?;
    let mode = meta.permissions().mode() & 0o7777;
    if mode & 0o077 != 0 {
        return Err(RootError::KeyMode {
            path: path.to_owned(),
            mode,
        });
    }
    Ok(())
}

/// A root from PEM text; `cert_name`/`key_name` say where it came from in errors.
pub fn from_pem(
    cert_pem: String,
    key_pem: &str,
    cert_name: &str,
    key_name: &str,
) -> Result<Root, RootError> {
    let invalid = |name: &str, problem: String| RootError::Invalid {
        source_name: name.to_owned(),
        problem,
    };
    let key = KeyPair::from_pem(key_pem)
        .map_err(|e| invalid(key_name, format!("not a PEM private key: {e}")))?;
    let der = mesh_identity::cert::parse_pem_certs(&cert_pem)
        .map_err(|e| invalid(cert_name, e.to_string()))?
        .remove(0);
    let not_after = {
        use x509_parser::prelude::FromDer;
        let (_, c) = x509_parser::certificate::X509Certificate::from_der(&der)
            .map_err(|e| invalid(cert_name, e.to_string()))?;
        if !c.is_ca() {
            return Err(invalid(
                cert_name,
                "not a CA certificate (basicConstraints CA:TRUE missing)".into(),
            ));
        }
        if c.public_key().subject_public_key.data.as_ref() != key.public_key_raw() {
            return Err(invalid(
                cert_name,
                format!("its public key does not match {key_name}"),
            ));
        }
        c.validity().not_after.to_datetime()
    };
    let issuer = Issuer::from_ca_cert_der(&der, key)
        .map_err(|e| invalid(cert_name, format!("does not pair with {key_name}: {e}")))?;
    Ok(Root {
        cert_pem,
        not_after,
        issuer,
    })
}
