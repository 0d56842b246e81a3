use std::{collections::BTreeMap, net::IpAddr};

use mesh_identity::Identity;
use serde_json::{Value, json};

use super::*;
use crate::authz::DRY_RUN_ANNOTATIONS;

const ROOT: &str = "istio-system";
const BIND: &str = "targetRefs: [{kind: Service, group: \"\", name: web}]\n";

fn spec(yaml: &str) -> model::AuthorizationPolicySpec {
    serde_yaml::from_str(yaml).unwrap()
}

fn compile_in(
    ns: &str,
    yaml: &str,
    ann: &[(&str, &str)],
) -> Result<Option<WaypointPolicy>, PolicyError> {
    let ann: BTreeMap<String, String> = ann
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    WaypointPolicy::compile(ns, "p", &ann, &spec(yaml))
}

/// A policy of `shop` bound to Service `web`, with `body` after the binding.
fn policy(body: &str) -> WaypointPolicy {
    compile_in("shop", &format!("{BIND}{body}"), &[])
        .unwrap()
        .unwrap()
}

fn compile_err(body: &str) -> PolicyError {
    compile_in("shop", &format!("{BIND}{body}"), &[]).unwrap_err()
}

struct Facts {
    source: Option<Identity>,
    source_ip: IpAddr,
    host: String,
    method: String,
    path: String,
    port: u16,
    headers: Vec<(&'static str, &'static str)>,
    auth: Option<RequestAuth>,
}

fn facts() -> Facts {
    Facts {
        source: Some(Identity::new("cluster.local", "front", "web").unwrap()),
        source_ip: "10.244.1.5".parse().unwrap(),
        host: "web.shop.svc.cluster.local:80".into(),
        method: "GET".into(),
        path: "/api/items?x=1".into(),
        port: 80,
        headers: vec![],
        auth: None,
    }
}

impl Facts {
    fn matches(&self, p: &WaypointPolicy) -> bool {
        p.matches(&self.request())
    }

    fn request(&self) -> Request<'_> {
        Request {
            source: self.source.as_ref(),
            source_ip: self.source_ip,
            remote_ip: self.source_ip,
            destination_ip: "10.96.0.30".parse().unwrap(),
            destination_port: self.port,
            host: &self.host,
            method: &self.method,
            path: &self.path,
            headers: &self.headers,
            auth: self.auth.as_ref(),
        }
    }
}

fn with(f: impl FnOnce(&mut Facts)) -> Facts {
    let mut x = facts();
    f(&mut x);
    x
}

fn scope<'a>(service: Option<(&'a str, &'a str)>) -> Scope<'a> {
    Scope {
        root_namespace: ROOT,
        gateway_namespace: "shop",
        gateway_name: "wp",
        gateway_class: "mesh-waypoint",
        service,
    }
}

#[test]
fn selector_policies_are_not_the_waypoints() {
    assert_eq!(compile_in("shop", "rules: [{}]\n", &[]).unwrap(), None);
    assert_eq!(
        compile_in(
            "shop",
            "selector: {matchLabels: {app: web}}\nrules: [{}]\n",
            &[]
        )
        .unwrap(),
        None
    );
    let e = compile_in(
        "shop",
        &format!("{BIND}selector: {{matchLabels: {{app: web}}}}\n"),
        &[],
    )
    .unwrap_err();
    assert_eq!(e.field, "spec.selector");
}

#[test]
fn bindings_name_the_gateway_a_service_or_from_the_root_the_class() {
    let gw = compile_in(
        "shop",
        "targetRef: {kind: Gateway, group: gateway.networking.k8s.io, name: wp}\n",
        &[],
    )
    .unwrap()
    .unwrap();
    assert!(gw.applies(&scope(None)));
    assert!(gw.applies(&scope(Some(("shop", "api")))));
    let other_gw = compile_in(
        "shop",
        "targetRefs: [{kind: Gateway, group: gateway.networking.k8s.io, name: other}]\n",
        &[],
    )
    .unwrap()
    .unwrap();
    assert!(!other_gw.applies(&scope(None)));
    let svc = policy("");
    assert!(svc.applies(&scope(Some(("shop", "web")))));
    assert!(!svc.applies(&scope(Some(("shop", "api")))));
    assert!(!svc.applies(&scope(Some(("dev", "web")))));
    assert!(!svc.applies(&scope(None)));
    let class = compile_in(
        ROOT,
        "targetRefs: [{kind: GatewayClass, group: gateway.networking.k8s.io, name: mesh-waypoint}]\n",
        &[],
    )
    .unwrap()
    .unwrap();
    assert!(class.applies(&scope(None)));
    // A Gateway of the same name in the root namespace is another Gateway.
    let root_gw = compile_in(
        ROOT,
        "targetRefs: [{kind: Gateway, group: gateway.networking.k8s.io, name: wp}]\n",
        &[],
    )
    .unwrap()
    .unwrap();
    assert!(!root_gw.applies(&scope(None)));
    // A class bound outside the root namespace binds nothing.
    let elsewhere = compile_in(
        "shop",
        "targetRefs: [{kind: GatewayClass, group: gateway.networking.k8s.io, name: mesh-waypoint}]\n",
        &[],
    )
    .unwrap()
    .unwrap();
    assert!(!elsewhere.applies(&scope(None)));
    for (yaml, field) in [
        (
            "targetRefs: [{kind: Gateway, name: wp}]\n",
            "spec.targetRefs[0].group",
        ),
        (
            "targetRefs: [{kind: Service, group: apps, name: wp}]\n",
            "spec.targetRefs[0].group",
        ),
        (
            "targetRefs: [{kind: Pod, name: wp}]\n",
            "spec.targetRefs[0].kind",
        ),
        (
            "targetRefs: [{kind: Service, name: \"\"}]\n",
            "spec.targetRefs[0].name",
        ),
        (
            "targetRefs: [{kind: Service, name: web, namespace: dev}]\n",
            "spec.targetRefs[0].namespace",
        ),
        (
            "targetRef: {kind: Service, name: web, port: 80}\n",
            "spec.targetRef.port",
        ),
    ] {
        assert_eq!(
            compile_in("shop", yaml, &[]).unwrap_err().field,
            field,
            "{yaml}"
        );
    }
}

#[test]
fn hosts_match_case_insensitively_with_or_without_port() {
    let p = policy("rules: [{to: [{operation: {hosts: [Web.Shop.svc.cluster.local]}}]}]\n");
    assert!(facts().matches(&p));
    assert!(with(|f| f.host = "WEB.shop.svc.cluster.local".into()).matches(&p));
    assert!(!with(|f| f.host = "web.shop.svc.cluster.local:x".into()).matches(&p));
    assert!(!with(|f| f.host = "api.shop.svc.cluster.local".into()).matches(&p));
    let with_port = policy("rules: [{to: [{operation: {hosts: [\"web:8080\"]}}]}]\n");
    assert!(with(|f| f.host = "web:8080".into()).matches(&with_port));
    assert!(!with(|f| f.host = "web".into()).matches(&with_port));
    let suffix =
        policy("rules: [{to: [{operation: {hosts: [\"*.SHOP.svc.cluster.local:80\"]}}]}]\n");
    assert!(facts().matches(&suffix));
    let not = policy("rules: [{to: [{operation: {notHosts: [\"web*\"]}}]}]\n");
    assert!(!facts().matches(&not));
    assert!(with(|f| f.host = "api".into()).matches(&not));
}

#[test]
fn methods_and_not_methods() {
    let p = policy("rules: [{to: [{operation: {methods: [GET, HEAD]}}]}]\n");
    assert!(facts().matches(&p));
    assert!(!with(|f| f.method = "POST".into()).matches(&p));
    let not = policy("rules: [{to: [{operation: {notMethods: [DELETE]}}]}]\n");
    assert!(facts().matches(&not));
    assert!(!with(|f| f.method = "DELETE".into()).matches(&not));
}

#[test]
fn paths_match_without_the_query_exact_prefix_suffix_and_presence() {
    let exact = policy("rules: [{to: [{operation: {paths: [/api/items]}}]}]\n");
    assert!(facts().matches(&exact), "the query is not part of the path");
    assert!(!with(|f| f.path = "/api/items/1".into()).matches(&exact));
    let prefix = policy("rules: [{to: [{operation: {paths: [\"/api/*\"]}}]}]\n");
    assert!(with(|f| f.path = "/api/x/y".into()).matches(&prefix));
    assert!(!with(|f| f.path = "/apix".into()).matches(&prefix));
    let suffix = policy("rules: [{to: [{operation: {paths: [\"*.png\"]}}]}]\n");
    assert!(with(|f| f.path = "/a/b.png?x".into()).matches(&suffix));
    assert!(!facts().matches(&suffix));
    let any = policy("rules: [{to: [{operation: {paths: [\"*\"]}}]}]\n");
    assert!(facts().matches(&any));
    let not = policy("rules: [{to: [{operation: {notPaths: [\"/admin*\"]}}]}]\n");
    assert!(facts().matches(&not));
    assert!(!with(|f| f.path = "/admin/users".into()).matches(&not));
    // Dot segments cannot walk around a rule.
    assert!(!with(|f| f.path = "/public/../admin/users".into()).matches(&not));
}

#[test]
fn path_templates() {
    let p = policy("rules: [{to: [{operation: {paths: [\"/users/{*}/orders/{**}\"]}}]}]\n");
    assert!(with(|f| f.path = "/users/7/orders/a/b".into()).matches(&p));
    assert!(with(|f| f.path = "/users/7/orders".into()).matches(&p));
    assert!(!with(|f| f.path = "/users//orders/a".into()).matches(&p));
    assert!(!with(|f| f.path = "/users/7/8/orders".into()).matches(&p));
    let one = policy("rules: [{to: [{operation: {paths: [\"/users/{*}\"]}}]}]\n");
    assert!(with(|f| f.path = "/users/7".into()).matches(&one));
    assert!(!with(|f| f.path = "/users/7/x".into()).matches(&one));
    let e = compile_err("rules: [{to: [{operation: {paths: [\"/a/{**}/b\"]}}]}]\n");
    assert_eq!(e.field, "spec.rules[0].to[0].operation.paths[0]");
    let e = compile_err("rules: [{to: [{operation: {notPaths: [/x, \"/a{*}\"]}}]}]\n");
    assert_eq!(e.field, "spec.rules[0].to[0].operation.notPaths[1]");
}

#[test]
fn normalized_paths() {
    assert_eq!(normalized_path("/a/./b/../c?q=/..#f"), "/a/c");
    assert_eq!(normalized_path("/../../x"), "/x");
    assert_eq!(normalized_path("/a/b/.."), "/a/");
    assert_eq!(normalized_path("/"), "/");
    assert_eq!(normalized_path("/a//b"), "/a//b");
}

#[test]
fn ports_and_not_ports() {
    let p = policy("rules: [{to: [{operation: {ports: [\"80\"]}}]}]\n");
    assert!(facts().matches(&p));
    assert!(!with(|f| f.port = 8080).matches(&p));
    let not = policy("rules: [{to: [{operation: {notPorts: [\"80\"]}}]}]\n");
    assert!(!facts().matches(&not));
    assert_eq!(
        compile_err("rules: [{to: [{operation: {ports: [http]}}]}]\n").field,
        "spec.rules[0].to[0].operation.ports"
    );
}

#[test]
fn principals_and_namespaces() {
    let p = policy("rules: [{from: [{source: {principals: [cluster.local/ns/front/sa/web]}}]}]\n");
    assert!(facts().matches(&p));
    assert!(
        !with(|f| f.source = Some(Identity::new("cluster.local", "front", "x").unwrap()))
            .matches(&p)
    );
    assert!(!with(|f| f.source = None).matches(&p));
    let spiffe = policy(
        "rules: [{from: [{source: {principals: [\"spiffe://cluster.local/ns/front/*\"]}}]}]\n",
    );
    assert!(facts().matches(&spiffe));
    let not = policy("rules: [{from: [{source: {notPrincipals: [\"*/sa/web\"]}}]}]\n");
    assert!(!facts().matches(&not));
    let ns = policy("rules: [{from: [{source: {namespaces: [front]}}]}]\n");
    assert!(facts().matches(&ns));
    assert!(!with(|f| f.source = None).matches(&ns));
    let not_ns = policy("rules: [{from: [{source: {notNamespaces: [\"fr*\"]}}]}]\n");
    assert!(!facts().matches(&not_ns));
}

#[test]
fn ip_blocks_and_remote_ip_blocks() {
    let p = policy(
        "rules: [{from: [{source: {ipBlocks: [10.244.0.0/16], notIpBlocks: [10.244.1.5]}}]}]\n",
    );
    assert!(!facts().matches(&p));
    assert!(with(|f| f.source_ip = "10.244.2.1".parse().unwrap()).matches(&p));
    let remote = policy("rules: [{from: [{source: {remoteIpBlocks: [10.244.1.0/24]}}]}]\n");
    assert!(facts().matches(&remote));
    let not_remote = policy("rules: [{from: [{source: {notRemoteIpBlocks: [10.244.1.0/24]}}]}]\n");
    assert!(!facts().matches(&not_remote));
    assert_eq!(
        compile_err("rules: [{from: [{source: {remoteIpBlocks: [nope]}}]}]\n").field,
        "spec.rules[0].from[0].source.remoteIpBlocks"
    );
}

fn auth() -> RequestAuth {
    let Value::Object(claims) = json!({
        "iss": "https://issuer",
        "groups": ["dev", "ops"],
        "org": {"team": "payments"},
    }) else {
        unreachable!()
    };
    RequestAuth {
        principal: "https://issuer/alice".into(),
        audiences: vec!["shop".into(), "web".into()],
        presenter: Some("cli".into()),
        claims,
    }
}

#[test]
fn request_principals_need_a_verified_token() {
    let any = policy("rules: [{from: [{source: {requestPrincipals: [\"*\"]}}]}]\n");
    assert!(!facts().matches(&any), "no token, no principal");
    assert!(with(|f| f.auth = Some(auth())).matches(&any));
    let alice =
        policy("rules: [{from: [{source: {requestPrincipals: [https://issuer/alice]}}]}]\n");
    assert!(with(|f| f.auth = Some(auth())).matches(&alice));
    let not = policy("rules: [{from: [{source: {notRequestPrincipals: [\"*\"]}}]}]\n");
    assert!(facts().matches(&not), "DENY of requests without a token");
    assert!(!with(|f| f.auth = Some(auth())).matches(&not));
}

fn when(key: &str, values: &str) -> WaypointPolicy {
    policy(&format!(
        "rules: [{{when: [{{key: \"{key}\", {values}}}]}}]\n"
    ))
}

#[test]
fn when_request_headers() {
    let p = when("request.headers[X-User]", "values: [\"admin*\"]");
    assert!(!facts().matches(&p), "an absent header matches no value");
    assert!(with(|f| f.headers = vec![("x-user", "admin-1")]).matches(&p));
    assert!(!with(|f| f.headers = vec![("x-user", "bob")]).matches(&p));
    let not = when("request.headers[x-user]", "notValues: [bob]");
    assert!(
        facts().matches(&not),
        "an absent header is none of the values"
    );
    assert!(!with(|f| f.headers = vec![("X-User", "bob")]).matches(&not));
    let joined = when("request.headers[x-a]", "values: [\"1,2\"]");
    assert!(with(|f| f.headers = vec![("x-a", "1"), ("x-a", "2")]).matches(&joined));
    for bad in [
        "request.headers",
        "request.headers[]",
        "request.headers[a][b]",
    ] {
        let e = compile_err(&format!(
            "rules: [{{when: [{{key: \"{bad}\", values: [x]}}]}}]\n"
        ));
        assert_eq!(e.field, "spec.rules[0].when[0].key", "{bad}");
    }
}

#[test]
fn when_connection_keys() {
    let ip = when("source.ip", "values: [10.244.1.0/24]");
    assert!(facts().matches(&ip));
    let remote = when("remote.ip", "notValues: [10.244.1.5]");
    assert!(!facts().matches(&remote));
    let ns = when("source.namespace", "values: [front]");
    assert!(facts().matches(&ns));
    let principal = when(
        "source.principal",
        "values: [cluster.local/ns/front/sa/web]",
    );
    assert!(facts().matches(&principal));
    let dst = when("destination.ip", "values: [10.96.0.0/16]");
    assert!(facts().matches(&dst));
    let port = when("destination.port", "values: [\"80\"]");
    assert!(facts().matches(&port));
    assert!(!with(|f| f.port = 81).matches(&port));
    assert_eq!(
        compile_err("rules: [{when: [{key: destination.port, values: [x]}]}]\n").field,
        "spec.rules[0].when[0].values"
    );
    assert_eq!(
        compile_err("rules: [{when: [{key: source.ip}]}]\n").field,
        "spec.rules[0].when[0]"
    );
}

#[test]
fn when_request_auth_keys() {
    let authed = with(|f| f.auth = Some(auth()));
    let principal = when("request.auth.principal", "values: [\"https://issuer/*\"]");
    assert!(authed.matches(&principal) && !facts().matches(&principal));
    let aud = when("request.auth.audiences", "values: [web]");
    assert!(authed.matches(&aud) && !facts().matches(&aud));
    let presenter = when("request.auth.presenter", "values: [cli]");
    assert!(authed.matches(&presenter) && !facts().matches(&presenter));
    let group = when("request.auth.claims[groups]", "values: [ops]");
    assert!(authed.matches(&group) && !facts().matches(&group));
    let nested = when("request.auth.claims[org][team]", "values: [pay*]");
    assert!(authed.matches(&nested));
    let not_nested = when("request.auth.claims[org][team]", "notValues: [payments]");
    assert!(!authed.matches(&not_nested));
    let e = compile_err("rules: [{when: [{key: \"request.auth.claims\", values: [x]}]}]\n");
    assert_eq!(e.field, "spec.rules[0].when[0].key");
}

#[test]
fn an_unknown_key_refuses_the_policy_naming_the_field() {
    let e = compile_err(
        "rules: [{to: [{operation: {methods: [GET]}}], when: [{key: request.regex, values: [x]}]}]\n",
    );
    assert_eq!(e.field, "spec.rules[0].when[0].key");
    assert!(e.problem.contains("request.regex"), "{e}");
}

#[test]
fn rules_or_entries_and_fields_and() {
    let p = policy(
        "rules:\n- from: [{source: {namespaces: [front]}}]\n  to: [{operation: {methods: [GET], paths: [/api/items]}}, {operation: {methods: [POST]}}]\n",
    );
    assert!(facts().matches(&p));
    assert!(
        with(|f| {
            f.method = "POST".into();
            f.path = "/other".into();
        })
        .matches(&p)
    );
    assert!(!with(|f| f.path = "/other".into()).matches(&p));
    assert!(!policy("rules: []\n").matches(&facts().request()));
    assert!(policy("rules: [{}]\n").matches(&facts().request()));
}

#[test]
fn custom_then_deny_then_allow_and_audit_only_reports() {
    let ps = [
        policy(
            "action: CUSTOM\nprovider: {name: ext}\nrules: [{to: [{operation: {paths: [\"/api/*\"]}}]}]\n",
        ),
        policy("action: AUDIT\nrules: [{}]\n"),
        policy("action: ALLOW\nrules: [{to: [{operation: {methods: [GET]}}]}]\n"),
    ];
    let f = facts();
    let e = evaluate(ps.iter(), &f.request());
    assert_eq!(
        e.custom,
        [Custom {
            policy: "shop/p".into(),
            provider: "ext".into()
        }]
    );
    assert_eq!(e.audited, ["shop/p"]);
    assert!(e.enforced.allowed());
    let post = with(|f| f.method = "POST".into());
    let e = evaluate(ps.iter(), &post.request());
    assert_eq!(e.enforced, Verdict::Deny { policy: None });
    // A DENY wins over an ALLOW.
    let mut deny = policy("action: DENY\nrules: [{to: [{operation: {paths: [/api/items]}}]}]\n");
    deny.name = "shop/deny".into();
    let all = [ps[2].clone(), deny];
    assert_eq!(
        evaluate(all.iter(), &f.request()).enforced,
        Verdict::Deny {
            policy: Some("shop/deny".into())
        }
    );
    // No policy: allowed, nothing to ask.
    let none: [WaypointPolicy; 0] = [];
    let e = evaluate(none.iter(), &f.request());
    assert_eq!(e.enforced, Verdict::Allow { policy: None });
    assert!(e.custom.is_empty() && e.dry_run.is_none());
}

#[test]
fn custom_names_its_provider_and_only_custom_does() {
    assert_eq!(
        compile_err("action: CUSTOM\nrules: [{}]\n").field,
        "spec.provider"
    );
    assert_eq!(
        compile_err("action: CUSTOM\nprovider: {}\nrules: [{}]\n").field,
        "spec.provider.name"
    );
    assert_eq!(
        compile_err("action: ALLOW\nprovider: {name: x}\nrules: [{}]\n").field,
        "spec.provider"
    );
}

#[test]
fn dry_run_is_reported_not_enforced() {
    for annotation in DRY_RUN_ANNOTATIONS {
        let p = compile_in(
            "shop",
            &format!("{BIND}action: DENY\nrules: [{{}}]\n"),
            &[(annotation, "true")],
        )
        .unwrap()
        .unwrap();
        assert!(p.dry_run);
        let f = facts();
        let e = evaluate([p].iter(), &f.request());
        assert_eq!(e.enforced, Verdict::Allow { policy: None });
        assert_eq!(
            e.dry_run,
            Some(Verdict::Deny {
                policy: Some("shop/p".into())
            })
        );
    }
    let custom = compile_in(
        "shop",
        &format!("{BIND}action: CUSTOM\nprovider: {{name: ext}}\nrules: [{{}}]\n"),
        &[("istio.io/dry-run", "true")],
    )
    .unwrap()
    .unwrap();
    let f = facts();
    let e = evaluate([custom].iter(), &f.request());
    assert!(e.custom.is_empty());
    assert_eq!(e.dry_run_custom.len(), 1);
}

#[test]
fn what_cannot_be_compiled_denies_in_its_scope() {
    let no = BTreeMap::new();
    let bad = json!({"targetRefs": [{"kind": "Service", "name": "web"}], "rules": [{"when": [{"key": "nope", "values": ["x"]}]}]});
    let l = load("shop", "bad", &no, Some(&bad));
    assert!(
        matches!(l.failure, Some(Failure::Invalid(ref e)) if e.field == "spec.rules[0].when[0].key")
    );
    let p = l.policy.unwrap();
    assert!(!p.compiled && p.action == Action::Deny);
    assert!(p.applies(&scope(Some(("shop", "web")))));
    assert!(!p.applies(&scope(Some(("shop", "api")))));
    let f = facts();
    assert_eq!(
        evaluate([p].iter(), &f.request()).enforced,
        Verdict::Deny {
            policy: Some("shop/bad".into())
        }
    );
    // Unreadable, targets included: the whole namespace.
    let unreadable = json!({"targetRefs": [{"kind": "Service", "name": "web"}], "rules": [{"from": [{"source": {"principal": ["x"]}}]}]});
    let l = load("shop", "u", &no, Some(&unreadable));
    assert!(matches!(l.failure, Some(Failure::Unreadable(_))));
    let p = l.policy.unwrap();
    assert!(p.applies(&scope(None)) && p.applies(&scope(Some(("shop", "api")))));
    assert!(!p.applies(&Scope {
        gateway_namespace: "other",
        ..scope(Some(("dev", "web")))
    }));
    // A dry-run annotation does not make a broken policy log only.
    let dry: BTreeMap<String, String> = [("istio.io/dry-run".to_owned(), "true".to_owned())].into();
    assert!(
        !load("shop", "bad", &dry, Some(&bad))
            .policy
            .unwrap()
            .dry_run
    );
    // Not the waypoint's: nothing, whether readable or not.
    let selector = json!({"selector": {"matchLabels": {"app": "x"}}, "rules": [{"bogus": 1}]});
    let l = load("shop", "s", &no, Some(&selector));
    assert!(l.policy.is_none() && l.failure.is_none());
    let ok = json!({"targetRef": {"kind": "Gateway", "group": GATEWAY_GROUP, "name": "wp"}, "action": "DENY", "rules": [{}]});
    let l = load("shop", "ok", &no, Some(&ok));
    assert!(l.failure.is_none() && l.policy.unwrap().compiled);
}

#[test]
fn tcp_streams_meet_the_l4_part_of_rules_and_http_fields_never_widen() {
    let tcp = with(|f| {
        f.method = String::new();
        f.path = String::new();
        f.host = String::new();
    });
    let r = tcp.request();
    // An ALLOW rule with an HTTP field never matches a TCP stream.
    let allow_get = policy("rules: [{to: [{operation: {methods: [GET]}}]}]\n");
    assert!(!allow_get.matches_tcp(&r));
    let allow_port = policy("rules: [{to: [{operation: {ports: [\"80\"]}}]}]\n");
    assert!(allow_port.matches_tcp(&r));
    // A DENY rule is applied without its HTTP fields: it denies more.
    let deny_front_post = policy(
        "action: DENY\nrules: [{from: [{source: {namespaces: [front]}}], to: [{operation: {methods: [POST]}}]}]\n",
    );
    assert!(deny_front_post.matches_tcp(&r));
    assert!(!deny_front_post.matches(&r), "over HTTP the method counts");
    let deny_other_ns = policy(
        "action: DENY\nrules: [{from: [{source: {namespaces: [back]}}], when: [{key: \"request.headers[x]\", values: [y]}]}]\n",
    );
    assert!(
        !deny_other_ns.matches_tcp(&r),
        "its L4 part still has to match"
    );
    let e = evaluate_tcp([allow_get.clone()].iter(), &r);
    assert_eq!(e.enforced, Verdict::Deny { policy: None });
    let e = evaluate_tcp([allow_get, allow_port].iter(), &r);
    assert!(e.enforced.allowed());
    let custom_http = policy(
        "action: CUSTOM\nprovider: {name: ext}\nrules: [{to: [{operation: {paths: [\"/api/*\"]}}]}]\n",
    );
    let custom_all = policy("action: CUSTOM\nprovider: {name: ext}\nrules: [{}]\n");
    assert!(evaluate_tcp([custom_http].iter(), &r).custom.is_empty());
    assert_eq!(evaluate_tcp([custom_all].iter(), &r).custom.len(), 1);
}
