//! What a case expects of one request, and whether an answer meets it.
//!
//! [`Expected`] holds the fields of the suite's `http.ExpectedResponse`
//! that its mesh comparator (`compareRequest`,
//! conformance/utils/echo/pod.go) asserts, with the same rules: the status
//! among the expected ones (one gRPC OK for gRPC), each expected request
//! header equal to the received values joined with `,` (names in any
//! case), absent request and response headers, expected response headers
//! (`Get`: the first value), and the answering pod's name starting with
//! the expected backend.
//!
//! Upstream declares more than that comparator reads: the path the backend
//! must see, the redirect's target, the backend's namespace. The ported
//! cases assert those too, with the rules of the suite's north-south
//! comparator (`CompareRoundTrip`, conformance/utils/http/http.go), as
//! [`Expected::path`], [`Expected::location`] and [`Expected::namespace`]:
//! stricter than upstream's mesh cases, never looser.
use std::fmt::Write as _;

use crate::echo::Exchange;

/// One expected answer (`http.ExpectedResponse`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Expected {
    /// Any of these (`StatusCodes`; upstream's default is 200). For a
    /// gRPC call 200 means gRPC OK.
    pub statuses: Vec<u16>,
    /// The answering pod's name starts with this (`Backend`; empty: any).
    pub backend: String,
    /// Request headers the backend must have received
    /// (`ExpectedRequest.Headers`).
    pub request_headers: Vec<(String, String)>,
    /// Request headers the backend must not have received
    /// (`ExpectedRequest.AbsentHeaders`).
    pub absent_request_headers: Vec<String>,
    /// Response headers (`Response.Headers`).
    pub response_headers: Vec<(String, String)>,
    /// Response headers that must be missing (`Response.AbsentHeaders`).
    pub absent_response_headers: Vec<String>,
    /// The request target (path and query) the backend received
    /// (`ExpectedRequest.Path`, which upstream writes with the query; not
    /// read by the mesh comparator).
    pub path: Option<String>,
    /// The redirect's `Location` (`RedirectRequest`; not read by the mesh
    /// comparator), compared as `CompareRoundTrip` does: scheme, host,
    /// port (absent = the scheme's default), path.
    pub location: Option<String>,
    /// The answering pod's namespace (`Namespace`; not read by the mesh
    /// comparator).
    pub namespace: Option<String>,
}

impl Default for Expected {
    fn default() -> Self {
        Self {
            statuses: vec![200],
            backend: String::new(),
            request_headers: Vec::new(),
            absent_request_headers: Vec::new(),
            response_headers: Vec::new(),
            absent_response_headers: Vec::new(),
            path: None,
            location: None,
            namespace: None,
        }
    }
}

impl Expected {
    /// 200 from a pod of `backend`.
    pub fn backend(backend: &str) -> Self {
        Self {
            backend: backend.into(),
            ..Self::default()
        }
    }

    /// `status` from the mesh itself (a redirect, a 404): no backend.
    pub fn status(status: u16) -> Self {
        Self {
            statuses: vec![status],
            ..Self::default()
        }
    }

    pub fn request_header(mut self, name: &str, value: &str) -> Self {
        self.request_headers.push((name.into(), value.into()));
        self
    }

    pub fn absent_request_header(mut self, name: &str) -> Self {
        self.absent_request_headers.push(name.into());
        self
    }

    pub fn response_header(mut self, name: &str, value: &str) -> Self {
        self.response_headers.push((name.into(), value.into()));
        self
    }

    pub fn absent_response_header(mut self, name: &str) -> Self {
        self.absent_response_headers.push(name.into());
        self
    }

    pub fn path(mut self, path: &str) -> Self {
        self.path = Some(path.into());
        self
    }

    pub fn location(mut self, location: &str) -> Self {
        self.location = Some(location.into());
        self
    }

    pub fn namespace(mut self, namespace: &str) -> Self {
        self.namespace = Some(namespace.into());
        self
    }
}

/// Whether the call was gRPC: its status is gRPC's, not HTTP's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Http,
    Grpc,
}

/// Every way `got` differs from `want`, one per line; Ok when none.
pub fn compare(want: &Expected, got: &Exchange, protocol: Protocol) -> Result<(), String> {
    let mut problems = Vec::new();
    let status = match protocol {
        Protocol::Http => Some(got.status),
        // Istio's client reports a gRPC OK as the echo's StatusCode=200;
        // any other outcome is a failed call.
        Protocol::Grpc => (got.status == 200 && got.grpc_status() == Some(0)).then_some(200),
    };
    if !status.is_some_and(|s| want.statuses.contains(&s)) {
        problems.push(format!(
            "status: want one of {:?}, got HTTP {} (grpc-status {:?}), body {:?}",
            want.statuses,
            got.status,
            got.grpc_status(),
            got.body
        ));
    }
    let echo = got.echo.as_ref();
    let backend_sees = |name: &str| echo.and_then(|e| e.header(name));
    for (name, value) in &want.request_headers {
        match backend_sees(name) {
            Some(v) if v == *value => {}
            v => problems.push(format!(
                "request header {name}: want {value:?}, the backend saw {v:?}"
            )),
        }
    }
    for name in &want.absent_request_headers {
        if let Some(v) = backend_sees(name) {
            problems.push(format!(
                "request header {name}: want none, the backend saw {v:?}"
            ));
        }
    }
    for name in &want.absent_response_headers {
        if let Some(v) = got.header(name) {
            problems.push(format!("response header {name}: want none, got {v:?}"));
        }
    }
    for (name, value) in &want.response_headers {
        // http.Header.Get: the first value.
        let first = got
            .headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str());
        if first != Some(value.as_str()) {
            problems.push(format!(
                "response header {name}: want {value:?}, got {first:?}"
            ));
        }
    }
    let hostname = echo.map_or("", |e| e.pod.as_str());
    if !hostname.starts_with(&want.backend) {
        problems.push(format!(
            "backend: want a pod of {:?}, answered by {hostname:?}",
            want.backend
        ));
    }
    if let Some(path) = &want.path {
        let seen = echo.map(|e| e.url.as_str());
        if seen != Some(path.as_str()) {
            problems.push(format!("path: want {path:?}, the backend saw {seen:?}"));
        }
    }
    if let Some(namespace) = &want.namespace {
        let seen = echo.map(|e| e.namespace.as_str());
        if seen != Some(namespace.as_str()) {
            problems.push(format!(
                "namespace: want a pod of {namespace:?}, answered from {seen:?}"
            ));
        }
    }
    if let Some(location) = &want.location
        && let Err(e) = same_location(location, got)
    {
        problems.push(e);
    }
    if problems.is_empty() {
        Ok(())
    } else {
        let mut s = String::new();
        for p in problems {
            let _ = writeln!(s, "  {p}");
        }
        Err(s.trim_end().to_owned())
    }
}

/// `Location` against the URL `want`, as `CompareRoundTrip` checks a
/// redirect: scheme, host and path equal; a port left out stands for the
/// scheme's default, so `http://echo/x` and `http://echo:80/x` are the
/// same target.
fn same_location(want: &str, got: &Exchange) -> Result<(), String> {
    let raw = got.header("location");
    let (Some(have), Some(w)) = (got.location(), location_of(want)) else {
        return Err(format!("Location: want {want:?}, got {raw:?}"));
    };
    let port = |scheme: &Option<String>, port: Option<u16>| {
        port.or(match scheme.as_deref() {
            Some("http") => Some(80),
            Some("https") => Some(443),
            _ => None,
        })
    };
    let same = have.scheme == w.scheme
        && have.host == w.host
        && port(&have.scheme, have.port) == port(&w.scheme, w.port)
        && have.path == w.path;
    if same {
        Ok(())
    } else {
        Err(format!("Location: want {want:?}, got {raw:?}"))
    }
}

fn location_of(url: &str) -> Option<crate::echo::Location> {
    Exchange {
        status: 0,
        version: String::new(),
        headers: vec![("location".into(), url.into())],
        trailers: Vec::new(),
        echo: None,
        body: String::new(),
    }
    .location()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::echo::EchoResponse;

    fn echoed(pod: &str, headers: &[(&str, &str)]) -> Exchange {
        Exchange {
            status: 200,
            version: "HTTP/1.1".into(),
            headers: vec![
                ("content-type".into(), "application/text".into()),
                ("x-header-set".into(), "set".into()),
            ],
            trailers: Vec::new(),
            echo: Some(EchoResponse {
                pod: pod.into(),
                namespace: "gateway-conformance-mesh".into(),
                host: "echo".into(),
                url: "/one/two?x=1".into(),
                method: "GET".into(),
                proto: "HTTP/1.1".into(),
                port: Some(8080),
                ip: None,
                request_headers: headers
                    .iter()
                    .map(|(n, v)| ((*n).into(), (*v).into()))
                    .collect(),
                message: None,
            }),
            body: String::new(),
        }
    }

    fn redirect(status: u16, location: &str) -> Exchange {
        Exchange {
            status,
            version: "HTTP/1.1".into(),
            headers: vec![("location".into(), location.into())],
            trailers: Vec::new(),
            echo: None,
            body: String::new(),
        }
    }

    const V1: &str = "echo-v1-bcdfghjklm-npqrs";

    #[test]
    fn an_answer_meeting_every_field_passes() {
        let got = echoed(
            V1,
            &[
                ("X-Header-Add", "some-other-value"),
                ("X-Header-Add", "add-appends-values"),
            ],
        );
        let want = Expected::backend("echo-v1")
            .request_header("x-header-add", "some-other-value,add-appends-values")
            .absent_request_header("X-Header-Remove")
            .response_header("X-Header-Set", "set")
            .absent_response_header("X-Other")
            .path("/one/two?x=1")
            .namespace("gateway-conformance-mesh");
        assert_eq!(compare(&want, &got, Protocol::Http), Ok(()));
    }

    #[test]
    fn each_field_that_differs_is_named() {
        let got = echoed(V1, &[("X-Header-Remove", "val")]);
        let want = Expected::backend("echo-v2")
            .request_header("X-Header-Set", "set-overwrites-values")
            .absent_request_header("x-header-remove")
            .absent_response_header("X-Header-Set")
            .path("/one")
            .namespace("elsewhere");
        let e = compare(&want, &got, Protocol::Http).unwrap_err();
        for field in [
            "request header X-Header-Set",
            "request header x-header-remove",
            "response header X-Header-Set",
            "backend",
            "path",
            "namespace",
        ] {
            assert!(e.contains(field), "{field} not in {e}");
        }
        assert!(!e.contains("status"), "{e}");
    }

    #[test]
    fn the_backend_is_a_name_prefix_and_an_empty_one_takes_any_answer() {
        let got = echoed(V1, &[]);
        assert!(compare(&Expected::backend("echo"), &got, Protocol::Http).is_ok());
        assert!(compare(&Expected::default(), &got, Protocol::Http).is_ok());
        let e = compare(&Expected::status(404), &got, Protocol::Http).unwrap_err();
        assert!(e.contains("status"), "{e}");
    }

    #[test]
    fn a_redirect_is_its_status_and_its_target_with_default_ports_implied() {
        let want = Expected::status(302).location("http://echo/replacement-prefix/lemon");
        let ok = |loc: &str| compare(&want, &redirect(302, loc), Protocol::Http);
        assert_eq!(ok("http://echo/replacement-prefix/lemon"), Ok(()));
        assert_eq!(ok("http://echo:80/replacement-prefix/lemon"), Ok(()));
        assert!(ok("http://echo:8080/replacement-prefix/lemon").is_err());
        assert!(ok("https://echo/replacement-prefix/lemon").is_err());
        assert!(ok("http://example.org/replacement-prefix/lemon").is_err());
        assert!(ok("http://echo/original-prefix/lemon").is_err());
        let https = Expected::status(301).location("https://echo/scheme-and-status");
        assert!(
            compare(
                &https,
                &redirect(301, "https://echo:443/scheme-and-status"),
                Protocol::Http
            )
            .is_ok()
        );
        let e = compare(
            &https,
            &redirect(302, "https://echo/scheme-and-status"),
            Protocol::Http,
        )
        .unwrap_err();
        assert!(e.contains("status") && !e.contains("Location"), "{e}");
        let none = Exchange {
            headers: Vec::new(),
            ..redirect(301, "")
        };
        assert!(
            compare(&https, &none, Protocol::Http)
                .unwrap_err()
                .contains("Location")
        );
    }

    #[test]
    fn a_grpc_call_passes_as_200_only_with_grpc_ok() {
        let mut got = echoed(V1, &[]);
        got.trailers = vec![("grpc-status".into(), "0".into())];
        assert!(compare(&Expected::backend("echo-v1"), &got, Protocol::Grpc).is_ok());
        got.trailers = vec![("grpc-status".into(), "14".into())];
        assert!(compare(&Expected::backend("echo-v1"), &got, Protocol::Grpc).is_err());
    }
}
