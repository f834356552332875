//! What the identity driftless runs as may do: the API server's version and
//! `SelfSubjectAccessReview`s, for `driftless doctor`.

use k8s_openapi::api::authorization::v1::{
    ResourceAttributes, SelfSubjectAccessReview, SelfSubjectAccessReviewSpec,
};
use kube::Client;
use kube::api::{Api, PostParams};

use super::{Error, Result};

/// One question for the API server's authorizer: may I `verb` `resource` (of `group`), in
/// `namespace` (`None`: cluster-wide or every namespace)?
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Access {
    pub verb: String,
    pub group: String,
    pub resource: String,
    pub namespace: Option<String>,
}

impl std::fmt::Display for Access {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let resource = if self.group.is_empty() {
            self.resource.clone()
        } else {
            format!("{}.{}", self.resource, self.group)
        };
        match &self.namespace {
            Some(ns) => write!(f, "{} {resource} in {ns}", self.verb),
            None => write!(f, "{} {resource}", self.verb),
        }
    }
}

/// The API server's `gitVersion` (e.g. `v1.36.3`).
pub async fn server_version(client: &Client) -> Result<String> {
    client
        .apiserver_version()
        .await
        .map(|v| v.git_version)
        .map_err(Error::Connect)
}

/// Whether the authorizer allows `access`, and its reason when it does not.
pub async fn allowed(client: &Client, access: &Access) -> Result<(bool, Option<String>)> {
    let review = SelfSubjectAccessReview {
        spec: SelfSubjectAccessReviewSpec {
            resource_attributes: Some(ResourceAttributes {
                verb: Some(access.verb.clone()),
                group: Some(access.group.clone()),
                resource: Some(access.resource.clone()),
                namespace: access.namespace.clone(),
                ..ResourceAttributes::default()
            }),
            ..SelfSubjectAccessReviewSpec::default()
        },
        ..SelfSubjectAccessReview::default()
    };
    let api: Api<SelfSubjectAccessReview> = Api::all(client.clone());
    let answer = api
        .create(&PostParams::default(), &review)
        .await
        .map_err(|source| Error::Request {
            object: format!("SelfSubjectAccessReview ({access})"),
            action: "create",
            message: source.to_string(),
            hint: String::new(),
            source,
        })?;
    let status = answer.status.unwrap_or_default();
    let reason = status
        .reason
        .filter(|r| !r.is_empty())
        .or(status.evaluation_error.filter(|e| !e.is_empty()));
    Ok((status.allowed && !status.denied.unwrap_or(false), reason))
}
