//! The L7 part of `cargo xtask bench` (`--only waypoint`): HTTP through
//! the waypoint against direct, the L4 mesh and HAProxy as the same hop,
//! on one bed, in one run; the waypoint's CPU, memory and added latency
//! against its goals. A benchmark: it reports and fails on no number.
//! - [`bed`]: the cluster, its routes and what each stage records;
//! - [`load`]: wrk and h2load, and their outputs;
//! - [`haproxy`]: HAProxy's configuration;
//! - [`metric`]: the rows; [`render`]: the table and the goals.
mod bed;
mod haproxy;
mod load;
mod metric;
mod render;

use self::{
    bed::{L7Bed, Route},
    render::RouteResult,
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
    let mut samples: Vec<(Samples<metric::Row>, Steal)> = Route::ALL
        .iter()
        .map(|_| (Samples::default(), Steal::default()))
        .collect();
    let mut failures = Vec::new();
    for round in 1..=rounds {
        for &stage in stages {
            for (route, (samples, steal)) in Route::ALL.iter().zip(&mut samples) {
                let name = stage.name();
                eprintln!("bench: round {round}/{rounds}, {name}, {}", route.label());
                let mut figures = metric::Figures::new();
                let before = Steal::read();
                let outcome = bed.stage(*route, stage, secs, &mut figures);
                steal.add(before, Steal::read());
                samples.add(figures);
                if let Err(e) = outcome {
                    failures.push(format!(
                        "- {}: {name} (round {round}): {e:#}",
                        route.label()
                    ));
                }
            }
        }
    }
    drop(bed);
    let results: Vec<(Route, RouteResult)> = Route::ALL
        .iter()
        .zip(samples)
        .map(|(route, (samples, steal))| {
            (
                *route,
                RouteResult {
                    figures: samples.medians(),
                    steal: steal.percent(),
                },
            )
        })
        .collect();
    let mut table = render::table(&results, secs, rounds);
    if !failures.is_empty() {
        table += "\nFailed measurements:\n";
        table += &failures.join("\n");
        table += "\n";
    }
    Ok(table)
}
