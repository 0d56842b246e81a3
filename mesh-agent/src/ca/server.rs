//! Runs the CA: loads the root, serves gRPC over TLS, and follows changes
//! to its file (nodes and pods come and go) without a restart.
use std::{
    path::Path,
    sync::{Arc, RwLock},
    time::Duration,
};

use anyhow::Context;
use tokio::signal::unix::{SignalKind, signal};
use tonic::transport::{Identity as TlsIdentity, Server, ServerTlsConfig};
use tracing::{error, info};

use super::{
    authz::{Authority, Authorizer},
    config::CaFile,
    grpc::istio_certificate_service_server::IstioCertificateServiceServer,
    kubernetes, root,
    service::CertificateService,
    signer::Signer,
};

const FILE_POLL: Duration = Duration::from_millis(500);

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
    let incoming = tonic::transport::server::TcpIncoming::from(listener);
    info!(
        listen = %cfg.listen,
        trust_domain = %cfg.trust_domain,
        nodes = cfg.nodes.len(),
        kubernetes = cfg.kubernetes.is_some(),
        max_lifetime_s = cfg.max_lifetime.as_secs(),
        "CA ready"
    );
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    // tonic's server takes rustls's process default.
    crate::tls::install_process_default();
    Server::builder()
        .tls_config(ServerTlsConfig::new().identity(TlsIdentity::from_pem(cert_pem, key_pem)))?
        .add_service(IstioCertificateServiceServer::new(service))
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
