//! The one "connection closed" line per proxied connection, in the same
//! shape for both directions. Byte counts are from the pod's point of view.
use std::{io, net::SocketAddr, time::Instant};

use tracing::info;

use super::relay::Transferred;

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

/// A connection being proxied, as its log line will describe it.
pub struct Connection<'a> {
    pub direction: Direction,
    pub pod: &'a str,
    pub src: SocketAddr,
    pub dst: SocketAddr,
    pub started: Instant,
}

impl Connection<'_> {
    pub fn connect_failed(&self, error: &io::Error) {
        info!(
            direction = self.direction.as_str(),
            pod = self.pod,
            src = %self.src,
            dst = %self.dst,
            result = "connect_failed",
            error = %error,
            "connection closed"
        );
    }

    pub fn closed(&self, result: &io::Result<Transferred>) {
        let t = result.as_ref().copied().unwrap_or_default();
        let (sent, received) = match self.direction {
            Direction::Outbound => (t.downstream_to_upstream, t.upstream_to_downstream),
            Direction::Inbound => (t.upstream_to_downstream, t.downstream_to_upstream),
        };
        info!(
            direction = self.direction.as_str(),
            pod = self.pod,
            src = %self.src,
            dst = %self.dst,
            bytes_sent = sent,
            bytes_received = received,
            duration_ms = self.started.elapsed().as_millis() as u64,
            result = if result.is_ok() { "ok" } else { "reset" },
            "connection closed"
        );
    }
}
