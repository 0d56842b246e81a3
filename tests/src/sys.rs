//! Host plumbing: commands, network namespaces, cgroup v2, bpffs.
use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{Context, bail};

/// Runs a command and fails with its stderr when it fails.
pub fn run(cmd: &mut Command) -> anyhow::Result<String> {
    let out = cmd.output().with_context(|| format!("spawning {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `ip <args>`.
pub fn ip(args: &[&str]) -> anyhow::Result<String> {
    run(Command::new("ip").args(args))
}

/// The cgroup-v2 mount: `MESH_CGROUP2_ROOT`, else the first cgroup2 entry
/// of /proc/mounts (/sys/fs/cgroup on most hosts, /sys/fs/cgroup/unified on
/// hybrid ones).
pub fn cgroup2_root() -> anyhow::Result<PathBuf> {
    if let Some(p) = std::env::var_os("MESH_CGROUP2_ROOT") {
        return Ok(PathBuf::from(p));
    }
    let mounts = fs::read_to_string("/proc/mounts")?;
    mounts
        .lines()
        .find_map(|l| {
            let mut f = l.split_whitespace();
            let (_, dir, kind) = (f.next()?, f.next()?, f.next()?);
            (kind == "cgroup2").then(|| PathBuf::from(dir))
        })
        .context("no cgroup2 filesystem mounted; mount one or set MESH_CGROUP2_ROOT")
}

/// Mounts bpffs at /sys/fs/bpf when nothing is mounted there.
pub fn ensure_bpffs() -> anyhow::Result<PathBuf> {
    let dir = PathBuf::from("/sys/fs/bpf");
    let mounts = fs::read_to_string("/proc/mounts")?;
    let mounted = mounts
        .lines()
        .any(|l| l.split_whitespace().nth(1) == Some("/sys/fs/bpf") && l.contains(" bpf "));
    if !mounted {
        fs::create_dir_all(&dir)?;
        run(Command::new("mount").args(["-t", "bpf", "bpf", "/sys/fs/bpf"]))
            .context("mounting bpffs at /sys/fs/bpf")?;
    }
    Ok(dir)
}

/// Kills every process in a cgroup subtree and removes it, deepest first.
pub fn remove_cgroup_tree(dir: &Path) {
    if !dir.exists() {
        return;
    }
    let _ = fs::write(dir.join("cgroup.kill"), "1");
    let mut children: Vec<PathBuf> = fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .filter(|e| e.file_type().map(|t| t.is_dir()).unwrap_or(false))
                .map(|e| e.path())
                .collect()
        })
        .unwrap_or_default();
    children.sort();
    for c in children {
        remove_cgroup_tree(&c);
    }
    // A killed process leaves the cgroup shortly after; rmdir fails until then.
    let deadline = Instant::now() + Duration::from_secs(5);
    while fs::remove_dir(dir).is_err() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Whether we may do what the test bed does (root, essentially).
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// Fails unless we may do what the test bed does.
pub fn require_root() -> anyhow::Result<()> {
    if !is_root() {
        bail!("the test bed creates network namespaces, cgroups and BPF programs: run as root");
    }
    Ok(())
}

/// What `require_root!` says when it skips a test.
pub const SKIP_NOT_ROOT: &str = "skipped: needs root (network namespaces, BPF)";

/// False, after saying so on stderr, when `test` cannot run here. Written
/// to the process's stderr directly: the test harness captures `eprintln!`
/// of passing tests, and a skip passes.
pub fn may_run(test: &str) -> bool {
    if is_root() {
        return true;
    }
    use std::io::Write as _;
    let _ = writeln!(std::io::stderr().lock(), "{test}: {SKIP_NOT_ROOT}");
    false
}

/// Polls `f` every 20 ms until it returns Some, or fails after `timeout`.
pub fn wait_for<T>(
    what: &str,
    timeout: Duration,
    mut f: impl FnMut() -> Option<T>,
) -> anyhow::Result<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return Ok(v);
        }
        if Instant::now() >= deadline {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Reads a pinned per-CPU counters array through bpftool, summed over CPUs.
pub fn pinned_counters(pin_dir: &Path) -> anyhow::Result<Vec<u64>> {
    let path = pin_dir.join("MESH_COUNTERS");
    let out = run(Command::new("bpftool")
        .args(["-j", "map", "dump", "pinned"])
        .arg(&path))?;
    let v: serde_json::Value = serde_json::from_str(&out)?;
    let mut sums = Vec::new();
    for entry in v.as_array().context("bpftool output")? {
        // With BTF bpftool adds a "formatted" view; without, values are hex bytes.
        let values = entry
            .get("formatted")
            .and_then(|f| f.get("values"))
            .unwrap_or(&entry["values"]);
        let total: u64 = values
            .as_array()
            .map(|cpus| cpus.iter().map(|c| json_u64(&c["value"])).sum())
            .unwrap_or(0);
        sums.push(total);
    }
    Ok(sums)
}

/// Number of entries in a pinned hash map.
pub fn pinned_map_len(path: &Path) -> anyhow::Result<usize> {
    let out = run(Command::new("bpftool")
        .args(["-j", "map", "dump", "pinned"])
        .arg(path))?;
    let v: serde_json::Value = serde_json::from_str(&out)?;
    Ok(v.as_array().map(Vec::len).unwrap_or(0))
}

/// The pinned per-pod sk_lookup links of a node (`pods/<netns cookie>/sk_lookup`),
/// sorted by path.
pub fn pod_links(pin_dir: &Path) -> Vec<std::path::PathBuf> {
    let mut links: Vec<_> = std::fs::read_dir(pin_dir.join("pods"))
        .map(|d| {
            d.flatten()
                .map(|e| e.path().join("sk_lookup"))
                .filter(|p| p.exists())
                .collect()
        })
        .unwrap_or_default();
    links.sort();
    links
}

/// A bpftool value: a number, or little-endian hex bytes (`["0x01", ...]`).
fn json_u64(v: &serde_json::Value) -> u64 {
    if let Some(n) = v.as_u64() {
        return n;
    }
    v.as_array()
        .map(|bytes| {
            bytes.iter().rev().fold(0u64, |acc, b| {
                let byte = b
                    .as_str()
                    .and_then(|s| u8::from_str_radix(s.trim_start_matches("0x"), 16).ok())
                    .unwrap_or(0);
                (acc << 8) | u64::from(byte)
            })
        })
        .unwrap_or(0)
}
