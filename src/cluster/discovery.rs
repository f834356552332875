//! Which kinds the cluster serves, and whether they are namespaced: aggregated discovery (two
//! requests for the whole cluster), refreshed after new CRDs become Established.

use std::collections::HashMap;

use kube::api::{ApiResource, DynamicObject};
use kube::discovery::{Discovery, Scope};
use kube::{Api, Client};

use super::{Error, Result};

/// A snapshot of the cluster's discovery, indexed by `apiVersion` and kind (a reconcile resolves
/// every object: a lookup must not walk and copy a group's resource list each time).
pub struct Kinds {
    by_version: HashMap<String, HashMap<String, Resolved>>,
}

/// How to reach one kind, and what the server said about it.
#[derive(Debug, Clone)]
pub struct Resolved {
    pub resource: ApiResource,
    pub namespaced: bool,
    /// Whether the kind has a status subresource (`<plural>/status` in discovery): then status
    /// is written through it by a controller — an object without one has not been looked at yet
    /// (`health`) — and `metadata.generation` moves only for changes outside metadata and status
    /// (see `plan::signature`).
    pub status_subresource: bool,
}

/// A resolved kind is used where its `ApiResource` is (the drift watches, the daemon's list
/// of watched kinds): its fields read through.
impl std::ops::Deref for Resolved {
    type Target = ApiResource;

    fn deref(&self) -> &ApiResource {
        &self.resource
    }
}

impl Resolved {
    /// The namespace a request about an object of this kind goes to: the object's own for a
    /// namespaced kind, none for a cluster-scoped one (whatever the object says).
    pub fn namespace_for<'n>(&self, namespace: Option<&'n str>) -> Option<&'n str> {
        if self.namespaced { namespace } else { None }
    }

    /// The API of this kind for an object in `namespace` (ignored when cluster-scoped).
    pub fn api(&self, client: &Client, namespace: Option<&str>) -> Api<DynamicObject> {
        super::apply::api_for(client, &self.resource, self.namespace_for(namespace))
    }
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
        let mut by_version: HashMap<String, HashMap<String, Resolved>> = HashMap::new();
        for group in discovery.groups() {
            for version in group.versions() {
                let api_version = if group.name().is_empty() {
                    version.to_owned()
                } else {
                    format!("{}/{version}", group.name())
                };
                let kinds = by_version.entry(api_version).or_default();
                for (resource, caps) in group.versioned_resources(version) {
                    // The first resource of a kind, as kube's `resolve_gvk` picks it.
                    let status_subresource = caps
                        .subresources
                        .iter()
                        .any(|(sub, _)| sub.plural.rsplit('/').next() == Some("status"));
                    kinds.entry(resource.kind.clone()).or_insert(Resolved {
                        resource,
                        namespaced: caps.scope == Scope::Namespaced,
                        status_subresource,
                    });
                }
            }
        }
        Ok(Kinds { by_version })
    }

    /// Resolves `apiVersion` + `kind`.
    pub fn resolve(&self, api_version: &str, kind: &str) -> Option<Resolved> {
        self.by_version.get(api_version)?.get(kind).cloned()
    }
}
