//! `mesh status`: one row per agent.
use serde::Serialize;

use super::{
    agents::Cluster,
    output::{self, Format},
};
use crate::telemetry::health::AgentStatus;

/// One agent as `mesh status` reports it: its own summary, or why it could
/// not be read.
#[derive(Debug, Serialize)]
pub struct AgentRow {
    pub node: String,
    pub reachable: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<AgentStatus>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl AgentRow {
    pub fn healthy(&self) -> bool {
        self.status.as_ref().is_some_and(|s| s.healthy)
    }
}

#[derive(Debug, Serialize)]
pub struct StatusReport {
    pub healthy: bool,
    pub agents: Vec<AgentRow>,
}

pub async fn collect(cluster: &Cluster) -> anyhow::Result<StatusReport> {
    let agents = cluster.agents().await?;
    let mut rows = Vec::with_capacity(agents.len());
    for agent in &agents {
        let row = match cluster.get(agent, "/status").await.and_then(|text| {
            serde_json::from_str::<AgentStatus>(&text)
                .map_err(|e| anyhow::anyhow!("unexpected /status answer: {e}"))
        }) {
            Ok(status) => AgentRow {
                node: agent.node.clone(),
                reachable: true,
                status: Some(status),
                error: None,
            },
            Err(e) => AgentRow {
                node: agent.node.clone(),
                reachable: false,
                status: None,
                error: Some(format!("{e:#}")),
            },
        };
        rows.push(row);
    }
    Ok(StatusReport {
        healthy: !rows.is_empty() && rows.iter().all(AgentRow::healthy),
        agents: rows,
    })
}

pub fn render(format: Format, report: &StatusReport) -> anyhow::Result<String> {
    output::render(format, report, |r| {
        let rows: Vec<Vec<String>> = r
            .agents
            .iter()
            .map(|a| match &a.status {
                Some(s) => vec![
                    a.node.clone(),
                    s.version.clone(),
                    s.healthy.to_string(),
                    format!("{}/{}", s.programs_attached, s.programs_total),
                    s.enrolled_pods.to_string(),
                    match &s.soonest_expiry {
                        Some(t) => format!("{} (next expiry {t})", s.certificates),
                        None => s.certificates.to_string(),
                    },
                    s.policies.to_string(),
                    s.open_connections.to_string(),
                    output::bytes(s.bytes_last_minute),
                ],
                None => vec![
                    a.node.clone(),
                    "-".into(),
                    "unreachable".into(),
                    "-".into(),
                    "-".into(),
                    "-".into(),
                    "-".into(),
                    "-".into(),
                    "-".into(),
                ],
            })
            .collect();
        let mut out = output::table(
            &[
                "NODE",
                "VERSION",
                "HEALTHY",
                "PROGRAMS",
                "PODS",
                "CERTIFICATES",
                "POLICIES",
                "CONNECTIONS",
                "BYTES/1M",
            ],
            &rows,
        );
        for a in &r.agents {
            if let Some(e) = &a.error {
                out.push_str(&format!("{}: {e}\n", a.node));
            }
            for p in a.status.iter().flat_map(|s| &s.problems) {
                out.push_str(&format!("{}: {p}\n", a.node));
            }
        }
        out
    })
}
