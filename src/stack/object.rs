//! One object of the desired state: its identity (`ObjectKey`), namespace defaulting and scope,
//! the stack label, and Secret data split off into `SecretData` so nothing that prints objects
//! can print it. Pure.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use base64::Engine;
use secrecy::{ExposeSecret, SecretSlice};
use serde_json::{Map, Value};

use super::load::LoadedStack;
use super::model::API_VERSION;
use super::{Error, Place, Result};

/// Label every managed object carries: the name of its stack.
pub const STACK_LABEL: &str = "driftless.dev/stack";

/// Label of the Secrets driftless makes from host files (`spec.secrets`), so that policies (and
/// `driftless-no-secrets-in-git`) tell them from Secrets committed to Git. Manifests may not set it.
pub const HOST_SECRET_LABEL: &str = "driftless.dev/host-secret";

/// Label of the Secrets and ConfigMaps whose data driftless decrypted from a SOPS file, so that
/// policies (`driftless-no-secrets-in-git`) accept them and diffs mask their data. Manifests in
/// clear may not set it.
pub const SOPS_LABEL: &str = "driftless.dev/sops-encrypted";

/// The identity of a Kubernetes object: group, kind, namespace and name (the version is not part
/// of it: `apps/v1` and `apps/v1beta1` name the same object).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ObjectKey {
    pub group: String,
    pub kind: String,
    pub namespace: Option<String>,
    pub name: String,
}

impl fmt::Display for ObjectKey {
    /// `Kind/namespace/name`, or `Kind/name` for cluster-scoped objects; the group is added for
    /// kinds outside the core and well-known groups only when it disambiguates (`Kind.group`).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.kind)?;
        if !self.group.is_empty() && !is_builtin_group(&self.group) {
            write!(f, ".{}", self.group)?;
        }
        match &self.namespace {
            Some(ns) => write!(f, "/{ns}/{}", self.name),
            None => write!(f, "/{}", self.name),
        }
    }
}

fn is_builtin_group(group: &str) -> bool {
    !group.contains('.') || group.ends_with(".k8s.io")
}

/// A Secret's data (or a SOPS-decrypted ConfigMap's), kept out of the object until the moment
/// it is sent; never printed.
#[derive(Clone, Default)]
pub struct SecretData(pub BTreeMap<String, SecretSlice<u8>>, pub DataForm);

/// How the data goes back into the object.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum DataForm {
    /// A Secret's `data`: base64.
    #[default]
    Base64,
    /// A ConfigMap's `data`: UTF-8 text.
    Text,
}

impl fmt::Debug for SecretData {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set().entries(self.0.keys()).finish()
    }
}

impl SecretData {
    /// The `data` map as the API server takes it (base64 values). Only for the request body.
    pub fn to_api_data(&self) -> Map<String, Value> {
        self.0
            .iter()
            .map(|(k, v)| {
                let encoded = match self.1 {
                    DataForm::Base64 => {
                        base64::engine::general_purpose::STANDARD.encode(v.expose_secret())
                    }
                    DataForm::Text => String::from_utf8_lossy(v.expose_secret()).into_owned(),
                };
                (k.clone(), Value::String(encoded))
            })
            .collect()
    }
}

/// One object of the desired state.
#[derive(Debug, Clone)]
pub struct DesiredObject {
    pub key: ObjectKey,
    /// `apiVersion` as written (`apps/v1`).
    pub api_version: String,
    /// The object to apply. For a Secret, `data` and `stringData` are removed: see `secret_data`.
    pub object: Value,
    /// A Secret's data, held apart so that nothing that prints objects can print it.
    pub secret_data: Option<SecretData>,
    pub place: Place,
    /// `cluster::apply::applied_hash` of this object, when it was worked out with the object's
    /// serialisation at hand (the daemon stores each revision serialised): every target's
    /// reconcile then finds it instead of serialising and hashing the object again.
    pub applied: AppliedMemo,
}

/// What `applied_hash` gave for one object, and for which instance and Secret key. A clone
/// starts empty: whoever changes a copy of an object must not inherit the original's hash.
#[derive(Default)]
pub struct AppliedMemo(std::sync::OnceLock<AppliedHash>);

/// One memoised `applied_hash` (see `AppliedMemo`).
pub struct AppliedHash {
    pub by: std::sync::Arc<HashedBy>,
    pub hash: Option<String>,
}

/// The instance and Secret key an `AppliedHash` was worked out for (the key by its `id`, a
/// digest of it: never the key itself).
#[derive(Debug)]
pub struct HashedBy {
    pub instance: String,
    pub key_id: Option<[u8; 32]>,
}

impl AppliedMemo {
    /// The memoised hash, when it was worked out for `instance` and (for an object with Secret
    /// data) the key of `key_id`.
    pub fn get(
        &self,
        instance: &str,
        key_id: Option<&[u8; 32]>,
        secret: bool,
    ) -> Option<Option<&str>> {
        let memo = self.0.get()?;
        let same_key = memo.by.key_id.as_ref() == key_id;
        (memo.by.instance == instance && (!secret || same_key)).then_some(memo.hash.as_deref())
    }

    /// Records the hash (the first one recorded stays).
    pub fn set(&self, memo: AppliedHash) {
        let _ = self.0.set(memo);
    }

    /// The recorded hash and what it was worked out for, to hand to another copy of the same
    /// object.
    pub fn recorded(&self) -> Option<&AppliedHash> {
        self.0.get()
    }
}

impl Clone for AppliedMemo {
    fn clone(&self) -> AppliedMemo {
        AppliedMemo::default()
    }
}

impl fmt::Debug for AppliedMemo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.0.get().is_some() {
            "AppliedMemo(set)"
        } else {
            "AppliedMemo(empty)"
        })
    }
}

/// Scope of the kinds the revision's own CRDs define: (group, kind) → namespaced?
pub(super) fn crd_scopes(objects: &[Value]) -> BTreeMap<(String, String), bool> {
    objects
        .iter()
        .filter(|o| o.get("kind").and_then(Value::as_str) == Some("CustomResourceDefinition"))
        .filter_map(|o| {
            let group = o.pointer("/spec/group")?.as_str()?.to_owned();
            let kind = o.pointer("/spec/names/kind")?.as_str()?.to_owned();
            let namespaced = o.pointer("/spec/scope").and_then(Value::as_str) != Some("Cluster");
            Some(((group, kind), namespaced))
        })
        .collect()
}

/// Cluster-scoped kinds of Kubernetes itself. Kinds not listed (and not defined by a CRD of the
/// revision) are taken as namespaced here; the cluster layer corrects that from discovery.
const CLUSTER_SCOPED: &[(&str, &str)] = &[
    ("", "Namespace"),
    ("", "Node"),
    ("", "PersistentVolume"),
    ("rbac.authorization.k8s.io", "ClusterRole"),
    ("rbac.authorization.k8s.io", "ClusterRoleBinding"),
    ("apiextensions.k8s.io", "CustomResourceDefinition"),
    ("apiregistration.k8s.io", "APIService"),
    ("storage.k8s.io", "StorageClass"),
    ("storage.k8s.io", "CSIDriver"),
    ("storage.k8s.io", "CSINode"),
    ("storage.k8s.io", "VolumeAttachment"),
    ("scheduling.k8s.io", "PriorityClass"),
    ("node.k8s.io", "RuntimeClass"),
    ("networking.k8s.io", "IngressClass"),
    (
        "admissionregistration.k8s.io",
        "ValidatingWebhookConfiguration",
    ),
    (
        "admissionregistration.k8s.io",
        "MutatingWebhookConfiguration",
    ),
    ("admissionregistration.k8s.io", "ValidatingAdmissionPolicy"),
    (
        "admissionregistration.k8s.io",
        "ValidatingAdmissionPolicyBinding",
    ),
    ("certificates.k8s.io", "CertificateSigningRequest"),
    ("flowcontrol.apiserver.k8s.io", "FlowSchema"),
    ("flowcontrol.apiserver.k8s.io", "PriorityLevelConfiguration"),
];

/// Whether `group`/`kind` is namespaced, as far as the revision alone can tell.
pub fn is_namespaced(
    group: &str,
    kind: &str,
    crd_scopes: &BTreeMap<(String, String), bool>,
) -> bool {
    if let Some(namespaced) = crd_scopes.get(&(group.to_owned(), kind.to_owned())) {
        return *namespaced;
    }
    !CLUSTER_SCOPED
        .iter()
        .any(|(g, k)| *g == group && *k == kind)
}

/// Checks an object's identity, defaults its namespace, labels it, and splits off Secret data.
/// `decrypted`: the object holds values decrypted from a SOPS file (see `sops::check_placement`):
/// it gets `SOPS_LABEL`, and a ConfigMap's data is held apart like a Secret's. Other objects may
/// not carry the label.
pub(super) fn finish_object(
    stack: &LoadedStack,
    mut object: Value,
    place: Place,
    crd_scopes: &BTreeMap<(String, String), bool>,
    decrypted: bool,
) -> Result<DesiredObject> {
    let invalid = |message: String| Error::InvalidObject {
        place: place.clone(),
        message,
    };
    let Value::Object(map) = &mut object else {
        return Err(invalid(
            "document is not a mapping (expected a Kubernetes object)".to_owned(),
        ));
    };
    let api_version = match map.get("apiVersion") {
        Some(Value::String(s)) if !s.is_empty() => s.clone(),
        Some(_) => {
            return Err(invalid(
                "`apiVersion` must be a non-empty string".to_owned(),
            ));
        }
        None => return Err(invalid("missing `apiVersion`".to_owned())),
    };
    let kind = match map.get("kind") {
        Some(Value::String(s)) if !s.is_empty() => s.clone(),
        Some(_) => return Err(invalid("`kind` must be a non-empty string".to_owned())),
        None => return Err(invalid("missing `kind`".to_owned())),
    };
    if api_version == API_VERSION {
        return Err(invalid(format!(
            "{kind} is a driftless kind; it belongs in stack.yaml, jobs.yaml or an overlay, not among the manifests"
        )));
    }
    let group = match api_version.split_once('/') {
        Some((g, _)) => g.to_owned(),
        None => String::new(),
    };
    let metadata = match map
        .entry("metadata")
        .or_insert_with(|| Value::Object(Map::new()))
    {
        Value::Object(m) => m,
        _ => return Err(invalid(format!("{kind}: `metadata` must be a mapping"))),
    };
    if metadata.contains_key("generateName") && !metadata.contains_key("name") {
        return Err(invalid(format!(
            "{kind}: metadata.generateName is not supported (a GitOps object needs a stable metadata.name)"
        )));
    }
    let name = match metadata.get("name") {
        Some(Value::String(s)) if !s.is_empty() => s.clone(),
        Some(_) => {
            return Err(invalid(format!(
                "{kind}: metadata.name must be a non-empty string"
            )));
        }
        None => return Err(invalid(format!("{kind}: missing metadata.name"))),
    };
    if name.len() > 253 || name.contains('/') || name == "." || name == ".." {
        return Err(invalid(format!(
            "{kind}: metadata.name {name:?} is not a valid object name"
        )));
    }
    let namespaced = is_namespaced(&group, &kind, crd_scopes);
    let namespace = if namespaced {
        match metadata.get("namespace") {
            Some(Value::String(ns)) if !ns.is_empty() => Some(ns.clone()),
            Some(Value::String(_)) | None => match &stack.spec.namespace {
                Some(ns) => {
                    metadata.insert("namespace".into(), ns.clone().into());
                    Some(ns.clone())
                }
                None => {
                    return Err(invalid(format!(
                        "{kind}/{name}: namespaced object without metadata.namespace, and stack {} sets no spec.namespace",
                        stack.name
                    )));
                }
            },
            Some(_) => {
                return Err(invalid(format!(
                    "{kind}/{name}: metadata.namespace must be a string"
                )));
            }
        }
    } else {
        // Cluster-scoped: a namespace would be ignored by the server; drop it so diffs are clean.
        metadata.remove("namespace");
        None
    };
    if let Some(ns) = &namespace
        && !super::load::is_dns_label(ns)
    {
        return Err(invalid(format!(
            "{kind}/{name}: namespace {ns:?} is not a valid namespace name"
        )));
    }
    let labels = metadata
        .entry("labels")
        .or_insert_with(|| Value::Object(Map::new()));
    let Value::Object(labels) = labels else {
        return Err(invalid(format!(
            "{kind}/{name}: metadata.labels must be a mapping"
        )));
    };
    if let Some(existing) = labels.get(STACK_LABEL).and_then(Value::as_str)
        && existing != stack.name
    {
        return Err(invalid(format!(
            "{kind}/{name}: label {STACK_LABEL}={existing} names another stack than {}",
            stack.name
        )));
    }
    labels.insert(STACK_LABEL.into(), stack.name.clone().into());
    if labels.contains_key(HOST_SECRET_LABEL) && place.file != stack.file {
        return Err(invalid(format!(
            "{kind}/{name}: label {HOST_SECRET_LABEL} is reserved for Secrets driftless makes from host files (spec.secrets)"
        )));
    }

    if decrypted {
        labels.insert(SOPS_LABEL.into(), "true".into());
    } else if labels.contains_key(SOPS_LABEL) {
        return Err(invalid(format!(
            "{kind}/{name}: label {SOPS_LABEL} is reserved for objects decrypted from SOPS files"
        )));
    }

    let secret_data = if group.is_empty() && kind == "Secret" {
        Some(take_secret_data(map).map_err(|field| invalid(format!("Secret/{name}: {field}")))?)
    } else if group.is_empty() && kind == "ConfigMap" && decrypted {
        Some(
            take_config_map_data(map)
                .map_err(|field| invalid(format!("ConfigMap/{name}: {field}")))?,
        )
    } else {
        None
    };
    Ok(DesiredObject {
        key: ObjectKey {
            group,
            kind,
            namespace,
            name,
        },
        api_version,
        object,
        secret_data,
        place,
        applied: AppliedMemo::default(),
    })
}

/// Moves the string values of `map[field]` into `out`, converted by `convert` (which gets the
/// key). The error names the field and key only, never a value.
fn take_strings(
    map: &mut Map<String, Value>,
    field: &str,
    expected: &str,
    out: &mut BTreeMap<String, SecretSlice<u8>>,
    convert: impl Fn(&str, String) -> std::result::Result<Vec<u8>, String>,
) -> std::result::Result<(), String> {
    let Some(data) = map.remove(field) else {
        return Ok(());
    };
    let Value::Object(data) = data else {
        return Err(format!("`{field}` must be a mapping"));
    };
    for (k, v) in data {
        let Value::String(s) = v else {
            return Err(format!("{field}.{k} must be {expected}"));
        };
        let bytes = convert(&k, s)?;
        out.insert(k, SecretSlice::from(bytes));
    }
    Ok(())
}

/// Moves `data` (base64) and `stringData` out of a Secret into wrapped bytes. The error names
/// the field and key only, never a value.
fn take_secret_data(map: &mut Map<String, Value>) -> std::result::Result<SecretData, String> {
    let mut out = BTreeMap::new();
    take_strings(map, "data", "a base64 string", &mut out, |k, s| {
        base64::engine::general_purpose::STANDARD
            .decode(s.trim())
            .map_err(|_| format!("data.{k} is not valid base64"))
    })?;
    // As the API server does: stringData wins over data for the same key.
    take_strings(map, "stringData", "a string", &mut out, |_, s| {
        Ok(s.into_bytes())
    })?;
    Ok(SecretData(out, DataForm::Base64))
}

/// Moves a SOPS-decrypted ConfigMap's `data` out into wrapped bytes (text values).
fn take_config_map_data(map: &mut Map<String, Value>) -> std::result::Result<SecretData, String> {
    let mut out = BTreeMap::new();
    take_strings(map, "data", "a string", &mut out, |_, s| Ok(s.into_bytes()))?;
    Ok(SecretData(out, DataForm::Text))
}

/// Keys of a Secret's data, for messages and masked diffs.
pub fn secret_keys(data: &SecretData) -> BTreeSet<&str> {
    data.0.keys().map(String::as_str).collect()
}
