//! `cargo xtask test`: the project's one test command (README, CI).
use std::process::Command;

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
    sh(Command::new(cargo).args(["test", "--", "--test-threads=2"]))?;
    Ok(())
}
