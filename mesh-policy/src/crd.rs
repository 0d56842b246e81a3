//! The Kubernetes resources behind the policy model: Istio's
//! security.istio.io/v1 kinds, declared with kube-derive so the watch and
//! the CRD the chart installs come from the same types.
use kube::CustomResource;
use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::{Deserialize, Serialize};

use super::model::{AuthorizationPolicySpec, PeerAuthenticationSpec};

/// `security.istio.io/v1 AuthorizationPolicy`.
#[derive(CustomResource, Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[kube(
    group = "security.istio.io",
    version = "v1",
    kind = "AuthorizationPolicy",
    root = "AuthorizationPolicyResource",
    namespaced,
    schema = "derived",
    // Uninstalling mesh must not delete every policy with its CRD.
    annotation("helm.sh/resource-policy", "keep")
)]
pub struct AuthorizationPolicyCrdSpec(pub AuthorizationPolicySpec);

/// `security.istio.io/v1 PeerAuthentication`.
#[derive(CustomResource, Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[kube(
    group = "security.istio.io",
    version = "v1",
    kind = "PeerAuthentication",
    root = "PeerAuthenticationResource",
    namespaced,
    schema = "derived",
    // Uninstalling mesh must not delete every policy with its CRD.
    annotation("helm.sh/resource-policy", "keep")
)]
pub struct PeerAuthenticationCrdSpec(pub PeerAuthenticationSpec);

/// A free-form object (Kubernetes structural schemas need it said).
pub fn any_object(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "type": "object",
        "x-kubernetes-preserve-unknown-fields": true
    })
}

/// A list of free-form objects.
pub fn any_objects(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "type": "array",
        "items": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}
    })
}

/// The CustomResourceDefinitions of the kinds mesh reads, as one YAML
/// stream: what `mesh-agent crd` prints and the Helm chart installs.
pub fn yaml() -> Result<String, serde_yaml::Error> {
    use kube::CustomResourceExt;
    let mut out = String::new();
    for crd in [
        AuthorizationPolicyResource::crd(),
        PeerAuthenticationResource::crd(),
    ] {
        out.push_str("---\n");
        out.push_str(&serde_yaml::to_string(&crd)?);
    }
    Ok(out)
}
