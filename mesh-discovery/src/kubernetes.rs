//! The Kubernetes source: one watcher per kind (Pods, Services,
//! EndpointSlices, Namespaces, AuthorizationPolicies, PeerAuthentications).
//! kube-runtime's watcher resumes watches from the last resourceVersion,
//! re-lists after 410 Gone and backs off on errors; objects are turned into
//! the slim model as they arrive, so only the fields the agent needs stay
//! in memory. Events that are ready together are applied as one batch and
//! published as one view.
//!
//! Policies are watched untyped (`DynamicObject`) and decoded one object at
//! a time: a typed watch fails a whole list, or drops a watch event, when
//! one object does not decode (a field newer than this agent, a typo), and
//! a DENY policy would then silently not exist. Decoded per object, an
//! unreadable policy becomes a fail-closed stand-in in its scope and the
//! others apply. Until both policy kinds have been listed once, the view
//! says so and no inbound traffic to pods is served.
pub mod fault_crd;
#[cfg(test)]
mod fault_tests;
#[cfg(test)]
mod tests;

use std::fmt::Debug;

use futures::{FutureExt, Stream, StreamExt, stream::BoxStream};
use k8s_openapi::api::{
    core::v1::{Namespace, Pod, Service},
    discovery::v1::EndpointSlice,
};
use kube::{
    Api, Client, Resource, ResourceExt,
    api::{ApiResource, DynamicObject},
    runtime::{WatchStreamExt, watcher},
};
use mesh_policy::{
    PolicySync,
    crd::{AuthorizationPolicyResource, PeerAuthenticationResource},
    load,
    load::Failure,
    sync::KindSync,
};
use serde::de::DeserializeOwned;
use tracing::{info, warn};

use super::{
    Publisher, Source, convert,
    store::{Collection, CompiledPolicy, Store},
};

pub struct KubernetesSource {
    client: Client,
}

impl KubernetesSource {
    pub fn new(client: Client) -> Self {
        Self { client }
    }
}

/// One event from any of the watchers (boxed: objects differ a lot in size).
enum Change {
    Pod(Box<watcher::Event<Pod>>),
    Service(Box<watcher::Event<Service>>),
    Slice(Box<watcher::Event<EndpointSlice>>),
    Namespace(Box<watcher::Event<Namespace>>),
    Authorization(Box<watcher::Event<DynamicObject>>),
    PeerAuthentication(Box<watcher::Event<DynamicObject>>),
    Gateway(Box<watcher::Event<DynamicObject>>),
    HttpRoute(Box<watcher::Event<DynamicObject>>),
    GrpcRoute(Box<watcher::Event<DynamicObject>>),
    RateLimit(Box<watcher::Event<DynamicObject>>),
    Fault(Box<watcher::Event<DynamicObject>>),
    DestinationRule(Box<watcher::Event<DynamicObject>>),
    RequestAuthentication(Box<watcher::Event<DynamicObject>>),
}

const KINDS: usize = 13;

fn watch<K>(
    client: &Client,
    wrap: fn(watcher::Event<K>) -> Change,
    index: usize,
) -> BoxStream<'static, (usize, Result<Change, watcher::Error>)>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + 'static,
{
    watcher(Api::<K>::all(client.clone()), watcher::Config::default())
        .default_backoff()
        .map(move |r| (index, r.map(wrap)))
        .boxed()
}

/// A policy kind, watched untyped (see the module comment).
fn watch_untyped(
    client: &Client,
    resource: ApiResource,
    wrap: fn(watcher::Event<DynamicObject>) -> Change,
    index: usize,
) -> BoxStream<'static, (usize, Result<Change, watcher::Error>)> {
    watcher(
        Api::<DynamicObject>::all_with(client.clone(), &resource),
        watcher::Config::default(),
    )
    .default_backoff()
    .map(move |r| (index, r.map(wrap)))
    .boxed()
}

/// Per kind: the objects of a re-list in progress, and whether the kind
/// has been listed completely at least once.
struct KindState<T> {
    relist: Option<Vec<(String, T)>>,
    /// Keys of the re-list's objects that could not be used.
    relist_ignored: Vec<String>,
    synced: bool,
}

impl<T> Default for KindState<T> {
    fn default() -> Self {
        Self {
            relist: None,
            relist_ignored: Vec::new(),
            synced: false,
        }
    }
}

fn ns_name<K: Resource>(o: &K) -> String {
    format!(
        "{}/{}",
        o.meta().namespace.as_deref().unwrap_or("default"),
        o.meta().name.as_deref().unwrap_or_default()
    )
}

/// `<namespace>/<name>`, or `<name>` for a cluster-scoped object.
fn display_name<K: Resource>(o: &K) -> String {
    let name = o.meta().name.as_deref().unwrap_or_default();
    match o.meta().namespace.as_deref() {
        Some(ns) => format!("{ns}/{name}"),
        None => name.to_owned(),
    }
}

/// Applies one watcher event to one collection. `convert` turns an object
/// into its key and model value, or says why it cannot be used (logged; the
/// object is then treated as absent).
fn apply<K: Resource, T>(
    event: watcher::Event<K>,
    kind: &str,
    collection: &mut Collection<T>,
    state: &mut KindState<T>,
    key: impl Fn(&K) -> String,
    convert: impl Fn(&K) -> Result<T, convert::Invalid>,
) {
    let converted = |o: &K| match convert(o) {
        Ok(v) => Some(v),
        Err(e) => {
            // Named as people name it (a pod's key is its uid).
            warn!(kind, object = %display_name(o), key = %key(o), field = %e.field, problem = %e.problem, "object ignored");
            None
        }
    };
    match event {
        watcher::Event::Apply(o) => match converted(&o) {
            Some(v) => collection.apply(key(&o), v),
            None => collection.ignore(key(&o)),
        },
        watcher::Event::Delete(o) => collection.delete(&key(&o)),
        watcher::Event::Init => {
            state.relist = Some(Vec::new());
            state.relist_ignored.clear();
        }
        watcher::Event::InitApply(o) => match converted(&o) {
            Some(v) => state.relist.get_or_insert_default().push((key(&o), v)),
            None => state.relist_ignored.push(key(&o)),
        },
        watcher::Event::InitDone => {
            collection.replace(
                state.relist.take().unwrap_or_default(),
                std::mem::take(&mut state.relist_ignored),
            );
            if !state.synced {
                info!(kind, objects = collection.len(), "initial list done");
            }
            state.synced = true;
        }
    }
}

/// Logs what loading a policy object found: ignored clauses of DENY
/// rules, and objects replaced by their fail-closed stand-in.
fn log_loaded<T>(kind: &str, object: &str, loaded: &load::Loaded<T>) {
    for e in &loaded.ignored {
        warn!(kind, object, field = %e.field, problem = %e.problem, "unknown field in a DENY rule ignored");
    }
    let Some(failure) = &loaded.failure else {
        return;
    };
    let (e, why) = match failure {
        Failure::Unreadable(e) => (e, "cannot be read"),
        Failure::Invalid(e) => (e, "cannot be enforced as written"),
    };
    let stand_in = match kind {
        "PeerAuthentication" => "treating it as STRICT in its scope",
        _ => "denying all traffic in its scope",
    };
    warn!(
        kind,
        object,
        field = %e.field,
        problem = %e.problem,
        "{kind} {why}; {stand_in} until it is fixed"
    );
}

fn namespace_of(o: &DynamicObject) -> String {
    o.namespace().unwrap_or_else(|| "default".into())
}

/// Never fails: an object that cannot be used is replaced by its stand-in.
fn load_authorization(o: &DynamicObject) -> Result<CompiledPolicy, convert::Invalid> {
    let (namespace, name) = (namespace_of(o), o.name_any());
    let loaded = load::authorization(&namespace, &name, o.annotations(), o.data.get("spec"));
    log_loaded("AuthorizationPolicy", &ns_name(o), &loaded);
    let waypoint = mesh_policy::l7::load(&namespace, &name, o.annotations(), o.data.get("spec"));
    if loaded.failure.is_none() {
        // One that cannot be read at all is logged once, above.
        log_loaded("AuthorizationPolicy", &ns_name(o), &waypoint);
    }
    Ok(CompiledPolicy {
        node: loaded.policy,
        waypoint: waypoint.policy.map(std::sync::Arc::new),
    })
}

fn load_peer_authentication(
    o: &DynamicObject,
) -> Result<mesh_policy::PeerAuthentication, convert::Invalid> {
    let (namespace, name) = (namespace_of(o), o.name_any());
    let loaded = load::peer_authentication(&namespace, &name, o.data.get("spec"));
    log_loaded("PeerAuthentication", &ns_name(o), &loaded);
    Ok(loaded.policy)
}

/// Gateway API's Gateway, watched untyped: the mesh reads four fields of
/// it (`convert::GatewayObject`), and typed bindings would tie discovery
/// to one release of Gateway API's types.
pub fn gateway_resource() -> ApiResource {
    ApiResource {
        group: "gateway.networking.k8s.io".into(),
        version: "v1".into(),
        api_version: "gateway.networking.k8s.io/v1".into(),
        kind: "Gateway".into(),
        plural: "gateways".into(),
    }
}

/// A listed Gateway, read as every reader of the mesh reads it.
pub fn convert_gateway(o: &DynamicObject) -> Result<crate::model::Gateway, convert::Invalid> {
    let value = serde_json::json!({
        "metadata": o.metadata,
        "spec": o.data.get("spec").cloned().unwrap_or_default(),
    });
    let object: convert::GatewayObject =
        serde_json::from_value(value).map_err(|e| convert::Invalid {
            field: "spec".into(),
            problem: e.to_string(),
        })?;
    convert::gateway(&object)
}

/// A Gateway API kind, watched untyped like Gateways.
pub fn gateway_api_resource(version: &str, kind: &str, plural: &str) -> ApiResource {
    ApiResource {
        group: "gateway.networking.k8s.io".into(),
        version: version.into(),
        api_version: format!("gateway.networking.k8s.io/{version}"),
        kind: kind.into(),
        plural: plural.into(),
    }
}

/// A listed object as `T` (`metadata` and `spec`, which is all the route
/// types read).
fn from_dynamic<T: DeserializeOwned>(o: &DynamicObject) -> Result<T, convert::Invalid> {
    let value = serde_json::json!({
        "metadata": o.metadata,
        "spec": o.data.get("spec").cloned().unwrap_or_default(),
    });
    serde_json::from_value(value).map_err(|e| convert::Invalid {
        field: "spec".into(),
        problem: e.to_string(),
    })
}

/// An HTTPRoute, compiled. A rule whose filters or backends cannot be
/// applied is kept and answers 500 (Gateway API's answer); a route that
/// cannot be placed at all (bad metadata or matches) is left out. Either
/// way the route controller reports it in the route's status.
pub fn convert_http_route(
    o: &DynamicObject,
) -> Result<mesh_route::CompiledRoute, convert::Invalid> {
    let route: mesh_route::spec::HttpRoute = from_dynamic(o)?;
    mesh_route::compile_http_route_with(&route, mesh_route::Strictness::KeepRules).map_err(|e| {
        convert::Invalid {
            field: e.field,
            problem: e.problem.to_string(),
        }
    })
}

pub fn convert_grpc_route(
    o: &DynamicObject,
) -> Result<mesh_route::CompiledRoute, convert::Invalid> {
    let route: mesh_route::spec::GrpcRoute = from_dynamic(o)?;
    mesh_route::compile_grpc_route_with(&route, mesh_route::Strictness::KeepRules).map_err(|e| {
        convert::Invalid {
            field: e.field,
            problem: e.problem.to_string(),
        }
    })
}

/// An HTTPLocalRateLimitPolicy, checked. One changed into something that
/// does not validate keeps its last good version in force; one never
/// valid refuses every request in its scope (`ratelimit::refusing`): left
/// out, it would let its scope through unlimited. Both are logged by name
/// and field.
pub fn rate_limit_or_stand_in(
    o: &DynamicObject,
    last_good: Option<&crate::ratelimit::RateLimitPolicy>,
) -> crate::ratelimit::RateLimitPolicy {
    use crate::ratelimit::{self, RateLimitError};
    let namespace = o.metadata.namespace.as_deref().unwrap_or("default");
    let name = o.metadata.name.as_deref().unwrap_or_default();
    let doc = from_dynamic::<ratelimit::Document>(o);
    let checked = match &doc {
        Ok(doc) => ratelimit::compile(namespace, name, &doc.spec),
        Err(e) => Err(RateLimitError {
            field: e.field.clone(),
            problem: e.problem.clone(),
        }),
    };
    match (checked, last_good) {
        (Ok(policy), _) => policy,
        (Err(e), Some(last)) => {
            warn!(kind = "HTTPLocalRateLimitPolicy", object = %display_name(o), field = %e.field, problem = %e.problem, "object does not validate; its last good version stays in force");
            last.clone()
        }
        (Err(e), None) => {
            warn!(kind = "HTTPLocalRateLimitPolicy", object = %display_name(o), field = %e.field, problem = %e.problem, "object does not validate; every request in its scope is refused (429) until it is fixed or deleted");
            // The target as far as it can be read, even when the rest of
            // the spec cannot.
            let target_ref = o
                .data
                .get("spec")
                .and_then(|s| s.get("targetRef"))
                .and_then(|t| serde_json::from_value::<ratelimit::TargetRef>(t.clone()).ok());
            ratelimit::refusing(namespace, name, target_ref.as_ref(), e)
        }
    }
}

/// `security.istio.io/v1 RequestAuthentication`: Istio's CRD, which mesh
/// does not install (without it the kind counts as empty).
pub fn request_authentication_resource() -> ApiResource {
    ApiResource {
        group: "security.istio.io".into(),
        version: "v1".into(),
        api_version: "security.istio.io/v1".into(),
        kind: "RequestAuthentication".into(),
        plural: "requestauthentications".into(),
    }
}

/// A RequestAuthentication, checked. One changed into something that does
/// not validate keeps its last good version in force (logged by name and
/// field): without it, tokens it should reject would reach the backends
/// unverified. One never valid is left out (logged).
pub fn request_authentication_or_last_good(
    o: &DynamicObject,
    last_good: Option<&mesh_policy::request_authn::RequestAuthentication>,
) -> Result<mesh_policy::request_authn::RequestAuthentication, convert::Invalid> {
    let checked = from_dynamic::<mesh_policy::request_authn::Document>(o).and_then(|doc| {
        mesh_policy::request_authn::compile(
            o.metadata.namespace.as_deref().unwrap_or("default"),
            o.metadata.name.as_deref().unwrap_or_default(),
            &doc.spec,
        )
        .map_err(|e| convert::Invalid {
            field: e.field,
            problem: e.problem,
        })
    });
    match (checked, last_good) {
        (Err(e), Some(last)) => {
            warn!(kind = "RequestAuthentication", object = %display_name(o), field = %e.field, problem = %e.problem, "object does not validate; its last good version stays in force");
            Ok(last.clone())
        }
        (result, _) => result,
    }
}

/// `mesh.io/v1alpha1 HTTPFaultInjection`, what routes' ExtensionRef
/// filters name.
pub fn fault_resource() -> ApiResource {
    ApiResource::erase::<fault_crd::HTTPFaultInjectionResource>(&())
}

/// An HTTPFaultInjection, checked. One that does not validate is left out
/// (logged by name and field), so the rules that name it answer 500.
pub fn convert_fault(o: &DynamicObject) -> Result<mesh_route::fault::Fault, convert::Invalid> {
    let object: mesh_route::fault::HttpFaultInjection = from_dynamic(o)?;
    mesh_route::fault::compile(&object.spec).map_err(|e| convert::Invalid {
        field: e.field,
        problem: e.problem,
    })
}

/// `convert_fault`, except that an object changed into one that does not
/// validate keeps its last good version in force (logged by name and
/// field), as a local file that does not validate does.
pub fn fault_or_last_good(
    o: &DynamicObject,
    last_good: Option<&mesh_route::fault::Fault>,
) -> Result<mesh_route::fault::Fault, convert::Invalid> {
    match (convert_fault(o), last_good) {
        (Err(e), Some(last)) => {
            warn!(kind = mesh_route::fault::KIND, object = %display_name(o), field = %e.field, problem = %e.problem, "object does not validate; its last good version stays in force");
            Ok(last.clone())
        }
        (result, _) => result,
    }
}

#[derive(Default)]
struct Watchers {
    store: Store,
    pods: KindState<crate::model::Workload>,
    services: KindState<crate::model::Service>,
    slices: KindState<crate::model::EndpointSlice>,
    namespaces: KindState<crate::model::Labels>,
    authorization: KindState<CompiledPolicy>,
    peer_authentication: KindState<mesh_policy::PeerAuthentication>,
    gateways: KindState<crate::model::Gateway>,
    http_routes: KindState<mesh_route::CompiledRoute>,
    grpc_routes: KindState<mesh_route::CompiledRoute>,
    rate_limits: KindState<crate::ratelimit::RateLimitPolicy>,
    faults: KindState<mesh_route::fault::Fault>,
    destination_rules: KindState<crate::destination_rule::DestinationRule>,
    request_authentications: KindState<mesh_policy::request_authn::RequestAuthentication>,
    /// Kinds the API server does not serve (their CRD is not installed).
    /// Policy kinds never count as absent for enforcement (see `policy_sync`).
    absent: [bool; KINDS],
    /// The last error of each kind's first list, until it succeeds.
    list_errors: [Option<String>; KINDS],
}

impl Watchers {
    fn synced(&self) -> bool {
        let synced = [
            self.pods.synced,
            self.services.synced,
            self.slices.synced,
            self.namespaces.synced,
            self.authorization.synced,
            self.peer_authentication.synced,
            self.gateways.synced,
            self.http_routes.synced,
            self.grpc_routes.synced,
            self.rate_limits.synced,
            self.faults.synced,
            self.destination_rules.synced,
            self.request_authentications.synced,
        ];
        synced.iter().zip(self.absent).all(|(s, a)| *s || a)
    }

    /// Whether the policy kinds are enforceable: listed, or why not. A
    /// missing CRD is a failure here (unlike for `synced`): a mesh without
    /// its policy kinds cannot tell what its operators meant to deny.
    fn policy_sync(&self) -> PolicySync {
        let kind = |synced: bool, index: usize| match (synced, &self.list_errors[index]) {
            (true, _) => KindSync::Listed,
            (false, Some(e)) => KindSync::Failing(e.clone()),
            (false, None) => KindSync::Listing,
        };
        PolicySync {
            authorization: kind(self.authorization.synced, AUTHZ),
            peer_authentication: kind(self.peer_authentication.synced, PEER),
        }
    }

    fn handle(&mut self, index: usize, change: Result<Change, watcher::Error>) {
        let s = &mut self.store;
        match change {
            Ok(Change::Pod(e)) => apply(
                *e,
                "Pod",
                &mut s.pods,
                &mut self.pods,
                |p| p.uid().unwrap_or_else(|| ns_name(p)),
                convert::workload,
            ),
            Ok(Change::Service(e)) => apply(
                *e,
                "Service",
                &mut s.services,
                &mut self.services,
                ns_name,
                convert::service,
            ),
            Ok(Change::Slice(e)) => apply(
                *e,
                "EndpointSlice",
                &mut s.slices,
                &mut self.slices,
                ns_name,
                convert::endpoint_slice,
            ),
            Ok(Change::Namespace(e)) => apply(
                *e,
                "Namespace",
                &mut s.namespaces,
                &mut self.namespaces,
                |n| n.name_any(),
                |n| convert::namespace(n).map(|(_, labels)| labels),
            ),
            Ok(Change::Authorization(e)) => apply(
                *e,
                "AuthorizationPolicy",
                &mut s.authorization,
                &mut self.authorization,
                ns_name,
                load_authorization,
            ),
            Ok(Change::PeerAuthentication(e)) => apply(
                *e,
                "PeerAuthentication",
                &mut s.peer_authentication,
                &mut self.peer_authentication,
                ns_name,
                load_peer_authentication,
            ),
            Ok(Change::Gateway(e)) => apply(
                *e,
                "Gateway",
                &mut s.gateways,
                &mut self.gateways,
                ns_name,
                convert_gateway,
            ),
            Ok(Change::HttpRoute(e)) => apply(
                *e,
                "HTTPRoute",
                &mut s.http_routes,
                &mut self.http_routes,
                ns_name,
                convert_http_route,
            ),
            Ok(Change::GrpcRoute(e)) => apply(
                *e,
                "GRPCRoute",
                &mut s.grpc_routes,
                &mut self.grpc_routes,
                ns_name,
                convert_grpc_route,
            ),
            Ok(Change::RateLimit(e)) => {
                // A handful of Arcs: what an invalid update falls back to.
                let last_good = s.rate_limits.clone();
                apply(
                    *e,
                    "HTTPLocalRateLimitPolicy",
                    &mut s.rate_limits,
                    &mut self.rate_limits,
                    ns_name,
                    |o| {
                        Ok(rate_limit_or_stand_in(
                            o,
                            last_good.get(&ns_name(o)).map(|p| p.as_ref()),
                        ))
                    },
                )
            }
            Ok(Change::Fault(e)) => {
                // A handful of Arcs: what an invalid update falls back to.
                let last_good = s.faults.clone();
                apply(
                    *e,
                    "HTTPFaultInjection",
                    &mut s.faults,
                    &mut self.faults,
                    ns_name,
                    |o| fault_or_last_good(o, last_good.get(&ns_name(o)).map(|f| f.as_ref())),
                )
            }
            Ok(Change::DestinationRule(e)) => {
                // A handful of Arcs: what an invalid update falls back to.
                let last_good = s.destination_rules.clone();
                apply(
                    *e,
                    crate::destination_rule::KIND,
                    &mut s.destination_rules,
                    &mut self.destination_rules,
                    ns_name,
                    |o| {
                        crate::destination_rule::from_api(
                            o,
                            last_good.get(&ns_name(o)).map(|r| r.as_ref()),
                        )
                    },
                )
            }
            Ok(Change::RequestAuthentication(e)) => {
                // A handful of Arcs: what an invalid update falls back to.
                let last_good = s.request_authentications.clone();
                apply(
                    *e,
                    "RequestAuthentication",
                    &mut s.request_authentications,
                    &mut self.request_authentications,
                    ns_name,
                    |o| {
                        request_authentication_or_last_good(
                            o,
                            last_good.get(&ns_name(o)).map(|p| p.as_ref()),
                        )
                    },
                )
            }
            Err(e) if index == AUTHZ || index == PEER => {
                let synced = match index {
                    AUTHZ => self.authorization.synced,
                    _ => self.peer_authentication.synced,
                };
                let not_found = matches!(
                    &e,
                    watcher::Error::InitialListFailed(kube::Error::Api(status)) if status.is_not_found()
                );
                // Absent for `synced` (the rest of the cluster is known),
                // but never enforceable: see `policy_sync`.
                self.absent[index] |= not_found;
                if synced {
                    warn!(kind = KIND_NAMES[index], error = %e, "watch failed; the policies already read stay in force; retrying with backoff");
                    return;
                }
                let error = if not_found {
                    format!("{e} (the API server does not serve it: is its CRD installed?)")
                } else {
                    e.to_string()
                };
                warn!(
                    kind = KIND_NAMES[index],
                    error = %error,
                    "policy kind not listed; inbound traffic to enrolled pods is refused and the agent stays not ready until it is; retrying with backoff"
                );
                self.list_errors[index] = Some(error);
            }
            Err(watcher::Error::InitialListFailed(kube::Error::Api(status)))
                if status.is_not_found() =>
            {
                if !self.absent[index] {
                    warn!(
                        kind = KIND_NAMES[index],
                        "the API server does not serve this kind (CRD not installed?); treating it as empty"
                    );
                }
                self.absent[index] = true;
            }
            Err(e) => {
                warn!(kind = KIND_NAMES[index], error = %e, "watch failed; retrying with backoff")
            }
        }
    }
}

const AUTHZ: usize = 4;
const PEER: usize = 5;
const GATEWAY: usize = 6;

const KIND_NAMES: [&str; KINDS] = [
    "Pod",
    "Service",
    "EndpointSlice",
    "Namespace",
    "AuthorizationPolicy",
    "PeerAuthentication",
    "Gateway",
    "HTTPRoute",
    "GRPCRoute",
    "HTTPLocalRateLimitPolicy",
    "HTTPFaultInjection",
    "DestinationRule",
    "RequestAuthentication",
];

fn all_watches(
    client: &Client,
) -> impl Stream<Item = (usize, Result<Change, watcher::Error>)> + use<> {
    futures::stream::select_all([
        watch(client, |e| Change::Pod(Box::new(e)), 0),
        watch(client, |e| Change::Service(Box::new(e)), 1),
        watch(client, |e| Change::Slice(Box::new(e)), 2),
        watch(client, |e| Change::Namespace(Box::new(e)), 3),
        watch_untyped(
            client,
            ApiResource::erase::<AuthorizationPolicyResource>(&()),
            |e| Change::Authorization(Box::new(e)),
            AUTHZ,
        ),
        watch_untyped(
            client,
            ApiResource::erase::<PeerAuthenticationResource>(&()),
            |e| Change::PeerAuthentication(Box::new(e)),
            PEER,
        ),
        // Without Gateway API's CRDs there are no waypoints: the kind is
        // then treated as empty, like any kind the server does not serve.
        watch_untyped(
            client,
            gateway_resource(),
            |e| Change::Gateway(Box::new(e)),
            GATEWAY,
        ),
        watch_untyped(
            client,
            gateway_api_resource("v1", "HTTPRoute", "httproutes"),
            |e| Change::HttpRoute(Box::new(e)),
            7,
        ),
        watch_untyped(
            client,
            gateway_api_resource("v1", "GRPCRoute", "grpcroutes"),
            |e| Change::GrpcRoute(Box::new(e)),
            8,
        ),
        // Without its CRD there are no rate limits (treated as empty).
        watch_untyped(
            client,
            ApiResource::erase::<crate::ratelimit::HTTPLocalRateLimitPolicyResource>(&()),
            |e| Change::RateLimit(Box::new(e)),
            9,
        ),
        // Without its CRD there are no fault injections: rules naming one
        // answer 500.
        watch_untyped(client, fault_resource(), |e| Change::Fault(Box::new(e)), 10),
        // Istio's own kind: without Istio's CRDs there are no rules
        // (treated as empty), and Services get the waypoint's defaults.
        watch_untyped(
            client,
            crate::destination_rule::api_resource(),
            |e| Change::DestinationRule(Box::new(e)),
            11,
        ),
        // Istio's kind, last in the list (its index is the last kind's).
        // Without Istio's CRDs there are no RequestAuthentications.
        watch_untyped(
            client,
            request_authentication_resource(),
            |e| Change::RequestAuthentication(Box::new(e)),
            KINDS - 1,
        ),
    ])
}

impl Source for KubernetesSource {
    async fn run(self, publisher: Publisher) {
        let mut changes = all_watches(&self.client);
        let mut w = Watchers::default();
        let mut published_synced = false;
        let mut published_policies = PolicySync::default();
        while publisher.is_open() {
            let Some((index, first)) = changes.next().await else {
                break;
            };
            let mut changed = first.is_ok();
            w.handle(index, first);
            // Whatever else is ready joins this batch: one view per burst.
            while let Some(Some((index, next))) = changes.next().now_or_never() {
                changed |= next.is_ok();
                w.handle(index, next);
            }
            let newly_synced = w.synced() && !published_synced;
            // A policy kind's list failing (or failing differently) is
            // news too: the agent logs it as the reason it is not ready.
            let policies = w.policy_sync();
            if !changed && !newly_synced && policies == published_policies {
                // Only errors (retried with backoff): nothing to rebuild.
                continue;
            }
            published_synced = w.synced();
            published_policies = policies.clone();
            w.store.policy_sync = policies;
            let (store, synced, p) = (w.store.clone(), w.synced(), publisher.clone());
            let _ = tokio::task::spawn_blocking(move || p.publish(&store, synced)).await;
        }
    }
}
