//! Processes inside a netns and a cgroup, with bounded waits on their output.
use std::{
    fs::File,
    io::{BufRead, BufReader},
    os::{fd::AsRawFd, unix::process::CommandExt},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex},
    thread,
    time::Duration,
};

use anyhow::{Context, bail};

use crate::sys::wait_for;

/// The programs the test bed runs.
#[derive(Debug, Clone)]
pub struct Binaries {
    pub agent: PathBuf,
    pub meshtb: PathBuf,
    pub probe: PathBuf,
    /// The `mesh` CLI.
    pub cli: PathBuf,
    /// `mesh-waypoint`, or why it was not found: only clusters with a
    /// waypoint need it.
    pub waypoint: Result<PathBuf, String>,
}

impl Binaries {
    /// `MESH_AGENT_BIN` / `MESHTB_BIN` / `MESH_WAYPOINT_BIN`, else next to the running executable
    /// (target/<profile>/ for xtask, its deps/ parent for test binaries).
    pub fn locate() -> anyhow::Result<Self> {
        let find = |env: &str, name: &str| -> anyhow::Result<PathBuf> {
            if let Some(p) = std::env::var_os(env) {
                return Ok(PathBuf::from(p));
            }
            let exe = std::env::current_exe()?;
            let dir = exe.parent().context("executable has no directory")?;
            for d in [dir, dir.parent().unwrap_or(dir)] {
                let candidate = d.join(name);
                if candidate.is_file() {
                    return Ok(candidate);
                }
            }
            bail!(
                "{name} not found next to {}; build it with `cargo build --workspace` or set {env}",
                exe.display()
            )
        };
        Ok(Self {
            agent: find("MESH_AGENT_BIN", "mesh-agent")?,
            meshtb: find("MESHTB_BIN", "meshtb")?,
            probe: find("HBONEPROBE_BIN", "hboneprobe")?,
            cli: find("MESH_CLI_BIN", "mesh")?,
            // Tests that run no waypoint must not need it built.
            waypoint: find("MESH_WAYPOINT_BIN", "mesh-waypoint").map_err(|e| format!("{e:#}")),
        })
    }

    /// `mesh-waypoint`, or an error saying how to build it.
    pub fn waypoint(&self) -> anyhow::Result<&Path> {
        self.waypoint.as_deref().map_err(|e| anyhow::anyhow!("{e}"))
    }
}

/// Where a process runs.
#[derive(Debug, Clone)]
pub struct Place {
    pub netns: PathBuf,
    pub cgroup: PathBuf,
}

impl Place {
    /// A command that, between fork and exec, joins the cgroup and then the
    /// netns: the process is captured (or not) from its first instruction.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> anyhow::Result<Command> {
        let netns =
            File::open(&self.netns).with_context(|| format!("netns {}", self.netns.display()))?;
        let procs = std::fs::OpenOptions::new()
            .write(true)
            .open(self.cgroup.join("cgroup.procs"))
            .with_context(|| format!("cgroup {}", self.cgroup.display()))?;
        let mut cmd = Command::new(program);
        unsafe {
            cmd.pre_exec(move || {
                // "0" moves the writing process itself.
                if libc::write(procs.as_raw_fd(), b"0".as_ptr().cast(), 1) != 1 {
                    return Err(std::io::Error::last_os_error());
                }
                if libc::setns(netns.as_raw_fd(), libc::CLONE_NEWNET) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        Ok(cmd)
    }
}

/// A running process whose stdout (and optionally stderr) lines are kept.
pub struct Proc {
    pub name: String,
    child: Child,
    lines: Arc<Mutex<Vec<String>>>,
    /// The threads copying stdout/stderr into `lines`; finished once the
    /// pipes reach end of file.
    readers: Vec<thread::JoinHandle<()>>,
    log_file: Option<PathBuf>,
    detached: bool,
}

impl Proc {
    /// Spawns with stdout captured line by line; stderr goes to `log_file`
    /// when given (an agent's log), else is captured too.
    pub fn spawn(name: &str, mut cmd: Command, log_file: Option<&Path>) -> anyhow::Result<Self> {
        cmd.stdin(Stdio::null()).stdout(Stdio::piped());
        match log_file {
            Some(p) => cmd.stderr(File::create(p)?),
            None => cmd.stderr(Stdio::piped()),
        };
        let mut child = cmd
            .spawn()
            .with_context(|| format!("spawning {name}: {cmd:?}"))?;
        let lines = Arc::new(Mutex::new(Vec::new()));
        let mut streams: Vec<Box<dyn std::io::Read + Send>> =
            vec![Box::new(child.stdout.take().unwrap())];
        if let Some(e) = child.stderr.take() {
            streams.push(Box::new(e));
        }
        let readers = streams
            .into_iter()
            .map(|s| {
                let lines = lines.clone();
                thread::spawn(move || {
                    for line in BufReader::new(s).lines().map_while(Result::ok) {
                        lines.lock().unwrap().push(line);
                    }
                })
            })
            .collect();
        Ok(Self {
            name: name.to_owned(),
            child,
            lines,
            readers,
            log_file: log_file.map(Path::to_owned),
            detached: false,
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Its exit status once it has exited (its last lines read by then).
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        let status = self.child.try_wait().ok().flatten()?;
        self.drain_output();
        Some(status)
    }

    /// Output so far: stdout lines, then the log file's lines if any.
    pub fn output(&self) -> Vec<String> {
        let mut out = self.lines.lock().unwrap().clone();
        if let Some(text) = self
            .log_file
            .as_ref()
            .and_then(|p| std::fs::read_to_string(p).ok())
        {
            out.extend(text.lines().map(str::to_owned));
        }
        out
    }

    /// Output lines that parse as JSON.
    pub fn json_lines(&self) -> Vec<serde_json::Value> {
        self.output()
            .iter()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    /// Waits until a JSON output line satisfies `pred`, or the process exits.
    pub fn wait_json(
        &mut self,
        what: &str,
        timeout: Duration,
        pred: impl Fn(&serde_json::Value) -> bool,
    ) -> anyhow::Result<serde_json::Value> {
        let name = self.name.clone();
        let mut exited = None;
        let found = wait_for(&format!("{name}: {what}"), timeout, || {
            if let Some(v) = self.json_lines().into_iter().find(|v| pred(v)) {
                return Some(Some(v));
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                exited = Some(status);
                self.drain_output();
                return Some(self.json_lines().into_iter().find(|v| pred(v)));
            }
            None
        });
        match found {
            Ok(Some(v)) => Ok(v),
            Ok(None) => bail!(
                "{name} exited ({}) before {what}; output:\n{}",
                exited.unwrap(),
                self.output().join("\n")
            ),
            Err(e) => bail!("{e}; output:\n{}", self.output().join("\n")),
        }
    }

    /// After exit, waits until the reader threads have copied the last
    /// lines out of the pipes: a fixed pause lost them on a loaded CI
    /// machine. They finish at end of file, once the process (and any child
    /// holding the pipe) is gone; the bound keeps a lingering grandchild
    /// from hanging the caller.
    fn drain_output(&self) {
        let _ = wait_for(
            &format!("{}'s output", self.name),
            Duration::from_secs(5),
            || {
                self.readers
                    .iter()
                    .all(thread::JoinHandle::is_finished)
                    .then_some(())
            },
        );
    }

    /// Waits for exit (bounded) and returns the status.
    pub fn wait_exit(&mut self, timeout: Duration) -> anyhow::Result<std::process::ExitStatus> {
        let name = self.name.clone();
        let status = wait_for(&format!("{name} to exit"), timeout, || {
            self.child.try_wait().ok().flatten()
        })?;
        self.drain_output();
        Ok(status)
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, then SIGKILL if it has not exited within `grace`: a process
    /// that stops on its own runs its exit path (a profiled build writes
    /// its profile there).
    pub fn terminate(&mut self, grace: Duration) {
        if self.child.try_wait().ok().flatten().is_none() {
            unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM) };
            if self.wait_exit(grace).is_ok() {
                return;
            }
        }
        self.kill();
    }
}

impl Proc {
    /// Lets the process outlive this handle.
    pub fn detach(&mut self) {
        self.detached = true;
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if !self.detached {
            self.kill();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::process::ExitStatusExt;

    use super::*;

    fn sh(script: &str) -> Proc {
        let mut cmd = Command::new("sh");
        cmd.args(["-c", script]);
        Proc::spawn("sh", cmd, None).expect("spawn sh")
    }

    #[test]
    fn terminate_lets_a_process_stop_on_sigterm() {
        // exec: the shell becomes sleep, which dies of SIGTERM.
        let mut p = sh("exec sleep 30");
        p.terminate(Duration::from_secs(10));
        let status = p.child.try_wait().unwrap().expect("exited");
        assert_eq!(status.signal(), Some(libc::SIGTERM));
    }

    #[test]
    fn output_written_just_before_the_pipe_closes_is_kept() {
        // The shell exits at once; a child still holding stdout writes its
        // line 300 ms later. Both waits must return that line, not what
        // happened to be copied when the shell's exit was seen.
        let script = r#"(sleep 0.3; echo '{"late":true}') & exit 0"#;
        let mut p = sh(script);
        assert!(p.wait_exit(Duration::from_secs(10)).unwrap().success());
        assert_eq!(p.json_lines(), vec![serde_json::json!({"late": true})]);

        let mut p = sh(script);
        let v = p
            .wait_json("late line", Duration::from_secs(10), |v| v["late"] == true)
            .expect("the line written after the shell exited");
        assert_eq!(v["late"], true);
    }

    #[test]
    fn terminate_kills_a_process_that_ignores_sigterm() {
        let mut p = sh(r#"trap '' TERM; echo '{"ready":true}'; while :; do sleep 1; done"#);
        p.wait_json("trap set", Duration::from_secs(10), |v| v["ready"] == true)
            .expect("shell ready");
        p.terminate(Duration::from_millis(300));
        let status = p.child.try_wait().unwrap().expect("exited");
        assert_eq!(status.signal(), Some(libc::SIGKILL));
    }
}
