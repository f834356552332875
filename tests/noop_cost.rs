//! A reconcile of an unchanged revision against an unchanged cluster makes no dry-run and no write
//! request, counted from the API server's own `apiserver_request_total`. One test in its own
//! binary: cargo runs test binaries one after another, so no other test writes meanwhile.

mod support;

use std::process::Command;

use support::{TestEnv, run_ok, unique_name};

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
    let before = writes(&client).await;
    for _ in 0..3 {
        let out = sync();
        assert!(
            out.contains("0 to create, 0 to update, 0 to prune, 5 unchanged"),
            "{out}"
        );
    }
    let after = writes(&client).await;
    assert_eq!(
        after.0 - before.0,
        0,
        "write requests during 3 no-op reconciles"
    );
    assert_eq!(
        after.1 - before.1,
        0,
        "dry-run requests during 3 no-op reconciles"
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
}
