//! `cargo xtask setup`: everything a fresh machine of this kind lacks.
use std::process::Command;

use anyhow::Context;

use crate::sh;

/// Debian packages the tests and benchmarks run.
const APT_PACKAGES: [&str; 9] = [
    "tcpdump",
    // The observability e2e test scrapes the agents with a real Prometheus.
    "prometheus",
    "iproute2",
    "bpftool",
    "iperf3",
    "sockperf",
    "wrk",
    "hey",
    "util-linux",
];
const BPF_LINKER_VERSION: &str = "0.10.4";

fn ok(cmd: &mut Command) -> bool {
    cmd.output().map(|o| o.status.success()).unwrap_or(false)
}

fn output(cmd: &mut Command) -> String {
    cmd.output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default()
}

pub fn run() -> anyhow::Result<()> {
    // The kernel programs build with nightly (build-std) and bpf-linker.
    if !output(Command::new("rustup").args(["toolchain", "list"]))
        .lines()
        .any(|l| l.starts_with("nightly"))
    {
        sh(Command::new("rustup").args([
            "toolchain",
            "install",
            "nightly",
            "--profile",
            "minimal",
        ]))?;
        println!("setup: installed the nightly toolchain");
    }
    let components = output(Command::new("rustup").args([
        "component",
        "list",
        "--installed",
        "--toolchain",
        "nightly",
    ]));
    if !components.lines().any(|l| l.starts_with("rust-src")) {
        sh(Command::new("rustup").args([
            "component",
            "add",
            "rust-src",
            "--toolchain",
            "nightly",
        ]))?;
        println!("setup: added rust-src to nightly");
    } else {
        println!("setup: nightly rust-src present");
    }
    let linker = output(Command::new("bpf-linker").arg("--version"));
    if linker.contains(BPF_LINKER_VERSION) {
        println!("setup: bpf-linker {BPF_LINKER_VERSION} present");
    } else {
        // 0.10.4 loads rustc's own LLVM; newer releases need a system LLVM
        // this distribution does not ship (see ../shared/TOOLCHAIN.md).
        sh(Command::new(env!("CARGO")).args([
            "install",
            "bpf-linker",
            "--version",
            BPF_LINKER_VERSION,
            "--locked",
            "-j2",
        ]))?;
        println!("setup: installed bpf-linker {BPF_LINKER_VERSION}");
    }
    let missing: Vec<&str> = APT_PACKAGES
        .iter()
        .copied()
        .filter(|p| {
            !output(Command::new("dpkg-query").args(["-W", "-f=${Status}", p]))
                .contains("install ok installed")
        })
        .collect();
    if missing.is_empty() {
        println!("setup: apt packages present ({})", APT_PACKAGES.join(", "));
    } else {
        sh(Command::new("apt-get").args(["update", "-qq"]))?;
        sh(Command::new("apt-get")
            .args(["install", "-y", "-qq", "--no-install-recommends"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive"))?;
        println!("setup: installed {}", missing.join(", "));
    }
    if ok(Command::new("mountpoint").args(["-q", "/sys/fs/bpf"])) {
        println!("setup: bpffs mounted at /sys/fs/bpf");
    } else {
        mesh_testbed::sys::ensure_bpffs().context("mounting bpffs")?;
        println!("setup: mounted bpffs at /sys/fs/bpf");
    }
    Ok(())
}
