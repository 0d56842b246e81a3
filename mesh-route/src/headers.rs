//! RequestHeaderModifier / ResponseHeaderModifier on a header map.

use http::HeaderMap;

use crate::compile::HeaderModifier;

/// `set` replaces every value of a header, `add` appends a value (a header
/// absent before is created), `remove` drops the header. Applied in that
/// order, so a header both added and removed ends up absent.
pub fn apply(m: &HeaderModifier, headers: &mut HeaderMap) {
    for (name, value) in &m.set {
        headers.insert(name.clone(), value.clone());
    }
    for (name, value) in &m.add {
        headers.append(name.clone(), value.clone());
    }
    for name in &m.remove {
        headers.remove(name);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::{HeaderName, HeaderValue};

    fn pair(n: &str, v: &str) -> (HeaderName, HeaderValue) {
        (
            HeaderName::from_bytes(n.as_bytes()).unwrap(),
            HeaderValue::from_str(v).unwrap(),
        )
    }

    #[test]
    fn conformance_rewrite_path_and_modify_headers() {
        // conformance/tests/httproute-rewrite-path.go (kubernetes-sigs/gateway-api):
        // request headers before and after the route's RequestHeaderModifier.
        let m = HeaderModifier {
            set: vec![pair("X-Header-Set", "set-overwrites-values")],
            add: vec![
                pair("X-Header-Add", "header-val-1"),
                pair("X-Header-Add-Append", "header-val-2"),
            ],
            remove: vec![HeaderName::from_static("x-header-remove")],
        };
        let mut h = HeaderMap::new();
        h.insert("x-header-remove", HeaderValue::from_static("remove-val"));
        h.insert(
            "x-header-add-append",
            HeaderValue::from_static("append-val-1"),
        );
        h.insert("x-header-set", HeaderValue::from_static("set-val"));
        h.append("x-header-set", HeaderValue::from_static("set-val-2"));
        apply(&m, &mut h);
        let all = |n: &str| {
            h.get_all(n)
                .iter()
                .map(|v| v.to_str().unwrap().to_string())
                .collect::<Vec<_>>()
        };
        assert_eq!(all("x-header-set"), ["set-overwrites-values"]);
        assert_eq!(all("x-header-add"), ["header-val-1"]);
        assert_eq!(all("x-header-add-append"), ["append-val-1", "header-val-2"]);
        assert!(h.get("x-header-remove").is_none());
    }

    #[test]
    fn added_then_removed_is_absent() {
        let m = HeaderModifier {
            set: vec![],
            add: vec![pair("x-a", "1")],
            remove: vec![HeaderName::from_static("x-a")],
        };
        let mut h = HeaderMap::new();
        apply(&m, &mut h);
        assert!(h.is_empty());
    }
}
