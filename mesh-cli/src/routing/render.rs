//! The routes of a Service and a request's answer, as text for people.
use crate::output;

use super::{
    answer::{Action, Answer, Outcome},
    describe::BackendView,
    tables::{RuleRow, ServiceRoutes},
};

/// The ROUTES sections of `mesh inspect <namespace>/<service>`.
pub fn service_routes(r: &ServiceRoutes) -> String {
    let mut out = String::from("ROUTES (HTTPRoute, GRPCRoute)\n");
    if r.routes.is_empty() {
        out.push_str("none attached: requests go to the Service's own endpoints\n");
        return out;
    }
    let mut rows = Vec::new();
    for route in &r.routes {
        for p in &route.parents {
            rows.push(vec![
                route.route.clone(),
                route.kind.to_owned(),
                p.parent.clone(),
                p.accepted.to_string(),
                p.resolved_refs.to_string(),
            ]);
        }
    }
    out.push_str(&output::table(
        &["ROUTE", "KIND", "PARENT", "ACCEPTED", "RESOLVED REFS"],
        &rows,
    ));
    for route in &r.routes {
        for why in &route.left_out {
            out.push_str(&format!(
                "note: {} {} is left out of {why}; HTTPRoutes and GRPCRoutes cannot share a Service port, and GRPCRoutes take it\n",
                route.kind, route.route
            ));
        }
    }
    for port in &r.ports {
        for t in &port.tables {
            let name = if port.name.is_empty() {
                String::new()
            } else {
                format!(" ({})", port.name)
            };
            out.push_str(&format!(
                "\nPORT {}{name}: {}, first match wins\n",
                port.port, t.audience
            ));
            out.push_str(&output::table(
                &[
                    "#", "ROUTE", "RULE", "MATCH", "FILTERS", "BACKENDS", "TIMEOUTS", "RETRY",
                ],
                &t.rules.iter().map(rule_row).collect::<Vec<_>>(),
            ));
        }
    }
    out
}

fn rule_name(rule: usize, name: Option<&str>) -> String {
    match name {
        Some(n) => format!("{rule} ({n})"),
        None => rule.to_string(),
    }
}

fn dash_if_empty(s: String) -> String {
    if s.is_empty() { "-".into() } else { s }
}

fn backends_cell(backends: &[BackendView], redirects: bool) -> String {
    if redirects {
        return "- (redirects)".into();
    }
    if backends.iter().all(|b| b.weight == 0) {
        return "none: 500".into();
    }
    backends
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

fn rule_row(r: &RuleRow) -> Vec<String> {
    vec![
        r.order.to_string(),
        r.route.clone(),
        rule_name(r.rule, r.name.as_deref()),
        r.matches.to_string(),
        dash_if_empty(
            r.filters
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("; "),
        ),
        backends_cell(&r.backends, r.redirects),
        r.timeouts
            .as_ref()
            .map_or_else(|| "-".into(), ToString::to_string),
        r.retry
            .as_ref()
            .map_or_else(|| "-".into(), ToString::to_string),
    ]
}

/// The answer to `--request`.
pub fn answer(a: &Answer) -> String {
    let mut out = format!("request: {}\n", a.request);
    out.push_str(&format!(
        "to: {} port {}, from namespace {}\n",
        a.service, a.port, a.from
    ));
    if let Some(t) = &a.table {
        out.push_str(&format!("routed by: {t}\n"));
    }
    match &a.outcome {
        Outcome::NoRoutes { endpoints } => {
            let eps: Vec<String> = endpoints.iter().map(ToString::to_string).collect();
            out.push_str(&format!(
                "no routes: the Service's own endpoints ({})\n",
                if eps.is_empty() {
                    "none ready".into()
                } else {
                    eps.join(", ")
                }
            ));
        }
        Outcome::NoMatch { status } => {
            out.push_str(&format!("no rule matches: {status}\n"));
        }
        Outcome::Matched(m) => {
            out.push_str(&format!(
                "matched: {} {} rule {}, match {}: {} (tried {} in the table)\n",
                m.kind,
                m.route,
                rule_name(m.rule, m.name.as_deref()),
                m.match_index,
                m.matches,
                ordinal(m.order),
            ));
            for f in &m.filters {
                out.push_str(&format!("filter: {f}\n"));
            }
            match &m.action {
                Action::Redirect { status, location } => {
                    out.push_str(&format!("redirect: {status} location {location}\n"));
                }
                Action::NoBackend { status } => {
                    out.push_str(&format!(
                        "no backend: {status} (the rule has no backendRef of weight above 0)\n"
                    ));
                }
                Action::InvalidRule { status, problem } => {
                    out.push_str(&format!("rule cannot be applied: {status} ({problem})\n"));
                }
                Action::Forward {
                    path,
                    authority,
                    headers,
                    backends,
                } => {
                    out.push_str(&format!("forwarded with path: {path}"));
                    if let Some(a) = authority {
                        out.push_str(&format!(", authority: {a}"));
                    }
                    out.push('\n');
                    if !headers.is_empty() {
                        out.push_str("and headers:\n");
                    }
                    for h in headers {
                        out.push_str(&format!("  {}: {}\n", h.name, h.value));
                    }
                    out.push_str("to one of (by weight):\n");
                    for b in backends {
                        out.push_str(&format!("  {}\n", b.explained()));
                    }
                }
            }
            if let Some(t) = &m.timeouts {
                out.push_str(&format!("timeouts: {t}\n"));
            }
            if let Some(r) = &m.retry {
                out.push_str(&format!("retry: {r}\n"));
            }
        }
    }
    out
}

/// 1st, 2nd, 3rd, 4th, 11th, 21st.
fn ordinal(n: usize) -> String {
    let suffix = match (n % 10, n % 100) {
        (_, 11..=13) => "th",
        (1, _) => "st",
        (2, _) => "nd",
        (3, _) => "rd",
        _ => "th",
    };
    format!("{n}{suffix}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::routing::{
        answer::MatchedRule,
        describe::{MatchView, PathView},
        tables::Audience,
    };

    fn answer(outcome: Outcome) -> Answer {
        Answer {
            service: "shop/web".into(),
            port: 8080,
            from: "client".into(),
            request: "GET /a".into(),
            table: Some(Audience::Consumer {
                namespace: "client".into(),
            }),
            outcome,
        }
    }

    fn matched(action: Action) -> Outcome {
        Outcome::Matched(Box::new(MatchedRule {
            route: "client/r".into(),
            kind: "HTTPRoute",
            rule: 2,
            name: None,
            match_index: 1,
            order: 12,
            matches: MatchView::Http {
                path: PathView {
                    kind: "Exact",
                    value: "/a".into(),
                },
                method: None,
                headers: vec![],
                query: vec![],
            },
            filters: vec![],
            action,
            timeouts: None,
            retry: None,
        }))
    }

    #[test]
    fn each_outcome_reads_as_one_answer() {
        let head = "request: GET /a\n\
                    to: shop/web port 8080, from namespace client\n\
                    routed by: consumer routes of namespace client, for its clients only\n";
        let matched_line =
            "matched: HTTPRoute client/r rule 2, match 1: Exact /a (tried 12th in the table)\n";
        assert_eq!(
            super::answer(&answer(Outcome::NoMatch { status: 404 })),
            format!("{head}no rule matches: 404\n")
        );
        assert_eq!(
            super::answer(&answer(matched(Action::NoBackend { status: 500 }))),
            format!(
                "{head}{matched_line}no backend: 500 (the rule has no backendRef of weight above 0)\n"
            )
        );
        assert_eq!(
            super::answer(&answer(matched(Action::Redirect {
                status: 302,
                location: "https://x/b".into()
            }))),
            format!("{head}{matched_line}redirect: 302 location https://x/b\n")
        );
        let mut none = answer(Outcome::NoRoutes { endpoints: vec![] });
        none.table = None;
        assert_eq!(
            super::answer(&none),
            "request: GET /a\nto: shop/web port 8080, from namespace client\n\
             no routes: the Service's own endpoints (none ready)\n"
        );
    }

    #[test]
    fn ordinals() {
        let got: Vec<String> = [1, 2, 3, 4, 11, 12, 13, 21, 22, 101, 111]
            .into_iter()
            .map(ordinal)
            .collect();
        assert_eq!(
            got,
            [
                "1st", "2nd", "3rd", "4th", "11th", "12th", "13th", "21st", "22nd", "101st",
                "111th"
            ]
        );
    }
}
