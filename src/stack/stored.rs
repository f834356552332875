//! A rendered revision as the daemon holds it between reconciles: each object serialised to
//! compact JSON instead of kept as a `serde_json::Value` tree. A tree costs several times its
//! text (every JSON object is a B-tree node of ~600 bytes, every string its own allocation): at
//! 5 000 objects that is ~18 MiB against ~2 MiB stored. A reconcile that needs the objects
//! expands them again (a parse, ~10 ms at 5 000 objects); one that finds nothing changed
//! (`quiet`) never does.

use std::path::PathBuf;
use std::sync::Arc;

use serde_json::Value;

use super::Place;
use super::model::StackSpec;
use super::object::{AppliedHash, AppliedMemo, HashedBy};
use super::render::{DesiredObject, ObjectKey, RenderedHook, RenderedStack, SecretData};

/// A rendered revision, stored compactly (see the module docs).
#[derive(Debug, Default)]
pub struct StoredRevision {
    stacks: Vec<StoredStack>,
}

#[derive(Debug)]
struct StoredStack {
    name: String,
    file: PathBuf,
    spec: StackSpec,
    objects: Vec<StoredObject>,
    post_sync: Vec<RenderedHook>,
}

#[derive(Debug)]
struct StoredObject {
    key: ObjectKey,
    api_version: String,
    json: Box<str>,
    secret_data: Option<SecretData>,
    place: Place,
    /// The object's `applied_hash` for the daemon's instance and key (`store_hashed`).
    applied: Option<(Arc<HashedBy>, Option<String>)>,
}

/// An object that does not parse back: never for what `store` wrote, but a reconcile must not
/// run on a partial revision, so it is an error rather than a panic.
#[derive(Debug, thiserror::Error)]
#[error("the stored revision's object {object} in stack {stack} does not parse back: {message}")]
pub struct ExpandError {
    stack: String,
    object: String,
    message: String,
}

impl StoredRevision {
    /// Stores `stacks` (serialising each object).
    pub fn store(stacks: &[RenderedStack]) -> StoredRevision {
        StoredRevision::store_hashed(stacks, None)
    }

    /// Stores `stacks`, and with `hashing` works out each object's `applied_hash` from the
    /// serialisation at hand: recorded in the object (`DesiredObject::applied`) and kept for
    /// the objects `expand` makes.
    pub fn store_hashed(stacks: &[RenderedStack], hashing: Option<&Hashing<'_>>) -> StoredRevision {
        let stacks = stacks
            .iter()
            .map(|s| StoredStack {
                name: s.name.clone(),
                file: s.file.clone(),
                spec: s.spec.clone(),
                post_sync: s.post_sync.clone(),
                objects: store_objects(&s.objects, hashing),
            })
            .collect();
        StoredRevision { stacks }
    }

    /// The rendered stacks again, objects parsed, in the stored (dependency) order.
    pub fn expand(&self) -> Result<Vec<RenderedStack>, ExpandError> {
        self.stacks
            .iter()
            .map(|s| {
                let objects = s
                    .objects
                    .iter()
                    .map(|o| {
                        let object: Value =
                            serde_json::from_str(&o.json).map_err(|e| ExpandError {
                                stack: s.name.clone(),
                                object: o.key.to_string(),
                                message: e.to_string(),
                            })?;
                        let expanded = DesiredObject {
                            key: o.key.clone(),
                            api_version: o.api_version.clone(),
                            object,
                            secret_data: o.secret_data.clone(),
                            place: o.place.clone(),
                            applied: AppliedMemo::default(),
                        };
                        if let Some((by, hash)) = &o.applied {
                            expanded.applied.set(AppliedHash {
                                by: Arc::clone(by),
                                hash: hash.clone(),
                            });
                        }
                        Ok(expanded)
                    })
                    .collect::<Result<Vec<_>, ExpandError>>()?;
                Ok(RenderedStack {
                    name: s.name.clone(),
                    file: s.file.clone(),
                    spec: s.spec.clone(),
                    objects,
                    post_sync: s.post_sync.clone(),
                })
            })
            .collect()
    }

    /// Stack names, in order.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.stacks.iter().map(|s| s.name.as_str())
    }

    /// Number of objects over all stacks.
    pub fn object_count(&self) -> usize {
        self.stacks.iter().map(|s| s.objects.len()).sum()
    }
}

/// How `store_hashed` works out an object's applied hash: `hash` gets the object and its
/// canonical serialisation, for the instance and key `by` names (`cluster::apply` knows how).
pub struct Hashing<'a> {
    pub by: Arc<HashedBy>,
    pub hash: &'a (dyn Fn(&DesiredObject, &[u8]) -> Option<String> + Sync),
}

/// Objects from which a stack is stored on several threads: serialising and hashing 10,000
/// objects takes some 40 ms of one core, on the daemon's path from a new revision to its
/// reconciles, while the API servers wait for them.
const PARALLEL_FROM: usize = 2_000;

/// `store_object` of each of `objects`, in order: in as many parts as there are cores when
/// there are many.
fn store_objects(objects: &[DesiredObject], hashing: Option<&Hashing<'_>>) -> Vec<StoredObject> {
    crate::parallel::in_parts(objects, PARALLEL_FROM, usize::MAX, |part| {
        part.iter().map(|o| store_object(o, hashing)).collect()
    })
}

/// One object serialised, with its `applied_hash` for `hashing` (recorded in `o` too).
fn store_object(o: &DesiredObject, hashing: Option<&Hashing<'_>>) -> StoredObject {
    // Serialising a Value cannot fail (its map keys are strings).
    let json = serde_json::to_string(&o.object).unwrap_or_default();
    let applied = hashing.map(|h| {
        let hash = (h.hash)(o, json.as_bytes());
        o.applied.set(AppliedHash {
            by: Arc::clone(&h.by),
            hash: hash.clone(),
        });
        (Arc::clone(&h.by), hash)
    });
    StoredObject {
        json: json.into_boxed_str(),
        key: o.key.clone(),
        api_version: o.api_version.clone(),
        secret_data: o.secret_data.clone(),
        place: o.place.clone(),
        applied,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stack::{HostSecrets, LoadLimits, load_repo, render};

    /// The rendered revision of one stack `app` whose only manifest file holds `manifests`.
    fn rendered(manifests: &str) -> Vec<RenderedStack> {
        let dir = tempfile::tempdir().unwrap();
        let stack = dir.path().join("stack/app");
        std::fs::create_dir_all(stack.join("manifests")).unwrap();
        std::fs::write(
            stack.join("stack.yaml"),
            "apiVersion: driftless.dev/v1alpha1\nkind: Stack\nmetadata: {name: app}\nspec: {path: manifests}\n",
        )
        .unwrap();
        std::fs::write(stack.join("manifests/all.yaml"), manifests).unwrap();
        let loaded = load_repo(dir.path(), None, LoadLimits::default()).unwrap();
        render(&loaded, &HostSecrets::new()).unwrap()
    }

    #[test]
    fn a_stored_revision_expands_to_the_same_objects() {
        let rendered = rendered(
            "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: a, namespace: ns}\ndata: {x: \"1\", y: 'two'}\n---\napiVersion: apps/v1\nkind: Deployment\nmetadata: {name: d, namespace: ns}\nspec: {replicas: 2, selector: {matchLabels: {app: d}}, template: {metadata: {labels: {app: d}}, spec: {containers: [{name: c, image: 'i:1', args: [a, 1.5, true, null]}]}}}\n---\napiVersion: v1\nkind: Secret\nmetadata: {name: s, namespace: ns}\nstringData: {token: sentinel-value}\n",
        );
        let stored = StoredRevision::store(&rendered);
        assert_eq!(stored.object_count(), 3);
        assert_eq!(stored.names().collect::<Vec<_>>(), ["app"]);
        let back = stored.expand().unwrap();
        assert_eq!(back.len(), rendered.len());
        for (a, b) in back[0].objects.iter().zip(&rendered[0].objects) {
            assert_eq!(a.key, b.key);
            assert_eq!(a.api_version, b.api_version);
            assert_eq!(a.object, b.object);
            assert_eq!(a.place, b.place);
            assert_eq!(
                crate::cluster::apply::desired_hash(a, None),
                crate::cluster::apply::desired_hash(b, None)
            );
        }
        // The Secret's data stays apart from the serialised object.
        let secret = &back[0].objects[2];
        assert!(!secret.object.to_string().contains("sentinel-value"));
        assert!(secret.secret_data.is_some());
    }

    #[test]
    fn a_large_stack_is_stored_in_order_with_every_hash() {
        let n = PARALLEL_FROM + 7;
        // One `v1 List` (a file holds at most 1,024 documents).
        let items: Vec<String> = (0..n)
            .map(|i| format!("- {{apiVersion: v1, kind: ConfigMap, metadata: {{name: c{i}, namespace: ns}}, data: {{i: \"{i}\"}}}}\n"))
            .collect();
        let rendered = rendered(&format!(
            "apiVersion: v1\nkind: List\nitems:\n{}",
            items.concat()
        ));
        let hash = |o: &DesiredObject, json: &[u8]| {
            crate::cluster::apply::applied_hash_of_text(o, json, None, "blue")
        };
        let hashing = Hashing {
            by: Arc::new(HashedBy {
                instance: "blue".to_owned(),
                key_id: None,
            }),
            hash: &hash,
        };
        let stored = StoredRevision::store_hashed(&rendered, Some(&hashing));
        assert_eq!(stored.object_count(), n);
        let back = stored.expand().unwrap();
        for (i, (a, b)) in back[0].objects.iter().zip(&rendered[0].objects).enumerate() {
            assert_eq!(
                (&a.key, &a.object),
                (&b.key, &b.object),
                "object {i} in order"
            );
            assert_eq!(a.key.name, format!("c{i}"));
            let fresh = b.clone();
            assert_eq!(
                a.applied.recorded().map(|h| h.hash.clone()),
                Some(crate::cluster::apply::applied_hash(&fresh, None, "blue")),
                "object {i} has its own hash"
            );
        }
    }

    #[test]
    fn hashes_worked_out_while_storing_are_those_a_reconcile_would_work_out() {
        use crate::cluster::apply::{SecretHashKey, applied_hash};
        let rendered = rendered(
            "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: a, namespace: ns}\ndata: {x: \"1\"}\n---\napiVersion: v1\nkind: Secret\nmetadata: {name: s, namespace: ns}\nstringData: {token: sentinel-value}\n",
        );
        let state = tempfile::tempdir().unwrap();
        let key = SecretHashKey::load_or_create(state.path()).unwrap();
        let other_state = tempfile::tempdir().unwrap();
        let other_key = SecretHashKey::load_or_create(other_state.path()).unwrap();
        let with_key = key.clone();
        let hash = move |o: &DesiredObject, json: &[u8]| {
            crate::cluster::apply::applied_hash_of_text(o, json, Some(&with_key), "blue")
        };
        let hashing = Hashing {
            by: Arc::new(HashedBy {
                instance: "blue".to_owned(),
                key_id: Some(key.id()),
            }),
            hash: &hash,
        };
        let stored = StoredRevision::store_hashed(&rendered, Some(&hashing));
        let back = stored.expand().unwrap();
        for objects in [&rendered[0].objects, &back[0].objects] {
            for o in objects.iter() {
                assert!(o.applied.recorded().is_some(), "{} has its hash", o.key);
                // A clone starts without one: what a reconcile would work out itself.
                let fresh = o.clone();
                assert!(fresh.applied.recorded().is_none());
                assert_eq!(
                    applied_hash(o, Some(&key), "blue"),
                    applied_hash(&fresh, Some(&key), "blue")
                );
                assert!(applied_hash(o, Some(&key), "blue").is_some());
                // Another instance, or (for a Secret) another key: not the recorded hash.
                assert_eq!(
                    applied_hash(o, Some(&key), "green"),
                    applied_hash(&fresh, Some(&key), "green")
                );
                assert_ne!(
                    applied_hash(o, Some(&key), "green"),
                    applied_hash(o, Some(&key), "blue")
                );
                assert_eq!(
                    applied_hash(o, Some(&other_key), "blue"),
                    applied_hash(&fresh, Some(&other_key), "blue")
                );
                assert_eq!(
                    applied_hash(o, None, "blue"),
                    applied_hash(&fresh, None, "blue")
                );
            }
        }
        let secret = &back[0].objects[1];
        assert_ne!(
            applied_hash(secret, Some(&other_key), "blue"),
            applied_hash(secret, Some(&key), "blue")
        );
        assert_eq!(applied_hash(secret, None, "blue"), None);
    }
}
