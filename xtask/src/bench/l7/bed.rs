//! The L7 test bed: one cluster carrying all six routes at once, so that
//! each load runs over every route moments apart on the same nodes.
//!
//! ```text
//! node 0: client (enrolled), plain (not enrolled)
//! node 1: b1 b2 (enrolled, Services web-wp, web-routes, web-policy and web-l4), d1 d2 (not enrolled)
//! node 2: wp-bare-0 (the waypoint of web-wp only),
//!         wp-0 (the waypoint of web-routes, routed-NN and web-policy), haproxy (not enrolled)
//! ```
//! The bare column has a waypoint of its own, so its CPU and memory are
//! those of a waypoint serving one Service (the case its goals are stated
//! for), not of one that also carries the other columns' loads, routes
//! and policy.
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

/// The bed's two waypoints (Gateways of namespace `default`, both on node
/// 2).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Waypoint {
    /// Bound to web-wp only: the bare column's.
    Bare,
    /// Bound to web-routes, the 99 routed-NN Services and web-policy: the
    /// columns with routes and with policies.
    Shared,
}

impl Waypoint {
    pub const ALL: [Waypoint; 2] = [Waypoint::Bare, Waypoint::Shared];

    /// Its Gateway's name (its pod is `<name>-0`).
    pub fn gateway(self) -> &'static str {
        match self {
            Waypoint::Bare => "wp-bare",
            Waypoint::Shared => "wp",
        }
    }

    /// The Services bound to it (`istio.io/use-waypoint`), as the table
    /// says them.
    pub fn serves(self) -> String {
        match self {
            Waypoint::Bare => "web-wp".to_owned(),
            Waypoint::Shared => format!(
                "{}, {} routed-NN, {}",
                routes::ROUTED,
                routes::SERVICES - 1,
                policies::SERVICE
            ),
        }
    }

    /// The label that binds a Service to it.
    fn use_label(self) -> String {
        format!("istio.io/use-waypoint: {}", self.gateway())
    }
}

/// The table's columns: how a request gets from the client to a backend.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Route {
    /// No mesh, no hop: an unenrolled client to an unenrolled backend.
    Direct,
    /// The agents over HBONE mTLS to the Service's backends, no waypoint.
    L4Mesh,
    /// The Service uses its own waypoint on node 2 (`Waypoint::Bare`):
    /// client → waypoint → backend, both hops HBONE mTLS. The Service has
    /// no route.
    Waypoint,
    /// The same through the other waypoint (`Waypoint::Shared`) to a
    /// Service with ten routes of its own, 1,000 in the view ([`routes`]).
    WaypointRoutes,
    /// The same through `Waypoint::Shared` to a Service with an
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

    /// The waypoint the route goes through, if any.
    pub fn waypoint(self) -> Option<Waypoint> {
        match self {
            Route::Waypoint => Some(Waypoint::Bare),
            Route::WaypointRoutes | Route::WaypointPolicies => Some(Waypoint::Shared),
            Route::Direct | Route::L4Mesh | Route::Haproxy => None,
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

/// The Services the loads go to: the same backends and ports through the
/// bare waypoint without routes (web-wp), through the other with them
/// (web-routes) and with policies (web-policy, whose policies follow), and
/// without a waypoint (web-l4).
fn services() -> String {
    let shared = Waypoint::Shared.use_label();
    [
        service("web-wp", WAYPOINT_VIP, &Waypoint::Bare.use_label(), true),
        service(routes::ROUTED, ROUTES_VIP, &shared, true),
        service(policies::SERVICE, POLICY_VIP, &shared, true),
        service("web-l4", L4_VIP, "", true),
        policies::docs(),
    ]
    .join("---\n")
}

/// The file's documents at each step of the bed's start: the Services the
/// loads go to; then the 99 other Services with routes (through
/// `Waypoint::Shared`, no endpoints); then the 1,000 routes.
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
                    .map(|(name, vip)| service(name, *vip, &Waypoint::Shared.use_label(), false)),
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
    /// Each waypoint's view before the routes and with them (the latter:
    /// before any load).
    pub views: Vec<(Waypoint, Views)>,
    inputs: Inputs,
    haproxy_ip: Ipv4Addr,
    /// Each waypoint's process, in `Waypoint::ALL`'s order.
    waypoint_pids: Vec<(Waypoint, u32)>,
    haproxy_pid: u32,
    /// The servers and HAProxy: killed when the bed is dropped, before the
    /// cluster removes the pods.
    _procs: Vec<Proc>,
}

impl L7Bed {
    /// The bed as the benchmark measures it.
    pub fn start() -> anyhow::Result<Self> {
        Self::start_with_drain(None)
    }

    /// The bed with the agents' and waypoints' drain on SIGTERM bounded
    /// by `drain_grace` (the file's AgentConfig, which both read) when
    /// given: only how they stop differs, not what they do under load.
    pub fn start_with_drain(drain_grace: Option<Duration>) -> anyhow::Result<Self> {
        eprintln!("bench: starting the L7 bed (two waypoints, HAProxy)");
        let mut spec = ClusterSpec::new(&[
            &["client", "plain"],
            &[
                MESH_BACKENDS[0],
                MESH_BACKENDS[1],
                PLAIN_BACKENDS[0],
                PLAIN_BACKENDS[1],
            ],
            &["haproxy"],
        ]);
        for w in Waypoint::ALL {
            spec = spec.waypoint(w.gateway(), "default", 2);
        }
        for b in MESH_BACKENDS {
            spec = spec.label(b, "tier", "web");
        }
        for p in ["plain", "haproxy", PLAIN_BACKENDS[0], PLAIN_BACKENDS[1]] {
            spec = spec.unenrolled(p);
        }
        if let Some(grace) = drain_grace {
            spec = spec.configure(|a| a.limits.drain_grace = grace);
        }
        let mut cluster = Cluster::start(spec.with_docs(&Docs::Services.text()))?;
        let mut procs = Vec::new();
        for b in MESH_BACKENDS.into_iter().chain(PLAIN_BACKENDS) {
            procs.push(cluster.serve(b, &SERVER_PORT.to_string(), "web")?);
        }
        let waypoint_pids = Waypoint::ALL
            .into_iter()
            .map(|w| {
                only_process(&cluster.waypoint_pod(w.gateway()).cgroup)
                    .map(|pid| (w, pid))
                    .with_context(|| format!("waypoint {}'s process", w.gateway()))
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        let views = add_routes(&mut cluster, &waypoint_pids)?;
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
            waypoint_pids,
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
        match route.waypoint() {
            Some(w) => self
                .waypoint_pids
                .iter()
                .find(|(x, _)| *x == w)
                .map(|(_, pid)| *pid),
            None => (route == Route::Haproxy).then_some(self.haproxy_pid),
        }
    }

    /// Stops each waypoint, then each node's agent, with SIGTERM (SIGKILL
    /// after 10 s), as a rollout does: a profiled build writes its profile
    /// on that exit path. Returns the waypoints' process ids.
    pub fn stop(&mut self) -> anyhow::Result<Vec<u32>> {
        for w in Waypoint::ALL {
            self.cluster.stop_waypoint(w.gateway())?;
        }
        self.cluster.stop_agents();
        Ok(self.waypoint_pids.iter().map(|(_, pid)| *pid).collect())
    }

    /// The requests to web-routes so far, by the route rule that took
    /// them, from the metrics of the waypoint it is bound to.
    pub fn routed_requests(&self) -> anyhow::Result<Vec<RuleCount>> {
        let text = self.cluster.waypoint_metrics(Waypoint::Shared.gateway())?;
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
/// routes, and waits for each waypoint's view after each: the same
/// Services without routes and with them, per waypoint in `pids`' order.
/// (Their first views, built as they start, are not logged.)
fn add_routes(c: &mut Cluster, pids: &[(Waypoint, u32)]) -> anyhow::Result<Vec<(Waypoint, Views)>> {
    let without_routes = next_views(c, pids, Docs::RouteHolders)
        .context("the waypoints' views with the Services that hold routes")?;
    let with_routes =
        next_views(c, pids, Docs::Routes).context("the waypoints' views with the routes")?;
    Ok(pids
        .iter()
        .zip(without_routes.into_iter().zip(with_routes))
        .map(|((w, _), (without_routes, with_routes))| {
            (
                *w,
                Views {
                    without_routes,
                    with_routes,
                },
            )
        })
        .collect())
}

/// Writes `docs` to every node's file and waits (bounded) for each
/// waypoint's next view: its log line, and its memory a moment after the
/// last of them, once the view each replaced is dropped.
fn next_views(
    c: &mut Cluster,
    pids: &[(Waypoint, u32)],
    docs: Docs,
) -> anyhow::Result<Vec<ViewHeld>> {
    let built: Vec<usize> = pids
        .iter()
        .map(|(w, _)| observed::views_built(&c.waypoint_log(w.gateway())))
        .collect();
    c.set_docs(&docs.text())?;
    let deadline = Instant::now() + VIEW_APPLIED;
    let mut views = Vec::with_capacity(pids.len());
    for ((w, _), before) in pids.iter().zip(built) {
        views.push(next_view(c, *w, before, deadline)?);
    }
    std::thread::sleep(VIEW_SETTLED);
    Ok(pids
        .iter()
        .zip(views)
        .map(|((_, pid), view)| {
            // An instant's reading: only the memory figures are used.
            let memory = AgentMeter::start(&[*pid]).stop();
            ViewHeld {
                view,
                rss_mib: memory.rss_mib,
                anon_mib: memory.anon_mib,
            }
        })
        .collect())
}

/// Waits until waypoint `w` has logged more than `before` views, or
/// `deadline`; the last view's sizes.
fn next_view(
    c: &Cluster,
    w: Waypoint,
    before: usize,
    deadline: Instant,
) -> anyhow::Result<ViewBuilt> {
    let gateway = w.gateway();
    loop {
        let log = c.waypoint_log(gateway);
        if observed::views_built(&log) > before {
            return ViewBuilt::last(&log).with_context(|| {
                format!(
                    "waypoint {gateway}'s \"discovery view built\" line has no build_us or sizes"
                )
            });
        }
        if Instant::now() >= deadline {
            let warnings: Vec<String> = log
                .iter()
                .filter(|l| l["level"] == "WARN" || l["level"] == "ERROR")
                .map(|l| l.to_string())
                .collect();
            bail!(
                "waypoint {gateway}: no new view in {VIEW_APPLIED:?}; its warnings and errors:\n{}",
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
        let bare = serde_yaml::Value::from(Waypoint::Bare.gateway());
        let shared = serde_yaml::Value::from(Waypoint::Shared.gateway());
        assert_eq!(label(&docs[0]), bare, "web-wp has a waypoint of its own");
        assert_eq!(label(&docs[1]), shared);
        assert_eq!(label(&docs[2]), shared);
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
            assert_eq!(
                label(d),
                serde_yaml::Value::from(Waypoint::Shared.gateway())
            );
            assert!(d["spec"]["selector"].is_null(), "{name} has no endpoints");
        }
        let all = kinds(&steps[2]);
        let routes = all.iter().filter(|k| *k == "HTTPRoute").count();
        assert_eq!(routes, routes::SERVICES * routes::ROUTES_PER_SERVICE);
        assert_eq!(all.len() - routes, holders.len());
    }

    /// The bare column alone goes through `Bare`, which no other Service
    /// of the file names; the routes and policies columns share `Shared`.
    #[test]
    fn each_waypoint_column_names_its_waypoint_and_only_web_wp_uses_the_bare_one() {
        let by_route: Vec<Option<Waypoint>> = Route::ALL.iter().map(|r| r.waypoint()).collect();
        assert_eq!(
            by_route,
            [
                None,
                None,
                Some(Waypoint::Bare),
                Some(Waypoint::Shared),
                Some(Waypoint::Shared),
                None
            ]
        );
        assert_ne!(Waypoint::Bare.gateway(), Waypoint::Shared.gateway());
        let all = docs(&Docs::Routes.text());
        let bare: Vec<&str> = all
            .iter()
            .filter(|d| label(d) == Waypoint::Bare.gateway())
            .map(|d| d["metadata"]["name"].as_str().unwrap())
            .collect();
        assert_eq!(bare, ["web-wp"]);
        let shared = all
            .iter()
            .filter(|d| label(d) == Waypoint::Shared.gateway())
            .count();
        assert_eq!(
            shared,
            routes::SERVICES + 1,
            "web-routes, routed-NN, web-policy"
        );
        assert!(Waypoint::Shared.serves().contains("99 routed-NN"));
        for d in &all {
            let targets = [
                &d["spec"]["parentRefs"][0]["name"],
                &d["spec"]["targetRefs"][0]["name"],
                &d["spec"]["targetRef"]["name"],
            ];
            assert!(
                targets.iter().all(|t| t.as_str() != Some("web-wp")),
                "nothing is attached to web-wp: {d:?}"
            );
        }
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
