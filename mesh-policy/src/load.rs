//! Policy objects from their stored form (JSON from the API server, YAML
//! from a local file, both as `serde_json::Value`) into enforceable
//! policies, one object at a time. An object that cannot be read is
//! treated like one that cannot be compiled: a fail-closed stand-in takes
//! its place in its scope, and the caller logs the object, the field and
//! the problem. One bad object never fails the others.
//!
//! Unknown fields. The model refuses unknown fields everywhere (a new or
//! misspelt field could be a constraint, and ignoring a constraint widens
//! an ALLOW or a selector). The one place they are ignored is inside the
//! rules of a DENY policy: there the clause holding the unknown field is
//! dropped whole (a `from` or `to` entry, the rule's `when` list, or the
//! rule), so the rule matches a superset of what was written and the
//! policy denies at least as much, whatever the field meant. Fields
//! outside `spec` (`status`, unknown metadata) never reach this module and
//! never affect a decision.
use std::{collections::BTreeMap, fmt::Write as _};

use serde::de::DeserializeOwned;
use serde_json::Value;

use super::{
    AuthorizationPolicy, PeerAuthentication,
    authz::PolicyError,
    model::{AuthorizationPolicySpec, Mtls, MtlsMode, PeerAuthenticationSpec, WorkloadSelector},
};

/// Why an object is not enforced as written.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Failure {
    /// Its spec does not decode (unknown field, wrong type, missing field).
    #[error("cannot be read: {0}")]
    Unreadable(PolicyError),
    /// It decodes but cannot be enforced (bad CIDR, CUSTOM action, ...).
    #[error("cannot be enforced as written: {0}")]
    Invalid(PolicyError),
}

/// One object, loaded.
#[derive(Debug, Clone, PartialEq)]
pub struct Loaded<T> {
    pub policy: T,
    /// Unknown fields inside DENY rules whose clause was dropped.
    pub ignored: Vec<PolicyError>,
    /// Set when `policy` is the fail-closed stand-in.
    pub failure: Option<Failure>,
}

/// A spec that did not decode: where and why, and whether the cause is an
/// unknown field (the only cause the DENY-rule leniency covers).
#[derive(Debug, Clone, PartialEq, Eq)]
struct DecodeError {
    error: PolicyError,
    unknown_field: bool,
}

/// Decodes `value` (found at `root`) into `T`. On failure the error names
/// the field: the value is printed one member per line, with the path of
/// each line kept, and decoded again from that text, whose error carries
/// the line of the offending member.
fn decode<T: DeserializeOwned>(value: &Value, root: &str) -> Result<T, DecodeError> {
    let first = match serde_json::from_value::<T>(value.clone()) {
        Ok(v) => return Ok(v),
        Err(e) => e,
    };
    let mut text = String::new();
    let mut paths = Vec::new();
    print(value, root, "", "", &mut text, &mut paths);
    let e = serde_json::from_str::<T>(&text).err().unwrap_or(first);
    let message = e.to_string();
    let problem = message
        .split(" at line ")
        .next()
        .unwrap_or(&message)
        .to_owned();
    let field = e
        .line()
        .checked_sub(1)
        .and_then(|l| paths.get(l))
        .cloned()
        .unwrap_or_else(|| root.to_owned());
    Err(DecodeError {
        unknown_field: problem.starts_with("unknown field `"),
        error: PolicyError { field, problem },
    })
}

/// Prints `v` as JSON, one member or element per line, recording each
/// line's path. An unknown key is reported on its own line, so its path
/// is the key's; a missing field at the closing brace, the object's.
fn print(v: &Value, path: &str, key: &str, comma: &str, out: &mut String, paths: &mut Vec<String>) {
    let mut line = |text: String, path: &str| {
        let _ = writeln!(out, "{text}");
        paths.push(path.to_owned());
    };
    match v {
        Value::Object(m) if !m.is_empty() => {
            line(format!("{key}{{"), path);
            for (i, (k, x)) in m.iter().enumerate() {
                let key = format!("{}: ", Value::String(k.clone()));
                let comma = if i + 1 < m.len() { "," } else { "" };
                print(x, &format!("{path}.{k}"), &key, comma, out, paths);
            }
            let _ = writeln!(out, "}}{comma}");
            paths.push(path.to_owned());
        }
        Value::Array(a) if !a.is_empty() => {
            line(format!("{key}["), path);
            for (i, x) in a.iter().enumerate() {
                let comma = if i + 1 < a.len() { "," } else { "" };
                print(x, &format!("{path}[{i}]"), "", comma, out, paths);
            }
            let _ = writeln!(out, "]{comma}");
            paths.push(path.to_owned());
        }
        scalar => line(format!("{key}{scalar}{comma}"), path),
    }
}

/// The part of a DENY rule dropped when it holds an unknown field. Each
/// choice only removes constraints that are ANDed into the rule, so the
/// rule then matches at least every connection it matched before.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DroppedClause {
    /// `spec.rules[i]`: the rule matches every connection.
    Rule(usize),
    /// `spec.rules[i].from[j]`: that source matches every peer.
    From(usize, usize),
    /// `spec.rules[i].to[j]`: that operation matches every port.
    To(usize, usize),
    /// `spec.rules[i].when`: no condition is checked.
    When(usize),
}

impl std::fmt::Display for DroppedClause {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Rule(i) => write!(f, "spec.rules[{i}]"),
            Self::From(i, j) => write!(f, "spec.rules[{i}].from[{j}]"),
            Self::To(i, j) => write!(f, "spec.rules[{i}].to[{j}]"),
            Self::When(i) => write!(f, "spec.rules[{i}].when"),
        }
    }
}

/// `[n]` at the start of `s`, and what follows it.
fn index(s: &str) -> Option<(usize, &str)> {
    let (n, rest) = s.strip_prefix('[')?.split_once(']')?;
    Some((n.parse().ok()?, rest))
}

/// Which clause to drop for an unknown field at `field`, or `None` when
/// the field is outside a rule (then ignoring it could widen access: it is
/// an error). Only asked for DENY policies.
pub fn deny_rule_clause(field: &str) -> Option<DroppedClause> {
    let (rule, rest) = index(field.strip_prefix("spec.rules")?)?;
    let inner = |name: &str| {
        let (j, after) = index(rest.strip_prefix(name)?)?;
        (!after.is_empty()).then_some(j)
    };
    if let Some(j) = inner(".from") {
        Some(DroppedClause::From(rule, j))
    } else if let Some(j) = inner(".to") {
        Some(DroppedClause::To(rule, j))
    } else if inner(".when").is_some() {
        Some(DroppedClause::When(rule))
    } else {
        (!rest.is_empty()).then_some(DroppedClause::Rule(rule))
    }
}

/// Replaces the clause with its match-everything form. False when it
/// already is (the error is then not the clause's: give up).
fn drop_clause(spec: &mut Value, clause: DroppedClause) -> bool {
    let Some(rules) = spec.get_mut("rules") else {
        return false;
    };
    let (slot, empty) = match clause {
        DroppedClause::Rule(i) => (rules.get_mut(i), Value::Object(Default::default())),
        DroppedClause::From(i, j) => (
            rules.get_mut(i).and_then(|r| r.get_mut("from")?.get_mut(j)),
            Value::Object(Default::default()),
        ),
        DroppedClause::To(i, j) => (
            rules.get_mut(i).and_then(|r| r.get_mut("to")?.get_mut(j)),
            Value::Object(Default::default()),
        ),
        DroppedClause::When(i) => (
            rules.get_mut(i).and_then(|r| r.get_mut("when")),
            Value::Array(Vec::new()),
        ),
    };
    match slot {
        Some(slot) if *slot != empty => {
            *slot = empty;
            true
        }
        _ => false,
    }
}

/// Decodes an AuthorizationPolicy spec, dropping clauses of DENY rules
/// that hold unknown fields (and saying so).
pub fn decode_authorization(
    spec: &Value,
) -> Result<(AuthorizationPolicySpec, Vec<PolicyError>), PolicyError> {
    let deny = spec.get("action").and_then(Value::as_str) == Some("DENY");
    let mut spec = spec.clone();
    let mut ignored = Vec::new();
    loop {
        let e = match decode::<AuthorizationPolicySpec>(&spec, "spec") {
            Ok(s) => return Ok((s, ignored)),
            Err(e) => e,
        };
        let clause = (deny && e.unknown_field)
            .then(|| deny_rule_clause(&e.error.field))
            .flatten();
        match clause {
            Some(clause) if drop_clause(&mut spec, clause) => ignored.push(PolicyError {
                field: e.error.field,
                problem: format!(
                    "{}; ignored with the rest of {clause}, which now matches every connection, so this DENY policy denies at least as much as written",
                    e.error.problem
                ),
            }),
            _ => return Err(e.error),
        }
    }
}

/// The selector of a spec, if that much can be read; `None` (the whole
/// namespace) when it is absent or unreadable, so a stand-in never covers
/// less than the policy meant to.
pub fn readable_selector(spec: Option<&Value>) -> Option<WorkloadSelector> {
    let selector = spec?.get("selector")?;
    serde_json::from_value::<Option<WorkloadSelector>>(selector.clone())
        .ok()
        .flatten()
}

/// Loads one AuthorizationPolicy. `None` as the policy means it has no
/// effect at this node (AUDIT, or bound to a waypoint).
pub fn authorization(
    namespace: &str,
    name: &str,
    annotations: &BTreeMap<String, String>,
    spec: Option<&Value>,
) -> Loaded<Option<AuthorizationPolicy>> {
    let empty = Value::Object(Default::default());
    let stand_in = || {
        Some(AuthorizationPolicy::deny_all(
            namespace,
            name,
            readable_selector(spec),
        ))
    };
    let (decoded, ignored) = match decode_authorization(spec.unwrap_or(&empty)) {
        Ok(d) => d,
        Err(e) => {
            return Loaded {
                policy: stand_in(),
                ignored: Vec::new(),
                failure: Some(Failure::Unreadable(e)),
            };
        }
    };
    compiled(namespace, name, annotations, &decoded, ignored)
}

/// Compiles a spec a source has already decoded (a local file decodes
/// YAML first, where `80` also reads as the string "80").
pub fn compiled(
    namespace: &str,
    name: &str,
    annotations: &BTreeMap<String, String>,
    decoded: &AuthorizationPolicySpec,
    ignored: Vec<PolicyError>,
) -> Loaded<Option<AuthorizationPolicy>> {
    let stand_in = || {
        Some(AuthorizationPolicy::deny_all(
            namespace,
            name,
            decoded.selector.clone(),
        ))
    };
    match AuthorizationPolicy::compile(namespace, name, annotations, decoded) {
        Ok(policy) => Loaded {
            policy,
            ignored,
            failure: None,
        },
        Err(e) => Loaded {
            policy: stand_in(),
            ignored,
            failure: Some(Failure::Invalid(e)),
        },
    }
}

impl PeerAuthentication {
    /// What stands in for a PeerAuthentication that cannot be read: STRICT
    /// in its scope, the most any PeerAuthentication can refuse.
    pub fn strict(namespace: &str, name: &str, selector: Option<WorkloadSelector>) -> Self {
        Self {
            name: format!("{namespace}/{name}"),
            namespace: namespace.to_owned(),
            spec: PeerAuthenticationSpec {
                selector,
                mtls: Some(Mtls {
                    mode: MtlsMode::Strict,
                }),
                port_level_mtls: BTreeMap::new(),
            },
        }
    }
}

/// Loads one PeerAuthentication; unreadable ones become STRICT in scope.
pub fn peer_authentication(
    namespace: &str,
    name: &str,
    spec: Option<&Value>,
) -> Loaded<PeerAuthentication> {
    let empty = Value::Object(Default::default());
    match decode::<PeerAuthenticationSpec>(spec.unwrap_or(&empty), "spec") {
        Ok(spec) => Loaded {
            policy: PeerAuthentication {
                name: format!("{namespace}/{name}"),
                namespace: namespace.to_owned(),
                spec,
            },
            ignored: Vec::new(),
            failure: None,
        },
        Err(e) => Loaded {
            policy: PeerAuthentication::strict(namespace, name, readable_selector(spec)),
            ignored: Vec::new(),
            failure: Some(Failure::Unreadable(e.error)),
        },
    }
}

#[cfg(test)]
mod tests;
