//! RequestMirror: a copy of a routed request sent to another Service,
//! fire and forget. Whether a request is mirrored is a roll against the
//! filter's share; the copy has the head the backend gets (the rule's
//! filters applied) with `-shadow` on its host, as Envoy and Istio mark
//! theirs, and the body kept for it (`body`). It goes to one endpoint of
//! the mirror's Service from a task of its own: its answer is read and
//! thrown away, and it never delays or fails the request it copies.
//! Copies in flight are bounded; past the bound they are not made.
use std::{net::SocketAddr, sync::Arc, time::Duration};

use http::{HeaderValue, Request, Uri, header::HOST, request::Parts};
use http_body_util::BodyExt;
use mesh_discovery::view::MeshView;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tracing::debug;

use crate::{
    body::{Kept, RequestBody},
    protocol::Protocol,
    upstream::CountedBody,
    waypoint::Waypoint,
};

/// Mirrored requests in flight at once from one waypoint. Each holds a copy of a body of up to `body::KEEP_LIMIT`.
pub const MAX_IN_FLIGHT: usize = 128;

/// Whether a request is mirrored, for a share of `numerator /
/// denominator`; `roll` is a uniform random number. The roll is scaled
/// into `0..denominator` (not taken modulo it, which would favour small
/// values for denominators that do not divide 2^32).
pub fn chosen(numerator: u32, denominator: u32, roll: u32) -> bool {
    let scaled = (u64::from(roll) * u64::from(denominator)) >> 32;
    scaled < u64::from(numerator)
}

/// `host:port` with `-shadow` on the host: `web.shop:80` becomes
/// `web.shop-shadow:80` (after the port, as Envoy once put it, servers
/// fail to parse the port).
pub fn shadow_authority(authority: &str) -> String {
    match authority.rsplit_once(':') {
        Some((host, port))
            if !port.is_empty()
                && port.bytes().all(|b| b.is_ascii_digit())
                && (!host.contains(':') || host.ends_with(']')) =>
        {
            format!("{host}-shadow:{port}")
        }
        _ => format!("{authority}-shadow"),
    }
}

/// The head a copy is sent with: `head` with `-shadow` on its Host and on
/// the authority of its URI. `None` when the result is not a valid URI or
/// header (a Host that is not text).
pub fn shadow_head(head: &Parts) -> Option<Parts> {
    let mut copy = head.clone();
    if let Some(authority) = head.uri.authority() {
        let mut uri = head.uri.clone().into_parts();
        uri.authority = Some(shadow_authority(authority.as_str()).parse().ok()?);
        copy.uri = Uri::from_parts(uri).ok()?;
    }
    if let Some(host) = head.headers.get(HOST) {
        let host = host.to_str().ok()?;
        copy.headers
            .insert(HOST, HeaderValue::from_str(&shadow_authority(host)).ok()?);
    }
    Some(copy)
}

/// A mirror a request goes to: its Service and that Service's endpoints
/// the waypoint may send to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// `<namespace>/<name>`, for logs.
    pub service: String,
    pub endpoints: Vec<SocketAddr>,
}

/// What became of one copy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The mirror answered (whatever its status).
    Answered,
    /// It could not be reached, reset, did not answer in time, or its
    /// head could not be made.
    Failed,
    /// Not sent: `MAX_IN_FLIGHT` copies were in flight.
    Overflow,
    /// Not sent: the mirror's Service cannot be used (no such Service or
    /// port, no ready endpoint).
    Unresolved,
}

impl Outcome {
    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            Outcome::Answered => "answered",
            Outcome::Failed => "failed",
            Outcome::Overflow => "overflow",
            Outcome::Unresolved => "unresolved",
        }
    }
}

/// A bound on copies in flight.
pub struct Limiter(Arc<Semaphore>);

impl Limiter {
    pub fn new(max: usize) -> Self {
        Self(Arc::new(Semaphore::new(max)))
    }

    /// A place for one more copy, if there is one.
    pub fn try_take(&self) -> Option<OwnedSemaphorePermit> {
        self.0.clone().try_acquire_owned().ok()
    }
}

/// The request copies are made of.
pub struct Source<'a> {
    /// The protocol the request is sent upstream with.
    pub protocol: Protocol,
    /// The client the request is for (the tunnels' `forwarded`).
    pub src: SocketAddr,
    /// The head as the backend gets it.
    pub head: &'a Parts,
    pub body: &'a Kept,
}

/// Sends a copy of `source` to one endpoint of `target` from a task of its
/// own, which reads the answer and drops it, within `limit` at most.
/// Counted in the waypoint's `mesh_waypoint_mirrored_requests_total`.
pub fn send(
    wp: &Arc<Waypoint>,
    view: &MeshView,
    source: &Source<'_>,
    target: &Target,
    limit: Duration,
) {
    let Some(permit) = wp.mirrors.try_take() else {
        debug!(mirror = %target.service, limit = MAX_IN_FLIGHT, "mirrored requests at their limit: copy not sent");
        wp.telemetry.mirrored(Outcome::Overflow);
        return;
    };
    let Some(place) = wp.balancer.choose(&target.endpoints, &[]) else {
        debug!(mirror = %target.service, "mirror Service has no ready endpoint: copy not sent");
        wp.telemetry.mirrored(Outcome::Unresolved);
        return;
    };
    let Some(head) = shadow_head(source.head) else {
        debug!(mirror = %target.service, "the mirrored request's -shadow authority is not valid: copy not sent");
        wp.telemetry.mirrored(Outcome::Failed);
        return;
    };
    let request = Request::from_parts(
        head,
        CountedBody::copy(RequestBody::Replayed(source.body.copy())),
    );
    let (protocol, src) = (source.protocol, source.src);
    let expected = view.expected_identity(place.addr.ip());
    let (wp, service) = (wp.clone(), target.service.clone());
    tokio::spawn(async move {
        let exchange = async {
            let response = wp
                .upstream
                .send(place.addr, expected, protocol, src, request)
                .await
                .map_err(|_| "no response")?;
            let status = response.status();
            let mut body = response.into_body();
            while let Some(frame) = body.frame().await {
                frame.map_err(|_| "response body broke")?;
            }
            Ok::<_, &str>(status)
        };
        let outcome = match tokio::time::timeout(limit, exchange).await {
            Ok(Ok(status)) => {
                debug!(mirror = %service, upstream = %place.addr, %status, "mirrored request answered");
                Outcome::Answered
            }
            Ok(Err(why)) => {
                debug!(mirror = %service, upstream = %place.addr, why, "mirrored request failed");
                Outcome::Failed
            }
            Err(_) => {
                debug!(mirror = %service, upstream = %place.addr, limit_s = limit.as_secs_f32(), "mirrored request not done in time");
                Outcome::Failed
            }
        };
        wp.telemetry.mirrored(outcome);
        drop((place, permit));
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_share_is_all_none_or_in_proportion() {
        for roll in [0, 1, u32::MAX / 2, u32::MAX] {
            assert!(chosen(1, 1, roll));
            assert!(chosen(100, 100, roll));
            assert!(!chosen(0, 100, roll));
            assert!(!chosen(0, 1, roll));
        }
        // 1/4: the lowest quarter of rolls.
        assert!(chosen(1, 4, 0));
        assert!(chosen(1, 4, (1 << 30) - 1));
        assert!(!chosen(1, 4, 1 << 30));
        assert!(!chosen(1, 4, u32::MAX));
        // Over the whole range of rolls, in proportion (3 of 7).
        let step = 1 << 12;
        let hits = (0..=u32::MAX / step)
            .filter(|i| chosen(3, 7, i * step))
            .count() as f64;
        let share = hits / f64::from(u32::MAX / step + 1);
        assert!((share - 3.0 / 7.0).abs() < 1e-3, "{share}");
        // A denominator of u32::MAX is no overflow.
        assert!(chosen(u32::MAX, u32::MAX, u32::MAX));
    }

    #[test]
    fn shadow_goes_on_the_host_before_the_port() {
        assert_eq!(shadow_authority("web.shop:80"), "web.shop-shadow:80");
        assert_eq!(shadow_authority("web.shop"), "web.shop-shadow");
        assert_eq!(shadow_authority("10.0.0.1:8080"), "10.0.0.1-shadow:8080");
        assert_eq!(shadow_authority("[fd00::1]:80"), "[fd00::1]-shadow:80");
        assert_eq!(shadow_authority("web:"), "web:-shadow");
    }

    fn head(uri: &str, host: Option<&str>) -> Parts {
        let mut b = Request::post(uri).header("x-keep", "1");
        if let Some(h) = host {
            b = b.header(HOST, h);
        }
        b.body(()).unwrap().into_parts().0
    }

    #[test]
    fn the_copys_head_is_the_requests_with_a_shadow_host() {
        // HTTP/1.1: origin-form and Host.
        let h = head("/a?b=1", Some("web.shop.svc:80"));
        let s = shadow_head(&h).unwrap();
        assert_eq!(s.headers[HOST], "web.shop.svc-shadow:80");
        assert_eq!(s.uri, "/a?b=1");
        assert_eq!(s.headers["x-keep"], "1");
        assert_eq!(s.method, http::Method::POST);
        // HTTP/2: the authority of the URI.
        let h = head("http://web.shop.svc:80/svc.Echo/Call", None);
        let s = shadow_head(&h).unwrap();
        assert_eq!(s.uri, "http://web.shop.svc-shadow:80/svc.Echo/Call");
        assert!(s.headers.get(HOST).is_none());
        // A Host that is not text cannot be given the suffix.
        let mut h = head("/", None);
        h.headers
            .insert(HOST, HeaderValue::from_bytes(b"\xffweb").unwrap());
        assert!(shadow_head(&h).is_none());
    }

    #[test]
    fn the_limiter_gives_places_up_to_its_bound_and_takes_them_back() {
        let l = Limiter::new(2);
        let a = l.try_take().unwrap();
        let _b = l.try_take().unwrap();
        assert!(l.try_take().is_none(), "over the bound: not sent");
        drop(a);
        assert!(l.try_take().is_some());
    }
}
