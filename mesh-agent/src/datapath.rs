//! The kernel side as the agent drives it: load the programs, attach them at
//! the node's cgroup root, pin everything under `<bpffs>/mesh/<node>`, and
//! adopt what a previous agent pinned. Pins are what keep enrolled pods
//! failing closed while no agent runs: the programs stay attached, and with
//! nobody listening a redirected connect is refused and an inbound SYN dropped.
use std::{
    borrow::BorrowMut,
    collections::BTreeSet,
    fs::{self, File},
    io,
    net::{IpAddr, SocketAddr},
    os::fd::{AsFd, AsRawFd},
    path::{Path, PathBuf},
    sync::Mutex,
};

use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, HashMap, IterableMap, Map, MapData, PerCpuArray, RingBuf, SockHash},
    programs::{
        CgroupAttachMode, CgroupSockAddr, SkLookup, SkMsg, SockOps,
        links::{FdLink, LinkError, PinnedLink},
    },
};
use mesh_common::{
    DatapathConfig, DeliveryKey, FlowRecord, ListenerKey, OrigDst, PodAddrKey, SockKey, counter,
    limits, names,
};
use mesh_config::AgentConfig;

use crate::preflight::CgroupCensus;

/// The programs, built by `cargo xtask build-ebpf` (or mesh-agent's build.rs).
pub(crate) static EBPF_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/mesh-ebpf.o"));

const CGROUP_PROGRAMS: [&str; 3] = [
    names::PROG_CONNECT4,
    names::PROG_CONNECT6,
    names::PROG_SOCKOPS,
];

#[derive(Debug, thiserror::Error)]
pub enum DatapathError {
    #[error("pin directory {path}: {source}")]
    PinDir { path: PathBuf, source: io::Error },
    #[error("cgroupRoot {path}: {source}")]
    Cgroup { path: PathBuf, source: io::Error },
    #[error("loading the eBPF object failed: {0}")]
    Load(#[from] aya::EbpfError),
    #[error("program {name}: {source}")]
    Program {
        name: &'static str,
        source: aya::programs::ProgramError,
    },
    #[error("pinned link {path}: {reason}")]
    Link { path: PathBuf, reason: String },
    #[error("map {name}: {source}")]
    Map {
        name: &'static str,
        source: aya::maps::MapError,
    },
    #[error("map {0} missing from the eBPF object (stale build? run `cargo xtask build-ebpf`)")]
    MapMissing(&'static str),
    #[error(transparent)]
    AgentCgroup(#[from] crate::preflight::PreflightError),
    #[error(transparent)]
    LinkUpdate(#[from] crate::link_update::LinkUpdateError),
    #[error(
        "map {path}: pinned by an agent whose kernel/user layout differs ({found}-byte values, this agent's are {expected}); its programs cannot be adopted: run `mesh-agent uninstall --config <file>` on this node, then start the agent (enrolled pods fail closed meanwhile)"
    )]
    PinnedLayout {
        path: PathBuf,
        found: u32,
        expected: usize,
    },
}

fn map_err(name: &'static str) -> impl FnOnce(aya::maps::MapError) -> DatapathError {
    move |source| DatapathError::Map { name, source }
}

fn link_err<E: std::fmt::Display>(path: &Path) -> impl FnOnce(E) -> DatapathError + '_ {
    move |e| DatapathError::Link {
        path: path.to_owned(),
        reason: e.to_string(),
    }
}

fn prog_err(name: &'static str) -> impl FnOnce(aya::programs::ProgramError) -> DatapathError {
    move |source| DatapathError::Program { name, source }
}

struct Maps {
    counters: PerCpuArray<MapData, u64>,
    agent_cgroups: HashMap<MapData, u64, u8>,
    enrolled: HashMap<MapData, u64, u8>,
    pod_addrs: HashMap<MapData, PodAddrKey, u8>,
    listeners: SockHash<MapData, ListenerKey>,
}

/// Handles only for counting entries. Counting walks a map's keys, one
/// syscall per entry and up to 65536 entries a map; with handles of its own
/// the walk holds neither `maps`, which enrolment takes, nor `orig`, which
/// every accepted connection takes. The maps user space only counts live
/// here alone; the others are opened a second time from their pins.
struct Fill {
    enrolled: HashMap<MapData, u64, u8>,
    pod_addrs: HashMap<MapData, PodAddrKey, u8>,
    listeners: SockHash<MapData, ListenerKey>,
    orig: HashMap<MapData, SockKey, OrigDst>,
    splice: SockHash<MapData, SockKey>,
    flows_live: HashMap<MapData, u64, FlowRecord>,
    agent_cgroups: HashMap<MapData, u64, u8>,
}

/// What the admin API and `mesh status` show of the kernel side.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct DatapathInfo {
    pub pin_dir: PathBuf,
    pub adopted: bool,
    pub programs: Vec<ProgramInfo>,
    /// Node-level programs whose attachment is in place (of `programs.len()`).
    pub programs_attached: usize,
    /// Enrolled pods' sk_lookup links pinned under `pods/`.
    pub pod_links: usize,
    pub maps: Vec<MapFill>,
    pub counters: std::collections::BTreeMap<String, u64>,
    /// Pinned maps whose layout differs from this agent's programs' (the
    /// old programs then stay attached), each said in full.
    #[serde(default)]
    pub mismatched_maps: Vec<String>,
}

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct ProgramInfo {
    pub name: String,
    pub kind: String,
    pub attached_to: String,
    pub attached: bool,
}

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct MapFill {
    pub name: String,
    pub entries: usize,
    pub capacity: u32,
}

/// What the datapath holds for one enrolled pod.
#[derive(Debug, Clone)]
pub struct PodDatapath {
    pub key: String,
    pub netns_cookie: u64,
    pub ips: Vec<IpAddr>,
}

pub struct Datapath {
    pin_dir: PathBuf,
    adopted: bool,
    ebpf: Mutex<Ebpf>,
    maps: Mutex<Maps>,
    /// One lookup and one delete per accepted connection; nothing else
    /// takes this lock.
    orig: Mutex<HashMap<MapData, SockKey, OrigDst>>,
    /// Two writes per delivery from a client's address; nothing else
    /// takes this lock.
    deliveries: Mutex<HashMap<MapData, DeliveryKey, u8>>,
    fill: Mutex<Fill>,
    flow_events: Mutex<Option<RingBuf<MapData>>>,
    logger: Mutex<Option<aya_log::EbpfLogger<&'static dyn log::Log>>>,
    _cgroup_links: Vec<PinnedLink>,
    /// This agent's `MESH_CONFIG`, not yet written because another agent
    /// still serves (`open_beside`); written by `claim`.
    deferred_config: Mutex<Option<DatapathConfig>>,
    /// Pinned maps of another layout than this agent's programs read:
    /// while there are any, adopted links keep the programs they run.
    mismatched_maps: Vec<crate::link_update::MapMismatch>,
    /// This agent's cgroup id: its connects are exempt from capture.
    own_cgroup: u64,
    /// The cgroup id of the agent this one takes over from (`open_beside`),
    /// as it wrote it in `MESH_CONFIG`; 0 when none.
    predecessor_cgroup: u64,
    /// `MESH_AGENT_CGROUPS`'s size, as the pinned map has it.
    agent_cgroups_capacity: u32,
}

impl Datapath {
    /// Loads the programs and attaches them at the cgroup root, or adopts the
    /// links a previous agent pinned. No link is pinned unless all of them
    /// attached, so a failed start leaves no half-attached datapath (maps
    /// may stay pinned; without programs they do nothing).
    pub fn open(agent: &AgentConfig, pin_dir: &Path) -> Result<Self, DatapathError> {
        Self::open_beside(agent, pin_dir, false)
    }

    /// As `open`; `running`: another agent of this node still serves (a
    /// hand-over, `crate::handover`), so the deliveries in
    /// `MESH_DELIVERIES` are its own in flight, not stale, and stay.
    pub fn open_beside(
        agent: &AgentConfig,
        pin_dir: &Path,
        running: bool,
    ) -> Result<Self, DatapathError> {
        let links_dir = pin_dir.join("links");
        for dir in [pin_dir, &links_dir, &pin_dir.join("pods")] {
            fs::create_dir_all(dir).map_err(|source| DatapathError::PinDir {
                path: dir.to_owned(),
                source,
            })?;
        }
        // Known before anything is loaded: without it the agent's own
        // upstream connects would be redirected back to itself.
        let own = crate::preflight::agent_cgroup(&agent.cgroup_root)?;
        tracing::info!(
            dir = %own.dir.display(),
            id = own.id,
            "agent cgroup: connects from it are not redirected"
        );
        check_pinned_config(pin_dir)?;
        // Read before the loader reuses the pinned maps as they are.
        let mismatched_maps = crate::link_update::pinned_mismatches(pin_dir)?;
        if !mismatched_maps.is_empty() {
            let maps: Vec<String> = mismatched_maps.iter().map(ToString::to_string).collect();
            tracing::error!(
                maps = %maps.join("; "),
                "the pinned maps are not laid out as this agent's programs read them: the attached programs are kept, none is replaced by this agent's; to run this agent's programs, run `mesh-agent uninstall --config <file>` on this node, then start the agent (enrolled pods fail closed meanwhile)"
            );
        }
        let log_level: u8 = if agent.datapath.bpf_log { 5 } else { 0 };
        let mut ebpf = EbpfLoader::new()
            .default_map_pin_directory(pin_dir)
            .override_global("AYA_LOG_LEVEL", &log_level, false)
            .load(EBPF_OBJECT)?;

        let logger = if agent.datapath.bpf_log {
            match aya_log::EbpfLogger::init(&mut ebpf) {
                Ok(l) => Some(l),
                Err(e) => {
                    tracing::warn!(error = %e, "kernel program logging unavailable");
                    None
                }
            }
        } else {
            None
        };

        let cgroup = File::open(&agent.cgroup_root).map_err(|source| DatapathError::Cgroup {
            path: agent.cgroup_root.clone(),
            source,
        })?;

        for name in [names::PROG_CONNECT4, names::PROG_CONNECT6] {
            program_mut::<CgroupSockAddr>(&mut ebpf, name)?
                .load()
                .map_err(prog_err(name))?;
        }
        program_mut::<SockOps>(&mut ebpf, names::PROG_SOCKOPS)?
            .load()
            .map_err(prog_err(names::PROG_SOCKOPS))?;
        program_mut::<SkMsg>(&mut ebpf, names::PROG_SPLICE)?
            .load()
            .map_err(prog_err(names::PROG_SPLICE))?;
        program_mut::<SkLookup>(&mut ebpf, names::PROG_INBOUND)?
            .load()
            .map_err(prog_err(names::PROG_INBOUND))?;

        let mut config: Array<MapData, DatapathConfig> = take_map(&mut ebpf, names::CONFIG)?;
        // The running agent's cgroup, as it wrote it: still exempt once this
        // agent claims, while it drains.
        let predecessor_cgroup = if running {
            config
                .get(&0, 0)
                .map_err(map_err(names::CONFIG))?
                .agent_cgroup
        } else {
            0
        };
        let mut agent_cgroups: HashMap<MapData, u64, u8> =
            take_map(&mut ebpf, names::AGENT_CGROUPS)?;
        // The pinned map's own size, not this build's constant: the loader
        // reuses a pinned map whatever its size, and a set of another
        // size is read by the programs all the same.
        let agent_cgroups_capacity = agent_cgroups
            .map()
            .info()
            .map_err(map_err(names::AGENT_CGROUPS))?
            .max_entries();
        // Splicing needs the sk_msg program on the sockhash before any socket
        // enters it. The attachment lives with the pinned map, so it outlasts
        // this agent; a later agent's attach replaces it.
        let splice: SockHash<MapData, SockKey> = take_map(&mut ebpf, names::SPLICE)?;
        {
            let prog = program_mut::<SkMsg>(&mut ebpf, names::PROG_SPLICE)?;
            let id = prog
                .attach(splice.fd())
                .map_err(prog_err(names::PROG_SPLICE))?;
            let link = prog.take_link(id).map_err(prog_err(names::PROG_SPLICE))?;
            std::mem::forget(link);
        }

        // Attach (or adopt) the cgroup programs. New links are pinned only
        // after all three attached.
        let mut adopted_links = Vec::new();
        let mut new_links: Vec<(PathBuf, FdLink)> = Vec::new();
        for name in CGROUP_PROGRAMS {
            let path = links_dir.join(name);
            if path.exists() {
                let link = PinnedLink::from_pin(&path).map_err(link_err(&path))?;
                adopted_links.push(link);
                continue;
            }
            let fd_link = attach_cgroup(&mut ebpf, name, &cgroup)?;
            new_links.push((path, fd_link));
        }
        let adopted = !adopted_links.is_empty();
        let mut links = adopted_links;
        for (path, fd_link) in new_links {
            let pinned = fd_link.pin(&path).map_err(link_err(&path))?;
            links.push(pinned);
        }

        let own_config = DatapathConfig {
            redirect: 1,
            splice: u32::from(agent.datapath.splice),
            flows: u32::from(agent.datapath.flows),
            _pad: 0,
            agent_cgroup: own.id,
        };
        // The running agent's cgroup stays in `MESH_CONFIG` until it has
        // stopped accepting (`claim`). This agent joins the exempt set just
        // before it asks it to stop (`join_exemption`): it connects from no
        // pod before, and one that never gets that far leaves nothing behind.
        let deferred_config = if running {
            Some(own_config)
        } else {
            let change = fresh_exemption(
                &mut agent_cgroups,
                &agent.cgroup_root,
                own.id,
                agent_cgroups_capacity,
            )?;
            if !change.remove.is_empty() {
                tracing::info!(
                    removed = ?change.remove,
                    evicted = ?change.evicted,
                    "cgroups no longer exempt from redirection: agents that are gone (and, the set being full, the oldest draining ones)"
                );
            }
            config
                .set(0, own_config, 0)
                .map_err(map_err(names::CONFIG))?;
            None
        };

        drop(config);
        let maps = Maps {
            counters: take_map(&mut ebpf, names::COUNTERS)?,
            agent_cgroups,
            enrolled: take_map(&mut ebpf, names::ENROLLED)?,
            pod_addrs: take_map(&mut ebpf, names::POD_ADDRS)?,
            listeners: take_map(&mut ebpf, names::INBOUND_LISTENERS)?,
        };
        let fill = Fill {
            enrolled: pinned_map(pin_dir, names::ENROLLED)?,
            pod_addrs: pinned_map(pin_dir, names::POD_ADDRS)?,
            listeners: pinned_map(pin_dir, names::INBOUND_LISTENERS)?,
            orig: pinned_map(pin_dir, names::ORIG_DST_BY_TUPLE)?,
            splice,
            flows_live: take_map(&mut ebpf, names::FLOWS_LIVE)?,
            agent_cgroups: pinned_map(pin_dir, names::AGENT_CGROUPS)?,
        };
        let orig = take_map(&mut ebpf, names::ORIG_DST_BY_TUPLE)?;
        let mut deliveries: HashMap<MapData, DeliveryKey, u8> =
            take_map(&mut ebpf, names::DELIVERIES)?;
        // A previous agent that stopped mid-delivery left its entries: each
        // would let a SYN with that 4-tuple past capture.
        let stale: Vec<DeliveryKey> = if running {
            Vec::new()
        } else {
            deliveries.keys().filter_map(Result::ok).collect()
        };
        for key in &stale {
            remove_if_present(&mut deliveries, key, names::DELIVERIES)?;
        }
        let flow_events = take_map(&mut ebpf, names::FLOW_EVENTS)?;
        let datapath = Self {
            pin_dir: pin_dir.to_owned(),
            adopted,
            ebpf: Mutex::new(ebpf),
            maps: Mutex::new(maps),
            orig: Mutex::new(orig),
            deliveries: Mutex::new(deliveries),
            fill: Mutex::new(fill),
            flow_events: Mutex::new(Some(flow_events)),
            logger: Mutex::new(logger),
            _cgroup_links: links,
            deferred_config: Mutex::new(deferred_config),
            mismatched_maps,
            own_cgroup: own.id,
            predecessor_cgroup,
            agent_cgroups_capacity,
        };
        // Beside a running agent, its programs stay until it has stopped
        // accepting (`claim`).
        if !running {
            datapath.upgrade_links();
        }
        Ok(datapath)
    }

    /// Before the agent it takes over from is asked to stop: adds this
    /// agent's cgroup to the exempt set beside that agent's (there
    /// already, unless an older agent kept no set), which stays while it
    /// drains. Done before, so that nothing of it can fail once that agent
    /// has stopped accepting; early exemption exempts nothing else, as
    /// only this agent runs in its cgroup. `withdraw_exemption` undoes it
    /// when the take-over is abandoned. Nothing to do after `open`.
    pub fn join_exemption(&self) -> Result<(), DatapathError> {
        if self.deferred_config.lock().unwrap().is_none() {
            return Ok(());
        }
        let mut maps = self.maps.lock().unwrap();
        let current = exempt_cgroups(&maps.agent_cgroups)?;
        let change = exempt_joined(
            &current,
            self.own_cgroup,
            self.predecessor_cgroup,
            self.agent_cgroups_capacity as usize,
        );
        if !change.evicted.is_empty() {
            tracing::warn!(
                evicted = ?change.evicted,
                capacity = self.agent_cgroups_capacity,
                "more agents drain on this node than the exempt set holds: the oldest ones' connects from pods are captured from now on"
            );
        }
        apply_exemption(&mut maps.agent_cgroups, &change)?;
        tracing::info!(
            own = self.own_cgroup,
            predecessor = self.predecessor_cgroup,
            "connects from this agent's and the running agent's cgroups are not redirected"
        );
        Ok(())
    }

    /// The take-over is abandoned: this agent's cgroup leaves the exempt
    /// set it joined (`join_exemption`), unless it is the running agent's
    /// too. Nothing to do once it has claimed, or after `open`.
    pub fn withdraw_exemption(&self) -> Result<(), DatapathError> {
        if self.deferred_config.lock().unwrap().is_none() {
            return Ok(());
        }
        self.forget_cgroup(self.own_cgroup, None, "this agent never took over")
    }

    /// Once the agent it takes over from has stopped accepting: moves the
    /// links to this agent's programs and writes the `MESH_CONFIG` that
    /// `open_beside` held back. The exempt set already holds both agents
    /// (`join_exemption`). Nothing to do after `open`.
    pub fn claim(&self) -> Result<(), DatapathError> {
        let Some(own) = self.deferred_config.lock().unwrap().take() else {
            return Ok(());
        };
        self.upgrade_links();
        // Programs of an older agent (kept when a pinned map's layout
        // differs) read the exempt cgroup from here alone.
        let mut config: Array<MapData, DatapathConfig> = pinned_map(&self.pin_dir, names::CONFIG)?;
        config.set(0, own, 0).map_err(map_err(names::CONFIG))?;
        Ok(())
    }

    /// The agent this one took over from has exited: its cgroup is exempt
    /// no longer (unless it is this agent's, or the serving agent's).
    pub fn predecessor_exited(&self) -> Result<(), DatapathError> {
        self.forget_cgroup(
            self.predecessor_cgroup,
            Some(self.own_cgroup),
            "the agent this one took over from exited",
        )
    }

    /// This agent stops (after its drain): its cgroup is exempt no longer,
    /// unless it is the serving agent's (no successor took over, or one
    /// runs in the same cgroup).
    pub fn leave_exemption(&self) -> Result<(), DatapathError> {
        self.forget_cgroup(self.own_cgroup, None, "this agent exits")
    }

    /// Removes `gone` from the exempt set, unless it is `also_keep` or the
    /// serving agent's (as `MESH_CONFIG` names it now).
    fn forget_cgroup(
        &self,
        gone: u64,
        also_keep: Option<u64>,
        why: &'static str,
    ) -> Result<(), DatapathError> {
        let config: Array<MapData, DatapathConfig> = pinned_map(&self.pin_dir, names::CONFIG)?;
        let serving = config
            .get(&0, 0)
            .map_err(map_err(names::CONFIG))?
            .agent_cgroup;
        let mut maps = self.maps.lock().unwrap();
        let keep: Vec<u64> = std::iter::once(serving).chain(also_keep).collect();
        let current = exempt_cgroups(&maps.agent_cgroups)?;
        let change = exempt_without(&current, gone, &keep);
        if change.remove.is_empty() {
            return Ok(());
        }
        apply_exemption(&mut maps.agent_cgroups, &change)?;
        tracing::info!(
            cgroup = gone,
            reason = why,
            "cgroup no longer exempt from redirection"
        );
        Ok(())
    }

    /// Pinned maps whose layout is not the one this agent's programs
    /// read; while there are any, the attached programs are kept.
    pub fn mismatched_maps(&self) -> &[crate::link_update::MapMismatch] {
        &self.mismatched_maps
    }

    /// Moves every pinned link (the node's cgroup programs, each pod's
    /// sk_lookup) to this agent's program where it runs another one
    /// (`link_update`). A link that cannot be moved keeps the program it
    /// runs, which works on maps of this layout, and is named in the log;
    /// the next agent start tries again. Failing the start instead would
    /// leave the node with no agent at all.
    fn upgrade_links(&self) {
        use crate::link_update::{Decision, LinkUpdateError, update};
        let links_dir = self.pin_dir.join("links");
        let mut links: Vec<(PathBuf, &'static str)> = CGROUP_PROGRAMS
            .iter()
            .map(|name| (links_dir.join(name), *name))
            .collect();
        links.extend(
            fs::read_dir(self.pin_dir.join("pods"))
                .into_iter()
                .flatten()
                .flatten()
                .map(|e| (e.path().join("sk_lookup"), names::PROG_INBOUND)),
        );
        let ebpf = self.ebpf.lock().unwrap();
        let (mut replaced, mut kept_old, mut failed) = (0usize, 0usize, 0usize);
        for (path, name) in links.into_iter().filter(|(p, _)| p.exists()) {
            let Some(fd) = ebpf.program(name).and_then(|p| p.fd().ok()) else {
                tracing::error!(program = name, "program not loaded; its links keep theirs");
                failed += 1;
                continue;
            };
            match update(&path, name, fd.as_fd(), &self.mismatched_maps) {
                Ok(Decision::Keep) => {}
                Ok(Decision::Replace { .. }) => replaced += 1,
                Ok(Decision::KeepOld { .. }) => kept_old += 1,
                // A pod unenrolled meanwhile: nothing left to move.
                Err(LinkUpdateError::Read { source, .. })
                    if source.kind() == io::ErrorKind::NotFound => {}
                Err(e) => {
                    tracing::error!(error = %e, "link keeps the program it runs");
                    failed += 1;
                }
            }
        }
        if replaced + kept_old + failed > 0 {
            tracing::info!(
                replaced,
                kept_old,
                failed,
                "pinned links checked against this agent's programs"
            );
        }
    }

    /// Whether this agent found a previous agent's pinned links and kept them.
    pub fn adopted(&self) -> bool {
        self.adopted
    }

    /// A pod's pins are named by its netns cookie, not its name: a pod
    /// recreated under the same name (a StatefulSet's, while no agent ran)
    /// has a new netns and so a new directory, and is attached afresh
    /// instead of adopting a link that holds its predecessor's netns.
    /// Cookies are never reused while the machine runs, and pins do not
    /// outlive it.
    fn pod_pin_dir(&self, netns_cookie: u64) -> PathBuf {
        self.pin_dir.join("pods").join(netns_cookie.to_string())
    }

    /// Puts a pod under the datapath: its netns into the enrolled map, its
    /// addresses into the own-address map, and sk_lookup onto its netns
    /// (adopting a pinned link when one exists). Idempotent.
    pub fn enroll(
        &self,
        pod: &PodDatapath,
        netns: &impl std::os::fd::AsFd,
    ) -> Result<(), DatapathError> {
        let dir = self.pod_pin_dir(pod.netns_cookie);
        fs::create_dir_all(&dir).map_err(|source| DatapathError::PinDir {
            path: dir.clone(),
            source,
        })?;
        let link_path = dir.join("sk_lookup");
        if !link_path.exists() {
            let mut ebpf = self.ebpf.lock().unwrap();
            let prog = program_mut::<SkLookup>(&mut ebpf, names::PROG_INBOUND)?;
            let id = prog.attach(netns).map_err(prog_err(names::PROG_INBOUND))?;
            let link = prog.take_link(id).map_err(prog_err(names::PROG_INBOUND))?;
            let fd_link: FdLink = link.into();
            fd_link.pin(&link_path).map_err(link_err(&link_path))?;
        }
        let mut maps = self.maps.lock().unwrap();
        for ip in &pod.ips {
            let key = PodAddrKey {
                netns: pod.netns_cookie,
                ip: ip_bytes(*ip),
            };
            maps.pod_addrs
                .insert(key, 1, 0)
                .map_err(map_err(names::POD_ADDRS))?;
        }
        // The enrolled entry goes last: from here on the pod's connects are redirected.
        maps.enrolled
            .insert(pod.netns_cookie, 1, 0)
            .map_err(map_err(names::ENROLLED))?;
        Ok(())
    }

    /// Makes `listener` the target of sk_lookup for inbound connections to `ip`.
    pub fn register_inbound_listener<L: AsRawFd>(
        &self,
        ip: IpAddr,
        listener: &L,
    ) -> Result<(), DatapathError> {
        let mut maps = self.maps.lock().unwrap();
        maps.listeners
            .insert(ListenerKey { ip: ip_bytes(ip) }, listener.as_raw_fd(), 0)
            .map_err(map_err(names::INBOUND_LISTENERS))
    }

    /// Takes a pod out: its connects go direct again, sk_lookup is detached,
    /// and no entry of it remains.
    pub fn unenroll(&self, pod: &PodDatapath) -> Result<(), DatapathError> {
        {
            let mut maps = self.maps.lock().unwrap();
            // First: stop redirecting, so nothing new is sent to listeners about to close.
            remove_if_present(&mut maps.enrolled, &pod.netns_cookie, names::ENROLLED)?;
            for ip in &pod.ips {
                let key = PodAddrKey {
                    netns: pod.netns_cookie,
                    ip: ip_bytes(*ip),
                };
                remove_if_present(&mut maps.pod_addrs, &key, names::POD_ADDRS)?;
                match maps.listeners.remove(&ListenerKey { ip: ip_bytes(*ip) }) {
                    Ok(()) => {}
                    Err(e) if is_not_found(&e) => {}
                    Err(e) => return Err(map_err(names::INBOUND_LISTENERS)(e)),
                }
            }
        }
        self.remove_pod_pins(&self.pod_pin_dir(pod.netns_cookie))
    }

    fn remove_pod_pins(&self, dir: &Path) -> Result<(), DatapathError> {
        let dir = dir.to_owned();
        let link_path = dir.join("sk_lookup");
        if link_path.exists() {
            crate::pinned_link::remove(&link_path).map_err(|source| DatapathError::PinDir {
                path: link_path.clone(),
                source,
            })?;
        }
        match fs::remove_dir(&dir) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(source) => Err(DatapathError::PinDir { path: dir, source }),
        }
    }

    /// Removes whatever a previous agent left for pods that are no longer
    /// wanted: enrolled and address entries of other netns cookies, and
    /// pinned sk_lookup links of other pods. Returns what was removed.
    pub fn sweep(&self, keep: &[PodDatapath]) -> Result<Vec<String>, DatapathError> {
        let mut removed = Vec::new();
        {
            let mut maps = self.maps.lock().unwrap();
            let stale: Vec<u64> = maps
                .enrolled
                .keys()
                .filter_map(Result::ok)
                .filter(|c| !keep.iter().any(|p| p.netns_cookie == *c))
                .collect();
            for cookie in stale {
                remove_if_present(&mut maps.enrolled, &cookie, names::ENROLLED)?;
                removed.push(format!("netns cookie {cookie}"));
            }
            let stale: Vec<PodAddrKey> = maps
                .pod_addrs
                .keys()
                .filter_map(Result::ok)
                .filter(|k| !keep.iter().any(|p| p.netns_cookie == k.netns))
                .collect();
            for key in stale {
                remove_if_present(&mut maps.pod_addrs, &key, names::POD_ADDRS)?;
            }
        }
        let pods_dir = self.pin_dir.join("pods");
        let entries = fs::read_dir(&pods_dir).map_err(|source| DatapathError::PinDir {
            path: pods_dir.clone(),
            source,
        })?;
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            // Also removes directories named the way older agents named
            // them (`<namespace>_<name>`): their links are replaced by
            // cookie-named ones as the pods enroll.
            if !keep.iter().any(|p| p.netns_cookie.to_string() == name) {
                self.remove_pod_pins(&entry.path())?;
                removed.push(format!("pinned sk_lookup link of netns {name}"));
            }
        }
        Ok(removed)
    }

    /// The original destination of a connection the outbound listener
    /// accepted, found by the app socket's 4-tuple in the pod's netns, and
    /// taken out of the map (see `take_orig`). Call once per accepted
    /// connection: a second call finds nothing.
    pub fn orig_dst(
        &self,
        netns_cookie: u64,
        peer: SocketAddr,
        local: SocketAddr,
    ) -> Option<SocketAddr> {
        let key = orig_key(netns_cookie, peer, local);
        let value = take_orig(&mut self.orig.lock().unwrap(), &key)?;
        Some(orig_addr(value))
    }

    /// Lets the SYN of a delivery from `from` (a client's address, the
    /// socket already bound) to `to` (the app) past sk_lookup, until
    /// `delivery_connected`. Without it the SYN would reach the agent's
    /// own inbound listener.
    pub fn expect_delivery(&self, from: SocketAddr, to: SocketAddr) -> Result<(), DatapathError> {
        self.deliveries
            .lock()
            .unwrap()
            .insert(delivery_key(from, to), 1, 0)
            .map_err(map_err(names::DELIVERIES))
    }

    /// The delivery from `from` to `to` has connected, or given up.
    pub fn delivery_connected(&self, from: SocketAddr, to: SocketAddr) {
        let key = delivery_key(from, to);
        if let Err(e) = remove_if_present(
            &mut self.deliveries.lock().unwrap(),
            &key,
            names::DELIVERIES,
        ) {
            tracing::warn!(%from, %to, error = %e, "delivery entry not deleted");
        }
    }

    /// The kernel programs' counters, summed over CPUs.
    pub fn counters(&self) -> std::collections::BTreeMap<&'static str, u64> {
        let maps = self.maps.lock().unwrap();
        (0..counter::COUNT)
            .map(|i| {
                let sum = maps
                    .counters
                    .get(&i, 0)
                    .map(|v| v.iter().sum())
                    .unwrap_or(0);
                (counter::NAMES[i as usize], sum)
            })
            .collect()
    }

    /// Programs, links and how full each map is. Counting walks the hash
    /// maps' keys, tens of thousands of syscalls when they are full: for a
    /// thread of its own (the health sampler), never the proxy's runtime.
    pub fn info(&self, cgroup_root: &Path) -> DatapathInfo {
        let links = self.pin_dir.join("links");
        let mut programs: Vec<ProgramInfo> = CGROUP_PROGRAMS
            .iter()
            .map(|name| ProgramInfo {
                name: (*name).to_owned(),
                kind: if *name == names::PROG_SOCKOPS {
                    "sock_ops"
                } else {
                    "cgroup_sock_addr"
                }
                .into(),
                attached_to: cgroup_root.display().to_string(),
                attached: links.join(name).exists(),
            })
            .collect();
        programs.push(ProgramInfo {
            name: names::PROG_SPLICE.into(),
            kind: "sk_msg".into(),
            attached_to: names::SPLICE.into(),
            // Attached to the pinned sockhash when the datapath opened.
            attached: self.pin_dir.join(names::SPLICE).exists(),
        });
        let pod_links = fs::read_dir(self.pin_dir.join("pods"))
            .map(|d| {
                d.filter_map(Result::ok)
                    .filter(|e| e.path().join("sk_lookup").exists())
                    .count()
            })
            .unwrap_or(0);
        programs.push(ProgramInfo {
            name: names::PROG_INBOUND.into(),
            kind: "sk_lookup".into(),
            attached_to: format!("{pod_links} pod network namespaces"),
            attached: true,
        });
        let maps = {
            let m = self.fill.lock().unwrap();
            let fill = |name: &str, entries: usize, capacity: u32| MapFill {
                name: name.to_owned(),
                entries,
                capacity,
            };
            vec![
                fill(names::ENROLLED, m.enrolled.keys().count(), limits::ENROLLED),
                fill(
                    names::POD_ADDRS,
                    m.pod_addrs.keys().count(),
                    limits::POD_ADDRS,
                ),
                fill(
                    names::INBOUND_LISTENERS,
                    m.listeners.keys().count(),
                    limits::INBOUND_LISTENERS,
                ),
                fill(
                    names::ORIG_DST_BY_TUPLE,
                    m.orig.keys().count(),
                    limits::ORIG_DST,
                ),
                fill(names::SPLICE, m.splice.keys().count(), limits::SPLICE),
                fill(
                    names::FLOWS_LIVE,
                    m.flows_live.keys().count(),
                    limits::FLOWS_LIVE,
                ),
                fill(
                    names::AGENT_CGROUPS,
                    m.agent_cgroups.keys().count(),
                    self.agent_cgroups_capacity,
                ),
            ]
        };
        let attached = programs.iter().filter(|p| p.attached).count();
        DatapathInfo {
            pin_dir: self.pin_dir.clone(),
            adopted: self.adopted,
            programs,
            programs_attached: attached,
            pod_links,
            maps,
            counters: self
                .counters()
                .into_iter()
                .map(|(k, v)| (k.to_owned(), v))
                .collect(),
            mismatched_maps: self
                .mismatched_maps
                .iter()
                .map(ToString::to_string)
                .collect(),
        }
    }

    /// The closed-flow ring buffer; taken once, by the flow reader.
    pub fn take_flow_events(&self) -> Option<RingBuf<MapData>> {
        self.flow_events.lock().unwrap().take()
    }

    /// The kernel programs' log reader, when `bpfLog` is on; taken once.
    pub fn take_logger(&self) -> Option<aya_log::EbpfLogger<&'static dyn log::Log>> {
        self.logger.lock().unwrap().take()
    }
}

/// How the set of exempt agent cgroups (`MESH_AGENT_CGROUPS`) changes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExemptChange {
    pub insert: Vec<u64>,
    pub remove: Vec<u64>,
    /// Of `remove`, the draining agents pushed out because the set is full.
    pub evicted: Vec<u64>,
}

/// A fresh start (no agent answered the hand-over): this agent's cgroup
/// joins the set, and the ids whose cgroups `census` found gone or empty
/// (agents that crashed) leave it. Any other id stays: an agent that
/// handed over may still drain while its successor has crashed, and its
/// connects from pods' netns must not be captured. Keeping an id in
/// doubt is safe, as a cgroup id is not reused before the node reboots:
/// the id of a cgroup that is gone exempts nothing. Past `capacity`, the
/// lowest of the others go, as in `exempt_joined`.
pub fn exempt_fresh(
    current: &BTreeSet<u64>,
    own: u64,
    census: &CgroupCensus,
    capacity: usize,
) -> ExemptChange {
    let gone: Vec<u64> = current
        .iter()
        .copied()
        .filter(|id| *id != own && census.is_gone(*id))
        .collect();
    let kept: BTreeSet<u64> = current
        .iter()
        .copied()
        .filter(|id| !gone.contains(id))
        .collect();
    let joined = exempt_joined(&kept, own, 0, capacity);
    ExemptChange {
        insert: joined.insert,
        remove: gone.into_iter().chain(joined.remove).collect(),
        evicted: joined.evicted,
    }
}

/// A successor claims: its cgroup and its predecessor's are in the set
/// (the predecessor's may be missing: an older agent kept no set), beside
/// any agent still draining from before. Past `capacity`, the lowest ids
/// (the oldest cgroups: the kernel hands ids out in increasing order) of
/// the others go.
pub fn exempt_joined(
    current: &BTreeSet<u64>,
    own: u64,
    predecessor: u64,
    capacity: usize,
) -> ExemptChange {
    let wanted: Vec<u64> = [predecessor, own]
        .into_iter()
        .filter(|id| *id != 0)
        .collect::<BTreeSet<u64>>()
        .into_iter()
        .collect();
    let insert: Vec<u64> = wanted
        .iter()
        .copied()
        .filter(|id| !current.contains(id))
        .collect();
    let over = (current.len() + insert.len()).saturating_sub(capacity);
    let evicted: Vec<u64> = current
        .iter()
        .copied()
        .filter(|id| !wanted.contains(id))
        .take(over)
        .collect();
    ExemptChange {
        insert,
        remove: evicted.clone(),
        evicted,
    }
}

/// An agent's cgroup in the set (`current`) that is exempt no longer,
/// unless it is one of `keep` (this agent's, the serving agent's: two
/// agents share one cgroup when one is restarted in place, as the test
/// bed's `start_agent` does).
pub fn exempt_without(current: &BTreeSet<u64>, gone: u64, keep: &[u64]) -> ExemptChange {
    ExemptChange {
        remove: (current.contains(&gone) && !keep.contains(&gone))
            .then_some(gone)
            .into_iter()
            .collect(),
        ..ExemptChange::default()
    }
}

fn exempt_cgroups(map: &HashMap<MapData, u64, u8>) -> Result<BTreeSet<u64>, DatapathError> {
    map.keys()
        .collect::<Result<_, _>>()
        .map_err(map_err(names::AGENT_CGROUPS))
}

/// A fresh start's change of the exempt set (`exempt_fresh`), applied;
/// which agents' cgroups are still alive comes from a walk of the cgroup
/// tree under `cgroup_root`. An agent's cgroup outside it is not found,
/// and rightly taken out: the programs attached there never see its
/// connects. When the walk fails, every id stays.
fn fresh_exemption(
    map: &mut HashMap<MapData, u64, u8>,
    cgroup_root: &Path,
    own: u64,
    capacity: u32,
) -> Result<ExemptChange, DatapathError> {
    let current = exempt_cgroups(map)?;
    let others: BTreeSet<u64> = current.iter().copied().filter(|id| *id != own).collect();
    let census = match crate::preflight::cgroup_census(cgroup_root, &others) {
        Ok(census) => census,
        Err(e) => {
            tracing::warn!(
                root = %cgroup_root.display(),
                error = %e,
                kept = ?others,
                "cannot tell which agents' cgroups still hold processes; every exempt cgroup stays so (a cgroup that is gone exempts nothing)"
            );
            CgroupCensus::unknown()
        }
    };
    if !census.complete {
        tracing::info!(
            root = %cgroup_root.display(),
            "the cgroup tree is larger than the walk looks at: exempt cgroups it did not find stay so"
        );
    }
    let change = exempt_fresh(&current, own, &census, capacity as usize);
    apply_exemption(map, &change)?;
    Ok(change)
}

/// Removes first, so a full set has room for what is inserted.
fn apply_exemption(
    map: &mut HashMap<MapData, u64, u8>,
    change: &ExemptChange,
) -> Result<(), DatapathError> {
    for id in &change.remove {
        remove_if_present(map, id, names::AGENT_CGROUPS)?;
    }
    for id in &change.insert {
        map.insert(id, 1, 0)
            .map_err(map_err(names::AGENT_CGROUPS))?;
    }
    Ok(())
}

fn delivery_key(from: SocketAddr, to: SocketAddr) -> DeliveryKey {
    DeliveryKey {
        local_ip: ip_bytes(to.ip()),
        remote_ip: ip_bytes(from.ip()),
        local_port: u32::from(to.port()),
        remote_port: u32::from(from.port()),
    }
}

fn orig_key(netns_cookie: u64, peer: SocketAddr, local: SocketAddr) -> SockKey {
    // The app socket's view: the agent's peer is its local end.
    SockKey {
        netns: netns_cookie,
        local_ip: ip_bytes(peer.ip()),
        remote_ip: ip_bytes(local.ip()),
        local_port: u32::from(peer.port()),
        remote_port: u32::from(local.port()),
    }
}

/// Reads an original destination and deletes its entry. sock_ops writes
/// the entry at the app socket's ESTABLISHED and never deletes it (it
/// deletes only the cookie-keyed one, there or at close), so entries of
/// long-closed connections, each read once, would keep the map full and
/// leave the LRU to choose what goes. Deleting is safe: the entry is that of the
/// connection just accepted, whose 4-tuple stays in use until it closes,
/// and this is its only reader; a later connection on the same 4-tuple
/// gets an entry of its own at its own ESTABLISHED, before the agent can
/// accept it.
fn take_orig<T: BorrowMut<MapData>>(
    map: &mut HashMap<T, SockKey, OrigDst>,
    key: &SockKey,
) -> Option<OrigDst> {
    let value = map.get(key, 0).ok()?;
    // A failed delete costs only the space: the value is already read.
    if let Err(e) = map.remove(key)
        && !is_not_found(&e)
    {
        tracing::debug!(error = %e, "original destination entry not deleted");
    }
    Some(value)
}

fn orig_addr(value: OrigDst) -> SocketAddr {
    SocketAddr::new(ip_from_bytes(value.ip, value.family), value.port)
}

fn is_not_found(e: &aya::maps::MapError) -> bool {
    match e {
        aya::maps::MapError::KeyNotFound => true,
        aya::maps::MapError::SyscallError(s) => s.io_error.raw_os_error() == Some(libc::ENOENT),
        _ => false,
    }
}

fn remove_if_present<K: aya::Pod, V: aya::Pod>(
    map: &mut HashMap<MapData, K, V>,
    key: &K,
    name: &'static str,
) -> Result<(), DatapathError> {
    match map.remove(key) {
        Ok(()) => Ok(()),
        Err(e) if is_not_found(&e) => Ok(()),
        Err(e) => Err(map_err(name)(e)),
    }
}

/// The loader reuses whatever map is pinned under a name, whatever its
/// layout, and a restarted agent adopts the pinned programs. A config map
/// of another size belongs to programs built against another
/// `DatapathConfig` (an agent from before the cgroup exemption reads its
/// SO_MARK at offset 12, where this agent writes the cgroup id): adopting
/// them would mis-read every field, so the start stops here instead.
fn check_pinned_config(pin_dir: &Path) -> Result<(), DatapathError> {
    let path = pin_dir.join(names::CONFIG);
    if !path.exists() {
        return Ok(());
    }
    let map = MapData::from_pin(&path).map_err(map_err(names::CONFIG))?;
    let found = map.info().map_err(map_err(names::CONFIG))?.value_size();
    let expected = std::mem::size_of::<DatapathConfig>();
    if found as usize == expected {
        Ok(())
    } else {
        Err(DatapathError::PinnedLayout {
            path,
            found,
            expected,
        })
    }
}

/// cgroup bpf_links coexist with other programs at the same cgroup by
/// design; the link API refuses the legacy ALLOW_MULTI flag, hence `Single`.
fn attach_cgroup(
    ebpf: &mut Ebpf,
    name: &'static str,
    cgroup: &File,
) -> Result<FdLink, DatapathError> {
    let link = if name == names::PROG_SOCKOPS {
        let prog = program_mut::<SockOps>(ebpf, name)?;
        let id = prog
            .attach(cgroup, CgroupAttachMode::Single)
            .map_err(prog_err(name))?;
        FdLink::try_from(prog.take_link(id).map_err(prog_err(name))?)
    } else {
        let prog = program_mut::<CgroupSockAddr>(ebpf, name)?;
        let id = prog
            .attach(cgroup, CgroupAttachMode::Single)
            .map_err(prog_err(name))?;
        FdLink::try_from(prog.take_link(id).map_err(prog_err(name))?)
    };
    link.map_err(link_err::<LinkError>(Path::new(name)))
}

fn program_mut<'a, P>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<&'a mut P, DatapathError>
where
    &'a mut P: TryFrom<&'a mut aya::programs::Program, Error = aya::programs::ProgramError>,
{
    let prog = ebpf.program_mut(name).ok_or(DatapathError::Program {
        name,
        source: aya::programs::ProgramError::UnexpectedProgramType,
    })?;
    prog.try_into().map_err(prog_err(name))
}

/// A second handle on a map the loader pinned under `pin_dir`.
fn pinned_map<M>(pin_dir: &Path, name: &'static str) -> Result<M, DatapathError>
where
    M: TryFrom<Map, Error = aya::maps::MapError>,
{
    let data = MapData::from_pin(pin_dir.join(name)).map_err(map_err(name))?;
    M::try_from(Map::from_map_data(data).map_err(map_err(name))?).map_err(map_err(name))
}

fn take_map<M>(ebpf: &mut Ebpf, name: &'static str) -> Result<M, DatapathError>
where
    M: TryFrom<Map, Error = aya::maps::MapError>,
{
    let map = ebpf.take_map(name).ok_or(DatapathError::MapMissing(name))?;
    M::try_from(map).map_err(map_err(name))
}

/// Addresses as the kernel programs key them: 16 bytes, IPv4 v4-mapped.
pub fn ip_bytes(ip: IpAddr) -> [u8; 16] {
    match ip {
        IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
        IpAddr::V6(v6) => v6.octets(),
    }
}

fn ip_from_bytes(bytes: [u8; 16], family: u16) -> IpAddr {
    let v6 = std::net::Ipv6Addr::from(bytes);
    match (family, v6.to_ipv4_mapped()) {
        (4, Some(v4)) => IpAddr::V4(v4),
        _ => IpAddr::V6(v6),
    }
}

/// Removes every pin of a node: detaches its programs and frees its maps.
/// Enrolled pods then connect directly; this is uninstall, not a restart.
pub fn uninstall(pin_dir: &Path) -> io::Result<bool> {
    if !pin_dir.exists() {
        return Ok(false);
    }
    // The links first, each detached before this returns; then the maps
    // with the rest of the directory.
    let entries = |dir: PathBuf| fs::read_dir(dir).into_iter().flatten().flatten();
    let links = entries(pin_dir.join("links"))
        .map(|e| e.path())
        .chain(entries(pin_dir.join("pods")).map(|p| p.path().join("sk_lookup")));
    for link in links.filter(|l| l.exists()) {
        crate::pinned_link::remove(&link)
            .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", link.display())))?;
    }
    fs::remove_dir_all(pin_dir)?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The build keeps what the kernel and aya read (programs, maps, BTF)
    /// and drops the DWARF, which was most of the object's size.
    #[test]
    fn the_embedded_object_keeps_its_programs_and_btf_but_no_dwarf() {
        use object::{Object, ObjectSection};
        let elf = object::File::parse(EBPF_OBJECT).expect("an ELF object");
        let names: Vec<&str> = elf.sections().filter_map(|s| s.name().ok()).collect();
        for needed in [".BTF", ".BTF.ext", "maps", "sockops", "sk_lookup", "sk_msg"] {
            assert!(names.contains(&needed), "{needed} missing: {names:?}");
        }
        assert!(!names.iter().any(|n| n.contains(".debug")), "{names:?}");
        assert!(EBPF_OBJECT.len() < 200_000, "{} bytes", EBPF_OBJECT.len());
    }

    /// A real map, as sock_ops fills it: the first read takes the entry,
    /// a second finds nothing. Creating a map needs CAP_BPF; without it
    /// the test says so and checks nothing.
    #[test]
    fn an_original_destination_is_read_once_then_gone() {
        let mut map = match HashMap::<MapData, SockKey, OrigDst>::create(16, 0) {
            Ok(m) => m,
            Err(e) => {
                eprintln!("skipped: cannot create a BPF map here ({e})");
                return;
            }
        };
        let app: SocketAddr = "127.0.0.1:40000".parse().unwrap();
        let listener: SocketAddr = "127.0.0.1:15001".parse().unwrap();
        let key = orig_key(7, app, listener);
        assert_eq!(key.local_port, 40000);
        assert_eq!(key.remote_port, 15001);
        let orig = OrigDst {
            ip: ip_bytes("10.96.0.10".parse().unwrap()),
            port: 80,
            family: 4,
            _pad: 0,
        };
        map.insert(key, orig, 0).unwrap();
        let other = orig_key(8, app, listener);
        map.insert(other, orig, 0).unwrap();

        let got = take_orig(&mut map, &key).map(orig_addr);
        assert_eq!(got, Some("10.96.0.10:80".parse().unwrap()));
        assert_eq!(take_orig(&mut map, &key).map(orig_addr), None);
        // Only that connection's entry went.
        let left: Vec<SockKey> = map.keys().filter_map(Result::ok).collect();
        assert_eq!(left, vec![other]);
    }

    fn set(ids: &[u64]) -> BTreeSet<u64> {
        ids.iter().copied().collect()
    }

    fn census(populated: &[u64], empty: &[u64], complete: bool) -> CgroupCensus {
        CgroupCensus {
            populated: set(populated),
            empty: set(empty),
            complete,
        }
    }

    #[test]
    fn a_fresh_start_keeps_the_agents_still_running_and_drops_the_gone() {
        // A handed over to B and drains (3); B crashed (7); a cgroup
        // removed since (5). This agent (9) starts afresh.
        let c = exempt_fresh(&set(&[3, 5, 7]), 9, &census(&[3], &[7], true), 8);
        assert_eq!((c.insert, c.remove), (vec![9], vec![5, 7]));
        assert!(c.evicted.is_empty());
        // Restarted in its own cgroup (shared cgroup, restart in place):
        // it stays, whatever the census says of it.
        let c = exempt_fresh(&set(&[9, 7]), 9, &census(&[], &[7], true), 8);
        assert_eq!((c.insert, c.remove), (vec![], vec![7]));
        assert_eq!(
            exempt_fresh(&set(&[]), 9, &census(&[], &[], true), 8).insert,
            vec![9]
        );
    }

    #[test]
    fn a_fresh_start_keeps_what_the_census_could_not_tell() {
        // The walk failed: every id stays.
        let c = exempt_fresh(&set(&[3, 7]), 9, &CgroupCensus::unknown(), 8);
        assert_eq!((c.insert, c.remove), (vec![9], vec![]));
        // The walk stopped at its bounds: only what it found empty goes.
        let c = exempt_fresh(&set(&[3, 5, 7]), 9, &census(&[3], &[7], false), 8);
        assert_eq!((c.insert, c.remove), (vec![9], vec![7]));
    }

    #[test]
    fn a_fresh_start_into_a_full_set_evicts_the_oldest_living() {
        let c = exempt_fresh(&set(&[2, 3, 4]), 9, &census(&[2, 3, 4], &[], true), 3);
        assert_eq!((c.insert, c.remove, c.evicted), (vec![9], vec![2], vec![2]));
        // Room made by the gone first.
        let c = exempt_fresh(&set(&[2, 3, 4]), 9, &census(&[2, 3], &[4], true), 3);
        assert_eq!((c.insert, c.remove, c.evicted), (vec![9], vec![4], vec![]));
    }

    #[test]
    fn a_successor_joins_its_draining_predecessor() {
        let c = exempt_joined(&set(&[5]), 9, 5, 8);
        assert_eq!(
            c,
            ExemptChange {
                insert: vec![9],
                ..Default::default()
            }
        );
        // An older predecessor kept no set: its id comes from its config.
        let c = exempt_joined(&set(&[]), 9, 5, 8);
        assert_eq!(c.insert, vec![5, 9]);
        // Sharing one cgroup (the same id twice), or none to join.
        assert_eq!(exempt_joined(&set(&[5]), 5, 5, 8), ExemptChange::default());
        assert_eq!(exempt_joined(&set(&[]), 9, 0, 8).insert, vec![9]);
        // A third agent while the first still drains: all three.
        let c = exempt_joined(&set(&[5, 9]), 12, 9, 8);
        assert_eq!((c.insert, c.remove), (vec![12], vec![]));
    }

    #[test]
    fn a_full_set_loses_its_oldest_draining_agents_never_the_two_at_hand() {
        let c = exempt_joined(&set(&[2, 3, 4, 5]), 9, 5, 4);
        assert_eq!(c.insert, vec![9]);
        assert_eq!(c.remove, vec![2]);
        assert_eq!(c.evicted, vec![2]);
        let c = exempt_joined(&set(&[2, 3, 4, 6]), 9, 5, 4);
        assert_eq!(c.insert, vec![5, 9]);
        assert_eq!(c.remove, vec![2, 3]);
    }

    #[test]
    fn an_exited_agent_is_forgotten_unless_it_shares_a_kept_cgroup() {
        let current = set(&[5, 9, 12]);
        assert_eq!(exempt_without(&current, 5, &[9, 9]).remove, vec![5]);
        // The same cgroup as this agent's, or the serving agent's.
        assert!(exempt_without(&current, 9, &[9, 12]).remove.is_empty());
        assert!(exempt_without(&current, 12, &[9, 12]).remove.is_empty());
        // No predecessor, or one not in the set (a successor that never
        // joined it withdraws).
        assert!(exempt_without(&current, 0, &[9, 9]).remove.is_empty());
        assert!(exempt_without(&current, 7, &[12]).remove.is_empty());
    }

    #[test]
    fn addresses_round_trip_through_the_map_form() {
        for ip in ["10.244.1.10", "fd00::10", "::ffff:10.0.0.1"] {
            let ip: IpAddr = ip.parse().unwrap();
            let family = if ip.is_ipv4() { 4 } else { 6 };
            assert_eq!(ip_from_bytes(ip_bytes(ip), family), ip);
        }
        let v4: IpAddr = "10.244.1.10".parse().unwrap();
        assert_eq!(&ip_bytes(v4)[10..], &[0xff, 0xff, 10, 244, 1, 10]);
    }
}
