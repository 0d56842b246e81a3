//! One enrolled pod as the agent runs it: a socket factory in its netns, its
//! identity and certificate, the three listeners, and their accept tasks.
//! Dropping it stops the tasks, closes the listeners and releases the
//! certificate; `Node` removes the datapath entries.
use std::{
    collections::BTreeMap,
    future::Future,
    io,
    net::{IpAddr, SocketAddr},
    pin::Pin,
    sync::Arc,
    time::Duration,
};

use mesh_common::{HBONE_PORT, INBOUND_PORT, OUTBOUND_PORT};
use mesh_discovery::LocalPod;
use mesh_identity::{Identity, manager::CertLease, tls, tls::CertWatch};
use mesh_policy::Target;
use tokio::{net::TcpStream, task::JoinHandle};

use crate::{
    datapath::PodDatapath,
    netns::{Netns, SocketFactory},
    proxy,
    proxy::{listeners::listen_dual, state::ProxyState},
};

/// What connection handlers know about the pod they serve.
pub struct PodContext {
    /// `<namespace>/<name>`.
    pub key: String,
    pub name: String,
    pub namespace: String,
    pub identity: Identity,
    pub labels: BTreeMap<String, String>,
    pub ips: Vec<IpAddr>,
    pub netns_cookie: u64,
    pub sockets: SocketFactory,
    /// How this pod's TCP-to-TCP relays move bytes.
    pub relay: proxy::RelayMode,
    /// The pod's certificate, when the agent has a CA.
    pub cert: Option<CertWatch>,
    /// TLS for the pod's HBONE listener, when the agent has a CA.
    pub hbone_server: Option<Arc<rustls::ServerConfig>>,
}

impl PodContext {
    /// The pod as the source of HBONE tunnels.
    pub fn origin(&self) -> mesh_hbone::client::Origin<'_> {
        mesh_hbone::client::Origin {
            key: &self.key,
            namespace: &self.namespace,
            name: &self.name,
            identity: &self.identity,
            cert: self.cert.as_ref(),
            dial: self,
        }
    }

    /// The pod as policies select it.
    pub fn target(&self) -> Target<'_> {
        Target {
            namespace: &self.namespace,
            labels: &self.labels,
        }
    }
}

/// Tunnels leave from inside the pod's netns (see `agent_connect`).
impl mesh_hbone::client::Dial for PodContext {
    fn dial(
        &self,
        to: SocketAddr,
        timeout: Duration,
    ) -> Pin<Box<dyn Future<Output = io::Result<TcpStream>> + Send + '_>> {
        Box::pin(proxy::connector::agent_connect(self, None, to, timeout))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PodError {
    #[error("pod {pod}: {source}")]
    Netns {
        pod: String,
        source: crate::netns::NetnsError,
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
    pub context: Arc<PodContext>,
    tasks: Vec<JoinHandle<()>>,
    /// Keeps the pod's certificate renewed while the pod is enrolled.
    _cert: Option<CertLease>,
}

impl PodRuntime {
    pub fn datapath_entry(&self) -> PodDatapath {
        PodDatapath {
            key: self.context.key.clone(),
            netns_cookie: self.context.netns_cookie,
            ips: self.context.ips.clone(),
        }
    }

    /// Opens the pod's listeners, then puts it under the datapath. On error
    /// nothing of the pod stays registered.
    pub fn enroll(
        spec: &LocalPod,
        trust_domain: &str,
        relay: proxy::RelayMode,
        state: &Arc<ProxyState>,
    ) -> Result<Self, PodError> {
        let key = spec.key();
        let datapath = &state.datapath;
        let identity = Identity::new(trust_domain, &spec.namespace, &spec.service_account)
            .map_err(|source| PodError::Identity {
                pod: key.clone(),
                source,
            })?;
        let netns = Netns::open(&spec.netns).map_err(|source| PodError::Netns {
            pod: key.clone(),
            source,
        })?;
        let sockets = SocketFactory::new(&netns).map_err(|source| PodError::Netns {
            pod: key.clone(),
            source,
        })?;
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
            cert: lease.as_ref().map(|l| l.watch().clone()),
            hbone_server,
        });
        let want_v6 = spec.ips.iter().any(IpAddr::is_ipv6);
        let open = |port, local_only| {
            listen_dual(&context.sockets, port, local_only, want_v6).map_err(|source| {
                PodError::Listen {
                    pod: key.clone(),
                    port,
                    source,
                }
            })
        };
        let runtime = PodRuntime {
            spec: spec.clone(),
            context: context.clone(),
            tasks: Vec::new(),
            _cert: lease,
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
        if let Err(e) = datapath.enroll(&entry, &netns) {
            let _ = datapath.unenroll(&entry);
            return Err(dp_err(e));
        }

        let mut runtime = runtime;
        for l in outbound {
            runtime.tasks.push(tokio::spawn(proxy::outbound::serve(
                l,
                context.clone(),
                state.clone(),
            )));
        }
        for l in inbound {
            runtime.tasks.push(tokio::spawn(proxy::inbound::serve(
                l,
                context.clone(),
                state.clone(),
            )));
        }
        for l in hbone {
            runtime.tasks.push(tokio::spawn(proxy::hbone_inbound::serve(
                l,
                context.clone(),
                state.clone(),
            )));
        }
        Ok(runtime)
    }
}

impl PodRuntime {
    /// Closes the pod's listeners; connections already accepted go on.
    pub fn stop_accepting(&mut self) {
        for t in self.tasks.drain(..) {
            t.abort();
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
