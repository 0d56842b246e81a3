//! One route object checked and turned into typed rules, or the first field
//! this mesh cannot apply. Gateway API wants such a route reported as not
//! Accepted (reason UnsupportedValue) rather than applied in part, so nothing
//! here is skipped quietly: every value is either used or refused.

use std::fmt;
use std::time::Duration;

use http::{HeaderName, HeaderValue, Method, StatusCode};
use regex::{Regex, RegexBuilder};

use crate::duration;
use crate::fault::{self, FaultRef};
use crate::spec;

/// The CRD's `maxItems`: enforced here too, since a route read from a file
/// never went through the API server's validation.
const MAX_RULES: usize = 16;
const MAX_MATCHES: usize = 64;
const MAX_LIST: usize = 16;
const MAX_PATH: usize = 1024;
/// Compiled size allowed for one regular expression (the regex crate's own
/// default is 10 MiB, far more than any route needs).
const REGEX_SIZE_LIMIT: usize = 256 * 1024;
const MAX_WEIGHT: i64 = 1_000_000;

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {problem}")]
pub struct RouteError {
    /// The path of the field at fault, e.g. `spec.rules[1].matches[0].path.value`.
    pub field: String,
    pub problem: Problem,
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Problem {
    #[error("invalid regular expression: {0}")]
    InvalidRegex(String),
    #[error("unsupported value {value:?}: {expected}")]
    Unsupported {
        value: String,
        expected: &'static str,
    },
    #[error("invalid value: {0}")]
    Invalid(String),
    #[error("{0}")]
    Conflict(&'static str),
}

fn err<T>(field: impl Into<String>, problem: Problem) -> Result<T, RouteError> {
    Err(RouteError {
        field: field.into(),
        problem,
    })
}

fn unsupported<T>(
    field: impl Into<String>,
    value: &str,
    expected: &'static str,
) -> Result<T, RouteError> {
    err(
        field,
        Problem::Unsupported {
            value: value.to_string(),
            expected,
        },
    )
}

fn invalid<T>(field: impl Into<String>, why: impl Into<String>) -> Result<T, RouteError> {
    err(field, Problem::Invalid(why.into()))
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RouteId {
    pub namespace: String,
    pub name: String,
}

impl fmt::Display for RouteId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RouteKind {
    Http,
    Grpc,
}

/// `metadata.creationTimestamp` (RFC 3339 in UTC, as the API server writes
/// it), ordered by time: the text alone would put `05.5Z` before `05Z`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Timestamp {
    /// year, month, day, hour, minute, second
    fields: [u32; 6],
    nanos: u32,
}

impl Timestamp {
    pub fn parse(text: &str) -> Option<Timestamp> {
        let b = text.as_bytes();
        let body = text.strip_suffix('Z')?;
        if b.len() < 20
            || b[4] != b'-'
            || b[7] != b'-'
            || b[10] != b'T'
            || b[13] != b':'
            || b[16] != b':'
        {
            return None;
        }
        let num = |r: std::ops::Range<usize>| -> Option<u32> {
            let s = body.get(r)?;
            if s.bytes().all(|c| c.is_ascii_digit()) {
                s.parse().ok()
            } else {
                None
            }
        };
        let fields = [
            num(0..4)?,
            num(5..7)?,
            num(8..10)?,
            num(11..13)?,
            num(14..16)?,
            num(17..19)?,
        ];
        let frac = &body[19..];
        let nanos = if frac.is_empty() {
            0
        } else {
            let digits = frac.strip_prefix('.')?;
            if digits.is_empty() || digits.len() > 9 || !digits.bytes().all(|c| c.is_ascii_digit())
            {
                return None;
            }
            digits.parse::<u32>().ok()? * 10u32.pow(9 - digits.len() as u32)
        };
        let [_, month, day, hour, minute, second] = fields;
        if !(1..=12).contains(&month)
            || !(1..=31).contains(&day)
            || hour > 23
            || minute > 59
            || second > 60
        {
            return None;
        }
        Some(Timestamp { fields, nanos })
    }
}

/// A regular expression with the text it came from. Matching is anchored at
/// both ends: Gateway API's RegularExpression matches the whole value.
#[derive(Clone, Debug)]
pub struct Pattern {
    source: String,
    regex: Regex,
}

impl Pattern {
    pub fn new(source: &str) -> Result<Pattern, regex::Error> {
        let regex = RegexBuilder::new(&format!("^(?:{source})$"))
            .size_limit(REGEX_SIZE_LIMIT)
            .build()?;
        Ok(Pattern {
            source: source.to_string(),
            regex,
        })
    }

    pub fn source(&self) -> &str {
        &self.source
    }

    pub fn is_match(&self, text: &str) -> bool {
        self.regex.is_match(text)
    }
}

fn pattern(field: &str, source: &str) -> Result<Pattern, RouteError> {
    Pattern::new(source).map_err(|e| RouteError {
        field: field.to_string(),
        problem: Problem::InvalidRegex(e.to_string()),
    })
}

#[derive(Clone, Debug)]
pub enum PathMatch {
    Exact(String),
    /// Stored without its trailing `/` (`/` itself is stored empty): the
    /// spec ignores a trailing `/` and matches element by element.
    Prefix(String),
    Regex(Pattern),
}

#[derive(Clone, Debug)]
pub enum ValueMatch {
    Exact(String),
    Regex(Pattern),
}

#[derive(Clone, Debug)]
pub struct HeaderMatch {
    pub name: HeaderName,
    pub value: ValueMatch,
}

#[derive(Clone, Debug)]
pub struct QueryMatch {
    /// Compared exactly: query parameter names are case-sensitive.
    pub name: String,
    pub value: ValueMatch,
}

#[derive(Clone, Debug)]
pub struct HttpMatch {
    pub path: PathMatch,
    pub headers: Vec<HeaderMatch>,
    pub query: Vec<QueryMatch>,
    pub method: Option<Method>,
}

#[derive(Clone, Debug)]
pub enum GrpcMethodMatch {
    Exact {
        service: Option<String>,
        method: Option<String>,
    },
    Regex {
        service: Option<Pattern>,
        method: Option<Pattern>,
    },
}

#[derive(Clone, Debug)]
pub struct GrpcMatch {
    /// None matches every method.
    pub method: Option<GrpcMethodMatch>,
    pub headers: Vec<HeaderMatch>,
}

#[derive(Clone, Debug)]
pub enum Matches {
    Http(Vec<HttpMatch>),
    Grpc(Vec<GrpcMatch>),
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HeaderModifier {
    pub set: Vec<(HeaderName, HeaderValue)>,
    pub add: Vec<(HeaderName, HeaderValue)>,
    pub remove: Vec<HeaderName>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scheme {
    Http,
    Https,
}

impl Scheme {
    pub fn as_str(self) -> &'static str {
        match self {
            Scheme::Http => "http",
            Scheme::Https => "https",
        }
    }

    pub fn default_port(self) -> u16 {
        match self {
            Scheme::Http => 80,
            Scheme::Https => 443,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PathModifier {
    ReplaceFullPath(String),
    ReplacePrefixMatch(String),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Redirect {
    pub scheme: Option<Scheme>,
    pub hostname: Option<String>,
    pub port: Option<u16>,
    pub path: Option<PathModifier>,
    pub status: StatusCode,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rewrite {
    pub hostname: Option<String>,
    pub path: Option<PathModifier>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BackendRef {
    pub namespace: String,
    pub name: String,
    pub port: u16,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mirror {
    pub backend: BackendRef,
    /// Share of requests mirrored, `numerator / denominator`; all of them
    /// when the route gives neither `percent` nor `fraction`.
    pub numerator: u32,
    pub denominator: u32,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Filter {
    RequestHeaders(HeaderModifier),
    ResponseHeaders(HeaderModifier),
    Redirect(Redirect),
    Rewrite(Rewrite),
    Mirror(Mirror),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Backend {
    pub target: BackendRef,
    pub weight: u32,
    pub filters: Vec<Filter>,
}

/// A timeout as a route states it: `0s` turns the timeout off.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Timeout {
    Disabled,
    After(Duration),
}

impl Timeout {
    fn from_duration(d: Duration) -> Timeout {
        if d.is_zero() {
            Timeout::Disabled
        } else {
            Timeout::After(d)
        }
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Timeouts {
    pub request: Option<Timeout>,
    pub backend_request: Option<Timeout>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Retry {
    pub codes: Vec<StatusCode>,
    pub attempts: Option<u32>,
    pub backoff: Option<Duration>,
}

#[derive(Clone, Debug)]
pub struct Rule {
    pub index: usize,
    pub name: Option<String>,
    pub matches: Matches,
    pub filters: Vec<Filter>,
    /// The HTTPFaultInjection objects the rule's ExtensionRef filters name,
    /// in order; resolved per request, and one that is missing or invalid
    /// makes the rule answer 500 (an unresolvable filter is never skipped).
    pub faults: Vec<FaultRef>,
    pub backends: Vec<Backend>,
    pub timeouts: Timeouts,
    pub retry: Option<Retry>,
    /// Set when the rule's matches are good but what it does cannot be
    /// applied (filters that cannot go together, a backend of a kind that
    /// is not a Service, ...), in a route compiled with
    /// [`Strictness::KeepRules`]: the requests it takes get 500, as Gateway
    /// API prescribes, rather than falling through to another rule.
    /// Filters, backends, timeouts and retry are then empty.
    pub invalid: Option<RouteError>,
}

/// What a problem in one rule's filters or backends does to the route.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Strictness {
    /// The route is refused (a local file naming the field: fix it first).
    RefuseRoute,
    /// The rule is kept as `Rule::invalid` and answers 500; the route's
    /// status reports the problem (routes from the Kubernetes API).
    KeepRules,
}

#[derive(Clone, Debug)]
pub struct CompiledRoute {
    pub id: RouteId,
    pub kind: RouteKind,
    pub created: Option<Timestamp>,
    pub parents: Vec<spec::ParentRef>,
    pub rules: Vec<Rule>,
}

fn route_header(meta: &spec::ObjectMeta) -> Result<(RouteId, Option<Timestamp>), RouteError> {
    if meta.name.is_empty() {
        return invalid("metadata.name", "empty");
    }
    let created = match &meta.creation_timestamp {
        None => None,
        Some(text) => match Timestamp::parse(text) {
            Some(t) => Some(t),
            None => {
                return invalid(
                    "metadata.creationTimestamp",
                    format!("{text:?} is not an RFC 3339 UTC time"),
                );
            }
        },
    };
    let namespace = meta
        .namespace
        .clone()
        .unwrap_or_else(|| "default".to_string());
    Ok((
        RouteId {
            namespace,
            name: meta.name.clone(),
        },
        created,
    ))
}

fn at_most<T>(field: &str, items: &[T], max: usize) -> Result<(), RouteError> {
    if items.len() > max {
        return invalid(
            field,
            format!("{} items, at most {max} allowed", items.len()),
        );
    }
    Ok(())
}

pub fn compile_http_route(route: &spec::HttpRoute) -> Result<CompiledRoute, RouteError> {
    compile_http_route_with(route, Strictness::RefuseRoute)
}

pub fn compile_http_route_with(
    route: &spec::HttpRoute,
    strictness: Strictness,
) -> Result<CompiledRoute, RouteError> {
    let (id, created) = route_header(&route.metadata)?;
    at_most("spec.rules", &route.spec.rules, MAX_RULES)?;
    let mut rules = Vec::with_capacity(route.spec.rules.len());
    for (index, rule) in route.spec.rules.iter().enumerate() {
        rules.push(http_rule(&id, index, rule, strictness)?);
    }
    Ok(CompiledRoute {
        id,
        kind: RouteKind::Http,
        created,
        parents: route.spec.parent_refs.clone(),
        rules,
    })
}

pub fn compile_grpc_route(route: &spec::GrpcRoute) -> Result<CompiledRoute, RouteError> {
    compile_grpc_route_with(route, Strictness::RefuseRoute)
}

pub fn compile_grpc_route_with(
    route: &spec::GrpcRoute,
    strictness: Strictness,
) -> Result<CompiledRoute, RouteError> {
    let (id, created) = route_header(&route.metadata)?;
    at_most("spec.rules", &route.spec.rules, MAX_RULES)?;
    let mut rules = Vec::with_capacity(route.spec.rules.len().max(1));
    for (index, rule) in route.spec.rules.iter().enumerate() {
        rules.push(grpc_rule(&id, index, rule, strictness)?);
    }
    // No rule at all: the route matches every request and sends it nowhere,
    // which the caller answers as a rule without backends.
    if rules.is_empty() {
        rules.push(grpc_rule(
            &id,
            0,
            &spec::GrpcRouteRule::default(),
            strictness,
        )?);
    }
    Ok(CompiledRoute {
        id,
        kind: RouteKind::Grpc,
        created,
        parents: route.spec.parent_refs.clone(),
        rules,
    })
}

/// What a rule does, once its matches are known.
struct Action {
    filters: Vec<Filter>,
    faults: Vec<FaultRef>,
    backends: Vec<Backend>,
    timeouts: Timeouts,
    retry: Option<Retry>,
}

/// `action`'s result as the rule keeps it: its problem refuses the route,
/// or makes the rule one that answers 500.
fn keep(
    action: Result<Action, RouteError>,
    strictness: Strictness,
) -> Result<(Action, Option<RouteError>), RouteError> {
    match (action, strictness) {
        (Ok(a), _) => Ok((a, None)),
        (Err(e), Strictness::RefuseRoute) => Err(e),
        (Err(e), Strictness::KeepRules) => Ok((
            Action {
                filters: Vec::new(),
                faults: Vec::new(),
                backends: Vec::new(),
                timeouts: Timeouts::default(),
                retry: None,
            },
            Some(e),
        )),
    }
}

/// A rule's matches, compiled; none given is one that matches every
/// request (the kind's default match).
fn rule_matches<S: Default, M>(
    at: &str,
    list: &[S],
    compile: impl Fn(&str, &S) -> Result<M, RouteError>,
) -> Result<Vec<M>, RouteError> {
    at_most(&format!("{at}.matches"), list, MAX_MATCHES)?;
    if list.is_empty() {
        return Ok(vec![compile(&format!("{at}.matches"), &S::default())?]);
    }
    list.iter()
        .enumerate()
        .map(|(i, m)| compile(&format!("{at}.matches[{i}]"), m))
        .collect()
}

fn http_rule(
    id: &RouteId,
    index: usize,
    rule: &spec::HttpRouteRule,
    strictness: Strictness,
) -> Result<Rule, RouteError> {
    let at = format!("spec.rules[{index}]");
    let matches = rule_matches(&at, &rule.matches, http_match)?;
    let action = (|| {
        let (filters, faults) = rule_filters(&at, id, &rule.filters, FilterScope::HttpRule)?;
        check_filter_combination(&at, &rule.filters, &matches)?;
        let backends = backends(&at, id, &rule.backend_refs)?;
        let timeouts = match &rule.timeouts {
            None => Timeouts::default(),
            Some(t) => timeouts(&format!("{at}.timeouts"), t)?,
        };
        let retry = match &rule.retry {
            None => None,
            Some(r) => Some(retry(&format!("{at}.retry"), r)?),
        };
        Ok(Action {
            filters,
            faults,
            backends,
            timeouts,
            retry,
        })
    })();
    let (action, invalid) = keep(action, strictness)?;
    Ok(Rule {
        index,
        name: rule.name.clone(),
        matches: Matches::Http(matches),
        filters: action.filters,
        faults: action.faults,
        backends: action.backends,
        timeouts: action.timeouts,
        retry: action.retry,
        invalid,
    })
}

fn grpc_rule(
    id: &RouteId,
    index: usize,
    rule: &spec::GrpcRouteRule,
    strictness: Strictness,
) -> Result<Rule, RouteError> {
    let at = format!("spec.rules[{index}]");
    let matches = rule_matches(&at, &rule.matches, grpc_match)?;
    let action = (|| {
        let (filters, faults) = rule_filters(&at, id, &rule.filters, FilterScope::GrpcRule)?;
        Ok(Action {
            filters,
            faults,
            backends: backends(&at, id, &rule.backend_refs)?,
            timeouts: Timeouts::default(),
            retry: None,
        })
    })();
    let (action, invalid) = keep(action, strictness)?;
    Ok(Rule {
        index,
        name: rule.name.clone(),
        matches: Matches::Grpc(matches),
        filters: action.filters,
        faults: action.faults,
        backends: action.backends,
        timeouts: action.timeouts,
        retry: action.retry,
        invalid,
    })
}

fn check_path(field: &str, value: &str) -> Result<(), RouteError> {
    if !value.starts_with('/') {
        return invalid(field, format!("{value:?} must start with '/'"));
    }
    if value.len() > MAX_PATH {
        return invalid(field, format!("longer than {MAX_PATH} characters"));
    }
    // What the CRD's validation refuses: paths a client cannot send as such.
    for bad in ["//", "/./", "/../", "%2f", "%2F", "#"] {
        if value.contains(bad) {
            return invalid(field, format!("{value:?} must not contain {bad:?}"));
        }
    }
    if value.ends_with("/..") || value.ends_with("/.") {
        return invalid(field, format!("{value:?} must not end with '/..' or '/.'"));
    }
    if value.bytes().any(|b| !b.is_ascii_graphic()) {
        return invalid(field, format!("{value:?} must be visible ASCII"));
    }
    Ok(())
}

fn http_match(at: &str, m: &spec::HttpRouteMatch) -> Result<HttpMatch, RouteError> {
    let field = format!("{at}.path.value");
    let path = match m.path.kind.as_str() {
        "Exact" => {
            check_path(&field, &m.path.value)?;
            PathMatch::Exact(m.path.value.clone())
        }
        "PathPrefix" => {
            check_path(&field, &m.path.value)?;
            PathMatch::Prefix(m.path.value.trim_end_matches('/').to_string())
        }
        "RegularExpression" => PathMatch::Regex(pattern(&field, &m.path.value)?),
        other => {
            return unsupported(
                format!("{at}.path.type"),
                other,
                "Exact, PathPrefix or RegularExpression",
            );
        }
    };
    let headers = header_matches(&format!("{at}.headers"), &m.headers)?;
    at_most(&format!("{at}.queryParams"), &m.query_params, MAX_LIST)?;
    let mut query: Vec<QueryMatch> = Vec::with_capacity(m.query_params.len());
    for (i, q) in m.query_params.iter().enumerate() {
        let field = format!("{at}.queryParams[{i}]");
        if q.name.is_empty() || q.name.len() > 256 {
            return invalid(format!("{field}.name"), "must be 1 to 256 characters");
        }
        let value = value_match(&field, q)?;
        // The spec: of entries with the same name, only the first counts.
        if !query.iter().any(|e| e.name == q.name) {
            query.push(QueryMatch {
                name: q.name.clone(),
                value,
            });
        }
    }
    let method = match &m.method {
        None => None,
        Some(text) => match text.as_str() {
            "GET" | "HEAD" | "POST" | "PUT" | "DELETE" | "CONNECT" | "OPTIONS" | "TRACE"
            | "PATCH" => Some(Method::from_bytes(text.as_bytes()).expect("a standard method")),
            other => {
                return unsupported(
                    format!("{at}.method"),
                    other,
                    "GET, HEAD, POST, PUT, DELETE, CONNECT, OPTIONS, TRACE or PATCH",
                );
            }
        },
    };
    Ok(HttpMatch {
        path,
        headers,
        query,
        method,
    })
}

fn value_match(field: &str, m: &spec::ValueMatch) -> Result<ValueMatch, RouteError> {
    match m.kind.as_str() {
        "Exact" => Ok(ValueMatch::Exact(m.value.clone())),
        "RegularExpression" => Ok(ValueMatch::Regex(pattern(
            &format!("{field}.value"),
            &m.value,
        )?)),
        other => unsupported(format!("{field}.type"), other, "Exact or RegularExpression"),
    }
}

fn header_name(field: &str, name: &str) -> Result<HeaderName, RouteError> {
    // from_bytes lowercases: header names compare case-insensitively.
    HeaderName::from_bytes(name.as_bytes())
        .or_else(|_| invalid(field, format!("{name:?} is not a header name")))
}

fn header_matches(at: &str, list: &[spec::ValueMatch]) -> Result<Vec<HeaderMatch>, RouteError> {
    at_most(at, list, MAX_LIST)?;
    let mut out: Vec<HeaderMatch> = Vec::with_capacity(list.len());
    for (i, h) in list.iter().enumerate() {
        let field = format!("{at}[{i}]");
        let name = header_name(&format!("{field}.name"), &h.name)?;
        let value = value_match(&field, h)?;
        // The spec: of entries with the same name, only the first counts.
        if !out.iter().any(|e| e.name == name) {
            out.push(HeaderMatch { name, value });
        }
    }
    Ok(out)
}

fn grpc_match(at: &str, m: &spec::GrpcRouteMatch) -> Result<GrpcMatch, RouteError> {
    let method = match &m.method {
        None => None,
        Some(mm) => {
            let field = format!("{at}.method");
            if mm.service.is_none() && mm.method.is_none() {
                return invalid(field, "one or both of service and method must be given");
            }
            Some(match mm.kind.as_str() {
                "Exact" => {
                    if let Some(s) = &mm.service
                        && !is_grpc_service(s)
                    {
                        return invalid(
                            format!("{field}.service"),
                            format!("{s:?} is not a gRPC service name"),
                        );
                    }
                    if let Some(s) = &mm.method
                        && !is_grpc_method(s)
                    {
                        return invalid(
                            format!("{field}.method"),
                            format!("{s:?} is not a gRPC method name"),
                        );
                    }
                    GrpcMethodMatch::Exact {
                        service: mm.service.clone(),
                        method: mm.method.clone(),
                    }
                }
                "RegularExpression" => GrpcMethodMatch::Regex {
                    service: mm
                        .service
                        .as_deref()
                        .map(|s| pattern(&format!("{field}.service"), s))
                        .transpose()?,
                    method: mm
                        .method
                        .as_deref()
                        .map(|s| pattern(&format!("{field}.method"), s))
                        .transpose()?,
                },
                other => {
                    return unsupported(
                        format!("{field}.type"),
                        other,
                        "Exact or RegularExpression",
                    );
                }
            })
        }
    };
    let headers = header_matches(&format!("{at}.headers"), &m.headers)?;
    Ok(GrpcMatch { method, headers })
}

fn is_ident(s: &str, first: impl Fn(u8) -> bool) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && first(b[0])
        && b[1..]
            .iter()
            .all(|c| c.is_ascii_alphanumeric() || *c == b'_')
}

fn is_grpc_service(s: &str) -> bool {
    let s = s.strip_prefix('.').unwrap_or(s);
    s.len() <= 1024
        && s.split('.')
            .all(|part| is_ident(part, |c| c.is_ascii_alphabetic() || c == b'_'))
}

fn is_grpc_method(s: &str) -> bool {
    s.len() <= 1024 && is_ident(s, |c| c.is_ascii_alphabetic() || c == b'_')
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum FilterScope {
    HttpRule,
    GrpcRule,
    Backend,
}

fn rule_filters(
    at: &str,
    id: &RouteId,
    list: &[spec::HttpRouteFilter],
    scope: FilterScope,
) -> Result<(Vec<Filter>, Vec<FaultRef>), RouteError> {
    at_most(&format!("{at}.filters"), list, MAX_LIST)?;
    let mut out: Vec<Filter> = Vec::with_capacity(list.len());
    let mut faults = Vec::new();
    for (i, f) in list.iter().enumerate() {
        let field = format!("{at}.filters[{i}]");
        if f.kind == "ExtensionRef" && scope != FilterScope::Backend {
            faults.push(fault_ref(&field, id, f)?);
            continue;
        }
        let filter = filter(&field, id, f, scope)?;
        // Every type but RequestMirror may appear once per list.
        let repeated = out.iter().any(|o| {
            std::mem::discriminant(o) == std::mem::discriminant(&filter)
                && !matches!(o, Filter::Mirror(_))
        });
        if repeated {
            return invalid(
                format!("{field}.type"),
                format!("{} may appear only once", f.kind),
            );
        }
        out.push(filter);
    }
    Ok((out, faults))
}

/// An ExtensionRef filter: the only extension is an HTTPFaultInjection in
/// the route's own namespace (a local object reference has no namespace).
fn fault_ref(field: &str, id: &RouteId, f: &spec::HttpRouteFilter) -> Result<FaultRef, RouteError> {
    let others = [
        f.request_header_modifier.is_some(),
        f.response_header_modifier.is_some(),
        f.request_redirect.is_some(),
        f.url_rewrite.is_some(),
        f.request_mirror.is_some(),
    ];
    if others.contains(&true) {
        return invalid(field, "only the field of type ExtensionRef may be set");
    }
    let Some(r) = &f.extension_ref else {
        return invalid(field, "type ExtensionRef needs the field extensionRef");
    };
    let at = format!("{field}.extensionRef");
    if r.group != fault::GROUP {
        return unsupported(format!("{at}.group"), &r.group, "mesh.io");
    }
    if r.kind != fault::KIND {
        return unsupported(format!("{at}.kind"), &r.kind, "HTTPFaultInjection");
    }
    if r.name.is_empty() {
        return invalid(format!("{at}.name"), "empty");
    }
    Ok(FaultRef {
        namespace: id.namespace.clone(),
        name: r.name.clone(),
    })
}

fn check_filter_combination(
    at: &str,
    list: &[spec::HttpRouteFilter],
    matches: &[HttpMatch],
) -> Result<(), RouteError> {
    let has = |kind: &str| list.iter().any(|f| f.kind == kind);
    if has("RequestRedirect") && has("URLRewrite") {
        return err(
            format!("{at}.filters"),
            Problem::Conflict("RequestRedirect and URLRewrite cannot be used together in one rule"),
        );
    }
    if has("RequestRedirect") && has("ExtensionRef") {
        return err(
            format!("{at}.filters"),
            Problem::Conflict(
                "a fault injection (ExtensionRef) applies to requests sent on; it cannot be used with RequestRedirect",
            ),
        );
    }
    for (i, f) in list.iter().enumerate() {
        let (path, name) = match (&f.request_redirect, &f.url_rewrite) {
            (Some(r), _) if f.kind == "RequestRedirect" => (&r.path, "requestRedirect"),
            (_, Some(r)) if f.kind == "URLRewrite" => (&r.path, "urlRewrite"),
            _ => continue,
        };
        let replaces_prefix = path
            .as_ref()
            .is_some_and(|p| p.kind == "ReplacePrefixMatch");
        let one_prefix = matches.len() == 1 && matches!(matches[0].path, PathMatch::Prefix(_));
        if replaces_prefix && !one_prefix {
            return err(
                format!("{at}.filters[{i}].{name}.path.replacePrefixMatch"),
                Problem::Conflict(
                    "ReplacePrefixMatch needs the rule to have exactly one match, of type PathPrefix",
                ),
            );
        }
    }
    Ok(())
}

fn filter(
    field: &str,
    id: &RouteId,
    f: &spec::HttpRouteFilter,
    scope: FilterScope,
) -> Result<Filter, RouteError> {
    let set = [
        f.request_header_modifier.is_some(),
        f.response_header_modifier.is_some(),
        f.request_redirect.is_some(),
        f.url_rewrite.is_some(),
        f.request_mirror.is_some(),
        f.extension_ref.is_some(),
    ]
    .iter()
    .filter(|s| **s)
    .count();
    if set > 1 {
        return invalid(
            field,
            format!("only the field of type {} may be set", f.kind),
        );
    }
    let missing = |name: &str| invalid(field, format!("type {} needs the field {name}", f.kind));
    let allowed = match scope {
        FilterScope::HttpRule => {
            "RequestHeaderModifier, ResponseHeaderModifier, RequestRedirect, URLRewrite or RequestMirror"
        }
        FilterScope::GrpcRule | FilterScope::Backend => {
            "RequestHeaderModifier, ResponseHeaderModifier or RequestMirror"
        }
    };
    let type_field = format!("{field}.type");
    match f.kind.as_str() {
        "RequestHeaderModifier" => match &f.request_header_modifier {
            Some(m) => Ok(Filter::RequestHeaders(header_modifier(
                &format!("{field}.requestHeaderModifier"),
                m,
            )?)),
            None => missing("requestHeaderModifier"),
        },
        "ResponseHeaderModifier" => match &f.response_header_modifier {
            Some(m) => Ok(Filter::ResponseHeaders(header_modifier(
                &format!("{field}.responseHeaderModifier"),
                m,
            )?)),
            None => missing("responseHeaderModifier"),
        },
        "RequestMirror" => match &f.request_mirror {
            Some(m) => Ok(Filter::Mirror(mirror(
                &format!("{field}.requestMirror"),
                id,
                m,
            )?)),
            None => missing("requestMirror"),
        },
        "RequestRedirect" if scope == FilterScope::HttpRule => match &f.request_redirect {
            Some(r) => Ok(Filter::Redirect(redirect(
                &format!("{field}.requestRedirect"),
                r,
            )?)),
            None => missing("requestRedirect"),
        },
        "URLRewrite" if scope == FilterScope::HttpRule => match &f.url_rewrite {
            Some(r) => Ok(Filter::Rewrite(rewrite(&format!("{field}.urlRewrite"), r)?)),
            None => missing("urlRewrite"),
        },
        other => unsupported(type_field, other, allowed),
    }
}

fn header_value(field: &str, value: &str) -> Result<HeaderValue, RouteError> {
    HeaderValue::from_str(value)
        .or_else(|_| invalid(field, format!("{value:?} is not a header value")))
}

fn header_pairs(
    at: &str,
    list: &[spec::HeaderValue],
) -> Result<Vec<(HeaderName, HeaderValue)>, RouteError> {
    at_most(at, list, MAX_LIST)?;
    let mut out: Vec<(HeaderName, HeaderValue)> = Vec::with_capacity(list.len());
    for (i, h) in list.iter().enumerate() {
        let name = header_name(&format!("{at}[{i}].name"), &h.name)?;
        let value = header_value(&format!("{at}[{i}].value"), &h.value)?;
        if out.iter().any(|(n, _)| *n == name) {
            return invalid(format!("{at}[{i}].name"), format!("{name} is given twice"));
        }
        out.push((name, value));
    }
    Ok(out)
}

fn header_modifier(at: &str, m: &spec::HeaderModifier) -> Result<HeaderModifier, RouteError> {
    let set = header_pairs(&format!("{at}.set"), &m.set)?;
    let add = header_pairs(&format!("{at}.add"), &m.add)?;
    at_most(&format!("{at}.remove"), &m.remove, MAX_LIST)?;
    let mut remove: Vec<HeaderName> = Vec::with_capacity(m.remove.len());
    for (i, name) in m.remove.iter().enumerate() {
        let field = format!("{at}.remove[{i}]");
        let name = header_name(&field, name)?;
        if remove.contains(&name) {
            return invalid(field, format!("{name} is given twice"));
        }
        remove.push(name);
    }
    Ok(HeaderModifier { set, add, remove })
}

fn port(field: &str, value: i64) -> Result<u16, RouteError> {
    match u16::try_from(value) {
        Ok(p) if p != 0 => Ok(p),
        _ => invalid(field, format!("{value} is not a port (1 to 65535)")),
    }
}

fn hostname(field: &str, value: &str) -> Result<String, RouteError> {
    let ok = !value.is_empty()
        && value.len() <= 253
        && value.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-')
        });
    if ok {
        Ok(value.to_string())
    } else {
        invalid(field, format!("{value:?} is not a lowercase DNS name"))
    }
}

fn path_modifier(at: &str, p: &spec::PathModifier) -> Result<PathModifier, RouteError> {
    let check = |field: String, value: &str, may_be_empty: bool| -> Result<String, RouteError> {
        if !(may_be_empty && value.is_empty()) {
            check_path(&field, value)?;
        }
        Ok(value.to_string())
    };
    match p.kind.as_str() {
        "ReplaceFullPath" => match &p.replace_full_path {
            Some(v) => Ok(PathModifier::ReplaceFullPath(check(
                format!("{at}.replaceFullPath"),
                v,
                false,
            )?)),
            None => invalid(
                format!("{at}.replaceFullPath"),
                "needed by type ReplaceFullPath",
            ),
        },
        "ReplacePrefixMatch" => match &p.replace_prefix_match {
            // The spec's table replaces a prefix with the empty string too.
            Some(v) => Ok(PathModifier::ReplacePrefixMatch(check(
                format!("{at}.replacePrefixMatch"),
                v,
                true,
            )?)),
            None => invalid(
                format!("{at}.replacePrefixMatch"),
                "needed by type ReplacePrefixMatch",
            ),
        },
        other => unsupported(
            format!("{at}.type"),
            other,
            "ReplaceFullPath or ReplacePrefixMatch",
        ),
    }
}

fn redirect(at: &str, r: &spec::RequestRedirect) -> Result<Redirect, RouteError> {
    let scheme = match r.scheme.as_deref() {
        None => None,
        Some("http") => Some(Scheme::Http),
        Some("https") => Some(Scheme::Https),
        Some(other) => return unsupported(format!("{at}.scheme"), other, "http or https"),
    };
    let hostname = r
        .hostname
        .as_deref()
        .map(|h| hostname(&format!("{at}.hostname"), h))
        .transpose()?;
    let port = r.port.map(|p| port(&format!("{at}.port"), p)).transpose()?;
    let path = r
        .path
        .as_ref()
        .map(|p| path_modifier(&format!("{at}.path"), p))
        .transpose()?;
    let status = match r.status_code {
        301 | 302 | 303 | 307 | 308 => {
            StatusCode::from_u16(r.status_code as u16).expect("a redirect status")
        }
        other => {
            return unsupported(
                format!("{at}.statusCode"),
                &other.to_string(),
                "301, 302, 303, 307 or 308",
            );
        }
    };
    Ok(Redirect {
        scheme,
        hostname,
        port,
        path,
        status,
    })
}

fn rewrite(at: &str, r: &spec::UrlRewrite) -> Result<Rewrite, RouteError> {
    let hostname = r
        .hostname
        .as_deref()
        .map(|h| hostname(&format!("{at}.hostname"), h))
        .transpose()?;
    let path = r
        .path
        .as_ref()
        .map(|p| path_modifier(&format!("{at}.path"), p))
        .transpose()?;
    Ok(Rewrite { hostname, path })
}

fn backend_ref(
    at: &str,
    id: &RouteId,
    r: &spec::BackendObjectRef,
) -> Result<BackendRef, RouteError> {
    if !(r.group.is_empty() || r.group == "core") {
        return unsupported(format!("{at}.group"), &r.group, "the core group (\"\")");
    }
    if r.kind != "Service" {
        return unsupported(format!("{at}.kind"), &r.kind, "Service");
    }
    if r.name.is_empty() {
        return invalid(format!("{at}.name"), "empty");
    }
    let port = match r.port {
        Some(p) => port(&format!("{at}.port"), p)?,
        None => return invalid(format!("{at}.port"), "a Service backend needs a port"),
    };
    let namespace = r.namespace.clone().unwrap_or_else(|| id.namespace.clone());
    Ok(BackendRef {
        namespace,
        name: r.name.clone(),
        port,
    })
}

fn mirror(at: &str, id: &RouteId, m: &spec::RequestMirror) -> Result<Mirror, RouteError> {
    let backend = backend_ref(&format!("{at}.backendRef"), id, &m.backend_ref)?;
    let (numerator, denominator) = match (m.percent, &m.fraction) {
        (Some(_), Some(_)) => return invalid(at, "percent and fraction cannot both be given"),
        (Some(p), None) if (0..=100).contains(&p) => (p as u32, 100),
        (Some(p), None) => {
            return invalid(
                format!("{at}.percent"),
                format!("{p} is not within 0 to 100"),
            );
        }
        (None, Some(f)) => {
            if f.denominator < 1 || f.denominator > i64::from(u32::MAX) {
                return invalid(
                    format!("{at}.fraction.denominator"),
                    format!("{} must be positive", f.denominator),
                );
            }
            if f.numerator < 0 || f.numerator > f.denominator {
                return invalid(
                    format!("{at}.fraction.numerator"),
                    "must be within 0 and the denominator",
                );
            }
            (f.numerator as u32, f.denominator as u32)
        }
        (None, None) => (1, 1),
    };
    Ok(Mirror {
        backend,
        numerator,
        denominator,
    })
}

fn backends(
    at: &str,
    id: &RouteId,
    list: &[spec::HttpBackendRef],
) -> Result<Vec<Backend>, RouteError> {
    at_most(&format!("{at}.backendRefs"), list, MAX_LIST)?;
    let mut out = Vec::with_capacity(list.len());
    for (i, b) in list.iter().enumerate() {
        let field = format!("{at}.backendRefs[{i}]");
        let target = backend_ref(&field, id, &b.target)?;
        if !(0..=MAX_WEIGHT).contains(&b.weight) {
            return invalid(
                format!("{field}.weight"),
                format!("{} is not within 0 to {MAX_WEIGHT}", b.weight),
            );
        }
        // The Backend scope diverts no filter to faults.
        let (filters, _) = rule_filters(&field, id, &b.filters, FilterScope::Backend)?;
        out.push(Backend {
            target,
            weight: b.weight as u32,
            filters,
        });
    }
    Ok(out)
}

fn parse_duration(field: &str, text: &str) -> Result<Duration, RouteError> {
    duration::parse(text).or_else(|e| invalid(field, e.to_string()))
}

fn timeouts(at: &str, t: &spec::HttpRouteTimeouts) -> Result<Timeouts, RouteError> {
    let request = t
        .request
        .as_deref()
        .map(|s| parse_duration(&format!("{at}.request"), s))
        .transpose()?;
    let backend = t
        .backend_request
        .as_deref()
        .map(|s| parse_duration(&format!("{at}.backendRequest"), s))
        .transpose()?;
    if let (Some(r), Some(b)) = (request, backend)
        && !r.is_zero()
        && b > r
    {
        return invalid(
            format!("{at}.backendRequest"),
            "must not be longer than request",
        );
    }
    Ok(Timeouts {
        request: request.map(Timeout::from_duration),
        backend_request: backend.map(Timeout::from_duration),
    })
}

fn retry(at: &str, r: &spec::HttpRouteRetry) -> Result<Retry, RouteError> {
    at_most(&format!("{at}.codes"), &r.codes, 200)?;
    let mut codes = Vec::with_capacity(r.codes.len());
    for (i, c) in r.codes.iter().enumerate() {
        match *c {
            400..=599 => codes.push(StatusCode::from_u16(*c as u16).expect("a status code")),
            other => {
                return invalid(
                    format!("{at}.codes[{i}]"),
                    format!("{other} is not within 400 to 599"),
                );
            }
        }
    }
    let attempts = match r.attempts {
        None => None,
        Some(a) => match u32::try_from(a) {
            Ok(a) => Some(a),
            Err(_) => {
                return invalid(
                    format!("{at}.attempts"),
                    format!("{a} is not a count of attempts"),
                );
            }
        },
    };
    let backoff = r
        .backoff
        .as_deref()
        .map(|s| parse_duration(&format!("{at}.backoff"), s))
        .transpose()?;
    Ok(Retry {
        codes,
        attempts,
        backoff,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(spec: &str) -> spec::HttpRoute {
        serde_json::from_str(&format!(
            r#"{{"metadata":{{"name":"r","namespace":"ns"}},"spec":{spec}}}"#
        ))
        .unwrap()
    }

    fn compile(spec: &str) -> Result<CompiledRoute, RouteError> {
        compile_http_route(&route(spec))
    }

    fn field_of(spec: &str) -> String {
        compile(spec).expect_err(spec).field
    }

    fn grpc(spec: &str) -> Result<CompiledRoute, RouteError> {
        let r: spec::GrpcRoute = serde_json::from_str(&format!(
            r#"{{"metadata":{{"name":"g","namespace":"ns"}},"spec":{spec}}}"#
        ))
        .unwrap();
        compile_grpc_route(&r)
    }

    fn http_matches(r: &CompiledRoute, rule: usize) -> &[HttpMatch] {
        match &r.rules[rule].matches {
            Matches::Http(m) => m,
            Matches::Grpc(_) => panic!("an HTTP rule"),
        }
    }

    #[test]
    fn conformance_matching_route_compiles() {
        // conformance/tests/httproute-matching.yaml (kubernetes-sigs/gateway-api).
        let r = compile(
            r#"{"rules":[
              {"matches":[{"path":{"type":"PathPrefix","value":"/"}},{"headers":[{"name":"version","value":"one"}]}],
               "backendRefs":[{"name":"infra-backend-v1","port":8080}]},
              {"matches":[{"path":{"type":"PathPrefix","value":"/v2"}},{"headers":[{"name":"version","value":"two"}]}],
               "backendRefs":[{"name":"infra-backend-v2","port":8080}]}]}"#,
        )
        .unwrap();
        assert_eq!(r.id.to_string(), "ns/r");
        assert_eq!(r.rules.len(), 2);
        assert!(matches!(&http_matches(&r, 1)[0].path, PathMatch::Prefix(p) if p == "/v2"));
        assert!(matches!(&http_matches(&r, 1)[1].path, PathMatch::Prefix(p) if p.is_empty()));
        assert_eq!(
            r.rules[1].backends[0].target,
            BackendRef {
                namespace: "ns".into(),
                name: "infra-backend-v2".into(),
                port: 8080
            }
        );
        assert_eq!(r.rules[1].backends[0].weight, 1);
    }

    #[test]
    fn typed_values() {
        let r = compile(
            r#"{"rules":[{"name":"main","matches":[{"path":{"type":"PathPrefix","value":"/v2/"},"method":"POST",
                "headers":[{"name":"X-Version","value":"1"},{"name":"x-version","value":"2"}],
                "queryParams":[{"name":"Q","type":"RegularExpression","value":"a+"}]}],
              "timeouts":{"request":"10s","backendRequest":"1s500ms"},
              "retry":{"codes":[503],"attempts":2,"backoff":"100ms"},
              "filters":[{"type":"RequestHeaderModifier","requestHeaderModifier":{"set":[{"name":"X-A","value":"b"}],"remove":["X-Gone"]}},
                         {"type":"RequestMirror","requestMirror":{"backendRef":{"name":"m","port":80},"percent":25}}]}]}"#,
        )
        .unwrap();
        let rule = &r.rules[0];
        assert_eq!(rule.name.as_deref(), Some("main"));
        let m = &http_matches(&r, 0)[0];
        assert!(matches!(&m.path, PathMatch::Prefix(p) if p == "/v2"));
        assert_eq!(m.method, Some(Method::POST));
        // Names lowercased; of two entries with one name only the first counts.
        assert_eq!(m.headers.len(), 1);
        assert_eq!(m.headers[0].name.as_str(), "x-version");
        assert!(matches!(&m.headers[0].value, ValueMatch::Exact(v) if v == "1"));
        assert!(
            matches!(&m.query[0].value, ValueMatch::Regex(p) if p.is_match("aaa") && !p.is_match("aab"))
        );
        assert_eq!(
            rule.timeouts.request,
            Some(Timeout::After(Duration::from_secs(10)))
        );
        assert_eq!(
            rule.timeouts.backend_request,
            Some(Timeout::After(Duration::from_millis(1500)))
        );
        assert_eq!(
            rule.retry,
            Some(Retry {
                codes: vec![StatusCode::SERVICE_UNAVAILABLE],
                attempts: Some(2),
                backoff: Some(Duration::from_millis(100))
            })
        );
        let Filter::RequestHeaders(h) = &rule.filters[0] else {
            panic!("a header modifier")
        };
        assert_eq!(h.set[0].0.as_str(), "x-a");
        assert_eq!(h.remove[0].as_str(), "x-gone");
        let Filter::Mirror(mirror) = &rule.filters[1] else {
            panic!("a mirror")
        };
        assert_eq!((mirror.numerator, mirror.denominator), (25, 100));
    }

    #[test]
    fn zero_timeout_disables() {
        let r =
            compile(r#"{"rules":[{"timeouts":{"request":"0s","backendRequest":"5s"}}]}"#).unwrap();
        assert_eq!(r.rules[0].timeouts.request, Some(Timeout::Disabled));
        assert_eq!(
            r.rules[0].timeouts.backend_request,
            Some(Timeout::After(Duration::from_secs(5)))
        );
    }

    #[test]
    fn errors_name_the_field() {
        let cases = [
            (
                r#"{"rules":[{},{"matches":[{"path":{"type":"RegularExpression","value":"/(a"}}]}]}"#,
                "spec.rules[1].matches[0].path.value",
            ),
            (
                r#"{"rules":[{"matches":[{"path":{"type":"Glob","value":"/a"}}]}]}"#,
                "spec.rules[0].matches[0].path.type",
            ),
            (
                r#"{"rules":[{"matches":[{"path":{"type":"Exact","value":"a"}}]}]}"#,
                "spec.rules[0].matches[0].path.value",
            ),
            (
                r#"{"rules":[{"matches":[{"path":{"value":"/a//b"}}]}]}"#,
                "spec.rules[0].matches[0].path.value",
            ),
            (
                r#"{"rules":[{"matches":[{"headers":[{"name":"bad name","value":"x"}]}]}]}"#,
                "spec.rules[0].matches[0].headers[0].name",
            ),
            (
                r#"{"rules":[{"matches":[{"headers":[{"type":"RegularExpression","name":"a","value":"("}]}]}]}"#,
                "spec.rules[0].matches[0].headers[0].value",
            ),
            (
                r#"{"rules":[{"matches":[{"queryParams":[{"type":"Prefix","name":"a","value":"x"}]}]}]}"#,
                "spec.rules[0].matches[0].queryParams[0].type",
            ),
            (
                r#"{"rules":[{"matches":[{"method":"BREW"}]}]}"#,
                "spec.rules[0].matches[0].method",
            ),
            (
                r#"{"rules":[{"backendRefs":[{"name":"b","port":80,"weight":1000001}]}]}"#,
                "spec.rules[0].backendRefs[0].weight",
            ),
            (
                r#"{"rules":[{"backendRefs":[{"name":"b","port":80,"weight":-1}]}]}"#,
                "spec.rules[0].backendRefs[0].weight",
            ),
            (
                r#"{"rules":[{"backendRefs":[{"name":"b"}]}]}"#,
                "spec.rules[0].backendRefs[0].port",
            ),
            (
                r#"{"rules":[{"backendRefs":[{"name":"b","port":70000}]}]}"#,
                "spec.rules[0].backendRefs[0].port",
            ),
            (
                r#"{"rules":[{"backendRefs":[{"kind":"ServiceImport","group":"multicluster.x-k8s.io","name":"b","port":80}]}]}"#,
                "spec.rules[0].backendRefs[0].group",
            ),
            (
                r#"{"rules":[{"backendRefs":[{"kind":"Pod","name":"b","port":80}]}]}"#,
                "spec.rules[0].backendRefs[0].kind",
            ),
            (
                r#"{"rules":[{"filters":[{"type":"ExtensionRef","extensionRef":{"group":"x","kind":"y","name":"z"}}]}]}"#,
                "spec.rules[0].filters[0].extensionRef.group",
            ),
            (
                r#"{"rules":[{"filters":[{"type":"ExtensionRef","extensionRef":{"group":"mesh.io","kind":"y","name":"z"}}]}]}"#,
                "spec.rules[0].filters[0].extensionRef.kind",
            ),
            (
                r#"{"rules":[{"filters":[{"type":"ExtensionRef"}]}]}"#,
                "spec.rules[0].filters[0]",
            ),
            (
                r#"{"rules":[{"filters":[{"type":"RequestRedirect","requestRedirect":{"hostname":"x"}},{"type":"ExtensionRef","extensionRef":{"group":"mesh.io","kind":"HTTPFaultInjection","name":"z"}}]}]}"#,
                "spec.rules[0].filters",
            ),
            (
                r#"{"rules":[{"backendRefs":[{"name":"b","port":80,"filters":[{"type":"ExtensionRef","extensionRef":{"group":"mesh.io","kind":"HTTPFaultInjection","name":"z"}}]}]}]}"#,
                "spec.rules[0].backendRefs[0].filters[0].type",
            ),
            (
                r#"{"rules":[{"filters":[{"type":"CORS"}]}]}"#,
                "spec.rules[0].filters[0].type",
            ),
            (
                r#"{"rules":[{"filters":[{"type":"RequestHeaderModifier"}]}]}"#,
                "spec.rules[0].filters[0]",
            ),
            (
                r#"{"rules":[{"filters":[{"type":"RequestHeaderModifier","requestHeaderModifier":{}},{"type":"RequestHeaderModifier","requestHeaderModifier":{}}]}]}"#,
                "spec.rules[0].filters[1].type",
            ),
            (
                r#"{"rules":[{"filters":[{"type":"RequestHeaderModifier","requestHeaderModifier":{"add":[{"name":"a","value":"1"},{"name":"A","value":"2"}]}}]}]}"#,
                "spec.rules[0].filters[0].requestHeaderModifier.add[1].name",
            ),
            (
                r#"{"rules":[{"filters":[{"type":"RequestHeaderModifier","requestHeaderModifier":{"set":[{"name":"a","value":"x\ny"}]}}]}]}"#,
                "spec.rules[0].filters[0].requestHeaderModifier.set[0].value",
            ),
            (
                r#"{"rules":[{"filters":[{"type":"RequestRedirect","requestRedirect":{"scheme":"ftp"}}]}]}"#,
                "spec.rules[0].filters[0].requestRedirect.scheme",
            ),
            (
                r#"{"rules":[{"filters":[{"type":"RequestRedirect","requestRedirect":{"statusCode":304}}]}]}"#,
                "spec.rules[0].filters[0].requestRedirect.statusCode",
            ),
            (
                r#"{"rules":[{"filters":[{"type":"RequestRedirect","requestRedirect":{"hostname":"Example.org"}}]}]}"#,
                "spec.rules[0].filters[0].requestRedirect.hostname",
            ),
            (
                r#"{"rules":[{"filters":[{"type":"RequestRedirect","requestRedirect":{"port":0}}]}]}"#,
                "spec.rules[0].filters[0].requestRedirect.port",
            ),
            (
                r#"{"rules":[{"filters":[{"type":"URLRewrite","urlRewrite":{"path":{"type":"ReplaceFullPath"}}}]}]}"#,
                "spec.rules[0].filters[0].urlRewrite.path.replaceFullPath",
            ),
            (
                r#"{"rules":[{"filters":[{"type":"URLRewrite","urlRewrite":{"path":{"type":"ReplaceRegex","replaceFullPath":"/"}}}]}]}"#,
                "spec.rules[0].filters[0].urlRewrite.path.type",
            ),
            (
                r#"{"rules":[{"filters":[{"type":"RequestRedirect","requestRedirect":{}},{"type":"URLRewrite","urlRewrite":{}}]}]}"#,
                "spec.rules[0].filters",
            ),
            (
                r#"{"rules":[{"matches":[{"path":{"type":"Exact","value":"/a"}}],"filters":[{"type":"URLRewrite","urlRewrite":{"path":{"type":"ReplacePrefixMatch","replacePrefixMatch":"/b"}}}]}]}"#,
                "spec.rules[0].filters[0].urlRewrite.path.replacePrefixMatch",
            ),
            (
                r#"{"rules":[{"matches":[{"path":{"value":"/a"}},{"path":{"value":"/b"}}],"filters":[{"type":"RequestRedirect","requestRedirect":{"path":{"type":"ReplacePrefixMatch","replacePrefixMatch":"/c"}}}]}]}"#,
                "spec.rules[0].filters[0].requestRedirect.path.replacePrefixMatch",
            ),
            (
                r#"{"rules":[{"filters":[{"type":"RequestMirror","requestMirror":{"backendRef":{"name":"m","port":80},"percent":101}}]}]}"#,
                "spec.rules[0].filters[0].requestMirror.percent",
            ),
            (
                r#"{"rules":[{"filters":[{"type":"RequestMirror","requestMirror":{"backendRef":{"name":"m","port":80},"fraction":{"numerator":3,"denominator":2}}}]}]}"#,
                "spec.rules[0].filters[0].requestMirror.fraction.numerator",
            ),
            (
                r#"{"rules":[{"filters":[{"type":"RequestMirror","requestMirror":{"backendRef":{"name":"m","port":80},"percent":1,"fraction":{"numerator":1}}}]}]}"#,
                "spec.rules[0].filters[0].requestMirror",
            ),
            (
                r#"{"rules":[{"backendRefs":[{"name":"b","port":80,"filters":[{"type":"RequestRedirect","requestRedirect":{}}]}]}]}"#,
                "spec.rules[0].backendRefs[0].filters[0].type",
            ),
            (
                r#"{"rules":[{"timeouts":{"request":"1.5s"}}]}"#,
                "spec.rules[0].timeouts.request",
            ),
            (
                r#"{"rules":[{"timeouts":{"request":"1s","backendRequest":"2s"}}]}"#,
                "spec.rules[0].timeouts.backendRequest",
            ),
            (
                r#"{"rules":[{"retry":{"codes":[200]}}]}"#,
                "spec.rules[0].retry.codes[0]",
            ),
            (
                r#"{"rules":[{"retry":{"attempts":-1}}]}"#,
                "spec.rules[0].retry.attempts",
            ),
            (
                r#"{"rules":[{"retry":{"backoff":"1d"}}]}"#,
                "spec.rules[0].retry.backoff",
            ),
        ];
        for (spec, field) in cases {
            assert_eq!(field_of(spec), field, "{spec}");
        }
        let too_many = format!(r#"{{"rules":[{}]}}"#, vec!["{}"; 17].join(","));
        assert_eq!(field_of(&too_many), "spec.rules");
    }

    #[test]
    fn problems_say_what_is_wrong() {
        let e = compile(
            r#"{"rules":[{"matches":[{"path":{"type":"RegularExpression","value":"(a"}}]}]}"#,
        )
        .unwrap_err();
        assert!(matches!(e.problem, Problem::InvalidRegex(_)));
        let e = compile(r#"{"rules":[{"filters":[{"type":"RequestRedirect","requestRedirect":{}},{"type":"URLRewrite","urlRewrite":{}}]}]}"#)
            .unwrap_err();
        assert!(matches!(e.problem, Problem::Conflict(_)));
        let e = compile(r#"{"rules":[{"matches":[{"method":"BREW"}]}]}"#).unwrap_err();
        assert!(matches!(e.problem, Problem::Unsupported { ref value, .. } if value == "BREW"));
        assert!(
            e.to_string()
                .starts_with("spec.rules[0].matches[0].method: unsupported value \"BREW\"")
        );
    }

    #[test]
    fn replace_prefix_match_with_the_default_match_is_accepted() {
        // No match given: the default PathPrefix "/" is the rule's one match.
        compile(r#"{"rules":[{"filters":[{"type":"URLRewrite","urlRewrite":{"path":{"type":"ReplacePrefixMatch","replacePrefixMatch":"/b"}}}]}]}"#)
            .unwrap();
    }

    #[test]
    fn metadata() {
        let mut r = route("{}");
        r.metadata.creation_timestamp = Some("2024-13-01T00:00:00Z".into());
        assert_eq!(
            compile_http_route(&r).unwrap_err().field,
            "metadata.creationTimestamp"
        );
        r.metadata.creation_timestamp = None;
        r.metadata.namespace = None;
        assert_eq!(compile_http_route(&r).unwrap().id.namespace, "default");
        r.metadata.name = String::new();
        assert_eq!(compile_http_route(&r).unwrap_err().field, "metadata.name");
    }

    #[test]
    fn timestamps_order_by_time() {
        let t = |s| Timestamp::parse(s).unwrap();
        assert!(t("2024-01-01T00:00:05Z") < t("2024-01-01T00:00:05.5Z"));
        assert!(t("2023-12-31T23:59:59.999Z") < t("2024-01-01T00:00:00Z"));
        for bad in [
            "2024-01-01",
            "2024-01-01T00:00:00",
            "2024-01-01T00:00:00+01:00",
            "2024-01-01T00:00:00.Z",
            "2024-01-01T24:00:00Z",
        ] {
            assert_eq!(Timestamp::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn grpc_rules() {
        let r = grpc(
            r#"{"rules":[{"matches":[{"method":{"service":"pkg.Svc","method":"Get"},"headers":[{"name":"X-A","value":"1"}]}],
                          "backendRefs":[{"name":"b","port":9000}]},
                         {"backendRefs":[{"name":"c","port":9000}]}]}"#,
        )
        .unwrap();
        assert_eq!(r.kind, RouteKind::Grpc);
        let Matches::Grpc(m) = &r.rules[1].matches else {
            panic!("gRPC")
        };
        assert!(m.len() == 1 && m[0].method.is_none() && m[0].headers.is_empty());
        assert_eq!(grpc("{}").unwrap().rules.len(), 1);
        let cases = [
            (
                r#"{"rules":[{"matches":[{"method":{}}]}]}"#,
                "spec.rules[0].matches[0].method",
            ),
            (
                r#"{"rules":[{"matches":[{"method":{"service":"a/b"}}]}]}"#,
                "spec.rules[0].matches[0].method.service",
            ),
            (
                r#"{"rules":[{"matches":[{"method":{"method":"Get.x"}}]}]}"#,
                "spec.rules[0].matches[0].method.method",
            ),
            (
                r#"{"rules":[{"matches":[{"method":{"type":"RegularExpression","method":"("}}]}]}"#,
                "spec.rules[0].matches[0].method.method",
            ),
            (
                r#"{"rules":[{"matches":[{"method":{"type":"Prefix","method":"G"}}]}]}"#,
                "spec.rules[0].matches[0].method.type",
            ),
            (
                r#"{"rules":[{"filters":[{"type":"RequestRedirect","requestRedirect":{}}]}]}"#,
                "spec.rules[0].filters[0].type",
            ),
            (
                r#"{"rules":[{"filters":[{"type":"URLRewrite","urlRewrite":{}}]}]}"#,
                "spec.rules[0].filters[0].type",
            ),
        ];
        for (spec, field) in cases {
            assert_eq!(grpc(spec).expect_err(spec).field, field, "{spec}");
        }
    }

    /// From the API, a rule whose filters cannot go together is kept and
    /// answers 500 (its status says why); from a local file the route is
    /// refused. The other rules stay as they are.
    #[test]
    fn keep_rules_makes_a_bad_rule_answer_500_instead_of_refusing_the_route() {
        let route: spec::HttpRoute = serde_json::from_str(
            r#"{"metadata":{"name":"r","namespace":"ns"},"spec":{"rules":[
              {"matches":[{"path":{"type":"PathPrefix","value":"/a"}}],
               "filters":[{"type":"RequestRedirect","requestRedirect":{"hostname":"x"}},
                          {"type":"URLRewrite","urlRewrite":{"hostname":"y"}}]},
              {"backendRefs":[{"name":"b","port":80}]}]}}"#,
        )
        .unwrap();
        let refused = compile_http_route(&route).unwrap_err();
        assert_eq!(refused.field, "spec.rules[0].filters");
        let kept = compile_http_route_with(&route, Strictness::KeepRules).unwrap();
        assert_eq!(kept.rules.len(), 2);
        let bad = kept.rules[0].invalid.as_ref().unwrap();
        assert_eq!(bad, &refused);
        assert!(kept.rules[0].filters.is_empty() && kept.rules[0].backends.is_empty());
        assert!(matches!(&kept.rules[0].matches, Matches::Http(m) if m.len() == 1));
        assert!(kept.rules[1].invalid.is_none());
        assert_eq!(kept.rules[1].backends.len(), 1);
        // A bad match still refuses the route: it cannot be placed.
        let bad_match: spec::HttpRoute = serde_json::from_str(
            r#"{"metadata":{"name":"r"},"spec":{"rules":[{"matches":[{"path":{"type":"RegularExpression","value":"("}}]}]}}"#,
        )
        .unwrap();
        assert!(compile_http_route_with(&bad_match, Strictness::KeepRules).is_err());
    }

    #[test]
    fn an_extension_ref_names_a_fault_in_the_routes_namespace() {
        let r = compile(
            r#"{"rules":[{"filters":[{"type":"ExtensionRef","extensionRef":{"group":"mesh.io","kind":"HTTPFaultInjection","name":"slow"}}],
                          "backendRefs":[{"name":"b","port":80}]}]}"#,
        )
        .unwrap();
        assert!(r.rules[0].filters.is_empty());
        assert_eq!(
            r.rules[0].faults,
            vec![FaultRef {
                namespace: "ns".into(),
                name: "slow".into()
            }]
        );
        let g = grpc(
            r#"{"rules":[{"filters":[{"type":"ExtensionRef","extensionRef":{"group":"mesh.io","kind":"HTTPFaultInjection","name":"f"}}]}]}"#,
        )
        .unwrap();
        assert_eq!(g.rules[0].faults[0].name, "f");
    }
}
