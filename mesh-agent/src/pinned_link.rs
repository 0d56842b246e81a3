//! Removing a pinned BPF link so that its program is detached by the time
//! the call returns. Unpinning alone drops the pin's reference, and the
//! kernel frees the link (and detaches the program) from a work queue
//! afterwards, so for a moment after "uninstalled" or "unenrolled" a pod
//! could still be captured with no agent listening: a refused connection.
//! BPF_LINK_DETACH detaches at once, whoever else still holds the link.
//!
//! Also what a pinned link runs, and swapping it for another program in
//! one step (BPF_LINK_UPDATE): the hook never goes without a program, so
//! an upgrade of the programs refuses no connection (`crate::link_update`).
use std::{
    ffi::CString,
    fmt, io,
    os::{
        fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd},
        unix::ffi::OsStrExt,
    },
    path::Path,
};

// From the kernel's `enum bpf_cmd` (uapi/linux/bpf.h), which libc lacks.
const BPF_OBJ_GET: libc::c_long = 7;
const BPF_PROG_GET_FD_BY_ID: libc::c_long = 13;
const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;
const BPF_LINK_UPDATE: libc::c_long = 29;
const BPF_LINK_DETACH: libc::c_long = 34;
/// BPF_LINK_UPDATE fails with EPERM unless the link still runs `old_prog_fd`.
const BPF_F_REPLACE: u32 = 1 << 2;

/// Two consecutive `__u32` fields of `union bpf_attr` as one of its words,
/// in the machine's byte order.
fn pair(first: u32, second: u32) -> u64 {
    let mut bytes = [0u8; 8];
    bytes[..4].copy_from_slice(&first.to_ne_bytes());
    bytes[4..].copy_from_slice(&second.to_ne_bytes());
    u64::from_ne_bytes(bytes)
}

fn raw(fd: BorrowedFd<'_>) -> u32 {
    fd.as_raw_fd() as u32
}

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
    let mut attr = [pair(fd.as_raw_fd() as u32, 0), 0];
    match bpf(BPF_LINK_DETACH, &mut attr) {
        Ok(_) => {}
        Err(e) if e.raw_os_error() == Some(libc::EOPNOTSUPP) => {}
        Err(e) => return Err(e),
    }
    std::fs::remove_file(path)
}

/// The kernel's tag of a program: a hash of its instructions, map
/// references left out, so two loads of the same code share it while
/// their ids differ.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ProgramTag(pub [u8; 8]);

impl fmt::Display for ProgramTag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // As bpftool prints it.
        self.0.iter().try_for_each(|b| write!(f, "{b:02x}"))
    }
}

/// A loaded program, held open.
#[derive(Debug)]
pub struct Program {
    pub id: u32,
    pub tag: ProgramTag,
    pub fd: OwnedFd,
}

/// The leading fields of `struct bpf_prog_info`; the kernel fills no more
/// than the length it is given.
#[repr(C)]
#[derive(Default)]
struct ProgInfoHead {
    _kind: u32,
    id: u32,
    tag: [u8; 8],
}

/// The leading fields of `struct bpf_link_info`.
#[repr(C)]
#[derive(Default)]
struct LinkInfoHead {
    _kind: u32,
    _id: u32,
    prog_id: u32,
    _pad: u32,
}

fn object_info<T>(fd: BorrowedFd<'_>, info: &mut T) -> io::Result<()> {
    // info: { __u32 bpf_fd; __u32 info_len; __aligned_u64 info; }
    let len = std::mem::size_of::<T>() as u32;
    let mut attr = [pair(raw(fd), len), info as *mut T as u64];
    bpf(BPF_OBJ_GET_INFO_BY_FD, &mut attr).map(drop)
}

/// The id and tag of a loaded program.
pub fn program_info(fd: BorrowedFd<'_>) -> io::Result<(u32, ProgramTag)> {
    let mut info = ProgInfoHead::default();
    object_info(fd, &mut info)?;
    Ok((info.id, ProgramTag(info.tag)))
}

/// A pinned BPF link, held open.
#[derive(Debug)]
pub struct Link {
    fd: OwnedFd,
}

impl Link {
    pub fn open(path: &Path) -> io::Result<Self> {
        Ok(Self { fd: open(path)? })
    }

    /// The program the link runs now.
    pub fn program(&self) -> io::Result<Program> {
        let mut info = LinkInfoHead::default();
        object_info(self.fd.as_fd(), &mut info)?;
        // get_fd_by_id: { __u32 prog_id; __u32 next_id; __u32 open_flags; }
        let mut attr = [pair(info.prog_id, 0), 0];
        let fd = bpf(BPF_PROG_GET_FD_BY_ID, &mut attr)?;
        // SAFETY: BPF_PROG_GET_FD_BY_ID returned a new descriptor that
        // nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
        let (id, tag) = program_info(fd.as_fd())?;
        Ok(Program { id, tag, fd })
    }

    /// Makes the link run `new` instead of `old`, in one step; EPERM when
    /// the link no longer runs `old` (someone else replaced it first).
    pub fn replace(&self, new: BorrowedFd<'_>, old: &Program) -> io::Result<()> {
        // link_update: { __u32 link_fd; __u32 new_prog_fd; __u32 flags;
        // __u32 old_prog_fd; }
        let mut attr = [
            pair(raw(self.fd.as_fd()), raw(new)),
            pair(BPF_F_REPLACE, raw(old.fd.as_fd())),
        ];
        bpf(BPF_LINK_UPDATE, &mut attr).map(drop)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tag_prints_as_bpftool_prints_it() {
        let tag = ProgramTag([0xa0, 0x4f, 0x5e, 0xef, 0x06, 0xa7, 0xf5, 0x55]);
        assert_eq!(tag.to_string(), "a04f5eef06a7f555");
    }

    #[test]
    fn two_fields_share_a_word_in_the_order_the_kernel_reads_them() {
        let word = pair(7, 9);
        let bytes = word.to_ne_bytes();
        assert_eq!(u32::from_ne_bytes(bytes[..4].try_into().unwrap()), 7);
        assert_eq!(u32::from_ne_bytes(bytes[4..].try_into().unwrap()), 9);
    }
}
