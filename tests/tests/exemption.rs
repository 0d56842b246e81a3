//! The connect programs leave the agent's own connects alone, and nothing an
//! enrolled pod can put on its socket earns the same treatment. The agent
//! once marked its sockets with SO_MARK 0x539 and the programs skipped that
//! mark; any pod holding CAP_NET_RAW (granted by default) can set a mark,
//! so here an app sets exactly that one and must still be carried by the
//! mesh, encrypted between nodes.
//!
//! The exemption is a set: after a hand-over the old agent drains from its
//! own cgroup (another pod's, in Kubernetes) while the new one serves, and
//! both are left alone until the old one has exited.
use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
    time::Duration,
};

use mesh_testbed::{
    Cluster, ClusterSpec, Proc,
    handover::{cgroup_id, cgroup_of},
    proc::Place,
};
use serde_json::Value;

const MARKER: &[u8] = b"marker-through-mesh";
/// The mark the agent used to put on its own sockets.
const OLD_AGENT_MARK: u32 = 0x539;

/// An app that sets SO_MARK (when argv[1] is not 0) before connect(), then
/// speaks `meshtb serve --mode ident`: reads the server's line, sends the
/// marker, reads the echo. Prints one JSON line, an error included.
const MARKED_CLIENT: &str = r#"
import json, socket, sys
mark, host, port = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])
marker = b"marker-through-mesh"
out = {}
try:
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.settimeout(5)
    if mark:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_MARK, mark)
    out["mark"] = s.getsockopt(socket.SOL_SOCKET, socket.SO_MARK)
    s.connect((host, port))
    out["app_local"] = "%s:%d" % s.getsockname()
    out["app_peer"] = "%s:%d" % s.getpeername()
    f = s.makefile("rb")
    out.update(json.loads(f.readline()))
    s.sendall(marker)
    out["echoed"] = f.read(len(marker)) == marker
except Exception as e:
    out["error"] = repr(e)
print(json.dumps(out))
"#;

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// Runs the app in pod `from` against `to`:`port` with `mark` on its socket.
fn marked_ident(c: &Cluster, from: &str, to: &str, port: u16, mark: u32) -> Value {
    let cmd = c.pod_command(from, "python3").unwrap();
    run_ident(cmd, &c.pod(to).ip.to_string(), port, mark)
}

/// The same app, unmarked, run in `place` (a pod's netns, any cgroup).
fn ident_from(place: &Place, to: &str, port: u16) -> Value {
    run_ident(place.command("python3").unwrap(), to, port, 0)
}

fn run_ident(mut cmd: std::process::Command, to: &str, port: u16, mark: u32) -> Value {
    let out = cmd
        .args(["-c", MARKED_CLIENT, &mark.to_string()])
        .arg(to)
        .arg(port.to_string())
        .output()
        .unwrap();
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "app printed no JSON ({e}): {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

#[test]
fn a_pod_setting_the_old_agent_mark_is_still_carried_by_the_mesh() {
    mesh_testbed::require_root!();
    let mut c = Cluster::start(ClusterSpec::new(&[&["a"], &["c"]])).unwrap();
    let _srv = c.serve("c", "8080", "ident").unwrap();
    let dst = format!("{}:8080", c.pod("c").ip);

    // The marked app first, then the same app without a mark as the control.
    for mark in [OLD_AGENT_MARK, 0] {
        let (v, wire) = c
            .capture_wire(0, || marked_ident(&c, "a", "c", 8080, mark))
            .unwrap();
        assert_eq!(v["mark"], mark, "the app's socket carries the mark: {v}");
        assert_eq!(v["server"], "c", "mark {mark:#x}: {v}");
        assert_eq!(v["echoed"], true, "mark {mark:#x}: {v}");
        // The marked app's connection opened the tunnel (a TLS handshake's
        // worth of bytes); the control's rides the pooled one.
        let least = if mark == OLD_AGENT_MARK { 2000 } else { 500 };
        assert!(
            wire.len() > least,
            "mark {mark:#x}: the capture saw the tunnel: {} bytes",
            wire.len()
        );
        assert!(
            !contains(&wire, MARKER),
            "mark {mark:#x}: payload in plaintext on the wire"
        );
        assert!(
            !contains(&wire, b"\"server\":\"c\""),
            "mark {mark:#x}: reply in plaintext on the wire"
        );

        // connect4 sent the socket to a's agent: the app's peer is the
        // outbound listener in its own netns, not c.
        assert_eq!(v["app_peer"], "127.0.0.1:15001", "mark {mark:#x}: {v}");
        // a's agent carried exactly this connection (the log names the
        // app's port with a's address), over mutual TLS.
        let port = v["app_local"].as_str().unwrap().rsplit(':').next().unwrap();
        let src = format!("{}:{port}", c.pod("a").ip);
        let out = c
            .wait_agent_log(0, "outbound log line of the app's connection", |l| {
                l["message"] == "connection closed"
                    && l["direction"] == "outbound"
                    && l["dst"] == dst.as_str()
                    && l["src"] == src.as_str()
            })
            .unwrap();
        assert_eq!(out["security"], "mutual_tls", "mark {mark:#x}: {out}");
        assert_eq!(out["result"], "ok", "mark {mark:#x}: {out}");
        assert_eq!(out["bytes_sent"], MARKER.len(), "mark {mark:#x}: {out}");
    }

    // The agent's own connects (to c's tunnel port, from a's netns) were
    // still left alone: it knows them by its cgroup.
    let counters = c.counters(0).unwrap();
    assert!(counters["connect_redirected"] >= 2, "{counters:?}");
    assert!(counters["connect_skipped_agent"] >= 1, "{counters:?}");
}

/// What a probe run from `place` to `to` (b's ident server) must show.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expect {
    /// Left alone: it reached b itself, and b saw the probe's own socket.
    Exempt,
    /// Sent to the agent's outbound listener in the pod's netns.
    Captured,
}

/// Runs one probe and checks it against `expect` and the counters; the
/// probe's own address (`app_local`) for the access log checks.
fn probe(c: &Cluster, who: &str, place: &Place, to: &str, expect: Expect) -> String {
    let before = c.counters(0).unwrap();
    let v = ident_from(place, to, 8081);
    let after = c.counters(0).unwrap();
    let rose = |name: &str| after[name] - before[name];
    assert_eq!(v["server"], "b", "{who}: {v}");
    assert_eq!(v["echoed"], true, "{who}: {v}");
    match expect {
        Expect::Exempt => {
            assert_eq!(
                v["app_peer"],
                format!("{to}:8081"),
                "{who}: not redirected: {v}"
            );
            assert_eq!(
                v["peer"], v["app_local"],
                "{who}: b saw the probe's own socket: {v}"
            );
            assert!(
                rose("connect_skipped_agent") >= 1,
                "{who}: {before:?} -> {after:?}"
            );
            assert_eq!(
                rose("connect_redirected"),
                0,
                "{who}: {before:?} -> {after:?}"
            );
        }
        Expect::Captured => {
            assert_eq!(v["app_peer"], "127.0.0.1:15001", "{who}: redirected: {v}");
            assert!(
                rose("connect_redirected") >= 1,
                "{who}: {before:?} -> {after:?}"
            );
        }
    }
    v["app_local"].as_str().unwrap().to_owned()
}

/// A connection from pod `a` to `to` held open through node 0's agent:
/// that agent drains, after handing over, until the test ends it
/// (`end_hold`). Far longer than any test waits, so that a slow machine
/// cannot end it first.
fn hold(c: &Cluster, to: &str) -> Proc {
    let p = c
        .spawn_client(
            "a",
            &[
                "hold",
                "--to",
                to,
                "--seconds",
                "120",
                "--interval-ms",
                "100",
            ],
        )
        .unwrap();
    std::thread::sleep(Duration::from_millis(700));
    p
}

/// Ends a `hold`, so the agent it held drains no more. Still running, it
/// still echoed: a round waits 5 s at most for its echo, and the client
/// exits at the first that fails.
fn end_hold(mut p: Proc) {
    assert!(
        p.exited().is_none(),
        "the held connection broke: {:?}",
        p.output()
    );
    p.kill();
}

fn access_lines_from(log: &[Value], src: &str) -> Vec<Value> {
    log.iter()
        .filter(|l| l["message"] == "connection closed" && l["src"] == src)
        .cloned()
        .collect()
}

/// Pod a (enrolled) on node 0 and b on node 1, outside the mesh, so that
/// whoever connects to b, b sees that socket itself (a redirected connect
/// reaches it from the agent's); agents that hand over. Node 0's first
/// agent, its cgroup, and a connection held through it, so that it drains
/// once it has handed over.
struct Bed {
    c: Cluster,
    b: String,
    first_cg: PathBuf,
    first_id: u64,
    held: Proc,
    _servers: [Proc; 2],
}

fn bed() -> Bed {
    let spec = ClusterSpec::new(&[&["a"], &["b"]])
        .unenrolled("b")
        .handover(Duration::from_secs(60));
    let c = Cluster::start(spec).unwrap();
    let servers = [
        c.serve("b", "8080", "echo").unwrap(),
        c.serve("b", "8081", "ident").unwrap(),
    ];
    let b = c.pod("b").ip.to_string();
    let first_cg = cgroup_of(c.agent_pids()[0]).unwrap();
    let first_id = cgroup_id(&first_cg).unwrap();
    let held = hold(&c, &format!("{b}:8080"));
    Bed {
        c,
        b,
        first_cg,
        first_id,
        held,
        _servers: servers,
    }
}

/// A probe from the draining agent's cgroup `first_cg`, in pod a's netns,
/// is left alone; where it ran.
fn exempt_while_draining(c: &Cluster, first_cg: PathBuf, b: &str) -> Place {
    let place = Place {
        netns: c.pod("a").netns_path(),
        cgroup: first_cg,
    };
    probe(
        c,
        "the first agent's cgroup, while it drains",
        &place,
        b,
        Expect::Exempt,
    );
    place
}

/// Ends the held connection; the draining agent `first` exits, the set is
/// `left`, and a probe from `place` (its cgroup) is captured again.
fn drained(c: &Cluster, held: Proc, first: &mut Proc, left: &[u64], place: &Place, b: &str) {
    end_hold(held);
    assert!(first.wait_exit(Duration::from_secs(30)).unwrap().success());
    c.wait_exempt(0, left, Duration::from_secs(5)).unwrap();
    probe(
        c,
        "the first agent's cgroup, once it has exited",
        place,
        b,
        Expect::Captured,
    );
}

#[test]
fn both_agents_of_a_hand_over_are_exempt_until_the_old_one_has_exited() {
    mesh_testbed::require_root!();
    let Bed {
        mut c,
        b,
        first_cg: old_cg,
        first_id: old_id,
        held,
        _servers,
    } = bed();
    let netns = c.pod("a").netns_path();
    let in_a = |cgroup: &Path| Place {
        netns: netns.clone(),
        cgroup: cgroup.to_owned(),
    };
    assert_eq!(c.exempt_cgroups(0).unwrap(), BTreeSet::from([old_id]));

    // The old agent drains until `held` ends.
    let mut old = c.hand_over(0).unwrap();
    let new_cg = cgroup_of(c.agent_pids()[0]).unwrap();
    let new_id = cgroup_id(&new_cg).unwrap();
    assert_ne!(old_cg, new_cg, "the successor runs in a cgroup of its own");
    assert!(old.exited().is_none(), "the old agent drains");

    // During the old agent's drain both agents are exempt, a pod is not.
    assert_eq!(
        c.exempt_cgroups(0).unwrap(),
        BTreeSet::from([old_id, new_id])
    );
    let from_old = probe(&c, "old agent's cgroup", &in_a(&old_cg), &b, Expect::Exempt);
    let from_new = probe(&c, "new agent's cgroup", &in_a(&new_cg), &b, Expect::Exempt);
    probe(
        &c,
        "the pod's cgroup",
        &in_a(&c.pod("a").cgroup),
        &b,
        Expect::Captured,
    );

    // Once it has exited, its cgroup is exempt no more.
    drained(&c, held, &mut old, &[new_id], &in_a(&old_cg), &b);
    probe(
        &c,
        "new agent's cgroup, later",
        &in_a(&new_cg),
        &b,
        Expect::Exempt,
    );

    // Neither agent carried an exempt probe.
    for (who, src) in [("old", &from_old), ("new", &from_new)] {
        for (agent, log) in [("old", old.json_lines()), ("new", c.agent_log(0))] {
            let lines = access_lines_from(&log, src);
            assert!(
                lines.is_empty(),
                "probe from the {who} agent's cgroup in the {agent} agent's access log: {lines:?}"
            );
        }
    }
}

#[test]
fn in_a_chain_of_hand_overs_each_agent_is_exempt_until_it_has_exited() {
    mesh_testbed::require_root!();
    let Bed {
        mut c,
        b,
        first_cg,
        first_id,
        held,
        _servers,
    } = bed();
    // The first agent drains for as long as `held` runs.
    let mut first = c.hand_over(0).unwrap();
    let second_id = c.agent_cgroup_id(0).unwrap();
    // The second agent holds nothing: handing over, it exits at once, and
    // nobody is left to watch the first one's exit but the first one.
    let mut second = c.hand_over(0).unwrap();
    let third_id = c.agent_cgroup_id(0).unwrap();
    assert!(second.wait_exit(Duration::from_secs(20)).unwrap().success());
    c.wait_exempt(0, &[first_id, third_id], Duration::from_secs(5))
        .unwrap();
    assert!(first.exited().is_none(), "the first agent drains");
    assert!(!BTreeSet::from([first_id, third_id]).contains(&second_id));
    let in_a = exempt_while_draining(&c, first_cg, &b);

    drained(&c, held, &mut first, &[third_id], &in_a, &b);
    // Taken out by the first agent itself, its successor being gone.
    assert!(
        first.json_lines().iter().any(|l| l["message"]
            == "cgroup no longer exempt from redirection"
            && l["reason"] == "this agent exits"
            && l["cgroup"] == first_id),
        "{:?}",
        first.output()
    );
}

#[test]
fn an_agent_starting_afresh_keeps_an_agent_still_draining_exempt() {
    mesh_testbed::require_root!();
    let Bed {
        mut c,
        b,
        first_cg,
        first_id,
        held,
        _servers,
    } = bed();
    let mut first = c.hand_over(0).unwrap();
    let second_cg = cgroup_of(c.agent_pids()[0]).unwrap();
    let second_id = cgroup_id(&second_cg).unwrap();
    assert_eq!(
        c.exempt_cgroups(0).unwrap(),
        BTreeSet::from([first_id, second_id])
    );
    // The second agent crashes while the first drains; the next one finds
    // nobody serving and starts afresh, in a cgroup of its own.
    c.kill_agent(0);
    c.start_agent_apart(0).unwrap();
    assert!(
        c.agent_log(0)
            .iter()
            .any(|l| l["message"]
                == "no running agent answers the hand-over socket; starting afresh"),
        "{:?}",
        c.agents_raw_output(0)
    );
    let third_id = c.agent_cgroup_id(0).unwrap();
    assert!(
        second_cg.exists(),
        "the crashed agent's cgroup is left, empty"
    );
    assert!(first.exited().is_none(), "the first agent drains");
    // The first agent's cgroup still holds it: it stays. The crashed
    // one's holds nobody: it goes.
    assert_eq!(
        c.exempt_cgroups(0).unwrap(),
        BTreeSet::from([first_id, third_id])
    );
    assert!(!BTreeSet::from([first_id, third_id]).contains(&second_id));
    let in_a = exempt_while_draining(&c, first_cg, &b);

    drained(&c, held, &mut first, &[third_id], &in_a, &b);
}
