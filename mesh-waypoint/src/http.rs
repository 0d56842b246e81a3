//! HTTP inside an accepted stream: HTTP/1.1 (keep-alive, chunked bodies,
//! upgrades passed through) or HTTP/2 (h2c with prior knowledge, gRPC and
//! its trailers) served by hyper; each request balanced over the target's
//! ready endpoints and sent on, and one `RequestRecord` written when it
//! ends.
use std::{
    convert::Infallible,
    net::SocketAddr,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    task::{Context, Poll},
    time::Instant,
};

use bytes::Bytes;
use http::{HeaderValue, Request, Response, StatusCode, Uri, Version, header::HOST};
use http_body_util::{BodyExt, Full, combinators::UnsyncBoxBody};
use hyper::{
    body::{Body, Frame, Incoming, SizeHint},
    server::conn::{http1, http2},
    service::service_fn,
};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tracing::{debug, warn};

use crate::{
    balancer::InFlight,
    handler::StreamContext,
    headers,
    metrics::Refusal,
    protocol::Protocol,
    record::{RequestRecord, ResponseFlag},
    upstream::{CountedBody, Failed},
    waypoint::Waypoint,
};

/// Endpoints one request may be tried on when they cannot be reached.
const MAX_ATTEMPTS: u32 = 3;

pub type ResponseBody = UnsyncBoxBody<Bytes, hyper::Error>;

/// Serves HTTP of `protocol` on `io` until the client ends the connection
/// or the drain does.
pub async fn serve<I>(wp: Arc<Waypoint>, io: I, protocol: Protocol, ctx: Arc<StreamContext>)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = {
        let (wp, ctx) = (wp.clone(), ctx.clone());
        service_fn(move |request| {
            let (wp, ctx) = (wp.clone(), ctx.clone());
            async move { Ok::<_, Infallible>(proxy(wp, ctx, protocol, request).await) }
        })
    };
    let mut draining = wp.draining();
    let io = TokioIo::new(io);
    let result = match protocol {
        Protocol::Http2 => {
            let conn = http2::Builder::new(TokioExecutor::new())
                .timer(TokioTimer::new())
                .max_concurrent_streams(wp.limits.max_concurrent_streams)
                .serve_connection(io, service);
            tokio::pin!(conn);
            tokio::select! {
                done = &mut conn => done,
                () = drained(&mut draining) => {
                    conn.as_mut().graceful_shutdown();
                    conn.await
                }
            }
        }
        _ => {
            let conn = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(wp.limits.header_read_timeout)
                .keep_alive(true)
                .serve_connection(io, service)
                .with_upgrades();
            tokio::pin!(conn);
            tokio::select! {
                done = &mut conn => done,
                () = drained(&mut draining) => {
                    conn.as_mut().graceful_shutdown();
                    conn.await
                }
            }
        }
    };
    if let Err(e) = result {
        if e.is_parse() || e.is_parse_too_large() {
            // hyper has answered 400 (431, 414) and closed; nothing went on.
            wp.metrics.refused(Refusal::BadRequest);
            let mut record = RequestRecord::new(protocol, ctx.dst.to_string(), ctx.client.clone());
            record.destination_service = ctx.target.service();
            record.destination_workload = ctx.target.workload();
            record.status = StatusCode::BAD_REQUEST.as_u16();
            record.flag(ResponseFlag::DownstreamProtocolError);
            wp.metrics.request(&record);
            record.log();
            warn!(
                authority = %ctx.dst,
                src = ?ctx.client.peer,
                peer_identity = ?ctx.client.identity,
                error = %e,
                "HTTP request refused (400): it does not parse"
            );
        } else {
            debug!(authority = %ctx.dst, error = %e, "downstream HTTP connection ended");
        }
    }
}

/// Resolves once the drain has started.
pub async fn drained(draining: &mut tokio::sync::watch::Receiver<bool>) {
    let _ = draining.wait_for(|d| *d).await;
}

/// The authority a request names: `Host` / `:authority`, else the CONNECT's.
fn authority(request: &Request<Incoming>, dst: SocketAddr) -> String {
    request
        .uri()
        .authority()
        .map(|a| a.to_string())
        .or_else(|| {
            request
                .headers()
                .get(HOST)
                .and_then(|h| h.to_str().ok())
                .map(str::to_owned)
        })
        .unwrap_or_else(|| dst.to_string())
}

/// A request's head made ready for the upstream of `protocol`.
fn upstream_head(
    parts: &mut http::request::Parts,
    protocol: Protocol,
    authority: &str,
) -> Result<(), http::Error> {
    let path = parts
        .uri
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_owned();
    match protocol {
        Protocol::Http2 => {
            parts.version = Version::HTTP_2;
            parts.uri = Uri::builder()
                .scheme("http")
                .authority(authority)
                .path_and_query(path)
                .build()?;
            // :authority says it; a Host beside it could only disagree.
            parts.headers.remove(HOST);
        }
        _ => {
            parts.version = Version::HTTP_11;
            parts.uri = Uri::builder().path_and_query(path).build()?;
            if !parts.headers.contains_key(HOST) {
                parts
                    .headers
                    .insert(HOST, HeaderValue::from_str(authority)?);
            }
        }
    }
    Ok(())
}

/// A response made here (no upstream answered), with its record written.
fn local(
    wp: &Waypoint,
    mut record: RequestRecord,
    started: Instant,
    status: StatusCode,
    flag: Option<ResponseFlag>,
) -> Response<ResponseBody> {
    record.status = status.as_u16();
    if let Some(flag) = flag {
        record.flag(flag);
    }
    record.duration = started.elapsed();
    wp.metrics.request(&record);
    record.log();
    let text = format!(
        "{}{}\n",
        status.canonical_reason().unwrap_or("error"),
        flag.map(|f| format!(" ({})", f.code())).unwrap_or_default()
    );
    let mut response = Response::new(
        Full::new(Bytes::from(text))
            .map_err(|never| match never {})
            .boxed_unsync(),
    );
    *response.status_mut() = status;
    response
}

async fn proxy(
    wp: Arc<Waypoint>,
    ctx: Arc<StreamContext>,
    protocol: Protocol,
    mut request: Request<Incoming>,
) -> Response<ResponseBody> {
    let started = Instant::now();
    let authority = authority(&request, ctx.dst);
    let mut record = RequestRecord::new(protocol, authority.clone(), ctx.client.clone());
    record.method = Some(request.method().to_string());
    record.path = request.uri().path_and_query().map(|p| p.to_string());
    record.destination_service = ctx.target.service();
    record.destination_workload = ctx.target.workload();
    let upgrade = protocol == Protocol::Http1 && headers::is_upgrade(request.headers());
    let downstream_upgrade = upgrade.then(|| hyper::upgrade::on(&mut request));
    let (mut parts, body) = request.into_parts();
    headers::strip_hop_by_hop(&mut parts.headers, upgrade);
    headers::forwarded_proto(&mut parts.headers);
    record.trace = Some(headers::continue_trace(&mut parts.headers));
    if let Err(e) = upstream_head(&mut parts, protocol, &authority) {
        warn!(authority = %authority, error = %e, "HTTP request refused (400): its authority or path cannot be forwarded");
        wp.metrics.refused(Refusal::BadRequest);
        return local(
            &wp,
            record,
            started,
            StatusCode::BAD_REQUEST,
            Some(ResponseFlag::DownstreamProtocolError),
        );
    }
    let request_bytes = Arc::new(AtomicU64::new(0));
    let mut request = Request::from_parts(parts, CountedBody::new(body, request_bytes.clone()));
    let view = wp.view();
    let endpoints = ctx.target.endpoints(&view);
    let mut tried = Vec::new();
    let src = ctx.client.peer.unwrap_or(ctx.dst);
    let (response, place) = loop {
        let Some(place) = (record.attempts < MAX_ATTEMPTS)
            .then(|| wp.balancer.choose(&endpoints, &tried))
            .flatten()
        else {
            let flag = if tried.is_empty() {
                warn!(authority = %authority, destination = %ctx.target.describe(), "no ready endpoint (503 UH)");
                ResponseFlag::NoHealthyUpstream
            } else {
                ResponseFlag::UpstreamConnectFailure
            };
            return local(
                &wp,
                record,
                started,
                StatusCode::SERVICE_UNAVAILABLE,
                Some(flag),
            );
        };
        record.attempts += 1;
        record.upstream = Some(place.addr);
        tried.push(place.addr);
        let expected = view.expected_identity(place.addr.ip());
        let send = wp
            .upstream
            .send(place.addr, expected, protocol, src, request);
        match tokio::time::timeout(wp.limits.response_timeout, send).await {
            Ok(Ok(response)) => break (response, place),
            Ok(Err(Failed::Connect {
                error,
                request: back,
            })) => {
                warn!(authority = %authority, upstream = %place.addr, attempt = record.attempts, error = %error, "upstream unreachable");
                record.flag(ResponseFlag::UpstreamConnectFailure);
                request = *back;
            }
            Ok(Err(Failed::Reset(error))) => {
                warn!(authority = %authority, upstream = %place.addr, error = %error, "upstream reset the request (502 UR)");
                record.request_bytes = request_bytes.load(Ordering::Relaxed);
                return local(
                    &wp,
                    record,
                    started,
                    StatusCode::BAD_GATEWAY,
                    Some(ResponseFlag::UpstreamReset),
                );
            }
            Err(_) => {
                warn!(authority = %authority, upstream = %place.addr, timeout_s = wp.limits.response_timeout.as_secs_f32(), "upstream did not answer in time (504 UT)");
                record.request_bytes = request_bytes.load(Ordering::Relaxed);
                return local(
                    &wp,
                    record,
                    started,
                    StatusCode::GATEWAY_TIMEOUT,
                    Some(ResponseFlag::UpstreamTimeout),
                );
            }
        }
    };
    // A request that got through after failed attempts is not a failure.
    record
        .flags
        .retain(|f| *f != ResponseFlag::UpstreamConnectFailure);
    respond(
        wp,
        record,
        started,
        request_bytes,
        response,
        place,
        downstream_upgrade,
    )
}

fn respond(
    wp: Arc<Waypoint>,
    mut record: RequestRecord,
    started: Instant,
    request_bytes: Arc<AtomicU64>,
    mut response: Response<Incoming>,
    place: InFlight,
    downstream_upgrade: Option<hyper::upgrade::OnUpgrade>,
) -> Response<ResponseBody> {
    record.status = response.status().as_u16();
    record.grpc_status = grpc_status(response.headers());
    let switching = response.status() == StatusCode::SWITCHING_PROTOCOLS;
    if let (true, Some(downstream)) = (switching, downstream_upgrade) {
        let upstream = hyper::upgrade::on(&mut response);
        headers::strip_hop_by_hop(response.headers_mut(), true);
        tokio::spawn(tunnel(wp, record, started, downstream, upstream, place));
        let (parts, _) = response.into_parts();
        return Response::from_parts(
            parts,
            http_body_util::Empty::new()
                .map_err(|never| match never {})
                .boxed_unsync(),
        );
    }
    headers::strip_hop_by_hop(response.headers_mut(), false);
    let (parts, body) = response.into_parts();
    let body = Recorded {
        inner: body,
        finish: Some(Finish {
            wp,
            record,
            started,
            request_bytes,
            _place: place,
        }),
        bytes: 0,
    };
    Response::from_parts(parts, body.boxed_unsync())
}

fn grpc_status(headers: &http::HeaderMap) -> Option<String> {
    headers
        .get("grpc-status")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

/// An upgraded connection (WebSocket): bytes both ways until both end.
async fn tunnel(
    wp: Arc<Waypoint>,
    mut record: RequestRecord,
    started: Instant,
    downstream: hyper::upgrade::OnUpgrade,
    upstream: hyper::upgrade::OnUpgrade,
    _place: InFlight,
) {
    match tokio::try_join!(downstream, upstream) {
        Ok((down, up)) => {
            let (mut down, mut up) = (TokioIo::new(down), TokioIo::new(up));
            match tokio::io::copy_bidirectional(&mut down, &mut up).await {
                Ok((sent, received)) => {
                    record.request_bytes = sent;
                    record.response_bytes = received;
                }
                Err(e) => {
                    debug!(authority = %record.authority, error = %e, "upgraded connection broke");
                    record.flag(ResponseFlag::UpstreamReset);
                }
            }
        }
        Err(e) => {
            warn!(authority = %record.authority, error = %e, "upgrade did not complete");
            record.flag(ResponseFlag::UpstreamReset);
        }
    }
    record.duration = started.elapsed();
    wp.metrics.request(&record);
    record.log();
}

/// What is written when a proxied response ends.
struct Finish {
    wp: Arc<Waypoint>,
    record: RequestRecord,
    started: Instant,
    request_bytes: Arc<AtomicU64>,
    /// The request counts as in flight to its endpoint until its response
    /// has been passed on.
    _place: InFlight,
}

/// A response body from upstream, counted; its record is written when it
/// ends, fails, or is dropped unfinished (the client went away).
struct Recorded {
    inner: Incoming,
    finish: Option<Finish>,
    bytes: u64,
}

impl Recorded {
    fn finish(&mut self, flag: Option<ResponseFlag>) {
        if let Some(mut f) = self.finish.take() {
            if let Some(flag) = flag {
                f.record.flag(flag);
            }
            f.record.response_bytes = self.bytes;
            f.record.request_bytes = f.request_bytes.load(Ordering::Relaxed);
            f.record.duration = f.started.elapsed();
            f.wp.metrics.request(&f.record);
            f.record.log();
        }
    }
}

impl Body for Recorded {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    self.bytes += data.len() as u64;
                } else if let Some(trailers) = frame.trailers_ref()
                    && let Some(status) = grpc_status(trailers)
                    && let Some(f) = self.finish.as_mut()
                {
                    f.record.grpc_status = Some(status);
                }
                if self.inner.is_end_stream() {
                    self.finish(None);
                }
            }
            Poll::Ready(Some(Err(_))) => self.finish(Some(ResponseFlag::UpstreamReset)),
            Poll::Ready(None) => self.finish(None),
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for Recorded {
    fn drop(&mut self) {
        // Dropped before its end: the client stopped reading or reset.
        let unfinished = self.finish.is_some() && !self.inner.is_end_stream();
        self.finish(unfinished.then_some(ResponseFlag::DownstreamReset));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(uri: &str, host: Option<&str>) -> http::request::Parts {
        let mut b = Request::builder().uri(uri);
        if let Some(h) = host {
            b = b.header(HOST, h);
        }
        b.body(()).unwrap().into_parts().0
    }

    #[test]
    fn http1_upstream_gets_origin_form_and_a_host() {
        let mut p = parts("http://web.shop:80/a?b=1", None);
        upstream_head(&mut p, Protocol::Http1, "web.shop:80").unwrap();
        assert_eq!(p.uri, "/a?b=1");
        assert_eq!(p.headers[HOST], "web.shop:80");
        assert_eq!(p.version, Version::HTTP_11);
        let mut p = parts("/x", Some("keep.me"));
        upstream_head(&mut p, Protocol::Http1, "other").unwrap();
        assert_eq!(p.headers[HOST], "keep.me");
    }

    #[test]
    fn http2_upstream_gets_an_absolute_uri_and_no_host() {
        let mut p = parts("/svc.Echo/Call", Some("echo.shop:50051"));
        upstream_head(&mut p, Protocol::Http2, "echo.shop:50051").unwrap();
        assert_eq!(p.uri, "http://echo.shop:50051/svc.Echo/Call");
        assert!(p.headers.get(HOST).is_none());
        assert_eq!(p.version, Version::HTTP_2);
    }

    #[test]
    fn a_bad_authority_cannot_be_forwarded() {
        let mut p = parts("/", None);
        assert!(upstream_head(&mut p, Protocol::Http2, "bad host").is_err());
    }
}
