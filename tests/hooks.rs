//! Post-sync hooks (`spec.hooks.postSync`) against the real control plane: the Job runs after its
//! stack is healthy and before its dependents (the Job controller and KWOK really run it), runs
//! again only when its definition changed, and a failed or timed-out hook holds the dependents
//! back and says why.

mod support;

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::Api;
use support::{Repo, TestEnv, driftless, text};

fn stack_file(hooks: &str) -> String {
    format!(
        "apiVersion: driftless.dev/v1alpha1\nkind: Stack\nmetadata: {{name: ID}}\nspec:\n  namespace: ID\n  path: manifests\n  wait: {{timeout: 60s}}\n{hooks}"
    )
}

/// A Job that KWOK runs to completion; `extra` goes into the pod spec.
fn job(marker: &str, extra: &str) -> String {
    format!(
        "apiVersion: batch/v1\nkind: Job\nmetadata: {{name: init}}\nspec:\n  backoffLimit: 0\n  template:\n    spec:\n      restartPolicy: Never\n      tolerations: [{{key: kwok.x-k8s.io/node, operator: Exists, effect: NoSchedule}}]\n{extra}      containers:\n      - name: init\n        image: busybox:1.36\n        env: [{{name: MARKER, value: '{marker}'}}]\n"
    )
}

const UNSCHEDULABLE: &str = "      nodeSelector: {driftless-test: nowhere}\n";

async fn job_uid(jobs: &Api<Job>) -> Option<String> {
    jobs.get_opt("init").await.expect("get job")?.metadata.uid
}

#[tokio::test]
async fn post_sync_hooks_run_once_per_definition_and_hold_back_dependents() {
    let env = TestEnv::get();
    let client = env.kube_client().await;
    let r = Repo::new("hk", "");
    let id = r.id.clone();
    r.write(
        "stack/app/stack.yaml",
        &stack_file(
            "  hooks:\n    postSync:\n    - {file: hooks/init.yaml, deletePolicy: Never}\n",
        ),
    );
    r.write(
        "stack/app/manifests/ns.yaml",
        "apiVersion: v1\nkind: Namespace\nmetadata: {name: ID}\n---\napiVersion: v1\nkind: ConfigMap\nmetadata: {name: app}\ndata: {a: '1'}\n",
    );
    r.write("stack/app/hooks/init.yaml", &job("one", ""));
    r.write(
        "stack/dep/stack.yaml",
        "apiVersion: driftless.dev/v1alpha1\nkind: Stack\nmetadata: {name: ID-dep}\nspec: {namespace: ID, dependsOn: [ID]}\n",
    );
    r.write(
        "stack/dep/cm.yaml",
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: dep}\ndata: {v: '1'}\n",
    );
    let path = r.path().to_str().expect("utf-8 path");
    let sync = |extra: &[&str]| {
        let mut args = vec!["sync", "--path", path];
        args.extend_from_slice(extra);
        driftless(&r.config, &args)
    };
    let jobs: Api<Job> = Api::namespaced(client.clone(), &id);
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), &id);

    // First sync: the hook runs after the stack is healthy, before the dependent stack.
    let out = sync(&[]);
    assert!(out.status.success(), "{}", text(&out));
    let t = text(&out);
    assert!(
        t.contains(&format!(
            "hook    Job/{id}/init (stack/app/hooks/init.yaml): succeeded"
        )),
        "{t}"
    );
    let job1 = jobs.get("init").await.expect("hook job");
    let complete = job1
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| {
            c.iter()
                .any(|c| c.type_ == "Complete" && c.status == "True")
        });
    assert!(complete, "the hook Job completed: {:?}", job1.status);
    let labels = job1.metadata.labels.clone().unwrap_or_default();
    assert_eq!(labels.get("driftless.dev/hook-of"), Some(&id));
    assert!(
        !labels.contains_key("driftless.dev/stack"),
        "a hook is not an object of the stack"
    );
    let hash = job1
        .metadata
        .annotations
        .clone()
        .unwrap_or_default()
        .get("driftless.dev/hook-hash")
        .cloned()
        .expect("hash annotation");
    let inv: Api<ConfigMap> = Api::namespaced(client.clone(), "driftless-system");
    let record = inv
        .get(&format!("inventory-{id}"))
        .await
        .expect("inventory");
    let stored = &record.data.expect("data")["objects.json"];
    assert!(
        stored.contains(&hash) && stored.contains("\"succeeded\":true"),
        "{stored}"
    );
    assert!(cms.get_opt("dep").await.expect("get").is_some());
    let uid1 = job_uid(&jobs).await;

    // Unchanged: diff reports nothing to do, and a sync does not run the hook again.
    let out = driftless(&r.config, &["diff", "--path", path]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(text(&out).contains("unchanged, not run"), "{}", text(&out));
    let out = sync(&[]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(
        job_uid(&jobs).await,
        uid1,
        "an unchanged hook does not run again"
    );

    // A changed definition: diff says so, and the sync replaces the Job.
    r.write("stack/app/hooks/init.yaml", &job("two", ""));
    let out = driftless(&r.config, &["diff", "--path", path]);
    assert!(
        text(&out).contains("would run (definition changed)"),
        "{}",
        text(&out)
    );
    let out = sync(&[]);
    assert!(out.status.success(), "{}", text(&out));
    let uid2 = job_uid(&jobs).await;
    assert!(uid2.is_some() && uid2 != uid1, "the hook ran again");

    // A failing hook (its pod can never be scheduled and its deadline passes): the sync fails,
    // naming the hook and the Job's reason; the dependent stack is not applied; the Job stays.
    r.write(
        "stack/app/hooks/init.yaml",
        &job("three", UNSCHEDULABLE).replace(
            "  backoffLimit: 0\n",
            "  backoffLimit: 0\n  activeDeadlineSeconds: 2\n",
        ),
    );
    r.write(
        "stack/dep/cm.yaml",
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: dep}\ndata: {v: '2'}\n",
    );
    let out = sync(&[]);
    let t = text(&out);
    assert_eq!(out.status.code(), Some(2), "{t}");
    assert!(
        t.contains(&format!("hook Job/{id}/init (stack/app/hooks/init.yaml) failed: the Job failed (DeadlineExceeded)")),
        "{t}"
    );
    assert!(t.contains("the Job is kept for inspection"), "{t}");
    assert!(
        t.contains(&format!(
            "skipped: dependency {id} failed or is not healthy"
        )),
        "{t}"
    );
    let dep = cms.get("dep").await.expect("dep");
    assert_eq!(
        dep.data.expect("data")["v"],
        "1",
        "the dependent stack was held back"
    );
    assert!(jobs.get_opt("init").await.expect("get").is_some());

    // A failed hook runs again at the next sync even though its definition did not change.
    let out = driftless(&r.config, &["diff", "--path", path]);
    assert!(
        text(&out).contains("would run (last run failed)"),
        "{}",
        text(&out)
    );

    // A hook that does not finish within its timeout fails the same way.
    r.write(
        "stack/app/stack.yaml",
        &stack_file("  hooks:\n    postSync:\n    - {file: hooks/init.yaml, timeout: 3s, deletePolicy: Always}\n"),
    );
    r.write("stack/app/hooks/init.yaml", &job("four", UNSCHEDULABLE));
    let out = sync(&[]);
    let t = text(&out);
    assert_eq!(out.status.code(), Some(2), "{t}");
    assert!(t.contains("did not finish within its timeout of 3s"), "{t}");
    support::eventually(
        "the timed-out Job deleted (deletePolicy Always)",
        std::time::Duration::from_secs(30),
        || async {
            jobs.get_opt("init")
                .await
                .expect("get")
                .is_none()
                .then_some(())
        },
    )
    .await;

    // A good hook again, deleted on success by default; then the hook leaves the stack.
    r.write(
        "stack/app/stack.yaml",
        &stack_file("  hooks:\n    postSync:\n    - {file: hooks/init.yaml}\n"),
    );
    r.write("stack/app/hooks/init.yaml", &job("five", ""));
    let out = sync(&[]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(
        cms.get("dep").await.expect("dep").data.expect("data")["v"],
        "2"
    );
    support::eventually(
        "the succeeded Job deleted (deletePolicy OnSuccess)",
        std::time::Duration::from_secs(30),
        || async {
            jobs.get_opt("init")
                .await
                .expect("get")
                .is_none()
                .then_some(())
        },
    )
    .await;
    r.write("stack/app/stack.yaml", &stack_file(""));
    let out = sync(&[]);
    assert!(out.status.success(), "{}", text(&out));
    let record = inv
        .get(&format!("inventory-{id}"))
        .await
        .expect("inventory");
    let stored = &record.data.expect("data")["objects.json"];
    assert!(
        !stored.contains("hooks"),
        "the record of a removed hook is dropped: {stored}"
    );
    // The hook file is no longer a hook, and not a manifest of the stack either (not under path).
    assert!(jobs.get_opt("init").await.expect("get").is_none());
}

#[tokio::test]
async fn a_hook_file_must_hold_one_job() {
    let r = Repo::new("hk", "");
    r.write(
        "stack/app/stack.yaml",
        &stack_file("  hooks:\n    postSync:\n    - {file: hooks/init.yaml}\n"),
    );
    r.write(
        "stack/app/manifests/cm.yaml",
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: app}\n",
    );
    r.write(
        "stack/app/hooks/init.yaml",
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: not-a-job}\n",
    );
    let path = r.path().to_str().expect("utf-8 path");
    let out = driftless(&r.config, &["validate", "--path", path]);
    let t = text(&out);
    assert_eq!(out.status.code(), Some(2), "{t}");
    assert!(
        t.contains("stack/app/hooks/init.yaml") && t.contains("a hook must be a batch/v1 Job"),
        "{t}"
    );
    r.write(
        "stack/app/hooks/init.yaml",
        &job("x", "").replace("name: init", "name: init\n  namespace: elsewhere"),
    );
    r.write(
        "stack/app/stack.yaml",
        &stack_file("  hooks:\n    postSync:\n    - {file: hooks/missing.yaml}\n"),
    );
    let out = driftless(&r.config, &["validate", "--path", path]);
    let t = text(&out);
    assert_eq!(out.status.code(), Some(2), "{t}");
    assert!(t.contains("spec.hooks.postSync[0].file"), "{t}");
}
