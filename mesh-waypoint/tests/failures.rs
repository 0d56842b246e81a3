//! Requests the waypoint answers itself because the endpoint cannot: each
//! gets Envoy's status and response flag, one access line with that flag,
//! and its series in `istio_requests_total`. And a client from another
//! trust domain gets no further than TLS.
mod support;

use std::{net::SocketAddr, time::Duration};

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Empty};
use support::{Bed, Ca, Options, http_backend, within};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
};

/// How a misbehaving endpoint app treats each request.
#[derive(Clone, Copy)]
enum Misbehave {
    /// Reads the request, then resets the connection: no response at all.
    ResetBeforeResponse,
    /// Sends the head and part of the body, then resets.
    ResetMidResponse,
    /// Reads the request and never answers.
    Silent,
}

/// Reads up to the end of a request head (bounded).
async fn read_head(tcp: &mut TcpStream) {
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 16 * 1024 {
        match tcp.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
    }
}

async fn misbehaving_backend(addr: SocketAddr, how: Misbehave) {
    let listener = TcpListener::bind(addr).await.unwrap();
    tokio::spawn(async move {
        loop {
            let (mut tcp, _) = listener.accept().await.unwrap();
            tokio::spawn(async move {
                read_head(&mut tcp).await;
                match how {
                    Misbehave::ResetBeforeResponse => mesh_hbone::relay::reset(tcp),
                    Misbehave::ResetMidResponse => {
                        let _ = tcp
                            .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 1000\r\n\r\npartial")
                            .await;
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        mesh_hbone::relay::reset(tcp);
                    }
                    Misbehave::Silent => {
                        tokio::time::sleep(Duration::from_secs(30)).await;
                        drop(tcp);
                    }
                }
            });
        }
    });
}

/// Sends one GET to `dst` through the waypoint; its status, and whether
/// its body arrived whole.
async fn get(bed: &Bed, dst: SocketAddr) -> (StatusCode, bool) {
    let mut sender = bed.http1(dst).await;
    let request = Request::get("/")
        .header("host", "web.shop.svc")
        .body(Empty::<Bytes>::new())
        .unwrap();
    let response = within("a response", sender.send_request(request))
        .await
        .unwrap();
    let status = response.status();
    let whole = within("the body", response.into_body().collect())
        .await
        .is_ok();
    (status, whole)
}

/// The one access line of the request, once written, and the count of its
/// series.
async fn told(bed: &Bed, code: u16, flags: &str, service: &str) -> serde_json::Value {
    let line = bed.wait_access(1, |l| l["status"] == code).await.remove(0);
    assert_eq!(line["response_flags"], flags, "{line}");
    assert_eq!(bed.access_lines().len(), 1, "{:#?}", bed.access_lines());
    let code = format!("response_code=\"{code}\"");
    let flags = format!("response_flags=\"{flags}\"");
    let service = format!("destination_service=\"{service}\"");
    assert_eq!(
        bed.metric(
            "istio_requests_total",
            &[
                "reporter=\"waypoint\"",
                &code,
                &flags,
                &service,
                "source_principal=\"spiffe://cluster.local/ns/shop/sa/client\"",
            ]
        ),
        Some(1.0),
        "{}",
        bed.waypoint.telemetry.encode().unwrap()
    );
    line
}

const WEB: &str = "web.shop.svc.cluster.local";

#[tokio::test]
async fn no_ready_endpoint_is_503_uh() {
    let bed = Bed::start(61).await;
    let (status, _) = get(&bed, SocketAddr::from(([10, 96, 61, 2], 80))).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    let line = told(&bed, 503, "UH", "idle.shop.svc.cluster.local").await;
    assert_eq!(line["upstream"], serde_json::Value::Null, "{line}");
    assert_eq!(line["attempts"], 0, "{line}");
}

#[tokio::test]
async fn endpoints_that_refuse_the_connection_are_503_uf() {
    // Nothing listens on the pods' port 8080: each pod's HBONE server
    // answers the waypoint's CONNECT 503, and both endpoints are tried.
    let bed = Bed::start(62).await;
    let (status, _) = get(&bed, bed.vip(80)).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    let line = told(&bed, 503, "UF", WEB).await;
    assert_eq!(line["attempts"], 2, "{line}");
    assert_eq!(bed.pods.seen.lock().unwrap().len(), 2);
}

/// A reset before the response head: 503 UR, as Envoy answers it
/// ("upstream connect error or disconnect/reset before headers").
#[tokio::test]
async fn an_endpoint_that_resets_before_answering_is_503_ur() {
    let bed = Bed::start(63).await;
    misbehaving_backend(bed.pod(1, 8080), Misbehave::ResetBeforeResponse).await;
    misbehaving_backend(bed.pod(2, 8080), Misbehave::ResetBeforeResponse).await;
    let (status, _) = get(&bed, bed.vip(80)).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    let line = told(&bed, 503, "UR", WEB).await;
    assert_eq!(line["attempts"], 1, "a sent request is not retried: {line}");
}

/// A reset mid-response: the client already has the 200, its body breaks;
/// the record keeps the 200 and says UR.
#[tokio::test]
async fn an_endpoint_that_resets_mid_response_is_flagged_ur() {
    let bed = Bed::start(64).await;
    misbehaving_backend(bed.pod(1, 8080), Misbehave::ResetMidResponse).await;
    misbehaving_backend(bed.pod(2, 8080), Misbehave::ResetMidResponse).await;
    let (status, whole) = get(&bed, bed.vip(80)).await;
    assert_eq!(status, StatusCode::OK);
    assert!(!whole, "the body cannot end well");
    told(&bed, 200, "UR", WEB).await;
}

#[tokio::test]
async fn an_endpoint_slower_than_the_request_timeout_is_504_ut() {
    let bed = Bed::start_with(
        65,
        Options {
            response_timeout: Duration::from_millis(300),
            ..Options::default()
        },
    )
    .await;
    misbehaving_backend(bed.pod(1, 8080), Misbehave::Silent).await;
    misbehaving_backend(bed.pod(2, 8080), Misbehave::Silent).await;
    let started = std::time::Instant::now();
    let (status, _) = get(&bed, bed.vip(80)).await;
    assert_eq!(status, StatusCode::GATEWAY_TIMEOUT);
    assert!(started.elapsed() < Duration::from_secs(5));
    told(&bed, 504, "UT", WEB).await;
}

/// A certificate of another trust domain does not open a tunnel, whether
/// another CA signed it or the mesh's own; nothing is recorded as a
/// request, and the waypoint goes on serving.
#[tokio::test]
async fn a_client_of_another_trust_domain_is_refused_at_tls() {
    let bed = Bed::start(66).await;
    http_backend(bed.pod(1, 8080), "web-1", false).await;
    http_backend(bed.pod(2, 8080), "web-2", false).await;
    let foreign = Ca::new().svid_in("other.example", "shop", "client");
    let ours_elsewhere = bed.ca.svid_in("other.example", "shop", "client");
    for svid in [&foreign, &ours_elsewhere] {
        let refused = bed.tunnel_as(svid, bed.pod(5, 40000), bed.vip(80)).await;
        assert!(refused.is_err(), "a tunnel for {}", svid.identity);
    }
    assert!(bed.access_lines().is_empty(), "{:#?}", bed.access_lines());
    assert_eq!(bed.metric("istio_requests_total", &[]), None);
    let (status, whole) = get(&bed, bed.vip(80)).await;
    assert_eq!((status, whole), (StatusCode::OK, true));
}
