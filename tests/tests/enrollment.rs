//! Enrollment that cannot go stale: a relabelled pod stays captured with
//! the same kernel link, and a pod recreated under its name while its
//! node's agent was down is captured again when the agent returns.
use std::{os::unix::fs::MetadataExt, time::Duration};

use mesh_config::SourceIp;
use mesh_testbed::{Cluster, ClusterSpec, sys};
use serde_json::Value;

const T: Duration = Duration::from_secs(30);

/// One node, pods a and b, no CA; the agent delivers from 127.0.0.6, which
/// tells the app a delivery of the agent's from a connection that went
/// around it (both would come from the node's address with the default
/// `datapath.sourceIp: preserve`).
fn one_node_loopback_delivery() -> ClusterSpec {
    ClusterSpec::new(&[&["a", "b"]])
        .plaintext()
        .configure(|a| a.datapath.source_ip = SourceIp::Loopback)
}

/// A plaintext connection from the node (outside the mesh) to `pod:8080`;
/// returns what the server says it accepted from.
fn from_node(c: &Cluster, pod: &str) -> Value {
    let dst = format!("{}:8080", c.pod(pod).ip);
    let mut cmd = c.node_command(0, &c.bins.meshtb).unwrap();
    cmd.args(["ident", "--to", &dst, "--timeout-s", "3"]);
    let out = cmd.output().unwrap();
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Whether the pod's server saw a delivery from the agent (127.0.0.6),
/// i.e. its inbound traffic is captured.
fn delivered_by_agent(srv: &mesh_testbed::proc::Proc) -> bool {
    srv.json_lines().iter().any(|v| {
        v["accepted"]
            .as_str()
            .is_some_and(|a| a.starts_with("127.0.0.6"))
    })
}

#[test]
fn a_label_change_keeps_the_pod_captured_on_the_same_link() {
    mesh_testbed::require_root!();
    let mut c = Cluster::start(one_node_loopback_delivery()).unwrap();
    let mut srv = c.serve("b", "8080", "ident").unwrap();
    let pins = c.nodes[0].pin_dir.clone();
    let links_before: Vec<(std::path::PathBuf, u64)> = sys::pod_links(&pins)
        .into_iter()
        .map(|p| {
            let ino = std::fs::metadata(&p).unwrap().ino();
            (p, ino)
        })
        .collect();
    assert_eq!(links_before.len(), 2);

    c.set_label("b", "version", "v2").unwrap();
    c.wait_agent_log(0, "b relabelled", |l| {
        l["message"] == "pod labels changed; still enrolled" && l["pod"] == "default/b"
    })
    .unwrap();
    let log = c.agent_log(0);
    assert!(
        !log.iter().any(|l| l["message"] == "pod unenrolled"),
        "a label change detached a pod"
    );
    let links_after: Vec<(std::path::PathBuf, u64)> = sys::pod_links(&pins)
        .into_iter()
        .map(|p| {
            let ino = std::fs::metadata(&p).unwrap().ino();
            (p, ino)
        })
        .collect();
    assert_eq!(links_before, links_after, "the pods' links were replaced");
    // Still captured both ways.
    let v = from_node(&c, "b");
    assert_eq!(v["echoed"], true, "{v}");
    srv.wait_json("a delivery by the agent", T, |v| {
        v["accepted"]
            .as_str()
            .is_some_and(|a| a.starts_with("127.0.0.6"))
    })
    .unwrap();
    let dst = format!("{}:8080", c.pod("b").ip);
    let before = c.counters(0).unwrap()["connect_redirected"];
    let v = c
        .client("a", &["ident", "--to", &dst, "--timeout-s", "3"], T)
        .unwrap();
    assert_eq!(v["echoed"], true, "{v}");
    assert!(c.counters(0).unwrap()["connect_redirected"] > before);
}

#[test]
fn a_pod_recreated_under_its_name_while_the_agent_was_down_is_captured_again() {
    mesh_testbed::require_root!();
    let mut c = Cluster::start(one_node_loopback_delivery()).unwrap();
    {
        let srv = c.serve("b", "8080", "ident").unwrap();
        let v = from_node(&c, "b");
        assert_eq!(v["echoed"], true, "{v}");
        assert!(delivered_by_agent(&srv), "b's inbound is captured at first");
    }
    let pins = c.nodes[0].pin_dir.clone();
    let old_links = sys::pod_links(&pins);

    // The agent dies; the pod is recreated under the same name (same
    // object, same address, a new netns) before it returns.
    c.kill_agent(0);
    c.recreate_pod_netns("b").unwrap();
    c.start_agent(0).unwrap();
    c.wait_agent_log(0, "b enrolled", |l| {
        l["message"] == "pod enrolled" && l["pod"] == "default/b"
    })
    .unwrap();

    let srv = c.serve("b", "8080", "ident").unwrap();
    sys::wait_for("the recreated pod to answer", T, || {
        (from_node(&c, "b")["echoed"] == true).then_some(())
    })
    .unwrap();
    std::thread::sleep(Duration::from_millis(200));
    assert!(
        delivered_by_agent(&srv),
        "plaintext reached the recreated pod around the agent: {:?}",
        srv.json_lines()
    );
    // The dead netns' link is gone, the new one is pinned.
    let new_links = sys::pod_links(&pins);
    assert_eq!(new_links.len(), 2, "{new_links:?}");
    assert_ne!(old_links, new_links);
}

#[test]
fn a_pod_that_cannot_be_enrolled_is_named_with_the_reason_and_enrolled_once_it_can() {
    mesh_testbed::require_root!();
    let mut c = Cluster::start(
        ClusterSpec::new(&[&["a", "b"]])
            .plaintext()
            .without_agents(),
    )
    .unwrap();
    // The app in b already holds the agent's outbound port: b cannot be
    // enrolled until it lets go.
    let squatter = c.serve("b", "15001", "ident").unwrap();
    c.start_agent(0).unwrap();
    let line = c
        .wait_agent_log(0, "b reported", |l| {
            l["message"] == "pod should be enrolled but is not; retrying" && l["pod"] == "default/b"
        })
        .unwrap();
    assert!(
        line["reason"].as_str().unwrap().contains("15001"),
        "the reason names the port: {line}"
    );
    let (code, text) = c.mesh_cli(0, &["status"]).unwrap();
    assert_eq!(
        code, 2,
        "an agent with a pod it cannot enroll is unhealthy: {text}"
    );
    assert!(
        text.contains("not enrolled: default/b") && text.contains("15001"),
        "{text}"
    );
    let metrics = c.metrics(0).unwrap();
    assert!(
        metrics.lines().any(|l| l == "mesh_pending_pods 1"),
        "{metrics}"
    );

    drop(squatter);
    c.wait_agent_log(0, "b enrolled", |l| {
        l["message"] == "pod enrolled" && l["pod"] == "default/b"
    })
    .unwrap();
    sys::wait_for("mesh status healthy", T, || {
        let (code, _) = c.mesh_cli(0, &["status"]).ok()?;
        (code == 0).then_some(())
    })
    .unwrap();
}
