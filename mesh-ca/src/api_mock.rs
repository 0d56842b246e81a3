//! kube's documented mock for the controller's tests: a `tower_test`
//! service behind `kube::Client` that answers as the API server would,
//! recording each request.
use std::sync::{Arc, Mutex};

use http::{Request, Response, StatusCode};
use kube::{Client, client::Body};
use serde_json::Value;

type Handle = tower_test::mock::Handle<Request<Body>, Response<Body>>;

/// One request the mock saw: method, path with query, JSON body.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    pub path: String,
    pub body: Value,
}

/// A client whose API server answers each request with `respond`; the
/// requests seen so far are in the returned list.
pub fn client(
    respond: impl Fn(&Seen) -> (StatusCode, Value) + Send + 'static,
) -> (Client, Arc<Mutex<Vec<Seen>>>) {
    let (service, mut handle): (_, Handle) = tower_test::mock::pair();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    tokio::spawn(async move {
        while let Some((request, send)) = handle.next_request().await {
            let method = request.method().to_string();
            let path = request.uri().to_string();
            let bytes = request.into_body().collect_bytes().await.unwrap();
            let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
            let request = Seen { method, path, body };
            let (status, answer) = respond(&request);
            log.lock().unwrap().push(request);
            send.send_response(
                Response::builder()
                    .status(status)
                    .body(Body::from(serde_json::to_vec(&answer).unwrap()))
                    .unwrap(),
            );
        }
    });
    (Client::new(service, "default"), seen)
}

/// The API server's answer for a missing object.
pub fn not_found() -> (StatusCode, Value) {
    (
        StatusCode::NOT_FOUND,
        serde_json::json!({
            "kind": "Status", "apiVersion": "v1", "status": "Failure",
            "reason": "NotFound", "code": 404, "message": "not found"
        }),
    )
}

/// The API server's answer to a write on a stale resourceVersion.
pub fn conflict() -> (StatusCode, Value) {
    (
        StatusCode::CONFLICT,
        serde_json::json!({
            "kind": "Status", "apiVersion": "v1", "status": "Failure",
            "reason": "Conflict", "code": 409, "message": "the object has been modified"
        }),
    )
}
