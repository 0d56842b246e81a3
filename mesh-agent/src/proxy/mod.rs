//! Moving captured connections. `outbound` and `inbound` accept what the
//! kernel redirected to a pod's listeners; `Connector` is the one seam where
//! bytes leave for the destination (plaintext now, HBONE mTLS later);
//! `relay` splices the two streams with half-close semantics.
pub mod access_log;
pub mod connector;
pub mod hbone;
pub mod inbound;
pub mod listeners;
pub mod outbound;
pub mod relay;
pub mod zero_copy;

pub use connector::{Connector, PlaintextConnector, RelayMode};
