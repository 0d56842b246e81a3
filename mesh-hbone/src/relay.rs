//! Copying between two streams until both directions are done. When one side
//! stops writing, the other side's write half is shut down and the reverse
//! direction keeps flowing (half-close), as TCP applications expect.
use std::io;

use tokio::io::{AsyncRead, AsyncWrite, copy_bidirectional_with_sizes};

/// Large buffers: bulk transfers move in fewer syscalls.
const BUF: usize = 64 * 1024;

/// Bytes moved in each direction.
#[derive(Debug, Default, Clone, Copy)]
pub struct Transferred {
    pub downstream_to_upstream: u64,
    pub upstream_to_downstream: u64,
}

pub async fn relay<A, B>(downstream: &mut A, upstream: &mut B) -> io::Result<Transferred>
where
    A: AsyncRead + AsyncWrite + Unpin + ?Sized,
    B: AsyncRead + AsyncWrite + Unpin + ?Sized,
{
    let (d2u, u2d) = copy_bidirectional_with_sizes(downstream, upstream, BUF, BUF).await?;
    Ok(Transferred {
        downstream_to_upstream: d2u,
        upstream_to_downstream: u2d,
    })
}

/// Closes a TCP stream with a reset, so the peer sees a failure rather than
/// a clean end of stream.
pub fn reset(stream: tokio::net::TcpStream) {
    reset_on_close(&stream);
}

/// Makes the stream's eventual close a reset (SO_LINGER 0).
pub fn reset_on_close(stream: &tokio::net::TcpStream) {
    let _ = socket2::SockRef::from(stream).set_linger(Some(std::time::Duration::ZERO));
}

/// Sets SO_LINGER 0 on every TCP socket the process holds, so that exiting
/// resets them: for the end of a drain, when whatever is still open was cut
/// short. Returns how many sockets were set.
pub fn reset_all_on_exit() -> usize {
    let Ok(fds) = std::fs::read_dir("/proc/self/fd") else {
        return 0;
    };
    let mut set = 0;
    for entry in fds.flatten() {
        let Some(fd) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<i32>().ok())
        else {
            continue;
        };
        // SAFETY: the fd is borrowed only for the calls below, while the
        // process (about to exit) still holds it.
        let socket = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
        let socket = socket2::SockRef::from(&socket);
        if socket.r#type().is_ok_and(|t| t == socket2::Type::STREAM)
            && socket.set_linger(Some(std::time::Duration::ZERO)).is_ok()
        {
            set += 1;
        }
    }
    set
}
