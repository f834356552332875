//! Stage 3, check: the revision's policies against one stack's planned objects (an object that is
//! live is an UPDATE of it). A Deny finding blocks the whole stack: nothing of it is applied.

use std::collections::HashMap;

use serde_json::Value;
use tracing::warn;

use super::bind::Bound;
use super::observe::Observed;
use super::{StackContext, StackOutcome};
use crate::stack::{ObjectKey, RenderedStack};

/// Evaluates the policies, recording every finding in `outcome`. Returns the error that blocks
/// the stack when a finding denies.
pub(super) fn check(
    ctx: &StackContext<'_>,
    objects: &[Bound<'_>],
    observed: &Observed,
    outcome: &mut StackOutcome,
) -> Option<String> {
    let policies = ctx.options.policies.as_ref()?;
    // Incremental: only the objects whose desired state changed are checked.
    let subset: Option<RenderedStack> = ctx.options.incremental.then(|| RenderedStack {
        name: ctx.stack.name.clone(),
        file: ctx.stack.file.clone(),
        spec: ctx.stack.spec.clone(),
        objects: objects
            .iter()
            .zip(&observed.skipped)
            .filter(|(_, skipped)| !**skipped)
            .map(|(b, _)| b.desired.clone())
            .collect(),
        post_sync: ctx.stack.post_sync.clone(),
    });
    let stack = subset.as_ref().unwrap_or(ctx.stack);
    // The old object of an UPDATE. An object unchanged since driftless applied it was read
    // as metadata only: its old object is the desired one (what was applied).
    let desired: HashMap<&ObjectKey, &Value> = objects
        .iter()
        .map(|b| (&b.desired.key, &b.desired.object))
        .collect();
    let live: HashMap<&ObjectKey, &Value> = observed
        .observations
        .iter()
        .filter_map(|o| {
            let live = o.live.as_ref()?;
            let metadata_only = o.would_be.is_none() && observed.partial.contains(&o.key);
            Some((
                &o.key,
                if metadata_only {
                    desired.get(&o.key).copied()?
                } else {
                    live
                },
            ))
        })
        .collect();
    outcome.policy = policies.check_stack(stack, ctx.policy_index, |k| live.get(k).copied());
    for f in outcome.policy.iter().filter(|f| !f.denies()) {
        warn!(stack = %ctx.stack.name, policy = %f.policy, object = %f.object, "{f}");
    }
    let denials: Vec<String> = outcome
        .policy
        .iter()
        .filter(|f| f.denies())
        .map(|f| format!("\n  {f}"))
        .collect();
    if denials.is_empty() {
        return None;
    }
    Some(format!(
        "{} policy denials; nothing of stack {} is applied:{}",
        denials.len(),
        ctx.stack.name,
        denials.concat()
    ))
}
