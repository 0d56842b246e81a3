//! rustls configuration for HBONE: both sides present SPIFFE SVIDs from
//! the mesh's CA; the client pins the identity it expects the destination
//! workload to have; the server requires a client certificate and reads the
//! peer's identity from it after the handshake.
use std::{fmt, sync::Arc};

use rustls::{
    CertificateError, CipherSuite, ClientConfig, DigitallySignedStruct, Error as TlsError,
    RootCertStore, ServerConfig, SignatureScheme,
    client::{
        ResolvesClientCert,
        danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier},
    },
    crypto::{CryptoProvider, WebPkiSupportedAlgorithms, aws_lc_rs, ring},
    pki_types::{CertificateDer, ServerName, UnixTime},
    server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier},
    sign::CertifiedKey,
};
use tokio::sync::watch;

use crate::{Identity, WorkloadCert, cert};

pub const ALPN_H2: &[u8] = b"h2";

/// The current certificate of one identity; renewals replace it in place.
pub type CertWatch = watch::Receiver<Option<Arc<WorkloadCert>>>;

/// ring for key exchange, signatures and certificate checks, aws-lc-rs
/// for the record ciphers. The cipher is the largest single cost of a bulk
/// transfer: aws-lc-rs's AES-GCM sealed 16 KiB records 1.5x faster than
/// ring's on the development VM (VAES), which took an agent's CPU per byte
/// of bulk mTLS down 9 %; using it for the ciphers alone keeps aws-lc's
/// other code out of the agent's memory. AES-128-GCM is offered first: it
/// takes 10 AES rounds where AES-256 takes 14, and it is TLS 1.3's
/// mandatory suite. The others stay offered and accepted, and as a server
/// rustls follows the client's order, so a peer (ztunnel) that prefers
/// another suite gets it.
pub fn provider() -> Arc<CryptoProvider> {
    PROVIDER.get_or_init(build_provider).clone()
}

static PROVIDER: std::sync::OnceLock<Arc<CryptoProvider>> = std::sync::OnceLock::new();

fn build_provider() -> Arc<CryptoProvider> {
    let mut provider = ring::default_provider();
    provider.cipher_suites = aws_lc_rs::DEFAULT_CIPHER_SUITES.to_vec();
    provider
        .cipher_suites
        .sort_by_key(|s| s.suite() != CipherSuite::TLS13_AES_128_GCM_SHA256);
    Arc::new(provider)
}

/// Makes [`provider`] the process's default. kube's client and tonic's
/// server build their rustls configurations from that default, and with
/// two providers compiled in rustls will not pick one itself. Idempotent.
pub fn install_process_default() {
    // Err means a default is installed already: this one, or a test's.
    let _ = CryptoProvider::install_default((*provider()).clone());
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
    // Each tunnel connection gets a config of its own, so a session cache
    // would never be consulted again.
    config.resumption = rustls::client::Resumption::disabled();
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
    // Tunnels are pooled and long-lived, and our clients do not resume:
    // tickets would cost every handshake two messages and a cache entry.
    config.send_tls13_tickets = 0;
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

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use rcgen::{
        BasicConstraints, CertificateParams, DistinguishedName, ExtendedKeyUsagePurpose, IsCa,
        Issuer, KeyPair, SanType,
    };
    use rustls::pki_types::{PrivatePkcs8KeyDer, ServerName};
    use tokio::{
        io::{AsyncReadExt, AsyncWriteExt},
        net::{TcpListener, TcpStream},
        sync::watch,
    };

    use super::*;

    struct Ca {
        key: KeyPair,
        params: CertificateParams,
        pem: String,
    }

    fn ca() -> Ca {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::default();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let pem = params.self_signed(&key).unwrap().pem();
        Ca { key, params, pem }
    }

    fn workload(ca: &Ca, id: &str, expired: bool) -> CertWatch {
        let key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::default();
        p.distinguished_name = DistinguishedName::new();
        p.subject_alt_names = vec![SanType::URI(id.to_owned().try_into().unwrap())];
        p.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let now = time::OffsetDateTime::now_utc();
        (p.not_before, p.not_after) = if expired {
            (
                now - time::Duration::hours(2),
                now - time::Duration::hours(1),
            )
        } else {
            (
                now - time::Duration::minutes(1),
                now + time::Duration::hours(1),
            )
        };
        let issuer = Issuer::from_params(&ca.params, &ca.key);
        let cert = p.signed_by(&key, &issuer).unwrap();
        let wc = WorkloadCert::new(
            vec![cert.der().clone()],
            PrivatePkcs8KeyDer::from(key.serialize_der()),
            1,
        )
        .unwrap();
        watch::channel(Some(Arc::new(wc))).1
    }

    const SERVER: &str = "spiffe://cluster.local/ns/shop/sa/db";
    const CLIENT: &str = "spiffe://cluster.local/ns/shop/sa/web";

    /// One handshake over loopback; the server's view of the client identity
    /// or the first error either side saw.
    async fn handshake(
        trust: &Ca,
        server_cert: CertWatch,
        client_cert: CertWatch,
        expected: &str,
    ) -> Result<(Identity, CipherSuite), String> {
        let bundle = TrustBundle::from_pem(&trust.pem, "cluster.local").unwrap();
        let server =
            tokio_rustls::TlsAcceptor::from(Arc::new(server_config(&bundle, server_cert).unwrap()));
        let client = tokio_rustls::TlsConnector::from(Arc::new(
            client_config(&bundle, client_cert, Identity::parse(expected).unwrap()).unwrap(),
        ));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let serving = tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.unwrap();
            let mut tls = server.accept(tcp).await.map_err(|e| e.to_string())?;
            let id = peer_identity(tls.get_ref().1.peer_certificates(), "cluster.local")?;
            let suite = tls.get_ref().1.negotiated_cipher_suite().map(|s| s.suite());
            let mut b = [0u8; 1];
            tls.read_exact(&mut b).await.map_err(|e| e.to_string())?;
            Ok::<_, String>((id, suite.ok_or("no cipher suite")?))
        });
        let tcp = TcpStream::connect(addr).await.unwrap();
        let name = ServerName::IpAddress(addr.ip().into());
        let client_result = match client.connect(name, tcp).await {
            Ok(mut tls) => tls.write_all(b"x").await.map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        let server_result = serving.await.unwrap();
        client_result.and(server_result)
    }

    /// aws-lc-rs's suites, AES-128-GCM first; key exchange (and with it
    /// everything asymmetric) stays ring's.
    #[test]
    fn aws_lc_suites_aes_128_first_and_ring_key_exchange() {
        let p = provider();
        let ids = |suites: &[rustls::SupportedCipherSuite]| {
            let mut ids: Vec<_> = suites.iter().map(|s| u16::from(s.suite())).collect();
            ids.sort_unstable();
            ids
        };
        assert_eq!(
            p.cipher_suites[0].suite(),
            CipherSuite::TLS13_AES_128_GCM_SHA256
        );
        assert_eq!(ids(&p.cipher_suites), ids(aws_lc_rs::DEFAULT_CIPHER_SUITES));
        let names = |p: &CryptoProvider| p.kx_groups.iter().map(|g| g.name()).collect::<Vec<_>>();
        assert_eq!(names(&p), names(&ring::default_provider()));
    }

    #[tokio::test]
    async fn mutual_tls_with_spiffe_identities() {
        let root = ca();
        let (id, suite) = handshake(
            &root,
            workload(&root, SERVER, false),
            workload(&root, CLIENT, false),
            SERVER,
        )
        .await
        .unwrap();
        assert_eq!(id.to_string(), CLIENT);
        assert_eq!(suite, CipherSuite::TLS13_AES_128_GCM_SHA256);
    }

    #[tokio::test]
    async fn server_identity_other_than_expected_is_refused() {
        let root = ca();
        let e = handshake(
            &root,
            workload(&root, "spiffe://cluster.local/ns/shop/sa/impostor", false),
            workload(&root, CLIENT, false),
            SERVER,
        )
        .await
        .unwrap_err();
        assert!(
            e.contains("IdentityMismatch") && e.contains("impostor"),
            "{e}"
        );
    }

    #[tokio::test]
    async fn certificates_from_another_ca_are_refused_both_ways() {
        let root = ca();
        let other = ca();
        let e = handshake(
            &root,
            workload(&other, SERVER, false),
            workload(&root, CLIENT, false),
            SERVER,
        )
        .await
        .unwrap_err();
        // Both test roots have the same (default) name, so the chain builds
        // and the signature check is what refuses it.
        assert!(e.contains("BadSignature"), "server from another CA: {e}");
        let e = handshake(
            &root,
            workload(&root, SERVER, false),
            workload(&other, CLIENT, false),
            SERVER,
        )
        .await
        .unwrap_err();
        assert!(!e.is_empty(), "client from another CA");
    }

    #[tokio::test]
    async fn expired_certificates_are_refused_both_ways() {
        let root = ca();
        let e = handshake(
            &root,
            workload(&root, SERVER, true),
            workload(&root, CLIENT, false),
            SERVER,
        )
        .await
        .unwrap_err();
        assert!(e.to_lowercase().contains("expired"), "{e}");
        let e = handshake(
            &root,
            workload(&root, SERVER, false),
            workload(&root, CLIENT, true),
            SERVER,
        )
        .await
        .unwrap_err();
        assert!(!e.is_empty());
    }
}
