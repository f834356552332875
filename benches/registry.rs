//! ImageCleanup planning at the scale of issue 20: 20,001 tags in 203 repositories, on a
//! registry of the benchmark's own (the environment's `REGISTRY_BIN`, own storage, own loopback
//! port: pushing 20,001 tags into the shared registry would slow every other test that scans
//! its catalog). For each run it prints the time, the requests (and per tag), the concurrency,
//! the CPU time of the registry process and of driftless (this process) during the run, and the
//! load average, and checks that a repeat run decides exactly as the first.
//!
//! Two layouts of the same size are measured, each on a fresh registry:
//! - `distinct`: every tag its own image (config and manifest differ from repository to
//!   repository): the worst case, one config read per tag when a rule needs image ages;
//! - `shared`: the same images in every repository (as promoted or mirrored images are; the
//!   benchmark of the first round pushed this layout, so its 91.7 s / 60,207 requests were
//!   measured on it).
//!
//! With each layout the job's rule is `keepLast: 10` plus `keepTags` (needs image ages: first
//! and repeat run), then `keepTags` alone on a fresh state directory (needs no age: first run).
//!
//! `cargo bench --bench registry` (the test environment's env file must exist: it names the
//! registry binary). Options after `--`: `--repositories 203` `--tags 20001` (spread evenly)
//! `--layouts distinct,shared` `--concurrency 8,16` (the job's `concurrency`; default: the job's
//! default) `--decisions DIR` (writes every run's decisions as JSON there, to compare versions).

#[path = "../tests/support/mod.rs"]
mod support;

use std::collections::BTreeMap;
use std::time::Instant;

use driftless::jobs::image_cleanup::retention::RetentionDecision;
use driftless::jobs::image_cleanup::{self, Inputs};
use driftless::jobs::model::Job;
use futures::StreamExt;
use serde_json::{Value, json};
use support::TestEnv;
use support::registry::{
    OCI_MANIFEST, PrivateRegistry, cpu_seconds, http, push_blob, put_manifest,
};

#[derive(Clone, Copy, PartialEq, Eq)]
enum Layout {
    Distinct,
    Shared,
}

impl Layout {
    fn name(self) -> &'static str {
        match self {
            Layout::Distinct => "distinct",
            Layout::Shared => "shared",
        }
    }
}

struct Args {
    repositories: usize,
    tags: usize,
    layouts: Vec<Layout>,
    concurrency: Vec<Option<usize>>,
    decisions: Option<std::path::PathBuf>,
}

fn args() -> Option<Args> {
    let args: Vec<String> = std::env::args().collect();
    if !args.iter().any(|a| a == "--bench") {
        return None;
    }
    let value = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    let number = |name: &str, default: usize| {
        value(name)
            .map(|v| v.parse().unwrap_or_else(|e| panic!("{name} {v}: {e}")))
            .unwrap_or(default)
    };
    let layouts = value("--layouts")
        .unwrap_or_else(|| "distinct,shared".to_owned())
        .split(',')
        .map(|l| match l {
            "distinct" => Layout::Distinct,
            "shared" => Layout::Shared,
            other => panic!("--layouts: {other} (distinct or shared)"),
        })
        .collect();
    let concurrency = match value("--concurrency") {
        None => vec![None],
        Some(list) => list
            .split(',')
            .map(|c| {
                Some(
                    c.parse()
                        .unwrap_or_else(|e| panic!("--concurrency {c}: {e}")),
                )
            })
            .collect(),
    };
    Some(Args {
        repositories: number("--repositories", 203),
        tags: number("--tags", 20_001),
        layouts,
        concurrency,
        decisions: value("--decisions").map(Into::into),
    })
}

#[tokio::main]
async fn main() {
    let Some(args) = args() else {
        println!("registry: run with `cargo bench --bench registry`");
        return;
    };
    let env = TestEnv::get();
    println!("host: {}", host());
    let mut rows = Vec::new();
    for &layout in &args.layouts {
        let registry = PrivateRegistry::start(env.var("REGISTRY_BIN")).await;
        println!(
            "\n[{}] pushing {} tags in {} repositories to a private registry ({}, pid {}) …",
            layout.name(),
            args.tags,
            args.repositories,
            registry.url,
            registry.pid
        );
        let t = Instant::now();
        push(&registry.url, layout, args.repositories, args.tags).await;
        println!("pushed in {:.1} s", t.elapsed().as_secs_f64());
        for &concurrency in &args.concurrency {
            let state = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
            let dated = json!([{"repositories": "**", "keepLast": 10, "keepTags": "^build-9\\d$"}]);
            let mut first = None;
            for run in ["first run", "repeat run"] {
                let m = measure(&registry, &dated, concurrency, state.path()).await;
                m.print(layout, "keepLast 10 + keepTags", run);
                save(&args, layout, "dated", run, &m.decisions);
                match &first {
                    None => first = Some(m.decisions.clone()),
                    Some(f) => println!(
                        "  decisions identical to the first run: {}",
                        if *f == m.decisions { "yes" } else { "NO" }
                    ),
                }
                rows.push((layout, "keepLast 10 + keepTags", run, m));
            }
            let fresh = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
            let undated = json!([{"repositories": "**", "keepTags": "^build-9\\d$"}]);
            let m = measure(&registry, &undated, concurrency, fresh.path()).await;
            m.print(layout, "keepTags only", "first run");
            save(&args, layout, "undated", "first run", &m.decisions);
            rows.push((layout, "keepTags only", "first run", m));
        }
    }
    println!(
        "\nsummary (times under the load shown; requests do not depend on load)\n\
         | layout | rule | run | concurrency | time | requests | per tag | registry CPU | driftless CPU | load |\n\
         |---|---|---|---|---|---|---|---|---|---|"
    );
    for (layout, rule, run, m) in &rows {
        println!(
            "| {} | {rule} | {run} | {} | {:.2} s | {} | {:.2} | {:.2} s | {:.2} s | {:.1} |",
            layout.name(),
            m.concurrency,
            m.seconds,
            m.requests,
            m.requests as f64 / m.tags.max(1) as f64,
            m.registry_cpu,
            m.own_cpu,
            m.load
        );
    }
}

/// Pushes `tags` tags (`build-<n>`) spread over `repositories` repositories (`bench/app-<r>`),
/// each tag its own image in its repository; in the shared layout the images of every
/// repository are the same ones.
async fn push(base: &str, layout: Layout, repositories: usize, tags: usize) {
    let layer = b"a shared layer".to_vec();
    let per_repo = |r: usize| tags / repositories + usize::from(r < tags % repositories);
    let layers: Vec<_> = (0..repositories)
        .map(|r| {
            let (base, layer) = (base.to_owned(), layer.clone());
            async move { push_blob(&http(), &base, &format!("bench/app-{r}"), &layer).await }
        })
        .collect();
    let layer_digest: Vec<String> = futures::stream::iter(layers).buffered(32).collect().await;
    let pushes: Vec<_> = (0..repositories)
        .flat_map(|r| (0..per_repo(r)).map(move |n| (r, n)))
        .map(|(r, n)| {
            let (base, ld, size) = (base.to_owned(), layer_digest[r].clone(), layer.len());
            async move {
                let repo = format!("bench/app-{r}");
                let mut labels = json!({"n": n.to_string()});
                if layout == Layout::Distinct {
                    labels["repository"] = json!(repo);
                }
                let config = serde_json::to_vec(&json!({
                    "architecture": "amd64", "os": "linux",
                    "created": format!("2025-{:02}-{:02}T00:00:00Z", 1 + n % 12, 1 + n % 28),
                    "config": {"Labels": labels}
                }))
                .unwrap_or_default();
                let cd = push_blob(&http(), &base, &repo, &config).await;
                let manifest = serde_json::to_vec(&json!({
                    "schemaVersion": 2, "mediaType": OCI_MANIFEST,
                    "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cd, "size": config.len()},
                    "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": ld, "size": size}]
                }))
                .unwrap_or_default();
                put_manifest(&base, &repo, &format!("build-{n}"), OCI_MANIFEST, &manifest).await;
            }
        })
        .collect();
    futures::stream::iter(pushes)
        .buffer_unordered(32)
        .collect::<Vec<()>>()
        .await;
}

struct Measured {
    seconds: f64,
    requests: u64,
    tags: usize,
    repositories: u64,
    concurrency: usize,
    registry_cpu: f64,
    own_cpu: f64,
    load: f64,
    summary: String,
    decisions: BTreeMap<String, Vec<RetentionDecision>>,
}

impl Measured {
    fn print(&self, layout: Layout, rule: &str, run: &str) {
        println!(
            "[{}] {rule}, {run}: {:.2} s, {} requests ({:.3} per tag), concurrency {}, registry CPU {:.2} s, driftless CPU {:.2} s, load {:.1}; {} repositories, {} tags: {}",
            layout.name(),
            self.seconds,
            self.requests,
            self.requests as f64 / self.tags.max(1) as f64,
            self.concurrency,
            self.registry_cpu,
            self.own_cpu,
            self.load,
            self.repositories,
            self.tags,
            self.summary
        );
    }
}

/// One planning run (dry run) of a job with `rules` over the whole registry.
async fn measure(
    registry: &PrivateRegistry,
    rules: &Value,
    concurrency: Option<usize>,
    state: &std::path::Path,
) -> Measured {
    let mut spec = json!({"schedule": "@daily", "registry": {"url": registry.url},
        "protect": {"cluster": false, "desired": false}, "rules": rules});
    if let Some(c) = concurrency {
        spec["concurrency"] = json!(c);
    }
    let job = Job::from_spec("ImageCleanup", "bench", "bench", "bench/jobs.yaml", spec)
        .unwrap_or_else(|e| panic!("{e}"));
    let parsed = job
        .image_cleanup()
        .unwrap_or_else(|| panic!("an ImageCleanup"));
    let used = parsed.concurrency;
    let inputs = Inputs {
        cluster: None,
        desired: &[],
        credentials: &driftless::credentials::Credentials::default(),
        state_dir: state,
        commands: &Default::default(),
        strict: false,
    };
    let cpu = || {
        (
            cpu_seconds(registry.pid)
                .unwrap_or_else(|| panic!("registry pid {} gone", registry.pid)),
            cpu_seconds(std::process::id()).unwrap_or_default(),
        )
    };
    let load = load_average();
    let (registry_before, own_before) = cpu();
    let t = Instant::now();
    let report = image_cleanup::run(&job, parsed, &inputs, true)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let seconds = t.elapsed().as_secs_f64();
    let (registry_after, own_after) = cpu();
    assert!(report.ok(), "{}", report.summary());
    Measured {
        seconds,
        requests: report.totals.requests,
        tags: report.repositories.iter().map(|r| r.tags).sum(),
        repositories: report.totals.repositories,
        concurrency: used,
        registry_cpu: registry_after - registry_before,
        own_cpu: own_after - own_before,
        load,
        summary: report.summary(),
        decisions: report
            .repositories
            .iter()
            .map(|r| (r.repository.clone(), r.decisions.clone()))
            .collect(),
    }
}

fn save(
    args: &Args,
    layout: Layout,
    rule: &str,
    run: &str,
    decisions: &BTreeMap<String, Vec<RetentionDecision>>,
) {
    let Some(dir) = &args.decisions else { return };
    std::fs::create_dir_all(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    let file = dir.join(format!(
        "{}-{rule}-{}.json",
        layout.name(),
        run.replace(' ', "-")
    ));
    let text = serde_json::to_string_pretty(decisions).unwrap_or_default();
    std::fs::write(&file, text).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
}

/// Cores, CPU model and kernel, for the record of where a run was measured.
fn host() -> String {
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, m)| m.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".to_owned());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    format!(
        "{cores} cores ({model}), Linux {}, load average {:.1} at start",
        kernel.trim(),
        load_average()
    )
}

/// The one-minute load average.
fn load_average() -> f64 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|l| l.split_whitespace().next()?.parse().ok())
        .unwrap_or(0.0)
}
