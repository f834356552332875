//! driftless against `kubectl` on the same API server, in the same run, alternating, several
//! rounds: `diff` of N applied unchanged objects, the first `sync` of N objects, and a `sync` after
//! 1 % of them changed, on a mix of 21 kinds (`perf/mix.rs`) many of which controllers write
//! status to. Prints medians and ratios; API requests are counted from the API server's own
//! `apiserver_request_total` (delta per verb, resources of the benchmark only, status
//! subresources excluded: controllers write those), dry-runs separately; the CPU time the API
//! server and etcd used in each run is read from `/proc/<pid>/stat` (their pid files in the test
//! environment's run directory), and driftless's own steps from its debug log. Results are also
//! written as JSON, and the README's rows as Markdown.
//!
//! Then the daemon (`--daemon N`, default 5000 objects, 0 to skip): its first sync, resident
//! memory once synced, the cost of reconciles of an unchanged revision (requests counted the same
//! way; duration from its status), and webhook → change applied for one object; then one daemon
//! with two targets (the environment's two clusters, N objects each): first sync, memory and the
//! requests of an unchanged reconcile in both clusters.
//!
//! `cargo bench --bench perf` (the test environment must be up: `tests/env/testenv up`).
//! Options after `--`: `--sizes 100,1000,5000` `--rounds 3` `--daemon 5000` `--out FILE`.

#[path = "../tests/support/mod.rs"]
mod support;

#[path = "perf/daemon.rs"]
mod daemon;
#[path = "perf/measure.rs"]
mod measure;
#[path = "perf/mix.rs"]
mod mix;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use measure::{Samples, Servers, Steps, counts, delta, share, steps_of};
use serde_json::json;
use support::{TestEnv, unique_name};

struct Tools {
    driftless: PathBuf,
    kubectl: String,
    kubeconfig: String,
    config: PathBuf,
}

/// One benchmarked command: how long it took, whether it succeeded, driftless's steps.
struct Ran {
    elapsed: Duration,
    ok: bool,
    steps: Steps,
}

impl Tools {
    /// Runs driftless on the stack in `dir`; each stack has its own instance (and state), so the
    /// stacks of earlier rounds are not this run's orphans. Only the step timings are logged.
    fn driftless(&self, dir: &Path, args: &[&str]) -> Ran {
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
            .args([
                "--log-level",
                "warn,driftless::logging=debug",
                "--log-format",
                "json",
            ])
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
        Ran {
            elapsed,
            ok,
            steps: steps_of(&out.stderr),
        }
    }

    fn kubectl(&self, dir: &Path, args: &[&str]) -> Ran {
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
        Ran {
            elapsed,
            ok,
            steps: Steps::new(),
        }
    }
}

/// What each measurement needs besides the command.
struct Bench<'a> {
    client: &'a kube::Client,
    servers: &'a Servers,
    cores: f64,
}

impl Bench<'_> {
    async fn measure<F: FnOnce() -> Ran>(&self, samples: &mut Samples, f: F) {
        let before = counts(self.client).await;
        let clocks = self.servers.now();
        let ran = f();
        let cpu = share(clocks, self.servers.now(), ran.elapsed, self.cores);
        assert!(ran.ok, "a benchmarked command failed");
        // The counters are updated when a request finishes: give the last one a moment.
        tokio::time::sleep(Duration::from_millis(200)).await;
        let after = counts(self.client).await;
        samples.times.push(ran.elapsed.as_secs_f64());
        samples.requests.push(delta(&before, &after));
        samples.cpu.push(cpu);
        samples.steps.push(ran.steps);
    }
}

/// A number as the README writes it: `12 345`.
fn grouped(x: f64) -> String {
    let digits = format!("{:.0}", x.round());
    let (sign, digits) = digits
        .strip_prefix('-')
        .map_or(("", digits.as_str()), |d| ("-", d));
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(' ');
        }
        out.push(c);
    }
    format!("{sign}{out}")
}

/// One row of the README's table; `measured` says when and where.
fn row(n: usize, work: &str, d: &Samples, k: &Samples, measured: &str) -> String {
    let (work, goal) = match work {
        w if w.starts_with("diff") => (
            format!("`diff`, {} applied unchanged", grouped(n as f64)),
            match n {
                1000 => "0 dry-runs; ≥ 30×",
                5000 => "0 dry-runs",
                _ => "—",
            },
        ),
        w if w.starts_with("first") => (
            format!("first `sync`, {}", grouped(n as f64)),
            if n == 1000 {
                "≥ 2.5×, CPU share measured"
            } else {
                "—"
            },
        ),
        _ => (
            format!("`sync` after 1 % changed, {}", grouped(n as f64)),
            if n == 1000 { "≥ 20×" } else { "—" },
        ),
    };
    let cell = |s: &Samples| {
        format!(
            "{} ms, {} req, {} dry-runs",
            grouped(s.median_ms()),
            grouped(s.median_requests()),
            grouped(s.median_dry_runs())
        )
    };
    let cpu = |s: &Samples| {
        let c = s.median_cpu();
        format!("{:.0} % + {:.0} %", c.apiserver * 100.0, c.etcd * 100.0)
    };
    format!(
        "| {work} | {} | {} | {:.1}× | {:.1}× fewer | {} (kubectl's run: {}) | {goal} | {measured} |",
        cell(d),
        cell(k),
        k.median_ms() / d.median_ms(),
        k.median_requests() / d.median_requests().max(1.0),
        cpu(d),
        cpu(k)
    )
}

/// Deletes a round's namespaces and cluster-scoped objects in the background.
fn clean_up(prefix: &str, n: usize) {
    clean_up_on(TestEnv::get().var("KUBECONFIG"), prefix, n);
}

/// Waits until no namespace is terminating in either cluster: the namespaces an earlier section
/// (or an earlier benchmark run) deleted are emptied by the controllers, on the same cores as
/// the next measurement.
fn settle_clusters() {
    let env = TestEnv::get();
    let started = std::time::Instant::now();
    for kubeconfig in [env.var("KUBECONFIG"), env.var("KUBECONFIG_B")] {
        loop {
            let out = Command::new(env.var("KUBECTL"))
                .args([
                    "--kubeconfig",
                    kubeconfig,
                    "get",
                    "namespaces",
                    "-o",
                    "jsonpath={.items[*].status.phase}",
                ])
                .output();
            let terminating = out.map_or(0, |o| {
                String::from_utf8_lossy(&o.stdout)
                    .split_whitespace()
                    .filter(|p| *p == "Terminating")
                    .count()
            });
            if terminating == 0 {
                break;
            }
            assert!(
                started.elapsed() < std::time::Duration::from_secs(900),
                "{terminating} namespaces still terminating after 15 min"
            );
            std::thread::sleep(std::time::Duration::from_millis(500));
        }
    }
    if started.elapsed() > std::time::Duration::from_secs(1) {
        println!(
            "(waited {:.0} s for earlier namespaces to be deleted)",
            started.elapsed().as_secs_f64()
        );
    }
}

/// `clean_up` in the cluster of `kubeconfig`.
fn clean_up_on(kubeconfig: &str, prefix: &str, n: usize) {
    let kubectl = TestEnv::get().var("KUBECTL");
    for i in 0..n.div_ceil(100) {
        let _ = Command::new(kubectl)
            .args(["--kubeconfig", kubeconfig, "delete", "namespace"])
            .arg(format!("{prefix}-{i}"))
            .arg("--wait=false")
            .output();
    }
    let _ = Command::new(kubectl)
        .args([
            "--kubeconfig",
            kubeconfig,
            "delete",
            "priorityclasses,clusterroles",
        ])
        .arg("-l")
        .arg(format!("{}={prefix}", mix::RUN_LABEL))
        .arg("--wait=false")
        .output();
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
    // `--generate DIR --n N --changed C --prefix P`: writes the mix (driftless's stack in DIR,
    // kubectl's files in DIR/kubectl) and exits, to run either tool by hand on it.
    if let Some(dir) = arg("--generate") {
        let n = arg("--n").and_then(|n| n.parse().ok()).unwrap_or(1000);
        let changed = arg("--changed").and_then(|n| n.parse().ok()).unwrap_or(0);
        let prefix = arg("--prefix").unwrap_or_else(|| "manual".to_owned());
        mix::generate(Path::new(&dir), &prefix, n, changed, mix::Mix::Full);
        return;
    }
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
    // The custom resource's definition exists before either tool runs (in both clusters: the
    // two-target daemon row applies the mix to the second one too).
    let crd = work.path().join("crd.yaml");
    std::fs::write(&crd, mix::CRD).unwrap();
    for kubeconfig in [env.var("KUBECONFIG"), env.var("KUBECONFIG_B")] {
        support::run_ok(
            Command::new(&tools.kubectl)
                .args(["--kubeconfig", kubeconfig, "apply", "--server-side", "-f"])
                .arg(&crd),
        );
        support::run_ok(Command::new(&tools.kubectl).args([
            "--kubeconfig",
            kubeconfig,
            "wait",
            "--for=condition=Established",
            "crd/widgets.bench.driftless.dev",
        ]));
    }

    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let servers = Servers::find(env);
    let bench = Bench {
        client: &client,
        servers: &servers,
        cores: cores as f64,
    };
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_owned())
        })
        .unwrap_or_default();
    println!(
        "machine: {cores} cores, {model}; API server, etcd, driftless and kubectl on loopback; {} kinds: {}",
        mix::MIX.len(),
        mix::MIX
            .iter()
            .map(|(k, n)| format!("{k} {n} %"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let date = Command::new("date")
        .arg("+%Y-%m-%d")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default();
    let measured = format!("{date}, {cores}-core {model}");
    let mut results = Vec::new();
    let mut rows = Vec::new();
    for &n in &sizes {
        settle_clusters();
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
            mix::generate(&ddir, &dp, n, 0, mix::Mix::Full);
            mix::generate(&kdir, &kp, n, 0, mix::Mix::Full);
            // Alternate which tool goes first.
            let order: [bool; 2] = if round % 2 == 0 {
                [true, false]
            } else {
                [false, true]
            };
            for driftless_turn in order {
                if driftless_turn {
                    bench
                        .measure(&mut d_first, || {
                            tools.driftless(&ddir, &["sync", "--no-wait"])
                        })
                        .await;
                } else {
                    bench
                        .measure(&mut k_first, || {
                            tools.kubectl(&kdir, &["apply", "--server-side"])
                        })
                        .await;
                }
            }
            for driftless_turn in order {
                if driftless_turn {
                    bench
                        .measure(&mut d_diff, || tools.driftless(&ddir, &["diff"]))
                        .await;
                } else {
                    bench
                        .measure(&mut k_diff, || {
                            tools.kubectl(&kdir, &["diff", "--server-side"])
                        })
                        .await;
                }
            }
            // 1 % changed: that many ConfigMaps.
            let changed = (n / 100).max(1);
            mix::generate(&ddir, &dp, n, changed, mix::Mix::Full);
            mix::generate(&kdir, &kp, n, changed, mix::Mix::Full);
            for driftless_turn in order {
                if driftless_turn {
                    bench
                        .measure(&mut d_change, || {
                            tools.driftless(&ddir, &["sync", "--no-wait"])
                        })
                        .await;
                } else {
                    bench
                        .measure(&mut k_change, || {
                            tools.kubectl(&kdir, &["apply", "--server-side"])
                        })
                        .await;
                }
            }
            clean_up(&dp, n);
            clean_up(&kp, n);
        }
        for (work_name, d, k) in [
            ("diff of N applied, unchanged objects", &d_diff, &k_diff),
            ("first sync of N objects", &d_first, &k_first),
            ("sync after 1% of N changed", &d_change, &k_change),
        ] {
            let speed = k.median_ms() / d.median_ms();
            let fewer = k.median_requests() / d.median_requests().max(1.0);
            let (dc, kc) = (d.median_cpu(), k.median_cpu());
            println!(
                "N={n:>5} {work_name:<38} driftless {:>8.0} ms {:>6.0} req {:>5.0} dry-runs | kubectl {:>8.0} ms {:>6.0} req {:>5.0} dry-runs | {speed:>5.1}x faster, {fewer:>6.1}x fewer requests",
                d.median_ms(),
                d.median_requests(),
                d.median_dry_runs(),
                k.median_ms(),
                k.median_requests(),
                k.median_dry_runs(),
            );
            println!(
                "        CPU share of the host ({cores} cores): driftless's run: API server {:.0} %, etcd {:.0} %, host busy {:.0} % | kubectl's run: API server {:.0} %, etcd {:.0} %, host busy {:.0} %",
                dc.apiserver * 100.0,
                dc.etcd * 100.0,
                dc.host * 100.0,
                kc.apiserver * 100.0,
                kc.etcd * 100.0,
                kc.host * 100.0
            );
            if let Some((steps, ms)) = d.median_steps() {
                let accounted: f64 = steps.values().sum();
                println!(
                    "        driftless's steps (its median run, {ms:.0} ms): {}; start, load, render and output {:.0} ms",
                    steps
                        .iter()
                        .map(|(s, ms)| format!("{s} {ms:.0} ms"))
                        .collect::<Vec<_>>()
                        .join(", "),
                    ms - accounted
                );
            }
            rows.push(row(n, work_name, d, k, &measured));
            results.push(json!({"n": n, "work": work_name, "rounds": rounds,
                "driftless": d.json(), "kubectl": k.json(),
                "speedup": speed, "requestRatio": fewer}));
        }
    }
    if !rows.is_empty() {
        println!(
            "\nREADME rows (work | driftless | kubectl | speed | requests | API server + etcd CPU | goal | measured):"
        );
        for r in &rows {
            println!("{r}");
        }
    }
    let daemon_n: usize = arg("--daemon").and_then(|r| r.parse().ok()).unwrap_or(5000);
    // `--targets 2` runs the two-target daemon section only, `--targets 1` the one-target one.
    let targets = arg("--targets");
    if daemon_n > 0 && targets.as_deref() != Some("2") {
        settle_clusters();
        results.push(daemon::bench_daemon(&client, daemon_n, rounds.max(5)).await);
    }
    if daemon_n > 0 && targets.as_deref() != Some("1") {
        let client_b = env.kube_client_b().await;
        settle_clusters();
        results.push(
            daemon::bench_daemon_two_targets(&client, &client_b, daemon_n, rounds.max(5)).await,
        );
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
