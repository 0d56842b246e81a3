//! The Gateway API mesh (GAMMA) conformance suite
//! (kubernetes-sigs/gateway-api, `conformance/tests/mesh/`, at commit
//! 4564255ac2c35d582249b3cdf261bdf51c8bca32), case by case, on one test
//! bed: the suite's base (`tests/conformance/mesh/manifests.yaml`:
//! namespaces, Services `echo`, `echo-v1`, `echo-v2`, and one echo pod
//! per Deployment) behind a waypoint, real agents, CA and TLS. Each case
//! loads its upstream route manifest, unchanged, into the nodes' files
//! (local discovery reloads it), sends what the upstream case sends from
//! inside the same client pod, and asserts what it asserts, with the
//! suite's eventual consistency (3 successes in a row, 100 ms after a
//! failure, 30 s). Cases are named as upstream; run one with
//! `cargo test -p mesh-testbed --test conformance_mesh -- MeshPorts`.
//!
//! Its own harness (`harness = false`): the bed is built once for every
//! case (a bed per case would cost the suite minutes), each case is caught
//! if it fails or panics, and the bed is removed at the end whatever
//! happened.
use std::{
    net::{Ipv4Addr, SocketAddr},
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use mesh_testbed::{
    Cluster, ClusterSpec, Proc,
    conformance::{
        base::{self, Base},
        converge::{self, await_convergence},
        expect::{Expected, Protocol, compare},
        weight,
    },
    echo::{self, Call, CallKind, Exchange, grpc::Method},
    harness::{Outcome, Report, Selection, catching, run_case},
    sys,
};

const MESH: &str = "gateway-conformance-mesh";
const CONSUMER: &str = "gateway-conformance-mesh-consumer";
/// The waypoint (a Gateway of the agents' waypoint class) the mesh
/// namespace is bound to.
const WAYPOINT: &str = "waypoint";
/// One request, connecting included.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// The upstream manifests, as copied.
const MANIFESTS: &str = include_str!("../conformance/mesh/manifests.yaml");

/// The addresses Kubernetes would give the suite's Services.
const CLUSTER_IPS: [(&str, Ipv4Addr); 3] = [
    (
        "gateway-conformance-mesh/echo-v1",
        Ipv4Addr::new(10, 96, 100, 1),
    ),
    (
        "gateway-conformance-mesh/echo-v2",
        Ipv4Addr::new(10, 96, 100, 2),
    ),
    (
        "gateway-conformance-mesh/echo",
        Ipv4Addr::new(10, 96, 100, 3),
    ),
];

/// The pods a case sends from (the suite's `ConnectToApp`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Client {
    /// `app=echo,version=v1` in the mesh namespace (`MeshAppEchoV1`).
    EchoV1,
    /// `app=echo,version=v2` in the mesh namespace (`MeshAppEchoV2`).
    EchoV2,
    /// `app=echo,version=v1` in the consumer namespace.
    ConsumerEchoV1,
}

impl Client {
    fn namespace(self) -> &'static str {
        match self {
            Client::ConsumerEchoV1 => CONSUMER,
            _ => MESH,
        }
    }

    fn version(self) -> &'static str {
        match self {
            Client::EchoV2 => "v2",
            _ => "v1",
        }
    }
}

struct Bed {
    c: Cluster,
    base: Base,
    /// The route manifest loaded now (None: the base alone).
    loaded: Option<&'static str>,
    /// Each pod's echo, by pod name.
    servers: Vec<(String, Proc)>,
}

impl Bed {
    /// Node 0: the mesh namespace's echo-v1 pod and the consumer
    /// namespace's; node 1: echo-v2 and the waypoint. So every request
    /// from echo-v1 crosses nodes to the waypoint, and the waypoint sends
    /// to one backend on its own node and one across.
    fn start() -> anyhow::Result<Self> {
        let base = base::translate(
            MANIFESTS,
            &CLUSTER_IPS,
            &[(MESH, mesh_testbed::waypoint::USE_WAYPOINT_LABEL, WAYPOINT)],
        )?;
        let on_node = |n: usize| -> Vec<&str> {
            base.pods
                .iter()
                .filter(|p| usize::from(p.deployment == "echo-v2") == n)
                .map(|p| p.pod.as_str())
                .collect()
        };
        let (n0, n1) = (on_node(0), on_node(1));
        let mut spec =
            ClusterSpec::new(&[n0.as_slice(), n1.as_slice()]).waypoint(WAYPOINT, MESH, 1);
        for p in &base.pods {
            spec = spec.in_namespace(&p.pod, &p.namespace);
            for (k, v) in &p.labels {
                spec = spec.label(&p.pod, k, v);
            }
        }
        let c = Cluster::start(spec.with_docs(&base.documents))?;
        // Istio's echo with the manifests' ports that the cases use: HTTP
        // on 8080, gRPC on 7070 (the consumer's runs with no arguments,
        // whose defaults are the same two).
        let servers = base
            .pods
            .iter()
            .map(|p| {
                Ok((
                    p.pod.clone(),
                    c.serve(&p.pod, "8080,7070", "conformance-echo")?,
                ))
            })
            .collect::<anyhow::Result<_>>()?;
        Ok(Self {
            c,
            base,
            loaded: None,
            servers,
        })
    }

    fn pod(&self, client: Client) -> &str {
        let p = self
            .base
            .pods
            .iter()
            .find(|p| {
                p.namespace == client.namespace()
                    && p.labels.get("app").map(String::as_str) == Some("echo")
                    && p.labels.get("version").map(String::as_str) == Some(client.version())
            })
            .unwrap_or_else(|| panic!("no pod for {client:?} in the manifests"));
        &p.pod
    }

    /// What the echo of `client`'s pod has served so far.
    fn served(&self, client: Client) -> Vec<echo::EchoResponse> {
        let pod = self.pod(client);
        self.servers
            .iter()
            .filter(|(p, _)| p == pod)
            .flat_map(|(_, proc)| proc.json_lines())
            .filter_map(|l| serde_json::from_value(l.get("echo")?.clone()).ok())
            .collect()
    }

    /// Loads `manifest` (an upstream route file) on top of the base, or
    /// the base alone, and waits until the agents and the waypoint have
    /// read the new files; a file the waypoint refuses fails with its
    /// reason. Loading what is loaded already changes nothing.
    fn load(&mut self, manifest: Option<&'static str>) -> anyhow::Result<()> {
        if self.loaded == manifest {
            return Ok(());
        }
        let lines = |c: &Cluster, message: &str| {
            c.waypoint_log(WAYPOINT)
                .into_iter()
                .filter(|l| l["message"] == message)
                .count()
        };
        let (parsed, rejected) = (
            lines(&self.c, "config file parsed"),
            lines(&self.c, "config rejected"),
        );
        let mut docs = self.base.documents.clone();
        if let Some(m) = manifest {
            docs.push_str("---\n");
            docs.push_str(m);
        }
        if let Err(e) = self.c.set_docs(&docs) {
            let refusals: Vec<String> = (0..self.c.nodes.len())
                .flat_map(|n| self.c.agent_log(n))
                .filter(|l| l["message"] == "config rejected")
                .map(|l| l.to_string())
                .collect();
            bail!("{e:#}; the agents' refusals: {refusals:#?}");
        }
        sys::wait_for(
            "the waypoint to read the new file",
            Duration::from_secs(15),
            || {
                (lines(&self.c, "config file parsed") > parsed
                    || lines(&self.c, "config rejected") > rejected)
                    .then_some(())
            },
        )?;
        if lines(&self.c, "config rejected") > rejected {
            let why: Vec<String> = self
                .c
                .waypoint_log(WAYPOINT)
                .into_iter()
                .filter(|l| l["message"] == "config rejected")
                .map(|l| l.to_string())
                .collect();
            bail!("the waypoint refused the file: {}", why.join("\n"));
        }
        self.loaded = manifest;
        Ok(())
    }

    /// Where `host` (`name[:port]`, a Service as the client's cluster
    /// DNS resolves it, or `ip:port`) points: the Service's clusterIP.
    fn address(&self, from: Client, host: &str, default_port: u16) -> anyhow::Result<SocketAddr> {
        let (name, port) = match host.rsplit_once(':') {
            Some((n, p)) => (n, p.parse().with_context(|| format!("port of {host}"))?),
            None => (host, default_port),
        };
        if let Ok(ip) = name.parse::<Ipv4Addr>() {
            return Ok((ip, port).into());
        }
        let name = name.trim_end_matches(".svc.cluster.local");
        let key = match name.split_once('.') {
            Some((svc, ns)) => format!("{ns}/{svc}"),
            None => format!("{}/{name}", from.namespace()),
        };
        let ip = CLUSTER_IPS
            .iter()
            .find(|(k, _)| *k == key)
            .map(|(_, ip)| *ip)
            .with_context(|| format!("{host} does not resolve from {}", from.namespace()))?;
        Ok((ip, port).into())
    }

    /// `call` `count` times over one connection from `from` to `to`.
    fn exchange(
        &self,
        from: Client,
        to: &str,
        call: &Call,
        count: u32,
    ) -> anyhow::Result<Vec<Exchange>> {
        let default_port = match call.kind {
            CallKind::Grpc { .. } => 7070,
            CallKind::Http { .. } => 80,
        };
        let addr = self.address(from, to, default_port)?;
        echo::from_pod(&self.c, self.pod(from), addr, call, count, REQUEST_TIMEOUT)
    }

    /// One request's attempt at `sub`'s expectation.
    fn attempt(&self, sub: &Sub) -> Result<(), String> {
        let got = self
            .exchange(sub.from, &sub.to, &sub.call, 1)
            .map_err(|e| format!("request failed: {e:#}"))?;
        let got = got.first().ok_or("no answer")?;
        let protocol = match sub.call.kind {
            CallKind::Grpc { .. } => Protocol::Grpc,
            CallKind::Http { .. } => Protocol::Http,
        };
        compare(&sub.want, got, protocol)
    }

    /// Every sub-case, each until it holds (the suite's eventual
    /// consistency), side by side as the upstream cases' `t.Parallel()`
    /// sub-tests; fails with each one that did not hold.
    fn check(&self, subs: Vec<Sub>) -> anyhow::Result<()> {
        let failures: Vec<String> = std::thread::scope(|s| {
            let runs: Vec<_> = subs
                .iter()
                .map(|sub| {
                    s.spawn(move || {
                        await_convergence(converge::DEFAULT, || self.attempt(sub))
                            .map_err(|e| format!("{}: {e}", sub.name()))
                    })
                })
                .collect();
            runs.into_iter()
                .filter_map(|r| r.join().expect("a sub-case thread panicked").err())
                .collect()
        });
        if failures.is_empty() {
            Ok(())
        } else {
            bail!(
                "{} of {} sub-cases failed:\n{}",
                failures.len(),
                subs.len(),
                failures.join("\n")
            )
        }
    }

    /// The suite's weighted-split check: a first request answered 200 by
    /// any backend (eventually), then batches of [`weight::REQUESTS`]
    /// over one connection until one is within the bound, at most
    /// [`weight::TRIES`] batches.
    fn check_weights(&self, first: Sub, expected: &[(&str, f64)]) -> anyhow::Result<()> {
        let (to, call, from) = (first.to.clone(), first.call.clone(), first.from);
        self.check(vec![first])?;
        let mut misses = Vec::new();
        for _ in 0..weight::TRIES {
            let answers = self.exchange(from, &to, &call, weight::REQUESTS)?;
            let mut pods = Vec::with_capacity(answers.len());
            for (i, a) in answers.iter().enumerate() {
                let ok = match call.kind {
                    CallKind::Grpc { .. } => a.grpc_status() == Some(0),
                    CallKind::Http { .. } => a.status == 200,
                };
                let e = a.echo.as_ref().filter(|_| ok).with_context(|| {
                    format!("request {} of the batch: {} {:?}", i + 1, a.status, a.body)
                })?;
                pods.push(e.pod.as_str());
            }
            match weight::check(&pods, expected) {
                Ok(counts) => {
                    eprintln!("  split {counts:?} after {} missed batches", misses.len());
                    return Ok(());
                }
                Err(e) => misses.push(e),
            }
        }
        bail!(
            "no batch of {} within ±{} of {expected:?} in {} tries:\n{}",
            weight::REQUESTS,
            weight::TOLERANCE,
            weight::TRIES,
            misses.join("\n")
        )
    }
}

/// One request of a case and what it must get.
struct Sub {
    from: Client,
    /// Where the client connects (see [`Bed::address`]).
    to: String,
    call: Call,
    want: Expected,
}

impl Sub {
    /// GET `path` from `from` to `host`, sending `host` as the Host header
    /// (`:80` left out, as the suite's `CalculateHost` does for http).
    fn get(from: Client, host: &str, path: &str) -> Self {
        let authority = host.strip_suffix(":80").unwrap_or(host);
        Self {
            from,
            to: host.into(),
            call: Call::get(authority, path),
            want: Expected::default(),
        }
    }

    /// Istio's gRPC `Echo` from `from` to `host` (`echo:7070`).
    fn grpc(from: Client, host: &str) -> Self {
        Self {
            from,
            to: host.into(),
            call: Call::grpc(host, Method::IstioEcho),
            want: Expected::default(),
        }
    }

    /// Sends this Host header instead of the name connected to.
    fn host(mut self, authority: &str) -> Self {
        self.call.authority = authority.into();
        self
    }

    fn header(mut self, name: &str, value: &str) -> Self {
        self.call = self.call.header(name, value);
        self
    }

    /// Answered 200 by a pod of `backend` (any pod: ""). Stricter than
    /// the mesh comparator, as the suite's north-south one: from the mesh
    /// namespace, and an HTTP backend saw the path and query sent.
    fn backend(mut self, backend: &str) -> Self {
        self.want = Expected {
            backend: backend.into(),
            ..self.want
        }
        .namespace(MESH);
        if let CallKind::Http { path, .. } = &self.call.kind {
            self.want.path = Some(path.clone());
        }
        self
    }

    /// The path (and query) the backend must see, when a rewrite changed it.
    fn path(mut self, path: &str) -> Self {
        self.want.path = Some(path.into());
        self
    }

    /// Answered `status` by the mesh itself.
    fn status(mut self, status: u16) -> Self {
        self.want.statuses = vec![status];
        self
    }

    /// Redirected with `status` to `location`.
    fn redirect(self, status: u16, location: &str) -> Self {
        let mut s = self.status(status);
        s.want.location = Some(location.into());
        s
    }

    fn request_header(mut self, name: &str, value: &str) -> Self {
        self.want = self.want.request_header(name, value);
        self
    }

    fn absent_request_header(mut self, name: &str) -> Self {
        self.want = self.want.absent_request_header(name);
        self
    }

    fn response_header(mut self, name: &str, value: &str) -> Self {
        self.want = self.want.response_header(name, value);
        self
    }

    fn absent_response_header(mut self, name: &str) -> Self {
        self.want = self.want.absent_response_header(name);
        self
    }

    fn name(&self) -> String {
        let what = match &self.call.kind {
            CallKind::Http { method, path, .. } => format!("{method} {path}"),
            CallKind::Grpc { method } => format!("gRPC {}", method.path()),
        };
        let mut s = format!(
            "{:?} -> {} (Host {}) {what}",
            self.from, self.to, self.call.authority
        );
        for (k, v) in &self.call.headers {
            s.push_str(&format!(" [{k}: {v}]"));
        }
        s
    }
}

use Client::{ConsumerEchoV1, EchoV1, EchoV2};

// ---------------------------------------------------------------------
// The cases, in the order of the README's table.

/// conformance/tests/mesh/mesh-basic.go: a request to a Service of the
/// mesh is answered.
fn mesh_basic(b: &Bed) -> anyhow::Result<()> {
    b.check(vec![Sub::get(EchoV1, "echo", "/").backend("")])
}

/// conformance/tests/mesh/mesh-frontend.go (mesh-frontend.yaml): a route
/// attached to Service echo-v2 applies to requests sent to the Service,
/// not to those sent to its pod's address.
fn mesh_frontend(b: &Bed) -> anyhow::Result<()> {
    let pod_ip = format!("{}:8080", b.c.pod(b.pod(EchoV2)).ip);
    b.check(vec![
        Sub::get(EchoV1, "echo-v2", "/")
            .backend("echo-v2")
            .response_header("X-Header-Set", "set"),
        Sub::get(EchoV1, &pod_ip, "/")
            .backend("echo-v2")
            .absent_response_header("X-Header-Set"),
    ])
}

/// conformance/tests/mesh/mesh-frontend-hostname.go (mesh-frontend.yaml):
/// the route is chosen by the Service connected to, not by the Host
/// header.
fn mesh_frontend_hostname(b: &Bed) -> anyhow::Result<()> {
    b.check(vec![
        Sub::get(EchoV1, "echo-v2", "/")
            .host("echo-v1")
            .backend("echo-v2")
            .response_header("X-Header-Set", "set"),
        Sub::get(EchoV1, "echo-v1", "/")
            .host("echo-v2")
            .backend("echo-v1")
            .absent_response_header("X-Header-Set"),
    ])
}

/// conformance/tests/mesh/mesh-ports.go (mesh-ports.yaml): a parentRef
/// with a port attaches to that Service port only; without, to all.
fn mesh_ports(b: &Bed) -> anyhow::Result<()> {
    b.check(vec![
        Sub::get(EchoV1, "echo-v1", "/")
            .backend("echo-v1")
            .response_header("X-Header-Set", "v1"),
        Sub::get(EchoV1, "echo-v1:8080", "/")
            .backend("echo-v1")
            .absent_response_header("X-Header-Set"),
        Sub::get(EchoV1, "echo-v2", "/")
            .backend("echo-v2")
            .response_header("X-Header-Set", "v2"),
        Sub::get(EchoV1, "echo-v2:8080", "/")
            .backend("echo-v2")
            .response_header("X-Header-Set", "v2"),
    ])
}

/// conformance/tests/mesh/mesh-consumer-route.go
/// (mesh-consumer-route.yaml): a route in the consumer namespace for a
/// Service of the mesh namespace applies to that namespace's clients only.
fn mesh_consumer_route(b: &Bed) -> anyhow::Result<()> {
    let svc = "echo-v1.gateway-conformance-mesh";
    b.check(vec![
        Sub::get(ConsumerEchoV1, svc, "/")
            .backend("echo-v1")
            .response_header("X-Header-Set", "set"),
        Sub::get(EchoV1, svc, "/")
            .backend("echo-v1")
            .absent_response_header("X-Header-Set"),
    ])
}

/// conformance/tests/mesh/mesh-split.go (mesh-split.yaml): exact paths
/// choose the backend Service.
fn mesh_traffic_split(b: &Bed) -> anyhow::Result<()> {
    b.check(vec![
        Sub::get(EchoV1, "echo", "/v1").backend("echo-v1"),
        Sub::get(EchoV1, "echo", "/v2").backend("echo-v2"),
    ])
}

/// conformance/tests/mesh/httproute-simple-same-namespace.go
/// (httproute-simple-same-namespace.yaml).
fn simple_same_namespace(b: &Bed) -> anyhow::Result<()> {
    b.check(vec![Sub::get(EchoV1, "echo", "/").backend("echo-v1")])
}

/// conformance/tests/mesh/httproute-matching.go (httproute-matching.yaml):
/// path prefixes on segment boundaries, header matches, and the spec's
/// precedence between rules.
fn matching(b: &Bed) -> anyhow::Result<()> {
    let get = |path: &str| Sub::get(EchoV1, "echo", path);
    b.check(vec![
        get("/").backend("echo-v1"),
        get("/example").backend("echo-v1"),
        get("/").header("Version", "one").backend("echo-v1"),
        get("/v2").backend("echo-v2"),
        get("/v2/example").backend("echo-v2"),
        get("/").header("Version", "two").backend("echo-v2"),
        get("/v2/").backend("echo-v2"),
        get("/v2example").backend("echo-v1"),
        get("/foo/v2/example").backend("echo-v1"),
    ])
}

/// conformance/tests/mesh/httproute-query-param-matching.go
/// (httproute-query-param-matching.yaml): query matches, alone and with
/// path and header matches; no matching rule is a 404.
fn query_param_matching(b: &Bed) -> anyhow::Result<()> {
    let get = |path: &str| Sub::get(EchoV1, "echo", path);
    b.check(vec![
        get("/?animal=whale").backend("echo-v1"),
        get("/?animal=dolphin").backend("echo-v2"),
        get("/?animal=whale&otherparam=irrelevant").backend("echo-v1"),
        get("/?animal=dolphin&color=yellow").backend("echo-v2"),
        get("/?color=blue").status(404),
        get("/?animal=dog").status(404),
        get("/?animal=whaledolphin").status(404),
        get("/").status(404),
        get("/path1?animal=whale").backend("echo-v1"),
        get("/?animal=whale")
            .header("version", "one")
            .backend("echo-v2"),
        get("/path3?animal=shark").backend("echo-v1"),
        get("/path4?animal=kraken")
            .header("version", "three")
            .backend("echo-v1"),
        get("/?animal=shark").status(404),
        get("/path4?animal=kraken").status(404),
        get("/path5?animal=hydra").backend("echo-v1"),
    ])
}

/// conformance/tests/mesh/httproute-weight.go (httproute-weight.yaml):
/// 70/30 over echo-v1 and echo-v2, within the suite's bound.
fn http_weight(b: &Bed) -> anyhow::Result<()> {
    b.check_weights(
        Sub::get(EchoV1, "echo", "/").backend(""),
        &[("echo-v1", 0.7), ("echo-v2", 0.3)],
    )
}

/// The requests and expectations of
/// conformance/tests/mesh/httproute-request-header-modifier.go, which
/// serves both of its cases (rule filters, backend filters).
fn header_modifier_subs() -> Vec<Sub> {
    let get = |path: &str| Sub::get(EchoV1, "echo", path);
    vec![
        get("/set")
            .header("Some-Other-Header", "val")
            .backend("echo-v1")
            .request_header("Some-Other-Header", "val")
            .request_header("X-Header-Set", "set-overwrites-values"),
        get("/set")
            .header("Some-Other-Header", "val")
            .header("X-Header-Set", "some-other-value")
            .backend("echo-v1")
            .request_header("Some-Other-Header", "val")
            .request_header("X-Header-Set", "set-overwrites-values"),
        get("/add")
            .header("Some-Other-Header", "val")
            .backend("echo-v1")
            .request_header("Some-Other-Header", "val")
            .request_header("X-Header-Add", "add-appends-values"),
        get("/add")
            .header("Some-Other-Header", "val")
            .header("X-Header-Add", "some-other-value")
            .backend("echo-v1")
            .request_header("Some-Other-Header", "val")
            .request_header("X-Header-Add", "some-other-value,add-appends-values"),
        get("/remove")
            .header("X-Header-Remove", "val")
            .backend("echo-v1")
            .absent_request_header("X-Header-Remove"),
        get("/multiple")
            .header("X-Header-Set-2", "set-val-2")
            .header("X-Header-Add-2", "add-val-2")
            .header("X-Header-Remove-2", "remove-val-2")
            .header("Another-Header", "another-header-val")
            .backend("echo-v1")
            .request_header("X-Header-Set-1", "header-set-1")
            .request_header("X-Header-Set-2", "header-set-2")
            .request_header("X-Header-Add-1", "header-add-1")
            .request_header("X-Header-Add-2", "add-val-2,header-add-2")
            .request_header("X-Header-Add-3", "header-add-3")
            .request_header("Another-Header", "another-header-val")
            .absent_request_header("X-Header-Remove-1")
            .absent_request_header("X-Header-Remove-2"),
        get("/case-insensitivity")
            .header("x-header-set", "original-val-set")
            .header("x-header-add", "original-val-add")
            .header("x-header-remove", "original-val-remove")
            .header("Another-Header", "another-header-val")
            .backend("echo-v1")
            .request_header("X-Header-Set", "header-set")
            .request_header("X-Header-Add", "original-val-add,header-add")
            .request_header("Another-Header", "another-header-val")
            .absent_request_header("x-header-remove"),
    ]
}

/// conformance/tests/mesh/httproute-request-header-modifier.go
/// (httproute-request-header-modifier.yaml): set, add, remove request
/// headers by the rule's filter.
fn request_header_modifier(b: &Bed) -> anyhow::Result<()> {
    b.check(header_modifier_subs())
}

/// conformance/tests/mesh/httproute-request-header-modifier.go
/// (httproute-request-header-modifier-backend.yaml): the same, by the
/// backendRef's filter.
fn backend_request_header_modifier(b: &Bed) -> anyhow::Result<()> {
    b.check(header_modifier_subs())
}

/// conformance/tests/mesh/httproute-redirect-host-and-status.go
/// (httproute-redirect-host-and-status.yaml).
fn redirect_host_and_status(b: &Bed) -> anyhow::Result<()> {
    let get = |path: &str| Sub::get(EchoV1, "echo", path);
    b.check(vec![
        get("/hostname-redirect").redirect(302, "http://example.org/hostname-redirect"),
        get("/host-and-status").redirect(301, "http://example.org/host-and-status"),
    ])
}

/// conformance/tests/mesh/httproute-redirect-path.go
/// (httproute-redirect-path.yaml).
fn redirect_path(b: &Bed) -> anyhow::Result<()> {
    let get = |path: &str| Sub::get(EchoV1, "echo", path);
    b.check(vec![
        get("/original-prefix/lemon").redirect(302, "http://echo/replacement-prefix/lemon"),
        get("/full/path/original").redirect(302, "http://echo/full-path-replacement"),
        get("/path-and-host").redirect(302, "http://example.org/replacement-prefix"),
        get("/path-and-status").redirect(301, "http://echo/replacement-prefix"),
        get("/full-path-and-host").redirect(302, "http://example.org/replacement-full"),
        get("/full-path-and-status").redirect(301, "http://echo/replacement-full"),
    ])
}

/// conformance/tests/mesh/httproute-redirect-port.go
/// (httproute-redirect-port.yaml).
fn redirect_port(b: &Bed) -> anyhow::Result<()> {
    let get = |path: &str| Sub::get(EchoV1, "echo", path);
    b.check(vec![
        get("/port").redirect(302, "http://echo:8083/port"),
        get("/port-and-host").redirect(302, "http://example.org:8083/port-and-host"),
        get("/port-and-status").redirect(301, "http://echo:8083/port-and-status"),
        get("/port-and-host-and-status")
            .redirect(302, "http://example.org:8083/port-and-host-and-status"),
    ])
}

/// conformance/tests/mesh/httproute-redirect-scheme.go
/// (httproute-redirect-scheme.yaml).
fn scheme_redirect(b: &Bed) -> anyhow::Result<()> {
    let get = |path: &str| Sub::get(EchoV1, "echo", path);
    b.check(vec![
        get("/scheme").redirect(302, "https://echo/scheme"),
        get("/scheme-and-host").redirect(302, "https://example.org/scheme-and-host"),
        get("/scheme-and-status").redirect(301, "https://echo/scheme-and-status"),
        get("/scheme-and-host-and-status")
            .redirect(302, "https://example.org/scheme-and-host-and-status"),
    ])
}

/// conformance/tests/mesh/httproute-303-redirect.go
/// (httproute-303-redirect.yaml).
fn redirect_303(b: &Bed) -> anyhow::Result<()> {
    b.check(vec![
        Sub::get(EchoV1, "echo", "/redirect").redirect(303, "http://echo/redirect"),
    ])
}

/// conformance/tests/mesh/httproute-307-redirect.go
/// (httproute-307-redirect.yaml).
fn redirect_307(b: &Bed) -> anyhow::Result<()> {
    b.check(vec![
        Sub::get(EchoV1, "echo", "/temporary").redirect(307, "http://echo/temporary"),
    ])
}

/// conformance/tests/mesh/httproute-308-redirect.go
/// (httproute-308-redirect.yaml).
fn redirect_308(b: &Bed) -> anyhow::Result<()> {
    b.check(vec![
        Sub::get(EchoV1, "echo", "/permanent").redirect(308, "http://echo/permanent"),
    ])
}

/// conformance/tests/mesh/httproute-rewrite-path.go
/// (httproute-rewrite-path.yaml): prefix and full path rewrites, one with
/// header changes besides.
fn rewrite_path(b: &Bed) -> anyhow::Result<()> {
    let get = |path: &str| Sub::get(EchoV1, "echo", path);
    let with_headers = |s: Sub| {
        s.header("X-Header-Remove", "remove-val")
            .header("X-Header-Add-Append", "append-val-1")
            .header("X-Header-Set", "set-val")
    };
    let modified = |s: Sub| {
        s.request_header("X-Header-Add", "header-val-1")
            .request_header("X-Header-Add-Append", "append-val-1,header-val-2")
            .request_header("X-Header-Set", "set-overwrites-values")
            .absent_request_header("X-Header-Remove")
    };
    b.check(vec![
        get("/prefix/one/two").backend("echo-v1").path("/one/two"),
        get("/strip-prefix/three").backend("echo-v1").path("/three"),
        get("/strip-prefix").backend("echo-v1").path("/"),
        get("/full/one/two").backend("echo-v1").path("/one"),
        modified(
            with_headers(get("/full/rewrite-path-and-modify-headers/test"))
                .backend("echo-v1")
                .path("/test"),
        ),
        modified(
            with_headers(get("/prefix/rewrite-path-and-modify-headers/one"))
                .backend("echo-v1")
                .path("/prefix/one"),
        ),
    ])
}

/// conformance/tests/mesh/httproute-named-rule.go
/// (httproute-named-rule.yaml).
fn named_rule(b: &Bed) -> anyhow::Result<()> {
    b.check(vec![
        Sub::get(EchoV1, "echo", "/named").backend("echo-v1"),
        Sub::get(EchoV1, "echo", "/unnamed").backend("echo-v2"),
    ])
}

/// conformance/tests/mesh/grpcroute-request-header-modifier.go
/// (grpcroute-request-header-modifier.yaml): a GRPCRoute's rules, matched
/// by metadata, set, add and remove metadata.
fn grpc_request_header_modifier(b: &Bed) -> anyhow::Result<()> {
    let call = |from: Client, case: &str| Sub::grpc(from, "echo:7070").header("x-test-case", case);
    b.check(vec![
        call(EchoV1, "set")
            .header("some-other-header", "this-header-should-be-set")
            .header("x-header-set", "this-value-should-be-overwritten")
            .backend("echo-v1")
            .request_header("x-test-case", "set")
            .request_header("some-other-header", "this-header-should-be-set")
            .request_header("x-header-set", "set-overwrites-values"),
        call(EchoV1, "add")
            .header("x-header-add", "this-value-should-be-appended")
            .backend("echo-v1")
            .request_header("x-test-case", "add")
            .request_header(
                "x-header-add",
                "this-value-should-be-appended,add-appends-values",
            ),
        call(EchoV1, "remove")
            .header("x-header-remove", "this-should-be-removed")
            .backend("echo-v1")
            .request_header("x-test-case", "remove")
            .absent_request_header("x-header-remove"),
        call(EchoV2, "multi")
            .header("x-header-set-2", "set-header-2")
            .header("x-header-add-2", "add-header-2")
            .header("x-header-remove-2", "should-be-removed-2")
            .backend("echo-v2")
            .request_header("x-test-case", "multi")
            .request_header("x-header-set-1", "header-set-1")
            .request_header("x-header-set-2", "header-set-2")
            .request_header("x-header-add-1", "header-add-1")
            .request_header("x-header-add-2", "add-header-2,header-add-2")
            .absent_request_header("x-header-remove-1")
            .absent_request_header("x-header-remove-2"),
    ])
}

/// conformance/tests/mesh/grpcroute-weight.go (grpcroute-weight.yaml):
/// 70/30 over gRPC, and a weight-0 backend (a Service that does not
/// exist) never chosen.
fn grpc_weight(b: &Bed) -> anyhow::Result<()> {
    b.check_weights(
        Sub::grpc(EchoV1, "echo:7070").backend(""),
        &[("echo-v1", 0.7), ("echo-v2", 0.3)],
    )
}

// ---------------------------------------------------------------------
// Ours: what the suite does not cover and an in-process test of the
// waypoint (mesh-waypoint/tests) cannot show.

/// A route on `echo` that sends to echo-v2 and mirrors to echo-v1.
const OWN_MIRROR: &str = r#"apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata:
  name: own-mirror
  namespace: gateway-conformance-mesh
spec:
  parentRefs:
  - {group: "", kind: Service, name: echo, port: 80}
  rules:
  - filters:
    - type: RequestMirror
      requestMirror:
        backendRef: {name: echo-v1, port: 8080}
    backendRefs:
    - {name: echo-v2, port: 8080}
"#;

/// A RequestMirror's copy is a second request the waypoint sends, to a
/// pod on another node than the primary's, whose agent admits it as the
/// waypoint's: the client gets echo-v2's answer only, and echo-v1 serves
/// the copy (Host `echo-shadow`, as Envoy names a shadow) of each.
fn own_request_mirror(b: &Bed) -> anyhow::Result<()> {
    // A path of this run's own, so no earlier request counts.
    let path = format!("/own-mirror/{}", std::process::id());
    b.check(vec![Sub::get(EchoV1, "echo", &path).backend("echo-v2")])?;
    let copies = |b: &Bed| {
        b.served(EchoV1)
            .into_iter()
            .filter(|e| e.url == path)
            .collect::<Vec<_>>()
    };
    let copy = sys::wait_for(
        "echo-v1 to serve the mirrored copy",
        Duration::from_secs(10),
        || copies(b).into_iter().next(),
    )?;
    anyhow::ensure!(copy.host == "echo-shadow", "the copy's Host: {copy:?}");
    anyhow::ensure!(copy.namespace == MESH, "{copy:?}");
    Ok(())
}

// ---------------------------------------------------------------------
// The harness.

struct Case {
    /// The upstream case's `ShortName`.
    name: &'static str,
    /// The route file it loads on top of the base (None: the base alone).
    manifest: Option<&'static str>,
    run: fn(&Bed) -> anyhow::Result<()>,
}

macro_rules! manifest {
    ($file:literal) => {
        Some(include_str!(concat!("../conformance/mesh/", $file)))
    };
}

const CASES: [Case; 24] = [
    Case {
        name: "MeshBasic",
        manifest: None,
        run: mesh_basic,
    },
    Case {
        name: "MeshFrontend",
        manifest: manifest!("mesh-frontend.yaml"),
        run: mesh_frontend,
    },
    Case {
        name: "MeshFrontendHostname",
        manifest: manifest!("mesh-frontend.yaml"),
        run: mesh_frontend_hostname,
    },
    Case {
        name: "MeshPorts",
        manifest: manifest!("mesh-ports.yaml"),
        run: mesh_ports,
    },
    Case {
        name: "MeshConsumerRoute",
        manifest: manifest!("mesh-consumer-route.yaml"),
        run: mesh_consumer_route,
    },
    Case {
        name: "MeshTrafficSplit",
        manifest: manifest!("mesh-split.yaml"),
        run: mesh_traffic_split,
    },
    Case {
        name: "MeshHTTPRouteSimpleSameNamespace",
        manifest: manifest!("httproute-simple-same-namespace.yaml"),
        run: simple_same_namespace,
    },
    Case {
        name: "MeshHTTPRouteMatching",
        manifest: manifest!("httproute-matching.yaml"),
        run: matching,
    },
    Case {
        name: "MeshHTTPRouteQueryParamMatching",
        manifest: manifest!("httproute-query-param-matching.yaml"),
        run: query_param_matching,
    },
    Case {
        name: "MeshHTTPRouteWeight",
        manifest: manifest!("httproute-weight.yaml"),
        run: http_weight,
    },
    Case {
        name: "MeshHTTPRouteRequestHeaderModifier",
        manifest: manifest!("httproute-request-header-modifier.yaml"),
        run: request_header_modifier,
    },
    Case {
        name: "MeshHTTPRouteBackendRequestHeaderModifier",
        manifest: manifest!("httproute-request-header-modifier-backend.yaml"),
        run: backend_request_header_modifier,
    },
    Case {
        name: "MeshHTTPRouteRedirectHostAndStatus",
        manifest: manifest!("httproute-redirect-host-and-status.yaml"),
        run: redirect_host_and_status,
    },
    Case {
        name: "MeshHTTPRouteRedirectPath",
        manifest: manifest!("httproute-redirect-path.yaml"),
        run: redirect_path,
    },
    Case {
        name: "MeshHTTPRouteRedirectPort",
        manifest: manifest!("httproute-redirect-port.yaml"),
        run: redirect_port,
    },
    Case {
        name: "MeshHTTPRouteSchemeRedirect",
        manifest: manifest!("httproute-redirect-scheme.yaml"),
        run: scheme_redirect,
    },
    Case {
        name: "MeshHTTPRoute303Redirect",
        manifest: manifest!("httproute-303-redirect.yaml"),
        run: redirect_303,
    },
    Case {
        name: "MeshHTTPRoute307Redirect",
        manifest: manifest!("httproute-307-redirect.yaml"),
        run: redirect_307,
    },
    Case {
        name: "MeshHTTPRoute308Redirect",
        manifest: manifest!("httproute-308-redirect.yaml"),
        run: redirect_308,
    },
    Case {
        name: "MeshHTTPRouteRewritePath",
        manifest: manifest!("httproute-rewrite-path.yaml"),
        run: rewrite_path,
    },
    Case {
        name: "MeshHTTPRouteNamedRule",
        manifest: manifest!("httproute-named-rule.yaml"),
        run: named_rule,
    },
    Case {
        name: "MeshGRPCRouteRequestHeaderModifier",
        manifest: manifest!("grpcroute-request-header-modifier.yaml"),
        run: grpc_request_header_modifier,
    },
    Case {
        name: "MeshGRPCRouteWeight",
        manifest: manifest!("grpcroute-weight.yaml"),
        run: grpc_weight,
    },
    // Ours, named apart from upstream's.
    Case {
        name: "OwnHTTPRouteRequestMirror",
        manifest: Some(OWN_MIRROR),
        run: own_request_mirror,
    },
];

fn main() {
    let started = Instant::now();
    let selection = Selection::parse(std::env::args().skip(1));
    let chosen: Vec<&Case> = CASES.iter().filter(|c| selection.selects(c.name)).collect();
    if selection.list {
        for c in &chosen {
            println!("{}: test", c.name);
        }
        println!("\n{} tests, 0 benchmarks", chosen.len());
        return;
    }
    let mut report = Report {
        filtered_out: CASES.len() - chosen.len(),
        ..Report::default()
    };
    let plural = if chosen.len() == 1 { "" } else { "s" };
    println!("\nrunning {} test{plural}", chosen.len());
    if chosen.is_empty() {
        report.finish(started);
        return;
    }
    if !sys::may_run("conformance_mesh") {
        for c in &chosen {
            let why = sys::SKIP_NOT_ROOT.trim_start_matches("skipped: ");
            report.record(c.name, Outcome::Ignored(why.into()));
        }
        report.finish(started);
        return;
    }
    // A bed that fails to start fails every case, with its reason.
    let mut bed = match catching(Bed::start) {
        Ok(b) => b,
        Err(why) => {
            for c in &chosen {
                report.record(
                    c.name,
                    Outcome::Failed(format!("the test bed did not start: {why}")),
                );
            }
            report.finish(started);
            std::process::exit(101);
        }
    };
    eprintln!(
        "conformance_mesh: bed up in {:.1}s",
        started.elapsed().as_secs_f64()
    );
    for case in chosen {
        let t = Instant::now();
        let outcome = run_case(|| {
            bed.load(case.manifest)
                .context("loading the case's routes")?;
            (case.run)(&bed)
        });
        eprintln!("{}: {:.1}s", case.name, t.elapsed().as_secs_f64());
        report.record(case.name, outcome);
    }
    if report.failed() > 0 {
        bed.c.keep_logs();
    }
    // Agents, waypoint, CA, pods' processes, namespaces, cgroups, pins.
    drop(bed);
    report.finish(started);
    if report.failed() > 0 {
        std::process::exit(101);
    }
}
