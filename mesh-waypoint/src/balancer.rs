//! Per-request load balancing: power of two choices over the requests in
//! flight to each endpoint. Two endpoints are drawn at random and the one
//! with fewer requests in flight is taken, so a slow endpoint is avoided
//! without every proxy herding onto the same least-loaded one.
use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
};

/// The choice alone. `draws` are two random numbers; `in_flight` the load
/// of an endpoint. Ties go to the first draw, so they are random too.
pub fn pick(
    endpoints: &[SocketAddr],
    in_flight: impl Fn(&SocketAddr) -> usize,
    draws: (usize, usize),
) -> Option<SocketAddr> {
    match endpoints {
        [] => None,
        [only] => Some(*only),
        _ => {
            let n = endpoints.len();
            let a = draws.0 % n;
            // A second draw distinct from the first.
            let b = (a + 1 + draws.1 % (n - 1)) % n;
            let (a, b) = (endpoints[a], endpoints[b]);
            Some(if in_flight(&b) < in_flight(&a) { b } else { a })
        }
    }
}

/// Requests in flight per endpoint, shared by every connection.
#[derive(Default)]
pub struct Balancer {
    loads: Mutex<HashMap<SocketAddr, Arc<AtomicUsize>>>,
}

/// One request's place in its endpoint's count; released on drop.
pub struct InFlight {
    pub addr: SocketAddr,
    count: Arc<AtomicUsize>,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.count.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Balancer {
    /// An endpoint for the next request, out of those not in `tried`.
    pub fn choose(&self, endpoints: &[SocketAddr], tried: &[SocketAddr]) -> Option<InFlight> {
        let candidates: Vec<SocketAddr> = endpoints
            .iter()
            .filter(|e| !tried.contains(e))
            .copied()
            .collect();
        let mut loads = self.loads.lock().unwrap();
        let load = |e: &SocketAddr| loads.get(e).map_or(0, |c| c.load(Ordering::Acquire));
        let addr = pick(
            &candidates,
            load,
            (fastrand::usize(..), fastrand::usize(..)),
        )?;
        let count = loads.entry(addr).or_default().clone();
        count.fetch_add(1, Ordering::AcqRel);
        Some(InFlight { addr, count })
    }

    /// Requests in flight to `addr` now.
    pub fn in_flight(&self, addr: &SocketAddr) -> usize {
        self.loads
            .lock()
            .unwrap()
            .get(addr)
            .map_or(0, |c| c.load(Ordering::Acquire))
    }

    /// Forgets endpoints with nothing in flight, so endpoints that left
    /// the cluster are not kept for ever.
    pub fn sweep(&self) {
        self.loads
            .lock()
            .unwrap()
            .retain(|_, c| Arc::strong_count(c) > 1 || c.load(Ordering::Acquire) > 0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn eps(n: u8) -> Vec<SocketAddr> {
        (1..=n)
            .map(|i| SocketAddr::from(([10, 0, 0, i], 80)))
            .collect()
    }

    #[test]
    fn none_one_or_the_less_loaded_of_two_draws() {
        assert_eq!(pick(&[], |_| 0, (0, 0)), None);
        let e = eps(3);
        assert_eq!(pick(&e[..1], |_| 9, (5, 7)), Some(e[0]));
        let load = |a: &SocketAddr| if *a == e[0] { 5 } else { 1 };
        // Draws 0 and 1 + 0: e[0] (5 in flight) against e[1] (1).
        assert_eq!(pick(&e, load, (0, 0)), Some(e[1]));
        // Draws 1 and 2: both light, the first draw wins the tie.
        assert_eq!(pick(&e, load, (1, 0)), Some(e[1]));
        assert_eq!(pick(&e, load, (2, 0)), Some(e[2]));
    }

    #[test]
    fn the_two_draws_are_always_distinct() {
        let e = eps(4);
        for a in 0..16 {
            for b in 0..16 {
                // Only the second draw is loaded less: it must be taken,
                // which it could not be if it were the first.
                let first = e[a % 4];
                let load = |x: &SocketAddr| usize::from(*x == first);
                assert_ne!(pick(&e, load, (a, b)), Some(first), "draws {a},{b}");
            }
        }
    }

    #[test]
    fn in_flight_counts_follow_the_places_and_steer_the_next_choice() {
        let b = Balancer::default();
        let e = eps(2);
        let first = b.choose(&e, &[]).unwrap();
        assert_eq!(b.in_flight(&first.addr), 1);
        // With one in flight on `first`, every choice goes to the other.
        for _ in 0..20 {
            let next = b.choose(&e, &[]).unwrap();
            assert_ne!(next.addr, first.addr);
        }
        let held = first.addr;
        drop(first);
        assert_eq!(b.in_flight(&held), 0);
        b.sweep();
        assert!(b.loads.lock().unwrap().is_empty());
    }

    #[test]
    fn tried_endpoints_are_skipped() {
        let b = Balancer::default();
        let e = eps(3);
        for _ in 0..20 {
            let p = b.choose(&e, &e[..2]).unwrap();
            assert_eq!(p.addr, e[2]);
        }
        assert!(b.choose(&e, &e).is_none());
    }
}
