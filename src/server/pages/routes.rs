//! The pages' handlers: the same token rules as `/api/v1/status`, names and ids checked before
//! anything is looked up (an unknown one is a 404 page), every page served with the
//! Content-Security-Policy of [`super::csp`]. The I/O side of the pages: the status, the run
//! store, and a job's history and report files (read bounded, off the async threads).

use std::path::Path as FsPath;
use std::sync::Arc;

use axum::extract::Path;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use super::{job, runs, stack, status};
use crate::server::{State, authorized, unauthorized};

type AppState = axum::extract::State<Arc<State>>;

/// Runs the history page lists (the store keeps at most this many by default).
const HISTORY_RUNS: usize = 200;
/// Largest job history or report file read for a page.
const MAX_JOB_FILE_BYTES: u64 = 8 * 1024 * 1024;

/// A page with its headers.
fn html(code: StatusCode, body: String) -> Response {
    let mut response = (code, body).into_response();
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    if let Ok(csp) = HeaderValue::from_str(super::csp()) {
        h.insert(header::CONTENT_SECURITY_POLICY, csp);
    }
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

fn not_found(what: &str) -> Response {
    html(StatusCode::NOT_FOUND, super::not_found(what))
}

/// `GET /`.
pub async fn status_page(axum::extract::State(state): AppState, headers: HeaderMap) -> Response {
    if !authorized(&state, &headers).await {
        return unauthorized();
    }
    let st = state.status.read().await.clone();
    let recent = state.runs.list(status::RECENT_RUNS);
    html(StatusCode::OK, status::render(&st, &recent))
}

/// `GET /runs`.
pub async fn runs_page(axum::extract::State(state): AppState, headers: HeaderMap) -> Response {
    if !authorized(&state, &headers).await {
        return unauthorized();
    }
    html(
        StatusCode::OK,
        runs::render_list(&state.runs.list(HISTORY_RUNS)),
    )
}

/// `GET /runs/{id}`.
pub async fn run_page(
    axum::extract::State(state): AppState,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    if !authorized(&state, &headers).await {
        return unauthorized();
    }
    if !crate::runs::valid_id(&id) {
        return not_found("That is not a run id.");
    }
    match state.runs.get(&id) {
        Some(run) => html(StatusCode::OK, runs::render_run(&run)),
        None => not_found(&format!("No run {id} is kept.")),
    }
}

/// `GET /stacks/{name}`.
pub async fn stack_page(
    axum::extract::State(state): AppState,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> Response {
    if !authorized(&state, &headers).await {
        return unauthorized();
    }
    if !crate::server::runs::valid_stack_name(&name) {
        return not_found("That is not a stack name.");
    }
    let st = state.status.read().await.clone();
    let Some(status) = st.stacks.iter().find(|s| s.name == name) else {
        return not_found(&format!("No stack {name} in the applied revision."));
    };
    let objects = state.runs.stack_objects(&name);
    let recent: Vec<crate::runs::Run> = state
        .runs
        .list(HISTORY_RUNS)
        .into_iter()
        .filter(|r| r.stack(&name).is_some())
        .take(stack::RECENT_RUNS)
        .collect();
    let jobs: Vec<&crate::status::JobStatus> = st.jobs.iter().filter(|j| j.stack == name).collect();
    html(
        StatusCode::OK,
        stack::render(&stack::StackPage {
            status,
            objects: objects.as_ref(),
            runs: &recent,
            jobs: &jobs,
        }),
    )
}

/// Whether `name` may name a job's files: letters, digits, `-`, `_`, `.`, not starting with a
/// dot, bounded.
fn valid_job_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

/// `GET /jobs/{name}`.
pub async fn job_page(
    axum::extract::State(state): AppState,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> Response {
    if !authorized(&state, &headers).await {
        return unauthorized();
    }
    if !valid_job_name(&name) {
        return not_found("That is not a job name.");
    }
    let job = {
        let st = state.status.read().await;
        st.jobs.iter().find(|j| j.name == name).cloned()
    };
    // Only a job of the applied revision is looked up on disk.
    let Some(job) = job else {
        return not_found(&format!("No job {name} in the applied revision."));
    };
    let (history, report, problems) = match state.state_dir.clone() {
        None => (None, None, Vec::new()),
        Some(dir) => {
            let name = name.clone();
            tokio::task::spawn_blocking(move || read_job_files(&dir, &name))
                .await
                .unwrap_or_else(|_| (None, None, vec!["reading the job's files failed".into()]))
        }
    };
    html(
        StatusCode::OK,
        job::render(&job::JobPage {
            status: &job,
            history: history.as_ref(),
            report: report.as_ref(),
            problems: &problems,
        }),
    )
}

type JobFiles = (
    Option<crate::jobs::runs::History>,
    Option<serde_json::Value>,
    Vec<String>,
);

/// Reads a job's history and last report, each bounded; nothing is written or moved.
fn read_job_files(state_dir: &FsPath, name: &str) -> JobFiles {
    let mut problems = Vec::new();
    let mut read = |path: std::path::PathBuf| -> Option<Vec<u8>> {
        let meta = std::fs::metadata(&path).ok()?;
        if meta.len() > MAX_JOB_FILE_BYTES {
            problems.push(format!(
                "{} is larger than {MAX_JOB_FILE_BYTES} bytes: not shown",
                path.display()
            ));
            return None;
        }
        match std::fs::read(&path) {
            Ok(bytes) => Some(bytes),
            Err(e) => {
                problems.push(format!("{}: {e}", path.display()));
                None
            }
        }
    };
    let history_bytes = read(crate::jobs::runs::history_path(state_dir, name));
    let report_bytes = read(crate::jobs::runs::report_path(state_dir, name));
    let history = history_bytes.and_then(|b| match serde_json::from_slice(&b) {
        Ok(h) => Some(h),
        Err(e) => {
            problems.push(format!("the job's history cannot be read: {e}"));
            None
        }
    });
    let report = report_bytes.and_then(|b| match serde_json::from_slice(&b) {
        Ok(r) => Some(r),
        Err(e) => {
            problems.push(format!("the job's last report cannot be read: {e}"));
            None
        }
    });
    (history, report, problems)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn job_names_that_could_leave_the_jobs_directory_are_refused() {
        for bad in ["", "..", "../x", "a/b", ".hidden", "a\0b", "a b", "<x>"] {
            assert!(!valid_job_name(bad), "{bad:?}");
        }
        for good in ["registry-cleanup", "pg_backup", "db.nightly"] {
            assert!(valid_job_name(good), "{good}");
        }
    }
}
