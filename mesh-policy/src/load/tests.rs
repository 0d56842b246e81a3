use std::collections::BTreeMap;

use mesh_identity::Identity;
use serde_json::json;

use super::*;
use crate::{Connection, PolicySet, PolicySync, Target, Verdict, model::Action};

fn load(spec: Value) -> Loaded<Option<AuthorizationPolicy>> {
    authorization("shop", "p", &BTreeMap::new(), Some(&spec))
}

fn decide(p: AuthorizationPolicy, app: &str, peer: &Identity, port: u16) -> Verdict {
    let set = PolicySet {
        root_namespace: "istio-system".into(),
        authorization: vec![p],
        peer_authentication: vec![],
        sync: PolicySync::COMPLETE,
    };
    let labels = [("app".to_owned(), app.to_owned())].into();
    set.authorize(
        Target {
            namespace: "shop",
            labels: &labels,
        },
        &Connection {
            source: Some(peer),
            source_ip: "10.0.0.9".parse().unwrap(),
            destination_ip: "10.0.0.1".parse().unwrap(),
            destination_port: port,
        },
    )
    .enforced
}

fn front() -> Identity {
    Identity::new("cluster.local", "shop", "front").unwrap()
}

#[test]
fn a_readable_policy_loads_as_written() {
    let l = load(json!({"selector": {"matchLabels": {"app": "web"}},
        "rules": [{"from": [{"source": {"principals": ["cluster.local/ns/shop/sa/front"]}}]}]}));
    assert_eq!(l.failure, None);
    let p = l.policy.unwrap();
    assert_eq!((p.name.as_str(), p.action), ("shop/p", Action::Allow));
    assert!(decide(p, "web", &front(), 80).allowed());
}

#[test]
fn an_unknown_field_in_an_allow_rule_denies_in_the_readable_selector_scope() {
    let l = load(json!({"selector": {"matchLabels": {"app": "web"}},
        "rules": [{"from": [{"source": {"principals": ["x"], "newIstioField": ["y"]}}]}]}));
    let Some(Failure::Unreadable(e)) = &l.failure else {
        panic!("{:?}", l.failure)
    };
    assert_eq!(e.field, "spec.rules[0].from[0].source.newIstioField");
    assert!(
        e.problem.starts_with("unknown field `newIstioField`"),
        "{e}"
    );
    let p = l.policy.unwrap();
    assert_eq!(p.action, Action::Deny);
    assert_eq!(p.selector.as_ref().unwrap().match_labels["app"], "web");
    assert!(!decide(p.clone(), "web", &front(), 80).allowed());
    assert!(decide(p, "db", &front(), 80).allowed(), "outside its scope");
}

#[test]
fn an_unreadable_selector_widens_the_stand_in_to_the_namespace() {
    let l = load(json!({"selector": {"matchExpressions": [{"key": "app"}]}, "action": "DENY"}));
    let Some(Failure::Unreadable(e)) = &l.failure else {
        panic!("{:?}", l.failure)
    };
    assert_eq!(e.field, "spec.selector.matchExpressions");
    let p = l.policy.unwrap();
    assert_eq!(p.selector, None);
    assert!(!decide(p, "anything", &front(), 80).allowed());
}

#[test]
fn type_errors_and_missing_fields_name_the_field() {
    let l = load(json!({"rules": [{"to": [{"operation": {"ports": [80]}}]}]}));
    let Some(Failure::Unreadable(e)) = &l.failure else {
        panic!("{:?}", l.failure)
    };
    assert_eq!(e.field, "spec.rules[0].to[0].operation.ports[0]");
    assert!(e.problem.contains("expected a string"), "{e}");
    let l = load(json!({"action": "DENY", "rules": [{"when": [{"values": ["a"]}]}]}));
    let Some(Failure::Unreadable(e)) = &l.failure else {
        panic!("{:?}", l.failure)
    };
    assert_eq!(e.field, "spec.rules[0].when[0]");
    assert!(e.problem.contains("missing field `key`"), "{e}");
    let l = load(json!({"action": "MAYBE"}));
    assert!(matches!(&l.failure, Some(Failure::Unreadable(e)) if e.field == "spec.action"));
}

#[test]
fn an_unknown_top_level_field_fails_closed_even_for_deny() {
    let l = load(json!({"action": "DENY", "rules": [{}], "targetSelector": {}}));
    let Some(Failure::Unreadable(e)) = &l.failure else {
        panic!("{:?}", l.failure)
    };
    assert_eq!(e.field, "spec.targetSelector");
    assert_eq!(l.policy.unwrap().selector, None);
}

#[test]
fn unknown_fields_in_deny_rules_drop_their_clause_and_deny_at_least_as_much() {
    // Denies `front` on port 80 only; the unknown field sits in `from[0]`,
    // which is dropped: the rule then denies every peer on port 80.
    let l = load(json!({"action": "DENY", "rules": [{
        "from": [{"source": {"principals": ["cluster.local/ns/shop/sa/front"], "newField": 1}}],
        "to": [{"operation": {"ports": ["80"]}}]}]}));
    assert_eq!(l.failure, None);
    assert_eq!(l.ignored.len(), 1);
    assert_eq!(l.ignored[0].field, "spec.rules[0].from[0].source.newField");
    assert!(
        l.ignored[0].problem.contains("spec.rules[0].from[0]"),
        "{:?}",
        l.ignored
    );
    let p = l.policy.unwrap();
    let other = Identity::new("cluster.local", "shop", "other").unwrap();
    assert!(!decide(p.clone(), "web", &other, 80).allowed());
    assert!(
        decide(p, "web", &other, 81).allowed(),
        "the port constraint stays"
    );
}

#[test]
fn every_deny_clause_kind_is_dropped_and_all_are_reported() {
    let l = load(json!({"action": "DENY", "rules": [
        {"to": [{"operation": {"ports": ["80"], "x": 1}}]},
        {"when": [{"key": "source.ip", "values": ["10.0.0.0/8"], "y": 1}]},
        {"from": [{"source": {}}], "z": 1},
    ]}));
    assert_eq!(l.failure, None);
    let fields: Vec<_> = l.ignored.iter().map(|e| e.field.as_str()).collect();
    assert_eq!(
        fields,
        [
            "spec.rules[0].to[0].operation.x",
            "spec.rules[1].when[0].y",
            "spec.rules[2].z"
        ]
    );
    let p = l.policy.unwrap();
    assert!(!decide(p, "web", &front(), 9999).allowed());
}

#[test]
fn the_clause_to_drop_follows_the_path() {
    use DroppedClause::*;
    for (field, want) in [
        ("spec.rules[2].from[1].source.x", Some(From(2, 1))),
        ("spec.rules[0].from[3].x", Some(From(0, 3))),
        ("spec.rules[0].to[0].operation.x", Some(To(0, 0))),
        ("spec.rules[1].when[4].x", Some(When(1))),
        ("spec.rules[1].x", Some(Rule(1))),
        ("spec.rules[1].fromage", Some(Rule(1))),
        ("spec.rules[1]", None),
        ("spec.x", None),
        ("spec.selector.x", None),
    ] {
        assert_eq!(deny_rule_clause(field), want, "{field}");
    }
}

#[test]
fn compile_errors_keep_their_own_failure() {
    let l = load(json!({"rules": [{"from": [{"source": {"ipBlocks": ["nope"]}}]}]}));
    assert!(
        matches!(&l.failure, Some(Failure::Invalid(e)) if e.field == "spec.rules[0].from[0].source.ipBlocks"),
        "{:?}",
        l.failure
    );
    assert_eq!(l.policy.unwrap().action, Action::Deny);
}

#[test]
fn audit_and_waypoint_policies_have_no_effect_and_no_spec_means_allow_nothing() {
    assert_eq!(load(json!({"action": "AUDIT"})).policy, None);
    assert_eq!(
        load(json!({"targetRefs": [{"kind": "Gateway"}]})).policy,
        None
    );
    let l = authorization("shop", "p", &BTreeMap::new(), None);
    let p = l.policy.unwrap();
    assert_eq!(p.action, Action::Allow);
    assert!(!decide(p, "web", &front(), 80).allowed());
}

#[test]
fn an_unreadable_peer_authentication_is_strict_in_its_scope() {
    let l = peer_authentication(
        "shop",
        "pa",
        Some(&json!({"selector": {"matchLabels": {"app": "web"}},
                     "mtls": {"mode": "PERMISSIVE", "newMode": "x"}})),
    );
    let Some(Failure::Unreadable(e)) = &l.failure else {
        panic!("{:?}", l.failure)
    };
    assert_eq!(e.field, "spec.mtls.newMode");
    let set = PolicySet {
        root_namespace: "istio-system".into(),
        authorization: vec![],
        peer_authentication: vec![l.policy],
        sync: PolicySync::COMPLETE,
    };
    let web = [("app".to_owned(), "web".to_owned())].into();
    let db = [("app".to_owned(), "db".to_owned())].into();
    let mode = |labels| {
        set.mtls_mode(
            Target {
                namespace: "shop",
                labels,
            },
            8080,
        )
    };
    assert_eq!(mode(&web), MtlsMode::Strict);
    assert_eq!(mode(&db), MtlsMode::Permissive);
}

#[test]
fn a_readable_peer_authentication_keeps_port_modes() {
    let l = peer_authentication(
        "shop",
        "pa",
        Some(&json!({"mtls": {"mode": "STRICT"}, "portLevelMtls": {"8080": {"mode": "DISABLE"}}})),
    );
    assert_eq!(l.failure, None);
    assert_eq!(l.policy.name, "shop/pa");
    assert_eq!(l.policy.spec.port_level_mtls[&8080].mode, MtlsMode::Disable);
}
