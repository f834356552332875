//! Targets against the two control planes of the test environment: one daemon serves target `a`
//! (the first cluster, profile `local`) and target `b` (the second, profile `remote`); each
//! cluster holds only its target's objects and inventories; a stopped API server (SIGSTOP)
//! degrades its target alone while the other goes on reconciling, and SIGCONT recovers it without
//! a restart. `diff`/`sync --target` act on one target's cluster, profile and stacks.

mod support;

use std::path::Path;
use std::time::Duration;

use k8s_openapi::api::core::v1::ConfigMap;
use kube::Api;
use support::daemon::{Options, Setup};
use support::{TestEnv, eventually, git};

/// Three stacks: `t-<id>-shared` (both targets; its ConfigMap says which profile rendered it),
/// `t-<id>-a` (target a only) and `t-<id>-b` (target b only).
fn write_repo(repo: &Path, id: &str, value: &str) {
    let stack = |dir: &str, name: &str, ns: &str, objects: &str, extra: &str| {
        let d = repo.join("stack").join(dir);
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(
            d.join("stack.yaml"),
            format!("apiVersion: driftless.dev/v1alpha1\nkind: Stack\nmetadata: {{name: {name}}}\nspec: {{namespace: {ns}{extra}}}\n"),
        )
        .unwrap();
        std::fs::write(
            d.join("objects.yaml"),
            format!("apiVersion: v1\nkind: Namespace\nmetadata: {{name: {ns}}}\n---\n{objects}"),
        )
        .unwrap();
    };
    stack(
        "shared",
        &format!("t-{id}-shared"),
        &format!("tns-{id}"),
        &format!(
            "apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: settings}}\ndata: {{value: '{value}', profile: '${{PROFILE}}'}}\n"
        ),
        ", profiles: {local: {vars: {PROFILE: local}}, remote: {vars: {PROFILE: remote}}}",
    );
    stack(
        "only-a",
        &format!("t-{id}-a"),
        &format!("tns-{id}-a"),
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: only-a}\ndata: {a: x}\n",
        "",
    );
    // One Backup job in each target's own stack (listed, never run here).
    for (dir, job) in [("only-a", "backup-a"), ("only-b", "backup-b")] {
        std::fs::create_dir_all(repo.join("stack").join(dir)).unwrap();
        std::fs::write(
            repo.join("stack").join(dir).join("jobs.yaml"),
            format!("apiVersion: driftless.dev/v1alpha1\nkind: Backup\nmetadata: {{name: {job}-{id}}}\nspec:\n  schedule: '0 3 1 1 *'\n  source: {{postgres: {{database: app, username: app}}}}\n  destination: {{local: {{path: /nonexistent/b}}}}\n  retention: {{keepLast: 1}}\n"),
        )
        .unwrap();
    }
    stack(
        "only-b",
        &format!("t-{id}-b"),
        &format!("tns-{id}-b"),
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: only-b}\ndata: {b: x}\n",
        "",
    );
}

/// `targets:` of the test: a on the first cluster, b on the second (one glob matches nothing).
fn targets(id: &str) -> String {
    let env = TestEnv::get();
    format!(
        "targets:\n\
         - name: a\n  cluster: {{kubeconfig: {}}}\n  profile: local\n  stacks: [t-{id}-shared, 't-{id}-a*']\n\
         - name: b\n  cluster: {{kubeconfig: {}}}\n  profile: remote\n  stacks: [t-{id}-shared, t-{id}-b, 'nothing-{id}-*']\n",
        env.var("KUBECONFIG"),
        env.var("KUBECONFIG_B"),
    )
}

fn commit(repo: &Path, id: &str, value: &str) {
    write_repo(repo, id, value);
    git(repo, &["add", "-A"]);
    git(repo, &["commit", "-qm", value]);
}

/// A ConfigMap's data key, `None` when absent or unreadable.
async fn data(client: &kube::Client, ns: &str, name: &str, key: &str) -> Option<String> {
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), ns);
    cms.get_opt(name).await.ok()??.data?.get(key).cloned()
}

/// The names of the inventory ConfigMaps in `driftless-system` that mention `id`.
async fn inventories(client: &kube::Client, id: &str) -> Vec<String> {
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "driftless-system");
    let mut names: Vec<String> = cms
        .list(&Default::default())
        .await
        .map(|l| l.items)
        .unwrap_or_default()
        .into_iter()
        .filter_map(|c| c.metadata.name)
        .filter(|n| n.starts_with("inventory-") && n.contains(id))
        .collect();
    names.sort();
    names
}

/// Held by each test of this file: one stops the second API server, which the others use.
static CLUSTER_B: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Sends SIGCONT to the second API server when dropped: a failing test never leaves it stopped
/// for the other tests.
struct Resume(i32);

impl Drop for Resume {
    fn drop(&mut self) {
        signal(self.0, libc::SIGCONT);
    }
}

fn signal(pid: i32, sig: i32) {
    // SAFETY: kill(2) with a pid read from the environment's file and a valid signal number.
    let rc = unsafe { libc::kill(pid, sig) };
    assert_eq!(rc, 0, "kill({pid}, {sig}) failed");
}

/// Deletes the test's namespaces and inventories in both clusters.
async fn clean(id: &str) {
    let env = TestEnv::get();
    for client in [env.kube_client().await, env.kube_client_b().await] {
        let ns: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(client.clone());
        for n in [
            format!("tns-{id}"),
            format!("tns-{id}-a"),
            format!("tns-{id}-b"),
        ] {
            let _ = ns.delete(&n, &Default::default()).await;
        }
        let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "driftless-system");
        for n in inventories(&client, id).await {
            let _ = cms.delete(&n, &Default::default()).await;
        }
    }
}

fn target<'a>(status: &'a serde_json::Value, name: &str) -> Option<&'a serde_json::Value> {
    status["targets"]
        .as_array()?
        .iter()
        .find(|t| t["name"] == name)
}

#[tokio::test(flavor = "multi_thread")]
async fn one_daemon_serves_two_clusters_and_a_stopped_one_degrades_only_its_target() {
    let _b = CLUSTER_B.lock().await;
    let env = TestEnv::get();
    let (ca, cb) = (env.kube_client().await, env.kube_client_b().await);
    let setup = Setup::new(&Options::default(), |_, _| {});
    // The setup's own stack `d-<id>` is taken by neither target.
    let id = setup.id.clone();
    commit(setup.repo.path(), &id, "one");
    let text = std::fs::read_to_string(&setup.config).unwrap() + &targets(&id);
    std::fs::write(&setup.config, text).unwrap();
    let d = setup.start();
    let shared = format!("tns-{id}");

    // Both clusters converge, each with its target's profile.
    eventually(
        "both clusters converge",
        Duration::from_secs(120),
        || async {
            let a = data(&ca, &shared, "settings", "profile").await;
            let b = data(&cb, &shared, "settings", "profile").await;
            let only_a = data(&ca, &format!("tns-{id}-a"), "only-a", "a").await;
            let only_b = data(&cb, &format!("tns-{id}-b"), "only-b", "b").await;
            (a.as_deref() == Some("local")
                && b.as_deref() == Some("remote")
                && only_a.is_some()
                && only_b.is_some())
            .then_some(())
        },
    )
    .await;
    // Each cluster holds only its own objects and inventories.
    assert_eq!(data(&ca, &format!("tns-{id}-b"), "only-b", "b").await, None);
    assert_eq!(data(&cb, &format!("tns-{id}-a"), "only-a", "a").await, None);
    assert_eq!(
        inventories(&ca, &id).await,
        [
            format!("inventory-t-{id}-a"),
            format!("inventory-t-{id}-shared")
        ]
    );
    assert_eq!(
        inventories(&cb, &id).await,
        [
            format!("inventory-t-{id}-b"),
            format!("inventory-t-{id}-shared")
        ]
    );
    assert!(
        inventories(&ca, &format!("d-{id}")).await.is_empty(),
        "no target takes d-{id}"
    );
    let st = eventually("both targets ready", Duration::from_secs(60), || async {
        let st = d.status().await;
        (target(&st, "a")?["state"] == "ready" && target(&st, "b")?["state"] == "ready")
            .then_some(st)
    })
    .await;
    assert_eq!(st["state"], "ready", "{st:#}");
    let b = target(&st, "b").unwrap();
    assert_eq!(b["profile"], "remote");
    assert!(
        b["warnings"]
            .to_string()
            .contains(&format!("nothing-{id}-*")),
        "a glob matching nothing is a warning: {b:#}"
    );
    let stacks: Vec<(String, String)> = st["stacks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["target"].as_str().unwrap().to_owned(),
                s["name"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    for (t, s) in [("a", "shared"), ("a", "a"), ("b", "shared"), ("b", "b")] {
        assert!(
            stacks.contains(&(t.to_owned(), format!("t-{id}-{s}"))),
            "{t}/{s} in {stacks:?}"
        );
    }
    let metrics = d.metrics().await;
    assert!(
        metrics.contains(&format!(
            "driftless_managed_objects{{target=\"b\",stack=\"t-{id}-b\"}} 2"
        )),
        "{metrics}"
    );
    assert!(
        metrics.contains("driftless_target_reconcile_duration_seconds_count{target=\"b\"}"),
        "{metrics}"
    );
    let page = d.page().await;
    assert!(page.contains("<table id=\"targets\">") && page.contains("remote"));

    // b's API server stops: b degrades, a applies the next commit.
    let pid = env.apiserver_b_pid();
    signal(pid, libc::SIGSTOP);
    let resume = Resume(pid);
    commit(d.repo.path(), &id, "two");
    let pushed = d.github(&d.push_payload(), support::daemon::SECRET).await;
    assert!(pushed.status().is_success(), "{}", pushed.status());
    eventually(
        "a applies the new commit",
        Duration::from_secs(60),
        || async {
            (data(&ca, &shared, "settings", "value").await.as_deref() == Some("two")).then_some(())
        },
    )
    .await;
    let st = eventually("target b degraded", Duration::from_secs(90), || async {
        let st = d.status().await;
        (target(&st, "b")?["state"] == "degraded").then_some(st)
    })
    .await;
    assert_eq!(target(&st, "a").unwrap()["state"], "ready", "{st:#}");
    assert_eq!(st["state"], "degraded");
    let errors = st["errors"].to_string();
    assert!(errors.contains("target b: cluster"), "{errors}");
    assert!(!errors.contains("target a"), "{errors}");
    // `status --target` shows one target and exits by its state.
    let out = support::driftless(&d.config(), &["status", "--target", "a"]);
    assert_eq!(out.status.code(), Some(0), "{}", support::text(&out));
    let text = support::text(&out);
    assert!(
        text.contains("target a: ready") && !text.contains("target b"),
        "{text}"
    );
    let out = support::driftless(&d.config(), &["status", "--target", "b"]);
    assert_eq!(out.status.code(), Some(2), "{}", support::text(&out));
    assert!(support::text(&out).contains("target b: degraded"));

    // SIGCONT: b catches up without a restart.
    drop(resume);
    eventually(
        "b recovers and applies the commit",
        Duration::from_secs(120),
        || async {
            (data(&cb, &shared, "settings", "value").await.as_deref() == Some("two")).then_some(())
        },
    )
    .await;
    eventually("target b ready again", Duration::from_secs(60), || async {
        let st = d.status().await;
        (target(&st, "b")?["state"] == "ready" && st["state"] == "ready").then_some(())
    })
    .await;
    assert_eq!(
        data(&cb, &shared, "settings", "profile").await.as_deref(),
        Some("remote")
    );
    drop(d);
    clean(&id).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn diff_and_sync_act_on_the_target_they_name() {
    let _b = CLUSTER_B.lock().await;
    let env = TestEnv::get();
    let (ca, cb) = (env.kube_client().await, env.kube_client_b().await);
    let setup = Setup::new(&Options::default(), |_, _| {});
    let id = setup.id.clone();
    commit(setup.repo.path(), &id, "one");
    let text = std::fs::read_to_string(&setup.config).unwrap() + &targets(&id);
    std::fs::write(&setup.config, text).unwrap();

    // Two targets: a command must say which.
    let out = support::driftless(&setup.config, &["diff"]);
    assert_eq!(out.status.code(), Some(2), "{}", support::text(&out));
    assert!(support::text(&out).contains("pass --target"));
    let out = support::driftless(&setup.config, &["sync", "--target", "c"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(support::text(&out).contains("no such target"));
    let out = support::driftless(
        &setup.config,
        &["sync", "--target", "b", "--stack", &format!("t-{id}-a")],
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(
        support::text(&out).contains("does not take it"),
        "{}",
        support::text(&out)
    );

    // diff --target b: b's stacks only, rendered with b's profile, nothing written.
    let out = support::driftless(&setup.config, &["diff", "--target", "b", "-o", "json"]);
    assert_eq!(out.status.code(), Some(1), "{}", support::text(&out));
    let plan = String::from_utf8_lossy(&out.stdout);
    assert!(plan.contains(&format!("t-{id}-b")) && plan.contains(&format!("t-{id}-shared")));
    assert!(!plan.contains(&format!("t-{id}-a\"")), "{plan}");
    assert_eq!(
        data(&cb, &format!("tns-{id}"), "settings", "profile").await,
        None
    );

    // doctor checks each target's cluster.
    let out = support::driftless(&setup.config, &["doctor", "-o", "json"]);
    let report: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", support::text(&out)));
    for t in ["a", "b"] {
        let check = report["checks"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["check"] == format!("cluster (target {t})"))
            .unwrap_or_else(|| panic!("no cluster check of {t}: {report:#}"));
        assert_eq!(check["verdict"], "ok", "{check:#}");
    }

    // jobs list --target b: the jobs of b's stacks only.
    let out = support::driftless(
        &setup.config,
        &["jobs", "list", "--target", "b", "-o", "json"],
    );
    assert_eq!(out.status.code(), Some(0), "{}", support::text(&out));
    let listed = String::from_utf8_lossy(&out.stdout);
    assert!(listed.contains(&format!("backup-b-{id}")), "{listed}");
    assert!(!listed.contains(&format!("backup-a-{id}")), "{listed}");

    // sync --target b writes b's cluster only.
    let out = support::driftless(&setup.config, &["sync", "--target", "b"]);
    assert_eq!(out.status.code(), Some(0), "{}", support::text(&out));
    assert_eq!(
        data(&cb, &format!("tns-{id}"), "settings", "profile")
            .await
            .as_deref(),
        Some("remote")
    );
    assert!(
        data(&cb, &format!("tns-{id}-b"), "only-b", "b")
            .await
            .is_some()
    );
    assert_eq!(data(&cb, &format!("tns-{id}-a"), "only-a", "a").await, None);
    assert_eq!(
        data(&ca, &format!("tns-{id}"), "settings", "value").await,
        None
    );
    assert!(inventories(&ca, &id).await.is_empty());
    let out = support::driftless(&setup.config, &["diff", "--target", "b"]);
    assert_eq!(out.status.code(), Some(0), "{}", support::text(&out));
    clean(&id).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_target_whose_cluster_is_down_at_start_holds_up_nothing_and_catches_up() {
    let _b = CLUSTER_B.lock().await;
    let env = TestEnv::get();
    let (ca, cb) = (env.kube_client().await, env.kube_client_b().await);
    let setup = Setup::new(&Options::default(), |_, _| {});
    let id = setup.id.clone();
    commit(setup.repo.path(), &id, "one");
    let text = std::fs::read_to_string(&setup.config).unwrap() + &targets(&id);
    std::fs::write(&setup.config, text).unwrap();
    let pid = env.apiserver_b_pid();
    signal(pid, libc::SIGSTOP);
    let resume = Resume(pid);
    let d = setup.start();
    let shared = format!("tns-{id}");
    eventually(
        "a converges while b is down",
        Duration::from_secs(60),
        || async {
            (data(&ca, &shared, "settings", "profile").await.as_deref() == Some("local"))
                .then_some(())
        },
    )
    .await;
    let st = eventually("target b degraded", Duration::from_secs(90), || async {
        let st = d.status().await;
        (target(&st, "b")?["state"] == "degraded").then_some(st)
    })
    .await;
    assert_eq!(target(&st, "a").unwrap()["state"], "ready", "{st:#}");
    drop(resume);
    eventually("b catches up", Duration::from_secs(120), || async {
        (data(&cb, &shared, "settings", "profile").await.as_deref() == Some("remote")).then_some(())
    })
    .await;
    eventually("both ready", Duration::from_secs(60), || async {
        (d.status().await["state"] == "ready").then_some(())
    })
    .await;
    drop(d);
    clean(&id).await;
}
