//! Rendering: loaded stack files + profile + host secrets → the desired objects of each stack.
//! Pure: no I/O, so every rule here is tested with in-memory fixtures.

use std::collections::{BTreeMap, HashMap};

use crate::yaml::ParseCache;
use base64::Engine;
use secrecy::ExposeSecret;
use serde_json::{Map, Value};

use super::load::{HostSecrets, LoadedStack};
use super::model::{API_VERSION, HookSpec, OverlayFile, PatchSpec, SourceFile, StackSpec};
pub use super::object::{
    DataForm, DesiredObject, HOST_SECRET_LABEL, ObjectKey, SOPS_LABEL, STACK_LABEL, SecretData,
    is_namespaced, secret_keys,
};
use super::object::{crd_scopes, finish_object};
use super::sops::Decryption;
use super::{Error, Place, Result, vars};

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

/// `render`, parsing through `cache` (the daemon's: see `yaml::ParseCache`). SOPS files cannot
/// be decrypted (see `render_decrypting`).
pub fn render_with(
    stacks: &[LoadedStack],
    secrets: &HostSecrets,
    cache: Option<&ParseCache>,
) -> Result<Vec<RenderedStack>> {
    let none = Decryption::Unavailable("no age identity was given".to_owned());
    render_decrypting(stacks, secrets, &none, cache)
}

/// `render_with`, decrypting SOPS-encrypted manifests as `decryption` says.
pub fn render_decrypting(
    stacks: &[LoadedStack],
    secrets: &HostSecrets,
    decryption: &Decryption,
    cache: Option<&ParseCache>,
) -> Result<Vec<RenderedStack>> {
    let mut rendered = Vec::with_capacity(stacks.len());
    for stack in stacks {
        rendered.push(render_stack(stack, secrets, decryption, cache)?);
    }
    // No object twice in the revision (within a stack `render_stack` found them already).
    no_duplicates(
        rendered
            .iter()
            .flat_map(|r| r.objects.iter().chain(r.post_sync.iter().map(|h| &h.job))),
    )?;
    let names: Vec<(&str, &[String])> = rendered
        .iter()
        .map(|s| (s.name.as_str(), s.spec.depends_on.as_slice()))
        .collect();
    let order = super::order::by_dependencies(&names)?;
    let mut slots: Vec<Option<RenderedStack>> = rendered.into_iter().map(Some).collect();
    Ok(order
        .into_iter()
        .filter_map(|i| slots.get_mut(i).and_then(Option::take))
        .collect())
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
    decryption: &Decryption,
    cache: Option<&ParseCache>,
) -> Result<RenderedStack> {
    let vars = stack_vars(stack);
    let mut objects: Vec<Value> = Vec::new();
    let mut places: Vec<Place> = Vec::new();
    // Per object: whether it holds values decrypted from a SOPS file.
    let mut decrypted: Vec<bool> = Vec::new();
    let mut parsed = parse_in_parallel(&stack.manifests, |file| {
        (!super::sops::is_sops(&file.text)).then(|| parse_file(stack, file, &vars, cache))
    })
    .into_iter();
    for file in &stack.manifests {
        // One slot per file, in order; `None` for a SOPS file (decrypted here, in order).
        let plain = parsed.next().flatten().flatten();
        if super::sops::is_sops(&file.text) {
            for (doc, value, holds) in decrypt_file(stack, file, decryption)? {
                let before = objects.len();
                push_objects(stack, file, doc, value, &mut objects, &mut places)?;
                decrypted.resize(before, false);
                decrypted.resize(objects.len(), holds);
            }
            continue;
        }
        for (doc, value) in plain.unwrap_or_else(|| parse_file(stack, file, &vars, cache))? {
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
            if super::sops::is_sops(&file.text) {
                return Err(Error::Sops {
                    file: file.path.clone(),
                    stack: stack.name.clone(),
                    document: None,
                    error: super::sops::Error::InOverlay,
                });
            }
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
    decrypted.resize(objects.len(), false);
    let mut out: Vec<DesiredObject> = Vec::with_capacity(objects.len());
    for ((object, place), holds) in objects.into_iter().zip(places).zip(decrypted) {
        out.push(finish_object(stack, object, place, &crd_scopes, holds)?);
    }
    no_duplicates(&out)?;
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

/// The first object whose key an earlier one has, as an error naming both places. Keys are
/// hashed and borrowed: an ordered map of copied keys and places cost six allocations and an
/// ordered search of string compares per object, twice per render.
fn no_duplicates<'a>(objects: impl IntoIterator<Item = &'a DesiredObject>) -> Result<()> {
    let mut seen: HashMap<&ObjectKey, &Place> = HashMap::new();
    for o in objects {
        if let Some(other) = seen.insert(&o.key, &o.place) {
            return Err(Error::DuplicateObject {
                place: o.place.clone(),
                key: o.key.to_string(),
                other: other.clone(),
            });
        }
    }
    Ok(())
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
    let mut job = finish_object(stack, value, place, crd_scopes, false)?;
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

/// The documents of a SOPS file, decrypted (no `${VAR}` substitution: the MAC covers the text as
/// encrypted), each with whether it holds decrypted data. A file that does not decrypt fails the
/// stack's load, naming the file and the reason, never a value.
fn decrypt_file(
    stack: &LoadedStack,
    file: &SourceFile,
    decryption: &Decryption,
) -> Result<Vec<(usize, Value, bool)>> {
    let fail = |document: Option<usize>, error: super::sops::Error| Error::Sops {
        file: file.path.clone(),
        stack: stack.name.clone(),
        document,
        error,
    };
    let json = file.path.extension().is_some_and(|e| e == "json");
    let docs = match decryption {
        Decryption::Key(identity) => super::sops::decrypt(&file.text, json, identity),
        Decryption::Placeholder => super::sops::placeholder(&file.text, json),
        Decryption::Unavailable(why) => Err(super::sops::Error::Unavailable(why.clone())),
    }
    .map_err(|e| fail(None, e))?;
    let mut out = Vec::with_capacity(docs.len());
    for (i, d) in docs.into_iter().enumerate() {
        let holds = super::sops::check_placement(&d.value, &d.encrypted)
            .map_err(|e| fail(Some(i + 1), e))?;
        out.push((i + 1, d.value, holds));
    }
    Ok(out)
}

/// From this much manifest text on, a stack's files are parsed on several threads.
const PARALLEL_FROM_BYTES: usize = 64 * 1024;

/// `parse` of every file, on as many threads as the host has cores (YAML parsing is most of a
/// render's time): one slot per file, in the order of `files`.
fn parse_in_parallel<R: Send>(
    files: &[SourceFile],
    parse: impl Fn(&SourceFile) -> R + Sync,
) -> Vec<Option<R>> {
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(files.len());
    // A stack of a few small files parses faster than threads start.
    let bytes: usize = files.iter().map(|f| f.text.len()).sum();
    if threads <= 1 || bytes < PARALLEL_FROM_BYTES {
        return files.iter().map(|f| Some(parse(f))).collect();
    }
    let next = std::sync::atomic::AtomicUsize::new(0);
    let mut slots: Vec<Option<R>> = files.iter().map(|_| None).collect();
    std::thread::scope(|scope| {
        let workers: Vec<_> = (0..threads)
            .map(|_| {
                scope.spawn(|| {
                    let mut mine = Vec::new();
                    loop {
                        let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        let Some(file) = files.get(i) else {
                            return mine;
                        };
                        mine.push((i, parse(file)));
                    }
                })
            })
            .collect();
        // A worker that panicked lost its results: their slots stay empty and the caller
        // parses those files itself, so none is skipped.
        for (i, r) in workers
            .into_iter()
            .flat_map(|w| w.join().unwrap_or_default())
        {
            if let Some(slot) = slots.get_mut(i) {
                *slot = Some(r);
            }
        }
    });
    slots
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

#[cfg(test)]
mod tests {
    use super::*;

    fn file(i: usize, bytes: usize) -> SourceFile {
        SourceFile {
            path: format!("stack/s/manifests/{i:02}.yaml").into(),
            text: "x".repeat(bytes),
        }
    }

    /// Above the threshold the files go to several threads; every slot is filled, each with
    /// its own file's result, in the files' order (what rendering relies on for object order
    /// and for reporting the first failing file).
    #[test]
    fn parallel_parsing_keeps_one_result_per_file_in_order() {
        for sizes in [
            vec![10; 3],
            vec![PARALLEL_FROM_BYTES; 9],
            vec![1, PARALLEL_FROM_BYTES, 2],
        ] {
            let files: Vec<SourceFile> =
                sizes.iter().enumerate().map(|(i, &b)| file(i, b)).collect();
            let threads = std::sync::Mutex::new(std::collections::HashSet::new());
            let parsed = parse_in_parallel(&files, |f| {
                if let Ok(mut t) = threads.lock() {
                    t.insert(std::thread::current().id());
                }
                (f.path.clone(), f.text.len())
            });
            let want: Vec<Option<(std::path::PathBuf, usize)>> = files
                .iter()
                .map(|f| Some((f.path.clone(), f.text.len())))
                .collect();
            assert_eq!(parsed, want);
            let total: usize = sizes.iter().sum();
            let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
            if total < PARALLEL_FROM_BYTES || cores == 1 {
                let threads = threads.lock().unwrap();
                assert!(
                    threads.len() == 1 && threads.contains(&std::thread::current().id()),
                    "small stacks parse on the calling thread"
                );
            }
        }
    }
}
