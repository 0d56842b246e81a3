//! HBONE request heads, as h2 hands them to the listener: whatever the
//! peer sends, `ConnectRequest::parse` answers with a destination or a
//! refusal, and its answers keep their promises.
#![no_main]

use std::net::SocketAddr;

use http::{HeaderName, HeaderValue, Method, Request, StatusCode, Uri, uri};
use libfuzzer_sys::{
    arbitrary::{self, Arbitrary},
    fuzz_target,
};
use mesh_hbone::request::{ConnectRequest, Refusal};

#[derive(Arbitrary, Debug)]
struct Head<'a> {
    /// Most peers send CONNECT; random bytes would rarely spell it.
    connect: bool,
    method: &'a [u8],
    authority: &'a [u8],
    /// h2 gives non-CONNECT requests a scheme and a path too.
    path: Option<&'a [u8]>,
    traceparent: Option<&'a [u8]>,
    headers: Vec<(&'a [u8], &'a [u8])>,
}

/// The request h2 would build, or `None` where h2 itself refuses the
/// stream (a method, authority or header that does not parse).
fn build(head: &Head<'_>) -> Option<Request<()>> {
    let method = if head.connect {
        Method::CONNECT
    } else {
        Method::from_bytes(head.method).ok()?
    };
    let mut parts = uri::Parts::default();
    parts.authority = Some(uri::Authority::try_from(head.authority).ok()?);
    if let Some(path) = head.path {
        parts.scheme = Some(uri::Scheme::HTTPS);
        parts.path_and_query = Some(uri::PathAndQuery::try_from(path).ok()?);
    }
    let mut request = Request::builder()
        .method(method)
        .uri(Uri::from_parts(parts).ok()?);
    let headers = head
        .traceparent
        .map(|t| (&b"traceparent"[..], t))
        .into_iter()
        .chain(head.headers.iter().copied());
    for (name, value) in headers {
        let name = HeaderName::from_bytes(name).ok()?;
        let value = HeaderValue::from_bytes(value).ok()?;
        request = request.header(name, value);
    }
    request.body(()).ok()
}

fuzz_target!(|head: Head<'_>| {
    let Some(request) = build(&head) else {
        return;
    };
    let authority = request.uri().authority().map(|a| a.as_str());
    match ConnectRequest::parse(request.method(), request.uri(), request.headers()) {
        Ok(ConnectRequest { dst, trace_id, .. }) => {
            assert_eq!(request.method(), Method::CONNECT);
            let written: SocketAddr = authority.unwrap().parse().unwrap();
            assert_eq!(dst.ip(), written.ip().to_canonical());
            assert_eq!(dst.port(), written.port());
            assert_eq!(dst.ip(), dst.ip().to_canonical(), "not canonical");
            if let Some(id) = trace_id {
                let header = request.headers().get("traceparent").unwrap();
                assert!(!id.contains('-'));
                assert!(header.to_str().unwrap().contains(&id));
            }
        }
        Err(refusal) => {
            let (status, text) = match &refusal {
                Refusal::NotConnect { method } => {
                    assert_ne!(method, Method::CONNECT);
                    assert_eq!(method, request.method());
                    (StatusCode::METHOD_NOT_ALLOWED, "only CONNECT is served")
                }
                Refusal::BadAuthority { authority: refused } => {
                    assert_eq!(request.method(), Method::CONNECT);
                    assert_eq!(refused.as_deref(), authority);
                    assert!(authority.is_none_or(|a| a.parse::<SocketAddr>().is_err()));
                    (StatusCode::BAD_REQUEST, "authority is not ip:port")
                }
            };
            assert_eq!(refusal.status(), status);
            assert_eq!(refusal.to_string(), text);
        }
    }
});
