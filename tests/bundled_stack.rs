//! The bundled `stack/` validates offline and syncs to healthy on the test cluster: the DuckLake
//! stacks and the Lambda stacks (with the operators stand-in's CRDs), each converging so that a
//! second run has nothing to change.

mod support;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use std::process::Command;

use support::{TestEnv, driftless, kubectl, text};

const DUCKLAKE: [&str; 4] = [
    "ducklake-base",
    "ducklake-storage",
    "ducklake-observability",
    "ducklake-app",
];
const FLOE: [&str; 4] = [
    "floe-infrastructure",
    "floe-orchestration",
    "floe-semantic",
    "floe-observability",
];
const LAMBDA: [&str; 6] = [
    "lambda-operators",
    "lambda-base",
    "lambda-kafka",
    "lambda-minio",
    "lambda-cassandra",
    "lambda-spark",
];

#[test]
fn bundled_stacks_validate_offline() {
    let dir = tempfile::tempdir().unwrap();
    let none = dir.path().join("absent.yaml");
    let creds = credentials(dir.path());
    for profile in ["local", "prod"] {
        let out = driftless(
            &none,
            &[
                "validate",
                "--path",
                env!("CARGO_MANIFEST_DIR"),
                "--profile",
                profile,
                "--credentials-dir",
                creds.to_str().unwrap(),
            ],
        );
        assert!(out.status.success(), "{profile}: {}", text(&out));
        assert!(text(&out).contains("valid: 14 stacks"), "{}", text(&out));
    }
}

/// The host secret files every bundled stack reads (stack/README.md), in a fresh directory.
fn credentials(dir: &Path) -> PathBuf {
    let creds = dir.join("creds");
    std::fs::create_dir(&creds).unwrap();
    for (file, value) in [
        ("minio-root-user", "ducklake"),
        ("minio-root-password", "minio-demo-password"),
        ("postgres-password", "pg-demo-password"),
        ("lambda-minio-root-user", "lambda"),
        ("lambda-minio-root-password", "lambda-demo-password"),
        ("floe-postgres-password", "floe-pg-password"),
        ("floe-minio-user", "floe"),
        ("floe-minio-password", "floe-minio-password"),
        ("lambda-minio-spark-user", "spark"),
        ("lambda-minio-spark-password", "spark-demo-password"),
        ("lambda-minio-backup-user", "lambda-backup"),
        ("lambda-minio-backup-password", "backup-demo-password"),
        ("cassandra-admin-password", "cassandra-admin-demo"),
        ("cassandra-writer-password", "cassandra-writer-demo"),
        ("cassandra-reader-password", "cassandra-reader-demo"),
        ("lambda-kafka-spark-password", "kafka-spark-demo"),
        ("lambda-kafka-ca-crt", "kafka-cluster-ca"),
        ("floe-polaris-client-id", "root"),
        ("floe-polaris-client-secret", "floe-polaris-secret"),
        ("floe-polaris-bootstrap", "floe,root,floe-polaris-secret"),
        ("floe-cube-api-secret", "floe-cube-secret"),
        // The registry's certificate and users (used in prod; stack/README.md "Production").
        ("registry-tls-crt", "registry-certificate"),
        ("registry-tls-key", "registry-key"),
        (
            "registry-htpasswd",
            "pusher:$2y$05$notarealhashnotarealhashnotarealhashnotarealhash",
        ),
        ("registry-pull-dockerconfig", r#"{"auths": {}}"#),
        ("ducklake-tls-crt", "backend-certificate"),
        ("ducklake-tls-key", "backend-key"),
    ] {
        std::fs::write(creds.join(file), value).unwrap();
    }
    creds
}

/// A host configuration on the working tree with the local profile. A fixed instance name: a
/// rerun against the same cluster converges instead of colliding.
fn config(dir: &Path) -> PathBuf {
    config_for(dir, "local")
}

/// `config` with `profile` (the same instance: switching profiles updates the same objects).
fn config_for(dir: &Path, profile: &str) -> PathBuf {
    let creds = dir.join("creds");
    if !creds.exists() {
        credentials(dir);
    }
    let config = dir.join(format!("driftless-{profile}.yaml"));
    std::fs::write(
        &config,
        format!(
            "instance: bundled-stack-test\nsource: {{path: {}}}\nprofile: {profile}\ncredentialsDir: {}\n",
            env!("CARGO_MANIFEST_DIR"),
            creds.display()
        ),
    )
    .unwrap();
    config
}

/// `driftless <command> --stack S…` for `stacks`.
fn on_stacks(config: &Path, command: &str, stacks: &[&str]) -> std::process::Output {
    on_stacks_with(config, &[command], stacks)
}

/// `on_stacks` with more arguments after the command.
fn on_stacks_with(config: &Path, command: &[&str], stacks: &[&str]) -> std::process::Output {
    let mut args = command.to_vec();
    for s in stacks {
        args.extend(["--stack", s]);
    }
    driftless(config, &args)
}

/// Syncs `stacks`, asserts each was applied and none is unhealthy.
fn sync_to_healthy(config: &Path, stacks: &[&str]) {
    sync_to_healthy_with(config, &["sync"], stacks);
}

/// `sync_to_healthy` with `command` (`sync` and its flags); returns what the sync printed.
fn sync_to_healthy_with(config: &Path, command: &[&str], stacks: &[&str]) -> String {
    let out = on_stacks_with(config, command, stacks);
    let t = text(&out);
    assert!(out.status.success(), "sync: {t}");
    for stack in stacks {
        assert!(
            t.contains(&format!("stack {stack}: applied")),
            "{stack}: {t}"
        );
    }
    assert!(!t.contains("unhealthy"), "{t}");
    t
}

/// A second sync changes nothing, and a diff after it agrees.
fn converged(config: &Path, stacks: &[&str]) {
    let out = on_stacks(config, "sync", stacks);
    assert!(out.status.success(), "second sync: {}", text(&out));
    for stack in stacks {
        assert!(
            text(&out).contains(&format!(
                "stack {stack}: applied: 0 to create, 0 to update, 0 to prune"
            )),
            "second sync of {stack} changes nothing: {}",
            text(&out)
        );
    }
    let out = on_stacks(config, "diff", stacks);
    assert_eq!(
        out.status.code(),
        Some(0),
        "second run has no changes: {}",
        text(&out)
    );
}

fn get(args: &[&str]) -> String {
    let mut all = vec!["get"];
    all.extend(args);
    kubectl(&all)
}

#[test]
fn ducklake_stacks_sync_to_healthy_and_converge() {
    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path());
    // A run of this test cut short may have left the `prod` objects (below): removing them is
    // a mass prune.
    sync_to_healthy_with(&config, &["sync", "--allow-mass-prune"], &DUCKLAKE);

    // The registry: its claim bound, ClusterIP in the base, node port 30500 from the local overlay.
    assert_eq!(
        get(&[
            "pvc",
            "docker-registry-data",
            "-n",
            "storage",
            "-o",
            "jsonpath={.status.phase}"
        ]),
        "Bound"
    );
    assert_eq!(
        get(&[
            "svc",
            "docker-registry",
            "-n",
            "storage",
            "-o",
            "jsonpath={.spec.type} {.spec.ports[0].nodePort}"
        ]),
        "NodePort 30500",
        "local overlay"
    );
    assert_eq!(
        get(&[
            "statefulset",
            "postgres",
            "-n",
            "storage",
            "-o",
            "jsonpath={.status.readyReplicas}"
        ]),
        "1"
    );
    assert_eq!(
        get(&[
            "job",
            "minio-buckets",
            "-n",
            "storage",
            "-o",
            "jsonpath={.status.succeeded}"
        ]),
        "1"
    );
    // Logging: Loki up, Promtail ready on each of the three nodes, with its cluster-wide RBAC.
    assert_eq!(
        get(&[
            "deploy",
            "loki",
            "-n",
            "logging",
            "-o",
            "jsonpath={.status.availableReplicas}"
        ]),
        "1"
    );
    assert_eq!(
        get(&[
            "daemonset",
            "promtail",
            "-n",
            "logging",
            "-o",
            "jsonpath={.status.desiredNumberScheduled} {.status.numberReady}"
        ]),
        "3 3"
    );
    let nodes: BTreeSet<String> = get(&[
        "pods",
        "-n",
        "logging",
        "-l",
        "app=promtail",
        "-o",
        "jsonpath={range .items[*]}{.spec.nodeName}{\"\\n\"}{end}",
    ])
    .lines()
    .map(str::to_owned)
    .collect();
    assert_eq!(nodes.len(), 3, "one Promtail per node: {nodes:?}");
    assert_eq!(
        get(&[
            "clusterrolebinding",
            "ducklake-promtail",
            "-o",
            "jsonpath={.subjects[0].namespace}/{.subjects[0].name}"
        ]),
        "logging/promtail"
    );
    // The backend: three ready replicas on three different nodes (required anti-affinity), its
    // credentials from the host files.
    assert_eq!(
        get(&[
            "deploy",
            "ducklake-backend",
            "-n",
            "ducklake",
            "-o",
            "jsonpath={.status.readyReplicas}"
        ]),
        "3"
    );
    let nodes: BTreeSet<String> = get(&[
        "pods",
        "-n",
        "ducklake",
        "-l",
        "app=ducklake-backend",
        "-o",
        "jsonpath={range .items[*]}{.spec.nodeName}{\"\\n\"}{end}",
    ])
    .lines()
    .map(str::to_owned)
    .collect();
    assert_eq!(nodes.len(), 3, "one backend per node: {nodes:?}");
    assert_eq!(
        get(&[
            "secret",
            "ducklake-backend-credentials",
            "-n",
            "ducklake",
            "-o",
            "jsonpath={.metadata.labels.driftless\\.dev/host-secret}"
        ]),
        "true"
    );

    converged(&config, &DUCKLAKE);

    // Promoted to `prod` (seed 002: autoscaling): the HorizontalPodAutoscaler owns the
    // backend's replica count (driftless no longer applies one) and keeps it at its minimum of
    // 3 without metrics; a disruption budget keeps 2; the registry loses its node port.
    // The documented handover first (stack/README.md "Production"): the replica count gets a
    // second owner, so it stays at 3 when driftless stops applying it.
    let env = TestEnv::get();
    let handover = format!(
        "printf '%s\\n' 'apiVersion: apps/v1' 'kind: Deployment' 'metadata: {{name: ducklake-backend, namespace: ducklake}}' 'spec: {{replicas: 3}}' | {} --kubeconfig {} apply --server-side --field-manager=handover-to-hpa --validate=false -f -",
        env.var("KUBECTL"),
        env.var("KUBECONFIG")
    );
    support::run_ok(Command::new("bash").args(["-o", "pipefail", "-c", &handover]));
    let prod = config_for(dir.path(), "prod");
    sync_to_healthy(&prod, &DUCKLAKE);
    assert_eq!(
        get(&[
            "hpa",
            "ducklake-backend",
            "-n",
            "ducklake",
            "-o",
            "jsonpath={.spec.scaleTargetRef.kind}/{.spec.scaleTargetRef.name} {.spec.minReplicas}-{.spec.maxReplicas}"
        ]),
        "Deployment/ducklake-backend 3-6"
    );
    assert_eq!(
        get(&[
            "pdb",
            "ducklake-backend",
            "-n",
            "ducklake",
            "-o",
            "jsonpath={.spec.minAvailable} {.spec.selector.matchLabels.app}"
        ]),
        "2 ducklake-backend"
    );
    let deploy: serde_json::Value = serde_json::from_str(&get(&[
        "deploy",
        "ducklake-backend",
        "-n",
        "ducklake",
        "-o",
        "json",
        "--show-managed-fields",
    ]))
    .unwrap();
    let managers = deploy["metadata"]["managedFields"].as_array().unwrap();
    let owns_replicas = |m: &serde_json::Value| m["fieldsV1"]["f:spec"].get("f:replicas").is_some();
    assert!(
        managers
            .iter()
            .any(|m| m["manager"] == "handover-to-hpa" && owns_replicas(m)),
        "the handover kept the replica count: {managers:#?}"
    );
    let ours = managers
        .iter()
        .filter(|m| m["manager"] == "driftless")
        .collect::<Vec<_>>();
    assert!(!ours.is_empty(), "{deploy:#}");
    for m in ours {
        assert!(
            !owns_replicas(m),
            "driftless does not own the replica count in prod: {m:#}"
        );
    }
    wait_until("the HPA holds 3 ready backends", || {
        get(&[
            "deploy",
            "ducklake-backend",
            "-n",
            "ducklake",
            "-o",
            "jsonpath={.spec.replicas} {.status.readyReplicas}",
        ]) == "3 3"
    });
    assert_eq!(
        get(&[
            "svc",
            "docker-registry",
            "-n",
            "storage",
            "-o",
            "jsonpath={.spec.type}"
        ]),
        "ClusterIP",
        "prod: no node port"
    );
    // HTTPS from outside through the ingress controller: the registry and the backend.
    assert_eq!(
        get(&[
            "ingress",
            "docker-registry",
            "-n",
            "storage",
            "-o",
            "jsonpath={.spec.tls[0].secretName} {.spec.rules[0].host}"
        ]),
        "docker-registry-tls registry.ducklake.internal"
    );
    assert_eq!(
        get(&[
            "ingress",
            "ducklake-backend",
            "-n",
            "ducklake",
            "-o",
            "jsonpath={.spec.tls[0].secretName} {.spec.rules[0].host}"
        ]),
        "ducklake-backend-tls ducklake.ducklake.internal"
    );
    // The registry over HTTPS with htpasswd users (stack/README.md "Production"): both Secrets
    // from the host files, mounted (tests/bundled_prod.rs runs the rendered configuration).
    assert_eq!(
        get(&[
            "secret",
            "docker-registry-tls",
            "-n",
            "storage",
            "-o",
            "jsonpath={.type} {.metadata.labels.driftless\\.dev/host-secret}"
        ]),
        "kubernetes.io/tls true"
    );
    assert_eq!(
        get(&[
            "deploy",
            "docker-registry",
            "-n",
            "storage",
            "-o",
            "jsonpath={.spec.template.spec.volumes[?(@.name==\"tls\")].secret.secretName} {.spec.template.spec.volumes[?(@.name==\"htpasswd\")].secret.secretName}"
        ]),
        "docker-registry-tls docker-registry-htpasswd"
    );
    converged(&prod, &DUCKLAKE);

    // Back to `local` (the state the other tests and the demo expect): the autoscaler, the
    // budget and the network policies are pruned, the replica count is driftless's again, the
    // registry serves plain HTTP again. That is half of ducklake-app's objects (6 of 12, at the
    // gate's default share of 50 %): with a stricter `prune.maxShare` the gate would ask first.
    sync_to_healthy_with(&config, &["sync", "--allow-mass-prune"], &DUCKLAKE);
    assert!(
        kubectl_fails(&["get", "networkpolicy", "default-deny", "-n", "storage"]),
        "the network policies are pruned"
    );
    assert!(
        kubectl_fails(&["get", "hpa", "ducklake-backend", "-n", "ducklake"]),
        "the HPA is pruned"
    );
    assert_eq!(
        get(&[
            "deploy",
            "docker-registry",
            "-n",
            "storage",
            "-o",
            "jsonpath={.spec.template.spec.containers[0].readinessProbe.httpGet.path}"
        ]),
        "/v2/",
        "local: HTTP probes again"
    );
    converged(&config, &DUCKLAKE);
}

/// Polls `check` until it holds (fails the test after two minutes).
fn wait_until(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    while !check() {
        assert!(std::time::Instant::now() < deadline, "timed out: {what}");
        std::thread::sleep(std::time::Duration::from_millis(500));
    }
}

/// Whether `kubectl ARGS` fails (e.g. the object is not there).
fn kubectl_fails(args: &[&str]) -> bool {
    let env = TestEnv::get();
    !Command::new(env.var("KUBECTL"))
        .args(args)
        .env("KUBECONFIG", env.var("KUBECONFIG"))
        .output()
        .unwrap()
        .status
        .success()
}

/// `tests/env/standin-operator.py` while it lives: it writes the status Strimzi and the Spark
/// operator would write, so that the declared health checks of `health/operators.yaml` decide.
struct StandInOperator(std::process::Child);

impl StandInOperator {
    fn start() -> StandInOperator {
        let env = TestEnv::get();
        let child = Command::new("python3")
            .arg(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/tests/env/standin-operator.py"
            ))
            .args([
                "--kubectl",
                env.var("KUBECTL"),
                "--kubeconfig",
                env.var("KUBECONFIG"),
            ])
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("start the stand-in operator");
        StandInOperator(child)
    }
}

impl Drop for StandInOperator {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn lambda_stacks_sync_to_healthy_and_converge() {
    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path());
    let _operator = StandInOperator::start();
    sync_to_healthy(&config, &LAMBDA);
    // The declared checks decided: the stand-in operator's status is on every custom resource.
    assert_eq!(
        get(&[
            "kafka",
            "kafka-cluster",
            "-n",
            "kafka",
            "-o",
            "jsonpath={.status.conditions[0].reason}"
        ]),
        "StandIn"
    );

    // The operators stand-in: its CRDs established before the custom resources were applied.
    for crd in [
        "kafkas.kafka.strimzi.io",
        "kafkanodepools.kafka.strimzi.io",
        "kafkatopics.kafka.strimzi.io",
        "kafkausers.kafka.strimzi.io",
        "sparkapplications.sparkoperator.k8s.io",
    ] {
        assert_eq!(
            get(&[
                "crd",
                crd,
                "-o",
                "jsonpath={.status.conditions[?(@.type==\"Established\")].status}"
            ]),
            "True",
            "{crd}"
        );
    }
    // Kafka: the cluster with its external listener (local overlay) and the six topics.
    assert_eq!(
        get(&[
            "kafka",
            "kafka-cluster",
            "-n",
            "kafka",
            "-o",
            "jsonpath={.spec.kafka.listeners[2].configuration.bootstrap.nodePort}"
        ]),
        "30092"
    );
    let topics: BTreeSet<String> = get(&[
        "kafkatopics",
        "-n",
        "kafka",
        "-o",
        "jsonpath={range .items[*]}{.spec.topicName} {.spec.config.retention\\.ms}{\"\\n\"}{end}",
    ])
    .lines()
    .map(str::to_owned)
    .collect();
    let want: BTreeSet<String> = [
        "assessment_topic",
        "auth_topic",
        "course_topic",
        "notification_topic",
        "profile_topic",
        "video_topic",
    ]
    .iter()
    .map(|t| format!("{t} 604800000"))
    .collect();
    assert_eq!(topics, want);
    // MinIO with the spark-data layout Job done, S3 API on node port 30900 (local overlay).
    assert_eq!(
        get(&[
            "svc",
            "minio-nodeport",
            "-n",
            "minio",
            "-o",
            "jsonpath={.spec.ports[0].nodePort}"
        ]),
        "30900"
    );
    assert_eq!(
        get(&[
            "job",
            "minio-layout",
            "-n",
            "minio",
            "-o",
            "jsonpath={.status.succeeded}"
        ]),
        "1"
    );
    // Cassandra ready and its keyspace Job done.
    assert_eq!(
        get(&[
            "statefulset",
            "cassandra",
            "-n",
            "default",
            "-o",
            "jsonpath={.status.readyReplicas}"
        ]),
        "1"
    );
    assert_eq!(
        get(&[
            "job",
            "cassandra-schema-auth",
            "-n",
            "default",
            "-o",
            "jsonpath={.status.succeeded}"
        ]),
        "1"
    );
    // Spark: the ingestion application as the seed sizes it.
    assert_eq!(
        get(&[
            "sparkapplication",
            "ingestion",
            "-n",
            "spark",
            "-o",
            "jsonpath={.spec.driver.cores} {.spec.executor.instances}"
        ]),
        "1 2"
    );

    converged(&config, &LAMBDA);

    // Promoted to `prod` (stack/README.md "Production"): Kafka over TLS with SCRAM and ACLs, a
    // KafkaUser per client (healthy once the stand-in, as the user operator would, says Ready),
    // Spark on the TLS listener, the network policies.
    let prod = config_for(dir.path(), "prod");
    sync_to_healthy(&prod, &LAMBDA);
    assert_eq!(
        get(&[
            "kafka",
            "kafka-cluster",
            "-n",
            "kafka",
            "-o",
            "jsonpath={.spec.kafka.listeners[*].port} {.spec.kafka.listeners[0].authentication.type} {.spec.kafka.authorization.type}"
        ]),
        "9093 scram-sha-512 simple"
    );
    assert_eq!(
        get(&[
            "kafkausers",
            "-n",
            "kafka",
            "-o",
            "jsonpath={range .items[*]}{.metadata.name}={.status.conditions[0].type} {end}"
        ]),
        "event-producers=Ready spark-ingestion=Ready speed-layer=Ready "
    );
    assert_eq!(
        get(&[
            "sparkapplication",
            "ingestion",
            "-n",
            "spark",
            "-o",
            "jsonpath={.spec.executor.env[0].value}"
        ]),
        "kafka-cluster-kafka-bootstrap.kafka.svc.cluster.local:9093"
    );
    for ns in ["kafka", "minio", "spark"] {
        assert_eq!(
            get(&[
                "networkpolicy",
                "default-deny",
                "-n",
                ns,
                "-o",
                "jsonpath={.spec.policyTypes}"
            ]),
            r#"["Ingress","Egress"]"#,
            "{ns}"
        );
    }
    converged(&prod, &LAMBDA);

    // Back to `local` (what the other tests and the demo expect): users and policies pruned.
    sync_to_healthy_with(&config, &["sync", "--allow-mass-prune"], &LAMBDA);
    assert!(
        kubectl_fails(&["get", "kafkauser", "spark-ingestion", "-n", "kafka"]),
        "the KafkaUsers are pruned"
    );
    converged(&config, &LAMBDA);
}

/// The claims of the floe StatefulSets in `prod` (`storage: claim`), with their sizes.
const FLOE_CLAIMS: [(&str, &str); 5] = [
    ("data-floe-postgres-0", "10Gi"),
    ("data-floe-minio-0", "20Gi"),
    ("data-floe-cube-store-router-0", "10Gi"),
    ("data-floe-cube-store-worker-0", "10Gi"),
    ("data-floe-cube-store-worker-1", "10Gi"),
];

/// The NetworkPolicies of namespace `floe` in `prod`, as `<stack> <name>` (stack/README.md
/// "Network policies (floe)").
const FLOE_POLICIES: [&str; 16] = [
    "floe-infrastructure allow-dns",
    "floe-infrastructure default-deny",
    "floe-infrastructure floe-minio",
    "floe-infrastructure floe-polaris",
    "floe-infrastructure floe-polaris-init",
    "floe-infrastructure floe-postgres",
    "floe-observability floe-jaeger",
    "floe-observability floe-marquez",
    "floe-orchestration floe-dagster",
    "floe-orchestration floe-dagster-daemon",
    "floe-orchestration floe-dagster-user-code",
    "floe-orchestration floe-dagster-webserver",
    "floe-semantic floe-cube-api",
    "floe-semantic floe-cube-refresh-worker",
    "floe-semantic floe-cube-store-router",
    "floe-semantic floe-cube-store-worker",
];

#[test]
fn floe_stacks_sync_to_healthy_with_the_polaris_hook_and_converge() {
    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path());
    // A run of this test cut short may have left the `prod` objects (below): this sync prunes
    // them (no mass prune: at most 4 of a stack's 11 objects) and recreates the StatefulSets
    // without their claim templates.
    let t = sync_to_healthy_with(&config, &["sync"], &FLOE);
    // The Polaris initialisation ran as a postSync hook of floe-infrastructure, after it was
    // healthy and before the orchestration layer was applied.
    // (On a cluster where an earlier run of this test already ran it with this definition, it
    // is not run again: its recorded last run succeeded.)
    let hook =
        "hook    Job/floe/floe-polaris-init (stack/floe/infrastructure/hooks/polaris-init.yaml): ";
    let hook_at = t.find(hook).unwrap_or_else(|| panic!("hook reported: {t}"));
    let verdict = &t[hook_at + hook.len()..];
    assert!(
        verdict.starts_with("succeeded in") || verdict.starts_with("unchanged, not run"),
        "{t}"
    );
    let next_at = t
        .find("stack floe-orchestration: applied")
        .expect("orchestration applied");
    assert!(hook_at < next_at, "hook before the dependents: {t}");

    // Chart stacks rendered with values-local.yaml: emptyDir storage (no claims), one replica.
    assert_eq!(
        get(&[
            "statefulset",
            "floe-postgres",
            "-n",
            "floe",
            "-o",
            "jsonpath={.spec.volumeClaimTemplates}|{.spec.template.spec.volumes[?(@.name==\"data\")].emptyDir}"
        ]),
        "|{}"
    );
    assert_eq!(
        get(&[
            "deployment",
            "floe-polaris",
            "-n",
            "floe",
            "-o",
            "jsonpath={.status.readyReplicas}"
        ]),
        "1"
    );
    assert_eq!(
        get(&[
            "statefulset",
            "floe-cube-store-worker",
            "-n",
            "floe",
            "-o",
            "jsonpath={.status.readyReplicas}"
        ]),
        "1"
    );
    // The Kustomize stack with the local profile's directory.
    assert_eq!(
        get(&[
            "deployment",
            "floe-jaeger",
            "-n",
            "floe",
            "-o",
            "jsonpath={.spec.template.spec.containers[0].resources.limits.memory}"
        ]),
        "512Mi"
    );
    assert_eq!(
        get(&[
            "deployment",
            "floe-dagster-webserver",
            "-n",
            "floe",
            "-o",
            "jsonpath={.status.readyReplicas}"
        ]),
        "1"
    );

    // The second run: nothing to change, and the hook is not run again.
    let out = on_stacks(&config, "sync", &FLOE);
    assert!(out.status.success(), "second sync: {}", text(&out));
    let not_run =
        "floe-polaris-init (stack/floe/infrastructure/hooks/polaris-init.yaml): unchanged, not run";
    assert!(text(&out).contains(not_run), "{}", text(&out));
    converged(&config, &FLOE);

    // Promoted to `prod` (values.yaml alone, kustomize/prod): claims, two replicas, the
    // registry's pull secret, the network policies. The StatefulSets gain claim templates, a
    // change the API server refuses: they opt in to being recreated (driftless.dev/recreate).
    free_volumes_for_floe_claims();
    let prod = config_for(dir.path(), "prod");
    let t = sync_to_healthy_with(&prod, &["sync"], &FLOE);
    assert!(t.contains(not_run), "the hook's file is the same: {t}");
    floe_prod_is_on_the_cluster();
    converged(&prod, &FLOE);

    // Back to `local` (what the next run and the demo expect): the policies pruned (within the
    // mass-prune gate's default share), one replica, emptyDir again. The claims are kept
    // (driftless never prunes a claim, and the StatefulSet controller leaves them): the next
    // promotion mounts the same volumes again, so reruns do not use up the test cluster's
    // volumes (Retain: a deleted claim's volume is never free again).
    sync_to_healthy(&config, &FLOE);
    assert_eq!(get(&["networkpolicy", "-n", "floe", "-o", "name"]), "");
    assert_eq!(
        get(&[
            "statefulset",
            "floe-minio",
            "-n",
            "floe",
            "-o",
            "jsonpath={.spec.volumeClaimTemplates}|{.spec.template.spec.volumes[?(@.name==\"data\")].emptyDir}"
        ]),
        "|{}"
    );
    assert_eq!(
        get(&[
            "deployment",
            "floe-dagster-user-code",
            "-n",
            "floe",
            "-o",
            "jsonpath={.status.readyReplicas} {.spec.template.spec.imagePullSecrets}"
        ]),
        "1 ",
        "local: one replica, no pull secret"
    );
    for (claim, _) in FLOE_CLAIMS {
        assert_eq!(
            get(&["pvc", claim, "-n", "floe", "-o", "jsonpath={.status.phase}"]),
            "Bound",
            "{claim} kept"
        );
    }
    converged(&config, &FLOE);
}

/// Fails, saying why, when the test cluster has too few free volumes left for the floe claims
/// that do not exist yet (a claim would stay Pending until its stack's wait times out). The
/// environment's volumes are `Retain`: a volume whose claim was deleted is never free again.
fn free_volumes_for_floe_claims() {
    let existing: BTreeSet<String> = get(&[
        "pvc",
        "-n",
        "floe",
        "-o",
        "jsonpath={range .items[*]}{.metadata.name}{\"\\n\"}{end}",
    ])
    .lines()
    .map(str::to_owned)
    .collect();
    let missing = FLOE_CLAIMS
        .iter()
        .filter(|(claim, _)| !existing.contains(*claim))
        .count();
    let free = get(&[
        "pv",
        "-o",
        "jsonpath={range .items[*]}{.status.phase}/{.spec.storageClassName}{\"\\n\"}{end}",
    ])
    .lines()
    .filter(|l| *l == "Available/")
    .count();
    assert!(
        free >= missing,
        "the floe claims need {missing} free PersistentVolumes, the test cluster has {free} (Released volumes are not reused): restart the test environment"
    );
}

/// What `prod` changes in namespace `floe`, read back from the cluster.
fn floe_prod_is_on_the_cluster() {
    // Every layer's network policies, behind a namespace-wide default deny.
    let policies: BTreeSet<String> = get(&[
        "networkpolicy",
        "-n",
        "floe",
        "-o",
        "jsonpath={range .items[*]}{.metadata.labels.driftless\\.dev/stack} {.metadata.name}{\"\\n\"}{end}",
    ])
    .lines()
    .map(str::to_owned)
    .collect();
    let want: BTreeSet<String> = FLOE_POLICIES.iter().map(|p| (*p).to_owned()).collect();
    assert_eq!(policies, want);
    assert_eq!(
        get(&[
            "networkpolicy",
            "default-deny",
            "-n",
            "floe",
            "-o",
            "jsonpath={.spec.podSelector} {.spec.policyTypes}"
        ]),
        r#"{} ["Ingress","Egress"]"#
    );
    // values.yaml's replica counts, ready.
    for (kind, name) in [
        ("deployment", "floe-polaris"),
        ("deployment", "floe-dagster-webserver"),
        ("deployment", "floe-dagster-user-code"),
        ("deployment", "floe-cube-api"),
        ("statefulset", "floe-cube-store-worker"),
    ] {
        assert_eq!(
            get(&[
                kind,
                name,
                "-n",
                "floe",
                "-o",
                "jsonpath={.spec.replicas} {.status.readyReplicas}"
            ]),
            "2 2",
            "{kind}/{name}"
        );
    }
    // `storage: claim`: each StatefulSet pod on its own claim, bound to one of the environment's
    // volumes; the claims name no class, so a real cluster gives them its default StorageClass.
    for (claim, size) in FLOE_CLAIMS {
        assert_eq!(
            get(&[
                "pvc",
                claim,
                "-n",
                "floe",
                "-o",
                "jsonpath={.status.phase} {.spec.resources.requests.storage} class={.spec.storageClassName}"
            ]),
            format!("Bound {size} class="),
            "{claim}"
        );
        let pod = claim.trim_start_matches("data-");
        assert_eq!(
            get(&[
                "pod",
                pod,
                "-n",
                "floe",
                "-o",
                "jsonpath={.spec.volumes[?(@.name==\"data\")].persistentVolumeClaim.claimName} {.status.phase}"
            ]),
            format!("{claim} Running"),
            "{pod}"
        );
    }
    // The user code from the in-cluster registry, pulled with the docker config Secret of the
    // host file (a rolled-out pod of `local` may still be terminating: wait for the two).
    wait_until("two user-code pods of the prod template", || {
        get(&[
            "pods",
            "-n",
            "floe",
            "-l",
            "app=floe-dagster-user-code",
            "-o",
            "jsonpath={range .items[*]}{.spec.imagePullSecrets[*].name} {.spec.containers[0].image}{\"\\n\"}{end}",
        ]) == "floe-registry-pull docker-registry.storage.svc.cluster.local:5000/floe/demo:0.1.0\n"
            .repeat(2)
    });
    assert_eq!(
        get(&[
            "secret",
            "floe-registry-pull",
            "-n",
            "floe",
            "-o",
            "jsonpath={.type} {.metadata.labels.driftless\\.dev/host-secret}"
        ]),
        "kubernetes.io/dockerconfigjson true"
    );
}

/// Every bundled Backup job encrypts in `prod` (to the recipients the profile names) and not in
/// `local` (a development host has no identity).
#[test]
fn bundled_backups_are_encrypted_in_prod() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    for profile in ["local", "prod"] {
        let env = TestEnv::get();
        let renderers = driftless::stack::Renderers {
            helm: env.var("HELM").into(),
            kubectl: env.var("KUBECTL").into(),
            ..Default::default()
        };
        let stacks = driftless::stack::load::load_repo_with(
            root,
            Some(profile),
            driftless::stack::load::LoadLimits::default(),
            &renderers,
        )
        .unwrap();
        let jobs = driftless::jobs::model::load_jobs(&stacks).unwrap();
        let backups: BTreeSet<(String, Option<Vec<String>>)> = jobs
            .iter()
            .filter_map(|j| {
                let spec = j.backup()?;
                Some((
                    j.name.clone(),
                    spec.encryption.as_ref().map(|e| e.age_recipients.clone()),
                ))
            })
            .collect();
        let names: Vec<&str> = backups.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names,
            [
                "ducklake-data",
                "ducklake-postgres",
                "lambda-cassandra-snapshot",
                "lambda-spark-data",
                "registry-data"
            ],
            "{profile}"
        );
        for (name, recipients) in &backups {
            match profile {
                "prod" => assert_eq!(
                    recipients.as_ref().map(Vec::len),
                    Some(2),
                    "{name}: the host's and the offline key"
                ),
                _ => assert_eq!(recipients, &None, "{name}"),
            }
        }
    }
}

/// A pod as network policies see it: its namespace and labels (`None` stands for an address
/// outside the pod network: a node, the API server, the internet).
#[derive(Clone, Debug)]
struct Peer {
    ns: String,
    labels: serde_json::Map<String, serde_json::Value>,
}

/// `matchLabels` of a label selector against `labels` (the bundled policies use no
/// `matchExpressions`; a policy that did would fail this test rather than be misread).
fn selects(
    selector: &serde_json::Value,
    labels: &serde_json::Map<String, serde_json::Value>,
) -> bool {
    assert!(
        selector.get("matchExpressions").is_none(),
        "matchExpressions: extend the test"
    );
    selector["matchLabels"]
        .as_object()
        .is_none_or(|m| m.iter().all(|(k, v)| labels.get(k) == Some(v)))
}

/// Whether a rule's peer (`from`/`to` entry of a policy in `policy_ns`) names `peer`.
fn peer_matches(entry: &serde_json::Value, policy_ns: &str, peer: Option<&Peer>) -> bool {
    if entry.get("ipBlock").is_some() {
        return peer.is_none();
    }
    let Some(p) = peer else { return false };
    let ns_ok = match entry.get("namespaceSelector") {
        Some(sel) => {
            let mut ns_labels = serde_json::Map::new();
            ns_labels.insert("kubernetes.io/metadata.name".into(), p.ns.clone().into());
            selects(sel, &ns_labels)
        }
        None => p.ns == policy_ns,
    };
    ns_ok
        && entry
            .get("podSelector")
            .is_none_or(|sel| selects(sel, &p.labels))
}

fn port_matches(ports: Option<&serde_json::Value>, port: u16, proto: &str) -> bool {
    ports
        .and_then(|p| p.as_array())
        .filter(|p| !p.is_empty())
        .is_none_or(|ports| {
            ports.iter().any(|p| {
                p["protocol"].as_str().unwrap_or("TCP") == proto
                    && p.get("port").is_none_or(|n| {
                        n.as_u64()
                            .unwrap_or_else(|| panic!("named port {n}: extend the test"))
                            == u64::from(port)
                    })
            })
        })
}

/// Whether `policies` let `subject` send (`egress`) to or receive (`!egress`) from `other`.
fn side_allows(
    policies: &[(String, serde_json::Value)],
    subject: &Peer,
    other: Option<&Peer>,
    port: u16,
    proto: &str,
    egress: bool,
) -> bool {
    let (kind, rules_key, peers_key) = if egress {
        ("Egress", "egress", "to")
    } else {
        ("Ingress", "ingress", "from")
    };
    let applicable: Vec<&(String, serde_json::Value)> = policies
        .iter()
        .filter(|(ns, p)| {
            *ns == subject.ns
                && selects(&p["spec"]["podSelector"], &subject.labels)
                && p["spec"]["policyTypes"]
                    .as_array()
                    .expect("the bundled policies name their policyTypes")
                    .iter()
                    .any(|t| t == kind)
        })
        .collect();
    applicable.is_empty()
        || applicable.iter().any(|(ns, p)| {
            p["spec"][rules_key].as_array().is_some_and(|rules| {
                rules.iter().any(|r| {
                    let peers_ok = r[peers_key]
                        .as_array()
                        .filter(|a| !a.is_empty())
                        .is_none_or(|a| a.iter().any(|e| peer_matches(e, ns, other)));
                    peers_ok && port_matches(r.get("ports"), port, proto)
                })
            })
        })
}

/// The `prod` render of the stacks named `prefix*`: their NetworkPolicies (with namespace) and
/// their pods (workload templates, sync hooks' Jobs; the SparkApplication's driver and executor
/// labels).
fn prod_policies_and_pods(prefix: &str) -> (Vec<(String, serde_json::Value)>, Vec<Peer>) {
    let env = TestEnv::get();
    let renderers = driftless::stack::Renderers {
        helm: env.var("HELM").into(),
        kubectl: env.var("KUBECTL").into(),
        ..Default::default()
    };
    let (stacks, _) = driftless::stack::load_and_render(
        Path::new(env!("CARGO_MANIFEST_DIR")),
        Some("prod"),
        &driftless::credentials::Credentials::in_dir(None),
        true,
        &renderers,
    )
    .unwrap();
    let mut policies = Vec::new();
    let mut pods: Vec<Peer> = Vec::new();
    for o in stacks
        .iter()
        .filter(|s| s.name.starts_with(prefix))
        .flat_map(|s| &s.objects)
    {
        let ns = o.key.namespace.clone().unwrap_or_default();
        let labels = |v: &serde_json::Value| v.as_object().cloned().unwrap_or_default();
        match o.key.kind.as_str() {
            "NetworkPolicy" => policies.push((ns, o.object.clone())),
            "Deployment" | "StatefulSet" | "DaemonSet" | "Job" => pods.push(Peer {
                ns,
                labels: labels(&o.object["spec"]["template"]["metadata"]["labels"]),
            }),
            "SparkApplication" => {
                for role in ["driver", "executor"] {
                    pods.push(Peer {
                        ns: ns.clone(),
                        labels: labels(&o.object["spec"][role]["labels"]),
                    });
                }
            }
            _ => {}
        }
    }
    // Sync hooks' Jobs run in the stacks' namespaces under the same policies.
    for h in stacks
        .iter()
        .filter(|s| s.name.starts_with(prefix))
        .flat_map(|s| &s.post_sync)
    {
        pods.push(Peer {
            ns: h.job.key.namespace.clone().unwrap_or_default(),
            labels: h.job.object["spec"]["template"]["metadata"]["labels"]
                .as_object()
                .cloned()
                .unwrap_or_default(),
        });
    }
    (policies, pods)
}

/// The `prod` network policies of the DuckLake namespaces allow exactly the flows of
/// stack/README.md "Network policies": each listed flow passes both its egress and its ingress
/// side, and flows nobody needs are denied by the namespaces' default-deny.
#[test]
fn ducklake_network_policies_allow_the_documented_flows_only() {
    let (policies, pods) = prod_policies_and_pods("ducklake-");
    let pod = |ns: &str, app: &str| -> Peer {
        pods.iter()
            .find(|p| p.ns == ns && p.labels.get("app").and_then(|a| a.as_str()) == Some(app))
            .unwrap_or_else(|| panic!("no pod {ns}/{app} in the prod render"))
            .clone()
    };
    let outside = |ns: &str, key: &str, value: &str| {
        let mut labels = serde_json::Map::new();
        labels.insert(key.into(), value.into());
        Peer {
            ns: ns.into(),
            labels,
        }
    };
    let flow = |from: Option<&Peer>, to: Option<&Peer>, port: u16, proto: &str| {
        from.is_none_or(|f| side_allows(&policies, f, to, port, proto, true))
            && to.is_none_or(|t| side_allows(&policies, t, from, port, proto, false))
    };
    let backend = pod("ducklake", "ducklake-backend");
    let postgres = pod("storage", "postgres");
    let minio = pod("storage", "minio");
    let buckets = pod("storage", "minio-buckets");
    let registry = pod("storage", "docker-registry");
    let loki = pod("logging", "loki");
    let promtail = pod("logging", "promtail");
    let ingress = outside("ingress-nginx", "app.kubernetes.io/name", "ingress-nginx");
    let dns = outside("kube-system", "k8s-app", "kube-dns");
    let alertmanager = outside("monitoring", "app.kubernetes.io/name", "alertmanager");

    // stack/README.md "Network policies", row by row.
    let allowed = [
        (
            "backend → postgres",
            Some(&backend),
            Some(&postgres),
            5432,
            "TCP",
        ),
        ("backend → minio", Some(&backend), Some(&minio), 9000, "TCP"),
        (
            "bucket Job → minio",
            Some(&buckets),
            Some(&minio),
            9000,
            "TCP",
        ),
        ("promtail → loki", Some(&promtail), Some(&loki), 3100, "TCP"),
        ("promtail → API server", Some(&promtail), None, 6443, "TCP"),
        (
            "promtail → API server (443)",
            Some(&promtail),
            None,
            443,
            "TCP",
        ),
        (
            "ingress controller → backend",
            Some(&ingress),
            Some(&backend),
            8000,
            "TCP",
        ),
        ("nodes → registry", None, Some(&registry), 5000, "TCP"),
        (
            "loki's ruler → alertmanager",
            Some(&loki),
            Some(&alertmanager),
            9093,
            "TCP",
        ),
    ];
    for (what, from, to, port, proto) in allowed {
        assert!(flow(from, to, port, proto), "{what} must be allowed");
    }
    for p in &pods {
        assert!(
            flow(Some(p), Some(&dns), 53, "UDP") && flow(Some(p), Some(&dns), 53, "TCP"),
            "{p:?} resolves names"
        );
    }
    let denied = [
        ("backend → loki", Some(&backend), Some(&loki), 3100, "TCP"),
        (
            "backend → registry",
            Some(&backend),
            Some(&registry),
            5000,
            "TCP",
        ),
        ("backend → internet", Some(&backend), None, 443, "TCP"),
        (
            "promtail → postgres",
            Some(&promtail),
            Some(&postgres),
            5432,
            "TCP",
        ),
        (
            "minio → postgres",
            Some(&minio),
            Some(&postgres),
            5432,
            "TCP",
        ),
        (
            "bucket Job → postgres",
            Some(&buckets),
            Some(&postgres),
            5432,
            "TCP",
        ),
        ("registry → internet", Some(&registry), None, 443, "TCP"),
        ("loki → internet", Some(&loki), None, 443, "TCP"),
        (
            "loki → alertmanager's web port",
            Some(&loki),
            Some(&alertmanager),
            9094,
            "TCP",
        ),
        (
            "promtail → alertmanager",
            Some(&promtail),
            Some(&alertmanager),
            9093,
            "TCP",
        ),
        (
            "ingress controller → postgres",
            Some(&ingress),
            Some(&postgres),
            5432,
            "TCP",
        ),
        (
            "ingress controller → loki",
            Some(&ingress),
            Some(&loki),
            3100,
            "TCP",
        ),
        ("nodes → postgres", None, Some(&postgres), 5432, "TCP"),
        (
            "backend → postgres on another port",
            Some(&backend),
            Some(&postgres),
            5433,
            "TCP",
        ),
        (
            "promtail → loki over gRPC",
            Some(&promtail),
            Some(&loki),
            9096,
            "TCP",
        ),
    ];
    for (what, from, to, port, proto) in denied {
        assert!(!flow(from, to, port, proto), "{what} must be denied");
    }
    // Every DuckLake namespace denies by default, both ways.
    for ns in ["storage", "logging", "ducklake"] {
        assert!(
            policies.iter().any(|(n, p)| n == ns
                && p["spec"]["podSelector"] == serde_json::json!({})
                && p["spec"]["policyTypes"] == serde_json::json!(["Ingress", "Egress"])),
            "{ns} has a default-deny policy"
        );
    }
}

/// The `prod` network policies of the Lambda namespaces (`kafka`, `minio`, `spark`; Cassandra's
/// pods in `default`) allow exactly the flows of stack/README.md "Network policies (Lambda)".
#[test]
fn lambda_network_policies_allow_the_documented_flows_only() {
    let (policies, pods) = prod_policies_and_pods("lambda-");
    let pod = |ns: &str, key: &str, value: &str| -> Peer {
        pods.iter()
            .find(|p| p.ns == ns && p.labels.get(key).and_then(|a| a.as_str()) == Some(value))
            .unwrap_or_else(|| panic!("no pod {ns}/{key}={value} in the prod render"))
            .clone()
    };
    let outside = |ns: &str, labels: &[(&str, &str)]| Peer {
        ns: ns.into(),
        labels: labels
            .iter()
            .map(|(k, v)| ((*k).to_string(), (*v).into()))
            .collect(),
    };
    let flow = |from: Option<&Peer>, to: Option<&Peer>, port: u16, proto: &str| {
        from.is_none_or(|f| side_allows(&policies, f, to, port, proto, true))
            && to.is_none_or(|t| side_allows(&policies, t, from, port, proto, false))
    };
    let driver = pod("spark", "spark-role", "driver");
    let executor = pod("spark", "spark-role", "executor");
    let minio = pod("minio", "app", "minio");
    let layout = pod("minio", "app", "minio-layout");
    let users = pod("minio", "app", "minio-users");
    let cassandra = pod("default", "app", "cassandra");
    let schema = pod("default", "app", "cassandra-schema");
    // Strimzi's pods, as the operator labels them (it creates them, not driftless).
    let broker = outside(
        "kafka",
        &[
            ("strimzi.io/cluster", "kafka-cluster"),
            ("strimzi.io/name", "kafka-cluster-kafka"),
        ],
    );
    let entity_operator = outside(
        "kafka",
        &[
            ("strimzi.io/cluster", "kafka-cluster"),
            ("strimzi.io/name", "kafka-cluster-entity-operator"),
        ],
    );
    let strimzi = outside("strimzi", &[("name", "strimzi-cluster-operator")]);
    let client = outside("serving", &[("cassandra-client", "true")]);
    let stranger = outside("default", &[("app", "other")]);
    let dns = outside("kube-system", &[("k8s-app", "kube-dns")]);

    // stack/README.md "Network policies (Lambda)", row by row.
    let mut allowed = vec![
        ("layout Job → minio", Some(&layout), Some(&minio), 9000),
        ("users Job → minio", Some(&users), Some(&minio), 9000),
        ("broker → broker", Some(&broker), Some(&broker), 9091),
        (
            "broker → broker (KRaft)",
            Some(&broker),
            Some(&broker),
            9090,
        ),
        (
            "entity operator → broker",
            Some(&entity_operator),
            Some(&broker),
            9091,
        ),
        (
            "entity operator → API server",
            Some(&entity_operator),
            None,
            6443,
        ),
        (
            "entity operator → API server (443)",
            Some(&entity_operator),
            None,
            443,
        ),
        ("driver → API server", Some(&driver), None, 6443),
        ("driver → API server (443)", Some(&driver), None, 443),
        ("driver → executor", Some(&driver), Some(&executor), 7079),
        ("executor → driver", Some(&executor), Some(&driver), 7078),
        (
            "schema Job → cassandra",
            Some(&schema),
            Some(&cassandra),
            9042,
        ),
        ("client → cassandra", Some(&client), Some(&cassandra), 9042),
    ];
    for p in [9090, 9091, 8443] {
        allowed.push((
            "cluster operator → broker",
            Some(&strimzi),
            Some(&broker),
            p,
        ));
    }
    for spark in [&driver, &executor] {
        allowed.push(("spark → minio", Some(spark), Some(&minio), 9000));
        // The TLS + SCRAM listener only (prod has no plain listener).
        allowed.push(("spark → broker", Some(spark), Some(&broker), 9093));
    }
    let kafka_client = outside("serving", &[("kafka-client", "true")]);
    allowed.push((
        "kafka client → broker",
        Some(&kafka_client),
        Some(&broker),
        9093,
    ));
    for (what, from, to, port) in allowed {
        assert!(
            flow(from, to, port, "TCP"),
            "{what} ({port}) must be allowed"
        );
    }
    for p in pods.iter().chain([&broker, &entity_operator]) {
        assert!(
            flow(Some(p), Some(&dns), 53, "UDP") && flow(Some(p), Some(&dns), 53, "TCP"),
            "{p:?} resolves names"
        );
    }
    let denied = [
        ("executor → internet", Some(&executor), None, 443),
        ("driver → internet (HTTP)", Some(&driver), None, 80),
        ("executor → API server", Some(&executor), None, 6443),
        ("spark → cassandra", Some(&executor), Some(&cassandra), 9042),
        ("spark → minio console", Some(&executor), Some(&minio), 9001),
        ("broker → API server", Some(&broker), None, 6443),
        ("broker → minio", Some(&broker), Some(&minio), 9000),
        ("layout Job → broker", Some(&layout), Some(&broker), 9092),
        ("minio → internet", Some(&minio), None, 443),
        ("nodes → minio", None, Some(&minio), 9000),
        ("nodes → broker", None, Some(&broker), 9092),
        (
            "cluster operator → broker client port",
            Some(&strimzi),
            Some(&broker),
            9092,
        ),
        (
            "another pod in default → cassandra",
            Some(&stranger),
            Some(&cassandra),
            9042,
        ),
        (
            "schema Job → cassandra on another port",
            Some(&schema),
            Some(&cassandra),
            7000,
        ),
        ("cassandra → internet", Some(&cassandra), None, 443),
        ("client → minio", Some(&client), Some(&minio), 9000),
        (
            "spark → broker plain port",
            Some(&executor),
            Some(&broker),
            9092,
        ),
        (
            "kafka client → broker plain port",
            Some(&kafka_client),
            Some(&broker),
            9092,
        ),
        (
            "cassandra client → broker",
            Some(&client),
            Some(&broker),
            9093,
        ),
    ];
    for (what, from, to, port) in denied {
        assert!(!flow(from, to, port, "TCP"), "{what} must be denied");
    }
    for ns in ["kafka", "minio", "spark"] {
        assert!(
            policies.iter().any(|(n, p)| n == ns
                && p["spec"]["podSelector"] == serde_json::json!({})
                && p["spec"]["policyTypes"] == serde_json::json!(["Ingress", "Egress"])),
            "{ns} has a default-deny policy"
        );
    }
    // `default` is shared with other workloads: no namespace-wide policy there.
    assert!(
        !policies
            .iter()
            .any(|(n, p)| n == "default" && p["spec"]["podSelector"] == serde_json::json!({})),
        "no default-deny over the shared namespace default"
    );
}

/// The `prod` network policies of namespace `floe` (the policies templates of the charts, on in
/// `values.yaml` only, and the observability layer's `kustomize/prod`) allow exactly the flows
/// of stack/README.md "Network policies (floe)"; the `local` render has none.
#[test]
fn floe_network_policies_allow_the_documented_flows_only() {
    let (policies, pods) = prod_policies_and_pods("floe-");
    let pod = |app: &str| -> Peer {
        pods.iter()
            .find(|p| p.ns == "floe" && p.labels.get("app").and_then(|a| a.as_str()) == Some(app))
            .unwrap_or_else(|| panic!("no pod floe/{app} in the prod render"))
            .clone()
    };
    let flow = |from: Option<&Peer>, to: Option<&Peer>, port: u16| {
        from.is_none_or(|f| side_allows(&policies, f, to, port, "TCP", true))
            && to.is_none_or(|t| side_allows(&policies, t, from, port, "TCP", false))
    };
    let postgres = pod("floe-postgres");
    let minio = pod("floe-minio");
    let polaris = pod("floe-polaris");
    let hook = pod("floe-polaris-init");
    let dagster = [
        pod("floe-dagster-webserver"),
        pod("floe-dagster-daemon"),
        pod("floe-dagster-user-code"),
    ];
    let user_code = pod("floe-dagster-user-code");
    let cube = [pod("floe-cube-api"), pod("floe-cube-refresh-worker")];
    let router = pod("floe-cube-store-router");
    let worker = pod("floe-cube-store-worker");
    let jaeger = pod("floe-jaeger");
    let marquez = pod("floe-marquez");
    let dns = Peer {
        ns: "kube-system".into(),
        labels: [("k8s-app".to_string(), "kube-dns".into())]
            .into_iter()
            .collect(),
    };
    let ingress = Peer {
        ns: "ingress-nginx".into(),
        labels: [("app.kubernetes.io/name".to_string(), "ingress-nginx".into())]
            .into_iter()
            .collect(),
    };
    let stranger = Peer {
        ns: "other".into(),
        labels: [("app".to_string(), "floe-dagster-webserver".into())]
            .into_iter()
            .collect(),
    };

    // stack/README.md "Network policies (floe)", row by row.
    let mut allowed: Vec<(&str, &Peer, &Peer, u16)> = vec![
        (
            "dagster webserver → user code",
            &dagster[0],
            &user_code,
            3030,
        ),
        ("dagster daemon → user code", &dagster[1], &user_code, 3030),
        ("marquez → postgres", &marquez, &postgres, 5432),
        ("polaris → minio", &polaris, &minio, 9000),
        ("hook → minio", &hook, &minio, 9000),
        ("hook → polaris", &hook, &polaris, 8181),
        ("router → worker", &router, &worker, 10001),
        ("worker → router metastore", &worker, &router, 9999),
        ("router → minio", &router, &minio, 9000),
        ("worker → minio", &worker, &minio, 9000),
    ];
    for d in &dagster {
        allowed.extend([
            ("dagster → postgres", d, &postgres, 5432),
            ("dagster → polaris", d, &polaris, 8181),
            ("dagster → minio", d, &minio, 9000),
            ("dagster → jaeger (OTLP gRPC)", d, &jaeger, 4317),
            ("dagster → jaeger (OTLP HTTP)", d, &jaeger, 4318),
            ("dagster → marquez", d, &marquez, 5000),
        ]);
    }
    for c in &cube {
        allowed.extend([
            ("cube → polaris", c, &polaris, 8181),
            ("cube → minio", c, &minio, 9000),
            ("cube → cube store router", c, &router, 3030),
            ("cube → jaeger (OTLP gRPC)", c, &jaeger, 4317),
            ("cube → jaeger (OTLP HTTP)", c, &jaeger, 4318),
        ]);
    }
    for (what, from, to, port) in &allowed {
        assert!(
            flow(Some(from), Some(to), *port),
            "{what} ({port}) must be allowed"
        );
    }
    for p in &pods {
        assert!(
            side_allows(&policies, p, Some(&dns), 53, "UDP", true)
                && side_allows(&policies, p, Some(&dns), 53, "TCP", true),
            "{p:?} resolves names"
        );
    }
    let denied: Vec<(&str, Option<&Peer>, Option<&Peer>, u16)> = vec![
        ("cube → postgres", Some(&cube[0]), Some(&postgres), 5432),
        (
            "cube → cube store worker",
            Some(&cube[0]),
            Some(&worker),
            10001,
        ),
        ("cube → user code", Some(&cube[0]), Some(&user_code), 3030),
        (
            "user code → user code's clients",
            Some(&user_code),
            Some(&dagster[0]),
            3000,
        ),
        ("polaris → postgres", Some(&polaris), Some(&postgres), 5432),
        ("hook → postgres", Some(&hook), Some(&postgres), 5432),
        ("marquez → minio", Some(&marquez), Some(&minio), 9000),
        ("jaeger → postgres", Some(&jaeger), Some(&postgres), 5432),
        (
            "dagster → minio console",
            Some(&dagster[0]),
            Some(&minio),
            9001,
        ),
        (
            "dagster → polaris management",
            Some(&dagster[0]),
            Some(&polaris),
            8182,
        ),
        ("router → polaris", Some(&router), Some(&polaris), 8181),
        ("dagster → internet", Some(&dagster[2]), None, 443),
        ("cube → internet", Some(&cube[0]), None, 443),
        ("minio → internet", Some(&minio), None, 443),
        ("nodes → minio", None, Some(&minio), 9000),
        ("nodes → postgres", None, Some(&postgres), 5432),
        (
            "ingress controller → dagster webserver",
            Some(&ingress),
            Some(&dagster[0]),
            3000,
        ),
        (
            "a pod of another namespace → postgres",
            Some(&stranger),
            Some(&postgres),
            5432,
        ),
        (
            "a pod of another namespace → jaeger",
            Some(&stranger),
            Some(&jaeger),
            4317,
        ),
    ];
    for (what, from, to, port) in denied {
        assert!(!flow(from, to, port), "{what} must be denied");
    }
    assert!(
        policies.iter().any(|(n, p)| n == "floe"
            && p["spec"]["podSelector"] == serde_json::json!({})
            && p["spec"]["policyTypes"] == serde_json::json!(["Ingress", "Egress"])),
        "floe has a default-deny policy"
    );
    // `local` (values-local.yaml, kustomize/local): no network policies.
    let env = TestEnv::get();
    let renderers = driftless::stack::Renderers {
        helm: env.var("HELM").into(),
        kubectl: env.var("KUBECTL").into(),
        ..Default::default()
    };
    let (local, _) = driftless::stack::load_and_render(
        Path::new(env!("CARGO_MANIFEST_DIR")),
        Some("local"),
        &driftless::credentials::Credentials::in_dir(None),
        true,
        &renderers,
    )
    .unwrap();
    let local_policies = local
        .iter()
        .filter(|s| s.name.starts_with("floe-"))
        .flat_map(|s| &s.objects)
        .filter(|o| o.key.kind == "NetworkPolicy")
        .count();
    assert_eq!(local_policies, 0, "no network policies in local");
}
