//! Whose view is built, and what it keeps of the store. A node agent's
//! view holds the whole cluster: any pod of its node may call anything. A
//! waypoint's holds what the waypoint of one Gateway can need to serve the
//! Services bound to it, as Istio's waypoints receive only their own
//! config: a waypoint in front of one Service does not carry the routes
//! and policies of every other waypoint's Services.
//!
//! Pure: decided from the store at every build, so a label that binds or
//! unbinds a Service changes the next view, with no restart.
use std::{
    collections::{BTreeSet, HashSet},
    sync::Arc,
};

use mesh_policy::l7;
use mesh_route::{CompiledRoute, compile::Filter};

use crate::{
    model::Service,
    ratelimit::RateLimitTarget,
    store::Store,
    waypoint::{self, DestinationKind, UseWaypoint, Waypoint, WaypointBinding},
};

/// Whose view it is (`ViewSettings::scope`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Scope {
    /// A node agent's (and `mesh inspect`'s): everything in the store.
    #[default]
    Node,
    /// The waypoint of one Gateway: see [`WaypointScope`].
    Waypoint(WaypointScope),
}

/// The waypoint a view is for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WaypointScope {
    pub gateway_namespace: String,
    pub gateway_name: String,
    /// Services (`<namespace>/<name>`) the waypoint calls for reasons the
    /// cluster's objects do not say: its external authorizers, named in
    /// its own providers file.
    pub also: BTreeSet<String>,
}

impl WaypointScope {
    pub fn new(gateway_namespace: &str, gateway_name: &str) -> Self {
        Self {
            gateway_namespace: gateway_namespace.to_owned(),
            gateway_name: gateway_name.to_owned(),
            also: BTreeSet::new(),
        }
    }

    /// `<namespace>/<name>` of the Gateway.
    pub fn gateway_key(&self) -> String {
        format!("{}/{}", self.gateway_namespace, self.gateway_name)
    }
}

/// What a waypoint's view keeps, by the store's keys. Pods, namespaces and
/// Gateways are not in it: a waypoint's view keeps them all. Pods are
/// small next to routes and are looked up by any address (the client a
/// CONNECT is forwarded for, whose labels the metrics carry; an endpoint's
/// identity; a waypoint's own pods), and namespaces and Gateways decide
/// bindings, including those of workloads.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Kept {
    /// The Services bound to the waypoint (`istio.io/use-waypoint` on the
    /// Service or its namespace, a Gateway that serves Services).
    pub served: BTreeSet<String>,
    /// Every Service kept, with its endpoints: those served, those their
    /// routes send or mirror to (in any namespace), and `WaypointScope::also`.
    pub services: BTreeSet<String>,
    /// HTTPRoutes and GRPCRoutes with a served Service as a parent,
    /// producer and consumer routes alike.
    pub http_routes: BTreeSet<String>,
    pub grpc_routes: BTreeSet<String>,
    /// HTTPFaultInjections the kept routes' rules name.
    pub faults: BTreeSet<String>,
    /// AuthorizationPolicies bound by `targetRefs` to the Gateway, its
    /// class (from the root namespace), a served Service, or a namespace
    /// the waypoint serves in (a stand-in's scope).
    pub authorization: BTreeSet<String>,
    /// RequestAuthentications bound to the Gateway or a served Service.
    pub request_authentications: BTreeSet<String>,
    /// HTTPLocalRateLimitPolicies bound to the Gateway, a served Service,
    /// or a namespace with a served Service (a stand-in's scope).
    pub rate_limits: BTreeSet<String>,
    /// DestinationRules for a kept Service: served ones and backends, since
    /// the rule of the Service a request is sent to applies.
    pub destination_rules: BTreeSet<String>,
}

/// What the view of `scope` keeps of `store`; `root_namespace` and
/// `waypoint_class` as in `ViewSettings`.
pub fn waypoint_keeps(
    store: &Store,
    scope: &WaypointScope,
    root_namespace: &str,
    waypoint_class: &str,
) -> Kept {
    let me = scope.gateway_key();
    let gateway = store.gateways.get(&me);
    // Only this Gateway's waypoint is looked up when binding: a binding to
    // any other is not this view's concern, and no waypoint's pods change
    // whether a Service is bound here.
    let mine = gateway.map(|g| {
        Arc::new(Waypoint {
            gateway: g.clone(),
            endpoints: Vec::new(),
        })
    });
    let served: BTreeSet<String> = match &mine {
        None => BTreeSet::new(),
        Some(mine) => store
            .services
            .iter()
            .filter(|(_, svc)| is_served(store, svc, &me, mine, waypoint_class))
            .map(|(k, _)| k.clone())
            .collect(),
    };
    // (namespace, name): looked up for every route's parents and
    // backends, without building a key for each.
    let served_names: HashSet<(&str, &str)> =
        served.iter().filter_map(|k| k.split_once('/')).collect();
    let mut kept = Kept::default();
    let mut backends: HashSet<(&str, &str)> = HashSet::new();
    for (routes, into) in [
        (&store.http_routes, &mut kept.http_routes),
        (&store.grpc_routes, &mut kept.grpc_routes),
    ] {
        for (key, route) in routes.iter() {
            if !has_served_parent(route, &served_names) {
                continue;
            }
            into.insert(key.clone());
            for rule in &route.rules {
                kept.faults
                    .extend(rule.faults.iter().map(|f| f.to_string()));
                let filters = rule
                    .filters
                    .iter()
                    .chain(rule.backends.iter().flat_map(|b| b.filters.iter()));
                let mirrors = filters.filter_map(|f| match f {
                    Filter::Mirror(m) => Some(&m.backend),
                    _ => None,
                });
                let targets = rule.backends.iter().map(|b| &b.target);
                backends.extend(
                    targets
                        .chain(mirrors)
                        .map(|b| (b.namespace.as_str(), b.name.as_str())),
                );
            }
        }
    }
    kept.services = served.clone();
    kept.services.extend(scope.also.iter().cloned());
    kept.services.extend(
        backends
            .into_iter()
            .filter(|b| !served_names.contains(b))
            .map(|(namespace, name)| format!("{namespace}/{name}")),
    );
    // As `mesh_waypoint::authz` reads its class: the Gateway's own.
    let class = gateway.map_or("", |g| g.class.as_str());
    // A request is for one served Service, or for a workload (no Service).
    let scopes: Vec<l7::Scope<'_>> = std::iter::once(None)
        .chain(served_names.iter().copied().map(Some))
        .map(|service| l7::Scope {
            root_namespace,
            gateway_namespace: &scope.gateway_namespace,
            gateway_name: &scope.gateway_name,
            gateway_class: class,
            service,
        })
        .collect();
    kept.authorization = store
        .authorization
        .iter()
        .filter(|(_, p)| {
            p.waypoint
                .as_ref()
                .is_some_and(|p| scopes.iter().any(|s| p.applies(s)))
        })
        .map(|(k, _)| k.clone())
        .collect();
    kept.request_authentications = store
        .request_authentications
        .iter()
        .filter(|(_, p)| {
            p.applies_to(&me, None) || served.iter().any(|s| p.applies_to(&me, Some(s)))
        })
        .map(|(k, _)| k.clone())
        .collect();
    kept.rate_limits = store
        .rate_limits
        .iter()
        .filter(|(_, p)| match &p.target {
            RateLimitTarget::Service(s) => served.contains(s),
            RateLimitTarget::Gateway(g) => *g == me,
            RateLimitTarget::Namespace(ns) => served_names.iter().any(|(n, _)| n == ns),
        })
        .map(|(k, _)| k.clone())
        .collect();
    kept.destination_rules = store
        .destination_rules
        .iter()
        .filter(|(_, r)| kept.services.contains(&r.host.key()))
        .map(|(k, _)| k.clone())
        .collect();
    kept.served = served;
    kept
}

/// Whether traffic to the Service's virtual IP goes through the waypoint
/// `me`, by the same binding the view gives the Service.
fn is_served(
    store: &Store,
    svc: &Service,
    me: &str,
    mine: &Arc<Waypoint>,
    waypoint_class: &str,
) -> bool {
    let ns_labels = store.namespaces.get(&svc.namespace).map(|l| l.as_ref());
    let wanted = UseWaypoint::of_object(&svc.labels, &svc.namespace, ns_labels);
    let binding = waypoint::bind(
        wanted,
        DestinationKind::Service,
        waypoint::Origin {
            namespace: &svc.namespace,
            labels: ns_labels,
        },
        waypoint_class,
        |k| store.gateways.get(k),
        |k| (k == me).then_some(mine),
    );
    matches!(binding, WaypointBinding::Through(w) if Arc::ptr_eq(&w, mine))
}

/// Whether one of the route's parents is a served Service (the port and
/// section are left to the route table: a route kept for a port it does
/// not attach to is inert).
fn has_served_parent(route: &CompiledRoute, served: &HashSet<(&str, &str)>) -> bool {
    route.parents.iter().any(|p| {
        (p.group.is_empty() || p.group == "core")
            && p.kind == "Service"
            && served.contains(&(
                p.namespace.as_deref().unwrap_or(&route.id.namespace),
                p.name.as_str(),
            ))
    })
}

#[cfg(test)]
mod tests {
    use std::{collections::BTreeSet, path::Path, sync::Arc};

    use super::{Kept, Scope, WaypointScope, waypoint_keeps};
    use crate::{
        NodeConfig,
        model::{Labels, USE_WAYPOINT_LABEL},
        view::{MeshView, ViewSettings},
    };

    /// Two waypoints in `shop`: `wp` serves Service web, `other` serves
    /// Service api. web's route sends to a Service in `backend` and mirrors
    /// to one in `mirrors`; api's sends to `plain` (bound to none).
    const CLUSTER: &str = r#"
kind: AgentConfig
nodeName: n1
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: wp, namespace: shop}
spec:
  gatewayClassName: mesh-waypoint
  listeners: [{name: mesh, port: 15008, protocol: HBONE}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: other, namespace: shop}
spec:
  gatewayClassName: mesh-waypoint
  listeners: [{name: mesh, port: 15008, protocol: HBONE}]
---
apiVersion: v1
kind: Pod
metadata: {name: web-1, namespace: shop, labels: {app: web}}
spec: {nodeName: n2, containers: [{name: c}]}
status: {podIPs: [{ip: 10.1.0.1}]}
---
apiVersion: v1
kind: Pod
metadata: {name: store-1, namespace: backend, labels: {app: store}}
spec: {nodeName: n2, containers: [{name: c}]}
status: {podIPs: [{ip: 10.1.0.2}]}
---
apiVersion: v1
kind: Pod
metadata: {name: api-1, namespace: shop, labels: {app: api}}
spec: {nodeName: n2, containers: [{name: c}]}
status: {podIPs: [{ip: 10.1.0.3}]}
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: shop, labels: {istio.io/use-waypoint: wp}}
spec: {clusterIP: 10.96.0.1, selector: {app: web}, ports: [{name: http, port: 80, targetPort: 8080}]}
---
apiVersion: v1
kind: Service
metadata: {name: api, namespace: shop, labels: {istio.io/use-waypoint: other}}
spec: {clusterIP: 10.96.0.2, selector: {app: api}, ports: [{name: http, port: 80, targetPort: 8080}]}
---
apiVersion: v1
kind: Service
metadata: {name: plain, namespace: shop}
spec: {clusterIP: 10.96.0.3, selector: {app: api}, ports: [{name: http, port: 80, targetPort: 8080}]}
---
apiVersion: v1
kind: Service
metadata: {name: store, namespace: backend}
spec: {clusterIP: 10.96.1.1, selector: {app: store}, ports: [{name: http, port: 80, targetPort: 8080}]}
---
apiVersion: v1
kind: Service
metadata: {name: shadow, namespace: mirrors}
spec: {clusterIP: 10.96.2.1, ports: [{name: http, port: 80}]}
---
apiVersion: mesh.io/v1alpha1
kind: HTTPFaultInjection
metadata: {name: slow, namespace: shop}
spec: {delay: {fixedDelay: 200ms, percentage: {value: 50}}}
---
apiVersion: mesh.io/v1alpha1
kind: HTTPFaultInjection
metadata: {name: broken, namespace: shop}
spec: {abort: {httpStatus: 503, percentage: {value: 50}}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: web-route, namespace: shop}
spec:
  parentRefs: [{group: "", kind: Service, name: web, port: 80}]
  rules:
  - filters:
    - type: ExtensionRef
      extensionRef: {group: mesh.io, kind: HTTPFaultInjection, name: slow}
    - type: RequestMirror
      requestMirror: {backendRef: {name: shadow, namespace: mirrors, port: 80}}
    backendRefs: [{name: store, namespace: backend, port: 80}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: consumer, namespace: client}
spec:
  parentRefs: [{group: "", kind: Service, name: web, namespace: shop}]
  rules:
  - backendRefs: [{name: web, namespace: shop, port: 80}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: api-route, namespace: shop}
spec:
  parentRefs: [{group: "", kind: Service, name: api}]
  rules:
  - filters:
    - type: ExtensionRef
      extensionRef: {group: mesh.io, kind: HTTPFaultInjection, name: broken}
    backendRefs: [{name: plain, port: 80}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: web-ap, namespace: shop}
spec:
  targetRefs: [{kind: Service, group: "", name: web}]
  action: DENY
  rules: [{to: [{operation: {paths: [/admin]}}]}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: api-ap, namespace: shop}
spec:
  targetRefs: [{kind: Service, group: "", name: api}]
  action: DENY
  rules: [{}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: wp-ap, namespace: shop}
spec:
  targetRefs: [{kind: Gateway, group: gateway.networking.k8s.io, name: wp}]
  action: DENY
  rules: [{to: [{operation: {methods: [TRACE]}}]}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: other-ap, namespace: shop}
spec:
  targetRefs: [{kind: Gateway, group: gateway.networking.k8s.io, name: other}]
  action: DENY
  rules: [{}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: class-ap, namespace: istio-system}
spec:
  targetRefs: [{kind: GatewayClass, group: gateway.networking.k8s.io, name: mesh-waypoint}]
  action: DENY
  rules: [{to: [{operation: {paths: [/debug]}}]}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: sel, namespace: shop}
spec:
  selector: {matchLabels: {app: web}}
  action: DENY
  rules: [{}]
---
apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {name: jwt-web, namespace: shop}
spec:
  targetRefs: [{kind: Service, name: web}]
  jwtRules: [{issuer: https://issuer.example, jwksUri: https://issuer.example/jwks}]
---
apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {name: jwt-api, namespace: shop}
spec:
  targetRefs: [{kind: Service, name: api}]
  jwtRules: [{issuer: https://issuer.example, jwksUri: https://issuer.example/jwks}]
---
apiVersion: mesh.io/v1alpha1
kind: HTTPLocalRateLimitPolicy
metadata: {name: rl-web, namespace: shop}
spec:
  targetRef: {kind: Service, name: web}
  total: {requestsPerSecond: 3}
---
apiVersion: mesh.io/v1alpha1
kind: HTTPLocalRateLimitPolicy
metadata: {name: rl-api, namespace: shop}
spec:
  targetRef: {kind: Service, name: api}
  total: {requestsPerSecond: 3}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: dr-store, namespace: backend}
spec: {host: store, trafficPolicy: {loadBalancer: {simple: RANDOM}}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: dr-plain, namespace: shop}
spec: {host: plain, trafficPolicy: {loadBalancer: {simple: RANDOM}}}
"#;

    fn cluster() -> NodeConfig {
        NodeConfig::parse(Path::new("f.yaml"), CLUSTER, None).unwrap()
    }

    fn keeps(config: &NodeConfig, gateway: &str) -> Kept {
        let settings = config.view_settings();
        waypoint_keeps(
            &config.store,
            &WaypointScope::new("shop", gateway),
            &settings.root_namespace,
            &settings.waypoint_class,
        )
    }

    fn set(keys: &[&str]) -> BTreeSet<String> {
        keys.iter().map(|k| (*k).to_owned()).collect()
    }

    fn scoped(config: &NodeConfig, scope: WaypointScope) -> MeshView {
        MeshView::build(
            &config.store,
            &ViewSettings {
                scope: Scope::Waypoint(scope),
                ..config.view_settings()
            },
        )
    }

    #[test]
    fn a_service_bound_here_is_kept_with_its_routes_backends_and_policies() {
        let k = keeps(&cluster(), "wp");
        assert_eq!(k.served, set(&["shop/web"]));
        // The backend and the mirror are in other namespaces.
        assert_eq!(
            k.services,
            set(&["backend/store", "mirrors/shadow", "shop/web"])
        );
        // The producer route and a consumer route from another namespace.
        assert_eq!(k.http_routes, set(&["client/consumer", "shop/web-route"]));
        assert!(k.grpc_routes.is_empty());
        assert_eq!(k.faults, set(&["shop/slow"]));
        // Its Service's, its Gateway's and its class's (root namespace);
        // not the selector policy, which node agents enforce.
        assert_eq!(
            k.authorization,
            set(&["istio-system/class-ap", "shop/web-ap", "shop/wp-ap"])
        );
        assert_eq!(k.request_authentications, set(&["shop/jwt-web"]));
        assert_eq!(k.rate_limits, set(&["shop/rl-web"]));
        // The backend's rule: a request sent there is under it.
        assert_eq!(k.destination_rules, set(&["backend/dr-store"]));
    }

    #[test]
    fn another_waypoints_service_its_routes_and_policies_are_not_kept() {
        let config = cluster();
        let k = keeps(&config, "wp");
        for (what, set) in [
            ("services", &k.services),
            ("routes", &k.http_routes),
            ("faults", &k.faults),
            ("authorization", &k.authorization),
            ("request authentications", &k.request_authentications),
            ("rate limits", &k.rate_limits),
            ("destination rules", &k.destination_rules),
        ] {
            for key in [
                "shop/api",
                "shop/plain",
                "shop/api-route",
                "shop/broken",
                "shop/api-ap",
                "shop/other-ap",
                "shop/jwt-api",
                "shop/rl-api",
                "shop/dr-plain",
            ] {
                assert!(!set.contains(key), "{what} keeps {key}");
            }
        }
        // The other waypoint's view is the mirror image.
        let other = keeps(&config, "other");
        assert_eq!(other.served, set(&["shop/api"]));
        assert_eq!(other.services, set(&["shop/api", "shop/plain"]));
        assert_eq!(other.http_routes, set(&["shop/api-route"]));
        assert_eq!(
            other.authorization,
            set(&["istio-system/class-ap", "shop/api-ap", "shop/other-ap"])
        );
        assert_eq!(other.destination_rules, set(&["shop/dr-plain"]));
    }

    #[test]
    fn a_binding_change_alters_the_scope() {
        let mut config = cluster();
        let relabel = |config: &mut NodeConfig, key: &str, waypoint: Option<&str>| {
            let mut svc = config.store.services.get(key).unwrap().as_ref().clone();
            match waypoint {
                Some(w) => svc.labels.insert(USE_WAYPOINT_LABEL.into(), w.into()),
                None => svc.labels.remove(USE_WAYPOINT_LABEL),
            };
            config.store.services.apply(key.to_owned(), svc);
        };
        relabel(&mut config, "shop/api", Some("wp"));
        relabel(&mut config, "shop/web", None);
        let k = keeps(&config, "wp");
        assert_eq!(k.served, set(&["shop/api"]));
        assert_eq!(k.services, set(&["shop/api", "shop/plain"]));
        assert_eq!(k.http_routes, set(&["shop/api-route"]));
        assert_eq!(
            k.authorization,
            set(&["istio-system/class-ap", "shop/api-ap", "shop/wp-ap"])
        );
        // A namespace's label binds its Services as well.
        let mut labels = Labels::new();
        labels.insert(USE_WAYPOINT_LABEL.into(), "wp".into());
        config.store.namespaces.apply("shop".into(), labels);
        let k = keeps(&config, "wp");
        assert_eq!(k.served, set(&["shop/api", "shop/plain", "shop/web"]));
    }

    #[test]
    fn no_such_gateway_serves_nothing_and_keeps_only_what_it_is_told_to() {
        let config = cluster();
        let k = keeps(&config, "gone");
        assert!(k.served.is_empty() && k.http_routes.is_empty());
        // The class's policy would apply to a waypoint of the class; one
        // whose Gateway is gone has no class.
        assert!(k.authorization.is_empty(), "{:?}", k.authorization);
        let mut scope = WaypointScope::new("shop", "gone");
        scope.also.insert("backend/store".into());
        let v = scoped(&config, scope);
        assert_eq!(
            v.services().map(|s| s.service.key()).collect::<Vec<_>>(),
            ["backend/store"]
        );
    }

    #[test]
    fn the_scoped_view_holds_the_kept_objects_with_their_endpoints_and_no_node_policies() {
        let config = cluster();
        let v = scoped(&config, WaypointScope::new("shop", "wp"));
        let mut services: Vec<_> = v.services().map(|s| s.service.key()).collect();
        services.sort();
        assert_eq!(services, ["backend/store", "mirrors/shadow", "shop/web"]);
        // A backend in another namespace, with its endpoints and its rule.
        let store = v.service_at("10.96.1.1".parse().unwrap()).unwrap();
        assert_eq!(store.ports[0].endpoints[0].to_string(), "10.1.0.2:8080");
        assert!(v.destination_rule("backend/store").is_some());
        assert!(v.destination_rule("shop/plain").is_none());
        assert!(v.service_at("10.96.0.2".parse().unwrap()).is_none());
        assert_eq!(v.routes.of_service("shop/web").len(), 2);
        assert!(v.routes.of_service("shop/api").is_empty());
        let names = |p: &[Arc<mesh_policy::l7::WaypointPolicy>]| {
            let mut n: Vec<_> = p.iter().map(|p| p.name.clone()).collect();
            n.sort();
            n
        };
        assert_eq!(
            names(&v.waypoint_policies),
            ["istio-system/class-ap", "shop/web-ap", "shop/wp-ap"]
        );
        assert!(v.policies.authorization.is_empty());
        assert_eq!(v.rate_limits.len(), 1);
        assert_eq!(v.request_authentications.len(), 1);
        let f = |name: &str| mesh_route::fault::FaultRef {
            namespace: "shop".into(),
            name: name.into(),
        };
        assert!(v.fault(&f("slow")).is_some() && v.fault(&f("broken")).is_none());
        // Every pod: clients are looked up by address, whoever they are.
        assert!(v.workload("10.1.0.3".parse().unwrap()).is_some());
        assert_eq!(v.sizes.services, 3);
        assert_eq!(v.sizes.routes, 2);
        assert_eq!(v.sizes.pods, 3);
        assert_eq!(v.sizes.authorization_policies, 3);
    }

    #[test]
    fn a_nodes_view_keeps_everything() {
        let config = cluster();
        let v = config.view();
        assert_eq!(v.services().count(), 5);
        assert_eq!(v.waypoint_policies.len(), 5);
        assert_eq!(v.policies.authorization.len(), 1);
        assert_eq!(v.rate_limits.len(), 2);
        assert_eq!(v.sizes, config.store.sizes());
    }
}
