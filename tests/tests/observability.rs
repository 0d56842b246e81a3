//! End-to-end tests of what the agents tell: kernel flow metrics and
//! Istio's TCP metrics against bytes really sent, policy denials, JSON
//! access logs, the admin API, the `mesh` CLI, and a real Prometheus
//! scraping both agents.
use std::{
    collections::BTreeSet,
    net::SocketAddr,
    time::{Duration, Instant},
};

use mesh_testbed::{Cluster, ClusterSpec, Proc, http::sample};
use serde_json::Value;

const T: Duration = Duration::from_secs(30);
const N: u64 = 300_000;

/// Waits (bounded) until node n's metric sample satisfies `ok`; returns it.
fn wait_sample(
    c: &Cluster,
    n: usize,
    metric: &str,
    labels: &[(&str, &str)],
    ok: impl Fn(f64) -> bool,
) -> f64 {
    let deadline = Instant::now() + T;
    loop {
        let text = c.metrics(n).unwrap();
        if let Some(v) = sample(&text, metric, labels)
            && ok(v)
        {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "node {n}: {metric} {labels:?} never as expected; last exposition:\n{text}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn bulk(c: &Cluster, from: &str, to: SocketAddr) -> Value {
    c.client(
        from,
        &[
            "bulk",
            "--to",
            &to.to_string(),
            "--bytes",
            &N.to_string(),
            "--timeout-s",
            "20",
        ],
        T,
    )
    .unwrap()
}

#[test]
fn kernel_flows_and_istio_metrics_count_the_bytes_sent() {
    mesh_testbed::require_root!();
    // Plaintext: each connection is one kernel flow that closes with it,
    // so the counts are exact.
    let c = Cluster::start(ClusterSpec::new(&[&["a"], &["c"]]).plaintext()).unwrap();
    let _srv = c.serve("c", "8080", "echo").unwrap();
    let to = SocketAddr::new(c.pod("c").ip.into(), 8080);
    let v = bulk(&c, "a", to);
    assert_eq!(v["sent"], N, "{v}");
    assert_eq!(v["received"], N, "{v}");

    let out = [
        ("source_workload", "a"),
        ("destination_workload", "c"),
        ("destination_port", "8080"),
        ("direction", "outbound"),
    ];
    wait_sample(&c, 0, "mesh_flow_connections_closed_total", &out, |v| {
        v >= 1.0
    });
    let text = c.metrics(0).unwrap();
    // The kernel counts sequence space, where SYN and FIN take one each.
    let about_n = |v: Option<f64>| v.is_some_and(|v| (N as f64..=N as f64 + 2.0).contains(&v));
    let sent = sample(&text, "mesh_flow_sent_bytes_total", &out);
    assert!(about_n(sent), "sent {sent:?}");
    let received = sample(&text, "mesh_flow_received_bytes_total", &out);
    assert!(about_n(received), "received {received:?}");
    assert!(sample(&text, "mesh_flow_connections_opened_total", &out) >= Some(1.0));
    assert!(sample(&text, "mesh_flow_srtt_seconds_count", &out) >= Some(1.0));
    let segments = sample(&text, "mesh_flow_sent_segments_total", &out).unwrap();
    assert!(
        segments >= (N / 65536) as f64,
        "{segments} segments for {N} bytes"
    );

    // The destination's node sees the same flow from the other end.
    let inbound = [
        ("source_workload", "a"),
        ("destination_workload", "c"),
        ("destination_port", "8080"),
        ("direction", "inbound"),
    ];
    wait_sample(&c, 1, "mesh_flow_received_bytes_total", &inbound, |v| {
        (N as f64..=N as f64 + 2.0).contains(&v)
    });

    // Istio's metrics count the application's bytes, at both reporters.
    for (n, reporter) in [(0, "source"), (1, "destination")] {
        let l = [
            ("reporter", reporter),
            ("source_workload", "a"),
            ("destination_workload", "c"),
            ("connection_security_policy", "none"),
            ("response_flags", "-"),
        ];
        wait_sample(&c, n, "istio_tcp_connections_closed_total", &l, |v| {
            v >= 1.0
        });
        let text = c.metrics(n).unwrap();
        assert_eq!(
            sample(&text, "istio_tcp_received_bytes_total", &l),
            Some(N as f64),
            "{reporter}"
        );
        assert_eq!(
            sample(&text, "istio_tcp_sent_bytes_total", &l),
            Some(N as f64),
            "{reporter}"
        );
        assert_eq!(
            sample(&text, "istio_tcp_connections_opened_total", &l),
            Some(1.0)
        );
    }
}

const DOCS: &str = r#"---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: default}
spec:
  clusterIP: 10.96.0.20
  selector: {app: c}
  ports: [{name: echo, port: 8080, targetPort: 8080}, {name: admin, port: 9090, targetPort: 9090}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: no-admin-port, namespace: default}
spec:
  selector: {matchLabels: {app: c}}
  action: DENY
  rules:
  - to: [{operation: {ports: ["9090"]}}]
"#;

#[test]
fn mtls_metrics_denials_access_logs_admin_api_and_cli() {
    mesh_testbed::require_root!();
    let mut c = Cluster::start(ClusterSpec::new(&[&["a"], &["c"]]).with_docs(DOCS)).unwrap();
    let _srv = c.serve("c", "8080,9090", "echo").unwrap();
    let ip = c.pod("c").ip;
    let v = bulk(&c, "a", SocketAddr::new(ip.into(), 8080));
    assert_eq!(v["received"], N, "{v}");
    let denied = c.client(
        "a",
        &["ident", "--to", &format!("{ip}:9090"), "--timeout-s", "3"],
        T,
    );
    assert!(
        denied.is_err() || denied.as_ref().unwrap()["echoed"] != true,
        "{denied:?}"
    );

    // Istio metrics with verified identities, at the destination.
    let l = [
        ("reporter", "destination"),
        ("source_workload", "a"),
        ("source_principal", "spiffe://cluster.local/ns/default/sa/a"),
        ("destination_workload", "c"),
        (
            "destination_principal",
            "spiffe://cluster.local/ns/default/sa/c",
        ),
        ("connection_security_policy", "mutual_tls"),
        ("response_flags", "-"),
    ];
    wait_sample(&c, 1, "istio_tcp_received_bytes_total", &l, |v| {
        v == N as f64
    });
    // The denial, with its policy, in two places.
    wait_sample(
        &c,
        1,
        "mesh_policy_decisions_total",
        &[
            ("result", "deny"),
            ("policy", "default/no-admin-port"),
            ("mode", "enforce"),
        ],
        |v| v >= 1.0,
    );
    wait_sample(
        &c,
        1,
        "istio_tcp_connections_closed_total",
        &[("source_workload", "a"), ("response_flags", "RBAC")],
        |v| v >= 1.0,
    );
    // The kernel saw the tunnel open from a's netns to c's HBONE port.
    wait_sample(
        &c,
        0,
        "mesh_flow_connections_opened_total",
        &[
            ("source_workload", "a"),
            ("destination_workload", "c"),
            ("destination_port", "15008"),
            ("direction", "outbound"),
        ],
        |v| v >= 1.0,
    );
    let health = c.metrics(1).unwrap();
    assert_eq!(sample(&health, "mesh_enrolled_pods", &[]), Some(1.0));
    assert_eq!(
        sample(&health, "mesh_datapath_programs_attached", &[]),
        Some(5.0)
    );
    assert!(
        sample(
            &health,
            "mesh_certificate_expiry_timestamp_seconds",
            &[("identity", "spiffe://cluster.local/ns/default/sa/c")]
        )
        .is_some()
    );
    assert_eq!(
        sample(&health, "mesh_discovery_objects", &[("kind", "Service")]),
        Some(1.0)
    );
    assert!(health.contains("mesh_build_info{version=\""), "{health}");

    // Access log: every line is JSON; the denied one names the policy and identities.
    let line = c
        .wait_agent_log(1, "the denied connection's log line", |l| {
            l["message"] == "connection closed" && l["result"] == "denied"
        })
        .unwrap();
    assert_eq!(
        line["source_identity"], "spiffe://cluster.local/ns/default/sa/a",
        "{line}"
    );
    assert_eq!(
        line["destination_identity"], "spiffe://cluster.local/ns/default/sa/c",
        "{line}"
    );
    assert_eq!(line["error"], "denied by default/no-admin-port", "{line}");
    assert_eq!(line["source_workload"], "default/a", "{line}");
    assert_eq!(line["destination_workload"], "default/c", "{line}");
    assert!(line["timestamp"].is_string(), "{line}");
    let ok = c
        .agent_log(1)
        .into_iter()
        .find(|l| l["message"] == "connection closed" && l["result"] == "ok")
        .expect("an ok access log line");
    assert_eq!(ok["bytes_received"], N, "{ok}");
    for n in 0..2 {
        let raw = c.agents_raw_output(n);
        for l in raw.iter().filter(|l| !l.trim().is_empty()) {
            serde_json::from_str::<Value>(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}"));
        }
    }

    // Admin API: config dump with certificate expiry and no key material.
    let admin: SocketAddr = ([127, 0, 0, 1], 15000).into();
    let (code, dump) = c.node_get(1, admin, "/config_dump").unwrap();
    assert_eq!(code, 200, "{dump}");
    assert!(!dump.contains("PRIVATE KEY"), "key material in the dump");
    let dump: Value = serde_json::from_str(&dump).unwrap();
    assert_eq!(
        dump["certificates"][0]["identity"],
        "spiffe://cluster.local/ns/default/sa/c"
    );
    assert!(dump["certificates"][0]["not_after"].is_string(), "{dump}");
    assert_eq!(
        dump["authorization_policies"][0]["name"],
        "default/no-admin-port"
    );
    assert_eq!(dump["enrolled"][0]["pod"], "default/c");
    let (_, datapath) = c.node_get(1, admin, "/datapath").unwrap();
    let datapath: Value = serde_json::from_str(&datapath).unwrap();
    assert_eq!(datapath["programs_attached"], 5, "{datapath}");
    let enrolled = datapath["maps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["name"] == "MESH_ENROLLED")
        .unwrap();
    assert_eq!(enrolled["entries"], 1, "{datapath}");
    // Log level at run time: debug turns on the per-flow lines.
    let (code, body) = c.admin_post(0, "/logging?level=debug").unwrap();
    assert_eq!(code, 200, "{body}");
    let (code, body) = c.admin_post(0, "/logging?level=nonsense=[").unwrap();
    assert_eq!(code, 400, "{body}");
    let (_, level) = c.node_get(0, admin, "/logging").unwrap();
    assert!(level.contains("debug"), "{level}");

    // mesh status: both agents healthy, from node 0's config (Node objects
    // in it give node 1's address).
    let (code, out) = c.mesh_cli(0, &["status", "-o", "json"]).unwrap();
    let status: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(code, 0, "{status:#}");
    assert_eq!(status["healthy"], true, "{status:#}");
    let agents = status["agents"].as_array().unwrap();
    assert_eq!(agents.len(), 2, "{status:#}");
    for a in agents {
        let s = &a["status"];
        assert_eq!(s["programs_attached"], 5, "{a}");
        assert_eq!(s["enrolled_pods"], 1, "{a}");
        assert_eq!(s["certificates"], 1, "{a}");
        assert!(s["soonest_expiry"].is_string(), "{a}");
        assert_eq!(s["policies"], 1, "{a}");
    }
    let bytes: u64 = agents
        .iter()
        .map(|a| a["status"]["bytes_last_minute"].as_u64().unwrap())
        .sum();
    assert!(bytes >= 2 * N, "bytes in the last minute: {bytes}");
    let (code, table) = c.mesh_cli(0, &["status"]).unwrap();
    assert_eq!(code, 0);
    assert!(table.starts_with("NODE "), "{table}");

    // mesh inspect: identity, endpoints, the policy and its verdicts, flows.
    let (code, out) = c
        .mesh_cli(0, &["inspect", "default/c", "-o", "json"])
        .unwrap();
    assert_eq!(code, 0, "{out}");
    let i: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        i["identities"][0], "spiffe://cluster.local/ns/default/sa/c",
        "{i:#}"
    );
    assert_eq!(
        i["inbound_policies"][0]["name"], "default/no-admin-port",
        "{i:#}"
    );
    let verdict = |port: u64| {
        i["inbound"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["peer"] == "spiffe://cluster.local/ns/default/sa/a" && r["port"] == port)
            .cloned()
            .unwrap_or_else(|| panic!("no verdict for a on {port}: {i:#}"))
    };
    assert_eq!(verdict(9090)["verdict"], "deny", "{i:#}");
    assert_eq!(verdict(8080)["verdict"], "allow", "{i:#}");
    let flows = i["flows"].as_array().unwrap();
    assert!(
        flows
            .iter()
            .any(|f| f["source_workload"] == "a" && f["destination_workload"] == "c"),
        "{i:#}"
    );
    let (code, out) = c
        .mesh_cli(0, &["inspect", "default/web", "-o", "yaml"])
        .unwrap();
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("kind: service"), "{out}");
    assert!(out.contains(&format!("endpoint: {ip}:9090")), "{out}");
    let (code, _) = c.mesh_cli(0, &["inspect", "default/nothing"]).unwrap();
    assert_ne!(code, 0);

    // An agent down: status says so and exits non-zero.
    c.kill_agent(1);
    let (code, out) = c.mesh_cli(0, &["status", "-o", "json"]).unwrap();
    assert_ne!(code, 0, "{out}");
    let status: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(status["healthy"], false);
    assert!(
        status["agents"]
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a["reachable"] == false),
        "{status:#}"
    );
}

#[test]
fn a_real_prometheus_scrapes_both_agents() {
    mesh_testbed::require_root!();
    let c = Cluster::start(ClusterSpec::new(&[&["a"], &["c"]])).unwrap();
    let _srv = c.serve("c", "8080", "echo").unwrap();
    let v = bulk(&c, "a", SocketAddr::new(c.pod("c").ip.into(), 8080));
    assert_eq!(v["received"], N, "{v}");

    let targets: Vec<String> = c
        .nodes
        .iter()
        .map(|n| format!("'{}:15020'", n.ip))
        .collect();
    let config = c.dir.join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global: {{scrape_interval: 1s, evaluation_interval: 1s}}\nscrape_configs:\n- job_name: mesh\n  static_configs:\n  - targets: [{}]\n",
            targets.join(", ")
        ),
    )
    .unwrap();
    let mut cmd = c.node_command(0, "prometheus").unwrap();
    cmd.arg(format!("--config.file={}", config.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            c.dir.join("prometheus-data").display()
        ))
        .arg("--web.listen-address=127.0.0.1:19090");
    let _prom = Proc::spawn("prometheus", cmd, Some(&c.dir.join("prometheus.log"))).unwrap();

    let api: SocketAddr = ([127, 0, 0, 1], 19090).into();
    let query = |q: &str| -> Option<Value> {
        let (code, body) = c
            .node_get(0, api, &format!("/api/v1/query?query={q}"))
            .ok()?;
        (code == 200).then(|| serde_json::from_str(&body).ok())?
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut last = None;
    loop {
        // Both agents up, and the destination's byte count as sent.
        let up = query("up");
        let received = query("istio_tcp_received_bytes_total");
        let instances = |v: &Option<Value>| -> BTreeSet<String> {
            v.as_ref()
                .and_then(|v| v["data"]["result"].as_array().cloned())
                .unwrap_or_default()
                .iter()
                .filter(|r| r["value"][1] != "0")
                .filter_map(|r| r["metric"]["instance"].as_str().map(str::to_owned))
                .collect()
        };
        let dest_ok = received.as_ref().is_some_and(|v| {
            v["data"]["result"].as_array().is_some_and(|rs| {
                rs.iter().any(|r| {
                    r["metric"]["reporter"] == "destination"
                        && r["metric"]["source_workload"] == "a"
                        && r["metric"]["destination_workload"] == "c"
                        && r["value"][1] == N.to_string().as_str()
                })
            })
        });
        if instances(&up).len() == 2 && instances(&received).len() == 2 && dest_ok {
            break;
        }
        last = Some((up, received));
        assert!(
            Instant::now() < deadline,
            "Prometheus never saw both agents' series: {last:#?}\nlog: {:?}",
            std::fs::read_to_string(c.dir.join("prometheus.log")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    let _ = last;
    // The flow histogram and the health gauges made it too.
    for q in [
        "mesh_enrolled_pods",
        "mesh_flow_connections_opened_total",
        "mesh_build_info",
    ] {
        let v = query(q).unwrap();
        assert!(
            !v["data"]["result"].as_array().unwrap().is_empty(),
            "{q}: {v}"
        );
    }
}
