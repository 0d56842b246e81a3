//! The markdown table: a row per metric that any mode measured, a column
//! per mode, and beside each mode but direct its ratio to direct; the host
//! steal under it; then, for each mode measured both delivering from the
//! client's address and from 127.0.0.6, the two side by side.
use std::fmt::Write;

use super::{
    measure::ModeResult,
    metric::Metric,
    mode::Mode,
    source_ip::{self, Figure, Goal, Pair, Verdict},
};

/// `modes` and `results` pair up; the first is direct, which every ratio
/// divides by.
pub fn table(modes: &[Mode], results: &[ModeResult], secs: u32, rounds: u32) -> String {
    let mut out = format!(
        "pod→pod across nodes on the test bed, {secs} s per measurement, median of {rounds} rounds (each round runs every tool in every mode, round-robin); ratio = mode / direct (higher is better for throughput, lower for latency)\n\n| metric |"
    );
    for m in modes {
        let _ = write!(out, " {} |", m.label());
        if *m != Mode::Direct {
            out += " ratio |";
        }
    }
    out += "\n|---|";
    for m in modes {
        out += if *m == Mode::Direct {
            "---|"
        } else {
            "---|---|"
        };
    }
    out += "\n";
    // Metrics order the rows; a row nobody measured is left out.
    let mut metrics: Vec<Metric> = results
        .iter()
        .flat_map(|r| r.figures.keys().copied())
        .collect();
    metrics.sort();
    metrics.dedup();
    for metric in metrics {
        let _ = write!(out, "| {} |", metric.label());
        let base = results[0].figures.get(&metric);
        for (m, r) in modes.iter().zip(results) {
            let value = r.figures.get(&metric);
            match value {
                Some(v) => _ = write!(out, " {v:.2} |"),
                None => out += " – |",
            }
            if *m != Mode::Direct {
                match (base, value) {
                    (Some(b), Some(v)) if *b > 0.0 => _ = write!(out, " {:.2}× |", v / b),
                    _ => out += " – |",
                }
            }
        }
        out += "\n";
    }
    let steal: Vec<String> = modes
        .iter()
        .zip(results)
        .filter_map(|(m, r)| r.steal.map(|v| format!("{} {v:.1} %", m.label())))
        .collect();
    if !steal.is_empty() {
        let _ = write!(
            out,
            "\nHost CPU steal while each mode was measured (the hypervisor running other guests on this VM's CPUs): {}. Above a few percent, every figure (direct included) is slower and noisier; compare ratios from runs with little steal.\n",
            steal.join(", ")
        );
    }
    for pair in source_ip::pairs(modes, results) {
        source_ip_section(&mut out, &pair);
    }
    out
}

/// Delivering from the client's address beside delivering from 127.0.0.6,
/// same agents otherwise, same rounds: each figure with its rounds'
/// spread, their ratio, what the spread says, and the goal.
fn source_ip_section(out: &mut String, pair: &Pair) {
    let (p, l) = (pair.preserve.label(), pair.loopback.label());
    let _ = write!(
        out,
        "\nSource-IP delivery, {p}: the app sees the client's address (`datapath.sourceIp: preserve`, the default) against 127.0.0.6 (`loopback`), same agents, same rounds. Each figure is the median with its lowest and highest round in brackets; ratio = preserve / loopback; a difference counts only where the two figures' rounds do not overlap. Goal: no measurable cost (no row worse beyond the rounds' spread); reported, never enforced.\n\n| metric | {p} | {l} | preserve / loopback | rounds |\n|---|---|---|---|---|\n"
    );
    for row in &pair.rows {
        let ratio = row
            .ratio()
            .map_or_else(|| "–".to_owned(), |r| format!("{r:.3}×"));
        let reading = match row.verdict() {
            Verdict::WithinNoise => "overlap: within noise",
            Verdict::Costlier => "apart: preserve worse",
            Verdict::Cheaper => "apart: preserve better",
            Verdict::NoSpread => "– (measured once)",
        };
        let _ = writeln!(
            out,
            "| {} | {} | {} | {ratio} | {reading} |",
            row.metric.label(),
            figure_cell(&row.preserve),
            figure_cell(&row.loopback),
        );
    }
    let _ = match pair.goal() {
        Goal::Met => writeln!(
            out,
            "\nGoal, no measurable cost of preserving the source: met (no row worse beyond the rounds' spread)."
        ),
        Goal::Missed(rows) => writeln!(
            out,
            "\nGoal, no measurable cost of preserving the source: missed in {} row(s), worse beyond the rounds' spread: {}.",
            rows.len(),
            rows.iter()
                .map(|m| m.label())
                .collect::<Vec<_>>()
                .join("; ")
        ),
        Goal::NotJudged => writeln!(
            out,
            "\nGoal, no measurable cost of preserving the source: not judged (one round: no spread to read a difference against)."
        ),
    };
}

/// `median (lowest–highest)`, or the median alone when measured once.
fn figure_cell(f: &Figure) -> String {
    match f.range {
        Some(r) if r.count >= 2 => {
            format!("{:.2} ({:.2}–{:.2})", f.median, r.lowest, r.highest)
        }
        _ => format!("{:.2}", f.median),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::metric::Figures;

    /// What the table looked like when its rows were string-keyed: the same
    /// figures must still give it byte for byte.
    const EXPECTED: &str = "pod→pod across nodes on the test bed, 5 s per measurement, median of 3 rounds (each round runs every tool in every mode, round-robin); ratio = mode / direct (higher is better for throughput, lower for latency)

| metric | direct | two minimal relays | ratio | mesh HBONE mTLS | ratio |
|---|---|---|---|---|---|
| achieved req/s at the fixed-rate stage | – | – | – | 2000.09 | – |
| agent (or relay) CPU % at a fixed 2000 req/s (max of 2) | – | 6.50 | – | 7.70 | – |
| agent RSS idle (MiB) | – | – | – | 5.85 | – |
| iperf3 bulk 1 stream (Gbit/s) | 36.09 | 9.50 | 0.26× | – | – |
| sockperf 64 B RTT p50 (us) | 54.96 | 150.00 | 2.73× | 170.33 | 3.10× |
| wrk 1 conn latency p99 (us) | 0.00 | 400.00 | – | – | – |

Host CPU steal while each mode was measured (the hypervisor running other guests on this VM's CPUs): direct 0.2 %, mesh HBONE mTLS 3.0 %. Above a few percent, every figure (direct included) is slower and noisier; compare ratios from runs with little steal.
";

    #[test]
    fn a_small_result_set_renders_as_before() {
        let direct = ModeResult {
            figures: Figures::from([
                (Metric::Iperf1Stream, 36.087206791),
                (Metric::SockperfP50, 54.961),
                (Metric::Wrk1ConnP99, 0.0),
            ]),
            ranges: Default::default(),
            steal: Some(0.25),
        };
        let relays = ModeResult {
            figures: Figures::from([
                (Metric::Iperf1Stream, 9.5),
                (Metric::SockperfP50, 150.0),
                (Metric::CpuFixedRate, 6.5),
                (Metric::Wrk1ConnP99, 400.0),
            ]),
            ranges: Default::default(),
            steal: None,
        };
        let mtls = ModeResult {
            figures: Figures::from([
                (Metric::SockperfP50, 170.333),
                (Metric::CpuFixedRate, 7.7),
                (Metric::FixedRateAchieved, 2000.09),
                (Metric::RssIdle, 5.85),
            ]),
            ranges: Default::default(),
            steal: Some(3.04),
        };
        let out = table(
            &[Mode::Direct, Mode::Relays, Mode::Mtls],
            &[direct, relays, mtls],
            5,
            3,
        );
        assert_eq!(out, EXPECTED);
    }

    #[test]
    fn without_steal_figures_no_steal_line() {
        let direct = ModeResult {
            figures: Figures::from([(Metric::HeyRate, 1000.0)]),
            ranges: Default::default(),
            steal: None,
        };
        let mesh = ModeResult {
            figures: Figures::from([(Metric::HeyRate, 500.0)]),
            ranges: Default::default(),
            steal: None,
        };
        let out = table(&[Mode::Direct, Mode::Mesh], &[direct, mesh], 1, 1);
        assert!(out.ends_with(
            "| hey new connection per request, 8 concurrent (req/s) | 1000.00 | 500.00 | 0.50× |\n"
        ));
        assert!(!out.contains("steal"));
    }

    #[test]
    fn preserve_and_loopback_are_set_side_by_side_under_the_table() {
        let with_spread = |values: &[f64]| {
            let mut samples = crate::bench::stats::Samples::default();
            for v in values {
                samples.add(Figures::from([(Metric::SockperfP50, *v)]));
            }
            samples.add(Figures::from([(Metric::RssIdle, 6.0)]));
            ModeResult {
                figures: samples.medians(),
                ranges: samples.ranges(),
                steal: None,
            }
        };
        let out = table(
            &[Mode::Direct, Mode::Mtls, Mode::MtlsLoopback],
            &[
                with_spread(&[50.0, 52.0, 51.0]),
                with_spread(&[160.0, 170.0, 165.0]),
                with_spread(&[150.0, 162.0, 155.0]),
            ],
            5,
            3,
        );
        let section = out
            .split_once("\nSource-IP delivery, mesh HBONE mTLS:")
            .expect("the section")
            .1;
        assert!(section.contains(
            "| metric | mesh HBONE mTLS | mesh HBONE mTLS, 127.0.0.6 delivery | preserve / loopback | rounds |\n"
        ));
        assert!(
            section
                .contains("| agent RSS idle (MiB) | 6.00 | 6.00 | 1.000× | – (measured once) |\n")
        );
        assert!(section.contains(
            "| sockperf 64 B RTT p50 (us) | 165.00 (160.00–170.00) | 155.00 (150.00–162.00) | 1.065× | overlap: within noise |\n"
        ));
        assert!(section.ends_with("met (no row worse beyond the rounds' spread).\n"));
    }
}
