//! Whether the policy kinds have been read completely. Until both have,
//! the agent does not know what is denied and what is STRICT, so traffic
//! to its pods is refused rather than served as allow-all/PERMISSIVE.
use std::fmt;

/// The two policy kinds, as logs and the API name them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PolicyKind {
    AuthorizationPolicy,
    PeerAuthentication,
}

impl fmt::Display for PolicyKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PolicyKind::AuthorizationPolicy => "AuthorizationPolicy",
            PolicyKind::PeerAuthentication => "PeerAuthentication",
        })
    }
}

/// How far one policy kind has been read.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum KindSync {
    /// Its first full list has not completed (and has not failed) yet.
    #[default]
    Listing,
    /// Its first full list failed; the API's answer, kept for logs and
    /// for the refusal reason. Retried with backoff.
    Failing(String),
    /// Listed completely at least once. Later watch errors do not undo
    /// this: the objects already read stay in force while it retries.
    Listed,
}

/// The sync state of both policy kinds, carried by every view.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PolicySync {
    pub authorization: KindSync,
    pub peer_authentication: KindSync,
}

/// Why policies cannot be enforced yet.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NotSynced {
    #[error("{kind} has not been listed yet")]
    Listing { kind: PolicyKind },
    #[error(
        "{kind} cannot be listed: {error} (give the agent's service account list/watch on {kind}s and install the CRD)"
    )]
    Failing { kind: PolicyKind, error: String },
}

impl PolicySync {
    /// Both kinds read whole: a local file, or both lists done.
    pub const COMPLETE: Self = Self {
        authorization: KindSync::Listed,
        peer_authentication: KindSync::Listed,
    };

    /// Ok when policies can be enforced. Otherwise the reason, preferring
    /// a failing kind (it names the API error) over one still listing.
    pub fn check(&self) -> Result<(), NotSynced> {
        let kinds = [
            (PolicyKind::AuthorizationPolicy, &self.authorization),
            (PolicyKind::PeerAuthentication, &self.peer_authentication),
        ];
        if let Some((kind, KindSync::Failing(error))) = kinds
            .iter()
            .find(|(_, s)| matches!(s, KindSync::Failing(_)))
        {
            return Err(NotSynced::Failing {
                kind: *kind,
                error: error.clone(),
            });
        }
        match kinds.iter().find(|(_, s)| **s != KindSync::Listed) {
            Some((kind, _)) => Err(NotSynced::Listing { kind: *kind }),
            None => Ok(()),
        }
    }

    pub fn is_synced(&self) -> bool {
        self.check().is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nothing_is_synced_until_both_kinds_are_listed() {
        let mut s = PolicySync::default();
        assert_eq!(
            s.check(),
            Err(NotSynced::Listing {
                kind: PolicyKind::AuthorizationPolicy
            })
        );
        s.authorization = KindSync::Listed;
        assert_eq!(
            s.check(),
            Err(NotSynced::Listing {
                kind: PolicyKind::PeerAuthentication
            })
        );
        s.peer_authentication = KindSync::Listed;
        assert_eq!(s.check(), Ok(()));
        assert_eq!(s, PolicySync::COMPLETE);
    }

    #[test]
    fn a_failing_kind_is_named_with_its_error() {
        let s = PolicySync {
            authorization: KindSync::Listing,
            peer_authentication: KindSync::Failing("forbidden (403)".into()),
        };
        let e = s.check().unwrap_err();
        assert_eq!(
            e,
            NotSynced::Failing {
                kind: PolicyKind::PeerAuthentication,
                error: "forbidden (403)".into()
            }
        );
        let text = e.to_string();
        assert!(
            text.starts_with("PeerAuthentication cannot be listed: forbidden (403)"),
            "{text}"
        );
        assert!(!s.is_synced());
    }
}
