//! The plan: from the desired objects of a stack, what the cluster holds (live objects and the
//! results of server-side-apply dry-runs) and the stack's inventory, the ordered list of creates,
//! updates and prunes, with a diff for each. Pure: it decides, `cluster` carries out.

pub mod normalize;
pub mod order;
pub mod ownership;
pub mod prune;
pub mod recreate;
pub mod signature;
pub mod unchanged;

pub use ownership::Owner;
pub use prune::{PRUNE_ANNOTATION, PruneCandidate, PruneSettings};

use std::fmt::Write as _;

use serde::Serialize;
use serde_json::Value;

use crate::stack::ObjectKey;

/// What the cluster said about one desired object.
#[derive(Debug, Clone)]
pub struct Observation {
    pub key: ObjectKey,
    pub api_version: String,
    /// The live object, `None` when it does not exist.
    pub live: Option<Value>,
    /// The object as a server-side apply would leave it (dry-run result); `None` when the
    /// object is known to be unchanged since the last apply and no dry-run was made.
    pub would_be: Option<Value>,
}

/// What happens to one object.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    Create,
    Update,
    Unchanged,
    Prune,
}

/// One planned change, with its diff (unified YAML; Secret values masked).
#[derive(Debug, Clone, Serialize)]
pub struct PlannedChange {
    #[serde(serialize_with = "key_string")]
    pub key: ObjectKey,
    #[serde(rename = "apiVersion")]
    pub api_version: String,
    pub action: Action,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub diff: String,
}

/// Why an object that left the desired state is kept.
#[derive(Debug, Clone, Serialize)]
pub struct KeptObject {
    #[serde(serialize_with = "key_string")]
    pub key: ObjectKey,
    pub reason: String,
}

fn key_string<S: serde::Serializer>(key: &ObjectKey, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&key.to_string())
}

/// The plan of one stack.
#[derive(Debug, Clone, Serialize)]
pub struct StackPlan {
    pub stack: String,
    /// Creates, updates and unchanged objects in apply order, then prunes in reverse order.
    pub changes: Vec<PlannedChange>,
    /// Prune candidates that stay, and why.
    pub kept: Vec<KeptObject>,
    /// Set when the prune was refused as a whole (mass-prune gate); nothing is pruned then.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prune_refused: Option<String>,
}

impl StackPlan {
    /// Whether applying the plan changes anything.
    pub fn has_changes(&self) -> bool {
        self.changes.iter().any(|c| c.action != Action::Unchanged)
    }

    /// Counts of (create, update, prune).
    pub fn counts(&self) -> (usize, usize, usize) {
        let n = |a| self.changes.iter().filter(|c| c.action == a).count();
        (n(Action::Create), n(Action::Update), n(Action::Prune))
    }

    /// Refuses every prune of the plan (mass-prune gate): they become kept objects.
    pub fn refuse_prunes(&mut self, message: &str) {
        let (prunes, rest): (Vec<PlannedChange>, Vec<PlannedChange>) = self
            .changes
            .drain(..)
            .partition(|c| c.action == Action::Prune);
        self.changes = rest;
        self.kept.extend(prunes.into_iter().map(|c| KeptObject {
            key: c.key,
            reason: "mass-prune gate".to_owned(),
        }));
        self.prune_refused = Some(message.to_owned());
    }

    /// Moves one planned prune to the kept objects (found not deletable when its turn came).
    pub fn keep_instead(&mut self, key: &ObjectKey, reason: String) {
        self.changes
            .retain(|c| !(c.action == Action::Prune && &c.key == key));
        self.kept.push(KeptObject {
            key: key.clone(),
            reason,
        });
    }
}

/// Plans one stack of `owner`. `observations` come in the stack's object order; `inventory_len`
/// is the size of the stack's recorded inventory (the base of the mass-prune share). A candidate
/// that is not `owner`'s (its live labels and mark) is kept, never pruned.
pub fn plan_stack(
    owner: Owner<'_>,
    observations: &[Observation],
    candidates: &[PruneCandidate],
    inventory_len: usize,
    prune: PruneSettings,
) -> StackPlan {
    let mut changes: Vec<PlannedChange> = observations.iter().map(plan_object).collect();
    order::sort_for_apply(&mut changes);

    let mut kept = Vec::new();
    let mut prunes = Vec::new();
    for c in candidates {
        match prune::keep_reason(c, owner, prune) {
            Some(reason) => kept.push(KeptObject {
                key: c.key.clone(),
                reason,
            }),
            None => prunes.push(c),
        }
    }
    let mut prune_refused = None;
    let stack = owner.stack;
    if let Some(message) = prune::gate(
        &format!("stack {stack}"),
        prunes.len(),
        inventory_len,
        prune,
    ) {
        kept.extend(prunes.drain(..).map(|c| KeptObject {
            key: c.key.clone(),
            reason: "mass-prune gate".to_owned(),
        }));
        prune_refused = Some(message);
    }
    let mut prune_changes: Vec<PlannedChange> = prunes
        .into_iter()
        .map(|c| {
            let before = c
                .live
                .as_ref()
                .map(|l| printable(l, None))
                .unwrap_or_default();
            PlannedChange {
                key: c.key.clone(),
                api_version: c.api_version.clone(),
                action: Action::Prune,
                diff: unified(&c.key, &before, ""),
            }
        })
        .collect();
    order::sort_for_apply(&mut prune_changes);
    prune_changes.reverse();
    changes.extend(prune_changes);
    StackPlan {
        stack: stack.to_owned(),
        changes,
        kept,
        prune_refused,
    }
}

fn plan_object(o: &Observation) -> PlannedChange {
    let (action, diff) = match (&o.live, &o.would_be) {
        (_, None) => (Action::Unchanged, String::new()),
        (None, Some(after)) => (Action::Create, unified(&o.key, "", &printable(after, None))),
        (Some(live), Some(after)) => {
            let (mut before_v, mut after_v) =
                (normalize::normalize(live), normalize::normalize(after));
            // Either side: a ConfigMap leaving a SOPS file keeps its decrypted values live.
            if normalize::is_secret(&after_v) || normalize::is_secret(&before_v) {
                normalize::mask_secret_pair(Some(&mut before_v), Some(&mut after_v));
            }
            if before_v == after_v {
                (Action::Unchanged, String::new())
            } else {
                (
                    Action::Update,
                    unified(&o.key, &to_yaml(&before_v), &to_yaml(&after_v)),
                )
            }
        }
    };
    PlannedChange {
        key: o.key.clone(),
        api_version: o.api_version.clone(),
        action,
        diff,
    }
}

/// Normalised, masked YAML of one object.
fn printable(object: &Value, _other: Option<&Value>) -> String {
    let mut v = normalize::normalize(object);
    if normalize::is_secret(&v) {
        normalize::mask_secret(&mut v);
    }
    to_yaml(&v)
}

fn to_yaml(v: &Value) -> String {
    // serde_json::Value always serialises; an error here could only come from the writer.
    serde_saphyr::to_string(v).unwrap_or_else(|e| format!("# cannot render as YAML: {e}\n"))
}

fn unified(key: &ObjectKey, before: &str, after: &str) -> String {
    let diff = similar::TextDiff::from_lines(before, after);
    let mut out = String::new();
    let _ = write!(
        out,
        "{}",
        diff.unified_diff()
            .context_radius(3)
            .header(&format!("live/{key}"), &format!("desired/{key}"))
    );
    out
}

#[cfg(test)]
mod tests;
