//! Policy specs as the agent reads them: JSON from the API server through
//! `policy::load`, and YAML from a local file, decoded to the model first
//! and compiled. Besides never panicking, a spec that cannot be enforced
//! must fail closed: its stand-in denies every connection (an
//! AuthorizationPolicy) or requires mTLS (a PeerAuthentication).
#![no_main]

use std::{
    collections::BTreeMap,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use libfuzzer_sys::fuzz_target;
use mesh_identity::Identity;
use mesh_policy::{AuthorizationPolicy, Connection, MtlsMode, load, model};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(spec) = serde_json::from_str::<serde_json::Value>(text) {
        from_api_server(&spec);
    }
    if let Ok(yaml) = serde_yaml::from_str::<serde_yaml::Value>(text) {
        if let Ok(spec) = serde_yaml::from_value::<model::AuthorizationPolicySpec>(yaml.clone()) {
            let loaded = load::compiled("shop", "p", &annotations(), &spec, Vec::new());
            check_authorization(&loaded);
        }
        // What the local file falls back to when the typed decode fails.
        if let Ok(spec) = serde_json::to_value(&yaml) {
            from_api_server(&spec);
        }
    }
});

fn annotations() -> BTreeMap<String, String> {
    BTreeMap::from([("mesh.io/dry-run".to_owned(), "false".to_owned())])
}

fn from_api_server(spec: &serde_json::Value) {
    let loaded = load::authorization("shop", "p", &annotations(), Some(spec));
    check_authorization(&loaded);
    if !loaded.ignored.is_empty() {
        assert_eq!(
            spec.get("action").and_then(|a| a.as_str()),
            Some("DENY"),
            "only DENY rules may have clauses dropped: {:?}",
            loaded.ignored
        );
    }
    let loaded = load::peer_authentication("shop", "p", Some(spec));
    if loaded.failure.is_some() {
        let mode = loaded.policy.spec.mtls.as_ref().map(|m| m.mode);
        assert_eq!(mode, Some(MtlsMode::Strict), "{:?}", loaded.failure);
        assert!(loaded.policy.spec.port_level_mtls.is_empty());
    }
}

fn check_authorization(loaded: &load::Loaded<Option<AuthorizationPolicy>>) {
    let Some(policy) = &loaded.policy else {
        assert!(loaded.failure.is_none(), "a failure has a stand-in");
        return;
    };
    let web = Identity::new("cluster.local", "shop", "web").unwrap();
    let connections = [
        Connection {
            source: Some(&web),
            source_ip: IpAddr::V4(Ipv4Addr::new(10, 244, 0, 5)),
            destination_ip: IpAddr::V4(Ipv4Addr::new(10, 244, 1, 7)),
            destination_port: 8080,
        },
        Connection {
            source: None,
            source_ip: IpAddr::V6(Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 5)),
            destination_ip: IpAddr::V6(Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 1, 7)),
            destination_port: 0,
        },
    ];
    for c in &connections {
        let matched = policy.matches(c);
        if let Some(failure) = &loaded.failure {
            assert!(matched, "the stand-in for {failure} must deny {c:?}");
        }
    }
}
