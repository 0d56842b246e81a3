//! sock_ops, attached at the node's cgroup root. Three jobs, all keyed off
//! connection state changes:
//! - hand the original destination from the socket cookie (known at connect)
//!   to the 4-tuple (known once established) so the agent can look it up
//!   for the socket it accepted;
//! - register both ends of local app<->agent connections for sk_msg splicing;
//! - keep a flow record for every enrolled pod connection that leaves the pod,
//!   announced on the ring buffer when it opens and again when it closes.
use aya_ebpf::{
    EbpfContext,
    bindings::{
        BPF_NOEXIST, BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB, BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB,
        BPF_SOCK_OPS_STATE_CB, BPF_SOCK_OPS_STATE_CB_FLAG, BPF_SOCK_OPS_TCP_CONNECT_CB,
    },
    helpers::{bpf_get_netns_cookie, bpf_get_socket_cookie, bpf_ktime_get_ns},
    macros::sock_ops,
    programs::SockOpsContext,
};
use mesh_common::{
    DELIVERY_MARK, DELIVERY_MARK_MASK, FlowRecord, INBOUND_DELIVERY_IPV4, OUTBOUND_PORT, SockKey,
    counter, v4_mapped, v6_bytes,
};

use crate::maps::{
    FLOW_EVENTS, FLOWS_LIVE, ORIG_BY_COOKIE, ORIG_BY_TUPLE, SPLICE, config, count, ctx_ip6,
    is_enrolled, is_loopback,
};

const AF_INET: u32 = 2;
const TCP_CLOSE: u32 = 7;

#[sock_ops]
pub fn mesh_sockops(ctx: SockOpsContext) -> u32 {
    match ctx.op() {
        BPF_SOCK_OPS_TCP_CONNECT_CB => on_connect(&ctx),
        BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB => on_established(&ctx, true),
        BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB => on_established(&ctx, false),
        BPF_SOCK_OPS_STATE_CB => {
            if ctx.arg(1) == TCP_CLOSE {
                on_close(&ctx);
            }
        }
        _ => {}
    }
    1
}

#[inline(always)]
fn cookie(ctx: &SockOpsContext) -> u64 {
    unsafe { bpf_get_socket_cookie(ctx.as_ptr()) }
}

#[inline(always)]
fn want_state_cb(ctx: &SockOpsContext) {
    let _ = ctx.set_cb_flags((ctx.cb_flags() | BPF_SOCK_OPS_STATE_CB_FLAG) as i32);
}

/// A redirected connect may never get established (nothing listening while
/// the agent is away): ask for the close callback so its entry goes then.
#[inline(always)]
fn on_connect(ctx: &SockOpsContext) {
    if ORIG_BY_COOKIE.get_ptr(cookie(ctx)).is_some() {
        want_state_cb(ctx);
    }
}

#[inline(always)]
fn sock_key(ctx: &SockOpsContext, netns: u64) -> SockKey {
    let (local_ip, remote_ip) = if ctx.family() == AF_INET {
        (v4_mapped(ctx.local_ip4()), v4_mapped(ctx.remote_ip4()))
    } else {
        (
            v6_bytes(ctx_ip6!(ctx.ops, local_ip6)),
            v6_bytes(ctx_ip6!(ctx.ops, remote_ip6)),
        )
    };
    SockKey {
        netns,
        local_ip,
        remote_ip,
        local_port: ctx.local_port(),
        remote_port: u32::from(u16::from_be((ctx.remote_port() >> 16) as u16)),
    }
}

#[inline(always)]
fn on_established(ctx: &SockOpsContext, active: bool) {
    let netns = unsafe { bpf_get_netns_cookie(ctx.as_ptr()) };
    if !is_enrolled(netns) {
        return;
    }
    let key = sock_key(ctx, netns);
    let cookie = cookie(ctx);
    if active {
        if let Some(orig) = ORIG_BY_COOKIE.get_ptr(cookie) {
            let orig = unsafe { *orig };
            let _ = ORIG_BY_TUPLE.insert(&key, &orig, 0);
            let _ = ORIG_BY_COOKIE.remove(cookie);
        }
    }
    let cfg = config();
    let local_lo = is_loopback(&key.local_ip);
    let remote_lo = is_loopback(&key.remote_ip);
    let delivery = delivery_marked(ctx);
    if cfg.splice != 0 && (delivery || is_splice_pair(&key, local_lo, remote_lo)) {
        let mut k = key;
        if SPLICE
            .update(&mut k, unsafe { &mut *ctx.ops }, u64::from(BPF_NOEXIST))
            .is_ok()
        {
            count(counter::SPLICE_INSERTED);
        }
    }
    if cfg.flows != 0 && !local_lo && !remote_lo && !delivery {
        let rec = FlowRecord {
            cookie,
            netns,
            start_ns: unsafe { bpf_ktime_get_ns() },
            local_ip: key.local_ip,
            remote_ip: key.remote_ip,
            local_port: key.local_port as u16,
            remote_port: key.remote_port as u16,
            active: active as u8,
            ..FlowRecord::default()
        };
        if FLOWS_LIVE.insert(&cookie, &rec, 0).is_ok() {
            count(counter::FLOWS_OPENED);
            want_state_cb(ctx);
            // The opening record (end_ns 0) lets the agent count connections
            // as they open, not only when they close.
            if FLOW_EVENTS.output::<FlowRecord>(&rec, 0).is_err() {
                count(counter::FLOW_EVENTS_LOST);
            }
        }
    }
}

/// Either end of an agent's delivery from the client's own address: the
/// agent's socket carries the delivery mark, and the app's accepted socket
/// inherits it (`tcp_fwmark_accept`, set in enrolled netns). Such a hop is
/// the same connection the agent already has a flow for, seen again inside
/// the pod.
#[inline(always)]
fn delivery_marked(ctx: &SockOpsContext) -> bool {
    let sk = unsafe { (*ctx.ops).__bindgen_anon_2.sk };
    if sk.is_null() {
        return false;
    }
    let mark = unsafe { (*sk).mark };
    mark & DELIVERY_MARK_MASK == DELIVERY_MARK
}

/// The app<->agent hops inside a pod: app to the outbound listener, and the
/// agent's delivery (from 127.0.0.6) to the app.
#[inline(always)]
fn is_splice_pair(key: &SockKey, local_lo: bool, remote_lo: bool) -> bool {
    let outbound_hop = local_lo
        && remote_lo
        && (key.local_port == u32::from(OUTBOUND_PORT)
            || key.remote_port == u32::from(OUTBOUND_PORT));
    let delivery = v4_mapped(u32::from_ne_bytes(INBOUND_DELIVERY_IPV4));
    outbound_hop || key.local_ip == delivery || key.remote_ip == delivery
}

#[inline(always)]
fn on_close(ctx: &SockOpsContext) {
    let cookie = cookie(ctx);
    let _ = ORIG_BY_COOKIE.remove(cookie);
    let Some(live) = FLOWS_LIVE.get_ptr(cookie) else {
        return;
    };
    let mut rec = unsafe { *live };
    let ops = ctx.ops;
    unsafe {
        rec.end_ns = bpf_ktime_get_ns();
        rec.bytes_sent = (*ops).bytes_acked;
        rec.bytes_received = (*ops).bytes_received;
        rec.segs_out = (*ops).segs_out;
        rec.segs_in = (*ops).segs_in;
        rec.srtt_us = (*ops).srtt_us >> 3;
        rec.total_retrans = (*ops).total_retrans;
    }
    if FLOW_EVENTS.output::<FlowRecord>(&rec, 0).is_err() {
        count(counter::FLOW_EVENTS_LOST);
    }
    let _ = FLOWS_LIVE.remove(cookie);
    count(counter::FLOWS_CLOSED);
}
