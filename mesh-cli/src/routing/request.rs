//! `--request 'METHOD /path?query -H name:value -H ...'`: the request
//! `mesh inspect` routes, as one argument a person types. Pure.
//!
//! Each `-H` stands alone and takes everything up to the next `-H` (or the
//! end) as `name:value`, so a value may hold spaces (`-H user-agent: curl
//! 8`); a value cannot hold a ` -H ` of its own.

use http::{HeaderMap, HeaderName, HeaderValue, Method};

/// A request line plus its headers is far below this; more is a mistake.
const MAX_LEN: usize = 16 * 1024;
/// As many headers as one command line reasonably carries.
const MAX_HEADERS: usize = 64;

/// The parsed request: what the matcher looks at, kept as given.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RequestSpec {
    pub method: Method,
    /// Without the query.
    pub path: String,
    /// The raw query, without `?`; `None` when no `?` was given.
    pub query: Option<String>,
    /// In the order given; a name given twice is one header with two values.
    pub headers: HeaderMap,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RequestError {
    Empty,
    TooLong(usize),
    Method(String),
    LowercaseMethod(String),
    NoPath,
    AbsoluteTarget(String),
    PathNotAbsolute(String),
    Fragment(String),
    PathNotVisibleAscii(String),
    Unexpected(String),
    HeaderMissing,
    HeaderNoColon(String),
    HeaderName(String),
    HeaderValue { name: String, value: String },
    TooManyHeaders(usize),
}

const FORM: &str = "give it as 'METHOD /path?query -H name:value -H ...'";

impl std::fmt::Display for RequestError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RequestError::Empty => write!(f, "--request is empty: {FORM}"),
            RequestError::TooLong(n) => {
                write!(f, "--request is {n} bytes; at most {MAX_LEN} are read")
            }
            RequestError::Method(m) => write!(
                f,
                "--request method {m:?} is not an HTTP method (a token such as GET or POST): {FORM}"
            ),
            RequestError::LowercaseMethod(m) => write!(
                f,
                "--request method {m:?}: methods are case-sensitive; write {}",
                m.to_ascii_uppercase()
            ),
            RequestError::NoPath => write!(f, "--request has a method but no path: {FORM}"),
            RequestError::AbsoluteTarget(t) => write!(
                f,
                "--request target {t:?}: give the path only (e.g. /path?query) and the host as -H host:NAME"
            ),
            RequestError::PathNotAbsolute(t) => {
                write!(f, "--request path {t:?} must start with '/'")
            }
            RequestError::Fragment(t) => write!(
                f,
                "--request target {t:?} has a '#' fragment, which clients never send; drop it"
            ),
            RequestError::PathNotVisibleAscii(t) => write!(
                f,
                "--request target {t:?} must be visible ASCII; percent-encode anything else"
            ),
            RequestError::Unexpected(t) => write!(
                f,
                "--request: unexpected {t:?} after the path; headers go as -H name:value"
            ),
            RequestError::HeaderMissing => {
                write!(f, "--request: -H needs a name:value after it")
            }
            RequestError::HeaderNoColon(h) => {
                write!(
                    f,
                    "--request header {h:?} has no ':'; give it as -H name:value"
                )
            }
            RequestError::HeaderName(n) => {
                write!(f, "--request header name {n:?} is not a valid header name")
            }
            RequestError::HeaderValue { name, value } => write!(
                f,
                "--request header {name}: value {value:?} is not a valid header value (no control characters)"
            ),
            RequestError::TooManyHeaders(n) => {
                write!(
                    f,
                    "--request has {n} headers; at most {MAX_HEADERS} are read"
                )
            }
        }
    }
}

impl std::error::Error for RequestError {}

pub fn parse(text: &str) -> Result<RequestSpec, RequestError> {
    if text.len() > MAX_LEN {
        return Err(RequestError::TooLong(text.len()));
    }
    let text = text.trim();
    if text.is_empty() {
        return Err(RequestError::Empty);
    }
    let (method_text, rest) = split_token(text);
    let method = method(method_text)?;
    let (target, rest) = split_token(rest);
    if target.is_empty() {
        return Err(RequestError::NoPath);
    }
    let (path, query) = target_parts(target)?;
    let headers = headers(rest)?;
    Ok(RequestSpec {
        method,
        path: path.to_owned(),
        query: query.map(str::to_owned),
        headers,
    })
}

/// The first whitespace-separated token and what follows it, trimmed.
fn split_token(text: &str) -> (&str, &str) {
    let text = text.trim_start();
    match text.find(char::is_whitespace) {
        Some(at) => (&text[..at], text[at..].trim_start()),
        None => (text, ""),
    }
}

fn method(text: &str) -> Result<Method, RequestError> {
    const STANDARD: [&str; 9] = [
        "GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH",
    ];
    if STANDARD.contains(&text.to_ascii_uppercase().as_str()) && !STANDARD.contains(&text) {
        return Err(RequestError::LowercaseMethod(text.to_owned()));
    }
    Method::from_bytes(text.as_bytes()).map_err(|_| RequestError::Method(text.to_owned()))
}

fn target_parts(target: &str) -> Result<(&str, Option<&str>), RequestError> {
    if target.contains("://") {
        return Err(RequestError::AbsoluteTarget(target.to_owned()));
    }
    if !target.starts_with('/') {
        return Err(RequestError::PathNotAbsolute(target.to_owned()));
    }
    if target.contains('#') {
        return Err(RequestError::Fragment(target.to_owned()));
    }
    if !target.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(RequestError::PathNotVisibleAscii(target.to_owned()));
    }
    Ok(match target.split_once('?') {
        Some((path, query)) => (path, Some(query)),
        None => (target, None),
    })
}

fn headers(mut rest: &str) -> Result<HeaderMap, RequestError> {
    let mut map = HeaderMap::new();
    let mut count = 0;
    while !rest.is_empty() {
        let (flag, after) = split_token(rest);
        if flag != "-H" {
            return Err(RequestError::Unexpected(flag.to_owned()));
        }
        let (spec, next) = next_header(after);
        if spec.is_empty() {
            return Err(RequestError::HeaderMissing);
        }
        count += 1;
        if count > MAX_HEADERS {
            return Err(RequestError::TooManyHeaders(count));
        }
        let Some((name, value)) = spec.split_once(':') else {
            return Err(RequestError::HeaderNoColon(spec.to_owned()));
        };
        let name_text = name.trim();
        let name = HeaderName::from_bytes(name_text.as_bytes())
            .map_err(|_| RequestError::HeaderName(name_text.to_owned()))?;
        let value_text = value.trim();
        let value = HeaderValue::from_str(value_text).map_err(|_| RequestError::HeaderValue {
            name: name.to_string(),
            value: value_text.to_owned(),
        })?;
        map.append(name, value);
        rest = next;
    }
    Ok(map)
}

/// The text of one header, up to the next `-H` that stands alone.
fn next_header(text: &str) -> (&str, &str) {
    let mut at = 0;
    while let Some(found) = text[at..].find("-H") {
        let start = at + found;
        let end = start + 2;
        let before_ok = start == 0 || text[..start].ends_with(char::is_whitespace);
        let after_ok = text[end..].is_empty() || text[end..].starts_with(char::is_whitespace);
        if before_ok && after_ok {
            return (text[..start].trim(), &text[start..]);
        }
        at = end;
    }
    (text.trim(), "")
}

impl RequestSpec {
    /// The query as (name, value) pairs in order, split on `&` and the
    /// first `=`, compared as sent (no percent-decoding); empty pieces
    /// (`a=1&&b=2`) are skipped and a bare name has the empty value.
    pub fn query_pairs(&self) -> Vec<(&str, &str)> {
        mesh_route::uri::query_pairs(self.query.as_deref())
    }

    /// The `host` header without its port, if given.
    pub fn host(&self) -> Option<&str> {
        let host = self.headers.get(http::header::HOST)?.to_str().ok()?;
        Some(mesh_route::uri::host_of(host))
    }

    /// The request as it reads back: `GET /p?q -H name:value`.
    pub fn line(&self) -> String {
        let mut out = format!("{} {}", self.method, self.path);
        if let Some(q) = &self.query {
            out.push('?');
            out.push_str(q);
        }
        for (name, value) in &self.headers {
            out.push_str(&format!(
                " -H {name}:{}",
                String::from_utf8_lossy(value.as_bytes())
            ));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(text: &str) -> String {
        parse(text).unwrap_err().to_string()
    }

    #[test]
    fn method_path_query_and_headers() {
        let r = parse("GET /api/v1?tier=gold&x -H x-env: prod -H User-Agent: curl 8 -H x-env:dev")
            .unwrap();
        assert_eq!(r.method, Method::GET);
        assert_eq!(r.path, "/api/v1");
        assert_eq!(r.query.as_deref(), Some("tier=gold&x"));
        assert_eq!(r.query_pairs(), [("tier", "gold"), ("x", "")]);
        let env: Vec<_> = r.headers.get_all("x-env").iter().collect();
        assert_eq!(env, ["prod", "dev"]);
        // Values keep inner spaces; names are case-insensitive.
        assert_eq!(r.headers["user-agent"], "curl 8");
        assert_eq!(
            r.line(),
            "GET /api/v1?tier=gold&x -H x-env:prod -H x-env:dev -H user-agent:curl 8"
        );
    }

    #[test]
    fn minimal_and_odd_but_valid_requests() {
        let r = parse("  POST   /pkg.Echo/Say  ").unwrap();
        assert_eq!(
            (r.method, r.path.as_str(), r.query),
            (Method::POST, "/pkg.Echo/Say", None)
        );
        assert!(r.headers.is_empty());
        // An empty query and empty pieces.
        let r = parse("GET /?").unwrap();
        assert_eq!(r.query.as_deref(), Some(""));
        assert!(r.query_pairs().is_empty());
        assert_eq!(
            parse("GET /?a=1&&b=x=y").unwrap().query_pairs(),
            [("a", "1"), ("b", "x=y")]
        );
        // An extension method is a method; a value may contain "-H" inside a word.
        let r = parse("PURGE /x -H x-flag:a-H-b").unwrap();
        assert_eq!(r.method.as_str(), "PURGE");
        assert_eq!(r.headers["x-flag"], "a-H-b");
        // An empty value is a value.
        assert_eq!(parse("GET / -H x-empty:").unwrap().headers["x-empty"], "");
    }

    #[test]
    fn host_without_port() {
        let host = |h: &str| {
            parse(&format!("GET / -H host:{h}"))
                .unwrap()
                .host()
                .map(str::to_owned)
        };
        assert_eq!(host("web.shop").as_deref(), Some("web.shop"));
        assert_eq!(host("web.shop:8080").as_deref(), Some("web.shop"));
        assert_eq!(host("[fd00::1]:80").as_deref(), Some("fd00::1"));
        assert_eq!(host("[fd00::1]").as_deref(), Some("fd00::1"));
        assert_eq!(parse("GET /").unwrap().host(), None);
    }

    #[test]
    fn errors_name_what_is_wrong() {
        assert!(err("   ").contains("--request is empty"));
        assert!(err("GET").contains("no path"));
        assert!(err("get /x").contains("write GET"));
        assert!(err("G(T /x").contains("\"G(T\" is not an HTTP method"));
        assert!(err("GET http://web/x").contains("give the path only"));
        assert!(err("GET x/y").contains("must start with '/'"));
        assert!(err("GET /x#top").contains("fragment"));
        assert!(err("GET /x extra").contains("unexpected \"extra\""));
        assert!(err("GET /x -H").contains("-H needs a name:value"));
        assert!(err("GET /x -H -H a:b").contains("-H needs a name:value"));
        assert!(err("GET /x -H novalue").contains("\"novalue\" has no ':'"));
        assert!(err("GET /x -H bad name:1").contains("\"bad name\" is not a valid header name"));
        assert!(err("GET /x -H :1").contains("\"\" is not a valid header name"));
        assert!(
            err("GET /x -H a:b\u{7}c")
                .contains("header a: value \"b\\u{7}c\" is not a valid header value")
        );
        assert!(err("GET /é").contains("visible ASCII"));
        let many: String = (0..65).map(|i| format!(" -H h{i}:v")).collect();
        assert!(err(&format!("GET /{many}")).contains("65 headers"));
        assert!(err(&format!("GET /{}", "a".repeat(MAX_LEN))).contains("at most 16384"));
    }
}
