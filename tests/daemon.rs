//! `driftless run` against a real git repository and the test cluster: webhooks, coalescing,
//! status and metrics, the systemd notify protocol on a real NOTIFY_SOCKET, drift, graceful stop.

mod support;

use std::process::Command;
use std::time::{Duration, Instant};

use hmac::{KeyInit, Mac};
use k8s_openapi::api::core::v1::ConfigMap;
use kube::Api;
use support::daemon::{
    SECRET, git, start_daemon, start_daemon_with, write_stack, write_stack_with,
};
use support::{TestEnv, run_ok};

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

    // A burst of 500 valid webhooks gives at most 2 reconciles.
    let payload = d.push_payload();
    let mut tasks = Vec::new();
    let start = Instant::now();
    for _ in 0..500 {
        let body = payload.clone();
        let base = d.base.clone();
        let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(SECRET.as_bytes()).unwrap();
        mac.update(&body);
        let sig: String = mac
            .finalize()
            .into_bytes()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        tasks.push(tokio::spawn(async move {
            reqwest::Client::new()
                .post(format!("{base}/hooks/github"))
                .header("X-GitHub-Event", "push")
                .header("X-Hub-Signature-256", format!("sha256={sig}"))
                .body(body)
                .send()
                .await
                .map(|r| r.status().as_u16())
        }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap().unwrap(), 202);
    }
    assert!(
        start.elapsed() < Duration::from_secs(30),
        "500 webhooks answered in {:?}",
        start.elapsed()
    );
    let after_burst = d.settle(Duration::from_millis(700)).await;
    assert!(
        after_burst - after_push <= 2,
        "500 webhooks gave {} reconciles",
        after_burst - after_push
    );
    let metrics = reqwest::get(format!("{}/metrics", d.base))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
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
    let page = reqwest::get(format!("{}/", d.base))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
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

fn kubectl(args: &[&str]) -> String {
    let env = TestEnv::get();
    run_ok(
        Command::new(env.var("KUBECTL"))
            .arg("--kubeconfig")
            .arg(env.var("KUBECONFIG"))
            .args(args),
    )
}

#[tokio::test]
async fn live_changes_are_reverted_within_seconds_without_waiting_for_the_poll() {
    let env = TestEnv::get();
    let client = env.kube_client().await;
    let d = start_daemon();
    d.wait_notify("READY=1", Duration::from_secs(60));
    let ns = format!("ns-{}", d.id);
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), &ns);
    kubectl(&[
        "patch",
        "configmap",
        "settings",
        "-n",
        &ns,
        "--type",
        "merge",
        "-p",
        r#"{"data":{"value":"tampered"}}"#,
    ]);
    let start = Instant::now();
    support::eventually(
        "the live change reverted",
        Duration::from_secs(15),
        || async { (cms.get("settings").await.ok()?.data?["value"] == "one").then_some(()) },
    )
    .await;
    // The poll interval is an hour: the watch did it.
    assert!(start.elapsed() < Duration::from_secs(15));
    let status = d.status().await;
    assert_eq!(status["lastReconcile"]["trigger"], "drift", "{status}");
}

#[tokio::test]
async fn with_self_heal_off_drift_is_reported_not_reverted() {
    let env = TestEnv::get();
    let client = env.kube_client().await;
    let d = start_daemon_with(", selfHeal: false");
    d.wait_notify("READY=1", Duration::from_secs(60));
    let ns = format!("ns-{}", d.id);
    kubectl(&[
        "patch",
        "configmap",
        "settings",
        "-n",
        &ns,
        "--type",
        "merge",
        "-p",
        r#"{"data":{"value":"tampered"}}"#,
    ]);
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
    let metrics = reqwest::get(format!("{}/metrics", d.base))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains(&format!(
            "driftless_drifted_objects{{stack=\"d-{}\"}} 1",
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
    let page = reqwest::get(format!("{}/", d.base))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
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
