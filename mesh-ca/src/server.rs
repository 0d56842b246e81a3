//! Runs the CA: loads the root, serves gRPC over TLS, and follows changes
//! to its file (nodes and pods come and go) without a restart.
use std::{
    path::Path,
    sync::{Arc, RwLock},
    time::Duration,
};

use anyhow::Context;
use mesh_identity::ca::grpc::istio_certificate_service_server::IstioCertificateServiceServer;
use mesh_serve::capped::ConnectionCap;
use tokio::signal::unix::{SignalKind, signal};
use tonic::transport::{Identity as TlsIdentity, Server, ServerTlsConfig};
use tower::{
    BoxError, ServiceBuilder,
    layer::util::{Identity, Stack},
    limit::GlobalConcurrencyLimitLayer,
    load_shed::{LoadShedLayer, error::Overloaded},
    util::MapErrLayer,
};
use tracing::{error, info};

use super::{
    authz::{Authority, Authorizer},
    config::CaFile,
    kubernetes, root,
    service::CertificateService,
    signer::Signer,
};

/// Connections the CA holds at once: one per node agent (and the odd
/// client) for clusters of thousands of nodes; past it new ones are closed.
const MAX_CONNECTIONS: usize = 16_384;
const FILE_POLL: Duration = Duration::from_millis(500);

// Connection limits. The HTTP/2 ones are Envoy's edge-proxy best practices
// (`Configuring Envoy as an edge proxy`): at most 100 concurrent streams per
// connection, a 64 KiB initial stream window and a 1 MiB connection window.
// Keepalive and connection age are istiod's defaults (ping after 30 s idle,
// close when unanswered for 10 s; connections closed gracefully after 30
// minutes, so agents spread over replicas added since they connected).
const MAX_STREAMS_PER_CONNECTION: u32 = 100;
const STREAM_WINDOW: u32 = 64 * 1024;
const CONNECTION_WINDOW: u32 = 1024 * 1024;
const HTTP2_KEEPALIVE_INTERVAL: Duration = Duration::from_secs(30);
const HTTP2_KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);
const MAX_CONNECTION_AGE: Duration = Duration::from_secs(30 * 60);
/// Ours, not from either guide: the kernel's 2 h default would keep a
/// vanished peer's socket long after HTTP/2 pings stopped being answered;
/// this catches peers whose pings never got through at all.
const TCP_KEEPALIVE: Duration = Duration::from_secs(60);
/// A client that connects and never finishes TLS is dropped after this;
/// a handshake over any working network takes a few round trips.
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Requests of one connection handled at once; further ones (up to the
/// stream limit) wait for a slot, so one node starting many pods queues
/// behind itself instead of taking the whole CA.
const CONCURRENCY_PER_CONNECTION: usize = 16;
/// A request is a CSR of a few hundred bytes; tonic's 4 MiB default would
/// let each of a connection's streams make the CA buffer megabytes.
const MAX_REQUEST_MESSAGE: usize = 64 * 1024;

/// Layers tonic applies once, so their limit is shared by all connections.
pub type RequestLimit = Stack<
    GlobalConcurrencyLimitLayer,
    Stack<LoadShedLayer, Stack<MapErrLayer<fn(BoxError) -> BoxError>, Identity>>,
>;

/// At most `max` requests handled at once over all connections; beyond
/// that a request is refused at once with RESOURCE_EXHAUSTED, since
/// queueing would only turn a burst into timeouts.
pub fn request_limit(max: usize) -> RequestLimit {
    ServiceBuilder::new()
        .layer(MapErrLayer::new(
            overloaded_status as fn(BoxError) -> BoxError,
        ))
        .layer(LoadShedLayer::new())
        .layer(GlobalConcurrencyLimitLayer::new(max))
        .into_inner()
}

/// tonic's own message for a shed request speaks of one connection; this
/// one names the limit that was hit.
fn overloaded_status(e: BoxError) -> BoxError {
    if e.is::<Overloaded>() {
        Box::new(tonic::Status::resource_exhausted(
            "the CA is handling as many requests as it allows (maxConcurrentRequests); retry with backoff",
        ))
    } else {
        e
    }
}

pub async fn run(config_path: &Path) -> anyhow::Result<()> {
    let file = CaFile::load(config_path)?;
    let cfg = &file.config;
    let (root, authority) = match (&cfg.kubernetes, &cfg.root_cert_file, &cfg.root_key_file) {
        (Some(k8s), _, _) => {
            let client = kube::Client::try_default()
                .await
                .context("Kubernetes client (in-cluster config or KUBECONFIG)")?;
            let root = kubernetes::root_from_secret(
                client.clone(),
                &k8s.root_secret,
                k8s.create_root,
                &cfg.trust_domain,
            )
            .await?;
            if let Some(cm) = &k8s.root_cert_config_map {
                kubernetes::publish_root_cert(client.clone(), cm, &root.cert_pem)
                    .await
                    .with_context(|| {
                        format!(
                            "publishing the root certificate to ConfigMap {}/{}",
                            cm.namespace, cm.name
                        )
                    })?;
                info!(namespace = %cm.namespace, name = %cm.name, "root certificate published");
            }
            (
                root,
                Authority::Kubernetes(kubernetes::KubeAuthority::new(client, k8s)?),
            )
        }
        (None, Some(cert), Some(key)) => {
            let authorizer = Arc::new(RwLock::new(Arc::new(Authorizer::from_file(&file)?)));
            tokio::spawn(follow_file(config_path.to_owned(), authorizer.clone()));
            (root::load(cert, key)?, Authority::Local(authorizer))
        }
        _ => anyhow::bail!("CaConfig: set rootCertFile and rootKeyFile, or kubernetes"),
    };
    let signer = Signer {
        root,
        default_lifetime: cfg.default_lifetime,
        max_lifetime: cfg.max_lifetime,
    };
    let (cert_pem, key_pem) = signer
        .serving_cert(&cfg.server_names)
        .context("CA serving certificate")?;
    let service = CertificateService {
        signer,
        trust_domain: cfg.trust_domain.clone(),
        authority,
    };
    let listener = tokio::net::TcpListener::bind(cfg.listen)
        .await
        .with_context(|| format!("CaConfig.listen {}", cfg.listen))?;
    // tonic applies its own TCP options only to listeners it binds.
    let incoming = tonic::transport::server::TcpIncoming::from(listener)
        .with_nodelay(Some(true))
        .with_keepalive(Some(TCP_KEEPALIVE));
    // Each agent keeps one connection; idle ones live up to
    // MAX_CONNECTION_AGE, so without a cap a client could pile them up.
    let cap = ConnectionCap::new("ca", MAX_CONNECTIONS);
    let incoming = futures::StreamExt::filter_map(incoming, move |conn| {
        let admitted = match conn {
            Ok(tcp) => {
                let peer = tcp.peer_addr().ok();
                cap.admit(tcp, peer).map(Ok)
            }
            Err(e) => Some(Err(e)),
        };
        std::future::ready(admitted)
    });
    info!(
        listen = %cfg.listen,
        trust_domain = %cfg.trust_domain,
        nodes = cfg.nodes.len(),
        kubernetes = cfg.kubernetes.is_some(),
        max_lifetime_s = cfg.max_lifetime.as_secs(),
        request_timeout_ms = cfg.request_timeout.as_millis() as u64,
        max_concurrent_requests = cfg.max_concurrent_requests,
        "CA ready"
    );
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    // tonic's server takes rustls's process default.
    mesh_identity::tls::install_process_default();
    Server::builder()
        .tls_config(
            ServerTlsConfig::new()
                .identity(TlsIdentity::from_pem(cert_pem, key_pem))
                .timeout(TLS_HANDSHAKE_TIMEOUT),
        )?
        .timeout(cfg.request_timeout)
        .concurrency_limit_per_connection(CONCURRENCY_PER_CONNECTION)
        .max_concurrent_streams(MAX_STREAMS_PER_CONNECTION)
        .initial_stream_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .http2_keepalive_interval(Some(HTTP2_KEEPALIVE_INTERVAL))
        .http2_keepalive_timeout(Some(HTTP2_KEEPALIVE_TIMEOUT))
        .max_connection_age(MAX_CONNECTION_AGE)
        // Requests in flight when the age is reached may finish.
        .max_connection_age_grace(cfg.request_timeout)
        .layer(request_limit(cfg.max_concurrent_requests))
        .add_service(
            IstioCertificateServiceServer::new(service)
                .max_decoding_message_size(MAX_REQUEST_MESSAGE),
        )
        .serve_with_incoming_shutdown(incoming, async move {
            tokio::select! {
                _ = term.recv() => {},
                _ = int.recv() => {},
            }
        })
        .await?;
    info!("CA stopped");
    Ok(())
}

async fn follow_file(path: std::path::PathBuf, authorizer: Arc<RwLock<Arc<Authorizer>>>) {
    let mut last = std::fs::read_to_string(&path).unwrap_or_default();
    let mut tick = tokio::time::interval(FILE_POLL);
    loop {
        tick.tick().await;
        let Ok(text) = std::fs::read_to_string(&path) else {
            continue;
        };
        if text == last {
            continue;
        }
        last = text.clone();
        let next = CaFile::parse(&path, &text)
            .map_err(anyhow::Error::from)
            .and_then(|f| Authorizer::from_file(&f));
        match next {
            Ok(a) => {
                *authorizer.write().unwrap() = Arc::new(a);
                info!("CA config reloaded");
            }
            Err(e) => error!(
                error = format!("{e:#}"),
                "CA config rejected; the last good one stays in force"
            ),
        }
    }
}
