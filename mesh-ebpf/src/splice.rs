//! sk_msg on the splice sockhash: a message sent on one end of a local
//! app<->agent connection goes straight into the other end's receive queue,
//! skipping the TCP/IP stack. When the peer is not (or no longer) in the map
//! the message takes the normal path.
use aya_ebpf::{
    EbpfContext,
    bindings::{BPF_F_INGRESS, sk_action::SK_PASS},
    helpers::bpf_get_netns_cookie,
    macros::sk_msg,
    programs::SkMsgContext,
};
use mesh_common::{SockKey, counter, v4_mapped, v6_bytes};

use crate::maps::{SPLICE, count, ctx_ip6};

const AF_INET: u32 = 2;

#[sk_msg]
pub fn mesh_splice(ctx: SkMsgContext) -> u32 {
    let m = ctx.msg;
    let netns = unsafe { bpf_get_netns_cookie(ctx.as_ptr()) };
    let (family, local_port, remote_port) =
        unsafe { ((*m).family, (*m).local_port, (*m).remote_port) };
    let (local_ip, remote_ip) = if family == AF_INET {
        unsafe { (v4_mapped((*m).local_ip4), v4_mapped((*m).remote_ip4)) }
    } else {
        (
            v6_bytes(ctx_ip6!(m, local_ip6)),
            v6_bytes(ctx_ip6!(m, remote_ip6)),
        )
    };
    let mut peer = SockKey {
        netns,
        local_ip: remote_ip,
        remote_ip: local_ip,
        local_port: u32::from(u16::from_be((remote_port >> 16) as u16)),
        remote_port: local_port,
    };
    if SPLICE.redirect_msg(&ctx, &mut peer, u64::from(BPF_F_INGRESS)) == i64::from(SK_PASS) {
        count(counter::SPLICE_REDIRECTED);
    } else {
        count(counter::SPLICE_MISSED);
    }
    SK_PASS
}
