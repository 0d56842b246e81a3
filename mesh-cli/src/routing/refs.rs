//! Whether a route's backendRef can be used: the Service and its port
//! exist, and a Service in another namespace has a ReferenceGrant letting
//! the route's namespace use it (`mesh_route::grant::permits`). A request
//! the waypoint would send to a ref that cannot be used is answered 500.
use std::fmt;

use mesh_discovery::view::MeshView;
use mesh_route::{
    compile::{BackendRef, RouteKind},
    grant,
};

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RefProblem {
    /// In another namespace, and no ReferenceGrant there allows it.
    NotPermitted {
        kind: RouteKind,
        from: String,
        backend: String,
    },
    NoService {
        backend: String,
    },
    NoPort {
        backend: String,
        ports: Vec<u16>,
    },
}

impl RefProblem {
    pub fn unresolved(&self) -> super::describe::Unresolved {
        super::describe::Unresolved {
            reason: self.reason(),
            message: self.to_string(),
        }
    }

    /// Gateway API's ResolvedRefs reason.
    pub fn reason(&self) -> &'static str {
        match self {
            RefProblem::NotPermitted { .. } => "RefNotPermitted",
            RefProblem::NoService { .. } | RefProblem::NoPort { .. } => "BackendNotFound",
        }
    }
}

impl fmt::Display for RefProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RefProblem::NotPermitted {
                kind,
                from,
                backend,
            } => write!(
                f,
                "{backend}: no ReferenceGrant in its namespace lets {}s of namespace {from} use it",
                kind.kind_name()
            ),
            RefProblem::NoService { backend } => write!(f, "{backend}: no such Service"),
            RefProblem::NoPort { backend, ports } => {
                let ports: Vec<String> = ports.iter().map(ToString::to_string).collect();
                write!(
                    f,
                    "{backend}: the Service has no such port (it has {})",
                    if ports.is_empty() {
                        "none".to_owned()
                    } else {
                        ports.join(", ")
                    }
                )
            }
        }
    }
}

/// Why `backend`, named in a route of `kind` in `route_namespace`, cannot
/// be used; `None` when it can. The grant is checked first, so a Service
/// the route may not use is never reported as present or absent.
pub fn problem(
    view: &MeshView,
    kind: RouteKind,
    route_namespace: &str,
    backend: &BackendRef,
) -> Option<RefProblem> {
    let name = super::describe::backend_name(backend);
    if !grant::permits(view.routes.grants(), kind, route_namespace, backend) {
        return Some(RefProblem::NotPermitted {
            kind,
            from: route_namespace.to_owned(),
            backend: name,
        });
    }
    let key = format!("{}/{}", backend.namespace, backend.name);
    let Some(svc) = view.service(&key) else {
        return Some(RefProblem::NoService { backend: name });
    };
    if svc.service.ports.iter().any(|p| p.port == backend.port) {
        return None;
    }
    Some(RefProblem::NoPort {
        backend: name,
        ports: svc.service.ports.iter().map(|p| p.port).collect(),
    })
}
