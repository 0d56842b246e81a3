//! What the waypoint controller is told by the CA's command line: which
//! Gateways are its own, what to run for them, and where its waypoints
//! find the CA. The rest (trust domain, token audience, root) comes from
//! the CA's own configuration.
use std::fmt;

use super::waypoint_config::WaypointConfig;

/// The `controllerName` of the GatewayClasses the controller accepts.
pub const DEFAULT_CONTROLLER_NAME: &str = "mesh.io/waypoint-controller";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WaypointSettings {
    /// The `gatewayClassName` of waypoint Gateways.
    pub class_name: String,
    /// The `controllerName` of a GatewayClass the controller accepts.
    pub controller_name: String,
    /// The image with `mesh-waypoint` (the mesh's own image).
    pub image: String,
    pub image_pull_policy: PullPolicy,
    /// `host:port` of the CA as waypoint pods reach it.
    pub ca_address: String,
    /// A DNS name in the CA's serving certificate.
    pub ca_server_name: String,
    /// Where waypoints export traces (OTLP), if anywhere.
    pub otlp_endpoint: Option<String>,
    /// The ClusterRoleBinding whose subjects the controller keeps equal to
    /// its waypoints' ServiceAccounts (the chart's
    /// `<release>-waypoint-reader`, bound to the reader ClusterRole).
    pub reader_binding: String,
    /// The operator's extension providers and JWKS settings, carried into
    /// each waypoint's ConfigMap and flags.
    pub waypoint_config: WaypointConfig,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PullPolicy {
    Always,
    IfNotPresent,
    Never,
}

impl fmt::Display for PullPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Always => "Always",
            Self::IfNotPresent => "IfNotPresent",
            Self::Never => "Never",
        })
    }
}

impl std::str::FromStr for PullPolicy {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "Always" => Ok(Self::Always),
            "IfNotPresent" => Ok(Self::IfNotPresent),
            "Never" => Ok(Self::Never),
            other => Err(format!(
                "`{other}` is not an image pull policy; use Always, IfNotPresent or Never"
            )),
        }
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{flag} `{value}`: {problem}")]
pub struct SettingError {
    pub flag: &'static str,
    pub value: String,
    pub problem: String,
}

/// A DNS-1123 label: what Kubernetes accepts as a GatewayClass' name part
/// and a namespace.
fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// A DNS-1123 subdomain (object names, host names).
pub fn is_dns_name(s: &str) -> bool {
    !s.is_empty() && s.len() <= 253 && s.split('.').all(is_dns_label)
}

/// What Kubernetes accepts as the name of an RBAC object: a path segment.
fn is_path_segment_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s != "."
        && s != ".."
        && !s.contains(['/', '%'])
        && !s.chars().any(|c| c.is_whitespace() || c.is_control())
}

impl WaypointSettings {
    /// Checks the values the command line gave, naming the flag at fault.
    pub fn validate(&self) -> Result<(), SettingError> {
        let bad = |flag: &'static str, value: &str, problem: &str| SettingError {
            flag,
            value: value.to_owned(),
            problem: problem.to_owned(),
        };
        if !is_dns_name(&self.class_name) {
            return Err(bad(
                "--waypoint-class",
                &self.class_name,
                "a GatewayClass name is a DNS subdomain (lowercase letters, digits, '-', '.')",
            ));
        }
        match self.controller_name.split_once('/') {
            Some((domain, path)) if is_dns_name(domain) && !path.is_empty() => {}
            _ => {
                return Err(bad(
                    "--waypoint-controller-name",
                    &self.controller_name,
                    "a controllerName is <domain>/<path>, e.g. mesh.io/waypoint-controller",
                ));
            }
        }
        if self.image.is_empty() || self.image.chars().any(char::is_whitespace) {
            return Err(bad(
                "--waypoint-image",
                &self.image,
                "name the mesh image (repository:tag) that holds mesh-waypoint",
            ));
        }
        match self.ca_address.rsplit_once(':') {
            Some((host, port))
                if !host.is_empty()
                    && port.parse::<u16>().is_ok_and(|p| p != 0)
                    && !host.chars().any(char::is_whitespace) => {}
            _ => {
                return Err(bad(
                    "--ca-address-for-waypoints",
                    &self.ca_address,
                    "use host:port as waypoint pods reach the CA, e.g. mesh-ca.mesh-system.svc:15012",
                ));
            }
        }
        if !is_dns_name(&self.ca_server_name) {
            return Err(bad(
                "--ca-server-name-for-waypoints",
                &self.ca_server_name,
                "name a DNS name in the CA's serving certificate (CaConfig.serverNames)",
            ));
        }
        if !is_path_segment_name(&self.reader_binding) {
            return Err(bad(
                "--waypoint-reader-binding",
                &self.reader_binding,
                "name the ClusterRoleBinding of the waypoint reader ClusterRole (the chart's <release>-waypoint-reader)",
            ));
        }
        if let Some(url) = &self.otlp_endpoint
            && !(url.starts_with("http://") || url.starts_with("https://"))
        {
            return Err(bad(
                "--waypoint-otlp-endpoint",
                url,
                "use an http:// or https:// URL",
            ));
        }
        Ok(())
    }

    /// The host part of `ca_address`: the server name to expect when none
    /// is given.
    pub fn host_of(address: &str) -> &str {
        let host = address.rsplit_once(':').map_or(address, |(h, _)| h);
        host.trim_start_matches('[').trim_end_matches(']')
    }
}
