//! The remote JWKS of RequestAuthentications (`jwksUri`): fetched over
//! HTTPS (system roots, plus the CA bundle the waypoint is given with
//! `--jwks-ca-file`) within a deadline and a size limit, kept per URI and
//! fetched again on an interval (Istio's default: 20 minutes). A failed
//! fetch keeps the last good keys (logged with the URI and the error, and
//! counted in `mesh_waypoint_jwks_fetch_failures_total{uri}`); a URI whose
//! first fetch has not succeeded has no keys, so its tokens are refused.
//!
//! `run` follows the views: a URI a policy starts naming is fetched at
//! once, one no policy names any more is forgotten.
use std::{
    collections::HashMap,
    path::PathBuf,
    sync::{Arc, RwLock},
    time::Duration,
};

use bytes::Bytes;
use http::{Request, StatusCode, Uri};
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::rt::TokioIo;
use mesh_policy::request_authn::{AuthnTarget, KeySet, Keys, MAX_JWKS_BYTES};
use rustls::{
    RootCertStore,
    pki_types::{CertificateDer, ServerName, pem::PemObject},
};
use tokio::{net::TcpStream, task::JoinHandle};
use tokio_rustls::TlsConnector;
use tracing::{debug, info, warn};

use crate::waypoint::Waypoint;

/// Istio's default refresh of a `jwksUri`.
pub const REFRESH: Duration = Duration::from_secs(20 * 60);
/// A fetch's deadline (connect, TLS, response and body together): Istio's
/// default JWKS fetch timeout.
pub const FETCH_TIMEOUT: Duration = Duration::from_secs(5);
/// After a failed fetch, the next try comes this soon (or at the refresh
/// interval, if that is sooner): an issuer that was down for a moment
/// should not leave its tokens refused for 20 minutes.
pub const RETRY_AFTER_FAILURE: Duration = Duration::from_secs(10);

/// How remote JWKS are fetched.
#[derive(Debug, Clone)]
pub struct Settings {
    pub refresh: Duration,
    pub timeout: Duration,
    /// A response body longer than this is refused.
    pub max_bytes: usize,
    /// PEM certificates trusted for `jwksUri` servers besides the system's
    /// roots (`--jwks-ca-file`).
    pub ca_file: Option<PathBuf>,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            refresh: REFRESH,
            timeout: FETCH_TIMEOUT,
            max_bytes: MAX_JWKS_BYTES,
            ca_file: None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error("reading the JWKS CA file {file}: {source}")]
    CaFile {
        file: PathBuf,
        source: std::io::Error,
    },
    #[error("the JWKS CA file {file} holds no PEM certificate that can be used ({problem})")]
    CaCerts { file: PathBuf, problem: String },
}

/// Why one fetch failed.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("not an https URI with a host")]
    Uri,
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    #[error("connecting: {0}")]
    Connect(std::io::Error),
    #[error("TLS: {0}")]
    Tls(std::io::Error),
    #[error("HTTP: {0}")]
    Http(#[from] hyper::Error),
    #[error("answered {0}")]
    Status(StatusCode),
    #[error("the body is over {0} bytes")]
    TooLarge(usize),
    #[error("the body is not UTF-8")]
    NotUtf8,
    #[error("the document {0}")]
    Keys(String),
}

/// The keys fetched so far, and the tasks keeping them fresh.
pub struct Jwks {
    settings: Settings,
    tls: TlsConnector,
    keys: RwLock<HashMap<String, Arc<KeySet>>>,
    tasks: std::sync::Mutex<HashMap<String, JoinHandle<()>>>,
}

impl Jwks {
    /// Reads the CA file (if any) and the system's roots.
    pub fn new(settings: Settings) -> Result<Self, SetupError> {
        let mut roots = RootCertStore::empty();
        let native = rustls_native_certs::load_native_certs();
        for e in &native.errors {
            debug!(error = %e, "a system root certificate could not be read");
        }
        let (_, unusable) = roots.add_parsable_certificates(native.certs);
        if unusable > 0 {
            debug!(unusable, "system root certificates skipped");
        }
        if let Some(file) = &settings.ca_file {
            let pem = std::fs::read(file).map_err(|source| SetupError::CaFile {
                file: file.clone(),
                source,
            })?;
            let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&pem)
                .collect::<Result<_, _>>()
                .map_err(|e| SetupError::CaCerts {
                    file: file.clone(),
                    problem: e.to_string(),
                })?;
            let (added, _) = roots.add_parsable_certificates(certs);
            if added == 0 {
                return Err(SetupError::CaCerts {
                    file: file.clone(),
                    problem: "none found".into(),
                });
            }
        }
        let config = rustls::ClientConfig::builder()
            .with_root_certificates(roots)
            .with_no_client_auth();
        Ok(Self {
            settings,
            tls: TlsConnector::from(Arc::new(config)),
            keys: RwLock::default(),
            tasks: Default::default(),
        })
    }

    /// The last good keys of `uri`; `None` until a fetch has succeeded.
    pub fn keys(&self, uri: &str) -> Option<Arc<KeySet>> {
        self.keys.read().unwrap().get(uri).cloned()
    }

    /// Fetches `uri` once.
    pub async fn fetch(&self, uri: &str) -> Result<KeySet, FetchError> {
        let timeout = self.settings.timeout;
        tokio::time::timeout(timeout, self.fetch_unbounded(uri))
            .await
            .map_err(|_| FetchError::Timeout(timeout))?
    }

    async fn fetch_unbounded(&self, uri: &str) -> Result<KeySet, FetchError> {
        let parsed: Uri = uri.parse().map_err(|_| FetchError::Uri)?;
        let (Some("https"), Some(authority)) = (parsed.scheme_str(), parsed.authority()) else {
            return Err(FetchError::Uri);
        };
        let host = authority.host();
        let port = authority.port_u16().unwrap_or(443);
        // An IPv6 literal comes bracketed; connect and verify without them.
        let bare = host.trim_start_matches('[').trim_end_matches(']');
        let name = ServerName::try_from(bare.to_owned()).map_err(|_| FetchError::Uri)?;
        let tcp = TcpStream::connect((bare, port))
            .await
            .map_err(FetchError::Connect)?;
        let tls = self.tls.connect(name, tcp).await.map_err(FetchError::Tls)?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls)).await?;
        // The connection ends with the response (or with this fetch's
        // deadline, when the caller drops it and the sender with it).
        let timeout = self.settings.timeout;
        tokio::spawn(async move {
            let _ = tokio::time::timeout(timeout, conn).await;
        });
        let path = parsed.path_and_query().map_or("/", |p| p.as_str());
        let request = Request::get(path)
            .header(http::header::HOST, authority.as_str())
            .header(http::header::ACCEPT, "application/json")
            .body(Empty::<Bytes>::new())
            .map_err(|_| FetchError::Uri)?;
        let response = sender.send_request(request).await?;
        if !response.status().is_success() {
            return Err(FetchError::Status(response.status()));
        }
        let max = self.settings.max_bytes;
        let body = Limited::new(response.into_body(), max)
            .collect()
            .await
            .map_err(|e| match e.downcast::<hyper::Error>() {
                Ok(e) => FetchError::Http(*e),
                Err(_) => FetchError::TooLarge(max),
            })?
            .to_bytes();
        let text = std::str::from_utf8(&body).map_err(|_| FetchError::NotUtf8)?;
        KeySet::parse(text).map_err(FetchError::Keys)
    }

    /// Starts keeping each URI of `wanted` fresh and forgets the others.
    fn follow(&self, wp: &Arc<Waypoint>, wanted: &std::collections::BTreeSet<String>) {
        let mut tasks = self.tasks.lock().unwrap();
        tasks.retain(|uri, task| {
            let keep = wanted.contains(uri) && !task.is_finished();
            if !keep {
                task.abort();
                self.keys.write().unwrap().remove(uri);
                debug!(uri = %uri, "JWKS no longer named by any policy: forgotten");
            }
            keep
        });
        for uri in wanted {
            if !tasks.contains_key(uri) {
                let task = tokio::spawn(keep_fresh(wp.clone(), uri.clone()));
                tasks.insert(uri.clone(), task);
            }
        }
    }

    fn stop(&self) {
        for (_, task) in self.tasks.lock().unwrap().drain() {
            task.abort();
        }
    }
}

/// Fetches `uri` now and then every `refresh` (sooner after a failure).
async fn keep_fresh(wp: Arc<Waypoint>, uri: String) {
    let jwks = &wp.jwks;
    let refresh = jwks.settings.refresh;
    loop {
        let wait = match jwks.fetch(&uri).await {
            Ok(keys) => {
                let first = jwks
                    .keys
                    .write()
                    .unwrap()
                    .insert(uri.clone(), Arc::new(keys.clone()))
                    .is_none();
                if first {
                    info!(uri = %uri, keys = keys.len(), "JWKS fetched");
                } else {
                    debug!(uri = %uri, keys = keys.len(), "JWKS refreshed");
                }
                refresh
            }
            Err(e) => {
                let kept = jwks.keys(&uri).is_some();
                warn!(uri = %uri, error = %e, last_good_kept = kept, "JWKS fetch failed; tokens are checked against the last good keys, or refused while there are none");
                wp.telemetry.jwks_fetch_failed(&uri);
                refresh.min(RETRY_AFTER_FAILURE)
            }
        };
        tokio::time::sleep(wait).await;
    }
}

/// The `jwksUri`s this waypoint needs: those of policies attached to its
/// Gateway or to any Service (a Service's policy matters wherever the
/// Service's requests are served).
pub fn wanted(
    view: &mesh_discovery::view::MeshView,
    gateway: &str,
) -> std::collections::BTreeSet<String> {
    view.request_authentications
        .iter()
        .filter(|p| {
            p.targets.iter().any(|t| match t {
                AuthnTarget::Gateway(g) => g == gateway,
                AuthnTarget::Service(_) => true,
            })
        })
        .flat_map(|p| p.rules.iter())
        .filter_map(|r| match &r.keys {
            Keys::Remote(uri) => Some(uri.clone()),
            Keys::Inline(_) => None,
        })
        .collect()
}

/// Keeps the JWKS of every view's policies fresh until the drain starts.
pub async fn run(wp: Arc<Waypoint>) {
    let mut views = wp.views();
    let mut draining = wp.draining();
    let gateway = wp.gateway.to_string();
    loop {
        let view = views.borrow_and_update().view.clone();
        wp.jwks.follow(&wp, &wanted(&view, &gateway));
        tokio::select! {
            changed = views.changed() => if changed.is_err() { break },
            () = crate::http::drained(&mut draining) => break,
        }
    }
    wp.jwks.stop();
}
