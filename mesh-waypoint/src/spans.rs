//! The trace of one request through the waypoint: its SERVER span (a
//! child of the client's span when the request named one) and a CLIENT
//! span per upstream attempt, each the parent the endpoint sees. Pure: the
//! spans are made from the finished `RequestRecord` and what each attempt
//! did.
use std::{
    net::SocketAddr,
    time::{Duration, SystemTime},
};

use mesh_telemetry::{
    otlp::{Span, SpanKind},
    request::{Party, RequestRecord, ResponseFlag},
    trace::SpanContext,
};

/// One try of an endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attempt {
    /// Its CLIENT span: the `traceparent` the endpoint got.
    pub context: SpanContext,
    pub upstream: SocketAddr,
    pub started: SystemTime,
    /// How it failed, and when; `None` when it got the response the
    /// request ended with.
    pub failed: Option<(ResponseFlag, SystemTime)>,
    /// The status it got, and when, when a route's retry sent the request
    /// on again after it.
    pub retried: Option<(http::StatusCode, SystemTime)>,
}

/// The waypoint's spans of one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestTrace {
    pub server: SpanContext,
    pub attempts: Vec<Attempt>,
}

impl RequestTrace {
    pub fn new(server: SpanContext) -> Self {
        Self {
            server,
            attempts: Vec::new(),
        }
    }

    /// The spans of the finished request `rec`: the SERVER span, then one
    /// CLIENT span per attempt with that attempt's endpoint and times. A
    /// failed attempt's span has no response code (the endpoint sent none;
    /// what the client got was the waypoint's own answer) and the flag of
    /// its failure.
    pub fn spans(&self, rec: &RequestRecord) -> Vec<Span> {
        let end = rec.started + rec.duration;
        let mut spans = Vec::with_capacity(1 + self.attempts.len());
        spans.push(Span::for_request(rec, &self.server, SpanKind::Server));
        for (i, attempt) in self.attempts.iter().enumerate() {
            let mut r = rec.clone();
            r.started = attempt.started;
            r.attempts = u32::try_from(i + 1).unwrap_or(u32::MAX);
            if Some(attempt.upstream) != rec.upstream {
                r.destination = Party::default();
            }
            r.upstream = Some(attempt.upstream);
            let until = match (attempt.failed, attempt.retried) {
                (Some((flag, at)), _) => {
                    r.response_code = None;
                    r.grpc_status = None;
                    r.response_bytes = 0;
                    r.response_flags = flag.into();
                    at
                }
                (None, Some((status, at))) => {
                    r.response_code = Some(status);
                    r.grpc_status = None;
                    r.response_bytes = 0;
                    r.response_flags = Default::default();
                    at
                }
                (None, None) => end,
            };
            r.duration = until
                .duration_since(attempt.started)
                .unwrap_or(Duration::ZERO);
            spans.push(Span::for_request(&r, &attempt.context, SpanKind::Client));
        }
        spans
    }
}

#[cfg(test)]
mod tests {
    use http::{Method, StatusCode};
    use mesh_telemetry::{
        connection::Security,
        otlp::AttributeValue,
        request::{Protocol, Reporter, ResponseFlags},
    };

    use super::*;

    fn record() -> RequestRecord {
        RequestRecord {
            reporter: Reporter::Waypoint,
            started: SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000),
            duration: Duration::from_millis(40),
            method: Method::GET,
            authority: "web.shop:80".into(),
            path: "/".into(),
            protocol: Protocol::Http1,
            response_code: Some(StatusCode::OK),
            grpc_status: None,
            request_bytes: 0,
            response_bytes: 5,
            downstream: None,
            upstream: Some("10.1.0.2:8080".parse().unwrap()),
            source: Party::default(),
            destination: Party {
                principal: Some("spiffe://cluster.local/ns/shop/sa/web".into()),
                ..Party::default()
            },
            service: None,
            route: None,
            route_rule: None,
            attempts: 2,
            response_flags: ResponseFlags::NONE,
            security: Security::MutualTls,
            trace_id: None,
        }
    }

    fn code(span: &Span) -> Option<&AttributeValue> {
        span.attributes
            .iter()
            .find_map(|(k, v)| (*k == "http.response.status_code").then_some(v))
    }

    #[test]
    fn a_failed_attempt_and_the_one_that_answered_each_have_a_client_span() {
        let mut rng = fastrand::Rng::with_seed(5);
        let server = SpanContext::root(true, &mut rng);
        let rec = record();
        let first = server.child(&mut rng);
        let second = server.child(&mut rng);
        let trace = RequestTrace {
            server: server.clone(),
            attempts: vec![
                Attempt {
                    context: first.clone(),
                    upstream: "10.1.0.1:8080".parse().unwrap(),
                    started: rec.started,
                    retried: None,
                    failed: Some((
                        ResponseFlag::UpstreamConnectionFailure,
                        rec.started + Duration::from_millis(10),
                    )),
                },
                Attempt {
                    context: second.clone(),
                    upstream: "10.1.0.2:8080".parse().unwrap(),
                    started: rec.started + Duration::from_millis(10),
                    failed: None,
                    retried: None,
                },
            ],
        };
        let spans = trace.spans(&rec);
        assert_eq!(spans.len(), 3);
        assert_eq!(spans[0].kind, SpanKind::Server);
        assert_eq!(spans[0].context, server);
        assert_eq!(code(&spans[0]), Some(&AttributeValue::Int(200)));

        assert_eq!(spans[1].kind, SpanKind::Client);
        assert_eq!(spans[1].context, first);
        assert_eq!(code(&spans[1]), None);
        assert_eq!(spans[1].error.as_deref(), Some("no response (UF)"));
        assert_eq!(
            spans[1].end.duration_since(spans[1].start).unwrap(),
            Duration::from_millis(10)
        );

        assert_eq!(spans[2].context, second);
        assert_eq!(code(&spans[2]), Some(&AttributeValue::Int(200)));
        assert_eq!(spans[2].error, None);
        assert_eq!(spans[2].end, rec.started + rec.duration);
        assert!(spans[2].attributes.contains(&(
            "network.peer.address",
            AttributeValue::String("10.1.0.2".into())
        )));
        assert!(
            spans[2]
                .attributes
                .contains(&("http.request.resend_count", AttributeValue::Int(1)))
        );
    }

    /// An attempt a route retried after its 503 keeps that status and
    /// ends when the retry began, not with the request.
    #[test]
    fn a_retried_attempt_keeps_its_own_status_and_end() {
        let mut rng = fastrand::Rng::with_seed(7);
        let server = SpanContext::root(true, &mut rng);
        let rec = record();
        let at = rec.started + Duration::from_millis(4);
        let trace = RequestTrace {
            server: server.clone(),
            attempts: vec![
                Attempt {
                    context: server.child(&mut rng),
                    upstream: "10.1.0.1:8080".parse().unwrap(),
                    started: rec.started,
                    failed: None,
                    retried: Some((http::StatusCode::SERVICE_UNAVAILABLE, at)),
                },
                Attempt {
                    context: server.child(&mut rng),
                    upstream: "10.1.0.2:8080".parse().unwrap(),
                    started: at,
                    failed: None,
                    retried: None,
                },
            ],
        };
        let spans = trace.spans(&rec);
        assert_eq!(code(&spans[1]), Some(&AttributeValue::Int(503)));
        assert_eq!(spans[1].end, at);
        assert_eq!(code(&spans[2]), Some(&AttributeValue::Int(200)));
        assert_eq!(spans[2].end, rec.started + rec.duration);
    }
}
