//! The agent's own state: the summary `mesh status` shows (served as JSON)
//! and the same facts as Prometheus gauges, computed at scrape time from
//! the view, the certificates and the last datapath reading rather than
//! kept twice.
mod sampler;

use std::{
    path::PathBuf,
    sync::{Arc, RwLock, Weak},
    time::{SystemTime, UNIX_EPOCH},
};

use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeMetric},
    metrics::{MetricType, counter::ConstCounter, gauge::ConstGauge},
};

use self::sampler::DatapathSampler;
pub use self::sampler::{DatapathSample, SampleJson};
use crate::proxy::state::ProxyState;

/// Pods not enrolled named one by one in `mesh status`; the rest counted.
const MAX_NAMED_PENDING: usize = 10;

pub const VERSION: &str = env!("CARGO_PKG_VERSION");

pub use mesh_telemetry::status::AgentStatus;

/// Where the status comes from; owned by the node.
pub struct NodeHealth {
    pub node: String,
    pub discovery: String,
    pub cgroup_root: PathBuf,
    pub state: Arc<ProxyState>,
    /// Pods that should be enrolled and are not, each with its reason.
    pending: RwLock<Vec<String>>,
    sampler: Arc<DatapathSampler>,
}

fn unix_seconds(t: SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => d.as_secs() as i64,
        Err(e) => -(e.duration().as_secs() as i64),
    }
}

impl NodeHealth {
    pub fn new(
        node: String,
        discovery: String,
        cgroup_root: PathBuf,
        state: Arc<ProxyState>,
    ) -> Arc<Self> {
        // Weak: the thread must not keep the datapath (and its maps) alive.
        let datapath = Arc::downgrade(&state.datapath);
        let root = cgroup_root.clone();
        let sampler = DatapathSampler::start(sampler::INTERVAL, sampler::MIN_GAP, move || {
            Some(datapath.upgrade()?.info(&root))
        });
        let health = Arc::new(Self {
            node,
            discovery,
            cgroup_root,
            state,
            pending: Default::default(),
            sampler,
        });
        health
            .state
            .telemetry
            .add_collector(Box::new(HealthCollector(Arc::downgrade(&health))));
        health
    }

    /// Called after every reconcile, when pods' map entries may have
    /// changed: the datapath reading is renewed soon, not at its next turn.
    pub fn set_pending(&self, pods: Vec<String>) {
        *self.pending.write().unwrap() = pods;
        self.sampler.refresh_soon();
    }

    /// The last datapath reading; `None` until the first, just after start.
    /// Never reads the kernel maps itself.
    pub fn datapath(&self) -> Option<Arc<DatapathSample>> {
        self.sampler.latest()
    }

    /// A datapath reading that shows every reconcile so far, waited for at
    /// most `wait`; failing that, the last one.
    pub async fn datapath_fresh(&self, wait: std::time::Duration) -> Option<Arc<DatapathSample>> {
        self.sampler.fresh(wait).await
    }

    pub fn status(&self) -> AgentStatus {
        self.status_with(self.datapath().as_deref())
    }

    /// The summary, from the datapath reading the caller holds, so that a
    /// scrape's gauges all come from one reading.
    fn status_with(&self, datapath: Option<&DatapathSample>) -> AgentStatus {
        let telemetry = &self.state.telemetry;
        let view = self.state.view();
        let certs = self
            .state
            .mtls
            .as_ref()
            .map(|m| m.certs.status())
            .unwrap_or_default();
        let now = SystemTime::now();
        let soonest = certs.iter().filter_map(|c| c.not_after).min();
        let enrolled = self.state.local.len();
        let pending_pods = self.pending.read().unwrap().clone();
        let pending = pending_pods.len();
        let ready = telemetry.is_ready();
        let mut problems = Vec::new();
        if !ready {
            problems.push("not ready yet (discovery sync or first certificates)".to_owned());
        }
        match datapath {
            Some(d) => {
                for p in d.info.programs.iter().filter(|p| !p.attached) {
                    problems.push(format!("program {} is not attached", p.name));
                }
                // The programs this agent embeds were not put in place:
                // the pinned ones (an older agent's) keep running.
                for m in &d.info.mismatched_maps {
                    problems.push(format!(
                        "{m}: the attached programs were kept, not upgraded"
                    ));
                }
            }
            None => problems.push("no datapath reading yet".to_owned()),
        }
        // Named, so an operator sees which pod and why; bounded, so a
        // broken node does not make the summary huge.
        for p in pending_pods.iter().take(MAX_NAMED_PENDING) {
            problems.push(format!("not enrolled: {p}"));
        }
        if pending > MAX_NAMED_PENDING {
            problems.push(format!(
                "and {} more pods not enrolled",
                pending - MAX_NAMED_PENDING
            ));
        }
        let ignored = view.sizes.ignored;
        if ignored > 0 {
            problems.push(format!(
                "{ignored} cluster objects ignored as unusable (the agent's log names each, with the field)"
            ));
        }
        for c in &certs {
            match c.not_after {
                None => problems.push(format!("no certificate yet for {}", c.identity)),
                Some(t) if t <= now => {
                    problems.push(format!("certificate of {} expired", c.identity))
                }
                Some(_) => {}
            }
        }
        AgentStatus {
            node: self.node.clone(),
            version: VERSION.into(),
            discovery: self.discovery.clone(),
            ready,
            healthy: problems.is_empty(),
            problems,
            programs_attached: datapath.map_or(0, |d| d.info.programs_attached),
            programs_total: datapath.map_or(0, |d| d.info.programs.len()),
            datapath_sampled_at: datapath
                .map(|d| humantime::format_rfc3339_millis(d.sampled_at).to_string()),
            enrolled_pods: enrolled,
            pending_pods: pending,
            ignored_objects: ignored,
            certificates: certs.len(),
            soonest_expiry: soonest.map(|t| humantime::format_rfc3339_seconds(t).to_string()),
            policies: view.policies.authorization.len() + view.policies.peer_authentication.len(),
            open_connections: telemetry.open_connections(),
            bytes_last_minute: telemetry.bytes_last_minute(),
        }
    }

    fn encode(&self, mut enc: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let sample = self.datapath();
        let status = self.status_with(sample.as_deref());
        let view = self.state.view();
        let gauge = |enc: &mut DescriptorEncoder, name: &str, help: &str, v: i64| {
            let g = ConstGauge::new(v);
            g.encode(enc.encode_descriptor(name, help, None, MetricType::Gauge)?)
        };
        {
            let info = prometheus_client::metrics::info::Info::new([("version", VERSION)]);
            info.encode(enc.encode_descriptor(
                "mesh_build",
                "The agent's version",
                None,
                MetricType::Info,
            )?)?;
        }
        gauge(
            &mut enc,
            "mesh_agent_ready",
            "1 once the agent serves (discovery synced, first certificates)",
            i64::from(status.ready),
        )?;
        gauge(
            &mut enc,
            "mesh_enrolled_pods",
            "Pods of this node in the mesh",
            status.enrolled_pods as i64,
        )?;
        gauge(
            &mut enc,
            "mesh_pending_pods",
            "Pods that should be enrolled but are not yet",
            status.pending_pods as i64,
        )?;
        gauge(
            &mut enc,
            "mesh_discovery_ignored_objects",
            "Cluster objects that exist but could not be used (malformed or over a bound)",
            status.ignored_objects as i64,
        )?;
        gauge(
            &mut enc,
            "mesh_flow_series",
            "Kernel flow metric series kept",
            self.state.telemetry.flows.series_count() as i64,
        )?;
        // Left out until the first reading rather than shown as zeros.
        if let Some(sample) = &sample {
            encode_datapath(&mut enc, sample)?;
        }
        if let Some(mtls) = &self.state.mtls {
            let mut m = enc.encode_descriptor(
                "mesh_certificate_expiry_timestamp_seconds",
                "When each workload certificate this node holds expires (Unix time)",
                None,
                MetricType::Gauge,
            )?;
            for c in mtls.certs.status() {
                if let Some(t) = c.not_after {
                    let id = c.identity.to_string();
                    let labels = [("identity", id.as_str())];
                    ConstGauge::new(unix_seconds(t)).encode(m.encode_family(&labels)?)?;
                }
            }
        }
        {
            let s = view.sizes;
            let mut m = enc.encode_descriptor(
                "mesh_discovery_objects",
                "Objects in the agent's discovery store, by kind",
                None,
                MetricType::Gauge,
            )?;
            for (kind, n) in [
                ("Pod", s.pods),
                ("Service", s.services),
                ("EndpointSlice", s.endpoint_slices),
                ("Namespace", s.namespaces),
                ("AuthorizationPolicy", s.authorization_policies),
                ("PeerAuthentication", s.peer_authentications),
            ] {
                let labels = [("kind", kind)];
                ConstGauge::new(n as i64).encode(m.encode_family(&labels)?)?;
            }
        }
        Ok(())
    }
}

/// The kernel side's series, all from one reading, with its time: a
/// scrape shows the maps as they were up to a few seconds earlier.
fn encode_datapath(enc: &mut DescriptorEncoder, sample: &DatapathSample) -> std::fmt::Result {
    let datapath = &sample.info;
    let gauge = |enc: &mut DescriptorEncoder, name: &str, help: &str, v: i64| {
        ConstGauge::new(v).encode(enc.encode_descriptor(name, help, None, MetricType::Gauge)?)
    };
    gauge(
        enc,
        "mesh_datapath_sample_timestamp_seconds",
        "When the datapath reading the other mesh_datapath_ series come from was taken (Unix time)",
        unix_seconds(sample.sampled_at),
    )?;
    gauge(
        enc,
        "mesh_datapath_programs_attached",
        "Kernel programs attached",
        datapath.programs_attached as i64,
    )?;
    {
        let mut m = enc.encode_descriptor(
            "mesh_datapath_map_entries",
            "Entries in each kernel map",
            None,
            MetricType::Gauge,
        )?;
        for fill in &datapath.maps {
            let labels = [("map", fill.name.as_str())];
            ConstGauge::new(fill.entries as i64).encode(m.encode_family(&labels)?)?;
        }
    }
    {
        let mut m = enc.encode_descriptor(
            "mesh_datapath_map_capacity",
            "Capacity of each kernel map",
            None,
            MetricType::Gauge,
        )?;
        for fill in &datapath.maps {
            let labels = [("map", fill.name.as_str())];
            ConstGauge::new(i64::from(fill.capacity)).encode(m.encode_family(&labels)?)?;
        }
    }
    let mut m = enc.encode_descriptor(
        "mesh_datapath_events",
        "What the kernel programs did, summed over CPUs",
        None,
        MetricType::Counter,
    )?;
    for (event, n) in &datapath.counters {
        let labels = [("event", event.as_str())];
        ConstCounter::new(*n).encode(m.encode_family(&labels)?)?;
    }
    Ok(())
}

/// Weak, so the registry (inside the proxy state) does not keep the node's
/// health alive in a cycle.
#[derive(Debug)]
struct HealthCollector(Weak<NodeHealth>);

impl std::fmt::Debug for NodeHealth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeHealth")
            .field("node", &self.node)
            .finish()
    }
}

impl Collector for HealthCollector {
    fn encode(&self, enc: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        match self.0.upgrade() {
            Some(h) => h.encode(enc),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod dashboard_tests {
    use std::collections::BTreeSet;

    /// Every metric the Grafana dashboard queries is one the agent exports,
    /// so renaming a metric cannot silently blank a panel.
    #[test]
    fn the_dashboard_queries_only_exported_metrics() {
        let dashboard: serde_json::Value =
            serde_json::from_str(include_str!("../../charts/mesh/dashboards/mesh.json")).unwrap();
        let t = mesh_telemetry::Telemetry::new(&mesh_config::TelemetrySettings::default());
        // One series in each family, so each is in the exposition.
        let w = mesh_telemetry::labels::WorkloadLabels::of("a", "default", &Default::default());
        let peer = mesh_telemetry::tcp::Peer {
            labels: w.clone(),
            principal: "p".into(),
        };
        let l = mesh_telemetry::tcp::TcpLabels::new("source", &peer, &peer, None, "-", "none");
        t.tcp.opened(&l);
        t.tcp.closed(&l, 1, 1);
        let f = mesh_telemetry::flows::FlowLabels::new(&w, &w, 80, true);
        t.flows.opened(&f);
        t.flows.closed(&f, &Default::default());
        t.decision(&mesh_policy::Verdict::Allow { policy: None }, false);
        let mut exported: BTreeSet<String> = t
            .encode()
            .unwrap()
            .lines()
            .filter_map(|l| l.strip_prefix("# TYPE "))
            .filter_map(|l| l.split_whitespace().next().map(str::to_owned))
            .collect();
        // Scrape-time gauges are named in the health collector.
        let health = include_str!("health.rs");
        for word in health.split('"') {
            if word.starts_with("mesh_") && !word.contains(' ') {
                exported.insert(word.to_owned());
            }
        }
        let mut checked = 0;
        for panel in dashboard["panels"].as_array().unwrap() {
            for target in panel["targets"].as_array().unwrap() {
                let expr = target["expr"].as_str().unwrap();
                for name in expr
                    .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                    .filter(|w| w.starts_with("mesh_") || w.starts_with("istio_"))
                {
                    let family = ["_total", "_bucket", "_count", "_sum", "_info"]
                        .iter()
                        .find_map(|s| name.strip_suffix(s))
                        .unwrap_or(name);
                    assert!(
                        exported.contains(family) || exported.contains(name),
                        "panel {}: {name} is not exported (known: {exported:?})",
                        panel["title"]
                    );
                    checked += 1;
                }
            }
        }
        assert!(checked > 20, "{checked} metric references checked");
    }
}
