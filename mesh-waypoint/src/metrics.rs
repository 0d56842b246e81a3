//! The waypoint's own counters (Prometheus text at the admin `/metrics`):
//! requests by outcome, streams by protocol, refusals by reason. Istio's
//! request metric families are made from `record::RequestRecord` values.
use prometheus_client::{
    encoding::{EncodeLabelSet, text::encode},
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};

use crate::record::{RequestRecord, flags_text};

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct RequestLabels {
    protocol: &'static str,
    response_code: String,
    response_flags: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct ProtocolLabels {
    protocol: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct ReasonLabels {
    reason: &'static str,
}

pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    streams: Family<ProtocolLabels, Counter>,
    refused: Family<ReasonLabels, Counter>,
    ready: Gauge,
}

/// Why the waypoint refused a connection or a stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The CONNECT named nothing served here (404).
    UnknownAuthority,
    /// Over the connection cap.
    ConnectionLimit,
    /// Refused by the HBONE server (`mesh_hbone::server::Refused`).
    Hbone(&'static str),
    /// A request hyper could not parse (400).
    BadRequest,
}

impl Refusal {
    pub fn label(self) -> &'static str {
        match self {
            Refusal::UnknownAuthority => "unknown_authority",
            Refusal::ConnectionLimit => "connection_limit",
            Refusal::Hbone(why) => why,
            Refusal::BadRequest => "bad_request",
        }
    }
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("mesh_waypoint");
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "requests",
            "Requests (and TCP streams) served, by protocol, response code and Envoy response flags",
            requests.clone(),
        );
        let streams = Family::<ProtocolLabels, Counter>::default();
        registry.register(
            "streams",
            "HBONE streams accepted, by the protocol they were served as",
            streams.clone(),
        );
        let refused = Family::<ReasonLabels, Counter>::default();
        registry.register(
            "refused",
            "Connections, streams and requests refused, by reason",
            refused.clone(),
        );
        let ready = Gauge::default();
        registry.register(
            "ready",
            "1 once the certificate is issued and discovery has synced",
            ready.clone(),
        );
        Self {
            registry,
            requests,
            streams,
            refused,
            ready,
        }
    }
}

impl Metrics {
    pub fn request(&self, record: &RequestRecord) {
        self.requests
            .get_or_create(&RequestLabels {
                protocol: record.protocol.as_str(),
                response_code: record.status.to_string(),
                response_flags: flags_text(&record.flags),
            })
            .inc();
    }

    pub fn stream(&self, protocol: crate::protocol::Protocol) {
        self.streams
            .get_or_create(&ProtocolLabels {
                protocol: protocol.as_str(),
            })
            .inc();
    }

    pub fn refused(&self, why: Refusal) {
        self.refused
            .get_or_create(&ReasonLabels {
                reason: why.label(),
            })
            .inc();
    }

    pub fn refusals(&self, why: Refusal) -> u64 {
        self.refused
            .get_or_create(&ReasonLabels {
                reason: why.label(),
            })
            .get()
    }

    pub fn set_ready(&self, ready: bool) {
        self.ready.set(i64::from(ready));
    }

    pub fn is_ready(&self) -> bool {
        self.ready.get() == 1
    }

    pub fn encode(&self) -> Result<String, std::fmt::Error> {
        let mut out = String::new();
        encode(&mut out, &self.registry)?;
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        protocol::Protocol,
        record::{Client, ResponseFlag},
    };

    #[test]
    fn requests_are_counted_by_code_and_flags() {
        let m = Metrics::default();
        let mut r = RequestRecord::new(Protocol::Http1, "a".into(), Client::default());
        r.status = 503;
        r.flag(ResponseFlag::NoHealthyUpstream);
        m.request(&r);
        m.refused(Refusal::BadRequest);
        m.set_ready(true);
        let text = m.encode().unwrap();
        assert!(
            text.contains(
                r#"mesh_waypoint_requests_total{protocol="http/1.1",response_code="503",response_flags="UH"} 1"#
            ),
            "{text}"
        );
        assert!(text.contains(r#"mesh_waypoint_refused_total{reason="bad_request"} 1"#));
        assert!(text.contains("mesh_waypoint_ready 1"));
        assert!(m.is_ready());
        assert_eq!(m.refusals(Refusal::BadRequest), 1);
    }
}
