//! The API server stops answering for 30 s: the daemon reports degraded, does not crash, and
//! resumes by itself. In its own test binary: freezing the API server stalls every other test.

mod support;

use std::process::Command;
use std::time::{Duration, Instant};

use support::daemon::{SECRET, start_daemon};
use support::{TestEnv, run_ok};

/// Freezes the API server (SIGSTOP) and thaws it on drop, even when the test fails.
struct Frozen(String);

impl Frozen {
    fn new() -> Frozen {
        let env = TestEnv::get();
        let pid = std::fs::read_to_string(format!(
            "{}/pids/kube-apiserver",
            env.var("DRIFTLESS_TESTENV_RUN")
        ))
        .expect("kube-apiserver pid")
        .trim()
        .to_owned();
        run_ok(Command::new("kill").args(["-STOP", &pid]));
        Frozen(pid)
    }
}

impl Drop for Frozen {
    fn drop(&mut self) {
        let _ = Command::new("kill").args(["-CONT", &self.0]).status();
    }
}

#[tokio::test]
async fn an_api_server_outage_degrades_status_and_reconciling_resumes() {
    let d = start_daemon();
    d.wait_notify("READY=1", Duration::from_secs(60));
    let frozen = Frozen::new();
    let start = Instant::now();
    let resp = d.github(&d.push_payload(), SECRET).await;
    assert_eq!(
        resp.status(),
        202,
        "the daemon's own endpoint keeps answering"
    );
    let status = support::eventually(
        "degraded while the API server is down",
        Duration::from_secs(60),
        || async {
            let st = d.status().await;
            (st["state"] == "degraded").then_some(st)
        },
    )
    .await;
    assert!(
        !status["errors"].as_array().unwrap().is_empty()
            || status["stacks"][0]["error"].is_string(),
        "{status}"
    );
    // Keep it down for 30 s in all.
    if let Some(rest) = Duration::from_secs(30).checked_sub(start.elapsed()) {
        tokio::time::sleep(rest).await;
    }
    drop(frozen);
    support::eventually(
        "ready again without outside help",
        Duration::from_secs(90),
        || async {
            let st = d.status().await;
            (st["state"] == "ready" && st["lastReconcile"]["ok"] == true).then_some(())
        },
    )
    .await;
    let mut d = d;
    assert!(
        d.child.try_wait().unwrap().is_none(),
        "the daemon is still running"
    );
}
