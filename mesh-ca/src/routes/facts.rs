//! What route statuses depend on besides the routes: every Service (its
//! ports and whether it has a cluster IP), kept in one
//! `mesh_route::status::Cluster` from a watch. Only the facts are kept,
//! not the objects; a change that alters no fact (a label, an annotation,
//! a load balancer's status) wakes nobody. ReferenceGrants are not among
//! them: a mesh route needs none (GEP-1294).
use std::sync::{Arc, PoisonError, RwLock};

use futures::StreamExt;
use k8s_openapi::api::core::v1::Service;
use kube::{
    Api, Client,
    api::ObjectMeta,
    runtime::{WatchStreamExt, watcher},
};
use mesh_route::status::{self, Cluster};
use tokio::sync::watch;
use tracing::warn;

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

/// Follows Services into `cluster` until dropped. `changed` is bumped
/// whenever a fact changes; `synced` turns true once they have been
/// listed.
pub async fn follow(
    client: Client,
    cluster: Arc<RwLock<Cluster>>,
    changed: watch::Sender<()>,
    synced: watch::Sender<bool>,
) {
    let mut events = watcher(Api::<Service>::all(client), watcher::Config::default())
        .default_backoff()
        .boxed();
    let mut services = Relist::default();
    while let Some(event) = events.next().await {
        let moved = match event {
            Ok(e) => {
                let change = services.follow(e, service_facts, |s: &Service| key(&s.metadata));
                apply_service(
                    &mut cluster.write().unwrap_or_else(PoisonError::into_inner),
                    change,
                )
            }
            Err(e) => {
                warn!(error = %e, "route status: watch of Services failed; retrying with backoff");
                false
            }
        };
        if moved {
            changed.send_replace(());
        }
        if services.synced {
            synced.send_if_modified(|s| !std::mem::replace(s, true));
        }
    }
}
