//! The mesh's certificate authority. It signs workload
//! certificates over Istio's gRPC certificate service, for node agents that
//! prove who they are and ask only for identities scheduled on their node.
pub mod authz;
pub mod command;
pub mod config;
pub mod error;
pub mod kubernetes;
pub mod lease;
pub mod policy_status;
pub mod root;
pub mod routes;
pub mod server;
pub mod service;
pub mod signer;
pub mod status_controller;
pub mod waypoints;

#[cfg(test)]
mod api_mock;
#[cfg(test)]
mod tests;
