//! The profile-gathering run of the instrumented agent and waypoint (`xtask
//! build-release`). Kept out of the bench's entry module, which builds its
//! binaries through pgo: pgo reaches the test bed through here, and nothing
//! here reaches pgo.
use std::path::Path;

use super::{bed::use_release_binaries, l7, measure::measure, mode::Mode};

/// Seconds per load.
const SECS: u32 = 2;

/// Every tool, briefly, through the agents in plaintext and over mTLS;
/// then the waypoint bench's loads through its two waypoints. The agents
/// and waypoints stop on SIGTERM, which writes their profiles, each
/// process to its own file: `profile_file` is the `LLVM_PROFILE_FILE`
/// pattern every instrumented process inherits (with `%p`). A load that
/// fails is told and the run goes on: what ran still makes a profile.
/// (The opt-in sk_msg splice mode is left out: its bulk can fail with
/// ENOMEM from the kernel's sk_msg accounting, and its user-space path is
/// the plaintext one.) Returns the waypoints' process ids, whose profiles
/// the caller checks.
pub fn train(agent: &Path, profile_file: &Path) -> anyhow::Result<Vec<u32>> {
    use_release_binaries(agent);
    // SAFETY: set before any bed starts, as use_release_binaries' are; the
    // test bed's processes inherit it.
    unsafe { std::env::set_var("LLVM_PROFILE_FILE", profile_file) };
    let (_, failures) = measure(&[Mode::Mesh, Mode::Mtls], SECS, 1, &[])?;
    for f in failures {
        eprintln!("pgo: training: {f}");
    }
    eprintln!("pgo: training the instrumented waypoints on the L7 bed");
    let trained = l7::train::train(SECS);
    // SAFETY: as above; nothing instrumented runs after this.
    unsafe { std::env::remove_var("LLVM_PROFILE_FILE") };
    let trained = trained?;
    for f in trained.failures {
        eprintln!("pgo: training: {f}");
    }
    Ok(trained.waypoints)
}
