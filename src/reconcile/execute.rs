//! Stage 4, execute: carries one stack's plan out. The inventory first (a crash after it orphans
//! nothing), then the applies in plan order — a run of one apply rank `APPLY_CONCURRENCY` at a
//! time; a CRD (then wait until Established and refresh discovery), a custom resource of a CRD
//! from this sync, and a recreate each on their own — then the record, the prune, the health
//! wait and the post-sync hooks.

use std::collections::HashMap;

use serde_json::Value;
use tracing::{info, warn};

use super::bind::Bound;
use super::observe::Renewal;
use super::{StackContext, StackOutcome, Unhealthy, failpoint, in_flight, prune};
use crate::cluster::Error as ClusterError;
use crate::cluster::apply::{self, Conflict};
use crate::cluster::discovery::Kinds;
use crate::cluster::health::{self, Watched};
use crate::cluster::inventory::{self, Entry, Inventory};
use crate::cluster::wait;
use crate::logging::Lap;
use crate::plan::ownership::{self, Role};
use crate::plan::{self, Action, PlannedChange, StackPlan, signature, unchanged};
use crate::stack::ObjectKey;

/// Applies in flight at once within one apply-order group.
const APPLY_CONCURRENCY: usize = 16;

/// Carries out `stack_plan`. `wait_for` are the objects whose health is awaited (all but the
/// ones the incremental skip left unread); `renewals` what the records of objects found
/// unchanged may take (`observe::Renewal`).
pub(super) async fn execute(
    ctx: &StackContext<'_>,
    objects: &[Bound<'_>],
    wait_for: &[&Bound<'_>],
    kinds: &mut Kinds,
    stack_plan: &StackPlan,
    renewals: &HashMap<ObjectKey, Renewal>,
    outcome: &mut StackOutcome,
) -> Result<(), ClusterError> {
    let name = &ctx.stack.name;
    let mut lap = Lap::start(name);
    let by_key: HashMap<&ObjectKey, &Bound<'_>> =
        objects.iter().map(|b| (&b.desired.key, b)).collect();
    // Inventory first: a crash after this write and before the apply orphans nothing.
    let mut record = ctx.inventory.clone();
    record.stack = name.clone();
    record.owner = ctx.options.instance.clone();
    if ctx.options.source.is_some() {
        record.source = ctx.options.source.clone();
    }
    let how = apply::ApplyParams {
        force: ctx.stack.spec.force,
        dry_run: false,
        instance: &ctx.options.instance,
    };
    let mut grew = false;
    // `record` is the read record so far (`ctx.recorded` indexes it).
    for b in objects {
        if !ctx.recorded.contains_key(&b.desired.key) {
            record.entries_mut().insert(
                b.desired.key.clone(),
                Entry::new(&b.desired.key, &b.desired.api_version),
            );
            grew = true;
        }
    }
    if grew {
        ctx.options.fenced(name)?;
        inventory::write(ctx.client, &mut record).await?;
        failpoint("after-inventory-write");
    }
    renew_confirmed(ctx, &mut record, objects, stack_plan, renewals);
    let mut progress = Progress {
        done: 0,
        total: stack_plan
            .changes
            .iter()
            .filter(|c| c.action != Action::Unchanged)
            .count(),
    };
    let pending: Vec<&PlannedChange> = stack_plan
        .changes
        .iter()
        .filter(|c| c.action != Action::Unchanged && by_key.contains_key(&c.key))
        .collect();
    // Objects that need their own step: a CRD (wait for Established), a custom resource of a
    // CRD from this sync (discovery first), a recreate (delete first).
    let solo = |c: &PlannedChange| {
        by_key.get(&c.key).is_none_or(|b| b.resolved.is_none())
            || c.key.kind == "CustomResourceDefinition"
            || outcome.recreate.contains(&c.key.to_string())
    };
    super::pausepoint("before-apply");
    let mut i = 0;
    while i < pending.len() {
        let change = pending[i];
        let Some(b) = by_key.get(&change.key) else {
            i += 1;
            continue;
        };
        ctx.options.fenced(name)?;
        if solo(change) {
            if b.resolved.is_none() {
                // A custom resource of a CRD applied earlier in this sync.
                *kinds = Kinds::discover(ctx.client).await?;
            }
            let resolved = b.resolve(kinds)?;
            let api = resolved.api(ctx.client, b.namespace.as_deref());
            if outcome.recreate.contains(&change.key.to_string()) {
                recreate_delete(ctx, &api, &change.key).await?;
            }
            let applied = apply::apply(&api, b.desired, how).await?;
            let status = resolved.status_subresource;
            progress.applied(ctx, &mut record, change, b, status, applied);
            if change.key.kind == "CustomResourceDefinition" {
                wait::established(ctx.client, &change.key.name).await?;
                *kinds = Kinds::discover(ctx.client).await?;
            }
            i += 1;
            continue;
        }
        // A run of objects of one apply rank: applied APPLY_CONCURRENCY at a time.
        let rank = plan::order::apply_rank(&change.key.group, &change.key.kind);
        let mut j = i;
        while j < pending.len()
            && !solo(pending[j])
            && plan::order::apply_rank(&pending[j].key.group, &pending[j].key.kind) == rank
        {
            j += 1;
        }
        let batch = &pending[i..j];
        let known: &Kinds = kinds;
        let applies: Vec<_> = batch
            .iter()
            .filter_map(|c| by_key.get(&c.key).copied())
            .map(|b| async move {
                let api = b.resolve(known)?.api(ctx.client, b.namespace.as_deref());
                apply::apply(&api, b.desired, how).await
            })
            .collect();
        let results = in_flight(applies, APPLY_CONCURRENCY).await;
        let mut first_error = None;
        for (change, result) in batch.iter().zip(results) {
            match (result, by_key.get(&change.key)) {
                (Ok(applied), Some(b)) => {
                    // Resolved when applied: a signature without the flag would not match.
                    let status = b.resolve(kinds).is_ok_and(|r| r.status_subresource);
                    progress.applied(ctx, &mut record, change, b, status, applied);
                }
                (Err(e), _) => {
                    first_error.get_or_insert(e);
                }
                (Ok(_), None) => {}
            }
        }
        if let Some(e) = first_error {
            // What was applied is recorded, so the next run does not dry-run it again.
            ctx.options.fenced(name)?;
            inventory::write(ctx.client, &mut record).await?;
            return Err(e);
        }
        i = j;
    }
    lap.log("applied");
    // Unchanged objects keep their records. A reconcile that changed nothing writes nothing.
    let inv = ctx.inventory;
    if record.entries != inv.entries || record.owner != inv.owner || record.source != inv.source {
        ctx.options.fenced(name)?;
        inventory::write(ctx.client, &mut record).await?;
        lap.log("wrote the inventory");
    }
    outcome.applied = true;

    let owner = ctx.options.owner(name);
    let kept = prune::prune(
        ctx.client,
        kinds,
        &mut record,
        stack_plan,
        owner,
        "",
        ctx.options,
    )
    .await?;
    if let Some(plan) = outcome.plan.as_mut() {
        for (key, reason) in kept {
            plan.keep_instead(&key, reason);
        }
    }
    // Objects another stack now declares leave this inventory without being deleted.
    // Found first, so that a record sharing its entries is copied only when one goes.
    let handed: Vec<ObjectKey> = record
        .entries
        .keys()
        .filter(|k| plan::prune::handed_over(k, &ctx.own, &ctx.revision.desired_keys))
        .cloned()
        .collect();
    if !handed.is_empty() {
        let entries = record.entries_mut();
        for k in &handed {
            entries.remove(k);
        }
        ctx.options.fenced(name)?;
        inventory::write(ctx.client, &mut record).await?;
    }

    if ctx.options.wait && !wait_healthy(ctx, wait_for, kinds, outcome, &mut lap).await? {
        return Ok(());
    }
    // Post-sync hooks: after the stack is healthy (or applied, with --no-wait), before its
    // dependents, which a failed hook holds back like an unhealthy stack.
    if !ctx.stack.post_sync.is_empty() || !record.hooks.is_empty() {
        ctx.options.fenced(name)?;
        let post_sync = crate::sync_hooks::run_post_sync(
            ctx.client,
            kinds,
            owner,
            &ctx.stack.post_sync,
            &mut record,
        )
        .await?;
        outcome.hooks = post_sync.hooks;
        outcome.error = post_sync.failure;
        if let Some(plan) = outcome.plan.as_mut() {
            plan.kept.extend(post_sync.kept);
        }
    }
    Ok(())
}

/// Deletes an object to recreate it, after checking once more that it is this stack's of this
/// instance (it was checked when planned; the check and the delete now go by its uid).
async fn recreate_delete(
    ctx: &StackContext<'_>,
    api: &kube::Api<kube::api::DynamicObject>,
    key: &ObjectKey,
) -> Result<(), ClusterError> {
    let what = key.to_string();
    let owner = ctx.options.owner(&ctx.stack.name);
    let Some(live) = apply::get(api, &key.name, &what).await? else {
        return Ok(());
    };
    let target =
        ownership::check(&live, owner, Role::Object).map_err(|reason| ClusterError::Refused {
            object: what.clone(),
            action: "delete to recreate",
            reason: reason.to_string(),
        })?;
    if apply::delete(api, &target, &what).await? {
        wait::gone(api, &key.name, &what, "for recreation").await?;
        info!(stack = %ctx.stack.name, object = %key, "deleted {key} to recreate it");
    }
    Ok(())
}

/// Waits for the health of `wait_for`; `false` (and the stack's error set) when some objects
/// did not become healthy in time.
async fn wait_healthy(
    ctx: &StackContext<'_>,
    wait_for: &[&Bound<'_>],
    kinds: &Kinds,
    outcome: &mut StackOutcome,
    lap: &mut Lap<'_>,
) -> Result<bool, ClusterError> {
    let name = &ctx.stack.name;
    let watched: Vec<Watched> = wait_for
        .iter()
        .map(|b| Watched {
            key: b.desired.key.clone(),
            api_version: b.desired.api_version.clone(),
        })
        .collect();
    let timeout = ctx.stack.spec.wait.timeout;
    let mut last = 0;
    let checks = ctx.options.health_checks.as_deref();
    let pending = health::wait_healthy(
        ctx.client,
        kinds,
        name,
        &watched,
        timeout,
        checks,
        |ok, all| {
            if ok != last {
                info!(stack = %name, "healthy {ok}/{all}");
                last = ok;
            }
        },
    )
    .await?;
    lap.log("waited for health");
    outcome.unhealthy = pending
        .into_iter()
        .map(|(k, status)| Unhealthy {
            object: k.to_string(),
            status,
        })
        .collect();
    if outcome.unhealthy.is_empty() {
        return Ok(true);
    }
    outcome.error = Some(format!(
        "stack {name}: {} object(s) not healthy after {}s",
        outcome.unhealthy.len(),
        timeout.as_secs()
    ));
    Ok(false)
}

/// Counts applies for the log.
struct Progress {
    done: usize,
    total: usize,
}

impl Progress {
    /// Logs one applied object and records its hash, resourceVersion, generation and signature
    /// (`status_subresource`: as discovery says of its kind).
    fn applied(
        &mut self,
        ctx: &StackContext<'_>,
        record: &mut Inventory,
        change: &PlannedChange,
        b: &Bound<'_>,
        status_subresource: bool,
        (applied, conflicts): (Value, Vec<Conflict>),
    ) {
        self.done += 1;
        let (name, done, total) = (&ctx.stack.name, self.done, self.total);
        for c in &conflicts {
            warn!(stack = %name, object = %change.key, field = %c.field, manager = %c.manager, "took over field {} from {}", c.field, c.manager);
        }
        info!(stack = %name, object = %change.key, action = ?change.action, "applied {done}/{total}: {} ({:?})", change.key, change.action);
        if let Some(entry) = record.entries_mut().get_mut(&change.key) {
            entry.api_version = b.desired.api_version.clone();
            let key = ctx.options.secret_hash_key.as_ref();
            entry.hash = apply::applied_hash(b.desired, key, &ctx.options.instance);
            entry.resource_version = applied
                .pointer("/metadata/resourceVersion")
                .and_then(Value::as_str)
                .map(str::to_owned);
            entry.generation = applied
                .pointer("/metadata/generation")
                .and_then(Value::as_i64);
            entry.signature = signature::of_object(&applied, status_subresource);
        }
    }
}

/// Renews the record of each object the plan found unchanged after a dry-run that confirmed
/// the live object is exactly what an apply would leave (`plan::unchanged::confirmed`), or
/// whose older record vouched for it exactly: it is recorded as if just applied, with its
/// signature, so the next reconcile needs no dry-run for it.
fn renew_confirmed(
    ctx: &StackContext<'_>,
    record: &mut Inventory,
    objects: &[Bound<'_>],
    stack_plan: &StackPlan,
    renewals: &HashMap<ObjectKey, Renewal>,
) {
    let actions: HashMap<&ObjectKey, Action> = stack_plan
        .changes
        .iter()
        .map(|c| (&c.key, c.action))
        .collect();
    for b in objects {
        let key = &b.desired.key;
        let (Some(renewal), Some(&action)) = (renewals.get(key), actions.get(key)) else {
            continue;
        };
        if !unchanged::confirmed(action, Some(&renewal.live), renewal.would_be.as_deref()) {
            continue;
        }
        if let Some(entry) = record.entries_mut().get_mut(key) {
            let hash_key = ctx.options.secret_hash_key.as_ref();
            entry.api_version = b.desired.api_version.clone();
            entry.hash = apply::applied_hash(b.desired, hash_key, &ctx.options.instance);
            entry.resource_version = renewal.resource_version.clone();
            entry.generation = renewal.generation;
            entry.signature = Some(renewal.live.clone());
        }
    }
}
