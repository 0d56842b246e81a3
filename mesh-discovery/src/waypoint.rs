//! Which waypoint, if any, a destination's traffic goes through, as Istio
//! ambient decides it: the `istio.io/use-waypoint` label of a Service (for
//! its virtual IP) or a Pod (for its own address), else of its namespace;
//! `none` opts out. A waypoint is a Gateway of the mesh's waypoint class
//! with an HBONE listener, and its pods are those labelled with its name.
//! Pure: the view calls these while it is built.
use std::{net::SocketAddr, sync::Arc};

use mesh_identity::Identity;

use crate::model::{
    GATEWAY_NAME_LABEL, Gateway, Labels, REQUIRE_WAYPOINT_LABEL, USE_WAYPOINT_LABEL,
    USE_WAYPOINT_NAMESPACE_LABEL, Workload,
};

/// What one object's (or namespace's) labels ask for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UseWaypoint {
    /// No label: the namespace's decides (for an object), or none.
    Unset,
    /// `istio.io/use-waypoint: none`.
    OptOut,
    /// A Gateway, by namespace and name.
    Named { namespace: String, name: String },
}

impl UseWaypoint {
    /// Reads an object's labels; `own_namespace` is where the waypoint is
    /// unless `istio.io/use-waypoint-namespace` says otherwise.
    pub fn from_labels(labels: &Labels, own_namespace: &str) -> Self {
        match labels.get(USE_WAYPOINT_LABEL).map(String::as_str) {
            None | Some("") => Self::Unset,
            Some("none") => Self::OptOut,
            Some(name) => Self::Named {
                namespace: labels
                    .get(USE_WAYPOINT_NAMESPACE_LABEL)
                    .filter(|n| !n.is_empty())
                    .cloned()
                    .unwrap_or_else(|| own_namespace.to_owned()),
                name: name.to_owned(),
            },
        }
    }

    /// The object's own label wins over its namespace's, `none` included.
    pub fn or_namespace(self, namespace: Self) -> Self {
        match self {
            Self::Unset => namespace,
            own => own,
        }
    }

    /// What an object in `namespace` asks for: its own labels, else those
    /// of its namespace (`namespace_labels`, when the namespace is known).
    pub fn of_object(labels: &Labels, namespace: &str, namespace_labels: Option<&Labels>) -> Self {
        Self::from_labels(labels, namespace).or_namespace(
            namespace_labels
                .map(|l| Self::from_labels(l, namespace))
                .unwrap_or(Self::Unset),
        )
    }
}

/// Whether a destination must be reached through its waypoint only
/// (`mesh.io/require-waypoint`): the object's label wins over its
/// namespace's.
pub fn requires_waypoint(own: &Labels, namespace: Option<&Labels>) -> bool {
    own.get(REQUIRE_WAYPOINT_LABEL)
        .or_else(|| namespace.and_then(|l| l.get(REQUIRE_WAYPOINT_LABEL)))
        .is_some_and(|v| v == "true")
}

/// One ready pod of a waypoint: where its HBONE listener is and who it is.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct WaypointEndpoint {
    /// `pod ip:15008`.
    pub address: SocketAddr,
    #[serde(serialize_with = "as_string")]
    pub identity: Identity,
}

fn as_string<S: serde::Serializer>(id: &Identity, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(id)
}

/// A Gateway of the waypoint class and its ready pods.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Waypoint {
    pub gateway: Arc<Gateway>,
    /// Sorted by address.
    pub endpoints: Vec<WaypointEndpoint>,
}

impl Waypoint {
    /// Whether `identity` is one of the waypoint's pods.
    pub fn is_waypoint_identity(&self, identity: &Identity) -> bool {
        self.endpoints.iter().any(|e| e.identity == *identity)
    }
}

/// Why a named waypoint cannot be used. Traffic to such a destination is
/// refused, never sent around the waypoint: its L7 rules would be skipped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Unusable {
    /// No Gateway of that name.
    NoSuchGateway,
    /// A Gateway, but of another class.
    OtherClass,
    /// A Gateway of the class without the `{port: 15008, protocol: HBONE}` listener.
    NoHboneListener,
    /// The waypoint's listener does not admit the destination's namespace
    /// (`allowedRoutes.namespaces`: `Same` unless it says otherwise).
    NamespaceNotAllowed,
}

impl std::fmt::Display for Unusable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::NoSuchGateway => "no such Gateway",
            Self::OtherClass => {
                "the Gateway is not of the mesh's waypoint class (AgentConfig.waypointClass)"
            }
            Self::NoHboneListener => "the Gateway has no listener {port: 15008, protocol: HBONE}",
            Self::NamespaceNotAllowed => "the Gateway's HBONE listener does not allow this namespace (allowedRoutes.namespaces.from)",
        })
    }
}

/// Where a destination's traffic goes.
#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum WaypointBinding {
    /// Straight to the destination.
    #[default]
    Direct,
    /// Through this waypoint.
    Through(Arc<Waypoint>),
    /// A waypoint is named but cannot be used: refused.
    Unusable {
        /// `<namespace>/<name>` of the Gateway.
        gateway: String,
        why: Unusable,
    },
}

/// Which kind of destination is being bound: a waypoint serves Services,
/// workloads or both (`istio.io/waypoint-for`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DestinationKind {
    Service,
    Workload,
}

/// Where the destination is: its namespace and that namespace's labels.
#[derive(Debug, Clone, Copy)]
pub struct Origin<'a> {
    pub namespace: &'a str,
    pub labels: Option<&'a Labels>,
}

/// Binds a destination in `from` whose labels (with its namespace's) ask
/// for `wanted`, given how to look up a Gateway and a waypoint by key.
pub fn bind<'a>(
    wanted: UseWaypoint,
    kind: DestinationKind,
    from: Origin<'_>,
    class: &str,
    gateway: impl Fn(&str) -> Option<&'a Arc<Gateway>>,
    waypoint: impl Fn(&str) -> Option<&'a Arc<Waypoint>>,
) -> WaypointBinding {
    let UseWaypoint::Named { namespace, name } = wanted else {
        return WaypointBinding::Direct;
    };
    let key = format!("{namespace}/{name}");
    let Some(gw) = gateway(&key) else {
        return WaypointBinding::Unusable {
            gateway: key,
            why: Unusable::NoSuchGateway,
        };
    };
    let why = if gw.class != class {
        Unusable::OtherClass
    } else if !gw.hbone_listener {
        Unusable::NoHboneListener
    } else if !gw
        .allowed_namespaces
        .allows(&gw.namespace, from.namespace, from.labels)
    {
        Unusable::NamespaceNotAllowed
    } else {
        let serves = match kind {
            DestinationKind::Service => gw.waypoint_for.serves_services(),
            DestinationKind::Workload => gw.waypoint_for.serves_workloads(),
        };
        // As in Istio: a waypoint for the other kind is not in this path.
        if !serves {
            return WaypointBinding::Direct;
        }
        // Every Gateway of the class with the listener is a waypoint (with
        // or without ready pods); were it not found, refusing is the safe
        // answer.
        return match waypoint(&key) {
            Some(w) => WaypointBinding::Through(w.clone()),
            None => WaypointBinding::Unusable {
                gateway: key,
                why: Unusable::NoSuchGateway,
            },
        };
    };
    WaypointBinding::Unusable { gateway: key, why }
}

/// Whether `w` is one of a waypoint's pods: labelled with a waypoint's
/// name (as the waypoint's Deployment labels them) and running as the
/// waypoint's service account, which is named after its Gateway (as
/// Istio's are). The label alone is not enough: any pod may carry it, and
/// a waypoint's pods are trusted as the waypoint (and never enrolled).
/// `is_waypoint` says whether a Gateway key is a waypoint.
pub fn is_waypoint_pod(w: &Workload, is_waypoint: impl Fn(&str) -> bool) -> bool {
    w.labels.get(GATEWAY_NAME_LABEL).is_some_and(|name| {
        *name == w.service_account && is_waypoint(&format!("{}/{name}", w.namespace))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{AllowedNamespaces, WaypointFor};

    const SHOP: Origin<'static> = Origin {
        namespace: "shop",
        labels: None,
    };

    fn labels(pairs: &[(&str, &str)]) -> Labels {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn gw(name: &str, class: &str, hbone: bool, serves: WaypointFor) -> Arc<Gateway> {
        Arc::new(Gateway {
            name: name.into(),
            namespace: "shop".into(),
            class: class.into(),
            waypoint_for: serves,
            hbone_listener: hbone,
            allowed_namespaces: Default::default(),
        })
    }

    #[test]
    fn the_objects_label_wins_over_the_namespaces_and_none_opts_out() {
        let ns = UseWaypoint::from_labels(&labels(&[(USE_WAYPOINT_LABEL, "wp")]), "shop");
        let own = UseWaypoint::from_labels(&labels(&[(USE_WAYPOINT_LABEL, "none")]), "shop");
        assert_eq!(own.or_namespace(ns.clone()), UseWaypoint::OptOut);
        let unset = UseWaypoint::from_labels(&Labels::new(), "shop");
        assert_eq!(
            unset.or_namespace(ns),
            UseWaypoint::Named {
                namespace: "shop".into(),
                name: "wp".into()
            }
        );
        let elsewhere = UseWaypoint::from_labels(
            &labels(&[
                (USE_WAYPOINT_LABEL, "wp"),
                (USE_WAYPOINT_NAMESPACE_LABEL, "infra"),
            ]),
            "shop",
        );
        assert_eq!(
            elsewhere,
            UseWaypoint::Named {
                namespace: "infra".into(),
                name: "wp".into()
            }
        );
    }

    #[test]
    fn a_named_waypoint_that_cannot_be_used_is_unusable_not_direct() {
        let gws = [
            gw("other", "istio-waypoint", true, WaypointFor::Service),
            gw("nolistener", "mesh-waypoint", false, WaypointFor::Service),
        ];
        let find = |key: &str| gws.iter().find(|g| g.key() == key);
        let named = |name: &str| UseWaypoint::Named {
            namespace: "shop".into(),
            name: name.into(),
        };
        let bind = |name| {
            bind(
                named(name),
                DestinationKind::Service,
                SHOP,
                "mesh-waypoint",
                find,
                |_| None,
            )
        };
        for (name, why) in [
            ("missing", Unusable::NoSuchGateway),
            ("other", Unusable::OtherClass),
            ("nolistener", Unusable::NoHboneListener),
        ] {
            assert_eq!(
                bind(name),
                WaypointBinding::Unusable {
                    gateway: format!("shop/{name}"),
                    why
                }
            );
        }
    }

    #[test]
    fn a_waypoint_serves_only_the_kinds_it_is_for() {
        let g = gw("wp", "mesh-waypoint", true, WaypointFor::Workload);
        let w = Arc::new(Waypoint {
            gateway: g.clone(),
            endpoints: vec![],
        });
        let wanted = UseWaypoint::Named {
            namespace: "shop".into(),
            name: "wp".into(),
        };
        let b = |kind| {
            bind(
                wanted.clone(),
                kind,
                SHOP,
                "mesh-waypoint",
                |_| Some(&g),
                |_| Some(&w),
            )
        };
        assert_eq!(b(DestinationKind::Service), WaypointBinding::Direct);
        assert_eq!(
            b(DestinationKind::Workload),
            WaypointBinding::Through(w.clone())
        );
        assert_eq!(
            bind(
                UseWaypoint::OptOut,
                DestinationKind::Workload,
                SHOP,
                "mesh-waypoint",
                |_| Some(&g),
                |_| Some(&w)
            ),
            WaypointBinding::Direct
        );
    }

    #[test]
    fn requiring_the_waypoint_follows_the_object_then_its_namespace() {
        let ns = labels(&[(REQUIRE_WAYPOINT_LABEL, "true")]);
        assert!(requires_waypoint(&Labels::new(), Some(&ns)));
        assert!(!requires_waypoint(
            &labels(&[(REQUIRE_WAYPOINT_LABEL, "false")]),
            Some(&ns)
        ));
        assert!(!requires_waypoint(&Labels::new(), None));
    }

    #[test]
    fn another_namespace_uses_a_waypoint_only_as_its_listener_allows() {
        let mut g = (*gw("wp", "mesh-waypoint", true, WaypointFor::Service)).clone();
        let team: Labels = [("team".to_owned(), "a".to_owned())].into();
        let other = Origin {
            namespace: "web",
            labels: Some(&team),
        };
        let wanted = UseWaypoint::Named {
            namespace: "shop".into(),
            name: "wp".into(),
        };
        let w = |g: &Gateway| {
            Arc::new(Waypoint {
                gateway: Arc::new(g.clone()),
                endpoints: vec![],
            })
        };
        let b = |g: &Gateway| {
            let (g, w) = (Arc::new(g.clone()), w(g));
            bind(
                wanted.clone(),
                DestinationKind::Service,
                other,
                "mesh-waypoint",
                |_| Some(&g),
                |_| Some(&w),
            )
        };
        let refused = WaypointBinding::Unusable {
            gateway: "shop/wp".into(),
            why: Unusable::NamespaceNotAllowed,
        };
        assert_eq!(b(&g), refused);
        g.allowed_namespaces = AllowedNamespaces::All;
        assert!(matches!(b(&g), WaypointBinding::Through(_)));
        g.allowed_namespaces = AllowedNamespaces::Selector(Some(team.clone()));
        assert!(matches!(b(&g), WaypointBinding::Through(_)));
        g.allowed_namespaces = AllowedNamespaces::Selector(Some(
            [("kubernetes.io/metadata.name".to_owned(), "web".to_owned())].into(),
        ));
        assert!(matches!(b(&g), WaypointBinding::Through(_)));
        g.allowed_namespaces = AllowedNamespaces::Selector(None);
        assert_eq!(b(&g), refused);
    }

    #[test]
    fn the_gateway_name_label_alone_does_not_make_a_waypoint_pod() {
        let mut pod = Workload {
            uid: "u".into(),
            name: "impostor".into(),
            namespace: "shop".into(),
            service_account: "default".into(),
            node: None,
            ips: vec![],
            labels: [(GATEWAY_NAME_LABEL.to_owned(), "wp".to_owned())].into(),
            annotations: Labels::new(),
            host_network: false,
            ready: true,
            finished: false,
            ports: Default::default(),
            probe_ports: vec![],
        };
        assert!(!is_waypoint_pod(&pod, |k| k == "shop/wp"));
        pod.service_account = "wp".into();
        assert!(is_waypoint_pod(&pod, |k| k == "shop/wp"));
    }
}
