//! The HTTP endpoint (axum routes on hyper connections): `/healthz`, `/readyz`, `/metrics`,
//! `/api/v1/status`, the pages (`pages`: `/`, `/runs`, `/runs/{id}`, `/stacks/{name}`,
//! `/jobs/{name}`), `POST /hooks/{github,gitlab,gitea,generic}` and the
//! runs API (`runs`: `GET /api/v1/runs`, `GET /api/v1/runs/{id}[?wait=]`, `POST
//! /api/v1/sync`). Webhooks answer 202 at once with the run they queued and only wake the
//! daemon's loop. With a token configured, every route but `/healthz` and the (signed) webhooks
//! needs it; `POST /api/v1/sync` needs it always. `connections` cuts slow and idle connections
//! and caps how many are held.
//!
//! The server sees a narrow [`State`] of its own — the status document, the metrics, its
//! settings and a handle that wakes the loop — never the daemon's loop state, so it can be
//! tested alone.

pub mod auth;
pub mod connections;
pub mod hooks;
pub mod pages;
pub mod runs;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{DefaultBodyLimit, Path};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use secrecy::{ExposeSecret, SecretString};
use tokio::sync::{RwLock, Semaphore};
use tracing::{info, warn};

use crate::config::HostConfig;
use crate::status::metrics::{Metrics, labels};
use crate::status::{DaemonState, Status};
use hooks::{FollowedRef, Provider};

/// Errors setting the endpoint up.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Credentials(#[from] crate::credentials::Error),
    #[error("{0}")]
    Invalid(String),
    #[error(
        "daemon.statusTokenFile: the token in {file:?} {problem}; use a random token (e.g. `openssl rand -hex 32`)"
    )]
    WeakToken {
        file: String,
        problem: auth::WeakToken,
    },
    #[error("{field}: the secret in {file:?} is empty: anyone could sign with it")]
    EmptySecret { field: String, file: String },
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// The endpoint's view of the configuration (secrets read from the credentials directory).
#[derive(Default)]
pub struct EndpointConfig {
    pub status_token: Option<SecretString>,
    pub webhook_secrets: Vec<(Provider, SecretString)>,
    pub body_limit: usize,
    /// The followed Git URL and ref (webhooks for anything else are ignored).
    pub git: Option<(String, crate::source::GitRef)>,
    /// Most connections held at once.
    pub max_connections: usize,
}

impl EndpointConfig {
    /// Reads the endpoint's secrets. Missing files are errors: a webhook route without its
    /// secret must not silently accept everything; so are an empty webhook secret and a status
    /// token that is empty, short or not printable.
    pub fn from_config(config: &HostConfig) -> Result<EndpointConfig, Error> {
        let creds = config.credentials();
        let d = &config.daemon;
        let mut webhook_secrets = Vec::new();
        for (provider, secret) in [
            (Provider::Github, &d.webhooks.github),
            (Provider::Gitlab, &d.webhooks.gitlab),
            (Provider::Gitea, &d.webhooks.gitea),
            (Provider::Generic, &d.webhooks.generic),
        ] {
            if let Some(s) = secret {
                let field = format!("daemon.webhooks.{}.secretFile", provider.name());
                let value = creds.host_text(&field, &s.secret_file)?;
                if value.expose_secret().trim().is_empty() {
                    return Err(Error::EmptySecret {
                        field,
                        file: s.secret_file.clone(),
                    });
                }
                webhook_secrets.push((provider, value));
            }
        }
        let status_token = match d.status_token_file.as_deref() {
            Some(file) => {
                let token = creds.host_text("daemon.statusTokenFile", file)?;
                auth::check_token(&token).map_err(|problem| Error::WeakToken {
                    file: file.to_owned(),
                    problem,
                })?;
                Some(token)
            }
            None => None,
        };
        if d.max_connections == 0 {
            return Err(Error::Invalid(
                "daemon.maxConnections must be at least 1".to_owned(),
            ));
        }
        if !d.listen.ip().is_loopback() && status_token.is_none() {
            return Err(Error::Invalid(format!(
                "daemon.listen {} is not a loopback address: set daemon.statusTokenFile so status and metrics need a bearer token",
                d.listen
            )));
        }
        let git = config
            .source
            .as_ref()
            .and_then(|s| s.git.as_ref())
            .map(|g| (g.url.clone(), crate::source::GitRef::of(g)));
        Ok(EndpointConfig {
            status_token,
            webhook_secrets,
            body_limit: d.webhook_body_limit,
            git,
            max_connections: d.max_connections,
        })
    }
}

/// What a caller asks of the daemon's loop.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RunRequest {
    /// An authentic push that concerns what the daemon follows; `revision` is the pushed sha.
    Webhook {
        provider: Provider,
        revision: Option<String>,
    },
    /// `POST /api/v1/sync`, wanting `revision` when given.
    Sync { revision: Option<String> },
}

/// Wakes the daemon's loop; returns the id of the run that will serve the request (`None` when
/// the daemon is stopping).
pub type Wake = Arc<dyn Fn(RunRequest) -> Option<String> + Send + Sync>;

/// Webhooks handled at once (each holds up to the body limit in memory).
pub const WEBHOOK_CONCURRENCY: usize = 16;

/// Longest a webhook waits for one of those slots before it is answered 503.
const WEBHOOK_WAIT: Duration = Duration::from_secs(5);

/// Longest a request may take, its body included.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// What the handlers see.
pub struct State {
    pub status: Arc<RwLock<Status>>,
    pub metrics: Arc<Metrics>,
    pub endpoint: RwLock<EndpointConfig>,
    /// The daemon's runs (read by the runs API).
    pub runs: Arc<crate::runs::store::Store>,
    /// The state directory (job histories and reports for the job pages); none in tests.
    pub state_dir: Option<std::path::PathBuf>,
    wake: Wake,
    /// Long-polls of `GET /api/v1/runs/{id}?wait=` at once.
    waiters: Semaphore,
    /// Webhooks being handled (body read, checked): bounds their memory.
    webhook_slots: Semaphore,
    webhook_wait: Duration,
}

impl State {
    pub fn new(
        status: Arc<RwLock<Status>>,
        metrics: Arc<Metrics>,
        endpoint: EndpointConfig,
        runs: Arc<crate::runs::store::Store>,
        wake: Wake,
    ) -> State {
        State {
            status,
            metrics,
            endpoint: RwLock::new(endpoint),
            runs,
            state_dir: None,
            wake,
            waiters: Semaphore::new(runs::MAX_WAITERS),
            webhook_slots: Semaphore::new(WEBHOOK_CONCURRENCY),
            webhook_wait: WEBHOOK_WAIT,
        }
    }

    /// `new` reading job histories and reports from `dir`.
    pub fn with_state_dir(mut self, dir: std::path::PathBuf) -> State {
        self.state_dir = Some(dir);
        self
    }

    /// `new` with `slots` webhooks at once, waiting `wait` for one (tests).
    pub fn with_webhook_slots(mut self, slots: usize, wait: Duration) -> State {
        self.webhook_slots = Semaphore::new(slots);
        self.webhook_wait = wait;
        self
    }
}

/// Binds the endpoint's address (port 0: any free port; the listener knows which).
pub async fn bind(addr: SocketAddr) -> Result<tokio::net::TcpListener, Error> {
    tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| Error::Listen { addr, source })
}

/// The routes, for `serve` and for tests.
pub fn router(state: Arc<State>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/api/v1/status", get(status_json))
        .route("/", get(pages::routes::status_page))
        .route("/runs", get(pages::routes::runs_page))
        .route("/runs/{id}", get(pages::routes::run_page))
        .route("/stacks/{name}", get(pages::routes::stack_page))
        .route("/jobs/{name}", get(pages::routes::job_page))
        .route("/hooks/{provider}", post(webhook))
        .route("/api/v1/runs", get(runs::list))
        .route("/api/v1/sync", post(runs::sync))
        // The webhook and sync handlers read their bodies themselves, under their limits.
        .layer(DefaultBodyLimit::disable())
        .layer(tower_http::timeout::TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            REQUEST_TIMEOUT,
        ))
        // Added after the timeout layer: a long-poll has its own bound (`runs::MAX_WAIT`).
        .route("/api/v1/runs/{id}", get(runs::get))
        .with_state(state)
}

/// Serves until the task is aborted (see `connections`).
pub async fn serve(listener: tokio::net::TcpListener, state: Arc<State>) {
    connections::serve(listener, state).await;
}

type AppState = axum::extract::State<Arc<State>>;

async fn readyz(axum::extract::State(state): AppState, headers: HeaderMap) -> Response {
    if !authorized(&state, &headers).await {
        return unauthorized();
    }
    let st = state.status.read().await;
    if st.applied_revision.is_some() || st.state != DaemonState::Starting {
        (StatusCode::OK, "ready\n").into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "no revision loaded yet\n").into_response()
    }
}

/// Whether the request may read readiness, status and metrics: always without a token
/// configured, else only with `Authorization: Bearer <token>`.
pub(crate) async fn authorized(state: &State, headers: &HeaderMap) -> bool {
    match &state.endpoint.read().await.status_token {
        Some(token) => auth::bearer_matches(headers, token),
        None => true,
    }
}

pub(crate) fn unauthorized() -> Response {
    (
        StatusCode::UNAUTHORIZED,
        [(header::WWW_AUTHENTICATE, "Bearer")],
        "a bearer token is required\n",
    )
        .into_response()
}

async fn metrics(axum::extract::State(state): AppState, headers: HeaderMap) -> Response {
    if !authorized(&state, &headers).await {
        return unauthorized();
    }
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.metrics.render(),
    )
        .into_response()
}

async fn status_json(axum::extract::State(state): AppState, headers: HeaderMap) -> Response {
    if !authorized(&state, &headers).await {
        return unauthorized();
    }
    let st = state.status.read().await.clone();
    axum::Json(st).into_response()
}

async fn webhook(
    axum::extract::State(state): AppState,
    Path(provider): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let Some(provider) = Provider::from_name(&provider) else {
        return (StatusCode::NOT_FOUND, "no such webhook\n").into_response();
    };
    let name = provider.name();
    let count = |outcome: &str| {
        state
            .metrics
            .webhook_requests
            .get_or_create(&labels(&[("provider", name), ("outcome", outcome)]))
            .inc();
    };
    let (configured, limit) = {
        let endpoint = state.endpoint.read().await;
        let configured = endpoint.webhook_secrets.iter().any(|(p, _)| *p == provider);
        (configured, endpoint.body_limit)
    };
    if !configured {
        count("not_configured");
        return (StatusCode::NOT_FOUND, "this webhook is not configured\n").into_response();
    }
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        count("too_large");
        return too_large();
    }
    // A slot before the body is read: webhooks in memory at once stay bounded.
    let Ok(Ok(_slot)) =
        tokio::time::timeout(state.webhook_wait, state.webhook_slots.acquire()).await
    else {
        count("busy");
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            [(header::RETRY_AFTER, "5")],
            "too many webhooks at once: retry\n",
        )
            .into_response();
    };
    let body = match read_body(body, limit).await {
        Ok(b) => b,
        Err((outcome, response)) => {
            count(outcome);
            return response;
        }
    };
    let endpoint = state.endpoint.read().await;
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
            return ignored(name, "not a push event");
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
        return ignored(name, "push for another repository or ref");
    }
    let revision = push
        .after
        .filter(|r| crate::runs::valid_revision(r))
        .map(|r| r.to_ascii_lowercase());
    let Some(run) = (state.wake)(RunRequest::Webhook {
        provider,
        revision: revision.clone(),
    }) else {
        count("busy");
        return stopping();
    };
    count("accepted");
    info!(provider = %name, reference = ?push.reference, %run, "webhook: run requested");
    (
        StatusCode::ACCEPTED,
        axum::Json(serde_json::json!({"run": run, "revision": revision})),
    )
        .into_response()
}

/// 202 `{"ignored": why}`, logged at info.
fn ignored(provider: &str, why: &str) -> Response {
    info!(provider, "webhook ignored: {why}");
    (
        StatusCode::ACCEPTED,
        axum::Json(serde_json::json!({ "ignored": why })),
    )
        .into_response()
}

/// 503 while the daemon stops.
pub(crate) fn stopping() -> Response {
    (
        StatusCode::SERVICE_UNAVAILABLE,
        [(header::RETRY_AFTER, "5")],
        "the daemon is stopping\n",
    )
        .into_response()
}

fn too_large() -> Response {
    (
        StatusCode::PAYLOAD_TOO_LARGE,
        "the body is larger than daemon.webhookBodyLimit\n",
    )
        .into_response()
}

/// The whole body, or 413 once it passes `limit` bytes (400 if the client broke off), with the
/// outcome to count.
pub(crate) async fn read_body(body: Body, limit: usize) -> Result<Bytes, (&'static str, Response)> {
    use futures::StreamExt;
    let mut stream = body.into_data_stream();
    let mut bytes = Vec::new();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|_| {
            let response =
                (StatusCode::BAD_REQUEST, "the body could not be read\n").into_response();
            ("invalid", response)
        })?;
        if bytes.len() + chunk.len() > limit {
            return Err(("too_large", too_large()));
        }
        bytes.extend_from_slice(&chunk);
    }
    Ok(Bytes::from(bytes))
}

fn status_code(code: u16) -> StatusCode {
    StatusCode::from_u16(code).unwrap_or(StatusCode::BAD_REQUEST)
}

#[cfg(test)]
mod tests;
