//! A CLI `sync`'s hold on the Leases of the stacks it writes: taken before it writes (refused,
//! or waited for, when another process holds one), renewed by a task while it runs, released
//! at the end.

use std::time::Duration;

use kube::Client;
use tracing::info;

use super::{Coordinator, Fence, Settings};
use crate::cluster::{Error, Result};
use crate::plan::lease::Standing;

/// Rounds a sync tries to take a free Lease before giving up (without `--wait-lease`).
const RACES: u32 = 3;

/// The Leases a CLI `sync` holds while it runs: renewed by a task of their own.
pub struct SyncLeases {
    fence: Fence,
    stop: std::sync::Arc<tokio::sync::Notify>,
    handle: tokio::task::JoinHandle<()>,
}

impl SyncLeases {
    /// Takes the Leases of `stacks` for a one-shot sync. A stack held by a live holder is
    /// refused naming it (`Error::LeaseHeld`), unless `wait`: then it waits for the holder to
    /// let go (or for its Lease to expire). The Leases of `optional` stacks are taken when free
    /// (a stack not taken is not written). What was taken is renewed until `release`.
    pub async fn take(
        client: Client,
        instance: &str,
        settings: Settings,
        stacks: &[String],
        optional: &[String],
        wait: bool,
    ) -> Result<SyncLeases> {
        let all: Vec<String> = stacks.iter().chain(optional).cloned().collect();
        let fence = Fence::new(&settings);
        let renew = settings.renew;
        let mut coordinator = Coordinator::new(client, instance, settings, fence.clone(), false);
        let mut waiting_logged = false;
        // A free Lease another taker won between the read and the write: tried again.
        let mut races = 0;
        loop {
            let tick = coordinator.tick(Some(&all)).await;
            let held_elsewhere = stacks.iter().find_map(|s| match tick.standings.get(s) {
                Some(Standing::Held(h)) => Some((s.clone(), h.clone())),
                _ => None,
            });
            let missing = stacks.iter().find(|s| !fence.holds(s));
            match (held_elsewhere, missing) {
                (_, None) => break,
                (Some((stack, holder)), Some(_)) if !wait => {
                    coordinator.release_all().await;
                    return Err(Error::LeaseHeld { stack, holder });
                }
                (Some((stack, holder)), Some(_)) => {
                    if !waiting_logged {
                        info!(stack = %stack, "waiting for the lease of stack {stack}, held by {holder}");
                        waiting_logged = true;
                    }
                }
                (None, Some(stack)) if !wait && races >= RACES => {
                    coordinator.release_all().await;
                    return Err(fence.check(stack).err().unwrap_or(Error::LeaseLost {
                        stack: stack.clone(),
                        holder: "nobody".to_owned(),
                    }));
                }
                (None, Some(_)) => races += 1,
            }
            tokio::time::sleep(renew).await;
        }
        let stop = std::sync::Arc::new(tokio::sync::Notify::new());
        let (s, wanted) = (stop.clone(), all);
        let handle = tokio::spawn(async move {
            let mut interval = tokio::time::interval(renew);
            interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            interval.tick().await;
            loop {
                tokio::select! {
                    _ = interval.tick() => {}
                    _ = s.notified() => {
                        coordinator.release_all().await;
                        return;
                    }
                }
                coordinator.tick(Some(&wanted)).await;
            }
        });
        Ok(SyncLeases {
            fence,
            stop,
            handle,
        })
    }

    /// The fence the sync's reconcile checks.
    pub fn fence(&self) -> Fence {
        self.fence.clone()
    }

    /// Gives the Leases back (a daemon takes its stacks again at its next renewal).
    pub async fn release(self) {
        self.stop.notify_one();
        let mut handle = self.handle;
        if tokio::time::timeout(Duration::from_secs(10), &mut handle)
            .await
            .is_err()
        {
            handle.abort();
        }
    }
}
