//! SPIFFE IDs of workloads: `spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>`.
use std::fmt;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum IdentityError {
    #[error(
        "`{0}` is not a SPIFFE ID of the form spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>"
    )]
    Malformed(String),
}

/// A workload identity. Its parts are non-empty and free of '/', so the
/// URI form and the parts always describe the same identity.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Identity {
    trust_domain: String,
    namespace: String,
    service_account: String,
}

fn valid_part(s: &str) -> bool {
    !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_'))
}

impl Identity {
    pub fn new(
        trust_domain: &str,
        namespace: &str,
        service_account: &str,
    ) -> Result<Self, IdentityError> {
        if [trust_domain, namespace, service_account]
            .iter()
            .all(|p| valid_part(p))
        {
            Ok(Self {
                trust_domain: trust_domain.to_owned(),
                namespace: namespace.to_owned(),
                service_account: service_account.to_owned(),
            })
        } else {
            Err(IdentityError::Malformed(format!(
                "spiffe://{trust_domain}/ns/{namespace}/sa/{service_account}"
            )))
        }
    }

    pub fn parse(uri: &str) -> Result<Self, IdentityError> {
        let malformed = || IdentityError::Malformed(uri.to_owned());
        let rest = uri.strip_prefix("spiffe://").ok_or_else(malformed)?;
        let parts: Vec<&str> = rest.split('/').collect();
        match parts.as_slice() {
            [td, "ns", ns, "sa", sa] => Self::new(td, ns, sa).map_err(|_| malformed()),
            _ => Err(malformed()),
        }
    }

    pub fn trust_domain(&self) -> &str {
        &self.trust_domain
    }
    pub fn namespace(&self) -> &str {
        &self.namespace
    }
    pub fn service_account(&self) -> &str {
        &self.service_account
    }
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "spiffe://{}/ns/{}/sa/{}",
            self.trust_domain, self.namespace, self.service_account
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips() {
        let id = Identity::parse("spiffe://cluster.local/ns/shop/sa/web").unwrap();
        assert_eq!(id.namespace(), "shop");
        assert_eq!(id.service_account(), "web");
        assert_eq!(id.to_string(), "spiffe://cluster.local/ns/shop/sa/web");
    }

    #[test]
    fn refuses_other_shapes() {
        for bad in [
            "https://cluster.local/ns/a/sa/b",
            "spiffe://cluster.local/ns/a",
            "spiffe://cluster.local/ns/a/sa/b/c",
            "spiffe://cluster.local/ns//sa/b",
            "spiffe://cluster.local/sa/a/ns/b",
        ] {
            assert!(Identity::parse(bad).is_err(), "{bad}");
        }
        assert!(Identity::new("td", "a/b", "c").is_err());
    }
}
