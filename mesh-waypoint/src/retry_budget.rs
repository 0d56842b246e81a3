//! Retry budgets: how many retries a destination Service may be sent, so
//! that a Service failing every request does not get each request
//! `1 + attempts` times (a retry storm). Linkerd's semantics: every
//! original request deposits, every retry withdraws, and a retry is made
//! only while the retries of the last `ttl` stay within `ratio` of the
//! requests of the same `ttl`, plus a floor of `min_per_second × ttl`
//! retries that lets a Service with little traffic still be retried.
//!
//! The window slides in `SLOTS` steps of `ttl / SLOTS`. The clock is the
//! caller's (`Instant`s passed in), so the arithmetic is tested without
//! waiting.
use std::{
    collections::HashMap,
    sync::Mutex,
    time::{Duration, Instant},
};

/// Steps the window slides in: a deposit or a retry counts for between
/// `ttl - ttl / SLOTS` and `ttl`.
const SLOTS: usize = 10;
/// Services tracked at once; past it, one whose window is empty (it is as
/// if new) goes first, else the one idle longest.
pub const MAX_SERVICES: usize = 4096;

/// A budget's terms, the same for every Service.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Config {
    /// Retries allowed per thousand requests (Linkerd's `retryRatio` 0.2:
    /// 200).
    pub ratio_per_mille: u32,
    /// Retries allowed per second whatever the ratio (Linkerd's
    /// `minRetriesPerSecond`).
    pub min_per_second: u32,
    /// How long a request or a retry counts (Linkerd's `ttl`).
    pub ttl: Duration,
}

impl Default for Config {
    /// Linkerd's defaults: 20 %, 10 per second, 10 s.
    fn default() -> Self {
        Self {
            ratio_per_mille: 200,
            min_per_second: 10,
            ttl: Duration::from_secs(10),
        }
    }
}

impl Config {
    /// Retries allowed in one window whatever the requests.
    pub fn floor(&self) -> u64 {
        let millis = u64::try_from(self.ttl.as_millis()).unwrap_or(u64::MAX);
        u64::from(self.min_per_second).saturating_mul(millis) / 1000
    }

    fn slot_width(&self) -> Duration {
        // A zero ttl would make every instant its own window: one slot of
        // at least a millisecond keeps the arithmetic defined.
        (self.ttl / SLOTS as u32).max(Duration::from_millis(1))
    }
}

/// Whether a retry may be made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Withdrawal {
    /// Within the budget; the retry is counted.
    Granted,
    /// Over the budget: the outcome at hand is the request's.
    Overdrawn,
}

#[derive(Debug, Clone, Copy, Default)]
struct Slot {
    /// Which step of the clock the counts are for.
    step: u64,
    requests: u64,
    retries: u64,
}

/// One Service's counts over the last `SLOTS` steps.
#[derive(Debug, Clone, Default)]
pub struct Budget {
    slots: [Slot; SLOTS],
    /// The latest step anything was counted in.
    last: u64,
}

impl Budget {
    fn slot(&mut self, step: u64) -> &mut Slot {
        self.last = self.last.max(step);
        let slot = &mut self.slots[(step % SLOTS as u64) as usize];
        if slot.step != step {
            *slot = Slot {
                step,
                ..Slot::default()
            };
        }
        slot
    }

    /// Requests and retries counted in the window that ends at `step`.
    fn window(&self, step: u64) -> (u64, u64) {
        let oldest = step.saturating_sub(SLOTS as u64 - 1);
        self.slots
            .iter()
            .filter(|s| s.step >= oldest && s.step <= step)
            .fold((0, 0), |(q, r), s| (q + s.requests, r + s.retries))
    }

    /// An original request at `step`.
    pub fn deposit(&mut self, step: u64) {
        self.slot(step).requests += 1;
    }

    /// A retry at `step`, counted when granted.
    pub fn withdraw(&mut self, step: u64, config: &Config) -> Withdrawal {
        let (requests, retries) = self.window(step);
        // retries + 1 ≤ ratio × requests + floor, in thousandths so that
        // no rounding lets one more through.
        let allowed = requests
            .saturating_mul(u64::from(config.ratio_per_mille))
            .saturating_add(config.floor().saturating_mul(1000));
        if (retries + 1).saturating_mul(1000) > allowed {
            return Withdrawal::Overdrawn;
        }
        self.slot(step).retries += 1;
        Withdrawal::Granted
    }

    /// Whether nothing is left in the window at `step`: forgetting the
    /// budget changes no decision.
    fn is_empty_at(&self, step: u64) -> bool {
        step.saturating_sub(self.last) >= SLOTS as u64
    }
}

/// The budgets of the Services retried through the waypoint, by
/// `<namespace>/<name>`.
#[derive(Debug)]
pub struct RetryBudgets {
    config: Config,
    epoch: Instant,
    services: Mutex<HashMap<String, Budget>>,
}

impl Default for RetryBudgets {
    fn default() -> Self {
        Self::new(Config::default(), Instant::now())
    }
}

impl RetryBudgets {
    /// Budgets on `config`'s terms, their clock starting at `epoch`.
    pub fn new(config: Config, epoch: Instant) -> Self {
        Self {
            config,
            epoch,
            services: Mutex::new(HashMap::new()),
        }
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    fn step(&self, now: Instant) -> u64 {
        let since = now.saturating_duration_since(self.epoch).as_nanos();
        let width = self.config.slot_width().as_nanos();
        u64::try_from(since / width).unwrap_or(u64::MAX)
    }

    /// An original request to `service` at `now`, one its route may retry.
    pub fn deposit(&self, service: &str, now: Instant) {
        let step = self.step(now);
        self.with(service, step, |b| b.deposit(step));
    }

    /// Whether `service` may be retried at `now`; a granted retry counts.
    pub fn withdraw(&self, service: &str, now: Instant) -> Withdrawal {
        let step = self.step(now);
        let config = self.config;
        self.with(service, step, |b| b.withdraw(step, &config))
    }

    /// Services tracked now.
    pub fn tracked(&self) -> usize {
        self.services
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .len()
    }

    fn with<T>(&self, service: &str, step: u64, f: impl FnOnce(&mut Budget) -> T) -> T {
        // A panic elsewhere while holding the lock leaves counts that are
        // still counts: go on with them.
        let mut services = self.services.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(budget) = services.get_mut(service) {
            return f(budget);
        }
        if services.len() >= MAX_SERVICES {
            services.retain(|_, b| !b.is_empty_at(step));
        }
        if services.len() >= MAX_SERVICES {
            let idlest = services
                .iter()
                .min_by_key(|(_, b)| b.last)
                .map(|(k, _)| k.clone());
            if let Some(k) = idlest {
                services.remove(&k);
            }
        }
        f(services.entry(service.to_owned()).or_default())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const WEB: &str = "shop/web";

    fn budgets() -> (RetryBudgets, Instant) {
        let start = Instant::now();
        (RetryBudgets::new(Config::default(), start), start)
    }

    fn granted(b: &RetryBudgets, service: &str, now: Instant, tries: u32) -> u32 {
        (0..tries)
            .filter(|_| b.withdraw(service, now) == Withdrawal::Granted)
            .count() as u32
    }

    #[test]
    fn the_defaults_are_linkerds() {
        let c = Config::default();
        assert_eq!(c.ratio_per_mille, 200);
        assert_eq!(c.min_per_second, 10);
        assert_eq!(c.ttl, Duration::from_secs(10));
        assert_eq!(c.floor(), 100);
    }

    #[test]
    fn under_a_storm_retries_stay_within_the_ratio_plus_the_floor() {
        let (b, start) = budgets();
        let mut retries = 0;
        // 1000 requests in 5 s, each asking for 3 retries.
        for i in 0..1000u32 {
            let now = start + Duration::from_millis(u64::from(i) * 5);
            b.deposit(WEB, now);
            retries += granted(&b, WEB, now, 3);
        }
        assert_eq!(retries, 200 + 100, "20 % of 1000 plus the floor");
    }

    #[test]
    fn the_floor_lets_a_trickle_retry() {
        let (b, start) = budgets();
        // One request a second, each retried 3 times: 30 retries per
        // window, well under the floor of 100, although the ratio alone
        // would allow 2.
        for s in 0..30u64 {
            let now = start + Duration::from_secs(s);
            b.deposit(WEB, now);
            assert_eq!(granted(&b, WEB, now, 3), 3, "second {s}");
        }
    }

    #[test]
    fn with_no_request_only_the_floor_is_left() {
        let (b, start) = budgets();
        assert_eq!(granted(&b, WEB, start, 500), 100);
    }

    #[test]
    fn the_window_slides() {
        let (b, start) = budgets();
        for _ in 0..100 {
            b.deposit(WEB, start);
        }
        assert_eq!(granted(&b, WEB, start, 1000), 120);
        // Still in the window 9.9 s later: nothing more.
        assert_eq!(
            granted(&b, WEB, start + Duration::from_millis(9_900), 10),
            0
        );
        // 10 s later the requests and retries of the first step are out;
        // the floor is back, the ratio has no request left to go by.
        let later = start + Duration::from_secs(10);
        assert_eq!(granted(&b, WEB, later, 1000), 100);
        // A retry counts for the window's length too.
        assert_eq!(granted(&b, WEB, later + Duration::from_secs(5), 10), 0);
        assert_eq!(granted(&b, WEB, later + Duration::from_secs(10), 1000), 100);
    }

    #[test]
    fn services_have_budgets_of_their_own() {
        let (b, start) = budgets();
        assert_eq!(granted(&b, WEB, start, 500), 100);
        assert_eq!(granted(&b, "shop/cart", start, 500), 100);
        assert_eq!(b.tracked(), 2);
    }

    #[test]
    fn the_services_tracked_are_bounded_and_idle_ones_go_first() {
        let (b, start) = budgets();
        for i in 0..MAX_SERVICES {
            b.deposit(&format!("ns/s{i}"), start);
        }
        assert_eq!(b.tracked(), MAX_SERVICES);
        // A minute on, every budget is empty: all are forgotten at once.
        b.deposit("ns/new", start + Duration::from_secs(60));
        assert_eq!(b.tracked(), 1);
        // Full again with busy budgets: the idlest one goes.
        let (b, start) = budgets();
        b.deposit("ns/first", start);
        for i in 0..MAX_SERVICES - 1 {
            b.deposit(&format!("ns/s{i}"), start + Duration::from_secs(1));
        }
        b.deposit("ns/new", start + Duration::from_secs(2));
        assert_eq!(b.tracked(), MAX_SERVICES);
        // "ns/first" was dropped: it starts again from the floor alone.
        assert_eq!(
            granted(&b, "ns/first", start + Duration::from_secs(2), 500),
            100
        );
    }
}
