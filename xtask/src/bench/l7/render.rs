//! The L7 table: a row per figure, a column per route with its ratio to
//! direct; which waypoint each column went through and its memory before
//! any load; then the waypoint's figures against its goals, the waypoint
//! with 1,000 routes against without, its view's build time, the waypoint
//! with policies in force against without, and the steal.
use std::fmt::Write;

use super::{
    bed::{FIXED_RATE, Route, Waypoint},
    metric::{Figures, Row},
    observed::{RuleCount, ViewBuilt, Views},
    policies, routes,
};

/// One route's medians over the rounds, what each measurement (one stage
/// of one round) recorded, and the host steal while it was measured.
pub struct RouteResult {
    pub figures: Figures,
    pub measurements: Vec<Figures>,
    pub steal: Option<f64>,
}

/// What the waypoints said of their routes: the views each built before
/// and with them (their logs; the latter is the one each held before any
/// load), and the rules that took the requests to web-routes
/// (`Waypoint::Shared`'s metrics, after the last load).
pub struct Routing {
    pub views: Vec<(Waypoint, Views)>,
    pub taken: Vec<RuleCount>,
}

impl Routing {
    fn views_of(&self, w: Waypoint) -> Option<&Views> {
        self.views.iter().find(|(x, _)| *x == w).map(|(_, v)| v)
    }
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
/// fixed rate (where both serve the same rate), RSS at the fixed rate too
/// (the goal is stated for 1000 req/s; the 64-connection load's RSS stays
/// in the table beside it), the added p99 over the L4 mesh at the fixed
/// rate.
pub fn goals(by_route: &[(Route, &Figures)]) -> Vec<Goal> {
    let get = |route: Route, row: Row| {
        by_route
            .iter()
            .find(|(r, _)| *r == route)
            .and_then(|(_, f)| f.get(&row).copied())
    };
    let per_request = |route: Route| {
        by_route
            .iter()
            .find(|(r, _)| *r == route)
            .and_then(|(_, f)| cpu_per_request(f))
    };
    let waypoint_per_request = per_request(Route::Waypoint);
    let rss = get(Route::Waypoint, Row::HopRssFixed);
    let added_p99 = get(Route::Waypoint, Row::FixedP99)
        .zip(get(Route::L4Mesh, Row::FixedP99))
        .map(|(wp, l4)| (wp - l4) / 1000.0);
    let versus_haproxy = waypoint_per_request
        .zip(per_request(Route::Haproxy).filter(|h| *h > 0.0))
        .map(|(wp, h)| wp / h);
    let with_policies = per_request(Route::WaypointPolicies)
        .zip(waypoint_per_request.filter(|b| *b > 0.0))
        .map(|(p, bare)| p / bare);
    vec![
        Goal {
            label: "waypoint CPU per 1000 req/s",
            value: waypoint_per_request.map(|c| c * 1000.0),
            limit: 0.08,
            unit: "vCPU",
        },
        Goal {
            label: "waypoint RSS at 1000 req/s",
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
        Goal {
            label: "CPU per request, policies in force / none",
            value: with_policies,
            limit: 1.1,
            unit: "×",
        },
    ]
}

/// vCPU seconds per request at the fixed rate: CPU % / 100 / achieved
/// req/s.
fn cpu_per_request(f: &Figures) -> Option<f64> {
    let cpu = f.get(&Row::HopCpuFixed)?;
    let rate = f.get(&Row::FixedAchieved).filter(|r| **r > 0.0)?;
    Some(cpu / 100.0 / rate)
}

/// One figure of the waypoint with 1,000 routes (requests to web-routes)
/// beside without (requests to web-wp, which has none), through the same
/// waypoint in the same run.
#[derive(Debug, PartialEq)]
pub struct RouteCost {
    /// With its unit.
    pub label: &'static str,
    /// Decimals it is written with.
    pub decimals: usize,
    pub without: Spread,
    pub with: Spread,
}

/// A figure from the medians, and the lowest and highest of its rounds
/// (each measured in one stage of a round).
#[derive(Debug, PartialEq)]
pub struct Spread {
    pub median: Option<f64>,
    /// (lowest, highest, rounds measured).
    pub range: Option<(f64, f64, usize)>,
}

impl Spread {
    fn of(result: Option<&RouteResult>, figure: fn(&Figures) -> Option<f64>) -> Spread {
        let Some(r) = result else {
            return Spread {
                median: None,
                range: None,
            };
        };
        let values: Vec<f64> = r.measurements.iter().filter_map(figure).collect();
        let range = values.iter().copied().fold(None, |acc, v| match acc {
            None => Some((v, v, 1)),
            Some((lo, hi, n)) => Some((f64::min(lo, v), f64::max(hi, v), n + 1)),
        });
        Spread {
            median: figure(&r.figures),
            range,
        }
    }
}

impl RouteCost {
    /// With routes over without.
    pub fn ratio(&self) -> Option<f64> {
        let (with, without) = self.with.median.zip(self.without.median)?;
        (without > 0.0).then(|| with / without)
    }

    /// Whether the two figures' rounds overlap (the lowest of each at most
    /// the highest of the other); `None` unless both were measured in at
    /// least two rounds, as one round has no spread.
    pub fn rounds_overlap(&self) -> Option<bool> {
        let (lo_a, hi_a, n_a) = self.without.range?;
        let (lo_b, hi_b, n_b) = self.with.range?;
        (n_a >= 2 && n_b >= 2).then_some(lo_a <= hi_b && lo_b <= hi_a)
    }
}

/// CPU per 1000 req/s and p99 at the fixed rate, through the waypoint with
/// 1,000 routes and without.
pub fn route_cost(results: &[(Route, RouteResult)]) -> Vec<RouteCost> {
    cost_over_bare(results, Route::WaypointRoutes)
}

/// CPU per 1000 req/s and p99 at the fixed rate, through the waypoint to
/// `with` and to web-wp (nothing in force), in the same rounds.
fn cost_over_bare(results: &[(Route, RouteResult)], with: Route) -> Vec<RouteCost> {
    let result = |route: Route| results.iter().find(|(r, _)| *r == route).map(|(_, r)| r);
    let cost = |label, decimals, figure: fn(&Figures) -> Option<f64>| RouteCost {
        label,
        decimals,
        without: Spread::of(result(Route::Waypoint), figure),
        with: Spread::of(result(with), figure),
    };
    vec![
        cost("waypoint CPU per 1000 req/s (vCPU)", 3, |f| {
            cpu_per_request(f).map(|c| c * 1000.0)
        }),
        cost(Row::FixedP99.label(), 0, |f| f.get(&Row::FixedP99).copied()),
    ]
}

fn spread_cell(s: &Spread, decimals: usize) -> String {
    match (s.median, s.range) {
        (Some(m), Some((lo, hi, n))) if n >= 2 => {
            format!("{m:.decimals$} ({lo:.decimals$}–{hi:.decimals$})")
        }
        (Some(m), _) => format!("{m:.decimals$}"),
        (None, _) => "–".to_owned(),
    }
}

/// `1000` as `1,000`, as the column's label writes it.
fn thousands(n: usize) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, d) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(d);
    }
    out
}

fn ms(us: u64) -> String {
    format!("{:.2} ms", us as f64 / 1000.0)
}

fn view_sizes(v: &ViewBuilt) -> String {
    format!(
        "{} Services, {} pods, {} EndpointSlices, {} namespaces, {} AuthorizationPolicies",
        v.services, v.pods, v.endpoint_slices, v.namespaces, v.authorization_policies
    )
}

/// One table row per figure: without, with, their ratio, and whether their
/// rounds overlap.
fn cost_rows(out: &mut String, costs: &[RouteCost]) {
    for c in costs {
        let ratio = c
            .ratio()
            .map_or_else(|| "–".to_owned(), |r| format!("{r:.2}×"));
        let overlap = match c.rounds_overlap() {
            Some(true) => "yes",
            Some(false) => "no",
            None => "– (one round)",
        };
        let _ = writeln!(
            out,
            "| {} | {} | {} | {ratio} | {overlap} |",
            c.label,
            spread_cell(&c.without, c.decimals),
            spread_cell(&c.with, c.decimals),
        );
    }
}

/// The waypoint with its policies in force against without, in the same
/// run and rounds.
fn policies_section(out: &mut String, results: &[(Route, RouteResult)]) {
    let _ = write!(
        out,
        "\nThe waypoint with policies in force against without (same run; {service} through {shared}, web-wp through {bare}, each waypoint's own CPU): requests to {service} (an AuthorizationPolicy of {rules} ALLOW rules of which the last admits them, a local rate limit above any rate reached, a DestinationRule with connection-pool limits, outlier detection and LEAST_REQUEST) beside requests to web-wp (nothing in force). Median, with the lowest and highest round in brackets; the goal is at most 1.10× CPU per request (above, among the goals):\n\n| figure | nothing in force | policies in force | with / without | rounds overlap |\n|---|---|---|---|---|\n",
        service = policies::SERVICE,
        rules = policies::RULES,
        shared = Waypoint::Shared.gateway(),
        bare = Waypoint::Bare.gateway(),
    );
    cost_rows(out, &cost_over_bare(results, Route::WaypointPolicies));
}

/// How long `Waypoint::Shared` took to build its view with the routes and
/// without, and its memory a second after each.
fn build_line(out: &mut String, views: &Views, total: &str) {
    let (with, without) = (&views.with_routes, &views.without_routes);
    let _ = writeln!(
        out,
        "\nRoute table build: waypoint {shared} built its view with the {total} routes in {} ({}), and the same view without them in {} ({}). One build each, as the waypoint logs it (\"discovery view built\", build_us): the whole view, route tables included. Its memory a second after each, RSS (RssAnon): {:.1} MiB ({:.1} MiB) with the routes, {:.1} MiB ({:.1} MiB) without.",
        ms(with.view.build_us),
        view_sizes(&with.view),
        ms(without.view.build_us),
        view_sizes(&without.view),
        with.rss_mib,
        with.anon_mib,
        without.rss_mib,
        without.anon_mib,
        shared = Waypoint::Shared.gateway(),
    );
}

/// Which waypoint each waypoint column went through, what is bound to it,
/// the view it held and its memory before any load (a second after its
/// view with the routes): the figures a column's hop rows start from.
fn waypoints_section(out: &mut String, results: &[(Route, RouteResult)], routing: &Routing) {
    let _ = write!(
        out,
        "\nThe waypoints (both on node 2, one process each; a column's L7 hop CPU and RSS are its own waypoint's). Before any load, a second after each built its view with the routes, RSS (RssAnon):\n\n| column | waypoint | Services bound to it | its view | RSS before load (MiB) | RssAnon before load (MiB) |\n|---|---|---|---|---|---|\n"
    );
    for (route, _) in results {
        let Some(w) = route.waypoint() else {
            continue;
        };
        let (view, rss, anon) = match routing.views_of(w) {
            Some(v) => (
                view_sizes(&v.with_routes.view),
                format!("{:.1}", v.with_routes.rss_mib),
                format!("{:.1}", v.with_routes.anon_mib),
            ),
            None => ("–".to_owned(), "–".to_owned(), "–".to_owned()),
        };
        let _ = writeln!(
            out,
            "| {} | {} | {} | {view} | {rss} | {anon} |",
            route.label(),
            w.gateway(),
            w.serves(),
        );
    }
}

/// The waypoint with 1,000 routes against without, the build time of its
/// view with them, and which rules took web-routes' requests.
fn routing_section(out: &mut String, results: &[(Route, RouteResult)], routing: &Routing) {
    let (route, rule) = routes::taken(routes::ROUTED);
    let total = thousands(routes::SERVICES * routes::ROUTES_PER_SERVICE);
    let _ = write!(
        out,
        "\nThe waypoint with {total} routes against without (same run; {routed} through {shared}, web-wp through {bare}, each waypoint's own CPU): requests to {routed} ({per} routes of its own, {total} in the view; they take {route} rule {rule}, which the precedence tries after {before} others) beside requests to web-wp (no route). Each figure is the median, with the lowest and highest round in brackets; \"rounds overlap\" is whether the two figures' rounds overlap. No threshold is applied:\n\n| figure | without routes | with {total} routes | with / without | rounds overlap |\n|---|---|---|---|---|\n",
        routed = routes::ROUTED,
        per = routes::ROUTES_PER_SERVICE,
        before = routes::TRIED_BEFORE_TAKEN,
        shared = Waypoint::Shared.gateway(),
        bare = Waypoint::Bare.gateway(),
    );
    cost_rows(out, &route_cost(results));
    if let Some(views) = routing.views_of(Waypoint::Shared) {
        build_line(out, views, &total);
    }
    let counted: f64 = routing.taken.iter().map(|c| c.requests).sum();
    if counted > 0.0 {
        let by_rule: Vec<String> = routing
            .taken
            .iter()
            .map(|c| {
                let route = if c.route.is_empty() {
                    "no route"
                } else {
                    c.route.as_str()
                };
                let rule = if c.rule.is_empty() {
                    "–"
                } else {
                    c.rule.as_str()
                };
                format!(
                    "{route} rule {rule}: {:.0} ({:.1} %)",
                    c.requests,
                    100.0 * c.requests / counted
                )
            })
            .collect();
        let _ = writeln!(
            out,
            "\nRequests to {} by the rule that took them (the waypoint's istio_requests_total): {}.",
            routes::ROUTED,
            by_rule.join(", ")
        );
    } else {
        let _ = writeln!(
            out,
            "\nThe waypoint counted no request to {}.",
            routes::ROUTED
        );
    }
}

pub fn table(
    results: &[(Route, RouteResult)],
    secs: u32,
    rounds: u32,
    routing: &Routing,
) -> String {
    let mut out = format!(
        "L7 hop: client (node 0) → backends b1/b2 (node 1), through a waypoint or HAProxy on node 2; {secs} s per measurement, median of {rounds} rounds (each round runs every load over every route, round-robin); ratio = route / direct\n\n| metric |"
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
    waypoints_section(&mut out, results, routing);
    let figures: Vec<(Route, &Figures)> = results.iter().map(|(r, x)| (*r, &x.figures)).collect();
    let _ = write!(
        out,
        "\nThe waypoint against its goals, from the column through {bare} (same run; CPU at the fixed {FIXED_RATE} req/s, from /proc/<pid>/stat over the interval; RSS at the same fixed rate, the load the goal is stated for; under 64 connections it is the row above). Reported, not enforced:\n\n| figure | this run | goal | within goal |\n|---|---|---|---|\n",
        bare = Waypoint::Bare.gateway(),
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
    routing_section(&mut out, results, routing);
    policies_section(&mut out, results);
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
    use crate::bench::l7::observed::ViewHeld;

    fn figures(pairs: &[(Row, f64)]) -> Figures {
        pairs.iter().copied().collect()
    }

    /// A route measured once per entry of `measurements`, with its
    /// medians.
    fn result(measurements: Vec<Figures>) -> RouteResult {
        let mut samples = crate::bench::stats::Samples::default();
        for f in &measurements {
            samples.add(f.clone());
        }
        RouteResult {
            figures: samples.medians(),
            measurements,
            steal: None,
        }
    }

    fn view(build_us: u64, services: u64) -> ViewBuilt {
        ViewBuilt {
            build_us,
            pods: 11,
            services,
            endpoint_slices: 3,
            namespaces: 1,
            authorization_policies: 0,
        }
    }

    fn routing(taken: Vec<RuleCount>) -> Routing {
        let views = |rss: f64| Views {
            without_routes: ViewHeld {
                view: view(850, 102),
                rss_mib: rss - 4.8,
                anon_mib: 6.5,
            },
            with_routes: ViewHeld {
                view: view(4321, 102),
                rss_mib: rss,
                anon_mib: 11.3,
            },
        };
        Routing {
            views: vec![
                (Waypoint::Bare, views(18.5)),
                (Waypoint::Shared, views(24.0)),
            ],
            taken,
        }
    }

    /// The fixed-rate figures of one round: CPU %, achieved rate, p99.
    fn fixed(cpu: f64, rate: f64, p99: f64) -> Figures {
        figures(&[
            (Row::HopCpuFixed, cpu),
            (Row::FixedAchieved, rate),
            (Row::FixedP99, p99),
        ])
    }

    #[test]
    fn each_waypoint_column_names_its_waypoint_and_its_memory_before_load() {
        let results: Vec<(Route, RouteResult)> = Route::ALL
            .iter()
            .map(|r| (*r, result(vec![fixed(10.0, 1000.0, 2000.0)])))
            .collect();
        let out = table(&results, 2, 1, &routing(Vec::new()));
        let section = out
            .split_once("\nThe waypoints (both on node 2")
            .map(|(_, rest)| rest)
            .unwrap_or_else(|| panic!("{out}"));
        let rows: Vec<&str> = section
            .lines()
            .filter(|l| l.starts_with("| through"))
            .collect();
        assert_eq!(
            rows,
            [
                "| through the waypoint | wp-bare | web-wp | 102 Services, 11 pods, 3 EndpointSlices, 1 namespaces, 0 AuthorizationPolicies | 18.5 | 11.3 |",
                "| through the waypoint, 1,000 routes | wp | web-routes, 99 routed-NN, web-policy | 102 Services, 11 pods, 3 EndpointSlices, 1 namespaces, 0 AuthorizationPolicies | 24.0 | 11.3 |",
                "| through the waypoint, policies in force | wp | web-routes, 99 routed-NN, web-policy | 102 Services, 11 pods, 3 EndpointSlices, 1 namespaces, 0 AuthorizationPolicies | 24.0 | 11.3 |",
            ],
            "{out}"
        );
        assert!(
            out.contains("The waypoint against its goals, from the column through wp-bare"),
            "{out}"
        );
        // A waypoint whose views were not read has dashes, not figures.
        let only_shared = Routing {
            views: vec![(Waypoint::Shared, routing(Vec::new()).views.remove(1).1)],
            taken: Vec::new(),
        };
        let out = table(&results, 2, 1, &only_shared);
        assert!(
            out.contains("| through the waypoint | wp-bare | web-wp | – | – | – |\n"),
            "{out}"
        );
    }

    #[test]
    fn counts_are_written_with_thousands_separators() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1000), "1,000");
        assert_eq!(thousands(1234567), "1,234,567");
    }

    #[test]
    fn routes_cost_with_against_without_from_the_same_rounds() {
        let results = vec![
            (
                Route::Waypoint,
                result(vec![
                    fixed(10.0, 1000.0, 2000.0),
                    fixed(12.0, 1000.0, 2600.0),
                    fixed(11.0, 1000.0, 2200.0),
                ]),
            ),
            (
                Route::WaypointRoutes,
                result(vec![
                    fixed(11.0, 1000.0, 2900.0),
                    fixed(13.0, 1000.0, 3100.0),
                    fixed(12.0, 1000.0, 3000.0),
                ]),
            ),
        ];
        let c = route_cost(&results);
        assert_eq!(c.len(), 2);
        let close = |a: f64, b: f64| (a - b).abs() < 1e-9;
        // CPU: 11 % and 12 % at 1000 req/s, rounds 10–12 % and 11–13 %.
        assert_eq!(c[0].label, "waypoint CPU per 1000 req/s (vCPU)");
        assert!(close(c[0].without.median.unwrap(), 0.11));
        assert!(close(c[0].with.median.unwrap(), 0.12));
        let (lo, hi, n) = c[0].with.range.unwrap();
        assert!(close(lo, 0.11) && close(hi, 0.13) && n == 3, "{:?}", c[0]);
        assert!(close(c[0].ratio().unwrap(), 0.12 / 0.11));
        assert_eq!(c[0].rounds_overlap(), Some(true));
        // p99: 2200 against 3000, rounds 2000–2600 and 2900–3100.
        assert_eq!(c[1].label, Row::FixedP99.label());
        assert_eq!(c[1].without.median, Some(2200.0));
        assert_eq!(c[1].with.median, Some(3000.0));
        assert_eq!(c[1].without.range, Some((2000.0, 2600.0, 3)));
        assert_eq!(c[1].rounds_overlap(), Some(false));
    }

    #[test]
    fn one_round_has_no_spread_and_a_missing_route_no_figures() {
        let results = vec![
            (Route::Waypoint, result(vec![fixed(10.0, 1000.0, 2000.0)])),
            (
                Route::WaypointRoutes,
                result(vec![fixed(10.0, 1000.0, 2000.0)]),
            ),
        ];
        let c = route_cost(&results);
        assert_eq!(c[1].ratio(), Some(1.0));
        assert_eq!(c[1].rounds_overlap(), None, "one round each: no spread");
        let only_one = vec![(Route::Waypoint, result(vec![fixed(10.0, 1000.0, 2000.0)]))];
        let c = route_cost(&only_one);
        assert_eq!(c[0].with.median, None);
        assert_eq!(c[0].with.range, None);
        assert_eq!(c[0].ratio(), None);
        assert_eq!(c[0].rounds_overlap(), None);
        // A round whose rate is missing gives that round no CPU figure.
        let gap = vec![(
            Route::WaypointRoutes,
            result(vec![
                fixed(10.0, 1000.0, 2000.0),
                figures(&[(Row::HopCpuFixed, 50.0)]),
            ]),
        )];
        assert_eq!(route_cost(&gap)[0].with.range.map(|r| r.2), Some(1));
    }

    #[test]
    fn the_routing_section_gives_both_figures_the_build_times_and_the_rules_taken() {
        let results = vec![
            (
                Route::Waypoint,
                result(vec![
                    fixed(10.0, 1000.0, 2000.0),
                    fixed(12.0, 1000.0, 2600.0),
                ]),
            ),
            (
                Route::WaypointRoutes,
                result(vec![
                    fixed(11.0, 1000.0, 2900.0),
                    fixed(13.0, 1000.0, 3100.0),
                ]),
            ),
        ];
        let taken = vec![
            RuleCount {
                route: "default/web-routes-bytes".into(),
                rule: "bytes".into(),
                requests: 1998.0,
            },
            RuleCount {
                route: String::new(),
                rule: String::new(),
                requests: 2.0,
            },
        ];
        let out = table(&results, 2, 2, &routing(taken));
        assert!(
            out.contains("| metric | through the waypoint | ratio | through the waypoint, 1,000 routes | ratio |\n"),
            "{out}"
        );
        assert!(
            out.contains(
                "| figure | without routes | with 1,000 routes | with / without | rounds overlap |\n"
            ),
            "{out}"
        );
        assert!(
            out.contains("they take default/web-routes-bytes rule bytes, which the precedence tries after 6 others"),
            "{out}"
        );
        assert!(
            out.contains("| waypoint CPU per 1000 req/s (vCPU) | 0.110 (0.100–0.120) | 0.120 (0.110–0.130) | 1.09× | yes |\n"),
            "{out}"
        );
        assert!(
            out.contains("| latency at 1000 req/s p99 (us) | 2300 (2000–2600) | 3000 (2900–3100) | 1.30× | no |\n"),
            "{out}"
        );
        assert!(
            out.contains("view with the 1,000 routes in 4.32 ms (102 Services, 11 pods, 3 EndpointSlices, 1 namespaces, 0 AuthorizationPolicies), and the same view without them in 0.85 ms (102 Services,"),
            "{out}"
        );
        assert!(
            out.contains(
                "RSS (RssAnon): 24.0 MiB (11.3 MiB) with the routes, 19.2 MiB (6.5 MiB) without.\n"
            ),
            "{out}"
        );
        assert!(
            out.contains("by the rule that took them (the waypoint's istio_requests_total): default/web-routes-bytes rule bytes: 1998 (99.9 %), no route rule –: 2 (0.1 %).\n"),
            "{out}"
        );
        let out = table(&results, 2, 2, &routing(Vec::new()));
        assert!(
            out.contains("The waypoint counted no request to web-routes."),
            "{out}"
        );
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
        let policed = figures(&[(Row::FixedAchieved, 1000.0), (Row::HopCpuFixed, 6.3)]);
        let g = goals(&[
            (Route::L4Mesh, &l4),
            (Route::Waypoint, &wp),
            (Route::WaypointPolicies, &policed),
            (Route::Haproxy, &hap),
        ]);
        let values: Vec<Option<f64>> = g.iter().map(|g| g.value).collect();
        let close = |a: Option<f64>, b: f64| (a.unwrap() - b).abs() < 1e-9;
        // 6 % of a CPU at 1000 req/s is 0.06 vCPU per 1000 req/s.
        assert!(close(values[0], 0.06), "{values:?}");
        // At the fixed rate, not the 64-connection load's 14.0.
        assert!(close(values[1], 12.5), "{values:?}");
        assert!(close(values[2], 0.4), "{values:?}");
        // 0.06/1000 per request against HAProxy's 0.032/800 = 0.04/1000.
        assert!(close(values[3], 1.5), "{values:?}");
        // 6.3 % against 6 % of a CPU at the same rate.
        assert!(close(values[4], 1.05), "{values:?}");
        assert_eq!(
            g.iter().map(|g| g.limit).collect::<Vec<_>>(),
            [0.08, 20.0, 0.5, 1.5, 1.1]
        );
    }

    #[test]
    fn a_goal_without_its_figures_has_no_value() {
        let wp = figures(&[(Row::HopRss64Conns, 9.0)]);
        let g = goals(&[(Route::Waypoint, &wp)]);
        assert_eq!(g[0].value, None);
        // The 64-connection load's RSS is not the goal's condition.
        assert_eq!(g[1].value, None);
        assert_eq!(g[2].value, None);
        assert_eq!(g[3].value, None);
        assert_eq!(g[4].value, None);
    }

    #[test]
    fn the_policies_section_sets_policies_in_force_beside_none() {
        let results = vec![
            (
                Route::Waypoint,
                result(vec![
                    fixed(10.0, 1000.0, 2000.0),
                    fixed(12.0, 1000.0, 2600.0),
                ]),
            ),
            (
                Route::WaypointPolicies,
                result(vec![
                    fixed(10.5, 1000.0, 2100.0),
                    fixed(12.5, 1000.0, 2500.0),
                ]),
            ),
        ];
        let out = table(&results, 2, 2, &routing(Vec::new()));
        assert!(
            out.contains("requests to web-policy (an AuthorizationPolicy of 100 ALLOW rules"),
            "{out}"
        );
        assert!(
            out.contains("| figure | nothing in force | policies in force | with / without | rounds overlap |\n"),
            "{out}"
        );
        assert!(
            out.contains("| waypoint CPU per 1000 req/s (vCPU) | 0.110 (0.100–0.120) | 0.115 (0.105–0.125) | 1.05× | yes |\n"),
            "{out}"
        );
        assert!(
            out.contains(
                "| CPU per request, policies in force / none (×) | 1.045 × | ≤ 1.1 × | yes |\n"
            ),
            "{out}"
        );
    }

    #[test]
    fn the_table_has_a_column_per_route_ratios_to_direct_and_the_goals() {
        let results = vec![
            (
                Route::Direct,
                RouteResult {
                    figures: figures(&[(Row::H1Rate1Conn, 4000.0)]),
                    measurements: vec![figures(&[(Row::H1Rate1Conn, 4000.0)])],
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
                    measurements: Vec::new(),
                    steal: None,
                },
            ),
        ];
        let out = table(&results, 5, 3, &routing(Vec::new()));
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
            out.contains("| waypoint RSS at 1000 req/s (MiB) | – | ≤ 20 MiB | – |\n"),
            "{out}"
        );
        assert!(
            out.contains("steal while each route was measured: direct 0.5 %."),
            "{out}"
        );
    }
}
