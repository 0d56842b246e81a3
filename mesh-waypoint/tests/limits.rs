//! The waypoint's limits on what clients hold: requests in flight, idle
//! HTTP connections, idle TCP streams. Addresses 127.0.7x.x.
mod support;

use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::Empty;
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use support::{Bed, Options, WAIT, http_backend, tcp_backend, within};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpListener,
};

/// A backend that reads requests and never answers.
async fn silent_backend(addr: std::net::SocketAddr) {
    let listener = TcpListener::bind(addr).await.unwrap();
    tokio::spawn(async move {
        loop {
            let (mut tcp, _) = listener.accept().await.unwrap();
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                while matches!(tcp.read(&mut buf).await, Ok(n) if n > 0) {}
            });
        }
    });
}

async fn get(bed: &Bed) -> StatusCode {
    let mut sender = bed.http1(bed.vip(80)).await;
    let request = Request::get("/")
        .header("host", "web.shop.svc")
        .body(Empty::<Bytes>::new())
        .unwrap();
    sender.send_request(request).await.unwrap().status()
}

/// Past `max_requests` in flight, a request is answered 503 UO and
/// recorded so; nothing is sent upstream for it.
#[tokio::test]
async fn requests_past_the_cap_in_flight_are_503_uo() {
    let bed = Bed::start_with(
        71,
        Options {
            limits: |l| l.max_requests = 1,
            ..Options::default()
        },
    )
    .await;
    silent_backend(bed.pod(1, 8080)).await;
    silent_backend(bed.pod(2, 8080)).await;
    let bed = std::sync::Arc::new(bed);
    let held = {
        let bed = bed.clone();
        tokio::spawn(async move { get(&bed).await })
    };
    // The first is in flight once the waypoint holds its permit.
    let deadline = tokio::time::Instant::now() + WAIT;
    while bed.waypoint.requests.available_permits() > 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the first request never went out"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(
        within("the second", get(&bed)).await,
        StatusCode::SERVICE_UNAVAILABLE
    );
    let lines = bed.wait_access(1, |l| l["response_flags"] == "UO").await;
    assert_eq!(lines.len(), 1, "{lines:#?}");
    assert_eq!(lines[0]["attempts"], 0, "nothing went upstream: {lines:#?}");
    held.abort();
}

/// An HTTP connection with no request open for the idle timeout is closed
/// by the waypoint.
#[tokio::test]
async fn an_idle_http_connection_is_closed() {
    let bed = Bed::start_with(
        72,
        Options {
            limits: |l| l.http_idle_timeout = Duration::from_millis(400),
            ..Options::default()
        },
    )
    .await;
    http_backend(bed.pod(1, 8080), "web-1", false).await;
    http_backend(bed.pod(2, 8080), "web-2", false).await;
    let io = bed.stream(bed.vip(80)).await;
    let (mut sender, conn) = within("HTTP/1.1 handshake", http1::handshake(TokioIo::new(io)))
        .await
        .unwrap();
    let conn = tokio::spawn(conn);
    let request = Request::get("/")
        .header("host", "web.shop.svc")
        .body(Empty::<Bytes>::new())
        .unwrap();
    let response = within("the response", sender.send_request(request))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    drop(response);
    let _ = within("the idle close", conn).await;
}

/// A relayed TCP stream with no byte either way for the idle timeout is
/// closed, and recorded with SI.
#[tokio::test]
async fn an_idle_tcp_stream_is_closed() {
    let bed = Bed::start_with(
        73,
        Options {
            limits: |l| l.tcp_idle_timeout = Duration::from_millis(400),
            ..Options::default()
        },
    )
    .await;
    tcp_backend(bed.pod(1, 8082)).await;
    tcp_backend(bed.pod(2, 8082)).await;
    let mut io = bed.stream(bed.vip(82)).await;
    io.write_all(b"hello").await.unwrap();
    let mut back = [0u8; 5];
    within("the echo", io.read_exact(&mut back)).await.unwrap();
    let mut rest = Vec::new();
    let _ = within("the idle close", io.read_to_end(&mut rest)).await;
    bed.wait_access(1, |l| l["response_flags"] == "SI").await;
}
