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
    *,
};
use crate::api_mock::{self, Seen};

const ROOT: &str = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n";

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
    move |r: &Seen| {
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
    assert_eq!(seen.len(), 5, "{seen:#?}");

    let cm = find(
        &seen,
        "/api/v1/namespaces/shop/configmaps/mesh-ca-root-cert?",
    );
    assert_eq!(cm.body["data"]["root-cert.pem"], ROOT);
    owned_by_the_gateway(&cm.body, false);
    assert_eq!(manager(cm), format!("{FIELD_MANAGER}/u-1"));

    let sa = find(&seen, "/api/v1/namespaces/shop/serviceaccounts/waypoint?");
    assert_eq!(sa.body["kind"], "ServiceAccount");
    owned_by_the_gateway(&sa.body, true);
    assert_eq!(manager(sa), FIELD_MANAGER);

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
        let (client, seen) = api_mock::client(echo);
        let action = reconcile_gateway(gateway("mesh-waypoint", listeners), context(client))
            .await
            .unwrap();
        assert_eq!(action, Action::await_change());
        let seen = seen.lock().unwrap().clone();
        // Nothing deployed: only the status is written.
        assert_eq!(seen.len(), 1, "{seen:#?}");
        assert!(seen[0].path.contains("/gateways/waypoint/status?"));
        let conditions = &seen[0].body["status"]["conditions"];
        assert_eq!(conditions[0]["type"], "Accepted");
        assert_eq!(conditions[0]["status"], "False");
        assert_eq!(conditions[0]["reason"], "ListenersNotValid");
        let message = conditions[0]["message"].as_str().unwrap();
        assert!(message.contains(want), "{message}");
        assert!(message.contains("protocol: HBONE"), "{message}");
        assert_eq!(conditions[1]["type"], "Programmed");
        assert_eq!(conditions[1]["status"], "False");
        assert!(seen[0].body["status"].get("addresses").is_none());
    }
}

#[tokio::test]
async fn a_bad_waypoint_for_label_is_refused() {
    let mut gw = (*gateway("mesh-waypoint", hbone())).clone();
    gw.metadata.labels = Some([("istio.io/waypoint-for".into(), "pods".into())].into());
    let (client, seen) = api_mock::client(echo);
    reconcile_gateway(Arc::new(gw), context(client))
        .await
        .unwrap();
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 1);
    let accepted = &seen[0].body["status"]["conditions"][0];
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
    ] {
        let mut s = context_settings();
        change(&mut s);
        assert_eq!(s.validate().unwrap_err().flag, flag);
    }
    assert_eq!(
        WaypointSettings::host_of("mesh-ca.mesh-system.svc:15012"),
        "mesh-ca.mesh-system.svc"
    );
    assert_eq!(WaypointSettings::host_of("[fd00::1]:15012"), "fd00::1");
}
