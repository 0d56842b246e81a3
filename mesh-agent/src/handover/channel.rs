//! The hand-over socket: AF_UNIX SOCK_SEQPACKET, so each message arrives
//! whole and with exactly the descriptors sent alongside it (SCM_RIGHTS),
//! which a byte stream does not promise. Blocking calls with deadlines;
//! the agent runs them off its runtime's threads.
use std::{
    ffi::CString,
    io,
    mem::{size_of, zeroed},
    os::{
        fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd},
        unix::{ffi::OsStrExt, fs::PermissionsExt},
    },
    path::Path,
    time::Duration,
};

use super::wire::{MAX_FDS, MAX_MESSAGE, Message, WireError};

#[derive(Debug, thiserror::Error)]
pub enum ChannelError {
    #[error("hand-over socket: {0}")]
    Io(#[from] io::Error),
    #[error(transparent)]
    Wire(#[from] WireError),
    #[error("hand-over message truncated (over {MAX_MESSAGE} bytes or {MAX_FDS} descriptors)")]
    Truncated,
    #[error(
        "hand-over peer runs as uid {peer}, this agent as {own}; only the agent's own user may hand over"
    )]
    Stranger { peer: u32, own: u32 },
}

fn cvt(rc: libc::c_int) -> io::Result<libc::c_int> {
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

fn seqpacket() -> io::Result<OwnedFd> {
    // SAFETY: socket(2) with constant arguments; the new descriptor is ours.
    let fd =
        cvt(unsafe { libc::socket(libc::AF_UNIX, libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC, 0) })?;
    // SAFETY: just created, owned by nothing else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn address(path: &Path) -> io::Result<(libc::sockaddr_un, libc::socklen_t)> {
    // SAFETY: sockaddr_un is plain data; all zeroes is a valid value.
    let mut addr: libc::sockaddr_un = unsafe { zeroed() };
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    let bytes = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in the socket path"))?;
    let bytes = bytes.as_bytes_with_nul();
    if bytes.len() > addr.sun_path.len() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "socket path {} is longer than {} bytes",
                path.display(),
                addr.sun_path.len() - 1
            ),
        ));
    }
    for (d, s) in addr.sun_path.iter_mut().zip(bytes) {
        *d = *s as libc::c_char;
    }
    let len = (size_of::<libc::sa_family_t>() + bytes.len()) as libc::socklen_t;
    Ok((addr, len))
}

/// A listening hand-over socket.
pub struct Listener {
    fd: OwnedFd,
}

impl Listener {
    /// Binds `path` (which must not exist), mode 0600, and listens. The
    /// backlog is small: one successor is served at a time and the others
    /// wait there.
    pub fn bind(path: &Path) -> io::Result<Self> {
        let fd = seqpacket()?;
        let (addr, len) = address(path)?;
        // SAFETY: `addr` is a valid sockaddr_un of `len` bytes.
        cvt(unsafe { libc::bind(fd.as_raw_fd(), (&raw const addr).cast(), len) })?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
        // SAFETY: listen(2) on a socket we own.
        cvt(unsafe { libc::listen(fd.as_raw_fd(), 4) })?;
        Ok(Self { fd })
    }

    /// The next successor, blocking.
    pub fn accept(&self) -> io::Result<Channel> {
        // SAFETY: accept4(2) without an address; the descriptor is ours.
        let fd = cvt(unsafe {
            libc::accept4(
                self.fd.as_raw_fd(),
                std::ptr::null_mut(),
                std::ptr::null_mut(),
                libc::SOCK_CLOEXEC,
            )
        })?;
        // SAFETY: just accepted, owned by nothing else.
        Ok(Channel {
            fd: unsafe { OwnedFd::from_raw_fd(fd) },
        })
    }
}

/// One end of a hand-over conversation.
pub struct Channel {
    fd: OwnedFd,
}

impl Channel {
    /// Connects to the running agent's socket at `path`.
    pub fn connect(path: &Path) -> io::Result<Self> {
        let fd = seqpacket()?;
        let (addr, len) = address(path)?;
        // SAFETY: `addr` is a valid sockaddr_un of `len` bytes.
        cvt(unsafe { libc::connect(fd.as_raw_fd(), (&raw const addr).cast(), len) })?;
        Ok(Self { fd })
    }

    #[cfg(test)]
    pub fn pair() -> io::Result<(Self, Self)> {
        let mut fds = [0; 2];
        // SAFETY: socketpair(2) fills the two descriptors, now ours.
        cvt(unsafe {
            libc::socketpair(
                libc::AF_UNIX,
                libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC,
                0,
                fds.as_mut_ptr(),
            )
        })?;
        // SAFETY: as above.
        unsafe {
            Ok((
                Self {
                    fd: OwnedFd::from_raw_fd(fds[0]),
                },
                Self {
                    fd: OwnedFd::from_raw_fd(fds[1]),
                },
            ))
        }
    }

    /// Every send and receive from now on fails after `timeout` (EAGAIN).
    pub fn set_deadline(&self, timeout: Duration) -> io::Result<()> {
        let tv = libc::timeval {
            tv_sec: timeout.as_secs() as libc::time_t,
            tv_usec: timeout.subsec_micros() as libc::suseconds_t,
        };
        for opt in [libc::SO_RCVTIMEO, libc::SO_SNDTIMEO] {
            // SAFETY: a timeval of the size given.
            cvt(unsafe {
                libc::setsockopt(
                    self.fd.as_raw_fd(),
                    libc::SOL_SOCKET,
                    opt,
                    (&raw const tv).cast(),
                    size_of::<libc::timeval>() as libc::socklen_t,
                )
            })?;
        }
        Ok(())
    }

    /// Refuses a peer that is not the agent's own user (the socket's mode
    /// says the same; this also covers a directory someone else made).
    pub fn check_peer(&self) -> Result<(), ChannelError> {
        // SAFETY: ucred is plain data.
        let mut cred: libc::ucred = unsafe { zeroed() };
        let mut len = size_of::<libc::ucred>() as libc::socklen_t;
        // SAFETY: a ucred of the size given.
        cvt(unsafe {
            libc::getsockopt(
                self.fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_PEERCRED,
                (&raw mut cred).cast(),
                &mut len,
            )
        })?;
        // SAFETY: geteuid cannot fail.
        let own = unsafe { libc::geteuid() };
        if cred.uid != own {
            return Err(ChannelError::Stranger {
                peer: cred.uid,
                own,
            });
        }
        Ok(())
    }

    pub fn send(&self, message: &Message, fds: &[BorrowedFd<'_>]) -> Result<(), ChannelError> {
        let bytes = message.encode();
        let mut iov = libc::iovec {
            iov_base: bytes.as_ptr() as *mut libc::c_void,
            iov_len: bytes.len(),
        };
        let raw: Vec<RawFd> = fds.iter().map(AsRawFd::as_raw_fd).collect();
        let payload = std::mem::size_of_val(raw.as_slice()) as u32;
        // SAFETY: CMSG_SPACE only computes a size.
        let space = unsafe { libc::CMSG_SPACE(payload) } as usize;
        let mut control = vec![0u8; if raw.is_empty() { 0 } else { space }];
        // SAFETY: msghdr is plain data.
        let mut msg: libc::msghdr = unsafe { zeroed() };
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        if !raw.is_empty() {
            msg.msg_control = control.as_mut_ptr().cast();
            msg.msg_controllen = control.len() as _;
            // SAFETY: the control buffer holds one header and `payload`
            // bytes of data, as CMSG_SPACE computed.
            unsafe {
                let c = libc::CMSG_FIRSTHDR(&msg);
                (*c).cmsg_level = libc::SOL_SOCKET;
                (*c).cmsg_type = libc::SCM_RIGHTS;
                (*c).cmsg_len = libc::CMSG_LEN(payload) as _;
                std::ptr::copy_nonoverlapping(
                    raw.as_ptr(),
                    libc::CMSG_DATA(c).cast::<RawFd>(),
                    raw.len(),
                );
            }
        }
        // SAFETY: `msg` points at buffers that outlive the call.
        let sent = unsafe { libc::sendmsg(self.fd.as_raw_fd(), &msg, libc::MSG_NOSIGNAL) };
        if sent < 0 {
            return Err(io::Error::last_os_error().into());
        }
        Ok(())
    }

    /// The next message and its descriptors; `None` when the peer closed.
    pub fn recv(&self) -> Result<Option<(Message, Vec<OwnedFd>)>, ChannelError> {
        let mut bytes = vec![0u8; MAX_MESSAGE + 1];
        let mut iov = libc::iovec {
            iov_base: bytes.as_mut_ptr().cast(),
            iov_len: bytes.len(),
        };
        // SAFETY: CMSG_SPACE only computes a size.
        let space = unsafe { libc::CMSG_SPACE((MAX_FDS * size_of::<RawFd>()) as u32) } as usize;
        let mut control = vec![0u8; space];
        // SAFETY: msghdr is plain data.
        let mut msg: libc::msghdr = unsafe { zeroed() };
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control.as_mut_ptr().cast();
        msg.msg_controllen = control.len() as _;
        // SAFETY: `msg` points at buffers that outlive the call.
        let n = unsafe { libc::recvmsg(self.fd.as_raw_fd(), &mut msg, libc::MSG_CMSG_CLOEXEC) };
        if n < 0 {
            return Err(io::Error::last_os_error().into());
        }
        // Taken first, so that every descriptor that arrived is closed on
        // any error below.
        let mut fds = Vec::new();
        // SAFETY: walking the control messages the kernel wrote, within
        // `msg_controllen`.
        unsafe {
            let mut c = libc::CMSG_FIRSTHDR(&msg);
            while !c.is_null() {
                if (*c).cmsg_level == libc::SOL_SOCKET && (*c).cmsg_type == libc::SCM_RIGHTS {
                    let data = libc::CMSG_DATA(c).cast::<RawFd>();
                    let len = (*c).cmsg_len as usize - libc::CMSG_LEN(0) as usize;
                    for i in 0..len / size_of::<RawFd>() {
                        fds.push(OwnedFd::from_raw_fd(data.add(i).read_unaligned()));
                    }
                }
                c = libc::CMSG_NXTHDR(&msg, c);
            }
        }
        if msg.msg_flags & (libc::MSG_TRUNC | libc::MSG_CTRUNC) != 0 {
            return Err(ChannelError::Truncated);
        }
        if n == 0 {
            return Ok(None);
        }
        let message = Message::decode(&bytes[..n as usize], fds.len())?;
        Ok(Some((message, fds)))
    }
}

#[cfg(test)]
mod tests {
    use std::os::fd::AsFd;

    use super::*;
    use crate::handover::wire::{Family, Label};

    #[test]
    fn descriptors_cross_with_their_message_and_refer_to_the_same_socket() {
        let (a, b) = Channel::pair().unwrap();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let m = Message::Pod {
            uid: "u".into(),
            key: "ns/p".into(),
            netns_cookie: 1,
            listeners: vec![Label {
                port,
                family: Family::V4,
            }],
        };
        a.send(&m, &[listener.as_fd()]).unwrap();
        let (got, fds) = b.recv().unwrap().unwrap();
        assert_eq!(got, m);
        assert_eq!(fds.len(), 1);
        let adopted = std::net::TcpListener::from(fds.into_iter().next().unwrap());
        assert_eq!(adopted.local_addr().unwrap().port(), port);
        // The same socket: a connection queued on it is accepted through
        // the other descriptor.
        let _client = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        drop(listener);
        adopted.accept().unwrap();
    }

    #[test]
    fn a_message_without_its_descriptors_is_refused_and_a_closed_peer_is_none() {
        let (a, b) = Channel::pair().unwrap();
        let m = Message::Pod {
            uid: "u".into(),
            key: "ns/p".into(),
            netns_cookie: 1,
            listeners: vec![Label {
                port: 1,
                family: Family::V4,
            }],
        };
        a.send(&m, &[]).unwrap();
        assert!(matches!(
            b.recv(),
            Err(ChannelError::Wire(WireError::Descriptors { .. }))
        ));
        drop(a);
        assert!(b.recv().unwrap().is_none());
    }

    #[test]
    fn a_silent_peer_fails_the_receive_at_the_deadline() {
        let (_a, b) = Channel::pair().unwrap();
        b.set_deadline(Duration::from_millis(50)).unwrap();
        let started = std::time::Instant::now();
        assert!(matches!(b.recv(), Err(ChannelError::Io(_))));
        assert!(started.elapsed() < Duration::from_secs(2));
    }

    #[test]
    fn a_socket_at_a_path_serves_its_own_user() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("handover.sock");
        let listener = Listener::bind(&path).unwrap();
        let client = Channel::connect(&path).unwrap();
        let server = listener.accept().unwrap();
        server.check_peer().unwrap();
        client.check_peer().unwrap();
        client.send(&Message::Hello { version: 1 }, &[]).unwrap();
        assert_eq!(
            server.recv().unwrap().unwrap().0,
            Message::Hello { version: 1 }
        );
    }
}
