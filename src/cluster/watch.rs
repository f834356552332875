//! Watch-fed drift detection: one watch per kind driftless manages (objects labelled
//! `driftless.dev/stack`, all namespaces). Only a small signature per object is kept — the one
//! the inventory records, `plan::signature`, which status writes do not move — never the object,
//! so memory stays flat. A change after the initial list that moves the signature, made by
//! another field manager than driftless, is reported to the daemon, which reconciles at once
//! instead of waiting for the next poll. Controllers writing status (HPAs, quotas, scaled
//! Deployments) trigger nothing.

use std::collections::HashMap;
use std::sync::Arc;

use futures::StreamExt;
use kube::api::{DynamicObject, PartialObjectMeta};
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use kube::{Api, Client, ResourceExt};
use sha2::{Digest as _, Sha256};
use tracing::{debug, warn};

use super::discovery::Resolved;
use crate::plan::signature;
use crate::stack::render::STACK_LABEL;

/// Called with (stack, object) when a managed object changed or disappeared.
pub type OnDrift = Arc<dyn Fn(&str, &str) + Send + Sync>;

/// Starts one watch task per resource, for the objects of `stacks` only (other instances and
/// stacks sharing the cluster are none of our business). Abort the handles to stop them.
pub fn spawn(
    client: &Client,
    resources: &[Resolved],
    stacks: &[String],
    on_drift: OnDrift,
) -> Vec<tokio::task::JoinHandle<()>> {
    let selector = format!("{STACK_LABEL} in ({})", stacks.join(","));
    resources
        .iter()
        .map(|ar| {
            // Metadata only (`PartialObjectMetadata`): the signature and the field managers are
            // all a watch needs, at a fraction of the objects' size on the wire and in memory.
            let api: Api<PartialObjectMeta<DynamicObject>> =
                Api::all_with(client.clone(), &ar.resource);
            let kind = Kind {
                name: ar.kind.clone(),
                status_subresource: ar.status_subresource,
            };
            let on_drift = on_drift.clone();
            let selector = selector.clone();
            tokio::spawn(async move { watch_one(api, kind, selector, on_drift).await })
        })
        .collect()
}

/// The kind one watch follows.
struct Kind {
    name: String,
    status_subresource: bool,
}

impl Kind {
    fn signature(&self, o: &impl ResourceExt) -> Digest {
        signature::digest(o.meta(), self.status_subresource)
    }
}

/// 16 bytes of a SHA-256: an object's identity or its signature, as a watch keeps them.
type Digest = [u8; 16];

/// What a watch remembers: each object's signature by its identity, both as digests (at 10 000
/// objects ~0.3 MiB, where names and signatures as text took ~2 MiB).
type Seen = HashMap<Digest, Digest>;

/// An object's identity within one kind: its namespace and name (neither can hold a NUL, so the
/// pair is unambiguous).
fn identity(namespace: Option<&str>, name: &str) -> Digest {
    let mut h = Sha256::new();
    h.update(namespace.unwrap_or_default().as_bytes());
    h.update([0]);
    h.update(name.as_bytes());
    let mut out = [0u8; 16];
    out.copy_from_slice(&h.finalize()[..16]);
    out
}

async fn watch_one(
    api: Api<PartialObjectMeta<DynamicObject>>,
    kind: Kind,
    selector: String,
    on_drift: OnDrift,
) {
    let config = watcher::Config::default().labels(&selector);
    let stream = watcher::watcher(api, config).default_backoff();
    futures::pin_mut!(stream);
    let mut seen = Seen::new();
    // After a watch restart the relist is compared with what was seen before it: a change or a
    // deletion during the gap is drift too.
    let mut before_relist: Option<Seen> = None;
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
                let key = identity(o.metadata.namespace.as_deref(), &o.name_any());
                let sig = kind.signature(&o);
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
                        debug!(kind = %kind.name, "managed objects changed while the watch was down");
                        on_drift("", &format!("{} (relisted)", kind.name));
                    }
                }
                listed = true;
                continue;
            }
            Ok(Event::Apply(o)) => (o, false),
            Ok(Event::Delete(o)) => (o, true),
            Err(e) => {
                warn!(kind = %kind.name, "watch interrupted (retrying with backoff): {e}");
                continue;
            }
        };
        let namespace = object.metadata.namespace.clone();
        let name = object.name_any();
        let key = identity(namespace.as_deref(), &name);
        let changed = if deleted {
            seen.remove(&key).is_some()
        } else {
            let sig = kind.signature(&object);
            seen.insert(key, sig) != Some(sig)
                && signature::changed_by_others(&object.metadata, super::FIELD_MANAGER)
        };
        if changed && listed {
            let stack = object
                .labels()
                .get(STACK_LABEL)
                .cloned()
                .unwrap_or_default();
            let name = match &namespace {
                Some(ns) => format!("{}/{ns}/{name}", kind.name),
                None => format!("{}/{name}", kind.name),
            };
            debug!(stack = %stack, object = %name, deleted, "managed object changed");
            on_drift(&stack, &name);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identities_of_different_objects_differ() {
        let ids = [
            identity(None, "ab"),
            identity(Some(""), "ab"),
            identity(Some("a"), "b"),
            identity(Some("ab"), ""),
            identity(Some("b"), "a"),
        ];
        // Only a cluster-scoped name and the same name in namespace "" (which no object has)
        // coincide.
        assert_eq!(ids[0], ids[1]);
        for (i, a) in ids.iter().enumerate().skip(1) {
            for b in &ids[i + 1..] {
                assert_ne!(a, b);
            }
        }
        assert_eq!(identity(Some("a"), "b"), identity(Some("a"), "b"));
    }
}
