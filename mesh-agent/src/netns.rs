//! Sockets inside another network namespace. A socket belongs to the netns
//! its creator was in at `socket()` time, and `setns` moves only the calling
//! thread; so the thread steps into the pod's netns for that one call.
use std::{
    fs::File,
    io,
    os::{
        fd::{AsFd, AsRawFd},
        unix::fs::MetadataExt,
    },
    path::{Path, PathBuf},
    sync::{Arc, OnceLock},
};

use socket2::{Domain, Protocol, Socket, Type};

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

    /// The namespace's inode: two handles on one netns have the same.
    pub fn inode(&self) -> io::Result<u64> {
        Ok(self.file.metadata()?.ino())
    }

    /// Whether this is the agent's own netns, which on a node is the host's
    /// (the agent runs with hostNetwork): never a pod's.
    pub fn is_agents_own(&self) -> io::Result<bool> {
        let own = home()?.metadata()?;
        let this = self.file.metadata()?;
        Ok(own.ino() == this.ino() && own.dev() == this.dev())
    }

    /// Another handle on the same namespace (no path is opened again).
    pub fn try_clone(&self) -> io::Result<Self> {
        Ok(Self {
            file: self.file.try_clone()?,
            path: self.path.clone(),
        })
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
}

impl AsFd for Netns {
    fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.file.as_fd()
    }
}

/// The agent's own network namespace, opened before any thread leaves it.
static HOME: OnceLock<io::Result<File>> = OnceLock::new();

fn home() -> io::Result<&'static File> {
    HOME.get_or_init(|| File::open("/proc/thread-self/ns/net"))
        .as_ref()
        .map_err(|e| io::Error::new(e.kind(), format!("opening the agent's own netns: {e}")))
}

/// Makes TCP sockets inside one netns. The calling thread enters the netns
/// for the `socket()` call alone and returns at once: a socket stays in the
/// netns it was made in, wherever it is used from. No thread hop and no
/// `.await` sit between the two `setns` calls, so nothing else ever runs on
/// the thread while it is away.
#[derive(Debug, Clone)]
pub struct SocketFactory {
    netns: Arc<Netns>,
    cookie: u64,
}

impl SocketFactory {
    pub fn new(netns: &Netns) -> Result<Self, NetnsError> {
        let ns = netns.try_clone().map_err(|source| NetnsError::Open {
            path: netns.path.clone(),
            source,
        })?;
        let mut factory = Self {
            netns: Arc::new(ns),
            cookie: 0,
        };
        let probe = factory
            .socket(Domain::IPV4)
            .map_err(|source| NetnsError::Enter {
                path: netns.path.clone(),
                source,
            })?;
        factory.cookie = netns_cookie(&probe).map_err(|source| NetnsError::Enter {
            path: netns.path.clone(),
            source,
        })?;
        Ok(factory)
    }

    /// The netns cookie, as the kernel programs see it.
    pub fn cookie(&self) -> u64 {
        self.cookie
    }

    /// The namespace the sockets are made in.
    pub fn netns(&self) -> &Netns {
        &self.netns
    }

    /// A new non-blocking TCP socket in the netns.
    pub fn socket(&self, domain: Domain) -> io::Result<Socket> {
        self.within(|| new_tcp(domain))?
    }

    /// Runs `f` on this thread inside the netns: for what binds to the
    /// namespace it is made in (a netlink socket, a /proc/sys/net file
    /// opened). `f` must not block or await: nothing else runs on the
    /// thread until it returns.
    pub fn within<T>(&self, f: impl FnOnce() -> T) -> io::Result<T> {
        let home = home()?;
        self.netns
            .enter()
            .map_err(|e| io::Error::other(e.to_string()))?;
        let out = f();
        if unsafe { libc::setns(home.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            // A thread stranded in a pod's netns would open other pods'
            // sockets there; stopping is the only safe answer (the
            // datapath fails closed until the agent is back).
            let e = io::Error::last_os_error();
            tracing::error!(error = %e, "cannot return to the agent's netns; exiting");
            std::process::abort();
        }
        Ok(out)
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
