//! What the daemon tells the outside about runs: commit statuses on the forge
//! (`notify.commitStatus`) and notification webhooks (`notify.webhooks`).
//!
//! `config` the settings; `status` (pure) which statuses a run sets and each forge's request;
//! `events` (pure) which events a run or a jobs change raises and their bodies; `deliver` the
//! background tasks and their bounded queues. [`Notifier`] ties them together: the daemon calls
//! it when a run starts applying a revision, when a run ends and when the jobs' status changes;
//! it decides (through the pure parts) and queues, and never waits on the network.

pub use crate::config::notify as config;
pub mod deliver;
pub mod events;
pub mod status;

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use secrecy::{ExposeSecret, SecretSlice, SecretString};

use crate::credentials::Credentials;
use crate::runs::{Run, RunState};
use crate::status::JobStatus;
use crate::status::metrics::Metrics;
use config::{Format, Provider, WebhookTarget};
use deliver::{Message, Retry, Sink};
use status::{CommitStatus, State};

/// Errors setting notifications up (at daemon start).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Credential(#[from] crate::credentials::Error),
    #[error("notify: HTTP client: {0}")]
    Client(#[source] reqwest::Error),
}

/// (commit, context) → the state and description last queued for it.
#[derive(Default)]
struct Sent {
    last: HashMap<(String, String), (State, String)>,
    order: VecDeque<(String, String)>,
}

/// Contexts remembered; the oldest are forgotten first (a forgotten one is sent again).
const SENT_MEMORY: usize = 4096;

impl Sent {
    fn get(&self, s: &CommitStatus) -> Option<&(State, String)> {
        self.last.get(&(s.sha.clone(), s.context.clone()))
    }

    fn put(&mut self, s: &CommitStatus) {
        let key = (s.sha.clone(), s.context.clone());
        if self
            .last
            .insert(key.clone(), (s.state, s.description.clone()))
            .is_none()
        {
            self.order.push_back(key);
        }
        while self.order.len() > SENT_MEMORY {
            if let Some(k) = self.order.pop_front() {
                self.last.remove(&k);
            }
        }
    }
}

struct StatusTarget {
    provider: Provider,
    api_url: String,
    repository: String,
    token: SecretString,
    sink: Sink,
}

struct WebhookSink {
    target: WebhookTarget,
    secret: Option<SecretSlice<u8>>,
    sink: Sink,
}

/// The daemon's notifier. Without `notify:` settings it does nothing.
pub struct Notifier {
    instance: String,
    link_base: Option<String>,
    status: Option<StatusTarget>,
    webhooks: Vec<WebhookSink>,
    sent: Mutex<Sent>,
    /// The last finished, not interrupted run: what the next run's events compare with.
    before: Mutex<Option<Run>>,
}

impl Notifier {
    /// A notifier that sends nothing.
    pub fn disabled(instance: &str) -> Notifier {
        Notifier {
            instance: instance.to_owned(),
            link_base: None,
            status: None,
            webhooks: Vec::new(),
            sent: Mutex::default(),
            before: Mutex::default(),
        }
    }

    /// Reads the tokens and secrets `settings` (`notify:` of instance `instance`) names through
    /// `credentials` and starts one delivery task per destination (needs a Tokio runtime).
    /// `history`: the persisted runs, newest first (the newest finished one is what the first
    /// run's events compare with).
    pub fn start(
        instance: &str,
        settings: &config::NotifyConfig,
        credentials: &Credentials,
        metrics: Arc<Metrics>,
        history: &[Run],
    ) -> Result<Notifier, Error> {
        let mut n = Notifier::disabled(instance);
        if settings.commit_status.is_none() && settings.webhooks.is_empty() {
            return Ok(n);
        }
        let client = deliver::client().map_err(Error::Client)?;
        n.link_base.clone_from(&settings.link_base);
        if let Some(c) = &settings.commit_status {
            if c.link_base.is_some() {
                n.link_base.clone_from(&c.link_base);
            }
            n.status = Some(StatusTarget {
                provider: c.provider,
                api_url: c.api_url.clone(),
                repository: c.repository.clone(),
                token: credentials.host_text("notify.commitStatus.tokenFile", &c.token_file)?,
                sink: Sink::spawn(
                    "commitStatus",
                    client.clone(),
                    metrics.clone(),
                    Retry::default(),
                ),
            });
        }
        for (i, w) in settings.webhooks.iter().enumerate() {
            let field = format!("notify.webhooks[{i}].secretFile");
            let secret = match &w.secret_file {
                Some(f) => Some(credentials.host_secret(&field, f)?),
                None => None,
            };
            n.webhooks.push(WebhookSink {
                target: w.clone(),
                secret,
                sink: Sink::spawn(
                    &format!("webhooks[{i}]"),
                    client.clone(),
                    metrics.clone(),
                    Retry::default(),
                ),
            });
        }
        *lock(&n.before) = history
            .iter()
            .find(|r| r.state.finished() && r.state != RunState::Interrupted)
            .cloned();
        Ok(n)
    }

    /// Run `run_id` is applying `sha` to `stacks`: `pending` on each stack's context (unless
    /// the commit is already green there).
    pub fn run_started(&self, run_id: &str, sha: &str, stacks: &[String]) {
        if self.status.is_none() {
            return;
        }
        let pending = status::pending(
            &self.instance,
            sha,
            stacks,
            run_id,
            self.link_base.as_deref(),
        );
        self.send_statuses(pending);
    }

    /// Run `run` ended: its final statuses and its events.
    pub fn run_finished(&self, run: &Run) {
        if self.status.is_some() {
            self.send_statuses(status::finished(
                &self.instance,
                run,
                self.link_base.as_deref(),
            ));
        }
        if !run.state.finished() || run.state == RunState::Interrupted {
            return;
        }
        let before = lock(&self.before).replace(run.without_diffs());
        if self.webhooks.is_empty() {
            return;
        }
        let events = events::run_events(
            &self.instance,
            before.as_ref(),
            run,
            self.link_base.as_deref(),
        );
        self.send_events(&events);
    }

    /// The jobs' status changed from `before` to `after`.
    pub fn jobs_changed(&self, before: &[JobStatus], after: &[JobStatus]) {
        if self.webhooks.is_empty() {
            return;
        }
        let events = events::job_events(&self.instance, before, after, chrono::Utc::now());
        self.send_events(&events);
    }

    fn send_statuses(&self, statuses: Vec<CommitStatus>) {
        let Some(target) = &self.status else {
            return;
        };
        let mut sent = lock(&self.sent);
        for s in statuses {
            if !status::needs_sending(&s, sent.get(&s)) {
                continue;
            }
            sent.put(&s);
            let request = status::request(target.provider, &target.api_url, &target.repository, &s);
            let (header, value) =
                status::auth_header(target.provider, target.token.expose_secret());
            target.sink.send(Message {
                url: request.url,
                body: serde_json::to_vec(&request.body).unwrap_or_default(),
                headers: request.headers,
                secret_header: Some((header, SecretString::from(value))),
                what: format!("status {} {:?} on {}", s.context, s.state, s.sha),
            });
        }
    }

    fn send_events(&self, events: &[events::Event]) {
        for e in events {
            for w in self.webhooks.iter().filter(|w| w.target.wants(e.event)) {
                let body = match w.target.format {
                    Format::Json => events::json_body(e),
                    Format::Slack => events::slack_body(e),
                };
                let mut headers = vec![
                    ("Content-Type", "application/json".to_owned()),
                    (events::EVENT_HEADER, e.event.name().to_owned()),
                ];
                if let Some(secret) = &w.secret {
                    headers.push((
                        events::SIGNATURE_HEADER,
                        events::signature(secret.expose_secret(), &body),
                    ));
                }
                w.sink.send(Message {
                    url: w.target.url.clone(),
                    body,
                    headers,
                    secret_header: None,
                    what: format!("event {}", e.event.name()),
                });
            }
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Plain data: a panic while it was held leaves it usable.
    m.lock().unwrap_or_else(|e| e.into_inner())
}
