//! The inventory: the set of objects each stack has applied, stored in the cluster as one
//! ConfigMap per stack in `driftless-system` (like kapp's app record). It is the source of truth
//! for prune. New objects enter it before they are created; removed ones leave after deletion.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
use kube::api::{DeleteParams, ListParams, Patch, PatchParams};
use kube::{Api, Client};
use serde::{Deserialize, Serialize};

use super::{Error, FIELD_MANAGER, Result};
use crate::stack::ObjectKey;

/// Namespace holding the inventories.
pub const NAMESPACE: &str = "driftless-system";
/// Label on inventory ConfigMaps: the stack name.
pub const INVENTORY_LABEL: &str = "driftless.dev/inventory";
/// Label on inventory ConfigMaps: the driftless instance that owns the stack. Several instances
/// (repositories) may share a cluster; each handles only the inventories it owns.
pub const INSTANCE_LABEL: &str = "driftless.dev/instance";
/// Instance name when the host configuration gives none.
pub const DEFAULT_INSTANCE: &str = "default";
const DATA_KEY: &str = "objects.json";
/// The same record gzip-compressed, in `binaryData`: used when the JSON would not leave room in
/// a ConfigMap (1 MiB in all), e.g. a stack of several thousand objects.
const GZIP_KEY: &str = "objects.json.gz";
/// Largest plain JSON record written as text; larger ones are compressed.
const PLAIN_LIMIT: usize = 768 * 1024;

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
        }
    }
}

/// A stack's inventory, keyed by object.
#[derive(Debug, Clone, Default)]
pub struct Inventory {
    pub stack: String,
    /// The driftless instance that owns this stack.
    pub owner: String,
    pub entries: BTreeMap<ObjectKey, Entry>,
    /// The last run of each hook Job, by `namespace/name`.
    pub hooks: BTreeMap<String, HookRecord>,
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

#[derive(Serialize, Deserialize)]
struct Stored {
    version: u32,
    objects: Vec<Entry>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    hooks: BTreeMap<String, HookRecord>,
}

fn configmap_name(stack: &str) -> String {
    format!("inventory-{stack}")
}

fn decode(name: &str, cm: &ConfigMap) -> Result<Inventory> {
    let stack = cm
        .metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(INVENTORY_LABEL))
        .cloned()
        .unwrap_or_else(|| name.trim_start_matches("inventory-").to_owned());
    let owner = cm
        .metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(INSTANCE_LABEL))
        .cloned()
        .unwrap_or_else(|| DEFAULT_INSTANCE.to_owned());
    let unreadable = |e: String| Error::Inventory {
        name: format!("{NAMESPACE}/{name}"),
        message: format!(
            "unreadable ({e}); it was not written by this driftless version or was edited by hand"
        ),
    };
    let compressed = cm.binary_data.as_ref().and_then(|d| d.get(GZIP_KEY));
    let text = match compressed {
        Some(bytes) => {
            use std::io::Read as _;
            let mut text = String::new();
            flate2::read::GzDecoder::new(bytes.0.as_slice())
                .read_to_string(&mut text)
                .map_err(|e| unreadable(e.to_string()))?;
            text
        }
        None => cm
            .data
            .as_ref()
            .and_then(|d| d.get(DATA_KEY))
            .cloned()
            .unwrap_or_default(),
    };
    if text.is_empty() {
        return Ok(Inventory {
            stack,
            owner,
            ..Inventory::default()
        });
    }
    let stored: Stored = serde_json::from_str(&text).map_err(|e| unreadable(e.to_string()))?;
    Ok(Inventory {
        stack,
        owner,
        entries: stored.objects.into_iter().map(|e| (e.key(), e)).collect(),
        hooks: stored.hooks,
    })
}

/// Reads a stack's inventory; an absent one is empty.
pub async fn read(client: &Client, stack: &str) -> Result<Inventory> {
    let name = configmap_name(stack);
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), NAMESPACE);
    match api.get_opt(&name).await {
        Ok(Some(cm)) => decode(&name, &cm),
        Ok(None) => Ok(Inventory {
            stack: stack.to_owned(),
            owner: DEFAULT_INSTANCE.to_owned(),
            ..Inventory::default()
        }),
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
}

/// Every stack inventory in the cluster: this instance's read whole, the others' owners from
/// their labels only (another instance's record of thousands of objects is not downloaded).
pub async fn list(client: &Client, instance: &str) -> Result<Listed> {
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), NAMESPACE);
    let all = ListParams::default().labels(INVENTORY_LABEL);
    let mine =
        ListParams::default().labels(&format!("{INVENTORY_LABEL},{INSTANCE_LABEL}={instance}"));
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
        listed
            .own
            .push(decode(cm.metadata.name.as_deref().unwrap_or_default(), cm)?);
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
                    listed.own.push(decode(&name, &cm)?);
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

/// The ConfigMap holding a stack's inventory: the record as JSON text, or gzip-compressed in
/// `binaryData` when the text is large.
fn encode(inventory: &Inventory) -> Result<serde_json::Value> {
    let name = configmap_name(&inventory.stack);
    let stored = Stored {
        version: 1,
        objects: inventory.entries.values().cloned().collect(),
        hooks: inventory.hooks.clone(),
    };
    let text = serde_json::to_string(&stored).map_err(|e| Error::Inventory {
        name: name.clone(),
        message: e.to_string(),
    })?;
    let mut cm = serde_json::json!({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": name, "namespace": NAMESPACE,
            "labels": {INVENTORY_LABEL: inventory.stack, INSTANCE_LABEL: inventory.owner,
                "app.kubernetes.io/managed-by": "driftless"}},
    });
    // Server-side apply with the whole content: the key not written is removed.
    if text.len() <= PLAIN_LIMIT {
        cm["data"] = serde_json::json!({DATA_KEY: text});
    } else {
        use base64::Engine as _;
        use std::io::Write as _;
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        let bytes = gz
            .write_all(text.as_bytes())
            .and_then(|()| gz.finish())
            .map_err(|e| Error::Inventory {
                name: name.clone(),
                message: format!("cannot compress: {e}"),
            })?;
        let encoded = base64::engine::general_purpose::STANDARD.encode(bytes);
        cm["binaryData"] = serde_json::json!({GZIP_KEY: encoded});
    }
    Ok(cm)
}

/// Writes a stack's inventory (creating `driftless-system` on first use).
pub async fn write(client: &Client, inventory: &Inventory) -> Result<()> {
    let name = configmap_name(&inventory.stack);
    let cm = encode(inventory)?;
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), NAMESPACE);
    let params = PatchParams::apply(FIELD_MANAGER).force();
    let mut result = api.patch(&name, &params, &Patch::Apply(&cm)).await;
    // The first write in a cluster: create the namespace, then write again.
    if matches!(&result, Err(kube::Error::Api(s)) if s.code == 404) {
        ensure_namespace(client).await?;
        result = api.patch(&name, &params, &Patch::Apply(&cm)).await;
    }
    match result {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 422 && s.message.contains("Too long") => {
            Err(Error::Inventory {
                name: format!("{NAMESPACE}/{name}"),
                message: format!(
                    "the record of stack {}'s {} objects does not fit one ConfigMap even compressed: split the stack",
                    inventory.stack,
                    inventory.entries.len()
                ),
            })
        }
        Err(e) => Err(request_error(&name, "write", e)),
    }
}

/// Deletes a stack's inventory (after its objects are gone or handed to other stacks).
pub async fn delete(client: &Client, stack: &str) -> Result<()> {
    let name = configmap_name(stack);
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), NAMESPACE);
    match api.delete(&name, &DeleteParams::default()).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
        Err(e) => Err(request_error(&name, "delete", e)),
    }
}

async fn ensure_namespace(client: &Client) -> Result<()> {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn inventory(n: usize) -> Inventory {
        let mut inv = Inventory {
            stack: "big".to_owned(),
            owner: "default".to_owned(),
            ..Inventory::default()
        };
        for i in 0..n {
            let key = ObjectKey {
                group: String::new(),
                kind: "ConfigMap".to_owned(),
                namespace: Some(format!("ns-{}", i / 100)),
                name: format!("cm-{i}"),
            };
            let mut e = Entry::new(&key, "v1");
            e.hash = Some(format!("sha256:{:064x}", i * 7919));
            e.resource_version = Some(format!("{}", 100_000 + i));
            inv.entries.insert(key, e);
        }
        inv
    }

    fn roundtrip(inv: &Inventory) -> (serde_json::Value, Inventory) {
        let value = encode(inv).unwrap();
        let cm: ConfigMap = serde_json::from_value(value.clone()).unwrap();
        (value, decode("inventory-big", &cm).unwrap())
    }

    #[test]
    fn small_records_are_plain_json_and_large_ones_compressed() {
        let small = inventory(10);
        let (value, back) = roundtrip(&small);
        assert!(value["data"][DATA_KEY].is_string());
        assert!(value.get("binaryData").is_none());
        assert_eq!(back.entries, small.entries);

        // 10 000 objects: ~2 MB as text, under the ConfigMap limit compressed.
        let large = inventory(10_000);
        let (value, back) = roundtrip(&large);
        assert!(value.get("data").is_none());
        let encoded = value["binaryData"][GZIP_KEY].as_str().unwrap();
        assert!(
            encoded.len() * 3 / 4 < 1024 * 1024,
            "{} bytes",
            encoded.len() * 3 / 4
        );
        assert_eq!(back.entries, large.entries);
        assert_eq!(back.stack, "big");
    }
}
