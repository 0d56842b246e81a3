//! Policies that cannot be read fail closed in their scope on the test bed
//! (local mode): a policy edited in with a field this agent does not know
//! denies the workloads it selects, and every other pod is still served.
use std::time::Duration;

use mesh_testbed::{Cluster, ClusterSpec};
use serde_json::Value;

const T: Duration = Duration::from_secs(20);

/// An ALLOW policy for b with a field under `rules` that the agent does
/// not know: ignoring it could widen the ALLOW, so it cannot be read.
const UNREADABLE_FOR_B: &str = r#"apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: future-b, namespace: default}
spec:
  selector: {matchLabels: {app: b}}
  rules:
  - from:
    - source:
        principals: [cluster.local/ns/default/sa/a]
        newIstioField: [anything]
"#;

fn ident(c: &Cluster, from: &str, to: &str) -> Value {
    let dst = format!("{}:8080", c.pod(to).ip);
    c.client(from, &["ident", "--to", &dst, "--timeout-s", "3"], T)
        .unwrap()
}

fn reached(v: &Value, to: &str) -> bool {
    v["server"] == to && v["echoed"] == true
}

#[test]
fn an_unreadable_policy_denies_in_its_scope_while_other_pods_are_served() {
    mesh_testbed::require_root!();
    // The test bed labels every pod `app: <its name>`.
    let mut c = Cluster::start(ClusterSpec::new(&[&["a"], &["b", "c"]])).unwrap();
    let _sb = c.serve("b", "8080", "ident").unwrap();
    let _sc = c.serve("c", "8080", "ident").unwrap();
    assert!(reached(&ident(&c, "a", "b"), "b"), "served before the edit");

    // A reload with the unreadable policy is applied, not rejected: the
    // policy's stand-in denies b (selected), and c is still served.
    c.set_docs(UNREADABLE_FOR_B).unwrap();
    let v = ident(&c, "a", "b");
    assert!(
        !reached(&v, "b"),
        "b is in the unreadable policy's scope: {v}"
    );
    assert!(reached(&ident(&c, "a", "c"), "c"), "c is outside its scope");
    // Same node, same answer (the hand-over path).
    assert!(!reached(&ident(&c, "c", "b"), "b"));

    let warned = c
        .wait_agent_log(1, "unreadable policy warning", |l| {
            l["object"] == "AuthorizationPolicy default/future-b"
                && l["field"] == "spec.rules[0].from[0].source.newIstioField"
        })
        .unwrap();
    assert!(
        warned["message"].as_str().is_some_and(
            |m| m.contains("cannot be read") && m.contains("denying all traffic in its scope")
        ),
        "{warned}"
    );
    let denied = c
        .wait_agent_log(1, "denial by the stand-in", |l| {
            l["message"] == "connection closed" && l["error"] == "denied by default/future-b"
        })
        .unwrap();
    assert_eq!(denied["result"], "denied", "{denied}");
    assert!(
        !c.agent_log(1).iter().any(|l| l["message"]
            .as_str()
            .is_some_and(|m| m.starts_with("config rejected"))),
        "the edit was applied, not rejected"
    );

    // Fixed, the policy applies as written: a may reach b again.
    c.set_docs(&UNREADABLE_FOR_B.replace("        newIstioField: [anything]\n", ""))
        .unwrap();
    assert!(
        reached(&ident(&c, "a", "b"), "b"),
        "allowed by the fixed policy"
    );
}
