//! URLRewrite: the path and authority a request is sent on with.

use crate::compile::{PathModifier, Rewrite};

/// The path after a path modifier. `prefix` is the PathPrefix the request
/// matched, stored without its trailing `/`; ReplacePrefixMatch swaps whole
/// elements, per the table in the HTTPPathModifier documentation (`/foo/bar`
/// with prefix `/foo` and replacement `/xyz/` gives `/xyz/bar`; an empty
/// result is `/`).
pub fn modify_path(modifier: &PathModifier, prefix: Option<&str>, path: &str) -> String {
    match modifier {
        PathModifier::ReplaceFullPath(full) => full.clone(),
        PathModifier::ReplacePrefixMatch(replacement) => {
            // compile refuses ReplacePrefixMatch unless the rule's only match
            // is a PathPrefix, so `prefix` is there; without it the path is
            // left as sent rather than guessed at.
            let Some(prefix) = prefix else {
                return path.to_string();
            };
            let rest = path.strip_prefix(prefix).unwrap_or(path);
            let mut out = replacement.trim_end_matches('/').to_string();
            out.push_str(rest);
            if out.is_empty() {
                out.push('/');
            }
            out
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rewritten {
    /// The new path, without query (the caller keeps the request's query).
    pub path: Option<String>,
    /// The new authority (Host / `:authority`), port left out as the route
    /// gives a hostname only.
    pub authority: Option<String>,
}

pub fn rewrite(rewrite: &Rewrite, prefix: Option<&str>, path: &str) -> Rewritten {
    Rewritten {
        path: rewrite.path.as_ref().map(|m| modify_path(m, prefix, path)),
        authority: rewrite.hostname.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn prefix(p: &str) -> String {
        p.trim_end_matches('/').to_string()
    }

    #[test]
    fn replace_prefix_match_table_from_the_spec() {
        // HTTPPathModifier's documentation (apis/v1/httproute_types.go).
        let cases = [
            ("/foo/bar", "/foo", "/xyz", "/xyz/bar"),
            ("/foo/bar", "/foo", "/xyz/", "/xyz/bar"),
            ("/foo/bar", "/foo/", "/xyz", "/xyz/bar"),
            ("/foo/bar", "/foo/", "/xyz/", "/xyz/bar"),
            ("/foo", "/foo", "/xyz", "/xyz"),
            ("/foo/", "/foo", "/xyz", "/xyz/"),
            ("/foo/bar", "/foo", "", "/bar"),
            ("/foo/", "/foo", "", "/"),
            ("/foo", "/foo", "", "/"),
            ("/foo/", "/foo", "/", "/"),
            ("/foo", "/foo", "/", "/"),
            ("/anything", "/", "/xyz", "/xyz/anything"),
        ];
        for (path, matched, replacement, want) in cases {
            let m = PathModifier::ReplacePrefixMatch(replacement.to_string());
            assert_eq!(
                modify_path(&m, Some(&prefix(matched)), path),
                want,
                "{path} {matched} {replacement:?}"
            );
        }
    }

    #[test]
    fn conformance_rewrite_path() {
        // conformance/tests/httproute-rewrite-path.go (kubernetes-sigs/gateway-api).
        let cases = [
            (
                "/prefix/one/two",
                PathModifier::ReplacePrefixMatch("/".into()),
                "/prefix",
                "/one/two",
            ),
            (
                "/full/one/two",
                PathModifier::ReplaceFullPath("/one".into()),
                "/full",
                "/one",
            ),
            (
                "/full/rewrite-path-and-modify-headers/test",
                PathModifier::ReplacePrefixMatch("/".into()),
                "/full/rewrite-path-and-modify-headers",
                "/test",
            ),
            (
                "/prefix/rewrite-path-and-modify-headers/one",
                PathModifier::ReplacePrefixMatch("/prefix".into()),
                "/prefix/rewrite-path-and-modify-headers",
                "/prefix/one",
            ),
        ];
        for (path, m, matched, want) in cases {
            let r = Rewrite {
                hostname: None,
                path: Some(m),
            };
            assert_eq!(
                rewrite(&r, Some(matched), path).path.as_deref(),
                Some(want),
                "{path}"
            );
        }
    }

    #[test]
    fn hostname_only() {
        let r = Rewrite {
            hostname: Some("one.example.org".into()),
            path: None,
        };
        assert_eq!(
            rewrite(&r, Some(""), "/x"),
            Rewritten {
                path: None,
                authority: Some("one.example.org".into())
            }
        );
    }
}
