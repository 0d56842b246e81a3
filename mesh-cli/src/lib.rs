//! `mesh`, the command line: `mesh status`, `mesh inspect` and `mesh
//! waypoint`, against the agents of a local-mode cluster (their config
//! files) or of a Kubernetes cluster (the agent pods, through the API
//! server).
pub mod agents;
pub mod destination_rules;
pub mod inspect;
pub mod output;
pub mod routing;
pub mod status;
#[cfg(test)]
mod testing;
pub mod waypoint;

use std::{path::PathBuf, sync::Arc, time::Duration};

use agents::Cluster;
use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use mesh_discovery::{
    NodeConfig, Published, Publisher, Source,
    kubernetes::KubernetesSource,
    view::{MeshView, ViewSettings},
};
use output::Format;
use waypoint::manifest::WaypointDeclaration;

const KUBE_SYNC: Duration = Duration::from_secs(30);

#[derive(Parser)]
#[command(
    name = "mesh",
    version,
    about = "See the mesh: its agents, workloads and policies"
)]
pub struct Cli {
    /// Local mode: an agent's config file (repeat for each node). Without
    /// it, mesh talks to the Kubernetes cluster of the current kubeconfig.
    #[arg(long, global = true, value_delimiter = ',')]
    pub config: Vec<PathBuf>,
    /// Namespace of the agent DaemonSet (Kubernetes mode).
    #[arg(long, global = true, default_value = "mesh-system")]
    pub namespace: String,
    /// Label selector of the agent pods (Kubernetes mode).
    #[arg(
        long,
        global = true,
        default_value = "app.kubernetes.io/name=mesh-agent"
    )]
    pub selector: String,
    /// The agents' status port (Kubernetes mode).
    #[arg(long, global = true, default_value_t = 15021)]
    pub status_port: u16,
    /// Trust domain and root namespace, as the agents are configured
    /// (Kubernetes mode; local mode reads them from the config).
    #[arg(long, global = true, default_value = "cluster.local")]
    pub trust_domain: String,
    #[arg(long, global = true, default_value = "istio-system")]
    pub root_namespace: String,
    /// The GatewayClass of waypoints, as the agents' waypointClass
    /// (default mesh-waypoint; local mode reads it from the config).
    #[arg(long = "waypoint-class", visible_alias = "class", global = true)]
    pub waypoint_class: Option<String>,
    /// Output format.
    #[arg(short = 'o', long, global = true, value_enum, default_value_t = Format::Table)]
    pub output: Format,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub enum Command {
    /// Every agent: health, version, programs, pods, certificates, traffic.
    /// Exits non-zero when an agent is unhealthy or unreachable.
    Status,
    /// A workload or Service: identity, endpoints, policies in and out with
    /// their verdicts, current flows; a Service's routes (HTTPRoute,
    /// GRPCRoute) with their status, in the order they are tried. With
    /// --request, only which rule that request takes and where it goes.
    Inspect {
        /// `<namespace>/<workload or service>`.
        target: String,
        /// A request to the Service, e.g. 'GET /api?x=1 -H version:2': the
        /// rule that would take it (by the waypoint's matcher), its filters,
        /// and where it would go.
        #[arg(long, value_name = "'METHOD /PATH?QUERY -H NAME:VALUE ...'")]
        request: Option<String>,
        /// The Service port the request is sent to (default: its only port).
        #[arg(long, requires = "request")]
        port: Option<u16>,
        /// The client's namespace, whose own (consumer) routes replace the
        /// Service's for its clients (default: the Service's namespace).
        #[arg(long, value_name = "NAMESPACE", requires = "request")]
        from: Option<String>,
    },
    /// Waypoints: declare one (a Gateway of the waypoint class) or see them.
    #[command(subcommand)]
    Waypoint(WaypointCommand),
}

#[derive(Subcommand)]
pub enum WaypointCommand {
    /// Creates or updates a waypoint's Gateway (server-side apply), as
    /// `istioctl waypoint apply` does. With --dry-run, or in local mode,
    /// prints it instead.
    Apply(ApplyArgs),
    /// Every waypoint: its ready pods, identity, what uses it, and whatever
    /// names a waypoint that cannot be used. Exits 2 when there are problems.
    Status {
        /// Only waypoints in, and problems of objects in, this namespace.
        #[arg(short = 'n', long = "waypoint-namespace", value_name = "NAMESPACE")]
        waypoint_namespace: Option<String>,
    },
}

#[derive(clap::Args)]
pub struct ApplyArgs {
    /// The waypoint's namespace.
    #[arg(short = 'n', long = "waypoint-namespace", value_name = "NAMESPACE")]
    pub waypoint_namespace: String,
    /// The Gateway's name.
    #[arg(long, default_value = "waypoint")]
    pub name: String,
    /// Which destinations it serves (istio.io/waypoint-for).
    #[arg(long = "for", value_enum, default_value_t = waypoint::manifest::ForArg::Service)]
    pub waypoint_for: waypoint::manifest::ForArg,
    /// Also label the namespace istio.io/use-waypoint=<name>, sending its
    /// traffic through the waypoint.
    #[arg(long)]
    pub enroll_namespace: bool,
    /// Print the Gateway; apply nothing.
    #[arg(long)]
    pub dry_run: bool,
}

/// What the command printed and whether everything it looked at was healthy.
pub struct Outcome {
    pub text: String,
    pub ok: bool,
}

pub async fn run(cli: Cli) -> anyhow::Result<Outcome> {
    if let Command::Waypoint(WaypointCommand::Apply(args)) = &cli.command {
        return waypoint_apply(&cli, args).await;
    }
    // A mistake in --request is reported before any cluster is looked for.
    let request = match &cli.command {
        Command::Inspect {
            request: Some(text),
            ..
        } => Some(routing::request::parse(text)?),
        _ => None,
    };
    let cluster = if cli.config.is_empty() {
        Cluster::Kubernetes {
            client: kube_client().await?,
            namespace: cli.namespace.clone(),
            selector: cli.selector.clone(),
            status_port: cli.status_port,
        }
    } else {
        Cluster::Local {
            configs: cli.config.clone(),
        }
    };
    match (&cli.command, &request) {
        (Command::Status, _) => {
            let report = status::collect(&cluster).await?;
            Ok(Outcome {
                text: status::render(cli.output, &report)?,
                ok: report.healthy,
            })
        }
        (
            Command::Inspect {
                target, port, from, ..
            },
            Some(request),
        ) => {
            let view = view(&cli, &cluster).await?;
            let answer = routing::answer::answer(
                &view,
                target,
                routing::answer::Question {
                    request,
                    port: *port,
                    from: from.as_deref(),
                },
            )?;
            Ok(Outcome {
                text: output::render(cli.output, &answer, routing::render::answer)?,
                ok: true,
            })
        }
        (Command::Inspect { target, .. }, None) => {
            let view = view(&cli, &cluster).await?;
            let mut inspection = inspect::inspect(&view, target)?;
            inspect::add_flows(&cluster, &mut inspection, &view).await;
            Ok(Outcome {
                text: inspect::render(cli.output, &inspection)?,
                ok: true,
            })
        }
        (Command::Waypoint(WaypointCommand::Apply(args)), _) => waypoint_apply(&cli, args).await,
        (Command::Waypoint(WaypointCommand::Status { waypoint_namespace }), _) => {
            waypoint_status(&cli, &cluster, waypoint_namespace.as_deref()).await
        }
    }
}

/// `mesh waypoint status`: local mode from the first config file, Kubernetes
/// mode from one list of every kind plus the Gateways' own status.
pub async fn waypoint_status(
    cli: &Cli,
    cluster: &Cluster,
    namespace: Option<&str>,
) -> anyhow::Result<Outcome> {
    let (view, gateways, class, no_crds) = match cluster {
        Cluster::Local { configs } => {
            let cfg = local_config(cli, configs)?;
            (
                Arc::new(cfg.view()),
                waypoint::gateways::from_store(&cfg.store),
                cfg.agent.waypoint_class.clone(),
                false,
            )
        }
        Cluster::Kubernetes { client, .. } => {
            let view = view(cli, cluster).await?;
            let listed =
                tokio::time::timeout(KUBE_SYNC, waypoint::gateways::list(client, namespace))
                    .await
                    .context("the API server did not list Gateways within 30s")??;
            match listed {
                waypoint::gateways::Listed::Gateways(g) => {
                    (view, g, kube_waypoint_class(cli), false)
                }
                waypoint::gateways::Listed::NoCrds => {
                    (view, Vec::new(), kube_waypoint_class(cli), true)
                }
            }
        }
    };
    let mut report = waypoint::status::report(&view, &gateways, &class, namespace);
    if no_crds {
        report.notes.push(format!(
            "the Gateway API CRDs are not installed, so there are no waypoints; \
             install them: helm upgrade mesh charts/mesh -n {} --reuse-values \
             --set gatewayAPI.installCRDs=true",
            cli.namespace
        ));
    }
    Ok(Outcome {
        text: waypoint::status::render(cli.output, &report)?,
        ok: report.healthy(),
    })
}

async fn kube_client() -> anyhow::Result<kube::Client> {
    kube::Client::try_default().await.context(
        "no --config given and no Kubernetes cluster reachable (kubeconfig or in-cluster); \
         pass --config <agent config> for a local-mode cluster",
    )
}

/// `mesh waypoint apply`: in local mode, or with --dry-run, the Gateway's
/// YAML (no cluster needed); else the Gateway applied.
async fn waypoint_apply(cli: &Cli, args: &ApplyArgs) -> anyhow::Result<Outcome> {
    let declare = |class: &str| {
        WaypointDeclaration::new(
            &args.waypoint_namespace,
            &args.name,
            class,
            args.waypoint_for.into(),
        )
    };
    let text = if let Some(file) = cli.config.first() {
        let agents_class = NodeConfig::load(file, None)?.agent.waypoint_class;
        let decl = declare(cli.waypoint_class.as_deref().unwrap_or(&agents_class))?;
        let notes = waypoint::apply::local_notes(&decl, args.enroll_namespace, &agents_class);
        waypoint::apply::document(cli.output, &decl, &notes)?
    } else if args.dry_run {
        let decl = declare(&kube_waypoint_class(cli))?;
        let notes = waypoint::apply::dry_run_notes(&decl, args.enroll_namespace);
        waypoint::apply::document(cli.output, &decl, &notes)?
    } else {
        let decl = declare(&kube_waypoint_class(cli))?;
        let client = kube_client().await?;
        let applied = tokio::time::timeout(
            KUBE_SYNC,
            waypoint::apply::apply(&client, &decl, args.enroll_namespace, &cli.namespace),
        )
        .await
        .context("the API server did not answer within 30s")??;
        waypoint::apply::render(cli.output, &applied)?
    };
    Ok(Outcome { text, ok: true })
}

/// The waypoint class in Kubernetes mode: the flag, else the chart's default.
fn kube_waypoint_class(cli: &Cli) -> String {
    cli.waypoint_class
        .clone()
        .unwrap_or_else(|| mesh_config::DEFAULT_WAYPOINT_CLASS.into())
}

/// The first config file; `--waypoint-class` may not contradict it.
fn local_config(cli: &Cli, configs: &[PathBuf]) -> anyhow::Result<NodeConfig> {
    let cfg = NodeConfig::load(&configs[0], None)?;
    if let Some(class) = &cli.waypoint_class
        && *class != cfg.agent.waypoint_class
    {
        bail!(
            "--waypoint-class {class}: in local mode the agents' class is their \
             AgentConfig.waypointClass ({}); drop the flag or change the config",
            cfg.agent.waypoint_class
        );
    }
    Ok(cfg)
}

/// The cluster as the agents see it: from the first config file, or from
/// the API server (one full list of every kind the agents watch).
async fn view(cli: &Cli, cluster: &Cluster) -> anyhow::Result<Arc<MeshView>> {
    match cluster {
        Cluster::Local { configs } => Ok(Arc::new(local_config(cli, configs)?.view())),
        Cluster::Kubernetes { client, .. } => {
            let settings = ViewSettings {
                trust_domain: cli.trust_domain.clone(),
                root_namespace: cli.root_namespace.clone(),
                waypoint_class: kube_waypoint_class(cli),
                // The cluster as the node agents see it, whole.
                scope: mesh_discovery::scope::Scope::Node,
            };
            let (publisher, mut views) = Publisher::new(
                settings,
                Published {
                    view: Arc::default(),
                    synced: false,
                },
            );
            let task = tokio::spawn(KubernetesSource::new(client.clone()).run(publisher));
            let synced = tokio::time::timeout(KUBE_SYNC, views.wait_for(|p| p.synced)).await;
            task.abort();
            let published = synced
                .context("the API server did not list every kind within 30s")?
                .context("discovery stopped")?;
            Ok(published.view.clone())
        }
    }
}
