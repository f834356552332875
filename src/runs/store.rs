//! The runs a daemon keeps: the queued run (triggers join it until the loop starts it), the
//! running one, and the last finished ones — at most [`Limits::max_runs`] and
//! [`Limits::max_bytes`] of JSON, the oldest dropped first — persisted to `<stateDir>/runs.json`
//! after each run, read back at start. A file that is corrupt or larger than the bound is moved
//! aside (`runs.corrupt`), never a crash. Waiters are woken when a run finishes.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use super::{Run, RunState};

/// The file under the state directory.
pub const RUNS_FILE: &str = "runs.json";

/// How much history is kept.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_runs: usize,
    /// Bytes of JSON of all finished runs together (the newest run is always kept).
    pub max_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_runs: 200,
            max_bytes: 16 * 1024 * 1024,
        }
    }
}

/// The persisted form.
#[derive(Serialize, Deserialize)]
struct File {
    /// Oldest first.
    runs: Vec<Run>,
}

#[derive(Default)]
struct Inner {
    queued: Option<Run>,
    running: Option<Run>,
    /// Oldest first, with each run's JSON size.
    finished: VecDeque<(Run, usize)>,
    bytes: usize,
}

/// The runs of one daemon. Cheap to share (`Arc`); every method takes `&self`.
pub struct Store {
    inner: Mutex<Inner>,
    path: Option<PathBuf>,
    limits: Limits,
    /// Bumped when a run finishes (or starts): waiters watch it.
    changed: watch::Sender<u64>,
    /// Every object of each stack as the last runs saw them (the stack page).
    objects: super::objects::ObjectIndex,
}

impl Default for Store {
    fn default() -> Self {
        Store::in_memory(Limits::default())
    }
}

impl Store {
    /// A store that persists nothing (tests, one-shot commands).
    pub fn in_memory(limits: Limits) -> Store {
        Store {
            inner: Mutex::new(Inner::default()),
            path: None,
            limits,
            changed: watch::channel(0).0,
            objects: super::objects::ObjectIndex::default(),
        }
    }

    /// The store of `state_dir`, with the runs persisted there. Returns a warning when the file
    /// could not be used (it was moved aside).
    pub fn open(state_dir: &Path, limits: Limits) -> (Store, Option<String>) {
        let path = state_dir.join(RUNS_FILE);
        let mut store = Store::in_memory(limits);
        let mut warning = None;
        // The file is written compact within the bound; twice it is not ours to read.
        let too_large = std::fs::metadata(&path)
            .map(|m| m.len() > (limits.max_bytes as u64).saturating_mul(2) + 4096)
            .unwrap_or(false);
        let loaded = if too_large {
            let aside = path.with_extension("corrupt");
            let _ = std::fs::rename(&path, &aside);
            warning = Some(format!(
                "{}: larger than the runs history may be; moved to {}",
                path.display(),
                aside.display()
            ));
            Vec::new()
        } else {
            match crate::state::read_json::<File>(&path) {
                crate::state::Loaded::Ok(f) => f.runs,
                crate::state::Loaded::Missing => Vec::new(),
                crate::state::Loaded::Corrupt(e) => {
                    warning = Some(format!("runs history: {e}"));
                    Vec::new()
                }
            }
        };
        {
            let inner = store.inner.get_mut().unwrap_or_else(|e| e.into_inner());
            for run in loaded {
                // Only finished runs with a usable id are history; a run cut off by a crash
                // was never written.
                if run.state.finished() && super::valid_id(&run.id) {
                    push(inner, run, limits);
                }
            }
        }
        store.path = Some(path);
        (store, warning)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves plain data behind: still usable.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Asks for a run because of `trigger` (wanting `revision`, when given): joins the queued
    /// run, or queues a new one. Returns the run's id.
    pub fn enqueue(&self, trigger: &str, revision: Option<&str>) -> String {
        let mut inner = self.lock();
        if let Some(run) = inner.queued.as_mut() {
            run.join(trigger, revision);
            return run.id.clone();
        }
        let id = new_id(&inner, Utc::now());
        let mut run = Run::queued(id.clone(), trigger, Utc::now());
        run.join(trigger, revision);
        inner.queued = Some(run);
        id
    }

    /// The loop starts the queued run (one is queued for `trigger` when none is). Returns its id.
    pub fn start(&self, trigger: &str, now: DateTime<Utc>) -> String {
        let mut inner = self.lock();
        let mut run = match inner.queued.take() {
            Some(r) => r,
            None => Run::queued(new_id(&inner, now), trigger, now),
        };
        run.state = RunState::Running;
        run.started_at = Some(now);
        let id = run.id.clone();
        inner.running = Some(run);
        drop(inner);
        self.changed.send_modify(|n| *n += 1);
        id
    }

    /// Ends the running run: `fill` completes the record; it becomes history, is persisted and
    /// wakes the waiters. Returns the finished record.
    pub fn finish(&self, fill: impl FnOnce(&mut Run)) -> Option<Run> {
        let mut inner = self.lock();
        let mut run = inner.running.take()?;
        fill(&mut run);
        if !run.state.finished() {
            run.state = RunState::Failed;
        }
        push(&mut inner, run.clone(), self.limits);
        let file = File {
            runs: inner.finished.iter().map(|(r, _)| r.clone()).collect(),
        };
        drop(inner);
        // Compact, so the file's size is the bound the history keeps (and `open` checks).
        if let Some(path) = &self.path
            && let Err(e) = serde_json::to_vec(&file)
                .map_err(|e| e.to_string())
                .and_then(|bytes| {
                    crate::state::write_bytes(path, &bytes).map_err(|e| e.to_string())
                })
        {
            tracing::warn!("runs history: {e}");
        }
        self.changed.send_modify(|n| *n += 1);
        Some(run)
    }

    /// Folds the running run's reconcile report into the object index; `keep` names the
    /// revision's stacks (others are dropped).
    pub fn record_objects(
        &self,
        report: &crate::reconcile::Report,
        plan_only: &[String],
        keep: &[String],
        now: DateTime<Utc>,
    ) {
        let (id, drift) = match &self.lock().running {
            Some(r) => (r.id.clone(), r.triggers.iter().any(|t| t == "drift")),
            None => return,
        };
        self.objects
            .record(report, plan_only, (&id, drift), now, keep);
    }

    /// The objects of stack `name` as the last runs saw them.
    pub fn stack_objects(&self, name: &str) -> Option<super::objects::StackObjects> {
        self.objects.get(name)
    }

    /// The run `id`, queued, running or finished.
    pub fn get(&self, id: &str) -> Option<Run> {
        let inner = self.lock();
        inner
            .queued
            .iter()
            .chain(inner.running.iter())
            .chain(inner.finished.iter().map(|(r, _)| r))
            .find(|r| r.id == id)
            .cloned()
    }

    /// The newest `limit` runs, newest first (queued and running ones included), without diffs.
    pub fn list(&self, limit: usize) -> Vec<Run> {
        let inner = self.lock();
        inner
            .queued
            .iter()
            .chain(inner.running.iter())
            .chain(inner.finished.iter().rev().map(|(r, _)| r))
            .take(limit)
            .map(Run::without_diffs)
            .collect()
    }

    /// Waits up to `timeout` for run `id` to finish; returns it as it is then (`None`: no such
    /// run).
    pub async fn wait(&self, id: &str, timeout: Duration) -> Option<Run> {
        let mut changes = self.changed.subscribe();
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            // Marked seen before the look: a change after it wakes the next `changed()`.
            changes.borrow_and_update();
            let run = self.get(id)?;
            if run.state.finished() {
                return Some(run);
            }
            match tokio::time::timeout_at(deadline, changes.changed()).await {
                Ok(Ok(())) => {}
                // Timed out (or the store is gone): the run as it is.
                _ => return self.get(id),
            }
        }
    }
}

/// Adds a finished run, dropping the oldest beyond the limits.
fn push(inner: &mut Inner, run: Run, limits: Limits) {
    let size = serde_json::to_vec(&run).map_or(0, |v| v.len());
    inner.finished.retain(|(r, _)| r.id != run.id);
    inner.finished.push_back((run, size));
    inner.bytes = inner.finished.iter().map(|(_, s)| s).sum();
    while inner.finished.len() > 1
        && (inner.finished.len() > limits.max_runs || inner.bytes > limits.max_bytes)
    {
        if let Some((_, s)) = inner.finished.pop_front() {
            inner.bytes -= s;
        }
    }
}

/// A new id: the time and four random hex digits, e.g. `20261206T141203Z-3f9a`; unique among
/// the runs held.
fn new_id(inner: &Inner, now: DateTime<Utc>) -> String {
    loop {
        let id = format!(
            "{}-{:04x}",
            now.format("%Y%m%dT%H%M%SZ"),
            rand::random::<u16>()
        );
        let taken = inner
            .queued
            .iter()
            .chain(inner.running.iter())
            .chain(inner.finished.iter().map(|(r, _)| r))
            .any(|r| r.id == id);
        if !taken {
            return id;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn finish_one(store: &Store, trigger: &str) -> Run {
        store.enqueue(trigger, None);
        store.start(trigger, Utc::now());
        store
            .finish(|r| r.state = RunState::Succeeded)
            .expect("a running run")
    }

    #[test]
    fn triggers_before_the_start_share_one_run_and_later_ones_get_the_next() {
        let store = Store::default();
        let a = store.enqueue("webhook github", Some("abcdef1"));
        let b = store.enqueue("api", Some("abcdef1"));
        let c = store.enqueue("webhook github", Some("1234567"));
        assert_eq!(a, b);
        assert_eq!(a, c);
        assert_eq!(store.start("poll", Utc::now()), a);
        let run = store.get(&a).unwrap();
        assert_eq!(run.state, RunState::Running);
        assert_eq!(run.triggers, ["webhook github", "api"]);
        let wanted: Vec<_> = run.wanted.iter().map(|w| w.revision.as_str()).collect();
        assert_eq!(wanted, ["abcdef1", "1234567"]);
        // A request while it runs queues the next run.
        let d = store.enqueue("api", None);
        assert_ne!(d, a);
        assert!(super::super::valid_id(&d), "{d}");
        store.finish(|r| r.state = RunState::Succeeded);
        assert_eq!(store.get(&a).unwrap().state, RunState::Succeeded);
        assert_eq!(store.get(&d).unwrap().state, RunState::Queued);
        let listed: Vec<_> = store.list(10).into_iter().map(|r| r.id).collect();
        assert_eq!(listed, [d, a]);
    }

    #[test]
    fn history_is_bounded_by_count_and_bytes_and_survives_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let limits = Limits {
            max_runs: 3,
            max_bytes: 1 << 20,
        };
        let (store, warning) = Store::open(dir.path(), limits);
        assert!(warning.is_none());
        let ids: Vec<String> = (0..5).map(|_| finish_one(&store, "poll").id).collect();
        let kept: Vec<_> = store.list(10).into_iter().map(|r| r.id).collect();
        assert_eq!(kept, [ids[4].clone(), ids[3].clone(), ids[2].clone()]);
        let (again, warning) = Store::open(dir.path(), limits);
        assert!(warning.is_none());
        let reread: Vec<_> = again.list(10).into_iter().map(|r| r.id).collect();
        assert_eq!(reread, kept);

        // By bytes: a budget of about two runs keeps two; the newest always stays.
        let one = serde_json::to_vec(&store.get(&ids[4]).unwrap())
            .unwrap()
            .len();
        let small = Store::in_memory(Limits {
            max_runs: 100,
            max_bytes: one * 2 + one / 2,
        });
        for _ in 0..4 {
            finish_one(&small, "poll");
        }
        assert_eq!(small.list(10).len(), 2);
        let tiny = Store::in_memory(Limits {
            max_runs: 100,
            max_bytes: 1,
        });
        finish_one(&tiny, "poll");
        assert_eq!(tiny.list(10).len(), 1);
    }

    #[test]
    fn a_corrupt_or_huge_file_is_moved_aside() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(RUNS_FILE);
        std::fs::write(&path, b"{\"runs\": [ torn").unwrap();
        let (store, warning) = Store::open(dir.path(), Limits::default());
        assert!(warning.unwrap().contains("runs.json"));
        assert!(store.list(10).is_empty());
        assert!(dir.path().join("runs.corrupt").exists());
        assert!(!path.exists());

        let limits = Limits {
            max_runs: 10,
            max_bytes: 1000,
        };
        std::fs::write(&path, vec![b' '; 10_000]).unwrap();
        let (store, warning) = Store::open(dir.path(), limits);
        assert!(warning.unwrap().contains("larger"));
        assert!(store.list(10).is_empty());
        assert!(!path.exists());
        // And the store still works and persists.
        finish_one(&store, "start");
        assert!(path.exists());
    }

    #[tokio::test]
    async fn a_waiter_wakes_when_its_run_finishes_and_gives_up_at_its_deadline() {
        let store = std::sync::Arc::new(Store::default());
        let id = store.enqueue("api", None);
        assert_eq!(store.wait("nope", Duration::from_millis(10)).await, None);
        let early = store.wait(&id, Duration::from_millis(20)).await.unwrap();
        assert_eq!(early.state, RunState::Queued);
        let waiter = {
            let (store, id) = (store.clone(), id.clone());
            tokio::spawn(async move { store.wait(&id, Duration::from_secs(60)).await })
        };
        store.start("api", Utc::now());
        store.finish(|r| r.state = RunState::Failed);
        let done = waiter.await.unwrap().unwrap();
        assert_eq!(done.state, RunState::Failed);
    }
}
