//! Showing apps the client's own address. The agent delivers each inbound
//! connection from inside the pod's netns; to deliver it from the client's
//! address (the source pod's, the plaintext client's) instead of 127.0.0.6,
//! the delivery socket is transparent (IP_TRANSPARENT: bound to an address
//! the netns does not have) and carries `DELIVERY_MARK`. The app's replies
//! go to that foreign address, so they must come back to the agent's socket
//! instead of leaving the pod. Three things in the pod's netns arrange it,
//! set here at enrollment and taken back at unenrollment:
//! - `net.ipv4.tcp_fwmark_accept = 1` (per netns, for IPv4 and IPv6): the
//!   app's accepted socket takes the mark of the SYN;
//! - a fib rule: packets with the mark look up `ROUTE_TABLE`;
//! - that table's one route, `local default dev lo`: everything is for
//!   this host, so the replies reach the agent's transparent socket.
//!
//! The mark exempts nothing from capture: sk_lookup passes a delivery's
//! SYN because the agent names its 4-tuple in a map only it writes while it
//! connects (`proxy::delivery`). A pod where this cannot be set up is
//! delivered to from 127.0.0.6, and said so, naming the pod.
use std::{
    fs,
    io::{self, Write},
    net::{IpAddr, SocketAddr},
    path::{Path, PathBuf},
};

use mesh_common::{DELIVERY_MARK, DELIVERY_MARK_MASK};
use mesh_config::{AgentConfig, SourceIp};
use tracing::{info, warn};

use crate::{
    netlink_route::{Family, LocalDefaultRoute, MarkRule, NetlinkError, Op, RouteSocket},
    netns::SocketFactory,
};

/// The routing table of marked replies in every enrolled netns.
pub const ROUTE_TABLE: u32 = 0x6d5;
/// The rule's priority: after the `local` table's (0), before `main`'s
/// (32766) and anything a CNI is likely to add.
pub const RULE_PRIORITY: u32 = 100;
/// `lo` is the first device of every netns.
const LOOPBACK_IFINDEX: u32 = 1;
/// Below a procfs mount; a net sysctl file is the opening thread's netns'.
const FWMARK_ACCEPT: &str = "sys/net/ipv4/tcp_fwmark_accept";

/// What enrollment needs to set a pod up.
#[derive(Debug, Clone)]
pub struct Settings {
    pub mode: SourceIp,
    /// Where the sysctl is written: the agent's own /proc first, then the
    /// host's (`procRoot`). In a container the runtime mounts /proc/sys
    /// read-only; the chart mounts the host's /proc/sys/net writable under
    /// `procRoot`.
    pub sysctl_files: Vec<PathBuf>,
}

impl Settings {
    pub fn new(agent: &AgentConfig) -> Self {
        let mut sysctl_files = vec![Path::new("/proc").join(FWMARK_ACCEPT)];
        let host = agent.proc_root.join(FWMARK_ACCEPT);
        if !sysctl_files.contains(&host) {
            sysctl_files.push(host);
        }
        Self {
            mode: agent.datapath.source_ip,
            sysctl_files,
        }
    }
}

/// How the agent delivers to one pod.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    /// From the client's address; the pod's netns routes marked replies back.
    Preserve,
    /// From the reserved loopback source (127.0.0.6, or `::1`).
    Loopback,
}

/// Where one delivery is dialled from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeliveryFrom {
    /// The client's address (port chosen by the kernel), transparent and
    /// marked.
    Client(IpAddr),
    /// The reserved loopback source.
    Reserved(SocketAddr),
}

impl Delivery {
    /// Where a connection from `client` to `to` is delivered from;
    /// `reserved` is the loopback source the decision gave. The client's
    /// address is used only when it can be: the same family as `to`, and a
    /// unicast address (a loopback or unspecified one could not have come
    /// from another pod or the network, and would not route back).
    pub fn from(self, client: SocketAddr, to: SocketAddr, reserved: SocketAddr) -> DeliveryFrom {
        let ip = client.ip().to_canonical();
        let usable = ip.is_ipv4() == to.is_ipv4()
            && !ip.is_loopback()
            && !ip.is_unspecified()
            && !ip.is_multicast();
        match self {
            Delivery::Preserve if usable => DeliveryFrom::Client(ip),
            _ => DeliveryFrom::Reserved(reserved),
        }
    }
}

/// The families a pod with `ips` is delivered to in.
fn families(ips: &[IpAddr]) -> Vec<Family> {
    let mut out = Vec::new();
    if ips.iter().any(IpAddr::is_ipv4) {
        out.push(Family::V4);
    }
    if ips.iter().any(IpAddr::is_ipv6) {
        out.push(Family::V6);
    }
    out
}

fn rule(family: Family) -> MarkRule {
    MarkRule {
        family,
        mark: DELIVERY_MARK,
        mask: DELIVERY_MARK_MASK,
        table: ROUTE_TABLE,
        priority: RULE_PRIORITY,
    }
}

fn route(family: Family) -> LocalDefaultRoute {
    LocalDefaultRoute {
        family,
        table: ROUTE_TABLE,
        oif: LOOPBACK_IFINDEX,
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error("{0}")]
    Netlink(#[from] NetlinkError),
    #[error("entering the pod's netns: {0}")]
    Enter(io::Error),
    #[error("net.ipv4.tcp_fwmark_accept in the pod's netns: {0}")]
    Sysctl(String),
}

/// What the agent set in one pod's netns for `Delivery::Preserve`; dropped,
/// it takes it back.
#[derive(Debug)]
pub struct PreservedSource {
    pod: String,
    sockets: SocketFactory,
    families: Vec<Family>,
    /// `tcp_fwmark_accept` as it was and the file it was set through,
    /// when the agent changed it.
    fwmark_accept_was: Option<(PathBuf, String)>,
}

/// Sets the pod's netns up for `mode`; returns how the pod is delivered to
/// and, when from the client's address, the guard that undoes the setup.
/// A setup that fails is undone and the pod delivered to from loopback,
/// with a line naming the pod and the cause.
pub fn prepare(
    pod: &str,
    sockets: &SocketFactory,
    ips: &[IpAddr],
    settings: &Settings,
) -> (Delivery, Option<PreservedSource>) {
    if settings.mode == SourceIp::Loopback {
        return (Delivery::Loopback, None);
    }
    let mut guard = PreservedSource {
        pod: pod.to_owned(),
        sockets: sockets.clone(),
        families: Vec::new(),
        fwmark_accept_was: None,
    };
    match guard.set_up(ips, &settings.sysctl_files) {
        Ok(()) => (Delivery::Preserve, Some(guard)),
        Err(e) => {
            warn!(pod = %pod, error = %e, "cannot deliver to this pod from the client's address (datapath.sourceIp: preserve); its app sees 127.0.0.6 instead");
            drop(guard);
            (Delivery::Loopback, None)
        }
    }
}

impl PreservedSource {
    fn set_up(&mut self, ips: &[IpAddr], sysctl_files: &[PathBuf]) -> Result<(), SetupError> {
        let mut nl = self.netlink()?;
        for family in families(ips) {
            // Recorded first: a rule added before its route failed is
            // still taken back.
            self.families.push(family);
            nl.rule(Op::Add, &rule(family))?;
            nl.route(Op::Add, &route(family))?;
        }
        let (file, was) = self
            .sockets
            .within(|| set_sysctl_through(sysctl_files, "1"))
            .map_err(SetupError::Enter)?
            .map_err(SetupError::Sysctl)?;
        if was.trim() != "1" {
            self.fwmark_accept_was = Some((file, was));
        }
        Ok(())
    }

    fn netlink(&self) -> Result<RouteSocket, SetupError> {
        Ok(self
            .sockets
            .within(RouteSocket::open)
            .map_err(SetupError::Enter)??)
    }

    fn take_back(&mut self) -> Result<(), SetupError> {
        if let Some((file, was)) = self.fwmark_accept_was.take() {
            self.sockets
                .within(|| set_sysctl(&file, was.trim()))
                .map_err(SetupError::Enter)?
                .map_err(|e| SetupError::Sysctl(format!("{}: {e}", file.display())))?;
        }
        if self.families.is_empty() {
            return Ok(());
        }
        let mut nl = self.netlink()?;
        for family in std::mem::take(&mut self.families) {
            nl.rule(Op::Delete, &rule(family))?;
            nl.route(Op::Delete, &route(family))?;
        }
        Ok(())
    }
}

impl Drop for PreservedSource {
    fn drop(&mut self) {
        let set = !self.families.is_empty();
        match self.take_back() {
            Ok(()) if set => {
                info!(pod = %self.pod, "delivery routing removed from the pod's netns");
            }
            Ok(()) => {}
            // A pod whose netns is gone has nothing left to remove; one
            // whose rule stays routes only packets with the agent's mark.
            Err(e) => {
                warn!(pod = %self.pod, error = %e, "cannot remove the delivery routing from the pod's netns");
            }
        }
    }
}

/// Writes `value` through the first of `files` that takes it; returns that
/// file and what it held, or what each said.
fn set_sysctl_through(files: &[PathBuf], value: &str) -> Result<(PathBuf, String), String> {
    let mut said = Vec::new();
    for file in files {
        match set_sysctl(file, value) {
            Ok(was) => return Ok((file.clone(), was)),
            Err(e) => said.push(format!("{}: {e}", file.display())),
        }
    }
    Err(said.join("; "))
}

/// Writes `value` to a sysctl file of the calling thread's netns; returns
/// what it held.
fn set_sysctl(path: &Path, value: &str) -> io::Result<String> {
    let was = fs::read_to_string(path)?;
    fs::OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(path)?
        .write_all(value.as_bytes())?;
    Ok(was)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    const RESERVED: &str = "127.0.0.6:0";

    #[test]
    fn preserve_delivers_from_the_clients_address_without_its_port() {
        let from = Delivery::Preserve.from(
            addr("10.244.0.5:41000"),
            addr("10.244.1.10:8080"),
            addr(RESERVED),
        );
        assert_eq!(from, DeliveryFrom::Client("10.244.0.5".parse().unwrap()));
        // A v4-mapped peer (a dual-stack listener's) is its IPv4 address.
        let from = Delivery::Preserve.from(
            addr("[::ffff:10.244.0.5]:41000"),
            addr("10.244.1.10:8080"),
            addr(RESERVED),
        );
        assert_eq!(from, DeliveryFrom::Client("10.244.0.5".parse().unwrap()));
    }

    #[test]
    fn loopback_delivers_from_the_reserved_source_always() {
        let from = Delivery::Loopback.from(
            addr("10.244.0.5:41000"),
            addr("10.244.1.10:8080"),
            addr(RESERVED),
        );
        assert_eq!(from, DeliveryFrom::Reserved(addr(RESERVED)));
    }

    #[test]
    fn a_client_address_that_cannot_route_back_falls_back_to_the_reserved_source() {
        for client in ["[fd00::5]:1", "127.0.0.1:1", "0.0.0.0:1", "224.0.0.1:1"] {
            let from =
                Delivery::Preserve.from(addr(client), addr("10.244.1.10:8080"), addr(RESERVED));
            assert_eq!(from, DeliveryFrom::Reserved(addr(RESERVED)), "{client}");
        }
        let from = Delivery::Preserve.from(
            addr("[fd00::5]:1"),
            addr("[fd00::10]:8080"),
            addr("[::1]:0"),
        );
        assert_eq!(from, DeliveryFrom::Client("fd00::5".parse().unwrap()));
    }

    #[test]
    fn the_setting_reads_preserve_by_default_and_refuses_other_words() {
        use mesh_config::DatapathSettings;
        let read = |yaml: &str| serde_yaml::from_str::<DatapathSettings>(yaml);
        assert_eq!(read("{}").unwrap().source_ip, SourceIp::Preserve);
        assert_eq!(
            read("sourceIp: loopback").unwrap().source_ip,
            SourceIp::Loopback
        );
        assert_eq!(
            read("sourceIp: preserve").unwrap().source_ip,
            SourceIp::Preserve
        );
        let err = read("sourceIp: client").unwrap_err().to_string();
        assert!(
            err.contains("sourceIp") && err.contains("preserve") && err.contains("loopback"),
            "{err}"
        );
    }

    #[test]
    fn the_sysctl_is_tried_in_the_agents_proc_then_the_hosts() {
        let mut agent = AgentConfig::new("node-0");
        agent.proc_root = "/host/proc".into();
        agent.datapath.source_ip = SourceIp::Loopback;
        let s = Settings::new(&agent);
        assert_eq!(s.mode, SourceIp::Loopback);
        assert_eq!(
            s.sysctl_files,
            [
                PathBuf::from("/proc/sys/net/ipv4/tcp_fwmark_accept"),
                PathBuf::from("/host/proc/sys/net/ipv4/tcp_fwmark_accept")
            ]
        );
        agent.proc_root = "/proc".into();
        assert_eq!(Settings::new(&agent).sysctl_files.len(), 1);
        // Each file that refuses is named.
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing");
        let file = dir.path().join("tcp_fwmark_accept");
        fs::write(&file, "0\n").unwrap();
        let err = set_sysctl_through(std::slice::from_ref(&missing), "1").unwrap_err();
        assert!(err.contains(&missing.display().to_string()), "{err}");
        let (used, was) = set_sysctl_through(&[missing, file.clone()], "1").unwrap();
        assert_eq!((used, was.as_str()), (file.clone(), "0\n"));
        assert_eq!(fs::read_to_string(&file).unwrap(), "1");
    }

    #[test]
    fn each_family_of_the_pod_gets_its_rule_and_route() {
        let v4: IpAddr = "10.244.0.5".parse().unwrap();
        let v6: IpAddr = "fd00::5".parse().unwrap();
        assert_eq!(families(&[v4]), [Family::V4]);
        assert_eq!(families(&[v6, v4]), [Family::V4, Family::V6]);
        assert!(families(&[]).is_empty());
        let r = rule(Family::V6);
        assert_eq!(
            (r.mark, r.mask, r.table),
            (DELIVERY_MARK, DELIVERY_MARK_MASK, ROUTE_TABLE)
        );
        assert_eq!(route(Family::V4).oif, LOOPBACK_IFINDEX);
    }
}
