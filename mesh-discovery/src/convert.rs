//! Kubernetes objects (as the API server or a local file spells them) into
//! the slim model. Both sources go through here, so a pod means the same
//! thing whichever way it arrived. Errors name the field.
use std::{collections::BTreeMap, net::IpAddr};

use k8s_openapi::{
    api::{
        core::v1::{Namespace, Node, Pod, Service as K8sService},
        discovery::v1::EndpointSlice as K8sSlice,
    },
    apimachinery::pkg::util::intstr::IntOrString,
};

use super::model::{
    Endpoint, EndpointSlice, Labels, SERVICE_NAME_LABEL, Service, ServiceKind, ServicePort,
    TargetPort, Workload,
};

/// A field of an object that cannot be used, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {problem}")]
pub struct Invalid {
    pub field: String,
    pub problem: String,
}

fn invalid(field: impl Into<String>, problem: impl Into<String>) -> Invalid {
    Invalid {
        field: field.into(),
        problem: problem.into(),
    }
}

fn parse_ip(field: String, text: &str) -> Result<IpAddr, Invalid> {
    text.parse()
        .map_err(|_| invalid(field, format!("`{text}` is not an IP address")))
}

fn port(field: impl Into<String>, n: i32) -> Result<u16, Invalid> {
    u16::try_from(n)
        .ok()
        .filter(|p| *p != 0)
        .ok_or_else(|| invalid(field, format!("{n} is not a port (1-65535)")))
}

fn is_tcp(protocol: Option<&String>) -> bool {
    protocol.is_none_or(|p| p == "TCP")
}

pub fn workload(pod: &Pod) -> Result<Workload, Invalid> {
    let meta = &pod.metadata;
    let name = meta.name.clone().unwrap_or_default();
    let namespace = meta.namespace.clone().unwrap_or_else(|| "default".into());
    let spec = pod.spec.as_ref();
    let status = pod.status.as_ref();
    let mut ips = Vec::new();
    let pod_ips = status.and_then(|s| s.pod_ips.as_ref());
    for (i, ip) in pod_ips.into_iter().flatten().enumerate() {
        ips.push(parse_ip(format!("status.podIPs[{i}].ip"), &ip.ip)?);
    }
    if ips.is_empty()
        && let Some(ip) = status.and_then(|s| s.pod_ip.as_ref())
    {
        ips.push(parse_ip("status.podIP".into(), ip)?);
    }
    let conditions = status.and_then(|s| s.conditions.as_ref());
    let ready = match conditions {
        // A file that says nothing about readiness describes a running pod.
        None => true,
        Some(c) => c.iter().any(|c| c.type_ == "Ready" && c.status == "True"),
    };
    let phase = status.and_then(|s| s.phase.as_deref());
    let mut ports = BTreeMap::new();
    for c in spec.map(|s| s.containers.as_slice()).unwrap_or_default() {
        for p in c.ports.iter().flatten() {
            if let Some(n) = &p.name
                && is_tcp(p.protocol.as_ref())
            {
                ports.insert(
                    n.clone(),
                    port("spec.containers[].ports[].containerPort", p.container_port)?,
                );
            }
        }
    }
    Ok(Workload {
        uid: meta
            .uid
            .clone()
            .unwrap_or_else(|| format!("local:{namespace}/{name}")),
        service_account: spec
            .and_then(|s| s.service_account_name.clone())
            .unwrap_or_else(|| "default".into()),
        node: spec.and_then(|s| s.node_name.clone()),
        host_network: spec.and_then(|s| s.host_network).unwrap_or(false),
        ips,
        labels: meta.labels.clone().unwrap_or_default(),
        annotations: meta.annotations.clone().unwrap_or_default(),
        ready,
        finished: matches!(phase, Some("Succeeded" | "Failed")),
        ports,
        name,
        namespace,
    })
}

pub fn namespace(ns: &Namespace) -> (String, Labels) {
    (
        ns.metadata.name.clone().unwrap_or_default(),
        ns.metadata.labels.clone().unwrap_or_default(),
    )
}

/// A Node's InternalIP addresses, then its ExternalIP ones, in the order listed.
pub fn node_addresses(node: &Node) -> Result<Vec<IpAddr>, Invalid> {
    let addrs = node
        .status
        .as_ref()
        .and_then(|s| s.addresses.as_ref())
        .map(Vec::as_slice)
        .unwrap_or_default();
    let mut out = Vec::with_capacity(addrs.len());
    for kind in ["InternalIP", "ExternalIP"] {
        for (i, a) in addrs.iter().enumerate() {
            if a.type_ == kind {
                out.push(parse_ip(
                    format!("status.addresses[{i}].address"),
                    &a.address,
                )?);
            }
        }
    }
    Ok(out)
}

pub fn service(svc: &K8sService) -> Result<Service, Invalid> {
    let meta = &svc.metadata;
    let spec = svc.spec.clone().unwrap_or_default();
    let kind = if spec.type_.as_deref() == Some("ExternalName") {
        ServiceKind::ExternalName(spec.external_name.clone().unwrap_or_default())
    } else if spec.cluster_ip.as_deref() == Some("None") {
        ServiceKind::Headless
    } else {
        let mut vips = Vec::new();
        match &spec.cluster_ips {
            Some(ips) if !ips.is_empty() => {
                for (i, ip) in ips.iter().enumerate() {
                    vips.push(parse_ip(format!("spec.clusterIPs[{i}]"), ip)?);
                }
            }
            _ => {
                if let Some(ip) = spec.cluster_ip.as_ref().filter(|ip| !ip.is_empty()) {
                    vips.push(parse_ip("spec.clusterIP".into(), ip)?);
                }
            }
        }
        ServiceKind::ClusterIp(vips)
    };
    let mut ports = Vec::new();
    for (i, p) in spec.ports.iter().flatten().enumerate() {
        if !is_tcp(p.protocol.as_ref()) {
            continue;
        }
        let field = |f: &str| format!("spec.ports[{i}].{f}");
        let number = port(field("port"), p.port)?;
        let target = match &p.target_port {
            None => TargetPort::Number(number),
            Some(IntOrString::Int(n)) => TargetPort::Number(port(field("targetPort"), *n)?),
            Some(IntOrString::String(s)) => match s.parse::<i32>() {
                Ok(n) => TargetPort::Number(port(field("targetPort"), n)?),
                Err(_) if s.is_empty() => TargetPort::Number(number),
                Err(_) => TargetPort::Name(s.clone()),
            },
        };
        ports.push(ServicePort {
            name: p.name.clone().unwrap_or_default(),
            port: number,
            target,
        });
    }
    Ok(Service {
        name: meta.name.clone().unwrap_or_default(),
        namespace: meta.namespace.clone().unwrap_or_else(|| "default".into()),
        kind,
        ports,
        selector: spec.selector.clone(),
    })
}

pub fn endpoint_slice(slice: &K8sSlice) -> Result<EndpointSlice, Invalid> {
    let meta = &slice.metadata;
    let service = meta
        .labels
        .as_ref()
        .and_then(|l| l.get(SERVICE_NAME_LABEL))
        .cloned()
        .ok_or_else(|| {
            invalid(
                format!("metadata.labels[\"{SERVICE_NAME_LABEL}\"]"),
                "missing; name the Service this slice belongs to",
            )
        })?;
    let mut ports = Vec::new();
    for (i, p) in slice.ports.iter().flatten().enumerate() {
        if !is_tcp(p.protocol.as_ref()) {
            continue;
        }
        let Some(n) = p.port else { continue };
        ports.push((
            p.name.clone().unwrap_or_default(),
            port(format!("ports[{i}].port"), n)?,
        ));
    }
    let mut endpoints = Vec::new();
    // FQDN slices carry names, not addresses; nothing the agent can route to.
    if matches!(slice.address_type.as_str(), "IPv4" | "IPv6") {
        for (i, e) in slice.endpoints.iter().flatten().enumerate() {
            let mut addresses = Vec::new();
            for (j, a) in e.addresses.iter().enumerate() {
                addresses.push(parse_ip(format!("endpoints[{i}].addresses[{j}]"), a)?);
            }
            endpoints.push(Endpoint {
                addresses,
                ready: e.conditions.as_ref().and_then(|c| c.ready).unwrap_or(true),
            });
        }
    }
    Ok(EndpointSlice {
        name: meta.name.clone().unwrap_or_default(),
        namespace: meta.namespace.clone().unwrap_or_else(|| "default".into()),
        service,
        ports,
        endpoints,
    })
}
