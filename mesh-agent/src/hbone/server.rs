//! The destination pod's HBONE listener (15008): mutual TLS with a client
//! certificate from the mesh's roots, HTTP/2, and per stream a CONNECT to
//! an address of this pod, authorized against the verified peer identity,
//! then delivered to the app from 127.0.0.6 inside the pod's netns.
use std::{net::SocketAddr, sync::Arc};

use bytes::Bytes;
use h2::{RecvStream, server::SendResponse};
use http::{Method, Request, Response, StatusCode};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tracing::{Instrument, debug_span, warn};

use super::{CONNECTION_WINDOW, MAX_FRAME, STREAM_WINDOW, stream};
use crate::{
    identity::Identity,
    pod::PodContext,
    proxy::{
        access_log::{Connection, Direction, Security},
        connector::agent_connect,
        inbound::delivery_source,
        relay,
        state::ProxyState,
    },
    tls,
};

pub async fn serve(listener: TcpListener, pod: Arc<PodContext>, state: Arc<ProxyState>) {
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                warn!(pod = %pod.key, error = %e, "HBONE accept failed");
                continue;
            }
        };
        let pod = pod.clone();
        let state = state.clone();
        // Debug level, as the outbound span (see there): not entered on
        // every poll unless asked for.
        let span = debug_span!("hbone", pod = %pod.key, src = %peer);
        tokio::spawn(connection(stream, peer, pod, state).instrument(span));
    }
}

async fn connection(
    tcp: TcpStream,
    peer: SocketAddr,
    pod: Arc<PodContext>,
    state: Arc<ProxyState>,
) {
    let (Some(config), Some(mtls)) = (pod.hbone_server.clone(), state.mtls.as_ref()) else {
        warn!(pod = %pod.key, src = %peer, "HBONE connection refused: this agent has no CA configured");
        relay::reset(tcp);
        return;
    };
    let _ = tcp.set_nodelay(true);
    // Just after enrollment the pod's first certificate may still be on its
    // way; a peer that arrives then waits for it rather than failing.
    if let Some(mut cert) = pod.cert.clone() {
        let ready = tokio::time::timeout(super::CERT_WAIT, cert.wait_for(|c| c.is_some())).await;
        if !matches!(ready, Ok(Ok(_))) {
            warn!(pod = %pod.key, src = %peer, "HBONE connection refused: the pod has no certificate yet; is the CA reachable?");
            relay::reset(tcp);
            return;
        }
    }
    let tls = match TlsAcceptor::from(config).accept(tcp).await {
        Ok(t) => t,
        Err(e) => {
            warn!(pod = %pod.key, src = %peer, error = %e, "HBONE handshake refused");
            return;
        }
    };
    let source = match tls::peer_identity(
        tls.get_ref().1.peer_certificates(),
        &mtls.bundle.trust_domain,
    ) {
        Ok(id) => id,
        Err(e) => {
            warn!(pod = %pod.key, src = %peer, error = %e, "HBONE peer refused");
            return;
        }
    };
    let mut conn = match h2::server::Builder::new()
        .initial_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .max_frame_size(MAX_FRAME)
        .max_concurrent_streams(super::MAX_STREAMS_PER_CONNECTION as u32)
        .handshake::<_, Bytes>(tls)
        .await
    {
        Ok(c) => c,
        Err(e) => {
            warn!(pod = %pod.key, src = %peer, error = %e, "HBONE HTTP/2 handshake failed");
            return;
        }
    };
    while let Some(next) = conn.accept().await {
        match next {
            Ok((request, respond)) => {
                tokio::spawn(stream_request(
                    request,
                    respond,
                    source.clone(),
                    peer,
                    pod.clone(),
                    state.clone(),
                ));
            }
            Err(e) => {
                warn!(pod = %pod.key, src = %peer, error = %e, "HBONE connection failed");
                break;
            }
        }
    }
}

fn refuse(respond: &mut SendResponse<Bytes>, status: StatusCode) {
    if let Ok(r) = Response::builder().status(status).body(()) {
        let _ = respond.send_response(r, true);
    }
}

async fn stream_request(
    request: Request<RecvStream>,
    mut respond: SendResponse<Bytes>,
    source: Identity,
    peer: SocketAddr,
    pod: Arc<PodContext>,
    state: Arc<ProxyState>,
) {
    if request.method() != Method::CONNECT {
        warn!(pod = %pod.key, src = %peer, peer_identity = %source, method = %request.method(), "HBONE request refused: only CONNECT is served");
        refuse(&mut respond, StatusCode::METHOD_NOT_ALLOWED);
        return;
    }
    let target = request.uri().authority().map(|a| a.as_str().to_owned());
    let dst: SocketAddr = match target.as_deref().map(str::parse) {
        Some(Ok(dst)) => dst,
        _ => {
            warn!(pod = %pod.key, src = %peer, peer_identity = %source, authority = ?target, "HBONE CONNECT refused: authority is not ip:port");
            refuse(&mut respond, StatusCode::BAD_REQUEST);
            return;
        }
    };
    let dst = SocketAddr::new(dst.ip().to_canonical(), dst.port());
    let trace_id = request
        .headers()
        .get("traceparent")
        .and_then(|v| v.to_str().ok())
        .and_then(|t| t.split('-').nth(1))
        .map(str::to_owned);
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
    if !pod.ips.contains(&dst.ip()) {
        conn.refused("authority is not an address of this pod");
        refuse(&mut respond, StatusCode::BAD_REQUEST);
        return;
    }
    let view = state.view();
    let decision = view.policies.authorize(
        pod.target(),
        &crate::policy::Connection {
            source: Some(&source),
            source_ip: peer.ip().to_canonical(),
            destination_ip: dst.ip(),
            destination_port: dst.port(),
        },
    );
    if !conn.authorized(&decision) {
        refuse(&mut respond, StatusCode::UNAUTHORIZED);
        return;
    }
    let app = match agent_connect(&pod, Some(delivery_source(dst)), dst).await {
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
            conn.connect_failed(&std::io::Error::other(e));
            relay::reset(app);
            return;
        }
    };
    conn.opened();
    // Downstream is the tunnel, upstream the app: bytes "sent" by the pod
    // are those from the app.
    let result = stream::relay(app, send, request.into_body(), 0).await;
    conn.closed(&result.map(|t| relay::Transferred {
        downstream_to_upstream: t.upstream_to_downstream,
        upstream_to_downstream: t.downstream_to_upstream,
    }));
}
