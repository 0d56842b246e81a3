//! The `mesh-waypoint` process: its identity from the mesh CA, its view
//! from discovery (the node file, or the Kubernetes API), the HBONE and
//! admin listeners, readiness, and the drain on SIGTERM.
use std::{net::SocketAddr, path::PathBuf, sync::Arc, time::Duration};

use anyhow::Context;
use mesh_config::CaSettings;
use mesh_discovery::{
    NodeConfig, Published, Publisher, Source,
    kubernetes::KubernetesSource,
    local::LocalFile,
    view::{MeshView, ViewSettings},
};
use mesh_identity::{Identity, client::CaClient, manager::CertManager, tls::TrustBundle};
use tokio::{
    net::TcpListener,
    signal::unix::{SignalKind, signal},
};
use tracing::{info, warn};

use mesh_telemetry::otlp::ExporterConfig;

use crate::{
    Gateway,
    access::{self, Stderr},
    telemetry::Telemetry,
    upstream::DirectDial,
    waypoint::{Limits, Parts, Waypoint},
};

/// Where the cluster's objects come from.
#[derive(Debug, Clone)]
pub enum DiscoveryFrom {
    Kubernetes,
    /// A node file as the node agents read it, followed as it changes.
    Local(PathBuf),
}

/// Everything the command line says.
#[derive(Debug, Clone)]
pub struct Settings {
    pub discovery: DiscoveryFrom,
    pub gateway: Gateway,
    pub service_account: String,
    pub trust_domain: String,
    pub ca: CaSettings,
    pub hbone_listen: SocketAddr,
    pub admin_listen: SocketAddr,
    pub otlp_endpoint: Option<String>,
    /// From sending a request upstream to its response head; past it, 504.
    pub request_timeout: Duration,
    pub pod_name: String,
    pub pod_namespace: String,
    /// How RequestAuthentications' `jwksUri`s are fetched (`--jwks-ca-file`,
    /// `--jwks-refresh`).
    pub jwks: crate::jwks::Settings,
    /// The external authorizers' file (`--extension-providers`).
    pub extension_providers: Option<PathBuf>,
}

/// How often idle upstream connections and balancer entries are swept, and
/// the heap they and closed connections freed is given back.
const SWEEP: Duration = Duration::from_secs(5);
/// How often the drain looks whether every connection has ended.
const DRAIN_POLL: Duration = Duration::from_millis(100);
/// How often a waypoint that is not ready yet says why.
const NOT_READY_LOG: Duration = Duration::from_secs(30);

/// The `trustDomain` the file's AgentConfig document sets, if it sets one
/// (its default does not count: the flag's value stands then).
pub fn file_trust_domain(text: &str) -> Option<String> {
    use serde::Deserialize;
    for document in serde_yaml::Deserializer::from_str(text) {
        // A document that does not parse ends the reading: the iterator
        // would repeat its error.
        let Ok(value) = serde_yaml::Value::deserialize(document) else {
            return None;
        };
        if value.get("kind").and_then(|k| k.as_str()) != Some("AgentConfig") {
            continue;
        }
        return value
            .get("trustDomain")
            .and_then(|t| t.as_str())
            .map(str::to_owned);
    }
    None
}

/// The discovery source, its publisher and the first view.
enum Discovery {
    Local(Box<LocalFile>),
    Kubernetes(KubernetesSource),
}

pub async fn run(mut settings: Settings) -> anyhow::Result<()> {
    let mut limits = Limits {
        response_timeout: settings.request_timeout,
        ..Limits::default()
    };
    // Read before discovery starts: the view keeps their Services.
    let providers = match &settings.extension_providers {
        Some(path) => {
            let what = || format!("--extension-providers {}", path.display());
            let text = std::fs::read_to_string(path).with_context(what)?;
            let providers =
                crate::ext_authz::providers::Providers::parse(&text, &settings.gateway.namespace)
                    .with_context(what)?;
            info!(file = %path.display(), "extension providers read");
            Some(providers)
        }
        None => None,
    };
    // Only what this Gateway serves: the other waypoints' routes and
    // policies would cost memory and view builds here for nothing.
    let scope = settings
        .gateway
        .view_scope(providers.iter().flat_map(|p| p.services()).map(|s| s.key()));
    let (discovery, publisher, views) = match &settings.discovery {
        DiscoveryFrom::Local(path) => {
            let text = mesh_discovery::file::read(path)?;
            let config = NodeConfig::parse(path, &text, None)?;
            if let Some(td) = file_trust_domain(&text) {
                if td != settings.trust_domain {
                    info!(file = %path.display(), trust_domain = %td, flag = %settings.trust_domain, "the node file's AgentConfig.trustDomain is used");
                }
                settings.trust_domain = td;
            }
            let agent = &config.agent.limits;
            limits.handshake_timeout = agent.handshake_timeout;
            limits.connect_timeout = agent.connect_timeout;
            limits.drain_grace = agent.drain_grace;
            limits.max_connections = agent.max_connections;
            limits.buffer_budget_bytes = agent.buffer_budget_bytes;
            let view_settings = ViewSettings {
                scope: scope.clone(),
                ..config.view_settings()
            };
            let first = Published {
                view: Arc::new(MeshView::build(&config.store, &view_settings)),
                synced: true,
            };
            let (publisher, views) = Publisher::new(view_settings, first);
            let source = LocalFile::new(path.clone(), None, config.agent.clone(), text);
            (Discovery::Local(Box::new(source)), publisher, views)
        }
        DiscoveryFrom::Kubernetes => {
            let client = kube::Client::try_default().await.context(
                "--kubernetes: no cluster reachable (in-cluster service account or KUBECONFIG)",
            )?;
            let first = Published {
                view: Arc::default(),
                synced: false,
            };
            // The node agents' defaults: the same root namespace and class.
            let defaults = mesh_config::AgentConfig::new("waypoint");
            let view_settings = ViewSettings {
                trust_domain: settings.trust_domain.clone(),
                root_namespace: defaults.root_namespace,
                waypoint_class: defaults.waypoint_class,
                scope,
            };
            let (publisher, views) = Publisher::new(view_settings, first);
            (
                Discovery::Kubernetes(KubernetesSource::new(client)),
                publisher,
                views,
            )
        }
    };
    let identity = Identity::new(
        &settings.trust_domain,
        &settings.gateway.namespace,
        &settings.service_account,
    )
    .with_context(|| {
        format!(
            "identity from --trust-domain {}, --gateway {} and --service-account {}",
            settings.trust_domain, settings.gateway, settings.service_account
        )
    })?;
    let ca = CaClient::new(&settings.ca).context("--ca-* flags")?;
    let bundle =
        TrustBundle::from_pem(ca.root_pem(), &settings.trust_domain).with_context(|| {
            format!(
                "--ca-root-cert-file {}",
                settings.ca.root_cert_file.display()
            )
        })?;
    let certs = CertManager::new(Arc::new(ca));
    // Held for the process's life: the certificate is renewed while it is.
    let lease = certs.acquire(&identity);
    let hbone = TcpListener::bind(settings.hbone_listen)
        .await
        .with_context(|| format!("--hbone-listen {}: cannot listen", settings.hbone_listen))?;
    let admin = TcpListener::bind(settings.admin_listen)
        .await
        .with_context(|| format!("--admin-listen {}: cannot listen", settings.admin_listen))?;
    let otlp = settings
        .otlp_endpoint
        .as_deref()
        .map(|endpoint| {
            // The resource name Istio's waypoints report under.
            let service = format!("{}.{}", settings.gateway.name, settings.gateway.namespace);
            ExporterConfig::new(endpoint, service)
        })
        .transpose()
        .context("--otlp-endpoint")?;
    let access = Arc::new(Stderr::default());
    // Whatever way this function ends, the lines that wait are written.
    let _flush_at_exit = FlushAtExit(access.clone());
    let (telemetry, export) = Telemetry::new(access.clone(), otlp).context("--otlp-endpoint")?;
    let jwks = crate::jwks::Jwks::new(settings.jwks.clone()).context("--jwks-ca-file")?;
    let wp = Waypoint::new(Parts {
        gateway: settings.gateway.clone(),
        pod_namespace: settings.pod_namespace.clone(),
        pod_name: settings.pod_name.clone(),
        listens: [&hbone, &admin]
            .iter()
            .filter_map(|l| l.local_addr().ok())
            .collect(),
        identity: identity.clone(),
        cert: lease.watch().clone(),
        bundle,
        views,
        dial: Arc::new(DirectDial),
        limits,
        telemetry,
        jwks,
    })
    .context("the waypoint's TLS configuration")?;
    if let Some(providers) = providers {
        wp.ext_authz.set_providers(providers);
    }
    info!(gateway = %settings.gateway, %identity, hbone = %settings.hbone_listen, admin = %settings.admin_listen, "waypoint starting");

    let mut tasks = tokio::task::JoinSet::new();
    match discovery {
        Discovery::Local(s) => tasks.spawn(async move {
            s.run(publisher).await;
            "discovery"
        }),
        Discovery::Kubernetes(s) => tasks.spawn(async move {
            s.run(publisher).await;
            "discovery"
        }),
    };
    if let Some(export) = export {
        info!(collector = ?settings.otlp_endpoint, "exporting spans over OTLP/gRPC");
        tasks.spawn(async move {
            export.run().await;
            "OTLP export"
        });
    }
    {
        let wp = wp.clone();
        tasks.spawn(async move {
            if let Err(e) = crate::admin::serve(admin, wp).await {
                warn!(error = %e, "admin endpoint stopped");
            }
            "admin"
        });
    }
    {
        let access = access.clone();
        tasks.spawn(async move {
            let mut tick = tokio::time::interval(access::FLUSH_EVERY);
            loop {
                tick.tick().await;
                access.flush();
            }
        });
    }
    {
        let wp = wp.clone();
        tasks.spawn(async move {
            let mut tick = tokio::time::interval(SWEEP);
            loop {
                tick.tick().await;
                wp.upstream.sweep();
                wp.balancer.sweep();
                // The buffers of connections that have closed (a burst of
                // clients, evicted upstream connections) would otherwise
                // stay in glibc's heap for good.
                mesh_memory::release_free_heap();
            }
        });
    }
    let serving = {
        let wp = wp.clone();
        tokio::spawn(async move { wp.serve(hbone).await })
    };

    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut cert = lease.watch().clone();
    let mut views = wp.views();
    let mut not_ready_log = tokio::time::interval(NOT_READY_LOG);
    not_ready_log.reset();
    loop {
        if !wp.telemetry.is_ready() && wp.has_certificate() && wp.synced() {
            wp.telemetry.set_ready(true);
            info!(gateway = %settings.gateway, %identity, "waypoint ready");
            // Code that only starting ran (configuration, discovery's first
            // sync, the certificate request) stays mapped otherwise.
            mesh_memory::release_free_heap();
            match mesh_memory::release_startup_code() {
                Ok(kib) => info!(kib, "startup code unmapped"),
                Err(e) => warn!(error = %e, "startup code left mapped"),
            }
        }
        tokio::select! {
            _ = term.recv() => break,
            _ = int.recv() => break,
            changed = cert.changed() => if changed.is_err() {
                anyhow::bail!("the certificate manager stopped; exiting so the waypoint is restarted");
            },
            changed = views.changed() => if changed.is_err() {
                anyhow::bail!("discovery stopped publishing; exiting so the waypoint is restarted");
            },
            _ = not_ready_log.tick(), if !wp.telemetry.is_ready() => {
                warn!(certificate = wp.has_certificate(), discovery_synced = wp.synced(), "waypoint not ready");
            }
            Some(done) = tasks.join_next() => {
                let name = done.unwrap_or("a task that panicked");
                anyhow::bail!("the waypoint's {name} task ended; exiting so the waypoint is restarted");
            }
        }
    }
    drain(&wp, serving).await;
    Ok(())
}

/// Writes out the access lines that wait when dropped.
struct FlushAtExit(Arc<Stderr>);

impl Drop for FlushAtExit {
    fn drop(&mut self) {
        self.0.flush();
    }
}

/// Not ready, listener closed, GOAWAY on every HBONE connection, open
/// streams given the grace to finish; what is left is reset at exit.
async fn drain(wp: &Arc<Waypoint>, serving: tokio::task::JoinHandle<()>) {
    wp.drain();
    let _ = serving.await;
    let grace = wp.limits.drain_grace;
    info!(
        open = wp.open_connections(),
        grace_s = grace.as_secs_f32(),
        "waypoint draining: not ready, listener closed, GOAWAY sent"
    );
    let deadline = tokio::time::Instant::now() + grace;
    while wp.open_connections() > 0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(DRAIN_POLL).await;
        wp.upstream.close_idle();
    }
    let left = wp.open_connections();
    if left > 0 {
        let reset = mesh_hbone::relay::reset_all_on_exit();
        warn!(
            connections = left,
            sockets = reset,
            grace_s = grace.as_secs_f32(),
            "drain grace over; resetting what is still open"
        );
    }
    info!("waypoint stopped");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_files_trust_domain_counts_only_when_written() {
        let with = "kind: AgentConfig\nnodeName: n1\ntrustDomain: example.org\n---\nkind: Namespace\nmetadata: {name: a}\n";
        assert_eq!(file_trust_domain(with).as_deref(), Some("example.org"));
        let without =
            "---\nkind: Namespace\nmetadata: {name: a}\n---\nkind: AgentConfig\nnodeName: n1\n";
        assert_eq!(file_trust_domain(without), None);
        assert_eq!(file_trust_domain("not: [yaml"), None);
    }
}
