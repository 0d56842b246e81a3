//! A compiled rule's matches, filters, backends, timeouts and retry as
//! `mesh inspect` shows them: plain serializable values (for `-o json`)
//! that also read as one line each (for people). Pure.
use std::{fmt, time::Duration};

use mesh_route::compile::{
    Backend, Filter, GrpcMatch, GrpcMethodMatch, HeaderModifier, HttpMatch, Matches, PathMatch,
    PathModifier, Retry, Rule, Timeout, Timeouts, ValueMatch,
};
use serde::Serialize;

#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "camelCase")]
pub enum MatchView {
    Http {
        path: PathView,
        #[serde(skip_serializing_if = "Option::is_none")]
        method: Option<String>,
        #[serde(skip_serializing_if = "Vec::is_empty")]
        headers: Vec<ValueView>,
        #[serde(skip_serializing_if = "Vec::is_empty")]
        query: Vec<ValueView>,
    },
    Grpc {
        #[serde(skip_serializing_if = "Option::is_none")]
        method: Option<GrpcMethodView>,
        #[serde(skip_serializing_if = "Vec::is_empty")]
        headers: Vec<ValueView>,
    },
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct PathView {
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub value: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ValueView {
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub name: String,
    pub value: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct GrpcMethodView {
    #[serde(rename = "type")]
    pub kind: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
}

const EXACT: &str = "Exact";
const REGEX: &str = "RegularExpression";

fn value_view(name: &str, m: &ValueMatch) -> ValueView {
    let (kind, value) = match m {
        ValueMatch::Exact(v) => (EXACT, v.clone()),
        ValueMatch::Regex(p) => (REGEX, p.source().to_owned()),
    };
    ValueView {
        kind,
        name: name.to_owned(),
        value,
    }
}

impl MatchView {
    /// Match `index` of the rule; `None` when the rule has no such match.
    pub fn of(rule: &Rule, index: usize) -> Option<MatchView> {
        match &rule.matches {
            Matches::Http(m) => m.get(index).map(MatchView::http),
            Matches::Grpc(m) => m.get(index).map(MatchView::grpc),
        }
    }

    fn http(m: &HttpMatch) -> MatchView {
        let path = match &m.path {
            PathMatch::Exact(p) => PathView {
                kind: EXACT,
                value: p.clone(),
            },
            // Stored without its trailing '/', `/` itself as empty.
            PathMatch::Prefix(p) => PathView {
                kind: "PathPrefix",
                value: if p.is_empty() { "/".into() } else { p.clone() },
            },
            PathMatch::Regex(p) => PathView {
                kind: REGEX,
                value: p.source().to_owned(),
            },
        };
        MatchView::Http {
            path,
            method: m.method.as_ref().map(ToString::to_string),
            headers: m
                .headers
                .iter()
                .map(|h| value_view(h.name.as_str(), &h.value))
                .collect(),
            query: m
                .query
                .iter()
                .map(|q| value_view(&q.name, &q.value))
                .collect(),
        }
    }

    fn grpc(m: &GrpcMatch) -> MatchView {
        let method = m.method.as_ref().map(|g| match g {
            GrpcMethodMatch::Exact { service, method } => GrpcMethodView {
                kind: EXACT,
                service: service.clone(),
                method: method.clone(),
            },
            GrpcMethodMatch::Regex { service, method } => GrpcMethodView {
                kind: REGEX,
                service: service.as_ref().map(|p| p.source().to_owned()),
                method: method.as_ref().map(|p| p.source().to_owned()),
            },
        });
        MatchView::Grpc {
            method,
            headers: m
                .headers
                .iter()
                .map(|h| value_view(h.name.as_str(), &h.value))
                .collect(),
        }
    }
}

/// `=` for an exact value, `=~` for a regular expression (anchored at both
/// ends, as Gateway API's RegularExpression).
fn op(kind: &str) -> &'static str {
    if kind == REGEX { "=~" } else { "=" }
}

impl fmt::Display for MatchView {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut parts: Vec<String> = Vec::new();
        let headers = match self {
            MatchView::Http {
                path,
                method,
                headers,
                query,
            } => {
                parts.push(format!("{} {}", path.kind, path.value));
                if let Some(m) = method {
                    parts.push(format!("method {m}"));
                }
                parts.extend(
                    query
                        .iter()
                        .map(|q| format!("query {}{}{}", q.name, op(q.kind), q.value)),
                );
                headers
            }
            MatchView::Grpc { method, headers } => {
                match method {
                    None => parts.push("any gRPC method".into()),
                    Some(m) => {
                        let o = op(m.kind);
                        if let Some(s) = &m.service {
                            parts.push(format!("service{o}{s}"));
                        }
                        if let Some(me) = &m.method {
                            parts.push(format!("method{o}{me}"));
                        }
                    }
                }
                headers
            }
        };
        parts.extend(
            headers
                .iter()
                .map(|h| format!("header {}{}{}", h.name, op(h.kind), h.value)),
        );
        f.write_str(&parts.join(", "))
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct HeaderPair {
    pub name: String,
    pub value: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct HeaderModifierView {
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub set: Vec<HeaderPair>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub add: Vec<HeaderPair>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub remove: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct PathModifierView {
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub value: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "type")]
pub enum FilterView {
    RequestHeaderModifier(HeaderModifierView),
    ResponseHeaderModifier(HeaderModifierView),
    #[serde(rename_all = "camelCase")]
    RequestRedirect {
        #[serde(skip_serializing_if = "Option::is_none")]
        scheme: Option<&'static str>,
        #[serde(skip_serializing_if = "Option::is_none")]
        hostname: Option<String>,
        #[serde(skip_serializing_if = "Option::is_none")]
        port: Option<u16>,
        #[serde(skip_serializing_if = "Option::is_none")]
        path: Option<PathModifierView>,
        status_code: u16,
    },
    #[serde(rename = "URLRewrite")]
    UrlRewrite {
        #[serde(skip_serializing_if = "Option::is_none")]
        hostname: Option<String>,
        #[serde(skip_serializing_if = "Option::is_none")]
        path: Option<PathModifierView>,
    },
    RequestMirror {
        backend: String,
        numerator: u32,
        denominator: u32,
    },
}

fn pairs(list: &[(http::HeaderName, http::HeaderValue)]) -> Vec<HeaderPair> {
    list.iter()
        .map(|(n, v)| HeaderPair {
            name: n.to_string(),
            value: String::from_utf8_lossy(v.as_bytes()).into_owned(),
        })
        .collect()
}

fn modifier(m: &HeaderModifier) -> HeaderModifierView {
    HeaderModifierView {
        set: pairs(&m.set),
        add: pairs(&m.add),
        remove: m.remove.iter().map(ToString::to_string).collect(),
    }
}

fn path_modifier(p: &PathModifier) -> PathModifierView {
    match p {
        PathModifier::ReplaceFullPath(v) => PathModifierView {
            kind: "ReplaceFullPath",
            value: v.clone(),
        },
        PathModifier::ReplacePrefixMatch(v) => PathModifierView {
            kind: "ReplacePrefixMatch",
            value: v.clone(),
        },
    }
}

pub fn backend_name(b: &mesh_route::compile::BackendRef) -> String {
    format!("{}/{}:{}", b.namespace, b.name, b.port)
}

impl FilterView {
    pub fn of(f: &Filter) -> FilterView {
        match f {
            Filter::RequestHeaders(m) => FilterView::RequestHeaderModifier(modifier(m)),
            Filter::ResponseHeaders(m) => FilterView::ResponseHeaderModifier(modifier(m)),
            Filter::Redirect(r) => FilterView::RequestRedirect {
                scheme: r.scheme.map(|s| s.as_str()),
                hostname: r.hostname.clone(),
                port: r.port,
                path: r.path.as_ref().map(path_modifier),
                status_code: r.status.as_u16(),
            },
            Filter::Rewrite(r) => FilterView::UrlRewrite {
                hostname: r.hostname.clone(),
                path: r.path.as_ref().map(path_modifier),
            },
            Filter::Mirror(m) => FilterView::RequestMirror {
                backend: backend_name(&m.backend),
                numerator: m.numerator,
                denominator: m.denominator,
            },
        }
    }

    pub fn list(filters: &[Filter]) -> Vec<FilterView> {
        filters.iter().map(FilterView::of).collect()
    }
}

impl fmt::Display for HeaderModifierView {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut parts: Vec<String> = Vec::new();
        parts.extend(
            self.set
                .iter()
                .map(|h| format!("set {}: {}", h.name, h.value)),
        );
        parts.extend(
            self.add
                .iter()
                .map(|h| format!("add {}: {}", h.name, h.value)),
        );
        parts.extend(self.remove.iter().map(|n| format!("remove {n}")));
        f.write_str(&parts.join("; "))
    }
}

impl fmt::Display for FilterView {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FilterView::RequestHeaderModifier(m) => write!(f, "RequestHeaderModifier({m})"),
            FilterView::ResponseHeaderModifier(m) => write!(f, "ResponseHeaderModifier({m})"),
            FilterView::RequestRedirect {
                scheme,
                hostname,
                port,
                path,
                status_code,
            } => {
                let mut parts = vec![status_code.to_string()];
                if let Some(s) = scheme {
                    parts.push(format!("scheme {s}"));
                }
                if let Some(h) = hostname {
                    parts.push(format!("hostname {h}"));
                }
                if let Some(p) = port {
                    parts.push(format!("port {p}"));
                }
                if let Some(p) = path {
                    parts.push(format!("{} {}", p.kind, p.value));
                }
                write!(f, "RequestRedirect({})", parts.join(", "))
            }
            FilterView::UrlRewrite { hostname, path } => {
                let mut parts = Vec::new();
                if let Some(h) = hostname {
                    parts.push(format!("hostname {h}"));
                }
                if let Some(p) = path {
                    parts.push(format!("{} {}", p.kind, p.value));
                }
                write!(f, "URLRewrite({})", parts.join(", "))
            }
            FilterView::RequestMirror {
                backend,
                numerator,
                denominator,
            } => {
                if numerator == denominator {
                    write!(f, "RequestMirror({backend}, every request)")
                } else {
                    write!(f, "RequestMirror({backend}, {numerator}/{denominator})")
                }
            }
        }
    }
}

/// One backendRef: its weight and the share of the rule's requests it
/// gets, and why requests sent to it are answered 500 instead, if they are.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct BackendView {
    pub backend: String,
    pub weight: u32,
    /// Percent of the rule's requests, to 0.1.
    pub share_percent: f64,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub filters: Vec<FilterView>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unresolved: Option<Unresolved>,
}

/// Why requests sent to a backendRef are answered 500.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Unresolved {
    /// Gateway API's ResolvedRefs reason.
    pub reason: &'static str,
    pub message: String,
}

impl BackendView {
    /// Every backend of a rule; `unresolved` says why one cannot be used.
    pub fn list(
        backends: &[Backend],
        unresolved: impl Fn(&Backend) -> Option<Unresolved>,
    ) -> Vec<Self> {
        let total: u64 = backends.iter().map(|b| u64::from(b.weight)).sum();
        backends
            .iter()
            .map(|b| BackendView {
                backend: backend_name(&b.target),
                weight: b.weight,
                share_percent: share(b.weight, total),
                filters: FilterView::list(&b.filters),
                unresolved: unresolved(b),
            })
            .collect()
    }
}

/// `weight / total` in percent, rounded half up to one decimal.
pub fn share(weight: u32, total: u64) -> f64 {
    if total == 0 {
        return 0.0;
    }
    let tenths = (u64::from(weight) * 2000 + total) / (2 * total);
    tenths as f64 / 10.0
}

impl BackendView {
    /// With why it is answered 500 in full, where the short form (for a
    /// table cell) gives the reason only.
    pub fn explained(&self) -> String {
        let mut out = self.without_problem();
        if let Some(u) = &self.unresolved {
            out.push_str(&format!(": answered 500, {}", u.message));
        }
        out
    }

    fn without_problem(&self) -> String {
        let mut out = format!(
            "{} weight {} ({}%)",
            self.backend, self.weight, self.share_percent
        );
        for filter in &self.filters {
            out.push_str(&format!(" {filter}"));
        }
        out
    }
}

impl fmt::Display for BackendView {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.without_problem())?;
        if let Some(u) = &self.unresolved {
            write!(f, " [500: {}]", u.reason)?;
        }
        Ok(())
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TimeoutsView {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub request: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub backend_request: Option<String>,
}

impl TimeoutsView {
    pub fn of(t: &Timeouts) -> Option<TimeoutsView> {
        let text = |t: &Timeout| match t {
            Timeout::Disabled => "off".to_owned(),
            Timeout::After(d) => duration(*d),
        };
        (t.request.is_some() || t.backend_request.is_some()).then(|| TimeoutsView {
            request: t.request.as_ref().map(text),
            backend_request: t.backend_request.as_ref().map(text),
        })
    }
}

impl fmt::Display for TimeoutsView {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut parts = Vec::new();
        if let Some(r) = &self.request {
            parts.push(format!("request {r}"));
        }
        if let Some(r) = &self.backend_request {
            parts.push(format!("backendRequest {r}"));
        }
        f.write_str(&parts.join(", "))
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct RetryView {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub attempts: Option<u32>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub codes: Vec<u16>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub backoff: Option<String>,
}

impl RetryView {
    pub fn of(r: &Retry) -> RetryView {
        RetryView {
            attempts: r.attempts,
            codes: r.codes.iter().map(|c| c.as_u16()).collect(),
            backoff: r.backoff.map(duration),
        }
    }
}

impl fmt::Display for RetryView {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut parts = Vec::new();
        if let Some(a) = self.attempts {
            parts.push(format!("attempts {a}"));
        }
        if !self.codes.is_empty() {
            let codes: Vec<String> = self.codes.iter().map(ToString::to_string).collect();
            parts.push(format!("codes {}", codes.join(",")));
        }
        if let Some(b) = &self.backoff {
            parts.push(format!("backoff {b}"));
        }
        if parts.is_empty() {
            parts.push("on".into());
        }
        f.write_str(&parts.join(", "))
    }
}

/// A duration as Gateway API writes one: `1h2m3s4ms`, `0s` for none.
pub fn duration(d: Duration) -> String {
    let ms = d.as_millis();
    if ms == 0 {
        return "0s".into();
    }
    let parts = [
        (ms / 3_600_000, "h"),
        (ms / 60_000 % 60, "m"),
        (ms / 1000 % 60, "s"),
        (ms % 1000, "ms"),
    ];
    parts
        .iter()
        .filter(|(n, _)| *n > 0)
        .map(|(n, unit)| format!("{n}{unit}"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use mesh_route::{compile_grpc_route, compile_http_route};

    fn http_rule(rule: &str) -> Rule {
        let text = format!(r#"{{"metadata":{{"name":"r"}},"spec":{{"rules":[{rule}]}}}}"#);
        let route = compile_http_route(&serde_json::from_str(&text).unwrap()).unwrap();
        route.rules[0].clone()
    }

    #[test]
    fn matches_read_as_one_line() {
        let rule = http_rule(
            r#"{"matches":[{"path":{"type":"RegularExpression","value":"/r/[0-9]+"},
                "headers":[{"type":"RegularExpression","name":"X-Id","value":"[a-f]+"},{"name":"v","value":"2"}]},
               {"path":{"value":"/p/"}}, {}]}"#,
        );
        let line = |i| MatchView::of(&rule, i).unwrap().to_string();
        assert_eq!(
            line(0),
            "RegularExpression /r/[0-9]+, header x-id=~[a-f]+, header v=2"
        );
        // A prefix's trailing '/' is not kept; the default match is `/`.
        assert_eq!(line(1), "PathPrefix /p");
        assert_eq!(line(2), "PathPrefix /");
        assert_eq!(MatchView::of(&rule, 3), None);

        let grpc = compile_grpc_route(
            &serde_json::from_str(
                r#"{"metadata":{"name":"g"},"spec":{"rules":[{"matches":[
                    {"method":{"type":"RegularExpression","service":"pkg\\..*"}},
                    {"headers":[{"name":"x","value":"1"}]}]}]}}"#,
            )
            .unwrap(),
        )
        .unwrap();
        let g = |i| MatchView::of(&grpc.rules[0], i).unwrap().to_string();
        assert_eq!(g(0), r"service=~pkg\..*");
        assert_eq!(g(1), "any gRPC method, header x=1");
    }

    #[test]
    fn filters_and_backends_read_as_one_line() {
        let rule = http_rule(
            r#"{"filters":[
                {"type":"RequestHeaderModifier","requestHeaderModifier":{"set":[{"name":"a","value":"1"}],"add":[{"name":"b","value":"2"}],"remove":["c"]}},
                {"type":"RequestRedirect","requestRedirect":{"scheme":"https","hostname":"x.example","port":8443}},
                {"type":"RequestMirror","requestMirror":{"backendRef":{"name":"m","port":80},"percent":25}}],
               "backendRefs":[{"name":"b","port":80,"weight":3,"filters":[
                 {"type":"ResponseHeaderModifier","responseHeaderModifier":{"remove":["server"]}}]},
                 {"name":"c","namespace":"other","port":81,"weight":0}]}"#,
        );
        let filters: Vec<String> = FilterView::list(&rule.filters)
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(
            filters,
            [
                "RequestHeaderModifier(set a: 1; add b: 2; remove c)",
                "RequestRedirect(302, scheme https, hostname x.example, port 8443)",
                "RequestMirror(default/m:80, 25/100)",
            ]
        );
        let backends = BackendView::list(&rule.backends, |b| {
            (b.target.namespace == "other").then(|| Unresolved {
                reason: "BackendNotFound",
                message: "no such Service".into(),
            })
        });
        let lines: Vec<String> = backends.iter().map(ToString::to_string).collect();
        assert_eq!(
            lines,
            [
                "default/b:80 weight 3 (100%) ResponseHeaderModifier(remove server)",
                "other/c:81 weight 0 (0%) [500: BackendNotFound]",
            ]
        );
        assert_eq!(
            backends[1].explained(),
            "other/c:81 weight 0 (0%): answered 500, no such Service"
        );
    }

    #[test]
    fn shares_round_to_a_tenth() {
        assert_eq!(share(90, 100), 90.0);
        assert_eq!(share(1, 3), 33.3);
        assert_eq!(share(2, 3), 66.7);
        assert_eq!(share(0, 5), 0.0);
        assert_eq!(share(0, 0), 0.0);
        assert_eq!(share(1_000_000, 1_000_001), 100.0);
    }

    #[test]
    fn durations_read_as_gateway_api_writes_them() {
        assert_eq!(duration(Duration::ZERO), "0s");
        assert_eq!(duration(Duration::from_millis(1500)), "1s500ms");
        assert_eq!(duration(Duration::from_secs(3600 * 2 + 61)), "2h1m1s");
        assert_eq!(duration(Duration::from_millis(250)), "250ms");
        assert_eq!(duration(Duration::from_secs(90_000)), "25h");
    }
}
