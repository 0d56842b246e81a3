use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair};
use jsonwebtoken::{EncodingKey, jwk::Jwk};

use super::*;

/// A fresh ES256 key's public JWK, with `kid`.
fn ec_jwk(kid: &str) -> serde_json::Value {
    let rng = aws_lc_rs::rand::SystemRandom::new();
    let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
    let key = EncodingKey::from_ec_der(pkcs8.as_ref());
    let mut jwk = Jwk::from_encoding_key(&key, Algorithm::ES256).unwrap();
    jwk.common.key_id = Some(kid.into());
    // Many issuers leave `alg` out of their JWKS; a test that wants it
    // sets it.
    jwk.common.key_algorithm = None;
    serde_json::to_value(jwk).unwrap()
}

fn jwks(keys: &[serde_json::Value]) -> String {
    serde_json::json!({ "keys": keys }).to_string()
}

fn spec(yaml: &str) -> Result<RequestAuthenticationSpec, serde_yaml::Error> {
    serde_yaml::from_str(yaml)
}

fn compile_yaml(yaml: &str) -> Result<RequestAuthentication, RequestAuthnError> {
    compile("shop", "jwt", &spec(yaml).unwrap())
}

#[test]
fn every_field_is_read_and_compiled() {
    let keys = jwks(&[ec_jwk("k1")]);
    let yaml = format!(
        r#"
targetRefs:
- {{kind: Service, group: "", name: web}}
- {{kind: Gateway, group: gateway.networking.k8s.io, name: wp, namespace: shop}}
jwtRules:
- issuer: https://issuer.example
  audiences: [web, api]
  jwks: '{keys}'
  fromHeaders: [{{name: X-Token, prefix: "Token "}}]
  fromParams: [tok]
  fromCookies: [session]
  outputPayloadToHeader: X-Jwt-Payload
  forwardOriginalToken: true
  outputClaimToHeaders:
  - {{header: X-Group, claim: org.group}}
  - {{header: x-sub, claim: sub}}
- issuer: other
  jwksUri: https://keys.example:8443/jwks.json
"#
    );
    let compiled = compile_yaml(&yaml).unwrap();
    assert_eq!(compiled.key, "shop/jwt");
    assert_eq!(
        compiled.targets,
        [
            AuthnTarget::Service("shop/web".into()),
            AuthnTarget::Gateway("shop/wp".into())
        ]
    );
    let r = &compiled.rules[0];
    assert_eq!(r.issuer, "https://issuer.example");
    assert_eq!(r.audiences, ["web", "api"]);
    let Keys::Inline(set) = &r.keys else {
        panic!("inline keys expected, got {:?}", r.keys)
    };
    assert_eq!(set.len(), 1);
    assert_eq!(
        r.locations,
        [
            TokenLocation::Header {
                name: "x-token".into(),
                prefix: "Token ".into()
            },
            TokenLocation::Param("tok".into()),
            TokenLocation::Cookie("session".into()),
        ]
    );
    assert!(r.forward_original_token);
    assert_eq!(r.output_payload_to_header.as_deref(), Some("x-jwt-payload"));
    assert_eq!(
        r.output_claim_to_headers,
        [
            ClaimHeader {
                header: "x-group".into(),
                claim: vec!["org".into(), "group".into()]
            },
            ClaimHeader {
                header: "x-sub".into(),
                claim: vec!["sub".into()]
            },
        ]
    );
    let r = &compiled.rules[1];
    assert!(matches!(&r.keys, Keys::Remote(u) if u == "https://keys.example:8443/jwks.json"));
    // Neither headers nor params given: Envoy's default locations.
    assert_eq!(r.locations, TokenLocation::defaults());
    assert!(!r.forward_original_token);
    assert!(r.output_payload_to_header.is_none());
}

#[test]
fn a_single_target_ref_is_read_too() {
    let compiled = compile_yaml(
        "targetRef: {kind: Gateway, group: gateway.networking.k8s.io, name: wp}\njwtRules: []",
    )
    .unwrap();
    assert_eq!(compiled.targets, [AuthnTarget::Gateway("shop/wp".into())]);
    assert!(compiled.applies_to("shop/wp", None));
    assert!(compiled.applies_to("shop/wp", Some("shop/web")));
    assert!(!compiled.applies_to("other/wp", Some("shop/web")));
}

#[test]
fn a_service_target_applies_to_that_service_only() {
    let compiled = compile_yaml("targetRefs: [{kind: Service, name: web}]").unwrap();
    assert!(compiled.applies_to("shop/wp", Some("shop/web")));
    assert!(!compiled.applies_to("shop/wp", Some("shop/api")));
    assert!(!compiled.applies_to("shop/wp", None));
}

#[test]
fn a_selector_policy_applies_to_no_waypoint() {
    let compiled = compile_yaml("selector: {matchLabels: {app: web}}").unwrap();
    assert!(compiled.targets.is_empty());
    assert!(!compiled.applies_to("shop/wp", Some("shop/web")));
}

#[test]
fn unknown_fields_are_refused_by_name() {
    let e = spec("jwtRules: [{issuer: a, jwksUri: 'https://k', audience: [x]}]").unwrap_err();
    assert!(e.to_string().contains("unknown field `audience`"), "{e}");
    let e = spec("targetRefs: [{kind: Service, name: web, port: 80}]").unwrap_err();
    assert!(e.to_string().contains("unknown field `port`"), "{e}");
    let e = spec("rules: []").unwrap_err();
    assert!(e.to_string().contains("unknown field `rules`"), "{e}");
    let e =
        spec("jwtRules: [{issuer: a, jwksUri: 'https://k', fromHeaders: [{name: a, prefx: b}]}]")
            .unwrap_err();
    assert!(e.to_string().contains("unknown field `prefx`"), "{e}");
}

fn field_of(yaml: &str) -> String {
    compile_yaml(yaml).unwrap_err().field
}

#[test]
fn a_rule_without_keys_is_refused_naming_the_field() {
    assert_eq!(field_of("jwtRules: [{issuer: a}]"), "jwtRules[0].jwks");
    assert_eq!(
        field_of("jwtRules: [{issuer: a, jwks: '', jwksUri: ''}]"),
        "jwtRules[0].jwks"
    );
    assert_eq!(
        field_of(
            "jwtRules: [{issuer: a, jwksUri: 'https://k'}, {issuer: b, jwks: '{\"keys\": []}'}]"
        ),
        "jwtRules[1].jwks"
    );
    assert_eq!(
        field_of("jwtRules: [{issuer: a, jwks: 'not json'}]"),
        "jwtRules[0].jwks"
    );
    assert_eq!(
        field_of("jwtRules: [{issuer: a, jwksUri: 'http://keys.example/jwks'}]"),
        "jwtRules[0].jwksUri"
    );
    assert_eq!(
        field_of("jwtRules: [{issuer: a, jwksUri: 'https:///jwks'}]"),
        "jwtRules[0].jwksUri"
    );
}

#[test]
fn inline_keys_win_over_a_uri_as_in_istio() {
    let keys = jwks(&[ec_jwk("k1")]);
    let compiled = compile_yaml(&format!(
        "jwtRules: [{{issuer: a, jwks: '{keys}', jwksUri: 'https://k/j'}}]"
    ))
    .unwrap();
    assert!(matches!(compiled.rules[0].keys, Keys::Inline(_)));
}

#[test]
fn bad_fields_are_named() {
    let ok = "jwksUri: 'https://k/j'";
    for (yaml, field) in [
        (
            format!("jwtRules: [{{issuer: '', {ok}}}]"),
            "jwtRules[0].issuer",
        ),
        (
            format!("jwtRules: [{{issuer: a, audiences: [''], {ok}}}]"),
            "jwtRules[0].audiences[0]",
        ),
        (
            format!("jwtRules: [{{issuer: a, fromHeaders: [{{name: 'bad name'}}], {ok}}}]"),
            "jwtRules[0].fromHeaders[0].name",
        ),
        (
            format!("jwtRules: [{{issuer: a, fromParams: [''], {ok}}}]"),
            "jwtRules[0].fromParams[0]",
        ),
        (
            format!("jwtRules: [{{issuer: a, fromCookies: ['a=b'], {ok}}}]"),
            "jwtRules[0].fromCookies[0]",
        ),
        (
            format!("jwtRules: [{{issuer: a, outputPayloadToHeader: 'Host', {ok}}}]"),
            "jwtRules[0].outputPayloadToHeader",
        ),
        (
            format!(
                "jwtRules: [{{issuer: a, outputClaimToHeaders: [{{header: x-a, claim: a}}, {{header: X-A, claim: b}}], {ok}}}]"
            ),
            "jwtRules[0].outputClaimToHeaders[1].header",
        ),
        (
            format!(
                "jwtRules: [{{issuer: a, outputClaimToHeaders: [{{header: x-a, claim: 'a..b'}}], {ok}}}]"
            ),
            "jwtRules[0].outputClaimToHeaders[0].claim",
        ),
        (
            "targetRefs: [{kind: HTTPRoute, group: gateway.networking.k8s.io, name: r}]".into(),
            "targetRefs[0].kind",
        ),
        (
            "targetRefs: [{kind: Gateway, name: wp}]".into(),
            "targetRefs[0].group",
        ),
        (
            "targetRefs: [{kind: Service, name: web, namespace: other}]".into(),
            "targetRefs[0].namespace",
        ),
        (
            "targetRefs: [{kind: Service, name: ''}]".into(),
            "targetRefs[0].name",
        ),
        (
            "targetRef: {kind: Service, name: a}\ntargetRefs: [{kind: Service, name: b}]".into(),
            "targetRef",
        ),
        (
            "selector: {matchLabels: {a: b}}\ntargetRefs: [{kind: Service, name: b}]".into(),
            "selector",
        ),
    ] {
        assert_eq!(field_of(&yaml), field, "{yaml}");
    }
}

#[test]
fn too_many_rules_are_refused() {
    let rules: Vec<String> = (0..=MAX_RULES)
        .map(|i| format!("{{issuer: i{i}, jwksUri: 'https://k/j'}}"))
        .collect();
    assert_eq!(
        field_of(&format!("jwtRules: [{}]", rules.join(", "))),
        "jwtRules"
    );
}

#[test]
fn key_sets_keep_usable_keys_and_bound_their_size() {
    let oct = serde_json::json!({"kty": "oct", "k": "c2VjcmV0", "kid": "s"});
    let unknown = serde_json::json!({"kty": "XYZ", "kid": "u"});
    let set = KeySet::parse(&jwks(&[oct.clone(), ec_jwk("k1"), unknown])).unwrap();
    assert_eq!(
        set.len(),
        1,
        "the shared secret and the unknown kty are skipped"
    );
    let e = KeySet::parse(&jwks(&[oct])).unwrap_err();
    assert!(e.contains("shared secret"), "{e}");
    assert!(KeySet::parse(r#"{"keys": []}"#).is_err());
    assert!(KeySet::parse("[]").is_err());
    let big = format!(r#"{{"keys": [], "pad": "{}"}}"#, "x".repeat(MAX_JWKS_BYTES));
    assert!(KeySet::parse(&big).unwrap_err().contains("over the limit"));
    let many: Vec<_> = (0..=MAX_JWKS_KEYS)
        .map(|i| serde_json::json!({"kty": "XYZ", "kid": i.to_string()}))
        .collect();
    assert!(
        KeySet::parse(&jwks(&many))
            .unwrap_err()
            .contains("over the limit")
    );
}

#[test]
fn candidates_fit_the_token_s_kid_and_algorithm() {
    let mut with_alg = ec_jwk("k2");
    with_alg["alg"] = "ES256".into();
    let set = KeySet::parse(&jwks(&[ec_jwk("k1"), with_alg])).unwrap();
    assert_eq!(set.candidates(Some("k1"), Algorithm::ES256).count(), 1);
    assert_eq!(set.candidates(None, Algorithm::ES256).count(), 2);
    assert_eq!(set.candidates(Some("k3"), Algorithm::ES256).count(), 0);
    // An RSA token cannot be checked with EC keys.
    assert_eq!(set.candidates(None, Algorithm::RS256).count(), 0);
    // ES384 is the EC family, but k2 says ES256 only.
    assert_eq!(set.candidates(None, Algorithm::ES384).count(), 1);
    // A key without a kid is tried for a token that names one (Envoy's
    // way); keys naming another kid are not.
    let mut anonymous = ec_jwk("unused");
    anonymous.as_object_mut().unwrap().remove("kid");
    let set = KeySet::parse(&jwks(&[anonymous, ec_jwk("k1")])).unwrap();
    assert_eq!(set.candidates(Some("k9"), Algorithm::ES256).count(), 1);
    assert_eq!(set.candidates(Some("k1"), Algorithm::ES256).count(), 2);
}

#[test]
fn a_key_whose_alg_does_not_fit_its_kty_is_skipped() {
    let mut rsa_alg = ec_jwk("k1");
    rsa_alg["alg"] = "RS256".into();
    let e = KeySet::parse(&jwks(&[rsa_alg.clone()])).unwrap_err();
    assert!(e.contains("keys[0]") && e.contains("does not fit"), "{e}");
    let set = KeySet::parse(&jwks(&[rsa_alg, ec_jwk("k2")])).unwrap();
    assert_eq!(set.len(), 1);
}
