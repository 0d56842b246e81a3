//! The destination pod's HBONE listener (15008): connections accepted under
//! the pod's admission caps and served by `mesh_hbone::server`; each CONNECT
//! is admitted against the verified peer identity (`admit`), then delivered
//! to the app inside the pod's netns, from the peer's address (or 127.0.0.6;
//! see `delivery`), and relayed.
use std::sync::Arc;

use http::StatusCode;
use mesh_hbone::{
    relay::{self, Transferred},
    server::{self, Acceptor, Handler, Incoming, Refused},
    stream,
};
use tokio::net::TcpListener;
use tracing::{Instrument, debug_span, warn};

use super::{
    access_log::{Connection, Direction, Security},
    admit::{Arrival, Rules, admit},
    delivery::dial_app,
    inbound::{self, delivery_source},
    listeners::{self, Accepted, Listener},
    own_ports::InboundPath,
    state::ProxyState,
};
use crate::pod::{CurrentPod, PodContext};

/// The agent's answer to one pod's HBONE streams.
struct PodHandler {
    current: CurrentPod,
    state: Arc<ProxyState>,
}

pub async fn serve(listener: TcpListener, current: CurrentPod, state: Arc<ProxyState>) {
    // Identity, certificate and TLS do not change with labels; the context
    // of the moment is taken per stream.
    let pod = current.get();
    let (Some(tls), Some(mtls)) = (pod.hbone_server.clone(), state.mtls.as_ref()) else {
        // No CA: every connection is refused (see `refuse_all`).
        return refuse_all(listener, pod, state).await;
    };
    let acceptor = Arc::new(Acceptor {
        name: pod.key.clone(),
        tls,
        cert: pod.cert.clone(),
        trust_domain: mtls.client.bundle.trust_domain.clone(),
        handshake_timeout: state.limits.handshake_timeout,
    });
    let handler = Arc::new(PodHandler {
        current,
        state: state.clone(),
    });
    loop {
        let Accepted {
            stream,
            peer,
            place,
        } = listeners::accept(&listener, Listener::Hbone, &pod, &state).await;
        // Debug level, as the outbound span (see there): not entered on
        // every poll unless asked for.
        let span = debug_span!("hbone", pod = %pod.key, src = %peer);
        let connection = server::serve_connection(
            stream,
            peer,
            acceptor.clone(),
            handler.clone(),
            state.draining(),
        );
        tokio::spawn(
            async move {
                // The admission place is held for the connection's life.
                let _place = place;
                connection.await
            }
            .instrument(span),
        );
    }
}

/// An agent without a CA serves no HBONE: each connection is reset.
async fn refuse_all(listener: TcpListener, pod: Arc<PodContext>, state: Arc<ProxyState>) {
    loop {
        let accepted = listeners::accept(&listener, Listener::Hbone, &pod, &state).await;
        warn!(pod = %pod.key, src = %accepted.peer, "HBONE connection refused: this agent has no CA configured");
        relay::reset(accepted.stream);
    }
}

impl Handler for PodHandler {
    async fn connect(self: Arc<Self>, mut incoming: Incoming) {
        let pod = &self.current.get();
        let state = &self.state;
        let dst = incoming.request.dst;
        let peer = incoming.peer;
        let mut conn = Connection::new(
            Direction::Inbound,
            pod,
            state,
            peer,
            dst,
            Security::MutualTls,
        );
        conn.source_identity = Some(incoming.source.to_string());
        conn.destination_identity = Some(pod.identity.to_string());
        conn.trace_id = incoming.request.trace_id.take();
        let view = state.view();
        let arrival = Arrival {
            path: InboundPath::Hbone,
            src: peer,
            dst,
            source: Some(&incoming.source),
        };
        let rules = Rules {
            policies: &view.policies,
            own_ports: &state.own_ports,
            mtls: true,
            waypoint: view.waypoint_requirement(dst.ip()).map(|r| &**r),
        };
        let outcome = admit(&arrival, pod, &rules);
        // The dial below goes to `dst` from the peer's address or
        // `delivery_source(dst)`, as the pod's delivery says.
        if let Err(why) = inbound::admitted(&mut conn, state, Listener::Hbone, pod, outcome) {
            incoming.refuse(why.status());
            return;
        }
        let delivery = dial_app(
            pod,
            &state.datapath,
            peer,
            dst,
            delivery_source(dst),
            state.limits.connect_timeout,
        );
        // A peer that resets the stream while the app is being dialled gets
        // nothing more: the dial is dropped.
        let app = match incoming.unless_reset(delivery).await {
            Ok(app) => app,
            Err(why) => {
                conn.refused(&why);
                return;
            }
        };
        let app = match app {
            Ok(s) => s,
            Err(e) => {
                conn.connect_failed(&e);
                incoming.refuse(StatusCode::SERVICE_UNAVAILABLE);
                return;
            }
        };
        let (send, recv) = match incoming.accept() {
            Ok(halves) => halves,
            Err(e) => {
                conn.connect_failed(&std::io::Error::other(e));
                relay::reset(app);
                return;
            }
        };
        conn.opened();
        let Some(mtls) = state.mtls.as_ref() else {
            // Unreachable: `serve` hands streams here only with a CA.
            relay::reset(app);
            return;
        };
        // Downstream is the tunnel, upstream the app: bytes "sent" by the
        // pod are those from the app.
        let result = stream::relay(app, send, recv, 0, &mtls.client.buffers).await;
        conn.closed(&result.map(|t| Transferred {
            downstream_to_upstream: t.upstream_to_downstream,
            upstream_to_downstream: t.downstream_to_upstream,
        }));
    }

    fn refused(&self, why: Refused) {
        self.state
            .telemetry
            .refusals
            .refused(Listener::Hbone.label(), why.label());
    }

    fn should_log(&self) -> bool {
        self.state.admission.should_log()
    }
}
