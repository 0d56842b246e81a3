//! Local rate limits (`HTTPLocalRateLimitPolicy`), enforced per replica:
//! each policy holds GCRA limiters (governor), one for all clients
//! (`total`), one keyed by client identity (`identity`) and one keyed
//! limiter per override. A policy's limiters live as long as the policy is
//! unchanged, across views: a view rebuilt for an unrelated change (a pod
//! moving) must not hand every client a fresh burst.
//!
//! Which policies a request meets (`applicable`) and which per-client
//! quota it counts against (`mesh_discovery::ratelimit::client_quota`) are
//! pure; `RateLimits::check` holds the state.
use std::{
    collections::HashMap,
    num::NonZeroU32,
    sync::{Arc, Mutex, Weak},
    time::Duration,
};

use governor::{
    DefaultDirectRateLimiter, DefaultKeyedRateLimiter, Quota,
    clock::{Clock, DefaultClock},
};
use mesh_discovery::{
    ratelimit::{
        ClientIdentity, ClientQuota, Limits, RateLimitPolicy, RateLimitTarget, Rates, client_quota,
    },
    view::MeshView,
};

use crate::{handler::StreamContext, target::Target, waypoint::Waypoint};

/// Past this many client identities in one keyed limiter, those whose
/// state has fully replenished are dropped: the memory a policy holds stays
/// bounded by the clients that are actually being limited.
const MAX_TRACKED_CLIENTS: usize = 4096;

/// The policies a request meets: those attached to its Service
/// (`<namespace>/<name>`, `None` for a workload's traffic) and those
/// attached to this waypoint's Gateway.
pub fn applicable<'a>(
    policies: &'a [Arc<RateLimitPolicy>],
    gateway: &'a str,
    service: Option<&'a str>,
) -> impl Iterator<Item = &'a Arc<RateLimitPolicy>> + 'a {
    policies.iter().filter(move |p| match &p.target {
        RateLimitTarget::Service(s) => Some(s.as_str()) == service,
        RateLimitTarget::Gateway(g) => g == gateway,
        RateLimitTarget::Namespace(ns) => {
            service.and_then(|s| s.split_once('/')).map(|(n, _)| n) == Some(ns.as_str())
        }
    })
}

/// A request over a policy's limit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limited {
    /// `<namespace>/<name>` of the policy.
    pub policy: String,
    /// When the same client may try again.
    pub retry_after: Duration,
}

impl Limited {
    /// `Retry-After`'s value: whole seconds, rounded up, at least 1 (a
    /// 0 would invite an immediate retry that is refused again).
    pub fn retry_after_secs(&self) -> u64 {
        let secs = self.retry_after.as_secs();
        let secs = if self.retry_after.subsec_nanos() > 0 {
            secs + 1
        } else {
            secs
        };
        secs.max(1)
    }
}

fn quota(rate: NonZeroU32) -> Quota {
    // A burst of one second's requests: `requestsPerSecond` requests may
    // arrive together, as a limit "per second" reads.
    Quota::per_second(rate)
}

/// One policy's limiters.
struct PolicyLimiter {
    policy: Arc<RateLimitPolicy>,
    /// `None` for a policy that does not validate: it refuses everything.
    rates: Option<RateLimiters>,
}

struct RateLimiters {
    total: Option<DefaultDirectRateLimiter>,
    identity: Option<DefaultKeyedRateLimiter<String>>,
    overrides: Vec<DefaultKeyedRateLimiter<String>>,
}

/// How long a client refused by a policy that does not validate is told
/// to wait: the policy may be fixed by then.
const INVALID_RETRY_AFTER: Duration = Duration::from_secs(1);

impl PolicyLimiter {
    fn new(policy: Arc<RateLimitPolicy>) -> Self {
        let rates = match &policy.limits {
            Limits::Rates(r) => Some(RateLimiters {
                total: r.total.map(|r| DefaultDirectRateLimiter::direct(quota(r))),
                identity: r.identity.map(|r| DefaultKeyedRateLimiter::keyed(quota(r))),
                overrides: r
                    .overrides
                    .iter()
                    .map(|o| DefaultKeyedRateLimiter::keyed(quota(o.requests_per_second)))
                    .collect(),
            }),
            Limits::Invalid(_) => None,
        };
        Self { policy, rates }
    }

    /// Counts one request of `principal`; the wait when it is over a limit
    /// (or the policy does not validate).
    fn check(&self, principal: Option<&str>) -> Result<(), Duration> {
        match (&self.rates, &self.policy.limits) {
            (Some(limiters), Limits::Rates(rates)) => limiters.check(rates, principal),
            _ => Err(INVALID_RETRY_AFTER),
        }
    }
}

impl RateLimiters {
    /// The client's own quota is checked first, so that a client over its
    /// quota does not use up the total others share.
    fn check(&self, rates: &Rates, principal: Option<&str>) -> Result<(), Duration> {
        let clock = DefaultClock::default();
        if let Some(principal) = principal {
            let client = ClientIdentity::from_spiffe(principal);
            let keyed = match client_quota(rates, client.as_ref()) {
                ClientQuota::Override { index, .. } => self.overrides.get(index),
                ClientQuota::Identity { .. } => self.identity.as_ref(),
                ClientQuota::None => None,
            };
            if let Some(keyed) = keyed {
                if keyed.len() > MAX_TRACKED_CLIENTS {
                    keyed.retain_recent();
                }
                keyed
                    .check_key(&principal.to_owned())
                    .map_err(|not_until| not_until.wait_time_from(clock.now()))?;
            }
        }
        if let Some(total) = &self.total {
            total
                .check()
                .map_err(|not_until| not_until.wait_time_from(clock.now()))?;
        }
        Ok(())
    }
}

#[derive(Default)]
struct State {
    /// The view the limiters were last matched against.
    view: Weak<MeshView>,
    by_key: HashMap<String, Arc<PolicyLimiter>>,
}

/// Every policy's limiters, kept in step with the views.
#[derive(Default)]
pub struct RateLimits {
    state: Mutex<State>,
}

impl RateLimits {
    /// Counts a request to `service` (`<namespace>/<name>`, `None` for a
    /// workload's traffic) from `principal` (the client's verified SPIFFE
    /// id) against every policy it meets; the first one it is over.
    pub fn check(
        &self,
        view: &Arc<MeshView>,
        gateway: &str,
        service: Option<&str>,
        principal: Option<&str>,
    ) -> Option<Limited> {
        if view.rate_limits.is_empty() {
            return None;
        }
        let limiters: Vec<Arc<PolicyLimiter>> = {
            let mut state = self.state.lock().unwrap();
            if !state.view.ptr_eq(&Arc::downgrade(view)) {
                state.by_key = rebuilt(&view.rate_limits, std::mem::take(&mut state.by_key));
                state.view = Arc::downgrade(view);
            }
            applicable(&view.rate_limits, gateway, service)
                .filter_map(|p| state.by_key.get(&p.key).cloned())
                .collect()
        };
        limiters.iter().find_map(|l| {
            l.check(principal).err().map(|retry_after| Limited {
                policy: l.policy.key.clone(),
                retry_after,
            })
        })
    }
}

/// Counts a request of the stream `ctx` at `wp` against the policies of
/// its Service and of the waypoint's Gateway.
pub fn check(wp: &Waypoint, view: &Arc<MeshView>, ctx: &StreamContext) -> Option<Limited> {
    if view.rate_limits.is_empty() {
        return None;
    }
    let service = match &ctx.target {
        Target::Service { route, .. } => Some(format!(
            "{}/{}",
            route.service.namespace, route.service.name
        )),
        Target::Workload { .. } => None,
    };
    wp.rate_limits.check(
        view,
        &wp.gateway.to_string(),
        service.as_deref(),
        ctx.source.principal.as_deref(),
    )
}

/// The limiters for `policies`: an unchanged policy keeps its limiters
/// (and so what its clients have used), a new or changed one starts afresh.
fn rebuilt(
    policies: &[Arc<RateLimitPolicy>],
    mut old: HashMap<String, Arc<PolicyLimiter>>,
) -> HashMap<String, Arc<PolicyLimiter>> {
    policies
        .iter()
        .map(|p| {
            let limiter = match old.remove(&p.key) {
                Some(l) if l.policy == *p => l,
                _ => Arc::new(PolicyLimiter::new(p.clone())),
            };
            (p.key.clone(), limiter)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use mesh_discovery::ratelimit::IdentityOverride;

    use super::*;

    fn rate(n: u32) -> NonZeroU32 {
        NonZeroU32::new(n).unwrap()
    }

    fn policy(key: &str, target: RateLimitTarget) -> RateLimitPolicy {
        RateLimitPolicy {
            key: key.into(),
            target,
            limits: Limits::Rates(Rates::default()),
        }
    }

    fn rates(p: &mut RateLimitPolicy) -> &mut Rates {
        match &mut p.limits {
            Limits::Rates(r) => r,
            Limits::Invalid(_) => unreachable!("the tests' policies are valid"),
        }
    }

    fn view(policies: Vec<RateLimitPolicy>) -> Arc<MeshView> {
        let mut store = mesh_discovery::store::Store::default();
        for p in policies {
            store.rate_limits.apply(p.key.clone(), p);
        }
        Arc::new(MeshView::build(&store, &Default::default()))
    }

    const A: &str = "spiffe://cluster.local/ns/shop/sa/a";
    const B: &str = "spiffe://cluster.local/ns/shop/sa/b";

    #[test]
    fn policies_apply_to_their_service_and_to_the_own_gateway() {
        let policies: Vec<_> = [
            policy("shop/web", RateLimitTarget::Service("shop/web".into())),
            policy("shop/api", RateLimitTarget::Service("shop/api".into())),
            policy("shop/wp", RateLimitTarget::Gateway("shop/wp".into())),
            policy("shop/other", RateLimitTarget::Gateway("shop/other".into())),
        ]
        .into_iter()
        .map(Arc::new)
        .collect();
        let keys = |service| {
            applicable(&policies, "shop/wp", service)
                .map(|p| p.key.as_str())
                .collect::<Vec<_>>()
        };
        assert_eq!(keys(Some("shop/web")), ["shop/web", "shop/wp"]);
        assert_eq!(keys(None), ["shop/wp"]);
    }

    #[test]
    fn identities_have_their_own_quota_and_overrides_a_larger_one() {
        let mut p = policy("shop/rl", RateLimitTarget::Service("shop/web".into()));
        rates(&mut p).identity = Some(rate(1));
        rates(&mut p).overrides = vec![IdentityOverride {
            requests_per_second: rate(3),
            clients: BTreeSet::from([ClientIdentity {
                namespace: "shop".into(),
                service_account: "b".into(),
            }]),
        }];
        let v = view(vec![p]);
        let limits = RateLimits::default();
        let check = |who| limits.check(&v, "shop/wp", Some("shop/web"), Some(who));
        assert_eq!(check(A), None);
        let over = check(A).expect("a's second request within the second");
        assert_eq!(over.policy, "shop/rl");
        assert!(over.retry_after <= Duration::from_secs(1));
        assert_eq!(over.retry_after_secs(), 1);
        for i in 0..3 {
            assert_eq!(check(B), None, "b's request {i} is within its override");
        }
        assert!(check(B).is_some());
        assert_eq!(
            limits.check(&v, "shop/wp", Some("shop/api"), Some(A)),
            None,
            "another Service is not limited"
        );
    }

    #[test]
    fn a_total_limit_is_shared_and_survives_an_unrelated_view_change() {
        let mut p = policy("shop/rl", RateLimitTarget::Gateway("shop/wp".into()));
        rates(&mut p).total = Some(rate(2));
        let limits = RateLimits::default();
        let v1 = view(vec![p.clone()]);
        assert_eq!(limits.check(&v1, "shop/wp", None, Some(A)), None);
        assert_eq!(limits.check(&v1, "shop/wp", None, Some(B)), None);
        assert!(limits.check(&v1, "shop/wp", None, Some(A)).is_some());
        // A new view with the same policy: the limiter's state stays.
        let v2 = view(vec![p.clone()]);
        assert!(limits.check(&v2, "shop/wp", None, Some(B)).is_some());
        // A changed policy starts afresh.
        rates(&mut p).total = Some(rate(5));
        let v3 = view(vec![p]);
        assert_eq!(limits.check(&v3, "shop/wp", None, Some(B)), None);
        // Removed: nothing is limited.
        let v4 = view(Vec::new());
        for _ in 0..10 {
            assert_eq!(limits.check(&v4, "shop/wp", None, Some(B)), None);
        }
    }

    #[test]
    fn a_policy_that_does_not_validate_refuses_its_scope_and_nothing_else() {
        let error = || mesh_discovery::ratelimit::RateLimitError {
            field: "spec.total.requestsPerSecond".into(),
            problem: "0 is not a rate".into(),
        };
        let bad = |target| RateLimitPolicy {
            key: "shop/bad".into(),
            target,
            limits: Limits::Invalid(error()),
        };
        let limits = RateLimits::default();
        let v = view(vec![bad(RateLimitTarget::Service("shop/web".into()))]);
        let over = limits
            .check(&v, "shop/wp", Some("shop/web"), Some(A))
            .expect("refused");
        assert_eq!(over.policy, "shop/bad");
        assert_eq!(over.retry_after_secs(), 1);
        assert_eq!(limits.check(&v, "shop/wp", Some("shop/api"), Some(A)), None);
        // Its target unreadable: every Service of its namespace.
        let v = view(vec![bad(RateLimitTarget::Namespace("shop".into()))]);
        assert!(
            limits
                .check(&v, "shop/wp", Some("shop/api"), None)
                .is_some()
        );
        assert_eq!(limits.check(&v, "shop/wp", Some("web/api"), None), None);
        assert_eq!(limits.check(&v, "shop/wp", None, None), None);
    }

    #[test]
    fn retry_after_rounds_up_to_whole_seconds() {
        let l = |ms| Limited {
            policy: String::new(),
            retry_after: Duration::from_millis(ms),
        };
        assert_eq!(l(0).retry_after_secs(), 1);
        assert_eq!(l(200).retry_after_secs(), 1);
        assert_eq!(l(1000).retry_after_secs(), 1);
        assert_eq!(l(1001).retry_after_secs(), 2);
    }
}
