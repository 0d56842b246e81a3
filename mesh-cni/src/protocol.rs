//! What the plugin and the node agent say to each other over the agent's
//! Unix socket: one request per connection, one JSON document each way,
//! each ended by a newline. The plugin writes its request and shuts down
//! its writing half; the agent answers and closes.
//!
//! ```text
//! → {"version":1,"command":"add","pod":{"namespace":"shop","name":"web-0","uid":"…",
//!     "containerId":"…","netns":"/var/run/netns/cni-…","ips":["10.244.1.7"]}}
//! ← {"ok":"enrolled"}            or {"error":"<cause and fix>"}
//! ```
use std::{net::IpAddr, path::PathBuf};

use serde::{Deserialize, Serialize};

/// The protocol's version; a request of another version is refused, so an
/// agent and a plugin of different releases say so instead of guessing.
pub const VERSION: u32 = 1;

/// The most a request may hold. A real one is a few hundred bytes (a pod
/// has at most a few addresses); the agent refuses anything larger.
pub const MAX_REQUEST_BYTES: usize = 16 * 1024;

/// The most an answer may hold, as the plugin reads it.
pub const MAX_RESPONSE_BYTES: usize = 16 * 1024;

/// Where the node agent listens unless configured otherwise.
pub const DEFAULT_SOCKET: &str = "/var/run/mesh/cni.sock";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Request {
    pub version: u32,
    pub command: Command,
    pub pod: CniPod,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Command {
    /// A sandbox was created: enroll the pod in this netns now.
    Add,
    /// A sandbox is going away: forget what ADD announced.
    Del,
    /// Is the pod still as ADD left it?
    Check,
}

/// A pod's sandbox as the runtime describes it to CNI.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CniPod {
    /// K8S_POD_NAMESPACE.
    pub namespace: String,
    /// K8S_POD_NAME.
    pub name: String,
    /// K8S_POD_UID, when the runtime passes it (containerd and CRI-O do):
    /// tells a pod from an earlier one of the same name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uid: Option<String>,
    /// CNI_CONTAINERID: the sandbox. A DEL forgets only what the ADD of
    /// the same sandbox announced.
    pub container_id: String,
    /// CNI_NETNS; a DEL may come without it (the netns is already gone).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub netns: Option<PathBuf>,
    /// The addresses the previous plugins gave the pod (prevResult.ips).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ips: Vec<IpAddr>,
}

impl CniPod {
    /// `<namespace>/<name>`, as the agent names pods.
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub enum Response {
    Ok(Outcome),
    /// What went wrong and what to do about it, for the runtime's event.
    Error(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Outcome {
    /// The pod is enrolled in this netns: its listeners and datapath
    /// entries are in place.
    Enrolled,
    /// The pod is not in the mesh (its label or its namespace's says so);
    /// it starts as it would without the mesh.
    NotInMesh,
    /// DEL: the agent forgot the sandbox's netns.
    Forgotten,
    /// DEL: the agent knew nothing of that sandbox.
    Unknown,
}

impl Request {
    /// Reads a request, naming the field of whatever is wrong with it.
    pub fn parse(bytes: &[u8]) -> Result<Self, String> {
        let text = std::str::from_utf8(bytes).map_err(|e| format!("request: not UTF-8: {e}"))?;
        // The version first, so that a request of another version is told
        // so, not that some field of it is unknown.
        let value: serde_json::Value =
            serde_json::from_str(text).map_err(|e| format!("request: not JSON: {e}"))?;
        match value.get("version").map(serde_json::Value::as_u64) {
            Some(Some(v)) if v == u64::from(VERSION) => {}
            Some(Some(v)) => {
                return Err(format!(
                    "request.version: {v} is not supported (this agent speaks {VERSION}); install the mesh-cni binary of the agent's release"
                ));
            }
            Some(None) => return Err("request.version: not a number".into()),
            None => return Err("request.version: missing".into()),
        }
        let request: Self = serde_json::from_value(value).map_err(|e| format!("request: {e}"))?;
        let pod = &request.pod;
        for (field, value) in [
            ("pod.namespace", &pod.namespace),
            ("pod.name", &pod.name),
            ("pod.containerId", &pod.container_id),
        ] {
            if value.is_empty() {
                return Err(format!("request.{field}: empty"));
            }
        }
        if request.command != Command::Del && pod.netns.is_none() {
            return Err("request.pod.netns: missing (only a DEL may leave it out)".into());
        }
        Ok(request)
    }

    /// The request as sent: one line.
    pub fn to_line(&self) -> Vec<u8> {
        let mut line = serde_json::to_vec(self).expect("a request serializes");
        line.push(b'\n');
        line
    }
}

impl Response {
    /// The answer as sent: one line.
    pub fn to_line(&self) -> Vec<u8> {
        let mut line = serde_json::to_vec(self).expect("a response serializes");
        line.push(b'\n');
        line
    }

    pub fn parse(bytes: &[u8]) -> Result<Self, String> {
        serde_json::from_slice(bytes).map_err(|e| format!("the agent's answer: {e}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn add() -> Request {
        Request {
            version: VERSION,
            command: Command::Add,
            pod: CniPod {
                namespace: "shop".into(),
                name: "web-0".into(),
                uid: Some("u-1".into()),
                container_id: "c1".into(),
                netns: Some("/var/run/netns/cni-1".into()),
                ips: vec!["10.244.1.7".parse().unwrap()],
            },
        }
    }

    #[test]
    fn a_request_round_trips_as_one_line() {
        let line = add().to_line();
        assert_eq!(line.iter().filter(|b| **b == b'\n').count(), 1);
        let text = String::from_utf8(line.clone()).unwrap();
        assert!(
            text.contains(r#""command":"add""#) && text.contains(r#""containerId":"c1""#),
            "{text}"
        );
        assert_eq!(Request::parse(&line).unwrap(), add());
    }

    #[test]
    fn answers_are_tagged() {
        let ok = Response::Ok(Outcome::NotInMesh).to_line();
        assert_eq!(ok, b"{\"ok\":\"notInMesh\"}\n");
        let err = Response::Error("no".into());
        assert_eq!(Response::parse(&err.to_line()).unwrap(), err);
    }

    #[test]
    fn bad_requests_name_the_field() {
        let cases: [(&str, &str); 7] = [
            ("{", "not JSON"),
            (r#"{"command":"add"}"#, "request.version: missing"),
            (r#"{"version":2}"#, "request.version: 2 is not supported"),
            (r#"{"version":1,"command":"add"}"#, "missing field `pod`"),
            (
                r#"{"version":1,"command":"eat","pod":{}}"#,
                "unknown variant `eat`",
            ),
            (
                r#"{"version":1,"command":"add","pod":{"namespace":"a","name":"b","containerId":"c","netns":"/x","ips":["10.0.0.300"]}}"#,
                "invalid IP address",
            ),
            (
                r#"{"version":1,"command":"add","pod":{"namespace":"a","name":"b","containerId":"c"}}"#,
                "request.pod.netns: missing",
            ),
        ];
        for (text, want) in cases {
            let err = Request::parse(text.as_bytes()).unwrap_err();
            assert!(err.contains(want), "{text}: {err}");
        }
        let err = Request::parse(
            br#"{"version":1,"command":"del","pod":{"namespace":"","name":"b","containerId":"c"}}"#,
        )
        .unwrap_err();
        assert_eq!(err, "request.pod.namespace: empty");
        // A DEL may come without a netns.
        let del = Request::parse(
            br#"{"version":1,"command":"del","pod":{"namespace":"a","name":"b","containerId":"c"}}"#,
        )
        .unwrap();
        assert_eq!(del.pod.netns, None);
    }
}
