//! The lease task: renews this daemon's Leases every `leases.renewInterval` and takes its share
//! of the revision's stacks (`cluster::lease::Coordinator`), waking the loop when it took one.
//! The loop tells it which stacks the revision has (`wanted`); reconciles check the `Fence`.

use std::sync::{Arc, Mutex};

use tokio::sync::Notify;
use tracing::warn;

use super::Shared;
use super::trigger::Trigger;
use crate::cluster::lease::{Coordinator, Fence, Settings};

/// The stacks the lease task is to hold (`None`: no revision yet: nothing is taken), and
/// whether its first round of takes is done.
#[derive(Clone)]
pub struct Wanted {
    stacks: Arc<Mutex<Option<Vec<String>>>>,
    started: tokio::sync::watch::Receiver<bool>,
}

impl Default for Wanted {
    fn default() -> Self {
        Wanted {
            stacks: Arc::default(),
            started: tokio::sync::watch::channel(true).1,
        }
    }
}

impl Wanted {
    /// The stacks to hold: the revision's, and those that left it but still have an inventory.
    pub fn set(&self, stacks: Vec<String>) {
        if let Ok(mut w) = self.stacks.lock() {
            *w = Some(stacks);
        }
    }

    fn get(&self) -> Option<Vec<String>> {
        self.stacks.lock().map(|g| g.clone()).unwrap_or_default()
    }

    /// Waits (at most `timeout`) until the task took its first share of the stacks, so the
    /// daemon's first reconcile writes what it holds instead of nothing.
    pub async fn started(&self, timeout: std::time::Duration) {
        let mut started = self.started.clone();
        let _ = tokio::time::timeout(timeout, started.wait_for(|s| *s)).await;
    }
}

/// Writes the holder (as last seen) of each stack of `target` and this daemon's identity into
/// the status.
pub fn record_holders(st: &mut super::status::Status, target: &str, fence: &Fence) {
    let holders = fence.holders();
    st.identity = Some(fence.identity());
    for s in st.stacks.iter_mut().filter(|s| s.target == target) {
        s.holder = holders.get(&s.name).cloned();
    }
}

/// The running lease task.
pub struct LeaseTask {
    wanted: Wanted,
    stop: Arc<Notify>,
    handle: tokio::task::JoinHandle<()>,
}

impl LeaseTask {
    /// Starts the task for `instance` on the cluster of the target `name`, with `fence` shared
    /// with the loop.
    /// `started_tx` turns true once the first round of takes is done (see `Wanted::started`;
    /// the jobs scheduler waits for it too).
    pub fn spawn(
        shared: Arc<Shared>,
        name: String,
        target: crate::cluster::Target,
        instance: String,
        settings: Settings,
        fence: Fence,
        started_tx: tokio::sync::watch::Sender<bool>,
    ) -> LeaseTask {
        let wanted = Wanted {
            stacks: Arc::default(),
            started: started_tx.subscribe(),
        };
        let stop = Arc::new(Notify::new());
        let (w, s) = (wanted.clone(), stop.clone());
        let span = tracing::info_span!("leases", target = %name);
        let handle = tokio::spawn(tracing::Instrument::instrument(
            async move {
                let renew = settings.renew;
                let client = loop {
                    match crate::cluster::connect(&target).await {
                        Ok(c) => break c,
                        Err(e) => {
                            warn!("leases: {e}");
                            tokio::select! {
                                _ = tokio::time::sleep(renew) => continue,
                                _ = s.notified() => return,
                            }
                        }
                    }
                };
                let mut coordinator = Coordinator::new(client, &instance, settings, fence, true);
                let mut interval = tokio::time::interval(renew);
                // After a pause (SIGSTOP, a suspended host) renew once, not once per missed tick.
                interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    tokio::select! {
                        _ = interval.tick() => {}
                        _ = s.notified() => {
                            coordinator.release_all().await;
                            return;
                        }
                    }
                    let wanted = w.get();
                    let tick = coordinator.tick(wanted.as_deref()).await;
                    record_holders(
                        &mut *shared.status.write().await,
                        &name,
                        &coordinator.fence(),
                    );
                    // The first round's takes are awaited by the first reconcile; later ones wake
                    // the loop.
                    if *started_tx.borrow() && !tick.taken.is_empty() {
                        shared.triggers.request(Trigger::Lease);
                    }
                    if wanted.is_some() && coordinator.may_take() {
                        started_tx.send_replace(true);
                    }
                }
            },
            span,
        ));
        LeaseTask {
            wanted,
            stop,
            handle,
        }
    }

    /// The handle that tells the task which stacks to hold.
    pub fn wanted(&self) -> Wanted {
        self.wanted.clone()
    }

    /// Releases every Lease held (others take the stacks at once) and stops; gives up after
    /// `timeout` (the Leases then expire by themselves).
    pub async fn stop(self, timeout: std::time::Duration) {
        self.stop.notify_one();
        let mut handle = self.handle;
        if tokio::time::timeout(timeout, &mut handle).await.is_err() {
            handle.abort();
        }
    }
}
