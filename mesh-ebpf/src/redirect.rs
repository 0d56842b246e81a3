//! cgroup/connect4 and connect6: send an enrolled pod's outbound TCP connects
//! to the agent's outbound listener in the pod's own netns, and remember the
//! original destination by socket cookie (sock_ops moves it to a 4-tuple key
//! once the connection has a source port).
//!
//! The agent dials upstream from inside pods' netns too, so its own connects
//! come through here and must be told apart, by something no pod can forge:
//! the cgroup of the task calling connect(). A pod's processes cannot enter
//! the agent's cgroup (moving a task needs write access to that cgroup's
//! `cgroup.procs`, which only the node's administrator has), and in
//! Kubernetes the agent's container cgroup holds the agent alone (an exec
//! into the agent's pod joins it, but whoever may do that already holds
//! the node). SO_MARK,
//! which this once used, is no such thing: since Linux 5.17 CAP_NET_RAW
//! suffices to set it, and container runtimes grant that by default.
use aya_ebpf::{
    EbpfContext,
    bindings::bpf_sock_addr,
    helpers::{bpf_get_current_cgroup_id, bpf_get_netns_cookie, bpf_get_socket_cookie},
    macros::cgroup_sock_addr,
    programs::SockAddrContext,
};
use aya_log_ebpf::debug;
use mesh_common::{OUTBOUND_PORT, OrigDst, PodAddrKey, counter, v4_mapped, v6_bytes};

use crate::maps::{
    ORIG_BY_COOKIE, POD_ADDRS, config, count, ctx_ip6, is_agent_cgroup, is_enrolled, is_loopback,
};

const ALLOW: i32 = 1;
const REJECT: i32 = 0;
const SOCK_STREAM: u32 = 1;
const LOOPBACK_V4_BE: u32 = u32::from_ne_bytes([127, 0, 0, 1]);
const LOOPBACK_V6_BE: [u32; 4] = [0, 0, 0, u32::from_ne_bytes([0, 0, 0, 1])];
const V4_MAPPED_LOOPBACK_BE: [u32; 4] = [
    0,
    0,
    u32::from_ne_bytes([0, 0, 0xff, 0xff]),
    u32::from_ne_bytes([127, 0, 0, 1]),
];

#[cgroup_sock_addr(connect4)]
pub fn mesh_connect4(ctx: SockAddrContext) -> i32 {
    let sa = ctx.sock_addr;
    let (ip_be, port_be) = unsafe { ((*sa).user_ip4, (*sa).user_port) };
    if let Some(netns) = wanted(&ctx, v4_mapped(ip_be)) {
        let orig = OrigDst {
            ip: v4_mapped(ip_be),
            port: u16::from_be(port_be as u16),
            family: 4,
            _pad: 0,
        };
        if remember(&ctx, &orig) {
            unsafe {
                (*sa).user_ip4 = LOOPBACK_V4_BE;
                (*sa).user_port = u32::from(OUTBOUND_PORT.to_be());
            }
            count(counter::CONNECT_REDIRECTED);
            debug!(
                &ctx,
                "connect4 redirected netns={} port={}", netns, orig.port
            );
        } else {
            return REJECT;
        }
    }
    ALLOW
}

#[cgroup_sock_addr(connect6)]
pub fn mesh_connect6(ctx: SockAddrContext) -> i32 {
    let sa = ctx.sock_addr;
    let ip_be = ctx_ip6!(sa, user_ip6);
    let port_be = unsafe { (*sa).user_port };
    let ip = v6_bytes(ip_be);
    if let Some(netns) = wanted(&ctx, ip) {
        let orig = OrigDst {
            ip,
            port: u16::from_be(port_be as u16),
            family: 6,
            _pad: 0,
        };
        // A v4-mapped destination on a dual-stack socket goes to the IPv4
        // listener through its mapped address; a real v6 one to [::1].
        let is_mapped = ip[..12] == [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff];
        if remember(&ctx, &orig) {
            let to = if is_mapped {
                V4_MAPPED_LOOPBACK_BE
            } else {
                LOOPBACK_V6_BE
            };
            // One 32-bit store per word at a constant ctx offset: the verifier
            // refuses stores through a computed ctx pointer.
            unsafe {
                core::ptr::write_volatile(&raw mut (*sa).user_ip6[0], to[0]);
                core::ptr::write_volatile(&raw mut (*sa).user_ip6[1], to[1]);
                core::ptr::write_volatile(&raw mut (*sa).user_ip6[2], to[2]);
                core::ptr::write_volatile(&raw mut (*sa).user_ip6[3], to[3]);
                (*sa).user_port = u32::from(OUTBOUND_PORT.to_be());
            }
            count(counter::CONNECT_REDIRECTED);
            debug!(
                &ctx,
                "connect6 redirected netns={} port={}", netns, orig.port
            );
        } else {
            return REJECT;
        }
    }
    ALLOW
}

/// The netns cookie when this connect is one to redirect: TCP, from an
/// enrolled netns, not made by the agent, not to loopback or to the pod's
/// own address.
///
/// Loopback stays within the pod's netns, so nothing sent there leaves the
/// pod unprotected; and the agent's own listeners are on loopback, so
/// redirecting those connects would loop. (sk_lookup passes loopback
/// sources for the same reason: only a process in the pod's netns can
/// send from there, see inbound.rs.)
#[inline(always)]
fn wanted(ctx: &SockAddrContext, dst: [u8; 16]) -> Option<u64> {
    let sa: *mut bpf_sock_addr = ctx.sock_addr;
    let cfg = config();
    if cfg.redirect == 0 || unsafe { (*sa).type_ } != SOCK_STREAM || is_loopback(&dst) {
        return None;
    }
    let netns = unsafe { bpf_get_netns_cookie(ctx.as_ptr()) };
    if !is_enrolled(netns) {
        return None;
    }
    // The caller's cgroup, not the socket's: connect() runs in the calling
    // task, and a socket could have been created elsewhere and handed over.
    // A set, not one id: after a hand-over the old agent drains from its
    // own cgroup (another pod's, in Kubernetes) and may still connect from
    // a pod's netns; until it has exited both agents are exempt. The agent
    // adds its id before it makes any connect and keeps the set exact
    // (cgroup ids are not reused while the node runs). `agent_cgroup` in
    // the config is only for older programs.
    if is_agent_cgroup(unsafe { bpf_get_current_cgroup_id() }) {
        count(counter::CONNECT_SKIPPED_AGENT);
        return None;
    }
    let own = PodAddrKey { netns, ip: dst };
    if POD_ADDRS.get_ptr(&own).is_some() {
        return None;
    }
    Some(netns)
}

/// Records the original destination. When that fails the caller rejects the
/// connect (EPERM): an enrolled pod fails closed, it never bypasses the agent.
#[inline(always)]
fn remember(ctx: &SockAddrContext, orig: &OrigDst) -> bool {
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    if ORIG_BY_COOKIE.insert(&cookie, orig, 0).is_ok() {
        count(counter::ORIG_DST_RECORDED);
        true
    } else {
        false
    }
}
