//! A Service port's DestinationRule as requests meet it: which rule and
//! policy apply (from the view of the moment), and the state the rule
//! acts on, kept per Service port across views — the connection pool's
//! counters, the outlier detector, the round-robin cursor. A rule that
//! changes applies to the next request; state of a Service port whose rule
//! is gone is let go once nothing holds it.
use std::{
    collections::HashMap,
    net::{IpAddr, SocketAddr},
    sync::{Arc, Mutex, atomic::AtomicUsize},
    time::{Duration, Instant},
};

use mesh_discovery::{
    destination_rule::{DestinationRule, HashKey, LoadBalancer, TrafficPolicy},
    view::MeshView,
};
use tracing::{debug, warn};

use crate::{
    balancer::{self, Choice, InFlight},
    connection_pool::{self, Counters, Held, Limit, RetryHeld},
    outlier::{self, Detector},
    telemetry::Telemetry,
};

/// How often state of Service ports with no rule is looked for.
const SWEEP_EVERY: Duration = Duration::from_secs(10);

/// What one Service port's rule acts on.
#[derive(Debug, Default)]
pub struct ServiceState {
    pub pool: Arc<Counters>,
    outlier: Mutex<Detector>,
    round_robin: AtomicUsize,
}

/// Every Service port's state, by (`<namespace>/<name>`, port).
#[derive(Debug)]
pub struct Destinations {
    services: Mutex<HashMap<(String, u16), Arc<ServiceState>>>,
    last_sweep: Mutex<Instant>,
}

impl Default for Destinations {
    fn default() -> Self {
        Self {
            services: Mutex::default(),
            last_sweep: Mutex::new(Instant::now()),
        }
    }
}

/// A request's Service port under its DestinationRule.
#[derive(Debug, Clone)]
pub struct Applied {
    /// `<namespace>/<name>`: the metrics' `service` label.
    pub service: String,
    pub port: u16,
    pub rule: Arc<DestinationRule>,
    pub state: Arc<ServiceState>,
}

impl Destinations {
    /// The rule for port `port` of Service `namespace`/`name`, if one
    /// applies, with the port's state.
    pub fn applied(
        &self,
        view: &MeshView,
        namespace: &str,
        name: &str,
        port: u16,
    ) -> Option<Applied> {
        let service = format!("{namespace}/{name}");
        self.sweep(view);
        let rule = view.destination_rule(&service)?.clone();
        let state = self
            .services
            .lock()
            .unwrap()
            .entry((service.clone(), port))
            .or_default()
            .clone();
        Some(Applied {
            service,
            port,
            rule,
            state,
        })
    }

    /// Lets go of the state of Service ports without a rule that nothing
    /// holds, at most every `SWEEP_EVERY`.
    fn sweep(&self, view: &MeshView) {
        {
            let mut last = self.last_sweep.lock().unwrap();
            if last.elapsed() < SWEEP_EVERY {
                return;
            }
            *last = Instant::now();
        }
        self.services.lock().unwrap().retain(|(service, _), state| {
            view.destination_rule(service).is_some()
                || Arc::strong_count(state) > 1
                || Arc::strong_count(&state.pool) > 1
        });
    }

    /// Service ports with state now (for the admin dump and tests).
    pub fn tracked(&self) -> usize {
        self.services.lock().unwrap().len()
    }
}

/// What a consistent hash is computed on, from a request.
pub struct RequestKey<'a> {
    pub headers: &'a http::HeaderMap,
    pub query: Option<&'a str>,
    /// The client's address as the waypoint sees it.
    pub source: IpAddr,
}

/// The bytes `key` names in a request; `None` when the request does not
/// carry them (then the choice is random, as Envoy's with no hash).
pub fn hash_input(key: &HashKey, request: &RequestKey<'_>) -> Option<Vec<u8>> {
    match key {
        HashKey::Header(name) => {
            let values: Vec<&[u8]> = request
                .headers
                .get_all(name.as_str())
                .iter()
                .map(|v| v.as_bytes())
                .collect();
            (!values.is_empty()).then(|| values.join(&b',')[..].to_vec())
        }
        HashKey::Cookie { name, .. } => request
            .headers
            .get_all(http::header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(';'))
            .filter_map(|pair| pair.trim().split_once('='))
            .find(|(n, _)| *n == name.as_str())
            .map(|(_, v)| v.as_bytes().to_vec()),
        HashKey::SourceIp => Some(request.source.to_canonical().to_string().into_bytes()),
        HashKey::QueryParameter(name) => mesh_route::uri::query_pairs(request.query)
            .into_iter()
            .find(|(n, _)| *n == name.as_str())
            .map(|(_, v)| v.as_bytes().to_vec()),
    }
}

impl Applied {
    pub fn policy(&self) -> &TrafficPolicy {
        self.rule.for_port(self.port)
    }

    /// How the connections to the Service's endpoints are kept.
    pub fn connection_settings(&self) -> crate::upstream::ConnectionSettings {
        let pool = &self.policy().connection_pool;
        crate::upstream::ConnectionSettings {
            connect_timeout: pool.connect_timeout,
            max_requests_per_connection: pool.max_requests_per_connection,
            idle_timeout: pool.idle_timeout,
        }
    }

    /// The request's hash for a consistent-hash balancer, if the policy
    /// hashes and the request carries the key.
    pub fn hash(&self, request: &RequestKey<'_>) -> Option<u64> {
        match &self.policy().load_balancer {
            LoadBalancer::ConsistentHash(key) => {
                hash_input(key, request).map(|k| balancer::hash_key(&k))
            }
            _ => None,
        }
    }

    /// Admits the request under the pool limits (see `connection_pool`);
    /// over one, the limit is counted and logged.
    pub async fn admit(
        &self,
        telemetry: &Telemetry,
        needs_connection: bool,
        wait: Duration,
    ) -> Result<Held, Limit> {
        let pool = &self.policy().connection_pool;
        let admitted = connection_pool::admit(&self.state.pool, pool, needs_connection, wait).await;
        if let Err(limit) = admitted {
            debug!(service = %self.service, port = self.port, rule = %self.rule.key, limit = limit.label(), "over the DestinationRule's connection pool limit (503 UO)");
            telemetry.upstream_overflow(&self.service, limit.label());
        }
        admitted
    }

    /// A retry's place under `maxRetries`; `None` (counted) when over it.
    pub fn retry(&self, telemetry: &Telemetry) -> Option<RetryHeld> {
        let held = connection_pool::retry(&self.state.pool, &self.policy().connection_pool);
        if held.is_none() {
            debug!(service = %self.service, port = self.port, rule = %self.rule.key, "retries in flight at the DestinationRule's maxRetries: not retried (URX)");
            telemetry.upstream_overflow(&self.service, Limit::Retries.label());
        }
        held
    }

    /// The endpoints requests may go to now: `endpoints` without ejected
    /// ones (all of them below `minHealthPercent`).
    pub fn usable(&self, endpoints: &[SocketAddr], now: Instant) -> Vec<SocketAddr> {
        match &self.policy().outlier_detection {
            Some(config) => {
                self.state
                    .outlier
                    .lock()
                    .unwrap()
                    .usable(config, endpoints, now)
                    .endpoints
            }
            None => endpoints.to_vec(),
        }
    }

    /// Chooses among `usable` (less `tried`) as the policy says.
    pub fn choose(
        &self,
        balancer: &balancer::Balancer,
        usable: &[SocketAddr],
        tried: &[SocketAddr],
        hash: Option<u64>,
    ) -> Option<InFlight> {
        let how = match (&self.policy().load_balancer, hash) {
            (LoadBalancer::LeastRequest, _) => Choice::LeastRequest,
            (LoadBalancer::RoundRobin, _) => Choice::RoundRobin(&self.state.round_robin),
            (LoadBalancer::Random, _) | (LoadBalancer::ConsistentHash(_), None) => Choice::Random,
            (LoadBalancer::ConsistentHash(_), Some(h)) => Choice::Hash(h),
        };
        balancer.choose_by(usable, tried, how)
    }

    /// Counts what an attempt to `addr` met for outlier detection;
    /// `endpoints` are the Service port's endpoints now.
    pub fn observe(
        &self,
        telemetry: &Telemetry,
        endpoints: &[SocketAddr],
        addr: SocketAddr,
        outcome: outlier::Outcome,
        now: Instant,
    ) {
        let Some(config) = &self.policy().outlier_detection else {
            return;
        };
        let ejection = self
            .state
            .outlier
            .lock()
            .unwrap()
            .observe(config, endpoints, addr, outcome, now);
        if let Some(e) = ejection {
            warn!(
                service = %self.service,
                port = self.port,
                endpoint = %addr,
                rule = %self.rule.key,
                times = e.times,
                ejected_ms = e.until.saturating_duration_since(now).as_millis() as u64,
                "endpoint ejected by outlier detection"
            );
            telemetry.endpoint_ejected(&self.service, addr);
        }
    }

    /// Endpoints ejected now.
    pub fn ejected(&self, now: Instant) -> Vec<SocketAddr> {
        self.state.outlier.lock().unwrap().ejected(now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> http::HeaderMap {
        let mut h = http::HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        h
    }

    #[test]
    fn hash_keys_come_from_the_header_cookie_query_or_source() {
        let h = headers(&[("x-user", "ann"), ("cookie", "a=1; session=s42; b=2")]);
        let req = RequestKey {
            headers: &h,
            query: Some("q=1&user=bob"),
            source: "10.0.0.7".parse().unwrap(),
        };
        let input = |k: HashKey| hash_input(&k, &req);
        assert_eq!(input(HashKey::Header("x-user".into())).unwrap(), b"ann");
        assert_eq!(input(HashKey::Header("x-none".into())), None);
        let cookie = |name: &str| HashKey::Cookie {
            name: name.into(),
            ttl: None,
        };
        assert_eq!(input(cookie("session")).unwrap(), b"s42");
        assert_eq!(input(cookie("missing")), None);
        assert_eq!(
            input(HashKey::QueryParameter("user".into())).unwrap(),
            b"bob"
        );
        assert_eq!(input(HashKey::SourceIp).unwrap(), b"10.0.0.7");
    }
}
