//! A real forge: Gitea from the test environment (`tests/env`). A daemon follows a Gitea
//! repository over HTTPS with a token; pushes go to Gitea, Gitea itself delivers the signed push
//! webhook to the daemon, the daemon sets commit statuses through Gitea's API, and the test reads
//! them back from Gitea: `pending` then `success`; a commit a policy denies gets `failure` with
//! the policy's message and `driftless trigger --wait` exits 2, as CI would see it; the next good
//! commit is green and `trigger --wait` exits 0. A Secret sentinel never reaches Gitea.

mod support;

use std::process::Command;
use std::time::Duration;

use support::daemon::{Daemon, Options, Setup};
use support::{TestEnv, driftless, eventually, git, text, unique_name};

const STATUS_TOKEN: &str = "status-token-for-the-gitea-test";
const HOOK_SECRET: &str = "gitea-webhook-secret-for-tests";
const SENTINEL: &str = "gitea-secret-sentinel-93fa";

struct Gitea {
    url: String,
    user: String,
    token: String,
    ca: String,
    http: reqwest::Client,
}

impl Gitea {
    fn get() -> Gitea {
        let env = TestEnv::get();
        let ca = env.var("GITEA_CA").to_owned();
        let pem = std::fs::read(&ca).unwrap();
        Gitea {
            url: env.var("GITEA_URL").to_owned(),
            user: env.var("GITEA_ADMIN_USER").to_owned(),
            token: std::fs::read_to_string(env.var("GITEA_ADMIN_TOKEN_FILE"))
                .unwrap()
                .trim()
                .to_owned(),
            http: reqwest::Client::builder()
                .add_root_certificate(reqwest::Certificate::from_pem(&pem).unwrap())
                .build()
                .unwrap(),
            ca,
        }
    }

    async fn api(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> serde_json::Value {
        let mut request = self
            .http
            .request(method, format!("{}/api/v1{path}", self.url))
            .header("Authorization", format!("token {}", self.token));
        if let Some(b) = body {
            request = request.json(&b);
        }
        let response = request.send().await.unwrap();
        let code = response.status();
        let text = response.text().await.unwrap();
        assert!(code.is_success(), "{path}: {code}: {text}");
        serde_json::from_str(&text).unwrap_or(serde_json::Value::Null)
    }

    /// Every status of `sha`, oldest first, as (context, state, description, target_url).
    async fn statuses(&self, repo: &str, sha: &str) -> Vec<(String, String, String, String)> {
        let list = self
            .api(
                reqwest::Method::GET,
                &format!(
                    "/repos/{}/{repo}/statuses/{sha}?sort=oldest&limit=50",
                    self.user
                ),
                None,
            )
            .await;
        list.as_array()
            .unwrap_or_else(|| panic!("{list}"))
            .iter()
            .map(|s| {
                let f = |k: &str| s[k].as_str().unwrap_or("").to_owned();
                (f("context"), f("status"), f("description"), f("target_url"))
            })
            .collect()
    }

    /// The combined state of `sha` (Gitea's `GET …/commits/{sha}/status`).
    async fn combined(&self, repo: &str, sha: &str) -> String {
        let c = self
            .api(
                reqwest::Method::GET,
                &format!("/repos/{}/{repo}/commits/{sha}/status", self.user),
                None,
            )
            .await;
        c["state"].as_str().unwrap_or("").to_owned()
    }

    /// Pushes `main` of `dir` to the repository (basic auth with the token, the CA trusted).
    fn push(&self, dir: &std::path::Path, repo: &str) {
        let host = self.url.trim_start_matches("https://");
        let remote = format!(
            "https://{}:{}@{host}/{}/{repo}.git",
            self.user, self.token, self.user
        );
        let out = Command::new("git")
            .current_dir(dir)
            // The variable, not `-c http.sslCAInfo`: an inherited GIT_SSL_CAINFO would win.
            .env("GIT_SSL_CAINFO", &self.ca)
            .args(["push", "-q", &remote, "main"])
            .output()
            .unwrap();
        assert!(out.status.success(), "git push: {}", text(&out));
    }
}

/// Commits the stack with `value` (and a Secret holding the sentinel) and the deny policy.
fn commit(d: &Daemon, value: &str) -> String {
    let id = &d.id;
    let repo = d.repo.path();
    std::fs::create_dir_all(repo.join("stack/app/policies")).unwrap();
    std::fs::write(
        repo.join("stack/app/policies/deny.yaml"),
        support::deny_bad_value_policy("gitea"),
    )
    .unwrap();
    std::fs::write(
        repo.join("stack/app/objects.yaml"),
        format!(
            "apiVersion: v1\nkind: Namespace\nmetadata: {{name: ns-{id}}}\n---\n\
             apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: settings}}\ndata: {{value: '{value}'}}\n---\n\
             apiVersion: v1\nkind: Secret\nmetadata: {{name: creds}}\nstringData: {{password: {SENTINEL}}}\n"
        ),
    )
    .unwrap();
    git(repo, &["add", "-A"]);
    git(repo, &["commit", "-qm", value]);
    git(repo, &["rev-parse", "HEAD"]).trim().to_owned()
}

/// `driftless trigger --revision <sha> --wait` against the daemon, as CI runs it.
fn trigger_wait(d: &Daemon, sha: &str) -> std::process::Output {
    let token = d.dir.path().join("ci-token");
    std::fs::write(&token, STATUS_TOKEN).unwrap();
    driftless(
        &d.config(),
        &[
            "trigger",
            "--endpoint",
            &d.base,
            "--token-file",
            token.to_str().unwrap(),
            "--revision",
            sha,
            "--wait",
            "--timeout",
            "90s",
        ],
    )
}

#[tokio::test]
async fn gitea_delivers_the_push_and_reads_back_pending_success_and_a_policy_failure() {
    let gitea = Gitea::get();
    let repo = unique_name("stacks");
    gitea
        .api(
            reqwest::Method::POST,
            "/user/repos",
            Some(serde_json::json!({"name": repo, "private": true, "default_branch": "main"})),
        )
        .await;

    // The daemon's repository, host configuration and credentials; the first commit goes to
    // Gitea before the daemon starts.
    let setup = Setup::new(
        &Options {
            token: Some(STATUS_TOKEN),
            ..Options::default()
        },
        |_, _| {},
    );
    gitea.push(setup.repo.path(), &repo);
    let first = git(setup.repo.path(), &["rev-parse", "HEAD"])
        .trim()
        .to_owned();
    let creds = setup.dir.path().join("creds");
    std::fs::write(creds.join("gitea-token"), &gitea.token).unwrap();
    std::fs::write(creds.join("gitea-user"), &gitea.user).unwrap();
    std::fs::write(creds.join("gitea-secret"), HOOK_SECRET).unwrap();
    std::fs::write(creds.join("status-token"), STATUS_TOKEN).unwrap();
    std::fs::write(
        &setup.config,
        format!(
            "instance: {id}\n\
             source:\n  git:\n    url: '{url}/{user}/{repo}.git'\n    branch: main\n    auth: {{tokenFile: gitea-token, usernameFile: gitea-user}}\n\
             stateDir: {state}\ncredentialsDir: {creds}\n\
             daemon:\n  listen: 127.0.0.1:0\n  pollInterval: 1h\n  statusTokenFile: status-token\n  webhooks: {{gitea: {{secretFile: gitea-secret}}}}\n\
             leases: {{renewInterval: 500ms, duration: 10s}}\n\
             notify:\n  commitStatus: {{provider: gitea, apiUrl: '{url}/api/v1', repository: '{user}/{repo}', tokenFile: gitea-token, linkBase: 'https://ops.example:9427'}}\n",
            id = setup.id,
            url = gitea.url,
            user = gitea.user,
            state = setup.state().display(),
            creds = creds.display(),
        ),
    )
    .unwrap();
    let d = setup.spawn_with_env(&[("SSL_CERT_FILE", &gitea.ca)]).wait();
    let context = format!("driftless/{}/d-{}", d.id, d.id);

    // The first run: pending, then success, read back from Gitea.
    let statuses = eventually(
        "success on the first commit",
        Duration::from_secs(90),
        || async {
            let s = gitea.statuses(&repo, &first).await;
            s.iter()
                .any(|(_, state, _, _)| state == "success")
                .then_some(s)
        },
    )
    .await;
    let states: Vec<&str> = statuses.iter().map(|(_, s, _, _)| s.as_str()).collect();
    assert_eq!(states, ["pending", "success"], "{statuses:?}");
    assert!(
        statuses.iter().all(|(c, _, _, _)| c == &context),
        "{statuses:?}"
    );
    assert!(
        statuses[1].3.starts_with("https://ops.example:9427/runs/"),
        "{statuses:?}"
    );

    // Gitea delivers the signed push webhook for every push from now on.
    gitea
        .api(
            reqwest::Method::POST,
            &format!("/repos/{}/{repo}/hooks", gitea.user),
            Some(serde_json::json!({
                "type": "gitea",
                "active": true,
                "events": ["push"],
                "branch_filter": "main",
                "config": {"url": format!("{}/hooks/gitea", d.base), "content_type": "json", "secret": HOOK_SECRET}
            })),
        )
        .await;

    // A good commit: Gitea's webhook starts the run (nothing else would: the poll is an hour).
    let good = commit(&d, "two");
    gitea.push(d.repo.path(), &repo);
    let run = eventually(
        "a run of the pushed commit",
        Duration::from_secs(90),
        || async {
            let runs: serde_json::Value =
                d.get("/api/v1/runs?limit=20").await.json().await.unwrap();
            runs["runs"]
                .as_array()?
                .iter()
                .find(|r| r["revision"] == good.as_str() && r["state"] == "succeeded")
                .cloned()
        },
    )
    .await;
    assert!(
        run["triggers"]
            .as_array()
            .unwrap()
            .contains(&"webhook gitea".into()),
        "{run}"
    );
    let out = trigger_wait(&d, &good);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let statuses = eventually(
        "success on the good commit",
        Duration::from_secs(60),
        || async {
            let s = gitea.statuses(&repo, &good).await;
            s.iter()
                .any(|(_, state, _, _)| state == "success")
                .then_some(s)
        },
    )
    .await;
    assert_eq!(statuses[0].1, "pending", "{statuses:?}");
    assert_eq!(
        statuses.last().unwrap().2,
        "applied: 1 created, 1 updated, 0 pruned",
        "{statuses:?}"
    );
    assert_eq!(
        statuses.last().unwrap().3,
        format!(
            "https://ops.example:9427/runs/{}",
            run["id"].as_str().unwrap()
        )
    );

    // A commit the policy denies: failure with the policy's message; CI's wait exits 2.
    let bad = commit(&d, "bad");
    gitea.push(d.repo.path(), &repo);
    let out = trigger_wait(&d, &bad);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        text(&out).contains("settings may not be bad"),
        "{}",
        text(&out)
    );
    let statuses = eventually(
        "failure on the denied commit",
        Duration::from_secs(60),
        || async {
            let s = gitea.statuses(&repo, &bad).await;
            s.iter()
                .any(|(_, state, _, _)| state == "failure")
                .then_some(s)
        },
    )
    .await;
    let failure = statuses.iter().find(|(_, s, _, _)| s == "failure").unwrap();
    assert_eq!(
        failure.2,
        "denied by policy gitea-no-bad-value: settings may not be bad"
    );

    // The next good commit is green.
    let fixed = commit(&d, "three");
    gitea.push(d.repo.path(), &repo);
    let out = trigger_wait(&d, &fixed);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    eventually(
        "the fixed commit green",
        Duration::from_secs(60),
        || async { (gitea.combined(&repo, &fixed).await == "success").then_some(()) },
    )
    .await;

    // Nothing sent to Gitea carried the Secret.
    for sha in [&first, &good, &bad, &fixed] {
        for (_, _, description, _) in gitea.statuses(&repo, sha).await {
            assert!(!description.contains(SENTINEL), "{description}");
        }
    }
    assert!(!d.log().contains(SENTINEL));
    assert!(!d.log().contains(&gitea.token), "the token reached the log");
}
