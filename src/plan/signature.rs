//! The signature of a live object: a digest of what its metadata says that a status write
//! cannot change. Recorded in the inventory when driftless applies an object (and when a dry-run
//! finds the live object exactly as an apply would leave it), compared with the signature of the
//! metadata-only LIST to skip a dry-run, and kept per object by the drift watches. Pure; the one
//! definition both use.
//!
//! What goes in, and why:
//! - `uid`: an object deleted and created again, even with the same content, is another object.
//! - `metadata.generation`, for kinds with a status subresource: the API server moves it for
//!   every change outside metadata and status, never for a status write. Kinds without a status
//!   subresource move it for writes to their status too, so there it is left out.
//! - the labels and annotations, except keys that only `subresource: status` entries of
//!   `managedFields` own: some kinds accept metadata through their status subresource (the
//!   Deployment controller writes `deployment.kubernetes.io/revision` that way).
//! - every `managedFields` entry not written through the status subresource, with its time: a
//!   write outside status that changes anything moves its manager's entry (fields or time), and
//!   a write that changes a field driftless owns takes that field out of driftless's entry (the
//!   API server's ownership rules), whichever subresource it came through.
//! - whether a deletion is pending.
//!
//! Leaving the `subresource: status` entries out is safe: driftless never applies status, so
//! it owns no status field a status write could change; metadata that a kind accepts through
//! status changes driftless's own entry when the key is driftless's (the field moves to the
//! status writer) and the label/annotation part when it is not.
//!
//! The signature trusts the API server's bookkeeping of field ownership: a writer that rewrites
//! `managedFields` by hand (a deliberate act, with write access to the object) could hide a
//! change to a field outside metadata of a kind without a status subresource (labels and
//! annotations are compared by value, and so is the spec through `generation` where there is a
//! status subresource). Such an object is dry-run again when its desired state next changes.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ManagedFieldsEntry, ObjectMeta};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};

/// Marks the definition: a signature of another definition never compares equal.
const VERSION: &str = "s1:";
/// kubectl's client-side record of what it applied: a Secret's holds its data. Only its presence
/// counts (a change to it is a write by kubectl, which moves kubectl's `managedFields` entry), so
/// that nothing derived from a Secret's data is stored, and a response whose copy was redacted
/// (`cluster::apply::redact_secret`) has the signature of the object itself.
const LAST_APPLIED: &str = "kubectl.kubernetes.io/last-applied-configuration";

/// The signature of an object with metadata `meta`; `status_subresource` as discovery says.
pub fn of(meta: &ObjectMeta, status_subresource: bool) -> String {
    format!(
        "{VERSION}{}",
        crate::hex::encode(&digest(meta, status_subresource))
    )
}

/// The 16 bytes `of` writes in hex (after its version mark): what a watch keeps per object.
pub fn digest(meta: &ObjectMeta, status_subresource: bool) -> [u8; 16] {
    let entries: Vec<&ManagedFieldsEntry> = meta.managed_fields.iter().flatten().collect();
    let (status, other): (Vec<&ManagedFieldsEntry>, Vec<&ManagedFieldsEntry>) =
        entries.into_iter().partition(|e| through_status(e));
    let mut managed = other;
    managed.sort_by(|a, b| {
        let key = |e: &ManagedFieldsEntry| {
            (
                e.manager.clone(),
                e.operation.clone(),
                e.subresource.clone(),
                e.api_version.clone(),
            )
        };
        key(a).cmp(&key(b))
    });
    let parts = Parts {
        uid: meta.uid.as_deref(),
        generation: meta.generation.filter(|_| status_subresource),
        deleting: meta.deletion_timestamp.is_some(),
        labels: outside_status(meta.labels.as_ref(), "labels", &status, &managed),
        annotations: outside_status(meta.annotations.as_ref(), "annotations", &status, &managed),
        managed,
    };
    // Serialising plain data into a Vec cannot fail; an empty text still hashes.
    let text = serde_json::to_vec(&parts).unwrap_or_default();
    let digest = Sha256::digest(&text);
    let mut out = [0u8; 16];
    out.copy_from_slice(&digest[..16]);
    out
}

/// The signature of a whole object (an apply or dry-run response); `None` without metadata.
pub fn of_object(object: &Value, status_subresource: bool) -> Option<String> {
    let meta = ObjectMeta::deserialize(object.get("metadata")?).ok()?;
    Some(of(&meta, status_subresource))
}

/// Whether the newest write came from another manager than `manager`: asked when the signature
/// moved, so that driftless's own applies do not look like drift. Status writes count too: one
/// that moved the signature wrote metadata through the status subresource. Timestamps have
/// one-second resolution, so a foreign write in the same second as ours counts as foreign; no
/// time at all counts as foreign too.
pub fn changed_by_others(meta: &ObjectMeta, manager: &str) -> bool {
    let entries = meta.managed_fields.iter().flatten();
    let Some(newest) = entries.clone().filter_map(|e| e.time.as_ref()).max() else {
        return true;
    };
    entries
        .filter(|e| e.time.as_ref() == Some(newest))
        .any(|e| e.manager.as_deref() != Some(manager))
}

#[derive(Serialize)]
struct Parts<'a> {
    uid: Option<&'a str>,
    generation: Option<i64>,
    deleting: bool,
    labels: BTreeMap<&'a str, &'a str>,
    annotations: BTreeMap<&'a str, &'a str>,
    managed: Vec<&'a ManagedFieldsEntry>,
}

fn through_status(e: &ManagedFieldsEntry) -> bool {
    e.subresource.as_deref() == Some("status")
}

/// The keys of `metadata.<field>` an entry owns.
fn owned_keys<'a>(e: &'a ManagedFieldsEntry, field: &str) -> impl Iterator<Item = &'a str> {
    e.fields_v1
        .as_ref()
        .and_then(|f| f.0.get("f:metadata"))
        .and_then(|m| m.get(format!("f:{field}")))
        .and_then(Value::as_object)
        .into_iter()
        .flat_map(|keys| keys.keys())
        .filter_map(|k| k.strip_prefix("f:"))
}

/// The entries of a label or annotation map, less the keys only status writes own.
fn outside_status<'a>(
    map: Option<&'a BTreeMap<String, String>>,
    field: &str,
    status: &[&'a ManagedFieldsEntry],
    other: &[&'a ManagedFieldsEntry],
) -> BTreeMap<&'a str, &'a str> {
    let through_status: BTreeSet<&str> = status.iter().flat_map(|e| owned_keys(e, field)).collect();
    let elsewhere: BTreeSet<&str> = other.iter().flat_map(|e| owned_keys(e, field)).collect();
    map.into_iter()
        .flatten()
        .filter(|(k, _)| !through_status.contains(k.as_str()) || elsewhere.contains(k.as_str()))
        .map(|(k, v)| {
            let v = if k == LAST_APPLIED {
                "(present)"
            } else {
                v.as_str()
            };
            (k.as_str(), v)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn meta(v: Value) -> ObjectMeta {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn the_signature_is_its_digest_in_hex_after_the_version_mark() {
        let m = meta(json!({"uid": "u", "labels": {"a": "1"}}));
        let hex: String = digest(&m, false)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(of(&m, false), format!("{VERSION}{hex}"));
        let other = meta(json!({"uid": "u", "labels": {"a": "2"}}));
        assert_ne!(digest(&m, false), digest(&other, false));
    }

    fn entry(manager: &str, subresource: Option<&str>, time: &str, fields: Value) -> Value {
        let mut e = json!({"manager": manager, "operation": if manager == "driftless" { "Apply" } else { "Update" },
            "apiVersion": "v1", "time": time, "fieldsType": "FieldsV1", "fieldsV1": fields});
        if let Some(s) = subresource {
            e["subresource"] = json!(s);
        }
        e
    }

    /// An HPA-like object as driftless leaves it: its own entry, a controller's status entry.
    fn base() -> Value {
        json!({
            "name": "web", "namespace": "ns", "uid": "u-1", "resourceVersion": "10", "generation": 2,
            "labels": {"driftless.dev/stack": "s", "tier": "web"},
            "annotations": {"driftless.dev/instance": "prod", "note": "x"},
            "managedFields": [
                entry("driftless", None, "2026-01-01T00:00:00Z", json!({"f:metadata": {
                    "f:labels": {"f:driftless.dev/stack": {}, "f:tier": {}},
                    "f:annotations": {"f:driftless.dev/instance": {}, "f:note": {}}},
                    "f:spec": {"f:maxReplicas": {}}})),
                entry("kube-controller-manager", Some("status"), "2026-01-01T00:00:05Z",
                    json!({"f:status": {"f:conditions": {}}})),
            ]
        })
    }

    fn with(f: impl FnOnce(&mut Value)) -> Value {
        let mut v = base();
        f(&mut v);
        v
    }

    #[test]
    fn what_moves_the_signature() {
        let cases: Vec<(&str, Value, bool, bool)> = vec![
            // (what, metadata, status subresource, signature moved)
            ("nothing", base(), true, false),
            (
                "a status write (rv and the status entry's time)",
                with(|v| {
                    v["resourceVersion"] = json!("11");
                    v["managedFields"][1]["time"] = json!("2026-01-01T00:09:00Z");
                }),
                true,
                false,
            ),
            (
                "an annotation written through status (Deployment revision)",
                with(|v| {
                    v["annotations"]["deployment.kubernetes.io/revision"] = json!("1");
                    v["managedFields"][1]["fieldsV1"]["f:metadata"] =
                        json!({"f:annotations": {"f:deployment.kubernetes.io/revision": {}}});
                }),
                true,
                false,
            ),
            (
                "our annotation changed through status: it leaves our entry",
                with(|v| {
                    v["annotations"]["note"] = json!("y");
                    v["managedFields"][0]["fieldsV1"]["f:metadata"]["f:annotations"] =
                        json!({"f:driftless.dev/instance": {}});
                    v["managedFields"][1]["fieldsV1"]["f:metadata"] =
                        json!({"f:annotations": {"f:note": {}}});
                }),
                true,
                true,
            ),
            (
                "spec changed by another manager (generation)",
                with(|v| v["generation"] = json!(3)),
                true,
                true,
            ),
            (
                "generation ignored without a status subresource",
                with(|v| v["generation"] = json!(3)),
                false,
                false,
            ),
            (
                "a label added by another manager",
                with(|v| {
                    v["labels"]["extra"] = json!("1");
                    v["managedFields"].as_array_mut().unwrap().push(entry(
                        "kubectl-label",
                        None,
                        "2026-01-01T00:01:00Z",
                        json!({"f:metadata": {"f:labels": {"f:extra": {}}}}),
                    ));
                }),
                false,
                true,
            ),
            (
                "a label value changed, bookkeeping aside",
                with(|v| v["labels"]["tier"] = json!("db")),
                false,
                true,
            ),
            (
                "an annotation removed, bookkeeping aside",
                with(|v| {
                    v["annotations"].as_object_mut().unwrap().remove("note");
                }),
                false,
                true,
            ),
            (
                "another manager wrote again (its time)",
                with(|v| {
                    v["managedFields"].as_array_mut().unwrap().push(entry(
                        "kubectl-edit",
                        None,
                        "2026-01-01T00:01:00Z",
                        json!({"f:data": {}}),
                    ));
                }),
                false,
                true,
            ),
            (
                "a scale subresource write",
                with(|v| {
                    v["managedFields"].as_array_mut().unwrap().push(entry(
                        "hpa",
                        Some("scale"),
                        "2026-01-01T00:01:00Z",
                        json!({"f:spec": {"f:replicas": {}}}),
                    ));
                }),
                false,
                true,
            ),
            (
                "recreated with the same content",
                with(|v| v["uid"] = json!("u-2")),
                false,
                true,
            ),
            (
                "deletion pending",
                with(|v| v["deletionTimestamp"] = json!("2026-01-01T00:02:00Z")),
                false,
                true,
            ),
            (
                "managedFields cleared",
                with(|v| v["managedFields"] = json!([])),
                false,
                true,
            ),
            (
                "kubectl's last-applied record redacted (only its presence counts)",
                with(|v| {
                    v["annotations"][LAST_APPLIED] = json!("redacted");
                }),
                false,
                true,
            ),
            (
                "entries in another order",
                with(|v| {
                    v["managedFields"].as_array_mut().unwrap().reverse();
                }),
                true,
                false,
            ),
        ];
        for (what, m, status, moved) in cases {
            let before = of(&meta(base()), status);
            let after = of(&meta(m), status);
            assert_eq!(before != after, moved, "{what}");
            assert!(after.starts_with(VERSION) && after.len() == VERSION.len() + 32);
        }
    }

    #[test]
    fn a_secret_s_last_applied_record_is_not_hashed() {
        let secret = |record: &str| {
            meta(with(|v| {
                v["annotations"][LAST_APPLIED] = json!(record);
            }))
        };
        let plain = of(&secret(r#"{"data":{"password":"aHVudGVyMg=="}}"#), false);
        assert_eq!(plain, of(&secret("redacted"), false));
        assert_eq!(
            plain,
            of(&secret(r#"{"data":{"password":"b3RoZXI="}}"#), false)
        );
    }

    #[test]
    fn whole_objects_and_their_metadata_agree() {
        let object = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": base(), "data": {"a": "1"}});
        assert_eq!(of_object(&object, false), Some(of(&meta(base()), false)));
        assert_eq!(of_object(&json!({"kind": "ConfigMap"}), false), None);
    }

    #[test]
    fn who_wrote_last() {
        // Our apply at 00:10, after the controller's status write at 00:00:05.
        let ours_last = |f: fn(&mut Value)| {
            with(|v| {
                v["managedFields"][0]["time"] = json!("2026-01-01T00:10:00Z");
                f(v);
            })
        };
        let cases = [
            ("ours last", ours_last(|_| {}), false),
            ("a status write before ours", base(), true),
            (
                // Asked only when the signature moved: metadata written through status.
                "a status write after ours",
                ours_last(|v| v["managedFields"][1]["time"] = json!("2026-01-01T01:00:00Z")),
                true,
            ),
            (
                "another manager after us",
                ours_last(|v| {
                    v["managedFields"].as_array_mut().unwrap().push(entry(
                        "kubectl-patch",
                        None,
                        "2026-01-01T00:11:00Z",
                        json!({}),
                    ));
                }),
                true,
            ),
            (
                "another manager in the same second",
                ours_last(|v| {
                    v["managedFields"].as_array_mut().unwrap().push(entry(
                        "kubectl-patch",
                        None,
                        "2026-01-01T00:10:00Z",
                        json!({}),
                    ));
                }),
                true,
            ),
            ("no times", with(|v| v["managedFields"] = json!([])), true),
        ];
        for (what, m, want) in cases {
            assert_eq!(changed_by_others(&meta(m), "driftless"), want, "{what}");
        }
    }
}
