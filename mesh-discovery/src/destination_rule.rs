//! Istio's `DestinationRule` (networking.istio.io v1, v1beta1, v1alpha3:
//! the same shape) as the waypoint applies it to the Services it serves:
//! load balancing, connection pool limits and outlier detection, per
//! Service and overridden per port. The object is read strictly (an
//! unknown field is refused by name) and `compile` checks it into a typed
//! `DestinationRule` — durations parsed, percentages bounded, enums typed —
//! so the waypoint never meets a value it would have to second-guess.
//!
//! Subsets are accepted and not applied: Gateway API routes, the only
//! routes the waypoint serves, name Services and never subsets. Their
//! names are kept so that sources can say so.
use std::{collections::BTreeMap, num::NonZeroU32, time::Duration};

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The kind's name, for logs and errors.
pub const KIND: &str = "DestinationRule";
/// Istio's API group.
pub const GROUP: &str = "networking.istio.io";
/// The versions a local file may name (`apiVersion: networking.istio.io/<v>`).
pub const VERSIONS: [&str; 3] = ["v1", "v1beta1", "v1alpha3"];

/// Istio's default `maxEjectionPercent`.
pub const DEFAULT_MAX_EJECTION_PERCENT: u8 = 10;
/// Envoy's default `consecutive_5xx`, which Istio leaves in place when
/// `consecutive5xxErrors` is not given.
pub const DEFAULT_CONSECUTIVE_5XX: u32 = 5;
/// Envoy's default `interval`.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(10);
/// Envoy's default `base_ejection_time`.
pub const DEFAULT_BASE_EJECTION: Duration = Duration::from_secs(30);
/// Durations are at least this (Istio's own validation).
pub const MIN_DURATION: Duration = Duration::from_millis(1);
/// Past this a duration is a typo rather than a setting (a day).
pub const MAX_DURATION: Duration = Duration::from_secs(24 * 3600);

/// `spec` of a DestinationRule.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DestinationRuleSpec {
    /// The Service: `name`, `name.ns`, `name.ns.svc` or
    /// `name.ns.svc.<domain>`, relative to the rule's namespace.
    pub host: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traffic_policy: Option<TrafficPolicySpec>,
    /// Accepted and not applied (see the module comment).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub subsets: Vec<SubsetSpec>,
    /// Accepted and not applied: the waypoint of a Service applies the
    /// Service's rule to every client it serves.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub export_to: Vec<String>,
    /// Refused by `compile`: it selects sidecars, which the mesh has none of.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workload_selector: Option<serde_json::Value>,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TrafficPolicySpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub load_balancer: Option<LoadBalancerSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connection_pool: Option<ConnectionPoolSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outlier_detection: Option<OutlierDetectionSpec>,
    /// Only `ISTIO_MUTUAL` (what the mesh does anyway) is accepted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsSpec>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub port_level_settings: Vec<PortTrafficPolicySpec>,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PortTrafficPolicySpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<PortSelector>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub load_balancer: Option<LoadBalancerSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connection_pool: Option<ConnectionPoolSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outlier_detection: Option<OutlierDetectionSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsSpec>,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PortSelector {
    pub number: i64,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TlsSpec {
    #[serde(default)]
    pub mode: String,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LoadBalancerSpec {
    /// `ROUND_ROBIN`, `LEAST_REQUEST` (or its old name `LEAST_CONN`),
    /// `RANDOM`; `UNSPECIFIED` is the default (`LEAST_REQUEST`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub simple: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consistent_hash: Option<ConsistentHashSpec>,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ConsistentHashSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http_header_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http_cookie: Option<HttpCookieSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub use_source_ip: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http_query_parameter_name: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpCookieSpec {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ConnectionPoolSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tcp: Option<TcpSettingsSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<HttpSettingsSpec>,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TcpSettingsSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_connections: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connect_timeout: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpSettingsSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http1_max_pending_requests: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http2_max_requests: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_requests_per_connection: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_retries: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle_timeout: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct OutlierDetectionSpec {
    #[serde(
        default,
        rename = "consecutive5xxErrors",
        skip_serializing_if = "Option::is_none"
    )]
    pub consecutive_5xx_errors: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consecutive_gateway_errors: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base_ejection_time: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_ejection_percent: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_health_percent: Option<i64>,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SubsetSpec {
    pub name: String,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traffic_policy: Option<TrafficPolicySpec>,
}

/// An object of the kind as read from a file or the API: the spec is all
/// `compile` needs beside its namespace and name.
#[derive(Debug, Clone, Deserialize)]
pub struct Document {
    pub spec: DestinationRuleSpec,
}

/// Which endpoint a request goes to.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum LoadBalancer {
    /// Power of two choices over requests in flight (Istio's default).
    #[default]
    LeastRequest,
    RoundRobin,
    Random,
    /// The same key to the same endpoint while it is there.
    ConsistentHash(HashKey),
}

/// What a consistent hash is computed on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HashKey {
    /// A request header (its name lowercase).
    Header(String),
    /// A cookie's value. `ttl` is kept for `mesh inspect`; the waypoint
    /// hashes on the cookie when the request carries it and does not set it.
    Cookie {
        name: String,
        ttl: Option<Duration>,
    },
    /// The client's address as the waypoint knows it (the HBONE stream's
    /// source).
    SourceIp,
    QueryParameter(String),
}

/// Connection pool limits; `None` is no limit (Istio's defaults are the
/// largest values Envoy takes).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ConnectionPool {
    pub max_connections: Option<NonZeroU32>,
    pub connect_timeout: Option<Duration>,
    pub http1_max_pending_requests: Option<NonZeroU32>,
    pub http2_max_requests: Option<NonZeroU32>,
    pub max_requests_per_connection: Option<NonZeroU32>,
    pub max_retries: Option<NonZeroU32>,
    pub idle_timeout: Option<Duration>,
}

/// When an endpoint is ejected, and for how long.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutlierDetection {
    /// Consecutive 5xx answers (or connect failures, resets, timeouts)
    /// that eject; `None`: never on 5xx.
    pub consecutive_5xx: Option<NonZeroU32>,
    /// Consecutive 502, 503, 504 (or connect failures, resets, timeouts)
    /// that eject; `None`: never.
    pub consecutive_gateway: Option<NonZeroU32>,
    /// How often an ejected endpoint's ejection multiplier decays.
    pub interval: Duration,
    /// An ejection lasts this times the number of times the endpoint was
    /// ejected.
    pub base_ejection: Duration,
    /// At most this share of the endpoints is ejected at once (at least one).
    pub max_ejection_percent: u8,
    /// Below this share of endpoints not ejected, ejections are ignored.
    pub min_health_percent: u8,
}

/// What applies to one port of the Service.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TrafficPolicy {
    pub load_balancer: LoadBalancer,
    pub connection_pool: ConnectionPool,
    pub outlier_detection: Option<OutlierDetection>,
}

/// The Service a rule is for.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ServiceHost {
    pub namespace: String,
    pub name: String,
}

impl ServiceHost {
    /// `<namespace>/<name>`, as the view keys Services.
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }
}

/// A checked rule, as the store and the waypoint hold it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DestinationRule {
    /// `<namespace>/<name>` of the rule.
    pub key: String,
    pub host: ServiceHost,
    /// `metadata.creationTimestamp` (RFC 3339) when known: of two rules for
    /// one Service the oldest applies, then the first by key (Istio).
    pub created: Option<String>,
    /// The policy of every port without its own settings.
    pub policy: TrafficPolicy,
    /// Ports with `portLevelSettings`, merged over `policy` section by
    /// section (load balancer, connection pool, outlier detection), as
    /// Istio merges them.
    pub ports: BTreeMap<u16, TrafficPolicy>,
    /// Names of the subsets given, which are not applied.
    pub ignored_subsets: Vec<String>,
}

impl DestinationRule {
    /// The policy for requests to `port` of the Service.
    pub fn for_port(&self, port: u16) -> &TrafficPolicy {
        self.ports.get(&port).unwrap_or(&self.policy)
    }

    /// Which of two rules for one Service applies: the older, then the
    /// first by key.
    pub fn precedes(&self, other: &DestinationRule) -> bool {
        let order = |r: &DestinationRule| (r.created.is_none(), r.created.clone(), r.key.clone());
        order(self) < order(other)
    }
}

/// Why a rule cannot be applied: the field and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {problem}")]
pub struct DestinationRuleError {
    pub field: String,
    pub problem: String,
}

fn invalid(field: impl Into<String>, problem: impl Into<String>) -> DestinationRuleError {
    DestinationRuleError {
        field: field.into(),
        problem: problem.into(),
    }
}

/// A duration as Istio writes them (`300ms`, `1.5s`, `1m30s`, `1h`),
/// between `MIN_DURATION` and `MAX_DURATION`.
pub fn parse_duration(field: &str, text: &str) -> Result<Duration, DestinationRuleError> {
    let bad = |why: &str| invalid(field, format!("`{text}` is not a duration: {why}"));
    let mut rest = text.trim();
    if rest.is_empty() {
        return Err(bad("it is empty; write e.g. 300ms, 10s, 1m"));
    }
    let mut total = 0f64;
    while !rest.is_empty() {
        let number_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(|| bad("a unit is missing (h, m, s, ms, us, ns)"))?;
        if number_len == 0 {
            return Err(bad("a number must come before each unit"));
        }
        let number: f64 = rest[..number_len]
            .parse()
            .map_err(|_| bad("a number does not parse"))?;
        rest = &rest[number_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let seconds = match &rest[..unit_len] {
            "h" => 3600.0,
            "m" => 60.0,
            "s" => 1.0,
            "ms" => 1e-3,
            "us" | "µs" => 1e-6,
            "ns" => 1e-9,
            _ => return Err(bad("units are h, m, s, ms, us, ns")),
        };
        rest = &rest[unit_len..];
        total += number * seconds;
    }
    let d = Duration::try_from_secs_f64(total).map_err(|_| bad("out of range"))?;
    if d < MIN_DURATION {
        return Err(bad("it must be at least 1ms"));
    }
    if d > MAX_DURATION {
        return Err(bad("it must be at most 24h"));
    }
    Ok(d)
}

/// A count where 0 (or nothing) means no limit, as Istio reads them.
fn limit(field: &str, value: Option<i64>) -> Result<Option<NonZeroU32>, DestinationRuleError> {
    match value {
        None => Ok(None),
        Some(v) if v < 0 => Err(invalid(field, format!("{v} is negative"))),
        Some(v) => u32::try_from(v)
            .map(NonZeroU32::new)
            .map_err(|_| invalid(field, format!("{v} is over {}", u32::MAX))),
    }
}

fn percent(field: &str, value: Option<i64>, default: u8) -> Result<u8, DestinationRuleError> {
    match value {
        None => Ok(default),
        Some(v @ 0..=100) => Ok(v as u8),
        Some(v) => Err(invalid(
            field,
            format!("{v} is not a percentage: it must be between 0 and 100"),
        )),
    }
}

fn duration_at(
    field: &str,
    value: &Option<String>,
) -> Result<Option<Duration>, DestinationRuleError> {
    value
        .as_deref()
        .map(|t| parse_duration(field, t))
        .transpose()
}

fn load_balancer(at: &str, spec: &LoadBalancerSpec) -> Result<LoadBalancer, DestinationRuleError> {
    match (&spec.simple, &spec.consistent_hash) {
        (Some(_), Some(_)) => Err(invalid(at, "sets both simple and consistentHash: give one")),
        (Some(simple), None) => match simple.as_str() {
            "UNSPECIFIED" | "LEAST_REQUEST" | "LEAST_CONN" => Ok(LoadBalancer::LeastRequest),
            "ROUND_ROBIN" => Ok(LoadBalancer::RoundRobin),
            "RANDOM" => Ok(LoadBalancer::Random),
            other => Err(invalid(
                format!("{at}.simple"),
                format!(
                    "`{other}` is not applied by the waypoint: use ROUND_ROBIN, LEAST_REQUEST or RANDOM"
                ),
            )),
        },
        (None, Some(hash)) => consistent_hash(&format!("{at}.consistentHash"), hash),
        (None, None) => Ok(LoadBalancer::LeastRequest),
    }
}

fn consistent_hash(
    at: &str,
    spec: &ConsistentHashSpec,
) -> Result<LoadBalancer, DestinationRuleError> {
    let mut keys = Vec::new();
    if let Some(name) = &spec.http_header_name {
        let field = format!("{at}.httpHeaderName");
        if http::HeaderName::from_bytes(name.as_bytes()).is_err() {
            return Err(invalid(field, format!("`{name}` is not a header name")));
        }
        keys.push(HashKey::Header(name.to_ascii_lowercase()));
    }
    if let Some(cookie) = &spec.http_cookie {
        if cookie.name.is_empty()
            || !cookie
                .name
                .bytes()
                .all(|b| b.is_ascii_graphic() && !b"()<>@,;:\\\"/[]?={}".contains(&b))
        {
            return Err(invalid(
                format!("{at}.httpCookie.name"),
                format!("`{}` is not a cookie name", cookie.name),
            ));
        }
        let ttl = match cookie.ttl.as_deref() {
            // Istio writes "0s" for a session cookie.
            Some("0s" | "0") | None => None,
            Some(t) => Some(parse_duration(&format!("{at}.httpCookie.ttl"), t)?),
        };
        keys.push(HashKey::Cookie {
            name: cookie.name.clone(),
            ttl,
        });
    }
    match spec.use_source_ip {
        Some(true) => keys.push(HashKey::SourceIp),
        Some(false) => {
            return Err(invalid(
                format!("{at}.useSourceIp"),
                "false hashes on nothing: leave it out or give another key",
            ));
        }
        None => {}
    }
    if let Some(name) = &spec.http_query_parameter_name {
        if name.is_empty() {
            return Err(invalid(
                format!("{at}.httpQueryParameterName"),
                "must not be empty",
            ));
        }
        keys.push(HashKey::QueryParameter(name.clone()));
    }
    match keys.len() {
        1 => Ok(LoadBalancer::ConsistentHash(keys.remove(0))),
        0 => Err(invalid(
            at,
            "names no key: give httpHeaderName, httpCookie, useSourceIp or httpQueryParameterName",
        )),
        _ => Err(invalid(at, "names more than one key: give one")),
    }
}

fn connection_pool(
    at: &str,
    spec: &ConnectionPoolSpec,
) -> Result<ConnectionPool, DestinationRuleError> {
    let mut pool = ConnectionPool::default();
    if let Some(tcp) = &spec.tcp {
        pool.max_connections = limit(&format!("{at}.tcp.maxConnections"), tcp.max_connections)?;
        pool.connect_timeout =
            duration_at(&format!("{at}.tcp.connectTimeout"), &tcp.connect_timeout)?;
    }
    if let Some(http) = &spec.http {
        pool.http1_max_pending_requests = limit(
            &format!("{at}.http.http1MaxPendingRequests"),
            http.http1_max_pending_requests,
        )?;
        pool.http2_max_requests = limit(
            &format!("{at}.http.http2MaxRequests"),
            http.http2_max_requests,
        )?;
        pool.max_requests_per_connection = limit(
            &format!("{at}.http.maxRequestsPerConnection"),
            http.max_requests_per_connection,
        )?;
        pool.max_retries = limit(&format!("{at}.http.maxRetries"), http.max_retries)?;
        pool.idle_timeout = duration_at(&format!("{at}.http.idleTimeout"), &http.idle_timeout)?;
    }
    Ok(pool)
}

fn outlier_detection(
    at: &str,
    spec: &OutlierDetectionSpec,
) -> Result<OutlierDetection, DestinationRuleError> {
    let consecutive_5xx = match spec.consecutive_5xx_errors {
        None => NonZeroU32::new(DEFAULT_CONSECUTIVE_5XX),
        given => limit(&format!("{at}.consecutive5xxErrors"), given)?,
    };
    Ok(OutlierDetection {
        consecutive_5xx,
        consecutive_gateway: limit(
            &format!("{at}.consecutiveGatewayErrors"),
            spec.consecutive_gateway_errors,
        )?,
        interval: duration_at(&format!("{at}.interval"), &spec.interval)?
            .unwrap_or(DEFAULT_INTERVAL),
        base_ejection: duration_at(&format!("{at}.baseEjectionTime"), &spec.base_ejection_time)?
            .unwrap_or(DEFAULT_BASE_EJECTION),
        max_ejection_percent: percent(
            &format!("{at}.maxEjectionPercent"),
            spec.max_ejection_percent,
            DEFAULT_MAX_EJECTION_PERCENT,
        )?,
        min_health_percent: percent(
            &format!("{at}.minHealthPercent"),
            spec.min_health_percent,
            0,
        )?,
    })
}

fn tls(at: &str, spec: &TlsSpec) -> Result<(), DestinationRuleError> {
    match spec.mode.as_str() {
        "ISTIO_MUTUAL" => Ok(()),
        other => Err(invalid(
            format!("{at}.mode"),
            format!(
                "`{other}` is not applied: the waypoint reaches mesh endpoints over HBONE with mutual TLS; use ISTIO_MUTUAL or leave tls out"
            ),
        )),
    }
}

/// The Service `host` names, relative to the rule's `namespace`.
pub fn service_host(namespace: &str, host: &str) -> Result<ServiceHost, DestinationRuleError> {
    let field = "spec.host";
    if host.is_empty() {
        return Err(invalid(field, "must not be empty"));
    }
    if host.contains('*') {
        return Err(invalid(
            field,
            format!("`{host}` is a wildcard: the waypoint applies rules to one Service; name it"),
        ));
    }
    let labels: Vec<&str> = host.split('.').collect();
    let dns_label = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && l.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    if let Some(bad) = labels.iter().find(|l| !dns_label(l)) {
        return Err(invalid(
            field,
            format!("`{host}` is not a Service host: `{bad}` is not a DNS label"),
        ));
    }
    let (name, ns) = match labels.as_slice() {
        [name] => (*name, namespace),
        [name, ns] | [name, ns, "svc"] => (*name, *ns),
        [name, ns, "svc", _domain @ ..] => (*name, *ns),
        _ => {
            return Err(invalid(
                field,
                format!(
                    "`{host}` does not name a Service: write name, name.namespace or name.namespace.svc.<cluster domain>"
                ),
            ));
        }
    };
    Ok(ServiceHost {
        namespace: ns.to_owned(),
        name: name.to_owned(),
    })
}

/// One section of a policy: the port's when it gives it, else the Service's.
fn section<'a, T>(port: &'a Option<T>, top: &'a Option<T>) -> (&'a Option<T>, bool) {
    if port.is_some() {
        (port, true)
    } else {
        (top, false)
    }
}

/// Checks a rule of `namespace`/`name` and gives what the waypoint applies.
pub fn compile(
    namespace: &str,
    name: &str,
    created: Option<String>,
    spec: &DestinationRuleSpec,
) -> Result<DestinationRule, DestinationRuleError> {
    let host = service_host(namespace, &spec.host)?;
    if spec.workload_selector.is_some() {
        return Err(invalid(
            "spec.workloadSelector",
            "selects sidecars, which the mesh has none of: the waypoint applies a rule by its host; remove it",
        ));
    }
    let empty = TrafficPolicySpec::default();
    let top = spec.traffic_policy.as_ref().unwrap_or(&empty);
    let at = "spec.trafficPolicy";
    if let Some(t) = &top.tls {
        tls(&format!("{at}.tls"), t)?;
    }
    let build = |lb: (&Option<LoadBalancerSpec>, bool),
                 pool: (&Option<ConnectionPoolSpec>, bool),
                 outlier: (&Option<OutlierDetectionSpec>, bool),
                 port_at: &str|
     -> Result<TrafficPolicy, DestinationRuleError> {
        let place = |own: bool| {
            if own {
                port_at.to_owned()
            } else {
                at.to_owned()
            }
        };
        Ok(TrafficPolicy {
            load_balancer: match lb.0 {
                Some(s) => load_balancer(&format!("{}.loadBalancer", place(lb.1)), s)?,
                None => LoadBalancer::default(),
            },
            connection_pool: match pool.0 {
                Some(s) => connection_pool(&format!("{}.connectionPool", place(pool.1)), s)?,
                None => ConnectionPool::default(),
            },
            outlier_detection: outlier
                .0
                .as_ref()
                .map(|s| outlier_detection(&format!("{}.outlierDetection", place(outlier.1)), s))
                .transpose()?,
        })
    };
    let policy = build(
        (&top.load_balancer, false),
        (&top.connection_pool, false),
        (&top.outlier_detection, false),
        at,
    )?;
    let mut ports = BTreeMap::new();
    for (i, p) in top.port_level_settings.iter().enumerate() {
        let port_at = format!("{at}.portLevelSettings[{i}]");
        let number = match &p.port {
            Some(PortSelector {
                number: n @ 1..=65535,
            }) => *n as u16,
            Some(PortSelector { number }) => {
                return Err(invalid(
                    format!("{port_at}.port.number"),
                    format!("{number} is not a port: it must be between 1 and 65535"),
                ));
            }
            None => {
                return Err(invalid(
                    format!("{port_at}.port"),
                    "is missing: say which Service port these settings are for",
                ));
            }
        };
        if let Some(t) = &p.tls {
            tls(&format!("{port_at}.tls"), t)?;
        }
        let merged = build(
            section(&p.load_balancer, &top.load_balancer),
            section(&p.connection_pool, &top.connection_pool),
            section(&p.outlier_detection, &top.outlier_detection),
            &port_at,
        )?;
        if ports.insert(number, merged).is_some() {
            return Err(invalid(
                format!("{port_at}.port.number"),
                format!("port {number} has settings twice: keep one"),
            ));
        }
    }
    let mut ignored_subsets = Vec::with_capacity(spec.subsets.len());
    for (i, s) in spec.subsets.iter().enumerate() {
        if s.name.is_empty() {
            return Err(invalid(
                format!("spec.subsets[{i}].name"),
                "must not be empty",
            ));
        }
        ignored_subsets.push(s.name.clone());
    }
    Ok(DestinationRule {
        key: format!("{namespace}/{name}"),
        host,
        created,
        policy,
        ports,
        ignored_subsets,
    })
}

/// The rule that applies to each Service (`<namespace>/<name>`): of
/// several for one Service, the oldest, then the first by key.
pub fn by_service<'a>(
    rules: impl IntoIterator<Item = &'a std::sync::Arc<DestinationRule>>,
) -> std::collections::HashMap<String, std::sync::Arc<DestinationRule>> {
    let mut out: std::collections::HashMap<String, std::sync::Arc<DestinationRule>> =
        std::collections::HashMap::new();
    for rule in rules {
        let key = rule.host.key();
        match out.get(&key) {
            Some(held) if held.precedes(rule) => {}
            _ => {
                out.insert(key, rule.clone());
            }
        }
    }
    out
}

/// Istio's DestinationRule resource at `networking.istio.io/v1`, watched
/// untyped: Istio owns the CRD and its versions serve the same shape.
pub fn api_resource() -> kube::api::ApiResource {
    kube::api::ApiResource {
        group: GROUP.into(),
        version: "v1".into(),
        api_version: format!("{GROUP}/v1"),
        kind: KIND.into(),
        plural: "destinationrules".into(),
    }
}

/// Says that a rule's subsets are not applied (once per reading of it).
pub fn log_ignored_subsets(object: &str, rule: &DestinationRule) {
    if !rule.ignored_subsets.is_empty() {
        tracing::info!(
            kind = KIND,
            object,
            subsets = ?rule.ignored_subsets,
            "subsets are not applied: Gateway API routes name Services, never subsets; the rule's traffic policy applies to the whole Service"
        );
    }
}

/// A listed DestinationRule, checked; `last_good` is the version in force
/// before this change, kept (and logged by name and field) when the new
/// one does not validate, as a local file's last good version is.
pub fn from_api(
    o: &kube::api::DynamicObject,
    last_good: Option<&DestinationRule>,
) -> Result<DestinationRule, crate::convert::Invalid> {
    let namespace = o.metadata.namespace.as_deref().unwrap_or("default");
    let name = o.metadata.name.as_deref().unwrap_or_default();
    let object = format!("{namespace}/{name}");
    let checked = serde_json::from_value::<DestinationRuleSpec>(
        o.data.get("spec").cloned().unwrap_or_default(),
    )
    .map_err(|e| invalid("spec", e.to_string()))
    .and_then(|spec| {
        let created = o
            .metadata
            .creation_timestamp
            .as_ref()
            .and_then(|t| serde_json::to_value(t).ok())
            .and_then(|v| v.as_str().map(str::to_owned));
        compile(namespace, name, created, &spec)
    });
    match (checked, last_good) {
        (Ok(rule), _) => {
            log_ignored_subsets(&object, &rule);
            Ok(rule)
        }
        (Err(e), Some(last)) => {
            tracing::warn!(kind = KIND, object = %object, field = %e.field, problem = %e.problem, "object does not validate; its last good version stays in force");
            Ok(last.clone())
        }
        (Err(e), None) => Err(crate::convert::Invalid {
            field: e.field,
            problem: e.problem,
        }),
    }
}

/// A one-line summary of a policy, for `mesh inspect` and logs.
pub fn summary(p: &TrafficPolicy) -> String {
    let mut parts = Vec::new();
    parts.push(match &p.load_balancer {
        LoadBalancer::LeastRequest => "lb LEAST_REQUEST".to_owned(),
        LoadBalancer::RoundRobin => "lb ROUND_ROBIN".to_owned(),
        LoadBalancer::Random => "lb RANDOM".to_owned(),
        LoadBalancer::ConsistentHash(HashKey::Header(h)) => format!("lb hash(header {h})"),
        LoadBalancer::ConsistentHash(HashKey::Cookie { name, .. }) => {
            format!("lb hash(cookie {name})")
        }
        LoadBalancer::ConsistentHash(HashKey::SourceIp) => "lb hash(source ip)".to_owned(),
        LoadBalancer::ConsistentHash(HashKey::QueryParameter(q)) => {
            format!("lb hash(query {q})")
        }
    });
    let c = &p.connection_pool;
    let limits: Vec<String> = [
        ("maxConnections", c.max_connections),
        ("http1MaxPendingRequests", c.http1_max_pending_requests),
        ("http2MaxRequests", c.http2_max_requests),
        ("maxRequestsPerConnection", c.max_requests_per_connection),
        ("maxRetries", c.max_retries),
    ]
    .into_iter()
    .filter_map(|(n, v)| v.map(|v| format!("{n}={v}")))
    .chain(c.connect_timeout.map(|d| format!("connectTimeout={d:?}")))
    .chain(c.idle_timeout.map(|d| format!("idleTimeout={d:?}")))
    .collect();
    if !limits.is_empty() {
        parts.push(format!("pool {}", limits.join(" ")));
    }
    if let Some(o) = &p.outlier_detection {
        let count = |v: Option<NonZeroU32>| v.map_or("off".to_owned(), |v| v.to_string());
        parts.push(format!(
            "outlier 5xx={} gateway={} interval={:?} base={:?} maxEjection={}% minHealth={}%",
            count(o.consecutive_5xx),
            count(o.consecutive_gateway),
            o.interval,
            o.base_ejection,
            o.max_ejection_percent,
            o.min_health_percent
        ));
    }
    parts.join("; ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(yaml: &str) -> DestinationRuleSpec {
        serde_yaml::from_str(yaml).unwrap()
    }

    fn err(yaml: &str) -> DestinationRuleError {
        compile("shop", "dr", None, &spec(yaml)).unwrap_err()
    }

    #[test]
    fn a_full_rule_compiles_into_typed_settings() {
        let dr = compile(
            "shop",
            "dr",
            None,
            &spec(
                r#"
host: web.shop.svc.cluster.local
trafficPolicy:
  loadBalancer: {simple: ROUND_ROBIN}
  connectionPool:
    tcp: {maxConnections: 10, connectTimeout: 250ms}
    http: {http1MaxPendingRequests: 2, http2MaxRequests: 20, maxRequestsPerConnection: 5, maxRetries: 3, idleTimeout: 1m30s}
  outlierDetection: {consecutive5xxErrors: 2, interval: 1s, baseEjectionTime: 300ms}
  tls: {mode: ISTIO_MUTUAL}
  portLevelSettings:
  - port: {number: 81}
    loadBalancer: {consistentHash: {httpHeaderName: X-User}}
subsets: [{name: v1, labels: {version: v1}}]
"#,
            ),
        )
        .unwrap();
        assert_eq!(dr.host.key(), "shop/web");
        assert_eq!(dr.policy.load_balancer, LoadBalancer::RoundRobin);
        let pool = &dr.policy.connection_pool;
        assert_eq!(pool.max_connections.map(NonZeroU32::get), Some(10));
        assert_eq!(pool.connect_timeout, Some(Duration::from_millis(250)));
        assert_eq!(
            pool.http1_max_pending_requests.map(NonZeroU32::get),
            Some(2)
        );
        assert_eq!(pool.http2_max_requests.map(NonZeroU32::get), Some(20));
        assert_eq!(
            pool.max_requests_per_connection.map(NonZeroU32::get),
            Some(5)
        );
        assert_eq!(pool.max_retries.map(NonZeroU32::get), Some(3));
        assert_eq!(pool.idle_timeout, Some(Duration::from_secs(90)));
        let o = dr.policy.outlier_detection.as_ref().unwrap();
        assert_eq!(o.consecutive_5xx.map(NonZeroU32::get), Some(2));
        assert_eq!(o.consecutive_gateway, None);
        assert_eq!(o.interval, Duration::from_secs(1));
        assert_eq!(o.base_ejection, Duration::from_millis(300));
        assert_eq!((o.max_ejection_percent, o.min_health_percent), (10, 0));
        // Port 81 replaces the load balancer and keeps the other sections.
        let p81 = dr.for_port(81);
        assert_eq!(
            p81.load_balancer,
            LoadBalancer::ConsistentHash(HashKey::Header("x-user".into()))
        );
        assert_eq!(p81.connection_pool, dr.policy.connection_pool);
        assert_eq!(p81.outlier_detection, dr.policy.outlier_detection);
        assert_eq!(dr.for_port(80), &dr.policy);
        assert_eq!(dr.ignored_subsets, ["v1"]);
        let s = summary(&dr.policy);
        assert!(
            s.contains("ROUND_ROBIN") && s.contains("maxConnections=10"),
            "{s}"
        );
    }

    #[test]
    fn hosts_are_services_relative_to_the_rules_namespace() {
        let h = |host: &str| service_host("shop", host).map(|h| h.key());
        assert_eq!(h("web").unwrap(), "shop/web");
        assert_eq!(h("web.other").unwrap(), "other/web");
        assert_eq!(h("web.other.svc").unwrap(), "other/web");
        assert_eq!(h("web.other.svc.example.org").unwrap(), "other/web");
        assert!(h("*.shop.svc.cluster.local").is_err());
        assert!(h("web.other.com").is_err());
        assert!(h("Web").is_err());
        assert!(h("").is_err());
    }

    #[test]
    fn outlier_detection_takes_istios_defaults() {
        let dr = compile(
            "shop",
            "dr",
            None,
            &spec("host: web\ntrafficPolicy: {outlierDetection: {}}\n"),
        )
        .unwrap();
        let o = dr.policy.outlier_detection.unwrap();
        assert_eq!(o.consecutive_5xx.map(NonZeroU32::get), Some(5));
        assert_eq!(o.interval, DEFAULT_INTERVAL);
        assert_eq!(o.base_ejection, DEFAULT_BASE_EJECTION);
        assert_eq!(o.max_ejection_percent, 10);
        let off = compile(
            "shop",
            "dr",
            None,
            &spec("host: web\ntrafficPolicy: {outlierDetection: {consecutive5xxErrors: 0, consecutiveGatewayErrors: 3}}\n"),
        )
        .unwrap();
        let o = off.policy.outlier_detection.unwrap();
        assert_eq!(o.consecutive_5xx, None);
        assert_eq!(o.consecutive_gateway.map(NonZeroU32::get), Some(3));
    }

    #[test]
    fn bad_rules_name_the_field() {
        let field = |yaml: &str| err(yaml).field;
        assert_eq!(
            field("host: web\ntrafficPolicy: {outlierDetection: {interval: 10}}\n"),
            "spec.trafficPolicy.outlierDetection.interval"
        );
        assert_eq!(
            field("host: web\ntrafficPolicy: {outlierDetection: {maxEjectionPercent: 101}}\n"),
            "spec.trafficPolicy.outlierDetection.maxEjectionPercent"
        );
        assert_eq!(
            field("host: web\ntrafficPolicy: {connectionPool: {tcp: {maxConnections: -1}}}\n"),
            "spec.trafficPolicy.connectionPool.tcp.maxConnections"
        );
        assert_eq!(
            field("host: web\ntrafficPolicy: {loadBalancer: {simple: PASSTHROUGH}}\n"),
            "spec.trafficPolicy.loadBalancer.simple"
        );
        assert_eq!(
            field("host: web\ntrafficPolicy: {loadBalancer: {consistentHash: {}}}\n"),
            "spec.trafficPolicy.loadBalancer.consistentHash"
        );
        assert_eq!(
            field("host: web\ntrafficPolicy: {portLevelSettings: [{port: {number: 0}}]}\n"),
            "spec.trafficPolicy.portLevelSettings[0].port.number"
        );
        assert_eq!(
            field(
                "host: web\ntrafficPolicy: {portLevelSettings: [{port: {number: 80}, connectionPool: {http: {idleTimeout: 5x}}}]}\n"
            ),
            "spec.trafficPolicy.portLevelSettings[0].connectionPool.http.idleTimeout"
        );
        assert_eq!(
            field("host: web\ntrafficPolicy: {tls: {mode: DISABLE}}\n"),
            "spec.trafficPolicy.tls.mode"
        );
        assert_eq!(
            field("host: web\nworkloadSelector: {matchLabels: {app: web}}\n"),
            "spec.workloadSelector"
        );
        assert_eq!(field("host: '*.shop'\n"), "spec.host");
        let typo = serde_yaml::from_str::<DestinationRuleSpec>(
            "host: web\ntrafficPolicy: {outlierDetection: {consecutiveErrors: 2}}\n",
        )
        .unwrap_err()
        .to_string();
        assert!(typo.contains("consecutiveErrors"), "{typo}");
    }

    #[test]
    fn a_local_file_holds_rules_and_a_bad_one_is_refused_by_line_and_field() {
        use std::path::Path;
        let good = "kind: AgentConfig\n---\napiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: dr, namespace: shop}\nspec:\n  host: web\n  trafficPolicy: {loadBalancer: {simple: RANDOM}}\n";
        let (store, _) = crate::file::parse(Path::new("f.yaml"), good, "AgentConfig").unwrap();
        let dr = store.destination_rules.get("shop/dr").unwrap();
        assert_eq!(dr.policy.load_balancer, LoadBalancer::Random);
        let bad = good.replace("RANDOM", "FASTEST");
        let e = crate::file::parse(Path::new("f.yaml"), &bad, "AgentConfig").unwrap_err();
        let mesh_config::ConfigError::Invalid { line, field, .. } = &e else {
            panic!("{e}");
        };
        assert_eq!(*line, 3);
        assert_eq!(
            field,
            "DestinationRule shop/dr: spec.trafficPolicy.loadBalancer.simple"
        );
        let typo = good.replace("loadBalancer:", "loadBalancing:");
        let e = crate::file::parse(Path::new("f.yaml"), &typo, "AgentConfig").unwrap_err();
        let mesh_config::ConfigError::Yaml { line, message, .. } = &e else {
            panic!("{e}");
        };
        assert_eq!(*line, 8, "{e}");
        assert!(message.contains("loadBalancing"), "{e}");
    }

    #[test]
    fn the_view_gives_each_service_its_rule() {
        use std::path::Path;
        let text = "kind: AgentConfig\nnodeName: n1\n---\nkind: Service\nmetadata: {name: web, namespace: shop}\nspec: {clusterIP: 10.96.0.10, ports: [{name: http, port: 80}]}\n---\nkind: DestinationRule\nmetadata: {name: b, namespace: shop}\nspec: {host: web.shop.svc.cluster.local, trafficPolicy: {loadBalancer: {simple: RANDOM}}}\n---\nkind: DestinationRule\nmetadata: {name: a, namespace: other}\nspec: {host: web.shop, trafficPolicy: {loadBalancer: {simple: ROUND_ROBIN}}}\n";
        let view = crate::NodeConfig::parse(Path::new("f.yaml"), text, None)
            .unwrap()
            .view();
        // Same age (a file has none): the first by key, other/a.
        let dr = view.destination_rule("shop/web").unwrap();
        assert_eq!(dr.key, "other/a");
        assert!(view.destination_rule("shop/db").is_none());
    }

    #[test]
    fn an_api_object_that_stops_validating_keeps_its_last_good_version() {
        let object = |spec: serde_json::Value| {
            serde_json::from_value::<kube::api::DynamicObject>(serde_json::json!({
                "apiVersion": "networking.istio.io/v1",
                "kind": "DestinationRule",
                "metadata": {"name": "dr", "namespace": "shop", "creationTimestamp": "2024-01-02T03:04:05Z"},
                "spec": spec,
            }))
            .unwrap()
        };
        let good = from_api(
            &object(serde_json::json!({"host": "web", "trafficPolicy": {"loadBalancer": {"simple": "RANDOM"}}})),
            None,
        )
        .unwrap();
        assert_eq!(good.created.as_deref(), Some("2024-01-02T03:04:05Z"));
        let bad = object(
            serde_json::json!({"host": "web", "trafficPolicy": {"loadBalancer": {"simpel": "RANDOM"}}}),
        );
        let e = from_api(&bad, None).unwrap_err();
        assert!(e.problem.contains("simpel"), "{}", e.problem);
        assert_eq!(from_api(&bad, Some(&good)).unwrap(), good);
    }

    #[test]
    fn durations_read_as_istio_writes_them() {
        let d = |t: &str| parse_duration("f", t);
        assert_eq!(d("300ms").unwrap(), Duration::from_millis(300));
        assert_eq!(d("1.5s").unwrap(), Duration::from_millis(1500));
        assert_eq!(d("1h2m").unwrap(), Duration::from_secs(3720));
        assert!(d("0s").is_err() && d("5").is_err() && d("s").is_err() && d("25h").is_err());
        assert!(d("").is_err() && d("1d").is_err());
    }

    #[test]
    fn the_oldest_rule_for_a_service_applies_then_the_first_by_name() {
        let rule = |name: &str, created: Option<&str>| {
            std::sync::Arc::new(
                compile(
                    "shop",
                    name,
                    created.map(str::to_owned),
                    &spec("host: web\ntrafficPolicy: {loadBalancer: {simple: RANDOM}}\n"),
                )
                .unwrap(),
            )
        };
        let a = rule("a", Some("2024-02-01T00:00:00Z"));
        let b = rule("b", Some("2024-01-01T00:00:00Z"));
        let c = rule("c", None);
        assert_eq!(by_service([&c, &a, &b])["shop/web"].key, "shop/b");
        let x = rule("x", None);
        let y = rule("y", None);
        assert_eq!(by_service([&y, &x])["shop/web"].key, "shop/x");
    }
}
