//! `mesh-waypoint`: the waypoint binary (see the library's documentation).
use std::{net::SocketAddr, path::PathBuf, process::ExitCode};

use clap::{ArgGroup, Parser};
use mesh_config::CaSettings;
use mesh_waypoint::{
    Gateway,
    run::{DiscoveryFrom, Settings},
};

#[derive(Parser)]
#[command(
    name = "mesh-waypoint",
    version,
    about = "mesh waypoint: L7 hop for HBONE traffic"
)]
#[command(group(ArgGroup::new("discovery").required(true).args(["kubernetes", "local"])))]
struct Cli {
    /// Read Services, pods and endpoints from the Kubernetes API.
    #[arg(long)]
    kubernetes: bool,
    /// Read them from a node file (AgentConfig plus Kubernetes objects),
    /// followed as it changes.
    #[arg(long, value_name = "FILE")]
    local: Option<PathBuf>,
    /// The Gateway this waypoint runs for: <namespace>/<name>.
    #[arg(long)]
    gateway: Gateway,
    /// The waypoint's service account: its identity is
    /// spiffe://<trust domain>/ns/<gateway namespace>/sa/<this>.
    #[arg(long)]
    service_account: String,
    /// Trust domain (with --local, the file's AgentConfig trustDomain wins).
    #[arg(long, default_value = "cluster.local")]
    trust_domain: String,
    /// The mesh CA: host:port.
    #[arg(long)]
    ca_address: String,
    /// The DNS name in the CA's serving certificate.
    #[arg(long)]
    ca_server_name: Option<String>,
    /// The mesh's root certificate (PEM).
    #[arg(long)]
    ca_root_cert_file: PathBuf,
    /// The token presented to the CA (a projected service-account token).
    #[arg(long)]
    ca_token_file: PathBuf,
    #[arg(long, default_value = "0.0.0.0:15008")]
    hbone_listen: SocketAddr,
    /// /ready, /metrics, /config_dump.
    #[arg(long, default_value = "0.0.0.0:15020")]
    admin_listen: SocketAddr,
    /// OTLP/gRPC collector for spans, http://<host>:<port> (plaintext, as
    /// a collector in the cluster listens on 4317).
    #[arg(long)]
    otlp_endpoint: Option<String>,
    /// From sending a request to an endpoint until its response head:
    /// past it the client gets 504 (UT). E.g. 60s, 1500ms, 2m.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    request_timeout: std::time::Duration,
    #[arg(long, env = "POD_NAME", default_value = "waypoint")]
    pod_name: String,
    /// Defaults to the gateway's namespace.
    #[arg(long, env = "POD_NAMESPACE")]
    pod_namespace: Option<String>,
    /// Proxy worker threads. One (the default, a current-thread runtime,
    /// as the node agent's): at 1000 req/s a profile of the multi-thread
    /// runtime spent 17 % of the waypoint's CPU parking and waking
    /// workers, and each worker's malloc arena held 3-4 MiB. Raise it
    /// (scale out replicas first) for a waypoint that needs more than one
    /// core.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..))]
    worker_threads: u16,
    /// PEM certificates trusted, besides the system's roots, for the HTTPS
    /// servers RequestAuthentications' jwksUri name (an issuer with a
    /// private CA).
    #[arg(long)]
    jwks_ca_file: Option<PathBuf>,
    /// How often each jwksUri is fetched again (Istio's default, 20m).
    #[arg(long, default_value = "20m", value_parser = humantime::parse_duration)]
    jwks_refresh: std::time::Duration,
    /// A YAML file of extension providers, shaped like Istio's meshConfig
    /// (`extensionProviders: [{name, envoyExtAuthzGrpc: {service, port,
    /// timeout, failOpen, statusOnError, includeRequestHeadersInCheck}}]`):
    /// the external authorizers CUSTOM AuthorizationPolicies name.
    #[arg(long, env = "MESH_EXTENSION_PROVIDERS", value_name = "FILE")]
    extension_providers: Option<PathBuf>,
}

/// JSON lines on stderr; `MESH_LOG` sets the filter (e.g. `info,access=off`).
fn init_logging() {
    use tracing_subscriber::{EnvFilter, fmt};
    let filter = EnvFilter::try_from_env("MESH_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    fmt()
        .json()
        .flatten_event(true)
        .with_current_span(false)
        .with_span_list(false)
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

/// A panic anywhere ends the process, so Kubernetes restarts it instead of
/// a half-dead waypoint staying ready.
fn abort_on_panic() {
    let report = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        report(info);
        tracing::error!(panic = %info, "panic; aborting so the waypoint is restarted");
        std::process::abort();
    }));
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging();
    abort_on_panic();
    mesh_identity::tls::install_process_default();
    let discovery = match cli.local {
        Some(file) => DiscoveryFrom::Local(file),
        None => DiscoveryFrom::Kubernetes,
    };
    let mut ca = CaSettings::new(cli.ca_address, cli.ca_root_cert_file, cli.ca_token_file);
    if let Some(name) = cli.ca_server_name {
        ca.server_name = name;
    }
    let cli_workers = cli.worker_threads;
    let settings = Settings {
        discovery,
        pod_namespace: cli
            .pod_namespace
            .unwrap_or_else(|| cli.gateway.namespace.clone()),
        gateway: cli.gateway,
        service_account: cli.service_account,
        trust_domain: cli.trust_domain,
        ca,
        hbone_listen: cli.hbone_listen,
        admin_listen: cli.admin_listen,
        otlp_endpoint: cli.otlp_endpoint,
        request_timeout: cli.request_timeout,
        pod_name: cli.pod_name,
        jwks: mesh_waypoint::jwks::Settings {
            refresh: cli.jwks_refresh,
            ca_file: cli.jwks_ca_file,
            ..Default::default()
        },
        extension_providers: cli.extension_providers,
    };
    let runtime = if cli_workers == 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(usize::from(cli_workers))
            .enable_all()
            .build()
    };
    let runtime = match runtime {
        Ok(r) => r,
        Err(e) => {
            eprintln!("mesh-waypoint: error: tokio runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(mesh_waypoint::run::run(settings)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("mesh-waypoint: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
