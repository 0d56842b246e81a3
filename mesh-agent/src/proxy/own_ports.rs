//! Traffic to the mesh itself is never delivered. A connection to a pod's
//! 15006 that the agent delivered "to the app" would land on the agent's
//! own 15006 listener again (deliveries come from 127.0.0.6, which the
//! datapath lets through), and so on until the agent runs out of file
//! descriptors; a CONNECT to a pod's 15008 would nest a tunnel whose policy
//! check sees 127.0.0.6 instead of the real peer. So every inbound path
//! (plaintext 15006, HBONE CONNECT, the same-node hand-over) asks this
//! first, and a refusal names the port.
use std::net::{IpAddr, SocketAddr};

use mesh_common::{HBONE_PORT, INBOUND_PORT, OUTBOUND_PORT};
use mesh_config::TelemetrySettings;

/// The ports the agent listens on: its in-pod listeners and the node-wide
/// metrics, status and admin ports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OwnPorts(Vec<u16>);

impl OwnPorts {
    pub fn new(telemetry: &TelemetrySettings) -> Self {
        let mut ports = vec![
            OUTBOUND_PORT,
            INBOUND_PORT,
            HBONE_PORT,
            telemetry.metrics_addr.port(),
            telemetry.status_addr.port(),
            telemetry.admin_addr.port(),
        ];
        ports.sort_unstable();
        ports.dedup();
        Self(ports)
    }

    pub fn contains(&self, port: u16) -> bool {
        self.0.binary_search(&port).is_ok()
    }
}

impl Default for OwnPorts {
    fn default() -> Self {
        Self::new(&TelemetrySettings::default())
    }
}

/// Which inbound path a connection came by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InboundPath {
    /// Plaintext, handed to the 15006 listener by sk_lookup.
    Plaintext,
    /// A CONNECT stream on 15008.
    Hbone,
    /// In-process from a pod on this node.
    SameNode,
}

/// Why a connection is traffic to the mesh itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SelfTraffic {
    #[error("destination port {0} is one of the mesh agent's own; it is never delivered")]
    OwnPort(u16),
    #[error(
        "source {0} is loopback: the datapath never hands loopback connections to 15006, so this one came to the agent's listener directly (a delivery of the agent's own, or a pod dialling 15006 itself)"
    )]
    LoopbackSource(IpAddr),
    #[error(
        "the connection carries the mark of the agent's deliveries: a delivery came back to the agent's listener instead of reaching the app; the pod's sk_lookup program is an older one, adopted from its pins, that does not know deliveries from the client's address: set `datapath.sourceIp: loopback`, or remove the node's pins (`mesh-agent uninstall`) and restart the agent"
    )]
    ReturnedDelivery,
}

/// `Err` when the connection from `src` to `dst`, arriving by `path`, is
/// traffic to the mesh itself and must be refused.
pub fn check_inbound(
    path: InboundPath,
    src: SocketAddr,
    dst: SocketAddr,
    own: &OwnPorts,
) -> Result<(), SelfTraffic> {
    if own.contains(dst.port()) {
        return Err(SelfTraffic::OwnPort(dst.port()));
    }
    if path == InboundPath::Plaintext && src.ip().to_canonical().is_loopback() {
        return Err(SelfTraffic::LoopbackSource(src.ip()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn every_listener_port_of_the_agent_is_refused_on_every_path() {
        let own = OwnPorts::default();
        for path in [
            InboundPath::Plaintext,
            InboundPath::Hbone,
            InboundPath::SameNode,
        ] {
            for port in [15001, 15006, 15008, 15000, 15020, 15021] {
                let dst = SocketAddr::new("10.0.0.2".parse().unwrap(), port);
                assert_eq!(
                    check_inbound(path, addr("10.0.0.1:4000"), dst, &own),
                    Err(SelfTraffic::OwnPort(port)),
                    "{path:?} to {port}"
                );
            }
            assert_eq!(
                check_inbound(path, addr("10.0.0.1:4000"), addr("10.0.0.2:8080"), &own),
                Ok(())
            );
        }
    }

    #[test]
    fn configured_telemetry_ports_are_the_agents_too() {
        let telemetry = TelemetrySettings {
            metrics_addr: addr("0.0.0.0:9100"),
            ..TelemetrySettings::default()
        };
        let own = OwnPorts::new(&telemetry);
        assert!(own.contains(9100));
        assert!(!own.contains(15020), "the default no longer applies");
    }

    #[test]
    fn loopback_sources_are_refused_only_on_the_plaintext_listener() {
        let own = OwnPorts::default();
        for src in [
            "127.0.0.6:5000",
            "127.0.0.1:5000",
            "[::1]:5000",
            "[::ffff:127.0.0.6]:5000",
        ] {
            assert!(matches!(
                check_inbound(
                    InboundPath::Plaintext,
                    addr(src),
                    addr("10.0.0.2:8080"),
                    &own
                ),
                Err(SelfTraffic::LoopbackSource(_))
            ));
        }
        assert_eq!(
            check_inbound(
                InboundPath::SameNode,
                addr("127.0.0.6:5000"),
                addr("10.0.0.2:8080"),
                &own
            ),
            Ok(())
        );
    }
}
