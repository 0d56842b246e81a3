//! Which route rule a request takes and what that rule does with it,
//! decided from the request's head and the view alone: no I/O, so every
//! branch is a unit test, and `mesh inspect --request` runs the same
//! matcher. `http` carries the decision out.
use std::{net::SocketAddr, sync::Arc};

use http::{HeaderMap, Method, StatusCode};
use mesh_discovery::view::MeshView;
use mesh_route::{
    Request, RouteTable,
    compile::{BackendRef, Filter, HeaderModifier, Mirror, Retry, Scheme, Timeouts},
    redirect::{self, Original, Redirection},
    rewrite,
    split::{self, Pick},
};

use crate::target::Target;

/// The parts of a request's head routing reads.
#[derive(Debug, Clone, Copy)]
pub struct Head<'a> {
    pub method: &'a Method,
    /// Without the query.
    pub path: &'a str,
    /// Without `?`.
    pub query: Option<&'a str>,
    pub headers: &'a HeaderMap,
    /// Host / `:authority` without its port.
    pub host: &'a str,
}

/// Which rule matched, as metrics and logs name it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleName {
    /// `<namespace>/<name>` of the route.
    pub route: String,
    /// The rule's `name`, else its index in the route.
    pub rule: String,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    /// No route applies to this destination and client: the Service's own
    /// endpoints (or the workload's address).
    Default,
    /// Routes are attached and none matches: 404 (`NR`).
    NoMatch,
    Routed {
        rule: RuleName,
        action: Action,
    },
}

#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    Redirect(Redirection),
    /// 500 as Gateway API prescribes it: the rule cannot send anywhere.
    Unroutable(Unroutable),
    Forward(Box<Forward>),
}

/// Why a matched rule cannot send the request on (each answered 500).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Unroutable {
    #[error("the rule has no backend with a weight above 0")]
    NoBackend,
    /// The route's status reports it too.
    #[error("the rule cannot be applied: {0}")]
    InvalidRule(String),
    #[error("backend Service {0} does not exist")]
    NoSuchService(String),
    #[error("backend Service {service} has no port {port}")]
    NoSuchPort { service: String, port: u16 },
    /// An unresolvable filter is never skipped (Gateway API).
    #[error("the ExtensionRef's HTTPFaultInjection {0} does not exist or is not valid")]
    NoSuchFault(String),
}

/// Where a routed request goes and what is changed on its way.
#[derive(Debug, Clone, PartialEq)]
pub struct Forward {
    /// The backend Service chosen by weight (`<namespace>/<name>`), and
    /// the port of it.
    pub backend: BackendRef,
    pub endpoints: Vec<SocketAddr>,
    /// Request header changes, the rule's then the backend's, in order.
    pub request_headers: Vec<HeaderModifier>,
    pub response_headers: Vec<HeaderModifier>,
    /// A new path (the query kept) from URLRewrite.
    pub path: Option<String>,
    /// A new Host / `:authority` from URLRewrite.
    pub authority: Option<String>,
    pub mirrors: Vec<Mirror>,
    pub timeouts: Timeouts,
    pub retry: Option<Retry>,
    /// The HTTPFaultInjections the rule names, resolved; rolled per request
    /// by `mesh_route::fault::inject`.
    pub faults: Vec<Arc<mesh_route::fault::Fault>>,
}

/// The table that routes a client of `client_namespace` to `target`, if
/// any route applies.
pub fn table<'v>(
    view: &'v MeshView,
    target: &Target,
    client_namespace: Option<&str>,
) -> Option<&'v RouteTable> {
    match target {
        Target::Service { route, port } => view
            .routes
            .port_of(&route.service.namespace, &route.service.name, port.port)?
            .for_client(client_namespace),
        // Routes attach to Services (GAMMA); a workload's own address has
        // none.
        Target::Workload { .. } => None,
    }
}

/// The decision for one request. `roll` is a uniform random number, for
/// the weighted choice of a backend; `port` is the destination port (the
/// Service port), which a redirect keeps unless the rule changes it.
pub fn decide(
    view: &MeshView,
    table: Option<&RouteTable>,
    head: &Head<'_>,
    port: u16,
    roll: u32,
) -> Decision {
    let Some(table) = table else {
        return Decision::Default;
    };
    let query = mesh_route::uri::query_pairs(head.query);
    let request = Request {
        method: head.method,
        path: head.path,
        query: &query,
        headers: head.headers,
    };
    let Some(matched) = table.find(&request) else {
        return Decision::NoMatch;
    };
    let rule = RuleName {
        route: matched.route.to_string(),
        rule: matched
            .rule_name()
            .map_or_else(|| matched.rule_index().to_string(), str::to_owned),
    };
    if let Some(why) = &matched.rule.invalid {
        return Decision::Routed {
            rule,
            action: Action::Unroutable(Unroutable::InvalidRule(why.to_string())),
        };
    }
    let mut faults = Vec::with_capacity(matched.rule.faults.len());
    for r in &matched.rule.faults {
        match view.fault(r) {
            Some(f) => faults.push(f.clone()),
            None => {
                let action = Action::Unroutable(Unroutable::NoSuchFault(r.to_string()));
                return Decision::Routed { rule, action };
            }
        }
    }
    let mut forward = Forward {
        backend: BackendRef {
            namespace: String::new(),
            name: String::new(),
            port: 0,
        },
        endpoints: Vec::new(),
        request_headers: Vec::new(),
        response_headers: Vec::new(),
        path: None,
        authority: None,
        mirrors: Vec::new(),
        timeouts: matched.rule.timeouts,
        retry: matched.rule.retry.clone(),
        faults,
    };
    for filter in matched.filters() {
        if let Filter::Redirect(r) = filter {
            let original = Original {
                scheme: Scheme::Http,
                host: head.host,
                port,
                path: head.path,
                query: head.query,
            };
            let action = Action::Redirect(redirect::redirect(r, matched.prefix, &original));
            return Decision::Routed { rule, action };
        }
        take_filter(&mut forward, filter, matched.prefix, head.path);
    }
    let backend = match split::pick(matched.backends(), roll) {
        Pick::Backend(b) => b,
        Pick::NoBackend => {
            let action = Action::Unroutable(Unroutable::NoBackend);
            return Decision::Routed { rule, action };
        }
    };
    if let Err(why) = resolve(view, &backend.target).map(|endpoints| forward.endpoints = endpoints)
    {
        return Decision::Routed {
            rule,
            action: Action::Unroutable(why),
        };
    }
    for filter in &backend.filters {
        take_filter(&mut forward, filter, matched.prefix, head.path);
    }
    forward.backend = backend.target.clone();
    Decision::Routed {
        rule,
        action: Action::Forward(Box::new(forward)),
    }
}

/// A filter's effect, added to what is forwarded. Redirects are handled
/// before (they end the request here).
fn take_filter(forward: &mut Forward, filter: &Filter, prefix: Option<&str>, path: &str) {
    match filter {
        Filter::RequestHeaders(m) => forward.request_headers.push(m.clone()),
        Filter::ResponseHeaders(m) => forward.response_headers.push(m.clone()),
        Filter::Rewrite(r) => {
            let done = rewrite::rewrite(r, prefix, path);
            if done.path.is_some() {
                forward.path = done.path;
            }
            if done.authority.is_some() {
                forward.authority = done.authority;
            }
        }
        Filter::Mirror(m) => forward.mirrors.push(m.clone()),
        Filter::Redirect(_) => {}
    }
}

/// The ready endpoints of a backend Service port. A mesh route may send to
/// a Service in any namespace without a ReferenceGrant (GEP-1294: unlike a
/// Gateway's routes, a mesh route reaches nothing its clients could not
/// reach themselves), so none is asked for.
pub fn resolve(view: &MeshView, backend: &BackendRef) -> Result<Vec<SocketAddr>, Unroutable> {
    let key = format!("{}/{}", backend.namespace, backend.name);
    let service = view
        .service(&key)
        .ok_or_else(|| Unroutable::NoSuchService(key.clone()))?;
    let port = service.port(backend.port).ok_or(Unroutable::NoSuchPort {
        service: key,
        port: backend.port,
    })?;
    Ok(port.endpoints.clone())
}

impl Unroutable {
    pub fn status(&self) -> StatusCode {
        StatusCode::INTERNAL_SERVER_ERROR
    }
}

#[cfg(test)]
mod tests {
    use std::net::IpAddr;

    use mesh_discovery::{
        model::{Service, ServiceKind, ServicePort, TargetPort},
        store::Store,
        view::{MeshView, ViewSettings},
    };
    use mesh_route::{Strictness, compile_http_route_with, spec::HttpRoute};

    use super::*;

    /// Service shop/web: VIP 10.96.0.1, port 80 to 8080.
    fn web() -> Service {
        Service {
            name: "web".into(),
            namespace: "shop".into(),
            kind: ServiceKind::ClusterIp(vec!["10.96.0.1".parse::<IpAddr>().unwrap()]),
            ports: vec![ServicePort {
                name: "http".into(),
                port: 80,
                target: TargetPort::Number(8080),
                app_protocol: None,
            }],
            selector: None,
            labels: Default::default(),
        }
    }

    /// Service shop/web (port 80) with one route from the API whose first
    /// rule cannot be applied (RequestRedirect with URLRewrite).
    fn view() -> MeshView {
        let mut store = Store::default();
        store.services.apply("shop/web".into(), web());
        let route: HttpRoute = serde_json::from_str(
            r#"{"metadata":{"name":"r","namespace":"shop"},"spec":{
              "parentRefs":[{"group":"","kind":"Service","name":"web"}],
              "rules":[
                {"name":"bad","matches":[{"path":{"type":"PathPrefix","value":"/a"}}],
                 "filters":[{"type":"RequestRedirect","requestRedirect":{"hostname":"x"}},
                            {"type":"URLRewrite","urlRewrite":{"hostname":"y"}}]},
                {"backendRefs":[{"name":"web","port":80}]}]}}"#,
        )
        .unwrap();
        let compiled = compile_http_route_with(&route, Strictness::KeepRules).unwrap();
        store.http_routes.apply("shop/r".into(), compiled);
        MeshView::build(&store, &ViewSettings::default())
    }

    fn decision(view: &MeshView, path: &str) -> Decision {
        let table = view
            .routes
            .port("shop/web", 80)
            .and_then(|p| p.for_client(Some("shop")));
        let headers = HeaderMap::new();
        let head = Head {
            method: &Method::GET,
            path,
            query: None,
            headers: &headers,
            host: "web.shop",
        };
        decide(view, table, &head, 80, 0)
    }

    #[test]
    fn a_rule_that_cannot_be_applied_answers_500_and_the_others_still_route() {
        let view = view();
        let Decision::Routed { rule, action } = decision(&view, "/a/x") else {
            panic!("routed");
        };
        assert_eq!(rule.rule, "bad");
        let Action::Unroutable(Unroutable::InvalidRule(why)) = action else {
            panic!("{action:?}");
        };
        assert!(why.contains("spec.rules[0].filters"), "{why}");
        let Decision::Routed { action, .. } = decision(&view, "/b") else {
            panic!("routed");
        };
        let Action::Forward(f) = action else {
            panic!("{action:?}");
        };
        assert_eq!((f.backend.name.as_str(), f.backend.port), ("web", 80));
    }

    /// A rule naming `shop/<name>` as its HTTPFaultInjection, with
    /// `shop/slow` the only one in the store.
    fn fault_decision(name: &str) -> Decision {
        let mut store = Store::default();
        store.services.apply("shop/web".into(), web());
        let route: HttpRoute = serde_json::from_str(&format!(
            r#"{{"metadata":{{"name":"r","namespace":"shop"}},"spec":{{
              "parentRefs":[{{"group":"","kind":"Service","name":"web"}}],
              "rules":[{{"filters":[{{"type":"ExtensionRef","extensionRef":
                  {{"group":"mesh.io","kind":"HTTPFaultInjection","name":"{name}"}}}}],
                 "backendRefs":[{{"name":"web","port":80}}]}}]}}}}"#
        ))
        .unwrap();
        let compiled = compile_http_route_with(&route, Strictness::KeepRules).unwrap();
        store.http_routes.apply("shop/r".into(), compiled);
        let spec = serde_json::from_str(r#"{"abort":{"httpStatus":503}}"#).unwrap();
        store.faults.apply(
            "shop/slow".into(),
            mesh_route::fault::compile(&spec).unwrap(),
        );
        decision(&MeshView::build(&store, &ViewSettings::default()), "/")
    }

    #[test]
    fn a_rules_fault_is_resolved_in_the_routes_namespace_and_a_missing_one_answers_500() {
        let Decision::Routed { action, .. } = fault_decision("slow") else {
            panic!("routed");
        };
        let Action::Forward(f) = action else {
            panic!("{action:?}");
        };
        assert_eq!(f.faults.len(), 1);
        assert!(f.faults[0].abort.is_some());
        let Decision::Routed { action, .. } = fault_decision("gone") else {
            panic!("routed");
        };
        assert_eq!(
            action,
            Action::Unroutable(Unroutable::NoSuchFault("shop/gone".into()))
        );
    }
}
