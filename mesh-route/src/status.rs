//! The status a route carries for each Service it names as a parent
//! (`status.parents[]`), as a pure function of the route, its compile
//! result and what the cluster holds: Gateway API's Accepted and
//! ResolvedRefs conditions with the reasons the spec defines.
//!
//! Only parentRefs to core Services are ours; a Gateway (or any other
//! kind) is its own controller's to report on, and is left out here.
//! A route this mesh cannot apply is reported (Accepted False), never
//! left without a word.
//!
//! Routes are not quite computed alone: an HTTPRoute on a Service port a
//! GRPCRoute of its audience holds is left out of that port's table
//! (`table::RouteTable::new`, GEP-1426), so `Cluster` knows the GRPCRoutes'
//! parents as well as the Services.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::compile::{CompiledRoute, Problem, RouteError, RouteId, RouteKind};
use crate::spec::{self, BackendObjectRef, GROUP, ObjectMeta, ParentRef};

pub const ACCEPTED: &str = "Accepted";
pub const RESOLVED_REFS: &str = "ResolvedRefs";

/// `metav1.Condition`'s limit on `message`.
const MAX_MESSAGE: usize = 32 * 1024;
/// Problems named one by one in a ResolvedRefs message; the rest are
/// counted.
const MAX_LISTED: usize = 4;

impl RouteKind {
    /// The kind as the API server names it, for whoever reports on a
    /// route (its status, logs, `mesh inspect`).
    pub fn kind_name(self) -> &'static str {
        match self {
            RouteKind::Http => "HTTPRoute",
            RouteKind::Grpc => "GRPCRoute",
        }
    }
}

/// Why a route is or is not Accepted by a parent (Gateway API's
/// `RouteConditionReason` for the Accepted condition).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AcceptedReason {
    Accepted,
    /// No such Service, or no port of it matches `port`/`sectionName`.
    NoMatchingParent,
    /// The route holds a value this mesh cannot apply.
    UnsupportedValue,
    /// RequestRedirect and URLRewrite in one rule: the reason the spec
    /// names for exactly that combination.
    IncompatibleFilters,
    /// An HTTPRoute on Service ports that GRPCRoutes hold, each of them:
    /// GEP-1426 applies one kind per port, GRPCRoute first, and names the
    /// reason `RouteReasonConflicted`. Gateway API's Go API has no such
    /// constant; its `RouteReason<X>` constants all have the value `<X>`,
    /// hence `Conflicted`.
    Conflicted,
}

impl AcceptedReason {
    pub fn as_str(self) -> &'static str {
        match self {
            AcceptedReason::Accepted => "Accepted",
            AcceptedReason::NoMatchingParent => "NoMatchingParent",
            AcceptedReason::UnsupportedValue => "UnsupportedValue",
            AcceptedReason::IncompatibleFilters => "IncompatibleFilters",
            AcceptedReason::Conflicted => "Conflicted",
        }
    }
}

/// Whether every backend reference resolved (Gateway API's
/// `RouteConditionReason` for the ResolvedRefs condition).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ResolvedReason {
    ResolvedRefs,
    /// The Service, or the port of it, does not exist.
    BackendNotFound,
    /// Not a core Service.
    InvalidKind,
}

impl ResolvedReason {
    pub fn as_str(self) -> &'static str {
        match self {
            ResolvedReason::ResolvedRefs => "ResolvedRefs",
            ResolvedReason::BackendNotFound => "BackendNotFound",
            ResolvedReason::InvalidKind => "InvalidKind",
        }
    }
}

/// `metav1.Condition`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    #[serde(rename = "type")]
    pub type_: String,
    /// `True`, `False` or `Unknown`.
    pub status: String,
    pub reason: String,
    #[serde(default)]
    pub message: String,
    /// RFC 3339: when `status` or `reason` last changed.
    pub last_transition_time: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}

/// One entry of a route's `status.parents`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RouteParentStatus {
    pub parent_ref: ParentRef,
    pub controller_name: String,
    #[serde(default)]
    pub conditions: Vec<Condition>,
}

/// A port of a Service.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Port {
    pub number: u16,
    pub name: Option<String>,
}

/// What a route's status needs of a Service.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Service {
    pub ports: Vec<Port>,
    /// Has a virtual IP (type ClusterIP, NodePort or LoadBalancer, not
    /// headless): GAMMA attaches routes to such Services only, since the
    /// waypoint finds a route's Service by the address clients dial.
    pub cluster_ip: bool,
}

/// What decides which Service ports a GRPCRoute holds: its parentRefs,
/// for a GRPCRoute that compiled (one that does not is in no table, and
/// holds nothing).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GrpcAttachment {
    id: RouteId,
    parents: Vec<ParentRef>,
}

impl GrpcAttachment {
    /// A compiled GRPCRoute's; `None` for an HTTPRoute, which holds no
    /// port over a route of the other kind.
    pub fn of(route: &CompiledRoute) -> Option<GrpcAttachment> {
        (route.kind == RouteKind::Grpc).then(|| GrpcAttachment {
            id: route.id.clone(),
            parents: route.parents.clone(),
        })
    }

    pub fn id(&self) -> &RouteId {
        &self.id
    }
}

/// The Services of the cluster and the GRPCRoutes that compiled, kept up
/// to date by the caller; every change says whether anything changed, so
/// that the caller recomputes statuses only then.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Cluster {
    services: BTreeMap<(String, String), Service>,
    /// By route, so that one audience's (one namespace's) are a range.
    grpc_routes: BTreeMap<RouteId, Vec<ParentRef>>,
}

impl Cluster {
    pub fn service(&self, namespace: &str, name: &str) -> Option<&Service> {
        self.services
            .get(&(namespace.to_string(), name.to_string()))
    }

    /// Adds or replaces a Service; true when that changed anything.
    pub fn set_service(&mut self, namespace: &str, name: &str, service: Service) -> bool {
        let key = (namespace.to_string(), name.to_string());
        if self.services.get(&key) == Some(&service) {
            return false;
        }
        self.services.insert(key, service);
        true
    }

    pub fn remove_service(&mut self, namespace: &str, name: &str) -> bool {
        self.services
            .remove(&(namespace.to_string(), name.to_string()))
            .is_some()
    }

    /// Puts every Service anew (after a re-list); true when that changed
    /// anything.
    pub fn replace_services(
        &mut self,
        all: impl IntoIterator<Item = (String, String, Service)>,
    ) -> bool {
        let services: BTreeMap<_, _> = all
            .into_iter()
            .map(|(namespace, name, s)| ((namespace, name), s))
            .collect();
        let changed = services != self.services;
        self.services = services;
        changed
    }

    /// Adds or replaces a GRPCRoute; true when that changed anything.
    pub fn set_grpc_route(&mut self, route: GrpcAttachment) -> bool {
        if self.grpc_routes.get(&route.id) == Some(&route.parents) {
            return false;
        }
        self.grpc_routes.insert(route.id, route.parents);
        true
    }

    pub fn remove_grpc_route(&mut self, namespace: &str, name: &str) -> bool {
        self.grpc_routes
            .remove(&RouteId {
                namespace: namespace.to_string(),
                name: name.to_string(),
            })
            .is_some()
    }

    /// Puts every GRPCRoute anew (after a re-list); true when that changed
    /// anything.
    pub fn replace_grpc_routes(&mut self, all: impl IntoIterator<Item = GrpcAttachment>) -> bool {
        let routes: BTreeMap<_, _> = all.into_iter().map(|r| (r.id, r.parents)).collect();
        let changed = routes != self.grpc_routes;
        self.grpc_routes = routes;
        changed
    }

    /// The GRPCRoutes holding port `port` of Service `namespace/service`
    /// against HTTPRoutes of namespace `audience`, by name. Each audience
    /// has its own table of a port (the producer's, in the Service's
    /// namespace; one per consumer namespace), so only GRPCRoutes of that
    /// namespace count. A GRPCRoute holds a port it is Accepted by: a
    /// parentRef to the Service in the core group that names the port (or
    /// no port and no sectionName: every port), on a Service with a
    /// cluster IP.
    pub fn grpc_holders(
        &self,
        namespace: &str,
        service: &str,
        port: u16,
        audience: &str,
    ) -> Vec<&RouteId> {
        let Some(svc) = self.service(namespace, service) else {
            return Vec::new();
        };
        match svc.ports.iter().find(|p| p.number == port) {
            Some(p) => self.holders(namespace, service, svc, p, audience),
            None => Vec::new(),
        }
    }

    fn holders(
        &self,
        namespace: &str,
        service: &str,
        svc: &Service,
        port: &Port,
        audience: &str,
    ) -> Vec<&RouteId> {
        if !svc.cluster_ip {
            return Vec::new();
        }
        let from = RouteId {
            namespace: audience.to_string(),
            name: String::new(),
        };
        self.grpc_routes
            .range(from..)
            .take_while(|(id, _)| id.namespace == audience)
            .filter(|(id, parents)| {
                parents.iter().any(|p| {
                    (p.group.is_empty() || p.group == "core")
                        && p.kind == "Service"
                        && p.name == service
                        && p.namespace.as_deref().unwrap_or(&id.namespace) == namespace
                        && port_matches(p, port)
                })
            })
            .map(|(id, _)| id)
            .collect()
    }
}

/// Who writes the status, of which generation, when, and what the route
/// carried before (every controller's entries; only ours are read).
#[derive(Clone, Copy, Debug)]
pub struct Observed<'a> {
    pub controller_name: &'a str,
    pub generation: Option<i64>,
    pub previous: &'a [RouteParentStatus],
    /// RFC 3339, the time of a condition that changes now.
    pub now: &'a str,
}

impl Observed<'_> {
    fn condition(
        &self,
        before: Option<&RouteParentStatus>,
        type_: &str,
        ok: bool,
        reason: &str,
        message: String,
    ) -> Condition {
        let status = if ok { "True" } else { "False" };
        let since = before
            .and_then(|b| {
                b.conditions
                    .iter()
                    .find(|c| c.type_ == type_ && c.status == status && c.reason == reason)
            })
            .map(|c| c.last_transition_time.clone())
            .unwrap_or_else(|| self.now.to_string());
        Condition {
            type_: type_.to_string(),
            status: status.to_string(),
            reason: reason.to_string(),
            message: bounded(message),
            last_transition_time: since,
            observed_generation: self.generation,
        }
    }

    fn before(&self, parent: &ParentRef) -> Option<&RouteParentStatus> {
        self.previous
            .iter()
            .find(|p| p.controller_name == self.controller_name && p.parent_ref == *parent)
    }
}

fn bounded(mut message: String) -> String {
    if message.len() > MAX_MESSAGE {
        let mut end = MAX_MESSAGE - 3;
        while !message.is_char_boundary(end) {
            end -= 1;
        }
        message.truncate(end);
        message.push_str("...");
    }
    message
}

/// Which parentRefs are ours: a Service, in the core group or (a common
/// slip, reported rather than ignored) with the group left to its
/// default, Gateway API's own, where no Service kind exists.
fn is_service_parent(parent: &ParentRef) -> bool {
    parent.kind == "Service"
        && (parent.group.is_empty() || parent.group == "core" || parent.group == GROUP)
}

/// The status entries `observed.controller_name` writes for an HTTPRoute.
pub fn http_route_parents(
    route: &spec::HttpRoute,
    compiled: &Result<CompiledRoute, RouteError>,
    cluster: &Cluster,
    observed: &Observed<'_>,
) -> Vec<RouteParentStatus> {
    let refs = rule_refs(
        route
            .spec
            .rules
            .iter()
            .map(|r| (r.filters.as_slice(), r.backend_refs.as_slice())),
    );
    parents(
        RouteKind::Http,
        &route.metadata,
        &route.spec.parent_refs,
        &refs,
        compiled.as_ref().err(),
        cluster,
        observed,
    )
}

/// The status entries `observed.controller_name` writes for a GRPCRoute.
pub fn grpc_route_parents(
    route: &spec::GrpcRoute,
    compiled: &Result<CompiledRoute, RouteError>,
    cluster: &Cluster,
    observed: &Observed<'_>,
) -> Vec<RouteParentStatus> {
    let refs = rule_refs(
        route
            .spec
            .rules
            .iter()
            .map(|r| (r.filters.as_slice(), r.backend_refs.as_slice())),
    );
    parents(
        RouteKind::Grpc,
        &route.metadata,
        &route.spec.parent_refs,
        &refs,
        compiled.as_ref().err(),
        cluster,
        observed,
    )
}

/// The entries for a route whose spec could not even be read (`problem`
/// says why): not Accepted by any of its Service parents.
pub fn unreadable_route_parents(
    parent_refs: &[ParentRef],
    problem: &str,
    observed: &Observed<'_>,
) -> Vec<RouteParentStatus> {
    distinct_service_parents(parent_refs)
        .map(|parent| {
            let before = observed.before(parent);
            RouteParentStatus {
                parent_ref: parent.clone(),
                controller_name: observed.controller_name.to_string(),
                conditions: vec![observed.condition(
                    before,
                    ACCEPTED,
                    false,
                    AcceptedReason::UnsupportedValue.as_str(),
                    format!("the route cannot be read: {problem}"),
                )],
            }
        })
        .collect()
}

fn distinct_service_parents(parent_refs: &[ParentRef]) -> impl Iterator<Item = &ParentRef> {
    parent_refs
        .iter()
        .enumerate()
        .filter(|(i, p)| is_service_parent(p) && !parent_refs[..*i].contains(p))
        .map(|(_, p)| p)
}

/// Every backend a route's rules name (RequestMirror's and backendRefs'),
/// with the field that names it; HTTPRoute and GRPCRoute rules alike.
fn rule_refs<'a>(
    rules: impl Iterator<Item = (&'a [spec::HttpRouteFilter], &'a [spec::HttpBackendRef])>,
) -> Vec<(String, &'a BackendObjectRef)> {
    let mut refs = Vec::new();
    for (i, (filters, backend_refs)) in rules.enumerate() {
        let at = format!("spec.rules[{i}]");
        mirrors(&at, filters, &mut refs);
        backends(&at, backend_refs, &mut refs);
    }
    refs
}

fn mirrors<'a>(
    at: &str,
    filters: &'a [spec::HttpRouteFilter],
    out: &mut Vec<(String, &'a BackendObjectRef)>,
) {
    for (k, f) in filters.iter().enumerate() {
        if f.kind == "RequestMirror"
            && let Some(m) = &f.request_mirror
        {
            out.push((
                format!("{at}.filters[{k}].requestMirror.backendRef"),
                &m.backend_ref,
            ));
        }
    }
}

fn backends<'a>(
    at: &str,
    list: &'a [spec::HttpBackendRef],
    out: &mut Vec<(String, &'a BackendObjectRef)>,
) {
    for (j, b) in list.iter().enumerate() {
        let field = format!("{at}.backendRefs[{j}]");
        out.push((field.clone(), &b.target));
        mirrors(&field, &b.filters, out);
    }
}

fn parents(
    kind: RouteKind,
    meta: &ObjectMeta,
    parent_refs: &[ParentRef],
    refs: &[(String, &BackendObjectRef)],
    invalid: Option<&RouteError>,
    cluster: &Cluster,
    observed: &Observed<'_>,
) -> Vec<RouteParentStatus> {
    let namespace = meta.namespace.as_deref().unwrap_or("default");
    // The same for every parent: backends do not depend on the parent.
    let (resolved, resolved_message) = resolve(namespace, refs, cluster);
    distinct_service_parents(parent_refs)
        .map(|parent| {
            let before = observed.before(parent);
            let (accepted, accepted_message) = accept(kind, namespace, parent, invalid, cluster);
            RouteParentStatus {
                parent_ref: parent.clone(),
                controller_name: observed.controller_name.to_string(),
                conditions: vec![
                    observed.condition(
                        before,
                        ACCEPTED,
                        accepted == AcceptedReason::Accepted,
                        accepted.as_str(),
                        accepted_message,
                    ),
                    observed.condition(
                        before,
                        RESOLVED_REFS,
                        resolved == ResolvedReason::ResolvedRefs,
                        resolved.as_str(),
                        resolved_message.clone(),
                    ),
                ],
            }
        })
        .collect()
}

/// The Accepted condition for one Service parent: the parent must exist
/// first; then the route must compile; then an HTTPRoute needs a port no
/// GRPCRoute holds.
fn accept(
    kind: RouteKind,
    route_namespace: &str,
    parent: &ParentRef,
    invalid: Option<&RouteError>,
    cluster: &Cluster,
) -> (AcceptedReason, String) {
    let namespace = parent.namespace.as_deref().unwrap_or(route_namespace);
    let name = &parent.name;
    let found = if parent.group == GROUP {
        Err(format!(
            "parentRef {namespace}/{name}: a Service is in the core group: set group to \"\" \
             (left out, it defaults to {GROUP}, which has no kind Service)"
        ))
    } else {
        match cluster.service(namespace, name) {
            None => Err(format!("Service {namespace}/{name} not found")),
            Some(s) if !s.cluster_ip => Err(format!(
                "Service {namespace}/{name} has no cluster IP (headless or ExternalName): \
                 routes attach to ClusterIP Services only"
            )),
            Some(s) if !s.ports.iter().any(|p| port_matches(parent, p)) => Err(format!(
                "Service {namespace}/{name} has no {}",
                wanted_port(parent)
            )),
            Some(s) => Ok(s),
        }
    };
    match (found, invalid) {
        (Err(problem), None) => (AcceptedReason::NoMatchingParent, problem),
        (Err(problem), Some(e)) => (
            AcceptedReason::NoMatchingParent,
            format!("{problem}; besides, the route cannot be applied: {e}"),
        ),
        (Ok(_), Some(e)) => {
            let reason = if is_incompatible_filters(e) {
                AcceptedReason::IncompatibleFilters
            } else {
                AcceptedReason::UnsupportedValue
            };
            (reason, format!("the route cannot be applied: {e}"))
        }
        (Ok(service), None) => {
            let attached = format!(
                "attached to Service {namespace}/{name} ({})",
                attached_port(parent)
            );
            if kind == RouteKind::Grpc {
                return (AcceptedReason::Accepted, attached);
            }
            let ports: Vec<&Port> = service
                .ports
                .iter()
                .filter(|p| port_matches(parent, p))
                .collect();
            let held: Vec<(u16, Vec<&RouteId>)> = ports
                .iter()
                .filter_map(|p| {
                    let by = cluster.holders(namespace, name, service, p, route_namespace);
                    (!by.is_empty()).then_some((p.number, by))
                })
                .collect();
            if held.is_empty() {
                return (AcceptedReason::Accepted, attached);
            }
            let held_by = held_by(&held);
            if held.len() == ports.len() {
                return (
                    AcceptedReason::Conflicted,
                    format!(
                        "Service {namespace}/{name}: {held_by}; a GRPCRoute takes a Service \
                         port over HTTPRoutes (GEP-1426), so this route applies to none of \
                         the ports it names"
                    ),
                );
            }
            let free: Vec<String> = ports
                .iter()
                .filter(|p| !held.iter().any(|(n, _)| *n == p.number))
                .map(|p| p.number.to_string())
                .collect();
            let free = if free.len() == 1 {
                format!("port {}", free[0])
            } else {
                format!("ports {}", free.join(", "))
            };
            (
                AcceptedReason::Accepted,
                format!(
                    "{attached}, applied to {free} only: {held_by}; a GRPCRoute takes a \
                     Service port over HTTPRoutes (GEP-1426)"
                ),
            )
        }
    }
}

/// `port 9090 is held by GRPCRoute shop/echo; port 9091 is held by
/// GRPCRoutes shop/a, shop/b`, up to `MAX_LISTED` routes a port.
fn held_by(held: &[(u16, Vec<&RouteId>)]) -> String {
    held.iter()
        .map(|(port, by)| {
            let kind = if by.len() == 1 {
                "GRPCRoute"
            } else {
                "GRPCRoutes"
            };
            let mut names = by
                .iter()
                .take(MAX_LISTED)
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", ");
            if by.len() > MAX_LISTED {
                names.push_str(&format!(" and {} more", by.len() - MAX_LISTED));
            }
            format!("port {port} is held by {kind} {names}")
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// compile reports the RequestRedirect + URLRewrite combination as a
/// conflict among a rule's `filters` (the other conflicts name a field
/// inside one filter).
fn is_incompatible_filters(e: &RouteError) -> bool {
    matches!(e.problem, Problem::Conflict(_)) && e.field.ends_with(".filters")
}

fn port_matches(parent: &ParentRef, port: &Port) -> bool {
    parent.port.is_none_or(|p| p == i64::from(port.number))
        && parent
            .section_name
            .as_deref()
            .is_none_or(|s| port.name.as_deref() == Some(s))
}

/// The port a parentRef asks for; with neither port nor sectionName, any.
fn wanted_port(parent: &ParentRef) -> String {
    match (parent.port, parent.section_name.as_deref()) {
        (None, None) => "port at all".to_string(),
        (Some(p), None) => format!("port {p}"),
        (None, Some(s)) => format!("port named {s:?}"),
        (Some(p), Some(s)) => format!("port {p} named {s:?}"),
    }
}

fn attached_port(parent: &ParentRef) -> String {
    match (parent.port, &parent.section_name) {
        (None, None) => "every port".to_string(),
        _ => wanted_port(parent),
    }
}

/// The ResolvedRefs condition: every backend reference, in the order the
/// route gives them; the first problem gives the reason, the message
/// names them all (up to `MAX_LISTED`).
fn resolve(
    route_namespace: &str,
    refs: &[(String, &BackendObjectRef)],
    cluster: &Cluster,
) -> (ResolvedReason, String) {
    let problems: Vec<(ResolvedReason, String)> = refs
        .iter()
        .filter_map(|(field, r)| check_backend(route_namespace, field, r, cluster))
        .collect();
    let Some((reason, _)) = problems.first() else {
        let message = if refs.is_empty() {
            "no backend references".to_string()
        } else {
            format!("all {} backend references resolved", refs.len())
        };
        return (ResolvedReason::ResolvedRefs, message);
    };
    let mut message = problems
        .iter()
        .take(MAX_LISTED)
        .map(|(_, m)| m.as_str())
        .collect::<Vec<_>>()
        .join("; ");
    if problems.len() > MAX_LISTED {
        message.push_str(&format!("; and {} more", problems.len() - MAX_LISTED));
    }
    (*reason, message)
}

/// A backend in another namespace needs no ReferenceGrant (GEP-1294):
/// a mesh route may name any Service, as its clients may connect to any,
/// so whether one exists elsewhere is no secret to keep from its author.
fn check_backend(
    route_namespace: &str,
    field: &str,
    r: &BackendObjectRef,
    cluster: &Cluster,
) -> Option<(ResolvedReason, String)> {
    if !(r.group.is_empty() || r.group == "core") || r.kind != "Service" {
        let group = if r.group.is_empty() { "core" } else { &r.group };
        return Some((
            ResolvedReason::InvalidKind,
            format!(
                "{field}: kind {} of group {group} is not supported: only core Services are backends",
                r.kind
            ),
        ));
    }
    let namespace = r.namespace.as_deref().unwrap_or(route_namespace);
    let service = match cluster.service(namespace, &r.name) {
        Some(s) => s,
        None => {
            return Some((
                ResolvedReason::BackendNotFound,
                format!("{field}: Service {namespace}/{} not found", r.name),
            ));
        }
    };
    // A missing port is the route's own error (compile reports it).
    match r.port {
        Some(p) if !service.ports.iter().any(|sp| i64::from(sp.number) == p) => Some((
            ResolvedReason::BackendNotFound,
            format!("{field}: Service {namespace}/{} has no port {p}", r.name),
        )),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compile::{compile_grpc_route, compile_http_route};

    const ME: &str = "mesh.io/waypoint-controller";
    const NOW: &str = "2025-01-02T03:04:05Z";
    const EARLIER: &str = "2024-12-31T00:00:00Z";

    fn http(spec: serde_json::Value) -> spec::HttpRoute {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": "r", "namespace": "shop"},
            "spec": spec,
        }))
        .unwrap()
    }

    fn grpc(spec: serde_json::Value) -> spec::GrpcRoute {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": "g", "namespace": "shop"},
            "spec": spec,
        }))
        .unwrap()
    }

    fn service(ports: &[(u16, Option<&str>)]) -> Service {
        Service {
            ports: ports
                .iter()
                .map(|(number, name)| Port {
                    number: *number,
                    name: name.map(str::to_owned),
                })
                .collect(),
            cluster_ip: true,
        }
    }

    /// shop/web (80 "http"), shop/api (8080), pay/ledger (9000).
    fn cluster() -> Cluster {
        let mut c = Cluster::default();
        c.set_service("shop", "web", service(&[(80, Some("http"))]));
        c.set_service("shop", "api", service(&[(8080, None)]));
        c.set_service("pay", "ledger", service(&[(9000, None)]));
        c
    }

    fn observed(previous: &[RouteParentStatus]) -> Observed<'_> {
        Observed {
            controller_name: ME,
            generation: Some(4),
            previous,
            now: NOW,
        }
    }

    fn statuses(route: &spec::HttpRoute, cluster: &Cluster) -> Vec<RouteParentStatus> {
        http_route_parents(route, &compile_http_route(route), cluster, &observed(&[]))
    }

    /// (type, status, reason) of each condition of the only entry.
    fn conditions(entries: &[RouteParentStatus]) -> Vec<(String, String, String)> {
        assert_eq!(entries.len(), 1, "{entries:#?}");
        entries[0]
            .conditions
            .iter()
            .map(|c| (c.type_.clone(), c.status.clone(), c.reason.clone()))
            .collect()
    }

    fn cond(t: &str, s: &str, r: &str) -> (String, String, String) {
        (t.into(), s.into(), r.into())
    }

    fn message<'a>(entries: &'a [RouteParentStatus], type_: &str) -> &'a str {
        &entries[0]
            .conditions
            .iter()
            .find(|c| c.type_ == type_)
            .unwrap()
            .message
    }

    fn to_web(backends: serde_json::Value) -> serde_json::Value {
        serde_json::json!({
            "parentRefs": [{"group": "", "kind": "Service", "name": "web", "port": 80}],
            "rules": [{"backendRefs": backends}],
        })
    }

    #[test]
    fn a_valid_route_is_accepted_with_its_refs_resolved() {
        let route = http(to_web(serde_json::json!([{"name": "api", "port": 8080}])));
        let got = statuses(&route, &cluster());
        assert_eq!(
            conditions(&got),
            [
                cond(ACCEPTED, "True", "Accepted"),
                cond(RESOLVED_REFS, "True", "ResolvedRefs")
            ]
        );
        let entry = &got[0];
        assert_eq!(entry.controller_name, ME);
        assert_eq!(entry.parent_ref, route.spec.parent_refs[0]);
        for c in &entry.conditions {
            assert_eq!(c.observed_generation, Some(4));
            assert_eq!(c.last_transition_time, NOW);
        }
    }

    #[test]
    fn the_parent_ref_is_echoed_as_written() {
        let route = http(to_web(serde_json::json!([])));
        let json = serde_json::to_value(&statuses(&route, &cluster())[0]).unwrap();
        assert_eq!(
            json["parentRef"],
            serde_json::json!({"group": "", "kind": "Service", "name": "web", "port": 80})
        );
        assert_eq!(json["controllerName"], ME);
        assert_eq!(json["conditions"][0]["observedGeneration"], 4);
        assert_eq!(json["conditions"][0]["lastTransitionTime"], NOW);
    }

    #[test]
    fn only_service_parents_are_ours() {
        let route = http(serde_json::json!({
            "parentRefs": [
                {"name": "gw"},
                {"group": "gateway.networking.k8s.io", "kind": "Gateway", "name": "gw2"},
                {"group": "example.com", "kind": "Service", "name": "web"},
                {"group": "", "kind": "Service", "name": "web", "port": 80},
                {"group": "", "kind": "Service", "name": "web", "port": 80},
            ],
        }));
        let got = statuses(&route, &cluster());
        // Gateways and another group's kinds are left to their
        // controllers; a repeated parentRef gets one entry.
        assert_eq!(got.len(), 1, "{got:#?}");
        assert_eq!(got[0].parent_ref.name, "web");
        assert_eq!(got[0].parent_ref.group, "");
    }

    #[test]
    fn a_missing_service_is_no_matching_parent() {
        let mut route = http(to_web(serde_json::json!([])));
        route.spec.parent_refs[0].name = "gone".into();
        let got = statuses(&route, &cluster());
        assert_eq!(
            conditions(&got),
            [
                cond(ACCEPTED, "False", "NoMatchingParent"),
                cond(RESOLVED_REFS, "True", "ResolvedRefs")
            ]
        );
        assert_eq!(message(&got, ACCEPTED), "Service shop/gone not found");
    }

    #[test]
    fn a_port_or_section_the_service_lacks_is_no_matching_parent() {
        let cases = [
            (Some(81), None, Some("has no port 81")),
            (None, Some("grpc"), Some("has no port named \"grpc\"")),
            (
                Some(80),
                Some("other"),
                Some("has no port 80 named \"other\""),
            ),
            (Some(80), Some("http"), None),
            (None, Some("http"), None),
            (None, None, None),
        ];
        for (port, section, problem) in cases {
            let mut route = http(to_web(serde_json::json!([])));
            route.spec.parent_refs[0].port = port;
            route.spec.parent_refs[0].section_name = section.map(str::to_owned);
            let got = statuses(&route, &cluster());
            let accepted = &got[0].conditions[0];
            match problem {
                Some(p) => {
                    assert_eq!(accepted.reason, "NoMatchingParent", "{port:?} {section:?}");
                    assert!(accepted.message.contains(p), "{}", accepted.message);
                }
                None => assert_eq!(accepted.reason, "Accepted", "{port:?} {section:?}"),
            }
        }
    }

    #[test]
    fn a_headless_service_or_a_service_in_the_gateway_group_is_no_matching_parent() {
        let mut c = cluster();
        c.set_service(
            "shop",
            "web",
            Service {
                ports: vec![Port {
                    number: 80,
                    name: None,
                }],
                cluster_ip: false,
            },
        );
        let route = http(to_web(serde_json::json!([])));
        let got = statuses(&route, &c);
        assert_eq!(got[0].conditions[0].reason, "NoMatchingParent");
        assert!(message(&got, ACCEPTED).contains("no cluster IP"));

        let route = http(serde_json::json!({
            "parentRefs": [{"kind": "Service", "name": "web", "port": 80}],
        }));
        let got = statuses(&route, &cluster());
        assert_eq!(got[0].conditions[0].reason, "NoMatchingParent");
        assert!(
            message(&got, ACCEPTED).contains("set group to \"\""),
            "{}",
            message(&got, ACCEPTED)
        );
    }

    #[test]
    fn a_parent_in_another_namespace_is_looked_up_there() {
        let route = http(serde_json::json!({
            "parentRefs": [{"group": "", "kind": "Service", "name": "ledger",
                            "namespace": "pay", "port": 9000}],
        }));
        let got = statuses(&route, &cluster());
        assert_eq!(got[0].conditions[0].reason, "Accepted");
        assert_eq!(
            message(&got, ACCEPTED),
            "attached to Service pay/ledger (port 9000)"
        );
    }

    #[test]
    fn a_route_that_does_not_compile_is_unsupported_value_naming_the_field() {
        let route = http(serde_json::json!({
            "parentRefs": [{"group": "", "kind": "Service", "name": "web"}],
            "rules": [{"matches": [{"path": {"type": "RegularExpression", "value": "(["}}]}],
        }));
        let got = statuses(&route, &cluster());
        assert_eq!(
            conditions(&got),
            [
                cond(ACCEPTED, "False", "UnsupportedValue"),
                cond(RESOLVED_REFS, "True", "ResolvedRefs")
            ]
        );
        let m = message(&got, ACCEPTED);
        assert!(
            m.starts_with("the route cannot be applied: spec.rules[0].matches[0].path.value: invalid regular expression"),
            "{m}"
        );
        // An unknown enum value too.
        let route = http(serde_json::json!({
            "parentRefs": [{"group": "", "kind": "Service", "name": "web"}],
            "rules": [{"matches": [{"path": {"type": "Glob", "value": "/*"}}]}],
        }));
        let got = statuses(&route, &cluster());
        assert_eq!(got[0].conditions[0].reason, "UnsupportedValue");
        assert!(message(&got, ACCEPTED).contains("spec.rules[0].matches[0].path.type"));
    }

    #[test]
    fn redirect_with_rewrite_is_incompatible_filters() {
        let route = http(serde_json::json!({
            "parentRefs": [{"group": "", "kind": "Service", "name": "web"}],
            "rules": [{"filters": [
                {"type": "RequestRedirect", "requestRedirect": {"scheme": "https"}},
                {"type": "URLRewrite", "urlRewrite": {"hostname": "x.example"}},
            ]}],
        }));
        let got = statuses(&route, &cluster());
        assert_eq!(got[0].conditions[0].reason, "IncompatibleFilters");
        assert!(
            message(&got, ACCEPTED).contains("spec.rules[0].filters"),
            "{}",
            message(&got, ACCEPTED)
        );
        // The other conflict compile reports is about one filter's field:
        // an unsupported value, not a combination of filters.
        let route = http(serde_json::json!({
            "parentRefs": [{"group": "", "kind": "Service", "name": "web"}],
            "rules": [{"matches": [{"path": {"type": "Exact", "value": "/a"}}],
                       "filters": [{"type": "URLRewrite", "urlRewrite": {"path":
                           {"type": "ReplacePrefixMatch", "replacePrefixMatch": "/b"}}}]}],
        }));
        let got = statuses(&route, &cluster());
        assert_eq!(got[0].conditions[0].reason, "UnsupportedValue");
    }

    #[test]
    fn a_missing_parent_outranks_an_invalid_route_and_both_are_said() {
        let route = http(serde_json::json!({
            "parentRefs": [{"group": "", "kind": "Service", "name": "gone"}],
            "rules": [{"matches": [{"path": {"type": "RegularExpression", "value": "(["}}]}],
        }));
        let got = statuses(&route, &cluster());
        assert_eq!(got[0].conditions[0].reason, "NoMatchingParent");
        let m = message(&got, ACCEPTED);
        assert!(
            m.contains("shop/gone not found") && m.contains("spec.rules[0].matches[0].path.value"),
            "{m}"
        );
    }

    #[test]
    fn a_missing_backend_service_or_port_is_backend_not_found() {
        let route = http(to_web(serde_json::json!([{"name": "nope", "port": 80}])));
        let got = statuses(&route, &cluster());
        assert_eq!(
            conditions(&got),
            [
                cond(ACCEPTED, "True", "Accepted"),
                cond(RESOLVED_REFS, "False", "BackendNotFound")
            ]
        );
        assert_eq!(
            message(&got, RESOLVED_REFS),
            "spec.rules[0].backendRefs[0]: Service shop/nope not found"
        );
        let route = http(to_web(serde_json::json!([{"name": "api", "port": 9999}])));
        let got = statuses(&route, &cluster());
        assert_eq!(got[0].conditions[1].reason, "BackendNotFound");
        assert!(message(&got, RESOLVED_REFS).contains("has no port 9999"));
    }

    #[test]
    fn a_mirror_backend_is_resolved_too() {
        let route = http(serde_json::json!({
            "parentRefs": [{"group": "", "kind": "Service", "name": "web"}],
            "rules": [{"filters": [{"type": "RequestMirror",
                                    "requestMirror": {"backendRef": {"name": "shadow", "port": 80}}}],
                       "backendRefs": [{"name": "api", "port": 8080}]}],
        }));
        let got = statuses(&route, &cluster());
        assert_eq!(got[0].conditions[1].reason, "BackendNotFound");
        assert!(
            message(&got, RESOLVED_REFS).starts_with(
                "spec.rules[0].filters[0].requestMirror.backendRef: Service shop/shadow"
            ),
            "{}",
            message(&got, RESOLVED_REFS)
        );
    }

    #[test]
    fn a_cross_namespace_backend_needs_no_grant() {
        let route = http(to_web(
            serde_json::json!([{"name": "ledger", "namespace": "pay", "port": 9000}]),
        ));
        let got = statuses(&route, &cluster());
        assert_eq!(
            conditions(&got),
            [
                cond(ACCEPTED, "True", "Accepted"),
                cond(RESOLVED_REFS, "True", "ResolvedRefs")
            ]
        );
        assert_eq!(
            message(&got, RESOLVED_REFS),
            "all 1 backend references resolved"
        );
    }

    #[test]
    fn a_missing_service_elsewhere_is_backend_not_found() {
        // Said as it is: a mesh route may name any Service, as its clients
        // may connect to any, so there is nothing to hide from its author.
        let route = http(to_web(
            serde_json::json!([{"name": "nothing", "namespace": "pay", "port": 1}]),
        ));
        let got = statuses(&route, &cluster());
        assert_eq!(got[0].conditions[1].reason, "BackendNotFound");
        assert_eq!(
            message(&got, RESOLVED_REFS),
            "spec.rules[0].backendRefs[0]: Service pay/nothing not found"
        );
        // Its port, likewise.
        let route = http(to_web(
            serde_json::json!([{"name": "ledger", "namespace": "pay", "port": 80}]),
        ));
        let got = statuses(&route, &cluster());
        assert_eq!(got[0].conditions[1].reason, "BackendNotFound");
        assert!(
            message(&got, RESOLVED_REFS).contains("Service pay/ledger has no port 80"),
            "{}",
            message(&got, RESOLVED_REFS)
        );
    }

    #[test]
    fn a_backend_of_another_kind_is_invalid_kind() {
        let route = http(to_web(serde_json::json!([
            {"group": "example.com", "kind": "Bucket", "name": "b", "port": 80}
        ])));
        let got = statuses(&route, &cluster());
        // compile refuses the backend as well: the route is not applied.
        assert_eq!(
            conditions(&got),
            [
                cond(ACCEPTED, "False", "UnsupportedValue"),
                cond(RESOLVED_REFS, "False", "InvalidKind")
            ]
        );
        assert!(message(&got, RESOLVED_REFS).contains("kind Bucket of group example.com"));
    }

    #[test]
    fn the_first_problem_gives_the_reason_and_all_are_counted() {
        let route = http(to_web(serde_json::json!([
            {"group": "example.com", "kind": "Bucket", "name": "b", "port": 80},
            {"name": "ledger", "namespace": "pay", "port": 9000},
            {"name": "c", "port": 1}, {"name": "d", "namespace": "pay", "port": 1},
            {"name": "e", "port": 1}, {"name": "f", "port": 1}, {"name": "g", "port": 1},
        ])));
        let got = statuses(&route, &cluster());
        assert_eq!(got[0].conditions[1].reason, "InvalidKind");
        let m = message(&got, RESOLVED_REFS);
        assert!(
            m.starts_with("spec.rules[0].backendRefs[0]: kind Bucket")
                && m.contains("; spec.rules[0].backendRefs[2]: Service shop/c not found")
                && m.contains("; spec.rules[0].backendRefs[3]: Service pay/d not found")
                && !m.contains("backendRefs[1]"),
            "{m}"
        );
        assert!(m.ends_with("; and 2 more"), "{m}");
    }

    #[test]
    fn grpc_routes_get_the_same_conditions() {
        let route = grpc(serde_json::json!({
            "parentRefs": [{"group": "", "kind": "Service", "name": "api", "port": 8080}],
            "rules": [{"backendRefs": [{"name": "ledger", "namespace": "pay", "port": 9000}]}],
        }));
        let compiled = compile_grpc_route(&route);
        let mut c = cluster();
        let got = grpc_route_parents(&route, &compiled, &c, &observed(&[]));
        assert_eq!(got[0].conditions[0].reason, "Accepted");
        assert_eq!(got[0].conditions[1].reason, "ResolvedRefs");
        c.remove_service("pay", "ledger");
        let got = grpc_route_parents(&route, &compiled, &c, &observed(&[]));
        assert_eq!(got[0].conditions[1].reason, "BackendNotFound");
        assert_eq!(
            message(&got, RESOLVED_REFS),
            "spec.rules[0].backendRefs[0]: Service pay/ledger not found"
        );

        let bad = grpc(serde_json::json!({
            "parentRefs": [{"group": "", "kind": "Service", "name": "api"}],
            "rules": [{"matches": [{"method": {"type": "RegularExpression", "service": "(["}}]}],
        }));
        let got = grpc_route_parents(&bad, &compile_grpc_route(&bad), &c, &observed(&[]));
        assert_eq!(got[0].conditions[0].reason, "UnsupportedValue");
        assert!(message(&got, ACCEPTED).contains("spec.rules[0].matches[0].method.service"));
    }

    #[test]
    fn an_unchanged_condition_keeps_its_transition_time() {
        let route = http(to_web(serde_json::json!([{"name": "api", "port": 8080}])));
        let mut previous = statuses(&route, &cluster());
        for c in &mut previous[0].conditions {
            c.last_transition_time = EARLIER.into();
        }
        // Another controller's entry for the same parent is not ours to read.
        let mut theirs = previous[0].clone();
        theirs.controller_name = "example.com/other".into();
        let both = [theirs, previous[0].clone()];
        let again = http_route_parents(
            &route,
            &compile_http_route(&route),
            &cluster(),
            &observed(&both),
        );
        assert!(
            again[0]
                .conditions
                .iter()
                .all(|c| c.last_transition_time == EARLIER),
            "{again:#?}"
        );

        // ResolvedRefs turns False: it moves to now, Accepted stays.
        let mut c = cluster();
        c.remove_service("shop", "api");
        let changed = http_route_parents(&route, &compile_http_route(&route), &c, &observed(&both));
        assert_eq!(changed[0].conditions[0].last_transition_time, EARLIER);
        assert_eq!(changed[0].conditions[1].last_transition_time, NOW);

        // Same status, another reason: a transition as well.
        let mut reasons = previous.clone();
        reasons[0].conditions[0].reason = "Pending".into();
        let got = http_route_parents(
            &route,
            &compile_http_route(&route),
            &cluster(),
            &observed(&reasons),
        );
        assert_eq!(got[0].conditions[0].last_transition_time, NOW);
    }

    #[test]
    fn a_previous_entry_of_another_parent_is_not_taken() {
        let route = http(to_web(serde_json::json!([])));
        let mut previous = statuses(&route, &cluster());
        previous[0].parent_ref.port = Some(81);
        previous[0].conditions[0].last_transition_time = EARLIER.into();
        let got = http_route_parents(
            &route,
            &compile_http_route(&route),
            &cluster(),
            &observed(&previous),
        );
        assert_eq!(got[0].conditions[0].last_transition_time, NOW);
    }

    #[test]
    fn an_unreadable_route_is_not_accepted_by_its_service_parents() {
        let parents: Vec<ParentRef> = serde_json::from_value(serde_json::json!([
            {"group": "", "kind": "Service", "name": "web"}, {"name": "gw"}
        ]))
        .unwrap();
        let got = unreadable_route_parents(&parents, "spec.rules: invalid type", &observed(&[]));
        assert_eq!(got.len(), 1);
        assert_eq!(
            conditions(&got),
            [cond(ACCEPTED, "False", "UnsupportedValue")]
        );
        assert_eq!(
            message(&got, ACCEPTED),
            "the route cannot be read: spec.rules: invalid type"
        );
    }

    #[test]
    fn long_messages_are_cut_at_the_condition_limit() {
        let long = "é".repeat(MAX_MESSAGE);
        let cut = bounded(long);
        assert!(cut.len() <= MAX_MESSAGE && cut.ends_with("..."));
        assert_eq!(bounded("short".into()), "short");
    }

    #[test]
    fn the_cluster_reports_changes_only() {
        let mut c = Cluster::default();
        assert!(c.set_service("a", "s", service(&[(80, None)])));
        assert!(!c.set_service("a", "s", service(&[(80, None)])));
        assert!(c.set_service("a", "s", service(&[(81, None)])));
        assert!(c.remove_service("a", "s"));
        assert!(!c.remove_service("a", "s"));
        assert!(c.replace_services([("a".into(), "s".into(), service(&[(1, None)]))]));
        assert!(!c.replace_services([("a".into(), "s".into(), service(&[(1, None)]))]));
    }

    /// `cluster()` with shop/echo (80 "http", 9090 "grpc", 9091).
    fn with_echo() -> Cluster {
        let mut c = cluster();
        c.set_service(
            "shop",
            "echo",
            service(&[(80, Some("http")), (9090, Some("grpc")), (9091, None)]),
        );
        c
    }

    /// A GRPCRoute `namespace/name` with `parents`, compiled, as the
    /// cluster keeps it.
    fn grpc_on(namespace: &str, name: &str, parents: serde_json::Value) -> GrpcAttachment {
        let route: spec::GrpcRoute = serde_json::from_value(serde_json::json!({
            "metadata": {"name": name, "namespace": namespace},
            "spec": {"parentRefs": parents},
        }))
        .unwrap();
        GrpcAttachment::of(&compile_grpc_route(&route).unwrap()).unwrap()
    }

    fn echo(port: Option<u16>) -> serde_json::Value {
        match port {
            Some(p) => {
                serde_json::json!([{"group": "", "kind": "Service", "name": "echo", "port": p}])
            }
            None => serde_json::json!([{"group": "", "kind": "Service", "name": "echo"}]),
        }
    }

    #[test]
    fn an_http_route_on_a_port_a_grpc_route_holds_is_conflicted() {
        let mut c = with_echo();
        c.set_grpc_route(grpc_on("shop", "g", echo(Some(9090))));
        let route = http(serde_json::json!({"parentRefs": echo(Some(9090))}));
        let got = statuses(&route, &c);
        assert_eq!(
            conditions(&got),
            [
                cond(ACCEPTED, "False", "Conflicted"),
                cond(RESOLVED_REFS, "True", "ResolvedRefs")
            ]
        );
        assert_eq!(
            message(&got, ACCEPTED),
            "Service shop/echo: port 9090 is held by GRPCRoute shop/g; a GRPCRoute takes a \
             Service port over HTTPRoutes (GEP-1426), so this route applies to none of the \
             ports it names"
        );
        // Its other ports are free.
        let route = http(serde_json::json!({"parentRefs": echo(Some(80))}));
        assert_eq!(statuses(&route, &c)[0].conditions[0].reason, "Accepted");
        // The GRPCRoute gone, the port is the HTTPRoute's again.
        assert!(c.remove_grpc_route("shop", "g"));
        let route = http(serde_json::json!({"parentRefs": echo(Some(9090))}));
        assert_eq!(
            conditions(&statuses(&route, &c)),
            [
                cond(ACCEPTED, "True", "Accepted"),
                cond(RESOLVED_REFS, "True", "ResolvedRefs")
            ]
        );
    }

    #[test]
    fn a_route_on_some_held_ports_stays_accepted_and_says_which() {
        let mut c = with_echo();
        c.set_grpc_route(grpc_on("shop", "g", echo(Some(9090))));
        let route = http(serde_json::json!({"parentRefs": echo(None)}));
        let got = statuses(&route, &c);
        assert_eq!(got[0].conditions[0].reason, "Accepted");
        assert_eq!(got[0].conditions[0].status, "True");
        assert_eq!(
            message(&got, ACCEPTED),
            "attached to Service shop/echo (every port), applied to ports 80, 9091 only: \
             port 9090 is held by GRPCRoute shop/g; a GRPCRoute takes a Service port over \
             HTTPRoutes (GEP-1426)"
        );
        // A GRPCRoute without port or sectionName holds every port.
        c.set_grpc_route(grpc_on("shop", "all", echo(None)));
        let got = statuses(&route, &c);
        assert_eq!(got[0].conditions[0].reason, "Conflicted");
        let m = message(&got, ACCEPTED);
        assert!(
            m.starts_with(
                "Service shop/echo: port 80 is held by GRPCRoute shop/all; \
                 port 9090 is held by GRPCRoutes shop/all, shop/g; \
                 port 9091 is held by GRPCRoute shop/all; "
            ),
            "{m}"
        );
    }

    #[test]
    fn a_grpc_route_holds_the_ports_it_is_accepted_by() {
        let mut c = with_echo();
        let on = |parents: serde_json::Value| grpc_on("shop", "g", parents);
        // By sectionName: that port only.
        c.set_grpc_route(on(serde_json::json!(
            [{"group": "", "kind": "Service", "name": "echo", "sectionName": "grpc"}]
        )));
        assert_eq!(c.grpc_holders("shop", "echo", 9090, "shop").len(), 1);
        assert!(c.grpc_holders("shop", "echo", 80, "shop").is_empty());
        // Not Accepted: group left to Gateway API's, another Service, a
        // port the Service lacks. None holds anything.
        for parents in [
            serde_json::json!([{"kind": "Service", "name": "echo"}]),
            serde_json::json!([{"group": "", "kind": "Service", "name": "web"}]),
            serde_json::json!([{"group": "", "kind": "Service", "name": "echo", "port": 81}]),
            serde_json::json!([{"name": "echo"}]),
        ] {
            c.set_grpc_route(on(parents.clone()));
            for port in [80, 9090, 9091] {
                assert!(
                    c.grpc_holders("shop", "echo", port, "shop").is_empty(),
                    "{parents} {port}"
                );
            }
        }
        // A headless Service: no route is Accepted by it.
        c.set_grpc_route(on(echo(None)));
        assert_eq!(c.grpc_holders("shop", "echo", 80, "shop").len(), 1);
        let mut headless = service(&[(80, Some("http"))]);
        headless.cluster_ip = false;
        c.set_service("shop", "echo", headless);
        assert!(c.grpc_holders("shop", "echo", 80, "shop").is_empty());
        assert!(c.grpc_holders("shop", "gone", 80, "shop").is_empty());
    }

    #[test]
    fn producer_and_consumer_routes_conflict_within_their_audience_only() {
        let mut c = with_echo();
        let consumer_http = |c: &Cluster| {
            let route: spec::HttpRoute = serde_json::from_value(serde_json::json!({
                "metadata": {"name": "r", "namespace": "client"},
                "spec": {"parentRefs": [{"group": "", "kind": "Service", "name": "echo",
                                         "namespace": "shop", "port": 9090}]},
            }))
            .unwrap();
            statuses(&route, c)[0].conditions[0].reason.clone()
        };
        let producer_http = |c: &Cluster| {
            statuses(
                &http(serde_json::json!({"parentRefs": echo(Some(9090))})),
                c,
            )[0]
            .conditions[0]
                .reason
                .clone()
        };
        // The producer's GRPCRoute takes the producer table's port only:
        // a consumer namespace's routes form a table of their own.
        c.set_grpc_route(grpc_on("shop", "g", echo(Some(9090))));
        assert_eq!(producer_http(&c), "Conflicted");
        assert_eq!(consumer_http(&c), "Accepted");
        c.remove_grpc_route("shop", "g");
        c.set_grpc_route(grpc_on(
            "client",
            "g",
            serde_json::json!([{"group": "", "kind": "Service", "name": "echo",
                                "namespace": "shop", "port": 9090}]),
        ));
        assert_eq!(producer_http(&c), "Accepted");
        assert_eq!(consumer_http(&c), "Conflicted");
        // A third namespace's GRPCRoute is neither's.
        c.remove_grpc_route("client", "g");
        c.set_grpc_route(grpc_on(
            "other",
            "g",
            serde_json::json!([{"group": "", "kind": "Service", "name": "echo",
                                "namespace": "shop"}]),
        ));
        assert_eq!(producer_http(&c), "Accepted");
        assert_eq!(consumer_http(&c), "Accepted");
    }

    #[test]
    fn a_grpc_route_is_never_conflicted_and_an_invalid_http_route_says_so_first() {
        let mut c = with_echo();
        c.set_grpc_route(grpc_on("shop", "other", echo(Some(9090))));
        // GRPCRoutes on one port merge.
        let route = grpc(serde_json::json!({"parentRefs": echo(Some(9090))}));
        let got = grpc_route_parents(&route, &compile_grpc_route(&route), &c, &observed(&[]));
        assert_eq!(got[0].conditions[0].reason, "Accepted");
        // An HTTPRoute that does not compile is in no table: why is said.
        let route = http(serde_json::json!({
            "parentRefs": echo(Some(9090)),
            "rules": [{"matches": [{"path": {"type": "RegularExpression", "value": "(["}}]}],
        }));
        assert_eq!(
            statuses(&route, &c)[0].conditions[0].reason,
            "UnsupportedValue"
        );
    }

    #[test]
    fn many_holders_of_a_port_are_counted_past_the_first_few() {
        let mut c = with_echo();
        for i in 0..MAX_LISTED + 2 {
            c.set_grpc_route(grpc_on("shop", &format!("g{i}"), echo(Some(9090))));
        }
        let route = http(serde_json::json!({"parentRefs": echo(Some(9090))}));
        let got = statuses(&route, &c);
        let m = message(&got, ACCEPTED);
        assert!(
            m.starts_with(
                "Service shop/echo: port 9090 is held by GRPCRoutes shop/g0, shop/g1, \
                 shop/g2, shop/g3 and 2 more; "
            ),
            "{m}"
        );
    }

    #[test]
    fn the_cluster_reports_grpc_route_changes_only() {
        let mut c = with_echo();
        let g = || grpc_on("shop", "g", echo(Some(9090)));
        assert!(c.set_grpc_route(g()));
        assert!(!c.set_grpc_route(g()));
        assert!(c.set_grpc_route(grpc_on("shop", "g", echo(None))));
        assert!(c.remove_grpc_route("shop", "g"));
        assert!(!c.remove_grpc_route("shop", "g"));
        assert!(c.replace_grpc_routes([g()]));
        assert!(!c.replace_grpc_routes([g()]));
        assert_eq!(g().id().to_string(), "shop/g");
        assert!(c.replace_grpc_routes([]));
        assert!(c.grpc_holders("shop", "echo", 9090, "shop").is_empty());
        // Only a GRPCRoute holds a port over routes of the other kind.
        let h = http(serde_json::json!({"parentRefs": echo(None)}));
        assert!(GrpcAttachment::of(&compile_http_route(&h).unwrap()).is_none());
    }

    #[test]
    fn kinds_are_named_as_the_api_names_them() {
        assert_eq!(RouteKind::Http.kind_name(), "HTTPRoute");
        assert_eq!(RouteKind::Grpc.kind_name(), "GRPCRoute");
    }
}
