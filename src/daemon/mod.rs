//! `driftless run`: the long-running agent. It sequences the stages (source → stack → reconcile)
//! on triggers (poll, webhook, file change, SIGHUP, drift, retry), keeps the last good revision
//! when a new one is broken, backs off failing stacks one by one, reports status and metrics, and
//! talks the systemd notify protocol. It sequences; it does not decide.
//!
//! This file is the loop and one run; around it: `trigger` (what wakes the loop), `revision`
//! (the newest and the last good revision), `mode` (quiet, incremental or full: a pure
//! decision), `backoff`, `record` (the status fold), `run_record` (each run into the run store),
//! `endpoint` (binding and reloading the HTTP endpoint), `jobs` (the scheduler task), `status`,
//! `metrics` and `sd_notify`.

pub mod backoff;
pub mod endpoint;
pub mod jobs;
pub mod leases;
pub mod metrics;
pub mod mode;
pub mod record;
pub mod revision;
pub mod run_record;
pub mod sd_notify;
pub mod status;
pub mod trigger;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use tokio::sync::{Notify, RwLock};
use tracing::{error, info, warn};

use crate::config::HostConfig;
use crate::reconcile::Report;
use backoff::Backoffs;
use metrics::{Metrics, labels};
use mode::{LastFull, Mode};
use status::{DaemonState, ReconcileSummary, Status};
use trigger::{DriftWatches, Trigger, Triggers};

pub use endpoint::LISTEN_FILE;

/// Errors that stop the daemon from starting.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Config(#[from] crate::config::Error),
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Server(#[from] crate::server::Error),
    #[error(transparent)]
    Cluster(#[from] crate::cluster::Error),
}

/// What the loop shares with its tasks (scheduler, watches, signal handlers, the endpoint's
/// wake handle).
pub struct Shared {
    /// A weak handle on itself, for callbacks (drift watches) that must not keep it alive.
    pub self_ref: std::sync::Weak<Shared>,
    pub status: Arc<RwLock<Status>>,
    pub metrics: Arc<Metrics>,
    /// Every run: queued, running and the persisted history.
    pub runs: Arc<crate::runs::store::Store>,
    pub triggers: Triggers,
    /// The jobs of the last good revision, for the scheduler task.
    pub jobs: RwLock<Option<jobs::JobsState>>,
    /// Wakes the scheduler when `jobs` changed.
    pub jobs_changed: Notify,
    /// A drift watch saw a managed object change since the last full reconcile.
    pub drift_pending: std::sync::atomic::AtomicBool,
    /// The stacks whose Leases this daemon holds (jobs run only for those).
    pub fence: crate::cluster::lease::Fence,
    /// True once the lease task's first round of takes is done.
    pub leases_started: tokio::sync::watch::Receiver<bool>,
    /// Commit statuses and notification webhooks (`notify:`); queues, never waits.
    pub notify: crate::notify::Notifier,
}

/// The cluster the host configuration names.
fn target(config: &HostConfig) -> crate::cluster::Target {
    crate::cluster::Target {
        kubeconfig: config.cluster.kubeconfig.clone(),
        context: config.cluster.context.clone(),
    }
}

/// Runs the daemon until SIGTERM/SIGINT.
pub async fn run(config_path: PathBuf) -> Result<(), Error> {
    let mut config = HostConfig::load(&config_path, true)?;
    if config.source.is_none() {
        return Err(Error::Invalid(format!(
            "{}: `source` is required for `driftless run`",
            config_path.display()
        )));
    }
    let settings = crate::server::EndpointConfig::from_config(&config)?;
    let (runs, warning) =
        crate::runs::store::Store::open(&config.state_dir(), crate::runs::store::Limits::default());
    if let Some(w) = warning {
        warn!("{w}");
    }
    let runs = Arc::new(runs);
    let metrics = Arc::new(Metrics::default());
    let notify = crate::notify::Notifier::start(&config, metrics.clone(), &runs.list(50))
        .map_err(|e| Error::Invalid(e.to_string()))?;
    let lease_settings = config.leases.settings();
    let fence = crate::cluster::lease::Fence::new(&lease_settings);
    let (leases_started_tx, leases_started) = tokio::sync::watch::channel(false);
    let shared = Arc::new_cyclic(|self_ref| Shared {
        self_ref: self_ref.clone(),
        status: Arc::new(RwLock::new(Status {
            instance: config.instance(),
            started_at: Some(Utc::now()),
            source: describe_source(&config),
            ..Status::default()
        })),
        metrics,
        triggers: Triggers::new(Arc::clone(&runs)),
        runs,
        jobs: RwLock::new(None),
        jobs_changed: Notify::new(),
        drift_pending: std::sync::atomic::AtomicBool::new(false),
        fence: fence.clone(),
        leases_started,
        notify,
    });
    let max_connections = settings.max_connections;
    if let Some(files) = endpoint::raise_open_files_limit()
        && files < max_connections as u64 + OTHER_FILES
    {
        warn!(
            "daemon.maxConnections is {max_connections} and the open-files limit {files}: raise LimitNOFILE= (or ulimit -n) to at least {}",
            max_connections as u64 + OTHER_FILES
        );
    }
    let mut server =
        endpoint::Endpoint::start(&config, Arc::new(endpoint::server_state(&shared, settings)))
            .await?;

    let reload = Arc::new(Notify::new());
    trigger::spawn_signal_handlers(shared.clone(), reload.clone());
    let _watcher = trigger::watch_files(&config, &config_path, shared.clone(), reload.clone());
    trigger::spawn_watchdog();
    let poll = trigger::spawn_poller(shared.clone(), config.daemon.poll_interval);
    let scheduler = tokio::spawn(jobs::scheduler(shared.clone()));
    let lease_task = leases::LeaseTask::spawn(
        shared.clone(),
        target(&config),
        config.instance(),
        lease_settings,
        fence.clone(),
        leases_started_tx,
    );

    let mut state = LoopState {
        fence: Some(fence),
        wanted: lease_task.wanted(),
        secret_hash_key: crate::cluster::apply::SecretHashKey::load_or_create(&config.state_dir()),
        ..LoopState::default()
    };
    shared.triggers.request(Trigger::Start);
    let mut ready_sent = false;
    let mut last_run_end: Option<Instant> = None;
    let shutdown = trigger::shutdown_signal();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            _ = reload.notified() => {
                match reload_config(&config_path, &mut server).await {
                    Ok(new) => {
                        info!("configuration reloaded");
                        // Host commands and job settings apply to the next job run, revision
                        // changed or not.
                        if let Some(jobs) = shared.jobs.write().await.as_mut() {
                            jobs.commands = new.jobs.commands.clone();
                            jobs.host = crate::jobs::host::HostSettings::from_config(&new);
                        }
                        config = new;
                        shared.triggers.request(Trigger::ConfigReload);
                    }
                    Err(e) => error!("configuration reload refused, keeping the previous one: {e}"),
                }
                continue;
            }
            _ = shared.triggers.requested() => {}
        }
        let trigger = tokio::select! {
            _ = &mut shutdown => break,
            t = shared.triggers.coalesce(last_run_end) => t,
        };
        let started = Utc::now();
        let t0 = Instant::now();
        let run_id = shared.runs.start(&trigger.to_string(), started);
        state.run_id.clone_from(&run_id);
        // A stop request ends the reconcile at its next await: inventory-first writes make that
        // safe, and the rest of the plan runs again next start.
        let outcome = tokio::select! {
            _ = &mut shutdown => {
                run_record::interrupted(&shared);
                break;
            }
            o = reconcile_once(&config, &shared, &mut state, trigger) => o,
        };
        let elapsed = t0.elapsed();
        last_run_end = Some(Instant::now());
        if state.mode != Mode::Quiet {
            release_free_memory();
        }
        shared
            .metrics
            .reconcile_duration
            .observe(elapsed.as_secs_f64());
        shared
            .metrics
            .reconciles
            .get_or_create(&labels(&[(
                "outcome",
                if outcome { "ok" } else { "error" },
            )]))
            .inc();
        {
            let mut st = shared.status.write().await;
            st.last_reconcile = Some(ReconcileSummary {
                trigger,
                started_at: started,
                duration_ms: elapsed.as_millis() as u64,
                ok: outcome,
                mode: state.mode,
                phases_ms: state.phases.done.clone(),
            });
            if st.applied_revision.is_some() {
                st.state = if outcome {
                    DaemonState::Ready
                } else {
                    DaemonState::Degraded
                };
            }
            sd_notify::send(&format!(
                "STATUS={:?}: revision {}, {} stacks",
                st.state,
                st.applied_revision
                    .as_ref()
                    .map(|r| &r.sha[..12.min(r.sha.len())])
                    .unwrap_or("none"),
                st.stacks.len()
            ));
            leases::record_holders(&mut st, &shared.fence);
            persist(&config.state_dir(), &st);
        }
        run_record::finish(
            &config,
            &shared,
            run_record::Ended {
                id: run_id,
                ok: outcome,
                elapsed,
                mode: state.mode,
                phases: std::mem::take(&mut state.phases.done),
                stacks: std::mem::take(&mut state.stack_runs),
            },
        )
        .await;
        if !ready_sent && state.revisions.last_good.is_some() {
            sd_notify::send("READY=1");
            ready_sent = true;
        }
        // Retry the earliest backed-off stack, or the source, without waiting for the poll.
        if let Some(delay) = state.backoffs.next_retry(Instant::now()) {
            trigger::spawn_retry(shared.clone(), delay);
        }
    }
    info!("stopping");
    sd_notify::send("STOPPING=1");
    poll.abort();
    // A job run in progress is cut short at its next await; its record says `interrupted`.
    scheduler.abort();
    // Released Leases let the other daemons take the stacks at once.
    lease_task.stop(Duration::from_secs(5)).await;
    server.stop(&config.state_dir());
    state.watches.stop();
    let st = shared.status.read().await;
    persist(&config.state_dir(), &st);
    Ok(())
}

/// Descriptors besides the endpoint's connections: cluster and Git clients, watches, files,
/// renderer pipes.
const OTHER_FILES: u64 = 256;

/// Reads the host configuration again and applies it to the endpoint; nothing changes when
/// the file, a secret or the new address is refused.
async fn reload_config(
    config_path: &Path,
    server: &mut endpoint::Endpoint,
) -> Result<HostConfig, Error> {
    let new = HostConfig::load(config_path, true)?;
    let settings = crate::server::EndpointConfig::from_config(&new)?;
    server.reload(&new, settings).await?;
    Ok(new)
}

fn describe_source(config: &HostConfig) -> String {
    match config.source.as_ref() {
        Some(s) => match (&s.path, &s.git) {
            (Some(p), _) => p.display().to_string(),
            (None, Some(g)) => format!("{} ({})", g.url, crate::source::GitRef::of(g)),
            _ => String::new(),
        },
        None => String::new(),
    }
}

fn persist(state_dir: &Path, status: &Status) {
    if let Err(e) = crate::state::write_json(&state_dir.join("status.json"), status) {
        warn!("{e}");
    }
}

/// The phases of the current run and their wall time (ms).
#[derive(Default)]
struct Phases {
    done: Vec<(String, u64)>,
    since: Option<Instant>,
}

impl Phases {
    fn start(&mut self) {
        self.done.clear();
        self.since = Some(Instant::now());
    }

    /// Records the phase that ends now and starts the next.
    fn mark(&mut self, name: &str) {
        let now = Instant::now();
        let ms = self
            .since
            .map_or(0, |t| now.duration_since(t).as_millis() as u64);
        self.done.push((name.to_owned(), ms));
        self.since = Some(now);
    }
}

/// The last reconcile that succeeded for every stack.
struct FullRun {
    sha: String,
    /// When the last *full* one started (incremental runs do not move it).
    at: Instant,
    policy_digest: String,
}

#[derive(Default)]
struct LoopState {
    /// Per stack: the revision it last applied (a `selfHeal: false` stack is applied again only
    /// when this moves).
    applied_sha: BTreeMap<String, String>,
    watches: DriftWatches,
    secret_hash_key: Option<crate::cluster::apply::SecretHashKey>,
    revisions: revision::Revisions,
    backoffs: Backoffs,
    client: Option<kube::Client>,
    watch_client: Option<kube::Client>,
    last_full: Option<FullRun>,
    /// How the last reconcile ran.
    mode: Mode,
    /// The Leases held (see `leases`) and the stacks the lease task is to hold.
    fence: Option<crate::cluster::lease::Fence>,
    wanted: leases::Wanted,
    /// Stacks that left the revision, whose Lease the last run did not hold.
    awaiting_lease: Vec<String>,
    phases: Phases,
    /// The stacks of the current run, for its record.
    stack_runs: Vec<crate::runs::StackRun>,
    /// The id of the current run (commit statuses link to it).
    run_id: String,
}

impl LoopState {
    /// The clients for reconciles and for watches, connected once.
    async fn clients(
        &mut self,
        config: &HostConfig,
    ) -> Result<(kube::Client, kube::Client), crate::cluster::Error> {
        if let (Some(c), Some(w)) = (&self.client, &self.watch_client) {
            return Ok((c.clone(), w.clone()));
        }
        let target = target(config);
        let c = crate::cluster::connect(&target).await?;
        let w = crate::cluster::connect_for_watches(&target).await?;
        self.client = Some(c.clone());
        self.watch_client = Some(w.clone());
        Ok((c, w))
    }
}

/// The options of every daemon reconcile: built here only.
fn reconcile_options(
    config: &HostConfig,
    state: &LoopState,
    only: Vec<String>,
    plan_only: Vec<String>,
    incremental: bool,
    prune_removed_stacks: bool,
) -> crate::reconcile::Options {
    let last_good = state.revisions.last_good.as_ref();
    crate::reconcile::Options {
        dry_run: false,
        allow_mass_prune: config.prune.allow_mass_prune,
        max_prune_share: config.prune.max_share,
        only,
        instance: config.instance(),
        plan_only,
        secret_hash_key: state.secret_hash_key.clone(),
        policies: last_good.map(|g| Arc::clone(&g.policies)),
        health_checks: last_good.map(|g| Arc::clone(&g.health_checks)),
        incremental,
        // Stacks leave only with a revision fetched (and loaded) from the configured source now.
        source: crate::reconcile::source_id(None, config.source.as_ref()),
        prune_removed_stacks,
        allow_recreate: config.prune.allow_recreate.clone(),
        fence: state.fence.clone(),
        ..crate::reconcile::Options::default()
    }
}

/// Marks the daemon degraded by problems outside any one stack.
async fn degrade(shared: &Shared, errors: Vec<String>) {
    let mut st = shared.status.write().await;
    st.errors = errors;
    st.state = DaemonState::Degraded;
}

/// One run: fetch, render (keeping the last good revision on failure), decide the mode,
/// reconcile the stacks not in backoff, record. Returns whether everything succeeded.
async fn reconcile_once(
    config: &HostConfig,
    shared: &Shared,
    state: &mut LoopState,
    trigger: Trigger,
) -> bool {
    let credentials = crate::credentials::Credentials::from_config(config);
    state.phases.start();
    state.stack_runs.clear();
    let next = {
        let LoopState {
            revisions,
            backoffs,
            phases,
            ..
        } = state;
        revisions
            .next(config, shared, backoffs, &credentials, || {
                phases.mark("fetch")
            })
            .await
    };
    state.phases.mark("render");
    let mut errors = next.errors;
    for e in &errors {
        error!("{e}");
    }
    let (Some(desired), Some(last_good)) = (next.desired, state.revisions.last_good.as_ref())
    else {
        degrade(shared, errors).await;
        return false;
    };
    let revision_sha = last_good.sha().map(str::to_owned);
    let policy_digest = last_good.policy_digest.clone();

    let drift = shared
        .drift_pending
        .swap(false, std::sync::atomic::Ordering::SeqCst);
    let last_full = state.last_full.as_ref().map(|f| LastFull {
        sha: f.sha.clone(),
        age: f.at.elapsed(),
        policy_digest: f.policy_digest.clone(),
    });
    let mut facts = mode::Facts {
        trigger,
        drift,
        watching: state.watches.running(),
        revision_errors: !errors.is_empty(),
        stacks_failing: state.backoffs.any_failing(),
        revision: revision_sha.as_deref(),
        policy_digest: &policy_digest,
        last_full: last_full.as_ref(),
        api_answers: false,
    };
    if facts.could_be_quiet()
        && let Some(client) = &state.client
    {
        // One cheap request (not to any managed resource) proves the API server still answers:
        // stopped watches alone would not notice a frozen server.
        facts.api_answers = matches!(
            tokio::time::timeout(LIVENESS_TIMEOUT, client.apiserver_version()).await,
            Ok(Ok(_))
        );
    }
    state.mode = mode::decide(&facts);
    if state.mode == Mode::Quiet {
        state.phases.mark("check");
        shared.status.write().await.errors.clear();
        return true;
    }
    let stacks = match desired.expand() {
        Ok(stacks) => stacks,
        Err(e) => {
            degrade(shared, vec![e.to_string()]).await;
            return false;
        }
    };
    let mut wanted: Vec<String> = stacks.iter().map(|s| s.name.clone()).collect();
    wanted.extend(state.awaiting_lease.iter().cloned());
    state.wanted.set(wanted);
    // Stacks are taken one renewal after start (daemons started together see each other).
    state
        .wanted
        .started(config.leases.renew_interval * 3 + crate::cluster::REQUEST_TIMEOUT)
        .await;
    let incremental = state.mode == Mode::Incremental;
    let full_at = state.last_full.take().map(|f| f.at).filter(|_| incremental);

    let (client, watch_client) = match state.clients(config).await {
        Ok(c) => c,
        Err(e) => {
            errors.push(e.to_string());
            degrade(shared, errors).await;
            return false;
        }
    };
    let in_backoff = state.backoffs.in_backoff(Instant::now());
    if let Some(sha) = &revision_sha {
        let applying: Vec<String> = stacks
            .iter()
            .map(|s| s.name.clone())
            .filter(|n| !in_backoff.contains(n))
            .collect();
        shared.notify.run_started(&state.run_id, sha, &applying);
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
        state.stack_runs = crate::runs::stack_runs(
            &Report {
                stacks: Vec::new(),
                resources: Vec::new(),
                awaiting_lease: Vec::new(),
            },
            &[],
            &in_backoff,
        );
        return false;
    }
    let current_sha = revision_sha.clone().unwrap_or_default();
    let plan_only: Vec<String> = stacks
        .iter()
        .filter(|s| !s.spec.self_heal && state.applied_sha.get(&s.name) == Some(&current_sha))
        .map(|s| s.name.clone())
        .collect();
    let options = reconcile_options(
        config,
        state,
        only,
        plan_only.clone(),
        incremental,
        errors.is_empty(),
    );
    if incremental {
        info!(
            %trigger,
            "incremental reconcile: only objects whose desired state changed"
        );
    }
    let report = match crate::reconcile::reconcile(&client, &stacks, &options).await {
        Ok(r) => r,
        Err(e) => {
            errors.push(format!("reconcile ({trigger}): {e}"));
            for e in &errors {
                error!("{e}");
            }
            state.backoffs.source_failures = state.backoffs.source_failures.max(1);
            degrade(shared, errors).await;
            return false;
        }
    };
    state.phases.mark("cluster");
    state.awaiting_lease = report.awaiting_lease.clone();
    state
        .watches
        .ensure(&watch_client, shared, &report, &stacks);
    let folded = {
        let mut st = shared.status.write().await;
        record::fold(
            &mut st,
            &mut state.backoffs,
            &shared.metrics,
            record::Run::of(&stacks, &report, &plan_only, errors),
            Utc::now(),
            Instant::now(),
        )
    };
    state.stack_runs = crate::runs::stack_runs(&report, &plan_only, &in_backoff);
    for stack in folded.applied {
        state.applied_sha.insert(stack, current_sha.clone());
    }
    state.phases.mark("record");
    revision::remove_old_checkouts(config, &credentials, revision_sha.clone()).await;
    if folded.ok
        && let Some(sha) = revision_sha
    {
        state.last_full = Some(FullRun {
            sha,
            at: full_at.unwrap_or_else(Instant::now),
            policy_digest,
        });
    }
    folded.ok
}

/// Hands the heap pages a reconcile freed back to the system. glibc keeps freed memory in its
/// arenas for reuse; after a reconcile of thousands of objects (lists, dry-run results) that is
/// tens of MiB the daemon would hold until the next one.
fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        unsafe extern "C" {
            fn malloc_trim(pad: usize) -> std::ffi::c_int;
        }
        // SAFETY: malloc_trim takes no pointers and only returns free pages of glibc's own
        // allocator to the kernel; it is safe to call from any thread at any time.
        unsafe {
            malloc_trim(0);
        }
    }
}

/// How long the API server may take to answer the liveness check of a quiet poll.
const LIVENESS_TIMEOUT: Duration = Duration::from_secs(5);
