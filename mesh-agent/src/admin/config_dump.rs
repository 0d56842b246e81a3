//! The admin API's `/config_dump`: what this agent currently believes —
//! the workloads, Services and policies of its view, its enrolled pods and
//! the certificates it holds (expiry only; private keys never leave the
//! certificate manager).
use mesh_discovery::{model::Workload, view::RoutePort};
use mesh_policy::{PeerAuthentication, model::Action};
use serde::Serialize;

use crate::health::NodeHealth;

#[derive(Serialize)]
pub struct ConfigDump {
    pub node: String,
    pub trust_domain: String,
    pub root_namespace: String,
    pub enrolled: Vec<EnrolledPod>,
    pub certificates: Vec<Certificate>,
    pub workloads: Vec<Workload>,
    pub services: Vec<ServiceDump>,
    pub authorization_policies: Vec<PolicyDump>,
    pub peer_authentications: Vec<PeerAuthenticationDump>,
}

#[derive(Serialize)]
pub struct EnrolledPod {
    pub pod: String,
    pub identity: String,
    pub ips: Vec<std::net::IpAddr>,
    pub netns_cookie: u64,
}

#[derive(Serialize)]
pub struct Certificate {
    pub identity: String,
    pub not_after: Option<String>,
    pub pods: usize,
}

#[derive(Serialize)]
pub struct ServiceDump {
    pub name: String,
    pub namespace: String,
    pub addresses: Vec<std::net::IpAddr>,
    pub ports: Vec<RoutePort>,
}

#[derive(Serialize)]
pub struct PolicyDump {
    pub name: String,
    pub action: Action,
    pub dry_run: bool,
    pub selector: Option<mesh_policy::model::WorkloadSelector>,
    /// `None`: the policy did not compile and denies everything in its scope.
    pub rules: Option<Vec<mesh_policy::model::Rule>>,
}

#[derive(Serialize)]
pub struct PeerAuthenticationDump {
    pub name: String,
    pub namespace: String,
    pub spec: mesh_policy::model::PeerAuthenticationSpec,
}

pub fn dump(health: &NodeHealth) -> ConfigDump {
    let view = health.state.view();
    let mut workloads: Vec<Workload> = view.workloads().map(|w| w.as_ref().clone()).collect();
    workloads.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
    let mut services: Vec<ServiceDump> = view
        .services()
        .map(|r| ServiceDump {
            name: r.service.name.clone(),
            namespace: r.service.namespace.clone(),
            addresses: match &r.service.kind {
                mesh_discovery::model::ServiceKind::ClusterIp(v) => v.clone(),
                _ => Vec::new(),
            },
            ports: r.ports.clone(),
        })
        .collect();
    services.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
    let certificates = health
        .state
        .mtls
        .as_ref()
        .map(|m| m.certs.status())
        .unwrap_or_default()
        .into_iter()
        .map(|c| Certificate {
            identity: c.identity.to_string(),
            not_after: c
                .not_after
                .map(|t| humantime::format_rfc3339_seconds(t).to_string()),
            pods: c.pods,
        })
        .collect();
    ConfigDump {
        node: health.node.clone(),
        trust_domain: view.trust_domain.clone(),
        root_namespace: view.policies.root_namespace.clone(),
        enrolled: health
            .state
            .local
            .all()
            .iter()
            .map(|p| EnrolledPod {
                pod: p.key.clone(),
                identity: p.identity.to_string(),
                ips: p.ips.clone(),
                netns_cookie: p.netns_cookie,
            })
            .collect(),
        certificates,
        workloads,
        services,
        authorization_policies: view
            .policies
            .authorization
            .iter()
            .map(|p| PolicyDump {
                name: p.name.clone(),
                action: p.action,
                dry_run: p.dry_run,
                selector: p.selector.clone(),
                rules: p.rules_source.clone(),
            })
            .collect(),
        peer_authentications: view
            .policies
            .peer_authentication
            .iter()
            .map(|p: &PeerAuthentication| PeerAuthenticationDump {
                name: p.name.clone(),
                namespace: p.namespace.clone(),
                spec: p.spec.clone(),
            })
            .collect(),
    }
}
