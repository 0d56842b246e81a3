//! Checks that run before anything is loaded or attached, so a node that
//! cannot run the datapath says why in one line and changes nothing.
use std::{
    collections::{BTreeSet, VecDeque},
    io,
    os::unix::fs::{DirEntryExt, MetadataExt},
    path::{Component, Path, PathBuf},
};

const CGROUP2_SUPER_MAGIC: i64 = 0x6367_7270;
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;
const BTF_PATH: &str = "/sys/kernel/btf/vmlinux";

const CAP_NET_ADMIN: u32 = 12;
const CAP_SYS_ADMIN: u32 = 21;
const CAP_BPF: u32 = 39;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PreflightError {
    #[error(
        "missing privileges: mesh-agent needs {missing} (run it as root, or grant CAP_BPF, CAP_NET_ADMIN and CAP_SYS_ADMIN)"
    )]
    Privileges { missing: String },
    #[error(
        "no kernel BTF at {0}: mesh needs a kernel built with CONFIG_DEBUG_INFO_BTF=y (Linux 5.15 or newer)"
    )]
    NoBtf(PathBuf),
    #[error(
        "cgroupRoot {0}: does not exist; set cgroupRoot to a cgroup-v2 directory (/sys/fs/cgroup, or /sys/fs/cgroup/unified on hybrid hosts)"
    )]
    CgroupMissing(PathBuf),
    #[error(
        "cgroupRoot {0}: not on a cgroup-v2 filesystem; point cgroupRoot at the cgroup2 mount (see `mount -t cgroup2`) or a directory below it"
    )]
    NotCgroup2(PathBuf),
    #[error("bpffsRoot {0}: not a BPF filesystem; mount one with `mount -t bpf bpf {0}`")]
    NotBpffs(PathBuf),
    #[error(
        "the agent's own cgroup: /proc/self/cgroup has no cgroup-v2 (`0::`) line; run the agent on a host with the cgroup-v2 hierarchy mounted (cgroupRoot points into it)"
    )]
    NoCgroupV2Membership,
    #[error(
        "the agent's own cgroup {cgroup} (per /proc/self/cgroup) is not under any cgroup2 mount the agent can see, so its id, which exempts the agent's connects from redirection, cannot be read; run the agent where a cgroup2 mount shows its cgroup: in its own cgroup namespace with cgroup2 mounted at /sys/fs/cgroup (what container runtimes do), or in the host's with cgroupRoot ({root}) on the host's cgroup2 mount"
    )]
    AgentCgroupNotVisible { cgroup: String, root: PathBuf },
    #[error("the agent's own cgroup: reading {path}: {reason}")]
    AgentCgroupUnreadable { path: PathBuf, reason: String },
}

fn fs_magic(path: &Path) -> Option<i64> {
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).ok()?;
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    (unsafe { libc::statfs(c.as_ptr(), &mut st) } == 0).then_some(st.f_type as i64)
}

pub fn check_privileges() -> Result<(), PreflightError> {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let eff = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        .unwrap_or(0);
    let missing: Vec<_> = [
        (CAP_BPF, "CAP_BPF"),
        (CAP_NET_ADMIN, "CAP_NET_ADMIN"),
        (CAP_SYS_ADMIN, "CAP_SYS_ADMIN"),
    ]
    .into_iter()
    .filter(|(bit, _)| eff & (1 << bit) == 0)
    .map(|(_, name)| name)
    .collect();
    if missing.is_empty() {
        Ok(())
    } else {
        Err(PreflightError::Privileges {
            missing: missing.join(", "),
        })
    }
}

pub fn check_btf() -> Result<(), PreflightError> {
    check_btf_at(Path::new(BTF_PATH))
}

fn check_btf_at(path: &Path) -> Result<(), PreflightError> {
    path.exists()
        .then_some(())
        .ok_or_else(|| PreflightError::NoBtf(path.to_owned()))
}

/// cgroupRoot is a cgroup-v2 directory, and the agent's own cgroup can be
/// found (see `agent_cgroup`): without it the agent's upstream connects
/// would be redirected back to itself.
pub fn check_cgroup_root(path: &Path) -> Result<(), PreflightError> {
    match fs_magic(path) {
        None => Err(PreflightError::CgroupMissing(path.to_owned())),
        Some(CGROUP2_SUPER_MAGIC) => agent_cgroup(path).map(|_| ()),
        Some(_) => Err(PreflightError::NotCgroup2(path.to_owned())),
    }
}

/// The agent's own cgroup-v2 directory and id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentCgroup {
    pub dir: PathBuf,
    /// What `bpf_get_current_cgroup_id()` returns in the agent's tasks: the
    /// inode number of the cgroup's directory in cgroupfs (on 64-bit
    /// kernels both are the kernfs node id).
    pub id: u64,
}

/// Finds the cgroup the agent runs in, so the connect programs can leave
/// its connects alone (mesh-ebpf/src/redirect.rs says why a cgroup and not
/// a mark). /proc/self/cgroup names it relative to the root of the agent's
/// cgroup namespace; a cgroup2 mount shows the hierarchy from its own root,
/// which is not necessarily cgroupRoot (the test bed's cgroupRoot is a
/// node's cgroup below the mount; on hybrid hosts the mount is at
/// /sys/fs/cgroup/unified; in a container the runtime's /sys/fs/cgroup
/// starts at the container's cgroup). So the path is resolved through
/// every cgroup2 mount whose root holds it, and a directory counts only if
/// its `cgroup.procs` lists this process. `cgroup_root` is only named in
/// the error: the agent's cgroup may lie outside it (then its sockets never
/// meet the programs, and the id written is merely unused).
pub fn agent_cgroup(cgroup_root: &Path) -> Result<AgentCgroup, PreflightError> {
    let read = |path: &str| {
        std::fs::read_to_string(path).map_err(|e| PreflightError::AgentCgroupUnreadable {
            path: path.into(),
            reason: e.to_string(),
        })
    };
    let membership = read("/proc/self/cgroup")?;
    let cgroup = cgroup_v2_path(&membership).ok_or(PreflightError::NoCgroupV2Membership)?;
    let mountinfo = read("/proc/self/mountinfo")?;
    let pid = std::process::id();
    cgroup2_mounts(&mountinfo)
        .into_iter()
        .filter_map(|m| cgroup_dir(&m.point, &m.root, cgroup))
        .find(|dir| lists_pid(dir, pid))
        .and_then(|dir| {
            let id = std::fs::metadata(&dir).ok()?.ino();
            Some(AgentCgroup { dir, id })
        })
        .ok_or_else(|| PreflightError::AgentCgroupNotVisible {
            cgroup: cgroup.to_owned(),
            root: cgroup_root.to_owned(),
        })
}

/// The cgroup-v2 path in /proc/<pid>/cgroup content: the `0::<path>` line
/// (v1 hierarchies have other numbers and controller names).
fn cgroup_v2_path(membership: &str) -> Option<&str> {
    membership
        .lines()
        .find_map(|l| l.strip_prefix("0::"))
        .filter(|p| p.starts_with('/'))
}

#[derive(Debug, PartialEq, Eq)]
struct Cgroup2Mount {
    /// The directory of the hierarchy the mount shows at its top, relative
    /// to the reader's cgroup namespace (with `..` when above its root).
    root: PathBuf,
    point: PathBuf,
}

/// The cgroup2 mounts in /proc/<pid>/mountinfo content. A line is
/// `id parent dev root point options [optional...] - fstype source opts`.
fn cgroup2_mounts(mountinfo: &str) -> Vec<Cgroup2Mount> {
    mountinfo
        .lines()
        .filter_map(|line| {
            let (mount, fs) = line.split_once(" - ")?;
            if fs.split_whitespace().next()? != "cgroup2" {
                return None;
            }
            let mut f = mount.split_whitespace().skip(3);
            let root = unescape_mountinfo(f.next()?);
            let point = unescape_mountinfo(f.next()?);
            Some(Cgroup2Mount {
                root: root.into(),
                point: point.into(),
            })
        })
        .collect()
}

/// mountinfo writes space, tab, newline and backslash in paths as
/// three-digit octal escapes.
fn unescape_mountinfo(field: &str) -> String {
    let b = field.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let octal = b
            .get(i + 1..i + 4)
            .filter(|d| d.iter().all(|c| (b'0'..=b'7').contains(c)))
            .and_then(|d| {
                let v = d.iter().fold(0u32, |v, c| v * 8 + u32::from(c - b'0'));
                u8::try_from(v).ok()
            });
        match (b[i], octal) {
            (b'\\', Some(byte)) => {
                out.push(byte);
                i += 4;
            }
            (c, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Where a mount at `point` showing the hierarchy from `root` has the
/// cgroup `cgroup` (both relative to the same cgroup-namespace root), or
/// None when the mount does not reach it. Paths with `..` are outside the
/// namespace and name no directory that can be built from them.
fn cgroup_dir(point: &Path, root: &Path, cgroup: &str) -> Option<PathBuf> {
    let cgroup = Path::new(cgroup);
    let outside = |p: &Path| p.components().any(|c| c == Component::ParentDir);
    if outside(root) || outside(cgroup) {
        return None;
    }
    let rel = cgroup.strip_prefix(root).ok()?;
    Some(if rel.as_os_str().is_empty() {
        point.to_owned()
    } else {
        point.join(rel)
    })
}

/// Whether `dir/cgroup.procs` lists `pid` (as this process's pid
/// namespace numbers it): the proof that `dir` is this process's cgroup.
fn lists_pid(dir: &Path, pid: u32) -> bool {
    std::fs::read_to_string(dir.join("cgroup.procs"))
        .map(|procs| procs.lines().any(|l| l.trim().parse() == Ok(pid)))
        .unwrap_or(false)
}

/// How far `cgroup_census` walks. A node has a few hundred cgroups
/// (systemd's units, the kubepods slices, a pod's and its containers'),
/// an agent's four to six below the root; past these bounds the walk stops
/// and what it has not found counts as unknown, not gone.
const CENSUS_DEPTH: usize = 8;
const CENSUS_DIRS: usize = 8192;

/// What a walk of the cgroup tree learnt of some cgroup ids.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CgroupCensus {
    /// Found, with a process in it or below it (`populated 1`).
    pub populated: BTreeSet<u64>,
    /// Found without any process, or removed while the walk read it.
    pub empty: BTreeSet<u64>,
    /// The whole tree under the root was seen, or every id asked for was
    /// found: an id in neither set has no cgroup under the root.
    pub complete: bool,
}

impl CgroupCensus {
    /// Nothing known (the walk failed): every id may still hold an agent.
    pub fn unknown() -> Self {
        Self::default()
    }

    /// Whether no process runs in cgroup `id` under the root, for certain.
    pub fn is_gone(&self, id: u64) -> bool {
        self.empty.contains(&id) || (self.complete && !self.populated.contains(&id))
    }
}

/// Which of `ids` (cgroup ids: a cgroup2 directory's inode number) still
/// have a directory under `root` with processes in it, read from their
/// `cgroup.events`. Bounded (`CENSUS_DEPTH`, `CENSUS_DIRS`); stops once
/// every id is found. A subtree that cannot be read leaves the census
/// incomplete; only an unreadable `root` is an error.
pub fn cgroup_census(root: &Path, ids: &BTreeSet<u64>) -> io::Result<CgroupCensus> {
    census_within(root, ids, CENSUS_DEPTH, CENSUS_DIRS)
}

fn census_within(
    root: &Path,
    ids: &BTreeSet<u64>,
    max_depth: usize,
    max_dirs: usize,
) -> io::Result<CgroupCensus> {
    let mut census = CgroupCensus {
        complete: true,
        ..CgroupCensus::default()
    };
    if ids.is_empty() {
        return Ok(census);
    }
    let mut queue = VecDeque::from([(root.to_owned(), std::fs::metadata(root)?.ino(), 0)]);
    let mut dirs = 1;
    let mut first = true;
    while let Some((dir, id, depth)) = queue.pop_front() {
        if ids.contains(&id) {
            match std::fs::read_to_string(dir.join("cgroup.events")) {
                Ok(events) => match populated(&events) {
                    Some(true) => census.populated.insert(id),
                    Some(false) => census.empty.insert(id),
                    None => {
                        census.complete = false;
                        false
                    }
                },
                // The hierarchy's root cgroup has no `cgroup.events`, and
                // always holds processes.
                Err(e) if e.kind() == io::ErrorKind::NotFound && dir.is_dir() => {
                    census.populated.insert(id)
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => census.empty.insert(id),
                Err(_) => {
                    census.complete = false;
                    false
                }
            };
            if census.populated.len() + census.empty.len() == ids.len() {
                census.complete = true;
                return Ok(census);
            }
        }
        let entries = match std::fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(e) if first => return Err(e),
            // Removed meanwhile: nothing below it either.
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(_) => {
                census.complete = false;
                continue;
            }
        };
        first = false;
        for entry in entries {
            let Ok(entry) = entry else {
                census.complete = false;
                break;
            };
            if !entry.file_type().is_ok_and(|t| t.is_dir()) {
                continue;
            }
            if depth + 1 > max_depth || dirs >= max_dirs {
                census.complete = false;
                break;
            }
            dirs += 1;
            queue.push_back((entry.path(), entry.ino(), depth + 1));
        }
    }
    Ok(census)
}

/// `populated` in a `cgroup.events`: whether a process runs in the cgroup
/// or below it. `None` when the line is missing (not a cgroup directory).
fn populated(events: &str) -> Option<bool> {
    events
        .lines()
        .find_map(|l| match l.trim().strip_prefix("populated ")? {
            "1" => Some(true),
            "0" => Some(false),
            _ => None,
        })
}

pub fn check_bpffs(path: &Path) -> Result<(), PreflightError> {
    match fs_magic(path) {
        Some(BPF_FS_MAGIC) => Ok(()),
        _ => Err(PreflightError::NotBpffs(path.to_owned())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_plain_directory_is_neither_cgroup2_nor_bpffs() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(
            check_cgroup_root(dir.path()),
            Err(PreflightError::NotCgroup2(dir.path().to_owned()))
        );
        let err = check_bpffs(dir.path()).unwrap_err().to_string();
        assert!(err.contains("mount -t bpf bpf"), "{err}");
    }

    /// A cgroup-like directory: `events` as its `cgroup.events`, if any;
    /// its id (inode number).
    fn cgroup(dir: &Path, events: Option<&str>) -> u64 {
        std::fs::create_dir_all(dir).unwrap();
        if let Some(events) = events {
            std::fs::write(dir.join("cgroup.events"), events).unwrap();
        }
        std::fs::metadata(dir).unwrap().ino()
    }

    #[test]
    fn the_census_tells_populated_from_empty_and_gone_cgroups() {
        let root = tempfile::tempdir().unwrap();
        let root = root.path();
        let top = cgroup(root, None);
        let draining = cgroup(
            &root.join("kubepods/pod-a/agent"),
            Some("populated 1\nfrozen 0\n"),
        );
        let crashed = cgroup(
            &root.join("kubepods/pod-b/agent"),
            Some("populated 0\nfrozen 0\n"),
        );
        cgroup(&root.join("system.slice"), Some("populated 1\n"));
        let removed = cgroup(&root.join("gone"), Some("populated 1\n"));
        std::fs::remove_dir_all(root.join("gone")).unwrap();

        let ids = BTreeSet::from([draining, crashed, removed]);
        let census = cgroup_census(root, &ids).unwrap();
        assert_eq!(census.populated, BTreeSet::from([draining]));
        assert_eq!(census.empty, BTreeSet::from([crashed]));
        assert!(census.complete);
        assert!(!census.is_gone(draining));
        assert!(census.is_gone(crashed) && census.is_gone(removed));

        // The root cgroup has no `cgroup.events`, and is never empty.
        let census = cgroup_census(root, &BTreeSet::from([top])).unwrap();
        assert_eq!(census.populated, BTreeSet::from([top]));

        // An unreadable root is an error, for the caller to keep every id.
        assert!(cgroup_census(&root.join("nonexistent"), &ids).is_err());
        // Nothing known: nothing is gone.
        assert!(!CgroupCensus::unknown().is_gone(crashed));
    }

    #[test]
    fn past_its_bounds_the_census_knows_only_what_it_found() {
        let root = tempfile::tempdir().unwrap();
        let root = root.path();
        let shallow = cgroup(&root.join("a"), Some("populated 0\n"));
        let deep = cgroup(&root.join("a/b/c"), Some("populated 1\n"));
        let absent = shallow + deep + 1;
        let ids = BTreeSet::from([shallow, deep, absent]);

        // Too shallow to reach `deep`: `absent` might be down there.
        let census = census_within(root, &ids, 1, 100).unwrap();
        assert!(!census.complete);
        assert!(census.is_gone(shallow));
        assert!(!census.is_gone(deep) && !census.is_gone(absent));

        // Too few directories allowed: the same.
        let census = census_within(root, &ids, 8, 2).unwrap();
        assert!(!census.complete && !census.is_gone(deep));

        // The whole tree seen: `absent` has no cgroup under the root.
        let census = census_within(root, &ids, 8, 100).unwrap();
        assert!(census.complete);
        assert!(census.is_gone(absent) && !census.is_gone(deep));
    }

    #[test]
    fn populated_is_read_from_cgroup_events() {
        assert_eq!(populated("populated 1\nfrozen 0\n"), Some(true));
        assert_eq!(populated("frozen 0\npopulated 0\n"), Some(false));
        assert_eq!(populated("frozen 0\n"), None);
        assert_eq!(populated("populated x\n"), None);
    }

    #[test]
    fn missing_btf_names_the_kernel_option() {
        let err = check_btf_at(Path::new("/nonexistent/vmlinux"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("CONFIG_DEBUG_INFO_BTF=y"), "{err}");
        assert_eq!(check_btf(), Ok(()), "this kernel has BTF");
    }

    #[test]
    fn the_cgroup_v2_line_is_found_among_v1_lines() {
        let hybrid = "9:name=systemd:/\n4:memory:/x/y\n0::/mesh-tb-1/n0/agent\n";
        assert_eq!(cgroup_v2_path(hybrid), Some("/mesh-tb-1/n0/agent"));
        assert_eq!(cgroup_v2_path("0::/\n"), Some("/"));
        assert_eq!(cgroup_v2_path("4:memory:/x\n1:cpu:/\n"), None);
        assert_eq!(cgroup_v2_path(""), None);
    }

    #[test]
    fn only_cgroup2_mounts_are_read_and_their_paths_unescaped() {
        let mountinfo = "\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime shared:9 - cgroup2 cgroup2 rw
52 40 0:38 /../.. /host/my\\040cgroup rw master:1 - cgroup2 cgroup2 rw
";
        assert_eq!(
            cgroup2_mounts(mountinfo),
            vec![
                Cgroup2Mount {
                    root: "/".into(),
                    point: "/sys/fs/cgroup/unified".into()
                },
                Cgroup2Mount {
                    root: "/../..".into(),
                    point: "/host/my cgroup".into()
                },
            ]
        );
        assert_eq!(unescape_mountinfo(r"a\134b\011"), "a\\b\t");
        assert_eq!(unescape_mountinfo(r"odd\9\777\04"), r"odd\9\777\04");
    }

    #[test]
    fn the_directory_joins_the_mount_point_and_the_path_below_the_mount_root() {
        let unified = Path::new("/sys/fs/cgroup/unified");
        // The test bed: the mount shows the whole hierarchy; cgroupRoot (a
        // node's cgroup) plays no part in the join.
        assert_eq!(
            cgroup_dir(unified, Path::new("/"), "/mesh-tb-1/n0/agent"),
            Some(unified.join("mesh-tb-1/n0/agent"))
        );
        // A container with its own cgroup namespace: both are its root.
        let own = Path::new("/sys/fs/cgroup");
        assert_eq!(cgroup_dir(own, Path::new("/"), "/"), Some(own.into()));
        // A mount of a subtree reaches only the cgroups below it.
        let sub = Path::new("/mnt/pods");
        assert_eq!(
            cgroup_dir(sub, Path::new("/kubepods"), "/kubepods/burstable/p1/c1"),
            Some(sub.join("burstable/p1/c1"))
        );
        assert_eq!(
            cgroup_dir(sub, Path::new("/kubepods"), "/system.slice/x"),
            None
        );
        assert_eq!(cgroup_dir(sub, Path::new("/kube"), "/kubepods/x"), None);
        // The host's hierarchy seen from inside a cgroup namespace.
        assert_eq!(cgroup_dir(own, Path::new("/../../.."), "/"), None);
        assert_eq!(cgroup_dir(own, Path::new("/"), "/../x"), None);
    }

    /// This process's own cgroup, found the way the agent finds its own:
    /// the directory lists this process, and its inode is the id.
    #[test]
    fn this_process_finds_its_own_cgroup() {
        let Ok(membership) = std::fs::read_to_string("/proc/self/cgroup") else {
            return;
        };
        if cgroup_v2_path(&membership).is_none() {
            eprintln!("skipped: no cgroup v2 here");
            return;
        }
        let found = agent_cgroup(Path::new("/sys/fs/cgroup")).unwrap();
        assert!(lists_pid(&found.dir, std::process::id()), "{found:?}");
        assert_eq!(std::fs::metadata(&found.dir).unwrap().ino(), found.id);
        assert!(!lists_pid(&found.dir, 0), "pid 0 is never listed");
    }

    #[test]
    fn a_missing_cgroup_root_says_so() {
        let err = check_cgroup_root(Path::new("/nonexistent/cg"))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("does not exist") && err.contains("cgroupRoot"),
            "{err}"
        );
    }
}
