//! The inbound listener (15006): plaintext connections to a pod that
//! sk_lookup handed to the agent. The accepted socket's local address is the
//! original destination; the agent delivers to the app from 127.0.0.6 inside
//! the pod's netns, which sk_lookup lets through.
use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    sync::Arc,
    time::Instant,
};

use tokio::net::{TcpListener, TcpStream};
use tracing::{info, warn};

use super::{connector::agent_connect, relay};
use crate::pod::PodContext;

pub async fn serve(listener: TcpListener, pod: Arc<PodContext>) {
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                warn!(pod = %pod.key, error = %e, "inbound accept failed");
                continue;
            }
        };
        let pod = pod.clone();
        tokio::spawn(async move {
            if let Ok(dst) = stream.local_addr() {
                handle(stream, peer, dst, pod).await;
            }
        });
    }
}

fn delivery_source(dst: SocketAddr) -> SocketAddr {
    let ip = match dst.ip() {
        IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::from(mesh_common::INBOUND_DELIVERY_IPV4)),
        IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::LOCALHOST),
    };
    SocketAddr::new(ip, 0)
}

async fn handle(
    mut downstream: TcpStream,
    peer: SocketAddr,
    dst: SocketAddr,
    pod: Arc<PodContext>,
) {
    let started = Instant::now();
    let _ = downstream.set_nodelay(true);
    let mut upstream = match agent_connect(&pod, Some(delivery_source(dst)), dst).await {
        Ok(s) => s,
        Err(e) => {
            info!(direction = "inbound", pod = %pod.key, src = %peer, dst = %dst, result = "connect_failed", error = %e, "connection closed");
            relay::reset(downstream);
            return;
        }
    };
    let result = pod.relay.relay(&mut downstream, &mut upstream).await;
    let t = result.as_ref().copied().unwrap_or_default();
    info!(
        direction = "inbound",
        pod = %pod.key,
        src = %peer,
        dst = %dst,
        bytes_received = t.downstream_to_upstream,
        bytes_sent = t.upstream_to_downstream,
        duration_ms = started.elapsed().as_millis() as u64,
        result = if result.is_ok() { "ok" } else { "reset" },
        "connection closed"
    );
}
