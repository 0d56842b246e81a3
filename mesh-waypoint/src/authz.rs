//! L7 AuthorizationPolicy at the waypoint: the policies bound by
//! `targetRefs` to this waypoint's Gateway, to its GatewayClass (from the
//! root namespace) or to the request's Service (`scope`, `applicable`:
//! pure, as `ratelimit` picks its policies), evaluated by
//! `mesh_policy::l7` over the request's facts, in Istio's order: CUSTOM
//! (the external authorizer, `ext_authz`), then DENY, then ALLOW.
//!
//! A denial is answered 403 `RBAC: access denied` as Envoy's RBAC filter
//! answers it (an external authorizer's denial with its own status,
//! headers and body), flagged `RBAC` in the access log and metrics,
//! counted in `mesh_waypoint_authorization_denied_requests_total{policy,
//! action, dry_run}`, and logged with Envoy's `response_code_details`
//! (`rbac_access_denied_matched_policy[ns[<ns>]-policy[<name>]]`, `[none]`
//! when ALLOW policies exist and none matched, `ext_authz_denied`,
//! `ext_authz_error`). Dry-run policies are logged and counted with
//! `dry_run="true"`, never enforced; AUDIT policies are logged. Until the
//! policies have been read whole every request is denied (action
//! `NOT_SYNCED`), as node agents refuse inbound connections then.
use std::{borrow::Cow, net::SocketAddr};

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Request, StatusCode};
use mesh_discovery::view::MeshView;
use mesh_identity::Identity;
use mesh_policy::{
    RequestAuth, Verdict,
    l7::{self, Evaluation, Headers, Scope, WaypointPolicy},
};
use tracing::{debug, info, warn};

use crate::{
    ext_authz::{self, Answer, CheckError, CheckFacts},
    handler::StreamContext,
    protocol::Protocol,
    target::Target,
    waypoint::Waypoint,
};

/// Envoy's body for a request its RBAC filter denied.
pub const DENIED_BODY: &str = "RBAC: access denied";

/// A request's headers as policies read them.
pub struct HeaderFacts<'a>(pub &'a HeaderMap);

impl Headers for HeaderFacts<'_> {
    fn get(&self, name: &str) -> Option<Cow<'_, str>> {
        let mut values = self.0.get_all(name).iter();
        let first = values.next()?;
        let first = String::from_utf8_lossy(first.as_bytes());
        match values.next() {
            None => Some(first),
            Some(second) => {
                let mut joined = first.into_owned();
                for v in std::iter::once(second).chain(values) {
                    joined.push(',');
                    joined.push_str(&String::from_utf8_lossy(v.as_bytes()));
                }
                Some(Cow::Owned(joined))
            }
        }
    }
}

/// Where a request stands, as bindings name it.
pub fn scope<'a>(
    view: &'a MeshView,
    wp: &'a Waypoint,
    class: &'a str,
    target: &'a Target,
) -> Scope<'a> {
    Scope {
        root_namespace: &view.policies.root_namespace,
        gateway_namespace: &wp.gateway.namespace,
        gateway_name: &wp.gateway.name,
        gateway_class: class,
        service: match target {
            Target::Service { route, .. } => Some((
                route.service.namespace.as_str(),
                route.service.name.as_str(),
            )),
            Target::Workload { .. } => None,
        },
    }
}

/// The policies that govern a request in `scope`.
pub fn applicable<'a>(
    policies: &'a [std::sync::Arc<WaypointPolicy>],
    scope: &'a Scope<'a>,
) -> impl Iterator<Item = &'a WaypointPolicy> + Clone + 'a {
    policies
        .iter()
        .map(|p| p.as_ref())
        .filter(move |p| p.applies(scope))
}

/// A request refused, and what the client is answered.
#[derive(Debug, Clone, PartialEq)]
pub struct Denial {
    pub status: StatusCode,
    pub headers: Vec<(HeaderName, HeaderValue)>,
    pub body: Bytes,
    /// Envoy's `response_code_details` for it.
    pub details: String,
    /// `<namespace>/<name>`, or `-` when no policy matched (ALLOW
    /// policies exist and none allowed).
    pub policy: String,
    /// The action that refused: `DENY`, `ALLOW` or `CUSTOM`.
    pub action: &'static str,
}

/// `rbac_access_denied_matched_policy[...]`, as Envoy names the policy
/// that denied (Istio names its RBAC policies `ns[<ns>]-policy[<name>]`).
pub fn details(policy: Option<&str>) -> String {
    let inner = match policy.and_then(|p| p.split_once('/')) {
        Some((ns, name)) => format!("ns[{ns}]-policy[{name}]"),
        None => "none".to_owned(),
    };
    format!("rbac_access_denied_matched_policy[{inner}]")
}

/// The denial a DENY/ALLOW verdict is, if it is one.
pub fn rbac_denial(verdict: &Verdict) -> Option<Denial> {
    let Verdict::Deny { policy } = verdict else {
        return None;
    };
    Some(Denial {
        status: StatusCode::FORBIDDEN,
        headers: vec![(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain"),
        )],
        body: Bytes::from_static(DENIED_BODY.as_bytes()),
        details: details(policy.as_deref()),
        policy: policy.clone().unwrap_or_else(|| "-".into()),
        action: if policy.is_some() { "DENY" } else { "ALLOW" },
    })
}

/// The gRPC status a denial's HTTP status becomes for a gRPC client, as
/// Envoy maps its local replies (`Grpc::Utility::httpToGrpcStatus`).
pub fn grpc_status(status: StatusCode) -> u32 {
    match status.as_u16() {
        400 => 13,
        401 => 16,
        403 => 7,
        404 => 12,
        429 | 502 | 503 | 504 => 14,
        _ => 2,
    }
}

/// `grpc-message`'s form of a text: percent-encoded outside printable
/// ASCII and `%`, as gRPC specifies.
pub fn grpc_message(text: &[u8]) -> String {
    let mut out = String::with_capacity(text.len());
    for &b in text {
        if (0x20..=0x7e).contains(&b) && b != b'%' {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The denial of every request while the policies are not read whole.
pub fn unsynced_denial() -> Denial {
    Denial {
        status: StatusCode::FORBIDDEN,
        headers: vec![(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain"),
        )],
        body: Bytes::from_static(DENIED_BODY.as_bytes()),
        details: "rbac_access_denied_policies_not_synced".into(),
        policy: "-".into(),
        action: "NOT_SYNCED",
    }
}

/// The facts of one request at the waypoint.
struct Facts {
    source: Option<Identity>,
    source_ip: std::net::IpAddr,
    dst: SocketAddr,
    method: String,
    path: String,
}

impl Facts {
    fn request<'a>(
        &'a self,
        authority: &'a str,
        headers: &'a HeaderFacts<'a>,
        auth: Option<&'a RequestAuth>,
    ) -> l7::Request<'a> {
        l7::Request {
            source: self.source.as_ref(),
            source_ip: self.source_ip,
            // No proxy in front of the waypoint is trusted: the client is
            // the source (Istio's default, numTrustedProxies 0).
            remote_ip: self.source_ip,
            destination_ip: self.dst.ip(),
            destination_port: self.dst.port(),
            host: authority,
            method: &self.method,
            path: &self.path,
            headers,
            auth,
        }
    }
}

fn evaluate<'p>(
    policies: impl Iterator<Item = &'p WaypointPolicy> + Clone,
    facts: &Facts,
    authority: &str,
    headers: &HeaderMap,
    auth: Option<&RequestAuth>,
) -> Evaluation {
    let h = HeaderFacts(headers);
    l7::evaluate(policies, &facts.request(authority, &h, auth))
}

/// Fails closed, as node agents do, until the policies have been read
/// whole: a policy not read yet could be one that refuses. The denial, if
/// any, is logged (`what` says what was refused) and counted.
fn unsynced(wp: &Waypoint, view: &MeshView, authority: &str, what: &str) -> Option<Denial> {
    let why = view.policies.sync.check().err()?;
    let d = unsynced_denial();
    if wp.should_log() {
        warn!(authority, reason = %why, "{what}: the authorization policies have not been read whole");
    }
    wp.telemetry
        .authorization_denied(&d.policy, d.action, false);
    Some(d)
}

/// The class of this waypoint's Gateway, which policies in the root
/// namespace may bind.
fn own_class(wp: &Waypoint, view: &MeshView) -> String {
    view.waypoint(&wp.gateway.to_string())
        .map(|w| w.gateway.class.clone())
        .unwrap_or_default()
}

/// What the stream says of its client and destination, with the request's
/// method and path (empty for a TCP stream).
fn facts(ctx: &StreamContext, method: String, path: String) -> Facts {
    Facts {
        source: ctx
            .source
            .principal
            .as_deref()
            .and_then(|p| Identity::parse(p).ok()),
        source_ip: ctx.carries.ip(),
        dst: ctx.dst,
        method,
        path,
    }
}

/// Checks a request against the policies that govern it; on the way, an
/// external authorizer's `ok_response` headers are applied to it. `Err`:
/// answer the client with the denial.
pub async fn check<B>(
    wp: &Waypoint,
    view: &MeshView,
    ctx: &StreamContext,
    protocol: Protocol,
    request: &mut Request<B>,
    authority: &str,
    request_auth: Option<&RequestAuth>,
) -> Result<(), Denial> {
    if let Some(d) = unsynced(wp, view, authority, "request denied (403)") {
        return Err(d);
    }
    if view.waypoint_policies.is_empty() {
        return Ok(());
    }
    let class = own_class(wp, view);
    let scope = scope(view, wp, &class, &ctx.target);
    let policies = applicable(&view.waypoint_policies, &scope);
    if policies.clone().next().is_none() {
        return Ok(());
    }
    let facts = facts(
        ctx,
        request.method().as_str().to_owned(),
        request
            .uri()
            .path_and_query()
            .map_or_else(|| "/".to_owned(), |p| p.as_str().to_owned()),
    );
    let mut evaluation = evaluate(
        policies.clone(),
        &facts,
        authority,
        request.headers(),
        request_auth,
    );
    for p in &evaluation.audited {
        info!(policy = %p, authority, method = %facts.method, path = %facts.path, source = ?ctx.source.principal, "AUDIT policy matched the request");
    }
    for c in &evaluation.dry_run_custom {
        info!(policy = %c.policy, provider = %c.provider, authority, "dry-run CUSTOM policy matched; its provider is not asked");
    }
    if !evaluation.custom.is_empty() {
        for custom in &evaluation.custom {
            custom_check(wp, view, ctx, protocol, request, authority, custom).await?;
        }
        // The authorizer may have changed headers the rules test, as
        // Envoy's RBAC filter sees them after ext_authz's.
        evaluation = evaluate(
            policies.clone(),
            &facts,
            authority,
            request.headers(),
            request_auth,
        );
    }
    if let Some(would) = &evaluation.dry_run {
        let policy = match would {
            Verdict::Allow { policy } | Verdict::Deny { policy } => policy.as_deref(),
        };
        info!(
            authority,
            method = %facts.method,
            path = %facts.path,
            source = ?ctx.source.principal,
            enforced = %evaluation.enforced.reason(),
            dry_run = %would.reason(),
            "dry-run authorization policy would have changed the outcome; not enforced"
        );
        if !would.allowed() {
            wp.telemetry.authorization_denied(
                policy.unwrap_or("-"),
                if policy.is_some() { "DENY" } else { "ALLOW" },
                true,
            );
        }
    }
    match rbac_denial(&evaluation.enforced) {
        None => Ok(()),
        Some(denial) => {
            log_denial(wp, ctx, authority, &facts.method, &facts.path, &denial);
            Err(denial)
        }
    }
}

fn log_denial(
    wp: &Waypoint,
    ctx: &StreamContext,
    authority: &str,
    method: &str,
    path: &str,
    d: &Denial,
) {
    wp.telemetry
        .authorization_denied(&d.policy, d.action, false);
    if wp.should_log() {
        info!(authority, method, path, source = ?ctx.source.principal, policy = %d.policy, action = d.action, status = d.status.as_u16(), response_code_details = %d.details, "request denied by authorization policy");
    } else {
        debug!(authority, method, path, source = ?ctx.source.principal, policy = %d.policy, action = d.action, status = d.status.as_u16(), response_code_details = %d.details, "request denied by authorization policy");
    }
}

/// One CUSTOM policy's check of an HTTP request: the provider's header
/// changes are applied to it, or the denial returned.
async fn custom_check<B>(
    wp: &Waypoint,
    view: &MeshView,
    ctx: &StreamContext,
    protocol: Protocol,
    request: &mut Request<B>,
    authority: &str,
    custom: &l7::Custom,
) -> Result<(), Denial> {
    let method = request.method().as_str().to_owned();
    let path = request
        .uri()
        .path_and_query()
        .map_or_else(|| "/".to_owned(), |p| p.as_str().to_owned());
    let headers = request.headers().clone();
    let said = ask(
        wp,
        view,
        ctx,
        custom,
        authority,
        &method,
        &path,
        |provider| {
            ext_authz::check_request(
                &CheckFacts {
                    source: ctx.carries,
                    source_principal: ctx.source.principal.as_deref(),
                    destination: ctx.dst,
                    method: &method,
                    host: authority,
                    path: &path,
                    protocol: match protocol {
                        Protocol::Http2 => "HTTP/2",
                        _ => "HTTP/1.1",
                    },
                    headers: &headers,
                },
                provider,
            )
        },
    )
    .await?;
    said.apply(request.headers_mut());
    Ok(())
}

/// Asks one CUSTOM policy's provider (the check built by `check`): its
/// header changes when it allows, else the denial (its own, or on an error
/// `failOpen` and `statusOnError` decide).
#[allow(clippy::too_many_arguments)]
async fn ask(
    wp: &Waypoint,
    view: &MeshView,
    ctx: &StreamContext,
    custom: &l7::Custom,
    authority: &str,
    method: &str,
    path: &str,
    check: impl FnOnce(&ext_authz::providers::Provider) -> ext_authz::proto::CheckRequest,
) -> Result<ext_authz::HeaderChanges, Denial> {
    let providers = wp.ext_authz.providers();
    let error_denial = |status: StatusCode| Denial {
        status,
        headers: Vec::new(),
        body: Bytes::new(),
        details: "ext_authz_error".into(),
        policy: custom.policy.clone(),
        action: "CUSTOM",
    };
    let provider = match providers.get(&custom.provider) {
        Ok(p) => p,
        Err(why) => {
            warn!(policy = %custom.policy, provider = %custom.provider, problem = %why, "CUSTOM policy names no usable extension provider; denying (403)");
            let d = error_denial(StatusCode::FORBIDDEN);
            log_denial(wp, ctx, authority, method, path, &d);
            return Err(d);
        }
    };
    let check = check(provider);
    let asked = tokio::time::timeout(
        provider.timeout,
        wp.ext_authz.check(wp, view, provider, ctx.carries, &check),
    )
    .await
    .unwrap_or(Err(CheckError::Timeout(provider.timeout)));
    match asked {
        Ok(Answer::Allowed(changes)) => {
            debug!(policy = %custom.policy, provider = %provider.name, authority, "external authorizer allowed the request");
            Ok(changes)
        }
        Ok(Answer::Denied {
            status,
            headers,
            body,
        }) => {
            let d = Denial {
                status,
                headers,
                body,
                details: "ext_authz_denied".into(),
                policy: custom.policy.clone(),
                action: "CUSTOM",
            };
            log_denial(wp, ctx, authority, method, path, &d);
            Err(d)
        }
        Err(e) if provider.fail_open => {
            warn!(policy = %custom.policy, provider = %provider.name, error = %e, "external authorizer not asked; failOpen lets the request through");
            Ok(ext_authz::HeaderChanges::default())
        }
        Err(e) => {
            warn!(policy = %custom.policy, provider = %provider.name, error = %e, status = provider.status_on_error.as_u16(), "external authorizer not asked; denying (statusOnError)");
            let d = error_denial(provider.status_on_error);
            log_denial(wp, ctx, authority, method, path, &d);
            Err(d)
        }
    }
}

/// Checks a TCP stream the waypoint relays against the policies that
/// govern its destination, as Istio applies them to TCP
/// (`mesh_policy::l7::evaluate_tcp`); a CUSTOM policy's provider is asked
/// with the connection's attributes only. `Err`: reset the stream.
pub async fn check_stream(
    wp: &Waypoint,
    view: &MeshView,
    ctx: &StreamContext,
) -> Result<(), Denial> {
    let authority = ctx.dst.to_string();
    if let Some(d) = unsynced(wp, view, &authority, "TCP stream refused") {
        return Err(d);
    }
    if view.waypoint_policies.is_empty() {
        return Ok(());
    }
    let class = own_class(wp, view);
    let scope = scope(view, wp, &class, &ctx.target);
    let policies = applicable(&view.waypoint_policies, &scope);
    if policies.clone().next().is_none() {
        return Ok(());
    }
    let facts = facts(ctx, String::new(), String::new());
    let no_headers = HeaderMap::new();
    let h = HeaderFacts(&no_headers);
    let evaluation = l7::evaluate_tcp(policies, &facts.request("", &h, None));
    for p in &evaluation.audited {
        info!(policy = %p, authority, source = ?ctx.source.principal, "AUDIT policy matched the TCP stream");
    }
    for custom in &evaluation.custom {
        ask(wp, view, ctx, custom, &authority, "", "", |provider| {
            let mut check = ext_authz::check_request(
                &CheckFacts {
                    source: ctx.carries,
                    source_principal: ctx.source.principal.as_deref(),
                    destination: ctx.dst,
                    method: "",
                    host: "",
                    path: "",
                    protocol: "",
                    headers: &no_headers,
                },
                provider,
            );
            if let Some(a) = check.attributes.as_mut() {
                a.request = None;
            }
            check
        })
        .await?;
    }
    if let Some(would) = &evaluation.dry_run {
        let policy = match would {
            Verdict::Allow { policy } | Verdict::Deny { policy } => policy.as_deref(),
        };
        info!(authority, source = ?ctx.source.principal, enforced = %evaluation.enforced.reason(), dry_run = %would.reason(), "dry-run authorization policy would have changed the outcome for a TCP stream; not enforced");
        if !would.allowed() {
            wp.telemetry.authorization_denied(
                policy.unwrap_or("-"),
                if policy.is_some() { "DENY" } else { "ALLOW" },
                true,
            );
        }
    }
    match rbac_denial(&evaluation.enforced) {
        None => Ok(()),
        Some(denial) => {
            log_denial(wp, ctx, &authority, "", "", &denial);
            Err(denial)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn details_name_the_policy_as_envoy_does() {
        assert_eq!(
            details(Some("shop/deny-admin")),
            "rbac_access_denied_matched_policy[ns[shop]-policy[deny-admin]]"
        );
        assert_eq!(details(None), "rbac_access_denied_matched_policy[none]");
    }

    #[test]
    fn only_a_deny_verdict_is_a_denial() {
        assert_eq!(rbac_denial(&Verdict::Allow { policy: None }), None);
        let d = rbac_denial(&Verdict::Deny {
            policy: Some("shop/p".into()),
        })
        .unwrap();
        assert_eq!(
            (d.status, d.action, d.policy.as_str()),
            (StatusCode::FORBIDDEN, "DENY", "shop/p")
        );
        assert_eq!(d.body, DENIED_BODY);
        let none = rbac_denial(&Verdict::Deny { policy: None }).unwrap();
        assert_eq!((none.action, none.policy.as_str()), ("ALLOW", "-"));
    }

    #[test]
    fn grpc_clients_get_envoys_status_and_an_encoded_message() {
        assert_eq!(grpc_status(StatusCode::FORBIDDEN), 7);
        assert_eq!(grpc_status(StatusCode::UNAUTHORIZED), 16);
        assert_eq!(grpc_status(StatusCode::SERVICE_UNAVAILABLE), 14);
        assert_eq!(grpc_status(StatusCode::IM_A_TEAPOT), 2);
        assert_eq!(grpc_message(b"RBAC: access denied"), "RBAC: access denied");
        assert_eq!(grpc_message("50% \u{e9}\n".as_bytes()), "50%25 %C3%A9%0A");
    }

    #[test]
    fn unread_policies_deny() {
        let d = unsynced_denial();
        assert_eq!((d.status, d.action), (StatusCode::FORBIDDEN, "NOT_SYNCED"));
        assert_eq!(d.body, DENIED_BODY);
    }

    #[test]
    fn several_values_of_a_header_read_as_one() {
        let mut h = HeaderMap::new();
        h.append("x-a", "1".parse().unwrap());
        h.append("x-a", "2".parse().unwrap());
        h.insert("x-b", "3".parse().unwrap());
        let f = HeaderFacts(&h);
        assert_eq!(f.get("x-a").as_deref(), Some("1,2"));
        assert_eq!(f.get("x-b").as_deref(), Some("3"));
        assert_eq!(f.get("x-c"), None);
    }
}
