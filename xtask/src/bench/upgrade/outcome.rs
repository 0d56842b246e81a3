//! What each connection of the load came to, read from the line its
//! `meshtb` client printed (pure), and the counts of one replacement.
use serde_json::Value;

/// How one connection ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Reached the server and everything sent came back intact.
    Ok,
    /// The connect was refused: nothing accepted it.
    Refused,
    /// Cut by a reset (ECONNRESET), or by a write into a connection the
    /// peer had already reset (EPIPE, ECONNABORTED).
    Reset,
    /// The bytes that came back are not the bytes sent: a checksum (bulk),
    /// an echoed line (hold) or the ident's marker differs.
    Mismatch,
    /// Anything else: a timeout, a close before the answer, a line
    /// missing, the wrong server.
    Failed,
}

/// A connection error as std prints it (`Connection refused (os error
/// 111)`) or names its kind (`ConnectionRefused`).
fn error_outcome(error: &str) -> Outcome {
    let e = error.to_ascii_lowercase();
    if e.contains("refused") {
        Outcome::Refused
    } else if e.contains("reset")
        || e.contains("broken pipe")
        || e.contains("brokenpipe")
        || e.contains("abort")
    {
        Outcome::Reset
    } else {
        Outcome::Failed
    }
}

/// A line of `meshtb ident`: it reached `server` and the marker it sent
/// came back.
pub fn ident(v: &Value, server: &str) -> Outcome {
    if let Some(error) = v["error"].as_str() {
        return error_outcome(v["kind"].as_str().unwrap_or(error));
    }
    match (v["server"].as_str() == Some(server), v["echoed"].as_bool()) {
        (true, Some(true)) => Outcome::Ok,
        (true, Some(false)) => Outcome::Mismatch,
        _ => Outcome::Failed,
    }
}

/// The last line of `meshtb hold`: every line it sent came back as sent,
/// to the end.
pub fn hold(v: &Value) -> Outcome {
    if v["ok"] == true {
        return Outcome::Ok;
    }
    let Some(error) = v["error"].as_str() else {
        return Outcome::Failed;
    };
    match error.strip_prefix("echo mismatch: ") {
        // Read to end of file: the connection was closed, not garbled.
        Some("\"\"") => Outcome::Failed,
        Some(_) => Outcome::Mismatch,
        None => error_outcome(error),
    }
}

/// The line of `meshtb bulk`: `bytes` sent, the same number back, and the
/// two checksums equal.
pub fn bulk(v: &Value, bytes: u64) -> Outcome {
    if let Some(error) = v["error"].as_str() {
        return error_outcome(error);
    }
    let whole = v["sent"].as_u64() == Some(bytes) && v["received"].as_u64() == Some(bytes);
    let same = v["sent_fnv"].is_string() && v["sent_fnv"] == v["received_fnv"];
    match (whole, same) {
        (true, true) => Outcome::Ok,
        // Everything arrived but not as sent; or less arrived with no
        // error, which is data lost just the same.
        _ if v["received"].is_u64() => Outcome::Mismatch,
        _ => Outcome::Failed,
    }
}

/// Connections of one kind by outcome.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Tally {
    pub ok: u32,
    pub refused: u32,
    pub reset: u32,
    pub mismatch: u32,
    pub failed: u32,
}

impl Tally {
    pub fn add(&mut self, o: Outcome) {
        let slot = match o {
            Outcome::Ok => &mut self.ok,
            Outcome::Refused => &mut self.refused,
            Outcome::Reset => &mut self.reset,
            Outcome::Mismatch => &mut self.mismatch,
            Outcome::Failed => &mut self.failed,
        };
        *slot += 1;
    }

    pub fn total(&self) -> u32 {
        self.ok + self.refused + self.reset + self.mismatch + self.failed
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn idents_are_told_apart_by_what_their_line_says() {
        let ok =
            json!({"server": "server1", "port": 8081, "peer": "10.244.0.10:5000", "echoed": true});
        assert_eq!(ident(&ok, "server1"), Outcome::Ok);
        assert_eq!(ident(&ok, "server0"), Outcome::Failed, "the wrong server");
        let garbled = json!({"server": "server1", "echoed": false});
        assert_eq!(ident(&garbled, "server1"), Outcome::Mismatch);
        for (kind, outcome) in [
            ("ConnectionRefused", Outcome::Refused),
            ("ConnectionReset", Outcome::Reset),
            ("BrokenPipe", Outcome::Reset),
            ("ConnectionAborted", Outcome::Reset),
            ("TimedOut", Outcome::Failed),
            ("UnexpectedEof", Outcome::Failed),
        ] {
            let v = json!({"error": "whatever std printed", "kind": kind});
            assert_eq!(ident(&v, "server1"), outcome, "{kind}");
        }
    }

    #[test]
    fn holds_count_a_garbled_echo_apart_from_a_closed_connection() {
        assert_eq!(hold(&json!({"ok": true, "rounds": 95})), Outcome::Ok);
        let reset = json!({"error": "Connection reset by peer (os error 104)", "rounds": 12});
        assert_eq!(hold(&reset), Outcome::Reset);
        let refused = json!({"error": "Connection refused (os error 111)", "rounds": 0});
        assert_eq!(hold(&refused), Outcome::Refused);
        let garbled = json!({"error": "echo mismatch: \"round 7x\\n\"", "rounds": 7});
        assert_eq!(hold(&garbled), Outcome::Mismatch);
        let closed = json!({"error": "echo mismatch: \"\"", "rounds": 7});
        assert_eq!(hold(&closed), Outcome::Failed);
        let slow = json!({"error": "Resource temporarily unavailable (os error 11)", "rounds": 7});
        assert_eq!(hold(&slow), Outcome::Failed);
        assert_eq!(hold(&json!({"rounds": 3})), Outcome::Failed);
    }

    #[test]
    fn bulks_pass_only_whole_and_with_equal_checksums() {
        let line = |sent: u64, received: u64, fnv_back: &str, error: Value| json!({"sent": sent, "sent_fnv": "00ff", "received": received, "received_fnv": fnv_back, "error": error, "secs": 4.2});
        assert_eq!(bulk(&line(64, 64, "00ff", Value::Null), 64), Outcome::Ok);
        assert_eq!(
            bulk(&line(64, 64, "0fff", Value::Null), 64),
            Outcome::Mismatch
        );
        assert_eq!(
            bulk(&line(64, 60, "00ff", Value::Null), 64),
            Outcome::Mismatch
        );
        let reset = line(
            64,
            10,
            "0",
            json!("Connection reset by peer (os error 104)"),
        );
        assert_eq!(bulk(&reset, 64), Outcome::Reset);
        let refused = json!({"error": "Connection refused (os error 111)"});
        assert_eq!(bulk(&refused, 64), Outcome::Refused);
        assert_eq!(bulk(&json!({}), 64), Outcome::Failed);
    }

    #[test]
    fn a_tally_counts_each_outcome_once() {
        let mut t = Tally::default();
        for o in [
            Outcome::Ok,
            Outcome::Ok,
            Outcome::Refused,
            Outcome::Reset,
            Outcome::Mismatch,
            Outcome::Failed,
        ] {
            t.add(o);
        }
        assert_eq!(
            t,
            Tally {
                ok: 2,
                refused: 1,
                reset: 1,
                mismatch: 1,
                failed: 1
            }
        );
        assert_eq!(t.total(), 6);
    }
}
