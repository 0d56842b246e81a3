//! HTTP inside an accepted stream: HTTP/1.1 (keep-alive, chunked bodies,
//! upgrades passed through) or HTTP/2 (h2c with prior knowledge, gRPC and
//! its trailers) served by hyper; each request balanced over the target's
//! ready endpoints and sent on, and one `RequestRecord` (with its spans)
//! written when it ends.
use std::{
    convert::Infallible,
    net::SocketAddr,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicU64, AtomicUsize, Ordering},
    },
    task::{Context, Poll},
    time::{Duration, Instant, SystemTime},
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
use mesh_telemetry::{
    request::{GrpcStatus, RequestRecord, ResponseFlag},
    trace::SpanContext,
};
use tokio::{
    io::{AsyncRead, AsyncWrite},
    sync::OwnedSemaphorePermit,
};
use tracing::{debug, warn};

use mesh_discovery::view::MeshView;
use mesh_route::{
    compile::Timeout,
    fault::{AbortStatus, Injection},
    redirect::Redirection,
};

use crate::{
    authn,
    balancer::InFlight,
    body::{self, Read, RequestBody},
    handler::StreamContext,
    headers,
    idle::{self, End},
    mirror,
    protocol::Protocol,
    ratelimit, record, retry,
    retry_budget::Withdrawal,
    routing::{self, Action, Decision},
    spans::{Attempt, RequestTrace},
    target,
    upstream::{CountedBody, Failed},
    waypoint::Waypoint,
};

pub type ResponseBody = UnsyncBoxBody<Bytes, hyper::Error>;

/// Serves HTTP of `protocol` on `io` until the client ends the connection
/// or the drain does.
pub async fn serve<I>(wp: Arc<Waypoint>, io: I, protocol: Protocol, ctx: Arc<StreamContext>)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let active = Arc::new(AtomicUsize::new(0));
    let service = {
        let (wp, ctx, active) = (wp.clone(), ctx.clone(), active.clone());
        service_fn(move |request| {
            let (wp, ctx) = (wp.clone(), ctx.clone());
            let active = Active::new(active.clone());
            async move { Ok::<_, Infallible>(proxy(wp, ctx, protocol, request, active).await) }
        })
    };
    let mut draining = wp.draining();
    let idle = wp.limits.http_idle_timeout;
    let io = TokioIo::new(io);
    let result = match protocol {
        Protocol::Http2 => {
            let conn = http2::Builder::new(TokioExecutor::new())
                .timer(TokioTimer::new())
                // A client gone without a word (its node lost) is noticed
                // within these, as on the upstream side.
                .keep_alive_interval(H2_KEEPALIVE)
                .keep_alive_timeout(H2_KEEPALIVE_TIMEOUT)
                .max_concurrent_streams(wp.limits.max_concurrent_streams)
                // A client's header block is bounded as on the HBONE
                // listener itself (a CONTINUATION flood ends the stream).
                .max_header_list_size(mesh_hbone::MAX_HEADER_LIST)
                .serve_connection(io, service);
            tokio::pin!(conn);
            tokio::select! {
                done = &mut conn => done,
                () = drained(&mut draining) => {
                    conn.as_mut().graceful_shutdown();
                    conn.await
                }
                () = idle_for(&active, idle) => {
                    debug!(authority = %ctx.dst, idle_s = idle.as_secs_f32(), "downstream HTTP connection idle: closed");
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
                () = idle_for(&active, idle) => {
                    debug!(authority = %ctx.dst, idle_s = idle.as_secs_f32(), "downstream HTTP connection idle: closed");
                    conn.as_mut().graceful_shutdown();
                    conn.await
                }
            }
        }
    };
    if let Err(e) = result {
        if e.is_parse() || e.is_parse_too_large() {
            // hyper has answered 400 (431, 414) and closed; nothing went on.
            let view = wp.view();
            let mut rec = record::start(
                &ctx,
                &view,
                record::request_protocol(protocol, &http::HeaderMap::new()),
                unread_method(),
                ctx.dst.to_string(),
                String::new(),
            );
            rec.response_code = Some(StatusCode::BAD_REQUEST);
            rec.response_flags = ResponseFlag::DownstreamProtocolError.into();
            wp.telemetry.request(&rec, None);
            warn!(
                authority = %ctx.dst,
                src = %ctx.peer,
                peer_identity = ?ctx.source.principal,
                error = %e,
                "HTTP request refused (400): it does not parse"
            );
        } else {
            debug!(authority = %ctx.dst, error = %e, "downstream HTTP connection ended");
        }
    }
}

/// HTTP/2 keepalive to clients: a dead peer is noticed within the interval
/// and the timeout.
const H2_KEEPALIVE: Duration = Duration::from_secs(10);
const H2_KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(5);

/// One request open on a downstream connection, for its idle close.
pub struct Active(Arc<AtomicUsize>);

impl Active {
    fn new(count: Arc<AtomicUsize>) -> Self {
        count.fetch_add(1, Ordering::AcqRel);
        Self(count)
    }
}

impl Drop for Active {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Resolves once no request has been open on the connection for `idle`
/// (looked at every quarter of it).
async fn idle_for(active: &AtomicUsize, idle: Duration) {
    let mut check = tokio::time::interval(idle / 4);
    check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut since: Option<tokio::time::Instant> = None;
    loop {
        let now = check.tick().await;
        if active.load(Ordering::Acquire) > 0 {
            since = None;
        } else if now.duration_since(*since.get_or_insert(now)) >= idle {
            return;
        }
    }
}

/// The method of a request that did not parse: `-`, as Envoy logs it.
fn unread_method() -> http::Method {
    http::Method::from_bytes(b"-").unwrap_or(http::Method::GET)
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

/// A request on its way: its record and trace, and when it started.
struct Open {
    wp: Arc<Waypoint>,
    record: RequestRecord,
    trace: RequestTrace,
    started: Instant,
    /// Held until the record is written: the request counts as open on
    /// its connection, and against `Limits::max_requests`.
    _active: Active,
    permit: Option<OwnedSemaphorePermit>,
}

impl Open {
    /// Written once: counted, logged, its spans sent.
    fn finish(mut self) {
        self.record.duration = self.started.elapsed();
        self.wp.telemetry.request(&self.record, Some(&self.trace));
    }

    /// The last attempt failed now, with `flag`.
    fn attempt_failed(&mut self, flag: ResponseFlag) {
        if let Some(a) = self.trace.attempts.last_mut() {
            a.failed = Some((flag, SystemTime::now()));
        }
    }

    /// A redirect made here, as the route says, with its record written.
    fn redirect(mut self, r: Redirection) -> Response<ResponseBody> {
        let location = match HeaderValue::from_str(&r.location) {
            Ok(location) => location,
            Err(e) => {
                warn!(location = %r.location, error = %e, "a redirect's Location is not a valid header value (500)");
                return self.local(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    ResponseFlag::NoClusterFound,
                );
            }
        };
        self.record.response_code = Some(r.status);
        self.finish();
        let mut response = Response::new(
            http_body_util::Empty::new()
                .map_err(|never| match never {})
                .boxed_unsync(),
        );
        *response.status_mut() = r.status;
        response
            .headers_mut()
            .insert(http::header::LOCATION, location);
        response
    }

    /// The abort a fault injection rolled, with its record written (`FI`).
    /// A gRPC status is answered as gRPC does it: 200, trailers-only.
    fn fault_abort(mut self, status: AbortStatus) -> Response<ResponseBody> {
        let code = match status {
            AbortStatus::Http(status) => return self.local(status, ResponseFlag::FaultInjected),
            AbortStatus::Grpc(code) => code,
        };
        self.record
            .response_flags
            .insert(ResponseFlag::FaultInjected);
        self.grpc_local(u32::from(code), b"fault injected")
    }

    /// A gRPC call answered here as Envoy answers one: 200, trailers-only,
    /// with `grpc-status` and the text as `grpc-message` (percent-encoded
    /// as gRPC specifies); its record written.
    fn grpc_local(mut self, code: u32, text: &[u8]) -> Response<ResponseBody> {
        self.record.response_code = Some(StatusCode::OK);
        self.record.grpc_status = GrpcStatus::new(code);
        self.finish();
        let mut response = Response::new(
            http_body_util::Empty::new()
                .map_err(|never| match never {})
                .boxed_unsync(),
        );
        let headers = response.headers_mut();
        headers.insert(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static("application/grpc"),
        );
        headers.insert("grpc-status", HeaderValue::from(code));
        if let Ok(message) = HeaderValue::from_str(&crate::authz::grpc_message(text)) {
            headers.insert("grpc-message", message);
        }
        response
    }

    /// A request an AuthorizationPolicy denied, with its record written
    /// (`RBAC`, or Envoy's `UAEX` when an external authorizer denied): the
    /// denial's status, headers and body.
    /// A gRPC client is answered as Envoy answers it: 200, trailers-only,
    /// the status mapped (403 is PERMISSION_DENIED) and the body as
    /// `grpc-message`.
    fn denied(mut self, denial: crate::authz::Denial) -> Response<ResponseBody> {
        self.record
            .response_flags
            .insert(if denial.action == "CUSTOM" {
                ResponseFlag::UnauthorizedExternalService
            } else {
                ResponseFlag::RbacAccessDenied
            });
        if self.record.protocol == mesh_telemetry::request::Protocol::Grpc {
            let code = crate::authz::grpc_status(denial.status);
            return self.grpc_local(code, &denial.body);
        }
        self.record.response_code = Some(denial.status);
        self.finish();
        let mut response = Response::new(
            Full::new(denial.body)
                .map_err(|never| match never {})
                .boxed_unsync(),
        );
        *response.status_mut() = denial.status;
        for (name, value) in denial.headers {
            response.headers_mut().append(name, value);
        }
        response
    }

    /// A request refused by RequestAuthentication: 401 with Envoy's text
    /// and challenge, its record written. A gRPC call gets 200 with
    /// UNAUTHENTICATED (16) and the text as `grpc-message`, as Envoy
    /// answers it.
    fn unauthenticated(
        mut self,
        why: &authn::Rejection,
        authority: &str,
        uri: &Uri,
    ) -> Response<ResponseBody> {
        if self.record.protocol == mesh_telemetry::request::Protocol::Grpc {
            return self.grpc_local(16, why.to_string().as_bytes());
        }
        self.record.response_code = Some(StatusCode::UNAUTHORIZED);
        self.finish();
        let mut response = Response::new(
            Full::new(Bytes::from(why.to_string()))
                .map_err(|never| match never {})
                .boxed_unsync(),
        );
        *response.status_mut() = StatusCode::UNAUTHORIZED;
        response.headers_mut().insert(
            http::header::WWW_AUTHENTICATE,
            authn::challenge(authority, uri.path()),
        );
        response
    }

    /// A response made here (no endpoint answered), with its record written.
    fn local(mut self, status: StatusCode, flag: ResponseFlag) -> Response<ResponseBody> {
        self.record.response_code = Some(status);
        self.record.response_flags.insert(flag);
        self.finish();
        let text = format!(
            "{} ({})\n",
            status.canonical_reason().unwrap_or("error"),
            flag.as_str()
        );
        let mut response = Response::new(
            Full::new(Bytes::from(text))
                .map_err(|never| match never {})
                .boxed_unsync(),
        );
        *response.status_mut() = status;
        response
    }
}

async fn proxy(
    wp: Arc<Waypoint>,
    ctx: Arc<StreamContext>,
    protocol: Protocol,
    mut request: Request<Incoming>,
    active: Active,
) -> Response<ResponseBody> {
    let started = Instant::now();
    let view = wp.view();
    let authority = authority(&request, ctx.dst);
    let path = request
        .uri()
        .path_and_query()
        .map_or_else(|| "/".to_owned(), |p| p.to_string());
    let mut rng = fastrand::Rng::new();
    let server = SpanContext::from_headers(request.headers(), true, &mut rng);
    let mut record = record::start(
        &ctx,
        &view,
        record::request_protocol(protocol, request.headers()),
        request.method().clone(),
        authority.clone(),
        path,
    );
    record.trace_id = Some(server.trace_id);
    let mut open = Open {
        wp: wp.clone(),
        record,
        trace: RequestTrace::new(server),
        started,
        _active: active,
        permit: None,
    };
    // RequestAuthentication first: a request whose token does not verify
    // is answered here, before authorization or a rate limit counts it.
    let authenticated = match authn::check(&wp, &view, &ctx, request.headers(), request.uri()) {
        Ok(authenticated) => authenticated,
        Err(rejection) => {
            debug!(authority = %authority, reason = rejection.reason(), "JWT refused (401): {rejection}");
            return open.unauthenticated(&rejection, &authority, request.uri());
        }
    };
    // Its header changes come before authorization, as Envoy's jwt_authn
    // filter makes them before RBAC: a policy on an output header must
    // read what the verified token says, never what the client sent.
    authenticated.edits.apply(request.headers_mut());
    let request_auth: Option<mesh_policy::RequestAuth> = authenticated.auth;
    if let Some(auth) = &request_auth {
        debug!(authority = %authority, principal = %auth.principal, "JWT verified");
    }
    // Authorization after authentication (the policies read what a
    // verified JWT says) and before a rate limit counts the request.
    if let Err(denial) = crate::authz::check(
        &wp,
        &view,
        &ctx,
        protocol,
        &mut request,
        &authority,
        request_auth.as_ref(),
    )
    .await
    {
        return open.denied(denial);
    }
    if let Some(limited) = ratelimit::check(&wp, &view, &ctx) {
        debug!(authority = %authority, policy = %limited.policy, retry_after_ms = limited.retry_after.as_millis() as u64, "over a local rate limit (429 RL)");
        wp.telemetry.rate_limited(&limited.policy);
        let mut response = open.local(StatusCode::TOO_MANY_REQUESTS, ResponseFlag::RateLimited);
        response.headers_mut().insert(
            http::header::RETRY_AFTER,
            HeaderValue::from(limited.retry_after_secs()),
        );
        return response;
    }
    match wp.requests.clone().try_acquire_owned() {
        Ok(permit) => open.permit = Some(permit),
        Err(_) => {
            if wp.should_log() {
                warn!(authority = %authority, limit = wp.limits.max_requests, "the waypoint holds its limit of requests in flight (503 UO)");
            }
            return open.local(
                StatusCode::SERVICE_UNAVAILABLE,
                ResponseFlag::UpstreamOverflow,
            );
        }
    }
    let upgrade = protocol == Protocol::Http1 && headers::is_upgrade(request.headers());
    let downstream_upgrade = upgrade.then(|| hyper::upgrade::on(&mut request));
    let (mut parts, body) = request.into_parts();
    headers::strip_hop_by_hop(&mut parts.headers, upgrade);
    headers::forwarded_proto(&mut parts.headers);
    let (mut open, mut plan) = match route(&wp, &view, &ctx, open, &mut parts, &authority, &mut rng)
    {
        Ok(routed) => routed,
        Err(response) => return *response,
    };
    if let Some(delay) = plan.delay {
        open.record
            .response_flags
            .insert(ResponseFlag::DelayInjected);
        tokio::time::sleep(delay).await;
    }
    if let Err(e) = upstream_head(&mut parts, protocol, &plan.authority) {
        warn!(authority = %authority, error = %e, "HTTP request refused (400): its authority or path cannot be forwarded");
        return open.local(
            StatusCode::BAD_REQUEST,
            ResponseFlag::DownstreamProtocolError,
        );
    }
    let request_bytes = Arc::new(AtomicU64::new(0));
    let deadline = plan
        .request_timeout
        .map(|t| tokio::time::Instant::now() + t);
    if upgrade {
        // An upgraded connection cannot be copied: it is a stream of its
        // own once answered.
        plan.mirrors.clear();
    }
    // A request whose rule neither retries nor mirrors streams its body as
    // it comes; one whose rule does is read first, and copied for each
    // attempt and mirror when it was kept whole.
    let (mut request, copies) = if plan.retry.is_none() && plan.mirrors.is_empty() {
        let body = CountedBody::new(body, request_bytes.clone());
        (Request::from_parts(parts, body), None)
    } else {
        let bound = body::Bound {
            bytes: body::KEEP_LIMIT,
            wait: plan
                .request_timeout
                .map_or(wp.limits.header_read_timeout, |t| {
                    t.min(wp.limits.header_read_timeout)
                }),
            gap: body::KEEP_GAP,
        };
        match body::read(body, bound).await {
            Ok(Read::Kept(kept)) => {
                request_bytes.store(kept.len() as u64, Ordering::Relaxed);
                let source = mirror::Source {
                    protocol,
                    src: ctx.carries,
                    head: &parts,
                    body: &kept,
                };
                for target in &plan.mirrors {
                    mirror::send(&wp, &view, &source, target, wp.limits.response_timeout);
                }
                let copies = Copies {
                    head: parts,
                    body: kept,
                };
                (copies.request(), Some(copies))
            }
            Ok(Read::Unkept { body, why }) => {
                debug!(authority = %authority, reason = why.label(), limit_bytes = bound.bytes, "request body not kept: sent once, with no retry and no mirror");
                wp.telemetry.unreplayable(why);
                plan.retry = None;
                let body = CountedBody::new(RequestBody::Resumed(body), request_bytes.clone());
                (Request::from_parts(parts, body), None)
            }
            Err(e) => {
                debug!(authority = %authority, error = %e, "request body broke before it could be sent (400)");
                return open.local(
                    StatusCode::BAD_REQUEST,
                    ResponseFlag::DownstreamProtocolError,
                );
            }
        }
    };
    let policy = plan.retry.as_ref().map(retry::Policy::new);
    let endpoints = plan.endpoints;
    // Under the Service's DestinationRule: its pool limits first (an
    // HTTP/1.1 request needs a connection of its own), then its balancer
    // over the endpoints outlier detection has not ejected.
    let destination = plan.destination.take();
    let pooled = match &destination {
        Some(d) => {
            let needs_connection = protocol != Protocol::Http2;
            match d
                .admit(&wp.telemetry, needs_connection, plan.attempt_timeout)
                .await
            {
                Ok(held) => Some(held),
                Err(_) => {
                    return open.local(
                        StatusCode::SERVICE_UNAVAILABLE,
                        ResponseFlag::UpstreamOverflow,
                    );
                }
            }
        }
        None => None,
    };
    let hash = destination.as_ref().and_then(|d| {
        d.hash(&crate::destination::RequestKey {
            headers: request.headers(),
            query: request.uri().query(),
            source: ctx.carries.ip(),
        })
    });
    let connections = destination
        .as_ref()
        .map(crate::destination::Applied::connection_settings)
        .unwrap_or_default();
    let mut _retry_held = None;
    let mut tried = Vec::new();
    let (mut response, mut place) = loop {
        let chosen = match &destination {
            Some(d) => {
                let usable = d.usable(&endpoints, Instant::now());
                d.choose(&wp.balancer, &usable, retry::avoid(&usable, &tried), hash)
            }
            None => wp
                .balancer
                .choose(&endpoints, retry::avoid(&endpoints, &tried)),
        };
        let Some(place) = chosen else {
            warn!(authority = %authority, destination = %ctx.target.describe(), "no ready endpoint (503 UH)");
            return open.local(
                StatusCode::SERVICE_UNAVAILABLE,
                ResponseFlag::NoHealthyUpstream,
            );
        };
        open.record.attempts += 1;
        open.record.upstream = Some(place.addr);
        open.record.destination = record::destination(&view, place.addr.ip());
        tried.push(place.addr);
        let attempt = open.trace.server.child(&mut rng);
        attempt.inject(request.headers_mut());
        open.trace.attempts.push(Attempt {
            context: attempt,
            upstream: place.addr,
            started: SystemTime::now(),
            failed: None,
            retried: None,
        });
        let expected = view.expected_identity(place.addr.ip());
        let send = wp.upstream.send_with(
            place.addr,
            expected,
            protocol,
            ctx.carries,
            request,
            connections,
        );
        let attempt_timeout = match deadline {
            Some(d) => plan
                .attempt_timeout
                .min(d.saturating_duration_since(tokio::time::Instant::now())),
            None => plan.attempt_timeout,
        };
        let mut unsent = None;
        let ended = match tokio::time::timeout(attempt_timeout, send).await {
            Ok(Ok(response)) => Ended::Answered(response),
            Ok(Err(Failed::Connect {
                error,
                request: back,
            })) => {
                warn!(authority = %authority, upstream = %place.addr, attempt = open.record.attempts, error = %error, "upstream unreachable");
                open.attempt_failed(ResponseFlag::UpstreamConnectionFailure);
                unsent = Some(*back);
                Ended::Failed(retry::Outcome::ConnectFailed)
            }
            Ok(Err(Failed::Reset(error))) => {
                warn!(authority = %authority, upstream = %place.addr, attempt = open.record.attempts, error = %error, "upstream reset the request before its response");
                open.attempt_failed(ResponseFlag::UpstreamRemoteReset);
                Ended::Failed(retry::Outcome::Reset)
            }
            Err(_) => {
                warn!(authority = %authority, upstream = %place.addr, attempt = open.record.attempts, timeout_s = attempt_timeout.as_secs_f32(), "upstream did not answer in time");
                open.attempt_failed(ResponseFlag::UpstreamRequestTimeout);
                Ended::Failed(retry::Outcome::TimedOut)
            }
        };
        let outcome = ended.outcome();
        if let Some(d) = &destination {
            d.observe(
                &wp.telemetry,
                &endpoints,
                place.addr,
                outcome.into(),
                Instant::now(),
            );
        }
        let done = retry::Done {
            attempts: open.record.attempts,
            untried: endpoints.iter().any(|e| !tried.contains(e)),
            left: deadline.map(|d| d.saturating_duration_since(tokio::time::Instant::now())),
        };
        let mut decision = retry::next(policy.as_ref(), outcome, done, rng.u32(..));
        // A request that reached the backend is sent again only within
        // its Service's budget; an endpoint never reached saw nothing.
        if let (retry::Next::Retry { .. }, Some(service)) = (decision, plan.budget.as_deref())
            && outcome != retry::Outcome::ConnectFailed
            && wp.retry_budgets.withdraw(service, Instant::now()) == Withdrawal::Overdrawn
        {
            debug!(authority = %authority, service = %service, attempt = open.record.attempts, after = outcome.label(), "retry budget spent: not retried (URX)");
            wp.telemetry.retry_budget_exhausted(service);
            decision = retry::Next::Exhausted;
        }
        // And only while the Service's retries in flight stay within its
        // DestinationRule's maxRetries.
        if let (retry::Next::Retry { .. }, Some(d)) = (decision, &destination) {
            match d.retry(&wp.telemetry) {
                Some(held) => _retry_held = Some(held),
                None => decision = retry::Next::Exhausted,
            }
        }
        match decision {
            retry::Next::Retry { after } => {
                // The same request when it was not sent, else a new copy;
                // a body that was not kept has no policy, so no copy is
                // asked of it.
                if let Some(next) = unsent.or_else(|| copies.as_ref().map(Copies::request)) {
                    debug!(authority = %authority, upstream = %place.addr, attempt = open.record.attempts, after = outcome.label(), backoff_ms = after.as_millis() as u64, "retrying the request");
                    if let (Ended::Answered(response), Some(a)) =
                        (&ended, open.trace.attempts.last_mut())
                    {
                        a.retried = Some((response.status(), SystemTime::now()));
                    }
                    wp.telemetry.retried(outcome);
                    drop((ended, place));
                    if !after.is_zero() {
                        tokio::time::sleep(after).await;
                    }
                    request = next;
                    continue;
                }
            }
            retry::Next::Exhausted => {
                open.record
                    .response_flags
                    .insert(ResponseFlag::UpstreamRetryLimitExceeded);
            }
            retry::Next::Deliver => {}
        }
        match ended {
            Ended::Answered(response) => break (response, place),
            Ended::Failed(outcome) => {
                let (status, flag) = match outcome {
                    retry::Outcome::TimedOut => (
                        StatusCode::GATEWAY_TIMEOUT,
                        ResponseFlag::UpstreamRequestTimeout,
                    ),
                    retry::Outcome::Reset => (
                        // Envoy's answer to a reset before the response
                        // head: 503 UR ("upstream connect error or
                        // disconnect/reset before headers").
                        StatusCode::SERVICE_UNAVAILABLE,
                        ResponseFlag::UpstreamRemoteReset,
                    ),
                    _ => (
                        StatusCode::SERVICE_UNAVAILABLE,
                        ResponseFlag::UpstreamConnectionFailure,
                    ),
                };
                debug!(authority = %authority, attempts = open.record.attempts, status = status.as_u16(), flag = flag.as_str(), "no response from upstream: answered here");
                open.record.request_bytes = request_bytes.load(Ordering::Relaxed);
                return open.local(status, flag);
            }
        }
    };
    for m in &plan.response_headers {
        mesh_route::headers::apply(m, response.headers_mut());
    }
    place.hold(pooled);
    respond(open, request_bytes, response, place, downstream_upgrade)
}

/// Where a request goes, after its route (if any) had its say.
struct Plan {
    endpoints: Vec<SocketAddr>,
    /// Host / `:authority` sent upstream.
    authority: String,
    response_headers: Vec<mesh_route::compile::HeaderModifier>,
    /// For each attempt's response head.
    attempt_timeout: Duration,
    /// For the whole request, attempts included.
    request_timeout: Option<Duration>,
    /// The rule's retry, while the request may still be retried.
    retry: Option<mesh_route::compile::Retry>,
    /// The destination Service (`<namespace>/<name>`) whose retry budget
    /// the rule's retries draw on; the request made its deposit.
    budget: Option<String>,
    /// Mirrors the request is copied to (the roll made, the Service
    /// resolved).
    mirrors: Vec<mirror::Target>,
    /// How long a fault injection holds the request before it is sent
    /// (before the route's timeouts start, as Envoy's fault filter does).
    delay: Option<Duration>,
    /// The backend Service port's DestinationRule, when one applies.
    destination: Option<crate::destination::Applied>,
}

/// The head and the kept body each attempt of a request gets a copy of.
struct Copies {
    head: http::request::Parts,
    body: body::Kept,
}

impl Copies {
    fn request(&self) -> Request<CountedBody> {
        Request::from_parts(
            self.head.clone(),
            CountedBody::copy(RequestBody::Replayed(self.body.copy())),
        )
    }
}

/// How one attempt ended.
enum Ended {
    Answered(Response<Incoming>),
    Failed(retry::Outcome),
}

impl Ended {
    fn outcome(&self) -> retry::Outcome {
        match self {
            Ended::Answered(r) => retry::Outcome::Status(r.status()),
            Ended::Failed(o) => *o,
        }
    }
}

/// Routes the request: applies what its rule changes to `parts`, and
/// returns where it goes, or the response made here (no rule matches, a
/// redirect, a rule that cannot send anywhere, no endpoint).
fn route(
    wp: &Waypoint,
    view: &MeshView,
    ctx: &StreamContext,
    mut open: Open,
    parts: &mut http::request::Parts,
    authority: &str,
    rng: &mut fastrand::Rng,
) -> Result<(Open, Plan), Box<Response<ResponseBody>>> {
    let table = routing::table(view, &ctx.target, Some(&ctx.client_namespace));
    let decision = {
        let head = routing::Head {
            method: &parts.method,
            path: parts.uri.path(),
            query: parts.uri.query(),
            headers: &parts.headers,
            host: mesh_route::uri::host_of(authority),
        };
        routing::decide(view, table, &head, ctx.dst.port(), rng.u32(..))
    };
    let mut plan = Plan {
        endpoints: Vec::new(),
        authority: authority.to_owned(),
        response_headers: Vec::new(),
        attempt_timeout: wp.limits.response_timeout,
        request_timeout: None,
        retry: None,
        budget: None,
        mirrors: Vec::new(),
        delay: None,
        destination: None,
    };
    let (rule, action) = match decision {
        Decision::Default => {
            plan.endpoints = ctx.target.endpoints(view, &wp.own);
            if let target::Target::Service { route, port } = &ctx.target {
                plan.destination = wp.destinations.applied(
                    view,
                    &route.service.namespace,
                    &route.service.name,
                    port.port,
                );
            }
            return Ok((open, plan));
        }
        Decision::NoMatch => {
            open.record.route = None;
            if wp.should_log() {
                warn!(authority = %authority, destination = %ctx.target.describe(), path = %parts.uri.path(), "no route rule matches the request (404 NR)");
            }
            return Err(Box::new(
                open.local(StatusCode::NOT_FOUND, ResponseFlag::NoRouteFound),
            ));
        }
        Decision::Routed { rule, action } => (rule, action),
    };
    open.record.route = Some(rule.route.clone());
    open.record.route_rule = Some(rule.rule.clone());
    let forward = match action {
        Action::Redirect(r) => return Err(Box::new(open.redirect(r))),
        Action::Unroutable(why) => {
            if wp.should_log() {
                warn!(authority = %authority, route = %rule.route, rule = %rule.rule, reason = %why, "the matched rule cannot send the request anywhere (500 NC)");
            }
            return Err(Box::new(
                open.local(why.status(), ResponseFlag::NoClusterFound),
            ));
        }
        Action::Forward(f) => f,
    };
    for m in &forward.request_headers {
        mesh_route::headers::apply(m, &mut parts.headers);
    }
    if let Some(path) = &forward.path {
        let with_query = match parts.uri.query() {
            Some(q) => format!("{path}?{q}"),
            None => path.clone(),
        };
        match with_query.parse() {
            Ok(uri) => parts.uri = uri,
            Err(e) => {
                warn!(authority = %authority, route = %rule.route, path = %with_query, error = %e, "the rewritten path is not a valid URI (500)");
                return Err(Box::new(open.local(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    ResponseFlag::NoClusterFound,
                )));
            }
        }
    }
    if let Some(host) = &forward.authority {
        // A rewritten hostname replaces Host too (HTTP/1.1 keeps Host).
        parts.headers.remove(HOST);
        plan.authority = host.clone();
    }
    open.record.service = Some(record::service_name(
        &forward.backend.namespace,
        &forward.backend.name,
    ));
    let forward = *forward;
    let injection = mesh_route::fault::inject(forward.faults.iter().map(|f| f.as_ref()), || {
        rng.u32(..mesh_route::fault::ROLL_RANGE)
    });
    match injection {
        Injection::None => {}
        Injection::Abort(status) => {
            debug!(authority = %authority, route = %rule.route, rule = %rule.rule, abort = ?status, "fault injection: request aborted (FI)");
            return Err(Box::new(open.fault_abort(status)));
        }
        Injection::Delay(d) => plan.delay = Some(d),
    }
    plan.endpoints = target::usable(view, &wp.own, forward.endpoints);
    plan.destination = wp.destinations.applied(
        view,
        &forward.backend.namespace,
        &forward.backend.name,
        forward.backend.port,
    );
    plan.response_headers = forward.response_headers;
    plan.retry = forward.retry;
    if plan.retry.is_some() {
        let service = format!("{}/{}", forward.backend.namespace, forward.backend.name);
        wp.retry_budgets.deposit(&service, Instant::now());
        plan.budget = Some(service);
    }
    for m in &forward.mirrors {
        if !mirror::chosen(m.numerator, m.denominator, rng.u32(..)) {
            continue;
        }
        let service = format!("{}/{}", m.backend.namespace, m.backend.name);
        let endpoints = match routing::resolve(view, &m.backend) {
            Ok(endpoints) => target::usable(view, &wp.own, endpoints),
            Err(why) => {
                debug!(authority = %authority, route = %rule.route, mirror = %service, reason = %why, "the rule's mirror cannot be used: no copy sent");
                wp.telemetry.mirrored(mirror::Outcome::Unresolved);
                continue;
            }
        };
        if endpoints.is_empty() {
            debug!(authority = %authority, route = %rule.route, mirror = %service, "the rule's mirror has no ready endpoint: no copy sent");
            wp.telemetry.mirrored(mirror::Outcome::Unresolved);
            continue;
        }
        plan.mirrors.push(mirror::Target { service, endpoints });
    }
    match forward.timeouts.backend_request {
        Some(Timeout::After(d)) => plan.attempt_timeout = d,
        Some(Timeout::Disabled) => plan.attempt_timeout = NO_TIMEOUT,
        None => {}
    }
    match forward.timeouts.request {
        Some(Timeout::After(d)) => plan.request_timeout = Some(d),
        // "0s" turns the route's timeout off, and the waypoint's own
        // response timeout with it.
        Some(Timeout::Disabled) if forward.timeouts.backend_request.is_none() => {
            plan.attempt_timeout = NO_TIMEOUT
        }
        _ => {}
    }
    Ok((open, plan))
}

/// A timeout that does not fire: a route turned it off.
const NO_TIMEOUT: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

fn respond(
    mut open: Open,
    request_bytes: Arc<AtomicU64>,
    mut response: Response<Incoming>,
    place: InFlight,
    downstream_upgrade: Option<hyper::upgrade::OnUpgrade>,
) -> Response<ResponseBody> {
    open.record.response_code = Some(response.status());
    open.record.grpc_status = grpc_status(response.headers());
    let switching = response.status() == StatusCode::SWITCHING_PROTOCOLS;
    if let (true, Some(downstream)) = (switching, downstream_upgrade) {
        let upstream = hyper::upgrade::on(&mut response);
        headers::strip_hop_by_hop(response.headers_mut(), true);
        tokio::spawn(tunnel(open, downstream, upstream, place));
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
            open,
            request_bytes,
            _place: place,
        }),
        bytes: 0,
    };
    Response::from_parts(parts, body.boxed_unsync())
}

fn grpc_status(headers: &http::HeaderMap) -> Option<GrpcStatus> {
    headers
        .get("grpc-status")
        .and_then(|v| GrpcStatus::from_header(v.as_bytes()))
}

/// An upgraded connection (WebSocket): bytes both ways until both end.
async fn tunnel(
    mut open: Open,
    downstream: hyper::upgrade::OnUpgrade,
    upstream: hyper::upgrade::OnUpgrade,
    _place: InFlight,
) {
    match tokio::try_join!(downstream, upstream) {
        Ok((down, up)) => {
            let (mut down, mut up) = (TokioIo::new(down), TokioIo::new(up));
            let idle = open.wp.limits.stream_idle_timeout;
            let relayed = idle::relay(&mut down, &mut up, idle).await;
            open.record.request_bytes = relayed.from_a;
            open.record.response_bytes = relayed.from_b;
            match relayed.end {
                End::Done => {}
                End::Idle => {
                    debug!(authority = %open.record.authority, idle_s = idle.as_secs_f32(), "upgraded connection idle: closed (SI)");
                    open.record
                        .response_flags
                        .insert(ResponseFlag::StreamIdleTimeout);
                }
                End::Failed(e) => {
                    debug!(authority = %open.record.authority, error = %e, "upgraded connection broke");
                    open.record
                        .response_flags
                        .insert(ResponseFlag::UpstreamRemoteReset);
                }
            }
        }
        Err(e) => {
            warn!(authority = %open.record.authority, error = %e, "upgrade did not complete");
            open.record
                .response_flags
                .insert(ResponseFlag::UpstreamRemoteReset);
        }
    }
    open.finish();
}

/// What is written when a proxied response ends.
struct Finish {
    open: Open,
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
        if let Some(Finish {
            mut open,
            request_bytes,
            _place,
        }) = self.finish.take()
        {
            if let Some(flag) = flag {
                open.record.response_flags.insert(flag);
            }
            open.record.response_bytes = self.bytes;
            open.record.request_bytes = request_bytes.load(Ordering::Relaxed);
            open.finish();
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
                    f.open.record.grpc_status = Some(status);
                }
                if self.inner.is_end_stream() {
                    self.finish(None);
                }
            }
            // Mid-response: the client already has the status; the record
            // keeps it, flagged UR, and the client's stream is reset.
            Poll::Ready(Some(Err(_))) => self.finish(Some(ResponseFlag::UpstreamRemoteReset)),
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
        self.finish(unfinished.then_some(ResponseFlag::DownstreamConnectionTermination));
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
