//! Why a caller is refused a certificate, and the gRPC status it gets:
//! shared by both authorities (the local file's and the Kubernetes API's).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AuthzError {
    #[error("no bearer token in the `authorization` metadata")]
    NoToken,
    #[error("the bearer token belongs to no known node agent or workload")]
    UnknownToken,
    #[error("{identity} is not in trust domain {trust_domain}")]
    TrustDomain {
        identity: String,
        trust_domain: String,
    },
    #[error("node {node} runs no pod with identity {identity}")]
    NotOnNode { node: String, identity: String },
    /// A workload asked for an identity other than its own.
    #[error(
        "service account {caller} may obtain only its own identity (ns/{namespace}/sa/{name}), not {identity}",
        namespace = caller.namespace(),
        name = caller.name()
    )]
    NotOwnIdentity {
        caller: super::authz::ServiceAccount,
        identity: String,
    },
    #[error("credential refused: {0}")]
    Rejected(String),
    #[error("cannot check the caller now: {0}")]
    Backend(String),
}

impl AuthzError {
    pub fn status(&self) -> tonic::Status {
        match self {
            AuthzError::NoToken | AuthzError::UnknownToken | AuthzError::Rejected(_) => {
                tonic::Status::unauthenticated(self.to_string())
            }
            AuthzError::TrustDomain { .. }
            | AuthzError::NotOnNode { .. }
            | AuthzError::NotOwnIdentity { .. } => {
                tonic::Status::permission_denied(self.to_string())
            }
            AuthzError::Backend(_) => tonic::Status::unavailable(self.to_string()),
        }
    }
}
