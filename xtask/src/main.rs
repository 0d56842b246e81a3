//! Developer tasks: `cargo xtask <setup|build-ebpf|build-release|test|demo|bench>`.
mod bench;
mod bench_discovery;
mod chart;
mod demo;
mod ebpf_build;
mod fuzz;
mod image;
mod pgo;
mod setup;
mod test;

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "xtask")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Install what this machine lacks: nightly rust-src, bpf-linker, the
    /// apt packages the tests and benchmarks use; mount bpffs. Idempotent.
    Setup,
    /// Build the kernel programs and print where the object is.
    BuildEbpf,
    /// Setup, lint, then every test: unit, kernel and end-to-end.
    Test,
    /// A simulated 2-node x 2-pod cluster with traffic through the agents.
    Demo(demo::Args),
    /// The agent as it ships: a release build optimised with a profile of
    /// its own run on the test bed (PGO). Prints the binary's path.
    BuildRelease {
        /// Use this merged profile (target/pgo/mesh-agent.profdata of an
        /// earlier run) instead of training: where no test bed can run,
        /// as in the image build.
        #[arg(long)]
        profile: Option<PathBuf>,
    },
    /// Direct vs through-the-mesh benchmarks on the test bed.
    Bench(bench::Args),
    /// Lint, render and validate charts/mesh against the Kubernetes schemas
    /// and the agent's own config checks (also part of `test`).
    Chart {
        /// Regenerate charts/mesh/templates/crds.yaml from the Rust types.
        #[arg(long)]
        write_crds: bool,
    },
    /// Build the container image (needs a Docker engine).
    Image {
        #[arg(long, default_value = "ghcr.io/mesh/mesh-agent:0.1.0")]
        tag: String,
    },
    /// Run the fuzz targets in fuzz/ (config file, policies, HBONE request
    /// heads) for a while each; a short pass is part of `test`.
    Fuzz(fuzz::Args),
}

fn main() {
    let cli = Cli::parse();
    let result = match cli.cmd {
        Cmd::Setup => setup::run(),
        Cmd::BuildEbpf => setup::run()
            .and_then(|()| build_ebpf())
            .map(|p| println!("eBPF object: {}", p.display())),
        Cmd::Test => test::run(),
        Cmd::Demo(args) => demo::run(args),
        Cmd::BuildRelease { profile } => match profile {
            Some(p) => pgo::build_with(&p),
            None => pgo::build(),
        }
        .map(|p| println!("mesh-agent: {}", p.display())),
        Cmd::Bench(args) => bench::run(args),
        Cmd::Chart { write_crds } => build_userspace(false).and_then(|()| {
            if write_crds {
                chart::write_crds()
            } else {
                setup::run()
                    .and_then(|()| chart::check())
                    .map(|n| println!("chart: {n} checks passed"))
            }
        }),
        Cmd::Image { tag } => image::build(&tag),
        Cmd::Fuzz(args) => setup::run().and_then(|()| fuzz::run(&args)),
    };
    if let Err(e) = result {
        eprintln!("xtask: error: {e:#}");
        std::process::exit(1);
    }
}

pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

pub fn build_ebpf() -> anyhow::Result<PathBuf> {
    let ws = workspace();
    let status = ebpf_build::command(&ws)
        .status()
        .with_context(|| format!("running rustup; {}", ebpf_build::FIX_HINT))?;
    if !status.success() {
        bail!("eBPF build failed ({status}); {}", ebpf_build::FIX_HINT);
    }
    Ok(ebpf_build::object_path(&ws))
}

/// Runs a command in the workspace, echoing it, failing on failure.
pub fn sh(cmd: &mut Command) -> anyhow::Result<()> {
    eprintln!("+ {cmd:?}");
    let status = cmd
        .current_dir(workspace())
        .status()
        .with_context(|| format!("{cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed ({status})");
    }
    Ok(())
}

/// `cargo build` of the user-space crates (agent, test bed helper).
pub fn build_userspace(release: bool) -> anyhow::Result<()> {
    let mut cmd = Command::new(env!("CARGO"));
    cmd.arg("build");
    if release {
        cmd.arg("--release");
    }
    sh(&mut cmd)
}
