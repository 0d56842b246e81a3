//! The maps shared by the programs, and small helpers over them.
use aya_ebpf::{
    macros::map,
    maps::{Array, HashMap, LruHashMap, PerCpuArray, RingBuf, SockHash},
};
use mesh_common::{
    DatapathConfig, DeliveryKey, FlowRecord, ListenerKey, OrigDst, PodAddrKey, SockKey, counter,
    limits,
};

#[map(name = "MESH_CONFIG")]
pub static CONFIG: Array<DatapathConfig> = Array::pinned(1, 0);

/// The cgroup ids of the node's agents whose connects are left alone: the
/// serving agent's, and those of agents still draining after a hand-over
/// (the agent keeps the set exact; the value is unused).
#[map(name = "MESH_AGENT_CGROUPS")]
pub static AGENT_CGROUPS: HashMap<u64, u8> = HashMap::pinned(limits::AGENT_CGROUPS, 0);

#[map(name = "MESH_COUNTERS")]
pub static COUNTERS: PerCpuArray<u64> = PerCpuArray::pinned(counter::COUNT, 0);

/// Enrolled network namespaces, by netns cookie (the value is unused).
#[map(name = "MESH_ENROLLED")]
pub static ENROLLED: HashMap<u64, u8> = HashMap::pinned(limits::ENROLLED, 0);

#[map(name = "MESH_POD_ADDRS")]
pub static POD_ADDRS: HashMap<PodAddrKey, u8> = HashMap::pinned(limits::POD_ADDRS, 0);

/// connect4/6 → sock_ops: original destination by the app socket's cookie.
#[map(name = "MESH_ORIG_BY_COOKIE")]
pub static ORIG_BY_COOKIE: LruHashMap<u64, OrigDst> = LruHashMap::pinned(limits::ORIG_DST, 0);

/// sock_ops → agent: original destination by the app socket's 4-tuple + netns.
#[map(name = "MESH_ORIG_BY_TUPLE")]
pub static ORIG_BY_TUPLE: LruHashMap<SockKey, OrigDst> = LruHashMap::pinned(limits::ORIG_DST, 0);

/// The agent's inbound listener for each local pod address.
#[map(name = "MESH_INBOUND_LSN")]
pub static INBOUND_LISTENERS: SockHash<ListenerKey> =
    SockHash::pinned(limits::INBOUND_LISTENERS, 0);

/// agent → sk_lookup: the agent's deliveries from a client's address
/// while they connect.
#[map(name = "MESH_DELIVERIES")]
pub static DELIVERIES: HashMap<DeliveryKey, u8> = HashMap::pinned(limits::DELIVERIES, 0);

/// Both ends of every local app<->agent connection, for sk_msg splicing.
#[map(name = "MESH_SPLICE")]
pub static SPLICE: SockHash<SockKey> = SockHash::pinned(limits::SPLICE, 0);

#[map(name = "MESH_FLOWS_LIVE")]
pub static FLOWS_LIVE: HashMap<u64, FlowRecord> = HashMap::pinned(limits::FLOWS_LIVE, 0);

#[map(name = "MESH_FLOW_EVENTS")]
pub static FLOW_EVENTS: RingBuf = RingBuf::pinned(limits::FLOW_EVENTS_BYTES, 0);

#[inline(always)]
pub fn count(index: u32) {
    if let Some(c) = COUNTERS.get_ptr_mut(index) {
        // Per-CPU slot: no other writer, so a plain add is exact.
        unsafe { *c += 1 };
    }
}

#[inline(always)]
pub fn config() -> DatapathConfig {
    match CONFIG.get(0) {
        Some(c) => *c,
        None => DatapathConfig::default(),
    }
}

#[inline(always)]
pub fn is_agent_cgroup(id: u64) -> bool {
    AGENT_CGROUPS.get_ptr(id).is_some()
}

#[inline(always)]
pub fn is_enrolled(netns: u64) -> bool {
    ENROLLED.get_ptr(netns).is_some()
}

#[inline(always)]
pub fn is_loopback(ip: &[u8; 16]) -> bool {
    let v4_mapped_loopback =
        ip[..10] == [0u8; 10] && ip[10] == 0xff && ip[11] == 0xff && ip[12] == 127;
    let v6_loopback = ip[..15] == [0u8; 15] && ip[15] == 1;
    v4_mapped_loopback || v6_loopback
}

/// Reads a `[u32; 4]` IPv6 field of a kernel context one word at a time:
/// the verifier only allows context loads at constant offsets, and a plain
/// array copy may be compiled into loads through a computed pointer.
macro_rules! ctx_ip6 {
    ($ptr:expr, $field:ident) => {
        unsafe {
            [
                core::ptr::read_volatile(&raw const (*$ptr).$field[0]),
                core::ptr::read_volatile(&raw const (*$ptr).$field[1]),
                core::ptr::read_volatile(&raw const (*$ptr).$field[2]),
                core::ptr::read_volatile(&raw const (*$ptr).$field[3]),
            ]
        }
    };
}
pub(crate) use ctx_ip6;
