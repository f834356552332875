//! The `ImageCleanup` job: retention for a Docker registry that never deletes what is in use.
//!
//! A run (1) reads what protects images: the images of live workloads in the cluster and of the
//! revision's desired state (`protections`, here); (2) scans the registry: every repository, every
//! tag resolved to its digest (all manifest types accepted, so an index is never mistaken for a
//! child), each digest's age, size and index children (immutable, so cached in the state directory
//! across runs) and (3) decides with the pure `retention::decide` (`scan`); (4) in `enforce` mode
//! deletes — re-resolving every tag of a digest just before its DELETE and skipping it if anything
//! moved — and removes expired tags of kept digests where the registry deletes tags (`enforce`);
//! (5) optionally runs the registry's offline garbage collection (`garbage_collect`). `report`
//! is what a run tells. One repository's errors never stop the others.

pub mod accessory;
pub mod enforce;
mod garbage_collect;
mod images;
mod known;
pub mod refs;
pub mod report;
pub mod retention;
pub mod scan;
pub mod spec;

use std::path::Path;
use std::sync::Arc;

use chrono::Utc;
use kube::api::{ApiResource, GroupVersionKind};
use serde_json::Value;

use crate::jobs::model::Job;
use crate::registry::{self, Client};
use crate::stack::RenderedStack;
use refs::Uses;
use spec::{Mode, Spec};

pub use enforce::execute;
pub use report::{Action, ImageFacts, RepoReport, Report, Totals, human_bytes};
pub use scan::plan;

/// Errors that stop a run before it decides anything.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Spec(#[from] spec::Error),
    #[error("ImageCleanup {job}: {source}")]
    Credentials {
        job: String,
        #[source]
        source: crate::credentials::Error,
    },
    #[error("ImageCleanup {job}: {source}")]
    Registry {
        job: String,
        #[source]
        source: registry::Error,
    },
    #[error(
        "ImageCleanup {job}: cannot read the images live workloads use, so nothing is deleted: {message} (set spec.protect.cluster: false only for a registry no cluster pulls from)"
    )]
    Cluster { job: String, message: String },
    #[error("ImageCleanup {job}: {message}")]
    HostCommand { job: String, message: String },
}

/// What a run may read.
pub struct Inputs<'a> {
    /// The cluster whose workloads protect images (`None`: no connection).
    pub cluster: Option<&'a kube::Client>,
    /// The revision's desired state.
    pub desired: &'a [RenderedStack],
    /// The host's credentials, read as the repository's (`credentials`).
    pub credentials: &'a crate::credentials::Credentials,
    pub state_dir: &'a Path,
    /// The programs the host configuration allows jobs to run (`jobs.commands`).
    pub commands: &'a crate::config::HostCommands,
    /// Warnings (a keepTags rule keeping nothing) fail the run.
    pub strict: bool,
}

/// Runs the job: plans, and deletes when `spec.mode` is `enforce` and `dry_run` is false.
pub async fn run(
    job: &Job,
    spec: &Spec,
    inputs: &Inputs<'_>,
    dry_run: bool,
) -> Result<Report, Error> {
    // A command the host does not define fails the run before anything is deleted.
    let gc = match &spec.garbage_collect {
        Some(gc) => Some(
            garbage_collect::lookup(inputs.commands, &gc.command)
                .map(|c| (gc.command.as_str(), c))
                .map_err(|message| Error::HostCommand {
                    job: job.name.clone(),
                    message,
                })?,
        ),
        None => None,
    };
    let client = Arc::new(client_for(job, spec, inputs.credentials)?);
    let uses = protections(job, spec, inputs).await?;
    let mut report = plan(job, spec, &client, &uses, inputs.state_dir, Utc::now()).await?;
    report.strict = inputs.strict;
    if spec.mode == Mode::Enforce && !dry_run {
        report.deletes = true;
        execute(spec, &client, &mut report).await;
        if let Some((name, command)) = gc
            && (report.totals.deleted > 0 || report.totals.untagged > 0)
        {
            match garbage_collect::run(name, command).await {
                Ok(text) => report.garbage_collect = Some(text),
                Err(text) => {
                    report.errors.push(format!("garbage collection: {text}"));
                    report.garbage_collect = Some(text);
                }
            }
        }
    }
    report.totals.requests = client.requests();
    Ok(report)
}

/// A registry client with the spec's credentials, read from the credentials directory.
pub fn client_for(
    job: &Job,
    spec: &Spec,
    credentials: &crate::credentials::Credentials,
) -> Result<Client, Error> {
    let read = |field: &'static str, file: &str| -> Result<secrecy::SecretString, Error> {
        credentials
            .repository_text(field, file)
            .map_err(|source| Error::Credentials {
                job: job.name.clone(),
                source,
            })
    };
    let credentials = match (&spec.username_file, &spec.password_file) {
        (Some(u), Some(p)) => registry::Credentials {
            username: Some(
                secrecy::ExposeSecret::expose_secret(&read("spec.registry.usernameFile", u)?)
                    .to_owned(),
            ),
            password: Some(read("spec.registry.passwordFile", p)?),
        },
        _ => registry::Credentials::default(),
    };
    Client::new(&spec.url, credentials).map_err(|source| Error::Registry {
        job: job.name.clone(),
        source,
    })
}

/// The kinds whose objects name images that must stay.
const WORKLOAD_KINDS: [(&str, &str, &str); 7] = [
    ("", "v1", "Pod"),
    ("apps", "v1", "Deployment"),
    ("apps", "v1", "StatefulSet"),
    ("apps", "v1", "DaemonSet"),
    ("apps", "v1", "ReplicaSet"),
    ("batch", "v1", "Job"),
    ("batch", "v1", "CronJob"),
];

/// The images in use: the revision's desired workloads and the cluster's live ones.
pub async fn protections(job: &Job, spec: &Spec, inputs: &Inputs<'_>) -> Result<Uses, Error> {
    let mut uses = Uses::new();
    if spec.protect.desired {
        for stack in inputs.desired {
            for o in &stack.objects {
                let who = format!("{} (stack {}, desired)", o.key, stack.name);
                refs::collect(&o.object, &who, &spec.hosts, &mut uses);
            }
        }
    }
    if spec.protect.cluster {
        let cluster = |message: String| Error::Cluster {
            job: job.name.clone(),
            message,
        };
        let client = inputs
            .cluster
            .ok_or_else(|| cluster("no cluster connection".to_owned()))?;
        for (group, version, kind) in WORKLOAD_KINDS {
            let ar = ApiResource::from_gvk(&GroupVersionKind::gvk(group, version, kind));
            crate::cluster::live::for_each_in_cluster(client, &ar, |o| {
                let who = format!(
                    "{kind} {}/{}",
                    o.metadata.namespace.as_deref().unwrap_or(""),
                    o.metadata.name.as_deref().unwrap_or("")
                );
                let value = serde_json::to_value(o).unwrap_or(Value::Null);
                refs::collect(&value, &who, &spec.hosts, &mut uses);
            })
            .await
            .map_err(|e| cluster(format!("listing {kind}s: {e}")))?;
        }
    }
    Ok(uses)
}
