//! driftless against `kubectl` on the same API server, in the same run, alternating, several
//! rounds: `diff` of N applied unchanged objects, the first `sync` of N objects, and a `sync` after
//! 1 % of them changed. Prints medians and ratios; API requests are counted from the API server's
//! own `apiserver_request_total` (delta per verb, resources of the benchmark only, status
//! subresources excluded: controllers write those). Results are also written as JSON.
//!
//! Then the daemon (`--daemon N`, default 5000 objects, 0 to skip): its first sync, resident
//! memory once synced, the cost of reconciles of an unchanged revision (requests counted the same
//! way; duration from its status), and webhook → change applied for one object.
//!
//! `cargo bench --bench perf` (the test environment must be up: `tests/env/testenv up`).
//! Options after `--`: `--sizes 100,1000,5000` `--rounds 3` `--daemon 5000` `--out FILE`.

#[path = "../tests/support/mod.rs"]
mod support;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support::{TestEnv, unique_name};

const RESOURCES: [&str; 7] = [
    "namespaces",
    "configmaps",
    "secrets",
    "services",
    "serviceaccounts",
    "deployments",
    "widgets",
];

/// Request counts by verb (and `dryRun` separately).
type Counts = BTreeMap<String, f64>;

async fn counts(client: &kube::Client) -> Counts {
    let mut out = Counts::new();
    for sample in support::apiserver_requests(client).await {
        if !RESOURCES.contains(&sample.label("resource")) || !sample.label("subresource").is_empty()
        {
            continue;
        }
        let verb = if sample.label("dry_run").is_empty() {
            sample.label("verb").to_owned()
        } else {
            format!("{}(dryRun)", sample.label("verb"))
        };
        *out.entry(verb).or_default() += sample.value;
    }
    out
}

fn delta(before: &Counts, after: &Counts) -> Counts {
    after
        .iter()
        .map(|(k, v)| (k.clone(), v - before.get(k).copied().unwrap_or(0.0)))
        .filter(|(_, v)| *v > 0.0)
        .collect()
}

fn total(c: &Counts) -> f64 {
    c.values().sum()
}

/// Writes N objects as a driftless stack (`<dir>/stack/bench/…`) and as plain manifests for
/// kubectl (`<dir>/kubectl/…`): 10 % Deployments, 10 % Services, 30 % ConfigMaps, 10 % Secrets,
/// 20 % ServiceAccounts, 20 % Widgets (a custom resource), spread over one namespace per 100.
fn generate(dir: &Path, prefix: &str, n: usize, changed: usize) {
    let namespaces = n.div_ceil(100);
    let mut docs: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    for i in 0..namespaces {
        docs.entry("00-namespaces").or_default().push(format!(
            "apiVersion: v1\nkind: Namespace\nmetadata: {{name: {prefix}-{i}}}\n"
        ));
    }
    for i in 0..n {
        let ns = format!("{prefix}-{}", i % namespaces);
        let value = if i < changed { "changed" } else { "original" };
        let (file, doc) = match i % 10 {
            0 => (
                "40-deployments",
                format!(
                    "apiVersion: apps/v1\nkind: Deployment\nmetadata: {{name: app-{i}, namespace: {ns}}}\nspec:\n  replicas: 0\n  selector: {{matchLabels: {{app: app-{i}}}}}\n  template:\n    metadata: {{labels: {{app: app-{i}}}}}\n    spec: {{containers: [{{name: app, image: \"registry.local/app:1.0.{}\"}}]}}\n",
                    i % 7
                ),
            ),
            1 => (
                "30-services",
                format!(
                    "apiVersion: v1\nkind: Service\nmetadata: {{name: svc-{i}, namespace: {ns}}}\nspec:\n  selector: {{app: app-{i}}}\n  ports: [{{port: 80, targetPort: 8080}}]\n"
                ),
            ),
            2..=4 => (
                "20-configmaps",
                format!(
                    "apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: cm-{i}, namespace: {ns}}}\ndata: {{value: {value}, index: \"{i}\"}}\n"
                ),
            ),
            5 => (
                "20-secrets",
                format!(
                    "apiVersion: v1\nkind: Secret\nmetadata: {{name: secret-{i}, namespace: {ns}}}\nstringData: {{token: bench-{i}}}\n"
                ),
            ),
            6 | 7 => (
                "10-serviceaccounts",
                format!(
                    "apiVersion: v1\nkind: ServiceAccount\nmetadata: {{name: sa-{i}, namespace: {ns}}}\n"
                ),
            ),
            _ => (
                "50-widgets",
                format!(
                    "apiVersion: bench.driftless.dev/v1\nkind: Widget\nmetadata: {{name: w-{i}, namespace: {ns}}}\nspec: {{size: {i}, colour: blue}}\n"
                ),
            ),
        };
        docs.entry(file).or_default().push(doc);
    }
    let stack = dir.join("stack/bench");
    let plain = dir.join("kubectl");
    std::fs::create_dir_all(&stack).unwrap();
    std::fs::create_dir_all(&plain).unwrap();
    std::fs::write(
        stack.join("stack.yaml"),
        format!("apiVersion: driftless.dev/v1alpha1\nkind: Stack\nmetadata: {{name: {prefix}}}\nspec: {{path: manifests}}\n"),
    )
    .unwrap();
    std::fs::create_dir_all(stack.join("manifests")).unwrap();
    // Files of at most 500 documents (as people split them; the loader caps a file's documents).
    for (file, list) in docs {
        for (part, chunk) in list.chunks(500).enumerate() {
            let text = chunk.join("---\n");
            let name = format!("{file}-{part:02}.yaml");
            std::fs::write(stack.join("manifests").join(&name), &text).unwrap();
            std::fs::write(plain.join(&name), &text).unwrap();
        }
    }
}

const CRD: &str = r#"apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata: {name: widgets.bench.driftless.dev}
spec:
  group: bench.driftless.dev
  names: {kind: Widget, plural: widgets, singular: widget, listKind: WidgetList}
  scope: Namespaced
  versions:
    - name: v1
      served: true
      storage: true
      schema:
        openAPIV3Schema:
          type: object
          properties:
            spec: {type: object, x-kubernetes-preserve-unknown-fields: true}
"#;

struct Tools {
    driftless: PathBuf,
    kubectl: String,
    kubeconfig: String,
    config: PathBuf,
}

impl Tools {
    /// Runs driftless on the stack in `dir`; each stack has its own instance (and state), so the
    /// stacks of earlier rounds are not this run's orphans.
    fn driftless(&self, dir: &Path, args: &[&str]) -> (Duration, bool) {
        let config = dir.join("driftless.yaml");
        if !config.exists() {
            let instance = dir.file_name().and_then(|n| n.to_str()).unwrap_or("bench");
            std::fs::write(
                &config,
                format!(
                    "instance: {instance}\nstateDir: {}\n",
                    self.config
                        .with_file_name(format!("state-{instance}"))
                        .display()
                ),
            )
            .unwrap_or_else(|e| panic!("{e}"));
        }
        let t = Instant::now();
        let out = Command::new(&self.driftless)
            .arg("--config")
            .arg(&config)
            .arg("--log-level")
            .arg("warn")
            .args(args)
            .arg("--path")
            .arg(dir)
            .arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .output()
            .expect("run driftless");
        let elapsed = t.elapsed();
        let ok = out.status.code().is_some_and(|c| c == 0 || c == 1);
        if !ok {
            eprintln!(
                "driftless {args:?} failed: {}{}",
                String::from_utf8_lossy(&out.stderr),
                String::from_utf8_lossy(&out.stdout)
                    .lines()
                    .filter(|l| l.contains("error") || l.contains("rror:"))
                    .collect::<Vec<_>>()
                    .join("\n")
            );
        }
        (elapsed, ok)
    }

    fn kubectl(&self, dir: &Path, args: &[&str]) -> (Duration, bool) {
        let t = Instant::now();
        let out = Command::new(&self.kubectl)
            .arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .args(args)
            .arg("-f")
            .arg(dir.join("kubectl"))
            .output()
            .expect("run kubectl");
        let elapsed = t.elapsed();
        let ok = out.status.code().is_some_and(|c| c == 0 || c == 1);
        if !ok {
            eprintln!(
                "kubectl {args:?} failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        (elapsed, ok)
    }
}

#[derive(Default)]
struct Samples {
    times: Vec<f64>,
    requests: Vec<Counts>,
}

impl Samples {
    fn median_ms(&self) -> f64 {
        median(&self.times) * 1000.0
    }

    fn median_requests(&self) -> f64 {
        // `+ 0.0`: an empty sum is -0.0, which would print as "-0".
        median(&self.requests.iter().map(total).collect::<Vec<_>>()) + 0.0
    }

    fn json(&self) -> Value {
        json!({"medianMs": self.median_ms(), "medianRequests": self.median_requests(),
            "timesMs": self.times.iter().map(|t| t * 1000.0).collect::<Vec<_>>(),
            "requests": self.requests})
    }
}

fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    if s.is_empty() {
        return f64::NAN;
    }
    s[s.len() / 2]
}

async fn measure<F: FnOnce() -> (Duration, bool)>(
    client: &kube::Client,
    samples: &mut Samples,
    f: F,
) {
    let before = counts(client).await;
    let (elapsed, ok) = f();
    assert!(ok, "a benchmarked command failed");
    // The counters are updated when a request finishes: give the last one a moment.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let after = counts(client).await;
    samples.times.push(elapsed.as_secs_f64());
    samples.requests.push(delta(&before, &after));
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    if !args.iter().any(|a| a == "--bench") {
        // `cargo test --all-targets` builds and starts bench targets too: nothing to do there.
        println!("perf: run with `cargo bench --bench perf`");
        return;
    }
    let arg = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    let sizes: Vec<usize> = arg("--sizes")
        .unwrap_or_else(|| "100,1000".to_owned())
        .split(',')
        .filter_map(|s| s.parse().ok())
        .collect();
    // `--sizes 0` runs the daemon section only.
    let sizes: Vec<usize> = sizes.into_iter().filter(|&n| n > 0).collect();
    let rounds: usize = arg("--rounds").and_then(|r| r.parse().ok()).unwrap_or(3);
    let out_file = arg("--out")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target-bench/perf.json"));

    let env = TestEnv::get();
    let client = env.kube_client().await;
    let work = tempfile::tempdir().unwrap();
    let config = work.path().join("driftless.yaml");
    std::fs::write(
        &config,
        format!("stateDir: {}\n", work.path().join("state").display()),
    )
    .unwrap();
    let tools = Tools {
        driftless: PathBuf::from(env!("CARGO_BIN_EXE_driftless")),
        kubectl: env.var("KUBECTL").to_owned(),
        kubeconfig: env.var("KUBECONFIG").to_owned(),
        config,
    };
    // The custom resource's definition exists before either tool runs.
    let crd = work.path().join("crd.yaml");
    std::fs::write(&crd, CRD).unwrap();
    support::run_ok(
        Command::new(&tools.kubectl)
            .args([
                "--kubeconfig",
                &tools.kubeconfig,
                "apply",
                "--server-side",
                "-f",
            ])
            .arg(&crd),
    );
    support::run_ok(Command::new(&tools.kubectl).args([
        "--kubeconfig",
        &tools.kubeconfig,
        "wait",
        "--for=condition=Established",
        "crd/widgets.bench.driftless.dev",
    ]));

    let mut results = Vec::new();
    println!(
        "machine: {} cores, {}; API server, etcd, driftless and kubectl on loopback",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        std::fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(
                |c| c.lines().find(|l| l.starts_with("model name")).map(|l| l
                    .split(':')
                    .nth(1)
                    .unwrap_or("")
                    .trim()
                    .to_owned())
            )
            .unwrap_or_default()
    );
    for &n in &sizes {
        let mut d_first = Samples::default();
        let mut k_first = Samples::default();
        let mut d_diff = Samples::default();
        let mut k_diff = Samples::default();
        let mut d_change = Samples::default();
        let mut k_change = Samples::default();
        for round in 0..rounds {
            let dp = unique_name("bd");
            let kp = unique_name("bk");
            let ddir = work.path().join(&dp);
            let kdir = work.path().join(&kp);
            generate(&ddir, &dp, n, 0);
            generate(&kdir, &kp, n, 0);
            // Alternate which tool goes first.
            let order: [bool; 2] = if round % 2 == 0 {
                [true, false]
            } else {
                [false, true]
            };
            for driftless_turn in order {
                if driftless_turn {
                    measure(&client, &mut d_first, || {
                        tools.driftless(&ddir, &["sync", "--no-wait"])
                    })
                    .await;
                } else {
                    measure(&client, &mut k_first, || {
                        tools.kubectl(&kdir, &["apply", "--server-side"])
                    })
                    .await;
                }
            }
            for driftless_turn in order {
                if driftless_turn {
                    measure(&client, &mut d_diff, || tools.driftless(&ddir, &["diff"])).await;
                } else {
                    measure(&client, &mut k_diff, || {
                        tools.kubectl(&kdir, &["diff", "--server-side"])
                    })
                    .await;
                }
            }
            // 1 % changed.
            let changed = (n / 100).max(1);
            generate(&ddir, &dp, n, changed * 10 / 3 + 1);
            generate(&kdir, &kp, n, changed * 10 / 3 + 1);
            for driftless_turn in order {
                if driftless_turn {
                    measure(&client, &mut d_change, || {
                        tools.driftless(&ddir, &["sync", "--no-wait"])
                    })
                    .await;
                } else {
                    measure(&client, &mut k_change, || {
                        tools.kubectl(&kdir, &["apply", "--server-side"])
                    })
                    .await;
                }
            }
            // Clean up this round's namespaces in the background.
            for p in [&dp, &kp] {
                for i in 0..n.div_ceil(100) {
                    let _ = Command::new(&tools.kubectl)
                        .args([
                            "--kubeconfig",
                            &tools.kubeconfig,
                            "delete",
                            "namespace",
                            &format!("{p}-{i}"),
                            "--wait=false",
                        ])
                        .output();
                }
            }
        }
        for (work_name, d, k) in [
            ("diff of N applied, unchanged objects", &d_diff, &k_diff),
            ("first sync of N objects", &d_first, &k_first),
            ("sync after 1% of N changed", &d_change, &k_change),
        ] {
            let speed = k.median_ms() / d.median_ms();
            let fewer = k.median_requests() / d.median_requests().max(1.0);
            println!(
                "N={n:>5} {work_name:<38} driftless {:>8.0} ms {:>6.0} req | kubectl {:>8.0} ms {:>6.0} req | {speed:>5.1}x faster, {fewer:>6.1}x fewer requests",
                d.median_ms(),
                d.median_requests(),
                k.median_ms(),
                k.median_requests()
            );
            results.push(json!({"n": n, "work": work_name, "rounds": rounds,
                "driftless": d.json(), "kubectl": k.json(),
                "speedup": speed, "requestRatio": fewer}));
        }
    }
    let daemon_n: usize = arg("--daemon").and_then(|r| r.parse().ok()).unwrap_or(5000);
    if daemon_n > 0 {
        results.push(bench_daemon(&client, daemon_n, rounds.max(5)).await);
    }
    if let Some(parent) = out_file.parent() {
        std::fs::create_dir_all(parent).unwrap();
    }
    std::fs::write(
        &out_file,
        serde_json::to_string_pretty(&json!({"results": results})).unwrap(),
    )
    .unwrap();
    println!("results written to {}", out_file.display());
}

/// The daemon on a git repository of `n` objects.
async fn bench_daemon(client: &kube::Client, n: usize, rounds: usize) -> Value {
    use support::daemon::{SECRET, start_daemon_prepared};
    let prefix = unique_name("bdd");
    let t = Instant::now();
    let d = start_daemon_prepared("", |repo, _| generate(repo, &prefix, n, 0));
    // The endpoint answers once the daemon has bound it.
    while reqwest::get(format!("{}/api/v1/status", d.base))
        .await
        .is_err()
    {
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "the daemon's endpoint did not come up"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    loop {
        let st = d.status().await;
        if st["state"] == "ready" {
            break;
        }
        if let Some(e) = st["errors"].as_array().and_then(|e| {
            e.iter()
                .find(|e| e.as_str().is_some_and(|e| e.contains("does not load")))
        }) {
            panic!("the daemon cannot load the benchmark stack: {e}");
        }
        assert!(
            t.elapsed() < Duration::from_secs(1200),
            "no first sync within 20 min: {st}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let first_sync = t.elapsed();
    let rss_kib = || {
        std::fs::read_to_string(format!("/proc/{}/status", d.child.id()))
            .ok()
            .and_then(|s| {
                s.lines()
                    .find(|l| l.starts_with("VmRSS:"))
                    .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
            })
            .unwrap_or(0)
    };
    let rss_synced = rss_kib();
    println!(
        "daemon, {n} objects: first sync (webhook-free start to READY) {:.1} s, resident memory {:.1} MiB",
        first_sync.as_secs_f64(),
        rss_synced as f64 / 1024.0
    );
    // Reconciles of the unchanged revision, each triggered by a webhook.
    let started = |st: &Value| {
        st["lastReconcile"]["startedAt"]
            .as_str()
            .unwrap_or("")
            .to_owned()
    };
    let mut quiet = Samples::default();
    for _ in 0..rounds {
        let before_status = started(&d.status().await);
        let before = counts(client).await;
        assert!(
            d.github(&d.push_payload(), SECRET)
                .await
                .status()
                .is_success()
        );
        let mut status = d.status().await;
        while started(&status) == before_status {
            tokio::time::sleep(Duration::from_millis(50)).await;
            status = d.status().await;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        let after = counts(client).await;
        let ms = status["lastReconcile"]["durationMs"]
            .as_f64()
            .unwrap_or(f64::NAN);
        quiet.times.push(ms / 1000.0);
        quiet.requests.push(delta(&before, &after));
    }
    println!(
        "daemon, {n} objects: reconcile of an unchanged revision: median {:.1} ms, {:.0} requests (all verbs) to the benchmark's resources",
        quiet.median_ms(),
        quiet.median_requests()
    );
    // Webhook → one object's change applied.
    let mut latency = Vec::new();
    let cms: kube::Api<k8s_openapi::api::core::v1::ConfigMap> =
        kube::Api::namespaced(client.clone(), &format!("{prefix}-2"));
    for round in 0..rounds {
        // ConfigMap cm-2 is the first in the generator's "changed" range.
        let want = if round % 2 == 0 {
            "changed"
        } else {
            "original"
        };
        generate(
            d.repo.path(),
            &prefix,
            n,
            if round % 2 == 0 { 3 } else { 0 },
        );
        support::git(
            d.repo.path(),
            &["commit", "-qam", &format!("round {round}")],
        );
        let before_run = started(&d.status().await);
        let t = Instant::now();
        assert!(
            d.github(&d.push_payload(), SECRET)
                .await
                .status()
                .is_success()
        );
        loop {
            let value = cms
                .get("cm-2")
                .await
                .ok()
                .and_then(|c| c.data)
                .and_then(|d| d.get("value").cloned());
            if value.as_deref() == Some(want) {
                break;
            }
            assert!(t.elapsed() < Duration::from_secs(120), "change not applied");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        latency.push(t.elapsed().as_secs_f64());
        // Where the time went (the daemon's own account of the run that applied it).
        let mut status = d.status().await;
        while started(&status) == before_run || status["lastReconcile"]["mode"] == "quiet" {
            if t.elapsed() > Duration::from_secs(120) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
            status = d.status().await;
        }
        println!(
            "  change {round}: {:.0} ms to applied; the run ({}): {} ms, phases {}",
            latency[round] * 1000.0,
            status["lastReconcile"]["mode"],
            status["lastReconcile"]["durationMs"],
            status["lastReconcile"]["phasesMs"]
        );
    }
    let rss_applied = rss_kib();
    // Idle again: the last reconcile has finished (health wait, inventory write, trim).
    d.settle(Duration::from_secs(2)).await;
    let rss_after = rss_kib();
    println!(
        "daemon, {n} objects: webhook -> change applied (one object): median {:.0} ms (of {:?} ms); resident memory at the last change {:.1} MiB, idle after it {:.1} MiB",
        median(&latency) * 1000.0,
        latency
            .iter()
            .map(|l| (l * 1000.0) as u64)
            .collect::<Vec<_>>(),
        rss_applied as f64 / 1024.0,
        rss_after as f64 / 1024.0
    );
    for i in 0..n.div_ceil(100) {
        let _ = Command::new(TestEnv::get().var("KUBECTL"))
            .args([
                "--kubeconfig",
                TestEnv::get().var("KUBECONFIG"),
                "delete",
                "namespace",
                &format!("{prefix}-{i}"),
                "--wait=false",
            ])
            .output();
    }
    json!({"n": n, "work": "daemon", "firstSyncMs": first_sync.as_secs_f64() * 1000.0,
        "residentMiB": rss_synced as f64 / 1024.0, "residentAtChangeMiB": rss_applied as f64 / 1024.0,
        "residentAfterMiB": rss_after as f64 / 1024.0,
        "unchangedReconcile": quiet.json(),
        "webhookToAppliedMs": latency.iter().map(|l| l * 1000.0).collect::<Vec<_>>(),
        "webhookToAppliedMedianMs": median(&latency) * 1000.0})
}
