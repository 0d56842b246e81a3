//! Finding the node agents and reading their status endpoints: in local
//! mode from the agents' config files (each names its node; Node objects
//! in them give the other nodes' addresses), in Kubernetes by listing the
//! agent pods and going through the API server's pod proxy.
use std::{net::SocketAddr, path::PathBuf, time::Duration};

use anyhow::{Context, bail};
use http_body_util::{BodyExt, Empty};
use hyper::{Request, body::Bytes};
use hyper_util::rt::TokioIo;
use k8s_openapi::api::core::v1::Pod;
use kube::{Api, Client, api::ListParams};
use mesh_discovery::NodeConfig;
use tokio::net::TcpStream;

const TIMEOUT: Duration = Duration::from_secs(5);

/// Where one agent's status endpoint is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AgentAddr {
    Direct(SocketAddr),
    /// Pod `name` in the agents' namespace, status port.
    PodProxy {
        pod: String,
        port: u16,
    },
}

#[derive(Debug, Clone)]
pub struct Agent {
    pub node: String,
    pub addr: AgentAddr,
}

/// How the CLI reaches the cluster.
pub enum Cluster {
    Local {
        configs: Vec<PathBuf>,
    },
    Kubernetes {
        client: Client,
        /// Where the agent DaemonSet runs.
        namespace: String,
        selector: String,
        status_port: u16,
    },
}

impl Cluster {
    pub async fn agents(&self) -> anyhow::Result<Vec<Agent>> {
        match self {
            Cluster::Local { configs } => local_agents(configs),
            Cluster::Kubernetes {
                client,
                namespace,
                selector,
                status_port,
            } => {
                let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
                let list = pods
                    .list(&ListParams::default().labels(selector))
                    .await
                    .with_context(|| {
                        format!("listing agent pods in namespace {namespace} ({selector})")
                    })?;
                let mut agents: Vec<Agent> = list
                    .items
                    .into_iter()
                    .filter_map(|p| {
                        let pod = p.metadata.name?;
                        let node = p
                            .spec
                            .and_then(|s| s.node_name)
                            .unwrap_or_else(|| pod.clone());
                        Some(Agent {
                            node,
                            addr: AgentAddr::PodProxy {
                                pod,
                                port: *status_port,
                            },
                        })
                    })
                    .collect();
                agents.sort_by(|a, b| a.node.cmp(&b.node));
                Ok(agents)
            }
        }
    }

    /// GETs `path` from the agent's status endpoint.
    pub async fn get(&self, agent: &Agent, path: &str) -> anyhow::Result<String> {
        match (&agent.addr, self) {
            (AgentAddr::Direct(addr), _) => tokio::time::timeout(TIMEOUT, http_get(*addr, path))
                .await
                .with_context(|| format!("{addr}: no answer within {}s", TIMEOUT.as_secs()))?,
            (
                AgentAddr::PodProxy { pod, port },
                Cluster::Kubernetes {
                    client, namespace, ..
                },
            ) => {
                let uri = format!("/api/v1/namespaces/{namespace}/pods/{pod}:{port}/proxy{path}");
                let req = http::Request::get(&uri).body(Vec::new())?;
                tokio::time::timeout(TIMEOUT, client.request_text(req))
                    .await
                    .with_context(|| format!("pod {pod}: no answer within {}s", TIMEOUT.as_secs()))?
                    .with_context(|| format!("GET {uri}"))
            }
            (AgentAddr::PodProxy { .. }, Cluster::Local { .. }) => {
                bail!("a pod-proxy agent address needs Kubernetes mode")
            }
        }
    }
}

/// Every node the config files name, with its agent's status address:
/// the node's first address from a Node object, else (for the file's own
/// node) the configured status address, loopback if it is a wildcard.
fn local_agents(configs: &[PathBuf]) -> anyhow::Result<Vec<Agent>> {
    let mut agents: Vec<Agent> = Vec::new();
    for file in configs {
        let cfg = NodeConfig::load(file, None)?;
        let status = cfg.agent.telemetry.status_addr;
        let own = if status.ip().is_unspecified() {
            SocketAddr::new([127, 0, 0, 1].into(), status.port())
        } else {
            status
        };
        let mut nodes: Vec<(String, SocketAddr)> = cfg
            .store
            .nodes
            .iter()
            .filter_map(|(name, ips)| {
                ips.first()
                    .map(|ip| (name.clone(), SocketAddr::new(*ip, status.port())))
            })
            .collect();
        if !nodes.iter().any(|(n, _)| *n == cfg.agent.node_name) {
            nodes.push((cfg.agent.node_name.clone(), own));
        }
        for (node, addr) in nodes {
            if !agents.iter().any(|a| a.node == node) {
                agents.push(Agent {
                    node,
                    addr: AgentAddr::Direct(addr),
                });
            }
        }
    }
    agents.sort_by(|a, b| a.node.cmp(&b.node));
    Ok(agents)
}

async fn http_get(addr: SocketAddr, path: &str) -> anyhow::Result<String> {
    let stream = TcpStream::connect(addr)
        .await
        .with_context(|| format!("connecting to {addr}"))?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    let req = Request::get(path)
        .header(hyper::header::HOST, addr.to_string())
        .body(Empty::<Bytes>::new())?;
    let resp = sender.send_request(req).await?;
    let status = resp.status();
    let body = resp.into_body().collect().await?.to_bytes();
    let text = String::from_utf8_lossy(&body).into_owned();
    if !status.is_success() {
        bail!("GET http://{addr}{path}: {status}: {}", text.trim());
    }
    Ok(text)
}
