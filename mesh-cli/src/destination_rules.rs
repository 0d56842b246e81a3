//! `mesh inspect <namespace>/<service>`: the Service's DestinationRule as
//! its waypoint applies it — which rule (of several for one Service, the
//! oldest), and per Service port the policy in short: load balancer,
//! connection pool limits, outlier detection.
use mesh_discovery::{
    destination_rule::{self, DestinationRule},
    view::ServiceRoute,
};
use serde::Serialize;

/// The rule that applies to a Service, as `mesh inspect` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RuleView {
    /// `<namespace>/<name>` of the rule.
    pub name: String,
    /// Per Service port, the policy in short.
    pub ports: Vec<PortPolicy>,
    /// Subsets the rule gives, which the waypoint does not apply.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub ignored_subsets: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PortPolicy {
    pub port: u16,
    /// Whether the port has `portLevelSettings` of its own.
    pub port_level: bool,
    pub policy: String,
}

/// The view of `rule` for `service`'s ports.
pub fn view(rule: &DestinationRule, service: &ServiceRoute) -> RuleView {
    RuleView {
        name: rule.key.clone(),
        ports: service
            .ports
            .iter()
            .map(|p| PortPolicy {
                port: p.port,
                port_level: rule.ports.contains_key(&p.port),
                policy: destination_rule::summary(rule.for_port(p.port)),
            })
            .collect(),
        ignored_subsets: rule.ignored_subsets.clone(),
    }
}

/// The section `mesh inspect` prints.
pub fn render(r: Option<&RuleView>) -> String {
    let Some(r) = r else {
        return "DESTINATION RULE\nnone: the waypoint's defaults (LEAST_REQUEST, no pool limits, no outlier detection)\n".to_owned();
    };
    let mut out = format!("DESTINATION RULE {}\n", r.name);
    out.push_str(&crate::output::table(
        &["PORT", "FROM", "POLICY"],
        &r.ports
            .iter()
            .map(|p| {
                vec![
                    p.port.to_string(),
                    if p.port_level { "port" } else { "service" }.to_owned(),
                    p.policy.clone(),
                ]
            })
            .collect::<Vec<_>>(),
    ));
    if !r.ignored_subsets.is_empty() {
        out.push_str(&format!(
            "subsets not applied (routes name Services, not subsets): {}\n",
            r.ignored_subsets.join(", ")
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use mesh_discovery::NodeConfig;

    use crate::{inspect, output::Format};

    const FILE: &str = r#"
kind: AgentConfig
nodeName: n1
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: shop}
spec:
  clusterIP: 10.96.0.1
  ports: [{name: http, port: 80, targetPort: 8080}, {name: grpc, port: 81, targetPort: 8081}]
---
apiVersion: v1
kind: Service
metadata: {name: db, namespace: shop}
spec: {clusterIP: 10.96.0.2, ports: [{name: sql, port: 5432}]}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: web-dr, namespace: shop}
spec:
  host: web
  trafficPolicy:
    loadBalancer: {simple: ROUND_ROBIN}
    connectionPool: {http: {http2MaxRequests: 100}}
    outlierDetection: {consecutive5xxErrors: 3, baseEjectionTime: 30s}
    portLevelSettings:
    - port: {number: 81}
      loadBalancer: {consistentHash: {httpHeaderName: x-user}}
  subsets: [{name: v1, labels: {version: v1}}]
"#;

    #[test]
    fn inspect_shows_the_services_destination_rule_per_port() {
        let view = NodeConfig::parse(Path::new("f.yaml"), FILE, None)
            .unwrap()
            .view();
        let web = inspect::inspect(&view, "shop/web").unwrap();
        let text = inspect::render(Format::Table, &web).unwrap();
        let l: Vec<&str> = text.lines().collect();
        let at = l
            .iter()
            .position(|x| *x == "DESTINATION RULE shop/web-dr")
            .unwrap_or_else(|| panic!("no rule in\n{text}"));
        let row = |port: &str| {
            l[at + 2..]
                .iter()
                .find(|x| x.starts_with(port))
                .map(|x| x.split_whitespace().collect::<Vec<_>>().join(" "))
                .unwrap_or_else(|| panic!("no port {port} in\n{text}"))
        };
        assert_eq!(
            row("80 "),
            "80 service lb ROUND_ROBIN; pool http2MaxRequests=100; outlier 5xx=3 gateway=off interval=10s base=30s maxEjection=10% minHealth=0%"
        );
        assert!(
            row("81 ").starts_with("81 port lb hash(header x-user); pool http2MaxRequests=100"),
            "{text}"
        );
        assert!(
            text.contains("subsets not applied (routes name Services, not subsets): v1"),
            "{text}"
        );
        let json = inspect::render(Format::Json, &web).unwrap();
        assert!(json.contains("\"name\": \"shop/web-dr\""), "{json}");
        let db =
            inspect::render(Format::Table, &inspect::inspect(&view, "shop/db").unwrap()).unwrap();
        assert!(
            db.contains("DESTINATION RULE\nnone: the waypoint's defaults"),
            "{db}"
        );
    }
}
