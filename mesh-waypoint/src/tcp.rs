//! TCP passthrough: a stream that is not HTTP goes, whole, to one endpoint
//! chosen by the same balancer, over HBONE when the endpoint is in the
//! mesh. A failure on either side resets the other. Told as Istio's TCP
//! families (reporter `waypoint`) and one access line when it ends.
use std::{
    sync::Arc,
    time::{Instant, SystemTime},
};

use h2::Reason;
use mesh_telemetry::{
    labels::{UNKNOWN, WorkloadLabels},
    request::{Party, ResponseFlag, ResponseFlags},
    tcp::{Peer, TcpLabels},
};
use tracing::{debug, warn};

use crate::{
    access::TcpStreamEnd,
    handler::{DownstreamIo, StreamContext},
    idle::{self, End},
    record,
    waypoint::Waypoint,
};

/// Endpoints tried when they cannot be reached.
const MAX_ATTEMPTS: u32 = 3;

/// Istio's TCP labels for a stream between `source` and `destination`.
fn labels(ctx: &StreamContext, destination: &Party, flags: ResponseFlags) -> TcpLabels {
    let peer = |p: &Party| Peer {
        labels: p.workload.clone().unwrap_or_else(WorkloadLabels::unknown),
        principal: p.principal.clone().unwrap_or_else(|| UNKNOWN.to_owned()),
    };
    let service = record::service(&ctx.target).map(|s| format!("{}/{}", s.namespace, s.name));
    TcpLabels::new(
        "waypoint",
        &peer(&ctx.source),
        &peer(destination),
        service.as_deref(),
        flags_label(flags),
        "mutual_tls",
    )
}

/// The flags a relayed stream can end with, as Istio's label.
fn flags_label(flags: ResponseFlags) -> &'static str {
    [
        ResponseFlag::NoHealthyUpstream,
        ResponseFlag::UpstreamConnectionFailure,
        ResponseFlag::UpstreamRemoteReset,
        ResponseFlag::StreamIdleTimeout,
        ResponseFlag::RbacAccessDenied,
        ResponseFlag::UnauthorizedExternalService,
    ]
    .into_iter()
    .find(|f| flags.contains(*f))
    .map_or("-", ResponseFlag::as_str)
}

pub async fn relay(wp: Arc<Waypoint>, mut io: DownstreamIo, ctx: Arc<StreamContext>) {
    let started = Instant::now();
    let started_at = SystemTime::now();
    let view = wp.view();
    let mut tried = Vec::new();
    let mut attempts = 0;
    let mut destination = Party::default();
    let mut upstream_addr = None;
    // A stream the waypoint's authorization policies refuse never reaches
    // an endpoint: what is not HTTP is held to the policies' TCP facts
    // (authz::check_stream logs the denial with its policy).
    let denied = match crate::authz::check_stream(&wp, &view, &ctx).await {
        Ok(()) => None,
        Err(d) if d.action == "CUSTOM" => Some(ResponseFlag::UnauthorizedExternalService),
        Err(_) => Some(ResponseFlag::RbacAccessDenied),
    };
    let endpoints = ctx.target.endpoints(&view, &wp.own);
    let connected = loop {
        let Some(place) = (denied.is_none() && attempts < MAX_ATTEMPTS)
            .then(|| wp.balancer.choose(&endpoints, &tried))
            .flatten()
        else {
            break None;
        };
        attempts += 1;
        upstream_addr = Some(place.addr);
        destination = record::destination(&view, place.addr.ip());
        tried.push(place.addr);
        let expected = view.expected_identity(place.addr.ip());
        match wp
            .upstream
            .open(place.addr, expected.as_ref(), ctx.carries)
            .await
        {
            Ok(upstream) => break Some((upstream, place)),
            Err(e) => {
                warn!(authority = %ctx.dst, upstream = %place.addr, attempt = attempts, error = %e, "TCP upstream unreachable");
            }
        }
    };
    let mut flags = ResponseFlags::NONE;
    let (mut sent, mut received) = (0, 0);
    match connected {
        None => {
            flags.insert(match denied {
                Some(flag) => flag,
                None if tried.is_empty() => {
                    warn!(authority = %ctx.dst, destination = %ctx.target.describe(), "no ready endpoint for a TCP stream (UH)");
                    ResponseFlag::NoHealthyUpstream
                }
                None => ResponseFlag::UpstreamConnectionFailure,
            });
            io.reset(Reason::REFUSED_STREAM);
        }
        Some((mut upstream, _place)) => {
            wp.telemetry
                .tcp_opened(&labels(&ctx, &destination, ResponseFlags::NONE));
            let idle = wp.limits.tcp_idle_timeout;
            let relayed = idle::relay(&mut io, &mut upstream, idle).await;
            received = relayed.from_a;
            sent = relayed.from_b;
            let reset = match relayed.end {
                End::Done => false,
                End::Idle => {
                    debug!(authority = %ctx.dst, idle_s = idle.as_secs_f32(), "TCP stream idle: closed (SI)");
                    flags.insert(ResponseFlag::StreamIdleTimeout);
                    true
                }
                End::Failed(e) => {
                    debug!(authority = %ctx.dst, error = %e, "TCP stream broke");
                    flags.insert(ResponseFlag::UpstreamRemoteReset);
                    true
                }
            };
            if reset {
                io.reset(Reason::CANCEL);
                if let crate::upstream::UpstreamIo::Plain(tcp) = upstream {
                    mesh_hbone::relay::reset(tcp);
                }
            }
        }
    }
    let service = record::service(&ctx.target);
    let end = TcpStreamEnd {
        started: started_at,
        duration_ms: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
        authority: ctx.dst,
        flags,
        sent,
        received,
        downstream: ctx.peer,
        upstream: upstream_addr,
        attempts,
        source: &ctx.source,
        destination: &destination,
        service_host: service.as_ref().map(|s| s.host.as_str()),
    };
    wp.telemetry
        .tcp_closed(&labels(&ctx, &destination, flags), &end);
}
