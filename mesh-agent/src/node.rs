//! The node agent's life: check the node, open (or adopt) the datapath,
//! enroll the pods discovery says are this node's, keep following it, and on
//! exit leave the datapath pinned so enrolled pods fail closed until an
//! agent returns.
use std::{collections::BTreeMap, path::Path, sync::Arc, time::Duration};

use anyhow::Context;
use mesh_config::{AgentConfig, CaSettings, DiscoveryMode, LimitSettings};
use mesh_discovery::{
    LocalPod, NodeConfig, Published, Publisher, Source, kubernetes::KubernetesSource,
    local::LocalFile, view::MeshView,
};
use mesh_hbone::buffers::BufferBudget;
use mesh_identity::{client::CaClient, manager::CertManager, tls::TrustBundle};
use mesh_telemetry::Telemetry;
use tokio::{
    signal::unix::{SignalKind, signal},
    sync::watch,
};
use tracing::{error, info, warn};

use crate::{
    admin::{Listeners, LogControl},
    datapath::Datapath,
    enrollment::PodRuntime,
    flows,
    handover::{self, Predecessor},
    health::NodeHealth,
    netns::Netns,
    netns_finder, preflight,
    proxy::{
        RelayMode,
        own_ports::OwnPorts,
        state::{Mtls, ProxyState},
    },
};

const SYNC_READY: Duration = Duration::from_secs(30);
/// How often a node that is not ready because policies are not synced
/// says why (the cause can last: a missing RBAC rule, a missing CRD).
const NOT_READY_LOG: Duration = Duration::from_secs(30);
const RETRY_PENDING: Duration = Duration::from_secs(1);
const POOL_SWEEP: Duration = Duration::from_secs(5);
const CERT_READY: Duration = Duration::from_secs(10);
/// How often the byte window is sampled and idle flow series expire.
const TELEMETRY_TICK: Duration = Duration::from_secs(5);

/// Everything `mesh-agent node` checks before it touches the kernel.
pub fn check(config: &NodeConfig) -> anyhow::Result<()> {
    preflight::check_privileges()?;
    preflight::check_btf()?;
    preflight::check_cgroup_root(&config.agent.cgroup_root)?;
    preflight::check_bpffs(&config.agent.bpffs_root)?;
    for pod in config.enrolled_pods() {
        Netns::open(&pod.netns).with_context(|| format!("pod {}", pod.key()))?;
    }
    if config.agent.discovery == DiscoveryMode::Kubernetes
        && !config
            .agent
            .proc_root
            .join("1")
            .join("ns")
            .join("net")
            .exists()
    {
        anyhow::bail!(
            "AgentConfig.procRoot {}: no /1/ns/net there; point it at the host's /proc (the DaemonSet needs hostPID)",
            config.agent.proc_root.display()
        );
    }
    if let Some(ca) = &config.agent.ca {
        // Builds what the agent would: the trust bundle and the CA client.
        mtls(ca, &config.agent.trust_domain, &config.agent.limits)?;
    }
    Ok(())
}

/// Where the cluster's objects come from, ready to run.
enum Discovery {
    Local(Box<LocalFile>),
    Kubernetes(KubernetesSource),
}

pub struct Node {
    agent: AgentConfig,
    datapath: Arc<Datapath>,
    state: Arc<ProxyState>,
    /// Enrolled pods by uid.
    pods: BTreeMap<String, PodRuntime>,
    views: watch::Receiver<Published>,
    discovery: Option<(Discovery, Publisher)>,
    /// Pods that should be enrolled but are not yet (netns not found, an
    /// address claimed by another pod, enrolling failed), with the reason:
    /// retried on a timer, reported in `mesh status` and the log.
    pending: BTreeMap<String, String>,
    health: Arc<NodeHealth>,
    /// The admin, status and metrics listeners (bound at start, or, when
    /// taking over, once the running agent has closed its own).
    endpoints: Option<(Option<Listeners>, LogControl)>,
    /// `--handover-dir`: this agent hands over to a successor, and asked
    /// a running agent at start.
    handover: Option<handover::Settings>,
    /// The running agent this one takes over from, until it has.
    predecessor: Option<Predecessor>,
    /// Serves successors once this agent is the node's.
    successors: Option<handover::Server>,
    /// CNI: what pods' sandboxes announced, and their requests (crate::cni).
    cni: crate::cni::NodeCni,
}

/// The CA client, the trust bundle and the certificate manager.
fn mtls(settings: &CaSettings, trust_domain: &str, limits: &LimitSettings) -> anyhow::Result<Mtls> {
    let client = CaClient::new(settings)?;
    let bundle = TrustBundle::from_pem(client.root_pem(), trust_domain).with_context(|| {
        format!(
            "AgentConfig.ca.rootCertFile {}",
            settings.root_cert_file.display()
        )
    })?;
    Ok(Mtls {
        certs: Arc::new(CertManager::new(Arc::new(client))),
        client: mesh_hbone::client::Client {
            bundle,
            pool: Default::default(),
            buffers: BufferBudget::new(limits.buffer_budget_bytes),
            timeouts: mesh_hbone::client::Timeouts {
                connect: limits.connect_timeout,
                handshake: limits.handshake_timeout,
            },
        },
    })
}

/// What the view asks of this node's pods.
#[derive(Default)]
struct Wanted {
    pods: BTreeMap<String, LocalPod>,
    /// Netns handles opened while finding pods (Kubernetes mode), by uid.
    handles: std::collections::HashMap<String, Netns>,
    /// Pods that should be enrolled and cannot be yet, by key: the reason.
    pending: BTreeMap<String, String>,
}

/// A pod refused because another pod holds one of its addresses.
#[derive(Debug, PartialEq, Eq)]
struct RefusedClaim {
    pod: String,
    ip: std::net::IpAddr,
    holder: String,
}

/// Two pods of this node claiming one address (a finished pod's IP reused
/// before its object says so, or a bad object): the datapath maps hold one
/// pod per address, so only one may have it. An enrolled pod keeps what it
/// holds; among new claims the first by uid wins, so the outcome does not
/// depend on map order. Refused pods wait (reported) until the address is
/// free; no pod's unenrollment can then remove another pod's entries.
fn resolve_address_claims(
    enrolled: &BTreeMap<&str, &LocalPod>,
    wanted: BTreeMap<String, LocalPod>,
) -> (BTreeMap<String, LocalPod>, Vec<RefusedClaim>) {
    let mut holders: std::collections::HashMap<std::net::IpAddr, String> = enrolled
        .values()
        .flat_map(|p| p.ips.iter().map(|ip| (ip.to_canonical(), p.key())))
        .collect();
    let mut kept = BTreeMap::new();
    let mut refused = Vec::new();
    for (uid, pod) in wanted {
        if enrolled.contains_key(uid.as_str()) {
            kept.insert(uid, pod);
            continue;
        }
        let conflict = pod
            .ips
            .iter()
            .find_map(|ip| holders.get(&ip.to_canonical()).map(|h| (*ip, h.clone())));
        match conflict {
            Some((ip, holder)) => refused.push(RefusedClaim {
                pod: pod.key(),
                ip,
                holder,
            }),
            None => {
                for ip in &pod.ips {
                    holders.insert(ip.to_canonical(), pod.key());
                }
                kept.insert(uid, pod);
            }
        }
    }
    (kept, refused)
}

/// Whether two specs of one pod enroll it the same way: the same netns,
/// addresses and identity. Labels and annotations may differ; a change in
/// them alone must not detach the pod from the datapath, even for a moment.
fn same_enrollment(a: &LocalPod, b: &LocalPod) -> bool {
    let LocalPod {
        uid,
        name,
        namespace,
        service_account,
        ips,
        netns,
        labels: _,
    } = a;
    *uid == b.uid
        && *name == b.name
        && *namespace == b.namespace
        && *service_account == b.service_account
        && *ips == b.ips
        && *netns == b.netns
}

impl Node {
    pub async fn start(
        config_path: &Path,
        node_name: Option<&str>,
        log: LogControl,
    ) -> anyhow::Result<Self> {
        Self::start_with(config_path, node_name, log, None).await
    }

    /// As `start`; with `handover`, first takes over from the agent
    /// running on this node, if one answers (see `crate::handover`).
    pub async fn start_with(
        config_path: &Path,
        node_name: Option<&str>,
        log: LogControl,
        handover: Option<handover::Settings>,
    ) -> anyhow::Result<Self> {
        let text = mesh_discovery::file::read(config_path)?;
        let config = NodeConfig::parse(config_path, &text, node_name)?;
        check(&config)?;
        let predecessor = match &handover {
            Some(settings) => Predecessor::ask(settings).await?,
            None => None,
        };
        // The running agent holds them until it stops accepting.
        let listeners = match predecessor {
            None => Some(Listeners::bind(&config.agent.telemetry).await?),
            Some(_) => None,
        };
        let (discovery, publisher, views) = match config.agent.discovery {
            DiscoveryMode::Local => {
                let first = Published {
                    view: Arc::new(config.view()),
                    synced: true,
                };
                let (publisher, views) = Publisher::new(config.view_settings(), first);
                let source = LocalFile::new(
                    config_path.to_owned(),
                    node_name.map(str::to_owned),
                    config.agent.clone(),
                    text,
                );
                (Discovery::Local(Box::new(source)), publisher, views)
            }
            DiscoveryMode::Kubernetes => {
                let client = kube::Client::try_default().await.context(
                    "AgentConfig.discovery is kubernetes but no cluster is reachable (in-cluster service account or KUBECONFIG)",
                )?;
                let first = Published {
                    view: Arc::default(),
                    synced: false,
                };
                let (publisher, views) = Publisher::new(config.view_settings(), first);
                (
                    Discovery::Kubernetes(KubernetesSource::new(client)),
                    publisher,
                    views,
                )
            }
        };
        let pin_dir = config.pin_dir();
        let datapath = Arc::new(
            Datapath::open_beside(&config.agent, &pin_dir, predecessor.is_some())
                .with_context(|| format!("datapath for node {}", config.agent.node_name))?,
        );
        info!(
            node = %config.agent.node_name,
            pin_dir = %pin_dir.display(),
            cgroup_root = %config.agent.cgroup_root.display(),
            adopted = datapath.adopted(),
            splice = config.agent.datapath.splice,
            discovery = ?config.agent.discovery,
            "datapath attached"
        );
        let mtls = match &config.agent.ca {
            Some(ca) => Some(mtls(ca, &config.agent.trust_domain, &config.agent.limits)?),
            None => {
                warn!(
                    "no CA configured (AgentConfig.ca): traffic between nodes is forwarded as plaintext, and pods under PeerAuthentication STRICT refuse plaintext"
                );
                None
            }
        };
        let telemetry = Arc::new(Telemetry::new(&config.agent.telemetry));
        let state = Arc::new(ProxyState::new(
            datapath.clone(),
            mtls,
            telemetry,
            config.agent.limits.clone(),
            OwnPorts::new(&config.agent.telemetry),
        ));
        let health = NodeHealth::new(
            config.agent.node_name.clone(),
            format!("{:?}", config.agent.discovery).to_lowercase(),
            config.agent.cgroup_root.clone(),
            state.clone(),
        );
        let mut node = Node {
            // Taking over: bound once the running agent has stopped serving it.
            cni: match predecessor {
                None => crate::cni::NodeCni::start(&config.agent, views.clone()).await?,
                Some(_) => crate::cni::NodeCni::idle(),
            },
            agent: config.agent,
            datapath,
            state,
            pods: BTreeMap::new(),
            views,
            discovery: Some((discovery, publisher)),
            pending: BTreeMap::new(),
            health,
            endpoints: Some((listeners, log)),
            successors: match (&handover, &predecessor) {
                (Some(settings), None) => Some(handover::Server::start(settings, false)?),
                _ => None,
            },
            handover,
            predecessor,
        };
        node.reconcile();
        // Pods the running agent serves that this one has not enrolled
        // (yet) keep their datapath entries until it has taken over.
        if node.views.borrow().synced && node.predecessor.is_none() {
            node.sweep_stale()?;
        }
        Ok(node)
    }

    /// Removes what a previous agent pinned for pods that are no longer
    /// enrolled. Only against a synced view: before that, every pod would
    /// look gone, and removing its entries would let it bypass the mesh.
    fn sweep_stale(&self) -> anyhow::Result<()> {
        let keep: Vec<_> = self.pods.values().map(PodRuntime::datapath_entry).collect();
        for removed in self.datapath.sweep(&keep)? {
            info!(node = %self.agent.node_name, %removed, "removed stale datapath state");
        }
        Ok(())
    }

    /// The enrolled pods of this node that the current view asks for, with
    /// their netns (from the file, or found under /proc by uid and opened
    /// here), and those that cannot be enrolled yet, with the reason.
    fn wanted(&self, view: &MeshView) -> Wanted {
        // CNI: a pod whose sandbox announced its netns is enrolled there.
        let (announced, on_node) = self.cni.on_node(view, &self.agent.node_name);
        let mut wanted = Wanted {
            pods: announced,
            ..Wanted::default()
        };
        match self.agent.discovery {
            DiscoveryMode::Local => {
                for w in on_node {
                    if let Some(pod) = LocalPod::from_annotation(w) {
                        wanted.pods.insert(w.uid.clone(), pod);
                    }
                }
            }
            DiscoveryMode::Kubernetes => {
                let uids: Vec<&str> = on_node
                    .iter()
                    .filter(|w| !self.pods.contains_key(&w.uid))
                    .map(|w| w.uid.as_str())
                    .collect();
                let found = netns_finder::find(&self.agent.proc_root, &uids);
                for w in on_node {
                    if let Some(rt) = self.pods.get(&w.uid) {
                        // Enrolled: its netns is the handle the runtime
                        // holds; the /proc path is never opened again.
                        wanted
                            .pods
                            .insert(w.uid.clone(), LocalPod::new(w, rt.spec.netns.clone()));
                        continue;
                    }
                    let Some(f) = found.get(&w.uid) else {
                        wanted.pending.insert(
                            w.key(),
                            "no process of the pod found under /proc yet (its netns is unknown)"
                                .into(),
                        );
                        continue;
                    };
                    match Netns::open(&f.path).map(|n| (n.inode().ok(), n)) {
                        Ok((Some(inode), netns)) if inode == f.inode => {
                            wanted.handles.insert(w.uid.clone(), netns);
                            wanted
                                .pods
                                .insert(w.uid.clone(), LocalPod::new(w, f.path.clone()));
                        }
                        Ok(_) => {
                            wanted.pending.insert(
                                w.key(),
                                format!("{} changed while it was opened (the process exited and its pid was reused); retrying", f.path.display()),
                            );
                        }
                        Err(e) => {
                            wanted.pending.insert(w.key(), e.to_string());
                        }
                    }
                }
            }
        }
        wanted
    }

    /// Brings enrolled pods in line with the current view: gone or changed
    /// pods unenrolled first, then new ones enrolled. A pod that fails to
    /// enroll is logged and retried; the others proceed.
    fn reconcile(&mut self) {
        let started = std::time::Instant::now();
        let view = self.views.borrow_and_update().view.clone();
        // New policies and workloads hold for connections from now on.
        self.state.set_view(view.clone());
        let Wanted {
            pods: wanted,
            mut handles,
            mut pending,
        } = self.wanted(&view);
        let mut stale = Vec::new();
        for (uid, rt) in self.pods.iter_mut() {
            match wanted.get(uid) {
                Some(spec) if *spec == rt.spec => {}
                // Labels or annotations only: the pod stays captured.
                Some(spec) if same_enrollment(spec, &rt.spec) => {
                    rt.relabel(spec);
                    info!(pod = %spec.key(), "pod labels changed; still enrolled");
                }
                _ => stale.push(uid.clone()),
            }
        }
        for uid in stale {
            if let Some(rt) = self.pods.remove(&uid) {
                let key = rt.spec.key();
                // Re-enrolled in the same netns (new addresses, a new
                // service account): the handle is kept, never reopened.
                if wanted.get(&uid).is_some_and(|w| w.netns == rt.spec.netns)
                    && let Ok(netns) = rt.netns().try_clone()
                {
                    handles.insert(uid.clone(), netns);
                }
                if let Err(e) = self.datapath.unenroll(&rt.datapath_entry()) {
                    error!(pod = %key, error = %e, "unenrolling failed");
                }
                drop(rt);
                info!(pod = %key, "pod unenrolled");
            }
        }
        let enrolled: BTreeMap<&str, &LocalPod> = self
            .pods
            .iter()
            .map(|(uid, rt)| (uid.as_str(), &rt.spec))
            .collect();
        let (wanted, refused) = resolve_address_claims(&enrolled, wanted);
        for r in refused {
            warn!(pod = %r.pod, ip = %r.ip, holder = %r.holder, "pod not enrolled: its address belongs to another enrolled pod of this node; it is enrolled once the other is gone");
            pending.insert(
                r.pod,
                format!("address {} is claimed by pod {}", r.ip, r.holder),
            );
        }
        let relay = RelayMode::for_sk_msg_splicing(self.agent.datapath.splice);
        let source_ip = crate::source_ip::Settings::new(&self.agent);
        for (uid, spec) in wanted {
            if self.pods.contains_key(&uid) {
                continue;
            }
            let netns = handles.remove(&uid);
            let inherited = match (&mut self.predecessor, &netns) {
                (Some(p), Some(n)) => crate::netns::SocketFactory::new(n)
                    .ok()
                    .and_then(|f| p.take(&uid, f.cookie())),
                (Some(p), None) => Netns::open(&spec.netns)
                    .ok()
                    .and_then(|n| crate::netns::SocketFactory::new(&n).ok())
                    .and_then(|f| p.take(&uid, f.cookie())),
                (None, _) => None,
            };
            match PodRuntime::enroll(
                &spec,
                netns,
                &self.agent.trust_domain,
                relay,
                &source_ip,
                &self.state,
                inherited,
            ) {
                Ok(rt) => {
                    info!(pod = %spec.key(), netns = %spec.netns.display(), netns_cookie = rt.context().netns_cookie, "pod enrolled");
                    self.pods.insert(uid, rt);
                }
                Err(e) => {
                    // Logged below when the reason is new, not on every
                    // retry (once a second).
                    pending.insert(spec.key(), e.to_string());
                }
            }
        }
        let contexts: Vec<_> = self.pods.values().map(PodRuntime::context).collect();
        self.state.local.set(contexts.iter());
        for (pod, reason) in &pending {
            if self.pending.get(pod) != Some(reason) {
                warn!(pod = %pod, reason = %reason, "pod should be enrolled but is not; retrying");
            }
        }
        self.health.set_pending(
            pending
                .iter()
                .map(|(pod, reason)| format!("{pod}: {reason}"))
                .collect(),
        );
        self.pending = pending;
        info!(
            enrolled = self.pods.len(),
            pending = self.pending.len(),
            tasks = tokio::runtime::Handle::current()
                .metrics()
                .num_alive_tasks(),
            apply_us = started.elapsed().as_micros() as u64,
            "view applied"
        );
    }

    /// Ready means able to carry mTLS: wait (bounded) for the enrolled
    /// pods' first certificates. Traffic is served meanwhile; tunnels wait
    /// for certificates on their own.
    async fn wait_for_certificates(&self) {
        let certs: Vec<_> = self
            .pods
            .values()
            .filter_map(|p| p.context().cert.clone())
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

    /// Waits (bounded) until the source has seen the whole cluster once,
    /// then drops stale pinned state.
    async fn wait_for_sync(&mut self) {
        if self.views.borrow().synced {
            return;
        }
        let deadline = tokio::time::Instant::now() + SYNC_READY;
        while !self.views.borrow().synced {
            match tokio::time::timeout_at(deadline, self.views.changed()).await {
                Ok(Ok(())) => {
                    self.reconcile();
                    if self.views.borrow().synced
                        && self.predecessor.is_none()
                        && let Err(e) = self.sweep_stale()
                    {
                        error!(
                            error = format!("{e:#}"),
                            "removing stale datapath state failed"
                        );
                    }
                }
                Ok(Err(_)) => return,
                Err(_) => {
                    warn!(
                        timeout_s = SYNC_READY.as_secs(),
                        "discovery has not listed every kind yet; serving what is known (inbound traffic to pods only once policies are listed)"
                    );
                    return;
                }
            }
        }
    }

    /// Serves until SIGTERM or SIGINT, following the discovery source, then
    /// drains. Every background task is supervised: one that ends (they run
    /// for the agent's life) fails the agent, so it is restarted instead of
    /// reporting ready while serving nothing.
    pub async fn run(mut self) -> anyhow::Result<()> {
        let mut tasks = tokio::task::JoinSet::new();
        if let Some(ring) = self.datapath.take_flow_events() {
            let state = self.state.clone();
            tasks.spawn(async move {
                flows::run(ring, state).await;
                "flow events"
            });
        }
        match self.endpoints.take() {
            Some((Some(listeners), log)) => listeners.spawn(self.health.clone(), log, &mut tasks),
            // Taking over: bound once the running agent has closed them.
            waiting => self.endpoints = waiting,
        }
        {
            let telemetry = self.state.telemetry.clone();
            tasks.spawn(async move {
                let mut tick = tokio::time::interval(TELEMETRY_TICK);
                loop {
                    tick.tick().await;
                    telemetry.sample();
                    mesh_memory::release_free_heap();
                    let expired = telemetry.flows.expire();
                    if expired > 0 {
                        info!(expired, "idle flow series dropped");
                    }
                }
            });
        }
        if let Some(logger) = self.datapath.take_logger() {
            tasks.spawn(async move {
                // SAFETY: the AsyncFd owns the logger and with it the fd it registers.
                let mut fd = match unsafe { tokio::io::unix::AsyncFd::register(logger) } {
                    Ok(fd) => fd,
                    Err(_) => return "kernel log",
                };
                while let Ok(mut guard) = fd.readable_mut().await {
                    guard.get_inner_mut().flush();
                    guard.clear_ready();
                }
                "kernel log"
            });
        }
        if let Some((discovery, publisher)) = self.discovery.take() {
            match discovery {
                Discovery::Local(s) => tasks.spawn(async move {
                    s.run(publisher).await;
                    "discovery"
                }),
                Discovery::Kubernetes(s) => tasks.spawn(async move {
                    s.run(publisher).await;
                    "discovery"
                }),
            };
        }
        let mut term = signal(SignalKind::terminate())?;
        let mut int = signal(SignalKind::interrupt())?;
        if self.state.mtls.is_some() {
            let state = self.state.clone();
            tasks.spawn(async move {
                let mut sweep = tokio::time::interval(POOL_SWEEP);
                loop {
                    sweep.tick().await;
                    if let Some(m) = &state.mtls {
                        m.client.pool.sweep();
                    }
                }
            });
        }
        // Startup waits are bounded, but a signal or a dead task still
        // ends them at once.
        let started = async {
            self.wait_for_sync().await;
            self.wait_for_certificates().await;
        };
        tokio::select! {
            () = started => {}
            _ = term.recv() => return self.drain().await,
            _ = int.recv() => return self.drain().await,
            Some(done) = tasks.join_next() => return Err(task_ended(done)),
        }
        mesh_memory::release_free_heap();
        // Before readiness, so that whoever waits for it sees the agent as
        // it stays.
        match mesh_memory::release_startup_code() {
            Ok(kib) => info!(kib, "startup code unmapped"),
            Err(e) => warn!(error = %e, "startup code left mapped"),
        }
        let mut ready = self.ready_if_policies_synced();
        if self.predecessor.is_some() {
            tokio::select! {
                taken = self.take_over(&mut ready, &mut tasks) => taken?,
                _ = term.recv() => return self.drain().await,
                _ = int.recv() => return self.drain().await,
            }
        }
        let mut retry = tokio::time::interval(RETRY_PENDING);
        let mut not_ready_log = tokio::time::interval(NOT_READY_LOG);
        not_ready_log.reset();
        loop {
            tokio::select! {
                _ = term.recv() => break,
                _ = int.recv() => break,
                changed = self.views.changed() => {
                    if changed.is_err() {
                        anyhow::bail!("discovery stopped publishing; exiting so the agent is restarted (enrolled pods fail closed meanwhile)");
                    }
                    self.reconcile();
                    if !ready {
                        ready = self.ready_if_policies_synced();
                    }
                }
                _ = not_ready_log.tick(), if !ready => {
                    if let Err(cause) = self.views.borrow().view.policies.sync.check() {
                        warn!(node = %self.agent.node_name, %cause, "agent not ready: policies not synced; inbound traffic to enrolled pods is refused");
                    }
                }
                _ = retry.tick(), if !self.pending.is_empty() => self.reconcile(),
                request = self.cni.next() => self.on_cni(request)?,
                request = next_successor(&mut self.successors) => match request {
                    handover::Request::Offer(answer) => {
                        let _ = answer.send(self.offer());
                    }
                    handover::Request::Stop(answer) => {
                        self.hand_over(&mut tasks).await;
                        let _ = answer.send(());
                        let grace = self.handover.as_ref().map_or(self.agent.limits.drain_grace, |h| h.drain);
                        return self.drain_for(grace).await;
                    }
                },
                Some(done) = tasks.join_next() => return Err(task_ended(done)),
            }
        }
        if let Some(grace) = self.finish_hand_over(&mut tasks).await {
            return self.drain_for(grace).await;
        }
        self.drain().await
    }

    /// Ready only once both policy kinds are listed: before that, inbound
    /// traffic to enrolled pods is refused (see proxy::inbound), and a node
    /// that reports ready while refusing would draw traffic it drops.
    /// Policies stay synced once they are, so readiness is set once.
    fn ready_if_policies_synced(&self) -> bool {
        match self.views.borrow().view.policies.sync.check() {
            Ok(()) => {
                self.state.telemetry.set_ready();
                info!(
                    node = %self.agent.node_name,
                    enrolled = self.pods.len(),
                    "agent ready"
                );
                true
            }
            Err(cause) => {
                warn!(node = %self.agent.node_name, %cause, "agent not ready: policies not synced; inbound traffic to enrolled pods is refused until they are");
                false
            }
        }
    }

    /// Readiness off at once; listeners closed; HBONE peers told GOAWAY;
    /// open connections given `drainGrace` to finish; the rest reset, so
    /// their peers see a failure and not a clean end of stream.
    async fn drain(self) -> anyhow::Result<()> {
        let grace = self.agent.limits.drain_grace;
        self.drain_for(grace).await
    }

    async fn drain_for(mut self, grace: Duration) -> anyhow::Result<()> {
        if self.predecessor.is_some() {
            // Stopped before taking over: the running agent keeps serving.
            self.abandon();
            return Ok(());
        }
        // A new agent asking from now on is refused at once (and starts
        // afresh once this one is gone) instead of waiting on a loop that
        // no longer answers.
        self.successors = None;
        self.state.telemetry.set_not_ready();
        for pod in self.pods.values_mut() {
            pod.stop_accepting();
        }
        self.state.drain();
        if let Some(mtls) = &self.state.mtls {
            mtls.client.pool.close_idle();
        }
        let open = self.state.admission.held();
        info!(node = %self.agent.node_name, open, grace_s = grace.as_secs_f32(), "agent draining: not ready, listeners closed");
        let deadline = tokio::time::Instant::now() + grace;
        while self.state.admission.held() > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(DRAIN_POLL).await;
            if let Some(mtls) = &self.state.mtls {
                mtls.client.pool.close_idle();
            }
        }
        let left = self.state.admission.held();
        if left > 0 {
            let reset = mesh_hbone::relay::reset_all_on_exit();
            warn!(
                connections = left,
                sockets = reset,
                grace_s = grace.as_secs_f32(),
                "drain grace over; resetting what is still open"
            );
        }
        // After a hand-over this agent's connects are no longer exempt once
        // it is gone (the successor's, in the same cgroup, stay).
        if let Err(e) = self.datapath.leave_exemption() {
            warn!(error = %e, "this agent's cgroup stays exempt from redirection");
        }
        info!(
            node = %self.agent.node_name,
            "agent stopping; the datapath stays pinned and enrolled pods fail closed until an agent returns"
        );
        Ok(())
    }
}

// CNI (crate::cni): a sandbox's request, applied through reconcile.
impl Node {
    /// Records what the sandbox announced or withdrew, reconciles, and
    /// answers with the pod as reconcile left it: enrolled (listeners and
    /// datapath entries in place) or why not.
    fn on_cni(&mut self, request: Option<crate::cni::NodeRequest>) -> anyhow::Result<()> {
        let mut request = request.context(
            "the CNI socket stopped serving; exiting so the agent is restarted (new pods cannot start meanwhile)",
        )?;
        if self.cni.apply(&mut request) {
            self.reconcile();
        }
        let enrolled = request.uid().and_then(|uid| self.pods.get(uid));
        let pending = request.key().and_then(|key| self.pending.get(key));
        request.answer(enrolled.map(|rt| &rt.spec), pending);
        Ok(())
    }
}

// Hand-over (crate::handover): taking over from a running agent, and
// handing over to a successor.
impl Node {
    /// Waits until this agent is ready and holds every pod the running
    /// agent offered that the view still wants, then has it stop accepting
    /// and starts on its sockets. Not ready within the hand-over's ready
    /// timeout: gives up, and the running agent keeps serving.
    async fn take_over(
        &mut self,
        ready: &mut bool,
        tasks: &mut tokio::task::JoinSet<&'static str>,
    ) -> anyhow::Result<()> {
        let Some(settings) = self.handover.clone() else {
            return Ok(());
        };
        // From the offer, as the running agent counts it.
        let deadline = match &self.predecessor {
            Some(p) => tokio::time::Instant::from_std(p.ready_by(settings.ready_timeout)),
            None => return Ok(()),
        };
        let mut retry = tokio::time::interval(RETRY_PENDING);
        loop {
            let missing = match self.take_over_now(*ready) {
                handover::TakeOver::Now => break,
                handover::TakeOver::Wait { pending, .. } => pending,
            };
            tokio::select! {
                () = tokio::time::sleep_until(deadline) => {
                    self.abandon();
                    anyhow::bail!(
                        "not ready to take over within --handover-ready-timeout {:?} (ready: {ready}; the running agent's pods not enrolled here: {}); exiting, the running agent keeps serving",
                        settings.ready_timeout,
                        if missing.is_empty() { "none".to_owned() } else { missing.join(", ") }
                    );
                }
                changed = self.views.changed() => {
                    if changed.is_err() {
                        self.abandon();
                        anyhow::bail!("discovery stopped publishing before the hand-over; exiting, the running agent keeps serving");
                    }
                    self.reconcile();
                    if !*ready {
                        *ready = self.ready_if_policies_synced();
                    }
                }
                _ = retry.tick(), if !self.pending.is_empty() => self.reconcile(),
                Some(done) = tasks.join_next() => {
                    self.abandon();
                    return Err(task_ended(done));
                }
            }
        }
        // Exempt from capture before the running agent stops, so that
        // nothing on the exempt set can fail once it has: its connects
        // from pods' netns stay exempt until it has exited, this agent's
        // are from now on.
        if let Err(e) = self.datapath.join_exemption() {
            self.abandon();
            return Err(anyhow::Error::new(e).context(
                "adding this agent's cgroup to the exempt set before the hand-over; exiting, the running agent keeps serving",
            ));
        }
        let Some(predecessor) = self.predecessor.take() else {
            return Ok(());
        };
        let mut taken = match predecessor.commit().await {
            Ok(taken) => taken,
            Err(e) => {
                self.abandon();
                return Err(e.into());
            }
        };
        // Then this agent accepts.
        self.datapath
            .claim()
            .context("writing this agent's datapath config after the hand-over")?;
        let exited = taken.exited();
        let datapath = self.datapath.clone();
        tokio::spawn(async move {
            if exited.await.is_ok()
                && let Err(e) = datapath.predecessor_exited()
            {
                warn!(error = %e, "the exited agent's cgroup is still exempt from redirection");
            }
        });
        taken.open();
        // The running agent closed its endpoints before it answered.
        if let Some((_, log)) = self.endpoints.take() {
            let listeners = Listeners::bind(&self.agent.telemetry).await?;
            listeners.spawn(self.health.clone(), log, tasks);
        }
        self.cni = crate::cni::NodeCni::start(&self.agent, self.views.clone()).await?;
        self.successors = Some(handover::Server::start(&settings, true)?);
        if self.views.borrow().synced {
            self.sweep_stale()?;
        }
        info!(node = %self.agent.node_name, enrolled = self.pods.len(), "agent took over from the running agent");
        Ok(())
    }

    /// Stopping while a new agent holds this agent's sockets and is not
    /// ready yet (a rolling update deletes the old pod once the new one
    /// looks ready, and the old agent answers its probes until the hand-
    /// over): waits, bounded, for it to take over, and if it does, hands
    /// over; the drain deadline then applies. `None`: no hand-over.
    async fn finish_hand_over(
        &mut self,
        tasks: &mut tokio::task::JoinSet<&'static str>,
    ) -> Option<Duration> {
        let settings = self.handover.clone()?;
        if !self.successors.as_ref()?.offering() {
            return None;
        }
        info!(node = %self.agent.node_name, wait_s = settings.ready_timeout.as_secs(), "stopping while a new agent takes over; serving until it has, or until the ready timeout");
        let deadline = tokio::time::Instant::now() + settings.ready_timeout;
        loop {
            let request = tokio::time::timeout_at(deadline, next_successor(&mut self.successors));
            match request.await {
                Ok(handover::Request::Offer(answer)) => {
                    let _ = answer.send(self.offer());
                }
                Ok(handover::Request::Stop(answer)) => {
                    self.hand_over(tasks).await;
                    let _ = answer.send(());
                    return Some(settings.drain);
                }
                Err(_) => return None,
            }
        }
    }

    /// Whether to have the running agent stop now (`TakeOver::decide`
    /// over every pod it offered, adopted or not: one whose enrollment
    /// failed even with its sockets is still pending).
    fn take_over_now(&self, ready: bool) -> handover::TakeOver {
        let offered = self.predecessor.iter().flat_map(Predecessor::offered);
        handover::TakeOver::decide(ready, offered, &self.pending)
    }

    /// Leaves the node to the running agent: its pods' delivery routing
    /// stays when this agent's runtimes are dropped, the sockets it was
    /// given close with the conversation, and this agent's cgroup leaves
    /// the exempt set if it had joined it.
    fn abandon(&mut self) {
        for rt in self.pods.values_mut() {
            rt.leave_routing();
        }
        self.predecessor = None;
        if let Err(e) = self.datapath.withdraw_exemption() {
            warn!(error = %e, "this agent's cgroup stays exempt from redirection although it never took over (harmless once it has exited: a cgroup id is not reused)");
        }
    }

    /// Copies of every enrolled pod's listening sockets.
    fn offer(&self) -> Vec<handover::PodOffer> {
        self.pods
            .values()
            .filter_map(|rt| match rt.offer()? {
                Ok(o) => Some(o),
                Err(e) => {
                    warn!(pod = %rt.spec.key(), error = %e, "cannot copy the pod's listeners for a new agent; it enrolls the pod itself once this agent has stopped");
                    None
                }
            })
            .collect()
    }

    /// A successor is ready: stop accepting on every pod (returning once
    /// no accept task is left), and stop what only a serving agent does
    /// (endpoints, the CNI socket, discovery, flow records), so the
    /// successor can bind the endpoints and the CNI socket. Established connections go on and are drained.
    async fn hand_over(&mut self, tasks: &mut tokio::task::JoinSet<&'static str>) {
        self.state.telemetry.set_not_ready();
        for rt in self.pods.values_mut() {
            rt.stopped_accepting().await;
            rt.leave_routing();
        }
        self.cni.stop_serving().await;
        tasks.shutdown().await;
        info!(node = %self.agent.node_name, pods = self.pods.len(), "handed over: a new agent accepts on this node's pods; draining what this one holds");
    }
}

/// An agent that stops for any reason before it took over leaves the node
/// to the running one, whose pods' delivery routing its runtimes share.
impl Drop for Node {
    fn drop(&mut self) {
        if self.predecessor.is_some() {
            self.abandon();
        }
    }
}

/// The next request of a successor, if this agent serves the socket.
async fn next_successor(server: &mut Option<handover::Server>) -> handover::Request {
    match server {
        Some(s) => s.next().await,
        None => std::future::pending().await,
    }
}

/// How often draining looks whether every connection has ended.
const DRAIN_POLL: Duration = Duration::from_millis(100);

fn task_ended(done: Result<&'static str, tokio::task::JoinError>) -> anyhow::Error {
    match done {
        Ok(name) => anyhow::anyhow!(
            "the agent's {name} task ended; exiting so the agent is restarted (enrolled pods fail closed meanwhile)"
        ),
        Err(e) => anyhow::anyhow!(
            "an agent task failed ({e}); exiting so the agent is restarted (enrolled pods fail closed meanwhile)"
        ),
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;

    fn pod() -> LocalPod {
        LocalPod {
            uid: "u1".into(),
            name: "web".into(),
            namespace: "shop".into(),
            service_account: "web".into(),
            ips: vec!["10.244.1.10".parse().unwrap()],
            netns: PathBuf::from("/run/netns/web"),
            labels: [("app".to_owned(), "web".to_owned())].into(),
        }
    }

    #[test]
    fn a_label_change_keeps_the_enrollment_and_anything_else_does_not() {
        let mut relabelled = pod();
        relabelled.labels.insert("version".into(), "v2".into());
        assert!(same_enrollment(&pod(), &relabelled));
        let changes: [fn(&mut LocalPod); 6] = [
            |p| p.uid = "u2".into(),
            |p| p.name = "web-1".into(),
            |p| p.namespace = "other".into(),
            |p| p.service_account = "admin".into(),
            |p| p.ips = vec!["10.244.1.11".parse().unwrap()],
            |p| p.netns = PathBuf::from("/proc/42/ns/net"),
        ];
        for change in changes {
            let mut other = pod();
            change(&mut other);
            assert!(!same_enrollment(&pod(), &other), "{other:?}");
        }
    }

    fn at(uid: &str, name: &str, ip: &str) -> LocalPod {
        LocalPod {
            uid: uid.into(),
            name: name.into(),
            ips: vec![ip.parse().unwrap()],
            ..pod()
        }
    }

    #[test]
    fn an_address_stays_with_the_enrolled_pod_and_a_new_claim_waits() {
        let held = at("u1", "old", "10.0.0.1");
        let enrolled = BTreeMap::from([("u1", &held)]);
        let wanted = BTreeMap::from([
            ("u1".to_owned(), held.clone()),
            ("u2".to_owned(), at("u2", "new", "10.0.0.1")),
            ("u3".to_owned(), at("u3", "other", "10.0.0.3")),
        ]);
        let (kept, refused) = resolve_address_claims(&enrolled, wanted);
        assert_eq!(kept.keys().collect::<Vec<_>>(), ["u1", "u3"]);
        assert_eq!(
            refused,
            [RefusedClaim {
                pod: "shop/new".into(),
                ip: "10.0.0.1".parse().unwrap(),
                holder: "shop/old".into(),
            }]
        );
    }

    #[test]
    fn between_two_new_claims_the_first_uid_wins_whatever_the_form_of_the_address() {
        let wanted = BTreeMap::from([
            ("b".to_owned(), at("b", "second", "::ffff:10.0.0.1")),
            ("a".to_owned(), at("a", "first", "10.0.0.1")),
        ]);
        let (kept, refused) = resolve_address_claims(&BTreeMap::new(), wanted);
        assert_eq!(kept.keys().collect::<Vec<_>>(), ["a"]);
        assert_eq!(refused[0].pod, "shop/second");
        assert_eq!(refused[0].holder, "shop/first");
    }
}
