//! Who may read what a waypoint's discovery watches: the ServiceAccount of
//! each waypoint the controller runs, as a pure function of the Gateways.
//! The chart's ClusterRoleBinding (`--waypoint-reader-binding`) binds
//! these accounts to its fixed reader ClusterRole; the controller only
//! edits that binding's subjects, so it can hand out the chart's rules and
//! no others.
use std::collections::BTreeSet;

use k8s_openapi::api::rbac::v1::Subject;

use super::{acceptance::accept, gateway_api::Gateway};

const SERVICE_ACCOUNT: &str = "ServiceAccount";

/// A waypoint's ServiceAccount: named for its Gateway, in the Gateway's
/// namespace (`resources::waypoint_objects`).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Reader {
    pub namespace: String,
    pub service_account: String,
}

impl Reader {
    /// The reader of a Gateway, None for one without namespace or name
    /// (not an object the API server sent).
    pub fn of(gateway: &Gateway) -> Option<Self> {
        Some(Self {
            namespace: gateway.metadata.namespace.clone()?,
            service_account: gateway.metadata.name.clone()?,
        })
    }

    pub fn subject(&self) -> Subject {
        Subject {
            kind: SERVICE_ACCOUNT.into(),
            name: self.service_account.clone(),
            namespace: Some(self.namespace.clone()),
            api_group: None,
        }
    }

    /// Whether `subject` names this account.
    fn is(&self, subject: &Subject) -> bool {
        Reader::from_subject(subject).as_ref() == Some(self)
    }

    /// A binding's subject as a reader; None for users, groups and
    /// accounts without a namespace.
    fn from_subject(subject: &Subject) -> Option<Self> {
        let core = subject.api_group.as_deref().is_none_or(str::is_empty);
        (subject.kind == SERVICE_ACCOUNT && core).then_some(())?;
        Some(Self {
            namespace: subject.namespace.clone().filter(|n| !n.is_empty())?,
            service_account: subject.name.clone(),
        })
    }
}

/// The readers `gateways` call for: one per Gateway of `class` that the
/// controller runs a waypoint for (accepted, not being deleted).
pub fn desired_readers<'a>(
    gateways: impl IntoIterator<Item = &'a Gateway>,
    class: &str,
) -> BTreeSet<Reader> {
    gateways
        .into_iter()
        .filter(|g| {
            g.spec.gateway_class_name == class
                && g.metadata.deletion_timestamp.is_none()
                && accept(g).is_ok()
        })
        .filter_map(Reader::of)
        .collect()
}

/// A change to the binding's subjects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Edit {
    /// One waypoint reconciled: its account is bound, the rest untouched.
    Add(Reader),
    /// One waypoint gone or refused: its account is unbound, the rest
    /// untouched.
    Remove(Reader),
    /// The full resync: exactly these accounts, nothing else (subjects
    /// added by hand included: the binding is the controller's).
    Exactly(BTreeSet<Reader>),
}

impl Edit {
    /// The subjects to write over `current`, None when `current` already
    /// is what the edit asks for.
    pub fn apply(&self, current: &[Subject]) -> Option<Vec<Subject>> {
        match self {
            Self::Add(reader) => {
                if current.iter().any(|s| reader.is(s)) {
                    return None;
                }
                let mut subjects = current.to_vec();
                subjects.push(reader.subject());
                Some(subjects)
            }
            Self::Remove(reader) => {
                let kept: Vec<Subject> =
                    current.iter().filter(|s| !reader.is(s)).cloned().collect();
                (kept.len() != current.len()).then_some(kept)
            }
            Self::Exactly(readers) => {
                let now: Option<BTreeSet<Reader>> =
                    current.iter().map(Reader::from_subject).collect();
                // Equal sets of the same length: no duplicates, no
                // subject that is not a reader.
                if now.as_ref() == Some(readers) && current.len() == readers.len() {
                    return None;
                }
                Some(readers.iter().map(Reader::subject).collect())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn gateway(namespace: &str, name: &str, class: &str, port: i32) -> Gateway {
        serde_json::from_value(json!({
            "apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
            "metadata": {"name": name, "namespace": namespace, "uid": format!("u-{name}")},
            "spec": {"gatewayClassName": class,
                     "listeners": [{"name": "mesh", "port": port, "protocol": "HBONE"}]}
        }))
        .unwrap()
    }

    fn reader(namespace: &str, name: &str) -> Reader {
        Reader {
            namespace: namespace.into(),
            service_account: name.into(),
        }
    }

    fn sa(namespace: &str, name: &str) -> Subject {
        reader(namespace, name).subject()
    }

    #[test]
    fn only_the_waypoints_the_controller_runs_are_readers() {
        let mut deleted = gateway("shop", "leaving", "mesh-waypoint", 15008);
        deleted.metadata.deletion_timestamp =
            Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                "2025-01-01T00:00:00Z".parse().unwrap(),
            ));
        let gateways = [
            gateway("shop", "waypoint", "mesh-waypoint", 15008),
            gateway("bank", "waypoint", "mesh-waypoint", 15008),
            // Same name again (a duplicate from a re-list): one reader.
            gateway("shop", "waypoint", "mesh-waypoint", 15008),
            gateway("shop", "ingress", "istio", 15008),
            // Refused: no HBONE listener on 15008, so no waypoint runs.
            gateway("shop", "wrong-port", "mesh-waypoint", 8080),
            deleted,
        ];
        let readers = desired_readers(&gateways, "mesh-waypoint");
        assert_eq!(
            readers.into_iter().collect::<Vec<_>>(),
            [reader("bank", "waypoint"), reader("shop", "waypoint")]
        );
        assert!(desired_readers(&gateways, "other").is_empty());
    }

    #[test]
    fn a_subject_is_a_reader_only_as_a_namespaced_service_account() {
        assert_eq!(
            Reader::from_subject(&sa("shop", "waypoint")),
            Some(reader("shop", "waypoint"))
        );
        // The API server may store the core group as "".
        let mut stored = sa("shop", "waypoint");
        stored.api_group = Some(String::new());
        assert_eq!(
            Reader::from_subject(&stored),
            Some(reader("shop", "waypoint"))
        );
        let user = Subject {
            kind: "User".into(),
            name: "waypoint".into(),
            namespace: Some("shop".into()),
            api_group: Some("rbac.authorization.k8s.io".into()),
        };
        assert_eq!(Reader::from_subject(&user), None);
        let mut no_namespace = sa("shop", "waypoint");
        no_namespace.namespace = None;
        assert_eq!(Reader::from_subject(&no_namespace), None);
    }

    #[test]
    fn add_and_remove_touch_one_account_and_write_only_on_change() {
        let current = vec![sa("bank", "waypoint")];
        assert_eq!(
            Edit::Add(reader("shop", "waypoint")).apply(&current),
            Some(vec![sa("bank", "waypoint"), sa("shop", "waypoint")])
        );
        assert_eq!(Edit::Add(reader("bank", "waypoint")).apply(&current), None);
        assert_eq!(
            Edit::Remove(reader("shop", "waypoint")).apply(&current),
            None
        );
        assert_eq!(
            Edit::Remove(reader("bank", "waypoint")).apply(&current),
            Some(vec![])
        );
        // An account of the same name in another namespace is another
        // account.
        assert_eq!(
            Edit::Remove(reader("shop", "waypoint")).apply(&[sa("bank", "waypoint")]),
            None
        );
    }

    #[test]
    fn the_resync_writes_exactly_the_desired_accounts() {
        let want = BTreeSet::from([reader("bank", "waypoint"), reader("shop", "waypoint")]);
        let exactly = Edit::Exactly(want.clone());
        let sorted = vec![sa("bank", "waypoint"), sa("shop", "waypoint")];
        // Already so, in any order: no write.
        assert_eq!(exactly.apply(&sorted), None);
        assert_eq!(
            exactly.apply(&[sa("shop", "waypoint"), sa("bank", "waypoint")]),
            None
        );
        // A stale account, a missing one, a duplicate, a hand-added user:
        // all rewritten to the desired list.
        let user = Subject {
            kind: "User".into(),
            name: "alice".into(),
            namespace: None,
            api_group: Some("rbac.authorization.k8s.io".into()),
        };
        for current in [
            vec![sa("bank", "waypoint"), sa("old", "waypoint")],
            vec![sa("bank", "waypoint")],
            vec![
                sa("bank", "waypoint"),
                sa("shop", "waypoint"),
                sa("shop", "waypoint"),
            ],
            vec![sa("bank", "waypoint"), sa("shop", "waypoint"), user],
            vec![],
        ] {
            assert_eq!(exactly.apply(&current), Some(sorted.clone()), "{current:?}");
        }
        assert_eq!(
            Edit::Exactly(BTreeSet::new()).apply(&[sa("old", "waypoint")]),
            Some(vec![])
        );
        assert_eq!(Edit::Exactly(BTreeSet::new()).apply(&[]), None);
    }
}
