//! The daemon on a git repository of the mix: its first sync, memory, reconciles of an unchanged
//! revision, webhook → one object's change applied.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::measure::{Samples, counts, delta, median};
use crate::support::{self, unique_name};
use crate::{clean_up, mix};

/// The daemon on a git repository of `n` objects.
/// The daemon's environment as `systemd/driftless.service` sets it (glibc's arenas: with one
/// per thread, freed memory stays spread over them and resident memory grows).
const AS_THE_UNIT_RUNS_IT: &[(&str, &str)] = &[("MALLOC_ARENA_MAX", "2")];

pub async fn bench_daemon(client: &kube::Client, n: usize, rounds: usize) -> Value {
    use support::daemon::SECRET;
    let prefix = unique_name("bdd");
    let t = Instant::now();
    let d = support::daemon::Setup::new(&support::daemon::Options::default(), |repo, _| {
        mix::generate(repo, &prefix, n, 0, mix::Mix::Daemon)
    })
    .spawn_with_env(AS_THE_UNIT_RUNS_IT)
    .wait();
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
    let pid = d.child.id();
    let rss_kib = || Resident::of(pid).total;
    let rss_synced = rss_kib();
    println!(
        "daemon, {n} objects: first sync (webhook-free start to READY) {:.1} s, resident memory {:.1} MiB",
        first_sync.as_secs_f64(),
        rss_synced as f64 / 1024.0
    );
    // Reconciles of the unchanged revision, each triggered by a webhook.
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
    let (namespace, name) = mix::first_configmap(&prefix);
    let cms: kube::Api<k8s_openapi::api::core::v1::ConfigMap> =
        kube::Api::namespaced(client.clone(), &namespace);
    for round in 0..rounds {
        let want = commit_change(d.repo.path(), &prefix, n, round);
        let before_run = started(&d.status().await);
        let t = Instant::now();
        assert!(
            d.github(&d.push_payload(), SECRET)
                .await
                .status()
                .is_success()
        );
        while value_of(&cms, &name).await.as_deref() != Some(want) {
            assert!(t.elapsed() < Duration::from_secs(120), "change not applied");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        latency.push(t.elapsed().as_secs_f64());
        // Where the time went (the daemon's own account of the run that applied it).
        let status = run_that_applied(&d, &before_run, t).await;
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
    let idle = Resident::of(pid);
    let rss_after = idle.total;
    println!(
        "daemon, {n} objects: webhook -> change applied (one object): median {:.0} ms (of {:?} ms); resident memory at the last change {:.1} MiB, idle after it {}",
        median(&latency) * 1000.0,
        millis(&latency),
        rss_applied as f64 / 1024.0,
        idle
    );
    clean_up(&prefix, n);
    json!({"n": n, "work": "daemon", "firstSyncMs": first_sync.as_secs_f64() * 1000.0,
        "residentMiB": rss_synced as f64 / 1024.0, "residentAtChangeMiB": rss_applied as f64 / 1024.0,
        "residentAfterMiB": rss_after as f64 / 1024.0,
        "residentAfterAnonMiB": idle.anon as f64 / 1024.0,
        "residentAfterFileMiB": idle.file as f64 / 1024.0,
        "unchangedReconcile": quiet.json(),
        "webhookToAppliedMs": latency.iter().map(|l| l * 1000.0).collect::<Vec<_>>(),
        "webhookToAppliedMedianMs": median(&latency) * 1000.0})
}

/// A process's resident memory (`/proc/<pid>/status`, KiB): in all, and how much of it is the
/// heap and other anonymous memory, and how much pages of the binary and other files.
struct Resident {
    total: u64,
    anon: u64,
    file: u64,
}

impl Resident {
    fn of(pid: u32) -> Resident {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        let field = |name: &str| {
            status
                .lines()
                .find(|l| l.starts_with(name))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
                .unwrap_or(0)
        };
        Resident {
            total: field("VmRSS:"),
            anon: field("RssAnon:"),
            file: field("RssFile:"),
        }
    }
}

impl std::fmt::Display for Resident {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mib = |k: u64| k as f64 / 1024.0;
        write!(
            f,
            "{:.1} MiB ({:.1} MiB anonymous: heap and stacks; {:.1} MiB of the binary and other files)",
            mib(self.total),
            mib(self.anon),
            mib(self.file)
        )
    }
}

/// When the daemon's last reconcile started, as its status says (empty before the first).
fn started(status: &Value) -> String {
    status["lastReconcile"]["startedAt"]
        .as_str()
        .unwrap_or("")
        .to_owned()
}

/// The benchmark's first ConfigMap's `value` as `api` reads it.
async fn value_of(
    api: &kube::Api<k8s_openapi::api::core::v1::ConfigMap>,
    name: &str,
) -> Option<String> {
    api.get(name)
        .await
        .ok()
        .and_then(|c| c.data)
        .and_then(|d| d.get("value").cloned())
}

/// The daemon's status once a run started after `before` (not a quiet one) has ended, at most
/// 120 s after `t`: the next round's webhook then finds the daemon idle, as one push after
/// another minutes apart would, instead of queued behind this run's inventory writes.
async fn run_that_applied(d: &support::daemon::Daemon, before: &str, t: Instant) -> Value {
    let mut status = d.status().await;
    while (started(&status) == before || status["lastReconcile"]["mode"] == "quiet")
        && t.elapsed() < Duration::from_secs(120)
    {
        tokio::time::sleep(Duration::from_millis(50)).await;
        status = d.status().await;
    }
    status
}

/// Latencies in seconds as whole milliseconds, for printing.
fn millis(latency: &[f64]) -> Vec<u64> {
    latency.iter().map(|l| (l * 1000.0) as u64).collect()
}

/// Commits round `round`'s change of the mix in `repo` (the first ConfigMap, the generator's
/// first "changed" one, flips between "changed" and "original") and returns its new value.
fn commit_change(repo: &std::path::Path, prefix: &str, n: usize, round: usize) -> &'static str {
    mix::generate(
        repo,
        prefix,
        n,
        usize::from(round.is_multiple_of(2)),
        mix::Mix::Daemon,
    );
    support::git(repo, &["commit", "-qam", &format!("round {round}")]);
    if round.is_multiple_of(2) {
        "changed"
    } else {
        "original"
    }
}

/// One daemon, two targets (the test environment's two clusters), each taking the same `n`
/// objects: first sync, resident memory and the requests of a reconcile of an unchanged revision
/// (both clusters counted), to compare with the one-target figures of `bench_daemon`.
pub async fn bench_daemon_two_targets(
    client: &kube::Client,
    client_b: &kube::Client,
    n: usize,
    rounds: usize,
) -> Value {
    use support::daemon::{Options, SECRET, Setup};
    let env = support::TestEnv::get();
    let prefix = unique_name("bdt");
    let targets = format!(
        "targets:\n- name: a\n  cluster: {{kubeconfig: {}}}\n- name: b\n  cluster: {{kubeconfig: {}}}\n",
        env.var("KUBECONFIG"),
        env.var("KUBECONFIG_B")
    );
    let t = Instant::now();
    let d = Setup::new(
        &Options {
            host: &targets,
            ..Options::default()
        },
        |repo, _| mix::generate(repo, &prefix, n, 0, mix::Mix::Daemon),
    )
    .spawn_with_env(AS_THE_UNIT_RUNS_IT)
    .wait();
    loop {
        let st = d.status().await;
        // Both targets synced: each ready with a run behind it (the daemon's own state is
        // ready once its first target is).
        let both = st["targets"].as_array().is_some_and(|t| {
            t.len() == 2
                && t.iter()
                    .all(|t| t["state"] == "ready" && !t["lastRunAt"].is_null())
        });
        if st["state"] == "ready" && both {
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(2400),
            "no first sync of both targets within 40 min: {st}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let first_sync = t.elapsed();
    let pid = d.child.id();
    let rss = || Resident::of(pid).total;
    d.settle(Duration::from_secs(2)).await;
    let rss_synced = rss();
    let mut quiet = Samples::default();
    for _ in 0..rounds {
        let before_status = started(&d.status().await);
        let (before_a, before_b) = (counts(client).await, counts(client_b).await);
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
        let (after_a, after_b) = (counts(client).await, counts(client_b).await);
        let mut requests = delta(&before_a, &after_a);
        for (verb, v) in delta(&before_b, &after_b) {
            *requests.entry(verb).or_default() += v;
        }
        quiet.times.push(
            status["lastReconcile"]["durationMs"]
                .as_f64()
                .unwrap_or(f64::NAN)
                / 1000.0,
        );
        quiet.requests.push(requests);
    }
    println!(
        "daemon, 2 targets x {n} objects: first sync {:.1} s, resident memory {:.1} MiB; reconcile of an unchanged revision: median {:.1} ms, {:.0} requests (all verbs, both clusters) to the benchmark's resources",
        first_sync.as_secs_f64(),
        rss_synced as f64 / 1024.0,
        quiet.median_ms(),
        quiet.median_requests()
    );
    // Webhook -> one object's change applied in both clusters.
    let mut latency = Vec::new();
    let (namespace, name) = mix::first_configmap(&prefix);
    let in_a: kube::Api<k8s_openapi::api::core::v1::ConfigMap> =
        kube::Api::namespaced(client.clone(), &namespace);
    let in_b: kube::Api<k8s_openapi::api::core::v1::ConfigMap> =
        kube::Api::namespaced(client_b.clone(), &namespace);
    for round in 0..rounds {
        let want = commit_change(d.repo.path(), &prefix, n, round);
        let before_run = started(&d.status().await);
        let t = Instant::now();
        assert!(
            d.github(&d.push_payload(), SECRET)
                .await
                .status()
                .is_success()
        );
        let (mut a_done, mut b_done) = (false, false);
        while !(a_done && b_done) {
            a_done = a_done || value_of(&in_a, &name).await.as_deref() == Some(want);
            b_done = b_done || value_of(&in_b, &name).await.as_deref() == Some(want);
            assert!(t.elapsed() < Duration::from_secs(120), "change not applied");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        latency.push(t.elapsed().as_secs_f64());
        let applied = t.elapsed();
        // The run that applied it, as the daemon accounts for it (per target too).
        let status = run_that_applied(&d, &before_run, t).await;
        println!(
            "  change {round}: {:.0} ms to applied in both clusters; the run: {} ms, phases {}; targets {}",
            applied.as_secs_f64() * 1000.0,
            status["lastReconcile"]["durationMs"],
            status["lastReconcile"]["phasesMs"],
            status["targets"]
                .as_array()
                .map(|t| t
                    .iter()
                    .map(|t| format!("{}: {}", t["name"], t["mode"]))
                    .collect::<Vec<_>>()
                    .join(", "))
                .unwrap_or_default()
        );
    }
    d.settle(Duration::from_secs(2)).await;
    let idle = Resident::of(pid);
    let rss_after = idle.total;
    println!(
        "daemon, 2 targets x {n} objects: webhook -> change applied in both clusters: median {:.0} ms (of {:?} ms); resident memory idle after the changes {}",
        median(&latency) * 1000.0,
        millis(&latency),
        idle
    );
    drop(d);
    crate::clean_up_on(env.var("KUBECONFIG"), &prefix, n);
    crate::clean_up_on(env.var("KUBECONFIG_B"), &prefix, n);
    json!({"n": n, "targets": 2, "work": "daemon-two-targets",
        "firstSyncMs": first_sync.as_secs_f64() * 1000.0,
        "residentMiB": rss_synced as f64 / 1024.0,
        "residentAfterMiB": rss_after as f64 / 1024.0,
        "residentAfterAnonMiB": idle.anon as f64 / 1024.0,
        "residentAfterFileMiB": idle.file as f64 / 1024.0,
        "unchangedReconcile": quiet.json(),
        "webhookToAppliedMs": latency.iter().map(|l| l * 1000.0).collect::<Vec<_>>(),
        "webhookToAppliedMedianMs": median(&latency) * 1000.0})
}
