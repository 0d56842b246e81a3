//! `mesh-cni`: the CNI plugin the container runtime runs (see `plugin`),
//! and `mesh-cni install` / `uninstall`, which put it on a node (see
//! `install`).
use std::io::{Read, Write};

use mesh_cni::plugin::{self, CniError, Env};

/// The most the runtime may pass on stdin: a conflist entry with a
/// prevResult is a few KiB; a megabyte is plenty and bounds the read.
const MAX_STDIN: u64 = 1024 * 1024;

fn main() {
    // A runtime always sets CNI_COMMAND and passes no arguments (CNI spec,
    // "Parameters"); whenever it is set the binary is the plugin, exactly
    // as before install existed. Only a person or an init container runs
    // it with arguments and without CNI_COMMAND.
    let args: Vec<std::ffi::OsString> = std::env::args_os().skip(1).collect();
    if std::env::var_os("CNI_COMMAND").is_none() && !args.is_empty() {
        let args: Result<Vec<String>, _> = args.into_iter().map(|a| a.into_string()).collect();
        let code = match args {
            Ok(args) => mesh_cni::install::main(&args),
            Err(bad) => {
                eprintln!("mesh-cni: argument {bad:?} is not UTF-8");
                2
            }
        };
        std::process::exit(code);
    }
    // Whatever blocks (a runtime that never closes stdin, an agent socket
    // whose backlog is full), the plugin answers within this and exits:
    // a runtime waits on it with the sandbox's lock held.
    std::thread::spawn(|| {
        std::thread::sleep(plugin::HARD_DEADLINE);
        fail(
            &CniError {
                code: plugin::code::TRY_AGAIN_LATER,
                msg: format!(
                    "mesh-cni did not finish within {}s",
                    plugin::HARD_DEADLINE.as_secs()
                ),
                details: "the runtime's stdin or the agent's socket blocked; the kubelet retries the sandbox".into(),
            },
            "1.1.0",
        )
    });
    let mut stdin = Vec::new();
    if let Err(e) = std::io::stdin().take(MAX_STDIN + 1).read_to_end(&mut stdin) {
        fail(
            &CniError {
                code: plugin::code::DECODE,
                msg: format!("reading the network configuration from stdin: {e}"),
                details: String::new(),
            },
            "1.1.0",
        );
    }
    if stdin.len() as u64 > MAX_STDIN {
        fail(
            &CniError {
                code: plugin::code::DECODE,
                msg: format!("the network configuration on stdin is larger than {MAX_STDIN} bytes"),
                details:
                    "the runtime passes one plugin's entry of the conflist; check /etc/cni/net.d"
                        .into(),
            },
            "1.1.0",
        );
    }
    match plugin::run(&Env::from_process(), &stdin) {
        Ok(out) => {
            let mut stdout = std::io::stdout().lock();
            if stdout
                .write_all(&out)
                .and_then(|()| stdout.flush())
                .is_err()
            {
                std::process::exit(1);
            }
            std::process::exit(0);
        }
        Err(e) => fail(&e, &plugin::error_version(&stdin)),
    }
}

/// Prints the spec's error object on stdout (where the runtime reads it)
/// and a line on stderr (where people look), then exits non-zero.
fn fail(e: &CniError, version: &str) -> ! {
    let mut stdout = std::io::stdout().lock();
    let _ = writeln!(stdout, "{}", e.to_json(version));
    let _ = stdout.flush();
    eprintln!("mesh-cni: {}: {}", e.msg, e.details);
    std::process::exit(1);
}
