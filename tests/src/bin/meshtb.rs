//! `meshtb`: the test bed's TCP servers and clients, run inside pods.
//! Everything it reports is one JSON object per line on stdout.
use std::{
    io::{BufRead, BufReader, Read, Write},
    net::{Shutdown, SocketAddr, TcpListener, TcpStream},
    thread,
    time::{Duration, Instant},
};

use clap::{Parser, Subcommand, ValueEnum};
use serde_json::json;

// The crate root is src/bin/, where hboneprobe is a sibling.
#[path = "meshtb/conformance_echo.rs"]
mod conformance_echo;
#[path = "meshtb/web.rs"]
mod web;
#[path = "meshtb/web_client.rs"]
mod web_client;
#[path = "meshtb/websocket.rs"]
mod websocket;

#[derive(Parser)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Clone, Copy, ValueEnum, PartialEq)]
enum Mode {
    /// Reply `{"server":NAME,"port":P,"peer":ADDR}` then echo what arrives.
    Ident,
    /// Echo everything until EOF, then close.
    Echo,
    /// Minimal HTTP/1.1 keep-alive server with a fixed body.
    Http,
    /// HTTP/1.1 and h2c on one port, each response naming the server;
    /// gRPC-shaped requests and WebSocket upgrades served (see `web`).
    Web,
    /// The Gateway API conformance echo (`mesh_testbed::echo`): HTTP/1.1,
    /// h2c and gRPC, each request answered with what arrived and the pod
    /// (POD_NAME, NAMESPACE) that answered.
    ConformanceEcho,
}

#[derive(Subcommand)]
enum Cmd {
    /// Listen on one or more ports (`8080`, `20000-20199`, `80,443`).
    Serve {
        #[arg(long)]
        ports: String,
        #[arg(long, value_enum)]
        mode: Mode,
        #[arg(long, default_value = "server")]
        name: String,
        /// Body size for `--mode http`.
        #[arg(long, default_value_t = 1024)]
        body: usize,
    },
    /// Connect once, send a message, print the server's ident line.
    Ident {
        #[arg(long)]
        to: SocketAddr,
        #[arg(long, default_value_t = 5)]
        timeout_s: u64,
    },
    /// Send N bytes, shut down writing, read the echo until EOF; report
    /// lengths and checksums of both directions.
    Bulk {
        #[arg(long)]
        to: SocketAddr,
        #[arg(long)]
        bytes: u64,
        #[arg(long, default_value_t = 60)]
        timeout_s: u64,
        /// Treat EAGAIN on the blocking socket as an error.
        #[arg(long)]
        strict_blocking: bool,
    },
    /// Keep one connection to an echo server open for a while, sending a
    /// line every interval and checking it comes back; report the rounds.
    Hold {
        #[arg(long)]
        to: SocketAddr,
        #[arg(long)]
        seconds: u64,
        #[arg(long, default_value_t = 250)]
        interval_ms: u64,
    },
    /// Open one connection to each port of a range at once, over threads;
    /// report which port each reached.
    Fanout {
        #[arg(long)]
        host: std::net::IpAddr,
        #[arg(long)]
        ports: String,
        #[arg(long, default_value_t = 10)]
        timeout_s: u64,
    },
    /// HTTP/1.1 GETs at a fixed total rate over keep-alive connections,
    /// open loop: each request has its own start time, and one that falls
    /// behind (a late timer, a slow reply) is sent at once instead of being
    /// skipped, so the rate asked is the rate delivered. Reports requests,
    /// the achieved rate and latency percentiles.
    Load {
        #[arg(long)]
        to: SocketAddr,
        /// Requests per second over all connections.
        #[arg(long)]
        rate: u32,
        #[arg(long, default_value_t = 8)]
        conns: u32,
        #[arg(long)]
        seconds: u64,
    },
    /// The least a user-space hop can be: accept on each `LISTEN=TO` pair
    /// and copy both ways (half-close carried), on one thread with epoll,
    /// nothing else. The benchmark puts one in each pod where the agents
    /// would be, to show what two user-space hops cost on the machine.
    Relay {
        #[arg(long = "map", value_parser = relay_map, required = true)]
        maps: Vec<(SocketAddr, SocketAddr)>,
    },
    /// N HTTP/1.1 GETs, one after another, over one keep-alive connection;
    /// report which server answered each (`serve --mode web`).
    Http1 {
        #[arg(long)]
        to: SocketAddr,
        /// The Host header (default: the address).
        #[arg(long)]
        authority: Option<String>,
        #[arg(long, default_value_t = 20)]
        requests: u32,
        #[arg(long, default_value_t = 20)]
        timeout_s: u64,
    },
    /// N h2c GETs at once over one connection (prior knowledge), and with
    /// `--grpc MESSAGE` a gRPC-shaped unary call on it; report who answered.
    H2c {
        #[arg(long)]
        to: SocketAddr,
        #[arg(long)]
        authority: Option<String>,
        #[arg(long, default_value_t = 20)]
        requests: u32,
        #[arg(long)]
        grpc: Option<String>,
        #[arg(long, default_value_t = 20)]
        timeout_s: u64,
    },
    /// A WebSocket upgrade, one text message echoed, a close.
    Websocket {
        #[arg(long)]
        to: SocketAddr,
        #[arg(long)]
        authority: Option<String>,
        #[arg(long, default_value = "hello through the mesh")]
        message: String,
        #[arg(long, default_value_t = 20)]
        timeout_s: u64,
    },
    /// One call to a conformance echo (`serve --mode conformance-echo`),
    /// COUNT times over one connection; prints `{"exchanges": [...]}`.
    EchoRequest {
        #[arg(long)]
        to: SocketAddr,
        /// The call, as `mesh_testbed::echo::Call` in JSON.
        #[arg(long)]
        call: String,
        #[arg(long, default_value_t = 1)]
        count: u32,
        /// Per request, connecting included.
        #[arg(long, default_value_t = 10_000)]
        timeout_ms: u64,
    },
    /// Send DATA as is (e.g. a malformed HTTP request), read until the peer
    /// closes or the timeout; report the reply and its HTTP status.
    Raw {
        #[arg(long)]
        to: SocketAddr,
        #[arg(long)]
        data: String,
        #[arg(long, default_value_t = 5)]
        timeout_s: u64,
    },
}

fn relay_map(s: &str) -> Result<(SocketAddr, SocketAddr), String> {
    let (listen, to) = s.split_once('=').ok_or_else(|| {
        format!("--map {s:?}: expected LISTEN=TO, e.g. 127.0.0.1:5201=10.0.1.10:15201")
    })?;
    let parse = |a: &str| {
        a.parse::<SocketAddr>()
            .map_err(|e| format!("--map {s:?}: {a:?}: {e}"))
    };
    Ok((parse(listen)?, parse(to)?))
}

/// `8080`, `20000-20199`, or a comma-separated list of either.
fn ports(spec: &str) -> Vec<u16> {
    spec.split(',')
        .flat_map(|part| match part.split_once('-') {
            Some((a, b)) => (a.parse().unwrap()..=b.parse().unwrap()).collect::<Vec<u16>>(),
            None => vec![part.parse().expect("port")],
        })
        .collect()
}

/// FNV-1a: cheap, deterministic, enough to tell corrupted or reordered bytes.
#[derive(Clone, Copy)]
struct Fnv(u64);
impl Fnv {
    fn new() -> Self {
        Fnv(0xcbf2_9ce4_8422_2325)
    }
    fn update(&mut self, data: &[u8]) {
        for b in data {
            self.0 ^= u64::from(*b);
            self.0 = self.0.wrapping_mul(0x100_0000_01b3);
        }
    }
}

/// Deterministic payload so both ends can check it without sharing it.
fn pattern(offset: u64, buf: &mut [u8]) {
    for (i, b) in buf.iter_mut().enumerate() {
        let x = offset + i as u64;
        *b = (x ^ (x >> 8) ^ (x >> 16)) as u8;
    }
}

fn main() {
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::Serve {
            ports: spec,
            mode,
            name,
            body,
        } => serve(&ports(&spec), mode, &name, body),
        Cmd::Ident { to, timeout_s } => {
            let out = ident(to, Duration::from_secs(timeout_s));
            println!("{out}");
        }
        Cmd::Bulk {
            to,
            bytes,
            timeout_s,
            strict_blocking,
        } => println!(
            "{}",
            bulk(to, bytes, Duration::from_secs(timeout_s), strict_blocking)
        ),
        Cmd::Hold {
            to,
            seconds,
            interval_ms,
        } => println!(
            "{}",
            hold(
                to,
                Duration::from_secs(seconds),
                Duration::from_millis(interval_ms)
            )
        ),
        Cmd::Fanout {
            host,
            ports: spec,
            timeout_s,
        } => {
            let t = Duration::from_secs(timeout_s);
            let handles: Vec<_> = ports(&spec)
                .into_iter()
                .map(|p| thread::spawn(move || (p, ident(SocketAddr::new(host, p), t))))
                .collect();
            let mut reached = Vec::new();
            let mut failed = Vec::new();
            for h in handles {
                let (p, v) = h.join().unwrap();
                match v.get("port").and_then(|x| x.as_u64()) {
                    Some(got) => reached.push(json!({"asked": p, "reached": got})),
                    None => failed.push(json!({"asked": p, "error": v})),
                }
            }
            println!("{}", json!({"reached": reached, "failed": failed}));
        }
        Cmd::Load {
            to,
            rate,
            conns,
            seconds,
        } => println!("{}", load(to, rate, conns, Duration::from_secs(seconds))),
        Cmd::Relay { maps } => relay(maps),
        Cmd::Http1 {
            to,
            authority,
            requests,
            timeout_s,
        } => println!(
            "{}",
            web_client::http1(
                to,
                &web_client::default_authority(to, authority),
                requests,
                Duration::from_secs(timeout_s)
            )
        ),
        Cmd::H2c {
            to,
            authority,
            requests,
            grpc,
            timeout_s,
        } => println!(
            "{}",
            web_client::h2c(
                to,
                &web_client::default_authority(to, authority),
                requests,
                grpc.as_deref(),
                Duration::from_secs(timeout_s)
            )
        ),
        Cmd::Websocket {
            to,
            authority,
            message,
            timeout_s,
        } => println!(
            "{}",
            web_client::websocket(
                to,
                &web_client::default_authority(to, authority),
                &message,
                Duration::from_secs(timeout_s)
            )
        ),
        Cmd::EchoRequest {
            to,
            call,
            count,
            timeout_ms,
        } => {
            let (out, status) =
                conformance_echo::request(to, &call, count, Duration::from_millis(timeout_ms));
            println!("{out}");
            std::process::exit(status);
        }
        Cmd::Raw {
            to,
            data,
            timeout_s,
        } => println!(
            "{}",
            web_client::raw(to, &data, Duration::from_secs(timeout_s))
        ),
    }
}

fn relay(maps: Vec<(SocketAddr, SocketAddr)>) {
    let listeners = maps
        .into_iter()
        .map(|(listen, to)| {
            let l = TcpListener::bind(listen).unwrap_or_else(|e| panic!("bind {listen}: {e}"));
            (l, to)
        })
        .collect::<Vec<_>>();
    println!("{}", json!({"listening": listeners.len(), "name": "relay"}));
    std::io::stdout().flush().unwrap();
    relay_on(listeners);
}

fn relay_on(listeners: Vec<(TcpListener, SocketAddr)>) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
        .expect("tokio runtime");
    rt.block_on(async move {
        let mut tasks = Vec::new();
        for (l, to) in listeners {
            l.set_nonblocking(true).expect("non-blocking listener");
            let l = tokio::net::TcpListener::from_std(l).expect("listener");
            tasks.push(tokio::spawn(async move {
                while let Ok((mut down, _)) = l.accept().await {
                    tokio::spawn(async move {
                        let Ok(mut up) = tokio::net::TcpStream::connect(to).await else {
                            return;
                        };
                        let _ = down.set_nodelay(true);
                        let _ = up.set_nodelay(true);
                        let _ = tokio::io::copy_bidirectional(&mut down, &mut up).await;
                    });
                }
            }));
        }
        for t in tasks {
            let _ = t.await;
        }
    });
}

fn serve(ports: &[u16], mode: Mode, name: &str, body: usize) {
    // Before listening: a test waits for that line, and should instead
    // see why the echo cannot run.
    let workload = match mode {
        Mode::ConformanceEcho => match conformance_echo::workload() {
            Ok(w) => Some(w),
            Err(e) => {
                println!("{}", json!({"error": format!("{e:#}")}));
                std::process::exit(2);
            }
        },
        _ => None,
    };
    let mut listeners = Vec::new();
    for p in ports {
        let l = TcpListener::bind(("0.0.0.0", *p)).unwrap_or_else(|e| panic!("bind {p}: {e}"));
        listeners.push(l);
    }
    println!("{}", json!({"listening": ports.len(), "name": name}));
    std::io::stdout().flush().unwrap();
    if mode == Mode::Web {
        return web::serve(listeners, name);
    }
    if let Some(w) = workload {
        if let Err(e) = conformance_echo::serve(listeners, w) {
            println!("{}", json!({"error": format!("{e:#}")}));
            std::process::exit(1);
        }
        return;
    }
    let handles: Vec<_> = listeners
        .into_iter()
        .map(|l| {
            let name = name.to_owned();
            thread::spawn(move || {
                for stream in l.incoming().flatten() {
                    let name = name.clone();
                    thread::spawn(move || handle(stream, mode, &name, body));
                }
            })
        })
        .collect();
    for h in handles {
        let _ = h.join();
    }
}

fn handle(mut s: TcpStream, mode: Mode, name: &str, body: usize) {
    let peer = s.peer_addr().map(|a| a.to_string()).unwrap_or_default();
    let local = s.local_addr().map(|a| a.port()).unwrap_or(0);
    if mode != Mode::Http {
        println!("{}", json!({"accepted": peer, "port": local}));
        let _ = std::io::stdout().flush();
    }
    match mode {
        Mode::Ident => {
            let line = json!({"server": name, "port": local, "peer": peer}).to_string() + "\n";
            let _ = s.write_all(line.as_bytes());
            echo(s);
        }
        Mode::Echo => echo(s),
        Mode::Http => http(s, body),
        // Served by `web::serve` and `conformance_echo::serve`, never by a
        // thread per connection.
        Mode::Web | Mode::ConformanceEcho => {}
    }
}

fn echo(mut s: TcpStream) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if s.write_all(&buf[..n]).is_err() {
                    return;
                }
            }
        }
    }
    let _ = s.shutdown(Shutdown::Write);
}

fn http(s: TcpStream, body: usize) {
    let _ = s.set_nodelay(true);
    let mut w = s.try_clone().unwrap();
    let mut r = BufReader::new(s);
    let payload = vec![b'x'; body];
    let head =
        format!("HTTP/1.1 200 OK\r\nContent-Length: {body}\r\nContent-Type: text/plain\r\n\r\n");
    let mut line = String::new();
    loop {
        let mut close = false;
        // Request line and headers; bodies are not expected.
        loop {
            line.clear();
            match r.read_line(&mut line) {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
            if line.to_ascii_lowercase().starts_with("connection: close") {
                close = true;
            }
            if line == "\r\n" || line == "\n" {
                break;
            }
        }
        let mut resp = head.clone().into_bytes();
        resp.extend_from_slice(&payload);
        if w.write_all(&resp).is_err() || close {
            return;
        }
    }
}

/// One keep-alive GET and its response (the body read by Content-Length).
fn get(w: &mut TcpStream, r: &mut BufReader<TcpStream>, line: &mut String) -> std::io::Result<()> {
    w.write_all(b"GET / HTTP/1.1\r\nHost: load\r\n\r\n")?;
    let mut length = None;
    loop {
        line.clear();
        if r.read_line(line)? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        if line == "\r\n" {
            break;
        }
        if let Some((name, value)) = line.split_once(':')
            && name.eq_ignore_ascii_case("content-length")
        {
            length = value.trim().parse::<u64>().ok();
        }
    }
    let length = length.ok_or_else(|| std::io::Error::other("response without Content-Length"))?;
    std::io::copy(&mut r.by_ref().take(length), &mut std::io::sink())?;
    Ok(())
}

fn load(to: SocketAddr, rate: u32, conns: u32, length: Duration) -> serde_json::Value {
    let rate = rate.max(1);
    let conns = conns.clamp(1, rate);
    // Connection i sends at start + i/rate + k*conns/rate: together, evenly spaced.
    let step = Duration::from_secs_f64(f64::from(conns) / f64::from(rate));
    let started = Instant::now();
    let workers: Vec<_> = (0..conns)
        .map(|i| {
            thread::spawn(move || -> Result<Vec<u32>, String> {
                let s = TcpStream::connect_timeout(&to, Duration::from_secs(5))
                    .map_err(|e| e.to_string())?;
                let _ = s.set_nodelay(true);
                let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
                let mut w = s.try_clone().map_err(|e| e.to_string())?;
                let mut r = BufReader::new(s);
                let mut line = String::new();
                let mut latencies = Vec::new();
                let mut due = started + Duration::from_secs_f64(f64::from(i) / f64::from(rate));
                while due < started + length {
                    let now = Instant::now();
                    if due > now {
                        thread::sleep(due - now);
                    }
                    let sent = Instant::now();
                    get(&mut w, &mut r, &mut line).map_err(|e| e.to_string())?;
                    latencies.push(sent.elapsed().as_micros().min(u128::from(u32::MAX)) as u32);
                    due += step;
                }
                Ok(latencies)
            })
        })
        .collect();
    let mut all = Vec::new();
    let mut errors = Vec::new();
    for w in workers {
        match w.join() {
            Ok(Ok(l)) => all.extend(l),
            Ok(Err(e)) => errors.push(e),
            Err(_) => errors.push("worker panicked".to_owned()),
        }
    }
    let secs = started.elapsed().as_secs_f64();
    all.sort_unstable();
    let pct = |p: f64| {
        all.get(((all.len() as f64 * p) as usize).min(all.len().saturating_sub(1)))
            .copied()
    };
    json!({
        "requests": all.len(), "secs": secs, "rate": all.len() as f64 / secs,
        "p50_us": pct(0.5), "p99_us": pct(0.99), "errors": errors,
    })
}

fn ident(to: SocketAddr, timeout: Duration) -> serde_json::Value {
    let mut s = match TcpStream::connect_timeout(&to, timeout) {
        Ok(s) => s,
        Err(e) => return json!({"error": e.to_string(), "kind": format!("{:?}", e.kind())}),
    };
    let _ = s.set_read_timeout(Some(timeout));
    let mut line = String::new();
    let mut r = BufReader::new(s.try_clone().unwrap());
    match r.read_line(&mut line) {
        Ok(n) if n > 0 => {}
        Ok(_) => return json!({"error": "closed before the ident line", "kind": "UnexpectedEof"}),
        Err(e) => return json!({"error": e.to_string(), "kind": format!("{:?}", e.kind())}),
    }
    let mut v: serde_json::Value = serde_json::from_str(&line).unwrap_or(json!({"error": line}));
    let msg = b"marker-through-mesh";
    let mut back = vec![0u8; msg.len()];
    let echoed = s.write_all(msg).is_ok() && r.read_exact(&mut back).is_ok() && back == msg;
    v["echoed"] = json!(echoed);
    v["local"] = json!(s.local_addr().map(|a| a.to_string()).unwrap_or_default());
    v
}

fn hold(to: SocketAddr, length: Duration, interval: Duration) -> serde_json::Value {
    let s = match TcpStream::connect_timeout(&to, Duration::from_secs(5)) {
        Ok(s) => s,
        Err(e) => return json!({"error": e.to_string(), "rounds": 0}),
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
    let mut w = s.try_clone().unwrap();
    let mut r = BufReader::new(s);
    let started = Instant::now();
    let mut rounds = 0u64;
    while started.elapsed() < length {
        let msg = format!("round {rounds}\n");
        let mut back = String::new();
        if let Err(e) = w
            .write_all(msg.as_bytes())
            .and_then(|_| r.read_line(&mut back).map(|_| ()))
        {
            return json!({"error": e.to_string(), "rounds": rounds, "after_ms": started.elapsed().as_millis() as u64});
        }
        if back != msg {
            return json!({"error": format!("echo mismatch: {back:?}"), "rounds": rounds});
        }
        rounds += 1;
        thread::sleep(interval);
    }
    json!({"ok": true, "rounds": rounds})
}

fn bulk(to: SocketAddr, bytes: u64, timeout: Duration, strict_blocking: bool) -> serde_json::Value {
    let started = Instant::now();
    let s = match TcpStream::connect_timeout(&to, Duration::from_secs(5)) {
        Ok(s) => s,
        Err(e) => return json!({"error": e.to_string()}),
    };
    let _ = s.set_read_timeout(Some(timeout));
    let _ = s.set_write_timeout(Some(timeout));
    let mut w = s.try_clone().unwrap();
    let writer = thread::spawn(move || {
        let mut sum = Fnv::new();
        let mut buf = vec![0u8; 64 * 1024];
        let mut sent = 0u64;
        while sent < bytes {
            let n = (bytes - sent).min(buf.len() as u64) as usize;
            pattern(sent, &mut buf[..n]);
            sum.update(&buf[..n]);
            if w.write_all(&buf[..n]).is_err() {
                break;
            }
            sent += n as u64;
        }
        // Half-close: the server keeps sending its echo after this.
        let _ = w.shutdown(Shutdown::Write);
        (sent, sum.0)
    });
    let mut r = s;
    let mut sum = Fnv::new();
    let mut buf = vec![0u8; 64 * 1024];
    let mut received = 0u64;
    let mut error = None;
    let mut spurious_eagain = 0u64;
    loop {
        match r.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                sum.update(&buf[..n]);
                received += n as u64;
            }
            // A blocking read on a sockmap-spliced socket can return EAGAIN
            // when the peer's FIN wakes it (Linux tcp_bpf_recvmsg). Readers
            // built on poll/epoll, as most servers and runtimes are, wait
            // for readiness and read again; `--strict-blocking` reports it.
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    && !strict_blocking
                    && started.elapsed() < timeout =>
            {
                spurious_eagain += 1;
                let mut pfd = libc::pollfd {
                    fd: std::os::fd::AsRawFd::as_raw_fd(&r),
                    events: libc::POLLIN,
                    revents: 0,
                };
                unsafe { libc::poll(&mut pfd, 1, 1000) };
            }
            Err(e) => {
                error = Some(e.to_string());
                break;
            }
        }
    }
    let (sent, sent_sum) = writer.join().unwrap();
    json!({
        "sent": sent, "sent_fnv": format!("{sent_sum:016x}"),
        "received": received, "received_fnv": format!("{:016x}", sum.0),
        "error": error, "secs": started.elapsed().as_secs_f64(),
        "spurious_eagain": spurious_eagain,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The relay carries both directions and the half-close: what is sent
    /// before shutting down writing comes back whole through the echo.
    #[test]
    fn relay_carries_both_ways_and_the_half_close() {
        let echo_at = server(echo);
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let relay_at = l.local_addr().unwrap();
        thread::spawn(move || relay_on(vec![(l, echo_at)]));
        let mut c = TcpStream::connect(relay_at).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut sent = vec![0u8; 1 << 20];
        pattern(0, &mut sent);
        let mut writer = c.try_clone().unwrap();
        let w = thread::spawn(move || {
            writer.write_all(&sent).unwrap();
            writer.shutdown(Shutdown::Write).unwrap();
            sent
        });
        let mut got = Vec::new();
        c.read_to_end(&mut got).unwrap();
        let sent = w.join().unwrap();
        assert_eq!(got.len(), sent.len());
        assert!(got == sent, "the echo differs from what was sent");
    }

    /// A loopback server that answers with `respond` on each connection.
    fn server(respond: fn(TcpStream)) -> SocketAddr {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        thread::spawn(move || {
            for s in l.incoming().flatten() {
                thread::spawn(move || respond(s));
            }
        });
        addr
    }

    /// Open loop: the number of requests is fixed by rate × duration (2
    /// connections, one every 40 ms each, offset by 20 ms), not by how fast
    /// the server or the timers are.
    #[test]
    fn load_sends_exactly_the_requests_its_schedule_names() {
        let addr = server(|s| http(s, 16));
        let out = load(addr, 50, 2, Duration::from_secs(1));
        assert_eq!(out["errors"], json!([]));
        assert_eq!(out["requests"], json!(50));
        assert!(out["p50_us"].as_u64().is_some());
    }

    #[test]
    fn load_reports_a_response_without_a_length() {
        let addr = server(|mut s| {
            let mut buf = [0u8; 1024];
            let _ = s.read(&mut buf);
            let _ = s.write_all(b"HTTP/1.1 200 OK\r\n\r\n");
        });
        let out = load(addr, 10, 1, Duration::from_secs(1));
        assert_eq!(out["requests"], json!(0));
        assert_eq!(out["errors"], json!(["response without Content-Length"]));
    }
}
