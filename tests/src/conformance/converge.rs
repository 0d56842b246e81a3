//! The suite's eventual consistency (`http.AwaitConvergence`, with
//! `config.DefaultTimeoutConfig`): a configuration change takes a while
//! to reach the data plane, so each expectation is retried until it holds
//! several times in a row, within a bound.
use std::time::{Duration, Instant};

/// How long and how hard to try.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timing {
    /// Successes in a row that make the expectation hold
    /// (`RequiredConsecutiveSuccesses`).
    pub consecutive: u32,
    /// Pause after a failure (`DefaultPollInterval`); a success is
    /// followed by the next try at once.
    pub poll: Duration,
    /// Give up after this (`MaxTimeToConsistency`).
    pub max: Duration,
}

/// The suite's defaults: 3 in a row, 100 ms after a failure, 30 s.
pub const DEFAULT: Timing = Timing {
    consecutive: 3,
    poll: Duration::from_millis(100),
    max: Duration::from_secs(30),
};

/// An expectation that never held `consecutive` times in a row in time.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "not {consecutive} successes in a row within {max:?} ({tries} tries, {successes} succeeded); last failure:\n{last}"
)]
pub struct NotConverged {
    pub consecutive: u32,
    pub max: Duration,
    pub tries: u32,
    pub successes: u32,
    pub last: String,
}

/// Calls `attempt` until it has succeeded `timing.consecutive` times in a
/// row; a failure resets the count and waits `timing.poll`. Fails, with
/// the last failure, once `timing.max` has passed.
pub fn await_convergence(
    timing: Timing,
    mut attempt: impl FnMut() -> Result<(), String>,
) -> Result<(), NotConverged> {
    let start = Instant::now();
    let (mut tries, mut successes, mut in_a_row) = (0, 0, 0);
    let mut last = String::from("(no failure)");
    loop {
        if start.elapsed() > timing.max {
            return Err(NotConverged {
                consecutive: timing.consecutive,
                max: timing.max,
                tries,
                successes,
                last,
            });
        }
        tries += 1;
        match attempt() {
            Ok(()) => {
                successes += 1;
                in_a_row += 1;
                if in_a_row >= timing.consecutive {
                    return Ok(());
                }
            }
            Err(e) => {
                in_a_row = 0;
                last = e;
                std::thread::sleep(timing.poll);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const QUICK: Timing = Timing {
        consecutive: 3,
        poll: Duration::from_millis(1),
        max: Duration::from_secs(5),
    };

    #[test]
    fn holds_once_it_succeeds_the_required_times_in_a_row() {
        // fail, ok, fail, ok, ok, ok: the failure in between resets the count.
        let script = [false, true, false, true, true, true, false];
        let mut calls = 0;
        let r = await_convergence(QUICK, || {
            calls += 1;
            if script[calls - 1] {
                Ok(())
            } else {
                Err(format!("try {calls}"))
            }
        });
        assert_eq!(r, Ok(()));
        assert_eq!(calls, 6);
    }

    #[test]
    fn gives_up_after_the_bound_with_the_last_failure() {
        let timing = Timing {
            max: Duration::from_millis(30),
            ..QUICK
        };
        let mut calls = 0;
        let e = await_convergence(timing, || {
            calls += 1;
            if calls % 2 == 0 {
                Ok(())
            } else {
                Err(format!("try {calls}"))
            }
        })
        .unwrap_err();
        assert!(e.tries >= 2, "{e}");
        assert_eq!(e.last, format!("try {}", e.tries - (e.tries + 1) % 2));
        assert!(e.to_string().contains("3 successes in a row"), "{e}");
    }
}
