//! The inbound listener (15006): plaintext connections to a pod that
//! sk_lookup handed to the agent. The accepted socket's local address is the
//! original destination. Under STRICT mTLS they are refused (but the
//! kubelet's probes); otherwise authorized (with no peer identity) and
//! delivered to the app inside the pod's netns, from the client's address
//! (or 127.0.0.6; see `delivery`), which sk_lookup lets through. What happens is `admit`'s decision; this module
//! tells it (logs, metrics, access log) for every inbound path and does the
//! delivery. It also reads what the decision needs to know the kubelet's
//! probes: the pod's probe ports (the view) and this node's addresses (the
//! kernel).
use std::{
    io,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use mesh_hbone::relay;
use tokio::net::{TcpListener, TcpStream};
use tracing::warn;

pub use super::admit::delivery_source;
use super::{
    RelayMode,
    access_log::{Connection, Direction, Security},
    admit::{Admit, Arrival, Kubelet, Refusal, Rules, admit_plaintext},
    delivery::{dial_app, is_returned_delivery},
    listeners::{self, Listener},
    own_ports::{InboundPath, SelfTraffic},
    state::ProxyState,
};
use crate::pod::{CurrentPod, PodContext};

pub async fn serve(listener: TcpListener, current: CurrentPod, state: Arc<ProxyState>) {
    loop {
        let accepted =
            listeners::accept(&listener, Listener::Inbound, &current.get(), &state).await;
        let pod = current.get();
        let state = state.clone();
        tokio::spawn(async move {
            let _place = accepted.place;
            if let Ok(dst) = accepted.stream.local_addr() {
                handle(accepted.stream, accepted.peer, dst, pod, state).await;
            }
        });
    }
}

/// Counts and logs traffic to the mesh itself; the caller refuses it.
pub fn refuse_self_traffic(
    state: &ProxyState,
    listener: Listener,
    pod: &PodContext,
    src: SocketAddr,
    dst: SocketAddr,
    why: SelfTraffic,
) {
    let reason = match why {
        SelfTraffic::OwnPort(_) => "own_port",
        SelfTraffic::LoopbackSource(_) => "loopback_source",
        SelfTraffic::ReturnedDelivery => "returned_delivery",
    };
    state.telemetry.refusals.refused(listener.label(), reason);
    warn!(pod = %pod.key, listener = listener.label(), %src, %dst, reason = %why, "connection to the mesh itself refused");
}

async fn handle(
    downstream: TcpStream,
    src: SocketAddr,
    dst: SocketAddr,
    pod: Arc<PodContext>,
    state: Arc<ProxyState>,
) {
    let src = SocketAddr::new(src.ip().to_canonical(), src.port());
    let dst = SocketAddr::new(dst.ip().to_canonical(), dst.port());
    // Delivered again, it would come back again, until the agent ran out
    // of descriptors (see `own_ports`).
    if is_returned_delivery(&downstream) {
        let why = SelfTraffic::ReturnedDelivery;
        refuse_self_traffic(&state, Listener::Inbound, &pod, src, dst, why);
        relay::reset(downstream);
        return;
    }
    let view = state.view();
    let arrival = Arrival {
        path: InboundPath::Plaintext,
        src,
        dst,
        source: None,
    };
    let rules = Rules {
        policies: &view.policies,
        own_ports: &state.own_ports,
        mtls: state.mtls.is_some(),
        waypoint: view.waypoint_requirement(dst.ip()).map(|r| &**r),
    };
    // The view's pod at this address, if it is still the one this listener
    // serves (an address can pass to a new pod before the listener goes).
    let probe_ports = view
        .workload(dst.ip())
        .filter(|w| w.key() == pod.key)
        .map(|w| w.probe_ports.as_slice())
        .unwrap_or_default();
    // Read only for a port the kubelet probes: no other connection needs them.
    let node_addrs = if probe_ports.binary_search(&dst.port()).is_ok() {
        node_addresses()
    } else {
        Arc::from([])
    };
    let kubelet = Kubelet {
        node_addrs: &node_addrs,
        probe_ports,
    };
    let outcome = admit_plaintext(&arrival, &pod, &rules, &kubelet);
    if let Admit::Refuse(Refusal::SelfTraffic(why)) = outcome {
        // Counted and logged, but not a connection of the pod's: no
        // access log line.
        refuse_self_traffic(&state, Listener::Inbound, &pod, src, dst, why);
        relay::reset(downstream);
        return;
    }
    let mut conn = Connection::new(Direction::Inbound, &pod, &state, src, dst, Security::None);
    conn.destination_identity = Some(pod.identity.to_string());
    deliver(downstream, conn, outcome, &pod, &state).await;
}

/// Tells what the inbound decision said, as every inbound path does: a
/// refusal is counted and logged (access log, metrics, the policy decision)
/// and returned for the caller to answer; a delivery has its policy
/// decision recorded and is returned as where to dial, and from where.
pub fn admitted(
    conn: &mut Connection<'_>,
    state: &ProxyState,
    listener: Listener,
    pod: &PodContext,
    outcome: Admit,
) -> Result<(SocketAddr, SocketAddr), Refusal> {
    let refusal = match outcome {
        Admit::Deliver { to, from, decision } => {
            // Records the allowing decision and what dry-run policies say;
            // `admit` delivers nothing else, but should it, this fails
            // closed (the denial is already logged).
            return if conn.authorized(&decision) {
                Ok((to, from))
            } else {
                Err(Refusal::Denied(decision))
            };
        }
        // No policy was asked: nothing to record but the access log line.
        Admit::Probe { to, from } => return Ok((to, from)),
        Admit::Refuse(refusal) => refusal,
    };
    match &refusal {
        Refusal::SelfTraffic(why) => {
            refuse_self_traffic(state, listener, pod, conn.src, conn.dst, *why);
            conn.refused(&refusal.to_string());
        }
        Refusal::PoliciesNotSynced(_) => {
            state
                .telemetry
                .refusals
                .refused(listener.label(), "policies_not_synced");
            conn.refused(&refusal.to_string());
        }
        Refusal::Denied(decision) => {
            // Logs the denial (and dry-run) as the access log's `denied`.
            conn.authorized(decision);
        }
        Refusal::Strict => {
            state.telemetry.refusals.refused(listener.label(), "strict");
            conn.refused(&refusal.to_string());
        }
        Refusal::StrictWithoutCa => {
            state
                .telemetry
                .refusals
                .refused(listener.label(), "strict_without_ca");
            // A misconfiguration rather than a peer's doing: said beside
            // the access log, at most once a second.
            if once_a_second(&STRICT_WITHOUT_CA_LOGGED) {
                warn!(
                    pod = %pod.key,
                    src = %conn.src,
                    dst = %conn.dst,
                    "plaintext refused under STRICT mTLS (PeerAuthentication) on an agent with no CA (AgentConfig.ca): every connection but the kubelet's probes is refused; configure `ca`, or make the PeerAuthentication PERMISSIVE"
                );
            }
            conn.refused(&refusal.to_string());
        }
        Refusal::WaypointRequired(_) => {
            state
                .telemetry
                .refusals
                .refused(listener.label(), "waypoint_required");
            conn.refused(&refusal.to_string());
        }
        Refusal::NotThisPod => conn.refused(&refusal.to_string()),
    }
    Err(refusal)
}

static STRICT_WITHOUT_CA_LOGGED: Mutex<Option<Instant>> = Mutex::new(None);

/// True at most once a second per `last`.
fn once_a_second(last: &Mutex<Option<Instant>>) -> bool {
    let mut last = last.lock().unwrap_or_else(|e| e.into_inner());
    if last.is_some_and(|t| t.elapsed() < Duration::from_secs(1)) {
        return false;
    }
    *last = Some(Instant::now());
    true
}

/// How long a reading of the node's addresses is used: addresses change
/// rarely (a CNI bridge coming up, DHCP), and a flood of connections to a
/// probe port then costs one reading a second, not one each.
const NODE_ADDRESSES_FOR: Duration = Duration::from_secs(1);

/// This node's addresses: those of the agent's own network namespace,
/// which is the host's (the DaemonSet runs with hostNetwork; on the test
/// bed the agent runs in the node's netns). They, and not a Node object's
/// InternalIP, are what a connection from the node to its pods comes from:
/// the host's routing picks the source, on bridge CNIs the bridge's
/// address. Unreadable, they are none: probes are then refused under STRICT
/// like any plaintext (closed, not open), with a line saying why.
fn node_addresses() -> Arc<[IpAddr]> {
    static READ: Mutex<Option<(Instant, Arc<[IpAddr]>)>> = Mutex::new(None);
    let mut read = READ.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((at, addrs)) = &*read
        && at.elapsed() < NODE_ADDRESSES_FOR
    {
        return addrs.clone();
    }
    let addrs: Arc<[IpAddr]> = match host_addresses() {
        Ok(addrs) => addrs.into(),
        Err(e) => {
            warn!(error = %e, "cannot read the node's addresses (getifaddrs); the kubelet's probes are refused under STRICT mTLS until they can be read");
            Arc::from([])
        }
    };
    *read = Some((Instant::now(), addrs.clone()));
    addrs
}

/// The addresses of the calling thread's network namespace: the agent's
/// own, since its threads leave it only inside `SocketFactory` calls.
/// Loopback is left out (the plaintext path refuses loopback sources
/// before asking) and so is IPv6 link-local (a pod's own link-local
/// address lives on the same segment; a connection to a pod's cluster
/// address never comes from one).
fn host_addresses() -> io::Result<Vec<IpAddr>> {
    let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: on success getifaddrs points `head` at a list that stays valid
    // until the freeifaddrs below; nothing of it is kept past that.
    if unsafe { libc::getifaddrs(&mut head) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let mut out = Vec::new();
    let mut at = head;
    while !at.is_null() {
        // SAFETY: a non-null entry of the list getifaddrs returned.
        let ifa = unsafe { &*at };
        at = ifa.ifa_next;
        if ifa.ifa_addr.is_null() {
            continue;
        }
        // SAFETY: ifa_addr points to a sockaddr whose family says which
        // sockaddr_* it is.
        let ip = unsafe {
            match i32::from((*ifa.ifa_addr).sa_family) {
                libc::AF_INET => {
                    let sin = &*(ifa.ifa_addr as *const libc::sockaddr_in);
                    IpAddr::V4(Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr)))
                }
                libc::AF_INET6 => {
                    let sin6 = &*(ifa.ifa_addr as *const libc::sockaddr_in6);
                    IpAddr::V6(Ipv6Addr::from(sin6.sin6_addr.s6_addr))
                }
                _ => continue,
            }
        };
        let link_local = matches!(ip, IpAddr::V6(v6) if v6.is_unicast_link_local());
        if !ip.is_loopback() && !link_local && !out.contains(&ip) {
            out.push(ip);
        }
    }
    // SAFETY: the list getifaddrs returned, freed once.
    unsafe { libc::freeifaddrs(head) };
    Ok(out)
}

/// Delivers a connection to `target`'s app as `outcome` says (from the
/// client's address, or 127.0.0.6, in the target's netns; see
/// `delivery`), or refuses it. Plaintext inbound and the same-node
/// hand-over both end here.
pub async fn deliver(
    mut downstream: TcpStream,
    mut conn: Connection<'_>,
    outcome: Admit,
    target: &PodContext,
    state: &ProxyState,
) {
    let relay_mode: RelayMode = target.relay;
    let Ok((to, from)) = admitted(&mut conn, state, Listener::Inbound, target, outcome) else {
        relay::reset(downstream);
        return;
    };
    let _ = downstream.set_nodelay(true);
    let delivery = dial_app(
        target,
        &state.datapath,
        conn.src,
        to,
        from,
        state.limits.connect_timeout,
    );
    let mut upstream = match delivery.await {
        Ok(s) => s,
        Err(e) => {
            conn.connect_failed(&e);
            relay::reset(downstream);
            return;
        }
    };
    conn.opened();
    conn.closed(&relay_mode.relay(&mut downstream, &mut upstream).await);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_node_addresses_are_this_netns_addresses_without_loopback() {
        let addrs = host_addresses().unwrap();
        assert!(addrs.iter().all(|a| !a.is_loopback()), "{addrs:?}");
        // Whatever this machine has: the same as the kernel's own list.
        let ip = std::process::Command::new("ip")
            .args(["-o", "addr", "show"])
            .output();
        if let Ok(out) = ip {
            let text = String::from_utf8_lossy(&out.stdout);
            for a in &addrs {
                assert!(
                    text.contains(&format!(" {a}/")),
                    "{a} not in `ip addr`: {text}"
                );
            }
        }
        // A second reading within the second is the cached one.
        let first = node_addresses();
        assert!(Arc::ptr_eq(&first, &node_addresses()));
    }

    #[test]
    fn once_a_second_says_yes_once() {
        let last = Mutex::new(None);
        assert!(once_a_second(&last));
        assert!(!once_a_second(&last));
    }
}
