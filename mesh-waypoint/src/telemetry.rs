//! What the waypoint tells: Istio's request families
//! (`mesh_telemetry::request`, reporter `waypoint`) and TCP families for
//! relayed streams, the access log, spans to an OTLP collector when one is
//! set, and its own counters that Istio has no family for (refusals before
//! any request, readiness). One registry, served at the admin `/metrics`.
use std::{sync::Arc, time::SystemTime};

use mesh_telemetry::{
    otlp::{ExportTask, Exporter, ExporterConfig, OtlpError},
    request::{RequestMetrics, RequestRecord, access_log_fields},
    tcp::{TcpLabels, TcpMetrics},
};
use prometheus_client::{
    encoding::{EncodeLabelSet, text::encode},
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};

use crate::{
    access::{self, AccessLog},
    body::Unkept,
    mirror, retry,
    spans::RequestTrace,
};

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct ReasonLabels {
    reason: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct PolicyLabels {
    policy: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct OutcomeLabels {
    outcome: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct AuthzLabels {
    policy: String,
    action: &'static str,
    dry_run: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct ServiceLabels {
    service: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct OverflowLabels {
    service: String,
    limit: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct EndpointLabels {
    service: String,
    endpoint: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct UriLabels {
    uri: String,
}

/// Why the waypoint refused a connection or a stream before any request
/// in it could be read (so no request record counts it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Over the connection cap.
    ConnectionLimit,
    /// Refused by the HBONE server (`mesh_hbone::server::Refused`).
    Hbone(&'static str),
}

impl Refusal {
    pub fn label(self) -> &'static str {
        match self {
            Refusal::ConnectionLimit => "connection_limit",
            Refusal::Hbone(why) => why,
        }
    }
}

pub struct Telemetry {
    registry: Registry,
    requests: RequestMetrics,
    tcp: TcpMetrics,
    refused: Family<ReasonLabels, Counter>,
    unkept: Family<ReasonLabels, Counter>,
    retries: Family<ReasonLabels, Counter>,
    budget_exhausted: Family<ServiceLabels, Counter>,
    overflow: Family<OverflowLabels, Counter>,
    ejections: Family<EndpointLabels, Counter>,
    mirrors: Family<OutcomeLabels, Counter>,
    rate_limited: Family<PolicyLabels, Counter>,
    jwks_fetch_failures: Family<UriLabels, Counter>,
    authz_denied: Family<AuthzLabels, Counter>,
    ready: Gauge,
    access: Arc<dyn AccessLog>,
    spans: Option<Exporter>,
}

impl Telemetry {
    /// The registry with every family, the access log to `access`, and
    /// with `otlp` an exporter whose task the caller runs (and supervises).
    pub fn new(
        access: Arc<dyn AccessLog>,
        otlp: Option<ExporterConfig>,
    ) -> Result<(Self, Option<ExportTask>), OtlpError> {
        let mut registry = Registry::default();
        let requests = RequestMetrics::new(&mut registry);
        let tcp = TcpMetrics::default();
        tcp.register(&mut registry);
        let (spans, task) = match otlp {
            Some(config) => {
                let (exporter, task) = Exporter::new(config, &mut registry)?;
                (Some(exporter), Some(task))
            }
            None => (None, None),
        };
        let own = registry.sub_registry_with_prefix("mesh_waypoint");
        let refused = Family::<ReasonLabels, Counter>::default();
        own.register(
            "refused",
            "HBONE connections and streams refused before a request was read, by reason",
            refused.clone(),
        );
        let unkept = Family::<ReasonLabels, Counter>::default();
        own.register(
            "unreplayable_requests",
            "Requests whose route rule retries or mirrors them but whose body was not kept whole (over 64 KiB, or not in time): sent once, with no retry and no mirror, by reason",
            unkept.clone(),
        );
        let retries = Family::<ReasonLabels, Counter>::default();
        own.register(
            "retries",
            "Requests sent again, by what the attempt before met (status, connect_failure, reset, timeout)",
            retries.clone(),
        );
        let budget_exhausted = Family::<ServiceLabels, Counter>::default();
        own.register(
            "retry_budget_exhausted",
            "Retries a route rule asked for but not made: the destination Service's retry budget (20 % of its requests plus 10 per second, over 10 s) was spent, by Service (<namespace>/<name>)",
            budget_exhausted.clone(),
        );
        let overflow = Family::<OverflowLabels, Counter>::default();
        own.register(
            "upstream_overflow",
            "Requests answered 503 (UO), and retries not made (URX), for being over a DestinationRule's connection pool limit, by Service (<namespace>/<name>) and limit (http2_max_requests, http1_max_pending_requests, max_connections_wait, max_retries)",
            overflow.clone(),
        );
        let ejections = Family::<EndpointLabels, Counter>::default();
        own.register(
            "endpoint_ejections",
            "Endpoints ejected by a DestinationRule's outlier detection, by Service (<namespace>/<name>) and endpoint (ip:port)",
            ejections.clone(),
        );
        let mirrors = Family::<OutcomeLabels, Counter>::default();
        own.register(
            "mirrored_requests",
            "Copies of requests for a route's RequestMirror, by outcome (answered, failed, overflow: over the in-flight bound, unresolved: no usable Service or endpoint)",
            mirrors.clone(),
        );
        let rate_limited = Family::<PolicyLabels, Counter>::default();
        own.register(
            "rate_limited_requests",
            "Requests answered 429 (RL) for being over an HTTPLocalRateLimitPolicy's limit, by policy (<namespace>/<name>)",
            rate_limited.clone(),
        );
        let authz_denied = Family::<AuthzLabels, Counter>::default();
        own.register(
            "authorization_denied_requests",
            "Requests an AuthorizationPolicy at the waypoint denied (403, RBAC), by policy (<namespace>/<name>, - when ALLOW policies exist and none matched), action (DENY, ALLOW, CUSTOM) and dry_run (true: a dry-run policy would have denied it, and did not)",
            authz_denied.clone(),
        );
        let jwks_fetch_failures = Family::<UriLabels, Counter>::default();
        own.register(
            "jwks_fetch_failures",
            "Fetches of a RequestAuthentication's jwksUri that failed (the last good keys stay in use), by URI",
            jwks_fetch_failures.clone(),
        );
        let ready = Gauge::default();
        own.register(
            "ready",
            "1 once the certificate is issued and discovery has synced, 0 while draining",
            ready.clone(),
        );
        Ok((
            Self {
                registry,
                requests,
                tcp,
                refused,
                unkept,
                retries,
                budget_exhausted,
                overflow,
                ejections,
                mirrors,
                rate_limited,
                jwks_fetch_failures,
                authz_denied,
                ready,
                access,
                spans,
            },
            task,
        ))
    }

    /// A finished request: counted, logged, and its spans exported when
    /// its trace is sampled and a collector is set.
    pub fn request(&self, rec: &RequestRecord, trace: Option<&RequestTrace>) {
        self.requests.record(rec);
        if self.access.enabled() {
            let line = access::stamped(SystemTime::now(), "request", &access_log_fields(rec));
            self.access.write(&line);
        }
        if let (Some(exporter), Some(trace)) = (&self.spans, trace)
            && trace.server.is_sampled()
        {
            for span in trace.spans(rec) {
                exporter.send(span);
            }
        }
    }

    /// A relayed TCP stream reached its endpoint.
    pub fn tcp_opened(&self, labels: &TcpLabels) {
        self.tcp.opened(labels);
    }

    /// A relayed TCP stream ended (or never reached an endpoint): Istio's
    /// TCP families and its access line.
    pub fn tcp_closed(&self, labels: &TcpLabels, end: &access::TcpStreamEnd<'_>) {
        self.tcp.closed(labels, end.received, end.sent);
        if self.access.enabled() {
            let fields = access::TcpLine::new(end);
            let line = access::stamped(SystemTime::now(), "connection closed", &fields);
            self.access.write(&line);
        }
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

    /// A request that its rule would retry or mirror went once, its body
    /// not kept.
    pub fn unreplayable(&self, why: Unkept) {
        self.unkept
            .get_or_create(&ReasonLabels {
                reason: why.label(),
            })
            .inc();
    }

    /// A request is sent again after `after`.
    /// A request refused for being over `policy`'s limit.
    pub fn rate_limited(&self, policy: &str) {
        self.rate_limited
            .get_or_create(&PolicyLabels {
                policy: policy.to_owned(),
            })
            .inc();
    }

    /// A request an AuthorizationPolicy denied (or, `dry_run`, would have).
    pub fn authorization_denied(&self, policy: &str, action: &'static str, dry_run: bool) {
        self.authz_denied
            .get_or_create(&AuthzLabels {
                policy: policy.to_owned(),
                action,
                dry_run: if dry_run { "true" } else { "false" },
            })
            .inc();
    }

    /// A fetch of the JWKS at `uri` failed.
    pub fn jwks_fetch_failed(&self, uri: &str) {
        self.jwks_fetch_failures
            .get_or_create(&UriLabels {
                uri: uri.to_owned(),
            })
            .inc();
    }

    pub fn retried(&self, after: retry::Outcome) {
        self.retries
            .get_or_create(&ReasonLabels {
                reason: after.label(),
            })
            .inc();
    }

    /// A request or retry over a DestinationRule's pool limit.
    pub fn upstream_overflow(&self, service: &str, limit: &'static str) {
        self.overflow
            .get_or_create(&OverflowLabels {
                service: service.to_owned(),
                limit,
            })
            .inc();
    }

    /// An endpoint ejected by outlier detection.
    pub fn endpoint_ejected(&self, service: &str, endpoint: std::net::SocketAddr) {
        self.ejections
            .get_or_create(&EndpointLabels {
                service: service.to_owned(),
                endpoint: endpoint.to_string(),
            })
            .inc();
    }

    /// A retry of a request to `service` not made: its budget was spent.
    pub fn retry_budget_exhausted(&self, service: &str) {
        self.budget_exhausted
            .get_or_create(&ServiceLabels {
                service: service.to_owned(),
            })
            .inc();
    }

    /// A mirrored copy ended (or was not sent).
    pub fn mirrored(&self, outcome: mirror::Outcome) {
        self.mirrors
            .get_or_create(&OutcomeLabels {
                outcome: outcome.label(),
            })
            .inc();
    }

    pub fn set_ready(&self, ready: bool) {
        self.ready.set(i64::from(ready));
    }

    pub fn is_ready(&self) -> bool {
        self.ready.get() == 1
    }

    /// Whether spans go to a collector.
    pub fn exports_spans(&self) -> bool {
        self.spans.is_some()
    }

    /// The Prometheus text exposition.
    pub fn encode(&self) -> Result<String, std::fmt::Error> {
        let mut out = String::new();
        encode(&mut out, &self.registry)?;
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use http::{Method, StatusCode};
    use mesh_telemetry::{
        connection::Security,
        request::{Party, Protocol, Reporter, ResponseFlag},
    };

    use super::*;

    #[derive(Default)]
    struct Lines(Mutex<Vec<String>>);

    impl AccessLog for Lines {
        fn enabled(&self) -> bool {
            true
        }
        fn write(&self, line: &str) {
            self.0.lock().unwrap().push(line.to_owned());
        }
    }

    #[test]
    fn a_request_is_counted_in_istios_family_and_logged_once() {
        let lines = Arc::new(Lines::default());
        let (t, task) = Telemetry::new(lines.clone(), None).unwrap();
        assert!(task.is_none() && !t.exports_spans());
        let rec = RequestRecord {
            reporter: Reporter::Waypoint,
            started: SystemTime::now(),
            duration: Default::default(),
            method: Method::GET,
            authority: "web".into(),
            path: "/".into(),
            protocol: Protocol::Http1,
            response_code: Some(StatusCode::SERVICE_UNAVAILABLE),
            grpc_status: None,
            request_bytes: 0,
            response_bytes: 0,
            downstream: None,
            upstream: None,
            source: Party::default(),
            destination: Party::default(),
            service: None,
            route: None,
            route_rule: None,
            attempts: 0,
            response_flags: ResponseFlag::NoHealthyUpstream.into(),
            security: Security::MutualTls,
            trace_id: None,
        };
        t.request(&rec, None);
        t.refused(Refusal::ConnectionLimit);
        t.unreplayable(Unkept::TooLarge);
        t.retried(retry::Outcome::Status(StatusCode::SERVICE_UNAVAILABLE));
        t.retried(retry::Outcome::Reset);
        t.retry_budget_exhausted("shop/web");
        t.mirrored(mirror::Outcome::Overflow);
        t.set_ready(true);
        let text = t.encode().unwrap();
        assert!(
            text.lines().any(|l| l.starts_with("istio_requests_total{")
                && l.contains("reporter=\"waypoint\"")
                && l.contains("response_code=\"503\"")
                && l.contains("response_flags=\"UH\"")
                && l.ends_with(" 1")),
            "{text}"
        );
        assert!(text.contains("mesh_waypoint_refused_total{reason=\"connection_limit\"} 1"));
        assert!(text.contains("mesh_waypoint_ready 1"));
        assert!(
            text.contains(
                "mesh_waypoint_unreplayable_requests_total{reason=\"body_over_limit\"} 1"
            )
        );
        assert!(text.contains("mesh_waypoint_retries_total{reason=\"status\"} 1"));
        assert!(text.contains("mesh_waypoint_retries_total{reason=\"reset\"} 1"));
        assert!(text.contains("mesh_waypoint_mirrored_requests_total{outcome=\"overflow\"} 1"));
        assert!(
            text.contains("mesh_waypoint_retry_budget_exhausted_total{service=\"shop/web\"} 1")
        );
        assert!(!text.contains("mesh_waypoint_requests"), "{text}");
        let lines = lines.0.lock().unwrap();
        assert_eq!(lines.len(), 1);
        let v: serde_json::Value = serde_json::from_str(&lines[0]).unwrap();
        assert_eq!(v["target"], "access");
        assert_eq!(v["status"], 503);
        assert_eq!(v["response_flags"], "UH");
    }

    #[test]
    fn a_request_line_is_the_stamp_then_the_records_fields_in_one_object() {
        let lines = Arc::new(Lines::default());
        let (t, _) = Telemetry::new(lines.clone(), None).unwrap();
        let rec = RequestRecord {
            reporter: Reporter::Waypoint,
            started: SystemTime::UNIX_EPOCH + std::time::Duration::from_millis(1_700_000_000_123),
            duration: std::time::Duration::from_micros(2_500),
            method: Method::POST,
            authority: "web\"x".into(),
            path: "/a?b=1".into(),
            protocol: Protocol::Http1,
            response_code: Some(StatusCode::OK),
            grpc_status: None,
            request_bytes: 1024,
            response_bytes: 2048,
            downstream: Some("10.0.0.1:4000".parse().unwrap()),
            upstream: Some("10.0.0.2:8080".parse().unwrap()),
            source: Party {
                workload: None,
                principal: Some("spiffe://td/ns/a/sa/b".into()),
                cluster: None,
            },
            destination: Party::default(),
            service: None,
            route: Some("default".into()),
            route_rule: None,
            attempts: 1,
            response_flags: ResponseFlag::UpstreamRemoteReset.into(),
            security: Security::MutualTls,
            trace_id: None,
        };
        t.request(&rec, None);
        let lines = lines.0.lock().unwrap();
        let line = &lines[0];
        let (stamp, fields) = line.split_once(",\"start_time\"").unwrap();
        assert!(
            stamp.starts_with(
                r#"{"level":"INFO","message":"request","target":"access","timestamp":""#
            ),
            "{line}"
        );
        assert_eq!(
            fields,
            concat!(
                r#":"2023-11-14T22:13:20.123Z","reporter":"waypoint","method":"POST","#,
                r#""authority":"web\"x","path":"/a?b=1","protocol":"http/1.1","status":200,"#,
                r#""grpc_status":null,"response_flags":"UR","duration_ms":2,"#,
                r#""bytes_received":1024,"bytes_sent":2048,"downstream":"10.0.0.1:4000","#,
                r#""upstream":"10.0.0.2:8080","attempts":1,"route":"default","route_rule":null,"#,
                r#""source_principal":"spiffe://td/ns/a/sa/b","source_workload":null,"#,
                r#""destination_service":null,"destination_workload":null,"#,
                r#""destination_principal":null,"connection_security":"mutual_tls","trace_id":null}"#,
            )
        );
    }
}
