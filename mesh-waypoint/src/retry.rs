//! Whether an attempt's outcome is tried again, where, and after how long:
//! Gateway API's HTTPRoute retry (GEP-1731) over the waypoint's own retry
//! of unreachable endpoints. Decided from the outcome and what the request
//! has left; no I/O.
//!
//! Without a retry rule, only an endpoint that could not be reached is
//! left for another one (nothing was sent), up to `CONNECT_ATTEMPTS`
//! endpoints. A rule (`codes`, `attempts`, `backoff`) adds, while its
//! retries last: a response whose status is one of `codes`, a reset
//! before the response head and an attempt past its `backendRequest`
//! timeout (as Envoy's `retriable-status-codes`, `reset`,
//! `connect-failure` and per-try timeout do), each after a backoff and
//! never past the request's own timeout. Such a rule only applies to a
//! request whose body was kept whole (`body`): another attempt needs it
//! again.
use std::{net::SocketAddr, time::Duration};

use http::StatusCode;
use mesh_route::compile::Retry;

/// Endpoints a request is tried on when they cannot be reached, whatever
/// the route says.
pub const CONNECT_ATTEMPTS: u32 = 3;
/// Retries when a rule gives no `attempts` (Istio's default).
pub const DEFAULT_RETRIES: u32 = 2;
/// Retries a rule may ask for: one request never becomes more than
/// `1 + MAX_RETRIES` upstream requests.
pub const MAX_RETRIES: u32 = 10;
/// The wait before the first retry when a rule gives no `backoff`
/// (Envoy's base retry interval).
pub const DEFAULT_BACKOFF: Duration = Duration::from_millis(25);
/// Waits grow twofold per retry up to this many times the first one.
const BACKOFF_CAP: u32 = 10;
/// No wait is longer: a rule whose backoff asks for more gets no retry
/// rather than an early one, and no request is held for hours by a rule.
pub const MAX_WAIT: Duration = Duration::from_secs(60);

/// A route rule's retry, ready to decide with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    codes: Vec<StatusCode>,
    retries: u32,
    backoff: Duration,
}

impl Policy {
    pub fn new(rule: &Retry) -> Self {
        Self {
            codes: rule.codes.clone(),
            retries: rule.attempts.unwrap_or(DEFAULT_RETRIES).min(MAX_RETRIES),
            backoff: rule.backoff.unwrap_or(DEFAULT_BACKOFF),
        }
    }
}

/// How one attempt ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// A response head with this status.
    Status(StatusCode),
    /// The endpoint could not be reached; nothing was sent.
    ConnectFailed,
    /// Reset after (part of) the request was sent, before a response head.
    Reset,
    /// No response head within the attempt's own timeout
    /// (`backendRequest`), with time left on the request's.
    TimedOut,
}

impl Outcome {
    /// The metric label of a retry made for this outcome.
    pub fn label(self) -> &'static str {
        match self {
            Outcome::Status(_) => "status",
            Outcome::ConnectFailed => "connect_failure",
            Outcome::Reset => "reset",
            Outcome::TimedOut => "timeout",
        }
    }
}

/// What the request has done so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Done {
    /// Attempts made, the one that just ended included.
    pub attempts: u32,
    /// Whether an endpoint has not been tried yet.
    pub untried: bool,
    /// Time left before the request's timeout, if it has one.
    pub left: Option<Duration>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// The outcome is the request's: its response, or the failure's answer.
    Deliver,
    /// Another attempt, after this wait.
    Retry { after: Duration },
    /// Retriable, but the rule's retries are spent: the outcome is the
    /// request's, flagged `URX`.
    Exhausted,
}

/// What follows an attempt that ended with `outcome`. `roll` is a uniform
/// random number, for the backoff's jitter.
pub fn next(policy: Option<&Policy>, outcome: Outcome, done: Done, roll: u32) -> Next {
    let retriable = match outcome {
        Outcome::Status(s) => policy.is_some_and(|p| p.codes.contains(&s)),
        Outcome::ConnectFailed => true,
        Outcome::Reset | Outcome::TimedOut => policy.is_some(),
    };
    if !retriable {
        return Next::Deliver;
    }
    if outcome == Outcome::ConnectFailed && done.attempts < CONNECT_ATTEMPTS && done.untried {
        // Another endpoint at once: this one never saw the request.
        return Next::Retry {
            after: Duration::ZERO,
        };
    }
    let Some(policy) = policy else {
        return Next::Deliver;
    };
    // `attempts - 1` retries made so far.
    if done.attempts > policy.retries {
        return Next::Exhausted;
    }
    let after = backoff(policy.backoff, done.attempts, roll);
    if after > MAX_WAIT || done.left.is_some_and(|left| after >= left) {
        // The retry could not finish within the request's timeout.
        return Next::Deliver;
    }
    Next::Retry { after }
}

/// The wait before retry number `retry` (from 1): `base`, doubled for each
/// retry after the first up to `BACKOFF_CAP` times `base`, plus up to half
/// of that again at random so that requests failed together do not come
/// back together. Never less than `base`, as GEP-1731 requires.
pub fn backoff(base: Duration, retry: u32, roll: u32) -> Duration {
    let doublings = retry.saturating_sub(1).min(31);
    let interval = base
        .saturating_mul(1u32 << doublings)
        .min(base.saturating_mul(BACKOFF_CAP));
    let half = interval / 2;
    let jitter = half.mul_f64(f64::from(roll) / (f64::from(u32::MAX) + 1.0));
    interval.saturating_add(jitter)
}

/// The endpoints the next attempt should not go to: every one tried, while
/// some have not been; once all have, only the last (a retry goes to
/// another endpoint whenever there is another).
pub fn avoid<'a>(endpoints: &[SocketAddr], tried: &'a [SocketAddr]) -> &'a [SocketAddr] {
    if endpoints.iter().any(|e| !tried.contains(e)) {
        tried
    } else if endpoints.len() > 1 {
        tried.last().map_or(&[], std::slice::from_ref)
    } else {
        &[]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(codes: &[u16], attempts: Option<u32>, backoff: Option<u64>) -> Policy {
        Policy::new(&Retry {
            codes: codes
                .iter()
                .map(|c| StatusCode::from_u16(*c).unwrap())
                .collect(),
            attempts,
            backoff: backoff.map(Duration::from_millis),
        })
    }

    fn done(attempts: u32) -> Done {
        Done {
            attempts,
            untried: true,
            left: None,
        }
    }

    const S503: Outcome = Outcome::Status(StatusCode::SERVICE_UNAVAILABLE);

    #[test]
    fn a_listed_status_is_retried_until_the_attempts_are_spent() {
        let p = policy(&[503], Some(3), Some(100));
        for attempts in 1..=3 {
            assert!(
                matches!(next(Some(&p), S503, done(attempts), 0), Next::Retry { .. }),
                "attempt {attempts}"
            );
        }
        // Three retries made: the fourth response is the request's.
        assert_eq!(next(Some(&p), S503, done(4), 0), Next::Exhausted);
    }

    #[test]
    fn an_unlisted_status_or_no_rule_delivers() {
        let p = policy(&[503], Some(3), None);
        let ok = Outcome::Status(StatusCode::OK);
        let s500 = Outcome::Status(StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(next(Some(&p), ok, done(1), 0), Next::Deliver);
        assert_eq!(next(Some(&p), s500, done(1), 0), Next::Deliver);
        assert_eq!(next(None, S503, done(1), 0), Next::Deliver);
        // Without a rule, nothing sent may not be sent again.
        assert_eq!(next(None, Outcome::Reset, done(1), 0), Next::Deliver);
        assert_eq!(next(None, Outcome::TimedOut, done(1), 0), Next::Deliver);
    }

    #[test]
    fn a_rule_with_no_codes_still_retries_connection_errors() {
        let p = policy(&[], Some(1), None);
        for o in [Outcome::Reset, Outcome::TimedOut] {
            assert!(matches!(next(Some(&p), o, done(1), 0), Next::Retry { .. }));
            assert_eq!(next(Some(&p), o, done(2), 0), Next::Exhausted);
        }
        assert_eq!(next(Some(&p), S503, done(1), 0), Next::Deliver);
    }

    #[test]
    fn an_unreachable_endpoint_is_left_for_another_at_once_with_or_without_a_rule() {
        let retry_now = Next::Retry {
            after: Duration::ZERO,
        };
        for p in [None, Some(policy(&[], Some(0), None))] {
            let p = p.as_ref();
            assert_eq!(next(p, Outcome::ConnectFailed, done(1), 0), retry_now);
            assert_eq!(next(p, Outcome::ConnectFailed, done(2), 0), retry_now);
        }
        // Without a rule: three endpoints, or all there are, then UF.
        assert_eq!(
            next(None, Outcome::ConnectFailed, done(3), 0),
            Next::Deliver
        );
        let all_tried = Done {
            untried: false,
            ..done(1)
        };
        assert_eq!(
            next(None, Outcome::ConnectFailed, all_tried, 0),
            Next::Deliver
        );
        // A rule's retries go on past that, with its backoff.
        let p = policy(&[], Some(4), Some(10));
        assert!(matches!(
            next(Some(&p), Outcome::ConnectFailed, all_tried, 0),
            Next::Retry { after } if after >= Duration::from_millis(10)
        ));
        assert_eq!(
            next(Some(&p), Outcome::ConnectFailed, done(5), 0),
            Next::Exhausted
        );
        // A rule of no retries: spent once the endpoints are.
        let p = policy(&[503], Some(0), None);
        assert_eq!(
            next(Some(&p), Outcome::ConnectFailed, all_tried, 0),
            Next::Exhausted
        );
        assert_eq!(next(Some(&p), S503, done(1), 0), Next::Exhausted);
    }

    #[test]
    fn no_retry_starts_that_the_request_timeout_would_cut() {
        let p = policy(&[503], Some(5), Some(100));
        let left = |ms| Done {
            left: Some(Duration::from_millis(ms)),
            ..done(1)
        };
        assert_eq!(next(Some(&p), S503, left(100), 0), Next::Deliver);
        assert_eq!(next(Some(&p), S503, left(0), 0), Next::Deliver);
        // Nor one that would wait longer than a minute.
        let slow = policy(&[503], Some(5), Some(61_000));
        assert_eq!(next(Some(&slow), S503, done(1), 0), Next::Deliver);
        assert!(matches!(
            next(Some(&p), S503, left(500), u32::MAX),
            Next::Retry { after } if after < Duration::from_millis(500)
        ));
    }

    #[test]
    fn defaults_and_the_cap_on_retries() {
        let p = policy(&[503], None, None);
        assert_eq!(p.retries, DEFAULT_RETRIES);
        assert_eq!(p.backoff, DEFAULT_BACKOFF);
        let p = policy(&[503], Some(1_000_000), None);
        assert_eq!(p.retries, MAX_RETRIES);
        assert_eq!(
            next(Some(&p), S503, done(MAX_RETRIES + 1), 0),
            Next::Exhausted
        );
    }

    #[test]
    fn backoff_starts_at_the_base_doubles_and_is_capped() {
        let base = Duration::from_millis(100);
        let ms = |d: Duration| d.as_millis();
        assert_eq!(ms(backoff(base, 1, 0)), 100);
        assert_eq!(ms(backoff(base, 2, 0)), 200);
        assert_eq!(ms(backoff(base, 3, 0)), 400);
        assert_eq!(ms(backoff(base, 5, 0)), 1000, "capped at ten times");
        assert_eq!(ms(backoff(base, 40, 0)), 1000);
        // Jitter adds up to half, never less than the interval.
        let most = backoff(base, 1, u32::MAX);
        assert!(most > Duration::from_millis(149) && most <= Duration::from_millis(150));
        assert_eq!(ms(backoff(base, 1, 1 << 31)), 125);
        assert_eq!(backoff(Duration::ZERO, 3, u32::MAX), Duration::ZERO);
        // A huge base saturates instead of overflowing.
        assert_eq!(backoff(Duration::MAX, 9, u32::MAX), Duration::MAX);
    }

    #[test]
    fn a_retry_avoids_what_was_tried_then_the_last_one() {
        let e: Vec<SocketAddr> = (1..=3)
            .map(|i| SocketAddr::from(([10, 0, 0, i], 80)))
            .collect();
        assert_eq!(avoid(&e, &[]), &[] as &[SocketAddr]);
        assert_eq!(avoid(&e, &e[..2]), &e[..2]);
        // All tried: anything but the last.
        let tried = [e[0], e[2], e[1]];
        assert_eq!(avoid(&e, &tried), &[e[1]]);
        // A single endpoint is tried again.
        assert_eq!(avoid(&e[..1], &e[..1]), &[] as &[SocketAddr]);
    }
}
