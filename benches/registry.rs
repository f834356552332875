//! ImageCleanup planning over a registry of 100 repositories × 100 tags (distinct images), on the
//! test environment's real registry: the time and the number of requests of a first run (every
//! manifest and config read) and of a repeat run (digest facts cached in the state directory).
//!
//! `cargo bench --bench registry` (the test environment must be up). Options after `--`:
//! `--repositories 100` `--tags 100`.

#[path = "../tests/support/mod.rs"]
mod support;

use std::time::Instant;

use driftless::jobs::image_cleanup::{self, Inputs};
use driftless::jobs::model::Job;
use futures::StreamExt;
use serde_json::json;
use support::registry::{OCI_MANIFEST, http, push_blob, put_manifest};
use support::{TestEnv, unique_name};

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    if !args.iter().any(|a| a == "--bench") {
        println!("registry: run with `cargo bench --bench registry`");
        return;
    }
    let arg = |name: &str, default: usize| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    };
    let (repos, tags) = (arg("--repositories", 100), arg("--tags", 100));
    let env = TestEnv::get();
    let base = env.registry_url().to_owned();
    let prefix = unique_name("bench");
    println!("pushing {repos} repositories × {tags} tags to {base} …");
    let t = Instant::now();
    let layer = b"a shared layer".to_vec();
    let pushes: Vec<_> = (0..repos * tags)
        .map(|i| {
            let (base, prefix, layer) = (base.clone(), prefix.clone(), layer.clone());
            async move {
                let (r, n) = (i / tags, i % tags);
                let repo = format!("{prefix}/app-{r}");
                let config = serde_json::to_vec(&json!({
                    "architecture": "amd64", "os": "linux",
                    "created": format!("2025-{:02}-{:02}T00:00:00Z", 1 + n % 12, 1 + n % 28),
                    "config": {"Labels": {"n": n.to_string()}}
                }))
                .unwrap_or_default();
                let h = http();
                let cd = push_blob(&h, &base, &repo, &config).await;
                let ld = push_blob(&h, &base, &repo, &layer).await;
                let manifest = serde_json::to_vec(&json!({
                    "schemaVersion": 2, "mediaType": OCI_MANIFEST,
                    "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cd, "size": config.len()},
                    "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": ld, "size": layer.len()}]
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
    println!("pushed in {:.1} s", t.elapsed().as_secs_f64());

    let state = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
    let job = Job::from_spec(
        "ImageCleanup",
        "bench",
        "bench",
        "bench/jobs.yaml",
        json!({"schedule": "@daily", "registry": {"url": base},
            "protect": {"cluster": false, "desired": false},
            "rules": [{"repositories": format!("{prefix}/*"), "keepLast": 10, "keepTags": "^build-9\\d$"}]}),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let spec = job
        .image_cleanup()
        .unwrap_or_else(|| panic!("an ImageCleanup"));
    let inputs = Inputs {
        cluster: None,
        desired: &[],
        credentials: &driftless::credentials::Credentials::default(),
        state_dir: state.path(),
        commands: &Default::default(),
        strict: false,
    };
    for run in [
        "first run (reads every manifest and config)",
        "repeat run (digest facts cached)",
    ] {
        let t = Instant::now();
        let report = image_cleanup::run(&job, spec, &inputs, true)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let elapsed = t.elapsed();
        let ours: Vec<_> = report
            .repositories
            .iter()
            .filter(|r| r.repository.starts_with(&prefix))
            .collect();
        let tags_seen: usize = ours.iter().map(|r| r.tags).sum();
        println!(
            "plan, {run}: {:.2} s, {} requests, {} repositories in the catalog ({} of the bench, {tags_seen} tags); {}",
            elapsed.as_secs_f64(),
            report.totals.requests,
            report.totals.repositories,
            ours.len(),
            report.summary()
        );
    }
}
