//! The L7 loads, run in a client pod: wrk with a script that POSTs 1 KiB
//! (HTTP/1.1 keep-alive), and h2load for h2c over one connection and for
//! HTTP/1.1 at a fixed rate; each reports its rate and latency percentiles.
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use mesh_testbed::Cluster;

use crate::bench::tools::{self, Wrk};

/// Request and response bodies: 1 KiB each way.
pub const BODY_BYTES: usize = 1024;
/// The path that makes `meshtb serve --mode web` answer [`BODY_BYTES`].
pub fn path() -> String {
    format!("/bytes/{BODY_BYTES}")
}

/// The files the tools read, written once into the bed's directory (pods
/// share the host's filesystem): the request body, and wrk's script that
/// sends it.
pub struct Inputs {
    body: PathBuf,
    script: PathBuf,
}

impl Inputs {
    pub fn write(dir: &Path) -> anyhow::Result<Self> {
        let body = dir.join("body-1k");
        std::fs::write(&body, vec![b'x'; BODY_BYTES])?;
        let script = dir.join("post-1k.lua");
        std::fs::write(&script, wrk_script())?;
        Ok(Self { body, script })
    }
}

fn wrk_script() -> String {
    format!(
        "wrk.method = \"POST\"\nwrk.body = string.rep(\"x\", {BODY_BYTES})\nwrk.headers[\"Content-Type\"] = \"application/octet-stream\"\n"
    )
}

/// HTTP/1.1 POSTs over `conns` keep-alive connections, as fast as they go.
pub fn wrk_post(
    c: &Cluster,
    pod: &str,
    url: &str,
    inputs: &Inputs,
    secs: u32,
    conns: u32,
) -> anyhow::Result<Wrk> {
    let threads = conns.min(2);
    tools::wrk_in(c, pod, url, secs, conns, threads, Some(&inputs.script))
}

/// What h2load measured: the served rate and each request's latency.
#[derive(Debug, PartialEq)]
pub struct H2load {
    pub req_per_sec: f64,
    pub p50_us: f64,
    pub p99_us: f64,
}

/// h2c (prior knowledge) POSTs, 64 streams at once on one connection.
pub fn h2c_streams(
    c: &Cluster,
    pod: &str,
    url: &str,
    inputs: &Inputs,
    secs: u32,
) -> anyhow::Result<H2load> {
    h2load(c, pod, url, inputs, secs, &["-c1", "-m64"])
}

/// HTTP/1.1 POSTs at `rate` req/s in all over 8 keep-alive connections.
/// h2load keeps the pace open-loop: each connection is owed `rate / 8`
/// requests a second and sends what it owes as soon as its previous
/// response is in, so a late timer does not lower the rate (the achieved
/// rate is reported beside it).
pub fn fixed_rate(
    c: &Cluster,
    pod: &str,
    url: &str,
    inputs: &Inputs,
    secs: u32,
    rate: u32,
) -> anyhow::Result<H2load> {
    const CONNS: u32 = 8;
    let per_conn = format!("--rps={}", rate / CONNS);
    let conns = format!("-c{CONNS}");
    h2load(
        c,
        pod,
        url,
        inputs,
        secs,
        &["--h1", &conns, "-m1", &per_conn],
    )
}

fn h2load(
    c: &Cluster,
    pod: &str,
    url: &str,
    inputs: &Inputs,
    secs: u32,
    shape: &[&str],
) -> anyhow::Result<H2load> {
    let log = c.log_dir().join(format!("h2load-{pod}.tsv"));
    let _ = std::fs::remove_file(&log);
    let mut args: Vec<String> = shape.iter().map(|s| s.to_string()).collect();
    args.extend([
        format!("-D{secs}"),
        format!("--data={}", inputs.body.display()),
        format!("--log-file={}", log.display()),
        url.to_owned(),
    ]);
    let out = tools::run_in(c, pod, "h2load", &args, tools::limit(secs));
    let per_request = std::fs::read_to_string(&log);
    // The log holds a line per request: tens of thousands a run.
    let _ = std::fs::remove_file(&log);
    let req_per_sec = parse_summary(&out?).with_context(|| format!("h2load {shape:?}"))?;
    let (p50_us, p99_us) =
        percentiles(&per_request.context("h2load's log file")?).context("h2load's log file")?;
    Ok(H2load {
        req_per_sec,
        p50_us,
        p99_us,
    })
}

/// The rate of `finished in 5.00s, 14559.00 req/s, …`, unless a request
/// failed, errored, timed out or was answered other than 2xx: a rate that
/// counts those is not a rate of served requests.
fn parse_summary(out: &str) -> anyhow::Result<f64> {
    let field = |line: &str, name: &str| -> Option<u64> {
        line.split(',')
            .find_map(|part| part.trim().strip_suffix(name))
            .and_then(|n| n.trim().rsplit(' ').next()?.parse().ok())
    };
    let requests = out
        .lines()
        .find_map(|l| l.strip_prefix("requests:"))
        .with_context(|| format!("no requests line in h2load output: {out}"))?;
    for bad in ["failed", "errored", "timeout"] {
        let n =
            field(requests, bad).with_context(|| format!("h2load requests line: {requests}"))?;
        if n > 0 {
            bail!("h2load: {n} requests {bad} ({})", requests.trim());
        }
    }
    let codes = out
        .lines()
        .find_map(|l| l.strip_prefix("status codes:"))
        .with_context(|| format!("no status codes line in h2load output: {out}"))?;
    for bad in ["3xx", "4xx", "5xx"] {
        let n = field(codes, bad).with_context(|| format!("h2load status codes: {codes}"))?;
        if n > 0 {
            bail!("h2load: {n} responses {bad} ({})", codes.trim());
        }
    }
    out.lines()
        .find_map(|l| l.strip_prefix("finished in"))
        .and_then(|l| l.split(',').nth(1))
        .and_then(|x| x.trim().strip_suffix("req/s"))
        .and_then(|x| x.trim().parse().ok())
        .with_context(|| format!("no rate in h2load output: {out}"))
}

/// p50 and p99 (nearest rank) of the third column of h2load's log file:
/// microseconds from a request's start to the end of its response.
fn percentiles(log: &str) -> anyhow::Result<(f64, f64)> {
    let mut us: Vec<u64> = log
        .lines()
        .map(|l| {
            l.split('\t')
                .nth(2)
                .and_then(|d| d.trim().parse().ok())
                .with_context(|| format!("h2load log line {l:?}"))
        })
        .collect::<anyhow::Result<_>>()?;
    if us.is_empty() {
        bail!("no request completed");
    }
    us.sort_unstable();
    let rank = |p: f64| us[((p * us.len() as f64).ceil() as usize).clamp(1, us.len()) - 1] as f64;
    Ok((rank(0.50), rank(0.99)))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `h2load -c1 -m64 -D 2 -d body` (nghttp2 1.52.0), against meshtb web.
    const H2LOAD: &str = "starting benchmark...
spawning thread #0: 1 total client(s). Timing-based test with 0s of warm-up time and 2s of main duration for measurements.
Application protocol: h2c
Stopped all clients for thread #0

finished in 2.00s, 14559.00 req/s, 2.04MB/s
requests: 29118 total, 29182 started, 29118 done, 29118 succeeded, 0 failed, 0 errored, 0 timeout
status codes: 29118 2xx, 0 3xx, 0 4xx, 0 5xx
traffic: 4.08MB (4281612) total, 256.01KB (262155) headers (space savings 91.00%), 3.33MB (3494160) data
                     min         max         mean         sd        +/- sd
time for request:      320us     21.60ms      4.34ms      2.01ms    74.44%
";

    #[test]
    fn h2load_reports_its_rate_unless_a_request_went_wrong() {
        assert_eq!(parse_summary(H2LOAD).unwrap(), 14559.0);
        let failed = H2LOAD.replace("0 failed, 0 errored", "0 failed, 3 errored");
        let err = parse_summary(&failed).unwrap_err().to_string();
        assert!(err.starts_with("h2load: 3 requests errored"), "{err}");
        let timeouts = H2LOAD.replace("0 errored, 0 timeout", "0 errored, 7 timeout");
        assert!(parse_summary(&timeouts).is_err());
        let refused = H2LOAD.replace("0 4xx, 0 5xx", "0 4xx, 12 5xx");
        let err = parse_summary(&refused).unwrap_err().to_string();
        assert!(err.starts_with("h2load: 12 responses 5xx"), "{err}");
        assert!(parse_summary("starting benchmark...\n").is_err());
    }

    #[test]
    fn latency_percentiles_come_from_the_log_files_third_column() {
        let log: String = (1..=200)
            .map(|d| format!("1795990570779809\t200\t{d}\n"))
            .collect();
        assert_eq!(percentiles(&log).unwrap(), (100.0, 198.0));
        assert_eq!(percentiles("1\t200\t42\n").unwrap(), (42.0, 42.0));
        assert!(percentiles("").is_err());
        assert!(percentiles("1\t200\n").is_err());
    }

    #[test]
    fn wrk_posts_a_body_of_the_size_the_server_answers() {
        let script = wrk_script();
        assert!(script.contains("wrk.method = \"POST\""));
        assert!(script.contains(&format!("string.rep(\"x\", {BODY_BYTES})")));
        assert_eq!(path(), "/bytes/1024");
    }
}
