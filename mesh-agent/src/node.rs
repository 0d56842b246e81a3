//! The node agent's life: check the node, open (or adopt) the datapath,
//! enroll the pods the config names, keep following the config file, and on
//! exit leave the datapath pinned so enrolled pods fail closed until an
//! agent returns.
use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    sync::{Arc, RwLock},
    time::Duration,
};

use anyhow::Context;
use tokio::signal::unix::{SignalKind, signal};
use tracing::{error, info, warn};

use crate::{
    config::{CaSettings, NodeConfig},
    datapath::Datapath,
    flows,
    identity::{client::CaClient, manager::CertManager},
    netns::Netns,
    pod::PodRuntime,
    preflight,
    proxy::{
        RelayMode,
        state::{MeshView, Mtls, ProxyState},
    },
    tls::TrustBundle,
};

const CONFIG_POLL: Duration = Duration::from_millis(500);
const POOL_SWEEP: Duration = Duration::from_secs(5);
const CERT_READY: Duration = Duration::from_secs(10);

/// Netns cookie → pod key, for naming kernel records.
#[derive(Debug, Default)]
pub struct PodDirectory(RwLock<BTreeMap<u64, String>>);

impl PodDirectory {
    pub fn by_cookie(&self, cookie: u64) -> Option<String> {
        self.0.read().unwrap().get(&cookie).cloned()
    }
    fn set(&self, pods: &BTreeMap<String, PodRuntime>) {
        *self.0.write().unwrap() = pods
            .values()
            .map(|p| (p.context.netns_cookie, p.context.key.clone()))
            .collect();
    }
}

/// Everything `mesh-agent node` checks before it touches the kernel.
pub fn check(config: &NodeConfig) -> anyhow::Result<()> {
    preflight::check_privileges()?;
    preflight::check_btf()?;
    preflight::check_cgroup_root(&config.agent.cgroup_root)?;
    preflight::check_bpffs(&config.agent.bpffs_root)?;
    for pod in config.enrolled_pods() {
        Netns::open(&pod.netns).with_context(|| format!("pod {}", pod.key()))?;
    }
    if let Some(ca) = &config.agent.ca {
        // Builds what the agent would: the trust bundle and the CA client.
        mtls(ca, &config.agent.trust_domain)?;
    }
    Ok(())
}

pub struct Node {
    config_path: PathBuf,
    config: NodeConfig,
    datapath: Arc<Datapath>,
    state: Arc<ProxyState>,
    pods: BTreeMap<String, PodRuntime>,
    directory: Arc<PodDirectory>,
}

/// The CA client, the trust bundle and the certificate manager.
fn mtls(settings: &CaSettings, trust_domain: &str) -> anyhow::Result<Mtls> {
    let client = CaClient::new(settings)?;
    let bundle = TrustBundle::from_pem(client.root_pem(), trust_domain).with_context(|| {
        format!(
            "AgentConfig.ca.rootCertFile {}",
            settings.root_cert_file.display()
        )
    })?;
    Ok(Mtls {
        bundle,
        certs: Arc::new(CertManager::new(Arc::new(client))),
        pool: Default::default(),
    })
}

impl Node {
    pub fn start(config_path: &Path) -> anyhow::Result<Self> {
        let config = NodeConfig::load(config_path)?;
        check(&config)?;
        let pin_dir = config.pin_dir();
        let datapath = Arc::new(
            Datapath::open(&config.agent, &pin_dir)
                .with_context(|| format!("datapath for node {}", config.agent.node_name))?,
        );
        info!(
            node = %config.agent.node_name,
            pin_dir = %pin_dir.display(),
            cgroup_root = %config.agent.cgroup_root.display(),
            adopted = datapath.adopted(),
            splice = config.agent.datapath.splice,
            "datapath attached"
        );
        let mtls = match &config.agent.ca {
            Some(ca) => Some(mtls(ca, &config.agent.trust_domain)?),
            None => {
                warn!(
                    "no CA configured (AgentConfig.ca): traffic between nodes is forwarded as plaintext"
                );
                None
            }
        };
        let state = Arc::new(ProxyState::new(datapath.clone(), mtls));
        let mut node = Node {
            config_path: config_path.to_owned(),
            config: NodeConfig {
                agent: config.agent.clone(),
                pods: Vec::new(),
                workloads: Vec::new(),
                policies: Default::default(),
            },
            datapath,
            state,
            pods: BTreeMap::new(),
            directory: Arc::default(),
        };
        // A pod that cannot be enrolled is logged and retried on the next
        // config change; the node's other pods are served meanwhile.
        if let Err(e) = node.apply(config) {
            error!(error = format!("{e:#}"), "some pods are not enrolled");
        }
        let keep: Vec<_> = node.pods.values().map(PodRuntime::datapath_entry).collect();
        for removed in node.datapath.sweep(&keep)? {
            info!(node = %node.config.agent.node_name, %removed, "removed stale datapath state");
        }
        Ok(node)
    }

    /// Brings enrolled pods in line with `config`: new pods enrolled, gone or
    /// changed ones unenrolled first. A pod that fails to enroll is logged
    /// and retried on the next change; the others proceed.
    fn apply(&mut self, config: NodeConfig) -> anyhow::Result<()> {
        if config.agent != self.config.agent {
            warn!("AgentConfig changed; node settings apply at the next agent start");
        }
        // New policies and workloads hold for connections from now on.
        self.state.set_view(MeshView::new(&config));
        let wanted: BTreeMap<String, _> = config
            .enrolled_pods()
            .map(|p| (p.key(), p.clone()))
            .collect();
        let stale: Vec<String> = self
            .pods
            .iter()
            .filter(|(k, rt)| wanted.get(*k) != Some(&rt.spec))
            .map(|(k, _)| k.clone())
            .collect();
        for key in stale {
            if let Some(rt) = self.pods.remove(&key) {
                self.datapath
                    .unenroll(&rt.datapath_entry())
                    .with_context(|| format!("unenrolling pod {key}"))?;
                drop(rt);
                info!(pod = %key, "pod unenrolled");
            }
        }
        let mut first_error = None;
        for (key, spec) in wanted {
            if self.pods.contains_key(&key) {
                continue;
            }
            let relay = RelayMode::for_sk_msg_splicing(self.config.agent.datapath.splice);
            match PodRuntime::enroll(&spec, &self.config.agent.trust_domain, relay, &self.state) {
                Ok(rt) => {
                    info!(pod = %key, netns = %spec.netns.display(), netns_cookie = rt.context.netns_cookie, "pod enrolled");
                    self.pods.insert(key, rt);
                }
                Err(e) => {
                    error!(pod = %key, error = %e, "pod not enrolled");
                    first_error.get_or_insert(e);
                }
            }
        }
        self.directory.set(&self.pods);
        self.state
            .set_local_pods(self.pods.values().map(|p| &p.context));
        self.config = config;
        match first_error {
            Some(e) => Err(e.into()),
            None => Ok(()),
        }
    }

    /// Ready means able to carry mTLS: wait (bounded) for the enrolled
    /// pods' first certificates. Traffic is served meanwhile; tunnels wait
    /// for certificates on their own.
    async fn wait_for_certificates(&self) {
        let certs: Vec<_> = self
            .pods
            .values()
            .filter_map(|p| p.context.cert.clone())
            .collect();
        let all = async {
            for mut cert in certs {
                let _ = cert.wait_for(|c| c.is_some()).await;
            }
        };
        if tokio::time::timeout(CERT_READY, all).await.is_err() {
            warn!(
                timeout_s = CERT_READY.as_secs(),
                "not every enrolled pod has a certificate yet; is the CA reachable? Serving anyway"
            );
        }
    }

    /// Serves until SIGTERM or SIGINT, following changes to the config file.
    pub async fn run(mut self) -> anyhow::Result<()> {
        if let Some(ring) = self.datapath.take_flow_events() {
            tokio::spawn(flows::run(ring, self.directory.clone()));
        }
        if let Some(logger) = self.datapath.take_logger() {
            tokio::spawn(async move {
                // SAFETY: the AsyncFd owns the logger and with it the fd it registers.
                let mut fd = match unsafe { tokio::io::unix::AsyncFd::register(logger) } {
                    Ok(fd) => fd,
                    Err(_) => return,
                };
                while let Ok(mut guard) = fd.readable_mut().await {
                    guard.get_inner_mut().flush();
                    guard.clear_ready();
                }
            });
        }
        let mut term = signal(SignalKind::terminate())?;
        let mut int = signal(SignalKind::interrupt())?;
        let mut last_text = std::fs::read_to_string(&self.config_path).unwrap_or_default();
        let mut tick = tokio::time::interval(CONFIG_POLL);
        if self.state.mtls.is_some() {
            let state = self.state.clone();
            tokio::spawn(async move {
                let mut sweep = tokio::time::interval(POOL_SWEEP);
                loop {
                    sweep.tick().await;
                    if let Some(m) = &state.mtls {
                        m.pool.sweep();
                    }
                }
            });
        }
        self.wait_for_certificates().await;
        info!(
            node = %self.config.agent.node_name,
            enrolled = self.pods.len(),
            "agent ready"
        );
        loop {
            tokio::select! {
                _ = term.recv() => break,
                _ = int.recv() => break,
                _ = tick.tick() => {
                    let Ok(text) = std::fs::read_to_string(&self.config_path) else { continue };
                    if text == last_text {
                        continue;
                    }
                    last_text = text.clone();
                    match NodeConfig::parse(&self.config_path, &text) {
                        Ok(cfg) => {
                            if let Err(e) = self.apply(cfg) {
                                error!(error = format!("{e:#}"), "config applied with errors");
                            } else {
                                info!(enrolled = self.pods.len(), "config reloaded");
                            }
                        }
                        Err(e) => error!(error = %e, "config rejected; the last good config stays in force"),
                    }
                }
            }
        }
        info!(
            node = %self.config.agent.node_name,
            "agent stopping; the datapath stays pinned and enrolled pods fail closed until an agent returns"
        );
        Ok(())
    }
}
