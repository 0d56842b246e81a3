//! `mesh.io/v1alpha1 HTTPFaultInjection` as the API server declares it:
//! the kube-derive type its CustomResourceDefinition is generated from, and
//! the resource the source watches. Objects are read and checked as
//! `mesh_route::fault` types (that crate stays free of kube); a test keeps
//! the two shapes the same.
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// A fault a route rule's ExtensionRef filter applies to the requests it
/// takes: Istio's HTTPFaultInjection fields.
#[derive(CustomResource, Debug, Clone, Default, PartialEq, Deserialize, Serialize, JsonSchema)]
#[kube(
    group = "mesh.io",
    version = "v1alpha1",
    kind = "HTTPFaultInjection",
    root = "HTTPFaultInjectionResource",
    // Written by the CA's policy status controller: Accepted, or why not.
    status = "crate::crd_status::PolicyStatus",
    namespaced,
    schema = "derived",
    // Uninstalling mesh must not delete every object with its CRD.
    annotation("helm.sh/resource-policy", "keep")
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpFaultInjectionSpec {
    /// Hold the request before it is sent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delay: Option<DelaySpec>,
    /// Answer the request here instead of sending it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub abort: Option<AbortSpec>,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DelaySpec {
    /// A Gateway API duration: `200ms`, `5s`, `1m30s`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fixed_delay: Option<String>,
    /// Of requests, 0 to 100; every request when left out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub percentage: Option<Percentage>,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AbortSpec {
    /// The HTTP status answered, 200 to 599.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http_status: Option<i64>,
    /// A gRPC status code's name (e.g. `UNAVAILABLE`), answered as 200
    /// with a trailers-only `grpc-status`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grpc_status: Option<String>,
    /// Of requests, 0 to 100; every request when left out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub percentage: Option<Percentage>,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Percentage {
    pub value: f64,
}

/// The CustomResourceDefinition, as YAML (`---` first).
pub fn crd_yaml() -> Result<String, serde_yaml::Error> {
    use kube::CustomResourceExt;
    Ok(format!(
        "---\n{}",
        serde_yaml::to_string(&HTTPFaultInjectionResource::crd())?
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every field set: the CRD's type and the type objects are read as
    /// take it alike and write it back the same.
    #[test]
    fn the_crd_type_and_the_checked_type_have_one_shape() {
        let full = serde_json::json!({
            "delay": {"fixedDelay": "5s", "percentage": {"value": 10.0}},
            "abort": {"httpStatus": 503, "grpcStatus": "UNAVAILABLE", "percentage": {"value": 5.0}},
        });
        let crd: HttpFaultInjectionSpec = serde_json::from_value(full.clone()).unwrap();
        let read: mesh_route::fault::FaultSpec = serde_json::from_value(full.clone()).unwrap();
        assert_eq!(serde_json::to_value(&crd).unwrap(), full);
        assert_eq!(serde_json::to_value(&read).unwrap(), full);
    }

    /// The chart's template of this CRD, as the type generates it.
    #[test]
    fn the_chart_installs_the_fault_injection_crd_the_type_generates() {
        crate::chart_template::assert_generated(
            "mesh-api-fault-crd.yaml",
            "mesh_discovery::kubernetes::fault_crd",
            &crd_yaml().unwrap(),
        );
    }

    #[test]
    fn the_crd_is_namespaced_in_mesh_io_with_the_plural_the_source_watches() {
        use kube::CustomResourceExt;
        let crd = HTTPFaultInjectionResource::crd();
        assert_eq!(
            crd.metadata.name.as_deref(),
            Some("httpfaultinjections.mesh.io")
        );
        assert_eq!(crd.spec.scope, "Namespaced");
        let watched = super::super::fault_resource();
        assert_eq!(
            (watched.group.as_str(), watched.version.as_str()),
            (mesh_route::fault::GROUP, mesh_route::fault::VERSION)
        );
        assert_eq!(
            (watched.kind.as_str(), watched.plural.as_str()),
            (mesh_route::fault::KIND, "httpfaultinjections")
        );
    }
}
