//! `mesh inspect <namespace>/<workload|service>`: who it is, what is behind
//! it, every policy that governs its traffic in and out with the verdict
//! each peer would get, and its current flows. Verdicts come from the same
//! evaluation the agents run, over the same view of the cluster.
use std::{collections::BTreeSet, net::IpAddr, sync::Arc};

use anyhow::bail;
use mesh_discovery::{
    model::{GATEWAY_NAME_LABEL, Workload},
    view::{MeshView, WaypointRequirement},
    waypoint::WaypointBinding,
};
use mesh_identity::Identity;
use mesh_policy::{Connection, MtlsMode, Target, Verdict, model::Action};
use mesh_telemetry::{flows::FlowSeries, labels::WorkloadLabels};
use serde::Serialize;

use super::{
    agents::Cluster,
    output::{self, Format},
    routing::{self, tables::ServiceRoutes},
    waypoint::describe,
};

/// At most this many peer identities are evaluated (the rest are counted).
const MAX_PEERS: usize = 64;

#[derive(Debug, Serialize)]
pub struct Inspection {
    pub target: String,
    /// `service` or `workload`.
    pub kind: &'static str,
    pub identities: Vec<String>,
    /// A Service's: where traffic to its virtual IP goes first.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub waypoint: Option<WaypointBinding>,
    pub pods: Vec<PodRow>,
    pub endpoints: Vec<EndpointRow>,
    /// A Service's routes: each attached route's status and each port's
    /// tables in the order they are tried.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub routes: Option<ServiceRoutes>,
    /// A Service's DestinationRule, as its waypoint applies it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub destination_rule: Option<crate::destination_rules::RuleView>,
    /// Policies that select the target's pods (evaluated for `evaluated_for`).
    pub inbound_policies: Vec<PolicyRow>,
    pub evaluated_for: Option<String>,
    pub inbound: Vec<VerdictRow>,
    /// Peers left out of `inbound` beyond the first 64.
    pub peers_not_shown: usize,
    /// Destinations whose policies decide about the target's connections.
    pub outbound: Vec<VerdictRow>,
    pub flows: Vec<FlowSeries>,
    /// Agents whose flows could not be read.
    pub flow_errors: Vec<String>,
}

#[derive(Debug, Serialize)]
pub struct PodRow {
    pub name: String,
    pub node: Option<String>,
    pub ips: Vec<IpAddr>,
    pub identity: String,
    pub enrolled: bool,
    /// Where traffic to the pod's own address goes first.
    pub waypoint: WaypointBinding,
    /// Whether only its waypoint may connect to it directly.
    pub requires_waypoint: Option<describe::Requirement>,
    /// The waypoint this pod runs (`<namespace>/<gateway>`), if it is one's.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub waypoint_of: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct EndpointRow {
    pub port: u16,
    pub port_name: String,
    pub endpoint: std::net::SocketAddr,
    pub pod: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct PolicyRow {
    pub name: String,
    pub action: Action,
    pub dry_run: bool,
    /// False when the policy did not compile and stands in as deny-all.
    pub compiled: bool,
}

#[derive(Debug, Serialize, PartialEq, Eq)]
pub struct VerdictRow {
    /// Inbound: the peer identity (or `plaintext`); outbound: the destination.
    pub peer: String,
    pub port: u16,
    /// `allow` or `deny`.
    pub verdict: &'static str,
    pub reason: String,
}

fn verdict_row(peer: String, port: u16, v: &Verdict) -> VerdictRow {
    VerdictRow {
        peer,
        port,
        verdict: if v.allowed() { "allow" } else { "deny" },
        reason: v.reason(),
    }
}

fn target_of(w: &Workload) -> Target<'_> {
    Target {
        namespace: &w.namespace,
        labels: &w.labels,
    }
}

fn identity_of(view: &MeshView, w: &Workload) -> String {
    Identity::new(&view.trust_domain, &w.namespace, &w.service_account)
        .map(|i| i.to_string())
        .unwrap_or_else(|e| format!("(invalid: {e})"))
}

/// Resolves the target and evaluates its policies.
pub fn inspect(view: &MeshView, target: &str) -> anyhow::Result<Inspection> {
    let Some((namespace, name)) = target.split_once('/') else {
        bail!("`{target}`: name the target as <namespace>/<workload or service>");
    };
    let mut service_waypoint = None;
    let mut routes = None;
    let mut destination_rule = None;
    let (kind, pods, endpoints) = if let Some(route) = view.service(target) {
        service_waypoint = Some(route.waypoint.clone());
        routes = Some(routing::tables::service_routes(view, route));
        destination_rule = view
            .destination_rule(target)
            .map(|rule| crate::destination_rules::view(rule, route));
        let mut endpoints = Vec::new();
        let mut pods: Vec<Arc<Workload>> = Vec::new();
        for p in &route.ports {
            for ep in &p.endpoints {
                let w = view.workload(ep.ip()).cloned();
                if let Some(w) = &w
                    && !pods.iter().any(|x| x.uid == w.uid)
                {
                    pods.push(w.clone());
                }
                endpoints.push(EndpointRow {
                    port: p.port,
                    port_name: p.name.clone(),
                    endpoint: *ep,
                    pod: w.map(|w| w.key()),
                });
            }
        }
        ("service", pods, endpoints)
    } else {
        let pods: Vec<Arc<Workload>> = view
            .workloads()
            .filter(|w| {
                w.namespace == namespace
                    && (w.name == name || WorkloadLabels::of_workload(w).workload == name)
            })
            .cloned()
            .collect();
        if pods.is_empty() {
            bail!("{target}: no Service or workload of that name in namespace {namespace}");
        }
        ("workload", pods, Vec::new())
    };
    let mut pods = pods;
    pods.sort_by(|a, b| a.name.cmp(&b.name));
    let identities: BTreeSet<String> = pods.iter().map(|w| identity_of(view, w)).collect();
    let ports = target_ports(view, &pods, &endpoints);
    let representative = pods.first().cloned();
    let mut inspection = Inspection {
        target: target.to_owned(),
        kind,
        identities: identities.into_iter().collect(),
        waypoint: service_waypoint,
        pods: pods
            .iter()
            .map(|w| PodRow {
                name: w.key(),
                node: w.node.clone(),
                ips: w.ips.clone(),
                identity: identity_of(view, w),
                enrolled: view.is_enrolled(w),
                waypoint: view.waypoint_for_workload(w),
                requires_waypoint: requirement(view, w).map(|r| describe::Requirement::of(r)),
                waypoint_of: view
                    .is_waypoint_pod(w)
                    .then(|| w.labels.get(GATEWAY_NAME_LABEL))
                    .flatten()
                    .map(|g| format!("{}/{g}", w.namespace)),
            })
            .collect(),
        endpoints,
        routes,
        destination_rule,
        inbound_policies: Vec::new(),
        evaluated_for: representative.as_ref().map(|w| w.key()),
        inbound: Vec::new(),
        peers_not_shown: 0,
        outbound: Vec::new(),
        flows: Vec::new(),
        flow_errors: Vec::new(),
    };
    if let Some(w) = &representative {
        inbound(view, w, &ports, &mut inspection);
        inspection.outbound = outbound(view, w);
    }
    Ok(inspection)
}

/// The waypoint requirement on any of the pod's addresses.
fn requirement<'a>(view: &'a MeshView, w: &Workload) -> Option<&'a Arc<WaypointRequirement>> {
    w.ips.iter().find_map(|ip| view.waypoint_requirement(*ip))
}

/// The ports the target serves: its Service's target ports, else its named
/// container ports, else 0 (any port).
fn target_ports(view: &MeshView, pods: &[Arc<Workload>], endpoints: &[EndpointRow]) -> Vec<u16> {
    let mut ports: BTreeSet<u16> = endpoints.iter().map(|e| e.endpoint.port()).collect();
    if ports.is_empty() {
        for w in pods {
            ports.extend(w.ports.values());
            for svc in view.services() {
                for p in &svc.ports {
                    ports.extend(
                        p.endpoints
                            .iter()
                            .filter(|e| w.ips.contains(&e.ip()))
                            .map(|e| e.port()),
                    );
                }
            }
        }
    }
    if ports.is_empty() {
        ports.insert(0);
    }
    ports.into_iter().collect()
}

fn inbound(view: &MeshView, w: &Workload, ports: &[u16], out: &mut Inspection) {
    let policies = &view.policies;
    out.inbound_policies = policies
        .authorization
        .iter()
        .filter(|p| p.applies_to(&policies.root_namespace, &w.namespace, &w.labels))
        .map(|p| PolicyRow {
            name: p.name.clone(),
            action: p.action,
            dry_run: p.dry_run,
            compiled: p.rules_source.is_some(),
        })
        .collect();
    // Every identity that could call: the mesh's enrolled workloads, and
    // plaintext from outside it.
    let mut peers: Vec<(Identity, IpAddr)> = Vec::new();
    for peer in view
        .workloads()
        .filter(|p| view.is_enrolled(p) && !p.finished)
    {
        let Ok(id) = Identity::new(&view.trust_domain, &peer.namespace, &peer.service_account)
        else {
            continue;
        };
        if let Some(ip) = peer.ips.first()
            && !peers.iter().any(|(p, _)| *p == id)
        {
            peers.push((id, *ip));
        }
    }
    // Only the waypoint's pods may reach a destination that requires it;
    // they are never enrolled, so they are added here.
    let required = requirement(view, w);
    for id in required.iter().flat_map(|r| &r.identities) {
        let ip = view
            .waypoints()
            .flat_map(|wp| &wp.endpoints)
            .find(|e| e.identity == *id)
            .map(|e| e.address.ip());
        if let Some(ip) = ip
            && !peers.iter().any(|(p, _)| p == id)
        {
            peers.push((id.clone(), ip));
        }
    }
    peers.sort_by(|a, b| a.0.cmp(&b.0));
    out.peers_not_shown = peers.len().saturating_sub(MAX_PEERS);
    peers.truncate(MAX_PEERS);
    let dst_ip = w.ips.first().copied().unwrap_or(IpAddr::from([0, 0, 0, 0]));
    // The agent's order: the waypoint requirement, then STRICT, then policy.
    let bypass = |source: Option<&Identity>| {
        let r = required?;
        if source.is_some_and(|id| r.identities.contains(id)) {
            return None;
        }
        let gateways: Vec<&str> = r.gateways.iter().map(String::as_str).collect();
        Some(format!(
            "the destination requires its waypoint ({}; mesh.io/require-waypoint) and the connection did not come through it",
            gateways.join(", ")
        ))
    };
    for port in ports {
        for (id, ip) in &peers {
            if let Some(reason) = bypass(Some(id)) {
                out.inbound.push(VerdictRow {
                    peer: id.to_string(),
                    port: *port,
                    verdict: "deny",
                    reason,
                });
                continue;
            }
            let d = policies.authorize(
                target_of(w),
                &Connection {
                    source: Some(id),
                    source_ip: *ip,
                    destination_ip: dst_ip,
                    destination_port: *port,
                },
            );
            out.inbound
                .push(verdict_row(id.to_string(), *port, &d.enforced));
        }
        let row = if let Some(reason) = bypass(None) {
            VerdictRow {
                peer: "plaintext".into(),
                port: *port,
                verdict: "deny",
                reason,
            }
        } else if policies.mtls_mode(target_of(w), *port) == MtlsMode::Strict {
            VerdictRow {
                peer: "plaintext".into(),
                port: *port,
                verdict: "deny",
                reason: "STRICT mTLS (PeerAuthentication) refuses plaintext".into(),
            }
        } else {
            let d = policies.authorize(
                target_of(w),
                &Connection {
                    source: None,
                    source_ip: IpAddr::from([0, 0, 0, 0]),
                    destination_ip: dst_ip,
                    destination_port: *port,
                },
            );
            verdict_row("plaintext".into(), *port, &d.enforced)
        };
        out.inbound.push(row);
    }
}

/// For each Service port whose endpoints are governed by some policy, the
/// verdict the target's identity would get there.
fn outbound(view: &MeshView, w: &Workload) -> Vec<VerdictRow> {
    let policies = &view.policies;
    let Ok(me) = Identity::new(&view.trust_domain, &w.namespace, &w.service_account) else {
        return Vec::new();
    };
    let src_ip = w.ips.first().copied().unwrap_or(IpAddr::from([0, 0, 0, 0]));
    let mut rows = Vec::new();
    let mut services: Vec<_> = view.services().collect();
    services.sort_by_key(|s| s.service.key());
    for svc in services {
        for port in &svc.ports {
            let Some(ep) = port.endpoints.first() else {
                continue;
            };
            let Some(dst) = view.workload(ep.ip()) else {
                continue;
            };
            if dst.uid == w.uid {
                continue;
            }
            let governed = policies
                .authorization
                .iter()
                .any(|p| p.applies_to(&policies.root_namespace, &dst.namespace, &dst.labels));
            if !governed {
                continue;
            }
            let d = policies.authorize(
                target_of(dst),
                &Connection {
                    source: Some(&me),
                    source_ip: src_ip,
                    destination_ip: ep.ip(),
                    destination_port: ep.port(),
                },
            );
            rows.push(verdict_row(svc.service.key(), port.port, &d.enforced));
        }
    }
    rows
}

/// Adds the target's kernel flows, as every agent reports them.
pub async fn add_flows(cluster: &Cluster, inspection: &mut Inspection, view: &MeshView) {
    let names: BTreeSet<(String, String)> = inspection
        .pods
        .iter()
        .filter_map(|p| p.name.split_once('/'))
        .filter_map(|(ns, name)| {
            view.workloads()
                .find(|w| w.namespace == ns && w.name == name)
                .map(|w| {
                    let l = WorkloadLabels::of_workload(w);
                    (l.namespace, l.workload)
                })
        })
        .collect();
    let agents = match cluster.agents().await {
        Ok(a) => a,
        Err(e) => {
            inspection.flow_errors.push(format!("{e:#}"));
            return;
        }
    };
    for agent in agents {
        let series =
            match cluster.get(&agent, "/flows").await.and_then(|t| {
                serde_json::from_str::<Vec<FlowSeries>>(&t).map_err(anyhow::Error::from)
            }) {
                Ok(s) => s,
                Err(e) => {
                    inspection
                        .flow_errors
                        .push(format!("{}: {e:#}", agent.node));
                    continue;
                }
            };
        inspection.flows.extend(series.into_iter().filter(|f| {
            names.contains(&(
                f.source_workload_namespace.clone(),
                f.source_workload.clone(),
            )) || names.contains(&(
                f.destination_workload_namespace.clone(),
                f.destination_workload.clone(),
            ))
        }));
    }
}

pub fn render(format: Format, i: &Inspection) -> anyhow::Result<String> {
    output::render(format, i, |i| {
        let mut out = format!("{} {}\n", i.kind, i.target);
        out.push_str(&format!("identities: {}\n", i.identities.join(", ")));
        if let Some(w) = &i.waypoint {
            out.push_str(&format!("waypoint: {}\n", describe::binding(w)));
        }
        out.push('\n');
        out.push_str("PODS\n");
        out.push_str(&output::table(
            &["POD", "NODE", "IPS", "IDENTITY", "ENROLLED"],
            &i.pods
                .iter()
                .map(|p| {
                    vec![
                        p.name.clone(),
                        p.node.clone().unwrap_or_else(|| "-".into()),
                        p.ips
                            .iter()
                            .map(|ip| ip.to_string())
                            .collect::<Vec<_>>()
                            .join(","),
                        p.identity.clone(),
                        p.enrolled.to_string(),
                    ]
                })
                .collect::<Vec<_>>(),
        ));
        out.push_str("\nWAYPOINTS (traffic to each pod's own address)\n");
        out.push_str(&output::table(
            &["POD", "WAYPOINT", "REQUIRES WAYPOINT"],
            &i.pods
                .iter()
                .map(|p| {
                    vec![
                        p.name.clone(),
                        match &p.waypoint_of {
                            Some(g) => format!("is a pod of waypoint {g} (never enrolled)"),
                            None => describe::binding(&p.waypoint),
                        },
                        describe::requirement(p.requires_waypoint.as_ref()),
                    ]
                })
                .collect::<Vec<_>>(),
        ));
        if !i.endpoints.is_empty() {
            out.push_str("\nENDPOINTS\n");
            out.push_str(&output::table(
                &["PORT", "NAME", "ENDPOINT", "POD"],
                &i.endpoints
                    .iter()
                    .map(|e| {
                        vec![
                            e.port.to_string(),
                            e.port_name.clone(),
                            e.endpoint.to_string(),
                            e.pod.clone().unwrap_or_else(|| "-".into()),
                        ]
                    })
                    .collect::<Vec<_>>(),
            ));
        }
        if let Some(r) = &i.routes {
            out.push('\n');
            out.push_str(&routing::render::service_routes(r));
        }
        if i.kind == "service" {
            out.push('\n');
            out.push_str(&crate::destination_rules::render(
                i.destination_rule.as_ref(),
            ));
        }
        out.push_str(&format!(
            "\nINBOUND POLICIES (evaluated for {})\n",
            i.evaluated_for.as_deref().unwrap_or("-")
        ));
        if i.inbound_policies.is_empty() {
            out.push_str("none: every peer is allowed\n");
        } else {
            out.push_str(&output::table(
                &["POLICY", "ACTION", "DRY-RUN", "COMPILED"],
                &i.inbound_policies
                    .iter()
                    .map(|p| {
                        vec![
                            p.name.clone(),
                            format!("{:?}", p.action).to_uppercase(),
                            p.dry_run.to_string(),
                            p.compiled.to_string(),
                        ]
                    })
                    .collect::<Vec<_>>(),
            ));
        }
        let verdicts = |rows: &[VerdictRow], peer: &str| {
            output::table(
                &[peer, "PORT", "VERDICT", "REASON"],
                &rows
                    .iter()
                    .map(|r| {
                        vec![
                            r.peer.clone(),
                            if r.port == 0 {
                                "*".into()
                            } else {
                                r.port.to_string()
                            },
                            r.verdict.to_owned(),
                            r.reason.clone(),
                        ]
                    })
                    .collect::<Vec<_>>(),
            )
        };
        out.push_str("\nINBOUND VERDICTS\n");
        out.push_str(&verdicts(&i.inbound, "FROM"));
        if i.peers_not_shown > 0 {
            out.push_str(&format!(
                "({} more peer identities not shown)\n",
                i.peers_not_shown
            ));
        }
        out.push_str("\nOUTBOUND VERDICTS (destinations with policies)\n");
        if i.outbound.is_empty() {
            out.push_str("none: no policy governs the destinations it can reach\n");
        } else {
            out.push_str(&verdicts(&i.outbound, "TO"));
        }
        out.push_str("\nFLOWS (kernel)\n");
        out.push_str(&output::table(
            &[
                "SOURCE",
                "DESTINATION",
                "PORT",
                "DIRECTION",
                "OPENED",
                "CLOSED",
                "SENT",
                "RECEIVED",
                "RETRANS",
                "SRTT",
            ],
            &i.flows
                .iter()
                .map(|f| {
                    vec![
                        format!("{}/{}", f.source_workload_namespace, f.source_workload),
                        format!(
                            "{}/{}",
                            f.destination_workload_namespace, f.destination_workload
                        ),
                        f.destination_port.to_string(),
                        f.direction.clone(),
                        f.connections_opened.to_string(),
                        f.connections_closed.to_string(),
                        output::bytes(f.bytes_sent),
                        output::bytes(f.bytes_received),
                        f.retransmits.to_string(),
                        f.mean_srtt_us.map_or("-".into(), |us| format!("{us}us")),
                    ]
                })
                .collect::<Vec<_>>(),
        ));
        for e in &i.flow_errors {
            out.push_str(&format!("flows unavailable: {e}\n"));
        }
        out
    })
}
