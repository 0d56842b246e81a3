//! An immutable, indexed snapshot of the store: what connection handlers
//! consult. Built whole after every batch of changes, so a connection
//! decides against one consistent version of the cluster.
use std::{
    collections::{BTreeSet, HashMap},
    net::{IpAddr, SocketAddr},
    sync::Arc,
};

use mesh_identity::Identity;
use mesh_policy::PolicySet;

use super::{
    model::{EndpointSlice, Labels, Service, ServiceKind, TargetPort, Workload},
    store::{Store, StoreSizes},
};

/// The agent settings a view depends on.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ViewSettings {
    pub trust_domain: String,
    pub root_namespace: String,
}

/// One port of a Service and the ready endpoints behind it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct RoutePort {
    pub name: String,
    pub port: u16,
    /// Ready endpoints as `pod ip:target port`, sorted.
    pub endpoints: Vec<SocketAddr>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceRoute {
    pub service: Arc<Service>,
    pub ports: Vec<RoutePort>,
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
    pub policies: PolicySet,
    pub sizes: StoreSizes,
}

impl MeshView {
    pub fn build(store: &Store, settings: &ViewSettings) -> Self {
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
        let mut services_by_vip = HashMap::new();
        let mut services_by_name = HashMap::with_capacity(store.services.len());
        for svc in store.services.values() {
            let own_slices = slices
                .get(&(svc.namespace.as_str(), svc.name.as_str()))
                .map(Vec::as_slice)
                .unwrap_or_default();
            let pods = pods_by_ns
                .get(svc.namespace.as_str())
                .map(Vec::as_slice)
                .unwrap_or_default();
            let route = Arc::new(ServiceRoute {
                service: svc.clone(),
                ports: route_ports(svc, own_slices, pods),
            });
            if let ServiceKind::ClusterIp(vips) = &svc.kind {
                for vip in vips {
                    services_by_vip.insert(vip.to_canonical(), route.clone());
                }
            }
            services_by_name.insert(svc.key(), route);
        }
        let namespaces = store
            .namespaces
            .iter()
            .map(|(name, labels)| (name.clone(), labels.clone()))
            .collect();
        Self {
            trust_domain: settings.trust_domain.clone(),
            by_ip,
            by_uid,
            namespaces,
            services_by_vip,
            services_by_name,
            policies: PolicySet {
                root_namespace: settings.root_namespace.clone(),
                authorization: store
                    .authorization
                    .values()
                    .filter_map(|p| p.as_ref().clone())
                    .collect(),
                peer_authentication: store
                    .peer_authentication
                    .values()
                    .map(|p| p.as_ref().clone())
                    .collect(),
                sync: store.policy_sync.clone(),
            },
            sizes: store.sizes(),
        }
    }

    pub fn workload(&self, ip: IpAddr) -> Option<&Arc<Workload>> {
        self.by_ip.get(&ip.to_canonical())
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
    pub fn is_enrolled(&self, w: &Workload) -> bool {
        w.wants_mesh(self.namespace_labels(&w.namespace))
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
}
