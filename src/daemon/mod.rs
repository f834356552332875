//! `driftless run`: the long-running agent. It sequences the stages (source → stack → reconcile)
//! on triggers (poll, webhook, file change, SIGHUP, retry), keeps the last good revision when a new
//! one is broken, backs off failing stacks one by one, reports status and metrics, and talks the
//! systemd notify protocol. It sequences; it does not decide.

pub mod jobs;
pub mod metrics;
pub mod sd_notify;
pub mod status;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use secrecy::SecretString;
use tokio::sync::{Notify, RwLock};
use tracing::{error, info, warn};

use crate::config::HostConfig;
use crate::reconcile::{self, Report};
use crate::source::{GitSource, Revision};
use crate::stack::RenderedStack;
use metrics::{Metrics, labels};
use status::{DaemonState, PlanCounts, ReconcileSummary, StackStatus, Status};

/// Errors that stop the daemon from starting.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Config(#[from] crate::config::Error),
    #[error("{0}")]
    Invalid(String),
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: std::net::SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Cluster(#[from] crate::cluster::Error),
    #[error(transparent)]
    Credentials(#[from] crate::credentials::Error),
}

/// What the HTTP endpoint needs from the daemon.
pub struct Shared {
    /// A weak handle on itself, for callbacks (drift watches) that must not keep it alive.
    pub self_ref: std::sync::Weak<Shared>,
    pub status: RwLock<Status>,
    pub metrics: Metrics,
    /// Wakes the loop; notifications while a reconcile runs coalesce into one more run.
    pub trigger: Notify,
    /// Why the next run happens (the last trigger wins; for status only).
    pub trigger_reason: std::sync::Mutex<String>,
    pub endpoint: RwLock<EndpointConfig>,
    /// The jobs of the last good revision, for the scheduler task.
    pub jobs: RwLock<Option<jobs::JobsState>>,
    /// Wakes the scheduler when `jobs` changed.
    pub jobs_changed: Notify,
    /// A drift watch saw a managed object change since the last full reconcile.
    pub drift_pending: std::sync::atomic::AtomicBool,
}

impl Shared {
    /// Asks for a reconcile; many requests before the loop wakes give one run.
    pub fn request(&self, reason: &str) {
        if let Ok(mut r) = self.trigger_reason.lock() {
            *r = reason.to_owned();
        }
        self.trigger.notify_one();
    }
}

/// The endpoint's view of the configuration (secrets read from the credentials directory).
#[derive(Default)]
pub struct EndpointConfig {
    pub status_token: Option<SecretString>,
    pub webhook_secrets: Vec<(crate::server::hooks::Provider, SecretString)>,
    pub body_limit: usize,
    /// The followed Git URL and ref (webhooks for anything else are ignored).
    pub git: Option<(String, crate::source::GitRef)>,
}

/// Reads the endpoint's secrets. Missing files are errors: a webhook route without its secret
/// must not silently accept everything.
pub fn endpoint_config(config: &HostConfig) -> Result<EndpointConfig, Error> {
    use crate::server::hooks::Provider;
    let creds = crate::credentials::Credentials::from_config(config);
    let read = |file: &str, what: &str| -> Result<SecretString, Error> {
        Ok(creds.host_text(what, file)?)
    };
    let d = &config.daemon;
    let mut webhook_secrets = Vec::new();
    for (provider, key, secret) in [
        (Provider::Github, "github", &d.webhooks.github),
        (Provider::Gitlab, "gitlab", &d.webhooks.gitlab),
        (Provider::Gitea, "gitea", &d.webhooks.gitea),
        (Provider::Generic, "generic", &d.webhooks.generic),
    ] {
        if let Some(s) = secret {
            webhook_secrets.push((
                provider,
                read(&s.secret_file, &format!("daemon.webhooks.{key}.secretFile"))?,
            ));
        }
    }
    let status_token = d
        .status_token_file
        .as_deref()
        .map(|f| read(f, "daemon.statusTokenFile"))
        .transpose()?;
    if !d.listen.ip().is_loopback() && status_token.is_none() {
        return Err(Error::Invalid(format!(
            "daemon.listen {} is not a loopback address: set daemon.statusTokenFile so status and metrics need a bearer token",
            d.listen
        )));
    }
    let git = config
        .source
        .as_ref()
        .and_then(|s| s.git.as_ref())
        .map(|g| (g.url.clone(), crate::source::GitRef::of(g)));
    Ok(EndpointConfig {
        status_token,
        webhook_secrets,
        body_limit: d.webhook_body_limit,
        git,
    })
}

/// Per-stack failure memory for exponential backoff.
#[derive(Default, Clone)]
struct Backoff {
    failures: u32,
    retry_at: Option<Instant>,
}

fn backoff_delay(failures: u32) -> Duration {
    // 5 s, 10 s, 20 s … capped at 10 min.
    Duration::from_secs(5u64.saturating_mul(1u64 << failures.saturating_sub(1).min(7)))
        .min(Duration::from_secs(600))
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
    let endpoint = endpoint_config(&config)?;
    let shared = Arc::new_cyclic(|self_ref| Shared {
        self_ref: self_ref.clone(),
        status: RwLock::new(Status {
            instance: config.instance(),
            started_at: Some(Utc::now()),
            source: describe_source(&config),
            ..Status::default()
        }),
        metrics: Metrics::default(),
        trigger: Notify::new(),
        trigger_reason: std::sync::Mutex::new("start".to_owned()),
        endpoint: RwLock::new(endpoint),
        jobs: RwLock::new(None),
        jobs_changed: Notify::new(),
        drift_pending: std::sync::atomic::AtomicBool::new(false),
    });
    let listener = tokio::net::TcpListener::bind(config.daemon.listen)
        .await
        .map_err(|source| Error::Listen {
            addr: config.daemon.listen,
            source,
        })?;
    info!(listen = %config.daemon.listen, "serving status, metrics and webhooks");
    let server = tokio::spawn(crate::server::serve(listener, shared.clone()));

    let reload = Arc::new(Notify::new());
    spawn_signal_handlers(shared.clone(), reload.clone());
    let _watcher = watch_files(&config, &config_path, shared.clone(), reload.clone());
    spawn_watchdog();
    let poll = spawn_poller(shared.clone(), config.daemon.poll_interval);
    let scheduler = tokio::spawn(jobs::scheduler(shared.clone()));

    let mut state = LoopState {
        secret_hash_key: crate::cluster::apply::SecretHashKey::load_or_create(&config.state_dir()),
        ..LoopState::default()
    };
    shared.request("start");
    let mut ready_sent = false;
    let mut last_run_end: Option<Instant> = None;
    let shutdown = shutdown_signal();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            _ = reload.notified() => {
                match HostConfig::load(&config_path, true) {
                    Ok(new) => match endpoint_config(&new) {
                        Ok(endpoint) => {
                            info!("configuration reloaded");
                            *shared.endpoint.write().await = endpoint;
                            // Host commands apply to the next job run, revision changed or not.
                            if let Some(jobs) = shared.jobs.write().await.as_mut() {
                                jobs.commands = new.jobs.commands.clone();
                            }
                            config = new;
                            shared.request("config reload");
                        }
                        Err(e) => error!("configuration reload refused, keeping the previous one: {e}"),
                    },
                    Err(e) => error!("configuration reload refused, keeping the previous one: {e}"),
                }
                continue;
            }
            _ = shared.trigger.notified() => {}
        }
        // Debounce: a burst of triggers (webhooks from one push, many drift events) gives one
        // run once it has been quiet for COALESCE_QUIET, or after COALESCE_MAX at the latest.
        // Any other trigger that finds the loop idle runs at once (the leading edge: a
        // push is applied without waiting out the quiet period); what follows it coalesces.
        let burst = Instant::now();
        let mut stopping = false;
        let leading = {
            let reason = shared
                .trigger_reason
                .lock()
                .map(|r| r.clone())
                .unwrap_or_default();
            // Drift events and file changes come in bursts (a `kubectl delete` of many objects,
            // an editor saving several files): those always wait for the quiet period.
            !(reason == "drift" || reason == "file change")
                && last_run_end.is_none_or(|t: Instant| t.elapsed() >= COALESCE_QUIET)
        };
        if !leading {
            loop {
                tokio::select! {
                    _ = &mut shutdown => {
                        stopping = true;
                        break;
                    }
                    _ = tokio::time::sleep(COALESCE_QUIET) => break,
                    _ = shared.trigger.notified() => {
                        if burst.elapsed() >= COALESCE_MAX {
                            // Still triggered: the Notify permit was consumed, so ask again.
                            shared.trigger.notify_one();
                            break;
                        }
                    }
                }
            }
        }
        if stopping {
            break;
        }
        let reason = shared
            .trigger_reason
            .lock()
            .map(|r| r.clone())
            .unwrap_or_default();
        let started = Utc::now();
        let t0 = Instant::now();
        // A stop request ends the reconcile at its next await: inventory-first writes make that
        // safe, and the rest of the plan runs again next start.
        let outcome = tokio::select! {
            _ = &mut shutdown => break,
            o = reconcile_once(&config, &shared, &mut state, &reason) => o,
        };
        let elapsed = t0.elapsed();
        last_run_end = Some(Instant::now());
        if state.mode != "quiet" {
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
                trigger: reason.clone(),
                started_at: started,
                duration_ms: elapsed.as_millis() as u64,
                ok: outcome,
                mode: state.mode.to_owned(),
                phases_ms: std::mem::take(&mut state.phases),
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
        if !ready_sent && state.last_good.is_some() {
            sd_notify::send("READY=1");
            ready_sent = true;
        }
        // Retry the earliest backed-off stack, or the source, without waiting for the poll.
        if let Some(delay) = state.next_retry() {
            let shared = shared.clone();
            tokio::spawn(async move {
                tokio::time::sleep(delay).await;
                shared.request("retry");
            });
        }
    }
    info!("stopping");
    sd_notify::send("STOPPING=1");
    poll.abort();
    // A job run in progress is cut short at its next await; its record says `interrupted`.
    scheduler.abort();
    server.abort();
    for h in state.watches.drain(..) {
        h.abort();
    }
    let st = shared.status.read().await;
    persist(&config.state_dir(), &st);
    Ok(())
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

/// The desired state of one run: a revision rendered just now, or the stored last good one.
enum Desired {
    Fresh(Arc<Vec<RenderedStack>>),
    Stored(Arc<crate::stack::StoredRevision>),
}

#[derive(Default)]
struct LoopState {
    /// Per stack: the revision it last applied (a `selfHeal: false` stack is applied again only
    /// when this moves).
    applied_sha: BTreeMap<String, String>,
    /// Drift watches and the kinds they cover.
    watches: Vec<tokio::task::JoinHandle<()>>,
    watched_kinds: Vec<String>,
    secret_hash_key: Option<crate::cluster::apply::SecretHashKey>,
    /// The last revision that loaded and rendered: what is reconciled while newer ones fail.
    /// Shared with the scheduler's view (`JobsState.desired`) and each reconcile: one copy.
    last_good: Option<(Option<Revision>, Arc<crate::stack::StoredRevision>)>,
    /// The policies of the last good revision (loaded with it).
    last_good_policies: Option<std::sync::Arc<crate::policy::PolicySet>>,
    backoff: BTreeMap<String, Backoff>,
    source_failures: u32,
    client: Option<kube::Client>,
    watch_client: Option<kube::Client>,
    /// The revision, time and policy digest of the last reconcile that succeeded for every
    /// stack (the time is that of the last *full* one: incremental runs do not move it).
    last_full: Option<(String, Instant, String)>,
    /// Digest of the last good revision's policy files.
    last_good_policy_digest: String,
    /// How the last reconcile ran: `quiet`, `incremental` or `full`.
    mode: &'static str,
    /// The last reconcile's phases and their wall time (ms).
    phases: Vec<(String, u64)>,
    /// Parsed manifests by text, reused by the next revision's render.
    parse_cache: Arc<crate::yaml::ParseCache>,
}

impl LoopState {
    /// The last good revision as this run's desired state (what is reconciled while a newer one
    /// fails to fetch or load).
    fn last_good_desired(&self) -> Option<Desired> {
        self.last_good
            .as_ref()
            .map(|(_, stored)| Desired::Stored(Arc::clone(stored)))
    }

    /// Records the phase that ends now and starts the next.
    fn mark(&mut self, name: &str, since: &mut Instant) {
        self.phases
            .push((name.to_owned(), since.elapsed().as_millis() as u64));
        *since = Instant::now();
    }

    fn next_retry(&self) -> Option<Duration> {
        let now = Instant::now();
        let stacks = self
            .backoff
            .values()
            .filter_map(|b| b.retry_at)
            .map(|t| t.saturating_duration_since(now));
        let source = (self.source_failures > 0).then(|| backoff_delay(self.source_failures));
        stacks.chain(source).min()
    }
}

/// Reports a revision refused by `source.git.verify` in the status and the
/// `source_unverified_revision` metric, or clears both (`None`, or another error: the refusal
/// stays until a revision verifies).
async fn record_unverified(shared: &Shared, error: Option<&crate::source::Error>) {
    let refused = match error {
        Some(crate::source::Error::Unverified {
            sha,
            object,
            signer,
            reason,
            ..
        }) => Some(status::UnverifiedRevision {
            sha: sha.clone(),
            object: object.clone(),
            signer: signer.clone(),
            reason: reason.clone(),
        }),
        Some(_) => return,
        None => None,
    };
    let m = &shared.metrics.source_unverified;
    m.clear();
    if let Some(r) = &refused {
        m.get_or_create(&labels(&[
            ("commit", &r.sha),
            ("signer", r.signer.as_deref().unwrap_or("")),
            ("reason", &r.reason),
        ]))
        .set(1);
    }
    shared.status.write().await.unverified = refused;
}

/// One run: fetch, render (keeping the last good revision on failure), reconcile the stacks not
/// in backoff, record. Returns whether everything succeeded.
async fn reconcile_once(
    config: &HostConfig,
    shared: &Shared,
    state: &mut LoopState,
    reason: &str,
) -> bool {
    let mut errors = Vec::new();
    let credentials = crate::credentials::Credentials::from_config(config);
    state.phases.clear();
    let mut phase = Instant::now();
    // Source.
    let fetched: Result<(Option<Revision>, PathBuf), String> = match config.source.as_ref() {
        Some(s) if s.path.is_some() => Ok((None, s.path.clone().unwrap_or_default())),
        Some(s) => match s.git.as_ref() {
            Some(git) => {
                let previous = state
                    .last_good
                    .as_ref()
                    .and_then(|(r, _)| r.as_ref())
                    .map(|r| r.sha.clone());
                let source = GitSource::from_config(git, &credentials, &config.state_dir());
                let result = tokio::task::spawn_blocking(move || {
                    source.and_then(|s| s.fetch(previous.as_deref()))
                })
                .await;
                match result {
                    Ok(Ok(f)) => {
                        record_unverified(shared, None).await;
                        Ok((Some(f.revision), f.checkout))
                    }
                    Ok(Err(e)) => {
                        record_unverified(shared, Some(&e)).await;
                        Err(e.to_string())
                    }
                    Err(e) => Err(format!("fetch task failed: {e}")),
                }
            }
            None => Err("source: neither path nor git".to_owned()),
        },
        None => Err("no source configured".to_owned()),
    };
    state.mark("fetch", &mut phase);
    let desired = match fetched {
        Ok((revision, root)) => {
            state.source_failures = 0;
            shared.status.write().await.revision = revision.clone();
            let unchanged = matches!((&state.last_good, &revision), (Some((Some(old), _)), Some(new)) if old.sha == new.sha);
            if unchanged {
                state.last_good_desired()
            } else {
                let profile = config.profile.clone();
                let creds = credentials.clone();
                let renderers = config.renderers.renderers();
                let cache = Arc::clone(&state.parse_cache);
                let rendered = tokio::task::spawn_blocking(move || {
                    cache.begin();
                    let (stacks, declared) =
                        jobs::load(&root, profile.as_deref(), &creds, &renderers, Some(&cache))
                            .map_err(|e| e.to_string())?;
                    let mut lap = crate::logging::Lap::start("revision");
                    let policies =
                        crate::policy::load_policies(&root, &stacks).map_err(|e| e.to_string())?;
                    let digest = policy_digest(&root);
                    lap.log("loaded the policies");
                    let stored = crate::stack::StoredRevision::store(&stacks);
                    lap.log("stored the revision");
                    Ok::<_, String>((stacks, stored, declared, (policies, digest)))
                })
                .await;
                match rendered {
                    Ok(Ok((stacks, stored, declared, (policies, digest)))) => {
                        let stacks = Arc::new(stacks);
                        let stored = Arc::new(stored);
                        state.last_good_policies = Some(std::sync::Arc::new(policies));
                        state.last_good_policy_digest = digest;
                        if let Some(r) = &revision {
                            info!(sha = %r.sha, subject = %r.subject, "new revision loaded");
                        }
                        // A new revision is tried at once, also by stacks in backoff (a fix
                        // must not wait out the delay); repeated failures still grow it.
                        for b in state.backoff.values_mut() {
                            b.retry_at = None;
                        }
                        *shared.jobs.write().await = Some(jobs::JobsState {
                            jobs: declared,
                            desired: Arc::clone(&stored),
                            revision: revision.as_ref().map(|r| r.sha.clone()),
                            state_dir: config.state_dir(),
                            credentials: credentials.clone(),
                            target: crate::cluster::Target {
                                kubeconfig: config.cluster.kubeconfig.clone(),
                                context: config.cluster.context.clone(),
                            },
                            commands: config.jobs.commands.clone(),
                        });
                        shared.jobs_changed.notify_one();
                        state.last_good = Some((revision.clone(), stored));
                        shared.status.write().await.applied_revision = revision;
                        Some(Desired::Fresh(stacks))
                    }
                    Ok(Err(e)) => {
                        let rev = revision
                            .as_ref()
                            .map(|r| r.sha.as_str())
                            .unwrap_or("working tree");
                        errors.push(format!(
                            "revision {rev} does not load; keeping the last good revision: {e}"
                        ));
                        state.last_good_desired()
                    }
                    Err(e) => {
                        errors.push(format!("render task failed: {e}"));
                        state.last_good_desired()
                    }
                }
            }
        }
        Err(e) => {
            state.source_failures += 1;
            errors.push(format!("source: {e}; keeping the last good revision"));
            state.last_good_desired()
        }
    };
    state.mark("render", &mut phase);
    for e in &errors {
        error!("{e}");
    }
    let Some(desired) = desired else {
        let mut st = shared.status.write().await;
        st.errors = errors;
        st.state = DaemonState::Degraded;
        return false;
    };

    // Nothing changed: the same revision as the last full reconcile, which succeeded, no drift
    // seen by the watches since, within the resync period. Then nothing is asked of the cluster.
    let drift = shared
        .drift_pending
        .swap(false, std::sync::atomic::Ordering::SeqCst);
    let revision_sha = state
        .last_good
        .as_ref()
        .and_then(|(r, _)| r.as_ref())
        .map(|r| r.sha.clone());
    let quiet_trigger = reason == "poll" || reason.starts_with("webhook");
    if quiet_trigger
        && !drift
        && !state.watches.is_empty()
        && errors.is_empty()
        && state.backoff.values().all(|b| b.failures == 0)
        && let (Some(sha), Some((full_sha, at, _))) = (&revision_sha, &state.last_full)
        && sha == full_sha
        && at.elapsed() < RESYNC
        && let Some(client) = &state.client
        // One cheap request (not to any managed resource) proves the API server still answers:
        // stopped watches alone would not notice a frozen server.
        && matches!(
            tokio::time::timeout(LIVENESS_TIMEOUT, client.apiserver_version()).await,
            Ok(Ok(_))
        )
    {
        state.mode = "quiet";
        state.mark("check", &mut phase);
        let mut st = shared.status.write().await;
        st.errors.clear();
        return true;
    }
    // The objects are needed from here on: a stored revision is expanded for this run only.
    let stacks = match desired {
        Desired::Fresh(stacks) => stacks,
        Desired::Stored(stored) => match stored.expand() {
            Ok(stacks) => Arc::new(stacks),
            Err(e) => {
                let mut st = shared.status.write().await;
                st.errors = vec![e.to_string()];
                st.state = DaemonState::Degraded;
                return false;
            }
        },
    };
    // A new revision after a full reconcile, with the watches quiet since and the same policies:
    // only the objects whose desired state changed are read, dry-run, checked and waited for.
    let incremental = quiet_trigger
        && !drift
        && !state.watches.is_empty()
        && errors.is_empty()
        && state.backoff.values().all(|b| b.failures == 0)
        && state.last_full.as_ref().is_some_and(|(_, at, digest)| {
            at.elapsed() < RESYNC && *digest == state.last_good_policy_digest
        });
    state.mode = if incremental { "incremental" } else { "full" };
    let full_at = state
        .last_full
        .take()
        .map(|(_, at, _)| at)
        .filter(|_| incremental);

    // Cluster.
    let client = match &state.client {
        Some(c) => c.clone(),
        None => {
            let target = crate::cluster::Target {
                kubeconfig: config.cluster.kubeconfig.clone(),
                context: config.cluster.context.clone(),
            };
            let both = match crate::cluster::connect(&target).await {
                Ok(c) => crate::cluster::connect_for_watches(&target)
                    .await
                    .map(|w| (c, w)),
                Err(e) => Err(e),
            };
            match both {
                Ok((c, w)) => {
                    state.client = Some(c.clone());
                    state.watch_client = Some(w);
                    c
                }
                Err(e) => {
                    errors.push(e.to_string());
                    let mut st = shared.status.write().await;
                    st.errors = errors;
                    st.state = DaemonState::Degraded;
                    return false;
                }
            }
        }
    };
    let now = Instant::now();
    let in_backoff: Vec<String> = state
        .backoff
        .iter()
        .filter(|(_, b)| b.retry_at.is_some_and(|t| t > now))
        .map(|(n, _)| n.clone())
        .collect();
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
        return false;
    }
    let current_sha = state
        .last_good
        .as_ref()
        .and_then(|(r, _)| r.as_ref())
        .map(|r| r.sha.clone())
        .unwrap_or_default();
    let plan_only: Vec<String> = stacks
        .iter()
        .filter(|s| !s.spec.self_heal && state.applied_sha.get(&s.name) == Some(&current_sha))
        .map(|s| s.name.clone())
        .collect();
    let options = reconcile::Options {
        dry_run: false,
        allow_mass_prune: config.prune.allow_mass_prune,
        max_prune_share: config.prune.max_share,
        only,
        instance: config.instance(),
        plan_only: plan_only.clone(),
        secret_hash_key: state.secret_hash_key.clone(),
        policies: state.last_good_policies.clone(),
        incremental,
        // Stacks leave only with a revision fetched (and loaded) from the configured source now.
        source: reconcile::source_id(None, config.source.as_ref()),
        prune_removed_stacks: errors.is_empty(),
        allow_recreate: config.prune.allow_recreate.clone(),
        ..reconcile::Options::default()
    };
    if incremental {
        info!(
            reason,
            "incremental reconcile: only objects whose desired state changed"
        );
    }
    let report = match reconcile::reconcile(&client, &stacks, &options).await {
        Ok(r) => r,
        Err(e) => {
            errors.push(format!("reconcile ({reason}): {e}"));
            for e in &errors {
                error!("{e}");
            }
            state.source_failures = state.source_failures.max(1);
            let mut st = shared.status.write().await;
            st.errors = errors;
            st.state = DaemonState::Degraded;
            return false;
        }
    };
    state.mark("cluster", &mut phase);
    if let Some(watch_client) = state.watch_client.clone() {
        ensure_watches(&watch_client, shared, state, &report, &stacks);
    }
    let ok = record(
        shared,
        state,
        &stacks,
        &report,
        errors,
        &plan_only,
        &current_sha,
    )
    .await;
    state.mark("record", &mut phase);
    if ok && let Some(sha) = revision_sha {
        state.last_full = Some((
            sha,
            full_at.unwrap_or_else(Instant::now),
            state.last_good_policy_digest.clone(),
        ));
    }
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

/// A digest of every policy file of a checkout (`policies/` and the stacks' own `policies/`
/// directories): an incremental reconcile is only sound while the policies stay the same.
fn policy_digest(root: &Path) -> String {
    use sha2::{Digest, Sha256};
    let mut hasher = Sha256::new();
    // The files `load_policies` read, found and read by the same bounded walk.
    match crate::policy::revision_policy_files(root) {
        Ok(files) => {
            for f in files {
                for part in [f.path.as_os_str().as_encoded_bytes(), f.text.as_bytes()] {
                    hasher.update((part.len() as u64).to_le_bytes());
                    hasher.update(part);
                }
            }
        }
        // Unreadable although just loaded: a digest no run shares, so the next one is full.
        Err(e) => hasher.update(format!("{e} {}", rand::random::<u64>())),
    }
    crate::cluster::apply::hex(&hasher.finalize())
}

/// Longest time between full reconciles when nothing seems to change: a safety net under the
/// drift watches.
const RESYNC: Duration = Duration::from_secs(600);

/// Quiet time that ends a burst of triggers, and the longest a burst may delay a run.
const COALESCE_QUIET: Duration = Duration::from_millis(100);
const COALESCE_MAX: Duration = Duration::from_secs(2);

/// How long the API server may take to answer the liveness check of a quiet poll.
const LIVENESS_TIMEOUT: Duration = Duration::from_secs(5);

/// (Re)starts the drift watches when the set of managed kinds changed.
fn ensure_watches(
    client: &kube::Client,
    shared: &Shared,
    state: &mut LoopState,
    report: &Report,
    stacks: &[RenderedStack],
) {
    let names: Vec<String> = stacks.iter().map(|s| s.name.clone()).collect();
    let mut kinds: Vec<String> = report
        .resources
        .iter()
        .map(|r| format!("{}/{}", r.api_version, r.kind))
        .collect();
    kinds.sort();
    // The key covers the stacks too: the label selector names them.
    kinds.extend(names.iter().map(|n| format!("stack:{n}")));
    if kinds == state.watched_kinds {
        return;
    }
    for h in state.watches.drain(..) {
        h.abort();
    }
    let trigger = shared.self_ref.clone();
    let on_drift: crate::cluster::watch::OnDrift = Arc::new(move |stack: &str, object: &str| {
        info!(
            stack,
            object, "live change to a managed object: reconciling"
        );
        if let Some(shared) = trigger.upgrade() {
            shared
                .drift_pending
                .store(true, std::sync::atomic::Ordering::SeqCst);
            shared.request("drift");
        }
    });
    state.watches = crate::cluster::watch::spawn(client, &report.resources, &names, on_drift);
    state.watched_kinds = kinds;
}

/// Folds a reconcile report into status, metrics and backoff. Returns whether all went well.
async fn record(
    shared: &Shared,
    state: &mut LoopState,
    stacks: &[RenderedStack],
    report: &Report,
    mut errors: Vec<String>,
    plan_only: &[String],
    current_sha: &str,
) -> bool {
    let now = Utc::now();
    let mut st = shared.status.write().await;
    let previous: BTreeMap<String, StackStatus> =
        st.stacks.drain(..).map(|s| (s.name.clone(), s)).collect();
    let mut all_ok = errors.is_empty();
    for stack in stacks {
        let mut s = previous.get(&stack.name).cloned().unwrap_or(StackStatus {
            name: stack.name.clone(),
            state: "pending".to_owned(),
            last_change: None,
            last_sync: None,
            managed_objects: stack.objects.len(),
            drifted: 0,
            last_plan: PlanCounts::default(),
            error: None,
            retry_at: None,
            consecutive_failures: 0,
        });
        s.managed_objects = stack.objects.len();
        let stack_labels = labels(&[("stack", &stack.name)]);
        shared
            .metrics
            .managed_objects
            .get_or_create(&stack_labels)
            .set(stack.objects.len() as i64);
        if let Some(outcome) = report.stacks.iter().find(|o| o.stack == stack.name) {
            let failed = outcome.error.is_some() || !outcome.unhealthy.is_empty();
            if let Some(plan) = &outcome.plan {
                let (c, u, p) = plan.counts();
                s.last_plan = PlanCounts {
                    create: c,
                    update: u,
                    prune: p,
                };
                // A plan-only stack's updates are drift nobody reverted; an applied stack has none left.
                s.drifted = if plan_only.contains(&stack.name) {
                    u
                } else {
                    0
                };
                if c + u + p > 0 && outcome.applied {
                    s.last_change = Some(now);
                }
            }
            shared
                .metrics
                .drifted_objects
                .get_or_create(&stack_labels)
                .set(s.drifted as i64);
            let backoff = state.backoff.entry(stack.name.clone()).or_default();
            if failed {
                all_ok = false;
                backoff.failures += 1;
                let delay = backoff_delay(backoff.failures);
                backoff.retry_at = Some(Instant::now() + delay);
                s.state = if outcome.unhealthy.is_empty() {
                    "failed"
                } else {
                    "unhealthy"
                }
                .to_owned();
                s.error = outcome.error.clone();
                s.consecutive_failures = backoff.failures;
                s.retry_at = chrono::Duration::from_std(delay).ok().map(|d| now + d);
                shared
                    .metrics
                    .apply_errors
                    .get_or_create(&stack_labels)
                    .inc();
            } else {
                *backoff = Backoff::default();
                if !plan_only.contains(&stack.name) {
                    state
                        .applied_sha
                        .insert(stack.name.clone(), current_sha.to_owned());
                }
                s.state = if s.drifted > 0 { "drifted" } else { "synced" }.to_owned();
                s.error = None;
                s.retry_at = None;
                s.consecutive_failures = 0;
                s.last_sync = Some(now);
                shared
                    .metrics
                    .last_successful_sync
                    .get_or_create(&stack_labels)
                    .set(now.timestamp_millis() as f64 / 1000.0);
            }
        } else if state
            .backoff
            .get(&stack.name)
            .is_some_and(|b| b.retry_at.is_some())
        {
            s.state = "backoff".to_owned();
            all_ok = false;
        }
        st.stacks.push(s);
    }
    // Stacks that left the revision (orphans being pruned) report through errors only.
    for o in &report.stacks {
        if !stacks.iter().any(|s| s.name == o.stack)
            && let Some(e) = &o.error
        {
            all_ok = false;
            errors.push(e.clone());
        }
    }
    st.errors = errors;
    // A Backup job whose newest complete backup is older than its maxAge degrades the status.
    st.state = if all_ok && st.jobs.iter().all(|j| j.overdue.is_none()) {
        DaemonState::Ready
    } else {
        DaemonState::Degraded
    };
    all_ok
}

fn spawn_signal_handlers(shared: Arc<Shared>, reload: Arc<Notify>) {
    tokio::spawn(async move {
        let Ok(mut hup) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        else {
            return;
        };
        while hup.recv().await.is_some() {
            info!("SIGHUP: reloading the configuration");
            reload.notify_one();
            shared.request("SIGHUP");
        }
    });
}

async fn shutdown_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    tokio::select! {
        _ = term => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}

fn spawn_poller(shared: Arc<Shared>, interval: Duration) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            // Up to 10 % later at random, so that many hosts do not poll in step.
            let jitter = interval.mul_f64(rand::random::<f64>() * 0.1);
            tokio::time::sleep(interval + jitter).await;
            shared.request("poll");
        }
    })
}

fn spawn_watchdog() {
    let Some(timeout) = sd_notify::watchdog_interval() else {
        return;
    };
    let period = timeout / 2;
    tokio::spawn(async move {
        loop {
            sd_notify::send("WATCHDOG=1");
            tokio::time::sleep(period).await;
        }
    });
}

/// Watches the host configuration (reload) and a local-path source (reconcile) with `notify`.
fn watch_files(
    config: &HostConfig,
    config_path: &Path,
    shared: Arc<Shared>,
    reload: Arc<Notify>,
) -> Option<notify::RecommendedWatcher> {
    use notify::{RecursiveMode, Watcher};
    let config_path = config_path
        .canonicalize()
        .unwrap_or_else(|_| config_path.to_owned());
    let source_path = config
        .source
        .as_ref()
        .and_then(|s| s.path.clone())
        .and_then(|p| p.canonicalize().ok());
    let cfg = config_path.clone();
    let src = source_path.clone();
    let mut watcher =
        match notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
            let Ok(event) = event else { return };
            if matches!(event.kind, notify::EventKind::Access(_)) {
                return;
            }
            if event.paths.contains(&cfg) {
                reload.notify_one();
            } else if let Some(src) = &src
                && event.paths.iter().any(|p| p.starts_with(src))
            {
                shared.request("file change");
            }
        }) {
            Ok(w) => w,
            Err(e) => {
                warn!("file watching unavailable: {e}");
                return None;
            }
        };
    // Watch the directory of the config file: editors replace files by rename.
    if let Some(dir) = config_path.parent()
        && let Err(e) = watcher.watch(dir, RecursiveMode::NonRecursive)
    {
        warn!("cannot watch {}: {e}", dir.display());
    }
    if let Some(src) = &source_path
        && let Err(e) = watcher.watch(src, RecursiveMode::Recursive)
    {
        warn!("cannot watch {}: {e}", src.display());
    }
    Some(watcher)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_caps() {
        let secs: Vec<u64> = (1..=10).map(|n| backoff_delay(n).as_secs()).collect();
        assert_eq!(secs, [5, 10, 20, 40, 80, 160, 320, 600, 600, 600]);
    }
}
