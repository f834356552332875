//! `driftless run` against a real git repository and the test cluster: webhooks, coalescing,
//! status and metrics, the systemd notify protocol on a real NOTIFY_SOCKET, graceful stop.

mod support;

use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hmac::{KeyInit, Mac};
use k8s_openapi::api::core::v1::ConfigMap;
use kube::Api;
use support::{TestEnv, run_ok, unique_name};

const SECRET: &str = "webhook-secret-for-tests";

struct Daemon {
    child: Child,
    base: String,
    /// Every datagram the daemon sent to its NOTIFY_SOCKET, read by a thread as systemd would.
    notified: Arc<Mutex<Vec<String>>>,
    repo: tempfile::TempDir,
    _dir: tempfile::TempDir,
    id: String,
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn git(dir: &Path, args: &[&str]) {
    run_ok(
        Command::new("git")
            .arg("-C")
            .arg(dir)
            .args(["-c", "user.name=T", "-c", "user.email=t@driftless.invalid"])
            .args(args),
    );
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn write_stack(repo: &Path, id: &str, value: &str) {
    write_stack_with(repo, id, value, "");
}

fn write_stack_with(repo: &Path, id: &str, value: &str, extra_spec: &str) {
    std::fs::create_dir_all(repo.join("stack/app")).unwrap();
    std::fs::write(
        repo.join("stack/app/stack.yaml"),
        format!("apiVersion: driftless.dev/v1alpha1\nkind: Stack\nmetadata: {{name: d-{id}}}\nspec: {{namespace: ns-{id}{extra_spec}}}\n"),
    )
    .unwrap();
    std::fs::write(
        repo.join("stack/app/objects.yaml"),
        format!("apiVersion: v1\nkind: Namespace\nmetadata: {{name: ns-{id}}}\n---\napiVersion: v1\nkind: ConfigMap\nmetadata: {{name: settings}}\ndata: {{value: '{value}'}}\n"),
    )
    .unwrap();
}

fn start_daemon() -> Daemon {
    start_daemon_with("")
}

fn start_daemon_with(extra_spec: &str) -> Daemon {
    let env = TestEnv::get();
    let id = unique_name("d");
    let repo = tempfile::tempdir().unwrap();
    git(repo.path(), &["init", "-q", "-b", "main"]);
    write_stack_with(repo.path(), &id, "one", extra_spec);
    git(repo.path(), &["add", "-A"]);
    git(repo.path(), &["commit", "-q", "-m", "first"]);
    let dir = tempfile::tempdir().unwrap();
    let creds = dir.path().join("creds");
    std::fs::create_dir(&creds).unwrap();
    std::fs::write(creds.join("github-secret"), SECRET).unwrap();
    let port = free_port();
    let config = dir.path().join("driftless.yaml");
    std::fs::write(
        &config,
        format!(
            "instance: {id}\nsource:\n  git: {{url: 'file://{}', branch: main}}\nstateDir: {}\ncredentialsDir: {}\n\
             daemon:\n  listen: 127.0.0.1:{port}\n  pollInterval: 1h\n  webhooks: {{github: {{secretFile: github-secret}}}}\n",
            repo.path().display(),
            dir.path().join("state").display(),
            creds.display()
        ),
    )
    .unwrap();
    let socket_path = dir.path().join("notify.sock");
    let socket = UnixDatagram::bind(&socket_path).unwrap();
    let notified = Arc::new(Mutex::new(Vec::new()));
    let sink = notified.clone();
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = socket.recv(&mut buf) {
            sink.lock()
                .unwrap()
                .push(String::from_utf8_lossy(&buf[..n]).into_owned());
        }
    });
    let child = Command::new(env!("CARGO_BIN_EXE_driftless"))
        .arg("--config")
        .arg(&config)
        .arg("run")
        .env("KUBECONFIG", env.var("KUBECONFIG"))
        .env("NOTIFY_SOCKET", &socket_path)
        .env("WATCHDOG_USEC", "400000")
        .env_remove("CREDENTIALS_DIRECTORY")
        .env_remove("WATCHDOG_PID")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    Daemon {
        child,
        base: format!("http://127.0.0.1:{port}"),
        notified,
        repo,
        _dir: dir,
        id,
    }
}

impl Daemon {
    /// Reads notify messages until one contains `want` or the deadline passes; returns all seen.
    fn wait_notify(&self, want: &str, timeout: Duration) -> Vec<String> {
        let start = Instant::now();
        while start.elapsed() < timeout {
            let seen = self.notified.lock().unwrap().clone();
            if seen.iter().any(|m| m.contains(want)) {
                return seen;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!(
            "no {want:?} from the daemon within {timeout:?}; saw {:?}",
            self.notified.lock().unwrap()
        );
    }

    fn push_payload(&self) -> Vec<u8> {
        serde_json::to_vec(&serde_json::json!({
            "ref": "refs/heads/main",
            "after": "0000000000000000000000000000000000000000",
            "repository": {"clone_url": format!("file://{}", self.repo.path().display()), "full_name": "ops/stacks"}
        }))
        .unwrap()
    }

    async fn github(&self, body: &[u8], key: &str) -> reqwest::Response {
        let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(key.as_bytes()).unwrap();
        mac.update(body);
        let sig: String = mac
            .finalize()
            .into_bytes()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        reqwest::Client::new()
            .post(format!("{}/hooks/github", self.base))
            .header("X-GitHub-Event", "push")
            .header("X-Hub-Signature-256", format!("sha256={sig}"))
            .header("Content-Type", "application/json")
            .body(body.to_vec())
            .send()
            .await
            .unwrap()
    }

    async fn reconciles(&self) -> u64 {
        let text = reqwest::get(format!("{}/metrics", self.base))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        text.lines()
            .filter(|l| l.starts_with("driftless_reconciles_total"))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum::<f64>() as u64
    }

    async fn status(&self) -> serde_json::Value {
        reqwest::get(format!("{}/api/v1/status", self.base))
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    /// Waits until no reconcile has started for `quiet`.
    async fn settle(&self, quiet: Duration) -> u64 {
        let mut last = self.reconciles().await;
        loop {
            tokio::time::sleep(quiet).await;
            let now = self.reconciles().await;
            if now == last {
                return now;
            }
            last = now;
        }
    }
}

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
