//! What happens to each proxied connection is told once, in the same
//! shape for every path (outbound, inbound plaintext, HBONE, same-node):
//! the "connection closed" line (byte counts from the pod's point of
//! view) and Istio's TCP metrics, labelled by both ends' workloads.
use std::{io, net::SocketAddr, time::Instant};

use mesh_hbone::relay::Transferred;
use mesh_policy::Decision;
pub use mesh_telemetry::connection::{Direction, Outcome, Security};
use mesh_telemetry::{
    labels::{UNKNOWN, WorkloadLabels},
    tcp::{Peer, TcpLabels},
};
use tracing::{info, warn};

use super::state::ProxyState;
use crate::pod::PodContext;

/// A connection being proxied, as its log line will describe it.
pub struct Connection<'a> {
    pub direction: Direction,
    /// The enrolled pod on this node's side.
    pub pod: &'a PodContext,
    state: &'a ProxyState,
    /// Istio's connections_opened was counted.
    opened: bool,
    pub src: SocketAddr,
    pub dst: SocketAddr,
    pub started: Instant,
    pub security: Security,
    pub source_identity: Option<String>,
    pub destination_identity: Option<String>,
    pub trace_id: Option<String>,
    /// `<namespace>/<name>` when `dst` was a Service's virtual IP.
    pub service: Option<String>,
    /// The endpoint the connection went to, when not `dst` itself.
    pub upstream: Option<SocketAddr>,
    /// `<namespace>/<name>` of the waypoint it went through.
    pub waypoint: Option<String>,
    /// The connection's end was told (log line, metrics).
    finished: bool,
    /// Both ends and their series' labels (response flags `-`), built
    /// once when the connection opens and reused when it closes.
    ends: Option<(Peer, Peer)>,
    open_labels: Vec<TcpLabels>,
}

impl<'a> Connection<'a> {
    /// A connection starting now; identities and trace id are filled in as
    /// they become known.
    pub fn new(
        direction: Direction,
        pod: &'a PodContext,
        state: &'a ProxyState,
        src: SocketAddr,
        dst: SocketAddr,
        security: Security,
    ) -> Self {
        state.telemetry.connection_started();
        Self {
            direction,
            pod,
            state,
            opened: false,
            src,
            dst,
            started: Instant::now(),
            security,
            source_identity: None,
            destination_identity: None,
            trace_id: None,
            service: None,
            upstream: None,
            waypoint: None,
            finished: false,
            ends: None,
            open_labels: Vec::new(),
        }
    }

    /// Both ends as metric labels: this node's pod, and whoever the view
    /// says is at the other address.
    fn peers(&self) -> (Peer, Peer) {
        let local = WorkloadLabels::of(&self.pod.name, &self.pod.namespace, &self.pod.labels);
        let remote_ip = match self.direction {
            Direction::Outbound => self.upstream.unwrap_or(self.dst).ip(),
            Direction::Inbound => self.src.ip(),
        };
        let remote = self
            .state
            .view()
            .workload(remote_ip)
            .map_or_else(WorkloadLabels::unknown, |w| WorkloadLabels::of_workload(w));
        let principal = |id: &Option<String>| id.clone().unwrap_or_else(|| UNKNOWN.to_owned());
        let source = |labels| Peer {
            labels,
            principal: principal(&self.source_identity),
        };
        let destination = |labels| Peer {
            labels,
            principal: principal(&self.destination_identity),
        };
        match self.direction {
            Direction::Outbound => (source(local), destination(remote)),
            Direction::Inbound => (source(remote), destination(local)),
        }
    }

    fn reporters(&self) -> &'static [&'static str] {
        self.security.reporters(self.direction)
    }

    fn tcp_labels(
        &self,
        (source, destination): &(Peer, Peer),
        reporter: &'static str,
        flags: &'static str,
    ) -> TcpLabels {
        TcpLabels::new(
            reporter,
            source,
            destination,
            self.service.as_deref(),
            flags,
            self.security.policy_label(),
        )
    }

    /// Counts the connection as opened (once the path to the app is set up).
    pub fn opened(&mut self) {
        if self.opened {
            return;
        }
        let peers = self.peers();
        self.count_opened(&peers);
        self.ends = Some(peers);
    }

    fn count_opened(&mut self, peers: &(Peer, Peer)) {
        self.opened = true;
        self.open_labels = self
            .reporters()
            .iter()
            .map(|r| self.tcp_labels(peers, r, "-"))
            .collect();
        for labels in &self.open_labels {
            self.state.telemetry.tcp.opened(labels);
        }
    }

    fn finish(&mut self, outcome: Outcome, t: Transferred) {
        // Both ends are looked up once, for the counters and the log line.
        let peers = match self.ends.take() {
            Some(p) => p,
            None => self.peers(),
        };
        if !self.opened {
            self.count_opened(&peers);
        }
        let flags = outcome.response_flags();
        let labels = if flags == "-" {
            std::mem::take(&mut self.open_labels)
        } else {
            self.reporters()
                .iter()
                .map(|r| self.tcp_labels(&peers, r, flags))
                .collect()
        };
        for labels in &labels {
            self.state.telemetry.tcp.closed(
                labels,
                t.downstream_to_upstream,
                t.upstream_to_downstream,
            );
        }
        self.state
            .telemetry
            .connection_ended(t.downstream_to_upstream + t.upstream_to_downstream);
        self.finished = true;
        if !self.state.telemetry.access_log() {
            return;
        }
        let (sent, received) = match self.direction {
            Direction::Outbound => (t.downstream_to_upstream, t.upstream_to_downstream),
            Direction::Inbound => (t.upstream_to_downstream, t.downstream_to_upstream),
        };
        let (source, destination) = &peers;
        let workload = |p: &Peer| format!("{}/{}", p.labels.namespace, p.labels.workload);
        info!(
            target: "mesh::access",
            direction = self.direction.as_str(),
            pod = self.pod.key.as_str(),
            source_workload = workload(source),
            destination_workload = workload(destination),
            src = %self.src,
            dst = %self.dst,
            security = self.security.as_str(),
            source_identity = self.source_identity.as_deref(),
            destination_identity = self.destination_identity.as_deref(),
            trace_id = self.trace_id.as_deref(),
            destination_service = self.service.as_deref(),
            upstream = self.upstream.map(|u| u.to_string()),
            waypoint = self.waypoint.as_deref(),
            bytes_sent = sent,
            bytes_received = received,
            duration_ms = self.started.elapsed().as_millis() as u64,
            result = outcome.result(),
            error = outcome.error(),
            "connection closed"
        );
    }

    pub fn connect_failed(&mut self, error: &dyn std::fmt::Display) {
        self.finish(
            Outcome::ConnectFailed(error.to_string()),
            Transferred::default(),
        );
    }

    /// Refused before reaching the app for a reason other than policy.
    pub fn refused(&mut self, reason: &str) {
        self.finish(Outcome::Refused(reason.to_owned()), Transferred::default());
    }

    /// Logs what policy decided (and what dry-run policies would have);
    /// true when the connection may proceed.
    pub fn authorized(&mut self, decision: &Decision) -> bool {
        let telemetry = &self.state.telemetry;
        telemetry.decision(&decision.enforced, false);
        if let Some(dry) = &decision.dry_run {
            telemetry.decision(dry, true);
            warn!(
                pod = self.pod.key.as_str(),
                src = %self.src,
                dst = %self.dst,
                source_identity = self.source_identity.as_deref(),
                enforced = %decision.enforced.reason(),
                dry_run = %dry.reason(),
                "dry-run policy would decide differently"
            );
        }
        if decision.enforced.allowed() {
            return true;
        }
        self.finish(
            Outcome::Denied(decision.enforced.reason()),
            Transferred::default(),
        );
        false
    }

    pub fn closed(&mut self, result: &io::Result<Transferred>) {
        match result {
            Ok(t) => self.finish(Outcome::Ok, *t),
            Err(e) => self.finish(Outcome::Reset(e.to_string()), Transferred::default()),
        }
    }
}

impl Drop for Connection<'_> {
    /// A handler that returns without telling how the connection ended
    /// (a task cancelled mid-relay) still leaves the counts right.
    fn drop(&mut self) {
        if !self.finished {
            self.finish(Outcome::Reset("abandoned".into()), Transferred::default());
        }
    }
}
