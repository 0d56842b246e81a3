//! The agent's config file (AgentConfig plus the local-mode objects:
//! pods, Services, EndpointSlices, policies): any text is an error or a
//! config, never a panic.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use mesh_discovery::NodeConfig;

fuzz_target!(|data: &[u8]| {
    // The file is read as UTF-8 (`objects::read`); other bytes stop there.
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let _ = NodeConfig::parse(Path::new("fuzz.yaml"), text, None);
});
