//! Delivery: one background task per destination (the forge's status API, each notification
//! webhook), fed by a bounded queue. Sending never waits: a full queue drops the message and
//! counts it. A task retries network errors, `429` and `5xx` with exponential backoff (honouring
//! `Retry-After`), gives up on other answers, and works through its queue in order, so a slow or
//! dead endpoint delays only its own messages. Tokens and URLs never reach the log (a Slack URL
//! is itself a credential): the log names the destination by its configuration field.

use std::sync::Arc;
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use tokio::sync::mpsc;
use tracing::{debug, warn};

use crate::status::metrics::{Metrics, labels};

/// Messages waiting per destination; more are dropped (and counted).
pub const QUEUE: usize = 256;

/// How a destination retries.
#[derive(Debug, Clone, Copy)]
pub struct Retry {
    /// Attempts per message, the first included.
    pub attempts: u32,
    /// Wait before the second attempt; doubled each time up to `max_delay`.
    pub first_delay: Duration,
    pub max_delay: Duration,
}

impl Default for Retry {
    fn default() -> Self {
        Retry {
            attempts: 6,
            first_delay: Duration::from_secs(1),
            max_delay: Duration::from_secs(60),
        }
    }
}

/// One `POST`.
pub struct Message {
    pub url: String,
    pub body: Vec<u8>,
    pub headers: Vec<(&'static str, String)>,
    /// A header whose value is a credential (marked sensitive on the wire, never logged).
    pub secret_header: Option<(&'static str, SecretString)>,
    /// What it is, for the log (`status driftless/prod/web pending`, `event runFailed`).
    pub what: String,
}

/// The sending end of one destination's queue.
#[derive(Clone)]
pub struct Sink {
    tx: mpsc::Sender<Message>,
    /// The configuration field naming the destination (`commitStatus`, `webhooks[0]`).
    name: String,
    metrics: Arc<Metrics>,
}

impl Sink {
    /// Starts the destination's task (needs a Tokio runtime).
    pub fn spawn(name: &str, client: reqwest::Client, metrics: Arc<Metrics>, retry: Retry) -> Sink {
        let (tx, rx) = mpsc::channel(QUEUE);
        tokio::spawn(work(rx, client, name.to_owned(), metrics.clone(), retry));
        Sink {
            tx,
            name: name.to_owned(),
            metrics,
        }
    }

    /// Queues `message`; drops it (counted, logged) when the queue is full.
    pub fn send(&self, message: Message) {
        if let Err(e) = self.tx.try_send(message) {
            let what = match &e {
                mpsc::error::TrySendError::Full(m) | mpsc::error::TrySendError::Closed(m) => {
                    m.what.clone()
                }
            };
            warn!(destination = %self.name, "notify: queue full, dropped {what}");
            count(&self.metrics, &self.name, "dropped");
        }
    }
}

fn count(metrics: &Metrics, name: &str, outcome: &str) {
    metrics
        .notify_deliveries
        .get_or_create(&labels(&[("destination", name), ("outcome", outcome)]))
        .inc();
}

/// What one attempt came to.
enum Attempt {
    Delivered,
    /// Worth another try, after at least this long (from `Retry-After`).
    Retry(String, Option<Duration>),
    GiveUp(String),
}

async fn work(
    mut rx: mpsc::Receiver<Message>,
    client: reqwest::Client,
    name: String,
    metrics: Arc<Metrics>,
    retry: Retry,
) {
    while let Some(message) = rx.recv().await {
        let mut delay = retry.first_delay;
        let mut attempt = 1;
        loop {
            match once(&client, &message).await {
                Attempt::Delivered => {
                    debug!(destination = %name, "notify: delivered {}", message.what);
                    count(&metrics, &name, "delivered");
                    break;
                }
                Attempt::GiveUp(why) => {
                    warn!(destination = %name, "notify: {} refused: {why}", message.what);
                    count(&metrics, &name, "failed");
                    break;
                }
                Attempt::Retry(why, _) if attempt >= retry.attempts => {
                    warn!(
                        destination = %name,
                        "notify: {} not delivered after {attempt} attempts: {why}", message.what
                    );
                    count(&metrics, &name, "failed");
                    break;
                }
                Attempt::Retry(why, after) => {
                    debug!(destination = %name, "notify: {} attempt {attempt}: {why}", message.what);
                    count(&metrics, &name, "retried");
                    let wait = after
                        .map_or(delay, |a| a.min(retry.max_delay * 5))
                        .max(delay);
                    tokio::time::sleep(wait).await;
                    delay = (delay * 2).min(retry.max_delay);
                    attempt += 1;
                }
            }
        }
    }
}

async fn once(client: &reqwest::Client, message: &Message) -> Attempt {
    let mut request = client
        .post(&message.url)
        .header(
            "User-Agent",
            concat!("driftless/", env!("CARGO_PKG_VERSION")),
        )
        .body(message.body.clone());
    for (k, v) in &message.headers {
        request = request.header(*k, v);
    }
    if let Some((k, v)) = &message.secret_header {
        match reqwest::header::HeaderValue::from_str(v.expose_secret()) {
            Ok(mut value) => {
                value.set_sensitive(true);
                request = request.header(*k, value);
            }
            Err(_) => {
                return Attempt::GiveUp(format!("the {k} credential is not a valid header value"));
            }
        }
    }
    match request.send().await {
        Ok(answer) => {
            let status = answer.status();
            if status.is_success() {
                return Attempt::Delivered;
            }
            let after = answer
                .headers()
                .get(reqwest::header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<u64>().ok())
                .map(Duration::from_secs);
            let why = format!("answered {status}");
            if status.is_server_error() || status == reqwest::StatusCode::TOO_MANY_REQUESTS {
                Attempt::Retry(why, after)
            } else {
                Attempt::GiveUp(why)
            }
        }
        // Without the URL: a Slack webhook's URL is its credential.
        Err(e) => Attempt::Retry(e.without_url().to_string(), None),
    }
}

/// The HTTP client of every destination: a timeout per attempt, no redirects (a token never
/// follows one), the system's trusted roots.
pub fn client() -> Result<reqwest::Client, reqwest::Error> {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(15))
        .connect_timeout(Duration::from_secs(5))
        .redirect(reqwest::redirect::Policy::none())
        .build()
}
