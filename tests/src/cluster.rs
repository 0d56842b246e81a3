//! Nodes, pods, the wire between them, and their agents.
use std::{
    collections::BTreeMap,
    fmt::Write as _,
    net::Ipv4Addr,
    path::{Path, PathBuf},
    sync::atomic::{AtomicU32, Ordering},
    time::Duration,
};

use anyhow::{Context, bail};
use k8s_openapi::{api::core::v1 as k8s, apimachinery::pkg::apis::meta::v1::ObjectMeta as K8sMeta};
use mesh_config::{AgentConfig, CaSettings, DATAPLANE_LABEL, NETNS_ANNOTATION};
use serde::{Deserialize, Serialize};

use crate::{
    proc::{Binaries, Place, Proc},
    sys::{self, ip},
    waypoint::{self, Serves, Waypoint, WaypointSpec},
};

const AGENT_READY: Duration = Duration::from_secs(30);

/// One pod to create. Its service account is its name.
#[derive(Debug, Clone)]
pub struct PodSpec {
    pub name: String,
    pub namespace: String,
    pub enrolled: bool,
    /// Labels besides `app: <name>` and the enrollment label.
    pub labels: Vec<(String, String)>,
    /// Its service account when not its name (a waypoint's pod runs as
    /// its Gateway's).
    pub service_account: Option<String>,
}

/// What to build: pods per node, by name.
#[derive(Debug, Clone)]
pub struct ClusterSpec {
    pub nodes: Vec<Vec<PodSpec>>,
    /// Start the agents (false: a mesh-free baseline on the same topology).
    pub agents: bool,
    /// Run a CA and carry pod-to-pod traffic over HBONE mTLS (false: the
    /// agents forward plaintext).
    pub mtls: bool,
    /// Workload certificate lifetime the agents ask for (and the CA's cap).
    pub cert_lifetime: Duration,
    /// Extra documents (policies) for every node's config.
    pub extra_docs: String,
    /// (pod, port): ports the kubelet probes, written into the Pod objects.
    pub probes: Vec<(String, u16)>,
    /// Every node's AgentConfig, before the test bed fills in the node's own
    /// facts (name, cgroup, bpffs, CA files). The agent's own type, so the
    /// test bed writes what the agent reads, defaults included.
    pub agent: AgentConfig,
    /// Waypoints: a Gateway each, and a pod running `mesh-waypoint`.
    pub waypoints: Vec<WaypointSpec>,
    /// Agents run with `--handover-dir` (a directory per node) and this
    /// `--handover-drain` (see `crate::handover`).
    pub handover_drain: Option<Duration>,
}

impl ClusterSpec {
    /// `layout[n]` names node n's pods, all enrolled.
    pub fn new(layout: &[&[&str]]) -> Self {
        Self {
            nodes: layout
                .iter()
                .map(|pods| {
                    pods.iter()
                        .map(|p| PodSpec {
                            name: p.to_string(),
                            namespace: "default".into(),
                            enrolled: true,
                            labels: Vec::new(),
                            service_account: None,
                        })
                        .collect()
                })
                .collect(),
            agents: true,
            mtls: true,
            cert_lifetime: Duration::from_secs(24 * 3600),
            extra_docs: String::new(),
            probes: Vec::new(),
            agent: AgentConfig::new(""),
            waypoints: Vec::new(),
            handover_drain: None,
        }
    }

    /// A waypoint for namespace `namespace` serving Services
    /// (`istio.io/waypoint-for: service`): the Gateway `name` of the
    /// agents' waypoint class, and its pod `<name>-0` on node `node`
    /// (labelled with the Gateway's name, running as service account
    /// `name`), where the test bed runs `mesh-waypoint` once the agents
    /// are up. Services, pods and namespaces bind to it with
    /// `istio.io/use-waypoint: <name>` in the test's documents.
    pub fn waypoint(self, name: &str, namespace: &str, node: usize) -> Self {
        self.waypoint_for(name, namespace, node, Serves::Service)
    }

    /// A waypoint serving `serves` (see [`ClusterSpec::waypoint`]).
    pub fn waypoint_for(
        mut self,
        name: &str,
        namespace: &str,
        node: usize,
        serves: Serves,
    ) -> Self {
        assert!(
            node < self.nodes.len(),
            "waypoint {name}: node {node} is not one of the {} nodes",
            self.nodes.len()
        );
        let spec = WaypointSpec {
            gateway: name.into(),
            namespace: namespace.into(),
            node,
            serves,
        };
        self.nodes[node].push(PodSpec {
            name: spec.pod_name(),
            namespace: namespace.into(),
            enrolled: true,
            labels: vec![(waypoint::GATEWAY_NAME_LABEL.into(), name.into())],
            service_account: Some(name.into()),
        });
        self.waypoints.push(spec);
        self
    }

    /// Gives `pod` a container whose readiness probe is an HTTP GET of
    /// `port` (by the container port's name, as manifests often spell it).
    pub fn probe(mut self, pod: &str, port: u16) -> Self {
        self.probes.push((pod.into(), port));
        self
    }

    /// Changes every node's AgentConfig, e.g.
    /// `.configure(|a| a.limits.drain_grace = Duration::from_secs(3))`.
    pub fn configure(mut self, f: impl FnOnce(&mut AgentConfig)) -> Self {
        f(&mut self.agent);
        self
    }

    /// Adds a label to `pod`.
    pub fn label(mut self, pod: &str, key: &str, value: &str) -> Self {
        for p in self.nodes.iter_mut().flatten() {
            if p.name == pod {
                p.labels.push((key.into(), value.into()));
            }
        }
        self
    }

    /// Puts `pod` in namespace `ns` instead of `default`.
    pub fn in_namespace(mut self, pod: &str, ns: &str) -> Self {
        for p in self.nodes.iter_mut().flatten() {
            if p.name == pod {
                p.namespace = ns.into();
            }
        }
        self
    }

    /// No CA: the agents forward plaintext.
    pub fn plaintext(mut self) -> Self {
        self.mtls = false;
        self
    }

    /// `lifetime` as the config files write it ("30s", "24h").
    pub fn cert_lifetime(mut self, lifetime: &str) -> Self {
        self.cert_lifetime = humantime::parse_duration(lifetime)
            .unwrap_or_else(|e| panic!("cert lifetime `{lifetime}`: {e}"));
        self
    }

    /// YAML documents (AuthorizationPolicy, PeerAuthentication) every
    /// config carries.
    pub fn with_docs(mut self, yaml: &str) -> Self {
        self.extra_docs = yaml.into();
        self
    }

    pub fn unenrolled(mut self, pod: &str) -> Self {
        for p in self.nodes.iter_mut().flatten() {
            if p.name == pod {
                p.enrolled = false;
            }
        }
        self
    }

    /// sk_msg splicing of the local app<->agent hops.
    pub fn splice(mut self, on: bool) -> Self {
        self.agent.datapath.splice = on;
        self
    }

    pub fn without_agents(mut self) -> Self {
        self.agents = false;
        self
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Pod {
    pub name: String,
    pub namespace: String,
    pub node: usize,
    pub ip: Ipv4Addr,
    pub netns: String,
    pub cgroup: PathBuf,
    pub enrolled: bool,
    pub labels: Vec<(String, String)>,
    pub service_account: String,
    /// Whether the agents' configs list it (false: deleted from the cluster
    /// as far as the mesh knows; its netns stays until teardown).
    pub listed: bool,
}

impl Pod {
    pub fn netns_path(&self) -> PathBuf {
        PathBuf::from("/run/netns").join(&self.netns)
    }
    fn place(&self) -> Place {
        Place {
            netns: self.netns_path(),
            cgroup: self.cgroup.clone(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Node {
    pub name: String,
    pub ip: Ipv4Addr,
    pub netns: String,
    pub cgroup: PathBuf,
    pub config: PathBuf,
    pub log: PathBuf,
    pub pin_dir: PathBuf,
}

impl Node {
    pub(crate) fn agent_place(&self) -> Place {
        Place {
            netns: PathBuf::from("/run/netns").join(&self.netns),
            cgroup: self.cgroup.join("agent"),
        }
    }
}

/// Everything a cluster made, so it can be removed by whoever holds it,
/// including `cargo xtask demo --down` from a saved copy.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Resources {
    pub netns: Vec<String>,
    pub cgroup_base: Option<PathBuf>,
    pub pin_dirs: Vec<PathBuf>,
    pub agent_pids: Vec<u32>,
    pub dir: Option<PathBuf>,
}

impl Resources {
    /// Kills the agents, then removes cgroups (and whatever runs in them),
    /// pins, namespaces and files. Safe to call twice.
    pub fn teardown(&self) {
        for pid in &self.agent_pids {
            unsafe { libc::kill(*pid as libc::pid_t, libc::SIGKILL) };
        }
        if let Some(base) = &self.cgroup_base {
            sys::remove_cgroup_tree(base);
        }
        for pins in &self.pin_dirs {
            let _ = std::fs::remove_dir_all(pins);
        }
        for ns in self.netns.iter().rev() {
            let _ = ip(&["netns", "del", ns]);
        }
        if let Some(dir) = &self.dir {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// Gives `dev` in netns `ns` the address `cidr` and brings it up.
fn addr_up(ns: &str, cidr: &str, dev: &str) -> anyhow::Result<()> {
    ip(&["-n", ns, "addr", "add", cidr, "dev", dev])?;
    ip(&["-n", ns, "link", "set", dev, "up"])?;
    Ok(())
}

/// Appends `doc` to a multi-document YAML file.
fn push_doc(s: &mut String, doc: &impl Serialize) {
    s.push_str("---\n");
    // Plain data (strings, numbers, maps): nothing here can fail to serialize.
    s.push_str(&serde_yaml::to_string(doc).expect("a config document serializes"));
}

static NEXT: AtomicU32 = AtomicU32::new(0);

/// The CA's place on the wire.
pub const CA_ADDRESS: &str = "10.0.0.254:15012";

pub struct Cluster {
    pub id: String,
    pub nodes: Vec<Node>,
    pub pods: Vec<Pod>,
    pub bins: Binaries,
    pub dir: PathBuf,
    mtls: bool,
    cert_lifetime: Duration,
    extra_docs: String,
    probes: Vec<(String, u16)>,
    agent: AgentConfig,
    ca_netns: Option<String>,
    ca: Option<Proc>,
    pub(crate) agents: Vec<Option<Proc>>,
    pub(crate) handover_drain: Option<Duration>,
    pub(crate) waypoints: Vec<Waypoint>,
    pub(crate) res: Resources,
    keep: bool,
    /// Keep the logs on drop as a panic does: a harness that catches its
    /// cases' failures drops the bed without panicking.
    keep_logs: bool,
}

impl Cluster {
    /// Builds the topology and, unless told otherwise, starts one agent per
    /// node and waits until each reports ready.
    pub fn start(spec: ClusterSpec) -> anyhow::Result<Self> {
        sys::require_root()?;
        let bins = Binaries::locate()?;
        sys::ensure_bpffs()?;
        let cg_root = sys::cgroup2_root()?;
        let id = format!(
            "{:x}{:x}",
            std::process::id() % 0x10000,
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let dir = std::env::temp_dir().join(format!("mesh-testbed-{id}"));
        std::fs::create_dir_all(&dir)?;
        let mut c = Cluster {
            id: id.clone(),
            nodes: Vec::new(),
            pods: Vec::new(),
            bins,
            dir: dir.clone(),
            mtls: spec.mtls,
            cert_lifetime: spec.cert_lifetime,
            extra_docs: spec.extra_docs.clone(),
            probes: spec.probes.clone(),
            agent: spec.agent.clone(),
            ca_netns: None,
            ca: None,
            agents: Vec::new(),
            handover_drain: spec.handover_drain,
            waypoints: spec.waypoints.iter().cloned().map(Waypoint::new).collect(),
            res: Resources {
                cgroup_base: Some(cg_root.join(format!("mesh-tb-{id}"))),
                dir: Some(dir),
                ..Resources::default()
            },
            keep: false,
            keep_logs: false,
        };
        if !spec.waypoints.is_empty() {
            anyhow::ensure!(
                spec.agents && spec.mtls,
                "a waypoint needs the agents and the CA: do not combine .waypoint() with .plaintext() or .without_agents()"
            );
            c.bins.waypoint()?;
        }
        c.build(&spec).context("building the test bed")?;
        if spec.agents && spec.mtls {
            c.start_ca()?;
        }
        if spec.agents {
            for n in 0..c.nodes.len() {
                c.start_agent(n)?;
            }
        }
        for w in &spec.waypoints {
            c.start_waypoint(&w.gateway)?;
        }
        Ok(c)
    }

    fn add_netns(&mut self, name: &str) -> anyhow::Result<()> {
        ip(&["netns", "add", name])?;
        self.res.netns.push(name.to_owned());
        ip(&["-n", name, "link", "set", "lo", "up"])?;
        Ok(())
    }

    fn build(&mut self, spec: &ClusterSpec) -> anyhow::Result<()> {
        let id = self.id.clone();
        let wire = format!("mt{id}-wire");
        self.add_netns(&wire)?;
        ip(&["-n", &wire, "link", "add", "wire0", "type", "bridge"])?;
        ip(&["-n", &wire, "link", "set", "wire0", "up"])?;
        let base = self.res.cgroup_base.clone().unwrap();
        std::fs::create_dir_all(&base)?;
        let bpffs = sys::ensure_bpffs()?;
        if spec.mtls {
            self.build_ca(&wire)?;
        }
        for (n, pods) in spec.nodes.iter().enumerate() {
            let name = format!("mt{id}-n{n}");
            let node_ip = Ipv4Addr::new(10, 0, 0, n as u8 + 1);
            self.add_netns(&name)?;
            let port = format!("vn{n}");
            ip(&[
                "-n", &wire, "link", "add", &port, "type", "veth", "peer", "name", "eth0", "netns",
                &name,
            ])?;
            ip(&["-n", &wire, "link", "set", &port, "master", "wire0", "up"])?;
            addr_up(&name, &format!("{node_ip}/24"), "eth0")?;
            ip(&["-n", &name, "link", "add", "cni0", "type", "bridge"])?;
            addr_up(&name, &format!("10.244.{n}.1/24"), "cni0")?;
            sys::run(std::process::Command::new("ip").args([
                "netns",
                "exec",
                &name,
                "sysctl",
                "-qw",
                "net.ipv4.ip_forward=1",
            ]))?;
            for m in 0..spec.nodes.len() {
                if m != n {
                    ip(&[
                        "-n",
                        &name,
                        "route",
                        "add",
                        &format!("10.244.{m}.0/24"),
                        "via",
                        &format!("10.0.0.{}", m + 1),
                    ])?;
                }
            }
            let cgroup = base.join(&name);
            std::fs::create_dir_all(cgroup.join("agent"))?;
            let pin_dir = bpffs.join("mesh").join(&name);
            self.res.pin_dirs.push(pin_dir.clone());
            self.nodes.push(Node {
                name: name.clone(),
                ip: node_ip,
                netns: name.clone(),
                cgroup: cgroup.clone(),
                config: self.dir.join(format!("{name}.yaml")),
                log: self.dir.join(format!("{name}.log")),
                pin_dir,
            });
            for (k, p) in pods.iter().enumerate() {
                let pod_ns = format!("mt{id}-{}", p.name);
                let pod_ip = Ipv4Addr::new(10, 244, n as u8, 10 + k as u8);
                self.add_netns(&pod_ns)?;
                let veth = format!("vp{k}");
                ip(&[
                    "-n", &name, "link", "add", &veth, "type", "veth", "peer", "name", "eth0",
                    "netns", &pod_ns,
                ])?;
                ip(&["-n", &name, "link", "set", &veth, "master", "cni0", "up"])?;
                addr_up(&pod_ns, &format!("{pod_ip}/24"), "eth0")?;
                ip(&[
                    "-n",
                    &pod_ns,
                    "route",
                    "add",
                    "default",
                    "via",
                    &format!("10.244.{n}.1"),
                ])?;
                let pod_cg = cgroup.join(format!("pod-{}", p.name));
                std::fs::create_dir_all(&pod_cg)?;
                self.pods.push(Pod {
                    name: p.name.clone(),
                    namespace: p.namespace.clone(),
                    node: n,
                    ip: pod_ip,
                    netns: pod_ns,
                    cgroup: pod_cg,
                    enrolled: p.enrolled,
                    labels: p.labels.clone(),
                    service_account: p.service_account.clone().unwrap_or_else(|| p.name.clone()),
                    listed: true,
                });
            }
        }
        for n in 0..self.nodes.len() {
            self.write_config(n)?;
        }
        if spec.mtls {
            // The CA answers the waypoints, which run in pods.
            let ca_ns = self.ca_netns.clone().context("the CA's netns")?;
            for n in 0..self.nodes.len() {
                ip(&[
                    "-n",
                    &ca_ns,
                    "route",
                    "add",
                    &format!("10.244.{n}.0/24"),
                    "via",
                    &format!("10.0.0.{}", n + 1),
                ])?;
            }
            self.write_ca_config()?;
        }
        Ok(())
    }

    /// A netns on the wire for the CA, its root, and a token per node.
    fn build_ca(&mut self, wire: &str) -> anyhow::Result<()> {
        let ns = format!("mt{}-ca", self.id);
        self.add_netns(&ns)?;
        ip(&[
            "-n", wire, "link", "add", "vca", "type", "veth", "peer", "name", "eth0", "netns", &ns,
        ])?;
        ip(&["-n", wire, "link", "set", "vca", "master", "wire0", "up"])?;
        let ca_ip = CA_ADDRESS.split(':').next().unwrap();
        addr_up(&ns, &format!("{ca_ip}/24"), "eth0")?;
        self.ca_netns = Some(ns);
        sys::run(
            std::process::Command::new(&self.bins.agent)
                .args(["ca", "init", "--cert"])
                .arg(self.dir.join("root-cert.pem"))
                .arg("--key")
                .arg(self.dir.join("root-key.pem")),
        )?;
        Ok(())
    }

    fn token_file(&self, node: &str) -> PathBuf {
        self.dir.join(format!("token-{node}"))
    }

    /// Writes a fresh secret to `token` unless it holds one already.
    fn ensure_token(token: &Path) -> anyhow::Result<()> {
        if !token.exists() {
            let secret: String = (0..32)
                .map(|_| char::from_digit(fastrand::u32(..16), 16).unwrap())
                .collect();
            std::fs::write(token, secret)?;
        }
        Ok(())
    }

    fn write_ca_config(&self) -> anyhow::Result<()> {
        let mut s = format!(
            "kind: CaConfig\nlisten: 0.0.0.0:15012\nrootCertFile: {}\nrootKeyFile: {}\ndefaultLifetime: {lt}\nmaxLifetime: {lt}\nnodes:\n",
            self.dir.join("root-cert.pem").display(),
            self.dir.join("root-key.pem").display(),
            lt = humantime::format_duration(self.cert_lifetime),
        );
        for node in &self.nodes {
            let token = self.token_file(&node.name);
            Self::ensure_token(&token)?;
            let _ = writeln!(s, "- name: {}\n  tokenFile: {}", node.name, token.display());
        }
        if !self.waypoints.is_empty() {
            let mut workloads = Vec::new();
            for w in &self.waypoints {
                Self::ensure_token(&w.spec.token_file(&self.dir))?;
                workloads.push(w.spec.ca_workload(&self.dir));
            }
            // Flow-style JSON is YAML: one line, nothing to indent.
            let _ = writeln!(s, "workloads: {}", serde_json::Value::from(workloads));
        }
        s.push_str(&self.pods_yaml());
        let path = self.dir.join("ca.yaml");
        let tmp = path.with_extension("yaml.tmp");
        std::fs::write(&tmp, s)?;
        std::fs::rename(&tmp, &path)?;
        Ok(())
    }

    /// Starts (or restarts) the CA and waits for "CA ready".
    pub fn start_ca(&mut self) -> anyhow::Result<()> {
        let ns = self.ca_netns.clone().context("this cluster has no CA")?;
        let cg = self.res.cgroup_base.clone().unwrap().join("ca");
        std::fs::create_dir_all(&cg)?;
        let place = Place {
            netns: PathBuf::from("/run/netns").join(ns),
            cgroup: cg,
        };
        let mut cmd = place.command(&self.bins.agent)?;
        cmd.args(["ca", "--config"]).arg(self.dir.join("ca.yaml"));
        let log = self
            .dir
            .join(format!("ca.{}.log", self.res.agent_pids.len()));
        let mut proc = Proc::spawn("CA", cmd, Some(&log))?;
        self.res.agent_pids.push(proc.pid());
        proc.wait_json("CA ready", AGENT_READY, |v| v["message"] == "CA ready")?;
        self.ca = Some(proc);
        Ok(())
    }

    pub fn stop_ca(&mut self) {
        if let Some(mut p) = self.ca.take() {
            p.kill();
        }
    }

    /// The CA's log lines (JSON).
    pub fn ca_log(&self) -> Vec<serde_json::Value> {
        self.ca.as_ref().map(Proc::json_lines).unwrap_or_default()
    }

    /// PIDs of the running node agents (not the CA).
    pub fn agent_pids(&self) -> Vec<u32> {
        self.agents.iter().flatten().map(Proc::pid).collect()
    }

    fn agent_pid(&self, n: usize) -> anyhow::Result<u32> {
        Ok(self
            .agents
            .get(n)
            .and_then(Option::as_ref)
            .context("agent not running")?
            .pid())
    }

    /// Node n's agent's open file descriptors and resident memory (KiB).
    pub fn agent_usage(&self, n: usize) -> anyhow::Result<(usize, u64)> {
        let pid = self.agent_pid(n)?;
        let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))?.count();
        let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
        let rss = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .context("VmRSS in /proc/<pid>/status")?;
        Ok((fds, rss))
    }

    /// Sends SIGTERM to node n's agent without waiting for it to exit.
    pub fn sigterm_agent(&self, n: usize) -> anyhow::Result<()> {
        let pid = self.agent_pid(n)?;
        // SAFETY: kill(2) with a pid this test bed started.
        anyhow::ensure!(
            unsafe { libc::kill(pid as libc::pid_t, libc::SIGTERM) } == 0,
            "kill {pid}: {}",
            std::io::Error::last_os_error()
        );
        Ok(())
    }

    /// Waits until node n's agent has exited; its exit status.
    pub fn wait_agent_exit(
        &mut self,
        n: usize,
        timeout: Duration,
    ) -> anyhow::Result<std::process::ExitStatus> {
        self.agents
            .get_mut(n)
            .and_then(Option::as_mut)
            .context("agent not running")?
            .wait_exit(timeout)
    }

    /// Starts a meshtb client in a pod without waiting for it.
    pub fn spawn_client(&self, pod: &str, args: &[&str]) -> anyhow::Result<Proc> {
        let mut cmd = self.pod_command(pod, &self.bins.meshtb)?;
        cmd.args(args);
        Proc::spawn(&format!("client in {pod}"), cmd, None)
    }

    /// Captures TCP on node n's wire interface while `f` runs; returns the
    /// raw capture (pcap) for the caller to search.
    pub fn capture_wire<T>(&self, n: usize, f: impl FnOnce() -> T) -> anyhow::Result<(T, Vec<u8>)> {
        let file = self
            .dir
            .join(format!("wire-{n}-{}.pcap", fastrand::u32(..)));
        let mut cmd = self.node_command(n, "tcpdump")?;
        cmd.args([
            "--immediate-mode",
            "-i",
            "eth0",
            "-U",
            "-n",
            "-s",
            "0",
            "-w",
        ])
        .arg(&file)
        .arg("tcp");
        let mut dump = Proc::spawn("tcpdump", cmd, None)?;
        sys::wait_for("tcpdump to start", Duration::from_secs(10), || {
            dump.output()
                .iter()
                .any(|l| l.contains("listening on"))
                .then_some(())
        })?;
        let out = f();
        std::thread::sleep(Duration::from_millis(300));
        unsafe { libc::kill(dump.pid() as libc::pid_t, libc::SIGINT) };
        let _ = dump.wait_exit(Duration::from_secs(10));
        Ok((out, std::fs::read(&file)?))
    }

    /// Waits for a line in the CA's log.
    pub fn wait_ca_log(
        &mut self,
        what: &str,
        timeout: Duration,
        pred: impl Fn(&serde_json::Value) -> bool,
    ) -> anyhow::Result<serde_json::Value> {
        self.ca
            .as_mut()
            .context("CA not running")?
            .wait_json(what, timeout, pred)
    }

    /// Replaces the extra documents in every node's config and waits until
    /// every running agent has applied it.
    pub fn set_docs(&mut self, yaml: &str) -> anyhow::Result<()> {
        self.extra_docs = yaml.into();
        self.rewrite_configs()
    }

    /// Writes extra documents to every node's config without waiting for
    /// the agents (for edits they are expected to refuse).
    pub fn write_docs_unchecked(&mut self, yaml: &str) -> anyhow::Result<()> {
        self.extra_docs = yaml.into();
        for n in 0..self.nodes.len() {
            self.write_config(n)?;
        }
        Ok(())
    }

    fn applied(&self, n: usize) -> usize {
        self.agent_log(n)
            .iter()
            .filter(|l| l["message"] == "view applied")
            .count()
    }

    /// Rewrites every node's config and waits (bounded) until each running
    /// agent has applied a new view.
    pub fn rewrite_configs(&mut self) -> anyhow::Result<()> {
        let before: Vec<usize> = (0..self.nodes.len()).map(|n| self.applied(n)).collect();
        for n in 0..self.nodes.len() {
            self.write_config(n)?;
        }
        for (n, before) in before.into_iter().enumerate() {
            if self.agents.get(n).is_some_and(Option::is_some) {
                crate::sys::wait_for(
                    &format!("agent {n} applies the new config"),
                    Duration::from_secs(15),
                    || (self.applied(n) > before).then_some(()),
                )?;
            }
        }
        Ok(())
    }

    /// The listed pods as the Kubernetes objects the agents and the CA read.
    fn pods_yaml(&self) -> String {
        let mut s = String::new();
        for p in self.pods.iter().filter(|p| p.listed) {
            let mode = if p.enrolled { "enabled" } else { "none" };
            let mut labels = BTreeMap::from([("app".to_owned(), p.name.clone())]);
            labels.extend(p.labels.iter().cloned());
            labels.insert(DATAPLANE_LABEL.into(), mode.into());
            let pod = k8s::Pod {
                metadata: K8sMeta {
                    name: Some(p.name.clone()),
                    namespace: Some(p.namespace.clone()),
                    labels: Some(labels),
                    annotations: Some(BTreeMap::from([(
                        NETNS_ANNOTATION.to_owned(),
                        p.netns_path().display().to_string(),
                    )])),
                    ..K8sMeta::default()
                },
                spec: Some(k8s::PodSpec {
                    node_name: Some(self.nodes[p.node].name.clone()),
                    service_account_name: Some(p.service_account.clone()),
                    containers: self.probed_containers(&p.name),
                    ..k8s::PodSpec::default()
                }),
                status: Some(k8s::PodStatus {
                    pod_ips: Some(vec![k8s::PodIP {
                        ip: p.ip.to_string(),
                    }]),
                    ..k8s::PodStatus::default()
                }),
            };
            push_doc(&mut s, &pod);
        }
        s
    }

    /// One container per probed port of `pod`, each naming its port
    /// `health` and probing it by that name.
    fn probed_containers(&self, pod: &str) -> Vec<k8s::Container> {
        use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
        self.probes
            .iter()
            .filter(|(p, _)| p == pod)
            .enumerate()
            .map(|(i, (_, port))| k8s::Container {
                name: format!("probed-{i}"),
                ports: Some(vec![k8s::ContainerPort {
                    name: Some("health".into()),
                    container_port: i32::from(*port),
                    ..k8s::ContainerPort::default()
                }]),
                readiness_probe: Some(k8s::Probe {
                    http_get: Some(k8s::HTTPGetAction {
                        path: Some("/healthz".into()),
                        port: IntOrString::String("health".into()),
                        ..k8s::HTTPGetAction::default()
                    }),
                    ..k8s::Probe::default()
                }),
                ..k8s::Container::default()
            })
            .collect()
    }

    /// Node n's AgentConfig: the spec's, with the node's own facts.
    pub fn agent_config(&self, n: usize) -> AgentConfig {
        let node = &self.nodes[n];
        let mut agent = self.agent.clone();
        agent.node_name = node.name.clone();
        agent.cgroup_root = node.cgroup.clone();
        // The agent pins below <bpffsRoot>/mesh/<nodeName>: where the test
        // bed looks for the pins.
        agent.bpffs_root = node
            .pin_dir
            .ancestors()
            .nth(2)
            .expect("pin dirs are <bpffs>/mesh/<node>")
            .to_owned();
        if self.mtls {
            agent.ca = Some(CaSettings {
                cert_lifetime: self.cert_lifetime,
                ..CaSettings::new(
                    CA_ADDRESS,
                    self.dir.join("root-cert.pem"),
                    self.token_file(&node.name),
                )
            });
        }
        agent
    }

    /// The node's local-mode config: its AgentConfig and every pod of the
    /// cluster (the agent keeps those scheduled on its node).
    pub fn config_text(&self, n: usize) -> String {
        let mut s =
            serde_yaml::to_string(&self.agent_config(n)).expect("an AgentConfig serializes");
        s.push_str(&self.pods_yaml());
        // Nodes and their addresses: how `mesh status` finds every agent.
        for node in &self.nodes {
            let doc = k8s::Node {
                metadata: K8sMeta {
                    name: Some(node.name.clone()),
                    ..K8sMeta::default()
                },
                status: Some(k8s::NodeStatus {
                    addresses: Some(vec![k8s::NodeAddress {
                        type_: "InternalIP".into(),
                        address: node.ip.to_string(),
                    }]),
                    ..k8s::NodeStatus::default()
                }),
                ..k8s::Node::default()
            };
            push_doc(&mut s, &doc);
        }
        for w in &self.waypoints {
            push_doc(&mut s, &w.spec.gateway_doc(&self.agent.waypoint_class));
        }
        if !self.extra_docs.is_empty() {
            s.push_str("---\n");
            s.push_str(&self.extra_docs);
        }
        s
    }

    fn write_config(&self, n: usize) -> anyhow::Result<()> {
        let node = &self.nodes[n];
        // Write then rename, so a polling agent never reads half a file.
        let tmp = node.config.with_extension("yaml.tmp");
        std::fs::write(&tmp, self.config_text(n))?;
        std::fs::rename(&tmp, &node.config)?;
        Ok(())
    }

    /// Starts node n's agent (again) and waits for its "agent ready" line.
    pub fn start_agent(&mut self, n: usize) -> anyhow::Result<()> {
        let node = self.nodes[n].clone();
        let mut cmd = node.agent_place().command(&self.bins.agent)?;
        cmd.args(["node", "--config"]).arg(&node.config);
        cmd.args(self.handover_args(n));
        cmd.env(
            "MESH_LOG",
            std::env::var("MESH_LOG").unwrap_or_else(|_| "info".into()),
        );
        // Keep earlier runs' lines: tests read the whole history of a node.
        let log = node
            .log
            .with_extension(format!("{}.log", self.agents.len()));
        let mut proc = Proc::spawn(&format!("agent {}", node.name), cmd, Some(&log))?;
        self.res.agent_pids.push(proc.pid());
        proc.wait_json("agent ready", AGENT_READY, |v| {
            v["message"] == "agent ready"
        })?;
        while self.agents.len() <= n {
            self.agents.push(None);
        }
        self.agents[n] = Some(proc);
        Ok(())
    }

    /// Stops every node agent with SIGTERM, as a DaemonSet rollout does,
    /// and waits for each to exit (SIGKILL after 10 s).
    pub fn stop_agents(&mut self) {
        for mut p in self.agents.iter_mut().filter_map(Option::take) {
            p.terminate(Duration::from_secs(10));
        }
    }

    /// SIGKILLs node n's agent: no chance to clean anything up.
    pub fn kill_agent(&mut self, n: usize) {
        if let Some(mut p) = self.agents.get_mut(n).and_then(Option::take) {
            p.kill();
        }
    }

    /// The agent's log lines (JSON) since it started.
    pub fn agent_log(&self, n: usize) -> Vec<serde_json::Value> {
        self.agents
            .get(n)
            .and_then(Option::as_ref)
            .map(Proc::json_lines)
            .unwrap_or_default()
    }

    /// Every line node n's agent wrote, JSON or not.
    pub fn agents_raw_output(&self, n: usize) -> Vec<String> {
        self.agents
            .get(n)
            .and_then(Option::as_ref)
            .map(Proc::output)
            .unwrap_or_default()
    }

    /// Waits for a line in node n's agent log.
    pub fn wait_agent_log(
        &mut self,
        n: usize,
        what: &str,
        pred: impl Fn(&serde_json::Value) -> bool,
    ) -> anyhow::Result<serde_json::Value> {
        let p = self
            .agents
            .get_mut(n)
            .and_then(Option::as_mut)
            .context("agent not running")?;
        p.wait_json(what, Duration::from_secs(15), pred)
    }

    /// Changes a pod's enrollment label and rewrites every node's config.
    pub fn set_enrolled(&mut self, pod: &str, enrolled: bool) -> anyhow::Result<()> {
        let p = self
            .pods
            .iter_mut()
            .find(|p| p.name == pod)
            .context("no such pod")?;
        p.enrolled = enrolled;
        self.rewrite_configs()
    }

    /// Sets (or replaces) one label of a pod and rewrites every node's config.
    pub fn set_label(&mut self, pod: &str, key: &str, value: &str) -> anyhow::Result<()> {
        let p = self
            .pods
            .iter_mut()
            .find(|p| p.name == pod)
            .context("no such pod")?;
        p.labels.retain(|(k, _)| k != key);
        p.labels.push((key.to_owned(), value.to_owned()));
        self.rewrite_configs()
    }

    /// Replaces a pod's network namespace by a new one under the same
    /// name, with the same address and link, as a runtime does for a pod
    /// recreated under its name (a StatefulSet's). The configs are not
    /// touched: the pod's object reads the same.
    pub fn recreate_pod_netns(&mut self, pod: &str) -> anyhow::Result<()> {
        let p = self.pod(pod).clone();
        // The veth index the pod got when the node was built (pods built
        // with their node come first; `add_bare_pods` appends after them).
        let k = self
            .pods
            .iter()
            .filter(|q| q.node == p.node)
            .position(|q| q.name == p.name)
            .context("pod not found on its node")?;
        let node = self.nodes[p.node].netns.clone();
        let veth = format!("vp{k}");
        // The old netns may outlive its name (a pinned sk_lookup link holds
        // it): its veth pair is removed from the node's end, so the address
        // is only in the new one.
        ip(&["-n", &node, "link", "del", &veth])?;
        ip(&["netns", "del", &p.netns])?;
        ip(&["netns", "add", &p.netns])?;
        ip(&["-n", &p.netns, "link", "set", "lo", "up"])?;
        ip(&[
            "-n", &node, "link", "add", &veth, "type", "veth", "peer", "name", "eth0", "netns",
            &p.netns,
        ])?;
        ip(&["-n", &node, "link", "set", &veth, "master", "cni0", "up"])?;
        addr_up(&p.netns, &format!("{}/24", p.ip), "eth0")?;
        ip(&[
            "-n",
            &p.netns,
            "route",
            "add",
            "default",
            "via",
            &format!("10.244.{}.1", p.node),
        ])?;
        // The node still maps the address to the old link's MAC; until that
        // entry goes stale (seconds), frames to the pod would be lost.
        ip(&["-n", &node, "neigh", "flush", "to", &p.ip.to_string()])?;
        Ok(())
    }

    /// Adds `count` pods on node `node` that are only a netns holding their
    /// address (no link, no process), with `service_account`, not yet
    /// listed in the configs:
    /// material for churn tests. Returns their names.
    pub fn add_bare_pods(
        &mut self,
        node: usize,
        prefix: &str,
        count: usize,
        service_account: &str,
    ) -> anyhow::Result<Vec<String>> {
        let mut names = Vec::new();
        for i in 0..count {
            let name = format!("{prefix}{i}");
            let netns = format!("mt{}-{name}", self.id);
            self.add_netns(&netns)?;
            let pod_ip = Ipv4Addr::new(10, 250, (i / 200) as u8, (i % 200 + 1) as u8);
            // The agent enrolls a pod only in a netns that holds its
            // address; on loopback, since a bare pod has no link.
            ip(&[
                "-n",
                &netns,
                "addr",
                "add",
                &format!("{pod_ip}/32"),
                "dev",
                "lo",
            ])?;
            self.pods.push(Pod {
                name: name.clone(),
                namespace: "default".into(),
                node,
                ip: pod_ip,
                netns,
                cgroup: self.nodes[node].cgroup.join(format!("pod-{name}")),
                enrolled: true,
                labels: Vec::new(),
                service_account: service_account.into(),
                listed: false,
            });
            names.push(name);
        }
        Ok(names)
    }

    /// Lists or unlists pods in every node's config at once and waits until
    /// the agents have applied it.
    pub fn set_listed(&mut self, pods: &[String], listed: bool) -> anyhow::Result<()> {
        for p in self.pods.iter_mut().filter(|p| pods.contains(&p.name)) {
            p.listed = listed;
        }
        self.rewrite_configs()
    }

    /// Drops a pod from every node's config (as if deleted from the
    /// cluster) and waits until the agents have applied that.
    pub fn delete_pod(&mut self, pod: &str) -> anyhow::Result<()> {
        self.pods
            .iter_mut()
            .find(|p| p.name == pod)
            .context("no such pod")?
            .listed = false;
        self.rewrite_configs()
    }

    pub fn pod(&self, name: &str) -> &Pod {
        self.pods
            .iter()
            .find(|p| p.name == name)
            .unwrap_or_else(|| panic!("no pod {name}"))
    }

    /// A command that runs inside the pod (its netns and cgroup).
    pub fn pod_command(
        &self,
        pod: &str,
        program: impl AsRef<std::ffi::OsStr>,
    ) -> anyhow::Result<std::process::Command> {
        self.pod(pod).place().command(program)
    }

    /// GETs `path` from `addr` inside node n's netns (an agent's endpoints:
    /// `<node ip>:15020`, `:15021`, or `127.0.0.1:15000` for the admin API).
    pub fn node_get(
        &self,
        n: usize,
        addr: std::net::SocketAddr,
        path: &str,
    ) -> anyhow::Result<(u16, String)> {
        let netns = PathBuf::from("/run/netns").join(&self.nodes[n].netns);
        crate::http::get_in(&netns, addr, path)
    }

    /// POSTs to node n's admin API (127.0.0.1:15000 in the node's netns).
    pub fn admin_post(&self, n: usize, path: &str) -> anyhow::Result<(u16, String)> {
        let netns = PathBuf::from("/run/netns").join(&self.nodes[n].netns);
        crate::http::request_in(&netns, "POST", ([127, 0, 0, 1], 15000).into(), path)
    }

    /// Node n's agent's metrics exposition.
    pub fn metrics(&self, n: usize) -> anyhow::Result<String> {
        let addr = std::net::SocketAddr::new(self.nodes[n].ip.into(), 15020);
        let (code, body) = self.node_get(n, addr, "/metrics")?;
        anyhow::ensure!(code == 200, "GET /metrics: {code}: {body}");
        Ok(body)
    }

    /// Runs the `mesh` CLI in node n's netns against the node's config; its
    /// exit code and stdout (stderr goes into the error when it fails to run).
    pub fn mesh_cli(&self, n: usize, args: &[&str]) -> anyhow::Result<(i32, String)> {
        let mut cmd = self.node_command(n, &self.bins.cli)?;
        cmd.arg("--config").arg(&self.nodes[n].config).args(args);
        let out = cmd.output()?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        anyhow::ensure!(
            out.status.code().is_some(),
            "mesh {args:?} was killed: {stderr}"
        );
        if !stderr.trim().is_empty() {
            eprintln!("mesh {args:?} stderr: {stderr}");
        }
        Ok((
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        ))
    }

    /// hboneprobe in node 0's netns (outside every pod), with a certificate
    /// signed by the mesh root, aimed at `tunnel` (a pod's ip:15008).
    pub fn probe_command(
        &self,
        tunnel: &str,
        args: &[&str],
    ) -> anyhow::Result<std::process::Command> {
        let mut cmd = self.node_command(0, &self.bins.probe)?;
        cmd.args(["--to", tunnel, "--root-cert"])
            .arg(self.dir.join("root-cert.pem"))
            .arg("--root-key")
            .arg(self.dir.join("root-key.pem"))
            .args(args);
        Ok(cmd)
    }

    /// A command that runs in node n's netns (outside any pod).
    pub fn node_command(
        &self,
        n: usize,
        program: impl AsRef<std::ffi::OsStr>,
    ) -> anyhow::Result<std::process::Command> {
        let node = &self.nodes[n];
        let cg = node.cgroup.join("host");
        std::fs::create_dir_all(&cg)?;
        Place {
            netns: PathBuf::from("/run/netns").join(&node.netns),
            cgroup: cg,
        }
        .command(program)
    }

    /// Starts `meshtb serve` in a pod and waits until it listens.
    pub fn serve(&self, pod: &str, ports: &str, mode: &str) -> anyhow::Result<Proc> {
        let args = ["serve", "--ports", ports, "--mode", mode, "--name", pod];
        self.listening(pod, "server", &args)
    }

    /// Starts `meshtb relay` in a pod with `LISTEN=TO` maps; returns once
    /// it listens.
    pub fn relay(&self, pod: &str, maps: &[String]) -> anyhow::Result<Proc> {
        let mut args = vec!["relay"];
        for m in maps {
            args.extend(["--map", m]);
        }
        self.listening(pod, "relay", &args)
    }

    /// A meshtb process in a pod, once it has printed that it listens.
    fn listening(&self, pod: &str, what: &str, args: &[&str]) -> anyhow::Result<Proc> {
        let mut cmd = self.pod_command(pod, &self.bins.meshtb)?;
        cmd.args(args);
        // The pod's name and namespace, as Kubernetes' downward API hands
        // them to a container (the conformance echo reports them).
        let named = self.pod(pod);
        cmd.env(crate::echo::server::POD_NAME_ENV, &named.name)
            .env(crate::echo::server::NAMESPACE_ENV, &named.namespace);
        let mut p = Proc::spawn(&format!("{what} in {pod}"), cmd, None)?;
        p.wait_json("listening", Duration::from_secs(10), |v| {
            v.get("listening").is_some()
        })?;
        Ok(p)
    }

    /// Runs a meshtb client subcommand in a pod to completion; returns its
    /// last JSON line.
    pub fn client(
        &self,
        pod: &str,
        args: &[&str],
        timeout: Duration,
    ) -> anyhow::Result<serde_json::Value> {
        let mut cmd = self.pod_command(pod, &self.bins.meshtb)?;
        cmd.args(args);
        let mut p = Proc::spawn(&format!("client in {pod}"), cmd, None)?;
        let status = p.wait_exit(timeout)?;
        let out = p.json_lines();
        match out.last() {
            Some(v) if status.success() => Ok(v.clone()),
            _ => bail!(
                "client in {pod} {args:?} failed ({status}): {}",
                p.output().join("\n")
            ),
        }
    }

    /// Node n's kernel counters, by name, read from the pinned map.
    pub fn counters(&self, n: usize) -> anyhow::Result<std::collections::BTreeMap<String, u64>> {
        let values = sys::pinned_counters(&self.nodes[n].pin_dir)?;
        Ok(mesh_common::counter::NAMES
            .iter()
            .zip(values)
            .map(|(k, v)| (k.to_string(), v))
            .collect())
    }

    /// Leaves everything running (for `demo --keep`) and returns what to
    /// remove later.
    pub fn keep(mut self) -> Resources {
        self.keep = true;
        for a in self
            .agents
            .iter_mut()
            .chain(std::iter::once(&mut self.ca))
            .chain(self.waypoints.iter_mut().map(|w| &mut w.proc))
            .flatten()
        {
            // Forget the handle; the process keeps running.
            a.detach();
        }
        self.res.clone()
    }

    /// Keeps the logs (agents, CA, waypoints) when the bed is dropped,
    /// as a failed test's: for a harness that caught a case's failure.
    pub fn keep_logs(&mut self) {
        self.keep_logs = true;
    }

    pub fn resources(&self) -> &Resources {
        &self.res
    }

    pub fn log_dir(&self) -> &Path {
        &self.dir
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if self.keep {
            return;
        }
        if std::thread::panicking() || self.keep_logs {
            // Keep the agents' logs of a failed test, and say where they are.
            let logs = self
                .dir
                .join("..")
                .join(format!("mesh-testbed-{}-logs", self.id));
            let _ = std::fs::rename(&self.dir, &logs);
            eprintln!(
                "test bed {}: agent logs kept in {}",
                self.id,
                logs.display()
            );
        }
        for a in self
            .agents
            .iter_mut()
            .chain(self.waypoints.iter_mut().map(|w| &mut w.proc))
            .flatten()
        {
            a.kill();
        }
        self.stop_ca();
        self.res.teardown();
    }
}
