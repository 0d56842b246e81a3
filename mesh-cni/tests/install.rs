//! `mesh-cni install` / `uninstall` as the chart's containers run them:
//! the real binary against a node's directories (here temporary ones), and
//! the installed copy then run as the runtime runs a plugin. No root needed.
use std::{
    fs,
    io::Write,
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
    time::{Duration, Instant},
};

use serde_json::Value;

const EXE: &str = env!("CARGO_BIN_EXE_mesh-cni");

/// calico-node's conflist.
const CALICO: &str = r#"{
  "name": "k8s-pod-network",
  "cniVersion": "0.3.1",
  "plugins": [
    {
      "type": "calico",
      "datastore_type": "kubernetes",
      "nodename": "node-1",
      "ipam": {"type": "calico-ipam"},
      "policy": {"type": "k8s"},
      "kubernetes": {"kubeconfig": "/etc/cni/net.d/calico-kubeconfig"}
    },
    {"type": "portmap", "snat": true, "capabilities": {"portMappings": true}}
  ]
}
"#;

const PREV: &str = r#"{"cniVersion":"0.3.1","interfaces":[{"name":"eth0","sandbox":"/var/run/netns/x"}],"ips":[{"version":"4","address":"10.244.0.20/32"}],"dns":{}}"#;

struct Node {
    _tmp: tempfile::TempDir,
    bin: PathBuf,
    conf: PathBuf,
    socket: PathBuf,
}

impl Node {
    fn new() -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let bin = tmp.path().join("opt/cni/bin");
        let conf = tmp.path().join("etc/cni/net.d");
        fs::create_dir_all(&bin).unwrap();
        fs::create_dir_all(&conf).unwrap();
        // The network plugin's binary, which tells install that this is
        // the runtime's plugin dir.
        fs::write(bin.join("calico"), "#!/bin/sh\nexit 1\n").unwrap();
        fs::write(conf.join("calico-kubeconfig"), "apiVersion: v1\n").unwrap();
        let socket = tmp.path().join("run/mesh/cni.sock");
        Self {
            _tmp: tmp,
            bin,
            conf,
            socket,
        }
    }

    fn dirs(&self) -> Vec<String> {
        vec![
            "--cni-bin-dir".into(),
            self.bin.display().to_string(),
            format!("--cni-conf-dir={}", self.conf.display()),
        ]
    }

    fn install_args(&self) -> Vec<String> {
        let mut args = vec!["install".to_owned()];
        args.extend(self.dirs());
        args.extend([
            "--agent-socket".into(),
            self.socket.display().to_string(),
            "--exclude-namespaces".into(),
            "kube-system,mesh-system".into(),
            "--timeout".into(),
            "3s".into(),
        ]);
        args
    }

    fn conflist(&self) -> PathBuf {
        self.conf.join("10-calico.conflist")
    }

    fn plugins(&self) -> Vec<Value> {
        let text = fs::read_to_string(self.conflist()).unwrap();
        let v: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"));
        v["plugins"].as_array().unwrap().clone()
    }

    fn mesh_entries(&self) -> Vec<Value> {
        self.plugins()
            .into_iter()
            .filter(|p| p["type"] == "mesh-cni")
            .collect()
    }
}

/// The binary run by a person or a container: no CNI_COMMAND.
fn run(args: &[String]) -> Output {
    Command::new(EXE)
        .args(args)
        .env_remove("CNI_COMMAND")
        .output()
        .unwrap()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// The installed copy as the runtime runs it: the list's name and version
/// injected into the plugin's entry, the previous plugins' result added.
fn as_runtime(plugin: &Path, command: &str, entry: &Value, namespace: &str) -> Output {
    let mut conf = entry.clone();
    conf["cniVersion"] = "0.3.1".into();
    conf["name"] = "k8s-pod-network".into();
    conf["prevResult"] = serde_json::from_str(PREV).unwrap();
    let mut child = Command::new(plugin)
        .env("CNI_COMMAND", command)
        .env("CNI_CONTAINERID", "sandbox-1")
        .env("CNI_NETNS", "/var/run/netns/x")
        .env("CNI_IFNAME", "eth0")
        .env(
            "CNI_ARGS",
            format!("IgnoreUnknown=1;K8S_POD_NAMESPACE={namespace};K8S_POD_NAME=web-0"),
        )
        .env("CNI_PATH", plugin.parent().unwrap())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(conf.to_string().as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

#[test]
fn install_puts_a_working_plugin_and_its_entry_on_the_node_and_uninstall_takes_them_off() {
    let node = Node::new();
    fs::write(node.conflist(), CALICO).unwrap();
    fs::set_permissions(node.conflist(), fs::Permissions::from_mode(0o644)).unwrap();

    let out = run(&node.install_args());
    assert!(out.status.success(), "{}", stderr(&out));
    let installed = node.bin.join("mesh-cni");
    assert_eq!(fs::read(&installed).unwrap(), fs::read(EXE).unwrap());
    let mode = fs::metadata(&installed).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o755);
    let kinds: Vec<Value> = node.plugins().iter().map(|p| p["type"].clone()).collect();
    assert_eq!(kinds, ["calico", "portmap", "mesh-cni"]);
    let entry = node.mesh_entries().remove(0);
    assert_eq!(entry["agentSocket"], node.socket.display().to_string());
    assert_eq!(
        entry["excludeNamespaces"],
        serde_json::json!(["kube-system", "mesh-system"])
    );
    assert_eq!(entry["timeout"], "3s");
    assert_eq!(
        fs::metadata(node.conflist()).unwrap().permissions().mode() & 0o777,
        0o644
    );

    // The installed copy is the plugin: VERSION, and ADD with the entry
    // install wrote.
    let out = as_runtime(&installed, "VERSION", &entry, "shop");
    assert!(out.status.success(), "{}", stderr(&out));
    let version: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(
        version["supportedVersions"]
            .as_array()
            .unwrap()
            .contains(&"0.3.1".into()),
        "{version}"
    );
    // An excluded namespace (from --exclude-namespaces) passes through.
    let out = as_runtime(&installed, "ADD", &entry, "mesh-system");
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        serde_json::from_slice::<Value>(&out.stdout).unwrap(),
        serde_json::from_str::<Value>(PREV).unwrap()
    );
    // Any other asks the agent at --agent-socket; none runs here, so ADD
    // fails closed naming that socket.
    let out = as_runtime(&installed, "ADD", &entry, "shop");
    assert!(!out.status.success());
    let err: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(err["code"], 11);
    assert!(
        err["msg"]
            .as_str()
            .unwrap()
            .contains(&node.socket.display().to_string()),
        "{err}"
    );

    // Again: nothing to change, nothing written.
    let before = fs::metadata(node.conflist()).unwrap().modified().unwrap();
    let text = fs::read_to_string(node.conflist()).unwrap();
    let out = run(&node.install_args());
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("already has the entry"),
        "{}",
        stderr(&out)
    );
    assert_eq!(fs::read_to_string(node.conflist()).unwrap(), text);
    assert_eq!(
        fs::metadata(node.conflist()).unwrap().modified().unwrap(),
        before
    );

    // Other settings update the entry in place.
    let mut args = node.install_args();
    let at = args.iter().position(|a| a == "3s").unwrap();
    args[at] = "7s".into();
    let out = run(&args);
    assert!(out.status.success(), "{}", stderr(&out));
    let entries = node.mesh_entries();
    assert_eq!(entries.len(), 1);
    assert_eq!(entries[0]["timeout"], "7s");

    let mut args = vec!["uninstall".to_owned()];
    args.extend(node.dirs());
    let out = run(&args);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(!installed.exists());
    assert!(node.mesh_entries().is_empty());
    assert_eq!(
        serde_json::from_str::<Value>(&fs::read_to_string(node.conflist()).unwrap()).unwrap(),
        serde_json::from_str::<Value>(CALICO).unwrap()
    );
}

#[test]
fn with_cni_command_set_the_binary_is_the_plugin_whatever_its_arguments() {
    let out = Command::new(EXE)
        .args(["install", "--cni-bin-dir", "/nonexistent"])
        .env("CNI_COMMAND", "VERSION")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["cniVersion"], "1.1.0");
    assert!(!Path::new("/nonexistent/mesh-cni").exists());
}

#[test]
fn install_fails_until_the_network_plugin_has_written_its_config() {
    let node = Node::new();
    let out = run(&node.install_args());
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(
        err.contains("no CNI network configuration")
            && err.contains(&node.conf.display().to_string()),
        "{err}"
    );
    // A broken file is named, and left as it was.
    fs::write(node.conflist(), &CALICO[..40]).unwrap();
    let out = run(&node.install_args());
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(
        err.contains("10-calico.conflist") && err.contains("not a JSON object"),
        "{err}"
    );
    assert_eq!(fs::read_to_string(node.conflist()).unwrap(), &CALICO[..40]);
    // Bad arguments: usage, exit 2.
    let out = run(&["install".into(), "--timeout".into(), "forever".into()]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("--timeout \"forever\""),
        "{}",
        stderr(&out)
    );
}

/// Kills the watcher when the test ends, however it ends.
struct Watcher(std::process::Child);

impl Drop for Watcher {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn watch_puts_the_entry_back_after_the_network_plugin_rewrites_its_file_until_uninstall() {
    let node = Node::new();
    let mut args = node.install_args();
    args.extend(["--watch".into(), "--poll-interval".into(), "1s".into()]);
    let _watcher = Watcher(
        Command::new(EXE)
            .args(&args)
            .env_remove("CNI_COMMAND")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    // Started before the network plugin wrote its config: waits for it.
    std::thread::sleep(Duration::from_millis(300));
    fs::write(node.conflist(), CALICO).unwrap();
    wait_for("the entry", || {
        fs::read_to_string(node.conflist()).is_ok_and(|t| t.contains("mesh-cni"))
    });
    // calico-node restarts and writes its file again.
    fs::write(node.conflist(), CALICO).unwrap();
    wait_for("the entry to be put back", || {
        fs::read_to_string(node.conflist()).is_ok_and(|t| t.contains("mesh-cni"))
    });
    assert_eq!(node.mesh_entries().len(), 1);

    let mut uninstall = vec!["uninstall".to_owned()];
    uninstall.extend(node.dirs());
    let out = run(&uninstall);
    assert!(out.status.success(), "{}", stderr(&out));
    // Past two polls, the watcher has not put it back.
    std::thread::sleep(Duration::from_millis(2500));
    assert!(node.mesh_entries().is_empty());
    assert!(!node.bin.join("mesh-cni").exists());
}
