//! `mesh waypoint` and the waypoint lines of `mesh inspect`: local mode
//! against node files with Gateways; Kubernetes mode against kube's
//! tower_test mock (the requests `apply` sends, and `status` from lists of
//! every kind the agents watch plus the Gateways' status).
use std::path::Path;

use clap::Parser;
use http::{Method, StatusCode};
use mesh_discovery::{NodeConfig, model::WaypointFor};
use serde_json::{Value, json};

use super::{
    apply::{self, Step},
    gateways,
    manifest::WaypointDeclaration,
    status,
};
use crate::{
    Cli, inspect,
    output::Format,
    testing::{kube_cluster, list, mock, not_found},
};

const NODE_FILE: &str = r#"
kind: AgentConfig
nodeName: n1
---
apiVersion: v1
kind: Namespace
metadata: {name: shop, labels: {mesh.io/dataplane-mode: enabled, istio.io/use-waypoint: wp}}
---
apiVersion: v1
kind: Namespace
metadata: {name: infra, labels: {mesh.io/dataplane-mode: enabled}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: wp, namespace: shop, labels: {istio.io/waypoint-for: all}}
spec:
  gatewayClassName: mesh-waypoint
  listeners: [{name: mesh, port: 15008, protocol: HBONE}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: nolistener, namespace: shop}
spec:
  gatewayClassName: mesh-waypoint
  listeners: [{name: http, port: 80, protocol: HTTP}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: idle, namespace: infra}
spec:
  gatewayClassName: mesh-waypoint
  listeners: [{name: mesh, port: 15008, protocol: HBONE}]
---
apiVersion: v1
kind: Pod
metadata: {name: wp-0, namespace: shop, labels: {gateway.networking.k8s.io/gateway-name: wp}}
spec: {nodeName: n2, serviceAccountName: wp, containers: [{name: c}]}
status: {podIPs: [{ip: 10.1.0.8}]}
---
apiVersion: v1
kind: Pod
metadata: {name: web-1, namespace: shop, labels: {app: web}}
spec: {nodeName: n2, containers: [{name: c}]}
status: {podIPs: [{ip: 10.1.0.1}]}
---
apiVersion: v1
kind: Pod
metadata: {name: db-1, namespace: shop, labels: {app: db, istio.io/use-waypoint: none}}
spec: {nodeName: n2, containers: [{name: c}]}
status: {podIPs: [{ip: 10.1.0.2}]}
---
apiVersion: v1
kind: Pod
metadata: {name: job-1, namespace: infra, labels: {app: job, istio.io/use-waypoint: gone}}
spec: {nodeName: n2, containers: [{name: c}]}
status: {podIPs: [{ip: 10.1.0.3}]}
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: shop, labels: {mesh.io/require-waypoint: "true"}}
spec:
  clusterIP: 10.96.0.1
  selector: {app: web}
  ports: [{name: http, port: 80, targetPort: 8080}]
---
apiVersion: v1
kind: Service
metadata: {name: db, namespace: shop, labels: {istio.io/use-waypoint: nolistener}}
spec: {clusterIP: 10.96.0.2, selector: {app: db}, ports: [{port: 5432}]}
"#;

fn local() -> NodeConfig {
    NodeConfig::parse(Path::new("node.yaml"), NODE_FILE, None).unwrap()
}

fn lines(text: &str) -> Vec<&str> {
    text.lines().collect()
}

#[test]
fn local_status_lists_waypoints_their_users_and_what_cannot_be_used() {
    let cfg = local();
    let view = cfg.view();
    let report = status::report(
        &view,
        &gateways::from_store(&cfg.store),
        "mesh-waypoint",
        None,
    );
    assert!(!report.healthy());
    let wp = &report.waypoints[1];
    assert_eq!(wp.gateway, "shop/wp");
    assert_eq!(wp.waypoint_for, WaypointFor::All);
    assert_eq!(wp.services, ["shop/web"]);
    assert_eq!(wp.namespaces, ["shop"]);
    // db-1 opts out; the waypoint's own pod is not a user.
    assert_eq!(wp.pods, ["shop/web-1"]);
    let text = status::render(Format::Table, &report).unwrap();
    let l = lines(&text);
    assert_eq!(l[0], "WAYPOINT    FOR      READY  ADDRESSES       IDENTITY");
    assert_eq!(l[1], "infra/idle  service  0      -               -");
    assert_eq!(
        l[2],
        "shop/wp     all      1      10.1.0.8:15008  spiffe://cluster.local/ns/shop/sa/wp"
    );
    for expected in [
        "shop/wp is used by services shop/web; namespaces shop; pod shop/web-1",
        "note: waypoint infra/idle is used by nothing: label a namespace, Service or pod istio.io/use-waypoint=idle",
        "problem: service shop/db: waypoint shop/nolistener cannot be used: the Gateway has no listener {port: 15008, protocol: HBONE} — connections are refused",
        "problem: pod infra/job-1: waypoint infra/gone cannot be used: no such Gateway — connections are refused",
        "problem: Gateway shop/nolistener (class mesh-waypoint) is not a waypoint: it has no listener {port: 15008, protocol: HBONE}; add {name: mesh, port: 15008, protocol: HBONE} to spec.listeners",
        "problem: waypoint infra/idle has no ready pod: connections through it are refused",
    ] {
        assert!(l.contains(&expected), "missing {expected:?} in\n{text}");
    }
}

#[test]
fn local_status_for_one_namespace_leaves_the_others_out() {
    let cfg = local();
    let view = cfg.view();
    let report = status::report(
        &view,
        &gateways::from_store(&cfg.store),
        "mesh-waypoint",
        Some("infra"),
    );
    let names: Vec<_> = report
        .waypoints
        .iter()
        .map(|w| w.gateway.as_str())
        .collect();
    assert_eq!(names, ["infra/idle"]);
    assert_eq!(report.problems.len(), 2, "{:?}", report.problems);
    assert!(report.problems.iter().all(|p| p.contains("infra/")));
}

#[test]
fn inspect_shows_the_waypoint_in_a_services_path_and_a_pods() {
    let view = local().view();
    let web = inspect::inspect(&view, "shop/web").unwrap();
    let text = inspect::render(Format::Table, &web).unwrap();
    let l = lines(&text);
    assert!(
        l.contains(
            &"waypoint: through waypoint shop/wp (10.1.0.8:15008, spiffe://cluster.local/ns/shop/sa/wp)"
        ),
        "{text}"
    );
    assert!(
        l.iter()
            .any(|l| l.starts_with("shop/web-1  through waypoint shop/wp")
                && l.ends_with(
                    "yes (shop/wp): only spiffe://cluster.local/ns/shop/sa/wp may connect directly"
                )),
        "{text}"
    );
    // Only the waypoint may connect directly; the rest are refused first.
    let verdict = |peer: &str| {
        web.inbound
            .iter()
            .find(|r| r.peer == peer)
            .map(|r| (r.verdict, r.reason.clone()))
            .unwrap()
    };
    assert_eq!(verdict("spiffe://cluster.local/ns/shop/sa/wp").0, "allow");
    let (v, reason) = verdict("spiffe://cluster.local/ns/shop/sa/default");
    assert_eq!(v, "deny");
    assert!(
        reason.contains("requires its waypoint (shop/wp"),
        "{reason}"
    );
    assert_eq!(verdict("plaintext").0, "deny");

    let db = inspect::render(Format::Table, &inspect::inspect(&view, "shop/db").unwrap()).unwrap();
    assert!(
        lines(&db).contains(&"waypoint: waypoint shop/nolistener cannot be used: the Gateway has no listener {port: 15008, protocol: HBONE} — connections are refused"),
        "{db}"
    );
    assert!(
        lines(&db)
            .iter()
            .any(|l| l.starts_with("shop/db-1") && l.contains("direct (no waypoint)")),
        "{db}"
    );
    let job = inspect::render(
        Format::Table,
        &inspect::inspect(&view, "infra/job-1").unwrap(),
    )
    .unwrap();
    assert!(
        job.contains(
            "waypoint infra/gone cannot be used: no such Gateway — connections are refused"
        ),
        "{job}"
    );
    let wp0 = inspect::render(
        Format::Table,
        &inspect::inspect(&view, "shop/wp-0").unwrap(),
    )
    .unwrap();
    assert!(
        wp0.contains("is a pod of waypoint shop/wp (never enrolled)"),
        "{wp0}"
    );
}

#[tokio::test]
async fn local_apply_prints_the_gateway_with_what_to_do_with_it() {
    let dir = std::env::temp_dir().join(format!("mesh-cli-waypoint-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("node.yaml");
    std::fs::write(&file, NODE_FILE).unwrap();
    let cli = Cli::parse_from([
        "mesh",
        "--config",
        file.to_str().unwrap(),
        "waypoint",
        "apply",
        "-n",
        "shop",
        "--name",
        "edge",
        "--for",
        "workload",
        "--enroll-namespace",
    ]);
    let out = crate::run(cli).await.unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    let l = lines(&out.text);
    assert_eq!(
        l[0],
        "# Local mode: nothing was applied. Paste this Gateway into every node's file"
    );
    assert!(
        l.contains(&"#   istio.io/use-waypoint: edge"),
        "{}",
        out.text
    );
    let yaml = &out.text[out.text.find("---\n").unwrap()..];
    let doc: Value = serde_yaml::from_str(yaml).unwrap();
    assert_eq!(
        doc,
        json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
               "metadata": {"name": "edge", "namespace": "shop",
                            "labels": {"istio.io/waypoint-for": "workload"}},
               "spec": {"gatewayClassName": "mesh-waypoint",
                        "listeners": [{"name": "mesh", "port": 15008, "protocol": "HBONE"}]}})
    );
    // What it prints is what the agents read back as a waypoint.
    let with = format!("{NODE_FILE}\n{yaml}");
    let view = NodeConfig::parse(Path::new("node.yaml"), &with, None)
        .unwrap()
        .view();
    assert!(view.waypoint("shop/edge").is_some());
}

fn decl(name: &str) -> WaypointDeclaration {
    WaypointDeclaration::new("shop", name, "mesh-waypoint", WaypointFor::Service).unwrap()
}

#[tokio::test]
async fn apply_patches_the_gateway_by_server_side_apply_then_labels_the_namespace() {
    let (client, seen) = mock(|method, path, _| match (method.as_str(), path) {
        ("PATCH", "/apis/gateway.networking.k8s.io/v1/namespaces/shop/gateways/wp") => Some((
            StatusCode::OK,
            json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
                   "metadata": {"name": "wp", "namespace": "shop"}}),
        )),
        ("GET", "/apis/gateway.networking.k8s.io/v1/gatewayclasses/mesh-waypoint") => {
            Some(not_found(
                "gatewayclasses \"mesh-waypoint\" not found",
                json!({"name": "mesh-waypoint", "kind": "gatewayclasses"}),
            ))
        }
        ("PATCH", "/api/v1/namespaces/shop") => Some((
            StatusCode::OK,
            json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "shop"}}),
        )),
        _ => Some(not_found("unexpected", json!({}))),
    });
    let applied = apply::apply(&client, &decl("wp"), true, "mesh-system")
        .await
        .unwrap();
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 3, "{seen:#?}");
    let gw = &seen[0];
    assert_eq!(gw.method, Method::PATCH);
    assert_eq!(
        gw.uri,
        "/apis/gateway.networking.k8s.io/v1/namespaces/shop/gateways/wp?&force=true&fieldManager=mesh"
    );
    assert_eq!(gw.content_type, "application/apply-patch+yaml");
    assert_eq!(
        gw.body,
        json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
               "metadata": {"name": "wp", "namespace": "shop",
                            "labels": {"istio.io/waypoint-for": "service"}},
               "spec": {"gatewayClassName": "mesh-waypoint",
                        "listeners": [{"name": "mesh", "port": 15008, "protocol": "HBONE"}]}})
    );
    let ns = &seen[2];
    assert_eq!(
        (ns.method.as_str(), ns.uri.as_str()),
        ("PATCH", "/api/v1/namespaces/shop?")
    );
    assert_eq!(ns.content_type, "application/merge-patch+json");
    assert_eq!(
        ns.body,
        json!({"metadata": {"labels": {"istio.io/use-waypoint": "wp"}}})
    );
    let text = apply::render(Format::Table, &applied).unwrap();
    let l = lines(&text);
    assert_eq!(
        l[0],
        "waypoint shop/wp applied (Gateway, class mesh-waypoint, for service)"
    );
    assert_eq!(l[1], "namespace shop labelled istio.io/use-waypoint=wp");
    assert!(
        l[2].starts_with(
            "note: GatewayClass mesh-waypoint does not exist: no controller deploys this waypoint"
        ),
        "{text}"
    );
}

#[tokio::test]
async fn apply_without_gateway_crds_or_namespace_says_what_to_do() {
    let (client, seen) = mock(|_, _, _| {
        Some(not_found(
            "the server could not find the requested resource",
            json!({}),
        ))
    });
    let e = apply::apply(&client, &decl("wp"), true, "mesh-system")
        .await
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("the Gateway API CRDs are not installed")
            && e.contains("helm upgrade mesh charts/mesh -n mesh-system --reuse-values --set gatewayAPI.installCRDs=true"),
        "{e}"
    );
    // Nothing after the Gateway's refusal.
    assert_eq!(seen.lock().unwrap().len(), 1);

    let status: kube::core::Status = serde_json::from_value(
        not_found(
            "namespaces \"typo\" not found",
            json!({"name": "typo", "kind": "namespaces"}),
        )
        .1,
    )
    .unwrap();
    let typo =
        WaypointDeclaration::new("typo", "wp", "mesh-waypoint", WaypointFor::Service).unwrap();
    assert_eq!(
        apply::explain_status(Step::Gateway, &status, &typo, "mesh-system"),
        "-n typo: namespace typo does not exist; create it or name another"
    );
}

fn pod(name: &str, ip: &str, sa: &str, labels: Value) -> Value {
    json!({"apiVersion": "v1", "kind": "Pod",
           "metadata": {"name": name, "namespace": "shop", "uid": format!("uid-{name}"),
                        "resourceVersion": "1", "labels": labels},
           "spec": {"nodeName": "node-1", "serviceAccountName": sa, "containers": []},
           "status": {"podIPs": [{"ip": ip}], "conditions": [{"type": "Ready", "status": "True"}]}})
}

fn gateway(name: &str, programmed: Value) -> Value {
    json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
           "metadata": {"name": name, "namespace": "shop", "resourceVersion": "1",
                        "labels": {"istio.io/waypoint-for": "service"}},
           "spec": {"gatewayClassName": "mesh-waypoint",
                    "listeners": [{"name": "mesh", "port": 15008, "protocol": "HBONE"}]},
           "status": {"conditions": [
               {"type": "Accepted", "status": "True", "reason": "Accepted", "message": ""},
               programmed]}})
}

/// The cluster of the local file's shop namespace, as the API lists it.
fn kube_answer(method: &Method, path: &str, watch: bool) -> Option<(StatusCode, Value)> {
    if watch {
        return None;
    }
    let ok = |v| Some((StatusCode::OK, v));
    match (method.as_str(), path) {
        ("GET", "/api/v1/pods") => ok(list(
            "Pod",
            "v1",
            vec![
                pod(
                    "wp-0",
                    "10.1.0.8",
                    "wp",
                    json!({"gateway.networking.k8s.io/gateway-name": "wp"}),
                ),
                pod("web-1", "10.1.0.1", "web", json!({"app": "web"})),
            ],
        )),
        ("GET", "/api/v1/services") => ok(list(
            "Service",
            "v1",
            vec![json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": "web", "namespace": "shop", "resourceVersion": "1"},
            "spec": {"clusterIP": "10.96.0.1", "selector": {"app": "web"},
                     "ports": [{"name": "http", "port": 80, "targetPort": 8080}]}})],
        )),
        ("GET", "/api/v1/namespaces") => ok(list(
            "Namespace",
            "v1",
            vec![json!({
            "apiVersion": "v1", "kind": "Namespace",
            "metadata": {"name": "shop", "resourceVersion": "1",
                         "labels": {"mesh.io/dataplane-mode": "enabled",
                                    "istio.io/use-waypoint": "wp"}}})],
        )),
        (
            "GET",
            "/apis/gateway.networking.k8s.io/v1/gateways"
            | "/apis/gateway.networking.k8s.io/v1/namespaces/shop/gateways",
        ) => ok(list(
            "Gateway",
            "gateway.networking.k8s.io/v1",
            vec![
                gateway(
                    "wp",
                    json!({"type": "Programmed", "status": "True", "reason": "Programmed", "message": "deployed"}),
                ),
                gateway(
                    "next",
                    json!({"type": "Programmed", "status": "False", "reason": "Pending",
                                       "message": "Deployment shop/next has no available replica"}),
                ),
            ],
        )),
        ("GET", p) if p.starts_with("/api") => ok(list("Any", "v1", vec![])),
        _ => Some(not_found("unexpected", json!({}))),
    }
}

#[tokio::test]
async fn kubernetes_status_reads_the_view_and_the_gateways_programmed_condition() {
    let (client, seen) = mock(kube_answer);
    let cli = Cli::parse_from(["mesh", "waypoint", "status", "-n", "shop"]);
    let out = tokio::time::timeout(
        std::time::Duration::from_secs(20),
        crate::waypoint_status(&cli, &kube_cluster(client), Some("shop")),
    )
    .await
    .expect("bounded")
    .unwrap();
    assert!(!out.ok, "a waypoint that is not programmed is a problem");
    let l = lines(&out.text);
    assert_eq!(
        l[0],
        "WAYPOINT   FOR      READY  ADDRESSES       IDENTITY                              PROGRAMMED"
    );
    assert_eq!(
        l[1],
        "shop/next  service  0      -               -                                     False"
    );
    assert_eq!(
        l[2],
        "shop/wp    service  1      10.1.0.8:15008  spiffe://cluster.local/ns/shop/sa/wp  True"
    );
    for expected in [
        "shop/wp is used by services shop/web; namespaces shop",
        "problem: waypoint shop/next is not programmed: Pending: Deployment shop/next has no available replica",
        "problem: waypoint shop/next has no ready pod: connections through it are refused",
    ] {
        assert!(
            l.contains(&expected),
            "missing {expected:?} in\n{}",
            out.text
        );
    }
    // -n lists the Gateways of that namespace only.
    assert!(seen.lock().unwrap().iter().any(|s| {
        s.uri
            .starts_with("/apis/gateway.networking.k8s.io/v1/namespaces/shop/gateways?")
    }),);
}

#[tokio::test]
async fn kubernetes_status_without_gateway_crds_has_no_waypoints_and_says_how_to_install_them() {
    let (client, _) = mock(|method, path, watch| {
        if path.starts_with("/apis/gateway.networking.k8s.io/") && !watch {
            return Some(not_found(
                "the server could not find the requested resource",
                json!({}),
            ));
        }
        kube_answer(method, path, watch)
    });
    let cli = Cli::parse_from(["mesh", "waypoint", "status"]);
    let out = tokio::time::timeout(
        std::time::Duration::from_secs(20),
        crate::waypoint_status(&cli, &kube_cluster(client), None),
    )
    .await
    .expect("bounded")
    .unwrap();
    let l = lines(&out.text);
    assert_eq!(l[0], "no waypoints (Gateways of class mesh-waypoint)");
    // The namespace names a waypoint that does not exist: its Service is refused.
    assert!(
        l.contains(&"problem: service shop/web: waypoint shop/wp cannot be used: no such Gateway — connections are refused"),
        "{}",
        out.text
    );
    assert!(
        out.text.contains("--set gatewayAPI.installCRDs=true"),
        "{}",
        out.text
    );
    assert!(!out.ok);
}
