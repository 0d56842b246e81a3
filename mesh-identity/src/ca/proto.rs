//! Messages of Istio's `istio.v1.auth.IstioCertificateService`
//! (security/proto/providers/... ca.proto), field numbers as Istio's, so
//! Istio's agents and ztunnel can talk to our CA and ours to theirs.

/// Metadata key ztunnel uses to ask for a workload's certificate on its
/// behalf; its value is the SPIFFE ID.
pub const IMPERSONATED_IDENTITY: &str = "ImpersonatedIdentity";

#[derive(Clone, PartialEq, prost::Message)]
pub struct IstioCertificateRequest {
    /// PEM-encoded certificate signing request.
    #[prost(string, tag = "1")]
    pub csr: String,
    /// Requested lifetime in seconds; the CA may shorten it.
    #[prost(int64, tag = "3")]
    pub validity_duration: i64,
    #[prost(message, optional, tag = "4")]
    pub metadata: Option<prost_types::Struct>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct IstioCertificateResponse {
    /// PEM-encoded chain: the workload certificate first, the root last.
    #[prost(string, repeated, tag = "1")]
    pub cert_chain: Vec<String>,
}

impl IstioCertificateRequest {
    pub fn impersonated_identity(&self) -> Option<&str> {
        let field = self.metadata.as_ref()?.fields.get(IMPERSONATED_IDENTITY)?;
        match field.kind.as_ref()? {
            prost_types::value::Kind::StringValue(s) => Some(s),
            _ => None,
        }
    }

    pub fn with_impersonated_identity(mut self, id: &str) -> Self {
        let mut meta = prost_types::Struct::default();
        meta.fields.insert(
            IMPERSONATED_IDENTITY.to_owned(),
            prost_types::Value {
                kind: Some(prost_types::value::Kind::StringValue(id.to_owned())),
            },
        );
        self.metadata = Some(meta);
        self
    }
}
