//! L4 evaluation of AuthorizationPolicy, as ztunnel does it: any matching
//! DENY denies; with no ALLOW policy for the workload, allow; a matching
//! ALLOW allows; otherwise deny.
//!
//! L7 attributes cannot be seen at L4. As Istio documents for ztunnel, they
//! must never widen access: in an ALLOW rule the rule never matches; in a
//! DENY rule the L7 parts are dropped, so it denies at least as much.
use std::{collections::BTreeMap, net::IpAddr};

use mesh_identity::Identity;

use super::model::{self, Action};

/// Pod annotations (mesh's and Istio's) that make a policy log only.
pub const DRY_RUN_ANNOTATIONS: [&str; 2] = ["mesh.io/dry-run", "istio.io/dry-run"];

/// Whether a policy's `annotations` make it log only.
pub fn dry_run(annotations: &BTreeMap<String, String>) -> bool {
    DRY_RUN_ANNOTATIONS
        .iter()
        .any(|a| annotations.get(*a).map(String::as_str) == Some("true"))
}

#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
#[error("{field}: {problem}")]
pub struct PolicyError {
    pub field: String,
    pub problem: String,
}

pub(crate) fn err(field: impl Into<String>, problem: impl Into<String>) -> PolicyError {
    PolicyError {
        field: field.into(),
        problem: problem.into(),
    }
}

/// An IP range from `ipBlocks` ("10.0.0.0/8" or a single address).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    net: IpAddr,
    prefix: u8,
}

impl Cidr {
    pub fn parse(s: &str) -> Option<Self> {
        let (ip, prefix) = match s.split_once('/') {
            Some((ip, p)) => (ip.parse::<IpAddr>().ok()?, p.parse::<u8>().ok()?),
            None => {
                let ip = s.parse::<IpAddr>().ok()?;
                (ip, if ip.is_ipv4() { 32 } else { 128 })
            }
        };
        let max = if ip.is_ipv4() { 32 } else { 128 };
        (prefix <= max).then_some(Self { net: ip, prefix })
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        fn bits(ip: IpAddr) -> (u128, u8) {
            match ip {
                IpAddr::V4(v) => (u32::from(v) as u128, 32),
                IpAddr::V6(v) => (u128::from(v), 128),
            }
        }
        let ip = ip.to_canonical();
        let (a, width_a) = bits(self.net);
        let (b, width_b) = bits(ip);
        if width_a != width_b {
            return false;
        }
        if self.prefix == 0 {
            return true;
        }
        let shift = width_a - self.prefix;
        (a >> shift) == (b >> shift)
    }
}

/// Istio's string match: exact, "*" (any non-empty), "prefix*", "*suffix".
pub(crate) fn string_match(pattern: &str, value: &str) -> bool {
    if pattern == "*" {
        return !value.is_empty();
    }
    if let Some(prefix) = pattern.strip_suffix('*') {
        return value.starts_with(prefix);
    }
    if let Some(suffix) = pattern.strip_prefix('*') {
        return value.ends_with(suffix);
    }
    pattern == value
}

/// One constraint of a rule: a set of values it must (or must not) match.
#[derive(Debug, Clone, PartialEq)]
enum Match {
    Principal(Vec<String>),
    Namespace(Vec<String>),
    SourceIp(Vec<Cidr>),
    DestinationIp(Vec<Cidr>),
    DestinationPort(Vec<u16>),
}

#[derive(Debug, Clone, PartialEq)]
struct Clause {
    negated: bool,
    what: Match,
}

/// The facts of one connection that L4 rules can test.
#[derive(Debug, Clone)]
pub struct Connection<'a> {
    /// The verified peer identity; `None` for plaintext.
    pub source: Option<&'a Identity>,
    pub source_ip: IpAddr,
    pub destination_ip: IpAddr,
    pub destination_port: u16,
}

impl Clause {
    fn matches(&self, c: &Connection<'_>) -> bool {
        let namespace = c.source.map(|id| id.namespace()).unwrap_or_default();
        let hit = match &self.what {
            Match::Principal(p) => {
                // Built only for principal clauses: Istio writes principals
                // without the scheme, and plaintext has "".
                let principal = c
                    .source
                    .map(|id| id.to_string()["spiffe://".len()..].to_owned())
                    .unwrap_or_default();
                p.iter()
                    .any(|p| string_match(p.strip_prefix("spiffe://").unwrap_or(p), &principal))
            }
            Match::Namespace(n) => n.iter().any(|n| string_match(n, namespace)),
            Match::SourceIp(b) => b.iter().any(|b| b.contains(c.source_ip)),
            Match::DestinationIp(b) => b.iter().any(|b| b.contains(c.destination_ip)),
            Match::DestinationPort(p) => p.contains(&c.destination_port),
        };
        hit != self.negated
    }
}

/// A rule's `from` (any entry), `to` (any entry) and `when` (all entries);
/// an absent part matches everything.
#[derive(Debug, Clone, Default, PartialEq)]
struct CompiledRule {
    from: Vec<Vec<Clause>>,
    to: Vec<Vec<Clause>>,
    when: Vec<Clause>,
    /// An ALLOW rule that needs L7 facts: it can never match at L4.
    never: bool,
}

impl CompiledRule {
    fn matches(&self, c: &Connection<'_>) -> bool {
        let all = |cl: &Vec<Clause>| cl.iter().all(|x| x.matches(c));
        !self.never
            && (self.from.is_empty() || self.from.iter().any(all))
            && (self.to.is_empty() || self.to.iter().any(all))
            && self.when.iter().all(|x| x.matches(c))
    }
}

/// A policy ready to evaluate.
#[derive(Debug, Clone, PartialEq)]
pub struct AuthorizationPolicy {
    /// `<namespace>/<name>`, as logs name it.
    pub name: String,
    pub namespace: String,
    pub selector: Option<model::WorkloadSelector>,
    pub action: Action,
    pub dry_run: bool,
    rules: Vec<CompiledRule>,
    /// The rules as written, for the admin API and `mesh inspect`; `None`
    /// for the deny-all that stands in for a policy that did not compile.
    pub rules_source: Option<Vec<model::Rule>>,
}

pub(crate) fn cidrs(field: &str, values: &[String]) -> Result<Vec<Cidr>, PolicyError> {
    values
        .iter()
        .map(|v| {
            Cidr::parse(v).ok_or_else(|| {
                err(
                    field,
                    format!("`{v}` is not an IP address or CIDR (e.g. 10.0.0.0/8)"),
                )
            })
        })
        .collect()
}

pub(crate) fn ports(field: &str, values: &[String]) -> Result<Vec<u16>, PolicyError> {
    values
        .iter()
        .map(|v| {
            v.parse::<u16>()
                .ok()
                .filter(|p| *p != 0)
                .ok_or_else(|| err(field, format!("`{v}` is not a port number (1-65535)")))
        })
        .collect()
}

fn push(out: &mut Vec<Clause>, negated: bool, what: Match, empty: bool) {
    if !empty {
        out.push(Clause { negated, what });
    }
}

/// `when` keys ztunnel evaluates at L4.
const L4_KEYS: [&str; 6] = [
    "source.ip",
    "remote.ip",
    "source.namespace",
    "source.principal",
    "destination.ip",
    "destination.port",
];

fn compile_rule(at: &str, rule: &model::Rule, action: Action) -> Result<CompiledRule, PolicyError> {
    let mut l7 = false;
    let mut from = Vec::new();
    for (i, f) in rule.from.iter().enumerate() {
        let s = &f.source;
        let field = |n: &str| format!("{at}.from[{i}].source.{n}");
        let mut c = Vec::new();
        push(
            &mut c,
            false,
            Match::Principal(s.principals.clone()),
            s.principals.is_empty(),
        );
        push(
            &mut c,
            true,
            Match::Principal(s.not_principals.clone()),
            s.not_principals.is_empty(),
        );
        push(
            &mut c,
            false,
            Match::Namespace(s.namespaces.clone()),
            s.namespaces.is_empty(),
        );
        push(
            &mut c,
            true,
            Match::Namespace(s.not_namespaces.clone()),
            s.not_namespaces.is_empty(),
        );
        // Without proxies in between, the remote address is the source address.
        for (neg, name, values) in [
            (false, "ipBlocks", &s.ip_blocks),
            (true, "notIpBlocks", &s.not_ip_blocks),
            (false, "remoteIpBlocks", &s.remote_ip_blocks),
            (true, "notRemoteIpBlocks", &s.not_remote_ip_blocks),
        ] {
            push(
                &mut c,
                neg,
                Match::SourceIp(cidrs(&field(name), values)?),
                values.is_empty(),
            );
        }
        l7 |= !s.request_principals.is_empty() || !s.not_request_principals.is_empty();
        from.push(c);
    }
    let mut to = Vec::new();
    for (i, t) in rule.to.iter().enumerate() {
        let o = &t.operation;
        let field = |n: &str| format!("{at}.to[{i}].operation.{n}");
        let mut c = Vec::new();
        push(
            &mut c,
            false,
            Match::DestinationPort(ports(&field("ports"), &o.ports)?),
            o.ports.is_empty(),
        );
        push(
            &mut c,
            true,
            Match::DestinationPort(ports(&field("notPorts"), &o.not_ports)?),
            o.not_ports.is_empty(),
        );
        l7 |= [
            &o.hosts,
            &o.not_hosts,
            &o.methods,
            &o.not_methods,
            &o.paths,
            &o.not_paths,
        ]
        .iter()
        .any(|v| !v.is_empty());
        to.push(c);
    }
    let mut when = Vec::new();
    for (i, cond) in rule.when.iter().enumerate() {
        let field = format!("{at}.when[{i}]");
        if !L4_KEYS.contains(&cond.key.as_str()) {
            let key = cond.key.as_str();
            if key.starts_with("request.")
                || key.starts_with("experimental.")
                || key == "connection.sni"
            {
                l7 = true;
                continue;
            }
            return Err(err(
                format!("{field}.key"),
                format!("`{}` is not an Istio condition key", cond.key),
            ));
        }
        if cond.values.is_empty() && cond.not_values.is_empty() {
            return Err(err(field, "needs values or notValues"));
        }
        let make = |values: &[String], sub: &str| -> Result<Match, PolicyError> {
            let f = format!("{field}.{sub}");
            Ok(match cond.key.as_str() {
                "source.ip" | "remote.ip" => Match::SourceIp(cidrs(&f, values)?),
                "source.namespace" => Match::Namespace(values.to_vec()),
                "source.principal" => Match::Principal(values.to_vec()),
                "destination.ip" => Match::DestinationIp(cidrs(&f, values)?),
                _ => Match::DestinationPort(ports(&f, values)?),
            })
        };
        push(
            &mut when,
            false,
            make(&cond.values, "values")?,
            cond.values.is_empty(),
        );
        push(
            &mut when,
            true,
            make(&cond.not_values, "notValues")?,
            cond.not_values.is_empty(),
        );
    }
    Ok(CompiledRule {
        from,
        to,
        when,
        never: l7 && action == Action::Allow,
    })
}

impl AuthorizationPolicy {
    /// What stands in for a policy that cannot be compiled: it denies every
    /// connection in its scope, so a broken policy never widens access.
    pub fn deny_all(
        namespace: &str,
        name: &str,
        selector: Option<model::WorkloadSelector>,
    ) -> Self {
        Self {
            name: format!("{namespace}/{name}"),
            namespace: namespace.to_owned(),
            selector,
            action: Action::Deny,
            dry_run: false,
            rules: vec![CompiledRule::default()],
            rules_source: None,
        }
    }

    /// Compiles one policy; `None` for AUDIT, which has no effect on traffic.
    pub fn compile(
        namespace: &str,
        name: &str,
        annotations: &BTreeMap<String, String>,
        spec: &model::AuthorizationPolicySpec,
    ) -> Result<Option<Self>, PolicyError> {
        if spec.target_ref.is_some() || spec.target_refs.as_ref().is_some_and(|t| !t.is_empty()) {
            // Bound to a waypoint or gateway, which enforces it.
            return Ok(None);
        }
        match spec.action {
            Action::Audit => return Ok(None),
            Action::Custom => {
                return Err(err(
                    "spec.action",
                    "CUSTOM (external authorization) is not supported by mesh; use ALLOW or DENY",
                ));
            }
            Action::Allow | Action::Deny => {}
        }
        let rules = spec
            .rules
            .iter()
            .flatten()
            .enumerate()
            .map(|(i, r)| compile_rule(&format!("spec.rules[{i}]"), r, spec.action))
            .collect::<Result<_, _>>()?;
        Ok(Some(Self {
            name: format!("{namespace}/{name}"),
            namespace: namespace.to_owned(),
            selector: spec.selector.clone(),
            action: spec.action,
            dry_run: dry_run(annotations),
            rules,
            rules_source: Some(spec.rules.clone().unwrap_or_default()),
        }))
    }

    /// Whether the policy governs a workload in `namespace` with `labels`.
    pub fn applies_to(
        &self,
        root_namespace: &str,
        namespace: &str,
        labels: &BTreeMap<String, String>,
    ) -> bool {
        (self.namespace == namespace || self.namespace == root_namespace)
            && self.selector.as_ref().is_none_or(|s| s.matches(labels))
    }

    pub fn matches(&self, c: &Connection<'_>) -> bool {
        self.rules.iter().any(|r| r.matches(c))
    }
}

/// The outcome of evaluating a workload's policies for one connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// No policy selects the workload, or an ALLOW policy matched (named).
    Allow { policy: Option<String> },
    /// A DENY policy matched (named), or ALLOW policies exist and none matched.
    Deny { policy: Option<String> },
}

impl Verdict {
    pub fn allowed(&self) -> bool {
        matches!(self, Verdict::Allow { .. })
    }

    /// What logs say about the decision.
    pub fn reason(&self) -> String {
        match self {
            Verdict::Allow { policy: None } => "no ALLOW policy selects the workload".into(),
            Verdict::Allow { policy: Some(p) } => format!("allowed by {p}"),
            Verdict::Deny { policy: Some(p) } => format!("denied by {p}"),
            Verdict::Deny { policy: None } => "denied: no ALLOW policy matched".into(),
        }
    }
}

/// ztunnel's order over the policies that apply to the workload.
pub fn evaluate<'p>(
    policies: impl Iterator<Item = &'p AuthorizationPolicy> + Clone,
    c: &Connection<'_>,
) -> Verdict {
    if let Some(p) = policies
        .clone()
        .find(|p| p.action == Action::Deny && p.matches(c))
    {
        return Verdict::Deny {
            policy: Some(p.name.clone()),
        };
    }
    let mut allows = policies.filter(|p| p.action == Action::Allow).peekable();
    if allows.peek().is_none() {
        return Verdict::Allow { policy: None };
    }
    match allows.find(|p| p.matches(c)) {
        Some(p) => Verdict::Allow {
            policy: Some(p.name.clone()),
        },
        None => Verdict::Deny { policy: None },
    }
}
