//! The destination pod's HBONE listener (15008): mutual TLS with a client
//! certificate from the mesh's roots, HTTP/2, and per stream a CONNECT to
//! an address of this pod, authorized against the verified peer identity,
//! then delivered to the app from 127.0.0.6 inside the pod's netns.
use std::{
    future::poll_fn,
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicU32, Ordering},
    },
    time::Duration,
};

use bytes::Bytes;
use h2::{Reason, RecvStream, server::SendResponse};
use http::{Request, Response, StatusCode};
use tokio::{
    net::{TcpListener, TcpStream},
    sync::{Notify, OwnedSemaphorePermit, Semaphore},
};
use tokio_rustls::{TlsAcceptor, server::TlsStream};
use tracing::{Instrument, debug, debug_span, warn};

use super::{
    CONNECTION_WINDOW, MAX_CONCURRENT_STREAMS, MAX_FRAME, MAX_HEADER_LIST, STREAM_WINDOW,
    request::{ConnectRequest, Refusal},
    stream,
};
use crate::{
    identity::Identity,
    pod::PodContext,
    proxy::{
        access_log::{Connection, Direction, Security},
        admit::{Arrival, Rules, admit},
        connector::agent_connect,
        inbound::{self, delivery_source},
        listeners::{self, Accepted, Listener},
        own_ports::InboundPath,
        relay,
        state::{Mtls, ProxyState},
    },
    telemetry::refusals::RefusalMetrics,
    tls,
};

pub async fn serve(listener: TcpListener, pod: Arc<PodContext>, state: Arc<ProxyState>) {
    loop {
        let accepted = listeners::accept(&listener, Listener::Hbone, &pod, &state).await;
        let pod = pod.clone();
        let state = state.clone();
        // Debug level, as the outbound span (see there): not entered on
        // every poll unless asked for.
        let span = debug_span!("hbone", pod = %pod.key, src = %accepted.peer);
        tokio::spawn(connection(accepted, pod, state).instrument(span));
    }
}

/// A peer that resets this many streams before their tunnel is up, once at
/// least `PREMATURE_RESET_MIN_STREAMS` have been opened, is sent GOAWAY:
/// Envoy's answer to CVE-2023-44487 ("rapid reset"), which closes a
/// connection when more than half of its streams end in premature resets.
const PREMATURE_RESET_MIN_STREAMS: u32 = 100;

/// A connection with no open stream for this long is closed with GOAWAY.
/// Pooling peers close theirs after 60 s idle (ours) or longer; this bounds
/// what a peer that opens connections and never uses them can hold.
const IDLE_CLOSE: Duration = Duration::from_secs(300);

/// One HBONE connection's stream accounting, shared with its stream tasks.
struct Streams {
    /// Held from accept until the stream's tunnel is up or refused, so a
    /// peer that resets streams cannot make more dials than this at once
    /// (h2's own stream limit frees a slot as soon as the peer resets).
    dials: Arc<Semaphore>,
    opened: AtomicU32,
    premature_resets: AtomicU32,
    /// Open streams, for the idle close.
    active: AtomicU32,
    too_many_resets: Notify,
}

impl Streams {
    fn new() -> Arc<Self> {
        Arc::new(Self {
            dials: Arc::new(Semaphore::new(MAX_CONCURRENT_STREAMS as usize)),
            opened: AtomicU32::new(0),
            premature_resets: AtomicU32::new(0),
            active: AtomicU32::new(0),
            too_many_resets: Notify::new(),
        })
    }

    fn premature_reset(&self) {
        let resets = self.premature_resets.fetch_add(1, Ordering::Relaxed) + 1;
        if exceeds_reset_budget(self.opened.load(Ordering::Relaxed), resets) {
            self.too_many_resets.notify_one();
        }
    }
}

/// Envoy's rule: past a minimum number of streams, more than half of them
/// reset by the peer before they were answered.
fn exceeds_reset_budget(opened: u32, premature_resets: u32) -> bool {
    opened >= PREMATURE_RESET_MIN_STREAMS && u64::from(premature_resets) * 2 > u64::from(opened)
}

/// Open stream count held by a stream task.
struct ActiveStream(Arc<Streams>);

impl Drop for ActiveStream {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::Relaxed);
    }
}

type Server = h2::server::Connection<TlsStream<TcpStream>, Bytes>;

/// What the peer proved and asked for within the handshake deadline.
struct Established {
    source: Identity,
    conn: Server,
    first: Option<(Request<RecvStream>, SendResponse<Bytes>)>,
}

/// TLS, the peer's identity, the HTTP/2 preface and the first request: the
/// part a peer that has proved nothing yet must finish within the deadline.
async fn establish(
    tcp: TcpStream,
    peer: SocketAddr,
    pod: &PodContext,
    mtls: &Mtls,
    config: Arc<rustls::ServerConfig>,
    refusals: &RefusalMetrics,
) -> Option<Established> {
    // Just after enrollment the pod's first certificate may still be on its
    // way; a peer that arrives then waits for it rather than failing.
    if let Some(mut cert) = pod.cert.clone() {
        let ready = tokio::time::timeout(super::CERT_WAIT, cert.wait_for(|c| c.is_some())).await;
        if !matches!(ready, Ok(Ok(_))) {
            warn!(pod = %pod.key, src = %peer, "HBONE connection refused: the pod has no certificate yet; is the CA reachable?");
            relay::reset(tcp);
            return None;
        }
    }
    let tls = match TlsAcceptor::from(config).accept(tcp).await {
        Ok(t) => t,
        Err(e) => {
            warn!(pod = %pod.key, src = %peer, error = %e, "HBONE handshake refused");
            return None;
        }
    };
    let source = match tls::peer_identity(
        tls.get_ref().1.peer_certificates(),
        &mtls.bundle.trust_domain,
    ) {
        Ok(id) => id,
        Err(e) => {
            warn!(pod = %pod.key, src = %peer, error = %e, "HBONE peer refused");
            return None;
        }
    };
    let mut conn = match h2::server::Builder::new()
        .initial_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .max_frame_size(MAX_FRAME)
        .max_concurrent_streams(MAX_CONCURRENT_STREAMS)
        .max_header_list_size(MAX_HEADER_LIST)
        .handshake::<_, Bytes>(tls)
        .await
    {
        Ok(c) => c,
        Err(e) => {
            warn!(pod = %pod.key, src = %peer, peer_identity = %source, error = %e, "HBONE HTTP/2 handshake failed");
            return None;
        }
    };
    let first = match conn.accept().await {
        Some(Ok(r)) => Some(r),
        Some(Err(e)) => {
            if e.reason() == Some(Reason::ENHANCE_YOUR_CALM) {
                // h2's guard against streams reset before they are taken.
                refusals.refused(Listener::Hbone.label(), "resets");
            }
            warn!(pod = %pod.key, src = %peer, peer_identity = %source, error = %e, "HBONE connection failed before its first request");
            return None;
        }
        None => None,
    };
    Some(Established {
        source,
        conn,
        first,
    })
}

async fn connection(accepted: Accepted, pod: Arc<PodContext>, state: Arc<ProxyState>) {
    let Accepted {
        stream: tcp,
        peer,
        place: _place,
    } = accepted;
    let (Some(config), Some(mtls)) = (pod.hbone_server.clone(), state.mtls.as_ref()) else {
        warn!(pod = %pod.key, src = %peer, "HBONE connection refused: this agent has no CA configured");
        relay::reset(tcp);
        return;
    };
    let _ = tcp.set_nodelay(true);
    let deadline = state.limits.handshake_timeout;
    let established = tokio::time::timeout(
        deadline,
        establish(tcp, peer, &pod, mtls, config, &state.telemetry.refusals),
    )
    .await;
    let Established {
        source,
        mut conn,
        first,
    } = match established {
        Ok(Some(e)) => e,
        Ok(None) => return,
        Err(_) => {
            state
                .telemetry
                .refusals
                .refused(Listener::Hbone.label(), "handshake_timeout");
            // A slowloris sends thousands at once: one line a second, the
            // metric counts them all.
            if state.admission.should_log() {
                warn!(pod = %pod.key, src = %peer, timeout_s = deadline.as_secs_f32(), "HBONE connection closed: TLS, HTTP/2 preface and CONNECT not done within AgentConfig.limits.handshakeTimeout");
            }
            return;
        }
    };
    let streams = Streams::new();
    let stream = |(request, respond): (Request<RecvStream>, SendResponse<Bytes>)| {
        streams.opened.fetch_add(1, Ordering::Relaxed);
        streams.active.fetch_add(1, Ordering::Relaxed);
        let active = ActiveStream(streams.clone());
        let Ok(dial) = streams.dials.clone().try_acquire_owned() else {
            // Only reachable when streams the peer reset still hold their
            // dials: h2 already caps open streams at the same number.
            state
                .telemetry
                .refusals
                .refused(Listener::Hbone.label(), "stream_limit");
            let mut respond = respond;
            respond.send_reset(Reason::REFUSED_STREAM);
            return;
        };
        tokio::spawn(stream_request(
            request,
            respond,
            Context {
                source: source.clone(),
                peer,
                pod: pod.clone(),
                state: state.clone(),
                streams: streams.clone(),
            },
            dial,
            active,
        ));
    };
    if let Some(first) = first {
        stream(first);
    }
    let mut draining = state.draining();
    let mut shutting_down = *draining.borrow();
    if shutting_down {
        conn.graceful_shutdown();
    }
    let mut idle_check = tokio::time::interval(IDLE_CLOSE / 4);
    let mut idle_since: Option<tokio::time::Instant> = None;
    loop {
        tokio::select! {
            next = conn.accept() => match next {
                Some(Ok(r)) => {
                    idle_since = None;
                    stream(r);
                }
                Some(Err(e)) => {
                    if e.reason() == Some(Reason::ENHANCE_YOUR_CALM) {
                        // h2's own guard (streams reset before they were
                        // accepted) got there first: the same attack.
                        state.telemetry.refusals.refused(Listener::Hbone.label(), "resets");
                    }
                    warn!(pod = %pod.key, src = %peer, peer_identity = %source, error = %e, "HBONE connection failed");
                    break;
                }
                None => break,
            },
            () = streams.too_many_resets.notified(), if !shutting_down => {
                state.telemetry.refusals.refused(Listener::Hbone.label(), "resets");
                warn!(
                    pod = %pod.key, src = %peer, peer_identity = %source,
                    opened = streams.opened.load(Ordering::Relaxed),
                    premature_resets = streams.premature_resets.load(Ordering::Relaxed),
                    "HBONE peer resets most streams before they are answered; GOAWAY (ENHANCE_YOUR_CALM)"
                );
                // Keeps being polled below until the GOAWAY is flushed.
                conn.abrupt_shutdown(Reason::ENHANCE_YOUR_CALM);
                shutting_down = true;
            }
            changed = draining.changed(), if !shutting_down => {
                if changed.is_ok() && *draining.borrow() {
                    conn.graceful_shutdown();
                    shutting_down = true;
                }
            }
            _ = idle_check.tick(), if !shutting_down => {
                let now = tokio::time::Instant::now();
                if streams.active.load(Ordering::Relaxed) > 0 {
                    idle_since = None;
                } else if now.duration_since(*idle_since.get_or_insert(now)) >= IDLE_CLOSE {
                    debug!(pod = %pod.key, src = %peer, "idle HBONE connection closed");
                    conn.graceful_shutdown();
                    shutting_down = true;
                }
            }
        }
    }
}

/// What a stream task knows of its connection.
struct Context {
    source: Identity,
    peer: SocketAddr,
    pod: Arc<PodContext>,
    state: Arc<ProxyState>,
    streams: Arc<Streams>,
}

fn refuse(respond: &mut SendResponse<Bytes>, status: StatusCode) {
    if let Ok(r) = Response::builder().status(status).body(()) {
        let _ = respond.send_response(r, true);
    }
}

async fn stream_request(
    request: Request<RecvStream>,
    mut respond: SendResponse<Bytes>,
    cx: Context,
    dial: OwnedSemaphorePermit,
    _active: ActiveStream,
) {
    let Context {
        source,
        peer,
        pod,
        state,
        streams,
    } = cx;
    let head = ConnectRequest::parse(request.method(), request.uri(), request.headers());
    let ConnectRequest { dst, trace_id } = match head {
        Ok(r) => r,
        Err(refusal) => {
            match &refusal {
                Refusal::NotConnect { method } => {
                    warn!(pod = %pod.key, src = %peer, peer_identity = %source, method = %method, "HBONE request refused: {refusal}");
                }
                Refusal::BadAuthority { authority } => {
                    warn!(pod = %pod.key, src = %peer, peer_identity = %source, authority = ?authority, "HBONE CONNECT refused: {refusal}");
                }
            }
            refuse(&mut respond, refusal.status());
            return;
        }
    };
    let mut conn = Connection::new(
        Direction::Inbound,
        &pod,
        &state,
        peer,
        dst,
        Security::MutualTls,
    );
    conn.source_identity = Some(source.to_string());
    conn.destination_identity = Some(pod.identity.to_string());
    conn.trace_id = trace_id;
    let view = state.view();
    let arrival = Arrival {
        path: InboundPath::Hbone,
        src: peer,
        dst,
        source: Some(&source),
    };
    let rules = Rules {
        policies: &view.policies,
        own_ports: &state.own_ports,
        mtls: true,
    };
    let outcome = admit(&arrival, &pod, &rules);
    // The dial below goes to `dst` from `delivery_source(dst)`, which is
    // what a delivery says.
    if let Err(why) = inbound::admitted(&mut conn, &state, Listener::Hbone, &pod, outcome) {
        refuse(&mut respond, why.status());
        return;
    }
    let delivery = agent_connect(
        &pod,
        Some(delivery_source(dst)),
        dst,
        state.limits.connect_timeout,
    );
    // A peer that resets the stream while the app is being dialled gets
    // nothing more: the dial is dropped, and the reset counts against the
    // connection's budget.
    let app = tokio::select! {
        app = delivery => app,
        reset = poll_fn(|cx| respond.poll_reset(cx)) => {
            streams.premature_reset();
            let why = match reset {
                Ok(reason) => format!("the peer reset the stream ({reason:?}) before it was answered"),
                Err(e) => format!("the stream failed before it was answered: {e}"),
            };
            conn.refused(&why);
            return;
        }
    };
    let app = match app {
        Ok(s) => s,
        Err(e) => {
            conn.connect_failed(&e);
            refuse(&mut respond, StatusCode::SERVICE_UNAVAILABLE);
            return;
        }
    };
    let send = match respond.send_response(Response::new(()), false) {
        Ok(s) => s,
        Err(e) => {
            streams.premature_reset();
            conn.connect_failed(&std::io::Error::other(e));
            relay::reset(app);
            return;
        }
    };
    drop(dial);
    conn.opened();
    // Downstream is the tunnel, upstream the app: bytes "sent" by the pod
    // are those from the app.
    let Some(mtls) = state.mtls.as_ref() else {
        // Unreachable: this listener serves only with a CA (see `connection`).
        relay::reset(app);
        return;
    };
    let result = stream::relay(app, send, request.into_body(), 0, &mtls.buffers).await;
    conn.closed(&result.map(|t| relay::Transferred {
        downstream_to_upstream: t.upstream_to_downstream,
        upstream_to_downstream: t.downstream_to_upstream,
    }));
}

#[cfg(test)]
mod tests {
    use super::exceeds_reset_budget;

    #[test]
    fn a_connection_is_cut_off_only_when_most_of_many_streams_are_reset_early() {
        assert!(!exceeds_reset_budget(10, 10), "too few streams to judge");
        assert!(!exceeds_reset_budget(100, 50), "half is not most");
        assert!(exceeds_reset_budget(100, 51));
        assert!(
            !exceeds_reset_budget(10_000, 40),
            "a few resets among many streams are normal"
        );
        assert!(exceeds_reset_budget(u32::MAX, u32::MAX));
    }
}
