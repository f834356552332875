//! A `driftless run` process for integration tests: a real git repository, a host
//! configuration with a GitHub webhook secret, a NOTIFY_SOCKET read as systemd would.

use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hmac::{KeyInit, Mac};

use super::{TestEnv, git, unique_name};

pub const SECRET: &str = "webhook-secret-for-tests";

pub struct Daemon {
    pub child: Child,
    pub base: String,
    /// Every datagram the daemon sent to its NOTIFY_SOCKET, read by a thread as systemd would.
    notified: Arc<Mutex<Vec<String>>>,
    pub repo: tempfile::TempDir,
    pub dir: tempfile::TempDir,
    pub id: String,
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub fn write_stack(repo: &Path, id: &str, value: &str) {
    write_stack_with(repo, id, value, "");
}

pub fn write_stack_with(repo: &Path, id: &str, value: &str, extra_spec: &str) {
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

pub fn start_daemon() -> Daemon {
    start_daemon_with("")
}

pub fn start_daemon_with(extra_spec: &str) -> Daemon {
    start_daemon_prepared(extra_spec, |_, _| {})
}

/// Starts a daemon after `prepare` has written into the repository (before the first commit)
/// and into the state directory.
pub fn start_daemon_prepared(extra_spec: &str, prepare: impl FnOnce(&Path, &Path)) -> Daemon {
    let env = TestEnv::get();
    let id = unique_name("d");
    let repo = tempfile::tempdir().unwrap();
    git(repo.path(), &["init", "-q", "-b", "main"]);
    write_stack_with(repo.path(), &id, "one", extra_spec);
    let dir = tempfile::tempdir().unwrap();
    prepare(repo.path(), &dir.path().join("state"));
    git(repo.path(), &["add", "-A"]);
    git(repo.path(), &["commit", "-q", "-m", "first"]);
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
        .env("DRIFTLESS_HELM", env.var("HELM"))
        .env("DRIFTLESS_KUBECTL", env.var("KUBECTL"))
        // As systemd/driftless.service runs it (the benchmark measures its memory).
        .env("MALLOC_ARENA_MAX", "2")
        .env("NOTIFY_SOCKET", &socket_path)
        .env("WATCHDOG_USEC", "400000")
        .env_remove("CREDENTIALS_DIRECTORY")
        .env_remove("WATCHDOG_PID")
        .stdout(Stdio::null())
        // DRIFTLESS_TEST_DAEMON_LOG=<file> keeps the daemon's log (for looking into a test or a
        // benchmark; DRIFTLESS_LOG sets its filter).
        .stderr(match std::env::var_os("DRIFTLESS_TEST_DAEMON_LOG") {
            Some(path) => std::fs::File::create(path)
                .map(Stdio::from)
                .unwrap_or_else(|_| Stdio::null()),
            None => Stdio::null(),
        })
        .spawn()
        .unwrap();
    Daemon {
        child,
        base: format!("http://127.0.0.1:{port}"),
        notified,
        repo,
        dir,
        id,
    }
}

impl Daemon {
    /// Reads notify messages until one contains `want` or the deadline passes; returns all seen.
    pub fn wait_notify(&self, want: &str, timeout: Duration) -> Vec<String> {
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

    pub fn push_payload(&self) -> Vec<u8> {
        serde_json::to_vec(&serde_json::json!({
            "ref": "refs/heads/main",
            "after": "0000000000000000000000000000000000000000",
            "repository": {"clone_url": format!("file://{}", self.repo.path().display()), "full_name": "ops/stacks"}
        }))
        .unwrap()
    }

    pub async fn github(&self, body: &[u8], key: &str) -> reqwest::Response {
        github_push(&self.base, body, key).await
    }
}

/// A GitHub-style push webhook to `base`, signed with `key` (X-Hub-Signature-256).
pub async fn github_push(base: &str, body: &[u8], key: &str) -> reqwest::Response {
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(key.as_bytes()).unwrap();
    mac.update(body);
    let sig: String = mac
        .finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    super::registry::http()
        .post(format!("{base}/hooks/github"))
        .header("X-GitHub-Event", "push")
        .header("X-Hub-Signature-256", format!("sha256={sig}"))
        .header("Content-Type", "application/json")
        .body(body.to_vec())
        .send()
        .await
        .unwrap()
}

impl Daemon {
    pub async fn reconciles(&self) -> u64 {
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

    /// The status page's HTML.
    pub async fn page(&self) -> String {
        reqwest::get(format!("{}/", self.base))
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    /// The Prometheus text of `/metrics`.
    pub async fn metrics(&self) -> String {
        reqwest::get(format!("{}/metrics", self.base))
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    pub async fn status(&self) -> serde_json::Value {
        reqwest::get(format!("{}/api/v1/status", self.base))
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    /// The status once a run that started after the one `before` shows has been recorded (a run
    /// applies its changes before it records itself: seeing a change is not seeing its run).
    pub async fn next_run(&self, before: &serde_json::Value) -> serde_json::Value {
        let started = before["lastReconcile"]["startedAt"].clone();
        super::eventually(
            "the next reconcile recorded",
            Duration::from_secs(15),
            || async {
                let st = self.status().await;
                (st["lastReconcile"]["startedAt"] != started).then_some(st)
            },
        )
        .await
    }

    /// Waits until no reconcile has started for `quiet`.
    pub async fn settle(&self, quiet: Duration) -> u64 {
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
