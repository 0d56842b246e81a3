//! The Kubernetes side of the CA against kube's documented mock: a
//! `tower_test` service behind `kube::Client`, answering as the API server
//! would.
use http::{Request, Response, StatusCode};
use kube::client::Body;
use serde_json::{Value, json};

use super::*;

type Handle = tower_test::mock::Handle<Request<Body>, Response<Body>>;

/// A client whose API server answers each request with `respond`, which
/// sees the method, the path with query, and the JSON body.
pub(crate) fn client(
    respond: impl Fn(&str, &str, Value) -> (StatusCode, Value) + Send + 'static,
) -> (Client, tokio::task::JoinHandle<Vec<String>>) {
    let (service, mut handle): (_, Handle) = tower_test::mock::pair();
    let server = tokio::spawn(async move {
        let mut seen = Vec::new();
        while let Some((request, send)) = handle.next_request().await {
            let method = request.method().to_string();
            let path = request.uri().to_string();
            let bytes = request.into_body().collect_bytes().await.unwrap();
            let body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
            seen.push(format!("{method} {path}"));
            let (status, answer) = respond(&method, &path, body);
            send.send_response(
                Response::builder()
                    .status(status)
                    .body(Body::from(serde_json::to_vec(&answer).unwrap()))
                    .unwrap(),
            );
        }
        seen
    });
    (Client::new(service, "default"), server)
}

pub(crate) fn settings() -> KubernetesSettings {
    KubernetesSettings {
        root_secret: SecretRef {
            namespace: "mesh-system".into(),
            name: "mesh-ca-root".into(),
        },
        token_audience: "mesh-ca".into(),
        agent_service_account: "mesh-system/mesh-agent".into(),
        create_root: true,
        root_cert_config_map: None,
    }
}

/// A TokenReview answer; a token bound to a node is bound to a pod on it.
fn review(authenticated: bool, user: &str, node: Option<&str>) -> Value {
    let extra = match node {
        Some(n) => json!({ NODE_NAME_EXTRA: [n], POD_NAME_EXTRA: ["p-0"] }),
        None => json!({}),
    };
    review_with(authenticated, user, extra)
}

pub(crate) fn review_with(authenticated: bool, user: &str, extra: Value) -> Value {
    json!({
        "apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview",
        "spec": {"token": "x"},
        "status": {"authenticated": authenticated, "audiences": ["mesh-ca"],
                   "user": {"username": user, "extra": extra}}
    })
}

#[tokio::test]
async fn token_review_names_the_node_of_the_agents_service_account() {
    let (c, server) = client(|method, path, body| {
        assert_eq!(method, "POST");
        assert!(
            path.starts_with("/apis/authentication.k8s.io/v1/tokenreviews"),
            "{path}"
        );
        assert_eq!(body["spec"]["token"], "agent-token");
        assert_eq!(body["spec"]["audiences"], json!(["mesh-ca"]));
        (
            StatusCode::CREATED,
            review(
                true,
                "system:serviceaccount:mesh-system:mesh-agent",
                Some("n1"),
            ),
        )
    });
    let authority = KubeAuthority::new(c, &settings()).unwrap();
    let caller = authority
        .authenticate(Some("Bearer agent-token"))
        .await
        .unwrap();
    assert_eq!(caller, agent("n1"));
    assert_eq!(
        authority.authenticate(None).await.unwrap_err(),
        AuthzError::NoToken
    );
    drop(authority);
    assert_eq!(server.await.unwrap().len(), 1);
}

#[tokio::test]
async fn token_review_refusals() {
    for (answer, want) in [
        (review(false, "", None), "not authenticated"),
        (
            review(true, "system:node:n1", Some("n1")),
            "system:node:n1 is not a service account",
        ),
        (
            review(true, "system:serviceaccount:mesh-system:mesh-agent", None),
            "node-name",
        ),
        // A workload's token minted for no pod (e.g. `kubectl create token`).
        (
            review(true, "system:serviceaccount:shop:waypoint", None),
            "system:serviceaccount:shop:waypoint: token is not bound to a pod",
        ),
    ] {
        let (c, _server) = client(move |_, _, _| (StatusCode::CREATED, answer.clone()));
        let authority = KubeAuthority::new(c, &settings()).unwrap();
        let e = authority.authenticate(Some("Bearer t")).await.unwrap_err();
        assert!(matches!(e, AuthzError::Rejected(_)), "{e}");
        assert!(e.to_string().contains(want), "{e}");
    }
    // The API server failing is not the caller's fault: unavailable, retried by the agent.
    let (c, _server) = client(|_, _, _| {
        (
            StatusCode::INTERNAL_SERVER_ERROR,
            json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "message": "etcd down", "reason": "InternalError", "code": 500}),
        )
    });
    let e = KubeAuthority::new(c, &settings())
        .unwrap()
        .authenticate(Some("Bearer t"))
        .await
        .unwrap_err();
    assert!(matches!(e, AuthzError::Backend(_)), "{e}");
    assert_eq!(e.status().code(), tonic::Code::Unavailable);
}

#[tokio::test]
async fn identities_come_from_running_pods_on_the_node() {
    let (c, server) = client(|method, path, _| {
        assert_eq!(method, "GET");
        assert!(path.starts_with("/api/v1/namespaces/shop/pods?"), "{path}");
        assert!(path.contains("fieldSelector=spec.nodeName%3Dn1"), "{path}");
        (
            StatusCode::OK,
            json!({"apiVersion": "v1", "kind": "PodList", "metadata": {}, "items": [
                {"metadata": {"name": "web-0", "namespace": "shop"},
                 "spec": {"serviceAccountName": "web", "containers": []},
                 "status": {"phase": "Running"}},
                {"metadata": {"name": "job-0", "namespace": "shop"},
                 "spec": {"serviceAccountName": "batch", "containers": []},
                 "status": {"phase": "Succeeded"}}
            ]}),
        )
    });
    let authority = KubeAuthority::new(c, &settings()).unwrap();
    let id = |sa| Identity::new("cluster.local", "shop", sa).unwrap();
    authority.scheduled_on("n1", &id("web")).await.unwrap();
    let e = authority
        .scheduled_on("n1", &id("batch"))
        .await
        .unwrap_err();
    assert!(
        matches!(e, AuthzError::NotOnNode { .. }),
        "finished pods hold no identity: {e}"
    );
    let e = authority.scheduled_on("n1", &id("db")).await.unwrap_err();
    assert!(matches!(e, AuthzError::NotOnNode { .. }), "{e}");
    drop(authority);
    assert_eq!(server.await.unwrap().len(), 3);
}

#[tokio::test]
async fn root_secret_is_created_when_absent_then_loaded() {
    let created = std::sync::Arc::new(std::sync::Mutex::new(None::<Value>));
    let store = created.clone();
    let (c, server) = client(move |method, path, body| {
        assert!(
            path.starts_with("/api/v1/namespaces/mesh-system/secrets"),
            "{path}"
        );
        match method {
            "GET" => (
                StatusCode::NOT_FOUND,
                json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound", "code": 404, "message": "not found"}),
            ),
            "POST" => {
                *store.lock().unwrap() = Some(body.clone());
                (StatusCode::CREATED, body)
            }
            other => panic!("unexpected {other}"),
        }
    });
    let root = root_from_secret(c, &settings().root_secret, true, "cluster.local")
        .await
        .unwrap();
    assert!(root.cert_pem.contains("BEGIN CERTIFICATE"));
    let body = created.lock().unwrap().clone().unwrap();
    assert_eq!(body["metadata"]["name"], "mesh-ca-root");
    assert!(
        body["data"][KEY_KEY].is_string(),
        "key stored base64 in data: {body}"
    );
    assert_eq!(
        server.await.unwrap(),
        [
            "GET /api/v1/namespaces/mesh-system/secrets/mesh-ca-root",
            "POST /api/v1/namespaces/mesh-system/secrets?"
        ]
    );
}

#[tokio::test]
async fn a_missing_root_secret_or_field_is_named() {
    let (c, _server) = client(|_, _, _| {
        (
            StatusCode::NOT_FOUND,
            json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound", "code": 404, "message": "not found"}),
        )
    });
    let e = root_from_secret(c, &settings().root_secret, false, "cluster.local")
        .await
        .err()
        .unwrap();
    assert!(
        e.to_string()
            .contains("Secret mesh-system/mesh-ca-root: not found"),
        "{e}"
    );
    let (c, _server) = client(|_, _, _| {
        (
            StatusCode::OK,
            json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "mesh-ca-root", "namespace": "mesh-system"}, "data": {CERT_KEY: "eA=="}}),
        )
    });
    let e = root_from_secret(c, &settings().root_secret, false, "cluster.local")
        .await
        .err()
        .unwrap();
    assert!(e.to_string().contains("has no `ca-key.pem`"), "{e}");
}

#[tokio::test]
async fn the_root_certificate_alone_is_published_to_a_config_map() {
    let sent = std::sync::Arc::new(std::sync::Mutex::new(None::<Value>));
    let store = sent.clone();
    let (c, server) = client(move |method, path, body| {
        assert_eq!(method, "PATCH", "{path}");
        *store.lock().unwrap() = Some(body.clone());
        (StatusCode::OK, body)
    });
    let target = SecretRef {
        namespace: "mesh-system".into(),
        name: "mesh-root-cert".into(),
    };
    publish_root_cert(
        c,
        &target,
        "-----BEGIN CERTIFICATE-----\nx\n-----END CERTIFICATE-----\n",
    )
    .await
    .unwrap();
    let body = sent.lock().unwrap().clone().unwrap();
    assert_eq!(body["kind"], "ConfigMap");
    assert_eq!(body["metadata"]["name"], "mesh-root-cert");
    assert!(
        body["data"][ROOT_CERT_CONFIG_KEY]
            .as_str()
            .unwrap()
            .contains("BEGIN CERTIFICATE")
    );
    assert_eq!(
        body["data"].as_object().unwrap().len(),
        1,
        "only the certificate: {body}"
    );
    let seen = server.await.unwrap();
    assert_eq!(seen.len(), 1);
    assert!(
        seen[0].starts_with("PATCH /api/v1/namespaces/mesh-system/configmaps/mesh-root-cert?")
            && seen[0].contains("fieldManager=mesh-ca"),
        "{seen:?}"
    );
}

#[tokio::test]
async fn a_token_review_answer_is_reused_for_the_same_token() {
    let (c, server) = client(|_, _, body| {
        let answer = match body["spec"]["token"].as_str() {
            Some("agent-token") => review(
                true,
                "system:serviceaccount:mesh-system:mesh-agent",
                Some("n1"),
            ),
            _ => review(false, "", None),
        };
        (StatusCode::CREATED, answer)
    });
    let authority = KubeAuthority::new(c, &settings()).unwrap();
    for _ in 0..2 {
        let caller = authority
            .authenticate(Some("Bearer agent-token"))
            .await
            .unwrap();
        assert_eq!(caller, agent("n1"));
    }
    for _ in 0..2 {
        let e = authority
            .authenticate(Some("Bearer forged-token"))
            .await
            .unwrap_err();
        assert!(matches!(e, AuthzError::Rejected(_)), "{e}");
    }
    drop(authority);
    assert_eq!(
        server.await.unwrap().len(),
        2,
        "one TokenReview per distinct token"
    );
}

#[tokio::test]
async fn an_unreachable_api_server_is_asked_again() {
    let calls = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let count = calls.clone();
    let (c, server) = client(move |_, _, _| {
        if count.fetch_add(1, std::sync::atomic::Ordering::SeqCst) == 0 {
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "message": "etcd down", "reason": "InternalError", "code": 500}),
            )
        } else {
            (
                StatusCode::CREATED,
                review(
                    true,
                    "system:serviceaccount:mesh-system:mesh-agent",
                    Some("n1"),
                ),
            )
        }
    });
    let authority = KubeAuthority::new(c, &settings()).unwrap();
    let e = authority.authenticate(Some("Bearer t")).await.unwrap_err();
    assert!(matches!(e, AuthzError::Backend(_)), "{e}");
    assert_eq!(
        authority.authenticate(Some("Bearer t")).await.unwrap(),
        agent("n1")
    );
    drop(authority);
    assert_eq!(server.await.unwrap().len(), 2);
}

#[test]
fn review_answers_expire_and_the_cache_stays_bounded() {
    let cache = ReviewCache::default();
    let t0 = Instant::now();
    let (good, bad) = (ReviewCache::key("good"), ReviewCache::key("bad"));
    assert_ne!(good, bad);
    cache.put(good, &Ok(agent("n1")), t0);
    cache.put(bad, &Err(AuthzError::Rejected("no".into())), t0);
    cache.put(
        ReviewCache::key("unreachable"),
        &Err(AuthzError::Backend("down".into())),
        t0,
    );
    assert_eq!(cache.len(), 2, "backend failures are not kept");
    let at = |s| t0 + Duration::from_secs(s);
    assert_eq!(cache.get(&good, at(59)), Some(Ok(agent("n1"))));
    assert_eq!(cache.get(&good, at(60)), None);
    assert_eq!(
        cache.get(&bad, at(4)),
        Some(Err(AuthzError::Rejected("no".into())))
    );
    assert_eq!(cache.get(&bad, at(5)), None);

    // A flood of refused tokens: the accepted one outlives it.
    for i in 0..REVIEW_CACHE_ENTRIES + 100 {
        cache.put(
            ReviewCache::key(&format!("forged-{i}")),
            &Err(AuthzError::Rejected("no".into())),
            at(1),
        );
    }
    assert_eq!(cache.len(), REVIEW_CACHE_ENTRIES);
    assert_eq!(cache.get(&good, at(2)), Some(Ok(agent("n1"))));
}

fn agent(node: &str) -> Caller {
    Caller::NodeAgent { node: node.into() }
}

fn waypoint() -> Caller {
    Caller::Workload(ServiceAccount::new("shop", "waypoint").unwrap())
}

/// A TokenReview status as the API server fills it in.
fn status(user: &str, audiences: &[&str], extra: &[(&str, &str)]) -> TokenReviewStatus {
    serde_json::from_value(json!({
        "authenticated": true,
        "audiences": audiences,
        "user": {
            "username": user,
            "extra": extra.iter().map(|(k, v)| (k.to_string(), json!([v]))).collect::<serde_json::Map<_, _>>(),
        },
    }))
    .unwrap()
}

#[test]
fn the_callers_kind_comes_from_the_reviewed_account() {
    let agents = ServiceAccount::new("mesh-system", "mesh-agent").unwrap();
    let caller = |s: &TokenReviewStatus| caller_of(s, "mesh-ca", &agents);
    let agent_sa = "system:serviceaccount:mesh-system:mesh-agent";
    let bound = [(NODE_NAME_EXTRA, "n1"), (POD_NAME_EXTRA, "mesh-agent-x")];
    assert_eq!(
        caller(&status(agent_sa, &["mesh-ca"], &bound)),
        Ok(agent("n1"))
    );
    assert_eq!(
        caller(&status(
            "system:serviceaccount:shop:waypoint",
            &["mesh-ca"],
            &[(NODE_NAME_EXTRA, "n1"), (POD_NAME_EXTRA, "waypoint-0")]
        )),
        Ok(waypoint())
    );
    // The node is not needed for a workload: only its account counts.
    assert_eq!(
        caller(&status(
            "system:serviceaccount:shop:waypoint",
            &["mesh-ca"],
            &[(POD_NAME_EXTRA, "waypoint-0")]
        )),
        Ok(waypoint())
    );
    for (s, want) in [
        // The agents' account without a node is not demoted to a workload.
        (
            status(agent_sa, &["mesh-ca"], &[(POD_NAME_EXTRA, "x")]),
            "node-name",
        ),
        (
            status("system:serviceaccount:shop:waypoint", &["mesh-ca"], &[]),
            "not bound to a pod",
        ),
        (
            status(
                "system:serviceaccount:shop:waypoint",
                &["mesh-ca"],
                &[(POD_NAME_EXTRA, "")],
            ),
            "not bound to a pod",
        ),
        (
            status(
                "system:serviceaccount:shop:waypoint",
                &["kubernetes.default.svc"],
                &[(POD_NAME_EXTRA, "waypoint-0")],
            ),
            "not for audience mesh-ca",
        ),
        (
            status("alice", &["mesh-ca"], &[(POD_NAME_EXTRA, "x")]),
            "alice is not a service account",
        ),
        (
            status(
                "system:serviceaccount:Shop:waypoint",
                &["mesh-ca"],
                &[(POD_NAME_EXTRA, "x")],
            ),
            "not a service account",
        ),
    ] {
        let e = caller(&s).unwrap_err();
        assert!(matches!(e, AuthzError::Rejected(_)), "{e}");
        assert!(e.to_string().contains(want), "{want:?} in {e}");
    }
}

#[tokio::test]
async fn a_workload_token_obtains_its_own_identity_without_asking_for_pods() {
    let (c, server) = client(|method, path, body| {
        assert_eq!(method, "POST", "only TokenReviews: {path}");
        assert_eq!(body["spec"]["audiences"], json!(["mesh-ca"]));
        let answer = match body["spec"]["token"].as_str() {
            Some("waypoint-token") => review_with(
                true,
                "system:serviceaccount:shop:waypoint",
                json!({ POD_NAME_EXTRA: ["waypoint-0"] }),
            ),
            _ => review(false, "", None),
        };
        (StatusCode::CREATED, answer)
    });
    let authority =
        crate::authz::Authority::Kubernetes(KubeAuthority::new(c, &settings()).unwrap());
    let id = |ns, sa| Identity::new("cluster.local", ns, sa).unwrap();
    for _ in 0..2 {
        let caller = authority
            .authenticate(Some("Bearer waypoint-token"))
            .await
            .unwrap();
        assert_eq!(caller, waypoint());
        authority
            .authorize(&caller, &id("shop", "waypoint"))
            .await
            .unwrap();
        let e = authority
            .authorize(&caller, &id("shop", "web"))
            .await
            .unwrap_err();
        assert_eq!(e.status().code(), tonic::Code::PermissionDenied, "{e}");
        assert!(
            e.to_string().contains("shop/waypoint")
                && e.to_string()
                    .contains("spiffe://cluster.local/ns/shop/sa/web"),
            "{e}"
        );
    }
    drop(authority);
    assert_eq!(
        server.await.unwrap().len(),
        1,
        "one TokenReview, cached; no pod list for a workload's own identity"
    );
}
