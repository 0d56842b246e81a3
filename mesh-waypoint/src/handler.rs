//! Each verified CONNECT: what it names (`target`), answered 404 when that
//! is nothing served here; else accepted, its protocol declared or
//! detected, and handed to the HTTP server or the TCP relay.
use std::{net::SocketAddr, sync::Arc, time::Duration};

use bytes::{Bytes, BytesMut};
use h2::{RecvStream, SendStream};
use http::StatusCode;
use mesh_hbone::{
    io::H2Io,
    server::{Handler, Incoming, Refused},
};
use tokio::io::AsyncReadExt;
use tracing::{debug, warn};

use crate::{
    metrics::Refusal,
    protocol::{self, Declared, Protocol, Sniffed},
    record,
    target::{self, Target},
    waypoint::Waypoint,
};

/// An accepted HBONE stream as the waypoint reads it and writes it.
pub type DownstreamIo = H2Io<(SendStream<Bytes>, RecvStream)>;

/// What is known of one accepted stream, for every request on it.
#[derive(Debug, Clone)]
pub struct StreamContext {
    /// The CONNECT's authority.
    pub dst: SocketAddr,
    pub target: Target,
    pub client: record::Client,
}

impl Handler for Waypoint {
    async fn connect(self: Arc<Self>, incoming: Incoming) {
        let dst = incoming.request.dst;
        let view = self.view();
        let target = match target::resolve(&view, dst, &self.gateway) {
            Ok(t) => t,
            Err(why) => {
                self.metrics.refused(Refusal::UnknownAuthority);
                warn!(
                    authority = %dst,
                    src = %incoming.peer,
                    peer_identity = %incoming.source,
                    reason = %why,
                    "CONNECT refused (404): nothing this waypoint serves at the authority"
                );
                incoming.refuse(StatusCode::NOT_FOUND);
                return;
            }
        };
        let client = record::Client {
            peer: Some(incoming.peer),
            identity: Some(incoming.source.to_string()),
            workload: view.workload(incoming.peer.ip()).map(|w| w.key()),
        };
        let halves = match incoming.accept() {
            Ok(h) => h,
            Err(e) => {
                debug!(authority = %dst, error = %e, "stream ended before it was answered");
                return;
            }
        };
        let mut io = H2Io::new(halves);
        let protocol = match target.declared_protocol() {
            Declared::Known(p) => p,
            Declared::Undeclared => detect(&mut io, self.limits.detect_timeout).await,
        };
        self.metrics.stream(protocol);
        let context = Arc::new(StreamContext {
            dst,
            target,
            client,
        });
        match protocol {
            Protocol::Tcp => crate::tcp::relay(self, io, context).await,
            http => crate::http::serve(self, io, http, context).await,
        }
    }

    fn refused(&self, why: Refused) {
        self.metrics.refused(Refusal::Hbone(why.label()));
    }

    fn should_log(&self) -> bool {
        Waypoint::should_log(self)
    }
}

/// Reads the client's first bytes until they say which protocol it is,
/// within `protocol::DETECT_BYTES` and `wait`, and puts them back.
pub async fn detect(io: &mut DownstreamIo, wait: Duration) -> Protocol {
    let mut first = BytesMut::with_capacity(1024);
    let deadline = tokio::time::Instant::now() + wait;
    let protocol = loop {
        if let Sniffed::Is(p) = protocol::sniff(&first) {
            break p;
        }
        let room = protocol::DETECT_BYTES.saturating_sub(first.len());
        if room == 0 {
            break protocol::decide(&first);
        }
        let mut limited = (&mut *io).take(room as u64);
        match tokio::time::timeout_at(deadline, limited.read_buf(&mut first)).await {
            Ok(Ok(n)) if n > 0 => continue,
            // End of stream, a broken stream, or the deadline: what was
            // read decides (the relay meets a broken stream again).
            _ => break protocol::decide(&first),
        }
    };
    io.unread(first.freeze());
    protocol
}
