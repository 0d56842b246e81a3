//! Whether a backendRef can be sent to, as the waypoint decides it
//! (`mesh_waypoint::routing::resolve`): the Service and its port exist, in
//! whatever namespace (a mesh route needs no ReferenceGrant, GEP-1294). A
//! request the waypoint would send to one that does not is answered 500.
use std::fmt;

use mesh_discovery::view::MeshView;
use mesh_route::compile::BackendRef;

use super::describe::{Unresolved, backend_name};

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RefProblem {
    NoService { backend: String },
    NoPort { backend: String, ports: Vec<u16> },
}

impl RefProblem {
    /// Gateway API's ResolvedRefs reason.
    pub fn reason(&self) -> &'static str {
        "BackendNotFound"
    }

    pub fn unresolved(&self) -> Unresolved {
        Unresolved {
            reason: self.reason(),
            message: self.to_string(),
        }
    }
}

impl fmt::Display for RefProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
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

/// Why requests sent to `backend` are answered 500; `None` when they are
/// forwarded to its endpoints.
pub fn problem(view: &MeshView, backend: &BackendRef) -> Option<RefProblem> {
    let name = backend_name(backend);
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
