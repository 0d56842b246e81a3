//! `cargo xtask build-release`: the agent and the waypoint as they ship,
//! optimised with a profile of their own run (PGO). An instrumented agent
//! carries the benchmark's traffic on the test bed for a few seconds per
//! tool, and instrumented waypoints the waypoint bench's loads; the
//! release build then uses what ran and how often.
//!
//! Why: besides inlining and branch layout for the paths that carry
//! traffic, the profile tells the compiler which functions never ran, and
//! the linker puts them in a section of their own. Executed code then sits
//! together, and the kernel's fault-around (64 KiB mapped per page touched)
//! no longer maps never-run code beside it: idle RSS is mostly the binary's
//! resident text.
use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, bail};

use crate::{bench::train::train, sh, workspace};

/// Flags of the profiled build, beyond `-Cprofile-use`:
/// - a function is cold only if it never ran in training (LLVM's default
///   also calls startup code that ran once cold, which would put it back
///   among the never-run code);
/// - the linker keeps hot, cold and the rest in separate output sections;
/// - relative relocations packed (RELR, glibc ≥ 2.36): the dynamic
///   relocation table the loader reads at start shrinks from ~0.5 MiB.
const USE_FLAGS: [&str; 3] = [
    "-Cllvm-args=-profile-summary-cold-count=0",
    "-Clink-arg=-Wl,-z,keep-text-section-prefix",
    "-Clink-arg=-Wl,-z,pack-relative-relocs",
];

/// The binaries the image carries built with the profile: the agent (node
/// and CA), the CLI and the waypoint. Beside them, the CNI plugin
/// ([`PLUGIN`]), built apart.
const PROFILED: [&str; 4] = ["mesh-agent", "mesh", "mesh-ca", "mesh-waypoint"];

/// The instrumented binaries the training runs: the agent, and the
/// waypoint, whose own code (HTTP, routing, policies) the agent's run
/// never reaches; without its counts all of that code would count as
/// never run, be optimised for size and be moved out among the never-run
/// functions. The CLI and the CA share the agent's crates and take its
/// counts.
const TRAINED: [&str; 2] = ["mesh-agent", "mesh-waypoint"];

/// The CNI plugin. `mesh-cni install` copies it onto the node, where the
/// container runtime execs it with the host's libraries, not the image's:
/// linked dynamically against the image's glibc 2.36 (and with RELR,
/// which needs ≥ 2.36 at load) it would not start on Ubuntu 22.04, RHEL 8
/// or Amazon Linux 2 nodes. So it is linked statically (it resolves no
/// names, the one thing static glibc cannot do), without the profile,
/// which never ran it and would only mark all of it cold.
const PLUGIN: &str = "mesh-cni";
const PLUGIN_FLAGS: &str = "-Ctarget-feature=+crt-static";

fn dir() -> PathBuf {
    workspace().join("target").join("pgo")
}

/// The host's target triple: profiled builds name it so that RUSTFLAGS
/// reach only the target's crates, not build scripts and proc macros.
fn host() -> anyhow::Result<String> {
    let out = Command::new("rustc")
        .arg("-vV")
        .output()
        .context("rustc -vV")?;
    host_of(&String::from_utf8_lossy(&out.stdout)).context("rustc -vV printed no host")
}

fn host_of(rustc_vv: &str) -> Option<String> {
    rustc_vv
        .lines()
        .find_map(|l| l.strip_prefix("host: "))
        .map(str::to_owned)
}

/// llvm-profdata from the toolchain's llvm-tools component, which matches
/// rustc's LLVM (a profile is read by the LLVM that wrote its format).
fn llvm_profdata(host: &str) -> anyhow::Result<PathBuf> {
    let out = Command::new("rustc")
        .args(["--print", "sysroot"])
        .output()
        .context("rustc --print sysroot")?;
    let sysroot = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    let tool = Path::new(&sysroot)
        .join("lib/rustlib")
        .join(host)
        .join("bin/llvm-profdata");
    if !tool.exists() {
        bail!(
            "{} is missing; install it with `rustup component add llvm-tools` (cargo xtask setup does)",
            tool.display()
        );
    }
    Ok(tool)
}

/// `cargo build --release` of `bins` (of the workspace's crates) into `target_dir` with
/// these RUSTFLAGS; returns the agent binary's path.
fn cargo_build(
    host: &str,
    target_dir: &Path,
    rustflags: &str,
    bins: &[&str],
) -> anyhow::Result<PathBuf> {
    let mut cmd = Command::new(env!("CARGO"));
    cmd.args(["build", "--release"]);
    for b in bins {
        cmd.args(["--bin", b]);
    }
    sh(cmd
        .args(["--target", host])
        .arg("--target-dir")
        .arg(target_dir)
        .env("RUSTFLAGS", rustflags))?;
    Ok(target_dir.join(host).join("release").join("mesh-agent"))
}

/// Where the shipped binaries land, whichever way they were built:
/// `target/dist/{mesh-agent,mesh,mesh-ca,mesh-waypoint,mesh-cni}` (the
/// Dockerfile copies them from there).
pub fn dist() -> PathBuf {
    workspace().join("target").join("dist")
}

/// Where each instrumented process writes its profile (`LLVM_PROFILE_FILE`):
/// its own file, named by its process id (`%p`) and the binary's
/// signature (`%m`), so that concurrent agents and waypoints never share
/// one and a process's profile can be found by its id.
fn profile_pattern(raw: &Path) -> PathBuf {
    raw.join("%p-%m.profraw")
}

/// Whether `name` is the profile [`profile_pattern`] names for process
/// `pid`.
fn is_profile_of(name: &str, pid: u32) -> bool {
    name.strip_suffix(".profraw")
        .and_then(|n| n.split_once('-'))
        .is_some_and(|(p, _)| p == pid.to_string())
}

/// Each waypoint's profile in `raw`, or why the training did not make
/// one: a waypoint without a profile means its code would be built as
/// never run.
fn check_waypoint_profiles(raw: &Path, pids: &[u32]) -> anyhow::Result<()> {
    if pids.is_empty() {
        bail!("the training ran no waypoint");
    }
    let files: Vec<(String, u64)> = std::fs::read_dir(raw)?
        .filter_map(Result::ok)
        .filter_map(|e| {
            let size = e.metadata().ok()?.len();
            Some((e.file_name().to_string_lossy().into_owned(), size))
        })
        .collect();
    for pid in pids {
        match files.iter().find(|(name, _)| is_profile_of(name, *pid)) {
            Some((_, size)) if *size > 0 => {}
            Some((name, _)) => {
                bail!("the instrumented waypoint {pid} wrote an empty profile {name}")
            }
            None => bail!(
                "the instrumented waypoint {pid} wrote no profile in {} (it must return from main on SIGTERM within the test bed's 10 s)",
                raw.display()
            ),
        }
    }
    eprintln!("pgo: profiles of the waypoints {pids:?} written");
    Ok(())
}

/// Trains and builds the profiled agent and waypoint; returns the agent's
/// path in [`dist`].
pub fn build() -> anyhow::Result<PathBuf> {
    crate::setup::run()?;
    let host = host()?;
    let profdata = llvm_profdata(&host)?;
    let dir = dir();
    let raw = dir.join("raw");
    let _ = std::fs::remove_dir_all(&raw);
    std::fs::create_dir_all(&raw)?;

    let instrumented = cargo_build(
        &host,
        &dir.join("generate"),
        &format!("-Cprofile-generate={}", raw.display()),
        &TRAINED,
    )?;
    build_helpers()?;
    eprintln!("pgo: training the instrumented agent and waypoint on the test bed");
    let waypoints = train(&instrumented, &profile_pattern(&raw))
        .context("training run of the instrumented agent and waypoint")?;
    check_waypoint_profiles(&raw, &waypoints)?;

    // One profile for every profiled binary: the agent's and the
    // waypoints' runs merged (their shared crates' counts add up). The
    // name stays the one `cargo xtask image` and `--profile` know.
    let merged = dir.join("mesh-agent.profdata");
    let profiles: Vec<PathBuf> = std::fs::read_dir(&raw)?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "profraw"))
        .collect();
    if profiles.is_empty() {
        bail!(
            "the instrumented agents and waypoints wrote no profile in {} (they must exit on SIGTERM)",
            raw.display()
        );
    }
    sh(Command::new(profdata)
        .args(["merge", "-o"])
        .arg(&merged)
        .args(&profiles))?;
    build_for(&host, &merged)
}

/// The test bed's own programs (servers, load, relays), as release builds;
/// they need no profile.
pub fn build_helpers() -> anyhow::Result<()> {
    sh(Command::new(env!("CARGO")).args(["build", "--release", "-p", "mesh-testbed"]))
}

/// The release build with a merged profile made earlier (the image build
/// has no test bed to train on); returns the agent's path in [`dist`].
pub fn build_with(profile: &Path) -> anyhow::Result<PathBuf> {
    let profile = std::path::absolute(profile)?;
    if !profile.is_file() {
        bail!(
            "--profile {}: no such file; make one with `cargo xtask build-release` (it writes target/pgo/mesh-agent.profdata)",
            profile.display()
        );
    }
    build_for(&host()?, &profile)
}

fn build_for(host: &str, profile: &Path) -> anyhow::Result<PathBuf> {
    let mut flags = format!("-Cprofile-use={}", profile.display());
    for f in USE_FLAGS {
        flags += " ";
        flags += f;
    }
    let agent = cargo_build(host, &dir().join("use"), &flags, &PROFILED)?;
    let dist = dist();
    std::fs::create_dir_all(&dist)?;
    let plugin = cargo_build(host, &dir().join("plugin"), PLUGIN_FLAGS, &[PLUGIN])?;
    for (bin, from) in PROFILED
        .iter()
        .map(|b| (*b, agent.with_file_name(b)))
        .chain([(PLUGIN, plugin.with_file_name(PLUGIN))])
    {
        std::fs::copy(&from, dist.join(bin))
            .with_context(|| format!("copying {}", from.display()))?;
    }
    eprintln!("pgo: profiled binaries in {}", dist.display());
    Ok(dist.join("mesh-agent"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_host_triple_is_read_from_rustc_vv() {
        let vv = "rustc 1.95.0 (59807616e 2026-04-14)\nbinary: rustc\nhost: x86_64-unknown-linux-gnu\nrelease: 1.95.0\nLLVM version: 22.1.2\n";
        assert_eq!(host_of(vv).as_deref(), Some("x86_64-unknown-linux-gnu"));
        assert_eq!(host_of("rustc 1.95.0\n"), None);
    }

    /// The Dockerfile with continued lines joined.
    fn dockerfile() -> Vec<String> {
        let text = std::fs::read_to_string(workspace().join("Dockerfile")).unwrap();
        let mut lines = Vec::new();
        let mut line = String::new();
        for l in text.lines() {
            match l.strip_suffix('\\') {
                Some(head) => line.push_str(head),
                None => {
                    line.push_str(l);
                    lines.push(std::mem::take(&mut line));
                }
            }
        }
        lines
    }

    fn sorted<'a>(names: impl IntoIterator<Item = &'a str>) -> Vec<&'a str> {
        let mut v: Vec<&str> = names.into_iter().collect();
        v.sort_unstable();
        v
    }

    #[test]
    fn the_image_carries_what_build_release_puts_in_dist_and_builds_the_same_without_a_profile() {
        let dist: Vec<&str> = sorted(PROFILED.into_iter().chain([PLUGIN]));
        let lines = dockerfile();
        let copy = lines
            .iter()
            .find(|l| l.starts_with("COPY --from=build"))
            .expect("the Dockerfile's final stage copies the binaries");
        let words: Vec<&str> = copy.split_whitespace().collect();
        assert_eq!(words.last(), Some(&"/usr/local/bin/"), "{copy}");
        let copied = sorted(
            words
                .iter()
                .filter_map(|w| w.strip_prefix("/src/target/dist/")),
        );
        assert_eq!(copied, dist, "{copy}");

        // The build without a profile: the same binaries, the plugin apart.
        let build = lines
            .iter()
            .find(|l| l.contains("cargo xtask build-release --profile"))
            .expect("the build stage runs build-release with a staged profile");
        let words: Vec<&str> = build.split_whitespace().collect();
        let cargo_bins = |after: &str| -> Vec<&str> {
            let start = build.find(after).unwrap();
            let mut bins = Vec::new();
            let mut it = build[start..]
                .split_whitespace()
                .skip_while(|w| *w != "--bin");
            while let (Some("--bin"), Some(bin)) = (it.next(), it.next()) {
                bins.push(bin);
            }
            sorted(bins)
        };
        assert_eq!(
            cargo_bins("cargo build --release --bin mesh-agent"),
            sorted(PROFILED),
            "{build}"
        );
        assert_eq!(cargo_bins("cargo build --release --bin mesh-cni"), [PLUGIN]);
        let into_dist = sorted(
            words
                .iter()
                .filter_map(|w| w.strip_prefix("target/release/"))
                .chain(words.iter().filter_map(|w| {
                    w.trim_matches('"')
                        .strip_prefix("target/static/$host/release/")
                })),
        );
        assert_eq!(into_dist, dist, "{build}");
    }

    #[test]
    fn every_trained_binary_is_shipped_profiled() {
        for b in TRAINED {
            assert!(PROFILED.contains(&b), "{b}");
        }
        assert!(!PROFILED.contains(&PLUGIN));
    }

    #[test]
    fn a_process_profile_is_found_by_its_id() {
        let pattern = profile_pattern(Path::new("/t/raw"));
        assert_eq!(pattern, Path::new("/t/raw/%p-%m.profraw"));
        let name = pattern.file_name().unwrap().to_str().unwrap();
        assert!(name.starts_with("%p-"), "the process id comes first");
        // As the runtime expands it.
        assert!(is_profile_of("4242-1234567890abcdef.profraw", 4242));
        assert!(!is_profile_of("14242-1234567890abcdef.profraw", 4242));
        assert!(!is_profile_of("4242-1234567890abcdef.profdata", 4242));
        assert!(!is_profile_of("4242.profraw", 4242));
    }

    #[test]
    fn a_waypoint_without_a_profile_or_with_an_empty_one_stops_the_build() {
        let raw = std::env::temp_dir().join(format!("pgo-check-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&raw);
        std::fs::create_dir_all(&raw).unwrap();
        std::fs::write(raw.join("100-abc.profraw"), b"counts").unwrap();
        std::fs::write(raw.join("200-abc.profraw"), b"").unwrap();
        assert!(check_waypoint_profiles(&raw, &[100]).is_ok());
        let empty = check_waypoint_profiles(&raw, &[100, 200])
            .unwrap_err()
            .to_string();
        assert!(empty.contains("200") && empty.contains("empty"), "{empty}");
        let missing = check_waypoint_profiles(&raw, &[300])
            .unwrap_err()
            .to_string();
        assert!(
            missing.contains("300") && missing.contains("SIGTERM"),
            "{missing}"
        );
        assert!(check_waypoint_profiles(&raw, &[]).is_err());
        std::fs::remove_dir_all(&raw).unwrap();
    }

    #[test]
    fn a_missing_profile_is_refused_before_any_build_and_the_fix_is_named() {
        let err = build_with(Path::new("no/such/mesh-agent.profdata"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("--profile"), "{err}");
        assert!(err.contains("no/such/mesh-agent.profdata"), "{err}");
        assert!(err.contains("cargo xtask build-release"), "{err}");
    }
}
