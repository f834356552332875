//! Leases against the test cluster: two daemons of one instance share the stacks (each written
//! by exactly one), the survivor takes over a killed one's stacks, a paused holder resumed after
//! its Lease expired writes nothing, a CLI `sync` is refused (or waits) while a daemon holds a
//! stack, and a forged Lease neither crashes a daemon nor makes it write.

mod support;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::Api;
use kube::api::{DeleteParams, PostParams};
use support::daemon::{Daemon, Options, SECRET, Setup};
use support::{TestEnv, git, unique_name};

/// Short Leases (a takeover in about 6 s) with a fixed identity.
fn leases(identity: &str) -> String {
    leases_renewed(identity, "500ms")
}

/// `leases` renewed every `renew`: daemons started within one renewal of each other share.
fn leases_renewed(identity: &str, renew: &str) -> String {
    format!("leases: {{renewInterval: {renew}, duration: 6s, identity: {identity}}}\n")
}

/// Stacks `d-<id>-s1`..`d-<id>-s<n>` besides the setup's `d-<id>`, each a namespace and a
/// ConfigMap `settings` with `value`.
fn write_stacks(repo: &Path, id: &str, n: usize, value: &str) {
    for i in 1..=n {
        let dir = repo.join(format!("stack/s{i}"));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            dir.join("stack.yaml"),
            format!("apiVersion: driftless.dev/v1alpha1\nkind: Stack\nmetadata: {{name: d-{id}-s{i}}}\nspec: {{namespace: ns-{id}-s{i}}}\n"),
        )
        .unwrap();
        std::fs::write(
            dir.join("objects.yaml"),
            format!("apiVersion: v1\nkind: Namespace\nmetadata: {{name: ns-{id}-s{i}}}\n---\napiVersion: v1\nkind: ConfigMap\nmetadata: {{name: settings}}\ndata: {{value: '{value}'}}\n"),
        )
        .unwrap();
    }
}

/// Every stack's (name, namespace).
fn stacks(id: &str, n: usize) -> Vec<(String, String)> {
    let mut out = vec![(format!("d-{id}"), format!("ns-{id}"))];
    out.extend((1..=n).map(|i| (format!("d-{id}-s{i}"), format!("ns-{id}-s{i}"))));
    out
}

async fn value(client: &kube::Client, namespace: &str) -> Option<String> {
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), namespace);
    cms.get_opt("settings")
        .await
        .ok()??
        .data?
        .get("value")
        .cloned()
}

/// A daemon holding its stack (its instance its id, its Lease identity `holder`) that has
/// applied "one", and a CLI configuration of the same instance and repository with its own state
/// directory; the repository has a newer commit ("two") the daemon was not told of.
struct DaemonAndCli {
    d: Daemon,
    holder: String,
    cli_dir: tempfile::TempDir,
    cli_config: std::path::PathBuf,
}

async fn daemon_and_cli(client: &kube::Client) -> DaemonAndCli {
    let holder = unique_name("a");
    let la = leases(&holder);
    let d = Setup::new(
        &Options {
            leases: &la,
            ..Options::default()
        },
        |_, _| {},
    )
    .start();
    let ns = format!("ns-{}", d.id);
    support::eventually("the daemon applied", Duration::from_secs(60), || async {
        (value(client, &ns).await.as_deref() == Some("one")).then_some(())
    })
    .await;
    let cli_dir = tempfile::tempdir().unwrap();
    let cli_config = cli_dir.path().join("driftless.yaml");
    std::fs::write(
        &cli_config,
        format!(
            "instance: {}\nsource:\n  git: {{url: 'file://{}', branch: main}}\nstateDir: {}\n{}",
            d.id,
            d.repo.path().display(),
            cli_dir.path().join("state").display(),
            leases("cli"),
        ),
    )
    .unwrap();
    support::daemon::write_stack(d.repo.path(), &d.id, "two");
    git(d.repo.path(), &["commit", "-qam", "two"]);
    DaemonAndCli {
        d,
        holder,
        cli_dir,
        cli_config,
    }
}

/// `driftless sync --no-wait --wait-lease` of `cli_config` started, once it logs that it waits
/// (its stdout in `dir/cli.out`): the process and its log file.
async fn cli_waiting_for_the_lease(
    dir: &Path,
    cli_config: &Path,
) -> (std::process::Child, std::path::PathBuf) {
    let log = dir.join("cli.log");
    let cli = Command::new(env!("CARGO_BIN_EXE_driftless"))
        .arg("--config")
        .arg(cli_config)
        .args(["sync", "--no-wait", "--wait-lease"])
        .env("KUBECONFIG", TestEnv::get().var("KUBECONFIG"))
        .env_remove("CREDENTIALS_DIRECTORY")
        .stdout(Stdio::from(
            std::fs::File::create(dir.join("cli.out")).unwrap(),
        ))
        .stderr(Stdio::from(std::fs::File::create(&log).unwrap()))
        .spawn()
        .unwrap();
    support::eventually(
        "the CLI waits for the lease",
        Duration::from_secs(30),
        || async {
            std::fs::read_to_string(&log)
                .ok()?
                .contains("waiting for the lease")
                .then_some(())
        },
    )
    .await;
    (cli, log)
}

/// Each stack's holder as `d`'s status shows it.
async fn holders(d: &Daemon) -> Vec<(String, Option<String>)> {
    let st = d.status().await;
    st["stacks"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .map(|s| {
            (
                s["name"].as_str().unwrap_or_default().to_owned(),
                s["holder"].as_str().map(str::to_owned),
            )
        })
        .collect()
}

/// Whether `d`'s log shows an apply of `namespace`'s ConfigMap.
fn applied_by(d: &Daemon, namespace: &str) -> bool {
    let needle = format!(": ConfigMap/{namespace}/settings (");
    d.log()
        .lines()
        .any(|l| l.contains("applied ") && l.contains(&needle))
}

/// Commits `value` into every stack, with a second ConfigMap `extra` in each when `extra`.
fn commit_value(repo: &Path, id: &str, n: usize, value: &str, extra: bool) {
    support::daemon::write_stack(repo, id, value);
    write_stacks(repo, id, n, value);
    let dirs =
        std::iter::once("stack/app".to_owned()).chain((1..=n).map(|i| format!("stack/s{i}")));
    for dir in dirs {
        let file = repo.join(dir).join("extra.yaml");
        if extra {
            std::fs::write(
                &file,
                "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: extra}\ndata: {a: b}\n",
            )
            .unwrap();
        } else {
            let _ = std::fs::remove_file(&file);
        }
    }
    git(repo, &["add", "-A"]);
    git(repo, &["commit", "-qm", value]);
}

/// Two daemons of one instance, started together, over `1 + n` stacks.
fn two_daemons(n: usize) -> (Daemon, Daemon, String, String) {
    let (ia, ib) = (unique_name("a"), unique_name("b"));
    let (la, lb) = (leases_renewed(&ia, "1s"), leases_renewed(&ib, "1s"));
    let a = Setup::new(
        &Options {
            leases: &la,
            ..Options::default()
        },
        |_, _| {},
    );
    commit_value(a.repo.path(), &a.id, n, "one", true);
    let b = a.sibling(&Options {
        leases: &lb,
        ..Options::default()
    });
    let (a, b) = (a.spawn(), b.spawn());
    (a.wait(), b.wait(), ia, ib)
}

#[tokio::test]
async fn two_daemons_share_the_stacks_and_the_survivor_takes_over_a_killed_one() {
    let env = TestEnv::get();
    let client = env.kube_client().await;
    let n = 3;
    let (mut a, b, ia, ib) = two_daemons(n);
    let all = stacks(&a.id, n);
    // Every stack held by one of them, two each, and applied.
    let seen = support::eventually(
        "the stacks shared and applied",
        Duration::from_secs(60),
        || async {
            let seen = holders(&a).await;
            let of = |who: &str| {
                seen.iter()
                    .filter(|(_, h)| h.as_deref() == Some(who))
                    .count()
            };
            if seen.len() != all.len() || of(&ia) != 2 || of(&ib) != 2 {
                return None;
            }
            for (_, ns) in &all {
                if value(&client, ns).await.as_deref() != Some("one") {
                    return None;
                }
            }
            Some(seen)
        },
    )
    .await;
    // Each stack was applied by its holder only.
    for (stack, ns) in &all {
        let holder = seen
            .iter()
            .find(|(s, _)| s == stack)
            .and_then(|(_, h)| h.clone())
            .unwrap_or_default();
        let (mine, other) = if holder == ia { (&a, &b) } else { (&b, &a) };
        assert!(
            applied_by(mine, ns),
            "{stack}: its holder {holder} applied it"
        );
        assert!(
            !applied_by(other, ns),
            "{stack}: applied by the other daemon too"
        );
    }
    let a_stacks: Vec<String> = holders(&a)
        .await
        .into_iter()
        .filter(|(_, h)| h.as_deref() == Some(ia.as_str()))
        .map(|(s, _)| s)
        .collect();

    // kill -9 of a: b takes a's stacks once their Leases expire (6 s) and converges to a new
    // commit.
    a.child.kill().unwrap();
    a.child.wait().unwrap();
    commit_value(a.repo.path(), &a.id, n, "two", false);
    let resp = b.github(&a.push_payload(), SECRET).await;
    assert_eq!(resp.status(), 202);
    let took = std::time::Instant::now();
    support::eventually(
        "b holds and applied every stack",
        Duration::from_secs(45),
        || async {
            let seen = holders(&b).await;
            if !seen.iter().all(|(_, h)| h.as_deref() == Some(ib.as_str())) {
                return None;
            }
            for (_, ns) in &all {
                if value(&client, ns).await.as_deref() != Some("two") {
                    return None;
                }
            }
            Some(())
        },
    )
    .await;
    assert!(
        took.elapsed() < Duration::from_secs(40),
        "{:?}",
        took.elapsed()
    );
    for stack in &a_stacks {
        let ns = &all.iter().find(|(s, _)| s == stack).unwrap().1;
        assert!(applied_by(&b, ns), "{stack}: b applied the stack it took");
    }
    let st = b.status().await;
    assert_eq!(st["identity"], ib.as_str(), "{st}");
    // Each removed object pruned once, by the survivor: no double prune, no orphan.
    for (stack, ns) in &all {
        let cms: Api<ConfigMap> = Api::namespaced(client.clone(), ns);
        support::eventually("extra pruned", Duration::from_secs(10), || async {
            cms.get_opt("extra").await.ok()?.is_none().then_some(())
        })
        .await;
        let needle = format!("pruned ConfigMap/{ns}/extra");
        let count = |d: &Daemon| d.log().lines().filter(|l| l.contains(&needle)).count();
        assert_eq!((count(&a), count(&b)), (0, 1), "{stack}: pruned once, by b");
    }
}

/// Whether process `pid` is stopped (state `T` in /proc).
fn stopped(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.rsplit_once(')')
                .map(|(_, rest)| rest.trim_start().starts_with('T'))
        })
        .unwrap_or(false)
}

fn signal(pid: u32, sig: &str) {
    support::run_ok(Command::new("kill").args([sig, &pid.to_string()]));
}

#[tokio::test]
async fn a_holder_paused_past_its_lease_writes_nothing_stale_when_it_resumes() {
    let env = TestEnv::get();
    let client = env.kube_client().await;
    let pause = tempfile::tempdir().unwrap();
    let pause_file = pause.path().join("pause");
    let (ia, ib) = (unique_name("a"), unique_name("b"));
    let (la, lb) = (leases(&ia), leases(&ib));
    let setup = Setup::new(
        &Options {
            leases: &la,
            ..Options::default()
        },
        |_, _| {},
    );
    let sibling = setup.sibling(&Options {
        leases: &lb,
        ..Options::default()
    });
    let ns = format!("ns-{}", setup.id);
    let stack = format!("d-{}", setup.id);
    // Both daemons stop themselves before applying when the pause file exists.
    let point = format!("before-apply:{}", pause_file.display());
    let (a, b) = (
        setup.spawn_with_env(&[("DRIFTLESS_PAUSEPOINT", &point)]),
        sibling.spawn_with_env(&[("DRIFTLESS_PAUSEPOINT", &point)]),
    );
    let (a, b) = (a.wait(), b.wait());
    let holder = support::eventually("one value applied", Duration::from_secs(60), || async {
        let h = holders(&a).await.into_iter().next()?.1?;
        (value(&client, &ns).await.as_deref() == Some("one")).then_some(h)
    })
    .await;
    let (h, o, other_id) = if holder == ia {
        (&a, &b, &ib)
    } else {
        (&b, &a, &ia)
    };
    // The holder reconciles a new commit and stops (SIGSTOP) right before applying it.
    support::daemon::write_stack(a.repo.path(), &a.id, "two");
    git(a.repo.path(), &["commit", "-qam", "two"]);
    std::fs::write(&pause_file, "").unwrap();
    assert_eq!(h.github(&a.push_payload(), SECRET).await.status(), 202);
    let pid = h.child.id();
    support::eventually(
        "the holder stopped before applying",
        Duration::from_secs(30),
        || async { stopped(pid).then_some(()) },
    )
    .await;
    // The other daemon takes the stack once the Lease expired and applies a newer commit.
    support::daemon::write_stack(a.repo.path(), &a.id, "three");
    git(a.repo.path(), &["commit", "-qam", "three"]);
    support::eventually(
        "the other daemon took the stack",
        Duration::from_secs(30),
        || async {
            let seen = holders(o).await;
            (seen.first()?.1.as_deref() == Some(other_id.as_str())).then_some(())
        },
    )
    .await;
    assert_eq!(o.github(&a.push_payload(), SECRET).await.status(), 202);
    support::eventually(
        "the newer commit applied",
        Duration::from_secs(30),
        || async { (value(&client, &ns).await.as_deref() == Some("three")).then_some(()) },
    )
    .await;
    // Resumed, the old holder finds its Lease lost and writes nothing of its revision.
    signal(pid, "-CONT");
    let error = support::eventually(
        "the resumed daemon reports the lost lease",
        Duration::from_secs(30),
        || async {
            let st = h.status().await;
            let e = st["stacks"][0]["error"].as_str()?.to_owned();
            e.contains("lost").then_some(e)
        },
    )
    .await;
    assert!(
        error.contains(&format!("lease for stack {stack} lost to")),
        "{error}"
    );
    assert_eq!(
        value(&client, &ns).await.as_deref(),
        Some("three"),
        "nothing stale written"
    );
    let applies = h
        .log()
        .matches(&format!(": ConfigMap/{ns}/settings ("))
        .count();
    assert_eq!(
        applies,
        1,
        "the resumed daemon applied nothing after its first apply:\n{}",
        h.log()
    );
}

#[tokio::test]
async fn a_cli_sync_is_refused_while_a_daemon_holds_the_stack_and_waits_with_wait_lease() {
    let env = TestEnv::get();
    let client = env.kube_client().await;
    let DaemonAndCli {
        d,
        holder: ia,
        cli_dir,
        cli_config,
    } = daemon_and_cli(&client).await;
    let ns = format!("ns-{}", d.id);
    let stack = format!("d-{}", d.id);
    let out = support::driftless(&cli_config, &["sync", "--no-wait"]);
    let text = support::text(&out);
    assert!(!out.status.success(), "refused: {text}");
    assert!(
        text.contains(&format!("stack {stack} is being written by {ia}")),
        "names the holder: {text}"
    );
    assert_eq!(
        value(&client, &ns).await.as_deref(),
        Some("one"),
        "the CLI wrote nothing"
    );

    // --wait-lease: waits while the daemon holds the stack, syncs once it stopped.
    let (mut cli, log) = cli_waiting_for_the_lease(cli_dir.path(), &cli_config).await;
    assert!(cli.try_wait().unwrap().is_none(), "still waiting");
    assert_eq!(
        value(&client, &ns).await.as_deref(),
        Some("one"),
        "nothing written while waiting"
    );
    // While the CLI waits, the daemon applies a newer commit with one more object: the CLI's
    // revision (read before it waited) lacks it, and the record it reads once it holds the
    // Lease names it, so the CLI prunes it (a record listed before the wait would not).
    support::daemon::write_stack(d.repo.path(), &d.id, "three");
    std::fs::write(
        d.repo.path().join("stack/app/extra.yaml"),
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: extra}\ndata: {value: x}\n",
    )
    .unwrap();
    git(d.repo.path(), &["add", "-A"]);
    git(d.repo.path(), &["commit", "-qm", "three"]);
    let resp = d.github(&d.push_payload(), SECRET).await;
    assert!(resp.status().is_success(), "webhook: {}", resp.status());
    let extras: kube::Api<k8s_openapi::api::core::v1::ConfigMap> =
        kube::Api::namespaced(client.clone(), &ns);
    support::eventually(
        "the daemon applied three",
        Duration::from_secs(60),
        || async {
            (value(&client, &ns).await.as_deref() == Some("three")
                && extras.get_opt("extra").await.ok().flatten().is_some())
            .then_some(())
        },
    )
    .await;
    assert!(cli.try_wait().unwrap().is_none(), "still waiting");
    // A clean stop releases the Lease.
    signal(d.child.id(), "-TERM");
    let status = support::eventually("the CLI synced", Duration::from_secs(60), || {
        let done = cli.try_wait().unwrap();
        async move { done }
    })
    .await;
    assert!(
        status.success(),
        "{}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    assert_eq!(value(&client, &ns).await.as_deref(), Some("two"));
    assert!(
        extras.get_opt("extra").await.unwrap().is_none(),
        "the object of the commit applied while the CLI waited is pruned: {}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
}

/// A record relabelled to another instance while a CLI sync waits for the Lease (after the
/// CLI listed the records) is seen when the CLI reads its stacks' records again once it holds
/// the Lease: the stack is refused as another instance's and nothing of it is written.
#[tokio::test]
async fn a_record_taken_over_while_a_cli_sync_waits_is_refused() {
    let env = TestEnv::get();
    let client = env.kube_client().await;
    let DaemonAndCli {
        d,
        holder: _,
        cli_dir,
        cli_config,
    } = daemon_and_cli(&client).await;
    let ns = format!("ns-{}", d.id);
    let stack = format!("d-{}", d.id);
    let (mut cli, log) = cli_waiting_for_the_lease(cli_dir.path(), &cli_config).await;
    // Someone with write access to driftless-system relabels the record to another instance.
    let records: Api<ConfigMap> = Api::namespaced(client.clone(), "driftless-system");
    let patch =
        serde_json::json!({"metadata": {"labels": {"driftless.dev/instance": "someone-else"}}});
    records
        .patch(
            &format!("inventory-{stack}"),
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(&patch),
        )
        .await
        .unwrap();
    signal(d.child.id(), "-TERM");
    let status = support::eventually("the CLI ended", Duration::from_secs(60), || {
        let done = cli.try_wait().unwrap();
        async move { done }
    })
    .await;
    let out = std::fs::read_to_string(cli_dir.path().join("cli.out")).unwrap_or_default()
        + &std::fs::read_to_string(&log).unwrap_or_default();
    assert!(!status.success(), "refused: {out}");
    assert!(
        out.contains("managed by driftless instance \"someone-else\""),
        "names the other instance: {out}"
    );
    assert_eq!(
        value(&client, &ns).await.as_deref(),
        Some("one"),
        "nothing of the stack written: {out}"
    );
    // The record is left as it was found.
    let record = records.get(&format!("inventory-{stack}")).await.unwrap();
    assert_eq!(
        record.metadata.labels.unwrap()["driftless.dev/instance"],
        "someone-else"
    );
}

#[tokio::test]
async fn a_forged_lease_keeps_its_stack_unwritten_and_reported_and_crashes_nothing() {
    let env = TestEnv::get();
    let client = env.kube_client().await;
    let ia = unique_name("a");
    let la = leases(&ia);
    let setup = Setup::new(
        &Options {
            leases: &la,
            ..Options::default()
        },
        |_, _| {},
    );
    let (id, ns) = (setup.id.clone(), format!("ns-{}", setup.id));
    // Someone else's Lease for the stack: a garbage holder, huge, a far-future renewTime and
    // an absurd duration; no driftless labels.
    let leases_api: Api<Lease> = Api::namespaced(client.clone(), "driftless-system");
    let name = format!("stack.{id}.d-{id}");
    let holder = format!("evil\n\u{1b}[31m{}", "x".repeat(100_000));
    let forged: Lease = serde_json::from_value(serde_json::json!({
        "metadata": {"name": name, "namespace": "driftless-system"},
        "spec": {"holderIdentity": holder, "renewTime": "2199-01-01T00:00:00.000000Z",
                 "leaseDurationSeconds": 2_000_000_000}
    }))
    .unwrap();
    ensure_namespace(&client).await;
    leases_api
        .create(&PostParams::default(), &forged)
        .await
        .unwrap();
    let d = setup.start();
    let shown = support::eventually(
        "the forged holder reported",
        Duration::from_secs(30),
        || async { holders(&d).await.into_iter().next()?.1 },
    )
    .await;
    assert!(
        shown.starts_with("evil\\n\\u{1b}[31m"),
        "escaped: {shown:.40}"
    );
    assert!(shown.len() < 200, "bounded: {} bytes", shown.len());
    assert_eq!(value(&client, &ns).await, None, "the stack is not written");
    assert!(
        d.get("/healthz").await.status().is_success(),
        "the daemon lives"
    );
    // Once the forged Lease is gone the daemon takes the stack and applies it.
    leases_api
        .delete(&name, &DeleteParams::default())
        .await
        .unwrap();
    support::eventually(
        "applied after the forged lease went",
        Duration::from_secs(30),
        || async { (value(&client, &ns).await.as_deref() == Some("one")).then_some(()) },
    )
    .await;
    let st = d.status().await;
    assert_eq!(st["stacks"][0]["holder"], ia.as_str(), "{st}");
}

async fn ensure_namespace(client: &kube::Client) {
    use k8s_openapi::api::core::v1::Namespace;
    let api: Api<Namespace> = Api::all(client.clone());
    let ns: Namespace =
        serde_json::from_value(serde_json::json!({"metadata": {"name": "driftless-system"}}))
            .unwrap();
    match api.create(&PostParams::default(), &ns).await {
        Ok(_) => {}
        Err(kube::Error::Api(e)) if e.code == 409 => {}
        Err(e) => panic!("driftless-system: {e}"),
    }
}
