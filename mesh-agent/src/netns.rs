//! Sockets inside another network namespace. A socket belongs to the netns
//! its creator was in at `socket()` time, and `setns` moves only the calling
//! thread; so each pod gets one worker thread parked in its netns that makes
//! sockets on request. The sockets are then used from any thread.
use std::{
    fs::File,
    io,
    os::fd::{AsFd, AsRawFd},
    path::{Path, PathBuf},
    sync::mpsc,
    thread,
};

use socket2::{Domain, Protocol, Socket, Type};
use tokio::sync::oneshot;

const SO_NETNS_COOKIE: libc::c_int = 71;
const NSFS_MAGIC: i64 = 0x6e73_6673;

#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    #[error("netns {path}: {source}; check the pod's `mesh.io/netns` path")]
    Open { path: PathBuf, source: io::Error },
    #[error(
        "netns {path}: not a network namespace file (expected a /run/netns/<name> or /proc/<pid>/ns/net path)"
    )]
    NotNetns { path: PathBuf },
    #[error("netns {path}: cannot enter: {source}")]
    Enter { path: PathBuf, source: io::Error },
}

/// An open handle on a network namespace.
#[derive(Debug)]
pub struct Netns {
    file: File,
    path: PathBuf,
}

impl Netns {
    pub fn open(path: &Path) -> Result<Self, NetnsError> {
        let file = File::open(path).map_err(|source| NetnsError::Open {
            path: path.to_owned(),
            source,
        })?;
        let mut st: libc::statfs = unsafe { std::mem::zeroed() };
        let rc = unsafe { libc::fstatfs(file.as_raw_fd(), &mut st) };
        // /proc/<pid>/ns/net lives on nsfs; a /run/netns bind mount does too.
        if rc != 0 || st.f_type as i64 != NSFS_MAGIC {
            return Err(NetnsError::NotNetns {
                path: path.to_owned(),
            });
        }
        Ok(Self {
            file,
            path: path.to_owned(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn enter(&self) -> Result<(), NetnsError> {
        let rc = unsafe { libc::setns(self.file.as_raw_fd(), libc::CLONE_NEWNET) };
        if rc != 0 {
            return Err(NetnsError::Enter {
                path: self.path.clone(),
                source: io::Error::last_os_error(),
            });
        }
        Ok(())
    }

    fn try_clone(&self) -> io::Result<Self> {
        Ok(Self {
            file: self.file.try_clone()?,
            path: self.path.clone(),
        })
    }
}

impl AsFd for Netns {
    fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.file.as_fd()
    }
}

enum Reply {
    Async(oneshot::Sender<io::Result<Socket>>),
    Sync(mpsc::Sender<io::Result<Socket>>),
}

type Request = (Domain, Reply);

/// Makes TCP sockets inside one netns. Dropping it ends the worker thread.
#[derive(Debug, Clone)]
pub struct SocketFactory {
    tx: mpsc::Sender<Request>,
    cookie: u64,
}

impl SocketFactory {
    pub fn spawn(netns: &Netns, name: &str) -> Result<Self, NetnsError> {
        let ns = netns.try_clone().map_err(|source| NetnsError::Open {
            path: netns.path.clone(),
            source,
        })?;
        let (tx, rx) = mpsc::channel::<Request>();
        let (ready_tx, ready_rx) = mpsc::channel();
        thread::Builder::new()
            .name(format!("netns-{name}"))
            .spawn(move || {
                if let Err(e) = ns.enter() {
                    let _ = ready_tx.send(Err(e));
                    return;
                }
                let cookie = new_tcp(Domain::IPV4).and_then(|s| netns_cookie(&s));
                let _ = ready_tx.send(Ok(cookie));
                for (domain, reply) in rx {
                    let socket = new_tcp(domain);
                    let _ = match reply {
                        Reply::Async(tx) => tx.send(socket).map_err(drop),
                        Reply::Sync(tx) => tx.send(socket).map_err(drop),
                    };
                }
            })
            .map_err(|source| NetnsError::Enter {
                path: netns.path.clone(),
                source,
            })?;
        let cookie = ready_rx
            .recv()
            .map_err(|_| NetnsError::Enter {
                path: netns.path.clone(),
                source: io::Error::other("netns worker exited"),
            })??
            .map_err(|source| NetnsError::Enter {
                path: netns.path.clone(),
                source,
            })?;
        Ok(Self { tx, cookie })
    }

    /// The netns cookie, as the kernel programs see it.
    pub fn cookie(&self) -> u64 {
        self.cookie
    }

    /// A new TCP socket in the netns (blocking until the worker answers).
    pub async fn socket(&self, domain: Domain) -> io::Result<Socket> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send((domain, Reply::Async(reply)))
            .map_err(|_| io::Error::other("netns worker gone"))?;
        rx.await
            .map_err(|_| io::Error::other("netns worker gone"))?
    }

    /// As [`Self::socket`], for setup code that is not async (the worker
    /// answers at once, so this blocks only for a thread hop).
    pub fn socket_blocking(&self, domain: Domain) -> io::Result<Socket> {
        let (reply, rx) = mpsc::channel();
        self.tx
            .send((domain, Reply::Sync(reply)))
            .map_err(|_| io::Error::other("netns worker gone"))?;
        rx.recv()
            .map_err(|_| io::Error::other("netns worker gone"))?
    }
}

fn new_tcp(domain: Domain) -> io::Result<Socket> {
    let s = Socket::new(domain, Type::STREAM.cloexec(), Some(Protocol::TCP))?;
    s.set_nonblocking(true)?;
    Ok(s)
}

/// The cookie of the netns a socket lives in (SO_NETNS_COOKIE, Linux 5.14+).
pub fn netns_cookie(s: &impl AsRawFd) -> io::Result<u64> {
    let mut cookie: u64 = 0;
    let mut len = std::mem::size_of::<u64>() as libc::socklen_t;
    let rc = unsafe {
        libc::getsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            SO_NETNS_COOKIE,
            (&mut cookie as *mut u64).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(cookie)
}
