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
//!   target: prod-eu             # the host's target whose cluster it uses (default: the
//!                               # first target that takes its stack)
//!   ...                         # the kind's own fields
//! ```

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;

use super::schedule::Schedule;
use super::{backup, image_cleanup};
use crate::stack::LoadedStack;
use crate::stack::model::API_VERSION;

/// The job kinds driftless knows.
pub const KINDS: &[&str] = &["ImageCleanup", "Backup"];

/// The fields of `spec` every kind has; read here, so a kind's parser sees only its own.
const COMMON_FIELDS: &[&str] = &["schedule", "timeZone", "startingDeadline", "target"];

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
    ImageCleanup(#[from] image_cleanup::spec::Error),
    #[error(transparent)]
    Backup(#[from] backup::spec::Error),
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
    /// The stack whose `jobs.yaml` declares it.
    pub stack: String,
    pub file: PathBuf,
    pub schedule: Schedule,
    pub starting_deadline: Option<Duration>,
    /// The host's target whose cluster the job uses (`spec.target`; default: its stack's).
    pub target: Option<String>,
    /// The kind's own fields, parsed and checked once when the job is loaded.
    pub spec: JobSpec,
}

/// A job's kind with its parsed spec.
#[derive(Debug, Clone)]
pub enum JobSpec {
    ImageCleanup(Box<image_cleanup::spec::Spec>),
    Backup(Box<backup::spec::Spec>),
}

impl JobSpec {
    /// The kind as `jobs.yaml` names it.
    pub fn kind(&self) -> &'static str {
        match self {
            JobSpec::ImageCleanup(_) => "ImageCleanup",
            JobSpec::Backup(_) => "Backup",
        }
    }
}

impl Job {
    /// The kind as `jobs.yaml` names it.
    pub fn kind(&self) -> &'static str {
        self.spec.kind()
    }

    /// The ImageCleanup spec, when the job is an ImageCleanup.
    pub fn image_cleanup(&self) -> Option<&image_cleanup::spec::Spec> {
        match &self.spec {
            JobSpec::ImageCleanup(s) => Some(s),
            JobSpec::Backup(_) => None,
        }
    }

    /// The Backup spec, when the job is a Backup.
    pub fn backup(&self) -> Option<&backup::spec::Spec> {
        match &self.spec {
            JobSpec::Backup(s) => Some(s),
            JobSpec::ImageCleanup(_) => None,
        }
    }

    /// A job as a `jobs.yaml` document of `kind` named `name` with this `spec` would declare it
    /// (tests and benchmarks build jobs without a stack repository).
    pub fn from_spec(
        kind: &str,
        name: &str,
        stack: &str,
        file: impl AsRef<Path>,
        spec: Value,
    ) -> Result<Job, Error> {
        let doc = serde_json::json!({
            "apiVersion": API_VERSION,
            "kind": kind,
            "metadata": {"name": name},
            "spec": spec,
        });
        parse_job(stack, file.as_ref(), 1, &doc)
    }
}

/// `spec` without the fields every kind shares: what a kind's parser reads.
pub fn kind_fields(spec: &Value) -> Value {
    let mut own = spec.clone();
    if let Value::Object(map) = &mut own {
        for field in COMMON_FIELDS {
            map.remove(*field);
        }
    }
    own
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

/// One document: the fields every job has, then the kind's own (so `validate` catches their
/// mistakes).
fn parse_job(stack: &str, file: &Path, document: usize, doc: &Value) -> Result<Job, Error> {
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
    let target = match text("/spec/target") {
        Some(t) if crate::stack::load::is_dns_label(t) => Some(t.to_owned()),
        Some(t) => {
            return Err(invalid(format!(
                "{kind}/{name}: spec.target {t:?} must be a DNS label (a target of the host configuration)"
            )));
        }
        None => None,
    };
    let own = kind_fields(doc.get("spec").unwrap_or(&Value::Null));
    let spec = match kind {
        "ImageCleanup" => {
            JobSpec::ImageCleanup(Box::new(image_cleanup::spec::parse(file, name, &own)?))
        }
        "Backup" => JobSpec::Backup(Box::new(backup::spec::parse(
            file,
            name,
            schedule.time_zone(),
            &own,
        )?)),
        // `KINDS` was checked above.
        other => {
            return Err(invalid(format!(
                "unknown job kind {other:?} (known: {})",
                KINDS.join(", ")
            )));
        }
    };
    Ok(Job {
        name: name.to_owned(),
        stack: stack.to_owned(),
        file: file.to_owned(),
        schedule,
        starting_deadline,
        target,
        spec,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn backup(target: Option<&str>) -> Result<Job, Error> {
        let mut spec = serde_json::json!({
            "schedule": "@daily",
            "source": {"postgres": {"database": "app", "username": "app"}},
            "destination": {"local": {"path": "/b"}},
            "retention": {"keepLast": 1},
        });
        if let Some(t) = target {
            spec["target"] = Value::from(t);
        }
        Job::from_spec("Backup", "nightly", "s", "stack/s/jobs.yaml", spec)
    }

    #[test]
    fn a_job_may_name_the_target_whose_cluster_it_uses() {
        assert_eq!(backup(None).expect("no target").target, None);
        assert_eq!(
            backup(Some("prod-eu")).expect("target").target.as_deref(),
            Some("prod-eu")
        );
        let e = backup(Some("Prod/EU"))
            .expect_err("not a DNS label")
            .to_string();
        assert!(e.contains("spec.target"), "{e}");
    }
}
