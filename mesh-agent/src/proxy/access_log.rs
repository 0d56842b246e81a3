//! The one "connection closed" line per proxied connection, in the same
//! shape for every path (outbound, inbound plaintext, HBONE, same-node).
//! Byte counts are from the pod's point of view.
use std::{io, net::SocketAddr, time::Instant};

use tracing::{info, warn};

use super::relay::Transferred;
use crate::policy::Decision;

#[derive(Debug, Clone, Copy)]
pub enum Direction {
    /// The pod opened it; downstream is the pod's app.
    Outbound,
    /// Someone connected to the pod; upstream is the pod's app.
    Inbound,
}

impl Direction {
    fn as_str(self) -> &'static str {
        match self {
            Direction::Outbound => "outbound",
            Direction::Inbound => "inbound",
        }
    }
}

/// How the connection crossed between workloads (Istio's
/// connection_security_policy, plus the same-node path).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Security {
    MutualTls,
    /// Both ends on this node: handed over in-process, never on a wire.
    Local,
    None,
}

impl Security {
    fn as_str(self) -> &'static str {
        match self {
            Security::MutualTls => "mutual_tls",
            Security::Local => "local",
            Security::None => "none",
        }
    }
}

/// A connection being proxied, as its log line will describe it.
pub struct Connection<'a> {
    pub direction: Direction,
    pub pod: &'a str,
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
}

impl<'a> Connection<'a> {
    /// A connection starting now; identities and trace id are filled in as
    /// they become known.
    pub fn new(
        direction: Direction,
        pod: &'a str,
        src: SocketAddr,
        dst: SocketAddr,
        security: Security,
    ) -> Self {
        Self {
            direction,
            pod,
            src,
            dst,
            started: Instant::now(),
            security,
            source_identity: None,
            destination_identity: None,
            trace_id: None,
            service: None,
            upstream: None,
        }
    }

    fn finish(&self, result: &str, error: Option<String>, t: Transferred) {
        let (sent, received) = match self.direction {
            Direction::Outbound => (t.downstream_to_upstream, t.upstream_to_downstream),
            Direction::Inbound => (t.upstream_to_downstream, t.downstream_to_upstream),
        };
        info!(
            direction = self.direction.as_str(),
            pod = self.pod,
            src = %self.src,
            dst = %self.dst,
            security = self.security.as_str(),
            source_identity = self.source_identity.as_deref(),
            destination_identity = self.destination_identity.as_deref(),
            trace_id = self.trace_id.as_deref(),
            destination_service = self.service.as_deref(),
            upstream = self.upstream.map(|u| u.to_string()),
            bytes_sent = sent,
            bytes_received = received,
            duration_ms = self.started.elapsed().as_millis() as u64,
            result,
            error,
            "connection closed"
        );
    }

    pub fn connect_failed(&self, error: &dyn std::fmt::Display) {
        self.finish(
            "connect_failed",
            Some(error.to_string()),
            Transferred::default(),
        );
    }

    /// Refused before reaching the app for a reason other than policy.
    pub fn refused(&self, reason: &str) {
        self.finish("refused", Some(reason.to_owned()), Transferred::default());
    }

    /// Logs what policy decided (and what dry-run policies would have);
    /// true when the connection may proceed.
    pub fn authorized(&self, decision: &Decision) -> bool {
        if let Some(dry) = &decision.dry_run {
            warn!(
                pod = self.pod,
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
            "denied",
            Some(decision.enforced.reason()),
            Transferred::default(),
        );
        false
    }

    pub fn closed(&self, result: &io::Result<Transferred>) {
        match result {
            Ok(t) => self.finish("ok", None, *t),
            Err(e) => self.finish("reset", Some(e.to_string()), Transferred::default()),
        }
    }
}
