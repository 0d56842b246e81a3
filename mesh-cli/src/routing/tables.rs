//! A Service's routes as `mesh inspect` lists them: each attached route with
//! its conditions, then for each port with routes the producer table (for
//! clients in every namespace without routes of their own) and each
//! consumer namespace's table (for that namespace's clients only), every
//! match in the order the matcher tries it (`RouteTable::order`).
use mesh_discovery::view::{MeshView, ServiceRoute};
use mesh_route::{RouteTable, compile::Filter};
use serde::Serialize;

use super::{
    describe::{BackendView, FilterView, MatchView, RetryView, TimeoutsView},
    refs,
    status::{self, RouteStatus},
};

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ServiceRoutes {
    /// Every route attached to a port of the Service, oldest first.
    pub routes: Vec<RouteStatus>,
    /// Ports with routes, by number.
    pub ports: Vec<PortTables>,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct PortTables {
    pub port: u16,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub name: String,
    pub tables: Vec<TableRows>,
}

/// Whose clients a table routes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "audience", rename_all = "camelCase")]
pub enum Audience {
    /// Routes in the Service's namespace: every client whose namespace has
    /// no routes of its own for this port.
    Producer,
    /// Routes in `namespace`: its clients only.
    Consumer { namespace: String },
}

impl std::fmt::Display for Audience {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Audience::Producer => f.write_str(
                "producer routes, for clients in every namespace without routes of its own",
            ),
            Audience::Consumer { namespace } => write!(
                f,
                "consumer routes of namespace {namespace}, for its clients only"
            ),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct TableRows {
    #[serde(flatten)]
    pub audience: Audience,
    /// In the order they are tried; the first that matches takes the request.
    pub rules: Vec<RuleRow>,
}

/// One match of one rule, at its place in the table.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RuleRow {
    /// 1 is tried first.
    pub order: usize,
    pub route: String,
    pub rule: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Which of the rule's matches this row is.
    pub match_index: usize,
    #[serde(rename = "match")]
    pub matches: MatchView,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub filters: Vec<FilterView>,
    pub backends: Vec<BackendView>,
    /// The rule answers with a redirect: its backends are never used.
    pub redirects: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timeouts: Option<TimeoutsView>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retry: Option<RetryView>,
}

pub fn service_routes(view: &MeshView, svc: &ServiceRoute) -> ServiceRoutes {
    let key = svc.service.key();
    let cluster = status::cluster(view);
    let routes = view
        .routes
        .of_service(&key)
        .iter()
        .map(|r| status::route_status(view, &cluster, &svc.service, r))
        .collect();
    let mut numbers: Vec<(u16, &str)> = svc
        .service
        .ports
        .iter()
        .map(|p| (p.port, p.name.as_str()))
        .collect();
    numbers.sort();
    let ports = numbers
        .into_iter()
        .filter_map(|(port, name)| {
            let routes = view.routes.port(&key, port)?;
            let mut tables = Vec::new();
            if !routes.producer.routes().is_empty() {
                tables.push(table_rows(view, Audience::Producer, &routes.producer));
            }
            for (namespace, table) in &routes.consumers {
                let audience = Audience::Consumer {
                    namespace: namespace.clone(),
                };
                tables.push(table_rows(view, audience, table));
            }
            Some(PortTables {
                port,
                name: name.to_owned(),
                tables,
            })
        })
        .collect();
    ServiceRoutes { routes, ports }
}

pub fn table_rows(view: &MeshView, audience: Audience, table: &RouteTable) -> TableRows {
    let rules = table
        .order()
        .enumerate()
        .filter_map(|(i, (id, rule_index, match_index))| {
            let route = table.routes().iter().find(|r| r.id == *id)?;
            let rule = route.rules.iter().find(|r| r.index == rule_index)?;
            Some(RuleRow {
                order: i + 1,
                route: id.to_string(),
                rule: rule_index,
                name: rule.name.clone(),
                match_index,
                matches: MatchView::of(rule, match_index)?,
                filters: FilterView::list(&rule.filters),
                backends: BackendView::list(&rule.backends, |b| {
                    refs::problem(view, &b.target).map(|p| p.unresolved())
                }),
                redirects: rule
                    .filters
                    .iter()
                    .any(|f| matches!(f, Filter::Redirect(_))),
                timeouts: TimeoutsView::of(&rule.timeouts),
                retry: rule.retry.as_ref().map(RetryView::of),
            })
        })
        .collect();
    TableRows { audience, rules }
}
