//! The subset of `gateway.networking.k8s.io/v1` HTTPRoute and GRPCRoute that
//! GAMMA uses, as the API serves it.
//!
//! Enumerations (match types, filter types, schemes) stay strings here so that
//! a value this mesh does not know reaches `compile`, which reports it with
//! the field's path, instead of failing the whole object's deserialization.
//! Defaults the CRD applies are applied here too, so an object written by hand
//! (without the API server's defaulting) reads the same.

use serde::{Deserialize, Serialize};

pub const GROUP: &str = "gateway.networking.k8s.io";

#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ObjectMeta {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub creation_timestamp: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ParentRef {
    #[serde(default = "default_parent_group")]
    pub group: String,
    #[serde(default = "default_parent_kind")]
    pub kind: String,
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub section_name: Option<String>,
}

fn default_parent_group() -> String {
    GROUP.to_string()
}

fn default_parent_kind() -> String {
    "Gateway".to_string()
}

#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct HttpRoute {
    pub metadata: ObjectMeta,
    pub spec: HttpRouteSpec,
}

#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct HttpRouteSpec {
    #[serde(default)]
    pub parent_refs: Vec<ParentRef>,
    #[serde(default)]
    pub hostnames: Vec<String>,
    /// The CRD's default is one rule matching every path.
    #[serde(default = "default_http_rules")]
    pub rules: Vec<HttpRouteRule>,
}

fn default_http_rules() -> Vec<HttpRouteRule> {
    vec![HttpRouteRule {
        name: None,
        matches: default_http_matches(),
        filters: Vec::new(),
        backend_refs: Vec::new(),
        timeouts: None,
        retry: None,
    }]
}

#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct HttpRouteRule {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The CRD's default is `[{path: {type: PathPrefix, value: /}}]`.
    #[serde(default = "default_http_matches")]
    pub matches: Vec<HttpRouteMatch>,
    #[serde(default)]
    pub filters: Vec<HttpRouteFilter>,
    #[serde(default)]
    pub backend_refs: Vec<HttpBackendRef>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeouts: Option<HttpRouteTimeouts>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry: Option<HttpRouteRetry>,
}

fn default_http_matches() -> Vec<HttpRouteMatch> {
    vec![HttpRouteMatch::default()]
}

#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct HttpRouteMatch {
    #[serde(default = "default_path_match")]
    pub path: HttpPathMatch,
    #[serde(default)]
    pub headers: Vec<ValueMatch>,
    #[serde(default)]
    pub query_params: Vec<ValueMatch>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
}

impl Default for HttpRouteMatch {
    fn default() -> Self {
        HttpRouteMatch {
            path: default_path_match(),
            headers: Vec::new(),
            query_params: Vec::new(),
            method: None,
        }
    }
}

fn default_path_match() -> HttpPathMatch {
    HttpPathMatch {
        kind: default_path_type(),
        value: default_path_value(),
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct HttpPathMatch {
    /// `Exact`, `PathPrefix` (the default) or `RegularExpression`.
    #[serde(rename = "type", default = "default_path_type")]
    pub kind: String,
    #[serde(default = "default_path_value")]
    pub value: String,
}

fn default_path_type() -> String {
    "PathPrefix".to_string()
}

fn default_path_value() -> String {
    "/".to_string()
}

/// A header or query parameter match.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ValueMatch {
    /// `Exact` (the default) or `RegularExpression`.
    #[serde(rename = "type", default = "default_exact")]
    pub kind: String,
    pub name: String,
    pub value: String,
}

fn default_exact() -> String {
    "Exact".to_string()
}

/// One filter: `type` names which of the other fields is set.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct HttpRouteFilter {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_header_modifier: Option<HeaderModifier>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response_header_modifier: Option<HeaderModifier>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_redirect: Option<RequestRedirect>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url_rewrite: Option<UrlRewrite>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_mirror: Option<RequestMirror>,
    /// Read only so that a filter of this type is reported, not dropped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub extension_ref: Option<ExtensionRef>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
pub struct ExtensionRef {
    #[serde(default)]
    pub group: String,
    #[serde(default)]
    pub kind: String,
    #[serde(default)]
    pub name: String,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct HeaderModifier {
    #[serde(default)]
    pub set: Vec<HeaderValue>,
    #[serde(default)]
    pub add: Vec<HeaderValue>,
    #[serde(default)]
    pub remove: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
pub struct HeaderValue {
    pub name: String,
    pub value: String,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RequestRedirect {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scheme: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<PathModifier>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<i64>,
    /// The CRD's default is 302.
    #[serde(default = "default_redirect_status")]
    pub status_code: i64,
}

fn default_redirect_status() -> i64 {
    302
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct UrlRewrite {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<PathModifier>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PathModifier {
    /// `ReplaceFullPath` or `ReplacePrefixMatch`.
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replace_full_path: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replace_prefix_match: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RequestMirror {
    pub backend_ref: BackendObjectRef,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub percent: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fraction: Option<Fraction>,
}

#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Fraction {
    pub numerator: i64,
    /// The CRD's default is 100.
    #[serde(default = "default_denominator")]
    pub denominator: i64,
}

fn default_denominator() -> i64 {
    100
}

/// A reference to a backend: the core group's Service unless told otherwise.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct BackendObjectRef {
    #[serde(default)]
    pub group: String,
    #[serde(default = "default_backend_kind")]
    pub kind: String,
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<i64>,
}

fn default_backend_kind() -> String {
    "Service".to_string()
}

#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct HttpBackendRef {
    #[serde(flatten)]
    pub target: BackendObjectRef,
    /// The CRD's default is 1.
    #[serde(default = "default_weight")]
    pub weight: i64,
    #[serde(default)]
    pub filters: Vec<HttpRouteFilter>,
}

fn default_weight() -> i64 {
    1
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct HttpRouteTimeouts {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backend_request: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct HttpRouteRetry {
    #[serde(default)]
    pub codes: Vec<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attempts: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backoff: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct GrpcRoute {
    pub metadata: ObjectMeta,
    pub spec: GrpcRouteSpec,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct GrpcRouteSpec {
    #[serde(default)]
    pub parent_refs: Vec<ParentRef>,
    #[serde(default)]
    pub hostnames: Vec<String>,
    #[serde(default)]
    pub rules: Vec<GrpcRouteRule>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct GrpcRouteRule {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// No match matches every request.
    #[serde(default)]
    pub matches: Vec<GrpcRouteMatch>,
    #[serde(default)]
    pub filters: Vec<HttpRouteFilter>,
    #[serde(default)]
    pub backend_refs: Vec<HttpBackendRef>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct GrpcRouteMatch {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<GrpcMethodMatch>,
    #[serde(default)]
    pub headers: Vec<ValueMatch>,
}

#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct GrpcMethodMatch {
    /// `Exact` (the default) or `RegularExpression`.
    #[serde(rename = "type", default = "default_exact")]
    pub kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_empty_spec_gets_the_default_rule() {
        let r: HttpRoute = serde_json::from_str(r#"{"metadata":{"name":"r"},"spec":{}}"#).unwrap();
        assert_eq!(r.spec.rules.len(), 1);
        assert_eq!(r.spec.rules[0].matches.len(), 1);
        assert_eq!(r.spec.rules[0].matches[0].path.kind, "PathPrefix");
        assert_eq!(r.spec.rules[0].matches[0].path.value, "/");
    }

    #[test]
    fn defaults_of_a_full_object() {
        let r: HttpRoute = serde_json::from_str(
            r#"{"metadata":{"name":"r","namespace":"ns","creationTimestamp":"2024-01-02T03:04:05Z"},
            "spec":{"parentRefs":[{"kind":"Service","group":"","name":"svc","port":80}],
            "rules":[{"matches":[{"headers":[{"name":"v","value":"1"}]},{"path":{"value":"/x"}}],
              "filters":[{"type":"RequestRedirect","requestRedirect":{"scheme":"https"}}],
              "backendRefs":[{"name":"b","port":8080}]}]}}"#,
        )
        .unwrap();
        assert_eq!(r.metadata.namespace.as_deref(), Some("ns"));
        let rule = &r.spec.rules[0];
        assert_eq!(rule.matches[0].path.kind, "PathPrefix");
        assert_eq!(rule.matches[0].path.value, "/");
        assert_eq!(rule.matches[0].headers[0].kind, "Exact");
        assert_eq!(rule.matches[1].path.kind, "PathPrefix");
        assert_eq!(rule.matches[1].path.value, "/x");
        let redirect = rule.filters[0].request_redirect.as_ref().unwrap();
        assert_eq!(redirect.status_code, 302);
        assert_eq!(rule.backend_refs[0].weight, 1);
        assert_eq!(rule.backend_refs[0].target.kind, "Service");
        assert_eq!(rule.backend_refs[0].target.group, "");
        let parent = &r.spec.parent_refs[0];
        assert_eq!((parent.kind.as_str(), parent.port), ("Service", Some(80)));
        let gw: ParentRef = serde_json::from_str(r#"{"name":"gw"}"#).unwrap();
        assert_eq!((gw.group.as_str(), gw.kind.as_str()), (GROUP, "Gateway"));
    }

    #[test]
    fn grpc_route_defaults() {
        let r: GrpcRoute = serde_json::from_str(
            r#"{"metadata":{"name":"g"},"spec":{"rules":[{"matches":[{"method":{"service":"a.B"}}],
            "backendRefs":[{"name":"b","port":9000,"weight":0}]}]}}"#,
        )
        .unwrap();
        let m = r.spec.rules[0].matches[0].method.as_ref().unwrap();
        assert_eq!(m.kind, "Exact");
        assert_eq!(m.method, None);
        assert_eq!(r.spec.rules[0].backend_refs[0].weight, 0);
        let mirror: RequestMirror = serde_json::from_str(
            r#"{"backendRef":{"name":"m","port":1},"fraction":{"numerator":5}}"#,
        )
        .unwrap();
        assert_eq!(mirror.fraction.unwrap().denominator, 100);
    }
}
