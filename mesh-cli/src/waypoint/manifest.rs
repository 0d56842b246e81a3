//! The Gateway that declares a waypoint, as `istioctl waypoint apply`
//! writes it: `gateway.networking.k8s.io/v1`, the waypoint class, the
//! `istio.io/waypoint-for` label and the one HBONE listener. Pure: checking
//! what the operator asked for and the object it becomes.
use std::{collections::BTreeMap, fmt};

use mesh_discovery::model::{
    USE_WAYPOINT_LABEL, WAYPOINT_FOR_LABEL, WAYPOINT_LISTENER_PORT, WAYPOINT_LISTENER_PROTOCOL,
    WaypointFor,
};
use serde::Serialize;

/// The listener's name (Istio's).
pub const LISTENER_NAME: &str = "mesh";

/// `--for`: which destinations the waypoint serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ForArg {
    Service,
    Workload,
    All,
    None,
}

impl From<ForArg> for WaypointFor {
    fn from(a: ForArg) -> Self {
        match a {
            ForArg::Service => Self::Service,
            ForArg::Workload => Self::Workload,
            ForArg::All => Self::All,
            ForArg::None => Self::None,
        }
    }
}

/// The label value of `istio.io/waypoint-for`.
pub fn for_label(w: WaypointFor) -> &'static str {
    match w {
        WaypointFor::Service => "service",
        WaypointFor::Workload => "workload",
        WaypointFor::All => "all",
        WaypointFor::None => "none",
    }
}

/// A flag whose value cannot become the Gateway.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvalidFlag {
    pub flag: &'static str,
    pub value: String,
    pub problem: String,
}

impl fmt::Display for InvalidFlag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} `{}`: {}", self.flag, self.value, self.problem)
    }
}

impl std::error::Error for InvalidFlag {}

/// A waypoint to declare, checked: only a value of this type becomes a
/// Gateway.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WaypointDeclaration {
    namespace: String,
    name: String,
    class: String,
    waypoint_for: WaypointFor,
}

impl WaypointDeclaration {
    pub fn new(
        namespace: &str,
        name: &str,
        class: &str,
        waypoint_for: WaypointFor,
    ) -> Result<Self, InvalidFlag> {
        let invalid = |flag, value: &str, problem: String| InvalidFlag {
            flag,
            value: value.to_owned(),
            problem,
        };
        dns_label(namespace).map_err(|p| invalid("-n", namespace, p))?;
        // The name is also a label value (istio.io/use-waypoint and the
        // pods' gateway-name) and names the waypoint's Deployment.
        dns_label(name).map_err(|p| invalid("--name", name, p))?;
        if name == "none" {
            return Err(invalid(
                "--name",
                name,
                "`none` means \"no waypoint\" in istio.io/use-waypoint; choose another name".into(),
            ));
        }
        dns_subdomain(class).map_err(|p| invalid("--class", class, p))?;
        Ok(Self {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
            class: class.to_owned(),
            waypoint_for,
        })
    }

    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn class(&self) -> &str {
        &self.class
    }

    pub fn waypoint_for(&self) -> WaypointFor {
        self.waypoint_for
    }

    /// `<namespace>/<name>`.
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }

    pub fn gateway(&self) -> GatewayManifest {
        GatewayManifest {
            api_version: "gateway.networking.k8s.io/v1",
            kind: "Gateway",
            metadata: Metadata {
                name: self.name.clone(),
                namespace: self.namespace.clone(),
                labels: BTreeMap::from([(
                    WAYPOINT_FOR_LABEL.to_owned(),
                    for_label(self.waypoint_for).to_owned(),
                )]),
            },
            spec: Spec {
                gateway_class_name: self.class.clone(),
                listeners: vec![Listener {
                    name: LISTENER_NAME,
                    port: WAYPOINT_LISTENER_PORT,
                    protocol: WAYPOINT_LISTENER_PROTOCOL,
                }],
            },
        }
    }

    /// The merge patch that sends the namespace's traffic through it.
    pub fn enroll_namespace_patch(&self) -> serde_json::Value {
        serde_json::json!({"metadata": {"labels": {USE_WAYPOINT_LABEL: self.name}}})
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct GatewayManifest {
    pub api_version: &'static str,
    pub kind: &'static str,
    pub metadata: Metadata,
    pub spec: Spec,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Metadata {
    pub name: String,
    pub namespace: String,
    pub labels: BTreeMap<String, String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Spec {
    pub gateway_class_name: String,
    pub listeners: Vec<Listener>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Listener {
    pub name: &'static str,
    pub port: u16,
    pub protocol: &'static str,
}

/// An RFC 1123 label: what namespaces, and names used as label values, must be.
fn dns_label(v: &str) -> Result<(), String> {
    if v.is_empty() || v.len() > 63 {
        return Err("must be 1 to 63 characters".into());
    }
    if !v
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    {
        return Err("only lowercase letters, digits and '-' are allowed".into());
    }
    if v.starts_with('-') || v.ends_with('-') {
        return Err("must start and end with a letter or digit".into());
    }
    Ok(())
}

/// An RFC 1123 subdomain: what a GatewayClass' name must be.
fn dns_subdomain(v: &str) -> Result<(), String> {
    if v.is_empty() || v.len() > 253 {
        return Err("must be 1 to 253 characters".into());
    }
    v.split('.')
        .try_for_each(dns_label)
        .map_err(|p| format!("each dot-separated part: {p}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_gateway_is_istioctls() {
        let d = WaypointDeclaration::new("shop", "waypoint", "mesh-waypoint", WaypointFor::All)
            .unwrap();
        let yaml = serde_yaml::to_string(&d.gateway()).unwrap();
        assert_eq!(
            yaml,
            "apiVersion: gateway.networking.k8s.io/v1\n\
             kind: Gateway\n\
             metadata:\n  name: waypoint\n  namespace: shop\n  labels:\n    istio.io/waypoint-for: all\n\
             spec:\n  gatewayClassName: mesh-waypoint\n  listeners:\n  - name: mesh\n    port: 15008\n    protocol: HBONE\n"
        );
        assert_eq!(
            d.enroll_namespace_patch(),
            serde_json::json!({"metadata": {"labels": {"istio.io/use-waypoint": "waypoint"}}})
        );
    }

    #[test]
    fn flags_that_cannot_be_names_are_refused_by_flag() {
        let new = |ns, name, class| {
            WaypointDeclaration::new(ns, name, class, WaypointFor::Service).map_err(|e| e.flag)
        };
        assert_eq!(new("Shop", "wp", "mesh-waypoint"), Err("-n"));
        assert_eq!(new("shop", "none", "mesh-waypoint"), Err("--name"));
        assert_eq!(new("shop", "wp.x", "mesh-waypoint"), Err("--name"));
        let long = "w".repeat(64);
        assert_eq!(new("shop", &long, "mesh-waypoint"), Err("--name"));
        assert_eq!(new("shop", "wp", "mesh_waypoint"), Err("--class"));
        assert!(new("shop", "wp-1", "waypoints.mesh.io").is_ok());
        let e = WaypointDeclaration::new("shop", "-wp", "c", WaypointFor::Service).unwrap_err();
        assert_eq!(
            e.to_string(),
            "--name `-wp`: must start and end with a letter or digit"
        );
    }
}
