//! `IstioCertificateService/CreateCertificate`: authenticate the caller,
//! check the identity it asks for is in the trust domain and is the
//! caller's to have (a node agent: on its node; a workload: its own), sign.
use std::time::Duration;

use mesh_identity::{
    Identity,
    ca::{
        grpc::istio_certificate_service_server::IstioCertificateService,
        proto::{IstioCertificateRequest, IstioCertificateResponse},
    },
};
use tonic::{Request, Response, Status};
use tracing::{info, warn};

use super::{
    authz::{Authority, AuthzError},
    signer::Signer,
};

pub struct CertificateService {
    pub signer: Signer,
    pub trust_domain: String,
    pub authority: Authority,
}

/// Identity asked for: the impersonation metadata when present (ztunnel's
/// form), else the CSR's own URI SAN (istio-agent's form).
fn requested_identity(req: &IstioCertificateRequest) -> Result<Identity, Status> {
    if let Some(id) = req.impersonated_identity() {
        return Identity::parse(id).map_err(|e| Status::invalid_argument(e.to_string()));
    }
    let csr = rcgen::CertificateSigningRequestParams::from_pem(&req.csr)
        .map_err(|e| Status::invalid_argument(format!("csr: {e}")))?;
    csr.params
        .subject_alt_names
        .iter()
        .find_map(|san| match san {
            rcgen::SanType::URI(uri) => Some(uri.as_str().to_owned()),
            _ => None,
        })
        .ok_or_else(|| {
            Status::invalid_argument(
                "csr names no SPIFFE ID and no ImpersonatedIdentity metadata is set",
            )
        })
        .and_then(|id| Identity::parse(&id).map_err(|e| Status::invalid_argument(e.to_string())))
}

#[tonic::async_trait]
impl IstioCertificateService for CertificateService {
    async fn create_certificate(
        &self,
        request: Request<IstioCertificateRequest>,
    ) -> Result<Response<IstioCertificateResponse>, Status> {
        let peer = request
            .remote_addr()
            .map(|a| a.to_string())
            .unwrap_or_default();
        let authorization = request
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let req = request.into_inner();
        let caller = match self.authority.authenticate(authorization.as_deref()).await {
            Ok(caller) => caller,
            Err(e) => {
                warn!(%peer, error = %e, "certificate request refused: caller not authenticated");
                return Err(e.status());
            }
        };
        let identity = match requested_identity(&req) {
            Ok(id) => id,
            Err(status) => {
                warn!(%peer, %caller, error = status.message(), "certificate request refused: bad request");
                return Err(status);
            }
        };
        let allowed = if identity.trust_domain() != self.trust_domain {
            Err(AuthzError::TrustDomain {
                identity: identity.to_string(),
                trust_domain: self.trust_domain.clone(),
            })
        } else {
            self.authority.authorize(&caller, &identity).await
        };
        if let Err(e) = allowed {
            warn!(%peer, %caller, %identity, error = %e, "certificate request refused: identity not allowed for the caller");
            return Err(e.status());
        }
        let lifetime: Duration = self.signer.lifetime(req.validity_duration);
        match self.signer.sign(&req.csr, &identity, lifetime) {
            Ok(cert_chain) => {
                info!(%caller, %identity, lifetime_s = lifetime.as_secs(), "certificate issued");
                Ok(Response::new(IstioCertificateResponse { cert_chain }))
            }
            Err(e) => {
                warn!(%peer, %caller, %identity, error = %e, "certificate request refused");
                Err(Status::invalid_argument(e.to_string()))
            }
        }
    }
}
