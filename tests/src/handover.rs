//! Agents that hand over to a successor on their node (`mesh-agent node
//! --handover-dir`): a second agent started beside the running one.
use std::{
    collections::BTreeSet,
    ffi::OsString,
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::Context;

use crate::{Cluster, ClusterSpec, Proc, proc::Place};

/// How long a successor may take to say it took over (or, starting
/// afresh, that it is ready).
const TAKE_OVER: Duration = Duration::from_secs(60);

impl ClusterSpec {
    /// Agents run with a hand-over directory per node and `drain` as their
    /// hand-over drain deadline.
    pub fn handover(mut self, drain: Duration) -> Self {
        self.handover_drain = Some(drain);
        self
    }
}

impl Cluster {
    /// Node n's hand-over directory.
    pub fn handover_dir(&self, n: usize) -> PathBuf {
        self.dir.join(format!("handover-{}", self.nodes[n].name))
    }

    /// The agent's hand-over flags, when the bed was built with them.
    pub(crate) fn handover_args(&self, n: usize) -> Vec<OsString> {
        let Some(drain) = self.handover_drain else {
            return Vec::new();
        };
        vec![
            "--handover-dir".into(),
            self.handover_dir(n).into(),
            "--handover-drain".into(),
            humantime::format_duration(drain).to_string().into(),
        ]
    }

    /// Starts another agent on node n beside the running one, reading
    /// `config` (default: the node's), with `args` after the usual ones (a
    /// later flag wins), without waiting for it. It is not node n's agent
    /// until `adopt_successor`. It runs in a cgroup of its own below the
    /// node's (`<node cgroup>/agent-<k>`), as a new agent's pod does in
    /// Kubernetes: the two agents of a hand-over are told apart by it.
    pub fn spawn_successor(
        &mut self,
        n: usize,
        config: Option<&Path>,
        args: &[&str],
    ) -> anyhow::Result<Proc> {
        let node = self.nodes[n].clone();
        let cgroup = node
            .cgroup
            .join(format!("agent-{}", self.res.agent_pids.len()));
        std::fs::create_dir_all(&cgroup).with_context(|| format!("cgroup {}", cgroup.display()))?;
        let place = Place {
            cgroup,
            ..node.agent_place()
        };
        let mut cmd = place.command(&self.bins.agent)?;
        cmd.args(["node", "--config"])
            .arg(config.unwrap_or(&node.config));
        cmd.args(self.handover_args(n));
        cmd.args(args);
        cmd.env(
            "MESH_LOG",
            std::env::var("MESH_LOG").unwrap_or_else(|_| "info".into()),
        );
        let log = node
            .log
            .with_extension(format!("successor-{}.log", self.res.agent_pids.len()));
        let proc = Proc::spawn(&format!("successor on {}", node.name), cmd, Some(&log))?;
        self.res.agent_pids.push(proc.pid());
        Ok(proc)
    }

    /// Starts a successor on node n and waits until it has taken over;
    /// it is node n's agent from then on. Returns the agent it replaced,
    /// which drains and exits on its own.
    pub fn hand_over(&mut self, n: usize) -> anyhow::Result<Proc> {
        let mut new = self.spawn_successor(n, None, &[])?;
        new.wait_json("took over", TAKE_OVER, |v| {
            v["message"] == "agent took over from the running agent"
        })?;
        self.adopt_successor(n, new)
    }

    /// Starts node n's agent afresh, its last one gone (`kill_agent`), in
    /// a cgroup of its own below the node's, as a crashed agent's
    /// replacement pod runs in Kubernetes (`start_agent` starts it in the
    /// node's agent cgroup); waits for its "agent ready" line.
    pub fn start_agent_apart(&mut self, n: usize) -> anyhow::Result<()> {
        anyhow::ensure!(
            self.agents.get(n).is_none_or(Option::is_none),
            "node {n} still has an agent"
        );
        let mut new = self.spawn_successor(n, None, &[])?;
        new.wait_json("agent ready", TAKE_OVER, |v| v["message"] == "agent ready")?;
        while self.agents.len() <= n {
            self.agents.push(None);
        }
        self.agents[n] = Some(new);
        Ok(())
    }

    /// Makes `new` node n's agent; returns the one it replaces.
    pub fn adopt_successor(&mut self, n: usize, new: Proc) -> anyhow::Result<Proc> {
        self.agents
            .get_mut(n)
            .and_then(|slot| slot.replace(new))
            .context("node has no running agent to replace")
    }
}

impl Cluster {
    /// The cgroup ids whose connects node n's connect programs leave alone
    /// (the pinned `MESH_AGENT_CGROUPS`, read with bpftool).
    pub fn exempt_cgroups(&self, n: usize) -> anyhow::Result<BTreeSet<u64>> {
        let map = self.nodes[n]
            .pin_dir
            .join(mesh_common::names::AGENT_CGROUPS);
        let out = std::process::Command::new("bpftool")
            .args(["--json", "map", "dump", "pinned"])
            .arg(&map)
            .output()
            .context("running bpftool")?;
        anyhow::ensure!(
            out.status.success(),
            "bpftool map dump {}: {out:?}",
            map.display()
        );
        let entries: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout)?;
        entries
            .iter()
            .map(|e| {
                map_key_u64(&e["key"]).with_context(|| format!("a key of {}: {e}", map.display()))
            })
            .collect()
    }
}

impl Cluster {
    /// The cgroup id of node n's agent (the one `agent_pids` names).
    pub fn agent_cgroup_id(&self, n: usize) -> anyhow::Result<u64> {
        cgroup_id(&cgroup_of(self.agent_pids()[n])?)
    }

    /// Waits until node n's exempt set is exactly `ids` (an agent's exit
    /// reaches it through its successor a moment later); the set last
    /// seen otherwise.
    pub fn wait_exempt(
        &self,
        n: usize,
        ids: &[u64],
        timeout: Duration,
    ) -> anyhow::Result<BTreeSet<u64>> {
        let want: BTreeSet<u64> = ids.iter().copied().collect();
        let deadline = std::time::Instant::now() + timeout;
        loop {
            let seen = self.exempt_cgroups(n)?;
            if seen == want {
                return Ok(seen);
            }
            anyhow::ensure!(
                std::time::Instant::now() < deadline,
                "node {n}: exempt cgroups {seen:?}, expected {want:?} within {timeout:?}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// A u64 map key as bpftool prints it: a number (with BTF) or its bytes
/// in the machine's order, as hex strings.
fn map_key_u64(key: &serde_json::Value) -> Option<u64> {
    if let Some(n) = key.as_u64() {
        return Some(n);
    }
    let bytes: Vec<u8> = key
        .as_array()?
        .iter()
        .map(|b| u8::from_str_radix(b.as_str()?.trim_start_matches("0x"), 16).ok())
        .collect::<Option<_>>()?;
    Some(u64::from_ne_bytes(bytes.try_into().ok()?))
}

/// The cgroup-v2 directory process `pid` runs in (an agent's, to place
/// another process beside it).
pub fn cgroup_of(pid: u32) -> anyhow::Result<PathBuf> {
    let membership = std::fs::read_to_string(format!("/proc/{pid}/cgroup"))?;
    let path = membership
        .lines()
        .find_map(|l| l.strip_prefix("0::"))
        .with_context(|| format!("no cgroup-v2 line in /proc/{pid}/cgroup"))?;
    Ok(crate::sys::cgroup2_root()?.join(path.trim_start_matches('/')))
}

/// A cgroup's id, as `bpf_get_current_cgroup_id()` returns it for the
/// tasks in it: its directory's inode number.
pub fn cgroup_id(dir: &Path) -> anyhow::Result<u64> {
    Ok(std::fs::metadata(dir)
        .with_context(|| format!("cgroup {}", dir.display()))?
        .ino())
}

/// Whether an `ident` answer came from `server` and echoed.
pub fn reached(v: &serde_json::Value, server: &str) -> bool {
    v["server"] == server && v["echoed"] == true
}

impl Cluster {
    /// New connections at a steady rate while something changes on the
    /// node: `count` idents from `pod` to `to`, one every `every`, each a
    /// fresh connection (and a fresh process), one JSON line each.
    pub fn steady_idents(&self, pod: &str, to: &str, count: u32, every: Duration) -> Proc {
        let script = format!(
            "i=0; while [ $i -lt {count} ]; do \"$0\" ident --to {to} --timeout-s 5; i=$((i+1)); sleep {}; done",
            every.as_secs_f32()
        );
        let mut cmd = self.pod_command(pod, "/bin/sh").unwrap();
        cmd.arg("-c").arg(script).arg(&self.bins.meshtb);
        Proc::spawn(&format!("idents from {pod}"), cmd, None).unwrap()
    }
}

/// Every ident line of a finished `Cluster::steady_idents`, checked: each
/// reached `server` and echoed, and none is missing.
pub fn all_reached(mut p: Proc, server: &str, count: u32) {
    p.wait_exit(Duration::from_secs(90)).unwrap();
    let lines = p.json_lines();
    let failed: Vec<&serde_json::Value> = lines.iter().filter(|v| !reached(v, server)).collect();
    assert!(failed.is_empty(), "connections that failed: {failed:?}");
    assert_eq!(lines.len(), count as usize, "{lines:?}");
}
