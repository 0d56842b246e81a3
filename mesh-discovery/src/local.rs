//! The local source: the agent's own YAML file, polled for changes. A file
//! that does not parse is refused with file, line and field, and the last
//! good state stays in force. Policies are the exception: a changed file
//! whose only problems are policy documents that cannot be read or
//! enforced is applied, each such policy replaced by its fail-closed
//! stand-in (deny all, or STRICT, in its scope) and logged. Keeping the
//! last good file instead would leave a new DENY policy unenforced.
use std::{
    os::unix::fs::MetadataExt,
    path::PathBuf,
    time::{Duration, SystemTime},
};

use mesh_config::{AgentConfig, ConfigError};
use tracing::{error, info, warn};

use super::{Publisher, Source};
use crate::{NodeConfig, file::BadPolicies};

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

/// A changed file, read as `apply` describes: strictly, else with
/// stand-ins for bad policies when everything else in it is good.
pub fn reload(
    path: &std::path::Path,
    text: &str,
    node_name: Option<&str>,
) -> Result<NodeConfig, ConfigError> {
    let strict = match NodeConfig::parse(path, text, node_name) {
        Ok(config) => return Ok(config),
        Err(e) => e,
    };
    // Everything but the policies, validated as at start (line numbers
    // kept); the policies read one by one, with stand-ins.
    let Ok((lenient, _)) = crate::file::parse_with(path, text, "AgentConfig", BadPolicies::StandIn)
    else {
        return Err(strict);
    };
    let mut config = NodeConfig::parse(path, &crate::file::without_policies(text), node_name)?;
    config.store.authorization = lenient.authorization;
    config.store.peer_authentication = lenient.peer_authentication;
    Ok(config)
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
    match reload(path, text, node_name.as_deref()) {
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

#[cfg(test)]
mod tests {
    use std::path::Path;

    use mesh_policy::{PolicySync, model::Action};

    use super::reload;
    use crate::NodeConfig;

    const BASE: &str = "kind: AgentConfig\nnodeName: n1\n---\napiVersion: v1\nkind: Pod\nmetadata: {name: web, namespace: shop}\nspec: {nodeName: n2, containers: [{name: c}]}\nstatus: {podIPs: [{ip: 10.1.0.1}]}\n";

    const UNREADABLE: &str = "---\nkind: AuthorizationPolicy\nmetadata: {name: future, namespace: shop}\nspec:\n  selector: {matchLabels: {app: web}}\n  rules:\n  - from:\n    - source: {principals: [x], newField: [y]}\n---\nkind: PeerAuthentication\nmetadata: {name: pa, namespace: shop}\nspec: {mtls: {mode: PERMISSIVE, other: 1}}\n---\nkind: AuthorizationPolicy\nmetadata: {name: good, namespace: shop}\nspec: {action: DENY, rules: [{to: [{operation: {ports: [9090]}}]}]}\n";

    #[test]
    fn a_file_is_policy_synced_at_once() {
        let c = NodeConfig::parse(Path::new("f.yaml"), BASE, None).unwrap();
        assert_eq!(c.view().policies.sync, PolicySync::COMPLETE);
    }

    #[test]
    fn at_start_an_unreadable_policy_refuses_the_file_with_its_line() {
        let text = format!("{BASE}{UNREADABLE}");
        let e = NodeConfig::parse(Path::new("f.yaml"), &text, None)
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("f.yaml:16: AuthorizationPolicy shop/future:") && e.contains("newField"),
            "{e}"
        );
    }

    #[test]
    fn on_reload_unreadable_policies_stand_in_and_the_rest_applies() {
        let text = format!("{BASE}{UNREADABLE}");
        let c = reload(Path::new("f.yaml"), &text, None).unwrap();
        let v = c.view();
        let future = v
            .policies
            .authorization
            .iter()
            .find(|p| p.name == "shop/future")
            .unwrap();
        assert_eq!(future.action, Action::Deny);
        assert_eq!(future.rules_source, None, "the stand-in, not the policy");
        assert_eq!(future.selector.as_ref().unwrap().match_labels["app"], "web");
        let good = v
            .policies
            .authorization
            .iter()
            .find(|p| p.name == "shop/good")
            .unwrap();
        assert!(
            good.rules_source.is_some(),
            "`ports: [9090]` reads as YAML did"
        );
        let pa = &v.policies.peer_authentication[0];
        assert_eq!(
            pa.spec.mtls.as_ref().unwrap().mode,
            mesh_policy::MtlsMode::Strict
        );
        assert_eq!(v.workloads().count(), 1);
    }

    #[test]
    fn on_reload_other_errors_still_refuse_the_file_with_their_line() {
        let text = format!("{BASE}{UNREADABLE}").replace("ip: 10.1.0.1", "ip: nope");
        let e = reload(Path::new("f.yaml"), &text, None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("f.yaml:") && e.contains("podIPs"), "{e}");
    }

    #[test]
    fn blanking_policies_keeps_every_other_line_where_it_was() {
        let text = format!("{BASE}{UNREADABLE}");
        let blank = crate::file::without_policies(&text);
        assert_eq!(blank.lines().count(), text.lines().count());
        assert!(!blank.contains("AuthorizationPolicy") && blank.contains("kind: Pod"));
        assert_eq!(
            blank.lines().position(|l| l == "kind: Pod"),
            text.lines().position(|l| l == "kind: Pod")
        );
    }

    const WAYPOINT_POLICIES: &str = "---\nkind: AuthorizationPolicy\nmetadata: {name: at-wp, namespace: shop}\nspec:\n  targetRefs: [{kind: Service, group: \"\", name: web}]\n  action: DENY\n  rules: [{to: [{operation: {methods: [POST]}}]}]\n---\nkind: AuthorizationPolicy\nmetadata: {name: at-node, namespace: shop}\nspec: {selector: {matchLabels: {app: web}}, action: DENY, rules: [{to: [{operation: {ports: [\"9090\"]}}]}]}\n";

    #[test]
    fn target_ref_policies_are_the_waypoints_and_selector_ones_the_agents() {
        let c = NodeConfig::parse(
            Path::new("f.yaml"),
            &format!("{BASE}{WAYPOINT_POLICIES}"),
            None,
        )
        .unwrap();
        let v = c.view();
        let node: Vec<_> = v
            .policies
            .authorization
            .iter()
            .map(|p| p.name.as_str())
            .collect();
        assert_eq!(
            node,
            ["shop/at-node"],
            "node agents skip targetRef policies"
        );
        let waypoint: Vec<_> = v
            .waypoint_policies
            .iter()
            .map(|p| p.name.as_str())
            .collect();
        assert_eq!(waypoint, ["shop/at-wp"]);
        assert!(v.waypoint_policies[0].compiled);
    }

    #[test]
    fn a_target_ref_policy_that_does_not_compile_stands_in_at_the_waypoint_only() {
        let bad = WAYPOINT_POLICIES.replace(
            "to: [{operation: {methods: [POST]}}]",
            "when: [{key: request.nope, values: [x]}]",
        );
        let text = format!("{BASE}{bad}");
        // At start the file is refused, naming the field...
        let e = NodeConfig::parse(Path::new("f.yaml"), &text, None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("shop/at-wp") && e.contains("when[0].key"), "{e}");
        // ...and on a reload the policy stands in as a DENY of its targets,
        // for the waypoint; node agents still see only the selector policy.
        let v = reload(Path::new("f.yaml"), &text, None).unwrap().view();
        let node: Vec<_> = v
            .policies
            .authorization
            .iter()
            .map(|p| p.name.as_str())
            .collect();
        assert_eq!(node, ["shop/at-node"]);
        let stand_in = &v.waypoint_policies[0];
        assert!(!stand_in.compiled && stand_in.action == Action::Deny);
    }
}
