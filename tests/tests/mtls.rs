//! End-to-end tests of identity, HBONE mutual TLS and L4 policy on the test
//! bed: a real CA, real agents, real TLS between nodes.
use std::time::Duration;

use mesh_testbed::fixtures::STRICT;
use mesh_testbed::{Cluster, ClusterSpec};
use serde_json::Value;

const T: Duration = Duration::from_secs(20);
const MARKER: &[u8] = b"marker-through-mesh";

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

fn ident(c: &Cluster, from: &str, to: &str, port: u16) -> Value {
    let dst = format!("{}:{port}", c.pod(to).ip);
    c.client(from, &["ident", "--to", &dst, "--timeout-s", "3"], T)
        .unwrap()
}

fn reached(v: &Value, to: &str) -> bool {
    v["server"] == to && v["echoed"] == true
}

/// The last access-log line of node n about connections to `dst`.
fn last_closed(c: &mut Cluster, n: usize, direction: &str, dst: &str) -> Value {
    c.wait_agent_log(n, "access log line", |l| {
        l["message"] == "connection closed" && l["direction"] == direction && l["dst"] == dst
    })
    .unwrap();
    c.agent_log(n)
        .into_iter()
        .rev()
        .find(|l| {
            l["message"] == "connection closed" && l["direction"] == direction && l["dst"] == dst
        })
        .unwrap()
}

#[test]
fn traffic_between_nodes_is_encrypted_on_the_wire_and_carries_the_source_identity() {
    mesh_testbed::require_root!();
    let mut c = Cluster::start(ClusterSpec::new(&[&["a"], &["c"]])).unwrap();
    let _srv = c.serve("c", "8080", "ident").unwrap();
    let dst = format!("{}:8080", c.pod("c").ip);

    let (v, wire) = c.capture_wire(0, || ident(&c, "a", "c", 8080)).unwrap();
    assert!(reached(&v, "c"), "{v}");
    assert!(
        wire.len() > 2000,
        "the capture saw the tunnel: {} bytes",
        wire.len()
    );
    assert!(!contains(&wire, MARKER), "payload in plaintext on the wire");
    assert!(
        !contains(&wire, b"\"server\":\"c\""),
        "reply in plaintext on the wire"
    );

    // Control: the same capture does see plaintext when the client is outside the mesh.
    let (out, wire) = c
        .capture_wire(0, || {
            let mut cmd = c.node_command(0, &c.bins.meshtb).unwrap();
            cmd.args(["ident", "--to", &dst]);
            cmd.output().unwrap()
        })
        .unwrap();
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(reached(&v, "c"), "{v}");
    assert!(contains(&wire, MARKER), "the capture method sees plaintext");

    let inbound = c
        .wait_agent_log(1, "mTLS inbound", |l| {
            l["message"] == "connection closed"
                && l["direction"] == "inbound"
                && l["security"] == "mutual_tls"
        })
        .unwrap();
    assert_eq!(
        inbound["source_identity"], "spiffe://cluster.local/ns/default/sa/a",
        "{inbound}"
    );
    assert_eq!(
        inbound["destination_identity"], "spiffe://cluster.local/ns/default/sa/c",
        "{inbound}"
    );
    assert!(
        inbound["trace_id"].as_str().is_some_and(|t| t.len() == 32),
        "{inbound}"
    );
}

const ALLOW_A_TO_C_8080: &str = r#"apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: c-from-a, namespace: default}
spec:
  selector: {matchLabels: {app: c}}
  action: ALLOW
  rules:
  - from:
    - source: {principals: [cluster.local/ns/default/sa/a, cluster.local/ns/dev/sa/d]}
    to:
    - operation: {ports: ["8080"]}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: no-dev, namespace: istio-system}
spec:
  action: DENY
  rules:
  - from:
    - source: {namespaces: [dev]}
"#;

const DRY_RUN_DENY_ALL: &str = r#"apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: deny-all
  namespace: default
  annotations: {mesh.io/dry-run: "true"}
spec:
  action: DENY
  rules: [{}]
"#;

#[test]
fn authorization_allow_by_principal_deny_by_namespace_ports_and_dry_run() {
    mesh_testbed::require_root!();
    let spec = ClusterSpec::new(&[&["a", "b"], &["c", "d"]])
        .in_namespace("d", "dev")
        .with_docs(ALLOW_A_TO_C_8080);
    let mut c = Cluster::start(spec).unwrap();
    let _srv = c.serve("c", "8080,9090", "ident").unwrap();
    let c8080 = format!("{}:8080", c.pod("c").ip);
    let c9090 = format!("{}:9090", c.pod("c").ip);

    // Allowed principal, allowed port, across nodes.
    assert!(reached(&ident(&c, "a", "c", 8080), "c"));
    // Same principal, other port: denied by the destination agent.
    assert!(!reached(&ident(&c, "a", "c", 9090), "c"));
    let denied = last_closed(&mut c, 1, "inbound", &c9090);
    assert_eq!(denied["result"], "denied", "{denied}");
    assert_eq!(
        denied["error"], "denied: no ALLOW policy matched",
        "{denied}"
    );
    // Another principal: denied.
    assert!(!reached(&ident(&c, "b", "c", 8080), "c"));
    let denied = last_closed(&mut c, 1, "inbound", &c8080);
    assert_eq!(
        denied["source_identity"], "spiffe://cluster.local/ns/default/sa/b",
        "{denied}"
    );
    assert_eq!(denied["result"], "denied", "{denied}");
    // d is allowed by principal, but its namespace is denied mesh-wide: DENY
    // wins. d is on c's node, so the same-node path enforces it.
    assert!(!reached(&ident(&c, "d", "c", 8080), "c"));
    let denied = last_closed(&mut c, 1, "outbound", &c8080);
    assert_eq!(denied["security"], "local", "{denied}");
    assert_eq!(denied["error"], "denied by istio-system/no-dev", "{denied}");

    // A dry-run DENY-all replaces the policies: logged, not enforced, for
    // new connections from now on.
    c.set_docs(DRY_RUN_DENY_ALL).unwrap();
    assert!(reached(&ident(&c, "b", "c", 9090), "c"));
    let line = c
        .wait_agent_log(1, "dry-run line", |l| {
            l["message"] == "dry-run policy would decide differently"
        })
        .unwrap();
    assert_eq!(line["dry_run"], "denied by default/deny-all", "{line}");
}

#[test]
fn strict_refuses_plaintext_and_permissive_accepts_it() {
    mesh_testbed::require_root!();
    // d is not in the mesh: what it sends to c is plaintext.
    let spec = ClusterSpec::new(&[&["a"], &["c", "d"]]).unenrolled("d");
    let mut c = Cluster::start(spec).unwrap();
    let _srv = c.serve("c", "8080", "ident").unwrap();
    assert!(
        reached(&ident(&c, "d", "c", 8080), "c"),
        "PERMISSIVE by default"
    );

    c.set_docs(STRICT).unwrap();
    assert!(
        !reached(&ident(&c, "d", "c", 8080), "c"),
        "STRICT refuses plaintext"
    );
    let dst = format!("{}:8080", c.pod("c").ip);
    let refused = last_closed(&mut c, 1, "inbound", &dst);
    assert_eq!(refused["result"], "refused", "{refused}");
    assert!(
        refused["error"].as_str().unwrap().contains("STRICT"),
        "{refused}"
    );
    // Mutual TLS still gets in.
    assert!(reached(&ident(&c, "a", "c", 8080), "c"));
}

#[test]
fn certificates_renew_mid_stream_and_survive_a_ca_outage() {
    mesh_testbed::require_root!();
    let spec = ClusterSpec::new(&[&["a"], &["c"]]).cert_lifetime("30s");
    let mut c = Cluster::start(spec).unwrap();
    let _srv = c.serve("c", "7000", "echo").unwrap();
    let dst = format!("{}:7000", c.pod("c").ip);
    let obtained = |c: &Cluster, n: usize, sa: &str| -> Vec<u64> {
        c.agent_log(n)
            .iter()
            .filter(|l| {
                l["message"] == "certificate obtained"
                    && l["identity"] == format!("spiffe://cluster.local/ns/default/sa/{sa}")
            })
            .map(|l| l["generation"].as_u64().unwrap())
            .collect()
    };
    let first = *obtained(&c, 0, "a").first().unwrap();

    // One connection held open across two renewals of both ends' certificates.
    let mut hold = c
        .spawn_client(
            "a",
            &[
                "hold",
                "--to",
                &dst,
                "--seconds",
                "40",
                "--interval-ms",
                "200",
            ],
        )
        .unwrap();
    mesh_testbed::sys::wait_for(
        "two renewals on both nodes",
        Duration::from_secs(45),
        || (obtained(&c, 0, "a").len() >= 3 && obtained(&c, 1, "c").len() >= 3).then_some(()),
    )
    .unwrap();
    hold.wait_exit(Duration::from_secs(30)).unwrap();
    let v = hold.json_lines().pop().unwrap();
    assert_eq!(v["ok"], true, "held connection broke: {v}");
    assert!(v["rounds"].as_u64().unwrap() > 100, "{v}");

    // The first certificate has expired by now: a new connection works only
    // with a renewed one.
    assert!(*obtained(&c, 0, "a").last().unwrap() > first);
    assert!(echo_ok(&c, "a", &dst));

    // CA down: certificates in hand keep serving; renewals fail and retry.
    c.stop_ca();
    assert!(echo_ok(&c, "a", &dst));
    c.wait_agent_log(0, "renewal failing", |l| {
        l["message"]
            .as_str()
            .is_some_and(|m| m.starts_with("certificate request failed"))
    })
    .unwrap();
    assert!(echo_ok(&c, "a", &dst), "existing certificate still serves");
    // CA back: renewal resumes.
    let before = obtained(&c, 0, "a").len();
    c.start_ca().unwrap();
    mesh_testbed::sys::wait_for(
        "renewal after the CA returns",
        Duration::from_secs(30),
        || (obtained(&c, 0, "a").len() > before).then_some(()),
    )
    .unwrap();
    assert!(echo_ok(&c, "a", &dst));
}

/// A short-lived echo exchange from `from` to `dst` succeeds.
fn echo_ok(c: &Cluster, from: &str, dst: &str) -> bool {
    c.client(
        from,
        &[
            "hold",
            "--to",
            dst,
            "--seconds",
            "1",
            "--interval-ms",
            "100",
        ],
        T,
    )
    .map(|v| v["ok"] == true)
    .unwrap_or(false)
}

#[test]
fn hbone_port_refuses_bad_peers_and_bad_requests_with_a_log_line() {
    mesh_testbed::require_root!();
    let mut c = Cluster::start(ClusterSpec::new(&[&["a"], &["c"]])).unwrap();
    let _srv = c.serve("c", "8080", "ident").unwrap();
    let tunnel = format!("{}:15008", c.pod("c").ip);
    let app = format!("{}:8080", c.pod("c").ip);
    // The probe itself works: a mesh certificate and a CONNECT to c's app.
    let ok = probe(&c, &tunnel, &["--authority", &app]);
    assert_eq!(ok["status"], 200, "{ok}");

    let warned = |c: &Cluster, message: &str| {
        c.agent_log(1)
            .iter()
            .filter(|l| {
                l["message"]
                    .as_str()
                    .is_some_and(|m| m.starts_with(message))
            })
            .count()
    };
    for cert in ["other-ca", "expired", "none"] {
        let before = warned(&c, "HBONE handshake refused");
        let v = probe(&c, &tunnel, &["--cert", cert, "--authority", &app]);
        assert_ne!(v["status"], 200, "--cert {cert}: {v}");
        mesh_testbed::sys::wait_for(&format!("refusal of --cert {cert}"), T, || {
            (warned(&c, "HBONE handshake refused") > before).then_some(())
        })
        .unwrap();
    }
    // Signed by the mesh root, but for another trust domain.
    let v = probe(
        &c,
        &tunnel,
        &[
            "--identity",
            "spiffe://elsewhere.example/ns/x/sa/y",
            "--authority",
            &app,
        ],
    );
    assert_ne!(v["status"], 200, "{v}");
    c.wait_agent_log(1, "foreign trust domain", |l| {
        l["message"] == "HBONE peer refused"
            && l["error"]
                .as_str()
                .is_some_and(|e| e.contains("outside trust domain"))
    })
    .unwrap();

    let v = probe(&c, &tunnel, &["--method", "GET", "--authority", &app]);
    assert_eq!(v["status"], 405, "{v}");
    c.wait_agent_log(1, "non-CONNECT", |l| {
        l["message"] == "HBONE request refused: only CONNECT is served"
    })
    .unwrap();

    let elsewhere = "10.244.1.99:8080";
    let v = probe(&c, &tunnel, &["--authority", elsewhere]);
    assert_eq!(v["status"], 400, "{v}");
    let line = last_closed(&mut c, 1, "inbound", elsewhere);
    assert_eq!(line["result"], "refused", "{line}");

    let v = probe(&c, &tunnel, &["--garbage"]);
    assert_eq!(v["stage"], "garbage", "{v}");
    // Still serving after all of that.
    assert!(reached(&ident(&c, "a", "c", 8080), "c"));
}

/// Runs hboneprobe from node 0's netns (outside any pod) against `tunnel`.
fn probe(c: &Cluster, tunnel: &str, args: &[&str]) -> Value {
    let out = c.probe_command(tunnel, args).unwrap().output().unwrap();
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "probe {args:?}: {e}: {}",
            String::from_utf8_lossy(&out.stderr)
        )
    })
}
