//! The Gateway API kinds the route status controller reads, watched
//! untyped (as discovery watches Gateways) so that a route is decoded one
//! object at a time into `mesh_route::spec`, and whether the API server
//! serves them: Gateway API's CRDs are optional, and without them there
//! is nothing to report on.
use kube::{
    Client,
    api::{ApiResource, DynamicObject, GroupVersionKind},
};
use mesh_route::{compile::RouteKind, spec::GROUP};
use serde_json::{Value, json};

use crate::status_controller::served;

pub fn http_route() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk(GROUP, "v1", "HTTPRoute"),
        "httproutes",
    )
}

pub fn grpc_route() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk(GROUP, "v1", "GRPCRoute"),
        "grpcroutes",
    )
}

pub fn route_resource(kind: RouteKind) -> ApiResource {
    match kind {
        RouteKind::Http => http_route(),
        RouteKind::Grpc => grpc_route(),
    }
}

/// The parts of a route object `mesh_route::spec` reads (its name,
/// namespace and age, and its spec), ready to decode into either kind.
pub fn route_object(route: &DynamicObject) -> Value {
    json!({
        "metadata": {
            "name": route.metadata.name,
            "namespace": route.metadata.namespace,
            "creationTimestamp": route.metadata.creation_timestamp,
        },
        "spec": route.data.get("spec").cloned().unwrap_or_else(|| json!({})),
    })
}

/// Which of the kinds the API server serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Served {
    pub http_routes: bool,
    pub grpc_routes: bool,
}

impl Served {
    pub fn any_route(&self) -> bool {
        self.http_routes || self.grpc_routes
    }

    pub fn routes(&self) -> impl Iterator<Item = RouteKind> + use<> {
        let (http, grpc) = (self.http_routes, self.grpc_routes);
        [(RouteKind::Http, http), (RouteKind::Grpc, grpc)]
            .into_iter()
            .filter(|(_, served)| *served)
            .map(|(kind, _)| kind)
    }

    /// Asks the API server for one object of each kind: a 404 means the
    /// kind's CRD is not installed; any other failure is an error (a
    /// forbidden list is a missing permission, not a missing kind).
    pub async fn probe(client: &Client) -> Result<Served, kube::Error> {
        Ok(Served {
            http_routes: served(client, &http_route()).await?,
            grpc_routes: served(client, &grpc_route()).await?,
        })
    }
}
