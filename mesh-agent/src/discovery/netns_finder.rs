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

/// Finds netns paths for the given pod uids in one pass over `proc_root`.
/// A uid whose processes all share the host's netns (host-network pods) or
/// that has no process yet is left out; the caller retries later.
pub fn find(proc_root: &Path, uids: &[&str]) -> HashMap<String, PathBuf> {
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
        found.insert(uid.to_string(), dir.join("ns").join("net"));
    }
    found
}

fn netns_inode(proc_dir: &Path) -> Option<u64> {
    fs::metadata(proc_dir.join("ns").join("net"))
        .ok()
        .map(|m| m.ino())
}
