//! Local rate limits (`HTTPLocalRateLimitPolicy`) at the waypoint, in one
//! process over loopback (see `in_process.rs` for the bed): a total limit,
//! a limit per client identity, an override for a listed identity, a
//! policy on the waypoint's own Gateway, and a change taking effect without
//! a restart. Addresses are 127.0.<n>.x with n from 110.
//!
//! Each test first sends requests with no policy (the waypoint's
//! connections to the endpoints are then open), then publishes the policy:
//! the bursts that follow take milliseconds, far below the rates' intervals.
mod support;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper::{body::Incoming, client::conn::http1};
use support::{Bed, Svid, http_backend, within};

fn policy(target: &str, limits: &str) -> String {
    format!(
        r#"
---
apiVersion: mesh.io/v1alpha1
kind: HTTPLocalRateLimitPolicy
metadata: {{name: rl, namespace: shop}}
spec:
  targetRef: {target}
{limits}"#
    )
}

const WEB: &str = "{kind: Service, name: web}";
const GATEWAY: &str = "{group: gateway.networking.k8s.io, kind: Gateway, name: wp}";

async fn bed(n: u8) -> Bed {
    let bed = Bed::start(n).await;
    http_backend(bed.pod(1, 8080), "web-1", false).await;
    http_backend(bed.pod(2, 8080), "web-2", false).await;
    bed
}

/// An HTTP/1.1 client of `svid`'s identity on one tunnel to web:80.
async fn client(bed: &Bed, svid: &Svid) -> http1::SendRequest<Empty<Bytes>> {
    bed.http1_as(svid, bed.vip(80)).await
}

async fn get(sender: &mut http1::SendRequest<Empty<Bytes>>) -> Response<Incoming> {
    let request = Request::get("/")
        .header("host", "web.shop.svc:80")
        .body(Empty::new())
        .unwrap();
    within("a response", sender.send_request(request))
        .await
        .unwrap()
}

/// The statuses of `n` requests, one after the other.
async fn statuses(sender: &mut http1::SendRequest<Empty<Bytes>>, n: usize) -> Vec<u16> {
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let r = get(sender).await;
        out.push(r.status().as_u16());
        let _ = within("the body", r.into_body().collect()).await;
    }
    out
}

#[tokio::test]
async fn a_total_limit_answers_429_with_retry_after_past_n_requests() {
    let bed = bed(110).await;
    let svid = bed.ca.svid("shop", "client");
    let mut c = client(&bed, &svid).await;
    assert_eq!(statuses(&mut c, 4).await, [200; 4], "no policy yet");
    bed.reconfigure(&policy(WEB, "  total: {requestsPerSecond: 3}\n"));
    assert_eq!(statuses(&mut c, 3).await, [200; 3]);
    let r = get(&mut c).await;
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(
        r.headers().get("retry-after").map(|v| v.as_bytes()),
        Some(&b"1"[..]),
        "{:?}",
        r.headers()
    );
    let _ = within("the body", r.into_body().collect()).await;
    let line = bed.wait_access(1, |l| l["status"] == 429).await.remove(0);
    assert_eq!(line["response_flags"], "RL", "{line}");
    assert_eq!(
        bed.metric(
            "mesh_waypoint_rate_limited_requests_total",
            &["policy=\"shop/rl\""]
        ),
        Some(1.0)
    );
    assert_eq!(
        bed.metric(
            "istio_requests_total",
            &["response_code=\"429\"", "response_flags=\"RL\""]
        ),
        Some(1.0)
    );
    // Another identity shares the total.
    let other = bed.ca.svid("shop", "batch");
    let mut c2 = client(&bed, &other).await;
    assert_eq!(statuses(&mut c2, 1).await, [429]);
}

#[tokio::test]
async fn each_identity_has_its_own_quota_and_an_override_a_larger_one() {
    let bed = bed(111).await;
    let (a, b, ops) = (
        bed.ca.svid("shop", "client"),
        bed.ca.svid("shop", "batch"),
        bed.ca.svid("admin", "ops"),
    );
    let (mut ca, mut cb, mut cops) = (
        client(&bed, &a).await,
        client(&bed, &b).await,
        client(&bed, &ops).await,
    );
    for c in [&mut ca, &mut cb, &mut cops] {
        assert_eq!(statuses(c, 2).await, [200; 2], "no policy yet");
    }
    bed.reconfigure(&policy(
        WEB,
        "  identity: {requestsPerSecond: 1}\n  overrides:\n  - requestsPerSecond: 4\n    clientRefs: {serviceAccounts: [{name: ops, namespace: admin}]}\n",
    ));
    assert_eq!(statuses(&mut ca, 2).await, [200, 429], "a's quota");
    assert_eq!(
        statuses(&mut cb, 2).await,
        [200, 429],
        "b's own quota, untouched by a's"
    );
    assert_eq!(
        statuses(&mut cops, 5).await,
        [200, 200, 200, 200, 429],
        "the override's quota"
    );
    assert_eq!(
        bed.metric(
            "mesh_waypoint_rate_limited_requests_total",
            &["policy=\"shop/rl\""]
        ),
        Some(3.0)
    );
}

#[tokio::test]
async fn a_changed_policy_takes_effect_without_a_restart() {
    let bed = bed(112).await;
    let svid = bed.ca.svid("shop", "client");
    let mut c = client(&bed, &svid).await;
    assert_eq!(statuses(&mut c, 4).await, [200; 4], "no policy yet");
    bed.reconfigure(&policy(WEB, "  total: {requestsPerSecond: 1}\n"));
    assert_eq!(statuses(&mut c, 2).await, [200, 429]);
    // The same policy in a view rebuilt for another reason keeps what the
    // clients have used.
    bed.reconfigure(&format!(
        "{}\n---\napiVersion: v1\nkind: Namespace\nmetadata: {{name: other}}\n",
        policy(WEB, "  total: {requestsPerSecond: 1}\n")
    ));
    assert_eq!(statuses(&mut c, 1).await, [429]);
    // A larger limit applies at once.
    bed.reconfigure(&policy(WEB, "  total: {requestsPerSecond: 1000}\n"));
    assert_eq!(statuses(&mut c, 5).await, [200; 5]);
    // On the waypoint's own Gateway, it limits every request it serves.
    bed.reconfigure(&policy(GATEWAY, "  total: {requestsPerSecond: 1}\n"));
    assert_eq!(statuses(&mut c, 2).await, [200, 429]);
    // Removed: nothing is limited.
    bed.reconfigure("");
    assert_eq!(statuses(&mut c, 5).await, [200; 5]);
}
