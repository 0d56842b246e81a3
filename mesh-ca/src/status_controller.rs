//! What the route status and policy status controllers share: they run
//! only while this replica leads, wait for their kinds to be served and
//! start over when the served kinds change, run one kube `Controller` per
//! kind that reconciles on the kind's watch and on changes of the facts,
//! and write an object's status the same way.
//!
//! The write is a JSON merge patch of the status subresource carrying the
//! resourceVersion that was read: the lists written (`status.parents`,
//! `status.conditions`) are shared with other controllers, so a write
//! based on a stale read must fail (409) and be redone rather than drop
//! what another controller wrote since. (Server-side apply would make the
//! writer the owner of the whole list and, forced, overwrite theirs.)
use std::{sync::Arc, time::Duration};

use futures::{Stream, StreamExt, TryFuture};
use k8s_openapi::jiff::Timestamp;
use kube::{
    Api, Client,
    api::{ApiResource, DynamicObject, ListParams, Patch, PatchParams},
    runtime::{Controller, controller, controller::Action, watcher},
};
use serde_json::{Value, json};
use tokio::sync::watch;
use tracing::{info, warn};

/// How often the served kinds are checked again.
pub const RECHECK: Duration = Duration::from_secs(60);
/// Changes of facts that come together (a namespace of Services applied
/// at once) are reconciled together.
pub const DEBOUNCE: Duration = Duration::from_millis(500);
/// A failed write is tried again after this.
pub const RETRY: Duration = Duration::from_secs(10);
/// After a write lost a race with another writer: soon, on a fresh read.
pub const CONFLICT_RETRY: Duration = Duration::from_secs(1);

/// Which of a controller's kinds the API server serves, and what the
/// controller says of them in its logs.
pub trait ServedKinds: PartialEq + Sized {
    /// Names the controller in its logs ("route status").
    const CONTROLLER: &'static str;
    /// Said when the API server cannot be asked.
    const CANNOT_PROBE: &'static str;
    /// Said once when none of the kinds is served.
    const NONE_SERVED: &'static str;
    /// Said when the served kinds changed under a running controller.
    const CHANGED: &'static str;

    /// Asks the API server which of the kinds it serves.
    fn probe(client: &Client) -> impl Future<Output = Result<Self, kube::Error>> + Send;

    /// Whether there is anything to report on.
    fn any(&self) -> bool;
}

/// Runs `lead` whenever `leading` says this replica leads, and stops it
/// when the replica no longer does, until the channel closes.
pub async fn while_leading<F, Fut>(controller: &str, leading: watch::Receiver<bool>, mut lead: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = ()>,
{
    loop {
        let mut wait = leading.clone();
        if wait.wait_for(|l| *l).await.is_err() {
            return;
        }
        let mut lost = leading.clone();
        tokio::select! {
            () = lead() => {}
            _ = lost.wait_for(|l| !*l) => {}
        }
        info!("{controller}: stopped, this replica no longer leads");
    }
}

/// While leading: waits for a kind to be served, then runs `report` on
/// the served kinds, starting over whenever they change.
pub async fn follow_served<S, F, Fut>(client: &Client, mut report: F)
where
    S: ServedKinds + Clone,
    F: FnMut(S) -> Fut,
    Fut: Future<Output = ()>,
{
    let controller = S::CONTROLLER;
    let mut said_absent = false;
    loop {
        let served = match S::probe(client).await {
            Ok(s) => s,
            Err(e) => {
                warn!(error = %e, retry_s = RECHECK.as_secs(), "{controller}: {}", S::CANNOT_PROBE);
                tokio::time::sleep(RECHECK).await;
                continue;
            }
        };
        if !served.any() {
            if !said_absent {
                info!("{controller}: {}", S::NONE_SERVED);
                said_absent = true;
            }
            tokio::time::sleep(RECHECK).await;
            continue;
        }
        said_absent = false;
        tokio::select! {
            () = report(served.clone()) => {}
            () = until_changed(client, &served) => {
                info!("{controller}: {}", S::CHANGED);
            }
        }
    }
}

async fn until_changed<S: ServedKinds>(client: &Client, served: &S) {
    loop {
        tokio::time::sleep(RECHECK).await;
        match S::probe(client).await {
            Ok(now) if now != *served => return,
            Ok(_) => {}
            Err(e) => warn!(error = %e, "{}: checking the served kinds failed", S::CONTROLLER),
        }
    }
}

/// Whether the API server serves `resource`: a 404 means its CRD is not
/// installed; any other failure is an error (a forbidden list is a
/// missing permission, not a missing kind).
pub async fn served(client: &Client, resource: &ApiResource) -> Result<bool, kube::Error> {
    let api = Api::<DynamicObject>::all_with(client.clone(), resource);
    match api.list_metadata(&ListParams::default().limit(1)).await {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(status)) if status.is_not_found() => Ok(false),
        Err(e) => Err(e),
    }
}

/// Every change of some facts, as a trigger to reconcile every object of
/// a kind.
pub fn triggers(changes: watch::Receiver<()>) -> impl Stream<Item = ()> + Send + 'static {
    futures::stream::unfold(changes, |mut rx| async move {
        rx.changed().await.ok()?;
        Some(((), rx))
    })
}

/// The objects one kind's controller reconciles, and how its logs name
/// them.
pub struct Objects<'a> {
    /// The controller's name in logs ("route status").
    pub controller: &'a str,
    /// The kind's name in logs.
    pub kind: &'a str,
    pub client: Client,
    pub resource: ApiResource,
}

/// One kind's controller: `reconcile` runs for every object when it
/// changes and, for all of them, on every item of `on`. Never returns on
/// its own.
pub async fn control<Ctx, R, Fut, E>(
    objects: Objects<'_>,
    on: impl Stream<Item = ()> + Send + 'static,
    reconcile: R,
    retry: E,
    ctx: Arc<Ctx>,
) where
    R: FnMut(Arc<DynamicObject>, Arc<Ctx>) -> Fut,
    Fut: TryFuture<Ok = Action, Error = StatusError> + Send + 'static,
    E: Fn(Arc<DynamicObject>, &StatusError, Arc<Ctx>) -> Action,
{
    let Objects {
        controller,
        kind,
        client,
        resource,
    } = objects;
    Controller::new_with(
        Api::<DynamicObject>::all_with(client, &resource),
        watcher::Config::default(),
        resource.clone(),
    )
    .with_config(controller::Config::default().debounce(DEBOUNCE))
    .reconcile_all_on(on)
    .run(reconcile, retry, ctx)
    .for_each(|result| async move {
        match result {
            // Said by `retry` already (or a lost race, which is not news).
            Ok(_) | Err(controller::Error::ReconcilerFailed(..)) => {}
            Err(e) => warn!(kind, error = %e, "{controller} controller"),
        }
    })
    .await;
}

/// When to reconcile again after `error`, said in the controller's logs
/// unless it is a lost race.
pub fn retry_after(controller: &str, kind: &str, error: &StatusError) -> Action {
    if error.is_conflict() {
        return Action::requeue(CONFLICT_RETRY);
    }
    warn!(kind, error = %error, retry_s = RETRY.as_secs(), "{controller}: reconcile failed");
    Action::requeue(RETRY)
}

#[derive(Debug, thiserror::Error)]
pub enum StatusError {
    #[error("writing the status of {kind} {namespace}/{name}: {source}")]
    Write {
        kind: &'static str,
        namespace: String,
        name: String,
        #[source]
        source: kube::Error,
    },
    #[error(transparent)]
    Incomplete(#[from] Incomplete),
}

/// An object read without what a status write names it by.
#[derive(Debug, thiserror::Error)]
#[error("{0} without metadata.namespace, metadata.name or metadata.resourceVersion")]
pub struct Incomplete(pub &'static str);

impl StatusError {
    /// Another writer changed the object between our read and our write.
    pub fn is_conflict(&self) -> bool {
        matches!(self, StatusError::Write { source: kube::Error::Api(s), .. } if s.code == 409)
    }
}

/// The object a status is written on, as it was read.
#[derive(Debug, Clone, Copy)]
pub struct Written<'a> {
    pub kind: &'static str,
    pub namespace: &'a str,
    pub name: &'a str,
    pub resource_version: &'a str,
}

impl<'a> Written<'a> {
    /// `o`, of `kind`, as a status write names it; `None` while it is
    /// being deleted, when there is nothing to say on it.
    pub fn of(kind: &'static str, o: &'a DynamicObject) -> Result<Option<Self>, Incomplete> {
        let meta = &o.metadata;
        let (Some(namespace), Some(name), Some(resource_version)) = (
            meta.namespace.as_deref(),
            meta.name.as_deref(),
            meta.resource_version.as_deref(),
        ) else {
            return Err(Incomplete(kind));
        };
        if meta.deletion_timestamp.is_some() {
            return Ok(None);
        }
        Ok(Some(Self {
            kind,
            namespace,
            name,
            resource_version,
        }))
    }

    /// Merges `status` into the object's status, only if the object is
    /// still at the version that was read.
    pub async fn write(
        self,
        client: &Client,
        resource: &ApiResource,
        field_manager: &str,
        status: Value,
    ) -> Result<(), StatusError> {
        Api::<DynamicObject>::namespaced_with(client.clone(), self.namespace, resource)
            .patch_status(
                self.name,
                &PatchParams {
                    field_manager: Some(field_manager.to_owned()),
                    ..PatchParams::default()
                },
                &Patch::Merge(json!({
                    "metadata": {"resourceVersion": self.resource_version},
                    "status": status,
                })),
            )
            .await
            .map(drop)
            .map_err(|source| StatusError::Write {
                kind: self.kind,
                namespace: self.namespace.to_owned(),
                name: self.name.to_owned(),
                source,
            })
    }
}

/// A time for conditions, to the second as metav1.Time writes it.
pub fn now() -> String {
    Timestamp::from_second(Timestamp::now().as_second())
        .unwrap_or(Timestamp::UNIX_EPOCH)
        .to_string()
}
