//! Cluster objects more than one test file uses.

/// Service `web` (VIP 10.96.0.10, port 80 -> 8080) selecting `tier: web`.
pub const SERVICE_WEB: &str = r#"apiVersion: v1
kind: Service
metadata: {name: web, namespace: default}
spec:
  clusterIP: 10.96.0.10
  selector: {tier: web}
  ports: [{name: http, port: 80, targetPort: 8080}]
"#;

/// Service `web`'s virtual IP.
pub const WEB_VIP: &str = "10.96.0.10";

/// PeerAuthentication STRICT for namespace `default`: plaintext to its pods
/// is refused.
pub const STRICT: &str = r#"apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: default, namespace: default}
spec:
  mtls: {mode: STRICT}
"#;
