//! Kubernetes objects (as the API server or a local file spells them) into
//! the slim model. Both sources go through here, so a pod means the same
//! thing whichever way it arrived. Errors name the field.
use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
};

use k8s_openapi::{
    api::{
        core::v1::{
            Container, LifecycleHandler, Namespace, Node, Pod, PodSpec, Probe,
            Service as K8sService,
        },
        discovery::v1::EndpointSlice as K8sSlice,
    },
    apimachinery::pkg::util::intstr::IntOrString,
};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::Deserialize;

use super::model::{
    AllowedNamespaces, Endpoint, EndpointSlice, Gateway, Labels, MAX_METADATA_BYTES,
    NAMESPACE_LABELS, POD_ANNOTATIONS, SERVICE_LABELS, SERVICE_NAME_LABEL, Service, ServiceKind,
    ServicePort, TargetPort, WAYPOINT_FOR_LABEL, WAYPOINT_LISTENER_PORT,
    WAYPOINT_LISTENER_PROTOCOL, WaypointFor, Workload, metadata_bytes,
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

/// Only the entries of `map` whose key is one of `keep`.
fn kept(map: Option<&Labels>, keep: &[&str]) -> Labels {
    map.into_iter()
        .flatten()
        .filter(|(k, _)| keep.contains(&k.as_str()))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

/// Refuses an object whose kept metadata is over `MAX_METADATA_BYTES`,
/// naming the size, the bound and what to change.
fn within_bound(field: &str, maps: &[&Labels]) -> Result<(), Invalid> {
    let bytes = metadata_bytes(maps.iter().copied());
    if bytes <= MAX_METADATA_BYTES {
        return Ok(());
    }
    Err(invalid(
        field,
        format!(
            "{bytes} bytes of keys and values, over the agent's bound of {MAX_METADATA_BYTES} bytes per object; \
             the object is treated as absent until it is shortened (the bound is fixed: \
             mesh_discovery::model::MAX_METADATA_BYTES)"
        ),
    ))
}

/// A probe's or hook's port as the kubelet resolves it
/// (`probe.ResolveContainerPort`): a number, or the name of one of the
/// container's own ports, or a number spelled as a string. A name the
/// container does not have fails the probe in the kubelet as well, so it
/// exempts nothing here; a number outside 1-65535 is an error (the API
/// server refuses it; a local file gets told which field).
fn resolve_probe_port(
    field: String,
    asked: &IntOrString,
    container: &Container,
) -> Result<Option<u16>, Invalid> {
    match asked {
        IntOrString::Int(n) => port(field, *n).map(Some),
        IntOrString::String(name) => {
            let named = container
                .ports
                .iter()
                .flatten()
                .find(|p| p.name.as_deref() == Some(name.as_str()));
            match (named, name.parse::<i32>()) {
                (Some(p), _) => port(field, p.container_port).map(Some),
                (None, Ok(n)) => port(field, n).map(Some),
                (None, Err(_)) => Ok(None),
            }
        }
    }
}

/// Whether a probe's `host` sends it somewhere else than the pod: then the
/// pod never sees it and it exempts nothing.
fn elsewhere(host: Option<&String>) -> bool {
    host.is_some_and(|h| !h.is_empty())
}

/// The ports the kubelet connects to: the probes (readiness, liveness,
/// startup) and lifecycle hooks (postStart, preStop) of every container,
/// init containers included (a restartable one runs probes too), as
/// httpGet, tcpSocket or grpc. exec and sleep connect nowhere.
fn probe_ports(spec: &PodSpec) -> Result<Vec<u16>, Invalid> {
    let mut ports = BTreeSet::new();
    let lists = [
        ("containers", spec.containers.as_slice()),
        (
            "initContainers",
            spec.init_containers.as_deref().unwrap_or_default(),
        ),
    ];
    for (list, containers) in lists {
        for (i, c) in containers.iter().enumerate() {
            let probes: [(&str, Option<&Probe>); 3] = [
                ("readinessProbe", c.readiness_probe.as_ref()),
                ("livenessProbe", c.liveness_probe.as_ref()),
                ("startupProbe", c.startup_probe.as_ref()),
            ];
            for (name, probe) in probes {
                let Some(p) = probe else { continue };
                let at = |what: &str| format!("spec.{list}[{i}].{name}.{what}");
                if let Some(h) = p.http_get.as_ref().filter(|h| !elsewhere(h.host.as_ref())) {
                    ports.extend(resolve_probe_port(at("httpGet.port"), &h.port, c)?);
                }
                if let Some(t) = p
                    .tcp_socket
                    .as_ref()
                    .filter(|t| !elsewhere(t.host.as_ref()))
                {
                    ports.extend(resolve_probe_port(at("tcpSocket.port"), &t.port, c)?);
                }
                if let Some(g) = &p.grpc {
                    ports.insert(port(at("grpc.port"), g.port)?);
                }
            }
            let hooks: [(&str, Option<&LifecycleHandler>); 2] = [
                (
                    "postStart",
                    c.lifecycle.as_ref().and_then(|l| l.post_start.as_ref()),
                ),
                (
                    "preStop",
                    c.lifecycle.as_ref().and_then(|l| l.pre_stop.as_ref()),
                ),
            ];
            for (name, hook) in hooks {
                let Some(h) = hook else { continue };
                let at = |what: &str| format!("spec.{list}[{i}].lifecycle.{name}.{what}");
                if let Some(g) = h.http_get.as_ref().filter(|g| !elsewhere(g.host.as_ref())) {
                    ports.extend(resolve_probe_port(at("httpGet.port"), &g.port, c)?);
                }
                if let Some(t) = h
                    .tcp_socket
                    .as_ref()
                    .filter(|t| !elsewhere(t.host.as_ref()))
                {
                    ports.extend(resolve_probe_port(at("tcpSocket.port"), &t.port, c)?);
                }
            }
        }
    }
    Ok(ports.into_iter().collect())
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
    // Labels are kept whole: a Service's selector and a policy's
    // `selector.matchLabels` may name any key, and both change at run time;
    // trimming to the keys named today would need every pod's full object
    // again (a re-list of the cluster) whenever a Service or policy names
    // a new one. Annotations are read only by the agent itself.
    let labels = meta.labels.clone().unwrap_or_default();
    let annotations = kept(meta.annotations.as_ref(), POD_ANNOTATIONS);
    within_bound(
        "metadata.labels and metadata.annotations",
        &[&labels, &annotations],
    )?;
    let probe_ports = match spec {
        Some(spec) => probe_ports(spec)?,
        None => Vec::new(),
    };
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
        labels,
        annotations,
        ready,
        finished: matches!(phase, Some("Succeeded" | "Failed")),
        ports,
        probe_ports,
        name,
        namespace,
    })
}

/// A namespace's name and the labels the agent reads (`NAMESPACE_LABELS`).
pub fn namespace(ns: &Namespace) -> Result<(String, Labels), Invalid> {
    let labels = kept(ns.metadata.labels.as_ref(), NAMESPACE_LABELS);
    within_bound("metadata.labels", &[&labels])?;
    Ok((ns.metadata.name.clone().unwrap_or_default(), labels))
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
            app_protocol: p.app_protocol.clone().filter(|a| !a.is_empty()),
        });
    }
    if let Some(selector) = &spec.selector {
        within_bound("spec.selector", &[selector])?;
    }
    let labels = kept(meta.labels.as_ref(), SERVICE_LABELS);
    Ok(Service {
        name: meta.name.clone().unwrap_or_default(),
        namespace: meta.namespace.clone().unwrap_or_else(|| "default".into()),
        kind,
        ports,
        selector: spec.selector,
        labels,
    })
}

/// A Gateway API Gateway as either source holds it (the API's JSON, a
/// file's YAML): only what declaring a waypoint reads.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GatewayObject {
    #[serde(default)]
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub spec: GatewaySpec,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GatewaySpec {
    #[serde(default)]
    pub gateway_class_name: String,
    #[serde(default)]
    pub listeners: Vec<GatewayListener>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GatewayListener {
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub port: i32,
    #[serde(default)]
    pub protocol: String,
    #[serde(default)]
    pub allowed_routes: Option<AllowedRoutes>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AllowedRoutes {
    #[serde(default)]
    pub namespaces: Option<RouteNamespaces>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RouteNamespaces {
    #[serde(default)]
    pub from: Option<String>,
    #[serde(default)]
    pub selector: Option<k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector>,
}

/// The HBONE listener's `allowedRoutes.namespaces`; a value Gateway API
/// does not define names its field.
fn allowed_namespaces(index: usize, l: &GatewayListener) -> Result<AllowedNamespaces, Invalid> {
    let Some(ns) = l
        .allowed_routes
        .as_ref()
        .and_then(|r| r.namespaces.as_ref())
    else {
        return Ok(AllowedNamespaces::Same);
    };
    let field = format!("spec.listeners[{index}].allowedRoutes.namespaces.from");
    Ok(match ns.from.as_deref().unwrap_or("Same") {
        "Same" => AllowedNamespaces::Same,
        "All" => AllowedNamespaces::All,
        "Selector" => {
            let selector = ns.selector.clone().unwrap_or_default();
            if selector.match_expressions.is_some_and(|e| !e.is_empty()) {
                AllowedNamespaces::Selector(None)
            } else {
                AllowedNamespaces::Selector(Some(selector.match_labels.unwrap_or_default()))
            }
        }
        other => {
            return Err(invalid(
                field,
                format!("`{other}` is not one of Same, All, Selector"),
            ));
        }
    })
}

/// The Gateway's waypoint declaration. `istio.io/waypoint-for` is read
/// from its labels (as Istio sets it), else its annotations.
pub fn gateway(gw: &GatewayObject) -> Result<Gateway, Invalid> {
    let meta = &gw.metadata;
    let waypoint_for = match meta
        .labels
        .as_ref()
        .and_then(|l| l.get(WAYPOINT_FOR_LABEL))
        .map(|v| ("metadata.labels", v))
        .or_else(|| {
            meta.annotations
                .as_ref()
                .and_then(|a| a.get(WAYPOINT_FOR_LABEL))
                .map(|v| ("metadata.annotations", v))
        }) {
        None => WaypointFor::default(),
        Some((field, v)) => WaypointFor::parse(v).ok_or_else(|| {
            invalid(
                format!("{field}.{WAYPOINT_FOR_LABEL}"),
                format!("`{v}` is not one of service, workload, all, none"),
            )
        })?,
    };
    let hbone = gw.spec.listeners.iter().enumerate().find(|(_, l)| {
        l.port == i32::from(WAYPOINT_LISTENER_PORT) && l.protocol == WAYPOINT_LISTENER_PROTOCOL
    });
    Ok(Gateway {
        name: meta.name.clone().unwrap_or_default(),
        namespace: meta.namespace.clone().unwrap_or_else(|| "default".into()),
        class: gw.spec.gateway_class_name.clone(),
        waypoint_for,
        hbone_listener: hbone.is_some(),
        allowed_namespaces: match hbone {
            Some((i, l)) => allowed_namespaces(i, l)?,
            None => AllowedNamespaces::Same,
        },
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

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(yaml: &str) -> Pod {
        serde_yaml::from_str(yaml).unwrap()
    }

    const PROBED: &str = r#"
metadata:
  name: web
  namespace: shop
  labels: {app: web, version: v1, team: a}
  annotations:
    mesh.io/netns: /run/netns/web
    kubectl.kubernetes.io/last-applied-configuration: '{"a": "lot of text"}'
    prometheus.io/scrape: "true"
spec:
  containers:
  - name: app
    ports: [{name: http, containerPort: 8080}, {name: admin, containerPort: 9901}]
    readinessProbe: {httpGet: {path: /ready, port: http}}
    livenessProbe: {tcpSocket: {port: 8081}}
    startupProbe: {grpc: {port: 9000}}
    lifecycle:
      preStop: {httpGet: {path: /stop, port: admin}}
      postStart: {exec: {command: [true]}}
  - name: side
    ports: [{name: health, containerPort: 15021}]
    readinessProbe: {httpGet: {port: "7070"}}
    livenessProbe: {httpGet: {port: health, host: 10.9.9.9}}
    startupProbe: {exec: {command: [true]}}
  initContainers:
  - name: restartable
    restartPolicy: Always
    readinessProbe: {tcpSocket: {port: 8080}}
"#;

    #[test]
    fn probe_ports_come_from_every_probe_and_hook_resolved_in_their_container() {
        let w = workload(&pod(PROBED)).unwrap();
        // http (8080, also the init container's), 8081, grpc 9000, the
        // preStop hook's admin (9901), the side car's "7070"; its liveness
        // probe goes to another host, so 15021 is not one.
        assert_eq!(w.probe_ports, [7070, 8080, 8081, 9000, 9901]);
        assert!(w.is_probe_port(8081) && !w.is_probe_port(15021));
    }

    #[test]
    fn a_probe_port_name_is_resolved_only_in_its_own_container() {
        // `health` is the side container's port; the app's probe names it
        // and the kubelet fails that probe: nothing to exempt.
        let w = workload(&pod(r#"
metadata: {name: web}
spec:
  containers:
  - name: app
    readinessProbe: {httpGet: {port: health}}
  - name: side
    ports: [{name: health, containerPort: 15021}]
"#))
        .unwrap();
        assert!(w.probe_ports.is_empty(), "{:?}", w.probe_ports);
        assert_eq!(w.ports.get("health"), Some(&15021));
    }

    #[test]
    fn a_probe_port_out_of_range_names_its_field() {
        let e = workload(&pod(r#"
metadata: {name: web}
spec:
  containers:
  - {name: app}
  - name: side
    livenessProbe: {tcpSocket: {port: 70000}}
"#))
        .unwrap_err();
        assert_eq!(e.field, "spec.containers[1].livenessProbe.tcpSocket.port");
        assert_eq!(e.problem, "70000 is not a port (1-65535)");
        let e = workload(&pod(
            "metadata: {name: web}\nspec:\n  containers:\n  - {name: app, startupProbe: {grpc: {port: 0}}}\n",
        ))
        .unwrap_err();
        assert_eq!(e.field, "spec.containers[0].startupProbe.grpc.port");
    }

    #[test]
    fn only_the_annotations_the_agent_reads_are_kept_and_labels_whole() {
        let w = workload(&pod(PROBED)).unwrap();
        assert_eq!(
            w.annotations,
            Labels::from([(
                crate::model::NETNS_ANNOTATION.into(),
                "/run/netns/web".into()
            )])
        );
        assert_eq!(
            w.labels.keys().map(String::as_str).collect::<Vec<_>>(),
            ["app", "team", "version"]
        );
    }

    #[test]
    fn namespaces_keep_only_the_enrollment_label() {
        let ns: Namespace = serde_yaml::from_str(
            "metadata: {name: shop, labels: {mesh.io/dataplane-mode: enabled, kubernetes.io/metadata.name: shop, team: a}}",
        )
        .unwrap();
        let (name, labels) = namespace(&ns).unwrap();
        assert_eq!(name, "shop");
        assert_eq!(
            labels,
            Labels::from([(crate::model::DATAPLANE_LABEL.into(), "enabled".into())])
        );
    }

    fn big_labels(n: usize) -> String {
        (0..n)
            .map(|i| format!("k{i:04}: {}", "v".repeat(60)))
            .collect::<Vec<_>>()
            .join(", ")
    }

    #[test]
    fn an_object_over_the_metadata_bound_is_refused_with_its_size_and_the_bound() {
        // 300 labels of 65 bytes: 19,500 bytes.
        let labels = big_labels(300);
        let e = workload(&pod(&format!(
            "metadata: {{name: web, labels: {{{labels}}}}}\nspec: {{containers: []}}"
        )))
        .unwrap_err();
        assert_eq!(e.field, "metadata.labels and metadata.annotations");
        assert!(
            e.problem.starts_with(
                "19500 bytes of keys and values, over the agent's bound of 16384 bytes per object"
            ),
            "{}",
            e.problem
        );
        assert!(e.problem.contains("MAX_METADATA_BYTES"), "{}", e.problem);
        // Annotations the agent drops do not count: the same bytes there pass.
        let w = workload(&pod(&format!(
            "metadata: {{name: web, annotations: {{{labels}}}}}\nspec: {{containers: []}}"
        )))
        .unwrap();
        assert!(w.annotations.is_empty());
        // A pod just under the bound is kept.
        assert!(
            workload(&pod(&format!(
                "metadata: {{name: web, labels: {{{}}}}}",
                big_labels(250)
            )))
            .is_ok()
        );

        let svc: K8sService = serde_yaml::from_str(&format!(
            "metadata: {{name: s}}\nspec: {{clusterIP: 10.96.0.1, selector: {{{labels}}}, ports: [{{port: 80}}]}}"
        ))
        .unwrap();
        assert_eq!(service(&svc).unwrap_err().field, "spec.selector");
        let ns: Namespace = serde_yaml::from_str(&format!(
            "metadata: {{name: shop, labels: {{mesh.io/dataplane-mode: '{}'}}}}",
            "x".repeat(20_000)
        ))
        .unwrap();
        assert_eq!(namespace(&ns).unwrap_err().field, "metadata.labels");
    }

    #[test]
    fn a_gateway_declares_a_waypoint_by_class_listener_and_waypoint_for() {
        let gw: GatewayObject = serde_yaml::from_str(
            r#"
metadata: {name: wp, namespace: shop, labels: {istio.io/waypoint-for: workload}}
spec:
  gatewayClassName: mesh-waypoint
  listeners: [{name: mesh, port: 15008, protocol: HBONE}]
"#,
        )
        .unwrap();
        let g = gateway(&gw).unwrap();
        assert_eq!(
            (g.class.as_str(), g.waypoint_for, g.hbone_listener),
            ("mesh-waypoint", WaypointFor::Workload, true)
        );
        let http: GatewayObject = serde_yaml::from_str(
            "metadata: {name: web}\nspec: {gatewayClassName: mesh-waypoint, listeners: [{name: h, port: 80, protocol: HTTP}]}",
        )
        .unwrap();
        let g = gateway(&http).unwrap();
        assert_eq!(
            (g.waypoint_for, g.hbone_listener),
            (WaypointFor::Service, false)
        );
        let bad: GatewayObject = serde_yaml::from_str(
            "metadata: {name: wp, annotations: {istio.io/waypoint-for: everything}}",
        )
        .unwrap();
        assert_eq!(
            gateway(&bad).unwrap_err().field,
            "metadata.annotations.istio.io/waypoint-for"
        );
        let cross: GatewayObject = serde_yaml::from_str(
            r#"
metadata: {name: wp}
spec:
  gatewayClassName: mesh-waypoint
  listeners:
  - {name: other, port: 80, protocol: HTTP}
  - name: mesh
    port: 15008
    protocol: HBONE
    allowedRoutes: {namespaces: {from: Selector, selector: {matchLabels: {team: a}}}}
"#,
        )
        .unwrap();
        assert_eq!(
            gateway(&cross).unwrap().allowed_namespaces,
            AllowedNamespaces::Selector(Some([("team".to_owned(), "a".to_owned())].into()))
        );
        let typo: GatewayObject = serde_yaml::from_str(
            "metadata: {name: wp}\nspec: {listeners: [{port: 15008, protocol: HBONE, allowedRoutes: {namespaces: {from: Everyone}}}]}",
        )
        .unwrap();
        assert_eq!(
            gateway(&typo).unwrap_err().field,
            "spec.listeners[0].allowedRoutes.namespaces.from"
        );
    }
}
