//! The CA's command line, shared by the `mesh-ca` binary and the agent
//! image's `mesh-agent ca` (one image holds both).
use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, Subcommand};

use crate::{
    config::CaFile,
    lease::{Elector, LeaseSettings},
    policy_status, root, routes, server,
    waypoints::{
        self, CaFacts, WaypointSettings, gateway_api,
        settings::{DEFAULT_CONTROLLER_NAME, PullPolicy},
        waypoint_config::WaypointConfig,
    },
};

/// Run the CA with `--config`, check a config with `--check-config`, or
/// create a root with `init`.
#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct CaArgs {
    /// CA configuration file (YAML; see README "Certificate authority").
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Validate the configuration file and exit.
    #[arg(long)]
    pub check_config: bool,
    #[command(flatten)]
    pub waypoints: WaypointArgs,
    #[command(subcommand)]
    pub command: Option<CaCommand>,
}

/// The waypoint controller's settings (Kubernetes mode only).
#[derive(Debug, Args)]
pub struct WaypointArgs {
    /// Run the waypoint controller: each Gateway of --waypoint-class gets
    /// a mesh-waypoint Deployment, Service and ServiceAccount, and its
    /// status; each HTTPRoute and GRPCRoute whose parent is a Service gets
    /// its status for that Service (Accepted, ResolvedRefs); each
    /// HTTPLocalRateLimitPolicy, HTTPFaultInjection, AuthorizationPolicy
    /// and RequestAuthentication with targetRefs, and DestinationRule gets
    /// whether the waypoint can use it (Accepted, WaypointAccepted). Needs
    /// Kubernetes mode (CaConfig.kubernetes).
    #[arg(long)]
    pub waypoint_controller: bool,
    /// The gatewayClassName of waypoint Gateways.
    #[arg(long, default_value = mesh_config::DEFAULT_WAYPOINT_CLASS)]
    pub waypoint_class: String,
    /// The controllerName of the GatewayClasses the controller accepts.
    #[arg(long, default_value = DEFAULT_CONTROLLER_NAME)]
    pub waypoint_controller_name: String,
    /// The image waypoint pods run (the mesh image, with mesh-waypoint).
    #[arg(long)]
    pub waypoint_image: Option<String>,
    /// Always, IfNotPresent or Never.
    #[arg(long, default_value = "IfNotPresent")]
    pub waypoint_image_pull_policy: PullPolicy,
    /// host:port of the CA as waypoint pods reach it, e.g.
    /// mesh-ca.mesh-system.svc:15012.
    #[arg(long)]
    pub ca_address_for_waypoints: Option<String>,
    /// The DNS name waypoints expect in the CA's certificate [default: the
    /// host of --ca-address-for-waypoints].
    #[arg(long)]
    pub ca_server_name_for_waypoints: Option<String>,
    /// Where waypoints export traces (OTLP over HTTP or gRPC URL).
    #[arg(long)]
    pub waypoint_otlp_endpoint: Option<String>,
    /// The ClusterRoleBinding of the waypoint reader ClusterRole (the
    /// chart's <release>-waypoint-reader): the controller keeps its
    /// subjects equal to its waypoints' ServiceAccounts, which is how they
    /// may read what they watch. The CA needs get and update on it and
    /// bind on its ClusterRole, nothing more.
    #[arg(long)]
    pub waypoint_reader_binding: Option<String>,
    /// A YAML file of Istio meshConfig-shaped `extensionProviders` (the
    /// external authorizers CUSTOM AuthorizationPolicies name), read at
    /// start and written into each waypoint's ConfigMap (the chart's
    /// waypoint.extensionProviders).
    #[arg(long, value_name = "FILE")]
    pub waypoint_extension_providers_file: Option<PathBuf>,
    /// PEM CA certificates waypoints trust, besides the system's, when they
    /// fetch RequestAuthentication jwksUri keys; read at start and written
    /// into each waypoint's ConfigMap (the chart's waypoint.jwks.caBundle).
    #[arg(long, value_name = "FILE")]
    pub waypoint_jwks_ca_file: Option<PathBuf>,
    /// How often waypoints fetch each jwksUri again, e.g. 20m [default:
    /// the waypoint's].
    #[arg(long, value_parser = humantime::parse_duration)]
    pub waypoint_jwks_refresh: Option<std::time::Duration>,
    /// The namespace of the leader Lease [default: $POD_NAMESPACE, else the
    /// root Secret's namespace].
    #[arg(long)]
    pub leader_election_namespace: Option<String>,
    /// This replica's name in the Lease [default: $POD_NAME, else
    /// $HOSTNAME].
    #[arg(long)]
    pub leader_election_identity: Option<String>,
    /// The name of the leader Lease.
    #[arg(long, default_value = "mesh-waypoint-controller")]
    pub leader_election_lease: String,
    /// The mesh's root namespace (the agents' and waypoints'
    /// rootNamespace): only its AuthorizationPolicies may bind the waypoint
    /// class, which the policy status says of the others.
    #[arg(long, default_value = "istio-system")]
    pub root_namespace: String,
}

/// What the controller runs with, once the flags and the CA's file agree.
#[derive(Debug, Clone)]
pub struct WaypointPlan {
    pub settings: WaypointSettings,
    pub ca: CaFacts,
    pub lease: LeaseSettings,
}

impl WaypointArgs {
    /// The controller's plan, None when it is off; `env` reads the
    /// process environment (the downward API's POD_NAME, POD_NAMESPACE).
    pub fn plan(
        &self,
        file: &CaFile,
        env: impl Fn(&str) -> Option<String>,
    ) -> anyhow::Result<Option<WaypointPlan>> {
        if !self.waypoint_controller {
            return Ok(None);
        }
        let Some(k8s) = &file.config.kubernetes else {
            anyhow::bail!(
                "--waypoint-controller needs Kubernetes mode (CaConfig.kubernetes); waypoints are declared with Gateway objects"
            );
        };
        let image = self
            .waypoint_image
            .clone()
            .ok_or_else(|| anyhow::anyhow!("--waypoint-controller needs --waypoint-image"))?;
        let ca_address = self.ca_address_for_waypoints.clone().ok_or_else(|| {
            anyhow::anyhow!("--waypoint-controller needs --ca-address-for-waypoints (host:port)")
        })?;
        let reader_binding = self.waypoint_reader_binding.clone().ok_or_else(|| {
            anyhow::anyhow!(
                "--waypoint-controller needs --waypoint-reader-binding (the ClusterRoleBinding that \
                 lets waypoints read what they watch; the chart's is <release>-waypoint-reader)"
            )
        })?;
        let ca_server_name = self
            .ca_server_name_for_waypoints
            .clone()
            .unwrap_or_else(|| WaypointSettings::host_of(&ca_address).to_owned());
        let settings = WaypointSettings {
            class_name: self.waypoint_class.clone(),
            controller_name: self.waypoint_controller_name.clone(),
            image,
            image_pull_policy: self.waypoint_image_pull_policy,
            ca_address,
            ca_server_name,
            otlp_endpoint: self.waypoint_otlp_endpoint.clone(),
            reader_binding,
            waypoint_config: WaypointConfig::read(
                self.waypoint_extension_providers_file.as_deref(),
                self.waypoint_jwks_ca_file.as_deref(),
                self.waypoint_jwks_refresh,
            )?,
        };
        settings.validate()?;
        let set = |v: Option<String>| v.filter(|s| !s.is_empty());
        let namespace = set(self.leader_election_namespace.clone())
            .or_else(|| set(env("POD_NAMESPACE")))
            .unwrap_or_else(|| k8s.root_secret.namespace.clone());
        let holder = set(self.leader_election_identity.clone())
            .or_else(|| set(env("POD_NAME")))
            .or_else(|| set(env("HOSTNAME")))
            .ok_or_else(|| {
                anyhow::anyhow!(
                    "--leader-election-identity: none given and neither POD_NAME nor HOSTNAME is set"
                )
            })?;
        Ok(Some(WaypointPlan {
            settings,
            ca: CaFacts {
                trust_domain: file.config.trust_domain.clone(),
                token_audience: k8s.token_audience.clone(),
                root_secret: k8s.root_secret.clone(),
            },
            lease: LeaseSettings {
                namespace,
                name: self.leader_election_lease.clone(),
                holder,
            },
        }))
    }
}

#[derive(Debug, Subcommand)]
pub enum CaCommand {
    /// Create a new root certificate and key (refuses to overwrite either).
    Init {
        #[arg(long)]
        cert: PathBuf,
        #[arg(long)]
        key: PathBuf,
        #[arg(long, default_value = "cluster.local")]
        trust_domain: String,
        /// Root lifetime, e.g. 10y, 8760h.
        #[arg(long, default_value = "10y")]
        lifetime: humantime::Duration,
    },
    /// Print the Gateway API CRDs the waypoint controller reads (GatewayClass,
    /// Gateway), as the chart installs them with gatewayAPI.installCRDs.
    Crd,
}

/// Runs what `args` asks; `invoked_as` names the command in errors.
pub fn run(args: CaArgs, invoked_as: &str) -> anyhow::Result<()> {
    match args {
        CaArgs {
            command:
                Some(CaCommand::Init {
                    cert,
                    key,
                    trust_domain,
                    lifetime,
                }),
            ..
        } => {
            root::init(&cert, &key, &trust_domain, lifetime.into())?;
            println!(
                "created root {} (key {}, trust domain {trust_domain})",
                cert.display(),
                key.display()
            );
            Ok(())
        }
        CaArgs {
            command: Some(CaCommand::Crd),
            ..
        } => {
            print!("{}", gateway_api::crd_yaml()?);
            Ok(())
        }
        CaArgs {
            config: Some(config),
            check_config: true,
            waypoints,
            command: None,
        } => {
            let file = CaFile::load(&config)?;
            let plan = waypoints.plan(&file, |k| std::env::var(k).ok())?;
            println!(
                "{}: ok (trust domain {}, listen {}, {}, {})",
                config.display(),
                file.config.trust_domain,
                file.config.listen,
                if file.config.kubernetes.is_some() {
                    "kubernetes"
                } else {
                    "local"
                },
                match &plan {
                    Some(p) => format!(
                        "waypoint controller for class {} (image {}, CA {}, reader binding {}, lease {}/{}; {})",
                        p.settings.class_name,
                        p.settings.image,
                        p.settings.ca_address,
                        p.settings.reader_binding,
                        p.lease.namespace,
                        p.lease.name,
                        p.settings.waypoint_config.summary()
                    ),
                    None => "no waypoint controller".to_owned(),
                }
            );
            Ok(())
        }
        CaArgs {
            config: Some(config),
            waypoints,
            command: None,
            ..
        } => {
            let file = CaFile::load(&config)?;
            let plan = waypoints.plan(&file, |k| std::env::var(k).ok())?;
            let root_namespace = waypoints.root_namespace.clone();
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()?;
            runtime.block_on(async move {
                if let Some(plan) = plan {
                    let client = kube::Client::try_default()
                        .await
                        .context("Kubernetes client (in-cluster config or KUBECONFIG)")?;
                    // One election for every controller: two electors
                    // under one holder identity would race on the Lease.
                    let (elector, leading) = Elector::new(client.clone(), plan.lease);
                    tokio::spawn(elector.run());
                    tokio::spawn(routes::run(
                        client.clone(),
                        plan.settings.controller_name.clone(),
                        leading.clone(),
                    ));
                    tokio::spawn(policy_status::run(
                        client.clone(),
                        policy_status::Scope {
                            waypoint_class: plan.settings.class_name.clone(),
                            root_namespace,
                        },
                        leading.clone(),
                    ));
                    tokio::spawn(waypoints::run(client, plan.settings, plan.ca, leading));
                }
                server::run(&config).await
            })
        }
        CaArgs { .. } => {
            anyhow::bail!("`{invoked_as}` needs --config <file> (or `{invoked_as} init`)")
        }
    }
}
