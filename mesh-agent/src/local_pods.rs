//! The node's enrolled pods as everything but the node sees them: the
//! proxy (the same-node hand-over looks pods up by address), the flow
//! reader (by netns cookie), the status and the config dump. One snapshot
//! with both indexes, replaced whole after every reconcile, so no two
//! readers can disagree about which pods are enrolled. The node owns the
//! pods' runtimes; this is their read side.
use std::{
    collections::{BTreeMap, HashMap},
    net::IpAddr,
    sync::{Arc, RwLock},
};

use crate::pod::PodContext;

#[derive(Default)]
struct Snapshot {
    by_ip: HashMap<IpAddr, Arc<PodContext>>,
    by_cookie: BTreeMap<u64, Arc<PodContext>>,
}

#[derive(Default)]
pub struct LocalPods(RwLock<Arc<Snapshot>>);

impl LocalPods {
    /// Replaces the registry with these pods (the node's after a reconcile).
    pub fn set<'a>(&self, pods: impl Iterator<Item = &'a Arc<PodContext>>) {
        let mut next = Snapshot::default();
        for p in pods {
            for ip in &p.ips {
                next.by_ip.insert(ip.to_canonical(), p.clone());
            }
            next.by_cookie.insert(p.netns_cookie, p.clone());
        }
        *self.0.write().unwrap() = Arc::new(next);
    }

    fn snapshot(&self) -> Arc<Snapshot> {
        self.0.read().unwrap().clone()
    }

    /// The enrolled pod at `ip`.
    pub fn by_ip(&self, ip: IpAddr) -> Option<Arc<PodContext>> {
        self.snapshot().by_ip.get(&ip.to_canonical()).cloned()
    }

    /// The enrolled pod whose netns has this cookie (as kernel records name it).
    pub fn by_cookie(&self, cookie: u64) -> Option<Arc<PodContext>> {
        self.snapshot().by_cookie.get(&cookie).cloned()
    }

    /// Every enrolled pod, by netns cookie.
    pub fn all(&self) -> Vec<Arc<PodContext>> {
        self.snapshot().by_cookie.values().cloned().collect()
    }

    pub fn len(&self) -> usize {
        self.snapshot().by_cookie.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
