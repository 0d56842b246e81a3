//! What the echo reports of one request it received, as text.
//!
//! The format is the body of Istio's echo server (the `echo-advanced`
//! image the Gateway API mesh conformance deploys): one `Key=Value` line
//! per fact, `RequestHeader=Name:value` once per header value, the pod's
//! name as `Hostname`. The conformance suite reads it with one regular
//! expression per key (conformance/utils/echo/parse.go), so a body written
//! here reads the same there; and it is plain enough that the Rust side
//! parses it with `split_once`. The keys kept are those a routing test
//! asserts on; Istio's `ServiceVersion`, `Cluster`, `IstioVersion` and
//! `Alpn` carry nothing on the test bed (no version flag, one cluster, no
//! TLS to the echo) and are left out. `Namespace` is Istio's key too (its
//! gRPC answer writes it).
//!
//! Values are escaped (`\\`, `\n`, `\r`) so that any string, a gRPC
//! message included, survives the line format; header values cannot hold
//! those bytes, so what the conformance parser sees for them is verbatim.
use std::net::IpAddr;

use serde::{Deserialize, Serialize};

/// One request as the echo saw it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EchoResponse {
    /// `Hostname`: the pod that answered (the conformance's `Backend`
    /// prefix is matched against it).
    pub pod: String,
    /// `Namespace`: the pod's namespace.
    pub namespace: String,
    /// `Host`: the Host header (HTTP/1.1) or `:authority` (HTTP/2, gRPC).
    pub host: String,
    /// `URL`: the request target as received: path and query for HTTP,
    /// the method's path for gRPC.
    pub url: String,
    /// `Method`: the HTTP method (POST for gRPC).
    pub method: String,
    /// `Proto`: `HTTP/1.1`, `HTTP/2.0`, or `GRPC` for a gRPC call.
    pub proto: String,
    /// `ServicePort`: the port the request arrived on; absent from
    /// Gateway API's GrpcEcho answer, which does not carry it.
    pub port: Option<u16>,
    /// `IP`: the peer that sent it; absent from GrpcEcho's answer.
    pub ip: Option<IpAddr>,
    /// `RequestHeader`: every header value, in the echo's order (by
    /// name, then as received).
    pub request_headers: Vec<(String, String)>,
    /// `Echo`: the message of Istio's gRPC `Echo` call.
    pub message: Option<String>,
}

/// Why a body is not an echo report.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("echo report line {line}: {text:?} is not Key=Value")]
    NotKeyValue { line: usize, text: String },
    #[error("echo report line {line}: {key} appears a second time")]
    Repeated { line: usize, key: &'static str },
    #[error("echo report line {line}: {key}={value:?}: {problem}")]
    Invalid {
        line: usize,
        key: &'static str,
        value: String,
        problem: String,
    },
    #[error("echo report: no {0} line (is this body from the echo?)")]
    Missing(&'static str),
}

const HOSTNAME: &str = "Hostname";
const NAMESPACE: &str = "Namespace";
const HOST: &str = "Host";
const URL: &str = "URL";
const METHOD: &str = "Method";
const PROTO: &str = "Proto";
const PORT: &str = "ServicePort";
const IP: &str = "IP";
const REQUEST_HEADER: &str = "RequestHeader";
const MESSAGE: &str = "Echo";

impl EchoResponse {
    /// The report's text, one line per field, in Istio's order (the
    /// request's facts, its headers, then who answered).
    pub fn render(&self) -> String {
        let mut out = String::new();
        let mut line = |key: &str, value: &str| {
            out.push_str(key);
            out.push('=');
            escape_into(&mut out, value);
            out.push('\n');
        };
        if let Some(port) = self.port {
            line(PORT, &port.to_string());
        }
        line(HOST, &self.host);
        line(URL, &self.url);
        line(METHOD, &self.method);
        line(PROTO, &self.proto);
        if let Some(ip) = self.ip {
            line(IP, &ip.to_string());
        }
        for (name, value) in &self.request_headers {
            line(REQUEST_HEADER, &format!("{name}:{value}"));
        }
        if let Some(m) = &self.message {
            line(MESSAGE, m);
        }
        line(NAMESPACE, &self.namespace);
        line(HOSTNAME, &self.pod);
        out
    }

    /// Reads a report. Keys it does not know are skipped, as the
    /// conformance parser skips them (Istio's echo writes more than this
    /// one); a known key given twice, or with a value of the wrong shape,
    /// is an error naming the line.
    pub fn parse(text: &str) -> Result<Self, ParseError> {
        let mut pod = None;
        let mut namespace = None;
        let mut host = None;
        let mut url = None;
        let mut method = None;
        let mut proto = None;
        let mut port = None;
        let mut ip = None;
        let mut message = None;
        let mut request_headers = Vec::new();
        for (i, raw) in text.lines().enumerate() {
            let line = i + 1;
            if raw.is_empty() {
                continue;
            }
            let Some((key, value)) = raw.split_once('=') else {
                return Err(ParseError::NotKeyValue {
                    line,
                    text: raw.to_owned(),
                });
            };
            let value = unescape(value);
            let once = |slot: &mut Option<String>, key: &'static str| {
                if slot.replace(value.clone()).is_some() {
                    return Err(ParseError::Repeated { line, key });
                }
                Ok(())
            };
            let invalid = |key: &'static str, problem: String| ParseError::Invalid {
                line,
                key,
                value: value.clone(),
                problem,
            };
            match key {
                HOSTNAME => once(&mut pod, HOSTNAME)?,
                NAMESPACE => once(&mut namespace, NAMESPACE)?,
                HOST => once(&mut host, HOST)?,
                URL => once(&mut url, URL)?,
                METHOD => once(&mut method, METHOD)?,
                PROTO => once(&mut proto, PROTO)?,
                MESSAGE => once(&mut message, MESSAGE)?,
                PORT => {
                    let p = value
                        .parse::<u16>()
                        .map_err(|e| invalid(PORT, e.to_string()))?;
                    if port.replace(p).is_some() {
                        return Err(ParseError::Repeated { line, key: PORT });
                    }
                }
                IP => {
                    let a = value
                        .parse::<IpAddr>()
                        .map_err(|e| invalid(IP, e.to_string()))?;
                    if ip.replace(a).is_some() {
                        return Err(ParseError::Repeated { line, key: IP });
                    }
                }
                REQUEST_HEADER => {
                    // A pseudo-header (gRPC's `:authority`) keeps its
                    // leading colon: the name ends at the next one.
                    let (pseudo, text) = match value.strip_prefix(':') {
                        Some(rest) => (":", rest),
                        None => ("", value.as_str()),
                    };
                    let (name, v) = text
                        .split_once(':')
                        .ok_or_else(|| invalid(REQUEST_HEADER, "expected Name:value".to_owned()))?;
                    request_headers.push((format!("{pseudo}{name}"), v.to_owned()));
                }
                _ => {}
            }
        }
        Ok(Self {
            pod: pod.ok_or(ParseError::Missing(HOSTNAME))?,
            namespace: namespace.ok_or(ParseError::Missing(NAMESPACE))?,
            host: host.ok_or(ParseError::Missing(HOST))?,
            url: url.ok_or(ParseError::Missing(URL))?,
            method: method.ok_or(ParseError::Missing(METHOD))?,
            proto: proto.ok_or(ParseError::Missing(PROTO))?,
            port,
            ip,
            request_headers,
            message,
        })
    }

    /// The values of header `name` (any case) joined with `,`: what the
    /// conformance compares an expected request header with
    /// (`strings.Join(actualVal, ",")`), so `add` appending a second
    /// field and a proxy folding both into one compare the same. None
    /// when the request had no such header.
    pub fn header(&self, name: &str) -> Option<String> {
        let values: Vec<&str> = self
            .request_headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect();
        (!values.is_empty()).then(|| values.join(","))
    }

    /// The path the echo received, without the query.
    pub fn path(&self) -> &str {
        self.url.split_once('?').map_or(&self.url, |(p, _)| p)
    }
}

/// Go's `CanonicalMIMEHeaderKey`, which is how Istio's echo (a Go HTTP
/// server) writes header names: `x-header-set` → `X-Header-Set`. A name
/// with a byte outside the token set is left as it is, as Go leaves it.
pub fn canonical_header_name(name: &str) -> String {
    let token = |b: u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b);
    if !name.bytes().all(token) {
        return name.to_owned();
    }
    let mut upper = true;
    name.chars()
        .map(|c| {
            let out = if upper {
                c.to_ascii_uppercase()
            } else {
                c.to_ascii_lowercase()
            };
            upper = c == '-';
            out
        })
        .collect()
}

fn escape_into(out: &mut String, value: &str) {
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            c => out.push(c),
        }
    }
}

/// The inverse of [`escape_into`]; a backslash before anything else is
/// kept as it is, so text from another echo reads unchanged.
fn unescape(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    let mut chars = value.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('\\') => out.push('\\'),
            Some('n') => out.push('\n'),
            Some('r') => out.push('\r'),
            Some(other) => {
                out.push('\\');
                out.push(other);
            }
            None => out.push('\\'),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> EchoResponse {
        EchoResponse {
            pod: "echo-v1-0".into(),
            namespace: "gateway-conformance-mesh".into(),
            host: "echo".into(),
            url: "/add?animal=whale".into(),
            method: "GET".into(),
            proto: "HTTP/1.1".into(),
            port: Some(8080),
            ip: Some("10.244.0.10".parse().unwrap()),
            request_headers: vec![
                (":authority".into(), "echo:7070".into()),
                ("Authorization".into(), "Bearer a:b:c".into()),
                ("X-Header-Add".into(), "some-other-value".into()),
                ("X-Header-Add".into(), "add-appends-values".into()),
            ],
            message: None,
        }
    }

    #[test]
    fn the_text_is_istios_key_value_lines() {
        assert_eq!(
            sample().render(),
            "ServicePort=8080\nHost=echo\nURL=/add?animal=whale\nMethod=GET\n\
             Proto=HTTP/1.1\nIP=10.244.0.10\nRequestHeader=:authority:echo:7070\n\
             RequestHeader=Authorization:Bearer a:b:c\n\
             RequestHeader=X-Header-Add:some-other-value\n\
             RequestHeader=X-Header-Add:add-appends-values\n\
             Namespace=gateway-conformance-mesh\nHostname=echo-v1-0\n"
        );
    }

    #[test]
    fn what_is_rendered_parses_back_the_same() {
        let r = sample();
        assert_eq!(EchoResponse::parse(&r.render()).unwrap(), r);
        let grpc = EchoResponse {
            proto: "GRPC".into(),
            port: None,
            ip: None,
            message: Some("two\nlines \\ and\r a backslash".into()),
            ..sample()
        };
        assert_eq!(EchoResponse::parse(&grpc.render()).unwrap(), grpc);
    }

    #[test]
    fn headers_compare_as_the_conformance_does() {
        let r = sample();
        assert_eq!(
            r.header("x-header-add").as_deref(),
            Some("some-other-value,add-appends-values")
        );
        // Everything after the first colon is the value.
        assert_eq!(r.header("AUTHORIZATION").as_deref(), Some("Bearer a:b:c"));
        assert_eq!(r.header("x-header-remove"), None);
        assert_eq!(r.header(":authority").as_deref(), Some("echo:7070"));
        assert_eq!(r.path(), "/add");
    }

    #[test]
    fn istios_own_answer_parses_with_its_extra_keys_skipped() {
        // The shape of echo-advanced's HTTP body (pkg/test/echo/server/endpoint/http.go).
        let istio = "ServiceVersion=\nServicePort=8080\nHost=echo-v2\nURL=/\nCluster=\n\
                     IstioVersion=\nMethod=GET\nProto=HTTP/1.1\nIP=10.244.1.7\nAlpn=\n\
                     RequestHeader=User-Agent:Go-http-client/1.1\nNamespace=ns\n\
                     Hostname=echo-v2-6d4f9c7b8-x2x5q\n";
        let r = EchoResponse::parse(istio).unwrap();
        assert_eq!(r.pod, "echo-v2-6d4f9c7b8-x2x5q");
        assert_eq!(r.host, "echo-v2");
        assert_eq!(
            r.header("user-agent").as_deref(),
            Some("Go-http-client/1.1")
        );
    }

    #[test]
    fn bad_reports_are_refused_naming_the_line() {
        let text = sample().render();
        assert_eq!(
            EchoResponse::parse("no healthy upstream"),
            Err(ParseError::NotKeyValue {
                line: 1,
                text: "no healthy upstream".into()
            })
        );
        assert!(matches!(
            EchoResponse::parse(&format!("{text}Hostname=other\n")),
            Err(ParseError::Repeated {
                key: "Hostname",
                ..
            })
        ));
        assert!(matches!(
            EchoResponse::parse(&text.replace("ServicePort=8080", "ServicePort=80800")),
            Err(ParseError::Invalid {
                line: 1,
                key: "ServicePort",
                ..
            })
        ));
        assert!(matches!(
            EchoResponse::parse(&format!("{text}RequestHeader=no-colon\n")),
            Err(ParseError::Invalid {
                key: "RequestHeader",
                ..
            })
        ));
        assert_eq!(
            EchoResponse::parse(&text.replace("Hostname=echo-v1-0\n", "")),
            Err(ParseError::Missing("Hostname"))
        );
    }

    #[test]
    fn header_names_are_written_as_go_writes_them() {
        assert_eq!(canonical_header_name("x-header-set"), "X-Header-Set");
        assert_eq!(canonical_header_name("X-HEADER-SET"), "X-Header-Set");
        assert_eq!(canonical_header_name("content-type"), "Content-Type");
        assert_eq!(canonical_header_name("bad name"), "bad name");
    }
}
