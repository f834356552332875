//! SOPS-encrypted manifests against the real API server: files encrypted at test time by the
//! `sops` binary `tests/env/build.sh` builds (pinned in `tests/env/versions.sh`), to an age key
//! made by `age-keygen`. Decrypted values reach the cluster and nothing else: a sentinel search
//! over the daemon's log, the status, the state directory (runs, inventory records, checkouts)
//! and the CLI's diff and sync output.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use support::{TestEnv, eventually, git, run_ok, text, unique_name};

/// The sops binary of the test environment's cache: `<cache>/testenv/sops-<SOPS_VERSION>/bin`.
fn sops_bin() -> PathBuf {
    let versions = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/env/versions.sh"),
    )
    .unwrap();
    let version = versions
        .lines()
        .find_map(|l| l.strip_prefix("SOPS_VERSION="))
        .expect("SOPS_VERSION in tests/env/versions.sh")
        .trim()
        .to_owned();
    let cache = std::env::var_os("DRIFTLESS_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(&std::env::var("HOME").unwrap()).join(".cache/driftless"));
    let bin = cache.join(format!("testenv/sops-{version}/bin/sops"));
    assert!(
        bin.is_file(),
        "{} is missing: run tests/env/build.sh sops (scripts/test does)",
        bin.display()
    );
    bin
}

/// An age identity made by `age-keygen`: (key file, public recipient).
fn age_key(dir: &Path, name: &str) -> (PathBuf, String) {
    let path = dir.join(name);
    run_ok(Command::new("age-keygen").arg("-o").arg(&path));
    let public = run_ok(Command::new("age-keygen").arg("-y").arg(&path));
    (path, public.trim().to_owned())
}

/// Encrypts `plain` (written to `name` in `dir`) with sops for `recipient`; `extra` are sops
/// flags (`--encrypted-regex …`). Returns the encrypted text.
fn encrypt(dir: &Path, name: &str, plain: &str, recipient: &str, extra: &[&str]) -> String {
    let file = dir.join(name);
    std::fs::write(&file, plain).unwrap();
    let out = run_ok(
        Command::new(sops_bin())
            .current_dir(dir)
            .args(["encrypt", "--age", recipient])
            .args(extra)
            .arg(&file),
    );
    std::fs::remove_file(&file).unwrap();
    out
}

struct Sentinels {
    secret: String,
    config: String,
}

/// The stack: a Namespace, a Secret encrypted with `--encrypted-regex` (data in `stringData`)
/// and a ConfigMap encrypted whole (sops' default), plus the shipped no-secrets-in-git policy.
fn write_stack(repo: &Path, id: &str, work: &Path, recipient: &str, s: &Sentinels) {
    let dir = repo.join("stack/app");
    std::fs::create_dir_all(dir.join("manifests")).unwrap();
    std::fs::write(
        dir.join("stack.yaml"),
        format!("apiVersion: driftless.dev/v1alpha1\nkind: Stack\nmetadata: {{name: s-{id}}}\nspec: {{namespace: ns-{id}, path: manifests}}\n"),
    )
    .unwrap();
    std::fs::write(
        dir.join("manifests/00-ns.yaml"),
        format!("apiVersion: v1\nkind: Namespace\nmetadata: {{name: ns-{id}}}\n"),
    )
    .unwrap();
    let secret = format!(
        "apiVersion: v1\nkind: Secret\nmetadata:\n  name: db\n  labels: {{app: db}}\ntype: Opaque\nstringData:\n  password: {}\n",
        s.secret
    );
    std::fs::write(
        dir.join("manifests/secret.sops.yaml"),
        encrypt(
            work,
            "secret.yaml",
            &secret,
            recipient,
            &["--encrypted-regex", "^(data|stringData)$"],
        ),
    )
    .unwrap();
    let config = format!(
        "{{\"apiVersion\": \"v1\", \"kind\": \"ConfigMap\", \"metadata\": {{\"name\": \"settings\"}}, \"data\": {{\"url\": \"{}\"}}}}",
        s.config
    );
    std::fs::write(
        dir.join("manifests/config.sops.json"),
        encrypt(work, "config.json", &config, recipient, &[]),
    )
    .unwrap();
    std::fs::create_dir_all(repo.join("policies")).unwrap();
    std::fs::copy(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("policies/no-secrets-in-git.yaml"),
        repo.join("policies/no-secrets-in-git.yaml"),
    )
    .unwrap();
}

fn kubectl_get(ns: &str, what: &str, path: &str) -> Option<String> {
    let env = TestEnv::get();
    let out = Command::new(env.var("KUBECTL"))
        .arg("--kubeconfig")
        .arg(env.var("KUBECONFIG"))
        .args(["-n", ns, "get", what, "-o", &format!("jsonpath={path}")])
        .output()
        .unwrap();
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

fn secret_password(ns: &str) -> Option<String> {
    use base64::Engine;
    let b64 = kubectl_get(ns, "secret/db", "{.data.password}")?;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(b64.trim())
        .ok()?;
    String::from_utf8(bytes).ok()
}

/// Every file below `dir` that holds `needle` (bytes, binary files too).
fn files_holding(dir: &Path, needle: &str) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let p = e.path();
            let Ok(meta) = std::fs::symlink_metadata(&p) else {
                continue;
            };
            if meta.is_dir() {
                stack.push(p);
            } else if meta.is_file()
                && std::fs::read(&p)
                    .map(|b| b.windows(needle.len()).any(|w| w == needle.as_bytes()))
                    .unwrap_or(false)
            {
                found.push(p);
            }
        }
    }
    found
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sops_secret_and_configmap_converge_and_never_show() {
    let env = TestEnv::get();
    let id = unique_name("sops");
    let ns = format!("ns-{id}");
    let work = tempfile::tempdir().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let creds = dir.path().join("creds");
    std::fs::create_dir(&creds).unwrap();
    let (key, recipient) = age_key(&creds, "age.key");
    assert!(key.is_file());
    let first = Sentinels {
        secret: format!("s3ntinel-pw-{id}"),
        config: format!("s3ntinel-url-{id}"),
    };
    let second = Sentinels {
        secret: format!("s3ntinel-pw2-{id}"),
        config: format!("s3ntinel-url2-{id}"),
    };
    let repo = tempfile::tempdir().unwrap();
    git(repo.path(), &["init", "-q", "-b", "main"]);
    write_stack(repo.path(), &id, work.path(), &recipient, &first);
    git(repo.path(), &["add", "-A"]);
    git(repo.path(), &["commit", "-q", "-m", "sops stack"]);

    let state = dir.path().join("state");
    let config = dir.path().join("driftless.yaml");
    std::fs::write(
        &config,
        format!(
            "instance: {id}\nsource:\n  git: {{url: 'file://{}', branch: main}}\nstateDir: {}\ncredentialsDir: {}\n\
             sops: {{ageKeyFile: age.key}}\ndaemon:\n  listen: 127.0.0.1:0\n  pollInterval: 1s\n",
            repo.path().display(),
            state.display(),
            creds.display()
        ),
    )
    .unwrap();
    let log = dir.path().join("daemon.log");
    let mut child = support::daemon::KillOnDrop(
        Command::new(env!("CARGO_BIN_EXE_driftless"))
            .arg("--config")
            .arg(&config)
            .arg("run")
            .env("KUBECONFIG", env.var("KUBECONFIG"))
            .env("DRIFTLESS_LOG", "debug")
            .env_remove("CREDENTIALS_DIRECTORY")
            .env_remove("NOTIFY_SOCKET")
            .stdout(std::fs::File::create(dir.path().join("daemon.out")).unwrap())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap(),
    );
    let base = support::daemon::wait_listening(&state, &mut child);

    // Converges: the decrypted values are in the cluster.
    eventually(
        "the SOPS Secret and ConfigMap applied",
        Duration::from_secs(60),
        || async {
            (secret_password(&ns).as_deref() == Some(first.secret.as_str())
                && kubectl_get(&ns, "configmap/settings", "{.data.url}").as_deref()
                    == Some(first.config.as_str()))
            .then_some(())
        },
    )
    .await;
    let labels = kubectl_get(&ns, "secret/db", "{.metadata.labels}").unwrap();
    assert!(labels.contains("driftless.dev/sops-encrypted"), "{labels}");

    // A new revision changes both values: the update's diff is computed and recorded.
    write_stack(repo.path(), &id, work.path(), &recipient, &second);
    git(repo.path(), &["add", "-A"]);
    git(repo.path(), &["commit", "-q", "-m", "rotate"]);
    eventually(
        "the new values applied",
        Duration::from_secs(60),
        || async {
            (secret_password(&ns).as_deref() == Some(second.secret.as_str())
                && kubectl_get(&ns, "configmap/settings", "{.data.url}").as_deref()
                    == Some(second.config.as_str()))
            .then_some(())
        },
    )
    .await;

    // A tampered revision (a value in clear changed after encryption): the load fails naming
    // the file; the applied revision's objects stay as they are, nothing pruned.
    let file = repo.path().join("stack/app/manifests/secret.sops.yaml");
    let encrypted = std::fs::read_to_string(&file).unwrap();
    std::fs::write(&file, encrypted.replace("app: db", "app: evil")).unwrap();
    git(repo.path(), &["commit", "-q", "-am", "tamper"]);
    let tampered = git(repo.path(), &["rev-parse", "HEAD"]);
    let st = eventually(
        "the tampered revision refused",
        Duration::from_secs(60),
        || async {
            let st: serde_json::Value = reqwest::get(format!("{base}/api/v1/status"))
                .await
                .ok()?
                .json()
                .await
                .ok()?;
            (st["revision"]["sha"] == tampered.as_str()
                && st["errors"].to_string().contains("MAC mismatch"))
            .then_some(st)
        },
    )
    .await;
    assert!(
        st["errors"].to_string().contains("secret.sops.yaml"),
        "{st}"
    );
    assert_ne!(st["appliedRevision"]["sha"], tampered.as_str(), "{st}");
    assert_eq!(
        kubectl_get(&ns, "secret/db", "{.metadata.labels.app}").as_deref(),
        Some("db")
    );
    assert_eq!(
        secret_password(&ns).as_deref(),
        Some(second.secret.as_str())
    );
    assert_eq!(
        kubectl_get(&ns, "configmap/settings", "{.data.url}").as_deref(),
        Some(second.config.as_str()),
        "nothing applied or pruned"
    );
    git(repo.path(), &["reset", "-q", "--hard", "HEAD~1"]);

    let status = reqwest::get(format!("{base}/api/v1/status"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let metrics = reqwest::get(format!("{base}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    // Every run the daemon recorded, with its (masked) diffs.
    let listed: serde_json::Value = reqwest::get(format!("{base}/api/v1/runs?limit=200"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let mut runs = listed.to_string();
    for run in listed["runs"].as_array().unwrap() {
        let id = run["id"].as_str().unwrap();
        let one = reqwest::get(format!("{base}/api/v1/runs/{id}"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        runs.push_str(&one);
    }
    assert!(runs.contains("\"changes\""), "the runs were read: {runs}");
    // A clean stop gives the stack's Lease back, so the CLI's sync below may take it.
    support::run_ok(Command::new("kill").args(["-TERM", &child.id().to_string()]));
    assert_eq!(child.wait().unwrap().code(), Some(0), "a clean stop");

    // The CLI against the same source: a diff back to the first values, then a sync.
    git(repo.path(), &["revert", "--no-edit", "HEAD"]);
    let diff = support::driftless(&config, &["diff"]);
    assert_eq!(diff.status.code(), Some(1), "{}", text(&diff));
    let diff_text = text(&diff);
    assert!(diff_text.contains("masked"), "{diff_text}");
    let markdown = text(&support::driftless(&config, &["diff", "-o", "markdown"]));
    assert!(markdown.contains("<details>"), "{markdown}");
    let sync = support::driftless(&config, &["sync"]);
    let sync_text = text(&sync);
    assert!(sync.status.success(), "{sync_text}");
    assert_eq!(secret_password(&ns).as_deref(), Some(first.secret.as_str()));

    let log_text = std::fs::read_to_string(&log).unwrap();
    assert!(
        log_text.contains("new revision loaded"),
        "the log was captured: {log_text}"
    );
    for s in [&first.secret, &first.config, &second.secret, &second.config] {
        for (what, out) in [
            ("status", &status),
            ("metrics", &metrics),
            ("log", &log_text),
            ("diff", &diff_text),
            ("markdown diff", &markdown),
            ("runs", &runs),
            ("sync", &sync_text),
        ] {
            assert!(
                !out.contains(s.as_str()),
                "{s} leaked into the {what}: {out}"
            );
        }
        let files = files_holding(dir.path(), s);
        assert!(files.is_empty(), "{s} is in {files:?}");
    }
    support::kubectl(&["delete", "namespace", &ns, "--wait=false"]);
}

#[test]
fn wrong_key_and_tampered_mac_fail_the_load_with_nothing_applied() {
    let id = unique_name("sopsbad");
    let ns = format!("ns-{id}");
    let work = tempfile::tempdir().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let creds = dir.path().join("creds");
    std::fs::create_dir(&creds).unwrap();
    let (_, recipient) = age_key(&creds, "age.key");
    let (_, _) = age_key(&creds, "other.key");
    let repo = dir.path().join("repo");
    let sentinels = Sentinels {
        secret: format!("s3ntinel-bad-{id}"),
        config: format!("s3ntinel-badurl-{id}"),
    };
    write_stack(&repo, &id, work.path(), &recipient, &sentinels);
    let config = |key: &str| {
        let path = dir.path().join(format!("driftless-{key}.yaml"));
        std::fs::write(
            &path,
            format!(
                "instance: {id}\nsource: {{path: {}}}\nstateDir: {}\ncredentialsDir: {}\nsops: {{ageKeyFile: {key}}}\n",
                repo.display(),
                dir.path().join("state").display(),
                creds.display()
            ),
        )
        .unwrap();
        path
    };

    // The wrong key: the load fails naming the file; nothing reaches the cluster.
    let out = support::driftless(&config("other.key"), &["sync"]);
    let t = text(&out);
    assert!(!out.status.success(), "{t}");
    assert!(
        t.contains("config.sops.json") && t.contains("age recipient"),
        "{t}"
    );
    assert!(kubectl_get("default", &format!("namespace/{ns}"), "{.metadata.name}").is_none());

    // The right key applies it.
    let out = support::driftless(&config("age.key"), &["sync"]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(
        secret_password(&ns).as_deref(),
        Some(sentinels.secret.as_str())
    );

    // A tampered file: a value in clear changed after encryption (the MAC fails). The load
    // fails naming the file; nothing is applied or pruned.
    let file = repo.join("stack/app/manifests/secret.sops.yaml");
    let text_before = std::fs::read_to_string(&file).unwrap();
    std::fs::write(&file, text_before.replace("app: db", "app: evil")).unwrap();
    let out = support::driftless(&config("age.key"), &["sync"]);
    let t = text(&out);
    assert!(!out.status.success(), "{t}");
    assert!(
        t.contains("secret.sops.yaml") && t.contains("MAC mismatch"),
        "{t}"
    );
    assert_eq!(
        kubectl_get(&ns, "secret/db", "{.metadata.labels.app}").as_deref(),
        Some("db"),
        "nothing applied"
    );
    assert_eq!(
        secret_password(&ns).as_deref(),
        Some(sentinels.secret.as_str())
    );
    assert!(
        kubectl_get(&ns, "configmap/settings", "{.metadata.name}").is_some(),
        "nothing pruned"
    );
    for s in [&sentinels.secret, &sentinels.config] {
        assert!(!t.contains(s.as_str()), "{t}");
    }
    support::kubectl(&["delete", "namespace", &ns, "--wait=false"]);
}
