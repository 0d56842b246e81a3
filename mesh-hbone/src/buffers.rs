//! How much the agent holds for apps that do not read. A tunnel's receiver
//! holds what the peer sent until the app takes it, up to the stream's
//! window; an app that stops reading pins that much in the agent, and many
//! such streams could grow it without bound. Flow-control windows cannot be
//! taken back once granted, so the bound is enforced the way Envoy's
//! overload manager resets high-memory streams: streams whose app is not
//! reading report what they hold to one node-wide ledger, and once the
//! ledger is over its budget, a stuck stream holding at least
//! `RESET_AT_LEAST` is reset (its peer sees RST_STREAM, its app a TCP RST).
//! Streams whose apps keep reading hold next to nothing and are never
//! touched.
use std::sync::{
    Arc,
    atomic::{AtomicUsize, Ordering},
};

/// A stuck stream holding less than this is left alone even over budget:
/// resetting it would free little.
pub const RESET_AT_LEAST: usize = 1024 * 1024;

pub struct BufferBudget {
    limit: usize,
    held: AtomicUsize,
}

/// One stuck stream's entry in the ledger; removed on drop.
pub struct Holding {
    budget: Arc<BufferBudget>,
    bytes: usize,
}

/// Whether a stuck stream may go on waiting for its app.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Wait,
    /// The budget is spent and this stream holds enough to be worth freeing.
    Reset {
        held: usize,
        limit: usize,
    },
}

impl BufferBudget {
    pub fn new(limit: usize) -> Arc<Self> {
        Arc::new(Self {
            limit,
            held: AtomicUsize::new(0),
        })
    }

    /// An entry for a stream whose app has stopped reading.
    pub fn holding(self: &Arc<Self>) -> Holding {
        Holding {
            budget: self.clone(),
            bytes: 0,
        }
    }

    /// Bytes all stuck streams hold together.
    pub fn held(&self) -> usize {
        self.held.load(Ordering::Acquire)
    }
}

impl Holding {
    /// Records that the stream now holds `bytes`; whether it may wait on.
    pub fn update(&mut self, bytes: usize) -> Verdict {
        let budget = &self.budget;
        if bytes >= self.bytes {
            budget.held.fetch_add(bytes - self.bytes, Ordering::AcqRel);
        } else {
            budget.held.fetch_sub(self.bytes - bytes, Ordering::AcqRel);
        }
        self.bytes = bytes;
        verdict(budget.held(), budget.limit, bytes)
    }
}

impl Drop for Holding {
    fn drop(&mut self) {
        self.budget.held.fetch_sub(self.bytes, Ordering::AcqRel);
    }
}

/// The decision alone: over budget, streams holding a real share are reset.
pub fn verdict(total: usize, limit: usize, own: usize) -> Verdict {
    if total > limit && own >= RESET_AT_LEAST {
        Verdict::Reset { held: total, limit }
    } else {
        Verdict::Wait
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: usize = 1024 * 1024;

    #[test]
    fn only_streams_holding_a_real_share_are_reset_and_only_over_budget() {
        assert_eq!(verdict(10 * MIB, 16 * MIB, 4 * MIB), Verdict::Wait);
        assert_eq!(
            verdict(17 * MIB, 16 * MIB, 4 * MIB),
            Verdict::Reset {
                held: 17 * MIB,
                limit: 16 * MIB
            }
        );
        assert_eq!(verdict(17 * MIB, 16 * MIB, 64 * 1024), Verdict::Wait);
    }

    #[test]
    fn the_ledger_follows_each_stream_and_forgets_it_on_drop() {
        let budget = BufferBudget::new(6 * MIB);
        let mut one = budget.holding();
        let mut two = budget.holding();
        assert_eq!(one.update(4 * MIB), Verdict::Wait);
        assert_eq!(two.update(2 * MIB), Verdict::Wait);
        assert_eq!(budget.held(), 6 * MIB);
        assert!(matches!(one.update(5 * MIB), Verdict::Reset { .. }));
        assert_eq!(two.update(MIB / 2), Verdict::Wait, "too small to reset");
        drop(one);
        assert_eq!(budget.held(), MIB / 2);
        drop(two);
        assert_eq!(budget.held(), 0);
    }
}
