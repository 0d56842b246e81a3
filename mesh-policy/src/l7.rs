//! AuthorizationPolicy at the waypoint: the policies bound by `targetRefs`
//! (or the deprecated `targetRef`) to a waypoint's Gateway, to a Service it
//! serves, or (from the root namespace) to the waypoint class, compiled
//! with every L7 field Istio documents and evaluated per request, as pure
//! functions.
//!
//! Node agents skip these policies (`authz::AuthorizationPolicy::compile`
//! returns nothing for them, as ztunnel does); the waypoint checks every
//! field of them, the L4 ones (ports, ipBlocks, principals, namespaces)
//! included, since it has those facts too.
//!
//! Order, as Istio's: CUSTOM first (the caller asks the external
//! authorizer of each matching CUSTOM policy), then DENY, then ALLOW (no
//! ALLOW policy allows; ALLOW policies of which none matches deny). AUDIT
//! policies only say that they matched. A policy that cannot be compiled
//! stands in as a DENY of everything in its scope.
use std::{borrow::Cow, collections::BTreeMap, net::IpAddr};

use mesh_identity::Identity;
use serde_json::Value;

use crate::{
    RequestAuth,
    authz::{Cidr, PolicyError, Verdict, cidrs, dry_run, err, ports, string_match},
    load::{Failure, Loaded, decode_authorization},
    model::{self, Action},
};

/// Gateway API's group, the group of a Gateway or GatewayClass `targetRef`.
pub const GATEWAY_GROUP: &str = "gateway.networking.k8s.io";

/// What a waypoint-bound policy applies to. References never leave the
/// policy's namespace (Istio refuses cross-namespace `targetRefs`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Binding {
    /// Every request a waypoint of this Gateway serves.
    Gateway { namespace: String, name: String },
    /// Requests for this Service, at whichever waypoint serves it.
    Service { namespace: String, name: String },
    /// Every request of every waypoint of this class. Only a policy of the
    /// root namespace binds a class, as Istio allows it; one elsewhere
    /// binds nothing.
    GatewayClass { namespace: String, name: String },
    /// Everything a waypoint serves in the namespace: the scope of a policy
    /// whose `targetRefs` cannot be read (its stand-in must not cover less
    /// than the policy meant to).
    Namespace(String),
}

/// The waypoint and the request's destination, as bindings name them.
#[derive(Debug, Clone, Copy)]
pub struct Scope<'a> {
    pub root_namespace: &'a str,
    /// The waypoint's own Gateway.
    pub gateway_namespace: &'a str,
    pub gateway_name: &'a str,
    /// The waypoint's Gateway class.
    pub gateway_class: &'a str,
    /// The Service the request is for (`None` for a workload's traffic).
    pub service: Option<(&'a str, &'a str)>,
}

impl Binding {
    pub fn covers(&self, s: &Scope<'_>) -> bool {
        match self {
            Binding::Gateway { namespace, name } => {
                namespace == s.gateway_namespace && name == s.gateway_name
            }
            Binding::Service { namespace, name } => {
                s.service == Some((namespace.as_str(), name.as_str()))
            }
            Binding::GatewayClass { namespace, name } => {
                namespace == s.root_namespace && name == s.gateway_class
            }
            Binding::Namespace(ns) => {
                ns == s.gateway_namespace || s.service.is_some_and(|(n, _)| n == ns)
            }
        }
    }
}

/// One `targetRef`: `{group, kind, name}` with an optional `namespace`
/// that, when given, must be the policy's own.
fn binding(field: &str, namespace: &str, v: &Value) -> Result<Binding, PolicyError> {
    let Some(obj) = v.as_object() else {
        return Err(err(field, "must be an object {group, kind, name}"));
    };
    for key in obj.keys() {
        if !["group", "kind", "name", "namespace"].contains(&key.as_str()) {
            return Err(err(
                format!("{field}.{key}"),
                "unknown field; a targetRef has group, kind and name",
            ));
        }
    }
    let text = |key: &str| -> Result<&str, PolicyError> {
        match obj.get(key) {
            None | Some(Value::Null) => Ok(""),
            Some(Value::String(s)) => Ok(s.as_str()),
            Some(_) => Err(err(format!("{field}.{key}"), "must be a string")),
        }
    };
    let (group, kind, name) = (text("group")?, text("kind")?, text("name")?);
    if name.is_empty() {
        return Err(err(format!("{field}.name"), "must not be empty"));
    }
    let ns = text("namespace")?;
    if !ns.is_empty() && ns != namespace {
        return Err(err(
            format!("{field}.namespace"),
            format!(
                "`{ns}` is another namespace; a policy binds only objects of its own namespace ({namespace})"
            ),
        ));
    }
    let (namespace, name) = (namespace.to_owned(), name.to_owned());
    match (group, kind) {
        (GATEWAY_GROUP, "Gateway") => Ok(Binding::Gateway { namespace, name }),
        ("" | "core", "Service") => Ok(Binding::Service { namespace, name }),
        (GATEWAY_GROUP, "GatewayClass") => Ok(Binding::GatewayClass { namespace, name }),
        (_, "Gateway" | "GatewayClass") => Err(err(
            format!("{field}.group"),
            format!("must be `{GATEWAY_GROUP}`"),
        )),
        (_, "Service") => Err(err(format!("{field}.group"), "must be \"\" (core)")),
        _ => Err(err(
            format!("{field}.kind"),
            format!(
                "`{kind}` cannot be bound; bind a Gateway or GatewayClass ({GATEWAY_GROUP}) or a Service"
            ),
        )),
    }
}

/// The bindings of a spec; `Ok(None)` when it names none (a selector
/// policy, the node agents').
pub fn bindings(
    namespace: &str,
    spec: &model::AuthorizationPolicySpec,
) -> Result<Option<Vec<Binding>>, PolicyError> {
    let refs = spec.target_refs.as_deref().unwrap_or_default();
    if refs.is_empty() && spec.target_ref.is_none() {
        return Ok(None);
    }
    let mut out = Vec::new();
    if let Some(r) = &spec.target_ref {
        out.push(binding("spec.targetRef", namespace, r)?);
    }
    for (i, r) in refs.iter().enumerate() {
        out.push(binding(&format!("spec.targetRefs[{i}]"), namespace, r)?);
    }
    Ok(Some(out))
}

/// Whether a raw spec names targets at all, read as little as possible:
/// an unreadable spec that does is the waypoint's to stand in for.
fn names_targets(spec: &Value) -> bool {
    spec.get("targetRef").is_some_and(|v| !v.is_null())
        || spec
            .get("targetRefs")
            .is_some_and(|v| v.as_array().is_none_or(|a| !a.is_empty()))
}

/// The facts of one request that rules test.
pub struct Request<'a> {
    /// The client's verified identity (carried over HBONE); `None` when
    /// there is none.
    pub source: Option<&'a Identity>,
    /// The address the client connected from (`source.ip`, `ipBlocks`).
    pub source_ip: IpAddr,
    /// The original client (`remote.ip`, `remoteIpBlocks`): the source
    /// address, as no proxy in front of the waypoint is trusted.
    pub remote_ip: IpAddr,
    /// The address and port the client asked for.
    pub destination_ip: IpAddr,
    pub destination_port: u16,
    /// `:authority` or `Host`, as sent.
    pub host: &'a str,
    pub method: &'a str,
    /// The path as sent, query included (rules test it without).
    pub path: &'a str,
    pub headers: &'a dyn Headers,
    /// What a verified JWT says, when the request carried one.
    pub auth: Option<&'a RequestAuth>,
}

/// A request's headers by lower-case name; several values of one name
/// read as one, joined by `,` (as Envoy's header matchers read them).
pub trait Headers {
    fn get(&self, name: &str) -> Option<Cow<'_, str>>;
}

impl Headers for Vec<(&str, &str)> {
    fn get(&self, name: &str) -> Option<Cow<'_, str>> {
        let values: Vec<&str> = self
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| *v)
            .collect();
        match values.as_slice() {
            [] => None,
            [one] => Some(Cow::Borrowed(one)),
            many => Some(Cow::Owned(many.join(","))),
        }
    }
}

/// The principal as Istio writes it: the SPIFFE id without its scheme;
/// "" without an identity.
fn principal_of(r: &Request<'_>) -> String {
    r.source
        .map(|id| {
            let s = id.to_string();
            s.strip_prefix("spiffe://").unwrap_or(&s).to_owned()
        })
        .unwrap_or_default()
}

/// What clauses compare that is made from the request rather than read
/// from it: made once per policy, not once per clause (a policy of a
/// hundred principal rules would otherwise format the client's identity a
/// hundred times per request).
struct Derived {
    /// The path without its query, dot segments resolved.
    path: String,
    /// `principal_of` the request.
    principal: String,
}

impl Derived {
    fn of(r: &Request<'_>, path: String) -> Self {
        Self {
            path,
            principal: principal_of(r),
        }
    }
}

/// Istio's host match: case-insensitive; an exact host matches with or
/// without a port; `*` any host; `prefix*` and `*suffix` the authority
/// as sent.
fn host_match(pattern: &str, authority: &str) -> bool {
    let (p, a) = (pattern.to_ascii_lowercase(), authority.to_ascii_lowercase());
    if p == "*" || p.starts_with('*') || p.ends_with('*') {
        return string_match(&p, &a);
    }
    match a.strip_prefix(p.as_str()) {
        Some("") => true,
        Some(rest) => rest
            .strip_prefix(':')
            .is_some_and(|port| !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit())),
        None => false,
    }
}

/// A `paths` entry: Istio's string match, or a template with `{*}` (one
/// segment) and `{**}` (the rest, last only).
#[derive(Debug, Clone, PartialEq)]
enum PathPattern {
    Plain(String),
    Template(Vec<Segment>),
}

#[derive(Debug, Clone, PartialEq)]
enum Segment {
    Literal(String),
    One,
    Rest,
}

fn path_pattern(field: &str, p: &str) -> Result<PathPattern, PolicyError> {
    if !p.contains('{') {
        return Ok(PathPattern::Plain(p.to_owned()));
    }
    let Some(tail) = p.strip_prefix('/') else {
        return Err(err(field, format!("`{p}`: a path template starts with /")));
    };
    let parts: Vec<&str> = tail.split('/').collect();
    let mut segments = Vec::with_capacity(parts.len());
    for (i, s) in parts.iter().enumerate() {
        segments.push(match *s {
            "{*}" => Segment::One,
            "{**}" if i + 1 == parts.len() => Segment::Rest,
            "{**}" => {
                return Err(err(
                    field,
                    format!("`{p}`: `{{**}}` may only be the last segment"),
                ));
            }
            s if s.contains(['{', '}', '*']) => {
                return Err(err(
                    field,
                    format!("`{p}`: a template's segments are `{{*}}`, `{{**}}` or literal text"),
                ));
            }
            s => Segment::Literal(s.to_owned()),
        });
    }
    Ok(PathPattern::Template(segments))
}

impl PathPattern {
    fn matches(&self, path: &str) -> bool {
        match self {
            PathPattern::Plain(p) => string_match(p, path),
            PathPattern::Template(segments) => {
                let Some(tail) = path.strip_prefix('/') else {
                    return false;
                };
                let parts: Vec<&str> = tail.split('/').collect();
                let mut i = 0;
                for s in segments {
                    match s {
                        Segment::Rest => return true,
                        Segment::One if parts.get(i).is_some_and(|p| !p.is_empty()) => {}
                        Segment::Literal(l) if parts.get(i) == Some(&l.as_str()) => {}
                        _ => return false,
                    }
                    i += 1;
                }
                i == parts.len()
            }
        }
    }
}

/// The path as rules see it: without its query or fragment, dot segments
/// resolved (RFC 3986 5.2.4, Istio's default `BASE` normalization), so
/// `/public/../admin` meets the rules for `/admin`.
pub fn normalized_path(path: &str) -> String {
    let path = path.split(['?', '#']).next().unwrap_or_default();
    let mut out: Vec<&str> = Vec::new();
    let segments: Vec<&str> = path.split('/').skip(1).collect();
    let last = segments.len().saturating_sub(1);
    for (i, s) in segments.iter().enumerate() {
        match *s {
            "." | ".." => {
                if *s == ".." {
                    out.pop();
                }
                if i == last {
                    out.push("");
                }
            }
            s => out.push(s),
        }
    }
    format!("/{}", out.join("/"))
}

/// A `when` key's fact.
#[derive(Debug, Clone, PartialEq)]
enum Key {
    Header(String),
    SourceIp,
    RemoteIp,
    SourceNamespace,
    SourcePrincipal,
    DestinationIp,
    DestinationPort,
    AuthPrincipal,
    AuthAudiences,
    AuthPresenter,
    AuthClaim(Vec<String>),
}

/// `[a][b]...` into `["a", "b"]`.
fn bracketed(s: &str) -> Option<Vec<String>> {
    let mut out = Vec::new();
    let mut rest = s;
    while !rest.is_empty() {
        let (name, after) = rest.strip_prefix('[')?.split_once(']')?;
        if name.is_empty() || name.contains('[') {
            return None;
        }
        out.push(name.to_owned());
        rest = after;
    }
    (!out.is_empty()).then_some(out)
}

fn key(field: &str, k: &str) -> Result<Key, PolicyError> {
    Ok(match k {
        "source.ip" => Key::SourceIp,
        "remote.ip" => Key::RemoteIp,
        "source.namespace" => Key::SourceNamespace,
        "source.principal" => Key::SourcePrincipal,
        "destination.ip" => Key::DestinationIp,
        "destination.port" => Key::DestinationPort,
        "request.auth.principal" => Key::AuthPrincipal,
        "request.auth.audiences" => Key::AuthAudiences,
        "request.auth.presenter" => Key::AuthPresenter,
        _ => {
            if let Some(rest) = k.strip_prefix("request.headers") {
                match bracketed(rest).as_deref() {
                    Some([name]) => Key::Header(name.to_ascii_lowercase()),
                    _ => {
                        return Err(err(
                            field,
                            format!("`{k}`: name one header, as request.headers[x-user]"),
                        ));
                    }
                }
            } else if let Some(rest) = k.strip_prefix("request.auth.claims") {
                Key::AuthClaim(bracketed(rest).ok_or_else(|| {
                    err(
                        field,
                        format!("`{k}`: name the claim, as request.auth.claims[iss] or request.auth.claims[a][b]"),
                    )
                })?)
            } else {
                return Err(err(
                    field,
                    format!(
                        "`{k}` is not a condition key the waypoint can evaluate (request.headers[..], source.ip, remote.ip, source.namespace, source.principal, destination.ip, destination.port, request.auth.principal, request.auth.audiences, request.auth.presenter, request.auth.claims[..])"
                    ),
                ));
            }
        }
    })
}

/// One constraint: a set of values one fact must (or must not) match.
#[derive(Debug, Clone, PartialEq)]
enum Match {
    Principal(Vec<String>),
    Namespace(Vec<String>),
    SourceIp(Vec<Cidr>),
    RemoteIp(Vec<Cidr>),
    RequestPrincipal(Vec<String>),
    Host(Vec<String>),
    Method(Vec<String>),
    Path(Vec<PathPattern>),
    DestinationIp(Vec<Cidr>),
    DestinationPort(Vec<u16>),
    Header(String, Vec<String>),
    AuthAudience(Vec<String>),
    AuthPresenter(Vec<String>),
    AuthClaim(Vec<String>, Vec<String>),
}

#[derive(Debug, Clone, PartialEq)]
struct Clause {
    negated: bool,
    what: Match,
}

fn any(patterns: &[String], value: &str) -> bool {
    patterns.iter().any(|p| string_match(p, value))
}

impl Clause {
    /// Whether the clause tests a fact only HTTP requests have.
    fn is_http(&self) -> bool {
        matches!(
            self.what,
            Match::RequestPrincipal(_)
                | Match::Host(_)
                | Match::Method(_)
                | Match::Path(_)
                | Match::Header(..)
                | Match::AuthAudience(_)
                | Match::AuthPresenter(_)
                | Match::AuthClaim(..)
        )
    }

    fn matches(&self, r: &Request<'_>, d: &Derived) -> bool {
        let hit = match &self.what {
            Match::Principal(p) => p
                .iter()
                .any(|p| string_match(p.strip_prefix("spiffe://").unwrap_or(p), &d.principal)),
            Match::Namespace(n) => any(n, r.source.map(|id| id.namespace()).unwrap_or_default()),
            Match::SourceIp(b) => b.iter().any(|b| b.contains(r.source_ip)),
            Match::RemoteIp(b) => b.iter().any(|b| b.contains(r.remote_ip)),
            Match::RequestPrincipal(p) => any(p, r.auth.map_or("", |a| a.principal.as_str())),
            Match::Host(h) => h.iter().any(|h| host_match(h, r.host)),
            Match::Method(m) => any(m, r.method),
            Match::Path(p) => p.iter().any(|p| p.matches(&d.path)),
            Match::DestinationIp(b) => b.iter().any(|b| b.contains(r.destination_ip)),
            Match::DestinationPort(p) => p.contains(&r.destination_port),
            Match::Header(name, v) => r.headers.get(name).is_some_and(|h| any(v, &h)),
            Match::AuthAudience(v) => r
                .auth
                .is_some_and(|a| a.audiences.iter().any(|aud| any(v, aud))),
            Match::AuthPresenter(v) => {
                any(v, r.auth.and_then(|a| a.presenter.as_deref()).unwrap_or(""))
            }
            Match::AuthClaim(path, v) => r.auth.is_some_and(|a| {
                let path: Vec<&str> = path.iter().map(String::as_str).collect();
                a.claim(&path).iter().any(|c| any(v, c))
            }),
        };
        hit != self.negated
    }
}

/// A rule's `from` (any entry), `to` (any entry) and `when` (all);
/// an absent part matches every request.
#[derive(Debug, Clone, Default, PartialEq)]
struct Rule {
    from: Vec<Vec<Clause>>,
    to: Vec<Vec<Clause>>,
    when: Vec<Clause>,
}

impl Rule {
    fn matches(&self, r: &Request<'_>, d: &Derived) -> bool {
        let all = |cl: &Vec<Clause>| cl.iter().all(|x| x.matches(r, d));
        (self.from.is_empty() || self.from.iter().any(all))
            && (self.to.is_empty() || self.to.iter().any(all))
            && self.when.iter().all(|x| x.matches(r, d))
    }

    /// For a TCP stream, which has no HTTP facts, as Istio translates a
    /// rule for TCP: one with HTTP fields never matches unless it denies;
    /// a DENY rule is applied without them (it denies at least as much).
    fn matches_tcp(&self, r: &Request<'_>, d: &Derived, action: Action) -> bool {
        let clauses = || {
            self.from
                .iter()
                .flatten()
                .chain(self.to.iter().flatten())
                .chain(&self.when)
        };
        if action != Action::Deny && clauses().any(Clause::is_http) {
            return false;
        }
        let holds = |x: &Clause| x.is_http() || x.matches(r, d);
        let all = |cl: &Vec<Clause>| cl.iter().all(holds);
        (self.from.is_empty() || self.from.iter().any(all))
            && (self.to.is_empty() || self.to.iter().any(all))
            && self.when.iter().all(holds)
    }
}

fn push(out: &mut Vec<Clause>, negated: bool, what: Match, values: &[impl Sized]) {
    if !values.is_empty() {
        out.push(Clause { negated, what });
    }
}

fn compile_rule(at: &str, rule: &model::Rule) -> Result<Rule, PolicyError> {
    let mut from = Vec::new();
    for (i, f) in rule.from.iter().enumerate() {
        let s = &f.source;
        let field = |n: &str| format!("{at}.from[{i}].source.{n}");
        let mut c = Vec::new();
        push(
            &mut c,
            false,
            Match::Principal(s.principals.clone()),
            &s.principals,
        );
        push(
            &mut c,
            true,
            Match::Principal(s.not_principals.clone()),
            &s.not_principals,
        );
        push(
            &mut c,
            false,
            Match::Namespace(s.namespaces.clone()),
            &s.namespaces,
        );
        push(
            &mut c,
            true,
            Match::Namespace(s.not_namespaces.clone()),
            &s.not_namespaces,
        );
        push(
            &mut c,
            false,
            Match::SourceIp(cidrs(&field("ipBlocks"), &s.ip_blocks)?),
            &s.ip_blocks,
        );
        push(
            &mut c,
            true,
            Match::SourceIp(cidrs(&field("notIpBlocks"), &s.not_ip_blocks)?),
            &s.not_ip_blocks,
        );
        push(
            &mut c,
            false,
            Match::RemoteIp(cidrs(&field("remoteIpBlocks"), &s.remote_ip_blocks)?),
            &s.remote_ip_blocks,
        );
        push(
            &mut c,
            true,
            Match::RemoteIp(cidrs(&field("notRemoteIpBlocks"), &s.not_remote_ip_blocks)?),
            &s.not_remote_ip_blocks,
        );
        push(
            &mut c,
            false,
            Match::RequestPrincipal(s.request_principals.clone()),
            &s.request_principals,
        );
        push(
            &mut c,
            true,
            Match::RequestPrincipal(s.not_request_principals.clone()),
            &s.not_request_principals,
        );
        from.push(c);
    }
    let mut to = Vec::new();
    for (i, t) in rule.to.iter().enumerate() {
        let o = &t.operation;
        let field = |n: &str| format!("{at}.to[{i}].operation.{n}");
        let paths = |name: &str, values: &[String]| -> Result<Vec<PathPattern>, PolicyError> {
            values
                .iter()
                .enumerate()
                .map(|(j, p)| path_pattern(&format!("{}[{j}]", field(name)), p))
                .collect()
        };
        let mut c = Vec::new();
        push(&mut c, false, Match::Host(o.hosts.clone()), &o.hosts);
        push(&mut c, true, Match::Host(o.not_hosts.clone()), &o.not_hosts);
        push(&mut c, false, Match::Method(o.methods.clone()), &o.methods);
        push(
            &mut c,
            true,
            Match::Method(o.not_methods.clone()),
            &o.not_methods,
        );
        push(
            &mut c,
            false,
            Match::Path(paths("paths", &o.paths)?),
            &o.paths,
        );
        push(
            &mut c,
            true,
            Match::Path(paths("notPaths", &o.not_paths)?),
            &o.not_paths,
        );
        push(
            &mut c,
            false,
            Match::DestinationPort(ports(&field("ports"), &o.ports)?),
            &o.ports,
        );
        push(
            &mut c,
            true,
            Match::DestinationPort(ports(&field("notPorts"), &o.not_ports)?),
            &o.not_ports,
        );
        to.push(c);
    }
    let mut when = Vec::new();
    for (i, cond) in rule.when.iter().enumerate() {
        let field = format!("{at}.when[{i}]");
        let k = key(&format!("{field}.key"), &cond.key)?;
        if cond.values.is_empty() && cond.not_values.is_empty() {
            return Err(err(field, "needs values or notValues"));
        }
        let make = |values: &[String], sub: &str| -> Result<Match, PolicyError> {
            let f = format!("{field}.{sub}");
            let v = values.to_vec();
            Ok(match &k {
                Key::Header(name) => Match::Header(name.clone(), v),
                Key::SourceIp => Match::SourceIp(cidrs(&f, values)?),
                Key::RemoteIp => Match::RemoteIp(cidrs(&f, values)?),
                Key::SourceNamespace => Match::Namespace(v),
                Key::SourcePrincipal => Match::Principal(v),
                Key::DestinationIp => Match::DestinationIp(cidrs(&f, values)?),
                Key::DestinationPort => Match::DestinationPort(ports(&f, values)?),
                Key::AuthPrincipal => Match::RequestPrincipal(v),
                Key::AuthAudiences => Match::AuthAudience(v),
                Key::AuthPresenter => Match::AuthPresenter(v),
                Key::AuthClaim(path) => Match::AuthClaim(path.clone(), v),
            })
        };
        push(
            &mut when,
            false,
            make(&cond.values, "values")?,
            &cond.values,
        );
        push(
            &mut when,
            true,
            make(&cond.not_values, "notValues")?,
            &cond.not_values,
        );
    }
    Ok(Rule { from, to, when })
}

/// A waypoint-bound policy ready to evaluate.
#[derive(Debug, Clone, PartialEq)]
pub struct WaypointPolicy {
    /// `<namespace>/<name>`, as logs name it.
    pub name: String,
    pub namespace: String,
    pub action: Action,
    pub dry_run: bool,
    pub bindings: Vec<Binding>,
    /// CUSTOM: the extension provider that decides.
    pub provider: Option<String>,
    rules: Vec<Rule>,
    /// False for the stand-in of a policy that did not compile.
    pub compiled: bool,
}

impl WaypointPolicy {
    /// The stand-in for a policy that cannot be compiled: a DENY of every
    /// request in `bindings`, never dry-run (a broken policy never widens
    /// access, and a broken annotation cannot make it log only).
    pub fn deny_all(namespace: &str, name: &str, bindings: Vec<Binding>) -> Self {
        Self {
            name: format!("{namespace}/{name}"),
            namespace: namespace.to_owned(),
            action: Action::Deny,
            dry_run: false,
            bindings,
            provider: None,
            rules: vec![Rule::default()],
            compiled: false,
        }
    }

    /// Compiles one policy; `Ok(None)` for a policy that names no target
    /// (a selector policy, the node agents').
    pub fn compile(
        namespace: &str,
        name: &str,
        annotations: &BTreeMap<String, String>,
        spec: &model::AuthorizationPolicySpec,
    ) -> Result<Option<Self>, PolicyError> {
        let Some(bindings) = bindings(namespace, spec)? else {
            return Ok(None);
        };
        if spec.selector.is_some() {
            return Err(err(
                "spec.selector",
                "a policy has either a selector or targetRefs, not both",
            ));
        }
        let provider = match (spec.action, &spec.provider) {
            (Action::Custom, Some(p)) => Some(
                p.get("name")
                    .and_then(Value::as_str)
                    .filter(|n| !n.is_empty())
                    .ok_or_else(|| {
                        err(
                            "spec.provider.name",
                            "a CUSTOM policy names the extension provider that decides",
                        )
                    })?
                    .to_owned(),
            ),
            (Action::Custom, None) => {
                return Err(err(
                    "spec.provider",
                    "a CUSTOM policy names the extension provider that decides",
                ));
            }
            (_, Some(_)) => {
                return Err(err(
                    "spec.provider",
                    "only a CUSTOM policy names a provider",
                ));
            }
            (_, None) => None,
        };
        let rules = spec
            .rules
            .iter()
            .flatten()
            .enumerate()
            .map(|(i, r)| compile_rule(&format!("spec.rules[{i}]"), r))
            .collect::<Result<_, _>>()?;
        Ok(Some(Self {
            name: format!("{namespace}/{name}"),
            namespace: namespace.to_owned(),
            action: spec.action,
            dry_run: dry_run(annotations),
            bindings,
            provider,
            rules,
            compiled: true,
        }))
    }

    /// Whether the policy governs requests in `scope`.
    pub fn applies(&self, scope: &Scope<'_>) -> bool {
        self.bindings.iter().any(|b| b.covers(scope))
    }

    /// Whether a rule matches (no rule: none does).
    pub fn matches(&self, r: &Request<'_>) -> bool {
        let d = Derived::of(r, normalized_path(r.path));
        self.rules.iter().any(|rule| rule.matches(r, &d))
    }

    /// Whether a rule matches a TCP stream (`r` without HTTP facts): see
    /// `Rule::matches_tcp`.
    pub fn matches_tcp(&self, r: &Request<'_>) -> bool {
        let d = Derived::of(r, String::new());
        self.rules
            .iter()
            .any(|rule| rule.matches_tcp(r, &d, self.action))
    }
}

/// Loads one AuthorizationPolicy for waypoints from its stored form.
/// `None` as the policy: it names no target. An object that names targets
/// but cannot be read or compiled stands in as a DENY of everything in its
/// targets (or, when those cannot be read, in its namespace).
pub fn load(
    namespace: &str,
    name: &str,
    annotations: &BTreeMap<String, String>,
    spec: Option<&Value>,
) -> Loaded<Option<WaypointPolicy>> {
    let empty = Value::Object(Default::default());
    let raw = spec.unwrap_or(&empty);
    match decode_authorization(raw) {
        Ok((decoded, ignored)) => compiled(namespace, name, annotations, &decoded, ignored),
        Err(e) if names_targets(raw) => Loaded {
            policy: Some(WaypointPolicy::deny_all(
                namespace,
                name,
                vec![Binding::Namespace(namespace.to_owned())],
            )),
            ignored: Vec::new(),
            failure: Some(Failure::Unreadable(e)),
        },
        Err(_) => Loaded {
            policy: None,
            ignored: Vec::new(),
            failure: None,
        },
    }
}

/// Compiles a spec a source has already decoded.
pub fn compiled(
    namespace: &str,
    name: &str,
    annotations: &BTreeMap<String, String>,
    decoded: &model::AuthorizationPolicySpec,
    ignored: Vec<PolicyError>,
) -> Loaded<Option<WaypointPolicy>> {
    match WaypointPolicy::compile(namespace, name, annotations, decoded) {
        Ok(policy) => Loaded {
            policy,
            ignored,
            failure: None,
        },
        Err(e) => {
            let scope = bindings(namespace, decoded)
                .ok()
                .flatten()
                .unwrap_or_else(|| vec![Binding::Namespace(namespace.to_owned())]);
            Loaded {
                policy: Some(WaypointPolicy::deny_all(namespace, name, scope)),
                ignored,
                failure: Some(Failure::Invalid(e)),
            }
        }
    }
}

/// A CUSTOM policy that matched: its provider decides.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Custom {
    pub policy: String,
    pub provider: String,
}

/// What the policies that apply to a request say about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Evaluation {
    /// CUSTOM policies that matched, in order: each provider is asked
    /// before DENY and ALLOW are looked at; one that denies ends it.
    pub custom: Vec<Custom>,
    /// DENY then ALLOW, over the enforced policies.
    pub enforced: Verdict,
    /// Set when dry-run policies would have changed the outcome (dry-run
    /// CUSTOM policies are not asked; they are named in `dry_run_custom`).
    pub dry_run: Option<Verdict>,
    pub dry_run_custom: Vec<Custom>,
    /// AUDIT policies that matched, by name.
    pub audited: Vec<String>,
}

fn deny_then_allow<'p>(
    policies: impl Iterator<Item = &'p WaypointPolicy> + Clone,
    matches: impl Fn(&WaypointPolicy) -> bool,
) -> Verdict {
    if let Some(p) = policies
        .clone()
        .find(|p| p.action == Action::Deny && matches(p))
    {
        return Verdict::Deny {
            policy: Some(p.name.clone()),
        };
    }
    let mut allows = policies.filter(|p| p.action == Action::Allow).peekable();
    if allows.peek().is_none() {
        return Verdict::Allow { policy: None };
    }
    match allows.find(|p| matches(p)) {
        Some(p) => Verdict::Allow {
            policy: Some(p.name.clone()),
        },
        None => Verdict::Deny { policy: None },
    }
}

fn evaluate_by<'p>(
    policies: impl Iterator<Item = &'p WaypointPolicy> + Clone,
    matches: impl Fn(&WaypointPolicy) -> bool + Copy,
) -> Evaluation {
    let custom = |dry_run: bool| -> Vec<Custom> {
        policies
            .clone()
            .filter(|p| p.action == Action::Custom && p.dry_run == dry_run && matches(p))
            .filter_map(|p| {
                Some(Custom {
                    policy: p.name.clone(),
                    provider: p.provider.clone()?,
                })
            })
            .collect()
    };
    let enforced = deny_then_allow(policies.clone().filter(|p| !p.dry_run), matches);
    let with_dry_run = deny_then_allow(policies.clone(), matches);
    Evaluation {
        custom: custom(false),
        dry_run: (with_dry_run != enforced).then_some(with_dry_run),
        enforced,
        dry_run_custom: custom(true),
        audited: policies
            .filter(|p| p.action == Action::Audit && matches(p))
            .map(|p| p.name.clone())
            .collect(),
    }
}

/// Evaluates the policies that apply to a request (the caller filters by
/// `WaypointPolicy::applies`).
pub fn evaluate<'p>(
    policies: impl Iterator<Item = &'p WaypointPolicy> + Clone,
    r: &Request<'_>,
) -> Evaluation {
    evaluate_by(policies, |p| p.matches(r))
}

/// Evaluates the policies that apply to a TCP stream the waypoint relays
/// (`r`'s HTTP facts are not read): rules with HTTP fields never match
/// unless they deny, and deny without them, as Istio translates policies
/// for TCP.
pub fn evaluate_tcp<'p>(
    policies: impl Iterator<Item = &'p WaypointPolicy> + Clone,
    r: &Request<'_>,
) -> Evaluation {
    evaluate_by(policies, |p| p.matches_tcp(r))
}

#[cfg(test)]
mod tests;
