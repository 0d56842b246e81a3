//! Istio DestinationRules at the waypoint, in one process over loopback
//! (see `in_process.rs` for the bed): outlier detection ejecting a failing
//! endpoint and letting it back, connection pool limits answering 503 UO,
//! `maxRetries` capping retries in flight, the load balancers, port level
//! settings, and a rule that does not validate. Addresses are 127.0.<n>.x
//! with n from 130.
mod support;

use std::{
    path::Path,
    time::{Duration, Instant},
};

use http::Request;
use http_body_util::Empty;
use support::{Bed, Http1, Options, Script, exchange, http_backend, scripted_backend};

fn rule(policy: &str) -> String {
    format!(
        r#"
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: web, namespace: shop}}
spec:
  host: web.shop.svc.cluster.local
  trafficPolicy:
{policy}"#
    )
}

async fn bed_with(n: u8, extra: String) -> Bed {
    Bed::start_with(
        n,
        Options {
            extra,
            ..Options::default()
        },
    )
    .await
}

/// What one request got: its status, the backend that answered (if one
/// did), and the body.
#[derive(Debug, Clone)]
struct Answer {
    status: u16,
    backend: Option<String>,
    body: String,
}

async fn get_with(sender: &mut Http1, path: &str, headers: &[(&str, &str)]) -> Answer {
    let mut request = Request::get(path).header("host", "web.shop.svc");
    for (k, v) in headers {
        request = request.header(*k, *v);
    }
    let (response, body) = exchange(sender, request.body(Empty::new()).unwrap()).await;
    Answer {
        status: response.status().as_u16(),
        backend: response
            .headers()
            .get("x-backend")
            .map(|v| v.to_str().unwrap().to_owned()),
        body: String::from_utf8_lossy(&body).into_owned(),
    }
}

async fn get(sender: &mut Http1, path: &str) -> Answer {
    get_with(sender, path, &[]).await
}

#[tokio::test]
async fn a_failing_endpoint_is_ejected_after_consecutive_5xx_and_let_back_after_the_ejection() {
    let bed = bed_with(
        130,
        rule(
            "    loadBalancer: {simple: ROUND_ROBIN}\n    outlierDetection: {consecutive5xxErrors: 3, interval: 1s, baseEjectionTime: 2s}\n",
        ),
    )
    .await;
    let failing = Script::new();
    failing.answer(&[500, 500, 500]);
    scripted_backend(bed.pod(1, 8080), "web-1", failing.clone()).await;
    http_backend(bed.pod(2, 8080), "web-2", false).await;
    let mut c = bed.http1(bed.vip(80)).await;
    // Round robin: web-1 gets every other request until its third 500.
    let mut sent = 0;
    while failing.seen().len() < 3 {
        get(&mut c, "/").await;
        sent += 1;
        assert!(sent < 20, "web-1 did not get 3 requests in {sent}");
    }
    let ejected_at = Instant::now();
    assert_eq!(
        bed.metric(
            "mesh_waypoint_endpoint_ejections_total",
            &[
                "service=\"shop/web\"",
                &format!("endpoint=\"{}\"", bed.pod(1, 8080))
            ]
        ),
        Some(1.0)
    );
    // Ejected: everything goes to web-2 while the ejection lasts (the
    // requests are sent in its first 300 ms, with 2 s of margin for a
    // loaded machine).
    let mut during = 0;
    while ejected_at.elapsed() < Duration::from_millis(300) {
        let a = get(&mut c, "/").await;
        if ejected_at.elapsed() < Duration::from_secs(2) {
            assert_eq!((a.status, a.backend.as_deref()), (200, Some("web-2")));
            during += 1;
        }
    }
    assert!(during >= 2, "only {during} requests during the ejection");
    assert_eq!(failing.seen().len(), 3, "no request reached web-1 ejected");
    // After it, web-1 (healthy now) gets requests again.
    tokio::time::sleep_until((ejected_at + Duration::from_millis(2050)).into()).await;
    let mut back = false;
    for _ in 0..6 {
        let a = get(&mut c, "/").await;
        assert_eq!(a.status, 200);
        back |= a.backend.as_deref() == Some("web-1");
    }
    assert!(back, "web-1 got no request after its ejection ended");
}

/// Two clients whose requests web holds for `hold`, then a third.
async fn held_pair_then_one(bed: &Bed, hold: Duration) -> (Answer, Answer, Answer) {
    let script = Script::new();
    script.always_wait(hold);
    scripted_backend(bed.pod(1, 8080), "web-1", script.clone()).await;
    scripted_backend(bed.pod(2, 8080), "web-2", script.clone()).await;
    let mut a = bed.http1(bed.vip(80)).await;
    let mut b = bed.http1(bed.vip(80)).await;
    let mut c = bed.http1(bed.vip(80)).await;
    let first = tokio::spawn(async move { get(&mut a, "/first").await });
    script.wait_seen(1).await;
    let second = tokio::spawn(async move { get(&mut b, "/second").await });
    // The second has reached the waypoint once it waits there for a
    // connection or has been refused: the third comes after it, however
    // loaded the machine.
    let view = bed.waypoint.view();
    let web = bed
        .waypoint
        .destinations
        .applied(&view, "shop", "web", 80)
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while web.state.pool.in_use().2 == 0 && !second.is_finished() {
        assert!(
            Instant::now() < deadline,
            "the second request did not reach the waypoint"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let third = get(&mut c, "/third").await;
    (first.await.unwrap(), second.await.unwrap(), third)
}

#[tokio::test]
async fn requests_over_http1_max_pending_requests_get_503_uo_while_the_connection_is_held() {
    let bed = bed_with(
        131,
        rule(
            "    connectionPool: {tcp: {maxConnections: 1}, http: {http1MaxPendingRequests: 1}}\n",
        ),
    )
    .await;
    let started = Instant::now();
    let (first, second, third) = held_pair_then_one(&bed, Duration::from_millis(700)).await;
    // The third came while the first held the only connection and the
    // second waited: over the pending bound.
    assert_eq!(third.status, 503);
    assert!(third.body.contains("UO"), "{third:?}");
    assert!(third.backend.is_none());
    // The second waited its turn and was served after the first.
    assert_eq!((first.status, second.status), (200, 200));
    assert!(started.elapsed() >= Duration::from_millis(1400));
    assert_eq!(
        bed.metric(
            "mesh_waypoint_upstream_overflow_total",
            &[
                "service=\"shop/web\"",
                "limit=\"http1_max_pending_requests\""
            ]
        ),
        Some(1.0)
    );
    let line = bed
        .wait_access(1, |l| l["path"] == "/third")
        .await
        .remove(0);
    assert_eq!(line["response_flags"], "UO", "{line}");
}

#[tokio::test]
async fn requests_over_http2_max_requests_get_503_uo_and_pass_once_it_frees() {
    let bed = bed_with(
        131 + 1,
        rule("    connectionPool: {http: {http2MaxRequests: 1}}\n"),
    )
    .await;
    let (first, second, third) = held_pair_then_one(&bed, Duration::from_millis(500)).await;
    assert_eq!(first.status, 200);
    for over in [&second, &third] {
        assert_eq!(over.status, 503, "{over:?}");
        assert!(over.body.contains("UO"), "{over:?}");
    }
    assert_eq!(
        bed.metric(
            "mesh_waypoint_upstream_overflow_total",
            &["service=\"shop/web\"", "limit=\"http2_max_requests\""]
        ),
        Some(2.0)
    );
    // Nothing in flight any more: the next one passes.
    let mut c = bed.http1(bed.vip(80)).await;
    assert_eq!(get(&mut c, "/after").await.status, 200);
}

const RETRY_ROUTE: &str = r#"
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: retries, namespace: shop}
spec:
  parentRefs: [{group: "", kind: Service, name: web, port: 80}]
  rules:
  - backendRefs: [{name: web, port: 80}]
    retry: {codes: [503], attempts: 3, backoff: 1ms}
"#;

#[tokio::test]
async fn max_retries_caps_the_retries_in_flight_to_the_service() {
    let extra = format!(
        "{RETRY_ROUTE}{}",
        rule("    connectionPool: {http: {maxRetries: 1}}\n")
    );
    let bed = bed_with(133, extra).await;
    let script = Script::new();
    // A's first attempt fails, its retry is held; B's first attempt
    // fails while A's retry is in flight.
    script.answer(&[503, 200, 503]);
    script.wait(&[Duration::ZERO, Duration::from_millis(800), Duration::ZERO]);
    scripted_backend(bed.pod(1, 8080), "web-1", script.clone()).await;
    scripted_backend(bed.pod(2, 8080), "web-2", script.clone()).await;
    let mut a = bed.http1(bed.vip(80)).await;
    let mut b = bed.http1(bed.vip(80)).await;
    let first = tokio::spawn(async move { get(&mut a, "/a").await });
    script.wait_seen(2).await;
    let started = Instant::now();
    let refused = get(&mut b, "/b").await;
    assert_eq!(refused.status, 503, "{refused:?}");
    assert!(
        started.elapsed() < Duration::from_millis(600),
        "B's retry was not refused at once"
    );
    assert_eq!(
        bed.metric(
            "mesh_waypoint_upstream_overflow_total",
            &["service=\"shop/web\"", "limit=\"max_retries\""]
        ),
        Some(1.0)
    );
    let line = bed.wait_access(1, |l| l["path"] == "/b").await.remove(0);
    assert_eq!(line["attempts"], 1, "{line}");
    assert!(
        line["response_flags"].as_str().unwrap().contains("URX"),
        "{line}"
    );
    // A's retry was made and answered.
    assert_eq!(first.await.unwrap().status, 200);
    assert_eq!(script.seen().len(), 3);
}

#[tokio::test]
async fn a_consistent_hash_on_a_header_keeps_a_value_on_one_endpoint_and_spreads_values() {
    let bed = bed_with(
        134,
        rule("    loadBalancer: {consistentHash: {httpHeaderName: x-user}}\n"),
    )
    .await;
    http_backend(bed.pod(1, 8080), "web-1", false).await;
    http_backend(bed.pod(2, 8080), "web-2", false).await;
    let mut c = bed.http1(bed.vip(80)).await;
    for user in ["ann", "bob", "cy"] {
        let mut seen = std::collections::BTreeSet::new();
        for _ in 0..8 {
            let a = get_with(&mut c, "/", &[("x-user", user)]).await;
            seen.insert(a.backend.unwrap());
        }
        assert_eq!(seen.len(), 1, "{user} went to {seen:?}");
    }
    let mut seen = std::collections::BTreeSet::new();
    for i in 0..24 {
        let a = get_with(&mut c, "/", &[("x-user", &format!("user-{i}"))]).await;
        seen.insert(a.backend.unwrap());
    }
    assert_eq!(seen.len(), 2, "24 users all on {seen:?}");
}

#[tokio::test]
async fn round_robin_alternates_and_random_reaches_every_endpoint() {
    let bed = bed_with(135, rule("    loadBalancer: {simple: ROUND_ROBIN}\n")).await;
    http_backend(bed.pod(1, 8080), "web-1", false).await;
    http_backend(bed.pod(2, 8080), "web-2", false).await;
    let mut c = bed.http1(bed.vip(80)).await;
    let mut order = Vec::new();
    for _ in 0..8 {
        order.push(get(&mut c, "/").await.backend.unwrap());
    }
    assert!(
        order.windows(2).all(|w| w[0] != w[1]),
        "not in turn: {order:?}"
    );
    bed.reconfigure(&rule("    loadBalancer: {simple: RANDOM}\n"));
    let mut counts = std::collections::BTreeMap::<String, usize>::new();
    for _ in 0..40 {
        *counts
            .entry(get(&mut c, "/").await.backend.unwrap())
            .or_default() += 1;
    }
    assert_eq!(counts.len(), 2, "{counts:?}");
}

#[tokio::test]
async fn port_level_settings_override_the_services_policy_for_their_port() {
    let bed = bed_with(
        136,
        rule(
            "    loadBalancer: {simple: ROUND_ROBIN}\n    portLevelSettings:\n    - port: {number: 80}\n      loadBalancer: {consistentHash: {httpHeaderName: x-user}}\n",
        ),
    )
    .await;
    http_backend(bed.pod(1, 8080), "web-1", false).await;
    http_backend(bed.pod(2, 8080), "web-2", false).await;
    // Port 80: hashed, so one user stays on one endpoint.
    let mut c80 = bed.http1(bed.vip(80)).await;
    let mut on_80 = std::collections::BTreeSet::new();
    for _ in 0..6 {
        on_80.insert(get_with(&mut c80, "/", &[("x-user", "ann")]).await.backend);
    }
    assert_eq!(on_80.len(), 1, "{on_80:?}");
    // Port 83 (the same pods' 8080): the Service's round robin.
    let mut c83 = bed.http1(bed.vip(83)).await;
    let mut order = Vec::new();
    for _ in 0..6 {
        order.push(get_with(&mut c83, "/", &[("x-user", "ann")]).await.backend);
    }
    assert!(
        order.windows(2).all(|w| w[0] != w[1]),
        "port 83 not in turn: {order:?}"
    );
}

#[tokio::test]
async fn a_rule_that_does_not_validate_is_refused_naming_line_and_field() {
    let text = format!(
        "{}{}",
        support::node_file(137),
        rule("    outlierDetection: {baseEjectionTime: soon}\n")
    );
    let e = mesh_discovery::NodeConfig::parse(Path::new("node.yaml"), &text, None)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains(
            "DestinationRule shop/web: spec.trafficPolicy.outlierDetection.baseEjectionTime"
        ),
        "{e}"
    );
    assert!(e.starts_with("node.yaml:"), "{e}");
    let unknown = format!(
        "{}{}",
        support::node_file(137),
        rule("    outlierDetection: {consecutiveErrors: 2}\n")
    );
    let e = mesh_discovery::NodeConfig::parse(Path::new("node.yaml"), &unknown, None)
        .unwrap_err()
        .to_string();
    assert!(e.contains("consecutiveErrors"), "{e}");
    // A valid rule reaches the waypoint, which keeps state for the
    // Service port it applies to.
    let bed = bed_with(137, rule("    loadBalancer: {simple: RANDOM}\n")).await;
    http_backend(bed.pod(1, 8080), "web-1", false).await;
    http_backend(bed.pod(2, 8080), "web-2", false).await;
    let mut c = bed.http1(bed.vip(80)).await;
    assert_eq!(get(&mut c, "/").await.status, 200);
    assert_eq!(bed.waypoint.destinations.tracked(), 1);
}

/// Upstream connections the waypoint opened to web's pods' port 8080 (one
/// tunnel each).
fn connections(bed: &Bed) -> usize {
    bed.pods
        .seen
        .lock()
        .unwrap()
        .iter()
        .filter(|(_, dst)| dst.port() == 8080)
        .count()
}

/// `n` requests one after the other, all hashed to one endpoint, a pause
/// after each so that its connection is back in the pool.
async fn in_turn(bed: &Bed, n: usize, pause: Duration) {
    let mut c = bed.http1(bed.vip(80)).await;
    for _ in 0..n {
        let a = get_with(&mut c, "/", &[("x-user", "ann")]).await;
        assert_eq!(a.status, 200, "{a:?}");
        tokio::time::sleep(pause).await;
    }
}

#[tokio::test]
async fn max_requests_per_connection_opens_a_new_connection_after_that_many() {
    let hashed = "    loadBalancer: {consistentHash: {httpHeaderName: x-user}}\n";
    let bed = bed_with(138, rule(hashed)).await;
    http_backend(bed.pod(1, 8080), "web-1", false).await;
    http_backend(bed.pod(2, 8080), "web-2", false).await;
    in_turn(&bed, 4, Duration::from_millis(30)).await;
    assert_eq!(connections(&bed), 1, "one connection, reused");
    bed.reconfigure(&rule(&format!(
        "{hashed}    connectionPool: {{http: {{maxRequestsPerConnection: 2}}}}\n"
    )));
    in_turn(&bed, 4, Duration::from_millis(30)).await;
    // The pooled connection had carried 4: a new one, then one per 2.
    assert_eq!(connections(&bed), 3);
}

#[tokio::test]
async fn a_connection_idle_past_idle_timeout_is_not_used_again() {
    let bed = bed_with(
        139,
        rule(
            "    loadBalancer: {consistentHash: {httpHeaderName: x-user}}\n    connectionPool: {http: {idleTimeout: 1s}}\n",
        ),
    )
    .await;
    http_backend(bed.pod(1, 8080), "web-1", false).await;
    http_backend(bed.pod(2, 8080), "web-2", false).await;
    in_turn(&bed, 2, Duration::from_millis(30)).await;
    assert_eq!(connections(&bed), 1, "reused within the idle timeout");
    tokio::time::sleep(Duration::from_millis(1100)).await;
    in_turn(&bed, 1, Duration::ZERO).await;
    assert_eq!(connections(&bed), 2, "a new one after it");
}
