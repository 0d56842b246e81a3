//! Per-request load balancing. By default (Istio's `LEAST_REQUEST`),
//! power of two choices over the requests in flight to each endpoint: two
//! endpoints are drawn at random and the one with fewer requests in flight
//! is taken, so a slow endpoint is avoided without every proxy herding
//! onto the same least-loaded one. A DestinationRule may ask for
//! `ROUND_ROBIN`, `RANDOM`, or a consistent hash: rendezvous hashing
//! (highest random weight), where each endpoint scores `hash(key,
//! endpoint)` and the highest wins, so removing an endpoint moves only the
//! keys that were on it, and a retry takes the key's next best endpoint.
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

/// How an endpoint is chosen.
#[derive(Debug, Clone, Copy)]
pub enum Choice<'a> {
    /// Power of two choices over requests in flight.
    LeastRequest,
    /// In turn, by the Service's cursor.
    RoundRobin(&'a AtomicUsize),
    Random,
    /// The endpoint this key hashes to (`hash_key`).
    Hash(u64),
}

/// 64-bit FNV-1a, then a finalizer that spreads the bits (splitmix64's):
/// stable across processes and releases, unlike std's hasher, so every
/// replica of a waypoint sends a key to the same endpoint.
fn hash64(parts: &[&[u8]]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for part in parts {
        for b in *part {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        // Separates the parts: ("ab", "c") is not ("a", "bc").
        h ^= 0xff;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h ^= h >> 30;
    h = h.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h ^= h >> 27;
    h = h.wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

/// The hash of a request's key (a header's value, a cookie's, an address).
pub fn hash_key(key: &[u8]) -> u64 {
    hash64(&[key])
}

/// The endpoint with the highest score for `key` (rendezvous hashing).
pub fn pick_hashed(endpoints: &[SocketAddr], key: u64) -> Option<SocketAddr> {
    endpoints.iter().copied().max_by_key(|e| {
        let ip = match e.ip().to_canonical() {
            std::net::IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
            std::net::IpAddr::V6(v6) => v6.octets(),
        };
        let score = hash64(&[&key.to_le_bytes(), &ip, &e.port().to_be_bytes()]);
        (score, *e)
    })
}

/// The endpoint at `cursor`'s turn.
pub fn pick_in_turn(endpoints: &[SocketAddr], cursor: usize) -> Option<SocketAddr> {
    (!endpoints.is_empty()).then(|| endpoints[cursor % endpoints.len()])
}

/// Requests in flight per endpoint, shared by every connection.
#[derive(Default)]
pub struct Balancer {
    loads: Mutex<HashMap<SocketAddr, Arc<AtomicUsize>>>,
}

/// One request's place in its endpoint's count; released on drop, with
/// its place under its Service's connection pool limits.
pub struct InFlight {
    pub addr: SocketAddr,
    count: Arc<AtomicUsize>,
    pool: Option<crate::connection_pool::Held>,
}

impl InFlight {
    /// Keeps the request's place under its Service's limits for as long
    /// as it is in flight (to the end of its response).
    pub fn hold(&mut self, place: Option<crate::connection_pool::Held>) {
        self.pool = place;
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.count.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Balancer {
    /// An endpoint for the next request, out of those not in `tried`.
    pub fn choose(&self, endpoints: &[SocketAddr], tried: &[SocketAddr]) -> Option<InFlight> {
        self.choose_by(endpoints, tried, Choice::LeastRequest)
    }

    /// An endpoint out of those not in `tried`, chosen as `how` says.
    pub fn choose_by(
        &self,
        endpoints: &[SocketAddr],
        tried: &[SocketAddr],
        how: Choice<'_>,
    ) -> Option<InFlight> {
        let candidates: Vec<SocketAddr> = endpoints
            .iter()
            .filter(|e| !tried.contains(e))
            .copied()
            .collect();
        let mut loads = self.loads.lock().unwrap();
        let load = |e: &SocketAddr| loads.get(e).map_or(0, |c| c.load(Ordering::Acquire));
        let addr = match how {
            Choice::LeastRequest => pick(
                &candidates,
                load,
                (fastrand::usize(..), fastrand::usize(..)),
            ),
            Choice::RoundRobin(cursor) => {
                pick_in_turn(&candidates, cursor.fetch_add(1, Ordering::Relaxed))
            }
            Choice::Random => pick_in_turn(&candidates, fastrand::usize(..)),
            Choice::Hash(key) => pick_hashed(&candidates, key),
        }?;
        let count = loads.entry(addr).or_default().clone();
        count.fetch_add(1, Ordering::AcqRel);
        Some(InFlight {
            addr,
            count,
            pool: None,
        })
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
    fn a_hashed_key_stays_put_and_a_removal_moves_only_its_keys() {
        let e = eps(5);
        let keys: Vec<u64> = (0..1000u32).map(|k| hash_key(&k.to_le_bytes())).collect();
        let before: Vec<SocketAddr> = keys.iter().map(|k| pick_hashed(&e, *k).unwrap()).collect();
        // Spread: each of 5 endpoints gets a fair share of 1000 keys.
        for ep in &e {
            let n = before.iter().filter(|a| *a == ep).count();
            assert!((120..=280).contains(&n), "{ep}: {n} keys");
        }
        // The same key, the same endpoint, whatever the order given.
        let mut reversed = e.clone();
        reversed.reverse();
        assert_eq!(pick_hashed(&reversed, keys[7]), Some(before[7]));
        // Without e[2], only e[2]'s keys move.
        let fewer: Vec<SocketAddr> = e.iter().copied().filter(|a| *a != e[2]).collect();
        for (k, was) in keys.iter().zip(&before) {
            let now = pick_hashed(&fewer, *k).unwrap();
            if *was != e[2] {
                assert_eq!(now, *was);
            }
        }
        assert_eq!(pick_hashed(&[], 1), None);
        assert_ne!(hash64(&[b"ab", b"c"]), hash64(&[b"a", b"bc"]));
    }

    #[test]
    fn round_robin_takes_each_in_turn_and_random_spreads() {
        let b = Balancer::default();
        let e = eps(3);
        let cursor = AtomicUsize::new(0);
        let picked: Vec<SocketAddr> = (0..6)
            .map(|_| {
                b.choose_by(&e, &[], Choice::RoundRobin(&cursor))
                    .unwrap()
                    .addr
            })
            .collect();
        assert_eq!(picked, [e[0], e[1], e[2], e[0], e[1], e[2]]);
        let mut seen = std::collections::HashSet::new();
        for _ in 0..200 {
            seen.insert(b.choose_by(&e, &[], Choice::Random).unwrap().addr);
        }
        assert_eq!(seen.len(), 3);
        // A hashed choice skips a tried endpoint for its next best.
        let first = b.choose_by(&e, &[], Choice::Hash(42)).unwrap().addr;
        let next = b.choose_by(&e, &[first], Choice::Hash(42)).unwrap().addr;
        assert_ne!(first, next);
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
