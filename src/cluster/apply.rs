//! Server-side apply (and its dry-run), reads and deletes of single objects.

use std::sync::OnceLock;

use hmac::{Hmac, KeyInit, Mac};
use kube::api::{
    ApiResource, DeleteParams, DynamicObject, Patch, PatchParams, Preconditions, PropagationPolicy,
};
use kube::{Api, Client};
use serde::Serialize;
use serde_json::Value;
use sha2::{Digest, Sha256};

use super::{Error, FIELD_MANAGER, Result};
use crate::plan::ownership::{Deletable, INSTANCE_ANNOTATION};
use crate::stack::DesiredObject;

/// A field another manager owned, named by the API server's conflict report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Conflict {
    pub manager: String,
    pub field: String,
}

impl std::fmt::Display for Conflict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} (owned by {})", self.field, self.manager)
    }
}

/// The API for one object's resource, in its namespace.
pub fn api_for(
    client: &Client,
    resource: &ApiResource,
    namespace: Option<&str>,
) -> Api<DynamicObject> {
    match namespace {
        Some(ns) => Api::namespaced_with(client.clone(), ns, resource),
        None => Api::all_with(client.clone(), resource),
    }
}

/// How one object is applied.
#[derive(Debug, Clone, Copy)]
pub struct ApplyParams<'a> {
    /// Take over fields other managers own (reporting each).
    pub force: bool,
    /// A server-side dry-run: nothing is stored.
    pub dry_run: bool,
    /// This driftless instance: its mark (`driftless.dev/instance`) goes on the object.
    pub instance: &'a str,
}

/// The request body: the desired object with this instance's mark, and a Secret's data put
/// back at the last moment.
fn body(desired: &DesiredObject, instance: &str) -> Value {
    let mut body = desired.object.clone();
    if let Some(metadata) = body.get_mut("metadata").and_then(Value::as_object_mut) {
        let annotations = metadata
            .entry("annotations")
            .or_insert_with(|| Value::Object(serde_json::Map::new()));
        if let Value::Object(annotations) = annotations {
            annotations.insert(INSTANCE_ANNOTATION.to_owned(), instance.into());
        }
    }
    if let (Some(data), Value::Object(map)) = (&desired.secret_data, &mut body) {
        map.insert("data".to_owned(), Value::Object(data.to_api_data()));
    }
    body
}

/// Applies `desired` (server-side apply, field manager `driftless`), as a dry-run or for real,
/// with the instance's mark. Without `force`, a conflict with another manager is an error naming
/// every field; with it, the takeover happens and the conflicts are returned so the caller can
/// report them.
pub async fn apply(
    api: &Api<DynamicObject>,
    desired: &DesiredObject,
    how: ApplyParams<'_>,
) -> Result<(Value, Vec<Conflict>)> {
    let (force, dry_run) = (how.force, how.dry_run);
    let body = body(desired, how.instance);
    let mut params = PatchParams::apply(FIELD_MANAGER);
    params.dry_run = dry_run;
    let action = if dry_run {
        "server-side apply dry-run"
    } else {
        "server-side apply"
    };
    let first = api
        .patch(&desired.key.name, &params, &Patch::Apply(&body))
        .await;
    let (result, conflicts) = match first {
        Err(kube::Error::Api(status)) if status.code == 409 => {
            let conflicts = conflicts_of(&status);
            if !force {
                return Err(Error::Conflict {
                    object: desired.key.to_string(),
                    conflicts: conflicts
                        .iter()
                        .map(ToString::to_string)
                        .collect::<Vec<_>>()
                        .join(", "),
                });
            }
            let forced = api
                .patch(
                    &desired.key.name,
                    &params.clone().force(),
                    &Patch::Apply(&body),
                )
                .await;
            (forced, conflicts)
        }
        other => (other, Vec::new()),
    };
    let object = result.map_err(|source| request_error(desired, action, source))?;
    let mut value = serde_json::to_value(object).map_err(|e| Error::Request {
        object: desired.key.to_string(),
        action,
        message: format!("unreadable response: {e}"),
        hint: String::new(),
        source: kube::Error::SerdeError(e),
    })?;
    redact_secret(&mut value);
    Ok((value, conflicts))
}

fn request_error(desired: &DesiredObject, action: &'static str, source: kube::Error) -> Error {
    Error::Request {
        object: format!("{} ({})", desired.key, desired.place),
        action,
        message: super::message_of(&source),
        hint: super::hint_for(&source),
        source,
    }
}

fn conflicts_of(status: &kube::core::Status) -> Vec<Conflict> {
    let causes = status
        .details
        .as_ref()
        .map(|d| d.causes.clone())
        .unwrap_or_default();
    causes
        .into_iter()
        .filter(|c| c.reason == "FieldManagerConflict" || !c.field.is_empty())
        .map(|c| Conflict {
            // "conflict with \"kubectl-edit\" using apps/v1"
            manager: c.message.split('"').nth(1).unwrap_or(&c.message).to_owned(),
            field: c.field,
        })
        .collect()
}

/// Reads one object; `None` when it does not exist. Secret values are redacted on arrival.
pub async fn get(api: &Api<DynamicObject>, name: &str, what: &str) -> Result<Option<Value>> {
    match api.get_opt(name).await {
        Ok(Some(mut obj)) => {
            // Diffs drop them; kept they would only weigh on memory.
            obj.metadata.managed_fields = None;
            let mut value = serde_json::to_value(obj).map_err(|e| Error::Request {
                object: what.to_owned(),
                action: "read",
                message: e.to_string(),
                hint: String::new(),
                source: kube::Error::SerdeError(e),
            })?;
            redact_secret(&mut value);
            Ok(Some(value))
        }
        Ok(None) => Ok(None),
        Err(source) => Err(Error::Request {
            object: what.to_owned(),
            action: "read",
            message: super::message_of(&source),
            hint: super::hint_for(&source),
            source,
        }),
    }
}

/// Deletes one object found deletable (`plan::ownership::check`), background propagation, on
/// condition that it is still the object checked (its uid). `false` when it was already gone or
/// has been replaced by another object of that name meanwhile (which is left alone).
pub async fn delete(api: &Api<DynamicObject>, target: &Deletable, what: &str) -> Result<bool> {
    let params = DeleteParams {
        propagation_policy: Some(PropagationPolicy::Background),
        preconditions: Some(Preconditions {
            uid: Some(target.uid().to_owned()),
            resource_version: None,
        }),
        ..DeleteParams::default()
    };
    match api.delete(target.name(), &params).await {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => Ok(false),
        Err(source) => Err(Error::Request {
            object: what.to_owned(),
            action: "delete",
            message: super::message_of(&source),
            hint: super::hint_for(&source),
            source,
        }),
    }
}

/// Replaces each value of a Secret's `data`/`stringData` with a keyed hash, keyed by a random
/// per-process key: equal values still compare equal (so a diff can say *that* a key changed),
/// but nothing that leaves the process, even the hash, says anything about a value.
pub fn redact_secret(object: &mut Value) {
    if !crate::plan::normalize::is_secret(object) {
        return;
    }
    static KEY: OnceLock<[u8; 32]> = OnceLock::new();
    let key = KEY.get_or_init(rand::random);
    for field in ["data", "stringData"] {
        if let Some(Value::Object(map)) = object.get_mut(field) {
            for v in map.values_mut() {
                let bytes = v.as_str().unwrap_or_default().as_bytes().to_vec();
                // HMAC accepts keys of any length: new_from_slice cannot fail here.
                let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(key) else {
                    *v = Value::String("redacted".to_owned());
                    continue;
                };
                mac.update(&bytes);
                let tag = mac.finalize().into_bytes();
                *v = Value::String(format!("redacted:{}", crate::hex::encode(&tag[..12])));
            }
        }
    }
    if let Some(Value::Object(ann)) = object.pointer_mut("/metadata/annotations")
        && let Some(v) = ann.get_mut("kubectl.kubernetes.io/last-applied-configuration")
    {
        *v = Value::String("redacted".to_owned());
    }
}

/// A key for hashing Secrets into the inventory, kept in the local state directory (never in the
/// cluster): with it, an unchanged Secret is recognised without a dry-run, and the stored hash
/// says nothing about the Secret's value to anyone who can read the inventory.
#[derive(Clone)]
pub struct SecretHashKey(std::sync::Arc<[u8; 32]>);

impl SecretHashKey {
    /// A digest of the key that names it without revealing it (`stack::object::HashedBy`).
    pub fn id(&self) -> [u8; 32] {
        Sha256::digest(self.0.as_slice()).into()
    }
}

impl std::fmt::Debug for SecretHashKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SecretHashKey(..)")
    }
}

impl SecretHashKey {
    /// Reads `<state_dir>/secret-hash.key`, creating it (mode 0600) on first use. `None` when
    /// the state directory is not writable: Secrets are then always dry-run.
    pub fn load_or_create(state_dir: &std::path::Path) -> Option<SecretHashKey> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let path = state_dir.join("secret-hash.key");
        if let Ok(bytes) = std::fs::read(&path)
            && let Ok(key) = <[u8; 32]>::try_from(bytes.as_slice())
        {
            return Some(SecretHashKey(std::sync::Arc::new(key)));
        }
        std::fs::create_dir_all(state_dir).ok()?;
        let key: [u8; 32] = rand::random();
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&path)
            .ok()?;
        f.write_all(&key).ok()?;
        f.sync_all().ok()?;
        Some(SecretHashKey(std::sync::Arc::new(key)))
    }
}

/// Hash of the desired object as rendered. A Secret is hashed only with a `SecretHashKey`
/// (keyed, over its data too); without one it has no hash.
pub fn desired_hash(desired: &DesiredObject, key: Option<&SecretHashKey>) -> Option<String> {
    hash_with(desired, key, b"")
}

/// Hash of the desired object as sent by `instance` (its mark included), recorded in the
/// inventory so an unchanged object can be skipped without a dry-run. An object applied before
/// the mark existed hashes differently: its next reconcile dry-runs it and adds the mark. A
/// Secret without a `SecretHashKey` has no hash and is always dry-run.
pub fn applied_hash(
    desired: &DesiredObject,
    key: Option<&SecretHashKey>,
    instance: &str,
) -> Option<String> {
    let secret = desired.secret_data.is_some();
    // The key's id is worked out only for a Secret (the only hash that depends on the key).
    let key_id = key.filter(|_| secret).map(SecretHashKey::id);
    if let Some(memo) = desired.applied.get(instance, key_id.as_ref(), secret) {
        return memo.map(str::to_owned);
    }
    hash_with(
        desired,
        key,
        format!("\0{INSTANCE_ANNOTATION}={instance}").as_bytes(),
    )
}

/// `applied_hash` of an object whose canonical serialisation (`serde_json::to_vec` of
/// `desired.object`) is `json`, without serialising it again.
pub fn applied_hash_of_text(
    desired: &DesiredObject,
    json: &[u8],
    key: Option<&SecretHashKey>,
    instance: &str,
) -> Option<String> {
    let mark = format!("\0{INSTANCE_ANNOTATION}={instance}");
    hash_parts(desired, &[json, mark.as_bytes()], key)
}

fn hash_with(desired: &DesiredObject, key: Option<&SecretHashKey>, mark: &[u8]) -> Option<String> {
    // serde_json::Value maps are sorted, so the serialisation is canonical.
    let text = serde_json::to_vec(&desired.object).ok()?;
    hash_parts(desired, &[&text, mark], key)
}

/// The hash of `parts` one after the other (as one text), keyed and over the Secret's data for
/// an object that has some.
fn hash_parts(
    desired: &DesiredObject,
    parts: &[&[u8]],
    key: Option<&SecretHashKey>,
) -> Option<String> {
    match (&desired.secret_data, key) {
        (None, _) => {
            let mut hasher = Sha256::new();
            for part in parts {
                hasher.update(part);
            }
            Some(format!("sha256:{}", crate::hex::encode(&hasher.finalize())))
        }
        (Some(_), None) => None,
        (Some(data), Some(key)) => {
            use secrecy::ExposeSecret;
            let mut mac = Hmac::<Sha256>::new_from_slice(key.0.as_slice()).ok()?;
            for part in parts {
                mac.update(part);
            }
            for (k, v) in &data.0 {
                // Length prefixes keep (k, v) boundaries unambiguous.
                mac.update(&(k.len() as u64).to_le_bytes());
                mac.update(k.as_bytes());
                mac.update(&(v.expose_secret().len() as u64).to_le_bytes());
                mac.update(v.expose_secret());
            }
            Some(format!(
                "hmac-sha256:{}",
                crate::hex::encode(&mac.finalize().into_bytes())
            ))
        }
    }
}
