//! The one condition this controller owns on an object, and the object's
//! new `status.conditions` from the old list (pure). The list is a map by
//! `type`: every other type is kept as it was, byte for byte and in its
//! place, so other controllers' conditions (Istio's `ZtunnelAccepted`, a
//! policy engine's own) survive our writes.
use serde_json::{Value, json};

/// Messages are cut to this many bytes: the API server takes up to 32768,
/// but a status is read by people, and one bad object must not make every
/// list of its kind heavy.
pub const MAX_MESSAGE: usize = 1024;

/// Why an object is, or is not, taken by the waypoint. The words are
/// Istio's for `WaypointAccepted` (pilot's `WaypointPolicyReason*`) and
/// Gateway API's for policies (GEP-713), which agree.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    Accepted,
    /// A field cannot be used as written.
    Invalid,
    /// A targetRef (or a DestinationRule's host) names no existing object.
    TargetNotFound,
    /// The target exists, but no waypoint serves it.
    AncestorNotBound,
    /// Some targets bound, some not.
    PartiallyInvalid,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Accepted => "Accepted",
            Reason::Invalid => "Invalid",
            Reason::TargetNotFound => "TargetNotFound",
            Reason::AncestorNotBound => "AncestorNotBound",
            Reason::PartiallyInvalid => "PartiallyInvalid",
        }
    }
}

/// What the controller says of one object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    pub accepted: bool,
    pub reason: Reason,
    pub message: String,
}

impl Verdict {
    pub fn accepted(message: impl Into<String>) -> Self {
        Self {
            accepted: true,
            reason: Reason::Accepted,
            message: message.into(),
        }
    }

    pub fn refused(reason: Reason, message: impl Into<String>) -> Self {
        Self {
            accepted: false,
            reason,
            message: message.into(),
        }
    }
}

/// `message` within `MAX_MESSAGE` bytes, cut on a character boundary.
pub fn bounded(message: &str) -> String {
    if message.len() <= MAX_MESSAGE {
        return message.to_owned();
    }
    const MORE: &str = " ...";
    let mut end = MAX_MESSAGE - MORE.len();
    while !message.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}{MORE}", &message[..end])
}

/// The condition of `type_` for `verdict`; its lastTransitionTime is the
/// previous one's when the status did not change (metav1.Condition's
/// rule), else `now`.
pub fn condition(
    type_: &str,
    verdict: &Verdict,
    generation: Option<i64>,
    previous: Option<&Value>,
    now: &str,
) -> Value {
    let status = if verdict.accepted { "True" } else { "False" };
    let since = previous
        .filter(|p| p.get("status").and_then(Value::as_str) == Some(status))
        .and_then(|p| p.get("lastTransitionTime").and_then(Value::as_str))
        .unwrap_or(now);
    let mut c = json!({
        "type": type_,
        "status": status,
        "reason": verdict.reason.as_str(),
        "message": bounded(&verdict.message),
        "lastTransitionTime": since,
    });
    if let Some(g) = generation {
        c["observedGeneration"] = json!(g);
    }
    c
}

fn is_type(c: &Value, type_: &str) -> bool {
    c.get("type").and_then(Value::as_str) == Some(type_)
}

/// The new list: ours (of `type_`) replaced in its place, or added last,
/// or, with `ours` None (the object is not the waypoint's to judge),
/// removed; every other entry as it was.
pub fn merge(previous: &[Value], type_: &str, ours: Option<Value>) -> Vec<Value> {
    let mut ours = ours;
    let mut out: Vec<Value> = previous
        .iter()
        .filter_map(|c| {
            if is_type(c, type_) {
                // A duplicate of our type is dropped: a map has one.
                ours.take()
            } else {
                Some(c.clone())
            }
        })
        .collect();
    out.extend(ours);
    out
}

/// Our previous condition of `type_`, if any.
pub fn previous<'a>(conditions: &'a [Value], type_: &str) -> Option<&'a Value> {
    conditions.iter().find(|c| is_type(c, type_))
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: &str = "2025-01-01T00:00:00Z";
    const T1: &str = "2025-02-02T00:00:00Z";

    #[test]
    fn the_transition_time_is_kept_while_the_status_holds() {
        let before = condition("Accepted", &Verdict::accepted("ok"), Some(1), None, T0);
        let again = condition(
            "Accepted",
            &Verdict::accepted("still ok"),
            Some(2),
            Some(&before),
            T1,
        );
        assert_eq!(again["lastTransitionTime"], T0);
        assert_eq!(again["observedGeneration"], 2);
        let refused = condition(
            "Accepted",
            &Verdict::refused(Reason::Invalid, "spec.x: bad"),
            Some(3),
            Some(&again),
            T1,
        );
        assert_eq!(refused["lastTransitionTime"], T1);
        assert_eq!(refused["status"], "False");
        assert_eq!(refused["reason"], "Invalid");
    }

    #[test]
    fn other_types_are_kept_in_place_and_ours_replaced_or_removed() {
        let theirs = json!({"type": "ZtunnelAccepted", "status": "True", "x-extra": 1});
        let old = json!({"type": "WaypointAccepted", "status": "False"});
        let new = json!({"type": "WaypointAccepted", "status": "True"});
        let list = vec![old.clone(), theirs.clone()];
        assert_eq!(
            merge(&list, "WaypointAccepted", Some(new.clone())),
            vec![new.clone(), theirs.clone()]
        );
        assert_eq!(
            merge(
                std::slice::from_ref(&theirs),
                "WaypointAccepted",
                Some(new.clone())
            ),
            vec![theirs.clone(), new]
        );
        assert_eq!(merge(&list, "WaypointAccepted", None), vec![theirs]);
    }

    #[test]
    fn messages_are_bounded_on_a_character_boundary() {
        let long = "é".repeat(MAX_MESSAGE);
        let cut = bounded(&long);
        assert!(cut.len() <= MAX_MESSAGE, "{}", cut.len());
        assert!(cut.ends_with(" ..."));
        assert_eq!(bounded("short"), "short");
    }
}
