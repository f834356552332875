//! Stage 5, prune: the recorded objects that left the desired state, read as candidates for the
//! plan, and deleted as the plan says, in its (reverse apply) order, each leaving the inventory
//! only after its deletion. Right before each delete the live object is read and checked again
//! (`plan::ownership`): an object that is not this stack's of this instance is kept, and the
//! delete goes by the uid checked. The same loop serves a stack's own prune and the stacks that
//! left the revision (whose record is then removed).

use kube::Client;
use tracing::{info, warn};

use super::{Options, StackOutcome};
use crate::cluster::Error as ClusterError;
use crate::cluster::apply;
use crate::cluster::discovery::Kinds;
use crate::cluster::inventory::{self, Entry, Inventory};
use crate::plan::ownership::{self, Owner, Role};
use crate::plan::prune::{KeySet, Removal, gate_together, removal};
use crate::plan::{self, Action, PruneCandidate, PruneSettings, StackPlan};
use crate::stack::ObjectKey;

/// Reads the prune candidates among `inventory`'s objects (see `plan::prune::candidates`).
pub(super) async fn candidates(
    client: &Client,
    kinds: &Kinds,
    inventory: &Inventory,
    own: &KeySet<'_>,
    desired: &KeySet<'_>,
) -> Result<Vec<PruneCandidate>, ClusterError> {
    let mut out = Vec::new();
    for key in plan::prune::candidates(inventory.entries.keys(), own, desired) {
        if let Some(entry) = inventory.entries.get(key) {
            out.push(PruneCandidate {
                key: key.clone(),
                api_version: entry.api_version.clone(),
                live: live(client, kinds, entry).await?,
            });
        }
    }
    Ok(out)
}

/// The live object a record entry names; `None` when it is gone (or its kind is no longer
/// served: its CRD is gone, so is the object).
async fn live(
    client: &Client,
    kinds: &Kinds,
    entry: &Entry,
) -> Result<Option<serde_json::Value>, ClusterError> {
    match kinds.resolve(&entry.api_version, &entry.kind) {
        Some(resolved) => {
            let api = resolved.api(client, entry.namespace.as_deref());
            apply::get(&api, &entry.name, &entry.key().to_string()).await
        }
        None => Ok(None),
    }
}

/// Deletes the plan's prunes in order; each leaves `record` (written at once) after its
/// deletion. Returns the prunes kept instead, with why (found not `owner`'s when their turn
/// came); they stay in the record. `why` ends the log line ("", or " (stack removed)").
pub(super) async fn prune(
    client: &Client,
    kinds: &Kinds,
    record: &mut Inventory,
    plan: &StackPlan,
    owner: Owner<'_>,
    why: &str,
    options: &Options,
) -> Result<Vec<(ObjectKey, String)>, ClusterError> {
    let mut kept = Vec::new();
    for change in plan.changes.iter().filter(|c| c.action == Action::Prune) {
        let Some(entry) = record.entries.get(&change.key).cloned() else {
            continue;
        };
        // Checked before each delete: a Lease lost mid-prune stops it here.
        options.fenced(owner.stack)?;
        let what = change.key.to_string();
        if let (Some(resolved), Some(live)) = (
            kinds.resolve(&entry.api_version, &entry.kind),
            live(client, kinds, &entry).await?,
        ) {
            let target = match ownership::check(&live, owner, Role::Object) {
                Ok(target) => target,
                Err(reason) => {
                    warn!(stack = %owner.stack, object = %what, "not pruned: {reason}");
                    kept.push((change.key.clone(), reason.to_string()));
                    continue;
                }
            };
            let api = resolved.api(client, entry.namespace.as_deref());
            if apply::delete(&api, &target, &what).await? {
                info!(stack = %owner.stack, object = %what, "pruned {what}{why}");
            }
        }
        record.entries_mut().remove(&change.key);
        options.fenced(owner.stack)?;
        inventory::write(client, record).await?;
    }
    Ok(kept)
}

/// The stacks that left the revision (this instance's records of stacks the revision does not
/// have). Each is handed over (all its objects belong to other stacks now: the record goes),
/// removed (when this run may: `plan::prune::removal`) or kept and reported. The removed ones
/// pass the mass-prune gate together, then their objects are pruned and their records removed.
/// A stack to hand over or remove whose Lease this process does not hold is left alone and
/// returned apart (its holder, or a later run that takes the Lease, does it).
pub(super) async fn removed_stacks(
    client: &Client,
    kinds: &Kinds,
    removed: &[&Inventory],
    desired: &KeySet<'_>,
    options: &Options,
) -> (Vec<StackOutcome>, Vec<String>) {
    let mut outcomes = Vec::new();
    let mut unleased = Vec::new();
    // The stacks being removed, and their plans.
    let mut going: Vec<&Inventory> = Vec::new();
    let mut plans: Vec<StackPlan> = Vec::new();
    for inv in removed {
        let mut outcome = StackOutcome::new(&inv.stack);
        let handed_over = inv.entries.keys().all(|k| desired.contains(k));
        let decision = removal(
            handed_over,
            inv.source.as_deref(),
            options.source.as_deref(),
            options.prune_removed_stacks,
        );
        let owner = options.owner(&inv.stack);
        if !matches!(decision, Removal::Keep(_)) && !options.holds(&inv.stack) {
            unleased.push(inv.stack.clone());
            continue;
        }
        match decision {
            Removal::Keep(why) => {
                info!(stack = %inv.stack, "stack no longer in the revision, kept: {why}");
                outcome.kept = Some(why);
            }
            Removal::HandOver => {
                outcome.plan = Some(plan::plan_stack(
                    owner,
                    &[],
                    &[],
                    inv.entries.len(),
                    PruneSettings::default(),
                ));
                if !options.dry_run {
                    let deleted = match options.fenced(&inv.stack) {
                        Ok(()) => inventory::delete(client, inv).await,
                        Err(e) => Err(e),
                    };
                    match deleted {
                        Ok(()) => outcome.applied = true,
                        Err(e) => outcome.error = Some(e.to_string()),
                    }
                }
            }
            Removal::Remove => {
                match candidates(client, kinds, inv, &KeySet::new(), desired).await {
                    Ok(candidates) => {
                        // The gate applies to all removed stacks together, below.
                        let settings = PruneSettings {
                            allow_mass_prune: true,
                            ..PruneSettings::default()
                        };
                        let plan =
                            plan::plan_stack(owner, &[], &candidates, inv.entries.len(), settings);
                        going.push(inv);
                        plans.push(plan);
                        continue;
                    }
                    Err(e) => outcome.error = Some(e.to_string()),
                }
            }
        }
        outcomes.push(outcome);
    }
    let recorded = going.iter().map(|inv| inv.entries.len()).sum();
    gate_together(
        &mut plans,
        recorded,
        PruneSettings {
            max_share: options.max_prune_share,
            allow_mass_prune: options.allow_mass_prune,
            ..PruneSettings::default()
        },
    );
    for (inv, plan) in going.into_iter().zip(plans) {
        outcomes.push(remove_stack(client, kinds, inv, plan, options).await);
    }
    (outcomes, unleased)
}

/// Carries out the plan of one removed stack: its prunes, then its record goes. What stays is
/// kept on purpose (annotation, Namespace/PVC, not this instance's) or was handed to other
/// stacks.
async fn remove_stack(
    client: &Client,
    kinds: &Kinds,
    inv: &Inventory,
    mut plan: StackPlan,
    options: &Options,
) -> StackOutcome {
    let mut outcome = StackOutcome::new(&inv.stack);
    if let Some(refused) = &plan.prune_refused {
        outcome.error = Some(refused.clone());
    }
    if options.dry_run || plan.prune_refused.is_some() {
        outcome.plan = Some(plan);
        return outcome;
    }
    let mut record = inv.clone();
    let owner = options.owner(&inv.stack);
    let result = async {
        let kept = prune(
            client,
            kinds,
            &mut record,
            &plan,
            owner,
            " (stack removed)",
            options,
        )
        .await?;
        for (key, reason) in kept {
            plan.keep_instead(&key, reason);
        }
        options.fenced(&inv.stack)?;
        inventory::delete(client, &record).await
    }
    .await;
    match result {
        Ok(()) => outcome.applied = true,
        Err(e) => outcome.error = Some(e.to_string()),
    }
    outcome.plan = Some(plan);
    outcome
}
