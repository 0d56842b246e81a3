//! The discovery scale benchmark: one agent on the test bed whose local
//! file grows to 10,000 pods, 5,000 Services and 1,000 policies. Reports
//! the agent's memory, how long a full sync takes to apply, and how long
//! one change takes to reach the datapath (a new pod on the node enrolled).
use std::{
    fmt::Write,
    time::{Duration, Instant},
};

use anyhow::Context;
use mesh_testbed::{Cluster, ClusterSpec};

const PODS: usize = 10_000;
const SERVICES: usize = 5_000;
const POLICIES: usize = 1_000;
const NAMESPACES: usize = 100;

/// The cluster's objects as one multi-document YAML.
fn cluster_yaml() -> String {
    let mut s = String::with_capacity(6 << 20);
    for n in 0..NAMESPACES {
        let _ = write!(
            s,
            "---\napiVersion: v1\nkind: Namespace\nmetadata: {{name: ns{n}, labels: {{mesh.io/dataplane-mode: enabled}}}}\n"
        );
    }
    for i in 0..PODS {
        let _ = write!(
            s,
            "---\napiVersion: v1\nkind: Pod\nmetadata: {{name: pod-{i}, namespace: ns{ns}, uid: u{i}, labels: {{app: pod-{i}, svc: s{svc}}}}}\nspec: {{nodeName: other-{node}, serviceAccountName: sa{sa}}}\nstatus: {{podIPs: [{{ip: 10.{a}.{b}.{c}}}]}}\n",
            ns = i / (PODS / NAMESPACES),
            svc = i / 2,
            node = i % 50,
            sa = i % 20,
            a = 100 + (i >> 16),
            b = (i >> 8) & 255,
            c = i & 255,
        );
    }
    for j in 0..SERVICES {
        let _ = write!(
            s,
            "---\napiVersion: v1\nkind: Service\nmetadata: {{name: s{j}, namespace: ns{ns}}}\nspec: {{clusterIP: 10.96.{b}.{c}, selector: {{svc: s{j}}}, ports: [{{name: http, port: 80, targetPort: 8080}}]}}\n",
            ns = 2 * j / (PODS / NAMESPACES),
            b = j >> 8,
            c = j & 255,
        );
    }
    for k in 0..POLICIES {
        let _ = write!(
            s,
            "---\napiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {{name: p{k}, namespace: ns{ns}}}\nspec:\n  selector: {{matchLabels: {{app: pod-{pod}}}}}\n  rules:\n  - from: [{{source: {{principals: [cluster.local/ns/ns{from}/sa/sa{sa}]}}}}]\n    to: [{{operation: {{ports: [\"8080\"]}}}}]\n",
            ns = k % NAMESPACES,
            pod = (k % NAMESPACES) * (PODS / NAMESPACES) + k / NAMESPACES,
            from = (k + 1) % NAMESPACES,
            sa = k % 20,
        );
    }
    s
}

fn rss_mib(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb / 1024.0)
}

/// The last value of `field` on the last log line with `message`.
fn last_field(c: &Cluster, message: &str, field: &str) -> Option<u64> {
    c.agent_log(0)
        .iter()
        .rev()
        .find(|l| l["message"] == message)
        .and_then(|l| l[field].as_u64())
}

fn ms(us: Option<u64>) -> String {
    us.map_or("–".into(), |us| format!("{:.1}", us as f64 / 1000.0))
}

pub fn run() -> anyhow::Result<String> {
    let mut c = Cluster::start(ClusterSpec::new(&[&["a"]]))?;
    let pid = *c.agent_pids().first().context("no agent")?;
    std::thread::sleep(Duration::from_secs(1));
    let idle = rss_mib(pid);
    let yaml = cluster_yaml();

    let started = Instant::now();
    c.set_docs(&yaml)?;
    let full_wall = started.elapsed();
    let full = (
        last_field(&c, "config file parsed", "parse_us"),
        last_field(&c, "discovery view built", "build_us"),
        last_field(&c, "view applied", "apply_us"),
    );
    std::thread::sleep(Duration::from_secs(1));
    let loaded = rss_mib(pid);

    let pod = c.add_bare_pods(0, "scale", 1, "a")?;
    let started = Instant::now();
    c.set_listed(&pod, true)?;
    let one_wall = started.elapsed();
    let enrolled = c
        .agent_log(0)
        .iter()
        .any(|l| l["message"] == "pod enrolled" && l["pod"] == "default/scale0");
    anyhow::ensure!(enrolled, "the new pod was not enrolled");
    let one = (
        last_field(&c, "config file parsed", "parse_us"),
        last_field(&c, "discovery view built", "build_us"),
        last_field(&c, "view applied", "apply_us"),
    );
    std::thread::sleep(Duration::from_millis(500));
    let after = rss_mib(pid);

    let mut t = String::new();
    let _ = writeln!(
        t,
        "Discovery scale: one agent, local file of {PODS} pods, {SERVICES} Services, {POLICIES} AuthorizationPolicies ({} MiB of YAML); in-agent times from the agent's log, wall times from the file write (the file is polled every 100 ms)\n",
        yaml.len() >> 20
    );
    let _ = writeln!(t, "| measurement | value |\n|---|---|");
    let _ = writeln!(t, "| agent RSS, 1 pod known (MiB) | {idle:.1} |");
    let _ = writeln!(t, "| agent RSS, full store loaded (MiB) | {loaded:.1} |");
    let _ = writeln!(t, "| agent RSS after one more change (MiB) | {after:.1} |");
    for (what, (parse, build, apply), wall) in [
        ("full sync", full, full_wall),
        ("one new pod on the node → enrolled", one, one_wall),
    ] {
        let _ = writeln!(t, "| {what}: parse file (ms) | {} |", ms(parse));
        let _ = writeln!(t, "| {what}: build view (ms) | {} |", ms(build));
        let _ = writeln!(t, "| {what}: apply to datapath (ms) | {} |", ms(apply));
        let _ = writeln!(
            t,
            "| {what}: file written → applied, wall (ms) | {:.0} |",
            wall.as_secs_f64() * 1000.0
        );
    }
    Ok(t)
}
