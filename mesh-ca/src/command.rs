//! The CA's command line, shared by the `mesh-ca` binary and the agent
//! image's `mesh-agent ca` (one image holds both).
use std::path::PathBuf;

use clap::{Args, Subcommand};

use crate::{config::CaFile, root, server};

/// Run the CA with `--config`, check a config with `--check-config`, or
/// create a root with `init`.
#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct CaArgs {
    /// CA configuration file (YAML; see README "Certificate authority").
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Validate the configuration file and exit.
    #[arg(long)]
    pub check_config: bool,
    #[command(subcommand)]
    pub command: Option<CaCommand>,
}

#[derive(Debug, Subcommand)]
pub enum CaCommand {
    /// Create a new root certificate and key (refuses to overwrite either).
    Init {
        #[arg(long)]
        cert: PathBuf,
        #[arg(long)]
        key: PathBuf,
        #[arg(long, default_value = "cluster.local")]
        trust_domain: String,
        /// Root lifetime, e.g. 10y, 8760h.
        #[arg(long, default_value = "10y")]
        lifetime: humantime::Duration,
    },
}

/// Runs what `args` asks; `invoked_as` names the command in errors.
pub fn run(args: CaArgs, invoked_as: &str) -> anyhow::Result<()> {
    match args {
        CaArgs {
            command:
                Some(CaCommand::Init {
                    cert,
                    key,
                    trust_domain,
                    lifetime,
                }),
            ..
        } => {
            root::init(&cert, &key, &trust_domain, lifetime.into())?;
            println!(
                "created root {} (key {}, trust domain {trust_domain})",
                cert.display(),
                key.display()
            );
            Ok(())
        }
        CaArgs {
            config: Some(config),
            check_config: true,
            command: None,
        } => {
            let file = CaFile::load(&config)?;
            println!(
                "{}: ok (trust domain {}, listen {}, {})",
                config.display(),
                file.config.trust_domain,
                file.config.listen,
                if file.config.kubernetes.is_some() {
                    "kubernetes"
                } else {
                    "local"
                }
            );
            Ok(())
        }
        CaArgs {
            config: Some(config),
            command: None,
            ..
        } => {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()?;
            runtime.block_on(server::run(&config))
        }
        CaArgs { .. } => {
            anyhow::bail!("`{invoked_as}` needs --config <file> (or `{invoked_as} init`)")
        }
    }
}
