//! Hand-over between two agents of one node, so an upgrade or a restart
//! refuses and resets nothing. The running agent serves a Unix socket
//! (`<dir>/handover.sock`); a new agent asks it first. The running agent
//! passes every enrolled pod's listening sockets (15001, 15006, 15008, each
//! family), each labelled (`wire::Message::Pod`); the new agent adopts them
//! instead of opening its own, but accepts on them only once the running
//! agent has stopped accepting: it says `Ready` when it is, the running
//! agent stops and answers `Stopped`, and meanwhile the kernel queues SYNs
//! on the shared sockets. The old agent then drains what it holds (until
//! the hand-over drain deadline) and exits. Until `Ready`, nothing the old
//! agent does changes: a successor that fails, or dies, leaves it serving.
//! After `Stopped` the old agent keeps its end of the conversation open
//! until its process ends, so the new one learns when it has exited
//! (`Taken::exited`): until then its cgroup stays exempt from capture.
pub mod channel;
pub mod wire;

use std::{
    collections::BTreeMap,
    future::Future,
    io,
    os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd},
    path::PathBuf,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use tokio::{
    net::TcpListener,
    sync::{mpsc, oneshot, watch},
};
use tracing::{info, warn};

use self::{
    channel::{Channel, ChannelError, Listener},
    wire::{Family, Label, Message, Mismatch, Observed},
};

/// How long a running agent waits for a successor's `Hello`.
const HELLO: Duration = Duration::from_secs(5);
/// How long the running agent takes to stop accepting, at most.
const STOP: Duration = Duration::from_secs(10);
/// Between tries when the running agent said `Moved` or closed unasked.
const RETRY: Duration = Duration::from_millis(200);

/// Where and how long; from `mesh-agent node --handover-*`.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Holds `handover.sock` (mode 0700, the agent's user only).
    pub dir: PathBuf,
    /// How long an agent that handed over keeps serving its established
    /// connections before it resets what remains and exits.
    pub drain: Duration,
    /// How long a new agent may take to become ready after it was offered
    /// the running agent's sockets; past it, it exits and the running
    /// agent keeps serving.
    pub ready_timeout: Duration,
}

impl Settings {
    pub fn socket(&self) -> PathBuf {
        self.dir.join("handover.sock")
    }
}

#[derive(Debug, thiserror::Error)]
pub enum HandoverError {
    #[error("hand-over directory {dir}: {source}")]
    Dir { dir: PathBuf, source: io::Error },
    #[error("hand-over with the running agent at {socket}: {source}")]
    Channel {
        socket: PathBuf,
        source: ChannelError,
    },
    #[error("the running agent at {socket} refused the hand-over: {reason}")]
    Refused { socket: PathBuf, reason: String },
    #[error("the running agent at {socket} sent `{kind}` where {expected} belongs")]
    Unexpected {
        socket: PathBuf,
        kind: &'static str,
        expected: &'static str,
    },
    #[error(
        "pod {pod}: passed socket {label:?}: {problem}; not adopted, so the running agent keeps serving"
    )]
    Mislabelled {
        pod: String,
        label: Label,
        problem: Mismatch,
    },
    #[error(
        "the running agent at {socket} did not hand over within {waited:?} (another new agent may hold it); retry later"
    )]
    Busy { socket: PathBuf, waited: Duration },
}

/// One pod's sockets as a running agent passes them.
pub struct PodOffer {
    pub uid: String,
    pub key: String,
    pub netns_cookie: u64,
    pub sockets: Vec<(Label, OwnedFd)>,
}

/// What a pod's runtime records of its listeners so it can offer them.
pub type Listening = Vec<(Label, RawFd)>;

/// The labels and raw descriptors of `listeners` on `port`. The raw
/// descriptors stay valid while the accept tasks that own the listeners
/// run; the runtime forgets them when it stops those tasks.
pub fn labelled(listeners: &[TcpListener], port: u16) -> Listening {
    listeners
        .iter()
        .filter_map(|l| {
            let family = if l.local_addr().ok()?.is_ipv4() {
                Family::V4
            } else {
                Family::V6
            };
            Some((Label { port, family }, l.as_raw_fd()))
        })
        .collect()
}

/// Copies of recorded listeners, for an offer.
pub fn duplicate(listening: &Listening) -> io::Result<Vec<(Label, OwnedFd)>> {
    listening
        .iter()
        .map(|(label, fd)| {
            // SAFETY: see `labelled`: the caller holds the accept tasks
            // that own these descriptors.
            let fd = unsafe { BorrowedFd::borrow_raw(*fd) };
            Ok((*label, fd.try_clone_to_owned()?))
        })
        .collect()
}

/// A pod's sockets taken over from the running agent, for `enroll`.
pub struct Inherited {
    pub netns_cookie: u64,
    sockets: Vec<(Label, OwnedFd)>,
    gate: watch::Receiver<bool>,
}

impl Inherited {
    /// The sockets on `port` for the families wanted, as tokio listeners;
    /// `None` when the running agent did not have all of them.
    pub fn take(&mut self, port: u16, want_v6: bool) -> Option<io::Result<Vec<TcpListener>>> {
        let wanted: &[Family] = if want_v6 {
            &[Family::V4, Family::V6]
        } else {
            &[Family::V4]
        };
        if !wanted.iter().all(|f| {
            self.sockets
                .iter()
                .any(|(l, _)| l.port == port && l.family == *f)
        }) {
            return None;
        }
        let mut out = Vec::new();
        for family in wanted {
            let i = self
                .sockets
                .iter()
                .position(|(l, _)| l.port == port && l.family == *family)?;
            let (_, fd) = self.sockets.swap_remove(i);
            let std = std::net::TcpListener::from(fd);
            let adopted = std
                .set_nonblocking(true)
                .and_then(|()| TcpListener::from_std(std));
            out.push(adopted);
        }
        Some(out.into_iter().collect())
    }

    /// Opens once the running agent has stopped accepting (and never, when
    /// the hand-over is abandoned).
    pub fn gate(&self) -> watch::Receiver<bool> {
        self.gate.clone()
    }
}

/// Whether a new agent may have the running one stop now.
#[derive(Debug, PartialEq, Eq)]
pub enum TakeOver {
    Now,
    /// Not yet: this agent is not ready, or these pods the running agent
    /// serves are pending here (taking over would close their listeners).
    Wait {
        ready: bool,
        pending: Vec<String>,
    },
}

impl TakeOver {
    /// `offered`: every pod the running agent offered, by key; `pending`:
    /// this agent's pods that should be enrolled and are not, by key. A pod
    /// offered and no longer wanted here (gone from the view) holds
    /// nothing back.
    pub fn decide<'a>(
        ready: bool,
        offered: impl IntoIterator<Item = &'a str>,
        pending: &BTreeMap<String, String>,
    ) -> Self {
        let pending: Vec<String> = offered
            .into_iter()
            .filter(|key| pending.contains_key(*key))
            .map(str::to_owned)
            .collect();
        if ready && pending.is_empty() {
            TakeOver::Now
        } else {
            TakeOver::Wait { ready, pending }
        }
    }
}

/// Runs `serve` once `gate` opens; drops it unrun when the hand-over is
/// abandoned. Serving futures are lazy, so nothing accepts before.
pub async fn after_gate(gate: Option<watch::Receiver<bool>>, serve: impl Future<Output = ()>) {
    if let Some(mut gate) = gate
        && gate.wait_for(|open| *open).await.is_err()
    {
        return;
    }
    serve.await;
}

/// The running agent, while this one takes over from it.
pub struct Predecessor {
    socket: PathBuf,
    channel: Channel,
    offered: BTreeMap<String, PodOffer>,
    /// Pods whose sockets were taken (uid → key).
    adopted: BTreeMap<String, String>,
    gate: watch::Sender<bool>,
    /// When the offer was complete: the ready timeout counts from here on
    /// both sides, so the running agent never gives up first.
    offered_at: Instant,
}

impl Predecessor {
    /// Asks the agent serving `settings.socket()`, if any. `Ok(None)`: none
    /// answers (none runs, or it crashed): start as a first agent does.
    /// While another new agent is being served, this one waits in the
    /// socket's queue (bounded by the ready timeout and a margin).
    pub async fn ask(settings: &Settings) -> Result<Option<Self>, HandoverError> {
        let socket = settings.socket();
        let waited = settings.ready_timeout + STOP + HELLO;
        tokio::task::spawn_blocking(move || ask_blocking(socket, waited))
            .await
            .expect("the hand-over request does not panic")
    }

    /// The sockets of pod `uid`, once: to adopt when enrolling it.
    pub fn take(&mut self, uid: &str, netns_cookie: u64) -> Option<Inherited> {
        let offered = self.offered.get(uid)?;
        if offered.netns_cookie != netns_cookie {
            // Kept: the pod counts as not held, so this agent does not
            // take over while the running one serves it there.
            warn!(pod = %offered.key, offered = offered.netns_cookie, found = netns_cookie, "the running agent's sockets for this pod are in another netns; not adopted");
            return None;
        }
        let offer = self.offered.remove(uid)?;
        self.adopted.insert(offer.uid.clone(), offer.key.clone());
        Some(Inherited {
            netns_cookie,
            sockets: offer.sockets,
            gate: self.gate.subscribe(),
        })
    }

    /// Every pod offered, adopted or not (by key): the running agent
    /// serves each of them until this one takes over.
    pub fn offered(&self) -> impl Iterator<Item = &str> {
        self.offered
            .values()
            .map(|o| o.key.as_str())
            .chain(self.adopted.values().map(String::as_str))
    }

    pub fn adopted(&self) -> usize {
        self.adopted.len()
    }

    /// When this agent must be ready by, or give up.
    pub fn ready_by(&self, ready_timeout: Duration) -> Instant {
        self.offered_at + ready_timeout
    }

    /// Tells the running agent to stop accepting and waits until it has;
    /// the adopted sockets are served once the returned gate is opened.
    pub async fn commit(self) -> Result<Taken, HandoverError> {
        let Predecessor {
            socket,
            channel,
            offered,
            adopted,
            gate,
            offered_at: _,
        } = self;
        // Sockets of pods this agent does not enroll close here; the
        // running agent's copies close when it stops accepting.
        drop(offered);
        let answer = tokio::task::spawn_blocking(move || {
            let err = |source| HandoverError::Channel {
                socket: socket.clone(),
                source,
            };
            channel.set_deadline(STOP).map_err(|e| err(e.into()))?;
            channel.send(&Message::Ready, &[]).map_err(err)?;
            match channel.recv().map_err(err)? {
                Some((Message::Stopped, _)) => Ok(Some(channel)),
                // Closed without an answer: gone (crashed, or exited), so
                // it accepts on nothing any more either, if its socket no
                // longer answers; alive (it gave up on this agent), then
                // starting would make two agents accept.
                None => match Channel::connect(&socket) {
                    Err(e) if e.raw_os_error() == Some(libc::ECONNREFUSED) => Ok(None),
                    _ => Err(HandoverError::Refused {
                        socket,
                        reason: "it closed the hand-over without stopping, and still runs".into(),
                    }),
                },
                Some((Message::Refused { reason }, _)) => {
                    Err(HandoverError::Refused { socket, reason })
                }
                Some((other, _)) => Err(HandoverError::Unexpected {
                    socket,
                    kind: other.kind(),
                    expected: "`stopped`",
                }),
            }
        })
        .await
        .expect("the hand-over commit does not panic")?;
        info!(
            pods = adopted.len(),
            answered = answer.is_some(),
            "the running agent stopped accepting and drains"
        );
        Ok(Taken {
            gate,
            predecessor: answer,
        })
    }
}

/// The running agent has stopped accepting on the adopted sockets.
pub struct Taken {
    gate: watch::Sender<bool>,
    /// The conversation, which the old agent holds open until it exits;
    /// `None` when it had gone before it answered.
    predecessor: Option<Channel>,
}

impl Taken {
    /// Resolves once the agent taken over from has exited (at once when it
    /// was gone already): its end of the conversation closes with its
    /// process, whatever way it ends. An agent from before it held the
    /// conversation open closes it at once, and so counts as exited.
    /// Waits on a thread of its own, as long as the old agent drains.
    /// Resolves with an error when the exit cannot be watched (no thread,
    /// or the socket fails otherwise): the old agent may still run.
    pub fn exited(&mut self) -> oneshot::Receiver<()> {
        let (tx, rx) = oneshot::channel();
        let Some(channel) = self.predecessor.take() else {
            let _ = tx.send(());
            return rx;
        };
        let spawned = std::thread::Builder::new()
            .name("handover-exit".into())
            .spawn(move || {
                if wait_for_close(&channel) {
                    let _ = tx.send(());
                }
            });
        if let Err(e) = spawned {
            // The sender is dropped with the closure: the receiver resolves
            // with an error, which is not an exit, and the old agent stays
            // exempt (the safe side).
            warn!(error = %e, "cannot watch the old agent's exit; its cgroup stays exempt");
        }
        rx
    }

    /// This agent's accept tasks on the adopted sockets start.
    pub fn open(self) {
        let _ = self.gate.send(true);
    }
}

/// Blocks until the peer closes `channel`: `true`. `false` when that cannot
/// be told (the socket fails otherwise): the caller keeps assuming it runs.
fn wait_for_close(channel: &Channel) -> bool {
    // No deadline: it drains for as long as `--handover-drain` lets it.
    if let Err(e) = channel.set_deadline(Duration::ZERO) {
        warn!(error = %e, "hand-over socket: cannot wait for the old agent's exit");
        return false;
    }
    loop {
        match channel.recv() {
            Ok(None) => return true,
            Err(ChannelError::Io(e)) if e.raw_os_error() == Some(libc::ECONNRESET) => return true,
            Err(ChannelError::Io(e)) if e.kind() == io::ErrorKind::Interrupted => {}
            // It says nothing after `Stopped`; whatever it sends is not
            // an exit.
            Ok(Some((message, _))) => {
                warn!(
                    kind = message.kind(),
                    "the old agent spoke after stopping; ignored"
                );
            }
            Err(e) => {
                warn!(error = %e, "hand-over socket: cannot wait for the old agent's exit");
                return false;
            }
        }
    }
}

fn ask_blocking(socket: PathBuf, waited: Duration) -> Result<Option<Predecessor>, HandoverError> {
    let started = Instant::now();
    let err = |source: ChannelError| HandoverError::Channel {
        socket: socket.clone(),
        source,
    };
    loop {
        let remaining = waited.saturating_sub(started.elapsed());
        if remaining.is_zero() {
            return Err(HandoverError::Busy { socket, waited });
        }
        let channel = match Channel::connect(&socket) {
            Ok(c) => c,
            Err(e) if matches!(e.raw_os_error(), Some(libc::ENOENT | libc::ECONNREFUSED)) => {
                info!(socket = %socket.display(), reason = %e, "no running agent answers the hand-over socket; starting afresh");
                return Ok(None);
            }
            Err(e) => return Err(err(e.into())),
        };
        channel.check_peer().map_err(err)?;
        channel.set_deadline(remaining).map_err(|e| err(e.into()))?;
        channel
            .send(
                &Message::Hello {
                    version: wire::VERSION,
                },
                &[],
            )
            .map_err(err)?;
        let mut offered = BTreeMap::new();
        let first = match channel.recv() {
            Ok(m) => m,
            // Queued while the agent handed over to another: it closed.
            Err(ChannelError::Io(e)) if e.raw_os_error() == Some(libc::ECONNRESET) => None,
            Err(e) => return Err(err(e)),
        };
        let mut next = match first {
            None | Some((Message::Moved, _)) => {
                std::thread::sleep(RETRY);
                continue;
            }
            Some(m) => Some(m),
        };
        loop {
            let Some((message, fds)) = next.take() else {
                return Err(err(ChannelError::Io(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "closed in the middle of its offer",
                ))));
            };
            match message {
                Message::Pod {
                    uid,
                    key,
                    netns_cookie,
                    listeners,
                } => {
                    let mut sockets = Vec::new();
                    for (label, fd) in listeners.into_iter().zip(fds) {
                        wire::check(label, netns_cookie, observe(fd.as_fd())).map_err(
                            |problem| HandoverError::Mislabelled {
                                pod: key.clone(),
                                label,
                                problem,
                            },
                        )?;
                        sockets.push((label, fd));
                    }
                    offered.insert(
                        uid.clone(),
                        PodOffer {
                            uid,
                            key,
                            netns_cookie,
                            sockets,
                        },
                    );
                }
                Message::Offered { pods } if pods == offered.len() => break,
                Message::Refused { reason } => {
                    return Err(HandoverError::Refused { socket, reason });
                }
                other => {
                    return Err(HandoverError::Unexpected {
                        socket,
                        kind: other.kind(),
                        expected: "`pod` or `offered` (with as many pods as sent)",
                    });
                }
            }
            next = channel.recv().map_err(err)?;
        }
        info!(socket = %socket.display(), pods = offered.len(), "the running agent offered its pods' sockets");
        let (gate, _) = watch::channel(false);
        return Ok(Some(Predecessor {
            socket,
            channel,
            offered,
            adopted: BTreeMap::new(),
            gate,
            offered_at: Instant::now(),
        }));
    }
}

/// What a passed descriptor is, as the kernel says.
fn observe(fd: BorrowedFd<'_>) -> Observed {
    let int = |level, opt| -> Option<libc::c_int> {
        let mut v: libc::c_int = 0;
        let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
        // SAFETY: an int of the size given.
        let rc =
            unsafe { libc::getsockopt(fd.as_raw_fd(), level, opt, (&raw mut v).cast(), &mut len) };
        (rc == 0).then_some(v)
    };
    let local = socket2::SockRef::from(&fd)
        .local_addr()
        .ok()
        .and_then(|a| a.as_socket());
    Observed {
        listening: int(libc::SOL_SOCKET, libc::SO_ACCEPTCONN) == Some(1),
        tcp: int(libc::SOL_SOCKET, libc::SO_PROTOCOL) == Some(libc::IPPROTO_TCP),
        netns_cookie: crate::netns::netns_cookie(&fd.as_raw_fd()).unwrap_or(0),
        port: local.map_or(0, |a| a.port()),
        family: if local.is_some_and(|a| a.is_ipv6()) {
            Family::V6
        } else {
            Family::V4
        },
    }
}

/// What the hand-over socket asks of the node's loop.
pub enum Request {
    /// Copies of every enrolled pod's listening sockets.
    Offer(oneshot::Sender<Vec<PodOffer>>),
    /// Stop accepting everywhere; answer once stopped.
    Stop(oneshot::Sender<()>),
}

/// The running agent's side: a thread serving the socket one successor at
/// a time, asking the node's loop through `next`.
pub struct Server {
    requests: mpsc::Receiver<Request>,
    /// Set while a successor holds an offer and has not yet said `Ready`
    /// or left.
    offering: Arc<AtomicBool>,
}

impl Server {
    /// Serves `settings.socket()`. `replacing`: this agent took over from
    /// the one serving it, so the new socket is bound beside the path and
    /// renamed over it (a third agent always finds one that answers);
    /// otherwise a file left there answers nobody (asked already) and is
    /// removed.
    pub fn start(settings: &Settings, replacing: bool) -> Result<Self, HandoverError> {
        let dir_err = |source| HandoverError::Dir {
            dir: settings.dir.clone(),
            source,
        };
        {
            use std::os::unix::fs::DirBuilderExt;
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(&settings.dir)
                .map_err(dir_err)?;
        }
        let path = settings.socket();
        let listener = if replacing {
            let beside = settings
                .dir
                .join(format!("handover.sock.{}", std::process::id()));
            let _ = std::fs::remove_file(&beside);
            let l = Listener::bind(&beside).map_err(dir_err)?;
            std::fs::rename(&beside, &path).map_err(dir_err)?;
            l
        } else {
            match std::fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(dir_err(e)),
            }
            Listener::bind(&path).map_err(dir_err)?
        };
        let (tx, requests) = mpsc::channel(1);
        let ready_wait = settings.ready_timeout + STOP;
        let offering = Arc::new(AtomicBool::new(false));
        let flag = offering.clone();
        std::thread::Builder::new()
            .name("handover".into())
            .spawn(move || serve(listener, path, tx, ready_wait, &flag))
            .map_err(dir_err)?;
        Ok(Self { requests, offering })
    }

    /// Whether a successor holds this agent's sockets and may yet say
    /// `Ready`: stopping now would leave it to take over a stopped node.
    pub fn offering(&self) -> bool {
        self.offering.load(Ordering::SeqCst)
    }

    /// The next request; never resolves once the serving thread is gone.
    pub async fn next(&mut self) -> Request {
        match self.requests.recv().await {
            Some(r) => r,
            None => std::future::pending().await,
        }
    }
}

fn serve(
    listener: Listener,
    path: PathBuf,
    node: mpsc::Sender<Request>,
    ready_wait: Duration,
    offering: &AtomicBool,
) {
    let mut handed = false;
    // The successor's end of the conversation: held until this process
    // exits, which closes it and tells the successor (`Taken::exited`).
    let mut _successor = None;
    loop {
        let channel = match listener.accept() {
            Ok(c) => c,
            Err(e) => {
                warn!(socket = %path.display(), error = %e, "hand-over socket: accept failed");
                std::thread::sleep(RETRY);
                continue;
            }
        };
        if handed {
            // A successor that queued while another took over: it asks the
            // socket's path again, which the new agent now serves.
            let _ = channel.send(&Message::Moved, &[]);
            continue;
        }
        let outcome = session(&channel, &node, ready_wait, offering);
        offering.store(false, Ordering::SeqCst);
        match outcome {
            Ok(true) => {
                handed = true;
                _successor = Some(channel);
                info!(socket = %path.display(), "handed over to the new agent");
            }
            Ok(false) => {
                warn!(socket = %path.display(), "the new agent left before it was ready; still serving");
            }
            Err(e) => {
                let _ = channel.send(
                    &Message::Refused {
                        reason: e.to_string(),
                    },
                    &[],
                );
                warn!(socket = %path.display(), error = %e, "hand-over refused; still serving");
            }
        }
    }
}

/// One successor. `Ok(true)`: it took over and this agent stopped
/// accepting. `Ok(false)`: it went away before `Ready`; nothing changed.
fn session(
    channel: &Channel,
    node: &mpsc::Sender<Request>,
    ready_wait: Duration,
    offering: &AtomicBool,
) -> Result<bool, ChannelError> {
    channel.check_peer()?;
    channel.set_deadline(HELLO)?;
    match channel.recv()? {
        Some((Message::Hello { version }, _)) => wire::accept_hello(version)?,
        Some((other, _)) => {
            return Err(ChannelError::Io(io::Error::other(format!(
                "expected `hello`, got `{}`",
                other.kind()
            ))));
        }
        None => return Ok(false),
    }
    let (tx, rx) = oneshot::channel();
    if node.blocking_send(Request::Offer(tx)).is_err() {
        return Err(io::Error::other("the agent is stopping").into());
    }
    let offers = rx
        .blocking_recv()
        .map_err(|_| io::Error::other("the agent is stopping"))?;
    let pods = offers.len();
    for offer in offers {
        let fds: Vec<BorrowedFd<'_>> = offer.sockets.iter().map(|(_, fd)| fd.as_fd()).collect();
        channel.send(
            &Message::Pod {
                uid: offer.uid.clone(),
                key: offer.key.clone(),
                netns_cookie: offer.netns_cookie,
                listeners: offer.sockets.iter().map(|(l, _)| *l).collect(),
            },
            &fds,
        )?;
    }
    channel.send(&Message::Offered { pods }, &[])?;
    offering.store(true, Ordering::SeqCst);
    info!(
        pods,
        "offered the pods' sockets to a new agent; serving until it is ready"
    );
    channel.set_deadline(ready_wait)?;
    match channel.recv() {
        Ok(Some((Message::Ready, _))) => {}
        Ok(Some((other, _))) => {
            return Err(
                io::Error::other(format!("expected `ready`, got `{}`", other.kind())).into(),
            );
        }
        Ok(None) => return Ok(false),
        Err(ChannelError::Io(e))
            if matches!(
                e.kind(),
                io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
            ) || e.raw_os_error() == Some(libc::ECONNRESET) =>
        {
            return Ok(false);
        }
        Err(e) => return Err(e),
    }
    let (tx, rx) = oneshot::channel();
    if node.blocking_send(Request::Stop(tx)).is_err() || rx.blocking_recv().is_err() {
        return Err(io::Error::other("the agent is stopping").into());
    }
    channel.send(&Message::Stopped, &[])?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_old_agent_counts_as_exited_once_its_end_closes_and_not_before() {
        let (old, new) = Channel::pair().unwrap();
        let (gate, _) = watch::channel(false);
        let mut taken = Taken {
            gate,
            predecessor: Some(new),
        };
        let mut exited = taken.exited();
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(
            matches!(exited.try_recv(), Err(oneshot::error::TryRecvError::Empty)),
            "still running, and still watched"
        );
        drop(old);
        tokio::time::timeout(Duration::from_secs(5), exited)
            .await
            .expect("seen within 5 s")
            .expect("said so");
        // Gone before it answered: at once.
        let (gate, _) = watch::channel(false);
        let mut gone = Taken {
            gate,
            predecessor: None,
        };
        gone.exited().await.unwrap();
    }

    #[test]
    fn a_new_agent_takes_over_only_ready_and_holding_every_offered_pod_still_wanted() {
        let none = BTreeMap::new();
        let pending = BTreeMap::from([("shop/web".to_owned(), "netns".to_owned())]);
        assert_eq!(
            TakeOver::decide(true, ["shop/web", "shop/db"], &none),
            TakeOver::Now
        );
        assert_eq!(
            TakeOver::decide(false, ["shop/db"], &none),
            TakeOver::Wait {
                ready: false,
                pending: vec![]
            }
        );
        assert_eq!(
            TakeOver::decide(true, ["shop/web", "shop/db"], &pending),
            TakeOver::Wait {
                ready: true,
                pending: vec!["shop/web".into()]
            }
        );
        // Pending here but not the running agent's: nothing of it closes.
        assert_eq!(TakeOver::decide(true, ["shop/db"], &pending), TakeOver::Now);
    }
}
