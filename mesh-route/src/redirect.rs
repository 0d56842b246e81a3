//! RequestRedirect: the Location a redirected request is sent.

use http::StatusCode;

use crate::compile::{Redirect, Scheme};
use crate::rewrite::modify_path;

/// What of the request a redirect keeps.
#[derive(Clone, Copy, Debug)]
pub struct Original<'a> {
    pub scheme: Scheme,
    /// Host without port.
    pub host: &'a str,
    /// The port the request came in on (the Service port in the mesh):
    /// Gateway API's "listener port".
    pub port: u16,
    pub path: &'a str,
    /// The query, without `?`, kept as sent.
    pub query: Option<&'a str>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Redirection {
    pub status: StatusCode,
    pub location: String,
}

/// The Location per HTTPRequestRedirectFilter: a scheme given by the route
/// implies its well-known port, else the request's port stays; the port is
/// left out when it is the scheme's default (80 for http, 443 for https).
pub fn redirect(r: &Redirect, prefix: Option<&str>, req: &Original<'_>) -> Redirection {
    let scheme = r.scheme.unwrap_or(req.scheme);
    let host = r.hostname.as_deref().unwrap_or(req.host);
    let port = match (r.port, r.scheme) {
        (Some(p), _) => p,
        (None, Some(s)) => s.default_port(),
        (None, None) => req.port,
    };
    let path = match &r.path {
        Some(m) => modify_path(m, prefix, req.path),
        None => req.path.to_string(),
    };
    let mut location = format!("{}://", scheme.as_str());
    if host.contains(':') && !host.starts_with('[') {
        location.push('[');
        location.push_str(host);
        location.push(']');
    } else {
        location.push_str(host);
    }
    if port != scheme.default_port() {
        location.push(':');
        location.push_str(&port.to_string());
    }
    location.push_str(&path);
    if let Some(q) = req.query.filter(|q| !q.is_empty()) {
        location.push('?');
        location.push_str(q);
    }
    Redirection {
        status: r.status,
        location,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compile::PathModifier;

    fn base() -> Redirect {
        Redirect {
            scheme: None,
            hostname: None,
            port: None,
            path: None,
            status: StatusCode::FOUND,
        }
    }

    fn req(path: &str) -> Original<'_> {
        Original {
            scheme: Scheme::Http,
            host: "svc.ns.svc.cluster.local",
            port: 80,
            path,
            query: None,
        }
    }

    #[test]
    fn conformance_redirect_path() {
        // conformance/tests/httproute-redirect-path.go and .yaml (kubernetes-sigs/gateway-api).
        let prefix = |p: &str| PathModifier::ReplacePrefixMatch(p.into());
        let full = |p: &str| PathModifier::ReplaceFullPath(p.into());
        let cases = [
            (
                "/original-prefix/lemon",
                "/original-prefix",
                None,
                prefix("/replacement-prefix"),
                302,
                "http://svc.ns.svc.cluster.local/replacement-prefix/lemon",
            ),
            (
                "/full/path/original",
                "/full",
                None,
                full("/full-path-replacement"),
                302,
                "http://svc.ns.svc.cluster.local/full-path-replacement",
            ),
            (
                "/path-and-host",
                "/path-and-host",
                Some("example.org"),
                prefix("/replacement-prefix"),
                302,
                "http://example.org/replacement-prefix",
            ),
            (
                "/path-and-status",
                "/path-and-status",
                None,
                prefix("/replacement-prefix"),
                301,
                "http://svc.ns.svc.cluster.local/replacement-prefix",
            ),
            (
                "/full-path-and-host",
                "/full-path-and-host",
                Some("example.org"),
                full("/replacement-full"),
                302,
                "http://example.org/replacement-full",
            ),
            (
                "/full-path-and-status",
                "/full-path-and-status",
                None,
                full("/replacement-full"),
                301,
                "http://svc.ns.svc.cluster.local/replacement-full",
            ),
        ];
        for (path, matched, host, modifier, status, want) in cases {
            let r = Redirect {
                hostname: host.map(str::to_string),
                path: Some(modifier),
                status: StatusCode::from_u16(status).unwrap(),
                ..base()
            };
            let got = redirect(&r, Some(matched), &req(path));
            assert_eq!(got.location, want, "{path}");
            assert_eq!(got.status.as_u16(), status, "{path}");
        }
    }

    #[test]
    fn scheme_and_port_rules() {
        // conformance/tests/httproute-redirect-scheme.go and -port.go expectations,
        // with the spec's port derivation.
        let with = |scheme, port| Redirect {
            scheme,
            port,
            ..base()
        };
        let cases = [
            (
                with(Some(Scheme::Https), None),
                80,
                "https://svc.ns.svc.cluster.local/p",
            ),
            (
                with(Some(Scheme::Http), None),
                8080,
                "http://svc.ns.svc.cluster.local/p",
            ),
            (
                with(None, Some(8083)),
                80,
                "http://svc.ns.svc.cluster.local:8083/p",
            ),
            (
                with(None, None),
                8080,
                "http://svc.ns.svc.cluster.local:8080/p",
            ),
            (
                with(Some(Scheme::Https), Some(443)),
                80,
                "https://svc.ns.svc.cluster.local/p",
            ),
            (
                with(Some(Scheme::Https), Some(8443)),
                80,
                "https://svc.ns.svc.cluster.local:8443/p",
            ),
            (
                with(Some(Scheme::Http), Some(443)),
                80,
                "http://svc.ns.svc.cluster.local:443/p",
            ),
        ];
        for (r, port, want) in cases {
            let original = Original { port, ..req("/p") };
            assert_eq!(redirect(&r, Some(""), &original).location, want);
        }
    }

    #[test]
    fn query_kept_and_ipv6_bracketed() {
        let r = Redirect {
            scheme: Some(Scheme::Https),
            ..base()
        };
        let original = Original {
            host: "fd00::1",
            query: Some("a=1&b"),
            ..req("/x")
        };
        assert_eq!(
            redirect(&r, Some(""), &original).location,
            "https://[fd00::1]/x?a=1&b"
        );
        assert_eq!(
            redirect(&base(), None, &req("/x")).status,
            StatusCode::FOUND
        );
    }
}
