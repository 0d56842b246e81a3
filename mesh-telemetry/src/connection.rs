//! What is told of one proxied connection, as values: its direction, how it
//! crossed between workloads, and how it ended. The proxy fills them in;
//! the mapping to Istio's labels and Envoy's response flags lives here, so
//! that every proxy of the mesh (the node agent, the waypoint) reports the
//! same way.

/// Which side of the connection the reporting proxy serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// The pod opened it; downstream is the pod's app.
    Outbound,
    /// Someone connected to the pod; upstream is the pod's app.
    Inbound,
}

impl Direction {
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Outbound => "outbound",
            Direction::Inbound => "inbound",
        }
    }
}

/// How the connection crossed between workloads (Istio's
/// connection_security_policy, plus the same-node path).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Security {
    MutualTls,
    /// Both ends on this node: handed over in-process, never on a wire.
    Local,
    None,
}

impl Security {
    /// The access log's name for it.
    pub fn as_str(self) -> &'static str {
        match self {
            Security::MutualTls => "mutual_tls",
            Security::Local => "local",
            Security::None => "none",
        }
    }

    /// Istio's `connection_security_policy` label: the same-node hand-over
    /// is authenticated in-process, so it counts as mutual TLS.
    pub fn policy_label(self) -> &'static str {
        match self {
            Security::MutualTls | Security::Local => "mutual_tls",
            Security::None => "none",
        }
    }

    /// Who reports the connection in Istio's metrics: both ends when both
    /// are this node's, else the side this proxy serves.
    pub fn reporters(self, direction: Direction) -> &'static [&'static str] {
        match (self, direction) {
            (Security::Local, _) => &["source", "destination"],
            (_, Direction::Outbound) => &["source"],
            (_, Direction::Inbound) => &["destination"],
        }
    }
}

/// How a connection ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Relayed to the end.
    Ok,
    /// Policy denied it; the reason names the policy.
    Denied(String),
    /// The upstream could not be reached.
    ConnectFailed(String),
    /// Refused before reaching the app for a reason other than policy.
    Refused(String),
    /// Broken mid-way (or abandoned by its handler).
    Reset(String),
}

impl Outcome {
    /// The access log's `result`.
    pub fn result(&self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::Denied(_) => "denied",
            Outcome::ConnectFailed(_) => "connect_failed",
            Outcome::Refused(_) => "refused",
            Outcome::Reset(_) => "reset",
        }
    }

    /// Envoy's response flags, as Istio reports them.
    pub fn response_flags(&self) -> &'static str {
        match self {
            Outcome::Ok => "-",
            Outcome::Denied(_) => "RBAC",
            Outcome::ConnectFailed(_) => "UF",
            Outcome::Refused(_) => "NR",
            Outcome::Reset(_) => "UR",
        }
    }

    /// The access log's `error`.
    pub fn error(&self) -> Option<&str> {
        match self {
            Outcome::Ok => None,
            Outcome::Denied(e)
            | Outcome::ConnectFailed(e)
            | Outcome::Refused(e)
            | Outcome::Reset(e) => Some(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_outcome_has_istios_flag_and_its_own_result() {
        let cases = [
            (Outcome::Ok, "ok", "-", None),
            (Outcome::Denied("p".into()), "denied", "RBAC", Some("p")),
            (
                Outcome::ConnectFailed("e".into()),
                "connect_failed",
                "UF",
                Some("e"),
            ),
            (Outcome::Refused("r".into()), "refused", "NR", Some("r")),
            (Outcome::Reset("x".into()), "reset", "UR", Some("x")),
        ];
        for (outcome, result, flags, error) in cases {
            assert_eq!(outcome.result(), result);
            assert_eq!(outcome.response_flags(), flags);
            assert_eq!(outcome.error(), error);
        }
    }

    #[test]
    fn a_same_node_connection_is_reported_by_both_ends_as_mutual_tls() {
        assert_eq!(
            Security::Local.reporters(Direction::Outbound),
            ["source", "destination"]
        );
        assert_eq!(Security::Local.policy_label(), "mutual_tls");
        assert_eq!(
            Security::None.reporters(Direction::Inbound),
            ["destination"]
        );
        assert_eq!(
            Security::MutualTls.reporters(Direction::Outbound),
            ["source"]
        );
    }
}
