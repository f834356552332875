use super::*;
use crate::plan::{PlannedChange, StackPlan};
use crate::stack::ObjectKey;

fn key(name: &str) -> ObjectKey {
    ObjectKey {
        group: String::new(),
        kind: "ConfigMap".to_owned(),
        namespace: Some("ns".to_owned()),
        name: name.to_owned(),
    }
}

fn outcome(stack: &str, actions: &[Action], diff: &str) -> StackOutcome {
    let mut o = StackOutcome::new(stack);
    o.plan = Some(StackPlan {
        stack: stack.to_owned(),
        changes: actions
            .iter()
            .enumerate()
            .map(|(i, a)| PlannedChange {
                key: key(&format!("cm{i}")),
                api_version: "v1".to_owned(),
                action: *a,
                diff: diff.to_owned(),
            })
            .collect(),
        kept: Vec::new(),
        prune_refused: None,
    });
    o.applied = true;
    o
}

fn report(stacks: Vec<StackOutcome>) -> Report {
    Report {
        stacks,
        resources: Vec::new(),
        awaiting_lease: Vec::new(),
    }
}

#[test]
fn stack_states_follow_the_outcome() {
    let mut applied = outcome("applied", &[Action::Create, Action::Unchanged], "+a\n");
    applied.duration_ms = 42;
    let unchanged = outcome("unchanged", &[Action::Unchanged], "");
    let planned = outcome("planned", &[Action::Update], "-a\n+b\n");
    let mut failed = outcome("failed", &[Action::Update], "");
    failed.error = Some("apply ConfigMap/ns/cm0: boom".to_owned());
    failed.applied = false;
    let mut gated = outcome("gated", &[Action::Create], "");
    gated
        .plan
        .as_mut()
        .unwrap()
        .refuse_prunes("would prune 3 of 4 objects");
    gated.error = Some("would prune 3 of 4 objects".to_owned());
    gated.applied = false;
    let mut unhealthy = outcome("unhealthy", &[Action::Update], "");
    unhealthy.unhealthy = vec![crate::reconcile::Unhealthy {
        object: "Deployment/ns/web".to_owned(),
        status: crate::cluster::health::HealthStatus::Progressing("0 of 1 ready".to_owned()),
    }];
    let r = report(vec![applied, unchanged, planned, failed, gated, unhealthy]);
    let runs = stack_runs(&r, &["planned".to_owned()], &["resting".to_owned()]);
    let states: Vec<_> = runs.iter().map(|s| (s.name.as_str(), s.state)).collect();
    assert_eq!(
        states,
        [
            ("applied", StackRunState::Applied),
            ("unchanged", StackRunState::Unchanged),
            ("planned", StackRunState::Planned),
            ("failed", StackRunState::Failed),
            ("gated", StackRunState::Refused),
            ("unhealthy", StackRunState::Unhealthy),
            ("resting", StackRunState::Skipped),
        ]
    );
    // Only changes are listed, with their diffs and counts.
    assert_eq!(runs[0].changes.len(), 1);
    assert_eq!(runs[0].changes[0].object, "ConfigMap/ns/cm0");
    assert_eq!(runs[0].changes[0].diff, "+a\n");
    assert_eq!(
        runs[0].counts,
        Counts {
            create: 1,
            update: 0,
            prune: 0
        }
    );
    assert_eq!(
        runs[4].prune_refused.as_deref(),
        Some("would prune 3 of 4 objects")
    );
    assert_eq!(runs[5].unhealthy, ["Deployment/ns/web"]);
    assert_eq!(runs[0].duration_ms, Some(42));
    assert_eq!(runs[6].duration_ms, None, "not reconciled");
}

#[test]
fn diffs_are_cut_per_object_and_per_run() {
    let big = "+ line of a long diff\n".repeat(2000);
    let actions = vec![Action::Update; 40];
    let r = report(vec![outcome("web", &actions, &big)]);
    let runs = stack_runs(&r, &[], &[]);
    let changes = &runs[0].changes;
    assert_eq!(changes.len(), 40);
    assert!(changes[0].diff.len() <= MAX_DIFF_BYTES + 100);
    assert!(changes[0].diff.contains("… cut:"), "{}", &changes[0].diff);
    let kept: usize = changes.iter().map(|c| c.diff.len()).sum();
    assert!(kept <= MAX_RUN_DIFF_BYTES, "{kept}");
    assert!(changes.last().unwrap().diff_omitted);
    assert!(changes.last().unwrap().diff.is_empty());
}

#[test]
fn cut_keeps_whole_lines_and_characters() {
    assert_eq!(cut("short", 10), "short");
    let text = "ääää\nbbbb\ncccc\n";
    let c = cut(text, 12);
    assert!(c.starts_with("ääää\n"), "{c}");
    assert!(c.contains("… cut: 9 of 19 bytes shown"), "{c}");
    let one_line = "é".repeat(10);
    assert!(cut(&one_line, 5).starts_with("éé…"));
}

fn finished(revision: &str, stacks: &[(&str, StackRunState)]) -> Run {
    let mut run = Run::queued("r-1".to_owned(), "api", Utc::now());
    run.state = if stacks.iter().all(|(_, s)| s.healthy()) {
        RunState::Succeeded
    } else {
        RunState::Failed
    };
    run.revision = Some(revision.to_owned());
    run.stacks = stacks
        .iter()
        .map(|(n, s)| StackRun {
            error: (!s.healthy()).then(|| format!("{n} went wrong")),
            ..StackRun::new(n, *s)
        })
        .collect();
    run
}

#[test]
fn verdicts_for_a_waiting_caller() {
    let ok = finished("aaaaaaa1", &[("web", StackRunState::Applied)]);
    assert_eq!(verdict(&ok, None, &[]), Verdict::Done);
    assert_eq!(verdict(&ok, Some("aaaaaaa1"), &[]), Verdict::Done);
    // Another revision, not known to be reached: keep waiting, saying for what.
    match verdict(&ok, Some("bbbbbbb2"), &[]) {
        Verdict::Waiting(w) => assert!(w.contains("revision bbbbbbb2"), "{w}"),
        v => panic!("{v:?}"),
    }
    // A descendant was applied.
    let mut later = ok.clone();
    later.wanted = vec![Wanted {
        revision: "bbbbbbb2".to_owned(),
        fetched: Some(true),
        applied: Some(true),
    }];
    assert_eq!(verdict(&later, Some("bbbbbbb2"), &[]), Verdict::Done);
    // Fetched but not loadable: failed, with the revision's error.
    let mut broken = ok.clone();
    broken.state = RunState::Failed;
    broken.errors = vec!["revision bbbbbbb2 does not load".to_owned()];
    broken.wanted = vec![Wanted {
        revision: "bbbbbbb2".to_owned(),
        fetched: Some(true),
        applied: Some(false),
    }];
    match verdict(&broken, Some("bbbbbbb2"), &[]) {
        Verdict::Failed(w) => assert!(w.contains("does not load"), "{w}"),
        v => panic!("{v:?}"),
    }
    // A refused stack fails the caller that waits for it, not one that waits for another.
    let mixed = finished(
        "aaaaaaa1",
        &[
            ("web", StackRunState::Applied),
            ("db", StackRunState::Refused),
        ],
    );
    match verdict(&mixed, None, &[]) {
        Verdict::Failed(w) => assert!(w.contains("stack db refused: db went wrong"), "{w}"),
        v => panic!("{v:?}"),
    }
    assert_eq!(verdict(&mixed, None, &["web".to_owned()]), Verdict::Done);
    match verdict(&mixed, None, &["nope".to_owned()]) {
        Verdict::Failed(w) => assert!(w.contains("stack nope is not in revision"), "{w}"),
        v => panic!("{v:?}"),
    }
    // Not finished yet.
    let mut running = ok;
    running.state = RunState::Running;
    assert!(matches!(verdict(&running, None, &[]), Verdict::Waiting(_)));
}

#[test]
fn ids_and_revisions_are_checked() {
    assert!(valid_id("20261206T141203Z-3f9a"));
    for bad in ["", "../x", "a b", &"a".repeat(65), "x%2f"] {
        assert!(!valid_id(bad), "{bad}");
    }
    assert!(valid_revision("abcdef1"));
    assert!(valid_revision(&"a".repeat(40)));
    for bad in ["abc", "HEAD", "main", "abcdefg", &"a".repeat(65)] {
        assert!(!valid_revision(bad), "{bad}");
    }
}
