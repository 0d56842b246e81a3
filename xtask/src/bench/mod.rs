//! `cargo xtask bench`: pod→pod across nodes on the test bed, direct (no
//! agents) and through the agents, in one run, with standard tools so the
//! figures compare with other meshes. A benchmark, not a test: it reports.
//!
//! This module reads the options, builds the agent to measure and writes
//! the table; the rest is split by job:
//! - [`mode`]: what each column runs (direct, relays, the mesh's modes);
//! - [`bed`]: one mode's test bed and what each stage records;
//! - [`measure`]: the rounds across all beds;
//! - [`tools`]: running iperf3, sockperf, wrk, hey and `meshtb load`, and
//!   reading their outputs;
//! - [`metering`]: CPU and memory of processes, and host steal;
//! - [`metric`]: the rows; [`stats`]: medians and the rounds' spread;
//!   [`render`]: the table;
//! - [`source_ip`]: which address each mesh column delivers from, and the
//!   columns that preserve the client's beside their 127.0.0.6 twins;
//! - [`l7`]: the waypoint part (`--only waypoint`): HTTP through the
//!   waypoint beside direct, the L4 mesh and HAProxy, on a bed of its own;
//! - [`upgrade`]: the upgrade part (`--only upgrade`): each node's agent
//!   replaced by the hand-over path under load, on a bed of its own;
//! - [`train`]: the profile-gathering run `xtask pgo` uses. It is its own
//!   module so that pgo and this one do not import each other: this one
//!   builds the agent through pgo, pgo trains through `train`.
mod bed;
mod l7;
mod measure;
mod metering;
mod metric;
mod mode;
mod render;
mod source_ip;
mod stats;
mod tools;
pub mod train;
mod upgrade;

use anyhow::Context;

use self::{
    bed::use_release_binaries,
    mode::{Mode, Stage},
};

#[derive(clap::Args)]
pub struct Args {
    /// Seconds per measurement.
    #[arg(long, default_value_t = 5)]
    secs: u32,
    /// Times each tool runs in each mode, round-robin across the modes; the
    /// table shows each figure's median. Back-to-back runs of the same tool
    /// can differ by half (hey's direct rate moved between 8.9k and 14.5k
    /// req/s), so a single run can make a ratio by itself.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=9))]
    rounds: u32,
    /// Where to write the markdown table (also printed); by default
    /// target/bench/datapath.md, or target/bench/waypoint.md with `--only
    /// waypoint` and target/bench/upgrade.md with `--only upgrade`, so that
    /// one part's table leaves the datapath's alone.
    #[arg(long)]
    out: Option<std::path::PathBuf>,
    /// Run only one part: `datapath` (traffic through the agents),
    /// `waypoint` (HTTP through the waypoint, the L4 mesh and HAProxy),
    /// `upgrade` (each node's agent replaced by hand-over under load,
    /// `--rounds` times) or `discovery` (store scale).
    #[arg(long, value_enum)]
    only: Option<Part>,
    /// Measure only these modes (repeatable); direct is always measured,
    /// since every ratio is to it. The datapath part's: the waypoint part
    /// always measures its six routes, which its ratios compare.
    #[arg(long, value_enum)]
    mode: Vec<Mode>,
    /// Run only these tools (repeatable): iperf3, sockperf, wrk, hey,
    /// fixed-rate, h2load (the waypoint part runs wrk, h2load and
    /// fixed-rate). For profiling one kind of load.
    #[arg(long, value_enum)]
    stage: Vec<Stage>,
    /// Measure the plain release build instead of the profiled one that
    /// ships (`cargo xtask build-release`): skips two release builds and
    /// the training run, for quick comparisons.
    #[arg(long)]
    no_pgo: bool,
    /// Measure the profiled build made with this merged profile (from an
    /// earlier `cargo xtask build-release`: target/pgo/mesh-agent.profdata)
    /// instead of training again: saves the instrumented build and the
    /// training run. Only a profile of the same sources and dependencies
    /// helps: where a crate's features or version changed, its symbols
    /// change name and their counts are lost.
    #[arg(long, conflicts_with = "no_pgo")]
    profile: Option<std::path::PathBuf>,
}

/// The parts of the benchmark, each with its own table.
#[derive(Clone, Copy, PartialEq, Debug, clap::ValueEnum)]
enum Part {
    Datapath,
    Waypoint,
    Upgrade,
    Discovery,
}

impl Args {
    fn out_path(&self) -> std::path::PathBuf {
        self.out.clone().unwrap_or_else(|| {
            let name = match self.only {
                Some(Part::Waypoint) => "waypoint.md",
                Some(Part::Upgrade) => "upgrade.md",
                _ => "datapath.md",
            };
            std::path::Path::new("target/bench").join(name)
        })
    }
}

pub fn run(args: Args) -> anyhow::Result<()> {
    crate::setup::run()?;
    let agent = if args.no_pgo {
        crate::build_userspace(true)?;
        crate::workspace().join("target/release/mesh-agent")
    } else if let Some(profile) = &args.profile {
        // The profile is checked (and the agent built) before the helpers.
        let agent = crate::pgo::build_with(profile)?;
        crate::pgo::build_helpers()?;
        agent
    } else {
        crate::pgo::build()?
    };
    use_release_binaries(&agent);
    let runs = |part: Part| args.only.is_none_or(|only| only == part);
    // Every mode, in the enum's order (the table's columns).
    let modes: Vec<Mode> = <Mode as clap::ValueEnum>::value_variants()
        .iter()
        .copied()
        .filter(|m| *m == Mode::Direct || args.mode.is_empty() || args.mode.contains(m))
        .collect();
    let mut table = String::new();
    let datapath_stages = args.stage.is_empty() || args.stage.iter().any(|s| s.in_datapath());
    if runs(Part::Datapath) && datapath_stages {
        let (results, failures) = measure::measure(&modes, args.secs, args.rounds, &args.stage)?;
        table = render::table(&modes, &results, args.secs, args.rounds);
        if !failures.is_empty() {
            table += "\nFailed measurements:\n";
            table += &failures.join("\n");
            table += "\n";
        }
    }
    let l7_stages = l7::stages(&args.stage);
    if runs(Part::Waypoint) && !l7_stages.is_empty() {
        if !table.is_empty() {
            table += "\n";
        }
        table += &l7::run(args.secs, args.rounds, &l7_stages).context("waypoint (L7) part")?;
    }
    // It runs no tool: a run narrowed to some tools leaves it out.
    if runs(Part::Upgrade) && args.stage.is_empty() {
        eprintln!("bench: agent upgrade");
        if !table.is_empty() {
            table += "\n";
        }
        table += &upgrade::run(args.rounds).context("agent upgrade")?;
    }
    if runs(Part::Discovery) {
        eprintln!("bench: discovery scale");
        if !table.is_empty() {
            table += "\n";
        }
        table += &crate::bench_discovery::run().context("discovery scale")?;
    }
    println!("{table}");
    let out = crate::workspace().join(args.out_path());
    std::fs::create_dir_all(out.parent().unwrap())?;
    std::fs::write(&out, &table)?;
    eprintln!("bench: table written to {}", out.display());
    Ok(())
}

#[cfg(test)]
mod tests {
    use clap::{Parser, ValueEnum};

    use super::*;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: Args,
    }

    #[test]
    fn the_options_keep_their_spelling() {
        let cli = Cli::try_parse_from([
            "bench",
            "--only",
            "datapath",
            "--mode",
            "mtls",
            "--mode",
            "mesh-splice",
            "--stage",
            "sockperf",
            "--stage",
            "fixed-rate",
            "--rounds",
            "1",
            "--no-pgo",
        ])
        .unwrap();
        let a = cli.args;
        assert!(a.only == Some(Part::Datapath));
        assert!(a.mode == [Mode::Mtls, Mode::MeshSplice]);
        assert!(a.stage == [Stage::Sockperf, Stage::FixedRate]);
        assert_eq!((a.rounds, a.secs, a.no_pgo), (1, 5, true));
        assert_eq!(
            a.out_path(),
            std::path::Path::new("target/bench/datapath.md")
        );
        for bad in [
            &["bench", "--only", "both"][..],
            &["bench", "--only", "l7"],
            &["bench", "--stage", "iperf"],
            &["bench", "--rounds", "10"],
            &["bench", "--no-pgo", "--profile", "p.profdata"],
        ] {
            assert!(Cli::try_parse_from(bad).is_err(), "{bad:?}");
        }
        // The log and the failure notes name stages as `--stage` does.
        let names: Vec<&str> = Stage::value_variants()
            .iter()
            .map(|s| {
                assert_eq!(s.to_possible_value().unwrap().get_name(), s.name());
                s.name()
            })
            .collect();
        assert_eq!(
            names,
            ["iperf3", "sockperf", "wrk", "hey", "fixed-rate", "h2load"]
        );
        let waypoint = Cli::try_parse_from(["bench", "--only", "waypoint", "--stage", "h2load"])
            .unwrap()
            .args;
        assert_eq!(waypoint.only, Some(Part::Waypoint));
        assert_eq!(
            waypoint.out_path(),
            std::path::Path::new("target/bench/waypoint.md")
        );
        let elsewhere = Cli::try_parse_from(["bench", "--only", "waypoint", "--out", "/tmp/w.md"])
            .unwrap()
            .args;
        assert_eq!(elsewhere.out_path(), std::path::Path::new("/tmp/w.md"));
        let upgrade = Cli::try_parse_from(["bench", "--only", "upgrade", "--rounds", "1"])
            .unwrap()
            .args;
        assert_eq!(upgrade.only, Some(Part::Upgrade));
        assert_eq!(
            upgrade.out_path(),
            std::path::Path::new("target/bench/upgrade.md")
        );
        let both = Cli::try_parse_from([
            "bench",
            "--mode",
            "mtls-loopback",
            "--mode",
            "mesh-loopback",
        ])
        .unwrap()
        .args;
        assert_eq!(both.mode, [Mode::MtlsLoopback, Mode::MeshLoopback]);
        assert_eq!(l7::stages(&waypoint.stage), [Stage::H2load]);
        assert_eq!(
            l7::stages(&[]),
            [Stage::Wrk, Stage::H2load, Stage::FixedRate]
        );
        assert!(l7::stages(&[Stage::Iperf3]).is_empty());
    }
}
