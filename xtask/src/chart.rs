//! Checks of charts/mesh, run by `cargo xtask test` (and so CI): the real
//! helm lints and renders it, kubernetes-validate checks every manifest
//! against the Kubernetes schemas, the agent binary validates the config
//! and flags the chart gives it, and the CRDs must equal what the agent's
//! kube-derive types generate.
use std::{path::Path, process::Command};

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
                // The downward API's node name.
                a.replace("$(NODE_NAME)", "node-1")
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
        // Only the Prometheus Operator's kind has no schema here.
        for line in report.lines().filter(|l| !l.trim().is_empty()) {
            ensure!(
                line.contains("kind ServiceMonitor"),
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

        let rendered: Vec<&Value> = docs
            .iter()
            .filter(|d| d["kind"] == "CustomResourceDefinition")
            .collect();
        let generated = Command::new(workspace().join("target/debug/mesh-agent"))
            .arg("crd")
            .output()?;
        ensure!(generated.status.success(), "mesh-agent crd failed");
        let mut expected = Vec::new();
        for doc in serde_yaml::Deserializer::from_slice(&generated.stdout) {
            let v = Value::deserialize(doc)?;
            if !v.is_null() {
                expected.push(v);
            }
        }
        ensure!(
            rendered.len() == expected.len()
                && rendered.iter().zip(&expected).all(|(a, b)| *a == b),
            "charts/mesh/templates/crds.yaml differs from the CRDs the Rust types generate; \
             regenerate it: cargo xtask chart --write-crds"
        );
        println!(
            "chart: CRDs equal the kube-derive types' ({})",
            rendered.len()
        );
        checks += 1;
    }
    let without = render(&["crds.install=false"])?;
    ensure!(
        !without
            .iter()
            .any(|d| d["kind"] == "CustomResourceDefinition"),
        "crds.install=false still renders CRDs"
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
    println!("chart: crds.install=false renders no CRD; a misspelt value is refused by name");
    checks += 2;
    Ok(checks)
}

/// Rewrites templates/crds.yaml from `mesh-agent crd`.
pub fn write_crds() -> anyhow::Result<()> {
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
