//! sk_lookup, attached to each enrolled pod's netns: every inbound TCP
//! connection to a pod address goes to the agent's inbound listener, except
//! HBONE (the agent's own 15008 listener takes it as is), connections from
//! loopback (the agent's deliveries from 127.0.0.6, and the pod talking to
//! itself) and the agent's deliveries from a client's own address, which it
//! names by 4-tuple in `DELIVERIES` while they connect. Nothing else tells
//! those apart: a delivery looped over the pod's `lo` is looked up with the
//! ingress device of the pod address (the kernel's `rt_iif`), as a packet
//! from the network is. With no listener registered the SYN is dropped:
//! while the agent is away the pod is unreachable, never reachable
//! unproxied.
use aya_ebpf::{
    bindings::{sk_action::SK_DROP, sk_action::SK_PASS},
    macros::sk_lookup,
    programs::SkLookupContext,
};
use aya_log_ebpf::debug;
use mesh_common::{DeliveryKey, HBONE_PORT, ListenerKey, counter, v4_mapped, v6_bytes};

use crate::maps::{DELIVERIES, INBOUND_LISTENERS, count, ctx_ip6, is_loopback};

const AF_INET: u32 = 2;
const IPPROTO_TCP: u32 = 6;

#[sk_lookup]
pub fn mesh_inbound(ctx: SkLookupContext) -> u32 {
    let l = ctx.lookup;
    let (family, protocol, local_port) = unsafe { ((*l).family, (*l).protocol, (*l).local_port) };
    if protocol != IPPROTO_TCP || local_port == u32::from(HBONE_PORT) {
        return SK_PASS;
    }
    let (local, remote) = if family == AF_INET {
        unsafe { (v4_mapped((*l).local_ip4), v4_mapped((*l).remote_ip4)) }
    } else {
        (
            v6_bytes(ctx_ip6!(l, local_ip6)),
            v6_bytes(ctx_ip6!(l, remote_ip6)),
        )
    };
    if is_loopback(&remote) || is_loopback(&local) {
        return SK_PASS;
    }
    let delivery = DeliveryKey {
        local_ip: local,
        remote_ip: remote,
        local_port,
        remote_port: u32::from(u16::from_be(unsafe { (*l).remote_port })),
    };
    if unsafe { DELIVERIES.get(&delivery) }.is_some() {
        return SK_PASS;
    }
    match INBOUND_LISTENERS.redirect_sk_lookup(&ctx, ListenerKey { ip: local }, 0) {
        Ok(()) => {
            count(counter::INBOUND_REDIRECTED);
            debug!(&ctx, "inbound to port {} sent to the agent", local_port);
            SK_PASS
        }
        Err(_) => {
            count(counter::INBOUND_DROPPED_NO_LISTENER);
            SK_DROP
        }
    }
}
