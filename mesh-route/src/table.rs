//! Every rule attached to one Service port, in Gateway API's order of
//! precedence. Each match is ranked on its own (a rule's matches are ORed,
//! and one of them may outrank another rule while its sibling does not).

use std::{
    cmp::{Ordering, Reverse},
    sync::Arc,
};

use crate::compile::{
    CompiledRoute, GrpcMatch, GrpcMethodMatch, HttpMatch, Matches, PathMatch, RouteId, RouteKind,
};
use crate::spec::ParentRef;

/// The Service port routes attach to (GAMMA's parent).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServicePort {
    pub namespace: String,
    pub name: String,
    pub port: u16,
    /// The port's name, which a parentRef's sectionName may give instead of
    /// (or besides) the number.
    pub port_name: Option<String>,
}

impl ServicePort {
    /// Whether `parent`, written in a route of namespace `route_namespace`,
    /// refers to this port (no port and no sectionName: every port).
    pub fn is_parent(&self, route_namespace: &str, parent: &ParentRef) -> bool {
        let core = parent.group.is_empty() || parent.group == "core";
        let namespace = parent.namespace.as_deref().unwrap_or(route_namespace);
        let port = parent.port.is_none_or(|p| p == i64::from(self.port));
        let section = match &parent.section_name {
            None => true,
            Some(s) => self.port_name.as_deref() == Some(s.as_str()),
        };
        core && parent.kind == "Service"
            && parent.name == self.name
            && namespace == self.namespace
            && port
            && section
    }

    pub fn is_attached(&self, route: &CompiledRoute) -> bool {
        route
            .parents
            .iter()
            .any(|p| self.is_parent(&route.id.namespace, p))
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Entry {
    pub(crate) route: usize,
    pub(crate) rule: usize,
    pub(crate) matched: usize,
}

#[derive(Clone, Debug, Default)]
pub struct RouteTable {
    /// Shared with the store and with the other ports' tables: a route
    /// attached to many ports is held once.
    pub(crate) routes: Vec<Arc<CompiledRoute>>,
    pub(crate) entries: Vec<Entry>,
    conflicts: Vec<RouteId>,
}

impl RouteTable {
    /// The table of `port` from every compiled route, keeping those attached
    /// to it. See [`RouteTable::new`] for routes of both kinds.
    pub fn for_port(
        port: &ServicePort,
        routes: impl IntoIterator<Item = CompiledRoute>,
    ) -> RouteTable {
        RouteTable::new(routes.into_iter().filter(|r| port.is_attached(r)))
    }

    /// The table of the given routes, all attached to one port. HTTPRoutes
    /// and GRPCRoutes on one port conflict: GEP-1426 ranks the kinds
    /// (GRPCRoute over HTTPRoute, whatever their age), so with any
    /// GRPCRoute the HTTPRoutes are left out and listed by
    /// [`RouteTable::conflicts`] for their status (`Conflicted`).
    pub fn new<R: Into<Arc<CompiledRoute>>>(routes: impl IntoIterator<Item = R>) -> RouteTable {
        let mut routes: Vec<Arc<CompiledRoute>> = routes.into_iter().map(Into::into).collect();
        routes.sort_by(|a, b| route_order(a, b));
        let mut conflicts = Vec::new();
        let kind = if routes.iter().any(|r| r.kind == RouteKind::Grpc) {
            Some(RouteKind::Grpc)
        } else {
            routes.first().map(|r| r.kind)
        };
        if let Some(kind) = kind {
            routes.retain(|r| {
                let keep = r.kind == kind;
                if !keep {
                    conflicts.push(r.id.clone());
                }
                keep
            });
        }
        let mut entries = Vec::new();
        for (route, r) in routes.iter().enumerate() {
            for (rule, rl) in r.rules.iter().enumerate() {
                let count = match &rl.matches {
                    Matches::Http(m) => m.len(),
                    Matches::Grpc(m) => m.len(),
                };
                entries.extend((0..count).map(|matched| Entry {
                    route,
                    rule,
                    matched,
                }));
            }
        }
        // Stable: ties keep route order (oldest, then namespace/name), then
        // rule order, then match order.
        entries.sort_by(|a, b| {
            match (
                &routes[a.route].rules[a.rule].matches,
                &routes[b.route].rules[b.rule].matches,
            ) {
                (Matches::Http(x), Matches::Http(y)) => {
                    http_rank(&y[b.matched]).cmp(&http_rank(&x[a.matched]))
                }
                (Matches::Grpc(x), Matches::Grpc(y)) => {
                    grpc_rank(&y[b.matched]).cmp(&grpc_rank(&x[a.matched]))
                }
                _ => Ordering::Equal,
            }
        });
        RouteTable {
            routes,
            entries,
            conflicts,
        }
    }

    pub fn kind(&self) -> Option<RouteKind> {
        self.routes.first().map(|r| r.kind)
    }

    pub fn routes(&self) -> &[Arc<CompiledRoute>] {
        &self.routes
    }

    /// HTTPRoutes left out because a GRPCRoute holds the port (GEP-1426).
    pub fn conflicts(&self) -> &[RouteId] {
        &self.conflicts
    }

    /// (route, rule index, match index) in the order they are tried.
    pub fn order(&self) -> impl Iterator<Item = (&RouteId, usize, usize)> {
        self.entries.iter().map(|e| {
            (
                &self.routes[e.route].id,
                self.routes[e.route].rules[e.rule].index,
                e.matched,
            )
        })
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// Oldest first (a route without a timestamp after every dated one), then
/// `{namespace}/{name}` alphabetically.
pub fn route_order(a: &CompiledRoute, b: &CompiledRoute) -> Ordering {
    let created = |r: &CompiledRoute| (r.created.is_none(), r.created);
    created(a).cmp(&created(b)).then_with(|| a.id.cmp(&b.id))
}

/// Greater ranks first. The spec orders Exact, then the longest PathPrefix;
/// a RegularExpression's place is left to implementations: it goes between
/// the two (longer pattern first), since it is more specific than a prefix
/// of the same text but cannot be compared with an exact path.
fn http_rank(m: &HttpMatch) -> (u8, usize, bool, usize, usize) {
    let (class, len) = match &m.path {
        PathMatch::Exact(p) => (2, p.len()),
        PathMatch::Regex(p) => (1, p.source().len()),
        PathMatch::Prefix(p) => (0, p.len()),
    };
    (
        class,
        len,
        m.method.is_some(),
        m.headers.len(),
        m.query.len(),
    )
}

/// GRPCRoute's order: the most characters in the service, then in the
/// method, then the most header matches. Between equal lengths, an exact
/// method match goes before a regular expression.
fn grpc_rank(m: &GrpcMatch) -> (usize, usize, Reverse<bool>, usize) {
    let (service, method, regex) = match &m.method {
        None => (0, 0, false),
        Some(GrpcMethodMatch::Exact { service, method }) => (
            service.as_deref().map_or(0, str::len),
            method.as_deref().map_or(0, str::len),
            false,
        ),
        Some(GrpcMethodMatch::Regex { service, method }) => (
            service.as_ref().map_or(0, |p| p.source().len()),
            method.as_ref().map_or(0, |p| p.source().len()),
            true,
        ),
    };
    (service, method, Reverse(regex), m.headers.len())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compile::{compile_grpc_route, compile_http_route};

    fn http(name: &str, created: Option<&str>, spec: &str) -> CompiledRoute {
        let created = created.map_or(String::new(), |c| format!(r#","creationTimestamp":"{c}""#));
        let text = format!(
            r#"{{"metadata":{{"name":"{name}","namespace":"ns"{created}}},"spec":{spec}}}"#
        );
        compile_http_route(&serde_json::from_str(&text).unwrap()).unwrap()
    }

    fn grpc(name: &str, created: Option<&str>, spec: &str) -> CompiledRoute {
        let created = created.map_or(String::new(), |c| format!(r#","creationTimestamp":"{c}""#));
        let text = format!(
            r#"{{"metadata":{{"name":"{name}","namespace":"ns"{created}}},"spec":{spec}}}"#
        );
        compile_grpc_route(&serde_json::from_str(&text).unwrap()).unwrap()
    }

    fn order(t: &RouteTable) -> Vec<String> {
        t.order()
            .map(|(id, rule, m)| format!("{}:{rule}:{m}", id.name))
            .collect()
    }

    #[test]
    fn each_match_is_ranked_by_http_precedence() {
        let r = http(
            "r",
            None,
            r#"{"rules":[
              {"matches":[{"path":{"value":"/a"}},{"path":{"type":"Exact","value":"/a"}}]},
              {"matches":[{"path":{"value":"/a/b"}},{"path":{"value":"/a"},"method":"GET"}]},
              {"matches":[{"path":{"value":"/a"},"headers":[{"name":"x","value":"1"},{"name":"y","value":"1"}]},
                          {"path":{"value":"/a"},"headers":[{"name":"x","value":"1"}],"queryParams":[{"name":"q","value":"1"}]},
                          {"path":{"value":"/a"},"headers":[{"name":"x","value":"1"}]},
                          {"path":{"type":"RegularExpression","value":"/a.*"}}]}]}"#,
        );
        let t = RouteTable::new(vec![r]);
        assert_eq!(
            order(&t),
            [
                "r:0:1", // Exact
                "r:2:3", // RegularExpression
                "r:1:0", // longest prefix
                "r:1:1", // method
                "r:2:0", // two headers
                "r:2:1", // one header and a query parameter
                "r:2:2", // one header
                "r:0:0", // the bare prefix
            ]
        );
    }

    #[test]
    fn ties_go_to_the_oldest_route_then_by_name() {
        let spec = r#"{"rules":[{"matches":[{"path":{"value":"/a"}}]}]}"#;
        let routes = vec![
            http("b-new", Some("2024-02-01T00:00:00Z"), spec),
            http("undated", None, spec),
            http("z-old", Some("2024-01-01T00:00:00Z"), spec),
            http("a-new", Some("2024-02-01T00:00:00Z"), spec),
        ];
        let t = RouteTable::new(routes);
        assert_eq!(
            order(&t),
            ["z-old:0:0", "a-new:0:0", "b-new:0:0", "undated:0:0"]
        );
        // Precedence of the match beats age.
        let t = RouteTable::new(vec![
            http("old", Some("2020-01-01T00:00:00Z"), spec),
            http(
                "new",
                Some("2024-01-01T00:00:00Z"),
                r#"{"rules":[{"matches":[{"path":{"value":"/a/b"}}]}]}"#,
            ),
        ]);
        assert_eq!(order(&t), ["new:0:0", "old:0:0"]);
    }

    #[test]
    fn grpc_precedence() {
        let r = grpc(
            "g",
            None,
            r#"{"rules":[
              {},
              {"matches":[{"method":{"service":"pkg.Svc"}}]},
              {"matches":[{"method":{"service":"pkg.Svc","method":"Get"}}]},
              {"matches":[{"method":{"type":"RegularExpression","service":"pkg.Sv."}},
                          {"method":{"service":"pkg.Svc"},"headers":[{"name":"x","value":"1"}]},
                          {"method":{"method":"Get"}}]}]}"#,
        );
        let t = RouteTable::new(vec![r]);
        assert_eq!(t.kind(), Some(RouteKind::Grpc));
        assert_eq!(
            order(&t),
            ["g:2:0", "g:3:1", "g:1:0", "g:3:0", "g:3:2", "g:0:0"]
        );
    }

    #[test]
    fn a_grpc_route_wins_the_port_over_http_routes_whatever_their_age() {
        let t = RouteTable::new(vec![
            http("h", Some("2024-01-01T00:00:00Z"), "{}"),
            grpc("g", Some("2024-02-01T00:00:00Z"), "{}"),
        ]);
        assert_eq!(t.kind(), Some(RouteKind::Grpc));
        assert_eq!(
            t.conflicts(),
            [RouteId {
                namespace: "ns".into(),
                name: "h".into()
            }]
        );
        assert_eq!(order(&t), ["g:0:0"]);
        assert!(RouteTable::new(Vec::<CompiledRoute>::new()).is_empty());
    }

    #[test]
    fn attachment_to_a_service_port() {
        let port = ServicePort {
            namespace: "ns".into(),
            name: "echo".into(),
            port: 80,
            port_name: Some("http".into()),
        };
        let with = |parents: &str| http("r", None, &format!(r#"{{"parentRefs":{parents}}}"#));
        let attached = [
            r#"[{"group":"","kind":"Service","name":"echo"}]"#,
            r#"[{"group":"core","kind":"Service","name":"echo","port":80}]"#,
            r#"[{"group":"","kind":"Service","name":"echo","namespace":"ns","sectionName":"http"}]"#,
            r#"[{"name":"gw"},{"group":"","kind":"Service","name":"echo"}]"#,
        ];
        for p in attached {
            assert!(port.is_attached(&with(p)), "{p}");
        }
        let detached = [
            "[]",
            r#"[{"name":"echo"}]"#,
            r#"[{"group":"","kind":"Service","name":"echo","port":8080}]"#,
            r#"[{"group":"","kind":"Service","name":"echo","namespace":"other"}]"#,
            r#"[{"group":"","kind":"Service","name":"other"}]"#,
            r#"[{"group":"","kind":"Service","name":"echo","sectionName":"grpc"}]"#,
        ];
        for p in detached {
            assert!(!port.is_attached(&with(p)), "{p}");
        }
        let t = RouteTable::for_port(
            &port,
            [
                with(r#"[{"group":"","kind":"Service","name":"echo"}]"#),
                with(r#"[{"name":"echo"}]"#),
            ],
        );
        assert_eq!(t.routes().len(), 1);
    }
}
