//! Turns a verified CSR into a workload certificate for an identity the
//! caller was authorized to obtain. Only the CSR's public key is used; the
//! identity comes from the authorization, so a CSR cannot ask for more.
use std::time::Duration;

use mesh_identity::Identity;
use rcgen::{
    CertificateParams, CertificateSigningRequestParams, DistinguishedName, ExtendedKeyUsagePurpose,
    IsCa, KeyUsagePurpose, PKCS_ECDSA_P256_SHA256, SanType, SerialNumber,
};
use ring::rand::{SecureRandom, SystemRandom};
use time::OffsetDateTime;

use super::root::Root;

/// Allowance for clocks that run slightly behind the CA's.
const BACKDATE: time::Duration = time::Duration::minutes(1);

#[derive(Debug, thiserror::Error)]
pub enum SignError {
    #[error("csr: not a valid, self-signed PEM certificate request: {0}")]
    Csr(rcgen::Error),
    #[error("csr: key must be ECDSA P-256")]
    KeyType,
    #[error("csr: asks for {asked}, but the caller is authorized for {authorized}")]
    SanMismatch { asked: String, authorized: String },
    #[error("signing: {0}")]
    Sign(rcgen::Error),
    #[error("the system's random number generator failed; no serial number for the certificate")]
    Random,
}

/// A serial number from the system's CSPRNG: 128 bits, as the CA/Browser
/// Forum asks (at least 64 unpredictable bits), so no one can guess the
/// next serial and prepare a colliding certificate. The top bit is cleared
/// because DER integers are signed and RFC 5280 wants serials positive.
pub fn random_serial() -> Result<SerialNumber, SignError> {
    let mut serial = [0u8; 16];
    SystemRandom::new()
        .fill(&mut serial)
        .map_err(|_| SignError::Random)?;
    serial[0] &= 0x7f;
    Ok(SerialNumber::from_slice(&serial))
}

pub struct Signer {
    pub root: Root,
    pub default_lifetime: Duration,
    pub max_lifetime: Duration,
}

impl Signer {
    /// Lifetime for a request: the default when none is asked, capped by
    /// configuration.
    pub fn lifetime(&self, requested_secs: i64) -> Duration {
        let asked = if requested_secs > 0 {
            Duration::from_secs(requested_secs as u64)
        } else {
            self.default_lifetime
        };
        asked.min(self.max_lifetime)
    }

    /// Signs `csr_pem` for `identity`; returns the chain (leaf, root) as PEM.
    pub fn sign(
        &self,
        csr_pem: &str,
        identity: &Identity,
        lifetime: Duration,
    ) -> Result<Vec<String>, SignError> {
        let csr = CertificateSigningRequestParams::from_pem(csr_pem).map_err(SignError::Csr)?;
        if *csr.public_key.algorithm() != PKCS_ECDSA_P256_SHA256 {
            return Err(SignError::KeyType);
        }
        let authorized = identity.to_string();
        for san in &csr.params.subject_alt_names {
            let asked = match san {
                SanType::URI(uri) => uri.as_str().to_owned(),
                other => format!("{other:?}"),
            };
            if asked != authorized {
                return Err(SignError::SanMismatch {
                    asked,
                    authorized: authorized.clone(),
                });
            }
        }
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params.subject_alt_names = vec![SanType::URI(
            authorized.try_into().map_err(SignError::Sign)?,
        )];
        let now = OffsetDateTime::now_utc();
        params.not_before = now - BACKDATE;
        params.not_after = (now + lifetime).min(self.root.not_after);
        params.serial_number = Some(random_serial()?);
        // Stated rather than left to the extension's absence, so no
        // verifier's defaults decide whether a workload may sign others.
        params.is_ca = IsCa::ExplicitNoCa;
        // ECDSA keys only sign; keyEncipherment is for RSA key transport.
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.use_authority_key_identifier_extension = true;
        let cert = params
            .signed_by(&csr.public_key, &self.root.issuer)
            .map_err(SignError::Sign)?;
        Ok(vec![cert.pem(), self.root.cert_pem.clone()])
    }

    /// The CA's own TLS certificate and key (PEM), made fresh at each start.
    pub fn serving_cert(&self, names: &[String]) -> Result<(String, String), SignError> {
        let key = rcgen::KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(SignError::Sign)?;
        let mut params = CertificateParams::new(names.to_vec()).map_err(SignError::Sign)?;
        let mut dn = DistinguishedName::new();
        dn.push(rcgen::DnType::CommonName, "mesh-ca");
        params.distinguished_name = dn;
        let now = OffsetDateTime::now_utc();
        params.not_before = now - BACKDATE;
        params.not_after = (now + time::Duration::days(365)).min(self.root.not_after);
        params.serial_number = Some(random_serial()?);
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.use_authority_key_identifier_extension = true;
        let cert = params
            .signed_by(&key, &self.root.issuer)
            .map_err(SignError::Sign)?;
        Ok((
            format!("{}{}", cert.pem(), self.root.cert_pem),
            key.serialize_pem(),
        ))
    }
}
