//! Removing a pinned BPF link so that its program is detached by the time
//! the call returns. Unpinning alone drops the pin's reference, and the
//! kernel frees the link (and detaches the program) from a work queue
//! afterwards, so for a moment after "uninstalled" or "unenrolled" a pod
//! could still be captured with no agent listening: a refused connection.
//! BPF_LINK_DETACH detaches at once, whoever else still holds the link.
use std::{
    ffi::CString,
    io,
    os::{
        fd::{AsRawFd, FromRawFd, OwnedFd},
        unix::ffi::OsStrExt,
    },
    path::Path,
};

// From the kernel's `enum bpf_cmd` (uapi/linux/bpf.h), which libc lacks.
const BPF_OBJ_GET: libc::c_long = 7;
const BPF_LINK_DETACH: libc::c_long = 34;

fn bpf(cmd: libc::c_long, attr: &mut [u64; 2]) -> io::Result<libc::c_long> {
    // SAFETY: `attr` is a zero-padded prefix of `union bpf_attr` for `cmd`,
    // and its size is passed along so the kernel reads no further.
    let r = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr.as_mut_ptr(),
            std::mem::size_of_val(attr),
        )
    };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

fn open(path: &Path) -> io::Result<OwnedFd> {
    let name = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in pin path"))?;
    // obj_get: { __aligned_u64 pathname; __u32 bpf_fd; __u32 file_flags; }
    let mut attr = [name.as_ptr() as u64, 0];
    let fd = bpf(BPF_OBJ_GET, &mut attr)?;
    // SAFETY: BPF_OBJ_GET returned a new descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// Detaches the link pinned at `path` and removes the pin. A link type that
/// cannot be detached early (EOPNOTSUPP) is still unpinned and freed by the
/// kernel shortly after.
pub fn remove(path: &Path) -> io::Result<()> {
    let fd = open(path)?;
    // link_detach: { __u32 link_fd; }
    let mut attr = [u64::from(fd.as_raw_fd() as u32), 0];
    match bpf(BPF_LINK_DETACH, &mut attr) {
        Ok(_) => {}
        Err(e) if e.raw_os_error() == Some(libc::EOPNOTSUPP) => {}
        Err(e) => return Err(e),
    }
    std::fs::remove_file(path)
}
