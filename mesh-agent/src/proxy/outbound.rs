//! The outbound listener (15001): connections an enrolled pod's apps opened,
//! redirected by connect4/6. The original destination comes from the kernel,
//! looked up by the accepted connection's 4-tuple in the pod's netns. Then:
//! a meshed pod on this node gets the in-process path, a meshed pod
//! elsewhere an HBONE tunnel, anything else plaintext passthrough.
use std::{net::SocketAddr, sync::Arc};

use tokio::net::{TcpListener, TcpStream};
use tracing::{Instrument, info_span, warn};

use super::{
    access_log::{Connection, Direction, Security},
    connector::agent_connect,
    inbound, relay,
    state::ProxyState,
};
use crate::{hbone, pod::PodContext};

pub async fn serve(listener: TcpListener, pod: Arc<PodContext>, state: Arc<ProxyState>) {
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                warn!(pod = %pod.key, error = %e, "outbound accept failed");
                continue;
            }
        };
        let pod = pod.clone();
        let state = state.clone();
        tokio::spawn(async move {
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
            let span = info_span!("outbound", pod = %pod.key, src = %peer, dst = %orig);
            handle(stream, peer, orig, pod, state)
                .instrument(span)
                .await;
        });
    }
}

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
    let mut conn = Connection::new(Direction::Outbound, &pod.key, src, dst, Security::None);
    let view = state.view();
    let expected = view.expected_identity(dst.ip());
    if let (Some(mtls), Some(expected)) = (state.mtls.as_ref(), expected) {
        conn.source_identity = Some(pod.identity.to_string());
        conn.destination_identity = Some(expected.to_string());
        if let Some(target) = state.local_pod(dst.ip()) {
            // Both pods are here: hand over in-process — no TLS, no wire —
            // after the check the destination would make for a tunnel.
            conn.security = Security::Local;
            inbound::deliver(
                downstream,
                conn,
                Some(&pod.identity),
                &target,
                &view,
                pod.relay,
            )
            .await;
            return;
        }
        conn.security = Security::MutualTls;
        let tunnel = match hbone::client::open(mtls, &pod, src, dst, expected).await {
            Ok(t) => t,
            Err(e) => {
                conn.connect_failed(&e);
                relay::reset(downstream);
                return;
            }
        };
        conn.trace_id = Some(tunnel.trace_id.clone());
        let hbone::client::Tunnel { send, recv, .. } = tunnel;
        conn.closed(&hbone::stream::relay(downstream, send, recv).await);
        return;
    }
    let mut upstream = match agent_connect(&pod, None, dst).await {
        Ok(s) => s,
        Err(e) => {
            conn.connect_failed(&e);
            relay::reset(downstream);
            return;
        }
    };
    conn.closed(&pod.relay.relay(&mut downstream, &mut upstream).await);
}
