//! Gateway API routes for the mesh (GAMMA: an HTTPRoute or GRPCRoute whose
//! parent is a Service), as pure types and decisions.
//!
//! `spec` is the object as the API serves it; `compile` checks one route and
//! turns it into typed rules (or a `RouteError` naming the field, which the
//! route's status reports as not Accepted); `table` orders every rule attached
//! to one Service port by Gateway API's precedence; `matcher` finds the rule
//! for a request; `split`, `redirect`, `rewrite` and `headers` compute what
//! the chosen rule does. Nothing here does I/O.

pub mod compile;
pub mod duration;
pub mod fault;
pub mod headers;
pub mod matcher;
pub mod redirect;
pub mod rewrite;
pub mod spec;
pub mod split;
pub mod status;
pub mod table;
pub mod uri;

pub use compile::{
    CompiledRoute, RouteError, Strictness, compile_grpc_route, compile_grpc_route_with,
    compile_http_route, compile_http_route_with,
};
pub use matcher::{Matched, Request};
pub use table::RouteTable;
