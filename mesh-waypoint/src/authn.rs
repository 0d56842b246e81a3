//! RequestAuthentication per request, as Istio documents it: a request
//! with no token passes (authorization decides whether a principal is
//! required); a request with a token that does not verify is refused
//! (401) and never forwarded; a verified token gives the request its
//! `RequestAuth` and the header changes its rule asks for.
//!
//! Pure: the rules that apply, the request's head, the keys of remote
//! JWKS as the fetcher (`jwks`) has them, and the time are given.
use std::{
    sync::Arc,
    time::{SystemTime, UNIX_EPOCH},
};

use http::{HeaderMap, HeaderName, HeaderValue, Uri};
use jsonwebtoken::{Algorithm, Validation};
use mesh_discovery::view::MeshView;
use mesh_policy::{
    RequestAuth,
    request_authn::{ALGORITHMS, JwtRule, KeySet, Keys, MAX_TOKEN_BYTES, TokenLocation},
};
use serde_json::{Map, Value};

use crate::{handler::StreamContext, target::Target, waypoint::Waypoint};

/// Envoy's default `clock_skew_seconds`: `exp` and `nbf` are allowed this
/// much disagreement between the issuer's clock and ours.
pub const CLOCK_SKEW_SECS: u64 = 60;
/// Distinct tokens one request may carry: each is verified, so a client
/// must not be able to make the waypoint check signatures without bound.
pub const MAX_TOKENS: usize = 4;

/// The JWT rules of the policies that apply to requests for `service`
/// (`<namespace>/<name>`, `None` for a workload's traffic) at the
/// waypoint of `gateway`, in the view's order.
pub fn applicable(view: &MeshView, gateway: &str, service: Option<&str>) -> Vec<Arc<JwtRule>> {
    view.request_authentications
        .iter()
        .filter(|p| p.applies_to(gateway, service))
        .flat_map(|p| p.rules.iter().cloned())
        .collect()
}

/// Why a request with a token is refused. The text is Envoy's for the
/// same failure, what clients of an Istio waypoint see in the body.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    #[error("Jwt verification fails")]
    TooLarge { bytes: usize },
    #[error("Jwt verification fails")]
    TooMany,
    #[error("Jwt is not in the form of Header.Payload.Signature with two dots and 3 sections")]
    BadFormat,
    #[error("Jwt header is an invalid JSON")]
    BadHeader,
    #[error("Jwt payload is an invalid JSON")]
    BadPayload,
    #[error("Jwt header [alg] is not supported")]
    UnsupportedAlgorithm,
    #[error("Jwt issuer is not configured")]
    UnknownIssuer,
    #[error("Audiences in Jwt are not allowed")]
    AudienceNotAllowed,
    #[error("Jwt is expired")]
    Expired,
    #[error("Jwt not yet valid")]
    NotYetValid,
    /// The issuer's keys are fetched from a URI and no fetch has succeeded
    /// yet: nothing to verify with, so nothing is accepted.
    #[error("Jwks remote fetch is failed")]
    KeysNotFetched { uri: String },
    #[error("Jwks doesn't have key to match kid or alg from Jwt")]
    NoMatchingKey,
    #[error("Jwt verification fails")]
    BadSignature,
}

impl Rejection {
    /// A short label for logs.
    pub fn reason(&self) -> &'static str {
        match self {
            Rejection::TooLarge { .. } => "too_large",
            Rejection::TooMany => "too_many_tokens",
            Rejection::BadFormat => "bad_format",
            Rejection::BadHeader => "bad_header",
            Rejection::BadPayload => "bad_payload",
            Rejection::UnsupportedAlgorithm => "unsupported_algorithm",
            Rejection::UnknownIssuer => "unknown_issuer",
            Rejection::AudienceNotAllowed => "audience_not_allowed",
            Rejection::Expired => "expired",
            Rejection::NotYetValid => "not_yet_valid",
            Rejection::KeysNotFetched { .. } => "keys_not_fetched",
            Rejection::NoMatchingKey => "no_matching_key",
            Rejection::BadSignature => "bad_signature",
        }
    }
}

/// What the upstream request's headers become.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Edits {
    /// Removed: the token's header unless its rule forwards it, and every
    /// header a rule outputs to, so that a client cannot send its own.
    pub remove: Vec<HeaderName>,
    /// Set (after the removals): the payload and claims of the verified token.
    pub set: Vec<(HeaderName, HeaderValue)>,
}

impl Edits {
    fn remove(&mut self, name: HeaderName) {
        if !self.remove.contains(&name) {
            self.remove.push(name);
        }
    }

    pub fn apply(&self, headers: &mut HeaderMap) {
        for name in &self.remove {
            headers.remove(name);
        }
        for (name, value) in &self.set {
            headers.insert(name.clone(), value.clone());
        }
    }
}

/// The outcome for a request that is let through.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Authenticated {
    /// `None` when the request carried no token the rules look for.
    pub auth: Option<RequestAuth>,
    pub edits: Edits,
}

/// A token found in the request, and where.
struct Found<'a> {
    token: &'a str,
    /// The header it came from (removed unless forwarded).
    header: Option<&'a str>,
    /// The rules that look for it there.
    rules: Vec<&'a JwtRule>,
}

/// Decides a request under `rules`: `Ok` with what it proved (if anything)
/// or `Err` with why it is refused. `remote` gives the last good keys of a
/// `jwksUri`; `now` is seconds since the Unix epoch.
pub fn authenticate(
    rules: &[Arc<JwtRule>],
    headers: &HeaderMap,
    query: Option<&str>,
    remote: &dyn Fn(&str) -> Option<Arc<KeySet>>,
    now: u64,
) -> Result<Authenticated, Rejection> {
    let mut out = Authenticated::default();
    if rules.is_empty() {
        return Ok(out);
    }
    for rule in rules {
        let outputs = rule
            .output_payload_to_header
            .iter()
            .chain(rule.output_claim_to_headers.iter().map(|c| &c.header));
        for name in outputs {
            if let Ok(name) = HeaderName::from_bytes(name.as_bytes()) {
                out.edits.remove(name);
            }
        }
    }
    let found = find_tokens(rules, headers, query)?;
    for f in &found {
        // Every token present must verify: a bad one next to a good one
        // still marks a client that is sending what it should not.
        let verified = verify(f, remote, now)?;
        if let Some(header) = f.header
            && !verified.rule.forward_original_token
            && let Ok(name) = HeaderName::from_bytes(header.as_bytes())
        {
            out.edits.remove(name);
        }
        if out.auth.is_none() {
            outputs(&verified, &mut out.edits);
            out.auth = Some(verified.auth);
        }
    }
    Ok(out)
}

/// Every distinct token in the places the rules name, with the rules that
/// look there.
fn find_tokens<'a>(
    rules: &'a [Arc<JwtRule>],
    headers: &'a HeaderMap,
    query: Option<&'a str>,
) -> Result<Vec<Found<'a>>, Rejection> {
    let pairs = mesh_route::uri::query_pairs(query);
    let mut found: Vec<Found<'a>> = Vec::new();
    let mut add = |token: &'a str, header: Option<&'a str>, rule: &'a JwtRule| {
        if token.len() > MAX_TOKEN_BYTES {
            return Err(Rejection::TooLarge { bytes: token.len() });
        }
        if let Some(f) = found.iter_mut().find(|f| f.token == token) {
            if !f.rules.iter().any(|r| std::ptr::eq(*r, rule)) {
                f.rules.push(rule);
            }
            return Ok(());
        }
        if found.len() == MAX_TOKENS {
            return Err(Rejection::TooMany);
        }
        found.push(Found {
            token,
            header,
            rules: vec![rule],
        });
        Ok(())
    };
    for rule in rules {
        for location in &rule.locations {
            match location {
                TokenLocation::Header { name, prefix } => {
                    for value in headers.get_all(name.as_str()) {
                        let Ok(value) = value.to_str() else {
                            continue;
                        };
                        if let Some(token) = strip_prefix_ignore_case(value, prefix) {
                            let token = token.trim();
                            if !token.is_empty() {
                                add(token, Some(name.as_str()), rule)?;
                            }
                        }
                    }
                }
                TokenLocation::Param(name) => {
                    for (k, v) in &pairs {
                        if k == name && !v.is_empty() {
                            add(v, None, rule)?;
                        }
                    }
                }
                TokenLocation::Cookie(name) => {
                    for value in headers.get_all(http::header::COOKIE) {
                        let Ok(value) = value.to_str() else {
                            continue;
                        };
                        for pair in value.split(';') {
                            if let Some((k, v)) = pair.trim().split_once('=')
                                && k == name
                                && !v.is_empty()
                            {
                                add(v, None, rule)?;
                            }
                        }
                    }
                }
            }
        }
    }
    Ok(found)
}

/// `value` without `prefix` (its ASCII case ignored: `bearer` is `Bearer`),
/// or `None` when it does not start with it.
fn strip_prefix_ignore_case<'a>(value: &'a str, prefix: &str) -> Option<&'a str> {
    let head = value.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix)
        .then(|| &value[prefix.len()..])
}

struct Verified<'a> {
    rule: &'a JwtRule,
    auth: RequestAuth,
    /// The token's payload segment, base64url as it came.
    payload: &'a str,
}

fn verify<'a>(
    found: &Found<'a>,
    remote: &dyn Fn(&str) -> Option<Arc<KeySet>>,
    now: u64,
) -> Result<Verified<'a>, Rejection> {
    let token = found.token;
    let mut parts = token.split('.');
    let (Some(_), Some(payload), Some(_), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(Rejection::BadFormat);
    };
    let header = jsonwebtoken::decode_header(token).map_err(|_| Rejection::BadHeader)?;
    if !ALGORITHMS.contains(&header.alg) {
        return Err(Rejection::UnsupportedAlgorithm);
    }
    let claims = jsonwebtoken::dangerous::insecure_decode_claims::<Map<String, Value>>(token)
        .map_err(|_| Rejection::BadPayload)?;
    let issuer = match claims.get("iss") {
        Some(Value::String(s)) => s.as_str(),
        Some(_) => return Err(Rejection::BadPayload),
        None => return Err(Rejection::UnknownIssuer),
    };
    let rule = found
        .rules
        .iter()
        .copied()
        .find(|r| r.issuer == issuer)
        .ok_or(Rejection::UnknownIssuer)?;
    let audiences = match claims.get("aud") {
        None => Vec::new(),
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(items)) => items
            .iter()
            .map(|v| v.as_str().map(str::to_owned).ok_or(Rejection::BadPayload))
            .collect::<Result<_, _>>()?,
        Some(_) => return Err(Rejection::BadPayload),
    };
    if !rule.audiences.is_empty() && !audiences.iter().any(|a| rule.audiences.contains(a)) {
        return Err(Rejection::AudienceNotAllowed);
    }
    if let Some(exp) = time_claim(&claims, "exp")?
        && now > exp.saturating_add(CLOCK_SKEW_SECS)
    {
        return Err(Rejection::Expired);
    }
    if let Some(nbf) = time_claim(&claims, "nbf")?
        && nbf > now.saturating_add(CLOCK_SKEW_SECS)
    {
        return Err(Rejection::NotYetValid);
    }
    let keys = match &rule.keys {
        Keys::Inline(keys) => keys.clone(),
        Keys::Remote(uri) => {
            remote(uri).ok_or_else(|| Rejection::KeysNotFetched { uri: uri.clone() })?
        }
    };
    check_signature(token, header.kid.as_deref(), header.alg, &keys)?;
    let subject = claims
        .get("sub")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let auth = RequestAuth {
        principal: format!("{issuer}/{subject}"),
        audiences,
        presenter: claims.get("azp").and_then(Value::as_str).map(str::to_owned),
        claims,
    };
    Ok(Verified {
        rule,
        auth,
        payload,
    })
}

/// A NumericDate claim as whole seconds; a present claim of another type
/// is a malformed payload.
fn time_claim(claims: &Map<String, Value>, name: &str) -> Result<Option<u64>, Rejection> {
    match claims.get(name) {
        None => Ok(None),
        Some(Value::Number(n)) => n
            .as_u64()
            .or_else(|| n.as_f64().filter(|f| *f >= 0.0).map(|f| f as u64))
            .map(Some)
            .ok_or(Rejection::BadPayload),
        Some(_) => Err(Rejection::BadPayload),
    }
}

fn check_signature(
    token: &str,
    kid: Option<&str>,
    alg: Algorithm,
    keys: &KeySet,
) -> Result<(), Rejection> {
    // Claims were checked above, Envoy's way (and with its messages).
    let mut validation = Validation::new(alg);
    validation.validate_exp = false;
    validation.validate_nbf = false;
    validation.validate_aud = false;
    validation.required_spec_claims.clear();
    let mut tried = false;
    for key in keys.candidates(kid, alg) {
        tried = true;
        if jsonwebtoken::decode::<serde::de::IgnoredAny>(token, key, &validation).is_ok() {
            return Ok(());
        }
    }
    Err(if tried {
        Rejection::BadSignature
    } else {
        Rejection::NoMatchingKey
    })
}

/// The payload and claim headers of a verified token.
fn outputs(verified: &Verified<'_>, edits: &mut Edits) {
    let rule = verified.rule;
    if let Some(header) = &rule.output_payload_to_header
        && let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(header.as_bytes()),
            HeaderValue::from_str(verified.payload),
        )
    {
        edits.set.push((name, value));
    }
    for c in &rule.output_claim_to_headers {
        let Some(text) = claim_text(&verified.auth.claims, &c.claim) else {
            continue;
        };
        if let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(c.header.as_bytes()),
            HeaderValue::from_str(&text),
        ) {
            edits.set.push((name, value));
        }
    }
}

/// A claim as a header value, as Istio documents it: strings, booleans
/// and integers (nested ones too); lists, objects and fractions give no
/// header.
pub fn claim_text(claims: &Map<String, Value>, path: &[String]) -> Option<String> {
    let (first, rest) = path.split_first()?;
    let mut value = claims.get(first)?;
    for key in rest {
        value = value.get(key)?;
    }
    match value {
        Value::String(s) => Some(s.clone()),
        Value::Bool(b) => Some(b.to_string()),
        Value::Number(n) if n.is_i64() || n.is_u64() => Some(n.to_string()),
        _ => None,
    }
}

/// The decision for a request of the stream `ctx` at `wp`, under the
/// policies of its Service and of the waypoint's Gateway.
pub fn check(
    wp: &Waypoint,
    view: &MeshView,
    ctx: &StreamContext,
    headers: &HeaderMap,
    uri: &Uri,
) -> Result<Authenticated, Rejection> {
    if view.request_authentications.is_empty() {
        return Ok(Authenticated::default());
    }
    let service = match &ctx.target {
        Target::Service { route, .. } => Some(route.service.key()),
        Target::Workload { .. } => None,
    };
    let rules = applicable(view, &wp.gateway.to_string(), service.as_deref());
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    authenticate(&rules, headers, uri.query(), &|u| wp.jwks.keys(u), now)
}

/// `WWW-Authenticate` of a 401, as Envoy's: the request's URL as the realm.
pub fn challenge(authority: &str, path: &str) -> HeaderValue {
    HeaderValue::from_str(&format!(
        "Bearer realm=\"http://{authority}{path}\", error=\"invalid_token\""
    ))
    .unwrap_or_else(|_| HeaderValue::from_static("Bearer error=\"invalid_token\""))
}

#[cfg(test)]
mod tests {
    use std::sync::OnceLock;

    use aws_lc_rs::{
        encoding::AsDer,
        rand::SystemRandom,
        rsa::{KeyPair as RsaKeyPair, KeySize},
        signature::{
            ECDSA_P256_SHA256_FIXED_SIGNING, ECDSA_P384_SHA384_FIXED_SIGNING, EcdsaKeyPair,
        },
    };
    use jsonwebtoken::{EncodingKey, Header, jwk::Jwk};
    use mesh_policy::request_authn::{ClaimHeader, TokenLocation};
    use serde_json::json;

    use super::*;

    const NOW: u64 = 1_800_000_000;
    const ISSUER: &str = "https://issuer.example";

    /// The inner RSAPrivateKey of a PKCS #8 document (what jsonwebtoken's
    /// RSA signer reads).
    fn pkcs1_of(pkcs8: &[u8]) -> Vec<u8> {
        fn len(b: &[u8], i: &mut usize) -> usize {
            let first = b[*i];
            *i += 1;
            if first < 0x80 {
                return usize::from(first);
            }
            let mut n = 0;
            for _ in 0..(first & 0x7f) {
                n = n << 8 | usize::from(b[*i]);
                *i += 1;
            }
            n
        }
        let mut i = 1;
        len(pkcs8, &mut i);
        for _ in 0..2 {
            // version, then the algorithm: skipped.
            i += 1;
            let l = len(pkcs8, &mut i);
            i += l;
        }
        assert_eq!(pkcs8[i], 0x04, "an OCTET STRING holds the key");
        i += 1;
        let l = len(pkcs8, &mut i);
        pkcs8[i..i + l].to_vec()
    }

    fn rsa_der(slot: usize) -> &'static [u8] {
        static KEYS: OnceLock<Vec<Vec<u8>>> = OnceLock::new();
        &KEYS.get_or_init(|| {
            (0..2)
                .map(|_| {
                    let pair = RsaKeyPair::generate(KeySize::Rsa2048).unwrap();
                    let pkcs8 = AsDer::<aws_lc_rs::encoding::Pkcs8V1Der>::as_der(&pair).unwrap();
                    pkcs1_of(pkcs8.as_ref())
                })
                .collect()
        })[slot]
    }

    struct Signer {
        key: EncodingKey,
        alg: Algorithm,
        kid: String,
    }

    fn rsa(alg: Algorithm, kid: &str, slot: usize) -> Signer {
        Signer {
            key: EncodingKey::from_rsa_der(rsa_der(slot)),
            alg,
            kid: kid.into(),
        }
    }

    fn ec(alg: Algorithm, kid: &str) -> Signer {
        let curve = match alg {
            Algorithm::ES384 => &ECDSA_P384_SHA384_FIXED_SIGNING,
            _ => &ECDSA_P256_SHA256_FIXED_SIGNING,
        };
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(curve, &SystemRandom::new()).unwrap();
        Signer {
            key: EncodingKey::from_ec_der(pkcs8.as_ref()),
            alg,
            kid: kid.into(),
        }
    }

    fn ed(kid: &str) -> Signer {
        let pkcs8 =
            aws_lc_rs::signature::Ed25519KeyPair::generate_pkcs8v1(&SystemRandom::new()).unwrap();
        Signer {
            key: EncodingKey::from_ed_der(pkcs8.as_ref()),
            alg: Algorithm::EdDSA,
            kid: kid.into(),
        }
    }

    fn key_set(signers: &[&Signer]) -> Arc<KeySet> {
        let keys: Vec<Value> = signers
            .iter()
            .map(|s| {
                let mut jwk = Jwk::from_encoding_key(&s.key, s.alg).unwrap();
                jwk.common.key_id = Some(s.kid.clone());
                // The JWKS says no alg: the token's is checked against the
                // key's family only.
                jwk.common.key_algorithm = None;
                serde_json::to_value(jwk).unwrap()
            })
            .collect();
        Arc::new(KeySet::parse(&json!({ "keys": keys }).to_string()).unwrap())
    }

    fn token(s: &Signer, claims: Value) -> String {
        let mut header = Header::new(s.alg);
        header.kid = Some(s.kid.clone());
        jsonwebtoken::encode(&header, &claims, &s.key).unwrap()
    }

    fn claims() -> Value {
        json!({
            "iss": ISSUER, "sub": "alice", "aud": ["web", "api"], "azp": "cli",
            "exp": NOW + 600, "nbf": NOW - 10,
            "group": "dev", "admin": true, "level": 3, "ratio": 0.5,
            "roles": ["a", "b"], "org": {"team": "pay", "deep": {"x": 1}},
        })
    }

    fn rule(keys: Keys) -> JwtRule {
        JwtRule {
            issuer: ISSUER.into(),
            audiences: Vec::new(),
            keys,
            locations: TokenLocation::defaults(),
            forward_original_token: false,
            output_payload_to_header: None,
            output_claim_to_headers: Vec::new(),
        }
    }

    fn bearer(token: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert("authorization", format!("Bearer {token}").parse().unwrap());
        h
    }

    fn no_remote(_: &str) -> Option<Arc<KeySet>> {
        None
    }

    fn run(rules: Vec<JwtRule>, headers: &HeaderMap) -> Result<Authenticated, Rejection> {
        let rules: Vec<Arc<JwtRule>> = rules.into_iter().map(Arc::new).collect();
        authenticate(&rules, headers, None, &no_remote, NOW)
    }

    fn header<'a>(edits: &'a Edits, name: &str) -> Option<&'a str> {
        edits
            .set
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.to_str().unwrap())
    }

    #[test]
    fn every_accepted_algorithm_verifies() {
        let signers = [
            rsa(Algorithm::RS256, "r256", 0),
            rsa(Algorithm::RS384, "r384", 0),
            rsa(Algorithm::RS512, "r512", 0),
            rsa(Algorithm::PS256, "p256", 0),
            rsa(Algorithm::PS384, "p384", 0),
            rsa(Algorithm::PS512, "p512", 0),
            ec(Algorithm::ES256, "e256"),
            ec(Algorithm::ES384, "e384"),
            ed("ed"),
        ];
        for s in &signers {
            let r = rule(Keys::Inline(key_set(&[s])));
            let out = run(vec![r], &bearer(&token(s, claims())))
                .unwrap_or_else(|e| panic!("{:?}: {e}", s.alg));
            let auth = out.auth.expect("a principal");
            assert_eq!(auth.principal, format!("{ISSUER}/alice"), "{:?}", s.alg);
        }
    }

    #[test]
    fn a_verified_token_gives_its_facts_and_header_changes() {
        let s = ec(Algorithm::ES256, "k1");
        let mut r = rule(Keys::Inline(key_set(&[&s])));
        r.output_payload_to_header = Some("x-jwt-payload".into());
        r.output_claim_to_headers = [
            ("x-group", "group"),
            ("x-admin", "admin"),
            ("x-level", "level"),
            ("x-ratio", "ratio"),
            ("x-roles", "roles"),
            ("x-org", "org"),
            ("x-team", "org.team"),
            ("x-missing", "nothing"),
        ]
        .iter()
        .map(|(h, c)| ClaimHeader {
            header: (*h).into(),
            claim: c.split('.').map(str::to_owned).collect(),
        })
        .collect();
        let jwt = token(&s, claims());
        let out = run(vec![r], &bearer(&jwt)).unwrap();
        let auth = out.auth.as_ref().unwrap();
        assert_eq!(auth.principal, "https://issuer.example/alice");
        assert_eq!(auth.audiences, ["web", "api"]);
        assert_eq!(auth.presenter.as_deref(), Some("cli"));
        assert_eq!(auth.claim(&["org", "team"]), ["pay"]);
        let payload = jwt.split('.').nth(1).unwrap();
        assert_eq!(header(&out.edits, "x-jwt-payload"), Some(payload));
        assert_eq!(header(&out.edits, "x-group"), Some("dev"));
        assert_eq!(header(&out.edits, "x-admin"), Some("true"));
        assert_eq!(header(&out.edits, "x-level"), Some("3"));
        assert_eq!(header(&out.edits, "x-team"), Some("pay"));
        // Istio copies strings, booleans and integers only.
        for none in ["x-ratio", "x-roles", "x-org", "x-missing"] {
            assert_eq!(header(&out.edits, none), None, "{none}");
        }
        // The token's header goes; so does whatever a client put in the
        // output headers (set again from the token above).
        assert!(out.edits.remove.iter().any(|n| n == "authorization"));
        assert!(out.edits.remove.iter().any(|n| n == "x-group"));
        let mut upstream = bearer(&jwt);
        upstream.insert("x-roles", "forged".parse().unwrap());
        out.edits.apply(&mut upstream);
        assert!(upstream.get("authorization").is_none());
        assert!(
            upstream.get("x-roles").is_none(),
            "a forged output header is removed"
        );
        assert_eq!(upstream.get("x-group").unwrap(), "dev");
    }

    #[test]
    fn the_original_token_is_kept_when_forwarded() {
        let s = ec(Algorithm::ES256, "k1");
        let mut r = rule(Keys::Inline(key_set(&[&s])));
        r.forward_original_token = true;
        let out = run(vec![r], &bearer(&token(&s, claims()))).unwrap();
        assert!(out.auth.is_some());
        assert!(out.edits.remove.is_empty());
    }

    #[test]
    fn no_token_passes_without_a_principal_and_output_headers_are_cleared() {
        let s = ec(Algorithm::ES256, "k1");
        let mut r = rule(Keys::Inline(key_set(&[&s])));
        r.output_payload_to_header = Some("x-jwt-payload".into());
        let mut h = HeaderMap::new();
        h.insert("x-jwt-payload", "forged".parse().unwrap());
        // Another scheme in Authorization is not a token of the rule's.
        h.insert("authorization", "Basic dXNlcjpwdw==".parse().unwrap());
        let out = run(vec![r], &h).unwrap();
        assert_eq!(out.auth, None);
        assert!(out.edits.remove.iter().any(|n| n == "x-jwt-payload"));
        assert!(!out.edits.remove.iter().any(|n| n == "authorization"));
        assert_eq!(
            run(Vec::new(), &bearer("x.y.z")).unwrap(),
            Authenticated::default()
        );
    }

    fn refused(r: JwtRule, claims: Value, signer: &Signer) -> Rejection {
        run(vec![r], &bearer(&token(signer, claims))).unwrap_err()
    }

    #[test]
    fn each_failure_is_refused_with_envoys_words() {
        let s = ec(Algorithm::ES256, "k1");
        let keys = Keys::Inline(key_set(&[&s]));
        let with = |edit: fn(&mut Value)| {
            let mut c = claims();
            edit(&mut c);
            c
        };
        let e = refused(rule(keys.clone()), with(|c| c["exp"] = json!(NOW - 61)), &s);
        assert_eq!(
            (e.clone(), e.to_string()),
            (Rejection::Expired, "Jwt is expired".into())
        );
        // Within the clock skew, still good.
        assert!(
            run(
                vec![rule(keys.clone())],
                &bearer(&token(&s, with(|c| c["exp"] = json!(NOW - 30))))
            )
            .is_ok()
        );
        let e = refused(rule(keys.clone()), with(|c| c["nbf"] = json!(NOW + 61)), &s);
        assert_eq!(
            (e.clone(), e.to_string()),
            (Rejection::NotYetValid, "Jwt not yet valid".into())
        );
        let e = refused(
            rule(keys.clone()),
            with(|c| c["iss"] = json!("https://other")),
            &s,
        );
        assert_eq!(e.to_string(), "Jwt issuer is not configured");
        let e = refused(
            rule(keys.clone()),
            with(|c| c.as_object_mut().unwrap().remove("iss").map(drop).unwrap()),
            &s,
        );
        assert_eq!(e, Rejection::UnknownIssuer);
        let mut r = rule(keys.clone());
        r.audiences = vec!["billing".into()];
        let e = refused(r.clone(), claims(), &s);
        assert_eq!(e.to_string(), "Audiences in Jwt are not allowed");
        let e = refused(
            r.clone(),
            with(|c| c.as_object_mut().unwrap().remove("aud").map(drop).unwrap()),
            &s,
        );
        assert_eq!(e, Rejection::AudienceNotAllowed);
        r.audiences.push("api".into());
        assert!(
            run(vec![r], &bearer(&token(&s, claims()))).is_ok(),
            "one listed audience suffices"
        );
        // Signed by another key under the same kid.
        let forger = ec(Algorithm::ES256, "k1");
        let e = refused(rule(keys.clone()), claims(), &forger);
        assert_eq!(
            (e.clone(), e.to_string()),
            (Rejection::BadSignature, "Jwt verification fails".into())
        );
        let stranger = ec(Algorithm::ES256, "k9");
        assert_eq!(
            refused(rule(keys.clone()), claims(), &stranger),
            Rejection::NoMatchingKey
        );
        // An RSA token against EC keys: no key of its family.
        let rsa_signer = rsa(Algorithm::RS256, "k1", 1);
        assert_eq!(
            refused(rule(keys.clone()), claims(), &rsa_signer),
            Rejection::NoMatchingKey
        );
        let e = refused(
            rule(keys.clone()),
            with(|c| c["exp"] = json!("tomorrow")),
            &s,
        );
        assert_eq!(e, Rejection::BadPayload);
    }

    #[test]
    fn malformed_and_hostile_tokens_are_refused_without_panicking() {
        let s = ec(Algorithm::ES256, "k1");
        let r = || vec![rule(Keys::Inline(key_set(&[&s])))];
        assert_eq!(run(r(), &bearer("abc")).unwrap_err(), Rejection::BadFormat);
        assert_eq!(
            run(r(), &bearer("a.b.c.d")).unwrap_err(),
            Rejection::BadFormat
        );
        assert_eq!(
            run(r(), &bearer("!!.e30.sig")).unwrap_err(),
            Rejection::BadHeader
        );
        // {"alg":"HS256"}: a shared-secret algorithm.
        let hs = "eyJhbGciOiJIUzI1NiJ9.e30.c2ln";
        assert_eq!(
            run(r(), &bearer(hs)).unwrap_err(),
            Rejection::UnsupportedAlgorithm
        );
        // {"alg":"none"}
        assert_eq!(
            run(r(), &bearer("eyJhbGciOiJub25lIn0.e30.")).unwrap_err(),
            Rejection::BadHeader
        );
        let good = token(&s, claims());
        let (head, _) = good.split_once('.').unwrap();
        let bad_payload = format!("{head}.bm90IGpzb24.sig");
        assert_eq!(
            run(r(), &bearer(&bad_payload)).unwrap_err(),
            Rejection::BadPayload
        );
        let huge = format!("{head}.{}.sig", "A".repeat(MAX_TOKEN_BYTES));
        assert!(matches!(
            run(r(), &bearer(&huge)).unwrap_err(),
            Rejection::TooLarge { .. }
        ));
        let mut q = HeaderMap::new();
        q.insert("x", "y".parse().unwrap());
        let rules: Vec<Arc<JwtRule>> = r().into_iter().map(Arc::new).collect();
        let mut many = HeaderMap::new();
        for i in 0..=MAX_TOKENS {
            many.append("authorization", format!("Bearer a.b.{i}").parse().unwrap());
        }
        assert_eq!(
            authenticate(&rules, &many, None, &no_remote, NOW).unwrap_err(),
            Rejection::TooMany
        );
        let long_query = format!("access_token={}", "A".repeat(MAX_TOKEN_BYTES + 1));
        assert!(matches!(
            authenticate(&rules, &q, Some(&long_query), &no_remote, NOW).unwrap_err(),
            Rejection::TooLarge { .. }
        ));
    }

    #[test]
    fn remote_keys_are_used_once_fetched_and_refused_before() {
        let s = rsa(Algorithm::RS256, "r1", 0);
        let uri = "https://keys.example/jwks";
        let rules = vec![Arc::new(rule(Keys::Remote(uri.into())))];
        let h = bearer(&token(&s, claims()));
        let e = authenticate(&rules, &h, None, &no_remote, NOW).unwrap_err();
        assert_eq!(e, Rejection::KeysNotFetched { uri: uri.into() });
        assert_eq!(e.to_string(), "Jwks remote fetch is failed");
        let set = key_set(&[&s]);
        let fetched = |u: &str| (u == uri).then(|| set.clone());
        assert!(
            authenticate(&rules, &h, None, &fetched, NOW)
                .unwrap()
                .auth
                .is_some()
        );
    }

    #[test]
    fn tokens_are_found_where_the_rule_says() {
        let s = ec(Algorithm::ES256, "k1");
        let jwt = token(&s, claims());
        let mut r = rule(Keys::Inline(key_set(&[&s])));
        let rules = |r: &JwtRule| vec![Arc::new(r.clone())];
        // The default query parameter.
        let out = authenticate(
            &rules(&r),
            &HeaderMap::new(),
            Some(&format!("a=1&access_token={jwt}")),
            &no_remote,
            NOW,
        )
        .unwrap();
        assert!(out.auth.is_some());
        assert!(
            out.edits.remove.is_empty(),
            "a parameter is not a header to remove"
        );
        // `bearer` reads as `Bearer`.
        let mut h = HeaderMap::new();
        h.insert("authorization", format!("bearer {jwt}").parse().unwrap());
        assert!(
            authenticate(&rules(&r), &h, None, &no_remote, NOW)
                .unwrap()
                .auth
                .is_some()
        );
        r.locations = vec![
            TokenLocation::Header {
                name: "x-token".into(),
                prefix: "Tok ".into(),
            },
            TokenLocation::Cookie("session".into()),
        ];
        let mut h = HeaderMap::new();
        h.insert("x-token", format!("Tok {jwt}").parse().unwrap());
        let out = authenticate(&rules(&r), &h, None, &no_remote, NOW).unwrap();
        assert!(out.auth.is_some());
        assert_eq!(out.edits.remove, ["x-token"]);
        // Not in the rule's places: no token, so nothing proved.
        assert_eq!(
            authenticate(&rules(&r), &bearer(&jwt), None, &no_remote, NOW)
                .unwrap()
                .auth,
            None
        );
        let mut h = HeaderMap::new();
        h.insert("cookie", format!("a=b; session={jwt}").parse().unwrap());
        assert!(
            authenticate(&rules(&r), &h, None, &no_remote, NOW)
                .unwrap()
                .auth
                .is_some()
        );
    }

    #[test]
    fn the_rule_of_the_token_s_issuer_verifies_it() {
        let a = ec(Algorithm::ES256, "a");
        let b = ec(Algorithm::ES256, "b");
        let mut ra = rule(Keys::Inline(key_set(&[&a])));
        ra.issuer = "issuer-a".into();
        let rb = rule(Keys::Inline(key_set(&[&b])));
        let out = run(vec![ra.clone(), rb.clone()], &bearer(&token(&b, claims()))).unwrap();
        assert_eq!(out.auth.unwrap().principal, format!("{ISSUER}/alice"));
        // Two tokens: both must verify.
        let mut h = bearer(&token(&b, claims()));
        h.append("authorization", "Bearer a.b.c".parse().unwrap());
        assert!(run(vec![ra, rb], &h).is_err());
    }

    #[test]
    fn claims_become_header_text_as_istio_documents() {
        let Value::Object(c) = claims() else {
            unreachable!()
        };
        let path = |p: &str| p.split('.').map(str::to_owned).collect::<Vec<_>>();
        assert_eq!(claim_text(&c, &path("group")).as_deref(), Some("dev"));
        assert_eq!(claim_text(&c, &path("admin")).as_deref(), Some("true"));
        assert_eq!(claim_text(&c, &path("level")).as_deref(), Some("3"));
        assert_eq!(claim_text(&c, &path("org.deep.x")).as_deref(), Some("1"));
        assert_eq!(claim_text(&c, &path("ratio")), None);
        assert_eq!(claim_text(&c, &path("roles")), None);
        assert_eq!(claim_text(&c, &path("org")), None);
        assert_eq!(claim_text(&c, &[]), None);
    }

    #[test]
    fn the_challenge_names_the_request_as_envoy_does() {
        assert_eq!(
            challenge("web.shop:80", "/a"),
            "Bearer realm=\"http://web.shop:80/a\", error=\"invalid_token\""
        );
    }
}
