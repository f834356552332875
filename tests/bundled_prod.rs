//! The production rows of the bundled stacks' `prod` profile (stack/README.md "Production"):
//! each renders as described there, and where a real server can show the setting works (the
//! registry's TLS and htpasswd authentication), it is run with the rendered configuration.
//! `bundled_stack.rs` syncs the DuckLake `prod` profile to the test cluster and validates both
//! profiles with the shipped policies.

mod support;

use std::path::Path;
use std::process::{Command, Stdio};

use serde_json::{Value, json};
use support::TestEnv;

/// The stacks of `profile`, rendered offline (host secrets as placeholders).
fn render(profile: &str) -> Vec<driftless::stack::RenderedStack> {
    let env = TestEnv::get();
    let renderers = driftless::stack::Renderers {
        helm: env.var("HELM").into(),
        kubectl: env.var("KUBECTL").into(),
        ..Default::default()
    };
    driftless::stack::load_and_render(
        Path::new(env!("CARGO_MANIFEST_DIR")),
        Some(profile),
        &driftless::credentials::Credentials::in_dir(None),
        true,
        &renderers,
    )
    .unwrap()
    .0
}

/// The object `kind` `ns/name` of `stacks` (panics naming it when absent).
fn object(stacks: &[driftless::stack::RenderedStack], kind: &str, ns: &str, name: &str) -> Value {
    find(stacks, kind, ns, name).unwrap_or_else(|| panic!("no {kind} {ns}/{name} in the render"))
}

fn find(
    stacks: &[driftless::stack::RenderedStack],
    kind: &str,
    ns: &str,
    name: &str,
) -> Option<Value> {
    stacks
        .iter()
        .flat_map(|s| &s.objects)
        .find(|o| {
            o.key.kind == kind
                && o.key.namespace.as_deref().unwrap_or("") == ns
                && o.key.name == name
        })
        .map(|o| o.object.clone())
}

/// The loaded jobs of `profile`.
fn jobs(profile: &str) -> Vec<driftless::jobs::model::Job> {
    let env = TestEnv::get();
    let renderers = driftless::stack::Renderers {
        helm: env.var("HELM").into(),
        kubectl: env.var("KUBECTL").into(),
        ..Default::default()
    };
    let stacks = driftless::stack::load::load_repo_with(
        Path::new(env!("CARGO_MANIFEST_DIR")),
        Some(profile),
        driftless::stack::load::LoadLimits::default(),
        &renderers,
    )
    .unwrap();
    driftless::jobs::model::load_jobs(&stacks).unwrap()
}

/// The single YAML document `text`, as JSON.
fn yaml(text: &str) -> Value {
    let mut docs = driftless::yaml::parse_documents(Path::new("config.yml"), text).unwrap();
    assert_eq!(docs.len(), 1, "{text}");
    docs.remove(0)
}

/// The container `name` of a workload's pod template.
fn container<'a>(workload: &'a Value, name: &str) -> &'a Value {
    workload["spec"]["template"]["spec"]["containers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no container {name}: {workload:#}"))
}

fn run_ok(cmd: &mut Command) -> String {
    support::run_ok(cmd)
}

/// A CA and a server certificate for `names` signed by it, written with openssl into `dir`:
/// `ca.crt`, `tls.crt`, `tls.key`.
fn certificate(dir: &Path, names: &[&str]) {
    let p = |f: &str| dir.join(f).to_str().unwrap().to_owned();
    run_ok(Command::new("openssl").args([
        "req",
        "-x509",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
        "-keyout",
        &p("ca.key"),
        "-out",
        &p("ca.crt"),
        "-subj",
        "/CN=bundled-prod-test-ca",
        "-days",
        "1",
    ]));
    run_ok(Command::new("openssl").args([
        "req",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
        "-keyout",
        &p("tls.key"),
        "-out",
        &p("tls.csr"),
        "-subj",
        "/CN=docker-registry",
    ]));
    let sans: Vec<String> = names.iter().map(|n| format!("DNS:{n}")).collect();
    std::fs::write(
        dir.join("ext"),
        format!("subjectAltName={}\n", sans.join(",")),
    )
    .unwrap();
    run_ok(Command::new("openssl").args([
        "x509",
        "-req",
        "-in",
        &p("tls.csr"),
        "-CA",
        &p("ca.crt"),
        "-CAkey",
        &p("ca.key"),
        "-CAcreateserial",
        "-out",
        &p("tls.crt"),
        "-days",
        "1",
        "-extfile",
        &p("ext"),
    ]));
}

/// A child process killed when dropped.
struct Child(std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `curl` over the Unix socket `sock` to `url`; the HTTP status code (000: no HTTP answer) and
/// the response headers.
fn curl(sock: &Path, url: &str, extra: &[&str]) -> (String, String) {
    let out = Command::new("curl")
        .args(["-sS", "-o", "/dev/null", "-D", "-", "-w", "%{http_code}"])
        .arg("--unix-socket")
        .arg(sock)
        .args(extra)
        .arg(url)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let code = stdout
        .get(stdout.len().saturating_sub(3)..)
        .unwrap_or("")
        .to_owned();
    (code, stdout)
}

/// Seed 000 items 6-7: in `prod` the registry serves HTTPS only, with the certificate of the
/// Secret `docker-registry-tls`, and answers only users of the htpasswd file of
/// `docker-registry-htpasswd` (both from host files); `local` keeps plain HTTP without
/// authentication. The rendered `prod` config.yml is run by a real registry (the test
/// environment's binary): anonymous and wrong-password requests get 401, a user of the htpasswd
/// file 200, plain HTTP is refused, and the certificate verifies against its CA under the
/// Service's name. The cleanup job logs in with host files in `prod` only.
#[test]
fn registry_in_prod_serves_https_to_htpasswd_users_only() {
    let prod = render("prod");
    let local = render("local");
    let config = |stacks: &[driftless::stack::RenderedStack]| {
        let cm = object(stacks, "ConfigMap", "storage", "docker-registry-config");
        cm["data"]["config.yml"].as_str().unwrap().to_owned()
    };
    let (prod_text, local_text) = (config(&prod), config(&local));
    let mut prod_config = yaml(&prod_text);
    let local_config = yaml(&local_text);
    assert_eq!(
        prod_config["http"]["tls"],
        json!({"certificate": "/etc/docker/registry-tls/tls.crt", "key": "/etc/docker/registry-tls/tls.key"})
    );
    assert_eq!(
        prod_config["auth"],
        json!({"htpasswd": {"realm": "ducklake-registry", "path": "/etc/docker/registry-auth/htpasswd"}})
    );
    assert!(local_config.get("auth").is_none() && local_config["http"].get("tls").is_none());
    // Nothing else differs: the prod overlay restates the base's file (change both together).
    prod_config["http"].as_object_mut().unwrap().remove("tls");
    prod_config.as_object_mut().unwrap().remove("auth");
    assert_eq!(
        prod_config, local_config,
        "prod config.yml = base + tls + auth"
    );

    // The pod mounts both Secrets read-only where config.yml names them; TCP probes (a 401 is
    // a live registry).
    let deploy = object(&prod, "Deployment", "storage", "docker-registry");
    let c = container(&deploy, "registry");
    let mounts = c["volumeMounts"].as_array().unwrap();
    let volumes = deploy["spec"]["template"]["spec"]["volumes"]
        .as_array()
        .unwrap();
    for (path, secret) in [
        ("/etc/docker/registry-tls", "docker-registry-tls"),
        ("/etc/docker/registry-auth", "docker-registry-htpasswd"),
    ] {
        let m = mounts
            .iter()
            .find(|m| m["mountPath"] == path)
            .unwrap_or_else(|| panic!("{path} mounted: {c:#}"));
        assert_eq!(m["readOnly"], true);
        let v = volumes.iter().find(|v| v["name"] == m["name"]).unwrap();
        assert_eq!(v["secret"]["secretName"], secret);
    }
    for probe in ["readinessProbe", "livenessProbe"] {
        assert_eq!(c[probe]["tcpSocket"]["port"], "https", "{probe}");
        assert!(c[probe].get("httpGet").is_none(), "{probe}");
    }
    assert!(c.get("env").is_none(), "settings in config.yml, not env");
    let svc = object(&prod, "Service", "storage", "docker-registry");
    assert_eq!(svc["spec"]["ports"][0]["targetPort"], "https");
    let local_deploy = object(&local, "Deployment", "storage", "docker-registry");
    assert_eq!(
        container(&local_deploy, "registry")["readinessProbe"]["httpGet"]["path"],
        "/v2/"
    );
    // The backend pulls with the registry's credentials in prod.
    let backend = object(&prod, "Deployment", "ducklake", "ducklake-backend");
    assert_eq!(
        backend["spec"]["template"]["spec"]["imagePullSecrets"],
        json!([{"name": "ducklake-registry-pull"}])
    );
    let local_backend = object(&local, "Deployment", "ducklake", "ducklake-backend");
    assert!(
        local_backend["spec"]["template"]["spec"]
            .get("imagePullSecrets")
            .is_none()
    );
    // So does floe's user code (its image comes from the same registry).
    let user_code = object(&prod, "Deployment", "floe", "floe-dagster-user-code");
    assert_eq!(
        user_code["spec"]["template"]["spec"]["imagePullSecrets"],
        json!([{"name": "floe-registry-pull"}])
    );
    assert_eq!(
        secret_files(&prod, "floe-orchestration", "floe-registry-pull"),
        [(
            ".dockerconfigjson".to_owned(),
            "registry-pull-dockerconfig".to_owned()
        )]
    );
    let local_user_code = object(&local, "Deployment", "floe", "floe-dagster-user-code");
    assert!(
        local_user_code["spec"]["template"]["spec"]
            .get("imagePullSecrets")
            .is_none()
    );
    // The cleanup job logs in with host files in prod, not in local.
    for (profile, want) in [
        (
            "prod",
            Some(("registry-cleanup-username", "registry-cleanup-password")),
        ),
        ("local", None),
    ] {
        let jobs = jobs(profile);
        let spec = jobs
            .iter()
            .find(|j| j.name == "registry-cleanup")
            .and_then(|j| j.image_cleanup())
            .expect("registry-cleanup");
        assert_eq!(
            spec.username_file
                .as_deref()
                .zip(spec.password_file.as_deref()),
            want,
            "{profile}"
        );
    }

    // The rendered prod config.yml, run by a real registry: the in-pod paths point at this
    // test's files, and it listens on a Unix socket (no port to pick).
    let env = TestEnv::get();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let service = "docker-registry.storage.svc.cluster.local";
    certificate(d, &[service, "docker-registry.storage.svc"]);
    std::fs::create_dir(d.join("data")).unwrap();
    let htpasswd = run_ok(Command::new("htpasswd").args(["-Bbn", "pusher", "pusher-password"]));
    std::fs::write(d.join("htpasswd"), htpasswd).unwrap();
    let dir_text = d.to_str().unwrap();
    let text = prod_text
        .replace("/etc/docker/registry-tls/", &format!("{dir_text}/"))
        .replace("/etc/docker/registry-auth/", &format!("{dir_text}/"))
        .replace("/var/lib/registry", &format!("{dir_text}/data"));
    std::fs::write(d.join("config.yml"), text).unwrap();
    let sock = d.join("sock");
    let log = std::fs::File::create(d.join("log")).unwrap();
    let _registry = Child(
        Command::new(env.var("REGISTRY_BIN"))
            .args(["serve", d.join("config.yml").to_str().unwrap()])
            .env("REGISTRY_HTTP_NET", "unix")
            .env("REGISTRY_HTTP_ADDR", &sock)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start the test environment's registry"),
    );
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while !sock.exists() {
        assert!(
            std::time::Instant::now() < deadline,
            "the registry did not listen: {}",
            std::fs::read_to_string(d.join("log")).unwrap_or_default()
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let url = format!("https://{service}:5000/v2/");
    let ca = d.join("ca.crt");
    let ca = ca.to_str().unwrap();
    let (code, headers) = curl(&sock, &url, &["--cacert", ca]);
    assert_eq!(code, "401", "anonymous: {headers}");
    assert!(
        headers
            .to_ascii_lowercase()
            .contains("www-authenticate: basic realm=\"ducklake-registry\""),
        "{headers}"
    );
    let (code, _) = curl(&sock, &url, &["--cacert", ca, "-u", "pusher:wrong"]);
    assert_eq!(code, "401", "wrong password");
    let (code, headers) = curl(
        &sock,
        &url,
        &["--cacert", ca, "-u", "pusher:pusher-password"],
    );
    assert_eq!(code, "200", "a user of the htpasswd file: {headers}");
    // The certificate is checked (curl's default): without the CA the handshake fails.
    let (code, _) = curl(&sock, &url, &["-u", "pusher:pusher-password"]);
    assert_eq!(code, "000", "an untrusted certificate is refused");
    // Plain HTTP gets no registry answer.
    let (code, _) = curl(
        &sock,
        &format!("http://{service}:5000/v2/"),
        &["-u", "pusher:pusher-password"],
    );
    assert_eq!(code, "400", "plain HTTP to the HTTPS port");
}

/// The host files a stack's Secret `name` is made of (`spec.secrets`), key → file.
fn secret_files(
    stacks: &[driftless::stack::RenderedStack],
    stack: &str,
    name: &str,
) -> Vec<(String, String)> {
    let s = stacks.iter().find(|s| s.name == stack).unwrap();
    let secret = s
        .spec
        .secrets
        .iter()
        .find(|x| x.name == name)
        .unwrap_or_else(|| panic!("{stack} has no secret {name}"));
    secret
        .from_files
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

/// Seed 004 ("MinIO IAM policies instead of root credentials"): Spark and the backup each have
/// a MinIO user of their own, made by the `minio-users` Job with a policy each: Spark reads and
/// writes objects of `spark-data` only, the backup only lists and reads them; neither holds the
/// root credentials, which only MinIO and the two setup Jobs read.
#[test]
fn lambda_minio_consumers_have_their_own_users_with_least_privilege() {
    for profile in ["local", "prod"] {
        let stacks = render(profile);
        // Spark's S3A credentials: its own user's files.
        assert_eq!(
            secret_files(&stacks, "lambda-spark", "spark-minio-credentials"),
            [
                (
                    "AWS_ACCESS_KEY_ID".to_owned(),
                    "lambda-minio-spark-user".to_owned()
                ),
                (
                    "AWS_SECRET_ACCESS_KEY".to_owned(),
                    "lambda-minio-spark-password".to_owned()
                )
            ],
            "{profile}"
        );
        let consumers = secret_files(&stacks, "lambda-minio", "minio-consumers");
        assert_eq!(
            consumers
                .iter()
                .map(|(_, f)| f.as_str())
                .collect::<std::collections::BTreeSet<_>>(),
            [
                "lambda-minio-backup-password",
                "lambda-minio-backup-user",
                "lambda-minio-spark-password",
                "lambda-minio-spark-user"
            ]
            .into_iter()
            .collect(),
        );
        // Who reads the root credentials: MinIO and the Jobs that set it up, nobody else.
        let mut root_readers = Vec::new();
        for s in &stacks {
            for o in &s.objects {
                if o.object.to_string().contains("\"minio-credentials\"")
                    && o.key.namespace.as_deref() == Some("minio")
                    && o.key.kind != "Secret"
                {
                    root_readers.push(format!("{}/{}", o.key.kind, o.key.name));
                }
            }
            for sec in &s.spec.secrets {
                for file in sec.from_files.values() {
                    assert!(
                        !file.starts_with("lambda-minio-root") || sec.name == "minio-credentials",
                        "{}: {} reads {file}",
                        s.name,
                        sec.name
                    );
                }
            }
        }
        root_readers.sort();
        assert_eq!(
            root_readers,
            ["Deployment/minio", "Job/minio-layout", "Job/minio-users"],
            "{profile}"
        );
        // The Job makes both users with their policies, from the policies ConfigMap.
        let job = object(&stacks, "Job", "minio", "minio-users");
        let script = container(&job, "mc")["args"][0]
            .as_str()
            .unwrap()
            .to_owned();
        for line in [
            "consumer \"$SPARK_USER\" \"$SPARK_PASSWORD\" spark-data-readwrite",
            "consumer \"$BACKUP_USER\" \"$BACKUP_PASSWORD\" spark-data-readonly",
            "mc admin policy create minio \"$3\" \"/policies/$3.json\"",
            "mc admin policy attach minio \"$3\" --user \"$1\"",
        ] {
            assert!(script.contains(line), "{line}: {script}");
        }
        let policies = object(&stacks, "ConfigMap", "minio", "minio-policies");
        let policy = |name: &str| -> Vec<(Vec<String>, Vec<String>)> {
            let doc: Value =
                serde_json::from_str(policies["data"][name].as_str().unwrap()).unwrap();
            doc["Statement"]
                .as_array()
                .unwrap()
                .iter()
                .map(|st| {
                    assert_eq!(st["Effect"], "Allow");
                    let strings = |v: &Value| -> Vec<String> {
                        v.as_array()
                            .unwrap()
                            .iter()
                            .map(|x| x.as_str().unwrap().to_owned())
                            .collect()
                    };
                    (strings(&st["Action"]), strings(&st["Resource"]))
                })
                .collect()
        };
        for (name, object_actions) in [
            (
                "spark-data-readwrite.json",
                vec![
                    "s3:GetObject",
                    "s3:PutObject",
                    "s3:DeleteObject",
                    "s3:AbortMultipartUpload",
                    "s3:ListMultipartUploadParts",
                ],
            ),
            ("spark-data-readonly.json", vec!["s3:GetObject"]),
        ] {
            for (actions, resources) in policy(name) {
                for r in &resources {
                    assert!(
                        r == "arn:aws:s3:::spark-data" || r == "arn:aws:s3:::spark-data/*",
                        "{name}: only spark-data: {r}"
                    );
                }
                for a in &actions {
                    assert!(!a.contains('*'), "{name}: no wildcard action: {a}");
                    assert!(!a.starts_with("admin:"), "{name}: {a}");
                    if resources == ["arn:aws:s3:::spark-data/*"] {
                        assert!(object_actions.contains(&a.as_str()), "{name}: {a}");
                    } else {
                        assert!(
                            [
                                "s3:GetBucketLocation",
                                "s3:ListBucket",
                                "s3:ListBucketMultipartUploads"
                            ]
                            .contains(&a.as_str()),
                            "{name}: bucket action {a}"
                        );
                    }
                }
            }
        }
        let readonly: Vec<String> = policy("spark-data-readonly.json")
            .into_iter()
            .flat_map(|(a, _)| a)
            .collect();
        assert_eq!(
            readonly,
            ["s3:GetBucketLocation", "s3:ListBucket", "s3:GetObject"],
            "the backup only lists and reads"
        );
    }
    // The backup job reads with the backup user's files (every profile).
    let jobs = jobs("prod");
    let backup = jobs
        .iter()
        .find(|j| j.name == "lambda-spark-data")
        .and_then(|j| j.backup())
        .unwrap();
    let source = serde_json::to_string(&format!("{:?}", backup.source)).unwrap();
    assert!(
        source.contains("lambda-minio-backup-user")
            && source.contains("lambda-minio-backup-password")
            && !source.contains("lambda-minio-root"),
        "{source}"
    );
}

/// Seed 004 ("Cassandra authentication"): Cassandra runs with `PasswordAuthenticator` and
/// `CassandraAuthorizer`; the setup Job replaces the default superuser `cassandra` by
/// `platform_admin` (host file) and makes one role per kind of client, limited to the keyspace.
#[test]
fn lambda_cassandra_requires_passwords_and_replaces_the_default_superuser() {
    for profile in ["local", "prod"] {
        let stacks = render(profile);
        let sts = object(&stacks, "StatefulSet", "default", "cassandra");
        let init = &sts["spec"]["template"]["spec"]["initContainers"][0];
        let script = init["args"][0].as_str().unwrap();
        for line in [
            "cp -a /etc/cassandra/. /config/",
            "-e 's/^authenticator:.*/authenticator: PasswordAuthenticator/'",
            "-e 's/^authorizer:.*/authorizer: CassandraAuthorizer/' /config/cassandra.yaml",
            // The init container fails when cassandra.yaml had no such line to replace.
            "grep -qx 'authenticator: PasswordAuthenticator' /config/cassandra.yaml",
            "grep -qx 'authorizer: CassandraAuthorizer' /config/cassandra.yaml",
        ] {
            assert!(script.contains(line), "{profile}: {line}: {script}");
        }
        assert_eq!(
            init["volumeMounts"][0]["mountPath"], "/config",
            "{profile}: edits the copy Cassandra reads"
        );
        assert_eq!(
            secret_files(&stacks, "lambda-cassandra", "cassandra-credentials"),
            [
                (
                    "ADMIN_PASSWORD".to_owned(),
                    "cassandra-admin-password".to_owned()
                ),
                (
                    "READER_PASSWORD".to_owned(),
                    "cassandra-reader-password".to_owned()
                ),
                (
                    "WRITER_PASSWORD".to_owned(),
                    "cassandra-writer-password".to_owned()
                ),
            ]
        );
        let job = object(&stacks, "Job", "default", "cassandra-schema-auth");
        let c = container(&job, "cqlsh");
        let script = c["args"][0].as_str().unwrap();
        // In order: our superuser made by the default one (first start only), the default one
        // disabled, the keyspace, the clients' roles.
        let order = [
            "until as_admin -e \"$probe\"",
            "cql -u cassandra -p cassandra -e \"CREATE ROLE IF NOT EXISTS platform_admin WITH SUPERUSER = true AND LOGIN = true AND PASSWORD = $(lit \"$ADMIN_PASSWORD\")\"",
            "as_admin -e \"ALTER ROLE cassandra WITH SUPERUSER = false AND LOGIN = false\"",
            "as_admin -f /schema/schema.cql",
            "role education_writer \"$WRITER_PASSWORD\" CREATE SELECT MODIFY",
            "role education_reader \"$READER_PASSWORD\" SELECT",
        ];
        let mut at = 0;
        for step in order {
            let found = script[at..]
                .find(step)
                .unwrap_or_else(|| panic!("{profile}: {step} after byte {at}: {script}"));
            at += found + step.len();
        }
        assert!(
            script.contains("GRANT $permission ON KEYSPACE education_platform TO $name"),
            "{script}"
        );
        assert_eq!(
            script.matches("-u cassandra -p cassandra").count(),
            2,
            "the default login only probed and used once to make ours: {script}"
        );
        // Passwords come from the Secret, never literally.
        for e in c["env"].as_array().unwrap() {
            if e["name"].as_str().unwrap().ends_with("_PASSWORD") {
                assert_eq!(
                    e["valueFrom"]["secretKeyRef"]["name"], "cassandra-credentials",
                    "{e}"
                );
            }
        }
        // The pod keeps the label the network policies name.
        assert_eq!(
            job["spec"]["template"]["metadata"]["labels"]["app"],
            "cassandra-schema"
        );
    }
    // The CQL string literal of the script doubles quotes: a password with a quote cannot end
    // the literal (run with the shell the image has).
    let stacks = render("prod");
    let job = object(&stacks, "Job", "default", "cassandra-schema-auth");
    let script = container(&job, "cqlsh")["args"][0]
        .as_str()
        .unwrap()
        .to_owned();
    let lit = script
        .lines()
        .find(|l| l.trim_start().starts_with("lit()"))
        .unwrap();
    let out = run_ok(Command::new("sh").args([
        "-ec",
        &format!("{lit}\nlit \"$1\"", lit = lit.trim()),
        "sh",
        "it's' OR '1'='1",
    ]));
    assert_eq!(out.trim_end(), "'it''s'' OR ''1''=''1'");
}

/// The env of a SparkApplication role (`driver`/`executor`) as name → value (literal, or
/// `secret:<name>/<key>`).
fn spark_env(app: &Value, role: &str) -> std::collections::BTreeMap<String, String> {
    app["spec"][role]["env"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            let value = match e.get("value") {
                Some(v) => v.as_str().unwrap().to_owned(),
                None => {
                    let r = &e["valueFrom"]["secretKeyRef"];
                    format!(
                        "secret:{}/{}",
                        r["name"].as_str().unwrap(),
                        r["key"].as_str().unwrap()
                    )
                }
            };
            (e["name"].as_str().unwrap().to_owned(), value)
        })
        .collect()
}

/// The Kafka source options the ingestion script computes from `env` (its own functions, run by
/// python3; PySpark is not needed for them).
fn ingestion_kafka_options(
    stacks: &[driftless::stack::RenderedStack],
    env: &[(&str, &str)],
) -> Value {
    let cm = object(stacks, "ConfigMap", "spark", "spark-ingestion");
    let script = cm["data"]["ingestion.py"].as_str().unwrap();
    let start = script.find("def jaas_quoted").expect("jaas_quoted");
    let end = script.find("for topic, prefix in TOPICS.items()").unwrap();
    let program = format!(
        "import json, os\nbootstrap = os.environ['KAFKA_BOOTSTRAP_SERVERS']\n{}\nprint(json.dumps(kafka_options()))\n",
        &script[start..end]
    );
    let out = Command::new("python3")
        .args(["-c", &program])
        .env_clear()
        .envs(env.iter().copied())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Seed 004 ("Kafka SASL/SSL") in `prod`: the only client listener is TLS with SCRAM-SHA-512,
/// authorization is on, each client has a KafkaUser with the ACLs it needs (Spark reads the six
/// topics in its own consumer groups; the speed layer reads; the producers write), and Spark
/// connects with SASL_SSL, its password from a host file and the cluster CA. `local` keeps the
/// seed's plain listener and no users.
#[test]
fn lambda_kafka_in_prod_is_tls_with_scram_and_a_kafka_user_per_client() {
    let prod = render("prod");
    let kafka = object(&prod, "Kafka", "kafka", "kafka-cluster");
    assert_eq!(
        kafka["spec"]["kafka"]["listeners"],
        json!([{"name": "tls", "port": 9093, "type": "internal", "tls": true,
                "authentication": {"type": "scram-sha-512"}}])
    );
    assert_eq!(
        kafka["spec"]["kafka"]["authorization"],
        json!({"type": "simple"})
    );
    assert_eq!(kafka["spec"]["entityOperator"]["userOperator"], json!({}));
    let topics = [
        "auth_topic",
        "assessment_topic",
        "video_topic",
        "course_topic",
        "profile_topic",
        "notification_topic",
    ];
    let acls = |user: &str| -> Vec<(String, String, String, Vec<String>)> {
        let u = object(&prod, "KafkaUser", "kafka", user);
        assert_eq!(
            u["metadata"]["labels"]["strimzi.io/cluster"],
            "kafka-cluster"
        );
        assert_eq!(
            u["spec"]["authentication"]["type"], "scram-sha-512",
            "{user}"
        );
        assert_eq!(u["spec"]["authorization"]["type"], "simple", "{user}");
        u["spec"]["authorization"]["acls"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| {
                let r = &a["resource"];
                (
                    r["type"].as_str().unwrap().to_owned(),
                    r["name"].as_str().unwrap().to_owned(),
                    r["patternType"].as_str().unwrap().to_owned(),
                    a["operations"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .map(|o| o.as_str().unwrap().to_owned())
                        .collect(),
                )
            })
            .collect()
    };
    let on_topics = |ops: &[&str]| -> Vec<(String, String, String, Vec<String>)> {
        topics
            .iter()
            .map(|t| {
                (
                    "topic".to_owned(),
                    (*t).to_owned(),
                    "literal".to_owned(),
                    ops.iter().map(|o| (*o).to_owned()).collect(),
                )
            })
            .collect()
    };
    let group = |name: &str| {
        (
            "group".to_owned(),
            name.to_owned(),
            "prefix".to_owned(),
            vec!["Read".to_owned()],
        )
    };
    let mut want = on_topics(&["Describe", "Read"]);
    want.push(group("spark-ingestion"));
    assert_eq!(acls("spark-ingestion"), want);
    let mut want = on_topics(&["Describe", "Read"]);
    want.push(group("speed-layer"));
    assert_eq!(acls("speed-layer"), want);
    assert_eq!(acls("event-producers"), on_topics(&["Describe", "Write"]));
    // Spark's password: the host file, on both sides (the KafkaUser in `kafka`, Spark in `spark`).
    let spark_user = object(&prod, "KafkaUser", "kafka", "spark-ingestion");
    assert_eq!(
        spark_user["spec"]["authentication"]["password"]["valueFrom"]["secretKeyRef"],
        json!({"name": "kafka-user-spark-ingestion", "key": "password"})
    );
    assert_eq!(
        secret_files(&prod, "lambda-kafka", "kafka-user-spark-ingestion"),
        [(
            "password".to_owned(),
            "lambda-kafka-spark-password".to_owned()
        )]
    );
    assert_eq!(
        secret_files(&prod, "lambda-spark", "spark-kafka-credentials"),
        [(
            "password".to_owned(),
            "lambda-kafka-spark-password".to_owned()
        )]
    );
    assert_eq!(
        secret_files(&prod, "lambda-spark", "kafka-cluster-ca"),
        [("ca.crt".to_owned(), "lambda-kafka-ca-crt".to_owned())]
    );
    // Driver and executors: the TLS listener, the user, the password and the CA.
    let app = object(&prod, "SparkApplication", "spark", "ingestion");
    let volume = app["spec"]["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == "kafka-ca")
        .expect("the CA volume");
    assert_eq!(volume["secret"]["secretName"], "kafka-cluster-ca");
    for role in ["driver", "executor"] {
        let env = spark_env(&app, role);
        assert_eq!(
            env["KAFKA_BOOTSTRAP_SERVERS"],
            "kafka-cluster-kafka-bootstrap.kafka.svc.cluster.local:9093",
            "{role}"
        );
        assert_eq!(env["KAFKA_SASL_USERNAME"], "spark-ingestion", "{role}");
        assert_eq!(
            env["KAFKA_SASL_PASSWORD"],
            "secret:spark-kafka-credentials/password"
        );
        assert_eq!(env["KAFKA_CA_FILE"], "/etc/kafka-ca/ca.crt");
        assert!(
            app["spec"][role]["volumeMounts"]
                .as_array()
                .unwrap()
                .iter()
                .any(|m| m["name"] == "kafka-ca" && m["mountPath"] == "/etc/kafka-ca"),
            "{role}"
        );
    }
    // What the script makes of that environment: SASL_SSL, SCRAM-SHA-512, the JAAS line with the
    // password quoted (a hostile password cannot add options), the PEM trust store.
    let env = spark_env(&app, "driver");
    let password = "pa\"ss\\word; debug=\"true";
    let options = ingestion_kafka_options(
        &prod,
        &[
            (
                "KAFKA_BOOTSTRAP_SERVERS",
                env["KAFKA_BOOTSTRAP_SERVERS"].as_str(),
            ),
            ("KAFKA_SASL_USERNAME", env["KAFKA_SASL_USERNAME"].as_str()),
            ("KAFKA_SASL_PASSWORD", password),
            ("KAFKA_CA_FILE", env["KAFKA_CA_FILE"].as_str()),
        ],
    );
    assert_eq!(
        options,
        json!({
            "kafka.bootstrap.servers": "kafka-cluster-kafka-bootstrap.kafka.svc.cluster.local:9093",
            "groupIdPrefix": "spark-ingestion",
            "kafka.security.protocol": "SASL_SSL",
            "kafka.sasl.mechanism": "SCRAM-SHA-512",
            "kafka.sasl.jaas.config": "org.apache.kafka.common.security.scram.ScramLoginModule required username=\"spark-ingestion\" password=\"pa\\\"ss\\\\word; debug=\\\"true\";",
            "kafka.ssl.truststore.type": "PEM",
            "kafka.ssl.truststore.location": "/etc/kafka-ca/ca.crt",
        })
    );

    // `local`: the seed's listeners, no authorization, no users; Spark plain, still in its own
    // consumer groups.
    let local = render("local");
    let kafka = object(&local, "Kafka", "kafka", "kafka-cluster");
    let names: Vec<&str> = kafka["spec"]["kafka"]["listeners"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["plain", "tls", "external"]);
    assert!(kafka["spec"]["kafka"].get("authorization").is_none());
    assert!(find(&local, "KafkaUser", "kafka", "spark-ingestion").is_none());
    let app = object(&local, "SparkApplication", "spark", "ingestion");
    let env = spark_env(&app, "executor");
    assert!(!env.contains_key("KAFKA_SASL_USERNAME"));
    let options = ingestion_kafka_options(
        &local,
        &[(
            "KAFKA_BOOTSTRAP_SERVERS",
            env["KAFKA_BOOTSTRAP_SERVERS"].as_str(),
        )],
    );
    assert_eq!(
        options,
        json!({
            "kafka.bootstrap.servers": "kafka-cluster-kafka-bootstrap.kafka.svc.cluster.local:9092",
            "groupIdPrefix": "spark-ingestion",
        })
    );
}

/// Seeds 000/002 ("TLS termination", "TLS certificates"): in `prod` the registry and the DuckLake
/// backend are reached from outside over HTTPS through the ingress controller, each with a
/// certificate from host files; the controller is admitted to the backend by its network
/// policy; `local` has no Ingress. floe's UIs stay behind port-forwards (stack/README.md).
#[test]
fn ingresses_in_prod_terminate_tls_with_certificates_from_host_files() {
    let prod = render("prod");
    let ingresses: Vec<(String, String)> = prod
        .iter()
        .flat_map(|s| &s.objects)
        .filter(|o| o.key.kind == "Ingress")
        .map(|o| {
            (
                o.key.namespace.clone().unwrap_or_default(),
                o.key.name.clone(),
            )
        })
        .collect();
    assert_eq!(
        ingresses,
        [
            ("storage".to_owned(), "docker-registry".to_owned()),
            ("ducklake".to_owned(), "ducklake-backend".to_owned())
        ]
    );
    for (ns, name, host, secret, service, port, stack, files) in [
        (
            "storage",
            "docker-registry",
            "registry.ducklake.internal",
            "docker-registry-tls",
            "docker-registry",
            "https",
            "ducklake-storage",
            ["registry-tls-crt", "registry-tls-key"],
        ),
        (
            "ducklake",
            "ducklake-backend",
            "ducklake.ducklake.internal",
            "ducklake-backend-tls",
            "ducklake-backend",
            "http",
            "ducklake-app",
            ["ducklake-tls-crt", "ducklake-tls-key"],
        ),
    ] {
        let ing = object(&prod, "Ingress", ns, name);
        assert_eq!(ing["spec"]["ingressClassName"], "nginx");
        assert_eq!(
            ing["spec"]["tls"],
            json!([{"hosts": [host], "secretName": secret}]),
            "{name}"
        );
        let rules = ing["spec"]["rules"].as_array().unwrap();
        assert_eq!(rules.len(), 1);
        assert_eq!(
            rules[0]["host"], host,
            "every rule's host has the certificate"
        );
        for p in rules[0]["http"]["paths"].as_array().unwrap() {
            assert_eq!(p["backend"]["service"]["name"], service);
            assert_eq!(p["backend"]["service"]["port"]["name"], port);
        }
        // The Secret: kubernetes.io/tls from the host files.
        let s = prod.iter().find(|s| s.name == stack).unwrap();
        let spec = s.spec.secrets.iter().find(|x| x.name == secret).unwrap();
        assert_eq!(spec.type_.as_deref(), Some("kubernetes.io/tls"));
        assert_eq!(
            spec.from_files
                .values()
                .map(String::as_str)
                .collect::<Vec<_>>(),
            files
        );
        // The Service port the Ingress names exists.
        let svc = object(&prod, "Service", ns, service);
        assert!(
            svc["spec"]["ports"]
                .as_array()
                .unwrap()
                .iter()
                .any(|p| p["name"] == port),
            "{svc:#}"
        );
    }
    // The registry's Ingress re-encrypts to the registry (HTTPS only) and streams layers.
    let ing = object(&prod, "Ingress", "storage", "docker-registry");
    let a = &ing["metadata"]["annotations"];
    assert_eq!(a["nginx.ingress.kubernetes.io/backend-protocol"], "HTTPS");
    assert_eq!(a["nginx.ingress.kubernetes.io/proxy-body-size"], "0");
    let local = render("local");
    assert!(
        !local
            .iter()
            .flat_map(|s| &s.objects)
            .any(|o| o.key.kind == "Ingress"),
        "no Ingress in local"
    );
}

/// Whether Python's `re` (the same syntax as RE2 for these expressions) finds `pattern` in
/// `line`; with `group`, the named group's text.
fn regex_search(pattern: &str, line: &str, group: Option<&str>) -> Option<String> {
    let program = "import re, sys\nm = re.search(sys.argv[1], sys.argv[2])\nprint('' if m is None else (m.group(sys.argv[3]) if sys.argv[3] else 'match'))";
    let out = Command::new("python3")
        .args(["-c", program, pattern, line, group.unwrap_or("")])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap().trim_end().to_owned();
    (!text.is_empty()).then_some(text)
}

/// Seed 000 ("Loki log retention and alerting rules for critical log events") in `prod`: the
/// compactor deletes logs older than the retention period, and the ruler evaluates alert rules
/// on PostgreSQL's FATAL/PANIC lines and the registry's error lines, sending them to
/// Alertmanager (which the network policy lets Loki reach). The rules select streams by the
/// labels Promtail sets, and those labels come out of the log lines they are meant for.
#[test]
fn loki_in_prod_keeps_logs_for_the_retention_period_and_alerts_on_critical_lines() {
    let prod = render("prod");
    let local = render("local");
    let config = |stacks: &[driftless::stack::RenderedStack]| {
        let cm = object(stacks, "ConfigMap", "logging", "loki-config");
        yaml(cm["data"]["loki.yaml"].as_str().unwrap())
    };
    let mut prod_config = config(&prod);
    let local_config = config(&local);
    let compactor = &prod_config["compactor"];
    assert_eq!(compactor["retention_enabled"], true);
    assert_eq!(compactor["shared_store"], "filesystem");
    assert_eq!(prod_config["limits_config"]["retention_period"], "744h");
    let ruler = &prod_config["ruler"];
    assert_eq!(
        ruler["storage"],
        json!({"type": "local", "local": {"directory": "/rules"}})
    );
    assert_eq!(
        ruler["alertmanager_url"],
        "http://alertmanager.monitoring.svc.cluster.local:9093"
    );
    assert!(local_config.get("ruler").is_none() && local_config.get("limits_config").is_none());
    // Nothing else differs from the base's file.
    let c = prod_config.as_object_mut().unwrap();
    c.remove("ruler");
    c.remove("limits_config");
    let compactor = c["compactor"].as_object_mut().unwrap();
    for key in [
        "compaction_interval",
        "retention_enabled",
        "retention_delete_delay",
        "retention_delete_worker_count",
    ] {
        assert!(compactor.remove(key).is_some(), "{key}");
    }
    assert_eq!(
        prod_config, local_config,
        "prod loki.yaml = base + retention + ruler"
    );

    // The rules, mounted as tenant "fake" (auth_enabled: false) under the ruler's directory.
    let deploy = object(&prod, "Deployment", "logging", "loki");
    let c = container(&deploy, "loki");
    let mount = c["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["name"] == "rules")
        .expect("rules mounted");
    assert_eq!(mount["mountPath"], "/rules/fake");
    let volume = deploy["spec"]["template"]["spec"]["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == "rules")
        .unwrap();
    assert_eq!(volume["configMap"]["name"], "loki-rules");
    let rules_cm = object(&prod, "ConfigMap", "logging", "loki-rules");
    let rules = yaml(rules_cm["data"]["ducklake.yaml"].as_str().unwrap());
    let rules = rules["groups"][0]["rules"].as_array().unwrap().clone();
    let rule = |name: &str| -> Value {
        rules
            .iter()
            .find(|r| r["alert"] == name)
            .unwrap_or_else(|| panic!("rule {name}"))
            .clone()
    };
    let pg = rule("PostgresFatalOrPanic");
    let expr = pg["expr"].as_str().unwrap();
    assert!(
        expr.contains(r#"{namespace="storage", app="postgres", level=~"FATAL|PANIC"}[5m]"#),
        "{expr}"
    );
    assert_eq!(pg["labels"]["severity"], "critical");
    assert!(
        pg["annotations"]["summary"]
            .as_str()
            .unwrap()
            .contains("{{ $labels.pod }}"),
        "the template's $ survives variable substitution"
    );
    let reg = rule("RegistryErrors");
    let expr = reg["expr"].as_str().unwrap();
    assert!(
        expr.contains(r#"{namespace="storage", app="docker-registry"}"#),
        "{expr}"
    );
    let line_regex = expr.split('`').nth(1).expect("a backquoted line filter");

    // Promtail labels what the rules select: `app` from the pod label, and `level` parsed
    // from PostgreSQL's lines by the regex of its pipeline.
    let promtail = object(&prod, "ConfigMap", "logging", "promtail-config");
    let promtail = yaml(promtail["data"]["promtail.yaml"].as_str().unwrap());
    let job = &promtail["scrape_configs"][0];
    assert!(
        job["relabel_configs"].as_array().unwrap().iter().any(|r| {
            r["source_labels"] == json!(["__meta_kubernetes_pod_label_app"])
                && r["target_label"] == "app"
        }),
        "{job:#}"
    );
    let pg_stage = job["pipeline_stages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["match"]["selector"] == "{app=\"postgres\"}")
        .expect("the PostgreSQL stage")
        .clone();
    let stages = pg_stage["match"]["stages"].as_array().unwrap();
    let pg_regex = stages[0]["regex"]["expression"].as_str().unwrap();
    assert!(
        stages[1]["labels"]
            .as_object()
            .unwrap()
            .contains_key("level")
    );
    for (line, level) in [
        (
            "2026-12-06 10:00:00.123 UTC [42] ducklake@ducklake FATAL:  password authentication failed for user \"ducklake\"",
            "FATAL",
        ),
        (
            "2026-12-06 10:00:01.000 UTC [1] @ PANIC:  could not locate a valid checkpoint record",
            "PANIC",
        ),
        (
            "2026-12-06 10:00:02.5 UTC [43] LOG:  checkpoint starting: time",
            "LOG",
        ),
    ] {
        assert_eq!(
            regex_search(pg_regex, line, Some("level")).as_deref(),
            Some(level),
            "{line}"
        );
    }
    // The registry's JSON lines (log.formatter: json) at error level match; info lines do not.
    for (line, fires) in [
        (
            r#"{"err.code":"blob unknown","level":"error","msg":"response completed with error"}"#,
            true,
        ),
        (r#"{"level":"fatal","msg":"configuration error"}"#, true),
        (
            r#"{"level":"info","msg":"response completed","http.response.status":200}"#,
            false,
        ),
        (
            r#"{"level":"warning","msg":"error in a message, not the level"}"#,
            false,
        ),
    ] {
        assert_eq!(
            regex_search(line_regex, line, None).is_some(),
            fires,
            "{line}"
        );
    }
    let registry = object(&prod, "ConfigMap", "storage", "docker-registry-config");
    assert!(
        registry["data"]["config.yml"]
            .as_str()
            .unwrap()
            .contains("formatter: json"),
        "the registry logs JSON"
    );
    // Loki may reach Alertmanager's port in its namespace, nothing else.
    let policy = object(&prod, "NetworkPolicy", "logging", "loki");
    assert_eq!(
        policy["spec"]["egress"],
        json!([{"to": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}],
                "ports": [{"protocol": "TCP", "port": 9093}]}])
    );
}
