//! Scheduled jobs declared in Git: their format (`model`), crontab schedules (`schedule`) and
//! scheduling decisions (`scheduler`), all pure; run records and locks (`runs`), the kinds'
//! runners (`image_cleanup`, `backup`, each with its own pure retention decisions) and the
//! dispatch that runs one job and records it (`runner`).

pub mod backup;
pub mod image_cleanup;
pub mod model;
pub mod runner;
pub mod runs;
pub mod schedule;
pub mod scheduler;

/// Reads a credential file named by a job's spec from the credentials directory. The error says
/// which file (never its content), or that no directory is set.
pub fn read_credential(
    credentials_dir: Option<&std::path::Path>,
    file: &str,
) -> Result<String, String> {
    let dir = credentials_dir.ok_or_else(|| {
        format!(
            "{file} is read from the credentials directory, and none is set (credentialsDir or $CREDENTIALS_DIRECTORY)"
        )
    })?;
    let path = dir.join(file);
    std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))
}
