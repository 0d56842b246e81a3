//! `mesh status`: one row per agent.
use mesh_telemetry::status::AgentStatus;
use serde::Serialize;

use super::{
    agents::Cluster,
    output::{self, Format},
};

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

#[cfg(test)]
mod tests {
    //! Kubernetes mode against kube's tower_test mock: the agent pods are
    //! listed through the API and each agent's /status is read through the
    //! API server's pod proxy.
    use http::{Request, Response, StatusCode};
    use kube::{Client, client::Body};
    use serde_json::json;

    use super::*;

    type Handle = tower_test::mock::Handle<Request<Body>, Response<Body>>;

    fn status(node: &str, healthy: bool) -> serde_json::Value {
        json!({
            "node": node, "version": "0.1.0", "discovery": "kubernetes",
            "ready": true, "healthy": healthy,
            "problems": if healthy { vec![] } else { vec!["program mesh_connect4 is not attached"] },
            "programs_attached": if healthy { 5 } else { 4 }, "programs_total": 5,
            "enrolled_pods": 3, "pending_pods": 0, "certificates": 2,
            "soonest_expiry": "2026-11-23T06:00:00Z", "policies": 1,
            "open_connections": 7, "bytes_last_minute": 2048
        })
    }

    async fn run_against(
        agents: Vec<(&'static str, &'static str, Option<bool>)>,
    ) -> (StatusReport, Vec<String>) {
        let (service, mut handle): (_, Handle) = tower_test::mock::pair();
        let server = tokio::spawn(async move {
            let mut seen = Vec::new();
            while let Some((request, send)) = handle.next_request().await {
                let uri = request.uri().to_string();
                seen.push(uri.clone());
                let (code, body) = if request.uri().path() == "/api/v1/namespaces/mesh-system/pods"
                {
                    let items: Vec<_> = agents
                        .iter()
                        .map(|(pod, node, _)| {
                            json!({
                                "metadata": {"name": pod, "namespace": "mesh-system"},
                                "spec": {"nodeName": node, "containers": []}
                            })
                        })
                        .collect();
                    (
                        StatusCode::OK,
                        json!({"apiVersion": "v1", "kind": "PodList", "metadata": {}, "items": items}),
                    )
                } else if let Some((pod, node, healthy)) = agents.iter().find(|(pod, _, _)| {
                    request.uri().path()
                        == format!("/api/v1/namespaces/mesh-system/pods/{pod}:15021/proxy/status")
                }) {
                    let _ = pod;
                    match healthy {
                        Some(h) => (StatusCode::OK, status(node, *h)),
                        None => (
                            StatusCode::SERVICE_UNAVAILABLE,
                            json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "message": "no endpoints", "code": 503}),
                        ),
                    }
                } else {
                    (
                        StatusCode::NOT_FOUND,
                        json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "message": "not found", "code": 404}),
                    )
                };
                send.send_response(
                    Response::builder()
                        .status(code)
                        .body(Body::from(body.to_string().into_bytes()))
                        .unwrap(),
                );
                if seen.len() > 10 {
                    break;
                }
            }
            seen
        });
        let cluster = Cluster::Kubernetes {
            client: Client::new(service, "default"),
            namespace: "mesh-system".into(),
            selector: "app.kubernetes.io/name=mesh-agent".into(),
            status_port: 15021,
        };
        let report = collect(&cluster).await.unwrap();
        drop(cluster);
        (report, server.await.unwrap())
    }

    #[tokio::test]
    async fn agents_are_listed_and_read_through_the_pod_proxy() {
        let (report, seen) = run_against(vec![
            ("mesh-agent-x1", "node-b", Some(true)),
            ("mesh-agent-k2", "node-a", Some(true)),
        ])
        .await;
        assert!(report.healthy);
        assert_eq!(report.agents.len(), 2);
        assert_eq!(report.agents[0].node, "node-a", "sorted by node");
        let s = report.agents[0].status.as_ref().unwrap();
        assert_eq!(s.programs_attached, 5);
        assert_eq!(s.open_connections, 7);
        assert!(
            seen[0].starts_with("/api/v1/namespaces/mesh-system/pods?"),
            "{seen:?}"
        );
        assert!(
            seen[0].contains("labelSelector=app.kubernetes.io%2Fname%3Dmesh-agent"),
            "{seen:?}"
        );
        let table = render(Format::Table, &report).unwrap();
        assert!(
            table.contains("node-a") && table.contains("5/5") && table.contains("2.0 KiB"),
            "{table}"
        );
    }

    #[tokio::test]
    async fn an_unhealthy_or_unreachable_agent_fails_the_report() {
        let (report, _) = run_against(vec![
            ("mesh-agent-a", "node-a", Some(false)),
            ("mesh-agent-b", "node-b", None),
        ])
        .await;
        assert!(!report.healthy);
        assert!(!report.agents[0].healthy());
        assert!(!report.agents[1].reachable);
        assert!(
            report.agents[1]
                .error
                .as_deref()
                .unwrap()
                .contains("mesh-agent-b"),
            "{:?}",
            report.agents[1]
        );
        let text = render(Format::Table, &report).unwrap();
        assert!(
            text.contains("node-a: program mesh_connect4 is not attached"),
            "{text}"
        );
        assert!(text.contains("unreachable"), "{text}");
        let json: serde_json::Value =
            serde_json::from_str(&render(Format::Json, &report).unwrap()).unwrap();
        assert_eq!(json["healthy"], false);
    }
}
