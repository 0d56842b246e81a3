//! HBONE: TCP carried in HTTP/2 CONNECT streams over mutual TLS to port
//! 15008 of the destination pod, as Istio ambient's ztunnel does, so the two
//! interoperate. `client` opens tunnels from pooled connections, `server`
//! terminates them in the destination pod, `stream` moves bytes between a
//! TCP socket and an HTTP/2 stream.
pub mod buffers;
pub mod client;
pub mod io;
pub mod pool;
pub mod relay;
pub mod request;
pub mod server;
pub mod stream;
#[cfg(test)]
mod testing;

use std::time::Duration;

pub use pool::Pool;

/// HTTP/2 stream window sized for bulk transfers over a LAN: a stream may
/// have this much in flight before the receiver acknowledges it.
pub const STREAM_WINDOW: u32 = 4 * 1024 * 1024;
/// The connection window never binds before the stream windows do: with a
/// smaller one (ztunnel's 16 MiB), four streams whose apps stop reading
/// spend it, and every other stream of the connection (the same pair of
/// pods) stalls behind them. What stuck streams may hold is bounded by the
/// node's buffer budget instead (`buffers`).
pub const CONNECTION_WINDOW: u32 = MAX_CONCURRENT_STREAMS * STREAM_WINDOW;
/// Fewer, larger DATA frames: less framing per byte.
pub const MAX_FRAME: u32 = 256 * 1024;
/// Streams one pooled connection carries before another is opened
/// (ztunnel's pool puts at most 100 on one connection).
pub const MAX_STREAMS_PER_CONNECTION: usize = 100;
/// Streams a peer may have open on one of our HBONE listeners' connections
/// (ztunnel's server allows 200): a pooling client's 100 plus room.
pub const MAX_CONCURRENT_STREAMS: u32 = 200;
/// The largest request header block accepted (ztunnel: 64 KiB); a CONNECT
/// needs a few hundred bytes.
pub const MAX_HEADER_LIST: u32 = 64 * 1024;
/// A pooled connection with no streams for this long is closed.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a new tunnel waits for the source workload's first certificate.
pub const CERT_WAIT: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum HboneError {
    #[error("connecting to {addr}: {source}")]
    Connect {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
    #[error("TLS with {addr}: {source}")]
    Tls {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
    #[error(
        "TLS and HTTP/2 with {addr} not done within {}s (AgentConfig.limits.handshakeTimeout)",
        timeout.as_secs_f32()
    )]
    HandshakeTimeout {
        addr: std::net::SocketAddr,
        timeout: std::time::Duration,
    },
    #[error("no certificate yet for {0}; is the CA reachable?")]
    NoCertificate(String),
    #[error("TLS configuration: {0}")]
    Config(#[from] rustls::Error),
    #[error("HTTP/2: {0}")]
    H2(#[from] h2::Error),
    #[error("tunnel refused by the destination: HTTP {0}")]
    Refused(http::StatusCode),
    #[error("building the CONNECT request: {0}")]
    Request(#[from] http::Error),
}
