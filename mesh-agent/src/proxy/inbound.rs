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
use tracing::warn;

use super::{
    access_log::{Connection, Direction},
    connector::agent_connect,
    relay,
};
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

async fn handle(mut downstream: TcpStream, src: SocketAddr, dst: SocketAddr, pod: Arc<PodContext>) {
    let conn = Connection {
        direction: Direction::Inbound,
        pod: &pod.key,
        src,
        dst,
        started: Instant::now(),
    };
    let _ = downstream.set_nodelay(true);
    let mut upstream = match agent_connect(&pod, Some(delivery_source(dst)), dst).await {
        Ok(s) => s,
        Err(e) => {
            conn.connect_failed(&e);
            relay::reset(downstream);
            return;
        }
    };
    conn.closed(&pod.relay.relay(&mut downstream, &mut upstream).await);
}
