//! Traffic aimed at the mesh itself: a pod's 15006 and 15008 reached by
//! every inbound path. Each attempt must be refused at once with one log
//! line, never delivered (before, one such connection made the agent dial
//! itself until it ran out of file descriptors), and the agents must go on
//! serving everyone else with their descriptors back at the baseline.
use std::time::{Duration, Instant};

use mesh_testbed::{Cluster, ClusterSpec};
use serde_json::Value;

const T: Duration = Duration::from_secs(20);
/// A refusal must reach the client within this.
const PROMPT: Duration = Duration::from_secs(1);

fn refused(v: &Value) -> bool {
    v.get("error").is_some() && v["echoed"] != true
}

/// `meshtb ident` to `dst` from inside `pod`; the result and how long it took.
fn ident_from_pod(c: &Cluster, pod: &str, dst: &str) -> (Value, Duration) {
    let started = Instant::now();
    let v = c
        .client(pod, &["ident", "--to", dst, "--timeout-s", "3"], T)
        .unwrap();
    (v, started.elapsed())
}

/// The same from node n's netns, outside every pod and the mesh.
fn ident_from_node(c: &Cluster, n: usize, dst: &str) -> (Value, Duration) {
    let started = Instant::now();
    let mut cmd = c.node_command(n, &c.bins.meshtb).unwrap();
    cmd.args(["ident", "--to", dst, "--timeout-s", "3"]);
    let out = cmd.output().unwrap();
    let v = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("ident output: {e}: {:?}", out));
    (v, started.elapsed())
}

/// hboneprobe from node 0's netns with a mesh certificate: CONNECT to
/// `authority` through `tunnel`.
fn connect_via_probe(c: &Cluster, tunnel: &str, authority: &str) -> (Value, Duration) {
    let started = Instant::now();
    let out = c
        .probe_command(tunnel, &["--authority", authority])
        .unwrap()
        .output()
        .unwrap();
    let v = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "probe to {authority}: {e}: {}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (v, started.elapsed())
}

/// Lines of node n's log that refused traffic to the mesh itself for `dst`.
fn self_refusals(c: &Cluster, n: usize, dst: &str) -> usize {
    c.agent_log(n)
        .iter()
        .filter(|l| l["message"] == "connection to the mesh itself refused" && l["dst"] == dst)
        .count()
}

fn wait_refusal(c: &mut Cluster, n: usize, dst: &str) {
    let dst = dst.to_owned();
    c.wait_agent_log(n, &format!("self-traffic refusal for {dst}"), |l| {
        l["message"] == "connection to the mesh itself refused" && l["dst"] == dst.as_str()
    })
    .unwrap();
}

#[test]
fn connections_to_the_agents_own_ports_are_refused_on_every_path() {
    mesh_testbed::require_root!();
    // a and b share node 0; c is on node 1.
    let mut c = Cluster::start(ClusterSpec::new(&[&["a", "b"], &["c"]])).unwrap();
    let _srv_c = c.serve("c", "8080", "ident").unwrap();
    let _srv_b = c.serve("b", "8080", "ident").unwrap();
    let (c_ip, b_ip) = (c.pod("c").ip, c.pod("b").ip);
    // The baseline after both kinds of traffic ran once: RSS counts the
    // agent's own code pages, and the first tunnel and hand-over fault in
    // megabytes of a debug build's text that no later connection adds to.
    for to in [format!("{c_ip}:8080"), format!("{b_ip}:8080")] {
        let (v, _) = ident_from_pod(&c, "a", &to);
        assert!(v["echoed"] == true, "warm-up to {to}: {v}");
    }
    let baseline: Vec<_> = (0..2).map(|n| c.agent_usage(n).unwrap()).collect();

    // Plaintext from outside the mesh to c's 15006: sk_lookup hands it to
    // the agent, which must not deliver it to "the app" at 15006.
    let dst = format!("{c_ip}:15006");
    let (v, took) = ident_from_node(&c, 0, &dst);
    assert!(refused(&v), "{v}");
    assert!(took < PROMPT, "refused after {took:?}");
    wait_refusal(&mut c, 1, &dst);

    // Plaintext to c's 15008 is not TLS: the HBONE listener refuses it.
    let (v, took) = ident_from_node(&c, 0, &format!("{c_ip}:15008"));
    assert!(refused(&v), "{v}");
    assert!(
        took < PROMPT + Duration::from_secs(3),
        "refused after {took:?}"
    );

    // From pod a: an HBONE tunnel whose CONNECT names c's 15006 or 15008.
    for port in [15006, 15008] {
        let dst = format!("{c_ip}:{port}");
        let (v, took) = ident_from_pod(&c, "a", &dst);
        assert!(refused(&v), "{dst}: {v}");
        assert!(took < PROMPT, "{dst}: refused after {took:?}");
        wait_refusal(&mut c, 1, &dst);
    }

    // CONNECT straight to c's HBONE port with a mesh certificate.
    let tunnel = format!("{c_ip}:15008");
    for port in [15006, 15008] {
        let authority = format!("{c_ip}:{port}");
        let (v, took) = connect_via_probe(&c, &tunnel, &authority);
        assert_eq!(v["status"], 400, "{authority}: {v}");
        assert!(
            took < PROMPT + Duration::from_secs(1),
            "{authority}: {took:?}"
        );
    }

    // Same-node hand-over from a to b's 15006.
    let dst = format!("{b_ip}:15006");
    let (v, took) = ident_from_pod(&c, "a", &dst);
    assert!(refused(&v), "{v}");
    assert!(took < PROMPT, "refused after {took:?}");
    wait_refusal(&mut c, 0, &dst);

    // One line per attempt, not a line per loop turn.
    assert_eq!(self_refusals(&c, 1, &format!("{c_ip}:15006")), 3);
    assert_eq!(self_refusals(&c, 0, &dst), 1);

    // Everyone else is served as before.
    let (v, _) = ident_from_pod(&c, "a", &format!("{c_ip}:8080"));
    assert!(v["server"] == "c" && v["echoed"] == true, "{v}");
    let (v, _) = ident_from_pod(&c, "a", &format!("{b_ip}:8080"));
    assert!(v["server"] == "b" && v["echoed"] == true, "{v}");

    // Nothing held: descriptors back at the baseline (a few of slack for
    // pooled tunnels and the log's own files), memory within a few MiB (a
    // self-loop used to grow until the agent ran out of descriptors).
    for (n, (fds_before, rss_before)) in baseline.iter().enumerate() {
        let (fds, rss) = c.agent_usage(n).unwrap();
        assert!(
            fds <= fds_before + 8,
            "agent {n}: {fds} fds after, {fds_before} before"
        );
        assert!(
            rss <= rss_before + 8 * 1024,
            "agent {n}: {rss} KiB RSS after, {rss_before} before"
        );
    }
    let metrics = c.metrics(1).unwrap();
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("mesh_proxy_refused_connections_total")
                && l.contains("reason=\"own_port\"")),
        "refusals are counted:\n{metrics}"
    );
}
