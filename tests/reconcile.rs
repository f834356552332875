//! The reconcile engine against the real control plane and real git repositories: `driftless
//! diff` and `sync` through the binary, cluster state checked with kube and kubectl.

mod support;

use support::{driftless_with, text};

use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::core::v1::{ConfigMap, Secret, Service};
use kube::Api;
use std::process::Output;
use support::{Repo, TestEnv, kubectl, unique_name};

/// Short leases: a test of a crashed `sync` waits out the lease its process left.
const LEASES: &str = "leases: {renewInterval: 1s, duration: 3s}\n";

#[track_caller]
fn expect_exit(o: &Output, code: i32, what: &str) {
    assert_eq!(
        o.status.code(),
        Some(code),
        "{what}: exit {:?}\n{}",
        o.status.code(),
        text(o)
    );
}

const STACK: &str = "apiVersion: driftless.dev/v1alpha1\nkind: Stack\nmetadata: {name: s-ID}\nspec:\n  namespace: ns-ID\n  wait: {timeout: 60s}\n";
const NAMESPACE: &str = "apiVersion: v1\nkind: Namespace\nmetadata: {name: ns-ID}\n";
const CONFIGMAP: &str = "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: settings}\ndata: {mode: fast, enabled: 'true'}\n";
const DEPLOYMENT: &str = "apiVersion: apps/v1
kind: Deployment
metadata: {name: web}
spec:
  replicas: 2
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      containers:
      - name: web
        image: registry.invalid/web:1
        ports: [{containerPort: 8080}]
        volumeMounts: [{name: cfg, mountPath: /etc/web}]
      volumes:
      - name: cfg
        configMap: {name: settings, defaultMode: 0644}
      tolerations: [{key: kwok.x-k8s.io/node, operator: Exists, effect: NoSchedule}]
";
const SERVICE: &str = "apiVersion: v1\nkind: Service\nmetadata: {name: web}\nspec:\n  selector: {app: web}\n  ports: [{port: 80, targetPort: 8080}]\n";
const STATEFULSET: &str = "apiVersion: apps/v1
kind: StatefulSet
metadata: {name: db}
spec:
  serviceName: db
  replicas: 1
  selector: {matchLabels: {app: db}}
  template:
    metadata: {labels: {app: db}}
    spec:
      containers: [{name: db, image: registry.invalid/db:1}]
";

fn base_stack(f: &Repo) {
    f.write("stack/app/stack.yaml", STACK);
    f.write("stack/app/00-namespace.yaml", NAMESPACE);
    f.write("stack/app/10-config.yaml", CONFIGMAP);
    f.write(
        "stack/app/20-web.yaml",
        &format!("{DEPLOYMENT}---\n{SERVICE}"),
    );
    f.write("stack/app/30-db.yaml", STATEFULSET);
}

#[tokio::test]
async fn commit_sequence_converges_without_perpetual_diffs() {
    let env = TestEnv::get();
    let client = env.kube_client().await;
    let f = Repo::git("t", LEASES);
    let ns = f.ns();

    // 1. Create.
    base_stack(&f);
    f.commit("create");
    let out = f.driftless(&["diff"]);
    expect_exit(&out, 1, "diff before the first sync shows creates");
    assert!(text(&out).contains("5 to create"), "{}", text(&out));
    let out = f.driftless(&["sync"]);
    expect_exit(&out, 0, "first sync");
    let deploy = Api::<Deployment>::namespaced(client.clone(), &ns)
        .get("web")
        .await
        .expect("deployment");
    assert_eq!(deploy.spec.as_ref().and_then(|s| s.replicas), Some(2));
    let mode = deploy.spec.unwrap().template.spec.unwrap().volumes.unwrap()[0]
        .config_map
        .as_ref()
        .and_then(|c| c.default_mode);
    assert_eq!(
        mode,
        Some(0o644),
        "defaultMode: 0644 is read as octal, as kubectl does"
    );
    let labels = Api::<ConfigMap>::namespaced(client.clone(), &ns)
        .get("settings")
        .await
        .unwrap()
        .metadata
        .labels
        .unwrap();
    assert_eq!(labels["driftless.dev/stack"], format!("s-{}", f.id));
    // The same revision again: no changes, no perpetual diff from server defaults.
    let out = f.driftless(&["diff"]);
    expect_exit(&out, 0, "diff right after sync");
    assert!(
        text(&out).contains("0 to create, 0 to update, 0 to prune, 5 unchanged"),
        "{}",
        text(&out)
    );

    // 2. Change: scale and change config.
    f.write(
        "stack/app/10-config.yaml",
        &CONFIGMAP.replace("mode: fast", "mode: safe"),
    );
    f.write(
        "stack/app/20-web.yaml",
        &format!(
            "{}---\n{SERVICE}",
            DEPLOYMENT.replace("replicas: 2", "replicas: 3")
        ),
    );
    f.commit("change");
    let out = f.driftless(&["diff"]);
    expect_exit(&out, 1, "diff after a change");
    let shown = text(&out);
    assert!(
        shown.contains("-  replicas: 2") && shown.contains("+  replicas: 3"),
        "{shown}"
    );
    assert!(
        shown.contains("-  mode: fast") && shown.contains("+  mode: safe"),
        "{shown}"
    );
    assert!(shown.contains("0 to create, 2 to update"), "{shown}");
    expect_exit(&f.driftless(&["sync"]), 0, "sync change");
    let deploy = Api::<Deployment>::namespaced(client.clone(), &ns)
        .get("web")
        .await
        .unwrap();
    assert_eq!(deploy.spec.and_then(|s| s.replicas), Some(3));
    assert_eq!(
        deploy.status.and_then(|s| s.available_replicas),
        Some(3),
        "sync waited for health"
    );

    // 3. No-op commit.
    f.write("README.md", "docs only\n");
    f.commit("no-op");
    let out = f.driftless(&["sync", "-o", "json"]);
    expect_exit(&out, 0, "no-op sync");
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json report");
    let actions: Vec<&str> = report["stacks"][0]["plan"]["changes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["action"].as_str().unwrap())
        .collect();
    assert!(actions.iter().all(|a| *a == "unchanged"), "{actions:?}");

    // 4. Remove an object: it is pruned.
    f.remove("stack/app/30-db.yaml");
    f.commit("remove db");
    let out = f.driftless(&["sync"]);
    expect_exit(&out, 0, "sync with prune");
    assert!(
        text(&out).contains("prune   StatefulSet/"),
        "{}",
        text(&out)
    );
    let gone = kubectl(&["get", "statefulsets", "-n", &ns, "-o", "name"]);
    assert_eq!(gone.trim(), "", "statefulset pruned");

    // 5. Rename the stack: objects stay, move to the new stack, the old record goes.
    f.write(
        "stack/app/stack.yaml",
        &STACK.replace("name: s-ID", "name: renamed-ID"),
    );
    f.commit("rename stack");
    let out = f.driftless(&["sync"]);
    expect_exit(&out, 0, "sync after rename");
    let cm = Api::<ConfigMap>::namespaced(client.clone(), &ns)
        .get("settings")
        .await
        .expect("configmap survives the rename");
    assert_eq!(
        cm.metadata.labels.unwrap()["driftless.dev/stack"],
        format!("renamed-{}", f.id)
    );
    assert!(
        Api::<Service>::namespaced(client.clone(), &ns)
            .get("web")
            .await
            .is_ok(),
        "service survives"
    );
    let inventories = kubectl(&["get", "configmaps", "-n", "driftless-system", "-o", "name"]);
    assert!(
        !inventories.contains(&format!("inventory-s-{}", f.id)),
        "old inventory removed: {inventories}"
    );
    assert!(
        inventories.contains(&format!("inventory-renamed-{}", f.id)),
        "{inventories}"
    );
    expect_exit(&f.driftless(&["diff"]), 0, "converged after rename");
}

#[tokio::test]
async fn drift_is_shown_and_reverted_and_conflicts_are_named() {
    let env = TestEnv::get();
    let client = env.kube_client().await;
    let f = Repo::git("t", LEASES);
    let ns = f.ns();
    base_stack(&f);
    f.commit("create");
    expect_exit(&f.driftless(&["sync"]), 0, "first sync");

    // Someone scales by hand: the field now belongs to kubectl-patch.
    kubectl(&[
        "patch",
        "deployment",
        "web",
        "-n",
        &ns,
        "--type",
        "merge",
        "-p",
        r#"{"spec":{"replicas":5}}"#,
    ]);
    let out = f.driftless(&["diff"]);
    expect_exit(&out, 1, "diff shows drift");
    let shown = text(&out);
    assert!(
        shown.contains("-  replicas: 5") && shown.contains("+  replicas: 2"),
        "{shown}"
    );
    assert!(
        shown.contains(".spec.replicas (owned by kubectl-patch)"),
        "conflict named: {shown}"
    );

    // With force: false the conflict stops the stack and names manager and field.
    f.write("stack/app/stack.yaml", &format!("{STACK}  force: false\n"));
    f.commit("no force");
    let out = f.driftless(&["sync"]);
    expect_exit(&out, 2, "sync refuses the conflict");
    let shown = text(&out);
    assert!(
        shown.contains("Deployment") && shown.contains(".spec.replicas (owned by kubectl-patch)"),
        "{shown}"
    );
    let deploy = Api::<Deployment>::namespaced(client.clone(), &ns)
        .get("web")
        .await
        .unwrap();
    assert_eq!(
        deploy.spec.and_then(|s| s.replicas),
        Some(5),
        "nothing applied"
    );

    // With force (the default) the field is taken over and reverted.
    f.write("stack/app/stack.yaml", STACK);
    f.commit("force again");
    let out = f.driftless(&["sync"]);
    expect_exit(&out, 0, "sync takes over");
    assert!(
        text(&out).contains("took over field .spec.replicas from kubectl-patch"),
        "{}",
        text(&out)
    );
    let deploy = Api::<Deployment>::namespaced(client.clone(), &ns)
        .get("web")
        .await
        .unwrap();
    assert_eq!(
        deploy.spec.and_then(|s| s.replicas),
        Some(2),
        "drift reverted"
    );
    expect_exit(&f.driftless(&["diff"]), 0, "converged");
}

#[tokio::test]
async fn crd_and_its_custom_resources_apply_in_one_sync() {
    let env = TestEnv::get();
    let client = env.kube_client().await;
    let f = Repo::git("t", LEASES);
    let group = format!("{}.example.driftless.dev", f.id);
    f.write("stack/app/stack.yaml", STACK);
    f.write("stack/app/00-namespace.yaml", NAMESPACE);
    f.write(
        "stack/app/crd.yaml",
        &format!(
            "apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata: {{name: widgets.{group}}}
spec:
  group: {group}
  scope: Namespaced
  names: {{plural: widgets, singular: widget, kind: Widget}}
  versions:
  - name: v1
    served: true
    storage: true
    schema:
      openAPIV3Schema:
        type: object
        properties:
          spec: {{type: object, properties: {{size: {{type: integer, default: 1}}, color: {{type: string}}}}}}
"
        ),
    );
    f.write(
        "stack/app/widgets.yaml",
        &format!("apiVersion: {group}/v1\nkind: Widget\nmetadata: {{name: w1}}\nspec: {{color: blue}}\n---\napiVersion: {group}/v1\nkind: Widget\nmetadata: {{name: w2}}\nspec: {{size: 3}}\n"),
    );
    f.commit("crd and crs");
    let out = f.driftless(&["sync"]);
    expect_exit(&out, 0, "one sync applies the CRD and its CRs");
    let w1 = kubectl(&[
        "get",
        &format!("widgets.{group}"),
        "w1",
        "-n",
        &f.ns(),
        "-o",
        "jsonpath={.spec.size}/{.spec.color}",
    ]);
    assert_eq!(w1, "1/blue", "CR stored with the schema default");
    // Second sync: no perpetual diff from the defaulted field.
    let out = f.driftless(&["diff"]);
    expect_exit(&out, 0, "no diff on CRD/CR defaults");
    drop(client);
}

#[tokio::test]
async fn mass_prune_is_refused_and_nothing_is_pruned() {
    let env = TestEnv::get();
    let client = env.kube_client().await;
    let f = Repo::git("t", LEASES);
    base_stack(&f);
    f.commit("create");
    expect_exit(&f.driftless(&["sync", "--no-wait"]), 0, "first sync");
    // A bad commit keeps only the Namespace: 4 of 5 objects would go.
    for p in [
        "stack/app/10-config.yaml",
        "stack/app/20-web.yaml",
        "stack/app/30-db.yaml",
    ] {
        f.remove(p);
    }
    f.commit("oops");
    let out = f.driftless(&["sync", "--no-wait"]);
    expect_exit(&out, 2, "mass prune refused");
    assert!(
        text(&out).contains("refusing to prune 4 of 5 objects (80 % > 50 %)"),
        "{}",
        text(&out)
    );
    assert!(
        Api::<ConfigMap>::namespaced(client.clone(), &f.ns())
            .get("settings")
            .await
            .is_ok(),
        "nothing pruned"
    );
    assert!(
        Api::<Deployment>::namespaced(client.clone(), &f.ns())
            .get("web")
            .await
            .is_ok()
    );
    let out = f.driftless(&["sync", "--no-wait", "--allow-mass-prune"]);
    expect_exit(&out, 0, "allowed explicitly");
    assert!(
        Api::<ConfigMap>::namespaced(client.clone(), &f.ns())
            .get_opt("settings")
            .await
            .unwrap()
            .is_none()
    );
}

#[tokio::test]
async fn a_crash_after_the_inventory_write_orphans_nothing() {
    let env = TestEnv::get();
    let client = env.kube_client().await;
    let f = Repo::git("t", LEASES);
    base_stack(&f);
    f.commit("create");
    let out = driftless_with(
        &f.config,
        &["sync"],
        &[("DRIFTLESS_FAILPOINT", "after-inventory-write")],
    );
    assert!(
        !out.status.success(),
        "the failpoint aborts: {}",
        text(&out)
    );
    assert!(
        text(&out).contains("failpoint after-inventory-write"),
        "{}",
        text(&out)
    );
    // Recorded before anything was created: the inventory already names every object.
    let inv = kubectl(&[
        "get",
        "configmap",
        &format!("inventory-s-{}", f.id),
        "-n",
        "driftless-system",
        "-o",
        "jsonpath={.data.objects\\.json}",
    ]);
    for name in ["settings", "web", "db"] {
        assert!(
            inv.contains(&format!("\"name\":\"{name}\"")),
            "{name} recorded before its creation: {inv}"
        );
    }
    // Nothing was created yet.
    assert!(
        Api::<Deployment>::namespaced(client.clone(), &f.ns())
            .get_opt("web")
            .await
            .map(|d| d.is_none())
            .unwrap_or(true)
    );
    // The aborted sync still holds the stack's lease until it expires: a plain sync is refused
    // naming it, `--wait-lease` waits for it.
    let refused = f.driftless(&["sync"]);
    assert!(
        text(&refused).contains("which holds its lease"),
        "{}",
        text(&refused)
    );
    // The next sync converges; a commit that removes an object then prunes it (it is tracked).
    expect_exit(&f.driftless(&["sync", "--wait-lease"]), 0, "recovery sync");
    assert!(
        Api::<Deployment>::namespaced(client.clone(), &f.ns())
            .get("web")
            .await
            .is_ok()
    );
    f.remove("stack/app/30-db.yaml");
    f.commit("drop db");
    expect_exit(&f.driftless(&["sync"]), 0, "prune after recovery");
    assert_eq!(
        kubectl(&["get", "statefulsets", "-n", &f.ns(), "-o", "name"]).trim(),
        ""
    );
}

#[tokio::test]
async fn secret_values_never_reach_output_or_logs() {
    const SENTINEL: &str = "s3ntinel-9f8e7d";
    let env = TestEnv::get();
    let client = env.kube_client().await;
    let f = Repo::git("t", LEASES);
    f.write(
        "stack/app/stack.yaml",
        &format!("{STACK}  secrets:\n  - name: db-credentials\n    fromFiles: {{password: db-password}}\n"),
    );
    f.write("stack/app/00-namespace.yaml", NAMESPACE);
    f.write("stack/app/git-secret.yaml", &format!("apiVersion: v1\nkind: Secret\nmetadata: {{name: from-git}}\nstringData: {{token: {SENTINEL}-git}}\n"));
    f.commit("secrets");
    std::fs::write(f.creds().join("db-password"), format!("{SENTINEL}-host")).unwrap();
    let mut outputs = Vec::new();
    for args in [
        vec!["diff"],
        vec!["diff", "-o", "json"],
        vec!["--log-level", "trace", "sync"],
        vec![
            "--log-format",
            "json",
            "--log-level",
            "trace",
            "diff",
            "-o",
            "json",
        ],
    ] {
        outputs.push(f.driftless(&args));
    }
    // The secret reached the cluster intact.
    let secret = Api::<Secret>::namespaced(client.clone(), &f.ns())
        .get("db-credentials")
        .await
        .expect("secret");
    assert_eq!(
        secret.data.unwrap()["password"].0,
        format!("{SENTINEL}-host").into_bytes()
    );
    // A changed value shows as changed, masked.
    std::fs::write(f.creds().join("db-password"), format!("{SENTINEL}-rotated")).unwrap();
    let changed = f.driftless(&["--log-level", "trace", "diff"]);
    expect_exit(&changed, 1, "rotated secret is a change");
    assert!(
        text(&changed).contains("+  password: \"*** (after, masked)\""),
        "{}",
        text(&changed)
    );
    outputs.push(changed);
    for o in &outputs {
        let all = text(o);
        assert!(!all.contains(SENTINEL), "sentinel leaked:\n{all}");
        // Nor its base64 forms.
        use base64::Engine;
        for v in ["-host", "-git", "-rotated"] {
            let b64 = base64::engine::general_purpose::STANDARD.encode(format!("{SENTINEL}{v}"));
            assert!(
                !all.contains(&b64[..16]),
                "base64 of the sentinel leaked:\n{all}"
            );
        }
    }
}

#[tokio::test]
async fn bad_input_exits_2_names_the_place_and_changes_nothing() {
    let env = TestEnv::get();
    let client = env.kube_client().await;
    let f = Repo::git("t", LEASES);
    base_stack(&f);
    f.commit("good");
    expect_exit(&f.driftless(&["sync", "--no-wait"]), 0, "good sync");
    let snapshot = || {
        kubectl(&[
            "get",
            "all,configmaps",
            "-n",
            &f.ns(),
            "-o",
            "jsonpath={range .items[*]}{.kind}/{.metadata.name}@{.metadata.resourceVersion} {end}",
        ])
    };
    let inventory = || {
        kubectl(&[
            "get",
            "configmap",
            &format!("inventory-s-{}", f.id),
            "-n",
            "driftless-system",
            "-o",
            "jsonpath={.metadata.resourceVersion}",
        ])
    };
    let (before, inv_before) = (snapshot(), inventory());

    let cm = |extra: &str| {
        format!("apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: extra}}\n{extra}")
    };
    let cases: Vec<(&str, &str, String, &str)> = vec![
        (
            "invalid YAML",
            "stack/app/50-bad.yaml",
            "a: [1, 2\n".into(),
            "stack/app/50-bad.yaml:",
        ),
        (
            "missing kind",
            "stack/app/50-bad.yaml",
            "apiVersion: v1\nmetadata: {name: x}\n".into(),
            "missing `kind`",
        ),
        (
            "missing name",
            "stack/app/50-bad.yaml",
            "apiVersion: v1\nkind: ConfigMap\nmetadata: {}\n".into(),
            "missing metadata.name",
        ),
        (
            "unknown kind",
            "stack/app/50-bad.yaml",
            "apiVersion: example.invalid/v1\nkind: Gizmo\nmetadata: {name: g}\n".into(),
            "unknown kind Gizmo",
        ),
        (
            "duplicate object",
            "stack/app/50-bad.yaml",
            CONFIGMAP.into(),
            "ConfigMap/ns-",
        ),
        (
            "undefined variable",
            "stack/app/50-bad.yaml",
            cm("data: {a: '${MISSING}'}\n"),
            "undefined variable ${MISSING}",
        ),
        (
            "missing host secret",
            "stack/app/stack.yaml",
            format!("{STACK}  secrets: [{{name: s, fromFiles: {{k: absent-file}}}}]\n"),
            "secret \"s\": spec.secrets[0].fromFiles.k: ",
        ),
        (
            "host secret outside the credentials directory",
            "stack/app/stack.yaml",
            format!("{STACK}  secrets: [{{name: s, fromFiles: {{k: /etc/hostname}}}}]\n"),
            "\"/etc/hostname\" must be a plain file name in the credentials directory",
        ),
        (
            "overlay targets nothing",
            "stack/app/stack.yaml",
            format!("{STACK}  profiles: {{p: {{overlays: [o]}}}}\n"),
            "",
        ),
        (
            "dependsOn cycle",
            "stack/app/stack.yaml",
            format!("{STACK}  dependsOn: [s-ID]\n"),
            "dependsOn cycle",
        ),
        (
            "unknown dependency",
            "stack/app/stack.yaml",
            format!("{STACK}  dependsOn: [nope]\n"),
            "unknown stack \"nope\"",
        ),
        (
            "path escapes",
            "stack/app/stack.yaml",
            format!("{STACK}  path: ../../..\n"),
            "outside the repository",
        ),
        (
            "symlink escapes",
            "stack/app/link.yaml",
            String::new(),
            "symlink leads outside the repository",
        ),
        (
            "oversized file",
            "stack/app/50-bad.yaml",
            cm(&format!("data: {{a: '{}'}}\n", "x".repeat(4_300_000))),
            "over the limit",
        ),
        (
            "empty render",
            "stack/app/00-namespace.yaml",
            String::new(),
            "renders no objects",
        ),
        (
            "not a mapping",
            "stack/app/50-bad.yaml",
            "- a\n- b\n".into(),
            "not a mapping",
        ),
        (
            "bad stack field",
            "stack/app/stack.yaml",
            STACK.replace("namespace:", "namespce:"),
            "stack/app/stack.yaml",
        ),
        (
            "invalid base64 secret",
            "stack/app/50-bad.yaml",
            "apiVersion: v1\nkind: Secret\nmetadata: {name: x}\ndata: {k: '!!'}\n".into(),
            "not valid base64",
        ),
    ];
    for (what, path, content, want) in cases {
        // Each case starts from the good tree.
        f.reset();
        match what {
            "symlink escapes" => {
                std::os::unix::fs::symlink("/etc/hostname", f.path().join(path)).unwrap()
            }
            "empty render" => {
                for p in [
                    "00-namespace.yaml",
                    "10-config.yaml",
                    "20-web.yaml",
                    "30-db.yaml",
                ] {
                    f.remove(&format!("stack/app/{p}"));
                }
            }
            "overlay targets nothing" => {
                f.write(path, &content);
                f.write("stack/app/o/patch.yaml", "apiVersion: driftless.dev/v1alpha1\nkind: Overlay\npatches: [{target: {kind: ConfigMap, name: typo}, merge: {data: {a: b}}}]\n");
            }
            _ => f.write(path, &content),
        }
        let tmp = tempfile::tempdir().unwrap();
        let config = tmp.path().join("c.yaml");
        // Read the work tree directly (a commit is not needed to prove the point).
        std::fs::write(
            &config,
            format!(
                "instance: {}\nsource: {{path: {}}}\nprofile: p\ncredentialsDir: {}\n",
                f.id,
                f.path().display(),
                f.creds().display()
            ),
        )
        .unwrap();
        for args in [&["sync", "--no-wait"][..], &["diff"][..]] {
            let out = driftless_with(&config, args, &[]);
            expect_exit(&out, 2, what);
            assert!(
                text(&out).contains(want),
                "{what}: {:?} not in\n{}",
                want,
                text(&out)
            );
        }
        assert_eq!(snapshot(), before, "{what}: cluster changed");
        assert_eq!(inventory(), inv_before, "{what}: inventory changed");
    }
    drop(client);
    // Sanity: the good tree still syncs with no changes.
    f.reset();
    expect_exit(&f.driftless(&["diff"]), 0, "good tree unchanged");
}

#[tokio::test]
async fn immutable_field_changes_fail_clearly_or_recreate_when_opted_in() {
    let env = TestEnv::get();
    let client = env.kube_client().await;
    let f = Repo::git("t", LEASES);
    let frozen = "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: frozen}\nimmutable: true\ndata: {v: '1'}\n";
    f.write("stack/app/stack.yaml", STACK);
    f.write("stack/app/00-namespace.yaml", NAMESPACE);
    f.write("stack/app/frozen.yaml", frozen);
    f.commit("immutable configmap");
    expect_exit(&f.driftless(&["sync"]), 0, "first sync");
    let uid = |cm: ConfigMap| cm.metadata.uid.unwrap();
    let first = uid(Api::<ConfigMap>::namespaced(client.clone(), &f.ns())
        .get("frozen")
        .await
        .unwrap());

    f.write("stack/app/frozen.yaml", &frozen.replace("v: '1'", "v: '2'"));
    f.commit("change immutable data");
    let out = f.driftless(&["sync"]);
    expect_exit(&out, 2, "immutable change without opt-in");
    assert!(
        text(&out).contains("ConfigMap/ns-") && text(&out).contains("driftless.dev/recreate"),
        "{}",
        text(&out)
    );

    f.write(
        "stack/app/frozen.yaml",
        &frozen.replace("v: '1'", "v: '2'").replace(
            "metadata: {name: frozen}",
            "metadata: {name: frozen, annotations: {driftless.dev/recreate: 'true'}}",
        ),
    );
    f.commit("opt in to recreation");
    let out = f.driftless(&["sync"]);
    expect_exit(&out, 0, "recreated");
    let cm = Api::<ConfigMap>::namespaced(client.clone(), &f.ns())
        .get("frozen")
        .await
        .unwrap();
    assert_eq!(cm.data.as_ref().unwrap()["v"], "2");
    assert_ne!(uid(cm), first, "a new object");
    expect_exit(&f.driftless(&["diff"]), 0, "converged");
}

/// A StatefulSet's claim templates cannot be updated (the API server says "Forbidden", not
/// "immutable"): driftless treats that as an immutable change, names the way out, and recreates
/// the StatefulSet when it opts in. No replicas: the environment's volumes are `Retain`, and a
/// claim made here would use one up.
#[tokio::test]
async fn a_statefulsets_claim_templates_change_is_an_immutable_change() {
    let env = TestEnv::get();
    let client = env.kube_client().await;
    let f = Repo::git("t", LEASES);
    let db = "apiVersion: apps/v1\nkind: StatefulSet\nmetadata: {name: db}\nspec:\n  replicas: 0\n  serviceName: db\n  selector: {matchLabels: {app: db}}\n  template:\n    metadata: {labels: {app: db}}\n    spec: {containers: [{name: db, image: postgres:16.4}]}\n";
    let claims = "  volumeClaimTemplates: [{metadata: {name: data}, spec: {accessModes: [ReadWriteOnce], resources: {requests: {storage: 1Gi}}}}]\n";
    f.write("stack/app/stack.yaml", STACK);
    f.write("stack/app/00-namespace.yaml", NAMESPACE);
    f.write("stack/app/db.yaml", db);
    f.commit("statefulset on no claims");
    expect_exit(&f.driftless(&["sync"]), 0, "first sync");
    let sts = || async {
        Api::<StatefulSet>::namespaced(client.clone(), &f.ns())
            .get("db")
            .await
            .unwrap()
    };
    let first = sts().await.metadata.uid.unwrap();

    f.write("stack/app/db.yaml", &format!("{db}{claims}"));
    f.commit("claim templates");
    let out = f.driftless(&["sync"]);
    expect_exit(&out, 2, "claim templates changed without opt-in");
    assert!(
        text(&out).contains("StatefulSet/ns-")
            && text(&out).contains("an immutable field changed")
            && text(&out).contains("driftless.dev/recreate"),
        "{}",
        text(&out)
    );
    assert_eq!(sts().await.metadata.uid.unwrap(), first, "not deleted");

    let opted = db.replace(
        "metadata: {name: db}",
        "metadata: {name: db, annotations: {driftless.dev/recreate: 'true'}}",
    );
    f.write("stack/app/db.yaml", &format!("{opted}{claims}"));
    f.commit("opt in to recreation");
    expect_exit(&f.driftless(&["sync"]), 0, "recreated");
    let now = sts().await;
    assert_ne!(now.metadata.uid.unwrap(), first, "a new StatefulSet");
    let templates = now.spec.unwrap().volume_claim_templates.unwrap_or_default();
    assert_eq!(templates.len(), 1, "with its claim template");
    expect_exit(&f.driftless(&["diff"]), 0, "converged");
}

/// A stack of many thousand objects: its inventory record no longer fits a ConfigMap as JSON
/// text (1 MiB); it is stored compressed and reads back the same, from the real API server.
#[tokio::test]
async fn a_large_inventory_is_stored_compressed_and_reads_back() {
    use driftless::cluster::inventory::{self, Entry, Inventory};
    use driftless::stack::ObjectKey;
    let client = TestEnv::get().kube_client().await;
    let stack = unique_name("inv");
    let mut inv = Inventory::new(&stack, "default");
    for i in 0..8000 {
        let key = ObjectKey {
            group: "apps".to_owned(),
            kind: "Deployment".to_owned(),
            namespace: Some(format!("team-{}", i / 100)),
            name: format!("service-{i}"),
        };
        let mut e = Entry::new(&key, "apps/v1");
        e.hash = Some(format!(
            "sha256:{:064x}",
            (i as u128) * 0x9E37_79B9_7F4A_7C15
        ));
        e.resource_version = Some((1_000_000 + i).to_string());
        e.generation = Some(1);
        inv.entries_mut().insert(key, e);
    }
    inventory::write(&client, &mut inv).await.expect("write");
    let back = inventory::read(&client, &stack).await.expect("read");
    assert_eq!(back.entries, inv.entries);
    // Shrinking it again switches back to plain JSON (the compressed key is removed).
    inv.entries = std::sync::Arc::new(
        inv.entries
            .iter()
            .take(10)
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
    );
    inventory::write(&client, &mut inv)
        .await
        .expect("write small");
    let cm = kubectl(&[
        "-n",
        "driftless-system",
        "get",
        "configmap",
        &format!("inventory-{stack}"),
        "-o",
        "jsonpath={.binaryData}|{.data.objects\\.json}",
    ]);
    assert!(cm.starts_with('|'), "no binaryData left: {cm}");
    assert_eq!(
        inventory::read(&client, &stack).await.unwrap().entries,
        inv.entries
    );
    inventory::delete(&client, &inv).await.unwrap();
}
