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
    inner: Arc<Inner>,
}

struct Inner {
    source: Arc<dyn CertSource>,
    entries: Mutex<HashMap<Identity, Entry>>,
}

/// A hold on an identity's certificate. While any lease of an identity
/// lives, its certificate is kept and renewed; dropping the last one stops
/// renewal and forgets the key. No count to keep by hand: an early return
/// or a panic between acquiring and storing it cannot leak the entry.
pub struct CertLease {
    inner: Arc<Inner>,
    identity: Identity,
    watch: CertWatch,
}

impl CertLease {
    /// The certificate as it changes (`None` until the first is issued).
    pub fn watch(&self) -> &CertWatch {
        &self.watch
    }

    pub fn identity(&self) -> &Identity {
        &self.identity
    }
}

impl Drop for CertLease {
    fn drop(&mut self) {
        self.inner.release(&self.identity);
    }
}

impl std::fmt::Debug for CertLease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertLease")
            .field("identity", &self.identity)
            .finish_non_exhaustive()
    }
}

impl CertManager {
    pub fn new(source: Arc<dyn CertSource>) -> Self {
        Self {
            inner: Arc::new(Inner {
                source,
                entries: Mutex::default(),
            }),
        }
    }

    /// A lease on the identity's certificate; the first one starts fetching.
    pub fn acquire(&self, id: &Identity) -> CertLease {
        let mut entries = self.inner.entries.lock().unwrap();
        let watch = if let Some(e) = entries.get_mut(id) {
            e.users += 1;
            e.tx.subscribe()
        } else {
            let (tx, rx) = watch::channel(None);
            let task = tokio::spawn(maintain(self.inner.source.clone(), id.clone(), tx.clone()));
            entries.insert(
                id.clone(),
                Entry {
                    tx,
                    users: 1,
                    task: task.abort_handle(),
                },
            );
            rx
        };
        CertLease {
            inner: self.inner.clone(),
            identity: id.clone(),
            watch,
        }
    }

    pub fn status(&self) -> Vec<CertStatus> {
        let entries = self.inner.entries.lock().unwrap();
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

impl Inner {
    /// One lease fewer; the last one stops renewal and forgets the key.
    fn release(&self, id: &Identity) {
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
}

impl Drop for Inner {
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

#[cfg(test)]
mod tests {
    use std::{future::Future, pin::Pin};

    use super::*;
    use crate::client::FetchError;

    /// A CA that never answers: the leases are what is under test.
    struct Unreachable;

    impl CertSource for Unreachable {
        fn fetch<'a>(
            &'a self,
            _id: &'a Identity,
        ) -> Pin<Box<dyn Future<Output = Result<WorkloadCert, FetchError>> + Send + 'a>> {
            Box::pin(std::future::pending())
        }
    }

    fn pods(m: &CertManager) -> Vec<(String, usize)> {
        m.status()
            .into_iter()
            .map(|s| (s.identity.to_string(), s.pods))
            .collect()
    }

    #[tokio::test]
    async fn an_identity_is_kept_while_any_lease_lives_and_forgotten_with_the_last() {
        let m = CertManager::new(Arc::new(Unreachable));
        let web = Identity::new("cluster.local", "shop", "web").unwrap();
        let db = Identity::new("cluster.local", "shop", "db").unwrap();
        let a = m.acquire(&web);
        let b = m.acquire(&web);
        let c = m.acquire(&db);
        assert_eq!(
            pods(&m),
            [
                ("spiffe://cluster.local/ns/shop/sa/db".to_owned(), 1),
                ("spiffe://cluster.local/ns/shop/sa/web".to_owned(), 2)
            ]
        );
        drop(a);
        assert_eq!(pods(&m)[1].1, 1, "one lease of web is left");
        drop(c);
        assert_eq!(pods(&m).len(), 1, "db had one lease");
        drop(b);
        assert!(pods(&m).is_empty());
    }

    #[tokio::test]
    async fn a_lease_dropped_on_an_error_path_releases_too() {
        let m = CertManager::new(Arc::new(Unreachable));
        let web = Identity::new("cluster.local", "shop", "web").unwrap();
        let fails = || -> Result<CertLease, ()> {
            let _lease = m.acquire(&web);
            Err(())
        };
        assert!(fails().is_err());
        assert!(m.status().is_empty());
    }
}
