//! Leader election over a coordination.k8s.io/v1 Lease, so that of the CA's
//! replicas exactly one runs the controllers that write to the API. The
//! decision is pure (`decide`); `Elector` reads and writes the Lease and
//! says through a watch channel whether this replica leads.
//!
//! Expiry compares the holder's renew time with this replica's clock, so
//! it assumes the replicas' clocks agree to well within the lease's
//! duration (NTP on the nodes), as the Lease object's own fields do.
use std::time::Duration;

use k8s_openapi::{
    api::coordination::v1::{Lease, LeaseSpec},
    apimachinery::pkg::apis::meta::v1::MicroTime,
    jiff::{SignedDuration, Timestamp},
};
use kube::{
    Api, Client,
    api::{ObjectMeta, PostParams},
};
use tokio::sync::watch;
use tracing::{info, warn};

/// How long a holder's lease stands without renewal.
pub const LEASE_DURATION: Duration = Duration::from_secs(15);
/// How often the holder renews, and others look for an expired lease.
pub const RENEW_EVERY: Duration = Duration::from_secs(5);
/// A leader that has not renewed for this long stops leading, ahead of the
/// moment (`LEASE_DURATION`) another replica may take the lease over.
pub const RENEW_DEADLINE: Duration = Duration::from_secs(10);

/// What the Lease says, as far as the decision needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseState {
    pub holder: Option<String>,
    pub renewed: Option<Timestamp>,
    pub duration: Duration,
}

impl LeaseState {
    pub fn of(lease: &Lease) -> Self {
        let spec = lease.spec.clone().unwrap_or_default();
        Self {
            holder: spec.holder_identity.filter(|h| !h.is_empty()),
            renewed: spec.renew_time.map(|t| t.0),
            duration: spec
                .lease_duration_seconds
                .and_then(|s| u64::try_from(s).ok())
                .map(Duration::from_secs)
                .unwrap_or(LEASE_DURATION),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Nobody holds the lease, or the holder let it expire: take it.
    Acquire,
    /// We hold it: renew it.
    Renew,
    /// Someone else holds it until `until`.
    Wait { holder: String, until: Timestamp },
}

/// What replica `me` does about the lease `current` (None: no Lease yet)
/// at `now`.
pub fn decide(current: Option<&LeaseState>, me: &str, now: Timestamp) -> Decision {
    let Some(state) = current else {
        return Decision::Acquire;
    };
    let Some(holder) = &state.holder else {
        return Decision::Acquire;
    };
    if holder == me {
        return Decision::Renew;
    }
    // A lease held with no renew time was never valid: nobody can say
    // when it ends.
    let Some(renewed) = state.renewed else {
        return Decision::Acquire;
    };
    let duration = SignedDuration::try_from(state.duration).unwrap_or(SignedDuration::MAX);
    match renewed.checked_add(duration) {
        Ok(until) if until > now => Decision::Wait {
            holder: holder.clone(),
            until,
        },
        Ok(_) => Decision::Acquire,
        // Past the end of time: never expires.
        Err(_) => Decision::Wait {
            holder: holder.clone(),
            until: Timestamp::MAX,
        },
    }
}

/// Where the Lease lives and who this replica is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseSettings {
    pub namespace: String,
    pub name: String,
    /// This replica's identity in `holderIdentity` (its pod name).
    pub holder: String,
}

pub struct Elector {
    api: Api<Lease>,
    settings: LeaseSettings,
    leading: watch::Sender<bool>,
}

impl Elector {
    /// An elector and the channel that says whether this replica leads
    /// (false until it holds the lease).
    pub fn new(client: Client, settings: LeaseSettings) -> (Self, watch::Receiver<bool>) {
        let (leading, rx) = watch::channel(false);
        let api = Api::namespaced(client, &settings.namespace);
        (
            Self {
                api,
                settings,
                leading,
            },
            rx,
        )
    }

    /// Takes part in the election until the process ends.
    pub async fn run(self) {
        let mut tick = tokio::time::interval(RENEW_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_held: Option<tokio::time::Instant> = None;
        loop {
            tick.tick().await;
            match self.attempt(Timestamp::now()).await {
                Ok(held) => {
                    last_held = held.then(tokio::time::Instant::now);
                    self.set_leading(held);
                }
                Err(e) => {
                    warn!(
                        namespace = %self.settings.namespace,
                        lease = %self.settings.name,
                        error = %e,
                        "leader election: the Lease could not be read or written"
                    );
                    let stale = last_held.is_none_or(|t| t.elapsed() >= RENEW_DEADLINE);
                    if stale {
                        self.set_leading(false);
                    }
                }
            }
        }
    }

    fn set_leading(&self, now: bool) {
        let changed = self.leading.send_if_modified(|was| {
            let changed = *was != now;
            *was = now;
            changed
        });
        if changed {
            info!(
                namespace = %self.settings.namespace,
                lease = %self.settings.name,
                holder = %self.settings.holder,
                leading = now,
                "leader election: {}",
                if now { "leading" } else { "no longer leading" }
            );
        }
    }

    /// One round: whether this replica holds the lease afterwards. A write
    /// that loses a race (409) is not an error: someone else moved first.
    pub async fn attempt(&self, now: Timestamp) -> Result<bool, kube::Error> {
        let me = &self.settings.holder;
        // No Lease yet: nobody holds it (`decide(None, ..)` is Acquire).
        let write = match self.api.get_opt(&self.settings.name).await? {
            None => {
                let lease = self.lease(ObjectMeta::default(), None, now, 0);
                self.api.create(&PostParams::default(), &lease).await
            }
            Some(old) => {
                let spec = old.spec.clone().unwrap_or_default();
                let transitions = spec.lease_transitions.unwrap_or(0);
                let lease = match decide(Some(&LeaseState::of(&old)), me, now) {
                    Decision::Wait { .. } => return Ok(false),
                    Decision::Acquire => {
                        self.lease(old.metadata, None, now, transitions.saturating_add(1))
                    }
                    Decision::Renew => self.lease(
                        old.metadata,
                        spec.acquire_time.map(|t| t.0),
                        now,
                        transitions,
                    ),
                };
                self.api
                    .replace(&self.settings.name, &PostParams::default(), &lease)
                    .await
            }
        };
        match write {
            Ok(_) => Ok(true),
            Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// The Lease held by this replica from `acquired` (now when None),
    /// renewed at `now`; `metadata` carries the resourceVersion the write
    /// is conditional on.
    fn lease(
        &self,
        metadata: ObjectMeta,
        acquired: Option<Timestamp>,
        now: Timestamp,
        transitions: i32,
    ) -> Lease {
        Lease {
            metadata: ObjectMeta {
                name: Some(self.settings.name.clone()),
                namespace: Some(self.settings.namespace.clone()),
                resource_version: metadata.resource_version,
                labels: metadata.labels,
                annotations: metadata.annotations,
                ..Default::default()
            },
            spec: Some(LeaseSpec {
                holder_identity: Some(self.settings.holder.clone()),
                lease_duration_seconds: Some(LEASE_DURATION.as_secs() as i32),
                acquire_time: Some(MicroTime(acquired.unwrap_or(now))),
                renew_time: Some(MicroTime(now)),
                lease_transitions: Some(transitions),
                ..Default::default()
            }),
        }
    }
}

#[cfg(test)]
mod tests;
