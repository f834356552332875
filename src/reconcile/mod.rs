//! One reconcile: rendered stacks → bind → observe → plan → check → execute (apply, prune,
//! wait, hooks). `driftless diff`, `driftless sync` and the daemon all go through here; they
//! differ only in whether the plan is carried out. This module sequences the stages, one file
//! each (`bind`, `observe`, `check`, `execute`, `prune`); `plan` decides, `cluster` acts.

mod bind;
mod check;
mod execute;
mod leased;
mod observe;
mod options;
mod prune;

pub use leased::reconcile_leased;

pub use options::{Options, source_id};

use std::collections::{BTreeMap, BTreeSet, HashMap};

use futures::StreamExt;
use kube::Client;
use serde::Serialize;
use tracing::warn;

use crate::cluster::Error as ClusterError;
use crate::cluster::apply::Conflict;
use crate::cluster::discovery::Kinds;
use crate::cluster::health::HealthStatus;
use crate::cluster::inventory::{self, Entry, Inventory};
use crate::logging::Lap;
use crate::plan::{self, PruneSettings, StackPlan};
use crate::stack::{ObjectKey, RenderedStack};
use bind::{Bound, BoundRevision};

/// What happened to one stack.
#[derive(Debug, Clone, Serialize)]
pub struct StackOutcome {
    pub stack: String,
    pub plan: Option<StackPlan>,
    /// Fields taken over from other managers (force), per object.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub takeovers: Vec<Takeover>,
    /// Objects not healthy at the end of the wait.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub unhealthy: Vec<Unhealthy>,
    /// Set when the stack failed (the error, naming the object) or was skipped.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Whether the plan was carried out.
    pub applied: bool,
    /// Objects to be deleted and created again (an immutable field changed; opted in).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub recreate: Vec<String>,
    /// Policy findings (Deny, Warn, Audit) against this stack's objects.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub policy: Vec<crate::policy::Finding>,
    /// Post-sync hooks: run, would run (dry run), or unchanged.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub hooks: Vec<crate::sync_hooks::HookOutcome>,
    /// Set when a stack that left the revision is kept as it is, and why.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kept: Option<String>,
    /// Wall time of the stack's reconcile (observe to hooks), ms; for run records, not in the
    /// command line's JSON.
    #[serde(skip)]
    pub duration_ms: u64,
}

impl StackOutcome {
    /// An outcome of `stack` with nothing planned or done yet.
    pub fn new(stack: &str) -> StackOutcome {
        StackOutcome {
            stack: stack.to_owned(),
            plan: None,
            takeovers: Vec::new(),
            unhealthy: Vec::new(),
            error: None,
            applied: false,
            recreate: Vec::new(),
            policy: Vec::new(),
            hooks: Vec::new(),
            kept: None,
            duration_ms: 0,
        }
    }

    fn failed(stack: &str, error: String) -> StackOutcome {
        StackOutcome {
            error: Some(error),
            ..StackOutcome::new(stack)
        }
    }
}

/// A forced takeover of fields another field manager owned.
#[derive(Debug, Clone, Serialize)]
pub struct Takeover {
    pub object: String,
    pub conflicts: Vec<Conflict>,
}

/// An object that did not become healthy.
#[derive(Debug, Clone, Serialize)]
pub struct Unhealthy {
    pub object: String,
    pub status: HealthStatus,
}

/// The result of a reconcile.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub stacks: Vec<StackOutcome>,
    /// Every managed kind, resolved (for drift watches; reads as its `ApiResource`).
    #[serde(skip)]
    pub resources: Vec<crate::cluster::discovery::Resolved>,
    /// Stacks that left the revision whose Lease this process does not hold (left to their
    /// holder, or to take and remove in a later run).
    #[serde(skip)]
    pub awaiting_lease: Vec<String>,
}

impl Report {
    /// Whether any stack's plan changes anything.
    pub fn has_changes(&self) -> bool {
        self.stacks
            .iter()
            .any(|s| s.plan.as_ref().is_some_and(StackPlan::has_changes))
    }

    /// Whether any stack failed, was refused, or ended unhealthy.
    pub fn failed(&self) -> bool {
        self.stacks
            .iter()
            .any(|s| s.error.is_some() || !s.unhealthy.is_empty())
    }
}

/// Errors that stop a reconcile before it touches any stack.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Cluster(#[from] ClusterError),
    #[error("--stack {0}: no such stack in this revision")]
    UnknownStack(String),
}

/// Runs one reconcile of `stacks` (already rendered and in dependency order).
pub async fn reconcile(
    client: &Client,
    stacks: &[RenderedStack],
    options: &Options,
) -> Result<Report, Error> {
    reconcile_discovered(client, stacks, options, None).await
}

/// What a caller already read for `reconcile_discovered` (a CLI sync: while and after it took
/// its Leases).
struct Read {
    kinds: Kinds,
    listed: inventory::Listed,
}

/// `reconcile`, with the discovery and the inventories when the caller already read them.
async fn reconcile_discovered(
    client: &Client,
    stacks: &[RenderedStack],
    options: &Options,
    read: Option<Read>,
) -> Result<Report, Error> {
    for name in &options.only {
        if !stacks.iter().any(|s| &s.name == name) {
            return Err(Error::UnknownStack(name.clone()));
        }
    }
    let mut lap = Lap::start("reconcile");
    // Independent reads, together.
    let (kinds, listed) = match read {
        Some(read) => (Ok(read.kinds), Ok(read.listed)),
        None => futures::join!(
            Kinds::discover(client),
            inventory::list(client, &options.instance)
        ),
    };
    let mut kinds = kinds?;
    lap.log("discovery and the inventories");
    // Every object must be servable before anything is written: an unknown kind aborts here.
    let revision = BoundRevision::bind(&kinds, stacks)?;
    let policy_index = crate::policy::RevisionIndex::of_stacks(stacks);
    lap.log("bound the objects to their API resources");
    let listed = listed?;
    let (foreign, unreadable) = (listed.foreign, listed.unreadable);
    let inventories: BTreeMap<String, Inventory> = listed
        .own
        .into_iter()
        .map(|i| (i.stack.clone(), i))
        .collect();

    let mut outcomes: Vec<StackOutcome> = Vec::new();
    let mut failed_stacks: BTreeSet<String> = BTreeSet::new();
    let mut awaiting_lease: Vec<String> = Vec::new();
    for stack in stacks {
        if !options.only.is_empty() && !options.only.contains(&stack.name) {
            continue;
        }
        // Another process holds this stack's Lease: it is that one's to write.
        if !options.holds(&stack.name) {
            continue;
        }
        if let Some(dep) = stack
            .spec
            .depends_on
            .iter()
            .find(|d| failed_stacks.contains(*d))
        {
            failed_stacks.insert(stack.name.clone());
            outcomes.push(StackOutcome::failed(
                &stack.name,
                format!("skipped: dependency {dep} failed or is not healthy"),
            ));
            continue;
        }
        if let Some(error) = unreadable.get(&stack.name) {
            failed_stacks.insert(stack.name.clone());
            outcomes.push(StackOutcome::failed(&stack.name, error.clone()));
            continue;
        }
        if let Some(owner) = foreign.get(&stack.name) {
            failed_stacks.insert(stack.name.clone());
            outcomes.push(StackOutcome::failed(&stack.name, format!(
                    "stack {} is managed by driftless instance {owner:?}, not {:?}: rename the stack or set `instance` in the host configuration",
                    stack.name, options.instance
                )));
            continue;
        }
        let empty = Inventory::new(&stack.name, &options.instance);
        let inventory = inventories.get(&stack.name).unwrap_or(&empty);
        let ctx = StackContext {
            client,
            stack,
            inventory,
            recorded: inventory.entries.iter().collect(),
            own: revision
                .of(&stack.name)
                .iter()
                .map(|b| &b.desired.key)
                .collect(),
            revision: &revision,
            policy_index: &policy_index,
            options,
        };
        let started = std::time::Instant::now();
        let mut outcome = ctx.run(revision.of(&stack.name), &mut kinds).await;
        outcome.duration_ms = started.elapsed().as_millis() as u64;
        if outcome.error.is_some() || !outcome.unhealthy.is_empty() {
            failed_stacks.insert(stack.name.clone());
        }
        outcomes.push(outcome);
    }
    // Stacks that left the revision: removed only when this run may (see `plan::prune::removal`).
    if options.only.is_empty() {
        let in_revision = |name: &String| stacks.iter().any(|s| &s.name == name);
        let removed: Vec<&Inventory> = inventories
            .values()
            .filter(|inv| !in_revision(&inv.stack))
            .collect();
        let (removed_outcomes, unleased) =
            prune::removed_stacks(client, &kinds, &removed, &revision.desired_keys, options).await;
        outcomes.extend(removed_outcomes);
        awaiting_lease.extend(unleased);
        for (stack, error) in unreadable.iter().filter(|(s, _)| !in_revision(s)) {
            outcomes.push(StackOutcome::failed(stack, error.clone()));
        }
    }
    Ok(Report {
        stacks: outcomes,
        resources: revision.resources(),
        awaiting_lease,
    })
}

/// One stack's reconcile: what it needs to know about the run and the revision.
struct StackContext<'a> {
    client: &'a Client,
    stack: &'a RenderedStack,
    /// The stack's record as read at the start of the run (empty for a new stack).
    inventory: &'a Inventory,
    /// Its entries by key, looked up by hash: each stage asks for every desired object's entry,
    /// which the record's ordered map answers ~10× slower at thousands of objects (their keys
    /// share group, kind and namespace, compared byte by byte at every step).
    recorded: HashMap<&'a ObjectKey, &'a Entry>,
    /// The keys of the stack's objects in this revision (what it keeps; see `plan::prune`).
    own: crate::plan::prune::KeySet<'a>,
    revision: &'a BoundRevision<'a>,
    policy_index: &'a crate::policy::RevisionIndex,
    options: &'a Options,
}

impl StackContext<'_> {
    async fn run(&self, objects: &[Bound<'_>], kinds: &mut Kinds) -> StackOutcome {
        let mut outcome = StackOutcome::new(&self.stack.name);
        if let Err(e) = self.stages(objects, kinds, &mut outcome).await {
            outcome.error = Some(e.to_string());
        }
        outcome
    }

    /// Observe, plan, check, and (unless a dry-run or plan-only) execute.
    async fn stages(
        &self,
        objects: &[Bound<'_>],
        kinds: &mut Kinds,
        outcome: &mut StackOutcome,
    ) -> Result<(), ClusterError> {
        let mut lap = Lap::start(&self.stack.name);
        let observed = observe::observe(self, objects, &mut lap).await?;
        let owner = self.options.owner(&self.stack.name);
        let candidates = prune::candidates(
            self.client,
            kinds,
            self.inventory,
            &self.own,
            &self.revision.desired_keys,
        )
        .await?;
        let settings = PruneSettings {
            enabled: self.stack.spec.prune || self.options.force_prune,
            max_share: self.options.max_prune_share,
            allow_mass_prune: self.options.allow_mass_prune,
            include_namespaces_and_volumes: false,
        };
        let stack_plan = plan::plan_stack(
            owner,
            &observed.observations,
            &candidates,
            self.inventory.entries.len(),
            settings,
        );
        outcome.takeovers = observed.takeovers.clone();
        outcome.recreate = observed.recreate.clone();
        for t in &outcome.takeovers {
            for c in &t.conflicts {
                warn!(stack = %self.stack.name, object = %t.object, field = %c.field, manager = %c.manager,
                    "{} field {} owned by {}", if self.options.dry_run { "would take over" } else { "taking over" }, c.field, c.manager);
            }
        }
        let refused = stack_plan.prune_refused.clone();
        outcome.plan = Some(stack_plan.clone());
        let denied = check::check(self, objects, &observed, outcome);
        lap.log("planned and checked the policies");
        if let Some(denied) = denied {
            outcome.error = Some(denied);
            return Ok(());
        }
        if !observed.refused.is_empty() {
            outcome.error = Some(format!(
                "nothing of stack {} is applied: {}",
                self.stack.name,
                observed.refused.join("; ")
            ));
            return Ok(());
        }
        if let Some(message) = refused {
            outcome.error = Some(message);
            return Ok(());
        }
        if self.options.dry_run || self.options.plan_only.contains(&self.stack.name) {
            outcome.hooks = crate::sync_hooks::plan(&self.stack.post_sync, self.inventory);
            return Ok(());
        }
        let wait_for: Vec<&Bound<'_>> = objects
            .iter()
            .zip(&observed.skipped)
            .filter(|(_, skipped)| !**skipped)
            .map(|(b, _)| b)
            .collect();
        execute::execute(
            self,
            objects,
            &wait_for,
            kinds,
            &stack_plan,
            &observed.renewals,
            outcome,
        )
        .await
    }
}

/// Runs `futures` with at most `limit` in flight and returns their results in input order. A
/// slow one does not hold back the others (as `buffered` would: finished results queue behind it
/// and count against the limit).
async fn in_flight<F: std::future::Future>(futures: Vec<F>, limit: usize) -> Vec<F::Output> {
    let mut results: Vec<(usize, F::Output)> =
        futures::stream::iter(futures.into_iter().enumerate())
            .map(|(i, f)| async move { (i, f.await) })
            .buffer_unordered(limit)
            .collect()
            .await;
    results.sort_by_key(|(i, _)| *i);
    results.into_iter().map(|(_, r)| r).collect()
}

/// Crash-test hook: `DRIFTLESS_FAILPOINT=<name>` aborts the process at that point, the way a
/// power cut or OOM kill would, so tests can prove recovery. Unset in normal operation.
fn failpoint(name: &str) {
    if std::env::var("DRIFTLESS_FAILPOINT").is_ok_and(|v| v == name) {
        eprintln!("failpoint {name}: aborting");
        std::process::abort();
    }
}

/// Pause-test hook: `DRIFTLESS_PAUSEPOINT=<name>:<file>` stops the whole process (SIGSTOP) at
/// that point when `file` exists, once (the file is removed first), the way a paused VM or a
/// long GC would; tests prove that a writer resumed after its Lease expired writes nothing.
/// Unset in normal operation.
fn pausepoint(name: &str) {
    let Ok(setting) = std::env::var("DRIFTLESS_PAUSEPOINT") else {
        return;
    };
    if let Some((point, file)) = setting.split_once(':')
        && point == name
        && std::fs::remove_file(file).is_ok()
    {
        eprintln!("pausepoint {name}: stopping");
        // SAFETY: raise only sends a signal to this process; no memory is involved.
        unsafe {
            libc::raise(libc::SIGSTOP);
        }
    }
}
