use std::time::Duration;

use http::StatusCode;
use k8s_openapi::jiff::Timestamp;
use serde_json::{Value, json};

use super::*;
use crate::api_mock::{self, conflict, not_found};

fn at(s: &str) -> Timestamp {
    s.parse().unwrap()
}

fn held(holder: &str, renewed: &str) -> LeaseState {
    LeaseState {
        holder: Some(holder.into()),
        renewed: Some(at(renewed)),
        duration: Duration::from_secs(15),
    }
}

#[test]
fn no_lease_or_no_holder_is_acquired() {
    let now = at("2026-01-01T00:00:00Z");
    assert_eq!(decide(None, "ca-0", now), Decision::Acquire);
    let released = LeaseState {
        holder: None,
        ..held("x", "2026-01-01T00:00:00Z")
    };
    assert_eq!(decide(Some(&released), "ca-0", now), Decision::Acquire);
}

#[test]
fn our_own_lease_is_renewed_even_late() {
    let lease = held("ca-0", "2026-01-01T00:00:00Z");
    assert_eq!(
        decide(Some(&lease), "ca-0", at("2026-01-01T00:00:05Z")),
        Decision::Renew
    );
    assert_eq!(
        decide(Some(&lease), "ca-0", at("2026-01-01T00:01:00Z")),
        Decision::Renew
    );
}

#[test]
fn anothers_live_lease_is_waited_for_until_it_expires() {
    let lease = held("ca-1", "2026-01-01T00:00:00Z");
    assert_eq!(
        decide(Some(&lease), "ca-0", at("2026-01-01T00:00:14.999Z")),
        Decision::Wait {
            holder: "ca-1".into(),
            until: at("2026-01-01T00:00:15Z")
        }
    );
    // Expired at renew time + duration: taken over.
    assert_eq!(
        decide(Some(&lease), "ca-0", at("2026-01-01T00:00:15Z")),
        Decision::Acquire
    );
    // The holder's own duration counts, not ours.
    let long = LeaseState {
        duration: Duration::from_secs(60),
        ..lease.clone()
    };
    assert!(matches!(
        decide(Some(&long), "ca-0", at("2026-01-01T00:00:30Z")),
        Decision::Wait { .. }
    ));
    // Held with no renew time: no end can be known, so it does not bind.
    let never = LeaseState {
        renewed: None,
        ..lease
    };
    assert_eq!(
        decide(Some(&never), "ca-0", at("2026-01-01T00:00:01Z")),
        Decision::Acquire
    );
}

#[test]
fn state_is_read_from_the_lease_object() {
    let lease: Lease = serde_json::from_value(json!({
        "metadata": {"name": "l", "namespace": "mesh-system"},
        "spec": {"holderIdentity": "ca-1", "leaseDurationSeconds": 30,
                 "renewTime": "2026-01-01T00:00:00.000000Z"}
    }))
    .unwrap();
    assert_eq!(
        LeaseState::of(&lease),
        LeaseState {
            holder: Some("ca-1".into()),
            renewed: Some(at("2026-01-01T00:00:00Z")),
            duration: Duration::from_secs(30),
        }
    );
    let empty: Lease = serde_json::from_value(json!({"metadata": {"name": "l"}})).unwrap();
    assert_eq!(LeaseState::of(&empty).holder, None);
}

fn settings() -> LeaseSettings {
    LeaseSettings {
        namespace: "mesh-system".into(),
        name: "mesh-waypoint-controller".into(),
        holder: "mesh-ca-0".into(),
    }
}

fn lease_json(holder: &str, renewed: &str, version: &str, transitions: i32) -> Value {
    json!({
        "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
        "metadata": {"name": "mesh-waypoint-controller", "namespace": "mesh-system",
                     "resourceVersion": version},
        "spec": {"holderIdentity": holder, "leaseDurationSeconds": 15,
                 "acquireTime": "2026-01-01T00:00:00.000000Z",
                 "renewTime": renewed, "leaseTransitions": transitions}
    })
}

const LEASE_PATH: &str =
    "/apis/coordination.k8s.io/v1/namespaces/mesh-system/leases/mesh-waypoint-controller";

#[tokio::test]
async fn a_missing_lease_is_created_with_us_as_holder() {
    let (client, seen) = api_mock::client(|r| match r.method.as_str() {
        "GET" => not_found(),
        "POST" => (StatusCode::CREATED, r.body.clone()),
        m => panic!("unexpected {m} {}", r.path),
    });
    let (elector, _) = Elector::new(client, settings());
    let now = at("2026-01-01T00:00:00Z");
    assert!(elector.attempt(now).await.unwrap());
    let seen = seen.lock().unwrap();
    assert_eq!(seen.len(), 2);
    assert!(seen[0].path.starts_with(LEASE_PATH), "{}", seen[0].path);
    assert_eq!(seen[1].method, "POST");
    let spec = &seen[1].body["spec"];
    assert_eq!(spec["holderIdentity"], "mesh-ca-0");
    assert_eq!(spec["leaseDurationSeconds"], 15);
    assert_eq!(spec["leaseTransitions"], 0);
    assert_eq!(spec["renewTime"], "2026-01-01T00:00:00.000000Z");
}

#[tokio::test]
async fn our_lease_is_renewed_on_its_resource_version() {
    let (client, seen) = api_mock::client(|r| match r.method.as_str() {
        "GET" => (
            StatusCode::OK,
            lease_json("mesh-ca-0", "2026-01-01T00:00:05.000000Z", "41", 2),
        ),
        "PUT" => (StatusCode::OK, r.body.clone()),
        m => panic!("unexpected {m} {}", r.path),
    });
    let (elector, _) = Elector::new(client, settings());
    assert!(elector.attempt(at("2026-01-01T00:00:10Z")).await.unwrap());
    let put = seen.lock().unwrap()[1].clone();
    assert_eq!(put.method, "PUT");
    assert_eq!(put.body["metadata"]["resourceVersion"], "41");
    assert_eq!(put.body["spec"]["renewTime"], "2026-01-01T00:00:10.000000Z");
    // Renewal keeps when it was acquired and how often it changed hands.
    assert_eq!(
        put.body["spec"]["acquireTime"],
        "2026-01-01T00:00:00.000000Z"
    );
    assert_eq!(put.body["spec"]["leaseTransitions"], 2);
}

#[tokio::test]
async fn an_expired_lease_is_taken_over_and_a_lost_race_is_no_error() {
    for (answer, wins) in [(StatusCode::OK, true), (StatusCode::CONFLICT, false)] {
        let (client, seen) = api_mock::client(move |r| match r.method.as_str() {
            "GET" => (
                StatusCode::OK,
                lease_json("mesh-ca-1", "2026-01-01T00:00:00.000000Z", "7", 3),
            ),
            "PUT" if answer == StatusCode::OK => (StatusCode::OK, r.body.clone()),
            "PUT" => conflict(),
            m => panic!("unexpected {m} {}", r.path),
        });
        let (elector, _) = Elector::new(client, settings());
        assert_eq!(
            elector.attempt(at("2026-01-01T00:00:20Z")).await.unwrap(),
            wins
        );
        let put = seen.lock().unwrap()[1].clone();
        assert_eq!(put.body["spec"]["holderIdentity"], "mesh-ca-0");
        assert_eq!(put.body["spec"]["leaseTransitions"], 4);
        assert_eq!(
            put.body["spec"]["acquireTime"],
            "2026-01-01T00:00:20.000000Z"
        );
        assert_eq!(put.body["metadata"]["resourceVersion"], "7");
    }
}

#[tokio::test]
async fn anothers_live_lease_is_left_alone() {
    let (client, seen) = api_mock::client(|r| match r.method.as_str() {
        "GET" => (
            StatusCode::OK,
            lease_json("mesh-ca-1", "2026-01-01T00:00:00.000000Z", "7", 0),
        ),
        m => panic!("unexpected {m} {}", r.path),
    });
    let (elector, _) = Elector::new(client, settings());
    assert!(!elector.attempt(at("2026-01-01T00:00:10Z")).await.unwrap());
    assert_eq!(seen.lock().unwrap().len(), 1);
}

#[tokio::test(start_paused = true)]
async fn leadership_is_given_up_when_renewals_fail_past_the_deadline() {
    use std::sync::atomic::{AtomicBool, Ordering};
    let api_down = std::sync::Arc::new(AtomicBool::new(false));
    let down = api_down.clone();
    let (client, _seen) = api_mock::client(move |r| {
        if down.load(Ordering::SeqCst) {
            return (
                StatusCode::SERVICE_UNAVAILABLE,
                json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
                       "reason": "ServiceUnavailable", "code": 503, "message": "down"}),
            );
        }
        match r.method.as_str() {
            "GET" => not_found(),
            "POST" => (StatusCode::CREATED, r.body.clone()),
            m => panic!("unexpected {m} {}", r.path),
        }
    });
    let (elector, mut leading) = Elector::new(client, settings());
    tokio::spawn(elector.run());
    leading.wait_for(|l| *l).await.unwrap();
    api_down.store(true, Ordering::SeqCst);
    let started = tokio::time::Instant::now();
    leading.wait_for(|l| !*l).await.unwrap();
    let after = started.elapsed();
    // Given up before another replica may take over, not at the first failure.
    assert!(after >= RENEW_DEADLINE - RENEW_EVERY, "{after:?}");
    assert!(after < LEASE_DURATION, "{after:?}");
}
