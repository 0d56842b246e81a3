//! Keeps `Targets` from watches of Services, Namespaces and (when the
//! kind is served) Gateways. Only what targets need is kept (names, the
//! labels that choose a waypoint, a Gateway's class); a change that alters none of it
//! wakes nobody. A (re-)list is applied whole once complete
//! (`routes::facts::Relist`), so a re-list never shows a half-empty
//! cluster.
use std::sync::{Arc, PoisonError, RwLock};

use futures::{StreamExt, stream};
use k8s_openapi::api::core::v1::{Namespace, Service};
use kube::{
    Api, Client,
    api::{DynamicObject, ObjectMeta},
    runtime::{WatchStreamExt, watcher},
};
use mesh_discovery::model::Labels;
use tokio::sync::watch;
use tracing::warn;

use super::targets::Targets;
use crate::routes::facts::{Change, Relist};

fn key(meta: &ObjectMeta) -> Option<(String, String)> {
    Some((meta.namespace.clone()?, meta.name.clone()?))
}

fn labels(meta: &ObjectMeta) -> Labels {
    meta.labels.clone().unwrap_or_default()
}

pub fn apply_service(t: &mut Targets, change: Change<Labels>) -> bool {
    match change {
        Change::Set(ns, name, l) => t.set_service(&ns, &name, &l),
        Change::Remove(ns, name) => t.remove_service(&ns, &name),
        Change::Replace(all) => t.replace_services(all),
        Change::None => false,
    }
}

pub fn apply_namespace(t: &mut Targets, change: Change<Labels>) -> bool {
    match change {
        Change::Set(_, name, l) => t.set_namespace(&name, &l),
        Change::Remove(_, name) => t.remove_namespace(&name),
        Change::Replace(all) => {
            t.replace_namespaces(all.into_iter().map(|(_, n, l)| (n, l)).collect())
        }
        Change::None => false,
    }
}

/// A Gateway's fact is its gatewayClassName.
pub fn apply_gateway(t: &mut Targets, change: Change<String>) -> bool {
    match change {
        Change::Set(ns, name, class) => t.set_gateway(&ns, &name, &class),
        Change::Remove(ns, name) => t.remove_gateway(&ns, &name),
        Change::Replace(all) => t.replace_gateways(all),
        Change::None => false,
    }
}

/// A Gateway's facts: its gatewayClassName.
pub fn gateway_facts(g: &DynamicObject) -> Option<(String, String, String)> {
    let class = g
        .data
        .get("spec")
        .and_then(|s| s.get("gatewayClassName"))
        .and_then(serde_json::Value::as_str)
        .unwrap_or_default()
        .to_owned();
    key(&g.metadata).map(|(ns, n)| (ns, n, class))
}

/// A Service's facts: its labels (the waypoint it uses).
pub fn service_facts(s: &Service) -> Option<(String, String, Labels)> {
    key(&s.metadata).map(|(ns, n)| (ns, n, labels(&s.metadata)))
}

/// Namespaces are keyed ("", name): `Relist` keys by two parts.
fn namespace_key(n: &Namespace) -> Option<(String, String)> {
    n.metadata.name.clone().map(|name| (String::new(), name))
}

/// A Namespace's facts: its labels (the waypoint its objects use).
pub fn namespace_facts(n: &Namespace) -> Option<(String, String, Labels)> {
    namespace_key(n).map(|(ns, name)| (ns, name, labels(&n.metadata)))
}

enum Event {
    Service(Box<Result<watcher::Event<Service>, watcher::Error>>),
    Namespace(Box<Result<watcher::Event<Namespace>, watcher::Error>>),
    Gateway(Box<Result<watcher::Event<DynamicObject>, watcher::Error>>),
}

/// Follows the targets into `targets` until dropped: `changed` is told
/// of every change, `synced` turns true once every kind was listed.
pub async fn follow(
    client: Client,
    targets: Arc<RwLock<Targets>>,
    gateways: bool,
    changed: watch::Sender<()>,
    synced: watch::Sender<bool>,
) {
    let services = watcher(
        Api::<Service>::all(client.clone()),
        watcher::Config::default(),
    )
    .default_backoff()
    .map(|e| Event::Service(Box::new(e)))
    .boxed();
    let namespaces = watcher(
        Api::<Namespace>::all(client.clone()),
        watcher::Config::default(),
    )
    .default_backoff()
    .map(|e| Event::Namespace(Box::new(e)))
    .boxed();
    let gws = if gateways {
        let resource = mesh_discovery::kubernetes::gateway_resource();
        watcher(
            Api::<DynamicObject>::all_with(client, &resource),
            watcher::Config::default(),
        )
        .default_backoff()
        .map(|e| Event::Gateway(Box::new(e)))
        .boxed()
    } else {
        stream::pending().boxed()
    };
    let mut events = stream::select_all([services, namespaces, gws]);
    let (mut svc_list, mut ns_list, mut gw_list) =
        (Relist::default(), Relist::default(), Relist::default());
    while let Some(event) = events.next().await {
        let now = || targets.write().unwrap_or_else(PoisonError::into_inner);
        let moved = match event {
            Event::Service(e) => match *e {
                Ok(e) => {
                    let change = svc_list.follow(e, service_facts, |s: &Service| key(&s.metadata));
                    apply_service(&mut now(), change)
                }
                Err(e) => {
                    warn!(error = %e, "policy status: watch of Services failed; retrying with backoff");
                    false
                }
            },
            Event::Namespace(e) => match *e {
                Ok(e) => {
                    let ns_key =
                        |n: &Namespace| n.metadata.name.clone().map(|name| (String::new(), name));
                    let change = ns_list.follow(
                        e,
                        |n: &Namespace| ns_key(n).map(|(ns, name)| (ns, name, labels(&n.metadata))),
                        ns_key,
                    );
                    apply_namespace(&mut now(), change)
                }
                Err(e) => {
                    warn!(error = %e, "policy status: watch of Namespaces failed; retrying with backoff");
                    false
                }
            },
            Event::Gateway(e) => match *e {
                Ok(e) => {
                    let change =
                        gw_list.follow(e, gateway_facts, |g: &DynamicObject| key(&g.metadata));
                    apply_gateway(&mut now(), change)
                }
                Err(e) => {
                    warn!(error = %e, "policy status: watch of Gateways failed; retrying with backoff");
                    false
                }
            },
        };
        if moved {
            changed.send_replace(());
        }
        if svc_list.synced && ns_list.synced && (gw_list.synced || !gateways) {
            synced.send_if_modified(|s| !std::mem::replace(s, true));
        }
    }
}
