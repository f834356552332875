//! `driftless backup list|restore`: the work behind the two commands, so `main` only loads the
//! jobs and prints. Output: human text by default, one JSON document with `-o json`.

use std::path::Path;

use super::{Inputs, RestoreTarget};
use crate::cli::{BackupCommand, OutputFormat};
use crate::jobs::model::Job;

/// Errors of the commands (a job that is not there, or the backup module's own).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("no Backup job {name:?} (Backup jobs declared: {declared})")]
    NoJob { name: String, declared: String },
    #[error(transparent)]
    Backup(#[from] super::Error),
}

/// Runs the command; returns what to print on standard output.
pub async fn execute(
    command: &BackupCommand,
    jobs: &[Job],
    cluster: Option<&kube::Client>,
    credentials: &crate::credentials::Credentials,
    state_dir: &Path,
) -> Result<String, Error> {
    let backup_jobs: Vec<&Job> = jobs.iter().filter(|j| j.kind == "Backup").collect();
    let find = |name: &str| {
        backup_jobs
            .iter()
            .find(|j| j.name == name)
            .copied()
            .ok_or_else(|| Error::NoJob {
                name: name.to_owned(),
                declared: if backup_jobs.is_empty() {
                    "none".to_owned()
                } else {
                    backup_jobs
                        .iter()
                        .map(|j| j.name.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                },
            })
    };
    match command {
        BackupCommand::List { job, output, .. } => {
            let selected: Vec<&Job> = match job {
                Some(name) => vec![find(name)?],
                None => backup_jobs.clone(),
            };
            let mut all = Vec::new();
            for j in selected {
                all.push(super::list(j, credentials, cluster).await?);
            }
            Ok(match output {
                OutputFormat::Json => format!("{:#}\n", serde_json::json!({ "jobs": all })),
                OutputFormat::Human => {
                    let mut out = String::new();
                    if all.is_empty() {
                        out.push_str("no Backup jobs declared\n");
                    }
                    for j in &all {
                        out.push_str(&format!("{} → {}\n", j.job, j.destination));
                        if j.backups.is_empty() {
                            out.push_str("  no complete backups\n");
                        }
                        for b in j.backups.iter().rev() {
                            out.push_str(&format!(
                                "  {}  {:>10}  {} files  {}s  {}\n",
                                b.id,
                                super::human_bytes(b.bytes),
                                b.files,
                                (b.finished_at - b.started_at).num_seconds(),
                                b.source
                            ));
                        }
                        for id in &j.incomplete {
                            out.push_str(&format!(
                                "  {id}  incomplete (no manifest; removed by the next run)\n"
                            ));
                        }
                    }
                    out
                }
            })
        }
        BackupCommand::Restore {
            job,
            id,
            database,
            bucket,
            prefix,
            force,
            globals,
            output,
            ..
        } => {
            let j = find(job)?;
            let target = RestoreTarget {
                database: database.clone(),
                bucket: bucket.clone(),
                prefix: prefix.clone(),
                force: *force,
                globals: *globals,
            };
            let inputs = Inputs {
                cluster,
                credentials,
                state_dir,
                revision: None,
            };
            let done = super::restore(j, id, &target, &inputs).await?;
            Ok(match output {
                OutputFormat::Json => format!("{done:#}\n"),
                OutputFormat::Human => format!(
                    "restored backup {} of {}: {}\n",
                    done["id"].as_str().unwrap_or(""),
                    j.name,
                    done["restored"]
                ),
            })
        }
    }
}
