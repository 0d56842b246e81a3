//! The profile-gathering run of an instrumented agent (`xtask pgo`). Kept
//! out of the bench's entry module, which builds its agent through pgo:
//! pgo reaches the test bed through here, and nothing here reaches pgo.
use std::path::Path;

use super::{bed::use_release_binaries, measure::measure, mode::Mode};

/// Every tool, briefly, through the agents in plaintext and over mTLS; the
/// agents then stop on SIGTERM, which writes their profiles. A tool that
/// fails is told and the run goes on: what ran still makes a profile. (The
/// opt-in sk_msg splice mode is left out: its bulk can fail with ENOMEM
/// from the kernel's sk_msg accounting, and its user-space path is the
/// plaintext one.)
pub fn train(agent: &Path) -> anyhow::Result<()> {
    use_release_binaries(agent);
    let (_, failures) = measure(&[Mode::Mesh, Mode::Mtls], 2, 1, &[])?;
    for f in failures {
        eprintln!("pgo: training: {f}");
    }
    Ok(())
}
