//! The route status controller against kube's mock API server: the status
//! it writes for a route, what it keeps of other controllers, when it
//! writes nothing; the facts it keeps of Services and GRPCRoutes, and an
//! HTTPRoute written again when a GRPCRoute takes or frees its port; how
//! it tells a missing CRD.
use std::{
    sync::{
        Arc, RwLock,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use http::StatusCode;
use k8s_openapi::api::core::v1::Service;
use kube::{
    Client,
    api::DynamicObject,
    runtime::{controller::Action, watcher},
};
use mesh_route::{
    compile::RouteKind,
    status::{self, Cluster, Port},
};
use serde_json::{Value, json};
use tokio::sync::watch;

use super::{
    facts::{
        self, Change, Relist, Signals, apply_grpc_route, apply_service, grpc_route_facts,
        service_facts,
    },
    kinds::{self, Served},
    reconcile::{Context, FIELD_MANAGER, reconcile_route, retry},
};
use crate::{
    api_mock::{self, Seen},
    status_controller::{CONFLICT_RETRY, RETRY},
};

const ME: &str = "mesh.io/waypoint-controller";
const HTTP_STATUS: &str = "/apis/gateway.networking.k8s.io/v1/namespaces/shop/httproutes/r/status";
const GRPC_STATUS: &str = "/apis/gateway.networking.k8s.io/v1/namespaces/shop/grpcroutes/r/status";

fn svc(ports: &[u16]) -> status::Service {
    status::Service {
        ports: ports
            .iter()
            .map(|p| Port {
                number: *p,
                name: None,
            })
            .collect(),
        cluster_ip: true,
    }
}

/// shop/web (80), shop/api (8080), pay/ledger (9000).
fn cluster() -> Cluster {
    let mut c = Cluster::default();
    c.set_service("shop", "web", svc(&[80]));
    c.set_service("shop", "api", svc(&[8080]));
    c.set_service("pay", "ledger", svc(&[9000]));
    c
}

fn context(client: Client, kind: RouteKind, cluster: Cluster) -> Arc<Context> {
    Arc::new(Context {
        client,
        controller_name: ME.into(),
        kind,
        resource: kinds::route_resource(kind),
        cluster: Arc::new(RwLock::new(cluster)),
    })
}

/// A route shop/r of `kind` with `spec` and `status`, as the API serves it.
fn route(kind: &str, spec: Value, status: Value) -> Arc<DynamicObject> {
    let mut o = json!({
        "apiVersion": "gateway.networking.k8s.io/v1", "kind": kind,
        "metadata": {"name": "r", "namespace": "shop", "generation": 3,
                     "resourceVersion": "42", "creationTimestamp": "2025-01-01T00:00:00Z"},
        "spec": spec,
    });
    if !status.is_null() {
        o["status"] = status;
    }
    Arc::new(serde_json::from_value(o).unwrap())
}

fn http_route(spec: Value) -> Arc<DynamicObject> {
    route("HTTPRoute", spec, Value::Null)
}

/// A route to web:80 sending to `backends`.
fn to_web(backends: Value) -> Value {
    json!({
        "parentRefs": [{"group": "", "kind": "Service", "name": "web", "port": 80}],
        "rules": [{"backendRefs": backends}],
    })
}

/// The API server: a status write answers with what was written.
fn api(r: &Seen) -> (StatusCode, Value) {
    assert_eq!(r.method, "PATCH", "{}", r.path);
    (StatusCode::OK, r.body.clone())
}

/// Reconciles `route` against `cluster` and returns the requests made.
async fn reconcile(kind: RouteKind, route: Arc<DynamicObject>, cluster: Cluster) -> Vec<Seen> {
    let (client, seen) = api_mock::client(api);
    let action = reconcile_route(route, context(client, kind, cluster))
        .await
        .unwrap();
    assert_eq!(action, Action::await_change());
    seen.lock().unwrap().clone()
}

/// The one status write among `seen`, checked for its form: a merge patch
/// of the status subresource, conditional on the version read.
fn the_write<'a>(seen: &'a [Seen], path: &str) -> &'a Value {
    assert_eq!(seen.len(), 1, "{seen:#?}");
    let (p, query) = seen[0].path.split_once('?').unwrap();
    assert_eq!(p, path);
    assert!(
        query.contains(&format!("fieldManager={FIELD_MANAGER}")),
        "{query}"
    );
    assert_eq!(seen[0].body["metadata"]["resourceVersion"], "42");
    &seen[0].body["status"]["parents"]
}

/// (type, status, reason) of each condition of `entry`.
fn conditions(entry: &Value) -> Vec<(String, String, String)> {
    entry["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["type"].as_str().unwrap().to_owned(),
                c["status"].as_str().unwrap().to_owned(),
                c["reason"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

fn cond(t: &str, s: &str, r: &str) -> (String, String, String) {
    (t.into(), s.into(), r.into())
}

fn message<'a>(entry: &'a Value, type_: &str) -> &'a str {
    entry["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == type_)
        .unwrap()["message"]
        .as_str()
        .unwrap()
}

#[tokio::test]
async fn a_valid_route_is_accepted_with_its_refs_resolved() {
    let seen = reconcile(
        RouteKind::Http,
        http_route(to_web(json!([{"name": "api", "port": 8080}]))),
        cluster(),
    )
    .await;
    let parents = the_write(&seen, HTTP_STATUS);
    assert_eq!(parents.as_array().unwrap().len(), 1, "{parents}");
    let entry = &parents[0];
    assert_eq!(entry["controllerName"], ME);
    assert_eq!(
        entry["parentRef"],
        json!({"group": "", "kind": "Service", "name": "web", "port": 80})
    );
    assert_eq!(
        conditions(entry),
        [
            cond("Accepted", "True", "Accepted"),
            cond("ResolvedRefs", "True", "ResolvedRefs")
        ]
    );
    for c in entry["conditions"].as_array().unwrap() {
        assert_eq!(c["observedGeneration"], 3);
        // metav1.Time: RFC 3339 to the second.
        let t = c["lastTransitionTime"].as_str().unwrap();
        assert!(t.len() == 20 && t.ends_with('Z'), "{t}");
    }
}

#[tokio::test]
async fn a_route_to_a_missing_service_is_no_matching_parent() {
    let mut c = cluster();
    c.remove_service("shop", "web");
    let seen = reconcile(RouteKind::Http, http_route(to_web(json!([]))), c).await;
    let entry = &the_write(&seen, HTTP_STATUS)[0];
    assert_eq!(
        conditions(entry),
        [
            cond("Accepted", "False", "NoMatchingParent"),
            cond("ResolvedRefs", "True", "ResolvedRefs")
        ]
    );
    assert_eq!(message(entry, "Accepted"), "Service shop/web not found");
}

#[tokio::test]
async fn a_missing_backend_is_backend_not_found() {
    let seen = reconcile(
        RouteKind::Http,
        http_route(to_web(json!([{"name": "gone", "port": 8080}]))),
        cluster(),
    )
    .await;
    let entry = &the_write(&seen, HTTP_STATUS)[0];
    assert_eq!(
        conditions(entry),
        [
            cond("Accepted", "True", "Accepted"),
            cond("ResolvedRefs", "False", "BackendNotFound")
        ]
    );
    assert_eq!(
        message(entry, "ResolvedRefs"),
        "spec.rules[0].backendRefs[0]: Service shop/gone not found"
    );
}

#[tokio::test]
async fn a_cross_namespace_backend_needs_no_reference_grant() {
    let spec = to_web(json!([{"name": "ledger", "namespace": "pay", "port": 9000}]));
    let seen = reconcile(RouteKind::Http, http_route(spec.clone()), cluster()).await;
    let entry = &the_write(&seen, HTTP_STATUS)[0];
    assert_eq!(
        conditions(entry),
        [
            cond("Accepted", "True", "Accepted"),
            cond("ResolvedRefs", "True", "ResolvedRefs")
        ]
    );

    let mut gone = cluster();
    gone.remove_service("pay", "ledger");
    let seen = reconcile(RouteKind::Http, http_route(spec), gone).await;
    let entry = &the_write(&seen, HTTP_STATUS)[0];
    assert_eq!(
        conditions(entry)[1],
        cond("ResolvedRefs", "False", "BackendNotFound")
    );
    assert_eq!(
        message(entry, "ResolvedRefs"),
        "spec.rules[0].backendRefs[0]: Service pay/ledger not found"
    );
}

#[tokio::test]
async fn a_route_the_waypoint_cannot_apply_is_not_accepted_naming_the_field() {
    let bad_regex = json!({
        "parentRefs": [{"group": "", "kind": "Service", "name": "web"}],
        "rules": [{"matches": [{"headers": [{"type": "RegularExpression", "name": "x", "value": "a("}]}]}],
    });
    let seen = reconcile(RouteKind::Http, http_route(bad_regex), cluster()).await;
    let entry = &the_write(&seen, HTTP_STATUS)[0];
    assert_eq!(
        conditions(entry)[0],
        cond("Accepted", "False", "UnsupportedValue")
    );
    let m = message(entry, "Accepted");
    assert!(
        m.contains("spec.rules[0].matches[0].headers[0].value: invalid regular expression"),
        "{m}"
    );

    // RequestRedirect with URLRewrite: the reason Gateway API names for
    // that combination.
    let both = json!({
        "parentRefs": [{"group": "", "kind": "Service", "name": "web"}],
        "rules": [{"filters": [
            {"type": "URLRewrite", "urlRewrite": {"hostname": "b.example"}},
            {"type": "RequestRedirect", "requestRedirect": {"port": 8443}},
        ]}],
    });
    let seen = reconcile(RouteKind::Http, http_route(both), cluster()).await;
    let entry = &the_write(&seen, HTTP_STATUS)[0];
    assert_eq!(
        conditions(entry)[0],
        cond("Accepted", "False", "IncompatibleFilters")
    );
    assert!(
        message(entry, "Accepted")
            .contains("spec.rules[0].filters: RequestRedirect and URLRewrite"),
        "{}",
        message(entry, "Accepted")
    );
}

#[tokio::test]
async fn another_controllers_entry_is_kept_and_our_stale_one_goes() {
    let theirs = json!({
        "parentRef": {"group": "gateway.networking.k8s.io", "kind": "Gateway", "name": "edge"},
        "controllerName": "example.com/gateway",
        "conditions": [{"type": "Accepted", "status": "True", "reason": "Accepted",
                        "message": "", "lastTransitionTime": "2024-01-01T00:00:00Z"}],
        "somethingNew": 1,
    });
    // Ours, for a parent the route no longer names.
    let stale = json!({
        "parentRef": {"group": "", "kind": "Service", "name": "old"},
        "controllerName": ME,
        "conditions": [{"type": "Accepted", "status": "True", "reason": "Accepted",
                        "message": "", "lastTransitionTime": "2024-01-01T00:00:00Z"}],
    });
    let mut spec = to_web(json!([]));
    spec["parentRefs"]
        .as_array_mut()
        .unwrap()
        .push(json!({"name": "edge"}));
    let r = route(
        "HTTPRoute",
        spec,
        json!({"parents": [stale, theirs.clone()]}),
    );
    let seen = reconcile(RouteKind::Http, r, cluster()).await;
    let parents = the_write(&seen, HTTP_STATUS).as_array().unwrap();
    assert_eq!(parents.len(), 2, "{parents:#?}");
    assert_eq!(parents[0], theirs);
    assert_eq!(parents[1]["parentRef"]["name"], "web");
    assert_eq!(parents[1]["controllerName"], ME);
}

#[tokio::test]
async fn an_unchanged_status_is_not_written_again() {
    let spec = to_web(json!([{"name": "api", "port": 8080}]));
    let seen = reconcile(RouteKind::Http, http_route(spec.clone()), cluster()).await;
    let written = the_write(&seen, HTTP_STATUS).clone();
    // The route as the API server now serves it: nothing to write, even
    // a second later (transition times are kept).
    let r = route("HTTPRoute", spec, json!({"parents": written}));
    let seen = reconcile(RouteKind::Http, r, cluster()).await;
    assert!(seen.is_empty(), "{seen:#?}");
}

#[tokio::test]
async fn a_route_with_no_service_parent_gets_nothing() {
    let spec = json!({"parentRefs": [{"name": "edge"}]});
    let seen = reconcile(RouteKind::Http, http_route(spec), cluster()).await;
    assert!(seen.is_empty(), "{seen:#?}");
}

#[tokio::test]
async fn a_grpc_route_is_written_to_its_own_kind() {
    let spec = json!({
        "parentRefs": [{"group": "", "kind": "Service", "name": "api", "port": 8080}],
        "rules": [{"backendRefs": [{"name": "api", "port": 8080}]}],
    });
    let seen = reconcile(
        RouteKind::Grpc,
        route("GRPCRoute", spec, Value::Null),
        cluster(),
    )
    .await;
    let entry = &the_write(&seen, GRPC_STATUS)[0];
    assert_eq!(
        conditions(entry),
        [
            cond("Accepted", "True", "Accepted"),
            cond("ResolvedRefs", "True", "ResolvedRefs")
        ]
    );
}

#[tokio::test]
async fn a_spec_that_does_not_decode_is_reported_on_its_parents() {
    let spec = json!({
        "parentRefs": [{"group": "", "kind": "Service", "name": "web"}],
        "rules": [{"backendRefs": [{"name": "api", "port": "eighty"}]}],
    });
    let seen = reconcile(RouteKind::Http, http_route(spec), cluster()).await;
    let entry = &the_write(&seen, HTTP_STATUS)[0];
    assert_eq!(
        conditions(entry),
        [cond("Accepted", "False", "UnsupportedValue")]
    );
    assert!(message(entry, "Accepted").starts_with("the route cannot be read: "));
}

#[tokio::test]
async fn a_write_that_lost_a_race_is_retried_soon() {
    let (client, _) = api_mock::client(|_| api_mock::conflict());
    let ctx = context(client, RouteKind::Http, cluster());
    let r = http_route(to_web(json!([])));
    let err = reconcile_route(r.clone(), ctx.clone()).await.unwrap_err();
    assert!(err.is_conflict(), "{err}");
    assert_eq!(retry(r.clone(), &err, ctx), Action::requeue(CONFLICT_RETRY));

    let (client, _) = api_mock::client(|_| api_mock::not_found());
    let ctx = context(client, RouteKind::Http, cluster());
    let err = reconcile_route(r.clone(), ctx.clone()).await.unwrap_err();
    assert!(!err.is_conflict());
    assert_eq!(retry(r, &err, ctx), Action::requeue(RETRY));
}

#[tokio::test]
async fn a_kind_without_its_crd_is_not_served() {
    let (client, seen) = api_mock::client(|r| {
        if r.path.contains("/httproutes") {
            (
                StatusCode::OK,
                json!({"apiVersion": "v1", "kind": "List",
                                    "metadata": {"resourceVersion": "1"}, "items": []}),
            )
        } else {
            api_mock::not_found()
        }
    });
    let served = Served::probe(&client).await.unwrap();
    assert_eq!(
        served,
        Served {
            http_routes: true,
            grpc_routes: false,
        }
    );
    assert_eq!(served.routes().collect::<Vec<_>>(), [RouteKind::Http]);
    // The route kinds only: ReferenceGrants are not read.
    let paths: Vec<String> = seen
        .lock()
        .unwrap()
        .iter()
        .map(|s| {
            s.path
                .split_once('?')
                .map_or(&*s.path, |(p, _)| p)
                .to_owned()
        })
        .collect();
    assert_eq!(
        paths,
        [
            "/apis/gateway.networking.k8s.io/v1/httproutes",
            "/apis/gateway.networking.k8s.io/v1/grpcroutes"
        ]
    );

    // Forbidden is a missing permission, not a missing kind.
    let (client, _) = api_mock::client(|_| {
        (
            StatusCode::FORBIDDEN,
            json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
                                       "reason": "Forbidden", "code": 403, "message": "forbidden"}),
        )
    });
    assert!(Served::probe(&client).await.is_err());
}

fn service(value: Value) -> Service {
    serde_json::from_value(value).unwrap()
}

#[test]
fn a_service_gives_its_ports_and_whether_it_has_a_cluster_ip() {
    let s = service(json!({
        "metadata": {"name": "web", "namespace": "shop"},
        "spec": {"clusterIP": "10.96.0.10", "ports": [{"port": 80, "name": "http"}, {"port": 9090}]},
    }));
    assert_eq!(
        service_facts(&s),
        Some((
            "shop".into(),
            "web".into(),
            status::Service {
                ports: vec![
                    Port {
                        number: 80,
                        name: Some("http".into())
                    },
                    Port {
                        number: 9090,
                        name: None
                    }
                ],
                cluster_ip: true,
            }
        ))
    );
    for spec in [
        json!({"clusterIP": "None", "ports": [{"port": 80}]}),
        json!({"type": "ExternalName", "externalName": "x.example"}),
        json!({}),
    ] {
        let s = service(json!({"metadata": {"name": "h", "namespace": "shop"}, "spec": spec}));
        assert!(!service_facts(&s).unwrap().2.cluster_ip, "{s:?}");
    }
}

#[test]
fn a_relist_replaces_the_facts_at_once_and_events_change_them() {
    let web = || {
        service(json!({"metadata": {"name": "web", "namespace": "shop"},
                       "spec": {"clusterIP": "10.0.0.1", "ports": [{"port": 80}]}}))
    };
    let key = |s: &Service| Some((s.metadata.namespace.clone()?, s.metadata.name.clone()?));
    let mut c = cluster();
    let mut relist = Relist::default();
    for e in [watcher::Event::Init, watcher::Event::InitApply(web())] {
        let change = relist.follow(e, service_facts, key);
        assert_eq!(change, Change::None);
        assert!(!apply_service(&mut c, change));
    }
    // Until the list is done the old facts stand.
    assert!(c.service("shop", "api").is_some());
    assert!(!relist.synced);
    let change = relist.follow(watcher::Event::InitDone, service_facts, key);
    assert!(relist.synced);
    assert!(apply_service(&mut c, change));
    assert!(c.service("shop", "api").is_none());
    assert_eq!(c.service("shop", "web"), Some(&svc(&[80])));

    // The same facts again change nothing; a deletion does.
    let change = relist.follow(watcher::Event::Apply(web()), service_facts, key);
    assert!(!apply_service(&mut c, change));
    let change = relist.follow(watcher::Event::Delete(web()), service_facts, key);
    assert!(apply_service(&mut c, change));
    assert!(c.service("shop", "web").is_none());
}

#[test]
fn an_object_whose_facts_are_unusable_now_takes_its_old_facts_away() {
    // A facts function that refuses some objects: what such an object
    // said before no longer holds, so it is removed, not kept stale.
    let with_ip = |s: &Service| service_facts(s).filter(|(_, _, f)| f.cluster_ip);
    let key = |s: &Service| Some((s.metadata.namespace.clone()?, s.metadata.name.clone()?));
    let web = |ip: &str| {
        service(json!({"metadata": {"name": "web", "namespace": "shop"},
                       "spec": {"clusterIP": ip, "ports": [{"port": 80}]}}))
    };
    let mut c = cluster();
    let mut relist = Relist::default();
    let change = relist.follow(watcher::Event::Apply(web("None")), with_ip, key);
    assert_eq!(change, Change::Remove("shop".into(), "web".into()));
    assert!(apply_service(&mut c, change));
    assert!(c.service("shop", "web").is_none());
    // Without a key there is nothing to remove.
    let nameless = service(json!({"metadata": {}, "spec": {"clusterIP": "None"}}));
    assert_eq!(
        relist.follow(watcher::Event::Apply(nameless), with_ip, key),
        Change::None
    );
}

/// A GRPCRoute shop/`name` with `spec`, as the API serves it.
fn grpc_object(name: &str, spec: Value) -> DynamicObject {
    serde_json::from_value(json!({
        "apiVersion": "gateway.networking.k8s.io/v1", "kind": "GRPCRoute",
        "metadata": {"name": name, "namespace": "shop", "resourceVersion": "7"},
        "spec": spec,
    }))
    .unwrap()
}

fn on_api_8080() -> Value {
    json!({
        "parentRefs": [{"group": "", "kind": "Service", "name": "api", "port": 8080}],
        "rules": [{"backendRefs": [{"name": "api", "port": 8080}]}],
    })
}

fn grpc_key(r: &DynamicObject) -> Option<(String, String)> {
    Some((r.metadata.namespace.clone()?, r.metadata.name.clone()?))
}

#[tokio::test]
async fn an_http_route_on_a_port_a_grpc_route_holds_is_conflicted_until_it_goes() {
    let mut c = cluster();
    let mut grpcs = Relist::default();
    let g = grpc_object("g", on_api_8080());
    let change = grpcs.follow(watcher::Event::Apply(g.clone()), grpc_route_facts, grpc_key);
    assert!(apply_grpc_route(&mut c, change));

    let spec = json!({
        "parentRefs": [{"group": "", "kind": "Service", "name": "api", "port": 8080}],
        "rules": [{"backendRefs": [{"name": "api", "port": 8080}]}],
    });
    let seen = reconcile(RouteKind::Http, http_route(spec.clone()), c.clone()).await;
    let written = the_write(&seen, HTTP_STATUS).clone();
    let entry = &written[0];
    assert_eq!(
        conditions(entry),
        [
            cond("Accepted", "False", "Conflicted"),
            cond("ResolvedRefs", "True", "ResolvedRefs")
        ]
    );
    assert_eq!(
        message(entry, "Accepted"),
        "Service shop/api: port 8080 is held by GRPCRoute shop/g; a GRPCRoute takes a \
         Service port over HTTPRoutes (GEP-1426), so this route applies to none of the \
         ports it names"
    );
    // The GRPCRoute itself is Accepted.
    let seen = reconcile(
        RouteKind::Grpc,
        route("GRPCRoute", on_api_8080(), Value::Null),
        c.clone(),
    )
    .await;
    assert_eq!(
        conditions(&the_write(&seen, GRPC_STATUS)[0])[0],
        cond("Accepted", "True", "Accepted")
    );

    // Its status written, the GRPCRoute comes again: no fact moved, so
    // no HTTPRoute is reconciled for it.
    let mut with_status = g.clone();
    with_status.data["status"] = json!({"parents": []});
    let change = grpcs.follow(
        watcher::Event::Apply(with_status),
        grpc_route_facts,
        grpc_key,
    );
    assert!(!apply_grpc_route(&mut c, change));

    // The GRPCRoute deleted: the port is the HTTPRoute's again.
    let change = grpcs.follow(watcher::Event::Delete(g), grpc_route_facts, grpc_key);
    assert!(apply_grpc_route(&mut c, change));
    let r = route("HTTPRoute", spec, json!({"parents": written}));
    let seen = reconcile(RouteKind::Http, r, c).await;
    let entry = &the_write(&seen, HTTP_STATUS)[0];
    assert_eq!(
        conditions(entry),
        [
            cond("Accepted", "True", "Accepted"),
            cond("ResolvedRefs", "True", "ResolvedRefs")
        ]
    );
    assert_eq!(
        message(entry, "Accepted"),
        "attached to Service shop/api (port 8080)"
    );
}

#[test]
fn a_grpc_route_that_does_not_compile_holds_no_port() {
    let mut c = cluster();
    let mut grpcs = Relist::default();
    let good = grpc_object("g", on_api_8080());
    let change = grpcs.follow(watcher::Event::Apply(good), grpc_route_facts, grpc_key);
    assert!(apply_grpc_route(&mut c, change));
    assert_eq!(c.grpc_holders("shop", "api", 8080, "shop").len(), 1);
    // Edited into one the data plane leaves out: what it held is free.
    let mut bad = on_api_8080();
    bad["rules"][0]["matches"] =
        json!([{"method": {"type": "RegularExpression", "service": "(["}}]);
    let bad = grpc_object("g", bad);
    assert!(grpc_route_facts(&bad).is_none());
    let change = grpcs.follow(watcher::Event::Apply(bad), grpc_route_facts, grpc_key);
    assert_eq!(change, Change::Remove("shop".into(), "g".into()));
    assert!(apply_grpc_route(&mut c, change));
    assert!(c.grpc_holders("shop", "api", 8080, "shop").is_empty());
    // A spec that does not even decode, likewise.
    let unreadable = grpc_object("g", json!({"parentRefs": "api"}));
    assert!(grpc_route_facts(&unreadable).is_none());
}

/// The API server for the facts' watches and the controllers: Services
/// are listed; GRPCRoutes too, at the second try (well after the
/// Services), at resourceVersion 1 (later lists, the GRPCRoute
/// controller's, at 2); a watch from 1 brings the GRPCRoute's deletion
/// once `deliver` is set; HTTPRoutes are listed (shop/r on api:8080);
/// every other watch fails (and backs off); a status write answers with
/// what was written.
fn cluster_api(deliver: Arc<AtomicBool>) -> impl Fn(&Seen) -> (StatusCode, Value) + Send + 'static {
    let delivered = AtomicBool::new(false);
    let grpc_lists = std::sync::atomic::AtomicUsize::new(0);
    move |r: &Seen| {
        if r.method == "PATCH" {
            return api(r);
        }
        assert_eq!(r.method, "GET", "{}", r.path);
        let watch = r.path.contains("watch=true");
        let list = |version: &str, items: Value| {
            (
                StatusCode::OK,
                json!({"apiVersion": "v1", "kind": "List",
                       "metadata": {"resourceVersion": version}, "items": items}),
            )
        };
        let failed = (
            StatusCode::INTERNAL_SERVER_ERROR,
            json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
                   "reason": "InternalError", "code": 500, "message": "not now"}),
        );
        let routes = "/apis/gateway.networking.k8s.io/v1/";
        if r.path.starts_with("/api/v1/services") {
            if watch {
                return failed;
            }
            return list(
                "1",
                json!([{
                    "metadata": {"name": "api", "namespace": "shop", "resourceVersion": "1"},
                    "spec": {"clusterIP": "10.96.0.9", "ports": [{"port": 8080}]},
                }]),
            );
        }
        if r.path.starts_with(&format!("{routes}httproutes")) {
            if watch {
                return failed;
            }
            return list("1", json!([*http_route(on_api_8080())]));
        }
        assert!(
            r.path.starts_with(&format!("{routes}grpcroutes")),
            "{}",
            r.path
        );
        let g = serde_json::to_value(grpc_object("g", on_api_8080())).unwrap();
        if !watch {
            return match grpc_lists.fetch_add(1, Ordering::SeqCst) {
                0 => failed,
                1 => list("1", json!([g])),
                _ => list("2", json!([g])),
            };
        }
        let from_first_list = r.path.split(['?', '&']).any(|q| q == "resourceVersion=1");
        if from_first_list
            && deliver.load(Ordering::SeqCst)
            && !delivered.swap(true, Ordering::SeqCst)
        {
            return (StatusCode::OK, json!({"type": "DELETED", "object": g}));
        }
        failed
    }
}

#[tokio::test]
async fn following_grpc_routes_holds_back_the_controllers_and_tells_of_changes() {
    let deliver = Arc::new(AtomicBool::new(false));
    let (client, _) = api_mock::client(cluster_api(deliver.clone()));
    let cluster = Arc::new(RwLock::new(Cluster::default()));
    let (services, mut services_changed) = watch::channel(());
    let (grpc_routes, mut grpc_routes_changed) = watch::channel(());
    let (synced, mut is_synced) = watch::channel(false);
    let follow = tokio::spawn(facts::follow(
        client,
        cluster.clone(),
        true,
        Signals {
            services,
            grpc_routes,
            synced,
        },
    ));
    let bound = Duration::from_secs(20);
    tokio::time::timeout(bound, is_synced.wait_for(|s| *s))
        .await
        .expect("synced in time")
        .unwrap();
    // Synced means the GRPCRoutes are listed as well as the Services.
    let holders: Vec<String> = cluster
        .read()
        .unwrap()
        .grpc_holders("shop", "api", 8080, "shop")
        .iter()
        .map(ToString::to_string)
        .collect();
    assert_eq!(holders, ["shop/g"]);
    assert!(services_changed.has_changed().unwrap());
    assert!(grpc_routes_changed.has_changed().unwrap());
    services_changed.mark_unchanged();
    grpc_routes_changed.mark_unchanged();

    deliver.store(true, Ordering::SeqCst);
    tokio::time::timeout(bound, grpc_routes_changed.changed())
        .await
        .expect("the deletion told in time")
        .unwrap();
    assert!(
        cluster
            .read()
            .unwrap()
            .grpc_holders("shop", "api", 8080, "shop")
            .is_empty()
    );
    // Services did not move.
    assert!(!services_changed.has_changed().unwrap());
    follow.abort();
}

#[tokio::test]
async fn without_the_grpc_route_kind_services_alone_are_followed() {
    let (client, seen) = api_mock::client(cluster_api(Arc::new(AtomicBool::new(false))));
    let (services, _services_changed) = watch::channel(());
    let (grpc_routes, _grpc_routes_changed) = watch::channel(());
    let (synced, mut is_synced) = watch::channel(false);
    let follow = tokio::spawn(facts::follow(
        client,
        Arc::new(RwLock::new(Cluster::default())),
        false,
        Signals {
            services,
            grpc_routes,
            synced,
        },
    ));
    tokio::time::timeout(Duration::from_secs(20), is_synced.wait_for(|s| *s))
        .await
        .expect("synced in time")
        .unwrap();
    follow.abort();
    assert!(
        seen.lock()
            .unwrap()
            .iter()
            .all(|s| s.path.starts_with("/api/v1/services")),
        "{:#?}",
        seen.lock().unwrap()
    );
}

/// The whole of it: facts followed, then the controllers; the HTTPRoute
/// on the GRPCRoute's port is written Conflicted, and once the GRPCRoute
/// is deleted, written Accepted again without any change of its own.
#[tokio::test]
async fn a_grpc_route_deleted_gives_the_http_route_its_port_back() {
    let deliver = Arc::new(AtomicBool::new(false));
    let (client, seen) = api_mock::client(cluster_api(deliver.clone()));
    let report = tokio::spawn(async move {
        super::report(
            &client,
            ME,
            Served {
                http_routes: true,
                grpc_routes: true,
            },
        )
        .await;
    });
    let writes = |seen: &Arc<std::sync::Mutex<Vec<Seen>>>| -> Vec<Value> {
        seen.lock()
            .unwrap()
            .iter()
            .filter(|s| s.method == "PATCH" && s.path.starts_with(HTTP_STATUS))
            .map(|s| s.body["status"]["parents"][0].clone())
            .collect()
    };
    let wait_for = |n: usize| {
        let seen = seen.clone();
        async move {
            for _ in 0..400 {
                if writes(&seen).len() >= n {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            panic!(
                "{n} status writes of shop/r not seen: {:#?}",
                seen.lock().unwrap()
            );
        }
    };
    wait_for(1).await;
    let first = &writes(&seen)[0];
    assert_eq!(
        conditions(first)[0],
        cond("Accepted", "False", "Conflicted")
    );
    deliver.store(true, Ordering::SeqCst);
    wait_for(2).await;
    report.abort();
    let second = &writes(&seen)[1];
    assert_eq!(conditions(second)[0], cond("Accepted", "True", "Accepted"));
    // The GRPCRoute's own status was written too, Accepted.
    assert!(seen.lock().unwrap().iter().any(|s| {
        s.method == "PATCH"
            && s.path.starts_with(
                "/apis/gateway.networking.k8s.io/v1/namespaces/shop/grpcroutes/g/status",
            )
            && s.body["status"]["parents"][0]["conditions"][0]["reason"] == "Accepted"
    }));
}
