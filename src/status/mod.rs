//! What the daemon reports: the status document served at `/api/v1/status`, rendered at `/`,
//! printed by `driftless status`, and kept in the state directory across restarts.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

pub mod metrics;
pub mod run;

use crate::source::Revision;
use run::{Mode, Trigger};

/// The daemon's overall state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum DaemonState {
    /// No revision has loaded yet.
    #[default]
    Starting,
    /// The last reconcile succeeded for every stack.
    Ready,
    /// Something needs attention: the source, a stack, or the cluster (see `errors`, `stacks`).
    Degraded,
}

/// The whole status document.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Status {
    pub instance: String,
    /// This daemon's Lease holder identity (`leases.identity`, else host name and a suffix).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity: Option<String>,
    pub state: DaemonState,
    pub started_at: Option<DateTime<Utc>>,
    /// The source: a Git URL and ref, or a local path.
    pub source: String,
    /// The newest revision fetched.
    pub revision: Option<Revision>,
    /// The revision whose desired state is being reconciled (the last one that loaded and
    /// rendered); it differs from `revision` when a newer one is broken.
    pub applied_revision: Option<Revision>,
    pub last_reconcile: Option<ReconcileSummary>,
    /// The targets (clusters) this daemon serves; one named `default` for the shorthand.
    #[serde(default)]
    pub targets: Vec<TargetStatus>,
    pub stacks: Vec<StackStatus>,
    /// Problems outside any one stack (source unreachable, revision fails to render, cluster down).
    pub errors: Vec<String>,
    /// The followed ref (`branch main`, `tag v1.2`) when the remote no longer has it: the
    /// daemon is degraded and the last good revision stays applied (nothing is pruned for it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub missing_ref: Option<String>,
    /// Scheduled jobs of the applied revision and their last runs.
    #[serde(default)]
    pub jobs: Vec<JobStatus>,
    /// The newest revision refused by `source.git.verify` (cleared when one verifies).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unverified: Option<UnverifiedRevision>,
}

/// A revision not applied because its signature did not verify.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct UnverifiedRevision {
    /// The commit the followed ref points to.
    pub sha: String,
    /// What was checked: `commit <sha>` or `tag <name> (<sha>)`.
    pub object: String,
    /// The signer as far as the signature names it.
    pub signer: Option<String>,
    pub reason: String,
}

/// One scheduled job.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct JobStatus {
    pub name: String,
    pub kind: String,
    pub stack: String,
    pub schedule: String,
    pub time_zone: String,
    pub next_run: Option<DateTime<Utc>>,
    pub running: bool,
    pub last_run: Option<crate::jobs::runs::RunRecord>,
    /// End of the last successful run that changed something (not a dry run).
    pub last_success: Option<DateTime<Utc>>,
    /// Backup jobs: start of the newest complete backup (as the last run found it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_complete_backup: Option<DateTime<Utc>>,
    /// Backup jobs: why the newest complete backup is too old (`maxAge`); makes status degraded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub overdue: Option<String>,
}

/// One reconcile run.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ReconcileSummary {
    /// What asked for the run (`start`, `poll`, `webhook github`, `drift`, ...).
    pub trigger: Trigger,
    pub started_at: DateTime<Utc>,
    pub duration_ms: u64,
    pub ok: bool,
    /// `quiet` (same revision, watches quiet: nothing asked of the cluster), `incremental` (a
    /// new revision: only the objects whose desired state changed), or `full`.
    #[serde(default)]
    pub mode: Mode,
    /// Wall time of each phase in milliseconds, in order: `fetch` (Git), `render` (load, render
    /// and the policies of a new revision), `cluster` (plan, apply, prune, wait, hooks),
    /// `record` (status, inventories of stacks that left, watches).
    #[serde(default)]
    pub phases_ms: Vec<(String, u64)>,
}

/// One target: a cluster, its profile and where its last run left it.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TargetStatus {
    pub name: String,
    /// Its cluster: `context NAME`, `kubeconfig PATH` or `default kubeconfig`.
    pub cluster: String,
    pub profile: Option<String>,
    /// `ready`, or `degraded` when its cluster cannot be reached or a stack of it fails (see
    /// `errors` and its stacks); `starting` before its first run.
    pub state: DaemonState,
    /// Problems of this target outside any one stack (its cluster unreachable, ...).
    #[serde(default)]
    pub errors: Vec<String>,
    /// Notes that need no action now (a `stacks` pattern matching no stack).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
    /// How its last run went (`quiet`, `incremental`, `full`).
    #[serde(default)]
    pub mode: Mode,
    pub last_run_at: Option<DateTime<Utc>>,
}

fn default_target() -> String {
    crate::targets::DEFAULT.to_owned()
}

/// One stack.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StackStatus {
    pub name: String,
    /// The target (cluster) this stack status is of: a stack taken by two targets has one
    /// entry per target.
    #[serde(default = "default_target")]
    pub target: String,
    pub state: StackState,
    /// When the stack last changed something in the cluster.
    pub last_change: Option<DateTime<Utc>>,
    pub last_sync: Option<DateTime<Utc>>,
    pub managed_objects: usize,
    /// Objects whose live state differs from the desired state (found, and re-applied unless
    /// the stack has `selfHeal: false`).
    pub drifted: usize,
    pub last_plan: PlanCounts,
    pub error: Option<String>,
    /// With repeated failures: when the stack is tried again.
    pub retry_at: Option<DateTime<Utc>>,
    pub consecutive_failures: u32,
    /// Who holds the stack's Lease, as last seen (this daemon's identity when it is this one;
    /// none when nobody does). Only the holder writes the stack.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub holder: Option<String>,
}

/// Where one stack stands; serialized as the lowercase name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StackState {
    /// In the revision, not reconciled yet.
    Pending,
    /// Applied and healthy.
    Synced,
    /// Live objects differ from the revision and are left so (`selfHeal: false`).
    Drifted,
    /// Its reconcile failed (see `error`), or it was skipped because a dependency failed.
    Failed,
    /// Applied, but objects were not healthy at the end of the wait.
    Unhealthy,
    /// Waiting out its backoff after failures (see `retryAt`).
    Backoff,
}

impl StackState {
    /// The name the status document and the page use.
    pub fn as_str(self) -> &'static str {
        match self {
            StackState::Pending => "pending",
            StackState::Synced => "synced",
            StackState::Drifted => "drifted",
            StackState::Failed => "failed",
            StackState::Unhealthy => "unhealthy",
            StackState::Backoff => "backoff",
        }
    }
}

impl std::fmt::Display for StackState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Counts of the last plan.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
pub struct PlanCounts {
    pub create: usize,
    pub update: usize,
    pub prune: usize,
}
