//! The plugin as the CNI specification (1.0/1.1) has a runtime call it:
//! the command and the sandbox in `CNI_*` variables, the network
//! configuration (with the previous plugins' result) on stdin, a result
//! or an error object on stdout.
//!
//! ADD fails when the agent cannot be asked or refuses: a pod that should
//! be in the mesh never runs outside it. The cost is that no pod of a
//! namespace not excluded starts on a node whose agent is down; the kubelet
//! retries the sandbox until the agent is back. DEL always succeeds (the
//! spec asks DEL to be idempotent and best-effort, and a sandbox that
//! cannot be torn down is stuck for good).
use std::{
    io::{Read, Write},
    net::IpAddr,
    os::unix::net::UnixStream,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use serde::Deserialize;
use serde_json::value::RawValue;

use crate::protocol::{
    CniPod, Command, DEFAULT_SOCKET, MAX_RESPONSE_BYTES, Outcome, Request, Response, VERSION,
};

/// The CNI versions whose configurations the plugin reads. The plugin
/// passes `prevResult` through untouched, so the result's format is
/// whatever the previous plugin wrote in that version.
pub const SUPPORTED_VERSIONS: &[&str] = &["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"];
const OWN_VERSION: &str = "1.1.0";
/// How long the plugin waits for the agent unless `timeout` says otherwise:
/// longer than the agent waits for a pod to appear in its view (5 s) plus
/// enrolling it.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
/// The longest `timeout` may be, below `HARD_DEADLINE`.
pub const MAX_TIMEOUT: Duration = Duration::from_secs(50);
/// The plugin exits by then whatever blocks (see `main`).
pub const HARD_DEADLINE: Duration = Duration::from_secs(60);
const DEFAULT_EXCLUDED: &[&str] = &["kube-system"];

/// Error codes of the CNI specification ("Error" section); 100 and up are
/// the plugin's own.
pub mod code {
    pub const INCOMPATIBLE_VERSION: u32 = 1;
    pub const INVALID_ENV: u32 = 4;
    pub const DECODE: u32 = 6;
    pub const INVALID_CONFIG: u32 = 7;
    pub const TRY_AGAIN_LATER: u32 = 11;
    pub const NOT_AVAILABLE: u32 = 50;
    /// The agent answered and refused to enroll the pod.
    pub const AGENT_REFUSED: u32 = 100;
}

/// An error as the specification has the plugin print it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CniError {
    pub code: u32,
    pub msg: String,
    pub details: String,
}

impl CniError {
    fn new(code: u32, msg: impl Into<String>, details: impl Into<String>) -> Self {
        Self {
            code,
            msg: msg.into(),
            details: details.into(),
        }
    }

    /// The error object, in the configuration's version.
    pub fn to_json(&self, cni_version: &str) -> String {
        serde_json::json!({
            "cniVersion": cni_version,
            "code": self.code,
            "msg": self.msg,
            "details": self.details,
        })
        .to_string()
    }
}

/// The `CNI_*` variables.
#[derive(Debug, Clone, Default)]
pub struct Env {
    pub command: Option<String>,
    pub container_id: Option<String>,
    pub netns: Option<String>,
    pub ifname: Option<String>,
    pub args: Option<String>,
}

impl Env {
    pub fn from_process() -> Self {
        Self::from_lookup(|k| std::env::var(k).ok())
    }

    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Self {
        // Unset and empty mean the same to the runtime.
        let get = |k: &str| get(k).filter(|v| !v.is_empty());
        Self {
            command: get("CNI_COMMAND"),
            container_id: get("CNI_CONTAINERID"),
            netns: get("CNI_NETNS"),
            ifname: get("CNI_IFNAME"),
            args: get("CNI_ARGS"),
        }
    }

    /// A `KEY=value` of CNI_ARGS (`;`-separated, as kubelet passes
    /// K8S_POD_NAMESPACE, K8S_POD_NAME, K8S_POD_UID).
    fn arg(&self, key: &str) -> Option<&str> {
        self.args
            .as_deref()?
            .split(';')
            .filter_map(|kv| kv.split_once('='))
            .find(|(k, _)| *k == key)
            .map(|(_, v)| v)
            .filter(|v| !v.is_empty())
    }

    fn required(&self, value: &Option<String>, name: &str) -> Result<String, CniError> {
        value.clone().ok_or_else(|| {
            CniError::new(
                code::INVALID_ENV,
                format!("{name} is not set"),
                format!("a container runtime sets {name} for CNI_COMMAND={}; run mesh-cni from the runtime's plugin chain", self.command.as_deref().unwrap_or("?")),
            )
        })
    }
}

/// The network configuration: the CNI fields and the plugin's own, as
/// they appear in the plugin's entry of the conflist.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct NetConf {
    cni_version: String,
    #[allow(
        dead_code,
        reason = "required by the spec; read to refuse a config without it"
    )]
    name: String,
    #[serde(rename = "type")]
    #[allow(
        dead_code,
        reason = "required by the spec; read to refuse a config without it"
    )]
    kind: String,
    /// Kept as written, so that ADD prints exactly what it was given.
    #[serde(default)]
    prev_result: Option<Box<RawValue>>,
    /// The node agent's socket (its `AgentConfig.cniSocket`).
    #[serde(default)]
    agent_socket: Option<PathBuf>,
    /// How long to wait for the agent, e.g. "10s".
    #[serde(default)]
    timeout: Option<String>,
    /// Pods of these namespaces pass without asking the agent.
    #[serde(default)]
    exclude_namespaces: Option<Vec<String>>,
}

/// The part of a result the plugin reads: the pod's addresses.
#[derive(Debug, Deserialize)]
struct PrevResult {
    #[serde(default)]
    ips: Vec<PrevIp>,
}

#[derive(Debug, Deserialize)]
struct PrevIp {
    address: String,
}

struct Settings {
    socket: PathBuf,
    timeout: Duration,
    excluded: Vec<String>,
}

impl NetConf {
    fn parse(stdin: &[u8]) -> Result<Self, CniError> {
        let conf: Self = serde_json::from_slice(stdin).map_err(|e| {
            CniError::new(
                code::DECODE,
                format!("the network configuration on stdin is not valid: {e}"),
                "the runtime passes the plugin's entry of the conflist in /etc/cni/net.d, with cniVersion, name and type; fix that entry",
            )
        })?;
        if !SUPPORTED_VERSIONS.contains(&conf.cni_version.as_str()) {
            return Err(CniError::new(
                code::INCOMPATIBLE_VERSION,
                format!("cniVersion {} is not supported", conf.cni_version),
                format!("use one of {}", SUPPORTED_VERSIONS.join(", ")),
            ));
        }
        Ok(conf)
    }

    fn settings(&self) -> Result<Settings, CniError> {
        let timeout = match &self.timeout {
            None => DEFAULT_TIMEOUT,
            Some(t) => parse_timeout(t).ok_or_else(|| {
                CniError::new(
                    code::INVALID_CONFIG,
                    format!(
                        "timeout: {t:?} is not a duration between 0s and {}s",
                        MAX_TIMEOUT.as_secs()
                    ),
                    "write it as e.g. \"10s\" or \"2500ms\" in the mesh-cni entry of the conflist",
                )
            })?,
        };
        Ok(Settings {
            socket: self
                .agent_socket
                .clone()
                .unwrap_or_else(|| PathBuf::from(DEFAULT_SOCKET)),
            timeout,
            excluded: self
                .exclude_namespaces
                .clone()
                .unwrap_or_else(|| DEFAULT_EXCLUDED.iter().map(|s| s.to_string()).collect()),
        })
    }

    /// The previous plugins' result, which a chained plugin must have.
    fn prev_result(&self) -> Result<&RawValue, CniError> {
        self.prev_result.as_deref().ok_or_else(|| {
            CniError::new(
                code::INVALID_CONFIG,
                "no prevResult: mesh-cni is a chained plugin",
                "list it in a conflist after the plugin that gives the pod its interface and addresses (e.g. after bridge, calico or cilium-cni)",
            )
        })
    }
}

/// A `timeout` the plugin accepts: a duration above zero and at most
/// `MAX_TIMEOUT`. `mesh-cni install` checks its `--timeout` with this, so
/// that it never writes an entry every ADD would refuse.
pub fn parse_timeout(t: &str) -> Option<Duration> {
    humantime::parse_duration(t)
        .ok()
        .filter(|d| !d.is_zero() && *d <= MAX_TIMEOUT)
}

/// The pod's addresses from a result (`ips[].address`, "10.244.1.7/24").
fn result_ips(prev: &RawValue) -> Result<Vec<IpAddr>, CniError> {
    let bad = |what: String| {
        CniError::new(
            code::DECODE,
            format!("prevResult: {what}"),
            "the previous plugin's result must list the pod's addresses as ips[].address in CIDR form",
        )
    };
    let result: PrevResult = serde_json::from_str(prev.get()).map_err(|e| bad(e.to_string()))?;
    result
        .ips
        .iter()
        .enumerate()
        .map(|(i, ip)| {
            let addr = ip.address.split('/').next().unwrap_or_default();
            addr.parse().map_err(|_| {
                bad(format!(
                    "ips[{i}].address {:?} is not an address",
                    ip.address
                ))
            })
        })
        .collect()
}

/// The version's answer: the versions whose configurations the plugin reads.
pub fn version_info() -> String {
    serde_json::json!({
        "cniVersion": OWN_VERSION,
        "supportedVersions": SUPPORTED_VERSIONS,
    })
    .to_string()
}

/// The version to print an error in: the configuration's, when it can be
/// read, else the plugin's own.
pub fn error_version(stdin: &[u8]) -> String {
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Versioned {
        cni_version: String,
    }
    serde_json::from_slice::<Versioned>(stdin)
        .ok()
        .map(|v| v.cni_version)
        .filter(|v| SUPPORTED_VERSIONS.contains(&v.as_str()))
        .unwrap_or_else(|| OWN_VERSION.to_owned())
}

/// Runs one command; what to print on stdout on success.
pub fn run(env: &Env, stdin: &[u8]) -> Result<Vec<u8>, CniError> {
    let command = env.command.clone().ok_or_else(|| {
        CniError::new(
            code::INVALID_ENV,
            "CNI_COMMAND is not set",
            "mesh-cni is run by a container runtime as a CNI plugin, with CNI_COMMAND=ADD, DEL, CHECK, GC, STATUS or VERSION; `mesh-cni install` puts it on a node (mesh-cni --help)",
        )
    })?;
    match command.as_str() {
        "VERSION" => Ok(version_info().into_bytes()),
        "ADD" => add(env, stdin),
        "DEL" => del(env, stdin),
        "CHECK" => check(env, stdin),
        // The plugin keeps nothing to collect: the agent forgets pods when
        // they leave its view.
        "GC" => NetConf::parse(stdin).map(|_| Vec::new()),
        "STATUS" => status(stdin),
        other => Err(CniError::new(
            code::INVALID_ENV,
            format!("CNI_COMMAND={other} is not a CNI command"),
            "use ADD, DEL, CHECK, GC, STATUS or VERSION",
        )),
    }
}

/// The pod a command is about, from the runtime's variables.
fn pod(env: &Env, netns: Option<PathBuf>, ips: Vec<IpAddr>) -> Result<CniPod, CniError> {
    let k8s = |key: &str| {
        env.arg(key).map(str::to_owned).ok_or_else(|| {
            CniError::new(
                code::INVALID_ENV,
                format!("CNI_ARGS has no {key}"),
                "mesh-cni enrolls Kubernetes pods: the kubelet's runtime (containerd, CRI-O) passes K8S_POD_NAMESPACE and K8S_POD_NAME in CNI_ARGS",
            )
        })
    };
    Ok(CniPod {
        namespace: k8s("K8S_POD_NAMESPACE")?,
        name: k8s("K8S_POD_NAME")?,
        uid: env.arg("K8S_POD_UID").map(str::to_owned),
        container_id: env.required(&env.container_id, "CNI_CONTAINERID")?,
        netns,
        ips,
    })
}

fn add(env: &Env, stdin: &[u8]) -> Result<Vec<u8>, CniError> {
    let conf = NetConf::parse(stdin)?;
    let settings = conf.settings()?;
    let prev = conf.prev_result()?;
    env.required(&env.ifname, "CNI_IFNAME")?;
    let netns = env.required(&env.netns, "CNI_NETNS")?;
    let pod = pod(env, Some(PathBuf::from(netns)), result_ips(prev)?)?;
    // A chained plugin prints the result it was given when it adds nothing.
    let passthrough = prev.get().as_bytes().to_vec();
    if settings.excluded.contains(&pod.namespace) {
        return Ok(passthrough);
    }
    let key = pod.key();
    match ask(&settings, Command::Add, pod) {
        Ok(Response::Ok(Outcome::Enrolled | Outcome::NotInMesh)) => Ok(passthrough),
        Ok(Response::Ok(other)) => Err(CniError::new(
            code::AGENT_REFUSED,
            format!("the mesh agent answered ADD of pod {key} with {other:?}"),
            "the plugin and the agent disagree on the protocol; install the mesh-cni binary of the agent's release",
        )),
        Ok(Response::Error(cause)) => Err(CniError::new(
            code::AGENT_REFUSED,
            format!("the mesh agent did not enroll pod {key}: {cause}"),
            "the pod is not started outside the mesh; the kubelet retries the sandbox. The agent's log has the pod's lines",
        )),
        Err(e) => Err(e.into_cni(&settings, &key, "enroll")),
    }
}

fn del(env: &Env, stdin: &[u8]) -> Result<Vec<u8>, CniError> {
    let conf = NetConf::parse(stdin)?;
    let settings = conf.settings()?;
    env.required(&env.ifname, "CNI_IFNAME")?;
    // Without the pod's name there is nothing to tell the agent; a DEL
    // never fails for what it cannot do.
    let Ok(pod) = pod(env, env.netns.clone().map(PathBuf::from), Vec::new()) else {
        return Ok(Vec::new());
    };
    if settings.excluded.contains(&pod.namespace) {
        return Ok(Vec::new());
    }
    let key = pod.key();
    match ask(&settings, Command::Del, pod) {
        Ok(Response::Ok(_)) => {}
        // Best effort: the agent also forgets a pod when it leaves its
        // view, and a restarted agent asks nothing of a gone sandbox.
        Ok(Response::Error(cause)) => {
            eprintln!("mesh-cni: DEL of pod {key}: the agent answered: {cause}; ignored")
        }
        Err(e) => eprintln!(
            "mesh-cni: DEL of pod {key}: {}; ignored (DEL is best-effort)",
            e.describe(&settings.socket)
        ),
    }
    Ok(Vec::new())
}

fn check(env: &Env, stdin: &[u8]) -> Result<Vec<u8>, CniError> {
    let conf = NetConf::parse(stdin)?;
    let settings = conf.settings()?;
    let prev = conf.prev_result()?;
    env.required(&env.ifname, "CNI_IFNAME")?;
    let netns = env.required(&env.netns, "CNI_NETNS")?;
    let pod = pod(env, Some(PathBuf::from(netns)), result_ips(prev)?)?;
    if settings.excluded.contains(&pod.namespace) {
        return Ok(Vec::new());
    }
    let key = pod.key();
    match ask(&settings, Command::Check, pod) {
        Ok(Response::Ok(Outcome::Enrolled | Outcome::NotInMesh)) => Ok(Vec::new()),
        Ok(Response::Ok(other)) => Err(CniError::new(
            code::AGENT_REFUSED,
            format!("the mesh agent answered CHECK of pod {key} with {other:?}"),
            "install the mesh-cni binary of the agent's release",
        )),
        Ok(Response::Error(cause)) => Err(CniError::new(
            code::AGENT_REFUSED,
            format!("pod {key} is not as ADD left it: {cause}"),
            "the runtime recreates the sandbox, which enrolls the pod again",
        )),
        Err(e) => Err(e.into_cni(&settings, &key, "check")),
    }
}

/// STATUS (CNI 1.1): ready when the agent's socket accepts a connection.
fn status(stdin: &[u8]) -> Result<Vec<u8>, CniError> {
    let settings = NetConf::parse(stdin)?.settings()?;
    match UnixStream::connect(&settings.socket) {
        // Closing without a request is the agent's cue that this was a probe.
        Ok(_) => Ok(Vec::new()),
        Err(e) => Err(CniError::new(
            code::NOT_AVAILABLE,
            format!(
                "the mesh agent is not reachable at {}: {e}",
                settings.socket.display()
            ),
            "pods outside the excluded namespaces cannot start on this node until the mesh-agent pod runs here",
        )),
    }
}

/// Why the agent could not be asked.
#[derive(Debug)]
enum AskError {
    Connect(std::io::Error),
    Io(std::io::Error),
    Timeout(Duration),
    Answer(String),
}

impl AskError {
    fn describe(&self, socket: &Path) -> String {
        match self {
            Self::Connect(e) => format!(
                "the mesh agent is not reachable at {}: {e}",
                socket.display()
            ),
            Self::Io(e) => format!("talking to the mesh agent at {}: {e}", socket.display()),
            Self::Timeout(t) => format!(
                "the mesh agent at {} did not answer within {}",
                socket.display(),
                humantime::format_duration(*t)
            ),
            Self::Answer(e) => e.clone(),
        }
    }

    fn into_cni(self, settings: &Settings, key: &str, what: &str) -> CniError {
        let msg = format!(
            "cannot {what} pod {key}: {}",
            self.describe(&settings.socket)
        );
        let details = match self {
            Self::Answer(_) => {
                "the plugin and the agent disagree on the protocol; install the mesh-cni binary of the agent's release".to_owned()
            }
            _ => format!(
                "mesh fails closed: the pod is not started until the node's mesh-agent answers (the kubelet retries the sandbox). Check that the mesh-agent pod on this node is running and that agentSocket ({}) is the socket its AgentConfig.cniSocket names; pods of namespaces in excludeNamespaces start without asking",
                settings.socket.display()
            ),
        };
        CniError::new(code::TRY_AGAIN_LATER, msg, details)
    }
}

/// One request, one answer, all within `settings.timeout`.
fn ask(settings: &Settings, command: Command, pod: CniPod) -> Result<Response, AskError> {
    let deadline = Instant::now() + settings.timeout;
    let left = || {
        deadline
            .checked_duration_since(Instant::now())
            .filter(|d| !d.is_zero())
            .ok_or(AskError::Timeout(settings.timeout))
    };
    let mut stream = UnixStream::connect(&settings.socket).map_err(AskError::Connect)?;
    let timed_out = |e: std::io::Error| match e.kind() {
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut => {
            AskError::Timeout(settings.timeout)
        }
        _ => AskError::Io(e),
    };
    let request = Request {
        version: VERSION,
        command,
        pod,
    };
    stream
        .set_write_timeout(Some(left()?))
        .map_err(AskError::Io)?;
    stream.write_all(&request.to_line()).map_err(timed_out)?;
    stream
        .shutdown(std::net::Shutdown::Write)
        .map_err(AskError::Io)?;
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        stream
            .set_read_timeout(Some(left()?))
            .map_err(AskError::Io)?;
        let n = stream.read(&mut buf).map_err(timed_out)?;
        if n == 0 {
            break;
        }
        answer.extend_from_slice(&buf[..n]);
        if answer.len() > MAX_RESPONSE_BYTES {
            return Err(AskError::Answer(format!(
                "the agent's answer is larger than {MAX_RESPONSE_BYTES} bytes"
            )));
        }
        if answer.ends_with(b"\n") {
            break;
        }
    }
    if answer.is_empty() {
        return Err(AskError::Io(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            "the agent closed the connection without answering (is it shutting down?)",
        )));
    }
    Response::parse(&answer).map_err(AskError::Answer)
}

#[cfg(test)]
mod tests {
    use std::{
        io::{BufRead, BufReader},
        os::unix::net::UnixListener,
        thread,
    };

    use super::*;

    const PREV: &str = r#"{"cniVersion":"1.0.0","interfaces":[{"name":"eth0","sandbox":"/var/run/netns/x"}],"ips":[{"address":"10.244.0.20/24","gateway":"10.244.0.1","interface":0},{"address":"fd00::20/64","interface":0}],"dns":{}}"#;

    fn conf(socket: &Path, extra: &str) -> Vec<u8> {
        format!(
            r#"{{"cniVersion":"1.0.0","name":"k8s-pod-network","type":"mesh-cni","agentSocket":"{}","timeout":"2s"{extra},"prevResult":{PREV}}}"#,
            socket.display()
        )
        .into_bytes()
    }

    fn env(command: &str, namespace: &str) -> Env {
        Env::from_lookup(|k| {
            Some(match k {
                "CNI_COMMAND" => command.to_owned(),
                "CNI_CONTAINERID" => "sandbox-1".to_owned(),
                "CNI_NETNS" => "/var/run/netns/x".to_owned(),
                "CNI_IFNAME" => "eth0".to_owned(),
                "CNI_ARGS" => format!(
                    "IgnoreUnknown=1;K8S_POD_NAMESPACE={namespace};K8S_POD_NAME=web-0;K8S_POD_INFRA_CONTAINER_ID=sandbox-1;K8S_POD_UID=u-1"
                ),
                _ => return None,
            })
        })
    }

    /// An agent that answers `answer` to one request and hands the request back.
    fn agent(
        dir: &tempfile::TempDir,
        answer: &'static str,
    ) -> (PathBuf, thread::JoinHandle<Request>) {
        let path = dir.path().join("cni.sock");
        let listener = UnixListener::bind(&path).unwrap();
        let handle = thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            let mut line = Vec::new();
            BufReader::new(&s).read_until(b'\n', &mut line).unwrap();
            s.write_all(answer.as_bytes()).unwrap();
            Request::parse(&line).unwrap()
        });
        (path, handle)
    }

    #[test]
    fn add_asks_the_agent_and_prints_prev_result_unchanged() {
        let dir = tempfile::tempdir().unwrap();
        let (socket, agent) = agent(&dir, "{\"ok\":\"enrolled\"}\n");
        let out = run(&env("ADD", "shop"), &conf(&socket, "")).unwrap();
        assert_eq!(String::from_utf8(out).unwrap(), PREV);
        let req = agent.join().unwrap();
        assert_eq!(req.command, Command::Add);
        assert_eq!(req.pod.key(), "shop/web-0");
        assert_eq!(req.pod.uid.as_deref(), Some("u-1"));
        assert_eq!(req.pod.container_id, "sandbox-1");
        assert_eq!(req.pod.netns, Some(PathBuf::from("/var/run/netns/x")));
        assert_eq!(
            req.pod.ips,
            vec![
                "10.244.0.20".parse::<IpAddr>().unwrap(),
                "fd00::20".parse().unwrap()
            ]
        );
    }

    #[test]
    fn a_refusal_is_an_error_naming_the_cause() {
        let dir = tempfile::tempdir().unwrap();
        let (socket, _agent) = agent(&dir, "{\"error\":\"netns /x: not a network namespace\"}\n");
        let err = run(&env("ADD", "shop"), &conf(&socket, "")).unwrap_err();
        assert_eq!(err.code, code::AGENT_REFUSED);
        assert!(
            err.msg.contains("shop/web-0") && err.msg.contains("not a network namespace"),
            "{err:?}"
        );
    }

    #[test]
    fn without_an_agent_add_fails_closed_and_del_succeeds() {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("absent.sock");
        let err = run(&env("ADD", "shop"), &conf(&socket, "")).unwrap_err();
        assert_eq!(err.code, code::TRY_AGAIN_LATER);
        assert!(
            err.msg.contains("not reachable") && err.msg.contains("absent.sock"),
            "{err:?}"
        );
        assert!(err.details.contains("fails closed"), "{err:?}");
        let json: serde_json::Value = serde_json::from_str(&err.to_json("1.0.0")).unwrap();
        assert_eq!(json["code"], 11);
        assert_eq!(json["cniVersion"], "1.0.0");
        assert_eq!(run(&env("DEL", "shop"), &conf(&socket, "")).unwrap(), b"");
        // An excluded namespace passes without asking.
        let out = run(&env("ADD", "kube-system"), &conf(&socket, "")).unwrap();
        assert_eq!(out, PREV.as_bytes());
        let out = run(
            &env("ADD", "shop"),
            &conf(&socket, r#","excludeNamespaces":["shop"]"#),
        )
        .unwrap();
        assert_eq!(out, PREV.as_bytes());
        let err = run(&env("STATUS", "shop"), &conf(&socket, "")).unwrap_err();
        assert_eq!(err.code, code::NOT_AVAILABLE);
    }

    #[test]
    fn an_agent_that_does_not_answer_times_out() {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("slow.sock");
        let _listener = UnixListener::bind(&socket).unwrap();
        let started = Instant::now();
        let conf = String::from_utf8(conf(&socket, ""))
            .unwrap()
            .replace("\"2s\"", "\"300ms\"");
        let err = run(&env("ADD", "shop"), conf.as_bytes()).unwrap_err();
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{:?}",
            started.elapsed()
        );
        assert_eq!(err.code, code::TRY_AGAIN_LATER);
        assert!(err.msg.contains("did not answer within 300ms"), "{err:?}");
    }

    #[test]
    fn bad_input_is_named() {
        let socket = Path::new("/nonexistent/cni.sock");
        let err = run(&env("ADD", "shop"), b"{not json").unwrap_err();
        assert_eq!(err.code, code::DECODE);
        assert!(err.msg.contains("network configuration"), "{err:?}");
        let err = run(&env("ADD", "shop"), br#"{"name":"n","type":"mesh-cni"}"#).unwrap_err();
        assert!(err.msg.contains("cniVersion"), "{err:?}");
        let old = String::from_utf8(conf(socket, ""))
            .unwrap()
            .replace("1.0.0", "0.2.0");
        let err = run(&env("ADD", "shop"), old.as_bytes()).unwrap_err();
        assert_eq!(err.code, code::INCOMPATIBLE_VERSION);
        let unchained = br#"{"cniVersion":"1.0.0","name":"n","type":"mesh-cni"}"#;
        let err = run(&env("ADD", "shop"), unchained).unwrap_err();
        assert!(
            err.msg.contains("prevResult") && err.details.contains("after"),
            "{err:?}"
        );
        let bad_ip = String::from_utf8(conf(socket, ""))
            .unwrap()
            .replace("10.244.0.20/24", "10.244.0.300/24");
        let err = run(&env("ADD", "shop"), bad_ip.as_bytes()).unwrap_err();
        assert!(err.msg.contains("ips[0].address"), "{err:?}");
        let bad_timeout = String::from_utf8(conf(socket, ""))
            .unwrap()
            .replace("\"2s\"", "\"soon\"");
        let err = run(&env("ADD", "shop"), bad_timeout.as_bytes()).unwrap_err();
        assert_eq!(err.code, code::INVALID_CONFIG);
        let mut no_args = env("ADD", "shop");
        no_args.args = None;
        let err = run(&no_args, &conf(socket, "")).unwrap_err();
        assert_eq!(err.code, code::INVALID_ENV);
        assert!(err.msg.contains("K8S_POD_NAMESPACE"), "{err:?}");
        let err = run(&env("FROB", "shop"), &conf(socket, "")).unwrap_err();
        assert!(err.msg.contains("FROB"), "{err:?}");
        let err = run(&Env::default(), b"").unwrap_err();
        assert!(err.msg.contains("CNI_COMMAND"), "{err:?}");
    }

    #[test]
    fn version_lists_what_it_reads() {
        let v: serde_json::Value = serde_json::from_slice(
            &run(&env("VERSION", "x"), b"{\"cniVersion\":\"1.0.0\"}").unwrap(),
        )
        .unwrap();
        assert_eq!(v["cniVersion"], "1.1.0");
        assert!(
            v["supportedVersions"]
                .as_array()
                .unwrap()
                .contains(&"0.4.0".into())
        );
        assert_eq!(error_version(b"{\"cniVersion\":\"0.4.0\"}"), "0.4.0");
        assert_eq!(error_version(b"junk"), "1.1.0");
    }
}
