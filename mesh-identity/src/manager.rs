//! One certificate per identity with pods on this node: fetched when its
//! first pod enrolls, renewed at about half its lifetime, retried with
//! backoff while the CA is unreachable (the current certificate keeps
//! serving until it expires), dropped when its last pod leaves. Keys stay
//! in memory.
use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, SystemTime},
};

use tokio::{sync::watch, task::AbortHandle};
use tracing::{info, warn};

use super::{Identity, WorkloadCert, client::CertSource};
use crate::tls::CertWatch;

const FIRST_RETRY: Duration = Duration::from_millis(250);
const MAX_RETRY: Duration = Duration::from_secs(10);
const MIN_RENEW_INTERVAL: Duration = Duration::from_secs(1);

struct Entry {
    tx: watch::Sender<Option<Arc<WorkloadCert>>>,
    users: usize,
    task: AbortHandle,
}

/// What the admin API and metrics show for one identity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertStatus {
    pub identity: Identity,
    pub not_after: Option<SystemTime>,
    pub pods: usize,
}

pub struct CertManager {
    source: Arc<dyn CertSource>,
    entries: Mutex<HashMap<Identity, Entry>>,
}

impl CertManager {
    pub fn new(source: Arc<dyn CertSource>) -> Self {
        Self {
            source,
            entries: Mutex::default(),
        }
    }

    /// The identity's certificate as it changes; starts fetching on first use.
    pub fn acquire(&self, id: &Identity) -> CertWatch {
        let mut entries = self.entries.lock().unwrap();
        if let Some(e) = entries.get_mut(id) {
            e.users += 1;
            return e.tx.subscribe();
        }
        let (tx, rx) = watch::channel(None);
        let task = tokio::spawn(maintain(self.source.clone(), id.clone(), tx.clone()));
        entries.insert(
            id.clone(),
            Entry {
                tx,
                users: 1,
                task: task.abort_handle(),
            },
        );
        rx
    }

    /// One user fewer; the last one stops renewal and forgets the key.
    pub fn release(&self, id: &Identity) {
        let mut entries = self.entries.lock().unwrap();
        if let Some(e) = entries.get_mut(id) {
            e.users -= 1;
            if e.users == 0 {
                e.task.abort();
                entries.remove(id);
                info!(identity = %id, "certificate released");
            }
        }
    }

    pub fn status(&self) -> Vec<CertStatus> {
        let entries = self.entries.lock().unwrap();
        let mut out: Vec<_> = entries
            .iter()
            .map(|(id, e)| CertStatus {
                identity: id.clone(),
                not_after: e.tx.borrow().as_ref().map(|c| c.info.not_after),
                pods: e.users,
            })
            .collect();
        out.sort_by(|a, b| a.identity.cmp(&b.identity));
        out
    }
}

impl Drop for CertManager {
    fn drop(&mut self) {
        for e in self.entries.lock().unwrap().values() {
            e.task.abort();
        }
    }
}

fn until(t: SystemTime) -> Duration {
    t.duration_since(SystemTime::now()).unwrap_or_default()
}

async fn maintain(
    source: Arc<dyn CertSource>,
    id: Identity,
    tx: watch::Sender<Option<Arc<WorkloadCert>>>,
) {
    let mut retry = FIRST_RETRY;
    loop {
        match source.fetch(&id).await {
            Ok(cert) => {
                let renew_at = cert.renew_at();
                info!(
                    identity = %id,
                    generation = cert.generation,
                    expires_in_s = until(cert.info.not_after).as_secs(),
                    renew_in_s = until(renew_at).as_secs(),
                    "certificate obtained"
                );
                tx.send_replace(Some(Arc::new(cert)));
                retry = FIRST_RETRY;
                // Never spin, even if the CA hands out nearly expired certificates.
                tokio::time::sleep(until(renew_at).max(MIN_RENEW_INTERVAL)).await;
            }
            Err(e) => {
                let current = tx.borrow().as_ref().map(|c| c.info.not_after);
                let wait = retry + retry.mul_f64(fastrand::f64() * 0.2);
                warn!(
                    identity = %id,
                    error = %e,
                    retry_in_ms = wait.as_millis() as u64,
                    current_expires_in_s = current.map(|t| until(t).as_secs()),
                    "certificate request failed; retrying, the current certificate serves until it expires"
                );
                tokio::time::sleep(wait).await;
                retry = (retry * 2).min(MAX_RETRY);
            }
        }
    }
}
