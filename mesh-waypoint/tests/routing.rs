//! Gateway API routes applied by the waypoint, in one process over
//! loopback (see `in_process.rs` for the bed): matching, header changes,
//! redirects, rewrites, weighted backends across Services, the spec's
//! 404/500/503, route names in the access log and metrics, and a route
//! change under load. Addresses are 127.0.<n>.x with n from 80.
mod support;

use std::{
    collections::BTreeMap,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::Duration,
};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use support::{Bed, Http1, Options, http_backend, within};

/// The routes of the tests: attached to Service web's port 80.
const ROUTES: &str = r#"
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: web-routes, namespace: shop}
spec:
  parentRefs: [{group: "", kind: Service, name: web, port: 80}]
  rules:
  - name: v2-by-header
    matches: [{headers: [{name: x-version, value: "2"}]}]
    backendRefs: [{name: web-v2, port: 80}]
  - matches: [{path: {type: PathPrefix, value: /old}}]
    filters:
    - type: RequestRedirect
      requestRedirect: {hostname: new.example, statusCode: 301, path: {type: ReplacePrefixMatch, replacePrefixMatch: /new}}
  - matches: [{path: {type: PathPrefix, value: /api}}]
    filters:
    - type: URLRewrite
      urlRewrite: {hostname: rewritten.example, path: {type: ReplacePrefixMatch, replacePrefixMatch: /v1}}
    - type: RequestHeaderModifier
      requestHeaderModifier: {set: [{name: x-test-route, value: api}], remove: [x-test-secret]}
    - type: ResponseHeaderModifier
      responseHeaderModifier: {add: [{name: x-response, value: from-route}]}
    backendRefs: [{name: web, port: 80}]
  - matches: [{path: {type: Exact, value: /nowhere}}]
    backendRefs: [{name: missing, port: 80}]
  - matches: [{path: {type: Exact, value: /zero}}]
    backendRefs: [{name: web, port: 80, weight: 0}]
  - matches: [{path: {type: Exact, value: /idle}}]
    backendRefs: [{name: idle, port: 80}]
  - matches: [{path: {type: PathPrefix, value: /web}}]
    backendRefs: [{name: web, port: 80}]
"#;

fn split(v1: u32, v2: u32) -> String {
    format!(
        r#"
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: split, namespace: shop}}
spec:
  parentRefs: [{{group: "", kind: Service, name: web, port: 80}}]
  rules:
  - backendRefs: [{{name: web, port: 80, weight: {v1}}}, {{name: web-v2, port: 80, weight: {v2}}}]
"#
    )
}

async fn bed(n: u8, extra: String) -> Bed {
    Bed::start_with(
        n,
        Options {
            extra,
            ..Options::default()
        },
    )
    .await
}

async fn get(sender: &mut Http1, path: &str, headers: &[(&str, &str)]) -> Response<Incoming> {
    let mut request = Request::get(path).header("host", "web.shop.svc:80");
    for (k, v) in headers {
        request = request.header(*k, *v);
    }
    within(
        "a response",
        sender.send_request(request.body(Empty::new()).unwrap()),
    )
    .await
    .unwrap()
}

fn header<'a>(r: &'a Response<Incoming>, name: &str) -> &'a str {
    r.headers()
        .get(name)
        .map_or("", |v| v.to_str().unwrap_or(""))
}

async fn drain(r: Response<Incoming>) {
    let _ = within("the body", r.into_body().collect()).await;
}

#[tokio::test]
async fn matches_choose_the_backend_service_and_unmatched_requests_get_404() {
    let bed = bed(80, ROUTES.into()).await;
    http_backend(bed.pod(1, 8080), "web-1", false).await;
    http_backend(bed.pod(2, 8080), "web-2", false).await;
    http_backend(bed.pod(3, 8080), "web-3", false).await;
    let mut c = bed.http1(bed.vip(80)).await;
    for _ in 0..4 {
        let r = get(&mut c, "/", &[("x-version", "2")]).await;
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(header(&r, "x-backend"), "web-3");
        drain(r).await;
        // A longer path prefix outranks a header match (Gateway API's
        // precedence): `/web` wins over the header rule's `/`.
        let r = get(&mut c, "/web/y", &[("x-version", "2")]).await;
        assert_eq!(r.status(), StatusCode::OK);
        assert_ne!(header(&r, "x-backend"), "web-3");
        drain(r).await;
        let r = get(&mut c, "/web/x", &[]).await;
        assert_eq!(r.status(), StatusCode::OK);
        assert!(header(&r, "x-backend").starts_with("web-") && header(&r, "x-backend") != "web-3");
        drain(r).await;
    }
    // `/webx` is not below the prefix `/web`, and no rule takes `/`
    // without the header.
    for path in ["/webx", "/"] {
        let r = get(&mut c, path, &[]).await;
        assert_eq!(r.status(), StatusCode::NOT_FOUND, "{path}");
        drain(r).await;
    }
    let lines = bed.wait_access(2, |l| l["status"] == 404).await;
    let line = &lines[0];
    assert_eq!(line["response_flags"], "NR");
    bed.wait_access(4, |l| l["path"] == "/web/x").await;
    let routed = bed.access_lines();
    let v2 = routed
        .iter()
        .find(|l| l["route_rule"] == "v2-by-header")
        .expect("a line for the named rule");
    assert_eq!(v2["route"], "shop/web-routes");
    assert_eq!(
        v2["destination_service"], "web-v2.shop.svc.cluster.local",
        "the backend Service is the destination"
    );
    let unnamed = routed
        .iter()
        .find(|l| l["path"] == "/web/x" && l["route_rule"] == "6");
    assert!(unnamed.is_some(), "an unnamed rule is named by its index");
    assert_eq!(
        bed.metric(
            "istio_requests_total",
            &[
                "route_name=\"shop/web-routes\"",
                "route_rule=\"v2-by-header\"",
                "destination_service_name=\"web-v2\"",
                "response_code=\"200\""
            ]
        ),
        Some(4.0)
    );
}

#[tokio::test]
async fn filters_redirect_rewrite_and_change_headers() {
    let bed = bed(81, ROUTES.into()).await;
    http_backend(bed.pod(1, 8080), "web-1", false).await;
    http_backend(bed.pod(2, 8080), "web-2", false).await;
    let mut c = bed.http1(bed.vip(80)).await;
    let r = get(&mut c, "/old/page?q=1", &[]).await;
    assert_eq!(r.status(), StatusCode::MOVED_PERMANENTLY);
    assert_eq!(header(&r, "location"), "http://new.example/new/page?q=1");
    drain(r).await;
    let r = get(
        &mut c,
        "/api/items?id=7",
        &[("x-test-secret", "s3cret"), ("x-test-keep", "yes")],
    )
    .await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(header(&r, "x-seen-path"), "/v1/items?id=7");
    assert_eq!(header(&r, "x-seen-host"), "rewritten.example");
    assert_eq!(header(&r, "x-seen-route"), "api");
    assert_eq!(header(&r, "x-seen-keep"), "yes");
    assert_eq!(header(&r, "x-seen-secret"), "", "removed on the way");
    assert_eq!(header(&r, "x-response"), "from-route");
    drain(r).await;
}

#[tokio::test]
async fn unusable_backends_get_the_specs_500_and_no_endpoint_503() {
    let bed = bed(82, ROUTES.into()).await;
    let mut c = bed.http1(bed.vip(80)).await;
    for path in ["/nowhere", "/zero"] {
        let r = get(&mut c, path, &[]).await;
        assert_eq!(r.status(), StatusCode::INTERNAL_SERVER_ERROR, "{path}");
        drain(r).await;
    }
    let r = get(&mut c, "/idle", &[]).await;
    assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
    drain(r).await;
    bed.wait_access(1, |l| l["path"] == "/idle").await;
    let lines = bed.access_lines();
    let flags: BTreeMap<String, String> = lines
        .iter()
        .map(|l| {
            (
                l["path"].as_str().unwrap().to_owned(),
                l["response_flags"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(flags["/nowhere"], "NC");
    assert_eq!(flags["/zero"], "NC");
    assert_eq!(flags["/idle"], "UH");
}

#[tokio::test]
async fn a_consumer_route_applies_to_its_namespace_only() {
    // A route in namespace `shop` is the producer's; one in `client-ns`
    // applies only to clients whose identity is in `client-ns`, and sends
    // to the Service in `shop` without a ReferenceGrant (GEP-1294).
    let consumer = r#"
---
apiVersion: v1
kind: Namespace
metadata: {name: client-ns}
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: consumer, namespace: client-ns}
spec:
  parentRefs: [{group: "", kind: Service, name: web, namespace: shop, port: 80}]
  rules:
  - filters:
    - type: RequestHeaderModifier
      requestHeaderModifier: {set: [{name: x-test-consumer, value: "yes"}]}
    backendRefs: [{name: web, namespace: shop, port: 80}]
"#;
    let bed = bed(83, consumer.into()).await;
    http_backend(bed.pod(1, 8080), "web-1", false).await;
    http_backend(bed.pod(2, 8080), "web-2", false).await;
    let mut c = bed.http1(bed.vip(80)).await;
    let r = get(&mut c, "/", &[]).await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(
        header(&r, "x-seen-consumer"),
        "",
        "shop's client: no consumer route"
    );
    drain(r).await;
    let other = bed.ca.svid("client-ns", "app");
    let mut c2 = bed.http1_as(&other, bed.vip(80)).await;
    let r = get(&mut c2, "/", &[]).await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(header(&r, "x-seen-consumer"), "yes");
    drain(r).await;
}

/// A split changed from all-v1 to all-v2 while requests run on four
/// connections: every request succeeds, and after the change every one
/// goes to v2.
#[tokio::test]
async fn a_split_changed_under_load_fails_no_request() {
    let bed = Arc::new(bed(84, split(100, 0)).await);
    http_backend(bed.pod(1, 8080), "web-1", false).await;
    http_backend(bed.pod(2, 8080), "web-2", false).await;
    let v2 = http_backend(bed.pod(3, 8080), "web-3", false).await;
    let stop = Arc::new(AtomicBool::new(false));
    let failed = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(AtomicUsize::new(0));
    let mut load = tokio::task::JoinSet::new();
    for _ in 0..4 {
        let (bed, stop, failed, done) = (bed.clone(), stop.clone(), failed.clone(), done.clone());
        load.spawn(async move {
            let mut c = bed.http1(bed.vip(80)).await;
            while !stop.load(Ordering::SeqCst) {
                let r = get(&mut c, "/", &[]).await;
                if r.status() != StatusCode::OK {
                    failed.fetch_add(1, Ordering::SeqCst);
                }
                drain(r).await;
                done.fetch_add(1, Ordering::SeqCst);
            }
        });
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(v2.load(Ordering::SeqCst), 0, "100/0: nothing to v2");
    bed.reconfigure(&split(0, 100));
    let before = done.load(Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::SeqCst);
    while let Some(r) = within("the load to stop", load.join_next()).await {
        r.unwrap();
    }
    assert_eq!(failed.load(Ordering::SeqCst), 0);
    let after = done.load(Ordering::SeqCst) - before;
    assert!(after > 10, "requests ran after the change: {after}");
    // Requests in flight at the change may still go to v1; at most one
    // per connection.
    assert!(
        v2.load(Ordering::SeqCst) + 4 >= after,
        "after the change requests go to v2: {} of {after}",
        v2.load(Ordering::SeqCst)
    );
}

/// A GRPCRoute on the HTTP/2 port: the method match (exact, then a
/// service regex) picks the backend Service, a header is set on the way,
/// and a method no rule matches gets 404.
#[tokio::test]
async fn a_grpc_route_matches_methods() {
    let route = r#"
---
apiVersion: gateway.networking.k8s.io/v1
kind: GRPCRoute
metadata: {name: web-grpc, namespace: shop}
spec:
  parentRefs: [{group: "", kind: Service, name: web, port: 81}]
  rules:
  - matches: [{method: {service: svc.Echo, method: Call}}]
    filters:
    - type: RequestHeaderModifier
      requestHeaderModifier: {set: [{name: x-test-grpc, value: call}]}
    backendRefs: [{name: web-v2, port: 81}]
  - matches: [{method: {type: RegularExpression, service: "svc\\..*"}}]
    backendRefs: [{name: web, port: 81}]
"#;
    let bed = bed(85, route.into()).await;
    http_backend(bed.pod(1, 8081), "web-1", true).await;
    http_backend(bed.pod(2, 8081), "web-2", true).await;
    http_backend(bed.pod(3, 8081), "web-3", true).await;
    let mut sender = bed.http2(bed.vip(81)).await;
    let mut call = async |path: &str| {
        let request = support::grpc_post(format!("http://web.shop.svc:81{path}"))
            .body(Empty::<Bytes>::new())
            .unwrap();
        within("a response", sender.send_request(request))
            .await
            .unwrap()
    };
    let r = call("/svc.Echo/Call").await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(header(&r, "x-backend"), "web-3");
    assert_eq!(header(&r, "x-seen-grpc"), "call");
    drain(r).await;
    let r = call("/svc.Other/Do").await;
    assert_eq!(r.status(), StatusCode::OK);
    assert!(["web-1", "web-2"].contains(&header(&r, "x-backend")));
    assert_eq!(header(&r, "x-seen-grpc"), "");
    drain(r).await;
    let r = call("/other.Svc/Do").await;
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    drain(r).await;
}
