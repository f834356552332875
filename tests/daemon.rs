//! `driftless run` against a real git repository and the test cluster: webhooks, coalescing,
//! status and metrics, the systemd notify protocol on a real NOTIFY_SOCKET, drift, graceful stop.

mod support;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::ConfigMap;
use kube::Api;
use support::browser::chromium;
use support::daemon::{
    SECRET, github_push, start_daemon, start_daemon_prepared, start_daemon_with, write_stack,
    write_stack_with,
};
use support::{TestEnv, git, kubectl, run_ok};

#[tokio::test]
async fn webhooks_trigger_coalesced_syncs_and_the_notify_protocol_is_spoken() {
    let env = TestEnv::get();
    let client = env.kube_client().await;
    let d = start_daemon();
    let seen = d.wait_notify("READY=1", Duration::from_secs(60));
    assert!(seen.iter().any(|m| m.contains("READY=1")), "{seen:?}");
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), &format!("ns-{}", d.id));
    assert_eq!(
        cms.get("settings").await.unwrap().data.unwrap()["value"],
        "one",
        "first revision applied"
    );
    // Watchdog pings arrive at half of WATCHDOG_USEC.
    d.wait_notify("WATCHDOG=1", Duration::from_secs(5));
    let status = d.status().await;
    assert_eq!(status["state"], "ready", "{status}");
    assert_eq!(status["stacks"][0]["state"], "synced", "{status}");

    // A pushed commit is applied after a signed webhook.
    write_stack(d.repo.path(), &d.id, "two");
    git(d.repo.path(), &["commit", "-qam", "second"]);
    let before = d.settle(Duration::from_millis(500)).await;
    let resp = d.github(&d.push_payload(), SECRET).await;
    assert_eq!(resp.status(), 202);
    support::eventually(
        "the pushed commit applied",
        Duration::from_secs(30),
        || async { (cms.get("settings").await.ok()?.data?["value"] == "two").then_some(()) },
    )
    .await;
    let after_push = d.settle(Duration::from_millis(500)).await;
    assert_eq!(after_push, before + 1, "one webhook, one reconcile");

    // Wrong signature: 401 and nothing triggered.
    let resp = d.github(&d.push_payload(), "wrong-secret").await;
    assert_eq!(resp.status(), 401);
    assert_eq!(
        d.settle(Duration::from_millis(700)).await,
        after_push,
        "a rejected webhook triggers nothing"
    );

    // Over the body limit: 413.
    let big = vec![b' '; 2 * 1024 * 1024];
    let resp = d.github(&big, SECRET).await;
    assert_eq!(resp.status(), 413);

    // A burst of 500 valid webhooks coalesces: one run at its leading edge, at most one per
    // 2 s (the longest a burst may delay a run) while it goes on, and one after it; on a quiet
    // host the 500 arrive within 2 s, so at most 2.
    let payload = d.push_payload();
    let mut tasks = Vec::new();
    let start = Instant::now();
    for _ in 0..500 {
        let body = payload.clone();
        let base = d.base.clone();
        tasks.push(tokio::spawn(async move {
            github_push(&base, &body, SECRET).await.status().as_u16()
        }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap(), 202);
    }
    // Timings are the benchmarks' business; this one is only reported.
    println!("500 webhooks answered in {:?}", start.elapsed());
    let burst = start.elapsed();
    let after_burst = d.settle(Duration::from_millis(700)).await;
    // The coalescing rule: a run starts after 100 ms without a trigger (or 2 s into a burst), so
    // a burst of length B starts at most B / 100 ms runs, plus the one before and after it,
    // however slowly a loaded host delivers the webhooks. 500 webhooks, a handful of runs.
    let allowed = 2 + (burst.as_millis() / 100) as u64;
    assert!(
        after_burst - after_push <= allowed,
        "500 webhooks in {burst:?} gave {} reconciles (at most {allowed})",
        after_burst - after_push
    );
    let metrics = d.metrics().await;
    assert!(
        metrics.contains(
            "driftless_webhook_requests_total{provider=\"github\",outcome=\"accepted\"} 501"
        ),
        "{metrics}"
    );
    assert!(
        metrics.contains(
            "driftless_webhook_requests_total{provider=\"github\",outcome=\"rejected\"} 1"
        ),
        "{metrics}"
    );

    // The status page names the stack.
    let page = d.page().await;
    assert!(
        page.contains(&format!("d-{}", d.id)) && page.contains("synced"),
        "{page}"
    );

    // SIGTERM: STOPPING=1 and a clean exit.
    let mut d = d;
    run_ok(Command::new("kill").args(["-TERM", &d.child.id().to_string()]));
    d.wait_notify("STOPPING=1", Duration::from_secs(10));
    let start = Instant::now();
    let code = loop {
        if let Some(status) = d.child.try_wait().unwrap() {
            break status.code();
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "did not exit after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(code, Some(0));
}

/// A live change to the managed ConfigMap, by another field manager (kubectl-patch).
fn tamper(ns: &str) {
    kubectl(&[
        "patch",
        "configmap",
        "settings",
        "-n",
        ns,
        "--type",
        "merge",
        "-p",
        r#"{"data":{"value":"tampered"}}"#,
    ]);
}

#[tokio::test]
async fn live_changes_are_reverted_within_seconds_without_waiting_for_the_poll() {
    let env = TestEnv::get();
    let client = env.kube_client().await;
    let d = start_daemon();
    d.wait_notify("READY=1", Duration::from_secs(60));
    let ns = format!("ns-{}", d.id);
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), &ns);
    let synced = d.status().await;
    tamper(&ns);
    let start = Instant::now();
    support::eventually(
        "the live change reverted",
        Duration::from_secs(15),
        || async { (cms.get("settings").await.ok()?.data?["value"] == "one").then_some(()) },
    )
    .await;
    // The poll interval is an hour: the watch did it.
    assert!(start.elapsed() < Duration::from_secs(15));
    let status = d.next_run(&synced).await;
    assert_eq!(status["lastReconcile"]["trigger"], "drift", "{status}");

    // Deleted behind driftless's back (the revision unchanged, so only the watch can tell):
    // created again within seconds.
    support::kubectl(&["-n", &ns, "delete", "configmap", "settings"]);
    support::eventually(
        "the deleted object recreated",
        Duration::from_secs(15),
        || async { (cms.get("settings").await.ok()?.data?["value"] == "one").then_some(()) },
    )
    .await;
}

#[tokio::test]
async fn with_self_heal_off_drift_is_reported_not_reverted() {
    let env = TestEnv::get();
    let client = env.kube_client().await;
    let d = start_daemon_with(", selfHeal: false");
    d.wait_notify("READY=1", Duration::from_secs(60));
    let ns = format!("ns-{}", d.id);
    tamper(&ns);
    let status = support::eventually(
        "drift reported in status",
        Duration::from_secs(15),
        || async {
            let st = d.status().await;
            (st["stacks"][0]["drifted"] == 1).then_some(st)
        },
    )
    .await;
    assert_eq!(status["stacks"][0]["state"], "drifted", "{status}");
    let metrics = d.metrics().await;
    assert!(
        metrics.contains(&format!(
            "driftless_drifted_objects{{target=\"default\",stack=\"d-{}\"}} 1",
            d.id
        )),
        "{metrics}"
    );
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), &ns);
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        cms.get("settings").await.unwrap().data.unwrap()["value"],
        "tampered",
        "not reverted"
    );
    // A new revision is still applied.
    write_stack_with(d.repo.path(), &d.id, "two", ", selfHeal: false");
    git(d.repo.path(), &["commit", "-qam", "second"]);
    let resp = d.github(&d.push_payload(), SECRET).await;
    assert_eq!(resp.status(), 202);
    support::eventually(
        "the new revision applied",
        Duration::from_secs(20),
        || async { (cms.get("settings").await.ok()?.data?["value"] == "two").then_some(()) },
    )
    .await;
}

#[tokio::test]
async fn an_unreachable_git_remote_keeps_the_last_revision_and_is_reported() {
    let env = TestEnv::get();
    let client = env.kube_client().await;
    let d = start_daemon();
    d.wait_notify("READY=1", Duration::from_secs(60));
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), &format!("ns-{}", d.id));
    // The remote goes away (its URL stays configured).
    let moved = d.repo.path().with_extension("away");
    std::fs::rename(d.repo.path(), &moved).unwrap();
    let resp = d.github(&d.push_payload(), SECRET).await;
    assert_eq!(resp.status(), 202);
    let status = support::eventually(
        "the source error reported",
        Duration::from_secs(20),
        || async {
            let st = d.status().await;
            (st["state"] == "degraded").then_some(st)
        },
    )
    .await;
    let errors = status["errors"].to_string();
    assert!(
        errors.contains("source:") && errors.contains("keeping the last good revision"),
        "{status}"
    );
    assert!(status["appliedRevision"]["subject"] == "first", "{status}");
    assert_eq!(
        cms.get("settings").await.unwrap().data.unwrap()["value"],
        "one",
        "last revision still applied"
    );
    let page = d.page().await;
    assert!(
        page.contains("degraded") && page.contains("keeping the last good revision"),
        "{page}"
    );
    // It comes back: the daemon recovers by itself (retry with backoff).
    std::fs::rename(&moved, d.repo.path()).unwrap();
    support::eventually("recovered", Duration::from_secs(30), || async {
        (d.status().await["state"] == "ready").then_some(())
    })
    .await;
}

#[tokio::test]
async fn the_status_page_renders_in_headless_chromium() {
    let d = start_daemon();
    d.wait_notify("READY=1", Duration::from_secs(60));
    let url = format!("{}/", d.base);
    let dom = String::from_utf8(chromium(&["--dump-dom", &url]).stdout).unwrap();
    // The browser parsed the document: the state badge, the summary and the stack's row.
    assert!(
        dom.contains(r#"<span class="badge ready" id="state">ready</span>"#),
        "{dom}"
    );
    assert!(
        dom.contains("<table id=\"summary\">") && dom.contains("first"),
        "revision subject shown: {dom}"
    );
    assert!(
        dom.contains(&format!(
            "<td><a href=\"/stacks/d-{}\">d-{}</a></td><td class=\"synced\">synced</td>",
            d.id, d.id
        )),
        "{dom}"
    );
    let shot = tempfile::tempdir().unwrap();
    let png = shot.path().join("status.png");
    chromium(&[&format!("--screenshot={}", png.display()), &url]);
    let bytes = std::fs::read(&png).expect("screenshot written");
    assert!(
        bytes.starts_with(b"\x89PNG") && bytes.len() > 10_000,
        "a real rendering ({} bytes)",
        bytes.len()
    );
    if let Ok(dir) = std::env::var("DRIFTLESS_KEEP_SCREENSHOTS") {
        let _ = std::fs::copy(&png, Path::new(&dir).join("status-page.png"));
    }
}

/// A new revision after a full reconcile is applied incrementally (only the objects whose
/// desired state changed are read, dry-run and waited for), and that shortcut never hides a
/// change made behind driftless's back: the watches report it and a full reconcile fixes it.
#[tokio::test]
async fn new_revisions_are_incremental_and_drift_is_still_corrected() {
    let env = TestEnv::get();
    let client = env.kube_client().await;
    let d = start_daemon_prepared("", |repo, _| {
        std::fs::write(
            repo.join("stack/app/other.yaml"),
            "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: other}\ndata: {value: 'kept'}\n",
        )
        .unwrap();
    });
    d.wait_notify("READY=1", Duration::from_secs(60));
    let ns = format!("ns-{}", d.id);
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), &ns);
    let value = |name: &'static str| {
        let cms = cms.clone();
        async move { cms.get(name).await.ok()?.data?.get("value").cloned() }
    };

    // A commit changing one object, announced by webhook: an incremental reconcile applies it.
    write_stack(d.repo.path(), &d.id, "two");
    git(d.repo.path(), &["commit", "-qam", "two"]);
    assert!(
        d.github(&d.push_payload(), SECRET)
            .await
            .status()
            .is_success()
    );
    support::eventually("the change applied", Duration::from_secs(15), || async {
        (value("settings").await.as_deref() == Some("two")).then_some(())
    })
    .await;
    let status = support::eventually(
        "the reconcile recorded",
        Duration::from_secs(15),
        || async {
            // The webhook's run: the start run may still be the last one recorded while the
            // webhook's run has already applied the change.
            let st = d.status().await;
            (st["lastReconcile"]["ok"] == true
                && st["lastReconcile"]["trigger"]
                    .as_str()
                    .is_some_and(|t| t.starts_with("webhook")))
            .then_some(st)
        },
    )
    .await;
    assert_eq!(status["lastReconcile"]["mode"], "incremental", "{status}");
    assert_eq!(value("other").await.as_deref(), Some("kept"));

    // The object the commit did not touch, deleted behind driftless's back: the watch sees it,
    // a full reconcile recreates it.
    kubectl(&["-n", &ns, "delete", "configmap", "other"]);
    support::eventually(
        "the deleted object recreated",
        Duration::from_secs(15),
        || async { (value("other").await.as_deref() == Some("kept")).then_some(()) },
    )
    .await;
    let status = d.next_run(&status).await;
    assert_eq!(status["lastReconcile"]["trigger"], "drift", "{status}");
    assert_eq!(status["lastReconcile"]["mode"], "full", "{status}");

    // Edited behind driftless's back, then a commit that changes only the other object: the
    // edit is reverted as well (the watch forces the full reconcile).
    tamper(&ns);
    std::fs::write(
        d.repo.path().join("stack/app/other.yaml"),
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: other}\ndata: {value: 'changed'}\n",
    )
    .unwrap();
    git(d.repo.path(), &["commit", "-qam", "other changed"]);
    assert!(
        d.github(&d.push_payload(), SECRET)
            .await
            .status()
            .is_success()
    );
    support::eventually("both corrected", Duration::from_secs(15), || async {
        (value("settings").await.as_deref() == Some("two")
            && value("other").await.as_deref() == Some("changed"))
        .then_some(())
    })
    .await;
}

/// `listen: 127.0.0.1:0`: the daemon binds a port of its choosing before anyone asks, names it
/// in its log and in `<stateDir>/listen`, and `driftless status` finds it there; the file goes
/// at a clean stop.
#[tokio::test]
async fn a_daemon_on_a_port_of_its_choosing_is_found_by_status() {
    let d = start_daemon();
    d.wait_notify("READY=1", Duration::from_secs(60));
    let listen_file = d.dir.path().join("state/listen");
    let addr = std::fs::read_to_string(&listen_file).unwrap();
    assert_eq!(d.base, format!("http://{}", addr.trim()));
    assert!(!addr.trim().ends_with(":0"), "{addr}");
    let log = std::fs::read_to_string(d.dir.path().join("daemon.log")).unwrap_or_default();
    if std::env::var_os("DRIFTLESS_TEST_DAEMON_LOG").is_none() {
        assert!(log.contains(addr.trim()), "the log names {addr}: {log}");
    }
    let config = d.dir.path().join("driftless.yaml");
    let out = support::driftless(&config, &["status", "--output", "json"]);
    assert!(out.status.success(), "{}", support::text(&out));
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(status["state"], "ready", "{status}");
    let mut d = d;
    run_ok(Command::new("kill").args(["-TERM", &d.child.id().to_string()]));
    let code = d.child.wait().unwrap().code();
    assert_eq!(code, Some(0));
    assert!(
        !listen_file.exists(),
        "the listen file is removed at a clean stop"
    );
    let out = support::driftless(&config, &["status"]);
    assert!(!out.status.success());
    assert!(
        support::text(&out).contains("names none (is `driftless run` running?)"),
        "{}",
        support::text(&out)
    );
}

/// The followed branch is renamed on the remote: the status and a metric say it is missing,
/// the daemon is degraded, the last good revision stays applied and nothing is pruned; once the
/// branch is back the daemon recovers by itself.
#[tokio::test]
async fn a_branch_gone_from_the_remote_is_reported_and_nothing_is_pruned() {
    let env = TestEnv::get();
    let client = env.kube_client().await;
    let d = start_daemon();
    d.wait_notify("READY=1", Duration::from_secs(60));
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), &format!("ns-{}", d.id));
    let ready = d.status().await;
    assert_eq!(ready["state"], "ready", "{ready}");
    assert!(ready.get("missingRef").is_none(), "{ready}");

    // On the renamed branch, a new commit: not followed, never applied.
    git(d.repo.path(), &["branch", "-m", "main", "renamed"]);
    write_stack(d.repo.path(), &d.id, "two");
    git(d.repo.path(), &["commit", "-qam", "second"]);
    assert_eq!(d.github(&d.push_payload(), SECRET).await.status(), 202);
    let status = support::eventually(
        "the missing branch reported",
        Duration::from_secs(30),
        || async {
            let st = d.status().await;
            (st["state"] == "degraded" && st["missingRef"].is_string()).then_some(st)
        },
    )
    .await;
    assert_eq!(status["missingRef"], "branch main", "{status}");
    let errors = status["errors"].to_string();
    assert!(
        errors.contains("branch main not found on the remote")
            && errors.contains("keeping the last good revision"),
        "{status}"
    );
    assert_eq!(status["appliedRevision"]["subject"], "first", "{status}");
    let metrics = d.metrics().await;
    assert!(
        metrics.contains("driftless_source_ref_missing 1"),
        "{metrics}"
    );
    // More runs while the branch is missing (a retry and another webhook): the last good
    // revision is reconciled, nothing of it pruned.
    let seen = d.next_run(&status).await;
    assert_eq!(d.github(&d.push_payload(), SECRET).await.status(), 202);
    let again = d.next_run(&seen).await;
    assert_eq!(again["state"], "degraded", "{again}");
    assert_eq!(again["missingRef"], "branch main", "{again}");
    assert_eq!(
        cms.get("settings").await.unwrap().data.unwrap()["value"],
        "one",
        "the last good revision stays applied"
    );
    let page = d.page().await;
    assert!(
        page.contains("branch main not found on the remote"),
        "{page}"
    );

    // The branch is back (with the commit made meanwhile): applied, and ready again.
    git(d.repo.path(), &["branch", "-m", "renamed", "main"]);
    assert_eq!(d.github(&d.push_payload(), SECRET).await.status(), 202);
    let recovered = support::eventually("recovered", Duration::from_secs(60), || async {
        let st = d.status().await;
        (st["state"] == "ready" && st["appliedRevision"]["subject"] == "second").then_some(st)
    })
    .await;
    assert!(recovered.get("missingRef").is_none(), "{recovered}");
    assert!(
        d.metrics().await.contains("driftless_source_ref_missing 0"),
        "the metric is back to 0"
    );
    assert_eq!(
        cms.get("settings").await.unwrap().data.unwrap()["value"],
        "two"
    );
}

/// A checkout per fetched revision would fill the disk of a host that follows a busy branch:
/// after each reconcile the daemon keeps the applied revision and the few newest, nothing else.
#[tokio::test]
async fn old_checkouts_are_removed_and_the_applied_one_is_kept() {
    let env = TestEnv::get();
    let client = env.kube_client().await;
    let d = start_daemon();
    d.wait_notify("READY=1", Duration::from_secs(60));
    let cms: Api<ConfigMap> = Api::namespaced(client, &format!("ns-{}", d.id));
    let checkouts = d.dir.path().join("state/git/checkouts");
    let first = git(d.repo.path(), &["rev-parse", "HEAD"]).trim().to_owned();
    assert!(
        checkouts.join(&first).is_dir(),
        "the first revision is checked out"
    );
    for n in 0..5 {
        let value = format!("v{n}");
        write_stack(d.repo.path(), &d.id, &value);
        git(d.repo.path(), &["commit", "-qam", &value]);
        assert!(
            d.github(&d.push_payload(), SECRET)
                .await
                .status()
                .is_success()
        );
        support::eventually("the commit applied", Duration::from_secs(20), || async {
            let got = cms.get("settings").await.ok()?.data?.get("value").cloned();
            (got.as_deref() == Some(value.as_str())).then_some(())
        })
        .await;
    }
    let head = git(d.repo.path(), &["rev-parse", "HEAD"]).trim().to_owned();
    // The removal follows the reconcile that applied the last commit.
    let names = support::eventually("old checkouts removed", Duration::from_secs(20), || async {
        let names: Vec<String> = std::fs::read_dir(&checkouts)
            .ok()?
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .collect();
        (!names.contains(&first)).then_some(names)
    })
    .await;
    assert!(
        names.contains(&head),
        "the applied revision is kept: {names:?}"
    );
    assert!(
        names.len() <= 4,
        "the applied one and the 3 newest at most: {names:?}"
    );
}

/// Dry-run requests (status subresources excluded) to HPAs and ResourceQuotas, server-wide: no
/// other test uses these kinds, so the counts are this test's.
async fn churn_dry_runs(client: &kube::Client) -> u64 {
    support::apiserver_requests(client)
        .await
        .iter()
        .filter(|s| !s.label("dry_run").is_empty() && s.label("subresource").is_empty())
        .filter(|s| ["horizontalpodautoscalers", "resourcequotas"].contains(&s.label("resource")))
        .map(|s| s.value as u64)
        .sum()
}

fn get_json(ns: &str, what: &str) -> serde_json::Value {
    serde_json::from_str(&kubectl(&["-n", ns, "get", what, "-o", "json"])).unwrap()
}

/// The quota's count of ConfigMaps in use, as its controller last wrote it.
fn configmaps_used(ns: &str) -> u64 {
    get_json(ns, "resourcequota/q")["status"]["used"]["configmaps"]
        .as_str()
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

/// The number of ConfigMaps in `ns`, once the quota's status counts them all.
async fn counted_configmaps(ns: &str) -> u64 {
    support::eventually(
        "the quota's usage counted",
        Duration::from_secs(30),
        || async {
            let n = get_json(ns, "configmaps")["items"]
                .as_array()
                .map_or(0, |i| i.len() as u64);
            (configmaps_used(ns) == n).then_some(n)
        },
    )
    .await
}

/// Controllers writing status — an HPA, a ResourceQuota, a Deployment scaled by its controller —
/// wake no drift watch and cost no dry-run, while another manager's edits of their spec, labels
/// and annotations (also through the status subresource) are still reverted within seconds.
#[tokio::test]
async fn status_writes_wake_nothing_and_foreign_edits_are_still_reverted() {
    let client = TestEnv::get().kube_client().await;
    let d = start_daemon_prepared("", |repo, _| {
        std::fs::write(
            repo.join("stack/app/churn.yaml"),
            "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: web, labels: {tier: web}, annotations: {note: x}}\n\
             spec:\n  replicas: 1\n  selector: {matchLabels: {app: web}}\n  template:\n    metadata: {labels: {app: web}}\n    spec: {containers: [{name: web, image: registry.invalid/web:1}]}\n---\n\
             apiVersion: autoscaling/v2\nkind: HorizontalPodAutoscaler\nmetadata: {name: web, labels: {tier: web}, annotations: {note: x}}\n\
             spec:\n  scaleTargetRef: {apiVersion: apps/v1, kind: Deployment, name: web}\n  minReplicas: 1\n  maxReplicas: 3\n\
             ---\napiVersion: v1\nkind: ResourceQuota\nmetadata: {name: q, labels: {tier: web}, annotations: {note: x}}\n\
             spec: {hard: {pods: '10', configmaps: '10'}}\n",
        )
        .unwrap();
    });
    d.wait_notify("READY=1", Duration::from_secs(90));
    let ns = format!("ns-{}", d.id);
    let ns = ns.as_str();
    support::eventually("the HPA's status", Duration::from_secs(90), || async {
        get_json(ns, "hpa/web")["status"]["conditions"]
            .as_array()
            .is_some_and(|c| !c.is_empty())
            .then_some(())
    })
    .await;

    // Status rewritten by the controllers: quota usage (a ConfigMap created), the Deployment's
    // pod replaced. Neither wakes a watch, and nothing is dry-run.
    let reconciles = d.settle(Duration::from_secs(2)).await;
    let dry_runs = churn_dry_runs(&client).await;
    let pod = get_json(ns, "pods")["items"][0]["metadata"]["name"]
        .as_str()
        .expect("the Deployment's pod")
        .to_owned();
    let used = counted_configmaps(ns).await;
    kubectl(&["-n", ns, "create", "configmap", "extra"]);
    kubectl(&["-n", ns, "delete", "pod", &pod, "--wait=false"]);
    support::eventually("status rewritten", Duration::from_secs(60), || async {
        let used = configmaps_used(ns) == used + 1;
        let replaced = get_json(ns, "pods")["items"].as_array().is_some_and(|p| {
            p.iter()
                .any(|p| p["metadata"]["name"] != pod.as_str() && p["status"]["phase"] == "Running")
        });
        let available = get_json(ns, "deployment/web")["status"]["availableReplicas"] == 1;
        (used && replaced && available).then_some(())
    })
    .await;
    assert_eq!(
        d.settle(Duration::from_secs(3)).await,
        reconciles,
        "status writes triggered a reconcile"
    );
    assert_eq!(churn_dry_runs(&client).await, dry_runs);

    // Another manager's edits: each reverted by a drift-triggered reconcile.
    let as_applied = || {
        let hpa = get_json(ns, "hpa/web");
        let quota = get_json(ns, "resourcequota/q");
        let deployment = get_json(ns, "deployment/web");
        hpa["spec"]["maxReplicas"] == 3
            && quota["spec"]["hard"]["pods"] == "10"
            && deployment["spec"]["template"]["spec"]["containers"][0]["image"]
                == "registry.invalid/web:1"
            && [&hpa, &quota, &deployment].iter().all(|o| {
                o["metadata"]["labels"]["tier"] == "web"
                    && o["metadata"]["annotations"]["note"] == "x"
            })
    };
    for (what, edits, _) in support::churn::foreign_edits() {
        let status = d.status().await;
        for edit in &edits {
            let mut args = vec!["-n", ns];
            args.extend(edit);
            kubectl(&args);
        }
        // (The daemon may have reverted them already: no assertion that they took. The
        // noop_cost test shows `diff` finding each.)
        support::eventually(
            &format!("the {what} edits reverted"),
            Duration::from_secs(20),
            || async { as_applied().then_some(()) },
        )
        .await;
        let status = d.next_run(&status).await;
        assert_eq!(
            status["lastReconcile"]["trigger"], "drift",
            "{what}: {status}"
        );
    }

    // A full reconcile (woken by one edit) after the quota's status moved again: the quota and
    // the HPA are not dry-run.
    d.settle(Duration::from_secs(2)).await;
    let used = counted_configmaps(ns).await;
    kubectl(&["-n", ns, "create", "configmap", "extra-2"]);
    support::eventually("quota usage rewritten", Duration::from_secs(30), || async {
        (configmaps_used(ns) == used + 1).then_some(())
    })
    .await;
    let dry_runs = churn_dry_runs(&client).await;
    let status = d.status().await;
    kubectl(&[
        "-n",
        ns,
        "annotate",
        "deployment/web",
        "note=tampered",
        "--overwrite",
    ]);
    support::eventually("the edit reverted", Duration::from_secs(20), || async {
        as_applied().then_some(())
    })
    .await;
    let status = d.next_run(&status).await;
    assert_eq!(status["lastReconcile"]["mode"], "full", "{status}");
    d.settle(Duration::from_secs(2)).await;
    assert_eq!(
        churn_dry_runs(&client).await,
        dry_runs,
        "HPA or ResourceQuota dry-run by a reconcile that did not need it"
    );
    // Its pod leaves the shared nodes, once the daemon no longer restores it (a failed test
    // leaves it for inspection).
    let stack = format!("inventory-d-{}", d.id);
    let ns = ns.to_owned();
    drop(d);
    kubectl(&["delete", "namespace", &ns, "--wait=false"]);
    kubectl(&["-n", "driftless-system", "delete", "configmap", &stack]);
}
