//! The inbound decision: whether a connection to one of this node's pods
//! reaches its app, and from which address it is delivered. Plaintext
//! (15006), HBONE CONNECT (15008) and the same-node hand-over all ask this
//! one function, so the paths cannot drift apart; each then tells the
//! outcome its own way (access log, metrics, an HTTP status, a reset).
//!
//! The kubelet's health probes are the one plaintext the decision lets
//! past STRICT and authorization, and only when both hold: the source is
//! an address of this node itself, and the port is one the pod's spec
//! names for the kubelet (`Kubelet`). Istio ambient instead SNATs every
//! connection from the host to 169.254.7.127 and passes that source on
//! any port; here nothing is rewritten, and the other ports of the pod
//! stay closed to the node.
use std::{
    fmt,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    sync::Arc,
};

use http::StatusCode;
use mesh_discovery::view::WaypointRequirement;
use mesh_identity::Identity;
use mesh_policy::{Decision, MtlsMode, NotSynced, PolicySet, Target};

use super::own_ports::{InboundPath, OwnPorts, SelfTraffic, check_inbound};
use crate::pod::PodContext;

/// What the decision needs of the pod a connection is for.
pub trait Recipient {
    fn ips(&self) -> &[IpAddr];
    /// The pod as policies select it.
    fn target(&self) -> Target<'_>;
}

impl Recipient for PodContext {
    fn ips(&self) -> &[IpAddr] {
        &self.ips
    }

    fn target(&self) -> Target<'_> {
        PodContext::target(self)
    }
}

impl<T: Recipient + ?Sized> Recipient for Arc<T> {
    fn ips(&self) -> &[IpAddr] {
        T::ips(self)
    }

    fn target(&self) -> Target<'_> {
        T::target(self)
    }
}

/// How a connection arrived, as far as the decision cares.
#[derive(Debug, Clone, Copy)]
pub struct Arrival<'a> {
    pub path: InboundPath,
    pub src: SocketAddr,
    /// The address of the pod asked for: the accepted socket's, the
    /// CONNECT authority, or the endpoint handed over.
    pub dst: SocketAddr,
    /// The verified peer; `None` for plaintext.
    pub source: Option<&'a Identity>,
}

/// What the decision consults besides the connection.
#[derive(Debug, Clone, Copy)]
pub struct Rules<'a> {
    pub policies: &'a PolicySet,
    pub own_ports: &'a OwnPorts,
    /// The agent has a CA. Without one no connection can be mTLS, and STRICT
    /// refuses plaintext all the same, saying so (`StrictWithoutCa`).
    pub mtls: bool,
    /// When the destination may be reached only through its waypoint
    /// (`mesh.io/require-waypoint`): who that is
    /// (`MeshView::waypoint_requirement` of the destination address).
    pub waypoint: Option<&'a WaypointRequirement>,
}

/// What the plaintext path knows about the kubelet's health probes to a
/// pod. Probes come from the node's own network namespace, so from one of
/// its addresses (which one the host's routing picks: on the test bed and
/// with bridge CNIs the bridge's, not the Node object's InternalIP); a
/// packet from elsewhere cannot carry one, since the node drops what
/// arrives from the network with one of its own addresses as the source
/// (a martian).
#[derive(Debug, Clone, Copy, Default)]
pub struct Kubelet<'a> {
    /// This node's addresses: those of the host's netns, where the agent runs.
    pub node_addrs: &'a [IpAddr],
    /// The ports the pod's probes and hooks name, sorted
    /// (`mesh_discovery::model::Workload::probe_ports`).
    pub probe_ports: &'a [u16],
}

impl Kubelet<'_> {
    /// Whether a connection from `src` to `port` is the kubelet probing.
    pub fn probes(&self, src: IpAddr, port: u16) -> bool {
        self.probe_ports.binary_search(&port).is_ok()
            && self.node_addrs.contains(&src.to_canonical())
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Admit {
    /// Dial `to` from `from` in the pod's netns. `decision` allowed it;
    /// the caller still records it (metrics, what dry-run policies say).
    Deliver {
        to: SocketAddr,
        from: SocketAddr,
        decision: Decision,
    },
    /// The kubelet probing the pod (see `Kubelet`): dial `to` from `from`,
    /// past STRICT and with no policy asked. AuthorizationPolicies cannot
    /// name the kubelet (no identity; its address is whichever the host's
    /// routing picks), so an ALLOW list of principals, or a DENY of
    /// `notNamespaces`, would fail every probe and have the kubelet restart
    /// the pod; Istio ambient lets probes past policy as well.
    Probe {
        to: SocketAddr,
        from: SocketAddr,
    },
    Refuse(Refusal),
}

/// Why a connection does not reach the app. Displayed as the access log's
/// error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// A CONNECT authority that names another pod: this listener serves
    /// only its own pod, whatever the peer asks.
    NotThisPod,
    SelfTraffic(SelfTraffic),
    /// Until both policy kinds are listed every pod would look allow-all
    /// and PERMISSIVE.
    PoliciesNotSynced(NotSynced),
    /// Plaintext to a port under STRICT mTLS.
    Strict,
    /// Plaintext under STRICT on an agent with no CA: no connection could
    /// be mTLS, and STRICT still refuses every plaintext one (but the
    /// kubelet's probes) rather than let the mode silently lapse.
    StrictWithoutCa,
    /// Policy denies it; the decision goes to the access log and metrics.
    Denied(Decision),
    /// The destination requires its waypoint, and this connection did not
    /// come from it: the waypoint's L7 rules would be bypassed.
    WaypointRequired(Arc<str>),
}

impl Refusal {
    /// The answer to a refused HBONE CONNECT.
    pub fn status(&self) -> StatusCode {
        match self {
            Refusal::NotThisPod | Refusal::SelfTraffic(_) => StatusCode::BAD_REQUEST,
            Refusal::PoliciesNotSynced(_) => StatusCode::SERVICE_UNAVAILABLE,
            Refusal::Denied(_) => StatusCode::UNAUTHORIZED,
            // Tunnels are mTLS; only plaintext meets STRICT.
            Refusal::Strict | Refusal::StrictWithoutCa | Refusal::WaypointRequired(_) => {
                StatusCode::FORBIDDEN
            }
        }
    }
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refusal::NotThisPod => f.write_str("authority is not an address of this pod"),
            Refusal::SelfTraffic(why) => why.fmt(f),
            Refusal::PoliciesNotSynced(e) => {
                write!(f, "policies not synced, refusing until they are: {e}")
            }
            Refusal::Strict => f.write_str("plaintext refused: STRICT mTLS (PeerAuthentication)"),
            Refusal::StrictWithoutCa => f.write_str(
                "plaintext refused: STRICT mTLS (PeerAuthentication), and this agent has no CA \
                 (AgentConfig.ca) to carry mTLS; configure `ca` or make the PeerAuthentication PERMISSIVE",
            ),
            Refusal::Denied(d) => f.write_str(&d.enforced.reason()),
            Refusal::WaypointRequired(gateways) => write!(
                f,
                "the destination requires its waypoint ({gateways}; mesh.io/require-waypoint) and the connection did not come through it"
            ),
        }
    }
}

/// The reserved source of deliveries to apps; sk_lookup passes it.
pub fn delivery_source(dst: SocketAddr) -> SocketAddr {
    let ip = match dst.ip() {
        IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::from(mesh_common::INBOUND_DELIVERY_IPV4)),
        IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::LOCALHOST),
    };
    SocketAddr::new(ip, 0)
}

/// Decides a connection to `pod` that cannot be the kubelet's (HBONE, the
/// same-node hand-over: both carry a peer identity). See `decide`.
pub fn admit(arrival: &Arrival<'_>, pod: &impl Recipient, rules: &Rules<'_>) -> Admit {
    decide(arrival, pod, rules, &Kubelet::default())
}

/// Decides a plaintext connection to `pod`, which may be the kubelet's
/// probe. See `decide`.
pub fn admit_plaintext(
    arrival: &Arrival<'_>,
    pod: &impl Recipient,
    rules: &Rules<'_>,
    kubelet: &Kubelet<'_>,
) -> Admit {
    decide(arrival, pod, rules, kubelet)
}

/// The checks run in the order that makes the cheapest, most certain
/// refusal win: an address the pod does not have, traffic to the mesh
/// itself, then the kubelet's probes (which no policy decides, so they
/// pass even while policies are not synced: a liveness probe refused until
/// then would have every meshed pod restarted while the API server is
/// unreachable), policies not yet readable (before STRICT and
/// authorization, which would read an incomplete list), STRICT for
/// plaintext, then authorization.
fn decide(
    arrival: &Arrival<'_>,
    pod: &impl Recipient,
    rules: &Rules<'_>,
    kubelet: &Kubelet<'_>,
) -> Admit {
    let Arrival {
        path,
        src,
        dst,
        source,
    } = *arrival;
    // Only a CONNECT authority can name any address; the other paths found
    // the pod by this very address.
    if path == InboundPath::Hbone && !pod.ips().contains(&dst.ip()) {
        return Admit::Refuse(Refusal::NotThisPod);
    }
    if let Err(why) = check_inbound(path, src, dst, rules.own_ports) {
        return Admit::Refuse(Refusal::SelfTraffic(why));
    }
    if path == InboundPath::Plaintext && kubelet.probes(src.ip(), dst.port()) {
        return Admit::Probe {
            to: dst,
            from: delivery_source(dst),
        };
    }
    if let Err(e) = rules.policies.sync.check() {
        return Admit::Refuse(Refusal::PoliciesNotSynced(e));
    }
    if let Some(required) = rules.waypoint
        && !source.is_some_and(|id| required.identities.contains(id))
    {
        let gateways: Vec<&str> = required.gateways.iter().map(String::as_str).collect();
        return Admit::Refuse(Refusal::WaypointRequired(gateways.join(", ").into()));
    }
    if path == InboundPath::Plaintext
        && rules.policies.mtls_mode(pod.target(), dst.port()) == MtlsMode::Strict
    {
        return Admit::Refuse(if rules.mtls {
            Refusal::Strict
        } else {
            Refusal::StrictWithoutCa
        });
    }
    let decision = rules.policies.authorize(
        pod.target(),
        &mesh_policy::Connection {
            source,
            source_ip: src.ip().to_canonical(),
            destination_ip: dst.ip(),
            destination_port: dst.port(),
        },
    );
    if !decision.enforced.allowed() {
        return Admit::Refuse(Refusal::Denied(decision));
    }
    Admit::Deliver {
        to: dst,
        from: delivery_source(dst),
        decision,
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use mesh_policy::{
        AuthorizationPolicy, PeerAuthentication, PolicySync, Verdict,
        model::{MtlsMode, WorkloadSelector},
        sync::{KindSync, PolicyKind},
    };

    use super::*;

    struct Pod {
        ips: Vec<IpAddr>,
        labels: BTreeMap<String, String>,
    }

    impl Recipient for Pod {
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

    fn pod() -> Pod {
        Pod {
            ips: vec!["10.1.0.1".parse().unwrap(), "fd00::1".parse().unwrap()],
            labels: [("app".to_owned(), "web".to_owned())].into(),
        }
    }

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    fn id(sa: &str) -> Identity {
        Identity::new("cluster.local", "shop", sa).unwrap()
    }

    fn policies() -> PolicySet {
        PolicySet {
            root_namespace: "istio-system".into(),
            authorization: vec![],
            peer_authentication: vec![],
            sync: PolicySync::COMPLETE,
        }
    }

    fn strict(set: &mut PolicySet) {
        set.peer_authentication
            .push(PeerAuthentication::strict("shop", "strict", None));
    }

    fn deny_web(set: &mut PolicySet) {
        let selector = WorkloadSelector {
            match_labels: [("app".to_owned(), "web".to_owned())].into(),
        };
        set.authorization.push(AuthorizationPolicy::deny_all(
            "shop",
            "deny",
            Some(selector),
        ));
    }

    fn decide(
        path: InboundPath,
        src: &str,
        dst: &str,
        source: Option<&Identity>,
        set: &PolicySet,
        mtls: bool,
    ) -> Admit {
        let own = OwnPorts::default();
        admit(
            &Arrival {
                path,
                src: addr(src),
                dst: addr(dst),
                source,
            },
            &pod(),
            &Rules {
                policies: set,
                own_ports: &own,
                mtls,
                waypoint: None,
            },
        )
    }

    fn refusal(a: Admit) -> Refusal {
        match a {
            Admit::Refuse(r) => r,
            Admit::Deliver { .. } | Admit::Probe { .. } => panic!("delivered: {a:?}"),
        }
    }

    /// The node's addresses as the test bed has them: the bridge's (what a
    /// connection from the node to its pods comes from) and the uplink's.
    const NODE: [&str; 3] = ["10.1.0.254", "192.168.0.1", "fd00::fe"];

    /// A plaintext connection as the 15006 listener decides it, for a pod
    /// whose probes name 8080 and 8081.
    fn probed(src: &str, dst: &str, set: &PolicySet, mtls: bool) -> Admit {
        let own = OwnPorts::default();
        let node: Vec<IpAddr> = NODE.iter().map(|a| a.parse().unwrap()).collect();
        admit_plaintext(
            &Arrival {
                path: InboundPath::Plaintext,
                src: addr(src),
                dst: addr(dst),
                source: None,
            },
            &pod(),
            &Rules {
                policies: set,
                own_ports: &own,
                mtls,
                waypoint: None,
            },
            &Kubelet {
                node_addrs: &node,
                probe_ports: &[8080, 8081],
            },
        )
    }

    #[test]
    fn the_kubelet_reaches_probe_ports_past_strict_policy_and_sync() {
        let mut set = policies();
        strict(&mut set);
        deny_web(&mut set);
        let probe = Admit::Probe {
            to: addr("10.1.0.1:8080"),
            from: addr("127.0.0.6:0"),
        };
        for mtls in [true, false] {
            assert_eq!(
                probed("10.1.0.254:5000", "10.1.0.1:8080", &set, mtls),
                probe
            );
        }
        // Any of the node's addresses, a v4-mapped one too, and over IPv6.
        assert_eq!(
            probed("[::ffff:192.168.0.1]:5000", "10.1.0.1:8080", &set, true),
            probe
        );
        assert!(matches!(
            probed("[fd00::fe]:5000", "[fd00::1]:8081", &set, true),
            Admit::Probe { from, .. } if from == addr("[::1]:0")
        ));
        // Policies not listed yet: a probe needs none of them.
        set.sync = PolicySync::default();
        assert_eq!(
            probed("10.1.0.254:5000", "10.1.0.1:8080", &set, true),
            probe
        );
    }

    #[test]
    fn the_node_reaches_no_other_port_and_nobody_else_a_probe_port() {
        let mut set = policies();
        strict(&mut set);
        // From the node, a port no probe names: STRICT as for anyone.
        assert_eq!(
            refusal(probed("10.1.0.254:5000", "10.1.0.1:9090", &set, true)),
            Refusal::Strict
        );
        // A probe port from another pod, another node, or the pod's peer
        // on the same bridge.
        for src in ["10.1.0.2:5000", "10.2.0.1:5000", "192.168.0.2:5000"] {
            assert_eq!(
                refusal(probed(src, "10.1.0.1:8080", &set, true)),
                Refusal::Strict,
                "{src}"
            );
        }
        // Without a CA the same, with its own reason.
        assert_eq!(
            refusal(probed("10.1.0.2:5000", "10.1.0.1:8080", &set, false)),
            Refusal::StrictWithoutCa
        );
        // Under PERMISSIVE the node's other ports are plaintext like any:
        // authorized, here denied by policy.
        let mut set = policies();
        deny_web(&mut set);
        assert!(matches!(
            refusal(probed("10.1.0.254:5000", "10.1.0.1:9090", &set, true)),
            Refusal::Denied(_)
        ));
        assert!(matches!(
            probed("10.1.0.254:5000", "10.1.0.1:8080", &set, true),
            Admit::Probe { .. }
        ));
    }

    #[test]
    fn a_probe_port_that_is_the_meshs_own_is_still_refused() {
        let own = OwnPorts::default();
        let node: [IpAddr; 1] = ["10.1.0.254".parse().unwrap()];
        let r = admit_plaintext(
            &Arrival {
                path: InboundPath::Plaintext,
                src: addr("10.1.0.254:5000"),
                dst: addr("10.1.0.1:15006"),
                source: None,
            },
            &pod(),
            &Rules {
                policies: &policies(),
                own_ports: &own,
                mtls: true,
                waypoint: None,
            },
            &Kubelet {
                node_addrs: &node,
                probe_ports: &[15006],
            },
        );
        assert_eq!(
            refusal(r),
            Refusal::SelfTraffic(SelfTraffic::OwnPort(15006))
        );
    }

    #[test]
    fn allowed_connections_are_delivered_from_the_reserved_source() {
        let set = policies();
        let alice = id("alice");
        for (path, source) in [
            (InboundPath::Plaintext, None),
            (InboundPath::Hbone, Some(&alice)),
            (InboundPath::SameNode, Some(&alice)),
        ] {
            assert_eq!(
                decide(path, "10.2.0.1:4000", "10.1.0.1:8080", source, &set, true),
                Admit::Deliver {
                    to: addr("10.1.0.1:8080"),
                    from: addr("127.0.0.6:0"),
                    decision: Decision {
                        enforced: Verdict::Allow { policy: None },
                        dry_run: None,
                    },
                },
                "{path:?}"
            );
        }
        let Admit::Deliver { from, .. } = decide(
            InboundPath::Hbone,
            "[fd00::2]:4000",
            "[fd00::1]:8080",
            Some(&alice),
            &set,
            true,
        ) else {
            panic!("refused");
        };
        assert_eq!(from, addr("[::1]:0"));
    }

    #[test]
    fn only_a_connect_authority_can_name_another_pod() {
        let set = policies();
        let alice = id("alice");
        let r = refusal(decide(
            InboundPath::Hbone,
            "10.2.0.1:4000",
            "10.1.0.9:8080",
            Some(&alice),
            &set,
            true,
        ));
        assert_eq!(r, Refusal::NotThisPod);
        assert_eq!(r.to_string(), "authority is not an address of this pod");
        assert_eq!(r.status(), StatusCode::BAD_REQUEST);
        // Even an own port: the wrong pod is told first.
        let r = refusal(decide(
            InboundPath::Hbone,
            "10.2.0.1:4000",
            "10.1.0.9:15008",
            Some(&alice),
            &set,
            true,
        ));
        assert_eq!(r, Refusal::NotThisPod);
    }

    #[test]
    fn traffic_to_the_mesh_itself_is_refused_on_every_path_before_anything_else() {
        // Policies unreadable and denying: self-traffic still names the port.
        let mut set = policies();
        set.sync = PolicySync::default();
        deny_web(&mut set);
        let alice = id("alice");
        for (path, source) in [
            (InboundPath::Plaintext, None),
            (InboundPath::Hbone, Some(&alice)),
            (InboundPath::SameNode, Some(&alice)),
        ] {
            let r = refusal(decide(
                path,
                "10.2.0.1:4000",
                "10.1.0.1:15006",
                source,
                &set,
                true,
            ));
            assert_eq!(
                r,
                Refusal::SelfTraffic(SelfTraffic::OwnPort(15006)),
                "{path:?}"
            );
            assert_eq!(r.status(), StatusCode::BAD_REQUEST);
            assert_eq!(r.to_string(), SelfTraffic::OwnPort(15006).to_string());
        }
        let r = refusal(decide(
            InboundPath::Plaintext,
            "127.0.0.6:4000",
            "10.1.0.1:8080",
            None,
            &policies(),
            true,
        ));
        assert!(
            matches!(r, Refusal::SelfTraffic(SelfTraffic::LoopbackSource(_))),
            "{r:?}"
        );
    }

    #[test]
    fn unsynced_policies_refuse_before_strict_and_authorization() {
        let mut set = policies();
        set.sync.peer_authentication = KindSync::Failing("forbidden (403)".into());
        strict(&mut set);
        deny_web(&mut set);
        let alice = id("alice");
        for (path, source) in [
            (InboundPath::Plaintext, None),
            (InboundPath::Hbone, Some(&alice)),
            (InboundPath::SameNode, Some(&alice)),
        ] {
            let r = refusal(decide(
                path,
                "10.2.0.1:4000",
                "10.1.0.1:8080",
                source,
                &set,
                true,
            ));
            assert!(
                matches!(
                    &r,
                    Refusal::PoliciesNotSynced(NotSynced::Failing {
                        kind: PolicyKind::PeerAuthentication,
                        ..
                    })
                ),
                "{path:?}: {r:?}"
            );
            assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
            assert!(
                r.to_string().starts_with("policies not synced, refusing until they are: PeerAuthentication cannot be listed: forbidden (403)"),
                "{r}"
            );
        }
    }

    #[test]
    fn strict_refuses_only_plaintext_with_a_ca_or_without() {
        let mut set = policies();
        strict(&mut set);
        let r = refusal(decide(
            InboundPath::Plaintext,
            "10.2.0.1:4000",
            "10.1.0.1:8080",
            None,
            &set,
            true,
        ));
        assert_eq!(r, Refusal::Strict);
        assert_eq!(
            r.to_string(),
            "plaintext refused: STRICT mTLS (PeerAuthentication)"
        );
        // Without a CA nothing could be mTLS: STRICT still refuses, and
        // says what is missing.
        let r = refusal(decide(
            InboundPath::Plaintext,
            "10.2.0.1:4000",
            "10.1.0.1:8080",
            None,
            &set,
            false,
        ));
        assert_eq!(r, Refusal::StrictWithoutCa);
        assert_eq!(r.status(), StatusCode::FORBIDDEN);
        assert!(
            r.to_string().contains("no CA (AgentConfig.ca)")
                && r.to_string().contains("PERMISSIVE"),
            "{r}"
        );
        // PERMISSIVE without a CA forwards plaintext, as before.
        assert!(matches!(
            decide(
                InboundPath::Plaintext,
                "10.2.0.1:4000",
                "10.1.0.1:8080",
                None,
                &policies(),
                false
            ),
            Admit::Deliver { .. }
        ));
        let alice = id("alice");
        for path in [InboundPath::Hbone, InboundPath::SameNode] {
            assert!(matches!(
                decide(
                    path,
                    "10.2.0.1:4000",
                    "10.1.0.1:8080",
                    Some(&alice),
                    &set,
                    true
                ),
                Admit::Deliver { .. }
            ));
        }
        // A port-level PERMISSIVE under a STRICT namespace.
        set.peer_authentication[0].spec.port_level_mtls.insert(
            8080,
            mesh_policy::model::Mtls {
                mode: MtlsMode::Permissive,
            },
        );
        assert!(matches!(
            decide(
                InboundPath::Plaintext,
                "10.2.0.1:4000",
                "10.1.0.1:8080",
                None,
                &set,
                true
            ),
            Admit::Deliver { .. }
        ));
    }

    #[test]
    fn a_denying_policy_refuses_with_its_decision() {
        let mut set = policies();
        deny_web(&mut set);
        let alice = id("alice");
        let r = refusal(decide(
            InboundPath::SameNode,
            "10.1.0.2:4000",
            "10.1.0.1:8080",
            Some(&alice),
            &set,
            true,
        ));
        let Refusal::Denied(decision) = &r else {
            panic!("{r:?}");
        };
        assert_eq!(
            decision.enforced,
            Verdict::Deny {
                policy: Some("shop/deny".into())
            }
        );
        assert_eq!(r.to_string(), "denied by shop/deny");
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    }

    #[test]
    fn policies_see_the_canonical_source_address() {
        // ALLOW only from 10.2.0.0/16: a v4-mapped peer address must match.
        let spec: mesh_policy::model::AuthorizationPolicySpec = serde_yaml::from_str(
            "{action: ALLOW, rules: [{from: [{source: {ipBlocks: [10.2.0.0/16]}}]}]}",
        )
        .unwrap();
        let mut set = policies();
        set.authorization.push(
            AuthorizationPolicy::compile("shop", "from-net", &BTreeMap::new(), &spec)
                .unwrap()
                .unwrap(),
        );
        let alice = id("alice");
        assert!(matches!(
            decide(
                InboundPath::Hbone,
                "[::ffff:10.2.0.1]:4000",
                "10.1.0.1:8080",
                Some(&alice),
                &set,
                true
            ),
            Admit::Deliver { .. }
        ));
        assert!(matches!(
            decide(
                InboundPath::Hbone,
                "10.3.0.1:4000",
                "10.1.0.1:8080",
                Some(&alice),
                &set,
                true
            ),
            Admit::Refuse(Refusal::Denied(_))
        ));
    }

    #[test]
    fn a_destination_that_requires_its_waypoint_admits_only_the_waypoint() {
        let required = WaypointRequirement {
            gateways: ["shop/wp".to_owned()].into(),
            identities: [id("wp")].into(),
        };
        let own = OwnPorts::default();
        let set = policies();
        let arrive = |path, source: Option<&Identity>| {
            admit(
                &Arrival {
                    path,
                    src: addr("10.1.0.7:40000"),
                    dst: addr("10.1.0.1:8080"),
                    source,
                },
                &pod(),
                &Rules {
                    policies: &set,
                    own_ports: &own,
                    mtls: true,
                    waypoint: Some(&required),
                },
            )
        };
        assert!(matches!(
            arrive(InboundPath::Hbone, Some(&id("wp"))),
            Admit::Deliver { .. }
        ));
        for (path, source) in [
            (InboundPath::Hbone, Some(id("web"))),
            (InboundPath::SameNode, Some(id("web"))),
            (InboundPath::Plaintext, None),
        ] {
            let r = refusal(arrive(path, source.as_ref()));
            assert_eq!(r, Refusal::WaypointRequired("shop/wp".into()));
            assert_eq!(r.status(), StatusCode::FORBIDDEN);
        }
        // No ready waypoint pod: nothing may connect directly.
        let nobody = WaypointRequirement {
            gateways: ["shop/wp".to_owned()].into(),
            identities: Default::default(),
        };
        let r = admit(
            &Arrival {
                path: InboundPath::Hbone,
                src: addr("10.1.0.7:40000"),
                dst: addr("10.1.0.1:8080"),
                source: Some(&id("wp")),
            },
            &pod(),
            &Rules {
                policies: &set,
                own_ports: &own,
                mtls: true,
                waypoint: Some(&nobody),
            },
        );
        assert!(matches!(r, Admit::Refuse(Refusal::WaypointRequired(_))));
    }
}
