//! `cargo xtask fuzz`: the fuzz targets of fuzz/ (cargo-fuzz, libFuzzer)
//! for a fixed time each. fuzz/ is its own workspace: it builds on nightly
//! with sanitizer flags that the workspace's stable build must not see.
use std::{
    io::{BufRead, BufReader},
    path::PathBuf,
    process::{Command, Stdio},
    time::Instant,
};

use anyhow::{Context, bail};

/// Every target in fuzz/Cargo.toml.
pub const TARGETS: [&str; 3] = ["config", "policy", "hbone_request"];

/// An input that takes longer than this is reported as a hang: nothing
/// these targets read should take seconds.
const INPUT_TIMEOUT_S: u64 = 10;

#[derive(clap::Args)]
pub struct Args {
    /// How long each target runs.
    #[arg(long, default_value_t = 60)]
    pub seconds: u64,
    /// Run only this target.
    #[arg(long, value_parser = TARGETS)]
    pub target: Option<String>,
}

fn fuzz_dir() -> PathBuf {
    crate::workspace().join("fuzz")
}

/// `cargo fuzz <subcommand>` on the nightly toolchain, in fuzz/ (which
/// picks up the workspace's .cargo/config.toml: two build jobs). What the
/// outer cargo set for the stable toolchain is removed.
fn cargo_fuzz(subcommand: &str) -> Command {
    let mut cmd = Command::new("rustup");
    cmd.args(["run", "nightly", "cargo", "fuzz", subcommand])
        // cargo-fuzz's default of one codegen unit made each rebuild of
        // mesh-agent take over 4 minutes here; with 16 it takes 2, for
        // slightly slower targets. Both subcommands must agree, or `run`
        // rebuilds everything.
        .args(["--codegen-units", "16"])
        .current_dir(fuzz_dir());
    crate::ebpf_build::without_outer_toolchain(&mut cmd);
    cmd
}

/// What libFuzzer said about one run.
#[derive(Debug, Default, PartialEq)]
struct Summary {
    /// Inputs executed.
    runs: Option<u64>,
    /// Coverage points and corpus size at the end (`cov:`, `corp:`).
    coverage: Option<u64>,
    corpus: Option<u64>,
}

impl Summary {
    /// Takes what it can from one line of libFuzzer's output: the status
    /// lines (`#4096 pulse cov: 812 ft: 1903 corp: 95/2210b ...`) and the
    /// last one (`Done 53411 runs in 11 second(s)`).
    fn read(&mut self, line: &str) {
        if let Some(rest) = line.strip_prefix("Done ") {
            self.runs = rest.split(' ').next().and_then(|n| n.parse().ok());
            return;
        }
        if !line.starts_with('#') {
            return;
        }
        let words: Vec<&str> = line.split_whitespace().collect();
        for pair in words.windows(2) {
            let number = |s: &str| s.parse().ok();
            match pair[0] {
                "cov:" => self.coverage = number(pair[1]),
                "corp:" => self.corpus = pair[1].split('/').next().and_then(number),
                _ => {}
            }
        }
    }
}

/// libFuzzer's lines for each input that grew or shrank the corpus, and
/// the functions it reached first.
fn per_input(line: &str) -> bool {
    if line.trim_start().starts_with("NEW_FUNC") {
        return true;
    }
    let mut words = line.split_whitespace();
    words.next().is_some_and(|w| w.starts_with('#'))
        && words
            .next()
            .is_some_and(|w| matches!(w, "NEW" | "REDUCE" | "pulse"))
}

fn show(n: Option<u64>) -> String {
    n.map_or_else(|| "?".to_owned(), |n| n.to_string())
}

pub fn run(args: &Args) -> anyhow::Result<()> {
    let targets: Vec<&str> = match &args.target {
        Some(t) => vec![t.as_str()],
        None => TARGETS.to_vec(),
    };
    // Built once up front, so each target's seconds are spent fuzzing.
    let started = Instant::now();
    crate::sh(&mut cargo_fuzz("build"))?;
    println!(
        "fuzz: targets built in {:.0} s",
        started.elapsed().as_secs_f32()
    );
    let mut failed = Vec::new();
    for target in &targets {
        let corpus = fuzz_dir().join("corpus").join(target);
        std::fs::create_dir_all(&corpus)?;
        let mut cmd = cargo_fuzz("run");
        cmd.arg(target)
            .arg(&corpus)
            .arg("--")
            .arg(format!("-max_total_time={}", args.seconds))
            .arg(format!("-timeout={INPUT_TIMEOUT_S}"))
            .stderr(Stdio::piped());
        // Tokens for targets whose input is structured, not text.
        let dict = fuzz_dir().join("dicts").join(format!("{target}.dict"));
        if dict.exists() {
            cmd.arg(format!("-dict={}", dict.display()));
        }
        eprintln!("+ {cmd:?}");
        let mut child = cmd.spawn().context("cargo fuzz run")?;
        let mut summary = Summary::default();
        // libFuzzer reports on stderr; passed through, so a crash's report
        // and the input's path are in the log, but without a line per new
        // input and the dictionary it suggests at the end.
        let mut in_dictionary = false;
        for line in BufReader::new(child.stderr.take().unwrap()).lines() {
            let line = line?;
            summary.read(&line);
            if line.starts_with("###### Recommended dictionary") {
                in_dictionary = true;
            } else if line.starts_with("###### End of recommended dictionary") {
                in_dictionary = false;
            } else if !in_dictionary && !per_input(&line) {
                eprintln!("{line}");
            }
        }
        let status = child.wait()?;
        let outcome = if status.success() {
            "no failure".to_owned()
        } else {
            failed.push(*target);
            format!("FAILED ({status}); the input is under fuzz/artifacts/{target}/")
        };
        println!(
            "fuzz: {target}: {} runs in {} s, coverage {}, corpus {} inputs: {outcome}",
            show(summary.runs),
            args.seconds,
            show(summary.coverage),
            show(summary.corpus),
        );
    }
    if !failed.is_empty() {
        bail!("fuzz targets failed: {}", failed.join(", "));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::Summary;

    #[test]
    fn reads_libfuzzer_status() {
        let mut s = Summary::default();
        for line in [
            "INFO: Seed: 1234",
            "#2\tINITED cov: 101 ft: 102 corp: 1/1b exec/s: 0 rss: 40Mb",
            "#65536\tpulse  cov: 812 ft: 1903 corp: 95/2210b lim: 652 exec/s: 6553 rss: 77Mb",
            "Done 70001 runs in 11 second(s)",
        ] {
            s.read(line);
        }
        assert!(super::per_input("#16\tNEW    cov: 140 ft: 150 corp: 3/9b"));
        assert!(!super::per_input("#70001\tDONE   cov: 812"));
        assert_eq!(
            s,
            Summary {
                runs: Some(70001),
                coverage: Some(812),
                corpus: Some(95),
            }
        );
    }
}
