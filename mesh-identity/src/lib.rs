//! Workload identity: SPIFFE IDs, certificates, the certificate manager
//! that keeps one SVID per service account on the node, the CA protocol and
//! its client, and the rustls configurations built from them. Nothing here
//! knows of eBPF or network namespaces.
pub mod ca;
pub mod cert;
pub mod client;
pub mod manager;
pub mod spiffe;
pub mod tls;

pub use cert::WorkloadCert;
pub use spiffe::Identity;
