//! The local source: the agent's own YAML file, polled for changes. A file
//! that does not parse is refused with file, line and field, and the last
//! good state stays in force.
use std::{
    os::unix::fs::MetadataExt,
    path::PathBuf,
    time::{Duration, SystemTime},
};

use tracing::{error, info, warn};

use super::{Publisher, Source};
use crate::config::{AgentConfig, NodeConfig};

/// Cheap enough to poll often: a stat, and a read only when it changed.
const POLL: Duration = Duration::from_millis(100);

pub struct LocalFile {
    path: PathBuf,
    node_name: Option<String>,
    agent: AgentConfig,
    last_text: String,
}

/// What a stat says about the file; a change means read it again.
type Stamp = Option<(SystemTime, u64, u64)>;

impl LocalFile {
    /// Follows `path` from `text`, the version the agent started with.
    pub fn new(path: PathBuf, node_name: Option<String>, agent: AgentConfig, text: String) -> Self {
        Self {
            path,
            node_name,
            agent,
            last_text: text,
        }
    }

    fn stamp(&self) -> Stamp {
        let m = std::fs::metadata(&self.path).ok()?;
        Some((m.modified().ok()?, m.len(), m.ino()))
    }
}

/// Parses the file's new text and publishes it, or says why not.
fn apply(
    path: &std::path::Path,
    text: &str,
    node_name: Option<String>,
    agent: &AgentConfig,
    publisher: &Publisher,
) {
    let started = std::time::Instant::now();
    match NodeConfig::parse(path, text, node_name.as_deref()) {
        Ok(config) => {
            info!(
                parse_us = started.elapsed().as_micros() as u64,
                bytes = text.len(),
                "config file parsed"
            );
            if config.agent != *agent {
                warn!("AgentConfig changed; node settings apply at the next agent start");
            }
            publisher.publish(&config.store, true);
        }
        Err(e) => error!(error = %e, "config rejected; the last good config stays in force"),
    }
}

impl Source for LocalFile {
    async fn run(mut self, publisher: Publisher) {
        let mut tick = tokio::time::interval(POLL);
        let mut stamp = self.stamp();
        while publisher.is_open() {
            tick.tick().await;
            let now = self.stamp();
            if now == stamp {
                continue;
            }
            stamp = now;
            let Ok(text) = std::fs::read_to_string(&self.path) else {
                continue;
            };
            if text == self.last_text {
                continue;
            }
            // Parsing a large file takes a while: off the proxy's thread.
            let (path, node_name, agent, p) = (
                self.path.clone(),
                self.node_name.clone(),
                self.agent.clone(),
                publisher.clone(),
            );
            let parsing = text.clone();
            let _ =
                tokio::task::spawn_blocking(move || apply(&path, &parsing, node_name, &agent, &p))
                    .await;
            self.last_text = text;
        }
    }
}
