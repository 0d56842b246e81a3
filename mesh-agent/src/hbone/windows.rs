//! How much an HBONE connection may make the agent buffer. A receiver holds
//! what the peer sent until the app reads it, up to the windows it
//! advertised: 16 MiB per connection with the bulk-sized windows, so an app
//! that never reads, multiplied by many tunnels, could grow the agent
//! without bound. Each connection therefore reserves its connection window
//! from one node-wide budget; once the budget is spent, new connections get
//! HTTP/2's default 64 KiB windows (slower bulk, bounded memory) until
//! earlier ones close.
use std::sync::{
    Arc,
    atomic::{AtomicUsize, Ordering},
};

use super::{CONNECTION_WINDOW, STREAM_WINDOW};

/// HTTP/2's initial window (RFC 9113 §6.9.2), for connections past the budget.
pub const SMALL_WINDOW: u32 = 65_535;

/// Windows for one connection, and its share of the budget while it lives.
pub struct Windows {
    pub stream: u32,
    pub connection: u32,
    _reservation: Option<Reservation>,
}

struct Reservation {
    budget: Arc<WindowBudget>,
    bytes: usize,
}

impl Drop for Reservation {
    fn drop(&mut self) {
        self.budget.reserved.fetch_sub(self.bytes, Ordering::AcqRel);
    }
}

pub struct WindowBudget {
    limit: usize,
    reserved: AtomicUsize,
}

impl WindowBudget {
    pub fn new(limit: usize) -> Arc<Self> {
        Arc::new(Self {
            limit,
            reserved: AtomicUsize::new(0),
        })
    }

    /// Bulk windows while they fit in the budget, the small ones otherwise.
    pub fn windows(self: &Arc<Self>) -> Windows {
        let want = CONNECTION_WINDOW as usize;
        let fits = self
            .reserved
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |r| {
                (r + want <= self.limit).then_some(r + want)
            })
            .is_ok();
        if fits {
            Windows {
                stream: STREAM_WINDOW,
                connection: CONNECTION_WINDOW,
                _reservation: Some(Reservation {
                    budget: self.clone(),
                    bytes: want,
                }),
            }
        } else {
            Windows {
                stream: SMALL_WINDOW,
                connection: SMALL_WINDOW,
                _reservation: None,
            }
        }
    }

    /// Bytes of window the open connections hold.
    pub fn reserved(&self) -> usize {
        self.reserved.load(Ordering::Acquire)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connections_past_the_budget_get_small_windows_until_others_close() {
        let budget = WindowBudget::new(2 * CONNECTION_WINDOW as usize);
        let one = budget.windows();
        let two = budget.windows();
        assert_eq!(one.connection, CONNECTION_WINDOW);
        assert_eq!(two.stream, STREAM_WINDOW);
        let three = budget.windows();
        assert_eq!(
            (three.stream, three.connection),
            (SMALL_WINDOW, SMALL_WINDOW)
        );
        assert_eq!(budget.reserved(), 2 * CONNECTION_WINDOW as usize);
        drop(one);
        drop(three);
        assert_eq!(budget.reserved(), CONNECTION_WINDOW as usize);
        assert_eq!(budget.windows().connection, CONNECTION_WINDOW);
    }
}
