//! The datapath run: every mode's bed up at once, every stage against each
//! of them in turn, for a number of rounds.
use std::collections::BTreeMap;

use anyhow::Context;

use super::{
    bed::Bed,
    metering::Steal,
    metric::{Figures, Metric},
    mode::{Mode, Stage},
    stats::Range,
};

/// One mode's outcome: each figure's median over the rounds, and the host
/// steal while it was measured (shown apart from the table's rows: it
/// describes the machine, not the mesh).
pub struct ModeResult {
    pub figures: Figures,
    /// Each figure's spread over the rounds, to read a difference between
    /// two modes against.
    pub ranges: BTreeMap<Metric, Range>,
    pub steal: Option<f64>,
}

/// Every mode's test bed is up at once, and each tool runs against all of
/// them back to back before the next tool: on a shared VM, where steal
/// comes and goes over minutes, a mode and the direct baseline it is
/// divided by are then measured moments apart, not minutes apart. The
/// whole sequence repeats `rounds` times and each figure is the median of
/// its rounds. A tool failing in one mode is reported (the second value,
/// a line per failure), and everything else still runs. `only` narrows
/// the stages; empty runs them all.
pub fn measure(
    modes: &[Mode],
    secs: u32,
    rounds: u32,
    only: &[Stage],
) -> anyhow::Result<(Vec<ModeResult>, Vec<String>)> {
    let mut beds = modes
        .iter()
        .map(|m| Bed::start(*m).with_context(|| m.label()))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let stages: Vec<Stage> = <Stage as clap::ValueEnum>::value_variants()
        .iter()
        .copied()
        .filter(|s| s.in_datapath() && (only.is_empty() || only.contains(s)))
        .collect();
    let mut failures = Vec::new();
    for round in 1..=rounds {
        for &stage in &stages {
            let name = stage.name();
            for bed in &mut beds {
                eprintln!(
                    "bench: round {round}/{rounds}, {name}, {}",
                    bed.mode.label()
                );
                let before = Steal::read();
                let result = bed.stage(stage, secs);
                bed.steal.add(before, Steal::read());
                if let Err(e) = result {
                    failures.push(format!(
                        "- {}: {name} (round {round}): {e:#}",
                        bed.mode.label()
                    ));
                }
            }
        }
    }
    for bed in &mut beds {
        bed.cluster.stop_agents();
    }
    let results = beds
        .into_iter()
        .map(|bed| ModeResult {
            figures: bed.samples.medians(),
            ranges: bed.samples.ranges(),
            steal: bed.steal.percent(),
        })
        .collect();
    Ok((results, failures))
}
