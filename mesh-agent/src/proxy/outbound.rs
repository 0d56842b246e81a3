//! The outbound listener (15001): connections an enrolled pod's apps opened,
//! redirected by connect4/6. The original destination comes from the kernel,
//! looked up by the accepted connection's 4-tuple in the pod's netns. Where
//! it goes is `route`'s decision; this does the I/O: a Service's endpoints
//! tried in turn, each handed over in-process, tunnelled over HBONE or
//! passed through as plaintext.
use std::{io, net::SocketAddr, sync::Arc};

use mesh_discovery::model::Service;
use mesh_hbone::relay;
use mesh_identity::Identity;
use tokio::net::{TcpListener, TcpStream};
use tracing::{Instrument, debug_span, warn};

use super::{
    access_log::{Connection, Direction, Security},
    admit::Admit,
    connector::agent_connect,
    inbound,
    listeners::{self, Listener},
    route::{self, Hop, Mesh, Outbound, Route, ViaWaypoint},
    state::{Mtls, ProxyState},
};
use crate::pod::{CurrentPod, PodContext};

pub async fn serve(listener: TcpListener, current: CurrentPod, state: Arc<ProxyState>) {
    loop {
        let listeners::Accepted {
            stream,
            peer,
            place,
        } = listeners::accept(&listener, Listener::Outbound, &current.get(), &state).await;
        let pod = current.get();
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
    /// A meshed pod on this node: handed over in-process, as the
    /// destination's inbound decision says.
    Local(Arc<PodContext>, Admit),
    Tunnel(mesh_hbone::client::Tunnel),
    Plain(TcpStream),
}

async fn handle(
    mut downstream: TcpStream,
    src: SocketAddr,
    dst: SocketAddr,
    pod: Arc<PodContext>,
    state: Arc<ProxyState>,
) {
    let _ = downstream.set_nodelay(true);
    let src = route::pod_source(&pod.ips, src, dst);
    let mut conn = Connection::new(Direction::Outbound, &pod, &state, src, dst, Security::None);
    let view = state.view();
    let mesh = Mesh {
        view: &view,
        local_pod: |ip| state.local_pod(ip),
        mtls: state.mtls.as_ref(),
        own_ports: &state.own_ports,
    };
    let facts = Outbound {
        source: &pod.identity,
        src,
        dst,
    };
    // The destination itself, or a Service's endpoints: tried the same way.
    let (direct, endpoints) = match mesh.route(facts, |eps| state.balancer.order(eps)) {
        Route::Direct(hop) => (Some((dst, hop)), None),
        Route::Service { service, endpoints } => {
            conn.service = Some(service.key());
            (None, Some(endpoints))
        }
        Route::Unroutable { service, why } => {
            conn.service = Some(service.key());
            conn.refused(&why.to_string());
            relay::reset(downstream);
            return;
        }
        Route::WaypointUnusable {
            service,
            gateway,
            why,
        } => {
            conn.service = service.map(Service::key);
            conn.waypoint = Some(gateway.clone());
            warn!(pod = %pod.key, %src, %dst, waypoint = %gateway, problem = %why, "destination uses a waypoint that cannot be used; refused rather than sent around it");
            conn.refused(&format!("waypoint {gateway}: {why}"));
            relay::reset(downstream);
            return;
        }
        Route::Waypoint(via) => {
            through_waypoint(downstream, conn, &pod, &state, src, via).await;
            return;
        }
    };
    let routed = endpoints.is_some();
    let mut last_error = None;
    for (target, hop) in direct.into_iter().chain(endpoints.into_iter().flatten()) {
        let load = routed.then(|| state.balancer.track(target));
        if routed {
            conn.upstream = Some(target);
        }
        let upstream = match connect(&mut conn, &downstream, &pod, &state, src, target, hop).await {
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
            Upstream::Local(target_pod, outcome) => {
                inbound::deliver(downstream, conn, outcome, &target_pod, &state).await;
            }
            Upstream::Tunnel(tunnel) => relay_tunnel(downstream, &mut conn, tunnel).await,
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

/// Relays an app's connection through an open tunnel, and tells the
/// connection's end.
async fn relay_tunnel(
    downstream: TcpStream,
    conn: &mut Connection<'_>,
    tunnel: mesh_hbone::client::Tunnel,
) {
    conn.trace_id = Some(tunnel.trace_id.clone());
    let mesh_hbone::client::Tunnel {
        send,
        recv,
        early,
        budget,
        ..
    } = tunnel;
    conn.opened();
    conn.closed(&mesh_hbone::stream::relay(downstream, send, recv, early, &budget).await);
}

/// Tunnels the connection to one of the waypoint's pods (each tried in
/// turn, as a Service's endpoints are), asking for the original
/// destination; the waypoint balances and applies L7 rules from there.
async fn through_waypoint(
    downstream: TcpStream,
    mut conn: Connection<'_>,
    pod: &PodContext,
    state: &ProxyState,
    src: SocketAddr,
    via: ViaWaypoint<'_, Mtls>,
) {
    let ViaWaypoint {
        mtls,
        waypoint,
        service,
        authority,
        hops,
    } = via;
    conn.service = service.map(Service::key);
    conn.waypoint = Some(waypoint.gateway.key());
    conn.security = Security::MutualTls;
    conn.source_identity = Some(pod.identity.to_string());
    let early = mesh_hbone::stream::early_data(&downstream);
    let mut last_error = None;
    for (address, expected) in hops {
        let load = state.balancer.track(address);
        conn.upstream = Some(address);
        conn.destination_identity = Some(expected.to_string());
        match mtls
            .client
            .open_via(&pod.origin(), src, address, authority, expected, &early)
            .await
        {
            Ok(tunnel) => {
                relay_tunnel(downstream, &mut conn, tunnel).await;
                drop(load);
                return;
            }
            Err(e) => {
                warn!(pod = %pod.key, %src, dst = %authority, waypoint = %address, error = %e, "waypoint pod failed; trying another");
                last_error = Some(e);
            }
        }
    }
    if let Some(e) = last_error {
        conn.connect_failed(&e);
    }
    relay::reset(downstream);
}

/// Opens the way to `target` as `hop` says, and notes on the connection
/// how it crosses (identities, security).
async fn connect(
    conn: &mut Connection<'_>,
    downstream: &TcpStream,
    pod: &PodContext,
    state: &ProxyState,
    src: SocketAddr,
    target: SocketAddr,
    hop: Hop<'_, Arc<PodContext>, Mtls>,
) -> io::Result<Upstream> {
    let meshed = |conn: &mut Connection<'_>, expected: &Identity| {
        conn.source_identity = Some(pod.identity.to_string());
        conn.destination_identity = Some(expected.to_string());
    };
    match hop {
        Hop::Passthrough => {
            conn.security = Security::None;
            conn.source_identity = None;
            conn.destination_identity = None;
            agent_connect(&pod.sockets, None, target, state.limits.connect_timeout)
                .await
                .map(Upstream::Plain)
        }
        Hop::SelfTraffic {
            pod: target_pod,
            expected,
            why,
        } => {
            meshed(conn, &expected);
            inbound::refuse_self_traffic(state, Listener::Outbound, &target_pod, src, target, why);
            Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                why.to_string(),
            ))
        }
        Hop::SameNode {
            pod: target_pod,
            expected,
            admit,
        } => {
            meshed(conn, &expected);
            conn.security = Security::Local;
            Ok(Upstream::Local(target_pod, admit))
        }
        Hop::Tunnel { mtls, expected } => {
            meshed(conn, &expected);
            conn.security = Security::MutualTls;
            let early = mesh_hbone::stream::early_data(downstream);
            mtls.client
                .open(&pod.origin(), src, target, expected, &early)
                .await
                .map(Upstream::Tunnel)
                .map_err(io::Error::other)
        }
    }
}
