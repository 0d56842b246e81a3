//! One enrolled pod as the agent runs it: its netns (held open), its
//! certificate lease, the three listeners and their accept tasks, and its
//! datapath entries, and the routing that lets deliveries come from the
//! client's address (`source_ip`). Dropping it stops the tasks, closes the
//! listeners, releases the certificate and takes that routing back; `Node`
//! removes the datapath entries.
use std::{
    net::{IpAddr, SocketAddr},
    sync::Arc,
};

use mesh_common::{HBONE_PORT, INBOUND_PORT, OUTBOUND_PORT};
use mesh_discovery::LocalPod;
use mesh_identity::{Identity, manager::CertLease, tls};
use tokio::task::JoinHandle;

use crate::{
    datapath::PodDatapath,
    handover,
    netns::{Netns, SocketFactory},
    pod::{CurrentPod, PodContext},
    proxy,
    proxy::{listeners::listen_dual, state::ProxyState},
    source_ip::{self, PreservedSource},
};

/// A netns the pod may be enrolled in: not the agent's (the host's), and
/// one that holds each of the pod's addresses. Capturing the wrong
/// namespace would send the pod's traffic around the agent, or someone
/// else's through it.
fn check_netns(netns: &Netns, sockets: &SocketFactory, ips: &[IpAddr]) -> Result<(), String> {
    match netns.is_agents_own() {
        Ok(false) => {}
        Ok(true) => {
            return Err(
                "is the host's network namespace (the agent's own), never a pod's; host-network pods are not enrolled".into(),
            );
        }
        Err(e) => return Err(format!("cannot compare with the host's: {e}")),
    }
    for ip in ips {
        let domain = if ip.is_ipv4() {
            socket2::Domain::IPV4
        } else {
            socket2::Domain::IPV6
        };
        // Binding succeeds only to an address of the namespace.
        let bound = sockets
            .socket(domain)
            .and_then(|s| s.bind(&SocketAddr::new(*ip, 0).into()));
        match bound {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(libc::EADDRNOTAVAIL) => {
                return Err(format!(
                    "does not hold the pod's address {ip}; is this the pod's netns?"
                ));
            }
            Err(e) => return Err(format!("checking address {ip}: {e}")),
        }
    }
    Ok(())
}

#[derive(Debug, thiserror::Error)]
pub enum PodError {
    #[error("pod {pod}: {source}")]
    Netns {
        pod: String,
        source: crate::netns::NetnsError,
    },
    #[error("pod {pod}: netns {}: {problem}", netns.display())]
    WrongNetns {
        pod: String,
        netns: std::path::PathBuf,
        problem: String,
    },
    #[error("pod {pod}: listener on port {port}: {source}")]
    Listen {
        pod: String,
        port: u16,
        source: std::io::Error,
    },
    #[error("pod {pod}: identity: {source}")]
    Identity {
        pod: String,
        source: mesh_identity::spiffe::IdentityError,
    },
    #[error("pod {pod}: TLS: {source}")]
    Tls { pod: String, source: rustls::Error },
    #[error("pod {pod}: {source}")]
    Datapath {
        pod: String,
        source: Box<crate::datapath::DatapathError>,
    },
}

pub struct PodRuntime {
    pub spec: LocalPod,
    current: CurrentPod,
    /// Held open for the pod's enrollment: a re-enrollment uses this handle,
    /// never a /proc path whose pid may since have been reused.
    netns: Netns,
    tasks: Vec<JoinHandle<()>>,
    /// Keeps the pod's certificate renewed while the pod is enrolled.
    _cert: Option<CertLease>,
    /// The pod's delivery routing, taken back on drop.
    _source_ip: Option<PreservedSource>,
    /// The listeners the accept tasks own, while they run: what a new
    /// agent is offered at a hand-over (`crate::handover`).
    listening: handover::Listening,
}

impl PodRuntime {
    pub fn datapath_entry(&self) -> PodDatapath {
        let context = self.context();
        PodDatapath {
            key: context.key.clone(),
            netns_cookie: context.netns_cookie,
            ips: context.ips.clone(),
        }
    }

    /// The pod's network namespace, held open while it is enrolled.
    pub fn netns(&self) -> &Netns {
        &self.netns
    }

    /// What connection handlers see of the pod now.
    pub fn context(&self) -> Arc<PodContext> {
        self.current.get()
    }

    /// Takes the pod's new labels (and annotations) without touching its
    /// listeners or datapath entries; `spec` must enroll the same way as
    /// the current one (see `same_enrollment`).
    pub fn relabel(&mut self, spec: &LocalPod) {
        let old = self.current.get();
        self.current.set(Arc::new(PodContext {
            key: old.key.clone(),
            name: old.name.clone(),
            namespace: old.namespace.clone(),
            identity: old.identity.clone(),
            labels: spec.labels.clone(),
            ips: old.ips.clone(),
            netns_cookie: old.netns_cookie,
            sockets: old.sockets.clone(),
            relay: old.relay,
            delivery: old.delivery,
            cert: old.cert.clone(),
            hbone_server: old.hbone_server.clone(),
        }));
        self.spec = spec.clone();
    }

    /// Opens the pod's listeners, then puts it under the datapath. On error
    /// nothing of the pod stays registered.
    /// `netns` is the pod's namespace when the caller holds it open already
    /// (found under /proc, or kept from an earlier enrollment); otherwise
    /// `spec.netns` is opened.
    /// `inherited`: the pod's sockets taken over from the agent that ran
    /// before (`crate::handover`), used instead of new ones when they are
    /// in this netns, and served only once the hand-over opens its gate.
    pub fn enroll(
        spec: &LocalPod,
        netns: Option<Netns>,
        trust_domain: &str,
        relay: proxy::RelayMode,
        source_ip: &source_ip::Settings,
        state: &Arc<ProxyState>,
        inherited: Option<handover::Inherited>,
    ) -> Result<Self, PodError> {
        let key = spec.key();
        let datapath = &state.datapath;
        let identity = Identity::new(trust_domain, &spec.namespace, &spec.service_account)
            .map_err(|source| PodError::Identity {
                pod: key.clone(),
                source,
            })?;
        let netns = match netns {
            Some(n) => n,
            None => Netns::open(&spec.netns).map_err(|source| PodError::Netns {
                pod: key.clone(),
                source,
            })?,
        };
        let sockets = SocketFactory::new(&netns).map_err(|source| PodError::Netns {
            pod: key.clone(),
            source,
        })?;
        check_netns(&netns, &sockets, &spec.ips).map_err(|problem| PodError::WrongNetns {
            pod: key.clone(),
            netns: spec.netns.clone(),
            problem,
        })?;
        // Before any listener opens: the first delivery may follow at once.
        let (delivery, preserved) = source_ip::prepare(&key, &sockets, &spec.ips, source_ip);
        // Dropped with the runtime, or on any error below: either way the
        // identity's certificate is released once no pod uses it.
        let (lease, hbone_server) = match &state.mtls {
            Some(mtls) => {
                let lease = mtls.certs.acquire(&identity);
                let server = tls::server_config(&mtls.client.bundle, lease.watch().clone())
                    .map_err(|source| PodError::Tls {
                        pod: key.clone(),
                        source,
                    })?;
                (Some(lease), Some(Arc::new(server)))
            }
            None => (None, None),
        };
        let context = Arc::new(PodContext {
            key: key.clone(),
            name: spec.name.clone(),
            namespace: spec.namespace.clone(),
            identity,
            labels: spec.labels.clone(),
            ips: spec.ips.clone(),
            netns_cookie: sockets.cookie(),
            sockets,
            relay,
            delivery,
            cert: lease.as_ref().map(|l| l.watch().clone()),
            hbone_server,
        });
        let want_v6 = spec.ips.iter().any(IpAddr::is_ipv6);
        let mut inherited = inherited.filter(|i| i.netns_cookie == context.netns_cookie);
        let gate = inherited.as_ref().map(handover::Inherited::gate);
        let mut open = |port, local_only| {
            inherited
                .as_mut()
                .and_then(|i| i.take(port, want_v6))
                .unwrap_or_else(|| listen_dual(&context.sockets, port, local_only, want_v6))
                .map_err(|source| PodError::Listen {
                    pod: key.clone(),
                    port,
                    source,
                })
        };
        let current = CurrentPod::new(context.clone());
        let runtime = PodRuntime {
            spec: spec.clone(),
            current: current.clone(),
            netns,
            tasks: Vec::new(),
            _cert: lease,
            _source_ip: preserved,
            listening: Vec::new(),
        };
        // Bound as narrowly as the datapath allows. 15001 receives only
        // connect()s that connect4/6 rewrote to loopback. 15006 receives
        // only what sk_lookup assigns to it, which ignores the bound
        // address: on loopback, nothing reaches it by an ordinary lookup, so
        // a delivery to `podIP:15006` finds no listener instead of the
        // agent itself. 15008 is reached by ordinary lookups (sk_lookup
        // passes it), so it stays on the wildcard address; CONNECTs to the
        // agent's own ports are refused there.
        let outbound = open(OUTBOUND_PORT, true)?;
        let inbound = open(INBOUND_PORT, true)?;
        let hbone = open(HBONE_PORT, false)?;

        let entry = runtime.datapath_entry();
        let dp_err = |source| PodError::Datapath {
            pod: key.clone(),
            source: Box::new(source),
        };
        for ip in &spec.ips {
            let listener = inbound.iter().find(|l| {
                l.local_addr()
                    .map(|a| a.is_ipv4() == ip.is_ipv4())
                    .unwrap_or(false)
            });
            if let Some(Err(e)) = listener.map(|l| datapath.register_inbound_listener(*ip, l)) {
                let _ = datapath.unenroll(&entry);
                return Err(dp_err(e));
            }
        }
        if let Err(e) = datapath.enroll(&entry, &runtime.netns) {
            let _ = datapath.unenroll(&entry);
            return Err(dp_err(e));
        }

        let mut runtime = runtime;
        runtime.listening = [
            handover::labelled(&outbound, OUTBOUND_PORT),
            handover::labelled(&inbound, INBOUND_PORT),
            handover::labelled(&hbone, HBONE_PORT),
        ]
        .concat();
        for l in outbound {
            runtime.tasks.push(tokio::spawn(handover::after_gate(
                gate.clone(),
                proxy::outbound::serve(l, current.clone(), state.clone()),
            )));
        }
        for l in inbound {
            runtime.tasks.push(tokio::spawn(handover::after_gate(
                gate.clone(),
                proxy::inbound::serve(l, current.clone(), state.clone()),
            )));
        }
        for l in hbone {
            runtime.tasks.push(tokio::spawn(handover::after_gate(
                gate.clone(),
                proxy::hbone_inbound::serve(l, current.clone(), state.clone()),
            )));
        }
        Ok(runtime)
    }
}

impl PodRuntime {
    /// Closes the pod's listeners; connections already accepted go on.
    pub fn stop_accepting(&mut self) {
        self.listening.clear();
        for t in self.tasks.drain(..) {
            t.abort();
        }
    }

    /// As `stop_accepting`, and returns once no accept task of this agent
    /// is left on the pod's listeners (so a new agent may start on them).
    pub async fn stopped_accepting(&mut self) {
        self.listening.clear();
        let tasks: Vec<_> = self.tasks.drain(..).collect();
        for t in &tasks {
            t.abort();
        }
        for t in tasks {
            let _ = t.await;
        }
    }

    /// Copies of the pod's listening sockets for a new agent; `None` once
    /// it has stopped accepting.
    pub fn offer(&self) -> Option<std::io::Result<handover::PodOffer>> {
        if self.listening.is_empty() {
            return None;
        }
        let context = self.context();
        Some(
            handover::duplicate(&self.listening).map(|sockets| handover::PodOffer {
                uid: self.spec.uid.clone(),
                key: context.key.clone(),
                netns_cookie: context.netns_cookie,
                sockets,
            }),
        )
    }

    /// The pod is served by another agent now (or again): the delivery
    /// routing in its netns, which that agent relies on as well, is left
    /// in place when this runtime is dropped.
    pub fn leave_routing(&mut self) {
        if let Some(preserved) = self._source_ip.take() {
            std::mem::forget(preserved);
        }
    }
}

impl Drop for PodRuntime {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}
