//! One value per request (or per TCP stream) that the waypoint served:
//! what was asked, where it went, how it ended. Written to the access log
//! as one JSON line (target `access`), and kept whole so that metrics and
//! spans can be made from the same value.
use std::{net::SocketAddr, time::Duration};

use serde::Serialize;
use tracing::info;

use crate::{headers::TraceContext, protocol::Protocol};

/// Envoy's response flags, for the cases the waypoint meets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum ResponseFlag {
    /// No ready endpoint (503).
    #[serde(rename = "UH")]
    NoHealthyUpstream,
    /// The upstream could not be reached (503).
    #[serde(rename = "UF")]
    UpstreamConnectFailure,
    /// The upstream reset or closed the request's stream (502 when no
    /// response had started).
    #[serde(rename = "UR")]
    UpstreamReset,
    /// No response within the deadline (504).
    #[serde(rename = "UT")]
    UpstreamTimeout,
    /// The client's stream ended before the response did.
    #[serde(rename = "DC")]
    DownstreamReset,
    /// The authority names nothing this waypoint serves (404).
    #[serde(rename = "NR")]
    NoRoute,
    /// The request could not be parsed (400).
    #[serde(rename = "DPE")]
    DownstreamProtocolError,
}

impl ResponseFlag {
    pub fn code(self) -> &'static str {
        match self {
            Self::NoHealthyUpstream => "UH",
            Self::UpstreamConnectFailure => "UF",
            Self::UpstreamReset => "UR",
            Self::UpstreamTimeout => "UT",
            Self::DownstreamReset => "DC",
            Self::NoRoute => "NR",
            Self::DownstreamProtocolError => "DPE",
        }
    }
}

/// Flags joined as Envoy prints them (`UF,URX`), `-` when none.
pub fn flags_text(flags: &[ResponseFlag]) -> String {
    if flags.is_empty() {
        "-".to_owned()
    } else {
        flags.iter().map(|f| f.code()).collect::<Vec<_>>().join(",")
    }
}

/// Who sent the request, as far as the waypoint can tell.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Client {
    /// The HBONE peer's address.
    pub peer: Option<SocketAddr>,
    /// The identity the HBONE peer's certificate proved.
    pub identity: Option<String>,
    /// `<namespace>/<name>` of the pod at the peer's address, if known.
    pub workload: Option<String>,
}

/// One request through the waypoint, as it ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RequestRecord {
    pub protocol: Protocol,
    /// Absent for TCP streams.
    pub method: Option<String>,
    /// The request's authority (`Host` or `:authority`), else the CONNECT's.
    pub authority: String,
    pub path: Option<String>,
    /// 0 when no response was sent (a TCP stream, a reset).
    pub status: u16,
    #[serde(serialize_with = "millis")]
    pub duration: Duration,
    pub request_bytes: u64,
    pub response_bytes: u64,
    pub upstream: Option<SocketAddr>,
    pub client: Client,
    pub destination_service: Option<String>,
    pub destination_workload: Option<String>,
    pub route: String,
    pub attempts: u32,
    pub grpc_status: Option<String>,
    pub flags: Vec<ResponseFlag>,
    pub trace: Option<TraceContext>,
}

fn millis<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(d.as_secs_f64() * 1000.0)
}

/// The route name when no route object matched: the Service itself.
pub const DEFAULT_ROUTE: &str = "default";

impl RequestRecord {
    /// A record for a request to `authority`, before anything happened.
    pub fn new(protocol: Protocol, authority: String, client: Client) -> Self {
        Self {
            protocol,
            method: None,
            authority,
            path: None,
            status: 0,
            duration: Duration::ZERO,
            request_bytes: 0,
            response_bytes: 0,
            upstream: None,
            client,
            destination_service: None,
            destination_workload: None,
            route: DEFAULT_ROUTE.to_owned(),
            attempts: 0,
            grpc_status: None,
            flags: Vec::new(),
            trace: None,
        }
    }

    pub fn flag(&mut self, flag: ResponseFlag) {
        if !self.flags.contains(&flag) {
            self.flags.push(flag);
        }
    }

    /// The access log line.
    pub fn log(&self) {
        let text = |v: &Option<String>| v.clone().unwrap_or_else(|| "-".to_owned());
        info!(
            target: "access",
            protocol = self.protocol.as_str(),
            method = %text(&self.method),
            authority = %self.authority,
            path = %text(&self.path),
            status = self.status,
            duration_ms = self.duration.as_secs_f64() * 1000.0,
            request_bytes = self.request_bytes,
            response_bytes = self.response_bytes,
            upstream = %self.upstream.map_or_else(|| "-".to_owned(), |a| a.to_string()),
            client_identity = %text(&self.client.identity),
            client_address = %self.client.peer.map_or_else(|| "-".to_owned(), |a| a.to_string()),
            source_workload = %text(&self.client.workload),
            destination_service = %text(&self.destination_service),
            destination_workload = %text(&self.destination_workload),
            route = %self.route,
            attempts = self.attempts,
            grpc_status = %text(&self.grpc_status),
            response_flags = %flags_text(&self.flags),
            trace_id = %self.trace.as_ref().map_or("-", |t| t.trace_id.as_str()),
            span_id = %self.trace.as_ref().map_or("-", |t| t.span_id.as_str()),
            "request"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_print_as_envoy_does() {
        assert_eq!(flags_text(&[]), "-");
        assert_eq!(
            flags_text(&[
                ResponseFlag::UpstreamConnectFailure,
                ResponseFlag::NoHealthyUpstream
            ]),
            "UF,UH"
        );
    }

    #[test]
    fn a_record_serializes_with_flag_codes_and_milliseconds() {
        let mut r = RequestRecord::new(
            Protocol::Http1,
            "web.shop:80".into(),
            Client {
                identity: Some("spiffe://cluster.local/ns/shop/sa/client".into()),
                ..Client::default()
            },
        );
        r.flag(ResponseFlag::UpstreamReset);
        r.flag(ResponseFlag::UpstreamReset);
        r.duration = Duration::from_micros(1500);
        let v = serde_json::to_value(&r).unwrap();
        assert_eq!(v["flags"], serde_json::json!(["UR"]));
        assert_eq!(v["duration"], serde_json::json!(1.5));
        assert_eq!(v["protocol"], "http1");
        assert_eq!(v["route"], "default");
        assert_eq!(
            v["client"]["identity"],
            "spiffe://cluster.local/ns/shop/sa/client"
        );
    }
}
