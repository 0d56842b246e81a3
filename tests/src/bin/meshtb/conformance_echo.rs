//! `serve --mode conformance-echo` and `echo-request`: the conformance
//! echo ([`mesh_testbed::echo`]) run in a pod, and its client.
use std::{net::SocketAddr, sync::Arc, time::Duration};

use anyhow::Context as _;
use mesh_testbed::echo::{self, Call, EchoResponse, Workload, server::Seen};
use serde_json::json;

/// The pod the echo answers as, from the environment the test bed sets.
pub fn workload() -> anyhow::Result<Workload> {
    Ok(Workload::from_env()?)
}

/// Serves every listener until the process is killed; one
/// `{"echo": <report>}` line per request, so a test can tell what
/// reached this backend (and that a redirect never did).
pub fn serve(listeners: Vec<std::net::TcpListener>, workload: Workload) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("tokio runtime")?;
    let workload = Arc::new(workload);
    let seen: Seen = Arc::new(|r: &EchoResponse| println!("{}", json!({ "echo": r })));
    rt.block_on(async move {
        let mut tasks = tokio::task::JoinSet::new();
        for l in listeners {
            l.set_nonblocking(true).context("non-blocking listener")?;
            let l = tokio::net::TcpListener::from_std(l).context("listener")?;
            tasks.spawn(echo::server::serve(l, workload.clone(), seen.clone()));
        }
        while let Some(done) = tasks.join_next().await {
            done.context("listener task")?.context("accepting")?;
        }
        Ok(())
    })
}

/// `echo-request`: the JSON line to print, `{"exchanges": [...]}` or
/// `{"error": "..."}` with the exit status to leave with.
pub fn request(
    to: SocketAddr,
    call: &str,
    count: u32,
    timeout: Duration,
) -> (serde_json::Value, i32) {
    let run = || -> anyhow::Result<serde_json::Value> {
        let call: Call = serde_json::from_str(call).with_context(|| format!("--call {call}"))?;
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("tokio runtime")?;
        rt.block_on(echo::client::run_in_pod(to, &call, count, timeout))
    };
    match run() {
        Ok(v) => (v, 0),
        Err(e) => (json!({ "error": format!("{e:#}") }), 1),
    }
}
