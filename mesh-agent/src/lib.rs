//! mesh's node agent: drives the eBPF datapath and moves the traffic it
//! captures. See ARCHITECTURE.md for the design.
pub mod config;
pub mod datapath;
pub mod flows;
pub mod netns;
pub mod node;
pub mod pod;
pub mod preflight;
pub mod proxy;
