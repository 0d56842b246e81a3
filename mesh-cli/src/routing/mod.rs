//! Gateway API routes (GAMMA) in `mesh inspect`: a Service's attached
//! routes with their conditions, its route tables in the order the matcher
//! tries them, and where a given request goes (`--request`). Every decision
//! is mesh-route's (`RouteTable::find`, `redirect`, `rewrite`, `headers`,
//! `status`) over the view the waypoint is given; this module only asks and
//! describes.
pub mod answer;
pub mod describe;
pub mod refs;
pub mod render;
pub mod request;
pub mod status;
pub mod tables;

#[cfg(test)]
mod tests;
