//! What every server of the mesh that is not the proxy shares: a cap on the
//! connections each of its listeners holds (the CA's gRPC port, the
//! agent's metrics, status and admin endpoints).
pub mod capped;
