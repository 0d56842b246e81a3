//! The L7 part of `cargo xtask bench` (`--only waypoint`): HTTP through
//! a waypoint of its own to a Service without HTTPRoutes, and through
//! another to one with ten of 1,000 and to one with an
//! AuthorizationPolicy, a rate limit and a DestinationRule in force,
//! against direct, the L4 mesh and HAProxy as the same hop, on one
//! bed, in one run; the waypoint's CPU, memory and added latency against
//! its goals, and what the routes cost it per request and to build. A
//! benchmark: it reports and fails on no number.
//! - [`bed`]: the cluster, the paths requests take (`Route`, the table's
//!   columns) and what each stage records;
//! - [`routes`]: the 1,000 HTTPRoutes of the "1,000 routes" column;
//! - [`policies`]: the AuthorizationPolicy, rate limit and DestinationRule
//!   of the "policies in force" column;
//! - [`observed`]: what the waypoint logs and counts of its routes;
//! - [`load`]: wrk and h2load, and their outputs;
//! - [`haproxy`]: HAProxy's configuration;
//! - [`metric`]: the rows; [`render`]: the table and the goals;
//! - [`train`]: the same bed and loads, briefly, through instrumented
//!   waypoints: their part of `xtask build-release`'s profile.
mod bed;
mod haproxy;
mod load;
mod metric;
mod observed;
mod policies;
mod render;
mod routes;
pub mod train;

use self::{
    bed::{L7Bed, Route},
    render::{RouteResult, Routing},
};
use super::{metering::Steal, mode::Stage, stats::Samples};

/// The stages this part runs, of those asked (empty: all).
pub fn stages(only: &[Stage]) -> Vec<Stage> {
    [Stage::Wrk, Stage::H2load, Stage::FixedRate]
        .into_iter()
        .filter(|s| only.is_empty() || only.contains(s))
        .collect()
}

/// Every stage over every route back to back, `rounds` times; the table
/// of medians. A stage failing on a route is listed under the table and
/// the rest still runs. The bed (every process and namespace) is removed
/// when this returns.
pub fn run(secs: u32, rounds: u32, stages: &[Stage]) -> anyhow::Result<String> {
    let bed = L7Bed::start()?;
    // Per route, each measurement's figures (one stage of one round).
    let mut measured: Vec<(Vec<metric::Figures>, Steal)> = Route::ALL
        .iter()
        .map(|_| (Vec::new(), Steal::default()))
        .collect();
    let mut failures = Vec::new();
    for round in 1..=rounds {
        for &stage in stages {
            for (route, (measurements, steal)) in Route::ALL.iter().zip(&mut measured) {
                let name = stage.name();
                eprintln!("bench: round {round}/{rounds}, {name}, {}", route.label());
                let mut figures = metric::Figures::new();
                let before = Steal::read();
                let outcome = bed.stage(*route, stage, secs, &mut figures);
                steal.add(before, Steal::read());
                measurements.push(figures);
                if let Err(e) = outcome {
                    failures.push(format!(
                        "- {}: {name} (round {round}): {e:#}",
                        route.label()
                    ));
                }
            }
        }
    }
    let taken = bed.routed_requests().unwrap_or_else(|e| {
        failures.push(format!("- the waypoint's request counts: {e:#}"));
        Vec::new()
    });
    let routing = Routing {
        views: bed.views.clone(),
        taken,
    };
    drop(bed);
    let results: Vec<(Route, RouteResult)> = Route::ALL
        .iter()
        .zip(measured)
        .map(|(route, (measurements, steal))| {
            let mut samples = Samples::default();
            for figures in &measurements {
                samples.add(figures.clone());
            }
            (
                *route,
                RouteResult {
                    figures: samples.medians(),
                    measurements,
                    steal: steal.percent(),
                },
            )
        })
        .collect();
    let mut table = render::table(&results, secs, rounds, &routing);
    if !failures.is_empty() {
        table += "\nFailed measurements:\n";
        table += &failures.join("\n");
        table += "\n";
    }
    Ok(table)
}
