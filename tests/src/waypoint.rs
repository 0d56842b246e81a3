//! Waypoints on the test bed: what a `ClusterSpec` declares, the Gateway
//! document every node's file carries, the CA's `workloads` entry, and the
//! `mesh-waypoint` command line run inside the waypoint's own pod.
use std::{
    ffi::OsString,
    net::{Ipv4Addr, SocketAddr},
    path::Path,
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use serde_json::json;

use crate::{
    cluster::{CA_ADDRESS, Cluster, Pod},
    proc::Proc,
};

/// From start to a waypoint's /ready: its certificate from the CA and its
/// first view.
const WAYPOINT_READY: Duration = Duration::from_secs(30);

/// The pod label that makes a pod one of a Gateway's (Gateway API's).
pub const GATEWAY_NAME_LABEL: &str = "gateway.networking.k8s.io/gateway-name";
/// The Service, Pod or Namespace label that binds it to a waypoint.
pub const USE_WAYPOINT_LABEL: &str = "istio.io/use-waypoint";
/// The Gateway label saying which destinations the waypoint serves.
pub const WAYPOINT_FOR_LABEL: &str = "istio.io/waypoint-for";
/// The Service or Namespace label that refuses every path but the waypoint.
pub const REQUIRE_WAYPOINT_LABEL: &str = "mesh.io/require-waypoint";
/// The waypoint's HBONE listener: the Gateway's `mesh` listener.
pub const HBONE_PORT: u16 = 15008;
/// The waypoint's admin listener (/ready, /metrics, /config_dump).
pub const ADMIN_PORT: u16 = 15020;

/// Which destinations a waypoint serves (`istio.io/waypoint-for`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Serves {
    Service,
    Workload,
    All,
    None,
}

impl Serves {
    pub fn as_str(self) -> &'static str {
        match self {
            Serves::Service => "service",
            Serves::Workload => "workload",
            Serves::All => "all",
            Serves::None => "none",
        }
    }
}

/// One waypoint to run: a Gateway of the agents' waypoint class with an
/// HBONE listener, and one pod for it on `node`.
#[derive(Debug, Clone)]
pub struct WaypointSpec {
    /// The Gateway's name, also its pod's service account (as Istio names
    /// a waypoint's service account after its Gateway).
    pub gateway: String,
    pub namespace: String,
    pub node: usize,
    pub serves: Serves,
}

impl WaypointSpec {
    /// The pod that runs it.
    pub fn pod_name(&self) -> String {
        format!("{}-0", self.gateway)
    }

    /// `<namespace>/<gateway>`, as `--gateway` and the access logs say it.
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.gateway)
    }

    /// The SPIFFE id the waypoint obtains from the CA.
    pub fn identity(&self, trust_domain: &str) -> String {
        format!(
            "spiffe://{trust_domain}/ns/{}/sa/{}",
            self.namespace, self.gateway
        )
    }

    /// The file holding the token the CA accepts for this waypoint.
    pub fn token_file(&self, dir: &Path) -> std::path::PathBuf {
        dir.join(format!(
            "token-waypoint-{}-{}",
            self.namespace, self.gateway
        ))
    }

    /// The Gateway document the node agents and the waypoint read.
    pub fn gateway_doc(&self, class: &str) -> serde_json::Value {
        json!({
            "apiVersion": "gateway.networking.k8s.io/v1",
            "kind": "Gateway",
            "metadata": {
                "name": self.gateway,
                "namespace": self.namespace,
                "labels": {WAYPOINT_FOR_LABEL: self.serves.as_str()},
            },
            "spec": {
                "gatewayClassName": class,
                "listeners": [{"name": "mesh", "port": HBONE_PORT, "protocol": "HBONE"}],
            },
        })
    }

    /// The CA's `workloads` entry for it.
    pub fn ca_workload(&self, dir: &Path) -> serde_json::Value {
        json!({
            "serviceAccount": format!("{}/{}", self.namespace, self.gateway),
            "tokenFile": self.token_file(dir).display().to_string(),
        })
    }

    /// `mesh-waypoint`'s arguments: discovery from the node's file, the
    /// mesh CA on the wire, and the listeners on the pod's wildcard.
    pub fn args(&self, node_file: &Path, ca_address: &str, dir: &Path) -> Vec<OsString> {
        let mut args: Vec<OsString> = Vec::new();
        let mut flag = |name: &str, value: OsString| {
            args.push(name.into());
            args.push(value);
        };
        flag("--local", node_file.into());
        flag("--gateway", self.key().into());
        flag("--service-account", self.gateway.clone().into());
        flag("--ca-address", ca_address.into());
        flag("--ca-root-cert-file", dir.join("root-cert.pem").into());
        flag("--ca-token-file", self.token_file(dir).into());
        flag(
            "--hbone-listen",
            SocketAddr::from((Ipv4Addr::UNSPECIFIED, HBONE_PORT))
                .to_string()
                .into(),
        );
        flag(
            "--admin-listen",
            SocketAddr::from((Ipv4Addr::UNSPECIFIED, ADMIN_PORT))
                .to_string()
                .into(),
        );
        flag("--pod-name", self.pod_name().into());
        flag("--pod-namespace", self.namespace.clone().into());
        args
    }
}

/// A declared waypoint and its process, when running.
pub(crate) struct Waypoint {
    pub(crate) spec: WaypointSpec,
    pub(crate) proc: Option<Proc>,
    /// How many times it was started: each run logs to its own file.
    pub(crate) starts: usize,
}

impl Waypoint {
    pub(crate) fn new(spec: WaypointSpec) -> Self {
        Self {
            spec,
            proc: None,
            starts: 0,
        }
    }
}

impl Cluster {
    fn waypoint_index(&self, gateway: &str) -> anyhow::Result<usize> {
        self.waypoints
            .iter()
            .position(|w| w.spec.gateway == gateway)
            .with_context(|| format!("no waypoint {gateway} in this cluster"))
    }

    /// The declared waypoint named `gateway`.
    pub fn waypoint_spec(&self, gateway: &str) -> &WaypointSpec {
        let i = self
            .waypoint_index(gateway)
            .unwrap_or_else(|e| panic!("{e}"));
        &self.waypoints[i].spec
    }

    /// The pod that runs waypoint `gateway`.
    pub fn waypoint_pod(&self, gateway: &str) -> &Pod {
        self.pod(&self.waypoint_spec(gateway).pod_name())
    }

    /// The SPIFFE id waypoint `gateway` runs as.
    pub fn waypoint_identity(&self, gateway: &str) -> String {
        self.waypoint_spec(gateway)
            .identity(&self.agent_config(0).trust_domain)
    }

    /// Starts (or restarts) `mesh-waypoint` for `gateway` inside its pod
    /// (the pod's netns and cgroup, as the pod's own process would run)
    /// and waits, bounded, until its /ready answers 200.
    pub fn start_waypoint(&mut self, gateway: &str) -> anyhow::Result<()> {
        let i = self.waypoint_index(gateway)?;
        let spec = self.waypoints[i].spec.clone();
        let pod = self.pod(&spec.pod_name()).clone();
        let node_file = self.nodes[spec.node].config.clone();
        let mut cmd = self.pod_command(&pod.name, self.bins.waypoint()?)?;
        cmd.args(spec.args(&node_file, CA_ADDRESS, &self.dir));
        cmd.env(
            "MESH_LOG",
            std::env::var("MESH_LOG").unwrap_or_else(|_| "info".into()),
        );
        let w = &mut self.waypoints[i];
        // Each run its own file: tests read the whole history.
        let log = self
            .dir
            .join(format!("waypoint-{}.{}.log", spec.gateway, w.starts));
        w.starts += 1;
        let mut proc = Proc::spawn(&format!("waypoint {}", spec.key()), cmd, Some(&log))?;
        self.res.agent_pids.push(proc.pid());
        let admin = SocketAddr::from((Ipv4Addr::LOCALHOST, ADMIN_PORT));
        let deadline = Instant::now() + WAYPOINT_READY;
        loop {
            if let Some(status) = proc.exited() {
                bail!(
                    "waypoint {} exited ({status}) before it was ready; output:\n{}",
                    spec.key(),
                    proc.output().join("\n")
                );
            }
            let last = match crate::http::get_in(&pod.netns_path(), admin, "/ready") {
                Ok((200, _)) => break,
                Ok((code, body)) => format!("{code}: {}", body.trim()),
                Err(e) => format!("{e:#}"),
            };
            if Instant::now() >= deadline {
                bail!(
                    "waypoint {} not ready after {WAYPOINT_READY:?} (GET /ready: {last}); output:\n{}",
                    spec.key(),
                    proc.output().join("\n")
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        self.waypoints[i].proc = Some(proc);
        Ok(())
    }

    /// Stops waypoint `gateway` with SIGTERM (its drain), SIGKILL after 10 s.
    pub fn stop_waypoint(&mut self, gateway: &str) -> anyhow::Result<()> {
        let i = self.waypoint_index(gateway)?;
        if let Some(mut p) = self.waypoints[i].proc.take() {
            p.terminate(Duration::from_secs(10));
        }
        Ok(())
    }

    /// Waypoint `gateway`'s log lines (JSON) of its current run.
    pub fn waypoint_log(&self, gateway: &str) -> Vec<serde_json::Value> {
        self.waypoint_index(gateway)
            .ok()
            .and_then(|i| self.waypoints[i].proc.as_ref())
            .map(Proc::json_lines)
            .unwrap_or_default()
    }

    /// Waits (15 s at most) for a line in waypoint `gateway`'s log.
    pub fn wait_waypoint_log(
        &mut self,
        gateway: &str,
        what: &str,
        pred: impl Fn(&serde_json::Value) -> bool,
    ) -> anyhow::Result<serde_json::Value> {
        let i = self.waypoint_index(gateway)?;
        self.waypoints[i]
            .proc
            .as_mut()
            .context("waypoint not running")?
            .wait_json(what, Duration::from_secs(15), pred)
    }

    /// GETs `path` from waypoint `gateway`'s admin listener (from inside
    /// its pod).
    pub fn waypoint_get(&self, gateway: &str, path: &str) -> anyhow::Result<(u16, String)> {
        let pod = self.waypoint_pod(gateway);
        let admin = SocketAddr::from((pod.ip, ADMIN_PORT));
        crate::http::get_in(&pod.netns_path(), admin, path)
    }

    /// Waypoint `gateway`'s metrics exposition.
    pub fn waypoint_metrics(&self, gateway: &str) -> anyhow::Result<String> {
        let (code, body) = self.waypoint_get(gateway, "/metrics")?;
        anyhow::ensure!(
            code == 200,
            "waypoint {gateway}: GET /metrics: {code}: {body}"
        );
        Ok(body)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> WaypointSpec {
        WaypointSpec {
            gateway: "wp".into(),
            namespace: "shop".into(),
            node: 1,
            serves: Serves::Service,
        }
    }

    #[test]
    fn the_gateway_is_a_waypoint_of_the_class_with_an_hbone_listener() {
        let doc = spec().gateway_doc("mesh-waypoint");
        assert_eq!(doc["kind"], "Gateway");
        assert_eq!(doc["apiVersion"], "gateway.networking.k8s.io/v1");
        assert_eq!(doc["metadata"]["namespace"], "shop");
        assert_eq!(doc["metadata"]["labels"][WAYPOINT_FOR_LABEL], "service");
        assert_eq!(doc["spec"]["gatewayClassName"], "mesh-waypoint");
        assert_eq!(
            doc["spec"]["listeners"],
            json!([{"name": "mesh", "port": 15008, "protocol": "HBONE"}])
        );
    }

    #[test]
    fn the_command_line_names_the_gateway_its_account_and_its_token() {
        let args = spec().args(Path::new("/d/n1.yaml"), "10.0.0.254:15012", Path::new("/d"));
        let args: Vec<String> = args.into_iter().map(|a| a.into_string().unwrap()).collect();
        let value = |flag: &str| {
            let i = args.iter().position(|a| a == flag).unwrap();
            args[i + 1].clone()
        };
        assert_eq!(value("--local"), "/d/n1.yaml");
        assert_eq!(value("--gateway"), "shop/wp");
        assert_eq!(value("--service-account"), "wp");
        assert_eq!(value("--ca-token-file"), "/d/token-waypoint-shop-wp");
        assert_eq!(value("--hbone-listen"), "0.0.0.0:15008");
        assert_eq!(value("--pod-name"), "wp-0");
        assert_eq!(
            spec().ca_workload(Path::new("/d")),
            json!({"serviceAccount": "shop/wp", "tokenFile": "/d/token-waypoint-shop-wp"})
        );
    }
}
