//! The Git source against real git servers: file://, git's smart-HTTP backend over HTTPS with a
//! token, and OpenSSH with a key and a known_hosts file.

mod support;

use support::text;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use driftless::source::{GitCredentials, GitRef, GitSource};
use support::{TestEnv, git, run_ok, unique_name};

const STACK: &str =
    "apiVersion: driftless.dev/v1alpha1\nkind: Stack\nmetadata: {name: s}\nspec: {namespace: x}\n";

/// A work tree with one stack, pushed to a new bare repository served by the environment's git
/// servers. Returns (work tree, bare repository name).
fn published_repo() -> (tempfile::TempDir, String) {
    let env = TestEnv::get();
    let name = format!("{}.git", unique_name("repo"));
    let bare = Path::new(env.var("GIT_REPOS")).join(&name);
    run_ok(
        Command::new("git")
            .args(["init", "-q", "--bare", "-b", "main"])
            .arg(&bare),
    );
    let work = tempfile::tempdir().unwrap();
    git(work.path(), &["init", "-q", "-b", "main"]);
    std::fs::create_dir_all(work.path().join("stack/s")).unwrap();
    std::fs::write(work.path().join("stack/s/stack.yaml"), STACK).unwrap();
    std::fs::write(
        work.path().join("stack/s/cm.yaml"),
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: one}\n",
    )
    .unwrap();
    git(work.path(), &["add", "-A"]);
    git(work.path(), &["commit", "-q", "-m", "first stack"]);
    git(work.path(), &["push", "-q", bare.to_str().unwrap(), "main"]);
    (work, name)
}

fn bare_path(name: &str) -> PathBuf {
    Path::new(TestEnv::get().var("GIT_REPOS")).join(name)
}

#[test]
fn file_remote_follows_branch_tag_and_pinned_commit() {
    let (work, name) = published_repo();
    let first = git(work.path(), &["rev-parse", "HEAD"]);
    git(work.path(), &["tag", "v1"]);
    std::fs::write(
        work.path().join("stack/s/cm2.yaml"),
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: two}\n",
    )
    .unwrap();
    git(work.path(), &["add", "-A"]);
    git(work.path(), &["commit", "-q", "-m", "second configmap"]);
    let second = git(work.path(), &["rev-parse", "HEAD"]);
    git(
        work.path(),
        &[
            "push",
            "-q",
            "--tags",
            bare_path(&name).to_str().unwrap(),
            "main",
        ],
    );

    let state = tempfile::tempdir().unwrap();
    let source = |reference: GitRef| GitSource {
        url: format!("file://{}", bare_path(&name).display()),
        reference,
        credentials: GitCredentials::default(),
        dir: state.path().join("git"),
    };
    let branch = source(GitRef::Branch("main".into()))
        .fetch(None)
        .expect("fetch branch");
    assert_eq!(branch.revision.sha, second);
    assert_eq!(branch.revision.subject, "second configmap");
    assert_eq!(branch.revision.author, "T");
    assert!(
        branch.checkout.join("stack/s/cm2.yaml").is_file(),
        "tree materialised"
    );
    assert!(branch.moved);
    // The ref did not move: same checkout, reported as not moved.
    let again = source(GitRef::Branch("main".into()))
        .fetch(Some(&second))
        .expect("fetch again");
    assert_eq!(again.checkout, branch.checkout);
    assert!(!again.moved);

    let tag = source(GitRef::Tag("v1".into()))
        .fetch(None)
        .expect("fetch tag");
    assert_eq!(tag.revision.sha, first);
    assert!(
        !tag.checkout.join("stack/s/cm2.yaml").exists(),
        "the tag's tree, not the branch's"
    );
    let pinned = source(GitRef::Commit(first.clone()))
        .fetch(None)
        .expect("fetch pinned commit");
    assert_eq!(pinned.revision.sha, first);

    let missing = source(GitRef::Branch("nope".into()))
        .fetch(None)
        .unwrap_err()
        .to_string();
    assert!(missing.contains("nope"), "{missing}");
}

fn validate_with(config: &str, extra_env: &[(&str, &str)]) -> Output {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("driftless.yaml");
    std::fs::write(&path, config).unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_driftless"));
    cmd.arg("--config")
        .arg(&path)
        .arg("validate")
        .env_remove("CREDENTIALS_DIRECTORY");
    for (k, v) in extra_env {
        cmd.env(k, v);
    }
    cmd.output().unwrap()
}

#[test]
fn https_remote_with_a_token_from_a_file() {
    let env = TestEnv::get();
    let (_work, name) = published_repo();
    let creds = tempfile::tempdir().unwrap();
    std::fs::copy(
        env.var("GIT_HTTPS_TOKEN_FILE"),
        creds.path().join("git-token"),
    )
    .unwrap();
    std::fs::write(creds.path().join("git-user"), env.var("GIT_HTTPS_USER")).unwrap();
    std::fs::write(creds.path().join("wrong-token"), "not-the-token").unwrap();
    let state = tempfile::tempdir().unwrap();
    let config = |token: &str| {
        format!(
            "source:\n  git:\n    url: {}/{name}\n    auth: {{tokenFile: {token}, usernameFile: git-user}}\nstateDir: {}\ncredentialsDir: {}\n",
            env.var("GIT_HTTPS_URL"),
            state.path().display(),
            creds.path().display()
        )
    };
    // The server's certificate is signed by the environment's CA: trusted through SSL_CERT_FILE.
    let ca = [("SSL_CERT_FILE", env.var("GIT_CA"))];
    let out = validate_with(&config("git-token"), &ca);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("valid: 1 stacks, 1 objects"),
        "{}",
        text(&out)
    );
    assert!(
        text(&out).contains("subject=first stack") || text(&out).contains("first stack"),
        "{}",
        text(&out)
    );

    let out = validate_with(&config("wrong-token"), &ca);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let shown = text(&out);
    assert!(
        shown.contains(&format!("git {}/{name}", env.var("GIT_HTTPS_URL"))),
        "{shown}"
    );
    assert!(
        !shown.contains("not-the-token")
            && !shown.contains(
                &std::fs::read_to_string(env.var("GIT_HTTPS_TOKEN_FILE"))
                    .unwrap()
                    .trim()
                    .to_owned()
            ),
        "token leaked: {shown}"
    );

    // Without trust in the CA the TLS handshake fails: certificates are verified.
    let out = validate_with(&config("git-token"), &[("SSL_CERT_FILE", "/nonexistent")]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
}

#[test]
fn ssh_remote_with_a_key_and_checked_host_keys() {
    let env = TestEnv::get();
    let (_work, name) = published_repo();
    let creds = tempfile::tempdir().unwrap();
    std::fs::copy(env.var("GIT_SSH_KEY"), creds.path().join("deploy-key")).unwrap();
    let state = tempfile::tempdir().unwrap();
    let url = format!("{}{}", env.var("GIT_SSH_URL"), bare_path(&name).display());
    let config = |known_hosts: Option<&str>| {
        format!(
            "source:\n  git:\n    url: {url}\n    auth: {{sshKeyFile: deploy-key{}}}\nstateDir: {}\ncredentialsDir: {}\n",
            known_hosts
                .map(|k| format!(", knownHostsFile: {k}"))
                .unwrap_or_default(),
            state.path().display(),
            creds.path().display()
        )
    };
    let out = validate_with(&config(Some(env.var("GIT_SSH_KNOWN_HOSTS"))), &[]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("valid: 1 stacks"), "{}", text(&out));

    // A known_hosts file without this server's key: refused, never accepted blindly.
    let other = creds.path().join("other_known_hosts");
    std::fs::write(&other, "[127.0.0.1]:22 ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl\n").unwrap();
    let out = validate_with(&config(Some(other.to_str().unwrap())), &[]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        text(&out).contains("SSH host key is not in the known_hosts file"),
        "{}",
        text(&out)
    );

    let out = validate_with(&config(None), &[]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        text(&out).contains("needs auth.knownHostsFile"),
        "{}",
        text(&out)
    );
}
