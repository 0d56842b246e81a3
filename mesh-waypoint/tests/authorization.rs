//! L7 AuthorizationPolicy at the waypoint, in one process over loopback
//! (see `in_process.rs` for the bed): ALLOW and DENY on method, path,
//! header and source principal; dry-run and AUDIT; a policy that does not
//! compile; a Service's policy against the Gateway's; and CUSTOM through a
//! test external authorizer (Envoy's Authorization service, served by
//! tonic on a pod of the bed and reached as a mesh Service over HBONE):
//! allow, deny, and a timeout with failOpen false and true. Addresses are
//! 127.0.<n>.x with n from 150 to 159.
mod support;
#[path = "support/ext_authz.rs"]
mod test_authorizer;

use std::{net::SocketAddr, time::Duration};

use bytes::Bytes;
use http::{HeaderMap, Request, StatusCode};
use http_body_util::Empty;
use mesh_telemetry::request::Party;
use mesh_waypoint::{
    authz::check_stream, ext_authz::providers::Providers, handler::StreamContext, target,
};
use support::{Bed, Http1, Svid, exchange, http_backend, tcp_backend, within};
use test_authorizer::Verdict;

fn policy(name: &str, target: &str, body: &str) -> String {
    annotated(name, target, "{}", body)
}

fn annotated(name: &str, target: &str, annotations: &str, body: &str) -> String {
    format!(
        "\n---\napiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {{name: {name}, namespace: shop, annotations: {annotations}}}\nspec:\n  targetRefs: [{target}]\n{body}"
    )
}

const WEB: &str = "{kind: Service, group: \"\", name: web}";
const WEB_V2: &str = "{kind: Service, group: \"\", name: web-v2}";
const GATEWAY: &str = "{kind: Gateway, group: gateway.networking.k8s.io, name: wp}";

async fn bed(n: u8) -> Bed {
    let bed = Bed::start(n).await;
    http_backend(bed.pod(1, 8080), "web-1", false).await;
    http_backend(bed.pod(2, 8080), "web-2", false).await;
    bed
}

struct Answer {
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
}

async fn send(c: &mut Http1, method: &str, path: &str, headers: &[(&str, &str)]) -> Answer {
    let mut request = Request::builder()
        .method(method)
        .uri(path)
        .header("host", "web.shop.svc:80");
    for (k, v) in headers {
        request = request.header(*k, *v);
    }
    let (response, body) = exchange(c, request.body(Empty::new()).unwrap()).await;
    Answer {
        status: response.status(),
        headers: response.headers().clone(),
        body,
    }
}

async fn status(c: &mut Http1, method: &str, path: &str, headers: &[(&str, &str)]) -> u16 {
    send(c, method, path, headers).await.status.as_u16()
}

fn denied_total(bed: &Bed, labels: &[&str]) -> Option<f64> {
    bed.metric("mesh_waypoint_authorization_denied_requests_total", labels)
}

#[tokio::test]
async fn allow_and_deny_on_method_path_and_header() {
    let bed = bed(150).await;
    let svid = bed.ca.svid("shop", "client");
    let mut c = bed.http1_as(&svid, bed.vip(80)).await;
    assert_eq!(
        status(&mut c, "POST", "/private", &[]).await,
        200,
        "no policy yet"
    );
    bed.reconfigure(&format!(
        "{}{}",
        policy(
            "public-reads",
            WEB,
            "  action: ALLOW\n  rules:\n  - to: [{operation: {methods: [GET, HEAD], paths: [\"/public/*\"]}}]\n"
        ),
        policy(
            "blocked",
            WEB,
            "  action: DENY\n  rules:\n  - when: [{key: \"request.headers[x-block]\", values: [\"yes\"]}]\n"
        ),
    ));
    assert_eq!(status(&mut c, "GET", "/public/a?x=1", &[]).await, 200);
    let denied = send(&mut c, "POST", "/public/a", &[]).await;
    assert_eq!(denied.status, StatusCode::FORBIDDEN);
    assert_eq!(denied.body, "RBAC: access denied");
    assert_eq!(status(&mut c, "GET", "/private", &[]).await, 403);
    assert_eq!(
        status(&mut c, "GET", "/public/../private", &[]).await,
        403,
        "dot segments do not walk around a rule"
    );
    assert_eq!(
        status(&mut c, "GET", "/public/a", &[("x-block", "yes")]).await,
        403,
        "a DENY wins over an ALLOW"
    );
    assert_eq!(
        status(&mut c, "GET", "/public/a", &[("x-block", "no")]).await,
        200
    );
    let lines = bed.wait_access(4, |l| l["status"] == 403).await;
    assert!(
        lines.iter().all(|l| l["response_flags"] == "RBAC"),
        "{lines:#?}"
    );
    assert_eq!(
        denied_total(
            &bed,
            &["policy=\"-\"", "action=\"ALLOW\"", "dry_run=\"false\""]
        ),
        Some(3.0)
    );
    assert_eq!(
        denied_total(&bed, &["policy=\"shop/blocked\"", "action=\"DENY\""]),
        Some(1.0)
    );
    assert_eq!(
        bed.metric(
            "istio_requests_total",
            &["response_code=\"403\"", "response_flags=\"RBAC\""]
        ),
        Some(4.0)
    );
    // A gRPC client (web's grpc-api port) is answered as Envoy answers
    // one: 200, trailers-only, PERMISSION_DENIED.
    let mut h2 = bed.http2_as(&svid, bed.vip(81)).await;
    let call = support::grpc_post("http://web.shop.svc:81/shop.Cart/Add")
        .body(Empty::<Bytes>::new())
        .unwrap();
    let r = within("a gRPC answer", h2.send_request(call))
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.headers()["grpc-status"], "7", "{:?}", r.headers());
    assert_eq!(r.headers()["grpc-message"], "RBAC: access denied");
    let line = bed
        .wait_access(1, |l| l["protocol"] == "grpc")
        .await
        .remove(0);
    assert_eq!(line["response_flags"], "RBAC", "{line}");
}

#[tokio::test]
async fn allow_and_deny_on_the_source_principal() {
    let bed = bed(151).await;
    let client_svid = bed.ca.svid("shop", "client");
    let batch_svid = bed.ca.svid("shop", "batch");
    let ops_svid = bed.ca.svid("ops", "admin");
    let mut a = bed.http1_as(&client_svid, bed.vip(80)).await;
    let mut b = bed.http1_as(&batch_svid, bed.vip(80)).await;
    let mut o = bed.http1_as(&ops_svid, bed.vip(80)).await;
    bed.reconfigure(&format!(
        "{}{}",
        policy(
            "from-shop",
            WEB,
            "  rules:\n  - from: [{source: {namespaces: [shop]}}]\n"
        ),
        policy(
            "no-batch",
            WEB,
            "  action: DENY\n  rules:\n  - from: [{source: {principals: [cluster.local/ns/shop/sa/batch]}}]\n"
        ),
    ));
    assert_eq!(status(&mut a, "GET", "/", &[]).await, 200);
    assert_eq!(
        status(&mut b, "GET", "/", &[]).await,
        403,
        "denied by principal"
    );
    assert_eq!(status(&mut o, "GET", "/", &[]).await, 403, "not allowed");
    assert_eq!(
        denied_total(&bed, &["policy=\"shop/no-batch\"", "action=\"DENY\""]),
        Some(1.0)
    );
    // A TCP stream the waypoint relays (web's tcp-echo port) meets the L4
    // part of the same policies.
    let view = bed.waypoint.view();
    let tcp = |svid: &Svid| stream(&bed, svid, SocketAddr::from(([10, 96, 151, 1], 82)));
    assert_eq!(
        check_stream(&bed.waypoint, &view, &tcp(&client_svid)).await,
        Ok(())
    );
    let denied = check_stream(&bed.waypoint, &view, &tcp(&batch_svid))
        .await
        .unwrap_err();
    assert_eq!(
        (denied.policy.as_str(), denied.action),
        ("shop/no-batch", "DENY")
    );
    let denied = check_stream(&bed.waypoint, &view, &tcp(&ops_svid))
        .await
        .unwrap_err();
    assert_eq!((denied.policy.as_str(), denied.action), ("-", "ALLOW"));
    // And through the waypoint itself: the allowed client's stream is
    // echoed, the denied ones are reset before any endpoint is dialled.
    tcp_backend(bed.pod(1, 8082)).await;
    tcp_backend(bed.pod(2, 8082)).await;
    let dialled = bed.pods.seen.lock().unwrap().len();
    assert_eq!(
        tcp_echo(&bed, &client_svid).await.as_deref(),
        Some(&b"ping"[..])
    );
    assert_eq!(bed.pods.seen.lock().unwrap().len(), dialled + 1);
    assert_eq!(
        tcp_echo(&bed, &batch_svid).await,
        None,
        "denied by principal"
    );
    assert_eq!(tcp_echo(&bed, &ops_svid).await, None, "not allowed");
    assert_eq!(
        bed.pods.seen.lock().unwrap().len(),
        dialled + 1,
        "a denied stream reached an endpoint"
    );
    // Both refused clients are in the access log, flagged.
    for principal in [
        "spiffe://cluster.local/ns/shop/sa/batch",
        "spiffe://cluster.local/ns/ops/sa/admin",
    ] {
        bed.wait_access(1, |l| {
            l["response_flags"] == "RBAC"
                && l["protocol"] == "tcp"
                && l["source_principal"] == principal
        })
        .await;
    }
}

/// Writes `ping` on a TCP stream from `svid`'s client to web's tcp-echo
/// port through the waypoint; what came back before the stream ended, or
/// `None` when it was reset.
async fn tcp_echo(bed: &Bed, svid: &Svid) -> Option<Vec<u8>> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let tunnel = bed
        .tunnel_as(svid, bed.pod(5, 40001), bed.vip(82))
        .await
        .ok()?;
    let mut io = mesh_hbone::io::H2Io::new(tunnel);
    io.write_all(b"ping").await.ok()?;
    io.shutdown().await.ok()?;
    let mut back = Vec::new();
    within("the stream's end", io.read_to_end(&mut back))
        .await
        .ok()?;
    Some(back)
}

/// What the waypoint knows of a stream from `svid`'s client to `dst`.
fn stream(bed: &Bed, svid: &Svid, dst: SocketAddr) -> StreamContext {
    let view = bed.waypoint.view();
    StreamContext {
        dst,
        target: target::resolve(&view, dst, &bed.waypoint.gateway, &bed.waypoint.own).unwrap(),
        peer: bed.pod(5, 40001),
        source: Party {
            principal: Some(svid.identity.to_string()),
            ..Default::default()
        },
        client_namespace: svid.identity.namespace().to_owned(),
        carries: bed.pod(5, 40001),
    }
}

#[tokio::test]
async fn dry_run_is_counted_and_not_enforced() {
    let bed = bed(152).await;
    let svid = bed.ca.svid("shop", "client");
    let mut c = bed.http1_as(&svid, bed.vip(80)).await;
    bed.reconfigure(&annotated(
        "deny-all",
        WEB,
        "{istio.io/dry-run: \"true\"}",
        "  action: DENY\n  rules: [{}]\n",
    ));
    assert_eq!(status(&mut c, "GET", "/", &[]).await, 200);
    assert_eq!(status(&mut c, "POST", "/x", &[]).await, 200);
    assert_eq!(
        denied_total(
            &bed,
            &[
                "policy=\"shop/deny-all\"",
                "action=\"DENY\"",
                "dry_run=\"true\""
            ]
        ),
        Some(2.0)
    );
    assert_eq!(denied_total(&bed, &["dry_run=\"false\""]), None);
}

#[tokio::test]
async fn audit_only_reports() {
    let bed = bed(153).await;
    let svid = bed.ca.svid("shop", "client");
    let mut c = bed.http1_as(&svid, bed.vip(80)).await;
    bed.reconfigure(&policy("audit", WEB, "  action: AUDIT\n  rules: [{}]\n"));
    // An AUDIT policy is no ALLOW policy: requests are not denied for
    // matching none.
    assert_eq!(status(&mut c, "DELETE", "/anything", &[]).await, 200);
    assert_eq!(denied_total(&bed, &[]), None);
}

#[tokio::test]
async fn a_policy_that_does_not_compile_denies_in_its_scope() {
    let bed = bed(154).await;
    http_backend(bed.pod(3, 8080), "web-3", false).await;
    let svid = bed.ca.svid("shop", "client");
    let mut web = bed.http1_as(&svid, bed.vip(80)).await;
    let mut v2 = bed
        .http1_as(&svid, SocketAddr::from(([10, 96, 154, 3], 80)))
        .await;
    bed.reconfigure_lenient(&policy(
        "broken",
        WEB,
        "  action: ALLOW\n  rules:\n  - when: [{key: request.nope, values: [x]}]\n",
    ));
    let denied = send(&mut web, "GET", "/", &[]).await;
    assert_eq!(denied.status, StatusCode::FORBIDDEN);
    assert_eq!(denied.body, "RBAC: access denied");
    assert_eq!(
        denied_total(&bed, &["policy=\"shop/broken\"", "action=\"DENY\""]),
        Some(1.0),
        "the stand-in denies, named as the policy"
    );
    assert_eq!(
        status(&mut v2, "GET", "/", &[]).await,
        200,
        "outside its targets nothing changes"
    );
}

#[tokio::test]
async fn a_service_policy_covers_its_service_and_a_gateway_policy_everything() {
    let bed = bed(155).await;
    http_backend(bed.pod(3, 8080), "web-3", false).await;
    let svid = bed.ca.svid("shop", "client");
    let mut web = bed.http1_as(&svid, bed.vip(80)).await;
    let mut v2 = bed
        .http1_as(&svid, SocketAddr::from(([10, 96, 155, 3], 80)))
        .await;
    bed.reconfigure(&policy(
        "v2-only-get",
        WEB_V2,
        "  action: DENY\n  rules: [{to: [{operation: {notMethods: [GET]}}]}]\n",
    ));
    assert_eq!(status(&mut web, "POST", "/", &[]).await, 200);
    assert_eq!(status(&mut v2, "POST", "/", &[]).await, 403);
    assert_eq!(status(&mut v2, "GET", "/", &[]).await, 200);
    bed.reconfigure(&policy(
        "gw-only-get",
        GATEWAY,
        "  action: DENY\n  rules: [{to: [{operation: {notMethods: [GET]}}]}]\n",
    ));
    assert_eq!(status(&mut web, "POST", "/", &[]).await, 403);
    assert_eq!(status(&mut v2, "POST", "/", &[]).await, 403);
    assert_eq!(status(&mut web, "GET", "/", &[]).await, 200);
    // Another Gateway's policy is not this waypoint's; a selector policy
    // is the node agents'.
    bed.reconfigure(&format!(
        "{}\n---\napiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {{name: sel, namespace: shop}}\nspec:\n  selector: {{matchLabels: {{app: web}}}}\n  action: DENY\n  rules: [{{}}]\n",
        policy(
            "other-gw",
            "{kind: Gateway, group: gateway.networking.k8s.io, name: other}",
            "  action: DENY\n  rules: [{}]\n"
        )
    ));
    assert_eq!(status(&mut web, "POST", "/", &[]).await, 200);
    assert_eq!(status(&mut v2, "POST", "/", &[]).await, 200);
}

/// The authorizer's Service (on pod web-3's address) and a CUSTOM policy
/// for Service web naming provider `ext`.
fn custom(n: u8) -> String {
    format!(
        "\n---\napiVersion: v1\nkind: Service\nmetadata: {{name: authz, namespace: shop}}\nspec:\n  clusterIP: 10.96.{n}.9\n  selector: {{app: web-v2}}\n  ports:\n  - {{name: grpc, port: 9000, targetPort: 9191}}{}",
        policy(
            "ext-check",
            WEB,
            "  action: CUSTOM\n  provider: {name: ext}\n  rules: [{to: [{operation: {paths: [\"/api/*\"]}}]}]\n"
        )
    )
}

fn providers(extra: &str) -> Providers {
    Providers::parse(
        &format!(
            "extensionProviders:\n- name: ext\n  envoyExtAuthzGrpc:\n    service: authz.shop.svc.cluster.local\n    port: 9000\n{extra}"
        ),
        "shop",
    )
    .unwrap()
}

#[tokio::test]
async fn an_external_authorizer_allows_and_its_headers_reach_the_backend() {
    let bed = bed(156).await;
    let authorizer = test_authorizer::start(bed.pod(3, 9191)).await;
    authorizer.answer(Verdict::Allow(vec![("x-test-authz", "alice")]));
    bed.waypoint.ext_authz.set_providers(providers(""));
    bed.reconfigure(&custom(156));
    let svid = bed.ca.svid("shop", "client");
    let mut c = bed.http1_as(&svid, bed.vip(80)).await;
    let ok = send(&mut c, "GET", "/api/items?q=1", &[("x-user", "u1")]).await;
    assert_eq!(ok.status, StatusCode::OK);
    assert_eq!(ok.headers["x-seen-authz"], "alice", "{:?}", ok.headers);
    let seen = authorizer.seen();
    assert_eq!(seen.len(), 1);
    let a = seen[0].attributes.clone().unwrap();
    assert_eq!(
        a.source.unwrap().principal,
        "spiffe://cluster.local/ns/shop/sa/client"
    );
    let http = a.request.unwrap().http.unwrap();
    assert_eq!(
        (http.method.as_str(), http.path.as_str()),
        ("GET", "/api/items?q=1")
    );
    assert_eq!(http.headers["x-user"], "u1");
    // Outside the policy's rules the authorizer is not asked.
    assert_eq!(status(&mut c, "GET", "/other", &[]).await, 200);
    assert_eq!(authorizer.seen().len(), 1);
}

#[tokio::test]
async fn an_external_authorizer_denies_with_its_status_headers_and_body() {
    let bed = bed(157).await;
    let authorizer = test_authorizer::start(bed.pod(3, 9191)).await;
    authorizer.answer(Verdict::Deny {
        status: 401,
        headers: vec![("www-authenticate", "Bearer realm=\"shop\"")],
        body: "sign in first",
    });
    bed.waypoint.ext_authz.set_providers(providers(""));
    bed.reconfigure(&custom(157));
    let svid = bed.ca.svid("shop", "client");
    let mut c = bed.http1_as(&svid, bed.vip(80)).await;
    let denied = send(&mut c, "GET", "/api/x", &[]).await;
    assert_eq!(denied.status, StatusCode::UNAUTHORIZED);
    assert_eq!(denied.headers["www-authenticate"], "Bearer realm=\"shop\"");
    assert_eq!(denied.body, "sign in first");
    let line = bed.wait_access(1, |l| l["status"] == 401).await.remove(0);
    assert_eq!(line["response_flags"], "UAEX", "{line}");
    assert_eq!(
        denied_total(&bed, &["policy=\"shop/ext-check\"", "action=\"CUSTOM\""]),
        Some(1.0)
    );
    // A CUSTOM rule on a port asks about TCP streams too, with the
    // connection's attributes only; one with HTTP fields does not.
    bed.reconfigure(&format!(
        "{}{}",
        custom(157),
        policy(
            "ext-tcp",
            WEB,
            "  action: CUSTOM\n  provider: {name: ext}\n  rules: [{to: [{operation: {ports: [\"82\"]}}]}]\n"
        )
    ));
    let view = bed.waypoint.view();
    let asked = authorizer.seen().len();
    let denied = check_stream(
        &bed.waypoint,
        &view,
        &stream(&bed, &svid, SocketAddr::from(([10, 96, 157, 1], 82))),
    )
    .await
    .unwrap_err();
    assert_eq!(
        (denied.policy.as_str(), denied.action),
        ("shop/ext-tcp", "CUSTOM")
    );
    let seen = authorizer.seen();
    assert_eq!(seen.len(), asked + 1, "asked once, by ext-tcp only");
    let a = seen.last().unwrap().attributes.clone().unwrap();
    assert!(a.request.is_none(), "no HTTP attributes for a TCP stream");
    assert_eq!(
        a.source.unwrap().principal,
        "spiffe://cluster.local/ns/shop/sa/client"
    );
}

#[tokio::test]
async fn an_authorizer_that_does_not_answer_in_time_denies_unless_fail_open() {
    let bed = bed(158).await;
    let authorizer = test_authorizer::start(bed.pod(3, 9191)).await;
    authorizer.answer(Verdict::Slow(Duration::from_secs(5)));
    bed.waypoint
        .ext_authz
        .set_providers(providers("    timeout: 0.3s\n"));
    bed.reconfigure(&custom(158));
    let svid = bed.ca.svid("shop", "client");
    let mut c = bed.http1_as(&svid, bed.vip(80)).await;
    let started = std::time::Instant::now();
    let denied = send(&mut c, "GET", "/api/x", &[]).await;
    assert_eq!(
        denied.status,
        StatusCode::FORBIDDEN,
        "statusOnError's default"
    );
    assert!(started.elapsed() < Duration::from_secs(3));
    // statusOnError is the provider's.
    bed.waypoint
        .ext_authz
        .set_providers(providers("    timeout: 0.3s\n    statusOnError: \"503\"\n"));
    assert_eq!(status(&mut c, "GET", "/api/x", &[]).await, 503);
}

#[tokio::test]
async fn an_authorizer_that_does_not_answer_in_time_allows_with_fail_open() {
    let bed = bed(159).await;
    let authorizer = test_authorizer::start(bed.pod(3, 9191)).await;
    authorizer.answer(Verdict::Slow(Duration::from_secs(5)));
    bed.waypoint
        .ext_authz
        .set_providers(providers("    timeout: 0.3s\n    failOpen: true\n"));
    bed.reconfigure(&custom(159));
    let svid = bed.ca.svid("shop", "client");
    let mut c = bed.http1_as(&svid, bed.vip(80)).await;
    assert_eq!(status(&mut c, "GET", "/api/x", &[]).await, 200);
    // An authorizer nobody can reach is an error too.
    bed.waypoint.ext_authz.set_providers(
        Providers::parse(
            "extensionProviders:\n- name: ext\n  envoyExtAuthzGrpc: {service: nowhere.shop.svc.cluster.local, port: 9000, failOpen: false}\n",
            "shop",
        )
        .unwrap(),
    );
    assert_eq!(status(&mut c, "GET", "/api/x", &[]).await, 403);
}
