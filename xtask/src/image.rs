//! `cargo xtask image`: builds the container image from the Dockerfile when
//! a Docker engine answers, and says plainly when none does.
use std::process::Command;

use anyhow::bail;

use crate::{sh, workspace};

/// Where the Dockerfile looks for a merged profile (the build context
/// leaves target/ out).
const CONTEXT_PROFILE: &str = "pgo/mesh-agent.profdata";

/// Puts the profile of the last `cargo xtask build-release` where the
/// image build finds it; without one, the image carries a plain release
/// build, and this says so.
fn stage_profile() -> anyhow::Result<()> {
    let ws = workspace();
    let made = ws.join("target/pgo/mesh-agent.profdata");
    let staged = ws.join(CONTEXT_PROFILE);
    if made.is_file() {
        std::fs::create_dir_all(staged.parent().unwrap_or(&ws))?;
        std::fs::copy(&made, &staged)?;
        println!("image: building with the profile {}", made.display());
    } else {
        let _ = std::fs::remove_file(&staged);
        println!(
            "image: no profile at {}: a plain release build goes in (run `cargo xtask build-release` first for the profiled one)",
            made.display()
        );
    }
    Ok(())
}

pub fn build(tag: &str) -> anyhow::Result<()> {
    let engine = Command::new("docker")
        .args(["info", "--format", "{{.ServerVersion}}"])
        .output();
    match engine {
        Ok(out) if out.status.success() => {
            stage_profile()?;
            sh(Command::new("docker")
                .args(["build", "-t", tag, "-f", "Dockerfile", "."])
                .current_dir(workspace()))?;
            println!("built image {tag}");
            Ok(())
        }
        Ok(out) => bail!(
            "no Docker engine answers here ({}); the image was not built. \
             Where one runs: `cargo xtask image --tag <tag>` or `docker build -t <tag> .`",
            String::from_utf8_lossy(&out.stderr).trim()
        ),
        Err(e) => bail!(
            "no docker command here ({e}); the image was not built. \
             Where a Docker engine runs: `cargo xtask image --tag <tag>` or `docker build -t <tag> .`"
        ),
    }
}
