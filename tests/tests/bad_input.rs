//! Bad input to `mesh-agent node`: each is refused with one line that names
//! the problem and the fix, with no panic and nothing attached.
use std::{path::Path, process::Command};

use mesh_testbed::{Cluster, ClusterSpec};

struct Outcome {
    code: Option<i32>,
    stderr: String,
}

fn agent(c: &Cluster, config: &str, prefix: &[&str]) -> Outcome {
    let file = c.log_dir().join(format!("bad-{}.yaml", config.len()));
    std::fs::write(&file, config).unwrap();
    let mut cmd = if prefix.is_empty() {
        Command::new(&c.bins.agent)
    } else {
        let mut cmd = Command::new(prefix[0]);
        cmd.args(&prefix[1..]).arg(&c.bins.agent);
        cmd
    };
    let out = cmd.args(["node", "--config"]).arg(&file).output().unwrap();
    Outcome {
        code: out.status.code(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Refused, on one line, mentioning every one of `words`.
fn refused(o: &Outcome, words: &[&str]) {
    assert_eq!(o.code, Some(1), "{}", o.stderr);
    assert!(!o.stderr.contains("panicked"), "{}", o.stderr);
    let lines: Vec<&str> = o
        .stderr
        .lines()
        .filter(|l| l.starts_with("mesh-agent: error:"))
        .collect();
    assert_eq!(lines.len(), 1, "{}", o.stderr);
    for w in words {
        assert!(lines[0].contains(w), "`{w}` missing from: {}", lines[0]);
    }
}

fn nothing_attached(pin_dir: &Path) {
    assert!(
        !pin_dir.join("links").exists()
            || std::fs::read_dir(pin_dir.join("links"))
                .unwrap()
                .next()
                .is_none(),
        "links pinned at {}",
        pin_dir.display()
    );
}

#[test]
fn bad_input_is_refused_with_one_line_that_names_the_fix() {
    mesh_testbed::require_root!();
    let c = Cluster::start(ClusterSpec::new(&[&["a"]]).without_agents()).unwrap();
    let good = c.config_text(0);
    let pin_dir = c.nodes[0].pin_dir.clone();
    let plain_dir = c.log_dir().to_str().unwrap().to_owned();
    let cgroup = c.nodes[0].cgroup.to_str().unwrap().to_owned();

    // The good file passes --check-config and changes nothing.
    let file = c.log_dir().join("good.yaml");
    std::fs::write(&file, &good).unwrap();
    mesh_testbed::sys::run(
        Command::new(&c.bins.agent)
            .args(["node", "--check-config", "--config"])
            .arg(&file),
    )
    .unwrap();
    nothing_attached(&pin_dir);

    let o = agent(
        &c,
        &good.replace(
            &format!("cgroupRoot: {cgroup}"),
            &format!("cgroupRoot: {plain_dir}"),
        ),
        &[],
    );
    refused(&o, &["cgroupRoot", "cgroup-v2"]);
    let o = agent(
        &c,
        &good.replace(
            &format!("cgroupRoot: {cgroup}"),
            "cgroupRoot: /nonexistent/cgroup",
        ),
        &[],
    );
    refused(&o, &["/nonexistent/cgroup", "does not exist"]);
    let o = agent(
        &c,
        &good.replace("bpffsRoot: /sys/fs/bpf", &format!("bpffsRoot: {plain_dir}")),
        &[],
    );
    refused(&o, &["not a BPF filesystem", "mount -t bpf bpf"]);
    let netns = c.pod("a").netns_path();
    let o = agent(
        &c,
        &good.replace(netns.to_str().unwrap(), "/run/netns/no-such-pod"),
        &[],
    );
    refused(
        &o,
        &["pod default/a", "/run/netns/no-such-pod", "mesh.io/netns"],
    );
    let o = agent(&c, &good.replace(netns.to_str().unwrap(), &plain_dir), &[]);
    refused(&o, &["not a network namespace"]);
    let o = agent(&c, &format!("{good}\n  oops: [unclosed\n"), &[]);
    // file:line: what: message
    refused(&o, &[".yaml:", "did not find expected"]);
    assert!(
        o.stderr
            .split(".yaml:")
            .nth(1)
            .is_some_and(|rest| rest.starts_with(|ch: char| ch.is_ascii_digit())),
        "{}",
        o.stderr
    );
    // An unreadable CA credential is named before anything is attached.
    let token_line = good
        .lines()
        .find(|l| l.trim_start().starts_with("tokenFile:"))
        .unwrap()
        .to_owned();
    let o = agent(
        &c,
        &good.replace(&token_line, "  tokenFile: /nonexistent/token"),
        &[],
    );
    refused(&o, &["AgentConfig.ca.tokenFile", "/nonexistent/token"]);
    nothing_attached(&pin_dir);
    // A bad policy names the policy and the field.
    let o = agent(
        &c,
        &format!(
            "{good}---\nkind: AuthorizationPolicy\nmetadata: {{name: p, namespace: default}}\nspec:\n  rules:\n  - to:\n    - operation: {{ports: [\"http\"]}}\n"
        ),
        &[],
    );
    refused(
        &o,
        &[
            "AuthorizationPolicy default/p",
            "spec.rules[0].to[0].operation.ports",
            "`http`",
        ],
    );
    let o = agent(&c, &good.replace("nodeName: ", "nodeNmae: "), &[]);
    refused(&o, &["nodeNmae"]);
    // Without privileges (nobody, no capabilities).
    let o = agent(
        &c,
        &good,
        &[
            "setpriv",
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--",
        ],
    );
    refused(&o, &["missing privileges", "CAP_BPF"]);
    nothing_attached(&pin_dir);
}
