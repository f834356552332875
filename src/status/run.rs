//! What a run is, as the status, run records and metrics name it: why it happens (`Trigger`,
//! a webhook's `Provider`) and how much of the cluster it looks at (`Mode`).

use serde::{Deserialize, Serialize};

/// Why a run happens; in the status as `start`, `poll`, `webhook <provider>`, `api` (`POST
/// /api/v1/sync`), `SIGHUP`, `config reload`, `file change`, `drift` or `retry`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(into = "String", try_from = "String")]
pub enum Trigger {
    Start,
    Poll,
    Webhook(Provider),
    /// `POST /api/v1/sync`: CI asked for a run.
    Api,
    Sighup,
    ConfigReload,
    FileChange,
    Drift,
    Retry,
    /// This daemon took the Lease of a stack (at start, or when its holder went).
    Lease,
}

impl Trigger {
    /// Polls and webhooks only look for a new revision: when none came and the cluster did not
    /// change, they may skip the cluster (quiet) or touch only what changed (incremental).
    pub fn is_routine(self) -> bool {
        matches!(self, Trigger::Poll | Trigger::Webhook(_))
    }

    /// Drift events and file changes come in bursts (a `kubectl delete` of many objects, an
    /// editor saving several files): they always wait for the burst to end.
    pub fn comes_in_bursts(self) -> bool {
        matches!(self, Trigger::Drift | Trigger::FileChange)
    }
}

impl std::fmt::Display for Trigger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Trigger::Start => f.write_str("start"),
            Trigger::Poll => f.write_str("poll"),
            Trigger::Webhook(p) => write!(f, "webhook {}", p.name()),
            Trigger::Api => f.write_str("api"),
            Trigger::Sighup => f.write_str("SIGHUP"),
            Trigger::ConfigReload => f.write_str("config reload"),
            Trigger::FileChange => f.write_str("file change"),
            Trigger::Drift => f.write_str("drift"),
            Trigger::Retry => f.write_str("retry"),
            Trigger::Lease => f.write_str("lease taken"),
        }
    }
}

impl From<Trigger> for String {
    fn from(t: Trigger) -> String {
        t.to_string()
    }
}

impl TryFrom<String> for Trigger {
    type Error = String;

    fn try_from(text: String) -> Result<Trigger, String> {
        Ok(match text.as_str() {
            "start" => Trigger::Start,
            "poll" => Trigger::Poll,
            "api" => Trigger::Api,
            "SIGHUP" => Trigger::Sighup,
            "config reload" => Trigger::ConfigReload,
            "file change" => Trigger::FileChange,
            "drift" => Trigger::Drift,
            "retry" => Trigger::Retry,
            "lease taken" => Trigger::Lease,
            other => match other.strip_prefix("webhook ").and_then(Provider::from_name) {
                Some(p) => Trigger::Webhook(p),
                None => return Err(format!("unknown trigger {other:?}")),
            },
        })
    }
}

/// Which webhook flavour a route serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Provider {
    /// GitHub and GitHub Enterprise: HMAC in `X-Hub-Signature-256`.
    Github,
    /// GitLab: shared token in `X-Gitlab-Token`.
    Gitlab,
    /// Gitea and Forgejo: HMAC in `X-Gitea-Signature` / `X-Forgejo-Signature`.
    Gitea,
    /// driftless's own format for CI jobs and scripts: HMAC in `X-Driftless-Signature`.
    Generic,
}

impl Provider {
    /// Every provider, in route order.
    pub const ALL: [Provider; 4] = [
        Provider::Github,
        Provider::Gitlab,
        Provider::Gitea,
        Provider::Generic,
    ];

    /// The lowercase name of its route (`/hooks/<name>`), metrics and triggers.
    pub fn name(self) -> &'static str {
        match self {
            Provider::Github => "github",
            Provider::Gitlab => "gitlab",
            Provider::Gitea => "gitea",
            Provider::Generic => "generic",
        }
    }

    /// The provider of a route name.
    pub fn from_name(name: &str) -> Option<Provider> {
        Provider::ALL.into_iter().find(|p| p.name() == name)
    }
}

impl std::fmt::Display for Provider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Provider::Github => "GitHub",
            Provider::Gitlab => "GitLab",
            Provider::Gitea => "Gitea",
            Provider::Generic => "generic",
        })
    }
}

/// How a run reconciles; serialized as `quiet`, `incremental` or `full`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// The revision of the last full reconcile, the watches quiet since: nothing is asked of
    /// the cluster but a liveness check.
    Quiet,
    /// A new revision with the same policies, the watches quiet since the last full reconcile:
    /// only the objects whose desired state changed are read, dry-run, checked and waited for.
    Incremental,
    /// Everything is observed and planned.
    #[default]
    Full,
}
