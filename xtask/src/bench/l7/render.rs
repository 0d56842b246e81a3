//! The L7 table: a row per figure, a column per route with its ratio to
//! direct; then the waypoint's figures against its goals, and the steal.
use std::fmt::Write;

use super::{
    bed::{FIXED_RATE, Route},
    metric::{Figures, Row},
};

/// One route's medians over the rounds, and the host steal while it was
/// measured.
pub struct RouteResult {
    pub figures: Figures,
    pub steal: Option<f64>,
}

/// A figure the waypoint is held to, with its goal. Reported, never
/// enforced.
#[derive(Debug, PartialEq)]
pub struct Goal {
    pub label: &'static str,
    /// None when a figure it is computed from was not measured.
    pub value: Option<f64>,
    /// At most this.
    pub limit: f64,
    /// How `value` and `limit` are written.
    pub unit: &'static str,
}

/// The waypoint's figures against its goals, from the same run's medians:
/// CPU per 1000 req/s and CPU per request against HAProxy's both at the
/// fixed rate (where both serve the same rate), RSS the larger of the two
/// loads that report it, the added p99 over the L4 mesh at the fixed rate.
pub fn goals(by_route: &[(Route, &Figures)]) -> Vec<Goal> {
    let get = |route: Route, row: Row| {
        by_route
            .iter()
            .find(|(r, _)| *r == route)
            .and_then(|(_, f)| f.get(&row).copied())
    };
    // vCPU seconds per request: CPU % / 100 / achieved req/s.
    let cpu_per_request = |route: Route| {
        let cpu = get(route, Row::HopCpuFixed)?;
        let rate = get(route, Row::FixedAchieved).filter(|r| *r > 0.0)?;
        Some(cpu / 100.0 / rate)
    };
    let waypoint_per_request = cpu_per_request(Route::Waypoint);
    let rss = match (
        get(Route::Waypoint, Row::HopRssFixed),
        get(Route::Waypoint, Row::HopRss64Conns),
    ) {
        (Some(a), Some(b)) => Some(a.max(b)),
        (a, b) => a.or(b),
    };
    let added_p99 = get(Route::Waypoint, Row::FixedP99)
        .zip(get(Route::L4Mesh, Row::FixedP99))
        .map(|(wp, l4)| (wp - l4) / 1000.0);
    let versus_haproxy = waypoint_per_request
        .zip(cpu_per_request(Route::Haproxy).filter(|h| *h > 0.0))
        .map(|(wp, h)| wp / h);
    vec![
        Goal {
            label: "waypoint CPU per 1000 req/s",
            value: waypoint_per_request.map(|c| c * 1000.0),
            limit: 0.08,
            unit: "vCPU",
        },
        Goal {
            label: "waypoint RSS under load",
            value: rss,
            limit: 20.0,
            unit: "MiB",
        },
        Goal {
            label: "added p99 at 1000 req/s over the L4 mesh",
            value: added_p99,
            limit: 0.5,
            unit: "ms",
        },
        Goal {
            label: "CPU per request, waypoint / HAProxy",
            value: versus_haproxy,
            limit: 1.5,
            unit: "×",
        },
    ]
}

pub fn table(results: &[(Route, RouteResult)], secs: u32, rounds: u32) -> String {
    let mut out = format!(
        "L7 hop: client (node 0) → backends b1/b2 (node 1), through the waypoint or HAProxy on node 2; {secs} s per measurement, median of {rounds} rounds (each round runs every load over every route, round-robin); ratio = route / direct\n\n| metric |"
    );
    for (route, _) in results {
        let _ = write!(out, " {} |", route.label());
        if *route != Route::Direct {
            out += " ratio |";
        }
    }
    out += "\n|---|";
    for (route, _) in results {
        out += if *route == Route::Direct {
            "---|"
        } else {
            "---|---|"
        };
    }
    out += "\n";
    let mut rows: Vec<Row> = results
        .iter()
        .flat_map(|(_, r)| r.figures.keys().copied())
        .collect();
    rows.sort();
    rows.dedup();
    let base = results
        .iter()
        .find(|(route, _)| *route == Route::Direct)
        .map(|(_, r)| &r.figures);
    for row in rows {
        let _ = write!(out, "| {} |", row.label());
        let b = base.and_then(|f| f.get(&row));
        for (route, r) in results {
            let value = r.figures.get(&row);
            match value {
                Some(v) => _ = write!(out, " {v:.2} |"),
                None => out += " – |",
            }
            if *route != Route::Direct {
                match (b, value) {
                    (Some(b), Some(v)) if *b > 0.0 => _ = write!(out, " {:.2}× |", v / b),
                    _ => out += " – |",
                }
            }
        }
        out += "\n";
    }
    let figures: Vec<(Route, &Figures)> = results.iter().map(|(r, x)| (*r, &x.figures)).collect();
    let _ = write!(
        out,
        "\nThe waypoint against its goals (same run; CPU at the fixed {FIXED_RATE} req/s, from /proc/<pid>/stat over the interval; RSS the larger of the fixed-rate and 64-connection loads). Reported, not enforced:\n\n| figure | this run | goal | within goal |\n|---|---|---|---|\n"
    );
    for g in goals(&figures) {
        let (value, within) = match g.value {
            Some(v) => (
                format!("{v:.3} {}", g.unit),
                if v <= g.limit { "yes" } else { "no" },
            ),
            None => ("–".to_owned(), "–"),
        };
        let _ = writeln!(
            out,
            "| {} ({}) | {value} | ≤ {} {} | {within} |",
            g.label, g.unit, g.limit, g.unit
        );
    }
    let steal: Vec<String> = results
        .iter()
        .filter_map(|(route, r)| r.steal.map(|v| format!("{} {v:.1} %", route.label())))
        .collect();
    if !steal.is_empty() {
        let _ = write!(
            out,
            "\nHost CPU steal while each route was measured: {}. Above a few percent, every figure is slower and noisier.\n",
            steal.join(", ")
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn figures(pairs: &[(Row, f64)]) -> Figures {
        pairs.iter().copied().collect()
    }

    #[test]
    fn goals_are_computed_from_the_same_runs_medians() {
        let l4 = figures(&[(Row::FixedP99, 900.0), (Row::FixedAchieved, 1000.0)]);
        let wp = figures(&[
            (Row::FixedAchieved, 1000.0),
            (Row::FixedP99, 1300.0),
            (Row::HopCpuFixed, 6.0),
            (Row::HopRssFixed, 12.5),
            (Row::HopRss64Conns, 14.0),
        ]);
        let hap = figures(&[(Row::FixedAchieved, 800.0), (Row::HopCpuFixed, 3.2)]);
        let g = goals(&[
            (Route::L4Mesh, &l4),
            (Route::Waypoint, &wp),
            (Route::Haproxy, &hap),
        ]);
        let values: Vec<Option<f64>> = g.iter().map(|g| g.value).collect();
        let close = |a: Option<f64>, b: f64| (a.unwrap() - b).abs() < 1e-9;
        // 6 % of a CPU at 1000 req/s is 0.06 vCPU per 1000 req/s.
        assert!(close(values[0], 0.06), "{values:?}");
        assert!(close(values[1], 14.0), "{values:?}");
        assert!(close(values[2], 0.4), "{values:?}");
        // 0.06/1000 per request against HAProxy's 0.032/800 = 0.04/1000.
        assert!(close(values[3], 1.5), "{values:?}");
        assert_eq!(
            g.iter().map(|g| g.limit).collect::<Vec<_>>(),
            [0.08, 20.0, 0.5, 1.5]
        );
    }

    #[test]
    fn a_goal_without_its_figures_has_no_value() {
        let wp = figures(&[(Row::HopRss64Conns, 9.0)]);
        let g = goals(&[(Route::Waypoint, &wp)]);
        assert_eq!(g[0].value, None);
        assert_eq!(g[1].value, Some(9.0));
        assert_eq!(g[2].value, None);
        assert_eq!(g[3].value, None);
    }

    #[test]
    fn the_table_has_a_column_per_route_ratios_to_direct_and_the_goals() {
        let results = vec![
            (
                Route::Direct,
                RouteResult {
                    figures: figures(&[(Row::H1Rate1Conn, 4000.0)]),
                    steal: Some(0.5),
                },
            ),
            (
                Route::Waypoint,
                RouteResult {
                    figures: figures(&[
                        (Row::H1Rate1Conn, 1000.0),
                        (Row::HopCpuFixed, 10.0),
                        (Row::FixedAchieved, 1000.0),
                    ]),
                    steal: None,
                },
            ),
        ];
        let out = table(&results, 5, 3);
        assert!(
            out.contains("| metric | direct | through the waypoint | ratio |\n|---|---|---|---|\n"),
            "{out}"
        );
        assert!(out.contains("| HTTP/1.1 POST 1 KiB → 1 KiB, 1 keep-alive conn (req/s) | 4000.00 | 1000.00 | 0.25× |\n"), "{out}");
        assert!(
            out.contains("| L7 hop CPU % at 1000 req/s | – | 10.00 | – |\n"),
            "{out}"
        );
        assert!(
            out.contains(
                "| waypoint CPU per 1000 req/s (vCPU) | 0.100 vCPU | ≤ 0.08 vCPU | no |\n"
            ),
            "{out}"
        );
        assert!(
            out.contains("| waypoint RSS under load (MiB) | – | ≤ 20 MiB | – |\n"),
            "{out}"
        );
        assert!(
            out.contains("steal while each route was measured: direct 0.5 %."),
            "{out}"
        );
    }
}
