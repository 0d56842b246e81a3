//! End-to-end tests of the kernel datapath and plaintext forwarding, on the
//! test bed: real programs, real agents, real namespaces.
use std::time::Duration;

use mesh_testbed::{Cluster, ClusterSpec};
use serde_json::Value;

const T: Duration = Duration::from_secs(20);

fn two_by_two() -> ClusterSpec {
    ClusterSpec::new(&[&["a", "b"], &["c", "d"]])
}

fn closed(log: &[Value], direction: &str, dst: &str) -> Vec<Value> {
    log.iter()
        .filter(|v| {
            v["message"] == "connection closed" && v["direction"] == direction && v["dst"] == dst
        })
        .cloned()
        .collect()
}

/// Connects from `from` to `to` and checks the reply came from the right
/// server, saw `from`'s own IP, and echoed the marker.
fn ident_ok(c: &Cluster, from: &str, to: &str, port: u16) -> Value {
    let dst = format!("{}:{port}", c.pod(to).ip);
    let v = c.client(from, &["ident", "--to", &dst], T).unwrap();
    assert_eq!(v["server"], to, "{from} -> {dst}: {v}");
    assert_eq!(v["port"], port, "{v}");
    assert_eq!(v["echoed"], true, "{v}");
    v
}

#[test]
fn pod_to_pod_same_node_and_across_nodes_is_captured_and_delivered() {
    mesh_testbed::require_root!();
    let mut c = Cluster::start(two_by_two()).unwrap();
    let _b = c.serve("b", "8080", "ident").unwrap();
    let _c = c.serve("c", "8080", "ident").unwrap();

    for (to, security) in [("b", "local"), ("c", "mutual_tls")] {
        let v = ident_ok(&c, "a", to, 8080);
        // The destination is enrolled: the agent delivers inside its netns,
        // from a's own address (datapath.sourceIp: preserve).
        let peer = v["peer"].as_str().unwrap();
        assert!(
            peer.starts_with(&format!("{}:", c.pod("a").ip)),
            "inbound delivery source: {peer}"
        );
        let dst = format!("{}:8080", c.pod(to).ip);
        let out = c
            .wait_agent_log(0, "outbound log line", |l| {
                l["message"] == "connection closed"
                    && l["direction"] == "outbound"
                    && l["dst"] == dst.as_str()
            })
            .unwrap();
        assert_eq!(out["security"], security, "{out}");
        assert_eq!(out["result"], "ok", "{out}");
        assert_eq!(out["bytes_sent"], 19, "marker length: {out}");
        assert!(
            out["src"]
                .as_str()
                .unwrap()
                .starts_with(&format!("{}:", c.pod("a").ip)),
            "{out}"
        );
    }
    // Across nodes the destination agent terminated the tunnel, and saw it
    // come from a's own address with a's verified identity.
    let dst = format!("{}:8080", c.pod("c").ip);
    let inbound = c
        .wait_agent_log(1, "inbound log line", |l| {
            l["message"] == "connection closed"
                && l["direction"] == "inbound"
                && l["dst"] == dst.as_str()
        })
        .unwrap();
    let src = inbound["src"].as_str().unwrap();
    assert!(src.starts_with(&format!("{}:", c.pod("a").ip)), "{inbound}");
    assert_eq!(inbound["security"], "mutual_tls", "{inbound}");
    assert_eq!(
        inbound["source_identity"], "spiffe://cluster.local/ns/default/sa/a",
        "{inbound}"
    );
    assert_eq!(inbound["bytes_received"], 19, "marker length: {inbound}");
    let counters = c.counters(0).unwrap();
    assert!(counters["connect_redirected"] >= 2, "{counters:?}");
    // a's agent connected out of a's netns (to b's app, to c's tunnel port);
    // being the agent's (its cgroup) kept both out of the redirect (no loop).
    assert!(counters["connect_skipped_agent"] >= 2, "{counters:?}");
}

#[test]
fn inbound_plaintext_is_captured_and_unenrolled_pods_are_not() {
    mesh_testbed::require_root!();
    // d is not enrolled: its outbound connections go direct, but c (enrolled)
    // still captures them inbound.
    let mut c = Cluster::start(two_by_two().unenrolled("d")).unwrap();
    let _srv = c.serve("c", "9000", "ident").unwrap();
    let v = ident_ok(&c, "d", "c", 9000);
    let d_ip = format!("{}:", c.pod("d").ip);
    assert!(v["peer"].as_str().unwrap().starts_with(&d_ip), "{v}");
    let dst = format!("{}:9000", c.pod("c").ip);
    let inbound = c
        .wait_agent_log(1, "inbound capture", |l| {
            l["message"] == "connection closed"
                && l["direction"] == "inbound"
                && l["dst"] == dst.as_str()
        })
        .unwrap();
    assert!(
        inbound["src"]
            .as_str()
            .unwrap()
            .starts_with(&format!("{}:", c.pod("d").ip))
    );
    assert!(
        closed(&c.agent_log(1), "outbound", &dst).is_empty(),
        "d is not enrolled: no outbound capture"
    );
    assert!(
        !c.agent_log(1)
            .iter()
            .any(|l| l["message"] == "pod enrolled" && l["pod"] == "default/d")
    );

    // A client in the node's netns (not a pod) is captured inbound too.
    let mut cmd = c.node_command(1, &c.bins.meshtb).unwrap();
    cmd.args(["ident", "--to", &dst]);
    let out = cmd.output().unwrap();
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["server"], "c", "{v}");
    // Delivered by the agent, from the node's own address (the port is the
    // delivery's own).
    let peer: std::net::SocketAddr = v["peer"].as_str().unwrap().parse().unwrap();
    let from_node = format!("{}:", peer.ip());
    c.wait_agent_log(1, "the node's connection captured", |l| {
        l["message"] == "connection closed"
            && l["direction"] == "inbound"
            && l["dst"] == dst.as_str()
            && l["src"].as_str().is_some_and(|s| s.starts_with(&from_node))
    })
    .unwrap();
}

#[test]
fn two_hundred_concurrent_connections_each_reach_their_own_destination() {
    mesh_testbed::require_root!();
    let c = Cluster::start(two_by_two()).unwrap();
    let _srv = c.serve("c", "20000-20199", "ident").unwrap();
    let host = c.pod("c").ip.to_string();
    let v = c
        .client(
            "a",
            &["fanout", "--host", &host, "--ports", "20000-20199"],
            Duration::from_secs(60),
        )
        .unwrap();
    assert_eq!(v["failed"].as_array().unwrap().len(), 0, "{}", v["failed"]);
    let reached = v["reached"].as_array().unwrap();
    assert_eq!(reached.len(), 200);
    for r in reached {
        assert_eq!(
            r["asked"], r["reached"],
            "a connection landed on the wrong destination: {r}"
        );
    }
    let counters = c.counters(0).unwrap();
    assert!(counters["connect_redirected"] >= 200, "{counters:?}");
}

fn bulk_roundtrip(splice: bool) {
    const SIZE: u64 = 64 * 1024 * 1024;
    let c = Cluster::start(two_by_two().splice(splice)).unwrap();
    let _srv = c.serve("c", "7000", "echo").unwrap();
    let dst = format!("{}:7000", c.pod("c").ip);
    let v = c
        .client(
            "a",
            &["bulk", "--to", &dst, "--bytes", &SIZE.to_string()],
            Duration::from_secs(120),
        )
        .unwrap();
    assert_eq!(v["error"], Value::Null, "{v}");
    assert_eq!(v["sent"], SIZE, "{v}");
    assert_eq!(v["received"], SIZE, "{v}");
    assert_eq!(v["sent_fnv"], v["received_fnv"], "payload corrupted: {v}");
    for n in 0..2 {
        let counters = c.counters(n).unwrap();
        if splice {
            // a<->agent on node 0, agent<->c on node 1: both hops spliced.
            assert!(counters["splice_inserted"] >= 2, "node {n}: {counters:?}");
            assert!(counters["splice_redirected"] > 0, "node {n}: {counters:?}");
        } else {
            assert_eq!(counters["splice_inserted"], 0, "node {n}: {counters:?}");
        }
    }
}

#[test]
fn bulk_64mib_each_way_with_half_close_through_the_spliced_path() {
    mesh_testbed::require_root!();
    bulk_roundtrip(true);
}

#[test]
fn bulk_64mib_each_way_with_half_close_without_splicing() {
    mesh_testbed::require_root!();
    bulk_roundtrip(false);
}

#[test]
fn killed_agent_fails_closed_and_a_restarted_agent_adopts_the_pinned_datapath() {
    mesh_testbed::require_root!();
    let mut c = Cluster::start(two_by_two()).unwrap();
    let mut srv_a = c.serve("a", "8080", "ident").unwrap();
    let _srv_c = c.serve("c", "8080", "ident").unwrap();
    ident_ok(&c, "a", "c", 8080);
    ident_ok(&c, "c", "a", 8080);
    let accepted_before = srv_a
        .json_lines()
        .iter()
        .filter(|v| v.get("accepted").is_some())
        .count();

    c.kill_agent(0);
    // Outbound from an enrolled pod: refused, never direct.
    let c_dst = format!("{}:8080", c.pod("c").ip);
    let v = c
        .client("a", &["ident", "--to", &c_dst, "--timeout-s", "3"], T)
        .unwrap();
    assert_eq!(v["kind"], "ConnectionRefused", "{v}");
    // Inbound to an enrolled pod: nothing reaches the app, neither over
    // HBONE from c's agent (no listener on 15008) nor as plaintext from a
    // client outside the mesh (sk_lookup drops it).
    let a_dst = format!("{}:8080", c.pod("a").ip);
    let v = c
        .client("c", &["ident", "--to", &a_dst, "--timeout-s", "3"], T)
        .unwrap();
    assert!(
        v.get("error").is_some(),
        "inbound reached a with its agent down: {v}"
    );
    let mut cmd = c.node_command(1, &c.bins.meshtb).unwrap();
    cmd.args(["ident", "--to", &a_dst, "--timeout-s", "3"]);
    let out = cmd.output().unwrap();
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(
        v.get("error").is_some(),
        "plaintext inbound reached a with its agent down: {v}"
    );
    // Unenrolled-style direct delivery would show up in a's server as an accept.
    std::thread::sleep(Duration::from_millis(200));
    let accepted_after = srv_a
        .json_lines()
        .iter()
        .filter(|v| v.get("accepted").is_some())
        .count();
    assert_eq!(
        accepted_before, accepted_after,
        "a's server accepted a connection while its agent was down"
    );
    let counters = c.counters(0).unwrap();
    assert!(counters["inbound_dropped_no_listener"] >= 1, "{counters:?}");

    c.start_agent(0).unwrap();
    let attached = c
        .wait_agent_log(0, "datapath attached", |l| {
            l["message"] == "datapath attached"
        })
        .unwrap();
    assert_eq!(attached["adopted"], true, "{attached}");
    ident_ok(&c, "a", "c", 8080);
    ident_ok(&c, "c", "a", 8080);
    let from_c = format!("{}:", c.pod("c").ip);
    srv_a
        .wait_json("accept after restart", T, |v| {
            v.get("accepted").is_some() && v["accepted"].as_str().unwrap().starts_with(&from_c)
        })
        .unwrap();
    // Delivered by the restarted agent.
    c.wait_agent_log(0, "a delivery after restart", |l| {
        l["message"] == "connection closed"
            && l["direction"] == "inbound"
            && l["dst"] == a_dst.as_str()
            && l["result"] == "ok"
    })
    .unwrap();
}

#[test]
fn unenrolled_pod_goes_direct_and_leaves_nothing_behind() {
    mesh_testbed::require_root!();
    let mut c = Cluster::start(two_by_two()).unwrap();
    let _srv = c.serve("b", "8080", "ident").unwrap();
    let pins = c.nodes[0].pin_dir.clone();
    assert_eq!(
        mesh_testbed::sys::pinned_map_len(&pins.join("MESH_ENROLLED")).unwrap(),
        2
    );
    // One sk_lookup link per enrolled pod, named by its netns cookie.
    assert_eq!(mesh_testbed::sys::pod_links(&pins).len(), 2);

    c.set_enrolled("a", false).unwrap();
    c.wait_agent_log(0, "a unenrolled", |l| {
        l["message"] == "pod unenrolled" && l["pod"] == "default/a"
    })
    .unwrap();
    assert_eq!(
        mesh_testbed::sys::pinned_map_len(&pins.join("MESH_ENROLLED")).unwrap(),
        1
    );
    assert_eq!(
        mesh_testbed::sys::pinned_map_len(&pins.join("MESH_POD_ADDRS")).unwrap(),
        1,
        "only b's address remains"
    );
    assert_eq!(
        mesh_testbed::sys::pod_links(&pins).len(),
        1,
        "a's sk_lookup link is gone"
    );

    let before = c.counters(0).unwrap()["connect_redirected"];
    ident_ok(&c, "a", "b", 8080);
    let after = c.counters(0).unwrap()["connect_redirected"];
    // a went direct (b is still enrolled and captures inbound: one more
    // redirect would be a's connect; none happened).
    assert_eq!(before, after, "a's connect was redirected after unenroll");
    // a's listeners are closed: nothing listens on 15001 in a's netns.
    let v = c
        .client(
            "a",
            &["ident", "--to", "127.0.0.1:15001", "--timeout-s", "2"],
            T,
        )
        .unwrap();
    assert_eq!(v["kind"], "ConnectionRefused", "{v}");

    // Enrolled again: captured again.
    c.set_enrolled("a", true).unwrap();
    mesh_testbed::sys::wait_for("a enrolled again", T, || {
        let n = c
            .agent_log(0)
            .iter()
            .filter(|l| l["message"] == "pod enrolled" && l["pod"] == "default/a")
            .count();
        (n >= 2).then_some(())
    })
    .unwrap();
    ident_ok(&c, "a", "b", 8080);
    assert!(c.counters(0).unwrap()["connect_redirected"] > after);
}

#[test]
fn uninstall_removes_the_pinned_datapath() {
    mesh_testbed::require_root!();
    let mut c = Cluster::start(ClusterSpec::new(&[&["a", "b"]])).unwrap();
    let _srv = c.serve("b", "8080", "ident").unwrap();
    ident_ok(&c, "a", "b", 8080);
    // Captured: handed over by the agent.
    let b_dst = format!("{}:8080", c.pod("b").ip);
    c.wait_agent_log(0, "the hand-over", |l| {
        l["message"] == "connection closed"
            && l["direction"] == "outbound"
            && l["security"] == "local"
            && l["dst"] == b_dst.as_str()
    })
    .unwrap();
    c.kill_agent(0);
    mesh_testbed::sys::run(
        std::process::Command::new(&c.bins.agent)
            .args(["uninstall", "--config"])
            .arg(&c.nodes[0].config),
    )
    .unwrap();
    assert!(!c.nodes[0].pin_dir.exists());
    // Nothing captures any more: a reaches b directly, from its own address.
    let v = ident_ok(&c, "a", "b", 8080);
    assert!(
        v["peer"]
            .as_str()
            .unwrap()
            .starts_with(&format!("{}:", c.pod("a").ip)),
        "{v}"
    );
}
