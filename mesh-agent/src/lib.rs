//! mesh's node agent and CA: drives the eBPF datapath, gives workloads
//! identities, and carries their traffic over mutual TLS. See
//! ARCHITECTURE.md for the design.
pub mod admin;
pub mod ca;
pub mod capped;
pub mod cli;
pub mod config;
pub mod datapath;
pub mod discovery;
pub mod flows;
pub mod hbone;
pub mod identity;
pub mod memory;
pub mod netns;
pub mod node;
pub mod pinned_link;
pub mod pod;
pub mod policy;
pub mod preflight;
pub mod proxy;
pub mod telemetry;
pub mod tls;
