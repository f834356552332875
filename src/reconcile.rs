//! One reconcile: rendered stacks → observe the cluster → plan → (apply → prune → wait).
//! `driftless diff`, `driftless sync` and the daemon all go through here; they differ only in
//! whether the plan is carried out. This module sequences; `plan` decides, `cluster` acts.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use futures::StreamExt;
use kube::Client;
use serde::Serialize;
use serde_json::Value;
use tracing::{info, warn};

use crate::cluster::apply::{self, Conflict};
use crate::cluster::discovery::Kinds;
use crate::cluster::health::{self, HealthStatus, Watched};
use crate::cluster::inventory::{self, Entry, Inventory};
use crate::cluster::{self, Error as ClusterError};
use crate::logging::Lap;
use crate::plan::{self, Action, Observation, PruneCandidate, PruneSettings, StackPlan};
use crate::stack::{DesiredObject, ObjectKey, RenderedStack};

/// How a reconcile runs.
#[derive(Debug, Clone)]
pub struct Options {
    /// Plan only (`diff`, `sync --dry-run`): no write of any kind.
    pub dry_run: bool,
    /// `--prune`: prune even stacks that set `prune: false`.
    pub force_prune: bool,
    /// `--allow-mass-prune`.
    pub allow_mass_prune: bool,
    /// Share of a stack's inventory a prune may remove without `--allow-mass-prune`.
    pub max_prune_share: f64,
    /// Wait for health after applying.
    pub wait: bool,
    /// Only these stacks (empty: all). Orphaned inventories are handled only when empty.
    pub only: Vec<String>,
    /// This driftless instance's name: it owns the inventories it writes, and treats only its
    /// own inventories of stacks that left the revision as orphans.
    pub instance: String,
    /// Stacks that are planned (their drift reported) but not applied: `selfHeal: false` stacks
    /// whose revision did not change.
    pub plan_only: Vec<String>,
    /// Key for hashing Secrets into the inventory (see `SecretHashKey`).
    pub secret_hash_key: Option<apply::SecretHashKey>,
    /// The revision's policies: a Deny finding blocks its stack (nothing of it is applied).
    pub policies: Option<std::sync::Arc<crate::policy::PolicySet>>,
    /// Trust the inventory for objects whose desired state did not change since driftless
    /// applied them: no read, dry-run, policy check or health wait for those. Only for the
    /// daemon, while its drift watches run and have seen nothing since the last full reconcile
    /// and the policies are the same (see `daemon`); a full reconcile checks everything.
    pub incremental: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            dry_run: true,
            force_prune: false,
            allow_mass_prune: false,
            max_prune_share: 0.5,
            wait: true,
            only: Vec::new(),
            instance: inventory::DEFAULT_INSTANCE.to_owned(),
            plan_only: Vec::new(),
            secret_hash_key: None,
            policies: None,
            incremental: false,
        }
    }
}

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
    pub hooks: Vec<crate::hooks::HookOutcome>,
}

impl StackOutcome {
    fn new(stack: &str) -> StackOutcome {
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
    /// The API resources of every managed kind (for drift watches).
    #[serde(skip)]
    pub resources: Vec<kube::api::ApiResource>,
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

/// A desired object bound to the API resource that serves it.
struct Bound<'a> {
    desired: &'a DesiredObject,
    /// `None` while the kind awaits a CRD of this revision.
    resolved: Option<cluster::discovery::Resolved>,
    namespace: Option<String>,
}

/// Runs one reconcile of `stacks` (already rendered and in dependency order).
pub async fn reconcile(
    client: &Client,
    stacks: &[RenderedStack],
    options: &Options,
) -> Result<Report, Error> {
    for name in &options.only {
        if !stacks.iter().any(|s| &s.name == name) {
            return Err(Error::UnknownStack(name.clone()));
        }
    }
    let mut lap = Lap::start("reconcile");
    let mut kinds = Kinds::discover(client).await?;
    lap.log("discovery");
    // Kinds the revision's own CRDs will define.
    let pending_crds: BTreeSet<(String, String)> = stacks
        .iter()
        .flat_map(|s| &s.objects)
        .filter(|o| o.key.kind == "CustomResourceDefinition")
        .filter_map(|o| {
            Some((
                o.object.pointer("/spec/group")?.as_str()?.to_owned(),
                o.object.pointer("/spec/names/kind")?.as_str()?.to_owned(),
            ))
        })
        .collect();
    // Every object must be servable before anything is written: an unknown kind aborts here.
    let mut bound: BTreeMap<String, Vec<Bound<'_>>> = BTreeMap::new();
    for stack in stacks {
        let mut list = Vec::new();
        for o in &stack.objects {
            list.push(bind(&kinds, &pending_crds, o)?);
        }
        bound.insert(stack.name.clone(), list);
    }
    let desired_keys: BTreeSet<ObjectKey> = stacks
        .iter()
        .flat_map(|s| s.objects.iter().map(|o| o.key.clone()))
        .collect();
    let desired_namespaces: BTreeSet<String> = stacks
        .iter()
        .flat_map(|s| &s.objects)
        .filter(|o| o.key.kind == "Namespace" && o.key.group.is_empty())
        .map(|o| o.key.name.clone())
        .collect();
    let policy_index = crate::policy::RevisionIndex::of_stacks(stacks);
    lap.log("bound the objects to their API resources");
    let listed = inventory::list(client, &options.instance).await?;
    lap.log("read the inventories");
    let foreign = listed.foreign;
    let inventories: BTreeMap<String, Inventory> = listed
        .own
        .into_iter()
        .map(|i| (i.stack.clone(), i))
        .collect();

    let mut outcomes: Vec<StackOutcome> = Vec::new();
    let mut failed_stacks: BTreeSet<String> = BTreeSet::new();
    for stack in stacks {
        if !options.only.is_empty() && !options.only.contains(&stack.name) {
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
        if let Some(owner) = foreign.get(&stack.name) {
            failed_stacks.insert(stack.name.clone());
            outcomes.push(StackOutcome::failed(&stack.name, format!(
                    "stack {} is managed by driftless instance {owner:?}, not {:?}: rename the stack or set `instance` in the host configuration",
                    stack.name, options.instance
                )));
            continue;
        }
        let empty = Inventory {
            stack: stack.name.clone(),
            owner: options.instance.clone(),
            ..Inventory::default()
        };
        let inv = inventories.get(&stack.name).unwrap_or(&empty);
        let objects = bound
            .get(&stack.name)
            .map(Vec::as_slice)
            .unwrap_or_default();
        let ctx = StackContext {
            client,
            stack,
            inventory: inv,
            desired_keys: &desired_keys,
            desired_namespaces: &desired_namespaces,
            policy_index: &policy_index,
            options,
        };
        let outcome = ctx.run(objects, &mut kinds).await;
        if outcome.error.is_some() || !outcome.unhealthy.is_empty() {
            failed_stacks.insert(stack.name.clone());
        }
        outcomes.push(outcome);
    }
    // Stacks that left the revision: prune what no current stack claims, then drop the record.
    if options.only.is_empty() {
        for (name, inv) in &inventories {
            if stacks.iter().any(|s| &s.name == name) {
                continue;
            }
            outcomes.push(prune_orphaned(client, &kinds, inv, &desired_keys, options).await);
        }
    }
    let mut resources: Vec<kube::api::ApiResource> = Vec::new();
    for b in bound.values().flatten() {
        if let Some(r) = &b.resolved
            && !resources
                .iter()
                .any(|x| x.group == r.resource.group && x.kind == r.resource.kind)
        {
            resources.push(r.resource.clone());
        }
    }
    Ok(Report {
        stacks: outcomes,
        resources,
    })
}

fn bind<'a>(
    kinds: &Kinds,
    pending_crds: &BTreeSet<(String, String)>,
    o: &'a DesiredObject,
) -> Result<Bound<'a>, Error> {
    match kinds.resolve(&o.api_version, &o.key.kind) {
        Some(resolved) => {
            let namespace = if resolved.namespaced {
                o.key.namespace.clone()
            } else {
                None
            };
            if resolved.namespaced && namespace.is_none() {
                return Err(ClusterError::UnknownKind {
                    place: format!("{} ({})", o.key, o.place),
                    api_version: o.api_version.clone(),
                    kind: format!("{} (namespaced: give it metadata.namespace or set the stack's spec.namespace)", o.key.kind),
                }
                .into());
            }
            Ok(Bound {
                desired: o,
                resolved: Some(resolved),
                namespace,
            })
        }
        None if pending_crds.contains(&(o.key.group.clone(), o.key.kind.clone())) => Ok(Bound {
            desired: o,
            resolved: None,
            namespace: o.key.namespace.clone(),
        }),
        None => Err(ClusterError::UnknownKind {
            place: o.place.to_string(),
            api_version: o.api_version.clone(),
            kind: o.key.kind.clone(),
        }
        .into()),
    }
}

/// Dry-runs in flight at once while observing a stack.
const OBSERVE_CONCURRENCY: usize = 16;
/// Applies in flight at once within one apply-order group.
const APPLY_CONCURRENCY: usize = 16;

/// What observing one object found.
struct Observed {
    observation: Observation,
    takeover: Option<Takeover>,
    recreate: bool,
}

struct StackContext<'a> {
    client: &'a Client,
    stack: &'a RenderedStack,
    inventory: &'a Inventory,
    desired_keys: &'a BTreeSet<ObjectKey>,
    desired_namespaces: &'a BTreeSet<String>,
    policy_index: &'a crate::policy::RevisionIndex,
    options: &'a Options,
}

impl StackContext<'_> {
    async fn run(&self, objects: &[Bound<'_>], kinds: &mut Kinds) -> StackOutcome {
        let mut outcome = StackOutcome::new(&self.stack.name);
        match self.run_inner(objects, kinds, &mut outcome).await {
            Ok(()) => {}
            Err(e) => outcome.error = Some(e.to_string()),
        }
        outcome
    }

    async fn run_inner(
        &self,
        objects: &[Bound<'_>],
        kinds: &mut Kinds,
        outcome: &mut StackOutcome,
    ) -> Result<(), ClusterError> {
        let mut lap = Lap::start(&self.stack.name);
        // Observe: the live state of every desired object (few LISTs; see cluster::live), then a
        // dry-run of each object whose desired or live state moved since driftless applied it,
        // OBSERVE_CONCURRENCY at a time, in order.
        // Incremental: objects whose desired hash is the one recorded at their last apply are
        // taken as unchanged without a read (the watches would have reported a live change).
        let clean: Vec<bool> = objects
            .iter()
            .map(|b| {
                self.options.incremental
                    && self.inventory.entries.get(&b.desired.key).is_some_and(|e| {
                        e.hash.is_some()
                            && e.hash
                                == apply::desired_hash(
                                    b.desired,
                                    self.options.secret_hash_key.as_ref(),
                                )
                    })
            })
            .collect();
        let wants: Vec<cluster::live::Want<'_>> = objects
            .iter()
            .zip(&clean)
            .filter(|(_, clean)| !**clean)
            .filter_map(|(b, _)| {
                b.resolved.as_ref().map(|r| cluster::live::Want {
                    key: &b.desired.key,
                    resource: &r.resource,
                    namespace: if r.namespaced {
                        b.namespace.as_deref()
                    } else {
                        None
                    },
                    // Incremental reads of a few objects: GETs (or a LIST of their namespace),
                    // not a LIST of every object of the stack of that kind.
                    recorded: !self.options.incremental
                        && self.inventory.entries.contains_key(&b.desired.key),
                })
            })
            .collect();
        // Metadata is enough to know an object is still as driftless applied it; the whole
        // object is read (GET) only for those that need a dry-run.
        lap.log("found the objects unchanged in Git");
        let (mut live_state, partial) =
            cluster::live::fetch_with(self.client, &self.stack.name, &wants, true).await?;
        lap.log("read the live objects");
        // Namespaces this sync creates: what goes into them cannot exist yet, and a dry-run there
        // would only be refused (and cost the API server a namespace lookup).
        let new_namespaces: BTreeSet<String> = objects
            .iter()
            .filter(|b| b.desired.key.kind == "Namespace" && b.desired.key.group.is_empty())
            .filter(|b| matches!(live_state.get(&b.desired.key), Some(None)))
            .map(|b| b.desired.key.name.clone())
            .collect();
        let mut observed: Vec<Option<Result<Observed, ClusterError>>> = Vec::new();
        let mut dirty = Vec::new();
        for (b, clean) in objects.iter().zip(&clean) {
            if *clean {
                observed.push(Some(Ok(Observed {
                    observation: Observation {
                        key: b.desired.key.clone(),
                        api_version: b.desired.api_version.clone(),
                        live: None,
                        would_be: None,
                    },
                    takeover: None,
                    recreate: false,
                })));
                continue;
            }
            observed.push(None);
            let live = live_state.remove(&b.desired.key).flatten();
            let in_new_namespace = b
                .desired
                .key
                .namespace
                .as_ref()
                .is_some_and(|n| new_namespaces.contains(n));
            let partial = partial.contains(&b.desired.key);
            dirty.push(self.observe(b, live, partial, in_new_namespace));
        }
        let mut dirty = in_flight(dirty, OBSERVE_CONCURRENCY).await.into_iter();
        let observed: Vec<Result<Observed, ClusterError>> = observed
            .into_iter()
            .filter_map(|o| o.or_else(|| dirty.next()))
            .collect();
        lap.log("dry-runs");
        let mut observations = Vec::with_capacity(objects.len());
        for o in observed {
            let o = o?;
            if let Some(t) = o.takeover {
                outcome.takeovers.push(t);
            }
            if o.recreate {
                outcome.recreate.push(o.observation.key.to_string());
            }
            observations.push(o.observation);
        }
        // Prune candidates: recorded, no longer desired here, not claimed by another stack.
        let own: BTreeSet<&ObjectKey> = objects.iter().map(|b| &b.desired.key).collect();
        let mut candidates = Vec::new();
        for (key, entry) in &self.inventory.entries {
            if own.contains(key) || self.desired_keys.contains(key) {
                continue;
            }
            candidates.push(candidate(self.client, kinds, entry).await?);
        }
        let settings = PruneSettings {
            enabled: self.stack.spec.prune || self.options.force_prune,
            max_share: self.options.max_prune_share,
            allow_mass_prune: self.options.allow_mass_prune,
            include_namespaces_and_volumes: false,
        };
        let stack_plan = plan::plan_stack(
            &self.stack.name,
            &observations,
            &candidates,
            self.inventory.entries.len(),
            settings,
        );
        for t in &outcome.takeovers {
            for c in &t.conflicts {
                warn!(stack = %self.stack.name, object = %t.object, field = %c.field, manager = %c.manager,
                    "{} field {} owned by {}", if self.options.dry_run { "would take over" } else { "taking over" }, c.field, c.manager);
            }
        }
        let refused = stack_plan.prune_refused.clone();
        outcome.plan = Some(stack_plan);
        let checked: Option<RenderedStack> = self.options.incremental.then(|| RenderedStack {
            name: self.stack.name.clone(),
            file: self.stack.file.clone(),
            spec: self.stack.spec.clone(),
            objects: objects
                .iter()
                .zip(&clean)
                .filter(|(_, clean)| !**clean)
                .map(|(b, _)| b.desired.clone())
                .collect(),
            post_sync: self.stack.post_sync.clone(),
        });
        let checked = checked.as_ref().unwrap_or(self.stack);
        let denied = self.check_policies(checked, objects, &partial, &observations, outcome);
        lap.log("planned and checked the policies");
        if let Some(denied) = denied {
            outcome.error = Some(denied);
            return Ok(());
        }
        if let Some(message) = refused {
            outcome.error = Some(message);
            return Ok(());
        }
        if self.options.dry_run || self.options.plan_only.contains(&self.stack.name) {
            outcome.hooks = crate::hooks::plan(&self.stack.post_sync, self.inventory);
            return Ok(());
        }
        let Some(stack_plan) = outcome.plan.clone() else {
            return Ok(());
        };
        let wait_for: Vec<&Bound<'_>> = objects
            .iter()
            .zip(&clean)
            .filter(|(_, clean)| !**clean)
            .map(|(b, _)| b)
            .collect();
        self.execute(objects, &wait_for, kinds, &stack_plan, outcome)
            .await
    }

    /// One object's observation: unchanged since driftless applied it (no request), or its
    /// dry-run result.
    async fn observe(
        &self,
        b: &Bound<'_>,
        live: Option<Value>,
        partial: bool,
        in_new_namespace: bool,
    ) -> Result<Observed, ClusterError> {
        let key = &b.desired.key;
        let resolved = b.resolved.as_ref().filter(|_| !in_new_namespace);
        let Some(resolved) = resolved else {
            // The CRD comes with this revision, or the namespace: the server cannot dry-run it
            // yet; the change is the whole object.
            return Ok(Observed {
                observation: Observation {
                    key: key.clone(),
                    api_version: b.desired.api_version.clone(),
                    live: None,
                    would_be: Some(b.desired.object.clone()),
                },
                takeover: None,
                recreate: false,
            });
        };
        let api = apply::api_for(self.client, &resolved.resource, b.namespace.as_deref());
        let unchanged = self.inventory.entries.get(key).is_some_and(|e| {
            e.hash.is_some()
                && e.hash == apply::desired_hash(b.desired, self.options.secret_hash_key.as_ref())
                && live
                    .as_ref()
                    .is_some_and(|l| unchanged_since_apply(e, l, &b.desired.object))
        });
        if unchanged {
            return Ok(Observed {
                observation: Observation {
                    key: key.clone(),
                    api_version: b.desired.api_version.clone(),
                    live,
                    would_be: None,
                },
                takeover: None,
                recreate: false,
            });
        }
        // Read as metadata only: the whole object is needed for the diff. The read and the
        // dry-run are independent, so they go out together.
        let read = async {
            if partial {
                apply::get(&api, &key.name, &key.to_string()).await
            } else {
                Ok(live)
            }
        };
        let (live, dry_run) = futures::join!(
            read,
            apply::apply(&api, b.desired, self.stack.spec.force, true)
        );
        let live = live?;
        let mut takeover = None;
        let mut recreate = false;
        let would_be = match dry_run {
            Ok((v, conflicts)) => {
                if !conflicts.is_empty() {
                    takeover = Some(Takeover {
                        object: key.to_string(),
                        conflicts,
                    });
                }
                Some(v)
            }
            // Its namespace is created by this sync: the server cannot dry-run it yet.
            Err(ClusterError::Request {
                source: kube::Error::Api(s),
                ..
            }) if s.code == 404
                && live.is_none()
                && key
                    .namespace
                    .as_ref()
                    .is_some_and(|n| self.desired_namespaces.contains(n)) =>
            {
                Some(b.desired.object.clone())
            }
            // An immutable field changed and the object opts in to being recreated.
            Err(ClusterError::Request {
                source: kube::Error::Api(s),
                ..
            }) if is_immutable_error(&s) && wants_recreate(b.desired) => {
                warn!(stack = %self.stack.name, object = %key, "immutable field changed: will delete and recreate ({RECREATE_ANNOTATION})");
                recreate = true;
                Some(b.desired.object.clone())
            }
            Err(e) => return Err(e),
        };
        Ok(Observed {
            observation: Observation {
                key: key.clone(),
                api_version: b.desired.api_version.clone(),
                live,
                would_be,
            },
            takeover,
            recreate,
        })
    }

    /// Logs one applied object and records its hash, resourceVersion and generation.
    fn applied(
        &self,
        record: &mut Inventory,
        change: &plan::PlannedChange,
        b: &Bound<'_>,
        (applied, conflicts): (Value, Vec<Conflict>),
        done: usize,
        total: usize,
    ) {
        let name = &self.stack.name;
        for c in &conflicts {
            warn!(stack = %name, object = %change.key, field = %c.field, manager = %c.manager, "took over field {} from {}", c.field, c.manager);
        }
        info!(stack = %name, object = %change.key, action = ?change.action, "applied {done}/{total}: {} ({:?})", change.key, change.action);
        if let Some(entry) = record.entries.get_mut(&change.key) {
            entry.api_version = b.desired.api_version.clone();
            entry.hash = apply::desired_hash(b.desired, self.options.secret_hash_key.as_ref());
            entry.resource_version = applied
                .pointer("/metadata/resourceVersion")
                .and_then(Value::as_str)
                .map(str::to_owned);
            entry.generation = applied
                .pointer("/metadata/generation")
                .and_then(Value::as_i64);
        }
    }

    /// Evaluates the revision's policies against this stack (an object that is live is an
    /// UPDATE of it). Returns the error that blocks the stack when a finding denies.
    fn check_policies(
        &self,
        stack: &RenderedStack,
        objects: &[Bound<'_>],
        partial: &std::collections::HashSet<ObjectKey>,
        observations: &[Observation],
        outcome: &mut StackOutcome,
    ) -> Option<String> {
        let policies = self.options.policies.as_ref()?;
        // The old object of an UPDATE. An object unchanged since driftless applied it was read
        // as metadata only: its old object is the desired one (what was applied).
        let desired: BTreeMap<&ObjectKey, &Value> = objects
            .iter()
            .map(|b| (&b.desired.key, &b.desired.object))
            .collect();
        let live: BTreeMap<&ObjectKey, &Value> = observations
            .iter()
            .filter_map(|o| {
                let live = o.live.as_ref()?;
                let metadata_only = o.would_be.is_none() && partial.contains(&o.key);
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
        outcome.policy = policies.check_stack(stack, self.policy_index, |k| live.get(k).copied());
        let denials: Vec<String> = outcome
            .policy
            .iter()
            .filter(|f| f.denies())
            .map(|f| format!("\n  {f}"))
            .collect();
        for f in outcome.policy.iter().filter(|f| !f.denies()) {
            warn!(stack = %self.stack.name, policy = %f.policy, object = %f.object, "{f}");
        }
        if denials.is_empty() {
            return None;
        }
        Some(format!(
            "{} policy denials; nothing of stack {} is applied:{}",
            denials.len(),
            self.stack.name,
            denials.concat()
        ))
    }

    async fn execute(
        &self,
        objects: &[Bound<'_>],
        wait_for: &[&Bound<'_>],
        kinds: &mut Kinds,
        stack_plan: &StackPlan,
        outcome: &mut StackOutcome,
    ) -> Result<(), ClusterError> {
        let name = &self.stack.name;
        let mut lap = Lap::start(name);
        let by_key: BTreeMap<&ObjectKey, &Bound<'_>> =
            objects.iter().map(|b| (&b.desired.key, b)).collect();
        // Inventory first: a crash after this write and before the apply orphans nothing.
        let mut record = self.inventory.clone();
        record.stack = name.clone();
        record.owner = self.options.instance.clone();
        let mut grew = false;
        for b in objects {
            if !record.entries.contains_key(&b.desired.key) {
                record.entries.insert(
                    b.desired.key.clone(),
                    Entry::new(&b.desired.key, &b.desired.api_version),
                );
                grew = true;
            }
        }
        if grew {
            inventory::write(self.client, &record).await?;
            failpoint("after-inventory-write");
        }
        let total = stack_plan
            .changes
            .iter()
            .filter(|c| c.action != Action::Unchanged)
            .count();
        let mut done = 0;
        let pending: Vec<&plan::PlannedChange> = stack_plan
            .changes
            .iter()
            .filter(|c| c.action != Action::Unchanged && by_key.contains_key(&c.key))
            .collect();
        // Objects that need their own step: a CRD (wait for Established), a custom resource of a
        // CRD from this sync (discovery first), a recreate (delete first).
        let solo = |c: &plan::PlannedChange| {
            by_key.get(&c.key).is_none_or(|b| b.resolved.is_none())
                || c.key.kind == "CustomResourceDefinition"
                || outcome.recreate.contains(&c.key.to_string())
        };
        let mut i = 0;
        while i < pending.len() {
            let change = pending[i];
            let Some(b) = by_key.get(&change.key) else {
                i += 1;
                continue;
            };
            if solo(change) {
                let resolved = match &b.resolved {
                    Some(r) => r.clone(),
                    None => {
                        // A custom resource of a CRD applied earlier in this sync.
                        *kinds = Kinds::discover(self.client).await?;
                        kinds
                            .resolve(&b.desired.api_version, &b.desired.key.kind)
                            .ok_or_else(|| ClusterError::UnknownKind {
                                place: b.desired.place.to_string(),
                                api_version: b.desired.api_version.clone(),
                                kind: b.desired.key.kind.clone(),
                            })?
                    }
                };
                let ns = if resolved.namespaced {
                    b.namespace.as_deref()
                } else {
                    None
                };
                let api = apply::api_for(self.client, &resolved.resource, ns);
                if outcome.recreate.contains(&change.key.to_string()) {
                    apply::delete(&api, &change.key.name, &change.key.to_string()).await?;
                    wait_gone(&api, &change.key).await?;
                    info!(stack = %name, object = %change.key, "deleted {} to recreate it", change.key);
                }
                let applied = apply::apply(&api, b.desired, self.stack.spec.force, false).await?;
                done += 1;
                self.applied(&mut record, change, b, applied, done, total);
                if change.key.kind == "CustomResourceDefinition" {
                    wait_established(self.client, &change.key.name).await?;
                    *kinds = Kinds::discover(self.client).await?;
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
            let applies: Vec<_> = batch
                .iter()
                .filter_map(|c| by_key.get(&c.key).map(|b| (c, b)))
                .map(|(c, b)| async move {
                    let resolved =
                        b.resolved
                            .as_ref()
                            .ok_or_else(|| ClusterError::UnknownKind {
                                place: b.desired.place.to_string(),
                                api_version: b.desired.api_version.clone(),
                                kind: c.key.kind.clone(),
                            })?;
                    let ns = if resolved.namespaced {
                        b.namespace.as_deref()
                    } else {
                        None
                    };
                    let api = apply::api_for(self.client, &resolved.resource, ns);
                    apply::apply(&api, b.desired, self.stack.spec.force, false).await
                })
                .collect();
            let results = in_flight(applies, APPLY_CONCURRENCY).await;
            let mut first_error = None;
            for (change, result) in batch.iter().zip(results) {
                match (result, by_key.get(&change.key)) {
                    (Ok(applied), Some(b)) => {
                        done += 1;
                        self.applied(&mut record, change, b, applied, done, total);
                    }
                    (Err(e), _) => {
                        first_error.get_or_insert(e);
                    }
                    (Ok(_), None) => {}
                }
            }
            if let Some(e) = first_error {
                // What was applied is recorded, so the next run does not dry-run it again.
                inventory::write(self.client, &record).await?;
                return Err(e);
            }
            i = j;
        }
        lap.log("applied");
        // Unchanged objects keep their records. A reconcile that changed nothing writes nothing.
        if record.entries != self.inventory.entries || record.owner != self.inventory.owner {
            inventory::write(self.client, &record).await?;
            lap.log("wrote the inventory");
        }
        outcome.applied = true;

        for change in stack_plan
            .changes
            .iter()
            .filter(|c| c.action == Action::Prune)
        {
            let Some(entry) = record.entries.get(&change.key).cloned() else {
                continue;
            };
            if let Some(resolved) = kinds.resolve(&entry.api_version, &entry.kind) {
                let ns = if resolved.namespaced {
                    entry.namespace.as_deref()
                } else {
                    None
                };
                let api = apply::api_for(self.client, &resolved.resource, ns);
                apply::delete(&api, &entry.name, &change.key.to_string()).await?;
                info!(stack = %name, object = %change.key, "pruned {}", change.key);
            }
            record.entries.remove(&change.key);
            inventory::write(self.client, &record).await?;
        }
        // Objects another stack now declares leave this inventory without being deleted.
        let before = record.entries.len();
        let own: BTreeSet<&ObjectKey> = objects.iter().map(|b| &b.desired.key).collect();
        record
            .entries
            .retain(|k, _| own.contains(k) || !self.desired_keys.contains(k));
        if record.entries.len() != before {
            inventory::write(self.client, &record).await?;
        }

        if self.options.wait {
            let watched: Vec<Watched> = wait_for
                .iter()
                .map(|b| Watched {
                    key: b.desired.key.clone(),
                    api_version: b.desired.api_version.clone(),
                })
                .collect();
            let timeout = self.stack.spec.wait.timeout;
            let mut last = 0;
            let pending =
                health::wait_healthy(self.client, kinds, name, &watched, timeout, |ok, all| {
                    if ok != last {
                        info!(stack = %name, "healthy {ok}/{all}");
                        last = ok;
                    }
                })
                .await?;
            lap.log("waited for health");
            outcome.unhealthy = pending
                .into_iter()
                .map(|(k, status)| Unhealthy {
                    object: k.to_string(),
                    status,
                })
                .collect();
            if !outcome.unhealthy.is_empty() {
                outcome.error = Some(format!(
                    "stack {name}: {} object(s) not healthy after {}s",
                    outcome.unhealthy.len(),
                    timeout.as_secs()
                ));
                return Ok(());
            }
        }
        // Post-sync hooks: after the stack is healthy (or applied, with --no-wait), before its
        // dependents, which a failed hook holds back like an unhealthy stack.
        if !self.stack.post_sync.is_empty() || !record.hooks.is_empty() {
            let (hooks, failure) = crate::hooks::run_post_sync(
                self.client,
                kinds,
                name,
                &self.stack.post_sync,
                &mut record,
            )
            .await?;
            outcome.hooks = hooks;
            outcome.error = failure;
        }
        Ok(())
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

/// Whether a live object is still as driftless left it, judged without a dry-run: for kinds with
/// a `generation` (bumped by spec changes, not by status writes), the generation recorded after
/// the apply plus our labels and annotations; otherwise the exact resourceVersion.
fn unchanged_since_apply(entry: &Entry, live: &Value, desired: &Value) -> bool {
    let live_generation = live.pointer("/metadata/generation").and_then(Value::as_i64);
    match (live_generation, entry.generation) {
        (Some(now), Some(then)) => {
            now == then
                && ["labels", "annotations"].iter().all(|field| {
                    let want = desired
                        .pointer(&format!("/metadata/{field}"))
                        .and_then(Value::as_object);
                    let have = live
                        .pointer(&format!("/metadata/{field}"))
                        .and_then(Value::as_object);
                    want.is_none_or(|want| {
                        want.iter()
                            .all(|(k, v)| have.and_then(|h| h.get(k)) == Some(v))
                    })
                })
        }
        _ => {
            entry.resource_version.is_some()
                && live
                    .pointer("/metadata/resourceVersion")
                    .and_then(Value::as_str)
                    == entry.resource_version.as_deref()
        }
    }
}

/// Annotation by which an object allows driftless to delete and recreate it when an immutable
/// field changes.
pub const RECREATE_ANNOTATION: &str = "driftless.dev/recreate";

fn wants_recreate(desired: &DesiredObject) -> bool {
    desired
        .object
        .pointer("/metadata/annotations")
        .and_then(|a| a.get(RECREATE_ANNOTATION))
        .and_then(Value::as_str)
        == Some("true")
}

fn is_immutable_error(status: &kube::core::Status) -> bool {
    status.code == 422
        && (status.message.contains("immutable") || status.message.contains("may not change"))
}

async fn wait_gone(
    api: &kube::Api<kube::api::DynamicObject>,
    key: &ObjectKey,
) -> Result<(), ClusterError> {
    let start = std::time::Instant::now();
    while apply::get(api, &key.name, &key.to_string())
        .await?
        .is_some()
    {
        if start.elapsed() > Duration::from_secs(120) {
            return Err(ClusterError::Inventory {
                name: key.to_string(),
                message: "still exists 120s after its deletion for recreation (a finalizer?)"
                    .to_owned(),
            });
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Ok(())
}

/// Crash-test hook: `DRIFTLESS_FAILPOINT=<name>` aborts the process at that point, the way a
/// power cut or OOM kill would, so tests can prove recovery. Unset in normal operation.
fn failpoint(name: &str) {
    if std::env::var("DRIFTLESS_FAILPOINT").is_ok_and(|v| v == name) {
        eprintln!("failpoint {name}: aborting");
        std::process::abort();
    }
}

async fn candidate(
    client: &Client,
    kinds: &Kinds,
    entry: &Entry,
) -> Result<PruneCandidate, ClusterError> {
    let key = entry.key();
    let live = match kinds.resolve(&entry.api_version, &entry.kind) {
        Some(resolved) => {
            let ns = if resolved.namespaced {
                entry.namespace.as_deref()
            } else {
                None
            };
            let api = apply::api_for(client, &resolved.resource, ns);
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

async fn prune_orphaned(
    client: &Client,
    kinds: &Kinds,
    inv: &Inventory,
    desired_keys: &BTreeSet<ObjectKey>,
    options: &Options,
) -> StackOutcome {
    let mut outcome = StackOutcome::new(&inv.stack);
    let result: Result<(), ClusterError> = async {
        let mut candidates = Vec::new();
        for (key, entry) in &inv.entries {
            if !desired_keys.contains(key) {
                candidates.push(candidate(client, kinds, entry).await?);
            }
        }
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
        let prunes: Vec<ObjectKey> = stack_plan
            .changes
            .iter()
            .filter(|c| c.action == Action::Prune)
            .map(|c| c.key.clone())
            .collect();
        outcome.plan = Some(stack_plan);
        if options.dry_run || refused {
            return Ok(());
        }
        let mut record = inv.clone();
        for key in prunes {
            if let Some(entry) = record.entries.get(&key).cloned() {
                if let Some(resolved) = kinds.resolve(&entry.api_version, &entry.kind) {
                    let ns = if resolved.namespaced {
                        entry.namespace.as_deref()
                    } else {
                        None
                    };
                    let api = apply::api_for(client, &resolved.resource, ns);
                    apply::delete(&api, &entry.name, &key.to_string()).await?;
                    info!(stack = %inv.stack, object = %key, "pruned {key} (stack removed)");
                }
                record.entries.remove(&key);
                inventory::write(client, &record).await?;
            }
        }
        // What remains is kept on purpose (annotation, Namespace/PVC) or claimed by other stacks.
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

async fn wait_established(client: &Client, name: &str) -> Result<(), ClusterError> {
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
    let api: kube::Api<CustomResourceDefinition> = kube::Api::all(client.clone());
    let timeout = Duration::from_secs(60);
    let start = std::time::Instant::now();
    loop {
        if let Ok(crd) = api.get(name).await {
            let established = crd
                .status
                .and_then(|s| s.conditions)
                .unwrap_or_default()
                .iter()
                .any(|c| c.type_ == "Established" && c.status == "True");
            if established {
                return Ok(());
            }
        }
        if start.elapsed() > timeout {
            return Err(ClusterError::CrdNotEstablished {
                name: name.to_owned(),
                seconds: timeout.as_secs(),
            });
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
