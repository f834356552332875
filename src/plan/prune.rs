//! Prune decisions: which recorded objects are candidates, which of them stay and why, and the
//! mass-prune gate. Pure: `reconcile::prune` reads the candidates and deletes what the plan says.

use std::collections::HashSet;

use serde_json::Value;

use super::StackPlan;
use super::ownership::{self, Owner, Role};
use crate::stack::ObjectKey;

/// Annotation that keeps an object from ever being pruned.
pub const PRUNE_ANNOTATION: &str = "driftless.dev/prune";

/// An object the inventory holds that the desired state no longer has.
#[derive(Debug, Clone)]
pub struct PruneCandidate {
    pub key: ObjectKey,
    pub api_version: String,
    /// The live object, `None` when it is already gone.
    pub live: Option<Value>,
}

/// Prune policy for one plan.
#[derive(Debug, Clone, Copy)]
pub struct PruneSettings {
    /// Prune at all (the stack's `prune`, or `--prune`).
    pub enabled: bool,
    /// Refuse a prune of more than this share of the inventory (0.5 = 50 %).
    pub max_share: f64,
    /// `--allow-mass-prune`: lift the share limit.
    pub allow_mass_prune: bool,
    /// Prune Namespaces and PersistentVolumeClaims too (off by default: they hold data).
    pub include_namespaces_and_volumes: bool,
}

impl Default for PruneSettings {
    fn default() -> Self {
        PruneSettings {
            enabled: true,
            max_share: 0.5,
            allow_mass_prune: false,
            include_namespaces_and_volumes: false,
        }
    }
}

/// A set of object keys looked up by hash: a reconcile asks it once per recorded object, and
/// keys of one stack share their group, kind and namespace, which an ordered set compares byte
/// by byte at every step (at 10,000 objects ~13× slower to build and ask). Std's keyed hasher:
/// the keys come from the repository and the cluster, and must not be able to force collisions.
pub type KeySet<'a> = HashSet<&'a ObjectKey>;

/// The recorded objects of a stack that are prune candidates: no longer declared by the stack
/// (`own`), nor by any other stack of the revision (`desired`: those are handed over). In the
/// order of `recorded`.
pub fn candidates<'a>(
    recorded: impl IntoIterator<Item = &'a ObjectKey>,
    own: &KeySet<'_>,
    desired: &KeySet<'_>,
) -> Vec<&'a ObjectKey> {
    recorded
        .into_iter()
        .filter(|k| !own.contains(k) && !desired.contains(*k))
        .collect()
}

/// Whether a recorded object leaves this stack's inventory without being deleted: another stack
/// of the revision now declares it (a rename, or an object moved between stacks).
pub fn handed_over(key: &ObjectKey, own: &KeySet<'_>, desired: &KeySet<'_>) -> bool {
    !own.contains(key) && desired.contains(key)
}

/// Why a candidate stays, or `None` when it is pruned (an object already gone is pruned from
/// the record only).
pub(super) fn keep_reason(
    c: &PruneCandidate,
    owner: Owner<'_>,
    prune: PruneSettings,
) -> Option<String> {
    if !prune.enabled {
        return Some("prune is disabled for this stack".to_owned());
    }
    let live = c.live.as_ref()?;
    if let Err(reason) = ownership::check(live, owner, Role::Object) {
        return Some(reason.to_string());
    }
    let annotation = live
        .pointer("/metadata/annotations")
        .and_then(|a| a.get(PRUNE_ANNOTATION))
        .and_then(Value::as_str);
    if annotation == Some("disabled") {
        return Some(format!("annotation {PRUNE_ANNOTATION}: disabled"));
    }
    let data_holding = c.key.group.is_empty()
        && (c.key.kind == "Namespace" || c.key.kind == "PersistentVolumeClaim");
    if data_holding && !prune.include_namespaces_and_volumes {
        return Some(format!(
            "{}s are never pruned unless configured",
            c.key.kind
        ));
    }
    None
}

/// The mass-prune gate: the refusal message when `prunes` of `inventory_len` recorded objects
/// is more than one object and more than the allowed share; `what` names the stack(s).
pub(super) fn gate(
    what: &str,
    prunes: usize,
    inventory_len: usize,
    prune: PruneSettings,
) -> Option<String> {
    let share = if inventory_len == 0 {
        0.0
    } else {
        prunes as f64 / inventory_len as f64
    };
    (prunes > 1 && share > prune.max_share && !prune.allow_mass_prune).then(|| {
        format!(
            "{what}: refusing to prune {prunes} of {inventory_len} objects ({:.0} % > {:.0} %); \
             check the commit, then run with --allow-mass-prune (or set allowMassPrune) if it is intended",
            share * 100.0,
            prune.max_share * 100.0
        )
    })
}

/// The mass-prune gate over the stacks that leave the revision together: their prunes count
/// together against their recorded objects together (`recorded`), so that many single-object
/// stacks are no easier to remove than one large one. When refused, no plan prunes anything.
pub fn gate_together(plans: &mut [StackPlan], recorded: usize, prune: PruneSettings) {
    let prunes = plans.iter().map(|p| p.counts().2).sum();
    let names: Vec<&str> = plans.iter().map(|p| p.stack.as_str()).collect();
    let what = match names.as_slice() {
        [one] => format!("stack {one} (no longer in the revision)"),
        many => format!("stacks {} (no longer in the revision)", many.join(", ")),
    };
    if let Some(message) = gate(&what, prunes, recorded, prune) {
        for plan in plans {
            plan.refuse_prunes(&message);
        }
    }
}

/// What happens to a stack whose record remains but which left the revision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Removal {
    /// Every recorded object now belongs to other stacks (a rename): the record goes, nothing
    /// is deleted.
    HandOver,
    /// Its objects are pruned (behind the same gates as any prune), then its record goes.
    Remove,
    /// Nothing is done; why.
    Keep(String),
}

/// Decides about a stack that left the revision. `recorded_source` is the source its record
/// was written from (`None`: a record of an older driftless), `run_source` the source this run
/// read, `permitted` whether this run may remove stacks (`--prune-removed-stacks`, or the
/// daemon with a revision fetched from its configured source).
pub fn removal(
    all_handed_over: bool,
    recorded_source: Option<&str>,
    run_source: Option<&str>,
    permitted: bool,
) -> Removal {
    if all_handed_over {
        return Removal::HandOver;
    }
    if !permitted {
        return Removal::Keep(
            "it is no longer in the revision; removing a stack from the command line needs --prune-removed-stacks"
                .to_owned(),
        );
    }
    match (recorded_source, run_source) {
        (None, _) => Removal::Remove,
        (Some(recorded), Some(run)) if recorded == run => Removal::Remove,
        (Some(recorded), Some(run)) => Removal::Keep(format!(
            "it was applied from {recorded}, and this run reads {run}: only a run from {recorded} removes it"
        )),
        (Some(recorded), None) => Removal::Keep(format!(
            "it was applied from {recorded}, and this run's source is unknown"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cm(name: &str) -> ObjectKey {
        ObjectKey {
            group: String::new(),
            kind: "ConfigMap".into(),
            namespace: Some("ns".into()),
            name: name.into(),
        }
    }

    #[test]
    fn candidates_are_recorded_objects_nobody_declares() {
        let (kept, moved, gone) = (cm("kept"), cm("moved"), cm("gone"));
        let recorded = [kept.clone(), moved.clone(), gone.clone()];
        let own: KeySet = [&kept].into();
        let desired: KeySet = [&kept, &moved].into();
        assert_eq!(candidates(&recorded, &own, &desired), [&gone]);
        let cases = [(&kept, false), (&moved, true), (&gone, false)];
        for (key, want) in cases {
            assert_eq!(handed_over(key, &own, &desired), want, "{key}");
        }
    }

    #[test]
    fn the_gate_counts_more_than_one_object_over_the_share() {
        let on = PruneSettings::default();
        let allowed = PruneSettings {
            allow_mass_prune: true,
            ..on
        };
        let cases = [
            (1, 1, on, false),
            (2, 10, on, false),
            (5, 10, on, false),
            (6, 10, on, true),
            (2, 2, on, true),
            (2, 2, allowed, false),
            (0, 0, on, false),
        ];
        for (prunes, of, settings, refused) in cases {
            assert_eq!(
                gate("stack s", prunes, of, settings).is_some(),
                refused,
                "{prunes} of {of}"
            );
        }
        let msg = gate("stack s", 2, 3, on).unwrap_or_default();
        assert!(
            msg.contains("refusing to prune 2 of 3 objects (67 % > 50 %)"),
            "{msg}"
        );
    }
}
