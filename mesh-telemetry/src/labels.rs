//! How a pod is named in metrics, as Istio names it, so that Istio's
//! dashboards group our series the same way: the workload is the pod's
//! controller (a Deployment's pods share one name), app and version come
//! from the canonical-service labels.
use std::collections::BTreeMap;

use mesh_discovery::model::Workload;

/// A pod's identity in metric labels.
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct WorkloadLabels {
    pub workload: String,
    pub namespace: String,
    pub app: String,
    pub version: String,
}

pub const UNKNOWN: &str = "unknown";

impl WorkloadLabels {
    pub fn of(name: &str, namespace: &str, labels: &BTreeMap<String, String>) -> Self {
        let workload = workload_name(name, labels);
        let first = |keys: &[&str]| keys.iter().find_map(|k| labels.get(*k)).cloned();
        Self {
            app: first(&[
                "service.istio.io/canonical-name",
                "app.kubernetes.io/name",
                "app",
            ])
            .unwrap_or_else(|| workload.clone()),
            version: first(&[
                "service.istio.io/canonical-revision",
                "app.kubernetes.io/version",
                "version",
            ])
            .unwrap_or_else(|| "latest".into()),
            namespace: namespace.to_owned(),
            workload,
        }
    }

    pub fn of_workload(w: &Workload) -> Self {
        Self::of(&w.name, &w.namespace, &w.labels)
    }

    /// A peer outside the mesh's knowledge.
    pub fn unknown() -> Self {
        Self {
            workload: UNKNOWN.into(),
            namespace: UNKNOWN.into(),
            app: UNKNOWN.into(),
            version: UNKNOWN.into(),
        }
    }
}

/// The controller's name: `web-7d4b9c-x2kq9` (a Deployment's ReplicaSet
/// pod, recognisable by its pod-template-hash label) is workload `web`; a
/// StatefulSet's `db-0` is `db`; anything else is named as the pod is.
fn workload_name(pod: &str, labels: &BTreeMap<String, String>) -> String {
    if let Some(hash) = labels.get("pod-template-hash")
        && let Some(at) = pod.rfind(&format!("-{hash}-"))
    {
        return pod[..at].to_owned();
    }
    if labels.contains_key("statefulset.kubernetes.io/pod-name")
        && let Some((base, ordinal)) = pod.rsplit_once('-')
        && ordinal.bytes().all(|b| b.is_ascii_digit())
    {
        return base.to_owned();
    }
    pod.to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(kv: &[(&str, &str)]) -> BTreeMap<String, String> {
        kv.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn deployment_pods_share_their_workload() {
        let l = labels(&[("pod-template-hash", "7d4b9c"), ("app", "web")]);
        let w = WorkloadLabels::of("web-7d4b9c-x2kq9", "shop", &l);
        assert_eq!(w.workload, "web");
        assert_eq!(w.app, "web");
        assert_eq!(w.version, "latest");
        assert_eq!(w.namespace, "shop");
    }

    #[test]
    fn statefulset_ordinal_is_dropped_and_canonical_labels_win() {
        let l = labels(&[
            ("statefulset.kubernetes.io/pod-name", "db-12"),
            ("service.istio.io/canonical-name", "database"),
            ("app", "db"),
            ("version", "v2"),
        ]);
        let w = WorkloadLabels::of("db-12", "data", &l);
        assert_eq!(w.workload, "db");
        assert_eq!(w.app, "database");
        assert_eq!(w.version, "v2");
    }

    #[test]
    fn a_bare_pod_is_its_own_workload() {
        let w = WorkloadLabels::of("client-1", "default", &BTreeMap::new());
        assert_eq!(w.workload, "client-1");
        assert_eq!(w.app, "client-1");
    }
}
