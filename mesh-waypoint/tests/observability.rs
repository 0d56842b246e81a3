//! What the waypoint tells of the requests it serves, seen from outside:
//! Istio's request families in its exposition, the client named by its
//! verified identity and (when they agree) the forwarded address, and spans
//! at a real OTLP/gRPC receiver continuing the request's W3C trace.
mod support;

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use mesh_telemetry::otlp::{
    ExporterConfig,
    proto::{
        collector::trace::v1::{
            ExportTraceServiceRequest, ExportTraceServiceResponse,
            trace_service_server::{TraceService, TraceServiceServer},
        },
        common::v1::any_value::Value,
        trace::v1::{self as pb, span::SpanKind},
    },
};
use support::{Bed, Options, http_backend, within};
use tokio::{net::TcpListener, sync::Notify};
use tonic::transport::server::TcpIncoming;

const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CLIENT_SPAN: &str = "00f067aa0ba902b7";
const CLIENT: &str = "spiffe://cluster.local/ns/shop/sa/client";
const WEB: &str = "spiffe://cluster.local/ns/shop/sa/web";

/// GETs `path` on a fresh HTTP/1.1 connection in `tunnel`; the status and
/// the `traceparent` the backend saw.
async fn get(
    bed: &Bed,
    dst: SocketAddr,
    src: SocketAddr,
    trace: Option<&str>,
) -> (StatusCode, String) {
    let tunnel = bed.tunnel_as(&bed.client_svid, src, dst).await.unwrap();
    let io = mesh_hbone::io::H2Io::new(tunnel);
    let (mut sender, conn) = within("HTTP/1.1 handshake", http1::handshake(TokioIo::new(io)))
        .await
        .unwrap();
    tokio::spawn(conn);
    let mut request = Request::get("/items/7?secret=1").header("host", "web.shop.svc:80");
    if let Some(t) = trace {
        request = request.header("traceparent", t);
    }
    let response = within(
        "a response",
        sender.send_request(request.body(Empty::<Bytes>::new()).unwrap()),
    )
    .await
    .unwrap();
    let status = response.status();
    let seen = response
        .headers()
        .get("x-seen-traceparent")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    within("the body", response.into_body().collect())
        .await
        .unwrap();
    (status, seen)
}

/// Requests through the waypoint are in `istio_requests_total` with
/// reporter `waypoint`, the client's identity and workload, the endpoint's
/// identity and the Service's name.
#[tokio::test]
async fn requests_are_counted_in_istios_family_with_both_ends() {
    let bed = Bed::start(51).await;
    http_backend(bed.pod(1, 8080), "web-1", false).await;
    http_backend(bed.pod(2, 8080), "web-2", false).await;
    for _ in 0..3 {
        let (status, _) = get(&bed, bed.vip(80), bed.pod(5, 40000), None).await;
        assert_eq!(status, StatusCode::OK);
    }
    bed.wait_access(3, |l| l["status"] == 200).await;
    let labels = [
        "reporter=\"waypoint\"",
        "response_code=\"200\"",
        "response_flags=\"-\"",
        "source_workload=\"client-0\"",
        "source_workload_namespace=\"shop\"",
        "source_principal=\"spiffe://cluster.local/ns/shop/sa/client\"",
        "destination_principal=\"spiffe://cluster.local/ns/shop/sa/web\"",
        "destination_service=\"web.shop.svc.cluster.local\"",
        "destination_service_name=\"web\"",
        "request_protocol=\"http\"",
        "connection_security_policy=\"mutual_tls\"",
    ];
    assert_eq!(
        bed.metric("istio_requests_total", &labels),
        Some(3.0),
        "{}",
        bed.waypoint.telemetry.encode().unwrap()
    );
    let by_endpoint = |w: &str| {
        let mut l = labels.to_vec();
        let want = format!("destination_workload=\"{w}\"");
        l.push(&want);
        bed.metric("istio_requests_total", &l).unwrap_or(0.0)
    };
    assert_eq!(by_endpoint("web-1") + by_endpoint("web-2"), 3.0);
    assert_eq!(
        bed.metric("istio_request_duration_milliseconds_count", &labels),
        Some(3.0)
    );
    let text = bed.waypoint.telemetry.encode().unwrap();
    assert!(!text.contains("/items"), "a path in a label:\n{text}");
    let line = &bed.access_lines()[0];
    assert_eq!(line["source_workload"], "shop/client-0", "{line}");
    assert_eq!(line["source_principal"], CLIENT, "{line}");
    assert_eq!(line["destination_principal"], WEB, "{line}");
    assert_eq!(line["path"], "/items/7?secret=1", "{line}");
}

/// The forwarded address names the client's workload only when that
/// workload runs as the identity the client proved: a client claiming to
/// be web-1 is named by its identity alone.
#[tokio::test]
async fn a_forwarded_address_of_another_identity_names_no_workload() {
    let bed = Bed::start(52).await;
    http_backend(bed.pod(1, 8080), "web-1", false).await;
    http_backend(bed.pod(2, 8080), "web-2", false).await;
    let (status, _) = get(&bed, bed.vip(80), bed.pod(1, 40000), None).await;
    assert_eq!(status, StatusCode::OK);
    let line = &bed.wait_access(1, |l| l["status"] == 200).await[0];
    assert_eq!(line["source_principal"], CLIENT, "{line}");
    assert_eq!(line["source_workload"], serde_json::Value::Null, "{line}");
    assert_eq!(
        bed.metric(
            "istio_requests_total",
            &[
                "source_workload=\"unknown\"",
                "source_principal=\"spiffe://cluster.local/ns/shop/sa/client\""
            ]
        ),
        Some(1.0)
    );
    // An address the view does not know is no better.
    let (status, _) = get(&bed, bed.vip(80), "192.0.2.7:1".parse().unwrap(), None).await;
    assert_eq!(status, StatusCode::OK);
    let lines = bed.wait_access(2, |l| l["status"] == 200).await;
    assert!(
        lines.iter().all(|l| l["source_workload"].is_null()),
        "{lines:#?}"
    );
}

/// Keeps every export request it gets.
#[derive(Clone, Default)]
struct Receiver {
    got: Arc<Mutex<Vec<ExportTraceServiceRequest>>>,
    arrived: Arc<Notify>,
}

#[tonic::async_trait]
impl TraceService for Receiver {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        self.got.lock().unwrap().push(request.into_inner());
        self.arrived.notify_waiters();
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

impl Receiver {
    async fn start(self) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(self))
            .serve_with_incoming(TcpIncoming::from(listener));
        tokio::spawn(async move { server.await.unwrap() });
        addr
    }

    /// Every span so far, with its resource's service.name.
    fn spans(&self) -> Vec<(String, pb::Span)> {
        let got = self.got.lock().unwrap();
        let mut out = Vec::new();
        for request in got.iter() {
            for rs in &request.resource_spans {
                let service = rs
                    .resource
                    .as_ref()
                    .and_then(|r| r.attributes.iter().find(|kv| kv.key == "service.name"))
                    .and_then(|kv| match kv.value.as_ref()?.value.as_ref()? {
                        Value::StringValue(s) => Some(s.clone()),
                        _ => None,
                    })
                    .unwrap_or_default();
                for ss in &rs.scope_spans {
                    out.extend(ss.spans.iter().map(|s| (service.clone(), s.clone())));
                }
            }
        }
        out
    }

    async fn wait_for(&self, n: usize) -> Vec<(String, pb::Span)> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let arrived = self.arrived.notified();
            let spans = self.spans();
            if spans.len() >= n {
                return spans;
            }
            assert!(
                Instant::now() < deadline,
                "only {} of {n} spans arrived",
                spans.len()
            );
            let _ = tokio::time::timeout(Duration::from_millis(100), arrived).await;
        }
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn attr(span: &pb::Span, key: &str) -> Option<Value> {
    span.attributes
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| kv.value.as_ref()?.value.clone())
}

/// With --otlp-endpoint, each request is a SERVER span continuing the
/// client's trace (or starting one) and a CLIENT span for its attempt,
/// whose id is the parent the endpoint saw in its traceparent.
#[tokio::test]
async fn spans_reach_an_otlp_receiver_in_the_requests_trace() {
    let receiver = Receiver::default();
    let addr = receiver.clone().start().await;
    let mut otlp = ExporterConfig::new(&format!("http://{addr}"), "wp.shop").unwrap();
    otlp.interval = Duration::from_millis(50);
    otlp.timeout = Duration::from_secs(2);
    let bed = Bed::start_with(
        53,
        Options {
            otlp: Some(otlp),
            ..Options::default()
        },
    )
    .await;
    http_backend(bed.pod(1, 8080), "web-1", false).await;
    http_backend(bed.pod(2, 8080), "web-2", false).await;

    let incoming = format!("00-{TRACE_ID}-{CLIENT_SPAN}-01");
    let (status, seen) = get(&bed, bed.vip(80), bed.pod(5, 40000), Some(&incoming)).await;
    assert_eq!(status, StatusCode::OK);
    let (status, seen_new) = get(&bed, bed.vip(80), bed.pod(5, 40000), None).await;
    assert_eq!(status, StatusCode::OK);

    let spans = receiver.wait_for(4).await;
    assert_eq!(spans.len(), 4, "{spans:#?}");
    assert!(spans.iter().all(|(service, _)| service == "wp.shop"));
    let of_trace = |id: &str| -> (pb::Span, pb::Span) {
        let in_trace: Vec<&pb::Span> = spans
            .iter()
            .map(|(_, s)| s)
            .filter(|s| hex(&s.trace_id) == id)
            .collect();
        assert_eq!(in_trace.len(), 2, "{id}: {spans:#?}");
        let server = in_trace
            .iter()
            .find(|s| s.kind == SpanKind::Server as i32)
            .expect("a SERVER span");
        let client = in_trace
            .iter()
            .find(|s| s.kind == SpanKind::Client as i32)
            .expect("a CLIENT span");
        ((*server).clone(), (*client).clone())
    };

    // Continued: the client's span is the SERVER span's parent, the
    // CLIENT span is the endpoint's.
    let (server, client) = of_trace(TRACE_ID);
    assert_eq!(hex(&server.parent_span_id), CLIENT_SPAN);
    assert_eq!(client.parent_span_id, server.span_id);
    assert_eq!(seen, format!("00-{TRACE_ID}-{}-01", hex(&client.span_id)));
    assert_eq!(server.name, "GET web.shop.svc:80");
    assert_eq!(
        attr(&server, "http.request.method"),
        Some(Value::StringValue("GET".into()))
    );
    assert_eq!(
        attr(&server, "url.path"),
        Some(Value::StringValue("/items/7".into()))
    );
    assert_eq!(
        attr(&server, "http.response.status_code"),
        Some(Value::IntValue(200))
    );
    assert_eq!(
        attr(&server, "mesh.source.principal"),
        Some(Value::StringValue(CLIENT.into()))
    );
    assert_eq!(
        attr(&client, "mesh.destination.principal"),
        Some(Value::StringValue(WEB.into()))
    );
    let peer = attr(&client, "network.peer.address");
    assert!(
        peer == Some(Value::StringValue(bed.pod(1, 0).ip().to_string()))
            || peer == Some(Value::StringValue(bed.pod(2, 0).ip().to_string())),
        "{peer:?}"
    );
    assert!(server.status.is_none() && client.status.is_none());
    assert!(server.start_time_unix_nano <= client.start_time_unix_nano);
    assert!(client.end_time_unix_nano <= server.end_time_unix_nano);

    // Started here: a new trace the endpoint is part of.
    let new_trace = seen_new.split('-').nth(1).expect("a traceparent upstream");
    assert_ne!(new_trace, TRACE_ID);
    let (server, client) = of_trace(new_trace);
    assert!(server.parent_span_id.is_empty(), "a root span");
    assert_eq!(client.parent_span_id, server.span_id);
    assert_eq!(
        seen_new,
        format!("00-{new_trace}-{}-01", hex(&client.span_id))
    );

    // The access lines carry the same trace ids.
    let lines = bed.wait_access(2, |l| l["status"] == 200).await;
    let ids: Vec<&str> = lines
        .iter()
        .filter_map(|l| l["trace_id"].as_str())
        .collect();
    assert!(
        ids.contains(&TRACE_ID) && ids.contains(&new_trace),
        "{lines:#?}"
    );
}

/// An unsampled incoming trace is continued upstream but not exported.
#[tokio::test]
async fn an_unsampled_trace_is_carried_on_but_not_exported() {
    let receiver = Receiver::default();
    let addr = receiver.clone().start().await;
    let mut otlp = ExporterConfig::new(&format!("http://{addr}"), "wp.shop").unwrap();
    otlp.interval = Duration::from_millis(50);
    let bed = Bed::start_with(
        54,
        Options {
            otlp: Some(otlp),
            ..Options::default()
        },
    )
    .await;
    http_backend(bed.pod(1, 8080), "web-1", false).await;
    http_backend(bed.pod(2, 8080), "web-2", false).await;
    let incoming = format!("00-{TRACE_ID}-{CLIENT_SPAN}-00");
    let (status, seen) = get(&bed, bed.vip(80), bed.pod(5, 40000), Some(&incoming)).await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        seen.starts_with(&format!("00-{TRACE_ID}-")) && seen.ends_with("-00"),
        "{seen}"
    );
    // A sampled request after it: once its spans are in, the unsampled
    // one's would have been too.
    get(&bed, bed.vip(80), bed.pod(5, 40000), None).await;
    receiver.wait_for(2).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let spans = receiver.spans();
    assert_eq!(spans.len(), 2, "{spans:#?}");
    assert!(spans.iter().all(|(_, s)| hex(&s.trace_id) != TRACE_ID));
}
