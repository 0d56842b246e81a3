//! The series a finished request is counted in, found with one lookup.
//!
//! Istio's four HTTP families share one label set of 27 labels. Building
//! that set (some twenty strings) and hashing it once per family was a
//! visible share of a waypoint's CPU per request. Here a request's facts
//! are read borrowed from its record, hashed once, and looked up among the
//! label sets seen before; only a set not seen before builds its labels
//! and registers its series in the families.
use std::{
    collections::HashMap,
    hash::{BuildHasher, RandomState},
    sync::RwLock,
};

use prometheus_client::metrics::{counter::Counter, histogram::Histogram};

use crate::{
    labels::WorkloadLabels,
    request::{Protocol, Reporter, RequestRecord, ResponseFlags, ServiceName},
};

/// Every fact of a record that a label of the HTTP families is made from,
/// borrowed: two records with equal keys get equal labels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct SeriesKey<'a> {
    reporter: Reporter,
    source: Option<&'a WorkloadLabels>,
    source_principal: Option<&'a str>,
    source_cluster: Option<&'a str>,
    destination: Option<&'a WorkloadLabels>,
    destination_principal: Option<&'a str>,
    destination_cluster: Option<&'a str>,
    service: Option<&'a ServiceName>,
    protocol: Protocol,
    response_code: u16,
    grpc_status: Option<u8>,
    response_flags: ResponseFlags,
    security: &'static str,
    route: Option<&'a str>,
    route_rule: Option<&'a str>,
}

impl<'a> SeriesKey<'a> {
    pub(crate) fn of(rec: &'a RequestRecord) -> Self {
        Self {
            reporter: rec.reporter,
            source: rec.source.workload.as_ref(),
            source_principal: rec.source.principal.as_deref(),
            source_cluster: rec.source.cluster.as_deref(),
            destination: rec.destination.workload.as_ref(),
            destination_principal: rec.destination.principal.as_deref(),
            destination_cluster: rec.destination.cluster.as_deref(),
            service: rec.service.as_ref(),
            protocol: rec.protocol,
            response_code: rec.response_code.map_or(0, |c| c.as_u16()),
            grpc_status: rec.grpc_status.map(|g| g.code()),
            response_flags: rec.response_flags,
            security: rec.security.policy_label(),
            route: rec.route.as_deref(),
            route_rule: rec.route_rule.as_deref(),
        }
    }
}

/// A key's facts, owned, kept beside its series.
#[derive(Debug)]
struct OwnedKey {
    reporter: Reporter,
    source: Option<WorkloadLabels>,
    source_principal: Option<String>,
    source_cluster: Option<String>,
    destination: Option<WorkloadLabels>,
    destination_principal: Option<String>,
    destination_cluster: Option<String>,
    service: Option<ServiceName>,
    protocol: Protocol,
    response_code: u16,
    grpc_status: Option<u8>,
    response_flags: ResponseFlags,
    security: &'static str,
    route: Option<String>,
    route_rule: Option<String>,
}

impl OwnedKey {
    fn of(k: &SeriesKey<'_>) -> Self {
        Self {
            reporter: k.reporter,
            source: k.source.cloned(),
            source_principal: k.source_principal.map(str::to_owned),
            source_cluster: k.source_cluster.map(str::to_owned),
            destination: k.destination.cloned(),
            destination_principal: k.destination_principal.map(str::to_owned),
            destination_cluster: k.destination_cluster.map(str::to_owned),
            service: k.service.cloned(),
            protocol: k.protocol,
            response_code: k.response_code,
            grpc_status: k.grpc_status,
            response_flags: k.response_flags,
            security: k.security,
            route: k.route.map(str::to_owned),
            route_rule: k.route_rule.map(str::to_owned),
        }
    }

    fn key(&self) -> SeriesKey<'_> {
        SeriesKey {
            reporter: self.reporter,
            source: self.source.as_ref(),
            source_principal: self.source_principal.as_deref(),
            source_cluster: self.source_cluster.as_deref(),
            destination: self.destination.as_ref(),
            destination_principal: self.destination_principal.as_deref(),
            destination_cluster: self.destination_cluster.as_deref(),
            service: self.service.as_ref(),
            protocol: self.protocol,
            response_code: self.response_code,
            grpc_status: self.grpc_status,
            response_flags: self.response_flags,
            security: self.security,
            route: self.route.as_deref(),
            route_rule: self.route_rule.as_deref(),
        }
    }
}

/// One label set's series in each family. Counters and histograms share
/// their state with the families' own, so updating these is what the
/// exposition shows.
#[derive(Debug, Clone)]
pub(crate) struct Series {
    pub requests: Counter,
    pub duration: Histogram,
    pub request_bytes: Histogram,
    pub response_bytes: Histogram,
}

/// The label sets seen so far, by the hash of their key. It holds exactly
/// the sets the families hold (series are never removed from them), so it
/// is bounded as they are.
#[derive(Debug, Default)]
pub(crate) struct SeriesCache {
    hasher: RandomState,
    by_hash: RwLock<HashMap<u64, Vec<(OwnedKey, Series)>>>,
}

impl SeriesCache {
    /// The series of `key`, made by `make` the first time the key is seen.
    pub(crate) fn get(&self, key: &SeriesKey<'_>, make: impl FnOnce() -> Series) -> Series {
        let hash = self.hasher.hash_one(key);
        let find = |map: &HashMap<u64, Vec<(OwnedKey, Series)>>| {
            map.get(&hash)?
                .iter()
                .find(|(owned, _)| owned.key() == *key)
                .map(|(_, s)| s.clone())
        };
        if let Some(s) = find(&self.by_hash.read().unwrap_or_else(|p| p.into_inner())) {
            return s;
        }
        let mut map = self.by_hash.write().unwrap_or_else(|p| p.into_inner());
        if let Some(s) = find(&map) {
            return s;
        }
        let series = make();
        map.entry(hash)
            .or_default()
            .push((OwnedKey::of(key), series.clone()));
        series
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.by_hash
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .map(Vec::len)
            .sum()
    }
}
