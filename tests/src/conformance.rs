//! The Gateway API mesh (GAMMA) conformance suite, ported to the test bed
//! (`tests/tests/conformance_mesh.rs`): its base manifests as the bed
//! loads them ([`base`]), its comparison of an answer with what a case
//! expects ([`expect`]), its eventual consistency ([`converge`]) and its
//! check of weighted splits ([`weight`]). Each follows the upstream
//! helper it names, so a ported case asserts what the upstream one does.
pub mod base;
pub mod converge;
pub mod expect;
pub mod weight;
