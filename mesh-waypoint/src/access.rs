//! The access log: one JSON line per request (`mesh_telemetry::request::
//! access_log_fields`) or relayed TCP stream, stamped like the process's
//! other log lines (`timestamp`, `level`, `target: "access"`, `message`)
//! so that one log pipeline reads them all. `MESH_LOG`'s filter for
//! target `access` (e.g. `info,access=off`) turns it off.
use std::{
    io::Write,
    net::SocketAddr,
    sync::Mutex,
    time::{Duration, SystemTime},
};

use mesh_telemetry::request::{Party, ResponseFlags, rfc3339};
use serde::Serialize;

/// Where access lines go.
pub trait AccessLog: Send + Sync {
    /// Whether lines are wanted now; when not, none is even made.
    fn enabled(&self) -> bool;
    /// Writes one line (no newline in it).
    fn write(&self, line: &str);
}

/// Standard error, beside the process's other lines, as the log filter
/// allows. Lines are gathered in memory and written out together every
/// `FLUSH_EVERY` (or once `FLUSH_AT` bytes wait), as Envoy's file access
/// log does: a write per request would be a system call per request, a
/// cost no other part of serving it has at a low rate. A line reaches the
/// log at most `FLUSH_EVERY` after its request ended; a process killed
/// outright loses what waits, as Envoy's does.
pub struct Stderr {
    waiting: Mutex<Vec<u8>>,
    out: Sink,
}

/// Where batches of lines are written.
type Sink = Box<dyn Fn(&[u8]) + Send + Sync>;

impl Default for Stderr {
    fn default() -> Self {
        Self {
            waiting: Mutex::default(),
            // Lines of other threads do not interleave with these: each
            // write holds stderr's lock and whole lines. A closed stderr
            // loses the lines, as it would lose any other.
            out: Box::new(|lines| {
                let _ = std::io::stderr().lock().write_all(lines);
            }),
        }
    }
}

/// How long a line may wait in memory.
pub const FLUSH_EVERY: Duration = Duration::from_millis(250);
/// How much may wait before it is written at once.
const FLUSH_AT: usize = 64 * 1024;

impl Stderr {
    /// Writes out whatever waits.
    pub fn flush(&self) {
        let lines = std::mem::take(&mut *self.lock());
        if !lines.is_empty() {
            (self.out)(&lines);
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<u8>> {
        // A panic while appending leaves whole lines at worst.
        self.waiting.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl AccessLog for Stderr {
    fn enabled(&self) -> bool {
        tracing::enabled!(target: "access", tracing::Level::INFO)
    }

    fn write(&self, line: &str) {
        let full = {
            let mut waiting = self.lock();
            waiting.extend_from_slice(line.as_bytes());
            waiting.push(b'\n');
            waiting.len() >= FLUSH_AT
        };
        if full {
            self.flush();
        }
    }
}

/// Room for a whole line, so that serializing one does not grow it.
const LINE_CAPACITY: usize = 1024;

/// The stamp of a log line, then `fields` (a struct or map): one JSON
/// object, serialized once into one buffer. The stamp's keys come first in
/// the order they always had, so the lines read the same.
#[derive(Serialize)]
struct Stamped<'a, T> {
    level: &'static str,
    message: &'a str,
    target: &'static str,
    timestamp: String,
    #[serde(flatten)]
    fields: &'a T,
}

/// `fields` with the stamp of a log line in front: one JSON object, no
/// newline.
pub fn stamped<T: Serialize>(at: SystemTime, message: &str, fields: &T) -> String {
    let line = Stamped {
        level: "INFO",
        message,
        target: "access",
        timestamp: rfc3339(at),
        fields,
    };
    let mut out = Vec::with_capacity(LINE_CAPACITY);
    // Strings and numbers into memory: cannot fail, and serde_json writes
    // only UTF-8.
    if serde_json::to_writer(&mut out, &line).is_err() {
        return String::new();
    }
    String::from_utf8(out).unwrap_or_default()
}

/// A TCP stream relayed whole to one endpoint, as it ended. Its fields are
/// named as a request line's, so the same queries read both.
#[derive(Debug, Clone, Serialize)]
pub struct TcpLine<'a> {
    pub start_time: String,
    pub reporter: &'static str,
    /// The CONNECT's authority.
    pub authority: String,
    pub protocol: &'static str,
    pub response_flags: String,
    pub duration_ms: u64,
    pub bytes_received: u64,
    pub bytes_sent: u64,
    pub downstream: Option<String>,
    pub upstream: Option<String>,
    pub attempts: u32,
    pub source_principal: Option<&'a str>,
    pub source_workload: Option<String>,
    pub destination_service: Option<&'a str>,
    pub destination_workload: Option<String>,
    pub destination_principal: Option<&'a str>,
    pub connection_security: &'static str,
}

/// What a relayed TCP stream's line is made from.
pub struct TcpStreamEnd<'a> {
    pub started: SystemTime,
    pub duration_ms: u64,
    pub authority: SocketAddr,
    pub flags: ResponseFlags,
    pub sent: u64,
    pub received: u64,
    pub downstream: SocketAddr,
    pub upstream: Option<SocketAddr>,
    pub attempts: u32,
    pub source: &'a Party,
    pub destination: &'a Party,
    pub service_host: Option<&'a str>,
}

impl<'a> TcpLine<'a> {
    pub fn new(end: &TcpStreamEnd<'a>) -> Self {
        let workload = |p: &Party| {
            p.workload
                .as_ref()
                .map(|w| format!("{}/{}", w.namespace, w.workload))
        };
        Self {
            start_time: rfc3339(end.started),
            reporter: "waypoint",
            authority: end.authority.to_string(),
            protocol: "tcp",
            response_flags: end.flags.to_string(),
            duration_ms: end.duration_ms,
            bytes_received: end.received,
            bytes_sent: end.sent,
            downstream: Some(end.downstream.to_string()),
            upstream: end.upstream.map(|u| u.to_string()),
            attempts: end.attempts,
            source_principal: end.source.principal.as_deref(),
            source_workload: workload(end.source),
            destination_service: end.service_host,
            destination_workload: workload(end.destination),
            destination_principal: end.destination.principal.as_deref(),
            connection_security: "mutual_tls",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stamped_line_is_one_object_with_the_stamp_and_the_fields() {
        let at = SystemTime::UNIX_EPOCH + Duration::from_millis(1_700_000_000_123);
        let fields = serde_json::json!({"status": 200, "path": "/a"});
        let line = stamped(at, "request", &fields);
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["timestamp"], "2023-11-14T22:13:20.123Z");
        assert_eq!(v["level"], "INFO");
        assert_eq!(v["target"], "access");
        assert_eq!(v["message"], "request");
        assert_eq!(v["status"], 200);
        assert_eq!(v["path"], "/a");
        let empty: serde_json::Value =
            serde_json::from_str(&stamped(at, "request", &serde_json::json!({}))).unwrap();
        assert_eq!(empty["message"], "request");
    }

    fn capture() -> (Stderr, std::sync::Arc<Mutex<Vec<Vec<u8>>>>) {
        let written = std::sync::Arc::new(Mutex::new(Vec::new()));
        let sink = written.clone();
        let log = Stderr {
            waiting: Mutex::default(),
            out: Box::new(move |lines| sink.lock().unwrap().push(lines.to_vec())),
        };
        (log, written)
    }

    #[test]
    fn lines_wait_for_the_flush_and_go_out_whole_in_one_write() {
        let (log, written) = capture();
        log.write(r#"{"a":1}"#);
        log.write(r#"{"b":2}"#);
        assert!(
            written.lock().unwrap().is_empty(),
            "nothing before the flush"
        );
        log.flush();
        log.flush();
        let w = written.lock().unwrap();
        assert_eq!(w.len(), 1, "one write, and none for nothing waiting");
        assert_eq!(w[0], b"{\"a\":1}\n{\"b\":2}\n");
    }

    #[test]
    fn a_full_buffer_is_written_at_once() {
        let (log, written) = capture();
        let line = "x".repeat(1023);
        for _ in 0..FLUSH_AT / 1024 - 1 {
            log.write(&line);
        }
        assert!(written.lock().unwrap().is_empty());
        log.write(&line);
        let w = written.lock().unwrap();
        assert_eq!(w.len(), 1);
        assert_eq!(w[0].len(), FLUSH_AT);
    }
}
