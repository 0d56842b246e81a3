//! The policy status controller against kube's mock API server: the
//! condition it writes for a valid and an invalid object of each kind,
//! a target that names nothing, what it keeps of other controllers, and
//! when it writes nothing.
use std::sync::{Arc, RwLock};

use http::StatusCode;
use kube::{Client, api::DynamicObject, runtime::controller::Action};
use mesh_discovery::model::Labels;
use serde_json::{Value, json};

use super::{
    kinds::PolicyKind,
    reconcile::{Context, FIELD_MANAGER, reconcile_policy, retry},
    targets::Targets,
};
use crate::{
    api_mock::{self, Seen},
    status_controller::CONFLICT_RETRY,
};

const RATE_LIMIT: &str =
    "/apis/mesh.io/v1alpha1/namespaces/shop/httplocalratelimitpolicies/p/status";
const FAULT: &str = "/apis/mesh.io/v1alpha1/namespaces/shop/httpfaultinjections/p/status";
const AUTHZ: &str = "/apis/security.istio.io/v1/namespaces/shop/authorizationpolicies/p/status";
const AUTHN: &str = "/apis/security.istio.io/v1/namespaces/shop/requestauthentications/p/status";
const DR: &str = "/apis/networking.istio.io/v1/namespaces/shop/destinationrules/p/status";

fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

const CLASS: &str = "mesh-waypoint";

/// shop/web (through waypoint shop/wp), shop/plain (no waypoint),
/// shop/lost (naming a waypoint that does not exist); Gateway shop/wp of
/// the waypoint class, shop/edge of another.
fn targets() -> Targets {
    let mut t = Targets::new(CLASS, "istio-system");
    t.set_service("shop", "web", &labels(&[("istio.io/use-waypoint", "wp")]));
    t.set_service("shop", "plain", &labels(&[]));
    t.set_service(
        "shop",
        "lost",
        &labels(&[("istio.io/use-waypoint", "gone")]),
    );
    t.set_gateway("shop", "wp", CLASS);
    t.set_gateway("shop", "edge", "istio");
    t
}

fn context(client: Client, kind: PolicyKind) -> Arc<Context> {
    Arc::new(Context {
        client,
        kind,
        resource: kind.resource(),
        targets: Arc::new(RwLock::new(targets())),
    })
}

/// Object shop/p of `kind` with `spec` and `status`, as the API serves it.
fn object(kind: PolicyKind, spec: Value, status: Value) -> Arc<DynamicObject> {
    let r = kind.resource();
    let mut o = json!({
        "apiVersion": r.api_version, "kind": r.kind,
        "metadata": {"name": "p", "namespace": "shop", "generation": 4,
                     "resourceVersion": "42", "creationTimestamp": "2025-01-01T00:00:00Z"},
        "spec": spec,
    });
    if !status.is_null() {
        o["status"] = status;
    }
    Arc::new(serde_json::from_value(o).unwrap())
}

fn api(r: &Seen) -> (StatusCode, Value) {
    assert_eq!(r.method, "PATCH", "{}", r.path);
    (StatusCode::OK, r.body.clone())
}

async fn reconcile(kind: PolicyKind, o: Arc<DynamicObject>) -> Vec<Seen> {
    let (client, seen) = api_mock::client(api);
    let action = reconcile_policy(o, context(client, kind)).await.unwrap();
    assert_eq!(action, Action::await_change());
    seen.lock().unwrap().clone()
}

/// The one write among `seen`: a merge patch of the status subresource,
/// conditional on the version read; its conditions.
fn the_write(seen: &[Seen], path: &str) -> Vec<Value> {
    assert_eq!(seen.len(), 1, "{seen:#?}");
    let (p, query) = seen[0].path.split_once('?').unwrap();
    assert_eq!(p, path);
    assert!(
        query.contains(&format!("fieldManager={FIELD_MANAGER}")),
        "{query}"
    );
    assert_eq!(seen[0].body["metadata"]["resourceVersion"], "42");
    seen[0].body["status"]["conditions"]
        .as_array()
        .unwrap()
        .clone()
}

/// The condition of `type_`: (status, reason, message).
fn cond(conditions: &[Value], type_: &str) -> (String, String, String) {
    let c = conditions
        .iter()
        .find(|c| c["type"] == type_)
        .unwrap_or_else(|| panic!("no {type_} in {conditions:#?}"));
    assert_eq!(c["observedGeneration"], 4, "{c}");
    let t = c["lastTransitionTime"].as_str().unwrap();
    assert!(t.len() == 20 && t.ends_with('Z'), "{t}");
    (
        c["status"].as_str().unwrap().into(),
        c["reason"].as_str().unwrap().into(),
        c["message"].as_str().unwrap().into(),
    )
}

fn rate_limit(target: &str, rps: u32) -> Value {
    json!({"targetRef": {"group": "", "kind": "Service", "name": target},
           "total": {"requestsPerSecond": rps}})
}

#[tokio::test]
async fn a_valid_rate_limit_is_accepted_and_bound_to_its_services_waypoint() {
    let seen = reconcile(
        PolicyKind::RateLimit,
        object(PolicyKind::RateLimit, rate_limit("web", 10), Value::Null),
    )
    .await;
    let c = the_write(&seen, RATE_LIMIT);
    assert_eq!(c.len(), 1);
    let (status, reason, message) = cond(&c, "Accepted");
    assert_eq!((status.as_str(), reason.as_str()), ("True", "Accepted"));
    assert_eq!(message, "bound to shop/wp");
}

#[tokio::test]
async fn an_invalid_rate_limit_is_refused_naming_the_field() {
    let seen = reconcile(
        PolicyKind::RateLimit,
        object(PolicyKind::RateLimit, rate_limit("web", 0), Value::Null),
    )
    .await;
    let (status, reason, message) = cond(&the_write(&seen, RATE_LIMIT), "Accepted");
    assert_eq!((status.as_str(), reason.as_str()), ("False", "Invalid"));
    assert!(
        message.starts_with("spec.total.requestsPerSecond: "),
        "{message}"
    );
    // And what the waypoints do instead.
    assert!(
        message.ends_with("with 429 when it never was valid)"),
        "{message}"
    );
}

#[tokio::test]
async fn a_rate_limit_on_a_missing_service_is_target_not_found() {
    let seen = reconcile(
        PolicyKind::RateLimit,
        object(PolicyKind::RateLimit, rate_limit("gone", 10), Value::Null),
    )
    .await;
    let (status, reason, message) = cond(&the_write(&seen, RATE_LIMIT), "Accepted");
    assert_eq!(
        (status.as_str(), reason.as_str()),
        ("False", "TargetNotFound")
    );
    assert_eq!(message, "Service shop/gone was not found");
}

#[tokio::test]
async fn an_unchanged_status_is_not_rewritten() {
    let o = object(PolicyKind::RateLimit, rate_limit("web", 10), Value::Null);
    let written = the_write(&reconcile(PolicyKind::RateLimit, o).await, RATE_LIMIT);
    let again = object(
        PolicyKind::RateLimit,
        rate_limit("web", 10),
        json!({"conditions": written}),
    );
    assert!(reconcile(PolicyKind::RateLimit, again).await.is_empty());
}

#[tokio::test]
async fn a_fault_that_does_not_check_is_refused_by_field() {
    let bad = object(
        PolicyKind::Fault,
        json!({"abort": {"httpStatus": 99}}),
        Value::Null,
    );
    let (status, reason, message) = cond(
        &the_write(&reconcile(PolicyKind::Fault, bad).await, FAULT),
        "Accepted",
    );
    assert_eq!((status.as_str(), reason.as_str()), ("False", "Invalid"));
    assert!(message.starts_with("spec.abort.httpStatus"), "{message}");
    let good = object(
        PolicyKind::Fault,
        json!({"abort": {"httpStatus": 503}}),
        Value::Null,
    );
    let (status, ..) = cond(
        &the_write(&reconcile(PolicyKind::Fault, good).await, FAULT),
        "Accepted",
    );
    assert_eq!(status, "True");
}

fn authz(target_refs: Value) -> Value {
    json!({"targetRefs": target_refs, "action": "ALLOW",
           "rules": [{"to": [{"operation": {"methods": ["GET"]}}]}]})
}

#[tokio::test]
async fn an_authorization_policy_keeps_other_conditions_and_reads_as_istios() {
    let ztunnel = json!({"type": "ZtunnelAccepted", "status": "True", "reason": "Accepted",
        "message": "attached to ztunnel", "lastTransitionTime": "2024-01-01T00:00:00Z"});
    let o = object(
        PolicyKind::Authorization,
        authz(json!([{"group": "gateway.networking.k8s.io", "kind": "Gateway", "name": "wp"}])),
        json!({"conditions": [ztunnel]}),
    );
    let c = the_write(&reconcile(PolicyKind::Authorization, o).await, AUTHZ);
    assert_eq!(c[0], ztunnel, "another controller's condition, as it was");
    let (status, reason, message) = cond(&c, "WaypointAccepted");
    assert_eq!(
        (status.as_str(), reason.as_str(), message.as_str()),
        ("True", "Accepted", "bound to shop/wp")
    );
}

#[tokio::test]
async fn authorization_policy_targets_resolve_as_istio_resolves_them() {
    let one = |refs: Value| object(PolicyKind::Authorization, authz(refs), Value::Null);
    let svc = |name: &str| json!({"group": "", "kind": "Service", "name": name});
    let verdict = |seen: Vec<Seen>| cond(&the_write(&seen, AUTHZ), "WaypointAccepted");

    let (s, r, m) = verdict(reconcile(PolicyKind::Authorization, one(json!([svc("gone")]))).await);
    assert_eq!((s.as_str(), r.as_str()), ("False", "TargetNotFound"));
    assert_eq!(m, "Service shop/gone was not found");

    let (s, r, m) = verdict(reconcile(PolicyKind::Authorization, one(json!([svc("plain")]))).await);
    assert_eq!((s.as_str(), r.as_str()), ("False", "AncestorNotBound"));
    assert_eq!(m, "Service shop/plain is not bound to a waypoint");

    // Only the root namespace's policies bind the class.
    let class =
        json!([{"group": "gateway.networking.k8s.io", "kind": "GatewayClass", "name": CLASS}]);
    let (s, r, m) = verdict(reconcile(PolicyKind::Authorization, one(class)).await);
    assert_eq!((s.as_str(), r.as_str()), ("False", "Invalid"));
    assert!(m.contains("root namespace `istio-system`"), "{m}");

    let (s, r, m) = verdict(reconcile(PolicyKind::Authorization, one(json!([svc("lost")]))).await);
    assert_eq!((s.as_str(), r.as_str()), ("False", "AncestorNotBound"));
    assert_eq!(m, "Service shop/lost is not bound to a waypoint");

    // A Gateway of another class is no waypoint.
    let gw =
        |name: &str| json!({"group": "gateway.networking.k8s.io", "kind": "Gateway", "name": name});
    let (s, r, m) = verdict(reconcile(PolicyKind::Authorization, one(json!([gw("edge")]))).await);
    assert_eq!((s.as_str(), r.as_str()), ("False", "TargetNotFound"));
    assert_eq!(m, "Gateway shop/edge of class mesh-waypoint was not found");

    let (s, r, m) = verdict(
        reconcile(
            PolicyKind::Authorization,
            one(json!([svc("gone"), gw("edge")])),
        )
        .await,
    );
    assert_eq!((s.as_str(), r.as_str()), ("False", "Invalid"));
    assert!(m.starts_with("Invalid targetRefs: "), "{m}");
    let (s, r, m) = verdict(
        reconcile(
            PolicyKind::Authorization,
            one(json!([svc("web"), svc("gone")])),
        )
        .await,
    );
    assert_eq!((s.as_str(), r.as_str()), ("True", "PartiallyInvalid"));
    assert!(m.contains("Service.core:shop/gone"), "{m}");
}

#[tokio::test]
async fn an_authorization_policy_that_does_not_compile_is_invalid_by_field() {
    let mut spec = authz(json!([{"group": "", "kind": "Service", "name": "web"}]));
    spec["rules"][0]["from"] = json!([{"source": {"ipBlocks": ["10.0.0.0/99"]}}]);
    let o = object(PolicyKind::Authorization, spec, Value::Null);
    let (s, r, m) = cond(
        &the_write(&reconcile(PolicyKind::Authorization, o).await, AUTHZ),
        "WaypointAccepted",
    );
    assert_eq!((s.as_str(), r.as_str()), ("False", "Invalid"));
    assert!(m.contains("spec.rules[0].from[0].source.ipBlocks"), "{m}");
}

#[tokio::test]
async fn a_selector_policy_gets_no_condition_of_ours_and_loses_a_stale_one() {
    let spec = json!({"selector": {"matchLabels": {"app": "web"}}, "action": "ALLOW"});
    let fresh = object(PolicyKind::Authorization, spec.clone(), Value::Null);
    assert!(reconcile(PolicyKind::Authorization, fresh).await.is_empty());
    let stale = json!({"type": "WaypointAccepted", "status": "True", "reason": "Accepted",
        "message": "bound to shop/wp", "lastTransitionTime": "2024-01-01T00:00:00Z"});
    let ztunnel = json!({"type": "ZtunnelAccepted", "status": "True", "reason": "Accepted",
        "message": "attached to ztunnel", "lastTransitionTime": "2024-01-01T00:00:00Z"});
    let was = object(
        PolicyKind::Authorization,
        spec,
        json!({"conditions": [stale, ztunnel]}),
    );
    let c = the_write(&reconcile(PolicyKind::Authorization, was).await, AUTHZ);
    assert_eq!(c, vec![ztunnel]);
}

#[tokio::test]
async fn a_request_authentication_is_judged_by_field_and_target() {
    let bad = object(
        PolicyKind::RequestAuthentication,
        json!({"targetRefs": [{"group": "", "kind": "Service", "name": "web"}],
               "jwtRules": [{"issuer": ""}]}),
        Value::Null,
    );
    let (s, r, m) = cond(
        &the_write(
            &reconcile(PolicyKind::RequestAuthentication, bad).await,
            AUTHN,
        ),
        "WaypointAccepted",
    );
    assert_eq!((s.as_str(), r.as_str()), ("False", "Invalid"));
    assert!(m.starts_with("spec.jwtRules[0].issuer: "), "{m}");
    let missing = object(
        PolicyKind::RequestAuthentication,
        json!({"targetRefs": [{"group": "gateway.networking.k8s.io", "kind": "Gateway", "name": "nope"}]}),
        Value::Null,
    );
    let (s, r, _) = cond(
        &the_write(
            &reconcile(PolicyKind::RequestAuthentication, missing).await,
            AUTHN,
        ),
        "WaypointAccepted",
    );
    assert_eq!((s.as_str(), r.as_str()), ("False", "TargetNotFound"));
}

#[tokio::test]
async fn a_destination_rule_is_judged_by_field_and_host() {
    let bad = object(
        PolicyKind::DestinationRule,
        json!({"host": "web", "trafficPolicy": {"outlierDetection": {"interval": "forever"}}}),
        Value::Null,
    );
    let (s, r, m) = cond(
        &the_write(&reconcile(PolicyKind::DestinationRule, bad).await, DR),
        "WaypointAccepted",
    );
    assert_eq!((s.as_str(), r.as_str()), ("False", "Invalid"));
    assert!(
        m.starts_with("spec.trafficPolicy.outlierDetection.interval"),
        "{m}"
    );
    let missing = object(
        PolicyKind::DestinationRule,
        json!({"host": "gone"}),
        Value::Null,
    );
    let (s, r, m) = cond(
        &the_write(&reconcile(PolicyKind::DestinationRule, missing).await, DR),
        "WaypointAccepted",
    );
    assert_eq!((s.as_str(), r.as_str()), ("False", "TargetNotFound"));
    assert_eq!(m, "spec.host: Service shop/gone was not found");
    let good = object(
        PolicyKind::DestinationRule,
        json!({"host": "plain"}),
        Value::Null,
    );
    let (s, ..) = cond(
        &the_write(&reconcile(PolicyKind::DestinationRule, good).await, DR),
        "WaypointAccepted",
    );
    assert_eq!(s, "True");
}

#[tokio::test]
async fn a_write_that_lost_a_race_is_retried_soon() {
    let (client, _) = api_mock::client(|_| api_mock::conflict());
    let ctx = context(client, PolicyKind::RateLimit);
    let o = object(PolicyKind::RateLimit, rate_limit("web", 10), Value::Null);
    let err = reconcile_policy(o.clone(), ctx.clone()).await.unwrap_err();
    assert!(err.is_conflict(), "{err}");
    assert_eq!(retry(o, &err, ctx), Action::requeue(CONFLICT_RETRY));
}

#[test]
fn a_services_waypoint_is_its_own_label_over_its_namespaces() {
    use super::targets::Target;
    let svc = |name: &str| Target::Service {
        namespace: "shop".into(),
        name: name.into(),
    };
    let mut t = Targets::new(CLASS, "istio-system");
    t.set_gateway("shop", "ns-wp", CLASS);
    t.set_gateway("infra", "wp", CLASS);
    assert!(t.set_namespace("shop", &labels(&[("istio.io/use-waypoint", "ns-wp")])));
    assert!(!t.set_namespace("shop", &labels(&[("istio.io/use-waypoint", "ns-wp")])));
    t.set_service("shop", "a", &labels(&[]));
    t.set_service("shop", "b", &labels(&[("istio.io/use-waypoint", "none")]));
    t.set_service(
        "shop",
        "c",
        &labels(&[
            ("istio.io/use-waypoint", "wp"),
            ("istio.io/use-waypoint-namespace", "infra"),
        ]),
    );
    assert_eq!(t.resolve(&svc("a")).message, "bound to shop/ns-wp");
    assert_eq!(
        t.resolve(&svc("b")).message,
        "Service shop/b is not bound to a waypoint"
    );
    assert_eq!(t.resolve(&svc("c")).message, "bound to infra/wp");
    let class = |namespace: &str, name: &str| Target::GatewayClass {
        namespace: namespace.into(),
        name: name.into(),
    };
    assert!(t.resolve(&class("istio-system", CLASS)).bound);
    assert_eq!(
        t.resolve(&class("istio-system", "other")).reason,
        super::condition::Reason::TargetNotFound
    );
    assert!(!t.resolve(&class("shop", CLASS)).bound);
    // A re-list that drops a Service makes it missing.
    assert!(t.replace_services(vec![("shop".into(), "a".into(), labels(&[]))]));
    assert!(!t.resolve(&svc("c")).bound);
    assert!(!t.replace_services(vec![("shop".into(), "a".into(), labels(&[]))]));
}

/// The watches' events, followed into the targets: a (re-)list applied
/// whole, a Gateway's class read from its spec, a Namespace's label.
#[test]
fn watch_events_become_targets() {
    use k8s_openapi::api::core::v1::{Namespace, Service};
    use kube::runtime::watcher::Event;

    use super::facts::{
        apply_gateway, apply_namespace, apply_service, gateway_facts, namespace_facts,
        service_facts,
    };
    use crate::routes::facts::Relist;

    let gw = |name: &str, class: &str| -> DynamicObject {
        serde_json::from_value(json!({
            "apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
            "metadata": {"name": name, "namespace": "shop"},
            "spec": {"gatewayClassName": class, "listeners": []},
        }))
        .unwrap()
    };
    let svc: Service = serde_json::from_value(json!({
        "metadata": {"name": "web", "namespace": "shop"},
    }))
    .unwrap();
    let ns: Namespace = serde_json::from_value(json!({
        "metadata": {"name": "shop", "labels": {"istio.io/use-waypoint": "wp"}},
    }))
    .unwrap();
    let key = |g: &DynamicObject| Some((g.metadata.namespace.clone()?, g.metadata.name.clone()?));

    let mut t = Targets::new(CLASS, "istio-system");
    let mut gws = Relist::default();
    for e in [
        Event::Init,
        Event::InitApply(gw("wp", CLASS)),
        Event::InitApply(gw("edge", "other")),
    ] {
        assert!(!apply_gateway(&mut t, gws.follow(e, gateway_facts, key)));
    }
    assert!(apply_gateway(
        &mut t,
        gws.follow(Event::InitDone, gateway_facts, key)
    ));
    let mut services = Relist::default();
    for e in [Event::Init, Event::InitApply(svc), Event::InitDone] {
        apply_service(
            &mut t,
            services.follow(e, service_facts, |s: &Service| {
                Some((s.metadata.namespace.clone()?, s.metadata.name.clone()?))
            }),
        );
    }
    let mut namespaces = Relist::default();
    let ns_key = |n: &Namespace| n.metadata.name.clone().map(|name| (String::new(), name));
    for e in [Event::Init, Event::InitApply(ns), Event::InitDone] {
        apply_namespace(&mut t, namespaces.follow(e, namespace_facts, ns_key));
    }
    let web = super::targets::Target::Service {
        namespace: "shop".into(),
        name: "web".into(),
    };
    assert_eq!(t.resolve(&web).message, "bound to shop/wp");
    // The waypoint's Gateway changes class: the Service has no waypoint.
    assert!(apply_gateway(
        &mut t,
        gws.follow(Event::Apply(gw("wp", "other")), gateway_facts, key)
    ));
    assert!(!t.resolve(&web).bound);
}
