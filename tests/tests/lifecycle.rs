//! Peers that vanish and agents that stop: a Service endpoint that drops
//! SYNs, a peer node whose packets are dropped under a pooled tunnel, and
//! SIGTERM with transfers open.
use std::{
    net::SocketAddr,
    time::{Duration, Instant},
};

use mesh_testbed::{Cluster, ClusterSpec, sys};
use serde_json::Value;

const T: Duration = Duration::from_secs(30);
use mesh_testbed::fixtures::WEB_VIP as VIP;
/// In node 1's pod range, owned by nobody.
const BLACK_HOLE: &str = "10.244.1.250";
/// A MAC no interface has: frames to it are flooded by the bridge and
/// dropped, so a SYN sent there is never answered (no RST, no ICMP).
const NOBODY_MAC: &str = "02:00:00:00:99:99";

use mesh_testbed::fixtures::SERVICE_WEB as SERVICE;

fn ident(c: &Cluster, from: &str, to: &str, timeout_s: u32) -> Value {
    c.client(
        from,
        &["ident", "--to", to, "--timeout-s", &timeout_s.to_string()],
        T,
    )
    .unwrap()
}

fn reached(v: &Value, server: &str) -> bool {
    v["server"] == server && v["echoed"] == true
}

#[test]
fn a_service_endpoint_that_drops_syns_is_skipped_within_the_connect_timeout() {
    mesh_testbed::require_root!();
    let spec = ClusterSpec::new(&[&["a"], &["b"]])
        .label("b", "tier", "web")
        .configure(|a| a.limits.connect_timeout = Duration::from_secs(1));
    let mut c = Cluster::start(spec).unwrap();
    let _srv = c.serve("b", "8080", "ident").unwrap();
    // Without the neighbour entry the address would fail on its own once
    // ARP gives up (~3 s, EHOSTUNREACH); with it, SYNs vanish.
    let node1 = c.nodes[1].netns.clone();
    sys::ip(&[
        "-n",
        &node1,
        "neigh",
        "replace",
        BLACK_HOLE,
        "lladdr",
        NOBODY_MAC,
        "dev",
        "cni0",
        "nud",
        "permanent",
    ])
    .unwrap();
    let slice = format!(
        "{SERVICE}---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: web-1, namespace: default, labels: {{kubernetes.io/service-name: web}}}}\naddressType: IPv4\nports: [{{name: http, port: 8080}}]\nendpoints:\n- addresses: [{}]\n- addresses: [{BLACK_HOLE}]\n",
        c.pod("b").ip
    );
    c.set_docs(&slice).unwrap();
    let mut slowest = Duration::ZERO;
    for _ in 0..6 {
        let started = Instant::now();
        let v = ident(&c, "a", &format!("{VIP}:80"), 10);
        slowest = slowest.max(started.elapsed());
        assert!(reached(&v, "b"), "{v}");
    }
    // One timed-out dial (1 s) at most per connection, plus the client's
    // own process start on a loaded machine.
    assert!(slowest < Duration::from_millis(2500), "slowest {slowest:?}");
    let line = c
        .wait_agent_log(0, "the dead endpoint skipped", |l| {
            l["message"] == "endpoint failed; trying another"
                && l["endpoint"] == format!("{BLACK_HOLE}:8080").as_str()
        })
        .unwrap();
    let error = line["error"].as_str().unwrap();
    assert!(
        error.contains("within 1s") && error.contains("connectTimeout"),
        "{line}"
    );
}

#[test]
fn a_pooled_tunnel_to_a_silent_node_is_abandoned_and_replaced() {
    mesh_testbed::require_root!();
    let mut c = Cluster::start(ClusterSpec::new(&[&["a"], &["c"]])).unwrap();
    let _srv = c.serve("c", "8080", "ident").unwrap();
    let to = format!("{}:8080", c.pod("c").ip);
    // Opens the pooled tunnel a -> c.
    assert!(reached(&ident(&c, "a", &to, 3), "c"));

    // Node 0 now sends node 1's frames to nobody: the tunnel's TCP sees
    // neither data nor a reset, as when a node loses power.
    let (node0, node1_ip) = (c.nodes[0].netns.clone(), c.nodes[1].ip.to_string());
    let neigh = |args: &[&str]| {
        let mut all = vec!["-n", node0.as_str(), "neigh"];
        all.extend_from_slice(args);
        sys::ip(&all)
    };
    // eth0: the node's veth onto the wire between nodes.
    neigh(&[
        "replace",
        &node1_ip,
        "lladdr",
        NOBODY_MAC,
        "dev",
        "eth0",
        "nud",
        "permanent",
    ])
    .unwrap();
    let cut = Instant::now();
    c.wait_agent_log(0, "tunnel abandoned", |l| {
        l["message"] == "HBONE peer does not answer PING; connection abandoned"
    })
    .unwrap();
    let noticed = cut.elapsed();
    assert!(
        noticed <= Duration::from_secs(16),
        "dead tunnel noticed after {noticed:?}"
    );

    // The node is back: a new connection gets a new tunnel.
    neigh(&["del", &node1_ip, "dev", "eth0"]).unwrap();
    let v = ident(&c, "a", &to, 5);
    assert!(reached(&v, "c"), "{v}");
}

#[test]
fn sigterm_drains_open_transfers_and_resets_those_past_the_grace() {
    mesh_testbed::require_root!();
    let spec = ClusterSpec::new(&[&["a"], &["c"]])
        .configure(|a| a.limits.drain_grace = Duration::from_secs(3));
    let mut c = Cluster::start(spec).unwrap();
    let _srv = c.serve("c", "8080", "echo").unwrap();
    let to = format!("{}:8080", c.pod("c").ip);
    let short = c
        .spawn_client("a", &["hold", "--to", &to, "--seconds", "2"])
        .unwrap();
    let long = c
        .spawn_client("a", &["hold", "--to", &to, "--seconds", "15"])
        .unwrap();
    // Both are flowing before the signal.
    std::thread::sleep(Duration::from_millis(700));

    let status = SocketAddr::new(c.nodes[0].ip.into(), 15021);
    assert_eq!(c.node_get(0, status, "/healthz/ready").unwrap().0, 200);
    c.sigterm_agent(0).unwrap();
    let signalled = Instant::now();
    // Readiness goes false at once (the probe is still answered).
    let mut code = 200;
    while code == 200 && signalled.elapsed() < Duration::from_secs(1) {
        code = c.node_get(0, status, "/healthz/ready").map_or(0, |r| r.0);
    }
    assert_eq!(code, 503, "readiness after SIGTERM");
    let exit = c.wait_agent_exit(0, Duration::from_secs(10)).unwrap();
    let took = signalled.elapsed();
    assert!(exit.success(), "agent exit: {exit}");
    assert!(
        took >= Duration::from_millis(2500) && took < Duration::from_secs(6),
        "the agent stops at the 3 s grace: {took:?}"
    );

    let mut short = short;
    short.wait_exit(T).unwrap();
    let done = short.json_lines().pop().unwrap();
    assert_eq!(
        done["ok"], true,
        "the transfer within the grace completes: {done}"
    );

    let mut long = long;
    long.wait_exit(T).unwrap();
    let cut = long.json_lines().pop().unwrap();
    let error = cut["error"].as_str().unwrap_or_default();
    assert!(
        error.contains("reset"),
        "the transfer past the grace is reset, not ended: {cut}"
    );
    let lines = c.agents_raw_output(0).join("\n");
    assert!(
        lines.contains("agent draining") && lines.contains("drain grace over"),
        "{lines}"
    );
}
