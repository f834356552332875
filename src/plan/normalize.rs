//! Normalisation before comparing or printing objects (DESIGN.md §3): server-owned bookkeeping is
//! dropped so that only what an apply changes shows, and Secret values are masked.

use serde_json::{Map, Value};

/// Metadata fields the server maintains; they change on every write and mean nothing in a diff.
const DROPPED_METADATA: &[&str] = &[
    "managedFields",
    "resourceVersion",
    "generation",
    "uid",
    "creationTimestamp",
    "selfLink",
];

/// Annotations that only record earlier client-side applies.
const DROPPED_ANNOTATIONS: &[&str] = &[
    "kubectl.kubernetes.io/last-applied-configuration",
    "deployment.kubernetes.io/revision",
];

/// A copy of `object` without server bookkeeping and `status`.
pub fn normalize(object: &Value) -> Value {
    let mut out = object.clone();
    if let Value::Object(map) = &mut out {
        map.remove("status");
        if let Some(Value::Object(meta)) = map.get_mut("metadata") {
            for f in DROPPED_METADATA {
                meta.remove(*f);
            }
            let empty = if let Some(Value::Object(ann)) = meta.get_mut("annotations") {
                for a in DROPPED_ANNOTATIONS {
                    ann.remove(*a);
                }
                ann.is_empty()
            } else {
                false
            };
            if empty {
                meta.remove("annotations");
            }
        }
    }
    out
}

/// Whether `object` holds secret data: a core/v1 Secret, or an object whose data driftless
/// decrypted from a SOPS file (a ConfigMap labelled `driftless.dev/sops-encrypted`).
pub fn is_secret(object: &Value) -> bool {
    let core = object.get("apiVersion").and_then(Value::as_str) == Some("v1");
    let kind = object.get("kind").and_then(Value::as_str);
    let sops = object
        .pointer("/metadata/labels")
        .and_then(|l| l.get(crate::stack::render::SOPS_LABEL))
        .and_then(Value::as_str)
        == Some("true");
    core && (kind == Some("Secret") || (kind == Some("ConfigMap") && sops))
}

/// Masks the values of `before` and `after` (two versions of one Secret) so that no value is
/// shown, yet a key whose value changed still shows as changed: equal values get the same
/// marker, different values different markers. Keys are kept.
pub fn mask_secret_pair(before: Option<&mut Value>, after: Option<&mut Value>) {
    let (b_data, a_data) = (
        before.as_ref().map(|v| data_of(v)).unwrap_or_default(),
        after.as_ref().map(|v| data_of(v)).unwrap_or_default(),
    );
    let marker = |changed: bool, side: &str| {
        if changed {
            Value::String(format!("*** ({side}, masked)"))
        } else {
            Value::String("*** (masked)".to_owned())
        }
    };
    if let Some(before) = before {
        mask_with(before, |k, _| {
            let changed = a_data.get(k).is_some_and(|v| Some(v) != b_data.get(k));
            marker(changed, "before")
        });
    }
    if let Some(after) = after {
        mask_with(after, |k, _| {
            let changed = b_data.get(k).is_some_and(|v| Some(v) != a_data.get(k));
            marker(changed, "after")
        });
    }
}

/// Masks every value of a single Secret (for printing a create or a prune).
pub fn mask_secret(object: &mut Value) {
    mask_with(object, |_, _| Value::String("*** (masked)".to_owned()));
}

fn data_of(object: &Value) -> Map<String, Value> {
    let mut out = Map::new();
    for field in ["data", "stringData"] {
        if let Some(Value::Object(m)) = object.get(field) {
            out.extend(m.iter().map(|(k, v)| (k.clone(), v.clone())));
        }
    }
    out
}

fn mask_with(object: &mut Value, mut marker: impl FnMut(&str, &Value) -> Value) {
    for field in ["data", "stringData"] {
        if let Some(Value::Object(m)) = object.get_mut(field) {
            for (k, v) in m.iter_mut() {
                *v = marker(k, v);
            }
        }
    }
    // The last-applied annotation of a kubectl-applied Secret holds its data too.
    if let Some(Value::Object(ann)) = object.pointer_mut("/metadata/annotations")
        && ann.contains_key("kubectl.kubernetes.io/last-applied-configuration")
    {
        ann.insert(
            "kubectl.kubernetes.io/last-applied-configuration".into(),
            Value::String("*** (masked)".into()),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn drops_server_bookkeeping() {
        let live = json!({
            "apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "a", "uid": "u", "resourceVersion": "7", "generation": 2,
                "creationTimestamp": "2026-01-01T00:00:00Z", "managedFields": [{}],
                "annotations": {"kubectl.kubernetes.io/last-applied-configuration": "{}"}},
            "data": {"k": "v"}, "status": {"x": 1}
        });
        assert_eq!(
            normalize(&live),
            json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "a"}, "data": {"k": "v"}})
        );
    }

    #[test]
    fn secret_masks_show_which_keys_changed() {
        let mut before = json!({"apiVersion": "v1", "kind": "Secret", "data": {"same": "c2FtZQ==", "changed": "b2xk", "gone": "eA=="}});
        let mut after = json!({"apiVersion": "v1", "kind": "Secret", "data": {"same": "c2FtZQ==", "changed": "bmV3", "added": "eQ=="}});
        mask_secret_pair(Some(&mut before), Some(&mut after));
        assert_eq!(
            before["data"],
            json!({"same": "*** (masked)", "changed": "*** (before, masked)", "gone": "*** (masked)"})
        );
        assert_eq!(
            after["data"],
            json!({"same": "*** (masked)", "changed": "*** (after, masked)", "added": "*** (masked)"})
        );
        let text = format!("{before}{after}");
        for value in ["c2FtZQ==", "b2xk", "bmV3", "eA==", "eQ=="] {
            assert!(!text.contains(value), "{value} leaked: {text}");
        }
    }
}
