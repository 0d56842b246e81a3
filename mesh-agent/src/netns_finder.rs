//! On a real node: a pod's network namespace from its uid. The kubelet puts
//! each pod's processes in a cgroup whose path carries the uid (with `-`,
//! or `_` under the systemd driver); any such process's /proc/<pid>/ns/net
//! is the pod's netns. Needs the host's /proc (a DaemonSet with hostPID).
use std::{
    collections::{HashMap, HashSet},
    fs,
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
};

/// Where a pod's netns was found, and its inode then: whoever opens the
/// path checks the inode, since the pid may have been reused in between.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    pub path: PathBuf,
    pub inode: u64,
}

/// Finds netns paths for the given pod uids in one pass over `proc_root`.
/// A uid whose processes all share the host's netns (host-network pods) or
/// that has no process yet is left out; the caller retries later.
pub fn find(proc_root: &Path, uids: &[&str]) -> HashMap<String, Found> {
    let mut wanted: HashMap<String, &str> = HashMap::new();
    for uid in uids {
        wanted.insert(format!("pod{uid}"), uid);
        wanted.insert(format!("pod{}", uid.replace('-', "_")), uid);
    }
    let host_netns = netns_inode(&proc_root.join("1"));
    let mut found = HashMap::new();
    let mut done = HashSet::new();
    let Ok(entries) = fs::read_dir(proc_root) else {
        return found;
    };
    for entry in entries.flatten() {
        if done.len() == uids.len() {
            break;
        }
        let name = entry.file_name();
        if !name.to_string_lossy().bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        let dir = entry.path();
        let Ok(cgroups) = fs::read_to_string(dir.join("cgroup")) else {
            continue;
        };
        let Some(uid) = cgroups
            .lines()
            .flat_map(|l| l.split('/'))
            .find_map(|segment| {
                let segment = segment.strip_suffix(".slice").unwrap_or(segment);
                wanted.get(&segment[segment.rfind("pod")?..])
            })
        else {
            continue;
        };
        if done.contains(*uid) {
            continue;
        }
        let Some(inode) = netns_inode(&dir) else {
            continue;
        };
        if Some(inode) == host_netns {
            continue;
        }
        done.insert(uid.to_string());
        found.insert(
            uid.to_string(),
            Found {
                path: dir.join("ns").join("net"),
                inode,
            },
        );
    }
    found
}

fn netns_inode(proc_dir: &Path) -> Option<u64> {
    fs::metadata(proc_dir.join("ns").join("net"))
        .ok()
        .map(|m| m.ino())
}

#[cfg(test)]
mod tests {
    use std::fs;

    use super::*;

    /// A /proc look-alike: pid 1 in the host netns, pods' processes with
    /// cgroup paths as the cgroupfs and systemd drivers write them.
    fn fake_proc() -> tempfile::TempDir {
        let root = tempfile::tempdir().unwrap();
        let host_ns = root.path().join("host-ns");
        let pod_ns = root.path().join("pod-ns");
        fs::write(&host_ns, "").unwrap();
        fs::write(&pod_ns, "").unwrap();
        let proc = |pid: &str, cgroup: &str, ns: &Path| {
            let dir = root.path().join(pid);
            fs::create_dir_all(dir.join("ns")).unwrap();
            fs::write(dir.join("cgroup"), cgroup).unwrap();
            std::os::unix::fs::symlink(ns, dir.join("ns").join("net")).unwrap();
        };
        proc("1", "0::/init.scope\n", &host_ns);
        proc("100", "0::/kubepods/besteffort/pod1111-2222/abc\n", &pod_ns);
        proc(
            "200",
            "0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod3333_4444.slice/cri-containerd-x.scope\n",
            &pod_ns,
        );
        // A host-network pod: its processes share the host's netns.
        proc("300", "0::/kubepods/pod5555/abc\n", &host_ns);
        fs::create_dir_all(root.path().join("self")).unwrap();
        root
    }

    #[test]
    fn finds_pods_under_both_cgroup_drivers_and_skips_host_netns() {
        let root = fake_proc();
        let found = find(root.path(), &["1111-2222", "3333-4444", "5555", "9999"]);
        let path = |uid| found.get(uid).map(|f| f.path.clone());
        assert_eq!(path("1111-2222"), Some(root.path().join("100/ns/net")));
        assert_eq!(path("3333-4444"), Some(root.path().join("200/ns/net")));
        assert_eq!(
            found["1111-2222"].inode,
            fs::metadata(root.path().join("pod-ns")).unwrap().ino()
        );
        assert!(!found.contains_key("5555"), "host netns is never a pod's");
        assert!(!found.contains_key("9999"));
    }
}
