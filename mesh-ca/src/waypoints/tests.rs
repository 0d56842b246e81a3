//! The controller against kube's mock API server: what it applies for a
//! Gateway of the waypoint class, the status it writes, and what it leaves
//! alone.
use std::sync::Arc;

use http::StatusCode;
use kube::runtime::controller::Action;
use serde_json::{Value, json};

use super::{
    reconcile::{Context, FIELD_MANAGER, reconcile_class, reconcile_gateway},
    resources::MeshFacts,
    settings::{PullPolicy, WaypointSettings},
    waypoint_config::WaypointConfig,
    *,
};
use crate::api_mock::{self, Seen};

const ROOT: &str = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n";
const BINDING: &str = "mesh-waypoint-reader";
const BINDING_PATH: &str =
    "/apis/rbac.authorization.k8s.io/v1/clusterrolebindings/mesh-waypoint-reader";

/// The reader binding as the chart creates it, with `subjects`.
fn binding(subjects: Value) -> Value {
    let mut b = json!({
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
        "metadata": {"name": BINDING, "resourceVersion": "7"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                    "name": BINDING},
    });
    if !subjects.is_null() {
        b["subjects"] = subjects;
    }
    b
}

fn sa(namespace: &str, name: &str) -> Value {
    json!({"kind": "ServiceAccount", "name": name, "namespace": namespace})
}

/// The binding's part of the API server: GET answers `subjects`, PUT
/// answers what was written.
fn binding_api(r: &Seen, subjects: &Value) -> Option<(StatusCode, Value)> {
    if !r.path.starts_with(BINDING_PATH) {
        return None;
    }
    Some(match r.method.as_str() {
        "GET" => (StatusCode::OK, binding(subjects.clone())),
        "PUT" => (StatusCode::OK, r.body.clone()),
        other => panic!("unexpected {other} {}", r.path),
    })
}

/// The requests to the reader binding.
fn binding_requests(seen: &[Seen]) -> Vec<&Seen> {
    seen.iter()
        .filter(|s| s.path.starts_with(BINDING_PATH))
        .collect()
}

fn context(client: Client) -> Arc<Context> {
    Arc::new(Context {
        client,
        settings: WaypointSettings {
            class_name: "mesh-waypoint".into(),
            controller_name: "mesh.io/waypoint-controller".into(),
            image: "ghcr.io/mesh/mesh-agent:1.2.3".into(),
            image_pull_policy: PullPolicy::IfNotPresent,
            ca_address: "mesh-ca.mesh-system.svc:15012".into(),
            ca_server_name: "mesh-ca.mesh-system.svc".into(),
            otlp_endpoint: None,
            reader_binding: BINDING.into(),
            waypoint_config: WaypointConfig::default(),
        },
        mesh: MeshFacts {
            trust_domain: "example.org".into(),
            token_audience: "mesh-ca".into(),
            root_cert_pem: ROOT.into(),
        },
    })
}

fn gateway(class: &str, listeners: Value) -> Arc<Gateway> {
    Arc::new(
        serde_json::from_value(json!({
            "apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
            "metadata": {"name": "waypoint", "namespace": "shop", "uid": "u-1", "generation": 3},
            "spec": {"gatewayClassName": class, "listeners": listeners}
        }))
        .unwrap(),
    )
}

fn hbone() -> Value {
    json!([{"name": "mesh", "port": 15008, "protocol": "HBONE"}])
}

/// The API server: applies answer with the object as applied, plus what
/// the server would add (the Service's cluster IP, the Deployment's
/// available replicas).
fn api(available: i32) -> impl Fn(&Seen) -> (StatusCode, Value) + Send + 'static {
    api_with_readers(available, Value::Null)
}

/// [`api`], with the reader binding holding `subjects`.
fn api_with_readers(
    available: i32,
    subjects: Value,
) -> impl Fn(&Seen) -> (StatusCode, Value) + Send + 'static {
    move |r: &Seen| {
        if let Some(answer) = binding_api(r, &subjects) {
            return answer;
        }
        assert_eq!(r.method, "PATCH", "{}", r.path);
        let (_, mut answer) = echo(r);
        if r.path.contains("/services/") {
            answer["spec"]["clusterIP"] = json!("10.96.0.42");
        }
        if r.path.contains("/deployments/") {
            answer["status"] = json!({"availableReplicas": available});
        }
        (StatusCode::OK, answer)
    }
}

/// What the API server answers to a status write: the whole object.
fn echo(r: &Seen) -> (StatusCode, Value) {
    let mut answer = r.body.clone();
    if r.path.contains("/status?") {
        answer["metadata"] = json!({"name": "waypoint"});
        answer["spec"] = json!({"gatewayClassName": "mesh-waypoint",
                                "controllerName": "mesh.io/waypoint-controller"});
    }
    (StatusCode::OK, answer)
}

fn find<'a>(seen: &'a [Seen], path: &str) -> &'a Seen {
    seen.iter()
        .find(|s| s.path.starts_with(path))
        .unwrap_or_else(|| panic!("no request to {path}: {seen:#?}"))
}

fn manager(seen: &Seen) -> String {
    let query = seen.path.split_once('?').unwrap().1;
    assert!(query.contains("force=true"), "{query}");
    query
        .split('&')
        .find_map(|kv| kv.strip_prefix("fieldManager="))
        .unwrap()
        .replace("%2F", "/")
}

fn owned_by_the_gateway(object: &Value, controller: bool) {
    assert_eq!(
        object["metadata"]["ownerReferences"],
        json!([{"apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
                "name": "waypoint", "uid": "u-1", "controller": controller,
                "blockOwnerDeletion": true}]),
        "{object}"
    );
}

#[tokio::test]
async fn a_gateway_of_the_class_gets_its_waypoint_and_status() {
    let (client, seen) = api_mock::client(api(1));
    let action = reconcile_gateway(gateway("mesh-waypoint", hbone()), context(client))
        .await
        .unwrap();
    assert_ne!(action, Action::await_change());
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 7, "{seen:#?}");

    // The waypoint's account is bound as a reader, under the version read,
    // before its Deployment exists.
    let (get, put) = (&seen[0], &seen[1]);
    assert_eq!(
        (get.method.as_str(), put.method.as_str()),
        ("GET", "PUT"),
        "{seen:#?}"
    );
    assert!(get.path.starts_with(BINDING_PATH) && put.path.starts_with(BINDING_PATH));
    assert_eq!(put.body["subjects"], json!([sa("shop", "waypoint")]));
    assert_eq!(put.body["metadata"]["resourceVersion"], "7");
    assert_eq!(put.body["roleRef"]["name"], BINDING);

    let cm = find(
        &seen,
        "/api/v1/namespaces/shop/configmaps/mesh-ca-root-cert?",
    );
    assert_eq!(cm.body["data"]["root-cert.pem"], ROOT);
    owned_by_the_gateway(&cm.body, false);
    assert_eq!(manager(cm), format!("{FIELD_MANAGER}/u-1"));

    let account = find(&seen, "/api/v1/namespaces/shop/serviceaccounts/waypoint?");
    assert_eq!(account.body["kind"], "ServiceAccount");
    // The bound account is the one the waypoint runs as.
    assert_eq!(
        (
            &account.body["metadata"]["namespace"],
            &account.body["metadata"]["name"]
        ),
        (
            &put.body["subjects"][0]["namespace"],
            &put.body["subjects"][0]["name"]
        )
    );
    owned_by_the_gateway(&account.body, true);
    assert_eq!(manager(account), FIELD_MANAGER);

    let svc = find(&seen, "/api/v1/namespaces/shop/services/waypoint?");
    owned_by_the_gateway(&svc.body, true);
    assert_eq!(
        svc.body["spec"]["ports"],
        json!([{"name": "mesh", "port": 15008, "targetPort": 15008, "protocol": "TCP"}])
    );
    assert_eq!(
        svc.body["spec"]["selector"],
        json!({"gateway.networking.k8s.io/gateway-name": "waypoint"})
    );

    let deploy = find(&seen, "/apis/apps/v1/namespaces/shop/deployments/waypoint?");
    owned_by_the_gateway(&deploy.body, true);
    let spec = &deploy.body["spec"];
    assert!(
        spec.get("replicas").is_none(),
        "replicas are left to the server and autoscalers"
    );
    let pod = &spec["template"];
    assert_eq!(
        pod["metadata"]["labels"]["gateway.networking.k8s.io/gateway-name"],
        "waypoint"
    );
    assert_eq!(pod["metadata"]["labels"]["mesh.io/dataplane-mode"], "none");
    assert_eq!(
        spec["selector"]["matchLabels"],
        json!({"gateway.networking.k8s.io/gateway-name": "waypoint"})
    );
    let pod = &pod["spec"];
    assert_eq!(pod["serviceAccountName"], "waypoint");
    let c = &pod["containers"][0];
    assert_eq!(c["image"], "ghcr.io/mesh/mesh-agent:1.2.3");
    assert_eq!(c["command"], json!(["/usr/local/bin/mesh-waypoint"]));
    assert_eq!(
        c["args"],
        json!([
            "--kubernetes",
            "--gateway",
            "shop/waypoint",
            "--service-account",
            "waypoint",
            "--trust-domain",
            "example.org",
            "--ca-address",
            "mesh-ca.mesh-system.svc:15012",
            "--ca-server-name",
            "mesh-ca.mesh-system.svc",
            "--ca-root-cert-file",
            "/etc/mesh/root/root-cert.pem",
            "--ca-token-file",
            "/var/run/secrets/mesh-ca/token",
            "--hbone-listen",
            "0.0.0.0:15008",
            "--admin-listen",
            "0.0.0.0:15020",
        ])
    );
    let env: Vec<(&str, &str)> = c["env"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["name"].as_str().unwrap(),
                e["valueFrom"]["fieldRef"]["fieldPath"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        env,
        [
            ("POD_NAME", "metadata.name"),
            ("POD_NAMESPACE", "metadata.namespace"),
            ("POD_IP", "status.podIP")
        ]
    );
    assert_eq!(
        c["readinessProbe"]["httpGet"],
        json!({"path": "/ready", "port": 15020})
    );
    // The token and the root are mounted where the args say.
    assert_eq!(
        c["volumeMounts"],
        json!([
            {"name": "ca-token", "mountPath": "/var/run/secrets/mesh-ca", "readOnly": true},
            {"name": "root-cert", "mountPath": "/etc/mesh/root", "readOnly": true},
        ])
    );
    assert_eq!(
        pod["volumes"],
        json!([
            {"name": "ca-token", "projected": {"sources": [{"serviceAccountToken":
                {"path": "token", "audience": "mesh-ca", "expirationSeconds": 3600}}]}},
            {"name": "root-cert", "configMap": {"name": "mesh-ca-root-cert"}},
        ])
    );

    let status = find(
        &seen,
        "/apis/gateway.networking.k8s.io/v1/namespaces/shop/gateways/waypoint/status?",
    );
    assert_eq!(manager(status), FIELD_MANAGER);
    let status = &status.body["status"];
    assert_eq!(
        status["addresses"],
        json!([{"type": "IPAddress", "value": "10.96.0.42"}])
    );
    let conditions = status["conditions"].as_array().unwrap();
    let condition = |t: &str| conditions.iter().find(|c| c["type"] == t).unwrap().clone();
    let accepted = condition("Accepted");
    assert_eq!(
        (
            &accepted["status"],
            &accepted["reason"],
            &accepted["observedGeneration"]
        ),
        (&json!("True"), &json!("Accepted"), &json!(3))
    );
    let programmed = condition("Programmed");
    assert_eq!(
        (&programmed["status"], &programmed["reason"]),
        (&json!("True"), &json!("Programmed"))
    );
    assert!(
        programmed["lastTransitionTime"]
            .as_str()
            .unwrap()
            .ends_with('Z')
    );
}

#[tokio::test]
async fn a_waypoint_without_an_available_replica_is_pending() {
    let (client, seen) = api_mock::client(api(0));
    reconcile_gateway(gateway("mesh-waypoint", hbone()), context(client))
        .await
        .unwrap();
    let seen = seen.lock().unwrap().clone();
    let status = &find(
        &seen,
        "/apis/gateway.networking.k8s.io/v1/namespaces/shop/gateways/waypoint/status?",
    )
    .body;
    let programmed = status["status"]["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == "Programmed")
        .unwrap();
    assert_eq!(programmed["status"], "False");
    assert_eq!(programmed["reason"], "Pending");
    assert!(
        programmed["message"]
            .as_str()
            .unwrap()
            .contains("shop/waypoint"),
        "{programmed}"
    );
}

#[tokio::test]
async fn gateways_of_other_classes_are_not_touched() {
    let (client, seen) = api_mock::client(|r| panic!("unexpected {} {}", r.method, r.path));
    let action = reconcile_gateway(gateway("istio", hbone()), context(client))
        .await
        .unwrap();
    assert_eq!(action, Action::await_change());
    assert!(seen.lock().unwrap().is_empty());
}

#[tokio::test]
async fn a_gateway_without_the_hbone_listener_is_refused_by_name() {
    for (listeners, want) in [
        (
            json!([{"name": "http", "port": 80, "protocol": "HTTP"}]),
            "spec.listeners[0] `http`: HTTP on port 80",
        ),
        (
            json!([{"name": "mesh", "port": 15008, "protocol": "HBONE"},
                   {"name": "mesh-tls", "port": 15008, "protocol": "TLS"}]),
            "spec.listeners[1] `mesh-tls`: TLS on port 15008",
        ),
        (json!([]), "spec.listeners: no listener"),
    ] {
        // Not a waypoint (any more): its account loses read access, the
        // other waypoints' accounts keep it.
        let bound = json!([sa("bank", "waypoint"), sa("shop", "waypoint")]);
        let (client, seen) =
            api_mock::client(move |r| binding_api(r, &bound).unwrap_or_else(|| echo(r)));
        let action = reconcile_gateway(gateway("mesh-waypoint", listeners), context(client))
            .await
            .unwrap();
        assert_eq!(action, Action::await_change());
        let seen = seen.lock().unwrap().clone();
        // Nothing deployed: the binding edited, the status written.
        assert_eq!(seen.len(), 3, "{seen:#?}");
        let put = binding_requests(&seen)[1];
        assert_eq!(put.method, "PUT");
        assert_eq!(put.body["subjects"], json!([sa("bank", "waypoint")]));
        let status = &seen[2];
        assert!(status.path.contains("/gateways/waypoint/status?"));
        let conditions = &status.body["status"]["conditions"];
        assert_eq!(conditions[0]["type"], "Accepted");
        assert_eq!(conditions[0]["status"], "False");
        assert_eq!(conditions[0]["reason"], "ListenersNotValid");
        let message = conditions[0]["message"].as_str().unwrap();
        assert!(message.contains(want), "{message}");
        assert!(message.contains("protocol: HBONE"), "{message}");
        assert_eq!(conditions[1]["type"], "Programmed");
        assert_eq!(conditions[1]["status"], "False");
        assert!(status.body["status"].get("addresses").is_none());
    }
}

#[tokio::test]
async fn a_bad_waypoint_for_label_is_refused() {
    let mut gw = (*gateway("mesh-waypoint", hbone())).clone();
    gw.metadata.labels = Some([("istio.io/waypoint-for".into(), "pods".into())].into());
    // Its account was never bound: the binding is read, not written.
    let (client, seen) = api_mock::client(|r| {
        binding_api(r, &json!([sa("bank", "waypoint")])).unwrap_or_else(|| echo(r))
    });
    reconcile_gateway(Arc::new(gw), context(client))
        .await
        .unwrap();
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 2, "{seen:#?}");
    assert_eq!(seen[0].method, "GET");
    let accepted = &seen[1].body["status"]["conditions"][0];
    assert_eq!(accepted["reason"], "Invalid");
    assert!(
        accepted["message"]
            .as_str()
            .unwrap()
            .contains("istio.io/waypoint-for `pods`")
    );
}

#[tokio::test]
async fn an_unchanged_condition_keeps_its_transition_time() {
    let mut gw = (*gateway("mesh-waypoint", hbone())).clone();
    gw.status = Some(gateway_api::GatewayStatus {
        addresses: Vec::new(),
        conditions: vec![gateway_api::Condition {
            type_: "Accepted".into(),
            status: "True".into(),
            reason: "Accepted".into(),
            message: String::new(),
            last_transition_time: "2025-01-01T00:00:00Z".into(),
            observed_generation: Some(2),
        }],
    });
    let (client, seen) = api_mock::client(api(0));
    reconcile_gateway(Arc::new(gw), context(client))
        .await
        .unwrap();
    let seen = seen.lock().unwrap().clone();
    let status = &seen.last().unwrap().body["status"]["conditions"];
    assert_eq!(status[0]["lastTransitionTime"], "2025-01-01T00:00:00Z");
    assert_eq!(status[0]["observedGeneration"], 3);
    assert_ne!(status[1]["lastTransitionTime"], "2025-01-01T00:00:00Z");
}

fn class(controller: &str) -> Arc<GatewayClass> {
    Arc::new(
        serde_json::from_value(json!({
            "apiVersion": "gateway.networking.k8s.io/v1", "kind": "GatewayClass",
            "metadata": {"name": "mesh-waypoint", "generation": 1},
            "spec": {"controllerName": controller}
        }))
        .unwrap(),
    )
}

#[tokio::test]
async fn the_class_naming_the_controller_is_accepted_and_no_other() {
    let (client, seen) = api_mock::client(echo);
    reconcile_class(class("mesh.io/waypoint-controller"), context(client))
        .await
        .unwrap();
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 1);
    assert!(
        seen[0]
            .path
            .starts_with("/apis/gateway.networking.k8s.io/v1/gatewayclasses/mesh-waypoint/status?"),
        "{}",
        seen[0].path
    );
    let accepted = &seen[0].body["status"]["conditions"][0];
    assert_eq!(
        (&accepted["type"], &accepted["status"], &accepted["reason"]),
        (&json!("Accepted"), &json!("True"), &json!("Accepted"))
    );

    let (client, seen) = api_mock::client(|r| panic!("unexpected {} {}", r.method, r.path));
    reconcile_class(class("istio.io/gateway-controller"), context(client))
        .await
        .unwrap();
    assert!(seen.lock().unwrap().is_empty());
}

#[test]
fn the_otlp_endpoint_is_passed_when_set() {
    let mut settings = context_settings();
    settings.otlp_endpoint = Some("http://otel.observability:4317".into());
    let gw = resources::GatewayRef {
        namespace: "shop".into(),
        name: "waypoint".into(),
        uid: "u".into(),
        generation: None,
    };
    let mesh = MeshFacts {
        trust_domain: "td".into(),
        token_audience: "a".into(),
        root_cert_pem: ROOT.into(),
    };
    let args = resources::waypoint_args(&gw, &settings, &mesh);
    assert_eq!(
        args[args.len() - 2..],
        ["--otlp-endpoint", "http://otel.observability:4317"]
    );
}

fn context_settings() -> WaypointSettings {
    WaypointSettings {
        class_name: "mesh-waypoint".into(),
        controller_name: "mesh.io/waypoint-controller".into(),
        image: "img:1".into(),
        image_pull_policy: PullPolicy::Always,
        ca_address: "mesh-ca.mesh-system.svc:15012".into(),
        ca_server_name: "mesh-ca.mesh-system.svc".into(),
        otlp_endpoint: None,
        reader_binding: BINDING.into(),
        waypoint_config: WaypointConfig::default(),
    }
}

#[test]
fn settings_are_checked_naming_the_flag() {
    assert_eq!(context_settings().validate(), Ok(()));
    for (change, flag) in [
        (
            (|s: &mut WaypointSettings| s.class_name = "Mesh_Waypoint".into())
                as fn(&mut WaypointSettings),
            "--waypoint-class",
        ),
        (
            |s| s.controller_name = "waypoint".into(),
            "--waypoint-controller-name",
        ),
        (|s| s.image = String::new(), "--waypoint-image"),
        (
            |s| s.ca_address = "mesh-ca".into(),
            "--ca-address-for-waypoints",
        ),
        (
            |s| s.ca_address = "mesh-ca:0".into(),
            "--ca-address-for-waypoints",
        ),
        (
            |s| s.ca_server_name = "bad name".into(),
            "--ca-server-name-for-waypoints",
        ),
        (
            |s| s.otlp_endpoint = Some("otel:4317".into()),
            "--waypoint-otlp-endpoint",
        ),
        (
            |s| s.reader_binding = String::new(),
            "--waypoint-reader-binding",
        ),
        (
            |s| s.reader_binding = "rbac/mesh-waypoint-reader".into(),
            "--waypoint-reader-binding",
        ),
        (
            |s| s.reader_binding = "..".into(),
            "--waypoint-reader-binding",
        ),
    ] {
        let mut s = context_settings();
        change(&mut s);
        assert_eq!(s.validate().unwrap_err().flag, flag);
    }
    // A release name of Helm's longest (53) plus the suffix: longer than
    // a DNS label, still an RBAC name.
    let mut long = context_settings();
    long.reader_binding = format!("{}-waypoint-reader", "r".repeat(53));
    assert_eq!(long.validate(), Ok(()));
    assert_eq!(
        WaypointSettings::host_of("mesh-ca.mesh-system.svc:15012"),
        "mesh-ca.mesh-system.svc"
    );
    assert_eq!(WaypointSettings::host_of("[fd00::1]:15012"), "fd00::1");
}

#[tokio::test]
async fn an_account_already_bound_is_not_written_again() {
    let (client, seen) = api_mock::client(api_with_readers(
        1,
        json!([sa("shop", "waypoint"), sa("bank", "waypoint")]),
    ));
    reconcile_gateway(gateway("mesh-waypoint", hbone()), context(client))
        .await
        .unwrap();
    let seen = seen.lock().unwrap().clone();
    let binding = binding_requests(&seen);
    assert_eq!(binding.len(), 1, "{seen:#?}");
    assert_eq!(binding[0].method, "GET");
    assert_eq!(seen.len(), 6, "{seen:#?}");
}

#[tokio::test]
async fn a_gateway_being_deleted_loses_its_reader_and_nothing_else_is_done() {
    let mut gw = (*gateway("mesh-waypoint", hbone())).clone();
    gw.metadata.deletion_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
        "2025-01-01T00:00:00Z".parse().unwrap(),
    ));
    let (client, seen) = api_mock::client(|r| {
        binding_api(
            r,
            &json!([
                sa("shop", "waypoint"),
                sa("shop", "other"),
                sa("bank", "waypoint")
            ]),
        )
        .unwrap_or_else(|| panic!("unexpected {} {}", r.method, r.path))
    });
    let action = reconcile_gateway(Arc::new(gw), context(client))
        .await
        .unwrap();
    assert_eq!(action, Action::await_change());
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 2, "{seen:#?}");
    assert_eq!(seen[1].method, "PUT");
    assert_eq!(
        seen[1].body["subjects"],
        json!([sa("shop", "other"), sa("bank", "waypoint")])
    );
}

#[tokio::test]
async fn a_concurrent_write_to_the_binding_is_redone_on_what_is_there() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let puts = Arc::new(AtomicUsize::new(0));
    let gets = Arc::new(AtomicUsize::new(0));
    let (p, g) = (puts.clone(), gets.clone());
    let (client, seen) = api_mock::client(move |r| {
        if r.path.starts_with(BINDING_PATH) {
            return match r.method.as_str() {
                // The second read sees another waypoint bound meanwhile.
                "GET" => match g.fetch_add(1, Ordering::SeqCst) {
                    0 => (StatusCode::OK, binding(json!([]))),
                    _ => (StatusCode::OK, binding(json!([sa("bank", "waypoint")]))),
                },
                _ => match p.fetch_add(1, Ordering::SeqCst) {
                    0 => api_mock::conflict(),
                    _ => (StatusCode::OK, r.body.clone()),
                },
            };
        }
        api(1)(r)
    });
    reconcile_gateway(gateway("mesh-waypoint", hbone()), context(client))
        .await
        .unwrap();
    let seen = seen.lock().unwrap().clone();
    let binding = binding_requests(&seen);
    let methods: Vec<&str> = binding.iter().map(|s| s.method.as_str()).collect();
    assert_eq!(methods, ["GET", "PUT", "GET", "PUT"]);
    assert_eq!(
        binding[3].body["subjects"],
        json!([sa("bank", "waypoint"), sa("shop", "waypoint")])
    );
}

#[tokio::test]
async fn a_missing_binding_fails_the_reconcile_naming_the_flag() {
    let (client, seen) = api_mock::client(|r| {
        assert!(r.path.starts_with(BINDING_PATH), "{} {}", r.method, r.path);
        api_mock::not_found()
    });
    let err = reconcile_gateway(gateway("mesh-waypoint", hbone()), context(client))
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("ClusterRoleBinding mesh-waypoint-reader"),
        "{err}"
    );
    assert!(err.contains("--waypoint-reader-binding"), "{err}");
    // Nothing deployed without read access for it.
    assert_eq!(seen.lock().unwrap().len(), 1);
}

fn named_gateway(namespace: &str, name: &str, class: &str) -> Arc<Gateway> {
    let mut gw = (*gateway(class, hbone())).clone();
    gw.metadata.namespace = Some(namespace.into());
    gw.metadata.name = Some(name.into());
    Arc::new(gw)
}

#[tokio::test]
async fn the_resync_binds_exactly_the_current_waypoints() {
    // Stale: a deleted Gateway's account, a hand-added user; missing: a
    // new waypoint's.
    let (client, seen) = api_mock::client(|r| {
        binding_api(
            r,
            &json!([sa("gone", "waypoint"), sa("shop", "waypoint"),
                    {"kind": "User", "name": "alice", "apiGroup": "rbac.authorization.k8s.io"}]),
        )
        .unwrap_or_else(|| panic!("unexpected {} {}", r.method, r.path))
    });
    let ctx = context(client);
    let gateways = || {
        vec![
            named_gateway("shop", "waypoint", "mesh-waypoint"),
            named_gateway("bank", "waypoint", "mesh-waypoint"),
            named_gateway("shop", "ingress", "istio"),
        ]
    };
    let edited = reader_binding::resync_once(&ctx, gateways).await.unwrap();
    assert_eq!(edited, reader_binding::Edited::Written { subjects: 2 });
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 2, "{seen:#?}");
    assert_eq!(
        seen[1].body["subjects"],
        json!([sa("bank", "waypoint"), sa("shop", "waypoint")])
    );

    // Already exact: read, not written.
    let (client, seen) = api_mock::client(|r| {
        binding_api(r, &json!([sa("shop", "waypoint"), sa("bank", "waypoint")]))
            .unwrap_or_else(|| panic!("unexpected {} {}", r.method, r.path))
    });
    let edited = reader_binding::resync_once(&context(client), gateways)
        .await
        .unwrap();
    assert_eq!(edited, reader_binding::Edited::Unchanged);
    assert_eq!(seen.lock().unwrap().len(), 1);
}

#[tokio::test]
async fn the_resync_reads_the_gateways_after_the_binding() {
    // A Gateway that appears between the read of the binding and the
    // decision is in the decision: the subjects written are never older
    // than the ones they replace.
    use std::sync::atomic::{AtomicBool, Ordering};
    let read = Arc::new(AtomicBool::new(false));
    let r2 = read.clone();
    let (client, seen) = api_mock::client(move |r| {
        r2.store(true, Ordering::SeqCst);
        binding_api(r, &json!([])).unwrap()
    });
    let edited = reader_binding::resync_once(&context(client), || {
        assert!(read.load(Ordering::SeqCst), "the Gateways were read first");
        vec![named_gateway("shop", "waypoint", "mesh-waypoint")]
    })
    .await
    .unwrap();
    assert_eq!(edited, reader_binding::Edited::Written { subjects: 1 });
    assert_eq!(seen.lock().unwrap().len(), 2);
}

const PROVIDERS: &str = "extensionProviders:\n- name: authz\n  envoyExtAuthzGrpc:\n    service: authz.auth.svc.cluster.local\n    port: 9000\n";

fn context_with(client: Client, config: WaypointConfig) -> Arc<Context> {
    let mut ctx = Arc::into_inner(context(client)).unwrap();
    ctx.settings.waypoint_config = config;
    Arc::new(ctx)
}

fn providers(text: &str, refresh: Option<std::time::Duration>) -> WaypointConfig {
    WaypointConfig::from_texts(
        Some((text, std::path::Path::new("providers.yaml"))),
        None,
        refresh,
    )
    .unwrap()
}

/// The Deployment the controller applies for the Gateway under `config`,
/// and the waypoint ConfigMap, if it applied one.
async fn applied_with(config: WaypointConfig) -> (Value, Option<Value>) {
    let (client, seen) = api_mock::client(api(1));
    reconcile_gateway(
        gateway("mesh-waypoint", hbone()),
        context_with(client, config),
    )
    .await
    .unwrap();
    let seen = seen.lock().unwrap().clone();
    let deployment = find(&seen, "/apis/apps/v1/namespaces/shop/deployments/waypoint?");
    let config_at = seen.iter().position(|s| {
        s.path
            .starts_with("/api/v1/namespaces/shop/configmaps/waypoint-waypoint-config?")
    });
    if let Some(at) = config_at {
        let deployment_at = seen
            .iter()
            .position(|s| std::ptr::eq(s, deployment))
            .unwrap();
        assert!(at < deployment_at, "the ConfigMap goes first: {seen:#?}");
        assert_eq!(manager(&seen[at]), FIELD_MANAGER);
    }
    (
        deployment.body.clone(),
        config_at.map(|at| seen[at].body.clone()),
    )
}

#[tokio::test]
async fn extension_providers_reach_the_waypoint_through_its_own_config_map() {
    let (deploy, config) = applied_with(providers(
        PROVIDERS,
        Some(std::time::Duration::from_secs(600)),
    ))
    .await;
    let config = config.expect("a waypoint ConfigMap");
    owned_by_the_gateway(&config, true);
    assert_eq!(config["metadata"]["namespace"], "shop");
    assert_eq!(
        config["data"],
        json!({"extension-providers.yaml": PROVIDERS})
    );

    let pod = &deploy["spec"]["template"];
    assert_eq!(
        pod["metadata"]["annotations"]["mesh.io/waypoint-config-hash"]
            .as_str()
            .map(str::len),
        Some(64)
    );
    let c = &pod["spec"]["containers"][0];
    let args: Vec<&str> = c["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    assert_eq!(
        args[args.len() - 4..],
        [
            "--extension-providers",
            "/etc/mesh/waypoint/extension-providers.yaml",
            "--jwks-refresh",
            "10m"
        ]
    );
    assert!(!args.contains(&"--jwks-ca-file"), "{args:?}");
    assert_eq!(
        c["volumeMounts"][2],
        json!({"name": "waypoint-config", "mountPath": "/etc/mesh/waypoint", "readOnly": true})
    );
    assert_eq!(
        pod["spec"]["volumes"][2],
        json!({"name": "waypoint-config", "configMap": {"name": "waypoint-waypoint-config"}})
    );
}

#[tokio::test]
async fn a_jwks_ca_is_mounted_and_named() {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let pem = rcgen::CertificateParams::new(vec!["issuer.example".to_owned()])
        .unwrap()
        .self_signed(&key)
        .unwrap()
        .pem();
    let config =
        WaypointConfig::from_texts(None, Some((&pem, std::path::Path::new("ca.pem"))), None)
            .unwrap();
    let (deploy, config) = applied_with(config).await;
    assert_eq!(config.unwrap()["data"], json!({"jwks-ca.pem": pem}));
    let args = &deploy["spec"]["template"]["spec"]["containers"][0]["args"];
    let args: Vec<&str> = args
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    assert_eq!(
        args[args.len() - 2..],
        ["--jwks-ca-file", "/etc/mesh/waypoint/jwks-ca.pem"]
    );
}

#[tokio::test]
async fn a_changed_provider_list_changes_the_pod_template() {
    let (before, _) = applied_with(providers(PROVIDERS, None)).await;
    let (same, _) = applied_with(providers(PROVIDERS, None)).await;
    let (after, config) = applied_with(providers(&PROVIDERS.replace("9000", "9001"), None)).await;
    let template = |d: &Value| d["spec"]["template"].clone();
    assert_eq!(template(&before), template(&same));
    assert_ne!(template(&before), template(&after));
    assert_ne!(
        before["spec"]["template"]["metadata"]["annotations"]["mesh.io/waypoint-config-hash"],
        after["spec"]["template"]["metadata"]["annotations"]["mesh.io/waypoint-config-hash"]
    );
    assert!(
        config.unwrap()["data"]["extension-providers.yaml"]
            .as_str()
            .unwrap()
            .contains("9001")
    );
}

#[tokio::test]
async fn without_the_settings_there_is_no_waypoint_config() {
    let (deploy, config) = applied_with(WaypointConfig::default()).await;
    assert_eq!(config, None);
    let pod = &deploy["spec"]["template"];
    assert!(
        pod["metadata"]["annotations"]
            .get("mesh.io/waypoint-config-hash")
            .is_none()
    );
    assert_eq!(pod["spec"]["volumes"].as_array().unwrap().len(), 2);
    let args = pod["spec"]["containers"][0]["args"].to_string();
    assert!(
        !args.contains("--extension-providers") && !args.contains("--jwks"),
        "{args}"
    );
}
