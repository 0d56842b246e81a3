//! `mesh-ca`: the mesh's certificate authority.
use std::process::ExitCode;

use clap::{Parser, ValueEnum};
use mesh_ca::command::{self, CaArgs};

#[derive(Parser)]
#[command(name = "mesh-ca", version, about = "mesh certificate authority")]
struct Cli {
    /// Log line format.
    #[arg(long, value_enum, default_value_t = LogFormat::Json, global = true)]
    log_format: LogFormat,
    #[command(flatten)]
    args: CaArgs,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Json,
    Text,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_env("MESH_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match cli.log_format {
        LogFormat::Json => logs.json().flatten_event(true).init(),
        LogFormat::Text => logs.init(),
    }
    mesh_identity::tls::install_process_default();
    match command::run(cli.args, "mesh-ca") {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("mesh-ca: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
