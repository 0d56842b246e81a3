//! Enrollment before the app's first byte. The runtime runs the chained
//! `mesh-cni` plugin when it creates a pod's sandbox, before any container
//! of the pod starts; the plugin asks here, over a Unix socket, to enroll
//! the pod in the netns the runtime made, and the sandbox starts only once
//! the answer is yes (or "not in the mesh"). Discovery alone would enroll
//! the pod only after the API watch reported it and, in Kubernetes mode,
//! after one of its processes showed up under /proc: a window in which the
//! app already sends and receives plaintext.
//!
//! The listener (`serve`) knows nothing of nodes: it reads one request per
//! connection within deadlines and a size limit and hands it to an
//! `Enroller`. The node's enroller (`NodeEnroller`) finds the pod in the
//! discovery view and passes the decision to the node's loop
//! (`NodeRequest`), which enrolls through `enrollment::PodRuntime::enroll` and answers
//! once the pod's listeners and datapath entries are in place. What a
//! sandbox announced (`NodeCni`) then names the pod's netns for reconcile
//! in either discovery mode (in place of the `mesh.io/netns` annotation or
//! a search of /proc), and its addresses until the API lists them, so
//! reconcile keeps the pod enrolled there.
use std::{
    collections::BTreeMap,
    future::Future,
    net::IpAddr,
    os::unix::fs::{DirBuilderExt, FileTypeExt, PermissionsExt},
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::Duration,
};

use anyhow::Context;
use mesh_cni::protocol::{CniPod, Command, MAX_REQUEST_BYTES, Outcome, Request, Response};
use mesh_config::AgentConfig;
use mesh_discovery::{LocalPod, Published, model::Workload, view::MeshView};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{UnixListener, UnixStream},
    sync::{Semaphore, mpsc, oneshot, watch},
};
use tracing::{info, warn};

/// What the node (or a test) does with each request.
pub trait Enroller: Send + Sync + 'static {
    fn add(&self, pod: CniPod) -> impl Future<Output = Result<Outcome, String>> + Send;
    fn del(&self, pod: CniPod) -> impl Future<Output = Result<Outcome, String>> + Send;
    fn check(&self, pod: CniPod) -> impl Future<Output = Result<Outcome, String>> + Send;
}

/// What one client may hold of the listener.
#[derive(Debug, Clone)]
pub struct Limits {
    /// From accept to the request's last byte: a request is one short line
    /// written at once, so a client that takes longer is stuck or hostile.
    pub read: Duration,
    /// For the answer to be taken.
    pub write: Duration,
    /// For the enroller to decide; past it the answer is an error (the
    /// plugin then fails the sandbox and the kubelet retries).
    pub answer: Duration,
    pub max_request: usize,
    /// Requests served at once; past it a new one is answered "busy".
    pub max_in_flight: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            read: Duration::from_secs(2),
            write: Duration::from_secs(2),
            // Below the plugin's default timeout (10 s), so that the
            // plugin reads the agent's reason rather than its own timeout.
            answer: POD_WAIT + NODE_ANSWER,
            max_request: MAX_REQUEST_BYTES,
            // Sandboxes are created a few at a time per node; each request
            // is answered in turn by the node's loop.
            max_in_flight: 32,
        }
    }
}

/// How long ADD waits for the pod to appear in the discovery view: the
/// sandbox is created as soon as the pod is scheduled, and the API watch
/// may report the pod a moment later.
pub const POD_WAIT: Duration = Duration::from_secs(5);
/// How long the node's loop may take to enroll (it is busy only while
/// starting or applying a view).
pub const NODE_ANSWER: Duration = Duration::from_secs(4);

/// Binds the socket only the agent's user may use: mode 0600, and peers'
/// credentials are checked on every connection as well (which also covers
/// the instant between bind and chmod). A stale socket of an earlier agent
/// is replaced; a socket another live agent serves is not.
pub async fn bind(path: &Path) -> anyhow::Result<UnixListener> {
    let field = "AgentConfig.cniSocket";
    if let Some(dir) = path.parent() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .with_context(|| format!("{field} {}: creating its directory", path.display()))?;
    }
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_socket() => {
            if UnixStream::connect(path).await.is_ok() {
                anyhow::bail!(
                    "{field} {}: another agent is serving it; give each agent its own socket",
                    path.display()
                );
            }
            std::fs::remove_file(path)
                .with_context(|| format!("{field} {}: removing a stale socket", path.display()))?;
        }
        Ok(_) => anyhow::bail!(
            "{field} {}: exists and is not a socket; remove it or choose another path",
            path.display()
        ),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("{field} {}", path.display())),
    }
    let listener =
        UnixListener::bind(path).with_context(|| format!("{field} {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .with_context(|| format!("{field} {}: chmod 0600", path.display()))?;
    Ok(listener)
}

/// Serves requests until the listener fails for good. Each connection is
/// one request and one answer.
pub async fn serve<E: Enroller>(listener: UnixListener, enroller: Arc<E>, limits: Limits) {
    let slots = Arc::new(Semaphore::new(limits.max_in_flight));
    // SAFETY: geteuid has no preconditions and cannot fail.
    let own_uid = unsafe { libc::geteuid() };
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                // EMFILE and the like pass; back off instead of spinning.
                warn!(error = %e, "CNI socket: accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let uid = stream.peer_cred().map(|c| c.uid()).ok();
        if uid != Some(0) && uid != Some(own_uid) {
            warn!(
                ?uid,
                "CNI socket: a client that is neither root nor the agent's user; closed"
            );
            continue;
        }
        let slot = slots.clone().try_acquire_owned();
        let (enroller, limits) = (enroller.clone(), limits.clone());
        tokio::spawn(async move {
            let mut stream = stream;
            let answer = match slot {
                Ok(_slot) => match read_request(&mut stream, &limits).await {
                    Ok(Some(request)) => Some(handle(&*enroller, request, &limits).await),
                    // Connected and closed without a byte: the plugin's
                    // STATUS probe.
                    Ok(None) => None,
                    Err(e) => {
                        warn!(error = %e, "CNI socket: bad request");
                        Some(Response::Error(e))
                    }
                },
                Err(_) => Some(Response::Error(format!(
                    "the agent is serving {} CNI requests already; retry",
                    limits.max_in_flight
                ))),
            };
            if let Some(answer) = answer {
                let line = answer.to_line();
                let _ = tokio::time::timeout(limits.write, async {
                    stream.write_all(&line).await?;
                    stream.shutdown().await
                })
                .await;
            }
        });
    }
}

/// One request, or `None` for a connection closed without a byte.
async fn read_request(stream: &mut UnixStream, limits: &Limits) -> Result<Option<Request>, String> {
    let mut buf = Vec::new();
    let read = async {
        let mut chunk = [0u8; 4096];
        loop {
            let n = stream
                .read(&mut chunk)
                .await
                .map_err(|e| format!("reading the request: {e}"))?;
            if n == 0 {
                return Ok(());
            }
            buf.extend_from_slice(&chunk[..n]);
            if buf.len() > limits.max_request {
                return Err(format!("request: larger than {} bytes", limits.max_request));
            }
            if buf.ends_with(b"\n") {
                return Ok(());
            }
        }
    };
    match tokio::time::timeout(limits.read, read).await {
        Err(_) => {
            return Err(format!(
                "request: not complete within {}ms (send it as one line)",
                limits.read.as_millis()
            ));
        }
        Ok(r) => r?,
    }
    if buf.is_empty() {
        return Ok(None);
    }
    Request::parse(&buf).map(Some)
}

async fn handle<E: Enroller>(enroller: &E, request: Request, limits: &Limits) -> Response {
    let key = request.pod.key();
    let command = request.command;
    let decided = match command {
        Command::Add => tokio::time::timeout(limits.answer, enroller.add(request.pod)).await,
        Command::Del => tokio::time::timeout(limits.answer, enroller.del(request.pod)).await,
        Command::Check => tokio::time::timeout(limits.answer, enroller.check(request.pod)).await,
    };
    let result = decided.unwrap_or_else(|_| {
        Err(format!(
            "no decision within {}s (the agent is starting or overloaded); the runtime retries",
            limits.answer.as_secs()
        ))
    });
    match result {
        Ok(outcome) => {
            info!(pod = %key, ?command, ?outcome, "CNI request answered");
            Response::Ok(outcome)
        }
        Err(cause) => {
            warn!(pod = %key, ?command, %cause, "CNI request refused");
            Response::Error(cause)
        }
    }
}

/// A decision the node's loop takes, with where to send the answer.
pub struct NodeRequest {
    what: NodeAsk,
    /// DEL: whether the agent knew the sandbox (set by `NodeCni::apply`).
    forgot: bool,
    reply: oneshot::Sender<Result<Outcome, String>>,
}

enum NodeAsk {
    /// Enroll the pod in the netns its sandbox announced.
    Enroll {
        uid: String,
        key: String,
        announced: Announced,
    },
    /// The sandbox is gone.
    Forget { pod: CniPod },
    /// Is the pod enrolled in this netns?
    Check { uid: String, netns: PathBuf },
}

/// What a sandbox told the agent about its pod.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Announced {
    container_id: String,
    netns: PathBuf,
    ips: Vec<IpAddr>,
}

impl Announced {
    /// The pod as discovery has it, with its sandbox's netns and addresses
    /// (which the API may not list yet).
    fn spec(&self, w: &Workload) -> LocalPod {
        let mut w = w.clone();
        w.ips = self.ips.clone();
        LocalPod::new(&w, self.netns.clone())
    }

    /// Whether `enrolled` is the pod in this sandbox.
    fn is(&self, enrolled: &LocalPod) -> bool {
        let sorted = |ips: &[IpAddr]| {
            let mut v: Vec<_> = ips.iter().map(IpAddr::to_canonical).collect();
            v.sort();
            v
        };
        enrolled.netns == self.netns && sorted(&enrolled.ips) == sorted(&self.ips)
    }
}

/// The node's side: what sandboxes announced, and the requests for its loop.
pub struct NodeCni {
    /// By pod uid. Behind a lock only because reconcile reads it through
    /// `&self`; the node's loop is its only user.
    announced: Mutex<BTreeMap<String, Announced>>,
    requests: Option<mpsc::Receiver<NodeRequest>>,
    /// The task serving the socket, stopped at a hand-over.
    server: Option<tokio::task::JoinHandle<()>>,
}

impl NodeCni {
    /// Serving no socket yet: an agent taking over from one that serves
    /// it starts serving it once that one has stopped (`crate::handover`).
    pub fn idle() -> Self {
        Self {
            announced: Mutex::default(),
            requests: None,
            server: None,
        }
    }

    /// Stops serving the socket, returning once its listener is closed, so
    /// a successor can bind it. Requests in flight get no answer; the
    /// plugin fails them and the runtime retries the sandbox.
    pub async fn stop_serving(&mut self) {
        if let Some(server) = self.server.take() {
            server.abort();
            let _ = server.await;
        }
    }

    /// Binds `AgentConfig.cniSocket` and serves it, when set.
    pub async fn start(
        agent: &AgentConfig,
        views: watch::Receiver<Published>,
    ) -> anyhow::Result<Self> {
        let mut cni = Self::idle();
        let Some(path) = &agent.cni_socket else {
            return Ok(cni);
        };
        let listener = bind(path).await?;
        let (tx, rx) = mpsc::channel(64);
        let enroller = Arc::new(NodeEnroller {
            node: agent.node_name.clone(),
            views,
            node_loop: tx,
            pod_wait: POD_WAIT,
        });
        info!(socket = %path.display(), "CNI socket listening");
        cni.server = Some(tokio::spawn(serve(listener, enroller, Limits::default())));
        cni.requests = Some(rx);
        Ok(cni)
    }

    /// The next request for the node's loop; `None` once the listener has
    /// ended (the agent then exits and is restarted). Never resolves when
    /// no socket is configured.
    pub async fn next(&mut self) -> Option<NodeRequest> {
        match &mut self.requests {
            Some(rx) => rx.recv().await,
            None => std::future::pending().await,
        }
    }

    /// Splits the view's pods of `node` that reconcile should enroll:
    /// those a sandbox announced, as specs in the netns it named (in either
    /// discovery mode, and even before the API lists their addresses), and
    /// the others, found as before (annotation, /proc). Announcements of
    /// pods the view no longer has are dropped.
    pub fn on_node<'a>(
        &self,
        view: &'a MeshView,
        node: &'a str,
    ) -> (BTreeMap<String, LocalPod>, Vec<&'a Arc<Workload>>) {
        let mut announced = self.announced.lock().unwrap_or_else(|e| e.into_inner());
        announced.retain(|uid, _| view.workload_by_uid(uid).is_some());
        let specs = announced
            .iter()
            .filter_map(|(uid, a)| {
                let w = view.workload_by_uid(uid)?;
                (w.node.as_deref() == Some(node) && view.is_enrolled(w))
                    .then(|| (uid.clone(), a.spec(w)))
            })
            .collect();
        let others = view
            .enrolled_on(node)
            .filter(|w| !announced.contains_key(&w.uid))
            .collect();
        (specs, others)
    }

    /// Records what the request announces or withdraws; whether the node
    /// must reconcile for it.
    pub fn apply(&self, request: &mut NodeRequest) -> bool {
        let mut announced = self.announced.lock().unwrap_or_else(|e| e.into_inner());
        match &request.what {
            NodeAsk::Enroll {
                uid, announced: a, ..
            } => {
                announced.insert(uid.clone(), a.clone());
                true
            }
            NodeAsk::Forget { pod } => {
                // Only the ADD of the same sandbox: a late DEL of an
                // earlier sandbox must not undo the current one.
                let uid = announced
                    .iter()
                    .find(|(uid, a)| {
                        a.container_id == pod.container_id
                            && pod.uid.as_ref().is_none_or(|u| u == *uid)
                    })
                    .map(|(uid, _)| uid.clone());
                request.forgot = uid.is_some_and(|uid| announced.remove(&uid).is_some());
                request.forgot
            }
            NodeAsk::Check { .. } => false,
        }
    }
}

impl NodeRequest {
    /// The uid of the pod the request is about, when known.
    pub fn uid(&self) -> Option<&str> {
        match &self.what {
            NodeAsk::Enroll { uid, .. } | NodeAsk::Check { uid, .. } => Some(uid),
            NodeAsk::Forget { pod } => pod.uid.as_deref(),
        }
    }

    /// `<namespace>/<name>` of an ADD's pod: how reconcile names it among
    /// the pods it could not enroll.
    pub fn key(&self) -> Option<&str> {
        match &self.what {
            NodeAsk::Enroll { key, .. } => Some(key),
            _ => None,
        }
    }

    /// Answers once the node has applied the request: `enrolled` is the
    /// pod as it is enrolled now, `pending` why reconcile could not enroll
    /// it.
    pub fn answer(self, enrolled: Option<&LocalPod>, pending: Option<&String>) {
        let result = match &self.what {
            NodeAsk::Enroll { key, announced, .. } => match (enrolled, pending) {
                (Some(e), _) if announced.is(e) => Ok(Outcome::Enrolled),
                (_, Some(reason)) => Err(format!("pod {key} not enrolled: {reason}")),
                (Some(e), None) => Err(format!(
                    "pod {key} is enrolled in {} with addresses {:?}, not as the sandbox describes it",
                    e.netns.display(),
                    e.ips
                )),
                (None, None) => Err(format!(
                    "pod {key} was not enrolled (it left the mesh or the view meanwhile); the runtime retries"
                )),
            },
            NodeAsk::Forget { .. } => Ok(if self.forgot {
                Outcome::Forgotten
            } else {
                Outcome::Unknown
            }),
            NodeAsk::Check { netns, .. } => match enrolled {
                Some(e) if e.netns == *netns => Ok(Outcome::Enrolled),
                Some(e) => Err(format!(
                    "enrolled in netns {}, not {}",
                    e.netns.display(),
                    netns.display()
                )),
                None => Err("not enrolled".into()),
            },
        };
        let _ = self.reply.send(result);
    }
}

/// The node's enroller: decides from the discovery view and hands the
/// enrollment to the node's loop.
pub struct NodeEnroller {
    node: String,
    views: watch::Receiver<Published>,
    node_loop: mpsc::Sender<NodeRequest>,
    pod_wait: Duration,
}

impl NodeEnroller {
    /// The pod in the view, waiting (bounded) for the view to report it.
    async fn find(&self, pod: &CniPod) -> Result<(Arc<MeshView>, Arc<Workload>), String> {
        let mut views = self.views.clone();
        let deadline = tokio::time::Instant::now() + self.pod_wait;
        let mut elsewhere = None;
        loop {
            let view = views.borrow_and_update().view.clone();
            let found = match &pod.uid {
                Some(uid) => view.workload_by_uid(uid).cloned(),
                None => view
                    .workloads()
                    .find(|w| w.namespace == pod.namespace && w.name == pod.name)
                    .cloned(),
            };
            match found {
                Some(w) if w.node.as_deref() == Some(self.node.as_str()) => return Ok((view, w)),
                Some(w) => elsewhere = w.node.clone(),
                None => {}
            }
            match tokio::time::timeout_at(deadline, views.changed()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => return Err("the agent is stopping".into()),
                Err(_) => break,
            }
        }
        Err(match elsewhere {
            Some(other) => format!(
                "pod {} is scheduled on node {other} in the agent's view, not on this node ({}); the runtime retries",
                pod.key(),
                self.node
            ),
            None => format!(
                "pod {}{} is not in the agent's view after {}s (the API watch lags, or the agent cannot list pods: see its log); the runtime retries",
                pod.key(),
                pod.uid
                    .as_ref()
                    .map(|u| format!(" (uid {u})"))
                    .unwrap_or_default(),
                self.pod_wait.as_secs()
            ),
        })
    }

    async fn ask_node(&self, what: NodeAsk) -> Result<Outcome, String> {
        let (reply, answer) = oneshot::channel();
        self.node_loop
            .send(NodeRequest {
                what,
                forgot: false,
                reply,
            })
            .await
            .map_err(|_| "the agent is stopping".to_string())?;
        answer
            .await
            .map_err(|_| "the agent is stopping".to_string())?
    }
}

impl Enroller for NodeEnroller {
    async fn add(&self, pod: CniPod) -> Result<Outcome, String> {
        let (view, w) = self.find(&pod).await?;
        if !view.is_enrolled(&w) {
            return Ok(Outcome::NotInMesh);
        }
        let netns = pod.netns.clone().ok_or("the request has no netns")?;
        if pod.ips.is_empty() {
            return Err(format!(
                "the CNI result gives pod {} no address; the plugin must run after the plugin that assigns them",
                pod.key()
            ));
        }
        let mut given = pod.ips.clone();
        let mut listed = w.ips.clone();
        given.sort();
        listed.sort();
        if !listed.is_empty() && listed != given {
            return Err(format!(
                "pod {}: the API lists addresses {listed:?}, the CNI result {given:?}",
                pod.key()
            ));
        }
        self.ask_node(NodeAsk::Enroll {
            uid: w.uid.clone(),
            key: w.key(),
            announced: Announced {
                container_id: pod.container_id,
                netns,
                ips: pod.ips,
            },
        })
        .await
    }

    async fn del(&self, pod: CniPod) -> Result<Outcome, String> {
        self.ask_node(NodeAsk::Forget { pod }).await
    }

    async fn check(&self, pod: CniPod) -> Result<Outcome, String> {
        let (view, w) = self.find(&pod).await?;
        if !view.is_enrolled(&w) {
            return Ok(Outcome::NotInMesh);
        }
        let netns = pod.netns.ok_or("the request has no netns")?;
        self.ask_node(NodeAsk::Check {
            uid: w.uid.clone(),
            netns,
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use mesh_cni::protocol::VERSION;
    use tokio::io::AsyncBufReadExt;

    use super::*;

    /// Enrolls `shop/*` pods, refuses others; ADD of `slow/*` never ends.
    #[derive(Default)]
    struct Fake {
        added: AtomicUsize,
    }

    impl Enroller for Fake {
        async fn add(&self, pod: CniPod) -> Result<Outcome, String> {
            self.added.fetch_add(1, Ordering::Relaxed);
            match pod.namespace.as_str() {
                "shop" => Ok(Outcome::Enrolled),
                "slow" => std::future::pending().await,
                _ => Err(format!("pod {}: refused", pod.key())),
            }
        }
        async fn del(&self, _: CniPod) -> Result<Outcome, String> {
            Ok(Outcome::Forgotten)
        }
        async fn check(&self, _: CniPod) -> Result<Outcome, String> {
            Ok(Outcome::Enrolled)
        }
    }

    struct Bed {
        _dir: tempfile::TempDir,
        path: PathBuf,
        fake: Arc<Fake>,
    }

    async fn bed(limits: Limits) -> Bed {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("run").join("cni.sock");
        let listener = bind(&path).await.unwrap();
        let fake = Arc::new(Fake::default());
        tokio::spawn(serve(listener, fake.clone(), limits));
        Bed {
            _dir: dir,
            path,
            fake,
        }
    }

    fn quick() -> Limits {
        Limits {
            read: Duration::from_millis(200),
            write: Duration::from_millis(200),
            answer: Duration::from_millis(300),
            max_request: 1024,
            max_in_flight: 4,
        }
    }

    fn request(namespace: &str) -> Vec<u8> {
        Request {
            version: VERSION,
            command: Command::Add,
            pod: CniPod {
                namespace: namespace.into(),
                name: "web-0".into(),
                uid: None,
                container_id: "c1".into(),
                netns: Some("/run/netns/x".into()),
                ips: vec!["10.0.0.1".parse().unwrap()],
            },
        }
        .to_line()
    }

    /// Sends `bytes` (shutting down writing unless `keep_open`), reads the answer.
    async fn exchange(path: &Path, bytes: &[u8], keep_open: bool) -> Response {
        let mut s = UnixStream::connect(path).await.unwrap();
        s.write_all(bytes).await.unwrap();
        if !keep_open {
            s.shutdown().await.unwrap();
        }
        let mut line = Vec::new();
        tokio::io::BufReader::new(s)
            .read_until(b'\n', &mut line)
            .await
            .unwrap();
        Response::parse(&line).unwrap()
    }

    #[tokio::test]
    async fn the_socket_is_the_agents_alone() {
        let b = bed(quick()).await;
        let mode = std::fs::metadata(&b.path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        // A second agent on the same socket is refused, not let steal it.
        let err = bind(&b.path).await.unwrap_err().to_string();
        assert!(err.contains("another agent is serving it"), "{err}");
        // A file that is not a socket is left alone.
        let file = b.path.with_file_name("plain");
        std::fs::write(&file, "x").unwrap();
        let err = bind(&file).await.unwrap_err().to_string();
        assert!(err.contains("not a socket"), "{err}");
    }

    #[tokio::test]
    async fn a_stale_socket_is_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cni.sock");
        drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
        assert!(path.exists());
        bind(&path).await.unwrap();
    }

    #[tokio::test]
    async fn add_ok_and_add_refused() {
        let b = bed(quick()).await;
        assert_eq!(
            exchange(&b.path, &request("shop"), false).await,
            Response::Ok(Outcome::Enrolled)
        );
        // The request may also end at its newline, without a shutdown.
        assert_eq!(
            exchange(&b.path, &request("shop"), true).await,
            Response::Ok(Outcome::Enrolled)
        );
        assert_eq!(
            exchange(&b.path, &request("other"), false).await,
            Response::Error("pod other/web-0: refused".into())
        );
        assert_eq!(b.fake.added.load(Ordering::Relaxed), 3);
    }

    #[tokio::test]
    async fn malformed_requests_are_answered_with_the_field() {
        let b = bed(quick()).await;
        let Response::Error(e) =
            exchange(&b.path, b"{\"version\":1,\"command\":\"add\"", false).await
        else {
            panic!("accepted")
        };
        assert!(e.contains("not JSON"), "{e}");
        let bad = String::from_utf8(request("shop"))
            .unwrap()
            .replace("\"namespace\":\"shop\"", "\"namespace\":7");
        let Response::Error(e) = exchange(&b.path, bad.as_bytes(), false).await else {
            panic!("accepted")
        };
        assert!(e.contains("invalid type: integer `7`"), "{e}");
        assert_eq!(b.fake.added.load(Ordering::Relaxed), 0);
    }

    #[tokio::test]
    async fn an_oversize_request_is_refused_unread() {
        let b = bed(quick()).await;
        let big = vec![b' '; 4096];
        let Response::Error(e) = exchange(&b.path, &big, true).await else {
            panic!("accepted")
        };
        assert_eq!(e, "request: larger than 1024 bytes");
    }

    #[tokio::test]
    async fn a_slow_client_is_cut_off_at_the_deadline() {
        let b = bed(quick()).await;
        let started = std::time::Instant::now();
        // Half a request, never finished.
        let Response::Error(e) = exchange(&b.path, b"{\"version\":", true).await else {
            panic!("accepted")
        };
        assert!(e.contains("not complete within 200ms"), "{e}");
        assert!(started.elapsed() < Duration::from_secs(2));
        // A probe (connect, close) gets no answer and breaks nothing.
        drop(UnixStream::connect(&b.path).await.unwrap());
        assert_eq!(
            exchange(&b.path, &request("shop"), false).await,
            Response::Ok(Outcome::Enrolled)
        );
    }

    #[tokio::test]
    async fn an_enroller_that_does_not_decide_is_answered_for() {
        let b = bed(quick()).await;
        let Response::Error(e) = exchange(&b.path, &request("slow"), false).await else {
            panic!("accepted")
        };
        assert!(e.contains("no decision within"), "{e}");
    }

    #[tokio::test]
    async fn past_the_cap_a_request_is_told_busy() {
        let b = bed(Limits {
            answer: Duration::from_secs(5),
            max_in_flight: 1,
            ..quick()
        })
        .await;
        let stuck = tokio::spawn({
            let path = b.path.clone();
            async move { exchange(&path, &request("slow"), false).await }
        });
        // Until the stuck request holds the only slot.
        while b.fake.added.load(Ordering::Relaxed) == 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let Response::Error(e) = exchange(&b.path, &request("shop"), false).await else {
            panic!("accepted")
        };
        assert!(e.contains("serving 1 CNI requests already"), "{e}");
        stuck.abort();
    }

    fn announced(container: &str, netns: &str) -> Announced {
        Announced {
            container_id: container.into(),
            netns: netns.into(),
            ips: vec!["10.0.0.1".parse().unwrap()],
        }
    }

    fn ask(what: NodeAsk) -> (NodeRequest, oneshot::Receiver<Result<Outcome, String>>) {
        let (reply, rx) = oneshot::channel();
        (
            NodeRequest {
                what,
                forgot: false,
                reply,
            },
            rx,
        )
    }

    fn del(container: &str) -> NodeAsk {
        NodeAsk::Forget {
            pod: CniPod {
                namespace: "shop".into(),
                name: "a".into(),
                uid: Some("a".into()),
                container_id: container.into(),
                netns: None,
                ips: Vec::new(),
            },
        }
    }

    #[test]
    fn a_del_forgets_only_its_own_sandbox() {
        let cni = NodeCni::idle();
        let (mut add, _) = ask(NodeAsk::Enroll {
            uid: "a".into(),
            key: "shop/a".into(),
            announced: announced("sandbox-2", "/run/netns/two"),
        });
        assert!(cni.apply(&mut add));
        // The DEL of an earlier sandbox, arriving late, changes nothing.
        let (mut late, answer) = ask(del("sandbox-1"));
        assert!(!cni.apply(&mut late));
        late.answer(None, None);
        assert_eq!(answer.blocking_recv().unwrap(), Ok(Outcome::Unknown));
        let (mut own, answer) = ask(del("sandbox-2"));
        assert!(cni.apply(&mut own));
        own.answer(None, None);
        assert_eq!(answer.blocking_recv().unwrap(), Ok(Outcome::Forgotten));
        assert!(cni.announced.lock().unwrap().is_empty());
    }

    #[test]
    fn an_add_is_answered_by_what_reconcile_did() {
        let enroll = || {
            ask(NodeAsk::Enroll {
                uid: "a".into(),
                key: "shop/a".into(),
                announced: announced("s", "/run/netns/a"),
            })
        };
        let spec = |netns: &str, ip: &str| LocalPod {
            uid: "a".into(),
            name: "a".into(),
            namespace: "shop".into(),
            service_account: "a".into(),
            ips: vec![ip.parse().unwrap()],
            netns: netns.into(),
            labels: BTreeMap::new(),
        };
        let (req, answer) = enroll();
        // The same address in its IPv4-mapped form is the same address.
        req.answer(Some(&spec("/run/netns/a", "::ffff:10.0.0.1")), None);
        assert_eq!(answer.blocking_recv().unwrap(), Ok(Outcome::Enrolled));
        let (req, answer) = enroll();
        req.answer(
            None,
            Some(&"address 10.0.0.1 is claimed by pod shop/b".into()),
        );
        assert_eq!(
            answer.blocking_recv().unwrap(),
            Err("pod shop/a not enrolled: address 10.0.0.1 is claimed by pod shop/b".into())
        );
        // Still enrolled in an earlier sandbox's netns: not a yes.
        let (req, answer) = enroll();
        req.answer(Some(&spec("/run/netns/old", "10.0.0.1")), None);
        let err = answer.blocking_recv().unwrap().unwrap_err();
        assert!(err.contains("/run/netns/old"), "{err}");
    }
}
