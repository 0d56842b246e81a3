//! What the agent tells about the traffic it carries and about itself:
//! Istio's TCP metrics, the kernel flow metrics, policy decisions, and the
//! agent's health, in one Prometheus registry; plus the switch for access
//! logs and the "bytes in the last minute" that `mesh status` shows.
pub mod connection;
pub mod flows;
pub mod labels;
pub mod otlp;
pub mod refusals;
pub mod request;
mod request_series;
pub mod status;
pub mod tcp;
pub mod trace;

use std::{
    collections::VecDeque,
    sync::{
        Mutex, RwLock,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use mesh_config::TelemetrySettings;
use mesh_policy::Verdict;
use prometheus_client::{
    collector::Collector,
    encoding::{EncodeLabelSet, text::encode},
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct DecisionLabels {
    /// `allow` or `deny`.
    result: &'static str,
    /// The deciding policy, `<namespace>/<name>`; empty when none decided.
    policy: String,
    /// `enforce`, or `dry_run` for what dry-run policies would have decided
    /// where it differs.
    mode: &'static str,
}

pub struct Telemetry {
    registry: RwLock<Registry>,
    pub tcp: tcp::TcpMetrics,
    pub flows: flows::FlowMetrics,
    pub refusals: refusals::RefusalMetrics,
    decisions: Family<DecisionLabels, Counter>,
    open_connections: Gauge,
    access_log: bool,
    ready: AtomicBool,
    bytes: ByteWindow,
}

impl Telemetry {
    pub fn new(settings: &TelemetrySettings) -> Self {
        let mut registry = Registry::default();
        let tcp = tcp::TcpMetrics::default();
        tcp.register(&mut registry);
        let flows = flows::FlowMetrics::new(settings.flow_series_limit, settings.flow_series_idle);
        flows.register(&mut registry);
        let refusals = refusals::RefusalMetrics::default();
        refusals.register(&mut registry);
        let decisions = Family::<DecisionLabels, Counter>::default();
        registry.register(
            "mesh_policy_decisions",
            "Authorization decisions at this node's destinations",
            decisions.clone(),
        );
        let open_connections = Gauge::default();
        registry.register(
            "mesh_proxy_open_connections",
            "Connections the agent is proxying now",
            open_connections.clone(),
        );
        Self {
            registry: RwLock::new(registry),
            tcp,
            flows,
            refusals,
            decisions,
            open_connections,
            access_log: settings.access_log,
            ready: AtomicBool::new(false),
            bytes: ByteWindow::default(),
        }
    }

    /// Adds metrics computed at scrape time (the agent's health).
    pub fn add_collector(&self, c: Box<dyn Collector>) {
        self.registry.write().unwrap().register_collector(c);
    }

    /// The Prometheus text exposition of everything registered.
    pub fn encode(&self) -> Result<String, std::fmt::Error> {
        let mut out = String::new();
        encode(&mut out, &self.registry.read().unwrap())?;
        Ok(out)
    }

    pub fn access_log(&self) -> bool {
        self.access_log
    }

    pub fn decision(&self, verdict: &Verdict, dry_run: bool) {
        let (result, policy) = match verdict {
            Verdict::Allow { policy } => ("allow", policy),
            Verdict::Deny { policy } => ("deny", policy),
        };
        self.decisions
            .get_or_create(&DecisionLabels {
                result,
                policy: policy.clone().unwrap_or_default(),
                mode: if dry_run { "dry_run" } else { "enforce" },
            })
            .inc();
    }

    pub fn connection_started(&self) {
        self.open_connections.inc();
    }

    pub fn connection_ended(&self, bytes: u64) {
        self.open_connections.dec();
        self.bytes.add(bytes);
    }

    pub fn open_connections(&self) -> i64 {
        self.open_connections.get()
    }

    pub fn set_ready(&self) {
        self.ready.store(true, Ordering::Relaxed);
    }

    /// Readiness off at once when the agent starts to drain.
    pub fn set_not_ready(&self) {
        self.ready.store(false, Ordering::Relaxed);
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed)
    }

    /// Takes a sample for `bytes_last_minute`; call every few seconds.
    pub fn sample(&self) {
        self.bytes.sample(Instant::now());
    }

    /// Bytes of the connections that closed within about the last minute.
    pub fn bytes_last_minute(&self) -> u64 {
        self.bytes.since(Instant::now(), Duration::from_secs(60))
    }
}

/// A running byte total and samples of it, for "bytes in the last minute".
#[derive(Debug, Default)]
struct ByteWindow {
    total: AtomicU64,
    samples: Mutex<VecDeque<(Instant, u64)>>,
}

/// Samples older than this are never needed.
const WINDOW_KEEP: Duration = Duration::from_secs(90);

impl ByteWindow {
    fn add(&self, n: u64) {
        self.total.fetch_add(n, Ordering::Relaxed);
    }

    fn sample(&self, now: Instant) {
        let total = self.total.load(Ordering::Relaxed);
        let mut s = self.samples.lock().unwrap();
        s.push_back((now, total));
        while s
            .front()
            .is_some_and(|(t, _)| now.duration_since(*t) > WINDOW_KEEP)
        {
            s.pop_front();
        }
    }

    /// Growth of the total since the newest sample at least `window` old
    /// (or the oldest sample, early in the agent's life).
    fn since(&self, now: Instant, window: Duration) -> u64 {
        let total = self.total.load(Ordering::Relaxed);
        let s = self.samples.lock().unwrap();
        let base = s
            .iter()
            .rev()
            .find(|(t, _)| now.duration_since(*t) >= window)
            .or(s.front())
            .map_or(0, |(_, v)| *v);
        total - base.min(total)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_window_counts_only_the_last_minute() {
        let w = ByteWindow::default();
        let t0 = Instant::now();
        w.add(100);
        w.sample(t0);
        w.add(50);
        w.sample(t0 + Duration::from_secs(30));
        w.add(7);
        assert_eq!(
            w.since(t0 + Duration::from_secs(61), Duration::from_secs(60)),
            57
        );
        assert_eq!(
            w.since(t0 + Duration::from_secs(91), Duration::from_secs(60)),
            7
        );
    }

    #[test]
    fn exposition_has_istio_names() {
        let t = Telemetry::new(&TelemetrySettings::default());
        let peer = tcp::Peer {
            labels: labels::WorkloadLabels::of("a", "default", &Default::default()),
            principal: "spiffe://cluster.local/ns/default/sa/a".into(),
        };
        let l = tcp::TcpLabels::new(
            "source",
            &peer,
            &peer,
            Some("default/web"),
            "-",
            "mutual_tls",
        );
        t.tcp.opened(&l);
        t.tcp.closed(&l, 10, 20);
        t.decision(
            &Verdict::Deny {
                policy: Some("default/deny-a".into()),
            },
            false,
        );
        let text = t.encode().unwrap();
        for want in [
            "istio_tcp_connections_opened_total{",
            "istio_tcp_received_bytes_total{",
            "destination_service=\"web.default.svc.cluster.local\"",
            "mesh_policy_decisions_total{result=\"deny\",policy=\"default/deny-a\",mode=\"enforce\"} 1",
        ] {
            assert!(text.contains(want), "{want} missing from\n{text}");
        }
    }
}
