//! One finished HTTP request at an L7 proxy (the waypoint), as a value;
//! Istio's HTTP metric families written from it; and its access-log line.
//!
//! The proxy fills in a [`RequestRecord`] when the response ends (or the
//! request fails) and hands it to [`RequestMetrics::record`] and
//! [`access_log_fields`]. Metric labels carry only values from bounded sets
//! (workloads, identities, services, codes, flags), never the path, the
//! authority or the method, which callers choose freely.
use std::{
    fmt,
    net::SocketAddr,
    time::{Duration, SystemTime},
};

use http::{Method, StatusCode};
use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, histogram::Histogram},
    registry::Registry,
};
use serde::Serialize;

use crate::{
    connection::Security,
    labels::{UNKNOWN, WorkloadLabels},
    request_series::{Series, SeriesCache, SeriesKey},
    trace::TraceId,
};

/// Istio's (Envoy's default) bucket bounds for
/// `istio_request_duration_milliseconds`, in milliseconds.
pub const DURATION_BUCKETS_MS: [f64; 19] = [
    0.5, 1.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0, 30000.0,
    60000.0, 300000.0, 600000.0, 1800000.0, 3600000.0,
];

/// Istio's bucket bounds for `istio_request_bytes` and
/// `istio_response_bytes`, in bytes.
pub const SIZE_BUCKETS_BYTES: [f64; 8] = [
    1.0, 10.0, 100.0, 1000.0, 10000.0, 100000.0, 1000000.0, 10000000.0,
];

/// Longest free-text value (authority, path, route) an access-log line
/// carries; the rest is cut at a character boundary so one request cannot
/// write an arbitrarily long line.
pub const MAX_LOG_FIELD_BYTES: usize = 2048;

/// Which proxy reports the request (Istio's `reporter` label).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reporter {
    /// A waypoint between the two workloads.
    Waypoint,
}

impl Reporter {
    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Reporter::Waypoint => "waypoint",
        }
    }
}

/// The request's protocol as the proxy spoke it with the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Protocol {
    Http1,
    Http2,
    /// gRPC (over HTTP/2, `content-type: application/grpc`).
    Grpc,
}

impl Protocol {
    /// The access log's name: `http/1.1`, `h2`, `grpc`.
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Http1 => "http/1.1",
            Protocol::Http2 => "h2",
            Protocol::Grpc => "grpc",
        }
    }

    /// Istio's `request_protocol` label, which does not tell HTTP
    /// versions apart.
    pub fn label(self) -> &'static str {
        match self {
            Protocol::Http1 | Protocol::Http2 => "http",
            Protocol::Grpc => "grpc",
        }
    }
}

/// A gRPC status code, one of the 17 the protocol defines (0 OK to 16
/// UNAUTHENTICATED): anything else an upstream sends is not a status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct GrpcStatus(u8);

impl GrpcStatus {
    /// The largest code gRPC defines (UNAUTHENTICATED).
    const MAX: u32 = 16;

    /// The status with this code, `None` outside 0..=16.
    pub fn new(code: u32) -> Option<Self> {
        (code <= Self::MAX).then_some(Self(code as u8))
    }

    /// The status from a `grpc-status` header or trailer value.
    pub fn from_header(value: &[u8]) -> Option<Self> {
        std::str::from_utf8(value)
            .ok()?
            .trim()
            .parse()
            .ok()
            .and_then(Self::new)
    }

    /// The numeric code.
    pub fn code(self) -> u8 {
        self.0
    }
}

/// One of Envoy's response flags, as Istio reports them: why a request did
/// not simply succeed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum ResponseFlag {
    /// `UH`: no healthy upstream host.
    NoHealthyUpstream,
    /// `UF`: connecting to the upstream failed.
    UpstreamConnectionFailure,
    /// `UO`: the upstream's circuit breaker or a concurrency cap refused.
    UpstreamOverflow,
    /// `NR`: no route for the request.
    NoRouteFound,
    /// `URX`: retries or attempts ran out.
    UpstreamRetryLimitExceeded,
    /// `NC`: the route's destination is unknown.
    NoClusterFound,
    /// `DT`: the request took longer than its overall limit.
    DurationTimeout,
    /// `DC`: the client went away before the response ended.
    DownstreamConnectionTermination,
    /// `UR`: the upstream reset the request.
    UpstreamRemoteReset,
    /// `UC`: the upstream connection ended mid-request.
    UpstreamConnectionTermination,
    /// `UT`: the upstream did not answer within the request timeout.
    UpstreamRequestTimeout,
    /// `LR`: the proxy reset the request itself.
    LocalReset,
    /// `SI`: the stream was idle for too long.
    StreamIdleTimeout,
    /// `RL`: rate limited.
    RateLimited,
    /// `RBAC`: authorization policy denied the request.
    RbacAccessDenied,
    /// `UAEX`: an external authorizer (ext_authz) denied the request.
    UnauthorizedExternalService,
    /// `DPE`: the client broke the HTTP protocol.
    DownstreamProtocolError,
    /// `UPE`: the upstream broke the HTTP protocol.
    UpstreamProtocolError,
    /// `DI`: the request was held for a delay a fault injection asked for.
    DelayInjected,
    /// `FI`: the request was aborted by a fault injection.
    FaultInjected,
}

impl ResponseFlag {
    /// Every flag, in the order Envoy writes them.
    pub const ALL: [ResponseFlag; 20] = [
        ResponseFlag::NoHealthyUpstream,
        ResponseFlag::UpstreamConnectionFailure,
        ResponseFlag::UpstreamOverflow,
        ResponseFlag::NoRouteFound,
        ResponseFlag::UpstreamRetryLimitExceeded,
        ResponseFlag::NoClusterFound,
        ResponseFlag::DurationTimeout,
        ResponseFlag::DownstreamConnectionTermination,
        ResponseFlag::UpstreamRemoteReset,
        ResponseFlag::UpstreamConnectionTermination,
        ResponseFlag::UpstreamRequestTimeout,
        ResponseFlag::LocalReset,
        ResponseFlag::DelayInjected,
        ResponseFlag::FaultInjected,
        ResponseFlag::StreamIdleTimeout,
        ResponseFlag::RateLimited,
        ResponseFlag::UnauthorizedExternalService,
        ResponseFlag::RbacAccessDenied,
        ResponseFlag::DownstreamProtocolError,
        ResponseFlag::UpstreamProtocolError,
    ];

    /// Envoy's short name.
    pub fn as_str(self) -> &'static str {
        match self {
            ResponseFlag::NoHealthyUpstream => "UH",
            ResponseFlag::UpstreamConnectionFailure => "UF",
            ResponseFlag::UpstreamOverflow => "UO",
            ResponseFlag::NoRouteFound => "NR",
            ResponseFlag::UpstreamRetryLimitExceeded => "URX",
            ResponseFlag::NoClusterFound => "NC",
            ResponseFlag::DurationTimeout => "DT",
            ResponseFlag::DownstreamConnectionTermination => "DC",
            ResponseFlag::UpstreamRemoteReset => "UR",
            ResponseFlag::UpstreamConnectionTermination => "UC",
            ResponseFlag::UpstreamRequestTimeout => "UT",
            ResponseFlag::LocalReset => "LR",
            ResponseFlag::StreamIdleTimeout => "SI",
            ResponseFlag::RateLimited => "RL",
            ResponseFlag::RbacAccessDenied => "RBAC",
            ResponseFlag::UnauthorizedExternalService => "UAEX",
            ResponseFlag::DownstreamProtocolError => "DPE",
            ResponseFlag::UpstreamProtocolError => "UPE",
            ResponseFlag::DelayInjected => "DI",
            ResponseFlag::FaultInjected => "FI",
        }
    }

    fn bit(self) -> u32 {
        1 << (self as u8)
    }
}

/// The set of response flags of one request; empty is Envoy's `-`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct ResponseFlags(u32);

impl ResponseFlags {
    /// No flag: the request went as asked.
    pub const NONE: ResponseFlags = ResponseFlags(0);

    /// The set with `flag` added.
    pub fn with(self, flag: ResponseFlag) -> Self {
        Self(self.0 | flag.bit())
    }

    /// Adds `flag`.
    pub fn insert(&mut self, flag: ResponseFlag) {
        self.0 |= flag.bit();
    }

    /// Whether `flag` is set.
    pub fn contains(self, flag: ResponseFlag) -> bool {
        self.0 & flag.bit() != 0
    }

    /// Whether no flag is set.
    pub fn is_empty(self) -> bool {
        self.0 == 0
    }
}

impl From<ResponseFlag> for ResponseFlags {
    fn from(flag: ResponseFlag) -> Self {
        Self::NONE.with(flag)
    }
}

/// `-`, or the flags' short names joined by `,` in Envoy's order.
impl fmt::Display for ResponseFlags {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_empty() {
            return f.write_str("-");
        }
        let mut first = true;
        for flag in ResponseFlag::ALL.iter().filter(|g| self.contains(**g)) {
            if !first {
                f.write_str(",")?;
            }
            first = false;
            f.write_str(flag.as_str())?;
        }
        Ok(())
    }
}

/// The Service a request was addressed to.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ServiceName {
    /// Its host name, `web.shop.svc.cluster.local`.
    pub host: String,
    pub name: String,
    pub namespace: String,
}

/// One end of a request as far as the proxy knows it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Party {
    /// The workload's labels, when the view knows the workload.
    pub workload: Option<WorkloadLabels>,
    /// The SPIFFE id the proxy verified (the client's certificate, or the
    /// identity it pinned upstream); `None` without one.
    pub principal: Option<String>,
    /// The cluster it runs in, when known.
    pub cluster: Option<String>,
}

/// One finished HTTP request at a proxy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestRecord {
    pub reporter: Reporter,
    /// When the first byte of the request arrived.
    pub started: SystemTime,
    /// Until the last byte of the response was sent (or the request failed).
    pub duration: Duration,
    pub method: Method,
    /// `:authority` or `Host`, as the client sent it.
    pub authority: String,
    /// The path with its query, as the client sent it.
    pub path: String,
    pub protocol: Protocol,
    /// The status sent to the client; `None` when none was (Istio's `0`).
    pub response_code: Option<StatusCode>,
    /// The `grpc-status` of a gRPC response, when it had a valid one.
    pub grpc_status: Option<GrpcStatus>,
    /// Body bytes received from the client.
    pub request_bytes: u64,
    /// Body bytes sent to the client.
    pub response_bytes: u64,
    /// The client's address as the proxy saw it (through a tunnel, the
    /// address the tunnel carried), when known.
    pub downstream: Option<SocketAddr>,
    /// The endpoint the last attempt went to, when one was chosen.
    pub upstream: Option<SocketAddr>,
    /// The client.
    pub source: Party,
    /// The workload that served the request (or would have).
    pub destination: Party,
    /// The Service the request was for, when it matched one.
    pub service: Option<ServiceName>,
    /// The route (`<namespace>/<HTTPRoute name>`, say) that matched.
    pub route: Option<String>,
    /// The rule of the route that matched: its `name`, else its index.
    pub route_rule: Option<String>,
    /// Upstream attempts made, retries included; 0 when none was.
    pub attempts: u32,
    pub response_flags: ResponseFlags,
    /// How the request reached the proxy.
    pub security: Security,
    pub trace_id: Option<TraceId>,
}

/// Istio's labels of the HTTP families, one series per distinct set.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct RequestLabels {
    pub reporter: &'static str,
    pub source_workload: String,
    pub source_workload_namespace: String,
    pub source_principal: String,
    pub source_app: String,
    pub source_version: String,
    pub source_canonical_service: String,
    pub source_canonical_revision: String,
    pub source_cluster: String,
    pub destination_workload: String,
    pub destination_workload_namespace: String,
    pub destination_principal: String,
    pub destination_app: String,
    pub destination_version: String,
    pub destination_canonical_service: String,
    pub destination_canonical_revision: String,
    pub destination_service: String,
    pub destination_service_name: String,
    pub destination_service_namespace: String,
    pub destination_cluster: String,
    pub request_protocol: &'static str,
    /// `0` when no response was sent, as Istio writes it.
    pub response_code: u16,
    /// The gRPC code; empty for requests that are not gRPC or had none.
    pub grpc_response_status: String,
    pub response_flags: String,
    pub connection_security_policy: &'static str,
    /// The route that matched (`<namespace>/<name>`), `default` for a
    /// Service without routes; empty when nothing routed the request.
    pub route_name: String,
    /// The rule of that route: its name, else its index.
    pub route_rule: String,
}

impl RequestLabels {
    /// The labels of a record; what is not known is `unknown`, as Istio
    /// writes it. A request that matched no Service has
    /// `destination_service="unknown"` rather than Istio's host header,
    /// which the client chooses and would make series without bound.
    pub fn of(rec: &RequestRecord) -> Self {
        let unknown = WorkloadLabels::unknown();
        let s = rec.source.workload.as_ref().unwrap_or(&unknown);
        let d = rec.destination.workload.as_ref().unwrap_or(&unknown);
        let or_unknown = |v: &Option<String>| v.clone().unwrap_or_else(|| UNKNOWN.to_owned());
        let service = |f: fn(&ServiceName) -> &String| {
            rec.service
                .as_ref()
                .map_or_else(|| UNKNOWN.to_owned(), |svc| f(svc).clone())
        };
        Self {
            reporter: rec.reporter.as_str(),
            source_workload: s.workload.clone(),
            source_workload_namespace: s.namespace.clone(),
            source_principal: or_unknown(&rec.source.principal),
            source_app: s.app.clone(),
            source_version: s.version.clone(),
            source_canonical_service: s.app.clone(),
            source_canonical_revision: s.version.clone(),
            source_cluster: or_unknown(&rec.source.cluster),
            destination_workload: d.workload.clone(),
            destination_workload_namespace: d.namespace.clone(),
            destination_principal: or_unknown(&rec.destination.principal),
            destination_app: d.app.clone(),
            destination_version: d.version.clone(),
            destination_canonical_service: d.app.clone(),
            destination_canonical_revision: d.version.clone(),
            destination_service: service(|s| &s.host),
            destination_service_name: service(|s| &s.name),
            destination_service_namespace: service(|s| &s.namespace),
            destination_cluster: or_unknown(&rec.destination.cluster),
            request_protocol: rec.protocol.label(),
            response_code: rec.response_code.map_or(0, |c| c.as_u16()),
            grpc_response_status: rec
                .grpc_status
                .map(|g| g.code().to_string())
                .unwrap_or_default(),
            response_flags: rec.response_flags.to_string(),
            connection_security_policy: rec.security.policy_label(),
            route_name: rec.route.clone().unwrap_or_default(),
            route_rule: rec.route_rule.clone().unwrap_or_default(),
        }
    }
}

type HistogramFamily = Family<RequestLabels, Histogram, fn() -> Histogram>;

/// Istio's HTTP metric families: `istio_requests_total`,
/// `istio_request_duration_milliseconds`, `istio_request_bytes`,
/// `istio_response_bytes`.
#[derive(Debug, Clone)]
pub struct RequestMetrics {
    requests: Family<RequestLabels, Counter>,
    duration: HistogramFamily,
    request_bytes: HistogramFamily,
    response_bytes: HistogramFamily,
    /// Each label set's series in the four families, found with one lookup
    /// and without building the labels again.
    series: std::sync::Arc<SeriesCache>,
}

impl RequestMetrics {
    /// The families, registered in `registry`.
    pub fn new(registry: &mut Registry) -> Self {
        let metrics = Self {
            requests: Family::default(),
            duration: Family::new_with_constructor(|| {
                Histogram::new(DURATION_BUCKETS_MS.iter().copied())
            }),
            request_bytes: Family::new_with_constructor(|| {
                Histogram::new(SIZE_BUCKETS_BYTES.iter().copied())
            }),
            response_bytes: Family::new_with_constructor(|| {
                Histogram::new(SIZE_BUCKETS_BYTES.iter().copied())
            }),
            series: Default::default(),
        };
        registry.register(
            "istio_requests",
            "Requests handled by the proxy",
            metrics.requests.clone(),
        );
        registry.register(
            "istio_request_duration_milliseconds",
            "Duration of requests, from the first request byte to the last response byte",
            metrics.duration.clone(),
        );
        registry.register(
            "istio_request_bytes",
            "Body sizes of requests",
            metrics.request_bytes.clone(),
        );
        registry.register(
            "istio_response_bytes",
            "Body sizes of responses",
            metrics.response_bytes.clone(),
        );
        metrics
    }

    /// Counts one finished request in every family.
    pub fn record(&self, rec: &RequestRecord) {
        let series = self.series.get(&SeriesKey::of(rec), || {
            let labels = RequestLabels::of(rec);
            Series {
                requests: self.requests.get_or_create(&labels).clone(),
                duration: self.duration.get_or_create(&labels).clone(),
                request_bytes: self.request_bytes.get_or_create(&labels).clone(),
                response_bytes: self.response_bytes.get_or_create(&labels).clone(),
            }
        });
        series.requests.inc();
        series.duration.observe(rec.duration.as_secs_f64() * 1000.0);
        series.request_bytes.observe(rec.request_bytes as f64);
        series.response_bytes.observe(rec.response_bytes as f64);
    }
}

/// The access log's fields; `None` is written as `null`. Fields that are
/// not strings already are written through their `Display` straight into
/// the line: no `String` is made for them.
#[derive(Serialize)]
struct LogLine<'a> {
    start_time: String,
    reporter: &'static str,
    method: &'a str,
    authority: &'a str,
    path: &'a str,
    protocol: &'static str,
    status: Option<u16>,
    grpc_status: Option<u8>,
    response_flags: Shown<ResponseFlags>,
    duration_ms: u64,
    bytes_received: u64,
    bytes_sent: u64,
    downstream: Option<Shown<SocketAddr>>,
    upstream: Option<Shown<SocketAddr>>,
    attempts: u32,
    route: Option<&'a str>,
    route_rule: Option<&'a str>,
    source_principal: Option<&'a str>,
    source_workload: Option<Shown<WorkloadKey<'a>>>,
    destination_service: Option<&'a str>,
    destination_workload: Option<Shown<WorkloadKey<'a>>>,
    destination_principal: Option<&'a str>,
    connection_security: &'static str,
    trace_id: Option<Shown<TraceId>>,
}

/// A value serialized as the string its `Display` writes.
struct Shown<T>(T);

impl<T: fmt::Display> Serialize for Shown<T> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(&self.0)
    }
}

/// A workload as the access log names it: `namespace/workload`.
struct WorkloadKey<'a>(&'a WorkloadLabels);

impl fmt::Display for WorkloadKey<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.0.namespace, self.0.workload)
    }
}

fn workload_key(party: &Party) -> Option<Shown<WorkloadKey<'_>>> {
    party.workload.as_ref().map(|w| Shown(WorkloadKey(w)))
}

/// The request's access-log fields, to serialize as one JSON object (a
/// proxy adds its own stamp beside them and writes the line in one pass).
/// Free-text fields are cut to [`MAX_LOG_FIELD_BYTES`]; JSON escaping
/// keeps a hostile path or authority from breaking the line.
pub fn access_log_fields(rec: &RequestRecord) -> impl Serialize + '_ {
    LogLine {
        start_time: rfc3339(rec.started),
        reporter: rec.reporter.as_str(),
        method: cut(rec.method.as_str()),
        authority: cut(&rec.authority),
        path: cut(&rec.path),
        protocol: rec.protocol.as_str(),
        status: rec.response_code.map(|c| c.as_u16()),
        grpc_status: rec.grpc_status.map(GrpcStatus::code),
        response_flags: Shown(rec.response_flags),
        duration_ms: u64::try_from(rec.duration.as_millis()).unwrap_or(u64::MAX),
        bytes_received: rec.request_bytes,
        bytes_sent: rec.response_bytes,
        downstream: rec.downstream.map(Shown),
        upstream: rec.upstream.map(Shown),
        attempts: rec.attempts,
        route: rec.route.as_deref().map(cut),
        route_rule: rec.route_rule.as_deref().map(cut),
        source_principal: rec.source.principal.as_deref().map(cut),
        source_workload: workload_key(&rec.source),
        destination_service: rec.service.as_ref().map(|s| cut(&s.host)),
        destination_workload: workload_key(&rec.destination),
        destination_principal: rec.destination.principal.as_deref().map(cut),
        connection_security: rec.security.as_str(),
        trace_id: rec.trace_id.map(Shown),
    }
}

/// The request's access-log line: [`access_log_fields`] as one JSON
/// object, no newline.
pub fn access_log_line(rec: &RequestRecord) -> String {
    // Serializing strings and numbers into a String cannot fail.
    serde_json::to_string(&access_log_fields(rec)).unwrap_or_default()
}

/// `s` cut to at most [`MAX_LOG_FIELD_BYTES`], at a character boundary.
pub(crate) fn cut(s: &str) -> &str {
    if s.len() <= MAX_LOG_FIELD_BYTES {
        return s;
    }
    let mut end = MAX_LOG_FIELD_BYTES;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// UTC, milliseconds, `Z`: what Envoy's `%START_TIME%` writes (and what
/// other lines of the same log stamp themselves with).
pub fn rfc3339(t: SystemTime) -> String {
    let t = time::OffsetDateTime::from(t);
    let t = t
        .replace_nanosecond(t.millisecond() as u32 * 1_000_000)
        .unwrap_or(t);
    t.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

#[cfg(test)]
pub(crate) mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::trace::TraceParent;

    pub(crate) fn record() -> RequestRecord {
        let app = |name: &str| {
            let labels: BTreeMap<String, String> = [("app".to_owned(), name.to_owned())].into();
            WorkloadLabels::of(name, "shop", &labels)
        };
        RequestRecord {
            reporter: Reporter::Waypoint,
            started: SystemTime::UNIX_EPOCH + Duration::from_millis(1_700_000_000_123),
            duration: Duration::from_micros(12_400),
            method: Method::POST,
            authority: "web.shop.svc.cluster.local:8080".into(),
            path: "/cart/items?id=7".into(),
            protocol: Protocol::Http2,
            response_code: Some(StatusCode::CREATED),
            grpc_status: None,
            request_bytes: 150,
            response_bytes: 2048,
            downstream: Some("10.244.0.5:41234".parse().unwrap()),
            upstream: Some("10.244.1.10:8080".parse().unwrap()),
            source: Party {
                workload: Some(app("client")),
                principal: Some("spiffe://cluster.local/ns/shop/sa/client".into()),
                cluster: Some("Kubernetes".into()),
            },
            destination: Party {
                workload: Some(app("web")),
                principal: Some("spiffe://cluster.local/ns/shop/sa/web".into()),
                cluster: Some("Kubernetes".into()),
            },
            service: Some(ServiceName {
                host: "web.shop.svc.cluster.local".into(),
                name: "web".into(),
                namespace: "shop".into(),
            }),
            route: Some("shop/web".into()),
            route_rule: None,
            attempts: 1,
            response_flags: ResponseFlags::NONE,
            security: Security::MutualTls,
            trace_id: Some(
                TraceParent::parse(b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
                    .unwrap()
                    .trace_id,
            ),
        }
    }

    fn scrape(registry: &Registry) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, registry).unwrap();
        out
    }

    /// The one line of `text` for `series` whose labels include all of
    /// `labels`, and its value.
    fn value(text: &str, series: &str, labels: &[&str]) -> Option<f64> {
        text.lines()
            .filter(|l| l.starts_with(&format!("{series}{{")))
            .find(|l| labels.iter().all(|want| l.contains(want)))
            .and_then(|l| l.rsplit(' ').next()?.parse().ok())
    }

    #[test]
    fn each_labelled_fact_has_its_own_series_and_equal_facts_share_one() {
        let mut registry = Registry::default();
        let metrics = RequestMetrics::new(&mut registry);
        let base = record();
        let mut variants = vec![base.clone()];
        let mut vary = |f: &dyn Fn(&mut RequestRecord)| {
            let mut r = base.clone();
            f(&mut r);
            variants.push(r);
        };
        vary(&|r| r.source.principal = None);
        vary(&|r| r.source.workload = None);
        vary(&|r| r.source.cluster = Some("east".into()));
        vary(&|r| r.destination.principal = None);
        vary(&|r| r.destination.workload.as_mut().unwrap().version = "v2".into());
        vary(&|r| r.destination.cluster = None);
        vary(&|r| r.service = None);
        vary(&|r| r.protocol = Protocol::Grpc);
        vary(&|r| r.response_code = Some(StatusCode::BAD_GATEWAY));
        vary(&|r| r.grpc_status = GrpcStatus::new(14));
        vary(&|r| r.response_flags.insert(ResponseFlag::UpstreamOverflow));
        vary(&|r| r.route = Some("shop/canary".into()));
        vary(&|r| r.route_rule = Some("1".into()));
        for v in &variants {
            metrics.record(v);
        }
        // Facts no label is made of do not make a series.
        let mut same = base.clone();
        same.path = "/other".into();
        same.duration = Duration::from_millis(1);
        metrics.record(&same);
        assert_eq!(metrics.series.len(), variants.len());
        let text = scrape(&registry);
        let totals: Vec<&str> = text
            .lines()
            .filter(|l| l.starts_with("istio_requests_total{"))
            .collect();
        assert_eq!(totals.len(), variants.len(), "{text}");
        let twice: Vec<&&str> = totals.iter().filter(|l| l.ends_with(" 2")).collect();
        assert_eq!(twice.len(), 1, "{text}");
        assert!(twice[0].contains("route_rule=\"\""), "{text}");
        assert!(twice[0].contains("response_code=\"201\""), "{text}");
    }

    #[test]
    fn a_request_is_counted_with_istios_names_and_labels() {
        let mut registry = Registry::default();
        let metrics = RequestMetrics::new(&mut registry);
        let rec = record();
        metrics.record(&rec);
        metrics.record(&rec);
        let text = scrape(&registry);
        let labels = [
            "reporter=\"waypoint\"",
            "source_workload=\"client\"",
            "source_workload_namespace=\"shop\"",
            "source_principal=\"spiffe://cluster.local/ns/shop/sa/client\"",
            "source_app=\"client\"",
            "source_version=\"latest\"",
            "source_cluster=\"Kubernetes\"",
            "destination_workload=\"web\"",
            "destination_workload_namespace=\"shop\"",
            "destination_principal=\"spiffe://cluster.local/ns/shop/sa/web\"",
            "destination_app=\"web\"",
            "destination_version=\"latest\"",
            "destination_service=\"web.shop.svc.cluster.local\"",
            "destination_service_name=\"web\"",
            "destination_service_namespace=\"shop\"",
            "destination_cluster=\"Kubernetes\"",
            "request_protocol=\"http\"",
            "response_code=\"201\"",
            "grpc_response_status=\"\"",
            "response_flags=\"-\"",
            "connection_security_policy=\"mutual_tls\"",
        ];
        assert_eq!(
            value(&text, "istio_requests_total", &labels),
            Some(2.0),
            "{text}"
        );
        // 12.4 ms lands in the 25 ms bucket, not the 10 ms one.
        let le = |b: &str| {
            let mut l = labels.to_vec();
            l.push(b);
            value(&text, "istio_request_duration_milliseconds_bucket", &l)
        };
        assert_eq!(le("le=\"10.0\""), Some(0.0), "{text}");
        assert_eq!(le("le=\"25.0\""), Some(2.0));
        assert_eq!(le("le=\"3600000.0\""), Some(2.0));
        let sum = value(&text, "istio_request_duration_milliseconds_sum", &labels).unwrap();
        assert!((sum - 24.8).abs() < 1e-9, "{sum}");
        let bytes = |series: &str, b: &str| {
            let mut l = labels.to_vec();
            l.push(b);
            value(&text, series, &l)
        };
        assert_eq!(
            bytes("istio_request_bytes_bucket", "le=\"100.0\""),
            Some(0.0)
        );
        assert_eq!(
            bytes("istio_request_bytes_bucket", "le=\"1000.0\""),
            Some(2.0)
        );
        assert_eq!(
            bytes("istio_response_bytes_bucket", "le=\"1000.0\""),
            Some(0.0)
        );
        assert_eq!(
            bytes("istio_response_bytes_bucket", "le=\"10000.0\""),
            Some(2.0)
        );
        assert_eq!(
            value(&text, "istio_response_bytes_sum", &labels),
            Some(4096.0)
        );
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            assert!(!line.contains("/cart"), "a path in a label: {line}");
            assert!(!line.contains("POST"), "a method in a label: {line}");
        }
    }

    #[test]
    fn unknown_ends_failures_and_grpc_get_istios_values() {
        let mut registry = Registry::default();
        let metrics = RequestMetrics::new(&mut registry);
        let mut rec = record();
        rec.source = Party::default();
        rec.service = None;
        rec.response_code = None;
        rec.protocol = Protocol::Grpc;
        rec.grpc_status = GrpcStatus::from_header(b"14");
        rec.response_flags = ResponseFlag::UpstreamRetryLimitExceeded.into();
        rec.response_flags
            .insert(ResponseFlag::UpstreamConnectionFailure);
        metrics.record(&rec);
        let text = scrape(&registry);
        let want = [
            "source_workload=\"unknown\"",
            "source_principal=\"unknown\"",
            "source_app=\"unknown\"",
            "source_cluster=\"unknown\"",
            "destination_service=\"unknown\"",
            "destination_service_name=\"unknown\"",
            "request_protocol=\"grpc\"",
            "response_code=\"0\"",
            "grpc_response_status=\"14\"",
            "response_flags=\"UF,URX\"",
        ];
        assert_eq!(
            value(&text, "istio_requests_total", &want),
            Some(1.0),
            "{text}"
        );
    }

    #[test]
    fn grpc_status_outside_the_protocol_is_no_status() {
        assert_eq!(GrpcStatus::from_header(b"0").map(GrpcStatus::code), Some(0));
        assert_eq!(
            GrpcStatus::from_header(b" 16 ").map(GrpcStatus::code),
            Some(16)
        );
        for bad in [
            &b"17"[..],
            b"-1",
            b"",
            b"99999999999999999999",
            b"\xff",
            b"1a",
        ] {
            assert_eq!(GrpcStatus::from_header(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn flags_print_as_envoy_does() {
        assert_eq!(ResponseFlags::NONE.to_string(), "-");
        for flag in ResponseFlag::ALL {
            assert_eq!(ResponseFlags::from(flag).to_string(), flag.as_str());
        }
        let f = ResponseFlags::from(ResponseFlag::DownstreamConnectionTermination)
            .with(ResponseFlag::NoHealthyUpstream);
        assert_eq!(f.to_string(), "UH,DC");
        assert!(f.contains(ResponseFlag::NoHealthyUpstream));
        assert!(!f.contains(ResponseFlag::NoRouteFound));
    }

    #[test]
    fn the_access_log_line_is_one_json_object_with_the_request() {
        let line = access_log_line(&record());
        assert!(!line.contains('\n'));
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["start_time"], "2023-11-14T22:13:20.123Z");
        assert_eq!(v["method"], "POST");
        assert_eq!(v["authority"], "web.shop.svc.cluster.local:8080");
        assert_eq!(v["path"], "/cart/items?id=7");
        assert_eq!(v["protocol"], "h2");
        assert_eq!(v["status"], 201);
        assert_eq!(v["grpc_status"], serde_json::Value::Null);
        assert_eq!(v["duration_ms"], 12);
        assert_eq!(v["bytes_received"], 150);
        assert_eq!(v["bytes_sent"], 2048);
        assert_eq!(v["downstream"], "10.244.0.5:41234");
        assert_eq!(v["upstream"], "10.244.1.10:8080");
        assert_eq!(v["attempts"], 1);
        assert_eq!(v["route"], "shop/web");
        assert_eq!(v["response_flags"], "-");
        assert_eq!(
            v["source_principal"],
            "spiffe://cluster.local/ns/shop/sa/client"
        );
        assert_eq!(v["source_workload"], "shop/client");
        assert_eq!(v["destination_workload"], "shop/web");
        assert_eq!(v["destination_service"], "web.shop.svc.cluster.local");
        assert_eq!(v["connection_security"], "mutual_tls");
        assert_eq!(v["trace_id"], "4bf92f3577b34da6a3ce929d0e0e4736");
    }

    #[test]
    fn a_hostile_request_cannot_break_or_bloat_the_line() {
        let mut rec = record();
        // The cut falls inside the "é".
        rec.path = format!("/\"}}\n{}é", "x".repeat(MAX_LOG_FIELD_BYTES - 5));
        rec.authority = "evil\r\n\"host".into();
        rec.response_code = None;
        rec.upstream = None;
        rec.source = Party::default();
        let line = access_log_line(&rec);
        assert!(!line.contains('\n') && !line.contains('\r'));
        assert!(line.len() < 2 * MAX_LOG_FIELD_BYTES);
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["authority"], "evil\r\n\"host");
        assert_eq!(v["path"].as_str().unwrap().len(), MAX_LOG_FIELD_BYTES - 1);
        assert!(v["path"].as_str().unwrap().starts_with("/\"}\n"));
        assert_eq!(v["status"], serde_json::Value::Null);
        assert_eq!(v["source_principal"], serde_json::Value::Null);
    }
}
