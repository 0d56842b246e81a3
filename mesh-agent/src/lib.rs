//! mesh's node agent: drives the eBPF datapath, enrolls the node's pods,
//! and carries their traffic (plaintext capture, HBONE, same-node
//! hand-over). The only crate that links aya and embeds the kernel
//! programs. See ARCHITECTURE.md for the crates and the design.
pub mod admin;
pub mod cni;
pub mod datapath;
pub mod enrollment;
pub mod flows;
pub mod handover;
pub mod health;
pub mod link_update;
pub mod local_pods;
pub mod netlink_route;
pub mod netns;
pub mod netns_finder;
pub mod node;
pub mod pinned_link;
pub mod pod;
pub mod preflight;
pub mod proxy;
pub mod source_ip;
