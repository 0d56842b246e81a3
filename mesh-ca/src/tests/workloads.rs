//! A workload that no node agent serves (the waypoint) asks for its own
//! identity with its own token, in local mode and against the Kubernetes
//! API's mock; and the same through the client a workload uses, over TLS.
use std::{path::Path, sync::Arc, time::Duration};

use http::StatusCode;
use mesh_config::CaSettings;
use mesh_identity::{
    Identity,
    ca::grpc::istio_certificate_service_server::IstioCertificateServiceServer,
    client::{CaClient, CertSource, FetchError},
    manager::CertManager,
};
use serde_json::json;

use super::*;
use crate::kubernetes::{
    KubeAuthority,
    tests::{client as kube_client, review_with, settings as kube_settings},
};

const POD_NAME_EXTRA: &str = "authentication.kubernetes.io/pod-name";
const KUBE_WAYPOINT_TOKEN: &str = "projected-token-of-waypoint-0";

fn identity_of(chain: &[String]) -> String {
    let leaf = cert::parse_pem_certs(&chain[0]).unwrap().remove(0);
    cert::inspect(&leaf).unwrap().identity.to_string()
}

/// What every CA must refuse a workload, whichever authority decides.
async fn assert_workload_gets_only_its_own(f: &Fixture, token: &str) {
    // ztunnel's form (impersonation) and istio-agent's (the CSR alone).
    let chain = ask(f, Some(token), csr(WAYPOINT), Some(WAYPOINT), 0)
        .await
        .unwrap();
    assert_eq!(identity_of(&chain), WAYPOINT);
    let chain = ask(f, Some(token), csr(WAYPOINT), None, 0).await.unwrap();
    assert_eq!(identity_of(&chain), WAYPOINT);

    for (csr_id, impersonate) in [(WEB, Some(WEB)), (WEB, None), (DB, Some(DB))] {
        let e = ask(f, Some(token), csr(csr_id), impersonate, 0)
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
        assert!(
            e.message().contains("shop/waypoint") && e.message().contains(csr_id),
            "names the caller and the identity asked for: {e:?}"
        );
    }
    // Its own namespace and account in another trust domain.
    let foreign = "spiffe://evil.example/ns/shop/sa/waypoint";
    let e = ask(f, Some(token), csr(foreign), Some(foreign), 0)
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
    // A CSR for someone else under its own identity's name.
    let e = ask(f, Some(token), csr(WEB), Some(WAYPOINT), 0)
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
}

#[tokio::test]
async fn local_a_workload_token_obtains_its_own_identity_and_no_other() {
    let f = fixture();
    assert_workload_gets_only_its_own(&f, TOKEN_WAYPOINT).await;
    // The workload's entry gives node agents nothing: no pod of n1 is the
    // waypoint.
    let e = ask(&f, Some(TOKEN_N1), csr(WAYPOINT), Some(WAYPOINT), 0)
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
    assert!(e.message().contains("node n1"), "{e:?}");
}

fn local_file(dir: &Path, nodes: &str, workloads: &str) -> CaFile {
    let text = format!(
        "kind: CaConfig\nrootCertFile: {}\nrootKeyFile: {}\nnodes:\n{nodes}workloads:\n{workloads}",
        dir.join("root.pem").display(),
        dir.join("root.key").display(),
    );
    CaFile::parse(&dir.join("ca.yaml"), &text).unwrap()
}

#[test]
fn a_token_shared_by_a_node_and_a_workload_or_two_workloads_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (n1, w0, w1) = (
        dir.path().join("n1.token"),
        dir.path().join("w0.token"),
        dir.path().join("w1.token"),
    );
    std::fs::write(&n1, TOKEN_N1).unwrap();
    std::fs::write(&w0, format!("{TOKEN_N1}\n")).unwrap();
    std::fs::write(&w1, TOKEN_WAYPOINT).unwrap();
    let file = local_file(
        dir.path(),
        &format!("- {{name: n1, tokenFile: {}}}\n", n1.display()),
        &format!(
            "- {{serviceAccount: shop/waypoint, tokenFile: {}}}\n- {{serviceAccount: shop/other, tokenFile: {}}}\n",
            w0.display(),
            w1.display()
        ),
    );
    let e = Authorizer::from_file(&file).unwrap_err().to_string();
    for part in [
        format!("CaConfig.workloads[0].tokenFile {}", w0.display()),
        format!("nodes[n1].tokenFile {}", n1.display()),
        "own random token".into(),
    ] {
        assert!(e.contains(&part), "{part:?} in {e}");
    }
    assert!(!e.contains(TOKEN_N1), "the token is not printed: {e}");

    std::fs::write(&w0, TOKEN_WAYPOINT).unwrap();
    let e = Authorizer::from_file(&file).unwrap_err().to_string();
    for part in [
        format!("CaConfig.workloads[1].tokenFile {}", w1.display()),
        format!("workloads[0].tokenFile {}", w0.display()),
    ] {
        assert!(e.contains(&part), "{part:?} in {e}");
    }

    std::fs::write(&w1, "token-of-another-workload-dddd").unwrap();
    let a = Authorizer::from_file(&file).unwrap();
    assert_eq!(
        a.authenticate(Some(&format!("Bearer {TOKEN_WAYPOINT}")))
            .unwrap()
            .to_string(),
        "workload shop/waypoint"
    );
}

#[test]
fn a_workload_token_file_that_is_missing_or_short_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.token");
    let file = local_file(
        dir.path(),
        "",
        &format!(
            "- {{serviceAccount: shop/waypoint, tokenFile: {}}}\n",
            missing.display()
        ),
    );
    let e = Authorizer::from_file(&file).unwrap_err().to_string();
    assert!(
        e.contains(&format!(
            "CaConfig.workloads[0].tokenFile {}",
            missing.display()
        )),
        "{e}"
    );
    std::fs::write(&missing, "short").unwrap();
    let e = Authorizer::from_file(&file).unwrap_err().to_string();
    assert!(
        e.contains("CaConfig.workloads[0].tokenFile") && e.contains("shorter than 16"),
        "{e}"
    );
}

/// The CA with the Kubernetes authority against the API's mock, which
/// knows one projected token (the waypoint pod's) and lists no pods: a
/// workload's own identity must not need them.
fn kube_fixture() -> (Fixture, tokio::task::JoinHandle<Vec<String>>) {
    let dir = tempfile::tempdir().unwrap();
    let (c, k) = (dir.path().join("root.pem"), dir.path().join("root.key"));
    root::init(&c, &k, "cluster.local", Duration::from_secs(3600)).unwrap();
    let (client, server) = kube_client(|method, path, body| {
        assert!(
            method == "POST" && path.starts_with("/apis/authentication.k8s.io/v1/tokenreviews"),
            "only TokenReviews: {method} {path}"
        );
        assert_eq!(body["spec"]["audiences"], json!(["mesh-ca"]));
        let answer = if body["spec"]["token"] == KUBE_WAYPOINT_TOKEN {
            review_with(
                true,
                "system:serviceaccount:shop:waypoint",
                json!({ POD_NAME_EXTRA: ["waypoint-7d9f-x2"] }),
            )
        } else {
            review_with(false, "", json!({}))
        };
        (StatusCode::CREATED, answer)
    });
    let service = CertificateService {
        signer: Signer {
            root: root::load(&c, &k).unwrap(),
            default_lifetime: Duration::from_secs(1800),
            max_lifetime: Duration::from_secs(3600),
        },
        trust_domain: "cluster.local".into(),
        authority: Authority::Kubernetes(KubeAuthority::new(client, &kube_settings()).unwrap()),
    };
    (Fixture { service, _dir: dir }, server)
}

#[tokio::test]
async fn kubernetes_a_workload_token_obtains_its_own_identity_and_no_other() {
    let (f, server) = kube_fixture();
    assert_workload_gets_only_its_own(&f, KUBE_WAYPOINT_TOKEN).await;
    let e = ask(&f, Some("someone-elses-token"), csr(WAYPOINT), None, 0)
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated, "{e:?}");
    drop(f);
    assert_eq!(
        server.await.unwrap().len(),
        2,
        "one TokenReview per token, the answer reused"
    );
}

/// Serves `service` over TLS on loopback as the CA binary does; the
/// server stops when the returned sender is dropped.
async fn serve(service: CertificateService) -> (String, tokio::sync::oneshot::Sender<()>) {
    mesh_identity::tls::install_process_default();
    let (cert_pem, key_pem) = service.signer.serving_cert(&["mesh-ca".into()]).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap().to_string();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(
        tonic::transport::Server::builder()
            .tls_config(
                tonic::transport::ServerTlsConfig::new()
                    .identity(tonic::transport::Identity::from_pem(cert_pem, key_pem)),
            )
            .unwrap()
            .add_service(IstioCertificateServiceServer::new(service))
            .serve_with_incoming_shutdown(
                tonic::transport::server::TcpIncoming::from(listener),
                async {
                    let _ = stopped.await;
                },
            ),
    );
    (address, stop)
}

/// The workload's side as the waypoint runs it: `CaClient` with its own
/// token file, `CertManager::acquire` for its identity.
async fn client_gets_only_its_own(f: Fixture, token: &str) {
    let Fixture { service, _dir: dir } = f;
    let token_file = dir.path().join("workload-token");
    std::fs::write(&token_file, format!("{token}\n")).unwrap();
    let (address, _stop) = serve(service).await;
    let client = Arc::new(
        CaClient::new(&CaSettings::new(
            address,
            dir.path().join("root.pem"),
            &token_file,
        ))
        .unwrap(),
    );
    let own = Identity::parse(WAYPOINT).unwrap();
    let manager = CertManager::new(client.clone());
    let lease = manager.acquire(&own);
    let mut watch = lease.watch().clone();
    let cert = tokio::time::timeout(Duration::from_secs(10), watch.wait_for(|c| c.is_some()))
        .await
        .expect("the workload's certificate within 10s")
        .unwrap()
        .clone()
        .unwrap();
    assert_eq!(cert.identity(), &own);

    let web = Identity::parse(WEB).unwrap();
    match client.fetch(&web).await {
        Err(FetchError::Rpc(status)) => {
            assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
            assert!(status.message().contains("shop/waypoint"), "{status:?}");
        }
        Err(other) => panic!("refused for the wrong reason: {other}"),
        Ok(_) => panic!("a workload obtained another's identity"),
    }
}

#[tokio::test]
async fn local_the_workload_client_obtains_its_own_identity_over_tls() {
    client_gets_only_its_own(fixture(), TOKEN_WAYPOINT).await;
}

#[tokio::test]
async fn kubernetes_the_workload_client_obtains_its_own_identity_over_tls() {
    let (f, _server) = kube_fixture();
    client_gets_only_its_own(f, KUBE_WAYPOINT_TOKEN).await;
}
