//! Whether a live object is driftless's to delete. The cluster is trusted for what it serves,
//! not for what driftless deletes: an inventory record (which anyone who can write to
//! `driftless-system` can forge) only nominates; before any delete — prune, a removed stack, a
//! removed hook's Job, recreation — the live object itself must carry this stack's label and
//! this instance's mark. Pure.

use serde_json::Value;

use crate::stack::render::{HOOK_LABEL, STACK_LABEL};

/// Annotation driftless writes on every object it applies: the instance that manages it.
pub const INSTANCE_ANNOTATION: &str = "driftless.dev/instance";

/// Why an object is not deleted: it is not this stack's of this instance. Every message starts
/// with "not managed by this instance".
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NotManaged {
    #[error("not managed by this instance: no label {label}")]
    NoLabel { label: &'static str },
    #[error("not managed by this instance: label {label} is {value:?}")]
    OtherStack { label: &'static str, value: String },
    #[error("not managed by this instance: no annotation {INSTANCE_ANNOTATION}")]
    NoInstance,
    #[error("not managed by this instance: annotation {INSTANCE_ANNOTATION} is {0:?}")]
    OtherInstance(String),
    #[error("not managed by this instance: the object read has no name or uid")]
    NoIdentity,
    #[error("not managed by this instance: it was not found")]
    NotFound,
}

/// The stack of one driftless instance: who may delete.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Owner<'a> {
    pub stack: &'a str,
    pub instance: &'a str,
}

/// What names an object's stack: the stack label on the stack's objects, the hook label on the
/// Jobs of its hooks (which are not objects of the stack).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Object,
    HookJob,
}

impl Role {
    fn label(self) -> &'static str {
        match self {
            Role::Object => STACK_LABEL,
            Role::HookJob => HOOK_LABEL,
        }
    }
}

/// A live object found to be `owner`'s: the only thing `cluster::apply::delete` deletes, and
/// only while its uid is the one checked (a deletion precondition).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Deletable {
    name: String,
    uid: String,
}

impl Deletable {
    /// The object's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The uid that was checked.
    pub fn uid(&self) -> &str {
        &self.uid
    }
}

/// Checks `live` against `owner`: a `Deletable` when its label (per `role`) names the stack and
/// its `driftless.dev/instance` annotation the instance; otherwise why it is kept.
pub fn check(live: &Value, owner: Owner<'_>, role: Role) -> Result<Deletable, NotManaged> {
    let label = role.label();
    let text = |path: &str, key: &str| {
        live.pointer(path)
            .and_then(|m| m.get(key))
            .and_then(Value::as_str)
    };
    let stack = text("/metadata/labels", label);
    let instance = text("/metadata/annotations", INSTANCE_ANNOTATION);
    match (stack, instance) {
        (None, _) => return Err(NotManaged::NoLabel { label }),
        (Some(s), _) if s != owner.stack => {
            return Err(NotManaged::OtherStack {
                label,
                value: s.to_owned(),
            });
        }
        (_, None) => return Err(NotManaged::NoInstance),
        (_, Some(i)) if i != owner.instance => {
            return Err(NotManaged::OtherInstance(i.to_owned()));
        }
        _ => {}
    }
    let name = text("/metadata", "name").unwrap_or_default();
    match text("/metadata", "uid") {
        Some(uid) if !uid.is_empty() && !name.is_empty() => Ok(Deletable {
            name: name.to_owned(),
            uid: uid.to_owned(),
        }),
        _ => Err(NotManaged::NoIdentity),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn live(labels: Value, annotations: Value) -> Value {
        json!({"metadata": {"name": "web", "uid": "u-1", "labels": labels, "annotations": annotations}})
    }

    #[test]
    fn only_this_stacks_objects_of_this_instance_are_deletable() {
        let owner = Owner {
            stack: "app",
            instance: "prod",
        };
        let mark = json!({INSTANCE_ANNOTATION: "prod"});
        let cases: Vec<(&str, Value, Role, Result<(), &str>)> = vec![
            (
                "ours",
                live(json!({STACK_LABEL: "app"}), mark.clone()),
                Role::Object,
                Ok(()),
            ),
            (
                "hook Job",
                live(json!({HOOK_LABEL: "app"}), mark.clone()),
                Role::HookJob,
                Ok(()),
            ),
            (
                "hand-made",
                json!({"metadata": {"name": "web", "uid": "u-1"}}),
                Role::Object,
                Err("no label driftless.dev/stack"),
            ),
            (
                "another stack",
                live(json!({STACK_LABEL: "db"}), mark.clone()),
                Role::Object,
                Err("label driftless.dev/stack is \"db\""),
            ),
            (
                "another instance",
                live(
                    json!({STACK_LABEL: "app"}),
                    json!({INSTANCE_ANNOTATION: "dev"}),
                ),
                Role::Object,
                Err("annotation driftless.dev/instance is \"dev\""),
            ),
            (
                "applied before the mark existed",
                live(json!({STACK_LABEL: "app"}), json!({})),
                Role::Object,
                Err("no annotation driftless.dev/instance"),
            ),
            (
                "the mark as a label only",
                live(
                    json!({STACK_LABEL: "app", INSTANCE_ANNOTATION: "prod"}),
                    json!({}),
                ),
                Role::Object,
                Err("no annotation"),
            ),
            (
                "an object's label on a Job",
                live(json!({STACK_LABEL: "app"}), mark.clone()),
                Role::HookJob,
                Err("no label driftless.dev/hook-of"),
            ),
            (
                "no uid",
                json!({"metadata": {"name": "web", "labels": {STACK_LABEL: "app"}, "annotations": mark}}),
                Role::Object,
                Err("no name or uid"),
            ),
        ];
        for (what, live, role, want) in cases {
            match (check(&live, owner, role), want) {
                (Ok(d), Ok(())) => assert_eq!((d.name(), d.uid()), ("web", "u-1"), "{what}"),
                (Err(reason), Err(part)) => {
                    let reason = reason.to_string();
                    assert!(
                        reason.starts_with("not managed by this instance: ")
                            && reason.contains(part),
                        "{what}: {reason}"
                    )
                }
                (got, _) => panic!("{what}: {got:?}"),
            }
        }
    }
}
