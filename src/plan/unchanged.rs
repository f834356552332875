//! Whether an object needs a dry-run at all: decided from the inventory's record of its last
//! apply and what was read, without a request; and when a dry-run may renew that record. Pure.

use serde_json::Value;

use super::Action;
use super::ownership::INSTANCE_ANNOTATION;

/// What the inventory recorded about an object's last successful apply.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LastApply<'a> {
    /// Hash of the desired object that was applied.
    pub hash: Option<&'a str>,
    /// The object's resourceVersion right after that apply.
    pub resource_version: Option<&'a str>,
    /// The object's generation right after that apply (kinds that have one).
    pub generation: Option<i64>,
    /// The object's `signature` right after that apply; `None` in records of older versions.
    pub signature: Option<&'a str>,
}

impl LastApply<'_> {
    /// Whether the desired object is the one last applied (an object without a recorded hash,
    /// e.g. a Secret without a hash key, never is).
    pub fn same_desired(&self, desired_hash: Option<&str>) -> bool {
        self.hash.is_some() && self.hash == desired_hash
    }
}

/// The incremental skip (daemon only, while its watches vouch for the live side): an object
/// whose desired hash is the one recorded at its last apply is taken as unchanged without any
/// read, dry-run, policy check or health wait.
pub fn skip_unread(
    incremental: bool,
    last: Option<&LastApply<'_>>,
    desired_hash: Option<&str>,
) -> bool {
    incremental && last.is_some_and(|l| l.same_desired(desired_hash))
}

/// Whether an object needs no dry-run: the desired object is the one last applied, and the live
/// object is still as driftless left it, `instance`'s mark and every label and annotation the
/// desired object sets included. "As driftless left it": the live object's `signature`
/// (`live_signature`, from its metadata) is the one recorded — status writes do not move it.
/// A record of an older version, without a signature, falls back to what that version compared:
/// for kinds with a `generation` the generation, otherwise the exact resourceVersion.
pub fn unchanged_since_apply(
    last: &LastApply<'_>,
    desired_hash: Option<&str>,
    live: &Value,
    live_signature: Option<&str>,
    desired: &Value,
    instance: &str,
) -> bool {
    let marked = live
        .pointer("/metadata/annotations")
        .and_then(|a| a.get(INSTANCE_ANNOTATION))
        .and_then(Value::as_str)
        == Some(instance);
    if !last.same_desired(desired_hash) || !marked {
        return false;
    }
    if let Some(recorded) = last.signature {
        return live_signature == Some(recorded) && keeps_metadata(live, desired);
    }
    let live_generation = live.pointer("/metadata/generation").and_then(Value::as_i64);
    match (live_generation, last.generation) {
        (Some(now), Some(then)) => now == then && keeps_metadata(live, desired),
        _ => {
            last.resource_version.is_some()
                && live
                    .pointer("/metadata/resourceVersion")
                    .and_then(Value::as_str)
                    == last.resource_version
        }
    }
}

/// Whether `live` carries every label and annotation `desired` sets, with its value.
fn keeps_metadata(live: &Value, desired: &Value) -> bool {
    ["labels", "annotations"].iter().all(|field| {
        let want = desired
            .pointer(&format!("/metadata/{field}"))
            .and_then(Value::as_object);
        let have = live
            .pointer(&format!("/metadata/{field}"))
            .and_then(Value::as_object);
        want.is_none_or(|want| {
            want.iter()
                .all(|(k, v)| have.and_then(|h| h.get(k)) == Some(v))
        })
    })
}

/// Whether the record of an older version (no signature) vouches for `live` exactly: the
/// resourceVersion is the one recorded right after the apply, so nothing wrote the object since
/// and its signature now is the one the apply would have recorded.
pub fn adopt(last: &LastApply<'_>, live: &Value) -> bool {
    last.signature.is_none()
        && last.resource_version.is_some()
        && live
            .pointer("/metadata/resourceVersion")
            .and_then(Value::as_str)
            == last.resource_version
}

/// Whether a dry-run confirmed that the live object is exactly what applying the desired object
/// would leave: the plan found no change, and the dry-run's result has the signature the live
/// object was read with (an apply would change no value, no field's owner, nothing). The record
/// may then take the live signature and the desired hash as if driftless had just applied it,
/// so a one-time write by someone else (a PVC bound by its controller, a label another tool
/// added) costs one dry-run, not one per reconcile. Not when an apply would take a field back
/// from another manager: the signatures differ then.
pub fn confirmed(
    action: Action,
    live_signature: Option<&str>,
    would_be_signature: Option<&str>,
) -> bool {
    action == Action::Unchanged && live_signature.is_some() && live_signature == would_be_signature
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const HASH: Option<&str> = Some("sha256:a");

    fn record(rv: Option<&'static str>, generation: Option<i64>) -> LastApply<'static> {
        LastApply {
            hash: HASH,
            resource_version: rv,
            generation,
            signature: None,
        }
    }

    #[test]
    fn the_incremental_skip_needs_a_recorded_equal_hash() {
        let last = record(None, None);
        let no_hash = LastApply::default();
        let cases = [
            (true, Some(&last), HASH, true),
            (false, Some(&last), HASH, false),
            (true, Some(&last), Some("sha256:b"), false),
            (true, Some(&no_hash), None, false),
            (true, None, HASH, false),
        ];
        for (incremental, last, hash, want) in cases {
            assert_eq!(
                skip_unread(incremental, last, hash),
                want,
                "{incremental} {last:?} {hash:?}"
            );
        }
    }

    #[test]
    fn unchanged_since_apply_by_generation_or_resource_version() {
        let desired = json!({"metadata": {"name": "web", "labels": {"driftless.dev/stack": "s"},
            "annotations": {"a": "1"}}});
        let live = |generation: Option<i64>, rv: &str, labels: Value, mut annotations: Value| {
            if annotations.get(INSTANCE_ANNOTATION).is_none() {
                annotations[INSTANCE_ANNOTATION] = json!("prod");
            }
            let mut v = json!({"metadata": {"name": "web", "resourceVersion": rv,
                "labels": labels, "annotations": annotations}});
            if let Some(g) = generation {
                v["metadata"]["generation"] = json!(g);
            }
            v
        };
        let ours = || json!({"driftless.dev/stack": "s", "other": "x"});
        let ann = || json!({"a": "1"});
        let cases: Vec<(&str, LastApply<'static>, Option<&str>, Value, bool)> = vec![
            (
                "same generation, labels kept",
                record(Some("5"), Some(2)),
                HASH,
                live(Some(2), "9", ours(), ann()),
                true,
            ),
            (
                "status write moved the rv only",
                record(Some("5"), Some(2)),
                HASH,
                live(Some(2), "12", ours(), ann()),
                true,
            ),
            (
                "spec changed behind our back",
                record(Some("5"), Some(2)),
                HASH,
                live(Some(3), "12", ours(), ann()),
                false,
            ),
            (
                "our label removed",
                record(Some("5"), Some(2)),
                HASH,
                live(Some(2), "5", json!({}), ann()),
                false,
            ),
            (
                "our annotation changed",
                record(Some("5"), Some(2)),
                HASH,
                live(Some(2), "5", ours(), json!({"a": "2"})),
                false,
            ),
            (
                "no generation: same rv",
                record(Some("5"), None),
                HASH,
                live(None, "5", ours(), ann()),
                true,
            ),
            (
                "no generation: rv moved",
                record(Some("5"), None),
                HASH,
                live(None, "6", ours(), ann()),
                false,
            ),
            (
                "nothing recorded",
                record(None, None),
                HASH,
                live(None, "5", ours(), ann()),
                false,
            ),
            (
                "desired changed in Git",
                record(Some("5"), Some(2)),
                Some("sha256:b"),
                live(Some(2), "5", ours(), ann()),
                false,
            ),
            (
                "no hash (Secret without key)",
                LastApply {
                    hash: None,
                    ..record(Some("5"), None)
                },
                None,
                live(None, "5", ours(), ann()),
                false,
            ),
            (
                "another instance's mark",
                record(Some("5"), Some(2)),
                HASH,
                live(
                    Some(2),
                    "5",
                    ours(),
                    json!({"a": "1", INSTANCE_ANNOTATION: "dev"}),
                ),
                false,
            ),
            (
                "applied before the mark existed",
                record(Some("5"), None),
                HASH,
                live(
                    None,
                    "5",
                    ours(),
                    json!({"a": "1", INSTANCE_ANNOTATION: null}),
                ),
                false,
            ),
        ];
        for (what, last, hash, live, want) in cases {
            // A record of an older version: whatever the live signature, the old comparison.
            for live_signature in [None, Some("s1:any")] {
                assert_eq!(
                    unchanged_since_apply(&last, hash, &live, live_signature, &desired, "prod"),
                    want,
                    "{what}"
                );
            }
        }
    }

    #[test]
    fn unchanged_since_apply_by_signature() {
        let desired = json!({"metadata": {"name": "q", "labels": {"driftless.dev/stack": "s"},
            "annotations": {"a": "1"}}});
        let live = |rv: &str, labels: Value, annotations: Value| {
            json!({"metadata": {"name": "q", "resourceVersion": rv, "labels": labels,
                "annotations": annotations}})
        };
        let ours = || json!({"driftless.dev/stack": "s"});
        let ann = || json!({"a": "1", INSTANCE_ANNOTATION: "prod"});
        let signed = LastApply {
            signature: Some("s1:a"),
            ..record(Some("5"), None)
        };
        // (what, record, desired hash, live signature, live object, unchanged)
        type Case = (
            &'static str,
            LastApply<'static>,
            Option<&'static str>,
            Option<&'static str>,
            Value,
            bool,
        );
        let cases: Vec<Case> = vec![
            (
                "same signature, resourceVersion moved by status writes",
                signed,
                HASH,
                Some("s1:a"),
                live("99", ours(), ann()),
                true,
            ),
            (
                "signature moved",
                signed,
                HASH,
                Some("s1:b"),
                live("6", ours(), ann()),
                false,
            ),
            (
                "read without a signature (a GET)",
                signed,
                HASH,
                None,
                live("5", ours(), ann()),
                false,
            ),
            (
                "signature recorded, never the resourceVersion fallback",
                signed,
                HASH,
                Some("s1:b"),
                live("5", ours(), ann()),
                false,
            ),
            (
                "our label gone (whatever the signature says)",
                signed,
                HASH,
                Some("s1:a"),
                live("5", json!({}), ann()),
                false,
            ),
            (
                "our annotation's value changed",
                signed,
                HASH,
                Some("s1:a"),
                live("5", ours(), json!({"a": "2", INSTANCE_ANNOTATION: "prod"})),
                false,
            ),
            (
                "desired changed in Git",
                signed,
                Some("sha256:b"),
                Some("s1:a"),
                live("5", ours(), ann()),
                false,
            ),
            (
                "another instance's mark",
                signed,
                HASH,
                Some("s1:a"),
                live("5", ours(), json!({"a": "1", INSTANCE_ANNOTATION: "dev"})),
                false,
            ),
        ];
        for (what, last, hash, live_signature, live, want) in cases {
            assert_eq!(
                unchanged_since_apply(&last, hash, &live, live_signature, &desired, "prod"),
                want,
                "{what}"
            );
        }
    }

    #[test]
    fn an_older_record_is_adopted_only_on_the_exact_resource_version() {
        let live = |rv: &str| json!({"metadata": {"resourceVersion": rv}});
        let signed = LastApply {
            signature: Some("s1:a"),
            ..record(Some("5"), None)
        };
        let cases = [
            (record(Some("5"), None), live("5"), true),
            (record(Some("5"), Some(2)), live("5"), true),
            (record(Some("5"), Some(2)), live("6"), false),
            (record(None, Some(2)), live("5"), false),
            (signed, live("5"), false),
        ];
        for (last, live, want) in cases {
            assert_eq!(adopt(&last, &live), want, "{last:?} {live}");
        }
    }

    #[test]
    fn a_dry_run_confirms_only_an_unchanged_object_with_the_signature_read() {
        let cases = [
            (Action::Unchanged, Some("s1:a"), Some("s1:a"), true),
            // An apply would take a field back from another manager (or the object changed
            // between the read and the dry-run).
            (Action::Unchanged, Some("s1:a"), Some("s1:b"), false),
            (Action::Unchanged, None, None, false),
            (Action::Unchanged, None, Some("s1:a"), false),
            (Action::Update, Some("s1:a"), Some("s1:a"), false),
            (Action::Create, None, Some("s1:a"), false),
        ];
        for (action, live, would_be, want) in cases {
            assert_eq!(
                confirmed(action, live, would_be),
                want,
                "{action:?} {live:?} {would_be:?}"
            );
        }
    }
}
