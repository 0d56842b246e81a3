//! RequestAuthentication at the waypoint, in one process over loopback
//! (see `in_process.rs` for the bed): a verified token reaches the backend
//! as the claim and payload headers its rule asks for, without the token
//! unless forwarded; a bad one is answered 401 with Envoy's text and never
//! forwarded; no token passes. Keys inline, or fetched over HTTPS from a
//! test server whose CA the waypoint is given: rotated keys are taken at
//! the next refresh, the last good keys outlive the server, and before a
//! first fetch tokens are refused; a server outside the trusted CAs, a
//! document over the size limit and a server that never answers give no
//! keys. An AuthorizationPolicy reads what the verified token says, in
//! its principal and claims and in the headers it is output to.
//! Addresses are 127.0.<n>.x with n from 140 to 149.
#[path = "support/jwt_fixtures.rs"]
mod jwt_fixtures;
mod support;

use std::{sync::atomic::Ordering, time::Duration};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Empty;
use jwt_fixtures::{JwksServer, Signer, echo_backend, jwks, now};
use serde_json::{Value, json};
use support::{Bed, Http1, Options, exchange, within};

const ISSUER: &str = "https://issuer.example";

fn claims() -> Value {
    json!({
        "iss": ISSUER, "sub": "alice", "aud": "web", "exp": now() + 600,
        "group": "dev", "admin": true, "org": {"team": "pay"}, "roles": ["a"],
    })
}

/// A RequestAuthentication attached to `target` with one rule of `fields`.
fn policy(target: &str, fields: &str) -> String {
    format!(
        r#"
---
apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {{name: jwt, namespace: shop}}
spec:
  targetRefs: [{target}]
  jwtRules:
  - issuer: {ISSUER}
{fields}"#
    )
}

const WEB: &str = "{kind: Service, name: web}";
const GATEWAY: &str = "{group: gateway.networking.k8s.io, kind: Gateway, name: wp}";

fn inline(signers: &[&Signer]) -> String {
    format!("    jwks: '{}'\n", jwks(signers))
}

async fn bed_with(n: u8, options: Options) -> Bed {
    let bed = Bed::start_with(n, options).await;
    for i in 1..=3 {
        echo_backend(bed.pod(i, 8080)).await;
    }
    bed
}

/// A GET of `path` with `headers`; the response and its body.
async fn get(sender: &mut Http1, path: &str, headers: &[(&str, &str)]) -> (Response<()>, String) {
    let mut request = Request::get(path).header("host", "web.shop.svc:80");
    for (k, v) in headers {
        request = request.header(*k, *v);
    }
    let (response, body) = exchange(sender, request.body(Empty::new()).unwrap()).await;
    (response, String::from_utf8_lossy(&body).into_owned())
}

/// A GET of `/` carrying `token` as a bearer token.
async fn get_with_token(c: &mut Http1, token: &str) -> (Response<()>, String) {
    get(c, "/", &[("authorization", &bearer(token))]).await
}

fn echoed<'a>(r: &'a Response<()>, header: &str) -> Option<&'a str> {
    r.headers()
        .get(format!("x-echo-{header}"))
        .map(|v| v.to_str().unwrap())
}

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

#[tokio::test]
async fn a_valid_token_reaches_the_backend_as_its_claims_and_payload_without_the_token() {
    let bed = bed_with(140, Options::default()).await;
    let key = Signer::new("k1");
    bed.reconfigure(&policy(
        WEB,
        &format!(
            "{}    outputPayloadToHeader: x-jwt-payload\n    outputClaimToHeaders:\n    - {{header: x-group, claim: group}}\n    - {{header: x-admin, claim: admin}}\n    - {{header: x-team, claim: org.team}}\n    - {{header: x-roles, claim: roles}}\n",
            inline(&[&key])
        ),
    ));
    let mut c = bed.http1(bed.vip(80)).await;
    let token = key.token(&claims());
    let (r, _) = get(
        &mut c,
        "/",
        &[("authorization", &bearer(&token)), ("x-roles", "forged")],
    )
    .await;
    assert_eq!(r.status(), StatusCode::OK, "{r:?}");
    assert_eq!(
        echoed(&r, "authorization"),
        None,
        "the token is not forwarded"
    );
    assert_eq!(
        echoed(&r, "x-jwt-payload"),
        token.split('.').nth(1),
        "the payload, base64url"
    );
    assert_eq!(echoed(&r, "x-group"), Some("dev"));
    assert_eq!(echoed(&r, "x-admin"), Some("true"));
    assert_eq!(echoed(&r, "x-team"), Some("pay"));
    assert_eq!(
        echoed(&r, "x-roles"),
        None,
        "a list claim gives no header, and the client's own is removed"
    );

    // forwardOriginalToken keeps it.
    bed.reconfigure(&policy(
        WEB,
        &format!("{}    forwardOriginalToken: true\n", inline(&[&key])),
    ));
    let (r, _) = get_with_token(&mut c, &token).await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(echoed(&r, "authorization"), Some(bearer(&token).as_str()));

    // A token in a header of the rule's choosing.
    bed.reconfigure(&policy(
        WEB,
        &format!(
            "{}    fromHeaders: [{{name: x-token, prefix: 'Tok '}}]\n    outputClaimToHeaders: [{{header: x-sub, claim: sub}}]\n",
            inline(&[&key])
        ),
    ));
    let (r, _) = get(&mut c, "/", &[("x-token", &format!("Tok {token}"))]).await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(echoed(&r, "x-sub"), Some("alice"));
    assert_eq!(echoed(&r, "x-token"), None);
}

#[tokio::test]
async fn bad_tokens_get_401_and_are_not_forwarded_while_no_token_passes() {
    let bed = Bed::start_with(141, Options::default()).await;
    let hits = echo_backend(bed.pod(1, 8080)).await;
    let hits2 = echo_backend(bed.pod(2, 8080)).await;
    let key = Signer::new("k1");
    bed.reconfigure(&policy(
        WEB,
        &format!("{}    audiences: [web]\n", inline(&[&key])),
    ));
    let mut c = bed.http1(bed.vip(80)).await;
    let (r, _) = get(&mut c, "/", &[]).await;
    assert_eq!(
        r.status(),
        StatusCode::OK,
        "no token: authorization decides"
    );
    let forger = Signer::new("k1");
    let mut expired = claims();
    expired["exp"] = json!(now() - 120);
    let mut elsewhere = claims();
    elsewhere["aud"] = json!(["billing"]);
    let mut stranger = claims();
    stranger["iss"] = json!("https://stranger.example");
    let huge = format!("{}.{}.x", "a".repeat(10), "b".repeat(9000));
    for (token, text) in [
        (forger.token(&claims()), "Jwt verification fails"),
        (key.token(&expired), "Jwt is expired"),
        (key.token(&elsewhere), "Audiences in Jwt are not allowed"),
        (key.token(&stranger), "Jwt issuer is not configured"),
        (
            "not-a-jwt".to_owned(),
            "Jwt is not in the form of Header.Payload.Signature with two dots and 3 sections",
        ),
        (huge, "Jwt verification fails"),
    ] {
        let (r, body) = get_with_token(&mut c, &token).await;
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED, "{text}");
        assert_eq!(body, text);
        assert_eq!(
            r.headers().get("www-authenticate").unwrap(),
            "Bearer realm=\"http://web.shop.svc:80/\", error=\"invalid_token\""
        );
    }
    assert_eq!(
        hits.load(Ordering::SeqCst) + hits2.load(Ordering::SeqCst),
        1,
        "only the request without a token reached a backend"
    );
    let lines = bed.wait_access(6, |l| l["status"] == 401).await;
    assert_eq!(lines.len(), 6);
    // A good token still passes.
    let (r, _) = get_with_token(&mut c, &key.token(&claims())).await;
    assert_eq!(r.status(), StatusCode::OK);
    // The default query parameter is read too.
    let (r, _) = get(
        &mut c,
        &format!("/?access_token={}", forger.token(&claims())),
        &[],
    )
    .await;
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    // A gRPC call (web's grpc-api port) is answered as Envoy answers one:
    // 200, trailers-only, UNAUTHENTICATED with the text.
    let mut h2 = bed.http2(bed.vip(81)).await;
    let call = support::grpc_post("http://web.shop.svc:81/shop.Cart/Add")
        .header("authorization", bearer(&key.token(&expired)))
        .body(Empty::<Bytes>::new())
        .unwrap();
    let r = within("a gRPC answer", h2.send_request(call))
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.headers()["grpc-status"], "16", "{:?}", r.headers());
    assert_eq!(r.headers()["grpc-message"], "Jwt is expired");
}

#[tokio::test]
async fn a_gateway_policy_covers_every_service_and_a_service_policy_only_its_own() {
    let bed = bed_with(142, Options::default()).await;
    let key = Signer::new("k1");
    let forged = Signer::new("k1").token(&claims());
    let mut web = bed.http1(bed.vip(80)).await;
    let mut v2 = bed
        .http1(std::net::SocketAddr::from(([10, 96, 142, 3], 80)))
        .await;
    bed.reconfigure(&policy(WEB, &inline(&[&key])));
    let auth = [("authorization", bearer(&forged))];
    let auth: Vec<(&str, &str)> = auth.iter().map(|(k, v)| (*k, v.as_str())).collect();
    assert_eq!(
        get(&mut web, "/", &auth).await.0.status(),
        StatusCode::UNAUTHORIZED
    );
    let (r, _) = get(&mut v2, "/", &auth).await;
    assert_eq!(r.status(), StatusCode::OK, "web-v2 has no policy");
    assert_eq!(
        echoed(&r, "authorization"),
        Some(bearer(&forged).as_str()),
        "no policy, no header change"
    );
    bed.reconfigure(&policy(GATEWAY, &inline(&[&key])));
    assert_eq!(
        get(&mut web, "/", &auth).await.0.status(),
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        get(&mut v2, "/", &auth).await.0.status(),
        StatusCode::UNAUTHORIZED
    );
}

/// Sends `token` to web until the answer is `want` (the fetcher works on
/// its own clock); panics after `within`.
async fn until_status(c: &mut Http1, token: &str, want: StatusCode, within: Duration) -> String {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let (r, body) = get_with_token(c, token).await;
        if r.status() == want {
            return body;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "still {} ({body}) after {within:?}, wanted {want}",
            r.status()
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// Waits until at least `count` fetches of `uri` have failed, by the
/// waypoint's counter; panics after 5 s.
async fn until_fetches_failed(bed: &Bed, uri: &str, count: f64) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let failed = bed.metric(
            "mesh_waypoint_jwks_fetch_failures_total",
            &[&format!("uri=\"{uri}\"")],
        );
        if failed.is_some_and(|f| f >= count) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{failed:?} failed fetches of {uri} counted, wanted {count}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

fn fast_jwks(server: &JwksServer) -> Options {
    Options {
        jwks: mesh_waypoint::jwks::Settings {
            refresh: Duration::from_millis(200),
            timeout: Duration::from_millis(500),
            ca_file: Some(server.ca_file.clone()),
            ..Default::default()
        },
        ..Options::default()
    }
}

#[tokio::test]
async fn remote_keys_are_fetched_rotated_and_kept_when_the_server_goes_away() {
    let old = Signer::new("old");
    let new = Signer::new("new");
    let server = JwksServer::start("rotate", jwks(&[&old])).await;
    let bed = bed_with(143, fast_jwks(&server)).await;
    bed.reconfigure(&policy(WEB, &format!("    jwksUri: {}\n", server.uri)));
    let mut c = bed.http1(bed.vip(80)).await;
    until_status(
        &mut c,
        &old.token(&claims()),
        StatusCode::OK,
        Duration::from_secs(2),
    )
    .await;
    // Not yet known: refused until the next refresh brings it.
    let (r, body) = get_with_token(&mut c, &new.token(&claims())).await;
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(body, "Jwks doesn't have key to match kid or alg from Jwt");
    server.set(jwks(&[&new]));
    until_status(
        &mut c,
        &new.token(&claims()),
        StatusCode::OK,
        Duration::from_secs(2),
    )
    .await;
    until_status(
        &mut c,
        &old.token(&claims()),
        StatusCode::UNAUTHORIZED,
        Duration::from_secs(1),
    )
    .await;
    server.stop();
    let fetches = server.hits.load(Ordering::SeqCst);
    // Two refresh intervals and more: the fetches fail, the keys stay.
    until_fetches_failed(&bed, &server.uri, 2.0).await;
    assert_eq!(
        server.hits.load(Ordering::SeqCst),
        fetches,
        "the server is gone"
    );
    let (r, _) = get_with_token(&mut c, &new.token(&claims())).await;
    assert_eq!(
        r.status(),
        StatusCode::OK,
        "the last good keys still verify"
    );
}

#[tokio::test]
async fn before_a_first_fetch_succeeds_tokens_are_refused() {
    let key = Signer::new("k1");
    let server = JwksServer::start("never", "not a jwks".to_owned()).await;
    let bed = bed_with(144, fast_jwks(&server)).await;
    bed.reconfigure(&policy(WEB, &format!("    jwksUri: {}\n", server.uri)));
    let mut c = bed.http1(bed.vip(80)).await;
    // The server answers, with something that is not a JWKS: no keys.
    until_fetches_failed(&bed, &server.uri, 1.0).await;
    let (r, body) = get_with_token(&mut c, &key.token(&claims())).await;
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(body, "Jwks remote fetch is failed");
    let (r, _) = get(&mut c, "/", &[]).await;
    assert_eq!(r.status(), StatusCode::OK, "no token still passes");
    // Once the server has the keys, the same token is accepted.
    server.set(jwks(&[&key]));
    until_status(
        &mut c,
        &key.token(&claims()),
        StatusCode::OK,
        Duration::from_secs(2),
    )
    .await;
}

#[tokio::test]
async fn a_server_outside_the_trusted_cas_gives_no_keys() {
    let key = Signer::new("k1");
    let server = JwksServer::start("untrusted", jwks(&[&key])).await;
    let other = JwksServer::start("untrusted-other", jwks(&[&key])).await;
    // Told to trust another server's CA only.
    let bed = bed_with(145, fast_jwks(&other)).await;
    bed.reconfigure(&policy(WEB, &format!("    jwksUri: {}\n", server.uri)));
    let mut c = bed.http1(bed.vip(80)).await;
    // The fetch fails at the TLS handshake.
    until_fetches_failed(&bed, &server.uri, 1.0).await;
    let (r, body) = get_with_token(&mut c, &key.token(&claims())).await;
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(body, "Jwks remote fetch is failed");
    assert_eq!(
        server.hits.load(Ordering::SeqCst),
        0,
        "never trusted, never asked"
    );
}

#[tokio::test]
async fn authorization_reads_the_verified_token() {
    let bed = bed_with(146, Options::default()).await;
    let key = Signer::new("k1");
    // A principal required: requests without a verified token are denied.
    let authz = "\n---\napiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: need-jwt, namespace: shop}\nspec:\n  targetRefs: [{kind: Service, group: \"\", name: web}]\n  rules:\n  - from: [{source: {requestPrincipals: [\"https://issuer.example/alice\"]}}]\n    when: [{key: \"request.auth.claims[group]\", values: [dev]}]\n";
    bed.reconfigure(&format!("{}{authz}", policy(WEB, &inline(&[&key]))));
    let mut c = bed.http1(bed.vip(80)).await;
    let (r, body) = get(&mut c, "/", &[]).await;
    assert_eq!(r.status(), StatusCode::FORBIDDEN, "no token, no principal");
    assert_eq!(body, "RBAC: access denied");
    let (r, _) = get_with_token(&mut c, &key.token(&claims())).await;
    assert_eq!(r.status(), StatusCode::OK, "alice of group dev");
    let mut ops = claims();
    ops["group"] = json!("ops");
    let (r, _) = get_with_token(&mut c, &key.token(&ops)).await;
    assert_eq!(
        r.status(),
        StatusCode::FORBIDDEN,
        "a claim the policy does not allow"
    );
    let mut bob = claims();
    bob["sub"] = json!("bob");
    let (r, _) = get_with_token(&mut c, &key.token(&bob)).await;
    assert_eq!(r.status(), StatusCode::FORBIDDEN, "another principal");
    // A bad token is refused by authentication before authorization.
    let forged = Signer::new("k1").token(&claims());
    let (r, body) = get_with_token(&mut c, &forged).await;
    assert_eq!(
        (r.status(), body.as_str()),
        (StatusCode::UNAUTHORIZED, "Jwt verification fails")
    );
}

#[tokio::test]
async fn a_jwks_over_the_size_limit_gives_no_keys() {
    let key = Signer::new("k1");
    let server = JwksServer::start("large", jwks(&[&key])).await;
    let mut options = fast_jwks(&server);
    // One key's document is some 200 bytes.
    options.jwks.max_bytes = 64;
    let bed = bed_with(147, options).await;
    bed.reconfigure(&policy(WEB, &format!("    jwksUri: {}\n", server.uri)));
    let mut c = bed.http1(bed.vip(80)).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
    while server.hits.load(Ordering::SeqCst) < 2 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the JWKS was not fetched"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let (r, body) = get_with_token(&mut c, &key.token(&claims())).await;
    assert_eq!(
        (r.status(), body.as_str()),
        (StatusCode::UNAUTHORIZED, "Jwks remote fetch is failed")
    );
}

#[tokio::test]
async fn a_jwks_server_that_never_answers_is_given_up_on_at_the_deadline() {
    let key = Signer::new("k1");
    // Accepts connections and says nothing (not even TLS).
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = silent.local_addr().unwrap().port();
    let held = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    {
        let held = held.clone();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = silent.accept().await {
                held.lock().unwrap().push(tcp);
            }
        });
    }
    let trusted = JwksServer::start("silent", jwks(&[&key])).await;
    let uri = format!("https://localhost:{port}/jwks");
    let bed = bed_with(148, fast_jwks(&trusted)).await;
    bed.reconfigure(&policy(WEB, &format!("    jwksUri: {uri}\n")));
    let mut c = bed.http1(bed.vip(80)).await;
    // Given up at the fetch deadline (500 ms) and counted.
    until_fetches_failed(&bed, &uri, 1.0).await;
    assert!(!held.lock().unwrap().is_empty(), "the waypoint did connect");
    let (r, _) = get_with_token(&mut c, &key.token(&claims())).await;
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn authorization_reads_output_headers_as_the_verified_token_sets_them() {
    let bed = bed_with(149, Options::default()).await;
    let key = Signer::new("k1");
    // Only requests whose x-group header says admin are allowed; the rule
    // outputs the token's group claim to x-group.
    let authz = "\n---\napiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: group-header, namespace: shop}\nspec:\n  targetRefs: [{kind: Service, group: \"\", name: web}]\n  rules:\n  - when: [{key: \"request.headers[x-group]\", values: [admin]}]\n";
    let fields = format!(
        "{}    outputClaimToHeaders: [{{header: x-group, claim: group}}]\n",
        inline(&[&key])
    );
    bed.reconfigure(&format!("{}{authz}", policy(WEB, &fields)));
    let mut c = bed.http1(bed.vip(80)).await;
    let forged = [("x-group", "admin")];
    let (r, _) = get(&mut c, "/", &forged).await;
    assert_eq!(r.status(), StatusCode::FORBIDDEN, "no token: forged header");
    let dev = bearer(&key.token(&claims()));
    let (r, _) = get(&mut c, "/", &[forged[0], ("authorization", &dev)]).await;
    assert_eq!(
        r.status(),
        StatusCode::FORBIDDEN,
        "a token of group dev: the header is the token's, not the client's"
    );
    let mut admin = claims();
    admin["group"] = json!("admin");
    let (r, _) = get_with_token(&mut c, &key.token(&admin)).await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(echoed(&r, "x-group"), Some("admin"));
}
