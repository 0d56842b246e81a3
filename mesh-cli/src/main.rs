//! `mesh`: see the mesh from the command line.
use std::process::ExitCode;

use clap::Parser;
use mesh_cli::{Cli, run};

fn main() -> ExitCode {
    let cli = Cli::parse();
    mesh_identity::tls::install_process_default();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("mesh: error: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(outcome) => {
            print!("{}", outcome.text);
            if outcome.ok {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(2)
            }
        }
        Err(e) => {
            eprintln!("mesh: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
