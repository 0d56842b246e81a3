//! The outbound listener (15001): connections an enrolled pod's apps opened,
//! redirected by connect4/6. The original destination comes from the kernel,
//! looked up by the accepted connection's 4-tuple in the pod's netns.
use std::{net::SocketAddr, sync::Arc, time::Instant};

use tokio::net::{TcpListener, TcpStream};
use tracing::{Instrument, info_span, warn};

use super::{
    Connector,
    access_log::{Connection, Direction},
    relay,
};
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
            let Some(orig) = datapath.orig_dst(pod.netns_cookie, peer, local) else {
                // Without the original destination there is nowhere safe to send it.
                warn!(pod = %pod.key, %peer, "outbound connection without a recorded destination; refused");
                relay::reset(stream);
                return;
            };
            let span = info_span!("outbound", pod = %pod.key, src = %peer, dst = %orig);
            handle(stream, peer, orig, pod, connector)
                .instrument(span)
                .await;
        });
    }
}

async fn handle<C: Connector>(
    mut downstream: TcpStream,
    src: SocketAddr,
    dst: SocketAddr,
    pod: Arc<PodContext>,
    connector: Arc<C>,
) {
    let conn = Connection {
        direction: Direction::Outbound,
        pod: &pod.key,
        src,
        dst,
        started: Instant::now(),
    };
    let _ = downstream.set_nodelay(true);
    let mut upstream = match connector.connect(&pod, dst).await {
        Ok(s) => s,
        Err(e) => {
            conn.connect_failed(&e);
            relay::reset(downstream);
            return;
        }
    };
    conn.closed(&C::relay(pod.relay, &mut downstream, &mut upstream).await);
}
