//! One enrolled pod as the agent runs it: a socket factory in its netns, the
//! three listeners, and their accept tasks. Dropping it stops the tasks and
//! closes the listeners; `Node` removes the datapath entries.
use std::{net::IpAddr, sync::Arc};

use mesh_common::{HBONE_PORT, INBOUND_PORT, OUTBOUND_PORT};
use tokio::task::JoinHandle;

use crate::{
    config::LocalPod,
    datapath::{Datapath, PodDatapath},
    netns::{Netns, SocketFactory},
    proxy::{self, Connector, listeners::listen_dual},
};

/// What connection handlers know about the pod they serve.
#[derive(Debug)]
pub struct PodContext {
    /// `<namespace>/<name>`.
    pub key: String,
    pub namespace: String,
    pub service_account: String,
    pub ips: Vec<IpAddr>,
    pub netns_cookie: u64,
    pub sockets: SocketFactory,
    /// How this pod's TCP-to-TCP relays move bytes.
    pub relay: proxy::RelayMode,
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
    pub fn enroll<C: Connector>(
        spec: &LocalPod,
        relay: proxy::RelayMode,
        datapath: &Arc<Datapath>,
        connector: &Arc<C>,
    ) -> Result<Self, PodError> {
        let key = spec.key();
        let netns = Netns::open(&spec.netns).map_err(|source| PodError::Netns {
            pod: key.clone(),
            source,
        })?;
        let sockets =
            SocketFactory::spawn(&netns, &spec.name).map_err(|source| PodError::Netns {
                pod: key.clone(),
                source,
            })?;
        let context = Arc::new(PodContext {
            key: key.clone(),
            namespace: spec.namespace.clone(),
            service_account: spec.service_account.clone(),
            ips: spec.ips.clone(),
            netns_cookie: sockets.cookie(),
            sockets,
            relay,
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
        let outbound = open(OUTBOUND_PORT, true)?;
        let inbound = open(INBOUND_PORT, false)?;
        let hbone = open(HBONE_PORT, false)?;

        let runtime = PodRuntime {
            spec: spec.clone(),
            context: context.clone(),
            tasks: Vec::new(),
        };
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
                datapath.clone(),
                connector.clone(),
            )));
        }
        for l in inbound {
            runtime
                .tasks
                .push(tokio::spawn(proxy::inbound::serve(l, context.clone())));
        }
        for l in hbone {
            runtime
                .tasks
                .push(tokio::spawn(proxy::hbone::serve(l, context.clone())));
        }
        Ok(runtime)
    }
}

impl Drop for PodRuntime {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}
