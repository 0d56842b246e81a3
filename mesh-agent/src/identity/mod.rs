//! Workload identity: SPIFFE IDs, certificates, and the agent's
//! certificate manager that keeps one SVID per service account on the node.
pub mod cert;
pub mod client;
pub mod manager;
pub mod spiffe;

pub use cert::WorkloadCert;
pub use spiffe::Identity;
