//! One target of the daemon (see `crate::targets`): its cluster's clients, its Leases, drift
//! watches, stack backoffs and modes, and its part of a run — mode, reachability probe,
//! reconcile, status fold. Targets run side by side; one whose cluster does not answer is
//! degraded alone (a bounded probe, then the per-request timeouts) while the others go on.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use tracing::{error, info, warn};

use super::Shared;
use super::backoff::Backoffs;
use super::leases::{LeaseTask, Wanted};
use super::metrics::labels;
use super::mode::{self, LastFull, Mode};
use super::record;
use super::revision::{Desired, LastGood};
use super::status::DaemonState;
use super::trigger::{DriftWatches, Trigger};
use crate::config::HostConfig;
use crate::reconcile::Report;
use crate::stack::RenderedStack;
use crate::targets::Target;

/// How long a target's API server may take to answer the probe before a run (and the liveness
/// check of a quiet poll).
pub const LIVENESS_TIMEOUT: Duration = Duration::from_secs(5);

/// The last reconcile that succeeded for every stack of the target.
struct FullRun {
    sha: String,
    /// When the last *full* one started (incremental runs do not move it).
    at: Instant,
    policy_digest: String,
}

/// A target and what the daemon keeps for it between runs.
pub struct TargetState {
    pub target: Target,
    /// The host configuration narrowed to this target (its cluster and profile).
    pub config: HostConfig,
    /// Per stack: the revision it last applied (a `selfHeal: false` stack is applied again only
    /// when this moves).
    applied_sha: BTreeMap<String, String>,
    pub watches: DriftWatches,
    /// Its stacks' backoffs; `source_failures` counts runs its cluster did not answer.
    pub backoffs: Backoffs,
    client: Option<kube::Client>,
    watch_client: Option<kube::Client>,
    last_full: Option<FullRun>,
    /// How its last run went.
    pub mode: Mode,
    /// The Leases held on its cluster and the stacks its lease task is to hold.
    pub fence: crate::cluster::lease::Fence,
    wanted: Wanted,
    /// Stacks that left the revision, whose Lease the last run did not hold.
    awaiting_lease: Vec<String>,
    lease_task: Option<LeaseTask>,
}

/// What every target's part of one run shares.
pub struct RunInput<'a> {
    pub desired: &'a Desired,
    pub last_good: &'a LastGood,
    /// Why the newest revision is not the desired state (source, load).
    pub errors: &'a [String],
    pub trigger: Trigger,
    pub secret_hash_key: Option<crate::cluster::apply::SecretHashKey>,
    /// The id of the run (commit statuses link to it).
    pub run_id: &'a str,
}

/// A target's part of one run.
pub struct TargetRun {
    pub ok: bool,
    pub stack_runs: Vec<crate::runs::StackRun>,
}

impl TargetState {
    /// The state of `target` with its lease task started on its cluster.
    pub fn start(
        shared: &Arc<Shared>,
        config: &HostConfig,
        target: Target,
        fence: crate::cluster::lease::Fence,
        settings: crate::cluster::lease::Settings,
        started_tx: tokio::sync::watch::Sender<bool>,
    ) -> TargetState {
        let lease_task = LeaseTask::spawn(
            shared.clone(),
            target.name.clone(),
            target.cluster.clone(),
            config.instance(),
            settings,
            fence.clone(),
            started_tx,
        );
        TargetState {
            config: crate::targets::narrow(config, &target),
            target,
            applied_sha: BTreeMap::new(),
            watches: DriftWatches::default(),
            backoffs: Backoffs::default(),
            client: None,
            watch_client: None,
            last_full: None,
            mode: Mode::default(),
            fence,
            wanted: lease_task.wanted(),
            awaiting_lease: Vec::new(),
            lease_task: Some(lease_task),
        }
    }

    /// Releases its Leases (at most `timeout`) and stops its watches.
    pub async fn stop(&mut self, timeout: Duration) {
        if let Some(task) = self.lease_task.take() {
            task.stop(timeout).await;
        }
        self.watches.stop();
    }

    /// The clients for reconciles and for watches, connected once.
    async fn clients(&mut self) -> Result<(kube::Client, kube::Client), crate::cluster::Error> {
        if let (Some(c), Some(w)) = (&self.client, &self.watch_client) {
            return Ok((c.clone(), w.clone()));
        }
        let c = crate::cluster::connect(&self.target.cluster).await?;
        let w = crate::cluster::connect_for_watches(&self.target.cluster).await?;
        self.client = Some(c.clone());
        self.watch_client = Some(w.clone());
        Ok((c, w))
    }

    /// Marks the target degraded by problems outside any one stack.
    async fn degrade(&self, shared: &Shared, errors: Vec<String>) {
        for e in &errors {
            error!(target = %self.target.name, "{e}");
        }
        let mut st = shared.status.write().await;
        let t = record::target_entry(&mut st, &self.target.name);
        t.errors = errors;
        t.state = DaemonState::Degraded;
        record::overall(&mut st);
    }

    /// Its part of a run: decide the mode, probe the cluster, reconcile the stacks it takes that
    /// are not in backoff, fold the outcome into the status. Every part counts in
    /// `driftless_reconciles_total{target, outcome}`.
    pub async fn run(&mut self, shared: &Shared, input: &RunInput<'_>) -> TargetRun {
        let t0 = Instant::now();
        let run = self.run_part(shared, input).await;
        shared
            .metrics
            .target_reconcile_duration
            .get_or_create(&labels(&[("target", &self.target.name)]))
            .observe(t0.elapsed().as_secs_f64());
        shared
            .metrics
            .reconciles
            .get_or_create(&labels(&[
                ("target", &self.target.name),
                ("outcome", if run.ok { "ok" } else { "error" }),
            ]))
            .inc();
        run
    }

    async fn run_part(&mut self, shared: &Shared, input: &RunInput<'_>) -> TargetRun {
        let mut errors = input.errors.to_vec();
        let name = self.target.name.clone();
        if input.desired.is_fresh() {
            self.backoffs.retry_all_now();
        }
        {
            let mut st = shared.status.write().await;
            let t = record::target_entry(&mut st, &name);
            t.cluster = self.target.cluster_name();
            t.profile = self.target.profile.clone();
            t.last_run_at = Some(Utc::now());
        }
        let revision_sha = input.last_good.sha().map(str::to_owned);
        let policy_digest = input.last_good.policy_digest.clone();
        let last_full = self.last_full.as_ref().map(|f| LastFull {
            sha: f.sha.clone(),
            age: f.at.elapsed(),
            policy_digest: f.policy_digest.clone(),
        });
        let mut facts = mode::Facts {
            trigger: input.trigger,
            drift: self.watches.take_drift(),
            watching: self.watches.running(),
            revision_errors: !errors.is_empty(),
            stacks_failing: self.backoffs.any_failing() || self.backoffs.source_failures > 0,
            revision: revision_sha.as_deref(),
            policy_digest: &policy_digest,
            last_full: last_full.as_ref(),
            api_answers: false,
        };
        let mut probed = None;
        if facts.could_be_quiet()
            && let Some(client) = &self.client
        {
            // One cheap request (not to any managed resource) proves the API server still
            // answers: stopped watches alone would not notice a frozen server.
            let answer = answers(client).await;
            facts.api_answers = answer.is_ok();
            probed = Some(answer);
        }
        self.mode = mode::decide(&facts);
        record::target_entry(&mut *shared.status.write().await, &name).mode = self.mode;
        if self.mode == Mode::Quiet {
            let mut st = shared.status.write().await;
            record::target_entry(&mut st, &name).errors.clear();
            record::overall(&mut st);
            return TargetRun {
                ok: true,
                stack_runs: Vec::new(),
            };
        }
        let all = match input.desired.expand(&self.target.profile) {
            Ok(stacks) => stacks,
            Err(e) => {
                self.degrade(shared, vec![e.to_string()]).await;
                return failed();
            }
        };
        let stacks: Arc<Vec<RenderedStack>> = if self.target.stacks.is_some() {
            Arc::new(
                all.iter()
                    .filter(|s| self.target.takes(&s.name))
                    .cloned()
                    .collect(),
            )
        } else {
            all.clone()
        };
        let names: Vec<&str> = all.iter().map(|s| s.name.as_str()).collect();
        let warnings: Vec<String> = self
            .target
            .unmatched(&names)
            .into_iter()
            .map(|p| format!("stacks pattern {p:?} matches no stack of the revision"))
            .collect();
        {
            let mut st = shared.status.write().await;
            let t = record::target_entry(&mut st, &name);
            // Logged when they change, not at every run.
            if t.warnings != warnings {
                for w in &warnings {
                    warn!(target = %name, "{w}");
                }
                t.warnings = warnings;
            }
        }
        let mut wanted: Vec<String> = stacks.iter().map(|s| s.name.clone()).collect();
        wanted.extend(self.awaiting_lease.iter().cloned());
        self.wanted.set(wanted);
        let (client, watch_client) = match self.clients().await {
            Ok(c) => c,
            Err(e) => {
                errors.push(e.to_string());
                self.backoffs.source_failures += 1;
                self.degrade(shared, errors).await;
                return failed();
            }
        };
        // A cluster that does not answer degrades this target only, within the probe's timeout.
        let answer = match probed {
            Some(a) => a,
            None => answers(&client).await,
        };
        if let Err(e) = answer {
            errors.push(format!("cluster {}: {e}", self.target.cluster_name()));
            self.backoffs.source_failures += 1;
            self.degrade(shared, errors).await;
            return failed();
        }
        // Stacks are taken one renewal after start (daemons started together see each other).
        // After the probe: a cluster that does not answer never holds up the run this long.
        self.wanted
            .started(self.config.leases.renew_interval * 3 + crate::cluster::REQUEST_TIMEOUT)
            .await;
        let incremental = self.mode == Mode::Incremental;
        let full_at = self.last_full.take().map(|f| f.at).filter(|_| incremental);
        let in_backoff = self.backoffs.in_backoff(Instant::now());
        if let Some(sha) = input.last_good.sha() {
            let applying: Vec<String> = stacks
                .iter()
                .map(|s| s.name.clone())
                .filter(|n| !in_backoff.contains(n))
                .map(|n| crate::notify::status::stack_label(Some(&self.target.name), &n))
                .collect();
            shared.notify.run_started(input.run_id, sha, &applying);
        }
        let only: Vec<String> = if in_backoff.is_empty() {
            Vec::new()
        } else {
            stacks
                .iter()
                .map(|s| s.name.clone())
                .filter(|n| !in_backoff.contains(n))
                .collect()
        };
        if !in_backoff.is_empty() && only.is_empty() {
            let empty = Report {
                stacks: Vec::new(),
                resources: Vec::new(),
                awaiting_lease: Vec::new(),
            };
            let mut stack_runs = crate::runs::stack_runs(&empty, &[], &in_backoff);
            for r in &mut stack_runs {
                r.target = Some(name.clone());
            }
            return TargetRun {
                ok: false,
                stack_runs,
            };
        }
        let current_sha = revision_sha.clone().unwrap_or_default();
        let plan_only: Vec<String> = stacks
            .iter()
            .filter(|s| !s.spec.self_heal && self.applied_sha.get(&s.name) == Some(&current_sha))
            .map(|s| s.name.clone())
            .collect();
        let options = self.reconcile_options(
            input,
            only,
            plan_only.clone(),
            incremental,
            errors.is_empty(),
        );
        if incremental {
            info!(
                target = %name,
                trigger = %input.trigger,
                "incremental reconcile: only objects whose desired state changed"
            );
        }
        let report = match crate::reconcile::reconcile(&client, &stacks, &options).await {
            Ok(r) => r,
            Err(e) => {
                errors.push(format!("reconcile ({}): {e}", input.trigger));
                self.backoffs.source_failures = self.backoffs.source_failures.max(1);
                self.degrade(shared, errors).await;
                return failed();
            }
        };
        self.backoffs.source_failures = 0;
        self.awaiting_lease = report.awaiting_lease.clone();
        self.watches.ensure(&watch_client, shared, &report, &stacks);
        let folded = {
            let mut st = shared.status.write().await;
            let folded = record::fold(
                &mut st,
                &mut self.backoffs,
                &shared.metrics,
                record::Run::of(&name, &stacks, &report, &plan_only, errors),
                Utc::now(),
                Instant::now(),
            );
            super::leases::record_holders(&mut st, &name, &self.fence);
            folded
        };
        // The object index of the run store, kept for every stack of the revision (the other
        // targets' too).
        let all_names: Vec<String> = all.iter().map(|s| s.name.clone()).collect();
        shared
            .runs
            .record_objects(&report, &plan_only, &all_names, Utc::now());
        for stack in folded.applied {
            self.applied_sha.insert(stack, current_sha.clone());
        }
        if folded.ok
            && let Some(sha) = revision_sha
        {
            self.last_full = Some(FullRun {
                sha,
                at: full_at.unwrap_or_else(Instant::now),
                policy_digest,
            });
        }
        let mut stack_runs = crate::runs::stack_runs(&report, &plan_only, &in_backoff);
        for r in &mut stack_runs {
            r.target = Some(name.clone());
        }
        TargetRun {
            ok: folded.ok,
            stack_runs,
        }
    }

    /// The options of every daemon reconcile of this target: built here only.
    fn reconcile_options(
        &self,
        input: &RunInput<'_>,
        only: Vec<String>,
        plan_only: Vec<String>,
        incremental: bool,
        prune_removed_stacks: bool,
    ) -> crate::reconcile::Options {
        let config = &self.config;
        crate::reconcile::Options {
            dry_run: false,
            allow_mass_prune: config.prune.allow_mass_prune,
            max_prune_share: config.prune.max_share,
            only,
            instance: config.instance(),
            plan_only,
            secret_hash_key: input.secret_hash_key.clone(),
            policies: Some(Arc::clone(&input.last_good.policies)),
            health_checks: Some(Arc::clone(&input.last_good.health_checks)),
            incremental,
            // Stacks leave only with a revision fetched (and loaded) from the configured source
            // now.
            source: crate::reconcile::source_id(None, config.source.as_ref()),
            prune_removed_stacks,
            allow_recreate: config.prune.allow_recreate.clone(),
            fence: Some(self.fence.clone()),
            ..crate::reconcile::Options::default()
        }
    }
}

fn failed() -> TargetRun {
    TargetRun {
        ok: false,
        stack_runs: Vec::new(),
    }
}

/// Whether the API server answers one cheap request within `LIVENESS_TIMEOUT`.
async fn answers(client: &kube::Client) -> Result<(), String> {
    match tokio::time::timeout(LIVENESS_TIMEOUT, client.apiserver_version()).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(format!("does not answer: {e}")),
        Err(_) => Err(format!(
            "does not answer within {}s",
            LIVENESS_TIMEOUT.as_secs()
        )),
    }
}
