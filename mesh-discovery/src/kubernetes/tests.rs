//! The Kubernetes source against kube's documented mock: a `tower_test`
//! service behind `kube::Client`, answering lists and watches as the API
//! server would. A request the script has no answer for is held open, as
//! an idle watch is.
use std::{
    collections::{HashMap, VecDeque},
    sync::{Arc, Mutex},
    time::Duration,
};

use http::{Request, Response, StatusCode};
use kube::client::Body;
use mesh_policy::sync::PolicyKind;
use serde_json::{Value, json};

use super::*;
use crate::{Published, view::ViewSettings};

type Handle = tower_test::mock::Handle<Request<Body>, Response<Body>>;

const PODS: &str = "/api/v1/pods";
const SERVICES: &str = "/api/v1/services";
const SLICES: &str = "/apis/discovery.k8s.io/v1/endpointslices";
const NAMESPACES: &str = "/api/v1/namespaces";
const AUTHZ: &str = "/apis/security.istio.io/v1/authorizationpolicies";
const PEER: &str = "/apis/security.istio.io/v1/peerauthentications";
const HTTP_ROUTES: &str = "/apis/gateway.networking.k8s.io/v1/httproutes";

/// Scripted answers per (path, is_watch); unscripted kinds list empty,
/// unless their lists are held (never answered) or always fail.
#[derive(Default)]
struct Script {
    answers: HashMap<(&'static str, bool), VecDeque<(StatusCode, String)>>,
    held_lists: Vec<&'static str>,
    failing_lists: HashMap<&'static str, (StatusCode, String)>,
    seen: Vec<String>,
}

impl Script {
    fn list(&mut self, path: &'static str, status: StatusCode, body: Value) -> &mut Self {
        self.answers
            .entry((path, false))
            .or_default()
            .push_back((status, body.to_string()));
        self
    }

    fn hold_list(&mut self, path: &'static str) -> &mut Self {
        self.held_lists.push(path);
        self
    }

    fn always_fail_list(
        &mut self,
        path: &'static str,
        status: StatusCode,
        body: Value,
    ) -> &mut Self {
        self.failing_lists.insert(path, (status, body.to_string()));
        self
    }

    fn watch(&mut self, path: &'static str, events: &[Value]) -> &mut Self {
        let body = events
            .iter()
            .map(|e| e.to_string() + "\n")
            .collect::<String>();
        self.answers
            .entry((path, true))
            .or_default()
            .push_back((StatusCode::OK, body));
        self
    }
}

fn list_of(kind: &str, api_version: &str, rv: &str, items: Vec<Value>) -> Value {
    json!({"apiVersion": api_version, "kind": format!("{kind}List"),
           "metadata": {"resourceVersion": rv}, "items": items})
}

fn event(kind: &str, object: Value) -> Value {
    json!({"type": kind, "object": object})
}

fn pod(name: &str, rv: &str, ip: &str, labels: Value) -> Value {
    json!({"apiVersion": "v1", "kind": "Pod",
           "metadata": {"name": name, "namespace": "shop", "uid": format!("uid-{name}"),
                        "resourceVersion": rv, "labels": labels},
           "spec": {"nodeName": "node-1", "serviceAccountName": name, "containers": []},
           "status": {"podIPs": [{"ip": ip}], "conditions": [{"type": "Ready", "status": "True"}]}})
}

/// Runs the source against the script until `until` holds for a published
/// view (bounded), and returns that view and the requests seen.
async fn run_until(script: Script, until: impl Fn(&Published) -> bool) -> (Published, Vec<String>) {
    let script = Arc::new(Mutex::new(script));
    let (service, mut handle): (_, Handle) = tower_test::mock::pair();
    let server_script = script.clone();
    let server = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Some((request, send)) = handle.next_request().await {
            let path = request.uri().path().to_owned();
            let query = request.uri().query().unwrap_or_default().to_owned();
            let is_watch = query.contains("watch=true");
            let mut s = server_script.lock().unwrap();
            s.seen
                .push(format!("{path}{}", if is_watch { " watch" } else { "" }));
            let key = [PODS, SERVICES, SLICES, NAMESPACES, AUTHZ, PEER, HTTP_ROUTES]
                .into_iter()
                .find(|p| *p == path);
            let answer = key.and_then(|k| s.answers.get_mut(&(k, is_watch))?.pop_front());
            let failing = key.and_then(|k| s.failing_lists.get(k)).cloned();
            let hold = key.is_some_and(|k| s.held_lists.contains(&k));
            let answer = match (answer, is_watch) {
                (Some(a), _) => Some(a),
                (None, false) if failing.is_some() => failing,
                (None, false) if hold => None,
                (None, false) => Some((
                    StatusCode::OK,
                    list_of("Any", "v1", "1", vec![]).to_string(),
                )),
                (None, true) => None,
            };
            match answer {
                Some((status, body)) => send.send_response(
                    Response::builder()
                        .status(status)
                        .body(Body::from(body.into_bytes()))
                        .unwrap(),
                ),
                None => held.push(send),
            }
        }
    });
    let (publisher, mut rx) = Publisher::new(
        ViewSettings {
            trust_domain: "cluster.local".into(),
            root_namespace: "istio-system".into(),
            waypoint_class: "mesh-waypoint".into(),
            scope: crate::scope::Scope::Node,
        },
        Published {
            view: Arc::default(),
            synced: false,
        },
    );
    let source =
        tokio::spawn(KubernetesSource::new(Client::new(service, "default")).run(publisher));
    let found = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            if until(&rx.borrow_and_update()) {
                return rx.borrow().clone();
            }
            rx.changed().await.expect("source stopped");
        }
    })
    .await;
    source.abort();
    server.abort();
    let seen = script.lock().unwrap().seen.clone();
    match found {
        Ok(p) => (p, seen),
        Err(_) => panic!(
            "condition not reached; last view synced={} pods={:?}; requests: {seen:?}",
            rx.borrow().synced,
            rx.borrow()
                .view
                .workloads()
                .map(|w| w.name.clone())
                .collect::<Vec<_>>()
        ),
    }
}

fn names(p: &Published) -> Vec<String> {
    let mut n: Vec<_> = p.view.workloads().map(|w| w.name.clone()).collect();
    n.sort();
    n
}

#[tokio::test]
async fn initial_list_then_watch_events_and_deletions() {
    let mut s = Script::default();
    s.list(
        PODS,
        StatusCode::OK,
        list_of(
            "Pod",
            "v1",
            "1",
            vec![
                pod("a", "1", "10.0.0.1", json!({})),
                pod("b", "1", "10.0.0.2", json!({})),
            ],
        ),
    )
    .watch(
        PODS,
        &[
            event("ADDED", pod("c", "2", "10.0.0.3", json!({}))),
            event(
                "MODIFIED",
                pod(
                    "a",
                    "3",
                    "10.0.0.1",
                    json!({"mesh.io/dataplane-mode": "enabled"}),
                ),
            ),
            event("DELETED", pod("b", "4", "10.0.0.2", json!({}))),
        ],
    );
    let (p, seen) = run_until(s, |p| {
        p.synced
            && names(p) == ["a", "c"]
            && p.view
                .expected_identity("10.0.0.1".parse().unwrap())
                .is_some()
    })
    .await;
    assert!(
        p.view.workload("10.0.0.2".parse().unwrap()).is_none(),
        "deleted pod's IP is gone"
    );
    assert_eq!(
        p.view
            .expected_identity("10.0.0.1".parse().unwrap())
            .unwrap()
            .to_string(),
        "spiffe://cluster.local/ns/shop/sa/a"
    );
    assert!(
        p.view
            .expected_identity("10.0.0.3".parse().unwrap())
            .is_none(),
        "c is not enrolled"
    );
    assert_eq!(p.view.enrolled_on("node-1").count(), 1);
    assert!(seen.contains(&format!("{PODS} watch")), "{seen:?}");
}

#[tokio::test]
async fn gone_410_relists_and_drops_what_vanished_meanwhile() {
    let mut s = Script::default();
    s.list(
        PODS,
        StatusCode::OK,
        list_of("Pod", "v1", "1", vec![pod("a", "1", "10.0.0.1", json!({}))]),
    )
    .watch(
        PODS,
        &[event(
            "ERROR",
            json!({
            "apiVersion": "v1", "kind": "Status", "metadata": {}, "status": "Failure",
            "message": "too old resource version: 1 (5)", "reason": "Expired", "code": 410}),
        )],
    )
    .list(
        PODS,
        StatusCode::OK,
        list_of("Pod", "v1", "6", vec![pod("b", "6", "10.0.0.2", json!({}))]),
    );
    let (_, seen) = run_until(s, |p| names(p) == ["b"]).await;
    let lists = seen.iter().filter(|r| *r == PODS).count();
    assert_eq!(lists, 2, "one list, then a re-list after 410: {seen:?}");
}

#[tokio::test]
async fn api_errors_are_retried_and_the_source_recovers() {
    let mut s = Script::default();
    let failure = json!({"apiVersion": "v1", "kind": "Status", "metadata": {}, "status": "Failure",
                         "message": "etcdserver: leader changed", "reason": "InternalError", "code": 500});
    s.list(PODS, StatusCode::INTERNAL_SERVER_ERROR, failure)
        .list(
            PODS,
            StatusCode::OK,
            list_of("Pod", "v1", "2", vec![pod("a", "2", "10.0.0.1", json!({}))]),
        );
    let (p, seen) = run_until(s, |p| p.synced).await;
    assert_eq!(names(&p), ["a"]);
    assert_eq!(seen.iter().filter(|r| *r == PODS).count(), 2, "{seen:?}");
}

/// A missing policy CRD does not hold up the rest of discovery, but the
/// policies are not enforceable: the cause is recorded in the view.
#[tokio::test]
async fn missing_policy_crds_leave_policies_unsynced_with_the_cause() {
    let mut s = Script::default();
    let not_found = json!({"apiVersion": "v1", "kind": "Status", "metadata": {}, "status": "Failure",
                           "message": "the server could not find the requested resource", "reason": "NotFound", "code": 404});
    s.always_fail_list(AUTHZ, StatusCode::NOT_FOUND, not_found.clone())
        .always_fail_list(PEER, StatusCode::NOT_FOUND, not_found);
    let (p, _) = run_until(s, |p| {
        p.synced
            && matches!(
                p.view.policies.sync.peer_authentication,
                KindSync::Failing(_)
            )
    })
    .await;
    assert!(p.view.policies.authorization.is_empty());
    let cause = p.view.policies.sync.check().unwrap_err().to_string();
    assert!(
        cause.starts_with("AuthorizationPolicy cannot be listed")
            && cause.contains("CRD installed"),
        "{cause}"
    );
}

fn status(code: u16, reason: &str, message: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Status", "metadata": {}, "status": "Failure",
           "message": message, "reason": reason, "code": code})
}

#[tokio::test]
async fn pods_listed_before_policies_are_not_policy_synced() {
    let mut s = Script::default();
    s.list(
        PODS,
        StatusCode::OK,
        list_of("Pod", "v1", "1", vec![pod("a", "1", "10.0.0.1", json!({}))]),
    )
    .hold_list(AUTHZ);
    let (p, _) = run_until(s, |p| {
        names(p) == ["a"] && p.view.policies.sync.peer_authentication == KindSync::Listed
    })
    .await;
    assert!(!p.synced);
    assert_eq!(
        p.view.policies.sync.check(),
        Err(mesh_policy::NotSynced::Listing {
            kind: PolicyKind::AuthorizationPolicy
        })
    );
}

#[tokio::test]
async fn forbidden_authorization_policies_never_sync_and_the_cause_is_kept() {
    let mut s = Script::default();
    s.list(
        PODS,
        StatusCode::OK,
        list_of("Pod", "v1", "1", vec![pod("a", "1", "10.0.0.1", json!({}))]),
    )
    .always_fail_list(
        AUTHZ,
        StatusCode::FORBIDDEN,
        status(
            403,
            "Forbidden",
            "authorizationpolicies.security.istio.io is forbidden: User \"system:serviceaccount:mesh:agent\" cannot list resource",
        ),
    );
    let (p, seen) = run_until(s, |p| {
        names(p) == ["a"]
            && p.view.policies.sync.peer_authentication == KindSync::Listed
            && matches!(p.view.policies.sync.authorization, KindSync::Failing(_))
    })
    .await;
    assert!(!p.synced, "a forbidden kind is not absent");
    let cause = p.view.policies.sync.check().unwrap_err();
    let mesh_policy::NotSynced::Failing { kind, error } = &cause else {
        panic!("{cause:?}")
    };
    assert_eq!(*kind, PolicyKind::AuthorizationPolicy);
    assert!(error.contains("forbidden"), "{error}");
    assert!(seen.iter().any(|r| r == AUTHZ), "{seen:?}");
}

fn authz(name: &str, rv: &str, spec: Value) -> Value {
    json!({"apiVersion": "security.istio.io/v1", "kind": "AuthorizationPolicy",
           "metadata": {"name": name, "namespace": "shop", "resourceVersion": rv},
           "spec": spec,
           // istiod writes status; it never affects a decision.
           "status": {"validationMessages": [{"type": {"code": "IST0000"}}]}})
}

#[tokio::test]
async fn an_unreadable_policy_denies_in_its_scope_and_the_others_apply() {
    let mut s = Script::default();
    s.list(AUTHZ, StatusCode::OK, list_of("AuthorizationPolicy", "security.istio.io/v1", "1", vec![
        authz("allow-front", "1", json!({"selector": {"matchLabels": {"app": "web"}},
            "rules": [{"from": [{"source": {"principals": ["cluster.local/ns/shop/sa/front"]}}]}]})),
        authz("future", "1", json!({"selector": {"matchLabels": {"app": "db"}},
            "rules": [{"from": [{"source": {"principals": ["x"], "serviceAccounts": ["y"]}}]}]})),
    ]))
    .watch(AUTHZ, &[event("ADDED", authz("deny-new", "2", json!({"action": "DENY",
        "selector": {"matchLabels": {"app": "web"}},
        "rules": [{"from": [{"source": {"serviceAccounts": ["front"]}}], "to": [{"operation": {"ports": ["9090"]}}]}]})))]);
    let (p, _) = run_until(s, |p| p.view.policies.authorization.len() == 3).await;
    assert!(p.view.policies.sync.is_synced());
    let set = &p.view.policies;
    let front = mesh_identity::Identity::new("cluster.local", "shop", "front").unwrap();
    let decide = |app: &str, port: u16| {
        let labels = [("app".to_owned(), app.to_owned())].into();
        set.authorize(
            mesh_policy::Target {
                namespace: "shop",
                labels: &labels,
            },
            &mesh_policy::Connection {
                source: Some(&front),
                source_ip: "10.0.0.9".parse().unwrap(),
                destination_ip: "10.0.0.1".parse().unwrap(),
                destination_port: port,
            },
        )
        .enforced
    };
    // The good policy applies; the unreadable one denies its selector only.
    assert!(decide("web", 8080).allowed());
    assert_eq!(
        decide("db", 5432),
        mesh_policy::Verdict::Deny {
            policy: Some("shop/future".into())
        }
    );
    assert!(decide("cache", 6379).allowed(), "outside both scopes");
    // The live DENY with a field this agent does not know exists, and
    // denies at least what it says (every peer on its port).
    assert_eq!(
        decide("web", 9090),
        mesh_policy::Verdict::Deny {
            policy: Some("shop/deny-new".into())
        }
    );
}

#[tokio::test]
async fn services_endpoints_and_policies_arrive_in_the_view() {
    let mut s = Script::default();
    s.list(PODS, StatusCode::OK, list_of("Pod", "v1", "1", vec![
        pod("web-1", "1", "10.0.0.1", json!({"app": "web"})),
        pod("web-2", "1", "10.0.0.2", json!({"app": "web"})),
    ]))
    .list(SERVICES, StatusCode::OK, list_of("Service", "v1", "1", vec![json!({
        "metadata": {"name": "web", "namespace": "shop", "resourceVersion": "1"},
        "spec": {"clusterIP": "10.96.0.10", "clusterIPs": ["10.96.0.10"], "selector": {"app": "web"},
                 "ports": [{"name": "http", "port": 80, "targetPort": "http-alt", "protocol": "TCP"}]}})]))
    .list(SLICES, StatusCode::OK, list_of("EndpointSlice", "discovery.k8s.io/v1", "1", vec![json!({
        "metadata": {"name": "web-abc", "namespace": "shop", "resourceVersion": "1",
                     "labels": {"kubernetes.io/service-name": "web"}},
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
        "endpoints": [{"addresses": ["10.0.0.1"], "conditions": {"ready": true}},
                      {"addresses": ["10.0.0.2"], "conditions": {"ready": false}}]})]))
    .list(NAMESPACES, StatusCode::OK, list_of("Namespace", "v1", "1", vec![json!({
        "metadata": {"name": "shop", "resourceVersion": "1", "labels": {"mesh.io/dataplane-mode": "enabled"}}})]))
    .list(AUTHZ, StatusCode::OK, list_of("AuthorizationPolicy", "security.istio.io/v1", "1", vec![
        json!({"apiVersion": "security.istio.io/v1", "kind": "AuthorizationPolicy",
               "metadata": {"name": "allow-front", "namespace": "shop", "resourceVersion": "1"},
               "spec": {"action": "ALLOW", "rules": [{"from": [{"source": {"principals": ["cluster.local/ns/shop/sa/front"]}}]}]}}),
        json!({"apiVersion": "security.istio.io/v1", "kind": "AuthorizationPolicy",
               "metadata": {"name": "broken", "namespace": "shop", "resourceVersion": "1"},
               "spec": {"rules": [{"from": [{"source": {"ipBlocks": ["not-a-cidr"]}}]}]}}),
    ]));
    let (p, _) = run_until(s, |p| p.synced && p.view.sizes.services == 1).await;
    let route = p
        .view
        .service_at("10.96.0.10".parse().unwrap())
        .expect("VIP routed");
    assert_eq!(route.service.key(), "shop/web");
    // Only the ready endpoint, at the slice's resolved target port.
    assert_eq!(
        route.port(80).unwrap().endpoints,
        vec!["10.0.0.1:8080".parse().unwrap()]
    );
    assert_eq!(
        p.view.enrolled_on("node-1").count(),
        2,
        "namespace label enrolls"
    );
    let names: Vec<_> = p
        .view
        .policies
        .authorization
        .iter()
        .map(|a| (a.name.as_str(), a.action))
        .collect();
    assert!(
        names.contains(&("shop/allow-front", mesh_policy::model::Action::Allow)),
        "{names:?}"
    );
    // A policy that cannot be compiled fails closed.
    assert!(
        names.contains(&("shop/broken", mesh_policy::model::Action::Deny)),
        "{names:?}"
    );
}

#[tokio::test]
async fn an_unusable_object_counts_as_ignored_until_it_is_fixed_or_deleted() {
    // Labels over the agent's per-object bound: the pod is absent, and
    // counted, from the list and from a watch event alike.
    let huge = json!({"blob": "x".repeat(20_000)});
    let mut s = Script::default();
    s.list(
        PODS,
        StatusCode::OK,
        list_of(
            "Pod",
            "v1",
            "1",
            vec![
                pod("a", "1", "10.0.0.1", json!({})),
                pod("big", "1", "10.0.0.2", huge.clone()),
            ],
        ),
    )
    .watch(
        PODS,
        &[
            event("ADDED", pod("big2", "2", "10.0.0.3", huge)),
            // Fixed: usable again, no longer counted.
            event("MODIFIED", pod("big", "3", "10.0.0.2", json!({}))),
        ],
    );
    // After the list: `big` ignored. After the events: `big` fixed and
    // present, `big2` ignored in its place.
    let (p, _) = run_until(s, |p| p.synced && names(p) == ["a", "big"]).await;
    assert_eq!(
        p.view.sizes.ignored, 1,
        "big2 counts, the fixed big no longer"
    );
    assert!(
        p.view.workload("10.0.0.3".parse().unwrap()).is_none(),
        "the oversized pod is absent"
    );

    let mut s = Script::default();
    s.list(
        PODS,
        StatusCode::OK,
        list_of(
            "Pod",
            "v1",
            "1",
            vec![pod(
                "big",
                "1",
                "10.0.0.2",
                json!({"blob": "x".repeat(20_000)}),
            )],
        ),
    )
    .watch(
        PODS,
        &[event("DELETED", pod("big", "2", "10.0.0.2", json!({})))],
    );
    let (deleted, _) = run_until(s, |p| {
        p.synced && p.view.sizes.ignored == 0 && p.view.sizes.pods == 0
    })
    .await;
    assert!(names(&deleted).is_empty());
}

/// HTTPRoutes are listed and watched untyped and compiled into the
/// view's tables; one that does not compile is left out and counted.
#[tokio::test]
async fn http_routes_reach_the_view_and_a_bad_one_is_ignored() {
    let service = json!({"apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "web", "namespace": "shop", "resourceVersion": "1"},
        "spec": {"clusterIP": "10.96.0.5", "ports": [{"name": "http", "port": 80, "targetPort": 8080}]}});
    let route = |name: &str, path_type: &str, value: &str| {
        json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
            "metadata": {"name": name, "namespace": "shop", "resourceVersion": "1",
                         "creationTimestamp": "2026-01-02T03:04:05Z"},
            "spec": {"parentRefs": [{"group": "", "kind": "Service", "name": "web", "port": 80}],
                     "rules": [{"matches": [{"path": {"type": path_type, "value": value}}],
                                "backendRefs": [{"name": "web", "port": 80}]}]}})
    };
    let mut s = Script::default();
    s.list(
        SERVICES,
        StatusCode::OK,
        list_of("Service", "v1", "1", vec![service]),
    )
    .list(
        HTTP_ROUTES,
        StatusCode::OK,
        list_of(
            "HTTPRoute",
            "gateway.networking.k8s.io/v1",
            "1",
            vec![
                route("good", "PathPrefix", "/api"),
                route("bad", "RegularExpression", "("),
            ],
        ),
    );
    let (published, seen) = run_until(s, |p| p.synced && p.view.routes.ports() > 0).await;
    assert!(seen.iter().any(|r| r == HTTP_ROUTES), "{seen:?}");
    let port = published.view.routes.port("shop/web", 80).unwrap();
    let table = port.for_client(Some("shop")).unwrap();
    let names: Vec<String> = table.routes().iter().map(|r| r.id.to_string()).collect();
    assert_eq!(names, ["shop/good"]);
    assert_eq!(published.view.sizes.routes, 1);
    assert_eq!(published.view.sizes.ignored, 1);
}
