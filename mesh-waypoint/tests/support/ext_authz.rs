//! A test external authorizer: Envoy's `Authorization` service (the
//! server half envoy-types generates), served by tonic on a pod's address
//! of the bed, so the waypoint reaches it as it reaches real ones (a mesh
//! Service, over HBONE). Its answer is scripted by the test; it keeps
//! every CheckRequest it was sent.
use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use mesh_waypoint::ext_authz::proto::{
    CheckRequest, CheckResponse, DeniedHttpResponse, HeaderValue, HeaderValueOption, HttpStatus,
    OkHttpResponse, Status,
    authorization_server::{Authorization, AuthorizationServer},
    check_response::HttpResponse,
};
use tokio::net::TcpListener;
use tonic::transport::server::TcpIncoming;

/// What the authorizer answers next.
#[derive(Debug, Clone)]
pub enum Verdict {
    /// OK, with these headers set on the request.
    Allow(Vec<(&'static str, &'static str)>),
    /// PERMISSION_DENIED with this HTTP status, headers and body.
    Deny {
        status: i32,
        headers: Vec<(&'static str, &'static str)>,
        body: &'static str,
    },
    /// Answers after this long (OK).
    Slow(Duration),
}

#[derive(Default)]
pub struct Authorizer {
    verdict: Mutex<Option<Verdict>>,
    pub seen: Mutex<Vec<CheckRequest>>,
}

impl Authorizer {
    pub fn answer(&self, v: Verdict) {
        *self.verdict.lock().unwrap() = Some(v);
    }

    pub fn seen(&self) -> Vec<CheckRequest> {
        self.seen.lock().unwrap().clone()
    }
}

fn headers(pairs: &[(&str, &str)]) -> Vec<HeaderValueOption> {
    pairs
        .iter()
        .map(|(k, v)| HeaderValueOption {
            header: Some(HeaderValue {
                key: (*k).into(),
                value: (*v).into(),
                ..Default::default()
            }),
            ..Default::default()
        })
        .collect()
}

/// Serves through an `Arc`, so the test keeps its handle on the script.
struct Shared(Arc<Authorizer>);

#[tonic::async_trait]
impl Authorization for Shared {
    async fn check(
        &self,
        request: tonic::Request<CheckRequest>,
    ) -> Result<tonic::Response<CheckResponse>, tonic::Status> {
        self.0.seen.lock().unwrap().push(request.into_inner());
        let verdict = self
            .0
            .verdict
            .lock()
            .unwrap()
            .clone()
            .unwrap_or(Verdict::Allow(Vec::new()));
        let response = match verdict {
            Verdict::Allow(set) => CheckResponse {
                status: Some(Status::default()),
                http_response: Some(HttpResponse::OkResponse(OkHttpResponse {
                    headers: headers(&set),
                    ..Default::default()
                })),
                ..Default::default()
            },
            Verdict::Deny {
                status,
                headers: h,
                body,
            } => CheckResponse {
                status: Some(Status {
                    code: 7,
                    message: "denied by the test authorizer".into(),
                    ..Default::default()
                }),
                http_response: Some(HttpResponse::DeniedResponse(DeniedHttpResponse {
                    status: Some(HttpStatus { code: status }),
                    headers: headers(&h),
                    body: body.into(),
                })),
                ..Default::default()
            },
            Verdict::Slow(wait) => {
                tokio::time::sleep(wait).await;
                CheckResponse {
                    status: Some(Status::default()),
                    ..Default::default()
                }
            }
        };
        Ok(tonic::Response::new(response))
    }
}

/// Starts the authorizer on `addr` (plain h2c, as a pod's app listens).
pub async fn start(addr: SocketAddr) -> Arc<Authorizer> {
    let authorizer = Arc::new(Authorizer::default());
    let listener = TcpListener::bind(addr).await.unwrap();
    let service = AuthorizationServer::new(Shared(authorizer.clone()));
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming(TcpIncoming::from(listener)),
    );
    authorizer
}
