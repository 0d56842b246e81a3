//! Reading the kernel's closed-flow records. Each is logged as one structured
//! line; the metrics layer aggregates the same records per workload pair.
use std::{
    net::{IpAddr, Ipv6Addr, SocketAddr},
    sync::Arc,
};

use aya::maps::{MapData, RingBuf};
use mesh_common::FlowRecord;
use tokio::io::unix::AsyncFd;
use tracing::{info, warn};

use crate::node::PodDirectory;

fn addr(ip: [u8; 16], port: u16) -> SocketAddr {
    let v6 = Ipv6Addr::from(ip);
    let ip = v6
        .to_ipv4_mapped()
        .map(IpAddr::V4)
        .unwrap_or(IpAddr::V6(v6));
    SocketAddr::new(ip, port)
}

pub fn parse(bytes: &[u8]) -> Option<FlowRecord> {
    (bytes.len() >= std::mem::size_of::<FlowRecord>())
        .then(|| unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<FlowRecord>()) })
}

pub async fn run(ring: RingBuf<MapData>, pods: Arc<PodDirectory>) {
    // SAFETY: the AsyncFd owns the ring buffer, so its fd outlives the registration.
    let mut fd = match unsafe { AsyncFd::register(ring) } {
        Ok(fd) => fd,
        Err(e) => {
            warn!(error = %e, "flow records unavailable");
            return;
        }
    };
    loop {
        let mut guard = match fd.readable_mut().await {
            Ok(g) => g,
            Err(e) => {
                warn!(error = %e, "flow reader stopped");
                return;
            }
        };
        let ring = guard.get_inner_mut();
        while let Some(item) = ring.next() {
            if let Some(rec) = parse(&item) {
                log(&rec, &pods);
            }
        }
        guard.clear_ready();
    }
}

fn log(rec: &FlowRecord, pods: &PodDirectory) {
    info!(
        target: "mesh::flow",
        pod = pods.by_cookie(rec.netns).as_deref().unwrap_or("?"),
        local = %addr(rec.local_ip, rec.local_port),
        remote = %addr(rec.remote_ip, rec.remote_port),
        active = rec.active == 1,
        bytes_sent = rec.bytes_sent,
        bytes_received = rec.bytes_received,
        segs_out = rec.segs_out,
        segs_in = rec.segs_in,
        srtt_us = rec.srtt_us,
        retransmits = rec.total_retrans,
        duration_ms = rec.end_ns.saturating_sub(rec.start_ns) / 1_000_000,
        "flow closed"
    );
}
