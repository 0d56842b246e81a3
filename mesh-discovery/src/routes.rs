//! Gateway API routes as the view holds them: for each Service port, the
//! table of its producer routes (in the Service's own namespace, for every
//! client) and one table per consumer namespace (routes in another
//! namespace, for that namespace's clients only).
use std::{
    collections::{BTreeMap, HashMap},
    sync::Arc,
};

use mesh_route::{
    CompiledRoute, RouteTable,
    table::{ServicePort, route_order},
};

use crate::model::Service;

/// The routes of one Service port.
#[derive(Debug, Default)]
pub struct PortRoutes {
    /// Routes in the Service's namespace.
    pub producer: RouteTable,
    /// Routes in other namespaces, by namespace.
    pub consumers: BTreeMap<String, RouteTable>,
}

impl PortRoutes {
    /// The table a client in `client_namespace` is routed by, `None` when
    /// no route applies (the Service's default: its own endpoints). As in
    /// GAMMA, a namespace's consumer routes take the place of the
    /// producer's for its clients: the consumer chose how it calls.
    pub fn for_client(&self, client_namespace: Option<&str>) -> Option<&RouteTable> {
        if let Some(t) = client_namespace.and_then(|ns| self.consumers.get(ns)) {
            return Some(t);
        }
        (!self.producer.routes().is_empty()).then_some(&self.producer)
    }
}

/// Namespace → Service name → port → routes.
type PortsByService = HashMap<String, HashMap<String, BTreeMap<u16, Arc<PortRoutes>>>>;

/// Every Service port's routes.
#[derive(Debug, Default)]
pub struct Routes {
    by_port: PortsByService,
    /// `<namespace>/<name>` of a Service → the routes attached to any of
    /// its ports (for `mesh inspect`), in table order.
    by_service: HashMap<String, Vec<Arc<CompiledRoute>>>,
}

impl Routes {
    pub fn build<'r>(
        routes: impl IntoIterator<Item = &'r Arc<CompiledRoute>>,
        services: &HashMap<String, Arc<Service>>,
    ) -> Routes {
        // (namespace, Service, port) → (route namespace or None for producer) → routes
        type Groups<'a> = HashMap<
            (&'a str, &'a str, u16),
            BTreeMap<Option<&'a str>, Vec<&'a Arc<CompiledRoute>>>,
        >;
        let mut groups: Groups<'_> = HashMap::new();
        let mut by_service: HashMap<String, Vec<Arc<CompiledRoute>>> = HashMap::new();
        for route in routes {
            let mut attached_to = Vec::new();
            for parent in &route.parents {
                let namespace = parent.namespace.as_deref().unwrap_or(&route.id.namespace);
                let svc_key = format!("{namespace}/{}", parent.name);
                let Some(svc) = services.get(&svc_key) else {
                    continue;
                };
                for p in &svc.ports {
                    let port = ServicePort {
                        namespace: svc.namespace.clone(),
                        name: svc.name.clone(),
                        port: p.port,
                        port_name: (!p.name.is_empty()).then(|| p.name.clone()),
                    };
                    if !port.is_parent(&route.id.namespace, parent) {
                        continue;
                    }
                    let audience = (route.id.namespace != svc.namespace)
                        .then_some(route.id.namespace.as_str());
                    let list = groups
                        .entry((svc.namespace.as_str(), svc.name.as_str(), p.port))
                        .or_default()
                        .entry(audience)
                        .or_default();
                    // Two parentRefs naming the same port attach once.
                    if !list.iter().any(|r| Arc::ptr_eq(r, route)) {
                        list.push(route);
                    }
                    if !attached_to.contains(&svc_key) {
                        attached_to.push(svc_key.clone());
                    }
                }
            }
            for svc in attached_to {
                by_service.entry(svc).or_default().push(route.clone());
            }
        }
        let mut by_port: PortsByService = HashMap::new();
        for ((namespace, name, number), audiences) in groups {
            let mut port = PortRoutes::default();
            for (audience, list) in audiences {
                let table = RouteTable::new(list.into_iter().cloned());
                match audience {
                    None => port.producer = table,
                    Some(ns) => {
                        port.consumers.insert(ns.to_owned(), table);
                    }
                }
            }
            by_port
                .entry(namespace.to_owned())
                .or_default()
                .entry(name.to_owned())
                .or_default()
                .insert(number, Arc::new(port));
        }
        for list in by_service.values_mut() {
            list.sort_by(|a, b| route_order(a, b));
        }
        Routes {
            by_port,
            by_service,
        }
    }

    /// The routes of a Service port (`<namespace>/<name>`), `None` when
    /// none is attached.
    pub fn port(&self, service: &str, port: u16) -> Option<&Arc<PortRoutes>> {
        let (namespace, name) = service.split_once('/')?;
        self.port_of(namespace, name, port)
    }

    /// `port`, without building the Service's key: what the waypoint asks
    /// for every request.
    pub fn port_of(&self, namespace: &str, name: &str, port: u16) -> Option<&Arc<PortRoutes>> {
        self.by_port.get(namespace)?.get(name)?.get(&port)
    }

    /// Every route attached to a port of the Service.
    pub fn of_service(&self, service: &str) -> &[Arc<CompiledRoute>] {
        self.by_service
            .get(service)
            .map(Vec::as_slice)
            .unwrap_or_default()
    }

    /// How many Service ports have routes.
    pub fn ports(&self) -> usize {
        self.by_port
            .values()
            .flat_map(HashMap::values)
            .map(BTreeMap::len)
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use mesh_route::{compile_http_route, spec::HttpRoute};

    use super::*;
    use crate::model::{ServiceKind, ServicePort as ModelPort, TargetPort};

    fn service(ns: &str, name: &str, ports: &[(&str, u16)]) -> (String, Arc<Service>) {
        let svc = Service {
            name: name.into(),
            namespace: ns.into(),
            kind: ServiceKind::ClusterIp(vec![]),
            ports: ports
                .iter()
                .map(|(n, p)| ModelPort {
                    name: (*n).into(),
                    port: *p,
                    target: TargetPort::Number(*p),
                    app_protocol: None,
                })
                .collect(),
            selector: None,
            labels: Default::default(),
        };
        (svc.key(), Arc::new(svc))
    }

    fn route(ns: &str, name: &str, parent: &str) -> Arc<CompiledRoute> {
        let r: HttpRoute = serde_json::from_str(&format!(
            r#"{{"metadata":{{"name":"{name}","namespace":"{ns}"}},"spec":{{"parentRefs":[{parent}]}}}}"#
        ))
        .unwrap();
        Arc::new(compile_http_route(&r).unwrap())
    }

    fn names(t: &RouteTable) -> Vec<String> {
        t.routes().iter().map(|r| r.id.to_string()).collect()
    }

    #[test]
    fn producer_routes_for_all_consumer_routes_for_their_namespace() {
        let services: HashMap<_, _> =
            [service("mesh", "echo", &[("http", 80), ("alt", 8080)])].into();
        let routes = [
            route(
                "mesh",
                "p",
                r#"{"group":"","kind":"Service","name":"echo"}"#,
            ),
            route(
                "client",
                "c",
                r#"{"group":"","kind":"Service","name":"echo","namespace":"mesh","port":80}"#,
            ),
        ];
        let built = Routes::build(routes.iter(), &services);
        let p80 = built.port("mesh/echo", 80).unwrap();
        assert_eq!(names(p80.for_client(Some("mesh")).unwrap()), ["mesh/p"]);
        assert_eq!(names(p80.for_client(None).unwrap()), ["mesh/p"]);
        assert_eq!(names(p80.for_client(Some("client")).unwrap()), ["client/c"]);
        // The consumer route names port 80 only.
        let p8080 = built.port("mesh/echo", 8080).unwrap();
        assert_eq!(names(p8080.for_client(Some("client")).unwrap()), ["mesh/p"]);
        assert_eq!(built.of_service("mesh/echo").len(), 2);
        assert_eq!(built.ports(), 2);
    }

    #[test]
    fn only_routes_whose_parent_is_the_port_attach() {
        let services: HashMap<_, _> =
            [service("mesh", "echo", &[("http", 80), ("alt", 8080)])].into();
        let routes = [
            route(
                "mesh",
                "section",
                r#"{"group":"","kind":"Service","name":"echo","sectionName":"alt"}"#,
            ),
            route("mesh", "gateway", r#"{"name":"echo"}"#),
            route(
                "mesh",
                "missing",
                r#"{"group":"","kind":"Service","name":"nope"}"#,
            ),
            route(
                "other",
                "elsewhere",
                r#"{"group":"","kind":"Service","name":"echo"}"#,
            ),
        ];
        let built = Routes::build(routes.iter(), &services);
        assert!(built.port("mesh/echo", 80).is_none());
        let alt = built.port("mesh/echo", 8080).unwrap();
        assert_eq!(names(alt.for_client(None).unwrap()), ["mesh/section"]);
        assert!(built.port("other/echo", 80).is_none());
    }
}
