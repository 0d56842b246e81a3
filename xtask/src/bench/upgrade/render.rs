//! The upgrade part's table: a row per replacement, the goal under it.
use std::fmt::Write;

use super::outcome::Tally;

/// Which node's agent a replacement replaced.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    /// Node 1, where the cross-node connections arrive over HBONE.
    Destination,
    /// Node 0, where they leave from.
    Source,
}

impl Side {
    pub fn node(self) -> usize {
        match self {
            Side::Destination => 1,
            Side::Source => 0,
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            Side::Destination => "destination",
            Side::Source => "source",
        }
    }
}

/// How the replaced agent ended.
#[derive(Clone, Debug, PartialEq)]
pub enum OldExit {
    /// On its own once its connections had ended, with success.
    Drained,
    /// At its drain deadline, resetting what was still open.
    DrainDeadline,
    /// Anything else: a failure status.
    Failed(String),
}

/// What one replacement measured.
#[derive(Clone, Debug, PartialEq)]
pub struct Replaced {
    pub round: u32,
    pub side: Side,
    /// The connections opened at a steady rate, one per ident.
    pub new: Tally,
    /// The rate they were opened at, both clients together (per second).
    pub new_rate: f64,
    /// The long-lived streams, open before the hand-over.
    pub long: Tally,
    /// Bulk transfers still moving when the new agent took over, of all.
    pub bulks_spanning: (u32, u32),
    /// From the new agent's process started to its log saying it took
    /// over (it accepts on the pods' sockets), in seconds.
    pub serving_s: f64,
    /// From the last long-lived stream ending (its client exited) to the
    /// old agent's exit, in seconds; negative if the exit was seen first.
    pub exit_after_last_s: f64,
    /// From the new agent taking over to the old one's exit, in seconds.
    pub exit_after_take_over_s: f64,
    pub old_exit: OldExit,
    /// The lines of connections that did not end well (the first few).
    pub failures: Vec<String>,
}

impl Replaced {
    fn refused(&self) -> u32 {
        self.new.refused + self.long.refused
    }

    fn reset(&self) -> u32 {
        self.new.reset + self.long.reset
    }
}

/// The table, written for a bed of `streams` long-lived streams per
/// replacement; `steal` is the host's while the replacements ran.
pub fn table(rows: &[Replaced], describe: &str, steal: Option<f64>) -> String {
    let mut out = format!(
        "Agent replaced by hand-over under load, on a two-node mTLS bed: {describe}\n\n| replacement | new connections (achieved /s) | long-lived streams | refused | reset | checksum or echo mismatches | other failures | bulks moving at the take-over | new agent: start → serving (s) | old agent: last connection ended → exit (s) | old agent: take-over → exit (s) | old agent's exit |\n|---|---|---|---|---|---|---|---|---|---|---|---|\n"
    );
    for r in rows {
        let exit = match &r.old_exit {
            OldExit::Drained => "drained, exit 0".to_owned(),
            OldExit::DrainDeadline => "at the drain deadline".to_owned(),
            OldExit::Failed(why) => format!("failed: {why}"),
        };
        let _ = writeln!(
            out,
            "| round {}, {} node (node {}) | {} ({:.1}/s) | {} | {} | {} | {} | {} | {} of {} | {:.2} | {:.2} | {:.2} | {exit} |",
            r.round,
            r.side.label(),
            r.side.node(),
            r.new.total(),
            r.new_rate,
            r.long.total(),
            r.refused(),
            r.reset(),
            r.new.mismatch + r.long.mismatch,
            r.new.failed + r.long.failed,
            r.bulks_spanning.0,
            r.bulks_spanning.1,
            r.serving_s,
            r.exit_after_last_s,
            r.exit_after_take_over_s,
        );
    }
    let missed: Vec<String> = rows
        .iter()
        .filter(|r| r.refused() > 0 || r.reset() > 0)
        .map(|r| {
            format!(
                "round {} {} ({} refused, {} reset)",
                r.round,
                r.side.label(),
                r.refused(),
                r.reset()
            )
        })
        .collect();
    if rows.is_empty() {
        out += "\nNo replacement ran.\n";
    } else if missed.is_empty() {
        out += "\nGoal, 0 connections refused and 0 reset in every replacement: met.\n";
    } else {
        let _ = writeln!(
            out,
            "\nGoal, 0 connections refused and 0 reset in every replacement: missed in {}.",
            missed.join(", ")
        );
    }
    let failed: Vec<&Replaced> = rows.iter().filter(|r| !r.failures.is_empty()).collect();
    if !failed.is_empty() {
        out += "\nConnections that did not end well (the first of each replacement):\n";
        for r in failed {
            for f in &r.failures {
                let _ = writeln!(out, "- round {} {}: {f}", r.round, r.side.label());
            }
        }
    }
    if let Some(steal) = steal {
        let _ = writeln!(
            out,
            "\nHost CPU steal while the replacements ran: {steal:.1} %."
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn replaced(side: Side, new: Tally, old_exit: OldExit, failures: Vec<String>) -> Replaced {
        Replaced {
            round: 1,
            side,
            new,
            new_rate: 41.3,
            long: Tally {
                ok: 50,
                ..Tally::default()
            },
            bulks_spanning: (4, 4),
            serving_s: 0.8123,
            exit_after_last_s: 0.061,
            exit_after_take_over_s: 9.2,
            old_exit,
            failures,
        }
    }

    #[test]
    fn a_row_per_replacement_and_the_goal_under_them() {
        let clean = Tally {
            ok: 600,
            ..Tally::default()
        };
        let out = table(
            &[
                replaced(Side::Destination, clean, OldExit::Drained, vec![]),
                replaced(Side::Source, clean, OldExit::Drained, vec![]),
            ],
            "the load.",
            Some(0.42),
        );
        assert!(out.starts_with("Agent replaced by hand-over under load, on a two-node mTLS bed: the load.\n\n| replacement |"));
        assert!(out.contains(
            "| round 1, destination node (node 1) | 600 (41.3/s) | 50 | 0 | 0 | 0 | 0 | 4 of 4 | 0.81 | 0.06 | 9.20 | drained, exit 0 |\n"
        ));
        assert!(out.contains("| round 1, source node (node 0) |"));
        assert!(out.contains("every replacement: met.\n"));
        assert!(!out.contains("did not end well"));
        assert!(out.ends_with("while the replacements ran: 0.4 %.\n"));
    }

    #[test]
    fn a_refused_or_reset_connection_misses_the_goal_and_is_listed() {
        let cut = Tally {
            ok: 598,
            refused: 1,
            reset: 1,
            ..Tally::default()
        };
        let out = table(
            &[replaced(
                Side::Source,
                cut,
                OldExit::DrainDeadline,
                vec!["client0 → server1: {\"error\":\"refused\"}".to_owned()],
            )],
            "the load.",
            None,
        );
        assert!(out.contains("| 600 (41.3/s) | 50 | 1 | 1 | 0 | 0 |"));
        assert!(out.contains("| at the drain deadline |"));
        assert!(out.contains("missed in round 1 source (1 refused, 1 reset).\n"));
        assert!(out.contains("- round 1 source: client0 → server1: {\"error\":\"refused\"}\n"));
        assert!(!out.contains("steal"));
    }
}
