//! The HTTP side of `driftless trigger`: asks the daemon for a run (`POST /api/v1/sync`) and,
//! when told to wait, long-polls it (`GET /api/v1/runs/{id}?wait=`) until a run has applied the
//! wanted revision (or a descendant) with the wanted stacks healthy, one failed or was refused,
//! or the time is up. A run that ended before the revision reached the daemon's source is
//! followed by another request, at growing intervals.

use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use tokio::time::Instant;

use super::{Run, RunState, Verdict, verdict};

/// Errors of `driftless trigger` (the daemon's answers are named, never the token).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot reach the daemon at {url}: {message} (is `driftless run` running?)")]
    Unreachable { url: String, message: String },
    #[error("{url}: the daemon answered {code}: {body}")]
    Refused {
        url: String,
        code: u16,
        body: String,
    },
    #[error("{url}: unreadable answer: {message}")]
    Unreadable { url: String, message: String },
    #[error("timed out after {timeout}: still waiting for {what}")]
    Timeout { timeout: String, what: String },
}

/// What to ask for.
pub struct Request {
    /// `http://host:port`, without a trailing slash.
    pub base: String,
    pub token: SecretString,
    pub revision: Option<String>,
    pub stacks: Vec<String>,
    pub wait: bool,
    pub timeout: Duration,
}

/// How it ended (errors aside).
#[derive(Debug)]
pub enum Outcome {
    /// Triggered, not waited for.
    Triggered { run: String },
    /// The run applied the revision and the stacks are healthy.
    Done(Box<Run>),
    /// The run failed or was refused: why.
    Failed { run: String, reason: String },
}

#[derive(Deserialize)]
struct Accepted {
    run: String,
}

/// Longest single long-poll (the daemon's bound is higher).
const POLL: Duration = Duration::from_secs(60);
/// First and longest pause before asking again for a revision not fetched yet.
const RETRY_FIRST: Duration = Duration::from_secs(2);
const RETRY_MAX: Duration = Duration::from_secs(30);

/// Triggers a run and, with `wait`, follows it; `progress` receives one line per step.
pub async fn trigger(request: &Request, progress: &mut dyn FnMut(&str)) -> Result<Outcome, Error> {
    let client = reqwest::Client::new();
    let deadline = Instant::now() + request.timeout;
    let mut id = post_sync(&client, request).await?;
    progress(&format!(
        "run {id} requested{}",
        request
            .revision
            .as_deref()
            .map(|r| format!(" for revision {r}"))
            .unwrap_or_default()
    ));
    if !request.wait {
        return Ok(Outcome::Triggered { run: id });
    }
    let mut retry = RETRY_FIRST;
    let mut last_state: Option<RunState> = None;
    let mut what = format!("run {id} to finish");
    loop {
        let now = Instant::now();
        if now >= deadline {
            return Err(Error::Timeout {
                timeout: duration_text(request.timeout),
                what,
            });
        }
        let wait = (deadline - now).min(POLL);
        let run = get_run(&client, request, &id, wait).await?;
        if last_state != Some(run.state) {
            progress(&describe(&run));
            last_state = Some(run.state);
        }
        match verdict(&run, request.revision.as_deref(), &request.stacks) {
            Verdict::Done => return Ok(Outcome::Done(Box::new(run))),
            Verdict::Failed(reason) => return Ok(Outcome::Failed { run: id, reason }),
            Verdict::Waiting(w) => what = w,
        }
        if run.state.finished() {
            // The run is over and did not reach the revision: ask again a little later.
            let pause = retry.min(deadline.saturating_duration_since(Instant::now()));
            tokio::time::sleep(pause).await;
            retry = (retry * 2).min(RETRY_MAX);
            if Instant::now() >= deadline {
                continue;
            }
            id = post_sync(&client, request).await?;
            last_state = None;
            progress(&format!("run {id} requested ({what})"));
        }
    }
}

/// One line about a run's progress.
pub fn describe(run: &Run) -> String {
    let mut line = format!(
        "run {}: {}",
        run.id,
        serde_json::to_value(run.state)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default()
    );
    if let Some(r) = &run.revision {
        line.push_str(&format!(", revision {}", &r[..12.min(r.len())]));
    }
    for s in &run.stacks {
        let state = serde_json::to_value(s.state)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default();
        line.push_str(&format!(
            "; {} {state} ({} create, {} update, {} prune)",
            s.name, s.counts.create, s.counts.update, s.counts.prune
        ));
    }
    line
}

async fn post_sync(client: &reqwest::Client, request: &Request) -> Result<String, Error> {
    let url = format!("{}/api/v1/sync", request.base);
    let mut body = serde_json::Map::new();
    if let Some(r) = &request.revision {
        body.insert("revision".to_owned(), r.clone().into());
    }
    if !request.stacks.is_empty() {
        body.insert("stacks".to_owned(), request.stacks.clone().into());
    }
    let response = client
        .post(&url)
        .bearer_auth(request.token.expose_secret())
        .json(&body)
        .timeout(Duration::from_secs(15))
        .send()
        .await
        .map_err(|e| Error::Unreachable {
            url: url.clone(),
            message: e.to_string(),
        })?;
    let accepted: Accepted = read(&url, response).await?;
    Ok(accepted.run)
}

async fn get_run(
    client: &reqwest::Client,
    request: &Request,
    id: &str,
    wait: Duration,
) -> Result<Run, Error> {
    let url = format!(
        "{}/api/v1/runs/{id}?wait={}ms",
        request.base,
        wait.as_millis()
    );
    let response = client
        .get(&url)
        .bearer_auth(request.token.expose_secret())
        .timeout(wait + Duration::from_secs(15))
        .send()
        .await
        .map_err(|e| Error::Unreachable {
            url: url.clone(),
            message: e.to_string(),
        })?;
    read(&url, response).await
}

/// `GET /api/v1/status` of the daemon at `base` (`driftless status`), with the token when one
/// is configured.
pub async fn status(
    base: &str,
    token: Option<&SecretString>,
) -> Result<crate::status::Status, Error> {
    let url = format!("{base}/api/v1/status");
    let mut get = reqwest::Client::new()
        .get(&url)
        .timeout(Duration::from_secs(10));
    if let Some(token) = token {
        get = get.bearer_auth(token.expose_secret());
    }
    let response = get.send().await.map_err(|e| Error::Unreachable {
        url: url.clone(),
        message: e.to_string(),
    })?;
    read(&url, response).await
}

async fn read<T: serde::de::DeserializeOwned>(
    url: &str,
    response: reqwest::Response,
) -> Result<T, Error> {
    let code = response.status();
    let bytes = response.bytes().await.map_err(|e| Error::Unreadable {
        url: url.to_owned(),
        message: e.to_string(),
    })?;
    if !code.is_success() {
        let body = String::from_utf8_lossy(&bytes[..bytes.len().min(2048)])
            .trim()
            .to_owned();
        return Err(Error::Refused {
            url: url.to_owned(),
            code: code.as_u16(),
            body,
        });
    }
    serde_json::from_slice(&bytes).map_err(|e| Error::Unreadable {
        url: url.to_owned(),
        message: e.to_string(),
    })
}

/// `10m`, `90s`, `1500ms`.
fn duration_text(d: Duration) -> String {
    let ms = d.as_millis();
    if ms.is_multiple_of(60_000) {
        format!("{}m", ms / 60_000)
    } else if ms.is_multiple_of(1000) {
        format!("{}s", ms / 1000)
    } else {
        format!("{ms}ms")
    }
}
