//! What route statuses depend on besides the route itself: every Service
//! (its ports and whether it has a cluster IP) and every GRPCRoute that
//! compiles (its parentRefs: an HTTPRoute on a port a GRPCRoute holds is
//! Conflicted), kept in one `mesh_route::status::Cluster` from watches.
//! Only the facts are kept, not the objects; a change that alters no fact
//! (a label, an annotation, a load balancer's status, a route's own
//! status) wakes nobody. ReferenceGrants are not among them: a mesh route
//! needs none (GEP-1294).
use std::sync::{Arc, PoisonError, RwLock};

use futures::{StreamExt, stream};
use k8s_openapi::api::core::v1::Service;
use kube::{
    Api, Client,
    api::{DynamicObject, ObjectMeta},
    runtime::{WatchStreamExt, watcher},
};
use mesh_route::{
    compile::compile_grpc_route,
    spec::GrpcRoute,
    status::{self, Cluster, GrpcAttachment},
};
use tokio::sync::watch;
use tracing::warn;

use super::kinds;

/// The facts one object gives, keyed by namespace and name; None when
/// the object cannot be used (it is then treated as absent).
type Keyed<T> = Option<(String, String, T)>;

/// A Service's facts.
pub fn service_facts(service: &Service) -> Keyed<status::Service> {
    let (namespace, name) = key(&service.metadata)?;
    let spec = service.spec.as_ref();
    let ports = spec
        .and_then(|s| s.ports.as_ref())
        .map(|ports| {
            ports
                .iter()
                .filter_map(|p| {
                    Some(status::Port {
                        number: u16::try_from(p.port).ok()?,
                        name: p.name.clone().filter(|n| !n.is_empty()),
                    })
                })
                .collect()
        })
        .unwrap_or_default();
    let external = spec.and_then(|s| s.type_.as_deref()) == Some("ExternalName");
    let cluster_ip = !external
        && spec
            .and_then(|s| s.cluster_ip.as_deref())
            .is_some_and(|ip| !ip.is_empty() && ip != "None");
    Some((namespace, name, status::Service { ports, cluster_ip }))
}

/// A GRPCRoute's facts: its parentRefs, if it decodes and compiles (one
/// that does not is in no table of the data plane, so it holds no port).
pub fn grpc_route_facts(route: &DynamicObject) -> Keyed<GrpcAttachment> {
    let (namespace, name) = key(&route.metadata)?;
    let spec: GrpcRoute = serde_json::from_value(kinds::route_object(route)).ok()?;
    let compiled = compile_grpc_route(&spec).ok()?;
    Some((namespace, name, GrpcAttachment::of(&compiled)?))
}

fn key(meta: &ObjectMeta) -> Option<(String, String)> {
    Some((meta.namespace.clone()?, meta.name.clone()?))
}

/// A watch's progress through a (re-)list: objects listed so far, applied
/// at once when the list is complete, so that a re-list never shows a
/// half-empty cluster.
pub struct Relist<T> {
    listed: Option<Vec<(String, String, T)>>,
    pub synced: bool,
}

impl<T> Default for Relist<T> {
    fn default() -> Self {
        Self {
            listed: None,
            synced: false,
        }
    }
}

/// What one watch event does to the facts.
#[derive(Debug, PartialEq)]
pub enum Change<T> {
    Set(String, String, T),
    Remove(String, String),
    Replace(Vec<(String, String, T)>),
    None,
}

impl<T> Relist<T> {
    pub fn follow<K>(
        &mut self,
        event: watcher::Event<K>,
        facts: impl Fn(&K) -> Keyed<T>,
        key_of: impl Fn(&K) -> Option<(String, String)>,
    ) -> Change<T> {
        match event {
            watcher::Event::Init => {
                self.listed = Some(Vec::new());
                Change::None
            }
            watcher::Event::InitApply(o) => {
                if let (Some(listed), Some(f)) = (self.listed.as_mut(), facts(&o)) {
                    listed.push(f);
                }
                Change::None
            }
            watcher::Event::InitDone => {
                self.synced = true;
                Change::Replace(self.listed.take().unwrap_or_default())
            }
            watcher::Event::Apply(o) => match facts(&o) {
                Some((ns, name, f)) => Change::Set(ns, name, f),
                // Unusable now: whatever it said before no longer holds.
                None => match key_of(&o) {
                    Some((ns, name)) => Change::Remove(ns, name),
                    None => Change::None,
                },
            },
            watcher::Event::Delete(o) => match key_of(&o) {
                Some((ns, name)) => Change::Remove(ns, name),
                None => Change::None,
            },
        }
    }
}

pub fn apply_service(cluster: &mut Cluster, change: Change<status::Service>) -> bool {
    match change {
        Change::Set(ns, name, s) => cluster.set_service(&ns, &name, s),
        Change::Remove(ns, name) => cluster.remove_service(&ns, &name),
        Change::Replace(all) => cluster.replace_services(all),
        Change::None => false,
    }
}

pub fn apply_grpc_route(cluster: &mut Cluster, change: Change<GrpcAttachment>) -> bool {
    match change {
        Change::Set(_, _, route) => cluster.set_grpc_route(route),
        Change::Remove(ns, name) => cluster.remove_grpc_route(&ns, &name),
        Change::Replace(all) => cluster.replace_grpc_routes(all.into_iter().map(|(_, _, r)| r)),
        Change::None => false,
    }
}

/// Who is told when the facts move.
pub struct Signals {
    /// A Service's facts changed: every route's status may have.
    pub services: watch::Sender<()>,
    /// A GRPCRoute's facts changed: an HTTPRoute's status may have.
    pub grpc_routes: watch::Sender<()>,
    /// Turns true once every kind followed has been listed.
    pub synced: watch::Sender<bool>,
}

/// One event of either watch, boxed: both are large, and of sizes far
/// apart.
enum Event {
    Service(Box<Result<watcher::Event<Service>, watcher::Error>>),
    GrpcRoute(Box<Result<watcher::Event<DynamicObject>, watcher::Error>>),
}

/// Follows Services, and GRPCRoutes when `grpc_routes` (the kind is
/// served), into `cluster` until dropped, telling `signals`.
pub async fn follow(
    client: Client,
    cluster: Arc<RwLock<Cluster>>,
    grpc_routes: bool,
    signals: Signals,
) {
    let services = watcher(
        Api::<Service>::all(client.clone()),
        watcher::Config::default(),
    )
    .default_backoff()
    .map(|e| Event::Service(Box::new(e)))
    .boxed();
    let grpcs = if grpc_routes {
        let resource = kinds::grpc_route();
        watcher(
            Api::<DynamicObject>::all_with(client, &resource),
            watcher::Config::default(),
        )
        .default_backoff()
        .map(|e| Event::GrpcRoute(Box::new(e)))
        .boxed()
    } else {
        stream::pending().boxed()
    };
    let mut events = stream::select(services, grpcs);
    let mut service_list = Relist::default();
    let mut grpc_list = Relist::default();
    while let Some(event) = events.next().await {
        let cluster_now = || cluster.write().unwrap_or_else(PoisonError::into_inner);
        match event {
            Event::Service(e) => match *e {
                Ok(e) => {
                    let change =
                        service_list.follow(e, service_facts, |s: &Service| key(&s.metadata));
                    if apply_service(&mut cluster_now(), change) {
                        signals.services.send_replace(());
                    }
                }
                Err(e) => {
                    warn!(error = %e, "route status: watch of Services failed; retrying with backoff");
                }
            },
            Event::GrpcRoute(e) => match *e {
                Ok(e) => {
                    let change =
                        grpc_list.follow(e, grpc_route_facts, |r: &DynamicObject| key(&r.metadata));
                    if apply_grpc_route(&mut cluster_now(), change) {
                        signals.grpc_routes.send_replace(());
                    }
                }
                Err(e) => {
                    warn!(error = %e, "route status: watch of GRPCRoutes failed; retrying with backoff");
                }
            },
        }
        if service_list.synced && (grpc_list.synced || !grpc_routes) {
            signals
                .synced
                .send_if_modified(|s| !std::mem::replace(s, true));
        }
    }
}
