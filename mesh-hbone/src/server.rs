//! The HBONE server side of one accepted connection: mutual TLS with a
//! client certificate from the mesh's roots, HTTP/2 with bounded streams
//! and headers, and each request read into a [`ConnectRequest`] and handed
//! to the caller's [`Handler`] with the peer's verified identity. What is
//! delivered where, and whether it is allowed, is the handler's business:
//! this module knows no pods, policies or sockets beyond the one it serves.
use std::{
    future::{Future, poll_fn},
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicU32, Ordering},
    },
    time::Duration,
};

use bytes::Bytes;
use h2::{Reason, RecvStream, SendStream, server::SendResponse};
use http::{Request, Response, StatusCode};
use mesh_identity::{
    Identity,
    tls::{self, CertWatch},
};
use tokio::{
    net::TcpStream,
    sync::{Notify, OwnedSemaphorePermit, Semaphore, watch},
};
use tokio_rustls::{TlsAcceptor, server::TlsStream};
use tracing::{debug, warn};

use super::{
    CERT_WAIT, CONNECTION_WINDOW, MAX_CONCURRENT_STREAMS, MAX_FRAME, MAX_HEADER_LIST,
    STREAM_WINDOW, relay,
    request::{ConnectRequest, Refusal},
};

/// A peer that resets this many streams before their tunnel is up, once at
/// least `PREMATURE_RESET_MIN_STREAMS` have been opened, is sent GOAWAY:
/// Envoy's answer to CVE-2023-44487 ("rapid reset"), which closes a
/// connection when more than half of its streams end in premature resets.
const PREMATURE_RESET_MIN_STREAMS: u32 = 100;

/// A connection with no open stream for this long is closed with GOAWAY.
/// Pooling peers close theirs after 60 s idle (ours) or longer; this bounds
/// what a peer that opens connections and never uses them can hold.
const IDLE_CLOSE: Duration = Duration::from_secs(300);

/// Why the server gave up on a connection or a stream, for the caller's
/// refusal counter (`mesh_proxy_refused_connections_total{reason}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// TLS, the HTTP/2 preface and the first request took longer than the
    /// handshake deadline.
    HandshakeTimeout,
    /// The peer resets most of its streams before they are answered.
    Resets,
    /// No dial slot left for a new stream.
    StreamLimit,
}

impl Refused {
    pub fn label(self) -> &'static str {
        match self {
            Self::HandshakeTimeout => "handshake_timeout",
            Self::Resets => "resets",
            Self::StreamLimit => "stream_limit",
        }
    }
}

/// What the server answers requests with: the caller's part.
pub trait Handler: Send + Sync + 'static {
    /// A CONNECT from a verified peer. Runs in its own task; the stream
    /// must be answered (`accept` or `refuse`) or dropped (reset).
    fn connect(self: Arc<Self>, stream: Incoming) -> impl Future<Output = ()> + Send;
    /// Counts a connection or stream the server refused on its own.
    fn refused(&self, why: Refused);
    /// Whether a line may be logged now for a refusal that comes in floods
    /// (a slowloris opens thousands of connections at once).
    fn should_log(&self) -> bool;
}

/// One listener's TLS and deadlines.
pub struct Acceptor {
    /// Names the listener in logs (the node agent: the pod's
    /// `<namespace>/<name>`).
    pub name: String,
    pub tls: Arc<rustls::ServerConfig>,
    /// The served workload's certificate: a peer that arrives before the
    /// first one is issued waits for it (up to 5 s) rather than failing.
    pub cert: Option<CertWatch>,
    /// Peer certificates must carry a SPIFFE id of this trust domain.
    pub trust_domain: String,
    /// TLS, the HTTP/2 preface and the first request must be done within
    /// this (`AgentConfig.limits.handshakeTimeout`).
    pub handshake_timeout: Duration,
}

/// One connection's stream accounting, shared with its stream tasks.
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

/// A CONNECT stream from a verified peer, not yet answered.
pub struct Incoming {
    /// The peer's address (the source node's, for a tunnel between nodes).
    pub peer: SocketAddr,
    /// The identity the peer's certificate proved.
    pub source: Identity,
    /// What the request asked for, and the client it says it carries
    /// (`request.forwarded_for`: the peer's word, to be checked against
    /// `source` before it names anyone).
    pub request: ConnectRequest,
    respond: SendResponse<Bytes>,
    body: RecvStream,
    streams: Arc<Streams>,
    dial: OwnedSemaphorePermit,
    _active: ActiveStream,
}

impl Incoming {
    /// Answers with an error status and ends the stream.
    pub fn refuse(mut self, status: StatusCode) {
        refuse(&mut self.respond, status);
    }

    /// Runs `work` (the dial to the destination) unless the peer resets the
    /// stream first; then the work is dropped, the reset counts against the
    /// connection's budget, and the error says what happened.
    pub async fn unless_reset<F: Future>(&mut self, work: F) -> Result<F::Output, String> {
        tokio::select! {
            done = work => Ok(done),
            reset = poll_fn(|cx| self.respond.poll_reset(cx)) => {
                self.streams.premature_reset();
                Err(match reset {
                    Ok(reason) => format!("the peer reset the stream ({reason:?}) before it was answered"),
                    Err(e) => format!("the stream failed before it was answered: {e}"),
                })
            }
        }
    }

    /// Answers 200: the tunnel is up. Returns its two halves (to the peer,
    /// from the peer), and frees the stream's dial slot.
    pub fn accept(mut self) -> Result<(SendStream<Bytes>, RecvStream), h2::Error> {
        match self.respond.send_response(Response::new(()), false) {
            Ok(send) => {
                drop(self.dial);
                Ok((send, self.body))
            }
            Err(e) => {
                self.streams.premature_reset();
                Err(e)
            }
        }
    }
}

fn refuse(respond: &mut SendResponse<Bytes>, status: StatusCode) {
    if let Ok(r) = Response::builder().status(status).body(()) {
        let _ = respond.send_response(r, true);
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
    acceptor: &Acceptor,
    handler: &impl Handler,
) -> Option<Established> {
    let name = &acceptor.name;
    if let Some(mut cert) = acceptor.cert.clone() {
        let ready = tokio::time::timeout(CERT_WAIT, cert.wait_for(|c| c.is_some())).await;
        if !matches!(ready, Ok(Ok(_))) {
            warn!(pod = %name, src = %peer, "HBONE connection refused: the pod has no certificate yet; is the CA reachable?");
            relay::reset(tcp);
            return None;
        }
    }
    let tls = match TlsAcceptor::from(acceptor.tls.clone()).accept(tcp).await {
        Ok(t) => t,
        Err(e) => {
            warn!(pod = %name, src = %peer, error = %e, "HBONE handshake refused");
            return None;
        }
    };
    let source =
        match tls::peer_identity(tls.get_ref().1.peer_certificates(), &acceptor.trust_domain) {
            Ok(id) => id,
            Err(e) => {
                warn!(pod = %name, src = %peer, error = %e, "HBONE peer refused");
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
            warn!(pod = %name, src = %peer, peer_identity = %source, error = %e, "HBONE HTTP/2 handshake failed");
            return None;
        }
    };
    let first = match conn.accept().await {
        Some(Ok(r)) => Some(r),
        Some(Err(e)) => {
            if e.reason() == Some(Reason::ENHANCE_YOUR_CALM) {
                // h2's guard against streams reset before they are taken.
                handler.refused(Refused::Resets);
            }
            warn!(pod = %name, src = %peer, peer_identity = %source, error = %e, "HBONE connection failed before its first request");
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

/// Serves one accepted connection until it ends: every CONNECT goes to
/// `handler`. When `draining` turns true the connection is sent GOAWAY
/// and its open streams finish.
pub async fn serve_connection<H: Handler>(
    tcp: TcpStream,
    peer: SocketAddr,
    acceptor: Arc<Acceptor>,
    handler: Arc<H>,
    mut draining: watch::Receiver<bool>,
) {
    let _ = tcp.set_nodelay(true);
    let name = acceptor.name.as_str();
    let deadline = acceptor.handshake_timeout;
    let established =
        tokio::time::timeout(deadline, establish(tcp, peer, &acceptor, &*handler)).await;
    let Established {
        source,
        mut conn,
        first,
    } = match established {
        Ok(Some(e)) => e,
        Ok(None) => return,
        Err(_) => {
            handler.refused(Refused::HandshakeTimeout);
            // A slowloris sends thousands at once: one line a second, the
            // metric counts them all.
            if handler.should_log() {
                warn!(pod = %name, src = %peer, timeout_s = deadline.as_secs_f32(), "HBONE connection closed: TLS, HTTP/2 preface and CONNECT not done within AgentConfig.limits.handshakeTimeout");
            }
            return;
        }
    };
    let streams = Streams::new();
    let stream = |(request, mut respond): (Request<RecvStream>, SendResponse<Bytes>)| {
        streams.opened.fetch_add(1, Ordering::Relaxed);
        streams.active.fetch_add(1, Ordering::Relaxed);
        let active = ActiveStream(streams.clone());
        let Ok(dial) = streams.dials.clone().try_acquire_owned() else {
            // Only reachable when streams the peer reset still hold their
            // dials: h2 already caps open streams at the same number.
            handler.refused(Refused::StreamLimit);
            respond.send_reset(Reason::REFUSED_STREAM);
            return;
        };
        let head = ConnectRequest::parse(request.method(), request.uri(), request.headers());
        let request_head = match head {
            Ok(r) => r,
            Err(refusal) => {
                match &refusal {
                    Refusal::NotConnect { method } => {
                        warn!(pod = %name, src = %peer, peer_identity = %source, method = %method, "HBONE request refused: {refusal}");
                    }
                    Refusal::BadAuthority { authority } => {
                        warn!(pod = %name, src = %peer, peer_identity = %source, authority = ?authority, "HBONE CONNECT refused: {refusal}");
                    }
                }
                refuse(&mut respond, refusal.status());
                return;
            }
        };
        let incoming = Incoming {
            peer,
            source: source.clone(),
            request: request_head,
            respond,
            body: request.into_body(),
            streams: streams.clone(),
            dial,
            _active: active,
        };
        tokio::spawn(handler.clone().connect(incoming));
    };
    if let Some(first) = first {
        stream(first);
    }
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
                        handler.refused(Refused::Resets);
                    }
                    warn!(pod = %name, src = %peer, peer_identity = %source, error = %e, "HBONE connection failed");
                    break;
                }
                None => break,
            },
            () = streams.too_many_resets.notified(), if !shutting_down => {
                handler.refused(Refused::Resets);
                warn!(
                    pod = %name, src = %peer, peer_identity = %source,
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
                    debug!(pod = %name, src = %peer, "idle HBONE connection closed");
                    conn.graceful_shutdown();
                    shutting_down = true;
                }
            }
        }
    }
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
