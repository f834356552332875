//! The runs API: `GET /api/v1/runs?limit=` (newest first, without diffs), `GET
//! /api/v1/runs/{id}` (one run with its diffs; `?wait=60s` long-polls until it ends, at most
//! [`MAX_WAIT`], [`MAX_WAITERS`] at once) and `POST /api/v1/sync` (a run for CI without a forge
//! webhook: optional `{"revision": "<sha>", "stacks": [...]}`; the status token is required
//! even on loopback, and without one configured the route is closed).

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Path, Query};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use tracing::info;

use super::{RunRequest, State, authorized, read_body, stopping, unauthorized};

/// Longest `?wait=` honoured; longer asks wait this long.
pub const MAX_WAIT: Duration = Duration::from_secs(600);
/// Long-polls held at once; more are answered 503.
pub const MAX_WAITERS: usize = 32;
/// Most runs one listing returns (and its default).
const MAX_LIST: usize = 200;
const DEFAULT_LIST: usize = 20;
/// Largest `POST /api/v1/sync` body.
const SYNC_BODY_LIMIT: usize = 16 * 1024;
/// Most stacks one sync request names.
const MAX_STACKS: usize = 64;

type AppState = axum::extract::State<Arc<State>>;

#[derive(Deserialize)]
pub struct ListQuery {
    limit: Option<usize>,
}

/// `GET /api/v1/runs?limit=`.
pub async fn list(
    axum::extract::State(state): AppState,
    headers: HeaderMap,
    Query(q): Query<ListQuery>,
) -> Response {
    if !authorized(&state, &headers).await {
        return unauthorized();
    }
    let limit = q.limit.unwrap_or(DEFAULT_LIST).clamp(1, MAX_LIST);
    axum::Json(serde_json::json!({ "runs": state.runs.list(limit) })).into_response()
}

#[derive(Deserialize)]
pub struct GetQuery {
    wait: Option<String>,
}

/// `GET /api/v1/runs/{id}[?wait=60s]`.
pub async fn get(
    axum::extract::State(state): AppState,
    headers: HeaderMap,
    Path(id): Path<String>,
    Query(q): Query<GetQuery>,
) -> Response {
    if !authorized(&state, &headers).await {
        return unauthorized();
    }
    if !crate::runs::valid_id(&id) {
        return (StatusCode::NOT_FOUND, "no such run\n").into_response();
    }
    // A duration is a few characters; a long one is no duration (and costs a parse).
    if q.wait.as_ref().is_some_and(|w| w.len() > 32) {
        return (StatusCode::BAD_REQUEST, "wait: too long\n").into_response();
    }
    let wait = match q
        .wait
        .as_deref()
        .map(crate::stack::model::duration_text::parse)
    {
        None => Duration::ZERO,
        Some(Ok(d)) => d.min(MAX_WAIT),
        Some(Err(e)) => return (StatusCode::BAD_REQUEST, format!("wait: {e}\n")).into_response(),
    };
    let run = if wait.is_zero() {
        state.runs.get(&id)
    } else {
        let Ok(_slot) = state.waiters.try_acquire() else {
            return (
                StatusCode::SERVICE_UNAVAILABLE,
                [(header::RETRY_AFTER, "5")],
                "too many callers waiting: retry\n",
            )
                .into_response();
        };
        state.runs.wait(&id, wait).await
    };
    match run {
        Some(run) => axum::Json(run).into_response(),
        None => (StatusCode::NOT_FOUND, "no such run\n").into_response(),
    }
}

/// The body of `POST /api/v1/sync`.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct SyncBody {
    revision: Option<String>,
    #[serde(default)]
    stacks: Vec<String>,
}

/// `POST /api/v1/sync`.
pub async fn sync(
    axum::extract::State(state): AppState,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let configured = state.endpoint.read().await.status_token.is_some();
    if !configured {
        return (
            StatusCode::FORBIDDEN,
            "POST /api/v1/sync needs daemon.statusTokenFile: it is closed without a token\n",
        )
            .into_response();
    }
    if !authorized(&state, &headers).await {
        return unauthorized();
    }
    let bytes = match read_body(body, SYNC_BODY_LIMIT).await {
        Ok(b) => b,
        Err((_, response)) => return response,
    };
    let request: SyncBody = if bytes.iter().all(u8::is_ascii_whitespace) {
        SyncBody::default()
    } else {
        match serde_json::from_slice(&bytes) {
            Ok(r) => r,
            Err(e) => {
                return (
                    StatusCode::BAD_REQUEST,
                    format!(
                        "the body must be {{\"revision\": \"<sha>\", \"stacks\": [...]}}: {e}\n"
                    ),
                )
                    .into_response();
            }
        }
    };
    if let Some(r) = &request.revision
        && !crate::runs::valid_revision(r)
    {
        return (
            StatusCode::BAD_REQUEST,
            "revision: a commit sha is 7 to 64 hexadecimal digits\n",
        )
            .into_response();
    }
    if request.stacks.len() > MAX_STACKS || request.stacks.iter().any(|s| !valid_stack_name(s)) {
        return (
            StatusCode::BAD_REQUEST,
            format!(
                "stacks: at most {MAX_STACKS} stack names (lower-case letters, digits, '-', '.')\n"
            ),
        )
            .into_response();
    }
    let revision = request.revision.map(|r| r.to_ascii_lowercase());
    let Some(run) = (state.wake)(RunRequest::Sync {
        revision: revision.clone(),
    }) else {
        return stopping();
    };
    info!(%run, revision = ?revision, stacks = ?request.stacks, "sync requested through the API");
    (
        StatusCode::ACCEPTED,
        axum::Json(serde_json::json!({"run": run, "revision": revision})),
    )
        .into_response()
}

/// A stack name as `stack.yaml` allows it (DNS-label-like), bounded.
pub(crate) fn valid_stack_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
}
