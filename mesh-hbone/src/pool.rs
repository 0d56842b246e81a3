//! Pooled HBONE connections, keyed by source pod (so the tunnel leaves from
//! the pod's own address), the source certificate's generation (renewal
//! moves new streams to new connections), the destination identity and the
//! destination address. Each connection carries a bounded number of
//! streams; idle ones are closed.
use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::Instant,
};

use bytes::Bytes;
use h2::client::SendRequest;
use mesh_identity::Identity;

use super::{IDLE_TIMEOUT, MAX_STREAMS_PER_CONNECTION};

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PoolKey {
    pub source_pod: String,
    pub source_generation: u64,
    pub destination: Identity,
    pub address: SocketAddr,
}

pub struct Pooled {
    sender: SendRequest<Bytes>,
    active: AtomicUsize,
    closed: Arc<AtomicBool>,
    idle_since: Mutex<Instant>,
}

/// Holds one stream's place on a pooled connection.
pub struct StreamLease {
    conn: Arc<Pooled>,
}

impl StreamLease {
    /// Takes the connection out of the pool: no new stream is put on it.
    /// For a connection that failed a stream with an HTTP/2 error (a
    /// GOAWAY from a draining or defending peer): its task ends only once
    /// its open streams have, and until then it would be leased again.
    pub fn retire(&self) {
        self.conn.closed.store(true, Ordering::Release);
    }

    pub fn sender(&self) -> SendRequest<Bytes> {
        self.conn.sender.clone()
    }
}

impl Drop for StreamLease {
    fn drop(&mut self) {
        if self.conn.active.fetch_sub(1, Ordering::AcqRel) == 1 {
            *self.conn.idle_since.lock().unwrap() = Instant::now();
        }
    }
}

#[derive(Default)]
pub struct Pool {
    conns: Mutex<HashMap<PoolKey, Vec<Arc<Pooled>>>>,
    /// One lock per key, held while a new connection for that key is made:
    /// a lock per destination, not one for the pool, so one slow peer holds
    /// up only the streams bound for it.
    connecting: Mutex<HashMap<PoolKey, Arc<tokio::sync::Mutex<()>>>>,
}

impl Pool {
    /// The lock to hold while checking out again and, if that finds
    /// nothing, connecting for `key`.
    pub fn connecting(&self, key: &PoolKey) -> Arc<tokio::sync::Mutex<()>> {
        self.connecting
            .lock()
            .unwrap()
            .entry(key.clone())
            .or_default()
            .clone()
    }

    /// A lease on an open connection with room for another stream.
    pub fn checkout(&self, key: &PoolKey) -> Option<StreamLease> {
        let conns = self.conns.lock().unwrap();
        let conn = conns.get(key)?.iter().find(|c| {
            !c.closed.load(Ordering::Acquire)
                && c.active.load(Ordering::Acquire) < MAX_STREAMS_PER_CONNECTION
        })?;
        conn.active.fetch_add(1, Ordering::AcqRel);
        Some(StreamLease { conn: conn.clone() })
    }

    /// Adds a new connection and leases its first stream. `closed` is set by
    /// the task that drives the connection when it ends.
    pub fn insert(
        &self,
        key: PoolKey,
        sender: SendRequest<Bytes>,
        closed: Arc<AtomicBool>,
    ) -> StreamLease {
        let conn = Arc::new(Pooled {
            sender,
            active: AtomicUsize::new(1),
            closed,
            idle_since: Mutex::new(Instant::now()),
        });
        self.conns
            .lock()
            .unwrap()
            .entry(key)
            .or_default()
            .push(conn.clone());
        StreamLease { conn }
    }

    /// Forgets closed connections and closes idle ones (dropping the last
    /// sender makes h2 end the connection with GOAWAY).
    pub fn sweep(&self) {
        let mut conns = self.conns.lock().unwrap();
        let now = Instant::now();
        conns.retain(|_, list| {
            list.retain(|c| {
                let idle = c.active.load(Ordering::Acquire) == 0
                    && now.duration_since(*c.idle_since.lock().unwrap()) >= IDLE_TIMEOUT;
                !c.closed.load(Ordering::Acquire) && !idle
            });
            !list.is_empty()
        });
        // A key's lock is needed only while someone holds or waits for it.
        self.connecting
            .lock()
            .unwrap()
            .retain(|_, lock| Arc::strong_count(lock) > 1);
    }

    /// Closes every connection with no open stream (the agent is draining).
    pub fn close_idle(&self) {
        self.conns.lock().unwrap().retain(|_, list| {
            list.retain(|c| c.active.load(Ordering::Acquire) > 0);
            !list.is_empty()
        });
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    fn key(last: u8) -> PoolKey {
        PoolKey {
            source_pod: "default/a".into(),
            source_generation: 1,
            destination: Identity::new("cluster.local", "default", "c").unwrap(),
            address: SocketAddr::from(([10, 244, 1, last], 15008)),
        }
    }

    #[test]
    fn one_destination_has_one_connecting_lock_and_unused_ones_are_swept() {
        let pool = Pool::default();
        let first = pool.connecting(&key(10));
        assert!(Arc::ptr_eq(&first, &pool.connecting(&key(10))));
        assert!(!Arc::ptr_eq(&first, &pool.connecting(&key(11))));
        pool.sweep();
        assert_eq!(pool.connecting.lock().unwrap().len(), 1, "held one stays");
        drop(first);
        pool.sweep();
        assert!(pool.connecting.lock().unwrap().is_empty());
    }

    #[tokio::test]
    async fn concurrent_first_connections_take_turns_on_one_lock() {
        let pool = Arc::new(Pool::default());
        let lock = pool.connecting(&key(10));
        let turn = lock.lock().await;
        let waiter = {
            let pool = pool.clone();
            tokio::spawn(async move {
                let lock = pool.connecting(&key(10));
                let _turn = lock.lock().await;
            })
        };
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        assert!(
            !waiter.is_finished(),
            "the second waits for the first's connection"
        );
        drop(turn);
        tokio::time::timeout(std::time::Duration::from_secs(5), waiter)
            .await
            .unwrap()
            .unwrap();
    }
}
