//! The outbound listener (15001): connections an enrolled pod's apps opened,
//! redirected by connect4/6. The original destination comes from the kernel,
//! looked up by the accepted connection's 4-tuple in the pod's netns.
use std::{sync::Arc, time::Instant};

use tokio::net::{TcpListener, TcpStream};
use tracing::{Instrument, info, info_span, warn};

use super::{Connector, relay};
use crate::{datapath::Datapath, pod::PodContext};

pub async fn serve<C: Connector>(
    listener: TcpListener,
    pod: Arc<PodContext>,
    datapath: Arc<Datapath>,
    connector: Arc<C>,
) {
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                warn!(pod = %pod.key, error = %e, "outbound accept failed");
                continue;
            }
        };
        let pod = pod.clone();
        let datapath = datapath.clone();
        let connector = connector.clone();
        tokio::spawn(async move {
            let local = match stream.local_addr() {
                Ok(a) => a,
                Err(_) => return,
            };
            let Some(orig) = datapath.take_orig_dst(pod.netns_cookie, peer, local) else {
                // Without the original destination there is nowhere safe to send it.
                warn!(pod = %pod.key, %peer, "outbound connection without a recorded destination; refused");
                relay::reset(stream);
                return;
            };
            let span = info_span!("outbound", pod = %pod.key, src = %peer, dst = %orig);
            handle(stream, orig, pod, connector).instrument(span).await;
        });
    }
}

async fn handle<C: Connector>(
    mut downstream: TcpStream,
    dst: std::net::SocketAddr,
    pod: Arc<PodContext>,
    connector: Arc<C>,
) {
    let started = Instant::now();
    let _ = downstream.set_nodelay(true);
    let mut upstream = match connector.connect(&pod, dst).await {
        Ok(s) => s,
        Err(e) => {
            info!(direction = "outbound", pod = %pod.key, dst = %dst, result = "connect_failed", error = %e, "connection closed");
            relay::reset(downstream);
            return;
        }
    };
    let result = C::relay(pod.relay, &mut downstream, &mut upstream).await;
    let t = result.as_ref().copied().unwrap_or_default();
    info!(
        direction = "outbound",
        pod = %pod.key,
        dst = %dst,
        bytes_sent = t.downstream_to_upstream,
        bytes_received = t.upstream_to_downstream,
        duration_ms = started.elapsed().as_millis() as u64,
        result = if result.is_ok() { "ok" } else { "reset" },
        "connection closed"
    );
}
