//! `cargo xtask image`: builds the container image from the Dockerfile when
//! a Docker engine answers, and says plainly when none does.
use std::process::Command;

use anyhow::bail;

use crate::{sh, workspace};

pub fn build(tag: &str) -> anyhow::Result<()> {
    let engine = Command::new("docker")
        .args(["info", "--format", "{{.ServerVersion}}"])
        .output();
    match engine {
        Ok(out) if out.status.success() => {
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
