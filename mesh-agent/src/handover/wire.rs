//! What two agents of one node say over the hand-over socket: small JSON
//! messages, one per SOCK_SEQPACKET datagram, each listening socket passed
//! with the message that names it (SCM_RIGHTS). Pure: encoding, decoding
//! with limits, and whether a received socket is what its label says.
use serde::{Deserialize, Serialize};

/// The protocol's version. A peer speaking another one is refused by name;
/// the successor then exits and the running agent keeps serving.
pub const VERSION: u16 = 1;

/// Largest message either side accepts: a pod's labels are a few hundred
/// bytes; anything near this is not an agent talking.
pub const MAX_MESSAGE: usize = 16 * 1024;

/// Most descriptors one message may carry: a pod has at most three ports
/// in two families.
pub const MAX_FDS: usize = 6;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Family {
    V4,
    V6,
}

/// What one passed descriptor is: a listening TCP socket on `port` of
/// `family`, in the pod's netns.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Label {
    pub port: u16,
    pub family: Family,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Message {
    /// Successor → running agent, first: who is asking.
    Hello { version: u16 },
    /// Running agent → successor: one pod's listeners, one descriptor per
    /// label, in the labels' order.
    Pod {
        uid: String,
        key: String,
        netns_cookie: u64,
        listeners: Vec<Label>,
    },
    /// Running agent → successor: the offer is complete (`pods` messages).
    Offered { pods: usize },
    /// Successor → running agent: ready and holding every pod it was
    /// given; stop accepting.
    Ready,
    /// Running agent → successor: no longer accepting on any of them.
    Stopped,
    /// Running agent → successor: it has handed over already (to an agent
    /// that now serves the socket's path); ask again.
    Moved,
    /// Either side: the other's message cannot be served, and why.
    Refused { reason: String },
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum WireError {
    #[error("hand-over message of {0} bytes, over the limit of {MAX_MESSAGE}")]
    TooLarge(usize),
    #[error("hand-over message does not parse: {0}")]
    Malformed(String),
    #[error("hand-over message `{kind}` carries {got} descriptors, expected {expected}")]
    Descriptors {
        kind: &'static str,
        got: usize,
        expected: usize,
    },
    #[error(
        "hand-over peer speaks version {0}, this agent {VERSION}; upgrade through a version that speaks both, or restart"
    )]
    Version(u16),
}

impl Message {
    pub fn kind(&self) -> &'static str {
        match self {
            Message::Hello { .. } => "hello",
            Message::Pod { .. } => "pod",
            Message::Offered { .. } => "offered",
            Message::Ready => "ready",
            Message::Stopped => "stopped",
            Message::Moved => "moved",
            Message::Refused { .. } => "refused",
        }
    }

    /// How many descriptors must come with this message.
    pub fn descriptors(&self) -> usize {
        match self {
            Message::Pod { listeners, .. } => listeners.len(),
            _ => 0,
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        // Plain data: strings, numbers and lists always serialize.
        serde_json::to_vec(self).expect("a hand-over message serializes")
    }

    /// A received datagram and the number of descriptors that came with it.
    pub fn decode(bytes: &[u8], fds: usize) -> Result<Self, WireError> {
        if bytes.len() > MAX_MESSAGE {
            return Err(WireError::TooLarge(bytes.len()));
        }
        let message: Message =
            serde_json::from_slice(bytes).map_err(|e| WireError::Malformed(e.to_string()))?;
        let expected = message.descriptors();
        if fds != expected || expected > MAX_FDS {
            return Err(WireError::Descriptors {
                kind: message.kind(),
                got: fds,
                expected,
            });
        }
        Ok(message)
    }
}

/// The version check of a `Hello`.
pub fn accept_hello(version: u16) -> Result<(), WireError> {
    if version == VERSION {
        Ok(())
    } else {
        Err(WireError::Version(version))
    }
}

/// What the receiving agent observed of a passed descriptor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Observed {
    pub listening: bool,
    pub tcp: bool,
    pub netns_cookie: u64,
    pub port: u16,
    pub family: Family,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Mismatch {
    #[error("not a listening TCP socket")]
    NotListening,
    #[error("in netns {found}, labelled {labelled}")]
    Netns { found: u64, labelled: u64 },
    #[error("bound to port {found}/{found_family:?}, labelled {labelled}/{labelled_family:?}")]
    Address {
        found: u16,
        found_family: Family,
        labelled: u16,
        labelled_family: Family,
    },
}

/// Whether a passed descriptor is what its label and its pod's message
/// say: a socket adopted under the wrong label would serve one pod's
/// traffic as another's.
pub fn check(label: Label, netns_cookie: u64, seen: Observed) -> Result<(), Mismatch> {
    if !seen.listening || !seen.tcp {
        return Err(Mismatch::NotListening);
    }
    if seen.netns_cookie != netns_cookie {
        return Err(Mismatch::Netns {
            found: seen.netns_cookie,
            labelled: netns_cookie,
        });
    }
    if seen.port != label.port || seen.family != label.family {
        return Err(Mismatch::Address {
            found: seen.port,
            found_family: seen.family,
            labelled: label.port,
            labelled_family: label.family,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod() -> Message {
        Message::Pod {
            uid: "u1".into(),
            key: "shop/web".into(),
            netns_cookie: 42,
            listeners: vec![
                Label {
                    port: 15001,
                    family: Family::V4,
                },
                Label {
                    port: 15008,
                    family: Family::V6,
                },
            ],
        }
    }

    #[test]
    fn a_message_reads_back_as_written_with_its_descriptors() {
        let m = pod();
        assert_eq!(Message::decode(&m.encode(), 2), Ok(m));
        assert_eq!(
            Message::decode(&Message::Ready.encode(), 0),
            Ok(Message::Ready)
        );
    }

    #[test]
    fn descriptors_other_than_the_labels_are_refused() {
        let m = pod();
        assert_eq!(
            Message::decode(&m.encode(), 1),
            Err(WireError::Descriptors {
                kind: "pod",
                got: 1,
                expected: 2
            })
        );
        assert!(matches!(
            Message::decode(&Message::Ready.encode(), 1),
            Err(WireError::Descriptors { kind: "ready", .. })
        ));
    }

    #[test]
    fn oversized_unknown_and_malformed_messages_are_refused() {
        assert_eq!(
            Message::decode(&vec![b' '; MAX_MESSAGE + 1], 0),
            Err(WireError::TooLarge(MAX_MESSAGE + 1))
        );
        assert!(matches!(
            Message::decode(br#"{"kind":"takeover"}"#, 0),
            Err(WireError::Malformed(_))
        ));
        assert!(matches!(
            Message::decode(br#"{"kind":"offered","pods":0,"extra":1}"#, 0),
            Err(WireError::Malformed(_))
        ));
        let too_many = Message::Pod {
            uid: "u".into(),
            key: "k".into(),
            netns_cookie: 1,
            listeners: vec![
                Label {
                    port: 1,
                    family: Family::V4
                };
                MAX_FDS + 1
            ],
        };
        assert!(matches!(
            Message::decode(&too_many.encode(), MAX_FDS + 1),
            Err(WireError::Descriptors { .. })
        ));
    }

    #[test]
    fn only_this_version_is_spoken() {
        assert_eq!(accept_hello(VERSION), Ok(()));
        assert_eq!(
            accept_hello(VERSION + 1),
            Err(WireError::Version(VERSION + 1))
        );
    }

    #[test]
    fn a_socket_is_adopted_only_as_what_its_label_says() {
        let label = Label {
            port: 15006,
            family: Family::V4,
        };
        let good = Observed {
            listening: true,
            tcp: true,
            netns_cookie: 7,
            port: 15006,
            family: Family::V4,
        };
        assert_eq!(check(label, 7, good), Ok(()));
        assert_eq!(
            check(
                label,
                7,
                Observed {
                    listening: false,
                    ..good
                }
            ),
            Err(Mismatch::NotListening)
        );
        assert_eq!(
            check(label, 8, good),
            Err(Mismatch::Netns {
                found: 7,
                labelled: 8
            })
        );
        assert!(matches!(
            check(
                label,
                7,
                Observed {
                    port: 15001,
                    ..good
                }
            ),
            Err(Mismatch::Address { .. })
        ));
        assert!(matches!(
            check(
                label,
                7,
                Observed {
                    family: Family::V6,
                    ..good
                }
            ),
            Err(Mismatch::Address { .. })
        ));
    }
}
