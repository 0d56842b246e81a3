//! The one recipe for building the kernel programs. `cargo xtask build-ebpf`
//! and mesh-agent's build.rs both include this file, so the object the agent
//! embeds is always the one this recipe makes, from the current sources.
// Shared by two crates; each uses part of it.
#![allow(dead_code)]

use std::{
    path::{Path, PathBuf},
    process::Command,
};

pub const EBPF_TARGET: &str = "bpfel-unknown-none";
pub const EBPF_TOOLCHAIN: &str = "nightly";
pub const EBPF_PACKAGE: &str = "mesh-ebpf";

/// Where the object lands, below the workspace root.
pub fn object_path(workspace: &Path) -> PathBuf {
    workspace
        .join("target/ebpf")
        .join(EBPF_TARGET)
        .join("release")
        .join(EBPF_PACKAGE)
}

/// The cargo invocation. Its own target dir keeps it clear of the outer
/// cargo's lock when build.rs runs it.
pub fn command(workspace: &Path) -> Command {
    let mut cmd = Command::new("rustup");
    cmd.current_dir(workspace)
        .args([
            "run",
            EBPF_TOOLCHAIN,
            "cargo",
            "build",
            "--package",
            EBPF_PACKAGE,
        ])
        .args(["--release", "--target", EBPF_TARGET, "-Z", "build-std=core"])
        .arg("--target-dir")
        .arg(workspace.join("target/ebpf"))
        // BTF so the kernel can name the maps' types; debuginfo feeds it.
        .env(
            "CARGO_ENCODED_RUSTFLAGS",
            ["-Cdebuginfo=2", "-Clink-arg=--btf"].join("\x1f"),
        );
    without_outer_toolchain(&mut cmd);
    cmd
}

/// Clears what the outer cargo set for its own build (the stable
/// toolchain's compiler and wrappers, its flags and target), so a nested
/// nightly build chooses its own.
pub fn without_outer_toolchain(cmd: &mut Command) {
    for key in [
        "RUSTC",
        "RUSTC_WRAPPER",
        "RUSTC_WORKSPACE_WRAPPER",
        "RUSTFLAGS",
        "CARGO_TARGET_DIR",
        "CARGO_BUILD_TARGET",
        "RUSTUP_TOOLCHAIN",
        "CARGO",
    ] {
        cmd.env_remove(key);
    }
}

/// What to tell the user when the build cannot run.
pub const FIX_HINT: &str = "run `cargo xtask setup` (installs the nightly rust-src component and bpf-linker), then `cargo xtask build-ebpf`";
