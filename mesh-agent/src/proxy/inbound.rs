//! The inbound listener (15006): plaintext connections to a pod that
//! sk_lookup handed to the agent. The accepted socket's local address is the
//! original destination. Under STRICT mTLS they are refused; otherwise
//! authorized (with no peer identity) and delivered to the app from
//! 127.0.0.6 inside the pod's netns, which sk_lookup lets through.
use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    sync::Arc,
};

use tokio::net::{TcpListener, TcpStream};
use tracing::warn;

use super::{
    RelayMode,
    access_log::{Connection, Direction, Security},
    connector::agent_connect,
    listeners::{self, Listener},
    own_ports::{InboundPath, SelfTraffic, check_inbound},
    relay,
    state::{MeshView, ProxyState},
};
use crate::{identity::Identity, pod::PodContext, policy::MtlsMode};

pub async fn serve(listener: TcpListener, pod: Arc<PodContext>, state: Arc<ProxyState>) {
    loop {
        let accepted = listeners::accept(&listener, Listener::Inbound, &pod, &state).await;
        let pod = pod.clone();
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
    };
    state.telemetry.refusals.refused(listener.label(), reason);
    warn!(pod = %pod.key, listener = listener.label(), %src, %dst, reason = %why, "connection to the mesh itself refused");
}

/// The reserved source of deliveries to apps; sk_lookup passes it.
pub fn delivery_source(dst: SocketAddr) -> SocketAddr {
    let ip = match dst.ip() {
        IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::from(mesh_common::INBOUND_DELIVERY_IPV4)),
        IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::LOCALHOST),
    };
    SocketAddr::new(ip, 0)
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
    if let Err(why) = check_inbound(InboundPath::Plaintext, src, dst, &state.own_ports) {
        refuse_self_traffic(&state, Listener::Inbound, &pod, src, dst, why);
        relay::reset(downstream);
        return;
    }
    let mut conn = Connection::new(Direction::Inbound, &pod, &state, src, dst, Security::None);
    conn.destination_identity = Some(pod.identity.to_string());
    let view = state.view();
    // Before the STRICT check: until PeerAuthentications are listed, every
    // pod would look PERMISSIVE.
    if !policies_synced(&mut conn, &view, &state, Listener::Inbound) {
        relay::reset(downstream);
        return;
    }
    if state.mtls.is_some() && view.policies.mtls_mode(pod.target(), dst.port()) == MtlsMode::Strict
    {
        conn.refused("plaintext refused: STRICT mTLS (PeerAuthentication)");
        relay::reset(downstream);
        return;
    }
    deliver(downstream, conn, None, &pod, dst, &view, &state).await;
}

/// Whether the view's policies can be enforced. If not, counts and logs
/// the refusal with the reason (which kind, and the API's error); the
/// caller then refuses the connection. Every inbound path asks this first:
/// an incomplete policy list would decide allow-all and PERMISSIVE.
pub fn policies_synced(
    conn: &mut Connection<'_>,
    view: &MeshView,
    state: &ProxyState,
    listener: Listener,
) -> bool {
    match view.policies.sync.check() {
        Ok(()) => true,
        Err(e) => {
            state
                .telemetry
                .refusals
                .refused(listener.label(), "policies_not_synced");
            conn.refused(&format!(
                "policies not synced, refusing until they are: {e}"
            ));
            false
        }
    }
}

/// Authorizes a connection to `to` (an address of `target`) from `source`
/// (`None`: plaintext, no identity) and delivers it to the app from
/// 127.0.0.6 in the target's netns. Plaintext inbound and the same-node
/// hand-over both end here.
pub async fn deliver(
    mut downstream: TcpStream,
    mut conn: Connection<'_>,
    source: Option<&Identity>,
    target: &PodContext,
    to: SocketAddr,
    view: &MeshView,
    state: &ProxyState,
) {
    let relay_mode: RelayMode = target.relay;
    // The same-node hand-over arrives here without passing `handle`.
    if !policies_synced(&mut conn, view, state, Listener::Inbound) {
        relay::reset(downstream);
        return;
    }
    let decision = view.policies.authorize(
        target.target(),
        &crate::policy::Connection {
            source,
            source_ip: conn.src.ip(),
            destination_ip: to.ip(),
            destination_port: to.port(),
        },
    );
    if !conn.authorized(&decision) {
        relay::reset(downstream);
        return;
    }
    let _ = downstream.set_nodelay(true);
    let delivery = agent_connect(
        target,
        Some(delivery_source(to)),
        to,
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
