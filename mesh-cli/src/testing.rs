//! Test support shared by the CLI's tests: a mock Kubernetes API server
//! (kube's tower_test mock) answering by method and path, and the cluster
//! that talks to it.
use std::sync::{Arc, Mutex};

use http::{Method, Request, Response, StatusCode};
use kube::{Client, client::Body};
use serde_json::{Value, json};

use crate::agents::Cluster;

type Handle = tower_test::mock::Handle<Request<Body>, Response<Body>>;

/// One request as the mock saw it.
#[derive(Debug, Clone)]
pub(crate) struct Seen {
    pub(crate) method: Method,
    pub(crate) uri: String,
    pub(crate) content_type: String,
    pub(crate) body: Value,
}

pub(crate) fn not_found(message: &str, details: Value) -> (StatusCode, Value) {
    (
        StatusCode::NOT_FOUND,
        json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "message": message,
               "reason": "NotFound", "details": details, "code": 404}),
    )
}

/// A mock API server: `answer` decides each request's reply by method and
/// path; `None` holds the request open (as an idle watch is).
pub(crate) fn mock(
    answer: impl Fn(&Method, &str, bool) -> Option<(StatusCode, Value)> + Send + 'static,
) -> (Client, Arc<Mutex<Vec<Seen>>>) {
    let (service, mut handle): (_, Handle) = tower_test::mock::pair();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Some((request, send)) = handle.next_request().await {
            let (parts, body) = request.into_parts();
            let bytes = http_body_util::BodyExt::collect(body)
                .await
                .map(|b| b.to_bytes())
                .unwrap_or_default();
            let watch = parts.uri.query().is_some_and(|q| q.contains("watch=true"));
            log.lock().unwrap().push(Seen {
                method: parts.method.clone(),
                uri: parts.uri.to_string(),
                content_type: parts
                    .headers
                    .get(http::header::CONTENT_TYPE)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or_default()
                    .to_owned(),
                body: serde_json::from_slice(&bytes).unwrap_or(Value::Null),
            });
            match answer(&parts.method, parts.uri.path(), watch) {
                Some((code, body)) => send.send_response(
                    Response::builder()
                        .status(code)
                        .body(Body::from(body.to_string().into_bytes()))
                        .unwrap(),
                ),
                None => held.push(send),
            }
        }
    });
    (Client::new(service, "default"), seen)
}

pub(crate) fn list(kind: &str, api_version: &str, items: Vec<Value>) -> Value {
    json!({"apiVersion": api_version, "kind": format!("{kind}List"),
           "metadata": {"resourceVersion": "1"}, "items": items})
}

pub(crate) fn kube_cluster(client: Client) -> Cluster {
    Cluster::Kubernetes {
        client,
        namespace: "mesh-system".into(),
        selector: "app.kubernetes.io/name=mesh-agent".into(),
        status_port: 15021,
    }
}
