//! The connect programs leave the agent's own connects alone, and nothing an
//! enrolled pod can put on its socket earns the same treatment. The agent
//! once marked its sockets with SO_MARK 0x539 and the programs skipped that
//! mark; any pod holding CAP_NET_RAW (granted by default) can set a mark,
//! so here an app sets exactly that one and must still be carried by the
//! mesh, encrypted between nodes.
use mesh_testbed::{Cluster, ClusterSpec};
use serde_json::Value;

const MARKER: &[u8] = b"marker-through-mesh";
/// The mark the agent used to put on its own sockets.
const OLD_AGENT_MARK: u32 = 0x539;

/// An app that sets SO_MARK (when argv[1] is not 0) before connect(), then
/// speaks `meshtb serve --mode ident`: reads the server's line, sends the
/// marker, reads the echo. Prints one JSON line, an error included.
const MARKED_CLIENT: &str = r#"
import json, socket, sys
mark, host, port = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])
marker = b"marker-through-mesh"
out = {}
try:
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.settimeout(5)
    if mark:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_MARK, mark)
    out["mark"] = s.getsockopt(socket.SOL_SOCKET, socket.SO_MARK)
    s.connect((host, port))
    out["app_local"] = "%s:%d" % s.getsockname()
    out["app_peer"] = "%s:%d" % s.getpeername()
    f = s.makefile("rb")
    out.update(json.loads(f.readline()))
    s.sendall(marker)
    out["echoed"] = f.read(len(marker)) == marker
except Exception as e:
    out["error"] = repr(e)
print(json.dumps(out))
"#;

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// Runs the app in pod `from` against `to`:`port` with `mark` on its socket.
fn marked_ident(c: &Cluster, from: &str, to: &str, port: u16, mark: u32) -> Value {
    let out = c
        .pod_command(from, "python3")
        .unwrap()
        .args(["-c", MARKED_CLIENT, &mark.to_string()])
        .arg(c.pod(to).ip.to_string())
        .arg(port.to_string())
        .output()
        .unwrap();
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "app printed no JSON ({e}): {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

#[test]
fn a_pod_setting_the_old_agent_mark_is_still_carried_by_the_mesh() {
    mesh_testbed::require_root!();
    let mut c = Cluster::start(ClusterSpec::new(&[&["a"], &["c"]])).unwrap();
    let _srv = c.serve("c", "8080", "ident").unwrap();
    let dst = format!("{}:8080", c.pod("c").ip);

    // The marked app first, then the same app without a mark as the control.
    for mark in [OLD_AGENT_MARK, 0] {
        let (v, wire) = c
            .capture_wire(0, || marked_ident(&c, "a", "c", 8080, mark))
            .unwrap();
        assert_eq!(v["mark"], mark, "the app's socket carries the mark: {v}");
        assert_eq!(v["server"], "c", "mark {mark:#x}: {v}");
        assert_eq!(v["echoed"], true, "mark {mark:#x}: {v}");
        // The marked app's connection opened the tunnel (a TLS handshake's
        // worth of bytes); the control's rides the pooled one.
        let least = if mark == OLD_AGENT_MARK { 2000 } else { 500 };
        assert!(
            wire.len() > least,
            "mark {mark:#x}: the capture saw the tunnel: {} bytes",
            wire.len()
        );
        assert!(
            !contains(&wire, MARKER),
            "mark {mark:#x}: payload in plaintext on the wire"
        );
        assert!(
            !contains(&wire, b"\"server\":\"c\""),
            "mark {mark:#x}: reply in plaintext on the wire"
        );

        // connect4 sent the socket to a's agent: the app's peer is the
        // outbound listener in its own netns, not c.
        assert_eq!(v["app_peer"], "127.0.0.1:15001", "mark {mark:#x}: {v}");
        // a's agent carried exactly this connection (the log names the
        // app's port with a's address), over mutual TLS.
        let port = v["app_local"].as_str().unwrap().rsplit(':').next().unwrap();
        let src = format!("{}:{port}", c.pod("a").ip);
        let out = c
            .wait_agent_log(0, "outbound log line of the app's connection", |l| {
                l["message"] == "connection closed"
                    && l["direction"] == "outbound"
                    && l["dst"] == dst.as_str()
                    && l["src"] == src.as_str()
            })
            .unwrap();
        assert_eq!(out["security"], "mutual_tls", "mark {mark:#x}: {out}");
        assert_eq!(out["result"], "ok", "mark {mark:#x}: {out}");
        assert_eq!(out["bytes_sent"], MARKER.len(), "mark {mark:#x}: {out}");
    }

    // The agent's own connects (to c's tunnel port, from a's netns) were
    // still left alone: it knows them by its cgroup.
    let counters = c.counters(0).unwrap();
    assert!(counters["connect_redirected"] >= 2, "{counters:?}");
    assert!(counters["connect_skipped_agent"] >= 1, "{counters:?}");
}
