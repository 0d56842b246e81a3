//! Weighted choice of a rule's backend from a random number the caller
//! draws, so that the choice itself is a pure function.

use crate::compile::Backend;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pick<'a> {
    Backend(&'a Backend),
    /// No backend, or every weight 0: Gateway API answers 500.
    NoBackend,
}

/// `roll` is uniform over `u32`; it is scaled onto the sum of the weights
/// (not taken modulo it) so that each backend's share of the rolls is its
/// weight's share of the sum, to within one roll in 2^32.
pub fn pick(backends: &[Backend], roll: u32) -> Pick<'_> {
    let total: u64 = backends.iter().map(|b| u64::from(b.weight)).sum();
    if total == 0 {
        return Pick::NoBackend;
    }
    // total ≤ 16 × 1_000_000, so the product fits in u64.
    let mut target = (u64::from(roll) * total) >> 32;
    let chosen = backends.iter().find(|b| {
        let w = u64::from(b.weight);
        if target < w {
            return true;
        }
        target -= w;
        false
    });
    // target < total, so some backend is always found.
    chosen.map_or(Pick::NoBackend, Pick::Backend)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compile::BackendRef;

    fn backend(name: &str, weight: u32) -> Backend {
        Backend {
            target: BackendRef {
                namespace: "ns".into(),
                name: name.into(),
                port: 80,
            },
            weight,
            filters: vec![],
        }
    }

    fn name(p: Pick<'_>) -> &str {
        match p {
            Pick::Backend(b) => &b.target.name,
            Pick::NoBackend => "-",
        }
    }

    #[test]
    fn no_backend_when_empty_or_all_zero() {
        assert_eq!(pick(&[], 0), Pick::NoBackend);
        assert_eq!(
            pick(&[backend("a", 0), backend("b", 0)], 12345),
            Pick::NoBackend
        );
    }

    #[test]
    fn zero_weight_is_never_picked() {
        let bs = [backend("a", 0), backend("b", 1), backend("c", 0)];
        for roll in [0, 1, u32::MAX / 2, u32::MAX] {
            assert_eq!(name(pick(&bs, roll)), "b");
        }
    }

    #[test]
    fn boundaries_of_an_even_split() {
        let bs = [backend("a", 1), backend("b", 1)];
        assert_eq!(name(pick(&bs, 0)), "a");
        assert_eq!(name(pick(&bs, (1 << 31) - 1)), "a");
        assert_eq!(name(pick(&bs, 1 << 31)), "b");
        assert_eq!(name(pick(&bs, u32::MAX)), "b");
    }

    #[test]
    fn boundaries_of_a_uneven_split() {
        // 1:3 — a quarter of the rolls to a.
        let bs = [backend("a", 1), backend("b", 3)];
        assert_eq!(name(pick(&bs, (1 << 30) - 1)), "a");
        assert_eq!(name(pick(&bs, 1 << 30)), "b");
        assert_eq!(name(pick(&bs, u32::MAX)), "b");
    }

    #[test]
    fn shares_follow_weights() {
        let bs = [
            backend("a", 80),
            backend("b", 20),
            backend("c", 0),
            backend("d", 1_000_000),
        ];
        let total: u64 = 1_000_100;
        let mut counts = [0u64; 4];
        let step = 1u64 << 12;
        let mut roll = 0u64;
        while roll <= u64::from(u32::MAX) {
            let i = match name(pick(&bs, roll as u32)) {
                "a" => 0,
                "b" => 1,
                "c" => 2,
                _ => 3,
            };
            counts[i] += 1;
            roll += step;
        }
        let n: u64 = counts.iter().sum();
        for (i, w) in [80u64, 20, 0, 1_000_000].into_iter().enumerate() {
            let want = n * w / total;
            assert!(
                counts[i].abs_diff(want) <= 1,
                "backend {i}: {} vs {want}",
                counts[i]
            );
        }
    }
}
