//! Git transport security against real servers: credentials only over HTTPS and only to the
//! configured host (redirects included), URLs with embedded credentials refused, and SSH host keys
//! checked for every URL form against the environment's sshd (port, key type, hashed entries).
//! Redirects and credential recording use tests/servers/git_fault.py (failure injection).

mod support;

use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use driftless::source::{Error, GitCredentials, GitRef, GitSource};
use secrecy::SecretString;
use support::{TestEnv, git, run_ok, text, unique_name};

const STACK: &str =
    "apiVersion: driftless.dev/v1alpha1\nkind: Stack\nmetadata: {name: s}\nspec: {namespace: x}\n";

/// A new bare repository with one stack under the environment's git root; returns its path.
fn published_repo() -> PathBuf {
    let env = TestEnv::get();
    let bare = Path::new(env.var("GIT_REPOS")).join(format!("{}.git", unique_name("repo")));
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
    git(work.path(), &["push", "-q", bare.to_str().unwrap(), "main"]);
    bare
}

/// tests/servers/git_fault.py in one mode; killed (by its pid) when dropped.
struct FaultServer {
    child: Child,
    port: u16,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl FaultServer {
    fn start(mode: &str, tls: bool, extra: &[&str]) -> FaultServer {
        let env = TestEnv::get();
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("requests.log");
        let mut cmd = Command::new("python3");
        cmd.arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/servers/git_fault.py"))
            .arg(mode)
            .arg("--log")
            .arg(&log)
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(dir.path().join("stderr.log")).unwrap());
        if tls {
            let pki = Path::new(env.var("DRIFTLESS_TESTENV_RUN")).join("pki");
            cmd.arg("--cert")
                .arg(pki.join("apiserver.crt"))
                .arg("--key")
                .arg(pki.join("apiserver.key"));
        }
        let mut child = cmd.spawn().expect("start git_fault.py");
        // The port is printed once the socket listens.
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let port = line
            .trim()
            .strip_prefix("PORT ")
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("git_fault.py did not start: {line:?}"));
        FaultServer {
            child,
            port,
            log,
            _dir: dir,
        }
    }

    /// The logged requests: (method and path, carried an Authorization header).
    fn requests(&self) -> Vec<(String, bool)> {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .map(|l| {
                let (req, auth) = l.rsplit_once(' ').unwrap();
                (req.to_owned(), auth == "auth=yes")
            })
            .collect()
    }
}

impl Drop for FaultServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// libgit2 verifies TLS against the environment's CA (process-wide, once).
fn trust_test_ca() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // SAFETY: called once, before any fetch of this test binary runs (Once blocks the others).
        unsafe { git2::opts::set_ssl_cert_file(TestEnv::get().var("GIT_CA")) }
            .expect("trust the test CA");
    });
}

const SENTINEL: &str = "TOKEN-SENTINEL-6c1f";

fn with_token(url: String, state: &Path) -> GitSource {
    GitSource::new(
        &url,
        GitRef::Branch("main".into()),
        GitCredentials {
            username: Some("driftless".into()),
            password: Some(SecretString::from(SENTINEL)),
            ..GitCredentials::default()
        },
        &state.join("git"),
    )
}

#[test]
fn credentials_are_not_sent_to_another_host_after_a_redirect() {
    trust_test_ca();
    // Where the redirect leads: records whether credentials arrive. Another port, and another
    // host name for the same address: both are another server.
    let target = FaultServer::start("record", true, &[]);
    for to in [
        format!("https://localhost:{}", target.port),
        format!("https://127.0.0.1:{}", target.port),
    ] {
        let before = target.requests().len();
        let front = FaultServer::start("redirect", true, &["--to", &to]);
        let state = tempfile::tempdir().unwrap();
        let source = with_token(
            format!("https://127.0.0.1:{}/repo.git", front.port),
            state.path(),
        );
        let err = source.fetch(None).expect_err("the redirect target refuses");
        let shown = err.to_string();
        assert!(!shown.contains(SENTINEL), "{shown}");
        assert!(
            front.requests().iter().any(|(_, auth)| *auth),
            "the configured host got credentials: {:?}",
            front.requests()
        );
        let reached = &target.requests()[before..];
        assert!(
            !reached.is_empty(),
            "the redirect was followed to {to} (else the test proves nothing)"
        );
        assert!(
            reached.iter().all(|(_, auth)| !auth),
            "credentials went to {to}: {reached:?}"
        );
        assert!(shown.contains("redirect"), "{shown}");
    }
}

#[test]
fn credentials_are_never_sent_over_plain_http() {
    let server = FaultServer::start("record", false, &[]);
    let state = tempfile::tempdir().unwrap();
    let source = with_token(
        format!("http://127.0.0.1:{}/repo.git", server.port),
        state.path(),
    );
    let shown = source.fetch(None).expect_err("refused").to_string();
    assert!(!shown.contains(SENTINEL), "{shown}");
    assert!(shown.contains("http://"), "{shown}");
    assert!(
        server.requests().iter().all(|(_, auth)| !auth),
        "credentials went over plain http: {:?}",
        server.requests()
    );
}

fn validate(config: &str) -> std::process::Output {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("driftless.yaml");
    std::fs::write(&path, config).unwrap();
    Command::new(env!("CARGO_BIN_EXE_driftless"))
        .arg("--config")
        .arg(&path)
        .arg("validate")
        .env_remove("CREDENTIALS_DIRECTORY")
        .output()
        .unwrap()
}

#[test]
fn urls_with_embedded_credentials_are_refused_without_echoing_them() {
    for url in [
        format!("https://user:{SENTINEL}@git.example.invalid/ops/stacks.git"),
        format!("https://{SENTINEL}@git.example.invalid/ops/stacks.git"),
        format!("http://user:{SENTINEL}@git.example.invalid/ops/stacks.git"),
        format!("ssh://git:{SENTINEL}@git.example.invalid/ops/stacks.git"),
    ] {
        let out = validate(&format!("source:\n  git:\n    url: {url}\n"));
        let shown = text(&out);
        assert_eq!(out.status.code(), Some(2), "{url}: {shown}");
        assert!(shown.contains("embedded credentials"), "{url}: {shown}");
        assert!(shown.contains("git.example.invalid"), "{url}: {shown}");
        assert!(!shown.contains(SENTINEL), "{url}: {shown}");
    }
    // Plain http with a token file: refused at load, before anything is read or sent.
    let out = validate(
        "source:\n  git:\n    url: http://git.example.invalid/x.git\n    auth: {tokenFile: git-token}\n",
    );
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("https"), "{}", text(&out));
    // A branch name that would be a refspec of its own.
    let out = validate(
        "source:\n  git:\n    url: https://git.example.invalid/x.git\n    branch: 'main:refs/heads/x'\n",
    );
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("not a valid Git ref"), "{}", text(&out));
}

/// The environment's sshd: user, port, client key and the host key line of its known_hosts.
struct Sshd {
    user: String,
    port: u16,
    key: PathBuf,
    host_key: String,
}

fn sshd() -> Sshd {
    let env = TestEnv::get();
    let rest = env.var("GIT_SSH_URL").strip_prefix("ssh://").unwrap();
    let (user, addr) = rest.split_once('@').unwrap();
    let port = addr.rsplit_once(':').unwrap().1.parse().unwrap();
    let known = std::fs::read_to_string(env.var("GIT_SSH_KNOWN_HOSTS")).unwrap();
    let host_key = known.split_once(' ').unwrap().1.trim().to_owned();
    Sshd {
        user: user.to_owned(),
        port,
        key: PathBuf::from(env.var("GIT_SSH_KEY")),
        host_key,
    }
}

fn ssh_source(url: &str, known_hosts: Option<&Path>, sshd: &Sshd, state: &Path) -> GitSource {
    GitSource::new(
        url,
        GitRef::Branch("main".into()),
        GitCredentials {
            username: Some(sshd.user.clone()),
            ssh_key: Some(SecretString::from(
                std::fs::read_to_string(&sshd.key).unwrap(),
            )),
            known_hosts: known_hosts.map(Path::to_owned),
            ..GitCredentials::default()
        },
        &state.join("git"),
    )
}

/// Every URL form that reaches the sshd: ssh://, git+ssh://, ssh+git:// and scp-like (with the
/// bracketed `[user@host:port]:path` form libgit2 reads, since the sshd is not on port 22).
fn ssh_urls(sshd: &Sshd, bare: &Path) -> Vec<String> {
    let (u, p, path) = (&sshd.user, sshd.port, bare.display());
    vec![
        format!("ssh://{u}@127.0.0.1:{p}{path}"),
        format!("git+ssh://{u}@127.0.0.1:{p}{path}"),
        format!("ssh+git://{u}@127.0.0.1:{p}{path}"),
        format!("[{u}@127.0.0.1:{p}]:{path}"),
        format!("[127.0.0.1:{p}]:{path}"),
    ]
}

fn known_hosts_file(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

fn is_host_key_refusal(err: &Error) -> bool {
    matches!(err, Error::HostKey { .. })
}

#[test]
fn every_ssh_url_form_checks_the_host_key() {
    let sshd = sshd();
    let bare = published_repo();
    let dir = tempfile::tempdir().unwrap();
    let right = PathBuf::from(TestEnv::get().var("GIT_SSH_KNOWN_HOSTS"));
    run_ok(
        Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-f"])
            .arg(dir.path().join("other")),
    );
    let other_key = std::fs::read_to_string(dir.path().join("other.pub")).unwrap();
    let other_key: Vec<&str> = other_key.split_whitespace().take(2).collect();
    let wrong = known_hosts_file(
        dir.path(),
        "wrong",
        &format!("[127.0.0.1]:{} {}\n", sshd.port, other_key.join(" ")),
    );
    for url in ssh_urls(&sshd, &bare) {
        let state = tempfile::tempdir().unwrap();
        let ok = ssh_source(&url, Some(&right), &sshd, state.path()).fetch(None);
        assert!(ok.is_ok(), "{url}: {}", ok.unwrap_err());

        let state = tempfile::tempdir().unwrap();
        let err = ssh_source(&url, Some(&wrong), &sshd, state.path())
            .fetch(None)
            .expect_err(&url);
        assert!(is_host_key_refusal(&err), "{url}: {err}");

        let state = tempfile::tempdir().unwrap();
        let err = ssh_source(&url, None, &sshd, state.path())
            .fetch(None)
            .expect_err(&url);
        assert!(matches!(err, Error::NoKnownHosts { .. }), "{url}: {err}");
    }
}

#[test]
fn known_hosts_entries_match_port_and_key_type() {
    let sshd = sshd();
    let bare = published_repo();
    let dir = tempfile::tempdir().unwrap();
    let url = format!(
        "ssh://{}@127.0.0.1:{}{}",
        sshd.user,
        sshd.port,
        bare.display()
    );
    let key_b64 = sshd.host_key.split_whitespace().nth(1).unwrap();
    let refused = [
        // A plain host name is port 22 only.
        ("plain", format!("127.0.0.1 {}\n", sshd.host_key)),
        // The right key for another port.
        (
            "other-port",
            format!("[127.0.0.1]:{} {}\n", sshd.port + 1, sshd.host_key),
        ),
        // The right key bytes under another key type.
        (
            "other-type",
            format!("[127.0.0.1]:{} ssh-rsa {key_b64}\n", sshd.port),
        ),
        // The right entry, but the key is revoked.
        (
            "revoked",
            format!(
                "[127.0.0.1]:{p} {k}\n@revoked * {k}\n",
                p = sshd.port,
                k = sshd.host_key
            ),
        ),
        // A negated pattern excludes the host even when another pattern matches.
        (
            "negated",
            format!(
                "[127.0.0.*]:{p},![127.0.0.1]:{p} {k}\n",
                p = sshd.port,
                k = sshd.host_key
            ),
        ),
    ];
    for (name, text) in refused {
        let file = known_hosts_file(dir.path(), name, &text);
        let state = tempfile::tempdir().unwrap();
        let err = ssh_source(&url, Some(&file), &sshd, state.path())
            .fetch(None)
            .expect_err(name);
        assert!(is_host_key_refusal(&err), "{name}: {err}");
    }

    // Hashed entries (`ssh-keygen -H`, OpenSSH's HashKnownHosts) and wildcards are read.
    let hashed = known_hosts_file(
        dir.path(),
        "hashed",
        &format!("[127.0.0.1]:{} {}\n", sshd.port, sshd.host_key),
    );
    run_ok(Command::new("ssh-keygen").arg("-H").arg("-f").arg(&hashed));
    let hashed_text = std::fs::read_to_string(&hashed).unwrap();
    assert!(hashed_text.starts_with("|1|"), "{hashed_text}");
    let wildcard = known_hosts_file(
        dir.path(),
        "wildcard",
        &format!("[127.0.0.*]:{} {}\n", sshd.port, sshd.host_key),
    );
    for file in [hashed, wildcard] {
        let state = tempfile::tempdir().unwrap();
        let ok = ssh_source(&url, Some(&file), &sshd, state.path()).fetch(None);
        assert!(ok.is_ok(), "{}: {}", file.display(), ok.unwrap_err());
    }
}
