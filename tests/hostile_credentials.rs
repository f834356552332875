//! What a commit may read from the ops host (issue: trust boundaries, item 3): credential files
//! only, by plain name, never the host's own. Against the test cluster and registry: a stack
//! that names the Git token or a host path gets nothing applied and no Secret; a job that names
//! the status token sends nothing to the registry it chose.

mod support;

use std::io::{Read, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};

use support::{Repo, TestEnv, driftless, kubectl, text, unique_name};

const SENTINEL: &str = "HOST-TOKEN-SENTINEL-7f3a";

/// A repository with one stack whose Secret comes from host file `file`, and a host
/// configuration whose Git token, webhook secret and status token live in the credentials
/// directory.
fn repo_naming(file: &str) -> (Repo, tempfile::TempDir, String) {
    let creds = tempfile::tempdir().expect("creds");
    for name in ["git-token", "status-token", "hook-secret"] {
        std::fs::write(creds.path().join(name), format!("{SENTINEL}-{name}")).expect("write");
    }
    std::fs::write(creds.path().join("app-password"), "app").expect("write");
    let ns = unique_name("hostile-creds");
    let r = Repo::new(
        "hcreds",
        &format!(
            "credentialsDir: {}\ndaemon:\n  statusTokenFile: status-token\n  webhooks: {{github: {{secretFile: hook-secret}}}}\n",
            creds.path().display()
        ),
    );
    r.write(
        "stack/app/stack.yaml",
        &format!(
            "apiVersion: driftless.dev/v1alpha1\nkind: Stack\nmetadata: {{name: app-ID}}\nspec:\n  namespace: {ns}\n  secrets:\n  - name: stolen\n    fromFiles: {{token: '{file}'}}\n"
        ),
    );
    r.write(
        "stack/app/objects.yaml",
        &format!("apiVersion: v1\nkind: Namespace\nmetadata: {{name: {ns}}}\n---\napiVersion: v1\nkind: ConfigMap\nmetadata: {{name: plain}}\ndata: {{a: b}}\n"),
    );
    (r, creds, ns)
}

#[test]
fn a_stack_cannot_copy_the_hosts_own_credentials_or_other_host_files() {
    let _env = TestEnv::get();
    for (file, want) in [
        ("hook-secret", "daemon.webhooks.github.secretFile"),
        ("status-token", "daemon.statusTokenFile"),
        ("/etc/hostname", "must be a plain file name"),
        ("../hcreds-escape", "must be a plain file name"),
    ] {
        let (r, _creds, ns) = repo_naming(file);
        let out = driftless(&r.config, &["sync", "--no-wait"]);
        let said = text(&out);
        assert_eq!(out.status.code(), Some(2), "{file}: {said}");
        assert!(said.contains(want), "{file}: {said}");
        assert!(!said.contains(SENTINEL), "{file}: a secret leaked: {said}");
        // Nothing of the stack was applied: no namespace, no Secret.
        let found = std::process::Command::new(TestEnv::get().var("KUBECTL"))
            .args(["--kubeconfig", TestEnv::get().var("KUBECONFIG")])
            .args(["get", "namespace", &ns])
            .output()
            .expect("kubectl");
        assert!(
            !found.status.success(),
            "{file}: namespace {ns} was created"
        );
    }
    // The same stack naming its own file syncs, and the Secret holds that file only.
    let (r, _creds, ns) = repo_naming("app-password");
    let out = driftless(&r.config, &["sync", "--no-wait"]);
    assert!(out.status.success(), "{}", text(&out));
    let value = kubectl(&[
        "get",
        "secret",
        "stolen",
        "-n",
        &ns,
        "-o",
        "jsonpath={.data.token}",
    ]);
    assert_eq!(value, "YXBw", "base64 of the file's content");
    kubectl(&["delete", "namespace", &ns, "--wait=false"]);
}

#[test]
fn credentials_allow_restricts_what_stacks_read() {
    let (r, _creds, ns) = repo_naming("app-password");
    let config = std::fs::read_to_string(&r.config).expect("config");
    std::fs::write(
        &r.config,
        format!("{config}credentials: {{allow: ['minio-*']}}\n"),
    )
    .expect("write");
    let out = driftless(&r.config, &["sync", "--no-wait"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        text(&out).contains("not allowed for stacks and jobs by credentials.allow"),
        "{}",
        text(&out)
    );
    let _ = ns;
}

/// A registry stand-in that records every request's Authorization header: what a hostile job
/// would try to send its token to. Answers 401 to everything.
fn recording_server() -> (String, Arc<Mutex<Vec<String>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = Arc::clone(&seen);
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut s) = stream else { continue };
            let mut buf = [0u8; 8192];
            let n = s.read(&mut buf).unwrap_or(0);
            let request = String::from_utf8_lossy(&buf[..n]).to_string();
            if let Ok(mut l) = log.lock() {
                l.push(request);
            }
            let _ = s.write_all(
                b"HTTP/1.1 401 Unauthorized\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
            );
        }
    });
    (url, seen)
}

#[test]
fn a_job_cannot_send_the_status_token_to_a_registry_it_chose() {
    let (r, _creds, _ns) = repo_naming("app-password");
    let (url, seen) = recording_server();
    r.write(
        "stack/app/jobs.yaml",
        &format!(
            "apiVersion: driftless.dev/v1alpha1\nkind: ImageCleanup\nmetadata: {{name: exfil}}\nspec:\n  schedule: '@daily'\n  registry: {{url: '{url}', usernameFile: app-password, passwordFile: status-token}}\n  protect: {{cluster: false, desired: false}}\n  rules: [{{repositories: '**', keepLast: 1}}]\n"
        ),
    );
    let out = driftless(&r.config, &["jobs", "run", "exfil", "--dry-run"]);
    let said = text(&out);
    assert_eq!(out.status.code(), Some(2), "{said}");
    assert!(said.contains("daemon.statusTokenFile"), "{said}");
    assert!(!said.contains(SENTINEL), "{said}");
    let requests = seen.lock().expect("lock").clone();
    assert!(
        requests
            .iter()
            .all(|r| !r.contains(SENTINEL) && !r.to_ascii_lowercase().contains("authorization")),
        "the registry received credentials: {requests:?}"
    );

    // An absolute path is refused when the job is loaded (validate), before any run.
    r.write(
        "stack/app/jobs.yaml",
        &format!(
            "apiVersion: driftless.dev/v1alpha1\nkind: ImageCleanup\nmetadata: {{name: exfil}}\nspec:\n  schedule: '@daily'\n  registry: {{url: '{url}', usernameFile: app-password, passwordFile: /etc/driftless/kubeconfig}}\n  protect: {{cluster: false, desired: false}}\n  rules: [{{repositories: '**', keepLast: 1}}]\n"
        ),
    );
    let out = driftless(&r.config, &["validate"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        text(&out).contains(
            "spec.registry.passwordFile: \"/etc/driftless/kubeconfig\" must be a plain file name"
        ),
        "{}",
        text(&out)
    );
}
