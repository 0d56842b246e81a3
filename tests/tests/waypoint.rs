//! End-to-end tests of the waypoint on the test bed: a client pod on node
//! 0 reaches Service `web` (two backends on node 1) through the waypoint
//! `wp` on node 2, with real agents, a real CA and real TLS on every hop.
use std::time::Duration;

use mesh_testbed::{Cluster, ClusterSpec, Proc, http::sample};
use serde_json::Value;

const T: Duration = Duration::from_secs(40);
/// Service `web`'s virtual IP.
const VIP: &str = "10.96.0.30";
const HOST: &str = "web.default.svc.cluster.local";
const CLIENT_ID: &str = "spiffe://cluster.local/ns/default/sa/client";
const THROUGH_WP: &str = "istio.io/use-waypoint: wp";
const BACKENDS: [&str; 2] = ["b1", "b2"];

/// Service `web` with `labels`: HTTP/1.1 on 80, h2c on 81 (both to the
/// backends' web server), TCP declared on 90 (a server that speaks first)
/// and undeclared on 91 (an echo), left to the waypoint's detection.
fn service(labels: &str) -> String {
    format!(
        r#"apiVersion: v1
kind: Service
metadata:
  name: web
  namespace: default
  labels: {{{labels}}}
spec:
  clusterIP: {VIP}
  selector: {{tier: web}}
  ports:
  - {{name: http, port: 80, targetPort: 8080}}
  - {{name: api, port: 81, targetPort: 8080, appProtocol: kubernetes.io/h2c}}
  - {{name: db, port: 90, targetPort: 9090, appProtocol: tcp}}
  - {{name: blob, port: 91, targetPort: 9091}}
"#
    )
}

struct Bed {
    c: Cluster,
    /// The backends' web servers, by backend.
    web: Vec<(String, Proc)>,
    _others: Vec<Proc>,
}

/// The client on node 0, backends b1 and b2 on node 1 (label tier: web),
/// the waypoint wp on node 2; Service `web` labelled with `labels`.
fn bed(labels: &str) -> Bed {
    let mut spec = ClusterSpec::new(&[&["client"], &BACKENDS, &[]]).waypoint("wp", "default", 2);
    for b in BACKENDS {
        spec = spec.label(b, "tier", "web");
    }
    let c = Cluster::start(spec.with_docs(&service(labels))).unwrap();
    let mut web = Vec::new();
    let mut others = Vec::new();
    for b in BACKENDS {
        web.push((b.to_owned(), c.serve(b, "8080", "web").unwrap()));
        others.push(c.serve(b, "9090", "ident").unwrap());
        others.push(c.serve(b, "9091", "echo").unwrap());
    }
    Bed {
        c,
        web,
        _others: others,
    }
}

impl Bed {
    fn client(&self, args: &[&str]) -> Value {
        self.c.client("client", args, T).unwrap()
    }

    /// N HTTP/1.1 requests over one connection to the VIP's port 80.
    fn http1(&self, requests: u32, authority: &str) -> Value {
        let to = format!("{VIP}:80");
        let n = requests.to_string();
        self.client(&[
            "http1",
            "--to",
            &to,
            "--requests",
            &n,
            "--authority",
            authority,
        ])
    }

    /// `meshtb ident` from the client to `to`.
    fn ident(&self, to: &str) -> Value {
        self.client(&["ident", "--to", to, "--timeout-s", "5"])
    }

    /// The requests each backend's web server has seen.
    fn seen(&self) -> usize {
        self.web
            .iter()
            .map(|(_, p)| {
                p.json_lines()
                    .iter()
                    .filter(|l| l.get("request").is_some())
                    .count()
            })
            .sum()
    }

    /// The waypoint's access log lines: one per request, one per relayed
    /// TCP stream.
    fn wp_requests(&self) -> Vec<Value> {
        self.c
            .waypoint_log("wp")
            .into_iter()
            .filter(|l| l["target"] == "access")
            .collect()
    }

    /// The newest inbound access-log line of node 1 (the backends') for a
    /// connection to port `port` of a backend, once there is one after
    /// `skip` such lines.
    fn backend_inbound(&mut self, port: u16, skip: usize) -> Value {
        let pred = |l: &Value| {
            l["message"] == "connection closed"
                && l["direction"] == "inbound"
                && l["dst"]
                    .as_str()
                    .is_some_and(|d| d.starts_with("10.244.1.") && d.ends_with(&format!(":{port}")))
        };
        mesh_testbed::sys::wait_for("the backend agent's access log line", T, || {
            let lines: Vec<Value> = self.c.agent_log(1).into_iter().filter(pred).collect();
            (lines.len() > skip)
                .then(|| lines.last().cloned())
                .flatten()
        })
        .unwrap()
    }

    fn backend_inbound_count(&self, port: u16) -> usize {
        self.c
            .agent_log(1)
            .iter()
            .filter(|l| {
                l["message"] == "connection closed"
                    && l["direction"] == "inbound"
                    && l["dst"]
                        .as_str()
                        .is_some_and(|d| d.ends_with(&format!(":{port}")))
            })
            .count()
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// Every request answered 200 by the backends, over one connection, and
/// both backends among those that answered. Sequential requests find both
/// backends idle, so each goes to either at random: with n requests the
/// chance that one backend gets them all is 2^(1-n), and callers use 20.
fn assert_balanced(v: &Value, n: u64, version: &str) {
    assert_eq!(v["error"], Value::Null, "{v}");
    assert_eq!(v["requests"], n, "{v}");
    assert_eq!(v["statuses"]["200"], n, "{v}");
    assert_eq!(v["server_versions"][version], n, "{v}");
    for b in BACKENDS {
        assert!(
            v["servers"][b].as_u64().is_some_and(|k| k >= 1),
            "no request reached {b}: {v}"
        );
    }
}

#[test]
fn http1_keepalive_requests_through_the_waypoint_are_balanced_per_request() {
    mesh_testbed::require_root!();
    let mut bed = bed(THROUGH_WP);
    let v = bed.http1(20, HOST);
    assert_balanced(&v, 20, "HTTP/1.1");
    // Through the waypoint, not around it: it logged each request.
    let lines = wait_requests(&mut bed, 20, |l| l["protocol"] == "http/1.1");
    let upstreams: std::collections::BTreeSet<&str> = lines
        .iter()
        .filter_map(|l| l["upstream"].as_str())
        .collect();
    let expected: std::collections::BTreeSet<String> = BACKENDS
        .iter()
        .map(|b| format!("{}:8080", bed.c.pod(b).ip))
        .collect();
    assert_eq!(
        upstreams,
        expected.iter().map(String::as_str).collect(),
        "{lines:#?}"
    );
    assert!(lines.iter().all(|l| l["status"] == 200), "{lines:#?}");
}

/// Waits until the waypoint has logged at least `n` requests matching
/// `pred`; returns them.
fn wait_requests(bed: &mut Bed, n: usize, pred: impl Fn(&Value) -> bool) -> Vec<Value> {
    mesh_testbed::sys::wait_for("the waypoint's access log lines", T, || {
        let lines: Vec<Value> = bed.wp_requests().into_iter().filter(|l| pred(l)).collect();
        (lines.len() >= n).then_some(lines)
    })
    .unwrap_or_else(|e| {
        panic!(
            "{e}; waypoint log:\n{}",
            bed.c
                .waypoint_log("wp")
                .iter()
                .map(Value::to_string)
                .collect::<Vec<_>>()
                .join("\n")
        )
    })
}

#[test]
fn h2c_requests_are_balanced_per_request_and_a_grpc_call_keeps_its_trailers() {
    mesh_testbed::require_root!();
    let mut bed = bed(THROUGH_WP);
    let to = format!("{VIP}:81");
    let v = bed.client(&[
        "h2c",
        "--to",
        &to,
        "--authority",
        &format!("{HOST}:81"),
        "--requests",
        "20",
        "--grpc",
        "ping-through-the-waypoint",
    ]);
    assert_balanced(&v, 20, "HTTP/2.0");
    let grpc = &v["grpc"];
    assert_eq!(grpc["status"], 200, "{v}");
    assert_eq!(grpc["content_type"], "application/grpc", "{v}");
    assert_eq!(grpc["grpc_status"], "0", "trailers lost: {v}");
    assert_eq!(grpc["message"], "ping-through-the-waypoint", "{v}");
    let lines = wait_requests(&mut bed, 21, |l| {
        l["protocol"] == "h2" || l["protocol"] == "grpc"
    });
    assert!(
        lines.iter().any(|l| l["protocol"] == "grpc"
            && l["grpc_status"] == 0
            && l["path"] == "/mesh.test.Echo/Call"),
        "{lines:#?}"
    );
}

#[test]
fn the_waypoint_hops_between_nodes_carry_only_tls() {
    mesh_testbed::require_root!();
    let bed = bed(THROUGH_WP);
    let marker = "plaintext-marker-5e1f.web.default";
    // Node 2's wire carries both hops: client -> waypoint, waypoint -> backends.
    let (v, wire) = bed.c.capture_wire(2, || bed.http1(20, marker)).unwrap();
    assert_balanced(&v, 20, "HTTP/1.1");
    let client = bed.c.pod("client").ip.octets();
    assert!(
        contains(&wire, &client),
        "the capture missed the client's hop"
    );
    for b in BACKENDS {
        let ip = bed.c.pod(b).ip.octets();
        assert!(contains(&wire, &ip), "the capture missed the hop to {b}");
    }
    assert!(
        !contains(&wire, marker.as_bytes()),
        "request head in plaintext on the wire"
    );
    assert!(
        !contains(&wire, b"\"server\":\"b"),
        "response body in plaintext on the wire"
    );
    assert!(
        !contains(&wire, b"HTTP/1.1"),
        "HTTP in plaintext on the wire"
    );

    // Control: the same capture sees plaintext sent from node 2 itself
    // (outside every pod) straight to a backend.
    let to = format!("{}:8080", bed.c.pod("b1").ip);
    let (out, wire) = bed
        .c
        .capture_wire(2, || {
            let mut cmd = bed.c.node_command(2, &bed.c.bins.meshtb).unwrap();
            cmd.args([
                "http1",
                "--to",
                &to,
                "--requests",
                "1",
                "--authority",
                marker,
            ]);
            cmd.output().unwrap()
        })
        .unwrap();
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["statuses"]["200"], 1, "{v}");
    assert!(
        contains(&wire, marker.as_bytes()),
        "the capture method sees plaintext"
    );
}

#[test]
fn backends_see_the_waypoints_identity_and_the_waypoint_sees_the_clients() {
    mesh_testbed::require_root!();
    let mut bed = bed(THROUGH_WP);
    let wp_id = bed.c.waypoint_identity("wp");
    assert_eq!(wp_id, "spiffe://cluster.local/ns/default/sa/wp");
    let v = bed.http1(20, HOST);
    assert_balanced(&v, 20, "HTTP/1.1");
    let lines = wait_requests(&mut bed, 20, |_| true);
    for l in &lines {
        assert_eq!(l["source_principal"], CLIENT_ID, "{l}");
        assert_eq!(l["source_workload"], "default/client", "{l}");
    }
    // The client's agent says where its connection went.
    let out = bed
        .c
        .wait_agent_log(0, "the client's outbound line", |l| {
            l["message"] == "connection closed"
                && l["direction"] == "outbound"
                && l["dst"] == format!("{VIP}:80")
        })
        .unwrap();
    assert_eq!(out["waypoint"], "default/wp", "{out}");
    // The backends' agent took the waypoint's requests as the waypoint's:
    // its HTTP connections upstream stay open for reuse, so the opened
    // connections count them.
    let metrics = bed.c.metrics(1).unwrap();
    let opened = sample(
        &metrics,
        "istio_tcp_connections_opened_total",
        &[("reporter", "destination"), ("source_principal", &wp_id)],
    );
    assert!(opened >= Some(1.0), "{opened:?}; exposition:\n{metrics}");
    assert_eq!(
        sample(
            &metrics,
            "istio_tcp_connections_opened_total",
            &[("reporter", "destination"), ("source_principal", CLIENT_ID)],
        ),
        None,
        "the client reached a backend around the waypoint:\n{metrics}"
    );
    // A TCP stream's upstream connection ends with it: its access-log line.
    let v = bed.ident(&format!("{VIP}:90"));
    assert_eq!(v["echoed"], true, "{v}");
    let line = bed.backend_inbound(9090, 0);
    assert_eq!(line["source_identity"], wp_id, "{line}");
    assert_eq!(line["security"], "mutual_tls", "{line}");
}

#[test]
fn removing_the_use_waypoint_label_sends_traffic_direct_without_restarts() {
    mesh_testbed::require_root!();
    let mut bed = bed(THROUGH_WP);
    let wp_id = bed.c.waypoint_identity("wp");
    let pids = bed.c.agent_pids();
    let v = bed.ident(&format!("{VIP}:90"));
    assert_eq!(v["echoed"], true, "{v}");
    assert_eq!(bed.backend_inbound(9090, 0)["source_identity"], wp_id);
    // The waypoint writes a TCP stream's line once both of its halves have
    // closed, which can be after the backend's agent logged its side.
    let through = mesh_testbed::sys::wait_for("the waypoint's line for the TCP stream", T, || {
        let n = bed.wp_requests().len();
        (n >= 1).then_some(n)
    })
    .unwrap();

    bed.c.set_docs(&service("")).unwrap();
    let v = bed.ident(&format!("{VIP}:90"));
    assert_eq!(v["echoed"], true, "{v}");
    let line = bed.backend_inbound(9090, 1);
    assert_eq!(line["source_identity"], CLIENT_ID, "{line}");
    // The client's agent names the waypoint for the first connection only.
    let outbound: Vec<Value> = bed
        .c
        .agent_log(0)
        .into_iter()
        .filter(|l| {
            l["message"] == "connection closed"
                && l["direction"] == "outbound"
                && l["dst"] == format!("{VIP}:90")
        })
        .collect();
    assert_eq!(outbound.len(), 2, "{outbound:#?}");
    assert_eq!(outbound[0]["waypoint"], "default/wp", "{outbound:#?}");
    assert_eq!(outbound[1]["waypoint"], Value::Null, "{outbound:#?}");
    let v = bed.http1(4, HOST);
    assert_eq!(v["statuses"]["200"], 4, "{v}");
    // Nothing more went through the waypoint, and nothing restarted.
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(bed.wp_requests().len(), through, "{:#?}", bed.wp_requests());
    assert_eq!(bed.c.agent_pids(), pids);
    let starts = bed
        .c
        .waypoint_log("wp")
        .iter()
        .filter(|l| l["message"] == "waypoint starting")
        .count();
    assert_eq!(starts, 1);
}

#[test]
fn require_waypoint_refuses_direct_connections_and_admits_the_waypoint() {
    mesh_testbed::require_root!();
    let mut bed = bed(&format!("{THROUGH_WP}, mesh.io/require-waypoint: \"true\""));
    let direct = format!("{}:9090", bed.c.pod("b1").ip);
    let v = bed.ident(&direct);
    assert_ne!(v["echoed"], true, "a direct connection got through: {v}");
    let line = bed.backend_inbound(9090, 0);
    assert_eq!(line["result"], "refused", "{line}");
    assert_eq!(line["source_identity"], CLIENT_ID, "{line}");
    assert!(
        line["error"]
            .as_str()
            .is_some_and(|e| e.contains("requires its waypoint")),
        "{line}"
    );
    // Through the waypoint: admitted.
    let before = bed.backend_inbound_count(9090);
    let v = bed.ident(&format!("{VIP}:90"));
    assert_eq!(v["echoed"], true, "{v}");
    let line = bed.backend_inbound(9090, before);
    assert_eq!(line["source_identity"], bed.c.waypoint_identity("wp"));
    assert_ne!(line["result"], "refused", "{line}");
    let v = bed.http1(20, HOST);
    assert_balanced(&v, 20, "HTTP/1.1");
}

#[test]
fn websocket_and_plain_tcp_pass_through_the_waypoint() {
    mesh_testbed::require_root!();
    let mut bed = bed(THROUGH_WP);
    let v = bed.client(&[
        "websocket",
        "--to",
        &format!("{VIP}:80"),
        "--authority",
        HOST,
        "--message",
        "frame-through-the-waypoint",
    ]);
    assert_eq!(v["status"], 101, "{v}");
    assert_eq!(v["accept_ok"], true, "{v}");
    assert_eq!(v["echo"], "frame-through-the-waypoint", "{v}");
    assert!(BACKENDS.iter().any(|b| v["served_by"] == *b), "{v}");
    wait_requests(&mut bed, 1, |l| l["status"] == 101);

    // Declared TCP, a server that speaks first.
    let v = bed.ident(&format!("{VIP}:90"));
    assert_eq!(v["echoed"], true, "{v}");
    assert!(BACKENDS.iter().any(|b| v["server"] == *b), "{v}");
    // Undeclared: bytes that are not HTTP are detected as TCP and relayed
    // whole, both ways, with the half-close.
    let v = bed.client(&[
        "bulk",
        "--to",
        &format!("{VIP}:91"),
        "--bytes",
        "300000",
        "--timeout-s",
        "20",
    ]);
    assert_eq!(v["error"], Value::Null, "{v}");
    assert_eq!(v["received"], 300_000, "{v}");
    assert_eq!(v["received_fnv"], v["sent_fnv"], "{v}");
    wait_requests(&mut bed, 2, |l| l["protocol"] == "tcp");
}

#[test]
fn a_malformed_http1_request_gets_400_from_the_waypoint_and_reaches_no_backend() {
    mesh_testbed::require_root!();
    let mut bed = bed(THROUGH_WP);
    let before = bed.seen();
    let v = bed.client(&[
        "raw",
        "--to",
        &format!("{VIP}:80"),
        "--data",
        "GET / HTTP/1.1\r\nHost: web\r\nthis header has no colon\r\n\r\n",
    ]);
    assert_eq!(v["status"], 400, "{v}");
    let line = bed
        .c
        .wait_waypoint_log("wp", "the 400's log line", |l| {
            l["message"]
                .as_str()
                .is_some_and(|m| m.starts_with("HTTP request refused (400)"))
        })
        .unwrap();
    assert!(
        line["peer_identity"]
            .as_str()
            .is_some_and(|p| p.contains(CLIENT_ID)),
        "{line}"
    );
    let record = wait_requests(&mut bed, 1, |l| l["status"] == 400);
    assert_eq!(record[0]["response_flags"], "DPE", "{record:#?}");
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(
        bed.seen(),
        before,
        "the malformed request reached a backend"
    );
    // The waypoint still serves.
    let v = bed.http1(2, HOST);
    assert_eq!(v["statuses"]["200"], 2, "{v}");
}
