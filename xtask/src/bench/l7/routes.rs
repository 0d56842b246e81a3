//! The route set of the "1,000 routes" column: Service `web-routes` and 99
//! more Services, each with the same ten HTTPRoutes of its own (GAMMA:
//! parentRefs name the Service's ports), 1,000 routes in all in the view.
//!
//! A request to a Service is matched against its own port's table only, so
//! what this column asks is whether holding 1,000 routes, and matching one
//! realistic table of ten per request, costs the waypoint anything per
//! request. The ten mix exact and prefix paths, a header match, a query
//! match, a method match and header modifiers. The bench's requests (POST
//! `/bytes/1024`, no query, no `x-canary`) satisfy only rule `bytes` and
//! the catch-all: in Gateway API's precedence (exact paths first, then the
//! longest prefix, then the most header and query matches) six rules are
//! tried before `bytes`, so matching does real work before it succeeds.
use std::net::Ipv4Addr;

/// The Service the column's requests go to; it has the other routes'
/// backends (b1/b2).
pub const ROUTED: &str = "web-routes";
/// Services with routes, `web-routes` included.
pub const SERVICES: usize = 100;
pub const ROUTES_PER_SERVICE: usize = 10;
/// The rule of each Service's routes that the bench's requests take.
const TAKEN: Shape = SHAPES[8];
/// How many of a Service's rules Gateway API's precedence puts before
/// [`TAKEN`]: the two exact paths, the two longer prefixes, and the two
/// rules with its prefix and a header or query match (see [`SHAPES`]).
pub const TRIED_BEFORE_TAKEN: usize = 6;

/// One route of a Service: its name is `<service>-<suffix>`, its one rule
/// is named `rule`; `matches` and `filters` are the rule's, in YAML flow
/// style.
#[derive(Clone, Copy)]
struct Shape {
    suffix: &'static str,
    rule: &'static str,
    matches: &'static str,
    filters: &'static str,
}

const NO_FILTERS: &str = "[]";

/// In the order written; the waypoint tries them in precedence order:
/// `bytes-large`, `health` (exact), `api-v2`, `static` (7-character
/// prefixes), `bytes-canary` (one header), `bytes-debug` (one query
/// parameter), `bytes`, `api-canary`, `api`, `default`.
const SHAPES: [Shape; ROUTES_PER_SERVICE] = [
    Shape {
        suffix: "api-v2",
        rule: "api-v2",
        matches: "[{path: {type: PathPrefix, value: /api/v2}}]",
        filters: "[{type: RequestHeaderModifier, requestHeaderModifier: {set: [{name: x-api-version, value: \"2\"}]}}]",
    },
    Shape {
        suffix: "api-canary",
        rule: "api-canary",
        matches: "[{path: {type: PathPrefix, value: /api}, headers: [{name: x-canary, value: \"true\"}]}]",
        filters: NO_FILTERS,
    },
    Shape {
        suffix: "api",
        rule: "api",
        matches: "[{path: {type: PathPrefix, value: /api}}]",
        filters: NO_FILTERS,
    },
    Shape {
        suffix: "health",
        rule: "health",
        matches: "[{path: {type: Exact, value: /healthz}, method: GET}]",
        filters: NO_FILTERS,
    },
    Shape {
        suffix: "static",
        rule: "static",
        matches: "[{path: {type: PathPrefix, value: /static}}]",
        filters: "[{type: ResponseHeaderModifier, responseHeaderModifier: {set: [{name: cache-control, value: \"max-age=60\"}]}}]",
    },
    Shape {
        suffix: "bytes-large",
        rule: "bytes-large",
        matches: "[{path: {type: Exact, value: /bytes/65536}}]",
        filters: NO_FILTERS,
    },
    Shape {
        suffix: "bytes-canary",
        rule: "bytes-canary",
        matches: "[{path: {type: PathPrefix, value: /bytes}, headers: [{name: x-canary, value: \"true\"}]}]",
        filters: NO_FILTERS,
    },
    Shape {
        suffix: "bytes-debug",
        rule: "bytes-debug",
        matches: "[{path: {type: PathPrefix, value: /bytes}, queryParams: [{name: debug, value: \"1\"}]}]",
        filters: NO_FILTERS,
    },
    Shape {
        suffix: "bytes",
        rule: "bytes",
        matches: "[{path: {type: PathPrefix, value: /bytes}}]",
        filters: "[{type: RequestHeaderModifier, requestHeaderModifier: {add: [{name: x-route, value: bytes}]}}]",
    },
    Shape {
        suffix: "default",
        rule: "default",
        matches: "[{path: {type: PathPrefix, value: /}}]",
        filters: NO_FILTERS,
    },
];

/// The Services besides `web-routes` that carry routes: names and VIPs
/// (10.96.2.1 up, a range the bed leaves free). They have no endpoints:
/// no request goes to them, their routes are only held.
pub fn other_services() -> Vec<(String, Ipv4Addr)> {
    (1..SERVICES)
        .map(|i| {
            let last = u8::try_from(i).expect("fewer than 256 Services");
            (format!("routed-{i:02}"), Ipv4Addr::new(10, 96, 2, last))
        })
        .collect()
}

/// The route (`<namespace>/<name>`) and rule that `service`'s requests of
/// the bench take, as the waypoint's metrics name them.
pub fn taken(service: &str) -> (String, &'static str) {
    (format!("default/{service}-{}", TAKEN.suffix), TAKEN.rule)
}

/// `service`'s ten HTTPRoutes, each attached to both of its `ports` and
/// sending to the first of them.
fn service_routes(service: &str, ports: [u16; 2]) -> Vec<String> {
    SHAPES
        .iter()
        .map(|s| {
            format!(
                "apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: {service}-{suffix}, namespace: default}}
spec:
  parentRefs:
  - {{group: \"\", kind: Service, name: {service}, port: {p0}}}
  - {{group: \"\", kind: Service, name: {service}, port: {p1}}}
  rules:
  - name: {rule}
    matches: {matches}
    filters: {filters}
    backendRefs: [{{name: {service}, port: {p0}}}]
",
                suffix = s.suffix,
                rule = s.rule,
                matches = s.matches,
                filters = s.filters,
                p0 = ports[0],
                p1 = ports[1],
            )
        })
        .collect()
}

/// Every route: `web-routes`' and the other Services', 1,000 documents
/// (`---` between them).
pub fn http_routes(ports: [u16; 2]) -> String {
    std::iter::once(ROUTED.to_owned())
        .chain(other_services().into_iter().map(|(name, _)| name))
        .flat_map(|service| service_routes(&service, ports))
        .collect::<Vec<_>>()
        .join("---\n")
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use serde_yaml::Value;

    use super::*;

    fn docs(yaml: &str) -> Vec<Value> {
        serde_yaml::Deserializer::from_str(yaml)
            .map(|d| serde::Deserialize::deserialize(d).unwrap())
            .collect()
    }

    #[test]
    fn a_thousand_routes_ten_on_each_of_a_hundred_services() {
        let routes = docs(&http_routes([80, 81]));
        assert_eq!(routes.len(), 1000);
        let mut per_service = std::collections::BTreeMap::<String, usize>::new();
        let mut names = BTreeSet::new();
        for r in &routes {
            assert_eq!(r["apiVersion"], "gateway.networking.k8s.io/v1");
            assert_eq!(r["kind"], "HTTPRoute");
            assert_eq!(r["metadata"]["namespace"], "default");
            assert!(names.insert(r["metadata"]["name"].as_str().unwrap().to_owned()));
            let parents = r["spec"]["parentRefs"].as_sequence().unwrap();
            assert_eq!(parents.len(), 2);
            let service = parents[0]["name"].as_str().unwrap().to_owned();
            for (p, port) in parents.iter().zip([80, 81]) {
                assert_eq!(p["group"], "");
                assert_eq!(p["kind"], "Service");
                assert_eq!(p["name"].as_str(), Some(service.as_str()));
                assert_eq!(p["port"], port);
            }
            let rules = r["spec"]["rules"].as_sequence().unwrap();
            assert_eq!(rules.len(), 1);
            assert_eq!(
                rules[0]["backendRefs"],
                docs(&format!("[{{name: {service}, port: 80}}]"))[0],
                "each Service's routes send to its own backends"
            );
            assert!(
                rules[0]["matches"]
                    .as_sequence()
                    .is_some_and(|m| m.len() == 1)
            );
            assert!(rules[0]["filters"].is_sequence());
            *per_service.entry(service).or_default() += 1;
        }
        assert_eq!(per_service.len(), SERVICES);
        assert!(per_service.values().all(|n| *n == ROUTES_PER_SERVICE));
        assert!(per_service.contains_key(ROUTED));
    }

    #[test]
    fn the_other_services_have_distinct_names_and_addresses_apart_from_the_beds() {
        let others = other_services();
        assert_eq!(others.len(), SERVICES - 1);
        let names: BTreeSet<&str> = others.iter().map(|(n, _)| n.as_str()).collect();
        let vips: BTreeSet<Ipv4Addr> = others.iter().map(|(_, v)| *v).collect();
        assert_eq!(names.len(), others.len());
        assert_eq!(vips.len(), others.len());
        assert!(!names.contains(ROUTED));
        assert!(
            vips.iter()
                .all(|v| v.octets()[..3] == [10, 96, 2] && v.octets()[3] != 0)
        );
    }

    /// The rules whose path takes `/bytes/1024` all ask for more than the
    /// bench sends (a header or a query parameter it does not send), but
    /// `bytes` and the catch-all; and the rule taken changes a header.
    #[test]
    fn the_benchs_requests_satisfy_the_bytes_rule_and_the_catch_all_only() {
        let path = "/bytes/1024";
        let mut satisfied = Vec::new();
        for r in docs(&http_routes([80, 81])).iter().take(ROUTES_PER_SERVICE) {
            let rule = &r["spec"]["rules"][0];
            let m = &rule["matches"][0];
            let value = m["path"]["value"].as_str().unwrap();
            let path_ok = match m["path"]["type"].as_str().unwrap() {
                "Exact" => value == path,
                "PathPrefix" => {
                    let p = value.trim_end_matches('/');
                    path.strip_prefix(p)
                        .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
                }
                other => panic!("path type {other}"),
            };
            let asks_more = !m["headers"].is_null()
                || !m["queryParams"].is_null()
                || m["method"].as_str().is_some_and(|x| x != "POST");
            if path_ok && !asks_more {
                satisfied.push(rule["name"].as_str().unwrap().to_owned());
            }
        }
        assert_eq!(satisfied, ["bytes", "default"]);
        assert_eq!(
            taken(ROUTED),
            ("default/web-routes-bytes".to_owned(), "bytes")
        );
        assert_eq!(TAKEN.rule, "bytes");
        assert!(TAKEN.filters.contains("RequestHeaderModifier"));
        assert_eq!(crate::bench::l7::load::path(), path);
    }
}
