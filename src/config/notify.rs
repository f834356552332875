//! `notify:` in the host configuration: commit statuses on a forge and notification webhooks.
//! Tokens and signing secrets are file names in the credentials directory, never values.

use serde::Deserialize;

/// `notify:`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct NotifyConfig {
    /// Commit statuses for the revisions runs apply.
    #[serde(default)]
    pub commit_status: Option<CommitStatusConfig>,
    /// Endpoints that receive events (run failed, recovered, drift, jobs, stale backups).
    #[serde(default)]
    pub webhooks: Vec<WebhookTarget>,
    /// The daemon's endpoint as people reach it, for run links in notifications when there is
    /// no `commitStatus.linkBase` (which takes precedence).
    #[serde(default)]
    pub link_base: Option<String>,
}

/// The forge whose API takes the statuses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Provider {
    Github,
    Gitlab,
    Gitea,
}

impl Provider {
    pub fn name(self) -> &'static str {
        match self {
            Provider::Github => "github",
            Provider::Gitlab => "gitlab",
            Provider::Gitea => "gitea",
        }
    }
}

/// `notify.commitStatus`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct CommitStatusConfig {
    pub provider: Provider,
    /// The API base: `https://api.github.com`, `https://gitlab.example/api/v4`,
    /// `https://gitea.example/api/v1`.
    pub api_url: String,
    /// The repository on the forge: `owner/name` (GitLab: the project path, or its numeric id).
    pub repository: String,
    /// The API token: a plain name in the credentials directory.
    pub token_file: String,
    /// The daemon's endpoint as the forge's users reach it (`https://ops.example:9427`): each
    /// status links to `<linkBase>/runs/<id>`. Notifications link there too.
    #[serde(default)]
    pub link_base: Option<String>,
}

/// A body format of a notification webhook.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// driftless's event document, HMAC-SHA256 signed.
    #[default]
    Json,
    /// Slack's incoming-webhook shape (`{"text": …}`; Mattermost and Rocket.Chat take it too).
    Slack,
}

/// What a notification is about.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Deserialize, serde::Serialize,
)]
#[serde(rename_all = "camelCase")]
pub enum EventKind {
    RunFailed,
    RunRecovered,
    DriftDetected,
    DriftReverted,
    JobFailed,
    JobRecovered,
    BackupStale,
}

impl EventKind {
    pub const ALL: [EventKind; 7] = [
        EventKind::RunFailed,
        EventKind::RunRecovered,
        EventKind::DriftDetected,
        EventKind::DriftReverted,
        EventKind::JobFailed,
        EventKind::JobRecovered,
        EventKind::BackupStale,
    ];

    pub fn name(self) -> &'static str {
        match self {
            EventKind::RunFailed => "runFailed",
            EventKind::RunRecovered => "runRecovered",
            EventKind::DriftDetected => "driftDetected",
            EventKind::DriftReverted => "driftReverted",
            EventKind::JobFailed => "jobFailed",
            EventKind::JobRecovered => "jobRecovered",
            EventKind::BackupStale => "backupStale",
        }
    }
}

/// One entry of `notify.webhooks`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct WebhookTarget {
    /// Where to `POST` (http or https).
    pub url: String,
    /// The HMAC-SHA256 signing secret: a plain name in the credentials directory. Required for
    /// `json`; `slack` bodies are not signed (the URL is the credential there).
    #[serde(default)]
    pub secret_file: Option<String>,
    #[serde(default)]
    pub format: Format,
    /// The events sent (default: all).
    #[serde(default)]
    pub events: Option<Vec<EventKind>>,
}

impl WebhookTarget {
    /// Whether `kind` goes to this endpoint.
    pub fn wants(&self, kind: EventKind) -> bool {
        self.events.as_ref().is_none_or(|e| e.contains(&kind))
    }
}

impl NotifyConfig {
    /// Checks the settings; the message names the field.
    pub fn check(&self) -> Result<(), String> {
        if let Some(c) = &self.commit_status {
            // The token goes to this URL: https, or plain http to this host only.
            check_url("notify.commitStatus.apiUrl", &c.api_url, true)?;
            if let Some(l) = &c.link_base {
                check_url("notify.commitStatus.linkBase", l, false)?;
            }
            let parts: Vec<&str> = c.repository.split('/').collect();
            let numeric =
                c.repository.bytes().all(|b| b.is_ascii_digit()) && !c.repository.is_empty();
            let path_ok = parts.len() >= 2
                && parts.iter().all(|p| {
                    !p.is_empty()
                        && *p != "."
                        && *p != ".."
                        && p.bytes()
                            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
                });
            let shape_ok = match c.provider {
                Provider::Gitlab => path_ok || numeric,
                Provider::Github | Provider::Gitea => path_ok && parts.len() == 2,
            };
            if !shape_ok {
                return Err(format!(
                    "notify.commitStatus.repository {:?}: give owner/name (GitLab: the project path or its numeric id)",
                    c.repository
                ));
            }
            plain("notify.commitStatus.tokenFile", &c.token_file)?;
        }
        if let Some(l) = &self.link_base {
            check_url("notify.linkBase", l, false)?;
        }
        for (i, w) in self.webhooks.iter().enumerate() {
            check_url(&format!("notify.webhooks[{i}].url"), &w.url, false)?;
            match (&w.secret_file, w.format) {
                (Some(f), _) => plain(&format!("notify.webhooks[{i}].secretFile"), f)?,
                (None, Format::Json) => {
                    return Err(format!(
                        "notify.webhooks[{i}]: format json needs secretFile (bodies are signed)"
                    ));
                }
                (None, Format::Slack) => {}
            }
        }
        Ok(())
    }
}

fn plain(field: &str, file: &str) -> Result<(), String> {
    if crate::credentials::plain_name(file).is_none() {
        return Err(format!(
            "{field} {file:?} must be a plain file name in the credentials directory"
        ));
    }
    Ok(())
}

/// An http(s) URL without user information; with `secret`, plain http only to a loopback host.
fn check_url(field: &str, url: &str, secret: bool) -> Result<(), String> {
    let (scheme, rest) = url
        .split_once("://")
        .ok_or_else(|| format!("{field}: expected an http:// or https:// URL"))?;
    let authority = rest.split('/').next().unwrap_or_default();
    if authority.is_empty() || authority.contains('@') {
        return Err(format!(
            "{field}: give a host and no user information (credentials go in files)"
        ));
    }
    match scheme {
        "https" => Ok(()),
        "http" if !secret || is_loopback(authority) => Ok(()),
        "http" => Err(format!(
            "{field}: a token is never sent over plain http:// except to a loopback address; use https://"
        )),
        _ => Err(format!("{field}: expected an http:// or https:// URL")),
    }
}

/// Whether `authority` (`host[:port]`) names this host.
fn is_loopback(authority: &str) -> bool {
    let host = if let Some(rest) = authority.strip_prefix('[') {
        rest.split(']').next().unwrap_or_default()
    } else {
        authority.rsplit_once(':').map_or(authority, |(h, _)| h)
    };
    host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<NotifyConfig, String> {
        let c: NotifyConfig = crate::yaml::parse_one(std::path::Path::new("t.yaml"), text)
            .map_err(|e| e.to_string())?;
        c.check().map(|()| c)
    }

    #[test]
    fn settings_are_checked_with_the_field_named() {
        let ok = parse(
            "commitStatus: {provider: gitea, apiUrl: 'https://g/api/v1', repository: o/r, tokenFile: t, linkBase: 'http://ops:9427'}\n\
             webhooks:\n- {url: 'http://hooks.internal/x', secretFile: s, events: [runFailed, runRecovered]}\n- {url: 'https://chat/x', format: slack}\n",
        )
        .unwrap();
        assert!(ok.webhooks[0].wants(EventKind::RunFailed));
        assert!(!ok.webhooks[0].wants(EventKind::JobFailed));
        assert!(ok.webhooks[1].wants(EventKind::JobFailed));
        assert!(parse("commitStatus: {provider: gitlab, apiUrl: 'http://127.0.0.1:8/api/v4', repository: '42', tokenFile: t}\n").is_ok());
        assert!(parse("commitStatus: {provider: gitlab, apiUrl: 'http://[::1]:8/api/v4', repository: a/b/c, tokenFile: t}\n").is_ok());
        for (bad, field) in [
            (
                "commitStatus: {provider: github, apiUrl: 'http://api.example', repository: o/r, tokenFile: t}\n",
                "apiUrl",
            ),
            (
                "commitStatus: {provider: github, apiUrl: 'https://u:p@api.example', repository: o/r, tokenFile: t}\n",
                "apiUrl",
            ),
            (
                "commitStatus: {provider: github, apiUrl: 'https://a', repository: o, tokenFile: t}\n",
                "repository",
            ),
            (
                "commitStatus: {provider: github, apiUrl: 'https://a', repository: o/r/x, tokenFile: t}\n",
                "repository",
            ),
            (
                "commitStatus: {provider: gitea, apiUrl: 'https://a', repository: '../r', tokenFile: t}\n",
                "repository",
            ),
            (
                "commitStatus: {provider: github, apiUrl: 'https://a', repository: o/r, tokenFile: ../t}\n",
                "tokenFile",
            ),
            ("webhooks: [{url: 'ftp://x'}]\n", "webhooks[0].url"),
            ("linkBase: 'ops:9427'\n", "notify.linkBase"),
            ("webhooks: [{url: 'https://x'}]\n", "secretFile"),
            (
                "webhooks: [{url: 'https://x', secretFile: /etc/s}]\n",
                "secretFile",
            ),
        ] {
            let e = parse(bad).unwrap_err();
            assert!(e.contains(field), "{bad}: {e}");
        }
        assert!(
            parse("webhooks: [{url: 'https://x', secretFile: s, events: [sometimes]}]\n").is_err()
        );
    }
}
