//! Which kinds the cluster serves, and whether they are namespaced: aggregated discovery (two
//! requests for the whole cluster), refreshed after new CRDs become Established.

use kube::Client;
use kube::api::{ApiResource, GroupVersionKind};
use kube::discovery::{Discovery, Scope};

use super::{Error, Result};

/// A snapshot of the cluster's discovery.
pub struct Kinds {
    discovery: Discovery,
}

/// How to reach one kind.
#[derive(Debug, Clone)]
pub struct Resolved {
    pub resource: ApiResource,
    pub namespaced: bool,
}

impl Kinds {
    /// Runs discovery.
    pub async fn discover(client: &Client) -> Result<Kinds> {
        let discovery = match Discovery::new(client.clone()).run_aggregated().await {
            Ok(d) => d,
            // Older servers without aggregated discovery.
            Err(_) => Discovery::new(client.clone())
                .run()
                .await
                .map_err(Error::Discovery)?,
        };
        Ok(Kinds { discovery })
    }

    /// Resolves `apiVersion` + `kind`.
    pub fn resolve(&self, api_version: &str, kind: &str) -> Option<Resolved> {
        let (group, version) = match api_version.split_once('/') {
            Some((g, v)) => (g, v),
            None => ("", api_version),
        };
        let gvk = GroupVersionKind::gvk(group, version, kind);
        self.discovery
            .resolve_gvk(&gvk)
            .map(|(resource, caps)| Resolved {
                resource,
                namespaced: caps.scope == Scope::Namespaced,
            })
    }
}
