//! A new agent taking over from the running one on its node
//! (`--handover-dir`): under load nothing is refused or reset; a drain
//! deadline resets only what outlives it; a crashed agent is replaced as
//! on a first start; a new agent that is never ready leaves the running
//! one serving; two new agents take over one after the other.
use std::{
    net::SocketAddr,
    path::Path,
    time::{Duration, Instant},
};

use mesh_testbed::{
    Cluster, ClusterSpec, Proc,
    handover::{all_reached, reached},
};
use serde_json::Value;

const T: Duration = Duration::from_secs(30);
/// Node 1, where the hand-overs happen, runs the servers.
const DEST: usize = 1;

fn ident(c: &Cluster, from: &str, to: &str) -> Value {
    c.client(from, &["ident", "--to", to, "--timeout-s", "5"], T)
        .unwrap_or_else(|e| serde_json::json!({"error": format!("{e:#}")}))
}

/// `hold` clients: one connection each, a line every 100 ms, each line
/// checked as it comes back.
fn holds(c: &Cluster, pod: &str, to: &str, n: usize, seconds: u64) -> Vec<Proc> {
    (0..n)
        .map(|_| {
            c.spawn_client(
                pod,
                &[
                    "hold",
                    "--to",
                    to,
                    "--seconds",
                    &seconds.to_string(),
                    "--interval-ms",
                    "100",
                ],
            )
            .unwrap()
        })
        .collect()
}

fn held_to_the_end(ps: Vec<Proc>) {
    for mut p in ps {
        p.wait_exit(T).unwrap();
        let done = p.json_lines().pop().unwrap();
        assert_eq!(done["ok"], true, "a long-lived stream broke: {done}");
        assert!(done["rounds"].as_u64().unwrap() > 10, "{done}");
    }
}

/// `bulk` clients: `bytes` each way, checksummed on both ends.
fn bulks(c: &Cluster, pod: &str, to: &str, n: usize, bytes: u64) -> Vec<Proc> {
    (0..n)
        .map(|_| {
            c.spawn_client(pod, &["bulk", "--to", to, "--bytes", &bytes.to_string()])
                .unwrap()
        })
        .collect()
}

/// Each bulk's checksums match both ways, and it was still moving bytes
/// `busy_until` after it started (so it spanned what happened then).
fn checksums_match(ps: Vec<Proc>, bytes: u64, busy_until: Duration) {
    for mut p in ps {
        p.wait_exit(Duration::from_secs(90)).unwrap();
        let v = p.json_lines().pop().unwrap();
        assert!(
            v["secs"].as_f64().unwrap() > busy_until.as_secs_f64(),
            "the transfer ended before the hand-over did; make it longer: {v}"
        );
        assert!(v.get("error").is_none_or(Value::is_null), "{v}");
        assert_eq!(v["sent"], bytes, "{v}");
        assert_eq!(v["received"], bytes, "{v}");
        assert_eq!(v["sent_fnv"], v["received_fnv"], "{v}");
    }
}

fn log_has(p: &Proc, message: &str) -> bool {
    p.json_lines().iter().any(|l| l["message"] == message)
}

#[test]
fn a_new_agent_takes_over_under_load_refusing_and_resetting_nothing() {
    mesh_testbed::require_root!();
    // Node 1 runs the server `b` and a same-node client `c`; `a` on node 0
    // reaches `b` over HBONE (mTLS).
    let spec = ClusterSpec::new(&[&["a"], &["b", "c"]]).handover(Duration::from_secs(60));
    let mut c = Cluster::start(spec).unwrap();
    let _echo = c.serve("b", "8080", "echo").unwrap();
    let _ident = c.serve("b", "8081", "ident").unwrap();
    let b = c.pod("b").ip;
    let (echo, idents) = (format!("{b}:8080"), format!("{b}:8081"));

    let count = 60;
    let every = Duration::from_millis(100);
    let new_cross = c.steady_idents("a", &idents, count, every);
    let new_same = c.steady_idents("c", &idents, count, every);
    let long_cross = holds(&c, "a", &echo, 10, 8);
    let long_same = holds(&c, "c", &echo, 10, 8);
    let bytes = 512 << 20;
    let bulks_started = Instant::now();
    let bulk_cross = bulks(&c, "a", &echo, 2, bytes);
    let bulk_same = bulks(&c, "c", &echo, 2, bytes);
    std::thread::sleep(Duration::from_millis(1500));

    let old_pid = c.agent_pids()[DEST];
    let old_id = c.agent_cgroup_id(DEST).unwrap();
    let mut old = c.hand_over(DEST).unwrap();
    let new_id = c.agent_cgroup_id(DEST).unwrap();
    // Both exempt from capture while the old one drains, each in its own
    // cgroup (as each agent has its pod in Kubernetes).
    assert_ne!(old_id, new_id);
    assert_eq!(
        c.exempt_cgroups(DEST).unwrap(),
        [old_id, new_id].into_iter().collect()
    );
    let handed = bulks_started.elapsed();
    assert!(
        log_has(&old, "handed over to the new agent"),
        "{:?}",
        old.output()
    );
    assert_ne!(c.agent_pids()[DEST], old_pid);

    all_reached(new_cross, "b", count);
    all_reached(new_same, "b", count);
    held_to_the_end(long_cross);
    held_to_the_end(long_same);
    checksums_match(bulk_cross, bytes, handed);
    checksums_match(bulk_same, bytes, handed);

    // Its connections gone, the old agent exits long before its deadline.
    let status = old.wait_exit(Duration::from_secs(20)).unwrap();
    assert!(status.success(), "old agent: {status}");
    let out = old.output().join("\n");
    assert!(!out.contains("drain grace over"), "{out}");
    c.wait_exempt(DEST, &[new_id], Duration::from_secs(5))
        .unwrap();

    // The new agent is the node's: it serves, and its endpoints answer.
    assert!(reached(&ident(&c, "a", &idents), "b"));
    assert!(reached(&ident(&c, "c", &idents), "b"));
    let status = SocketAddr::new(c.nodes[DEST].ip.into(), 15021);
    assert_eq!(c.node_get(DEST, status, "/healthz/ready").unwrap().0, 200);
}

#[test]
fn past_the_hand_over_drain_deadline_only_the_older_connections_are_reset() {
    mesh_testbed::require_root!();
    let spec = ClusterSpec::new(&[&["a"], &["b"]]).handover(Duration::from_secs(2));
    let mut c = Cluster::start(spec).unwrap();
    let _echo = c.serve("b", "8080", "echo").unwrap();
    let to = format!("{}:8080", c.pod("b").ip);
    let within = holds(&c, "a", &to, 1, 2);
    let past = holds(&c, "a", &to, 1, 15);
    std::thread::sleep(Duration::from_millis(700));

    let mut old = c.hand_over(DEST).unwrap();
    let handed = Instant::now();
    // Opened after the hand-over: on the new agent, untouched by the old
    // one's deadline.
    let after = holds(&c, "a", &to, 1, 5);
    let status = old.wait_exit(Duration::from_secs(10)).unwrap();
    let took = handed.elapsed();
    assert!(status.success(), "old agent: {status}");
    assert!(
        took >= Duration::from_millis(1500) && took < Duration::from_secs(6),
        "the old agent stops at its 2 s deadline: {took:?}"
    );
    assert!(old.output().join("\n").contains("drain grace over"));

    held_to_the_end(within);
    held_to_the_end(after);
    for mut p in past {
        p.wait_exit(T).unwrap();
        let cut = p.json_lines().pop().unwrap();
        let error = cut["error"].as_str().unwrap_or_default();
        assert!(
            error.contains("reset"),
            "a connection past the deadline is reset, not ended: {cut}"
        );
    }
}

#[test]
fn with_the_running_agent_crashed_a_new_agent_starts_as_a_first_one() {
    mesh_testbed::require_root!();
    let spec = ClusterSpec::new(&[&["a"], &["b"]]).handover(Duration::from_secs(60));
    let mut c = Cluster::start(spec).unwrap();
    let _ident = c.serve("b", "8081", "ident").unwrap();
    let to = format!("{}:8081", c.pod("b").ip);
    assert!(reached(&ident(&c, "a", &to), "b"));
    c.kill_agent(DEST);
    // Its socket file is left; nobody answers it.
    assert!(c.handover_dir(DEST).join("handover.sock").exists());

    c.start_agent(DEST).unwrap();
    // As on a first start: this agent alone is exempt.
    let id = c.agent_cgroup_id(DEST).unwrap();
    assert_eq!(c.exempt_cgroups(DEST).unwrap(), [id].into_iter().collect());
    assert!(
        c.agent_log(DEST)
            .iter()
            .any(|l| l["message"]
                == "no running agent answers the hand-over socket; starting afresh"),
        "{:?}",
        c.agents_raw_output(DEST)
    );
    assert!(reached(&ident(&c, "a", &to), "b"));
    // And it serves the socket for the next one.
    let old = c.hand_over(DEST).unwrap();
    drop(old);
    assert!(reached(&ident(&c, "a", &to), "b"));
}

#[test]
fn a_new_agent_never_ready_exits_and_the_running_one_keeps_serving() {
    mesh_testbed::require_root!();
    let spec = ClusterSpec::new(&[&["a"], &["b", "c"]]).handover(Duration::from_secs(60));
    let mut c = Cluster::start(spec).unwrap();
    let _ident = c.serve("b", "8081", "ident").unwrap();
    let to = format!("{}:8081", c.pod("b").ip);
    let running_id = c.agent_cgroup_id(DEST).unwrap();
    // The new agent's config puts `b` in `c`'s netns: it cannot enroll
    // `b`, which the running agent serves, so it never takes over.
    let (b_ns, c_ns) = (c.pod("b").netns.clone(), c.pod("c").netns.clone());
    let text = c.config_text(DEST);
    assert!(text.contains(&format!("/run/netns/{b_ns}")));
    let wrong = text.replace(&format!("/run/netns/{b_ns}"), &format!("/run/netns/{c_ns}"));
    let config = c.dir.join("wrong-netns.yaml");
    std::fs::write(&config, wrong).unwrap();

    let load = c.steady_idents("a", &to, 40, Duration::from_millis(100));
    let load_same = c.steady_idents("c", &to, 40, Duration::from_millis(100));
    let mut new = c
        .spawn_successor(
            DEST,
            Some(Path::new(&config)),
            &["--handover-ready-timeout", "2s"],
        )
        .unwrap();
    let status = new.wait_exit(Duration::from_secs(30)).unwrap();
    assert!(!status.success(), "the new agent must fail: {status}");
    let out = new.output().join("\n");
    assert!(
        out.contains("not ready to take over within") && out.contains("default/b"),
        "{out}"
    );
    // The running agent never stopped: every connection during and after.
    all_reached(load, "b", 40);
    all_reached(load_same, "b", 40);
    assert!(reached(&ident(&c, "a", &to), "b"));
    assert!(reached(&ident(&c, "c", &to), "b"));
    let running = c.agent_log(DEST);
    assert!(
        running
            .iter()
            .any(|l| l["message"] == "the new agent left before it was ready; still serving"),
        "{running:?}"
    );
    assert!(
        !running
            .iter()
            .any(|l| l["message"] == "handed over to the new agent")
    );
    // It never took over, so it never joined the exempt set.
    assert_eq!(
        c.exempt_cgroups(DEST).unwrap(),
        [running_id].into_iter().collect()
    );
    // A good one still can take over afterwards.
    c.hand_over(DEST).unwrap();
    assert!(reached(&ident(&c, "a", &to), "b"));
}

#[test]
fn two_new_agents_at_once_take_over_one_after_the_other() {
    mesh_testbed::require_root!();
    let spec = ClusterSpec::new(&[&["a"], &["b"]]).handover(Duration::from_secs(60));
    let mut c = Cluster::start(spec).unwrap();
    let _ident = c.serve("b", "8081", "ident").unwrap();
    let to = format!("{}:8081", c.pod("b").ip);
    let load = c.steady_idents("a", &to, 60, Duration::from_millis(100));
    std::thread::sleep(Duration::from_millis(500));

    let mut first = c.spawn_successor(DEST, None, &[]).unwrap();
    let mut second = c.spawn_successor(DEST, None, &[]).unwrap();
    let took = |p: &mut Proc| {
        p.wait_json("took over", Duration::from_secs(60), |v| {
            v["message"] == "agent took over from the running agent"
        })
        .unwrap()
    };
    let t1 = took(&mut first);
    let t2 = took(&mut second);
    // One took over from the original agent, the other from it: the one
    // that went second was offered the sockets only once the other had
    // them, and then handed over itself.
    let handed = |p: &Proc| log_has(p, "handed over to the new agent");
    let first_earlier = t1["timestamp"].as_str() <= t2["timestamp"].as_str();
    let (mut earlier, later) = if first_earlier {
        (first, second)
    } else {
        (second, first)
    };
    assert!(handed(&earlier), "{:?}", earlier.output());
    assert!(!handed(&later), "{:?}", later.output());
    all_reached(load, "b", 60);

    // The original agent drains too; the later one is the node's.
    let mut original = c.adopt_successor(DEST, later).unwrap();
    assert!(log_has(&original, "handed over to the new agent"));
    assert!(
        earlier
            .wait_exit(Duration::from_secs(20))
            .unwrap()
            .success()
    );
    assert!(
        original
            .wait_exit(Duration::from_secs(20))
            .unwrap()
            .success()
    );
    // Both gone: only the node's agent is exempt.
    let id = c.agent_cgroup_id(DEST).unwrap();
    c.wait_exempt(DEST, &[id], Duration::from_secs(5)).unwrap();
    assert!(reached(&ident(&c, "a", &to), "b"));
}

#[test]
fn the_cni_socket_passes_to_the_new_agent_with_the_node() {
    mesh_testbed::require_root!();
    const PLACEHOLDER: &str = "/nonexistent/mesh-cni-placeholder.sock";
    let spec = ClusterSpec::new(&[&["a"], &["b"]])
        .handover(Duration::from_secs(60))
        .configure(|a| a.cni_socket = Some(PLACEHOLDER.into()))
        .without_agents();
    let mut c = Cluster::start(spec).unwrap();
    c.start_ca().unwrap();
    let sockets: Vec<_> = (0..c.nodes.len())
        .map(|n| c.log_dir().join(format!("cni-{n}.sock")))
        .collect();
    for (n, socket) in sockets.iter().enumerate() {
        let text = c
            .config_text(n)
            .replace(PLACEHOLDER, &socket.display().to_string());
        std::fs::write(&c.nodes[n].config, text).unwrap();
    }
    for n in 0..c.nodes.len() {
        c.start_agent(n).unwrap();
    }
    let _ident = c.serve("b", "8081", "ident").unwrap();
    let to = format!("{}:8081", c.pod("b").ip);
    let load = c.steady_idents("a", &to, 30, Duration::from_millis(100));
    std::thread::sleep(Duration::from_millis(500));

    let old = c.hand_over(DEST).unwrap();
    assert!(log_has(&old, "handed over to the new agent"));
    let new = c.agent_log(DEST);
    assert!(
        new.iter().any(|l| l["message"] == "CNI socket listening"),
        "{new:?}"
    );
    std::os::unix::net::UnixStream::connect(&sockets[DEST]).unwrap();
    all_reached(load, "b", 30);
}

#[test]
fn stopped_while_a_new_agent_takes_over_the_old_one_hands_over_first() {
    mesh_testbed::require_root!();
    let spec = ClusterSpec::new(&[&["a"], &["b"]]).handover(Duration::from_secs(60));
    let mut c = Cluster::start(spec).unwrap();
    let _ident = c.serve("b", "8081", "ident").unwrap();
    let to = format!("{}:8081", c.pod("b").ip);
    let load = c.steady_idents("a", &to, 40, Duration::from_millis(100));
    std::thread::sleep(Duration::from_millis(300));

    let mut new = c.spawn_successor(DEST, None, &[]).unwrap();
    new.wait_json("offered", T, |v| {
        v["message"] == "the running agent offered its pods' sockets"
    })
    .unwrap();
    // As a rolling update does once the new pod looks ready.
    c.sigterm_agent(DEST).unwrap();
    new.wait_json("took over", Duration::from_secs(60), |v| {
        v["message"] == "agent took over from the running agent"
    })
    .unwrap();
    let mut old = c.adopt_successor(DEST, new).unwrap();
    assert!(old.wait_exit(Duration::from_secs(20)).unwrap().success());
    let out = old.output().join("\n");
    assert!(
        out.contains("stopping while a new agent takes over")
            && out.contains("handed over to the new agent"),
        "{out}"
    );
    all_reached(load, "b", 40);
    assert!(reached(&ident(&c, "a", &to), "b"));
}
