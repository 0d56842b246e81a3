//! The parts of a request's URI and authority that matching and redirects
//! read, split the same way wherever a request is routed (the waypoint)
//! or explained (`mesh inspect --request`).

/// The query as (name, value) pairs in order, split on `&` and the first
/// `=`; empty pieces (`a=1&&b=2`) are skipped and a bare name has the
/// empty value. Not percent-decoded: Gateway API compares values as sent.
pub fn query_pairs(query: Option<&str>) -> Vec<(&str, &str)> {
    query
        .into_iter()
        .flat_map(|q| q.split('&'))
        .filter(|p| !p.is_empty())
        .map(|p| p.split_once('=').unwrap_or((p, "")))
        .collect()
}

/// The host of an authority without its port: `host:80` → `host`,
/// `[::1]:80` and `[::1]` → `::1`; a bare IPv6 address stays whole.
pub fn host_of(authority: &str) -> &str {
    if let Some(rest) = authority.strip_prefix('[') {
        return rest.split_once(']').map_or(rest, |(h, _)| h);
    }
    match authority.rsplit_once(':') {
        Some((h, port)) if !h.contains(':') && port.bytes().all(|b| b.is_ascii_digit()) => h,
        _ => authority,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_pairs_in_order_as_sent() {
        assert_eq!(
            query_pairs(Some("a=1&&b&c=x=y&a=%20")),
            [("a", "1"), ("b", ""), ("c", "x=y"), ("a", "%20")]
        );
        assert!(query_pairs(None).is_empty());
        assert!(query_pairs(Some("")).is_empty());
    }

    #[test]
    fn hosts_without_ports() {
        for (authority, host) in [
            ("web.shop:80", "web.shop"),
            ("web.shop", "web.shop"),
            ("[::1]:80", "::1"),
            ("[::1]", "::1"),
            ("::1", "::1"),
            ("10.0.0.1:8080", "10.0.0.1"),
            ("odd:port", "odd:port"),
        ] {
            assert_eq!(host_of(authority), host, "{authority}");
        }
    }
}
