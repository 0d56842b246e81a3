//! Fault injection applied by the waypoint, in one process over loopback
//! (see `in_process.rs` for the bed): an HTTPRoute rule's ExtensionRef
//! filter names a `mesh.io/v1alpha1` HTTPFaultInjection; aborts and delays
//! at their percentage, flagged FI and DI, and a filter whose object is
//! missing answers 500. Addresses are 127.0.<n>.x with n from 100.
mod support;

use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use support::{Bed, Http1, Options, http_backend, within};

/// An HTTPFaultInjection `name` with `spec`, and a route on web:80 (and a
/// GRPCRoute on web:81) whose only rule names `fault`.
fn config(name: &str, spec: &str, fault: &str) -> String {
    format!(
        r#"
---
apiVersion: mesh.io/v1alpha1
kind: HTTPFaultInjection
metadata: {{name: {name}, namespace: shop}}
spec: {spec}
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: faulty, namespace: shop}}
spec:
  parentRefs: [{{group: "", kind: Service, name: web, port: 80}}]
  rules:
  - name: with-fault
    filters:
    - type: ExtensionRef
      extensionRef: {{group: mesh.io, kind: HTTPFaultInjection, name: {fault}}}
    backendRefs: [{{name: web, port: 80}}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: GRPCRoute
metadata: {{name: faulty-grpc, namespace: shop}}
spec:
  parentRefs: [{{group: "", kind: Service, name: web, port: 81}}]
  rules:
  - filters:
    - type: ExtensionRef
      extensionRef: {{group: mesh.io, kind: HTTPFaultInjection, name: {fault}}}
    backendRefs: [{{name: web, port: 81}}]
"#
    )
}

async fn bed(n: u8, extra: String) -> Bed {
    let bed = Bed::start_with(
        n,
        Options {
            extra,
            ..Options::default()
        },
    )
    .await;
    http_backend(bed.pod(1, 8080), "web-1", false).await;
    http_backend(bed.pod(2, 8080), "web-2", false).await;
    bed
}

async fn get(sender: &mut Http1, path: &str) -> Response<Incoming> {
    let request = Request::get(path)
        .header("host", "web.shop.svc:80")
        .body(Empty::new())
        .unwrap();
    within("a response", sender.send_request(request))
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
async fn an_abort_at_100_percent_answers_its_status_flagged_fi() {
    let spec = "{abort: {httpStatus: 503, percentage: {value: 100}}}";
    let bed = bed(100, config("broken", spec, "broken")).await;
    let mut c = bed.http1(bed.vip(80)).await;
    let r = get(&mut c, "/a").await;
    assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(header(&r, "x-backend"), "", "no backend was asked");
    drain(r).await;
    let lines = bed.wait_access(1, |l| l["path"] == "/a").await;
    let l = &lines[0];
    assert_eq!(l["status"], 503, "{l}");
    assert_eq!(l["response_flags"], "FI", "{l}");
    assert_eq!(l["route_rule"], "with-fault", "{l}");
}

/// 400 requests aborted at 50%: the count of 503s is Binomial(400, 0.5),
/// mean 200 and standard deviation 10; the test takes 200 ± 4.5σ (155 to
/// 245), which a correct roll misses about once in 150,000 runs, while a
/// roll that ignores the percentage (0 or 400) or doubles it fails.
#[tokio::test]
async fn an_abort_at_50_percent_hits_about_half_of_the_requests() {
    let spec = "{abort: {httpStatus: 503, percentage: {value: 50}}}";
    let bed = bed(101, config("flaky", spec, "flaky")).await;
    let mut c = bed.http1(bed.vip(80)).await;
    let (mut aborted, mut served) = (0, 0);
    for _ in 0..400 {
        let r = get(&mut c, "/half").await;
        match r.status() {
            StatusCode::SERVICE_UNAVAILABLE => aborted += 1,
            StatusCode::OK => served += 1,
            other => panic!("unexpected status {other}"),
        }
        drain(r).await;
    }
    assert_eq!(aborted + served, 400);
    assert!(
        (155..=245).contains(&aborted),
        "{aborted} of 400 aborted, outside 200 ± 4.5σ"
    );
    let lines = bed.wait_access(400, |l| l["path"] == "/half").await;
    let flagged = lines.iter().filter(|l| l["response_flags"] == "FI").count();
    assert_eq!(flagged, aborted);
}

#[tokio::test]
async fn a_delay_at_100_percent_holds_the_request_flagged_di() {
    let spec = "{delay: {fixedDelay: 200ms, percentage: {value: 100}}}";
    let bed = bed(102, config("slow", spec, "slow")).await;
    let mut c = bed.http1(bed.vip(80)).await;
    let started = Instant::now();
    let r = get(&mut c, "/slow").await;
    let took = started.elapsed();
    assert_eq!(r.status(), StatusCode::OK);
    assert!(["web-1", "web-2"].contains(&header(&r, "x-backend")));
    drain(r).await;
    assert!(took >= Duration::from_millis(200), "answered in {took:?}");
    let lines = bed.wait_access(1, |l| l["path"] == "/slow").await;
    assert_eq!(lines[0]["response_flags"], "DI", "{}", lines[0]);
    assert_eq!(lines[0]["status"], 200, "{}", lines[0]);
}

#[tokio::test]
async fn a_filter_naming_a_missing_object_answers_500() {
    let spec = "{abort: {httpStatus: 503}}";
    let bed = bed(103, config("present", spec, "absent")).await;
    let mut c = bed.http1(bed.vip(80)).await;
    let r = get(&mut c, "/m").await;
    assert_eq!(r.status(), StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(header(&r, "x-backend"), "");
    drain(r).await;
    let lines = bed.wait_access(1, |l| l["path"] == "/m").await;
    assert_eq!(lines[0]["response_flags"], "NC", "{}", lines[0]);
    // The object appears: the same route now applies it.
    bed.reconfigure(&config("absent", spec, "absent"));
    let r = get(&mut c, "/m2").await;
    assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
    drain(r).await;
}

/// A gRPC status is answered as gRPC does: 200, trailers-only, with the
/// code in `grpc-status`.
#[tokio::test]
async fn a_grpc_abort_answers_a_trailers_only_status() {
    let spec = "{abort: {grpcStatus: UNAVAILABLE}}";
    let bed = bed(104, config("down", spec, "down")).await;
    let mut sender = bed.http2(bed.vip(81)).await;
    let request = support::grpc_post("http://web.shop.svc:81/svc.Echo/Call")
        .body(Empty::<Bytes>::new())
        .unwrap();
    let r = within("a response", sender.send_request(request))
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(header(&r, "grpc-status"), "14");
    assert_eq!(header(&r, "content-type"), "application/grpc");
    drain(r).await;
    let lines = bed.wait_access(1, |l| l["path"] == "/svc.Echo/Call").await;
    assert_eq!(lines[0]["response_flags"], "FI", "{}", lines[0]);
    assert_eq!(lines[0]["grpc_status"], 14, "{}", lines[0]);
}
