//! `mesh-agent`: the node agent binary.
use std::{path::PathBuf, process::ExitCode};

use clap::{Parser, Subcommand, ValueEnum};
use mesh_agent::{admin::LogControl, datapath, node};
use mesh_discovery::NodeConfig;

#[derive(Parser)]
#[command(name = "mesh-agent", version, about = "mesh node agent")]
struct Cli {
    /// Log line format.
    #[arg(long, value_enum, default_value_t = LogFormat::Json, global = true)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Json,
    Text,
}

#[derive(Subcommand)]
enum Command {
    /// Run the node agent.
    Node {
        /// Configuration file (YAML; see README "Local mode").
        #[arg(long)]
        config: PathBuf,
        /// This node's name; overrides AgentConfig.nodeName.
        #[arg(long)]
        node_name: Option<String>,
        /// Validate the configuration and the node, change nothing, and exit.
        #[arg(long)]
        check_config: bool,
        /// With --check-config: validate only the file and flags, not this
        /// machine (for checking a config meant for another node, e.g. the
        /// Helm chart's rendered config).
        #[arg(long, requires = "check_config")]
        config_only: bool,
        /// Proxy worker threads. One (the default, a current-thread
        /// runtime) keeps each hop on one thread with no cross-thread
        /// wake-ups: with the multi-thread scheduler, one worker measured
        /// 2.4x direct RTT against 3.9x with two. Raise it on nodes with
        /// heavy bulk traffic.
        #[arg(long, default_value_t = 1)]
        worker_threads: usize,
        /// Directory of the hand-over socket (`handover.sock`): a new
        /// agent takes over the running one's pod listeners through it
        /// instead of refusing and resetting connections (see README
        /// "Upgrading"). Unset: no hand-over; a new agent starts afresh.
        #[arg(long)]
        handover_dir: Option<PathBuf>,
        /// How long an agent that handed over serves its established
        /// connections before resetting what remains and exiting.
        #[arg(long, value_parser = humantime::parse_duration, default_value = "1h")]
        handover_drain: std::time::Duration,
        /// How long a new agent may take to be ready once the running one
        /// offered its listeners; past it, it exits and the running one
        /// keeps serving.
        #[arg(long, value_parser = humantime::parse_duration, default_value = "60s")]
        handover_ready_timeout: std::time::Duration,
    },
    /// Run the mesh's certificate authority (Istio-compatible gRPC), or
    /// create its root with `ca init`. The same as the `mesh-ca` binary.
    /// (Boxed: the CA's flags, waypoint controller included, dwarf the others.)
    Ca(Box<mesh_ca::command::CaArgs>),
    /// Print the CustomResourceDefinitions mesh reads (AuthorizationPolicy,
    /// PeerAuthentication; security.istio.io/v1) as YAML.
    Crd,
    /// Remove this node's pinned datapath: programs detached, maps freed.
    /// Enrolled pods then bypass the mesh; run it only when removing mesh.
    Uninstall {
        #[arg(long)]
        config: PathBuf,
        /// This node's name; overrides AgentConfig.nodeName (default: the
        /// NODE_NAME environment variable, as the DaemonSet sets it).
        #[arg(long)]
        node_name: Option<String>,
    },
}

/// Sets up tracing with a filter the admin API can replace at run time.
fn init_logging(format: LogFormat) -> LogControl {
    use tracing_subscriber::{
        EnvFilter, Layer, fmt, layer::SubscriberExt, reload, util::SubscriberInitExt,
    };
    let filter = EnvFilter::try_from_env("MESH_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    let (filter, handle) = reload::Layer::new(filter);
    let output = match format {
        LogFormat::Json => fmt::layer()
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(false)
            .with_writer(std::io::stderr)
            .boxed(),
        LogFormat::Text => fmt::layer().with_writer(std::io::stderr).boxed(),
    };
    tracing_subscriber::registry()
        .with(filter)
        .with(output)
        .init();
    let reader = handle.clone();
    LogControl::new(
        move || {
            reader
                .with_current(|f| f.to_string())
                .unwrap_or_else(|e| e.to_string())
        },
        move |text| {
            let new = EnvFilter::try_new(text).map_err(|e| format!("`{text}`: {e}"))?;
            handle.reload(new).map_err(|e| e.to_string())
        },
    )
}

/// A panic anywhere ends the process: a task that died inside tokio would
/// otherwise leave the agent half-alive (listening, maybe ready, serving
/// nothing). Kubernetes restarts it; enrolled pods fail closed meanwhile.
/// The release profile aborts on panic too; this covers every build.
fn abort_on_panic() {
    let report = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        report(info);
        tracing::error!(panic = %info, "panic; aborting so the agent is restarted");
        std::process::abort();
    }));
}

/// Raises the open-file limit to its hard limit: every proxied connection
/// holds two or three descriptors, and the usual soft limit of 1024 would
/// cap the agent at a few hundred connections.
fn raise_fd_limit() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read and write the struct given.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 || lim.rlim_cur >= lim.rlim_max {
            return;
        }
        let from = lim.rlim_cur;
        lim.rlim_cur = lim.rlim_max;
        if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) == 0 {
            tracing::info!(from, to = lim.rlim_max, "open file limit raised");
        } else {
            tracing::warn!(limit = from, error = %std::io::Error::last_os_error(), "open file limit not raised");
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let log = init_logging(cli.log_format);
    abort_on_panic();
    raise_fd_limit();
    mesh_identity::tls::install_process_default();
    match run(cli.command, log) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("mesh-agent: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(command: Command, log: LogControl) -> anyhow::Result<()> {
    match command {
        Command::Node {
            config,
            node_name,
            check_config,
            config_only,
            worker_threads,
            handover_dir,
            handover_drain,
            handover_ready_timeout,
        } => {
            let handover = handover_dir.map(|dir| mesh_agent::handover::Settings {
                dir,
                drain: handover_drain,
                ready_timeout: handover_ready_timeout,
            });
            if check_config && config_only {
                let cfg = NodeConfig::load(&config, node_name.as_deref())?;
                println!(
                    "{}: ok (node {}, discovery {:?}; this machine not checked)",
                    config.display(),
                    cfg.agent.node_name,
                    cfg.agent.discovery
                );
                return Ok(());
            }
            if check_config {
                let cfg = NodeConfig::load(&config, node_name.as_deref())?;
                // The CA client it builds needs a runtime, as in the agent.
                tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()?
                    .block_on(async { node::check(&cfg) })?;
                let view = cfg.view();
                println!(
                    "{}: ok (node {}, discovery {:?}, {} pods, {} services, {} enrolled here)",
                    config.display(),
                    cfg.agent.node_name,
                    cfg.agent.discovery,
                    view.sizes.pods,
                    view.sizes.services,
                    cfg.enrolled_pods().len()
                );
                return Ok(());
            }
            // One thread needs no work-stealing scheduler: the current-thread
            // runtime polls every task where its I/O arrived, without the
            // cross-thread wake-ups and atomics of the multi-thread one.
            let runtime = if worker_threads <= 1 {
                tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()?
            } else {
                tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(worker_threads)
                    .enable_all()
                    .build()?
            };
            runtime.block_on(async {
                let node =
                    node::Node::start_with(&config, node_name.as_deref(), log, handover).await?;
                node.run().await
            })
        }
        Command::Ca(args) => mesh_ca::command::run(*args, "mesh-agent ca"),
        Command::Crd => {
            print!("{}", mesh_policy::crd::yaml()?);
            Ok(())
        }
        Command::Uninstall { config, node_name } => {
            // In the DaemonSet's container (no shell to expand $(NODE_NAME)),
            // the downward API's variable names the node.
            let node_name = node_name.or_else(|| std::env::var("NODE_NAME").ok());
            let cfg = NodeConfig::load(&config, node_name.as_deref())?;
            let dir = cfg.pin_dir();
            if datapath::uninstall(&dir)? {
                println!("removed {}", dir.display());
            } else {
                println!("nothing pinned at {}", dir.display());
            }
            Ok(())
        }
    }
}
