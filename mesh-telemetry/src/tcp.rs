//! Istio's TCP metrics, with Istio's names and labels, so dashboards and
//! alerts written for Istio read mesh's agents unchanged.
use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family},
    registry::Registry,
};

use super::labels::WorkloadLabels;

/// One side of a connection as the labels describe it.
#[derive(Debug, Clone)]
pub struct Peer {
    pub labels: WorkloadLabels,
    /// SPIFFE URI, or "unknown" without mTLS.
    pub principal: String,
}

/// Everything a connection's series are labelled with.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct TcpLabels {
    pub reporter: &'static str,
    pub source_workload: String,
    pub source_workload_namespace: String,
    pub source_principal: String,
    pub source_app: String,
    pub source_version: String,
    pub source_canonical_service: String,
    pub source_canonical_revision: String,
    pub destination_workload: String,
    pub destination_workload_namespace: String,
    pub destination_principal: String,
    pub destination_app: String,
    pub destination_version: String,
    pub destination_canonical_service: String,
    pub destination_canonical_revision: String,
    pub destination_service: String,
    pub destination_service_name: String,
    pub destination_service_namespace: String,
    pub request_protocol: &'static str,
    pub response_flags: &'static str,
    pub connection_security_policy: &'static str,
}

impl TcpLabels {
    /// `service` is `<namespace>/<name>` when the connection was to a
    /// Service's address.
    pub fn new(
        reporter: &'static str,
        source: &Peer,
        destination: &Peer,
        service: Option<&str>,
        response_flags: &'static str,
        security: &'static str,
    ) -> Self {
        let (service_namespace, service_name) = service
            .and_then(|s| s.split_once('/'))
            .unwrap_or((super::labels::UNKNOWN, super::labels::UNKNOWN));
        let s = &source.labels;
        let d = &destination.labels;
        Self {
            reporter,
            source_workload: s.workload.clone(),
            source_workload_namespace: s.namespace.clone(),
            source_principal: source.principal.clone(),
            source_app: s.app.clone(),
            source_version: s.version.clone(),
            source_canonical_service: s.app.clone(),
            source_canonical_revision: s.version.clone(),
            destination_workload: d.workload.clone(),
            destination_workload_namespace: d.namespace.clone(),
            destination_principal: destination.principal.clone(),
            destination_app: d.app.clone(),
            destination_version: d.version.clone(),
            destination_canonical_service: d.app.clone(),
            destination_canonical_revision: d.version.clone(),
            // Istio's destination_service is the Service's host name.
            destination_service: if service.is_some() {
                format!("{service_name}.{service_namespace}.svc.cluster.local")
            } else {
                super::labels::UNKNOWN.into()
            },
            destination_service_name: service_name.to_owned(),
            destination_service_namespace: service_namespace.to_owned(),
            request_protocol: "tcp",
            response_flags,
            connection_security_policy: security,
        }
    }
}

#[derive(Debug, Default, Clone)]
pub struct TcpMetrics {
    opened: Family<TcpLabels, Counter>,
    closed: Family<TcpLabels, Counter>,
    sent: Family<TcpLabels, Counter>,
    received: Family<TcpLabels, Counter>,
}

impl TcpMetrics {
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "istio_tcp_connections_opened",
            "TCP connections opened",
            self.opened.clone(),
        );
        registry.register(
            "istio_tcp_connections_closed",
            "TCP connections closed",
            self.closed.clone(),
        );
        registry.register(
            "istio_tcp_sent_bytes",
            "Bytes sent by the destination to the source (the response direction)",
            self.sent.clone(),
        );
        registry.register(
            "istio_tcp_received_bytes",
            "Bytes received by the destination from the source (the request direction)",
            self.received.clone(),
        );
    }

    pub fn opened(&self, labels: &TcpLabels) {
        self.opened.get_or_create(labels).inc();
    }

    /// `request` bytes went source → destination, `response` the other way.
    pub fn closed(&self, labels: &TcpLabels, request: u64, response: u64) {
        self.closed.get_or_create(labels).inc();
        self.received.get_or_create(labels).inc_by(request);
        self.sent.get_or_create(labels).inc_by(response);
    }
}
