//! Outlier detection, as Envoy does it for a DestinationRule's
//! `outlierDetection`: an endpoint that answers `consecutive5xxErrors` 5xx
//! in a row (or `consecutiveGatewayErrors` 502/503/504 in a row; a connect
//! failure, reset or timeout counts as both) is ejected for
//! `baseEjectionTime` × the number of times it has been ejected, and gets
//! no request until then. Each `interval` an endpoint spends not ejected
//! takes one off that number. At most `maxEjectionPercent` of the
//! endpoints are ejected at once, though always at least one may be; when
//! fewer than `minHealthPercent` of them are left, ejections are ignored
//! and every endpoint is used (Envoy's panic threshold).
//!
//! A pure state machine per Service port: the clock is passed in.
use std::{
    collections::HashMap,
    net::SocketAddr,
    time::{Duration, Instant},
};

use mesh_discovery::destination_rule::OutlierDetection;

/// Envoy's `max_ejection_time` default: an ejection never lasts longer
/// (unless the base alone is longer).
pub const MAX_EJECTION: Duration = Duration::from_secs(300);
/// Endpoints tracked per Service port at most; past it, the states of
/// endpoints not ejected are forgotten first.
pub const MAX_ENDPOINTS: usize = 4096;

/// What one attempt to an endpoint met.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// A response head with this status.
    Status(u16),
    /// No response: could not connect, reset, or timed out.
    LocalFailure,
}

impl Outcome {
    fn is_5xx(self) -> bool {
        match self {
            Outcome::Status(s) => s >= 500,
            Outcome::LocalFailure => true,
        }
    }

    fn is_gateway_error(self) -> bool {
        match self {
            Outcome::Status(s) => matches!(s, 502..=504),
            Outcome::LocalFailure => true,
        }
    }
}

impl From<crate::retry::Outcome> for Outcome {
    fn from(o: crate::retry::Outcome) -> Self {
        match o {
            crate::retry::Outcome::Status(s) => Outcome::Status(s.as_u16()),
            crate::retry::Outcome::ConnectFailed
            | crate::retry::Outcome::Reset
            | crate::retry::Outcome::TimedOut => Outcome::LocalFailure,
        }
    }
}

/// An ejection that just began.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ejection {
    pub until: Instant,
    /// How many times the endpoint has now been ejected (the multiplier).
    pub times: u32,
}

#[derive(Debug, Clone, Default)]
struct Endpoint {
    consecutive_5xx: u32,
    consecutive_gateway: u32,
    ejected_until: Option<Instant>,
    /// The ejection multiplier.
    ejections: u32,
    /// Since when the multiplier has been decaying.
    decay_from: Option<Instant>,
}

impl Endpoint {
    fn is_ejected(&self, now: Instant) -> bool {
        self.ejected_until.is_some_and(|t| now < t)
    }

    /// Ends a finished ejection and decays the multiplier by one per
    /// `interval` spent since, not ejected.
    fn settle(&mut self, interval: Duration, now: Instant) {
        if self.is_ejected(now) {
            return;
        }
        if let Some(until) = self.ejected_until.take() {
            self.decay_from = Some(until);
        }
        let Some(from) = self.decay_from else {
            return;
        };
        let interval = interval.max(Duration::from_millis(1));
        let steps = now.saturating_duration_since(from).as_nanos() / interval.as_nanos();
        if steps == 0 {
            return;
        }
        let steps = u32::try_from(steps).unwrap_or(u32::MAX);
        self.ejections = self.ejections.saturating_sub(steps);
        self.decay_from = if self.ejections == 0 {
            None
        } else {
            Some(from + interval * steps)
        };
    }
}

/// The endpoints a request may go to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Usable {
    pub endpoints: Vec<SocketAddr>,
    /// Too few endpoints are left: ejections are ignored.
    pub panic: bool,
}

/// The outlier state of one Service port's endpoints.
#[derive(Debug, Default)]
pub struct Detector {
    endpoints: HashMap<SocketAddr, Endpoint>,
}

impl Detector {
    /// Whether `addr` is ejected at `now`.
    pub fn is_ejected(&self, addr: &SocketAddr, now: Instant) -> bool {
        self.endpoints.get(addr).is_some_and(|e| e.is_ejected(now))
    }

    fn ejected_among(&self, endpoints: &[SocketAddr], now: Instant) -> usize {
        endpoints.iter().filter(|a| self.is_ejected(a, now)).count()
    }

    /// Which of `endpoints` requests may go to at `now`.
    pub fn usable(
        &self,
        config: &OutlierDetection,
        endpoints: &[SocketAddr],
        now: Instant,
    ) -> Usable {
        let healthy: Vec<SocketAddr> = endpoints
            .iter()
            .filter(|a| !self.is_ejected(a, now))
            .copied()
            .collect();
        // healthy / total < min% , in integers.
        let panic = healthy.len() < endpoints.len()
            && healthy.len() * 100 < endpoints.len() * usize::from(config.min_health_percent);
        if panic {
            Usable {
                endpoints: endpoints.to_vec(),
                panic: true,
            }
        } else {
            Usable {
                endpoints: healthy,
                panic: false,
            }
        }
    }

    /// Counts what an attempt to `addr` (one of `endpoints`, the Service
    /// port's endpoints now) met at `now`; the ejection it started, if any.
    pub fn observe(
        &mut self,
        config: &OutlierDetection,
        endpoints: &[SocketAddr],
        addr: SocketAddr,
        outcome: Outcome,
        now: Instant,
    ) -> Option<Ejection> {
        self.bound(endpoints, now);
        let ejected_now = self.ejected_among(endpoints, now);
        let state = self.endpoints.entry(addr).or_default();
        state.settle(config.interval, now);
        if state.is_ejected(now) {
            // An answer to a request sent before the ejection.
            return None;
        }
        if !outcome.is_5xx() {
            state.consecutive_5xx = 0;
            state.consecutive_gateway = 0;
            return None;
        }
        state.consecutive_5xx = state.consecutive_5xx.saturating_add(1);
        if outcome.is_gateway_error() {
            state.consecutive_gateway = state.consecutive_gateway.saturating_add(1);
        } else {
            state.consecutive_gateway = 0;
        }
        let reached = |count: u32, threshold: Option<std::num::NonZeroU32>| {
            threshold.is_some_and(|t| count >= t.get())
        };
        if !reached(state.consecutive_5xx, config.consecutive_5xx)
            && !reached(state.consecutive_gateway, config.consecutive_gateway)
        {
            return None;
        }
        state.consecutive_5xx = 0;
        state.consecutive_gateway = 0;
        let total = endpoints.len().max(1);
        let allowed = ejected_now == 0
            || (ejected_now + 1) * 100 <= total * usize::from(config.max_ejection_percent);
        if !allowed {
            return None;
        }
        state.ejections = state.ejections.saturating_add(1);
        let length = config
            .base_ejection
            .saturating_mul(state.ejections)
            .min(MAX_EJECTION.max(config.base_ejection));
        let until = now + length;
        state.ejected_until = Some(until);
        state.decay_from = None;
        Some(Ejection {
            until,
            times: state.ejections,
        })
    }

    /// Forgets endpoints that left the Service and have nothing to
    /// remember, and keeps the map bounded.
    fn bound(&mut self, endpoints: &[SocketAddr], now: Instant) {
        if self.endpoints.len() < MAX_ENDPOINTS {
            return;
        }
        self.endpoints
            .retain(|a, e| endpoints.contains(a) || e.is_ejected(now));
        if self.endpoints.len() >= MAX_ENDPOINTS {
            self.endpoints.retain(|_, e| e.is_ejected(now));
        }
    }

    /// Endpoints ejected at `now`, for `mesh inspect` and logs.
    pub fn ejected(&self, now: Instant) -> Vec<SocketAddr> {
        let mut out: Vec<SocketAddr> = self
            .endpoints
            .iter()
            .filter(|(_, e)| e.is_ejected(now))
            .map(|(a, _)| *a)
            .collect();
        out.sort();
        out
    }
}

#[cfg(test)]
mod tests {
    use std::num::NonZeroU32;

    use super::*;

    fn config() -> OutlierDetection {
        OutlierDetection {
            consecutive_5xx: NonZeroU32::new(3),
            consecutive_gateway: None,
            interval: Duration::from_secs(1),
            base_ejection: Duration::from_secs(10),
            max_ejection_percent: 50,
            min_health_percent: 0,
        }
    }

    fn eps(n: u8) -> Vec<SocketAddr> {
        (1..=n)
            .map(|i| SocketAddr::from(([10, 0, 0, i], 80)))
            .collect()
    }

    const S500: Outcome = Outcome::Status(500);

    #[test]
    fn consecutive_5xx_eject_and_a_success_between_resets_the_count() {
        let (c, e, t0) = (config(), eps(2), Instant::now());
        let mut d = Detector::default();
        assert_eq!(d.observe(&c, &e, e[0], S500, t0), None);
        assert_eq!(d.observe(&c, &e, e[0], S500, t0), None);
        assert_eq!(d.observe(&c, &e, e[0], Outcome::Status(404), t0), None);
        assert_eq!(d.observe(&c, &e, e[0], S500, t0), None);
        assert_eq!(d.observe(&c, &e, e[0], Outcome::LocalFailure, t0), None);
        let ej = d.observe(&c, &e, e[0], S500, t0).unwrap();
        assert_eq!(ej.times, 1);
        assert_eq!(ej.until, t0 + Duration::from_secs(10));
        assert_eq!(d.usable(&c, &e, t0).endpoints, [e[1]]);
        assert_eq!(d.ejected(t0), [e[0]]);
        // Back at the end of the ejection.
        let later = t0 + Duration::from_secs(10);
        assert_eq!(d.usable(&c, &e, later).endpoints, e);
    }

    #[test]
    fn each_ejection_lasts_longer_and_time_healthy_decays_the_multiplier() {
        let (c, e, t0) = (config(), eps(2), Instant::now());
        let mut d = Detector::default();
        let eject =
            |d: &mut Detector, at: Instant| (0..3).find_map(|_| d.observe(&c, &e, e[0], S500, at));
        assert_eq!(eject(&mut d, t0).unwrap().times, 1);
        let t1 = t0 + Duration::from_secs(10);
        let second = eject(&mut d, t1).unwrap();
        assert_eq!(
            (second.times, second.until),
            (2, t1 + Duration::from_secs(20))
        );
        // Ejected: its answers to earlier requests count for nothing.
        assert_eq!(d.observe(&c, &e, e[0], S500, t1), None);
        // 20 s back, then 1 interval healthy takes the multiplier to 1, so
        // the next ejection is 2 × 10 s again, not 3 ×.
        let t2 = t1 + Duration::from_secs(20) + Duration::from_millis(1500);
        assert_eq!(eject(&mut d, t2).unwrap().times, 2);
        // Long healthy: back to the base.
        let t3 = t2 + Duration::from_secs(20) + Duration::from_secs(60);
        assert_eq!(eject(&mut d, t3).unwrap().times, 1);
    }

    #[test]
    fn gateway_errors_count_only_502_to_504_and_local_failures() {
        let c = OutlierDetection {
            consecutive_5xx: None,
            consecutive_gateway: NonZeroU32::new(2),
            ..config()
        };
        let (e, t0) = (eps(2), Instant::now());
        let mut d = Detector::default();
        assert_eq!(d.observe(&c, &e, e[0], Outcome::Status(503), t0), None);
        assert_eq!(
            d.observe(&c, &e, e[0], S500, t0),
            None,
            "500 breaks the run"
        );
        assert_eq!(d.observe(&c, &e, e[0], Outcome::Status(502), t0), None);
        assert!(d.observe(&c, &e, e[0], Outcome::LocalFailure, t0).is_some());
    }

    #[test]
    fn max_ejection_percent_bounds_ejections_but_one_may_always_go() {
        let c = OutlierDetection {
            max_ejection_percent: 10,
            ..config()
        };
        let (e, t0) = (eps(4), Instant::now());
        let mut d = Detector::default();
        let run =
            |d: &mut Detector, a: SocketAddr| (0..3).find_map(|_| d.observe(&c, &e, a, S500, t0));
        assert!(run(&mut d, e[0]).is_some(), "one, though 25 % > 10 %");
        assert!(run(&mut d, e[1]).is_none(), "a second is over 10 %");
        assert_eq!(d.usable(&c, &e, t0).endpoints, &e[1..]);
        let half = OutlierDetection {
            max_ejection_percent: 50,
            ..config()
        };
        let mut d = Detector::default();
        let run = |d: &mut Detector, a: SocketAddr| {
            (0..3).find_map(|_| d.observe(&half, &e, a, S500, t0))
        };
        assert!(run(&mut d, e[0]).is_some());
        assert!(run(&mut d, e[1]).is_some());
        assert!(run(&mut d, e[2]).is_none());
    }

    #[test]
    fn below_min_health_percent_every_endpoint_is_used() {
        let c = OutlierDetection {
            max_ejection_percent: 100,
            min_health_percent: 50,
            ..config()
        };
        let (e, t0) = (eps(4), Instant::now());
        let mut d = Detector::default();
        for a in &e[..2] {
            assert!(
                (0..3)
                    .find_map(|_| d.observe(&c, &e, *a, S500, t0))
                    .is_some()
            );
        }
        // 2 of 4 healthy: 50 %, not below.
        let u = d.usable(&c, &e, t0);
        assert_eq!((u.endpoints.len(), u.panic), (2, false));
        assert!(
            (0..3)
                .find_map(|_| d.observe(&c, &e, e[2], S500, t0))
                .is_some()
        );
        let u = d.usable(&c, &e, t0);
        assert_eq!((u.endpoints, u.panic), (e.clone(), true));
        // Without the threshold, all ejected leaves nothing (503 UH).
        let none = OutlierDetection {
            min_health_percent: 0,
            ..c
        };
        assert!(
            (0..3)
                .find_map(|_| d.observe(&none, &e, e[3], S500, t0))
                .is_some()
        );
        assert!(d.usable(&none, &e, t0).endpoints.is_empty());
    }
}
