//! `cargo xtask test`: the project's one test command (README, CI).
use std::{
    io::{BufRead, BufReader},
    process::{Command, Stdio},
};

use anyhow::{Context, bail};

use crate::{build_userspace, sh};

pub fn run() -> anyhow::Result<()> {
    crate::setup::run()?;
    let cargo = env!("CARGO");
    sh(Command::new(cargo).args(["fmt", "--all", "--check"]))?;
    // Builds the kernel programs too (mesh-agent's build.rs), so a broken
    // eBPF build fails here.
    build_userspace(false)?;
    sh(Command::new(cargo).args(["clippy", "--all-targets", "--", "-D", "warnings"]))?;
    // End-to-end tests start two agents per test; two at a time fit 2 cores.
    // --all-targets: unit, integration and bin tests (there are no doc-tests).
    let mut cmd = Command::new(cargo);
    cmd.args(["test", "--all-targets", "--", "--test-threads=2"])
        .current_dir(crate::workspace())
        .stdout(Stdio::piped());
    eprintln!("+ {cmd:?}");
    let mut child = cmd.spawn().context("cargo test")?;
    let (mut passed, mut failed) = (0u64, 0u64);
    for line in BufReader::new(child.stdout.take().unwrap()).lines() {
        let line = line?;
        println!("{line}");
        if let Some(rest) = line.strip_prefix("test result: ") {
            passed += count(rest, " passed");
            failed += count(rest, " failed");
        }
    }
    let status = child.wait()?;
    println!("tests: {passed} passed, {failed} failed");
    if !status.success() {
        bail!("cargo test failed ({status})");
    }
    let checks = crate::chart::check().context("Helm chart checks")?;
    println!("chart: {checks} checks passed");
    // No fuzz pass here: building the targets (sanitizers, a release build
    // of the agent's library) from a fresh checkout adds ~7.5 min to a
    // ~10 min run. `cargo xtask fuzz --seconds N` runs them.
    Ok(())
}

/// The number before `what` in a libtest summary (`ok. 7 passed; 0 failed; ...`).
fn count(summary: &str, what: &str) -> u64 {
    summary
        .split(';')
        .find(|part| part.ends_with(what))
        .and_then(|part| part.trim_end_matches(what).rsplit(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    #[test]
    fn counts_libtest_summaries() {
        let s = "ok. 7 passed; 1 failed; 0 ignored; 0 measured; 0 filtered out; finished in 5.23s";
        assert_eq!(super::count(s, " passed"), 7);
        assert_eq!(super::count(s, " failed"), 1);
    }
}
