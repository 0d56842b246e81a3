//! The status document an agent serves at `/status` and `mesh status`
//! reads: one type, so the two cannot disagree.
use serde::{Deserialize, Serialize};

/// One agent as `mesh status` shows it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct AgentStatus {
    pub node: String,
    pub version: String,
    pub discovery: String,
    pub ready: bool,
    /// Ready, every program attached, every enrolled pod with a valid
    /// certificate, nothing pending; `problems` says what is not.
    pub healthy: bool,
    pub problems: Vec<String>,
    pub programs_attached: usize,
    pub programs_total: usize,
    /// RFC 3339 time of the datapath reading the program counts come from
    /// (one every few seconds); `None` before the first.
    #[serde(default)]
    pub datapath_sampled_at: Option<String>,
    pub enrolled_pods: usize,
    pub pending_pods: usize,
    /// Cluster objects that exist but could not be used (malformed, over
    /// a bound): absent as far as routing and policy go. Older agents do
    /// not report it.
    #[serde(default)]
    pub ignored_objects: usize,
    pub certificates: usize,
    /// RFC 3339 time of the soonest certificate expiry.
    pub soonest_expiry: Option<String>,
    pub policies: usize,
    pub open_connections: i64,
    pub bytes_last_minute: u64,
}
