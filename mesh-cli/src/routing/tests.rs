//! `mesh inspect` with routes: a local node file with Services, a producer
//! HTTPRoute of many rules, a consumer route, a route with unusable refs, a
//! GRPCRoute on a port of its own and an older HTTPRoute that loses that
//! port to it (GEP-1426 ranks GRPCRoute first); the same objects listed by a mock Kubernetes API.
use std::path::Path;

use clap::Parser;
use http::{Method, StatusCode};
use mesh_discovery::NodeConfig;
use serde_json::{Value, json};

use super::{answer, render, request, tables};
use crate::{
    Cli, inspect,
    output::Format,
    testing::{kube_cluster, list, mock, not_found},
};

const NODE_FILE: &str = r#"
kind: AgentConfig
nodeName: n1
---
apiVersion: v1
kind: Namespace
metadata: {name: shop, labels: {mesh.io/dataplane-mode: enabled, istio.io/use-waypoint: wp}}
---
apiVersion: v1
kind: Namespace
metadata: {name: client, labels: {mesh.io/dataplane-mode: enabled}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: wp, namespace: shop}
spec:
  gatewayClassName: mesh-waypoint
  listeners: [{name: mesh, port: 15008, protocol: HBONE}]
---
apiVersion: v1
kind: Pod
metadata: {name: wp-0, namespace: shop, labels: {gateway.networking.k8s.io/gateway-name: wp}}
spec: {nodeName: n2, serviceAccountName: wp, containers: [{name: c}]}
status: {podIPs: [{ip: 10.1.0.8}]}
---
apiVersion: v1
kind: Pod
metadata: {name: web-1, namespace: shop, labels: {app: web}}
spec: {nodeName: n2, containers: [{name: c}]}
status: {podIPs: [{ip: 10.1.0.1}]}
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: shop}
spec:
  clusterIP: 10.96.0.1
  selector: {app: web}
  ports: [{name: http, port: 80, targetPort: 8080}]
---
apiVersion: v1
kind: Service
metadata: {name: web-v1, namespace: shop}
spec: {clusterIP: 10.96.0.2, selector: {app: web}, ports: [{port: 80, targetPort: 8080}]}
---
apiVersion: v1
kind: Service
metadata: {name: web-v2, namespace: shop}
spec: {clusterIP: 10.96.0.3, selector: {app: web}, ports: [{port: 80, targetPort: 8080}]}
---
apiVersion: v1
kind: Service
metadata: {name: login, namespace: shop}
spec: {clusterIP: 10.96.0.4, selector: {app: web}, ports: [{port: 80, targetPort: 8080}]}
---
apiVersion: v1
kind: Service
metadata: {name: api, namespace: shop}
spec:
  clusterIP: 10.96.0.5
  ports: [{name: http, port: 80}, {name: grpc, port: 9090, appProtocol: grpc}]
---
apiVersion: v1
kind: Service
metadata: {name: legacy, namespace: other}
spec: {clusterIP: 10.96.0.6, ports: [{port: 80}]}
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: web-routes, namespace: shop, creationTimestamp: "2024-01-01T00:00:00Z"}
spec:
  parentRefs: [{group: "", kind: Service, name: web, port: 80}]
  rules:
  - name: default
    backendRefs: [{name: web-v1, port: 80, weight: 90}, {name: web-v2, port: 80, weight: 10}]
  - name: login
    matches: [{path: {type: Exact, value: /login}}]
    backendRefs: [{name: login, port: 80}]
  - name: canary
    matches: [{headers: [{name: x-canary, value: "true"}]}]
    backendRefs: [{name: web-v2, port: 80}]
  - name: gold
    matches: [{path: {value: /shop}, method: GET, queryParams: [{name: tier, value: gold}]}]
    filters: [{type: RequestHeaderModifier, requestHeaderModifier: {set: [{name: x-tier, value: gold}]}}]
    backendRefs: [{name: web-v1, port: 80}]
  - name: old
    matches: [{path: {value: /old}}]
    filters: [{type: RequestRedirect, requestRedirect: {path: {type: ReplacePrefixMatch, replacePrefixMatch: /new}, statusCode: 301}}]
  - name: rewrite
    matches: [{path: {value: /v1/}}]
    filters: [{type: URLRewrite, urlRewrite: {hostname: api.shop, path: {type: ReplacePrefixMatch, replacePrefixMatch: /api/v1}}}]
    backendRefs: [{name: web-v1, port: 80}]
    timeouts: {request: 10s, backendRequest: 2s}
    retry: {attempts: 3, codes: [503], backoff: 100ms}
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: broken, namespace: shop, creationTimestamp: "2024-06-01T00:00:00Z"}
spec:
  parentRefs: [{group: "", kind: Service, name: web, port: 80}]
  rules:
  - matches: [{path: {type: Exact, value: /legacy}}]
    backendRefs: [{name: legacy, namespace: other, port: 81}, {name: missing, port: 80}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: api-http, namespace: shop, creationTimestamp: "2023-01-01T00:00:00Z"}
spec:
  parentRefs: [{group: "", kind: Service, name: api, sectionName: grpc}]
  rules: [{backendRefs: [{name: api, port: 9090}]}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: pin, namespace: client}
spec:
  parentRefs: [{group: "", kind: Service, name: web, namespace: shop, port: 80}]
  rules: [{backendRefs: [{name: web-v1, namespace: shop, port: 80}]}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: GRPCRoute
metadata: {name: echo, namespace: shop}
spec:
  parentRefs: [{group: "", kind: Service, name: api, sectionName: grpc}]
  rules:
  - matches: [{method: {service: pkg.Echo, method: Say}}]
    backendRefs: [{name: api, port: 9090}]
"#;

fn view() -> mesh_discovery::view::MeshView {
    NodeConfig::parse(Path::new("node.yaml"), NODE_FILE, None)
        .unwrap()
        .view()
}

fn ask(
    view: &mesh_discovery::view::MeshView,
    service: &str,
    text: &str,
    port: Option<u16>,
    from: Option<&str>,
) -> answer::Answer {
    let request = request::parse(text).unwrap();
    answer::answer(
        view,
        service,
        answer::Question {
            request: &request,
            port,
            from,
        },
    )
    .unwrap()
}

/// (route, rule) the request takes, `None` for no match.
fn rule_of(a: &answer::Answer) -> Option<(String, usize)> {
    match &a.outcome {
        answer::Outcome::Matched(m) => Some((m.route.clone(), m.rule)),
        _ => None,
    }
}

fn backends(a: &answer::Answer) -> Vec<(String, u32, f64)> {
    let answer::Outcome::Matched(m) = &a.outcome else {
        panic!("no match: {a:?}");
    };
    let answer::Action::Forward { backends, .. } = &m.action else {
        panic!("not forwarded: {m:?}");
    };
    backends
        .iter()
        .map(|b| (b.backend.clone(), b.weight, b.share_percent))
        .collect()
}

#[test]
fn the_producer_table_lists_every_match_in_the_order_it_is_tried() {
    let view = view();
    let svc = view.service("shop/web").unwrap();
    let routes = tables::service_routes(&view, svc);
    let port = &routes.ports[0];
    assert_eq!((port.port, port.name.as_str()), (80, "http"));
    let producer = &port.tables[0];
    assert_eq!(producer.audience, tables::Audience::Producer);
    let order: Vec<(usize, String, usize, String)> = producer
        .rules
        .iter()
        .map(|r| (r.order, r.route.clone(), r.rule, r.matches.to_string()))
        .collect();
    let want = [
        (1, "shop/broken", 0, "Exact /legacy"),
        (2, "shop/web-routes", 1, "Exact /login"),
        (
            3,
            "shop/web-routes",
            3,
            "PathPrefix /shop, method GET, query tier=gold",
        ),
        (4, "shop/web-routes", 4, "PathPrefix /old"),
        (5, "shop/web-routes", 5, "PathPrefix /v1"),
        (
            6,
            "shop/web-routes",
            2,
            "PathPrefix /, header x-canary=true",
        ),
        (7, "shop/web-routes", 0, "PathPrefix /"),
    ];
    let want: Vec<(usize, String, usize, String)> = want
        .iter()
        .map(|(o, r, i, m)| (*o, r.to_string(), *i, m.to_string()))
        .collect();
    assert_eq!(order, want);
    let consumer = &port.tables[1];
    assert_eq!(
        consumer.audience,
        tables::Audience::Consumer {
            namespace: "client".into()
        }
    );
    assert_eq!(consumer.rules.len(), 1);
    assert_eq!(consumer.rules[0].route, "client/pin");
}

#[test]
fn inspect_shows_routes_with_status_and_tables() {
    let view = view();
    let web = inspect::inspect(&view, "shop/web").unwrap();
    let text = inspect::render(Format::Table, &web).unwrap();
    let l: Vec<&str> = text.lines().collect();
    let at = |prefix: &str| {
        l.iter()
            .position(|x| x.starts_with(prefix))
            .unwrap_or_else(|| panic!("no line {prefix:?} in\n{text}"))
    };
    // The waypoint line is the one every Service has.
    assert!(l.contains(&"waypoint: through waypoint shop/wp (10.1.0.8:15008, spiffe://cluster.local/ns/shop/sa/wp)"), "{text}");
    let routes = at("ROUTES (HTTPRoute, GRPCRoute)");
    assert_eq!(
        l[routes + 1].split_whitespace().collect::<Vec<_>>(),
        ["ROUTE", "KIND", "PARENT", "ACCEPTED", "RESOLVED", "REFS"]
    );
    let row = |route: &str| {
        l[routes + 1..]
            .iter()
            .find(|x| x.starts_with(route))
            .map(|x| x.split_whitespace().collect::<Vec<_>>().join(" "))
            .unwrap_or_else(|| panic!("no row {route} in\n{text}"))
    };
    assert_eq!(
        row("shop/web-routes "),
        "shop/web-routes HTTPRoute shop/web:80 True Accepted True ResolvedRefs"
    );
    assert_eq!(
        row("shop/broken "),
        "shop/broken HTTPRoute shop/web:80 True Accepted False BackendNotFound: \
         spec.rules[0].backendRefs[0]: Service other/legacy has no port 81; \
         spec.rules[0].backendRefs[1]: Service shop/missing not found"
    );
    assert_eq!(
        row("client/pin "),
        "client/pin HTTPRoute shop/web:80 True Accepted True ResolvedRefs"
    );
    // Oldest first; a route without a creation time last.
    assert!(at("shop/web-routes ") < at("shop/broken ") && at("shop/broken ") < at("client/pin "));

    let producer = at("PORT 80 (http): producer routes");
    let consumer = at("PORT 80 (http): consumer routes of namespace client, for its clients only");
    assert!(producer < consumer);
    let cells = |i: usize| {
        l[i].split("  ")
            .filter(|c| !c.is_empty())
            .map(str::trim)
            .collect::<Vec<_>>()
    };
    assert_eq!(
        cells(producer + 1),
        [
            "#", "ROUTE", "RULE", "MATCH", "FILTERS", "BACKENDS", "TIMEOUTS", "RETRY"
        ]
    );
    assert_eq!(
        cells(producer + 2),
        [
            "1",
            "shop/broken",
            "0",
            "Exact /legacy",
            "-",
            "other/legacy:81 weight 1 (50%) [500: BackendNotFound], shop/missing:80 weight 1 (50%) [500: BackendNotFound]",
            "-",
            "-"
        ]
    );
    assert_eq!(
        cells(producer + 4),
        [
            "3",
            "shop/web-routes",
            "3 (gold)",
            "PathPrefix /shop, method GET, query tier=gold",
            "RequestHeaderModifier(set x-tier: gold)",
            "shop/web-v1:80 weight 1 (100%)",
            "-",
            "-"
        ]
    );
    assert_eq!(
        cells(producer + 5)[4..6],
        [
            "RequestRedirect(301, ReplacePrefixMatch /new)",
            "- (redirects)"
        ]
    );
    assert_eq!(
        cells(producer + 6)[2..],
        [
            "5 (rewrite)",
            "PathPrefix /v1",
            "URLRewrite(hostname api.shop, ReplacePrefixMatch /api/v1)",
            "shop/web-v1:80 weight 1 (100%)",
            "request 10s, backendRequest 2s",
            "attempts 3, codes 503, backoff 100ms"
        ]
    );
    assert_eq!(
        cells(producer + 8)[2..6],
        [
            "0 (default)",
            "PathPrefix /",
            "-",
            "shop/web-v1:80 weight 90 (90%), shop/web-v2:80 weight 10 (10%)"
        ]
    );
    assert_eq!(
        cells(consumer + 2),
        [
            "1",
            "client/pin",
            "0",
            "PathPrefix /",
            "-",
            "shop/web-v1:80 weight 1 (100%)",
            "-",
            "-"
        ]
    );

    // A Service without routes says so; a workload has no routes section.
    let login = inspect::render(
        Format::Table,
        &inspect::inspect(&view, "shop/login").unwrap(),
    )
    .unwrap();
    assert!(
        login.contains("ROUTES (HTTPRoute, GRPCRoute)\nnone attached: requests go to the Service's own endpoints\n"),
        "{login}"
    );
    let pod = inspect::inspect(&view, "shop/web-1").unwrap();
    assert!(pod.routes.is_none());
    let json: Value = serde_json::from_str(&inspect::render(Format::Json, &pod).unwrap()).unwrap();
    assert!(json.get("routes").is_none());
}

/// An HTTPRoute older than the GRPCRoute on the same port is still left
/// out of it: GEP-1426 ranks GRPCRoute above HTTPRoute whatever their age.
/// Its status says so (Conflicted, as the CA writes it) and so does the
/// note read from the waypoint's table.
#[test]
fn an_http_route_loses_a_port_a_grpc_route_holds() {
    let view = view();
    let api = inspect::inspect(&view, "shop/api").unwrap();
    let text = inspect::render(Format::Table, &api).unwrap();
    assert!(
        text.lines().any(|l| l
            == "note: HTTPRoute shop/api-http is left out of port 9090: GRPCRoute shop/echo holds it; \
                HTTPRoutes and GRPCRoutes cannot share a Service port, and GRPCRoutes take it"),
        "{text}"
    );
    let row = |route: &str| {
        text.lines()
            .find(|l| l.starts_with(route))
            .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
            .unwrap_or_else(|| panic!("no row {route} in\n{text}"))
    };
    assert_eq!(
        row("shop/api-http "),
        "shop/api-http HTTPRoute shop/api#grpc False Conflicted: Service shop/api: port 9090 \
         is held by GRPCRoute shop/echo; a GRPCRoute takes a Service port over HTTPRoutes \
         (GEP-1426), so this route applies to none of the ports it names True ResolvedRefs"
    );
    assert_eq!(
        row("shop/echo "),
        "shop/echo GRPCRoute shop/api#grpc True Accepted True ResolvedRefs"
    );
    let say = ask(&view, "shop/api", "POST /pkg.Echo/Say", Some(9090), None);
    assert_eq!(rule_of(&say), Some(("shop/echo".into(), 0)));
}

/// An HTTPRoute on every port of the Service, one of which a GRPCRoute
/// holds: applied on the others, so Accepted, its message and the note
/// naming the port it is left out of.
#[test]
fn an_http_route_on_ports_some_of_which_a_grpc_route_holds_stays_accepted() {
    let file = format!(
        "{NODE_FILE}---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: api-all, namespace: shop}}
spec:
  parentRefs: [{{group: \"\", kind: Service, name: api}}]
  rules: [{{backendRefs: [{{name: api, port: 80}}]}}]
"
    );
    let view = NodeConfig::parse(Path::new("node.yaml"), &file, None)
        .unwrap()
        .view();
    let api = inspect::inspect(&view, "shop/api").unwrap();
    let json: Value = serde_json::from_str(&inspect::render(Format::Json, &api).unwrap()).unwrap();
    let all = json["routes"]["routes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["route"] == "shop/api-all")
        .unwrap_or_else(|| panic!("{json:#}"));
    assert_eq!(
        all["parents"][0]["accepted"],
        json!({"status": true, "reason": "Accepted",
               "message": "attached to Service shop/api (every port), applied to port 80 only: \
                           port 9090 is held by GRPCRoute shop/echo; a GRPCRoute takes a Service \
                           port over HTTPRoutes (GEP-1426)"})
    );
    assert_eq!(
        all["leftOut"],
        json!(["port 9090: GRPCRoute shop/echo holds it"])
    );
    let text = inspect::render(Format::Table, &api).unwrap();
    assert!(
        text.contains(
            "note: HTTPRoute shop/api-all is left out of port 9090: GRPCRoute shop/echo holds it;"
        ),
        "{text}"
    );
    // On port 80 the route is the table.
    let get = ask(&view, "shop/api", "GET /", Some(80), None);
    assert_eq!(rule_of(&get), Some(("shop/api-all".into(), 0)));
}

#[test]
fn inspect_json_carries_the_tables_for_scripts() {
    let view = view();
    let web = inspect::inspect(&view, "shop/web").unwrap();
    let json: Value = serde_json::from_str(&inspect::render(Format::Json, &web).unwrap()).unwrap();
    let producer = &json["routes"]["ports"][0]["tables"][0];
    assert_eq!(producer["audience"], "producer");
    assert_eq!(
        producer["rules"][2],
        json!({"order": 3, "route": "shop/web-routes", "rule": 3, "name": "gold", "matchIndex": 0,
               "match": {"kind": "http", "path": {"type": "PathPrefix", "value": "/shop"}, "method": "GET",
                         "query": [{"type": "Exact", "name": "tier", "value": "gold"}]},
               "filters": [{"type": "RequestHeaderModifier", "set": [{"name": "x-tier", "value": "gold"}]}],
               "backends": [{"backend": "shop/web-v1:80", "weight": 1, "share_percent": 100.0}],
               "redirects": false})
    );
    let consumer = &json["routes"]["ports"][0]["tables"][1];
    assert_eq!(
        (
            consumer["audience"].as_str(),
            consumer["namespace"].as_str()
        ),
        (Some("consumer"), Some("client"))
    );
}

#[test]
fn requests_take_the_rule_the_matcher_finds() {
    let view = view();
    let web = |text: &str| ask(&view, "shop/web", text, None, None);
    let some = |r: &str, i: usize| Some((r.to_owned(), i));

    let login = web("GET /login");
    assert_eq!(rule_of(&login), some("shop/web-routes", 1));
    assert_eq!(login.table, Some(tables::Audience::Producer));
    assert_eq!(backends(&login), [("shop/login:80".into(), 1, 100.0)]);
    // Exact is exact; below /login is the default rule's split.
    assert_eq!(rule_of(&web("GET /login/x")), some("shop/web-routes", 0));

    let gold = web("GET /shop/cart?tier=gold");
    assert_eq!(rule_of(&gold), some("shop/web-routes", 3));
    let answer::Outcome::Matched(m) = &gold.outcome else {
        unreachable!()
    };
    assert_eq!(m.order, 3);
    let answer::Action::Forward { headers, path, .. } = &m.action else {
        panic!("{m:?}")
    };
    assert_eq!(path, "/shop/cart?tier=gold");
    assert_eq!(
        headers
            .iter()
            .map(|h| (h.name.as_str(), h.value.as_str()))
            .collect::<Vec<_>>(),
        [("x-tier", "gold")]
    );
    // Another method, another value, or the prefix not element-wise: the default rule.
    for other in [
        "POST /shop/cart?tier=gold",
        "GET /shop?tier=silver",
        "GET /shopping?tier=gold",
    ] {
        let a = web(other);
        assert_eq!(rule_of(&a), some("shop/web-routes", 0), "{other}");
        assert_eq!(
            backends(&a),
            [
                ("shop/web-v1:80".into(), 90, 90.0),
                ("shop/web-v2:80".into(), 10, 10.0)
            ]
        );
    }
    assert_eq!(
        rule_of(&web("GET /any -H X-Canary: true")),
        some("shop/web-routes", 2)
    );
    assert_eq!(
        rule_of(&web("GET /any -H x-canary:false")),
        some("shop/web-routes", 0)
    );

    let old = web("GET /old/page?x=1");
    let answer::Outcome::Matched(m) = &old.outcome else {
        panic!("{old:?}")
    };
    assert_eq!(
        m.action,
        answer::Action::Redirect {
            status: 301,
            location: "http://web.shop.svc.cluster.local/new/page?x=1".into()
        }
    );
    let with_host = web("GET /old -H host: shop.example:80");
    let answer::Outcome::Matched(m) = &with_host.outcome else {
        panic!("{with_host:?}")
    };
    assert_eq!(
        m.action,
        answer::Action::Redirect {
            status: 301,
            location: "http://shop.example/new".into()
        }
    );

    let v1 = web("GET /v1/items?page=2");
    let answer::Outcome::Matched(m) = &v1.outcome else {
        panic!("{v1:?}")
    };
    let answer::Action::Forward {
        path, authority, ..
    } = &m.action
    else {
        panic!("{m:?}")
    };
    assert_eq!(
        (path.as_str(), authority.as_deref()),
        ("/api/v1/items?page=2", Some("api.shop"))
    );

    // The consumer's route replaces the producer's for its clients only.
    let pinned = ask(&view, "shop/web", "GET /login", None, Some("client"));
    assert_eq!(rule_of(&pinned), some("client/pin", 0));
    // Another namespace's Service, with no ReferenceGrant: sent there all
    // the same, as the waypoint does (GEP-1294).
    let answer::Outcome::Matched(m) = &pinned.outcome else {
        unreachable!()
    };
    let answer::Action::Forward { backends, .. } = &m.action else {
        panic!("{m:?}")
    };
    assert_eq!(
        (backends[0].backend.as_str(), &backends[0].unresolved),
        ("shop/web-v1:80", &None)
    );
    assert_eq!(
        pinned.table,
        Some(tables::Audience::Consumer {
            namespace: "client".into()
        })
    );
    let elsewhere = ask(&view, "shop/web", "GET /login", None, Some("other"));
    assert_eq!(rule_of(&elsewhere), some("shop/web-routes", 1));
}

#[test]
fn no_routes_no_match_no_backend_and_port_choice() {
    let view = view();
    let login = ask(&view, "shop/login", "GET /", None, None);
    assert_eq!(
        login.outcome,
        answer::Outcome::NoRoutes {
            endpoints: vec!["10.1.0.1:8080".parse().unwrap()]
        }
    );
    assert_eq!(
        render::answer(&login).lines().last(),
        Some("no routes: the Service's own endpoints (10.1.0.1:8080)")
    );

    let say = ask(&view, "shop/api", "POST /pkg.Echo/Say", Some(9090), None);
    assert_eq!(rule_of(&say), Some(("shop/echo".into(), 0)));
    let other = ask(&view, "shop/api", "POST /pkg.Echo/Shout", Some(9090), None);
    assert_eq!(other.outcome, answer::Outcome::NoMatch { status: 404 });
    assert_eq!(
        render::answer(&other).lines().last(),
        Some("no rule matches: 404")
    );
    // The route names port 9090 by its name only: port 80 has none.
    let http = ask(&view, "shop/api", "POST /pkg.Echo/Say", Some(80), None);
    assert!(matches!(http.outcome, answer::Outcome::NoRoutes { .. }));

    let request = request::parse("GET /").unwrap();
    let q = |port, service: &'static str| {
        answer::answer(
            &view,
            service,
            answer::Question {
                request: &request,
                port,
                from: None,
            },
        )
        .unwrap_err()
        .to_string()
    };
    assert_eq!(
        q(None, "shop/api"),
        "Service shop/api has several ports: 80 (http), 9090 (grpc); name one with --port"
    );
    assert_eq!(
        q(Some(81), "shop/web"),
        "--port 81: Service shop/web has no such port; its ports: 80 (http)"
    );
    assert!(q(None, "shop/nope").starts_with("shop/nope: no Service of that name"));
}

#[tokio::test]
async fn local_mode_cli_answers_requests_and_refuses_bad_ones() {
    let dir = std::env::temp_dir().join(format!("mesh-cli-routing-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("node.yaml");
    std::fs::write(&file, NODE_FILE).unwrap();
    let config = file.to_str().unwrap().to_owned();
    let fails = |out: anyhow::Result<crate::Outcome>| match out {
        Ok(o) => panic!("expected an error, got\n{}", o.text),
        Err(e) => e,
    };
    let run = |args: &[&str]| {
        let mut all = vec!["mesh", "--config", config.as_str(), "inspect"];
        all.extend_from_slice(args);
        crate::run(Cli::parse_from(all))
    };
    let split = run(&["shop/web", "--request", "GET /shop?tier=silver"])
        .await
        .unwrap();
    assert_eq!(
        split.text,
        "request: GET /shop?tier=silver\n\
         to: shop/web port 80, from namespace shop\n\
         routed by: producer routes, for clients in every namespace without routes of its own\n\
         matched: HTTPRoute shop/web-routes rule 0 (default), match 0: PathPrefix / (tried 7th in the table)\n\
         forwarded with path: /shop?tier=silver\n\
         to one of (by weight):\n\
         \x20 shop/web-v1:80 weight 90 (90%)\n\
         \x20 shop/web-v2:80 weight 10 (10%)\n"
    );
    let redirect = run(&["shop/web", "--request", "GET /old/a", "-o", "json"])
        .await
        .unwrap();
    let json: Value = serde_json::from_str(&redirect.text).unwrap();
    assert_eq!(json["outcome"]["result"], "matched");
    assert_eq!(json["outcome"]["action"], "redirect");
    assert_eq!(json["outcome"]["status"], 301);
    assert_eq!(
        json["outcome"]["location"],
        "http://web.shop.svc.cluster.local/new/a"
    );
    let legacy = run(&["shop/web", "--request", "GET /legacy"])
        .await
        .unwrap();
    assert!(
        legacy.text.contains(
            "to one of (by weight):\n  \
             other/legacy:81 weight 1 (50%): answered 500, other/legacy:81: the Service has no such \
             port (it has 80)\n  \
             shop/missing:80 weight 1 (50%): answered 500, shop/missing:80: no such Service\n"
        ),
        "{}",
        legacy.text
    );
    let pinned = run(&["shop/web", "--request", "GET /login", "--from", "client"])
        .await
        .unwrap();
    assert!(
        pinned.text.contains("routed by: consumer routes of namespace client, for its clients only\nmatched: HTTPRoute client/pin rule 0"),
        "{}",
        pinned.text
    );
    let grpc = run(&[
        "shop/api",
        "--port",
        "9090",
        "--request",
        "POST /pkg.Echo/Say",
    ])
    .await
    .unwrap();
    assert!(
        grpc.text.contains("matched: GRPCRoute shop/echo rule 0, match 0: service=pkg.Echo, method=Say (tried 1st in the table)"),
        "{}",
        grpc.text
    );

    let bad = fails(run(&["shop/web", "--request", "GET /x -H novalue"]).await);
    assert_eq!(
        bad.to_string(),
        "--request header \"novalue\" has no ':'; give it as -H name:value"
    );
    let ports = fails(run(&["shop/api", "--request", "GET /"]).await);
    assert!(
        ports.to_string().contains("80 (http), 9090 (grpc)"),
        "{ports}"
    );
    // --port and --from only make sense with --request.
    assert!(Cli::try_parse_from(["mesh", "inspect", "shop/web", "--port", "80"]).is_err());
    std::fs::remove_dir_all(&dir).unwrap();
}

/// The routes and Services of the local file, as the API lists them.
fn kube_answer(method: &Method, path: &str, watch: bool) -> Option<(StatusCode, Value)> {
    if watch {
        return None;
    }
    let ok = |v| Some((StatusCode::OK, v));
    let service = |name: &str, ip: &str, ports: Value| {
        json!({"apiVersion": "v1", "kind": "Service",
               "metadata": {"name": name, "namespace": "shop", "resourceVersion": "1"},
               "spec": {"clusterIP": ip, "ports": ports}})
    };
    let gw = "gateway.networking.k8s.io/v1";
    match (method.as_str(), path) {
        ("GET", "/api/v1/services") => ok(list(
            "Service",
            "v1",
            vec![
                service("web", "10.96.0.1", json!([{"name": "http", "port": 80}])),
                service("web-v1", "10.96.0.2", json!([{"port": 80}])),
                service("web-v2", "10.96.0.3", json!([{"port": 80}])),
            ],
        )),
        ("GET", "/apis/gateway.networking.k8s.io/v1/httproutes") => ok(list(
            "HTTPRoute",
            gw,
            vec![
                json!({"apiVersion": gw, "kind": "HTTPRoute",
                       "metadata": {"name": "web-routes", "namespace": "shop", "resourceVersion": "1",
                                    "creationTimestamp": "2024-01-01T00:00:00Z"},
                       "spec": {"parentRefs": [{"group": "", "kind": "Service", "name": "web", "port": 80}],
                                "rules": [
                                    {"backendRefs": [{"name": "web-v1", "port": 80, "weight": 90},
                                                     {"name": "web-v2", "port": 80, "weight": 10}]},
                                    {"name": "canary",
                                     "matches": [{"headers": [{"name": "x-canary", "value": "true"}]}],
                                     "backendRefs": [{"name": "web-v2", "port": 80}]}]}}),
                // Does not compile: the watch leaves it out of the view.
                json!({"apiVersion": gw, "kind": "HTTPRoute",
                       "metadata": {"name": "bad", "namespace": "shop", "resourceVersion": "1"},
                       "spec": {"parentRefs": [{"group": "", "kind": "Service", "name": "web"}],
                                "rules": [{"matches": [{"path": {"type": "RegularExpression", "value": "("}}]}]}}),
            ],
        )),
        ("GET", p) if p.starts_with("/api") => ok(list("Any", "v1", vec![])),
        _ => Some(not_found("unexpected", json!({}))),
    }
}

#[tokio::test]
async fn kubernetes_mode_routes_come_from_the_listed_httproutes() {
    let (client, seen) = mock(kube_answer);
    let cluster = kube_cluster(client);
    let cli = Cli::parse_from([
        "mesh",
        "inspect",
        "shop/web",
        "--request",
        "GET /x -H x-canary:true",
    ]);
    let view = tokio::time::timeout(
        std::time::Duration::from_secs(20),
        crate::view(&cli, &cluster),
    )
    .await
    .expect("bounded")
    .unwrap();
    let canary = ask(&view, "shop/web", "GET /x -H x-canary:true", None, None);
    assert_eq!(rule_of(&canary), Some(("shop/web-routes".into(), 1)));
    assert_eq!(backends(&canary), [("shop/web-v2:80".into(), 1, 100.0)]);
    let split = ask(&view, "shop/web", "GET /x", None, None);
    assert_eq!(
        backends(&split),
        [
            ("shop/web-v1:80".into(), 90, 90.0),
            ("shop/web-v2:80".into(), 10, 10.0)
        ]
    );
    let web = inspect::inspect(&view, "shop/web").unwrap();
    let routes = web.routes.unwrap();
    let names: Vec<&str> = routes.routes.iter().map(|r| r.route.as_str()).collect();
    assert_eq!(names, ["shop/web-routes"]);
    assert!(seen.lock().unwrap().iter().any(|s| {
        s.uri
            .starts_with("/apis/gateway.networking.k8s.io/v1/httproutes?")
    }));
}
