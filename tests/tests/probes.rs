//! STRICT mTLS that pods can live under: the kubelet's health probes come
//! from the node itself in plaintext, and reach the ports the pod's spec
//! names for them; nothing else gets plaintext in. The test bed's node
//! netns stands in for the kubelet: a connection from it to a pod comes
//! from the node's bridge address (10.244.<n>.1), as on a bridge CNI.
use std::{net::SocketAddr, time::Duration};

use mesh_testbed::fixtures::STRICT;
use mesh_testbed::{Cluster, ClusterSpec};
use serde_json::Value;

/// An ALLOW policy no plaintext matches: the probe passes it all the same.
const ALLOW_ONLY_A: &str = r#"apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: only-a, namespace: default}
spec:
  selector: {matchLabels: {app: web}}
  rules:
  - from: [{source: {principals: [cluster.local/ns/default/sa/a]}}]
"#;

const PROBE_PORT: u16 = 8080;
const OTHER_PORT: u16 = 9090;

/// Where a connection comes from: a node's netns (outside every pod), or
/// a pod (its netns and cgroup, so an enrolled pod's connect is captured).
enum From<'a> {
    Node(usize),
    Pod(&'a str),
}

/// `meshtb ident` to `to`: the server's line and whether it echoed.
fn ident(c: &Cluster, from: From<'_>, to: SocketAddr) -> Value {
    let mut cmd = match from {
        From::Node(n) => c.node_command(n, &c.bins.meshtb),
        From::Pod(p) => c.pod_command(p, &c.bins.meshtb),
    }
    .unwrap();
    let out = cmd
        .args(["ident", "--to", &to.to_string(), "--timeout-s", "3"])
        .output()
        .unwrap();
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "ident printed no JSON ({e}): {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

fn reached(v: &Value) -> bool {
    v["server"] == "web" && v["echoed"] == true
}

/// The `connection closed` line of node n's agent for the inbound
/// connection to `dst` from `src_ip`.
fn closed(c: &mut Cluster, n: usize, src_ip: &str, dst: &str) -> Value {
    let prefix = format!("{src_ip}:");
    c.wait_agent_log(n, &format!("inbound line {src_ip} -> {dst}"), |l| {
        l["message"] == "connection closed"
            && l["direction"] == "inbound"
            && l["dst"] == dst
            && l["src"].as_str().is_some_and(|s| s.starts_with(&prefix))
    })
    .unwrap()
}

fn refused_count(c: &Cluster, n: usize, reason: &str) -> u64 {
    let want = format!(
        "mesh_proxy_refused_connections_total{{listener=\"inbound\",reason=\"{reason}\"}} "
    );
    c.metrics(n)
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix(&want)?.trim().parse().ok())
        .unwrap_or(0)
}

#[test]
fn under_strict_the_node_reaches_probe_ports_and_nothing_else_gets_plaintext_in() {
    mesh_testbed::require_root!();
    // web is probed on 8080; plain is outside the mesh (its connections
    // are plaintext); a is in the mesh on the other node.
    let spec = ClusterSpec::new(&[&["web", "plain"], &["a"]])
        .unenrolled("plain")
        .probe("web", PROBE_PORT)
        .with_docs(&format!("{STRICT}---\n{ALLOW_ONLY_A}"));
    let mut c = Cluster::start(spec).unwrap();
    let _srv = c
        .serve("web", &format!("{PROBE_PORT},{OTHER_PORT}"), "ident")
        .unwrap();
    let web = c.pod("web").ip;
    let probe = SocketAddr::from((web, PROBE_PORT));
    let other = SocketAddr::from((web, OTHER_PORT));
    let bridge0 = "10.244.0.1";

    // The kubelet's probe: from node 0 itself, to the probe port, past
    // STRICT and past an ALLOW policy that names only a's identity.
    let v = ident(&c, From::Node(0), probe);
    assert!(reached(&v), "probe from the node: {v}");
    let line = closed(&mut c, 0, bridge0, &probe.to_string());
    assert_eq!(line["result"], "ok", "{line}");
    assert_eq!(line["security"], "none", "{line}");

    // The node, to a port no probe names: STRICT, as for anyone.
    let v = ident(&c, From::Node(0), other);
    assert!(
        !reached(&v),
        "plaintext from the node to a non-probe port: {v}"
    );
    let line = closed(&mut c, 0, bridge0, &other.to_string());
    assert_eq!(line["result"], "refused", "{line}");
    assert!(line["error"].as_str().unwrap().contains("STRICT"), "{line}");

    // Another pod on the same bridge (plaintext from its address), to the
    // probe port: refused.
    let plain = c.pod("plain").ip.to_string();
    let v = ident(&c, From::Pod("plain"), probe);
    assert!(
        !reached(&v),
        "plaintext from another pod to the probe port: {v}"
    );
    let line = closed(&mut c, 0, &plain, &probe.to_string());
    assert_eq!(line["result"], "refused", "{line}");

    // Another node (its own address, 10.0.0.2, routed in): refused too.
    let v = ident(&c, From::Node(1), probe);
    assert!(
        !reached(&v),
        "plaintext from another node to the probe port: {v}"
    );
    let node1 = c.nodes[1].ip.to_string();
    let line = closed(&mut c, 0, &node1, &probe.to_string());
    assert_eq!(line["result"], "refused", "{line}");

    assert!(refused_count(&c, 0, "strict") >= 3);
    // The policy is in force: mTLS from a, the identity it names, gets in.
    let v = c
        .client(
            "a",
            &["ident", "--to", &other.to_string(), "--timeout-s", "3"],
            Duration::from_secs(20),
        )
        .unwrap();
    assert!(reached(&v), "{v}");
}

#[test]
fn strict_without_a_ca_refuses_plaintext_but_the_kubelets_probes() {
    mesh_testbed::require_root!();
    // No CA: the agents forward plaintext, and STRICT cannot be met.
    let spec = ClusterSpec::new(&[&["web", "b"]])
        .plaintext()
        .probe("web", PROBE_PORT)
        .with_docs(STRICT);
    let mut c = Cluster::start(spec).unwrap();
    let _srv = c.serve("web", &PROBE_PORT.to_string(), "ident").unwrap();
    let probe = SocketAddr::from((c.pod("web").ip, PROBE_PORT));

    let v = ident(&c, From::Node(0), probe);
    assert!(reached(&v), "probe from the node: {v}");

    // b is in the mesh; with no CA its agent forwards its connection as
    // plaintext, which STRICT refuses.
    let v = ident(&c, From::Pod("b"), probe);
    assert!(!reached(&v), "plaintext from b under STRICT: {v}");
    let b = c.pod("b").ip.to_string();
    let line = closed(&mut c, 0, &b, &probe.to_string());
    assert_eq!(line["result"], "refused", "{line}");
    assert!(
        line["error"]
            .as_str()
            .unwrap()
            .contains("no CA (AgentConfig.ca)"),
        "{line}"
    );
    c.wait_agent_log(0, "the no-CA STRICT warning", |l| {
        l["level"] == "WARN"
            && l["message"]
                .as_str()
                .is_some_and(|m| m.contains("on an agent with no CA"))
    })
    .unwrap();
    assert!(refused_count(&c, 0, "strict_without_ca") >= 1);
}
