//! Whether a new connection may be held at all: caps on the connections
//! the agent holds in total and per source address. Past a cap the new
//! connection is shed (refused) and those already open are kept, as Envoy's
//! overload manager and its per-listener connection limits do; the refusal
//! is counted and logged at most once a second per listener, so a flood
//! cannot turn into a flood of log lines.
use std::{
    collections::HashMap,
    net::IpAddr,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

/// Why a connection was not admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Shed {
    #[error("the agent holds its limit of {0} connections (AgentConfig.limits.maxConnections)")]
    Total(usize),
    #[error(
        "this source holds its limit of {0} connections (AgentConfig.limits.maxConnectionsPerSource)"
    )]
    PerSource(usize),
}

impl Shed {
    pub fn label(self) -> &'static str {
        match self {
            Shed::Total(_) => "total",
            Shed::PerSource(_) => "per_source",
        }
    }
}

/// A source address as one pod's listeners see it: the same client may
/// hold its cap at each pod of the node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Source {
    pub netns_cookie: u64,
    pub ip: IpAddr,
}

impl Source {
    pub fn new(netns_cookie: u64, ip: IpAddr) -> Self {
        Self {
            netns_cookie,
            ip: ip.to_canonical(),
        }
    }
}

#[derive(Default)]
struct Counts {
    total: usize,
    by_source: HashMap<Source, usize>,
}

/// Counts held connections; a [`Admitted`] gives its place back on drop.
pub struct Admission {
    max_total: usize,
    max_per_source: usize,
    counts: Mutex<Counts>,
    last_log: Mutex<Option<Instant>>,
}

/// One admitted connection's place.
pub struct Admitted {
    admission: Arc<Admission>,
    source: Option<Source>,
}

impl Drop for Admitted {
    fn drop(&mut self) {
        let mut counts = self.admission.counts.lock().unwrap();
        counts.total -= 1;
        if let Some(source) = &self.source
            && let Some(n) = counts.by_source.get_mut(source)
        {
            *n -= 1;
            if *n == 0 {
                counts.by_source.remove(source);
            }
        }
    }
}

/// A shed connection is logged at most this often.
const LOG_EVERY: Duration = Duration::from_secs(1);

impl Admission {
    pub fn new(max_total: usize, max_per_source: usize) -> Arc<Self> {
        Arc::new(Self {
            max_total,
            max_per_source,
            counts: Mutex::default(),
            last_log: Mutex::default(),
        })
    }

    /// A place for a connection from `source`, or why there is none.
    /// `None`: only the total cap applies (an enrolled pod's own outbound
    /// connections, which all come from loopback).
    pub fn admit(self: &Arc<Self>, source: Option<Source>) -> Result<Admitted, Shed> {
        let mut counts = self.counts.lock().unwrap();
        if counts.total >= self.max_total {
            return Err(Shed::Total(self.max_total));
        }
        if let Some(source) = source {
            let held = counts.by_source.entry(source).or_default();
            if *held >= self.max_per_source {
                return Err(Shed::PerSource(self.max_per_source));
            }
            *held += 1;
        }
        counts.total += 1;
        Ok(Admitted {
            admission: self.clone(),
            source,
        })
    }

    /// Connections held now.
    pub fn held(&self) -> usize {
        self.counts.lock().unwrap().total
    }

    /// True at most once per [`LOG_EVERY`]: whether to log this shed.
    pub fn should_log(&self) -> bool {
        let mut last = self.last_log.lock().unwrap();
        let now = Instant::now();
        if last.is_some_and(|t| now.duration_since(t) < LOG_EVERY) {
            return false;
        }
        *last = Some(now);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(last: u8) -> Option<Source> {
        Some(Source::new(1, IpAddr::from([10, 0, 0, last])))
    }

    #[test]
    fn a_source_at_its_cap_is_shed_and_others_are_not() {
        let a = Admission::new(10, 2);
        let _one = a.admit(ip(1)).unwrap();
        let two = a.admit(ip(1)).unwrap();
        assert_eq!(a.admit(ip(1)).err(), Some(Shed::PerSource(2)));
        let _other = a.admit(ip(2)).unwrap();
        drop(two);
        assert!(a.admit(ip(1)).is_ok(), "a place given back is free again");
    }

    #[test]
    fn the_total_cap_holds_across_sources_and_places_come_back() {
        let a = Admission::new(2, 5);
        let one = a.admit(ip(1)).unwrap();
        let _two = a.admit(ip(2)).unwrap();
        assert_eq!(a.admit(ip(3)).err(), Some(Shed::Total(2)));
        assert_eq!(a.held(), 2);
        drop(one);
        assert_eq!(a.held(), 1);
        assert!(a.admit(ip(3)).is_ok());
    }

    #[test]
    fn v4_mapped_sources_count_as_their_v4_address() {
        let a = Admission::new(10, 1);
        let _v4 = a.admit(ip(1)).unwrap();
        let mapped: IpAddr = "::ffff:10.0.0.1".parse().unwrap();
        assert_eq!(
            a.admit(Some(Source::new(1, mapped))).err(),
            Some(Shed::PerSource(1))
        );
    }

    #[test]
    fn the_same_source_has_its_own_cap_at_each_pod_and_none_without_a_source() {
        let a = Admission::new(10, 1);
        let _at_one = a.admit(ip(1)).unwrap();
        let at_two = Some(Source::new(2, IpAddr::from([10, 0, 0, 1])));
        let _there = a.admit(at_two).unwrap();
        let _plain = a.admit(None).unwrap();
        let _more = a.admit(None).unwrap();
        assert_eq!(a.held(), 4);
    }

    #[test]
    fn shed_lines_are_rate_limited() {
        let a = Admission::new(1, 1);
        assert!(a.should_log());
        assert!(!a.should_log());
    }
}
