//! The outbound decision: where a connection a pod opened goes, from the
//! view alone. A Service's virtual IP becomes its ready endpoints in the
//! balancer's order; each address tried is then a meshed pod on this node
//! (handed over in-process, after the destination's own inbound decision),
//! a meshed pod elsewhere (an HBONE tunnel that must prove the pod's
//! identity), or anything else (plaintext passthrough). The listener does
//! the I/O for whatever this says.
use std::{
    fmt,
    net::{IpAddr, SocketAddr},
    sync::Arc,
    vec,
};

use mesh_discovery::{
    model::Service,
    view::MeshView,
    waypoint::{Unusable, Waypoint, WaypointBinding},
};
use mesh_identity::Identity;

use super::{
    admit::{Admit, Arrival, Recipient, Refusal, Rules, admit},
    own_ports::{InboundPath, OwnPorts, SelfTraffic},
};

/// Endpoints tried for one Service connection before giving up.
pub const MAX_ENDPOINT_TRIES: usize = 3;

/// What the decision consults: the view, this node's enrolled pods by
/// address (`local_pod`), the mTLS machinery `M` when the agent has a CA,
/// and the agent's own ports.
pub struct Mesh<'a, F, M> {
    pub view: &'a MeshView,
    pub local_pod: F,
    pub mtls: Option<&'a M>,
    pub own_ports: &'a OwnPorts,
}

/// The connection as the pod opened it.
#[derive(Debug, Clone, Copy)]
pub struct Outbound<'a> {
    /// The identity of the pod that opened it.
    pub source: &'a Identity,
    /// The pod's address (see `pod_source`).
    pub src: SocketAddr,
    /// The original destination.
    pub dst: SocketAddr,
}

/// Where one address is reached. `P` is a pod of this node, `M` the mTLS
/// machinery: a tunnel or a hand-over exists only with a CA.
#[derive(Debug, PartialEq, Eq)]
pub enum Hop<'a, P, M> {
    /// Not in the mesh, or no CA: plaintext to the address itself.
    Passthrough,
    /// A meshed pod on another node: an HBONE tunnel whose peer must
    /// prove `expected`.
    Tunnel { mtls: &'a M, expected: Identity },
    /// A meshed pod on this node: handed over in-process, no TLS and no
    /// wire, with the inbound decision the tunnel's far end would make.
    SameNode {
        pod: P,
        expected: Identity,
        admit: Admit,
    },
    /// A meshed pod on this node, but the port is the mesh's own. Unlike
    /// the destination's other refusals this one is the address's fault,
    /// so another endpoint may still be tried.
    SelfTraffic {
        pod: P,
        expected: Identity,
        why: SelfTraffic,
    },
}

/// Why a Service's virtual IP leads nowhere.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unroutable {
    NoSuchPort,
    NoReadyEndpoints,
}

impl fmt::Display for Unroutable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Unroutable::NoSuchPort => "the Service has no such port",
            Unroutable::NoReadyEndpoints => "the Service has no ready endpoints",
        })
    }
}

pub enum Route<'a, P, F, M> {
    /// Not a Service's virtual IP: the destination itself.
    Direct(Hop<'a, P, M>),
    /// The destination (a Service, or a pod) uses a waypoint: a tunnel to
    /// one of the waypoint's pods, asking for the original destination.
    Waypoint(ViaWaypoint<'a, M>),
    /// The destination names a waypoint that cannot be used, or one that
    /// needs mTLS on an agent without a CA: refused, never sent around it.
    WaypointUnusable {
        service: Option<&'a Service>,
        gateway: String,
        why: WaypointProblem,
    },
    /// A Service's virtual IP: its endpoints, in the order to try them.
    Service {
        service: &'a Service,
        endpoints: Endpoints<'a, F, M>,
    },
    /// A Service's virtual IP with nothing behind the port.
    Unroutable {
        service: &'a Service,
        why: Unroutable,
    },
}

/// The tunnel to a waypoint: its pods to try (balanced, at most
/// `MAX_ENDPOINT_TRIES`) and what to ask them for.
pub struct ViaWaypoint<'a, M> {
    pub mtls: &'a M,
    pub waypoint: Arc<Waypoint>,
    /// The Service whose virtual IP was dialled; `None` for a workload.
    pub service: Option<&'a Service>,
    /// The original destination: the CONNECT authority.
    pub authority: SocketAddr,
    /// `(waypoint pod ip:15008, its identity)`, in the order to try.
    pub hops: Vec<(SocketAddr, Identity)>,
}

/// Why a waypoint in the path cannot be used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WaypointProblem {
    Unusable(Unusable),
    /// The Gateway is a waypoint, but none of its pods is ready.
    NoReadyPods,
    /// This agent has no CA, and a waypoint is reached over mTLS only.
    NoCa,
}

impl fmt::Display for WaypointProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Unusable(why) => why.fmt(f),
            Self::NoReadyPods => f.write_str("the waypoint has no ready pods"),
            Self::NoCa => f.write_str(
                "a waypoint is reached over mTLS and this agent has no CA (AgentConfig.ca)",
            ),
        }
    }
}

/// A Service's endpoints to try, at most `MAX_ENDPOINT_TRIES`, each with
/// its hop. Hops are worked out as they are asked for: most connections
/// use the first endpoint, and an endpoint's identity costs allocations.
pub struct Endpoints<'a, F, M> {
    mesh: Mesh<'a, F, M>,
    conn: Outbound<'a>,
    order: std::iter::Take<vec::IntoIter<SocketAddr>>,
}

impl<'a, P, F, M> Iterator for Endpoints<'a, F, M>
where
    F: Fn(IpAddr) -> Option<P>,
    P: Recipient,
{
    type Item = (SocketAddr, Hop<'a, P, M>);

    fn next(&mut self) -> Option<Self::Item> {
        let target = self.order.next()?;
        Some((target, self.mesh.hop(&self.conn, target)))
    }
}

impl<'a, P, F, M> Mesh<'a, F, M>
where
    F: Fn(IpAddr) -> Option<P>,
    P: Recipient,
{
    /// Decides `conn`. `order` is the balancer's: a Service's ready
    /// endpoints in the order to try them.
    pub fn route(
        self,
        conn: Outbound<'a>,
        order: impl FnOnce(&[SocketAddr]) -> Vec<SocketAddr>,
    ) -> Route<'a, P, F, M> {
        let mut order = Some(order);
        let Some(svc) = self.view.service_at(conn.dst.ip()) else {
            // A pod's own address: its workload waypoint, if it has one
            // (never for a waypoint's own pods, which are not meshed).
            let binding = self
                .view
                .workload(conn.dst.ip())
                .filter(|w| self.view.is_enrolled(w))
                .map(|w| self.view.waypoint_for_workload(w))
                .unwrap_or_default();
            return match self.via_waypoint(&binding, None, &conn, &mut order) {
                Some(route) => route,
                None => Route::Direct(self.hop(&conn, conn.dst)),
            };
        };
        let service = &*svc.service;
        if let Some(route) = self.via_waypoint(&svc.waypoint, Some(service), &conn, &mut order) {
            return route;
        }
        let Some(port) = svc.port(conn.dst.port()) else {
            return Route::Unroutable {
                service,
                why: Unroutable::NoSuchPort,
            };
        };
        if port.endpoints.is_empty() {
            return Route::Unroutable {
                service,
                why: Unroutable::NoReadyEndpoints,
            };
        }
        let order = match order.take() {
            Some(order) => order(&port.endpoints),
            None => port.endpoints.clone(),
        };
        let order = order.into_iter().take(MAX_ENDPOINT_TRIES);
        Route::Service {
            service,
            endpoints: Endpoints {
                mesh: self,
                conn,
                order,
            },
        }
    }

    /// The route through `binding`'s waypoint, or `None` when the
    /// destination is reached directly (then `order` was not used).
    fn via_waypoint(
        &self,
        binding: &WaypointBinding,
        service: Option<&'a Service>,
        conn: &Outbound<'_>,
        order: &mut Option<impl FnOnce(&[SocketAddr]) -> Vec<SocketAddr>>,
    ) -> Option<Route<'a, P, F, M>> {
        let unusable = |gateway: String, why| Route::WaypointUnusable {
            service,
            gateway,
            why,
        };
        let waypoint = match binding {
            WaypointBinding::Direct => return None,
            WaypointBinding::Unusable { gateway, why } => {
                return Some(unusable(gateway.clone(), WaypointProblem::Unusable(*why)));
            }
            WaypointBinding::Through(w) => w.clone(),
        };
        let Some(mtls) = self.mtls else {
            return Some(unusable(waypoint.gateway.key(), WaypointProblem::NoCa));
        };
        if waypoint.endpoints.is_empty() {
            return Some(unusable(
                waypoint.gateway.key(),
                WaypointProblem::NoReadyPods,
            ));
        }
        let addresses: Vec<SocketAddr> = waypoint.endpoints.iter().map(|e| e.address).collect();
        let ordered = match order.take() {
            Some(order) => order(&addresses),
            None => addresses,
        };
        let hops = ordered
            .into_iter()
            .filter_map(|a| {
                let e = waypoint.endpoints.iter().find(|e| e.address == a)?;
                Some((a, e.identity.clone()))
            })
            .take(MAX_ENDPOINT_TRIES)
            .collect();
        Some(Route::Waypoint(ViaWaypoint {
            mtls,
            waypoint,
            service,
            authority: conn.dst,
            hops,
        }))
    }

    /// How `target` is reached.
    fn hop(&self, conn: &Outbound<'_>, target: SocketAddr) -> Hop<'a, P, M> {
        let Some(mtls) = self.mtls else {
            return Hop::Passthrough;
        };
        let Some(expected) = self.view.expected_identity(target.ip()) else {
            return Hop::Passthrough;
        };
        let Some(pod) = (self.local_pod)(target.ip()) else {
            return Hop::Tunnel { mtls, expected };
        };
        let arrival = Arrival {
            path: InboundPath::SameNode,
            src: conn.src,
            dst: target,
            source: Some(conn.source),
        };
        let rules = Rules {
            policies: &self.view.policies,
            own_ports: self.own_ports,
            mtls: true,
            waypoint: self.view.waypoint_requirement(target.ip()).map(|r| &**r),
        };
        match admit(&arrival, &pod, &rules) {
            Admit::Refuse(Refusal::SelfTraffic(why)) => Hop::SelfTraffic { pod, expected, why },
            admit => Hop::SameNode {
                pod,
                expected,
                admit,
            },
        }
    }
}

/// The address the pod's connection comes from. The app reached
/// 127.0.0.1:15001, so its socket's address is loopback; to everyone else
/// the connection comes from the pod's address of the destination's family.
pub fn pod_source(pod_ips: &[IpAddr], src: SocketAddr, dst: SocketAddr) -> SocketAddr {
    pod_ips
        .iter()
        .find(|ip| ip.is_ipv4() == dst.is_ipv4())
        .map_or(src, |ip| SocketAddr::new(*ip, src.port()))
}

#[cfg(test)]
mod tests {
    use std::{collections::BTreeMap, path::Path};

    use mesh_discovery::NodeConfig;
    use mesh_policy::{Decision, Target, Verdict};

    use super::*;

    // Node n1 runs web-1; n2 runs web-2 and plain-1, whose namespace is
    // not in the mesh. Service web: port 80 to both web pods, port 81 with nothing
    // ready (no pod names a grpc port). No policies unless a test adds some.
    const CLUSTER: &str = r#"
kind: AgentConfig
nodeName: n1
---
apiVersion: v1
kind: Namespace
metadata: {name: shop, labels: {mesh.io/dataplane-mode: enabled}}
---
apiVersion: v1
kind: Namespace
metadata: {name: legacy}
---
apiVersion: v1
kind: Pod
metadata: {name: web-1, namespace: shop, labels: {app: web}, annotations: {mesh.io/netns: /run/netns/w1}}
spec:
  nodeName: n1
  serviceAccountName: web
  containers: [{name: c, ports: [{name: http, containerPort: 8080}]}]
status: {podIPs: [{ip: 10.1.0.1}]}
---
apiVersion: v1
kind: Pod
metadata: {name: web-2, namespace: shop, labels: {app: web}}
spec:
  nodeName: n2
  serviceAccountName: web
  containers: [{name: c, ports: [{name: http, containerPort: 8080}]}]
status: {podIPs: [{ip: 10.1.0.2}]}
---
apiVersion: v1
kind: Pod
metadata: {name: plain-1, namespace: legacy, labels: {app: plain}}
spec: {nodeName: n2, containers: [{name: c}]}
status: {podIPs: [{ip: 10.1.0.3}]}
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: shop}
spec:
  clusterIP: 10.96.0.1
  selector: {app: web}
  ports:
  - {name: http, port: 80, targetPort: http}
  - {name: idle, port: 81, targetPort: grpc}
---
apiVersion: v1
kind: Service
metadata: {name: gone, namespace: shop}
spec:
  clusterIP: 10.96.0.2
  selector: {app: nothing}
  ports: [{name: http, port: 80}]
---
apiVersion: v1
kind: Service
metadata: {name: mesh, namespace: shop}
spec:
  clusterIP: 10.96.0.3
  selector: {app: web}
  ports: [{name: hbone, port: 15008}, {name: http, port: 80, targetPort: 8080}]
"#;

    fn view() -> MeshView {
        NodeConfig::parse(Path::new("cluster.yaml"), CLUSTER, None)
            .unwrap()
            .view()
    }

    /// A pod of this node, as the local lookup returns it.
    #[derive(Debug, Clone, PartialEq, Eq)]
    struct Local {
        name: &'static str,
        ips: Vec<IpAddr>,
        labels: BTreeMap<String, String>,
    }

    impl Recipient for Local {
        fn ips(&self) -> &[IpAddr] {
            &self.ips
        }

        fn target(&self) -> Target<'_> {
            Target {
                namespace: "shop",
                labels: &self.labels,
            }
        }
    }

    fn local_pod(ip: IpAddr) -> Option<Local> {
        (ip == ip4("10.1.0.1")).then(|| Local {
            name: "web-1",
            ips: vec![ip],
            labels: [("app".to_owned(), "web".to_owned())].into(),
        })
    }

    /// Stands in for the mTLS machinery.
    #[derive(Debug, PartialEq, Eq)]
    struct Ca;

    type TestRoute<'a> = Route<'a, Local, fn(IpAddr) -> Option<Local>, Ca>;

    fn ip4(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    fn identity(sa: &str) -> Identity {
        Identity::new("cluster.local", "shop", sa).unwrap()
    }

    const CA: Ca = Ca;

    fn decide<'a>(
        view: &'a MeshView,
        own: &'a OwnPorts,
        mtls: bool,
        source: &'a Identity,
        dst: &str,
    ) -> TestRoute<'a> {
        let mesh = Mesh {
            view,
            local_pod: local_pod as fn(IpAddr) -> Option<Local>,
            mtls: mtls.then_some(&CA),
            own_ports: own,
        };
        let conn = Outbound {
            source,
            src: addr("10.1.0.9:40000"),
            dst: addr(dst),
        };
        // The balancer's order, made predictable: reversed.
        mesh.route(conn, |eps| eps.iter().rev().copied().collect())
    }

    fn direct(route: TestRoute<'_>) -> Hop<'_, Local, Ca> {
        match route {
            Route::Direct(hop) => hop,
            _ => panic!("not direct"),
        }
    }

    fn allowed() -> Admit {
        Admit::Deliver {
            to: addr("10.1.0.1:8080"),
            from: addr("127.0.0.6:0"),
            decision: Decision {
                enforced: Verdict::Allow { policy: None },
                dry_run: None,
            },
        }
    }

    #[test]
    fn addresses_outside_the_mesh_pass_through() {
        let (view, own, me) = (view(), OwnPorts::default(), identity("client"));
        // Unknown to the view, and a known pod whose namespace is not meshed.
        for dst in ["192.0.2.1:443", "10.1.0.3:8080"] {
            assert_eq!(
                direct(decide(&view, &own, true, &me, dst)),
                Hop::Passthrough,
                "{dst}"
            );
        }
    }

    #[test]
    fn a_meshed_pod_elsewhere_is_tunnelled_to_with_its_identity() {
        let (view, own, me) = (view(), OwnPorts::default(), identity("client"));
        assert_eq!(
            direct(decide(&view, &own, true, &me, "10.1.0.2:8080")),
            Hop::Tunnel {
                mtls: &CA,
                expected: identity("web")
            }
        );
    }

    #[test]
    fn a_meshed_pod_here_is_handed_over_with_the_destinations_decision() {
        let (view, own, me) = (view(), OwnPorts::default(), identity("client"));
        assert_eq!(
            direct(decide(&view, &own, true, &me, "10.1.0.1:8080")),
            Hop::SameNode {
                pod: local_pod(ip4("10.1.0.1")).unwrap(),
                expected: identity("web"),
                admit: allowed(),
            }
        );
    }

    #[test]
    fn without_a_ca_everything_is_plaintext() {
        let (view, own, me) = (view(), OwnPorts::default(), identity("client"));
        for dst in ["10.1.0.1:8080", "10.1.0.2:8080", "192.0.2.1:443"] {
            assert_eq!(
                direct(decide(&view, &own, false, &me, dst)),
                Hop::Passthrough,
                "{dst}"
            );
        }
        let Route::Service { mut endpoints, .. } = decide(&view, &own, false, &me, "10.96.0.1:80")
        else {
            panic!("not routed");
        };
        assert!(endpoints.all(|(_, hop)| hop == Hop::Passthrough));
    }

    #[test]
    fn the_mesh_ports_of_a_pod_here_are_refused_before_the_hand_over() {
        let (view, own, me) = (view(), OwnPorts::default(), identity("client"));
        assert_eq!(
            direct(decide(&view, &own, true, &me, "10.1.0.1:15006")),
            Hop::SelfTraffic {
                pod: local_pod(ip4("10.1.0.1")).unwrap(),
                expected: identity("web"),
                why: SelfTraffic::OwnPort(15006),
            }
        );
        // Elsewhere the far end's agent refuses it.
        assert!(matches!(
            direct(decide(&view, &own, true, &me, "10.1.0.2:15008")),
            Hop::Tunnel { .. }
        ));
        // Through a Service: each endpoint is judged on its own.
        let Route::Service { endpoints, .. } = decide(&view, &own, true, &me, "10.96.0.3:15008")
        else {
            panic!("not routed");
        };
        let hops: Vec<_> = endpoints.collect();
        assert_eq!(hops.len(), 2);
        assert_eq!(hops[0].0, addr("10.1.0.2:15008"));
        assert!(matches!(hops[0].1, Hop::Tunnel { .. }));
        assert_eq!(hops[1].0, addr("10.1.0.1:15008"));
        assert!(matches!(
            hops[1].1,
            Hop::SelfTraffic {
                why: SelfTraffic::OwnPort(15008),
                ..
            }
        ));
    }

    #[test]
    fn the_same_node_decision_carries_refusals_other_than_self_traffic() {
        let (mut view, own, me) = (view(), OwnPorts::default(), identity("client"));
        view.policies.sync = Default::default();
        let Hop::SameNode { admit, .. } = direct(decide(&view, &own, true, &me, "10.1.0.1:8080"))
        else {
            panic!("not handed over");
        };
        assert!(
            matches!(admit, Admit::Refuse(Refusal::PoliciesNotSynced(_))),
            "{admit:?}"
        );
    }

    #[test]
    fn a_service_address_becomes_its_endpoints_in_the_balancers_order() {
        let (view, own, me) = (view(), OwnPorts::default(), identity("client"));
        let Route::Service { service, endpoints } = decide(&view, &own, true, &me, "10.96.0.1:80")
        else {
            panic!("not routed");
        };
        assert_eq!(service.key(), "shop/web");
        let hops: Vec<_> = endpoints.collect();
        assert_eq!(
            hops,
            [
                (
                    addr("10.1.0.2:8080"),
                    Hop::Tunnel {
                        mtls: &CA,
                        expected: identity("web")
                    }
                ),
                (
                    addr("10.1.0.1:8080"),
                    Hop::SameNode {
                        pod: local_pod(ip4("10.1.0.1")).unwrap(),
                        expected: identity("web"),
                        admit: allowed(),
                    }
                ),
            ]
        );
    }

    #[test]
    fn no_more_endpoints_are_tried_than_the_limit() {
        let (view, own, me) = (view(), OwnPorts::default(), identity("client"));
        let mesh = Mesh {
            view: &view,
            local_pod: local_pod as fn(IpAddr) -> Option<Local>,
            mtls: Some(&CA),
            own_ports: &own,
        };
        let conn = Outbound {
            source: &me,
            src: addr("10.1.0.9:40000"),
            dst: addr("10.96.0.1:80"),
        };
        let many: Vec<_> = (1..=10)
            .map(|i| SocketAddr::from(([192, 0, 2, i], 80)))
            .collect();
        let Route::Service { endpoints, .. } = mesh.route(conn, |_| many.clone()) else {
            panic!("not routed");
        };
        assert_eq!(endpoints.count(), MAX_ENDPOINT_TRIES);
    }

    #[test]
    fn a_service_with_nothing_behind_the_port_is_unroutable() {
        let (view, own, me) = (view(), OwnPorts::default(), identity("client"));
        for (dst, key, reason) in [
            ("10.96.0.1:82", "shop/web", Unroutable::NoSuchPort),
            ("10.96.0.1:81", "shop/web", Unroutable::NoReadyEndpoints),
            ("10.96.0.2:80", "shop/gone", Unroutable::NoReadyEndpoints),
        ] {
            let Route::Unroutable { service, why } = decide(&view, &own, true, &me, dst) else {
                panic!("{dst}: routed");
            };
            assert_eq!((service.key().as_str(), why), (key, reason), "{dst}");
        }
        assert_eq!(
            Unroutable::NoSuchPort.to_string(),
            "the Service has no such port"
        );
        assert_eq!(
            Unroutable::NoReadyEndpoints.to_string(),
            "the Service has no ready endpoints"
        );
    }

    #[test]
    fn the_pod_source_is_its_address_of_the_destinations_family() {
        let ips = [ip4("10.1.0.1"), ip4("fd00::1")];
        let lo = addr("127.0.0.1:40000");
        assert_eq!(
            pod_source(&ips, lo, addr("10.1.0.2:80")),
            addr("10.1.0.1:40000")
        );
        assert_eq!(
            pod_source(&ips, lo, addr("[fd00::2]:80")),
            addr("[fd00::1]:40000")
        );
        assert_eq!(pod_source(&ips[..1], lo, addr("[fd00::2]:80")), lo);
    }

    /// CLUSTER plus a waypoint `wp` (one pod on n2) that Service `web`
    /// and pod web-2 use, and Service `gone` naming a waypoint that does
    /// not exist.
    fn with_waypoint() -> MeshView {
        let text = CLUSTER
            .replace(
                "metadata: {name: web, namespace: shop}",
                "metadata: {name: web, namespace: shop, labels: {istio.io/use-waypoint: wp}}",
            )
            .replace(
                "metadata: {name: gone, namespace: shop}",
                "metadata: {name: gone, namespace: shop, labels: {istio.io/use-waypoint: nowhere}}",
            )
            .replace(
                "metadata: {name: web-2, namespace: shop, labels: {app: web}}",
                "metadata: {name: web-2, namespace: shop, labels: {app: web, istio.io/use-waypoint: wp}}",
            )
            + r#"
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: wp, namespace: shop, labels: {istio.io/waypoint-for: all}}
spec: {gatewayClassName: mesh-waypoint, listeners: [{name: mesh, port: 15008, protocol: HBONE}]}
---
apiVersion: v1
kind: Pod
metadata: {name: wp-0, namespace: shop, labels: {gateway.networking.k8s.io/gateway-name: wp}}
spec: {nodeName: n2, serviceAccountName: wp, containers: [{name: c}]}
status: {podIPs: [{ip: 10.1.0.8}]}
"#;
        NodeConfig::parse(Path::new("cluster.yaml"), &text, None)
            .unwrap()
            .view()
    }

    #[test]
    fn a_service_with_a_waypoint_is_tunnelled_to_the_waypoint_asking_for_the_vip() {
        let view = with_waypoint();
        let own = OwnPorts::default();
        let me = Identity::new("cluster.local", "shop", "client").unwrap();
        let Route::Waypoint(via) = decide(&view, &own, true, &me, "10.96.0.1:80") else {
            panic!("not through the waypoint");
        };
        assert_eq!(via.authority, addr("10.96.0.1:80"));
        assert_eq!(via.service.unwrap().key(), "shop/web");
        assert_eq!(via.waypoint.gateway.key(), "shop/wp");
        assert_eq!(
            via.hops,
            [(
                addr("10.1.0.8:15008"),
                Identity::new("cluster.local", "shop", "wp").unwrap()
            )]
        );
        // A pod whose workload uses the waypoint: the same, for its address.
        let Route::Waypoint(via) = decide(&view, &own, true, &me, "10.1.0.2:8080") else {
            panic!("pod address not through the waypoint");
        };
        assert_eq!(via.authority, addr("10.1.0.2:8080"));
        assert!(via.service.is_none());
        // The waypoint's own pod is reached directly, never through itself.
        assert!(matches!(
            decide(&view, &own, true, &me, "10.1.0.8:15008"),
            Route::Direct(Hop::Passthrough)
        ));
    }

    #[test]
    fn a_waypoint_that_cannot_be_used_refuses_rather_than_bypassing_it() {
        let view = with_waypoint();
        let own = OwnPorts::default();
        let me = Identity::new("cluster.local", "shop", "client").unwrap();
        let Route::WaypointUnusable { gateway, why, .. } =
            decide(&view, &own, true, &me, "10.96.0.2:80")
        else {
            panic!("a missing waypoint was not refused");
        };
        assert_eq!(gateway, "shop/nowhere");
        assert_eq!(
            why,
            WaypointProblem::Unusable(mesh_discovery::waypoint::Unusable::NoSuchGateway)
        );
        // Without a CA the waypoint cannot be reached: refused, not plaintext.
        let Route::WaypointUnusable { why, .. } = decide(&view, &own, false, &me, "10.96.0.1:80")
        else {
            panic!("no CA, yet not refused");
        };
        assert_eq!(why, WaypointProblem::NoCa);
    }
}
