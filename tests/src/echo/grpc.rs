//! The two gRPC echo services the conformance suites call, their messages
//! (prost's derive, written from the published protos: no protoc), and
//! gRPC's length-prefixed framing.
//!
//! - Istio's `proto.EchoTestService/Echo` (istio/istio
//!   pkg/test/echo/proto/echo.proto): what the mesh suite's GRPCRoute
//!   cases call, through the Istio echo client `grpc://echo:7070`. The
//!   answer's `message` is the same text report as the HTTP body.
//! - Gateway API's `gateway_api_conformance.echo_basic.grpcecho.GrpcEcho`
//!   (kubernetes-sigs/gateway-api-conformance-images
//!   echo-basic/grpcecho.proto): `Echo` and `EchoTwo` answer with the
//!   request's metadata and the pod's context; `EchoThree` is
//!   deliberately unimplemented. The GRPCRoute method-matching cases tell
//!   methods apart with it.
use bytes::{BufMut, Bytes, BytesMut};
use serde::{Deserialize, Serialize};

use super::report::EchoResponse;

/// Istio's echo method.
pub const ISTIO_ECHO_PATH: &str = "/proto.EchoTestService/Echo";
/// Gateway API's echo service, fully qualified.
pub const GRPC_ECHO_SERVICE: &str = "gateway_api_conformance.echo_basic.grpcecho.GrpcEcho";

/// A method of either service.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Method {
    /// `proto.EchoTestService/Echo`.
    IstioEcho,
    /// `GrpcEcho/Echo`.
    Echo,
    /// `GrpcEcho/EchoTwo`.
    EchoTwo,
    /// `GrpcEcho/EchoThree`: answered UNIMPLEMENTED, as upstream.
    EchoThree,
}

impl Method {
    /// The HTTP/2 `:path` of a call.
    pub fn path(self) -> String {
        match self {
            Method::IstioEcho => ISTIO_ECHO_PATH.to_owned(),
            Method::Echo => format!("/{GRPC_ECHO_SERVICE}/Echo"),
            Method::EchoTwo => format!("/{GRPC_ECHO_SERVICE}/EchoTwo"),
            Method::EchoThree => format!("/{GRPC_ECHO_SERVICE}/EchoThree"),
        }
    }

    /// The method a `:path` names, if it is one of these.
    pub fn from_path(path: &str) -> Option<Self> {
        if path == ISTIO_ECHO_PATH {
            return Some(Method::IstioEcho);
        }
        let (service, method) = path.strip_prefix('/')?.split_once('/')?;
        if service != GRPC_ECHO_SERVICE {
            return None;
        }
        match method {
            "Echo" => Some(Method::Echo),
            "EchoTwo" => Some(Method::EchoTwo),
            "EchoThree" => Some(Method::EchoThree),
            _ => None,
        }
    }
}

/// Istio's `proto` package.
pub mod istio {
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct EchoRequest {
        #[prost(string, tag = "1")]
        pub message: String,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct EchoResponse {
        #[prost(string, tag = "1")]
        pub message: String,
    }
}

/// Gateway API's `gateway_api_conformance.echo_basic.grpcecho` package.
/// `TLSAssertions` (field 5 of `Assertions`) is not declared: the echo
/// here is plaintext only, and a decoder skips the field when absent.
pub mod gateway {
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Header {
        #[prost(string, tag = "1")]
        pub key: String,
        #[prost(string, tag = "2")]
        pub value: String,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Context {
        #[prost(string, tag = "1")]
        pub namespace: String,
        #[prost(string, tag = "2")]
        pub ingress: String,
        #[prost(string, tag = "3")]
        pub service_name: String,
        #[prost(string, tag = "4")]
        pub pod: String,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Assertions {
        #[prost(string, tag = "1")]
        pub fully_qualified_method: String,
        #[prost(message, repeated, tag = "2")]
        pub headers: Vec<Header>,
        #[prost(string, tag = "3")]
        pub authority: String,
        #[prost(message, optional, tag = "4")]
        pub context: Option<Context>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct EchoRequest {}

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct EchoResponse {
        #[prost(message, optional, tag = "1")]
        pub assertions: Option<Assertions>,
        #[prost(message, optional, tag = "2")]
        pub request: Option<EchoRequest>,
    }
}

impl From<&gateway::Assertions> for EchoResponse {
    /// GrpcEcho's answer in the report's terms: the method's path as the
    /// URL; no port or peer address, which GrpcEcho does not carry.
    fn from(a: &gateway::Assertions) -> Self {
        let context = a.context.clone().unwrap_or_default();
        EchoResponse {
            pod: context.pod,
            namespace: context.namespace,
            host: a.authority.clone(),
            url: a.fully_qualified_method.clone(),
            method: "POST".into(),
            proto: "GRPC".into(),
            port: None,
            ip: None,
            request_headers: a
                .headers
                .iter()
                .map(|h| (h.key.clone(), h.value.clone()))
                .collect(),
            message: None,
        }
    }
}

/// The gRPC status codes the echo answers with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Code {
    Ok = 0,
    ResourceExhausted = 8,
    Unimplemented = 12,
    Internal = 13,
}

impl Code {
    /// The `grpc-status` value.
    pub fn as_str(self) -> &'static str {
        match self {
            Code::Ok => "0",
            Code::ResourceExhausted => "8",
            Code::Unimplemented => "12",
            Code::Internal => "13",
        }
    }
}

/// Why a unary request body is not one gRPC message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("gRPC body of {0} bytes: shorter than the 5-byte message prefix")]
    Short(usize),
    #[error("gRPC message is compressed (flag 1); the echo takes identity encoding only")]
    Compressed,
    #[error("gRPC message flag {0}: only 0 (identity) is defined")]
    Flag(u8),
    #[error("gRPC message prefix says {declared} bytes, the body holds {actual} after it")]
    Length { declared: usize, actual: usize },
    #[error("gRPC message of {len} bytes is over the echo's {limit}-byte limit")]
    TooLarge { len: usize, limit: usize },
}

impl FrameError {
    /// The status grpc-go answers the same fault with.
    pub fn code(&self) -> Code {
        match self {
            FrameError::Compressed => Code::Unimplemented,
            FrameError::TooLarge { .. } => Code::ResourceExhausted,
            FrameError::Short(_) | FrameError::Flag(_) | FrameError::Length { .. } => {
                Code::Internal
            }
        }
    }
}

/// One message, length-prefixed, uncompressed.
pub fn frame(message: &impl prost::Message) -> Bytes {
    let len = message.encoded_len();
    let mut out = BytesMut::with_capacity(5 + len);
    out.put_u8(0);
    out.put_u32(u32::try_from(len).expect("an echo message is far below 4 GiB"));
    message
        .encode(&mut out)
        .expect("the buffer was sized for the message");
    out.freeze()
}

/// The one message of a unary call's body (exactly one frame).
pub fn unframe(body: &[u8], limit: usize) -> Result<&[u8], FrameError> {
    let Some((&flag, rest)) = body.split_first() else {
        return Err(FrameError::Short(0));
    };
    if rest.len() < 4 {
        return Err(FrameError::Short(body.len()));
    }
    match flag {
        0 => {}
        1 => return Err(FrameError::Compressed),
        f => return Err(FrameError::Flag(f)),
    }
    let declared = u32::from_be_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
    if declared > limit {
        return Err(FrameError::TooLarge {
            len: declared,
            limit,
        });
    }
    let message = &rest[4..];
    if message.len() != declared {
        return Err(FrameError::Length {
            declared,
            actual: message.len(),
        });
    }
    Ok(message)
}

#[cfg(test)]
mod tests {
    use prost::Message as _;

    use super::*;

    #[test]
    fn method_paths_round_trip_and_others_are_unknown() {
        for m in [
            Method::IstioEcho,
            Method::Echo,
            Method::EchoTwo,
            Method::EchoThree,
        ] {
            assert_eq!(Method::from_path(&m.path()), Some(m), "{}", m.path());
        }
        assert_eq!(
            Method::Echo.path(),
            "/gateway_api_conformance.echo_basic.grpcecho.GrpcEcho/Echo"
        );
        for other in [
            "/proto.EchoTestService/ForwardEcho",
            "/gateway_api_conformance.echo_basic.grpcecho.GrpcEcho/EchoFour",
            "/other.Service/Echo",
            "Echo",
            "/",
        ] {
            assert_eq!(Method::from_path(other), None, "{other}");
        }
    }

    #[test]
    fn messages_have_the_protos_field_numbers() {
        // message = "hi": field 1, wire type 2 (0x0a), length 2.
        let m = istio::EchoRequest {
            message: "hi".into(),
        };
        assert_eq!(m.encode_to_vec(), b"\x0a\x02hi");
        // Context.pod is field 4 (0x22), Assertions.context field 4 (0x22),
        // EchoResponse.assertions field 1 (0x0a).
        let r = gateway::EchoResponse {
            assertions: Some(gateway::Assertions {
                context: Some(gateway::Context {
                    pod: "p".into(),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            request: None,
        };
        assert_eq!(r.encode_to_vec(), b"\x0a\x05\x22\x03\x22\x01p");
        let h = gateway::Header {
            key: "k".into(),
            value: "v".into(),
        };
        assert_eq!(h.encode_to_vec(), b"\x0a\x01k\x12\x01v");
    }

    #[test]
    fn a_frame_holds_exactly_one_message() {
        let m = istio::EchoRequest {
            message: "hello".into(),
        };
        let f = frame(&m);
        assert_eq!(&f[..5], &[0, 0, 0, 0, 7]);
        let inner = unframe(&f, 1024).unwrap();
        assert_eq!(istio::EchoRequest::decode(inner).unwrap(), m);
        // An empty message is a valid frame.
        assert_eq!(
            unframe(&frame(&gateway::EchoRequest {}), 1024).unwrap(),
            b""
        );
    }

    #[test]
    fn bad_frames_are_refused_with_grpc_gos_codes() {
        let f = frame(&istio::EchoRequest {
            message: "hello".into(),
        });
        let cases: Vec<(Vec<u8>, FrameError)> = vec![
            (vec![], FrameError::Short(0)),
            (vec![0, 0, 0], FrameError::Short(3)),
            ([&[1u8][..], &f[1..]].concat(), FrameError::Compressed),
            ([&[7u8][..], &f[1..]].concat(), FrameError::Flag(7)),
            (
                f[..f.len() - 1].to_vec(),
                FrameError::Length {
                    declared: 7,
                    actual: 6,
                },
            ),
            (
                [&f[..], &f[..]].concat(),
                FrameError::Length {
                    declared: 7,
                    actual: 19,
                },
            ),
            (
                vec![0, 0, 1, 0, 0],
                FrameError::TooLarge {
                    len: 65536,
                    limit: 1024,
                },
            ),
        ];
        for (body, want) in cases {
            assert_eq!(unframe(&body, 1024), Err(want.clone()), "{body:?}");
        }
        assert_eq!(FrameError::Compressed.code(), Code::Unimplemented);
        assert_eq!(
            FrameError::TooLarge { len: 2, limit: 1 }.code(),
            Code::ResourceExhausted
        );
        assert_eq!(FrameError::Short(1).code(), Code::Internal);
    }

    #[test]
    fn grpc_echos_assertions_read_as_a_report() {
        let a = gateway::Assertions {
            fully_qualified_method: Method::EchoTwo.path(),
            headers: vec![gateway::Header {
                key: "x-header-set".into(),
                value: "v".into(),
            }],
            authority: "echo:7070".into(),
            context: Some(gateway::Context {
                namespace: "ns".into(),
                pod: "echo-v2-0".into(),
                ..Default::default()
            }),
        };
        let r = EchoResponse::from(&a);
        assert_eq!(r.pod, "echo-v2-0");
        assert_eq!(r.namespace, "ns");
        assert_eq!(r.host, "echo:7070");
        assert_eq!(r.url, Method::EchoTwo.path());
        assert_eq!(r.header("X-Header-Set").as_deref(), Some("v"));
    }
}
