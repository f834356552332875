//! What wakes the loop: start, the poll interval, webhooks, SIGHUP and configuration changes,
//! file changes under a local-path source, drift watches and retries. Every source asks through
//! [`Triggers::request`]; requests that arrive while a run goes coalesce into one more run.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::Notify;
use tracing::{info, warn};

use super::Shared;
use super::sd_notify;
use crate::config::HostConfig;
use crate::reconcile::Report;
use crate::runs::store::Store;
use crate::stack::RenderedStack;

pub use crate::status::run::Trigger;

/// The loop's wake-up call: notifications while a run goes coalesce into one more run, which
/// every one of them names (the queued run of `runs`).
pub struct Triggers {
    notify: Notify,
    /// Why the next run happens (the last request wins; for status only).
    last: Mutex<Trigger>,
    runs: Arc<Store>,
}

impl Default for Triggers {
    fn default() -> Self {
        Triggers::new(Arc::new(Store::default()))
    }
}

impl Triggers {
    /// Triggers that queue their runs in `runs`.
    pub fn new(runs: Arc<Store>) -> Triggers {
        Triggers {
            notify: Notify::new(),
            last: Mutex::new(Trigger::Start),
            runs,
        }
    }

    /// Asks for a run; many requests before the loop starts it give one run. Returns its id.
    pub fn request(&self, trigger: Trigger) -> String {
        self.request_revision(trigger, None)
    }

    /// [`Triggers::request`] by a caller that wants `revision` applied (recorded in the run).
    pub fn request_revision(&self, trigger: Trigger, revision: Option<&str>) -> String {
        let id = self.runs.enqueue(&trigger.to_string(), revision);
        if let Ok(mut last) = self.last.lock() {
            *last = trigger;
        }
        self.notify.notify_one();
        id
    }

    /// The most recent request.
    pub fn last(&self) -> Trigger {
        self.last.lock().map(|t| *t).unwrap_or(Trigger::Start)
    }

    /// Waits for a request.
    pub async fn requested(&self) {
        self.notify.notified().await;
    }

    /// Debounce: a burst of requests (webhooks from one push, many drift events) gives one run
    /// once it has been quiet for `COALESCE_QUIET`, or after `COALESCE_MAX` at the latest. A
    /// request that finds the loop idle (`last_run_end` longer than the quiet time ago) runs at
    /// once — a push is applied without waiting out the quiet period — unless its kind comes in
    /// bursts. Returns the trigger of the run.
    pub async fn coalesce(&self, last_run_end: Option<Instant>) -> Trigger {
        let burst = Instant::now();
        let leading = !self.last().comes_in_bursts()
            && last_run_end.is_none_or(|t| t.elapsed() >= COALESCE_QUIET);
        if !leading {
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(COALESCE_QUIET) => break,
                    _ = self.notify.notified() => {
                        if burst.elapsed() >= COALESCE_MAX {
                            // Still triggered: the permit was consumed, so ask again.
                            self.notify.notify_one();
                            break;
                        }
                    }
                }
            }
        }
        self.last()
    }
}

/// Quiet time that ends a burst of triggers, and the longest a burst may delay a run.
const COALESCE_QUIET: Duration = Duration::from_millis(100);
const COALESCE_MAX: Duration = Duration::from_secs(2);

/// SIGHUP: reload the configuration (and run).
pub fn spawn_signal_handlers(shared: Arc<Shared>, reload: Arc<Notify>) {
    tokio::spawn(async move {
        let Ok(mut hup) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        else {
            return;
        };
        while hup.recv().await.is_some() {
            info!("SIGHUP: reloading the configuration");
            reload.notify_one();
            shared.triggers.request(Trigger::Sighup);
        }
    });
}

/// Resolves on SIGTERM or SIGINT.
pub async fn shutdown_signal() {
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

/// Requests a run every `interval`, plus up to 10 % at random so many hosts do not poll in step.
pub fn spawn_poller(shared: Arc<Shared>, interval: Duration) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            let jitter = interval.mul_f64(rand::random::<f64>() * 0.1);
            tokio::time::sleep(interval + jitter).await;
            shared.triggers.request(Trigger::Poll);
        }
    })
}

/// Requests a run after `delay` (the earliest backed-off stack, or the source).
pub fn spawn_retry(shared: Arc<Shared>, delay: Duration) {
    tokio::spawn(async move {
        tokio::time::sleep(delay).await;
        shared.triggers.request(Trigger::Retry);
    });
}

/// Pings systemd's watchdog at half its interval, when it has one.
pub fn spawn_watchdog() {
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

/// Watches the host configuration (reload) and a local-path source (a run) with `notify`.
pub fn watch_files(
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
                shared.triggers.request(Trigger::FileChange);
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

/// The drift watches and the kinds they cover.
#[derive(Default)]
pub struct DriftWatches {
    handles: Vec<tokio::task::JoinHandle<()>>,
    kinds: Vec<String>,
    /// A watch saw a managed object change since the last look (`take_drift`): per target, so
    /// drift in one cluster makes only its target reconcile in full.
    drift: Arc<std::sync::atomic::AtomicBool>,
}

impl DriftWatches {
    /// Whether a watch saw drift since the last call (and forgets it).
    pub fn take_drift(&self) -> bool {
        self.drift.swap(false, std::sync::atomic::Ordering::SeqCst)
    }

    /// Whether any watch runs (without them, a quiet or incremental run could miss drift).
    pub fn running(&self) -> bool {
        !self.handles.is_empty()
    }

    /// (Re)starts the watches when the set of managed kinds or stacks changed.
    pub fn ensure(
        &mut self,
        client: &kube::Client,
        shared: &Shared,
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
        if kinds == self.kinds {
            return;
        }
        self.stop();
        let trigger = shared.self_ref.clone();
        let drift = Arc::clone(&self.drift);
        let on_drift: crate::cluster::watch::OnDrift =
            Arc::new(move |stack: &str, object: &str| {
                info!(
                    stack,
                    object, "live change to a managed object: reconciling"
                );
                drift.store(true, std::sync::atomic::Ordering::SeqCst);
                if let Some(shared) = trigger.upgrade() {
                    shared.triggers.request(Trigger::Drift);
                }
            });
        self.handles = crate::cluster::watch::spawn(client, &report.resources, &names, on_drift);
        self.kinds = kinds;
    }

    /// Stops every watch.
    pub fn stop(&mut self) {
        for h in self.handles.drain(..) {
            h.abort();
        }
        self.kinds.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::status::run::Provider;

    #[test]
    fn triggers_serialize_as_before() {
        for (trigger, text) in [
            (Trigger::Start, "start"),
            (Trigger::Poll, "poll"),
            (Trigger::Webhook(Provider::Github), "webhook github"),
            (Trigger::Webhook(Provider::Generic), "webhook generic"),
            (Trigger::Api, "api"),
            (Trigger::Sighup, "SIGHUP"),
            (Trigger::ConfigReload, "config reload"),
            (Trigger::FileChange, "file change"),
            (Trigger::Drift, "drift"),
            (Trigger::Retry, "retry"),
            (Trigger::Lease, "lease taken"),
        ] {
            let json = serde_json::to_string(&trigger).unwrap();
            assert_eq!(json, format!("\"{text}\""));
            assert_eq!(serde_json::from_str::<Trigger>(&json).unwrap(), trigger);
        }
        assert!(serde_json::from_str::<Trigger>("\"webhook nope\"").is_err());
    }

    #[test]
    fn only_polls_and_webhooks_are_routine_and_only_drift_and_files_burst() {
        let all = [
            Trigger::Start,
            Trigger::Poll,
            Trigger::Webhook(Provider::Gitlab),
            Trigger::Api,
            Trigger::Sighup,
            Trigger::ConfigReload,
            Trigger::FileChange,
            Trigger::Drift,
            Trigger::Retry,
        ];
        let routine: Vec<_> = all.iter().filter(|t| t.is_routine()).collect();
        assert_eq!(
            routine,
            [&Trigger::Poll, &Trigger::Webhook(Provider::Gitlab)]
        );
        let bursts: Vec<_> = all.iter().filter(|t| t.comes_in_bursts()).collect();
        assert_eq!(bursts, [&Trigger::FileChange, &Trigger::Drift]);
    }

    #[tokio::test]
    async fn the_last_request_names_the_run() {
        let t = Triggers::default();
        let a = t.request(Trigger::Drift);
        let b = t.request_revision(Trigger::Webhook(Provider::Gitea), Some("abcdef1"));
        assert_eq!(a, b, "coalesced requests share the queued run");
        t.requested().await;
        // Idle loop, not a bursty kind: runs at once with the latest reason.
        assert_eq!(t.coalesce(None).await, Trigger::Webhook(Provider::Gitea));
        let run = t.runs.get(&a).unwrap();
        assert_eq!(run.triggers, ["drift", "webhook gitea"]);
        assert_eq!(run.wanted[0].revision, "abcdef1");
    }
}
