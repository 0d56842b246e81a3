//! What a CONNECT's authority names: a Service port (by its virtual IP) or
//! one workload (by its pod IP), as far as the view knows; else nothing the
//! waypoint serves.
use std::{net::SocketAddr, sync::Arc};

use mesh_discovery::{
    model::Workload,
    view::{MeshView, RoutePort, ServiceRoute},
};

use crate::{
    binding::{self, Gateway},
    protocol::{self, Declared},
};

/// A destination the waypoint serves.
#[derive(Debug, Clone)]
pub enum Target {
    /// A port of a Service: requests are balanced over its endpoints.
    Service {
        route: Arc<ServiceRoute>,
        port: RoutePort,
    },
    /// One pod's address (a workload waypoint's traffic): every request
    /// goes there.
    Workload {
        workload: Arc<Workload>,
        addr: SocketAddr,
    },
}

/// Why an authority is not served; each is answered 404.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Unserved {
    #[error("no Service VIP or workload address known at {0}")]
    Unknown(SocketAddr),
    #[error("Service {service} has no port {port}")]
    NoSuchPort { service: String, port: u16 },
    #[error("{what} does not use waypoint {gateway}")]
    OtherWaypoint { what: String, gateway: String },
    /// A pod outside the mesh: the waypoint would reach it in plaintext,
    /// with no identity to pin, so its own address is not a destination.
    #[error("workload {0} is not enrolled in the mesh")]
    NotEnrolled(String),
    /// Another replica of a waypoint (or this one): its admin port and
    /// HBONE listener are not destinations.
    #[error("workload {0} is a waypoint's pod")]
    WaypointPod(String),
    #[error("{0} is one of this waypoint's own addresses")]
    Own(SocketAddr),
}

/// What this waypoint itself answers at: its listeners and its pod. Never
/// a destination, whatever the view says.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct OwnAddrs {
    /// `<namespace>/<name>` of the waypoint's pod.
    pub pod: Option<(String, String)>,
    /// The listeners (HBONE, admin) as bound; an unspecified address
    /// (`0.0.0.0`) stands for every address of the pod.
    pub listens: Vec<SocketAddr>,
}

impl OwnAddrs {
    /// Whether `addr` reaches this process: loopback or unspecified, a
    /// listener's address, or any port of its own pod.
    pub fn contains(&self, view: &MeshView, addr: SocketAddr) -> bool {
        let ip = addr.ip().to_canonical();
        if ip.is_loopback() && self.listens.iter().any(|l| l.port() == addr.port()) {
            return true;
        }
        if ip.is_unspecified() {
            return true;
        }
        if self
            .listens
            .iter()
            .any(|l| l.ip().to_canonical() == ip && l.port() == addr.port())
        {
            return true;
        }
        self.pod.as_ref().is_some_and(|(ns, name)| {
            view.workload(ip)
                .is_some_and(|w| &w.namespace == ns && &w.name == name)
        })
    }
}

/// The target of a CONNECT to `dst`, by the view.
pub fn resolve(
    view: &MeshView,
    dst: SocketAddr,
    me: &Gateway,
    own: &OwnAddrs,
) -> Result<Target, Unserved> {
    if own.contains(view, dst) {
        return Err(Unserved::Own(dst));
    }
    if let Some(route) = view.service_at(dst.ip()) {
        let Some(port) = route.port(dst.port()) else {
            return Err(Unserved::NoSuchPort {
                service: route.service.key(),
                port: dst.port(),
            });
        };
        if !binding::serves_service(route, me) {
            return Err(Unserved::OtherWaypoint {
                what: format!("Service {}", route.service.key()),
                gateway: me.to_string(),
            });
        }
        return Ok(Target::Service {
            route: route.clone(),
            port: port.clone(),
        });
    }
    if let Some(workload) = view.workload(dst.ip()) {
        if !binding::serves_workload(view, workload, me) {
            return Err(Unserved::OtherWaypoint {
                what: format!("workload {}", workload.key()),
                gateway: me.to_string(),
            });
        }
        // A waypoint's pod is never enrolled; both are said apart for the
        // log. Either would be reached in plaintext (no identity to pin).
        if view.is_waypoint_pod(workload) {
            return Err(Unserved::WaypointPod(workload.key()));
        }
        if !view.is_enrolled(workload) {
            return Err(Unserved::NotEnrolled(workload.key()));
        }
        return Ok(Target::Workload {
            workload: workload.clone(),
            addr: dst,
        });
    }
    Err(Unserved::Unknown(dst))
}

/// `endpoints` without a waypoint's pod (a Service selecting it by mistake
/// or on purpose) and this waypoint's own addresses, which are never
/// endpoints. Endpoints outside the mesh stay: they are reached in
/// plaintext, as Istio's waypoint reaches them, since they have no
/// identity to pin.
pub fn usable(view: &MeshView, own: &OwnAddrs, mut endpoints: Vec<SocketAddr>) -> Vec<SocketAddr> {
    endpoints.retain(|e| {
        !own.contains(view, *e)
            && !view
                .workload(e.ip())
                .is_some_and(|w| view.is_waypoint_pod(w))
    });
    endpoints
}

impl Target {
    /// The ready endpoints as of `view`: a long-lived connection's requests
    /// follow the Service as it scales, not the endpoints at its CONNECT
    /// (see `usable` for which are left out).
    pub fn endpoints(&self, view: &MeshView, own: &OwnAddrs) -> Vec<SocketAddr> {
        let endpoints = match self {
            Target::Service { route, port } => view
                .service(&route.service.key())
                .and_then(|r| r.port(port.port))
                .map(|p| p.endpoints.clone())
                .unwrap_or_default(),
            Target::Workload { addr, .. } => vec![*addr],
        };
        usable(view, own, endpoints)
    }

    /// What the destination declares about its protocol.
    pub fn declared_protocol(&self) -> Declared {
        match self {
            Target::Service { port, .. } => {
                protocol::declared(port.app_protocol.as_deref(), &port.name)
            }
            Target::Workload { .. } => Declared::Undeclared,
        }
    }

    /// `<namespace>/<name>` of the destination Service, if it is one.
    pub fn service(&self) -> Option<String> {
        match self {
            Target::Service { route, .. } => Some(route.service.key()),
            Target::Workload { .. } => None,
        }
    }

    /// `<namespace>/<name>` of the destination workload, if it is one.
    pub fn workload(&self) -> Option<String> {
        match self {
            Target::Service { .. } => None,
            Target::Workload { workload, .. } => Some(workload.key()),
        }
    }

    /// The destination as logs name it.
    pub fn describe(&self) -> String {
        match self {
            Target::Service { route, port } => format!("{}:{}", route.service.key(), port.port),
            Target::Workload { workload, addr } => format!("{} ({addr})", workload.key()),
        }
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
metadata: {name: shop, labels: {mesh.io/dataplane-mode: enabled, istio.io/use-waypoint: waypoint}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: waypoint, namespace: shop, labels: {istio.io/waypoint-for: all}}
spec:
  gatewayClassName: mesh-waypoint
  listeners: [{name: mesh, port: 15008, protocol: HBONE}]
---
apiVersion: v1
kind: Namespace
metadata: {name: other, labels: {mesh.io/dataplane-mode: enabled}}
---
apiVersion: v1
kind: Service
metadata: {name: direct, namespace: other}
spec: {clusterIP: 10.96.0.2, ports: [{name: http, port: 80}]}
---
apiVersion: v1
kind: Pod
metadata: {name: web-1, namespace: shop, labels: {app: web}}
spec: {nodeName: n2, containers: [{name: c}]}
status: {podIPs: [{ip: 10.1.0.1}]}
---
apiVersion: v1
kind: Pod
metadata: {name: web-2, namespace: shop, labels: {app: web}}
spec: {nodeName: n2, containers: [{name: c}]}
status: {podIPs: [{ip: 10.1.0.2}]}
---
apiVersion: v1
kind: Pod
metadata: {name: waypoint-0, namespace: shop, labels: {app: web, gateway.networking.k8s.io/gateway-name: waypoint}}
spec: {nodeName: n2, serviceAccountName: waypoint, containers: [{name: c}]}
status: {podIPs: [{ip: 10.1.0.9}]}
---
apiVersion: v1
kind: Pod
metadata: {name: waypoint-1, namespace: shop, labels: {gateway.networking.k8s.io/gateway-name: waypoint}}
spec: {nodeName: n2, serviceAccountName: waypoint, containers: [{name: c}]}
status: {podIPs: [{ip: 10.1.0.8}]}
---
apiVersion: v1
kind: Namespace
metadata: {name: plain, labels: {istio.io/use-waypoint: waypoint, istio.io/use-waypoint-namespace: shop}}
---
apiVersion: v1
kind: Pod
metadata: {name: legacy, namespace: shop, labels: {mesh.io/dataplane-mode: none}}
spec: {nodeName: n2, containers: [{name: c}]}
status: {podIPs: [{ip: 10.1.0.7}]}
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: shop}
spec:
  clusterIP: 10.96.0.1
  selector: {app: web}
  ports: [{name: http-web, port: 80, targetPort: 8080}]
"#;

    fn view() -> MeshView {
        NodeConfig::parse(Path::new("f.yaml"), FILE, None)
            .unwrap()
            .view()
    }

    fn me() -> Gateway {
        "shop/waypoint".parse().unwrap()
    }

    fn resolve(view: &MeshView, dst: SocketAddr, me: &Gateway) -> Result<Target, Unserved> {
        super::resolve(view, dst, me, &own())
    }

    /// As the waypoint runs: pod waypoint-0, listeners on every address.
    fn own() -> OwnAddrs {
        OwnAddrs {
            pod: Some(("shop".into(), "waypoint-0".into())),
            listens: vec![
                "0.0.0.0:15008".parse().unwrap(),
                "0.0.0.0:15020".parse().unwrap(),
            ],
        }
    }

    #[test]
    fn the_waypoints_own_pods_are_no_destination() {
        let v = view();
        // Its own admin port (config dump, metrics), and any other port.
        for dst in ["10.1.0.9:15020", "10.1.0.9:15008", "10.1.0.9:8080"] {
            let e = resolve(&v, dst.parse().unwrap(), &me()).unwrap_err();
            assert_eq!(e, Unserved::Own(dst.parse().unwrap()), "{dst}");
        }
        // Another replica of the waypoint.
        let e = resolve(&v, "10.1.0.8:15020".parse().unwrap(), &me()).unwrap_err();
        assert_eq!(e, Unserved::WaypointPod("shop/waypoint-1".into()));
        for dst in ["127.0.0.1:15020", "0.0.0.0:15008"] {
            let e = resolve(&v, dst.parse().unwrap(), &me()).unwrap_err();
            assert_eq!(e, Unserved::Own(dst.parse().unwrap()), "{dst}");
        }
    }

    #[test]
    fn a_pod_outside_the_mesh_is_no_workload_destination() {
        let e = resolve(&view(), "10.1.0.7:80".parse().unwrap(), &me()).unwrap_err();
        assert_eq!(e, Unserved::NotEnrolled("shop/legacy".into()));
        assert_eq!(
            e.to_string(),
            "workload shop/legacy is not enrolled in the mesh"
        );
    }

    #[test]
    fn a_service_selecting_a_waypoint_pod_does_not_send_there() {
        let v = view();
        let t = resolve(&v, "10.96.0.1:80".parse().unwrap(), &me()).unwrap();
        let Target::Service { port, .. } = &t else {
            panic!("{t:?}")
        };
        // Discovery lists it: the Service selects it.
        assert!(
            port.endpoints
                .iter()
                .any(|e| e.ip().to_string() == "10.1.0.9")
        );
        let eps: Vec<String> = t
            .endpoints(&v, &own())
            .iter()
            .map(|e| e.to_string())
            .collect();
        assert!(!eps.iter().any(|e| e.starts_with("10.1.0.9")), "{eps:?}");
        assert_eq!(eps, ["10.1.0.1:8080", "10.1.0.2:8080"]);
        // Nor another replica, when this one is not named.
        let t = resolve(&v, "10.96.0.1:80".parse().unwrap(), &me()).unwrap();
        let eps = t.endpoints(&v, &OwnAddrs::default());
        assert!(
            !eps.iter().any(|e| e.ip().to_string() == "10.1.0.9"),
            "{eps:?}"
        );
    }

    #[test]
    fn a_service_vip_and_port_is_that_service_port_with_its_endpoints() {
        let v = view();
        let t = resolve(&v, "10.96.0.1:80".parse().unwrap(), &me()).unwrap();
        assert!(matches!(&t, Target::Service { port, .. } if port.port == 80));
        assert_eq!(t.service().as_deref(), Some("shop/web"));
        assert_eq!(t.workload(), None);
        assert_eq!(t.describe(), "shop/web:80");
        let eps: Vec<String> = t
            .endpoints(&v, &own())
            .iter()
            .map(|e| e.to_string())
            .collect();
        assert_eq!(eps, ["10.1.0.1:8080", "10.1.0.2:8080"]);
        assert_eq!(t.declared_protocol(), Declared::Http);
    }

    #[test]
    fn a_port_the_service_lacks_is_unserved_by_name() {
        let e = resolve(&view(), "10.96.0.1:81".parse().unwrap(), &me()).unwrap_err();
        assert_eq!(
            e,
            Unserved::NoSuchPort {
                service: "shop/web".into(),
                port: 81
            }
        );
        assert_eq!(e.to_string(), "Service shop/web has no port 81");
    }

    #[test]
    fn a_pod_address_is_that_workload_alone() {
        let v = view();
        let t = resolve(&v, "10.1.0.2:9000".parse().unwrap(), &me()).unwrap();
        assert_eq!(t.workload().as_deref(), Some("shop/web-2"));
        assert_eq!(t.endpoints(&v, &own()), ["10.1.0.2:9000".parse().unwrap()]);
        assert_eq!(t.declared_protocol(), Declared::Undeclared);
    }

    #[test]
    fn a_service_or_pod_bound_to_no_waypoint_or_another_is_unserved() {
        let e = resolve(&view(), "10.96.0.2:80".parse().unwrap(), &me()).unwrap_err();
        assert_eq!(
            e,
            Unserved::OtherWaypoint {
                what: "Service other/direct".into(),
                gateway: "shop/waypoint".into()
            }
        );
        let other: Gateway = "shop/other".parse().unwrap();
        let e = resolve(&view(), "10.96.0.1:80".parse().unwrap(), &other).unwrap_err();
        assert!(matches!(e, Unserved::OtherWaypoint { .. }), "{e}");
        let e = resolve(&view(), "10.1.0.1:8080".parse().unwrap(), &other).unwrap_err();
        assert!(matches!(e, Unserved::OtherWaypoint { .. }), "{e}");
    }

    #[test]
    fn an_unknown_address_is_unserved() {
        let e = resolve(&view(), "10.9.9.9:80".parse().unwrap(), &me()).unwrap_err();
        assert_eq!(e, Unserved::Unknown("10.9.9.9:80".parse().unwrap()));
    }

    #[test]
    fn endpoints_follow_the_current_view() {
        let t = resolve(&view(), "10.96.0.1:80".parse().unwrap(), &me()).unwrap();
        let scaled = NodeConfig::parse(
            Path::new("f.yaml"),
            &FILE.replace("ip: 10.1.0.2", "ip: 10.1.0.3"),
            None,
        )
        .unwrap()
        .view();
        let eps: Vec<String> = t
            .endpoints(&scaled, &own())
            .iter()
            .map(|e| e.to_string())
            .collect();
        assert_eq!(eps, ["10.1.0.1:8080", "10.1.0.3:8080"]);
        assert!(t.endpoints(&MeshView::default(), &own()).is_empty());
    }
}
