//! Stage 5, prune: the recorded objects that left the desired state, read as candidates for the
//! plan, and deleted as the plan says, in its (reverse apply) order, each leaving the inventory
//! only after its deletion. The same loop serves a stack's own prune and the stacks that left
//! the revision (whose record is then removed).

use std::collections::BTreeSet;

use kube::Client;
use tracing::info;

use super::{Options, StackOutcome};
use crate::cluster::Error as ClusterError;
use crate::cluster::apply;
use crate::cluster::discovery::Kinds;
use crate::cluster::inventory::{self, Entry, Inventory};
use crate::plan::{self, Action, PruneCandidate, PruneSettings, StackPlan};
use crate::stack::ObjectKey;

/// Reads the prune candidates among `inventory`'s objects (see `plan::prune::candidates`).
pub(super) async fn candidates(
    client: &Client,
    kinds: &Kinds,
    inventory: &Inventory,
    own: &BTreeSet<&ObjectKey>,
    desired: &BTreeSet<ObjectKey>,
) -> Result<Vec<PruneCandidate>, ClusterError> {
    let mut out = Vec::new();
    for key in plan::prune::candidates(inventory.entries.keys(), own, desired) {
        if let Some(entry) = inventory.entries.get(key) {
            out.push(candidate(client, kinds, entry).await?);
        }
    }
    Ok(out)
}

async fn candidate(
    client: &Client,
    kinds: &Kinds,
    entry: &Entry,
) -> Result<PruneCandidate, ClusterError> {
    let key = entry.key();
    let live = match kinds.resolve(&entry.api_version, &entry.kind) {
        Some(resolved) => {
            let api = resolved.api(client, entry.namespace.as_deref());
            apply::get(&api, &entry.name, &key.to_string()).await?
        }
        // The kind is no longer served (its CRD is gone): so is the object.
        None => None,
    };
    Ok(PruneCandidate {
        key,
        api_version: entry.api_version.clone(),
        live,
    })
}

/// Deletes the plan's prunes in order; each leaves `record` (written at once) after its deletion.
/// `why` ends the log line ("", or " (stack removed)").
pub(super) async fn prune(
    client: &Client,
    kinds: &Kinds,
    record: &mut Inventory,
    plan: &StackPlan,
    why: &str,
) -> Result<(), ClusterError> {
    for change in plan.changes.iter().filter(|c| c.action == Action::Prune) {
        let Some(entry) = record.entries.get(&change.key).cloned() else {
            continue;
        };
        if let Some(resolved) = kinds.resolve(&entry.api_version, &entry.kind) {
            let api = resolved.api(client, entry.namespace.as_deref());
            apply::delete(&api, &entry.name, &change.key.to_string()).await?;
            info!(stack = %record.stack, object = %change.key, "pruned {}{why}", change.key);
        }
        record.entries.remove(&change.key);
        inventory::write(client, record).await?;
    }
    Ok(())
}

/// A stack that left the revision: what no current stack claims is pruned (same gates as any
/// prune), then its record is removed. What remains is kept on purpose (annotation,
/// Namespace/PVC) or was handed to other stacks.
pub(super) async fn removed_stack(
    client: &Client,
    kinds: &Kinds,
    inv: &Inventory,
    desired: &BTreeSet<ObjectKey>,
    options: &Options,
) -> StackOutcome {
    let mut outcome = StackOutcome::new(&inv.stack);
    let result: Result<(), ClusterError> = async {
        let candidates = candidates(client, kinds, inv, &BTreeSet::new(), desired).await?;
        let settings = PruneSettings {
            enabled: true,
            max_share: options.max_prune_share,
            allow_mass_prune: options.allow_mass_prune,
            include_namespaces_and_volumes: false,
        };
        let stack_plan =
            plan::plan_stack(&inv.stack, &[], &candidates, inv.entries.len(), settings);
        if let Some(message) = &stack_plan.prune_refused {
            outcome.error = Some(format!(
                "{message} (the stack is no longer in the revision)"
            ));
        }
        let refused = stack_plan.prune_refused.is_some();
        outcome.plan = Some(stack_plan);
        if options.dry_run || refused {
            return Ok(());
        }
        let mut record = inv.clone();
        if let Some(plan) = &outcome.plan {
            prune(client, kinds, &mut record, plan, " (stack removed)").await?;
        }
        inventory::delete(client, &inv.stack).await?;
        outcome.applied = true;
        Ok(())
    }
    .await;
    if let Err(e) = result {
        outcome.error = Some(e.to_string());
    }
    outcome
}
