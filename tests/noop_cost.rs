//! A reconcile of an unchanged revision against an unchanged cluster makes no dry-run and no write
//! request, counted from the API server's own `apiserver_request_total`, also for kinds whose
//! controllers write status all the time. The tests of this binary run one after another
//! (`SERIAL`), and cargo runs test binaries one after another, so no other test of this run
//! writes meanwhile. The counter is server-wide, though, and other people's tests may share the
//! server: a measurement that sees requests is repeated (a reconcile that really makes them
//! makes them every time), and the resources counted strictly are ones no other test uses.

mod support;

use std::collections::BTreeMap;
use std::process::Command;
use std::time::Duration;

use k8s_openapi::api::core::v1::ConfigMap;
use kube::Api;
use serde_json::Value;
use support::{Repo, TestEnv, driftless, kubectl, run_ok, text, unique_name};

/// One test of this binary at a time: the request counters are shared.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Write requests (dry-run or not) to the resources the stack manages, excluding status
/// subresources (controllers write those).
async fn writes(client: &kube::Client) -> (u64, u64) {
    let mut writes = 0.0;
    let mut dry_runs = 0.0;
    for sample in support::apiserver_requests(client).await {
        let managed = [
            "configmaps",
            "secrets",
            "deployments",
            "services",
            "namespaces",
        ]
        .contains(&sample.label("resource"));
        let write = [
            "POST",
            "PUT",
            "PATCH",
            "APPLY",
            "DELETE",
            "DELETECOLLECTION",
        ]
        .contains(&sample.label("verb"));
        if !managed || !write || !sample.label("subresource").is_empty() {
            continue;
        }
        if sample.label("dry_run").is_empty() {
            writes += sample.value;
        } else {
            dry_runs += sample.value;
        }
    }
    (writes as u64, dry_runs as u64)
}

#[tokio::test]
async fn repeated_reconciles_of_an_unchanged_revision_make_no_dry_run_or_write() {
    let _serial = SERIAL.lock().await;
    let env = TestEnv::get();
    let client = env.kube_client().await;
    let id = unique_name("n");
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().join("repo");
    let app = repo.join("stack/app");
    std::fs::create_dir_all(&app).unwrap();
    std::fs::write(
        app.join("stack.yaml"),
        format!("apiVersion: driftless.dev/v1alpha1\nkind: Stack\nmetadata: {{name: s-{id}}}\nspec:\n  namespace: ns-{id}\n  secrets: [{{name: creds, fromFiles: {{password: pw}}}}]\n"),
    )
    .unwrap();
    std::fs::write(
        app.join("objects.yaml"),
        format!(
            "apiVersion: v1\nkind: Namespace\nmetadata: {{name: ns-{id}}}\n---\n\
             apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: c, labels: {{tier: web}}, annotations: {{note: x}}}}\ndata: {{a: '1'}}\n---\n\
             apiVersion: v1\nkind: Service\nmetadata: {{name: web}}\nspec: {{selector: {{app: web}}, ports: [{{port: 80}}]}}\n---\n\
             apiVersion: apps/v1\nkind: Deployment\nmetadata: {{name: web}}\nspec:\n  replicas: 2\n  selector: {{matchLabels: {{app: web}}}}\n  template:\n    metadata: {{labels: {{app: web}}}}\n    spec: {{containers: [{{name: web, image: registry.invalid/web:1}}]}}\n"
        ),
    )
    .unwrap();
    let creds = dir.path().join("creds");
    std::fs::create_dir(&creds).unwrap();
    std::fs::write(creds.join("pw"), "noop-cost-password").unwrap();
    let config = dir.path().join("driftless.yaml");
    std::fs::write(
        &config,
        format!(
            "instance: {id}\nsource: {{path: {}}}\ncredentialsDir: {}\nstateDir: {}\n",
            repo.display(),
            creds.display(),
            dir.path().join("state").display()
        ),
    )
    .unwrap();
    let sync = || {
        run_ok(
            Command::new(env!("CARGO_BIN_EXE_driftless"))
                .arg("--config")
                .arg(&config)
                .arg("sync")
                .env("KUBECONFIG", env.var("KUBECONFIG"))
                .env_remove("CREDENTIALS_DIRECTORY"),
        )
    };
    let first = sync();
    assert!(first.contains("5 to create"), "{first}");
    // Reconciles of the unchanged revision, counted one at a time until one is seen alone (see
    // the module's comment: other people's tests may write to these kinds meanwhile); a
    // reconcile that writes or dry-runs does so every time.
    let mut seen = Vec::new();
    let mut after = (0, 0);
    for _ in 0..8 {
        let before = writes(&client).await;
        let out = sync();
        assert!(
            out.contains("0 to create, 0 to update, 0 to prune, 5 unchanged"),
            "{out}"
        );
        after = writes(&client).await;
        seen.push((after.0 - before.0, after.1 - before.1));
        if seen.last() == Some(&(0, 0)) {
            break;
        }
    }
    assert_eq!(
        seen.last(),
        Some(&(0, 0)),
        "(writes, dry-runs) during each no-op reconcile: {seen:?}"
    );
    // The counter is real: a change makes both a dry-run and a write.
    std::fs::write(creds.join("pw"), "rotated").unwrap();
    let out = sync();
    assert!(out.contains("1 to update"), "{out}");
    let changed = writes(&client).await;
    assert!(
        changed.0 > after.0 && changed.1 > after.1,
        "{after:?} -> {changed:?}"
    );

    // Changes behind driftless's back, the revision unchanged: a deleted object, an edited one,
    // and one whose stack label was removed (so the label-selected LIST misses it) are all
    // found by `diff` and corrected by `sync`.
    let ns = format!("ns-{id}");
    run_ok(Command::new(env.var("KUBECTL")).args([
        "--kubeconfig",
        env.var("KUBECONFIG"),
        "-n",
        &ns,
        "delete",
        "configmap",
        "c",
    ]));
    run_ok(Command::new(env.var("KUBECTL")).args([
        "--kubeconfig",
        env.var("KUBECONFIG"),
        "-n",
        &ns,
        "scale",
        "deployment",
        "web",
        "--replicas=5",
    ]));
    run_ok(Command::new(env.var("KUBECTL")).args([
        "--kubeconfig",
        env.var("KUBECONFIG"),
        "-n",
        &ns,
        "label",
        "service",
        "web",
        "driftless.dev/stack-",
    ]));
    let diff = Command::new(env!("CARGO_BIN_EXE_driftless"))
        .arg("--config")
        .arg(&config)
        .arg("diff")
        .env("KUBECONFIG", env.var("KUBECONFIG"))
        .env_remove("CREDENTIALS_DIRECTORY")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&diff.stdout);
    assert_eq!(diff.status.code(), Some(1), "diff finds changes: {text}");
    assert!(text.contains("1 to create, 2 to update"), "{text}");
    let out = sync();
    assert!(out.contains("1 to create, 2 to update"), "{out}");
    let out = sync();
    assert!(
        out.contains("0 to create, 0 to update, 0 to prune, 5 unchanged"),
        "{out}"
    );
    // Its pods leave the shared nodes (a failed test leaves them for inspection).
    kubectl(&["delete", "namespace", &ns, "--wait=false"]);
    kubectl(&[
        "-n",
        "driftless-system",
        "delete",
        "configmap",
        &format!("inventory-s-{id}"),
    ]);
}

/// Kinds whose controllers write status. No other test uses the first two: their dry-run counts
/// are exact; Deployments' may include other tests' on a shared server.
const CHURNING: [&str; 3] = ["horizontalpodautoscalers", "resourcequotas", "deployments"];

/// Dry-run requests (status subresources excluded) to each of `CHURNING`, server-wide.
async fn dry_runs(client: &kube::Client) -> BTreeMap<&'static str, u64> {
    let mut out: BTreeMap<&'static str, u64> = CHURNING.iter().map(|r| (*r, 0)).collect();
    for sample in support::apiserver_requests(client).await {
        if sample.label("dry_run").is_empty() || !sample.label("subresource").is_empty() {
            continue;
        }
        if let Some(n) = out.get_mut(sample.label("resource")) {
            *n += sample.value as u64;
        }
    }
    out
}

/// A stack of a Deployment scaled by its controller, an HPA and a ResourceQuota (each with a
/// label and an annotation of its own), in namespace `ns`.
struct Churn {
    repo: Repo,
    ns: String,
    stack: String,
}

impl Churn {
    fn new() -> Churn {
        let repo = Repo::new("churn", "");
        repo.write(
            "stack/app/stack.yaml",
            "apiVersion: driftless.dev/v1alpha1\nkind: Stack\nmetadata: {name: s-ID}\nspec: {namespace: ns-ID}\n",
        );
        repo.write(
            "stack/app/objects.yaml",
            "apiVersion: v1\nkind: Namespace\nmetadata: {name: ns-ID}\n---\n\
             apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: web, labels: {tier: web}, annotations: {note: x}}\n\
             spec:\n  replicas: 1\n  selector: {matchLabels: {app: web}}\n  template:\n    metadata: {labels: {app: web}}\n    spec: {containers: [{name: web, image: registry.invalid/web:1}]}\n---\n\
             apiVersion: autoscaling/v2\nkind: HorizontalPodAutoscaler\nmetadata: {name: web, labels: {tier: web}, annotations: {note: x}}\n\
             spec:\n  scaleTargetRef: {apiVersion: apps/v1, kind: Deployment, name: web}\n  minReplicas: 1\n  maxReplicas: 3\n  \
             metrics: [{type: Resource, resource: {name: cpu, target: {type: Utilization, averageUtilization: 50}}}]\n---\n\
             apiVersion: v1\nkind: ResourceQuota\nmetadata: {name: q, labels: {tier: web}, annotations: {note: x}}\n\
             spec: {hard: {pods: '10', configmaps: '10'}}\n",
        );
        Churn {
            ns: format!("ns-{}", repo.id),
            stack: format!("s-{}", repo.id),
            repo,
        }
    }

    fn run(&self, args: &[&str]) -> (Option<i32>, String) {
        let out = driftless(&self.repo.config, args);
        (out.status.code(), text(&out))
    }

    /// `diff`, and the dry-runs it made to each of `CHURNING`.
    async fn diff(&self, client: &kube::Client) -> (Option<i32>, String, BTreeMap<&str, u64>) {
        let before = dry_runs(client).await;
        let (code, out) = self.run(&["diff"]);
        // Counters move when a request finishes: the last one has, the process has exited.
        let after = dry_runs(client).await;
        let made = after.iter().map(|(r, n)| (*r, n - before[r])).collect();
        (code, out, made)
    }

    /// `diff` finds nothing and dry-runs nothing (Deployments: measured again if another test's
    /// dry-runs may have been counted).
    async fn unchanged_without_dry_runs(&self, client: &kube::Client, what: &str) {
        let mut deployments = Vec::new();
        for _ in 0..3 {
            let (code, out, made) = self.diff(client).await;
            assert_eq!(code, Some(0), "{what}: {out}");
            assert!(
                out.contains("0 to create, 0 to update, 0 to prune, 4 unchanged"),
                "{what}: {out}"
            );
            assert_eq!(made["horizontalpodautoscalers"], 0, "{what}: HPA dry-runs");
            assert_eq!(made["resourcequotas"], 0, "{what}: ResourceQuota dry-runs");
            deployments.push(made["deployments"]);
            if made["deployments"] == 0 {
                return;
            }
        }
        panic!("{what}: Deployment dry-runs in each of 3 diffs: {deployments:?}");
    }

    fn get(&self, what: &str) -> Value {
        serde_json::from_str(&kubectl(&["-n", &self.ns, "get", what, "-o", "json"]))
            .expect("kubectl JSON")
    }

    /// The record's entries, by kind.
    async fn record(&self, client: &kube::Client) -> BTreeMap<String, Value> {
        let api: Api<ConfigMap> = Api::namespaced(client.clone(), "driftless-system");
        let cm = api
            .get(&format!("inventory-{}", self.stack))
            .await
            .expect("inventory");
        let record: Value =
            serde_json::from_str(&cm.data.expect("data")["objects.json"]).expect("record JSON");
        record["objects"]
            .as_array()
            .expect("objects")
            .iter()
            .map(|e| (e["kind"].as_str().unwrap_or_default().to_owned(), e.clone()))
            .collect()
    }
}

#[tokio::test]
async fn status_writes_cost_no_dry_run_and_foreign_edits_are_still_found() {
    let _serial = SERIAL.lock().await;
    let client = TestEnv::get().kube_client().await;
    let c = Churn::new();
    let (code, out) = c.run(&["sync"]);
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("4 to create"), "{out}");
    let ns = c.ns.as_str();

    // The controllers write status after the apply, and again between runs: a ConfigMap
    // created in the namespace (quota usage), the Deployment's pod replaced.
    support::eventually("the HPA's status", Duration::from_secs(90), || async {
        c.get("hpa/web")["status"]["conditions"]
            .as_array()
            .is_some_and(|c| !c.is_empty())
            .then_some(())
    })
    .await;
    let pod = c.get("pods")["items"][0]["metadata"]["name"]
        .as_str()
        .expect("the Deployment's pod")
        .to_owned();
    kubectl(&["-n", ns, "create", "configmap", "extra"]);
    kubectl(&["-n", ns, "delete", "pod", &pod, "--wait=false"]);
    support::eventually("status rewritten", Duration::from_secs(60), || async {
        let quota = c.get("resourcequota/q");
        let pods = c.get("pods");
        let replaced = pods["items"].as_array().is_some_and(|p| {
            p.iter()
                .any(|p| p["metadata"]["name"] != pod.as_str() && p["status"]["phase"] == "Running")
        });
        let available = c.get("deployment/web")["status"]["availableReplicas"] == 1;
        (quota["status"]["used"]["configmaps"] == "2" && replaced && available).then_some(())
    })
    .await;
    let record = c.record(&client).await;
    for (kind, what) in [
        ("HorizontalPodAutoscaler", "hpa/web"),
        ("ResourceQuota", "resourcequota/q"),
        ("Deployment", "deployment/web"),
    ] {
        assert_ne!(
            c.get(what)["metadata"]["resourceVersion"],
            record[kind]["resourceVersion"],
            "{kind}: status writes moved its resourceVersion since the apply"
        );
        assert!(
            record[kind]["signature"].is_string(),
            "{kind}: signature recorded: {}",
            record[kind]
        );
    }
    c.unchanged_without_dry_runs(&client, "status churn only")
        .await;

    // Foreign edits, each to all three: found by `diff` (one dry-run each), reverted by `sync`,
    // and no dry-run after that.
    for (what, edits, checks) in support::churn::foreign_edits() {
        for edit in &edits {
            let mut args = vec!["-n", ns];
            args.extend(edit);
            kubectl(&args);
        }
        for (object, pointer, _) in &checks {
            let value = c.get(object).pointer(pointer).cloned();
            assert!(
                value.is_some(),
                "{what}: {object} {pointer} exists after the edit"
            );
        }
        let (code, out, made) = c.diff(&client).await;
        assert_eq!(code, Some(1), "{what}: diff finds the edits: {out}");
        assert!(out.contains("0 to create, 3 to update"), "{what}: {out}");
        // One dry-run each, two when it conflicts with the editor's field (tried again with force).
        assert!(
            (1..=2).contains(&made["horizontalpodautoscalers"])
                && (1..=2).contains(&made["resourcequotas"])
                && made["deployments"] >= 1,
            "{what}: {made:?}"
        );
        let (code, out) = c.run(&["sync"]);
        assert_eq!(code, Some(0), "{what}: {out}");
        assert!(out.contains("0 to create, 3 to update"), "{what}: {out}");
        for (object, pointer, want) in &checks {
            let got = c
                .get(object)
                .pointer(pointer)
                .cloned()
                .unwrap_or(Value::Null);
            assert_eq!(
                got.to_string(),
                *want,
                "{what}: {object} {pointer} reverted"
            );
        }
        c.unchanged_without_dry_runs(&client, &format!("after the {what} edits were reverted"))
            .await;
    }

    // An annotation driftless does not declare, added by another tool: not a change (the dry-run
    // it costs finds none), kept, and after one sync no dry-run again.
    kubectl(&["-n", ns, "annotate", "hpa/web", "other-tool/seen=yes"]);
    let (code, out, made) = c.diff(&client).await;
    assert_eq!(code, Some(0), "{out}");
    assert_eq!(made["horizontalpodautoscalers"], 1, "{made:?}");
    let (code, out) = c.run(&["sync"]);
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("4 unchanged"), "{out}");
    assert_eq!(
        c.get("hpa/web")["metadata"]["annotations"]["other-tool/seen"],
        "yes"
    );
    c.unchanged_without_dry_runs(&client, "after another tool's annotation")
        .await;

    // A record written by an older version (no signatures): compared by resourceVersion as that
    // version did — never taken as unchanged for want of a signature —, then renewed by a sync.
    kubectl(&["-n", ns, "create", "configmap", "extra-2"]);
    support::eventually("quota usage rewritten", Duration::from_secs(30), || async {
        (c.get("resourcequota/q")["status"]["used"]["configmaps"] == "3").then_some(())
    })
    .await;
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), "driftless-system");
    let name = format!("inventory-{}", c.stack);
    let mut cm = api.get(&name).await.expect("inventory");
    let mut record: Value =
        serde_json::from_str(&cm.data.as_ref().expect("data")["objects.json"]).expect("JSON");
    for e in record["objects"].as_array_mut().expect("objects") {
        e.as_object_mut().expect("entry").remove("signature");
    }
    let old = c.record(&client).await;
    cm.data
        .as_mut()
        .expect("data")
        .insert("objects.json".to_owned(), record.to_string());
    api.replace(&name, &Default::default(), &cm)
        .await
        .expect("write the old-style record");
    let hpa_moved = c.get("hpa/web")["metadata"]["resourceVersion"]
        != old["HorizontalPodAutoscaler"]["resourceVersion"];
    let deployment_moved = c.get("deployment/web")["metadata"]["resourceVersion"]
        != old["Deployment"]["resourceVersion"];
    let (code, out, made) = c.diff(&client).await;
    assert_eq!(code, Some(0), "{out}");
    assert_eq!(made["resourcequotas"], 1, "{made:?}");
    assert_eq!(
        made["horizontalpodautoscalers"],
        u64::from(hpa_moved),
        "{made:?}"
    );
    let (code, out) = c.run(&["sync"]);
    assert_eq!(code, Some(0), "{out}");
    // Renewed: the ResourceQuota (its dry-run confirmed it), and the objects whose
    // resourceVersion is still the recorded one. A Deployment whose status moved it stays
    // compared by its generation (which status writes do not move) until it is applied or
    // dry-run again.
    let renewed = c.record(&client).await;
    for (kind, moved) in [
        ("Namespace", false),
        ("HorizontalPodAutoscaler", false),
        ("ResourceQuota", false),
        ("Deployment", deployment_moved),
    ] {
        assert_eq!(
            renewed[kind]["signature"].is_string(),
            !moved,
            "{kind}: {}",
            renewed[kind]
        );
    }
    c.unchanged_without_dry_runs(&client, "after the old record was renewed")
        .await;
    // Its pod leaves the shared nodes (a failed test leaves it for inspection).
    kubectl(&["delete", "namespace", ns, "--wait=false"]);
    kubectl(&[
        "-n",
        "driftless-system",
        "delete",
        "configmap",
        &format!("inventory-{}", c.stack),
    ]);
}
