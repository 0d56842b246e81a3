//! An immutable, indexed snapshot of the store: what connection handlers
//! consult. Built whole after every batch of changes, so a connection
//! decides against one consistent version of the cluster.
use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    net::{IpAddr, SocketAddr},
    sync::Arc,
};

use mesh_identity::Identity;
use mesh_policy::PolicySet;

use super::{
    model::{EndpointSlice, Gateway, Labels, Service, ServiceKind, TargetPort, Workload},
    routes::Routes,
    scope::{self, Kept, Scope},
    store::{Store, StoreSizes},
    waypoint::{
        self, DestinationKind, UseWaypoint, Waypoint, WaypointBinding, WaypointEndpoint,
        requires_waypoint,
    },
};

/// The agent settings a view depends on.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ViewSettings {
    pub trust_domain: String,
    pub root_namespace: String,
    /// `AgentConfig.waypointClass`.
    pub waypoint_class: String,
    /// Whose view it is: a node agent's holds the whole cluster, a
    /// waypoint's only what it serves (`scope`).
    pub scope: Scope,
}

/// One port of a Service and the ready endpoints behind it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct RoutePort {
    pub name: String,
    pub port: u16,
    /// `appProtocol`, when the Service names one.
    pub app_protocol: Option<String>,
    /// Ready endpoints as `pod ip:target port`, sorted.
    pub endpoints: Vec<SocketAddr>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceRoute {
    pub service: Arc<Service>,
    pub ports: Vec<RoutePort>,
    /// Where traffic to its virtual IP goes first.
    pub waypoint: WaypointBinding,
}

/// A destination that only its waypoint(s) may reach directly
/// (`mesh.io/require-waypoint`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WaypointRequirement {
    /// The Gateways (`<namespace>/<name>`) in front of it, for messages.
    pub gateways: BTreeSet<String>,
    /// Identities of their pods; empty when none is ready (then nothing
    /// may connect: the destination is down rather than unguarded).
    pub identities: BTreeSet<Identity>,
}

impl ServiceRoute {
    pub fn port(&self, port: u16) -> Option<&RoutePort> {
        self.ports.iter().find(|p| p.port == port)
    }
}

#[derive(Debug, Default)]
pub struct MeshView {
    pub trust_domain: String,
    by_ip: HashMap<IpAddr, Arc<Workload>>,
    by_uid: HashMap<String, Arc<Workload>>,
    namespaces: HashMap<String, Arc<Labels>>,
    services_by_vip: HashMap<IpAddr, Arc<ServiceRoute>>,
    services_by_name: HashMap<String, Arc<ServiceRoute>>,
    waypoint_class: String,
    gateways: HashMap<String, Arc<Gateway>>,
    waypoints: BTreeMap<String, Arc<Waypoint>>,
    required: HashMap<IpAddr, Arc<WaypointRequirement>>,
    /// HTTPFaultInjections that validated, by `<namespace>/<name>`.
    faults: HashMap<String, Arc<mesh_route::fault::Fault>>,
    /// Gateway API routes attached to Services (applied by waypoints).
    pub routes: Routes,
    /// HTTPLocalRateLimitPolicies, by `<namespace>/<name>` (enforced by
    /// waypoints).
    pub rate_limits: Vec<Arc<crate::ratelimit::RateLimitPolicy>>,
    /// RequestAuthentications, by `<namespace>/<name>` (enforced by
    /// waypoints: `mesh_waypoint::authn`).
    pub request_authentications: Vec<Arc<mesh_policy::request_authn::RequestAuthentication>>,
    /// The DestinationRule that applies to each Service, by the Service's
    /// `<namespace>/<name>` (of several, the oldest: `destination_rule::by_service`).
    destination_rules: HashMap<String, Arc<crate::destination_rule::DestinationRule>>,
    /// A waypoint's view holds no node policies (`authorization`,
    /// `peer_authentication`): node agents enforce them, not waypoints.
    pub policies: PolicySet,
    /// AuthorizationPolicies bound by `targetRefs` (enforced by waypoints).
    pub waypoint_policies: Vec<Arc<mesh_policy::l7::WaypointPolicy>>,
    /// How many objects of each kind the view holds: a node's view holds
    /// the store's; a waypoint's, what its scope kept (`ignored` is the
    /// store's either way: objects that exist and could not be used).
    pub sizes: StoreSizes,
}

impl MeshView {
    pub fn build(store: &Store, settings: &ViewSettings) -> Self {
        let kept = match &settings.scope {
            Scope::Node => None,
            Scope::Waypoint(w) => Some(scope::waypoint_keeps(
                store,
                w,
                &settings.root_namespace,
                &settings.waypoint_class,
            )),
        };
        // Whether the scope keeps the object of `key` in the set `which`
        // names (a node's view keeps everything).
        let keeps = |which: fn(&Kept) -> &BTreeSet<String>, key: &str| {
            kept.as_ref().is_none_or(|k| which(k).contains(key))
        };
        let mut by_ip = HashMap::new();
        let mut by_uid = HashMap::with_capacity(store.pods.len());
        let mut pods_by_ns: HashMap<&str, Vec<&Arc<Workload>>> = HashMap::new();
        for w in store.pods.values() {
            by_uid.insert(w.uid.clone(), w.clone());
            if w.finished {
                // Its addresses may already be another pod's.
                continue;
            }
            for ip in &w.ips {
                by_ip.insert(ip.to_canonical(), w.clone());
            }
            pods_by_ns.entry(&w.namespace).or_default().push(w);
        }
        let mut slices: HashMap<(&str, &str), Vec<&EndpointSlice>> = HashMap::new();
        for s in store.slices.values() {
            slices
                .entry((&s.namespace, &s.service))
                .or_default()
                .push(s);
        }
        let gateways: HashMap<String, Arc<Gateway>> = store
            .gateways
            .iter()
            .map(|(k, g)| (k.clone(), g.clone()))
            .collect();
        let waypoints = waypoints(&gateways, &pods_by_ns, settings);
        let mut services_by_vip = HashMap::new();
        let mut services_by_name = HashMap::with_capacity(store.services.len());
        let mut required: HashMap<IpAddr, WaypointRequirement> = HashMap::new();
        let services: HashMap<String, Arc<Service>> = store
            .services
            .iter()
            .filter(|(k, _)| keeps(|k| &k.services, k))
            .map(|(k, s)| (k.clone(), s.clone()))
            .collect();
        // In the store's order, as before: of two Services claiming one
        // virtual IP, the same one wins at every build.
        for svc in store
            .services
            .iter()
            .filter(|(k, _)| keeps(|k| &k.services, k))
            .map(|(_, s)| s)
        {
            let own_slices = slices
                .get(&(svc.namespace.as_str(), svc.name.as_str()))
                .map(Vec::as_slice)
                .unwrap_or_default();
            let pods = pods_by_ns
                .get(svc.namespace.as_str())
                .map(Vec::as_slice)
                .unwrap_or_default();
            let ns_labels = store.namespaces.get(&svc.namespace).map(|l| l.as_ref());
            let wanted = UseWaypoint::of_object(&svc.labels, &svc.namespace, ns_labels);
            let binding = waypoint::bind(
                wanted,
                DestinationKind::Service,
                waypoint::Origin {
                    namespace: &svc.namespace,
                    labels: ns_labels,
                },
                &settings.waypoint_class,
                |k| gateways.get(k),
                |k| waypoints.get(k),
            );
            let route = Arc::new(ServiceRoute {
                service: svc.clone(),
                ports: route_ports(svc, own_slices, pods),
                waypoint: binding,
            });
            // Only node agents ask which addresses require a waypoint.
            if kept.is_none() && requires_waypoint(&svc.labels, ns_labels) {
                // Every address behind it, ready or not: a pod that is
                // starting or failing its probe is still reachable.
                require(
                    &mut required,
                    &route.waypoint,
                    all_addresses(svc, own_slices, pods),
                );
            }
            if let ServiceKind::ClusterIp(vips) = &svc.kind {
                for vip in vips {
                    services_by_vip.insert(vip.to_canonical(), route.clone());
                }
            }
            services_by_name.insert(svc.key(), route);
        }
        let namespaces: HashMap<String, Arc<Labels>> = store
            .namespaces
            .iter()
            .map(|(name, labels)| (name.clone(), labels.clone()))
            .collect();
        // Pods that use a workload waypoint in a namespace that requires it.
        for w in by_uid.values().filter(|_| kept.is_none()) {
            let ns_labels = namespaces.get(&w.namespace).map(|l| l.as_ref());
            if w.finished
                || !requires_waypoint(&w.labels, ns_labels)
                || waypoint::is_waypoint_pod(w, |k| waypoints.contains_key(k))
            {
                continue;
            }
            let binding = workload_binding(w, ns_labels, settings, &gateways, &waypoints);
            // A pod no workload waypoint serves is still reachable through
            // its Services' waypoints (added above); only those may reach it.
            let covered = w
                .ips
                .iter()
                .any(|ip| required.contains_key(&ip.to_canonical()));
            if binding == WaypointBinding::Direct && covered {
                continue;
            }
            require(&mut required, &binding, w.ips.iter().copied());
        }
        let http_routes = store
            .http_routes
            .iter()
            .filter(|(k, _)| keeps(|k| &k.http_routes, k));
        let grpc_routes = store
            .grpc_routes
            .iter()
            .filter(|(k, _)| keeps(|k| &k.grpc_routes, k));
        let routes = Routes::build(http_routes.chain(grpc_routes).map(|(_, r)| r), &services);
        let waypoint_policies: Vec<_> = store
            .authorization
            .iter()
            .filter(|(k, _)| keeps(|k| &k.authorization, k))
            .filter_map(|(_, p)| p.waypoint.clone())
            .collect();
        let sizes = match &kept {
            None => store.sizes(),
            Some(k) => StoreSizes {
                pods: store.pods.len(),
                services: services.len(),
                endpoint_slices: store
                    .slices
                    .values()
                    .filter(|s| {
                        k.services
                            .contains(&format!("{}/{}", s.namespace, s.service))
                    })
                    .count(),
                namespaces: store.namespaces.len(),
                authorization_policies: waypoint_policies.len(),
                peer_authentications: 0,
                gateways: store.gateways.len(),
                routes: k.http_routes.len() + k.grpc_routes.len(),
                ignored: store.sizes().ignored,
            },
        };
        Self {
            trust_domain: settings.trust_domain.clone(),
            by_ip,
            by_uid,
            namespaces,
            services_by_vip,
            services_by_name,
            waypoint_class: settings.waypoint_class.clone(),
            gateways,
            waypoints,
            required: required
                .into_iter()
                .map(|(ip, r)| (ip, Arc::new(r)))
                .collect(),
            faults: store
                .faults
                .iter()
                .filter(|(k, _)| keeps(|k| &k.faults, k))
                .map(|(k, f)| (k.clone(), f.clone()))
                .collect(),
            routes,
            rate_limits: store
                .rate_limits
                .iter()
                .filter(|(k, _)| keeps(|k| &k.rate_limits, k))
                .map(|(_, p)| p.clone())
                .collect(),
            request_authentications: store
                .request_authentications
                .iter()
                .filter(|(k, _)| keeps(|k| &k.request_authentications, k))
                .map(|(_, p)| p.clone())
                .collect(),
            destination_rules: crate::destination_rule::by_service(
                store
                    .destination_rules
                    .iter()
                    .filter(|(k, _)| keeps(|k| &k.destination_rules, k))
                    .map(|(_, r)| r),
            ),
            policies: PolicySet {
                root_namespace: settings.root_namespace.clone(),
                authorization: store
                    .authorization
                    .values()
                    .filter(|_| kept.is_none())
                    .filter_map(|p| p.node.clone())
                    .collect(),
                peer_authentication: store
                    .peer_authentication
                    .values()
                    .filter(|_| kept.is_none())
                    .map(|p| p.as_ref().clone())
                    .collect(),
                sync: store.policy_sync.clone(),
            },
            waypoint_policies,
            sizes,
        }
    }

    pub fn workload(&self, ip: IpAddr) -> Option<&Arc<Workload>> {
        self.by_ip.get(&ip.to_canonical())
    }

    /// The HTTPFaultInjection a rule names, if it exists and validated.
    pub fn fault(&self, r: &mesh_route::fault::FaultRef) -> Option<&Arc<mesh_route::fault::Fault>> {
        self.faults.get(&format!("{}/{}", r.namespace, r.name))
    }

    /// The DestinationRule that applies to Service `<namespace>/<name>`.
    pub fn destination_rule(
        &self,
        service_key: &str,
    ) -> Option<&Arc<crate::destination_rule::DestinationRule>> {
        self.destination_rules.get(service_key)
    }

    pub fn workload_by_uid(&self, uid: &str) -> Option<&Arc<Workload>> {
        self.by_uid.get(uid)
    }

    pub fn workloads(&self) -> impl Iterator<Item = &Arc<Workload>> {
        self.by_uid.values()
    }

    pub fn namespace_labels(&self, namespace: &str) -> Option<&Labels> {
        self.namespaces.get(namespace).map(|l| l.as_ref())
    }

    /// Whether the pod is in the mesh (its own or its namespace's label).
    /// A waypoint's pods never are: they terminate HBONE themselves.
    pub fn is_enrolled(&self, w: &Workload) -> bool {
        w.wants_mesh(self.namespace_labels(&w.namespace))
            && !waypoint::is_waypoint_pod(w, |k| self.waypoints.contains_key(k))
    }

    /// Whether `w` is one of a waypoint's pods.
    pub fn is_waypoint_pod(&self, w: &Workload) -> bool {
        waypoint::is_waypoint_pod(w, |k| self.waypoints.contains_key(k))
    }

    /// Where traffic to the pod's own address goes first (waypoints for
    /// workloads: `istio.io/waypoint-for: workload|all`).
    pub fn waypoint_for_workload(&self, w: &Workload) -> WaypointBinding {
        workload_binding(
            w,
            self.namespace_labels(&w.namespace),
            &ViewSettings {
                waypoint_class: self.waypoint_class.clone(),
                ..ViewSettings::default()
            },
            &self.gateways,
            &self.waypoints,
        )
    }

    /// The waypoints (Gateways of the waypoint class with an HBONE
    /// listener) by `<namespace>/<name>`.
    pub fn waypoints(&self) -> impl Iterator<Item = &Arc<Waypoint>> {
        self.waypoints.values()
    }

    pub fn waypoint(&self, key: &str) -> Option<&Arc<Waypoint>> {
        self.waypoints.get(key)
    }

    /// Whether only a waypoint may connect to this address directly, and
    /// which.
    pub fn waypoint_requirement(&self, ip: IpAddr) -> Option<&Arc<WaypointRequirement>> {
        self.required.get(&ip.to_canonical())
    }

    /// The identity a meshed destination must prove; `None` means the
    /// address is not in the mesh and gets plaintext passthrough.
    pub fn expected_identity(&self, ip: IpAddr) -> Option<Identity> {
        let w = self.workload(ip).filter(|w| self.is_enrolled(w))?;
        Identity::new(&self.trust_domain, &w.namespace, &w.service_account).ok()
    }

    /// The Service whose virtual IP this is.
    pub fn service_at(&self, vip: IpAddr) -> Option<&Arc<ServiceRoute>> {
        self.services_by_vip.get(&vip.to_canonical())
    }

    /// A Service by `<namespace>/<name>`.
    pub fn service(&self, key: &str) -> Option<&Arc<ServiceRoute>> {
        self.services_by_name.get(key)
    }

    pub fn services(&self) -> impl Iterator<Item = &Arc<ServiceRoute>> {
        self.services_by_name.values()
    }

    /// This node's pods that are in the mesh and have addresses.
    pub fn enrolled_on<'a>(&'a self, node: &'a str) -> impl Iterator<Item = &'a Arc<Workload>> {
        self.by_uid.values().filter(move |w| {
            w.node.as_deref() == Some(node) && !w.ips.is_empty() && self.is_enrolled(w)
        })
    }
}

/// Every Gateway of the waypoint class with an HBONE listener, with its
/// ready pods (labelled with its name, in its namespace).
fn waypoints(
    gateways: &HashMap<String, Arc<Gateway>>,
    pods_by_ns: &HashMap<&str, Vec<&Arc<Workload>>>,
    settings: &ViewSettings,
) -> BTreeMap<String, Arc<Waypoint>> {
    gateways
        .iter()
        .filter(|(_, g)| g.class == settings.waypoint_class && g.hbone_listener)
        .map(|(key, g)| {
            // A waypoint's pods run as its service account (named after
            // the Gateway, as Istio's are): a pod that only carries the
            // label is not one of them (`waypoint::is_waypoint_pod`).
            let identity = Identity::new(&settings.trust_domain, &g.namespace, &g.name).ok();
            let mut endpoints: Vec<WaypointEndpoint> = pods_by_ns
                .get(g.namespace.as_str())
                .into_iter()
                .flatten()
                .filter(|p| {
                    p.ready
                        && p.service_account == g.name
                        && p.labels.get(crate::model::GATEWAY_NAME_LABEL) == Some(&g.name)
                })
                .filter_map(|p| {
                    let identity = identity.clone()?;
                    Some(p.ips.iter().map(move |ip| WaypointEndpoint {
                        address: SocketAddr::new(*ip, crate::model::WAYPOINT_LISTENER_PORT),
                        identity: identity.clone(),
                    }))
                })
                .flatten()
                .collect();
            endpoints.sort_by_key(|e| e.address);
            (
                key.clone(),
                Arc::new(Waypoint {
                    gateway: g.clone(),
                    endpoints,
                }),
            )
        })
        .collect()
}

fn workload_binding(
    w: &Workload,
    ns_labels: Option<&Labels>,
    settings: &ViewSettings,
    gateways: &HashMap<String, Arc<Gateway>>,
    waypoints: &BTreeMap<String, Arc<Waypoint>>,
) -> WaypointBinding {
    let wanted = UseWaypoint::of_object(&w.labels, &w.namespace, ns_labels);
    waypoint::bind(
        wanted,
        DestinationKind::Workload,
        waypoint::Origin {
            namespace: &w.namespace,
            labels: ns_labels,
        },
        &settings.waypoint_class,
        |k| gateways.get(k),
        |k| waypoints.get(k),
    )
}

/// Records that `addresses` may be reached directly only from the
/// binding's waypoint (or from nothing, if it cannot be used or none is
/// bound: requiring a waypoint that is not there refuses, it does not
/// lapse).
fn require(
    required: &mut HashMap<IpAddr, WaypointRequirement>,
    binding: &WaypointBinding,
    addresses: impl Iterator<Item = IpAddr>,
) {
    let (gateway, identities): (String, Vec<Identity>) = match binding {
        WaypointBinding::Direct => (NO_WAYPOINT_BOUND.to_owned(), Vec::new()),
        WaypointBinding::Through(w) => (
            w.gateway.key(),
            w.endpoints.iter().map(|e| e.identity.clone()).collect(),
        ),
        WaypointBinding::Unusable { gateway, .. } => (gateway.clone(), Vec::new()),
    };
    for ip in addresses {
        let r = required.entry(ip.to_canonical()).or_default();
        r.gateways.insert(gateway.clone());
        r.identities.extend(identities.iter().cloned());
    }
}

/// What `WaypointRequirement::gateways` says when a destination requires
/// a waypoint and none is bound to it.
pub const NO_WAYPOINT_BOUND: &str = "no waypoint is bound (istio.io/use-waypoint)";

/// Every address behind a Service, ready or not: its slices' endpoints,
/// else the pods its selector picks.
fn all_addresses<'a>(
    svc: &'a Service,
    slices: &'a [&'a EndpointSlice],
    pods: &'a [&'a Arc<Workload>],
) -> impl Iterator<Item = IpAddr> + 'a {
    let from_slices = slices
        .iter()
        .flat_map(|s| s.endpoints.iter())
        .flat_map(|e| e.addresses.iter().copied());
    let selector = svc.selector.as_ref().filter(|s| !s.is_empty());
    let from_pods = pods
        .iter()
        .filter(move |p| {
            slices.is_empty()
                && selector.is_some_and(|sel| sel.iter().all(|(k, v)| p.labels.get(k) == Some(v)))
        })
        .flat_map(|p| p.ips.iter().copied());
    from_slices.chain(from_pods)
}

/// Endpoints per service port: from the Service's EndpointSlices when it
/// has any (what Kubernetes' controller publishes), else from the pods its
/// selector picks (local files need not spell out slices).
fn route_ports(
    svc: &Service,
    slices: &[&EndpointSlice],
    pods: &[&Arc<Workload>],
) -> Vec<RoutePort> {
    svc.ports
        .iter()
        .map(|sp| {
            let mut endpoints = BTreeSet::new();
            if !slices.is_empty() {
                for slice in slices {
                    let Some((_, target)) = slice.ports.iter().find(|(n, _)| *n == sp.name) else {
                        continue;
                    };
                    for e in slice.endpoints.iter().filter(|e| e.ready) {
                        endpoints
                            .extend(e.addresses.iter().map(|ip| SocketAddr::new(*ip, *target)));
                    }
                }
            } else if let Some(selector) = svc.selector.as_ref().filter(|s| !s.is_empty()) {
                for pod in pods {
                    if !pod.ready || !selector.iter().all(|(k, v)| pod.labels.get(k) == Some(v)) {
                        continue;
                    }
                    let target = match &sp.target {
                        TargetPort::Number(n) => Some(*n),
                        TargetPort::Name(name) => pod.ports.get(name).copied(),
                    };
                    if let Some(target) = target {
                        endpoints.extend(pod.ips.iter().map(|ip| SocketAddr::new(*ip, target)));
                    }
                }
            }
            RoutePort {
                name: sp.name.clone(),
                port: sp.port,
                app_protocol: sp.app_protocol.clone(),
                endpoints: endpoints.into_iter().collect(),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use crate::NodeConfig;

    const FILE: &str = r#"
kind: AgentConfig
nodeName: n1
---
apiVersion: v1
kind: Namespace
metadata: {name: shop, labels: {mesh.io/dataplane-mode: enabled}}
---
apiVersion: v1
kind: Pod
metadata: {name: web-1, namespace: shop, labels: {app: web}, annotations: {mesh.io/netns: /run/netns/w1}}
spec:
  nodeName: n1
  containers: [{name: c, ports: [{name: http, containerPort: 8080}]}]
status: {podIPs: [{ip: 10.1.0.1}]}
---
apiVersion: v1
kind: Pod
metadata: {name: web-2, namespace: shop, labels: {app: web}}
spec:
  nodeName: n2
  containers: [{name: c, ports: [{name: http, containerPort: 9090}]}]
status: {podIPs: [{ip: 10.1.0.2}]}
---
apiVersion: v1
kind: Pod
metadata: {name: web-3, namespace: shop, labels: {app: web}}
spec: {nodeName: n2, containers: [{name: c}]}
status:
  podIPs: [{ip: 10.1.0.3}]
  conditions: [{type: Ready, status: "False"}]
---
apiVersion: v1
kind: Pod
metadata: {name: old, namespace: shop, labels: {app: web}}
spec: {nodeName: n2, containers: [{name: c}]}
status: {phase: Succeeded, podIPs: [{ip: 10.1.0.1}]}
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: shop}
spec:
  clusterIP: 10.96.0.1
  selector: {app: web}
  ports:
  - {name: http, port: 80, targetPort: http}
  - {name: direct, port: 81, targetPort: 7000}
---
apiVersion: v1
kind: Service
metadata: {name: db, namespace: shop}
spec: {clusterIP: None, selector: {app: db}, ports: [{port: 5432}]}
---
apiVersion: v1
kind: Service
metadata: {name: ext, namespace: shop}
spec: {type: ExternalName, externalName: example.com}
---
apiVersion: v1
kind: Service
metadata: {name: pinned, namespace: shop}
spec: {clusterIP: 10.96.0.2, ports: [{name: p, port: 80}]}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: pinned-1, namespace: shop, labels: {kubernetes.io/service-name: pinned}}
addressType: IPv4
ports: [{name: p, port: 8443}]
endpoints:
- addresses: [10.1.0.2]
- addresses: [10.1.0.3]
  conditions: {ready: false}
"#;

    fn view() -> super::MeshView {
        NodeConfig::parse(Path::new("f.yaml"), FILE, None)
            .unwrap()
            .view()
    }

    fn addrs(v: &[std::net::SocketAddr]) -> Vec<String> {
        v.iter().map(ToString::to_string).collect()
    }

    #[test]
    fn selector_endpoints_resolve_named_ports_and_skip_unready() {
        let v = view();
        let web = v.service_at("10.96.0.1".parse().unwrap()).unwrap();
        assert_eq!(
            addrs(&web.port(80).unwrap().endpoints),
            ["10.1.0.1:8080", "10.1.0.2:9090"]
        );
        // Numeric targets apply to every ready pod; not-ready web-3 gets nothing.
        assert_eq!(
            addrs(&web.port(81).unwrap().endpoints),
            ["10.1.0.1:7000", "10.1.0.2:7000"]
        );
        assert!(web.port(82).is_none());
    }

    #[test]
    fn slices_win_over_selectors_and_keep_only_ready_endpoints() {
        let v = view();
        let pinned = v.service("shop/pinned").unwrap();
        assert_eq!(
            addrs(&pinned.port(80).unwrap().endpoints),
            ["10.1.0.2:8443"]
        );
    }

    #[test]
    fn headless_and_external_name_have_no_virtual_ip() {
        let v = view();
        assert!(v.service("shop/db").is_some() && v.service("shop/ext").is_some());
        assert_eq!(v.services().count(), 4);
        assert!(v.service_at("10.96.0.1".parse().unwrap()).is_some());
        assert!(v.service_at("10.1.0.9".parse().unwrap()).is_none());
    }

    #[test]
    fn finished_pods_do_not_own_addresses_and_enrollment_follows_labels() {
        let v = view();
        assert_eq!(
            v.workload("10.1.0.1".parse().unwrap()).unwrap().name,
            "web-1"
        );
        assert!(v.workload_by_uid("local:shop/old").is_some());
        let here: Vec<_> = v.enrolled_on("n1").map(|w| w.name.clone()).collect();
        assert_eq!(here, ["web-1"]);
        assert_eq!(
            v.expected_identity("10.1.0.2".parse().unwrap())
                .unwrap()
                .to_string(),
            "spiffe://cluster.local/ns/shop/sa/default"
        );
    }

    const WAYPOINTS: &str = r#"
kind: AgentConfig
nodeName: n1
---
apiVersion: v1
kind: Namespace
metadata: {name: shop, labels: {mesh.io/dataplane-mode: enabled, istio.io/use-waypoint: wp}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: wp, namespace: shop, labels: {istio.io/waypoint-for: all}}
spec:
  gatewayClassName: mesh-waypoint
  listeners: [{name: mesh, port: 15008, protocol: HBONE}]
---
apiVersion: v1
kind: Pod
metadata: {name: wp-0, namespace: shop, labels: {gateway.networking.k8s.io/gateway-name: wp}}
spec: {nodeName: n2, serviceAccountName: wp, containers: [{name: c}]}
status: {podIPs: [{ip: 10.1.0.9}]}
---
apiVersion: v1
kind: Pod
metadata: {name: web-1, namespace: shop, labels: {app: web}}
spec: {nodeName: n2, containers: [{name: c}]}
status: {podIPs: [{ip: 10.1.0.1}]}
---
apiVersion: v1
kind: Pod
metadata: {name: db-1, namespace: shop, labels: {app: db, istio.io/use-waypoint: none}}
spec: {nodeName: n2, containers: [{name: c}]}
status: {podIPs: [{ip: 10.1.0.2}]}
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: shop, labels: {mesh.io/require-waypoint: "true"}}
spec:
  clusterIP: 10.96.0.1
  selector: {app: web}
  ports: [{name: http, port: 80, targetPort: 8080, appProtocol: http}]
---
apiVersion: v1
kind: Service
metadata: {name: db, namespace: shop, labels: {istio.io/use-waypoint: none}}
spec: {clusterIP: 10.96.0.2, selector: {app: db}, ports: [{port: 5432}]}
---
apiVersion: v1
kind: Service
metadata: {name: lost, namespace: shop, labels: {istio.io/use-waypoint: nowhere}}
spec: {clusterIP: 10.96.0.3, selector: {app: db}, ports: [{port: 5432}]}
"#;

    #[test]
    fn services_and_pods_bind_to_their_namespaces_waypoint_unless_they_opt_out() {
        use crate::waypoint::{Unusable, WaypointBinding};
        let v = NodeConfig::parse(Path::new("f.yaml"), WAYPOINTS, None)
            .unwrap()
            .view();
        let wp = v.waypoint("shop/wp").unwrap();
        assert_eq!(addrs(&[wp.endpoints[0].address]), ["10.1.0.9:15008"]);
        assert_eq!(
            wp.endpoints[0].identity.to_string(),
            "spiffe://cluster.local/ns/shop/sa/wp"
        );
        let web = v.service("shop/web").unwrap();
        assert_eq!(web.waypoint, WaypointBinding::Through(wp.clone()));
        assert_eq!(web.ports[0].app_protocol.as_deref(), Some("http"));
        assert_eq!(
            v.service("shop/db").unwrap().waypoint,
            WaypointBinding::Direct
        );
        assert_eq!(
            v.service("shop/lost").unwrap().waypoint,
            WaypointBinding::Unusable {
                gateway: "shop/nowhere".into(),
                why: Unusable::NoSuchGateway
            }
        );
        let pod = |ip: &str| v.workload(ip.parse().unwrap()).unwrap().clone();
        assert_eq!(
            v.waypoint_for_workload(&pod("10.1.0.1")),
            WaypointBinding::Through(wp.clone())
        );
        assert_eq!(
            v.waypoint_for_workload(&pod("10.1.0.2")),
            WaypointBinding::Direct
        );
        // The waypoint's own pod is never enrolled, whatever its namespace says.
        assert!(v.is_waypoint_pod(&pod("10.1.0.9")));
        assert!(!v.is_enrolled(&pod("10.1.0.9")));
        assert!(v.is_enrolled(&pod("10.1.0.1")));
    }

    #[test]
    fn a_required_waypoint_names_the_only_identities_that_may_connect_directly() {
        let v = NodeConfig::parse(Path::new("f.yaml"), WAYPOINTS, None)
            .unwrap()
            .view();
        let r = v.waypoint_requirement("10.1.0.1".parse().unwrap()).unwrap();
        assert_eq!(r.gateways.iter().collect::<Vec<_>>(), ["shop/wp"]);
        assert_eq!(
            r.identities
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>(),
            ["spiffe://cluster.local/ns/shop/sa/wp"]
        );
        assert!(
            v.waypoint_requirement("10.1.0.2".parse().unwrap())
                .is_none()
        );
    }

    #[test]
    fn requiring_a_waypoint_covers_unready_pods_ignores_impostors_and_fails_closed_unbound() {
        let text = WAYPOINTS.to_owned()
            + r#"
---
apiVersion: v1
kind: Pod
metadata: {name: web-2, namespace: shop, labels: {app: web}}
spec: {nodeName: n2, containers: [{name: c}]}
status:
  podIPs: [{ip: 10.1.0.3}]
  conditions: [{type: Ready, status: "False"}]
---
apiVersion: v1
kind: Pod
metadata: {name: impostor, namespace: shop, labels: {gateway.networking.k8s.io/gateway-name: wp}}
spec: {nodeName: n2, serviceAccountName: default, containers: [{name: c}]}
status: {podIPs: [{ip: 10.1.0.4}]}
---
apiVersion: v1
kind: Service
metadata: {name: bare, namespace: shop, labels: {mesh.io/require-waypoint: "true", istio.io/use-waypoint: none}}
spec: {clusterIP: 10.96.0.4, selector: {app: db}, ports: [{port: 5432}]}
"#;
        let v = NodeConfig::parse(Path::new("f.yaml"), &text, None)
            .unwrap()
            .view();
        // Not ready, not an endpoint, still guarded.
        assert!(
            v.service("shop/web").unwrap().ports[0]
                .endpoints
                .iter()
                .all(|e| e.ip() != "10.1.0.3".parse::<std::net::IpAddr>().unwrap())
        );
        let r = v.waypoint_requirement("10.1.0.3".parse().unwrap()).unwrap();
        assert_eq!(r.identities.len(), 1);
        // The label without the waypoint's service account: neither an
        // endpoint of the waypoint nor out of the mesh.
        let impostor = v.workload("10.1.0.4".parse().unwrap()).unwrap();
        assert!(v.is_enrolled(impostor) && !v.is_waypoint_pod(impostor));
        assert_eq!(v.waypoint("shop/wp").unwrap().endpoints.len(), 1);
        // Required, but no waypoint bound: nothing may connect.
        let r = v.waypoint_requirement("10.1.0.2".parse().unwrap()).unwrap();
        assert!(r.identities.is_empty());
        assert!(r.gateways.contains(super::NO_WAYPOINT_BOUND));
    }
}
