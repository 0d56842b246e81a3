//! The L7 test bed: one cluster carrying all six routes at once, so that
//! each load runs over every route moments apart on the same nodes.
//!
//! ```text
//! node 0: client (enrolled), plain (not enrolled)
//! node 1: b1 b2 (enrolled, Services web-wp, web-routes, web-policy and web-l4), d1 d2 (not enrolled)
//! node 2: wp-0 (the waypoint of web-wp, web-routes and routed-NN), haproxy (not enrolled)
//! ```
//! Every backend runs the same server (`meshtb serve --mode web`); the
//! mesh's routes reach b1/b2, the mesh-free ones d1/d2, so no agent sits on
//! a path that is meant to be without one. The view holds 1,000 HTTPRoutes
//! ([`routes`]), ten on web-routes and ten on each of 99 Services without
//! endpoints; web-wp has none. web-policy has an AuthorizationPolicy, a
//! rate limit and a DestinationRule ([`policies`]) and no route.
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
    observed::{self, RuleCount, ViewBuilt, ViewHeld, Views},
    policies, routes,
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
const ROUTES_VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 42);
const POLICY_VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 43);
/// The backends' web server, behind the Services' ports 80 (HTTP/1.1) and
/// 81 (h2c).
const SERVER_PORT: u16 = 8080;
const MESH_BACKENDS: [&str; 2] = ["b1", "b2"];
const PLAIN_BACKENDS: [&str; 2] = ["d1", "d2"];
const HAPROXY_READY: Duration = Duration::from_secs(10);
/// From documents written to the file to the waypoint's view with them: a
/// poll of the file (100 ms), a parse and a build.
const VIEW_APPLIED: Duration = Duration::from_secs(30);
/// From a view built to the waypoint's memory read: the proxy has taken
/// the new view and dropped the old one.
const VIEW_SETTLED: Duration = Duration::from_secs(1);

/// The table's columns: how a request gets from the client to a backend.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Route {
    /// No mesh, no hop: an unenrolled client to an unenrolled backend.
    Direct,
    /// The agents over HBONE mTLS to the Service's backends, no waypoint.
    L4Mesh,
    /// The Service uses the waypoint on node 2: client → waypoint →
    /// backend, both hops HBONE mTLS. The Service has no route.
    Waypoint,
    /// The same through the same waypoint to a Service with ten routes of
    /// its own, 1,000 in the view ([`routes`]).
    WaypointRoutes,
    /// The same through the same waypoint to a Service with an
    /// AuthorizationPolicy of 100 rules, a rate limit and a
    /// DestinationRule in force ([`policies`]).
    WaypointPolicies,
    /// HAProxy on node 2 as the same L7 hop in plaintext, no mesh.
    Haproxy,
}

impl Route {
    pub const ALL: [Route; 6] = [
        Route::Direct,
        Route::L4Mesh,
        Route::Waypoint,
        Route::WaypointRoutes,
        Route::WaypointPolicies,
        Route::Haproxy,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Route::Direct => "direct",
            Route::L4Mesh => "L4 mesh (HBONE mTLS)",
            Route::Waypoint => "through the waypoint",
            Route::WaypointRoutes => "through the waypoint, 1,000 routes",
            Route::WaypointPolicies => "through the waypoint, policies in force",
            Route::Haproxy => "HAProxy (plaintext L7 hop)",
        }
    }

    /// The pod the load runs in: an enrolled one where the mesh carries it.
    fn client(self) -> &'static str {
        match self {
            Route::L4Mesh | Route::Waypoint | Route::WaypointRoutes | Route::WaypointPolicies => {
                "client"
            }
            Route::Direct | Route::Haproxy => "plain",
        }
    }
}

/// A Service of the bed: ports 80 (HTTP/1.1) and 81 (h2c) to the web
/// server, its `labels` (YAML flow), and b1/b2 as its endpoints if it has
/// `backends`.
fn service(name: &str, vip: Ipv4Addr, labels: &str, backends: bool) -> String {
    let selector = if backends {
        "\n  selector: {tier: web}"
    } else {
        ""
    };
    format!(
        "apiVersion: v1
kind: Service
metadata:
  name: {name}
  namespace: default
  labels: {{{labels}}}
spec:
  clusterIP: {vip}{selector}
  ports:
  - {{name: http, port: {h1}, targetPort: {SERVER_PORT}}}
  - {{name: api, port: {h2}, targetPort: {SERVER_PORT}, appProtocol: kubernetes.io/h2c}}
",
        h1 = haproxy::H1_PORT,
        h2 = haproxy::H2C_PORT,
    )
}

fn uses_waypoint() -> String {
    format!("istio.io/use-waypoint: {WAYPOINT}")
}

/// The Services the loads go to: the same backends and ports through the
/// waypoint without routes (web-wp), with them (web-routes), with policies
/// (web-policy, whose policies follow), and without the waypoint (web-l4).
fn services() -> String {
    [
        service("web-wp", WAYPOINT_VIP, &uses_waypoint(), true),
        service(routes::ROUTED, ROUTES_VIP, &uses_waypoint(), true),
        service(policies::SERVICE, POLICY_VIP, &uses_waypoint(), true),
        service("web-l4", L4_VIP, "", true),
        policies::docs(),
    ]
    .join("---\n")
}

/// The file's documents at each step of the bed's start: the Services the
/// loads go to; then the 99 other Services with routes (through the
/// waypoint, no endpoints); then the 1,000 routes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Docs {
    Services,
    RouteHolders,
    Routes,
}

impl Docs {
    fn text(self) -> String {
        let mut docs = vec![services()];
        if self != Docs::Services {
            docs.extend(
                routes::other_services()
                    .iter()
                    .map(|(name, vip)| service(name, *vip, &uses_waypoint(), false)),
            );
        }
        if self == Docs::Routes {
            docs.push(routes::http_routes([haproxy::H1_PORT, haproxy::H2C_PORT]));
        }
        docs.join("---\n")
    }
}

pub struct L7Bed {
    pub cluster: Cluster,
    /// The waypoint's view before the routes and with them.
    pub views: Views,
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
        let mut cluster = Cluster::start(spec.with_docs(&Docs::Services.text()))?;
        let mut procs = Vec::new();
        for b in MESH_BACKENDS.into_iter().chain(PLAIN_BACKENDS) {
            procs.push(cluster.serve(b, &SERVER_PORT.to_string(), "web")?);
        }
        let waypoint_pid = only_process(&cluster.waypoint_pod(WAYPOINT).cgroup)
            .context("the waypoint's process")?;
        let views = add_routes(&mut cluster, waypoint_pid)?;
        let servers: Vec<(Ipv4Addr, u16)> = PLAIN_BACKENDS
            .iter()
            .map(|b| (cluster.pod(b).ip, SERVER_PORT))
            .collect();
        let haproxy = start_haproxy(&cluster, &haproxy::config(&servers))?;
        let haproxy_pid = haproxy.pid();
        procs.push(haproxy);
        Ok(Self {
            views,
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
            (Route::WaypointRoutes, false) => (ROUTES_VIP, haproxy::H1_PORT),
            (Route::WaypointRoutes, true) => (ROUTES_VIP, haproxy::H2C_PORT),
            (Route::WaypointPolicies, false) => (POLICY_VIP, haproxy::H1_PORT),
            (Route::WaypointPolicies, true) => (POLICY_VIP, haproxy::H2C_PORT),
            (Route::Haproxy, false) => (self.haproxy_ip, haproxy::H1_PORT),
            (Route::Haproxy, true) => (self.haproxy_ip, haproxy::H2C_PORT),
        };
        format!("http://{ip}:{port}{}", load::path())
    }

    /// The L7 hop whose CPU and memory are reported, if the route has one.
    fn hop(&self, route: Route) -> Option<u32> {
        match route {
            Route::Waypoint | Route::WaypointRoutes | Route::WaypointPolicies => {
                Some(self.waypoint_pid)
            }
            Route::Haproxy => Some(self.haproxy_pid),
            Route::Direct | Route::L4Mesh => None,
        }
    }

    /// The requests to web-routes so far, by the route rule that took
    /// them, from the waypoint's metrics.
    pub fn routed_requests(&self) -> anyhow::Result<Vec<RuleCount>> {
        let text = self.cluster.waypoint_metrics(WAYPOINT)?;
        Ok(observed::requests_by_rule(&text, routes::ROUTED))
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

/// Adds the other Services with routes to every node's file, then the
/// routes, and waits for the waypoint's view after each: the same
/// Services without routes and with them. (Its first view, built as it
/// starts, is not logged.)
fn add_routes(c: &mut Cluster, waypoint_pid: u32) -> anyhow::Result<Views> {
    let without_routes = next_view(c, waypoint_pid, Docs::RouteHolders)
        .context("the waypoint's view with the Services that hold routes")?;
    let with_routes =
        next_view(c, waypoint_pid, Docs::Routes).context("the waypoint's view with the routes")?;
    Ok(Views {
        without_routes,
        with_routes,
    })
}

/// Writes `docs` to every node's file and waits (bounded) for the
/// waypoint's next view: its log line, and the waypoint's memory a moment
/// later, once the view it replaced is dropped.
fn next_view(c: &mut Cluster, waypoint_pid: u32, docs: Docs) -> anyhow::Result<ViewHeld> {
    let built = observed::views_built(&c.waypoint_log(WAYPOINT));
    c.set_docs(&docs.text())?;
    let deadline = Instant::now() + VIEW_APPLIED;
    loop {
        let log = c.waypoint_log(WAYPOINT);
        if observed::views_built(&log) > built {
            let view = ViewBuilt::last(&log)
                .context("the waypoint's \"discovery view built\" line has no build_us or sizes")?;
            std::thread::sleep(VIEW_SETTLED);
            // An instant's reading: only the memory figures are used.
            let memory = AgentMeter::start(&[waypoint_pid]).stop();
            return Ok(ViewHeld {
                view,
                rss_mib: memory.rss_mib,
                anon_mib: memory.anon_mib,
            });
        }
        if Instant::now() >= deadline {
            let warnings: Vec<String> = log
                .iter()
                .filter(|l| l["level"] == "WARN" || l["level"] == "ERROR")
                .map(|l| l.to_string())
                .collect();
            bail!(
                "no new view in {VIEW_APPLIED:?}; the waypoint's warnings and errors:\n{}",
                warnings.join("\n")
            );
        }
        std::thread::sleep(Duration::from_millis(100));
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

    fn docs(yaml: &str) -> Vec<serde_yaml::Value> {
        serde_yaml::Deserializer::from_str(yaml)
            .map(|d| serde::Deserialize::deserialize(d).unwrap())
            .collect()
    }

    fn label(d: &serde_yaml::Value) -> serde_yaml::Value {
        d["metadata"]["labels"]["istio.io/use-waypoint"].clone()
    }

    #[test]
    fn the_services_the_loads_go_to_share_backends_and_ports() {
        let docs = docs(&services());
        let names: Vec<&str> = docs
            .iter()
            .map(|d| d["metadata"]["name"].as_str().unwrap())
            .collect();
        assert_eq!(
            names[..4],
            ["web-wp", routes::ROUTED, policies::SERVICE, "web-l4"]
        );
        assert_eq!(docs[0]["spec"]["clusterIP"], "10.96.0.40");
        assert_eq!(docs[1]["spec"]["clusterIP"], "10.96.0.42");
        assert_eq!(docs[2]["spec"]["clusterIP"], "10.96.0.43");
        assert_eq!(docs[3]["spec"]["clusterIP"], "10.96.0.41");
        let waypoint = serde_yaml::Value::from(WAYPOINT);
        assert_eq!(label(&docs[0]), waypoint);
        assert_eq!(label(&docs[1]), waypoint);
        assert_eq!(label(&docs[2]), waypoint);
        assert!(label(&docs[3]).is_null());
        for d in &docs[..4] {
            assert_eq!(d["spec"]["selector"]["tier"], "web");
            assert_eq!(d["spec"]["ports"][0]["port"], haproxy::H1_PORT);
            assert_eq!(d["spec"]["ports"][1]["port"], haproxy::H2C_PORT);
            assert_eq!(d["spec"]["ports"][1]["appProtocol"], "kubernetes.io/h2c");
        }
    }

    /// Each step keeps what the one before wrote, so the views before and
    /// after the routes hold the same Services.
    #[test]
    fn the_file_gains_the_route_holders_then_the_routes() {
        let steps = [Docs::Services, Docs::RouteHolders, Docs::Routes].map(Docs::text);
        assert!(steps[1].starts_with(&steps[0]));
        assert!(steps[2].starts_with(&steps[1]));
        let kinds = |yaml: &str| -> Vec<String> {
            docs(yaml)
                .iter()
                .map(|d| d["kind"].as_str().unwrap().to_owned())
                .collect()
        };
        assert_eq!(
            kinds(&steps[0]),
            [
                "Service",
                "Service",
                "Service",
                "Service",
                "AuthorizationPolicy",
                "HTTPLocalRateLimitPolicy",
                "DestinationRule"
            ]
        );
        let first = docs(&steps[0]).len();
        let holders = docs(&steps[1]);
        assert_eq!(holders.len(), first + routes::SERVICES - 1);
        for (d, (name, vip)) in holders[first..].iter().zip(routes::other_services()) {
            assert_eq!(d["kind"], "Service");
            assert_eq!(d["metadata"]["name"].as_str(), Some(name.as_str()));
            assert_eq!(
                d["spec"]["clusterIP"].as_str(),
                Some(vip.to_string().as_str())
            );
            assert_eq!(label(d), serde_yaml::Value::from(WAYPOINT));
            assert!(d["spec"]["selector"].is_null(), "{name} has no endpoints");
        }
        let all = kinds(&steps[2]);
        let routes = all.iter().filter(|k| *k == "HTTPRoute").count();
        assert_eq!(routes, routes::SERVICES * routes::ROUTES_PER_SERVICE);
        assert_eq!(all.len() - routes, holders.len());
    }

    #[test]
    fn every_route_has_a_label_a_client_and_an_address() {
        let labels: std::collections::BTreeSet<&str> =
            Route::ALL.iter().map(|r| r.label()).collect();
        assert_eq!(labels.len(), Route::ALL.len());
        assert_eq!(Route::WaypointRoutes.client(), Route::Waypoint.client());
        assert_eq!(routes::SERVICES * routes::ROUTES_PER_SERVICE, 1000);
        assert!(Route::WaypointRoutes.label().ends_with(" 1,000 routes"));
        assert_eq!(
            Route::ALL[3],
            Route::WaypointRoutes,
            "measured right after the waypoint without routes"
        );
    }
}
