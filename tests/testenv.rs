//! Smoke tests that prove each server of the test environment is real and behaves as the later
//! integration tests expect: workloads roll out on KWOK nodes, CRDs become Established, the
//! registry stores and deletes manifests, MinIO keeps bytes, PostgreSQL dumps and restores.

mod support;

use std::time::Duration;

use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, StatefulSet};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{ApiResource, DynamicObject, GroupVersionKind, ListParams, Patch, PatchParams};
use kube::{Api, ResourceExt};
use serde::de::DeserializeOwned;
use serde_json::json;
use sha2::{Digest, Sha256};
use support::registry::{push_blob, sha256_digest};
use support::{TestEnv, eventually, run_ok, unique_name};

const ROLLOUT: Duration = Duration::from_secs(60);

fn object<T: DeserializeOwned>(value: serde_json::Value) -> T {
    serde_json::from_value(value).expect("test object")
}

fn pod_template(app: &str) -> serde_json::Value {
    json!({
        "metadata": {"labels": {"app": app}},
        "spec": {
            "containers": [{"name": "main", "image": "registry.invalid/smoke:1"}],
            "nodeSelector": {"type": "kwok"},
            "tolerations": [{"key": "kwok.x-k8s.io/node", "operator": "Exists", "effect": "NoSchedule"}]
        }
    })
}

/// Pods of `app` in `ns` that run on KWOK nodes.
async fn running_pods_on_kwok(pods: &Api<Pod>, app: &str) -> Vec<Pod> {
    pods.list(&ListParams::default().labels(&format!("app={app}")))
        .await
        .expect("list pods")
        .items
        .into_iter()
        .filter(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running"))
        .filter(|p| {
            p.spec
                .as_ref()
                .and_then(|s| s.node_name.as_deref())
                .is_some_and(|n| n.starts_with("kwok-node-"))
        })
        .collect()
}

#[tokio::test]
async fn deployment_applied_with_ssa_becomes_available_on_kwok_nodes() {
    let env = TestEnv::get();
    let ns = env.namespace("smoke-deploy").await;
    let deployments: Api<Deployment> = Api::namespaced(ns.client(), &ns.name);
    let deploy: Deployment = object(json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "web"},
        "spec": {"replicas": 3, "selector": {"matchLabels": {"app": "web"}}, "template": pod_template("web")}
    }));
    let applied = deployments
        .patch(
            "web",
            &PatchParams::apply("driftless").force(),
            &Patch::Apply(&deploy),
        )
        .await
        .expect("server-side apply");
    let managers: Vec<_> = applied
        .managed_fields()
        .iter()
        .filter_map(|m| m.manager.clone())
        .collect();
    assert!(
        managers.contains(&"driftless".to_owned()),
        "field manager recorded: {managers:?}"
    );

    eventually(
        "deployment web Available with 3 ready replicas",
        ROLLOUT,
        || async {
            let d = deployments.get("web").await.ok()?;
            let status = d.status?;
            let available = status
                .conditions?
                .iter()
                .any(|c| c.type_ == "Available" && c.status == "True");
            (available && status.ready_replicas == Some(3)).then_some(())
        },
    )
    .await;
    let pods: Api<Pod> = Api::namespaced(ns.client(), &ns.name);
    assert_eq!(running_pods_on_kwok(&pods, "web").await.len(), 3);
}

#[tokio::test]
async fn statefulset_daemonset_and_job_roll_out() {
    let env = TestEnv::get();
    let ns = env.namespace("smoke-workloads").await;
    let pp = PatchParams::apply("driftless").force();

    let sts: StatefulSet = object(json!({
        "apiVersion": "apps/v1", "kind": "StatefulSet",
        "metadata": {"name": "db"},
        "spec": {"replicas": 2, "serviceName": "db", "selector": {"matchLabels": {"app": "db"}}, "template": pod_template("db")}
    }));
    let ds: DaemonSet = object(json!({
        "apiVersion": "apps/v1", "kind": "DaemonSet",
        "metadata": {"name": "agent"},
        "spec": {"selector": {"matchLabels": {"app": "agent"}}, "template": pod_template("agent")}
    }));
    let mut job_template = pod_template("batch");
    job_template["spec"]["restartPolicy"] = json!("Never");
    let job: Job = object(json!({
        "apiVersion": "batch/v1", "kind": "Job",
        "metadata": {"name": "once"},
        "spec": {"template": job_template}
    }));
    let statefulsets: Api<StatefulSet> = Api::namespaced(ns.client(), &ns.name);
    let daemonsets: Api<DaemonSet> = Api::namespaced(ns.client(), &ns.name);
    let jobs: Api<Job> = Api::namespaced(ns.client(), &ns.name);
    statefulsets
        .patch("db", &pp, &Patch::Apply(&sts))
        .await
        .expect("apply statefulset");
    daemonsets
        .patch("agent", &pp, &Patch::Apply(&ds))
        .await
        .expect("apply daemonset");
    jobs.patch("once", &pp, &Patch::Apply(&job))
        .await
        .expect("apply job");

    eventually("statefulset db 2/2 ready", ROLLOUT, || async {
        let s = statefulsets.get("db").await.ok()?.status?;
        (s.ready_replicas == Some(2) && s.updated_replicas == Some(2)).then_some(())
    })
    .await;
    let nodes: i32 = TestEnv::get()
        .var("KWOK_NODES")
        .parse()
        .expect("KWOK_NODES");
    eventually("daemonset agent on every kwok node", ROLLOUT, || async {
        let s = daemonsets.get("agent").await.ok()?.status?;
        (s.desired_number_scheduled == nodes && s.number_ready == nodes).then_some(())
    })
    .await;
    eventually("job once complete", ROLLOUT, || async {
        let s = jobs.get("once").await.ok()?.status?;
        (s.succeeded == Some(1)).then_some(())
    })
    .await;
    let pods: Api<Pod> = Api::namespaced(ns.client(), &ns.name);
    assert_eq!(
        running_pods_on_kwok(&pods, "agent").await.len(),
        nodes as usize
    );
}

#[tokio::test]
async fn crd_becomes_established_and_accepts_a_custom_resource() {
    let env = TestEnv::get();
    let ns = env.namespace("smoke-crd").await;
    let client = ns.client();
    // A group unique to this test run: CRDs are cluster-scoped.
    let group = format!("{}.smoke.driftless.dev", unique_name("g"));
    let crd_name = format!("widgets.{group}");
    let crd: CustomResourceDefinition = object(json!({
        "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
        "metadata": {"name": crd_name},
        "spec": {
            "group": group, "scope": "Namespaced",
            "names": {"plural": "widgets", "singular": "widget", "kind": "Widget"},
            "versions": [{"name": "v1", "served": true, "storage": true,
                "schema": {"openAPIV3Schema": {"type": "object", "properties": {
                    "spec": {"type": "object", "properties": {"size": {"type": "integer"}}}}}}}]
        }
    }));
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    crds.patch(
        &crd_name,
        &PatchParams::apply("driftless"),
        &Patch::Apply(&crd),
    )
    .await
    .expect("apply CRD");
    eventually("CRD Established", ROLLOUT, || async {
        let c = crds.get(&crd_name).await.ok()?;
        c.status?
            .conditions?
            .iter()
            .any(|c| c.type_ == "Established" && c.status == "True")
            .then_some(())
    })
    .await;

    let ar = ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk(&group, "v1", "Widget"),
        "widgets",
    );
    let widgets: Api<DynamicObject> = Api::namespaced_with(client.clone(), &ns.name, &ar);
    let widget = DynamicObject::new("w1", &ar).data(json!({"spec": {"size": 3}}));
    // Discovery of a fresh CRD can lag its Established condition by a moment.
    eventually("custom resource accepted", ROLLOUT, || async {
        widgets
            .patch(
                "w1",
                &PatchParams::apply("driftless"),
                &Patch::Apply(&widget),
            )
            .await
            .ok()
    })
    .await;
    let back = widgets.get("w1").await.expect("read custom resource");
    assert_eq!(back.data["spec"]["size"], json!(3));
    crds.delete(&crd_name, &Default::default())
        .await
        .expect("delete CRD");
}

/// The second control plane (targets tests): its own API server and etcd, its KWOK nodes ready,
/// and what is written there absent from the first cluster.
#[tokio::test]
async fn the_second_control_plane_is_a_cluster_of_its_own() {
    let env = TestEnv::get();
    let (a, b) = (env.kube_client().await, env.kube_client_b().await);
    assert_ne!(env.var("KUBE_APISERVER"), env.var("KUBE_APISERVER_B"));
    let nodes: Api<k8s_openapi::api::core::v1::Node> = Api::all(b.clone());
    let want: usize = env.var("KWOK_NODES_B").parse().expect("KWOK_NODES_B");
    eventually(
        "the second cluster's KWOK nodes are ready",
        ROLLOUT,
        || async {
            let ready = nodes
                .list(&ListParams::default().labels("type=kwok"))
                .await
                .ok()?
                .items
                .iter()
                .filter(|n| {
                    n.status
                        .as_ref()
                        .and_then(|s| s.conditions.as_ref())
                        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
                })
                .count();
            (ready >= want).then_some(())
        },
    )
    .await;
    let name = unique_name("only-b");
    let cms = |c: &kube::Client| -> Api<k8s_openapi::api::core::v1::ConfigMap> {
        Api::namespaced(c.clone(), "default")
    };
    cms(&b)
        .create(
            &Default::default(),
            &object(json!({"metadata": {"name": name}, "data": {"k": "v"}})),
        )
        .await
        .expect("create on B");
    assert!(cms(&a).get_opt(&name).await.expect("read A").is_none());
    cms(&b)
        .delete(&name, &Default::default())
        .await
        .expect("delete on B");
    assert!(env.apiserver_b_pid() > 1);
}

#[tokio::test]
async fn registry_stores_reads_back_and_deletes_a_manifest() {
    let env = TestEnv::get();
    let base = env.registry_url();
    let http = reqwest::Client::new();
    let repo = format!("smoke/{}", unique_name("app"));

    let config = serde_json::to_vec(&json!({
        "architecture": "amd64", "os": "linux", "created": "2026-01-02T03:04:05Z",
        "rootfs": {"type": "layers", "diff_ids": []}, "config": {}
    }))
    .expect("config json");
    let layer = b"not really a tarball, but the registry stores bytes".to_vec();
    let config_digest = push_blob(&http, base, &repo, &config).await;
    let layer_digest = push_blob(&http, base, &repo, &layer).await;
    const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_digest, "size": config.len()},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": layer_digest, "size": layer.len()}]
    }))
    .expect("manifest json");
    let manifest_digest = sha256_digest(&manifest);

    let resp = http
        .put(format!("{base}/v2/{repo}/manifests/v1"))
        .header("content-type", OCI_MANIFEST)
        .body(manifest.clone())
        .send()
        .await
        .expect("put manifest");
    assert_eq!(resp.status(), reqwest::StatusCode::CREATED);
    assert_eq!(
        resp.headers()["docker-content-digest"].to_str().unwrap(),
        manifest_digest
    );

    let resp = http
        .get(format!("{base}/v2/{repo}/manifests/v1"))
        .header("accept", OCI_MANIFEST)
        .send()
        .await
        .expect("get manifest");
    assert_eq!(resp.status(), reqwest::StatusCode::OK);
    assert_eq!(
        resp.headers()["docker-content-digest"].to_str().unwrap(),
        manifest_digest
    );
    assert_eq!(
        resp.bytes().await.expect("manifest body").as_ref(),
        manifest.as_slice()
    );

    let tags: serde_json::Value = http
        .get(format!("{base}/v2/{repo}/tags/list"))
        .send()
        .await
        .expect("tags")
        .json()
        .await
        .expect("tags json");
    assert_eq!(tags["tags"], json!(["v1"]));

    let resp = http
        .delete(format!("{base}/v2/{repo}/manifests/{manifest_digest}"))
        .send()
        .await
        .expect("delete manifest");
    assert_eq!(
        resp.status(),
        reqwest::StatusCode::ACCEPTED,
        "deletes are enabled"
    );
    let resp = http
        .get(format!("{base}/v2/{repo}/manifests/{manifest_digest}"))
        .header("accept", OCI_MANIFEST)
        .send()
        .await
        .expect("get deleted manifest");
    assert_eq!(resp.status(), reqwest::StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn minio_returns_the_bytes_it_was_given() {
    use object_store::{ObjectStore, ObjectStoreExt, PutPayload, aws::AmazonS3Builder, path::Path};

    let env = TestEnv::get();
    let bucket = env.bucket("smoke").await;
    let store = AmazonS3Builder::new()
        .with_endpoint(env.var("MINIO_ENDPOINT"))
        .with_allow_http(true)
        .with_region("us-east-1")
        .with_bucket_name(&bucket)
        .with_access_key_id(env.var("MINIO_ACCESS_KEY"))
        .with_secret_access_key(env.var("MINIO_SECRET_KEY"))
        .build()
        .expect("s3 client");
    // 3 MiB of pseudo-random bytes: not compressible, large enough to be more than one read.
    let data: Vec<u8> = (0..3 * 1024 * 1024u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let path = Path::from("smoke/object.bin");
    store
        .put(&path, PutPayload::from(data.clone()))
        .await
        .expect("put object");
    let back = store
        .get(&path)
        .await
        .expect("get object")
        .bytes()
        .await
        .expect("read object");
    assert_eq!(back.len(), data.len());
    assert_eq!(Sha256::digest(&back), Sha256::digest(&data));
    let listed: Vec<_> = {
        use futures::TryStreamExt;
        store.list(None).try_collect().await.expect("list")
    };
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].location, path);
}

#[tokio::test]
async fn postgres_table_dumps_with_pg_dump_and_restores() {
    let env = TestEnv::get();
    let db = env.database("smoke");
    run_ok(
        env.pg_command("psql")
            .args(["-d", &db, "-v", "ON_ERROR_STOP=1", "-c"])
            .arg(
                "CREATE TABLE catalog (id int PRIMARY KEY, name text); \
         INSERT INTO catalog SELECT g, 'row ' || g FROM generate_series(1, 500) g;",
            ),
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let dump = dir.path().join("smoke.dump");
    run_ok(
        env.pg_command("pg_dump")
            .args(["-Fc", "-d", &db, "-f"])
            .arg(&dump),
    );
    // pg_restore -f /dev/null reads every block of the archive.
    run_ok(
        env.pg_command("pg_restore")
            .args(["-f", "/dev/null"])
            .arg(&dump),
    );
    let listing = run_ok(env.pg_command("pg_restore").arg("--list").arg(&dump));
    assert!(
        listing.contains("TABLE public catalog"),
        "dump lists the table:\n{listing}"
    );

    let restored = env.database("smoke-restored");
    run_ok(
        env.pg_command("pg_restore")
            .args(["--no-owner", "-d", &restored])
            .arg(&dump),
    );
    let count = run_ok(env.pg_command("psql").args([
        "-d",
        &restored,
        "-tAc",
        "SELECT count(*), max(name) FROM catalog",
    ]));
    assert_eq!(count.trim(), "500|row 99");
}

/// A pod on a KWOK node whose port-forwards reach the environment's PostgreSQL and whose execs
/// run locally (KWOK's ClusterPortForward / ClusterExec written by `testenv up`).
async fn probe_pod(ns: &support::TestNamespace) -> Api<Pod> {
    let pods: Api<Pod> = Api::namespaced(ns.client(), &ns.name);
    let pod: Pod = object(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "db", "labels": {"app": "db"}},
        "spec": {"nodeSelector": {"type": "kwok"},
            "containers": [{"name": "postgres", "image": "registry.invalid/postgres:16", "ports": [{"containerPort": 5432}]}]}
    }));
    pods.patch(
        "db",
        &PatchParams::apply("driftless-test"),
        &Patch::Apply(&pod),
    )
    .await
    .expect("create pod");
    eventually("pod db running", ROLLOUT, || async {
        (running_pods_on_kwok(&pods, "db").await.len() == 1).then_some(())
    })
    .await;
    pods
}

#[tokio::test]
async fn port_forward_through_the_api_server_reaches_postgres() {
    let env = TestEnv::get();
    let ns = env.namespace("smoke-pf").await;
    let pods = probe_pod(&ns).await;
    // Bridge a local port to the pod's 5432 through the API server, as driftless will for
    // backups of in-cluster databases, and speak PostgreSQL's protocol over it with psql.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let bridge = tokio::spawn(async move {
        let (mut local, _) = listener.accept().await.unwrap();
        let mut forward = pods.portforward("db", &[5432]).await.expect("port-forward");
        let mut remote = forward.take_stream(5432).expect("stream");
        let _ = tokio::io::copy_bidirectional(&mut local, &mut remote).await;
    });
    let out = tokio::task::spawn_blocking(move || {
        run_ok(
            TestEnv::get()
                .pg_command("psql")
                .env("PGHOST", "127.0.0.1")
                .env("PGPORT", port.to_string())
                .args(["-d", "postgres", "-tAc", "SELECT 'through the api server'"]),
        )
    })
    .await
    .unwrap();
    assert_eq!(out.trim(), "through the api server");
    bridge.abort();
}

#[tokio::test]
async fn exec_in_a_pod_runs_and_reports_its_output_and_status() {
    use kube::api::AttachParams;
    use tokio::io::AsyncReadExt;
    let env = TestEnv::get();
    let ns = env.namespace("smoke-exec").await;
    let pods = probe_pod(&ns).await;
    let mut attached = pods
        .exec(
            "db",
            ["sh", "-c", "echo snapshot-taken; exit 3"],
            &AttachParams::default().stderr(false),
        )
        .await
        .expect("exec");
    let mut stdout = String::new();
    attached
        .stdout()
        .expect("stdout")
        .read_to_string(&mut stdout)
        .await
        .unwrap();
    let status = attached
        .take_status()
        .expect("status")
        .await
        .expect("exit status");
    assert_eq!(stdout.trim(), "snapshot-taken");
    assert_eq!(
        status.status.as_deref(),
        Some("Failure"),
        "exit 3 is reported: {status:?}"
    );
}
