//! A route's new `status.parents` from the old one and the entries this
//! controller computed. The list is atomic (Gateway API's listType), so
//! whoever writes it writes it whole: every other controller's entry is
//! kept as it was, byte for byte and in its place, and only ours are
//! replaced, including ours for parents the route no longer names.
use mesh_route::status::RouteParentStatus;
use serde_json::Value;

/// The CRD's `maxItems` for `status.parents`.
pub const MAX_PARENTS: usize = 32;

#[derive(Debug, PartialEq)]
pub struct Merged {
    pub parents: Vec<Value>,
    /// Our entries left out because other controllers' already fill the
    /// list up to `MAX_PARENTS`.
    pub dropped: usize,
}

fn is_ours(entry: &Value, controller_name: &str) -> bool {
    entry.get("controllerName").and_then(Value::as_str) == Some(controller_name)
}

/// Our entries of the previous list, as the status computation reads
/// them (an entry that does not decode is as good as absent: its
/// conditions start anew).
pub fn previous_ours(previous: &[Value], controller_name: &str) -> Vec<RouteParentStatus> {
    previous
        .iter()
        .filter(|e| is_ours(e, controller_name))
        .filter_map(|e| serde_json::from_value(e.clone()).ok())
        .collect()
}

pub fn merge_parents(
    previous: &[Value],
    ours: &[RouteParentStatus],
    controller_name: &str,
) -> Merged {
    let mut parents: Vec<Value> = previous
        .iter()
        .filter(|e| !is_ours(e, controller_name))
        .cloned()
        .collect();
    let room = MAX_PARENTS.saturating_sub(parents.len());
    let dropped = ours.len().saturating_sub(room);
    parents.extend(
        ours.iter()
            .take(room)
            .map(|e| serde_json::to_value(e).expect("a status entry serializes")),
    );
    Merged { parents, dropped }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const ME: &str = "mesh.io/waypoint-controller";

    fn ours(name: &str) -> RouteParentStatus {
        serde_json::from_value(json!({
            "parentRef": {"group": "", "kind": "Service", "name": name},
            "controllerName": ME,
            "conditions": [{"type": "Accepted", "status": "True", "reason": "Accepted",
                            "message": "", "lastTransitionTime": "2025-01-01T00:00:00Z"}],
        }))
        .unwrap()
    }

    fn theirs(name: &str) -> Value {
        // Fields this mesh does not model stay as they are.
        json!({"parentRef": {"name": name}, "controllerName": "example.com/gw",
               "conditions": [], "x-extra": {"kept": true}})
    }

    #[test]
    fn other_controllers_entries_are_kept_as_they_were_and_ours_replaced() {
        let previous = vec![serde_json::to_value(ours("old")).unwrap(), theirs("gw")];
        let merged = merge_parents(&previous, &[ours("web")], ME);
        assert_eq!(
            merged.parents,
            vec![theirs("gw"), serde_json::to_value(ours("web")).unwrap()]
        );
        assert_eq!(merged.dropped, 0);
        assert_eq!(previous_ours(&previous, ME), vec![ours("old")]);
    }

    #[test]
    fn the_list_stays_within_its_limit() {
        let previous: Vec<Value> = (0..MAX_PARENTS - 1)
            .map(|i| theirs(&format!("gw{i}")))
            .collect();
        let merged = merge_parents(&previous, &[ours("a"), ours("b")], ME);
        assert_eq!(merged.parents.len(), MAX_PARENTS);
        assert_eq!(merged.dropped, 1);
        assert_eq!(merged.parents[MAX_PARENTS - 1]["parentRef"]["name"], "a");
    }
}
