//! Reading the kernel's flow records: each connection of an enrolled pod is
//! announced when it opens and again, with its counts, when it closes. The
//! records feed the flow metrics, and each closed one is logged at debug.
use std::{
    net::{IpAddr, Ipv6Addr, SocketAddr},
    sync::Arc,
    time::Duration,
};

use aya::maps::{MapData, RingBuf};
use mesh_common::FlowRecord;
use mesh_telemetry::{
    flows::{FlowCounts, FlowLabels},
    labels::WorkloadLabels,
};
use tokio::io::unix::AsyncFd;
use tracing::{debug, warn};

use crate::{pod::PodContext, proxy::state::ProxyState};

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

pub async fn run(ring: RingBuf<MapData>, state: Arc<ProxyState>) {
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
                record(&rec, &state);
            }
        }
        guard.clear_ready();
    }
}

/// The record's series: the enrolled pod on one side, whoever the view
/// says owns the remote address on the other.
fn labels(rec: &FlowRecord, pod: Option<&PodContext>, state: &ProxyState) -> FlowLabels {
    let local = pod.map_or_else(WorkloadLabels::unknown, |p| {
        WorkloadLabels::of(&p.name, &p.namespace, &p.labels)
    });
    let remote_ip = addr(rec.remote_ip, 0).ip();
    let remote = state
        .view()
        .workload(remote_ip)
        .map_or_else(WorkloadLabels::unknown, |w| WorkloadLabels::of_workload(w));
    if rec.active == 1 {
        FlowLabels::new(&local, &remote, rec.remote_port, true)
    } else {
        FlowLabels::new(&remote, &local, rec.local_port, false)
    }
}

fn record(rec: &FlowRecord, state: &ProxyState) {
    let pod = state.local.by_cookie(rec.netns);
    let labels = labels(rec, pod.as_deref(), state);
    let flows = &state.telemetry.flows;
    if rec.end_ns == 0 {
        flows.opened(&labels);
        return;
    }
    flows.closed(
        &labels,
        &FlowCounts {
            bytes_sent: rec.bytes_sent,
            bytes_received: rec.bytes_received,
            segments_sent: u64::from(rec.segs_out),
            segments_received: u64::from(rec.segs_in),
            retransmits: u64::from(rec.total_retrans),
            srtt: Duration::from_micros(u64::from(rec.srtt_us)),
        },
    );
    debug!(
        target: "mesh::flow",
        pod = pod.as_ref().map(|p| p.key.as_str()).unwrap_or("?"),
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
