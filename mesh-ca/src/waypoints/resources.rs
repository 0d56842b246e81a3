//! The objects that run one waypoint, as a pure function of its Gateway,
//! the controller's settings and the mesh's facts: a ServiceAccount (the
//! waypoint's identity, spiffe://<td>/ns/<ns>/sa/<gateway>, as Istio
//! names it), a Deployment of `mesh-waypoint`, a Service on 15008, and the
//! namespace's copy of the root certificate, and the waypoint's ConfigMap
//! of the operator's extension providers and JWKS CA when there are any
//! (`waypoint_config`). The Gateway owns all of them,
//! so deleting it deletes them.
use std::collections::BTreeMap;

use k8s_openapi::{
    api::{
        apps::v1::{Deployment, DeploymentSpec},
        core::v1::{
            Capabilities, ConfigMap, ConfigMapVolumeSource, Container, ContainerPort, EnvVar,
            EnvVarSource, HTTPGetAction, ObjectFieldSelector, PodSecurityContext, PodSpec,
            PodTemplateSpec, Probe, ProjectedVolumeSource, ResourceRequirements, SeccompProfile,
            SecurityContext, Service, ServiceAccount, ServiceAccountTokenProjection, ServicePort,
            ServiceSpec, Volume, VolumeMount, VolumeProjection,
        },
    },
    apimachinery::pkg::{
        api::resource::Quantity,
        apis::meta::v1::{LabelSelector, OwnerReference},
        util::intstr::IntOrString,
    },
};
use kube::api::ObjectMeta;

use super::{
    acceptance::HBONE_PORT,
    gateway_api::{API_VERSION, Gateway},
    settings::WaypointSettings,
    waypoint_config::{CONFIG_DIR, HASH_ANNOTATION, config_map_name},
};

/// The label Gateway API implementations put on a Gateway's pods.
pub const GATEWAY_NAME_LABEL: &str = "gateway.networking.k8s.io/gateway-name";
/// Keeps the node agents from capturing the waypoint's own traffic: the
/// waypoint speaks HBONE itself.
pub const DATAPLANE_MODE_LABEL: &str = "mesh.io/dataplane-mode";
/// The ConfigMap with the mesh's root certificate in each waypoint's
/// namespace (Istio's is istio-ca-root-cert).
pub const ROOT_CERT_CONFIG_MAP: &str = "mesh-ca-root-cert";
pub const ROOT_CERT_KEY: &str = "root-cert.pem";
pub const ADMIN_PORT: i32 = 15020;
pub const WAYPOINT_BINARY: &str = "/usr/local/bin/mesh-waypoint";
const TOKEN_DIR: &str = "/var/run/secrets/mesh-ca";
const TOKEN_FILE: &str = "token";
const ROOT_DIR: &str = "/etc/mesh/root";
/// Kubernetes rotates the projected token at 80% of this.
const TOKEN_SECONDS: i64 = 3600;
/// The image's unprivileged user (distroless nonroot).
const NONROOT: i64 = 65532;

/// The mesh's facts a waypoint needs, from the CA's configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MeshFacts {
    pub trust_domain: String,
    /// The audience of the tokens the CA accepts.
    pub token_audience: String,
    pub root_cert_pem: String,
}

/// Where a Gateway lives, from its metadata; the API server always sets
/// these, so their absence means the object did not come from it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GatewayRef {
    pub namespace: String,
    pub name: String,
    pub uid: String,
    pub generation: Option<i64>,
}

impl GatewayRef {
    pub fn of(gateway: &Gateway) -> Result<Self, &'static str> {
        let m = &gateway.metadata;
        Ok(Self {
            namespace: m.namespace.clone().ok_or("metadata.namespace")?,
            name: m.name.clone().ok_or("metadata.name")?,
            uid: m.uid.clone().ok_or("metadata.uid")?,
            generation: m.generation,
        })
    }

    /// The Gateway as owner; `controller` only where it is the sole
    /// owner (an object has at most one controller reference).
    fn owner(&self, controller: bool) -> OwnerReference {
        OwnerReference {
            api_version: API_VERSION.into(),
            kind: "Gateway".into(),
            name: self.name.clone(),
            uid: self.uid.clone(),
            controller: Some(controller),
            block_owner_deletion: Some(true),
        }
    }

    fn meta(&self, name: &str, labels: BTreeMap<String, String>) -> ObjectMeta {
        ObjectMeta {
            name: Some(name.to_owned()),
            namespace: Some(self.namespace.clone()),
            labels: Some(labels),
            owner_references: Some(vec![self.owner(true)]),
            ..Default::default()
        }
    }

    fn selector(&self) -> BTreeMap<String, String> {
        BTreeMap::from([(GATEWAY_NAME_LABEL.to_owned(), self.name.clone())])
    }

    fn labels(&self) -> BTreeMap<String, String> {
        let mut labels = self.selector();
        labels.insert("app.kubernetes.io/part-of".into(), "mesh".into());
        labels.insert("app.kubernetes.io/component".into(), "waypoint".into());
        labels
    }
}

/// Everything one waypoint needs, in the order it is applied.
#[derive(Debug, Clone, PartialEq)]
pub struct WaypointObjects {
    pub root_cert: ConfigMap,
    /// The operator's extension providers and JWKS CA, when given; the
    /// Gateway's alone.
    pub waypoint_config: Option<ConfigMap>,
    pub service_account: ServiceAccount,
    pub service: Service,
    pub deployment: Deployment,
}

pub fn waypoint_objects(
    gateway: &GatewayRef,
    settings: &WaypointSettings,
    mesh: &MeshFacts,
) -> WaypointObjects {
    let name = gateway.name.as_str();
    WaypointObjects {
        // Shared by the namespace's waypoints: each Gateway adds itself as
        // an owner (under a field manager of its own), so the ConfigMap
        // goes with the last of them.
        root_cert: ConfigMap {
            metadata: ObjectMeta {
                owner_references: Some(vec![gateway.owner(false)]),
                ..gateway.meta(
                    ROOT_CERT_CONFIG_MAP,
                    BTreeMap::from([("app.kubernetes.io/part-of".to_owned(), "mesh".to_owned())]),
                )
            },
            data: Some(BTreeMap::from([(
                ROOT_CERT_KEY.to_owned(),
                mesh.root_cert_pem.clone(),
            )])),
            ..Default::default()
        },
        waypoint_config: settings.waypoint_config.data().map(|data| ConfigMap {
            metadata: gateway.meta(&config_map_name(name), gateway.labels()),
            data: Some(data),
            ..Default::default()
        }),
        service_account: ServiceAccount {
            metadata: gateway.meta(name, gateway.labels()),
            ..Default::default()
        },
        service: Service {
            metadata: gateway.meta(name, gateway.labels()),
            spec: Some(ServiceSpec {
                selector: Some(gateway.selector()),
                ports: Some(vec![ServicePort {
                    name: Some("mesh".into()),
                    port: HBONE_PORT,
                    target_port: Some(IntOrString::Int(HBONE_PORT)),
                    protocol: Some("TCP".into()),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
            ..Default::default()
        },
        deployment: deployment(gateway, settings, mesh),
    }
}

fn field_env(name: &str, path: &str) -> EnvVar {
    EnvVar {
        name: name.into(),
        value_from: Some(EnvVarSource {
            field_ref: Some(ObjectFieldSelector {
                field_path: path.into(),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// `mesh-waypoint`'s command line for this Gateway.
pub fn waypoint_args(
    gateway: &GatewayRef,
    settings: &WaypointSettings,
    mesh: &MeshFacts,
) -> Vec<String> {
    let mut args: Vec<String> = [
        "--kubernetes",
        "--gateway",
        &format!("{}/{}", gateway.namespace, gateway.name),
        "--service-account",
        &gateway.name,
        "--trust-domain",
        &mesh.trust_domain,
        "--ca-address",
        &settings.ca_address,
        "--ca-server-name",
        &settings.ca_server_name,
        "--ca-root-cert-file",
        &format!("{ROOT_DIR}/{ROOT_CERT_KEY}"),
        "--ca-token-file",
        &format!("{TOKEN_DIR}/{TOKEN_FILE}"),
        "--hbone-listen",
        &format!("0.0.0.0:{HBONE_PORT}"),
        "--admin-listen",
        &format!("0.0.0.0:{ADMIN_PORT}"),
    ]
    .into_iter()
    .map(str::to_owned)
    .collect();
    if let Some(url) = &settings.otlp_endpoint {
        args.extend(["--otlp-endpoint".to_owned(), url.clone()]);
    }
    args.extend(settings.waypoint_config.args());
    args
}

fn deployment(gateway: &GatewayRef, settings: &WaypointSettings, mesh: &MeshFacts) -> Deployment {
    let mut pod_labels = gateway.labels();
    pod_labels.insert(DATAPLANE_MODE_LABEL.into(), "none".into());
    let quantities = |cpu: &str, memory: &str| {
        BTreeMap::from([
            ("cpu".to_owned(), Quantity(cpu.into())),
            ("memory".to_owned(), Quantity(memory.into())),
        ])
    };
    let mut container = Container {
        name: "waypoint".into(),
        image: Some(settings.image.clone()),
        image_pull_policy: Some(settings.image_pull_policy.to_string()),
        command: Some(vec![WAYPOINT_BINARY.into()]),
        args: Some(waypoint_args(gateway, settings, mesh)),
        env: Some(vec![
            field_env("POD_NAME", "metadata.name"),
            field_env("POD_NAMESPACE", "metadata.namespace"),
            field_env("POD_IP", "status.podIP"),
        ]),
        ports: Some(vec![
            ContainerPort {
                name: Some("mesh".into()),
                container_port: HBONE_PORT,
                protocol: Some("TCP".into()),
                ..Default::default()
            },
            ContainerPort {
                name: Some("admin".into()),
                container_port: ADMIN_PORT,
                protocol: Some("TCP".into()),
                ..Default::default()
            },
        ]),
        readiness_probe: Some(Probe {
            http_get: Some(HTTPGetAction {
                path: Some("/ready".into()),
                port: IntOrString::Int(ADMIN_PORT),
                ..Default::default()
            }),
            period_seconds: Some(5),
            ..Default::default()
        }),
        resources: Some(ResourceRequirements {
            requests: Some(quantities("100m", "64Mi")),
            limits: Some(quantities("2", "512Mi")),
            ..Default::default()
        }),
        security_context: Some(SecurityContext {
            allow_privilege_escalation: Some(false),
            read_only_root_filesystem: Some(true),
            capabilities: Some(Capabilities {
                drop: Some(vec!["ALL".into()]),
                ..Default::default()
            }),
            ..Default::default()
        }),
        volume_mounts: Some(vec![
            VolumeMount {
                name: "ca-token".into(),
                mount_path: TOKEN_DIR.into(),
                read_only: Some(true),
                ..Default::default()
            },
            VolumeMount {
                name: "root-cert".into(),
                mount_path: ROOT_DIR.into(),
                read_only: Some(true),
                ..Default::default()
            },
        ]),
        ..Default::default()
    };
    let mut volumes = vec![
        Volume {
            name: "ca-token".into(),
            projected: Some(ProjectedVolumeSource {
                sources: Some(vec![VolumeProjection {
                    service_account_token: Some(ServiceAccountTokenProjection {
                        path: TOKEN_FILE.into(),
                        audience: Some(mesh.token_audience.clone()),
                        expiration_seconds: Some(TOKEN_SECONDS),
                        ..Default::default()
                    }),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
            ..Default::default()
        },
        Volume {
            name: "root-cert".into(),
            config_map: Some(ConfigMapVolumeSource {
                name: ROOT_CERT_CONFIG_MAP.into(),
                ..Default::default()
            }),
            ..Default::default()
        },
    ];
    let mut annotations = BTreeMap::new();
    annotations.insert("prometheus.io/scrape".to_owned(), "true".to_owned());
    annotations.insert("prometheus.io/port".to_owned(), ADMIN_PORT.to_string());
    annotations.insert("prometheus.io/path".to_owned(), "/metrics".to_owned());
    if let Some(hash) = settings.waypoint_config.hash() {
        // The waypoint reads these files at start only: a new hash rolls
        // its pods onto the new content.
        annotations.insert(HASH_ANNOTATION.to_owned(), hash);
        volumes.push(Volume {
            name: "waypoint-config".into(),
            config_map: Some(ConfigMapVolumeSource {
                name: config_map_name(&gateway.name),
                ..Default::default()
            }),
            ..Default::default()
        });
        container
            .volume_mounts
            .get_or_insert_with(Vec::new)
            .push(VolumeMount {
                name: "waypoint-config".into(),
                mount_path: CONFIG_DIR.into(),
                read_only: Some(true),
                ..Default::default()
            });
    }
    Deployment {
        metadata: gateway.meta(&gateway.name, gateway.labels()),
        spec: DeploymentSpec {
            // No replicas: the API server's default (1) on creation, and
            // an autoscaler's count is not fought over afterwards.
            selector: LabelSelector {
                match_labels: Some(gateway.selector()),
                ..Default::default()
            },
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(pod_labels),
                    annotations: Some(annotations),
                    ..Default::default()
                }),
                spec: Some(PodSpec {
                    service_account_name: Some(gateway.name.clone()),
                    containers: vec![container],
                    security_context: Some(PodSecurityContext {
                        run_as_non_root: Some(true),
                        run_as_user: Some(NONROOT),
                        run_as_group: Some(NONROOT),
                        seccomp_profile: Some(SeccompProfile {
                            type_: "RuntimeDefault".into(),
                            ..Default::default()
                        }),
                        ..Default::default()
                    }),
                    volumes: Some(volumes),
                    ..Default::default()
                }),
            },
            ..Default::default()
        },
        ..Default::default()
    }
}
