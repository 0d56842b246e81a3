//! Layouts shared by mesh's kernel programs (`mesh-ebpf`) and the agent.
//!
//! Everything here is `#[repr(C)]` plain data with explicit padding, because
//! both sides read the same bytes out of BPF maps. Addresses are stored as
//! 16-byte IPv6 values in network byte order; IPv4 uses the v4-mapped form
//! (`::ffff:a.b.c.d`) so one key shape serves both families. Ports are host
//! byte order everywhere in these structs, whatever order the kernel context
//! hands them in.
#![no_std]

/// The agent's outbound listener inside every enrolled pod's netns.
pub const OUTBOUND_PORT: u16 = 15001;
/// The agent's inbound (plaintext) listener inside every enrolled pod's netns.
pub const INBOUND_PORT: u16 = 15006;
/// The agent's inbound HBONE listener inside every enrolled pod's netns.
pub const HBONE_PORT: u16 = 15008;
/// Source address of the agent's IPv4 deliveries into a pod (Istio's choice,
/// so application logs read the same). sk_lookup passes any connection whose
/// source is loopback: only a process inside the pod's netns can send one.
pub const INBOUND_DELIVERY_IPV4: [u8; 4] = [127, 0, 0, 6];
/// The socket mark of the agent's deliveries from the client's own address,
/// compared under `DELIVERY_MARK_MASK`. In the pod's netns it routes the
/// app's replies back to the agent (`fib rule` to a table of `local` routes;
/// the app's accepted socket inherits the mark), sock_ops leaves such hops
/// out of flow records, and the agent refuses a marked connection that
/// reaches its own inbound listener. It exempts nothing from capture (that
/// is `DeliveryKey`'s): a pod that marks its own sockets only routes its own
/// traffic to itself.
pub const DELIVERY_MARK: u32 = 0x6d5;
pub const DELIVERY_MARK_MASK: u32 = 0xfff;

/// Map and program names: the ELF symbols, and the file names of the pins.
pub mod names {
    pub const ENROLLED: &str = "MESH_ENROLLED";
    pub const POD_ADDRS: &str = "MESH_POD_ADDRS";
    pub const ORIG_DST_BY_COOKIE: &str = "MESH_ORIG_BY_COOKIE";
    pub const ORIG_DST_BY_TUPLE: &str = "MESH_ORIG_BY_TUPLE";
    pub const INBOUND_LISTENERS: &str = "MESH_INBOUND_LSN";
    pub const SPLICE: &str = "MESH_SPLICE";
    pub const DELIVERIES: &str = "MESH_DELIVERIES";
    pub const FLOWS_LIVE: &str = "MESH_FLOWS_LIVE";
    pub const FLOW_EVENTS: &str = "MESH_FLOW_EVENTS";
    pub const CONFIG: &str = "MESH_CONFIG";
    pub const AGENT_CGROUPS: &str = "MESH_AGENT_CGROUPS";
    pub const COUNTERS: &str = "MESH_COUNTERS";

    pub const PROG_CONNECT4: &str = "mesh_connect4";
    pub const PROG_CONNECT6: &str = "mesh_connect6";
    pub const PROG_SOCKOPS: &str = "mesh_sockops";
    pub const PROG_SPLICE: &str = "mesh_splice";
    pub const PROG_INBOUND: &str = "mesh_inbound";
}

/// Maximum sizes of the maps; the agent reports their fill level.
pub mod limits {
    pub const ENROLLED: u32 = 4096;
    pub const POD_ADDRS: u32 = 16384;
    pub const ORIG_DST: u32 = 65536;
    pub const INBOUND_LISTENERS: u32 = 16384;
    pub const SPLICE: u32 = 65536;
    /// Deliveries between bind and connect at once, node-wide; past it a
    /// delivery comes from the reserved loopback source.
    pub const DELIVERIES: u32 = 16384;
    pub const FLOWS_LIVE: u32 = 65536;
    /// The ring is mapped into the agent, so all of it counts in the
    /// agent's memory; the agent drains it as records arrive, and a full
    /// ring is counted, not blocking.
    pub const FLOW_EVENTS_BYTES: u32 = 1 << 18;
    /// Agents of one node exempt at once: the serving one and those still
    /// draining after handing over (one, or a few after quick successive
    /// upgrades).
    pub const AGENT_CGROUPS: u32 = 8;
}

/// A pod's own address within its netns; connections to it are not redirected.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct PodAddrKey {
    pub netns: u64,
    pub ip: [u8; 16],
}

/// One delivery of the agent's from a client's own address, while it
/// connects: the app's end (`local`, a pod address) and the client's
/// (`remote`), ports in host order. sk_lookup lets a SYN with exactly this
/// 4-tuple reach the app; only the agent writes the map.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct DeliveryKey {
    pub local_ip: [u8; 16],
    pub remote_ip: [u8; 16],
    pub local_port: u32,
    pub remote_port: u32,
}

/// The inbound listener for connections addressed to `ip` (a pod address).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct ListenerKey {
    pub ip: [u8; 16],
}

/// A TCP connection as seen from one of its sockets, inside one netns.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct SockKey {
    pub netns: u64,
    pub local_ip: [u8; 16],
    pub remote_ip: [u8; 16],
    pub local_port: u32,
    pub remote_port: u32,
}

impl SockKey {
    /// The same connection seen from the other end.
    pub const fn peer(&self) -> SockKey {
        SockKey {
            netns: self.netns,
            local_ip: self.remote_ip,
            remote_ip: self.local_ip,
            local_port: self.remote_port,
            remote_port: self.local_port,
        }
    }
}

/// An original destination that connect4/6 rewrote.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OrigDst {
    pub ip: [u8; 16],
    pub port: u16,
    /// 4 or 6: the family the application connected with.
    pub family: u16,
    pub _pad: u32,
}

/// Runtime switches, in a one-element array map the agent writes.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DatapathConfig {
    /// 1: rewrite enrolled pods' connects to the agent (0 only for diagnosis).
    pub redirect: u32,
    /// 1: put app<->agent loopback pairs into the sockhash (sk_msg splicing).
    pub splice: u32,
    /// 1: record flows of enrolled pods.
    pub flows: u32,
    pub _pad: u32,
    /// The cgroup-v2 id of the agent's own cgroup: connects made by a task
    /// in it are the agent's upstream dials and are never redirected. A
    /// cgroup is something a pod cannot claim for itself (joining one needs
    /// write access to its `cgroup.procs`), unlike SO_MARK, which any pod
    /// with CAP_NET_RAW may set since Linux 5.17. 0 (no cgroup has it)
    /// exempts nobody.
    ///
    /// The programs of this version read `MESH_AGENT_CGROUPS` instead,
    /// which also holds the agents still draining after a hand-over (each
    /// in a cgroup of its own in Kubernetes). The agent keeps writing this
    /// field: programs of an older agent that stay attached (a pinned map
    /// of another layout keeps them) read only it.
    pub agent_cgroup: u64,
}

/// Indexes into the per-CPU counters array.
pub mod counter {
    pub const CONNECT_REDIRECTED: u32 = 0;
    /// connect4/6 left alone because the agent itself made it.
    pub const CONNECT_SKIPPED_AGENT: u32 = 1;
    pub const INBOUND_REDIRECTED: u32 = 2;
    pub const INBOUND_DROPPED_NO_LISTENER: u32 = 3;
    pub const SPLICE_INSERTED: u32 = 4;
    pub const SPLICE_REDIRECTED: u32 = 5;
    pub const SPLICE_MISSED: u32 = 6;
    pub const FLOWS_OPENED: u32 = 7;
    pub const FLOWS_CLOSED: u32 = 8;
    pub const FLOW_EVENTS_LOST: u32 = 9;
    pub const ORIG_DST_RECORDED: u32 = 10;
    pub const COUNT: u32 = 11;

    /// What the admin API, metrics and `mesh status` call each counter.
    pub const NAMES: [&str; COUNT as usize] = [
        "connect_redirected",
        "connect_skipped_agent",
        "inbound_redirected",
        "inbound_dropped_no_listener",
        "splice_inserted",
        "splice_redirected",
        "splice_missed",
        "flows_opened",
        "flows_closed",
        "flow_events_lost",
        "orig_dst_recorded",
    ];
}

/// Per-connection flow statistics, live in a hash (by socket cookie) and
/// emitted to a ring buffer when the connection closes.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowRecord {
    pub cookie: u64,
    pub netns: u64,
    pub start_ns: u64,
    /// 0 while the connection is open (and in the record announcing it).
    pub end_ns: u64,
    pub bytes_sent: u64,
    pub bytes_received: u64,
    pub segs_out: u32,
    pub segs_in: u32,
    pub srtt_us: u32,
    pub total_retrans: u32,
    pub local_ip: [u8; 16],
    pub remote_ip: [u8; 16],
    pub local_port: u16,
    pub remote_port: u16,
    /// 1: this side opened the connection.
    pub active: u8,
    pub _pad: [u8; 3],
}

/// v4-mapped form of an IPv4 address given in network byte order as the
/// kernel's contexts hold it (the u32's memory is the address bytes).
#[inline(always)]
pub const fn v4_mapped(ip_be: u32) -> [u8; 16] {
    let b = ip_be.to_ne_bytes();
    [
        0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, b[0], b[1], b[2], b[3],
    ]
}

/// Bytes of an IPv6 address from the kernel's four network-order u32 words.
#[inline(always)]
pub const fn v6_bytes(w: [u32; 4]) -> [u8; 16] {
    let a = w[0].to_ne_bytes();
    let b = w[1].to_ne_bytes();
    let c = w[2].to_ne_bytes();
    let d = w[3].to_ne_bytes();
    [
        a[0], a[1], a[2], a[3], b[0], b[1], b[2], b[3], c[0], c[1], c[2], c[3], d[0], d[1], d[2],
        d[3],
    ]
}

#[cfg(feature = "user")]
mod pod_impls {
    use super::*;
    // SAFETY: all of these are repr(C) with explicit padding and no pointers.
    unsafe impl aya::Pod for PodAddrKey {}
    unsafe impl aya::Pod for ListenerKey {}
    unsafe impl aya::Pod for DeliveryKey {}
    unsafe impl aya::Pod for SockKey {}
    unsafe impl aya::Pod for OrigDst {}
    unsafe impl aya::Pod for DatapathConfig {}
    unsafe impl aya::Pod for FlowRecord {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layouts_have_no_implicit_padding() {
        assert_eq!(core::mem::size_of::<SockKey>(), 8 + 16 + 16 + 4 + 4);
        assert_eq!(core::mem::size_of::<OrigDst>(), 24);
        assert_eq!(core::mem::size_of::<PodAddrKey>(), 24);
        assert_eq!(core::mem::size_of::<DeliveryKey>(), 16 + 16 + 4 + 4);
        assert_eq!(core::mem::size_of::<FlowRecord>(), 8 * 6 + 4 * 4 + 32 + 8);
        assert_eq!(core::mem::size_of::<DatapathConfig>(), 4 * 4 + 8);
        assert_eq!(core::mem::offset_of!(DatapathConfig, agent_cgroup), 16);
    }

    #[test]
    fn v4_mapping_keeps_network_order() {
        let ip_be = u32::from_ne_bytes([10, 244, 1, 11]);
        assert_eq!(&v4_mapped(ip_be)[10..], &[0xff, 0xff, 10, 244, 1, 11]);
    }

    #[test]
    fn peer_swaps_ends() {
        let k = SockKey {
            netns: 7,
            local_ip: [1; 16],
            remote_ip: [2; 16],
            local_port: 1000,
            remote_port: 15001,
        };
        let p = k.peer();
        assert_eq!((p.local_port, p.remote_port), (15001, 1000));
        assert_eq!(p.peer(), k);
    }
}
