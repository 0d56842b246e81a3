//! What the benchmark compares (the modes: the table's columns) and what it
//! runs in each (the stages, one per tool).
use mesh_testbed::ClusterSpec;

use super::source_ip::Delivery;

#[derive(Clone, Copy, PartialEq, Debug, clap::ValueEnum)]
pub enum Mode {
    Direct,
    /// No mesh: a minimal user-space relay in each pod where the agents
    /// would be (`meshtb relay`: accept, copy both ways, nothing else). A
    /// reference for latency: what two user-space hops cost on this
    /// machine, so the mesh's ratios can be read against it. Its CPU rows
    /// are the relays': what moving the bytes through user space costs,
    /// before any mesh work. Its bulk is no floor (it copies; the plaintext
    /// agent splices).
    Relays,
    Mesh,
    /// The plaintext agents delivering to the server from 127.0.0.6
    /// (`datapath.sourceIp: loopback`): beside `mesh`, which delivers from
    /// the client's own address, what preserving the source costs.
    MeshLoopback,
    MeshSplice,
    Mtls,
    /// The mTLS agents delivering from 127.0.0.6, beside `mtls`.
    MtlsLoopback,
}

impl Mode {
    /// The column's heading.
    pub fn label(self) -> &'static str {
        match self {
            Mode::Direct => "direct",
            Mode::Relays => "two minimal relays",
            Mode::Mesh => "mesh plaintext",
            Mode::MeshLoopback => "mesh plaintext, 127.0.0.6 delivery",
            Mode::MeshSplice => "mesh plaintext + sk_msg splice",
            Mode::Mtls => "mesh HBONE mTLS",
            Mode::MtlsLoopback => "mesh HBONE mTLS, 127.0.0.6 delivery",
        }
    }

    /// Where the server pod's agent delivers from; None where no agent
    /// delivers (direct, relays).
    pub fn delivery(self) -> Option<Delivery> {
        match self {
            Mode::Direct | Mode::Relays => None,
            Mode::Mesh | Mode::MeshSplice | Mode::Mtls => Some(Delivery::ClientAddress),
            Mode::MeshLoopback | Mode::MtlsLoopback => Some(Delivery::Loopback),
        }
    }

    /// The mode that differs from this one only in delivering from
    /// 127.0.0.6 (this one delivering from the client's address).
    pub fn with_loopback_delivery(self) -> Option<Mode> {
        match self {
            Mode::Mesh => Some(Mode::MeshLoopback),
            Mode::Mtls => Some(Mode::MtlsLoopback),
            _ => None,
        }
    }

    /// The test bed this mode runs on: two nodes, a client pod on one and
    /// a server pod on the other.
    pub fn spec(self) -> ClusterSpec {
        let s = ClusterSpec::new(&[&["client"], &["server"]]);
        match self {
            Mode::Direct | Mode::Relays => s.without_agents(),
            Mode::Mesh => s.plaintext().splice(false),
            Mode::MeshLoopback => s.plaintext().splice(false).loopback_delivery(),
            Mode::MeshSplice => s.plaintext().splice(true),
            Mode::Mtls => s,
            Mode::MtlsLoopback => s.loopback_delivery(),
        }
    }
}

/// One kind of load, run by one tool; in this order in each round.
#[derive(Clone, Copy, PartialEq, Debug, clap::ValueEnum)]
pub enum Stage {
    Iperf3,
    Sockperf,
    Wrk,
    Hey,
    FixedRate,
    /// h2c, many streams on one connection: the L7 part only.
    H2load,
}

impl Stage {
    /// As `--stage` spells it, for the log and the failure notes.
    pub fn name(self) -> &'static str {
        match self {
            Stage::Iperf3 => "iperf3",
            Stage::Sockperf => "sockperf",
            Stage::Wrk => "wrk",
            Stage::Hey => "hey",
            Stage::FixedRate => "fixed-rate",
            Stage::H2load => "h2load",
        }
    }

    /// Whether the datapath part runs it (h2load is the L7 part's alone).
    pub fn in_datapath(self) -> bool {
        self != Stage::H2load
    }
}
