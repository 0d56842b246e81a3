//! The outbound listener (15001): connections an enrolled pod's apps opened,
//! redirected by connect4/6. The original destination comes from the kernel,
//! looked up by the accepted connection's 4-tuple in the pod's netns. Then:
//! a Service's virtual IP is replaced by one of its ready endpoints; then a
//! meshed pod on this node gets the in-process path, a meshed pod
//! elsewhere an HBONE tunnel, anything else plaintext passthrough.
use std::{net::SocketAddr, sync::Arc};

use tokio::net::{TcpListener, TcpStream};
use tracing::{Instrument, debug_span, warn};

use super::{
    access_log::{Connection, Direction, Security},
    connector::agent_connect,
    inbound,
    listeners::{self, Listener},
    own_ports::{InboundPath, check_inbound},
    relay,
    state::ProxyState,
};
use crate::{discovery::view::MeshView, hbone, identity::Identity, pod::PodContext};

pub async fn serve(listener: TcpListener, pod: Arc<PodContext>, state: Arc<ProxyState>) {
    loop {
        let listeners::Accepted {
            stream,
            peer,
            place,
        } = listeners::accept(&listener, Listener::Outbound, &pod, &state).await;
        let pod = pod.clone();
        let state = state.clone();
        tokio::spawn(async move {
            let _place = place;
            let local = match stream.local_addr() {
                Ok(a) => a,
                Err(_) => return,
            };
            let Some(orig) = state.datapath.orig_dst(pod.netns_cookie, peer, local) else {
                // Without the original destination there is nowhere safe to send it.
                warn!(pod = %pod.key, %peer, "outbound connection without a recorded destination; refused");
                relay::reset(stream);
                return;
            };
            // At debug level: an enabled span is entered and left on every
            // poll, each message relayed, which cost 3 % of an agent's CPU
            // in a ping-pong. Log lines name the connection themselves.
            let span = debug_span!("outbound", pod = %pod.key, src = %peer, dst = %orig);
            handle(stream, peer, orig, pod, state)
                .instrument(span)
                .await;
        });
    }
}

/// Where an outbound connection goes once an endpoint is chosen.
enum Upstream {
    /// A meshed pod on this node: handed over in-process.
    Local(Arc<PodContext>, Identity),
    Tunnel(hbone::client::Tunnel),
    Plain(TcpStream),
}

/// Endpoints tried for one Service connection before giving up.
const MAX_ENDPOINT_TRIES: usize = 3;

async fn handle(
    mut downstream: TcpStream,
    src: SocketAddr,
    dst: SocketAddr,
    pod: Arc<PodContext>,
    state: Arc<ProxyState>,
) {
    let _ = downstream.set_nodelay(true);
    // The app reached 127.0.0.1:15001, so its socket's address is loopback;
    // to everyone else the connection comes from the pod's address.
    let src = pod
        .ips
        .iter()
        .find(|ip| ip.is_ipv4() == dst.is_ipv4())
        .map_or(src, |ip| SocketAddr::new(*ip, src.port()));
    let mut conn = Connection::new(Direction::Outbound, &pod, &state, src, dst, Security::None);
    let view = state.view();
    // A Service's virtual IP: pick among its ready endpoints.
    let candidates = match view.service_at(dst.ip()) {
        None => vec![dst],
        Some(svc) => {
            conn.service = Some(svc.service.key());
            let Some(port) = svc.port(dst.port()) else {
                conn.refused("the Service has no such port");
                relay::reset(downstream);
                return;
            };
            if port.endpoints.is_empty() {
                conn.refused("the Service has no ready endpoints");
                relay::reset(downstream);
                return;
            }
            state.balancer.order(&port.endpoints)
        }
    };
    let routed = conn.service.is_some();
    let mut last_error = None;
    for target in candidates.into_iter().take(MAX_ENDPOINT_TRIES) {
        let load = routed.then(|| state.balancer.track(target));
        if routed {
            conn.upstream = Some(target);
        }
        let upstream = match connect(&mut conn, &downstream, &pod, &state, &view, src, target).await
        {
            Ok(u) => u,
            Err(e) => {
                if routed {
                    // JSON log lines carry no span fields: name the connection here.
                    warn!(pod = %pod.key, %src, %dst, endpoint = %target, error = %e, "endpoint failed; trying another");
                }
                last_error = Some(e);
                continue;
            }
        };
        match upstream {
            Upstream::Local(target_pod, source) => {
                inbound::deliver(
                    downstream,
                    conn,
                    Some(&source),
                    &target_pod,
                    target,
                    &view,
                    &state,
                )
                .await;
            }
            Upstream::Tunnel(tunnel) => {
                conn.trace_id = Some(tunnel.trace_id.clone());
                let hbone::client::Tunnel {
                    send,
                    recv,
                    early,
                    budget,
                    ..
                } = tunnel;
                conn.opened();
                conn.closed(&hbone::stream::relay(downstream, send, recv, early, &budget).await);
            }
            Upstream::Plain(mut upstream) => {
                conn.opened();
                conn.closed(&pod.relay.relay(&mut downstream, &mut upstream).await);
            }
        }
        drop(load);
        return;
    }
    if let Some(e) = last_error {
        conn.connect_failed(&e);
    }
    relay::reset(downstream);
}

/// Opens the way to `target`: in-process for a meshed pod here, an HBONE
/// tunnel for a meshed pod elsewhere, plaintext for anything outside the mesh.
async fn connect(
    conn: &mut Connection<'_>,
    downstream: &TcpStream,
    pod: &Arc<PodContext>,
    state: &ProxyState,
    view: &MeshView,
    src: SocketAddr,
    target: SocketAddr,
) -> std::io::Result<Upstream> {
    let expected = view.expected_identity(target.ip());
    if let (Some(mtls), Some(expected)) = (state.mtls.as_ref(), expected) {
        conn.source_identity = Some(pod.identity.to_string());
        conn.destination_identity = Some(expected.to_string());
        if let Some(target_pod) = state.local_pod(target.ip()) {
            // Both pods are here: hand over in-process — no TLS, no wire —
            // after the checks the destination would make for a tunnel.
            if let Err(why) = check_inbound(InboundPath::SameNode, src, target, &state.own_ports) {
                inbound::refuse_self_traffic(
                    state,
                    Listener::Outbound,
                    &target_pod,
                    src,
                    target,
                    why,
                );
                return Err(std::io::Error::new(
                    std::io::ErrorKind::PermissionDenied,
                    why.to_string(),
                ));
            }
            conn.security = Security::Local;
            return Ok(Upstream::Local(target_pod, pod.identity.clone()));
        }
        conn.security = Security::MutualTls;
        let early = hbone::stream::early_data(downstream);
        return hbone::client::open(mtls, pod, src, target, expected, &early, &state.limits)
            .await
            .map(Upstream::Tunnel)
            .map_err(std::io::Error::other);
    }
    conn.security = Security::None;
    conn.source_identity = None;
    conn.destination_identity = None;
    agent_connect(pod, None, target, state.limits.connect_timeout)
        .await
        .map(Upstream::Plain)
}
