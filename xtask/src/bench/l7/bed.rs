//! The L7 test bed: one cluster carrying all four routes at once, so that
//! each load runs over every route moments apart on the same nodes.
//!
//! ```text
//! node 0: client (enrolled), plain (not enrolled)
//! node 1: b1 b2 (enrolled, Services web-wp and web-l4), d1 d2 (not enrolled)
//! node 2: wp-0 (the waypoint of web-wp), haproxy (not enrolled)
//! ```
//! Every backend runs the same server (`meshtb serve --mode web`); the
//! mesh's routes reach b1/b2, the mesh-free ones d1/d2, so no agent sits on
//! a path that is meant to be without one.
use std::{
    net::{Ipv4Addr, SocketAddr},
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use mesh_testbed::{Cluster, ClusterSpec, Proc};

use super::{
    haproxy,
    load::{self, Inputs},
    metric::{Figures, Row},
};
use crate::bench::{
    metering::{AgentMeter, Metered},
    mode::Stage,
};

/// The fixed rate at which the L7 hops' CPU and the latency they add are
/// compared.
pub const FIXED_RATE: u32 = 1000;

const WAYPOINT: &str = "wp";
const WAYPOINT_VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 40);
const L4_VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 41);
/// The backends' web server, behind the Services' ports 80 (HTTP/1.1) and
/// 81 (h2c).
const SERVER_PORT: u16 = 8080;
const MESH_BACKENDS: [&str; 2] = ["b1", "b2"];
const PLAIN_BACKENDS: [&str; 2] = ["d1", "d2"];
const HAPROXY_READY: Duration = Duration::from_secs(10);

/// The table's columns: how a request gets from the client to a backend.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Route {
    /// No mesh, no hop: an unenrolled client to an unenrolled backend.
    Direct,
    /// The agents over HBONE mTLS to the Service's backends, no waypoint.
    L4Mesh,
    /// The Service uses the waypoint on node 2: client → waypoint →
    /// backend, both hops HBONE mTLS.
    Waypoint,
    /// HAProxy on node 2 as the same L7 hop in plaintext, no mesh.
    Haproxy,
}

impl Route {
    pub const ALL: [Route; 4] = [
        Route::Direct,
        Route::L4Mesh,
        Route::Waypoint,
        Route::Haproxy,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Route::Direct => "direct",
            Route::L4Mesh => "L4 mesh (HBONE mTLS)",
            Route::Waypoint => "through the waypoint",
            Route::Haproxy => "HAProxy (plaintext L7 hop)",
        }
    }

    /// The pod the load runs in: an enrolled one where the mesh carries it.
    fn client(self) -> &'static str {
        match self {
            Route::L4Mesh | Route::Waypoint => "client",
            Route::Direct | Route::Haproxy => "plain",
        }
    }
}

/// The Services: the same backends and ports, one through the waypoint and
/// one without.
fn services() -> String {
    let service = |name: &str, vip: Ipv4Addr, labels: &str| {
        format!(
            "apiVersion: v1
kind: Service
metadata:
  name: {name}
  namespace: default
  labels: {{{labels}}}
spec:
  clusterIP: {vip}
  selector: {{tier: web}}
  ports:
  - {{name: http, port: {h1}, targetPort: {SERVER_PORT}}}
  - {{name: api, port: {h2}, targetPort: {SERVER_PORT}, appProtocol: kubernetes.io/h2c}}
",
            h1 = haproxy::H1_PORT,
            h2 = haproxy::H2C_PORT,
        )
    };
    [
        service(
            "web-wp",
            WAYPOINT_VIP,
            &format!("istio.io/use-waypoint: {WAYPOINT}"),
        ),
        service("web-l4", L4_VIP, ""),
    ]
    .join("---\n")
}

pub struct L7Bed {
    pub cluster: Cluster,
    inputs: Inputs,
    haproxy_ip: Ipv4Addr,
    waypoint_pid: u32,
    haproxy_pid: u32,
    /// The servers and HAProxy: killed when the bed is dropped, before the
    /// cluster removes the pods.
    _procs: Vec<Proc>,
}

impl L7Bed {
    pub fn start() -> anyhow::Result<Self> {
        eprintln!("bench: starting the L7 bed (waypoint, HAProxy)");
        let mut spec = ClusterSpec::new(&[
            &["client", "plain"],
            &[
                MESH_BACKENDS[0],
                MESH_BACKENDS[1],
                PLAIN_BACKENDS[0],
                PLAIN_BACKENDS[1],
            ],
            &["haproxy"],
        ])
        .waypoint(WAYPOINT, "default", 2);
        for b in MESH_BACKENDS {
            spec = spec.label(b, "tier", "web");
        }
        for p in ["plain", "haproxy", PLAIN_BACKENDS[0], PLAIN_BACKENDS[1]] {
            spec = spec.unenrolled(p);
        }
        let cluster = Cluster::start(spec.with_docs(&services()))?;
        let mut procs = Vec::new();
        for b in MESH_BACKENDS.into_iter().chain(PLAIN_BACKENDS) {
            procs.push(cluster.serve(b, &SERVER_PORT.to_string(), "web")?);
        }
        let waypoint_pid = only_process(&cluster.waypoint_pod(WAYPOINT).cgroup)
            .context("the waypoint's process")?;
        let servers: Vec<(Ipv4Addr, u16)> = PLAIN_BACKENDS
            .iter()
            .map(|b| (cluster.pod(b).ip, SERVER_PORT))
            .collect();
        let haproxy = start_haproxy(&cluster, &haproxy::config(&servers))?;
        let haproxy_pid = haproxy.pid();
        procs.push(haproxy);
        Ok(Self {
            inputs: Inputs::write(cluster.log_dir())?,
            haproxy_ip: cluster.pod("haproxy").ip,
            cluster,
            waypoint_pid,
            haproxy_pid,
            _procs: procs,
        })
    }

    /// Where `route`'s requests go, for HTTP/1.1 or h2c.
    fn url(&self, route: Route, h2c: bool) -> String {
        let (ip, port) = match (route, h2c) {
            (Route::Direct, _) => (self.cluster.pod(PLAIN_BACKENDS[0]).ip, SERVER_PORT),
            (Route::L4Mesh, false) => (L4_VIP, haproxy::H1_PORT),
            (Route::L4Mesh, true) => (L4_VIP, haproxy::H2C_PORT),
            (Route::Waypoint, false) => (WAYPOINT_VIP, haproxy::H1_PORT),
            (Route::Waypoint, true) => (WAYPOINT_VIP, haproxy::H2C_PORT),
            (Route::Haproxy, false) => (self.haproxy_ip, haproxy::H1_PORT),
            (Route::Haproxy, true) => (self.haproxy_ip, haproxy::H2C_PORT),
        };
        format!("http://{ip}:{port}{}", load::path())
    }

    /// The L7 hop whose CPU and memory are reported, if the route has one.
    fn hop(&self, route: Route) -> Option<u32> {
        match route {
            Route::Waypoint => Some(self.waypoint_pid),
            Route::Haproxy => Some(self.haproxy_pid),
            Route::Direct | Route::L4Mesh => None,
        }
    }

    /// Runs one stage over one route; what it measured (even before a
    /// failure) goes into `r`. Stages without an L7 load do nothing.
    pub fn stage(
        &self,
        route: Route,
        stage: Stage,
        secs: u32,
        r: &mut Figures,
    ) -> anyhow::Result<()> {
        let pod = route.client();
        let hop: Vec<u32> = self.hop(route).into_iter().collect();
        let record = |r: &mut Figures, m: Metered, cpu: Row, rss: Option<Row>| {
            if !hop.is_empty() {
                r.insert(cpu, m.cpu);
                if let Some(rss) = rss {
                    r.insert(rss, m.rss_mib);
                }
            }
        };
        match stage {
            Stage::Wrk => {
                let url = self.url(route, false);
                let w = load::wrk_post(&self.cluster, pod, &url, &self.inputs, secs, 1)?;
                r.insert(Row::H1Rate1Conn, w.req_per_sec);
                r.insert(Row::H1P50_1Conn, w.p50_us);
                r.insert(Row::H1P99_1Conn, w.p99_us);
                let meter = AgentMeter::start(&hop);
                let run = load::wrk_post(&self.cluster, pod, &url, &self.inputs, secs, 64);
                record(
                    r,
                    meter.stop(),
                    Row::HopCpu64Conns,
                    Some(Row::HopRss64Conns),
                );
                let w = run?;
                r.insert(Row::H1Rate64Conns, w.req_per_sec);
                r.insert(Row::H1P50_64Conns, w.p50_us);
                r.insert(Row::H1P99_64Conns, w.p99_us);
            }
            Stage::H2load => {
                let url = self.url(route, true);
                let meter = AgentMeter::start(&hop);
                let run = load::h2c_streams(&self.cluster, pod, &url, &self.inputs, secs);
                record(r, meter.stop(), Row::HopCpuH2c, None);
                let h = run?;
                r.insert(Row::H2cRate, h.req_per_sec);
                r.insert(Row::H2cP50, h.p50_us);
                r.insert(Row::H2cP99, h.p99_us);
            }
            Stage::FixedRate => {
                let url = self.url(route, false);
                let meter = AgentMeter::start(&hop);
                let run =
                    load::fixed_rate(&self.cluster, pod, &url, &self.inputs, secs, FIXED_RATE);
                record(r, meter.stop(), Row::HopCpuFixed, Some(Row::HopRssFixed));
                let h = run?;
                r.insert(Row::FixedAchieved, h.req_per_sec);
                r.insert(Row::FixedP50, h.p50_us);
                r.insert(Row::FixedP99, h.p99_us);
            }
            Stage::Iperf3 | Stage::Sockperf | Stage::Hey => {}
        }
        Ok(())
    }
}

/// The one process in a pod's cgroup (the waypoint runs alone in its pod).
fn only_process(cgroup: &std::path::Path) -> anyhow::Result<u32> {
    let procs = std::fs::read_to_string(cgroup.join("cgroup.procs"))
        .with_context(|| format!("{}/cgroup.procs", cgroup.display()))?;
    let pids: Vec<u32> = procs
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect();
    match pids[..] {
        [pid] => Ok(pid),
        _ => bail!(
            "expected one process in {}, found {pids:?}",
            cgroup.display()
        ),
    }
}

/// HAProxy in its pod, in the foreground (`-db`: one process, whose CPU is
/// all of HAProxy's), once a request through it is answered.
fn start_haproxy(c: &Cluster, config: &str) -> anyhow::Result<Proc> {
    let file = c.log_dir().join("haproxy.cfg");
    std::fs::write(&file, config)?;
    let mut cmd = c.pod_command("haproxy", "haproxy")?;
    cmd.arg("-f").arg(&file).arg("-db");
    let mut p = Proc::spawn("haproxy", cmd, None)?;
    let pod = c.pod("haproxy");
    let addr = SocketAddr::from((pod.ip, haproxy::H1_PORT));
    let deadline = Instant::now() + HAPROXY_READY;
    loop {
        if let Some(status) = p.exited() {
            bail!("haproxy exited ({status}): {}", p.output().join("\n"));
        }
        let last = match mesh_testbed::http::get_in(&pod.netns_path(), addr, &load::path()) {
            Ok((200, _)) => return Ok(p),
            Ok((code, body)) => format!("{code}: {}", body.trim()),
            Err(e) => format!("{e:#}"),
        };
        if Instant::now() >= deadline {
            bail!(
                "haproxy not serving after {HAPROXY_READY:?} (GET {}: {last}); output:\n{}",
                load::path(),
                p.output().join("\n")
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_service_uses_the_waypoint_and_the_other_does_not() {
        let docs: Vec<serde_yaml::Value> = serde_yaml::Deserializer::from_str(&services())
            .map(|d| serde::Deserialize::deserialize(d).unwrap())
            .collect();
        assert_eq!(docs.len(), 2);
        let label =
            |d: &serde_yaml::Value| d["metadata"]["labels"]["istio.io/use-waypoint"].clone();
        assert_eq!(docs[0]["spec"]["clusterIP"], "10.96.0.40");
        assert_eq!(label(&docs[0]), serde_yaml::Value::from(WAYPOINT));
        assert_eq!(docs[1]["spec"]["clusterIP"], "10.96.0.41");
        assert!(label(&docs[1]).is_null());
        for d in &docs {
            assert_eq!(d["spec"]["selector"]["tier"], "web");
            assert_eq!(d["spec"]["ports"][1]["appProtocol"], "kubernetes.io/h2c");
        }
    }
}
