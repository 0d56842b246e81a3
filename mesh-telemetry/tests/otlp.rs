//! The OTLP exporter against a real OTLP/gRPC receiver on loopback: a
//! tonic server implementing the published TraceService.
use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::{Duration, Instant, SystemTime},
};

use http::{Method, StatusCode};
use mesh_telemetry::{
    connection::Security,
    otlp::{
        Exporter, ExporterConfig, Span, SpanKind,
        proto::{
            collector::trace::v1::{
                ExportTraceServiceRequest, ExportTraceServiceResponse,
                trace_service_server::{TraceService, TraceServiceServer},
            },
            common::v1::any_value::Value,
            trace::v1::{self as pb, span::SpanKind as PbKind},
        },
    },
    request::{Party, Protocol, Reporter, RequestRecord, ResponseFlag, ResponseFlags},
    trace::{SpanContext, TraceParent},
};
use prometheus_client::registry::Registry;
use tokio::{net::TcpListener, sync::Notify, task::JoinHandle};
use tonic::transport::server::TcpIncoming;

/// Keeps every request it gets; answers after `delay`.
#[derive(Clone, Default)]
struct Receiver {
    got: Arc<Mutex<Vec<ExportTraceServiceRequest>>>,
    arrived: Arc<Notify>,
    delay: Duration,
}

#[tonic::async_trait]
impl TraceService for Receiver {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        tokio::time::sleep(self.delay).await;
        self.got.lock().unwrap().push(request.into_inner());
        self.arrived.notify_waiters();
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

impl Receiver {
    /// Serves on a fresh loopback port until the handle is aborted.
    async fn start(self) -> (SocketAddr, JoinHandle<()>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(self))
            .serve_with_incoming(TcpIncoming::from(listener));
        let handle = tokio::spawn(async move {
            server.await.unwrap();
        });
        (addr, handle)
    }

    fn spans(&self) -> Vec<(ExportTraceServiceRequest, pb::Span)> {
        let got = self.got.lock().unwrap();
        got.iter()
            .flat_map(|r| {
                r.resource_spans
                    .iter()
                    .flat_map(|rs| rs.scope_spans.iter().flat_map(|ss| ss.spans.iter()))
                    .map(move |s| (r.clone(), s.clone()))
            })
            .collect()
    }

    /// Waits, bounded, until `n` spans have arrived.
    async fn wait_for(&self, n: usize) -> Vec<(ExportTraceServiceRequest, pb::Span)> {
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
            let _ = tokio::time::timeout(Duration::from_millis(200), arrived).await;
        }
    }
}

fn record(status: Option<StatusCode>) -> RequestRecord {
    RequestRecord {
        reporter: Reporter::Waypoint,
        started: SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000),
        duration: Duration::from_millis(30),
        method: Method::GET,
        authority: "web.shop.svc.cluster.local".into(),
        path: "/items/7?token=secret".into(),
        protocol: Protocol::Http1,
        response_code: status,
        grpc_status: None,
        request_bytes: 0,
        response_bytes: 10,
        downstream: Some("10.244.0.5:40000".parse().unwrap()),
        upstream: Some("10.244.1.10:8080".parse().unwrap()),
        source: Party {
            workload: None,
            principal: Some("spiffe://cluster.local/ns/shop/sa/client".into()),
            cluster: None,
        },
        destination: Party::default(),
        service: None,
        route: None,
        route_rule: None,
        attempts: 1,
        response_flags: if status.is_some() {
            ResponseFlags::NONE
        } else {
            ResponseFlag::UpstreamConnectionFailure.into()
        },
        security: Security::MutualTls,
        trace_id: None,
    }
}

fn config(addr: SocketAddr) -> ExporterConfig {
    let mut c = ExporterConfig::new(&format!("http://{addr}"), "waypoint.shop").unwrap();
    c.batch = 2;
    c.interval = Duration::from_millis(50);
    c.timeout = Duration::from_millis(500);
    c
}

fn string_attr(span: &pb::Span, key: &str) -> Option<String> {
    span.attributes
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| match kv.value.as_ref()?.value.as_ref()? {
            Value::StringValue(s) => Some(s.clone()),
            _ => None,
        })
}

fn int_attr(span: &pb::Span, key: &str) -> Option<i64> {
    span.attributes
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| match kv.value.as_ref()?.value.as_ref()? {
            Value::IntValue(i) => Some(*i),
            _ => None,
        })
}

#[tokio::test]
async fn spans_reach_the_collector_with_ids_names_attributes_and_resource() {
    let receiver = Receiver::default();
    let (addr, server) = receiver.clone().start().await;
    let (exporter, task) = Exporter::new(config(addr), &mut Registry::default()).unwrap();
    let task = tokio::spawn(task.run());

    let mut rng = fastrand::Rng::with_seed(11);
    let incoming = mesh_telemetry::trace::Incoming {
        parent: TraceParent::parse(b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
            .unwrap(),
        state: None,
    };
    let server_ctx = SpanContext::for_request(Some(&incoming), false, &mut rng);
    let client_ctx = server_ctx.child(&mut rng);
    let ok = record(Some(StatusCode::OK));
    let failed = record(Some(StatusCode::SERVICE_UNAVAILABLE));
    exporter.send(Span::for_request(&ok, &server_ctx, SpanKind::Server));
    exporter.send(Span::for_request(&ok, &client_ctx, SpanKind::Client));
    // A third span waits for the interval, not for a full batch.
    let third = SpanContext::root(true, &mut rng);
    exporter.send(Span::for_request(&failed, &third, SpanKind::Server));

    let spans = receiver.wait_for(3).await;
    assert_eq!(spans.len(), 3);
    for (request, _) in &spans {
        let resource = request.resource_spans[0].resource.as_ref().unwrap();
        assert_eq!(resource.attributes[0].key, "service.name");
        assert_eq!(
            resource.attributes[0].value.as_ref().unwrap().value,
            Some(Value::StringValue("waypoint.shop".into()))
        );
    }
    let by_id = |id: [u8; 8]| {
        spans
            .iter()
            .map(|(_, s)| s)
            .find(|s| s.span_id == id)
            .unwrap_or_else(|| panic!("span {id:?} not received"))
            .clone()
    };

    let server_span = by_id(server_ctx.span_id.to_bytes());
    assert_eq!(server_span.trace_id, incoming.parent.trace_id.to_bytes());
    assert_eq!(
        server_span.parent_span_id,
        incoming.parent.parent_id.to_bytes()
    );
    assert_eq!(server_span.name, "GET web.shop.svc.cluster.local");
    assert_eq!(server_span.kind, PbKind::Server as i32);
    assert_eq!(server_span.start_time_unix_nano, 1_700_000_000_000_000_000);
    assert_eq!(server_span.end_time_unix_nano, 1_700_000_000_030_000_000);
    assert_eq!(server_span.flags, 1);
    assert_eq!(
        string_attr(&server_span, "http.request.method").as_deref(),
        Some("GET")
    );
    assert_eq!(
        string_attr(&server_span, "url.path").as_deref(),
        Some("/items/7")
    );
    assert_eq!(
        int_attr(&server_span, "http.response.status_code"),
        Some(200)
    );
    assert_eq!(
        string_attr(&server_span, "server.address").as_deref(),
        Some("web.shop.svc.cluster.local")
    );
    assert_eq!(
        string_attr(&server_span, "network.peer.address").as_deref(),
        Some("10.244.0.5")
    );
    assert_eq!(
        string_attr(&server_span, "mesh.source.principal").as_deref(),
        Some("spiffe://cluster.local/ns/shop/sa/client")
    );
    assert_eq!(
        string_attr(&server_span, "mesh.response_flags").as_deref(),
        Some("-")
    );
    assert_eq!(server_span.status, None);

    let client_span = by_id(client_ctx.span_id.to_bytes());
    assert_eq!(client_span.trace_id, incoming.parent.trace_id.to_bytes());
    assert_eq!(client_span.parent_span_id, server_ctx.span_id.to_bytes());
    assert_eq!(client_span.kind, PbKind::Client as i32);
    assert_eq!(
        string_attr(&client_span, "network.peer.address").as_deref(),
        Some("10.244.1.10")
    );

    let failed_span = by_id(third.span_id.to_bytes());
    assert!(failed_span.parent_span_id.is_empty());
    assert_eq!(failed_span.trace_id, third.trace_id.to_bytes());
    let status = failed_span.status.unwrap();
    assert_eq!(status.code, pb::status::StatusCode::Error as i32);
    assert!(status.message.contains("503"), "{}", status.message);

    // The receiver keeps a batch before the exporter hears its answer.
    wait_until("the last answer", || exporter.counts().exported == 3).await;
    let counts = exporter.counts();
    assert_eq!((counts.queue_full, counts.failed), (0, 0));
    drop(exporter);
    tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .expect("the task ends once its exporters are gone")
        .unwrap();
    server.abort();
}

#[tokio::test]
async fn spans_left_in_the_queue_are_sent_when_the_exporter_goes() {
    let receiver = Receiver::default();
    let (addr, server) = receiver.clone().start().await;
    let mut c = config(addr);
    c.batch = 100;
    c.interval = Duration::from_secs(3600);
    let (exporter, task) = Exporter::new(c, &mut Registry::default()).unwrap();
    let task = tokio::spawn(task.run());
    let mut rng = fastrand::Rng::with_seed(5);
    for _ in 0..2 {
        let ctx = SpanContext::root(true, &mut rng);
        exporter.send(Span::for_request(
            &record(Some(StatusCode::OK)),
            &ctx,
            SpanKind::Server,
        ));
    }
    drop(exporter);
    tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .expect("the task ends once its exporters are gone")
        .unwrap();
    assert_eq!(receiver.spans().len(), 2);
    server.abort();
}

/// Sends `n` spans and returns how long the sends took in all.
fn send_many(exporter: &Exporter, n: usize) -> Duration {
    let mut rng = fastrand::Rng::with_seed(9);
    let rec = record(None);
    let spans: Vec<Span> = (0..n)
        .map(|_| Span::for_request(&rec, &SpanContext::root(true, &mut rng), SpanKind::Server))
        .collect();
    let started = Instant::now();
    for span in spans {
        exporter.send(span);
    }
    started.elapsed()
}

async fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_collector_that_is_down_never_blocks_the_proxy() {
    // A port nobody listens on: bound, then released.
    let addr = TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap();
    let mut c = config(addr);
    c.queue = 8;
    let mut registry = Registry::default();
    let (exporter, task) = Exporter::new(c, &mut registry).unwrap();
    let task: JoinHandle<()> = tokio::spawn(task.run());

    let took = send_many(&exporter, 5_000);
    assert!(took < Duration::from_secs(1), "sends took {took:?}");
    let counts = exporter.counts();
    assert!(counts.queue_full >= 5_000 - 8, "{counts:?}");
    wait_until("failed exports to be counted", || {
        let c = exporter.counts();
        c.queue_full + c.failed == 5_000
    })
    .await;
    assert_eq!(exporter.counts().exported, 0);

    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
    assert!(
        text.contains("mesh_trace_spans_total{result=\"queue_full\"}"),
        "{text}"
    );
    task.abort();
}

#[tokio::test]
async fn a_slow_collector_never_blocks_the_proxy() {
    let receiver = Receiver {
        delay: Duration::from_secs(30),
        ..Default::default()
    };
    let (addr, server) = receiver.clone().start().await;
    let mut c = config(addr);
    c.queue = 4;
    c.batch = 2;
    c.timeout = Duration::from_millis(300);
    let (exporter, task) = Exporter::new(c, &mut Registry::default()).unwrap();
    let task = tokio::spawn(task.run());

    // The first batch is taken off the queue and hangs at the collector;
    // the queue then fills and the rest are dropped at once.
    let took = send_many(&exporter, 2);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let took = took + send_many(&exporter, 1_000);
    assert!(took < Duration::from_secs(1), "sends took {took:?}");
    assert!(
        exporter.counts().queue_full >= 1_000 - 4,
        "{:?}",
        exporter.counts()
    );
    wait_until("the stuck batch to time out", || {
        exporter.counts().failed >= 2
    })
    .await;
    assert_eq!(exporter.counts().exported, 0);
    assert!(receiver.spans().is_empty());
    task.abort();
    server.abort();
}
