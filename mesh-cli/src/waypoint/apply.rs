//! `mesh waypoint apply`: the Gateway by server-side apply (and, asked
//! to, the namespace's `istio.io/use-waypoint` label), or its YAML when
//! nothing is to be applied (`--dry-run`, local mode). API errors are
//! explained by what the operator can do about them.
use k8s_openapi::api::core::v1::Namespace;
use kube::{
    Api, Client,
    api::{ApiResource, DynamicObject, Patch, PatchParams},
    core::Status,
};
use mesh_discovery::{kubernetes::gateway_resource, model::USE_WAYPOINT_LABEL};
use serde::Serialize;

use super::manifest::{WaypointDeclaration, for_label};
use crate::output::Format;

/// The field manager of what `mesh` applies.
pub const FIELD_MANAGER: &str = "mesh";

/// What was applied.
#[derive(Debug, Serialize)]
pub struct Applied {
    pub gateway: String,
    pub class: String,
    pub waypoint_for: &'static str,
    /// The namespace now labelled `istio.io/use-waypoint=<name>`.
    pub enrolled_namespace: Option<String>,
    /// Things the operator should know (the class has no GatewayClass...).
    pub notes: Vec<String>,
}

/// The YAML (or JSON) of the Gateway, headed by `notes` as YAML comments
/// so that the text stays a document one can paste.
pub fn document(
    format: Format,
    decl: &WaypointDeclaration,
    notes: &[String],
) -> anyhow::Result<String> {
    let gateway = decl.gateway();
    Ok(match format {
        Format::Json => serde_json::to_string_pretty(&gateway)? + "\n",
        Format::Table | Format::Yaml => {
            let mut out = String::new();
            for n in notes {
                for line in n.lines() {
                    out.push_str("# ");
                    out.push_str(line);
                    out.push('\n');
                }
            }
            out.push_str("---\n");
            out.push_str(&serde_yaml::to_string(&gateway)?);
            out
        }
    })
}

/// What local mode tells the operator with the YAML: there is no API to
/// apply to, the files are the cluster.
pub fn local_notes(
    decl: &WaypointDeclaration,
    enroll_namespace: bool,
    agents_class: &str,
) -> Vec<String> {
    let mut notes = vec![format!(
        "Local mode: nothing was applied. Paste this Gateway into every node's file\n\
         (the --config files); the agents read waypoints from there. Its pods are\n\
         the Pod documents in namespace {ns} labelled\n\
         gateway.networking.k8s.io/gateway-name: {name}.",
        ns = decl.namespace(),
        name = decl.name()
    )];
    if enroll_namespace {
        notes.push(format!(
            "To send namespace {ns}'s traffic through it, add to its Namespace document's labels:\n  {USE_WAYPOINT_LABEL}: {name}",
            ns = decl.namespace(),
            name = decl.name()
        ));
    }
    if decl.class() != agents_class {
        notes.push(format!(
            "Warning: the agents' waypointClass is {agents_class} (AgentConfig.waypointClass);\n\
             a Gateway of class {} is not a waypoint to them.",
            decl.class()
        ));
    }
    notes
}

/// What `--dry-run` in Kubernetes mode says with the YAML.
pub fn dry_run_notes(decl: &WaypointDeclaration, enroll_namespace: bool) -> Vec<String> {
    let mut notes = vec![
        "Dry run: nothing was applied; without --dry-run, mesh applies this Gateway\n\
         (server-side apply, field manager mesh)."
            .to_owned(),
    ];
    if enroll_namespace {
        notes.push(format!(
            "--enroll-namespace would also label namespace {} {USE_WAYPOINT_LABEL}={}.",
            decl.namespace(),
            decl.name()
        ));
    }
    notes
}

fn gateway_class_resource() -> ApiResource {
    ApiResource {
        kind: "GatewayClass".into(),
        plural: "gatewayclasses".into(),
        ..gateway_resource()
    }
}

/// Applies the Gateway (then labels the namespace): the first failure
/// stops, explained. `chart_namespace` is where the mesh's chart is
/// installed, for the fix of missing CRDs.
pub async fn apply(
    client: &Client,
    decl: &WaypointDeclaration,
    enroll_namespace: bool,
    chart_namespace: &str,
) -> anyhow::Result<Applied> {
    let gateways: Api<DynamicObject> =
        Api::namespaced_with(client.clone(), decl.namespace(), &gateway_resource());
    let body = serde_json::to_value(decl.gateway())?;
    gateways
        .patch(
            decl.name(),
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&body),
        )
        .await
        .map_err(|e| explain(Step::Gateway, &e, decl, chart_namespace))?;
    let mut applied = Applied {
        gateway: decl.key(),
        class: decl.class().to_owned(),
        waypoint_for: for_label(decl.waypoint_for()),
        enrolled_namespace: None,
        notes: Vec::new(),
    };
    // A Gateway of a class no controller serves stays a declaration: say
    // so now rather than leave the operator waiting for pods.
    let classes: Api<DynamicObject> = Api::all_with(client.clone(), &gateway_class_resource());
    match classes.get_opt(decl.class()).await {
        Ok(Some(_)) => {}
        Ok(None) => applied.notes.push(format!(
            "GatewayClass {class} does not exist: no controller deploys this waypoint. \
             The chart creates it with waypoint.enabled=true and waypoint.className={class}.",
            class = decl.class()
        )),
        Err(e) => applied.notes.push(format!(
            "could not read GatewayClass {}: {}",
            decl.class(),
            api_message(&e)
        )),
    }
    if enroll_namespace {
        let namespaces: Api<Namespace> = Api::all(client.clone());
        // A merge patch, not an apply: applying would create a namespace
        // that does not exist.
        namespaces
            .patch(
                decl.namespace(),
                &PatchParams::default(),
                &Patch::Merge(decl.enroll_namespace_patch()),
            )
            .await
            .map_err(|e| explain(Step::Namespace, &e, decl, chart_namespace))?;
        applied.enrolled_namespace = Some(decl.namespace().to_owned());
    }
    Ok(applied)
}

pub fn render(format: Format, a: &Applied) -> anyhow::Result<String> {
    crate::output::render(format, a, |a| {
        let mut out = format!(
            "waypoint {} applied (Gateway, class {}, for {})\n",
            a.gateway, a.class, a.waypoint_for
        );
        if let Some(ns) = &a.enrolled_namespace {
            let name = a.gateway.split_once('/').map_or("", |(_, n)| n);
            out.push_str(&format!(
                "namespace {ns} labelled {USE_WAYPOINT_LABEL}={name}\n"
            ));
        }
        for n in &a.notes {
            out.push_str(&format!("note: {n}\n"));
        }
        out
    })
}

/// Which request failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    Gateway,
    Namespace,
}

fn api_message(e: &kube::Error) -> String {
    match e {
        kube::Error::Api(s) => format!("{} ({})", s.message, s.code),
        other => other.to_string(),
    }
}

fn explain(
    step: Step,
    e: &kube::Error,
    decl: &WaypointDeclaration,
    chart_namespace: &str,
) -> anyhow::Error {
    match e {
        kube::Error::Api(status) => {
            anyhow::anyhow!(explain_status(step, status, decl, chart_namespace))
        }
        other => anyhow::anyhow!(
            "{}: {other}",
            match step {
                Step::Gateway => format!("applying Gateway {}", decl.key()),
                Step::Namespace => format!("labelling namespace {}", decl.namespace()),
            }
        ),
    }
}

/// The API server's refusal, as what to do about it.
pub fn explain_status(
    step: Step,
    status: &Status,
    decl: &WaypointDeclaration,
    chart_namespace: &str,
) -> String {
    let ns = decl.namespace();
    let namespace_missing = status.code == 404
        && (step == Step::Namespace
            || status
                .details
                .as_ref()
                .is_some_and(|d| d.kind == "namespaces"));
    match (step, status.code) {
        _ if namespace_missing => {
            format!("-n {ns}: namespace {ns} does not exist; create it or name another")
        }
        (Step::Gateway, 404) => format!(
            "the Gateway API CRDs are not installed (the API server has no \
             gateway.networking.k8s.io/v1 Gateway): install them: helm upgrade mesh charts/mesh \
             -n {chart_namespace} --reuse-values --set gatewayAPI.installCRDs=true (or install the \
             upstream Gateway API CRDs)"
        ),
        (Step::Gateway, 403) => format!(
            "not allowed to apply Gateway {}: {}; the kubeconfig's user needs `patch` (and \
             `create`) on gateways.gateway.networking.k8s.io in namespace {ns}",
            decl.key(),
            status.message
        ),
        (Step::Namespace, 403) => format!(
            "--enroll-namespace: not allowed to label namespace {ns}: {}; the kubeconfig's user \
             needs `patch` on namespaces (the Gateway was applied)",
            status.message
        ),
        (Step::Gateway, 422) => format!(
            "the API server refused Gateway {}: {} (check --name and --class)",
            decl.key(),
            status.message
        ),
        (Step::Gateway, code) => {
            format!(
                "applying Gateway {}: {} ({code})",
                decl.key(),
                status.message
            )
        }
        (Step::Namespace, code) => format!(
            "--enroll-namespace: labelling namespace {ns}: {} ({code}; the Gateway was applied)",
            status.message
        ),
    }
}
