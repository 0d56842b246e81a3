//! The Gateways behind `mesh waypoint status`: in local mode the files'
//! (as the agents read them), in Kubernetes mode listed from the API with
//! their Programmed condition, which only the cluster's controller writes.
use kube::{
    Api, Client,
    api::{DynamicObject, ListParams},
};
use mesh_discovery::{kubernetes::gateway_resource, model::Gateway, store::Store};
use serde::{Deserialize, Serialize};

/// Gateway API's Programmed condition, as the controller last wrote it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Condition {
    pub status: String,
    #[serde(default)]
    pub reason: String,
    #[serde(default)]
    pub message: String,
}

/// One Gateway as the cluster holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GatewayFacts {
    Read {
        gateway: Gateway,
        /// Kubernetes mode only, and only once a controller wrote it.
        programmed: Option<Condition>,
    },
    /// The agents ignore it: `field` cannot be read.
    Unreadable {
        key: String,
        field: String,
        problem: String,
    },
}

/// What the Gateway API list gave.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Listed {
    Gateways(Vec<GatewayFacts>),
    /// The API server has no Gateway kind: there are no waypoints.
    NoCrds,
}

/// The files' Gateways (local mode has no status to read).
pub fn from_store(store: &Store) -> Vec<GatewayFacts> {
    store
        .gateways
        .values()
        .map(|g| GatewayFacts::Read {
            gateway: g.as_ref().clone(),
            programmed: None,
        })
        .collect()
}

/// Every Gateway (in `namespace`, if given) from the API.
pub async fn list(client: &Client, namespace: Option<&str>) -> anyhow::Result<Listed> {
    let api: Api<DynamicObject> = match namespace {
        Some(ns) => Api::namespaced_with(client.clone(), ns, &gateway_resource()),
        None => Api::all_with(client.clone(), &gateway_resource()),
    };
    match api.list(&ListParams::default()).await {
        Ok(list) => Ok(Listed::Gateways(list.items.iter().map(read).collect())),
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(Listed::NoCrds),
        Err(e) => {
            Err(anyhow::Error::new(e).context("listing Gateways (gateway.networking.k8s.io/v1)"))
        }
    }
}

/// One listed Gateway, read as the agents read it (`convert::gateway`).
pub fn read(o: &DynamicObject) -> GatewayFacts {
    let key = format!(
        "{}/{}",
        o.metadata.namespace.as_deref().unwrap_or("default"),
        o.metadata.name.as_deref().unwrap_or_default()
    );
    let gateway = mesh_discovery::kubernetes::convert_gateway(o);
    match gateway {
        Ok(gateway) => GatewayFacts::Read {
            gateway,
            programmed: programmed(o),
        },
        Err(e) => GatewayFacts::Unreadable {
            key,
            field: e.field,
            problem: e.problem,
        },
    }
}

fn programmed(o: &DynamicObject) -> Option<Condition> {
    o.data
        .pointer("/status/conditions")?
        .as_array()?
        .iter()
        .find(|c| c.get("type").and_then(|t| t.as_str()) == Some("Programmed"))
        .and_then(|c| serde_json::from_value(c.clone()).ok())
}
