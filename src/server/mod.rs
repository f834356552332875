//! The HTTP endpoint (axum): `/healthz`, `/readyz`, `/metrics`, `/api/v1/status`, `/` (status
//! page) and `POST /hooks/{github,gitlab,gitea,generic}`. Webhooks answer 202 at once and only
//! wake the daemon's loop; status and metrics need a bearer token when one is configured.

pub mod auth;
pub mod hooks;
pub mod page;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use tracing::{info, warn};

use crate::daemon::Shared;
use crate::daemon::metrics::labels;
use crate::daemon::status::DaemonState;
use hooks::{FollowedRef, Provider};

/// Serves until the task is aborted.
pub async fn serve(listener: tokio::net::TcpListener, shared: Arc<Shared>) {
    let limit = shared.endpoint.read().await.body_limit;
    let app = Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/api/v1/status", get(status_json))
        .route("/", get(status_page))
        .route("/hooks/{provider}", post(webhook))
        .layer(DefaultBodyLimit::max(limit))
        .layer(tower_http::timeout::TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            Duration::from_secs(10),
        ))
        .with_state(shared);
    if let Err(e) = axum::serve(listener, app).await {
        warn!("HTTP endpoint stopped: {e}");
    }
}

async fn readyz(State(shared): State<Arc<Shared>>) -> Response {
    let st = shared.status.read().await;
    if st.applied_revision.is_some() || st.state != DaemonState::Starting {
        (StatusCode::OK, "ready\n").into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "no revision loaded yet\n").into_response()
    }
}

/// Whether the request may read status and metrics: always without a token configured, else
/// only with `Authorization: Bearer <token>` (compared in constant time).
async fn authorized(shared: &Shared, headers: &HeaderMap) -> bool {
    match &shared.endpoint.read().await.status_token {
        Some(token) => auth::bearer_matches(headers, token),
        None => true,
    }
}

fn unauthorized() -> Response {
    (
        StatusCode::UNAUTHORIZED,
        [(header::WWW_AUTHENTICATE, "Bearer")],
        "a bearer token is required\n",
    )
        .into_response()
}

async fn metrics(State(shared): State<Arc<Shared>>, headers: HeaderMap) -> Response {
    if !authorized(&shared, &headers).await {
        return unauthorized();
    }
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        shared.metrics.render(),
    )
        .into_response()
}

async fn status_json(State(shared): State<Arc<Shared>>, headers: HeaderMap) -> Response {
    if !authorized(&shared, &headers).await {
        return unauthorized();
    }
    let st = shared.status.read().await.clone();
    axum::Json(st).into_response()
}

async fn status_page(State(shared): State<Arc<Shared>>, headers: HeaderMap) -> Response {
    if !authorized(&shared, &headers).await {
        return unauthorized();
    }
    let st = shared.status.read().await.clone();
    Html(page::render(&st)).into_response()
}

async fn webhook(
    State(shared): State<Arc<Shared>>,
    Path(provider): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let provider = match provider.as_str() {
        "github" => Provider::Github,
        "gitlab" => Provider::Gitlab,
        "gitea" => Provider::Gitea,
        "generic" => Provider::Generic,
        _ => return (StatusCode::NOT_FOUND, "no such webhook\n").into_response(),
    };
    let name = format!("{provider:?}").to_lowercase();
    let count = |outcome: &str| {
        shared
            .metrics
            .webhook_requests
            .get_or_create(&labels(&[("provider", &name), ("outcome", outcome)]))
            .inc();
    };
    let endpoint = shared.endpoint.read().await;
    let Some((_, secret)) = endpoint
        .webhook_secrets
        .iter()
        .find(|(p, _)| *p == provider)
    else {
        count("not_configured");
        return (StatusCode::NOT_FOUND, "this webhook is not configured\n").into_response();
    };
    if let Err(e) = hooks::verify(provider, &headers, &body, secret) {
        count("rejected");
        warn!(provider = %name, "webhook rejected: {e}");
        return (status_code(e.status()), format!("{e}\n")).into_response();
    }
    let push = match hooks::parse_push(provider, &headers, &body) {
        Ok(Some(push)) => push,
        Ok(None) => {
            count("ignored");
            return (StatusCode::ACCEPTED, "not a push event: ignored\n").into_response();
        }
        Err(e) => {
            count("invalid");
            return (status_code(e.status()), format!("{e}\n")).into_response();
        }
    };
    let concerns = match &endpoint.git {
        Some((url, reference)) => {
            let followed = match reference {
                crate::source::GitRef::Branch(b) => FollowedRef::Branch(b),
                crate::source::GitRef::Tag(t) => FollowedRef::Tag(t),
                crate::source::GitRef::Commit(_) => FollowedRef::Commit,
            };
            hooks::concerns(&push, url, followed)
        }
        // A local-path source: any authentic push means "look again".
        None => true,
    };
    drop(endpoint);
    if !concerns {
        count("ignored");
        return (
            StatusCode::ACCEPTED,
            "push for another repository or ref: ignored\n",
        )
            .into_response();
    }
    count("accepted");
    info!(provider = %name, reference = ?push.reference, "webhook: sync requested");
    shared.request(&format!("webhook {name}"));
    (StatusCode::ACCEPTED, "sync requested\n").into_response()
}

fn status_code(code: u16) -> StatusCode {
    StatusCode::from_u16(code).unwrap_or(StatusCode::BAD_REQUEST)
}
