//! What the JWT tests need beside the bed: ES256 signing keys and their
//! JWKS, an HTTPS server of a JWKS whose document can change (a key
//! rotation) and that can go away, with its own test CA written to a PEM
//! file the waypoint is told to trust, and a backend that answers with
//! every request header it got (`x-echo-<name>`).
#![allow(dead_code)]

use std::{
    convert::Infallible,
    net::SocketAddr,
    path::PathBuf,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
};

use aws_lc_rs::{
    rand::SystemRandom,
    signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair},
};
use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::{body::Incoming, service::service_fn};
use hyper_util::rt::TokioIo;
use jsonwebtoken::{Algorithm, EncodingKey, Header, jwk::Jwk};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, SanType};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use serde_json::{Value, json};
use tokio::{net::TcpListener, task::JoinHandle};
use tokio_rustls::TlsAcceptor;

/// An ES256 key that signs tokens, named `kid` in its JWKS.
pub struct Signer {
    key: EncodingKey,
    pub kid: String,
}

impl Signer {
    pub fn new(kid: &str) -> Self {
        let pkcs8 =
            EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &SystemRandom::new())
                .unwrap();
        Self {
            key: EncodingKey::from_ec_der(pkcs8.as_ref()),
            kid: kid.into(),
        }
    }

    pub fn token(&self, claims: &Value) -> String {
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some(self.kid.clone());
        jsonwebtoken::encode(&header, claims, &self.key).unwrap()
    }
}

/// The JWKS document of `signers`' public keys.
pub fn jwks(signers: &[&Signer]) -> String {
    let keys: Vec<Value> = signers
        .iter()
        .map(|s| {
            let mut jwk = Jwk::from_encoding_key(&s.key, Algorithm::ES256).unwrap();
            jwk.common.key_id = Some(s.kid.clone());
            serde_json::to_value(jwk).unwrap()
        })
        .collect();
    json!({ "keys": keys }).to_string()
}

/// Seconds since the Unix epoch.
pub fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// A JWKS served over HTTPS at `uri` (127.0.0.1, a certificate for
/// `localhost` from a test CA whose PEM is at `ca_file`).
pub struct JwksServer {
    pub uri: String,
    pub ca_file: PathBuf,
    document: Arc<Mutex<String>>,
    pub hits: Arc<AtomicUsize>,
    /// Set by `stop`: a connection accepted before it is answered 503 and
    /// not counted, so that `hits` stays as it was when it stopped.
    stopped: Arc<AtomicBool>,
    task: JoinHandle<()>,
}

impl JwksServer {
    /// Serves `document` at `https://localhost:<port>/jwks`; `name` keeps
    /// each test's CA file apart.
    pub async fn start(name: &str, document: String) -> Self {
        let ca_key = KeyPair::generate().unwrap();
        let mut ca = CertificateParams::default();
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.distinguished_name
            .push(DnType::CommonName, "jwks test root");
        let ca_pem = ca.self_signed(&ca_key).unwrap().pem();
        let key = KeyPair::generate().unwrap();
        let mut leaf = CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
        leaf.subject_alt_names
            .push(SanType::IpAddress([127, 0, 0, 1].into()));
        let cert = leaf
            .signed_by(&key, &Issuer::from_params(&ca, &ca_key))
            .unwrap();
        let ca_file =
            std::env::temp_dir().join(format!("mesh-jwt-{name}-{}-ca.pem", std::process::id()));
        std::fs::write(&ca_file, ca_pem).unwrap();
        let tls = rustls::ServerConfig::builder()
            .with_no_client_auth()
            .with_single_cert(
                vec![CertificateDer::from(cert.der().to_vec())],
                PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
            )
            .unwrap();
        let acceptor = TlsAcceptor::from(Arc::new(tls));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let document = Arc::new(Mutex::new(document));
        let hits = Arc::new(AtomicUsize::new(0));
        let stopped = Arc::new(AtomicBool::new(false));
        let task = {
            let (document, hits, stopped) = (document.clone(), hits.clone(), stopped.clone());
            tokio::spawn(async move {
                loop {
                    let Ok((tcp, _)) = listener.accept().await else {
                        continue;
                    };
                    let (acceptor, document, hits, stopped) = (
                        acceptor.clone(),
                        document.clone(),
                        hits.clone(),
                        stopped.clone(),
                    );
                    tokio::spawn(async move {
                        let Ok(tls) = acceptor.accept(tcp).await else {
                            return;
                        };
                        let svc = service_fn(move |req: Request<Incoming>| {
                            let body = document.lock().unwrap().clone();
                            let status = if stopped.load(Ordering::SeqCst) {
                                StatusCode::SERVICE_UNAVAILABLE
                            } else if req.uri().path() == "/jwks" {
                                hits.fetch_add(1, Ordering::SeqCst);
                                StatusCode::OK
                            } else {
                                hits.fetch_add(1, Ordering::SeqCst);
                                StatusCode::NOT_FOUND
                            };
                            async move {
                                Ok::<_, Infallible>(
                                    Response::builder()
                                        .status(status)
                                        .header("content-type", "application/json")
                                        .body(Full::new(Bytes::from(body)))
                                        .unwrap(),
                                )
                            }
                        });
                        let _ = hyper::server::conn::http1::Builder::new()
                            .serve_connection(TokioIo::new(tls), svc)
                            .await;
                    });
                }
            })
        };
        Self {
            uri: format!("https://localhost:{port}/jwks"),
            ca_file,
            document,
            hits,
            stopped,
            task,
        }
    }

    /// Serves `document` from now on (a key rotation).
    pub fn set(&self, document: String) {
        *self.document.lock().unwrap() = document;
    }

    /// Stops listening: fetches from now on fail to connect, and one whose
    /// connection was already accepted is answered 503.
    pub fn stop(&self) {
        self.stopped.store(true, Ordering::SeqCst);
        self.task.abort();
    }
}

impl Drop for JwksServer {
    fn drop(&mut self) {
        self.task.abort();
        let _ = std::fs::remove_file(&self.ca_file);
    }
}

/// A backend that answers 200 with `x-echo-<name>` for each request
/// header it got; the count of requests it answered.
pub async fn echo_backend(addr: SocketAddr) -> Arc<AtomicUsize> {
    let listener = TcpListener::bind(addr).await.unwrap();
    let hits = Arc::new(AtomicUsize::new(0));
    let counter = hits.clone();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                continue;
            };
            let hits = counter.clone();
            let svc = service_fn(move |req: Request<Incoming>| {
                hits.fetch_add(1, Ordering::SeqCst);
                let mut response = Response::builder();
                for (name, value) in req.headers() {
                    response = response.header(format!("x-echo-{name}"), value);
                }
                async move {
                    Ok::<_, Infallible>(response.body(Full::new(Bytes::from("echo"))).unwrap())
                }
            });
            tokio::spawn(async move {
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tcp), svc)
                    .await;
            });
        }
    });
    hits
}
