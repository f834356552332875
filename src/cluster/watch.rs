//! Watch-fed drift detection: one watch per kind driftless manages (objects labelled
//! `driftless.dev/stack`, all namespaces). Only a small signature per object is kept — its
//! generation, or its resourceVersion for kinds without one — never the object, so memory stays
//! flat. A change after the initial list, made by another field manager than driftless, is
//! reported to the daemon, which reconciles at once instead of waiting for the next poll.

use std::collections::HashMap;
use std::sync::Arc;

use futures::StreamExt;
use kube::api::{ApiResource, DynamicObject, PartialObjectMeta};
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use kube::{Api, Client, ResourceExt};
use tracing::{debug, warn};

use crate::stack::render::STACK_LABEL;

/// Called with (stack, object) when a managed object changed or disappeared.
pub type OnDrift = Arc<dyn Fn(&str, &str) + Send + Sync>;

/// Starts one watch task per resource, for the objects of `stacks` only (other instances and
/// stacks sharing the cluster are none of our business). Abort the handles to stop them.
pub fn spawn(
    client: &Client,
    resources: &[ApiResource],
    stacks: &[String],
    on_drift: OnDrift,
) -> Vec<tokio::task::JoinHandle<()>> {
    let selector = format!("{STACK_LABEL} in ({})", stacks.join(","));
    resources
        .iter()
        .map(|ar| {
            // Metadata only (`PartialObjectMetadata`): the signature and the field managers are
            // all a watch needs, at a fraction of the objects' size on the wire and in memory.
            let api: Api<PartialObjectMeta<DynamicObject>> = Api::all_with(client.clone(), ar);
            let kind = ar.kind.clone();
            let on_drift = on_drift.clone();
            let selector = selector.clone();
            tokio::spawn(async move { watch_one(api, kind, selector, on_drift).await })
        })
        .collect()
}

/// Whether the newest write recorded in `managedFields` came from another manager than
/// driftless: our own applies must not look like drift. Timestamps have one-second
/// resolution, so a foreign write in the same second as ours counts as foreign.
fn changed_by_others(o: &impl ResourceExt) -> bool {
    let fields = o.managed_fields();
    let Some(newest) = fields.iter().filter_map(|m| m.time.as_ref()).max() else {
        return true;
    };
    fields
        .iter()
        .filter(|m| m.time.as_ref() == Some(newest))
        .any(|m| m.manager.as_deref() != Some(super::FIELD_MANAGER))
}

fn signature(o: &impl ResourceExt) -> String {
    match o.meta().generation {
        Some(g) => format!("g{g}"),
        None => format!("r{}", o.resource_version().unwrap_or_default()),
    }
}

async fn watch_one(
    api: Api<PartialObjectMeta<DynamicObject>>,
    kind: String,
    selector: String,
    on_drift: OnDrift,
) {
    let config = watcher::Config::default().labels(&selector);
    let stream = watcher::watcher(api, config).default_backoff();
    futures::pin_mut!(stream);
    let mut seen: HashMap<(Option<String>, String), String> = HashMap::new();
    // After a watch restart the relist is compared with what was seen before it: a change or a
    // deletion during the gap is drift too.
    let mut before_relist: Option<HashMap<(Option<String>, String), String>> = None;
    let mut gap_changed = false;
    let mut listed = false;
    while let Some(event) = stream.next().await {
        let (object, deleted) = match event {
            Ok(Event::Init) => {
                if listed {
                    before_relist = Some(std::mem::take(&mut seen));
                }
                gap_changed = false;
                listed = false;
                continue;
            }
            Ok(Event::InitApply(o)) => {
                let key = (o.namespace(), o.name_any());
                let sig = signature(&o);
                if let Some(before) = &before_relist {
                    gap_changed |= before.get(&key) != Some(&sig);
                }
                seen.insert(key, sig);
                continue;
            }
            Ok(Event::InitDone) => {
                if let Some(before) = before_relist.take() {
                    gap_changed |= before.keys().any(|k| !seen.contains_key(k));
                    if gap_changed {
                        debug!(kind = %kind, "managed objects changed while the watch was down");
                        on_drift("", &format!("{kind} (relisted)"));
                    }
                }
                listed = true;
                continue;
            }
            Ok(Event::Apply(o)) => (o, false),
            Ok(Event::Delete(o)) => (o, true),
            Err(e) => {
                warn!(kind = %kind, "watch interrupted (retrying with backoff): {e}");
                continue;
            }
        };
        let key = (object.namespace(), object.name_any());
        let changed = if deleted {
            seen.remove(&key).is_some()
        } else {
            let sig = signature(&object);
            seen.insert(key.clone(), sig.clone()).as_ref() != Some(&sig)
                && changed_by_others(&object)
        };
        if changed && listed {
            let stack = object
                .labels()
                .get(STACK_LABEL)
                .cloned()
                .unwrap_or_default();
            let name = match &key.0 {
                Some(ns) => format!("{kind}/{ns}/{}", key.1),
                None => format!("{kind}/{}", key.1),
            };
            debug!(stack = %stack, object = %name, deleted, "managed object changed");
            on_drift(&stack, &name);
        }
    }
}
