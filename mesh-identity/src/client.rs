//! The agent's side of the CA protocol: a fresh P-256 key per request, a
//! CSR for the workload's SPIFFE ID, and the node's credential; the answer
//! is checked before it is used (right identity, our key, our roots).
use std::{
    future::Future,
    pin::Pin,
    sync::atomic::{AtomicU64, Ordering},
    time::Duration,
};

use mesh_config::CaSettings;
use rcgen::{CertificateParams, DistinguishedName, KeyPair, PKCS_ECDSA_P256_SHA256, SanType};
use rustls::pki_types::PrivatePkcs8KeyDer;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};
use x509_parser::prelude::FromDer;

use super::{Identity, WorkloadCert, cert};
use crate::ca::{grpc::istio_certificate_service_client::IstioCertificateServiceClient, proto};

#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("CA unreachable or refused: {0}")]
    Rpc(#[from] tonic::Status),
    #[error("CSR: {0}")]
    Csr(#[from] rcgen::Error),
    #[error("CA answer unusable: {0}")]
    Answer(String),
    #[error("AgentConfig.ca.tokenFile {0}")]
    Token(String),
}

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("AgentConfig.ca.{field} {path}: {source}")]
    File {
        field: &'static str,
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("AgentConfig.ca.address `{0}`: {1}")]
    Address(String, String),
}

/// Where certificates come from; the manager only needs this.
pub trait CertSource: Send + Sync + 'static {
    fn fetch<'a>(
        &'a self,
        id: &'a Identity,
    ) -> Pin<Box<dyn Future<Output = Result<WorkloadCert, FetchError>> + Send + 'a>>;
}

pub struct CaClient {
    client: IstioCertificateServiceClient<Channel>,
    /// Read at every request: projected service-account tokens rotate.
    token_file: std::path::PathBuf,
    lifetime: Duration,
    root_pem: String,
    /// The roots, to drop from chains the CA returns.
    roots: Vec<rustls::pki_types::CertificateDer<'static>>,
    generation: AtomicU64,
}

impl CaClient {
    pub fn new(settings: &CaSettings) -> Result<Self, ClientError> {
        let read = |field, path: &std::path::Path| {
            std::fs::read_to_string(path).map_err(|source| ClientError::File {
                field,
                path: path.to_owned(),
                source,
            })
        };
        let root_pem = read("rootCertFile", &settings.root_cert_file)?;
        let roots = cert::parse_pem_certs(&root_pem).map_err(|e| ClientError::File {
            field: "rootCertFile",
            path: settings.root_cert_file.clone(),
            source: std::io::Error::other(e.to_string()),
        })?;
        // Fail at start, not at the first certificate, when it is unreadable.
        read("tokenFile", &settings.token_file)?;
        let bad_address = |e: String| ClientError::Address(settings.address.clone(), e);
        let tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(&root_pem))
            .domain_name(settings.server_name.clone());
        let channel = Endpoint::from_shared(format!("https://{}", settings.address))
            .map_err(|e| bad_address(e.to_string()))?
            .tls_config(tls)
            .map_err(|e| bad_address(e.to_string()))?
            .connect_timeout(Duration::from_secs(3))
            .timeout(Duration::from_secs(10))
            .connect_lazy();
        Ok(Self {
            client: IstioCertificateServiceClient::new(channel),
            token_file: settings.token_file.clone(),
            lifetime: settings.cert_lifetime,
            root_pem,
            roots,
            generation: AtomicU64::new(1),
        })
    }

    async fn request(&self, id: &Identity) -> Result<WorkloadCert, FetchError> {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params.subject_alt_names = vec![SanType::URI(id.to_string().try_into()?)];
        let csr = params.serialize_request(&key)?.pem()?;
        let body = proto::IstioCertificateRequest {
            csr,
            validity_duration: self.lifetime.as_secs() as i64,
            metadata: None,
        }
        .with_impersonated_identity(&id.to_string());
        let token = std::fs::read_to_string(&self.token_file)
            .map_err(|e| FetchError::Token(format!("{}: {e}", self.token_file.display())))?;
        let authorization = format!("Bearer {}", token.trim())
            .parse()
            .map_err(|_| FetchError::Token("token is not printable ASCII".into()))?;
        let mut request = tonic::Request::new(body);
        request
            .metadata_mut()
            .insert("authorization", authorization);
        let answer = self
            .client
            .clone()
            .create_certificate(request)
            .await?
            .into_inner();
        let mut chain = Vec::new();
        for pem in &answer.cert_chain {
            for der in cert::parse_pem_certs(pem).map_err(|e| FetchError::Answer(e.to_string()))? {
                if !self.roots.contains(&der) {
                    chain.push(der);
                }
            }
        }
        let leaf = chain
            .first()
            .ok_or_else(|| FetchError::Answer("empty certificate chain".into()))?;
        let (_, parsed) = x509_parser::certificate::X509Certificate::from_der(leaf)
            .map_err(|e| FetchError::Answer(e.to_string()))?;
        if parsed.public_key().subject_public_key.data.as_ref() != key.public_key_raw() {
            return Err(FetchError::Answer(
                "certificate is not for the key we sent".into(),
            ));
        }
        let generation = self.generation.fetch_add(1, Ordering::Relaxed);
        let cert = WorkloadCert::new(
            chain,
            PrivatePkcs8KeyDer::from(key.serialize_der()),
            generation,
        )
        .map_err(|e| FetchError::Answer(e.to_string()))?;
        if cert.identity() != id {
            return Err(FetchError::Answer(format!(
                "certificate is for {}, asked for {id}",
                cert.identity()
            )));
        }
        Ok(cert)
    }
}

impl CaClient {
    /// The mesh root the client trusts (PEM), for the agent's trust bundle.
    pub fn root_pem(&self) -> &str {
        &self.root_pem
    }
}

impl CertSource for CaClient {
    fn fetch<'a>(
        &'a self,
        id: &'a Identity,
    ) -> Pin<Box<dyn Future<Output = Result<WorkloadCert, FetchError>> + Send + 'a>> {
        Box::pin(self.request(id))
    }
}
