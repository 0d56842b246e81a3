//! The I/O of `readers`: reads the reader ClusterRoleBinding, applies an
//! `Edit` to its subjects and writes it back under the resourceVersion it
//! read (a concurrent write makes the API server refuse, and the edit is
//! made again on what is there now); and the periodic resync that
//! rewrites the subjects from the current Gateways, which is what removes
//! the accounts of Gateways deleted while no reconcile saw them.
use std::{sync::Arc, time::Duration};

use k8s_openapi::api::rbac::v1::{ClusterRoleBinding, Subject};
use kube::{Api, Client, api::PostParams, runtime::reflector::Store};
use tracing::{debug, info, warn};

use super::{
    gateway_api::Gateway,
    readers::{Edit, desired_readers},
    reconcile::{Context, ReconcileError},
};

/// Between full resyncs of the binding's subjects.
pub const RESYNC: Duration = Duration::from_secs(60);
/// Writes refused for a stale resourceVersion before giving up until the
/// next reconcile.
const ATTEMPTS: usize = 3;

/// What an edit did to the binding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Edited {
    Unchanged,
    /// Written; the binding now has this many subjects.
    Written {
        subjects: usize,
    },
}

/// Applies the edit `edit` makes of the current subjects to the binding
/// `name`. `edit` is called after each read, so what it decides from
/// (for the resync, the Gateways of the moment) is never older than the
/// subjects it replaces.
pub async fn edit_subjects(
    client: &Client,
    name: &str,
    edit: impl Fn(&[Subject]) -> Option<Vec<Subject>>,
) -> Result<Edited, ReconcileError> {
    let api = Api::<ClusterRoleBinding>::all(client.clone());
    let what = |doing: &str| {
        format!(
            "{doing} ClusterRoleBinding {name} (named by --waypoint-reader-binding; \
             the chart creates it with the waypoint reader ClusterRole)"
        )
    };
    let mut attempt = 0;
    loop {
        attempt += 1;
        let mut binding = api.get(name).await.map_err(|source| ReconcileError::Api {
            what: what("reading"),
            source,
        })?;
        let current = binding.subjects.as_deref().unwrap_or_default();
        let Some(subjects) = edit(current) else {
            return Ok(Edited::Unchanged);
        };
        let count = subjects.len();
        binding.subjects = Some(subjects);
        match api.replace(name, &PostParams::default(), &binding).await {
            Ok(_) => return Ok(Edited::Written { subjects: count }),
            Err(kube::Error::Api(status)) if status.code == 409 && attempt < ATTEMPTS => {
                debug!(
                    binding = name,
                    attempt, "reader binding changed under us; editing again"
                );
            }
            Err(source) => {
                return Err(ReconcileError::Api {
                    what: what("updating"),
                    source,
                });
            }
        }
    }
}

/// Applies one reconcile's edit (`Add` or `Remove`) to the binding.
pub async fn edit_reader(ctx: &Context, edit: Edit) -> Result<(), ReconcileError> {
    let binding = ctx.settings.reader_binding.as_str();
    if let Edited::Written { subjects } =
        edit_subjects(&ctx.client, binding, |current| edit.apply(current)).await?
    {
        info!(binding, ?edit, subjects, "waypoint reader binding updated");
    }
    Ok(())
}

/// One full resync: the binding's subjects become exactly the readers of
/// the Gateways `gateways` returns at the time of the write.
pub async fn resync_once(
    ctx: &Context,
    gateways: impl Fn() -> Vec<Arc<Gateway>>,
) -> Result<Edited, ReconcileError> {
    let class = ctx.settings.class_name.as_str();
    edit_subjects(&ctx.client, &ctx.settings.reader_binding, |current| {
        let now = gateways();
        Edit::Exactly(desired_readers(now.iter().map(|g| &**g), class)).apply(current)
    })
    .await
}

/// Resyncs every [`RESYNC`] from the controller's Gateway cache, once the
/// cache has its first full list (before that, an empty cache would
/// unbind every waypoint). Runs until the cache's writer is gone.
pub async fn resync(ctx: Arc<Context>, gateways: Store<Gateway>) {
    if gateways.wait_until_ready().await.is_err() {
        return;
    }
    let binding = ctx.settings.reader_binding.as_str();
    let mut tick = tokio::time::interval(RESYNC);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        match resync_once(&ctx, || gateways.state()).await {
            Ok(Edited::Written { subjects }) => {
                info!(binding, subjects, "waypoint reader binding resynced")
            }
            Ok(Edited::Unchanged) => debug!(binding, "waypoint reader binding up to date"),
            Err(e) => {
                warn!(error = %e, retry_s = RESYNC.as_secs(), "waypoint reader binding resync failed")
            }
        }
    }
}
