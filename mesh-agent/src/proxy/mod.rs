//! Moving captured connections. `outbound` and `inbound` accept what the
//! kernel redirected to a pod's listeners; outbound traffic goes over HBONE
//! to meshed pods on other nodes, in-process to meshed pods on this node,
//! and as plaintext to everything else; `relay` splices two TCP streams
//! with half-close semantics. Where a connection goes is decided apart
//! from the I/O: `route` for outbound, `admit` for every inbound path.
pub mod access_log;
pub mod admission;
pub mod admit;
pub mod balancer;
pub mod connector;
pub mod delivery;
pub mod established;
pub mod hbone_inbound;
pub mod inbound;
pub mod listeners;
pub mod outbound;
pub mod own_ports;

pub mod route;
pub mod state;
pub mod zero_copy;

pub use connector::RelayMode;
