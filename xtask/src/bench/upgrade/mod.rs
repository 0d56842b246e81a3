//! `--only upgrade`: each node's agent replaced by the hand-over path
//! (`mesh-agent node --handover-dir`, as a rolling update of the DaemonSet
//! does it) while connections are opened at a steady rate and long-lived
//! streams carry data, on a two-node mTLS bed; first the destination
//! node's agent, then the source node's, `--rounds` times. It counts what
//! the load saw (refused, reset, garbled) and times the new agent's start
//! and the old one's exit. A part of its own rather than a datapath mode:
//! the datapath beds stay as they started and are measured round-robin
//! against direct, where this one changes its agents and reports counts
//! and times, not rates against a baseline.
//!
//! - [`outcome`]: what each connection came to, from its client's line;
//! - [`render`]: the table.
mod outcome;
mod render;

use std::{
    process::ExitStatus,
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use mesh_testbed::{Cluster, ClusterSpec, Proc};

use self::{
    outcome::{Outcome, Tally},
    render::{OldExit, Replaced, Side},
};
use super::metering::Steal;

/// The replaced agent's hand-over drain deadline: far past the streams'
/// length, so that it exits because its connections ended, not because
/// time ran out (which the table would say).
const DRAIN: Duration = Duration::from_secs(60);
/// Ports of the servers on both server pods.
const ECHO_PORT: u16 = 8080;
const IDENT_PORT: u16 = 8081;
/// New connections: each of two clients (cross-node, same-node) opens one
/// (a fresh `meshtb ident` process) every 40 ms, 50 per second together
/// at most; the table gives the rate achieved, which each connection's
/// own time and the process start lower.
const IDENT_EVERY: Duration = Duration::from_millis(40);
/// Enough for the idents to outlast the hand-over and the old agent's
/// drain (the holds' length) at the rate asked.
const IDENTS: u32 = 300;
/// Long-lived streams, per path (cross-node, same-node): holds send a line
/// every 100 ms for `HOLD_SECS` and check each comes back as sent; bulks
/// send `BULK_BYTES` and check the FNV checksum of the echo. 50 in all.
const HOLDS: usize = 23;
const HOLD_SECS: u64 = 10;
const BULKS: usize = 2;
/// As lifecycle_handover's: long enough to be still moving when the new
/// agent takes over (the table counts those that were).
const BULK_BYTES: u64 = 512 << 20;
/// Load runs this long before the new agent starts.
const LEAD: Duration = Duration::from_millis(1500);
/// What the new agent logs once it accepts on the pods' sockets (the
/// line the hand-over tests wait for).
const TOOK_OVER: &str = "agent took over from the running agent";
const TAKE_OVER_LIMIT: Duration = Duration::from_secs(60);
/// Everything a replacement started must have ended by then.
const SETTLE_LIMIT: Duration = Duration::from_secs(150);
/// How many failed connections' lines each replacement lists.
const FAILURES_LISTED: usize = 5;

/// Node 0 runs `client0` and `server0`, node 1 `server1` and `client1`.
/// Cross-node, `client0` reaches `server1`: out through node 0's agent,
/// in over HBONE through node 1's. Same-node, on the node replaced:
/// `client1` → `server1` on node 1, `client0` → `server0` on node 0.
fn paths(side: Side) -> [(&'static str, &'static str); 2] {
    let same = match side {
        Side::Destination => ("client1", "server1"),
        Side::Source => ("client0", "server0"),
    };
    [("client0", "server1"), same]
}

/// The whole part: the bed, every replacement, the table.
pub fn run(rounds: u32) -> anyhow::Result<String> {
    let spec =
        ClusterSpec::new(&[&["client0", "server0"], &["server1", "client1"]]).handover(DRAIN);
    let mut c = Cluster::start(spec).context("the upgrade bed")?;
    let mut servers = Vec::new();
    for pod in ["server0", "server1"] {
        servers.push(c.serve(pod, &ECHO_PORT.to_string(), "echo")?);
        servers.push(c.serve(pod, &IDENT_PORT.to_string(), "ident")?);
    }
    let mut steal = Steal::default();
    let mut rows = Vec::new();
    for round in 1..=rounds {
        for side in [Side::Destination, Side::Source] {
            eprintln!(
                "bench: upgrade round {round}/{rounds}, replacing the {} node's agent (node {})",
                side.label(),
                side.node()
            );
            let before = Steal::read();
            let replaced = replace(&mut c, round, side)
                .with_context(|| format!("round {round}, the {} node", side.label()))?;
            steal.add(before, Steal::read());
            rows.push(replaced);
        }
    }
    c.stop_agents();
    let describe = format!(
        "per replacement, two clients open a connection every {} ms each (a fresh `meshtb ident`: cross-node {} and same-node on the node replaced), and {} long-lived streams open {} s before the new agent starts: per path {HOLDS} holds (a line every 100 ms for {HOLD_SECS} s, each checked as it comes back) and {BULKS} bulk transfers of {} MiB each way (FNV checksums of both directions). Hand-over drain deadline {} s. The new agent is the same build as the old one.",
        IDENT_EVERY.as_millis(),
        "client0 → server1",
        2 * (HOLDS + BULKS),
        LEAD.as_secs_f32(),
        BULK_BYTES >> 20,
        DRAIN.as_secs(),
    );
    Ok(render::table(&rows, &describe, steal.percent()))
}

/// A client process and when it was started and seen to end.
struct Client {
    proc: Proc,
    /// Where it connects from and to, for the failure list.
    path: (&'static str, &'static str),
    kind: Kind,
    started: Instant,
    ended: Option<Instant>,
}

#[derive(Clone, Copy, PartialEq)]
enum Kind {
    Idents,
    Hold,
    Bulk,
}

impl Client {
    /// Records when it ended, the first time it is seen to have.
    fn poll(&mut self) {
        if self.ended.is_none() && self.proc.exited().is_some() {
            self.ended = Some(Instant::now());
        }
    }
}

fn addr(c: &Cluster, pod: &str, port: u16) -> String {
    format!("{}:{port}", c.pod(pod).ip)
}

/// Starts the load, replaces node `side`'s agent through the hand-over,
/// waits until the load and the old agent have ended, and counts.
fn replace(c: &mut Cluster, round: u32, side: Side) -> anyhow::Result<Replaced> {
    let mut clients = Vec::new();
    for path @ (from, to) in paths(side) {
        clients.push(Client {
            proc: c.steady_idents(from, &addr(c, to, IDENT_PORT), IDENTS, IDENT_EVERY),
            path,
            kind: Kind::Idents,
            started: Instant::now(),
            ended: None,
        });
    }
    for path @ (from, to) in paths(side) {
        let echo = addr(c, to, ECHO_PORT);
        let hold = [
            "hold",
            "--to",
            &echo,
            "--seconds",
            &HOLD_SECS.to_string(),
            "--interval-ms",
            "100",
        ]
        .map(str::to_owned);
        let bulk = ["bulk", "--to", &echo, "--bytes", &BULK_BYTES.to_string()].map(str::to_owned);
        let streams = std::iter::repeat_n((Kind::Hold, &hold[..]), HOLDS)
            .chain(std::iter::repeat_n((Kind::Bulk, &bulk[..]), BULKS));
        for (kind, args) in streams {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            clients.push(Client {
                proc: c.spawn_client(from, &args)?,
                path,
                kind,
                started: Instant::now(),
                ended: None,
            });
        }
    }
    std::thread::sleep(LEAD);

    let n = side.node();
    let spawned = Instant::now();
    let mut new = c.spawn_successor(n, None, &[])?;
    new.wait_json("took over", TAKE_OVER_LIMIT, |v| v["message"] == TOOK_OVER)?;
    let took_over = Instant::now();
    let mut old = c.adopt_successor(n, new)?;

    let mut old_exit: Option<(Instant, ExitStatus)> = None;
    let deadline = Instant::now() + SETTLE_LIMIT;
    loop {
        clients.iter_mut().for_each(Client::poll);
        if old_exit.is_none() {
            old_exit = old.exited().map(|status| (Instant::now(), status));
        }
        if old_exit.is_some() && clients.iter().all(|cl| cl.ended.is_some()) {
            break;
        }
        if Instant::now() > deadline {
            let running: Vec<String> = clients
                .iter()
                .filter(|cl| cl.ended.is_none())
                .map(|cl| cl.proc.name.clone())
                .chain(old_exit.is_none().then(|| "the replaced agent".to_owned()))
                .collect();
            bail!(
                "still running {}s after the hand-over: {}",
                SETTLE_LIMIT.as_secs(),
                running.join(", ")
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let (exited, status) = old_exit.expect("the loop ends once the old agent has exited");

    let mut new_conns = Tally::default();
    let mut long = Tally::default();
    let mut failures = Vec::new();
    let mut note = |what: String| {
        if failures.len() < FAILURES_LISTED {
            failures.push(what);
        }
    };
    let mut ident_lines = 0usize;
    let mut ident_secs = 0.0f64;
    let mut bulks_spanning = (0, 0);
    let mut last_stream_end = took_over;
    for cl in &clients {
        let (from, to) = cl.path;
        let ended = cl.ended.expect("every client ended before the loop did");
        let lines = cl.proc.json_lines();
        match cl.kind {
            Kind::Idents => {
                ident_lines += lines.len();
                ident_secs = ident_secs.max((ended - cl.started).as_secs_f64());
                for v in &lines {
                    let o = outcome::ident(v, to);
                    new_conns.add(o);
                    if o != Outcome::Ok {
                        note(format!("ident {from} → {to}: {v}"));
                    }
                }
                let missing = (IDENTS as usize).saturating_sub(lines.len());
                for _ in 0..missing {
                    new_conns.add(Outcome::Failed);
                }
                if missing > 0 {
                    note(format!(
                        "ident {from} → {to}: {missing} of {IDENTS} printed no line"
                    ));
                }
            }
            Kind::Hold | Kind::Bulk => {
                last_stream_end = last_stream_end.max(ended);
                let Some(v) = lines.last() else {
                    long.add(Outcome::Failed);
                    note(format!("{} {from} → {to}: no line", cl.proc.name));
                    continue;
                };
                let o = if cl.kind == Kind::Hold {
                    outcome::hold(v)
                } else {
                    bulks_spanning.1 += 1;
                    let moving_for = v["secs"].as_f64().unwrap_or(0.0);
                    if moving_for > (took_over - cl.started).as_secs_f64() {
                        bulks_spanning.0 += 1;
                    }
                    outcome::bulk(v, BULK_BYTES)
                };
                long.add(o);
                if o != Outcome::Ok {
                    let what = if cl.kind == Kind::Hold {
                        "hold"
                    } else {
                        "bulk"
                    };
                    note(format!("{what} {from} → {to}: {v}"));
                }
            }
        }
    }
    let out = old.output().join("\n");
    let old_exit = if !status.success() {
        OldExit::Failed(status.to_string())
    } else if out.contains("drain grace over") {
        OldExit::DrainDeadline
    } else {
        OldExit::Drained
    };
    let signed = |later: Instant, earlier: Instant| match later.checked_duration_since(earlier) {
        Some(d) => d.as_secs_f64(),
        None => -(earlier - later).as_secs_f64(),
    };
    Ok(Replaced {
        round,
        side,
        new: new_conns,
        new_rate: if ident_secs > 0.0 {
            ident_lines as f64 / ident_secs
        } else {
            0.0
        },
        long,
        bulks_spanning,
        serving_s: (took_over - spawned).as_secs_f64(),
        exit_after_last_s: signed(exited, last_stream_end),
        exit_after_take_over_s: signed(exited, took_over),
        old_exit,
        failures,
    })
}
