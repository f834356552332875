//! The inventory: the set of objects each stack has applied, stored in the cluster as one
//! ConfigMap per stack in `driftless-system` (like kapp's app record). It is the source of truth
//! for prune. New objects enter it before they are created; removed ones leave after deletion.
//! Every update is conditional on the resourceVersion read, and re-read and merged on conflict:
//! two writers (a CLI sync beside the daemon) never lose each other's entries. `record` is the
//! format, the checks of what is read, and the merge.

mod record;

use std::collections::BTreeMap;
use std::sync::Arc;

use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams, Preconditions};
use kube::{Api, Client};
use serde::{Deserialize, Serialize};

use super::{Error, FIELD_MANAGER, Result};
use crate::stack::ObjectKey;
use record::{READ_LIMIT, configmap_name, decode, encode, merge};

/// Namespace holding the inventories.
pub const NAMESPACE: &str = "driftless-system";
/// Label on inventory ConfigMaps: the stack name.
pub const INVENTORY_LABEL: &str = "driftless.dev/inventory";
/// Label on inventory ConfigMaps: the driftless instance that owns the stack. Several instances
/// (repositories) may share a cluster; each handles only the inventories it owns.
pub const INSTANCE_LABEL: &str = "driftless.dev/instance";
/// Instance name when the host configuration gives none.
pub const DEFAULT_INSTANCE: &str = "default";
/// Conditional writes tried before giving up on a record that keeps changing.
const WRITE_ATTEMPTS: usize = 8;

/// One object a stack applied.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    pub group: String,
    pub kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    pub name: String,
    #[serde(rename = "apiVersion")]
    pub api_version: String,
    /// Hash of the desired object at its last successful apply (not for Secrets).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hash: Option<String>,
    /// The object's resourceVersion right after that apply.
    #[serde(
        default,
        rename = "resourceVersion",
        skip_serializing_if = "Option::is_none"
    )]
    pub resource_version: Option<String>,
    /// The object's generation right after that apply (for kinds that have one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generation: Option<i64>,
    /// The object's signature (`plan::signature`) right after that apply, or when a dry-run
    /// confirmed it since. Records of older versions have none (and are compared by
    /// resourceVersion or generation).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signature: Option<String>,
}

impl Entry {
    /// The object's identity.
    pub fn key(&self) -> ObjectKey {
        ObjectKey {
            group: self.group.clone(),
            kind: self.kind.clone(),
            namespace: self.namespace.clone(),
            name: self.name.clone(),
        }
    }

    /// What this record says about the object's last apply.
    pub fn last_apply(&self) -> crate::plan::unchanged::LastApply<'_> {
        crate::plan::unchanged::LastApply {
            hash: self.hash.as_deref(),
            resource_version: self.resource_version.as_deref(),
            generation: self.generation,
            signature: self.signature.as_deref(),
        }
    }

    /// A new entry without apply records.
    pub fn new(key: &ObjectKey, api_version: &str) -> Entry {
        Entry {
            group: key.group.clone(),
            kind: key.kind.clone(),
            namespace: key.namespace.clone(),
            name: key.name.clone(),
            api_version: api_version.to_owned(),
            hash: None,
            resource_version: None,
            generation: None,
            signature: None,
        }
    }
}

/// A stack's inventory, keyed by object.
#[derive(Debug, Clone, Default)]
pub struct Inventory {
    pub stack: String,
    /// The driftless instance that owns this stack.
    pub owner: String,
    /// The source the stack was last applied from (repository URL or path); `None` in a record
    /// of an older driftless.
    pub source: Option<String>,
    /// Shared with the record as read (`ReadState`) and with copies of this inventory until one
    /// of them changes it (`entries_mut`): a record of 10,000 objects is copied once per change,
    /// not at every read, copy and write.
    pub entries: Arc<BTreeMap<ObjectKey, Entry>>,
    /// The last run of each hook Job, by `namespace/name`.
    pub hooks: BTreeMap<String, HookRecord>,
    /// The record as last read or written: the precondition of the next write and the base of a
    /// merge. `None`: not in the cluster (as far as this copy knows).
    read: Option<ReadState>,
}

/// Shared between copies of a record (a reconcile works on a copy of the record it read): only
/// a write or a merge replaces it.
#[derive(Debug, Clone, Default)]
struct ReadState {
    resource_version: String,
    entries: Arc<BTreeMap<ObjectKey, Entry>>,
    hooks: Arc<BTreeMap<String, HookRecord>>,
}

impl Inventory {
    /// An empty inventory of `stack`, owned by `owner`, not yet in the cluster.
    pub fn new(stack: &str, owner: &str) -> Inventory {
        Inventory {
            stack: stack.to_owned(),
            owner: owner.to_owned(),
            ..Inventory::default()
        }
    }

    /// The entries to change: copied first when another copy shares them.
    pub fn entries_mut(&mut self) -> &mut BTreeMap<ObjectKey, Entry> {
        Arc::make_mut(&mut self.entries)
    }

    /// Whether this record was read from (or written to) the cluster.
    pub fn exists(&self) -> bool {
        self.read.is_some()
    }

    /// Takes in what another writer stored meanwhile (`theirs`, freshly read): our changes since
    /// our last read or write are kept on top of it.
    fn merge_from(&mut self, theirs: Inventory) {
        let base = self.read.take().unwrap_or_default();
        self.entries = Arc::new(merge(&base.entries, &self.entries, &theirs.entries));
        self.hooks = merge(&base.hooks, &self.hooks, &theirs.hooks);
        self.read = theirs.read;
    }
}

/// The last run of a hook (`spec.hooks`): what ran and how it ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HookRecord {
    /// Hash of the Job's definition that ran.
    pub hash: String,
    pub succeeded: bool,
    /// RFC 3339 time the run ended.
    pub finished_at: String,
    /// Why it failed (the Job's condition), when it did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// Reads a stack's inventory; an absent one is empty.
pub async fn read(client: &Client, stack: &str) -> Result<Inventory> {
    let name = configmap_name(stack);
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), NAMESPACE);
    match api.get_opt(&name).await {
        Ok(Some(cm)) => decode(&name, &cm, READ_LIMIT),
        Ok(None) => Ok(Inventory::new(stack, DEFAULT_INSTANCE)),
        Err(e) => Err(request_error(&name, "read", e)),
    }
}

/// The inventories in the cluster, as one instance sees them.
#[derive(Debug, Default)]
pub struct Listed {
    /// This instance's inventories, read whole (including stacks that left Git).
    pub own: Vec<Inventory>,
    /// Stacks whose inventory another instance owns, with that owner.
    pub foreign: BTreeMap<String, String>,
    /// This instance's inventories that cannot be read (malformed, oversized, forged), by stack,
    /// with the error: their stacks are neither applied nor pruned.
    pub unreadable: BTreeMap<String, String>,
}

/// Every stack inventory in the cluster: this instance's read whole, the others' owners from
/// their labels only (another instance's record of thousands of objects is not downloaded).
pub async fn list(client: &Client, instance: &str) -> Result<Listed> {
    list_with(client, instance, ListParams::default()).await
}

/// `list`, as the API server's watch cache holds the records now, without waiting for it to
/// catch up with etcd (`resourceVersion=0`): possibly a moment old, so only to nominate the
/// stacks whose Leases a sync takes; `refresh` then reads those again. A consistent LIST would
/// make the sync's own LIST of ConfigMaps right after it wait: the API server asks etcd for the
/// progress of a resource's watch at most every 100 ms while reads of it wait (measured: ~80 ms
/// of a 1 % sync of 1,000 objects).
pub async fn list_cached(client: &Client, instance: &str) -> Result<Listed> {
    list_with(client, instance, ListParams::default().match_any()).await
}

async fn list_with(client: &Client, instance: &str, base: ListParams) -> Result<Listed> {
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), NAMESPACE);
    let all = base.clone().labels(INVENTORY_LABEL);
    let mine = base.labels(&format!("{INVENTORY_LABEL},{INSTANCE_LABEL}={instance}"));
    let (metadata, full) = futures::join!(api.list_metadata(&all), api.list(&mine));
    let (metadata, full) = match (metadata, full) {
        (Ok(m), Ok(f)) => (m, f),
        (Err(kube::Error::Api(s)), _) | (_, Err(kube::Error::Api(s))) if s.code == 404 => {
            return Ok(Listed::default());
        }
        (Err(e), _) | (_, Err(e)) => return Err(request_error("(list)", "list", e)),
    };
    let mut listed = Listed::default();
    for cm in &full.items {
        admit(&mut listed, cm);
    }
    for meta in &metadata.items {
        let labels = meta.metadata.labels.as_ref();
        let Some(stack) = labels.and_then(|l| l.get(INVENTORY_LABEL)) else {
            continue;
        };
        match labels.and_then(|l| l.get(INSTANCE_LABEL)) {
            Some(owner) if owner == instance => {}
            Some(owner) => {
                listed.foreign.insert(stack.clone(), owner.clone());
            }
            // Written without an owner label: the default instance's.
            None if instance == DEFAULT_INSTANCE => {
                let name = meta.metadata.name.clone().unwrap_or_default();
                if let Some(cm) = api
                    .get_opt(&name)
                    .await
                    .map_err(|e| request_error(&name, "read", e))?
                {
                    admit(&mut listed, &cm);
                }
            }
            None => {
                listed
                    .foreign
                    .insert(stack.clone(), DEFAULT_INSTANCE.to_owned());
            }
        }
    }
    Ok(listed)
}

/// `listed` (read before this process took the Leases of `stacks`, by `list_cached`: possibly a
/// moment old) with the inventories of `stacks` read again, now that nobody else may write
/// them: one GET each, which the API server answers from etcd at once, where a LIST right after
/// a write (the Leases just taken) waits for its watch cache to catch up (up to ~100 ms). The
/// same admission as `list`: this instance's records read whole, another instance's only named
/// as its owner.
pub async fn refresh(
    client: &Client,
    instance: &str,
    mut listed: Listed,
    stacks: &[String],
) -> Result<Listed> {
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), NAMESPACE);
    let reads = stacks.iter().map(|stack| {
        let api = api.clone();
        async move {
            let name = configmap_name(stack);
            let cm = api
                .get_opt(&name)
                .await
                .map_err(|e| request_error(&name, "read", e))?;
            Ok::<_, Error>((stack, cm))
        }
    });
    for read in futures::future::join_all(reads).await {
        let (stack, cm) = read?;
        // This instance's record of a stack always has the stack's record name (`decode`
        // refuses another), so the GET finds it or it is gone. What the listing found claiming
        // the stack otherwise (another instance's record, an unreadable one) stays: the stack is
        // refused this run rather than taken over on a read that cannot see those.
        listed.own.retain(|o| &o.stack != stack);
        let Some(cm) = cm else { continue };
        let labels = cm.metadata.labels.as_ref();
        if labels.and_then(|l| l.get(INVENTORY_LABEL)) != Some(stack) {
            // Not a record of this stack (its name is the record's, its labels are not): the
            // listing saw it as what its labels say.
            continue;
        }
        match labels.and_then(|l| l.get(INSTANCE_LABEL)) {
            Some(owner) if owner == instance => admit(&mut listed, &cm),
            None if instance == DEFAULT_INSTANCE => admit(&mut listed, &cm),
            Some(owner) => {
                listed.foreign.insert(stack.clone(), owner.clone());
            }
            None => {
                listed
                    .foreign
                    .insert(stack.clone(), DEFAULT_INSTANCE.to_owned());
            }
        }
    }
    Ok(listed)
}

/// Adds one of this instance's inventory ConfigMaps to `listed`: readable, or not.
fn admit(listed: &mut Listed, cm: &ConfigMap) {
    let name = cm.metadata.name.as_deref().unwrap_or_default();
    match decode(name, cm, READ_LIMIT) {
        Ok(inv) if listed.unreadable.contains_key(&inv.stack) => {}
        Ok(inv) => listed.own.push(inv),
        Err(e) => {
            let stack = cm
                .metadata
                .labels
                .as_ref()
                .and_then(|l| l.get(INVENTORY_LABEL))
                .cloned()
                .unwrap_or_else(|| name.to_owned());
            // A stack named by an unreadable record is not acted on, whatever else claims it.
            listed.own.retain(|o| o.stack != stack);
            listed.unreadable.insert(stack, e.to_string());
        }
    }
}

/// Writes a stack's inventory (creating `driftless-system` on first use), on condition that
/// nobody wrote it since this copy was read or written; otherwise reads it again, merges (see
/// `record::merge`) and tries again. On success `inventory` holds what was stored.
pub async fn write(client: &Client, inventory: &mut Inventory) -> Result<()> {
    let name = configmap_name(&inventory.stack);
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), NAMESPACE);
    let params = PostParams {
        dry_run: false,
        field_manager: Some(FIELD_MANAGER.to_owned()),
    };
    for _ in 0..WRITE_ATTEMPTS {
        let cm = encode(inventory)?;
        let result = if inventory.read.is_some() {
            api.replace(&name, &params, &cm).await
        } else {
            let created = api.create(&params, &cm).await;
            // The first write in a cluster: create the namespace, then write again.
            if matches!(&created, Err(kube::Error::Api(s)) if s.code == 404) {
                ensure_namespace(client).await?;
                api.create(&params, &cm).await
            } else {
                created
            }
        };
        match result {
            Ok(stored) => {
                inventory.read = Some(ReadState {
                    resource_version: stored.metadata.resource_version.unwrap_or_default(),
                    entries: Arc::clone(&inventory.entries),
                    hooks: Arc::new(inventory.hooks.clone()),
                });
                return Ok(());
            }
            // Written (or created, or deleted) by someone else since it was read.
            Err(kube::Error::Api(s))
                if s.code == 409 || (s.code == 404 && inventory.read.is_some()) =>
            {
                let theirs = read(client, &inventory.stack).await?;
                inventory.merge_from(theirs);
            }
            Err(kube::Error::Api(s)) if s.code == 422 && s.message.contains("Too long") => {
                return Err(Error::Inventory {
                    name: format!("{NAMESPACE}/{name}"),
                    message: format!(
                        "the record of stack {}'s {} objects does not fit one ConfigMap even compressed: split the stack",
                        inventory.stack,
                        inventory.entries.len()
                    ),
                });
            }
            Err(e) => return Err(request_error(&name, "write", e)),
        }
    }
    Err(Error::Inventory {
        name: format!("{NAMESPACE}/{name}"),
        message: format!(
            "changed by another writer at each of {WRITE_ATTEMPTS} attempts to write it; is another driftless with instance name {:?} running?",
            inventory.owner
        ),
    })
}

/// Deletes a stack's inventory (after its objects are gone or handed to other stacks), on
/// condition that nobody wrote it since `inventory` was read or written: a record another writer
/// changed meanwhile is left, and that is an error.
pub async fn delete(client: &Client, inventory: &Inventory) -> Result<()> {
    let name = configmap_name(&inventory.stack);
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), NAMESPACE);
    let Some(read) = &inventory.read else {
        return Ok(());
    };
    let params = DeleteParams {
        preconditions: Some(Preconditions {
            resource_version: Some(read.resource_version.clone()),
            uid: None,
        }),
        ..DeleteParams::default()
    };
    match api.delete(&name, &params).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 409 => Err(Error::Inventory {
            name: format!("{NAMESPACE}/{name}"),
            message: "another driftless wrote it while its stack was being removed: it is left for the next run".to_owned(),
        }),
        Err(e) => Err(request_error(&name, "delete", e)),
    }
}

pub(super) async fn ensure_namespace(client: &Client) -> Result<()> {
    let api: Api<Namespace> = Api::all(client.clone());
    if api
        .get_opt(NAMESPACE)
        .await
        .map_err(|e| request_error(NAMESPACE, "read", e))?
        .is_some()
    {
        return Ok(());
    }
    let ns = serde_json::json!({"apiVersion": "v1", "kind": "Namespace",
        "metadata": {"name": NAMESPACE, "labels": {"app.kubernetes.io/managed-by": "driftless"}}});
    api.patch(
        NAMESPACE,
        &PatchParams::apply(FIELD_MANAGER),
        &Patch::Apply(&ns),
    )
    .await
    .map_err(|e| request_error(NAMESPACE, "create", e))?;
    Ok(())
}

fn request_error(name: &str, action: &'static str, source: kube::Error) -> Error {
    Error::Request {
        object: format!("inventory ConfigMap {NAMESPACE}/{name}"),
        action,
        message: super::message_of(&source),
        hint: super::hint_for(&source),
        source,
    }
}
