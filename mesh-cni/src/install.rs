//! `mesh-cni install` / `mesh-cni uninstall`: put the plugin on a node (its
//! binary into the runtime's plugin dir, its entry into the network
//! configuration the runtime uses) and take it off again. Run by the
//! chart's init container and watch container with the host's directories
//! mounted, or by hand as root on a node.
//!
//! What to write is decided by `conflist` (pure); this module reads and
//! writes the files. Every write goes to a temporary name in the same
//! directory, is flushed to disk and renamed over the target, so the
//! runtime (which execs the binary and reloads the config whenever the
//! directory changes) never sees half a file.
use std::{
    fs::{self, File, OpenOptions, Permissions},
    io::Write,
    os::unix::fs::{OpenOptionsExt, PermissionsExt},
    path::{Path, PathBuf},
    time::Duration,
};

use crate::{
    conflist::{self, Entry, NetworkConfig, PLUGIN_TYPE},
    plugin::{MAX_TIMEOUT, parse_timeout},
    protocol::DEFAULT_SOCKET,
};

pub const DEFAULT_BIN_DIR: &str = "/opt/cni/bin";
pub const DEFAULT_CONF_DIR: &str = "/etc/cni/net.d";
pub const DEFAULT_POLL: Duration = Duration::from_secs(5);
/// `--poll-interval` bounds: often enough that a rewritten config is
/// repaired before many pods start, rarely enough to cost nothing.
pub const MIN_POLL: Duration = Duration::from_secs(1);
pub const MAX_POLL: Duration = Duration::from_secs(600);
/// How often one install retries when the network plugin rewrote the
/// file between our read and our rename.
const RACE_RETRIES: usize = 3;

pub const USAGE: &str = "\
usage: mesh-cni install [--cni-bin-dir DIR] [--cni-conf-dir DIR] [--agent-socket PATH]
                        [--exclude-namespaces NS,NS...] [--timeout DURATION]
                        [--watch [--poll-interval DURATION]]
       mesh-cni uninstall [--cni-bin-dir DIR] [--cni-conf-dir DIR]

install   copies this binary to DIR/mesh-cni (--cni-bin-dir, default /opt/cni/bin)
          and adds a mesh-cni entry to the network configuration the runtime
          uses: the first *.conf, *.conflist or *.json by name in --cni-conf-dir
          (default /etc/cni/net.d); a single-plugin file becomes a .conflist.
          An existing entry is updated. Fails (non-zero) while that directory
          has no network configuration yet.
          --agent-socket       the agent's AgentConfig.cniSocket (default /var/run/mesh/cni.sock)
          --exclude-namespaces pods there start without the agent (default kube-system;
                               an empty value excludes none)
          --timeout            how long ADD waits for the agent (default 10s, at most 50s)
          --watch              keep the entry in place: check every --poll-interval
                               (default 5s) and put it back when the network plugin
                               rewrites its file; stops once `mesh-cni uninstall`
                               has removed the binary
uninstall removes DIR/mesh-cni, then the mesh-cni entry from every network
          configuration file in --cni-conf-dir.

Without arguments, mesh-cni is the CNI plugin the runtime runs (CNI_COMMAND).";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dirs {
    pub bin: PathBuf,
    pub conf: PathBuf,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Install {
    pub dirs: Dirs,
    pub entry: Entry,
    /// `Some(interval)` with `--watch`.
    pub watch: Option<Duration>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cli {
    Install(Install),
    Uninstall(Dirs),
    Help,
}

/// Reads the arguments after the program name. Flags take their value as
/// the next argument or after `=`.
pub fn parse_args(args: &[String]) -> Result<Cli, String> {
    let (command, rest) = match args.split_first() {
        Some((c, rest)) => (c.as_str(), rest),
        None => return Err("no command".into()),
    };
    if matches!(command, "help" | "--help" | "-h") {
        return Ok(Cli::Help);
    }
    if !matches!(command, "install" | "uninstall") {
        return Err(format!(
            "unknown command {command:?}: use install or uninstall (the runtime runs the plugin without arguments, with CNI_COMMAND set)"
        ));
    }
    let mut bin = PathBuf::from(DEFAULT_BIN_DIR);
    let mut conf = PathBuf::from(DEFAULT_CONF_DIR);
    let mut socket = DEFAULT_SOCKET.to_owned();
    let mut excluded = vec!["kube-system".to_owned()];
    let mut timeout = "10s".to_owned();
    let mut watch = false;
    let mut poll: Option<String> = None;
    let mut i = 0;
    while i < rest.len() {
        let arg = rest[i].as_str();
        i += 1;
        if matches!(arg, "--help" | "-h") {
            return Ok(Cli::Help);
        }
        if arg == "--watch" && command == "install" {
            watch = true;
            continue;
        }
        let (flag, inline) = match arg.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f, Some(v.to_owned())),
            _ => (arg, None),
        };
        let known = match command {
            "install" => [
                "--cni-bin-dir",
                "--cni-conf-dir",
                "--agent-socket",
                "--exclude-namespaces",
                "--timeout",
                "--poll-interval",
            ]
            .as_slice(),
            _ => ["--cni-bin-dir", "--cni-conf-dir"].as_slice(),
        };
        if !known.contains(&flag) {
            return Err(format!("{command}: unknown argument {arg:?}"));
        }
        let value = match inline {
            Some(v) => v,
            None => {
                let v = rest
                    .get(i)
                    .ok_or_else(|| format!("{flag} needs a value"))?
                    .clone();
                i += 1;
                v
            }
        };
        match flag {
            "--cni-bin-dir" => bin = absolute_dir(flag, &value)?,
            "--cni-conf-dir" => conf = absolute_dir(flag, &value)?,
            "--agent-socket" => {
                if !value.starts_with('/') {
                    return Err(format!(
                        "--agent-socket {value:?}: an absolute path on the node (the agent's AgentConfig.cniSocket)"
                    ));
                }
                socket = value;
            }
            "--exclude-namespaces" => excluded = namespaces(&value)?,
            "--timeout" => {
                if parse_timeout(&value).is_none() {
                    return Err(format!(
                        "--timeout {value:?}: a duration above 0s and at most {}s, e.g. 10s or 2500ms",
                        MAX_TIMEOUT.as_secs()
                    ));
                }
                timeout = value;
            }
            _ => poll = Some(value),
        }
    }
    if command == "uninstall" {
        return Ok(Cli::Uninstall(Dirs { bin, conf }));
    }
    let interval = match &poll {
        None => DEFAULT_POLL,
        Some(p) => humantime::parse_duration(p)
            .ok()
            .filter(|d| (MIN_POLL..=MAX_POLL).contains(d))
            .ok_or_else(|| {
                format!(
                    "--poll-interval {p:?}: a duration from {}s to {}s, e.g. 5s",
                    MIN_POLL.as_secs(),
                    MAX_POLL.as_secs()
                )
            })?,
    };
    if poll.is_some() && !watch {
        return Err("--poll-interval goes with --watch".into());
    }
    Ok(Cli::Install(Install {
        dirs: Dirs { bin, conf },
        entry: Entry {
            agent_socket: socket,
            exclude_namespaces: excluded,
            timeout,
        },
        watch: watch.then_some(interval),
    }))
}

fn absolute_dir(flag: &str, value: &str) -> Result<PathBuf, String> {
    if value.starts_with('/') {
        Ok(PathBuf::from(value))
    } else {
        Err(format!("{flag} {value:?}: an absolute directory"))
    }
}

/// `a,b,c` as Kubernetes namespace names (DNS labels); empty is none.
fn namespaces(value: &str) -> Result<Vec<String>, String> {
    let mut out: Vec<String> = Vec::new();
    for ns in value.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let label = ns.len() <= 63
            && ns
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && !ns.starts_with('-')
            && !ns.ends_with('-');
        if !label {
            return Err(format!(
                "--exclude-namespaces: {ns:?} is not a namespace name (lowercase letters, digits and '-', at most 63)"
            ));
        }
        if !out.iter().any(|o| o == ns) {
            out.push(ns.to_owned());
        }
    }
    Ok(out)
}

/// What an install did, for the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Done {
    /// The config file (its new name) got the entry or an updated one.
    Written(PathBuf),
    /// The config already had the entry as wanted.
    Unchanged(PathBuf),
}

/// Copies `exe` to the plugin dir unless the copy there is identical.
pub fn install_binary(exe: &Path, bin_dir: &Path) -> Result<PathBuf, String> {
    let target = bin_dir.join(PLUGIN_TYPE);
    let bytes = fs::read(exe).map_err(|e| format!("reading this binary {}: {e}", exe.display()))?;
    if fs::read(&target).is_ok_and(|old| old == bytes) {
        return Ok(target);
    }
    write_atomic(&target, &bytes, 0o755).map_err(|e| {
        format!(
            "installing the plugin at {}: {e}; --cni-bin-dir must be the runtime's plugin dir, writable here (mounted from the host)",
            target.display()
        )
    })?;
    Ok(target)
}

/// The config files of the conf dir, by name.
fn config_files(conf_dir: &Path) -> Result<Vec<String>, String> {
    let entries = fs::read_dir(conf_dir).map_err(|e| {
        format!(
            "reading the CNI config dir {}: {e}; --cni-conf-dir must be the runtime's (containerd's and CRI-O's default is /etc/cni/net.d, k3s's /var/lib/rancher/k3s/agent/etc/cni/net.d)",
            conf_dir.display()
        )
    })?;
    let mut names: Vec<String> = entries
        .filter_map(Result::ok)
        .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|n| conflist::is_config(n))
        .collect();
    names.sort();
    Ok(names)
}

/// One pass: the entry into the config the runtime uses. Does not touch
/// the binary (see `install_binary`), so that `--watch` can tell an
/// uninstalled node from one to repair.
pub fn install_entry(dirs: &Dirs, entry: &Entry) -> Result<Done, String> {
    for _ in 0..RACE_RETRIES {
        let names = config_files(&dirs.conf)?;
        let Some(name) = conflist::runtime_config(&names) else {
            return Err(format!(
                "no CNI network configuration (*.conflist, *.conf, *.json) in {}: the node's network plugin has not written it yet (install fails until it has; the kubelet restarts this), or the runtime reads another dir (set --cni-conf-dir)",
                dirs.conf.display()
            ));
        };
        let path = dirs.conf.join(name);
        let text =
            fs::read_to_string(&path).map_err(|e| format!("reading {}: {e}", path.display()))?;
        let config =
            NetworkConfig::parse(&path.display().to_string(), &text).map_err(|e| e.to_string())?;
        // The runtime finds every plugin of the list in one dir: if the
        // network plugin's binary is not in --cni-bin-dir, the runtime
        // looks elsewhere and would fail every pod's ADD with "mesh-cni
        // not found".
        let network = config.network_plugin().map_err(|e| e.to_string())?;
        if !dirs.bin.join(network).is_file() {
            return Err(format!(
                "{} chains the network plugin {network:?}, but {} has no binary {network}: the runtime runs plugins from another dir (e.g. /home/kubernetes/bin on GKE); set --cni-bin-dir to it",
                path.display(),
                dirs.bin.display()
            ));
        }
        let Some(new_text) = config.with_entry(entry).map_err(|e| e.to_string())? else {
            return Ok(Done::Unchanged(path));
        };
        let target = dirs.conf.join(config.list_name());
        let mode = fs::metadata(&path)
            .map(|m| m.permissions().mode() & 0o7777)
            .map_err(|e| format!("{}: {e}", path.display()))?;
        // The network plugin may have rewritten the file since we read it;
        // writing ours now would undo its change. Read again and start
        // over when it differs (the window left is the rename itself).
        if fs::read_to_string(&path).ok().as_deref() != Some(text.as_str()) {
            continue;
        }
        write_atomic(&target, new_text.as_bytes(), mode)
            .map_err(|e| format!("writing {}: {e}", target.display()))?;
        if target != path {
            // The single-plugin file would sort before its .conflist and
            // stay the one the runtime uses.
            fs::remove_file(&path).map_err(|e| {
                format!(
                    "{} now holds the list with mesh-cni, but removing {} failed: {e}; remove it by hand",
                    target.display(),
                    path.display()
                )
            })?;
        }
        return Ok(Done::Written(target));
    }
    Err(format!(
        "the network configuration in {} changed {RACE_RETRIES} times while mesh-cni was writing it; run install again",
        dirs.conf.display()
    ))
}

/// Removes the binary, then the entry from every config file. The
/// binary goes first: a `--watch` that sees it gone stops putting the
/// entry back (see `watch`).
pub fn uninstall(dirs: &Dirs) -> Result<Vec<String>, String> {
    let mut done = Vec::new();
    let binary = dirs.bin.join(PLUGIN_TYPE);
    match fs::remove_file(&binary) {
        Ok(()) => done.push(format!("removed {}", binary.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(format!("removing {}: {e}", binary.display())),
    }
    let mut failed = Vec::new();
    for name in config_files(&dirs.conf)? {
        let path = dirs.conf.join(&name);
        match remove_entry(&path) {
            Ok(true) => done.push(format!(
                "removed the mesh-cni entry from {}",
                path.display()
            )),
            Ok(false) => {}
            Err(e) => failed.push(e),
        }
    }
    if failed.is_empty() {
        Ok(done)
    } else {
        Err(failed.join("\n"))
    }
}

/// Whether `path` had an entry (now removed).
fn remove_entry(path: &Path) -> Result<bool, String> {
    let text = fs::read_to_string(path).map_err(|e| format!("reading {}: {e}", path.display()))?;
    // Files that never mention the plugin are not parsed, so that an
    // unrelated broken file does not fail the uninstall.
    if !text.contains(PLUGIN_TYPE) {
        return Ok(false);
    }
    let config =
        NetworkConfig::parse(&path.display().to_string(), &text).map_err(|e| e.to_string())?;
    let Some(new_text) = config.without_entry() else {
        return Ok(false);
    };
    let mode = fs::metadata(path)
        .map(|m| m.permissions().mode() & 0o7777)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    write_atomic(path, new_text.as_bytes(), mode)
        .map_err(|e| format!("writing {}: {e}", path.display()))?;
    Ok(true)
}

/// Keeps the entry in place until the binary is uninstalled. Network
/// plugins rewrite their config when their own pod restarts (calico-node's
/// and flannel's init containers, cilium-agent at every start), which
/// drops the entry: pods would then start before the agent enrolls them.
/// Polling, not inotify: std has no inotify, the check is a directory
/// listing and one small read, and a few seconds' delay is what
/// istio-cni's repair has too.
pub fn watch(dirs: &Dirs, entry: &Entry, interval: Duration) -> ! {
    let binary = dirs.bin.join(PLUGIN_TYPE);
    let mut last: Option<String> = None;
    // A state is logged when it is new, not at every poll.
    let report = |last: &mut Option<String>, line: String| {
        if last.as_deref() != Some(line.as_str()) {
            eprintln!("mesh-cni install --watch: {line}");
            *last = Some(line);
        }
    };
    loop {
        if !binary.is_file() {
            report(
                &mut last,
                format!(
                    "{} is gone (mesh-cni uninstall): no longer maintaining the entry",
                    binary.display()
                ),
            );
            // Exiting would have the kubelet restart this container,
            // which installs again; idle until the pod is deleted.
            std::thread::sleep(MAX_POLL);
            continue;
        }
        match install_entry(dirs, entry) {
            Ok(Done::Written(path)) => {
                // `uninstall` may have removed the binary between the check
                // above and the write: take the entry out again, or every
                // pod's ADD on the node would fail on a missing plugin.
                if !binary.is_file() {
                    let _ = remove_entry(&path);
                    continue;
                }
                // Logged every time: each rewrite is an event worth seeing.
                last = None;
                eprintln!(
                    "mesh-cni install --watch: wrote the mesh-cni entry into {}",
                    path.display()
                );
            }
            Ok(Done::Unchanged(path)) => report(
                &mut last,
                format!("{} has the mesh-cni entry", path.display()),
            ),
            Err(e) => report(
                &mut last,
                format!("{e} (retrying every {}s)", interval.as_secs()),
            ),
        }
        std::thread::sleep(interval);
    }
}

/// Writes `bytes` to a temporary name beside `target`, flushes it to
/// disk, and renames it over `target`, with `mode`. The temporary name
/// ends in none of the config extensions, so the runtime never loads it.
fn write_atomic(target: &Path, bytes: &[u8], mode: u32) -> std::io::Result<()> {
    let dir = target.parent().unwrap_or(Path::new("."));
    let name = target
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.mesh-cni-tmp"));
    let written = write_and_rename(&tmp, target, dir, bytes, mode);
    if written.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    written
}

fn write_and_rename(
    tmp: &Path,
    target: &Path,
    dir: &Path,
    bytes: &[u8],
    mode: u32,
) -> std::io::Result<()> {
    let mut file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(tmp)?;
    // The umask may have narrowed the mode given at creation.
    file.set_permissions(Permissions::from_mode(mode))?;
    file.write_all(bytes)?;
    file.sync_all()?;
    drop(file);
    fs::rename(tmp, target)?;
    // The rename itself is durable once the directory is synced.
    File::open(dir)?.sync_all()
}

/// `mesh-cni install|uninstall|help ...`; the process's exit code.
pub fn main(args: &[String]) -> i32 {
    let cli = match parse_args(args) {
        Ok(cli) => cli,
        Err(e) => {
            eprintln!("mesh-cni: {e}\n\n{USAGE}");
            return 2;
        }
    };
    match cli {
        Cli::Help => {
            println!("{USAGE}");
            0
        }
        Cli::Uninstall(dirs) => match uninstall(&dirs) {
            Ok(done) => {
                if done.is_empty() {
                    eprintln!(
                        "mesh-cni uninstall: nothing to remove in {} and {}",
                        dirs.bin.display(),
                        dirs.conf.display()
                    );
                }
                for line in done {
                    eprintln!("mesh-cni uninstall: {line}");
                }
                0
            }
            Err(e) => {
                eprintln!("mesh-cni uninstall: {e}");
                1
            }
        },
        Cli::Install(install) => {
            let bin = match std::env::current_exe()
                .map_err(|e| format!("finding this binary (/proc/self/exe): {e}"))
                .and_then(|exe| install_binary(&exe, &install.dirs.bin))
            {
                Ok(bin) => bin,
                Err(e) => {
                    eprintln!("mesh-cni install: {e}");
                    return 1;
                }
            };
            eprintln!("mesh-cni install: installed {}", bin.display());
            if let Some(interval) = install.watch {
                // Writes the entry on its first pass, and waits for a
                // config that is not there yet instead of exiting: the
                // init container has already refused to start without one.
                watch(&install.dirs, &install.entry, interval);
            }
            match install_entry(&install.dirs, &install.entry) {
                Ok(Done::Written(path)) => {
                    eprintln!(
                        "mesh-cni install: wrote the entry {} into {}",
                        install.entry.to_json(),
                        path.display()
                    );
                    0
                }
                Ok(Done::Unchanged(path)) => {
                    eprintln!(
                        "mesh-cni install: {} already has the entry {}",
                        path.display(),
                        install.entry.to_json()
                    );
                    0
                }
                Err(e) => {
                    eprintln!("mesh-cni install: {e}");
                    1
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &str) -> Vec<String> {
        s.split_whitespace().map(str::to_owned).collect()
    }

    #[test]
    fn install_flags_with_defaults_and_both_value_forms() {
        let Cli::Install(i) = parse_args(&args("install")).unwrap() else {
            panic!()
        };
        assert_eq!(i.dirs.bin, Path::new("/opt/cni/bin"));
        assert_eq!(i.dirs.conf, Path::new("/etc/cni/net.d"));
        assert_eq!(i.entry.agent_socket, DEFAULT_SOCKET);
        assert_eq!(i.entry.exclude_namespaces, ["kube-system"]);
        assert_eq!(i.entry.timeout, "10s");
        assert_eq!(i.watch, None);
        let Cli::Install(i) = parse_args(&args(
            "install --cni-bin-dir /host/opt/cni/bin --cni-conf-dir=/host/etc/cni/net.d --agent-socket /run/m.sock --exclude-namespaces kube-system,mesh-system,kube-system --timeout 20s --watch --poll-interval 2s",
        ))
        .unwrap() else {
            panic!()
        };
        assert_eq!(i.dirs.bin, Path::new("/host/opt/cni/bin"));
        assert_eq!(i.dirs.conf, Path::new("/host/etc/cni/net.d"));
        assert_eq!(i.entry.agent_socket, "/run/m.sock");
        assert_eq!(i.entry.exclude_namespaces, ["kube-system", "mesh-system"]);
        assert_eq!(i.entry.timeout, "20s");
        assert_eq!(i.watch, Some(Duration::from_secs(2)));
        let Cli::Install(i) = parse_args(&args("install --exclude-namespaces=")).unwrap() else {
            panic!()
        };
        assert!(i.entry.exclude_namespaces.is_empty());
        assert_eq!(
            parse_args(&args("uninstall --cni-conf-dir /c")).unwrap(),
            Cli::Uninstall(Dirs {
                bin: "/opt/cni/bin".into(),
                conf: "/c".into()
            })
        );
        assert_eq!(parse_args(&args("install --help")).unwrap(), Cli::Help);
    }

    #[test]
    fn bad_flags_are_named_with_the_fix() {
        for (line, named) in [
            ("frob", "unknown command"),
            ("install --timeout 0s", "--timeout"),
            ("install --timeout 90s", "at most 50s"),
            ("install --agent-socket cni.sock", "absolute"),
            ("install --cni-bin-dir opt/cni/bin", "--cni-bin-dir"),
            ("install --exclude-namespaces Kube_System", "Kube_System"),
            ("install --watch --poll-interval 10ms", "--poll-interval"),
            ("install --poll-interval 5s", "goes with --watch"),
            ("install --cni-conf-dir", "needs a value"),
            ("uninstall --timeout 5s", "unknown argument"),
            ("uninstall --watch", "unknown argument"),
        ] {
            let e = parse_args(&args(line)).unwrap_err();
            assert!(e.contains(named), "{line}: {e}");
        }
    }

    fn node(conf_name: &str, conf_text: &str) -> (tempfile::TempDir, Dirs) {
        let dir = tempfile::tempdir().unwrap();
        let dirs = Dirs {
            bin: dir.path().join("bin"),
            conf: dir.path().join("net.d"),
        };
        fs::create_dir_all(&dirs.bin).unwrap();
        fs::create_dir_all(&dirs.conf).unwrap();
        fs::write(dirs.bin.join("bridge"), "#!/bin/sh\n").unwrap();
        if !conf_name.is_empty() {
            fs::write(dirs.conf.join(conf_name), conf_text).unwrap();
        }
        (dir, dirs)
    }

    fn entry() -> Entry {
        Entry {
            agent_socket: "/var/run/mesh/cni.sock".into(),
            exclude_namespaces: vec!["kube-system".into()],
            timeout: "10s".into(),
        }
    }

    const BRIDGE_CONF: &str = r#"{"cniVersion":"1.0.0","name":"bridge","type":"bridge","bridge":"cni0","ipam":{"type":"host-local","subnet":"10.244.1.0/24"}}"#;

    #[test]
    fn a_conf_is_replaced_by_its_conflist_keeping_the_mode_and_a_second_pass_writes_nothing() {
        let (_tmp, dirs) = node("10-bridge.conf", BRIDGE_CONF);
        fs::set_permissions(
            dirs.conf.join("10-bridge.conf"),
            Permissions::from_mode(0o600),
        )
        .unwrap();
        fs::write(dirs.conf.join("99-loopback.conf"), "{}").unwrap();
        let done = install_entry(&dirs, &entry()).unwrap();
        let list = dirs.conf.join("10-bridge.conflist");
        assert_eq!(done, Done::Written(list.clone()));
        assert!(!dirs.conf.join("10-bridge.conf").exists());
        let mode = fs::metadata(&list).unwrap().permissions().mode() & 0o7777;
        assert_eq!(mode, 0o600);
        let v: serde_json::Value =
            serde_json::from_str(&fs::read_to_string(&list).unwrap()).unwrap();
        assert_eq!(v["plugins"][1]["type"], "mesh-cni");
        // No temporary file left behind for the runtime to stumble on.
        let names: Vec<String> = fs::read_dir(&dirs.conf)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(names.len(), 2, "{names:?}");
        let modified = fs::metadata(&list).unwrap().modified().unwrap();
        assert_eq!(
            install_entry(&dirs, &entry()).unwrap(),
            Done::Unchanged(list.clone())
        );
        assert_eq!(fs::metadata(&list).unwrap().modified().unwrap(), modified);
        // uninstall takes it out and leaves the list (valid for the runtime).
        fs::write(dirs.bin.join("mesh-cni"), "x").unwrap();
        let done = uninstall(&dirs).unwrap();
        assert_eq!(done.len(), 2, "{done:?}");
        assert!(!dirs.bin.join("mesh-cni").exists());
        let v: serde_json::Value =
            serde_json::from_str(&fs::read_to_string(&list).unwrap()).unwrap();
        assert_eq!(v["plugins"].as_array().unwrap().len(), 1);
        assert!(uninstall(&dirs).unwrap().is_empty());
    }

    #[test]
    fn install_refuses_without_a_config_with_a_broken_one_or_in_the_wrong_bin_dir() {
        let (_tmp, dirs) = node("", "");
        fs::write(dirs.conf.join("calico-kubeconfig"), "apiVersion: v1").unwrap();
        let e = install_entry(&dirs, &entry()).unwrap_err();
        assert!(
            e.contains("no CNI network configuration") && e.contains("net.d"),
            "{e}"
        );

        let (_tmp, dirs) = node("10-bridge.conflist", "{\"cniVersion\": ");
        let e = install_entry(&dirs, &entry()).unwrap_err();
        assert!(
            e.contains("10-bridge.conflist") && e.contains("not a JSON object"),
            "{e}"
        );

        let (_tmp, dirs) = node("10-bridge.conf", BRIDGE_CONF);
        fs::remove_file(dirs.bin.join("bridge")).unwrap();
        let e = install_entry(&dirs, &entry()).unwrap_err();
        assert!(
            e.contains("\"bridge\"") && e.contains("--cni-bin-dir"),
            "{e}"
        );
        // Nothing was written.
        assert_eq!(
            fs::read_to_string(dirs.conf.join("10-bridge.conf")).unwrap(),
            BRIDGE_CONF
        );

        let missing = Dirs {
            bin: "/nonexistent/bin".into(),
            conf: "/nonexistent/net.d".into(),
        };
        let e = install_entry(&missing, &entry()).unwrap_err();
        assert!(e.contains("/nonexistent/net.d"), "{e}");
    }

    #[test]
    fn uninstall_skips_unrelated_broken_files_but_names_a_broken_one_with_the_entry() {
        let (_tmp, dirs) = node("00-junk.conf", "not json");
        assert!(uninstall(&dirs).unwrap().is_empty());
        fs::write(
            dirs.conf.join("10-x.conflist"),
            "{\"plugins\": [\"mesh-cni\"",
        )
        .unwrap();
        let e = uninstall(&dirs).unwrap_err();
        assert!(e.contains("10-x.conflist"), "{e}");
    }
}
