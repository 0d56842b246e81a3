//! Local-mode discovery on the test bed: agents follow edits to their file
//! while traffic flows (Services become routable, deleted pods stop
//! receiving, policies apply to new connections), and pod churn leaves
//! nothing behind.
use std::{collections::BTreeSet, time::Duration};

use mesh_testbed::{
    cluster::{Cluster, ClusterSpec},
    sys,
};
use serde_json::Value;

const T: Duration = Duration::from_secs(20);
use mesh_testbed::fixtures::WEB_VIP as VIP;

use mesh_testbed::fixtures::SERVICE_WEB as SERVICE;

const DENY_B: &str = r#"---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: nobody-to-b, namespace: default}
spec:
  selector: {matchLabels: {app: b}}
  action: DENY
  rules: [{}]
"#;

fn ident_vip(c: &Cluster, from: &str) -> Value {
    ident_vip_within(c, from, 3)
}

fn ident_vip_within(c: &Cluster, from: &str, secs: u32) -> Value {
    c.client(
        from,
        &[
            "ident",
            "--to",
            &format!("{VIP}:80"),
            "--timeout-s",
            &secs.to_string(),
        ],
        T,
    )
    .unwrap()
}

/// Which servers `n` connections to the VIP reached (unreached ones as "-").
fn spread(c: &Cluster, n: usize) -> BTreeSet<String> {
    (0..n)
        .map(|_| {
            let v = ident_vip(c, "a");
            if v["echoed"] == true {
                v["server"].as_str().unwrap_or("?").to_owned()
            } else {
                "-".to_owned()
            }
        })
        .collect()
}

#[test]
fn file_edits_apply_while_traffic_flows() {
    mesh_testbed::require_root!();
    let spec = ClusterSpec::new(&[&["a"], &["b", "c"]])
        .label("b", "tier", "web")
        .label("c", "tier", "web");
    let mut c = Cluster::start(spec).unwrap();
    let _sb = c.serve("b", "8080", "ident").unwrap();
    let _sc = c.serve("c", "8080", "ident").unwrap();
    let _echo = c.serve("b", "9000", "echo").unwrap();
    // One long-lived connection must ride through every edit below.
    let b_echo = format!("{}:9000", c.pod("b").ip);
    let mut hold = c
        .spawn_client("a", &["hold", "--to", &b_echo, "--seconds", "12"])
        .unwrap();

    assert_eq!(
        spread(&c, 1),
        BTreeSet::from(["-".to_owned()]),
        "no Service yet"
    );

    c.set_docs(SERVICE).unwrap();
    assert_eq!(
        spread(&c, 16),
        BTreeSet::from(["b".to_owned(), "c".to_owned()]),
        "the new Service balances over both endpoints"
    );
    let line = c
        .wait_agent_log(0, "service access log", |l| {
            l["message"] == "connection closed" && l["destination_service"] == "default/web"
        })
        .unwrap();
    assert_eq!(line["dst"], format!("{VIP}:80"), "{line}");
    assert_eq!(line["security"], "mutual_tls", "{line}");

    c.delete_pod("c").unwrap();
    assert_eq!(
        spread(&c, 8),
        BTreeSet::from(["b".to_owned()]),
        "a deleted pod receives nothing"
    );

    c.set_docs(&format!("{SERVICE}{DENY_B}")).unwrap();
    assert_eq!(
        spread(&c, 2),
        BTreeSet::from(["-".to_owned()]),
        "new connections are denied"
    );
    let denied = c
        .wait_agent_log(1, "denial", |l| {
            l["message"] == "connection closed" && l["error"] == "denied by default/nobody-to-b"
        })
        .unwrap();
    assert_eq!(denied["direction"], "inbound", "{denied}");

    // The connection opened before the policy keeps going (policies apply
    // to new connections, as in Istio).
    hold.wait_exit(T).unwrap();
    let held = hold.json_lines().pop().unwrap();
    assert_eq!(held["ok"], true, "{held}");
    assert!(held["rounds"].as_u64().unwrap() >= 20, "{held}");
}

#[test]
fn service_edge_cases_fail_cleanly() {
    mesh_testbed::require_root!();
    let spec = ClusterSpec::new(&[&["a"], &["b"]]).label("b", "tier", "web");
    let mut c = Cluster::start(spec).unwrap();
    let _sb = c.serve("b", "8080", "ident").unwrap();
    // b is ready but a second endpoint listed in a slice is dead: connects
    // to it fail over to b.
    let with_dead_endpoint = format!(
        "{SERVICE}---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: web-1, namespace: default, labels: {{kubernetes.io/service-name: web}}}}\naddressType: IPv4\nports: [{{name: http, port: 8080}}]\nendpoints:\n- addresses: [{}]\n- addresses: [10.244.1.250]\n",
        c.pod("b").ip
    );
    c.set_docs(&with_dead_endpoint).unwrap();
    for _ in 0..6 {
        // A connect to the dead address fails only when ARP gives up (~3 s).
        let v = ident_vip_within(&c, "a", 10);
        assert_eq!(v["server"], "b", "{v}");
    }
    // A port the Service does not have is refused, not passed through.
    let v = c
        .client(
            "a",
            &["ident", "--to", &format!("{VIP}:81"), "--timeout-s", "3"],
            T,
        )
        .unwrap();
    assert!(v.get("error").is_some(), "{v}");
    let refused = c
        .wait_agent_log(0, "refusal", |l| {
            l["message"] == "connection closed" && l["error"] == "the Service has no such port"
        })
        .unwrap();
    assert_eq!(refused["result"], "refused", "{refused}");

    // A broken edit is refused with file, line and field; the last good
    // state (the Service) stays in force.
    c.write_docs_unchecked(&SERVICE.replace("port: 80,", "port: 99999,"))
        .unwrap();
    let rejected = c
        .wait_agent_log(0, "rejection", |l| {
            l["message"]
                .as_str()
                .is_some_and(|m| m.starts_with("config rejected"))
        })
        .unwrap();
    let error = rejected["error"].as_str().unwrap();
    assert!(
        error.contains(".yaml:")
            && error.contains("Service default/web: spec.ports[0].port: 99999 is not a port"),
        "{error}"
    );
    assert_eq!(ident_vip_within(&c, "a", 10)["server"], "b");
}

#[test]
fn churn_of_200_pods_leaves_nothing_behind() {
    mesh_testbed::require_root!();
    let mut c = Cluster::start(ClusterSpec::new(&[&["a"]])).unwrap();
    let pins = c.nodes[0].pin_dir.clone();
    let tasks = |c: &Cluster| {
        c.agent_log(0)
            .iter()
            .rev()
            .find(|l| l["message"] == "view applied")
            .map(|l| {
                (
                    l["enrolled"].as_u64().unwrap(),
                    l["tasks"].as_u64().unwrap(),
                )
            })
            .unwrap()
    };
    // Aborted tasks finish after the line that reports them, so task
    // counts are read from a later, unrelated change.
    let settle = |c: &mut Cluster, i: usize| {
        std::thread::sleep(Duration::from_millis(300));
        c.set_docs(&format!(
            "apiVersion: v1\nkind: Namespace\nmetadata: {{name: settle-{i}}}\n"
        ))
        .unwrap();
        tasks(c)
    };
    let (base_enrolled, base_tasks) = settle(&mut c, 0);
    assert_eq!(base_enrolled, 1);
    // Same service account as a, so the CA signs for them.
    let churn = c.add_bare_pods(0, "churn", 200, "a").unwrap();
    for round in 0..2 {
        c.set_listed(&churn, true).unwrap();
        sys::wait_for("200 pods enrolled", T, || {
            (tasks(&c).0 == base_enrolled + 200).then_some(())
        })
        .unwrap_or_else(|e| panic!("round {round}: {e}"));
        assert_eq!(
            sys::pinned_map_len(&pins.join("MESH_ENROLLED")).unwrap(),
            201
        );
        c.set_listed(&churn, false).unwrap();
        sys::wait_for("200 pods unenrolled", T, || {
            (tasks(&c).0 == base_enrolled).then_some(())
        })
        .unwrap_or_else(|e| panic!("round {round}: {e}"));
    }
    assert_eq!(sys::pinned_map_len(&pins.join("MESH_ENROLLED")).unwrap(), 1);
    assert_eq!(
        sys::pinned_map_len(&pins.join("MESH_POD_ADDRS")).unwrap(),
        1
    );
    assert_eq!(
        sys::pod_links(&pins).len(),
        1,
        "only a's sk_lookup link remains"
    );
    assert_eq!(
        settle(&mut c, 1),
        (base_enrolled, base_tasks),
        "agent tasks back to where they were"
    );
    for name in &churn {
        let netns = c.pod(name).netns_path();
        let out = sys::run(
            std::process::Command::new("nsenter")
                .arg(format!("--net={}", netns.display()))
                .args(["ss", "-Hltn"]),
        )
        .unwrap();
        assert!(out.trim().is_empty(), "{name} still has listeners: {out}");
    }
    // a still works after all that.
    let _srv = c.serve("a", "8080", "ident").unwrap();
    let v = c
        .client(
            "a",
            &[
                "ident",
                "--to",
                &format!("{}:8080", c.pod("a").ip),
                "--timeout-s",
                "3",
            ],
            T,
        )
        .unwrap();
    assert_eq!(v["echoed"], true, "{v}");
}
