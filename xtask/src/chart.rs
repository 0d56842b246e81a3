//! Checks of charts/mesh, run by `cargo xtask test` (and so CI): the real
//! helm lints and renders it, kubernetes-validate checks every manifest
//! against the Kubernetes schemas, the agent binary validates the config
//! and flags the chart gives it, the CNI installer runs with the args its
//! containers get, and the CRDs must equal what the kube-derive types
//! generate (the agent's policy kinds, the CA's Gateway API kinds). The
//! waypoint controller's objects, RBAC and flags are checked against the
//! values.
use std::{
    path::Path,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, bail, ensure};
use serde::Deserialize;
use serde_yaml::Value;

use crate::{setup, workspace};

/// Every optional feature on.
const ALL_ON: &[&str] = &[
    "serviceMonitor.enabled=true",
    "grafanaDashboard.enabled=true",
    "agent.privileged=true",
    "agent.splice=true",
    "crds.install=true",
    "ca.replicas=3",
    "cni.enabled=true",
    "gatewayAPI.installCRDs=true",
    "meshAPI.installCRDs=true",
    "waypoint.enabled=true",
    "waypoint.otlpEndpoint=http://otel.observability:4318",
];

fn helm_output(args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new(setup::helm())
        .args(args)
        .current_dir(workspace())
        .output()
        .context("running helm (cargo xtask setup installs it)")?;
    if !out.status.success() {
        bail!(
            "helm {}: {}{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8(out.stdout)?)
}

fn render(sets: &[&str]) -> anyhow::Result<Vec<Value>> {
    let mut args = vec![
        "template",
        "mesh",
        "charts/mesh",
        "--namespace",
        "mesh-system",
    ];
    for s in sets {
        args.extend(["--set", s]);
    }
    let text = helm_output(&args)?;
    let mut docs = Vec::new();
    for doc in serde_yaml::Deserializer::from_str(&text) {
        let v = Value::deserialize(doc)?;
        if !v.is_null() {
            docs.push(v);
        }
    }
    Ok(docs)
}

fn find<'a>(docs: &'a [Value], kind: &str, name: &str) -> anyhow::Result<&'a Value> {
    docs.iter()
        .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
        .with_context(|| format!("the chart renders no {kind} {name}"))
}

fn strings(v: &Value) -> Vec<String> {
    v.as_sequence()
        .map(|s| {
            s.iter()
                .filter_map(|x| x.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// Runs `mesh-agent` with the rendered container args, the rendered config
/// file in place of the mounted one, and `extra` flags.
/// A workload the chart renders and the config file its container mounts.
struct Mounted<'a> {
    workload_kind: &'a str,
    workload: &'a str,
    config_map: &'a str,
    key: &'a str,
    mount: &'a str,
}

fn agent_accepts(
    docs: &[Value],
    m: &Mounted<'_>,
    extra: &[&str],
    dir: &Path,
) -> anyhow::Result<()> {
    let Mounted {
        workload_kind,
        workload,
        config_map,
        key,
        mount,
    } = *m;
    let w = find(docs, workload_kind, workload)?;
    let container = &w["spec"]["template"]["spec"]["containers"][0];
    let config = find(docs, "ConfigMap", config_map)?["data"][key]
        .as_str()
        .with_context(|| format!("ConfigMap {config_map} has no {key}"))?;
    let file = dir.join(format!("{config_map}-{key}"));
    std::fs::write(&file, config)?;
    let args: Vec<String> = strings(&container["args"])
        .into_iter()
        .map(|a| {
            if a == mount {
                file.display().to_string()
            } else {
                // The downward API's node, pod and namespace names.
                a.replace("$(NODE_NAME)", "node-1")
                    .replace("$(POD_NAME)", "mesh-ca-0")
                    .replace("$(POD_NAMESPACE)", "mesh-system")
            }
        })
        .collect();
    ensure!(
        args.iter().any(|a| *a == file.display().to_string()),
        "{workload_kind} {workload}: its args {args:?} do not name the mounted config {mount}"
    );
    let agent = workspace().join("target/debug/mesh-agent");
    let out = Command::new(&agent).args(&args).args(extra).output()?;
    if !out.status.success() {
        bail!(
            "{workload_kind} {workload}: `mesh-agent {} {}` refused the chart's config:\n{}{}",
            args.join(" "),
            extra.join(" "),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    println!(
        "chart: {workload_kind} {workload}: {}",
        String::from_utf8_lossy(&out.stdout).trim()
    );
    Ok(())
}

/// What the mesh-cni containers must carry for a set of values.
struct CniWant<'a> {
    bin_dir: &'a str,
    conf_dir: &'a str,
    socket: &'a str,
    /// The values' list with the release's namespace added.
    excluded: &'a str,
    timeout: &'a str,
    poll: &'a str,
}

fn named<'a>(list: &'a Value, name: &str) -> Option<&'a Value> {
    list.as_sequence()?.iter().find(|c| c["name"] == name)
}

/// A node's CNI dirs as the network plugin left them: Calico's conflist
/// and binary.
fn seed_node(dir: &Path) -> anyhow::Result<(std::path::PathBuf, std::path::PathBuf)> {
    let _ = std::fs::remove_dir_all(dir);
    let (bin, conf) = (dir.join("bin"), dir.join("net.d"));
    std::fs::create_dir_all(&bin)?;
    std::fs::create_dir_all(&conf)?;
    std::fs::write(bin.join("calico"), "#!/bin/sh\nexit 1\n")?;
    std::fs::write(
        conf.join("10-calico.conflist"),
        r#"{"name":"k8s-pod-network","cniVersion":"0.3.1","plugins":[{"type":"calico","ipam":{"type":"calico-ipam"}},{"type":"portmap","capabilities":{"portMappings":true}}]}"#,
    )?;
    Ok((bin, conf))
}

/// The DaemonSet's mesh-cni init and watch containers against the values,
/// then the real `mesh-cni` run with the init container's args on a
/// seeded node (the mounts replaced by temporary dirs): the entry it
/// writes must say what the values say, and the watch container's args
/// must keep it running.
fn cni_installed(docs: &[Value], want: &CniWant<'_>, dir: &Path) -> anyhow::Result<()> {
    let pod = &find(docs, "DaemonSet", "mesh-agent")?["spec"]["template"]["spec"];
    let init = named(&pod["initContainers"], "install-cni")
        .context("cni.enabled: the DaemonSet has no install-cni init container")?;
    let watch = named(&pod["containers"], "watch-cni")
        .context("cni.enabled: the DaemonSet has no watch-cni container")?;
    ensure!(
        pod["containers"][0]["name"] == "agent",
        "the agent must stay the first container (kubectl exec without -c)"
    );
    let args = strings(&init["args"]);
    let arg = |flag: &str| -> anyhow::Result<String> {
        args.iter()
            .position(|a| a == flag)
            .and_then(|i| args.get(i + 1))
            .cloned()
            .with_context(|| format!("install-cni: no {flag} in its args {args:?}"))
    };
    ensure!(
        args.first().map(String::as_str) == Some("install"),
        "install-cni runs {args:?}, not `mesh-cni install`"
    );
    ensure!(
        strings(&init["command"]) == ["/usr/local/bin/mesh-cni"],
        "install-cni: command {:?} is not the image's /usr/local/bin/mesh-cni",
        init["command"]
    );
    for (flag, value) in [
        ("--agent-socket", want.socket),
        ("--exclude-namespaces", want.excluded),
        ("--timeout", want.timeout),
    ] {
        let got = arg(flag)?;
        ensure!(
            got == value,
            "install-cni: {flag} {got:?}, the values say {value:?}"
        );
    }
    // The dirs it is given are mounts of the values' host paths.
    let mut mounted = Vec::new();
    for (flag, host) in [
        ("--cni-bin-dir", want.bin_dir),
        ("--cni-conf-dir", want.conf_dir),
    ] {
        let path = arg(flag)?;
        let mount = init["volumeMounts"]
            .as_sequence()
            .and_then(|m| m.iter().find(|m| m["mountPath"] == path.as_str()))
            .with_context(|| format!("install-cni: {flag} {path} is not a mount"))?;
        let volume = named(&pod["volumes"], mount["name"].as_str().unwrap_or_default())
            .with_context(|| format!("install-cni: no volume {:?}", mount["name"]))?;
        ensure!(
            volume["hostPath"]["path"] == host,
            "install-cni: {flag} {path} mounts {:?}, the values say {host}",
            volume["hostPath"]
        );
        mounted.push(path);
    }
    let mut watch_args = args.clone();
    watch_args.extend(["--watch".into(), "--poll-interval".into(), want.poll.into()]);
    ensure!(
        strings(&watch["args"]) == watch_args && watch["volumeMounts"] == init["volumeMounts"],
        "watch-cni must run install-cni's args with --watch --poll-interval {} and its mounts: {:?}",
        want.poll,
        watch["args"]
    );

    let (bin, conf) = seed_node(&dir.join("cni-node"))?;
    let local = |a: &String| -> String {
        if *a == mounted[0] {
            bin.display().to_string()
        } else if *a == mounted[1] {
            conf.display().to_string()
        } else {
            a.clone()
        }
    };
    let exe = workspace().join("target/debug/mesh-cni");
    let out = Command::new(&exe)
        .args(args.iter().map(local))
        .env_remove("CNI_COMMAND")
        .output()
        .with_context(|| format!("running {}", exe.display()))?;
    ensure!(
        out.status.success(),
        "install-cni: `mesh-cni {}` failed:\n{}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    let list: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(conf.join("10-calico.conflist"))?)?;
    let entry = list["plugins"]
        .as_array()
        .and_then(|p| p.last())
        .context("the conflist lost its plugins")?;
    let expected = serde_json::json!({
        "type": "mesh-cni",
        "agentSocket": want.socket,
        "excludeNamespaces": want.excluded.split(',').collect::<Vec<_>>(),
        "timeout": want.timeout,
    });
    ensure!(
        *entry == expected,
        "mesh-cni install wrote {entry}, the values say {expected}"
    );
    ensure!(
        std::fs::read(bin.join("mesh-cni"))? == std::fs::read(&exe)?,
        "mesh-cni install did not copy itself into the plugin dir"
    );
    // --watch never exits on its own; refused args exit at once.
    let mut child = Command::new(&exe)
        .args(watch_args.iter().map(local))
        .env_remove("CNI_COMMAND")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()?;
    let deadline = Instant::now() + Duration::from_millis(1500);
    while Instant::now() < deadline {
        if let Some(status) = child.try_wait()? {
            let out = child.wait_with_output()?;
            bail!(
                "watch-cni: `mesh-cni {}` exited ({status}):\n{}",
                watch_args.join(" "),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    child.kill()?;
    child.wait()?;
    println!("chart: install-cni and watch-cni carry the values; mesh-cni install wrote {entry}");
    Ok(())
}

pub fn check() -> anyhow::Result<usize> {
    let dir = workspace().join("target").join("chart-check");
    std::fs::create_dir_all(&dir)?;
    let mut checks = 0;
    let mut set_args = Vec::new();
    for s in ALL_ON {
        set_args.extend(["--set", *s]);
    }
    for (what, sets) in [("defaults", &[][..]), ("every feature on", &set_args[..])] {
        let mut args = vec!["lint", "--strict", "charts/mesh"];
        args.extend(sets);
        helm_output(&args).with_context(|| format!("helm lint ({what})"))?;
        println!("chart: helm lint --strict ({what}) ok");
        checks += 1;
    }
    for (what, sets) in [("defaults", &[][..]), ("all-on", ALL_ON)] {
        let docs = render(sets)?;
        let file = dir.join(format!("rendered-{what}.yaml"));
        let text: String = docs
            .iter()
            .map(|d| Ok(format!("---\n{}", serde_yaml::to_string(d)?)))
            .collect::<anyhow::Result<_>>()?;
        std::fs::write(&file, text)?;
        let out = Command::new(setup::kubernetes_validate())
            .args(["--strict", "--quiet"])
            .arg(&file)
            .output()
            .context("running kubernetes-validate (cargo xtask setup installs it)")?;
        let report = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        if !out.status.success() {
            bail!("kubernetes-validate --strict ({what}): {report}");
        }
        // Only the Prometheus Operator's kind and the Gateway API's have
        // no schema here.
        for line in report.lines().filter(|l| !l.trim().is_empty()) {
            ensure!(
                line.contains("kind ServiceMonitor") || line.contains("kind GatewayClass"),
                "kubernetes-validate ({what}): {line}"
            );
        }
        println!(
            "chart: {} manifests valid against the Kubernetes schemas ({what})",
            docs.len()
        );
        checks += 1;

        let agent = Mounted {
            workload_kind: "DaemonSet",
            workload: "mesh-agent",
            config_map: "mesh-agent",
            key: "agent.yaml",
            mount: "/etc/mesh/agent.yaml",
        };
        agent_accepts(&docs, &agent, &["--check-config", "--config-only"], &dir)?;
        let ca = Mounted {
            workload_kind: "Deployment",
            workload: "mesh-ca",
            config_map: "mesh-ca",
            key: "ca.yaml",
            mount: "/etc/mesh-ca/ca.yaml",
        };
        agent_accepts(&docs, &ca, &["--check-config"], &dir)?;
        checks += 2;

        // mesh's own mesh.io kinds are compared with their types by the
        // tests of the crates that declare them (for HTTPLocalRateLimitPolicy,
        // mesh-discovery's ratelimit::tests); here, that they render.
        let is_mesh_api = |d: &Value| d["spec"]["group"] == "mesh.io";
        let mesh_api: Vec<&Value> = docs
            .iter()
            .filter(|d| d["kind"] == "CustomResourceDefinition" && is_mesh_api(d))
            .collect();
        ensure!(
            mesh_api
                .iter()
                .any(|d| d["metadata"]["name"] == "httplocalratelimitpolicies.mesh.io"),
            "meshAPI.installCRDs renders no HTTPLocalRateLimitPolicy CRD: {mesh_api:?}"
        );
        ensure!(
            mesh_api
                .iter()
                .any(|d| d["metadata"]["name"] == "httpfaultinjections.mesh.io"),
            "meshAPI.installCRDs renders no HTTPFaultInjection CRD: {mesh_api:?}"
        );
        let rendered: Vec<&Value> = docs
            .iter()
            .filter(|d| d["kind"] == "CustomResourceDefinition" && !is_mesh_api(d))
            .collect();
        let mut expected = generated_crds(&["crd"])?;
        if sets.contains(&"gatewayAPI.installCRDs=true") {
            expected.extend(generated_crds(&["ca", "crd"])?);
        }
        ensure!(
            rendered.len() == expected.len()
                && rendered.iter().zip(&expected).all(|(a, b)| *a == b),
            "charts/mesh/templates/crds.yaml or gateway-api-crds.yaml differs from the CRDs \
             the Rust types generate; regenerate them: cargo xtask chart --write-crds"
        );
        println!(
            "chart: CRDs equal the kube-derive types' ({})",
            rendered.len()
        );
        checks += 1;
    }
    let without = render(&["crds.install=false", "meshAPI.installCRDs=false"])?;
    ensure!(
        !without
            .iter()
            .any(|d| d["kind"] == "CustomResourceDefinition"),
        "crds.install=false and meshAPI.installCRDs=false still render CRDs"
    );
    let bad = helm_output(&[
        "template",
        "mesh",
        "charts/mesh",
        "--set",
        "agent.flowSeriesLimt=5",
    ]);
    ensure!(
        bad.as_ref()
            .is_err_and(|e| e.to_string().contains("flowSeriesLimt")),
        "a misspelt value must fail with its name: {bad:?}"
    );
    println!(
        "chart: crds.install=false and meshAPI.installCRDs=false render no CRD; a misspelt value is refused by name"
    );
    checks += 2;

    let defaults = CniWant {
        bin_dir: "/opt/cni/bin",
        conf_dir: "/etc/cni/net.d",
        socket: "/var/run/mesh/cni.sock",
        excluded: "kube-system,mesh-system",
        timeout: "10s",
        poll: "5s",
    };
    cni_installed(&render(&[])?, &defaults, &dir)?;
    let custom = CniWant {
        bin_dir: "/home/kubernetes/bin",
        conf_dir: "/etc/kubernetes/cni/net.d",
        socket: "/run/mesh/agent-cni.sock",
        // The release's namespace listed already: not twice.
        excluded: "kube-system,mesh-system,calico-system",
        timeout: "2500ms",
        poll: "30s",
    };
    let docs = render(&[
        "cni.binDir=/home/kubernetes/bin",
        "cni.confDir=/etc/kubernetes/cni/net.d",
        "agent.cniSocket=/run/mesh/agent-cni.sock",
        "cni.excludeNamespaces={kube-system,mesh-system,calico-system}",
        "cni.timeout=2500ms",
        "cni.pollInterval=30s",
    ])?;
    cni_installed(&docs, &custom, &dir)?;
    let off = render(&["cni.enabled=false"])?;
    let pod = &find(&off, "DaemonSet", "mesh-agent")?["spec"]["template"]["spec"];
    let names = |key: &str| -> Vec<String> {
        pod[key]
            .as_sequence()
            .map(|l| {
                l.iter()
                    .filter_map(|c| c["name"].as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default()
    };
    ensure!(
        names("initContainers").is_empty()
            && names("containers") == ["agent"]
            && !names("volumes")
                .iter()
                .any(|v| v == "cni-bin" || v == "cni-conf"),
        "cni.enabled=false still renders the CNI installer: init {:?}, containers {:?}, volumes {:?}",
        names("initContainers"),
        names("containers"),
        names("volumes")
    );
    let no_socket = helm_output(&[
        "template",
        "mesh",
        "charts/mesh",
        "--set",
        "agent.cniSocket=",
    ]);
    ensure!(
        no_socket
            .as_ref()
            .is_err_and(|e| e.to_string().contains("agent.cniSocket")),
        "cni.enabled without agent.cniSocket must fail naming it: {no_socket:?}"
    );
    println!(
        "chart: cni.enabled=false renders no installer; cni.enabled without agent.cniSocket is refused"
    );
    checks += 4;
    checks += handover_checks()?;
    checks += waypoint_checks()?;
    checks += waypoint_config_checks(&dir)?;
    Ok(checks)
}

/// An upgrade hands each node over from the old agent pod to the new one
/// (README, "Upgrading"): the new pod surges beside the old one, so the
/// DaemonSet surges one node at a time with none unavailable, and no
/// container declares a port (in a hostNetwork pod every one is a hostPort,
/// which keeps a second agent pod off the node); both meet at the
/// hand-over directory, mounted from the host at the path the agent is
/// given; and the old pod is not killed before its drain deadline.
fn handover_checks() -> anyhow::Result<usize> {
    let mut checks = 0;
    for (sets, drain) in [
        (&[][..], 3600u64),
        (&["agent.handover.drainSeconds=90"][..], 90),
    ] {
        let docs = render(sets)?;
        let ds = find(&docs, "DaemonSet", "mesh-agent")?;
        let rolling = &ds["spec"]["updateStrategy"]["rollingUpdate"];
        ensure!(
            rolling["maxSurge"].as_u64() == Some(1)
                && rolling["maxUnavailable"].as_u64() == Some(0),
            "the agent DaemonSet must surge (maxSurge 1, maxUnavailable 0) so the new agent takes over beside the old one: {rolling:?}"
        );
        let pod = &ds["spec"]["template"]["spec"];
        ensure!(
            pod["hostNetwork"].as_bool() == Some(true),
            "the agent pod is not hostNetwork"
        );
        for list in ["containers", "initContainers"] {
            for c in pod[list].as_sequence().into_iter().flatten() {
                ensure!(
                    c["ports"].is_null(),
                    "{list} {:?} declares ports {:?}: in a hostNetwork pod they are hostPorts, and a second agent pod could not run on the node during an upgrade",
                    c["name"],
                    c["ports"]
                );
            }
        }
        let agent = &pod["containers"][0];
        let args = strings(&agent["args"]);
        let dir = flag_value(&args, "--handover-dir")
            .with_context(|| format!("the agent runs without --handover-dir: {args:?}"))?;
        let mount = agent["volumeMounts"]
            .as_sequence()
            .into_iter()
            .flatten()
            .find(|m| m["mountPath"].as_str() == Some(dir.as_str()))
            .with_context(|| {
                format!("--handover-dir {dir} is not a mount of the agent container")
            })?;
        let volume = pod["volumes"]
            .as_sequence()
            .into_iter()
            .flatten()
            .find(|v| v["name"] == mount["name"])
            .with_context(|| format!("no volume {:?}", mount["name"]))?;
        ensure!(
            volume["hostPath"]["path"].as_str() == Some(dir.as_str()),
            "--handover-dir {dir} must be the host's directory at the same path (hostPath), or the two agent pods of a node do not meet: {volume:?}"
        );
        let flag = flag_value(&args, "--handover-drain");
        ensure!(
            flag.as_deref() == Some(format!("{drain}s").as_str()),
            "--handover-drain is {flag:?}, the values say {drain}s"
        );
        let grace = pod["terminationGracePeriodSeconds"].as_u64().unwrap_or(30);
        ensure!(
            grace > drain,
            "terminationGracePeriodSeconds {grace} must exceed the hand-over drain ({drain} s), or the old agent is killed with connections open"
        );
        checks += 1;
    }
    println!(
        "chart: the agent DaemonSet surges one node at a time with no hostPorts, both agents of a node share the hostPath hand-over directory, and the old one outlives its drain"
    );
    Ok(checks)
}

/// The CRDs `mesh-agent <args>` prints, in order.
fn generated_crds(args: &[&str]) -> anyhow::Result<Vec<Value>> {
    let out = Command::new(workspace().join("target/debug/mesh-agent"))
        .args(args)
        .output()
        .context("run `cargo build` first")?;
    ensure!(
        out.status.success(),
        "mesh-agent {} failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    let mut crds = Vec::new();
    for doc in serde_yaml::Deserializer::from_slice(&out.stdout) {
        let v = Value::deserialize(doc)?;
        if !v.is_null() {
            crds.push(v);
        }
    }
    Ok(crds)
}

/// `flag`'s value in `args`.
fn flag_value(args: &[String], flag: &str) -> Option<String> {
    args.iter()
        .position(|a| a == flag)
        .and_then(|i| args.get(i + 1))
        .cloned()
}

/// The reader ClusterRole and ClusterRoleBinding of the release `mesh`
/// (`<release>-waypoint-reader`).
const READER: &str = "mesh-waypoint-reader";

/// The waypoint controller: the GatewayClass, exactly the RBAC the
/// controller and the route status controller use, the waypoints' reader role (exactly what discovery
/// watches, as the agents' role) and its binding without subjects, the
/// CA's flags carrying the values (the CA itself checks them in
/// `agent_accepts`), the agents' waypointClass, and nothing of it when
/// waypoint.enabled is false.
fn waypoint_checks() -> anyhow::Result<usize> {
    let docs = render(&[
        "waypoint.className=shop-waypoints",
        "waypoint.otlpEndpoint=http://otel:4318",
        "image.pullPolicy=Always",
        "rootNamespace=mesh-root",
    ])?;
    let class = find(&docs, "GatewayClass", "shop-waypoints")?;
    ensure!(
        class["spec"]["controllerName"] == "mesh.io/waypoint-controller",
        "GatewayClass shop-waypoints: controllerName {:?}",
        class["spec"]["controllerName"]
    );
    let hook = class["metadata"]["annotations"]["helm.sh/hook"].as_str();
    ensure!(
        hook == Some("post-install,post-upgrade"),
        "GatewayClass shop-waypoints must be applied after its CRD (a post-install hook): {hook:?}"
    );
    let ca = &find(&docs, "Deployment", "mesh-ca")?["spec"]["template"]["spec"]["containers"][0];
    let args = strings(&ca["args"]);
    ensure!(
        args.iter().any(|a| a == "--waypoint-controller"),
        "the CA runs without --waypoint-controller: {args:?}"
    );
    let image = find(&docs, "DaemonSet", "mesh-agent")?["spec"]["template"]["spec"]["containers"]
        [0]["image"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    for (flag, want) in [
        ("--waypoint-class", "shop-waypoints"),
        ("--waypoint-image", image.as_str()),
        ("--waypoint-image-pull-policy", "Always"),
        (
            "--ca-address-for-waypoints",
            "mesh-ca.mesh-system.svc:15012",
        ),
        ("--ca-server-name-for-waypoints", "mesh-ca.mesh-system.svc"),
        ("--waypoint-reader-binding", READER),
        ("--waypoint-otlp-endpoint", "http://otel:4318"),
        ("--leader-election-namespace", "$(POD_NAMESPACE)"),
        ("--leader-election-identity", "$(POD_NAME)"),
        // The policy status tells which policies may bind the class.
        ("--root-namespace", "mesh-root"),
    ] {
        let got = flag_value(&args, flag);
        ensure!(
            got.as_deref() == Some(want),
            "the CA's {flag} is {got:?}, the values say {want:?}"
        );
    }
    let env: Vec<(String, String)> = ca["env"]
        .as_sequence()
        .map(|e| {
            e.iter()
                .map(|v| {
                    (
                        v["name"].as_str().unwrap_or_default().to_owned(),
                        v["valueFrom"]["fieldRef"]["fieldPath"]
                            .as_str()
                            .unwrap_or_default()
                            .to_owned(),
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    for (name, path) in [
        ("POD_NAME", "metadata.name"),
        ("POD_NAMESPACE", "metadata.namespace"),
    ] {
        ensure!(
            env.iter().any(|(n, p)| n == name && p == path),
            "the CA's env has no {name} from {path}: {env:?}"
        );
    }
    let agent_config = find(&docs, "ConfigMap", "mesh-agent")?["data"]["agent.yaml"]
        .as_str()
        .unwrap_or_default();
    ensure!(
        agent_config.contains("waypointClass: shop-waypoints"),
        "the agents' config does not name waypoint.className: {agent_config}"
    );

    // The rules, exactly: what the controller reads, applies and patches.
    let rules = |kind: &str, name: &str| -> anyhow::Result<Vec<String>> {
        let rules = &find(&docs, kind, name)?["rules"];
        Ok(rules
            .as_sequence()
            .map(|r| {
                r.iter()
                    .map(|r| {
                        format!(
                            "{:?} {:?} {:?} {:?}",
                            strings(&r["apiGroups"]),
                            strings(&r["resources"]),
                            strings(&r["resourceNames"]),
                            strings(&r["verbs"])
                        )
                    })
                    .collect()
            })
            .unwrap_or_default())
    };
    let s = |v: &[&str]| format!("{:?}", v.iter().map(|x| x.to_string()).collect::<Vec<_>>());
    let rule = |g: &[&str], r: &[&str], n: &[&str], v: &[&str]| {
        format!("{} {} {} {}", s(g), s(r), s(n), s(v))
    };
    let g = ["gateway.networking.k8s.io"];
    let want_cluster = vec![
        rule(
            &g,
            &["gateways", "gatewayclasses"],
            &[],
            &["get", "list", "watch"],
        ),
        rule(
            &g,
            &["gateways/status", "gatewayclasses/status"],
            &[],
            &["patch"],
        ),
        rule(&g, &["gateways/finalizers"], &[], &["update"]),
        rule(
            &["apps"],
            &["deployments"],
            &[],
            &["get", "list", "watch", "create", "patch"],
        ),
        rule(
            &[""],
            &["services", "serviceaccounts", "configmaps"],
            &[],
            &["get", "create", "patch"],
        ),
        // The reader binding's subjects, by name, and naming the reader
        // role in it: never any other binding or role.
        rule(
            &["rbac.authorization.k8s.io"],
            &["clusterrolebindings"],
            &[READER],
            &["get", "update"],
        ),
        rule(
            &["rbac.authorization.k8s.io"],
            &["clusterroles"],
            &[READER],
            &["bind"],
        ),
    ];
    let got = rules("ClusterRole", "mesh-ca-waypoints")?;
    ensure!(
        got == want_cluster,
        "ClusterRole mesh-ca-waypoints: {got:#?}, the controller needs {want_cluster:#?}"
    );
    // The route status controller (mesh-ca/src/routes): lists and watches
    // the route kinds and Services, patches the routes' status only.
    let want_routes = vec![
        rule(
            &g,
            &["httproutes", "grpcroutes"],
            &[],
            &["get", "list", "watch"],
        ),
        rule(
            &g,
            &["httproutes/status", "grpcroutes/status"],
            &[],
            &["patch"],
        ),
        rule(&[""], &["services"], &[], &["get", "list", "watch"]),
    ];
    let got = rules("ClusterRole", "mesh-ca-routes")?;
    ensure!(
        got == want_routes,
        "ClusterRole mesh-ca-routes: {got:#?}, the route status controller needs {want_routes:#?}"
    );
    // The policy status controller (mesh-ca/src/policy_status): lists and
    // watches the policy kinds and their targets, patches the policies'
    // status only.
    let want_policy_status = vec![
        rule(
            &["mesh.io"],
            &["httplocalratelimitpolicies", "httpfaultinjections"],
            &[],
            &["get", "list", "watch"],
        ),
        rule(
            &["mesh.io"],
            &[
                "httplocalratelimitpolicies/status",
                "httpfaultinjections/status",
            ],
            &[],
            &["patch"],
        ),
        rule(
            &["security.istio.io"],
            &["authorizationpolicies", "requestauthentications"],
            &[],
            &["get", "list", "watch"],
        ),
        rule(
            &["security.istio.io"],
            &[
                "authorizationpolicies/status",
                "requestauthentications/status",
            ],
            &[],
            &["patch"],
        ),
        rule(
            &["networking.istio.io"],
            &["destinationrules"],
            &[],
            &["get", "list", "watch"],
        ),
        rule(
            &["networking.istio.io"],
            &["destinationrules/status"],
            &[],
            &["patch"],
        ),
        rule(
            &[""],
            &["services", "namespaces"],
            &[],
            &["get", "list", "watch"],
        ),
        rule(&g, &["gateways"], &[], &["get", "list", "watch"]),
    ];
    let got = rules("ClusterRole", "mesh-ca-policy-status")?;
    ensure!(
        got == want_policy_status,
        "ClusterRole mesh-ca-policy-status: {got:#?}, the policy status controller needs {want_policy_status:#?}"
    );
    let c = ["coordination.k8s.io"];
    let want_lease = vec![
        rule(
            &c,
            &["leases"],
            &["mesh-waypoint-controller"],
            &["get", "update"],
        ),
        rule(&c, &["leases"], &[], &["create"]),
    ];
    // What mesh-discovery's Kubernetes source lists and watches
    // (mesh-discovery/src/kubernetes.rs), read-only: the agents' and the
    // waypoints' discovery alike.
    let discovery_reads = vec![
        rule(
            &[""],
            &["pods", "services", "namespaces"],
            &[],
            &["get", "list", "watch"],
        ),
        rule(
            &["discovery.k8s.io"],
            &["endpointslices"],
            &[],
            &["get", "list", "watch"],
        ),
        // RequestAuthentications are Istio's CRD too; discovery watches
        // them for the waypoints (mesh-policy/src/request_authn.rs).
        rule(
            &["security.istio.io"],
            &[
                "authorizationpolicies",
                "peerauthentications",
                "requestauthentications",
            ],
            &[],
            &["get", "list", "watch"],
        ),
        // Discovery watches routes too: a kind it may not list would keep
        // agents and waypoints from ever syncing.
        rule(
            &g,
            &["gateways", "httproutes", "grpcroutes"],
            &[],
            &["get", "list", "watch"],
        ),
        // HTTPLocalRateLimitPolicies (mesh-discovery/src/ratelimit.rs) and
        // HTTPFaultInjections (mesh-route/src/fault.rs).
        rule(
            &["mesh.io"],
            &["httplocalratelimitpolicies", "httpfaultinjections"],
            &[],
            &["get", "list", "watch"],
        ),
        // Istio's DestinationRules (mesh-discovery/src/destination_rule.rs).
        rule(
            &["networking.istio.io"],
            &["destinationrules"],
            &[],
            &["get", "list", "watch"],
        ),
    ];
    for role in [READER, "mesh-agent"] {
        let got = rules("ClusterRole", role)?;
        ensure!(
            got == discovery_reads,
            "ClusterRole {role}: {got:#?}, discovery reads exactly {discovery_reads:#?}"
        );
    }
    let reader = find(&docs, "ClusterRoleBinding", READER)?;
    ensure!(
        reader["roleRef"]
            == serde_yaml::to_value(serde_json::json!({
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "ClusterRole",
                "name": READER,
            }))?,
        "ClusterRoleBinding {READER} must bind the ClusterRole {READER}: {:?}",
        reader["roleRef"]
    );
    // The controller keeps the subjects; rendered ones would be reset by
    // every upgrade (and would grant the reads to whatever they name).
    ensure!(
        reader.get("subjects").is_none(),
        "ClusterRoleBinding {READER} must render no subjects (the CA's waypoint controller keeps them): {:?}",
        reader["subjects"]
    );
    let got = rules("Role", "mesh-ca-leader-election")?;
    ensure!(
        got == want_lease,
        "Role mesh-ca-leader-election: {got:#?}, the election needs {want_lease:#?}"
    );
    let role = find(&docs, "Role", "mesh-ca-leader-election")?;
    ensure!(
        role["metadata"]["namespace"] == "mesh-system",
        "the Lease role must be in the CA's namespace only"
    );
    for (kind, name) in [
        ("ClusterRoleBinding", "mesh-ca-waypoints"),
        ("ClusterRoleBinding", "mesh-ca-routes"),
        ("ClusterRoleBinding", "mesh-ca-policy-status"),
        ("RoleBinding", "mesh-ca-leader-election"),
    ] {
        let b = find(&docs, kind, name)?;
        ensure!(
            b["subjects"][0]["name"] == "mesh-ca" && b["roleRef"]["name"] == name,
            "{kind} {name} must bind {name} to the CA's ServiceAccount: {b:?}"
        );
    }
    println!(
        "chart: waypoint.enabled renders the GatewayClass, the waypoint, route status and policy status controllers' RBAC, the waypoints' reader role and binding, and the CA's flags"
    );

    // Another release's objects and flag follow its name, so two
    // releases never share (or edit) one binding.
    let text = helm_output(&[
        "template",
        "edge",
        "charts/mesh",
        "--namespace",
        "edge-system",
    ])?;
    let mut edge = Vec::new();
    for doc in serde_yaml::Deserializer::from_str(&text) {
        edge.push(Value::deserialize(doc)?);
    }
    let edge_args = strings(
        &find(&edge, "Deployment", "mesh-ca")?["spec"]["template"]["spec"]["containers"][0]["args"],
    );
    let named = flag_value(&edge_args, "--waypoint-reader-binding");
    ensure!(
        named.as_deref() == Some("edge-waypoint-reader"),
        "release edge: the CA's --waypoint-reader-binding is {named:?}, not edge-waypoint-reader"
    );
    find(&edge, "ClusterRole", "edge-waypoint-reader")?;
    find(&edge, "ClusterRoleBinding", "edge-waypoint-reader")?;

    let off = render(&["waypoint.enabled=false"])?;
    let leftover: Vec<String> = off
        .iter()
        .filter(|d| {
            d["kind"] == "GatewayClass"
                || d["metadata"]["name"] == "mesh-ca-waypoints"
                || d["metadata"]["name"] == "mesh-ca-routes"
                || d["metadata"]["name"] == "mesh-ca-policy-status"
                || d["metadata"]["name"] == READER
                || d["metadata"]["name"] == "mesh-ca-leader-election"
        })
        .map(|d| format!("{:?} {:?}", d["kind"], d["metadata"]["name"]))
        .collect();
    let args = strings(
        &find(&off, "Deployment", "mesh-ca")?["spec"]["template"]["spec"]["containers"][0]["args"],
    );
    ensure!(
        leftover.is_empty() && !args.iter().any(|a| a.starts_with("--waypoint")),
        "waypoint.enabled=false still renders {leftover:?} / CA args {args:?}"
    );
    ensure!(
        !render(&[])?
            .iter()
            .any(|d| d["kind"] == "CustomResourceDefinition"
                && d["spec"]["group"] == "gateway.networking.k8s.io"),
        "gatewayAPI.installCRDs defaults to false, yet Gateway API CRDs are rendered"
    );
    let bad = helm_output(&[
        "template",
        "mesh",
        "charts/mesh",
        "--set",
        "waypoint.className=Shop_Waypoints",
    ]);
    ensure!(
        bad.as_ref()
            .is_err_and(|e| e.to_string().contains("className")),
        "an invalid waypoint.className must fail naming it: {bad:?}"
    );
    println!(
        "chart: waypoint.enabled=false renders none of it; no Gateway API CRDs by default; a bad className is refused"
    );
    Ok(2)
}

/// Renders the chart with `values` (a values file's text) written to
/// `dir`.
fn render_values(dir: &Path, name: &str, values: &str) -> anyhow::Result<Vec<Value>> {
    let file = dir.join(name);
    std::fs::write(&file, values)?;
    let file = file.display().to_string();
    let text = helm_output(&[
        "template",
        "mesh",
        "charts/mesh",
        "--namespace",
        "mesh-system",
        "-f",
        &file,
    ])?;
    let mut docs = Vec::new();
    for doc in serde_yaml::Deserializer::from_str(&text) {
        let v = Value::deserialize(doc)?;
        if !v.is_null() {
            docs.push(v);
        }
    }
    Ok(docs)
}

/// The values of waypoint.extensionProviders and waypoint.jwks, with the
/// CA bundle `ca_pem` and the first provider on `port`.
fn waypoint_config_values(ca_pem: &str, port: u16) -> String {
    let bundle: String = ca_pem.lines().map(|l| format!("      {l}\n")).collect();
    format!(
        "waypoint:\n  extensionProviders:\n    - name: ext-authz\n      envoyExtAuthzGrpc:\n        \
         service: ext-authz.auth.svc.cluster.local\n        port: {port}\n        timeout: 0.5s\n    \
         - name: opa\n      envoyExtAuthzGrpc:\n        service: opa.opa.svc.cluster.local\n        \
         port: 9191\n        failOpen: true\n  jwks:\n    refresh: 5m\n    caBundle: |\n{bundle}"
    )
}

/// waypoint.extensionProviders and waypoint.jwks: the chart writes them
/// into mesh-waypoint-config, mounts it into the CA where its flags say,
/// the CA's `--check-config` accepts what it renders, a change of the
/// providers changes the CA's pod template (so the CA restarts and rolls
/// the waypoints), lint stays clean, and none of it is rendered by
/// default.
fn waypoint_config_checks(dir: &Path) -> anyhow::Result<usize> {
    let agent = workspace().join("target/debug/mesh-agent");
    // A real certificate for the bundle: the CA's own root generator.
    let (cert, key) = (dir.join("jwks-ca.pem"), dir.join("jwks-ca.key"));
    for f in [&cert, &key] {
        if f.exists() {
            std::fs::remove_file(f)?;
        }
    }
    let out = Command::new(&agent)
        .args(["ca", "init", "--trust-domain", "issuer.example", "--cert"])
        .arg(&cert)
        .arg("--key")
        .arg(&key)
        .output()
        .context("run `cargo build` first")?;
    ensure!(
        out.status.success(),
        "mesh-agent ca init: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let ca_pem = std::fs::read_to_string(&cert)?;
    let values = waypoint_config_values(&ca_pem, 9000);
    let values_file = dir.join("waypoint-config-values.yaml");
    std::fs::write(&values_file, &values)?;
    helm_output(&[
        "lint",
        "--strict",
        "charts/mesh",
        "-f",
        &values_file.display().to_string(),
    ])
    .context("helm lint (waypoint.extensionProviders and waypoint.jwks)")?;

    let docs = render_values(dir, "waypoint-config-values.yaml", &values)?;
    let config = &find(&docs, "ConfigMap", "mesh-waypoint-config")?["data"];
    let wanted: Value = serde_yaml::from_str(&values)?;
    let providers: Value = serde_yaml::from_str(
        config["extension-providers.yaml"]
            .as_str()
            .context("mesh-waypoint-config has no extension-providers.yaml")?,
    )?;
    ensure!(
        providers["extensionProviders"] == wanted["waypoint"]["extensionProviders"],
        "mesh-waypoint-config's extension-providers.yaml is {providers:?}, the values say {:?}",
        wanted["waypoint"]["extensionProviders"]
    );
    ensure!(
        config["jwks-ca.pem"].as_str() == Some(ca_pem.as_str()),
        "mesh-waypoint-config's jwks-ca.pem is not waypoint.jwks.caBundle: {:?}",
        config["jwks-ca.pem"]
    );

    let pod = &find(&docs, "Deployment", "mesh-ca")?["spec"]["template"];
    let ca = &pod["spec"]["containers"][0];
    let args = strings(&ca["args"]);
    let mount = named(&ca["volumeMounts"], "waypoint-config")
        .and_then(|m| m["mountPath"].as_str())
        .context("the CA does not mount waypoint-config")?
        .to_owned();
    ensure!(
        named(&pod["spec"]["volumes"], "waypoint-config")
            .is_some_and(|v| v["configMap"]["name"] == "mesh-waypoint-config"),
        "the CA's waypoint-config volume is not the ConfigMap mesh-waypoint-config: {:?}",
        pod["spec"]["volumes"]
    );
    let mut local_args = Vec::new();
    let ca_config = find(&docs, "ConfigMap", "mesh-ca")?["data"]["ca.yaml"]
        .as_str()
        .context("ConfigMap mesh-ca has no ca.yaml")?;
    let ca_file = dir.join("waypoint-config-ca.yaml");
    std::fs::write(&ca_file, ca_config)?;
    for (flag, key) in [
        (
            "--waypoint-extension-providers-file",
            "extension-providers.yaml",
        ),
        ("--waypoint-jwks-ca-file", "jwks-ca.pem"),
    ] {
        let got = flag_value(&args, flag);
        let want = format!("{mount}/{key}");
        ensure!(
            got.as_deref() == Some(want.as_str()),
            "the CA's {flag} is {got:?}, the mounted file is {want}"
        );
    }
    let refresh = flag_value(&args, "--waypoint-jwks-refresh");
    ensure!(
        refresh.as_deref() == Some("5m"),
        "the CA's --waypoint-jwks-refresh is {refresh:?}, the values say 5m"
    );
    // The CA itself reads and checks what the chart rendered.
    for a in &args {
        local_args.push(if a == "/etc/mesh-ca/ca.yaml" {
            ca_file.display().to_string()
        } else if let Some(key) = a.strip_prefix(&format!("{mount}/")) {
            let file = dir.join(format!("waypoint-config-{key}"));
            std::fs::write(
                &file,
                config[key]
                    .as_str()
                    .with_context(|| format!("mesh-waypoint-config has no {key}"))?,
            )?;
            file.display().to_string()
        } else {
            a.replace("$(POD_NAME)", "mesh-ca-0")
                .replace("$(POD_NAMESPACE)", "mesh-system")
        });
    }
    let out = Command::new(&agent)
        .args(&local_args)
        .arg("--check-config")
        .output()?;
    let said = String::from_utf8_lossy(&out.stdout);
    ensure!(
        out.status.success() && said.contains("extension providers: ext-authz, opa"),
        "`mesh-agent {}` --check-config on the chart's waypoint config: {said}{}",
        local_args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );

    let checksum = |pod: &Value| pod["metadata"]["annotations"]["checksum/waypoint-config"].clone();
    ensure!(
        checksum(pod).is_string(),
        "the CA's pod template has no checksum/waypoint-config: a change would not restart it"
    );
    let changed = render_values(
        dir,
        "waypoint-config-values-changed.yaml",
        &waypoint_config_values(&ca_pem, 9001),
    )?;
    let changed_pod = &find(&changed, "Deployment", "mesh-ca")?["spec"]["template"];
    ensure!(
        checksum(changed_pod) != checksum(pod),
        "a changed extension provider leaves the CA's checksum/waypoint-config as it was"
    );

    let defaults = render(&[])?;
    let ca_default = &find(&defaults, "Deployment", "mesh-ca")?["spec"]["template"];
    let default_args = strings(&ca_default["spec"]["containers"][0]["args"]);
    ensure!(
        !defaults
            .iter()
            .any(|d| d["metadata"]["name"] == "mesh-waypoint-config")
            && checksum(ca_default).is_null()
            && !default_args
                .iter()
                .any(|a| a.starts_with("--waypoint-extension") || a.starts_with("--waypoint-jwks")),
        "by default the chart renders no waypoint config: {default_args:?}"
    );
    let bad = helm_output(&[
        "template",
        "mesh",
        "charts/mesh",
        "--set",
        "waypoint.extensionProviders[0].envoyExtAuthzGrpc.port=9000",
    ]);
    ensure!(
        bad.as_ref()
            .is_err_and(|e| e.to_string().contains("extensionProviders")),
        "a provider without a name must fail naming extensionProviders: {bad:?}"
    );
    println!(
        "chart: waypoint.extensionProviders and waypoint.jwks render mesh-waypoint-config, the CA mounts it where its flags say and accepts it, a change restarts the CA; none by default; a nameless provider is refused"
    );
    Ok(3)
}

/// Rewrites templates/crds.yaml from `mesh-agent crd` and
/// templates/gateway-api-crds.yaml from `mesh-agent ca crd`.
pub fn write_crds() -> anyhow::Result<()> {
    write_policy_crds()?;
    let out = Command::new(workspace().join("target/debug/mesh-agent"))
        .args(["ca", "crd"])
        .output()
        .context("run `cargo build` first")?;
    ensure!(out.status.success(), "mesh-agent ca crd failed");
    let yaml = String::from_utf8(out.stdout)?;
    let body = yaml.strip_prefix("---\n").unwrap_or(&yaml);
    let text = format!(
        "{{{{- if .Values.gatewayAPI.installCRDs }}}}\n# Generated from the CA's kube-derive Gateway API types (mesh-agent ca crd); do not\n# edit: cargo xtask test fails when it differs from what the types generate.\n{body}{{{{- end }}}}\n"
    );
    let path = workspace().join("charts/mesh/templates/gateway-api-crds.yaml");
    std::fs::write(&path, text)?;
    println!("wrote {}", path.display());
    Ok(())
}

fn write_policy_crds() -> anyhow::Result<()> {
    let out = Command::new(workspace().join("target/debug/mesh-agent"))
        .arg("crd")
        .output()
        .context("run `cargo build` first")?;
    ensure!(out.status.success(), "mesh-agent crd failed");
    let yaml = String::from_utf8(out.stdout)?;
    let body = yaml.strip_prefix("---\n").unwrap_or(&yaml);
    let text = format!(
        "{{{{- if .Values.crds.install }}}}\n# Generated from mesh-agent's kube-derive types (mesh-agent crd); do not edit:\n# cargo xtask test fails when it differs from what the types generate.\n{body}{{{{- end }}}}\n"
    );
    let path = workspace().join("charts/mesh/templates/crds.yaml");
    std::fs::write(&path, text)?;
    println!("wrote {}", path.display());
    Ok(())
}
