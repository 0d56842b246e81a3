use std::{collections::BTreeMap, net::IpAddr};

use mesh_identity::Identity;

use super::*;

fn policy(ns: &str, name: &str, yaml: &str) -> AuthorizationPolicy {
    policy_annotated(ns, name, yaml, &[])
}

fn policy_annotated(ns: &str, name: &str, yaml: &str, ann: &[(&str, &str)]) -> AuthorizationPolicy {
    let spec: model::AuthorizationPolicySpec = serde_yaml::from_str(yaml).unwrap();
    let ann = ann
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    AuthorizationPolicy::compile(ns, name, &ann, &spec)
        .unwrap()
        .unwrap()
}

fn set(policies: Vec<AuthorizationPolicy>) -> PolicySet {
    PolicySet {
        root_namespace: "istio-system".into(),
        authorization: policies,
        peer_authentication: vec![],
        sync: PolicySync::COMPLETE,
    }
}

fn labels(app: &str) -> BTreeMap<String, String> {
    [("app".to_string(), app.to_string())].into()
}

fn conn<'a>(source: Option<&'a Identity>, src_ip: &str, port: u16) -> Connection<'a> {
    Connection {
        source,
        source_ip: src_ip.parse::<IpAddr>().unwrap(),
        destination_ip: "10.244.2.10".parse().unwrap(),
        destination_port: port,
    }
}

fn verdict(set: &PolicySet, app: &str, c: &Connection<'_>) -> Verdict {
    let l = labels(app);
    set.authorize(
        Target {
            namespace: "shop",
            labels: &l,
        },
        c,
    )
    .enforced
}

fn id(ns: &str, sa: &str) -> Identity {
    Identity::new("cluster.local", ns, sa).unwrap()
}

#[test]
fn no_policy_allows() {
    let web = id("shop", "web");
    assert!(verdict(&set(vec![]), "db", &conn(Some(&web), "10.0.0.1", 5432)).allowed());
}

#[test]
fn allow_by_principal_denies_everyone_else() {
    let s = set(vec![policy(
        "shop",
        "db-from-web",
        "selector: {matchLabels: {app: db}}\naction: ALLOW\nrules:\n- from:\n  - source: {principals: [cluster.local/ns/shop/sa/web]}\n",
    )]);
    let web = id("shop", "web");
    let other = id("shop", "other");
    assert_eq!(
        verdict(&s, "db", &conn(Some(&web), "10.0.0.1", 5432)),
        Verdict::Allow {
            policy: Some("shop/db-from-web".into())
        }
    );
    assert_eq!(
        verdict(&s, "db", &conn(Some(&other), "10.0.0.1", 5432)),
        Verdict::Deny { policy: None }
    );
    assert!(!verdict(&s, "db", &conn(None, "10.0.0.1", 5432)).allowed());
    // The selector does not pick other workloads.
    assert!(verdict(&s, "cache", &conn(Some(&other), "10.0.0.1", 5432)).allowed());
}

#[test]
fn deny_by_namespace_wins_over_allow() {
    let s = set(vec![
        policy("shop", "allow-all", "action: ALLOW\nrules: [{}]\n"),
        policy(
            "istio-system",
            "no-dev",
            "action: DENY\nrules:\n- from:\n  - source: {namespaces: [dev]}\n",
        ),
    ]);
    let dev = id("dev", "x");
    let prod = id("prod", "x");
    assert_eq!(
        verdict(&s, "db", &conn(Some(&dev), "10.0.0.1", 80)),
        Verdict::Deny {
            policy: Some("istio-system/no-dev".into())
        }
    );
    assert!(verdict(&s, "db", &conn(Some(&prod), "10.0.0.1", 80)).allowed());
}

#[test]
fn ports_not_ports_and_ip_blocks() {
    let s = set(vec![policy(
        "shop",
        "p",
        "rules:\n- to:\n  - operation: {ports: [\"80\", \"8080\"], notPorts: [\"8080\"]}\n  from:\n  - source: {ipBlocks: [10.0.0.0/24], notIpBlocks: [10.0.0.7]}\n",
    )]);
    assert!(verdict(&s, "a", &conn(None, "10.0.0.1", 80)).allowed());
    assert!(!verdict(&s, "a", &conn(None, "10.0.0.1", 8080)).allowed());
    assert!(!verdict(&s, "a", &conn(None, "10.0.0.7", 80)).allowed());
    assert!(!verdict(&s, "a", &conn(None, "10.0.1.1", 80)).allowed());
}

#[test]
fn allow_nothing_and_empty_deny() {
    let s = set(vec![policy("shop", "allow-nothing", "{}")]);
    let web = id("shop", "web");
    assert!(!verdict(&s, "a", &conn(Some(&web), "10.0.0.1", 80)).allowed());
    let s = set(vec![policy("shop", "deny-nothing", "action: DENY\n")]);
    assert!(verdict(&s, "a", &conn(Some(&web), "10.0.0.1", 80)).allowed());
}

#[test]
fn not_principals_star_denies_plaintext() {
    let s = set(vec![policy(
        "shop",
        "require-mtls",
        "action: DENY\nrules:\n- from:\n  - source: {notPrincipals: [\"*\"]}\n",
    )]);
    let web = id("shop", "web");
    assert!(verdict(&s, "a", &conn(Some(&web), "10.0.0.1", 80)).allowed());
    assert!(!verdict(&s, "a", &conn(None, "10.0.0.1", 80)).allowed());
}

#[test]
fn l7_fields_never_widen_access() {
    // ALLOW with methods: the rule cannot be checked at L4, so nothing is allowed by it.
    let s = set(vec![policy(
        "shop",
        "get-only",
        "rules:\n- to:\n  - operation: {methods: [GET]}\n",
    )]);
    let web = id("shop", "web");
    assert_eq!(
        verdict(&s, "a", &conn(Some(&web), "10.0.0.1", 80)),
        Verdict::Deny { policy: None }
    );
    // DENY with paths: the L4 part alone decides, so it denies more, not less.
    let s = set(vec![policy(
        "shop",
        "no-admin",
        "action: DENY\nrules:\n- to:\n  - operation: {paths: [/admin], ports: [\"80\"]}\n",
    )]);
    assert!(!verdict(&s, "a", &conn(Some(&web), "10.0.0.1", 80)).allowed());
    assert!(verdict(&s, "a", &conn(Some(&web), "10.0.0.1", 81)).allowed());
}

#[test]
fn when_conditions() {
    let s = set(vec![policy(
        "shop",
        "w",
        "rules:\n- when:\n  - key: source.namespace\n    values: [shop]\n  - key: destination.port\n    notValues: [\"9090\"]\n",
    )]);
    let web = id("shop", "web");
    let dev = id("dev", "web");
    assert!(verdict(&s, "a", &conn(Some(&web), "10.0.0.1", 80)).allowed());
    assert!(!verdict(&s, "a", &conn(Some(&web), "10.0.0.1", 9090)).allowed());
    assert!(!verdict(&s, "a", &conn(Some(&dev), "10.0.0.1", 80)).allowed());
}

#[test]
fn dry_run_is_reported_not_enforced() {
    let s = set(vec![policy_annotated(
        "shop",
        "deny-all",
        "action: DENY\nrules: [{}]\n",
        &[("mesh.io/dry-run", "true")],
    )]);
    let web = id("shop", "web");
    let l = labels("a");
    let d = s.authorize(
        Target {
            namespace: "shop",
            labels: &l,
        },
        &conn(Some(&web), "10.0.0.1", 80),
    );
    assert!(d.enforced.allowed());
    assert_eq!(
        d.dry_run,
        Some(Verdict::Deny {
            policy: Some("shop/deny-all".into())
        })
    );
}

#[test]
fn bad_fields_are_named() {
    let spec: model::AuthorizationPolicySpec =
        serde_yaml::from_str("rules:\n- from:\n  - source: {ipBlocks: [10.0.0.300/8]}\n").unwrap();
    let e = AuthorizationPolicy::compile("a", "b", &BTreeMap::new(), &spec).unwrap_err();
    assert_eq!(e.field, "spec.rules[0].from[0].source.ipBlocks");
    let spec: model::AuthorizationPolicySpec = serde_yaml::from_str("action: CUSTOM\n").unwrap();
    assert!(AuthorizationPolicy::compile("a", "b", &BTreeMap::new(), &spec).is_err());
    let typo = serde_yaml::from_str::<model::AuthorizationPolicySpec>(
        "rules:\n- from:\n  - source: {principal: [x]}\n",
    );
    assert!(typo.unwrap_err().to_string().contains("principal"));
}

#[test]
fn mtls_mode_resolution() {
    let pa = |ns: &str, yaml: &str| PeerAuthentication {
        name: "x".into(),
        namespace: ns.into(),
        spec: serde_yaml::from_str(yaml).unwrap(),
    };
    let mut s = set(vec![]);
    let l = labels("db");
    let t = Target {
        namespace: "shop",
        labels: &l,
    };
    assert_eq!(s.mtls_mode(t, 80), MtlsMode::Permissive);
    s.peer_authentication = vec![pa("istio-system", "mtls: {mode: STRICT}")];
    assert_eq!(s.mtls_mode(t, 80), MtlsMode::Strict);
    s.peer_authentication
        .push(pa("shop", "mtls: {mode: PERMISSIVE}"));
    assert_eq!(s.mtls_mode(t, 80), MtlsMode::Permissive);
    s.peer_authentication.push(pa(
        "shop",
        "selector: {matchLabels: {app: db}}\nportLevelMtls:\n  5432: {mode: STRICT}\n",
    ));
    assert_eq!(s.mtls_mode(t, 5432), MtlsMode::Strict);
    assert_eq!(s.mtls_mode(t, 80), MtlsMode::Permissive);
}
