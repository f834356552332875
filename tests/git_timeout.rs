//! Fetch timeouts: a server that accepts and never answers is cut after the idle timeout (HTTPS,
//! SSH, HTTP), and a server that keeps trickling data is stopped at the fetch's deadline.
//! Its own test binary: libgit2's socket timeouts are process-wide.

use std::io::BufRead;
use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use driftless::source::{Error, FetchLimits, GitCredentials, GitRef, GitSource};

const STACK: &str =
    "apiVersion: driftless.dev/v1alpha1\nkind: Stack\nmetadata: {name: s}\nspec: {namespace: x}\n";

/// The same socket timeouts in every test of this binary (they are process-wide).
fn limits(deadline: Duration) -> FetchLimits {
    FetchLimits {
        connect_timeout: Duration::from_secs(2),
        idle_timeout: Duration::from_secs(2),
        deadline,
        ..FetchLimits::default()
    }
}

/// Runs the fetch on a thread and waits for it at most `guard`: a fetch that never returns fails
/// the test instead of hanging it.
fn fetch_within(source: GitSource, guard: Duration) -> Result<(), Error> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(source.fetch(None).map(|_| ()));
    });
    rx.recv_timeout(guard)
        .unwrap_or_else(|_| panic!("the fetch did not return within {guard:?}"))
}

/// A TCP server that accepts every connection and never sends a byte.
fn silent_server() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for stream in listener.incoming().flatten() {
            held.push(stream);
        }
    });
    port
}

#[test]
fn a_server_that_never_answers_is_cut_by_the_idle_timeout() {
    let port = silent_server();
    let dir = tempfile::tempdir().unwrap();
    let known_hosts = dir.path().join("known_hosts");
    std::fs::write(&known_hosts, "").unwrap();
    for url in [
        format!("https://127.0.0.1:{port}/repo.git"),
        format!("http://127.0.0.1:{port}/repo.git"),
        format!("ssh://git@127.0.0.1:{port}/repo.git"),
    ] {
        let state = tempfile::tempdir().unwrap();
        let mut source = GitSource::new(
            &url,
            GitRef::Branch("main".into()),
            GitCredentials {
                known_hosts: Some(known_hosts.clone()),
                ..GitCredentials::default()
            },
            &state.path().join("git"),
        );
        source.limits = limits(Duration::from_secs(600));
        let err = fetch_within(source, Duration::from_secs(60)).expect_err(&url);
        assert!(
            matches!(&err, Error::TimedOut { .. }),
            "{url}: expected a timeout, got {err}"
        );
    }
}

/// tests/servers/git_fault.py serving `root` through git http-backend, the pack trickling.
struct Trickle(Child, u16);

impl Drop for Trickle {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn trickle_server(root: &Path, log: &Path) -> Trickle {
    let mut child = Command::new("python3")
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/servers/git_fault.py"))
        .args(["trickle", "--chunk", "16", "--delay", "0.2", "--root"])
        .arg(root)
        .arg("--log")
        .arg(log)
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(log.with_extension("stderr")).unwrap())
        .spawn()
        .expect("python3");
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let port = line
        .trim()
        .strip_prefix("PORT ")
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("git_fault.py did not start: {line:?}"));
    Trickle(child, port)
}

fn git(dir: &Path, args: &[&str]) {
    let out = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(["-c", "user.name=T", "-c", "user.email=t@driftless.invalid"])
        .args(args)
        .output()
        .unwrap();
    assert!(out.status.success(), "git {args:?}: {out:?}");
}

#[test]
fn a_fetch_that_keeps_trickling_stops_at_the_deadline() {
    let root = tempfile::tempdir().unwrap();
    let bare = root.path().join("repo.git");
    git(
        root.path(),
        &["init", "-q", "--bare", "-b", "main", "repo.git"],
    );
    let work = tempfile::tempdir().unwrap();
    git(work.path(), &["init", "-q", "-b", "main"]);
    std::fs::create_dir_all(work.path().join("stack/s")).unwrap();
    std::fs::write(work.path().join("stack/s/stack.yaml"), STACK).unwrap();
    // Enough objects that the pack takes minutes at 80 bytes per second.
    for i in 0..200 {
        std::fs::write(
            work.path().join(format!("stack/s/cm{i}.yaml")),
            format!(
                "apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: c{i}}}\ndata: {{n: '{i}'}}\n"
            ),
        )
        .unwrap();
    }
    git(work.path(), &["add", "-A"]);
    git(work.path(), &["commit", "-q", "-m", "many"]);
    git(work.path(), &["push", "-q", bare.to_str().unwrap(), "main"]);

    let server = trickle_server(root.path(), &root.path().join("requests.log"));
    let state = tempfile::tempdir().unwrap();
    let mut source = GitSource::new(
        &format!("http://127.0.0.1:{}/repo.git", server.1),
        GitRef::Branch("main".into()),
        GitCredentials::default(),
        &state.path().join("git"),
    );
    source.limits = limits(Duration::from_secs(3));
    let err = fetch_within(source, Duration::from_secs(60)).expect_err("stopped");
    match &err {
        Error::TimedOut { what, .. } => assert!(what.contains("longer than 3s"), "{err}"),
        other => panic!("expected the deadline, got {other}"),
    }
    assert!(
        !state.path().join("git/checkouts").exists(),
        "nothing checked out"
    );
}
