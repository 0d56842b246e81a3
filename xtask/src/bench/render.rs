//! The markdown table: a row per metric that any mode measured, a column
//! per mode, and beside each mode but direct its ratio to direct; the host
//! steal under it.
use std::fmt::Write;

use super::{measure::ModeResult, metric::Metric, mode::Mode};

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
    out
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
            steal: Some(0.25),
        };
        let relays = ModeResult {
            figures: Figures::from([
                (Metric::Iperf1Stream, 9.5),
                (Metric::SockperfP50, 150.0),
                (Metric::CpuFixedRate, 6.5),
                (Metric::Wrk1ConnP99, 400.0),
            ]),
            steal: None,
        };
        let mtls = ModeResult {
            figures: Figures::from([
                (Metric::SockperfP50, 170.333),
                (Metric::CpuFixedRate, 7.7),
                (Metric::FixedRateAchieved, 2000.09),
                (Metric::RssIdle, 5.85),
            ]),
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
            steal: None,
        };
        let mesh = ModeResult {
            figures: Figures::from([(Metric::HeyRate, 500.0)]),
            steal: None,
        };
        let out = table(&[Mode::Direct, Mode::Mesh], &[direct, mesh], 1, 1);
        assert!(out.ends_with(
            "| hey new connection per request, 8 concurrent (req/s) | 1000.00 | 500.00 | 0.50× |\n"
        ));
        assert!(!out.contains("steal"));
    }
}
