//! Each verified CONNECT: what it names (`target`), answered 404 when that
//! is nothing served here; else accepted, its protocol declared or
//! detected, and handed to the HTTP server or the TCP relay.
use std::{net::SocketAddr, sync::Arc, time::Duration};

use bytes::{Bytes, BytesMut};
use h2::{RecvStream, SendStream};
use http::{Method, StatusCode};
use mesh_hbone::{
    io::H2Io,
    server::{Handler, Incoming, Refused},
};
use mesh_telemetry::request::{Party, Protocol as RequestProtocol, ResponseFlag};
use tokio::io::AsyncReadExt;
use tracing::{debug, warn};

use crate::{
    protocol::{self, Declared, Protocol, Sniffed},
    record::{self, ForwardedClient},
    target::{self, Target},
    telemetry::Refusal,
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
    /// The HBONE peer's address (a node agent's, between nodes).
    pub peer: SocketAddr,
    /// The client: the verified identity, and its workload when the
    /// CONNECT's forwarded address agrees with that identity.
    pub source: Party,
    /// The namespace of the client's verified identity: whose consumer
    /// routes apply.
    pub client_namespace: String,
    /// Whom the waypoint's own tunnels say they carry (`forwarded`): the
    /// client's pod when its address was believed, else the peer.
    pub carries: SocketAddr,
}

impl Handler for Waypoint {
    async fn connect(self: Arc<Self>, incoming: Incoming) {
        let dst = incoming.request.dst;
        let view = self.view();
        let client =
            record::forwarded_client(&view, &incoming.source, incoming.request.forwarded_for);
        if let ForwardedClient::Mismatch {
            addr,
            workload,
            runs_as,
        } = &client
        {
            debug!(
                forwarded_for = %addr,
                %workload,
                %runs_as,
                peer_identity = %incoming.source,
                "the CONNECT's forwarded address is another identity's workload; the client is named by its identity alone"
            );
        }
        let source = record::source(&incoming.source, &client);
        let target = match target::resolve(&view, dst, &self.gateway, &self.own) {
            Ok(t) => t,
            Err(why) => {
                warn!(
                    authority = %dst,
                    src = %incoming.peer,
                    peer_identity = %incoming.source,
                    reason = %why,
                    "CONNECT refused (404): nothing this waypoint serves at the authority"
                );
                refused_connect(&self, dst, incoming.peer, source);
                incoming.refuse(StatusCode::NOT_FOUND);
                return;
            }
        };
        let carries = match (&client, incoming.request.forwarded_for) {
            (ForwardedClient::Trusted(_), Some(ip)) => SocketAddr::new(ip, incoming.peer.port()),
            _ => incoming.peer,
        };
        let stream = StreamContext {
            client_namespace: incoming.source.namespace().to_owned(),
            dst,
            target,
            peer: incoming.peer,
            source,
            carries,
        };
        let halves = match incoming.accept() {
            Ok(h) => h,
            Err(e) => {
                debug!(authority = %dst, error = %e, "stream ended before it was answered");
                return;
            }
        };
        let mut io = H2Io::new(halves);
        let protocol = match stream.target.declared_protocol() {
            Declared::Known(p) => p,
            Declared::Http => {
                detect(
                    &mut io,
                    self.limits.detect_timeout,
                    protocol::sniff_http,
                    Protocol::Http1,
                )
                .await
            }
            Declared::Undeclared => {
                detect(
                    &mut io,
                    self.limits.detect_timeout,
                    protocol::sniff,
                    Protocol::Tcp,
                )
                .await
            }
        };
        let context = Arc::new(stream);
        match protocol {
            Protocol::Tcp => crate::tcp::relay(self, io, context).await,
            http => crate::http::serve(self, io, http, context).await,
        }
    }

    fn refused(&self, why: Refused) {
        self.telemetry.refused(Refusal::Hbone(why.label()));
    }

    fn should_log(&self) -> bool {
        Waypoint::should_log(self)
    }
}

/// The record of a CONNECT answered 404: Istio counts it as a request
/// with no route (`NR`), as Envoy does for a destination it does not know.
fn refused_connect(wp: &Waypoint, dst: SocketAddr, peer: SocketAddr, source: Party) {
    let rec = mesh_telemetry::request::RequestRecord {
        reporter: mesh_telemetry::request::Reporter::Waypoint,
        started: std::time::SystemTime::now(),
        duration: Duration::ZERO,
        method: Method::CONNECT,
        authority: dst.to_string(),
        path: String::new(),
        protocol: RequestProtocol::Http2,
        response_code: Some(StatusCode::NOT_FOUND),
        grpc_status: None,
        request_bytes: 0,
        response_bytes: 0,
        downstream: Some(peer),
        upstream: None,
        source,
        destination: Party::default(),
        service: None,
        route: None,
        route_rule: None,
        attempts: 0,
        response_flags: ResponseFlag::NoRouteFound.into(),
        security: mesh_telemetry::connection::Security::MutualTls,
        trace_id: None,
    };
    wp.telemetry.request(&rec, None);
}

/// Reads the client's first bytes until `sniff` says which protocol it is,
/// within `protocol::DETECT_BYTES` and `wait` (past them, or at the end of
/// the stream, `otherwise`), and puts them back.
pub async fn detect(
    io: &mut DownstreamIo,
    wait: Duration,
    sniff: fn(&[u8]) -> Sniffed,
    otherwise: Protocol,
) -> Protocol {
    let mut first = BytesMut::with_capacity(1024);
    let deadline = tokio::time::Instant::now() + wait;
    let protocol = loop {
        if let Sniffed::Is(p) = sniff(&first) {
            break p;
        }
        let room = protocol::DETECT_BYTES.saturating_sub(first.len());
        if room == 0 {
            break otherwise;
        }
        let mut limited = (&mut *io).take(room as u64);
        match tokio::time::timeout_at(deadline, limited.read_buf(&mut first)).await {
            Ok(Ok(n)) if n > 0 => continue,
            // End of stream, a broken stream, or the deadline: what was
            // read decides (the relay meets a broken stream again).
            _ => break otherwise,
        }
    };
    io.unread(first.freeze());
    protocol
}
