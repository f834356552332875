//! Benchmark: the shipped baseline (`policies/`) over 1,000 desired objects.
//!
//! `cargo bench --bench policy` (release build). Prints the time to load and compile the
//! policies once, and the median, minimum and maximum time of evaluating all 1,000 objects
//! (a mix of Deployments, StatefulSets, CronJobs, Pods, Services and ConfigMaps, one in ten
//! violating something), so that a regression is visible against the goal of well under 100 ms.

use std::path::Path;
use std::time::{Duration, Instant};

use driftless::policy::{RevisionIndex, Subject, load_policies};
use driftless::stack::ObjectKey;
use serde_json::{Value, json};

const OBJECTS: usize = 1_000;
const RUNS: usize = 20;

fn container(i: usize, bad: bool) -> Value {
    json!({
        "name": format!("app-{i}"),
        "image": if bad { "nginx:latest".to_owned() } else { format!("localhost:30500/team/app-{i}:1.{i}.0") },
        "env": [{"name": "LOG_LEVEL", "value": "info"},
                {"name": "DB_PASSWORD", "valueFrom": {"secretKeyRef": {"name": "db", "key": "password"}}}],
        "resources": {"requests": {"cpu": "100m", "memory": "128Mi"}, "limits": {"memory": "256Mi"}},
        "securityContext": {"runAsNonRoot": true, "runAsUser": 1000, "allowPrivilegeEscalation": bad,
                            "readOnlyRootFilesystem": true, "capabilities": {"drop": ["ALL"]}},
        "readinessProbe": {"httpGet": {"path": "/ready", "port": 8080}},
        "livenessProbe": {"httpGet": {"path": "/live", "port": 8080}},
    })
}

fn object(i: usize) -> Value {
    let bad = i.is_multiple_of(10);
    let name = format!("obj-{i}");
    let meta = json!({"name": name, "namespace": "bench", "labels": {"app": name}});
    let pod_spec = json!({"containers": [container(i, bad), container(i + 1, false)]});
    let template = json!({"metadata": {"labels": {"app": name}}, "spec": pod_spec});
    match i % 20 {
        0..=4 => json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": meta,
                        "spec": {"selector": {"matchLabels": {"app": name}}, "template": template}}),
        5 => json!({"apiVersion": "apps/v1", "kind": "StatefulSet", "metadata": meta,
                    "spec": {"selector": {"matchLabels": {"app": name}}, "template": template}}),
        6 => json!({"apiVersion": "batch/v1", "kind": "CronJob", "metadata": meta,
                    "spec": {"schedule": "0 3 * * *", "jobTemplate": {"spec": {"template": template}}}}),
        7..=9 => json!({"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": pod_spec}),
        10..=14 => json!({"apiVersion": "v1", "kind": "Service", "metadata": meta,
                          "spec": {"type": if bad { "NodePort" } else { "ClusterIP" },
                                   "ports": [{"port": 80, "targetPort": 8080}], "selector": {"app": name}}}),
        _ => json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": meta,
                    "data": {"LOG_LEVEL": "info", "config.yml": format!("server:\n  port: {i}\n  workers: 4\n")}}),
    }
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --all-targets` runs this binary without it:
    // then one run checks that the benchmark works without spending CI time on timing.
    let runs = if std::env::args().any(|a| a == "--bench") {
        RUNS
    } else {
        1
    };
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let start = Instant::now();
    let policies = load_policies(root, &[]).expect("policies/ loads");
    let load = start.elapsed();

    let objects: Vec<Value> = (0..OBJECTS).map(object).collect();
    let keys: Vec<(ObjectKey, String)> = objects
        .iter()
        .map(|o| {
            let api_version = o["apiVersion"].as_str().unwrap_or_default().to_owned();
            let key = ObjectKey {
                group: api_version
                    .split_once('/')
                    .map(|(g, _)| g.to_owned())
                    .unwrap_or_default(),
                kind: o["kind"].as_str().unwrap_or_default().to_owned(),
                namespace: Some("bench".to_owned()),
                name: o["metadata"]["name"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
            };
            (key, api_version)
        })
        .collect();
    let file = Path::new("stack/bench/objects.yaml");
    let subjects: Vec<Subject<'_>> = objects
        .iter()
        .zip(&keys)
        .map(|(object, (key, api_version))| Subject {
            key,
            api_version,
            object,
            file,
            live: None,
        })
        .collect();
    let index = RevisionIndex::new(objects.iter());

    let mut times: Vec<Duration> = Vec::with_capacity(runs);
    let mut findings = 0;
    let cpu_start = process_cpu_ticks();
    for _ in 0..runs {
        let start = Instant::now();
        findings = policies.check(&subjects, &index).len();
        times.push(start.elapsed());
    }
    let cpu = process_cpu_ticks()
        .zip(cpu_start)
        .map(|(end, start)| end - start);
    times.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!(
        "policy baseline: {} policies loaded and compiled in {:.1} ms",
        policies.policy_names().len(),
        ms(load)
    );
    println!(
        "policy baseline: {OBJECTS} objects evaluated in {:.1} ms median ({:.1} min, {:.1} max, {runs} runs); {findings} findings",
        ms(times[runs / 2]),
        ms(times[0]),
        ms(times[runs - 1])
    );
    assert!(
        findings > 0,
        "one in ten objects violates the baseline, yet nothing was found"
    );
    // Wall time suffers when other processes share the cores; CPU time (all threads) much less.
    if let Some(ticks) = cpu {
        println!(
            "policy baseline: {:.1} ms of CPU time (all threads) per evaluation of {OBJECTS} objects",
            ticks as f64 * 10.0 / runs as f64
        );
    }
}

/// User + system CPU time of this process (all threads) in clock ticks (1/100 s), from /proc.
fn process_cpu_ticks() -> Option<u64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    Some(fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?)
}
