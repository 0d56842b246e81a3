//! TCP-to-TCP relaying with splice(2): bytes move socket → pipe → socket as
//! page references, never through the agent's memory. Used when both ends
//! are plain TCP (the plaintext path); TLS streams use the generic relay.
use std::{
    io,
    os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd},
};

use mesh_hbone::relay::Transferred;
use tokio::{io::Interest, net::TcpStream};

/// Large pipes mean fewer splice calls per megabyte.
const PIPE_SIZE: libc::c_int = 1 << 20;

struct Pipe {
    read: OwnedFd,
    write: OwnedFd,
}

impl Pipe {
    fn new() -> io::Result<Self> {
        let mut fds = [0 as RawFd; 2];
        if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_NONBLOCK | libc::O_CLOEXEC) } != 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: pipe2 just returned these two descriptors to us alone.
        let pipe = unsafe {
            Pipe {
                read: OwnedFd::from_raw_fd(fds[0]),
                write: OwnedFd::from_raw_fd(fds[1]),
            }
        };
        // Best effort: a smaller pipe still works, only with more calls.
        unsafe { libc::fcntl(pipe.write.as_raw_fd(), libc::F_SETPIPE_SZ, PIPE_SIZE) };
        Ok(pipe)
    }
}

fn splice(from: RawFd, to: RawFd, len: usize) -> io::Result<usize> {
    let n = unsafe {
        libc::splice(
            from,
            std::ptr::null_mut(),
            to,
            std::ptr::null_mut(),
            len,
            libc::SPLICE_F_MOVE | libc::SPLICE_F_NONBLOCK,
        )
    };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

/// One direction: until `from` reaches end of stream, then shut down
/// writing on `to` (half-close).
async fn pump(from: &TcpStream, to: &TcpStream) -> io::Result<u64> {
    let pipe = Pipe::new()?;
    let mut total = 0u64;
    loop {
        let filled = loop {
            from.readable().await?;
            match from.try_io(Interest::READABLE, || {
                splice(from.as_raw_fd(), pipe.write.as_raw_fd(), PIPE_SIZE as usize)
            }) {
                Ok(n) => break n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Err(e),
            }
        };
        if filled == 0 {
            socket2::SockRef::from(to).shutdown(std::net::Shutdown::Write)?;
            return Ok(total);
        }
        let mut left = filled;
        while left > 0 {
            to.writable().await?;
            match to.try_io(Interest::WRITABLE, || {
                splice(pipe.read.as_raw_fd(), to.as_raw_fd(), left)
            }) {
                Ok(n) => {
                    left -= n;
                    total += n as u64;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Err(e),
            }
        }
    }
}

/// Both directions at once, each with its own pipe.
pub async fn relay(
    downstream: &mut TcpStream,
    upstream: &mut TcpStream,
) -> io::Result<Transferred> {
    let (d2u, u2d) = tokio::try_join!(
        pump(&*downstream, &*upstream),
        pump(&*upstream, &*downstream)
    )?;
    Ok(Transferred {
        downstream_to_upstream: d2u,
        upstream_to_downstream: u2d,
    })
}
