//! Checks that run before anything is loaded or attached, so a node that
//! cannot run the datapath says why in one line and changes nothing.
use std::path::{Path, PathBuf};

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

pub fn check_cgroup_root(path: &Path) -> Result<(), PreflightError> {
    match fs_magic(path) {
        None => Err(PreflightError::CgroupMissing(path.to_owned())),
        Some(CGROUP2_SUPER_MAGIC) => Ok(()),
        Some(_) => Err(PreflightError::NotCgroup2(path.to_owned())),
    }
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

    #[test]
    fn missing_btf_names_the_kernel_option() {
        let err = check_btf_at(Path::new("/nonexistent/vmlinux"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("CONFIG_DEBUG_INFO_BTF=y"), "{err}");
        assert_eq!(check_btf(), Ok(()), "this kernel has BTF");
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
