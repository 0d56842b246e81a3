//! HTTPFaultInjections as the Kubernetes source reads them: checked, and
//! one that does not validate named by field.
use kube::api::DynamicObject;
use serde_json::json;

use super::{convert_fault, fault_or_last_good};

fn object(spec: serde_json::Value) -> DynamicObject {
    serde_json::from_value(json!({
        "apiVersion": "mesh.io/v1alpha1", "kind": "HTTPFaultInjection",
        "metadata": {"name": "f", "namespace": "shop", "resourceVersion": "1"},
        "spec": spec,
    }))
    .unwrap()
}

#[test]
fn a_valid_object_is_checked_and_a_bad_one_names_its_field() {
    let fault = convert_fault(&object(json!({
        "abort": {"grpcStatus": "UNAVAILABLE", "percentage": {"value": 25.0}}
    })))
    .unwrap();
    assert_eq!(fault.abort.unwrap().share, 250_000);
    let bad = convert_fault(&object(json!({
        "delay": {"fixedDelay": "1s", "percentage": {"value": 101}}
    })))
    .unwrap_err();
    assert_eq!(bad.field, "spec.delay.percentage.value");
    let unknown = convert_fault(&object(json!({"abort": {"status": 503}}))).unwrap_err();
    assert_eq!(unknown.field, "spec");
    assert!(unknown.problem.contains("status"), "{}", unknown.problem);
}

/// An object changed into one that does not validate keeps its last good
/// version; one never good is refused.
#[test]
fn an_invalid_update_keeps_the_last_good_version() {
    let good = convert_fault(&object(json!({"abort": {"httpStatus": 503}}))).unwrap();
    let bad = object(json!({"abort": {"httpStatus": 700}}));
    assert_eq!(fault_or_last_good(&bad, Some(&good)).unwrap(), good);
    let e = fault_or_last_good(&bad, None).unwrap_err();
    assert_eq!(e.field, "spec.abort.httpStatus");
}
