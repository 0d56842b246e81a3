//! The waypoint in one process over loopback, with no root: a client
//! workload's tunnel (real mTLS and HTTP/2 CONNECT) to the waypoint, HTTP
//! inside it, and the waypoint's own tunnels to backend pods behind an
//! HBONE server. Addresses are 127.0.<n>.x with a distinct n per test.
mod support;

use std::{collections::BTreeMap, sync::atomic::Ordering};

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Empty, Full};
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use mesh_hbone::HboneError;
use support::{Bed, http_backend, tcp_backend, within};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const TRACE: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

/// Twenty requests on one keep-alive connection, over a port whose
/// protocol is detected from the first bytes: each is balanced on its own,
/// so both endpoints answer; the waypoint adds x-forwarded-proto, carries
/// the trace on, and reaches the pods over HBONE as itself.
#[tokio::test]
async fn http1_requests_on_one_connection_are_balanced_over_both_endpoints() {
    let bed = Bed::start(41).await;
    let one = http_backend(bed.pod(1, 8080), "web-1", false).await;
    let two = http_backend(bed.pod(2, 8080), "web-2", false).await;
    let mut sender = bed.http1(bed.vip(83)).await;
    let mut answered: BTreeMap<String, usize> = BTreeMap::new();
    for _ in 0..20 {
        let request = Request::get("/hello")
            .header("host", "web.shop.svc:83")
            .header("traceparent", TRACE)
            .body(Empty::<Bytes>::new())
            .unwrap();
        let response = within("a response", sender.send_request(request))
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(response.headers()["x-seen-proto"], "http");
        let seen_trace = response.headers()["x-seen-traceparent"].to_str().unwrap();
        assert!(
            seen_trace.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-")
                && !seen_trace.contains("00f067aa0ba902b7"),
            "the trace goes on with the waypoint's span: {seen_trace}"
        );
        let body = within("the body", response.into_body().collect())
            .await
            .unwrap()
            .to_bytes();
        *answered
            .entry(String::from_utf8(body.to_vec()).unwrap())
            .or_default() += 1;
    }
    assert_eq!(answered.values().sum::<usize>(), 20);
    assert!(
        answered.len() == 2,
        "both endpoints answer some requests: {answered:?}"
    );
    assert_eq!(one.load(Ordering::SeqCst) + two.load(Ordering::SeqCst), 20);
    let seen = bed.pods.seen.lock().unwrap().clone();
    assert!(!seen.is_empty());
    for (source, dst) in &seen {
        assert_eq!(source.to_string(), "spiffe://cluster.local/ns/shop/sa/wp");
        assert!(
            *dst == bed.pod(1, 8080) || *dst == bed.pod(2, 8080),
            "{dst}"
        );
    }
    // Pooled: far fewer upstream connections than requests.
    assert!(seen.len() <= 4, "{} upstream connections", seen.len());
}

/// HTTP/2 (a `grpc-` port): concurrent requests on one connection, each
/// balanced on its own.
#[tokio::test]
async fn h2_requests_on_one_connection_are_balanced_over_both_endpoints() {
    let bed = Bed::start(42).await;
    let one = http_backend(bed.pod(1, 8081), "web-1", true).await;
    let two = http_backend(bed.pod(2, 8081), "web-2", true).await;
    let sender = bed.http2(bed.vip(81)).await;
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..20 {
        let mut sender = sender.clone();
        tasks.spawn(async move {
            let request = Request::get("http://web.shop.svc:81/hello")
                .body(Empty::<Bytes>::new())
                .unwrap();
            let response = sender.send_request(request).await.unwrap();
            assert_eq!(response.status(), StatusCode::OK);
            response.headers()["x-backend"].to_str().unwrap().to_owned()
        });
    }
    let mut answered: BTreeMap<String, usize> = BTreeMap::new();
    while let Some(done) = within("the responses", tasks.join_next()).await {
        *answered.entry(done.unwrap()).or_default() += 1;
    }
    assert_eq!(answered.values().sum::<usize>(), 20);
    assert_eq!(answered.len(), 2, "both endpoints answer: {answered:?}");
    assert_eq!(one.load(Ordering::SeqCst) + two.load(Ordering::SeqCst), 20);
}

/// A gRPC-shaped exchange: the body passes both ways and the response's
/// trailers (grpc-status) reach the client.
#[tokio::test]
async fn grpc_trailers_pass_through() {
    let bed = Bed::start(43).await;
    http_backend(bed.pod(1, 8081), "web-1", true).await;
    http_backend(bed.pod(2, 8081), "web-2", true).await;
    let mut sender = bed.http2(bed.vip(81)).await;
    let message = Bytes::from_static(b"\x00\x00\x00\x00\x05hello");
    let request = support::grpc_post("http://web.shop.svc:81/grpc")
        .body(Full::new(message.clone()))
        .unwrap();
    let response = within("the response", sender.send_request(request))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["content-type"], "application/grpc");
    let collected = within("the body and trailers", response.into_body().collect())
        .await
        .unwrap();
    let trailers = collected.trailers().cloned().expect("trailers");
    assert_eq!(trailers["grpc-status"], "0");
    assert_eq!(trailers["grpc-message"], "ok-from-backend");
    assert_eq!(collected.to_bytes(), message);
}

/// An HTTP/1.1 upgrade (WebSocket): 101 passes, then bytes both ways.
#[tokio::test]
async fn a_websocket_upgrade_passes_bytes_both_ways() {
    let bed = Bed::start(44).await;
    http_backend(bed.pod(1, 8080), "web-1", false).await;
    http_backend(bed.pod(2, 8080), "web-2", false).await;
    let io = bed.stream(bed.vip(80)).await;
    let (mut sender, conn) = within("HTTP/1.1 handshake", http1::handshake(TokioIo::new(io)))
        .await
        .unwrap();
    tokio::spawn(conn.with_upgrades());
    let request = Request::get("/chat")
        .header("host", "web.shop.svc")
        .header("connection", "Upgrade")
        .header("upgrade", "websocket")
        .header("sec-websocket-version", "13")
        .header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==")
        .body(Empty::<Bytes>::new())
        .unwrap();
    let response = within("the 101", sender.send_request(request))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::SWITCHING_PROTOCOLS);
    assert_eq!(response.headers()["upgrade"], "websocket");
    let upgraded = within("the upgrade", hyper::upgrade::on(response))
        .await
        .unwrap();
    let mut io = TokioIo::new(upgraded);
    for message in [&b"ping"[..], b"a longer frame of bytes", b"\x81\x05hello"] {
        io.write_all(message).await.unwrap();
        let mut back = vec![0u8; message.len()];
        within("the echo", io.read_exact(&mut back)).await.unwrap();
        assert_eq!(back, message);
    }
}

/// A declared TCP port: bytes relayed to one endpoint and back, with the
/// half-close carried.
#[tokio::test]
async fn tcp_is_passed_through_to_one_endpoint() {
    let bed = Bed::start(45).await;
    let one = tcp_backend(bed.pod(1, 8082)).await;
    let two = tcp_backend(bed.pod(2, 8082)).await;
    let mut io = bed.stream(bed.vip(82)).await;
    let payload: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    io.write_all(&payload).await.unwrap();
    io.shutdown().await.unwrap();
    let mut back = Vec::new();
    within("the echo to its end", io.read_to_end(&mut back))
        .await
        .unwrap();
    assert!(back == payload, "the echo differs");
    assert_eq!(one.load(Ordering::SeqCst) + two.load(Ordering::SeqCst), 1);
    let seen = bed.pods.seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 1);
    assert_eq!(
        seen[0].0.to_string(),
        "spiffe://cluster.local/ns/shop/sa/wp"
    );
}

/// A request hyper cannot parse is answered 400 by the waypoint, counted,
/// and nothing reaches a backend.
#[tokio::test]
async fn malformed_http1_gets_400_and_reaches_no_backend() {
    let bed = Bed::start(46).await;
    let one = http_backend(bed.pod(1, 8080), "web-1", false).await;
    let two = http_backend(bed.pod(2, 8080), "web-2", false).await;
    let mut io = bed.stream(bed.vip(80)).await;
    io.write_all(b"GET / HTTP/1.1\r\nHost: web\r\nthis is not a header\r\n\r\n")
        .await
        .unwrap();
    let mut answer = Vec::new();
    within("the answer and close", io.read_to_end(&mut answer))
        .await
        .unwrap();
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    assert_eq!(one.load(Ordering::SeqCst) + two.load(Ordering::SeqCst), 0);
    assert!(
        bed.pods.seen.lock().unwrap().is_empty(),
        "no tunnel to a pod"
    );
    let line = &bed.wait_access(1, |l| l["status"] == 400).await[0];
    assert_eq!(line["response_flags"], "DPE", "{line}");
    assert_eq!(
        line["source_principal"], "spiffe://cluster.local/ns/shop/sa/client",
        "{line}"
    );
    assert_eq!(
        bed.metric(
            "istio_requests_total",
            &[
                "response_code=\"400\"",
                "response_flags=\"DPE\"",
                "reporter=\"waypoint\""
            ]
        ),
        Some(1.0)
    );
}

/// A CONNECT to an authority the waypoint does not serve is refused 404.
#[tokio::test]
async fn an_unknown_authority_is_refused_404() {
    let bed = Bed::start(47).await;
    let refused = bed
        .tunnel("10.99.99.99:80".parse().unwrap())
        .await
        .err()
        .expect("refused");
    assert!(
        matches!(refused, HboneError::Refused(StatusCode::NOT_FOUND)),
        "{refused}"
    );
    // A port the Service does not have is no better.
    let refused = bed.tunnel(bed.vip(9999)).await.err().expect("refused");
    assert!(matches!(
        refused,
        HboneError::Refused(StatusCode::NOT_FOUND)
    ));
    let lines = bed.wait_access(2, |l| l["status"] == 404).await;
    assert!(
        lines
            .iter()
            .all(|l| l["response_flags"] == "NR" && l["method"] == "CONNECT"),
        "{lines:#?}"
    );
    assert_eq!(
        bed.metric(
            "istio_requests_total",
            &["response_code=\"404\"", "response_flags=\"NR\""]
        ),
        Some(2.0)
    );
}

/// A port declared `http-*` still serves an h2c client (gRPC, prior
/// knowledge) as HTTP/2, as Envoy does, instead of answering it 400.
#[tokio::test]
async fn an_h2c_client_on_a_declared_http_port_is_served_http2() {
    let bed = Bed::start(60).await;
    let one = http_backend(bed.pod(1, 8080), "web-1", true).await;
    let two = http_backend(bed.pod(2, 8080), "web-2", true).await;
    let mut sender = bed.http2(bed.vip(80)).await;
    let request = Request::get("http://web.shop.svc/hello")
        .body(Empty::<Bytes>::new())
        .unwrap();
    let response = within("the response", sender.send_request(request))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(one.load(Ordering::SeqCst) + two.load(Ordering::SeqCst), 1);
}
