//! One mode's test bed, up for the whole run with its servers listening,
//! and what each stage run on it records: the tool's figures, and the
//! CPU and memory of whatever carries the traffic.
use std::{net::SocketAddr, path::Path, time::Duration};

use anyhow::Context;
use mesh_testbed::{Cluster, Proc};

use super::{
    metering::{AgentMeter, Metered, Steal, idle_working_set_mib},
    metric::{Figures, Metric},
    mode::{Mode, Stage},
    source_ip::Delivery,
    stats::Samples,
    tools::{self, HTTP_PORT, IPERF3_PORT, SOCKPERF_PORT},
};

/// The test bed finds binaries next to its executable; point it at release
/// builds, and the agent at `agent` (the `mesh` CLI and the waypoint are
/// built beside it, in target/release or target/dist).
pub fn use_release_binaries(agent: &Path) {
    let release = crate::workspace().join("target/release");
    unsafe {
        std::env::set_var("MESH_AGENT_BIN", agent);
        std::env::set_var("MESH_CLI_BIN", agent.with_file_name("mesh"));
        std::env::set_var("MESH_WAYPOINT_BIN", agent.with_file_name("mesh-waypoint"));
        std::env::set_var("MESHTB_BIN", release.join("meshtb"));
        std::env::set_var("HBONEPROBE_BIN", release.join("hboneprobe"));
    }
}

/// Where the server pod's relay listens for a server port (the port plus
/// this), so the relay and the server each have their own.
const RELAY_PORT_OFFSET: u16 = 10000;

/// Where the server pod answers the one ident that checks which address
/// its agent delivers from; no tool uses it.
const IDENT_PORT: u16 = 8081;

pub struct Bed {
    pub mode: Mode,
    pub cluster: Cluster,
    /// Where the tools connect: the server pod, or in the relays' mode the
    /// client pod's relay.
    server: String,
    url: String,
    /// The mesh agents: their memory is reported.
    agents: Vec<u32>,
    /// What carries the traffic on each node, the agents or the two
    /// relays: their CPU is reported, so the relays' column is the floor
    /// the agents' CPU is read against.
    forwarders: Vec<u32>,
    _servers: Vec<Proc>,
    /// Every figure measured so far, over all rounds.
    pub samples: Samples,
    pub steal: Steal,
}

impl Bed {
    pub fn start(mode: Mode) -> anyhow::Result<Self> {
        eprintln!("bench: starting {}", mode.label());
        let cluster = Cluster::start(mode.spec())?;
        let server = cluster.pod("server").ip.to_string();
        let agents = cluster.agent_pids();
        if let Some(delivery) = mode.delivery() {
            check_delivery(&cluster, delivery)?;
        }
        let mut samples = Samples::default();
        samples.add(idle_memory(&agents));
        let mut forwarders = agents.clone();
        let mut servers = tools::start_servers(&cluster)?;
        // The tools connect to the client pod's relay on loopback, as an
        // app's connect() lands on its agent; the server pod's relay
        // delivers over loopback, as the destination agent does.
        let target = if mode == Mode::Relays {
            let (client_side, server_side): (Vec<String>, Vec<String>) =
                [IPERF3_PORT, SOCKPERF_PORT, HTTP_PORT]
                    .into_iter()
                    .map(|port| {
                        let hop = port + RELAY_PORT_OFFSET;
                        (
                            format!("127.0.0.1:{port}={server}:{hop}"),
                            format!("{server}:{hop}=127.0.0.1:{port}"),
                        )
                    })
                    .unzip();
            servers.push(cluster.relay("server", &server_side)?);
            servers.push(cluster.relay("client", &client_side)?);
            forwarders = servers[servers.len() - 2..].iter().map(Proc::pid).collect();
            "127.0.0.1".to_owned()
        } else {
            server
        };
        Ok(Self {
            mode,
            url: format!("http://{target}:{HTTP_PORT}/"),
            cluster,
            server: target,
            agents,
            forwarders,
            _servers: servers,
            samples,
            steal: Steal::default(),
        })
    }

    /// Runs one tool; what it measured (even before a failure) joins the
    /// samples.
    pub fn stage(&mut self, stage: Stage, secs: u32) -> anyhow::Result<()> {
        let mut figures = Figures::new();
        let outcome = match stage {
            Stage::Iperf3 => self.iperf3(secs, &mut figures),
            Stage::Sockperf => self.sockperf(secs, &mut figures),
            Stage::Wrk => self.wrk(secs, &mut figures),
            Stage::Hey => self.hey(secs, &mut figures),
            Stage::FixedRate => self.fixed_rate(secs, &mut figures),
            // The L7 part's alone: measure never asks for it here.
            Stage::H2load => Ok(()),
        };
        self.samples.add(figures);
        outcome
    }

    /// Bulk over 1 and then 4 streams; the forwarders' CPU and the agents'
    /// memory under the single stream (a relay's memory is not comparable:
    /// it holds no mesh state).
    fn iperf3(&self, secs: u32, r: &mut Figures) -> anyhow::Result<()> {
        for (streams, metric) in [(1, Metric::Iperf1Stream), (4, Metric::Iperf4Streams)] {
            let meter = AgentMeter::start(&self.forwarders);
            let run = tools::iperf3(&self.cluster, &self.server, secs, streams);
            let Metered {
                cpu,
                rss_mib,
                anon_mib,
            } = meter.stop();
            r.insert(metric, run?.gbit_per_sec);
            if streams == 1 && !self.forwarders.is_empty() {
                r.insert(Metric::CpuBulk, cpu);
            }
            if streams == 1 && !self.agents.is_empty() {
                r.insert(Metric::RssBulk, rss_mib);
                r.insert(Metric::AnonBulk, anon_mib);
            }
        }
        Ok(())
    }

    fn sockperf(&self, secs: u32, r: &mut Figures) -> anyhow::Result<()> {
        let rtt = tools::sockperf(&self.cluster, &self.server, secs)?;
        r.insert(Metric::SockperfP50, rtt.p50_us);
        r.insert(Metric::SockperfP99, rtt.p99_us);
        Ok(())
    }

    fn wrk(&self, secs: u32, r: &mut Figures) -> anyhow::Result<()> {
        for (conns, threads, rate, p50, p99) in [
            (
                1,
                1,
                Metric::WrkRate1Conn,
                Metric::Wrk1ConnP50,
                Metric::Wrk1ConnP99,
            ),
            (
                64,
                2,
                Metric::WrkRate64Conns,
                Metric::Wrk64ConnsP50,
                Metric::Wrk64ConnsP99,
            ),
        ] {
            let w = tools::wrk(&self.cluster, &self.url, secs, conns, threads)?;
            r.insert(rate, w.req_per_sec);
            r.insert(p50, w.p50_us);
            r.insert(p99, w.p99_us);
        }
        Ok(())
    }

    fn hey(&self, secs: u32, r: &mut Figures) -> anyhow::Result<()> {
        let meter = AgentMeter::start(&self.forwarders);
        let run = tools::hey(&self.cluster, &self.url, secs);
        let cpu = meter.stop().cpu;
        r.insert(Metric::HeyRate, run?.req_per_sec);
        if !self.forwarders.is_empty() {
            r.insert(Metric::CpuNewConnections, cpu);
        }
        Ok(())
    }

    /// Only where something forwards: the stage is for the forwarders' CPU
    /// at a set rate, and direct has none.
    fn fixed_rate(&self, secs: u32, r: &mut Figures) -> anyhow::Result<()> {
        if self.forwarders.is_empty() {
            return Ok(());
        }
        let meter = AgentMeter::start(&self.forwarders);
        let run = tools::fixed_rate(&self.cluster, &self.server, secs);
        let cpu = meter.stop().cpu;
        let load = run?;
        r.insert(Metric::CpuFixedRate, cpu);
        r.insert(Metric::FixedRateAchieved, load.req_per_sec);
        Ok(())
    }
}

/// Whether the server pod sees its client from the address the mode
/// delivers from: a pod whose preserved-source routing could not be set up
/// gets 127.0.0.6 (with a warning in the agent's log), and its column would
/// then compare loopback with loopback.
fn check_delivery(c: &Cluster, delivery: Delivery) -> anyhow::Result<()> {
    let _server = c.serve("server", &IDENT_PORT.to_string(), "ident")?;
    let to = format!("{}:{IDENT_PORT}", c.pod("server").ip);
    let v = c.client(
        "client",
        &["ident", "--to", &to, "--timeout-s", "5"],
        Duration::from_secs(20),
    )?;
    let peer: SocketAddr = v["peer"]
        .as_str()
        .with_context(|| format!("the ident server named no peer: {v}"))?
        .parse()
        .with_context(|| format!("the ident server's peer: {v}"))?;
    delivery
        .check(peer.ip(), c.pod("client").ip)
        .map_err(anyhow::Error::msg)
}

/// The agents' memory once they are up and before any traffic: RSS and
/// RssAnon (of the largest), and what the busiest touches in 2 s. None
/// without agents.
fn idle_memory(agents: &[u32]) -> Figures {
    let mut figures = Figures::new();
    // Every bed waits the same moment after starting, agents or not.
    let meter = AgentMeter::start(agents);
    std::thread::sleep(Duration::from_millis(500));
    let idle = meter.stop();
    if agents.is_empty() {
        return figures;
    }
    figures.insert(Metric::RssIdle, idle.rss_mib);
    figures.insert(Metric::AnonIdle, idle.anon_mib);
    if let Some(touched) = idle_working_set_mib(agents) {
        figures.insert(Metric::TouchedIdle, touched);
    }
    figures
}
