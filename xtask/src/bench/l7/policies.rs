//! The policies of the "policies in force" column: on Service
//! `web-policy` (the same backends and waypoint as web-wp), an
//! AuthorizationPolicy of [`RULES`] ALLOW rules of which only the last
//! matches the load's requests (every request is tested against all of
//! them), a local rate limit far above any rate the load reaches, and a
//! DestinationRule with connection-pool limits, outlier detection and
//! LEAST_REQUEST balancing. What the column asks is what enforcing them
//! costs per request, against web-wp through the same waypoint.

/// The Service the column's requests go to.
pub const SERVICE: &str = "web-policy";
/// The AuthorizationPolicy's rules.
pub const RULES: usize = 100;

/// Rule `i` of the policy: the first `RULES - 1` name other namespaces'
/// clients and paths, the last admits the load (any client of namespace
/// `default`, the load's path, its methods).
fn rule(i: usize) -> String {
    if i + 1 == RULES {
        "  - from: [{source: {namespaces: [default]}}]\n    to: [{operation: {methods: [GET, POST], paths: [\"/bytes/*\"]}}]\n".to_owned()
    } else {
        format!(
            "  - from: [{{source: {{principals: [\"cluster.local/ns/team-{i}/sa/client\"]}}}}]\n    to: [{{operation: {{methods: [POST], paths: [\"/team-{i}/*\"]}}}}]\n    when: [{{key: \"request.headers[x-team]\", values: [\"team-{i}\"]}}]\n"
        )
    }
}

/// The three objects, as one YAML stream (no leading `---`).
pub fn docs() -> String {
    let rules: String = (0..RULES).map(rule).collect();
    format!(
        "apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: {SERVICE}-callers, namespace: default}}
spec:
  targetRefs: [{{kind: Service, group: \"\", name: {SERVICE}}}]
  action: ALLOW
  rules:
{rules}---
apiVersion: mesh.io/v1alpha1
kind: HTTPLocalRateLimitPolicy
metadata: {{name: {SERVICE}-limit, namespace: default}}
spec:
  targetRef: {{kind: Service, name: {SERVICE}}}
  total: {{requestsPerSecond: 1000000}}
  identity: {{requestsPerSecond: 500000}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: {SERVICE}, namespace: default}}
spec:
  host: {SERVICE}.default.svc.cluster.local
  trafficPolicy:
    loadBalancer: {{simple: LEAST_REQUEST}}
    connectionPool:
      tcp: {{maxConnections: 10000, connectTimeout: 5s}}
      http: {{http1MaxPendingRequests: 10000, http2MaxRequests: 10000, maxRetries: 10}}
    outlierDetection:
      consecutive5xxErrors: 5
      interval: 10s
      baseEjectionTime: 30s
      maxEjectionPercent: 50
"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn three_objects_on_the_service_and_only_the_last_rule_admits_the_load() {
        let docs: Vec<serde_yaml::Value> = serde_yaml::Deserializer::from_str(&docs())
            .map(|d| serde::Deserialize::deserialize(d).unwrap())
            .collect();
        let kinds: Vec<&str> = docs.iter().map(|d| d["kind"].as_str().unwrap()).collect();
        assert_eq!(
            kinds,
            [
                "AuthorizationPolicy",
                "HTTPLocalRateLimitPolicy",
                "DestinationRule"
            ]
        );
        let rules = docs[0]["spec"]["rules"].as_sequence().unwrap();
        assert_eq!(rules.len(), RULES);
        assert_eq!(docs[0]["spec"]["targetRefs"][0]["name"], SERVICE);
        let last = &rules[RULES - 1];
        assert_eq!(last["from"][0]["source"]["namespaces"][0], "default");
        assert_eq!(
            last["to"][0]["operation"]["paths"][0].as_str(),
            Some("/bytes/*")
        );
        assert!(super::super::load::path().starts_with("/bytes/"));
        assert_eq!(
            rules[7]["from"][0]["source"]["principals"][0],
            "cluster.local/ns/team-7/sa/client"
        );
        assert_eq!(docs[1]["spec"]["targetRef"]["name"], SERVICE);
        assert_eq!(
            docs[2]["spec"]["host"],
            "web-policy.default.svc.cluster.local"
        );
    }
}
