//! `mesh waypoint status`: every waypoint (a Gateway of the waypoint class
//! with the HBONE listener), its ready pods and identity, what uses it, and
//! what names a waypoint that cannot be used. Pure over the view the agents
//! would build and the Gateways as listed.
use std::collections::{BTreeMap, BTreeSet};

use mesh_discovery::{
    model::{USE_WAYPOINT_LABEL, WaypointFor},
    view::MeshView,
    waypoint::{UseWaypoint, WaypointBinding, WaypointEndpoint},
};
use serde::Serialize;

use super::{
    describe,
    gateways::{Condition, GatewayFacts},
    manifest::for_label,
};
use crate::output::{self, Format};

/// At most this many pods are named per line (the rest are counted).
const PODS_NAMED: usize = 5;

#[derive(Debug, Serialize)]
pub struct WaypointReport {
    /// The waypoint class the view was built with.
    pub class: String,
    pub waypoints: Vec<WaypointRow>,
    /// What makes connections fail or waypoints absent; empty when healthy.
    pub problems: Vec<String>,
    /// Facts worth knowing that are not failures.
    pub notes: Vec<String>,
}

impl WaypointReport {
    pub fn healthy(&self) -> bool {
        self.problems.is_empty()
    }
}

#[derive(Debug, Serialize)]
pub struct WaypointRow {
    pub gateway: String,
    pub waypoint_for: WaypointFor,
    /// Ready pods: HBONE address and identity.
    pub ready: Vec<WaypointEndpoint>,
    /// Kubernetes mode, once the controller wrote it.
    pub programmed: Option<Condition>,
    /// Services whose virtual IP it serves.
    pub services: Vec<String>,
    /// Namespaces whose `istio.io/use-waypoint` names it.
    pub namespaces: Vec<String>,
    /// Pods whose own address it serves.
    pub pods: Vec<String>,
}

/// The report, limited to `namespace` (waypoints there, and problems of
/// objects or waypoints there) when given.
pub fn report(
    view: &MeshView,
    gateways: &[GatewayFacts],
    class: &str,
    namespace: Option<&str>,
) -> WaypointReport {
    let in_scope =
        |key: &str| namespace.is_none_or(|ns| key.split_once('/').is_some_and(|(n, _)| n == ns));
    let mut rows: BTreeMap<String, WaypointRow> = view
        .waypoints()
        .map(|w| {
            (
                w.gateway.key(),
                WaypointRow {
                    gateway: w.gateway.key(),
                    waypoint_for: w.gateway.waypoint_for,
                    ready: w.endpoints.clone(),
                    programmed: None,
                    services: Vec::new(),
                    namespaces: Vec::new(),
                    pods: Vec::new(),
                },
            )
        })
        .collect();
    let mut problems = Vec::new();
    let mut services: Vec<_> = view.services().collect();
    services.sort_by_key(|s| s.service.key());
    for s in services {
        match &s.waypoint {
            WaypointBinding::Direct => {}
            WaypointBinding::Through(w) => {
                if let Some(r) = rows.get_mut(&w.gateway.key()) {
                    r.services.push(s.service.key());
                }
            }
            WaypointBinding::Unusable { gateway, .. } => {
                if in_scope(&s.service.key()) || in_scope(gateway) {
                    problems.push(format!(
                        "service {}: {}",
                        s.service.key(),
                        describe::binding(&s.waypoint)
                    ));
                }
            }
        }
    }
    let mut namespaces: BTreeSet<&str> = BTreeSet::new();
    let mut unusable: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut pods: Vec<_> = view
        .workloads()
        .filter(|w| !w.finished && !view.is_waypoint_pod(w))
        .collect();
    pods.sort_by_key(|w| w.key());
    for w in pods {
        namespaces.insert(&w.namespace);
        match view.waypoint_for_workload(w) {
            WaypointBinding::Direct => {}
            WaypointBinding::Through(wp) => {
                if let Some(r) = rows.get_mut(&wp.gateway.key()) {
                    r.pods.push(w.key());
                }
            }
            b @ WaypointBinding::Unusable { .. } => {
                let WaypointBinding::Unusable { gateway, .. } = &b else {
                    continue;
                };
                if in_scope(&w.key()) || in_scope(gateway) {
                    unusable
                        .entry(describe::binding(&b))
                        .or_default()
                        .push(w.key());
                }
            }
        }
    }
    // Pods are many: one line per waypoint problem, naming a few.
    for (why, pods) in unusable {
        problems.push(format!("{}: {why}", pods_named(&pods)));
    }
    for s in view.services() {
        namespaces.insert(&s.service.namespace);
    }
    for ns in namespaces {
        let wanted = view
            .namespace_labels(ns)
            .map(|l| UseWaypoint::from_labels(l, ns))
            .unwrap_or(UseWaypoint::Unset);
        if let UseWaypoint::Named { namespace, name } = wanted
            && let Some(r) = rows.get_mut(&format!("{namespace}/{name}"))
        {
            r.namespaces.push(ns.to_owned());
        }
    }
    let mut notes = Vec::new();
    for g in gateways {
        match g {
            GatewayFacts::Read {
                gateway,
                programmed,
            } => {
                let key = gateway.key();
                if !in_scope(&key) {
                    continue;
                }
                if let Some(r) = rows.get_mut(&key) {
                    r.programmed = programmed.clone();
                    if let Some(c) = programmed
                        && c.status != "True"
                    {
                        problems.push(format!(
                            "waypoint {key} is not programmed: {}: {}",
                            c.reason, c.message
                        ));
                    }
                } else if gateway.class == class && !gateway.hbone_listener {
                    problems.push(format!(
                        "Gateway {key} (class {class}) is not a waypoint: it has no listener \
                         {{port: 15008, protocol: HBONE}}; add {{name: mesh, port: 15008, \
                         protocol: HBONE}} to spec.listeners"
                    ));
                }
            }
            GatewayFacts::Unreadable {
                key,
                field,
                problem,
            } if in_scope(key) => problems.push(format!(
                "Gateway {key} is ignored by the agents: {field}: {problem}"
            )),
            GatewayFacts::Unreadable { .. } => {}
        }
    }
    let rows: Vec<WaypointRow> = rows
        .into_values()
        .filter(|r| in_scope(&r.gateway))
        .collect();
    for r in &rows {
        if r.ready.is_empty() {
            problems.push(format!(
                "waypoint {} has no ready pod: connections through it are refused",
                r.gateway
            ));
        }
        if r.waypoint_for == WaypointFor::None {
            notes.push(format!(
                "waypoint {} is for none (istio.io/waypoint-for): no traffic goes through it",
                r.gateway
            ));
        } else if r.services.is_empty() && r.namespaces.is_empty() && r.pods.is_empty() {
            notes.push(format!(
                "waypoint {} is used by nothing: label a namespace, Service or pod {USE_WAYPOINT_LABEL}={}",
                r.gateway,
                r.gateway.split_once('/').map_or("", |(_, n)| n)
            ));
        }
    }
    WaypointReport {
        class: class.to_owned(),
        waypoints: rows,
        problems,
        notes,
    }
}

fn pods_named(pods: &[String]) -> String {
    let named = pods
        .iter()
        .take(PODS_NAMED)
        .cloned()
        .collect::<Vec<_>>()
        .join(", ");
    match pods.len() {
        1 => format!("pod {named}"),
        n if n > PODS_NAMED => format!("pods {named} and {} more", n - PODS_NAMED),
        _ => format!("pods {named}"),
    }
}

pub fn render(format: Format, r: &WaypointReport) -> anyhow::Result<String> {
    output::render(format, r, |r| {
        // Only Kubernetes has a controller writing Programmed.
        let programmed = r.waypoints.iter().any(|w| w.programmed.is_some());
        let mut headers = vec!["WAYPOINT", "FOR", "READY", "ADDRESSES", "IDENTITY"];
        if programmed {
            headers.push("PROGRAMMED");
        }
        let rows: Vec<Vec<String>> = r
            .waypoints
            .iter()
            .map(|w| {
                let identities: BTreeSet<String> =
                    w.ready.iter().map(|e| e.identity.to_string()).collect();
                let mut row = vec![
                    w.gateway.clone(),
                    for_label(w.waypoint_for).to_owned(),
                    w.ready.len().to_string(),
                    dash(w.ready.iter().map(|e| e.address.to_string()).collect()),
                    dash(identities.into_iter().collect()),
                ];
                if programmed {
                    row.push(
                        w.programmed
                            .as_ref()
                            .map_or("-".into(), |c| c.status.clone()),
                    );
                }
                row
            })
            .collect();
        let mut out = if rows.is_empty() {
            format!("no waypoints (Gateways of class {})\n", r.class)
        } else {
            output::table(&headers, &rows)
        };
        for w in &r.waypoints {
            let mut users = Vec::new();
            if !w.services.is_empty() {
                users.push(format!("services {}", w.services.join(", ")));
            }
            if !w.namespaces.is_empty() {
                users.push(format!("namespaces {}", w.namespaces.join(", ")));
            }
            if !w.pods.is_empty() {
                users.push(pods_named(&w.pods));
            }
            if !users.is_empty() {
                out.push_str(&format!("{} is used by {}\n", w.gateway, users.join("; ")));
            }
        }
        for n in &r.notes {
            out.push_str(&format!("note: {n}\n"));
        }
        for p in &r.problems {
            out.push_str(&format!("problem: {p}\n"));
        }
        out
    })
}

fn dash(v: Vec<String>) -> String {
    if v.is_empty() {
        "-".into()
    } else {
        v.join(",")
    }
}
