//! How the waypoint fills in `mesh_telemetry::request::RequestRecord`, the
//! one record of a request that metrics, the access log and spans are made
//! from: who the client is, which Service and endpoint the request went
//! to, how it was spoken. Pure: the view and what the CONNECT proved in,
//! values out.
use std::{net::IpAddr, sync::Arc, time::SystemTime};

use http::{HeaderMap, Method, header::CONTENT_TYPE};
use mesh_discovery::{model::Workload, view::MeshView};
use mesh_identity::Identity;
use mesh_telemetry::{
    connection::Security,
    labels::WorkloadLabels,
    request::{Party, Protocol as RequestProtocol, Reporter, RequestRecord, ServiceName},
};

use crate::{handler::StreamContext, protocol::Protocol, target::Target};

/// The route name when no route object matched: the Service itself.
pub const DEFAULT_ROUTE: &str = "default";

/// What the address a CONNECT is forwarded for says about its client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ForwardedClient {
    /// No usable `forwarded: for=` in the CONNECT.
    Absent,
    /// The view's workload there runs as the verified identity.
    Trusted(Arc<Workload>),
    /// No workload the view knows (or one that has finished) is there.
    Unknown(IpAddr),
    /// The workload there runs as someone else than the peer proved: the
    /// address is not believed.
    Mismatch {
        addr: IpAddr,
        workload: String,
        runs_as: String,
    },
}

/// The client workload named by `forwarded_for`, believed only when the
/// view's workload at that address runs as `identity` (same namespace and
/// service account): the peer writes the header, the certificate is what
/// it proved.
pub fn forwarded_client(
    view: &MeshView,
    identity: &Identity,
    forwarded_for: Option<IpAddr>,
) -> ForwardedClient {
    let Some(addr) = forwarded_for else {
        return ForwardedClient::Absent;
    };
    let Some(workload) = view.workload(addr).filter(|w| !w.finished) else {
        return ForwardedClient::Unknown(addr);
    };
    if workload.namespace == identity.namespace()
        && workload.service_account == identity.service_account()
    {
        ForwardedClient::Trusted(workload.clone())
    } else {
        ForwardedClient::Mismatch {
            addr,
            workload: workload.key(),
            runs_as: format!("{}/{}", workload.namespace, workload.service_account),
        }
    }
}

/// The client as records name it: always the verified identity, and the
/// workload only when the forwarded address was believed.
pub fn source(identity: &Identity, client: &ForwardedClient) -> Party {
    Party {
        workload: match client {
            ForwardedClient::Trusted(w) => Some(WorkloadLabels::of_workload(w)),
            _ => None,
        },
        principal: Some(identity.to_string()),
        cluster: None,
    }
}

/// The endpoint at `ip` as records name it: the view's workload there and
/// the identity the waypoint pinned for it (none for an endpoint outside
/// the mesh, reached in plaintext).
pub fn destination(view: &MeshView, ip: IpAddr) -> Party {
    Party {
        workload: view.workload(ip).map(|w| WorkloadLabels::of_workload(w)),
        principal: view.expected_identity(ip).map(|i| i.to_string()),
        cluster: None,
    }
}

/// Istio's name of a Service.
pub fn service_name(namespace: &str, name: &str) -> ServiceName {
    ServiceName {
        host: format!("{name}.{namespace}.svc.cluster.local"),
        name: name.to_owned(),
        namespace: namespace.to_owned(),
    }
}

/// Istio's name of the target's Service, if it is one.
pub fn service(target: &Target) -> Option<ServiceName> {
    match target {
        Target::Service { route, .. } => {
            Some(service_name(&route.service.namespace, &route.service.name))
        }
        Target::Workload { .. } => None,
    }
}

/// The request's protocol as records name it: gRPC is HTTP/2 with a
/// `application/grpc` content type.
pub fn request_protocol(protocol: Protocol, headers: &HeaderMap) -> RequestProtocol {
    let grpc = headers
        .get(CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"));
    match protocol {
        Protocol::Http2 if grpc => RequestProtocol::Grpc,
        Protocol::Http2 => RequestProtocol::Http2,
        _ => RequestProtocol::Http1,
    }
}

/// A record for a request on `stream`, before anything happened: no
/// response, no endpoint, no attempt. For a Workload target the
/// destination is known already.
pub fn start(
    stream: &StreamContext,
    view: &MeshView,
    protocol: RequestProtocol,
    method: Method,
    authority: String,
    path: String,
) -> RequestRecord {
    let destination = match &stream.target {
        Target::Workload { addr, .. } => destination(view, addr.ip()),
        Target::Service { .. } => Party::default(),
    };
    RequestRecord {
        reporter: Reporter::Waypoint,
        started: SystemTime::now(),
        duration: Default::default(),
        method,
        authority,
        path,
        protocol,
        response_code: None,
        grpc_status: None,
        request_bytes: 0,
        response_bytes: 0,
        downstream: Some(stream.peer),
        upstream: None,
        source: stream.source.clone(),
        destination,
        service: service(&stream.target),
        route: matches!(stream.target, Target::Service { .. }).then(|| DEFAULT_ROUTE.to_owned()),
        route_rule: None,
        attempts: 0,
        response_flags: Default::default(),
        security: Security::MutualTls,
        trace_id: None,
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use mesh_discovery::NodeConfig;

    use super::*;

    const FILE: &str = r#"
kind: AgentConfig
nodeName: n1
---
apiVersion: v1
kind: Namespace
metadata: {name: shop, labels: {mesh.io/dataplane-mode: enabled}}
---
apiVersion: v1
kind: Pod
metadata: {name: client-7d4b9c-x2kq9, namespace: shop, labels: {app: client, pod-template-hash: 7d4b9c}}
spec: {nodeName: n2, serviceAccountName: client, containers: [{name: c}]}
status: {podIPs: [{ip: 10.1.0.5}]}
---
apiVersion: v1
kind: Pod
metadata: {name: web-1, namespace: shop, labels: {app: web}}
spec: {nodeName: n2, serviceAccountName: web, containers: [{name: c}]}
status: {podIPs: [{ip: 10.1.0.1}]}
"#;

    fn view() -> MeshView {
        NodeConfig::parse(Path::new("f.yaml"), FILE, None)
            .unwrap()
            .view()
    }

    fn client() -> Identity {
        Identity::new("cluster.local", "shop", "client").unwrap()
    }

    #[test]
    fn a_forwarded_address_names_the_workload_that_runs_as_the_peer() {
        let v = view();
        let found = forwarded_client(&v, &client(), Some("10.1.0.5".parse().unwrap()));
        let ForwardedClient::Trusted(w) = &found else {
            panic!("{found:?}");
        };
        assert_eq!(w.name, "client-7d4b9c-x2kq9");
        let party = source(&client(), &found);
        let labels = party.workload.unwrap();
        assert_eq!(labels.workload, "client");
        assert_eq!(labels.namespace, "shop");
        assert_eq!(
            party.principal.as_deref(),
            Some("spiffe://cluster.local/ns/shop/sa/client")
        );
    }

    #[test]
    fn a_forwarded_address_of_someone_else_names_no_workload() {
        let v = view();
        let lie = forwarded_client(&v, &client(), Some("10.1.0.1".parse().unwrap()));
        assert_eq!(
            lie,
            ForwardedClient::Mismatch {
                addr: "10.1.0.1".parse().unwrap(),
                workload: "shop/web-1".into(),
                runs_as: "shop/web".into(),
            }
        );
        let other_ns = Identity::new("cluster.local", "other", "client").unwrap();
        assert!(matches!(
            forwarded_client(&v, &other_ns, Some("10.1.0.5".parse().unwrap())),
            ForwardedClient::Mismatch { .. }
        ));
        for client_of in [
            forwarded_client(&v, &client(), None),
            forwarded_client(&v, &client(), Some("10.9.9.9".parse().unwrap())),
            lie,
        ] {
            let party = source(&client(), &client_of);
            assert_eq!(party.workload, None, "{client_of:?}");
            // The verified identity is the principal whatever the header.
            assert_eq!(
                party.principal.as_deref(),
                Some("spiffe://cluster.local/ns/shop/sa/client")
            );
        }
    }

    #[test]
    fn a_destination_is_the_endpoints_workload_and_pinned_identity() {
        let d = destination(&view(), "10.1.0.1".parse().unwrap());
        assert_eq!(d.workload.unwrap().workload, "web-1");
        assert_eq!(
            d.principal.as_deref(),
            Some("spiffe://cluster.local/ns/shop/sa/web")
        );
        assert_eq!(
            destination(&view(), "192.0.2.1".parse().unwrap()),
            Party::default()
        );
    }

    #[test]
    fn grpc_is_http2_with_a_grpc_content_type() {
        let mut h = HeaderMap::new();
        assert_eq!(
            request_protocol(Protocol::Http2, &h),
            RequestProtocol::Http2
        );
        h.insert(CONTENT_TYPE, "application/grpc+proto".parse().unwrap());
        assert_eq!(request_protocol(Protocol::Http2, &h), RequestProtocol::Grpc);
        assert_eq!(
            request_protocol(Protocol::Http1, &h),
            RequestProtocol::Http1
        );
    }
}
