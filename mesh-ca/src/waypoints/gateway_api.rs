//! The part of the Gateway API (gateway.networking.k8s.io/v1) the waypoint
//! controller reads and writes: Gateway and GatewayClass, with the fields
//! it uses. The `gateway-api` crate binds kube 4 / k8s-openapi 0.28, not
//! the kube 5 / k8s-openapi 0.29 of this workspace, so its types do not
//! implement our `kube::Resource`.
//!
//! The CRDs these types generate (`mesh-ca crd`) keep every field they do
//! not name (`x-kubernetes-preserve-unknown-fields`), so routes, TLS or
//! addresses written by other controllers are stored, not pruned; the
//! upstream CRDs validate those fields and may be installed instead.
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

pub const GROUP: &str = "gateway.networking.k8s.io";
pub const API_VERSION: &str = "gateway.networking.k8s.io/v1";

/// `gateway.networking.k8s.io/v1 Gateway`.
#[derive(CustomResource, Debug, Clone, Default, PartialEq, Deserialize, Serialize, JsonSchema)]
#[kube(
    group = "gateway.networking.k8s.io",
    version = "v1",
    kind = "Gateway",
    namespaced,
    status = "GatewayStatus",
    shortname = "gtw",
    schema = "derived",
    // Uninstalling mesh must not delete every Gateway with its CRD.
    annotation("helm.sh/resource-policy", "keep")
)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-preserve-unknown-fields" = true))]
pub struct GatewaySpec {
    /// The GatewayClass this Gateway belongs to.
    pub gateway_class_name: String,
    #[serde(default)]
    pub listeners: Vec<Listener>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-preserve-unknown-fields" = true))]
pub struct Listener {
    pub name: String,
    pub port: i32,
    /// HTTP, HTTPS, TLS, TCP, UDP, or an implementation's own (a
    /// waypoint's is HBONE).
    pub protocol: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-preserve-unknown-fields" = true))]
pub struct GatewayStatus {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub addresses: Vec<GatewayStatusAddress>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct GatewayStatusAddress {
    /// `IPAddress` or `Hostname`.
    #[serde(rename = "type", default, skip_serializing_if = "Option::is_none")]
    pub type_: Option<String>,
    pub value: String,
}

// k8s-openapi's Condition has a JSON schema only with its `schemars`
// feature, which would rebuild it for every crate of the workspace.
/// A condition of the object's state (`metav1.Condition`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    #[serde(rename = "type")]
    pub type_: String,
    /// `True`, `False` or `Unknown`.
    pub status: String,
    pub reason: String,
    pub message: String,
    /// RFC 3339: when `status` last changed.
    pub last_transition_time: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}

/// `gateway.networking.k8s.io/v1 GatewayClass`.
#[derive(CustomResource, Debug, Clone, Default, PartialEq, Deserialize, Serialize, JsonSchema)]
#[kube(
    group = "gateway.networking.k8s.io",
    version = "v1",
    kind = "GatewayClass",
    status = "GatewayClassStatus",
    shortname = "gc",
    schema = "derived",
    annotation("helm.sh/resource-policy", "keep")
)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-preserve-unknown-fields" = true))]
pub struct GatewayClassSpec {
    /// The controller that manages Gateways of this class, as
    /// `<domain>/<path>`.
    pub controller_name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-preserve-unknown-fields" = true))]
pub struct GatewayClassStatus {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
}

/// The CRDs of these kinds as one YAML stream: what `mesh-ca crd` prints
/// and the chart installs with `gatewayAPI.installCRDs`.
pub fn crd_yaml() -> Result<String, serde_yaml::Error> {
    use kube::CustomResourceExt;
    let mut out = String::new();
    for crd in [GatewayClass::crd(), Gateway::crd()] {
        out.push_str("---\n");
        out.push_str(&serde_yaml::to_string(&crd)?);
    }
    Ok(out)
}
