//! Rendering: loaded stack files + profile + host secrets → the desired objects of each stack.
//! Pure: no I/O, so every rule here is tested with in-memory fixtures.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use crate::yaml::ParseCache;
use base64::Engine;
use secrecy::{ExposeSecret, SecretSlice};
use serde_json::{Map, Value};

use super::load::{HostSecrets, LoadedStack, SourceFile};
use super::model::{API_VERSION, HookSpec, OverlayFile, PatchSpec, StackSpec};
use super::{Error, Place, Result, vars};

/// Label every managed object carries: the name of its stack.
pub const STACK_LABEL: &str = "driftless.dev/stack";

/// Label of the Secrets driftless makes from host files (`spec.secrets`), so that policies (and
/// `driftless-no-secrets-in-git`) tell them from Secrets committed to Git. Manifests may not set it.
pub const HOST_SECRET_LABEL: &str = "driftless.dev/host-secret";

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

/// A Secret's data, kept out of the object until the moment it is sent; never printed.
#[derive(Clone, Default)]
pub struct SecretData(pub BTreeMap<String, SecretSlice<u8>>);

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
                let encoded = base64::engine::general_purpose::STANDARD.encode(v.expose_secret());
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
}

/// A stack's definition and its rendered objects, in file order.
#[derive(Debug, Clone)]
pub struct RenderedStack {
    pub name: String,
    /// `stack.yaml`, relative to the repository root (its directory may hold stack-local
    /// policies).
    pub file: std::path::PathBuf,
    pub spec: StackSpec,
    pub objects: Vec<DesiredObject>,
    /// `spec.hooks.postSync`, rendered, in order.
    pub post_sync: Vec<RenderedHook>,
}

/// Label of hook Jobs: the stack they belong to. They carry it instead of `STACK_LABEL`: a hook
/// is not an object of the stack (not in its inventory, never pruned or watched for drift).
pub const HOOK_LABEL: &str = "driftless.dev/hook-of";
/// Annotation of hook Jobs: the hash of their definition, which decides whether a hook runs again.
pub const HOOK_HASH_ANNOTATION: &str = "driftless.dev/hook-hash";

/// One rendered hook: its Job and the hash of the Job's definition.
#[derive(Debug, Clone)]
pub struct RenderedHook {
    pub spec: HookSpec,
    pub job: DesiredObject,
    /// `sha256:<hex>` of the rendered Job (before the hash annotation was added).
    pub hash: String,
}

/// Renders every stack, checks that no object is declared twice (in or across stacks), and
/// returns the stacks in dependency order (see `order`).
pub fn render(stacks: &[LoadedStack], secrets: &HostSecrets) -> Result<Vec<RenderedStack>> {
    render_with(stacks, secrets, None)
}

/// `render`, parsing through `cache` (the daemon's: see `yaml::ParseCache`).
pub fn render_with(
    stacks: &[LoadedStack],
    secrets: &HostSecrets,
    cache: Option<&ParseCache>,
) -> Result<Vec<RenderedStack>> {
    let mut rendered = Vec::with_capacity(stacks.len());
    let mut seen: BTreeMap<ObjectKey, Place> = BTreeMap::new();
    for stack in stacks {
        let r = render_stack(stack, secrets, cache)?;
        for o in r.objects.iter().chain(r.post_sync.iter().map(|h| &h.job)) {
            if let Some(other) = seen.insert(o.key.clone(), o.place.clone()) {
                return Err(Error::DuplicateObject {
                    place: o.place.clone(),
                    key: o.key.to_string(),
                    other,
                });
            }
        }
        rendered.push(r);
    }
    super::order::by_dependencies(rendered)
}

/// A stack's variables for its selected profile (the profile's own override the stack's).
pub fn stack_vars(stack: &LoadedStack) -> BTreeMap<String, String> {
    let mut vars = stack.spec.vars.clone();
    if let Some(profile) = stack
        .profile
        .as_deref()
        .and_then(|p| stack.spec.profiles.get(p))
    {
        vars.extend(profile.vars.clone());
    }
    vars
}

fn render_stack(
    stack: &LoadedStack,
    secrets: &HostSecrets,
    cache: Option<&ParseCache>,
) -> Result<RenderedStack> {
    let vars = stack_vars(stack);
    let mut objects: Vec<Value> = Vec::new();
    let mut places: Vec<Place> = Vec::new();
    for file in &stack.manifests {
        for (doc, value) in parse_file(stack, file, &vars, cache)? {
            push_objects(stack, file, doc, value, &mut objects, &mut places)?;
        }
    }
    for file in &stack.rendered {
        for (doc, value) in parse_text(file, &file.text, cache)? {
            push_objects(stack, file, doc, value, &mut objects, &mut places)?;
        }
    }
    // Overlays: `kind: Overlay` documents are patches; any other document adds an object.
    let mut patches: Vec<(&SourceFile, usize, PatchSpec)> = Vec::new();
    for (_, files) in &stack.overlays {
        for file in files {
            for (doc, value) in parse_file(stack, file, &vars, cache)? {
                if value.get("kind").and_then(Value::as_str) == Some("Overlay")
                    && value.get("apiVersion").and_then(Value::as_str) == Some(API_VERSION)
                {
                    let overlay: OverlayFile =
                        serde_json::from_value(value).map_err(|e| Error::StackFile {
                            file: file.path.clone(),
                            message: format!("document {doc}: invalid Overlay: {e}"),
                        })?;
                    patches.extend(overlay.patches.into_iter().map(|p| (file, doc, p)));
                } else {
                    push_objects(stack, file, doc, value, &mut objects, &mut places)?;
                }
            }
        }
    }
    for (index, (file, _, patch)) in patches.iter().enumerate() {
        apply_patch(stack, file, index + 1, patch, &mut objects)?;
    }
    for secret in &stack.spec.secrets {
        objects.push(host_secret_object(stack, secret, secrets)?);
        places.push(Place {
            stack: stack.name.clone(),
            file: stack.file.clone(),
            document: 1,
        });
    }

    let crd_scopes = crd_scopes(&objects);
    let mut out: Vec<DesiredObject> = Vec::with_capacity(objects.len());
    let mut seen: BTreeMap<ObjectKey, Place> = BTreeMap::new();
    for (object, place) in objects.into_iter().zip(places) {
        let desired = finish_object(stack, object, place, &crd_scopes)?;
        if let Some(other) = seen.insert(desired.key.clone(), desired.place.clone()) {
            return Err(Error::DuplicateObject {
                place: desired.place,
                key: desired.key.to_string(),
                other,
            });
        }
        out.push(desired);
    }
    if out.is_empty() {
        return Err(Error::EmptyRender {
            stack: stack.name.clone(),
        });
    }
    let mut post_sync = Vec::with_capacity(stack.post_sync.len());
    for (spec, file) in stack.spec.hooks.post_sync.iter().zip(&stack.post_sync) {
        post_sync.push(render_hook(stack, spec, file, &vars, &crd_scopes, cache)?);
    }
    Ok(RenderedStack {
        name: stack.name.clone(),
        file: stack.file.clone(),
        spec: stack.spec.clone(),
        objects: out,
        post_sync,
    })
}

/// A hook file: exactly one `batch/v1` Job, with the stack's variables, namespace and a hook
/// label instead of the stack label.
fn render_hook(
    stack: &LoadedStack,
    spec: &HookSpec,
    file: &SourceFile,
    vars: &BTreeMap<String, String>,
    crd_scopes: &BTreeMap<(String, String), bool>,
    cache: Option<&ParseCache>,
) -> Result<RenderedHook> {
    let mut docs = parse_file(stack, file, vars, cache)?;
    let bad = |message: String| Error::StackFile {
        file: file.path.clone(),
        message,
    };
    if docs.len() != 1 {
        return Err(bad(format!(
            "a hook file holds exactly one Job, found {} documents (stack {}, spec.hooks.postSync)",
            docs.len(),
            stack.name
        )));
    }
    let (doc, value) = docs.remove(0);
    let is_job = value.get("apiVersion").and_then(Value::as_str) == Some("batch/v1")
        && value.get("kind").and_then(Value::as_str) == Some("Job");
    if !is_job {
        return Err(bad(format!(
            "a hook must be a batch/v1 Job (stack {}, spec.hooks.postSync)",
            stack.name
        )));
    }
    let place = Place {
        stack: stack.name.clone(),
        file: file.path.clone(),
        document: doc,
    };
    let mut job = finish_object(stack, value, place, crd_scopes)?;
    let hash = {
        use sha2::{Digest, Sha256};
        // serde_json maps are sorted: the serialisation is canonical. Serialising a Value
        // cannot fail (its map keys are strings), so the default is never taken.
        let text = serde_json::to_vec(&job.object).unwrap_or_default();
        let digest = Sha256::digest(&text);
        let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
        format!("sha256:{hex}")
    };
    if let Some(metadata) = job
        .object
        .get_mut("metadata")
        .and_then(Value::as_object_mut)
    {
        if let Some(labels) = metadata.get_mut("labels").and_then(Value::as_object_mut) {
            labels.remove(STACK_LABEL);
            labels.insert(HOOK_LABEL.into(), stack.name.clone().into());
        }
        let annotations = metadata
            .entry("annotations")
            .or_insert_with(|| Value::Object(Map::new()));
        if let Value::Object(annotations) = annotations {
            annotations.insert(HOOK_HASH_ANNOTATION.into(), hash.clone().into());
        }
    }
    Ok(RenderedHook {
        spec: spec.clone(),
        job,
        hash,
    })
}

fn parse_file(
    stack: &LoadedStack,
    file: &SourceFile,
    vars: &BTreeMap<String, String>,
    cache: Option<&ParseCache>,
) -> Result<Vec<(usize, Value)>> {
    let text = vars::substitute(&stack.name, &file.path, &file.text, vars)?;
    parse_text(file, &text, cache)
}

/// Parses a file's (substituted) text: one JSON document, or a YAML stream.
fn parse_text(
    file: &SourceFile,
    text: &str,
    cache: Option<&ParseCache>,
) -> Result<Vec<(usize, Value)>> {
    let docs = if file.path.extension().is_some_and(|e| e == "json") {
        vec![serde_json::from_str(text).map_err(|e| Error::StackFile {
            file: file.path.clone(),
            message: format!(
                "invalid JSON at line {} column {}: {e}",
                e.line(),
                e.column()
            ),
        })?]
    } else {
        crate::yaml::parse_documents_cached(cache, &file.path, text)?
    };
    Ok(docs
        .into_iter()
        .enumerate()
        .map(|(i, v)| (i + 1, v))
        .collect())
}

/// Adds a document's object(s): a `v1 List` contributes its items.
fn push_objects(
    stack: &LoadedStack,
    file: &SourceFile,
    doc: usize,
    value: Value,
    objects: &mut Vec<Value>,
    places: &mut Vec<Place>,
) -> Result<()> {
    let place = Place {
        stack: stack.name.clone(),
        file: file.path.clone(),
        document: doc,
    };
    let is_list = value.get("kind").and_then(Value::as_str) == Some("List")
        && value.get("apiVersion").and_then(Value::as_str) == Some("v1");
    if is_list {
        let items = match value.get("items") {
            Some(Value::Array(items)) => items.clone(),
            _ => {
                return Err(Error::InvalidObject {
                    place,
                    message: "kind List without an `items` array".to_owned(),
                });
            }
        };
        for item in items {
            objects.push(item);
            places.push(place.clone());
        }
    } else {
        objects.push(value);
        places.push(place);
    }
    Ok(())
}

fn matches_target(object: &Value, patch: &PatchSpec) -> bool {
    let t = &patch.target;
    let s = |v: &Value, p: &str| v.pointer(p).and_then(Value::as_str).map(str::to_owned);
    s(object, "/kind").as_deref() == Some(t.kind.as_str())
        && s(object, "/metadata/name").as_deref() == Some(t.name.as_str())
        && t.namespace
            .as_ref()
            .is_none_or(|ns| s(object, "/metadata/namespace").as_ref() == Some(ns))
        && t.api_version
            .as_ref()
            .is_none_or(|av| s(object, "/apiVersion").as_ref() == Some(av))
}

fn apply_patch(
    stack: &LoadedStack,
    file: &SourceFile,
    index: usize,
    patch: &PatchSpec,
    objects: &mut [Value],
) -> Result<()> {
    let target = format!(
        "{}/{}{}",
        patch.target.kind,
        patch
            .target
            .namespace
            .as_deref()
            .map(|n| format!("{n}/"))
            .unwrap_or_default(),
        patch.target.name
    );
    let fail = |message: String| Error::OverlayPatch {
        file: file.path.clone(),
        index,
        target: target.clone(),
        message,
    };
    let ops = match (&patch.merge, &patch.json) {
        (Some(_), Some(_)) => return Err(fail("has both `merge` and `json`; give one".to_owned())),
        (None, None) => {
            return Err(fail(
                "has neither `merge` (RFC 7386) nor `json` (RFC 6902)".to_owned(),
            ));
        }
        (None, Some(ops)) => Some(
            serde_json::from_value::<json_patch::Patch>(ops.clone())
                .map_err(|e| fail(format!("`json` is not an RFC 6902 patch: {e}")))?,
        ),
        (Some(_), None) => None,
    };
    let mut matched = 0;
    for object in objects.iter_mut().filter(|o| matches_target(o, patch)) {
        matched += 1;
        match (&ops, &patch.merge) {
            (Some(ops), _) => json_patch::patch(object, ops).map_err(|e| fail(e.to_string()))?,
            (None, Some(merge)) => json_patch::merge(object, merge),
            (None, None) => {}
        }
    }
    if matched == 0 {
        return Err(Error::OverlayTargetsNothing {
            stack: stack.name.clone(),
            file: file.path.clone(),
            index,
            target,
        });
    }
    Ok(())
}

fn host_secret_object(
    stack: &LoadedStack,
    spec: &super::model::HostSecretSpec,
    secrets: &HostSecrets,
) -> Result<Value> {
    let mut data = Map::new();
    for (key, file) in &spec.from_files {
        let Some(bytes) = secrets.get(file) else {
            return Err(Error::HostSecretNotRead {
                file: stack.file.clone(),
                stack: stack.name.clone(),
                secret: spec.name.clone(),
                key: key.clone(),
                credential: file.clone(),
            });
        };
        let encoded = base64::engine::general_purpose::STANDARD.encode(bytes.expose_secret());
        data.insert(key.clone(), Value::String(encoded));
    }
    let mut metadata = Map::new();
    metadata.insert("name".into(), spec.name.clone().into());
    metadata.insert(
        "labels".into(),
        serde_json::json!({ HOST_SECRET_LABEL: "true" }),
    );
    if let Some(ns) = spec.namespace.as_ref().or(stack.spec.namespace.as_ref()) {
        metadata.insert("namespace".into(), ns.clone().into());
    }
    Ok(serde_json::json!({
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": metadata,
        "type": spec.type_.clone().unwrap_or_else(|| "Opaque".to_owned()),
        "data": data,
    }))
}

/// Scope of the kinds the revision's own CRDs define: (group, kind) → namespaced?
fn crd_scopes(objects: &[Value]) -> BTreeMap<(String, String), bool> {
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
fn finish_object(
    stack: &LoadedStack,
    mut object: Value,
    place: Place,
    crd_scopes: &BTreeMap<(String, String), bool>,
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

    let secret_data = if group.is_empty() && kind == "Secret" {
        Some(take_secret_data(map).map_err(|field| invalid(format!("Secret/{name}: {field}")))?)
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
    })
}

/// Moves `data` (base64) and `stringData` out of a Secret into wrapped bytes. The error names
/// the field and key only, never a value.
fn take_secret_data(map: &mut Map<String, Value>) -> std::result::Result<SecretData, String> {
    let mut out = BTreeMap::new();
    if let Some(data) = map.remove("data") {
        let Value::Object(data) = data else {
            return Err("`data` must be a mapping".to_owned());
        };
        for (k, v) in data {
            let Value::String(s) = v else {
                return Err(format!("data.{k} must be a base64 string"));
            };
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(s.trim())
                .map_err(|_| format!("data.{k} is not valid base64"))?;
            out.insert(k, SecretSlice::from(bytes));
        }
    }
    if let Some(data) = map.remove("stringData") {
        let Value::Object(data) = data else {
            return Err("`stringData` must be a mapping".to_owned());
        };
        // As the API server does: stringData wins over data for the same key.
        for (k, v) in data {
            let Value::String(s) = v else {
                return Err(format!("stringData.{k} must be a string"));
            };
            out.insert(k, SecretSlice::from(s.into_bytes()));
        }
    }
    Ok(SecretData(out))
}

/// Keys of a Secret's data, for messages and masked diffs.
pub fn secret_keys(data: &SecretData) -> BTreeSet<&str> {
    data.0.keys().map(String::as_str).collect()
}
