//! Same-node fast path: both pods are on this node, so the agent hands the
//! connection over in-process — no TLS, no wire — after the same policy
//! check the destination would make for a tunnel from the source identity.
use std::net::SocketAddr;

use tokio::net::TcpStream;

use super::{
    access_log::Connection, connector::agent_connect, inbound::delivery_source, relay,
    state::MeshView,
};
use crate::pod::PodContext;

pub async fn deliver(
    mut downstream: TcpStream,
    conn: Connection<'_>,
    source: &PodContext,
    target: &PodContext,
    view: &MeshView,
) {
    let dst: SocketAddr = conn.dst;
    let decision = view.policies.authorize(
        target.target(),
        &crate::policy::Connection {
            source: Some(&source.identity),
            source_ip: conn.src.ip(),
            destination_ip: dst.ip(),
            destination_port: dst.port(),
        },
    );
    if !conn.authorized(&decision) {
        relay::reset(downstream);
        return;
    }
    let mut upstream = match agent_connect(target, Some(delivery_source(dst)), dst).await {
        Ok(s) => s,
        Err(e) => {
            conn.connect_failed(&e);
            relay::reset(downstream);
            return;
        }
    };
    conn.closed(&source.relay.relay(&mut downstream, &mut upstream).await);
}
