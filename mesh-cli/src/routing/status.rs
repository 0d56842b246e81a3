//! The conditions of each route attached to a Service, for each parentRef
//! naming that Service: Accepted and ResolvedRefs as `mesh_route::status`
//! computes them (what the CA's route status controller writes), over the
//! facts the view holds: its Services and its GRPCRoutes (an HTTPRoute on
//! ports GRPCRoutes hold is Conflicted). A route that did not compile is
//! not in the view (a local file refuses it, the API's watch leaves it
//! out), so it is never listed here; its status on the API server says
//! why.
use mesh_discovery::{
    model::{Service, ServiceKind},
    view::MeshView,
};
use mesh_route::{
    CompiledRoute,
    compile::{BackendRef, Filter, RouteKind},
    spec::{self, BackendObjectRef, ParentRef},
    status::{self, Cluster, GrpcAttachment, Observed, RouteParentStatus},
};
use serde::Serialize;

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Condition {
    pub status: bool,
    pub reason: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub message: String,
}

impl std::fmt::Display for Condition {
    /// `True Accepted`, or `False <reason>: <message>`: a condition that
    /// holds needs no explanation in a table.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.status {
            write!(f, "True {}", self.reason)
        } else if self.message.is_empty() {
            write!(f, "False {}", self.reason)
        } else {
            write!(f, "False {}: {}", self.reason, self.message)
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ParentStatus {
    /// `<namespace>/<service>`, then `:<port>` and `#<sectionName>` as the
    /// parentRef gives them.
    pub parent: String,
    pub accepted: Condition,
    pub resolved_refs: Condition,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RouteStatus {
    pub route: String,
    pub kind: &'static str,
    pub parents: Vec<ParentStatus>,
    /// Ports whose table leaves the route out, and why: an HTTPRoute and a
    /// GRPCRoute cannot share a Service port, and the GRPCRoute holds it
    /// (GEP-1426 ranks GRPCRoute above HTTPRoute). Read from the waypoint's
    /// tables, so it says where the route is partly left out too, which
    /// Accepted (True then) shows only in its message.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub left_out: Vec<String>,
}

/// The Services and GRPCRoutes of the view, as `mesh_route::status`
/// reads them.
pub fn cluster(view: &MeshView) -> Cluster {
    let mut cluster = Cluster::default();
    // A GRPCRoute attached to no Service holds no port: those attached
    // to some are all there is to know (listed once per Service).
    cluster.replace_grpc_routes(
        view.services()
            .flat_map(|s| view.routes.of_service(&s.service.key()))
            .filter_map(|r| GrpcAttachment::of(r)),
    );
    cluster.replace_services(view.services().map(|s| {
        let svc = &s.service;
        let facts = status::Service {
            ports: svc
                .ports
                .iter()
                .map(|p| status::Port {
                    number: p.port,
                    name: (!p.name.is_empty()).then(|| p.name.clone()),
                })
                .collect(),
            cluster_ip: matches!(&svc.kind, ServiceKind::ClusterIp(ips) if !ips.is_empty()),
        };
        (svc.namespace.clone(), svc.name.clone(), facts)
    }));
    cluster
}

/// `route`'s conditions for each of its parentRefs naming `svc`.
pub fn route_status(
    view: &MeshView,
    cluster: &Cluster,
    svc: &Service,
    route: &CompiledRoute,
) -> RouteStatus {
    // Only the conditions are shown: who observed them and when is the
    // controller's business.
    let observed = Observed {
        controller_name: "",
        generation: None,
        previous: &[],
        now: "",
    };
    let compiled = Ok(route.clone());
    let statuses = match route.kind {
        RouteKind::Http => {
            status::http_route_parents(&http_spec(route), &compiled, cluster, &observed)
        }
        RouteKind::Grpc => {
            status::grpc_route_parents(&grpc_spec(route), &compiled, cluster, &observed)
        }
    };
    let parents = statuses
        .iter()
        .filter(|p| names_service(svc, &route.id.namespace, &p.parent_ref))
        .map(|p| parent_status(svc, p))
        .collect();
    RouteStatus {
        route: route.id.to_string(),
        kind: route.kind.kind_name(),
        parents,
        left_out: left_out(view, svc, route),
    }
}

fn names_service(svc: &Service, route_namespace: &str, parent: &ParentRef) -> bool {
    parent.kind == "Service"
        && parent.name == svc.name
        && parent.namespace.as_deref().unwrap_or(route_namespace) == svc.namespace
}

fn parent_status(svc: &Service, p: &RouteParentStatus) -> ParentStatus {
    let mut parent = svc.key();
    if let Some(port) = p.parent_ref.port {
        parent.push_str(&format!(":{port}"));
    }
    if let Some(section) = &p.parent_ref.section_name {
        parent.push_str(&format!("#{section}"));
    }
    let condition = |type_: &str| {
        p.conditions.iter().find(|c| c.type_ == type_).map_or_else(
            || Condition {
                status: false,
                reason: "Unknown".into(),
                message: format!("no {type_} condition"),
            },
            |c| Condition {
                status: c.status == "True",
                reason: c.reason.clone(),
                message: c.message.clone(),
            },
        )
    };
    ParentStatus {
        parent,
        accepted: condition(status::ACCEPTED),
        resolved_refs: condition(status::RESOLVED_REFS),
    }
}

fn left_out(view: &MeshView, svc: &Service, route: &CompiledRoute) -> Vec<String> {
    let key = svc.key();
    let mut ports: Vec<u16> = svc.ports.iter().map(|p| p.port).collect();
    ports.sort_unstable();
    ports
        .into_iter()
        .filter_map(|port| {
            let routes = view.routes.port(&key, port)?;
            // The table of the route's audience: the producer's for a route
            // in the Service's namespace, else its own namespace's.
            let table = if route.id.namespace == svc.namespace {
                &routes.producer
            } else {
                routes.consumers.get(&route.id.namespace)?
            };
            if !table.conflicts().contains(&route.id) {
                return None;
            }
            let holders: Vec<String> = table.routes().iter().map(|r| r.id.to_string()).collect();
            let kind = table.kind().map_or("route", |k| k.kind_name());
            Some(match holders.as_slice() {
                [one] => format!("port {port}: {kind} {one} holds it"),
                many => format!("port {port}: {kind}s {} hold it", many.join(", ")),
            })
        })
        .collect()
}

/// The parts of the route object `mesh_route::status` reads (parents,
/// backendRefs and mirrors, at the indexes the object has them), rebuilt
/// from the compiled route: compile keeps every rule, backend and filter
/// in the object's order.
fn http_spec(route: &CompiledRoute) -> spec::HttpRoute {
    spec::HttpRoute {
        metadata: meta(route),
        spec: spec::HttpRouteSpec {
            parent_refs: route.parents.clone(),
            hostnames: Vec::new(),
            rules: route
                .rules
                .iter()
                .map(|r| spec::HttpRouteRule {
                    name: r.name.clone(),
                    matches: Vec::new(),
                    filters: r.filters.iter().map(filter_spec).collect(),
                    backend_refs: backends_spec(&r.backends),
                    timeouts: None,
                    retry: None,
                })
                .collect(),
        },
    }
}

fn grpc_spec(route: &CompiledRoute) -> spec::GrpcRoute {
    spec::GrpcRoute {
        metadata: meta(route),
        spec: spec::GrpcRouteSpec {
            parent_refs: route.parents.clone(),
            hostnames: Vec::new(),
            rules: route
                .rules
                .iter()
                .map(|r| spec::GrpcRouteRule {
                    name: r.name.clone(),
                    matches: Vec::new(),
                    filters: r.filters.iter().map(filter_spec).collect(),
                    backend_refs: backends_spec(&r.backends),
                })
                .collect(),
        },
    }
}

fn meta(route: &CompiledRoute) -> spec::ObjectMeta {
    spec::ObjectMeta {
        name: route.id.name.clone(),
        namespace: Some(route.id.namespace.clone()),
        creation_timestamp: None,
    }
}

fn object_ref(b: &BackendRef) -> BackendObjectRef {
    BackendObjectRef {
        group: String::new(),
        kind: "Service".into(),
        name: b.name.clone(),
        namespace: Some(b.namespace.clone()),
        port: Some(i64::from(b.port)),
    }
}

fn backends_spec(backends: &[mesh_route::compile::Backend]) -> Vec<spec::HttpBackendRef> {
    backends
        .iter()
        .map(|b| spec::HttpBackendRef {
            target: object_ref(&b.target),
            weight: i64::from(b.weight),
            filters: b.filters.iter().map(filter_spec).collect(),
        })
        .collect()
}

/// A filter keeps its type; only a mirror's reference is read by status.
fn filter_spec(f: &Filter) -> spec::HttpRouteFilter {
    let kind = match f {
        Filter::RequestHeaders(_) => "RequestHeaderModifier",
        Filter::ResponseHeaders(_) => "ResponseHeaderModifier",
        Filter::Redirect(_) => "RequestRedirect",
        Filter::Rewrite(_) => "URLRewrite",
        Filter::Mirror(_) => "RequestMirror",
    };
    spec::HttpRouteFilter {
        kind: kind.into(),
        request_mirror: match f {
            Filter::Mirror(m) => Some(spec::RequestMirror {
                backend_ref: object_ref(&m.backend),
                percent: None,
                fraction: None,
            }),
            _ => None,
        },
        ..Default::default()
    }
}
