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

/// The client for requests to the daemon: one per thread (each `#[tokio::test]` has its own
/// runtime), without idle connections kept: the daemon closes idle ones, and a request must
/// never race such a close.
pub fn http() -> reqwest::Client {
    thread_local! {
        static CLIENT: reqwest::Client = reqwest::Client::builder()
            .pool_max_idle_per_host(0)
            .build()
            .unwrap();
    }
    CLIENT.with(Clone::clone)
}

pub struct Daemon {
    pub child: Child,
    /// `http://<address the daemon bound>`.
    pub base: String,
    /// Every datagram the daemon sent to its NOTIFY_SOCKET, read by a thread as systemd would.
    notified: Arc<Mutex<Vec<String>>>,
    pub repo: tempfile::TempDir,
    pub dir: tempfile::TempDir,
    pub id: String,
    /// The bearer token the helpers send (when the daemon has `statusTokenFile`).
    pub token: Option<String>,
}

impl Daemon {
    /// The host configuration file.
    pub fn config(&self) -> std::path::PathBuf {
        self.dir.path().join("driftless.yaml")
    }

    /// The daemon's log so far.
    pub fn log(&self) -> String {
        let path = std::env::var_os("DRIFTLESS_TEST_DAEMON_LOG")
            .map(std::path::PathBuf::from)
            .unwrap_or_else(|| self.dir.path().join("daemon.log"));
        std::fs::read_to_string(path).unwrap_or_default()
    }

    /// Writes the host configuration anew (atomically) with `options` and sends SIGHUP.
    pub fn reconfigure(&self, options: &Options<'_>) {
        let text = config_text(&self.id, self.repo.path(), self.dir.path(), options);
        let tmp = self.dir.path().join("driftless.yaml.tmp");
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, self.config()).unwrap();
        super::run_ok(Command::new("kill").args(["-HUP", &self.child.id().to_string()]));
    }

    /// Writes a file into the credentials directory.
    pub fn write_credential(&self, name: &str, content: &str) {
        std::fs::write(self.dir.path().join("creds").join(name), content).unwrap();
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A port that was free a moment ago. Racy (another process may take it before it is bound):
/// only for servers that cannot bind port 0 and report the port they got.
/// A child process killed when dropped: a test that panics leaves no daemon behind.
pub struct KillOnDrop(pub Child);

impl std::ops::Deref for KillOnDrop {
    type Target = Child;

    fn deref(&self) -> &Child {
        &self.0
    }
}

impl std::ops::DerefMut for KillOnDrop {
    fn deref_mut(&mut self) -> &mut Child {
        &mut self.0
    }
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A port free a moment ago, for a server that cannot bind port 0 and report it (the registry a
/// test starts). A daemon binds port 0 instead: see `wait_listening`.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The endpoint of a daemon started with `listen: 127.0.0.1:0`: waits until it has bound and
/// written `<state_dir>/listen` (removed beforehand by the caller, or fresh), and returns
/// `http://<address>`. Panics if `child` exits first or nothing is written within 60 s.
pub fn wait_listening(state_dir: &Path, child: &mut Child) -> String {
    let listen_file = state_dir.join("listen");
    let start = Instant::now();
    loop {
        if let Ok(text) = std::fs::read_to_string(&listen_file)
            && text.ends_with('\n')
        {
            return format!("http://{}", text.trim());
        }
        if let Some(status) = child.try_wait().unwrap() {
            panic!("the daemon exited ({status}) before listening");
        }
        if start.elapsed() > Duration::from_secs(60) {
            let _ = child.kill();
            panic!("the daemon did not listen within 60 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
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
    Setup::new(
        &Options {
            extra_spec,
            ..Options::default()
        },
        prepare,
    )
    .start()
}

/// What a test may change in the daemon's setup.
pub struct Options<'a> {
    /// Appended to the stack's `spec` (e.g. `", selfHeal: false"`).
    pub extra_spec: &'a str,
    /// `daemon.listen`.
    pub listen: &'a str,
    /// More lines under `daemon:`, each indented by two spaces and ending in a newline.
    pub daemon: &'a str,
    /// More files in the credentials directory: (name, content).
    pub credentials: &'a [(&'a str, &'a str)],
    /// The bearer token the helpers send.
    pub token: Option<&'a str>,
    /// The `leases:` block (short renewals, so that tests need not wait 5 s for a daemon's
    /// first take).
    pub leases: &'a str,
    /// More top-level lines of the host configuration (e.g. `targets:`), ending in a newline.
    pub host: &'a str,
}

/// The test daemons' `leases:` unless a test sets its own.
pub const TEST_LEASES: &str = "leases: {renewInterval: 500ms, duration: 10s}\n";

impl Default for Options<'_> {
    fn default() -> Self {
        Options {
            extra_spec: "",
            listen: "127.0.0.1:0",
            daemon: "",
            credentials: &[],
            token: None,
            leases: TEST_LEASES,
            host: "",
        }
    }
}

/// The host configuration of a test daemon: its repository, state and credentials in `dir`.
fn config_text(id: &str, repo: &Path, dir: &Path, options: &Options<'_>) -> String {
    format!(
        "instance: {id}\nsource:\n  git: {{url: 'file://{}', branch: main}}\nstateDir: {}\ncredentialsDir: {}\n\
         daemon:\n  listen: {}\n  pollInterval: 1h\n  webhooks: {{github: {{secretFile: github-secret}}}}\n{}{}{}",
        repo.display(),
        dir.join("state").display(),
        dir.join("creds").display(),
        options.listen,
        options.daemon,
        options.leases,
        options.host,
    )
}

/// A repository, a host configuration and a state directory, before the daemon runs.
pub struct Setup {
    pub repo: tempfile::TempDir,
    pub dir: tempfile::TempDir,
    pub id: String,
    pub config: std::path::PathBuf,
    token: Option<String>,
}

impl Setup {
    pub fn new(options: &Options<'_>, prepare: impl FnOnce(&Path, &Path)) -> Setup {
        let id = unique_name("d");
        let repo = tempfile::tempdir().unwrap();
        git(repo.path(), &["init", "-q", "-b", "main"]);
        write_stack_with(repo.path(), &id, "one", options.extra_spec);
        let dir = tempfile::tempdir().unwrap();
        prepare(repo.path(), &dir.path().join("state"));
        git(repo.path(), &["add", "-A"]);
        git(repo.path(), &["commit", "-q", "-m", "first"]);
        let creds = dir.path().join("creds");
        std::fs::create_dir(&creds).unwrap();
        std::fs::write(creds.join("github-secret"), SECRET).unwrap();
        for (name, content) in options.credentials {
            std::fs::write(creds.join(name), content).unwrap();
        }
        let config = dir.path().join("driftless.yaml");
        std::fs::write(&config, config_text(&id, repo.path(), dir.path(), options)).unwrap();
        Setup {
            repo,
            dir,
            id,
            config,
            token: options.token.map(str::to_owned),
        }
    }

    /// The state directory.
    pub fn state(&self) -> std::path::PathBuf {
        self.dir.path().join("state")
    }

    /// The daemon's log (standard error), unless `DRIFTLESS_TEST_DAEMON_LOG` names another file.
    pub fn log(&self) -> std::path::PathBuf {
        std::env::var_os("DRIFTLESS_TEST_DAEMON_LOG")
            .map(std::path::PathBuf::from)
            .unwrap_or_else(|| self.dir.path().join("daemon.log"))
    }

    fn command(&self) -> Command {
        let env = TestEnv::get();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_driftless"));
        cmd.arg("--config")
            .arg(&self.config)
            .arg("run")
            .env("KUBECONFIG", env.var("KUBECONFIG"))
            .env("DRIFTLESS_HELM", env.var("HELM"))
            .env("DRIFTLESS_KUBECTL", env.var("KUBECTL"))
            // As systemd/driftless.service runs it (the benchmark measures its memory).
            .env("MALLOC_ARENA_MAX", "2")
            .env("WATCHDOG_USEC", "400000")
            .env_remove("CREDENTIALS_DIRECTORY")
            .env_remove("WATCHDOG_PID")
            .stdout(Stdio::null())
            // The log is kept (DRIFTLESS_LOG sets its filter): a failing test shows its end.
            .stderr(Stdio::from(std::fs::File::create(self.log()).unwrap()));
        cmd
    }

    /// Runs the daemon expecting it to refuse to start: its exit status and log.
    pub fn refused(&self) -> (std::process::ExitStatus, String) {
        let mut child = self.command().spawn().unwrap();
        let start = Instant::now();
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return (
                    status,
                    std::fs::read_to_string(self.log()).unwrap_or_default(),
                );
            }
            if start.elapsed() > Duration::from_secs(30) {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "the daemon did not refuse to start; it logged:\n{}",
                    std::fs::read_to_string(self.log()).unwrap_or_default()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// A second daemon's setup: the same repository and instance, its own state, credentials
    /// and host configuration (with `options`).
    pub fn sibling(&self, options: &Options<'_>) -> Setup {
        let dir = tempfile::tempdir().unwrap();
        let creds = dir.path().join("creds");
        std::fs::create_dir(&creds).unwrap();
        std::fs::write(creds.join("github-secret"), SECRET).unwrap();
        let config = dir.path().join("driftless.yaml");
        let text = config_text(&self.id, self.repo.path(), dir.path(), options);
        std::fs::write(&config, text).unwrap();
        Setup {
            // Unused: commits go to the first setup's repository.
            repo: tempfile::tempdir().unwrap(),
            dir,
            id: self.id.clone(),
            config,
            token: options.token.map(str::to_owned),
        }
    }

    /// Starts the daemon and returns once its endpoint answers: the daemon binds the configured
    /// address (port 0: one of its choosing) and writes it to `<stateDir>/listen`.
    pub fn start(self) -> Daemon {
        self.spawn().wait()
    }

    /// Starts the daemon without waiting for it (`Starting::wait` does): several daemons start
    /// together.
    pub fn spawn(self) -> Starting {
        self.spawn_with_env(&[])
    }

    /// `spawn` with more environment variables (crash- and pause-test hooks).
    pub fn spawn_with_env(self, env: &[(&str, &str)]) -> Starting {
        let socket_path = self.dir.path().join("notify.sock");
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
        let listen_file = self.state().join("listen");
        // A previous daemon of this state directory may have left it behind.
        let _ = std::fs::remove_file(&listen_file);
        let mut command = self.command();
        command.env("NOTIFY_SOCKET", &socket_path);
        for (k, v) in env {
            command.env(k, v);
        }
        let child = command.spawn().unwrap();
        Starting {
            setup: self,
            child,
            notified,
        }
    }
}

/// A daemon started, not known to listen yet.
pub struct Starting {
    setup: Setup,
    child: Child,
    notified: Arc<Mutex<Vec<String>>>,
}

impl Starting {
    /// Returns once the daemon's endpoint answers.
    pub fn wait(self) -> Daemon {
        let Starting {
            setup,
            mut child,
            notified,
        } = self;
        let listen_file = setup.state().join("listen");
        let start = Instant::now();
        let addr = loop {
            if let Ok(text) = std::fs::read_to_string(&listen_file)
                && text.ends_with('\n')
            {
                break text.trim().to_owned();
            }
            if let Some(status) = child.try_wait().unwrap() {
                panic!(
                    "the daemon exited ({status}) before listening; it logged:\n{}",
                    std::fs::read_to_string(setup.log()).unwrap_or_default()
                );
            }
            if start.elapsed() > Duration::from_secs(60) {
                let _ = child.kill();
                panic!("the daemon did not listen within 60 s");
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let d = Daemon {
            child,
            base: format!("http://{addr}"),
            notified,
            repo: setup.repo,
            dir: setup.dir,
            id: setup.id,
            token: setup.token,
        };
        d.wait_answering("/readyz");
        d
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

    /// Stops the daemon (SIGTERM, then its exit) and starts it again on the same repository,
    /// configuration and state directory.
    pub fn restart(mut self) -> Daemon {
        super::run_ok(Command::new("kill").args(["-TERM", &self.child.id().to_string()]));
        let _ = self.child.wait();
        let config = self.config();
        // The old socket's reader thread may still hold it; the new daemon gets a new one.
        let _ = std::fs::remove_file(self.dir.path().join("notify.sock"));
        let setup = Setup {
            repo: std::mem::replace(&mut self.repo, tempfile::tempdir().unwrap()),
            dir: std::mem::replace(&mut self.dir, tempfile::tempdir().unwrap()),
            id: self.id.clone(),
            config,
            token: self.token.clone(),
        };
        drop(self);
        setup.start()
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
    http()
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
    /// Waits until `path` answers with any HTTP status (blocking; connection errors retried).
    fn wait_answering(&self, path: &str) {
        let url = format!("{}{path}", self.base);
        let start = Instant::now();
        loop {
            match std::net::TcpStream::connect(self.base.trim_start_matches("http://")) {
                Ok(mut stream) => {
                    use std::io::{Read, Write};
                    stream
                        .set_read_timeout(Some(Duration::from_secs(5)))
                        .unwrap();
                    let auth = self
                        .token
                        .as_ref()
                        .map(|t| format!("Authorization: Bearer {t}\r\n"))
                        .unwrap_or_default();
                    let request = format!(
                        "GET {path} HTTP/1.1\r\nHost: test\r\n{auth}Connection: close\r\n\r\n"
                    );
                    let mut head = [0u8; 12];
                    if stream.write_all(request.as_bytes()).is_ok()
                        && stream.read_exact(&mut head).is_ok()
                        && head.starts_with(b"HTTP/1.1 ")
                    {
                        return;
                    }
                }
                Err(e) => assert!(
                    start.elapsed() < Duration::from_secs(30),
                    "{url}: {e} for 30 s"
                ),
            }
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "{url} did not answer within 30 s"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// GET `path` (with the bearer token when there is one). The daemon is listening once
    /// `start` returned, so a connection error is a failure of the daemon, not a race.
    pub async fn get(&self, path: &str) -> reqwest::Response {
        let mut request = http()
            .get(format!("{}{path}", self.base))
            .timeout(Duration::from_secs(30));
        if let Some(t) = &self.token {
            request = request.bearer_auth(t);
        }
        request
            .send()
            .await
            .unwrap_or_else(|e| panic!("GET {}{path}: {e}", self.base))
    }

    pub async fn reconciles(&self) -> u64 {
        let text = self.metrics().await;
        text.lines()
            .filter(|l| l.starts_with("driftless_reconciles_total"))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum::<f64>() as u64
    }

    /// The status page's HTML.
    pub async fn page(&self) -> String {
        self.get("/").await.text().await.unwrap()
    }

    /// The Prometheus text of `/metrics`.
    pub async fn metrics(&self) -> String {
        self.get("/metrics").await.text().await.unwrap()
    }

    pub async fn status(&self) -> serde_json::Value {
        let response = self.get("/api/v1/status").await;
        let code = response.status();
        let text = response.text().await.unwrap();
        serde_json::from_str(&text).unwrap_or_else(|e| {
            panic!("/api/v1/status answered {code}, not a status ({e}): {text}")
        })
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
