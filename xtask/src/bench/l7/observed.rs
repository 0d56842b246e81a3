//! What the waypoint itself says about its routes: how long building its
//! view took (the "discovery view built" lines of its log) and which route
//! rule took the requests to a Service (its `istio_requests_total`).
use serde_json::Value;

const VIEW_BUILT: &str = "discovery view built";

/// One "discovery view built" line: how long the view took to build (all
/// of it: Services, endpoints, policies and route tables) and what it holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ViewBuilt {
    pub build_us: u64,
    pub pods: u64,
    pub services: u64,
    pub endpoint_slices: u64,
    pub namespaces: u64,
    pub authorization_policies: u64,
}

impl ViewBuilt {
    /// The last such line of a log (JSON lines), if any has every field.
    pub fn last(log: &[Value]) -> Option<ViewBuilt> {
        log.iter()
            .rev()
            .filter(|l| l["message"] == VIEW_BUILT)
            .find_map(|l| {
                let field = |name: &str| l[name].as_u64();
                Some(ViewBuilt {
                    build_us: field("build_us")?,
                    pods: field("pods")?,
                    services: field("services")?,
                    endpoint_slices: field("endpoint_slices")?,
                    namespaces: field("namespaces")?,
                    authorization_policies: field("authorization_policies")?,
                })
            })
    }
}

/// How many views a log says were built.
pub fn views_built(log: &[Value]) -> usize {
    log.iter().filter(|l| l["message"] == VIEW_BUILT).count()
}

/// A view the waypoint built, and the waypoint's memory once it held it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ViewHeld {
    pub view: ViewBuilt,
    pub rss_mib: f64,
    /// RssAnon: heap and stacks, without the binary's pages.
    pub anon_mib: f64,
}

/// The waypoint's views of the same Services and pods without the routes
/// and with them.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Views {
    pub without_routes: ViewHeld,
    pub with_routes: ViewHeld,
}

/// Requests that one route rule took.
#[derive(Debug, Clone, PartialEq)]
pub struct RuleCount {
    /// `<namespace>/<name>`; `default` for a Service without routes.
    pub route: String,
    pub rule: String,
    pub requests: f64,
}

/// Requests whose destination was Service `service` (by name), by the
/// route and rule that took them, the most first; from the
/// `istio_requests_total` samples of a Prometheus or OpenMetrics text.
pub fn requests_by_rule(exposition: &str, service: &str) -> Vec<RuleCount> {
    let mut counts: Vec<RuleCount> = Vec::new();
    for line in exposition.lines() {
        let Some(rest) = line.strip_prefix("istio_requests_total{") else {
            continue;
        };
        let Some((labels, value)) = rest.rsplit_once('}') else {
            continue;
        };
        let Some(requests) = value
            .split_whitespace()
            .next()
            .and_then(|v| v.parse::<f64>().ok())
        else {
            continue;
        };
        if label(labels, "destination_service_name") != Some(service) {
            continue;
        }
        let route = label(labels, "route_name").unwrap_or_default();
        let rule = label(labels, "route_rule").unwrap_or_default();
        match counts
            .iter_mut()
            .find(|c| c.route == route && c.rule == rule)
        {
            Some(c) => c.requests += requests,
            None => counts.push(RuleCount {
                route: route.to_owned(),
                rule: rule.to_owned(),
                requests,
            }),
        }
    }
    counts.sort_by(|a, b| b.requests.total_cmp(&a.requests));
    counts
}

/// The value of label `name` in `a="x",b="y"` (values with no escaped
/// quote, as every label read here is).
fn label<'a>(labels: &'a str, name: &str) -> Option<&'a str> {
    labels.split("\",").find_map(|pair| {
        let (key, value) = pair.split_once("=\"")?;
        (key == name).then(|| value.trim_end_matches('"'))
    })
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn the_last_view_built_line_with_its_sizes() {
        let line = |build_us: u64, services: u64| {
            json!({"message": VIEW_BUILT, "build_us": build_us, "pods": 9, "services": services,
                   "endpoint_slices": 3, "namespaces": 1, "authorization_policies": 0, "synced": true})
        };
        let log = vec![
            line(120, 3),
            json!({"message": "certificate issued"}),
            line(2400, 102),
            json!({"message": VIEW_BUILT, "build_us": 5}),
            json!({"message": "HTTP request"}),
        ];
        assert_eq!(
            ViewBuilt::last(&log),
            Some(ViewBuilt {
                build_us: 2400,
                pods: 9,
                services: 102,
                endpoint_slices: 3,
                namespaces: 1,
                authorization_policies: 0,
            }),
            "a line without the sizes is passed over"
        );
        assert_eq!(views_built(&log), 3);
        assert_eq!(ViewBuilt::last(&log[1..2]), None);
    }

    #[test]
    fn requests_to_a_service_are_counted_by_route_and_rule() {
        let text = r#"# TYPE istio_requests counter
istio_requests_total{reporter="waypoint",destination_service_name="web-routes",destination_service_namespace="default",request_protocol="http",response_code="200",route_name="default/web-routes-bytes",route_rule="bytes"} 1500
istio_requests_total{reporter="waypoint",destination_service_name="web-routes",destination_service_namespace="default",request_protocol="grpc",response_code="200",route_name="default/web-routes-bytes",route_rule="bytes"} 20
istio_requests_total{reporter="waypoint",destination_service_name="web-routes",response_code="404",route_name="",route_rule=""} 3
istio_requests_total{reporter="waypoint",destination_service_name="web-wp",response_code="200",route_name="default",route_rule=""} 9000
istio_requests_total{reporter="waypoint",destination_service_name="web-routes",response_code="200",route_name="default/web-routes-default",route_rule="default"} 7
istio_request_duration_milliseconds_bucket{destination_service_name="web-routes",route_name="x",le="1"} 99
"#;
        let counts = requests_by_rule(text, "web-routes");
        let rule = |route: &str, rule: &str, requests: f64| RuleCount {
            route: route.into(),
            rule: rule.into(),
            requests,
        };
        assert_eq!(
            counts,
            [
                rule("default/web-routes-bytes", "bytes", 1520.0),
                rule("default/web-routes-default", "default", 7.0),
                rule("", "", 3.0),
            ]
        );
        assert_eq!(
            requests_by_rule(text, "web-wp"),
            [rule("default", "", 9000.0)]
        );
        assert!(requests_by_rule(text, "web").is_empty());
        assert!(requests_by_rule("", "web-routes").is_empty());
    }
}
