//! Commit statuses and notifications of a real daemon against the real API server, received by
//! small HTTP servers this test runs (they record every request; the only stand-ins are the
//! forges' APIs, whose request shapes are checked against their documentation, and an endpoint
//! that is down). The Gitea end-to-end test, with a real forge, is `tests/gitea.rs`.
//!
//! - GitHub and GitLab: `pending` (GitLab `running`) then `success` on the applied commit, per
//!   stack context, with the token in the documented header and a link to the run; a 502 is
//!   retried.
//! - Notifications: a signed `runFailed` (a policy denial) then `runRecovered` reach one
//!   endpoint while a second is down and a third takes Slack's shape; statuses say `failure`
//!   with the policy's message, then `success`. A Secret sentinel appears in no request.

mod support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::http::{HeaderMap, StatusCode, Uri};
use hmac::{KeyInit, Mac};
use support::daemon::{Daemon, Options, SECRET, Setup, TEST_LEASES, github_push};
use support::{eventually, git};

const FORGE_TOKEN: &str = "forge-token-for-the-notify-tests";
const HOOK_SECRET: &str = "notification-signing-secret";
const SENTINEL: &str = "notify-secret-sentinel-7c2e";

/// One request a recorder received.
#[derive(Debug, Clone)]
struct Recorded {
    path: String,
    headers: HeaderMap,
    body: String,
}

impl Recorded {
    fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("{e}: {}", self.body))
    }

    fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }
}

/// An HTTP server on a port it bound itself, recording every request and answering `502` to the
/// first `fail_first` of them, `200` after.
struct Recorder {
    base: String,
    seen: Arc<Mutex<Vec<Recorded>>>,
}

impl Recorder {
    async fn start(fail_first: usize) -> Recorder {
        let seen: Arc<Mutex<Vec<Recorded>>> = Arc::default();
        let failures = Arc::new(AtomicUsize::new(fail_first));
        let sink = seen.clone();
        let app =
            axum::Router::new().fallback(move |uri: Uri, headers: HeaderMap, body: String| {
                let (sink, failures) = (sink.clone(), failures.clone());
                async move {
                    sink.lock().unwrap().push(Recorded {
                        path: uri.path().to_owned(),
                        headers,
                        body,
                    });
                    let fail = failures
                        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                        .is_ok();
                    if fail {
                        StatusCode::BAD_GATEWAY
                    } else {
                        StatusCode::OK
                    }
                }
            });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        Recorder { base, seen }
    }

    fn requests(&self) -> Vec<Recorded> {
        self.seen.lock().unwrap().clone()
    }
}

/// A daemon with `notify` (YAML under `notify:`, indented two spaces) and the forge token and
/// hook secret in its credentials directory.
fn start(notify: &str) -> Daemon {
    let leases = format!("{TEST_LEASES}notify:\n{notify}");
    Setup::new(
        &Options {
            credentials: &[("forge-token", FORGE_TOKEN), ("hook-secret", HOOK_SECRET)],
            leases: &leases,
            ..Options::default()
        },
        |_, _| {},
    )
    .start()
}

fn head(d: &Daemon) -> String {
    git(d.repo.path(), &["rev-parse", "HEAD"]).trim().to_owned()
}

/// The statuses the forge received, in order, as (path, body).
fn statuses(r: &Recorder) -> Vec<(String, serde_json::Value)> {
    r.requests()
        .into_iter()
        .filter(|q| q.path.contains("/statuses/"))
        .map(|q| {
            let body = q.json();
            (q.path, body)
        })
        .collect()
}

/// Waits until the forge received a status with `state` for `sha`; returns all received.
async fn wait_state(
    r: &Recorder,
    sha: &str,
    field: &str,
    state: &str,
) -> Vec<(String, serde_json::Value)> {
    eventually(
        &format!("status {state} on {sha}"),
        Duration::from_secs(60),
        || async {
            let all = statuses(r);
            all.iter()
                .any(|(p, b)| p.ends_with(sha) && b["state"] == state && !b[field].is_null())
                .then_some(all)
        },
    )
    .await
}

#[tokio::test]
async fn github_statuses_are_pending_then_success_with_the_documented_shape_and_a_502_is_retried() {
    let forge = Recorder::start(1).await;
    let d = start(&format!(
        "  commitStatus: {{provider: github, apiUrl: '{}', repository: acme/infra, tokenFile: forge-token, linkBase: 'https://ops.example:9427/'}}\n",
        forge.base
    ));
    let sha = head(&d);
    let all = wait_state(&forge, &sha, "context", "success").await;
    let context = format!("driftless/{}/d-{}", d.id, d.id);
    let path = format!("/repos/acme/infra/statuses/{sha}");
    let states: Vec<&str> = all
        .iter()
        .map(|(p, b)| {
            assert_eq!(p, &path);
            assert_eq!(b["context"], context.as_str(), "{b}");
            b["state"].as_str().unwrap()
        })
        .collect();
    // The first pending answered 502 and was sent again.
    assert_eq!(states, ["pending", "pending", "success"], "{all:?}");
    let (_, success) = &all[2];
    assert_eq!(
        success["description"],
        "applied: 2 created, 0 updated, 0 pruned"
    );
    let runs: serde_json::Value = d.get("/api/v1/runs?limit=5").await.json().await.unwrap();
    let run_id = runs["runs"][0]["id"]
        .as_str()
        .unwrap_or_else(|| panic!("{runs}"));
    assert_eq!(
        success["target_url"],
        format!("https://ops.example:9427/runs/{run_id}")
    );
    let request = forge.requests().pop().unwrap();
    assert_eq!(
        request.header("authorization"),
        format!("Bearer {FORGE_TOKEN}")
    );
    assert_eq!(request.header("accept"), "application/vnd.github+json");
    assert_eq!(request.header("x-github-api-version"), "2022-11-28");
    assert!(request.header("user-agent").starts_with("driftless/"));
    let metrics = d.metrics().await;
    for line in [
        "driftless_notify_deliveries_total{destination=\"commitStatus\",outcome=\"retried\"} 1",
        "driftless_notify_deliveries_total{destination=\"commitStatus\",outcome=\"delivered\"} 2",
    ] {
        assert!(metrics.contains(line), "{line} not in:\n{metrics}");
    }
    assert!(!d.log().contains(FORGE_TOKEN), "the token reached the log");
}

#[tokio::test]
async fn gitlab_statuses_are_running_then_success_on_the_encoded_project_path() {
    let forge = Recorder::start(0).await;
    let d = start(&format!(
        "  commitStatus: {{provider: gitlab, apiUrl: '{}/api/v4', repository: ops/sub/infra, tokenFile: forge-token}}\n",
        forge.base
    ));
    let sha = head(&d);
    let all = wait_state(&forge, &sha, "name", "success").await;
    let states: Vec<&str> = all
        .iter()
        .map(|(_, b)| b["state"].as_str().unwrap())
        .collect();
    assert_eq!(states, ["running", "success"], "{all:?}");
    for (p, b) in &all {
        assert_eq!(
            p,
            &format!("/api/v4/projects/ops%2Fsub%2Finfra/statuses/{sha}")
        );
        assert_eq!(b["name"], format!("driftless/{}/d-{}", d.id, d.id), "{b}");
        // No linkBase: no link.
        assert!(b.get("target_url").is_none(), "{b}");
    }
    let request = forge.requests().pop().unwrap();
    assert_eq!(request.header("private-token"), FORGE_TOKEN);
    assert_eq!(request.header("authorization"), "");
}

/// Writes the stack's objects (the `settings` ConfigMap with `value`, a Secret holding the
/// sentinel) and the deny policy, commits, and sends the signed push webhook.
async fn push(d: &Daemon, value: &str) -> String {
    let id = &d.id;
    std::fs::create_dir_all(d.repo.path().join("stack/app/policies")).unwrap();
    std::fs::write(
        d.repo.path().join("stack/app/policies/deny.yaml"),
        support::deny_bad_value_policy("notify"),
    )
    .unwrap();
    std::fs::write(
        d.repo.path().join("stack/app/objects.yaml"),
        format!(
            "apiVersion: v1\nkind: Namespace\nmetadata: {{name: ns-{id}}}\n---\n\
             apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: settings}}\ndata: {{value: '{value}'}}\n---\n\
             apiVersion: v1\nkind: Secret\nmetadata: {{name: creds}}\nstringData: {{password: {SENTINEL}-{value}}}\n"
        ),
    )
    .unwrap();
    git(d.repo.path(), &["add", "-A"]);
    git(d.repo.path(), &["commit", "-qm", value]);
    let sha = head(d);
    let payload = serde_json::to_vec(&serde_json::json!({
        "ref": "refs/heads/main",
        "after": sha,
        "repository": {"clone_url": format!("file://{}", d.repo.path().display())}
    }))
    .unwrap();
    assert_eq!(github_push(&d.base, &payload, SECRET).await.status(), 202);
    sha
}

fn hmac_hex(body: &[u8]) -> String {
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(HOOK_SECRET.as_bytes()).unwrap();
    mac.update(body);
    support::hex(&mac.finalize().into_bytes())
}

#[tokio::test]
async fn a_signed_run_failed_then_run_recovered_arrive_while_another_endpoint_is_down() {
    let hooks = Recorder::start(0).await;
    let chat = Recorder::start(0).await;
    let forge = Recorder::start(0).await;
    // Bound, then closed: connections to it are refused.
    let down = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}/hook", l.local_addr().unwrap())
    };
    let d = start(&format!(
        "  commitStatus: {{provider: gitea, apiUrl: '{}/api/v1', repository: ops/stacks, tokenFile: forge-token}}\n\
         \x20 linkBase: 'https://ops.example:9427'\n\
         \x20 webhooks:\n\
         \x20 - {{url: '{down}', secretFile: hook-secret}}\n\
         \x20 - {{url: '{}/driftless', secretFile: hook-secret, events: [runFailed, runRecovered]}}\n\
         \x20 - {{url: '{}/slack', format: slack}}\n",
        forge.base, hooks.base, chat.base
    ));
    let first = head(&d);
    wait_state(&forge, &first, "context", "success").await;

    let bad = push(&d, "bad").await;
    let failed = eventually("runFailed", Duration::from_secs(60), || async {
        hooks
            .requests()
            .into_iter()
            .find(|r| r.header("x-driftless-event") == "runFailed")
    })
    .await;
    assert_eq!(failed.path, "/driftless");
    assert_eq!(
        failed.header("x-driftless-signature"),
        format!("sha256={}", hmac_hex(failed.body.as_bytes()))
    );
    let body = failed.json();
    assert_eq!(body["event"], "runFailed", "{body}");
    assert_eq!(body["instance"], d.id.as_str());
    assert_eq!(body["revision"], bad.as_str());
    assert!(
        body["url"]
            .as_str()
            .unwrap()
            .starts_with("https://ops.example:9427/runs/"),
        "{body}"
    );
    assert_eq!(body["stacks"], serde_json::json!([format!("d-{}", d.id)]));
    assert!(
        body["details"][0]
            .as_str()
            .unwrap()
            .contains("denied by policy notify-no-bad-value: settings may not be bad"),
        "{body}"
    );
    let all = wait_state(&forge, &bad, "context", "failure").await;
    let (_, failure) = all
        .iter()
        .find(|(p, b)| p.ends_with(&bad) && b["state"] == "failure")
        .unwrap();
    assert_eq!(
        failure["description"],
        "denied by policy notify-no-bad-value: settings may not be bad"
    );

    let good = push(&d, "good").await;
    let recovered = eventually("runRecovered", Duration::from_secs(60), || async {
        hooks
            .requests()
            .into_iter()
            .find(|r| r.header("x-driftless-event") == "runRecovered")
    })
    .await;
    assert_eq!(
        recovered.header("x-driftless-signature"),
        format!("sha256={}", hmac_hex(recovered.body.as_bytes()))
    );
    assert_eq!(recovered.json()["revision"], good.as_str());
    wait_state(&forge, &good, "context", "success").await;

    // The Slack-shaped endpoint got both, unsigned, as `text`.
    let texts = eventually(
        "both events in slack shape",
        Duration::from_secs(30),
        || async {
            let t: Vec<String> = chat
                .requests()
                .iter()
                .map(|r| r.json()["text"].as_str().unwrap_or("").to_owned())
                .collect();
            (t.len() >= 2).then_some(t)
        },
    )
    .await;
    assert!(texts[0].contains("failed"), "{texts:?}");
    assert!(texts[0].contains("settings may not be bad"), "{texts:?}");
    assert!(texts[1].contains("succeeded"), "{texts:?}");
    assert!(
        chat.requests()[0]
            .header("x-driftless-signature")
            .is_empty()
    );

    // The endpoint that is down was tried (and is retried) without holding the others back.
    let metrics = d.metrics().await;
    assert!(
        metrics.contains(
            "driftless_notify_deliveries_total{destination=\"webhooks[0]\",outcome=\"retried\"}"
        ),
        "{metrics}"
    );
    assert!(
        metrics.contains(
            "driftless_notify_deliveries_total{destination=\"webhooks[1]\",outcome=\"delivered\"} 2"
        ),
        "{metrics}"
    );

    for r in hooks
        .requests()
        .iter()
        .chain(&chat.requests())
        .chain(&forge.requests())
    {
        assert!(
            !r.body.contains(SENTINEL),
            "a Secret value was sent: {}",
            r.body
        );
    }
    assert!(!d.log().contains(SENTINEL));
}

/// Changes the stack's ConfigMap in the cluster, as a person with kubectl would.
fn tamper(d: &Daemon) {
    support::kubectl(&[
        "patch",
        "configmap",
        "settings",
        "-n",
        &format!("ns-{}", d.id),
        "--type",
        "merge",
        "-p",
        r#"{"data":{"value":"tampered"}}"#,
    ]);
}

/// A daemon whose stack has `extra_spec`, sending drift events to `hooks`.
fn start_drift(hooks: &Recorder, extra_spec: &str) -> Daemon {
    let leases = format!(
        "{TEST_LEASES}notify:\n  webhooks: [{{url: '{}/d', secretFile: hook-secret, events: [driftDetected, driftReverted]}}]\n",
        hooks.base
    );
    let d = Setup::new(
        &Options {
            extra_spec,
            credentials: &[("hook-secret", HOOK_SECRET)],
            leases: &leases,
            ..Options::default()
        },
        |_, _| {},
    )
    .start();
    d.wait_notify("READY=1", Duration::from_secs(60));
    d
}

#[tokio::test]
async fn drift_is_announced_as_detected_with_self_heal_off_and_as_reverted_with_it_on() {
    let hooks = Recorder::start(0).await;
    let off = start_drift(&hooks, ", selfHeal: false");
    tamper(&off);
    let detected = eventually("driftDetected", Duration::from_secs(60), || async {
        hooks
            .requests()
            .into_iter()
            .find(|r| r.header("x-driftless-event") == "driftDetected")
    })
    .await;
    let body = detected.json();
    assert_eq!(body["instance"], off.id.as_str(), "{body}");
    assert_eq!(body["stacks"], serde_json::json!([format!("d-{}", off.id)]));
    assert!(
        body["details"][0]
            .as_str()
            .unwrap()
            .contains("planned (0 create, 1 update, 0 prune)"),
        "{body}"
    );
    drop(off);

    let on = start_drift(&hooks, "");
    tamper(&on);
    let reverted = eventually("driftReverted", Duration::from_secs(60), || async {
        hooks
            .requests()
            .into_iter()
            .find(|r| r.header("x-driftless-event") == "driftReverted")
    })
    .await;
    let body = reverted.json();
    assert_eq!(body["instance"], on.id.as_str(), "{body}");
    assert_eq!(
        reverted.header("x-driftless-signature"),
        format!("sha256={}", hmac_hex(reverted.body.as_bytes()))
    );
    // Each was sent once: events are edges.
    let count = |e: &str| {
        hooks
            .requests()
            .iter()
            .filter(|r| r.header("x-driftless-event") == e)
            .count()
    };
    assert_eq!((count("driftDetected"), count("driftReverted")), (1, 1));
}

#[tokio::test]
async fn a_failed_commit_turns_green_when_a_later_run_succeeds_on_it() {
    let forge = Recorder::start(0).await;
    let late = support::unique_name("notify-late");
    let leases = format!(
        "{TEST_LEASES}notify:\n  commitStatus: {{provider: github, apiUrl: '{}', repository: acme/infra, tokenFile: forge-token}}\n",
        forge.base
    );
    // The stack's ConfigMap goes to a namespace nobody created yet: the apply fails.
    let d = Setup::new(
        &Options {
            credentials: &[("forge-token", FORGE_TOKEN)],
            leases: &leases,
            ..Options::default()
        },
        |repo, _| {
            std::fs::write(
                repo.join("stack/app/objects.yaml"),
                format!("apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: settings, namespace: {late}}}\ndata: {{value: one}}\n"),
            )
            .unwrap();
        },
    )
    .start();
    let sha = head(&d);
    let all = wait_state(&forge, &sha, "context", "failure").await;
    let (_, failure) = all.iter().find(|(_, b)| b["state"] == "failure").unwrap();
    assert!(
        failure["description"]
            .as_str()
            .unwrap()
            .starts_with("failed: "),
        "{failure}"
    );
    // The namespace appears; the stack's retry (backoff, no new commit) succeeds: green.
    support::kubectl(&["create", "namespace", &late]);
    let all = wait_state(&forge, &sha, "context", "success").await;
    let states: Vec<&str> = all
        .iter()
        .map(|(_, b)| b["state"].as_str().unwrap())
        .collect();
    assert_eq!(states.first(), Some(&"pending"), "{states:?}");
    assert_eq!(states.last(), Some(&"success"), "{states:?}");
    let failed_at = states.iter().position(|s| *s == "failure").unwrap();
    // The retry announced itself before it turned green.
    assert_eq!(states[failed_at + 1], "pending", "{states:?}");
    drop(d);
    support::kubectl(&["delete", "namespace", &late, "--wait=false"]);
}

#[tokio::test]
async fn a_job_that_fails_then_succeeds_raises_job_failed_then_job_recovered() {
    // The job's registry: refuses the catalog until `healthy`, then serves an empty one.
    let healthy = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flag = healthy.clone();
    let registry = axum::Router::new().route(
        "/v2/_catalog",
        axum::routing::get(move || {
            let ok = flag.load(Ordering::SeqCst);
            async move {
                if ok {
                    (StatusCode::OK, r#"{"repositories":[]}"#)
                } else {
                    (StatusCode::FORBIDDEN, "no")
                }
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let registry_url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, registry).await });

    let hooks = Recorder::start(0).await;
    let leases = format!(
        "{TEST_LEASES}notify:\n  webhooks: [{{url: '{}/jobs', secretFile: hook-secret, events: [jobFailed, jobRecovered]}}]\n",
        hooks.base
    );
    let d = Setup::new(
        &Options {
            credentials: &[("hook-secret", HOOK_SECRET)],
            leases: &leases,
            ..Options::default()
        },
        |repo, _| {
            // Every second (a leading seconds field).
            std::fs::write(
                repo.join("stack/app/jobs.yaml"),
                format!(
                    "apiVersion: driftless.dev/v1alpha1\nkind: ImageCleanup\nmetadata: {{name: flaky}}\n\
                     spec:\n  schedule: \"* * * * * *\"\n  registry: {{url: \"{registry_url}\"}}\n\
                     \x20 protect: {{cluster: false, desired: false}}\n  rules: [{{repositories: \"none-such/*\", keepLast: 1}}]\n"
                ),
            )
            .unwrap();
        },
    )
    .start();
    let event = |name: &'static str| {
        let hooks = &hooks;
        async move {
            eventually(name, Duration::from_secs(60), || async {
                hooks
                    .requests()
                    .into_iter()
                    .find(|r| r.header("x-driftless-event") == name)
            })
            .await
        }
    };
    let failed = event("jobFailed").await;
    assert_eq!(
        failed.header("x-driftless-signature"),
        format!("sha256={}", hmac_hex(failed.body.as_bytes()))
    );
    let body = failed.json();
    assert_eq!(body["job"], "flaky", "{body}");
    assert_eq!(body["stacks"], serde_json::json!([format!("d-{}", d.id)]));
    assert!(
        body["summary"].as_str().unwrap().contains("failed"),
        "{body}"
    );
    assert!(!body["details"].as_array().unwrap().is_empty(), "{body}");
    healthy.store(true, Ordering::SeqCst);
    let recovered = event("jobRecovered").await.json();
    assert_eq!(recovered["job"], "flaky", "{recovered}");
}

#[tokio::test]
async fn a_backup_without_a_complete_backup_within_max_age_raises_backup_stale_once() {
    let hooks = Recorder::start(0).await;
    let backups = tempfile::tempdir().unwrap();
    let ns = support::unique_name("nt-stale");
    let leases = format!(
        "{TEST_LEASES}notify:\n  webhooks: [{{url: '{}/b', secretFile: hook-secret, events: [backupStale]}}]\n",
        hooks.base
    );
    let d = Setup::new(
        &Options {
            credentials: &[("hook-secret", HOOK_SECRET)],
            leases: &leases,
            ..Options::default()
        },
        |repo, _| {
            // Runs every second and fails every time (no such pod): no complete backup ever.
            std::fs::write(
                repo.join("stack/app/jobs.yaml"),
                format!(
                    "apiVersion: driftless.dev/v1alpha1\nkind: Backup\nmetadata: {{name: stale}}\nspec:\n  schedule: \"* * * * * *\"\n  \
                     source: {{exec: {{namespace: {ns}, pod: missing, command: [\"true\"]}}}}\n  \
                     destination: {{local: {{path: {}}}}}\n  retention: {{keepLast: 1}}\n  maxAge: 2s\n",
                    backups.path().display()
                ),
            )
            .unwrap();
        },
    )
    .start();
    let stale = eventually("backupStale", Duration::from_secs(60), || async {
        hooks
            .requests()
            .into_iter()
            .find(|r| r.header("x-driftless-event") == "backupStale")
    })
    .await;
    let body = stale.json();
    assert_eq!(body["job"], "stale", "{body}");
    assert!(
        body["details"][0].as_str().unwrap().contains("maxAge 2s"),
        "{body}"
    );
    // It stays stale: announced once, however many runs (and status refreshes) follow.
    let mut seen = Vec::new();
    while seen.len() < 3 {
        let last = seen.last().cloned();
        let next = eventually(
            "another run of the job",
            Duration::from_secs(30),
            || async {
                let st = d.status().await;
                let t = st["jobs"][0]["lastRun"]["startedAt"].clone();
                (!t.is_null() && Some(&t) != last.as_ref()).then_some(t)
            },
        )
        .await;
        seen.push(next);
    }
    let count = hooks
        .requests()
        .iter()
        .filter(|r| r.header("x-driftless-event") == "backupStale")
        .count();
    assert_eq!(count, 1);
}
