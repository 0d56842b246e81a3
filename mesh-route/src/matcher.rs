//! Which rule of a table a request takes: the first match, in precedence
//! order, that the request satisfies.

use http::{HeaderMap, Method};

use crate::compile::{
    Backend, Filter, GrpcMatch, GrpcMethodMatch, HeaderMatch, HttpMatch, Matches, PathMatch,
    QueryMatch, RouteId, Rule, ValueMatch,
};
use crate::table::RouteTable;

/// What matching looks at: the request's method, its path without the
/// query, the query's (name, value) pairs in order, and its headers.
#[derive(Clone, Copy, Debug)]
pub struct Request<'a> {
    pub method: &'a Method,
    pub path: &'a str,
    pub query: &'a [(&'a str, &'a str)],
    pub headers: &'a HeaderMap,
}

#[derive(Clone, Copy, Debug)]
pub struct Matched<'a> {
    pub route: &'a RouteId,
    pub rule: &'a Rule,
    /// Which of the rule's matches the request satisfied.
    pub match_index: usize,
    /// The PathPrefix that matched (without trailing `/`), which
    /// ReplacePrefixMatch replaces.
    pub prefix: Option<&'a str>,
}

impl<'a> Matched<'a> {
    pub fn rule_index(&self) -> usize {
        self.rule.index
    }

    pub fn rule_name(&self) -> Option<&'a str> {
        self.rule.name.as_deref()
    }

    pub fn filters(&self) -> &'a [Filter] {
        &self.rule.filters
    }

    pub fn backends(&self) -> &'a [Backend] {
        &self.rule.backends
    }
}

impl RouteTable {
    pub fn find(&self, req: &Request<'_>) -> Option<Matched<'_>> {
        self.entries.iter().find_map(|e| {
            let route = &self.routes[e.route];
            let rule = &route.rules[e.rule];
            let prefix = match &rule.matches {
                Matches::Http(m) => {
                    let m = &m[e.matched];
                    if !http_matches(m, req) {
                        return None;
                    }
                    match &m.path {
                        PathMatch::Prefix(p) => Some(p.as_str()),
                        _ => None,
                    }
                }
                Matches::Grpc(m) => {
                    if !grpc_matches(&m[e.matched], req) {
                        return None;
                    }
                    None
                }
            };
            Some(Matched {
                route: &route.id,
                rule,
                match_index: e.matched,
                prefix,
            })
        })
    }
}

/// `prefix` is stored without its trailing `/`: it matches itself and
/// anything below it, element by element (`/v2` takes `/v2` and `/v2/x`,
/// not `/v2x`).
pub fn prefix_matches(prefix: &str, path: &str) -> bool {
    match path.strip_prefix(prefix) {
        Some(rest) => rest.is_empty() || rest.starts_with('/'),
        None => false,
    }
}

fn path_matches(m: &PathMatch, path: &str) -> bool {
    match m {
        PathMatch::Exact(p) => p == path,
        PathMatch::Prefix(p) => prefix_matches(p, path),
        PathMatch::Regex(p) => p.is_match(path),
    }
}

fn value_matches(m: &ValueMatch, value: &[u8]) -> bool {
    match m {
        ValueMatch::Exact(v) => v.as_bytes() == value,
        ValueMatch::Regex(p) => std::str::from_utf8(value).is_ok_and(|v| p.is_match(v)),
    }
}

/// A header sent more than once is compared as its values joined by `,`
/// (RFC 9110 5.3).
fn header_matches(m: &HeaderMatch, headers: &HeaderMap) -> bool {
    let mut values = headers.get_all(&m.name).iter();
    let Some(first) = values.next() else {
        return false;
    };
    let mut rest = values.peekable();
    if rest.peek().is_none() {
        return value_matches(&m.value, first.as_bytes());
    }
    let mut joined = first.as_bytes().to_vec();
    for v in rest {
        joined.push(b',');
        joined.extend_from_slice(v.as_bytes());
    }
    value_matches(&m.value, &joined)
}

/// A parameter sent more than once is judged by its first value.
fn query_matches(m: &QueryMatch, query: &[(&str, &str)]) -> bool {
    query
        .iter()
        .find(|(name, _)| *name == m.name)
        .is_some_and(|(_, v)| value_matches(&m.value, v.as_bytes()))
}

fn http_matches(m: &HttpMatch, req: &Request<'_>) -> bool {
    path_matches(&m.path, req.path)
        && m.method.as_ref().is_none_or(|method| method == req.method)
        && m.headers.iter().all(|h| header_matches(h, req.headers))
        && m.query.iter().all(|q| query_matches(q, req.query))
}

/// A gRPC request's path is `/<service>/<method>`.
fn grpc_method(path: &str) -> Option<(&str, &str)> {
    let (service, method) = path.strip_prefix('/')?.split_once('/')?;
    (!service.is_empty() && !method.is_empty() && !method.contains('/'))
        .then_some((service, method))
}

fn grpc_matches(m: &GrpcMatch, req: &Request<'_>) -> bool {
    let method_ok = match &m.method {
        None => true,
        Some(wanted) => grpc_method(req.path).is_some_and(|(service, method)| match wanted {
            GrpcMethodMatch::Exact {
                service: s,
                method: me,
            } => {
                s.as_deref().is_none_or(|s| s == service)
                    && me.as_deref().is_none_or(|me| me == method)
            }
            GrpcMethodMatch::Regex {
                service: s,
                method: me,
            } => {
                s.as_ref().is_none_or(|p| p.is_match(service))
                    && me.as_ref().is_none_or(|p| p.is_match(method))
            }
        }),
    };
    method_ok && m.headers.iter().all(|h| header_matches(h, req.headers))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compile::{compile_grpc_route, compile_http_route};
    use http::HeaderValue;

    fn table(spec: &str) -> RouteTable {
        let text = format!(r#"{{"metadata":{{"name":"r","namespace":"ns"}},"spec":{spec}}}"#);
        RouteTable::new(vec![
            compile_http_route(&serde_json::from_str(&text).unwrap()).unwrap(),
        ])
    }

    fn grpc_table(spec: &str) -> RouteTable {
        let text = format!(r#"{{"metadata":{{"name":"g","namespace":"ns"}},"spec":{spec}}}"#);
        RouteTable::new(vec![
            compile_grpc_route(&serde_json::from_str(&text).unwrap()).unwrap(),
        ])
    }

    struct Req {
        method: Method,
        path: &'static str,
        query: Vec<(&'static str, &'static str)>,
        headers: HeaderMap,
    }

    fn req(path: &'static str) -> Req {
        Req {
            method: Method::GET,
            path,
            query: vec![],
            headers: HeaderMap::new(),
        }
    }

    impl Req {
        fn header(mut self, name: &'static str, value: &'static str) -> Req {
            self.headers.append(name, HeaderValue::from_static(value));
            self
        }

        fn query(mut self, name: &'static str, value: &'static str) -> Req {
            self.query.push((name, value));
            self
        }

        fn method(mut self, m: Method) -> Req {
            self.method = m;
            self
        }

        /// The rule index matched, or None.
        fn rule(&self, t: &RouteTable) -> Option<usize> {
            let r = Request {
                method: &self.method,
                path: self.path,
                query: &self.query,
                headers: &self.headers,
            };
            t.find(&r).map(|m| m.rule_index())
        }

        fn backend(&self, t: &RouteTable) -> Option<String> {
            let r = Request {
                method: &self.method,
                path: self.path,
                query: &self.query,
                headers: &self.headers,
            };
            t.find(&r).map(|m| m.backends()[0].target.name.clone())
        }
    }

    #[test]
    fn conformance_httproute_matching() {
        // conformance/tests/httproute-matching.yaml and .go (kubernetes-sigs/gateway-api).
        let t = table(
            r#"{"rules":[
              {"matches":[{"path":{"type":"PathPrefix","value":"/"}},{"headers":[{"name":"version","value":"one"}]}],
               "backendRefs":[{"name":"infra-backend-v1","port":8080}]},
              {"matches":[{"path":{"type":"PathPrefix","value":"/v2"}},{"headers":[{"name":"version","value":"two"}]}],
               "backendRefs":[{"name":"infra-backend-v2","port":8080}]}]}"#,
        );
        let cases = [
            (req("/"), "infra-backend-v1"),
            (req("/example"), "infra-backend-v1"),
            (req("/").header("version", "one"), "infra-backend-v1"),
            (req("/v2"), "infra-backend-v2"),
            (req("/v2/example"), "infra-backend-v2"),
            (req("/").header("version", "two"), "infra-backend-v2"),
        ];
        for (r, want) in cases {
            assert_eq!(
                r.backend(&t).as_deref(),
                Some(want),
                "{} {:?}",
                r.path,
                r.headers
            );
        }
    }

    #[test]
    fn path_prefix_is_element_wise() {
        let t = table(
            r#"{"rules":[{"matches":[{"path":{"value":"/v2"}}]},{"matches":[{"path":{"value":"/abc/"}}]}]}"#,
        );
        assert_eq!(req("/v2").rule(&t), Some(0));
        assert_eq!(req("/v2/").rule(&t), Some(0));
        assert_eq!(req("/v2/x").rule(&t), Some(0));
        assert_eq!(req("/v2example").rule(&t), None);
        assert_eq!(req("/V2").rule(&t), None);
        // A trailing '/' in the prefix is ignored.
        assert_eq!(req("/abc").rule(&t), Some(1));
        assert_eq!(req("/abc/def").rule(&t), Some(1));
        assert_eq!(req("/abcd").rule(&t), None);
        assert!(prefix_matches("", "/anything"));
    }

    #[test]
    fn exact_and_regex_paths() {
        let t = table(
            r#"{"rules":[{"matches":[{"path":{"type":"Exact","value":"/one"}}]},
                         {"matches":[{"path":{"type":"RegularExpression","value":"/r/[0-9]+"}}]}]}"#,
        );
        assert_eq!(req("/one").rule(&t), Some(0));
        assert_eq!(req("/one/").rule(&t), None);
        assert_eq!(req("/r/123").rule(&t), Some(1));
        // Anchored at both ends.
        assert_eq!(req("/r/123/x").rule(&t), None);
        assert_eq!(req("/x/r/1").rule(&t), None);
    }

    #[test]
    fn headers_query_and_method() {
        let t = table(
            r#"{"rules":[{"matches":[{"headers":[{"name":"X-Env","value":"Prod"},
                                                  {"type":"RegularExpression","name":"x-id","value":"[a-f]{2}"}],
                                     "queryParams":[{"name":"Tier","value":"gold"}],"method":"PUT"}]}]}"#,
        );
        let ok = || {
            req("/")
                .method(Method::PUT)
                .header("x-env", "Prod")
                .header("x-id", "ab")
                .query("Tier", "gold")
        };
        assert_eq!(ok().rule(&t), Some(0));
        // Names are case-insensitive: HeaderMap lowercases on insertion.
        assert_eq!(ok().header("X-Other", "1").rule(&t), Some(0));
        assert_eq!(
            req("/")
                .method(Method::PUT)
                .header("x-env", "prod")
                .header("x-id", "ab")
                .query("Tier", "gold")
                .rule(&t),
            None
        );
        assert_eq!(
            req("/")
                .method(Method::PUT)
                .header("x-env", "Prod")
                .header("x-id", "abc")
                .query("Tier", "gold")
                .rule(&t),
            None
        );
        assert_eq!(
            req("/")
                .method(Method::PUT)
                .header("x-env", "Prod")
                .header("x-id", "ab")
                .query("tier", "gold")
                .rule(&t),
            None
        );
        assert_eq!(
            req("/")
                .method(Method::GET)
                .header("x-env", "Prod")
                .header("x-id", "ab")
                .query("Tier", "gold")
                .rule(&t),
            None
        );
        assert_eq!(
            req("/")
                .method(Method::PUT)
                .header("x-id", "ab")
                .query("Tier", "gold")
                .rule(&t),
            None
        );
        // First value of a repeated parameter counts.
        assert_eq!(ok().query("Tier", "silver").rule(&t), Some(0));
        let first_wins = req("/")
            .method(Method::PUT)
            .header("x-env", "Prod")
            .header("x-id", "ab")
            .query("Tier", "silver")
            .query("Tier", "gold");
        assert_eq!(first_wins.rule(&t), None);
        // A repeated header is compared as its joined values.
        assert_eq!(ok().header("x-env", "Dev").rule(&t), None);
        let joined = table(r#"{"rules":[{"matches":[{"headers":[{"name":"a","value":"1,2"}]}]}]}"#);
        assert_eq!(
            req("/").header("a", "1").header("a", "2").rule(&joined),
            Some(0)
        );
    }

    #[test]
    fn matched_carries_the_rule() {
        let t = table(
            r#"{"rules":[{"name":"rw","matches":[{"path":{"value":"/p/"}}],
              "filters":[{"type":"URLRewrite","urlRewrite":{"path":{"type":"ReplacePrefixMatch","replacePrefixMatch":"/"}}}],
              "backendRefs":[{"name":"a","port":80,"weight":3},{"name":"b","port":80}]}]}"#,
        );
        let (m, p, h) = (Method::GET, "/p/x", HeaderMap::new());
        let found = t
            .find(&Request {
                method: &m,
                path: p,
                query: &[],
                headers: &h,
            })
            .unwrap();
        assert_eq!(found.route.to_string(), "ns/r");
        assert_eq!(
            (found.rule_index(), found.rule_name(), found.match_index),
            (0, Some("rw"), 0)
        );
        assert_eq!(found.prefix, Some("/p"));
        assert_eq!(found.filters().len(), 1);
        assert_eq!(
            found
                .backends()
                .iter()
                .map(|b| b.weight)
                .collect::<Vec<_>>(),
            [3, 1]
        );
        let rewritten = match &found.filters()[0] {
            crate::compile::Filter::Rewrite(r) => crate::rewrite::rewrite(r, found.prefix, p),
            other => panic!("{other:?}"),
        };
        assert_eq!(rewritten.path.as_deref(), Some("/x"));
    }

    #[test]
    fn conformance_grpc_exact_method_matching() {
        // conformance/tests/grpcroute-exact-method-matching.yaml and .go
        // (kubernetes-sigs/gateway-api): EchoThree matches nothing.
        let t = grpc_table(
            r#"{"rules":[
              {"matches":[{"method":{"service":"gateway_api_conformance.grpc_echo.grpcecho.GrpcEcho","method":"Echo"}}],
               "backendRefs":[{"name":"grpc-infra-backend-v1","port":8080}]},
              {"matches":[{"method":{"service":"gateway_api_conformance.grpc_echo.grpcecho.GrpcEcho","method":"EchoTwo"}}],
               "backendRefs":[{"name":"grpc-infra-backend-v2","port":8080}]}]}"#,
        );
        let call = |m: &'static str| req(m).method(Method::POST).backend(&t);
        assert_eq!(
            call("/gateway_api_conformance.grpc_echo.grpcecho.GrpcEcho/Echo").as_deref(),
            Some("grpc-infra-backend-v1")
        );
        assert_eq!(
            call("/gateway_api_conformance.grpc_echo.grpcecho.GrpcEcho/EchoTwo").as_deref(),
            Some("grpc-infra-backend-v2")
        );
        assert_eq!(
            call("/gateway_api_conformance.grpc_echo.grpcecho.GrpcEcho/EchoThree"),
            None
        );
    }

    #[test]
    fn grpc_matching() {
        let t = grpc_table(
            r#"{"rules":[
              {"matches":[{"method":{"service":"pkg.Echo","method":"Say"}}]},
              {"matches":[{"method":{"service":"pkg.Echo"}}]},
              {"matches":[{"method":{"type":"RegularExpression","method":"Get.*"}}]},
              {"matches":[{"headers":[{"name":"x-canary","value":"1"}]}]}]}"#,
        );
        assert_eq!(req("/pkg.Echo/Say").method(Method::POST).rule(&t), Some(0));
        assert_eq!(
            req("/pkg.Echo/Other").method(Method::POST).rule(&t),
            Some(1)
        );
        assert_eq!(
            req("/pkg.Other/GetThing").method(Method::POST).rule(&t),
            Some(2)
        );
        assert_eq!(
            req("/pkg.Other/Put").header("x-canary", "1").rule(&t),
            Some(3)
        );
        assert_eq!(req("/pkg.Other/Put").rule(&t), None);
        assert_eq!(req("/pkg.Echo").rule(&t), None);
        assert_eq!(req("/pkg.Echo/Say/x").rule(&t), None);
    }
}
