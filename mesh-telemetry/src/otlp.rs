//! Finished spans, exported to an OpenTelemetry collector over OTLP/gRPC.
//!
//! The proxy hands each span to [`Exporter::send`], which never waits: the
//! span goes into a bounded queue, or is dropped and counted when the
//! queue is full. [`ExportTask::run`] (spawned and supervised by the
//! proxy) takes spans off the queue in batches, by count or every
//! interval, and sends each batch as one `ExportTraceServiceRequest`
//! within a deadline. A collector that is down or slow costs spans, never
//! the proxy's time. Batches that fail are counted and not retried: spans
//! are best effort, and a retry would only hold more memory while the
//! collector is away.
//!
//! The messages and the TraceService client are the published OTLP
//! definitions (`opentelemetry-proto`), so any OTLP collector reads them.
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use opentelemetry_proto::tonic::{
    collector::trace::v1::{ExportTraceServiceRequest, trace_service_client::TraceServiceClient},
    common::v1::{AnyValue, InstrumentationScope, KeyValue, any_value},
    resource::v1::Resource,
    trace::v1::{self as pb, ResourceSpans, ScopeSpans, span::SpanKind as PbKind},
};
use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family},
    registry::Registry,
};
use tokio::sync::mpsc;
use tonic::transport::{Channel, Endpoint};
use tracing::{info, warn};

/// The published OTLP messages and services, for callers (and tests)
/// that speak to a collector themselves.
pub use opentelemetry_proto::tonic as proto;

use crate::{
    request::{RequestRecord, cut},
    trace::SpanContext,
};

/// Which side of a request a span describes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpanKind {
    /// The proxy serving its client.
    Server,
    /// The proxy's request to the upstream.
    Client,
}

/// An attribute's value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AttributeValue {
    String(String),
    Int(i64),
}

/// One finished span.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Span {
    /// Its trace, id and parent.
    pub context: SpanContext,
    pub name: String,
    pub kind: SpanKind,
    pub start: SystemTime,
    pub end: SystemTime,
    pub attributes: Vec<(&'static str, AttributeValue)>,
    /// The span failed; the message says how.
    pub error: Option<String>,
}

impl Span {
    /// The span of a finished request: named `<method> <authority>`, with
    /// OpenTelemetry's HTTP attributes and the mesh's own (principals,
    /// response flags, route). An error when no response was sent, on a
    /// 5xx, and for a client span also on a 4xx (the semantic
    /// conventions' rule: a 4xx is the client's mistake, not the server's).
    pub fn for_request(rec: &RequestRecord, context: &SpanContext, kind: SpanKind) -> Self {
        let mut attributes = vec![
            ("http.request.method", string(rec.method.as_str())),
            // The query stays out: it may carry secrets, and spans are
            // kept and shown far more widely than access logs.
            (
                "url.path",
                string(rec.path.split_once('?').map_or(&rec.path, |(p, _)| p)),
            ),
            ("server.address", string(host(&rec.authority))),
            ("network.protocol.name", string(rec.protocol.as_str())),
            (
                "mesh.response_flags",
                string(&rec.response_flags.to_string()),
            ),
        ];
        if let Some(code) = rec.response_code {
            attributes.push((
                "http.response.status_code",
                AttributeValue::Int(code.as_u16().into()),
            ));
        }
        if let Some(g) = rec.grpc_status {
            attributes.push(("rpc.grpc.status_code", AttributeValue::Int(g.code().into())));
        }
        let peer = match kind {
            SpanKind::Server => rec.downstream,
            SpanKind::Client => rec.upstream,
        };
        if let Some(peer) = peer {
            attributes.push(("network.peer.address", string(&peer.ip().to_string())));
            attributes.push(("network.peer.port", AttributeValue::Int(peer.port().into())));
        }
        if let Some(p) = &rec.source.principal {
            attributes.push(("mesh.source.principal", string(p)));
        }
        if let Some(p) = &rec.destination.principal {
            attributes.push(("mesh.destination.principal", string(p)));
        }
        if let Some(route) = &rec.route {
            attributes.push(("mesh.route", string(route)));
        }
        if kind == SpanKind::Client && rec.attempts > 1 {
            attributes.push((
                "http.request.resend_count",
                AttributeValue::Int(i64::from(rec.attempts - 1)),
            ));
        }
        let failed_from = match kind {
            SpanKind::Server => 500,
            SpanKind::Client => 400,
        };
        let error = match rec.response_code {
            None => Some(format!("no response ({})", rec.response_flags)),
            Some(c) if c.as_u16() >= failed_from => {
                Some(format!("HTTP {} ({})", c.as_u16(), rec.response_flags))
            }
            Some(_) => None,
        };
        Self {
            context: context.clone(),
            name: format!("{} {}", cut(rec.method.as_str()), cut(&rec.authority)),
            kind,
            start: rec.started,
            end: rec.started + rec.duration,
            attributes,
            error,
        }
    }
}

fn string(s: &str) -> AttributeValue {
    AttributeValue::String(cut(s).to_owned())
}

/// The host of an authority: without its port, IPv6 without brackets.
fn host(authority: &str) -> &str {
    if let Some(rest) = authority.strip_prefix('[') {
        return rest.split_once(']').map_or(authority, |(h, _)| h);
    }
    match authority.rsplit_once(':') {
        Some((h, port)) if port.bytes().all(|b| b.is_ascii_digit()) => h,
        _ => authority,
    }
}

/// Where and how spans are exported.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExporterConfig {
    /// The collector, `http://host:port` (plaintext OTLP/gRPC, as an
    /// in-cluster collector listens on 4317).
    pub endpoint: http::Uri,
    /// The resource's `service.name`: for a waypoint,
    /// `<gateway name>.<namespace>`.
    pub service_name: String,
    /// Spans waiting for export; beyond this they are dropped.
    pub queue: usize,
    /// Spans per export request.
    pub batch: usize,
    /// Longest a span waits for its batch to fill.
    pub interval: Duration,
    /// Deadline for connecting and for each export request.
    pub timeout: Duration,
}

/// Why an exporter could not be set up.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OtlpError {
    #[error("OTLP collector address {0:?}: not a URI ({1}); write http://<host>:<port>")]
    Endpoint(String, String),
    #[error(
        "OTLP collector address {0:?}: only plaintext OTLP/gRPC is supported; write http://<host>:<port>"
    )]
    Scheme(String),
    #[error("OTLP exporter: {0} must be at least 1")]
    Zero(&'static str),
}

impl ExporterConfig {
    /// The default queue (2048 spans), batch (256 spans), interval (1 s)
    /// and timeout (5 s) for a collector at `endpoint`.
    pub fn new(endpoint: &str, service_name: impl Into<String>) -> Result<Self, OtlpError> {
        let uri: http::Uri = endpoint.parse().map_err(|e: http::uri::InvalidUri| {
            OtlpError::Endpoint(endpoint.into(), e.to_string())
        })?;
        if uri.scheme_str() != Some("http") || uri.host().is_none() {
            return Err(OtlpError::Scheme(endpoint.into()));
        }
        Ok(Self {
            endpoint: uri,
            service_name: service_name.into(),
            queue: 2048,
            batch: 256,
            interval: Duration::from_secs(1),
            timeout: Duration::from_secs(5),
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct ResultLabels {
    /// `exported`, `queue_full` (dropped before export) or `failed` (the
    /// collector refused, failed or did not answer in time).
    result: &'static str,
}

/// What became of the spans sent to an exporter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SpanCounts {
    pub exported: u64,
    pub queue_full: u64,
    pub failed: u64,
}

#[derive(Debug, Clone)]
struct Counters {
    exported: Counter,
    queue_full: Counter,
    failed: Counter,
}

impl Counters {
    fn new(registry: &mut Registry) -> Self {
        let family = Family::<ResultLabels, Counter>::default();
        registry.register(
            "mesh_trace_spans",
            "Spans given to the OTLP exporter, by what became of them",
            family.clone(),
        );
        let get = |result| family.get_or_create(&ResultLabels { result }).clone();
        Self {
            exported: get("exported"),
            queue_full: get("queue_full"),
            failed: get("failed"),
        }
    }

    fn snapshot(&self) -> SpanCounts {
        SpanCounts {
            exported: self.exported.get(),
            queue_full: self.queue_full.get(),
            failed: self.failed.get(),
        }
    }
}

/// The proxy's handle: cheap to clone, [`Exporter::send`] never waits.
#[derive(Debug, Clone)]
pub struct Exporter {
    tx: mpsc::Sender<Span>,
    counters: Counters,
}

/// The background half: takes spans off the queue and exports them.
#[derive(Debug)]
pub struct ExportTask {
    rx: mpsc::Receiver<Span>,
    config: ExporterConfig,
    counters: Counters,
}

impl Exporter {
    /// An exporter and its task, with `mesh_trace_spans_total{result}`
    /// registered in `registry`. Nothing connects until the task runs.
    pub fn new(
        config: ExporterConfig,
        registry: &mut Registry,
    ) -> Result<(Exporter, ExportTask), OtlpError> {
        if config.queue == 0 {
            return Err(OtlpError::Zero("queue"));
        }
        if config.batch == 0 {
            return Err(OtlpError::Zero("batch"));
        }
        let (tx, rx) = mpsc::channel(config.queue);
        let counters = Counters::new(registry);
        Ok((
            Exporter {
                tx,
                counters: counters.clone(),
            },
            ExportTask {
                rx,
                config,
                counters,
            },
        ))
    }

    /// Queues a finished span for export, or drops and counts it when the
    /// queue is full or the task has ended. Never waits.
    pub fn send(&self, span: Span) {
        if self.tx.try_send(span).is_err() {
            self.counters.queue_full.inc();
        }
    }

    /// What became of the spans so far.
    pub fn counts(&self) -> SpanCounts {
        self.counters.snapshot()
    }
}

impl ExportTask {
    /// Exports until every [`Exporter`] is dropped, then sends what is
    /// left and returns. Needs a tokio runtime (the gRPC channel lives on
    /// it).
    pub async fn run(mut self) {
        let channel = Endpoint::from(self.config.endpoint.clone())
            .connect_timeout(self.config.timeout)
            .timeout(self.config.timeout)
            .connect_lazy();
        let mut client = TraceServiceClient::new(channel);
        let resource = Resource {
            attributes: vec![key_value(
                "service.name",
                AttributeValue::String(self.config.service_name.clone()),
            )],
            ..Default::default()
        };
        let mut healthy = true;
        let mut batch = Vec::with_capacity(self.config.batch);
        let mut tick = tokio::time::interval(self.config.interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let room = self.config.batch - batch.len();
            tokio::select! {
                n = self.rx.recv_many(&mut batch, room) => {
                    let closed = n == 0;
                    if closed || batch.len() >= self.config.batch {
                        self.export(&mut client, &resource, &mut batch, &mut healthy).await;
                        tick.reset();
                    }
                    if closed {
                        return;
                    }
                }
                _ = tick.tick() => {
                    self.export(&mut client, &resource, &mut batch, &mut healthy).await;
                }
            }
        }
    }

    async fn export(
        &self,
        client: &mut TraceServiceClient<Channel>,
        resource: &Resource,
        batch: &mut Vec<Span>,
        healthy: &mut bool,
    ) {
        if batch.is_empty() {
            return;
        }
        let n = batch.len() as u64;
        let request = export_request(resource, batch.drain(..));
        let outcome = tokio::time::timeout(self.config.timeout, client.export(request)).await;
        let rejected = match outcome {
            Ok(Ok(response)) => {
                let partial = response.into_inner().partial_success.unwrap_or_default();
                let rejected = u64::try_from(partial.rejected_spans).unwrap_or(0).min(n);
                if rejected > 0 {
                    warn!(
                        collector = %self.config.endpoint,
                        rejected,
                        message = partial.error_message,
                        "OTLP collector rejected spans"
                    );
                }
                if !*healthy {
                    info!(collector = %self.config.endpoint, "OTLP collector reachable again");
                    *healthy = true;
                }
                rejected
            }
            Ok(Err(status)) => {
                self.failed(healthy, &status.to_string());
                n
            }
            Err(_) => {
                self.failed(healthy, "no answer within the timeout");
                n
            }
        };
        self.counters.exported.inc_by(n - rejected);
        self.counters.failed.inc_by(rejected);
    }

    /// Logs the first failure of a run of them; the counter tells the rest.
    fn failed(&self, healthy: &mut bool, error: &str) {
        if *healthy {
            warn!(
                collector = %self.config.endpoint,
                error,
                "OTLP export failed; spans are dropped until the collector answers"
            );
            *healthy = false;
        }
    }
}

/// One request with every span of the batch, under this proxy's resource.
fn export_request(
    resource: &Resource,
    spans: impl Iterator<Item = Span>,
) -> ExportTraceServiceRequest {
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: Some(resource.clone()),
            scope_spans: vec![ScopeSpans {
                scope: Some(InstrumentationScope {
                    name: "mesh".into(),
                    version: env!("CARGO_PKG_VERSION").into(),
                    ..Default::default()
                }),
                spans: spans.map(to_proto).collect(),
                schema_url: String::new(),
            }],
            schema_url: String::new(),
        }],
    }
}

fn to_proto(span: Span) -> pb::Span {
    let c = &span.context;
    pb::Span {
        trace_id: c.trace_id.to_bytes().to_vec(),
        span_id: c.span_id.to_bytes().to_vec(),
        parent_span_id: c
            .parent_id
            .map(|p| p.to_bytes().to_vec())
            .unwrap_or_default(),
        trace_state: c
            .state
            .as_ref()
            .map(|s| s.as_str().to_owned())
            .unwrap_or_default(),
        flags: c.flags.to_byte().into(),
        name: span.name,
        kind: match span.kind {
            SpanKind::Server => PbKind::Server,
            SpanKind::Client => PbKind::Client,
        } as i32,
        start_time_unix_nano: unix_nanos(span.start),
        end_time_unix_nano: unix_nanos(span.end),
        attributes: span
            .attributes
            .into_iter()
            .map(|(k, v)| key_value(k, v))
            .collect(),
        status: span.error.map(|message| pb::Status {
            message,
            code: pb::status::StatusCode::Error as i32,
        }),
        ..Default::default()
    }
}

fn key_value(key: &str, value: AttributeValue) -> KeyValue {
    KeyValue {
        key: key.to_owned(),
        value: Some(AnyValue {
            value: Some(match value {
                AttributeValue::String(s) => any_value::Value::StringValue(s),
                AttributeValue::Int(i) => any_value::Value::IntValue(i),
            }),
        }),
        ..Default::default()
    }
}

fn unix_nanos(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use http::StatusCode;

    use super::*;
    use crate::request::tests::record;

    fn ctx() -> SpanContext {
        SpanContext::root(true, &mut fastrand::Rng::with_seed(3))
    }

    fn attr<'a>(span: &'a Span, key: &str) -> Option<&'a AttributeValue> {
        span.attributes
            .iter()
            .find_map(|(k, v)| (*k == key).then_some(v))
    }

    #[test]
    fn a_request_span_has_the_http_attributes_and_no_query() {
        let rec = record();
        let span = Span::for_request(&rec, &ctx(), SpanKind::Server);
        assert_eq!(span.name, "POST web.shop.svc.cluster.local:8080");
        assert_eq!(span.end.duration_since(span.start).unwrap(), rec.duration);
        let s = |v: &str| Some(AttributeValue::String(v.into()));
        assert_eq!(attr(&span, "http.request.method").cloned(), s("POST"));
        assert_eq!(attr(&span, "url.path").cloned(), s("/cart/items"));
        assert_eq!(
            attr(&span, "server.address").cloned(),
            s("web.shop.svc.cluster.local")
        );
        assert_eq!(
            attr(&span, "http.response.status_code"),
            Some(&AttributeValue::Int(201))
        );
        assert_eq!(
            attr(&span, "network.peer.address").cloned(),
            s("10.244.0.5")
        );
        assert_eq!(
            attr(&span, "network.peer.port"),
            Some(&AttributeValue::Int(41234))
        );
        let client = Span::for_request(&rec, &ctx(), SpanKind::Client);
        assert_eq!(
            attr(&client, "network.peer.address").cloned(),
            s("10.244.1.10")
        );
        assert_eq!(
            attr(&span, "mesh.source.principal").cloned(),
            s("spiffe://cluster.local/ns/shop/sa/client")
        );
        assert_eq!(attr(&span, "mesh.response_flags").cloned(), s("-"));
        assert_eq!(span.error, None);
    }

    #[test]
    fn errors_follow_the_semantic_conventions() {
        let mut rec = record();
        rec.response_code = Some(StatusCode::NOT_FOUND);
        assert_eq!(
            Span::for_request(&rec, &ctx(), SpanKind::Server).error,
            None
        );
        assert!(
            Span::for_request(&rec, &ctx(), SpanKind::Client)
                .error
                .is_some()
        );
        rec.response_code = Some(StatusCode::SERVICE_UNAVAILABLE);
        rec.response_flags = crate::request::ResponseFlag::NoHealthyUpstream.into();
        assert_eq!(
            Span::for_request(&rec, &ctx(), SpanKind::Server).error,
            Some("HTTP 503 (UH)".into())
        );
        rec.response_code = None;
        assert!(
            Span::for_request(&rec, &ctx(), SpanKind::Server)
                .error
                .is_some()
        );
    }

    #[test]
    fn authority_hosts() {
        assert_eq!(host("web.shop:8080"), "web.shop");
        assert_eq!(host("web.shop"), "web.shop");
        assert_eq!(host("[fd00::1]:80"), "fd00::1");
        assert_eq!(host("[fd00::1"), "[fd00::1");
        assert_eq!(host("a:b"), "a:b");
    }

    #[test]
    fn only_plaintext_grpc_collectors_are_accepted() {
        assert!(ExporterConfig::new("http://otel-collector.observability:4317", "w.ns").is_ok());
        for bad in ["https://c:4317", "c:4317", "http://", "not a uri"] {
            assert!(ExporterConfig::new(bad, "w.ns").is_err(), "{bad}");
        }
        let mut config = ExporterConfig::new("http://c:4317", "w.ns").unwrap();
        config.queue = 0;
        assert_eq!(
            Exporter::new(config, &mut Registry::default()).err(),
            Some(OtlpError::Zero("queue"))
        );
    }
}
