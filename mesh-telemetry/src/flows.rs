//! Kernel flow metrics: the sock_ops records of enrolled pods' connections,
//! summed per (source workload, destination workload, destination port,
//! direction). The number of series is capped; records past the cap are
//! counted, not kept, and series idle for long are dropped so pod churn
//! cannot fill the cap for good.
use std::{
    collections::HashMap,
    sync::Mutex,
    time::{Duration, Instant},
};

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{
        counter::Counter,
        family::{Family, MetricConstructor},
        histogram::{Histogram, exponential_buckets},
    },
    registry::Registry,
};
use serde::Serialize;

use super::labels::WorkloadLabels;

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet, Serialize)]
pub struct FlowLabels {
    pub source_workload: String,
    pub source_workload_namespace: String,
    pub destination_workload: String,
    pub destination_workload_namespace: String,
    pub destination_port: u16,
    /// `outbound`: the enrolled pod's side opened it; `inbound`: it accepted it.
    pub direction: &'static str,
}

impl FlowLabels {
    pub fn new(
        source: &WorkloadLabels,
        destination: &WorkloadLabels,
        port: u16,
        outbound: bool,
    ) -> Self {
        Self {
            source_workload: source.workload.clone(),
            source_workload_namespace: source.namespace.clone(),
            destination_workload: destination.workload.clone(),
            destination_workload_namespace: destination.namespace.clone(),
            destination_port: port,
            direction: if outbound { "outbound" } else { "inbound" },
        }
    }
}

/// One closed connection's counts, from the pod socket's point of view.
#[derive(Debug, Clone, Copy, Default)]
pub struct FlowCounts {
    pub bytes_sent: u64,
    pub bytes_received: u64,
    pub segments_sent: u64,
    pub segments_received: u64,
    pub retransmits: u64,
    pub srtt: Duration,
}

#[derive(Debug, Clone, Copy)]
pub struct RttBuckets;

impl MetricConstructor<Histogram> for RttBuckets {
    fn new_metric(&self) -> Histogram {
        // 25 µs (veth on one host) to ~1.6 s (across continents).
        Histogram::new(exponential_buckets(25e-6, 2.0, 17))
    }
}

/// One series as `mesh inspect` and `/flows` show it.
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq)]
pub struct FlowSeries {
    pub source_workload: String,
    pub source_workload_namespace: String,
    pub destination_workload: String,
    pub destination_workload_namespace: String,
    pub destination_port: u16,
    pub direction: String,
    pub connections_opened: u64,
    pub connections_closed: u64,
    pub bytes_sent: u64,
    pub bytes_received: u64,
    pub retransmits: u64,
    /// Mean smoothed RTT over the closed connections, in microseconds.
    pub mean_srtt_us: Option<u64>,
}

#[derive(Debug)]
pub struct FlowMetrics {
    opened: Family<FlowLabels, Counter>,
    closed: Family<FlowLabels, Counter>,
    sent: Family<FlowLabels, Counter>,
    received: Family<FlowLabels, Counter>,
    segments_sent: Family<FlowLabels, Counter>,
    segments_received: Family<FlowLabels, Counter>,
    retransmits: Family<FlowLabels, Counter>,
    srtt: Family<FlowLabels, Histogram, RttBuckets>,
    /// Sum of the RTTs (µs) per series, for the mean `mesh inspect` shows
    /// (the histogram keeps its sum to itself); not exported.
    srtt_total_us: Family<FlowLabels, Counter>,
    overflow: Counter,
    /// Every kept series and when it last changed.
    series: Mutex<HashMap<FlowLabels, Instant>>,
    limit: usize,
    idle: Duration,
}

impl FlowMetrics {
    pub fn new(limit: usize, idle: Duration) -> Self {
        Self {
            opened: Family::default(),
            closed: Family::default(),
            sent: Family::default(),
            received: Family::default(),
            segments_sent: Family::default(),
            segments_received: Family::default(),
            retransmits: Family::default(),
            srtt: Family::new_with_constructor(RttBuckets),
            srtt_total_us: Family::default(),
            overflow: Counter::default(),
            series: Mutex::default(),
            limit,
            idle,
        }
    }

    pub fn register(&self, r: &mut Registry) {
        r.register(
            "mesh_flow_connections_opened",
            "Connections of enrolled pods opened, seen by the kernel",
            self.opened.clone(),
        );
        r.register(
            "mesh_flow_connections_closed",
            "Connections of enrolled pods closed, seen by the kernel",
            self.closed.clone(),
        );
        r.register(
            "mesh_flow_sent_bytes",
            "Bytes the pod's socket sent (acknowledged by the peer)",
            self.sent.clone(),
        );
        r.register(
            "mesh_flow_received_bytes",
            "Bytes the pod's socket received",
            self.received.clone(),
        );
        r.register(
            "mesh_flow_sent_segments",
            "TCP segments the pod's socket sent",
            self.segments_sent.clone(),
        );
        r.register(
            "mesh_flow_received_segments",
            "TCP segments the pod's socket received",
            self.segments_received.clone(),
        );
        r.register(
            "mesh_flow_retransmits",
            "TCP retransmissions",
            self.retransmits.clone(),
        );
        r.register(
            "mesh_flow_srtt_seconds",
            "Smoothed round-trip time of each connection when it closed",
            self.srtt.clone(),
        );
        r.register(
            "mesh_flow_series_overflow",
            "Flow records not kept because the series limit (telemetry.flowSeriesLimit) was reached",
            self.overflow.clone(),
        );
    }

    /// Claims (or refreshes) the series; false when it is new and the cap is reached.
    fn admit(&self, labels: &FlowLabels) -> bool {
        let mut series = self.series.lock().unwrap();
        let len = series.len();
        match series.get_mut(labels) {
            Some(seen) => {
                *seen = Instant::now();
                true
            }
            None if len < self.limit => {
                series.insert(labels.clone(), Instant::now());
                true
            }
            None => {
                self.overflow.inc();
                false
            }
        }
    }

    pub fn opened(&self, labels: &FlowLabels) {
        if self.admit(labels) {
            self.opened.get_or_create(labels).inc();
        }
    }

    pub fn closed(&self, labels: &FlowLabels, c: &FlowCounts) {
        if !self.admit(labels) {
            return;
        }
        self.closed.get_or_create(labels).inc();
        self.sent.get_or_create(labels).inc_by(c.bytes_sent);
        self.received.get_or_create(labels).inc_by(c.bytes_received);
        self.segments_sent
            .get_or_create(labels)
            .inc_by(c.segments_sent);
        self.segments_received
            .get_or_create(labels)
            .inc_by(c.segments_received);
        self.retransmits.get_or_create(labels).inc_by(c.retransmits);
        self.srtt
            .get_or_create(labels)
            .observe(c.srtt.as_secs_f64());
        self.srtt_total_us
            .get_or_create(labels)
            .inc_by(c.srtt.as_micros() as u64);
    }

    /// Drops series idle longer than the configured time; returns how many.
    pub fn expire(&self) -> usize {
        let mut series = self.series.lock().unwrap();
        let stale: Vec<FlowLabels> = series
            .iter()
            .filter(|(_, seen)| seen.elapsed() > self.idle)
            .map(|(l, _)| l.clone())
            .collect();
        for l in &stale {
            series.remove(l);
            self.opened.remove(l);
            self.closed.remove(l);
            self.sent.remove(l);
            self.received.remove(l);
            self.segments_sent.remove(l);
            self.segments_received.remove(l);
            self.retransmits.remove(l);
            self.srtt.remove(l);
            self.srtt_total_us.remove(l);
        }
        stale.len()
    }

    pub fn series_count(&self) -> usize {
        self.series.lock().unwrap().len()
    }

    pub fn overflowed(&self) -> u64 {
        self.overflow.get()
    }

    /// Every kept series with its totals.
    pub fn snapshot(&self) -> Vec<FlowSeries> {
        let keys: Vec<FlowLabels> = self.series.lock().unwrap().keys().cloned().collect();
        let count =
            |f: &Family<FlowLabels, Counter>, l: &FlowLabels| f.get(l).map_or(0, |c| c.get());
        let mut out: Vec<FlowSeries> = keys
            .iter()
            .map(|l| {
                let closed = count(&self.closed, l);
                let srtt_total = count(&self.srtt_total_us, l);
                FlowSeries {
                    source_workload: l.source_workload.clone(),
                    source_workload_namespace: l.source_workload_namespace.clone(),
                    destination_workload: l.destination_workload.clone(),
                    destination_workload_namespace: l.destination_workload_namespace.clone(),
                    destination_port: l.destination_port,
                    direction: l.direction.to_owned(),
                    connections_opened: count(&self.opened, l),
                    connections_closed: closed,
                    bytes_sent: count(&self.sent, l),
                    bytes_received: count(&self.received, l),
                    retransmits: count(&self.retransmits, l),
                    mean_srtt_us: (closed > 0).then(|| srtt_total / closed),
                }
            })
            .collect();
        out.sort_by(|a, b| {
            (
                &a.source_workload_namespace,
                &a.source_workload,
                &a.destination_workload,
            )
                .cmp(&(
                    &b.source_workload_namespace,
                    &b.source_workload,
                    &b.destination_workload,
                ))
                .then(a.destination_port.cmp(&b.destination_port))
                .then(a.direction.cmp(&b.direction))
        });
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(src: &str) -> FlowLabels {
        let w = |n: &str| WorkloadLabels::of(n, "default", &Default::default());
        FlowLabels::new(&w(src), &w("server"), 8080, true)
    }

    #[test]
    fn series_past_the_limit_are_counted_not_kept() {
        let m = FlowMetrics::new(2, Duration::from_secs(60));
        for src in ["a", "b", "c", "c", "a"] {
            m.closed(
                &labels(src),
                &FlowCounts {
                    bytes_sent: 10,
                    ..Default::default()
                },
            );
        }
        assert_eq!(m.series_count(), 2);
        assert_eq!(m.overflowed(), 2);
        let snap = m.snapshot();
        let a = snap.iter().find(|s| s.source_workload == "a").unwrap();
        assert_eq!(a.bytes_sent, 20);
        assert_eq!(a.connections_closed, 2);
    }

    #[test]
    fn idle_series_are_dropped_and_make_room() {
        let m = FlowMetrics::new(1, Duration::ZERO);
        m.opened(&labels("a"));
        std::thread::sleep(Duration::from_millis(2));
        assert_eq!(m.expire(), 1);
        m.opened(&labels("b"));
        assert_eq!(m.overflowed(), 0);
        assert_eq!(m.snapshot()[0].source_workload, "b");
    }

    #[test]
    fn mean_rtt_is_over_closed_connections() {
        let m = FlowMetrics::new(10, Duration::from_secs(60));
        for us in [100, 300] {
            m.closed(
                &labels("a"),
                &FlowCounts {
                    srtt: Duration::from_micros(us),
                    ..Default::default()
                },
            );
        }
        assert_eq!(m.snapshot()[0].mean_srtt_us, Some(200));
    }
}
