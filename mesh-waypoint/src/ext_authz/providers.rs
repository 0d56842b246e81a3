//! The external authorizers CUSTOM policies name: Istio's meshConfig
//! `extensionProviders[]` with `envoyExtAuthzGrpc`, read from a YAML file
//! (`--extension-providers`) and checked here, as pure functions.
use std::{collections::BTreeMap, time::Duration};

use http::{HeaderName, StatusCode};
use serde::Deserialize;

/// Istio's default for `timeout` (its mesh config says 600s).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(600);

/// The file: `extensionProviders:` as in Istio's meshConfig; anything else
/// in it (the rest of a meshConfig) is not read.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct File {
    #[serde(default)]
    pub extension_providers: Vec<ExtensionProvider>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ExtensionProvider {
    pub name: String,
    #[serde(default)]
    pub envoy_ext_authz_grpc: Option<GrpcSpec>,
    /// Providers of other kinds (tracing, logging, HTTP ext_authz): kept
    /// by name, so a CUSTOM policy naming one is refused saying why.
    #[serde(flatten)]
    pub other: BTreeMap<String, serde_yaml::Value>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GrpcSpec {
    /// `<name>.<namespace>.svc.cluster.local`, `<name>.<namespace>`,
    /// `<namespace>/<hostname>`, or a bare name in the waypoint's namespace.
    pub service: String,
    pub port: u16,
    /// `600s`, `0.5s`, `250ms`.
    #[serde(default)]
    pub timeout: Option<String>,
    #[serde(default)]
    pub fail_open: bool,
    /// The status answered when the authorizer cannot be asked (default 403).
    #[serde(default)]
    pub status_on_error: Option<StatusText>,
    /// Headers sent in the check; all of them when empty.
    #[serde(default)]
    pub include_request_headers_in_check: Vec<String>,
    /// Accepted as Istio's are; the route cache has nothing to clear here.
    #[serde(default)]
    pub clear_route_cache: bool,
}

/// `statusOnError` is a string in Istio's API; a number is taken too.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum StatusText {
    Text(String),
    Number(u16),
}

/// A Service by namespace and name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceRef {
    pub namespace: String,
    pub name: String,
}

impl ServiceRef {
    /// `<namespace>/<name>`, as the view keys Services.
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }
}

/// One checked gRPC ext_authz provider.
#[derive(Debug, Clone, PartialEq)]
pub struct Provider {
    pub name: String,
    pub service: ServiceRef,
    pub port: u16,
    pub timeout: Duration,
    pub fail_open: bool,
    pub status_on_error: StatusCode,
    /// `None`: every header is sent.
    pub include_headers: Option<Vec<HeaderName>>,
}

/// Every provider, by name; a name whose provider is not a gRPC ext_authz
/// one maps to why.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Providers {
    by_name: BTreeMap<String, Result<Provider, String>>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("extensionProviders[{index}].{field}: {problem}")]
pub struct ProviderError {
    pub index: usize,
    pub field: String,
    pub problem: String,
}

impl Providers {
    pub fn get(&self, name: &str) -> Result<&Provider, String> {
        match self.by_name.get(name) {
            Some(Ok(p)) => Ok(p),
            Some(Err(why)) => Err(why.clone()),
            None => Err(format!(
                "no extension provider `{name}` is configured (--extension-providers)"
            )),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.by_name.is_empty()
    }

    /// The Services the usable providers are reached at.
    pub fn services(&self) -> impl Iterator<Item = &ServiceRef> {
        self.by_name
            .values()
            .filter_map(|p| p.as_ref().ok())
            .map(|p| &p.service)
    }

    /// Reads and checks a file's text; `default_namespace` completes a bare
    /// service name.
    pub fn parse(text: &str, default_namespace: &str) -> Result<Self, ProviderError> {
        let file: File = serde_yaml::from_str(text).map_err(|e| ProviderError {
            index: 0,
            field: "extensionProviders".into(),
            problem: e.to_string(),
        })?;
        Self::from_file(&file, default_namespace)
    }

    pub fn from_file(file: &File, default_namespace: &str) -> Result<Self, ProviderError> {
        let mut by_name = BTreeMap::new();
        for (index, p) in file.extension_providers.iter().enumerate() {
            let bad = |field: &str, problem: String| ProviderError {
                index,
                field: field.to_owned(),
                problem,
            };
            if p.name.is_empty() {
                return Err(bad("name", "must not be empty".into()));
            }
            let entry = match &p.envoy_ext_authz_grpc {
                Some(spec) => Ok(provider(&p.name, spec, default_namespace).map_err(
                    |(field, problem)| bad(&format!("envoyExtAuthzGrpc.{field}"), problem),
                )?),
                None => Err(format!(
                    "extension provider `{}` is not envoyExtAuthzGrpc (it is {}); the waypoint asks gRPC authorizers only",
                    p.name,
                    p.other.keys().cloned().collect::<Vec<_>>().join(", ")
                )),
            };
            if by_name.insert(p.name.clone(), entry).is_some() {
                return Err(bad("name", format!("`{}` is named twice", p.name)));
            }
        }
        Ok(Self { by_name })
    }
}

fn provider(
    name: &str,
    spec: &GrpcSpec,
    default_namespace: &str,
) -> Result<Provider, (&'static str, String)> {
    let service = service_ref(&spec.service, default_namespace).ok_or((
        "service",
        format!(
            "`{}` is not a Service name (<name>.<namespace>.svc.cluster.local, <name>.<namespace> or <namespace>/<hostname>)",
            spec.service
        ),
    ))?;
    if spec.port == 0 {
        return Err(("port", "must be 1-65535".into()));
    }
    let timeout = match &spec.timeout {
        None => DEFAULT_TIMEOUT,
        Some(t) => duration(t).ok_or((
            "timeout",
            format!("`{t}` is not a positive duration (600s, 0.5s, 250ms)"),
        ))?,
    };
    let status_on_error = match &spec.status_on_error {
        None => StatusCode::FORBIDDEN,
        Some(s) => {
            let code = match s {
                StatusText::Text(t) => t.trim().parse::<u16>().ok(),
                StatusText::Number(n) => Some(*n),
            };
            code.filter(|c| (200..=599).contains(c))
                .and_then(|c| StatusCode::from_u16(c).ok())
                .ok_or(("statusOnError", "must be an HTTP status, 200-599".into()))?
        }
    };
    let include_headers = if spec.include_request_headers_in_check.is_empty() {
        None
    } else {
        Some(
            spec.include_request_headers_in_check
                .iter()
                .map(|h| {
                    HeaderName::from_bytes(h.to_ascii_lowercase().as_bytes()).map_err(|_| {
                        (
                            "includeRequestHeadersInCheck",
                            format!("`{h}` is not a header name"),
                        )
                    })
                })
                .collect::<Result<_, _>>()?,
        )
    };
    Ok(Provider {
        name: name.to_owned(),
        service,
        port: spec.port,
        timeout,
        fail_open: spec.fail_open,
        status_on_error,
        include_headers,
    })
}

/// A provider's `service` as a Service of the view.
pub fn service_ref(s: &str, default_namespace: &str) -> Option<ServiceRef> {
    let label = |p: &str| {
        !p.is_empty()
            && p.len() <= 63
            && p.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    };
    let (ns_hint, host) = match s.split_once('/') {
        Some((ns, host)) => (Some(ns), host),
        None => (None, s),
    };
    let host = host.strip_suffix('.').unwrap_or(host);
    let parts: Vec<&str> = host.split('.').collect();
    let (name, namespace) = match parts.as_slice() {
        [name] => (*name, ns_hint.unwrap_or(default_namespace)),
        [name, ns] | [name, ns, "svc"] => (*name, *ns),
        [name, ns, "svc", rest @ ..] if !rest.is_empty() => (*name, *ns),
        _ => return None,
    };
    if ns_hint.is_some_and(|h| h != namespace) {
        return None;
    }
    (label(name) && label(namespace)).then(|| ServiceRef {
        namespace: namespace.to_owned(),
        name: name.to_owned(),
    })
}

/// Istio's durations as written in meshConfig: a number (fractions too)
/// and a unit of `ms`, `s`, `m` or `h`.
pub fn duration(s: &str) -> Option<Duration> {
    let s = s.trim();
    let split = s.find(|c: char| !(c.is_ascii_digit() || c == '.'))?;
    let (n, unit) = s.split_at(split);
    let n: f64 = n.parse().ok()?;
    let secs = match unit {
        "ms" => n / 1000.0,
        "s" => n,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        _ => return None,
    };
    (secs.is_finite() && secs > 0.0 && secs < 1e9).then(|| Duration::from_secs_f64(secs))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_grpc_provider_with_istios_defaults() {
        let p = Providers::parse(
            "extensionProviders:\n- name: ext\n  envoyExtAuthzGrpc: {service: authz.security.svc.cluster.local, port: 9000}\n- name: zipkin\n  zipkin: {service: z, port: 9411}\n",
            "shop",
        )
        .unwrap();
        let ext = p.get("ext").unwrap();
        assert_eq!(ext.service.key(), "security/authz");
        assert_eq!(ext.timeout, DEFAULT_TIMEOUT);
        assert_eq!(ext.status_on_error, StatusCode::FORBIDDEN);
        assert!(!ext.fail_open && ext.include_headers.is_none());
        assert!(p.get("zipkin").unwrap_err().contains("zipkin"));
        assert!(p.get("nope").unwrap_err().contains("no extension provider"));
    }

    #[test]
    fn every_field_is_read_and_checked() {
        let p = Providers::parse(
            "extensionProviders:\n- name: ext\n  envoyExtAuthzGrpc:\n    service: authz\n    port: 9000\n    timeout: 0.5s\n    failOpen: true\n    statusOnError: \"503\"\n    includeRequestHeadersInCheck: [X-User]\n",
            "shop",
        )
        .unwrap();
        let ext = p.get("ext").unwrap();
        assert_eq!(ext.service.key(), "shop/authz");
        assert_eq!(ext.timeout, Duration::from_millis(500));
        assert!(ext.fail_open);
        assert_eq!(ext.status_on_error, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(ext.include_headers.as_deref().unwrap(), ["x-user"]);
        let err = |spec: &str| {
            Providers::parse(
                &format!("extensionProviders:\n- name: ext\n  envoyExtAuthzGrpc: {spec}\n"),
                "shop",
            )
            .unwrap_err()
            .field
        };
        assert_eq!(
            err("{service: a.b.c.d, port: 1}"),
            "envoyExtAuthzGrpc.service"
        );
        assert_eq!(err("{service: a, port: 0}"), "envoyExtAuthzGrpc.port");
        assert_eq!(
            err("{service: a, port: 1, timeout: 5}"),
            "envoyExtAuthzGrpc.timeout"
        );
        assert_eq!(
            err("{service: a, port: 1, statusOnError: \"99\"}"),
            "envoyExtAuthzGrpc.statusOnError"
        );
        assert_eq!(
            err("{service: a, port: 1, includeRequestHeadersInCheck: [\"a b\"]}"),
            "envoyExtAuthzGrpc.includeRequestHeadersInCheck"
        );
        assert!(
            Providers::parse("extensionProviders:\n- name: a\n  envoyExtAuthzGrpc: {service: a, port: 1}\n- name: a\n  envoyExtAuthzGrpc: {service: b, port: 1}\n", "shop")
                .unwrap_err()
                .problem
                .contains("twice")
        );
    }

    #[test]
    fn service_names() {
        let k = |s: &str| service_ref(s, "shop").map(|r| r.key());
        assert_eq!(
            k("authz.sec.svc.cluster.local").as_deref(),
            Some("sec/authz")
        );
        assert_eq!(k("authz.sec.svc").as_deref(), Some("sec/authz"));
        assert_eq!(k("authz.sec").as_deref(), Some("sec/authz"));
        assert_eq!(
            k("sec/authz.sec.svc.cluster.local").as_deref(),
            Some("sec/authz")
        );
        assert_eq!(k("authz").as_deref(), Some("shop/authz"));
        assert_eq!(k("other/authz.sec.svc.cluster.local"), None);
        assert_eq!(k("Authz.sec"), None);
        assert_eq!(k("a.b.c"), None);
    }

    #[test]
    fn durations() {
        assert_eq!(duration("600s"), Some(Duration::from_secs(600)));
        assert_eq!(duration("0.25s"), Some(Duration::from_millis(250)));
        assert_eq!(duration("250ms"), Some(Duration::from_millis(250)));
        assert_eq!(duration("2m"), Some(Duration::from_secs(120)));
        assert_eq!(duration("0s"), None);
        assert_eq!(duration("5"), None);
        assert_eq!(duration("s"), None);
    }
}
