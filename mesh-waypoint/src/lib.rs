//! The waypoint: an L7 hop in the style of Istio ambient's. Node agents
//! send it HBONE (mutual TLS, HTTP/2 CONNECT to port 15008) with the
//! original destination as `:authority`; it terminates the stream, serves
//! the HTTP inside it, balances each request over the destination's
//! endpoints and sends it on over HBONE with its own identity. What it
//! cannot parse as HTTP is relayed as TCP to one endpoint.
//!
//! Decisions are pure and live in their own modules (`binding`, `target`,
//! `routing`, `retry`, `retry_budget`, `protocol`, `balancer`, `headers`,
//! `record`, `spans`); I/O is at the edges (`upstream`, `http`, `body`,
//! `mirror`, `tcp`, `handler`, `access`, `telemetry`, `admin`, `run`).
//! `ratelimit` holds the local rate limits' limiters (which policies apply
//! is pure). A DestinationRule's ejections and pool limits are decided by
//! `outlier` and `connection_pool` (pure), and `destination` keeps their
//! state per Service port. The request record, Istio's metric families, the W3C trace
//! context and the OTLP export are `mesh_telemetry`'s.
pub mod access;
pub mod admin;
pub mod authn;
pub mod authz;
pub mod balancer;
pub mod binding;
pub mod body;
pub mod connection_pool;
pub mod destination;
pub mod ext_authz;
pub mod handler;
pub mod headers;
pub mod http;
pub mod idle;
pub mod jwks;
pub mod mirror;
pub mod outlier;
pub mod protocol;
pub mod ratelimit;
pub mod record;
pub mod retry;
pub mod retry_budget;
pub mod routing;
pub mod run;
pub mod spans;
pub mod target;
pub mod tcp;
pub mod telemetry;
pub mod upstream;
pub mod waypoint;

pub use binding::Gateway;
pub use waypoint::{Limits, Parts, Waypoint};
