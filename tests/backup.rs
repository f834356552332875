//! Backups that restore, against the real PostgreSQL, MinIO and the test cluster: each test
//! declares `Backup` jobs in a jobs file, runs them through the `driftless` binary (`jobs run`,
//! `backup list`, `backup restore`) and checks what the database, bucket or directory holds.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use kube::api::{Patch, PatchParams};
use object_store::path::Path as ObjPath;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use support::{TestEnv, eventually, run_ok};

/// A stack repository with one jobs file, a host config (in `etc/`, with the PostgreSQL tools
/// and `backups/` as the local backup root), a state and a credentials directory.
struct Setup {
    dir: tempfile::TempDir,
}

impl Setup {
    fn new() -> Setup {
        let env = TestEnv::get();
        let dir = tempfile::tempdir().unwrap();
        let stack = dir.path().join("stack/app");
        std::fs::create_dir_all(stack.join("manifests")).unwrap();
        std::fs::write(
            stack.join("stack.yaml"),
            "apiVersion: driftless.dev/v1alpha1\nkind: Stack\nmetadata: {name: app}\nspec: {namespace: app}\n",
        )
        .unwrap();
        std::fs::write(
            stack.join("manifests/cm.yaml"),
            "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: c}\ndata: {a: b}\n",
        )
        .unwrap();
        let creds = dir.path().join("credentials");
        std::fs::create_dir_all(&creds).unwrap();
        std::fs::write(creds.join("pg-password"), env.var("PGPASSWORD")).unwrap();
        std::fs::write(creds.join("s3-access"), env.var("MINIO_ACCESS_KEY")).unwrap();
        std::fs::write(creds.join("s3-secret"), env.var("MINIO_SECRET_KEY")).unwrap();
        let s = Setup { dir };
        s.host_config(env.var("PG_BINDIR"), &s.local());
        s
    }

    /// Writes the host configuration with these `jobs:` settings.
    fn host_config(&self, pg_bin_dir: &str, local_root: &Path) {
        self.host_config_with(pg_bin_dir, local_root, "");
    }

    /// Writes the host configuration with these `jobs:` settings and `extra` lines.
    fn host_config_with(&self, pg_bin_dir: &str, local_root: &Path, extra: &str) {
        std::fs::create_dir_all(self.path().join("etc")).unwrap();
        std::fs::write(
            self.config(),
            format!(
                "stateDir: {}\ncredentialsDir: {}\njobs: {{postgresBinDir: {pg_bin_dir}, localBackupRoot: {}}}\n{extra}",
                self.path().join("state").display(),
                self.path().join("credentials").display(),
                local_root.display()
            ),
        )
        .unwrap();
    }

    /// The host configuration with `encryption:` set to `yaml` (a flow mapping).
    fn encryption(&self, yaml: &str) {
        let env = TestEnv::get();
        self.host_config_with(
            env.var("PG_BINDIR"),
            &self.local(),
            &format!("encryption: {yaml}\n"),
        );
    }

    fn credentials(&self) -> PathBuf {
        self.path().join("credentials")
    }

    fn config(&self) -> PathBuf {
        self.path().join("etc/driftless.yaml")
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn jobs(&self, yaml: &str) {
        std::fs::write(self.path().join("stack/app/jobs.yaml"), yaml).unwrap();
    }

    fn local(&self) -> PathBuf {
        self.path().join("backups")
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_driftless"));
        cmd.arg("--config")
            .arg(self.config())
            .args(args)
            .arg("--path")
            .arg(self.path())
            .env("KUBECONFIG", TestEnv::get().var("KUBECONFIG"))
            .env_remove("CREDENTIALS_DIRECTORY")
            .env_remove("PGPASSWORD");
        cmd
    }

    fn driftless(&self, args: &[&str]) -> Output {
        self.command(args).output().expect("run driftless")
    }

    /// Runs a job; returns the JSON document (`run`, `report`) and whether it succeeded.
    fn run_job(&self, name: &str) -> (Value, bool) {
        let out = self.driftless(&["jobs", "run", name, "-o", "json"]);
        let text = String::from_utf8_lossy(&out.stdout);
        let doc: Value = serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("{e}: {text}{}", String::from_utf8_lossy(&out.stderr)));
        (doc, out.status.success())
    }

    fn list(&self, job: &str) -> Value {
        let out = self.driftless(&["backup", "list", job, "-o", "json"]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: Value = serde_json::from_slice(&out.stdout).unwrap();
        v["jobs"][0].clone()
    }
}

fn pg_source(db: &str, extra: &str) -> String {
    let env = TestEnv::get();
    format!(
        "postgres: {{host: 127.0.0.1, port: {}, database: {db}, username: {}, passwordFile: pg-password{extra}}}",
        env.var("PGPORT"),
        env.var("PGUSER"),
    )
}

fn s3_dest(bucket: &str, prefix: &str) -> String {
    format!(
        "s3: {{endpoint: \"{}\", bucket: {bucket}, prefix: {prefix}, accessKeyFile: s3-access, secretKeyFile: s3-secret}}",
        TestEnv::get().var("MINIO_ENDPOINT")
    )
}

fn job(name: &str, source: &str, destination: &str, extra: &str) -> String {
    format!(
        "---\napiVersion: driftless.dev/v1alpha1\nkind: Backup\nmetadata: {{name: {name}}}\nspec:\n  schedule: \"@daily\"\n  source: {{{source}}}\n  destination: {{{destination}}}\n  retention: {{keepLast: 3}}\n{extra}"
    )
}

fn psql(db: &str, sql: &str) -> String {
    run_ok(TestEnv::get().pg_command("psql").args([
        "-X",
        "-q",
        "-tA",
        "-v",
        "ON_ERROR_STOP=1",
        "-d",
        db,
        "-c",
        sql,
    ]))
    .trim()
    .to_owned()
}

fn seed(db: &str) {
    psql(
        db,
        "CREATE TABLE customers (id serial PRIMARY KEY, name text NOT NULL, since date);
         CREATE TABLE orders (id bigserial PRIMARY KEY, customer int REFERENCES customers(id), total numeric(10,2), note text);
         CREATE INDEX orders_customer ON orders(customer);
         CREATE VIEW big_orders AS SELECT * FROM orders WHERE total > 500;
         INSERT INTO customers (name, since) SELECT 'customer ' || g, date '2020-01-01' + g FROM generate_series(1, 500) g;
         INSERT INTO orders (customer, total, note) SELECT 1 + g % 500, (g * 7919 % 100000) / 100.0, repeat(md5(g::text), 3) FROM generate_series(1, 20000) g;",
    );
}

/// Schema (pg_dump -s), row counts and a checksum over every row of every table.
fn fingerprint(db: &str) -> (String, String) {
    let schema = run_ok(
        TestEnv::get()
            .pg_command("pg_dump")
            .args(["-s", "--no-owner", "-d", db]),
    )
    .lines()
    // pg_dump's `\restrict KEY` lines carry a random key per run.
    .filter(|l| !l.starts_with("\\restrict") && !l.starts_with("\\unrestrict"))
    .collect::<Vec<_>>()
    .join("\n");
    let rows = psql(
        db,
        "SELECT string_agg(t, ' ' ORDER BY t) FROM (
           SELECT 'customers:' || count(*) || ':' || md5(string_agg(c::text, ',' ORDER BY id)) AS t FROM customers c
           UNION ALL SELECT 'orders:' || count(*) || ':' || md5(string_agg(o::text, ',' ORDER BY id)) FROM orders o) x",
    );
    (schema, rows)
}

fn drop_db(db: &str) {
    psql("postgres", &format!("DROP DATABASE {db} WITH (FORCE)"));
}

#[tokio::test]
async fn postgres_backs_up_to_minio_and_a_directory_and_restores_equal() {
    let env = TestEnv::get();
    let db = env.database("bk_pg");
    seed(&db);
    let before = fingerprint(&db);
    let bucket = env.bucket("bk-pg").await;
    let s = Setup::new();
    let local = s.local();
    s.jobs(&format!(
        "{}{}",
        job(
            "pg-s3",
            &pg_source(&db, ", globals: true"),
            &s3_dest(&bucket, "nightly"),
            "  restoreDrill: true\n"
        ),
        job(
            "pg-local",
            &pg_source(&db, ""),
            &format!("local: {{path: {}}}", local.display()),
            ""
        )
    ));
    let out = s.driftless(&["validate"]);
    assert!(out.status.success(), "{}", support::text(&out));

    for name in ["pg-s3", "pg-local"] {
        let (doc, ok) = s.run_job(name);
        assert!(ok, "{doc:#}");
        assert_eq!(doc["run"]["outcome"], "succeeded");
        assert!(doc["run"]["figures"]["bytes"].as_u64().unwrap() > 10_000);
    }
    let (doc, _) = s.run_job("pg-s3");
    assert_eq!(doc["report"]["drill"]["ok"], true, "{doc:#}");
    assert_eq!(doc["report"]["drill"]["detail"]["rows"], 20_500);

    // The manifest lists the dump and the globals with their hashes; the local dump is that file.
    let listed = s.list("pg-local");
    let id = listed["backups"][0]["id"].as_str().unwrap().to_owned();
    let manifest: Value = serde_json::from_slice(
        &std::fs::read(local.join(format!("pg-local/{id}/manifest.json"))).unwrap(),
    )
    .unwrap();
    let dump = std::fs::read(local.join(format!("pg-local/{id}/dump.pgcustom"))).unwrap();
    assert_eq!(manifest["files"][0]["name"], "dump.pgcustom");
    assert_eq!(
        manifest["files"][0]["sha256"],
        support::hex(&Sha256::digest(&dump)),
        "the manifest's hash is the stored file's"
    );
    assert_eq!(s.list("pg-s3")["backups"].as_array().unwrap().len(), 2);

    // Dropped, then restored from MinIO into a database of the same name: equal.
    drop_db(&db);
    let out = s.driftless(&["backup", "restore", "pg-s3", "latest"]);
    assert!(out.status.success(), "{}", support::text(&out));
    assert_eq!(fingerprint(&db), before);

    // Restoring over it again is refused without --force, and leaves it as it is.
    let out = s.driftless(&["backup", "restore", "pg-s3", "latest"]);
    assert!(!out.status.success());
    assert!(
        support::text(&out).contains("is not empty") && support::text(&out).contains("--force"),
        "{}",
        support::text(&out)
    );
    psql(&db, "DELETE FROM orders WHERE id > 100");
    let out = s.driftless(&["backup", "restore", "pg-s3", "latest", "--force"]);
    assert!(out.status.success(), "{}", support::text(&out));
    assert_eq!(fingerprint(&db), before, "--force restores over it");

    // From the local directory into a new database.
    let copy = format!("{db}_copy");
    let out = s.driftless(&["backup", "restore", "pg-local", &id, "--database", &copy]);
    assert!(out.status.success(), "{}", support::text(&out));
    assert_eq!(fingerprint(&copy), before);
    drop_db(&copy);
}

/// Equal listings (key, sha256), reported by the keys that differ.
fn same(got: &[(String, String)], want: &[(String, String)]) {
    let extra: Vec<_> = got
        .iter()
        .filter(|g| !want.contains(g))
        .map(|g| &g.0)
        .collect();
    let missing: Vec<_> = want
        .iter()
        .filter(|w| !got.contains(w))
        .map(|w| &w.0)
        .collect();
    assert!(
        extra.is_empty() && missing.is_empty(),
        "extra or different: {extra:?}; missing or different: {missing:?}"
    );
}

fn minio(bucket: &str) -> Arc<dyn ObjectStore> {
    let env = TestEnv::get();
    Arc::new(
        object_store::aws::AmazonS3Builder::new()
            .with_endpoint(env.var("MINIO_ENDPOINT"))
            .with_allow_http(true)
            .with_bucket_name(bucket)
            .with_region("us-east-1")
            .with_access_key_id(env.var("MINIO_ACCESS_KEY"))
            .with_secret_access_key(env.var("MINIO_SECRET_KEY"))
            .build()
            .unwrap(),
    )
}

async fn contents(store: &Arc<dyn ObjectStore>, prefix: &str) -> Vec<(String, String)> {
    use futures::TryStreamExt;
    let p = ObjPath::from(prefix);
    let metas: Vec<_> = store.list(Some(&p)).try_collect().await.unwrap();
    let mut out = Vec::new();
    for m in metas {
        let bytes = store.get(&m.location).await.unwrap().bytes().await.unwrap();
        let key = m.location.to_string();
        out.push((
            key.strip_prefix(&format!("{prefix}/"))
                .unwrap_or(&key)
                .to_owned(),
            support::hex(&Sha256::digest(&bytes)),
        ));
    }
    out.sort();
    out
}

#[tokio::test]
async fn a_bucket_mirrors_and_restores_byte_identically_and_retention_keeps_the_newest() {
    let env = TestEnv::get();
    let bucket = env.bucket("bk-src").await;
    let src = minio(&bucket);
    for i in 0..150 {
        let body = format!("object {i} ").repeat(i + 1);
        src.put(
            &ObjPath::from(format!("data/part-{i:03}.txt")),
            PutPayload::from(body.into_bytes()),
        )
        .await
        .unwrap();
    }
    // Multipart-sized: more than one 8 MiB part each.
    for (i, size) in [(0u8, 17 * 1024 * 1024 + 3), (1, 9 * 1024 * 1024)] {
        let body: Vec<u8> = (0..size)
            .map(|n| (n as u32).wrapping_mul(2654435761).to_le_bytes()[i as usize % 4])
            .collect();
        src.put(
            &ObjPath::from(format!("data/big/blob-{i}.bin")),
            PutPayload::from(body),
        )
        .await
        .unwrap();
    }
    let original = contents(&src, "data").await;
    assert_eq!(original.len(), 152);

    let backups = env.bucket("bk-dst").await;
    let s = Setup::new();
    let source = format!(
        "s3: {{endpoint: \"{}\", bucket: {bucket}, prefix: data, accessKeyFile: s3-access, secretKeyFile: s3-secret}}",
        env.var("MINIO_ENDPOINT")
    );
    s.jobs(
        &job(
            "bucket",
            &source,
            &s3_dest(&backups, "b"),
            "  restoreDrill: true\n",
        )
        .replace("keepLast: 3", "keepLast: 2"),
    );
    for _ in 0..3 {
        let (doc, ok) = s.run_job("bucket");
        assert!(ok, "{doc:#}");
        assert_eq!(doc["report"]["drill"]["ok"], true, "{doc:#}");
    }
    // Retention: keepLast 2 of 3 complete backups.
    let listed = s.list("bucket");
    assert_eq!(listed["backups"].as_array().unwrap().len(), 2, "{listed:#}");
    assert_eq!(listed["backups"][0]["files"], 152);

    // Restore into a new bucket/prefix: byte-identical.
    let target = env.bucket("bk-restore").await;
    let out = s.driftless(&[
        "backup", "restore", "bucket", "latest", "--bucket", &target, "--prefix", "copy",
    ]);
    assert!(out.status.success(), "{}", support::text(&out));
    same(&contents(&minio(&target), "copy").await, &original);
    // Not over a non-empty target without --force; with it, extra objects go.
    let out = s.driftless(&[
        "backup", "restore", "bucket", "latest", "--bucket", &target, "--prefix", "copy",
    ]);
    assert!(
        support::text(&out).contains("is not empty"),
        "{}",
        support::text(&out)
    );
    minio(&target)
        .put(
            &ObjPath::from("copy/extra.txt"),
            PutPayload::from_static(b"x"),
        )
        .await
        .unwrap();
    let out = s.driftless(&[
        "backup", "restore", "bucket", "latest", "--bucket", &target, "--prefix", "copy", "--force",
    ]);
    assert!(out.status.success(), "{}", support::text(&out));
    same(&contents(&minio(&target), "copy").await, &original);
}

/// A pod on a KWOK node: its port-forwards reach the test PostgreSQL, its execs run locally.
async fn kwok_pod(ns: &support::TestNamespace) {
    let pods: Api<Pod> = Api::namespaced(ns.client(), &ns.name);
    let pod: Pod = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "db", "labels": {"app": "db"}},
        "spec": {"nodeSelector": {"type": "kwok"},
            "containers": [{"name": "postgres", "image": "registry.invalid/postgres:16", "ports": [{"containerPort": 5432}]}]}
    }))
    .unwrap();
    pods.patch(
        "db",
        &PatchParams::apply("driftless-test"),
        &Patch::Apply(&pod),
    )
    .await
    .unwrap();
    eventually("pod db running", Duration::from_secs(60), || async {
        let p = pods.get("db").await.ok()?;
        (p.status?.phase.as_deref() == Some("Running")).then_some(())
    })
    .await;
}

#[tokio::test]
async fn port_forward_and_exec_sources_work_through_the_api_server() {
    let env = TestEnv::get();
    let ns = env.namespace("bk-pod").await;
    kwok_pod(&ns).await;
    let db = env.database("bk_pf");
    seed(&db);
    let s = Setup::new();
    let local = s.local();
    let dest = format!("local: {{path: {}}}", local.display());
    let pf_source = format!(
        "postgres: {{portForward: {{namespace: {}, pod: db}}, database: {db}, username: {}, passwordFile: pg-password}}",
        ns.name,
        env.var("PGUSER"),
    );
    let exec_source = |cmd: &str| {
        format!(
            "exec: {{namespace: {}, pod: db, command: [sh, -c, '{cmd}']}}",
            ns.name
        )
    };
    s.jobs(&format!(
        "{}{}{}",
        job("pg-forward", &pf_source, &dest, ""),
        job(
            "snapshot",
            &exec_source("echo snapshot-taken; echo progress >&2"),
            &dest,
            ""
        ),
        job(
            "snapshot-fails",
            &exec_source("echo partial; exit 3"),
            &dest,
            ""
        ),
    ));

    let (doc, ok) = s.run_job("pg-forward");
    assert!(ok, "{doc:#}");
    assert!(
        doc["report"]["source"]
            .as_str()
            .unwrap()
            .contains("port-forward")
    );
    let copy = format!("{db}_pf");
    let out = s.driftless(&[
        "backup",
        "restore",
        "pg-forward",
        "latest",
        "--database",
        &copy,
    ]);
    assert!(out.status.success(), "{}", support::text(&out));
    assert_eq!(fingerprint(&copy).1, fingerprint(&db).1);
    drop_db(&copy);

    // A bucket reached through a port-forward (the pod's port 9000 maps to the test MinIO), as
    // a daemon outside the cluster reaches an in-cluster MinIO; restored the same way.
    let bucket = env.bucket("bk-pf").await;
    for i in 0..5 {
        minio(&bucket)
            .put(
                &ObjPath::from(format!("d/o-{i}")),
                PutPayload::from(format!("object {i}").repeat(1000).into_bytes()),
            )
            .await
            .unwrap();
    }
    s.jobs(&job(
        "bucket-forward",
        &format!(
            "s3: {{portForward: {{namespace: {}, pod: db}}, bucket: {bucket}, prefix: d, accessKeyFile: s3-access, secretKeyFile: s3-secret}}",
            ns.name
        ),
        &dest,
        "  restoreDrill: true\n",
    ));
    let (doc, ok) = s.run_job("bucket-forward");
    assert!(ok, "{doc:#}");
    assert_eq!(doc["report"]["drill"]["ok"], true, "{doc:#}");
    assert!(
        doc["report"]["source"]
            .as_str()
            .unwrap()
            .contains(&format!("via port-forward to {}/db:9000", ns.name)),
        "{doc:#}"
    );
    let out = s.driftless(&[
        "backup",
        "restore",
        "bucket-forward",
        "latest",
        "--prefix",
        "copy",
    ]);
    assert!(out.status.success(), "{}", support::text(&out));
    same(
        &contents(&minio(&bucket), "copy").await,
        &contents(&minio(&bucket), "d").await,
    );
    s.jobs(&format!(
        "{}{}{}",
        job("pg-forward", &pf_source, &dest, ""),
        job(
            "snapshot",
            &exec_source("echo snapshot-taken; echo progress >&2"),
            &dest,
            ""
        ),
        job(
            "snapshot-fails",
            &exec_source("echo partial; exit 3"),
            &dest,
            ""
        ),
    ));

    let (doc, ok) = s.run_job("snapshot");
    assert!(ok, "{doc:#}");
    let id = s.list("snapshot")["backups"][0]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(
        std::fs::read_to_string(local.join(format!("snapshot/{id}/stdout"))).unwrap(),
        "snapshot-taken\n"
    );
    let manifest =
        std::fs::read_to_string(local.join(format!("snapshot/{id}/manifest.json"))).unwrap();
    assert!(
        manifest.contains("progress"),
        "stderr tail recorded: {manifest}"
    );

    let (doc, ok) = s.run_job("snapshot-fails");
    assert!(!ok);
    let message = doc["run"]["message"].as_str().unwrap();
    assert!(
        message.contains("exec in pod") && message.contains('3'),
        "{message}"
    );
    let listed = s.list("snapshot-fails");
    assert!(
        listed["backups"].as_array().unwrap().is_empty()
            && listed["incomplete"].as_array().unwrap().is_empty(),
        "{listed:#}"
    );
}

#[tokio::test]
async fn a_run_killed_mid_upload_leaves_no_manifest_and_the_next_run_cleans_up() {
    let env = TestEnv::get();
    let ns = env.namespace("bk-kill").await;
    kwok_pod(&ns).await;
    let s = Setup::new();
    let local = s.local();
    let slow = format!(
        "exec: {{namespace: {}, pod: db, command: [sh, -c, 'head -c 20000000 /dev/urandom; sleep 120']}}",
        ns.name
    );
    let dest = format!("local: {{path: {}}}", local.display());
    s.jobs(&job("killed", &slow, &dest, ""));
    let mut child = s
        .command(&["jobs", "run", "killed"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let job_dir = local.join("killed");
    eventually("an upload in progress", Duration::from_secs(60), || {
        let d = job_dir.clone();
        async move {
            let ids: Vec<_> = std::fs::read_dir(&d).ok()?.flatten().collect();
            let id = ids.first()?.path();
            let staged: u64 = std::fs::read_dir(&id)
                .ok()?
                .flatten()
                .filter_map(|e| e.metadata().ok())
                .map(|m| m.len())
                .sum();
            (staged > 8 * 1024 * 1024).then_some(())
        }
    })
    .await;
    child.kill().unwrap();
    child.wait().unwrap();
    let manifests = walk(&local)
        .into_iter()
        .filter(|p| p.ends_with("manifest.json"))
        .count();
    assert_eq!(manifests, 0, "no manifest after a kill");
    let listed = s.list("killed");
    assert!(listed["backups"].as_array().unwrap().is_empty());
    assert_eq!(
        listed["incomplete"].as_array().unwrap().len(),
        1,
        "{listed:#}"
    );

    // The killed run left its marker: this host's run, started at a recorded time.
    let marker: Value = serde_json::from_slice(
        &std::fs::read(
            job_dir
                .join(listed["incomplete"][0]["id"].as_str().unwrap())
                .join("driftless-run.json"),
        )
        .unwrap(),
    )
    .unwrap();
    assert_eq!(marker, listed["incomplete"][0]["marker"]);
    let started: chrono::DateTime<chrono::Utc> =
        marker["startedAt"].as_str().unwrap().parse().unwrap();
    // The next run (a quick command now, a 5 s timeout) cleans it up once it is older than the
    // job's timeout (no run of this host can still be writing it), and succeeds.
    s.jobs(&job(
        "killed",
        &slow.replace("head -c 20000000 /dev/urandom; sleep 120", "echo done"),
        &dest,
        "  timeout: 5s\n",
    ));
    eventually(
        "the killed run older than the timeout",
        Duration::from_secs(10),
        || async {
            (chrono::Utc::now() - started > chrono::Duration::milliseconds(5100)).then_some(())
        },
    )
    .await;
    let (doc, ok) = s.run_job("killed");
    assert!(ok, "{doc:#}");
    assert_eq!(doc["report"]["cleaned"].as_array().unwrap().len(), 1);
    let listed = s.list("killed");
    assert_eq!(listed["backups"].as_array().unwrap().len(), 1);
    assert!(listed["incomplete"].as_array().unwrap().is_empty());
    assert_eq!(
        std::fs::read_dir(&job_dir).unwrap().count(),
        1,
        "only the new backup is left"
    );
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                out.extend(walk(&p));
            } else {
                out.push(p);
            }
        }
    }
    out
}

#[tokio::test]
async fn broken_dumps_unreachable_databases_and_bad_credentials_fail_and_leave_backups_alone() {
    let env = TestEnv::get();
    let db = env.database("bk_fail");
    seed(&db);
    let s = Setup::new();
    let local = s.local();
    let dest = format!("local: {{path: {}}}", local.display());
    s.jobs(&job("pg", &pg_source(&db, ""), &dest, ""));
    let (doc, ok) = s.run_job("pg");
    assert!(ok, "{doc:#}");
    let good = s.list("pg")["backups"].clone();
    let good_id = good[0]["id"].as_str().unwrap().to_owned();
    let good_manifest = std::fs::read(local.join(format!("pg/{good_id}/manifest.json"))).unwrap();

    // A pg_dump whose output is cut short but which exits 0: the read-back catches it.
    let bin = s.path().join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    let real = Path::new(env.var("PG_BINDIR"));
    for tool in ["pg_restore", "psql", "pg_dumpall"] {
        std::os::unix::fs::symlink(real.join(tool), bin.join(tool)).unwrap();
    }
    let script = bin.join("pg_dump");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\n\"{}/pg_dump\" \"$@\" | head -c 40000\nexit 0\n",
            real.display()
        ),
    )
    .unwrap();
    std::os::unix::fs::PermissionsExt::set_mode(
        &mut std::fs::metadata(&script).unwrap().permissions(),
        0o755,
    );
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let sentinel = "sentinel-Pw-7f3a91";
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    // The host configuration names the directory of the PostgreSQL tools: the broken pg_dump
    // is the host's choice here, as it would be on a host with a broken installation.
    let cases = [
        (pg_source(&db, ""), "verification failed"),
        (
            pg_source(&db, "").replace(
                &format!("port: {}", env.var("PGPORT")),
                &format!("port: {closed}"),
            ),
            "pg_dump failed",
        ),
        (
            pg_source(&db, "").replace("pg-password", "wrong-password"),
            "password authentication failed",
        ),
    ];
    std::fs::write(s.path().join("credentials/wrong-password"), sentinel).unwrap();
    for (i, (source, want)) in cases.into_iter().enumerate() {
        let tools = if i == 0 {
            bin.to_str().unwrap()
        } else {
            env.var("PG_BINDIR")
        };
        s.host_config(tools, &local);
        s.jobs(&job("pg", &source, &dest, ""));
        let out = s.driftless(&["jobs", "run", "pg", "-o", "json"]);
        assert!(!out.status.success(), "{want}");
        let text = support::text(&out);
        assert!(text.contains(want), "want {want:?} in {text}");
        assert!(!text.contains(sentinel), "the password never shows: {text}");
        for f in walk(&s.path().join("state")) {
            let content = std::fs::read_to_string(&f).unwrap_or_default();
            assert!(
                !content.contains(sentinel),
                "{} holds the password",
                f.display()
            );
        }
        // Earlier backups untouched; nothing of the failed run is left.
        let listed = s.list("pg");
        assert_eq!(listed["backups"], good, "{want}");
        assert!(
            listed["incomplete"].as_array().unwrap().is_empty(),
            "{want}: {listed:#}"
        );
        assert_eq!(
            std::fs::read(local.join(format!("pg/{good_id}/manifest.json"))).unwrap(),
            good_manifest
        );
    }
}

/// A size-limited tmpfs mounted over `dir`, unmounted on drop: a destination that really fills
/// up (ENOSPC from the kernel). Mounting needs root, which the test environment and CI have;
/// without it the test fails and says so.
struct SmallFs {
    dir: PathBuf,
}

impl SmallFs {
    fn mount(dir: &Path, size: &str) -> SmallFs {
        std::fs::create_dir_all(dir).unwrap();
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size},mode=0700")])
            .arg("driftless-test-full")
            .arg(dir)
            .output()
            .expect("run mount");
        assert!(
            out.status.success(),
            "a full destination is tested on a size-limited tmpfs, which needs root (mount -t tmpfs): {}",
            support::text(&out)
        );
        SmallFs {
            dir: dir.to_owned(),
        }
    }

    /// Bytes still free.
    fn available(&self) -> u64 {
        let out = run_ok(
            Command::new("df")
                .args(["--output=avail", "-B1"])
                .arg(&self.dir),
        );
        out.lines().nth(1).unwrap().trim().parse().unwrap()
    }
}

impl Drop for SmallFs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.dir).status();
    }
}

#[tokio::test]
async fn a_full_destination_fails_the_run_and_leaves_earlier_backups_restorable() {
    let env = TestEnv::get();
    let db = env.database("bk_full");
    seed(&db);
    let before = fingerprint(&db);
    let s = Setup::new();
    let local = s.local();
    let fs = SmallFs::mount(&local, "16m");
    let dest = format!("local: {{path: {}}}", local.display());
    s.jobs(&job("pg", &pg_source(&db, ""), &dest, ""));
    let (doc, ok) = s.run_job("pg");
    assert!(ok, "{doc:#}");
    let dump_bytes = doc["run"]["figures"]["bytes"].as_u64().unwrap();
    let good = s.list("pg")["backups"].clone();
    let good_id = good[0]["id"].as_str().unwrap().to_owned();

    // Fill the file system until half a dump fits.
    let filler = local.join("filler");
    let free = fs.available();
    assert!(free > dump_bytes, "{free} bytes free, dump {dump_bytes}");
    std::fs::write(&filler, vec![7u8; (free - dump_bytes / 2) as usize]).unwrap();

    let (doc, ok) = s.run_job("pg");
    assert!(!ok, "{doc:#}");
    let message = doc["run"]["message"].as_str().unwrap();
    assert!(
        message.contains(&format!("{}/pg", local.display()))
            && message.contains("destination is full")
            && message.contains("ENOSPC"),
        "names the destination and says it is full: {message}"
    );
    assert!(
        !message.contains("pg_dump failed"),
        "the full destination is the cause, not pg_dump's broken pipe: {message}"
    );
    // Earlier backups untouched, nothing of the failed run looks complete.
    let listed = s.list("pg");
    assert_eq!(listed["backups"], good, "{listed:#}");
    let manifests: Vec<PathBuf> = walk(&local)
        .into_iter()
        .filter(|p| p.ends_with("manifest.json"))
        .collect();
    assert_eq!(
        manifests,
        [local.join(format!("pg/{good_id}/manifest.json"))]
    );
    let copy = format!("{db}_full");
    let out = s.driftless(&["backup", "restore", "pg", &good_id, "--database", &copy]);
    assert!(out.status.success(), "{}", support::text(&out));
    assert_eq!(fingerprint(&copy), before);
    drop_db(&copy);

    // Space freed: the next run cleans up whatever the failed one left and succeeds.
    std::fs::remove_file(&filler).unwrap();
    let (doc, ok) = s.run_job("pg");
    assert!(ok, "{doc:#}");
    let listed = s.list("pg");
    assert_eq!(listed["backups"].as_array().unwrap().len(), 2, "{listed:#}");
    assert!(listed["incomplete"].as_array().unwrap().is_empty());
    assert_eq!(
        std::fs::read_dir(local.join("pg")).unwrap().count(),
        2,
        "only the two complete backups are left"
    );
}

#[tokio::test]
async fn a_backup_job_without_a_complete_backup_within_max_age_degrades_the_daemon() {
    let ns = support::unique_name("bk-age");
    let backups = tempfile::tempdir().unwrap();
    // Runs every second and fails every time (no such pod): no complete backup ever.
    let jobs = format!(
        "apiVersion: driftless.dev/v1alpha1\nkind: Backup\nmetadata: {{name: stale}}\nspec:\n  schedule: \"* * * * * *\"\n  \
         source: {{exec: {{namespace: {ns}, pod: missing, command: [\"true\"]}}}}\n  \
         destination: {{local: {{path: {}}}}}\n  retention: {{keepLast: 1}}\n  maxAge: 2s\n",
        backups.path().display()
    );
    let d = support::daemon::start_daemon_prepared("", |repo, _| {
        std::fs::write(repo.join("stack/app/jobs.yaml"), &jobs).unwrap();
    });
    let status = eventually("status degraded by maxAge", Duration::from_secs(60), || {
        let d = &d;
        async move {
            let st = d.status().await;
            let overdue = st["jobs"]
                .as_array()?
                .iter()
                .any(|j| j["name"] == "stale" && j["overdue"].is_string());
            (st["state"] == "degraded" && overdue).then_some(st)
        }
    })
    .await;
    let job = status["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|j| j["name"] == "stale")
        .cloned()
        .unwrap_or_else(|| panic!("job stale in {status:#}"));
    assert!(
        job["overdue"]
            .as_str()
            .is_some_and(|o| o.contains("no complete backup within maxAge 2s")),
        "{job:#}"
    );
    assert!(
        status["stacks"]
            .as_array()
            .unwrap()
            .iter()
            .all(|s| s["state"] == "synced"),
        "degraded by the backup job alone: {status:#}"
    );
    assert!(
        job["lastSuccess"].is_null() && job["lastCompleteBackup"].is_null(),
        "{job:#}"
    );
    assert!(
        walk(backups.path()).is_empty(),
        "no file of a failed run is left"
    );
}

#[tokio::test]
async fn an_exec_source_copies_files_out_of_the_pod_verified() {
    let env = TestEnv::get();
    let ns = env.namespace("bk-cp").await;
    kwok_pod(&ns).await;
    let s = Setup::new();
    let local = s.local();
    let dest = format!("local: {{path: {}}}", local.display());
    // KWOK runs execs in <run dir>/exec: the "pod's" files live there.
    let snap = support::unique_name("snap");
    let pod_dir = Path::new(env.var("DRIFTLESS_TESTENV_RUN")).join("exec");
    s.jobs(&job(
        "snapshot",
        &format!(
            "exec: {{namespace: {}, pod: db, command: [sh, -c, 'mkdir -p {snap}/tables && echo one > {snap}/tables/a.db && head -c 3000000 /dev/urandom > {snap}/tables/b.db && echo snapshot taken'], copyOut: [{snap}]}}",
            ns.name
        ),
        &dest,
        "",
    ));
    let (doc, ok) = s.run_job("snapshot");
    assert!(ok, "{doc:#}");
    let id = s.list("snapshot")["backups"][0]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let dir = local.join(format!("snapshot/{id}"));
    assert_eq!(
        std::fs::read_to_string(dir.join("stdout")).unwrap(),
        "snapshot taken\n"
    );
    // The archive holds the pod's files byte for byte, and the manifest its hash.
    let tar = std::fs::read(dir.join("files.tar")).unwrap();
    let manifest: Value =
        serde_json::from_slice(&std::fs::read(dir.join("manifest.json")).unwrap()).unwrap();
    let entry = manifest["files"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["name"] == "files.tar")
        .cloned()
        .unwrap();
    assert_eq!(entry["sha256"], support::hex(&Sha256::digest(&tar)));
    assert_eq!(manifest["details"]["copyOut"]["paths"][0], snap.as_str());
    let out = tempfile::tempdir().unwrap();
    run_ok(
        Command::new("tar")
            .arg("xf")
            .arg(dir.join("files.tar"))
            .arg("-C")
            .arg(out.path()),
    );
    for f in ["tables/a.db", "tables/b.db"] {
        assert_eq!(
            support::hex(&Sha256::digest(
                std::fs::read(out.path().join(&snap).join(f)).unwrap()
            )),
            support::hex(&Sha256::digest(
                std::fs::read(pod_dir.join(&snap).join(f)).unwrap()
            )),
            "{f}"
        );
    }

    // A path that is not there fails the run (tar's exit status) and leaves nothing.
    s.jobs(&job(
        "snapshot",
        &format!(
            "exec: {{namespace: {}, pod: db, copyOut: [{snap}-missing]}}",
            ns.name
        ),
        &dest,
        "",
    ));
    let (doc, ok) = s.run_job("snapshot");
    assert!(!ok, "{doc:#}");
    let message = doc["run"]["message"].as_str().unwrap();
    assert!(
        message.contains("tar cf -") && message.contains("missing"),
        "{message}"
    );
    let listed = s.list("snapshot");
    assert_eq!(listed["backups"].as_array().unwrap().len(), 1);
    assert!(listed["incomplete"].as_array().unwrap().is_empty());
    std::fs::remove_dir_all(pod_dir.join(&snap)).unwrap();
}

#[tokio::test]
async fn restore_with_globals_creates_missing_roles_and_leaves_existing_ones() {
    let env = TestEnv::get();
    let db = env.database("bk_roles");
    let role = format!("{db}_owner");
    let sentinel = "sentinel-Role-Pw-41c9";
    psql(
        "postgres",
        &format!("CREATE ROLE {role} LOGIN PASSWORD '{sentinel}' CONNECTION LIMIT 7"),
    );
    psql(
        &db,
        &format!(
            "CREATE TABLE t (id int); INSERT INTO t SELECT generate_series(1, 42); ALTER TABLE t OWNER TO {role}"
        ),
    );
    let s = Setup::new();
    let dest = format!("local: {{path: {}}}", s.local().display());
    s.jobs(&job("pg", &pg_source(&db, ", globals: true"), &dest, ""));
    let (doc, ok) = s.run_job("pg");
    assert!(ok, "{doc:#}");

    // The role is gone with its database: --globals brings it back before the tables.
    drop_db(&db);
    psql("postgres", &format!("DROP ROLE {role}"));
    let out = s.driftless(&[
        "backup",
        "restore",
        "pg",
        "latest",
        "--globals",
        "-o",
        "json",
    ]);
    assert!(out.status.success(), "{}", support::text(&out));
    // Neither the password nor its hash (globals.sql holds SCRAM verifiers) is ever shown.
    assert!(
        !support::text(&out).contains(sentinel) && !support::text(&out).contains("SCRAM-SHA-256$"),
        "{}",
        support::text(&out)
    );
    let done: Value = serde_json::from_slice(&out.stdout).unwrap();
    let created = done["restored"]["roles"]["created"].as_array().unwrap();
    assert!(created.contains(&json!(role)), "{done:#}");
    assert!(
        done["restored"]["roles"]["existing"]
            .as_array()
            .unwrap()
            .contains(&json!(env.var("PGUSER"))),
        "{done:#}"
    );
    assert_eq!(
        psql(
            "postgres",
            &format!("SELECT rolcanlogin, rolconnlimit FROM pg_roles WHERE rolname = '{role}'")
        ),
        "t|7"
    );
    assert_eq!(
        psql(
            &db,
            "SELECT tableowner || ':' || (SELECT count(*) FROM t) FROM pg_tables WHERE tablename = 't'"
        ),
        format!("{role}:42")
    );

    // An existing role is left as it is (its attributes are not reset to the backup's).
    psql("postgres", &format!("ALTER ROLE {role} CONNECTION LIMIT 3"));
    let copy = format!("{db}_again");
    let out = s.driftless(&[
        "backup",
        "restore",
        "pg",
        "latest",
        "--globals",
        "--database",
        &copy,
    ]);
    assert!(out.status.success(), "{}", support::text(&out));
    assert_eq!(
        psql(
            "postgres",
            &format!("SELECT rolconnlimit FROM pg_roles WHERE rolname = '{role}'")
        ),
        "3"
    );
    drop_db(&copy);

    // A backup without globals says so.
    s.jobs(&job("pg", &pg_source(&db, ""), &dest, ""));
    let (doc, ok) = s.run_job("pg");
    assert!(ok, "{doc:#}");
    let out = s.driftless(&[
        "backup",
        "restore",
        "pg",
        "latest",
        "--globals",
        "--database",
        &copy,
    ]);
    assert!(!out.status.success());
    assert!(
        support::text(&out).contains("holds no globals.sql"),
        "{}",
        support::text(&out)
    );
    drop_db(&db);
    psql("postgres", &format!("DROP ROLE {role}"));
}

// ---- Issue 16: backups that cannot destroy what they protect ----

fn this_host() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .unwrap()
        .trim()
        .to_owned()
}

fn manifest_of(local: &Path, job: &str, id: &str) -> Value {
    serde_json::from_slice(&std::fs::read(local.join(format!("{job}/{id}/manifest.json"))).unwrap())
        .unwrap()
}

fn ids(listed: &Value) -> Vec<String> {
    listed["backups"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["id"].as_str().unwrap().to_owned())
        .collect()
}

fn databases_like(prefix: &str) -> Vec<String> {
    let out = psql(
        "postgres",
        &format!(
            "SELECT datname FROM pg_database WHERE starts_with(datname, '{prefix}') ORDER BY 1"
        ),
    );
    out.lines().map(str::to_owned).collect()
}

#[tokio::test]
async fn a_failed_restore_drill_fails_the_run_and_never_costs_the_last_verified_backup() {
    let env = TestEnv::get();
    let db = env.database("bk_drillfail");
    seed(&db);
    let before = fingerprint(&db);
    // A role that may read everything but not create databases: its dumps are good, its drills
    // cannot make their scratch database (a real failure of a real drill).
    let role = format!("{db}_nocreate");
    psql(
        "postgres",
        &format!(
            "CREATE ROLE {role} LOGIN PASSWORD 'drill-pw' NOCREATEDB; GRANT pg_read_all_data TO {role}"
        ),
    );
    let s = Setup::new();
    std::fs::write(s.path().join("credentials/limited-password"), "drill-pw").unwrap();
    let local = s.local();
    let dest = format!("local: {{path: {}}}", local.display());
    let good = job("pg", &pg_source(&db, ""), &dest, "  restoreDrill: true\n")
        .replace("keepLast: 3", "keepLast: 1");
    let limited = good
        .replace(
            &format!("username: {}", env.var("PGUSER")),
            &format!("username: {role}"),
        )
        .replace("pg-password", "limited-password");
    s.jobs(&good);
    let (doc, ok) = s.run_job("pg");
    assert!(ok, "{doc:#}");
    let verified = ids(&s.list("pg"));
    assert_eq!(verified.len(), 1);
    assert_eq!(
        manifest_of(&local, "pg", &verified[0])["drill"]["status"],
        "passed"
    );

    s.jobs(&limited);
    for round in 0..2 {
        let (doc, ok) = s.run_job("pg");
        assert!(!ok, "a failed drill fails the run: {doc:#}");
        let message = doc["run"]["message"].as_str().unwrap();
        assert!(
            message.contains("restore drill") && message.contains("permission denied"),
            "{message}"
        );
        let id = doc["report"]["backup"]["id"].as_str().unwrap().to_owned();
        let m = manifest_of(&local, "pg", &id);
        assert_eq!(m["drill"]["status"], "failed", "{m:#}");
        assert!(
            m["drill"]["detail"]["error"]
                .as_str()
                .unwrap()
                .contains("permission denied to create database"),
            "{m:#}"
        );
        let listed = s.list("pg");
        assert!(
            ids(&listed).contains(&verified[0]),
            "round {round}: keepLast 1 never removes the verified backup for an unverified one: {listed:#}"
        );
        let newest = listed["backups"]
            .as_array()
            .unwrap()
            .last()
            .unwrap()
            .clone();
        assert_eq!(newest["verified"], false, "{listed:#}");
        // The newest unverified one is kept as well; older unverified ones give way to it.
        assert_eq!(ids(&listed), [verified[0].clone(), id], "round {round}");
    }
    // The run record's freshness counts verified backups only.
    let (doc, _) = s.run_job("pg");
    assert_eq!(
        doc["run"]["figures"]["newestCompleteTimestamp"].as_i64(),
        Some(
            manifest_of(&local, "pg", &verified[0])["startedAt"]
                .as_str()
                .unwrap()
                .parse::<chrono::DateTime<chrono::Utc>>()
                .unwrap()
                .timestamp()
        ),
        "{doc:#}"
    );
    // `latest` is the newest verified backup, and it restores.
    s.jobs(&good);
    let copy = format!("{db}_verified");
    let out = s.driftless(&[
        "backup",
        "restore",
        "pg",
        "latest",
        "--database",
        &copy,
        "-o",
        "json",
    ]);
    assert!(out.status.success(), "{}", support::text(&out));
    let done: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(done["id"], verified[0].as_str());
    assert_eq!(fingerprint(&copy), before);
    drop_db(&copy);

    // A drill passes again: keepLast 1 applies as usual, the unverified ones go too.
    let (doc, ok) = s.run_job("pg");
    assert!(ok, "{doc:#}");
    let listed = ids(&s.list("pg"));
    assert_eq!(listed, [doc["report"]["backup"]["id"].as_str().unwrap()]);
    assert!(!local.join("pg").join(&verified[0]).exists());
    psql("postgres", &format!("DROP ROLE {role}"));
}

#[tokio::test]
async fn the_drill_never_drops_a_database_it_did_not_create() {
    let env = TestEnv::get();
    let db = env.database("bk_scratch");
    seed(&db);
    // A database named as a naive drill would name its scratch database.
    let theirs = format!("{db}_drill");
    psql("postgres", &format!("CREATE DATABASE {theirs}"));
    psql(
        &theirs,
        "CREATE TABLE keep_me (x int); INSERT INTO keep_me VALUES (1), (2)",
    );
    // What a drill of this job on this host left when it died: dropped by the next drill. A
    // look-alike with another host's mark, and one without a mark: never touched.
    let suffix = support::unique_name("x").replace('-', "_");
    let ours = format!("driftless_drill_{suffix}_a");
    let other_host = format!("driftless_drill_{suffix}_b");
    let unmarked = format!("driftless_drill_{suffix}_c");
    for (name, mark) in [
        (
            &ours,
            Some(format!(
                "driftless restore drill: job=pg-leftovers instance=default host={}",
                this_host()
            )),
        ),
        (
            &other_host,
            Some(
                "driftless restore drill: job=pg-leftovers instance=default host=another-host"
                    .to_owned(),
            ),
        ),
        (&unmarked, None),
    ] {
        psql("postgres", &format!("CREATE DATABASE {name}"));
        if let Some(mark) = mark {
            psql(
                "postgres",
                &format!("COMMENT ON DATABASE {name} IS '{mark}'"),
            );
        }
    }
    // Its own job name: a drill drops this job's leftovers on this host, and other tests of this
    // file run drills of their jobs on the same server at the same time.
    let s = Setup::new();
    let dest = format!("local: {{path: {}}}", s.local().display());
    s.jobs(&job(
        "pg-leftovers",
        &pg_source(&db, ""),
        &dest,
        "  restoreDrill: true\n",
    ));
    let (doc, ok) = s.run_job("pg-leftovers");
    assert!(ok, "{doc:#}");
    let detail = &doc["report"]["drill"]["detail"];
    assert_eq!(doc["report"]["drill"]["ok"], true, "{doc:#}");
    assert_eq!(detail["rows"], 20_500, "{doc:#}");
    // Its own scratch database: recorded, named so nothing else can be it, and gone.
    let scratch = detail["scratchDatabase"].as_str().unwrap();
    assert!(
        scratch.starts_with("driftless_drill_") && scratch.len() == "driftless_drill_".len() + 16,
        "{scratch}"
    );
    assert!(databases_like(scratch).is_empty(), "{scratch} dropped");
    assert_eq!(detail["droppedLeftovers"], json!([ours]), "{doc:#}");
    assert_eq!(psql(&theirs, "SELECT count(*) FROM keep_me"), "2");
    assert_eq!(
        databases_like(&format!("driftless_drill_{suffix}")),
        [other_host.clone(), unmarked.clone()]
    );
    // The manifest records the drill and its scratch database.
    let id = doc["report"]["backup"]["id"].as_str().unwrap();
    let m = manifest_of(&s.local(), "pg-leftovers", id);
    assert_eq!(m["drill"]["status"], "passed");
    assert_eq!(m["drill"]["detail"]["scratchDatabase"], scratch);
    for d in [theirs, other_host, unmarked] {
        drop_db(&d);
    }
}

#[tokio::test]
async fn cleaning_removes_only_this_hosts_stale_incomplete_backups() {
    let env = TestEnv::get();
    let db = env.database("bk_marker");
    psql(&db, "CREATE TABLE t (x int); INSERT INTO t VALUES (1)");
    let s = Setup::new();
    let local = s.local();
    let dest = format!("local: {{path: {}}}", local.display());
    s.jobs(&job("pg", &pg_source(&db, ""), &dest, "  timeout: 1h\n"));
    let now = chrono::Utc::now();
    let incomplete =
        |id: &str, host: &str, instance: &str, started: chrono::DateTime<chrono::Utc>| {
            let dir = local.join("pg").join(id);
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(dir.join("dump.pgcustom"), b"PGDMP partial").unwrap();
            std::fs::write(
                dir.join("driftless-run.json"),
                serde_json::to_vec(&json!({
                    "format": 1, "host": host, "instance": instance, "pid": 1,
                    "startedAt": started,
                }))
                .unwrap(),
            )
            .unwrap();
            dir
        };
    let two_days_ago = now - chrono::Duration::days(2);
    // A second host writing to the same destination: its run may still be going.
    let foreign = incomplete(
        "20200101T000000.000Z",
        "another-host.example",
        "default",
        two_days_ago,
    );
    // Another instance on this host (its own state directory and lock).
    let other_instance = incomplete(
        "20200101T120000.000Z",
        &this_host(),
        "staging",
        two_days_ago,
    );
    // This host's run from two days ago: far older than the job's timeout (1h).
    let stale = incomplete(
        "20200102T000000.000Z",
        &this_host(),
        "default",
        two_days_ago,
    );
    // This host's run from a minute ago: within the timeout, left alone.
    let recent = incomplete(
        "20200103T000000.000Z",
        &this_host(),
        "default",
        now - chrono::Duration::minutes(1),
    );
    // Files without any marker (an older driftless, or a hand-made directory).
    let unmarked = local.join("pg/20200104T000000.000Z");
    std::fs::create_dir_all(&unmarked).unwrap();
    std::fs::write(unmarked.join("dump.pgcustom"), b"?").unwrap();

    // A dry run says so and changes nothing.
    let out = s.driftless(&["jobs", "run", "pg", "--dry-run", "-o", "json"]);
    let dry: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        dry["report"]["cleaned"],
        json!(["20200102T000000.000Z"]),
        "{dry:#}"
    );
    assert!(stale.exists());

    let (doc, ok) = s.run_job("pg");
    assert!(ok, "{doc:#}");
    assert_eq!(
        doc["report"]["cleaned"],
        json!(["20200102T000000.000Z"]),
        "{doc:#}"
    );
    assert!(!stale.exists());
    for dir in [&foreign, &other_instance, &recent] {
        assert_eq!(
            std::fs::read(dir.join("dump.pgcustom")).unwrap(),
            b"PGDMP partial",
            "{} is not this host's to remove",
            dir.display()
        );
    }
    assert!(unmarked.join("dump.pgcustom").exists());
    let left: Vec<(String, String)> = doc["report"]["incompleteLeft"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| {
            (
                l["id"].as_str().unwrap().to_owned(),
                l["reason"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(left.len(), 4, "{left:?}");
    assert!(left[0].1.contains("host another-host.example"), "{left:?}");
    assert!(left[1].1.contains("instance staging"), "{left:?}");
    assert!(left[2].1.contains("within the job's timeout"), "{left:?}");
    assert!(left[3].1.contains("no run marker"), "{left:?}");
    // The new backup carries this host's marker and names its host in the manifest.
    let id = doc["report"]["backup"]["id"].as_str().unwrap();
    let marker: Value = serde_json::from_slice(
        &std::fs::read(local.join("pg").join(id).join("driftless-run.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(marker["host"], this_host());
    assert_eq!(marker["instance"], "default");
    assert_eq!(manifest_of(&local, "pg", id)["host"], this_host());
    // `backup list` shows who started each incomplete backup.
    let listed = s.list("pg");
    assert_eq!(
        listed["incomplete"][0]["marker"]["host"],
        "another-host.example"
    );
}

#[tokio::test]
async fn local_destinations_stay_under_the_root_and_clear_of_driftless_own_directories() {
    let env = TestEnv::get();
    let db = env.database("bk_dest");
    psql(&db, "CREATE TABLE t (x int)");
    let s = Setup::new();
    let base = std::fs::canonicalize(s.path()).unwrap();
    // A root that holds the state, configuration and credentials directories too, so that
    // each of those is what refuses the destination.
    s.host_config(env.var("PG_BINDIR"), &base);
    std::fs::create_dir_all(base.join("backups")).unwrap();
    std::os::unix::fs::symlink(base.join("etc"), base.join("backups/to-etc")).unwrap();
    let cases = [
        (base.join("state/backups"), "inside the state directory"),
        (
            base.join("backups/../credentials"),
            "inside the credentials directory",
        ),
        (
            base.join("backups/to-etc/b"),
            "inside the configuration directory",
        ),
        (
            base.join("backups/missing/../to-etc"),
            "inside the configuration directory",
        ),
        (PathBuf::from("/"), "resolves to /"),
        (PathBuf::from("/tmp/../"), "resolves to /"),
    ];
    for (path, want) in &cases {
        s.jobs(&job(
            "pg",
            &pg_source(&db, ""),
            &format!("local: {{path: {}}}", path.display()),
            "",
        ));
        let (doc, ok) = s.run_job("pg");
        assert!(!ok, "{}: {doc:#}", path.display());
        let message = doc["run"]["message"].as_str().unwrap();
        assert!(
            message.contains("local destination refused") && message.contains(want),
            "{}: want {want:?} in {message}",
            path.display()
        );
        // `backup list` refuses it too.
        let out = s.driftless(&["backup", "list", "pg"]);
        assert!(
            !out.status.success() && support::text(&out).contains(want),
            "{}",
            support::text(&out)
        );
    }
    // Nothing was written into the protected directories.
    assert!(!base.join("state/backups").exists());
    assert!(!base.join("credentials/pg").exists() && !base.join("etc/pg").exists());

    // A root that does not hold the destination: refused, naming the setting.
    s.host_config(env.var("PG_BINDIR"), &base.join("backups"));
    let elsewhere = tempfile::tempdir().unwrap();
    s.jobs(&job(
        "pg",
        &pg_source(&db, ""),
        &format!("local: {{path: {}}}", elsewhere.path().display()),
        "",
    ));
    let (doc, ok) = s.run_job("pg");
    assert!(!ok);
    let message = doc["run"]["message"].as_str().unwrap();
    assert!(
        message.contains("outside jobs.localBackupRoot"),
        "{message}"
    );
    assert_eq!(std::fs::read_dir(elsewhere.path()).unwrap().count(), 0);
    // No root at all: local destinations are refused and the message says what to set.
    std::fs::write(
        s.config(),
        format!(
            "stateDir: {}\ncredentialsDir: {}\njobs: {{postgresBinDir: {}}}\n",
            base.join("state").display(),
            base.join("credentials").display(),
            env.var("PG_BINDIR")
        ),
    )
    .unwrap();
    s.jobs(&job(
        "pg",
        &pg_source(&db, ""),
        &format!("local: {{path: {}}}", base.join("backups").display()),
        "",
    ));
    let (doc, ok) = s.run_job("pg");
    assert!(!ok);
    assert!(
        doc["run"]["message"]
            .as_str()
            .unwrap()
            .contains("local destinations need jobs.localBackupRoot"),
        "{doc:#}"
    );
}

#[test]
fn bin_dir_in_a_job_fails_validate_and_says_what_to_do() {
    let s = Setup::new();
    s.jobs(&job(
        "pg",
        "postgres: {database: app, username: app, binDir: /tmp/evil}",
        "local: {path: /b}",
        "",
    ));
    let out = s.driftless(&["validate"]);
    assert!(!out.status.success(), "{}", support::text(&out));
    let text = support::text(&out);
    assert!(
        text.contains("spec.source.postgres.binDir")
            && text.contains("set jobs.postgresBinDir in the host configuration"),
        "{text}"
    );
    // A socket directory on the ops host is not a host either.
    s.jobs(&job(
        "pg",
        "postgres: {host: /var/run/postgresql, database: app, username: app}",
        "local: {path: /b}",
        "",
    ));
    let out = s.driftless(&["validate"]);
    assert!(!out.status.success());
    assert!(
        support::text(&out).contains("is not a host name or IP address"),
        "{}",
        support::text(&out)
    );
}

/// A new age identity made by the stock `age-keygen` in `dir/name`; returns its public key.
fn age_keygen(dir: &Path, name: &str) -> String {
    let file = dir.join(name);
    let _ = std::fs::remove_file(&file);
    run_ok(Command::new("age-keygen").arg("-o").arg(&file));
    run_ok(Command::new("age-keygen").arg("-y").arg(&file))
        .trim()
        .to_owned()
}

/// The secret key line of an identity file.
fn secret_key(file: &Path) -> String {
    std::fs::read_to_string(file)
        .unwrap()
        .lines()
        .find(|l| l.starts_with("AGE-SECRET-KEY-"))
        .unwrap()
        .to_owned()
}

/// `age --decrypt -i IDENTITY -o OUT FILE` with the stock `age` program.
fn stock_age_decrypt(identity: &Path, file: &Path, out: &Path) -> Output {
    Command::new("age")
        .arg("--decrypt")
        .arg("-i")
        .arg(identity)
        .arg("-o")
        .arg(out)
        .arg(file)
        .output()
        .unwrap()
}

fn sha256_file(path: &Path) -> String {
    support::hex(&Sha256::digest(std::fs::read(path).unwrap()))
}

#[tokio::test]
async fn encrypted_backups_restore_equal_and_their_files_open_only_with_the_identity() {
    let env = TestEnv::get();
    let db = env.database("bk_enc");
    seed(&db);
    let before = fingerprint(&db);
    let bucket = env.bucket("bk-enc-src").await;
    let src = minio(&bucket);
    let sentinel = "plaintext-sentinel-c0ffee";
    for i in 0..20 {
        src.put(
            &ObjPath::from(format!("data/o-{i:02}.txt")),
            PutPayload::from(format!("{sentinel} {i} ").repeat(50 * (i + 1)).into_bytes()),
        )
        .await
        .unwrap();
    }
    // More than one 8 MiB part and many 64 KiB age chunks.
    let big: Vec<u8> = (0..9 * 1024 * 1024 + 17)
        .map(|n: u32| n.wrapping_mul(2654435761).to_le_bytes()[1])
        .collect();
    src.put(&ObjPath::from("data/big.bin"), PutPayload::from(big))
        .await
        .unwrap();
    let original = contents(&src, "data").await;
    let backups = env.bucket("bk-enc-dst").await;

    let s = Setup::new();
    let local = s.local();
    let host_key = age_keygen(&s.credentials(), "backup-identity");
    // A second recipient: the offline recovery key, kept away from the ops host.
    let keys = tempfile::tempdir().unwrap();
    let offline = age_keygen(keys.path(), "offline.txt");
    age_keygen(keys.path(), "stranger.txt");
    s.encryption("{identityFile: backup-identity, required: true}");
    let extra =
        format!("  restoreDrill: true\n  encryption: {{ageRecipients: [{host_key}, {offline}]}}\n");
    s.jobs(&format!(
        "{}{}",
        job(
            "pg-enc",
            &pg_source(&db, ", globals: true"),
            &format!("local: {{path: {}}}", local.display()),
            &extra
        ),
        job(
            "bucket-enc",
            &format!(
                "s3: {{endpoint: \"{}\", bucket: {bucket}, prefix: data, accessKeyFile: s3-access, secretKeyFile: s3-secret}}",
                env.var("MINIO_ENDPOINT")
            ),
            &s3_dest(&backups, "enc"),
            &extra
        ),
    ));
    let out = s.driftless(&["validate"]);
    assert!(out.status.success(), "{}", support::text(&out));

    // PostgreSQL to a directory: verified, drilled (decrypted with the host's identity).
    let (doc, ok) = s.run_job("pg-enc");
    assert!(ok, "{doc:#}");
    assert_eq!(doc["report"]["drill"]["ok"], true, "{doc:#}");
    assert_eq!(doc["report"]["drill"]["detail"]["rows"], 20_500, "{doc:#}");
    assert_eq!(doc["report"]["backup"]["encrypted"], true, "{doc:#}");
    let id = doc["report"]["backup"]["id"].as_str().unwrap().to_owned();
    let dir = local.join(format!("pg-enc/{id}"));
    let m = manifest_of(&local, "pg-enc", &id);
    assert_eq!(m["encryption"]["format"], "age");
    assert_eq!(m["encryption"]["recipients"], json!([host_key, offline]));
    let mut stored: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    stored.sort();
    assert_eq!(
        stored,
        [
            "driftless-run.json",
            "dump.pgcustom.age",
            "globals.sql.age",
            "manifest.json"
        ],
        "only ciphertext is stored"
    );
    let dump = &m["files"][0];
    assert_eq!(dump["name"], "dump.pgcustom");
    // The manifest: the stored file's size and sha256, and the plaintext's.
    let cipher = std::fs::read(dir.join("dump.pgcustom.age")).unwrap();
    assert!(cipher.starts_with(b"age-encryption.org/v1\n"));
    assert_eq!(dump["sha256"], support::hex(&Sha256::digest(&cipher)));
    assert_eq!(dump["bytes"], cipher.len() as u64);
    assert!(dump["plaintext"]["bytes"].as_u64().unwrap() > 10_000);
    assert_ne!(dump["plaintext"]["sha256"], dump["sha256"]);
    let globals = std::fs::read(dir.join("globals.sql.age")).unwrap();
    assert!(
        !String::from_utf8_lossy(&globals).contains("CREATE ROLE"),
        "the globals are not readable"
    );

    // The stock age program opens it with the host's identity and with the offline key (the
    // documented restore without driftless), and not with any other key.
    let plain = keys.path().join("dump.pgcustom");
    for identity in [
        s.credentials().join("backup-identity"),
        keys.path().join("offline.txt"),
    ] {
        let out = stock_age_decrypt(&identity, &dir.join("dump.pgcustom.age"), &plain);
        assert!(out.status.success(), "{}", support::text(&out));
        assert_eq!(
            sha256_file(&plain),
            dump["plaintext"]["sha256"].as_str().unwrap()
        );
        assert!(std::fs::read(&plain).unwrap().starts_with(b"PGDMP"));
    }
    let refused = keys.path().join("refused");
    let out = stock_age_decrypt(
        &keys.path().join("stranger.txt"),
        &dir.join("dump.pgcustom.age"),
        &refused,
    );
    assert!(!out.status.success(), "a stranger's key does not open it");
    assert!(!refused.exists() || std::fs::read(&refused).unwrap().is_empty());
    let by_hand = format!("{db}_by_hand");
    psql("postgres", &format!("CREATE DATABASE {by_hand}"));
    run_ok(
        env.pg_command("pg_restore")
            .args(["--single-transaction", "--exit-on-error", "-d", &by_hand])
            .arg(&plain),
    );
    assert_eq!(
        fingerprint(&by_hand),
        before,
        "restored by hand from age's output"
    );
    drop_db(&by_hand);

    // driftless restores it: decrypted, both digests checked, equal.
    drop_db(&db);
    let out = s.driftless(&["backup", "restore", "pg-enc", "latest"]);
    assert!(out.status.success(), "{}", support::text(&out));
    assert_eq!(fingerprint(&db), before);
    let scratch = s.path().join("state/backup-scratch");
    assert!(
        walk(&scratch).is_empty(),
        "no decrypted dump is left: {:?}",
        walk(&scratch)
    );
    let listed = s.driftless(&["backup", "list", "pg-enc"]);
    assert!(
        support::text(&listed).contains("encrypted"),
        "{}",
        support::text(&listed)
    );

    // A bucket to MinIO: every stored object is an age file, none readable. Run with trace
    // logs: the plaintext (sentinel) appears in no log line and no report.
    let out = s
        .command(&["jobs", "run", "bucket-enc", "-o", "json"])
        .env("DRIFTLESS_LOG", "trace")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", support::text(&out));
    let run_text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        support::text(&out)
    );
    assert!(
        !run_text.contains(sentinel),
        "plaintext in the run's output or logs"
    );
    let doc: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(doc["report"]["drill"]["ok"], true, "{doc:#}");
    let bid = doc["report"]["backup"]["id"].as_str().unwrap().to_owned();
    let stored = minio(&backups);
    let prefix = format!("enc/bucket-enc/{bid}/objects");
    let objects = contents(&stored, &prefix).await;
    assert_eq!(objects.len(), original.len());
    for (key, _) in &objects {
        assert!(key.ends_with(".age"), "{key}");
        let body = stored
            .get(&ObjPath::from(format!("{prefix}/{key}")))
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap();
        assert!(body.starts_with(b"age-encryption.org/v1\n"), "{key}");
        assert!(
            !String::from_utf8_lossy(&body).contains(sentinel),
            "{key} is not readable"
        );
    }
    // Restored into a new bucket: byte-identical to the source.
    let target = env.bucket("bk-enc-restore").await;
    let out = s.driftless(&[
        "backup",
        "restore",
        "bucket-enc",
        "latest",
        "--bucket",
        &target,
        "--prefix",
        "copy",
    ]);
    assert!(out.status.success(), "{}", support::text(&out));
    same(&contents(&minio(&target), "copy").await, &original);
    // One object by hand with the stock program.
    let one = keys.path().join("o-03.txt.age");
    let body = stored
        .get(&ObjPath::from(format!("{prefix}/o-03.txt.age")))
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    std::fs::write(&one, &body).unwrap();
    let out = stock_age_decrypt(
        &keys.path().join("offline.txt"),
        &one,
        &keys.path().join("o-03.txt"),
    );
    assert!(out.status.success(), "{}", support::text(&out));
    assert_eq!(
        std::fs::read_to_string(keys.path().join("o-03.txt")).unwrap(),
        format!("{sentinel} 3 ").repeat(200)
    );

    // No plaintext anywhere driftless writes: not in the destination bucket (objects,
    // manifest, run marker), not in the state directory (run records, status), not in the
    // local backups.
    for (key, _) in contents(&stored, "enc").await {
        let body = stored
            .get(&ObjPath::from(format!("enc/{key}")))
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap();
        assert!(
            !String::from_utf8_lossy(&body).contains(sentinel),
            "enc/{key} holds plaintext"
        );
    }
    for file in walk(s.path().join("state").as_path())
        .into_iter()
        .chain(walk(&local))
    {
        let body = std::fs::read(&file).unwrap();
        assert!(
            !String::from_utf8_lossy(&body).contains(sentinel),
            "{} holds plaintext",
            file.display()
        );
    }
}

#[tokio::test]
async fn a_wrong_identity_fails_clearly_and_changes_nothing() {
    let env = TestEnv::get();
    let db = env.database("bk_wrongkey");
    seed(&db);
    let before = fingerprint(&db);
    let bucket = env.bucket("bk-wk").await;
    for i in 0..3 {
        minio(&bucket)
            .put(
                &ObjPath::from(format!("d/o-{i}")),
                PutPayload::from(format!("object {i}").into_bytes()),
            )
            .await
            .unwrap();
    }
    let s = Setup::new();
    let local = s.local();
    let host_key = age_keygen(&s.credentials(), "backup-identity");
    s.encryption("{identityFile: backup-identity}");
    let extra = format!("  encryption: {{ageRecipients: [{host_key}]}}\n");
    let dest = format!("local: {{path: {}}}", local.display());
    s.jobs(&format!(
        "{}{}",
        job("pg-enc", &pg_source(&db, ""), &dest, &extra),
        job(
            "bucket-enc",
            &format!(
                "s3: {{endpoint: \"{}\", bucket: {bucket}, prefix: d, accessKeyFile: s3-access, secretKeyFile: s3-secret}}",
                env.var("MINIO_ENDPOINT")
            ),
            &dest,
            &extra
        ),
    ));
    for name in ["pg-enc", "bucket-enc"] {
        let (doc, ok) = s.run_job(name);
        assert!(ok, "{doc:#}");
    }
    let kept = std::fs::read(s.credentials().join("backup-identity")).unwrap();

    // The host's identity is replaced by another key.
    let other = age_keygen(&s.credentials(), "backup-identity");
    let copy = format!("{db}_wk");
    let out = s.driftless(&["backup", "restore", "pg-enc", "latest", "--database", &copy]);
    assert_eq!(out.status.code(), Some(2), "{}", support::text(&out));
    let text = support::text(&out);
    assert!(
        text.contains("is none of them")
            && text.contains(&host_key)
            && text.contains(&other)
            && text.contains("nothing was changed"),
        "{text}"
    );
    assert!(databases_like(&copy).is_empty(), "no database was created");
    // An S3 restore with --force would delete extra objects first: nothing is deleted.
    let target = env.bucket("bk-wk-target").await;
    minio(&target)
        .put(
            &ObjPath::from("copy/extra.txt"),
            PutPayload::from_static(b"x"),
        )
        .await
        .unwrap();
    let out = s.driftless(&[
        "backup",
        "restore",
        "bucket-enc",
        "latest",
        "--bucket",
        &target,
        "--prefix",
        "copy",
        "--force",
    ]);
    assert!(!out.status.success());
    assert!(
        support::text(&out).contains("is none of them"),
        "{}",
        support::text(&out)
    );
    assert_eq!(
        contents(&minio(&target), "copy").await,
        [("extra.txt".to_owned(), support::hex(&Sha256::digest(b"x")))]
    );
    // A run (backup, verify, drill) with it is refused before anything is written or removed.
    let (doc, ok) = s.run_job("pg-enc");
    assert!(!ok);
    let message = doc["run"]["message"].as_str().unwrap();
    assert!(
        message.contains("not among the job's recipients") && message.contains(&other),
        "{message}"
    );
    let listed = s.list("pg-enc");
    assert_eq!(listed["backups"].as_array().unwrap().len(), 1, "{listed:#}");
    assert!(listed["incomplete"].as_array().unwrap().is_empty());
    assert_eq!(std::fs::read_dir(local.join("pg-enc")).unwrap().count(), 1);

    // No identity at all: each says what to set.
    s.encryption("{}");
    let (doc, ok) = s.run_job("pg-enc");
    assert!(!ok);
    assert!(
        doc["run"]["message"]
            .as_str()
            .unwrap()
            .contains("set encryption.identityFile"),
        "{doc:#}"
    );
    let out = s.driftless(&["backup", "restore", "pg-enc", "latest", "--database", &copy]);
    assert!(
        !out.status.success() && support::text(&out).contains("set encryption.identityFile"),
        "{}",
        support::text(&out)
    );

    // The right identity again: restores.
    std::fs::write(s.credentials().join("backup-identity"), kept).unwrap();
    s.encryption("{identityFile: backup-identity}");
    let out = s.driftless(&["backup", "restore", "pg-enc", "latest", "--database", &copy]);
    assert!(out.status.success(), "{}", support::text(&out));
    assert_eq!(fingerprint(&copy), before);
    drop_db(&copy);
}

#[tokio::test]
async fn the_host_decides_encryption_and_its_identity_never_leaves_it() {
    let env = TestEnv::get();
    let db = env.database("bk_hostenc");
    psql(&db, "CREATE TABLE t (x int); INSERT INTO t VALUES (1)");
    let s = Setup::new();
    let local = s.local();
    let host_key = age_keygen(&s.credentials(), "backup-identity");
    let secret = secret_key(&s.credentials().join("backup-identity"));
    let keys = tempfile::tempdir().unwrap();
    let stranger = age_keygen(keys.path(), "stranger.txt");
    let dest = format!("local: {{path: {}}}", local.display());

    // The host requires encryption: a commit that drops it (or sets it to null) is refused
    // before anything is written.
    s.encryption("{identityFile: backup-identity, required: true}");
    for extra in ["", "  encryption: null\n"] {
        s.jobs(&job("pg", &pg_source(&db, ""), &dest, extra));
        let (doc, ok) = s.run_job("pg");
        assert!(!ok, "{doc:#}");
        assert!(
            doc["run"]["message"]
                .as_str()
                .unwrap()
                .contains("requires encrypted backups (encryption.required)"),
            "{doc:#}"
        );
        assert!(
            walk(&local).is_empty(),
            "nothing written: {:?}",
            walk(&local)
        );
    }

    // The host pins the recipients: a commit adding its own key is refused, naming it.
    s.encryption(&format!(
        "{{identityFile: backup-identity, allowedRecipients: [{host_key}]}}"
    ));
    s.jobs(&job(
        "pg",
        &pg_source(&db, ""),
        &dest,
        &format!("  encryption: {{ageRecipients: [{host_key}, {stranger}]}}\n"),
    ));
    let (doc, ok) = s.run_job("pg");
    assert!(!ok);
    let message = doc["run"]["message"].as_str().unwrap();
    assert!(
        message.contains(&stranger) && message.contains("encryption.allowedRecipients"),
        "{message}"
    );
    assert!(walk(&local).is_empty());

    // A commit cannot read the identity: not as a job's credential file, not into a Secret.
    s.jobs(&job(
        "pg",
        &pg_source(&db, "").replace("passwordFile: pg-password", "passwordFile: backup-identity"),
        &dest,
        &format!("  encryption: {{ageRecipients: [{host_key}]}}\n"),
    ));
    let (doc, ok) = s.run_job("pg");
    assert!(!ok);
    let message = doc["run"]["message"].as_str().unwrap();
    assert!(
        message.contains("the host configuration uses itself (encryption.identityFile)"),
        "{message}"
    );
    let stack_file = s.path().join("stack/app/stack.yaml");
    let stack = std::fs::read_to_string(&stack_file).unwrap();
    std::fs::write(
        &stack_file,
        stack.replace(
            "spec: {namespace: app}",
            "spec: {namespace: app, secrets: [{name: leak, fromFiles: {key: backup-identity}}]}",
        ),
    )
    .unwrap();
    let out = s.driftless(&["validate"]);
    assert!(!out.status.success());
    assert!(
        support::text(&out).contains("encryption.identityFile")
            && !support::text(&out).contains(&secret),
        "{}",
        support::text(&out)
    );
    std::fs::write(&stack_file, stack).unwrap();

    // A private key in a job is refused by validate, and never echoed.
    s.jobs(&job(
        "pg",
        &pg_source(&db, ""),
        &dest,
        &format!("  encryption: {{ageRecipients: [{secret}]}}\n"),
    ));
    let out = s.driftless(&["validate"]);
    assert!(!out.status.success());
    assert!(
        support::text(&out).contains("is an age secret key")
            && !support::text(&out).contains(&secret[16..]),
        "{}",
        support::text(&out)
    );

    // The identity appears in no log line, report, run record or backup file.
    s.jobs(&job(
        "pg-sentinel",
        &pg_source(&db, ""),
        &dest,
        &format!("  restoreDrill: true\n  encryption: {{ageRecipients: [{host_key}]}}\n"),
    ));
    let out = s
        .command(&["jobs", "run", "pg-sentinel", "-o", "json"])
        .env("DRIFTLESS_LOG", "trace")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", support::text(&out));
    let restored = s
        .command(&[
            "backup",
            "restore",
            "pg-sentinel",
            "latest",
            "--database",
            &format!("{db}_h"),
        ])
        .env("DRIFTLESS_LOG", "trace")
        .output()
        .unwrap();
    assert!(restored.status.success(), "{}", support::text(&restored));
    drop_db(&format!("{db}_h"));
    let key_body = &secret["AGE-SECRET-KEY-1".len()..];
    for text in [support::text(&out), support::text(&restored)] {
        assert!(!text.contains(key_body), "the identity was logged");
    }
    for file in walk(s.path().join("state").as_path())
        .into_iter()
        .chain(walk(&local))
    {
        let body = String::from_utf8_lossy(&std::fs::read(&file).unwrap()).to_uppercase();
        assert!(
            !body.contains(key_body),
            "{} holds the identity",
            file.display()
        );
    }
}

/// A registry of this test's own on `storage` (the shared one must not be stopped); its
/// address is the one it logs once bound.
struct PrivateRegistry {
    child: std::process::Child,
    url: String,
}

impl PrivateRegistry {
    async fn start(config_dir: &Path, storage: &Path) -> PrivateRegistry {
        use std::io::BufRead;
        let config = config_dir.join("registry.yml");
        std::fs::write(
            &config,
            format!(
                "version: 0.1\nlog: {{level: info, accesslog: {{disabled: true}}}}\nstorage:\n  filesystem: {{rootdirectory: {}}}\nhttp:\n  addr: 127.0.0.1:0\n",
                storage.display()
            ),
        )
        .unwrap();
        let mut child = Command::new(TestEnv::get().var("REGISTRY_BIN"))
            .arg("serve")
            .arg(&config)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut lines = std::io::BufReader::new(child.stderr.take().unwrap()).lines();
        let mut seen = Vec::new();
        let addr = loop {
            let Some(Ok(line)) = lines.next() else {
                panic!("the registry ended before it listened: {seen:#?}");
            };
            if let Some(rest) = line.split("listening on ").nth(1) {
                break rest.split('"').next().unwrap().to_owned();
            }
            seen.push(line);
        };
        // Keep draining its log (a full pipe would block it).
        std::thread::spawn(move || for _ in lines {});
        let url = format!("http://{addr}");
        eventually("registry up", Duration::from_secs(20), || {
            let url = url.clone();
            async move {
                reqwest::get(format!("{url}/v2/"))
                    .await
                    .ok()
                    .filter(|r| r.status().is_success())
            }
        })
        .await;
        PrivateRegistry { child, url }
    }

    /// The manifest digest `repo:tag` resolves to, and whether each of its blobs is served.
    async fn image(&self, repo: &str, tag: &str) -> Option<(String, bool)> {
        let http = support::registry::http();
        let resp = http
            .get(format!("{}/v2/{repo}/manifests/{tag}", self.url))
            .header("accept", support::registry::OCI_MANIFEST)
            .send()
            .await
            .ok()?;
        if !resp.status().is_success() {
            return None;
        }
        let body = resp.bytes().await.ok()?;
        let m: Value = serde_json::from_slice(&body).ok()?;
        let mut digests = vec![m["config"]["digest"].as_str()?.to_owned()];
        for l in m["layers"].as_array()? {
            digests.push(l["digest"].as_str()?.to_owned());
        }
        let mut all = true;
        for d in digests {
            let blob = http
                .get(format!("{}/v2/{repo}/blobs/{d}", self.url))
                .send()
                .await
                .ok()?;
            all &= blob.status().is_success()
                && support::registry::sha256_digest(&blob.bytes().await.ok()?) == d;
        }
        Some((support::registry::sha256_digest(&body), all))
    }
}

impl Drop for PrivateRegistry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The registry's pod as the bundled stack runs it (Deployment pods have generated names, so
/// the job finds it through the Service): a KWOK pod whose execs run in the environment's exec
/// directory.
async fn registry_pod(ns: &support::TestNamespace) -> String {
    let pod_name = support::unique_name("docker-registry");
    let pods: Api<Pod> = Api::namespaced(ns.client(), &ns.name);
    let pod: Pod = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": pod_name, "labels": {"app": "docker-registry"}},
        "spec": {"nodeSelector": {"type": "kwok"},
            "containers": [{"name": "registry", "image": "registry.invalid/registry:2.8.3", "ports": [{"containerPort": 5000}]}]}
    }))
    .unwrap();
    pods.patch(
        &pod_name,
        &PatchParams::apply("driftless-test"),
        &Patch::Apply(&pod),
    )
    .await
    .unwrap();
    let services: Api<k8s_openapi::api::core::v1::Service> = Api::namespaced(ns.client(), &ns.name);
    let svc: k8s_openapi::api::core::v1::Service = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "docker-registry"},
        "spec": {"selector": {"app": "docker-registry"}, "ports": [{"name": "http", "port": 5000}]}
    }))
    .unwrap();
    services
        .patch(
            "docker-registry",
            &PatchParams::apply("driftless-test"),
            &Patch::Apply(&svc),
        )
        .await
        .unwrap();
    eventually("registry pod ready", Duration::from_secs(60), || async {
        let p = pods.get(&pod_name).await.ok()?;
        let s = p.status?;
        (s.phase.as_deref() == Some("Running")
            && s.conditions?
                .iter()
                .any(|c| c.type_ == "Ready" && c.status == "True"))
        .then_some(())
    })
    .await;
    pod_name
}

/// The bundled `registry-data` job (stack/ducklake/storage/jobs.yaml) as shipped, encrypted,
/// against a real registry's storage: the archive holds the registry's files, retention keeps
/// the newest of the day, and the documented restore (`age --decrypt … | kubectl exec -i …
/// tar xf -`) brings every image back after the storage was lost.
#[tokio::test]
async fn the_bundled_registry_backup_restores_the_registrys_images() {
    let env = TestEnv::get();
    let ns = env.namespace("bk-reg").await;
    let pod = registry_pod(&ns).await;
    // KWOK runs the pod's execs in <run dir>/exec: the registry's storage lives there under a
    // name of this test's own (the pod's /var/lib/registry).
    let exec_dir = Path::new(env.var("DRIFTLESS_TESTENV_RUN")).join("exec");
    let root = support::unique_name("registry-root");
    let storage = exec_dir.join(&root).join("var/lib/registry");
    let s = Setup::new();
    let registry = PrivateRegistry::start(s.path(), &storage).await;
    let images = [
        ("ducklake/backend", "v1.0.2"),
        ("ducklake/backend", "dev"),
        ("floe/dagster-user-code", "1.4.0"),
    ];
    let mut pushed = Vec::new();
    for (i, (repo, tag)) in images.iter().enumerate() {
        let (digest, _) = support::registry::push_image(
            &registry.url,
            repo,
            tag,
            "2026-01-01T00:00:00Z",
            &format!("salt-{i}"),
        )
        .await;
        pushed.push(digest);
    }

    // The job as shipped; only what differs on the test cluster changes: the namespace, the
    // pod's path (relative to KWOK's exec directory), the backup directory and the recipient
    // (the prod profile's variable; here this test's host key).
    let bundled = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("stack/ducklake/storage/jobs.yaml"),
    )
    .unwrap();
    let shipped = bundled
        .split("\n---\n")
        .find(|d| d.contains("name: registry-data"))
        .expect("stack/ducklake/storage/jobs.yaml has the registry-data job");
    for expected in [
        "service: docker-registry",
        "container: registry",
        "copyOut: [/var/lib/registry]",
        "namespace: storage",
        "encryption: ${BACKUP_ENCRYPTION}",
    ] {
        assert!(shipped.contains(expected), "{expected}: {shipped}");
    }
    let local = s.local();
    let host_key = age_keygen(&s.credentials(), "backup-identity");
    s.encryption("{identityFile: backup-identity, required: true}");
    s.jobs(&format!(
        "{}\n",
        shipped
            .trim_end()
            .replace(
                "${BACKUP_ENCRYPTION}",
                &format!("{{ageRecipients: [{host_key}]}}")
            )
            .replace("namespace: storage", &format!("namespace: {}", ns.name))
            .replace(
                "copyOut: [/var/lib/registry]",
                &format!("copyOut: [{root}/var/lib/registry]")
            )
            .replace("${BACKUP_DIR}", &local.display().to_string())
    ));
    let out = s.driftless(&["validate"]);
    assert!(out.status.success(), "{}", support::text(&out));

    let (doc, ok) = s.run_job("registry-data");
    assert!(ok, "{doc:#}");
    assert_eq!(doc["report"]["backup"]["encrypted"], true, "{doc:#}");
    let first = doc["report"]["backup"]["id"].as_str().unwrap().to_owned();
    let m = manifest_of(&local, "registry-data", &first);
    assert_eq!(m["details"]["pod"], format!("{}/{pod}", ns.name), "{m:#}");
    let stored = local.join(format!("registry-data/{first}/files.tar.age"));
    assert!(
        std::fs::read(&stored)
            .unwrap()
            .starts_with(b"age-encryption.org/v1\n")
    );

    // A second run the same day: retention (keepDaily) keeps the newest only.
    let (doc, ok) = s.run_job("registry-data");
    assert!(ok, "{doc:#}");
    let second = doc["report"]["backup"]["id"].as_str().unwrap().to_owned();
    let kept = ids(&s.list("registry-data"));
    if first[..8] == second[..8] {
        assert_eq!(
            kept,
            std::slice::from_ref(&second),
            "keepDaily keeps the day's newest"
        );
    } else {
        assert!(kept.contains(&second), "{kept:?}");
    }

    // Disaster: the registry's storage is lost.
    drop(registry);
    std::fs::remove_dir_all(exec_dir.join(&root)).unwrap();

    // The documented restore: decrypt with the stock `age` and unpack in the registry's pod.
    // (In the pod, `tar xf - -C /` puts var/lib/registry back; KWOK's exec directory stands
    // for the pod's root here, which is where `tar xf -` runs.)
    let archive = local.join(format!("registry-data/{second}/files.tar.age"));
    let restore = format!(
        "age --decrypt -i {} {} | {} exec -i -n {} {pod} -c registry -- tar xf -",
        s.credentials().join("backup-identity").display(),
        archive.display(),
        env.var("KUBECTL"),
        ns.name
    );
    run_ok(
        Command::new("bash")
            .args(["-o", "pipefail", "-c", &restore])
            .env("KUBECONFIG", env.var("KUBECONFIG")),
    );
    let registry = PrivateRegistry::start(s.path(), &storage).await;
    for ((repo, tag), digest) in images.iter().zip(&pushed) {
        assert_eq!(
            registry.image(repo, tag).await,
            Some((digest.clone(), true)),
            "{repo}:{tag} is back, every blob intact"
        );
    }
    drop(registry);
    std::fs::remove_dir_all(exec_dir.join(&root)).unwrap();
}
