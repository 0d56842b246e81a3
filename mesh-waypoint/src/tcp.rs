//! TCP passthrough: a stream that is not HTTP goes, whole, to one endpoint
//! chosen by the same balancer, over HBONE when the endpoint is in the
//! mesh. A failure on either side resets the other.
use std::{sync::Arc, time::Instant};

use h2::Reason;
use tracing::{debug, warn};

use crate::{
    handler::{DownstreamIo, StreamContext},
    protocol::Protocol,
    record::{RequestRecord, ResponseFlag},
    waypoint::Waypoint,
};

/// Endpoints tried when they cannot be reached.
const MAX_ATTEMPTS: u32 = 3;

pub async fn relay(wp: Arc<Waypoint>, mut io: DownstreamIo, ctx: Arc<StreamContext>) {
    let started = Instant::now();
    let mut record = RequestRecord::new(Protocol::Tcp, ctx.dst.to_string(), ctx.client.clone());
    record.destination_service = ctx.target.service();
    record.destination_workload = ctx.target.workload();
    let view = wp.view();
    let endpoints = ctx.target.endpoints(&view);
    let src = ctx.client.peer.unwrap_or(ctx.dst);
    let mut tried = Vec::new();
    let connected = loop {
        let Some(place) = (record.attempts < MAX_ATTEMPTS)
            .then(|| wp.balancer.choose(&endpoints, &tried))
            .flatten()
        else {
            break None;
        };
        record.attempts += 1;
        record.upstream = Some(place.addr);
        tried.push(place.addr);
        let expected = view.expected_identity(place.addr.ip());
        match wp.upstream.open(place.addr, expected.as_ref(), src).await {
            Ok(upstream) => break Some((upstream, place)),
            Err(e) => {
                warn!(authority = %ctx.dst, upstream = %place.addr, attempt = record.attempts, error = %e, "TCP upstream unreachable");
                record.flag(ResponseFlag::UpstreamConnectFailure);
            }
        }
    };
    match connected {
        None => {
            if tried.is_empty() {
                warn!(authority = %ctx.dst, destination = %ctx.target.describe(), "no ready endpoint for a TCP stream (UH)");
                record.flag(ResponseFlag::NoHealthyUpstream);
            }
            io.reset(Reason::REFUSED_STREAM);
        }
        Some((mut upstream, _place)) => {
            record.flags.clear();
            match tokio::io::copy_bidirectional(&mut io, &mut upstream).await {
                Ok((sent, received)) => {
                    record.request_bytes = sent;
                    record.response_bytes = received;
                }
                Err(e) => {
                    debug!(authority = %ctx.dst, error = %e, "TCP stream broke");
                    record.flag(ResponseFlag::UpstreamReset);
                    io.reset(Reason::CANCEL);
                    if let crate::upstream::UpstreamIo::Plain(tcp) = upstream {
                        mesh_hbone::relay::reset(tcp);
                    }
                }
            }
        }
    }
    record.duration = started.elapsed();
    wp.metrics.request(&record);
    record.log();
}
