//! The CA's decisions, called as tonic would call them.
use std::{
    sync::{Arc, RwLock},
    time::Duration,
};

use mesh_identity::{
    ca::{
        grpc::istio_certificate_service_server::IstioCertificateService,
        proto::IstioCertificateRequest,
    },
    cert,
};
use rcgen::{CertificateParams, DistinguishedName, KeyPair, PKCS_ECDSA_P256_SHA256, SanType};
use tonic::{Code, Request};
use x509_parser::{certificate::X509Certificate, prelude::FromDer};

mod workloads;

use super::{
    authz::{Authority, Authorizer},
    config::CaFile,
    root,
    service::CertificateService,
    signer::Signer,
};

const TOKEN_N1: &str = "token-of-node-1-aaaaaaaa";
const TOKEN_WAYPOINT: &str = "token-of-the-waypoint-cccccccc";

struct Fixture {
    service: CertificateService,
    _dir: tempfile::TempDir,
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let (c, k) = (dir.path().join("root.pem"), dir.path().join("root.key"));
    root::init(&c, &k, "cluster.local", Duration::from_secs(3600)).unwrap();
    std::fs::write(dir.path().join("n1.token"), TOKEN_N1).unwrap();
    std::fs::write(dir.path().join("n2.token"), "token-of-node-2-bbbbbbbb").unwrap();
    std::fs::write(dir.path().join("waypoint.token"), TOKEN_WAYPOINT).unwrap();
    let text = format!(
        "kind: CaConfig\nrootCertFile: {}\nrootKeyFile: {}\nmaxLifetime: 1h\ndefaultLifetime: 30m\nnodes:\n- {{name: n1, tokenFile: {}}}\n- {{name: n2, tokenFile: {}}}\nworkloads:\n- {{serviceAccount: shop/waypoint, tokenFile: {}}}\n---\nkind: Pod\nmetadata: {{name: web, namespace: shop}}\nspec: {{nodeName: n1, serviceAccountName: web}}\n---\nkind: Pod\nmetadata: {{name: db, namespace: shop}}\nspec: {{nodeName: n2, serviceAccountName: db}}\n",
        c.display(),
        k.display(),
        dir.path().join("n1.token").display(),
        dir.path().join("n2.token").display(),
        dir.path().join("waypoint.token").display(),
    );
    let file = CaFile::parse(&dir.path().join("ca.yaml"), &text).unwrap();
    let service = CertificateService {
        signer: Signer {
            root: root::load(&c, &k).unwrap(),
            default_lifetime: file.config.default_lifetime,
            max_lifetime: file.config.max_lifetime,
        },
        trust_domain: "cluster.local".into(),
        authority: Authority::Local(Arc::new(RwLock::new(Arc::new(
            Authorizer::from_file(&file).unwrap(),
        )))),
    };
    Fixture { service, _dir: dir }
}

fn csr(san: &str) -> String {
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
    let mut p = CertificateParams::default();
    p.distinguished_name = DistinguishedName::new();
    p.subject_alt_names = vec![SanType::URI(san.to_owned().try_into().unwrap())];
    p.serialize_request(&key).unwrap().pem().unwrap()
}

async fn ask(
    f: &Fixture,
    token: Option<&str>,
    csr: String,
    impersonate: Option<&str>,
    validity: i64,
) -> Result<Vec<String>, tonic::Status> {
    let mut body = IstioCertificateRequest {
        csr,
        validity_duration: validity,
        metadata: None,
    };
    if let Some(id) = impersonate {
        body = body.with_impersonated_identity(id);
    }
    let mut req = Request::new(body);
    if let Some(t) = token {
        req.metadata_mut()
            .insert("authorization", format!("Bearer {t}").parse().unwrap());
    }
    f.service
        .create_certificate(req)
        .await
        .map(|r| r.into_inner().cert_chain)
}

const WEB: &str = "spiffe://cluster.local/ns/shop/sa/web";
const WAYPOINT: &str = "spiffe://cluster.local/ns/shop/sa/waypoint";
const DB: &str = "spiffe://cluster.local/ns/shop/sa/db";

#[tokio::test]
async fn issues_a_capped_spiffe_certificate_for_a_workload_on_the_callers_node() {
    let f = fixture();
    let chain = ask(&f, Some(TOKEN_N1), csr(WEB), Some(WEB), 48 * 3600)
        .await
        .unwrap();
    assert_eq!(chain.len(), 2, "leaf and root");
    let leaf = cert::parse_pem_certs(&chain[0]).unwrap().remove(0);
    let info = cert::inspect(&leaf).unwrap();
    assert_eq!(info.identity.to_string(), WEB);
    let life = info
        .not_after
        .duration_since(std::time::SystemTime::now())
        .unwrap();
    assert!(
        life <= Duration::from_secs(3600),
        "capped at maxLifetime: {life:?}"
    );
    assert!(life > Duration::from_secs(3500), "{life:?}");
    // Without validity_duration: the default lifetime.
    let chain = ask(&f, Some(TOKEN_N1), csr(WEB), None, 0).await.unwrap();
    let info = cert::inspect(&cert::parse_pem_certs(&chain[0]).unwrap()[0]).unwrap();
    let life = info
        .not_after
        .duration_since(std::time::SystemTime::now())
        .unwrap();
    assert!(
        life <= Duration::from_secs(1800) && life > Duration::from_secs(1700),
        "{life:?}"
    );
}

#[tokio::test]
async fn refuses_what_the_caller_may_not_have() {
    let f = fixture();
    // Another node's workload.
    let e = ask(&f, Some(TOKEN_N1), csr(DB), Some(DB), 0)
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
    // An identity no pod has.
    let ghost = "spiffe://cluster.local/ns/shop/sa/ghost";
    let e = ask(&f, Some(TOKEN_N1), csr(ghost), Some(ghost), 0)
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
    // Another trust domain.
    let foreign = "spiffe://evil.example/ns/shop/sa/web";
    let e = ask(&f, Some(TOKEN_N1), csr(foreign), Some(foreign), 0)
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
    // A CSR asking for more than the impersonated identity.
    let e = ask(&f, Some(TOKEN_N1), csr(DB), Some(WEB), 0)
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    assert!(e.message().contains("authorized for"), "{e:?}");
}

#[tokio::test]
async fn refuses_unauthenticated_and_malformed_requests() {
    let f = fixture();
    let e = ask(&f, None, csr(WEB), Some(WEB), 0).await.unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated);
    let e = ask(&f, Some("not-a-known-token-xxxxxx"), csr(WEB), Some(WEB), 0)
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated);
    let e = ask(
        &f,
        Some(TOKEN_N1),
        "-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n".into(),
        Some(WEB),
        0,
    )
    .await
    .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    let e = ask(&f, Some(TOKEN_N1), "garbage".into(), None, 0)
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    let e = ask(&f, Some(TOKEN_N1), csr(WEB), Some("not a spiffe id"), 0)
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
}

#[test]
fn init_never_overwrites_and_load_checks_the_pair() {
    let dir = tempfile::tempdir().unwrap();
    let (c, k) = (dir.path().join("root.pem"), dir.path().join("root.key"));
    root::init(&c, &k, "cluster.local", Duration::from_secs(3600)).unwrap();
    let e = root::init(&c, &k, "cluster.local", Duration::from_secs(3600)).unwrap_err();
    assert!(e.to_string().contains("already exists"), "{e}");
    let (c2, k2) = (dir.path().join("b.pem"), dir.path().join("b.key"));
    root::init(&c2, &k2, "cluster.local", Duration::from_secs(3600)).unwrap();
    let e = root::load(&c, &k2).unwrap_err();
    assert!(e.to_string().contains("does not match"), "{e}");
    let e = root::load(&dir.path().join("missing.pem"), &k).unwrap_err();
    assert!(e.to_string().contains("mesh-agent ca init"), "{e}");
}

#[tokio::test]
async fn leaves_are_end_entities_for_signing_with_unpredictable_serials() {
    let f = fixture();
    let mut serials = Vec::new();
    for _ in 0..2 {
        let chain = ask(&f, Some(TOKEN_N1), csr(WEB), Some(WEB), 0)
            .await
            .unwrap();
        let der = cert::parse_pem_certs(&chain[0]).unwrap().remove(0);
        let (_, leaf) = X509Certificate::from_der(&der).unwrap();
        let bc = leaf
            .basic_constraints()
            .unwrap()
            .expect("basicConstraints present");
        assert!(!bc.value.ca, "CA:FALSE");
        let ku = leaf.key_usage().unwrap().expect("keyUsage present").value;
        assert!(ku.digital_signature());
        assert!(
            !ku.key_encipherment(),
            "no keyEncipherment for an ECDSA key"
        );
        assert_eq!(ku.flags, 1, "digitalSignature alone: {ku:?}");
        let serial = leaf.raw_serial().to_vec();
        assert!(
            !serial.is_empty() && serial.len() <= 16,
            "16 random bytes at most: {serial:02x?}"
        );
        assert_eq!(serial[0] & 0x80, 0, "positive: {serial:02x?}");
        serials.push(serial);
    }
    assert_ne!(serials[0], serials[1]);
}

#[test]
fn the_serving_certificate_is_an_end_entity_too() {
    let f = fixture();
    let (chain, _key) = f.service.signer.serving_cert(&["mesh-ca".into()]).unwrap();
    let der = cert::parse_pem_certs(&chain).unwrap().remove(0);
    let (_, c) = X509Certificate::from_der(&der).unwrap();
    assert!(!c.basic_constraints().unwrap().unwrap().value.ca);
    assert_eq!(c.key_usage().unwrap().unwrap().value.flags, 1);
}

#[test]
fn a_root_key_readable_by_others_is_refused() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let (c, k) = (dir.path().join("root.pem"), dir.path().join("root.key"));
    root::init(&c, &k, "cluster.local", Duration::from_secs(3600)).unwrap();
    for mode in [0o644, 0o640, 0o604] {
        std::fs::set_permissions(&k, std::fs::Permissions::from_mode(mode)).unwrap();
        let e = root::load(&c, &k).unwrap_err().to_string();
        assert!(e.contains(&format!("mode {mode:04o}")), "{e}");
        assert!(
            e.contains(&format!("chmod 600 {}", k.display())),
            "names the file and the fix: {e}"
        );
    }
    for mode in [0o600, 0o400] {
        std::fs::set_permissions(&k, std::fs::Permissions::from_mode(mode)).unwrap();
        root::load(&c, &k).unwrap();
    }
}

#[test]
fn two_nodes_with_one_token_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (c, k) = (dir.path().join("root.pem"), dir.path().join("root.key"));
    let (t1, t2) = (dir.path().join("n1.token"), dir.path().join("n2.token"));
    std::fs::write(&t1, TOKEN_N1).unwrap();
    // Same token; the trailing newline an editor adds does not hide it.
    std::fs::write(&t2, format!("{TOKEN_N1}\n")).unwrap();
    let text = format!(
        "kind: CaConfig\nrootCertFile: {}\nrootKeyFile: {}\nnodes:\n- {{name: n1, tokenFile: {}}}\n- {{name: n2, tokenFile: {}}}\n",
        c.display(),
        k.display(),
        t1.display(),
        t2.display(),
    );
    let file = CaFile::parse(&dir.path().join("ca.yaml"), &text).unwrap();
    let e = Authorizer::from_file(&file).unwrap_err().to_string();
    for part in [
        format!("nodes[n2].tokenFile {}", t2.display()),
        format!("nodes[n1].tokenFile {}", t1.display()),
        "own random token".into(),
    ] {
        assert!(e.contains(&part), "{part:?} in {e}");
    }
    assert!(
        !e.contains(TOKEN_N1),
        "the token itself is not printed: {e}"
    );
    std::fs::write(&t2, "token-of-node-2-bbbbbbbb").unwrap();
    Authorizer::from_file(&file).unwrap();
}

#[test]
fn request_limits_are_read_and_checked() {
    let parse = |extra: &str| {
        CaFile::parse(
            std::path::Path::new("ca.yaml"),
            &format!("kind: CaConfig\nrootCertFile: r.pem\nrootKeyFile: r.key\n{extra}"),
        )
    };
    let cfg = parse("").unwrap().config;
    assert_eq!(cfg.request_timeout, Duration::from_secs(10));
    assert_eq!(cfg.max_concurrent_requests, 256);
    let cfg = parse("requestTimeout: 3s\nmaxConcurrentRequests: 8\n")
        .unwrap()
        .config;
    assert_eq!(cfg.request_timeout, Duration::from_secs(3));
    assert_eq!(cfg.max_concurrent_requests, 8);
    let e = parse("requestTimeout: 10ms\n").unwrap_err().to_string();
    assert!(e.contains("requestTimeout"), "{e}");
    let e = parse("maxConcurrentRequests: 0\n").unwrap_err().to_string();
    assert!(e.contains("maxConcurrentRequests"), "{e}");
}

#[tokio::test]
async fn requests_beyond_the_ca_wide_limit_are_shed_not_queued() {
    use tower::{Layer, ServiceExt};
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let (started, mut running) = tokio::sync::mpsc::unbounded_channel();
    let held = gate.clone();
    let inner = tower::service_fn(move |_: ()| {
        let (gate, started) = (held.clone(), started.clone());
        async move {
            let _ = started.send(());
            let _permit = gate.acquire().await;
            Ok::<_, std::convert::Infallible>(())
        }
    });
    let limited = super::server::request_limit(1).layer(inner);
    // Each clone stands for a request on another connection.
    let first = tokio::spawn(limited.clone().oneshot(()));
    running.recv().await.unwrap();
    let e = limited.clone().oneshot(()).await.unwrap_err();
    let status = tonic::Status::from_error(e);
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert!(
        status.message().contains("maxConcurrentRequests"),
        "{status:?}"
    );
    gate.add_permits(1);
    first.await.unwrap().unwrap();
    // The slot is free again once the first request has been answered.
    let second = tokio::spawn(limited.clone().oneshot(()));
    running.recv().await.unwrap();
    gate.add_permits(1);
    second.await.unwrap().unwrap();
}
