//! Sync hooks (`spec.hooks.postSync`): Jobs run after a stack was applied and became healthy,
//! before its dependents. A hook runs again only when its definition changed or its last run did
//! not succeed; the last run of each hook is recorded in the stack's inventory.
//!
//! `decide` is pure; `run_post_sync` carries the decisions out against the cluster.

use std::time::{Duration, Instant};

use kube::Client;
use serde::Serialize;
use serde_json::Value;
use tracing::{info, warn};

use crate::cluster::Error as ClusterError;
use crate::cluster::apply::{self, ApplyParams};
use crate::cluster::discovery::Kinds;
use crate::cluster::inventory::{self, HookRecord, Inventory};
use crate::cluster::wait;
use crate::plan::KeptObject;
use crate::plan::ownership::{self, Owner, Role};
use crate::stack::model::HookDeletePolicy;
use crate::stack::{ObjectKey, RenderedHook};

/// Why a hook runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum RunReason {
    /// It never ran (or its record is gone).
    New,
    /// Its definition changed since it last ran.
    Changed,
    /// Its last run of this definition failed.
    LastFailed,
}

impl std::fmt::Display for RunReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            RunReason::New => "never ran",
            RunReason::Changed => "definition changed",
            RunReason::LastFailed => "last run failed",
        })
    }
}

/// Whether a hook with definition `hash` runs, given its last recorded run. Pure.
pub fn decide(record: Option<&HookRecord>, hash: &str) -> Option<RunReason> {
    match record {
        None => Some(RunReason::New),
        Some(r) if r.hash != hash => Some(RunReason::Changed),
        Some(r) if !r.succeeded => Some(RunReason::LastFailed),
        Some(_) => None,
    }
}

/// What happened to one hook in a reconcile.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct HookOutcome {
    /// `Job/namespace/name`.
    pub job: String,
    /// The hook's file.
    pub file: String,
    /// Why it ran (or would run); absent when it was unchanged and did not run.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<RunReason>,
    /// Whether it ran in this reconcile (false for a dry run and for an unchanged hook).
    pub ran: bool,
    /// The outcome of the run, when it ran.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub succeeded: Option<bool>,
    /// Why it failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// How long the run took.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub seconds: Option<f64>,
}

/// Record key of a hook: `namespace/name` of its Job.
fn record_key(hook: &RenderedHook) -> String {
    format!(
        "{}/{}",
        hook.job.key.namespace.as_deref().unwrap_or_default(),
        hook.job.key.name
    )
}

/// The hooks of a dry run: which would run, and why.
pub fn plan(hooks: &[RenderedHook], inventory: &Inventory) -> Vec<HookOutcome> {
    hooks
        .iter()
        .map(|h| HookOutcome {
            job: h.job.key.to_string(),
            file: h.job.place.file.display().to_string(),
            reason: decide(inventory.hooks.get(&record_key(h)), &h.hash),
            ran: false,
            succeeded: None,
            message: None,
            seconds: None,
        })
        .collect()
}

/// What running a stack's post-sync hooks did.
#[derive(Debug, Default)]
pub struct PostSync {
    /// One outcome per declared hook, in order.
    pub hooks: Vec<HookOutcome>,
    /// The first failure, which holds the stack's dependents back.
    pub failure: Option<String>,
    /// Jobs of hooks no longer declared that are not deleted: not this stack's of this instance.
    pub kept: Vec<KeptObject>,
}

/// Runs `owner`'s post-sync hooks in order, stopping at the first failure, and records each run
/// in `record` (written to the cluster after each run). Hooks no longer declared leave the
/// record, and their Jobs are deleted when they are `owner`'s (`plan::ownership`: the hook label
/// and the instance mark; the record alone is not trusted).
pub async fn run_post_sync(
    client: &Client,
    kinds: &Kinds,
    owner: Owner<'_>,
    hooks: &[RenderedHook],
    record: &mut Inventory,
) -> Result<PostSync, ClusterError> {
    let stack = owner.stack;
    let resolved = kinds
        .resolve("batch/v1", "Job")
        .ok_or_else(|| ClusterError::UnknownKind {
            place: format!("stack {stack}, spec.hooks"),
            api_version: "batch/v1".to_owned(),
            kind: "Job".to_owned(),
        })?;
    let mut done = PostSync::default();
    let declared: Vec<String> = hooks.iter().map(record_key).collect();
    let gone: Vec<String> = record
        .hooks
        .keys()
        .filter(|k| !declared.contains(k))
        .cloned()
        .collect();
    for key in gone {
        let (ns, name) = key.split_once('/').unwrap_or(("", key.as_str()));
        let job = ObjectKey {
            group: "batch".to_owned(),
            kind: "Job".to_owned(),
            namespace: Some(ns.to_owned()),
            name: name.to_owned(),
        };
        let what = job.to_string();
        let api = resolved.api(client, Some(ns));
        if let Some(live) = apply::get(&api, name, &what).await? {
            match ownership::check(&live, owner, Role::HookJob) {
                Ok(target) => {
                    apply::delete(&api, &target, &what).await?;
                    info!(stack, job = %what, "hook no longer declared: its Job is deleted");
                }
                Err(reason) => {
                    warn!(stack, job = %what, "hook no longer declared; its Job is kept: {reason}");
                    done.kept.push(KeptObject {
                        key: job,
                        reason: reason.to_string(),
                    });
                }
            }
        }
        record.hooks.remove(&key);
        inventory::write(client, record).await?;
    }

    done.hooks = plan(hooks, record);
    let how = ApplyParams {
        force: true,
        dry_run: false,
        instance: owner.instance,
    };
    for (hook, outcome) in hooks.iter().zip(done.hooks.iter_mut()) {
        let Some(reason) = outcome.reason else {
            continue;
        };
        let api = resolved.api(client, hook.job.key.namespace.as_deref());
        let what = hook.job.key.to_string();
        info!(stack, job = %what, "running hook ({reason})");
        let start = Instant::now();
        // A Job's pod template is immutable: a previous run's Job is replaced, never patched.
        if let Some(previous) = apply::get(&api, &hook.job.key.name, &what).await? {
            match ownership::check(&previous, owner, Role::HookJob) {
                Ok(target) => {
                    if apply::delete(&api, &target, &what).await? {
                        wait::gone(&api, &hook.job.key.name, &what, "to run its hook again")
                            .await?;
                    }
                }
                Err(why) => {
                    let m = format!("a Job of that name exists and is not replaced: {why}");
                    warn!(stack, job = %what, "hook not run: {m}");
                    outcome.message = Some(m.clone());
                    done.failure = Some(format!("hook {what} ({}): {m}", outcome.file));
                    return Ok(done);
                }
            }
        }
        let (applied, _) = apply::apply(&api, &hook.job, how).await?;
        let result = wait_finished(&api, &hook.job.key.name, &what, hook.spec.timeout).await?;
        let seconds = start.elapsed().as_secs_f64();
        let succeeded = result.is_ok();
        let message = result.err();
        outcome.ran = true;
        outcome.succeeded = Some(succeeded);
        outcome.message = message.clone();
        outcome.seconds = Some((seconds * 10.0).round() / 10.0);
        record.hooks.insert(
            record_key(hook),
            HookRecord {
                hash: hook.hash.clone(),
                succeeded,
                finished_at: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                message: message.clone(),
            },
        );
        inventory::write(client, record).await?;
        let delete = match hook.spec.delete_policy {
            HookDeletePolicy::Always => true,
            HookDeletePolicy::OnSuccess => succeeded,
            HookDeletePolicy::Never => false,
        };
        if delete {
            // The Job just created, by the uid it was created with.
            match ownership::check(&applied, owner, Role::HookJob) {
                Ok(target) => {
                    apply::delete(&api, &target, &what).await?;
                }
                Err(why) => warn!(stack, job = %what, "the hook's Job is not deleted: {why}"),
            }
        }
        match message {
            None => info!(stack, job = %what, seconds, "hook succeeded"),
            Some(m) => {
                warn!(stack, job = %what, "hook failed: {m}");
                done.failure = Some(format!(
                    "hook {what} ({}) failed: {m}{}",
                    outcome.file,
                    if delete {
                        ""
                    } else {
                        "; the Job is kept for inspection"
                    }
                ));
                return Ok(done);
            }
        }
    }
    Ok(done)
}

/// Polls a Job until its `Complete` or `Failed` condition is true, or `timeout` passed.
/// `Ok(Ok(()))` when it completed, `Ok(Err(message))` when it failed or timed out.
async fn wait_finished(
    api: &kube::Api<kube::api::DynamicObject>,
    name: &str,
    what: &str,
    timeout: Duration,
) -> Result<Result<(), String>, ClusterError> {
    let start = Instant::now();
    let mut delay = Duration::from_millis(100);
    loop {
        let Some(job) = apply::get(api, name, what).await? else {
            return Ok(Err("the Job was deleted before it finished".to_owned()));
        };
        if let Some(verdict) = job_verdict(&job) {
            return Ok(verdict);
        }
        if start.elapsed() >= timeout {
            return Ok(Err(format!(
                "did not finish within its timeout of {}s",
                timeout.as_secs()
            )));
        }
        tokio::time::sleep(delay.min(timeout.saturating_sub(start.elapsed()))).await;
        delay = (delay * 2).min(Duration::from_secs(1));
    }
}

/// A finished Job's verdict from its conditions; `None` while it runs. Pure.
fn job_verdict(job: &Value) -> Option<Result<(), String>> {
    let conditions = job.pointer("/status/conditions")?.as_array()?;
    let is_true = |type_: &str| {
        conditions.iter().find(|c| {
            c.get("type").and_then(Value::as_str) == Some(type_)
                && c.get("status").and_then(Value::as_str) == Some("True")
        })
    };
    if is_true("Complete").is_some() {
        return Some(Ok(()));
    }
    let failed = is_true("Failed")?;
    let text = |k: &str| failed.get(k).and_then(Value::as_str).unwrap_or_default();
    Some(Err(match (text("reason"), text("message")) {
        ("", "") => "the Job failed".to_owned(),
        (reason, "") => format!("the Job failed ({reason})"),
        ("", message) => format!("the Job failed: {message}"),
        (reason, message) => format!("the Job failed ({reason}): {message}"),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn record(hash: &str, succeeded: bool) -> HookRecord {
        HookRecord {
            hash: hash.to_owned(),
            succeeded,
            finished_at: "2026-11-22T05:00:00Z".to_owned(),
            message: None,
        }
    }

    #[test]
    fn a_hook_runs_when_new_changed_or_last_failed() {
        let cases = [
            (None, "sha256:a", Some(RunReason::New)),
            (Some(record("sha256:a", true)), "sha256:a", None),
            (
                Some(record("sha256:a", true)),
                "sha256:b",
                Some(RunReason::Changed),
            ),
            (
                Some(record("sha256:a", false)),
                "sha256:a",
                Some(RunReason::LastFailed),
            ),
            (
                Some(record("sha256:a", false)),
                "sha256:b",
                Some(RunReason::Changed),
            ),
        ];
        for (rec, hash, want) in cases {
            assert_eq!(decide(rec.as_ref(), hash), want, "{rec:?} {hash}");
        }
    }

    #[test]
    fn job_verdicts() {
        let cond = |t: &str, s: &str, reason: &str, message: &str| json!({"status": {"conditions": [{"type": t, "status": s, "reason": reason, "message": message}]}});
        assert_eq!(job_verdict(&json!({})), None);
        assert_eq!(job_verdict(&json!({"status": {"active": 1}})), None);
        assert_eq!(job_verdict(&cond("Complete", "True", "", "")), Some(Ok(())));
        assert_eq!(job_verdict(&cond("Complete", "False", "", "")), None);
        assert_eq!(
            job_verdict(&cond(
                "Failed",
                "True",
                "DeadlineExceeded",
                "Job was active longer than specified deadline"
            )),
            Some(Err(
                "the Job failed (DeadlineExceeded): Job was active longer than specified deadline"
                    .to_owned()
            ))
        );
        assert_eq!(
            job_verdict(&cond("Failed", "True", "", "")),
            Some(Err("the Job failed".to_owned()))
        );
        // Kubernetes ≥ 1.31 adds SuccessCriteriaMet/FailureTarget before the terminal condition.
        assert_eq!(
            job_verdict(&cond("FailureTarget", "True", "BackoffLimitExceeded", "")),
            None
        );
    }
}
