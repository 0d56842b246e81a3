//! `mesh`, the command line: `mesh status` and `mesh inspect`, against the
//! agents of a local-mode cluster (their config files) or of a Kubernetes
//! cluster (the agent pods, through the API server).
pub mod agents;
pub mod inspect;
pub mod output;
pub mod status;

use std::{path::PathBuf, sync::Arc, time::Duration};

use agents::Cluster;
use anyhow::Context;
use clap::{Parser, Subcommand};
use mesh_discovery::{
    NodeConfig, Published, Publisher, Source,
    kubernetes::KubernetesSource,
    view::{MeshView, ViewSettings},
};
use output::Format;

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
    /// their verdicts, current flows.
    Inspect {
        /// `<namespace>/<workload or service>`.
        target: String,
    },
}

/// What the command printed and whether everything it looked at was healthy.
pub struct Outcome {
    pub text: String,
    pub ok: bool,
}

pub async fn run(cli: Cli) -> anyhow::Result<Outcome> {
    let cluster = if cli.config.is_empty() {
        let client = kube::Client::try_default().await.context(
            "no --config given and no Kubernetes cluster reachable (kubeconfig or in-cluster); \
             pass --config <agent config> for a local-mode cluster",
        )?;
        Cluster::Kubernetes {
            client,
            namespace: cli.namespace.clone(),
            selector: cli.selector.clone(),
            status_port: cli.status_port,
        }
    } else {
        Cluster::Local {
            configs: cli.config.clone(),
        }
    };
    match &cli.command {
        Command::Status => {
            let report = status::collect(&cluster).await?;
            Ok(Outcome {
                text: status::render(cli.output, &report)?,
                ok: report.healthy,
            })
        }
        Command::Inspect { target } => {
            let view = view(&cli, &cluster).await?;
            let mut inspection = inspect::inspect(&view, target)?;
            inspect::add_flows(&cluster, &mut inspection, &view).await;
            Ok(Outcome {
                text: inspect::render(cli.output, &inspection)?,
                ok: true,
            })
        }
    }
}

/// The cluster as the agents see it: from the first config file, or from
/// the API server (one full list of every kind the agents watch).
async fn view(cli: &Cli, cluster: &Cluster) -> anyhow::Result<Arc<MeshView>> {
    match cluster {
        Cluster::Local { configs } => Ok(Arc::new(NodeConfig::load(&configs[0], None)?.view())),
        Cluster::Kubernetes { client, .. } => {
            let settings = ViewSettings {
                trust_domain: cli.trust_domain.clone(),
                root_namespace: cli.root_namespace.clone(),
                waypoint_class: mesh_config::DEFAULT_WAYPOINT_CLASS.into(),
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
