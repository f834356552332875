//! The status fold: a run's outcome folded into the status document, the metrics and the
//! stacks' backoff. No I/O; the loop writes the result to disk and to systemd.

use std::collections::BTreeMap;
use std::time::Instant;

use chrono::{DateTime, Utc};

use super::backoff::Backoffs;
use super::metrics::{Metrics, labels};
use super::status::{DaemonState, PlanCounts, StackState, StackStatus, Status, TargetStatus};
use crate::reconcile::Report;
use crate::stack::RenderedStack;

/// One stack's result of a run, as far as the status cares.
#[derive(Debug, Clone, Default)]
pub struct StackResult {
    /// (create, update, prune) of its plan, when it was planned.
    pub counts: Option<(usize, usize, usize)>,
    /// The plan was carried out.
    pub applied: bool,
    pub error: Option<String>,
    /// Objects were not healthy at the end of the wait.
    pub unhealthy: bool,
}

/// A run's outcome on one target.
#[derive(Debug, Default)]
pub struct Run {
    /// The target (empty: `default`).
    pub target: String,
    /// The revision's stacks, in order, with their object counts.
    pub stacks: Vec<(String, usize)>,
    /// Results of the stacks reconciled (a stack in backoff has none).
    pub results: BTreeMap<String, StackResult>,
    /// Stacks planned but not applied (`selfHeal: false`, revision unchanged).
    pub plan_only: Vec<String>,
    /// Problems outside any one stack, including stacks that left the revision and failed.
    pub errors: Vec<String>,
}

impl Run {
    /// The outcome of a reconcile of `stacks`, after the revision's `errors`.
    pub fn of(
        target: &str,
        stacks: &[RenderedStack],
        report: &Report,
        plan_only: &[String],
        mut errors: Vec<String>,
    ) -> Run {
        let results = report
            .stacks
            .iter()
            .map(|o| {
                let result = StackResult {
                    counts: o.plan.as_ref().map(|p| p.counts()),
                    applied: o.applied,
                    error: o.error.clone(),
                    unhealthy: !o.unhealthy.is_empty(),
                };
                (o.stack.clone(), result)
            })
            .collect::<BTreeMap<_, _>>();
        // Stacks that left the revision (orphans being pruned) report through errors only.
        for o in &report.stacks {
            if !stacks.iter().any(|s| s.name == o.stack)
                && let Some(e) = &o.error
            {
                errors.push(e.clone());
            }
        }
        Run {
            target: target.to_owned(),
            stacks: stacks
                .iter()
                .map(|s| (s.name.clone(), s.objects.len()))
                .collect(),
            results,
            plan_only: plan_only.to_vec(),
            errors,
        }
    }
}

/// What the fold found.
#[derive(Debug, PartialEq, Eq)]
pub struct Folded {
    /// Every stack and the revision succeeded.
    pub ok: bool,
    /// Stacks whose plan was carried out successfully (not plan-only).
    pub applied: Vec<String>,
}

/// Folds `run` into the status, the metrics and the backoff, at `now`.
pub fn fold(
    st: &mut Status,
    backoffs: &mut Backoffs,
    metrics: &Metrics,
    run: Run,
    now: DateTime<Utc>,
    instant: Instant,
) -> Folded {
    let target = if run.target.is_empty() {
        crate::targets::DEFAULT.to_owned()
    } else {
        run.target.clone()
    };
    // Only this target's stacks are replaced; the others' stay as their last run left them.
    let (mine, others): (Vec<StackStatus>, Vec<StackStatus>) =
        st.stacks.drain(..).partition(|s| s.target == target);
    st.stacks = others;
    let mut previous: BTreeMap<String, StackStatus> =
        mine.into_iter().map(|s| (s.name.clone(), s)).collect();
    let mut all_ok = run.errors.is_empty();
    let mut applied = Vec::new();
    for (name, objects) in &run.stacks {
        let mut s = previous.remove(name).unwrap_or_else(|| StackStatus {
            name: name.clone(),
            target: target.clone(),
            state: StackState::Pending,
            last_change: None,
            last_sync: None,
            managed_objects: *objects,
            drifted: 0,
            last_plan: PlanCounts::default(),
            error: None,
            retry_at: None,
            consecutive_failures: 0,
            holder: None,
        });
        s.managed_objects = *objects;
        let stack_labels = labels(&[("target", &target), ("stack", name)]);
        metrics
            .managed_objects
            .get_or_create(&stack_labels)
            .set(*objects as i64);
        let plan_only = run.plan_only.contains(name);
        if let Some(result) = run.results.get(name) {
            if let Some((c, u, p)) = result.counts {
                s.last_plan = PlanCounts {
                    create: c,
                    update: u,
                    prune: p,
                };
                // A plan-only stack's updates are drift nobody reverted; an applied stack has
                // none left.
                s.drifted = if plan_only { u } else { 0 };
                if c + u + p > 0 && result.applied {
                    s.last_change = Some(now);
                }
            }
            metrics
                .drifted_objects
                .get_or_create(&stack_labels)
                .set(s.drifted as i64);
            if result.error.is_some() || result.unhealthy {
                all_ok = false;
                let (delay, failures) = backoffs.fail(name, instant);
                s.state = if result.unhealthy {
                    StackState::Unhealthy
                } else {
                    StackState::Failed
                };
                s.error = result.error.clone();
                s.consecutive_failures = failures;
                s.retry_at = chrono::Duration::from_std(delay).ok().map(|d| now + d);
                metrics.apply_errors.get_or_create(&stack_labels).inc();
            } else {
                backoffs.succeed(name);
                if !plan_only {
                    applied.push(name.clone());
                }
                s.state = if s.drifted > 0 {
                    StackState::Drifted
                } else {
                    StackState::Synced
                };
                s.error = None;
                s.retry_at = None;
                s.consecutive_failures = 0;
                s.last_sync = Some(now);
                metrics
                    .last_successful_sync
                    .get_or_create(&stack_labels)
                    .set(now.timestamp_millis() as f64 / 1000.0);
            }
        } else if backoffs.waiting(name) {
            s.state = StackState::Backoff;
            all_ok = false;
        }
        st.stacks.push(s);
    }
    // Stable: the targets' stacks stay grouped, in revision order within a target.
    st.stacks.sort_by(|a, b| a.target.cmp(&b.target));
    let t = target_entry(st, &target);
    t.errors = run.errors;
    t.state = if all_ok {
        DaemonState::Ready
    } else {
        DaemonState::Degraded
    };
    overall(st);
    Folded {
        ok: all_ok,
        applied,
    }
}

/// The status entry of `target`, created when missing.
pub fn target_entry<'a>(st: &'a mut Status, target: &str) -> &'a mut TargetStatus {
    let i = match st.targets.iter().position(|t| t.name == target) {
        Some(i) => i,
        None => {
            st.targets.push(TargetStatus {
                name: target.to_owned(),
                cluster: String::new(),
                profile: None,
                state: DaemonState::Starting,
                errors: Vec::new(),
                warnings: Vec::new(),
                mode: Default::default(),
                last_run_at: None,
            });
            st.targets.len() - 1
        }
    };
    &mut st.targets[i]
}

/// The daemon's state and errors from its targets': ready when every target that ran is ready
/// and no Backup job is overdue. Errors of a named target say which (`target b: ...`); the same
/// error of several targets (a revision that does not load) is listed once.
pub fn overall(st: &mut Status) {
    let mut errors: Vec<String> = Vec::new();
    for t in &st.targets {
        for e in &t.errors {
            let e = if t.name == crate::targets::DEFAULT || st.targets.len() == 1 {
                e.clone()
            } else {
                format!("target {}: {e}", t.name)
            };
            if !errors.contains(&e) {
                errors.push(e);
            }
        }
    }
    st.errors = errors;
    // A Backup job whose newest complete backup is older than its maxAge degrades the status.
    st.state = if st.targets.iter().all(|t| t.state != DaemonState::Degraded)
        && st.jobs.iter().all(|j| j.overdue.is_none())
    {
        DaemonState::Ready
    } else {
        DaemonState::Degraded
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(results: &[(&str, StackResult)]) -> Run {
        Run {
            stacks: vec![("a".to_owned(), 3), ("b".to_owned(), 2)],
            results: results
                .iter()
                .map(|(n, r)| ((*n).to_owned(), r.clone()))
                .collect(),
            ..Run::default()
        }
    }

    fn applied(c: usize, u: usize) -> StackResult {
        StackResult {
            counts: Some((c, u, 0)),
            applied: true,
            ..StackResult::default()
        }
    }

    #[test]
    fn a_successful_run_makes_every_stack_synced_and_the_daemon_ready() {
        let (mut st, mut b, m) = (Status::default(), Backoffs::default(), Metrics::default());
        let now = Utc::now();
        let f = fold(
            &mut st,
            &mut b,
            &m,
            run(&[("a", applied(3, 0)), ("b", applied(0, 0))]),
            now,
            Instant::now(),
        );
        assert_eq!(
            f,
            Folded {
                ok: true,
                applied: vec!["a".to_owned(), "b".to_owned()]
            }
        );
        assert_eq!(st.state, DaemonState::Ready);
        let states: Vec<_> = st.stacks.iter().map(|s| s.state).collect();
        assert_eq!(states, [StackState::Synced, StackState::Synced]);
        assert_eq!(st.stacks[0].last_change, Some(now), "a changed something");
        assert_eq!(st.stacks[1].last_change, None, "b changed nothing");
        assert!(
            m.render()
                .contains("driftless_managed_objects{target=\"default\",stack=\"a\"} 3")
        );
    }

    #[test]
    fn a_failing_stack_backs_off_while_the_other_stays_synced() {
        let (mut st, mut b, m) = (Status::default(), Backoffs::default(), Metrics::default());
        let failed = StackResult {
            error: Some("boom".to_owned()),
            ..StackResult::default()
        };
        let t0 = Instant::now();
        let f = fold(
            &mut st,
            &mut b,
            &m,
            run(&[("a", failed.clone()), ("b", applied(0, 0))]),
            Utc::now(),
            t0,
        );
        assert!(!f.ok);
        assert_eq!(f.applied, ["b"]);
        assert_eq!(st.state, DaemonState::Degraded);
        assert_eq!(st.stacks[0].state, StackState::Failed);
        assert_eq!(st.stacks[0].error.as_deref(), Some("boom"));
        assert_eq!(st.stacks[0].consecutive_failures, 1);
        assert!(st.stacks[0].retry_at.is_some());
        // The next run leaves `a` out (in backoff): it shows `backoff`, the daemon degraded.
        fold(
            &mut st,
            &mut b,
            &m,
            run(&[("b", applied(0, 0))]),
            Utc::now(),
            t0,
        );
        assert_eq!(st.stacks[0].state, StackState::Backoff);
        assert_eq!(st.state, DaemonState::Degraded);
        // Unhealthy counts as a failure too, and grows the backoff.
        let unhealthy = StackResult {
            unhealthy: true,
            ..applied(0, 1)
        };
        fold(
            &mut st,
            &mut b,
            &m,
            run(&[("a", unhealthy)]),
            Utc::now(),
            t0,
        );
        assert_eq!(st.stacks[0].state, StackState::Unhealthy);
        assert_eq!(st.stacks[0].consecutive_failures, 2);
        // Success resets it.
        fold(
            &mut st,
            &mut b,
            &m,
            run(&[("a", applied(0, 0))]),
            Utc::now(),
            t0,
        );
        assert_eq!(st.stacks[0].consecutive_failures, 0);
        assert!(!b.any_failing());
    }

    #[test]
    fn plan_only_stacks_report_drift_and_are_not_applied() {
        let (mut st, mut b, m) = (Status::default(), Backoffs::default(), Metrics::default());
        let mut r = run(&[("a", applied(0, 2)), ("b", applied(0, 0))]);
        r.plan_only = vec!["a".to_owned()];
        let f = fold(&mut st, &mut b, &m, r, Utc::now(), Instant::now());
        assert_eq!(f.applied, ["b"]);
        assert_eq!(st.stacks[0].state, StackState::Drifted);
        assert_eq!(st.stacks[0].drifted, 2);
        assert!(
            m.render()
                .contains("driftless_drifted_objects{target=\"default\",stack=\"a\"} 2")
        );
    }

    #[test]
    fn revision_errors_degrade_the_daemon() {
        let (mut st, mut b, m) = (Status::default(), Backoffs::default(), Metrics::default());
        let mut r = run(&[("a", applied(0, 0)), ("b", applied(0, 0))]);
        r.errors = vec!["source: gone".to_owned()];
        let f = fold(&mut st, &mut b, &m, r, Utc::now(), Instant::now());
        assert!(!f.ok);
        assert_eq!(st.state, DaemonState::Degraded);
        assert_eq!(st.errors, ["source: gone"]);
    }

    #[test]
    fn stack_states_serialize_as_before() {
        for (s, text) in [
            (StackState::Pending, "pending"),
            (StackState::Synced, "synced"),
            (StackState::Drifted, "drifted"),
            (StackState::Failed, "failed"),
            (StackState::Unhealthy, "unhealthy"),
            (StackState::Backoff, "backoff"),
        ] {
            assert_eq!(serde_json::to_string(&s).unwrap(), format!("\"{text}\""));
            assert_eq!(s.to_string(), text);
        }
    }

    #[test]
    fn each_target_folds_its_own_stacks_and_a_failing_one_degrades_the_daemon_only_in_its_name() {
        let (mut st, m) = (Status::default(), Metrics::default());
        let (mut ba, mut bb) = (Backoffs::default(), Backoffs::default());
        let now = Utc::now();
        let on = |target: &str, results: &[(&str, StackResult)], errors: Vec<String>| Run {
            target: target.to_owned(),
            errors,
            ..run(results)
        };
        fold(
            &mut st,
            &mut ba,
            &m,
            on("a", &[("a", applied(1, 0)), ("b", applied(0, 0))], vec![]),
            now,
            Instant::now(),
        );
        let f = fold(
            &mut st,
            &mut bb,
            &m,
            on("b", &[], vec!["cluster down".to_owned()]),
            now,
            Instant::now(),
        );
        assert!(!f.ok);
        let of = |t: &str| -> Vec<(String, StackState)> {
            st.stacks
                .iter()
                .filter(|s| s.target == t)
                .map(|s| (s.name.clone(), s.state))
                .collect()
        };
        assert_eq!(
            of("a"),
            [
                ("a".to_owned(), StackState::Synced),
                ("b".to_owned(), StackState::Synced)
            ],
            "b's fold leaves a's stacks"
        );
        assert_eq!(of("b").len(), 2);
        assert_eq!(st.state, DaemonState::Degraded);
        assert_eq!(st.errors, ["target b: cluster down"]);
        let states: Vec<_> = st
            .targets
            .iter()
            .map(|t| (t.name.as_str(), t.state))
            .collect();
        assert_eq!(
            states,
            [("a", DaemonState::Ready), ("b", DaemonState::Degraded)]
        );
        let text = m.render();
        assert!(text.contains("driftless_managed_objects{target=\"a\",stack=\"a\"} 3"));
        assert!(text.contains("driftless_managed_objects{target=\"b\",stack=\"b\"} 2"));
    }
}
