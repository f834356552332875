//! Short waits on single objects during a reconcile: a CRD until it is Established, a deleted
//! object until it is gone. (The health wait of a whole stack is `health::wait_healthy`.)

use std::time::{Duration, Instant};

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::DynamicObject;
use kube::{Api, Client};

use super::{Error, Result, apply};

/// How long a CRD may take to become Established.
const ESTABLISHED_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a deleted object may take to disappear (finalizers run meanwhile).
const GONE_TIMEOUT: Duration = Duration::from_secs(120);
const POLL: Duration = Duration::from_millis(200);

/// Waits until the CRD `name` has its `Established` condition.
pub async fn established(client: &Client, name: &str) -> Result<()> {
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    let start = Instant::now();
    loop {
        // A failed read is retried like a CRD not established yet, until the timeout.
        if let Ok(crd) = api.get(name).await {
            let established = crd
                .status
                .and_then(|s| s.conditions)
                .unwrap_or_default()
                .iter()
                .any(|c| c.type_ == "Established" && c.status == "True");
            if established {
                return Ok(());
            }
        }
        if start.elapsed() > ESTABLISHED_TIMEOUT {
            return Err(Error::CrdNotEstablished {
                name: name.to_owned(),
                seconds: ESTABLISHED_TIMEOUT.as_secs(),
            });
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Waits until the object `name` (deleted `purpose`, e.g. "for recreation") no longer exists;
/// `what` names it in errors.
pub async fn gone(
    api: &Api<DynamicObject>,
    name: &str,
    what: &str,
    purpose: &'static str,
) -> Result<()> {
    let start = Instant::now();
    while apply::get(api, name, what).await?.is_some() {
        if start.elapsed() > GONE_TIMEOUT {
            return Err(Error::StillExists {
                object: what.to_owned(),
                purpose,
                seconds: GONE_TIMEOUT.as_secs(),
            });
        }
        tokio::time::sleep(POLL).await;
    }
    Ok(())
}
