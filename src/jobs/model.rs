//! Scheduled jobs as declared in Git: documents of `stack/<name>/jobs.yaml`, one job each.
//!
//! ```yaml
//! apiVersion: driftless.dev/v1alpha1
//! kind: ImageCleanup            # or Backup
//! metadata: {name: registry-cleanup}
//! spec:
//!   schedule: "0 3 * * *"       # crontab, 5 fields (6 with seconds) or @daily-style macros
//!   timeZone: Europe/Berlin     # default UTC
//!   startingDeadline: 2h        # a run missed while the daemon was down runs once at start
//!                               # when it is at most this old (default: never catch up)
//!   ...                         # the kind's own fields
//! ```

use std::path::PathBuf;
use std::time::Duration;

use serde_json::Value;

use super::schedule::Schedule;
use crate::stack::LoadedStack;
use crate::stack::model::API_VERSION;

/// The job kinds driftless knows.
pub const KINDS: &[&str] = &["ImageCleanup", "Backup"];

/// Errors in a jobs file, naming the file and the job.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    Yaml(#[from] crate::yaml::Error),
    #[error("{file} (document {document}): {message}")]
    Invalid {
        file: PathBuf,
        document: usize,
        message: String,
    },
    #[error("{file}: job {name}: {source}")]
    Schedule {
        file: PathBuf,
        name: String,
        #[source]
        source: super::schedule::Error,
    },
    #[error(transparent)]
    Vars(#[from] Box<crate::stack::Error>),
    #[error(transparent)]
    ImageCleanup(#[from] super::image_cleanup::spec::Error),
    #[error(transparent)]
    Backup(#[from] super::backup::spec::Error),
    #[error("{file}: job name {name:?} is also used in {other}")]
    Duplicate {
        file: PathBuf,
        name: String,
        other: PathBuf,
    },
}

/// One scheduled job.
#[derive(Debug, Clone)]
pub struct Job {
    pub name: String,
    pub kind: String,
    /// The stack whose `jobs.yaml` declares it.
    pub stack: String,
    pub file: PathBuf,
    pub schedule: Schedule,
    pub starting_deadline: Option<Duration>,
    /// The whole `spec`, for the kind's own runner to read.
    pub spec: Value,
}

/// Reads every stack's `jobs.yaml`. Job names are unique across stacks.
pub fn load_jobs(stacks: &[LoadedStack]) -> Result<Vec<Job>, Error> {
    let mut jobs: Vec<Job> = Vec::new();
    for stack in stacks {
        let Some(file) = &stack.jobs else { continue };
        // Jobs see the stack's variables for the selected profile, as its manifests do.
        let text = crate::stack::vars::substitute(
            &stack.name,
            &file.path,
            &file.text,
            &crate::stack::render::stack_vars(stack),
        )
        .map_err(Box::new)?;
        for (i, doc) in crate::yaml::parse_documents(&file.path, &text)?
            .into_iter()
            .enumerate()
        {
            let job = parse_job(&stack.name, &file.path, i + 1, &doc)?;
            // The kind's own fields are checked here, so `validate` catches their mistakes.
            if job.kind == "ImageCleanup" {
                super::image_cleanup::spec::parse(&job)?;
            }
            if job.kind == "Backup" {
                super::backup::spec::parse(&job)?;
            }
            if let Some(other) = jobs.iter().find(|j| j.name == job.name) {
                return Err(Error::Duplicate {
                    file: file.path.clone(),
                    name: job.name,
                    other: other.file.clone(),
                });
            }
            jobs.push(job);
        }
    }
    Ok(jobs)
}

fn parse_job(
    stack: &str,
    file: &std::path::Path,
    document: usize,
    doc: &Value,
) -> Result<Job, Error> {
    let invalid = |message: String| Error::Invalid {
        file: file.to_owned(),
        document,
        message,
    };
    let text = |pointer: &str| doc.pointer(pointer).and_then(Value::as_str);
    if text("/apiVersion") != Some(API_VERSION) {
        return Err(invalid(format!("apiVersion must be {API_VERSION}")));
    }
    let kind = text("/kind").ok_or_else(|| invalid("missing `kind`".to_owned()))?;
    if !KINDS.contains(&kind) {
        return Err(invalid(format!(
            "unknown job kind {kind:?} (known: {})",
            KINDS.join(", ")
        )));
    }
    let name =
        text("/metadata/name").ok_or_else(|| invalid(format!("{kind}: missing metadata.name")))?;
    if !crate::stack::load::is_dns_label(name) {
        return Err(invalid(format!(
            "{kind}: metadata.name {name:?} must be a DNS label"
        )));
    }
    let expr = text("/spec/schedule")
        .ok_or_else(|| invalid(format!("{kind}/{name}: missing spec.schedule")))?;
    let schedule =
        Schedule::parse(expr, text("/spec/timeZone")).map_err(|source| Error::Schedule {
            file: file.to_owned(),
            name: name.to_owned(),
            source,
        })?;
    let starting_deadline = match text("/spec/startingDeadline") {
        Some(d) => Some(
            crate::stack::model::duration_text::parse(d)
                .map_err(|e| invalid(format!("{kind}/{name}: spec.startingDeadline: {e}")))?,
        ),
        None => None,
    };
    Ok(Job {
        name: name.to_owned(),
        kind: kind.to_owned(),
        stack: stack.to_owned(),
        file: file.to_owned(),
        schedule,
        starting_deadline,
        spec: doc.get("spec").cloned().unwrap_or(Value::Null),
    })
}
