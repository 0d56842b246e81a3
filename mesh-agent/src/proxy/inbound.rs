//! The inbound listener (15006): plaintext connections to a pod that
//! sk_lookup handed to the agent. The accepted socket's local address is the
//! original destination. Under STRICT mTLS they are refused; otherwise
//! authorized (with no peer identity) and delivered to the app from
//! 127.0.0.6 inside the pod's netns, which sk_lookup lets through. What
//! happens is `admit`'s decision; this module tells it (logs, metrics,
//! access log) for every inbound path and does the delivery.
use std::{net::SocketAddr, sync::Arc};

use mesh_hbone::relay;
use tokio::net::{TcpListener, TcpStream};
use tracing::warn;

pub use super::admit::delivery_source;
use super::{
    RelayMode,
    access_log::{Connection, Direction, Security},
    admit::{Admit, Arrival, Refusal, Rules, admit},
    connector::agent_connect,
    listeners::{self, Listener},
    own_ports::{InboundPath, SelfTraffic},
    state::ProxyState,
};
use crate::pod::{CurrentPod, PodContext};

pub async fn serve(listener: TcpListener, current: CurrentPod, state: Arc<ProxyState>) {
    loop {
        let accepted = listeners::accept(&listener, Listener::Inbound, &current.get(), &state).await;
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
    };
    let outcome = admit(&arrival, &pod, &rules);
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
        Refusal::NotThisPod | Refusal::Strict => conn.refused(&refusal.to_string()),
    }
    Err(refusal)
}

/// Delivers a connection to `target`'s app as `outcome` says (from
/// 127.0.0.6 in the target's netns), or refuses it. Plaintext inbound and
/// the same-node hand-over both end here.
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
    let delivery = agent_connect(target, Some(from), to, state.limits.connect_timeout);
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
