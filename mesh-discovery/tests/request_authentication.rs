//! RequestAuthentications as discovery reads them: from a local file (a bad
//! one refuses the file with its line and field, on a reload too, so the
//! last good file stays in force) and from the API (an update that does
//! not validate keeps the last good version), into the view.
use std::path::Path;

use kube::api::{ApiResource, DynamicObject};
use mesh_discovery::{NodeConfig, kubernetes, local};
use mesh_policy::request_authn::{AuthnTarget, Keys};

const FILE: &str = "node.yaml";

fn file(spec: &str) -> String {
    format!(
        "kind: AgentConfig\nnodeName: n1\n---\napiVersion: security.istio.io/v1\nkind: RequestAuthentication\nmetadata: {{name: jwt, namespace: shop}}\nspec:\n{spec}"
    )
}

const GOOD: &str = "  targetRefs: [{kind: Service, name: web}]\n  jwtRules:\n  - issuer: https://issuer.example\n    jwksUri: https://keys.example/jwks\n";

#[test]
fn a_policy_in_the_file_reaches_the_view() {
    let config = NodeConfig::parse(Path::new(FILE), &file(GOOD), None).unwrap();
    let view = config.view();
    let [policy] = view.request_authentications.as_slice() else {
        panic!("one policy expected: {:?}", view.request_authentications)
    };
    assert_eq!(policy.key, "shop/jwt");
    assert_eq!(policy.targets, [AuthnTarget::Service("shop/web".into())]);
    assert!(matches!(&policy.rules[0].keys, Keys::Remote(u) if u == "https://keys.example/jwks"));
}

#[test]
fn a_bad_policy_refuses_the_file_naming_line_and_field() {
    let no_keys = "  targetRefs: [{kind: Service, name: web}]\n  jwtRules:\n  - issuer: https://issuer.example\n";
    let text = file(no_keys);
    let e = NodeConfig::parse(Path::new(FILE), &text, None)
        .unwrap_err()
        .to_string();
    assert!(
        e.starts_with("node.yaml:4: RequestAuthentication shop/jwt: jwtRules[0].jwks: "),
        "{e}"
    );
    // A reload of such a file is refused too: the last good file stays.
    assert!(local::reload(Path::new(FILE), &text, None).is_err());
    let misspelt = file("  jwtRule: []\n");
    let e = NodeConfig::parse(Path::new(FILE), &misspelt, None)
        .unwrap_err()
        .to_string();
    assert!(e.contains("unknown field `jwtRule`"), "{e}");
    assert!(local::reload(Path::new(FILE), &misspelt, None).is_err());
}

fn object(spec: serde_json::Value) -> DynamicObject {
    let resource: ApiResource = kubernetes::request_authentication_resource();
    let mut o = DynamicObject::new("jwt", &resource).within("shop");
    o.data = serde_json::json!({ "spec": spec });
    o
}

#[test]
fn from_the_api_an_invalid_update_keeps_the_last_good_version() {
    let good = object(serde_json::json!({
        "targetRefs": [{"kind": "Service", "name": "web"}],
        "jwtRules": [{"issuer": "a", "jwksUri": "https://k/j"}],
    }));
    let compiled = kubernetes::request_authentication_or_last_good(&good, None).unwrap();
    assert_eq!(compiled.key, "shop/jwt");
    let bad = object(serde_json::json!({
        "targetRefs": [{"kind": "Service", "name": "web"}],
        "jwtRules": [{"issuer": "a", "jwksUri": "http://plaintext/j"}],
    }));
    let e = kubernetes::request_authentication_or_last_good(&bad, None).unwrap_err();
    assert_eq!(e.field, "jwtRules[0].jwksUri");
    let kept = kubernetes::request_authentication_or_last_good(&bad, Some(&compiled)).unwrap();
    assert!(matches!(&kept.rules[0].keys, Keys::Remote(u) if u == "https://k/j"));
    let resource = kubernetes::request_authentication_resource();
    assert_eq!(
        (resource.api_version.as_str(), resource.plural.as_str()),
        ("security.istio.io/v1", "requestauthentications")
    );
}
