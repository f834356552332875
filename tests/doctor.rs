//! `driftless doctor` against the test environment: a healthy configuration passes, and each
//! broken part (a missing credential file, a wrong Git token, an unknown SSH host key, a deleted
//! branch, an unreachable cluster, an identity without delete rights) gets its verdict and exit
//! code.

mod support;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use support::{TestEnv, git, kubectl, run_ok, text, unique_name};

const STACK: &str = "apiVersion: driftless.dev/v1alpha1\nkind: Stack\nmetadata: {name: doc}\nspec: {namespace: doctor-ns}\n";

/// A bare repository served by the environment's git servers, with one stack.
fn published_repo() -> String {
    let env = TestEnv::get();
    let name = format!("{}.git", unique_name("doctor"));
    let bare = Path::new(env.var("GIT_REPOS")).join(&name);
    run_ok(
        Command::new("git")
            .args(["init", "-q", "--bare", "-b", "main"])
            .arg(&bare),
    );
    let work = tempfile::tempdir().expect("tempdir");
    git(work.path(), &["init", "-q", "-b", "main"]);
    std::fs::create_dir_all(work.path().join("stack/doc")).expect("mkdir");
    std::fs::write(work.path().join("stack/doc/stack.yaml"), STACK).expect("write");
    std::fs::write(
        work.path().join("stack/doc/objects.yaml"),
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: one}\n---\napiVersion: apps/v1\nkind: Deployment\nmetadata: {name: web}\nspec:\n  selector: {matchLabels: {app: web}}\n  template:\n    metadata: {labels: {app: web}}\n    spec: {containers: [{name: web, image: 'nginx:1.27'}]}\n",
    )
    .expect("write");
    git(work.path(), &["add", "-A"]);
    git(work.path(), &["commit", "-q", "-m", "doctor stack"]);
    git(
        work.path(),
        &["push", "-q", bare.to_str().expect("utf-8"), "main"],
    );
    name
}

/// A host directory: credentials (mode 0600), state, and a configuration built by `config`.
struct Host {
    dir: tempfile::TempDir,
}

impl Host {
    fn new() -> Host {
        let env = TestEnv::get();
        let dir = tempfile::tempdir().expect("tempdir");
        let creds = dir.path().join("creds");
        std::fs::create_dir(&creds).expect("mkdir");
        std::fs::create_dir(dir.path().join("state")).expect("mkdir");
        let put = |name: &str, text: &str| {
            let p = creds.join(name);
            std::fs::write(&p, text).expect("write");
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        };
        put(
            "git-token",
            &std::fs::read_to_string(env.var("GIT_HTTPS_TOKEN_FILE")).expect("token"),
        );
        put("git-user", env.var("GIT_HTTPS_USER"));
        put("wrong-token", "not-the-token");
        put(
            "deploy-key",
            &std::fs::read_to_string(env.var("GIT_SSH_KEY")).expect("key"),
        );
        Host { dir }
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    /// Writes the configuration: `source` (YAML under `source:`), the kubeconfig to use.
    fn config(&self, source: &str, kubeconfig: &str) -> PathBuf {
        let env = TestEnv::get();
        let path = self.path("driftless.yaml");
        std::fs::write(
            &path,
            format!(
                "source:\n{source}\ncluster: {{kubeconfig: {kubeconfig}}}\ncredentialsDir: {}\nstateDir: {}\nrenderers: {{helm: {}, kubectl: {}}}\ndaemon: {{listen: '127.0.0.1:0'}}\n",
                self.path("creds").display(),
                self.path("state").display(),
                env.var("HELM"),
                env.var("KUBECTL"),
            ),
        )
        .expect("write config");
        path
    }
}

fn https_source(repo: &str, token: &str) -> String {
    let env = TestEnv::get();
    format!(
        "  git:\n    url: {}/{repo}\n    auth: {{tokenFile: {token}, usernameFile: git-user}}",
        env.var("GIT_HTTPS_URL")
    )
}

fn doctor(config: &Path) -> (Output, serde_json::Value) {
    let env = TestEnv::get();
    let out = Command::new(env!("CARGO_BIN_EXE_driftless"))
        .arg("--config")
        .arg(config)
        .args(["doctor", "-o", "json"])
        .env("SSL_CERT_FILE", env.var("GIT_CA"))
        .env_remove("CREDENTIALS_DIRECTORY")
        .env_remove("KUBECONFIG")
        .output()
        .expect("run doctor");
    let json = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("doctor -o json: {e}\n{}", text(&out)));
    (out, json)
}

/// The verdict of the first check whose name starts with `check`, and its message.
fn verdict<'a>(report: &'a serde_json::Value, check: &str) -> (&'a str, &'a str) {
    let c = report["checks"]
        .as_array()
        .expect("checks")
        .iter()
        .find(|c| c["check"].as_str().is_some_and(|n| n.starts_with(check)))
        .unwrap_or_else(|| panic!("no check {check} in {report:#}"));
    (
        c["verdict"].as_str().expect("verdict"),
        c["message"].as_str().expect("message"),
    )
}

#[test]
fn a_healthy_configuration_passes_and_each_broken_part_is_named() {
    let env = TestEnv::get();
    let repo = published_repo();
    let host = Host::new();
    // The environment's kubeconfig is world-readable (a warning); a host keeps it 0600.
    let own = host.path("kubeconfig");
    std::fs::copy(env.var("KUBECONFIG"), &own).expect("copy kubeconfig");
    std::fs::set_permissions(&own, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    let kubeconfig = own.to_str().expect("utf-8");

    // Healthy: everything reachable, all rights, renderers found, state writable, port free.
    let config = host.config(&https_source(&repo, "git-token"), kubeconfig);
    let (out, report) = doctor(&config);
    assert_eq!(out.status.code(), Some(0), "{report:#}");
    assert_eq!(verdict(&report, "git ").0, "ok");
    assert!(
        verdict(&report, "git ").1.contains("branch main is at"),
        "{report:#}"
    );
    assert_eq!(verdict(&report, "revision").1, "1 stacks, 2 objects");
    assert!(
        verdict(&report, "cluster").1.contains("Kubernetes v1."),
        "{report:#}"
    );
    assert_eq!(verdict(&report, "cluster permissions").0, "ok");
    assert_eq!(verdict(&report, "credential git-token").0, "ok");
    // Human output: one line per check and a summary.
    let human = Command::new(env!("CARGO_BIN_EXE_driftless"))
        .arg("--config")
        .arg(&config)
        .arg("doctor")
        .env("SSL_CERT_FILE", env.var("GIT_CA"))
        .output()
        .expect("doctor");
    assert!(text(&human).contains("errors"), "{}", text(&human));
    assert!(
        !text(&human).contains(
            std::fs::read_to_string(env.var("GIT_HTTPS_TOKEN_FILE"))
                .expect("token")
                .trim()
        )
    );

    // A world-readable credential: a warning, exit 1.
    std::fs::set_permissions(
        host.path("creds/git-token"),
        std::fs::Permissions::from_mode(0o644),
    )
    .expect("chmod");
    let (out, report) = doctor(&config);
    assert_eq!(out.status.code(), Some(1), "{report:#}");
    assert_eq!(verdict(&report, "credential git-token").0, "warn");
    std::fs::set_permissions(
        host.path("creds/git-token"),
        std::fs::Permissions::from_mode(0o600),
    )
    .expect("chmod");

    // A missing credential file.
    let config = host.config(&https_source(&repo, "no-such-token"), kubeconfig);
    let (out, report) = doctor(&config);
    assert_eq!(out.status.code(), Some(2), "{report:#}");
    let (v, m) = verdict(&report, "credential no-such-token");
    assert_eq!(v, "error");
    assert!(m.contains("does not exist"), "{m}");

    // A wrong Git token: the fetch fails, and the token never shows.
    let config = host.config(&https_source(&repo, "wrong-token"), kubeconfig);
    let (out, report) = doctor(&config);
    assert_eq!(out.status.code(), Some(2), "{report:#}");
    assert_eq!(verdict(&report, "git ").0, "error");
    assert!(!String::from_utf8_lossy(&out.stdout).contains("not-the-token"));

    // A deleted branch.
    let bare = Path::new(env.var("GIT_REPOS")).join(&repo);
    run_ok(
        Command::new("git")
            .arg("-C")
            .arg(&bare)
            .args(["branch", "-m", "main", "renamed"]),
    );
    let config = host.config(&https_source(&repo, "git-token"), kubeconfig);
    let (out, report) = doctor(&config);
    assert_eq!(out.status.code(), Some(2), "{report:#}");
    let (v, m) = verdict(&report, "git ");
    assert_eq!(v, "error");
    assert!(m.contains("main"), "{m}");
    run_ok(
        Command::new("git")
            .arg("-C")
            .arg(&bare)
            .args(["branch", "-m", "renamed", "main"]),
    );

    // An SSH server whose host key is not in known_hosts.
    let other = host.path("other_known_hosts");
    std::fs::write(&other, "[127.0.0.1]:22 ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl\n").expect("write");
    let ssh = format!(
        "  git:\n    url: {}{}\n    auth: {{sshKeyFile: deploy-key, knownHostsFile: {}}}",
        env.var("GIT_SSH_URL"),
        bare.display(),
        other.display()
    );
    let config = host.config(&ssh, kubeconfig);
    let (out, report) = doctor(&config);
    assert_eq!(out.status.code(), Some(2), "{report:#}");
    let (v, m) = verdict(&report, "git ");
    assert_eq!(v, "error");
    assert!(m.contains("host key"), "{m}");

    // An unreachable cluster: a kubeconfig naming a port nothing listens on.
    // Port 1 (tcpmux) is privileged and unused on loopback: connections are refused.
    let closed = 1;
    let dead = host.path("dead-kubeconfig");
    std::fs::write(
        &dead,
        format!(
            "apiVersion: v1\nkind: Config\nclusters: [{{name: c, cluster: {{server: 'https://127.0.0.1:{closed}', insecure-skip-tls-verify: true}}}}]\nusers: [{{name: u, user: {{token: x}}}}]\ncontexts: [{{name: c, context: {{cluster: c, user: u}}}}]\ncurrent-context: c\n"
        ),
    )
    .expect("write");
    let config = host.config(
        &https_source(&repo, "git-token"),
        dead.to_str().expect("utf-8"),
    );
    let (out, report) = doctor(&config);
    assert_eq!(out.status.code(), Some(2), "{report:#}");
    assert_eq!(verdict(&report, "cluster").0, "error");
}

#[test]
fn an_identity_without_delete_rights_is_named() {
    let env = TestEnv::get();
    let repo = published_repo();
    let host = Host::new();
    // A service account that may do everything driftless needs but delete.
    let sa = unique_name("doctor-sa");
    let ns = "default";
    kubectl(&["create", "serviceaccount", &sa, "-n", ns]);
    let role = format!("{sa}-role");
    kubectl(&[
        "create",
        "clusterrole",
        &role,
        "--verb=get,list,watch,patch,create,update",
        "--resource=configmaps,deployments.apps,leases.coordination.k8s.io",
    ]);
    kubectl(&[
        "create",
        "clusterrolebinding",
        &role,
        &format!("--clusterrole={role}"),
        &format!("--serviceaccount={ns}:{sa}"),
    ]);
    let token = kubectl(&["create", "token", &sa, "-n", ns, "--duration=10m"]);
    let kubeconfig = host.path("sa-kubeconfig");
    std::fs::write(
        &kubeconfig,
        format!(
            "apiVersion: v1\nkind: Config\nclusters: [{{name: c, cluster: {{server: '{}', certificate-authority: '{}'}}}}]\nusers: [{{name: u, user: {{token: '{}'}}}}]\ncontexts: [{{name: c, context: {{cluster: c, user: u}}}}]\ncurrent-context: c\n",
            env.var("KUBE_APISERVER"),
            env.var("KUBE_CA"),
            token.trim()
        ),
    )
    .expect("write");
    let config = host.config(
        &https_source(&repo, "git-token"),
        kubeconfig.to_str().expect("utf-8"),
    );
    let (out, report) = doctor(&config);
    kubectl(&["delete", "clusterrolebinding", &role]);
    kubectl(&["delete", "clusterrole", &role]);
    kubectl(&["delete", "serviceaccount", &sa, "-n", ns]);
    assert_eq!(out.status.code(), Some(2), "{report:#}");
    let (v, m) = verdict(&report, "cluster permissions");
    assert_eq!(v, "error");
    assert!(m.contains("delete configmaps in doctor-ns"), "{m}");
    assert!(m.contains("delete deployments.apps in doctor-ns"), "{m}");
    assert!(!m.contains("get configmaps in doctor-ns"), "{m}");
}
