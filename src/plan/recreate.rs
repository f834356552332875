//! Recreation: an object whose change the API server refuses because an immutable field changed
//! is deleted and created again, when it opts in. Pure: `reconcile` asks, `cluster` deletes.

use serde_json::Value;

use super::ownership::{self, Owner, Role};
use crate::stack::ObjectKey;

/// Annotation by which an object allows driftless to delete and recreate it when an immutable
/// field changes.
pub const RECREATE_ANNOTATION: &str = "driftless.dev/recreate";

/// Whether the API server's refusal (`code`, `message`) says an immutable field changed.
pub fn is_immutable_change(code: u16, message: &str) -> bool {
    code == 422
        && (message.contains("immutable")
            || message.contains("may not change")
            // A StatefulSet's spec outside its few updatable fields (volumeClaimTemplates,
            // selector, serviceName, podManagementPolicy): the server says "Forbidden" instead.
            || message.contains("updates to statefulset spec for fields other than"))
}

/// Whether the desired object opts in to recreation (`driftless.dev/recreate: "true"`).
pub fn wants_recreate(desired: &Value) -> bool {
    desired
        .pointer("/metadata/annotations")
        .and_then(|a| a.get(RECREATE_ANNOTATION))
        .and_then(Value::as_str)
        == Some("true")
}

/// Kinds recreation never deletes unless the host configuration lists them
/// (`prune.allowRecreate`): a Namespace or a PersistentVolumeClaim takes its data with it, a
/// CustomResourceDefinition every object of its kind.
pub const PROTECTED: [(&str, &str); 3] = [
    ("", "Namespace"),
    ("", "PersistentVolumeClaim"),
    ("apiextensions.k8s.io", "CustomResourceDefinition"),
];

/// What to do about a change the server refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Recreate {
    /// Not an immutable-field refusal, or the object does not opt in: the refusal stands.
    No,
    /// Delete the object (after checking it again) and create it anew.
    Yes,
    /// It would be recreated, but may not be: why.
    Refused(String),
}

/// Decides about an object whose dry-run the server refused with (`code`, `message`): `live` is
/// the object as read, `allowed` the protected kinds the host configuration lets recreation
/// delete.
pub fn decide(
    key: &ObjectKey,
    desired: &Value,
    (code, message): (u16, &str),
    live: Option<&Value>,
    owner: Owner<'_>,
    allowed: &[String],
) -> Recreate {
    if !(is_immutable_change(code, message) && wants_recreate(desired)) {
        return Recreate::No;
    }
    let protected = PROTECTED.contains(&(key.group.as_str(), key.kind.as_str()));
    if protected && !allowed.contains(&key.kind) {
        return Recreate::Refused(format!(
            "{key}: an immutable field changed, and {}s are never deleted to be recreated unless the host configuration allows it (prune.allowRecreate: [{}]); revert the change, or recreate it by hand",
            key.kind, key.kind
        ));
    }
    let checked = match live {
        Some(live) => ownership::check(live, owner, Role::Object).map(|_| ()),
        None => Err(ownership::NotManaged::NotFound),
    };
    match checked {
        Ok(()) => Recreate::Yes,
        Err(reason) => Recreate::Refused(format!(
            "{key}: an immutable field changed; not deleted to be recreated: {reason}"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::ownership::INSTANCE_ANNOTATION;
    use serde_json::json;

    fn key(group: &str, kind: &str) -> ObjectKey {
        ObjectKey {
            group: group.into(),
            kind: kind.into(),
            namespace: Some("ns".into()),
            name: "x".into(),
        }
    }

    /// (what, key, desired, refusal, live, allowed kinds, Ok(recreated?) or Err(part of why not)).
    type Case<'a> = (
        &'a str,
        &'a ObjectKey,
        &'a Value,
        (u16, &'a str),
        Option<&'a Value>,
        &'a [String],
        Result<bool, &'a str>,
    );

    #[test]
    fn only_an_immutable_change_of_an_object_that_opts_in_and_may_is_recreated() {
        let owner = Owner {
            stack: "app",
            instance: "prod",
        };
        let ours = json!({"metadata": {"name": "x", "uid": "u", "labels": {"driftless.dev/stack": "app"},
            "annotations": {INSTANCE_ANNOTATION: "prod"}}});
        let foreign = json!({"metadata": {"name": "x", "uid": "u"}});
        let opted = json!({"metadata": {"annotations": {RECREATE_ANNOTATION: "true"}}});
        let other = json!({"metadata": {"annotations": {RECREATE_ANNOTATION: "yes"}}});
        let plain = json!({"metadata": {}});
        let immutable = "ConfigMap \"frozen\" is invalid: data: Forbidden: field is immutable when `immutable` is set";
        let may_not = "spec.volumeName: may not change once bound";
        let sts = "StatefulSet.apps \"db\" is invalid: spec: Forbidden: updates to statefulset spec for fields other than 'replicas', 'ordinals', 'template', 'updateStrategy', 'revisionHistoryLimit', 'persistentVolumeClaimRetentionPolicy' and 'minReadySeconds' are forbidden";
        let (cm, pvc) = (key("", "ConfigMap"), key("", "PersistentVolumeClaim"));
        let crd = key("apiextensions.k8s.io", "CustomResourceDefinition");
        let none: &[String] = &[];
        let pvcs = &["PersistentVolumeClaim".to_owned()][..];
        #[rustfmt::skip]
        let cases: Vec<Case<'_>> = vec![
            ("opted in, ours", &cm, &opted, (422, immutable), Some(&ours), none, Ok(true)),
            ("may not change", &cm, &opted, (422, may_not), Some(&ours), none, Ok(true)),
            ("a StatefulSet's claim templates", &cm, &opted, (422, sts), Some(&ours), none, Ok(true)),
            ("the same, not opted in", &cm, &plain, (422, sts), Some(&ours), none, Ok(false)),
            ("another refusal", &cm, &opted, (422, "spec.replicas: must be >= 0"), Some(&ours), none, Ok(false)),
            ("a conflict", &cm, &opted, (409, immutable), Some(&ours), none, Ok(false)),
            ("not \"true\"", &cm, &other, (422, immutable), Some(&ours), none, Ok(false)),
            ("no annotation", &cm, &plain, (422, immutable), Some(&ours), none, Ok(false)),
            ("foreign object", &cm, &opted, (422, immutable), Some(&foreign), none, Err("not managed by this instance")),
            ("not found", &cm, &opted, (422, immutable), None, none, Err("not managed by this instance")),
            ("a PVC by default", &pvc, &opted, (422, immutable), Some(&ours), none, Err("prune.allowRecreate: [PersistentVolumeClaim]")),
            ("a PVC allowed", &pvc, &opted, (422, immutable), Some(&ours), pvcs, Ok(true)),
            ("a CRD, PVCs allowed", &crd, &opted, (422, immutable), Some(&ours), pvcs, Err("CustomResourceDefinitions are never deleted")),
            ("a foreign PVC, allowed", &pvc, &opted, (422, immutable), Some(&foreign), pvcs, Err("not managed")),
        ];
        for (what, key, desired, refusal, live, allowed, want) in cases {
            let got = decide(key, desired, refusal, live, owner, allowed);
            match (got, want) {
                (Recreate::Yes, Ok(true)) | (Recreate::No, Ok(false)) => {}
                (Recreate::Refused(m), Err(part)) => assert!(m.contains(part), "{what}: {m}"),
                (got, want) => panic!("{what}: {got:?}, wanted {want:?}"),
            }
        }
    }
}
