//! Runs against the real API server: a webhook names its run, a long-poll returns it finished
//! with its stacks, the history survives a restart, the sync API needs the token, `driftless
//! trigger --wait` exits 0 / 2 / times out as CI needs, and `diff -o markdown` masks Secrets
//! and is cut with a note. A Secret sentinel never appears in the API, the runs file, the
//! markdown or the logs.

mod support;

use std::time::Duration;

use support::daemon::{Daemon, Options, SECRET, Setup, github_push, http};
use support::{Repo, driftless, git, text};

const TOKEN: &str = "a-status-token-for-the-runs-tests";
const SENTINEL: &str = "runs-secret-sentinel-4b1d";

fn start_with_token() -> Daemon {
    Setup::new(
        &Options {
            daemon: "  statusTokenFile: token\n",
            credentials: &[("token", TOKEN)],
            token: Some(TOKEN),
            ..Options::default()
        },
        |_, _| {},
    )
    .start()
}

fn head(d: &Daemon) -> String {
    git(d.repo.path(), &["rev-parse", "HEAD"]).trim().to_owned()
}

/// The stack's objects: its namespace, the `settings` ConfigMap with `value`, a Secret holding
/// the sentinel, and `extra` more YAML documents.
fn write_objects(d: &Daemon, value: &str, extra: &str) {
    let id = &d.id;
    std::fs::write(
        d.repo.path().join("stack/app/objects.yaml"),
        format!(
            "apiVersion: v1\nkind: Namespace\nmetadata: {{name: ns-{id}}}\n---\n\
             apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: settings}}\ndata: {{value: '{value}'}}\n---\n\
             apiVersion: v1\nkind: Secret\nmetadata: {{name: creds}}\nstringData: {{password: {SENTINEL}}}\n{extra}"
        ),
    )
    .unwrap();
}

fn commit(d: &Daemon, message: &str) -> String {
    git(d.repo.path(), &["add", "-A"]);
    git(d.repo.path(), &["commit", "-qm", message]);
    head(d)
}

async fn get_json(d: &Daemon, path: &str) -> serde_json::Value {
    let response = d.get(path).await;
    let code = response.status();
    let body = response.text().await.unwrap();
    assert_eq!(code, 200, "{path}: {body}");
    assert!(!body.contains(SENTINEL), "{path} shows the Secret: {body}");
    serde_json::from_str(&body).unwrap()
}

/// Waits (long-poll) for run `id` to finish.
async fn finished(d: &Daemon, id: &str) -> serde_json::Value {
    let run = get_json(d, &format!("/api/v1/runs/{id}?wait=25s")).await;
    assert!(
        ["succeeded", "failed"].contains(&run["state"].as_str().unwrap_or("")),
        "run {id} did not finish: {run}"
    );
    run
}

#[tokio::test]
async fn a_webhook_names_its_run_which_is_waited_for_and_survives_a_restart() {
    let d = start_with_token();
    d.wait_notify("READY=1", Duration::from_secs(60));
    let ns = format!("ns-{}", d.id);
    write_objects(&d, "two", "");
    let sha = commit(&d, "second");

    // The webhook names the run and the pushed revision.
    let payload = serde_json::to_vec(&serde_json::json!({
        "ref": "refs/heads/main",
        "after": sha,
        "repository": {"clone_url": format!("file://{}", d.repo.path().display())}
    }))
    .unwrap();
    let response = github_push(&d.base, &payload, SECRET).await;
    assert_eq!(response.status(), 202);
    let answer: serde_json::Value = response.json().await.unwrap();
    assert_eq!(answer["revision"], sha.as_str(), "{answer}");
    let id = answer["run"].as_str().unwrap().to_owned();

    let run = finished(&d, &id).await;
    assert_eq!(run["state"], "succeeded", "{run}");
    assert_eq!(run["revision"], sha.as_str(), "{run}");
    assert!(
        run["triggers"]
            .as_array()
            .unwrap()
            .contains(&"webhook github".into()),
        "{run}"
    );
    assert_eq!(run["wanted"][0]["applied"], true, "{run}");
    let stack = &run["stacks"][0];
    assert_eq!(stack["name"], format!("d-{}", d.id), "{run}");
    assert_eq!(stack["state"], "applied", "{run}");
    assert_eq!(stack["counts"]["create"], 1, "{run}");
    assert_eq!(stack["counts"]["update"], 1, "{run}");
    let changes = stack["changes"].as_array().unwrap();
    let settings = changes
        .iter()
        .find(|c| c["object"] == format!("ConfigMap/{ns}/settings"))
        .unwrap_or_else(|| panic!("{run}"));
    assert_eq!(settings["action"], "update");
    assert!(
        settings["diff"].as_str().unwrap().contains("two"),
        "{settings}"
    );
    let secret = changes
        .iter()
        .find(|c| c["object"] == format!("Secret/{ns}/creds"))
        .unwrap_or_else(|| panic!("{run}"));
    assert_eq!(secret["action"], "create");
    assert!(run["startedAt"].is_string() && run["finishedAt"].is_string());
    assert!(stack["durationMs"].is_u64(), "{run}");
    assert!(
        run["phasesMs"].as_array().is_some_and(|p| !p.is_empty()),
        "{run}"
    );

    // A push for another branch is ignored, and says why.
    let other = serde_json::to_vec(&serde_json::json!({
        "ref": "refs/heads/feature",
        "after": sha,
        "repository": {"clone_url": format!("file://{}", d.repo.path().display())}
    }))
    .unwrap();
    let response = github_push(&d.base, &other, SECRET).await;
    assert_eq!(response.status(), 202);
    let answer: serde_json::Value = response.json().await.unwrap();
    assert_eq!(
        answer["ignored"], "push for another repository or ref",
        "{answer}"
    );

    // The sync API needs the token even on loopback.
    let unauthenticated = http()
        .post(format!("{}/api/v1/sync", d.base))
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(unauthenticated.status(), 401);
    let wrong = http()
        .post(format!("{}/api/v1/sync", d.base))
        .bearer_auth("a-wrong-token-of-enough-length")
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), 401);

    // The list, newest first.
    let listed = get_json(&d, "/api/v1/runs?limit=5").await;
    let ids: Vec<&str> = listed["runs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids.first(), Some(&id.as_str()), "{listed}");
    assert!(ids.len() >= 2, "the start run too: {listed}");

    // Neither the runs file nor the log holds the Secret's value.
    let file = std::fs::read_to_string(d.dir.path().join("state/runs.json")).unwrap();
    assert!(file.contains(&id), "{file}");
    assert!(!file.contains(SENTINEL));
    let log = d.log();
    assert!(log.contains("webhook ignored"), "{log}");
    assert!(!log.contains(SENTINEL), "{log}");

    // After a restart the history is still there.
    let d = d.restart();
    let again = get_json(&d, &format!("/api/v1/runs/{id}")).await;
    assert_eq!(again["state"], "succeeded");
    assert_eq!(again["stacks"], run["stacks"], "the same record");
    let listed = get_json(&d, "/api/v1/runs?limit=200").await;
    assert!(
        listed["runs"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["id"] == id.as_str()),
        "{listed}"
    );
    assert!(!d.log().contains(SENTINEL));
}

#[tokio::test]
async fn a_corrupt_runs_file_is_moved_aside_and_the_daemon_runs() {
    let setup = Setup::new(
        &Options {
            daemon: "  statusTokenFile: token\n",
            credentials: &[("token", TOKEN)],
            token: Some(TOKEN),
            ..Options::default()
        },
        |_, state| {
            std::fs::create_dir_all(state).unwrap();
            std::fs::write(state.join("runs.json"), b"{\"runs\": [{\"id\": ").unwrap();
        },
    );
    let state = setup.state();
    let d = setup.start();
    d.wait_notify("READY=1", Duration::from_secs(60));
    assert!(state.join("runs.corrupt").exists(), "kept for inspection");
    let listed = get_json(&d, "/api/v1/runs?limit=5").await;
    let first = &listed["runs"][0];
    let run = finished(&d, first["id"].as_str().unwrap()).await;
    assert_eq!(run["state"], "succeeded", "{run}");
    assert!(
        run["triggers"]
            .as_array()
            .unwrap()
            .contains(&"start".into())
    );
    // The history is written anew.
    let file: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(state.join("runs.json")).unwrap()).unwrap();
    assert_eq!(file["runs"][0]["id"], run["id"]);
    assert!(d.log().contains("runs history"), "the problem is logged");
}

/// `driftless trigger` as CI runs it: endpoint and token file on the command line.
fn trigger(d: &Daemon, args: &[&str]) -> std::process::Output {
    let token_file = d.dir.path().join("creds/token");
    let mut all = vec![
        "trigger",
        "--endpoint",
        &d.base,
        "--token-file",
        token_file.to_str().unwrap(),
    ];
    all.extend_from_slice(args);
    driftless(&d.config(), &all)
}

#[tokio::test]
async fn trigger_waits_for_its_revision_and_exits_0_or_2_or_times_out() {
    let d = start_with_token();
    let extra: String = (0..4)
        .map(|i| format!("---\napiVersion: v1\nkind: ConfigMap\nmetadata: {{name: extra-{i}}}\ndata: {{n: '{i}'}}\n"))
        .collect();
    write_objects(&d, "two", &extra);
    let good = commit(&d, "good");

    // Applied and healthy: exit 0.
    let out = trigger(&d, &["--revision", &good, "--wait", "--timeout", "60s"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(text(&out).contains("succeeded"), "{}", text(&out));
    assert!(text(&out).contains(&good[..12]), "{}", text(&out));

    // A stack that is not in the revision: exit 2, named.
    let out = trigger(&d, &["--stack", "nope", "--wait", "--timeout", "60s"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        text(&out).contains("stack nope is not in revision"),
        "{}",
        text(&out)
    );

    // A revision that never comes: an error naming what it waited for.
    let never = "0123456789abcdef0123456789abcdef01234567";
    let out = trigger(&d, &["--revision", never, "--wait", "--timeout", "4s"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        text(&out).contains(&format!(
            "timed out after 4s: still waiting for a run that applies revision {never}"
        )),
        "{}",
        text(&out)
    );

    // Denied by a policy: exit 2 with the policy's message.
    std::fs::create_dir_all(d.repo.path().join("stack/app/policies")).unwrap();
    std::fs::write(
        d.repo.path().join("stack/app/policies/deny.yaml"),
        support::deny_bad_value_policy("runs"),
    )
    .unwrap();
    write_objects(&d, "bad", &extra);
    let denied = commit(&d, "denied");
    let out = trigger(&d, &["--revision", &denied, "--wait", "--timeout", "60s"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("refused"), "{}", text(&out));
    assert!(
        text(&out).contains("settings may not be bad"),
        "{}",
        text(&out)
    );

    // A mass prune (4 of 7 recorded objects) is refused: exit 2, saying so.
    write_objects(&d, "two", "");
    let pruning = commit(&d, "prune most");
    let out = trigger(&d, &["--revision", &pruning, "--wait", "--timeout", "60s"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("refused"), "{}", text(&out));
    assert!(text(&out).contains("--allow-mass-prune"), "{}", text(&out));

    // Without --wait: the run id on standard output, at once.
    let out = trigger(&d, &[]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let id = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    let run = finished(&d, &id).await;
    assert!(run["triggers"].as_array().unwrap().contains(&"api".into()));
    assert!(!d.log().contains(SENTINEL));
    assert!(!text(&out).contains(TOKEN));
}

#[test]
fn diff_markdown_masks_secrets_and_is_cut_with_a_note() {
    let r = Repo::new("md", "");
    r.write(
        "stack/app/stack.yaml",
        "apiVersion: driftless.dev/v1alpha1\nkind: Stack\nmetadata: {name: app}\nspec: {namespace: ns-ID}\n",
    );
    let filler = "x".repeat(2000);
    let mut objects = format!(
        "apiVersion: v1\nkind: Namespace\nmetadata: {{name: ns-ID}}\n---\n\
         apiVersion: v1\nkind: Secret\nmetadata: {{name: aaa-creds}}\nstringData: {{password: {SENTINEL}}}\n"
    );
    for i in 0..60 {
        objects.push_str(&format!(
            "---\napiVersion: v1\nkind: ConfigMap\nmetadata: {{name: cm-{i:02}}}\ndata: {{blob: '{filler}'}}\n"
        ));
    }
    r.write("stack/app/objects.yaml", &objects);
    let path = r.path().to_str().unwrap();
    let out = driftless(&r.config, &["diff", "--path", path, "-o", "markdown"]);
    assert_eq!(out.status.code(), Some(1), "changes: {}", text(&out));
    let md = String::from_utf8_lossy(&out.stdout);
    assert!(md.len() <= 60_000, "{}", md.len());
    assert!(md.contains("### Stack `app`"), "{md}");
    assert!(md.contains("62 to create, 0 to update, 0 to prune"), "{md}");
    assert!(
        md.contains(&format!(
            "<details><summary>create <code>Secret/ns-{}/aaa-creds</code></summary>",
            r.id
        )),
        "{md}"
    );
    assert!(!md.contains(SENTINEL), "the Secret's value in the markdown");
    assert!(
        !String::from_utf8_lossy(&out.stderr).contains(SENTINEL),
        "the Secret's value in the log"
    );
    let shown = md.matches("<details>").count();
    assert!(shown > 10 && shown < 62, "{shown}");
    assert!(
        md.contains(&format!(
            "**Cut to 60000 characters:** {} changes not shown",
            62 - shown
        )),
        "{md}"
    );
}
