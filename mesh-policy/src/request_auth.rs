//! What a verified JWT says about a request: the facts Istio names
//! `request.auth.*`. RequestAuthentication produces them at the waypoint;
//! L7 AuthorizationPolicy reads them (`requestPrincipals`, and `when` keys
//! `request.auth.principal`, `.audiences`, `.presenter`, `.claims[...]`).
use serde_json::{Map, Value};

#[derive(Debug, Clone, PartialEq, Default)]
pub struct RequestAuth {
    /// `<iss>/<sub>`, as Istio writes a request principal.
    pub principal: String,
    /// The token's `aud`, one entry per audience.
    pub audiences: Vec<String>,
    /// The token's `azp`, when it has one.
    pub presenter: Option<String>,
    /// Every claim of the token's payload.
    pub claims: Map<String, Value>,
}

impl RequestAuth {
    /// The values of the claim at `path` (Istio's `request.auth.claims[a][b]`
    /// names nested claims): a string gives itself, a list of strings gives
    /// each entry, anything else gives nothing.
    pub fn claim(&self, path: &[&str]) -> Vec<&str> {
        let Some((first, rest)) = path.split_first() else {
            return Vec::new();
        };
        let mut value = self.claims.get(*first);
        for key in rest {
            value = value.and_then(|v| v.get(key));
        }
        match value {
            Some(Value::String(s)) => vec![s.as_str()],
            Some(Value::Array(items)) => items.iter().filter_map(Value::as_str).collect(),
            _ => Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn claims_are_read_by_path_as_strings_or_lists_of_strings() {
        let Value::Object(claims) = json!({
            "groups": ["dev", "ops", 3],
            "org": {"team": "payments"},
            "n": 7,
        }) else {
            unreachable!()
        };
        let auth = RequestAuth {
            claims,
            ..Default::default()
        };
        assert_eq!(auth.claim(&["groups"]), ["dev", "ops"]);
        assert_eq!(auth.claim(&["org", "team"]), ["payments"]);
        assert!(auth.claim(&["n"]).is_empty());
        assert!(auth.claim(&["org", "missing"]).is_empty());
        assert!(auth.claim(&[]).is_empty());
    }
}
