//! Enrollment before the app's first byte: the `mesh-cni` plugin, run as a
//! container runtime runs it when it creates a sandbox (CNI_COMMAND=ADD,
//! the netns path, a prevResult on stdin), returns only once the node's
//! agent has enrolled the pod, so the pod's first connection already goes
//! through the mesh and plaintext to it is refused under STRICT from the
//! first try. Pod `x` is listed in the node's file without the
//! `mesh.io/netns` annotation: only the plugin tells the agent its netns.
use std::{
    io::Write,
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
    time::Duration,
};

use mesh_testbed::fixtures::STRICT;
use mesh_testbed::{Cluster, ClusterSpec};
use serde_json::Value;

const T: Duration = Duration::from_secs(20);

/// What the test bed writes for the socket until each node gets its own.
const SOCKET_PLACEHOLDER: &str = "/nonexistent/mesh-cni-placeholder.sock";

/// target/debug/mesh-cni, next to the test binary's deps/ directory.
fn plugin_binary() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().unwrap();
    [dir, dir.parent().unwrap()]
        .iter()
        .map(|d| d.join("mesh-cni"))
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!(
                "mesh-cni not found near {}; run `cargo build` first",
                exe.display()
            )
        })
}

/// Runs the plugin as a runtime would; its output.
fn plugin(command: &str, env: &[(&str, String)], stdin: &str) -> Output {
    let mut child = Command::new(plugin_binary())
        .env_clear()
        .env("CNI_COMMAND", command)
        .env("CNI_PATH", "/opt/cni/bin")
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    // The plugin bounds itself (its timeout, a hard deadline of 60 s).
    child.wait_with_output().unwrap()
}

/// The sandbox of pod `name` in namespace `default`, as CNI_* variables.
fn sandbox(netns: &Path, name: &str, container: &str) -> Vec<(&'static str, String)> {
    vec![
        ("CNI_CONTAINERID", container.to_owned()),
        ("CNI_NETNS", netns.display().to_string()),
        ("CNI_IFNAME", "eth0".to_owned()),
        (
            "CNI_ARGS",
            format!(
                "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME={name};K8S_POD_INFRA_CONTAINER_ID={container}"
            ),
        ),
    ]
}

/// What the bridge plugin before mesh-cni would have returned for the pod.
fn prev_result(netns: &Path, ip: std::net::Ipv4Addr) -> String {
    format!(
        r#"{{"cniVersion":"1.0.0","interfaces":[{{"name":"eth0","sandbox":"{}"}}],"ips":[{{"address":"{ip}/24","gateway":"10.244.0.1","interface":0}}],"dns":{{}}}}"#,
        netns.display()
    )
}

/// The conflist entry of mesh-cni, with the previous plugins' result.
fn net_conf(socket: &Path, prev: &str) -> String {
    format!(
        r#"{{"cniVersion":"1.0.0","name":"mesh-test","type":"mesh-cni","agentSocket":"{}","timeout":"10s","prevResult":{prev}}}"#,
        socket.display()
    )
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// The plugin's error object, checked against the spec's shape.
fn cni_error(o: &Output) -> Value {
    assert!(!o.status.success(), "the plugin succeeded: {}", stdout(o));
    let v: Value = serde_json::from_slice(&o.stdout)
        .unwrap_or_else(|e| panic!("no error JSON on stdout ({e}): {}", stdout(o)));
    assert!(v["code"].is_u64(), "{v}");
    assert!(v["msg"].is_string() && v["details"].is_string(), "{v}");
    assert_eq!(v["cniVersion"], "1.0.0", "{v}");
    v
}

/// `meshtb ident` from node n's netns (outside every pod) to `dst`.
fn ident_from_node(c: &Cluster, n: usize, dst: &str) -> Value {
    let out = c
        .node_command(n, &c.bins.meshtb)
        .unwrap()
        .args(["ident", "--to", dst, "--timeout-s", "3"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .last()
        .and_then(|l| serde_json::from_str(l).ok())
        .unwrap_or_else(|| serde_json::json!({"exit": out.status.code(), "stdout": text}))
}

/// Starts a two-node cluster whose node configs give each agent its own
/// CNI socket and list pod `x` (node 0) without its netns annotation.
fn cluster() -> (Cluster, Vec<PathBuf>) {
    let spec = ClusterSpec::new(&[&["a", "x"], &["c"]])
        .with_docs(STRICT)
        .configure(|a| a.cni_socket = Some(PathBuf::from(SOCKET_PLACEHOLDER)))
        .without_agents();
    let mut c = Cluster::start(spec).unwrap();
    c.start_ca().unwrap();
    let x_netns = c.pod("x").netns_path().display().to_string();
    let sockets: Vec<PathBuf> = (0..c.nodes.len())
        .map(|n| c.log_dir().join(format!("cni-{n}.sock")))
        .collect();
    for (n, socket) in sockets.iter().enumerate() {
        let text = c.config_text(n);
        let annotation = format!("mesh.io/netns: {x_netns}");
        assert_eq!(text.matches(&annotation).count(), 1, "{text}");
        let text = text
            .replace(&annotation, "example.com/netns-from: cni")
            .replace(SOCKET_PLACEHOLDER, &socket.display().to_string());
        let path = &c.nodes[n].config;
        std::fs::write(path, text).unwrap();
    }
    for n in 0..c.nodes.len() {
        c.start_agent(n).unwrap();
    }
    (c, sockets)
}

#[test]
fn a_pod_announced_by_cni_is_in_the_mesh_from_its_first_connection() {
    mesh_testbed::require_root!();
    let (mut c, sockets) = cluster();
    let x = c.pod("x").clone();
    let x_dst = format!("{}:8080", x.ip);
    let c_dst = format!("{}:8080", c.pod("c").ip);
    let _c_srv = c.serve("c", "8080", "ident").unwrap();

    // Control: before ADD the agent does not hold x (nothing names its
    // netns), so plaintext from outside the mesh reaches an app in x
    // despite STRICT. This is the window the plugin closes; the app is
    // stopped again before the sandbox is "created".
    assert!(
        !c.agent_log(0)
            .iter()
            .any(|l| l["message"] == "pod enrolled" && l["pod"] == "default/x"),
        "x is enrolled before any ADD"
    );
    {
        let _early = c.serve("x", "8080", "ident").unwrap();
        let v = ident_from_node(&c, 0, &x_dst);
        assert_eq!(
            v["server"], "x",
            "without enrollment plaintext gets in: {v}"
        );
    }

    // The runtime creates x's sandbox: the network plugin has set up eth0
    // (prevResult), then mesh-cni runs.
    let prev = prev_result(&x.netns_path(), x.ip);
    let env = sandbox(&x.netns_path(), "x", "sandbox-x-1");
    let out = plugin("ADD", &env, &net_conf(&sockets[0], &prev));
    assert!(
        out.status.success(),
        "ADD failed: {}{}",
        stdout(&out),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        stdout(&out),
        prev,
        "a chained plugin passes prevResult through"
    );
    // The agent answered after enrolling, not before: the line is there now.
    let enrolled = c
        .agent_log(0)
        .into_iter()
        .find(|l| l["message"] == "pod enrolled" && l["pod"] == "default/x")
        .expect("x enrolled by the time ADD returned");
    assert_eq!(enrolled["netns"], x.netns_path().display().to_string());

    // The app's very first connection, at once: over the mesh, mutual TLS,
    // with x's identity.
    let v = c
        .client("x", &["ident", "--to", &c_dst, "--timeout-s", "3"], T)
        .unwrap();
    assert_eq!(v["server"], "c", "{v}");
    let out_line = c
        .wait_agent_log(0, "x's first connection in the access log", |l| {
            l["message"] == "connection closed"
                && l["direction"] == "outbound"
                && l["dst"] == c_dst.as_str()
                && l["src"]
                    .as_str()
                    .is_some_and(|s| s.starts_with(&format!("{}:", x.ip)))
        })
        .unwrap();
    assert_eq!(out_line["security"], "mutual_tls", "{out_line}");
    assert_eq!(out_line["result"], "ok", "{out_line}");
    assert_eq!(
        out_line["source_identity"], "spiffe://cluster.local/ns/default/sa/x",
        "{out_line}"
    );

    // Plaintext from outside the mesh to x's app, from its first try:
    // refused under STRICT (it reached the app before ADD).
    let _x_srv = c.serve("x", "8080", "ident").unwrap();
    let v = ident_from_node(&c, 0, &x_dst);
    assert_ne!(v["server"], "x", "plaintext reached the enrolled app: {v}");
    let refused = c
        .wait_agent_log(0, "the refused plaintext in the access log", |l| {
            l["message"] == "connection closed"
                && l["direction"] == "inbound"
                && l["dst"] == x_dst.as_str()
        })
        .unwrap();
    assert_eq!(refused["result"], "refused", "{refused}");
    assert!(
        refused["error"].as_str().unwrap_or("").contains("STRICT"),
        "{refused}"
    );
    // From a meshed pod, x's app is reachable (mutual TLS, on node 1).
    let v = c
        .client("c", &["ident", "--to", &x_dst, "--timeout-s", "3"], T)
        .unwrap();
    assert_eq!(v["server"], "x", "{v}");

    // CHECK agrees; DEL forgets the sandbox, and the agent lets x go (its
    // netns is no longer named anywhere).
    let out = plugin("CHECK", &env, &net_conf(&sockets[0], &prev));
    assert!(out.status.success(), "CHECK: {}", stdout(&out));
    let out = plugin("DEL", &env, &net_conf(&sockets[0], &prev));
    assert!(out.status.success(), "DEL: {}", stdout(&out));
    assert_eq!(stdout(&out), "");
    c.wait_agent_log(0, "x unenrolled after DEL", |l| {
        l["message"] == "pod unenrolled" && l["pod"] == "default/x"
    })
    .unwrap();
    let out = plugin("CHECK", &env, &net_conf(&sockets[0], &prev));
    let v = cni_error(&out);
    assert!(v["msg"].as_str().unwrap().contains("not enrolled"), "{v}");

    // A new sandbox for x: enrolled again.
    let env = sandbox(&x.netns_path(), "x", "sandbox-x-2");
    let out = plugin("ADD", &env, &net_conf(&sockets[0], &prev));
    assert!(out.status.success(), "second ADD: {}", stdout(&out));

    // With the agent gone (killed: its socket file stays, stale), ADD
    // fails closed with the spec's error object; DEL still succeeds.
    c.kill_agent(0);
    let out = plugin("ADD", &env, &net_conf(&sockets[0], &prev));
    let v = cni_error(&out);
    assert_eq!(v["code"], 11, "try again later: {v}");
    let msg = v["msg"].as_str().unwrap();
    assert!(
        msg.contains("not reachable") && msg.contains("cni-0.sock"),
        "{v}"
    );
    assert!(
        v["details"].as_str().unwrap().contains("fails closed"),
        "{v}"
    );
    let out = plugin("DEL", &env, &net_conf(&sockets[0], &prev));
    assert!(
        out.status.success(),
        "DEL without an agent must succeed: {}",
        stdout(&out)
    );
}

#[test]
fn the_plugin_names_what_is_wrong_with_its_input() {
    // No cluster: these never reach an agent.
    let dir = std::env::temp_dir().join(format!("mesh-cni-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let socket = dir.join("absent.sock");
    let netns = Path::new("/run/netns/absent");
    let env = sandbox(netns, "p", "sandbox-p");
    let prev = prev_result(netns, "10.244.0.99".parse().unwrap());

    let out = plugin("ADD", &env, "{\"cniVersion\": \"1.0.0\", ");
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(!out.status.success());
    assert_eq!(v["code"], 6, "{v}");
    assert!(
        v["msg"]
            .as_str()
            .unwrap()
            .contains("network configuration on stdin is not valid"),
        "{v}"
    );
    let unchained = r#"{"cniVersion":"1.0.0","name":"n","type":"mesh-cni"}"#;
    let v = cni_error(&plugin("ADD", &env, unchained));
    assert!(v["msg"].as_str().unwrap().contains("prevResult"), "{v}");

    // kube-system is excluded by default: it passes without an agent.
    let mut system = env.clone();
    system[3].1 = system[3].1.replace("=default;", "=kube-system;");
    let out = plugin("ADD", &system, &net_conf(&socket, &prev));
    assert!(out.status.success(), "{}", stdout(&out));
    assert_eq!(stdout(&out), prev);

    let out = plugin("VERSION", &[], r#"{"cniVersion":"1.0.0"}"#);
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(
        v["supportedVersions"]
            .as_array()
            .unwrap()
            .contains(&Value::from("1.0.0")),
        "{v}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
