//! rustls configuration for HBONE: both sides present SPIFFE SVIDs from
//! the mesh's CA; the client pins the identity it expects the destination
//! workload to have; the server requires a client certificate and reads the
//! peer's identity from it after the handshake.
use std::{fmt, sync::Arc};

use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, Error as TlsError, RootCertStore,
    ServerConfig, SignatureScheme,
    client::{
        ResolvesClientCert,
        danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier},
    },
    crypto::{CryptoProvider, WebPkiSupportedAlgorithms, ring},
    pki_types::{CertificateDer, ServerName, UnixTime},
    server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier},
    sign::CertifiedKey,
};
use tokio::sync::watch;

use crate::identity::{Identity, WorkloadCert, cert};

pub const ALPN_H2: &[u8] = b"h2";

/// The current certificate of one identity; renewals replace it in place.
pub type CertWatch = watch::Receiver<Option<Arc<WorkloadCert>>>;

pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(ring::default_provider())
}

/// The roots every mesh certificate must chain to.
#[derive(Clone)]
pub struct TrustBundle {
    pub roots: Arc<RootCertStore>,
    pub trust_domain: String,
}

impl fmt::Debug for TrustBundle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TrustBundle")
            .field("roots", &self.roots.len())
            .field("trust_domain", &self.trust_domain)
            .finish()
    }
}

impl TrustBundle {
    pub fn from_pem(pem: &str, trust_domain: &str) -> Result<Self, cert::CertError> {
        let mut roots = RootCertStore::empty();
        for c in cert::parse_pem_certs(pem)? {
            roots
                .add(c)
                .map_err(|e| cert::CertError::Parse(e.to_string()))?;
        }
        Ok(Self {
            roots: Arc::new(roots),
            trust_domain: trust_domain.to_owned(),
        })
    }
}

/// Checks the server's chain against the mesh roots and its SPIFFE ID
/// against the identity the destination is expected to have. DNS names play
/// no part: workload certificates carry only a URI SAN.
#[derive(Debug)]
struct SpiffeServerVerifier {
    roots: Arc<RootCertStore>,
    expected: Identity,
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for SpiffeServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, TlsError> {
        let parsed = rustls::server::ParsedCertificate::try_from(end_entity)?;
        rustls::client::verify_server_cert_signed_by_trust_anchor(
            &parsed,
            &self.roots,
            intermediates,
            now,
            self.algorithms.all,
        )?;
        let info = cert::inspect(end_entity)
            .map_err(|e| TlsError::InvalidCertificate(CertificateError::Other(other(e))))?;
        if info.identity != self.expected {
            return Err(TlsError::InvalidCertificate(CertificateError::Other(
                other(IdentityMismatch {
                    expected: self.expected.to_string(),
                    presented: info.identity.to_string(),
                }),
            )));
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, TlsError> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, TlsError> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

#[derive(Debug, thiserror::Error)]
#[error("peer presented {presented}, expected {expected}")]
struct IdentityMismatch {
    expected: String,
    presented: String,
}

fn other(e: impl std::error::Error + Send + Sync + 'static) -> rustls::OtherError {
    rustls::OtherError(Arc::new(e))
}

/// Serves whatever certificate the identity currently has.
#[derive(Debug)]
struct CurrentCert(CertWatch);

impl CurrentCert {
    fn get(&self) -> Option<Arc<CertifiedKey>> {
        self.0.borrow().as_ref().map(|c| c.certified_key())
    }
}

impl ResolvesServerCert for CurrentCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.get()
    }
}

impl ResolvesClientCert for CurrentCert {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        self.get()
    }
    fn has_certs(&self) -> bool {
        self.0.borrow().is_some()
    }
}

/// The client side of one tunnel: our workload's certificate, pinned to
/// the destination's expected identity. TLS 1.3 only, ALPN h2.
pub fn client_config(
    bundle: &TrustBundle,
    source: CertWatch,
    expected: Identity,
) -> Result<ClientConfig, TlsError> {
    let provider = provider();
    let verifier = Arc::new(SpiffeServerVerifier {
        roots: bundle.roots.clone(),
        expected,
        algorithms: provider.signature_verification_algorithms,
    });
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_client_cert_resolver(Arc::new(CurrentCert(source)));
    config.alpn_protocols = vec![ALPN_H2.to_vec()];
    Ok(config)
}

/// The server side of a pod's HBONE listener: the pod's certificate, and a
/// client certificate from the mesh's roots required.
pub fn server_config(bundle: &TrustBundle, own: CertWatch) -> Result<ServerConfig, TlsError> {
    let provider = provider();
    let verifier =
        WebPkiClientVerifier::builder_with_provider(bundle.roots.clone(), provider.clone())
            .build()
            .map_err(|e| TlsError::General(e.to_string()))?;
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(Arc::new(CurrentCert(own)));
    config.alpn_protocols = vec![ALPN_H2.to_vec()];
    Ok(config)
}

/// The identity in a verified peer's leaf certificate, if it belongs to our
/// trust domain.
pub fn peer_identity(
    certs: Option<&[CertificateDer<'_>]>,
    trust_domain: &str,
) -> Result<Identity, String> {
    let leaf = certs
        .and_then(|c| c.first())
        .ok_or("no client certificate")?;
    let info = cert::inspect(leaf).map_err(|e| e.to_string())?;
    if info.identity.trust_domain() != trust_domain {
        return Err(format!(
            "{} is outside trust domain {trust_domain}",
            info.identity
        ));
    }
    Ok(info.identity)
}
