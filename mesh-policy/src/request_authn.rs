//! Istio's security.istio.io/v1 `RequestAuthentication` as the waypoint
//! enforces it: the object as it appears in YAML (unknown fields refused by
//! name), and `compile`, which checks it into a `RequestAuthentication`
//! whose every JWT rule is usable (pure; errors name the field). Inline
//! JWKS are parsed into verification keys here, once per object; a remote
//! JWKS (`jwksUri`) is fetched by the waypoint and parsed by the same
//! `KeySet::parse`.
//!
//! At a waypoint only policies attached by `targetRefs` apply (to every
//! request of the waypoint's Gateway, or to a Service's requests), as in
//! Istio's ambient mode; a `selector` names workloads' sidecars, which
//! mesh does not have, so such a policy applies to nothing here.
use std::{collections::BTreeSet, fmt, sync::Arc};

use jsonwebtoken::{Algorithm, DecodingKey, jwk::Jwk};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::model::WorkloadSelector;

/// A token longer than this is refused before it is decoded (Envoy's
/// header limits are larger, but no identity provider issues tokens near
/// this size, and each byte is base64 and JSON work done for the sender).
pub const MAX_TOKEN_BYTES: usize = 8 * 1024;
/// An inline or fetched JWKS longer than this is refused.
pub const MAX_JWKS_BYTES: usize = 256 * 1024;
/// Keys kept from one JWKS; beyond it the set is refused (a token names
/// its key by `kid`; keys without one, and every key for a token without
/// one, are tried in turn).
pub const MAX_JWKS_KEYS: usize = 64;
/// JWT rules in one policy.
pub const MAX_RULES: usize = 32;

/// Gateway API's group, the group of a Gateway `targetRef`.
pub const GATEWAY_GROUP: &str = "gateway.networking.k8s.io";

/// `spec` of a `RequestAuthentication`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RequestAuthenticationSpec {
    /// Workloads' sidecars; nothing at a waypoint (see the module comment).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<WorkloadSelector>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_ref: Option<PolicyTargetRef>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub target_refs: Vec<PolicyTargetRef>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub jwt_rules: Vec<JwtRuleSpec>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PolicyTargetRef {
    /// `""` (or `core`) for a Service, `gateway.networking.k8s.io` for a
    /// Gateway.
    #[serde(default)]
    pub group: String,
    /// `Service` or `Gateway`.
    pub kind: String,
    pub name: String,
    /// The policy's own namespace when given (Istio allows no other).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct JwtRuleSpec {
    /// The token's `iss` must equal it.
    pub issuer: String,
    /// When given, one of the token's `aud` must be listed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub audiences: Vec<String>,
    /// A JWKS document (JSON) of the issuer's public keys.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwks: Option<String>,
    /// Where the issuer's JWKS is fetched (HTTPS); `jwks` wins when both
    /// are given, as in Istio.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwks_uri: Option<String>,
    /// Headers the token is read from; with neither these nor `fromParams`
    /// nor `fromCookies`, `Authorization: Bearer <token>` and the
    /// `access_token` query parameter (Envoy's defaults).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub from_headers: Vec<JwtHeader>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub from_params: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub from_cookies: Vec<String>,
    /// A header that receives the verified token's payload (base64url).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output_payload_to_header: Option<String>,
    /// Whether the token's header goes upstream; by default it is removed.
    #[serde(default)]
    pub forward_original_token: bool,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub output_claim_to_headers: Vec<ClaimToHeader>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct JwtHeader {
    pub name: String,
    /// Stripped before the token is decoded (e.g. `Bearer `); a value
    /// without it is not read as a token.
    #[serde(default)]
    pub prefix: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ClaimToHeader {
    pub header: String,
    /// A claim name; nested claims as `a.b.c`.
    pub claim: String,
}

/// An object of the kind as read (from a file or the API): its spec is all
/// `compile` needs beside the name.
#[derive(Debug, Clone, Deserialize)]
pub struct Document {
    #[serde(default)]
    pub spec: RequestAuthenticationSpec,
}

/// Why a `RequestAuthentication` cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {problem}")]
pub struct RequestAuthnError {
    /// The spec's field, e.g. `jwtRules[0].jwksUri`.
    pub field: String,
    pub problem: String,
}

fn err(field: impl Into<String>, problem: impl Into<String>) -> RequestAuthnError {
    RequestAuthnError {
        field: field.into(),
        problem: problem.into(),
    }
}

/// What a policy is attached to, as `<namespace>/<name>`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum AuthnTarget {
    /// Every request the waypoint of this Gateway serves.
    Gateway(String),
    /// Requests for this Service.
    Service(String),
}

/// A compiled `RequestAuthentication`.
#[derive(Debug, Clone)]
pub struct RequestAuthentication {
    /// `<namespace>/<name>`.
    pub key: String,
    /// Empty for a policy that names no target (it applies to no waypoint).
    pub targets: Vec<AuthnTarget>,
    pub rules: Vec<Arc<JwtRule>>,
}

impl RequestAuthentication {
    /// Whether it applies to requests for `service` (`<namespace>/<name>`,
    /// `None` for a workload's traffic) at the waypoint of `gateway`.
    pub fn applies_to(&self, gateway: &str, service: Option<&str>) -> bool {
        self.targets.iter().any(|t| match t {
            AuthnTarget::Gateway(g) => g == gateway,
            AuthnTarget::Service(s) => Some(s.as_str()) == service,
        })
    }
}

/// One checked JWT rule.
#[derive(Debug, Clone)]
pub struct JwtRule {
    pub issuer: String,
    pub audiences: Vec<String>,
    pub keys: Keys,
    /// Where a token for this rule is looked for, in order.
    pub locations: Vec<TokenLocation>,
    pub forward_original_token: bool,
    /// Lowercase header name.
    pub output_payload_to_header: Option<String>,
    pub output_claim_to_headers: Vec<ClaimHeader>,
}

/// Where a rule's verification keys come from.
#[derive(Debug, Clone)]
pub enum Keys {
    Inline(Arc<KeySet>),
    /// An `https://` URI, fetched and refreshed by the waypoint.
    Remote(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenLocation {
    /// A header (lowercase name) whose value starts with `prefix`.
    Header { name: String, prefix: String },
    /// A query parameter.
    Param(String),
    /// A cookie.
    Cookie(String),
}

impl TokenLocation {
    /// `Authorization: Bearer <token>` and `?access_token=<token>`.
    pub fn defaults() -> Vec<Self> {
        vec![
            TokenLocation::Header {
                name: "authorization".into(),
                prefix: "Bearer ".into(),
            },
            TokenLocation::Param("access_token".into()),
        ]
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimHeader {
    /// Lowercase header name.
    pub header: String,
    /// The claim's path: `a.b` is claim `b` inside claim `a`.
    pub claim: Vec<String>,
}

/// One verification key of a JWKS.
#[derive(Clone)]
pub struct VerificationKey {
    pub kid: Option<String>,
    /// The key's `alg`, when the JWKS says it.
    pub alg: Option<Algorithm>,
    pub key: DecodingKey,
}

/// The usable keys of a JWKS document.
#[derive(Clone)]
pub struct KeySet {
    keys: Vec<VerificationKey>,
}

impl fmt::Debug for KeySet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list()
            .entries(
                self.keys
                    .iter()
                    .map(|k| (k.kid.as_deref(), k.alg, k.key.family())),
            )
            .finish()
    }
}

/// The algorithms a token may be signed with: asymmetric ones only (a
/// shared secret in a JWKS would be a secret published to every proxy).
pub const ALGORITHMS: [Algorithm; 9] = [
    Algorithm::RS256,
    Algorithm::RS384,
    Algorithm::RS512,
    Algorithm::PS256,
    Algorithm::PS384,
    Algorithm::PS512,
    Algorithm::ES256,
    Algorithm::ES384,
    Algorithm::EdDSA,
];

impl KeySet {
    /// The usable keys of a JWKS document (`{"keys": [...]}`). Keys of
    /// kinds that cannot verify one of `ALGORITHMS` are skipped, as Envoy
    /// skips them; a document with none left is refused.
    pub fn parse(text: &str) -> Result<Self, String> {
        if text.len() > MAX_JWKS_BYTES {
            return Err(format!(
                "is {} bytes, over the limit of {MAX_JWKS_BYTES}",
                text.len()
            ));
        }
        #[derive(Deserialize)]
        struct Doc {
            keys: Vec<serde_json::Value>,
        }
        let doc: Doc = serde_json::from_str(text)
            .map_err(|e| format!("is not a JWKS document ({{\"keys\": [...]}}): {e}"))?;
        if doc.keys.len() > MAX_JWKS_KEYS {
            return Err(format!(
                "holds {} keys, over the limit of {MAX_JWKS_KEYS}",
                doc.keys.len()
            ));
        }
        let mut keys = Vec::new();
        let mut skipped = Vec::new();
        for (i, value) in doc.keys.into_iter().enumerate() {
            match usable_key(value) {
                Ok(key) => keys.push(key),
                Err(why) => skipped.push(format!("keys[{i}]: {why}")),
            }
        }
        if keys.is_empty() {
            return Err(if skipped.is_empty() {
                "holds no keys".into()
            } else {
                format!("holds no usable key ({})", skipped.join("; "))
            });
        }
        Ok(Self { keys })
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// The keys that may have signed a token of `alg` naming `kid`: those
    /// with that `kid` or with none (all of them when the token names
    /// none, as Envoy tries them) whose family, and `alg` when they say
    /// one, fit.
    pub fn candidates<'a>(
        &'a self,
        kid: Option<&'a str>,
        alg: Algorithm,
    ) -> impl Iterator<Item = &'a DecodingKey> + 'a {
        self.keys
            .iter()
            .filter(move |k| kid.is_none() || k.kid.is_none() || k.kid.as_deref() == kid)
            .filter(move |k| k.alg.is_none_or(|a| a == alg))
            .filter(move |k| k.key.family() == alg.family())
            .map(|k| &k.key)
    }
}

fn usable_key(value: serde_json::Value) -> Result<VerificationKey, String> {
    let jwk: Jwk = serde_json::from_value(value).map_err(|e| e.to_string())?;
    let alg = match jwk.common.key_algorithm {
        None => None,
        Some(a) => {
            let alg: Algorithm = a
                .to_string()
                .parse()
                .map_err(|_| format!("alg {a} cannot verify a signature"))?;
            if !ALGORITHMS.contains(&alg) {
                return Err(format!("alg {a} is not accepted"));
            }
            Some(alg)
        }
    };
    let key = DecodingKey::from_jwk(&jwk).map_err(|e| e.to_string())?;
    if matches!(key.family(), jsonwebtoken::AlgorithmFamily::Hmac) {
        return Err("a shared secret (kty oct) is not accepted".into());
    }
    // A key whose alg is of another family than its kty could verify
    // nothing: refused here, so that a JWKS of such keys alone is named
    // unusable instead of refusing every token.
    if let Some(alg) = alg
        && alg.family() != key.family()
    {
        return Err(format!(
            "alg {alg:?} does not fit its kty ({:?} key)",
            key.family()
        ));
    }
    Ok(VerificationKey {
        kid: jwk.common.key_id,
        alg,
        key,
    })
}

/// Checks `spec` of `<namespace>/<name>`: every field usable, or the first
/// that is not, by name.
pub fn compile(
    namespace: &str,
    name: &str,
    spec: &RequestAuthenticationSpec,
) -> Result<RequestAuthentication, RequestAuthnError> {
    if spec.target_ref.is_some() && !spec.target_refs.is_empty() {
        return Err(err("targetRef", "give targetRef or targetRefs, not both"));
    }
    let refs: Vec<(String, &PolicyTargetRef)> = match &spec.target_ref {
        Some(r) => vec![("targetRef".into(), r)],
        None => spec
            .target_refs
            .iter()
            .enumerate()
            .map(|(i, r)| (format!("targetRefs[{i}]"), r))
            .collect(),
    };
    if spec.selector.is_some() && !refs.is_empty() {
        return Err(err(
            "selector",
            "a policy names workloads by selector or attaches by targetRefs, not both",
        ));
    }
    let mut targets = Vec::new();
    for (field, r) in refs {
        targets.push(target(namespace, &field, r)?);
    }
    if spec.jwt_rules.len() > MAX_RULES {
        return Err(err(
            "jwtRules",
            format!(
                "{} rules, over the limit of {MAX_RULES}",
                spec.jwt_rules.len()
            ),
        ));
    }
    let rules = spec
        .jwt_rules
        .iter()
        .enumerate()
        .map(|(i, r)| rule(&format!("jwtRules[{i}]"), r).map(Arc::new))
        .collect::<Result<_, _>>()?;
    Ok(RequestAuthentication {
        key: format!("{namespace}/{name}"),
        targets,
        rules,
    })
}

fn target(
    namespace: &str,
    field: &str,
    r: &PolicyTargetRef,
) -> Result<AuthnTarget, RequestAuthnError> {
    if let Some(ns) = &r.namespace
        && ns != namespace
    {
        return Err(err(
            format!("{field}.namespace"),
            format!("must be the policy's own namespace ({namespace}), not {ns}"),
        ));
    }
    if r.name.is_empty() {
        return Err(err(format!("{field}.name"), "must not be empty"));
    }
    let key = format!("{namespace}/{}", r.name);
    match (r.group.as_str(), r.kind.as_str()) {
        ("" | "core", "Service") => Ok(AuthnTarget::Service(key)),
        (GATEWAY_GROUP, "Gateway") => Ok(AuthnTarget::Gateway(key)),
        (_, "Service") => Err(err(
            format!("{field}.group"),
            format!("a Service is in the core group (\"\"), not {:?}", r.group),
        )),
        (_, "Gateway") => Err(err(
            format!("{field}.group"),
            format!("a Gateway is in {GATEWAY_GROUP}, not {:?}", r.group),
        )),
        (_, kind) => Err(err(
            format!("{field}.kind"),
            format!("{kind:?} cannot be a waypoint's target: use Service or Gateway"),
        )),
    }
}

fn rule(field: &str, r: &JwtRuleSpec) -> Result<JwtRule, RequestAuthnError> {
    if r.issuer.is_empty() {
        return Err(err(format!("{field}.issuer"), "must not be empty"));
    }
    for (i, a) in r.audiences.iter().enumerate() {
        if a.is_empty() {
            return Err(err(format!("{field}.audiences[{i}]"), "must not be empty"));
        }
    }
    let keys = match (r.jwks.as_deref(), r.jwks_uri.as_deref()) {
        (Some(jwks), _) if !jwks.trim().is_empty() => Keys::Inline(Arc::new(
            KeySet::parse(jwks).map_err(|e| err(format!("{field}.jwks"), e))?,
        )),
        (_, Some(uri)) if !uri.is_empty() => {
            Keys::Remote(jwks_uri(uri).map_err(|e| err(format!("{field}.jwksUri"), e))?)
        }
        _ => {
            return Err(err(
                format!("{field}.jwks"),
                "no keys: give the issuer's keys inline (jwks) or where to fetch them (jwksUri)",
            ));
        }
    };
    let mut locations = Vec::new();
    for (i, h) in r.from_headers.iter().enumerate() {
        locations.push(TokenLocation::Header {
            name: header_name(&format!("{field}.fromHeaders[{i}].name"), &h.name)?,
            prefix: h.prefix.clone(),
        });
    }
    for (i, p) in r.from_params.iter().enumerate() {
        if p.is_empty() {
            return Err(err(format!("{field}.fromParams[{i}]"), "must not be empty"));
        }
        locations.push(TokenLocation::Param(p.clone()));
    }
    for (i, c) in r.from_cookies.iter().enumerate() {
        if c.is_empty() || c.contains([';', '=', ' ']) {
            return Err(err(
                format!("{field}.fromCookies[{i}]"),
                "must be a cookie name (not empty, no ';', '=' or space)",
            ));
        }
        locations.push(TokenLocation::Cookie(c.clone()));
    }
    if locations.is_empty() {
        locations = TokenLocation::defaults();
    }
    let output_payload_to_header = r
        .output_payload_to_header
        .as_deref()
        .map(|h| header_name(&format!("{field}.outputPayloadToHeader"), h))
        .transpose()?;
    let mut seen = BTreeSet::new();
    let mut output_claim_to_headers = Vec::new();
    for (i, c) in r.output_claim_to_headers.iter().enumerate() {
        let header = header_name(
            &format!("{field}.outputClaimToHeaders[{i}].header"),
            &c.header,
        )?;
        if !seen.insert(header.clone()) {
            return Err(err(
                format!("{field}.outputClaimToHeaders[{i}].header"),
                format!("{header} is named twice"),
            ));
        }
        let claim: Vec<String> = c.claim.split('.').map(str::to_owned).collect();
        if claim.iter().any(String::is_empty) {
            return Err(err(
                format!("{field}.outputClaimToHeaders[{i}].claim"),
                "must be a claim name, nested ones as a.b",
            ));
        }
        output_claim_to_headers.push(ClaimHeader { header, claim });
    }
    Ok(JwtRule {
        issuer: r.issuer.clone(),
        audiences: r.audiences.clone(),
        keys,
        locations,
        forward_original_token: r.forward_original_token,
        output_payload_to_header,
        output_claim_to_headers,
    })
}

/// An `https://host[:port]/path` URI, as given.
fn jwks_uri(uri: &str) -> Result<String, String> {
    let rest = uri
        .strip_prefix("https://")
        .ok_or("must be an https:// URI (keys fetched in plaintext could be anyone's)")?;
    let host = rest.split(['/', '?', '#']).next().unwrap_or_default();
    if host.is_empty() || host.contains('@') {
        return Err("must name a host (and no user info)".into());
    }
    if uri.bytes().any(|b| b <= b' ' || b == 0x7f) {
        return Err("must not contain spaces or control characters".into());
    }
    Ok(uri.to_owned())
}

/// A header name as HTTP allows it (RFC 9110 token), lowercased.
fn header_name(field: &str, name: &str) -> Result<String, RequestAuthnError> {
    let tchar = |b: u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b);
    if name.is_empty() || !name.bytes().all(tchar) {
        return Err(err(
            field,
            format!("{name:?} is not a header name (letters, digits and !#$%&'*+-.^_`|~)"),
        ));
    }
    let lower = name.to_ascii_lowercase();
    if matches!(
        lower.as_str(),
        "host" | "connection" | "content-length" | "transfer-encoding" | "te" | "upgrade"
    ) || lower.starts_with(':')
    {
        return Err(err(
            field,
            format!("{name} is not a header a policy may set"),
        ));
    }
    Ok(lower)
}

#[cfg(test)]
mod tests;
