//! The test bed: simulated nodes and pods in network namespaces, running
//! real mesh agents.
//!
//! ```text
//!   wire netns: bridge "wire0" ── 10.0.0.0/24 ──┬── node 0 (netns, eth0 10.0.0.1) ── cni0 10.244.0.1/24 ── pods 10.244.0.10+
//!                                               └── node 1 (netns, eth0 10.0.0.2) ── cni0 10.244.1.1/24 ── pods 10.244.1.10+
//! ```
//! Each node runs its agent inside the node's netns and in a cgroup below
//! the node's cgroup-v2 directory, where the agent attaches its programs;
//! each pod's processes run in the pod's netns and in a per-pod cgroup below
//! the node's. All names carry a per-cluster id, everything is removed on
//! drop (and so on panic), and every wait is bounded.
pub mod cluster;
pub mod conformance;
pub mod echo;
pub mod fixtures;
pub mod handover;
pub mod harness;
pub mod http;
pub mod proc;
pub mod source_ip;
pub mod sys;
pub mod waypoint;

pub use cluster::{Cluster, ClusterSpec, Node, Pod};
pub use proc::{Binaries, Proc};
pub use waypoint::{Serves, WaypointSpec};

/// The first line of an end-to-end test: returns from the test, saying why
/// on stderr, unless it runs as root. Elsewhere (a developer's unprivileged
/// `cargo test`) such a test then passes as skipped instead of failing on
/// the first namespace it cannot create.
#[macro_export]
macro_rules! require_root {
    () => {{
        fn here() {}
        // "<crate>::<test>::here": the test's own name, for the message.
        let test = ::std::any::type_name_of_val(&here);
        if !$crate::sys::may_run(test.strip_suffix("::here").unwrap_or(test)) {
            return;
        }
    }};
}
