//! Picking a Service endpoint: power of two random choices by open
//! connections, as Istio and Linkerd do, so a slow endpoint that holds
//! connections gets fewer new ones without any endpoint seeing a herd.
use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
};

/// Open connections per endpoint, across all pods of the node.
#[derive(Debug, Default)]
pub struct Balancer {
    open: Mutex<HashMap<SocketAddr, Arc<AtomicUsize>>>,
}

/// Counts one open connection to an endpoint until dropped.
pub struct Load {
    count: Arc<AtomicUsize>,
}

impl Drop for Load {
    fn drop(&mut self) {
        self.count.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Balancer {
    fn open_to(&self, ep: SocketAddr) -> usize {
        self.open
            .lock()
            .unwrap()
            .get(&ep)
            .map_or(0, |c| c.load(Ordering::Relaxed))
    }

    /// The endpoints in the order to try them: the less loaded of two
    /// random picks first, then the rest from a random start.
    pub fn order(&self, endpoints: &[SocketAddr]) -> Vec<SocketAddr> {
        let n = endpoints.len();
        if n <= 1 {
            return endpoints.to_vec();
        }
        let a = fastrand::usize(..n);
        let b = (a + 1 + fastrand::usize(..n - 1)) % n;
        let first = if self.open_to(endpoints[b]) < self.open_to(endpoints[a]) {
            b
        } else {
            a
        };
        let mut order = Vec::with_capacity(n);
        order.push(endpoints[first]);
        let start = fastrand::usize(..n);
        order.extend(
            (0..n)
                .map(|i| endpoints[(start + i) % n])
                .filter(|e| *e != endpoints[first]),
        );
        order
    }

    pub fn track(&self, ep: SocketAddr) -> Load {
        let mut open = self.open.lock().unwrap();
        // Forget endpoints nobody is connected to, so gone ones do not pile up.
        open.retain(|_, c| c.load(Ordering::Relaxed) > 0 || Arc::strong_count(c) > 1);
        let count = open.entry(ep).or_default().clone();
        count.fetch_add(1, Ordering::Relaxed);
        Load { count }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn eps(n: u16) -> Vec<SocketAddr> {
        (0..n)
            .map(|i| SocketAddr::from(([10, 0, 0, i as u8 + 1], 80)))
            .collect()
    }

    #[test]
    fn order_covers_every_endpoint_once() {
        let b = Balancer::default();
        for n in 1..6 {
            let mut o = b.order(&eps(n));
            o.sort();
            assert_eq!(o, eps(n));
        }
        assert!(b.order(&[]).is_empty());
    }

    #[test]
    fn the_loaded_endpoint_is_never_first_of_two() {
        let b = Balancer::default();
        let e = eps(2);
        let _busy: Vec<_> = (0..3).map(|_| b.track(e[0])).collect();
        for _ in 0..50 {
            assert_eq!(b.order(&e)[0], e[1]);
        }
    }

    #[test]
    fn load_is_spread_and_released() {
        let b = Balancer::default();
        let e = eps(4);
        let held: Vec<_> = (0..400).map(|_| b.track(b.order(&e)[0])).collect();
        for ep in &e {
            let n = b.open_to(*ep);
            assert!((60..=140).contains(&n), "{ep}: {n} of 400");
        }
        drop(held);
        assert!(e.iter().all(|ep| b.open_to(*ep) == 0));
    }
}
