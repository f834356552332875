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
    let url = format!("file://{}", bare_path(&name).display());
    let source = |reference: GitRef| {
        GitSource::new(
            &url,
            reference,
            GitCredentials::default(),
            &state.path().join("git"),
        )
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

/// A bare repository in a temporary directory with one commit on `main` (tag `v1`), and a work
/// tree that pushes to it. Needs no server: file:// is git's local transport.
fn local_remote() -> (tempfile::TempDir, PathBuf, tempfile::TempDir) {
    let root = tempfile::tempdir().unwrap();
    let bare = root.path().join("remote.git");
    run_ok(
        Command::new("git")
            .args(["init", "-q", "--bare", "-b", "main"])
            .arg(&bare),
    );
    let work = tempfile::tempdir().unwrap();
    git(work.path(), &["init", "-q", "-b", "main"]);
    std::fs::create_dir_all(work.path().join("stack/s")).unwrap();
    std::fs::write(work.path().join("stack/s/stack.yaml"), STACK).unwrap();
    git(work.path(), &["add", "-A"]);
    git(work.path(), &["commit", "-q", "-m", "first"]);
    git(work.path(), &["tag", "v1"]);
    git(
        work.path(),
        &["push", "-q", "--tags", bare.to_str().unwrap(), "main"],
    );
    (root, bare, work)
}

fn file_source(bare: &Path, reference: GitRef, state: &Path) -> GitSource {
    GitSource::new(
        &format!("file://{}", bare.display()),
        reference,
        GitCredentials::default(),
        &state.join("git"),
    )
}

#[test]
fn a_renamed_branch_is_reported_missing_and_the_old_checkout_stays() {
    let (_root, bare, _work) = local_remote();
    let state = tempfile::tempdir().unwrap();
    let source = file_source(&bare, GitRef::Branch("main".into()), state.path());
    let first = source.fetch(None).expect("first fetch");
    assert!(first.checkout.join("stack/s/stack.yaml").is_file());

    // The branch is renamed on the remote: `main` no longer exists there.
    git(&bare, &["branch", "-m", "main", "renamed"]);
    let err = source
        .fetch(Some(&first.revision.sha))
        .expect_err("a branch gone from the remote is an error, not the mirror's stale ref");
    match &err {
        driftless::source::Error::RefNotFound { url, reference } => {
            assert_eq!(url, &source.url);
            assert_eq!(reference, "branch main");
        }
        other => panic!("expected RefNotFound, got {other}"),
    }
    assert!(
        first.checkout.join("stack/s/stack.yaml").is_file(),
        "the last good checkout is kept"
    );
    // Again: still missing (the stale ref is not resurrected by the failed fetch).
    assert!(matches!(
        source.fetch(Some(&first.revision.sha)),
        Err(driftless::source::Error::RefNotFound { .. })
    ));

    // The branch comes back: followed again.
    git(&bare, &["branch", "-m", "renamed", "main"]);
    let back = source
        .fetch(Some(&first.revision.sha))
        .expect("fetch again");
    assert_eq!(back.revision.sha, first.revision.sha);
    assert!(!back.moved);
}

#[test]
fn a_deleted_tag_is_reported_missing() {
    let (_root, bare, work) = local_remote();
    let state = tempfile::tempdir().unwrap();
    // An annotated tag is followed to its commit.
    git(work.path(), &["tag", "-a", "v2", "-m", "release 2"]);
    git(work.path(), &["push", "-q", bare.to_str().unwrap(), "v2"]);
    let annotated = file_source(&bare, GitRef::Tag("v2".into()), state.path())
        .fetch(None)
        .expect("annotated tag");
    assert_eq!(
        annotated.revision.sha,
        git(work.path(), &["rev-parse", "HEAD"])
    );

    let source = file_source(&bare, GitRef::Tag("v1".into()), state.path());
    let first = source.fetch(None).expect("first fetch");
    git(&bare, &["tag", "-d", "v1"]);
    let err = source.fetch(Some(&first.revision.sha)).unwrap_err();
    assert!(
        matches!(&err, driftless::source::Error::RefNotFound { reference, .. } if reference == "tag v1"),
        "{err}"
    );
    assert!(first.checkout.join("stack/s/stack.yaml").is_file());
}

#[test]
fn a_blob_over_the_manifest_limit_is_not_materialised() {
    let (_root, bare, work) = local_remote();
    let state = tempfile::tempdir().unwrap();
    let source = file_source(&bare, GitRef::Branch("main".into()), state.path());
    let first = source.fetch(None).expect("first fetch");
    // 4 MiB + 1 byte: one over the stack loader's limit (LoadLimits::max_file_bytes).
    std::fs::write(
        work.path().join("stack/s/huge.yaml"),
        vec![b'#'; 4 * 1024 * 1024 + 1],
    )
    .unwrap();
    git(work.path(), &["add", "-A"]);
    git(work.path(), &["commit", "-q", "-m", "huge"]);
    git(work.path(), &["push", "-q", bare.to_str().unwrap(), "main"]);
    let huge = git(work.path(), &["rev-parse", "HEAD"]);
    let err = source
        .fetch(Some(&first.revision.sha))
        .expect_err("a blob over the limit fails the checkout")
        .to_string();
    assert!(err.contains("stack/s/huge.yaml"), "names the path: {err}");
    assert!(err.contains("4194304"), "names the limit: {err}");
    let checkouts = state.path().join("git/checkouts");
    assert!(
        !checkouts.join(&huge).exists(),
        "no checkout of the revision"
    );
    let leftovers: Vec<_> = std::fs::read_dir(&checkouts)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        leftovers,
        vec![first.revision.sha.clone()],
        "nothing half-written is left"
    );

    // Exactly at the limit is fine.
    std::fs::write(
        work.path().join("stack/s/huge.yaml"),
        vec![b'#'; 4 * 1024 * 1024],
    )
    .unwrap();
    git(work.path(), &["commit", "-q", "-am", "at the limit"]);
    git(work.path(), &["push", "-q", bare.to_str().unwrap(), "main"]);
    let fitting = source
        .fetch(Some(&first.revision.sha))
        .expect("at the limit");
    assert_eq!(
        std::fs::metadata(fitting.checkout.join("stack/s/huge.yaml"))
            .unwrap()
            .len(),
        4 * 1024 * 1024
    );
}

#[test]
fn old_checkouts_are_removed_but_the_applied_and_the_newest_stay() {
    let (_root, bare, work) = local_remote();
    let state = tempfile::tempdir().unwrap();
    let mut source = file_source(&bare, GitRef::Branch("main".into()), state.path());
    source.limits.keep_checkouts = 2;
    let mut shas = vec![source.fetch(None).expect("fetch").revision.sha];
    for i in 0..4 {
        std::fs::write(work.path().join("stack/s/n.yaml"), format!("# {i}\n")).unwrap();
        git(work.path(), &["add", "-A"]);
        git(work.path(), &["commit", "-q", "-m", &format!("change {i}")]);
        git(work.path(), &["push", "-q", bare.to_str().unwrap(), "main"]);
        shas.push(
            source
                .fetch(shas.last().map(String::as_str))
                .expect("fetch")
                .revision
                .sha,
        );
    }
    let checkouts = state.path().join("git/checkouts");
    // Leftovers of an interrupted checkout and a directory that is not ours.
    std::fs::create_dir_all(checkouts.join("0123456789abcdef0123456789abcdef01234567/x")).unwrap();
    std::fs::create_dir_all(checkouts.join("keep-me")).unwrap();

    // The cluster still runs the first revision (later ones failed): it stays.
    let removed = source
        .remove_old_checkouts(Some(&shas[0]))
        .expect("cleanup");
    let mut want = vec![
        shas[1].clone(),
        shas[2].clone(),
        "0123456789abcdef0123456789abcdef01234567".to_owned(),
    ];
    want.sort();
    assert_eq!(removed, want);
    let mut left: Vec<String> = std::fs::read_dir(&checkouts)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    left.sort();
    let mut expected = vec![
        shas[0].clone(),
        shas[3].clone(),
        shas[4].clone(),
        "keep-me".to_owned(),
    ];
    expected.sort();
    assert_eq!(left, expected);
    assert!(
        checkouts
            .join(&shas[0])
            .join("stack/s/stack.yaml")
            .is_file()
    );

    // The branch is reset to shas[3]: fetching it makes that checkout the most recent one; the
    // first revision, no longer applied, goes.
    git(
        work.path(),
        &[
            "push",
            "-q",
            "-f",
            bare.to_str().unwrap(),
            &format!("{}:main", shas[3]),
        ],
    );
    let again = source.fetch(Some(&shas[4])).expect("fetch");
    assert_eq!(again.revision.sha, shas[3]);
    let removed = source
        .remove_old_checkouts(Some(&shas[3]))
        .expect("cleanup");
    assert_eq!(removed, vec![shas[0].clone()]);
    assert!(checkouts.join(&shas[4]).is_dir());

    // A missing ref never removes anything.
    git(&bare, &["branch", "-m", "main", "gone"]);
    assert!(source.fetch(Some(&shas[3])).is_err());
    assert!(checkouts.join(&shas[3]).is_dir() && checkouts.join(&shas[4]).is_dir());
}
