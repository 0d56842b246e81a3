//! `mesh inspect <ns>/<service> --request ...`: which rule a request takes
//! and where it goes, decided by mesh-route's matcher over the same tables
//! the view gives the waypoint (`RouteTable::find`), with mesh-route's
//! redirect, rewrite and header functions computing what the rule does.
use std::net::SocketAddr;

use anyhow::{Context, bail};
use http::StatusCode;
use mesh_discovery::{model::Service, view::MeshView};
use mesh_route::{
    Request,
    compile::{Filter, Scheme},
    headers, redirect, rewrite,
};
use serde::Serialize;

use super::{
    describe::{BackendView, FilterView, HeaderPair, MatchView, RetryView, TimeoutsView},
    refs,
    request::RequestSpec,
    tables::Audience,
};

/// What was asked.
#[derive(Clone, Copy, Debug)]
pub struct Question<'a> {
    pub request: &'a RequestSpec,
    /// The Service port; `None`: the Service's only port.
    pub port: Option<u16>,
    /// The client's namespace; `None`: the Service's.
    pub from: Option<&'a str>,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Answer {
    pub service: String,
    pub port: u16,
    /// The client's namespace.
    pub from: String,
    pub request: String,
    /// The table the client's requests are routed by, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub table: Option<Audience>,
    pub outcome: Outcome,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "result", rename_all = "camelCase")]
pub enum Outcome {
    /// No route is attached for this client: the Service's own endpoints.
    NoRoutes {
        endpoints: Vec<SocketAddr>,
    },
    /// Routes are attached and none matches: the waypoint answers 404.
    NoMatch {
        status: u16,
    },
    Matched(Box<MatchedRule>),
}

#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct MatchedRule {
    pub route: String,
    pub kind: &'static str,
    pub rule: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Which of the rule's matches took the request, and its place in the
    /// table (1 is tried first).
    pub match_index: usize,
    pub order: usize,
    #[serde(rename = "match")]
    pub matches: MatchView,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub filters: Vec<FilterView>,
    #[serde(flatten)]
    pub action: Action,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timeouts: Option<TimeoutsView>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retry: Option<RetryView>,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "action", rename_all = "camelCase")]
pub enum Action {
    Redirect {
        status: u16,
        location: String,
    },
    /// Sent on to one of `backends` by weight, as the rule's filters leave
    /// it.
    Forward {
        path: String,
        #[serde(skip_serializing_if = "Option::is_none")]
        authority: Option<String>,
        headers: Vec<HeaderPair>,
        backends: Vec<BackendView>,
    },
    /// No backend, or every weight 0: the waypoint answers 500.
    NoBackend {
        status: u16,
    },
    /// The rule's filters or backends cannot be applied (a route from the
    /// API, kept with the rule marked): the waypoint answers 500.
    InvalidRule {
        status: u16,
        problem: String,
    },
}

/// The Service's port the question is about: the one given (which the
/// Service must have), else its only port.
pub fn choose_port(svc: &Service, given: Option<u16>) -> anyhow::Result<u16> {
    let listed = || {
        svc.ports
            .iter()
            .map(|p| match p.name.as_str() {
                "" => p.port.to_string(),
                name => format!("{} ({name})", p.port),
            })
            .collect::<Vec<_>>()
            .join(", ")
    };
    match given {
        Some(p) if svc.ports.iter().any(|sp| sp.port == p) => Ok(p),
        Some(p) => bail!(
            "--port {p}: Service {} has no such port; its ports: {}",
            svc.key(),
            listed()
        ),
        None => match svc.ports.as_slice() {
            [only] => Ok(only.port),
            [] => bail!("Service {} has no ports: nothing to route", svc.key()),
            _ => bail!(
                "Service {} has several ports: {}; name one with --port",
                svc.key(),
                listed()
            ),
        },
    }
}

/// Where the question's request goes.
pub fn answer(view: &MeshView, service: &str, q: Question<'_>) -> anyhow::Result<Answer> {
    let svc = view.service(service).with_context(|| {
        format!("{service}: no Service of that name; --request asks about a Service's routes")
    })?;
    let port = choose_port(&svc.service, q.port)?;
    let from = q.from.unwrap_or(&svc.service.namespace).to_owned();
    let mut answer = Answer {
        service: service.to_owned(),
        port,
        from: from.clone(),
        request: q.request.line(),
        table: None,
        outcome: Outcome::NoRoutes {
            endpoints: svc
                .port(port)
                .map(|p| p.endpoints.clone())
                .unwrap_or_default(),
        },
    };
    let Some(routes) = view.routes.port(service, port) else {
        return Ok(answer);
    };
    let Some(table) = routes.for_client(Some(&from)) else {
        return Ok(answer);
    };
    answer.table = Some(if routes.consumers.contains_key(&from) {
        Audience::Consumer {
            namespace: from.clone(),
        }
    } else {
        Audience::Producer
    });
    let req = q.request;
    let query = req.query_pairs();
    let request = Request {
        method: &req.method,
        path: &req.path,
        query: &query,
        headers: &req.headers,
    };
    let Some(found) = table.find(&request) else {
        answer.outcome = Outcome::NoMatch {
            status: StatusCode::NOT_FOUND.as_u16(),
        };
        return Ok(answer);
    };
    let route = table
        .routes()
        .iter()
        .find(|r| r.id == *found.route)
        .context("the matched route is not in its own table")?;
    let order = table
        .order()
        .position(|(id, rule, m)| {
            id == found.route && rule == found.rule_index() && m == found.match_index
        })
        .map_or(0, |i| i + 1);
    let host = req.host().map(str::to_owned).unwrap_or_else(|| {
        format!(
            "{}.{}.svc.cluster.local",
            svc.service.name, svc.service.namespace
        )
    });
    let action = if let Some(problem) = &found.rule.invalid {
        Action::InvalidRule {
            status: StatusCode::INTERNAL_SERVER_ERROR.as_u16(),
            problem: problem.to_string(),
        }
    } else if let Some(r) = found.filters().iter().find_map(|f| match f {
        Filter::Redirect(r) => Some(r),
        _ => None,
    }) {
        let to = redirect::redirect(
            r,
            found.prefix,
            &redirect::Original {
                scheme: Scheme::Http,
                host: &host,
                port,
                path: &req.path,
                query: req.query.as_deref(),
            },
        );
        Action::Redirect {
            status: to.status.as_u16(),
            location: to.location,
        }
    } else if found.backends().iter().all(|b| b.weight == 0) {
        Action::NoBackend {
            status: StatusCode::INTERNAL_SERVER_ERROR.as_u16(),
        }
    } else {
        let mut path = req.path.clone();
        let mut authority = None;
        let mut sent = req.headers.clone();
        for f in found.filters() {
            match f {
                Filter::Rewrite(r) => {
                    let done = rewrite::rewrite(r, found.prefix, &req.path);
                    if let Some(p) = done.path {
                        path = p;
                    }
                    authority = done.authority;
                }
                Filter::RequestHeaders(m) => headers::apply(m, &mut sent),
                _ => {}
            }
        }
        if let Some(q) = &req.query {
            path.push('?');
            path.push_str(q);
        }
        Action::Forward {
            path,
            authority,
            headers: sent
                .iter()
                .map(|(n, v)| HeaderPair {
                    name: n.to_string(),
                    value: String::from_utf8_lossy(v.as_bytes()).into_owned(),
                })
                .collect(),
            backends: BackendView::list(found.backends(), |b| {
                refs::problem(view, &b.target).map(|p| p.unresolved())
            }),
        }
    };
    answer.outcome = Outcome::Matched(Box::new(MatchedRule {
        route: found.route.to_string(),
        kind: route.kind.kind_name(),
        rule: found.rule_index(),
        name: found.rule_name().map(str::to_owned),
        match_index: found.match_index,
        order,
        matches: MatchView::of(found.rule, found.match_index)
            .context("the matched rule has no such match")?,
        filters: FilterView::list(found.filters()),
        action,
        timeouts: TimeoutsView::of(&found.rule.timeouts),
        retry: found.rule.retry.as_ref().map(RetryView::of),
    }));
    Ok(answer)
}
