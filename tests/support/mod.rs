//! Shared support for the integration tests: the environment `tests/env/testenv up` started, and
//! names and resources unique to each test so tests run in parallel without sharing state.
//!
//! A test that needs the environment and cannot find it fails with a message saying how to start
//! it, under `CI=true` and everywhere else: an integration test never passes without its servers.
#![allow(dead_code)] // Each test crate uses a different part of this module.

pub mod browser;
pub mod churn;
pub mod daemon;
pub mod registry;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Namespace;
use kube::api::{DeleteParams, Patch, PatchParams};
use kube::{Api, Client, Config};
use rusty_s3::S3Action;

/// The running test environment, read from its env file.
pub struct TestEnv {
    file: PathBuf,
    vars: HashMap<String, String>,
}

impl TestEnv {
    /// The environment of this checkout: `$DRIFTLESS_TESTENV` (an env file path) if set, else
    /// `<checkout>/.testenv/env`. Panics with instructions when it is missing or stale.
    pub fn get() -> &'static TestEnv {
        static ENV: OnceLock<TestEnv> = OnceLock::new();
        ENV.get_or_init(|| {
            let file = std::env::var_os("DRIFTLESS_TESTENV")
                .map(PathBuf::from)
                .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join(".testenv/env"));
            let ci = std::env::var("CI").is_ok_and(|v| v == "true");
            let text = std::fs::read_to_string(&file).unwrap_or_else(|e| {
                panic!(
                    "integration test environment not found ({}: {e}).\n\
                     Start it with `tests/env/testenv up`, or run the whole suite with `scripts/test`.{}",
                    file.display(),
                    if ci { "\nCI=true: a missing server is a failure, never a skip." } else { "" }
                )
            });
            let vars = text
                .lines()
                .filter(|l| !l.trim_start().starts_with('#'))
                .filter_map(|l| l.split_once('='))
                .map(|(k, v)| (k.trim().to_owned(), v.to_owned()))
                .collect();
            TestEnv { file, vars }
        })
    }

    /// A variable of the env file; panics naming the file when absent.
    pub fn var(&self, key: &str) -> &str {
        self.vars.get(key).unwrap_or_else(|| {
            panic!(
                "{key} missing from {}: restart the environment",
                self.file.display()
            )
        })
    }

    /// A client for the test cluster, authenticated as `system:masters`.
    pub async fn kube_client(&self) -> Client {
        let kubeconfig =
            kube::config::Kubeconfig::read_from(self.var("KUBECONFIG")).expect("read kubeconfig");
        let config = Config::from_custom_kubeconfig(kubeconfig, &Default::default())
            .await
            .expect("kubeconfig of the test environment");
        Client::try_from(config).expect("kube client")
    }

    /// A client for the second control plane (`KUBECONFIG_B`), as `system:masters`.
    pub async fn kube_client_b(&self) -> Client {
        let kubeconfig = kube::config::Kubeconfig::read_from(self.var("KUBECONFIG_B"))
            .expect("read kubeconfig B");
        let config = Config::from_custom_kubeconfig(kubeconfig, &Default::default())
            .await
            .expect("kubeconfig of the second control plane");
        Client::try_from(config).expect("kube client B")
    }

    /// The pid of the second control plane's API server (`KUBE_APISERVER_B_PID`), for tests
    /// that stop (SIGSTOP) and resume (SIGCONT) it.
    pub fn apiserver_b_pid(&self) -> i32 {
        self.var("KUBE_APISERVER_B_PID")
            .parse()
            .unwrap_or_else(|e| panic!("KUBE_APISERVER_B_PID: {e}"))
    }

    /// Creates a namespace unique to this test; it is deleted when the guard drops.
    pub async fn namespace(&self, prefix: &str) -> TestNamespace {
        let client = self.kube_client().await;
        let name = unique_name(prefix);
        let ns: Namespace = serde_json::from_value(serde_json::json!({
            "apiVersion": "v1", "kind": "Namespace",
            "metadata": {"name": name, "labels": {"driftless.dev/test": "true"}}
        }))
        .expect("namespace object");
        Api::<Namespace>::all(client.clone())
            .patch(
                &name,
                &PatchParams::apply("driftless-test"),
                &Patch::Apply(&ns),
            )
            .await
            .unwrap_or_else(|e| panic!("create namespace {name}: {e}"));
        TestNamespace { name, client }
    }

    /// A `psql`/`pg_dump`-style command of the test PostgreSQL, connection set in its environment.
    pub fn pg_command(&self, program: &str) -> Command {
        let mut cmd = Command::new(Path::new(self.var("PG_BINDIR")).join(program));
        for key in ["PGHOST", "PGPORT", "PGUSER", "PGPASSWORD"] {
            cmd.env(key, self.var(key));
        }
        cmd
    }

    /// Creates a database unique to this test and returns its name.
    pub fn database(&self, prefix: &str) -> String {
        let name = unique_name(prefix).replace('-', "_");
        run_ok(
            self.pg_command("psql")
                .args(["-d", "postgres", "-v", "ON_ERROR_STOP=1", "-c"])
                .arg(format!("CREATE DATABASE {name}")),
        );
        name
    }

    /// Creates an S3 bucket unique to this test in MinIO and returns its name.
    pub async fn bucket(&self, prefix: &str) -> String {
        let name = unique_name(prefix);
        let bucket = self.s3_bucket(&name);
        let credentials = self.s3_credentials();
        let url = rusty_s3::actions::CreateBucket::new(&bucket, &credentials)
            .sign(Duration::from_secs(60));
        let resp = reqwest::Client::new()
            .put(url)
            .send()
            .await
            .expect("create bucket request");
        assert!(
            resp.status().is_success(),
            "create bucket {name}: {}",
            resp.status()
        );
        name
    }

    /// A rusty-s3 handle of `name` in the test MinIO (path-style addressing).
    pub fn s3_bucket(&self, name: &str) -> rusty_s3::Bucket {
        rusty_s3::Bucket::new(
            self.var("MINIO_ENDPOINT")
                .parse()
                .expect("MINIO_ENDPOINT is a URL"),
            rusty_s3::UrlStyle::Path,
            name.to_owned(),
            "us-east-1".to_owned(),
        )
        .expect("bucket handle")
    }

    /// The MinIO root credentials.
    pub fn s3_credentials(&self) -> rusty_s3::Credentials {
        rusty_s3::Credentials::new(self.var("MINIO_ACCESS_KEY"), self.var("MINIO_SECRET_KEY"))
    }

    /// Registry base URL, e.g. `http://127.0.0.1:5000`.
    pub fn registry_url(&self) -> &str {
        self.var("REGISTRY_URL")
    }

    /// The registry behind basic auth: its URL, and the same with `user:password@` for pushes.
    pub fn auth_registry(&self) -> (String, String) {
        let url = self.var("REGISTRY_AUTH_URL");
        let with_credentials = url.replacen(
            "http://",
            &format!(
                "http://{}:{}@",
                self.var("REGISTRY_AUTH_USER"),
                self.var("REGISTRY_AUTH_PASSWORD")
            ),
            1,
        );
        (url.to_owned(), with_credentials)
    }
}

/// A namespace owned by one test; deleted (in the background) on drop.
pub struct TestNamespace {
    pub name: String,
    client: Client,
}

impl TestNamespace {
    pub fn client(&self) -> Client {
        self.client.clone()
    }
}

impl Drop for TestNamespace {
    fn drop(&mut self) {
        let client = self.client.clone();
        let name = std::mem::take(&mut self.name);
        // Best effort: the environment is thrown away after the run anyway.
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            handle.spawn(async move {
                let _ = Api::<Namespace>::all(client)
                    .delete(&name, &DeleteParams::background())
                    .await;
            });
        }
    }
}

/// A ValidatingAdmissionPolicy (and its Deny binding) named `<prefix>-no-bad-value` that denies a
/// ConfigMap whose `data.value` is `bad`, with the message "settings may not be bad": the policy
/// the runs, notify and Gitea tests deny a commit with.
pub fn deny_bad_value_policy(prefix: &str) -> String {
    format!(
        r#"apiVersion: admissionregistration.k8s.io/v1
kind: ValidatingAdmissionPolicy
metadata: {{name: {prefix}-no-bad-value}}
spec:
  matchConstraints:
    resourceRules: [{{apiGroups: [""], apiVersions: [v1], operations: [CREATE, UPDATE], resources: [configmaps]}}]
  validations:
    - expression: "object.?data.?value.orValue('') != 'bad'"
      message: "settings may not be bad"
---
apiVersion: admissionregistration.k8s.io/v1
kind: ValidatingAdmissionPolicyBinding
metadata: {{name: {prefix}-no-bad-value}}
spec: {{policyName: {prefix}-no-bad-value, validationActions: [Deny]}}
"#
    )
}

/// `prefix-<random>`: a DNS-1123 label unique to this process and call.
pub fn unique_name(prefix: &str) -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("{prefix}-{:x}{n}", rand::random::<u32>())
}

/// A stack repository in a temporary directory with a host configuration of its own instance
/// (`id`), state directory and credentials directory: the one builder integration tests use.
/// `ID` in written files becomes the id. `Repo::new` is read as a working tree
/// (`source: {path}`); `Repo::git` is a Git repository the configuration follows (`main`).
pub struct Repo {
    dir: tempfile::TempDir,
    pub config: PathBuf,
    state: tempfile::TempDir,
    creds: tempfile::TempDir,
    pub id: String,
}

impl Repo {
    /// A working tree; `extra` is appended to the host configuration (e.g. `profile: local\n`).
    pub fn new(prefix: &str, extra: &str) -> Repo {
        Repo::make(prefix, extra, false)
    }

    /// A Git repository on branch `main` (commit with `commit`), followed through `file://`,
    /// with a credentials directory (`creds`).
    pub fn git(prefix: &str, extra: &str) -> Repo {
        Repo::make(prefix, extra, true)
    }

    fn make(prefix: &str, extra: &str, git_source: bool) -> Repo {
        let dir = tempfile::tempdir().expect("repo dir");
        let state = tempfile::tempdir().expect("state dir");
        let creds = tempfile::tempdir().expect("credentials dir");
        let id = unique_name(prefix);
        let config = state.path().join("driftless.yaml");
        let source = if git_source {
            git(dir.path(), &["init", "-q", "-b", "main"]);
            format!(
                "source:\n  git: {{url: 'file://{}', branch: main}}\ncredentialsDir: {}\n",
                dir.path().display(),
                creds.path().display()
            )
        } else {
            format!("source: {{path: {}}}\n", dir.path().display())
        };
        std::fs::write(
            &config,
            format!(
                "instance: {id}\n{source}stateDir: {}\n{extra}",
                state.path().display()
            ),
        )
        .expect("config");
        Repo {
            dir,
            config,
            state,
            creds,
            id,
        }
    }

    pub fn write(&self, path: &str, body: &str) {
        let p = self.dir.path().join(path);
        std::fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
        std::fs::write(p, body.replace("ID", &self.id)).expect("write");
    }

    pub fn remove(&self, path: &str) {
        std::fs::remove_file(self.dir.path().join(path)).expect("remove");
    }

    /// Commits everything (a Git repository only).
    pub fn commit(&self, message: &str) {
        git(self.path(), &["add", "-A"]);
        git(
            self.path(),
            &["commit", "-q", "--allow-empty", "-m", message],
        );
    }

    /// Back to the last commit: uncommitted edits and new files are dropped.
    pub fn reset(&self) {
        git(self.path(), &["reset", "-q", "--hard", "HEAD"]);
        git(self.path(), &["clean", "-qfdx"]);
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// The state directory.
    pub fn state(&self) -> &Path {
        self.state.path()
    }

    /// The credentials directory (named in the configuration of a Git repository).
    pub fn creds(&self) -> &Path {
        self.creds.path()
    }

    /// The namespace `ns-ID`.
    pub fn ns(&self) -> String {
        format!("ns-{}", self.id)
    }

    /// Runs the binary with this configuration.
    pub fn driftless(&self, args: &[&str]) -> std::process::Output {
        driftless_with(&self.config, args, &[])
    }
}

/// One sample of the API server's `apiserver_request_total`: its labels and value.
pub struct RequestSample {
    pub labels: HashMap<String, String>,
    pub value: f64,
}

impl RequestSample {
    /// A label's value, empty when absent.
    pub fn label(&self, name: &str) -> &str {
        self.labels.get(name).map_or("", String::as_str)
    }
}

/// Every `apiserver_request_total` sample of the test API server's `/metrics`.
pub async fn apiserver_requests(client: &Client) -> Vec<RequestSample> {
    let req = axum::http::Request::get("/metrics")
        .body(Vec::new())
        .expect("a GET request");
    let text = client.request_text(req).await.expect("apiserver metrics");
    text.lines()
        .filter_map(|line| line.strip_prefix("apiserver_request_total{"))
        .filter_map(|rest| {
            let (labels, value) = rest.rsplit_once("} ")?;
            let labels = labels
                .split("\",")
                .filter_map(|pair| {
                    let (k, v) = pair.split_once("=\"")?;
                    Some((k.to_owned(), v.trim_end_matches('"').to_owned()))
                })
                .collect();
            Some(RequestSample {
                labels,
                value: value.trim().parse().ok()?,
            })
        })
        .collect()
}

/// Runs the driftless binary with `--config config` and `args` against the test cluster
/// (`KUBECONFIG`), with extra environment `env` and no inherited `CREDENTIALS_DIRECTORY`.
pub fn driftless_with(config: &Path, args: &[&str], env: &[(&str, &str)]) -> std::process::Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_driftless"));
    cmd.arg("--config").arg(config).args(args);
    let env_file = TestEnv::get();
    cmd.env("KUBECONFIG", env_file.var("KUBECONFIG"))
        .env("DRIFTLESS_HELM", env_file.var("HELM"))
        .env("DRIFTLESS_KUBECTL", env_file.var("KUBECTL"))
        .env_remove("CREDENTIALS_DIRECTORY");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("run driftless")
}

/// `driftless_with` without extra environment.
pub fn driftless(config: &Path, args: &[&str]) -> std::process::Output {
    driftless_with(config, args, &[])
}

/// A run's standard output and error, for assertions and messages.
pub fn text(o: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Lower-case hexadecimal of `bytes` (digests).
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Runs a command, panics with its output unless it exits 0; returns standard output.
pub fn run_ok(cmd: &mut Command) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A kubectl command of the test cluster.
pub fn kubectl_cmd() -> Command {
    let env = TestEnv::get();
    let mut cmd = Command::new(env.var("KUBECTL"));
    cmd.arg("--kubeconfig").arg(env.var("KUBECONFIG"));
    cmd
}

/// A kubectl command of the second control plane (`KUBECONFIG_B`).
pub fn kubectl_b_cmd() -> Command {
    let env = TestEnv::get();
    let mut cmd = Command::new(env.var("KUBECTL"));
    cmd.arg("--kubeconfig").arg(env.var("KUBECONFIG_B"));
    cmd
}

/// Runs the kubectl built with the test cluster against it; panics on failure.
pub fn kubectl(args: &[&str]) -> String {
    run_ok(kubectl_cmd().args(args))
}

/// Runs git in `dir` with a fixed author; panics on failure; returns trimmed standard output.
pub fn git(dir: &Path, args: &[&str]) -> String {
    run_ok(
        Command::new("git")
            .arg("-C")
            .arg(dir)
            .args(["-c", "user.name=T", "-c", "user.email=t@driftless.invalid"])
            .args(args),
    )
    .trim()
    .to_owned()
}

/// Polls `check` until it returns `Some`, or panics after `timeout` with `what`.
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            start.elapsed() < timeout,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
