//! The cluster is trusted for what it serves, not for what driftless deletes (DESIGN.md §8):
//! forged or malformed inventories, objects driftless never applied, protected kinds, runs from
//! another source, stacks leaving together, and concurrent writers of the inventory — against the
//! real API server, through the binary.

mod support;

use std::collections::BTreeSet;
use std::path::Path;
use std::process::{Command, Output};

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{ConfigMap, PersistentVolumeClaim};
use kube::Api;
use kube::api::{Patch, PatchParams, PostParams};
use serde_json::{Value, json};
use support::{Repo, TestEnv, driftless, text, unique_name};

const SYSTEM: &str = "driftless-system";

fn stack_yaml(name: &str, namespace: &str) -> String {
    format!(
        "apiVersion: driftless.dev/v1alpha1\nkind: Stack\nmetadata: {{name: {name}}}\nspec: {{namespace: {namespace}, wait: {{timeout: 60s}}}}\n"
    )
}

fn configmap(name: &str, value: &str) -> String {
    format!("apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: {name}}}\ndata: {{v: '{value}'}}\n")
}

/// Writes `stack/<dir>/` of a repository: its stack file and one ConfigMap per name.
fn write_stack(root: &Path, dir: &str, stack: &str, namespace: &str, configmaps: &[&str]) {
    let base = root.join("stack").join(dir);
    std::fs::create_dir_all(&base).expect("mkdir");
    std::fs::write(base.join("stack.yaml"), stack_yaml(stack, namespace)).expect("write");
    let body: Vec<String> = configmaps.iter().map(|n| configmap(n, "1")).collect();
    std::fs::write(base.join("objects.yaml"), body.join("---\n")).expect("write");
}

#[track_caller]
fn expect_exit(o: &Output, code: i32, what: &str) {
    assert_eq!(o.status.code(), Some(code), "{what}:\n{}", text(o));
}

async fn exists(cms: &Api<ConfigMap>, name: &str) -> bool {
    cms.get_opt(name).await.expect("get configmap").is_some()
}

async fn uid(cms: &Api<ConfigMap>, name: &str) -> String {
    cms.get(name)
        .await
        .expect("configmap")
        .metadata
        .uid
        .expect("uid")
}

/// A ConfigMap made by hand (no driftless label or mark), as `someone` applies it.
async fn hand_made(cms: &Api<ConfigMap>, name: &str, extra: Value) {
    let mut cm = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name},
        "data": {"v": "hand-made"}});
    if let (Value::Object(cm), Value::Object(extra)) = (&mut cm, extra) {
        cm.extend(extra);
    }
    cms.patch(name, &PatchParams::apply("someone"), &Patch::Apply(&cm))
        .await
        .expect("hand-made configmap");
}

fn entry(kind: &str, namespace: &str, name: &str) -> Value {
    json!({"group": "", "kind": kind, "namespace": namespace, "name": name, "apiVersion": "v1"})
}

/// The parsed record of a stack's inventory, `None` when it has none.
async fn record(client: &kube::Client, stack: &str) -> Option<Value> {
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), SYSTEM);
    let cm = api
        .get_opt(&format!("inventory-{stack}"))
        .await
        .expect("read inventory")?;
    let text = cm.data?.get("objects.json")?.clone();
    Some(serde_json::from_str(&text).expect("inventory JSON"))
}

/// The names of the objects a record holds.
fn names(record: &Value) -> BTreeSet<String> {
    record["objects"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|o| Some(o["name"].as_str()?.to_owned()))
        .collect()
}

/// Creates (or replaces) an inventory ConfigMap by hand, as someone who can write to
/// `driftless-system` could.
async fn forge(client: &kube::Client, stack: &str, instance: &str, record: Value) {
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), SYSTEM);
    let cm = json!({"apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": format!("inventory-{stack}"), "namespace": SYSTEM,
            "labels": {"driftless.dev/inventory": stack, "driftless.dev/instance": instance}},
        "data": {"objects.json": record.to_string()}});
    api.patch(
        &format!("inventory-{stack}"),
        &PatchParams::apply("intruder").force(),
        &Patch::Apply(&cm),
    )
    .await
    .expect("forge inventory");
}

fn canonical(path: &Path) -> String {
    std::fs::canonicalize(path)
        .expect("canonical path")
        .display()
        .to_string()
}

/// The victim scenario of issue 16: a hand-made record of a stack that is not in the revision,
/// claiming this instance and this source, names an object driftless never applied.
#[tokio::test]
async fn a_forged_record_of_a_removed_stack_deletes_nothing_it_names() {
    let env = TestEnv::get();
    let client = env.kube_client().await;
    let ns = env.namespace("hc").await;
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), &ns.name);
    let r = Repo::new("hc", "");
    write_stack(
        r.path(),
        "app",
        &format!("app-{}", r.id),
        &ns.name,
        &["settings"],
    );
    expect_exit(&driftless(&r.config, &["sync"]), 0, "first sync");
    hand_made(&cms, "victim", json!({})).await;
    let forged = format!("forged-{}", r.id);
    forge(
        &client,
        &forged,
        &r.id,
        json!({"version": 1, "source": canonical(r.path()),
            "objects": [entry("ConfigMap", &ns.name, "victim")]}),
    )
    .await;

    let out = driftless(&r.config, &["sync", "--prune-removed-stacks"]);
    let t = text(&out);
    assert!(exists(&cms, "victim").await, "the victim survives:\n{t}");
    assert!(
        t.contains(&format!(
            "kept    ConfigMap/{}/victim (not managed by this instance",
            ns.name
        )),
        "{t}"
    );
    expect_exit(&out, 0, "a kept object is no failure");
}

/// A forged entry in the record of a stack that is in the revision names an object of another
/// instance's stack, and one driftless never applied: both stay.
#[tokio::test]
async fn a_forged_entry_never_deletes_another_instances_object() {
    let env = TestEnv::get();
    let client = env.kube_client().await;
    let ns = env.namespace("hc").await;
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), &ns.name);
    let other = Repo::new("hc", "");
    write_stack(
        other.path(),
        "theirs",
        &format!("theirs-{}", other.id),
        &ns.name,
        &["theirs"],
    );
    expect_exit(
        &driftless(&other.config, &["sync"]),
        0,
        "the other instance's sync",
    );
    let r = Repo::new("hc", "");
    let stack = format!("app-{}", r.id);
    write_stack(r.path(), "app", &stack, &ns.name, &["a", "b", "c", "d"]);
    expect_exit(&driftless(&r.config, &["sync"]), 0, "first sync");
    hand_made(&cms, "victim", json!({})).await;
    let mut rec = record(&client, &stack).await.expect("record");
    let objects = rec["objects"].as_array_mut().expect("objects");
    objects.push(entry("ConfigMap", &ns.name, "theirs"));
    objects.push(entry("ConfigMap", &ns.name, "victim"));
    forge(&client, &stack, &r.id, rec).await;

    let out = driftless(&r.config, &["sync"]);
    let t = text(&out);
    assert!(
        exists(&cms, "theirs").await,
        "the other instance's object survives:\n{t}"
    );
    assert!(
        exists(&cms, "victim").await,
        "the hand-made object survives:\n{t}"
    );
    for name in ["theirs", "victim"] {
        assert!(
            t.contains(&format!(
                "kept    ConfigMap/{}/{name} (not managed by this instance",
                ns.name
            )),
            "{name}:\n{t}"
        );
    }
    expect_exit(&out, 0, "sync with forged entries");
}

/// A forged hook record names a Job driftless never ran: the Job stays.
#[tokio::test]
async fn a_forged_hook_record_never_deletes_a_foreign_job() {
    let env = TestEnv::get();
    let client = env.kube_client().await;
    let ns = env.namespace("hc").await;
    let r = Repo::new("hc", "");
    let stack = format!("app-{}", r.id);
    write_stack(r.path(), "app", &stack, &ns.name, &["settings"]);
    expect_exit(&driftless(&r.config, &["sync"]), 0, "first sync");
    let jobs: Api<Job> = Api::namespaced(client.clone(), &ns.name);
    let job: Job = serde_json::from_value(json!({"apiVersion": "batch/v1", "kind": "Job",
        "metadata": {"name": "nightly"},
        "spec": {"suspend": true, "template": {"spec": {"restartPolicy": "Never",
            "containers": [{"name": "c", "image": "busybox:1.36"}]}}}}))
    .expect("job");
    jobs.create(&PostParams::default(), &job)
        .await
        .expect("create job");
    let mut rec = record(&client, &stack).await.expect("record");
    rec["hooks"] = json!({format!("{}/nightly", ns.name): {"hash": "sha256:0", "succeeded": true,
        "finishedAt": "2026-01-01T00:00:00Z"}});
    forge(&client, &stack, &r.id, rec).await;

    let out = driftless(&r.config, &["sync"]);
    let t = text(&out);
    assert!(
        jobs.get_opt("nightly").await.expect("get job").is_some(),
        "the foreign Job survives:\n{t}"
    );
    assert!(
        t.contains(&format!(
            "kept    Job/{}/nightly (not managed by this instance",
            ns.name
        )),
        "{t}"
    );
}

/// `driftless.dev/recreate` never deletes a PersistentVolumeClaim unless the host
/// configuration allows it, nor an object that is not this instance's.
#[tokio::test]
async fn recreate_spares_protected_kinds_and_foreign_objects() {
    let env = TestEnv::get();
    let client = env.kube_client().await;
    let ns = env.namespace("hc").await;
    let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), &ns.name);
    let r = Repo::new("hc", "");
    // Of a StorageClass that does not exist: the claim stays Pending (its spec is immutable all
    // the same) and binds none of the environment's volumes, which are never freed again.
    let pvc = |mode: &str| {
        format!(
            "apiVersion: v1\nkind: PersistentVolumeClaim\nmetadata: {{name: data, annotations: {{driftless.dev/recreate: 'true'}}}}\nspec: {{accessModes: [{mode}], storageClassName: driftless-test-none, resources: {{requests: {{storage: 1Gi}}}}}}\n"
        )
    };
    r.write("stack/app/stack.yaml", &stack_yaml("app-ID", &ns.name));
    r.write("stack/app/pvc.yaml", &pvc("ReadWriteOnce"));
    expect_exit(
        &driftless(&r.config, &["sync", "--no-wait"]),
        0,
        "first sync",
    );
    let pvc_uid = || async {
        pvcs.get("data")
            .await
            .expect("pvc")
            .metadata
            .uid
            .expect("uid")
    };
    let first = pvc_uid().await;
    r.write("stack/app/pvc.yaml", &pvc("ReadWriteMany"));
    let out = driftless(&r.config, &["sync", "--no-wait"]);
    let t = text(&out);
    expect_exit(&out, 2, "recreating a PVC is refused by default");
    assert!(
        t.contains("PersistentVolumeClaim") && t.contains("prune.allowRecreate"),
        "{t}"
    );
    assert_eq!(pvc_uid().await, first, "the claim was not deleted");

    // Allowed by the host configuration: recreated.
    let config = std::fs::read_to_string(&r.config).expect("config");
    let allowing = r.config.with_file_name("allowing.yaml");
    std::fs::write(
        &allowing,
        format!("{config}prune: {{allowRecreate: [PersistentVolumeClaim]}}\n"),
    )
    .expect("config");
    let out = driftless(&allowing, &["sync", "--no-wait"]);
    expect_exit(&out, 0, "recreate allowed for PVCs");
    assert_ne!(pvc_uid().await, first, "a new claim");

    // An immutable ConfigMap made by hand is never deleted to be recreated.
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), &ns.name);
    hand_made(&cms, "frozen", json!({"immutable": true})).await;
    let before = uid(&cms, "frozen").await;
    r.write(
        "stack/app/frozen.yaml",
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: frozen, annotations: {driftless.dev/recreate: 'true'}}\nimmutable: true\ndata: {v: mine}\n",
    );
    let out = driftless(&allowing, &["sync", "--no-wait"]);
    let t = text(&out);
    expect_exit(&out, 2, "recreating a foreign object is refused");
    assert!(t.contains("not managed by this instance"), "{t}");
    assert_eq!(uid(&cms, "frozen").await, before, "not deleted:\n{t}");
    let data = cms.get("frozen").await.expect("frozen").data.expect("data");
    assert_eq!(data["v"], "hand-made");
}

/// `sync --path` of another directory never removes the stacks of the configured source, and
/// removing a stack from the CLI needs `--prune-removed-stacks`.
#[tokio::test]
async fn a_sync_of_another_directory_keeps_the_stacks_of_this_source() {
    let env = TestEnv::get();
    let client = env.kube_client().await;
    let ns = env.namespace("hc").await;
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), &ns.name);
    let r = Repo::new("hc", "");
    let (one, two, three) = (
        format!("one-{}", r.id),
        format!("two-{}", r.id),
        format!("three-{}", r.id),
    );
    write_stack(r.path(), "one", &one, &ns.name, &["one"]);
    write_stack(r.path(), "two", &two, &ns.name, &["two-a", "two-b"]);
    expect_exit(&driftless(&r.config, &["sync"]), 0, "first sync");
    let source = canonical(r.path());
    assert_eq!(
        record(&client, &one).await.expect("record")["source"],
        source
    );

    let other = tempfile::tempdir().expect("dir");
    write_stack(other.path(), "three", &three, &ns.name, &["three"]);
    let other_path = other.path().to_str().expect("utf-8");
    for extra in [&[][..], &["--prune-removed-stacks"][..]] {
        let mut args = vec!["sync", "--path", other_path];
        args.extend_from_slice(extra);
        let out = driftless(&r.config, &args);
        let t = text(&out);
        expect_exit(&out, 0, "sync of another directory");
        for name in ["one", "two-a", "two-b", "three"] {
            assert!(
                exists(&cms, name).await,
                "{name} exists after {args:?}:\n{t}"
            );
        }
        assert!(
            t.contains(&format!("stack {one}: kept")),
            "the removal is reported, not done:\n{t}"
        );
    }
    for stack in [&one, &two] {
        assert_eq!(
            record(&client, stack).await.expect("record kept")["source"],
            source
        );
    }
    assert_eq!(
        record(&client, &three).await.expect("record")["source"],
        canonical(other.path())
    );

    // Removed from its own source: kept without the flag, removed with it; the stack of the
    // other directory stays either way.
    std::fs::remove_dir_all(r.path().join("stack/one")).expect("remove stack");
    let out = driftless(&r.config, &["sync"]);
    expect_exit(&out, 0, "sync without the flag");
    assert!(
        text(&out).contains("--prune-removed-stacks"),
        "{}",
        text(&out)
    );
    assert!(exists(&cms, "one").await);
    let out = driftless(&r.config, &["sync", "--prune-removed-stacks"]);
    expect_exit(&out, 0, "sync with the flag");
    assert!(!exists(&cms, "one").await, "removed:\n{}", text(&out));
    assert!(record(&client, &one).await.is_none(), "its record is gone");
    assert!(exists(&cms, "three").await, "another source's stack stays");
    assert!(record(&client, &three).await.is_some());
}

/// Several single-object stacks leaving at once count together against the mass-prune gate.
#[tokio::test]
async fn the_mass_prune_gate_counts_every_stack_that_leaves() {
    let env = TestEnv::get();
    let client = env.kube_client().await;
    let ns = env.namespace("hc").await;
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), &ns.name);
    let r = Repo::new("hc", "");
    for name in ["a", "b", "c"] {
        write_stack(
            r.path(),
            name,
            &format!("{name}-{}", r.id),
            &ns.name,
            &[name],
        );
    }
    expect_exit(&driftless(&r.config, &["sync"]), 0, "first sync");
    for name in ["a", "b"] {
        std::fs::remove_dir_all(r.path().join("stack").join(name)).expect("remove stack");
    }
    let out = driftless(&r.config, &["sync", "--prune-removed-stacks"]);
    let t = text(&out);
    expect_exit(&out, 2, "two stacks of one object each leave together");
    assert!(t.contains("refusing to prune 2 of 2 objects"), "{t}");
    for name in ["a", "b", "c"] {
        assert!(exists(&cms, name).await, "{name} kept:\n{t}");
    }
    let out = driftless(
        &r.config,
        &["sync", "--prune-removed-stacks", "--allow-mass-prune"],
    );
    expect_exit(&out, 0, "allowed explicitly");
    assert!(!exists(&cms, "a").await && !exists(&cms, "b").await);
    assert!(exists(&cms, "c").await);
}

/// A malformed record, and a gzip bomb in a record's `binaryData`, fail their own stack only:
/// nothing is deleted, the process does not fall over, other stacks are applied.
#[tokio::test]
async fn malformed_and_oversized_records_fail_their_stack_safely() {
    let env = TestEnv::get();
    let client = env.kube_client().await;
    let ns = env.namespace("hc").await;
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), &ns.name);
    let r = Repo::new("hc", "");
    let (good, bombed) = (format!("good-{}", r.id), format!("bombed-{}", r.id));
    write_stack(r.path(), "good", &good, &ns.name, &["good"]);
    write_stack(
        r.path(),
        "bombed",
        &bombed,
        &ns.name,
        &["bombed", "bombed-2"],
    );
    expect_exit(&driftless(&r.config, &["sync"]), 0, "first sync");

    // 512 MiB of zeros, gzip-compressed to some 500 KiB.
    let bomb = Command::new("sh")
        .args(["-c", "head -c 536870912 /dev/zero | gzip -9 -c"])
        .output()
        .expect("gzip");
    assert!(bomb.status.success() && bomb.stdout.len() < 900 * 1024);
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), SYSTEM);
    let name = format!("inventory-{bombed}");
    let mut bombed_cm = api.get(&name).await.expect("record");
    bombed_cm.data = None;
    bombed_cm.binary_data = Some(
        [(
            "objects.json.gz".to_owned(),
            k8s_openapi::ByteString(bomb.stdout),
        )]
        .into(),
    );
    api.replace(&name, &PostParams::default(), &bombed_cm)
        .await
        .expect("bomb the record");
    let broken = format!("broken-{}", r.id);
    let api_cm = json!({"apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": format!("inventory-{broken}"), "namespace": SYSTEM,
            "labels": {"driftless.dev/inventory": broken, "driftless.dev/instance": r.id}},
        "data": {"objects.json": "{\"version\": 1, \"objects\": [{\"kind\": "}});
    api.patch(
        &format!("inventory-{broken}"),
        &PatchParams::apply("intruder"),
        &Patch::Apply(&api_cm),
    )
    .await
    .expect("broken record");

    // The good stack changes; the bombed stack drops an object.
    write_stack(r.path(), "good", &good, &ns.name, &["good", "good-2"]);
    write_stack(r.path(), "bombed", &bombed, &ns.name, &["bombed"]);
    let out = driftless(&r.config, &["sync", "--prune-removed-stacks"]);
    let t = text(&out);
    expect_exit(&out, 2, "the unreadable records fail their stacks");
    assert!(
        exists(&cms, "good-2").await,
        "the good stack is applied:\n{t}"
    );
    assert!(exists(&cms, "bombed-2").await, "nothing pruned:\n{t}");
    for stack in [&bombed, &broken] {
        assert!(
            t.lines()
                .any(|l| l.contains(stack.as_str()) && l.contains("unreadable")),
            "{stack} reported unreadable:\n{t}"
        );
    }
    let kept = api
        .get_opt(&format!("inventory-{broken}"))
        .await
        .expect("get");
    assert!(
        kept.is_some(),
        "an unreadable record is left for a person to look at"
    );
}

/// Two syncs of one stack at once, from different directories: every object either run left in
/// the cluster is in the stack's record (no orphans, whatever the interleaving).
#[tokio::test]
async fn concurrent_syncs_of_one_stack_lose_no_record_entry() {
    let env = TestEnv::get();
    let client = env.kube_client().await;
    let ns = env.namespace("hc").await;
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), &ns.name);
    let r = Repo::new("hc", "");
    let stack = format!("shared-{}", r.id);
    let dirs: Vec<tempfile::TempDir> = (0..2).map(|_| tempfile::tempdir().expect("dir")).collect();
    for (i, dir) in dirs.iter().enumerate() {
        let names = [format!("from-{i}"), format!("also-{i}")];
        let names: Vec<&str> = names.iter().map(String::as_str).collect();
        write_stack(dir.path(), "shared", &stack, &ns.name, &names);
    }
    let outs = concurrently(&r.config, &dirs);
    let rec = record(&client, &stack).await.expect("record");
    let recorded = names(&rec);
    let mut live = BTreeSet::new();
    for cm in cms.list(&Default::default()).await.expect("list").items {
        let labels = cm.metadata.labels.unwrap_or_default();
        if labels.get("driftless.dev/stack") == Some(&stack) {
            live.insert(cm.metadata.name.expect("name"));
        }
    }
    assert!(!live.is_empty(), "{outs}");
    assert!(
        live.is_subset(&recorded),
        "orphans {:?} (live {live:?}, recorded {recorded:?}):\n{outs}",
        live.difference(&recorded).collect::<Vec<_>>()
    );
}

/// Two syncs of different stacks at once (from different directories, one instance): each
/// stack ends complete, with its own source, and neither removes the other.
#[tokio::test]
async fn concurrent_syncs_of_different_stacks_keep_both_records() {
    let env = TestEnv::get();
    let client = env.kube_client().await;
    let ns = env.namespace("hc").await;
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), &ns.name);
    let r = Repo::new("hc", "");
    let dirs: Vec<tempfile::TempDir> = (0..2).map(|_| tempfile::tempdir().expect("dir")).collect();
    let stacks: Vec<String> = (0..2).map(|i| format!("s{i}-{}", r.id)).collect();
    for round in 0..2 {
        for (i, dir) in dirs.iter().enumerate() {
            let names: Vec<String> = (0..=round).map(|k| format!("s{i}-{k}")).collect();
            let names: Vec<&str> = names.iter().map(String::as_str).collect();
            write_stack(dir.path(), "s", &stacks[i], &ns.name, &names);
        }
        let outs = concurrently(&r.config, &dirs);
        for (i, dir) in dirs.iter().enumerate() {
            let rec = record(&client, &stacks[i]).await.expect("record");
            let want: BTreeSet<String> = (0..=round).map(|k| format!("s{i}-{k}")).collect();
            assert_eq!(names(&rec), want, "round {round}, stack {i}:\n{outs}");
            assert_eq!(rec["source"], canonical(dir.path()), "{outs}");
            for name in &want {
                assert!(exists(&cms, name).await, "{name}:\n{outs}");
            }
        }
    }
}

/// Runs `sync --path <dir>` for every directory at once with one host configuration; returns
/// their outputs, for messages.
fn concurrently(config: &Path, dirs: &[tempfile::TempDir]) -> String {
    let env = TestEnv::get();
    let children: Vec<_> = dirs
        .iter()
        .map(|d| {
            Command::new(env!("CARGO_BIN_EXE_driftless"))
                .arg("--config")
                .arg(config)
                .args(["sync", "--no-wait", "--path"])
                .arg(d.path())
                .env("KUBECONFIG", env.var("KUBECONFIG"))
                .env_remove("CREDENTIALS_DIRECTORY")
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .expect("spawn driftless")
        })
        .collect();
    children
        .into_iter()
        .map(|c| text(&c.wait_with_output().expect("driftless output")))
        .collect::<Vec<_>>()
        .join("\n----\n")
}

/// The inventory API itself: two writers holding the same old record never lose each other's
/// changes, and a stale writer cannot delete a record someone wrote meanwhile.
#[tokio::test]
async fn two_writers_of_one_record_merge_their_changes() {
    use driftless::cluster::inventory::{self, Entry};
    use driftless::stack::ObjectKey;
    let client = TestEnv::get().kube_client().await;
    let stack = unique_name("inv");
    let key = |name: &str| ObjectKey {
        group: String::new(),
        kind: "ConfigMap".into(),
        namespace: Some("ns".into()),
        name: name.into(),
    };
    let mut a = inventory::read(&client, &stack).await.expect("read");
    let mut b = inventory::read(&client, &stack).await.expect("read");
    a.entries_mut()
        .insert(key("x"), Entry::new(&key("x"), "v1"));
    inventory::write(&client, &mut a).await.expect("a writes");
    b.entries_mut()
        .insert(key("y"), Entry::new(&key("y"), "v1"));
    inventory::write(&client, &mut b)
        .await
        .expect("b writes over a stale read");
    let both = inventory::read(&client, &stack).await.expect("read");
    let got: Vec<&str> = both.entries.keys().map(|k| k.name.as_str()).collect();
    assert_eq!(got, ["x", "y"]);

    // `a` (stale: it has not seen y) removes x after deleting it; y stays.
    a.entries_mut().remove(&key("x"));
    inventory::write(&client, &mut a)
        .await
        .expect("a removes x");
    let now = inventory::read(&client, &stack).await.expect("read");
    let got: Vec<&str> = now.entries.keys().map(|k| k.name.as_str()).collect();
    assert_eq!(got, ["y"]);
    // `b` still holds the record it wrote (before a's write): it may not delete it.
    let refused = inventory::delete(&client, &b).await;
    assert!(refused.is_err(), "a stale delete is refused");
    assert!(
        inventory::read(&client, &stack)
            .await
            .expect("read")
            .exists()
    );
    let fresh = inventory::read(&client, &stack).await.expect("read");
    inventory::delete(&client, &fresh).await.expect("delete");
    assert!(
        !inventory::read(&client, &stack)
            .await
            .expect("read")
            .exists()
    );
}

/// The daemon removes a stack when a revision fetched from its configured source drops it (its
/// object pruned, its record gone), without any flag.
#[tokio::test]
async fn the_daemon_removes_a_stack_its_source_dropped() {
    use support::daemon::{SECRET, start_daemon_prepared};
    let env = TestEnv::get();
    let client = env.kube_client().await;
    let ns = env.namespace("hc").await;
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), &ns.name);
    let extra = unique_name("extra");
    let d = start_daemon_prepared("", |repo, _| {
        write_stack(repo, "extra", &extra, &ns.name, &["extra"]);
    });
    d.wait_notify("READY=1", std::time::Duration::from_secs(60));
    support::eventually(
        "the extra stack applied",
        std::time::Duration::from_secs(30),
        || async { exists(&cms, "extra").await.then_some(()) },
    )
    .await;
    std::fs::remove_dir_all(d.repo.path().join("stack/extra")).expect("remove stack");
    support::git(d.repo.path(), &["commit", "-qam", "drop the extra stack"]);
    let before = d.status().await;
    assert!(
        d.github(&d.push_payload(), SECRET)
            .await
            .status()
            .is_success()
    );
    support::eventually(
        "the dropped stack removed",
        std::time::Duration::from_secs(30),
        || async { (!exists(&cms, "extra").await).then_some(()) },
    )
    .await;
    d.next_run(&before).await;
    assert!(
        record(&client, &extra).await.is_none(),
        "its record is gone"
    );
}
