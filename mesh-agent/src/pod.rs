//! One enrolled pod as connection handlers see it: its identity, labels,
//! addresses, a socket factory in its netns, its certificate and HBONE TLS.
//! How a pod is enrolled and run is `enrollment`'s.
use std::{
    collections::BTreeMap,
    future::Future,
    io,
    net::{IpAddr, SocketAddr},
    pin::Pin,
    sync::{Arc, RwLock},
    time::Duration,
};

use mesh_identity::{Identity, tls::CertWatch};
use mesh_policy::Target;
use tokio::net::TcpStream;

use crate::{netns::SocketFactory, proxy};

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
    /// Which source the pod's app sees on deliveries.
    pub delivery: crate::source_ip::Delivery,
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

/// The pod's context as of now. A label change swaps in a new context
/// while the listeners, the certificate and the datapath entries stay:
/// each accepted connection takes the context of its moment, so a relabel
/// never opens a window in which the pod's traffic bypasses the agent.
#[derive(Clone)]
pub struct CurrentPod(Arc<RwLock<Arc<PodContext>>>);

impl CurrentPod {
    pub(crate) fn new(context: Arc<PodContext>) -> Self {
        Self(Arc::new(RwLock::new(context)))
    }

    pub fn get(&self) -> Arc<PodContext> {
        self.0.read().unwrap().clone()
    }

    pub(crate) fn set(&self, context: Arc<PodContext>) {
        *self.0.write().unwrap() = context;
    }
}

/// Tunnels leave from inside the pod's netns (see `agent_connect`).
impl mesh_hbone::client::Dial for PodContext {
    fn dial(
        &self,
        to: SocketAddr,
        timeout: Duration,
    ) -> Pin<Box<dyn Future<Output = io::Result<TcpStream>> + Send + '_>> {
        Box::pin(proxy::connector::agent_connect(
            &self.sockets,
            None,
            to,
            timeout,
        ))
    }
}
