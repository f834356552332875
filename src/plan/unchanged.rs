//! Whether an object needs a dry-run at all: decided from the inventory's record of its last
//! apply and what was read, without a request. Pure.

use serde_json::Value;

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
/// object is still as driftless left it, `instance`'s mark included. For kinds with a
/// `generation` (bumped by spec changes, not by status writes): the generation recorded after the
/// apply, plus every label and annotation driftless sets; otherwise the exact resourceVersion.
pub fn unchanged_since_apply(
    last: &LastApply<'_>,
    desired_hash: Option<&str>,
    live: &Value,
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
    let live_generation = live.pointer("/metadata/generation").and_then(Value::as_i64);
    match (live_generation, last.generation) {
        (Some(now), Some(then)) => {
            now == then
                && ["labels", "annotations"].iter().all(|field| {
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
        _ => {
            last.resource_version.is_some()
                && live
                    .pointer("/metadata/resourceVersion")
                    .and_then(Value::as_str)
                    == last.resource_version
        }
    }
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
            assert_eq!(
                unchanged_since_apply(&last, hash, &live, &desired, "prod"),
                want,
                "{what}"
            );
        }
    }
}
