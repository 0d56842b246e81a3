//! The conformance echo on the test bed: the backend the Gateway API mesh
//! conformance cases assert against, and the client that calls it.
//!
//! - [`report`]: what the echo says it received ([`EchoResponse`]), as
//!   the text of Istio's echo server, which the mesh conformance deploys
//!   (`echo-advanced`) and parses (conformance/utils/echo/parse.go).
//! - [`grpc`]: the gRPC echo services and their messages.
//! - [`server`]: HTTP/1.1, h2c and gRPC on one port
//!   (`meshtb serve --mode conformance-echo`).
//! - [`client`]: a [`Call`] and its [`Exchange`]s, over a stream or from
//!   inside a pod.
pub mod client;
pub mod grpc;
pub mod report;
pub mod server;

pub use client::{Call, CallKind, Exchange, HttpVersion, Location, from_pod};
pub use report::EchoResponse;
pub use server::Workload;
