//! A DestinationRule's `connectionPool` limits, per Service port and per
//! waypoint replica, with Envoy's circuit breakers' meaning:
//!
//! - `http.http2MaxRequests`: requests in flight to the Service's endpoints
//!   (whatever the protocol); one more is answered 503 `UO`.
//! - `tcp.maxConnections`: HTTP/1.1 requests in flight, each on a
//!   connection of its own, so at most that many upstream connections are
//!   busy at once; a request over it waits for one to be free,
//! - `http.http1MaxPendingRequests`: ... among at most this many waiting
//!   requests; one more is answered 503 `UO`, and so is one that waits
//!   longer than its attempt timeout. HTTP/2 requests share one connection
//!   per endpoint and never wait.
//! - `http.maxRetries`: retries in flight at once; a retry over it is not
//!   made (the answer at hand is delivered, flagged `URX`).
//!
//! The decision is pure (`admits`); the counters are shared atomics and
//! the limits are read from the rule of the moment, so a changed rule
//! applies to the next request.
use std::{
    num::NonZeroU32,
    sync::{
        Arc,
        atomic::{AtomicU32, Ordering},
    },
    time::Duration,
};

use mesh_discovery::destination_rule::ConnectionPool;
use tokio::sync::Notify;

/// Which limit a request met; the metric's `limit` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    /// `http.http2MaxRequests`.
    Requests,
    /// `http.http1MaxPendingRequests` (waiting for one of
    /// `tcp.maxConnections`).
    PendingRequests,
    /// Waited for a connection (`tcp.maxConnections`) past the attempt
    /// timeout.
    ConnectionWait,
    /// `http.maxRetries`.
    Retries,
}

impl Limit {
    pub fn label(self) -> &'static str {
        match self {
            Limit::Requests => "http2_max_requests",
            Limit::PendingRequests => "http1_max_pending_requests",
            Limit::ConnectionWait => "max_connections_wait",
            Limit::Retries => "max_retries",
        }
    }
}

/// Whether one more fits beside `in_use` under `limit` (none: no limit).
pub fn admits(in_use: u32, limit: Option<NonZeroU32>) -> bool {
    limit.is_none_or(|l| in_use < l.get())
}

/// The counters of one Service port.
#[derive(Debug, Default)]
pub struct Counters {
    requests: AtomicU32,
    connections: AtomicU32,
    pending: AtomicU32,
    retries: AtomicU32,
    /// Wakes a waiting request when a connection is released.
    freed: Notify,
}

/// Takes one of `counter` when `limit` allows.
fn take(counter: &AtomicU32, limit: Option<NonZeroU32>) -> bool {
    counter
        .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
            admits(n, limit).then_some(n + 1)
        })
        .is_ok()
}

impl Counters {
    /// Requests, connections, pending requests and retries in flight now.
    pub fn in_use(&self) -> (u32, u32, u32, u32) {
        (
            self.requests.load(Ordering::Acquire),
            self.connections.load(Ordering::Acquire),
            self.pending.load(Ordering::Acquire),
            self.retries.load(Ordering::Acquire),
        )
    }
}

/// A request's place under the limits; released on drop.
#[derive(Debug)]
pub struct Held {
    counters: Arc<Counters>,
    connection: bool,
}

impl Drop for Held {
    fn drop(&mut self) {
        self.counters.requests.fetch_sub(1, Ordering::AcqRel);
        if self.connection {
            self.counters.connections.fetch_sub(1, Ordering::AcqRel);
            self.counters.freed.notify_one();
        }
    }
}

/// A retry in flight; released on drop.
#[derive(Debug)]
pub struct RetryHeld(Arc<Counters>);

impl Drop for RetryHeld {
    fn drop(&mut self) {
        self.0.retries.fetch_sub(1, Ordering::AcqRel);
    }
}

/// One waiting request; released on drop.
struct Pending<'a>(&'a AtomicU32);

impl Drop for Pending<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Admits a request to the Service under `pool`: at once, after waiting
/// for a connection (HTTP/1.1, `needs_connection`) at most `wait`, or not.
pub async fn admit(
    counters: &Arc<Counters>,
    pool: &ConnectionPool,
    needs_connection: bool,
    wait: Duration,
) -> Result<Held, Limit> {
    if !take(&counters.requests, pool.http2_max_requests) {
        return Err(Limit::Requests);
    }
    let mut held = Held {
        counters: counters.clone(),
        connection: false,
    };
    if !needs_connection || pool.max_connections.is_none() {
        return Ok(held);
    }
    if take(&counters.connections, pool.max_connections) {
        held.connection = true;
        return Ok(held);
    }
    if !take(&counters.pending, pool.http1_max_pending_requests) {
        return Err(Limit::PendingRequests);
    }
    let _pending = Pending(&counters.pending);
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        let freed = counters.freed.notified();
        if take(&counters.connections, pool.max_connections) {
            held.connection = true;
            return Ok(held);
        }
        if tokio::time::timeout_at(deadline, freed).await.is_err() {
            return Err(Limit::ConnectionWait);
        }
    }
}

/// A retry's place under `pool.maxRetries`, or `None` when over it.
pub fn retry(counters: &Arc<Counters>, pool: &ConnectionPool) -> Option<RetryHeld> {
    take(&counters.retries, pool.max_retries).then(|| RetryHeld(counters.clone()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(f: impl FnOnce(&mut ConnectionPool)) -> ConnectionPool {
        let mut p = ConnectionPool::default();
        f(&mut p);
        p
    }

    const N1: Option<NonZeroU32> = NonZeroU32::new(1);

    #[test]
    fn no_limit_admits_everything() {
        assert!(admits(u32::MAX - 1, None));
        assert!(admits(0, N1));
        assert!(!admits(1, N1));
    }

    #[tokio::test]
    async fn requests_over_http2_max_requests_overflow_until_one_ends() {
        let c = Arc::new(Counters::default());
        let p = pool(|p| p.http2_max_requests = N1);
        let first = admit(&c, &p, false, Duration::ZERO).await.unwrap();
        assert_eq!(
            admit(&c, &p, true, Duration::ZERO).await.unwrap_err(),
            Limit::Requests
        );
        drop(first);
        assert!(admit(&c, &p, false, Duration::ZERO).await.is_ok());
        assert_eq!(c.in_use(), (0, 0, 0, 0));
    }

    #[tokio::test]
    async fn http1_requests_wait_for_a_connection_among_bounded_pending_ones() {
        let c = Arc::new(Counters::default());
        let p = pool(|p| {
            p.max_connections = N1;
            p.http1_max_pending_requests = N1;
        });
        let first = admit(&c, &p, true, Duration::ZERO).await.unwrap();
        let waiting = {
            let (c, p) = (c.clone(), p.clone());
            tokio::spawn(async move { admit(&c, &p, true, Duration::from_secs(5)).await })
        };
        while c.in_use().2 == 0 {
            tokio::task::yield_now().await;
        }
        assert_eq!(
            admit(&c, &p, true, Duration::ZERO).await.unwrap_err(),
            Limit::PendingRequests
        );
        // HTTP/2 needs no connection of its own.
        assert!(admit(&c, &p, false, Duration::ZERO).await.is_ok());
        drop(first);
        let second = waiting.await.unwrap().unwrap();
        assert_eq!(c.in_use(), (1, 1, 0, 0));
        // Waiting longer than allowed overflows too.
        assert_eq!(
            admit(&c, &p, true, Duration::from_millis(10))
                .await
                .unwrap_err(),
            Limit::ConnectionWait
        );
        drop(second);
        assert_eq!(c.in_use(), (0, 0, 0, 0));
    }

    #[test]
    fn retries_in_flight_are_capped() {
        let c = Arc::new(Counters::default());
        let p = pool(|p| p.max_retries = N1);
        let r = retry(&c, &p).unwrap();
        assert!(retry(&c, &p).is_none());
        drop(r);
        assert!(retry(&c, &p).is_some());
        assert!(retry(&c, &ConnectionPool::default()).is_some());
    }
}
