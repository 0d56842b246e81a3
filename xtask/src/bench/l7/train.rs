//! The waypoint's part of the profile-gathering run (`xtask
//! build-release`): the waypoint bench's bed and loads, briefly, through
//! instrumented waypoints, which then stop on SIGTERM and write their
//! profiles. Without it the waypoint's own code has no counts, and a
//! profiled build would treat all of it as never run.
use std::time::Duration;

use anyhow::Context;

use super::{
    bed::{L7Bed, Route},
    metric::Figures,
    observed::RuleCount,
    routes, stages,
};

/// The bed's drain on SIGTERM in training: short enough that every agent
/// and waypoint exits within the test bed's 10 s before SIGKILL, which
/// would leave no profile. How they carry load does not depend on it.
const DRAIN_GRACE: Duration = Duration::from_secs(3);

/// What the run left for the profile's checks.
pub struct Trained {
    /// The waypoints' process ids: each wrote its profile under its own
    /// id (`%p` of the profile file's pattern).
    pub waypoints: Vec<u32>,
    /// A line per load that failed, and per path that took no request;
    /// what ran still makes a profile.
    pub failures: Vec<String>,
}

/// The routes training runs: every one through a waypoint, so the plain
/// proxy path, the route tables' matching and the policies (authorization,
/// rate limit, DestinationRule) all get counts, on both waypoints.
pub fn routes_trained() -> Vec<Route> {
    Route::ALL
        .into_iter()
        .filter(|r| r.waypoint().is_some())
        .collect()
}

/// Every L7 load (HTTP/1.1 over 1 and 64 keep-alive connections, h2c with
/// 64 streams, HTTP/1.1 at the fixed rate), `secs` each, over every route
/// of [`routes_trained`]; then the waypoints and agents stop on SIGTERM.
pub fn train(secs: u32) -> anyhow::Result<Trained> {
    let mut bed = L7Bed::start_with_drain(Some(DRAIN_GRACE)).context("the L7 bed")?;
    let mut failures = Vec::new();
    for stage in stages(&[]) {
        for route in routes_trained() {
            eprintln!("pgo: training: {}, {}", stage.name(), route.label());
            let mut figures = Figures::new();
            if let Err(e) = bed.stage(route, stage, secs, &mut figures) {
                failures.push(format!("{}: {}: {e:#}", route.label(), stage.name()));
            }
        }
    }
    match bed.routed_requests() {
        Ok(taken) => failures.extend(unrouted(&taken)),
        Err(e) => failures.push(format!("the waypoint's request counts: {e:#}")),
    }
    let waypoints = bed.stop()?;
    Ok(Trained {
        waypoints,
        failures,
    })
}

/// A note when no request to web-routes was taken by one of its own
/// routes: the route tables' matching would then have no counts.
fn unrouted(taken: &[RuleCount]) -> Option<String> {
    let routed: f64 = taken
        .iter()
        // A route's name is `<namespace>/<name>`; a request no route took
        // has none (or `default`).
        .filter(|c| c.route.contains('/'))
        .map(|c| c.requests)
        .sum();
    (routed <= 0.0).then(|| {
        format!(
            "no request to {} was taken by one of its HTTPRoutes (counts: {})",
            routes::ROUTED,
            taken
                .iter()
                .map(|c| format!("{}#{}={}", c.route, c.rule, c.requests))
                .collect::<Vec<_>>()
                .join(", ")
        )
    })
}

#[cfg(test)]
mod tests {
    use super::{super::bed::Waypoint, *};

    #[test]
    fn training_goes_through_both_waypoints_and_nothing_else() {
        let trained = routes_trained();
        assert_eq!(
            trained,
            [
                Route::Waypoint,
                Route::WaypointRoutes,
                Route::WaypointPolicies
            ]
        );
        for w in Waypoint::ALL {
            assert!(
                trained.iter().any(|r| r.waypoint() == Some(w)),
                "{w:?} gets no load"
            );
        }
    }

    #[test]
    fn requests_taken_only_by_the_default_route_are_told() {
        let count = |route: &str, requests: f64| RuleCount {
            route: route.into(),
            rule: "0".into(),
            requests,
        };
        assert!(unrouted(&[count("default/web-routes-0", 12.0)]).is_none());
        let only_default = unrouted(&[count("default", 40.0)]).unwrap();
        assert!(only_default.contains(routes::ROUTED), "{only_default}");
        assert!(only_default.contains("default#0=40"), "{only_default}");
        assert!(unrouted(&[count("", 40.0)]).is_some());
        assert!(unrouted(&[]).is_some());
        assert!(unrouted(&[count("default/web-routes-0", 0.0)]).is_some());
    }
}
