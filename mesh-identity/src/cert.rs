//! A workload's certificate and key as the agent holds them (in memory
//! only), and what the agent reads out of peers' certificates.
use std::{
    fmt,
    sync::Arc,
    time::{Duration, SystemTime},
};

use rustls::{
    crypto::ring::sign::any_ecdsa_type,
    pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, pem::PemObject},
    sign::CertifiedKey,
};
use x509_parser::{extensions::GeneralName, prelude::FromDer};

use super::spiffe::Identity;

#[derive(Debug, thiserror::Error)]
pub enum CertError {
    #[error("certificate is not valid DER X.509: {0}")]
    Parse(String),
    #[error("certificate carries no SPIFFE URI SAN")]
    NoSpiffeId,
    #[error("certificate carries more than one URI SAN; a workload has exactly one identity")]
    ManySpiffeIds,
    #[error("{0}")]
    Identity(#[from] super::spiffe::IdentityError),
    #[error("PEM: {0}")]
    Pem(String),
    #[error("private key not usable for TLS: {0}")]
    Key(String),
}

/// What the agent needs from a certificate: whose it is and when it is valid.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertInfo {
    pub identity: Identity,
    pub not_before: SystemTime,
    pub not_after: SystemTime,
}

fn to_system_time(t: x509_parser::time::ASN1Time) -> SystemTime {
    let secs = t.timestamp();
    if secs >= 0 {
        SystemTime::UNIX_EPOCH + Duration::from_secs(secs as u64)
    } else {
        SystemTime::UNIX_EPOCH
    }
}

/// Reads the single SPIFFE URI SAN and the validity of a DER certificate.
pub fn inspect(der: &[u8]) -> Result<CertInfo, CertError> {
    let (_, cert) = x509_parser::certificate::X509Certificate::from_der(der)
        .map_err(|e| CertError::Parse(e.to_string()))?;
    let mut uris = Vec::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for name in &san.value.general_names {
            if let GeneralName::URI(uri) = name {
                uris.push(*uri);
            }
        }
    }
    let identity = match uris.as_slice() {
        [] => return Err(CertError::NoSpiffeId),
        [one] => Identity::parse(one)?,
        _ => return Err(CertError::ManySpiffeIds),
    };
    Ok(CertInfo {
        identity,
        not_before: to_system_time(cert.validity().not_before),
        not_after: to_system_time(cert.validity().not_after),
    })
}

pub fn parse_pem_certs(pem: &str) -> Result<Vec<CertificateDer<'static>>, CertError> {
    let certs = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| CertError::Pem(e.to_string()))?;
    if certs.is_empty() {
        return Err(CertError::Pem("no CERTIFICATE block".into()));
    }
    Ok(certs)
}

/// An SVID: the workload's chain (leaf first) and its private key, with the
/// rustls signing key prepared once so handshakes do not re-parse it.
pub struct WorkloadCert {
    pub info: CertInfo,
    pub chain: Vec<CertificateDer<'static>>,
    /// Distinguishes successive certificates of one identity, so pooled
    /// tunnels made with an old one are not reused once a new one exists.
    pub generation: u64,
    /// When the agent received it; the CA backdates not_before for clock
    /// skew, so lifetimes count from here.
    pub received: SystemTime,
    certified: Arc<CertifiedKey>,
}

impl fmt::Debug for WorkloadCert {
    // Never prints key material.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WorkloadCert")
            .field("identity", &self.info.identity.to_string())
            .field("not_after", &self.info.not_after)
            .field("generation", &self.generation)
            .finish()
    }
}

impl WorkloadCert {
    pub fn new(
        chain: Vec<CertificateDer<'static>>,
        key: PrivatePkcs8KeyDer<'static>,
        generation: u64,
    ) -> Result<Self, CertError> {
        let leaf = chain.first().ok_or(CertError::Pem("empty chain".into()))?;
        let info = inspect(leaf)?;
        let signing = any_ecdsa_type(&PrivateKeyDer::Pkcs8(key))
            .map_err(|e| CertError::Key(e.to_string()))?;
        let certified = Arc::new(CertifiedKey::new(chain.clone(), signing));
        Ok(Self {
            info,
            chain,
            generation,
            received: SystemTime::now(),
            certified,
        })
    }

    pub fn identity(&self) -> &Identity {
        &self.info.identity
    }

    pub fn certified_key(&self) -> Arc<CertifiedKey> {
        self.certified.clone()
    }

    pub fn is_expired(&self, now: SystemTime) -> bool {
        now >= self.info.not_after
    }

    /// When to ask for the next certificate: half the remaining lifetime
    /// from when it arrived, less up to a tenth of it at random so a node's
    /// renewals do not arrive together.
    pub fn renew_at(&self) -> SystemTime {
        let start = self.received.max(self.info.not_before);
        let life = self
            .info
            .not_after
            .duration_since(start)
            .unwrap_or_default();
        let jitter = life.mul_f64(fastrand::f64() * 0.1);
        start + life / 2 - jitter
    }
}
