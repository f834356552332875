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
pub mod mode;
pub mod record;
pub mod revision;
pub mod run_record;
pub mod sd_notify;
pub mod target;
pub mod trigger;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use tokio::sync::{Notify, RwLock};
use tracing::{error, info, warn};

use crate::config::HostConfig;
pub use crate::status;
pub use crate::status::metrics;
use backoff::Backoffs;
use metrics::Metrics;
use mode::Mode;
use status::{DaemonState, ReconcileSummary, Status};
use target::TargetState;
use trigger::{Trigger, Triggers};

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
    /// The targets and the Leases this daemon holds on each target's cluster: a job runs only
    /// where its stack's target's Lease is held, against its own target's cluster.
    pub targets: Vec<(crate::targets::Target, crate::cluster::lease::Fence)>,
    /// True once the first target's lease task's first round of takes is done.
    pub leases_started: tokio::sync::watch::Receiver<bool>,
    /// Commit statuses and notification webhooks (`notify:`); queues, never waits.
    pub notify: crate::notify::Notifier,
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
    let notify = crate::notify::Notifier::start(
        &config.instance(),
        &config.notify,
        &config.credentials(),
        metrics.clone(),
        &runs.list(50),
    )
    .map_err(|e| Error::Invalid(e.to_string()))?;
    let lease_settings = config.leases.settings();
    let targets = crate::targets::of(&config);
    // One fence per target cluster: a stack's Lease lives in the cluster it is written to.
    let fences: Vec<_> = targets
        .iter()
        .map(|_| crate::cluster::lease::Fence::new(&lease_settings))
        .collect();
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
        targets: targets
            .iter()
            .cloned()
            .zip(fences.iter().cloned())
            .collect(),
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
    let mut server = endpoint::Endpoint::start(
        &config,
        Arc::new(endpoint::server_state(&shared, settings).with_state_dir(config.state_dir())),
    )
    .await?;

    let reload = Arc::new(Notify::new());
    trigger::spawn_signal_handlers(shared.clone(), reload.clone());
    let _watcher = trigger::watch_files(&config, &config_path, shared.clone(), reload.clone());
    trigger::spawn_watchdog();
    let poll = trigger::spawn_poller(shared.clone(), config.daemon.poll_interval);
    let scheduler = tokio::spawn(jobs::scheduler(shared.clone()));
    let mut first_started = Some(leases_started_tx);
    let target_states = targets
        .into_iter()
        .zip(fences)
        .map(|(t, fence)| {
            // The first target's lease task tells the scheduler when it may run jobs.
            let started = first_started
                .take()
                .unwrap_or_else(|| tokio::sync::watch::channel(false).0);
            TargetState::start(&shared, &config, t, fence, lease_settings.clone(), started)
        })
        .collect();

    let secret_hash_key = crate::cluster::apply::SecretHashKey::load_or_create(&config.state_dir());
    let mut state = LoopState {
        targets: target_states,
        secret_hash_key: secret_hash_key.clone(),
        ..LoopState::default()
    };
    // Every target reconciles as this instance with this key: each revision's hashes are
    // worked out once, while it is stored.
    state.revisions.hashing = Some(revision::Hashing {
        by: Arc::new(crate::stack::object::HashedBy {
            instance: config.instance(),
            key_id: secret_hash_key.as_ref().map(|k| k.id()),
        }),
        key: secret_hash_key,
    });
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
                        retarget(&mut state.targets, &new);
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
        let now = Instant::now();
        if let Some(delay) = state
            .targets
            .iter()
            .map(|t| &t.backoffs)
            .chain([&state.backoffs])
            .filter_map(|b| b.next_retry(now))
            .min()
        {
            trigger::spawn_retry(shared.clone(), delay);
        }
    }
    info!("stopping");
    sd_notify::send("STOPPING=1");
    poll.abort();
    // A job run in progress is cut short at its next await; its record says `interrupted`.
    scheduler.abort();
    // Released Leases let the other daemons take the stacks at once.
    futures::future::join_all(
        state
            .targets
            .iter_mut()
            .map(|t| t.stop(Duration::from_secs(5))),
    )
    .await;
    server.stop(&config.state_dir());
    let st = shared.status.read().await;
    persist(&config.state_dir(), &st);
    Ok(())
}

/// Descriptors besides the endpoint's connections: cluster and Git clients, watches, files,
/// renderer pipes.
const OTHER_FILES: u64 = 256;

/// Applies a reloaded configuration to the running targets (their settings, profile and
/// stacks); targets added or removed, or a target's cluster changed, need a restart.
fn retarget(states: &mut [TargetState], new: &HostConfig) {
    let targets = crate::targets::of(new);
    let same_names = targets.len() == states.len()
        && targets
            .iter()
            .zip(states.iter())
            .all(|(t, s)| t.name == s.target.name);
    if !same_names {
        warn!("the targets changed: restart driftless for added or removed targets to take effect");
    }
    for s in states.iter_mut() {
        if let Some(t) = targets.iter().find(|t| t.name == s.target.name) {
            if t.cluster.kubeconfig != s.target.cluster.kubeconfig
                || t.cluster.context != s.target.cluster.context
            {
                warn!(target = %t.name, "the target's cluster changed: restart driftless for it to take effect");
            }
            s.target.profile = t.profile.clone();
            s.target.stacks = t.stacks.clone();
            s.config = crate::targets::narrow(new, &s.target);
        }
    }
}

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

#[derive(Default)]
struct LoopState {
    secret_hash_key: Option<crate::cluster::apply::SecretHashKey>,
    revisions: revision::Revisions,
    /// The source's backoff (its stacks' are per target).
    backoffs: Backoffs,
    /// The targets, each with its cluster, Leases, watches, backoffs and modes.
    targets: Vec<TargetState>,
    /// How the last run went: the most thorough of its targets' modes.
    mode: Mode,
    phases: Phases,
    /// The stacks of the current run, for its record.
    stack_runs: Vec<crate::runs::StackRun>,
    /// The id of the current run (commit statuses link to it).
    run_id: String,
}

/// Marks the daemon degraded by problems outside any one stack.
async fn degrade(shared: &Shared, errors: Vec<String>) {
    let mut st = shared.status.write().await;
    st.errors = errors;
    st.state = DaemonState::Degraded;
}

/// One run: fetch, render once per profile of the targets (keeping the last good revision on
/// failure), then every target's part side by side (mode, probe, reconcile, record). Returns
/// whether everything succeeded.
async fn reconcile_once(
    config: &HostConfig,
    shared: &Shared,
    state: &mut LoopState,
    trigger: Trigger,
) -> bool {
    let credentials = config.credentials();
    state.phases.start();
    state.stack_runs.clear();
    let mut profiles: Vec<Option<String>> = Vec::new();
    for t in &state.targets {
        if !profiles.contains(&t.target.profile) {
            profiles.push(t.target.profile.clone());
        }
    }
    let next = {
        let LoopState {
            revisions,
            backoffs,
            phases,
            ..
        } = state;
        revisions
            .next(config, &profiles, shared, backoffs, &credentials, || {
                phases.mark("fetch")
            })
            .await
    };
    state.phases.mark("render");
    let errors = next.errors;
    for e in &errors {
        error!("{e}");
    }
    let LoopState {
        revisions,
        targets,
        secret_hash_key,
        ..
    } = state;
    let (Some(desired), Some(last_good)) = (next.desired, revisions.last_good.as_ref()) else {
        degrade(shared, errors).await;
        return false;
    };
    let revision_sha = last_good.sha().map(str::to_owned);
    let input = target::RunInput {
        desired: &desired,
        last_good,
        errors: &errors,
        trigger,
        secret_hash_key: secret_hash_key.clone(),
        run_id: &state.run_id,
    };
    // Side by side: a target whose cluster hangs holds up only its own part (bounded by the
    // probe and the per-request timeouts), never another target's writes.
    let runs = futures::future::join_all(targets.iter_mut().map(|t| t.run(shared, &input))).await;
    let modes: Vec<Mode> = targets.iter().map(|t| t.mode).collect();
    state.mode = if modes.contains(&Mode::Full) {
        Mode::Full
    } else if modes.contains(&Mode::Incremental) {
        Mode::Incremental
    } else {
        Mode::Quiet
    };
    if state.mode == Mode::Quiet {
        state.phases.mark("check");
        return runs.iter().all(|r| r.ok);
    }
    state.phases.mark("cluster");
    let mut ok = true;
    for r in runs {
        ok &= r.ok;
        state.stack_runs.extend(r.stack_runs);
    }
    state.phases.mark("record");
    revision::remove_old_checkouts(config, &credentials, revision_sha).await;
    ok
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
