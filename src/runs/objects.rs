//! The objects of each stack as the last runs saw them, for the stack page: per object its
//! health at the end of the last wait, drift (found and left, or reverted), its last change
//! (the run that made it); per stack the last post-sync hooks. Run records keep only what a run
//! changed; this index keeps every object of a stack, bounded ([`MAX_OBJECTS`] per stack,
//! messages cut to [`MAX_MESSAGE_BYTES`]), in memory only: after a restart the first run (a
//! full reconcile) fills it again.
//!
//! [`fold`] is pure: the previous entry of a stack and one reconcile's outcome in, the new
//! entry out. [`ObjectIndex`] holds the entries (inside the run store).

use std::collections::BTreeMap;
use std::sync::Mutex;

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::cluster::health::HealthStatus;
use crate::plan::Action;
use crate::reconcile::{Report, StackOutcome};

/// Most objects listed per stack; the rest are counted.
pub const MAX_OBJECTS: usize = 2000;
/// Longest health, hook or error message kept, in bytes.
pub const MAX_MESSAGE_BYTES: usize = 1024;

/// An object's health as the last wait left it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase", tag = "state", content = "message")]
pub enum Health {
    Healthy,
    Progressing(String),
    Failed(String),
    /// No wait has judged it yet (its stack failed before the wait, or was only planned).
    Unknown,
}

impl Health {
    /// The word the page shows.
    pub fn as_str(&self) -> &'static str {
        match self {
            Health::Healthy => "healthy",
            Health::Progressing(_) => "progressing",
            Health::Failed(_) => "failed",
            Health::Unknown => "unknown",
        }
    }

    /// Why it is not healthy, when known.
    pub fn message(&self) -> Option<&str> {
        match self {
            Health::Progressing(m) | Health::Failed(m) => Some(m),
            _ => None,
        }
    }
}

/// Drift seen on an object: a live change to fields driftless owns.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Drift {
    pub at: DateTime<Utc>,
    /// Re-applied (`selfHeal`), or found and left as it is (`selfHeal: false`).
    pub reverted: bool,
    /// The run that found (or reverted) it.
    pub run: String,
}

/// The last change driftless made to an object.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Change {
    pub at: DateTime<Utc>,
    pub action: Action,
    pub run: String,
}

/// One object of a stack.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ObjectEntry {
    /// `Kind/namespace/name`.
    pub object: String,
    pub health: Health,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub drift: Option<Drift>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_change: Option<Change>,
}

/// One post-sync hook as the last reconcile of its stack reported it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct HookEntry {
    /// `Job/namespace/name`.
    pub job: String,
    pub file: String,
    /// Why it ran (`never ran`, `definition changed`, `last run failed`); none: unchanged.
    pub reason: Option<String>,
    pub ran: bool,
    pub succeeded: Option<bool>,
    pub message: Option<String>,
    pub seconds: Option<u64>,
}

/// What the index holds for one stack.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct StackObjects {
    /// The run that last planned the stack.
    pub run: String,
    pub at: DateTime<Utc>,
    pub objects: Vec<ObjectEntry>,
    /// Objects beyond [`MAX_OBJECTS`], not listed.
    pub objects_omitted: usize,
    pub hooks: Vec<HookEntry>,
}

/// The run a stack's outcome belongs to, as [`fold`] needs it.
pub struct RunContext<'a> {
    pub id: &'a str,
    pub at: DateTime<Utc>,
    /// A drift watch asked for the run: an applied update reverts drift.
    pub drift: bool,
    /// The stack was only planned (`selfHeal: false`): its updates are drift left as it is.
    pub plan_only: bool,
}

/// The new entry of a stack from its previous one and a reconcile's outcome; `None` when the
/// outcome has no plan (the stack failed before planning: the previous entry stands).
pub fn fold(
    previous: Option<&StackObjects>,
    outcome: &StackOutcome,
    run: &RunContext<'_>,
) -> Option<StackObjects> {
    let plan = outcome.plan.as_ref()?;
    let before: BTreeMap<&str, &ObjectEntry> = previous
        .iter()
        .flat_map(|p| &p.objects)
        .map(|o| (o.object.as_str(), o))
        .collect();
    let unhealthy: BTreeMap<&str, &HealthStatus> = outcome
        .unhealthy
        .iter()
        .map(|u| (u.object.as_str(), &u.status))
        .collect();
    // The wait ran over the stack: every object it did not name is healthy.
    let waited = outcome.applied && outcome.error.is_none() && !run.plan_only;
    let mut objects = Vec::new();
    let mut omitted = 0;
    for c in plan.changes.iter().filter(|c| c.action != Action::Prune) {
        if objects.len() >= MAX_OBJECTS {
            omitted += 1;
            continue;
        }
        let object = c.key.to_string();
        let old = before.get(object.as_str()).copied();
        let health = match unhealthy.get(object.as_str()) {
            Some(HealthStatus::Healthy) => Health::Healthy,
            Some(HealthStatus::Progressing(m)) => Health::Progressing(short(m)),
            Some(HealthStatus::Failed(m)) => Health::Failed(short(m)),
            None if waited => Health::Healthy,
            None => old.map_or(Health::Unknown, |o| o.health.clone()),
        };
        let changed = outcome.applied
            && !run.plan_only
            && matches!(c.action, Action::Create | Action::Update);
        let drift = if run.plan_only && c.action == Action::Update {
            Some(Drift {
                at: old
                    .and_then(|o| o.drift.as_ref())
                    .filter(|d| !d.reverted)
                    .map_or(run.at, |d| d.at),
                reverted: false,
                run: run.id.to_owned(),
            })
        } else if run.drift && changed && c.action == Action::Update {
            Some(Drift {
                at: run.at,
                reverted: true,
                run: run.id.to_owned(),
            })
        } else {
            // Drift left as it was is gone once the plan finds nothing to change; a reverted
            // one stays as history.
            old.and_then(|o| o.drift.clone()).filter(|d| d.reverted)
        };
        let last_change = if changed {
            Some(Change {
                at: run.at,
                action: c.action,
                run: run.id.to_owned(),
            })
        } else {
            old.and_then(|o| o.last_change.clone())
        };
        objects.push(ObjectEntry {
            object,
            health,
            drift,
            last_change,
        });
    }
    let hooks = outcome
        .hooks
        .iter()
        .map(|h| HookEntry {
            job: h.job.clone(),
            file: h.file.clone(),
            reason: h.reason.map(|r| r.to_string()),
            ran: h.ran,
            succeeded: h.succeeded,
            message: h.message.as_deref().map(short),
            seconds: h.seconds.map(|s| s.max(0.0).round() as u64),
        })
        .collect();
    Some(StackObjects {
        run: run.id.to_owned(),
        at: run.at,
        objects,
        objects_omitted: omitted,
        hooks,
    })
}

fn short(message: &str) -> String {
    super::cut(message, MAX_MESSAGE_BYTES)
}

/// The entries of every stack. Every method takes `&self`.
#[derive(Default)]
pub struct ObjectIndex {
    stacks: Mutex<BTreeMap<String, StackObjects>>,
}

impl ObjectIndex {
    /// Folds a reconcile's report (of run `id`, asked for by a drift watch when `drift`) in.
    /// Stacks not in `keep` (the revision's) are dropped.
    pub fn record(
        &self,
        report: &Report,
        plan_only: &[String],
        run: (&str, bool),
        now: DateTime<Utc>,
        keep: &[String],
    ) {
        let mut stacks = self.stacks.lock().unwrap_or_else(|e| e.into_inner());
        for o in &report.stacks {
            let context = RunContext {
                id: run.0,
                at: now,
                drift: run.1,
                plan_only: plan_only.contains(&o.stack),
            };
            if let Some(entry) = fold(stacks.get(&o.stack), o, &context) {
                stacks.insert(o.stack.clone(), entry);
            }
        }
        stacks.retain(|name, _| keep.contains(name));
    }

    /// The entry of stack `name`.
    pub fn get(&self, name: &str) -> Option<StackObjects> {
        let stacks = self.stacks.lock().unwrap_or_else(|e| e.into_inner());
        stacks.get(name).cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::{PlannedChange, StackPlan};
    use crate::reconcile::Unhealthy;
    use crate::stack::ObjectKey;

    fn outcome(actions: &[(&str, Action)]) -> StackOutcome {
        let mut o = StackOutcome::new("web");
        o.plan = Some(StackPlan {
            stack: "web".to_owned(),
            changes: actions
                .iter()
                .map(|(name, a)| PlannedChange {
                    key: ObjectKey {
                        group: String::new(),
                        kind: "ConfigMap".to_owned(),
                        namespace: Some("ns".to_owned()),
                        name: (*name).to_owned(),
                    },
                    api_version: "v1".to_owned(),
                    action: *a,
                    diff: String::new(),
                })
                .collect(),
            kept: Vec::new(),
            prune_refused: None,
        });
        o.applied = true;
        o
    }

    fn at(minute: u32) -> DateTime<Utc> {
        use chrono::TimeZone;
        Utc.with_ymd_and_hms(2026, 12, 6, 12, minute, 0).unwrap()
    }

    fn ctx(id: &str, minute: u32, drift: bool, plan_only: bool) -> RunContext<'_> {
        RunContext {
            id,
            at: at(minute),
            drift,
            plan_only,
        }
    }

    #[test]
    fn objects_carry_health_changes_and_drift_across_runs() {
        let mut first = outcome(&[("a", Action::Create), ("b", Action::Create)]);
        first.unhealthy.push(Unhealthy {
            object: "ConfigMap/ns/b".to_owned(),
            status: HealthStatus::Progressing("<script>waiting</script>".to_owned()),
        });
        let one = fold(None, &first, &ctx("r1", 1, false, false)).unwrap();
        assert_eq!(one.objects[0].health, Health::Healthy);
        assert_eq!(
            one.objects[1].health,
            Health::Progressing("<script>waiting</script>".to_owned())
        );
        assert_eq!(one.objects[0].last_change.as_ref().unwrap().run, "r1");

        // A drift run reverts b; a is unchanged and keeps its last change.
        let second = outcome(&[
            ("a", Action::Unchanged),
            ("b", Action::Update),
            ("gone", Action::Prune),
        ]);
        let two = fold(Some(&one), &second, &ctx("r2", 2, true, false)).unwrap();
        assert_eq!(two.objects.len(), 2, "pruned objects are not listed");
        let a = &two.objects[0];
        assert_eq!(
            (
                a.health.clone(),
                a.last_change.as_ref().unwrap().run.as_str()
            ),
            (Health::Healthy, "r1")
        );
        let b = &two.objects[1];
        assert_eq!(
            b.drift.as_ref().map(|d| (d.reverted, d.at)),
            Some((true, at(2)))
        );
        assert_eq!(b.last_change.as_ref().unwrap().action, Action::Update);

        // Plan only (selfHeal off): drift found and left; health as before; nothing changed.
        let third = outcome(&[("a", Action::Update), ("b", Action::Unchanged)]);
        let three = fold(Some(&two), &third, &ctx("r3", 3, false, true)).unwrap();
        let a = &three.objects[0];
        assert_eq!(a.drift.as_ref().map(|d| d.reverted), Some(false));
        assert_eq!(a.last_change.as_ref().unwrap().run, "r1");
        assert_eq!(three.objects[1].drift.as_ref().unwrap().run, "r2");

        // Still drifted later: found at the first sighting. Then fixed: no drift left.
        let four = fold(Some(&three), &third, &ctx("r4", 4, false, true)).unwrap();
        assert_eq!(four.objects[0].drift.as_ref().unwrap().at, at(3));
        let fixed = outcome(&[("a", Action::Unchanged), ("b", Action::Unchanged)]);
        let five = fold(Some(&four), &fixed, &ctx("r5", 5, false, true)).unwrap();
        assert_eq!(five.objects[0].drift, None);
    }

    #[test]
    fn a_failed_stack_keeps_what_was_known_and_lists_are_bounded() {
        let known = fold(
            None,
            &outcome(&[("a", Action::Create)]),
            &ctx("r1", 1, false, false),
        )
        .unwrap();
        let mut failed = outcome(&[("a", Action::Update)]);
        failed.applied = false;
        failed.error = Some("apply failed".to_owned());
        let after = fold(Some(&known), &failed, &ctx("r2", 2, false, false)).unwrap();
        assert_eq!(after.objects[0].health, Health::Healthy);
        assert_eq!(after.objects[0].last_change.as_ref().unwrap().run, "r1");
        let mut no_plan = StackOutcome::new("web");
        no_plan.error = Some("render failed".to_owned());
        assert!(fold(Some(&known), &no_plan, &ctx("r3", 3, false, false)).is_none());

        let names: Vec<String> = (0..MAX_OBJECTS + 5).map(|i| format!("o{i}")).collect();
        let many: Vec<(&str, Action)> = names
            .iter()
            .map(|n| (n.as_str(), Action::Unchanged))
            .collect();
        let big = fold(None, &outcome(&many), &ctx("r4", 4, false, false)).unwrap();
        assert_eq!((big.objects.len(), big.objects_omitted), (MAX_OBJECTS, 5));
        let mut long = outcome(&[("a", Action::Create)]);
        long.unhealthy.push(Unhealthy {
            object: "ConfigMap/ns/a".to_owned(),
            status: HealthStatus::Failed("x".repeat(10 * MAX_MESSAGE_BYTES)),
        });
        let cut = fold(None, &long, &ctx("r5", 5, false, false)).unwrap();
        assert!(cut.objects[0].health.message().unwrap().len() < 2 * MAX_MESSAGE_BYTES);
    }

    #[test]
    fn the_index_drops_stacks_that_left_the_revision() {
        let index = ObjectIndex::default();
        let report = Report {
            stacks: vec![outcome(&[("a", Action::Create)])],
            resources: Vec::new(),
            awaiting_lease: Vec::new(),
        };
        index.record(&report, &[], ("r1", false), at(1), &["web".to_owned()]);
        assert_eq!(index.get("web").unwrap().objects.len(), 1);
        let empty = Report {
            stacks: Vec::new(),
            resources: Vec::new(),
            awaiting_lease: Vec::new(),
        };
        index.record(&empty, &[], ("r2", false), at(2), &[]);
        assert!(index.get("web").is_none());
    }
}
