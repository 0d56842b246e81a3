//! The load tools, run in the client pod: iperf3 (bulk), sockperf
//! (ping-pong RTT), wrk (keep-alive HTTP), hey (a new connection per
//! request) and `meshtb load` (a fixed request rate), each with what it
//! reports read from its output into a typed result. Standard tools where
//! one exists, so the figures compare with other meshes'.
use std::{process::Command, time::Duration};

use anyhow::{Context, bail};
use mesh_testbed::{Cluster, Proc};

/// The servers' ports in the server pod.
pub const IPERF3_PORT: u16 = 5201;
pub const SOCKPERF_PORT: u16 = 11111;
pub const HTTP_PORT: u16 = 8080;

/// Agent CPU at a fixed 2000 req/s over 8 keep-alive connections: the
/// cost of the mesh at a steady, ordinary load. The load comes from
/// `meshtb load`, not `hey -q`: hey skips a worker's tick whenever its
/// timer fires late, which on a VM with steal delivered half the rate asked
/// (1000 of 2000 req/s). meshtb sends every request, late ones at once, so
/// the CPU figure is for the rate asked.
pub const FIXED_RATE: u32 = 2000;

/// Starts the servers the tools talk to in the server pod.
pub fn start_servers(c: &Cluster) -> anyhow::Result<Vec<Proc>> {
    Ok(vec![
        background(c, "server", "iperf3", &["-s", "-p", &s(IPERF3_PORT)])?,
        background(
            c,
            "server",
            "sockperf",
            &["sr", "--tcp", "-p", &s(SOCKPERF_PORT)],
        )?,
        c.serve("server", &s(HTTP_PORT), "http")?,
    ])
}

/// Bulk throughput of one iperf3 run.
#[derive(Debug, PartialEq)]
pub struct Iperf3 {
    pub gbit_per_sec: f64,
}

pub fn iperf3(c: &Cluster, server: &str, secs: u32, streams: u32) -> anyhow::Result<Iperf3> {
    let args = [
        s("-c"),
        s(server),
        s("-p"),
        s(IPERF3_PORT),
        s("-t"),
        s(secs),
        s("-P"),
        s(streams),
        s("-J"),
    ];
    let out = run_in(c, "client", "iperf3", &args, limit(secs))?;
    parse_iperf3(&out).with_context(|| format!("iperf3 -P {streams}"))
}

/// `iperf3 -J`: the receiver's total, all streams summed.
fn parse_iperf3(out: &str) -> anyhow::Result<Iperf3> {
    let v: serde_json::Value = serde_json::from_str(out)?;
    let bps = v["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .with_context(|| format!("iperf3 reported {}", v["error"]))?;
    Ok(Iperf3 {
        gbit_per_sec: bps / 1e9,
    })
}

/// Round-trip time percentiles of 64-byte ping-pong.
#[derive(Debug, PartialEq)]
pub struct Sockperf {
    pub p50_us: f64,
    pub p99_us: f64,
}

pub fn sockperf(c: &Cluster, server: &str, secs: u32) -> anyhow::Result<Sockperf> {
    let args = [
        s("pp"),
        s("--tcp"),
        s("-i"),
        s(server),
        s("-p"),
        s(SOCKPERF_PORT),
        s("-m"),
        s(64),
        s("-t"),
        s(secs),
        s("--full-rtt"),
    ];
    parse_sockperf(&run_in(c, "client", "sockperf", &args, limit(secs))?)
}

/// `sockperf: ---> percentile 50.000 =   54.961` lines, in microseconds
/// (`--full-rtt`: the whole round trip, not half of it).
fn parse_sockperf(out: &str) -> anyhow::Result<Sockperf> {
    let percentile = |pct: &str| {
        out.lines()
            .find(|l| l.contains(&format!("percentile {pct}")))
            .and_then(|l| l.split('=').nth(1))
            .and_then(|x| x.trim().parse::<f64>().ok())
            .with_context(|| format!("sockperf output: {out}"))
    };
    Ok(Sockperf {
        p50_us: percentile("50.000")?,
        p99_us: percentile("99.000")?,
    })
}

/// Keep-alive HTTP: served rate and latency percentiles.
#[derive(Debug, PartialEq)]
pub struct Wrk {
    pub req_per_sec: f64,
    pub p50_us: f64,
    pub p99_us: f64,
}

pub fn wrk(c: &Cluster, url: &str, secs: u32, conns: u32, threads: u32) -> anyhow::Result<Wrk> {
    wrk_in(c, "client", url, secs, conns, threads, None)
}

/// wrk from `pod`, with a Lua `script` shaping its requests if given.
pub fn wrk_in(
    c: &Cluster,
    pod: &str,
    url: &str,
    secs: u32,
    conns: u32,
    threads: u32,
    script: Option<&std::path::Path>,
) -> anyhow::Result<Wrk> {
    let mut args = vec![
        format!("-t{threads}"),
        format!("-c{conns}"),
        format!("-d{secs}s"),
        s("--latency"),
    ];
    if let Some(script) = script {
        args.push(format!("--script={}", script.display()));
    }
    args.push(s(url));
    let out = run_in(c, pod, "wrk", &args, limit(secs))?;
    let plural = if conns == 1 { "" } else { "s" };
    parse_wrk(&out).with_context(|| format!("wrk {conns} conn{plural}"))
}

fn parse_wrk(out: &str) -> anyhow::Result<Wrk> {
    if let Some(failed) = failed_requests(out) {
        bail!("{failed}");
    }
    let req_per_sec = out
        .lines()
        .find_map(|l| l.strip_prefix("Requests/sec:"))
        .and_then(|x| x.trim().parse::<f64>().ok())
        .with_context(|| format!("wrk output: {out}"))?;
    // `--latency` prints `     50%  274.00us` under "Latency Distribution".
    let latency = |pct: &str| {
        out.lines()
            .map(str::trim)
            .find_map(|l| l.strip_prefix(pct))
            .and_then(|x| parse_duration_us(x.trim()))
            .with_context(|| format!("wrk latency {pct}: {out}"))
    };
    Ok(Wrk {
        req_per_sec,
        p50_us: latency("50%")?,
        p99_us: latency("99%")?,
    })
}

/// wrk prints latencies like `123.00us`, `1.23ms`, `1.00s`.
fn parse_duration_us(s: &str) -> Option<f64> {
    let (num, mult) = if let Some(n) = s.strip_suffix("us") {
        (n, 1.0)
    } else if let Some(n) = s.strip_suffix("ms") {
        (n, 1e3)
    } else if let Some(n) = s.strip_suffix('s') {
        (n, 1e6)
    } else {
        return None;
    };
    num.parse::<f64>().ok().map(|v| v * mult)
}

/// A new connection per request: served rate.
#[derive(Debug, PartialEq)]
pub struct Hey {
    pub req_per_sec: f64,
}

pub fn hey(c: &Cluster, url: &str, secs: u32) -> anyhow::Result<Hey> {
    let args = [
        s("-z"),
        format!("{secs}s"),
        s("-c"),
        s(8),
        s("-disable-keepalive"),
        s(url),
    ];
    parse_hey(&run_in(c, "client", "hey", &args, limit(secs))?)
}

fn parse_hey(out: &str) -> anyhow::Result<Hey> {
    if let Some(failed) = failed_requests(out) {
        bail!("hey: {failed}");
    }
    let req_per_sec = out
        .lines()
        .find_map(|l| l.trim().strip_prefix("Requests/sec:"))
        .and_then(|x| x.trim().parse::<f64>().ok())
        .with_context(|| format!("hey output: {out}"))?;
    Ok(Hey { req_per_sec })
}

/// What hey or wrk says failed, if anything: a rate that counts failed
/// requests is not a rate of served ones. Both print these sections only
/// when something failed.
fn failed_requests(out: &str) -> Option<String> {
    if let Some((_, errors)) = out.split_once("Error distribution:") {
        return Some(errors.trim().to_owned());
    }
    out.lines()
        .map(str::trim)
        .find(|l| l.starts_with("Socket errors:") || l.starts_with("Non-2xx"))
        .map(str::to_owned)
}

/// The rate `meshtb load` achieved at [`FIXED_RATE`].
#[derive(Debug, PartialEq)]
pub struct Load {
    pub req_per_sec: f64,
}

pub fn fixed_rate(c: &Cluster, server: &str, secs: u32) -> anyhow::Result<Load> {
    let out = c.client(
        "client",
        &[
            "load",
            "--to",
            &format!("{server}:{HTTP_PORT}"),
            "--rate",
            &s(FIXED_RATE),
            "--conns",
            "8",
            "--seconds",
            &s(secs),
        ],
        limit(secs),
    )?;
    parse_load(&out)
}

/// meshtb's last JSON line: `{"rate": …, "errors": [...], …}`; any error
/// fails the stage, as with hey and wrk.
fn parse_load(out: &serde_json::Value) -> anyhow::Result<Load> {
    let errors = out["errors"].as_array().map(Vec::len).unwrap_or(0);
    if errors > 0 {
        bail!("meshtb load: {}", out["errors"]);
    }
    let req_per_sec = out["rate"]
        .as_f64()
        .with_context(|| format!("meshtb load output: {out}"))?;
    Ok(Load { req_per_sec })
}

/// Runs a tool inside a pod, bounded: a tool still running after
/// `limit` is killed and reported as failed.
pub(super) fn run_in(
    c: &Cluster,
    pod: &str,
    program: &str,
    args: &[String],
    limit: Duration,
) -> anyhow::Result<String> {
    let mut cmd: Command = c.pod_command(pod, program)?;
    cmd.args(args);
    let mut p = Proc::spawn(&format!("{program} in {pod}"), cmd, None)?;
    let status = p
        .wait_exit(limit)
        .with_context(|| format!("{program} {args:?} did not finish within {limit:?}"))?;
    let out = p.output().join("\n");
    if !status.success() {
        bail!("{program} {args:?} failed ({status}): {out}");
    }
    Ok(out)
}

/// Starts a server in a pod and gives it a moment to listen.
fn background(c: &Cluster, pod: &str, program: &str, args: &[&str]) -> anyhow::Result<Proc> {
    let mut cmd = c.pod_command(pod, program)?;
    cmd.args(args);
    let p = Proc::spawn(&format!("{program} in {pod}"), cmd, None)?;
    std::thread::sleep(Duration::from_millis(300));
    Ok(p)
}

/// How long a tool asked to run `secs` may take before it counts as hung.
pub(super) fn limit(secs: u32) -> Duration {
    Duration::from_secs(u64::from(secs) + 20)
}

fn s(x: impl ToString) -> String {
    x.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `iperf3 -c 127.0.0.1 -t 1 -J` (iperf 3.12), the parts read.
    const IPERF3: &str = r#"{
	"start":	{
		"connected":	[{
				"socket":	5,
				"local_host":	"127.0.0.1",
				"local_port":	37404,
				"remote_host":	"127.0.0.1",
				"remote_port":	15201
			}],
		"version":	"iperf 3.12"
	},
	"intervals":	[],
	"end":	{
		"sum_sent":	{
			"start":	0,
			"end":	1.000423,
			"seconds":	1.000423,
			"bytes":	4512808960,
			"bits_per_second":	36087206791.52718,
			"retransmits":	0,
			"sender":	true
		},
		"sum_received":	{
			"start":	0,
			"end":	1.000423,
			"seconds":	1.000423,
			"bytes":	4512808960,
			"bits_per_second":	36087206791.52718,
			"sender":	true
		}
	}
}"#;

    /// iperf3's JSON when it could not measure: no totals, an error.
    const IPERF3_FAILED: &str = r#"{
	"start":	{ "connected": [], "version": "iperf 3.12" },
	"intervals":	[],
	"end":	{},
	"error":	"unable to connect to server: Connection refused"
}"#;

    #[test]
    fn iperf3_reports_the_received_total() {
        let r = parse_iperf3(IPERF3).unwrap();
        assert!((r.gbit_per_sec - 36.087206791).abs() < 1e-9, "{r:?}");
        let err = format!("{:#}", parse_iperf3(IPERF3_FAILED).unwrap_err());
        assert!(err.contains("Connection refused"), "{err}");
        assert!(parse_iperf3("iperf3: error").is_err());
    }

    /// `sockperf pp --tcp -m 64 -t 1 --full-rtt` (3.7), colours included.
    const SOCKPERF: &str = "sockperf: \x1b[2;35m== version #3.7-no.git == \x1b[0m
sockperf[CLIENT] send on:sockperf: using recvfrom() to block on socket(s)

[ 0] IP = 127.0.0.1       PORT = 11611 # TCP
sockperf: Warmup stage (sending a few dummy messages)...
sockperf: Starting test...
sockperf: Test end (interrupted by timer)
sockperf: Test ended
sockperf: [Total Run] RunTime=1.000 sec; Warm up time=400 msec; SentMessages=22238; ReceivedMessages=22237
sockperf: ========= Printing statistics for Server No: 0
sockperf: [Valid Duration] RunTime=0.550 sec; SentMessages=10497; ReceivedMessages=10497
sockperf: \x1b[2;35m====> avg-rtt=52.416 (std-dev=33.017)\x1b[0m
sockperf: # dropped messages = 0; # duplicated messages = 0; # out-of-order messages = 0
sockperf: Summary: Round trip is 52.416 usec
sockperf: \x1b[2;35mTotal 10497 observations\x1b[0m; each percentile contains 104.97 observations
sockperf: ---> <MAX> observation = 2338.318
sockperf: ---> percentile 99.999 = 2338.318
sockperf: ---> percentile 99.990 = 1571.015
sockperf: ---> percentile 99.900 =  235.719
sockperf: ---> percentile 99.000 =   91.475
sockperf: ---> percentile 90.000 =   59.618
sockperf: ---> percentile 75.000 =   56.413
sockperf: ---> percentile 50.000 =   54.961
sockperf: ---> percentile 25.000 =   52.037
sockperf: ---> <MIN> observation =   11.987";

    #[test]
    fn sockperf_reports_the_median_and_p99_rtt() {
        assert_eq!(
            parse_sockperf(SOCKPERF).unwrap(),
            Sockperf {
                p50_us: 54.961,
                p99_us: 91.475
            }
        );
        let cut = &SOCKPERF[..SOCKPERF.find("percentile 99.000").unwrap()];
        assert!(parse_sockperf(cut).is_err());
    }

    /// `wrk -t1 -c1 -d1s --latency` (4.1).
    const WRK: &str = "Running 1s test @ http://127.0.0.1:18080/
  1 threads and 1 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency   330.92us  344.69us   6.96ms   97.98%
    Req/Sec     2.84k   124.71     2.94k    81.82%
  Latency Distribution
     50%  274.00us
     75%  344.00us
     90%  389.00us
     99%    1.40ms
  3106 requests in 1.10s, 1.64MB read
Requests/sec:   2824.23
Transfer/sec:      1.49MB";

    #[test]
    fn wrk_reports_its_rate_and_latency_percentiles() {
        assert_eq!(
            parse_wrk(WRK).unwrap(),
            Wrk {
                req_per_sec: 2824.23,
                p50_us: 274.0,
                p99_us: 1400.0
            }
        );
        let refused = WRK.replace(
            "  3106 requests",
            "  Socket errors: connect 0, read 3, write 0, timeout 0\n  3106 requests",
        );
        let err = parse_wrk(&refused).unwrap_err().to_string();
        assert_eq!(err, "Socket errors: connect 0, read 3, write 0, timeout 0");
    }

    /// `hey -z 1s -c 2 -disable-keepalive` (0.1.4), histogram trimmed.
    const HEY: &str = "
Summary:
  Total:\t1.0009 secs
  Slowest:\t0.0064 secs
  Fastest:\t0.0003 secs
  Average:\t0.0010 secs
  Requests/sec:\t2071.1329
  
  Total data:\t905901 bytes
  Size/request:\t437 bytes

Response time histogram:
  0.000 [1]\t|
  0.001 [951]\t|■■■■■■■■■■■■■■■■■■■■■■■■■■■■■■■■■■■■

Latency distribution:
  10% in 0.0006 secs
  50% in 0.0009 secs
  99% in 0.0018 secs

Details (average, fastest, slowest):
  DNS+dialup:\t0.0001 secs, 0.0003 secs, 0.0064 secs
  resp wait:\t0.0007 secs, 0.0002 secs, 0.0062 secs

Status code distribution:
  [200]\t2073 responses
";

    #[test]
    fn hey_reports_its_rate_unless_requests_failed() {
        assert_eq!(
            parse_hey(HEY).unwrap(),
            Hey {
                req_per_sec: 2071.1329
            }
        );
        let failed =
            format!("{HEY}\nError distribution:\n  [12]\tGet \"http://10.0.0.1:8080/\": EOF\n");
        let err = parse_hey(&failed).unwrap_err().to_string();
        assert_eq!(err, "hey: [12]\tGet \"http://10.0.0.1:8080/\": EOF");
    }

    #[test]
    fn meshtb_load_reports_its_rate_unless_requests_failed() {
        let ok = serde_json::json!({
            "requests": 10001, "secs": 5.0003, "rate": 2000.09,
            "p50_us": 310, "p99_us": 1204, "errors": [],
        });
        assert_eq!(
            parse_load(&ok).unwrap(),
            Load {
                req_per_sec: 2000.09
            }
        );
        let failed = serde_json::json!({
            "requests": 9000, "secs": 5.0, "rate": 1800.0,
            "p50_us": 310, "p99_us": 1204, "errors": ["response without Content-Length"],
        });
        let err = parse_load(&failed).unwrap_err().to_string();
        assert_eq!(err, "meshtb load: [\"response without Content-Length\"]");
    }

    #[test]
    fn failed_requests_are_found_in_hey_and_wrk_output() {
        assert_eq!(failed_requests(HEY), None);
        assert_eq!(failed_requests(WRK), None);
        let wrk_status = "  Non-2xx or 3xx responses: 7\nRequests/sec: 10.0\n";
        assert_eq!(
            failed_requests(wrk_status).as_deref(),
            Some("Non-2xx or 3xx responses: 7")
        );
    }

    #[test]
    fn the_fixed_rate_is_the_one_its_row_names() {
        let label = crate::bench::metric::Metric::CpuFixedRate.label();
        assert!(label.contains(&format!(" {FIXED_RATE} req/s")), "{label}");
    }

    #[test]
    fn wrk_durations_parse_to_microseconds() {
        assert_eq!(parse_duration_us("123.00us"), Some(123.0));
        assert_eq!(parse_duration_us("1.50ms"), Some(1500.0));
        assert_eq!(parse_duration_us("2.00s"), Some(2_000_000.0));
        assert_eq!(parse_duration_us("fast"), None);
    }
}
