//! The status the mesh's own kinds (`HTTPLocalRateLimitPolicy`,
//! `HTTPFaultInjection`) carry: `status.conditions` as Kubernetes'
//! `metav1.Condition`, written by the CA's policy status controller
//! (mesh-ca/src/policy_status.rs) with type `Accepted`. Declared here, on
//! the kube-derive types, so that their CRDs have the status subresource
//! and a schema for it: without the subresource a status write would be
//! refused, and without the schema the API server would prune it.
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// `status` of a mesh.io policy object.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PolicyStatus {
    /// Whether the waypoint can use the object (`Accepted`), and why not.
    /// Other controllers may keep their own types here.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"], "maxItems" = 8))]
    pub conditions: Vec<StatusCondition>,
}

/// One condition, shaped as Kubernetes' `metav1.Condition`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct StatusCondition {
    /// E.g. `Accepted`.
    #[serde(rename = "type")]
    #[schemars(length(min = 1, max = 316))]
    pub type_: String,
    /// `True`, `False` or `Unknown`.
    #[schemars(extend("enum" = ["True", "False", "Unknown"]))]
    pub status: String,
    /// A CamelCase word: `Accepted`, `Invalid`, `TargetNotFound`.
    #[schemars(length(min = 1, max = 1024))]
    pub reason: String,
    /// The field and what is wrong with it, when not accepted.
    #[serde(default)]
    #[schemars(length(max = 32768))]
    pub message: String,
    /// The `metadata.generation` the condition was computed from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub observed_generation: Option<i64>,
    /// When `status` last changed (RFC 3339).
    #[schemars(extend("format" = "date-time"))]
    pub last_transition_time: String,
}

#[cfg(test)]
mod tests {
    use kube::CustomResourceExt;

    use super::*;

    /// Without the subresource the CA's status patch is refused; without
    /// the schema the API server prunes what it writes.
    #[test]
    fn the_mesh_kinds_declare_the_status_subresource_and_its_schema() {
        for crd in [
            crate::ratelimit::HTTPLocalRateLimitPolicyResource::crd(),
            crate::kubernetes::fault_crd::HTTPFaultInjectionResource::crd(),
        ] {
            let name = crd.metadata.name.clone().unwrap_or_default();
            let version = &crd.spec.versions[0];
            assert!(
                version
                    .subresources
                    .as_ref()
                    .is_some_and(|s| s.status.is_some()),
                "{name}: no status subresource"
            );
            let schema = serde_json::to_value(&version.schema).unwrap();
            let conditions =
                &schema["openAPIV3Schema"]["properties"]["status"]["properties"]["conditions"];
            assert_eq!(conditions["x-kubernetes-list-type"], "map", "{name}");
            assert_eq!(
                conditions["items"]["required"],
                serde_json::json!(["lastTransitionTime", "reason", "status", "type"]),
                "{name}"
            );
        }
    }

    /// A condition as the CA writes it reads back as the type says.
    #[test]
    fn a_written_condition_has_the_types_shape() {
        let written = serde_json::json!({"conditions": [{
            "type": "Accepted", "status": "False", "reason": "Invalid",
            "message": "spec.total.requestsPerSecond: 0 is not a rate",
            "observedGeneration": 3, "lastTransitionTime": "2025-01-01T00:00:00Z",
        }]});
        let status: PolicyStatus = serde_json::from_value(written.clone()).unwrap();
        assert_eq!(status.conditions[0].type_, "Accepted");
        assert_eq!(serde_json::to_value(&status).unwrap(), written);
    }
}
