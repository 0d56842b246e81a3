//! What a route rule does when backends fail or are slow, and its copies
//! to mirrors, in one process over loopback (see `in_process.rs` for the
//! bed): retries on listed statuses and resets, retries spent (URX), a
//! body too large to keep (sent once, whole), the request and
//! backendRequest timeouts and "0s", mirrors at 100 %, 0 % and a fraction,
//! and slow or dead mirrors that leave the request alone. Backends answer
//! as a `Script` says. Addresses are 127.0.<n>.x with n from 90.
mod support;

use std::{
    convert::Infallible,
    pin::Pin,
    task::{Context, Poll},
    time::{Duration, Instant},
};

use bytes::Bytes;
use http::{HeaderMap, Request, StatusCode};
use http_body_util::{BodyExt, Full, combinators::UnsyncBoxBody};
use hyper::{
    body::{Body, Frame},
    client::conn::http1,
};
use support::{Bed, Options, Script, scripted_backend, within};
use tokio::sync::mpsc;

/// The rules of the tests, on Service web's port 80 (pods .1 and .2);
/// mirrors go to web-v2 (pod .3).
const ROUTES: &str = r#"
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: resilience, namespace: shop}
spec:
  parentRefs: [{group: "", kind: Service, name: web, port: 80}]
  rules:
  - name: retry
    matches: [{path: {type: PathPrefix, value: /retry}}]
    backendRefs: [{name: web, port: 80}]
    retry: {codes: [503], attempts: 3, backoff: 10ms}
  - name: few
    matches: [{path: {type: PathPrefix, value: /few}}]
    backendRefs: [{name: web, port: 80}]
    retry: {codes: [503], attempts: 2, backoff: 10ms}
  - name: storm
    matches: [{path: {type: PathPrefix, value: /storm}}]
    backendRefs: [{name: web, port: 80}]
    retry: {codes: [503], attempts: 3, backoff: 1ms}
  - name: slow
    matches: [{path: {type: PathPrefix, value: /slow}}]
    backendRefs: [{name: web, port: 80}]
    timeouts: {request: 200ms}
  - name: per-try
    matches: [{path: {type: PathPrefix, value: /per-try}}]
    backendRefs: [{name: web, port: 80}]
    timeouts: {request: 5s, backendRequest: 200ms}
    retry: {codes: [503], attempts: 2, backoff: 10ms}
  - name: unbounded
    matches: [{path: {type: PathPrefix, value: /unbounded}}]
    backendRefs: [{name: web, port: 80}]
    timeouts: {request: "0s"}
  - name: mirror-all
    matches: [{path: {type: PathPrefix, value: /mirror-all}}]
    filters:
    - type: RequestMirror
      requestMirror: {backendRef: {name: web-v2, port: 80}}
    backendRefs: [{name: web, port: 80}]
  - name: mirror-none
    matches: [{path: {type: PathPrefix, value: /mirror-none}}]
    filters:
    - type: RequestMirror
      requestMirror: {backendRef: {name: web-v2, port: 80}, percent: 0}
    backendRefs: [{name: web, port: 80}]
  - name: mirror-half
    matches: [{path: {type: PathPrefix, value: /mirror-half}}]
    filters:
    - type: RequestMirror
      requestMirror: {backendRef: {name: web-v2, port: 80}, fraction: {numerator: 1, denominator: 2}}
    backendRefs: [{name: web, port: 80}]
  - backendRefs: [{name: web, port: 80}]
"#;

async fn bed_with(n: u8, response_timeout: Duration) -> Bed {
    Bed::start_with(
        n,
        Options {
            extra: ROUTES.into(),
            response_timeout,
            ..Options::default()
        },
    )
    .await
}

async fn bed(n: u8) -> Bed {
    bed_with(n, support::WAIT).await
}

/// Backends web-1 and web-2 answering as one script.
async fn web(bed: &Bed) -> std::sync::Arc<Script> {
    let script = Script::new();
    scripted_backend(bed.pod(1, 8080), "web-1", script.clone()).await;
    scripted_backend(bed.pod(2, 8080), "web-2", script.clone()).await;
    script
}

type ClientBody = UnsyncBoxBody<Bytes, Infallible>;

fn body(b: impl Into<Bytes>) -> ClientBody {
    Full::new(b.into()).boxed_unsync()
}

/// An HTTP/1.1 client on one tunnel to web:80 through the waypoint.
async fn client(bed: &Bed) -> http1::SendRequest<ClientBody> {
    bed.http1(bed.vip(80)).await
}

struct Answer {
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
    took: Duration,
}

async fn send(
    c: &mut http1::SendRequest<ClientBody>,
    method: &str,
    path: &str,
    b: ClientBody,
) -> Answer {
    let started = Instant::now();
    let request = Request::builder()
        .method(method)
        .uri(path)
        .header("host", "web.shop.svc:80")
        .body(b)
        .unwrap();
    let response = within("a response", c.send_request(request)).await.unwrap();
    let status = response.status();
    let headers = response.headers().clone();
    let body = within("the body", response.into_body().collect())
        .await
        .unwrap()
        .to_bytes();
    Answer {
        status,
        headers,
        body,
        took: started.elapsed(),
    }
}

async fn get(c: &mut http1::SendRequest<ClientBody>, path: &str) -> Answer {
    send(c, "GET", path, body(Bytes::new())).await
}

/// The one access line for `path`.
async fn line(bed: &Bed, path: &str) -> serde_json::Value {
    let lines = bed.wait_access(1, |l| l["path"] == path).await;
    assert_eq!(lines.len(), 1, "{lines:#?}");
    lines[0].clone()
}

#[tokio::test]
async fn a_listed_status_and_a_reset_are_retried_on_another_endpoint() {
    let bed = bed(90).await;
    let script = web(&bed).await;
    let mut c = client(&bed).await;
    script.answer(&[503, 503]);
    let a = get(&mut c, "/retry/a").await;
    assert_eq!(a.status, StatusCode::OK, "the third attempt's answer");
    let l = line(&bed, "/retry/a").await;
    assert_eq!(l["attempts"], 3);
    assert_eq!(l["status"], 200);
    assert_eq!(l["response_flags"], "-");
    assert_eq!(l["route_rule"], "retry");
    let seen = script.seen();
    assert_eq!(seen.len(), 3);
    // Two endpoints: each retry goes to the one not tried last.
    assert_ne!(seen[0].backend, seen[1].backend);
    assert_ne!(seen[1].backend, seen[2].backend);
    assert_eq!(
        bed.metric("mesh_waypoint_retries_total", &["reason=\"status\""]),
        Some(2.0)
    );

    // A connection dropped before any answer: retried too.
    script.answer(&[0]);
    let a = get(&mut c, "/retry/reset").await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(line(&bed, "/retry/reset").await["attempts"], 2);
    assert_eq!(
        bed.metric("mesh_waypoint_retries_total", &["reason=\"reset\""]),
        Some(1.0)
    );

    // A status not listed is the answer.
    script.answer(&[500]);
    let a = get(&mut c, "/retry/500").await;
    assert_eq!(a.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(line(&bed, "/retry/500").await["attempts"], 1);

    // A small body goes whole with each attempt, and is counted once.
    script.answer(&[503]);
    let payload = Bytes::from(vec![b'p'; 1024]);
    let a = send(&mut c, "POST", "/retry/post", body(payload.clone())).await;
    assert_eq!(a.status, StatusCode::OK);
    let l = line(&bed, "/retry/post").await;
    assert_eq!(l["attempts"], 2);
    assert_eq!(l["bytes_received"], 1024);
    let posts: Vec<_> = script
        .seen()
        .into_iter()
        .filter(|s| s.path == "/retry/post")
        .collect();
    assert_eq!(posts.len(), 2);
    assert!(
        posts
            .iter()
            .all(|s| s.method == "POST" && s.body == payload)
    );
}

#[tokio::test]
async fn retries_spent_answer_the_last_status_flagged_urx() {
    let bed = bed(91).await;
    let script = web(&bed).await;
    let mut c = client(&bed).await;
    script.answer(&[503, 503, 503, 503]);
    let a = get(&mut c, "/few").await;
    assert_eq!(a.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(
        a.body.starts_with(b"web-"),
        "the backend's own answer, not one made here"
    );
    let l = line(&bed, "/few").await;
    assert_eq!(l["attempts"], 3, "the first and two retries");
    assert_eq!(l["response_flags"], "URX");
    assert_eq!(script.seen().len(), 3);
    // The fourth status is still to be given: nothing more was sent.
    let a = get(&mut c, "/other").await;
    assert_eq!(a.status, StatusCode::SERVICE_UNAVAILABLE);
}

/// A body whose parts the test sends when it likes.
struct Drip(mpsc::Receiver<Bytes>);

impl Body for Drip {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.0.poll_recv(cx).map(|b| b.map(|b| Ok(Frame::data(b))))
    }
}

#[tokio::test]
async fn a_body_too_large_or_too_slow_to_keep_goes_once_and_whole() {
    let bed = bed(92).await;
    let script = web(&bed).await;
    let mut c = client(&bed).await;
    script.answer(&[503]);
    let large: Bytes = (0..100 * 1024).map(|i| (i % 251) as u8).collect();
    let a = send(&mut c, "POST", "/retry/large", body(large.clone())).await;
    assert_eq!(a.status, StatusCode::SERVICE_UNAVAILABLE, "not retried");
    let l = line(&bed, "/retry/large").await;
    assert_eq!(l["attempts"], 1);
    assert_eq!(l["bytes_received"], large.len());
    let seen = script.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].body, large, "what was read, then the rest");
    assert_eq!(
        bed.metric(
            "mesh_waypoint_unreplayable_requests_total",
            &["reason=\"body_over_limit\""]
        ),
        Some(1.0)
    );

    // A client that pauses mid-body longer than the waypoint waits: its
    // request goes on as it comes, not retried.
    let (tx, rx) = mpsc::channel(4);
    let sent = tokio::spawn(async move {
        tx.send(Bytes::from_static(b"first part;")).await.unwrap();
        tokio::time::sleep(Duration::from_millis(1500)).await;
        tx.send(Bytes::from_static(b"second part")).await.unwrap();
    });
    script.answer(&[503]);
    let a = send(&mut c, "POST", "/retry/slow-body", Drip(rx).boxed_unsync()).await;
    sent.await.unwrap();
    assert_eq!(a.status, StatusCode::SERVICE_UNAVAILABLE, "not retried");
    let seen = script.seen();
    assert_eq!(seen.len(), 2);
    assert_eq!(seen[1].body, "first part;second part");
    assert_eq!(line(&bed, "/retry/slow-body").await["attempts"], 1);
    assert_eq!(
        bed.metric(
            "mesh_waypoint_unreplayable_requests_total",
            &["reason=\"body_too_slow\""]
        ),
        Some(1.0)
    );
}

#[tokio::test]
async fn the_request_timeout_answers_504_ut_in_time() {
    let bed = bed(93).await;
    let script = web(&bed).await;
    script.always_wait(Duration::from_secs(3));
    let mut c = client(&bed).await;
    let a = get(&mut c, "/slow").await;
    assert_eq!(a.status, StatusCode::GATEWAY_TIMEOUT);
    assert!(
        a.took >= Duration::from_millis(190) && a.took < Duration::from_millis(1500),
        "{:?}",
        a.took
    );
    let l = line(&bed, "/slow").await;
    assert_eq!(l["response_flags"], "UT");
    assert_eq!(l["attempts"], 1);
}

#[tokio::test]
async fn a_backend_request_timeout_is_retried_within_the_request_timeout() {
    let bed = bed(94).await;
    let script = web(&bed).await;
    let mut c = client(&bed).await;
    // The first attempt is slower than backendRequest; the second is not.
    script.wait(&[Duration::from_secs(3)]);
    let a = get(&mut c, "/per-try").await;
    assert_eq!(a.status, StatusCode::OK);
    assert!(a.took < Duration::from_millis(1500), "{:?}", a.took);
    let l = line(&bed, "/per-try").await;
    assert_eq!(l["attempts"], 2);
    assert_eq!(l["response_flags"], "-");
    assert_eq!(
        bed.metric("mesh_waypoint_retries_total", &["reason=\"timeout\""]),
        Some(1.0)
    );
    // Every attempt too slow: retries spent, 504 UT and URX.
    script.always_wait(Duration::from_secs(3));
    let a = get(&mut c, "/per-try/never").await;
    assert_eq!(a.status, StatusCode::GATEWAY_TIMEOUT);
    assert!(a.took < Duration::from_millis(2500), "{:?}", a.took);
    let l = line(&bed, "/per-try/never").await;
    assert_eq!(l["attempts"], 3);
    assert_eq!(l["response_flags"], "URX,UT");
}

#[tokio::test]
async fn a_zero_request_timeout_turns_the_waypoints_own_off() {
    // The waypoint's own response timeout is 300 ms here.
    let bed = bed_with(95, Duration::from_millis(300)).await;
    let script = web(&bed).await;
    script.always_wait(Duration::from_millis(800));
    let mut c = client(&bed).await;
    let a = get(&mut c, "/unbounded").await;
    assert_eq!(a.status, StatusCode::OK, "\"0s\": no timeout");
    let a = get(&mut c, "/bounded").await;
    assert_eq!(
        a.status,
        StatusCode::GATEWAY_TIMEOUT,
        "without it, the waypoint's own"
    );
    assert_eq!(line(&bed, "/bounded").await["response_flags"], "UT");
}

#[tokio::test]
async fn a_mirror_at_100_percent_gets_a_shadow_copy_and_the_client_the_primarys_answer() {
    let bed = bed(96).await;
    let primary = web(&bed).await;
    let mirror = Script::new();
    // The mirror's answer, whatever it is, is not the client's.
    mirror.answer(&[500]);
    scripted_backend(bed.pod(3, 8080), "web-3", mirror.clone()).await;
    let mut c = client(&bed).await;
    let a = send(&mut c, "POST", "/mirror-all/x?q=1", body("hello")).await;
    assert_eq!(a.status, StatusCode::OK);
    assert_ne!(a.headers["x-backend"], "web-3");
    let seen = primary.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].host, "web.shop.svc:80");
    let copy = &mirror.wait_seen(1).await[0];
    assert_eq!(copy.host, "web.shop.svc-shadow:80");
    assert_eq!(copy.path, "/mirror-all/x?q=1");
    assert_eq!(copy.method, "POST");
    assert_eq!(copy.body, "hello");
    let l = line(&bed, "/mirror-all/x?q=1").await;
    assert_eq!(l["status"], 200);
    assert_eq!(l["attempts"], 1);
    let deadline = Instant::now() + support::WAIT;
    while bed.metric(
        "mesh_waypoint_mirrored_requests_total",
        &["outcome=\"answered\""],
    ) != Some(1.0)
    {
        assert!(Instant::now() < deadline, "the copy's end is counted");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_mirror_at_0_percent_gets_nothing_and_a_fraction_gets_some() {
    let bed = bed(97).await;
    web(&bed).await;
    let mirror = Script::new();
    scripted_backend(bed.pod(3, 8080), "web-3", mirror.clone()).await;
    let mut c = client(&bed).await;
    for i in 0..20 {
        let a = get(&mut c, &format!("/mirror-none/{i}")).await;
        assert_eq!(a.status, StatusCode::OK);
    }
    for i in 0..40 {
        let a = get(&mut c, &format!("/mirror-half/{i}")).await;
        assert_eq!(a.status, StatusCode::OK);
    }
    // Copies still on their way are let arrive.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let seen = mirror.seen();
    assert!(
        seen.iter().all(|s| s.path.starts_with("/mirror-half/")),
        "0 %: no copy"
    );
    // Half of 40: none or all would be a chance of 2 in 2^40.
    assert!(
        !seen.is_empty() && seen.len() < 40,
        "1/2: some, not all ({})",
        seen.len()
    );
}

#[tokio::test]
async fn a_slow_mirror_does_not_slow_the_request() {
    let bed = bed(98).await;
    web(&bed).await;
    let mirror = Script::new();
    mirror.always_wait(Duration::from_secs(3));
    scripted_backend(bed.pod(3, 8080), "web-3", mirror.clone()).await;
    let mut c = client(&bed).await;
    let started = Instant::now();
    for i in 0..5 {
        let a = send(&mut c, "POST", &format!("/mirror-all/{i}"), body("x")).await;
        assert_eq!(a.status, StatusCode::OK);
    }
    assert!(
        started.elapsed() < Duration::from_millis(1500),
        "{:?}",
        started.elapsed()
    );
    // The copies did arrive, and wait on the mirror still.
    assert_eq!(mirror.wait_seen(5).await.len(), 5);
}

#[tokio::test]
async fn a_dead_mirror_does_not_fail_the_request() {
    // No app at web-v2's pod: each copy fails.
    let bed = bed(99).await;
    web(&bed).await;
    let mut c = client(&bed).await;
    let started = Instant::now();
    for i in 0..5 {
        let a = send(&mut c, "POST", &format!("/mirror-all/{i}"), body("x")).await;
        assert_eq!(a.status, StatusCode::OK);
        assert!(a.body.starts_with(b"web-"));
    }
    assert!(
        started.elapsed() < Duration::from_millis(1500),
        "{:?}",
        started.elapsed()
    );
    let deadline = Instant::now() + support::WAIT;
    while bed.metric(
        "mesh_waypoint_mirrored_requests_total",
        &["outcome=\"failed\""],
    ) != Some(5.0)
    {
        assert!(Instant::now() < deadline, "each failed copy is counted");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let lines = bed
        .wait_access(5, |l| l["route_rule"] == "mirror-all")
        .await;
    assert!(
        lines
            .iter()
            .all(|l| l["status"] == 200 && l["response_flags"] == "-")
    );
}

#[tokio::test]
async fn a_retry_budget_stops_a_retry_storm_against_a_backend_that_always_fails() {
    let bed = bed(120).await;
    let script = web(&bed).await;
    let mut c = client(&bed).await;
    let budget = mesh_waypoint::retry_budget::Config::default();
    let floor = budget.floor();
    assert_eq!(floor, 100, "10 retries a second over 10 s");
    // More 503s than any number of attempts below could use.
    script.answer(&[503; 1000]);
    let started = Instant::now();

    // Few requests, under the floor: each is retried as its rule says.
    const FEW: u64 = 5;
    for i in 0..FEW {
        let path = format!("/storm/few-{i}");
        assert_eq!(
            get(&mut c, &path).await.status,
            StatusCode::SERVICE_UNAVAILABLE
        );
        let l = line(&bed, &path).await;
        assert_eq!(l["attempts"], 4, "the first and the rule's three retries");
        assert_eq!(l["response_flags"], "URX");
    }
    assert_eq!(script.seen().len() as u64, FEW * 4);
    assert_eq!(
        bed.metric("mesh_waypoint_retry_budget_exhausted_total", &[]),
        None
    );

    // A storm: without a budget 200 requests would be 800 attempts.
    const STORM: u64 = 200;
    for i in 0..STORM {
        let a = get(&mut c, &format!("/storm/{i}")).await;
        assert_eq!(a.status, StatusCode::SERVICE_UNAVAILABLE);
    }
    let elapsed = started.elapsed();
    let requests = FEW + STORM;
    let attempts = script.seen().len() as u64;
    // Within one window (10 s, sliding in 1 s steps: a retry counts for at
    // least 9 s) retries are at most 20 % of the requests plus the floor;
    // a slower run has a floor for each 9 s it took.
    let windows = 1 + elapsed.as_secs() / 9;
    let bound = requests + windows * (requests * 200 / 1000 + floor);
    assert!(
        attempts <= bound,
        "{attempts} attempts for {requests} requests in {elapsed:?}: over {bound}"
    );
    if windows == 1 {
        // attempts / requests <= 1.2 + floor / requests
        assert!(attempts * 1000 <= requests * 1200 + floor * 1000);
    }
    let retries = bed
        .metric("mesh_waypoint_retries_total", &["reason=\"status\""])
        .unwrap();
    assert_eq!(retries as u64, attempts - requests, "every retry counted");
    let refused = bed
        .metric(
            "mesh_waypoint_retry_budget_exhausted_total",
            &["service=\"shop/web\""],
        )
        .unwrap();
    assert!(refused >= 1.0, "{refused}");
    // Once the budget is spent most requests go once, flagged as their
    // retries spent.
    let lines = bed
        .wait_access(requests as usize, |l| {
            l["path"].as_str().is_some_and(|p| p.starts_with("/storm/"))
        })
        .await;
    let once = lines
        .iter()
        .filter(|l| l["attempts"] == 1 && l["response_flags"] == "URX")
        .count();
    assert!(once >= 100, "{once} requests sent once");
    let attempts_logged: u64 = lines.iter().map(|l| l["attempts"].as_u64().unwrap()).sum();
    assert_eq!(attempts_logged, attempts);
}
