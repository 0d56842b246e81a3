//! The suite's check of a weighted split
//! (conformance/utils/weight/weight.go): one batch of requests, each
//! answer's pod cut back to its Deployment's name, and every backend's
//! share within an absolute tolerance of its weight's.
use std::collections::BTreeMap;

/// Requests in one batch (`totalRequests`).
pub const REQUESTS: u32 = 500;
/// Allowed distance between a backend's share and its weight's, as a
/// fraction of all requests (`tolerancePercentage`).
pub const TOLERANCE: f64 = 0.05;
/// Batches tried before the case fails (`MaxTestRetries`): with 70/30 and
/// 500 requests one batch misses the bound about 1.5 % of the time.
pub const TRIES: u32 = 10;

/// The Deployment a pod belongs to: its name without the last two `-`
/// parts (template hash, pod hash); a shorter name is kept whole.
pub fn backend_of(pod: &str) -> &str {
    if pod.split('-').count() < 3 {
        return pod;
    }
    let mut cut = pod;
    for _ in 0..2 {
        cut = cut.rsplit_once('-').map_or(cut, |(rest, _)| rest);
    }
    cut
}

/// How many answers each backend gave.
pub type Counts = BTreeMap<String, u32>;

/// Checks one batch's answering pods against `expected` (backend → share
/// of all requests). Every answer must come from an expected backend;
/// exactly the backends with a share above 0 must have answered; each
/// share within [`TOLERANCE`]. On failure, every problem, sorted.
pub fn check(pods: &[&str], expected: &[(&str, f64)]) -> Result<Counts, String> {
    let total = pods.len() as f64;
    let mut seen = Counts::new();
    for pod in pods {
        let backend = backend_of(pod);
        if !expected.iter().any(|(b, _)| *b == backend) {
            return Err(format!(
                "request was handled by an unexpected pod {pod:?} (backend {backend:?})"
            ));
        }
        *seen.entry(backend.to_owned()).or_default() += 1;
    }
    let mut problems = Vec::new();
    let active = expected.iter().filter(|(_, w)| *w > 0.0).count();
    if seen.len() != active {
        problems.push(format!(
            "expected {active} backends to receive traffic, but got {}",
            seen.len()
        ));
    }
    for (backend, want) in expected {
        let got = seen.get(*backend).copied();
        if got.is_none() && *want != 0.0 {
            problems.push(format!(
                "expect traffic to hit backend {backend:?} - but none was received"
            ));
            continue;
        }
        let share = f64::from(got.unwrap_or(0)) / total;
        if (share - want).abs() > TOLERANCE {
            problems.push(format!(
                "backend {backend:?} weighted traffic of {share} not within tolerance {want} (+/-{TOLERANCE})"
            ));
        }
    }
    problems.sort();
    if problems.is_empty() {
        Ok(seen)
    } else {
        Err(format!("{}; counts {seen:?}", problems.join("; ")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pod_name_is_cut_back_to_its_deployment() {
        assert_eq!(backend_of("echo-v1-bcdfghjklm-npqrs"), "echo-v1");
        assert_eq!(backend_of("echo-x-y"), "echo");
        assert_eq!(backend_of("a-b"), "a-b");
        assert_eq!(backend_of("plain"), "plain");
    }

    fn batch(v1: usize, v2: usize, other: usize) -> Vec<&'static str> {
        let mut pods = vec!["echo-v1-bcdfghjklm-npqrs"; v1];
        pods.extend(vec!["echo-v2-bcdfghjklm-npqrs"; v2]);
        pods.extend(vec!["echo-v3-bcdfghjklm-npqrs"; other]);
        pods
    }

    const SPLIT: [(&str, f64); 2] = [("echo-v1", 0.7), ("echo-v2", 0.3)];

    #[test]
    fn shares_within_the_tolerance_pass_and_outside_fail() {
        let counts = check(&batch(350, 150, 0), &SPLIT).unwrap();
        assert_eq!(counts["echo-v1"], 350);
        // Just inside the bound; 0.75 would be at it, where float
        // arithmetic (upstream's too) puts 0.75 - 0.7 a hair above 0.05.
        assert!(check(&batch(374, 126, 0), &SPLIT).is_ok());
        let e = check(&batch(380, 120, 0), &SPLIT).unwrap_err();
        assert!(e.contains("\"echo-v1\" weighted traffic of 0.76"), "{e}");
        assert!(e.contains("\"echo-v2\" weighted traffic of 0.24"), "{e}");
    }

    #[test]
    fn an_unexpected_backend_or_a_silent_one_fails() {
        let e = check(&batch(350, 149, 1), &SPLIT).unwrap_err();
        assert!(e.contains("unexpected pod"), "{e}");
        let e = check(&batch(500, 0, 0), &SPLIT).unwrap_err();
        assert!(
            e.contains("expected 2 backends to receive traffic, but got 1"),
            "{e}"
        );
        assert!(e.contains("none was received"), "{e}");
        // A weight of 0 expects no traffic and gets none.
        let zero = [("echo-v1", 1.0), ("echo-v2", 0.0)];
        assert!(check(&batch(500, 0, 0), &zero).is_ok());
    }
}
