//! Apps behind the mesh see the client's own address, as without it: the
//! agent delivers from the source pod's address (same node, across nodes
//! over mTLS, a pod through its own Service) and from the plaintext
//! client's, and the app's replies come back through the agent. The
//! 4-tuples it names to sk_lookup are gone once the deliveries connected.
//! L4 policy's `ipBlocks` still judge that address.
//! With `datapath.sourceIp: loopback` deliveries come from 127.0.0.6.
use std::{process::Command, time::Duration};

use mesh_config::SourceIp;
use mesh_testbed::{Cluster, ClusterSpec};
use serde_json::Value;

const T: Duration = Duration::from_secs(20);

/// `meshtb ident` from `from` to `to`'s port 8080: what the app reported.
fn ident(c: &Cluster, from: &str, to: &str) -> Value {
    let dst = format!("{}:8080", c.pod(to).ip);
    c.client(from, &["ident", "--to", &dst, "--timeout-s", "3"], T)
        .unwrap()
}

/// The address the app `to` saw the connection from `from` come from; the
/// connection must have carried the echo both ways.
fn seen_by(c: &Cluster, from: &str, to: &str) -> String {
    let v = ident(c, from, to);
    assert_eq!(v["server"], to, "{from} -> {to}: {v}");
    assert_eq!(v["echoed"], true, "{from} -> {to}: {v}");
    let peer: std::net::SocketAddr = v["peer"]
        .as_str()
        .unwrap_or_else(|| panic!("{from} -> {to}: no peer: {v}"))
        .parse()
        .unwrap();
    peer.ip().to_string()
}

/// The entries of node n's pinned MESH_DELIVERIES map.
fn deliveries_pending(c: &Cluster, n: usize) -> usize {
    let map = c.nodes[n].pin_dir.join("MESH_DELIVERIES");
    let out = Command::new("bpftool")
        .args(["--json", "map", "dump", "pinned"])
        .arg(&map)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    v.as_array().unwrap().len()
}

/// The fib rules of a pod's netns, as `ip rule` prints them.
fn rules(c: &Cluster, pod: &str) -> String {
    let out = Command::new("ip")
        .args(["-n", &c.pod(pod).netns, "rule", "show"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

const DELIVERY_RULE: &str = "fwmark 0x6d5/0xfff lookup 1749";

/// A Service in front of b alone, so b can reach itself through the mesh.
const B_SERVICE: &str = r#"---
apiVersion: v1
kind: Service
metadata: {name: b, namespace: default}
spec:
  clusterIP: 10.96.0.40
  selector: {app: b}
  ports: [{name: echo, port: 80, targetPort: 8080}]
"#;

fn deny_from(ip: &str) -> String {
    format!(
        r#"{B_SERVICE}---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: no-a, namespace: default}}
spec:
  selector: {{matchLabels: {{app: c}}}}
  action: DENY
  rules:
  - from:
    - source: {{ipBlocks: ["{ip}/32"]}}
"#
    )
}

#[test]
fn apps_see_the_clients_own_address_on_every_inbound_path() {
    mesh_testbed::require_root!();
    // a and b share node 0; c is on node 1 with x, which is not in the mesh.
    let spec = ClusterSpec::new(&[&["a", "b"], &["c", "x"]])
        .unenrolled("x")
        .with_docs(B_SERVICE);
    let mut c = Cluster::start(spec).unwrap();
    let _b = c.serve("b", "8080", "ident").unwrap();
    let _c = c.serve("c", "8080", "ident").unwrap();
    let a_ip = c.pod("a").ip.to_string();
    let x_ip = c.pod("x").ip.to_string();

    // Same node: the hand-over inside the agent.
    assert_eq!(seen_by(&c, "a", "b"), a_ip);
    // Across nodes: the tunnel's peer, a's own address.
    assert_eq!(seen_by(&c, "a", "c"), a_ip);
    // Plaintext from outside the mesh, through c's 15006 and b's.
    assert_eq!(seen_by(&c, "x", "c"), x_ip);
    assert_eq!(seen_by(&c, "x", "b"), x_ip);
    // b through its own Service, handed over to itself: its own address.
    let v = c
        .client(
            "b",
            &["ident", "--to", "10.96.0.40:80", "--timeout-s", "3"],
            T,
        )
        .unwrap();
    assert_eq!(v["server"], "b", "{v}");
    assert_eq!(v["echoed"], true, "{v}");
    let b_ip = format!("{}:", c.pod("b").ip);
    assert!(v["peer"].as_str().unwrap().starts_with(&b_ip), "{v}");
    // Replies came back through the agent, never out of the pod: the
    // agents logged each connection as delivered, and none fell back.
    for n in 0..2 {
        let fell_back = c.agent_log(n).into_iter().find(|l| {
            l["message"]
                .as_str()
                .is_some_and(|m| m.starts_with("cannot deliver to this pod"))
        });
        assert!(fell_back.is_none(), "node {n}: {fell_back:?}");
    }
    assert!(rules(&c, "c").contains(DELIVERY_RULE), "{}", rules(&c, "c"));
    for n in 0..2 {
        assert_eq!(deliveries_pending(&c, n), 0, "node {n}");
    }

    // L4 policy sees the same address: a DENY of a's address refuses a,
    // and b (same node as a, same tunnel path) still gets through, as b.
    c.set_docs(&deny_from(&a_ip)).unwrap();
    let v = ident(&c, "a", "c");
    assert!(
        v.get("error").is_some() && v["echoed"] != true,
        "a -> c under a DENY of {a_ip}: {v}"
    );
    let dst = format!("{}:8080", c.pod("c").ip);
    let denied = c
        .wait_agent_log(1, "the denial", |l| {
            l["message"] == "connection closed"
                && l["direction"] == "inbound"
                && l["dst"] == dst.as_str()
                && l["result"] == "denied"
        })
        .unwrap();
    assert!(
        denied["src"]
            .as_str()
            .is_some_and(|s| s.starts_with(&format!("{a_ip}:"))),
        "{denied}"
    );
    assert_eq!(seen_by(&c, "b", "c"), c.pod("b").ip.to_string());

    // Unenrolled, the pod's netns is left as the agent found it.
    c.set_enrolled("b", false).unwrap();
    c.wait_agent_log(0, "b unenrolled", |l| {
        l["message"] == "pod unenrolled" && l["pod"] == "default/b"
    })
    .unwrap();
    mesh_testbed::sys::wait_for("b's delivery rule to go", T, || {
        (!rules(&c, "b").contains(DELIVERY_RULE)).then_some(())
    })
    .unwrap();
}

#[test]
fn loopback_mode_delivers_from_127_0_0_6() {
    mesh_testbed::require_root!();
    let spec = ClusterSpec::new(&[&["a", "b"], &["c", "x"]])
        .unenrolled("x")
        .configure(|a| a.datapath.source_ip = SourceIp::Loopback);
    let c = Cluster::start(spec).unwrap();
    let _b = c.serve("b", "8080", "ident").unwrap();
    let _c = c.serve("c", "8080", "ident").unwrap();
    for (from, to) in [("a", "b"), ("a", "c"), ("x", "c")] {
        assert_eq!(seen_by(&c, from, to), "127.0.0.6", "{from} -> {to}");
    }
    assert!(
        !rules(&c, "c").contains(DELIVERY_RULE),
        "{}",
        rules(&c, "c")
    );
}
