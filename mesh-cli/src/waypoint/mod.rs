//! `mesh waypoint`: declaring waypoints (`apply`) and seeing them
//! (`status`).
pub mod apply;
pub mod describe;
pub mod gateways;
pub mod manifest;
pub mod status;

#[cfg(test)]
mod tests;
