//! Push webhooks that trigger a sync: authenticity checks and payload parsing, with no I/O.
//!
//! The route handler calls [`verify`] first, then [`parse_push`], then [`concerns`] against the
//! configured source. Each step is separate so the handler can answer 401, 400 or 202 precisely.
//!
//! Nothing here ever formats the secret or a credential the request carried: errors name the
//! header at fault and why, so they are safe to log and to return to the caller.

use std::fmt;

use axum::http::HeaderMap;
use hmac::{Hmac, KeyInit, Mac};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// GitHub's HMAC-SHA256 header, also sent by Gitea and Forgejo for compatibility.
const HUB_SIGNATURE: &str = "X-Hub-Signature-256";
const GITHUB_EVENT: &str = "X-GitHub-Event";
const GITEA_SIGNATURE: &str = "X-Gitea-Signature";
const FORGEJO_SIGNATURE: &str = "X-Forgejo-Signature";
const GITEA_EVENT: &str = "X-Gitea-Event";
const FORGEJO_EVENT: &str = "X-Forgejo-Event";
const GITLAB_TOKEN: &str = "X-Gitlab-Token";
const GITLAB_EVENT: &str = "X-Gitlab-Event";
const GENERIC_SIGNATURE: &str = "X-Driftless-Signature";

/// Prefix of the GitHub-style signature headers.
const SHA256_PREFIX: &str = "sha256=";

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

impl fmt::Display for Provider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Provider::Github => "GitHub",
            Provider::Gitlab => "GitLab",
            Provider::Gitea => "Gitea",
            Provider::Generic => "generic",
        })
    }
}

/// Why a webhook request was refused.
///
/// No variant holds the secret or the credential the request presented, so `Display` and `Debug`
/// are safe to log and to send back.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The signature or token header is absent.
    #[error("missing {header} header")]
    MissingCredential {
        /// The header (or the list of accepted headers) expected.
        header: &'static str,
    },
    /// The signature header is present but not of the documented form.
    #[error("{header} header is malformed: {reason}")]
    MalformedSignature {
        /// The header at fault.
        header: &'static str,
        /// What was wrong with it, never its value.
        reason: &'static str,
    },
    /// The HMAC of the body under the configured secret differs from the header's.
    #[error("{header} does not match the body: wrong secret, or the body was altered")]
    SignatureMismatch {
        /// The header at fault.
        header: &'static str,
    },
    /// GitLab's token differs from the configured secret.
    #[error("{GITLAB_TOKEN} does not match the configured secret")]
    TokenMismatch,
    /// The header naming the event is absent, so the body cannot be interpreted.
    #[error("missing {header} header: cannot tell which event this is")]
    MissingEvent {
        /// The header expected.
        header: &'static str,
    },
    /// The body is not a payload of the provider's documented form.
    #[error("request body is not a valid {provider} push payload: {message}")]
    InvalidBody {
        /// The flavour the route expected.
        provider: Provider,
        /// What was wrong.
        message: String,
    },
    /// The configured secret is empty; anyone could sign with it, so nothing is accepted.
    #[error("the webhook secret is empty: refusing to authenticate requests with it")]
    EmptySecret,
}

impl Error {
    /// The HTTP status to answer with.
    pub fn status(&self) -> u16 {
        match self {
            // A malformed credential is still a failed authentication, not a bad payload.
            Error::MissingCredential { .. }
            | Error::MalformedSignature { .. }
            | Error::SignatureMismatch { .. }
            | Error::TokenMismatch => 401,
            Error::MissingEvent { .. } | Error::InvalidBody { .. } => 400,
            // The request may be fine; the daemon's configuration is not.
            Error::EmptySecret => 500,
        }
    }
}

/// Checks the request's authenticity in constant time.
///
/// GitHub, Gitea and generic routes check an HMAC-SHA256 of the raw body; GitLab compares its
/// shared token. Call this on the exact bytes received, before any parsing.
pub fn verify(
    provider: Provider,
    headers: &HeaderMap,
    body: &[u8],
    secret: &SecretString,
) -> Result<(), Error> {
    let secret = secret.expose_secret().as_bytes();
    if secret.is_empty() {
        return Err(Error::EmptySecret);
    }
    match provider {
        Provider::Github => verify_hmac(headers, HUB_SIGNATURE, true, body, secret),
        Provider::Generic => verify_hmac(headers, GENERIC_SIGNATURE, true, body, secret),
        Provider::Gitea => {
            // Forgejo sends its own header besides Gitea's, and both send GitHub's; any one
            // proves the same thing, so the first present decides.
            let candidates = [
                (FORGEJO_SIGNATURE, false),
                (GITEA_SIGNATURE, false),
                (HUB_SIGNATURE, true),
            ];
            match candidates
                .into_iter()
                .find(|(name, _)| headers.contains_key(*name))
            {
                Some((name, prefixed)) => verify_hmac(headers, name, prefixed, body, secret),
                None => Err(Error::MissingCredential {
                    header: "X-Gitea-Signature (or X-Forgejo-Signature, X-Hub-Signature-256)",
                }),
            }
        }
        Provider::Gitlab => {
            let token = headers.get(GITLAB_TOKEN).ok_or(Error::MissingCredential {
                header: GITLAB_TOKEN,
            })?;
            if constant_time_eq(token.as_bytes(), secret) {
                Ok(())
            } else {
                Err(Error::TokenMismatch)
            }
        }
    }
}

/// Checks `header` holds the HMAC-SHA256 of `body`, as hex, after `sha256=` when `prefixed`.
fn verify_hmac(
    headers: &HeaderMap,
    header: &'static str,
    prefixed: bool,
    body: &[u8],
    secret: &[u8],
) -> Result<(), Error> {
    let value = headers
        .get(header)
        .ok_or(Error::MissingCredential { header })?;
    let malformed = |reason| Error::MalformedSignature { header, reason };
    let value = value
        .to_str()
        .map_err(|_| malformed("not visible ASCII"))?
        .trim();
    let hex = if prefixed {
        value
            .strip_prefix(SHA256_PREFIX)
            .ok_or_else(|| malformed("expected sha256=<64 hex digits>"))?
    } else {
        value
    };
    let tag = decode_hex(hex).ok_or_else(|| malformed("expected 64 hex digits"))?;
    if tag.len() != 32 {
        return Err(malformed("expected 64 hex digits"));
    }
    // HMAC takes keys of any length, so this cannot fail; no panic path is kept for it anyway.
    let mac = HmacSha256::new_from_slice(secret).map_err(|_| Error::EmptySecret)?;
    mac.chain_update(body)
        .verify_slice(&tag)
        .map_err(|_| Error::SignatureMismatch { header })
}

/// Compares two byte strings without a data-dependent early exit.
///
/// Both sides go through an HMAC under a fixed key and the digests are compared with
/// `verify_slice`, which is constant-time: a hand-rolled loop risks the optimiser reintroducing
/// a short-circuit, and equal-length digests mean a length mismatch costs no separate branch.
fn constant_time_eq(provided: &[u8], expected: &[u8]) -> bool {
    // The key needs no secrecy: it only makes both inputs fixed-length before comparing.
    const KEY: &[u8] = b"driftless webhook token comparison";
    let digest = |bytes: &[u8]| HmacSha256::new_from_slice(KEY).map(|m| m.chain_update(bytes));
    match (digest(provided), digest(expected)) {
        (Ok(provided), Ok(expected)) => provided
            .verify_slice(&expected.finalize().into_bytes())
            .is_ok(),
        _ => false,
    }
}

/// Decodes hex of either case; `None` on an odd length or a non-hex digit.
fn decode_hex(hex: &str) -> Option<Vec<u8>> {
    let bytes = hex.as_bytes();
    if !bytes.len().is_multiple_of(2) {
        return None;
    }
    let nibble = |c: u8| (c as char).to_digit(16);
    bytes
        .chunks_exact(2)
        .map(|pair| Some((nibble(pair[0])? * 16 + nibble(pair[1])?) as u8))
        .collect()
}

/// What a push said.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Push {
    /// Every URL the payload gives for the repository (HTTPS, SSH, web); empty when a generic
    /// hook named none, meaning "whatever is configured".
    pub repository_urls: Vec<String>,
    /// The full ref pushed, e.g. `refs/heads/main` or `refs/tags/v1.2`; `None` matches any.
    pub reference: Option<String>,
    /// The sha the ref now points at; `None` when unknown or when the ref was deleted.
    pub after: Option<String>,
}

/// Parses a push; `Ok(None)` for events that are valid but not pushes (GitHub ping, GitLab
/// non-push hooks), which the caller answers 202 and ignores.
///
/// Call it only after [`verify`]: the body is trusted to be the provider's.
pub fn parse_push(
    provider: Provider,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<Option<Push>, Error> {
    match provider {
        Provider::Github => {
            if event(provider, headers, &[GITHUB_EVENT])? != "push" {
                return Ok(None);
            }
            let push: HubPush = parse_json(provider, body)?;
            push.into_push(provider).map(Some)
        }
        Provider::Gitea => {
            if event(provider, headers, &[FORGEJO_EVENT, GITEA_EVENT])? != "push" {
                return Ok(None);
            }
            let push: HubPush = parse_json(provider, body)?;
            push.into_push(provider).map(Some)
        }
        Provider::Gitlab => parse_gitlab(headers, body),
        Provider::Generic => parse_generic(body).map(Some),
    }
}

/// The event name from the first of `names` present; the last name is the one errors cite.
fn event<'h>(
    provider: Provider,
    headers: &'h HeaderMap,
    names: &[&'static str],
) -> Result<&'h str, Error> {
    let value = names
        .iter()
        .find_map(|name| headers.get(*name))
        .ok_or(Error::MissingEvent {
            header: names.last().copied().unwrap_or_default(),
        })?;
    value
        .to_str()
        .map(str::trim)
        .map_err(|_| Error::InvalidBody {
            provider,
            message: "the event header is not visible ASCII".to_owned(),
        })
}

fn parse_json<T: for<'de> Deserialize<'de>>(provider: Provider, body: &[u8]) -> Result<T, Error> {
    serde_json::from_slice(body).map_err(|e| {
        // GitHub and Gitea can be told to send `payload=<urlencoded json>`; the signature would
        // match, so say what to change instead of reporting a JSON syntax error.
        let message = if body.starts_with(b"payload=") {
            "the body is form-encoded: set the webhook's content type to application/json"
                .to_owned()
        } else {
            e.to_string()
        };
        Error::InvalidBody { provider, message }
    })
}

/// A push as GitHub and Gitea/Forgejo send it; the two share the fields read here.
#[derive(Deserialize)]
struct HubPush {
    #[serde(rename = "ref")]
    reference: String,
    after: Option<String>,
    repository: HubRepository,
}

#[derive(Deserialize)]
struct HubRepository {
    clone_url: Option<String>,
    ssh_url: Option<String>,
    html_url: Option<String>,
    /// GitHub only: `git://host/org/repo.git`.
    git_url: Option<String>,
}

impl HubPush {
    fn into_push(self, provider: Provider) -> Result<Push, Error> {
        let r = self.repository;
        let urls = collect_urls([r.clone_url, r.ssh_url, r.html_url, r.git_url]);
        finish(provider, urls, self.reference, self.after)
    }
}

/// A push or tag push as GitLab sends it (project and system hooks alike).
#[derive(Deserialize)]
struct LabPush {
    #[serde(rename = "ref")]
    reference: String,
    after: Option<String>,
    project: Option<LabProject>,
    repository: Option<LabRepository>,
}

#[derive(Deserialize)]
struct LabProject {
    git_http_url: Option<String>,
    git_ssh_url: Option<String>,
    web_url: Option<String>,
    /// Deprecated aliases GitLab still sends.
    http_url: Option<String>,
    ssh_url: Option<String>,
}

#[derive(Deserialize)]
struct LabRepository {
    /// The SSH URL, despite the name.
    url: Option<String>,
    git_http_url: Option<String>,
    git_ssh_url: Option<String>,
    homepage: Option<String>,
}

/// Just enough of a GitLab system hook to tell pushes from the many other system events.
#[derive(Deserialize)]
struct LabSystemEvent {
    event_name: Option<String>,
}

fn parse_gitlab(headers: &HeaderMap, body: &[u8]) -> Result<Option<Push>, Error> {
    let provider = Provider::Gitlab;
    match event(provider, headers, &[GITLAB_EVENT])? {
        "Push Hook" | "Tag Push Hook" => {}
        // Instance-wide system hooks share one event name; the body says what happened.
        "System Hook" => {
            let system: LabSystemEvent = parse_json(provider, body)?;
            if !matches!(system.event_name.as_deref(), Some("push" | "tag_push")) {
                return Ok(None);
            }
        }
        _ => return Ok(None),
    }
    let push: LabPush = parse_json(provider, body)?;
    let mut urls = Vec::new();
    if let Some(p) = push.project {
        urls.extend([
            p.git_http_url,
            p.git_ssh_url,
            p.web_url,
            p.http_url,
            p.ssh_url,
        ]);
    }
    if let Some(r) = push.repository {
        urls.extend([r.git_http_url, r.git_ssh_url, r.url, r.homepage]);
    }
    finish(provider, collect_urls(urls), push.reference, push.after).map(Some)
}

/// driftless's own payload; every field optional so `curl -d ''` means "sync what is configured".
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct GenericPush {
    repository: Option<String>,
    #[serde(rename = "ref")]
    reference: Option<String>,
    after: Option<String>,
}

fn parse_generic(body: &[u8]) -> Result<Push, Error> {
    let provider = Provider::Generic;
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(Push::default());
    }
    // Unknown fields are refused because a typo such as `"branch"` would otherwise silently
    // widen the hook to "any ref".
    let push: GenericPush = parse_json(provider, body)?;
    let reference = non_empty(push.reference);
    if let Some(r) = &reference
        && !r.starts_with("refs/")
    {
        // A bare name could be a branch or a tag; guessing could sync on the wrong one.
        return Err(Error::InvalidBody {
            provider,
            message: "\"ref\" must be a full ref such as refs/heads/main or refs/tags/v1.2"
                .to_owned(),
        });
    }
    Ok(Push {
        repository_urls: collect_urls([push.repository]),
        reference,
        after: after_sha(push.after),
    })
}

/// Builds the push of a provider payload, which always names its repository.
fn finish(
    provider: Provider,
    repository_urls: Vec<String>,
    reference: String,
    after: Option<String>,
) -> Result<Push, Error> {
    if repository_urls.is_empty() {
        // An empty list would match every configured repository; a real payload always has one.
        return Err(Error::InvalidBody {
            provider,
            message: "no repository URL in the payload".to_owned(),
        });
    }
    let Some(reference) = non_empty(Some(reference)) else {
        return Err(Error::InvalidBody {
            provider,
            message: "empty \"ref\"".to_owned(),
        });
    };
    Ok(Push {
        repository_urls,
        reference: Some(reference),
        after: after_sha(after),
    })
}

fn collect_urls(urls: impl IntoIterator<Item = Option<String>>) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for url in urls.into_iter().filter_map(non_empty) {
        if !out.contains(&url) {
            out.push(url);
        }
    }
    out
}

fn non_empty(s: Option<String>) -> Option<String> {
    s.map(|s| s.trim().to_owned()).filter(|s| !s.is_empty())
}

/// The all-zero sha is how providers say the ref was deleted; it names no commit to sync to.
fn after_sha(after: Option<String>) -> Option<String> {
    non_empty(after).filter(|s| !s.bytes().all(|b| b == b'0'))
}

/// What the configured source follows, as [`concerns`] needs it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FollowedRef<'a> {
    /// A branch name, e.g. `main`.
    Branch(&'a str),
    /// A tag name, e.g. `v1.2`.
    Tag(&'a str),
    /// A pinned commit, which no push moves.
    Commit,
}

/// Whether a push concerns the configured repository and ref.
///
/// URLs match across forms (`https://host/org/repo(.git)`, `ssh://git@host(:port)/org/repo.git`,
/// `git@host:org/repo.git`), ignoring case, ports, credentials, and a trailing slash or `.git`.
/// Matching errs towards yes, since a needless sync costs little and a missed one leaves the
/// cluster behind. A push naming no repository or no ref matches any; a pinned commit never does.
pub fn concerns(push: &Push, configured_url: &str, followed: FollowedRef<'_>) -> bool {
    let wanted = match followed {
        FollowedRef::Branch(b) => format!("refs/heads/{b}"),
        FollowedRef::Tag(t) => format!("refs/tags/{t}"),
        FollowedRef::Commit => return false,
    };
    if push.reference.as_deref().is_some_and(|r| r != wanted) {
        return false;
    }
    if push.repository_urls.is_empty() {
        return true;
    }
    let configured = normalize_repo_url(configured_url);
    push.repository_urls
        .iter()
        .any(|url| match (&configured, normalize_repo_url(url)) {
            // Forges treat owner and repository names case-insensitively, and the payload
            // carries the canonical casing, which the configuration may not.
            (Some(configured), Some(pushed)) => configured.eq_ignore_ascii_case(&pushed),
            // Neither is a URL (e.g. a local path): only the same spelling can match.
            _ => url.trim() == configured_url.trim(),
        })
}

/// Normalises a Git remote URL to `host/org/repo`, with the host lowercased and any scheme,
/// credentials, port, query, trailing slash or `.git` removed; `None` if it names no host or
/// no path (e.g. a local path).
pub fn normalize_repo_url(url: &str) -> Option<String> {
    let url = url.trim();
    let (authority, path) = match url.split_once("://") {
        Some((scheme, rest)) => {
            let valid_scheme = !scheme.is_empty()
                && scheme
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'-' | b'.'));
            if !valid_scheme {
                return None;
            }
            let rest = rest.split(['?', '#']).next().unwrap_or_default();
            rest.split_once('/').unwrap_or((rest, ""))
        }
        // scp-like `[user@]host:path`, which git recognises by a colon before any slash.
        None => {
            let (authority, path) = url.split_once(':')?;
            if authority.contains('/') {
                return None;
            }
            (authority, path)
        }
    };
    let host_port = authority
        .rsplit_once('@')
        .map_or(authority, |(_, host)| host);
    let host = match host_port.strip_prefix('[') {
        Some(bracketed) => bracketed.split_once(']')?.0,
        None => host_port.split(':').next().unwrap_or_default(),
    };
    if host.is_empty() {
        return None;
    }
    let mut segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    let last = segments.pop()?;
    let last = last.strip_suffix(".git").unwrap_or(last);
    if last.is_empty() {
        return None;
    }
    segments.push(last);
    Some(format!(
        "{}/{}",
        host.to_ascii_lowercase(),
        segments.join("/")
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::apply::hex;
    use axum::http::{HeaderName, HeaderValue};

    const SECRET: &str = "s3cret-sentinel-7f3a";

    fn secret() -> SecretString {
        SecretString::from(SECRET)
    }

    fn sign(body: &[u8], key: &str) -> String {
        let mac = HmacSha256::new_from_slice(key.as_bytes())
            .unwrap()
            .chain_update(body);
        hex(&mac.finalize().into_bytes())
    }

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(
                HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_str(value).unwrap(),
            );
        }
        map
    }

    const GITHUB_PUSH: &str = r#"{
        "ref": "refs/heads/main",
        "before": "6113728f27ae82c7b1a177c8d03f9e96e0adf246",
        "after": "0d1a26e67d8f5eaf1f6ba5c57fc3c7d91ac0fd1c",
        "created": false,
        "deleted": false,
        "forced": false,
        "repository": {
            "id": 186853002,
            "name": "stacks",
            "full_name": "Acme/stacks",
            "html_url": "https://github.com/Acme/stacks",
            "url": "https://github.com/Acme/stacks",
            "git_url": "git://github.com/Acme/stacks.git",
            "ssh_url": "git@github.com:Acme/stacks.git",
            "clone_url": "https://github.com/Acme/stacks.git",
            "default_branch": "main"
        },
        "pusher": {"name": "octocat", "email": "octocat@github.com"},
        "commits": []
    }"#;

    const GITHUB_PING: &str = r#"{"zen": "Keep it logically awesome.", "hook_id": 1,
        "hook": {"type": "Repository", "events": ["push"]}}"#;

    const GITEA_PUSH: &str = r#"{
        "ref": "refs/heads/main",
        "before": "28e1879d029cb852e4844d9c718537df08844e03",
        "after": "bffeb74224043ba2feb48d137756c8a9331c449a",
        "compare_url": "https://git.example.com/ops/stacks/compare/28e1879...bffeb74",
        "commits": [],
        "repository": {
            "id": 140,
            "name": "stacks",
            "full_name": "ops/stacks",
            "html_url": "https://git.example.com/ops/stacks",
            "ssh_url": "ssh://git@git.example.com:2222/ops/stacks.git",
            "clone_url": "https://git.example.com/ops/stacks.git",
            "default_branch": "main"
        },
        "pusher": {"login": "gitea"},
        "sender": {"login": "gitea"}
    }"#;

    const GITLAB_PUSH: &str = r#"{
        "object_kind": "push",
        "event_name": "push",
        "before": "95790bf891e76fee5e1747ab589903a6a1f80f22",
        "after": "da1560886d4f094c3e6c9ef40349f7d38b5d27d7",
        "ref": "refs/heads/main",
        "checkout_sha": "da1560886d4f094c3e6c9ef40349f7d38b5d27d7",
        "project_id": 15,
        "project": {
            "id": 15,
            "name": "Stacks",
            "web_url": "https://gitlab.example.com/infra/platform/stacks",
            "git_ssh_url": "git@gitlab.example.com:infra/platform/stacks.git",
            "git_http_url": "https://gitlab.example.com/infra/platform/stacks.git",
            "namespace": "Platform",
            "path_with_namespace": "infra/platform/stacks",
            "default_branch": "main",
            "homepage": "https://gitlab.example.com/infra/platform/stacks",
            "url": "git@gitlab.example.com:infra/platform/stacks.git",
            "ssh_url": "git@gitlab.example.com:infra/platform/stacks.git",
            "http_url": "https://gitlab.example.com/infra/platform/stacks.git"
        },
        "repository": {
            "name": "Stacks",
            "url": "git@gitlab.example.com:infra/platform/stacks.git",
            "homepage": "https://gitlab.example.com/infra/platform/stacks",
            "git_http_url": "https://gitlab.example.com/infra/platform/stacks.git",
            "git_ssh_url": "git@gitlab.example.com:infra/platform/stacks.git"
        },
        "commits": [],
        "total_commits_count": 0
    }"#;

    // --- verify: GitHub ---

    #[test]
    fn github_valid_signature() {
        let body = GITHUB_PUSH.as_bytes();
        let sig = format!("sha256={}", sign(body, SECRET));
        let h = headers(&[("X-Hub-Signature-256", &sig)]);
        verify(Provider::Github, &h, body, &secret()).unwrap();
    }

    #[test]
    fn github_uppercase_hex_is_accepted() {
        let body = b"{}";
        let sig = format!("sha256={}", sign(body, SECRET).to_ascii_uppercase());
        let h = headers(&[("x-hub-signature-256", &sig)]);
        verify(Provider::Github, &h, body, &secret()).unwrap();
    }

    #[test]
    fn github_wrong_secret_is_a_mismatch() {
        let body = b"{}";
        let sig = format!("sha256={}", sign(body, "another-secret"));
        let h = headers(&[("X-Hub-Signature-256", &sig)]);
        let err = verify(Provider::Github, &h, body, &secret()).unwrap_err();
        assert!(matches!(err, Error::SignatureMismatch { .. }), "{err:?}");
        assert_eq!(err.status(), 401);
    }

    #[test]
    fn github_signature_of_another_body_is_a_mismatch() {
        let sig = format!("sha256={}", sign(b"{\"ref\":\"refs/heads/dev\"}", SECRET));
        let h = headers(&[("X-Hub-Signature-256", &sig)]);
        let err = verify(
            Provider::Github,
            &h,
            b"{\"ref\":\"refs/heads/main\"}",
            &secret(),
        )
        .unwrap_err();
        assert!(matches!(err, Error::SignatureMismatch { .. }), "{err:?}");
    }

    #[test]
    fn github_missing_signature() {
        // The legacy SHA-1 header alone is not enough.
        let h = headers(&[("X-Hub-Signature", "sha1=0000"), ("X-GitHub-Event", "push")]);
        let err = verify(Provider::Github, &h, b"{}", &secret()).unwrap_err();
        assert!(
            matches!(
                err,
                Error::MissingCredential {
                    header: "X-Hub-Signature-256"
                }
            ),
            "{err:?}"
        );
        assert_eq!(err.status(), 401);
    }

    #[test]
    fn github_wrong_prefix_is_malformed() {
        let body = b"{}";
        for sig in [
            format!("sha1={}", sign(body, SECRET)),
            sign(body, SECRET),
            format!("SHA256={}", sign(body, SECRET)),
        ] {
            let h = headers(&[("X-Hub-Signature-256", &sig)]);
            let err = verify(Provider::Github, &h, body, &secret()).unwrap_err();
            assert!(matches!(err, Error::MalformedSignature { .. }), "{err:?}");
            assert_eq!(err.status(), 401);
        }
    }

    #[test]
    fn github_non_hex_or_short_signature_is_malformed() {
        let body = b"{}";
        let good = sign(body, SECRET);
        for sig in [
            format!("sha256={}", "z".repeat(64)),
            format!("sha256={}", &good[..62]),
            format!("sha256={}", &good[..63]),
            format!("sha256={good}00"),
            "sha256=".to_owned(),
        ] {
            let h = headers(&[("X-Hub-Signature-256", &sig)]);
            let err = verify(Provider::Github, &h, body, &secret()).unwrap_err();
            assert!(
                matches!(err, Error::MalformedSignature { .. }),
                "{sig}: {err:?}"
            );
        }
    }

    #[test]
    fn empty_secret_is_refused() {
        let body = b"{}";
        let sig = format!("sha256={}", sign(body, ""));
        let h = headers(&[("X-Hub-Signature-256", &sig), ("X-Gitlab-Token", "")]);
        for provider in [Provider::Github, Provider::Gitlab] {
            let err = verify(provider, &h, body, &SecretString::from("")).unwrap_err();
            assert!(matches!(err, Error::EmptySecret), "{err:?}");
            assert_eq!(err.status(), 500);
        }
    }

    // --- verify: Gitea / Forgejo ---

    #[test]
    fn gitea_accepts_each_of_its_headers() {
        let body = GITEA_PUSH.as_bytes();
        let hex = sign(body, SECRET);
        let prefixed = format!("sha256={hex}");
        for h in [
            headers(&[("X-Gitea-Signature", &hex)]),
            headers(&[("X-Forgejo-Signature", &hex)]),
            headers(&[("X-Hub-Signature-256", &prefixed)]),
            headers(&[
                ("X-Gitea-Signature", &hex),
                ("X-Hub-Signature-256", &prefixed),
            ]),
        ] {
            verify(Provider::Gitea, &h, body, &secret()).unwrap();
        }
    }

    #[test]
    fn gitea_invalid_signature() {
        let body = GITEA_PUSH.as_bytes();
        let h = headers(&[("X-Gitea-Signature", &sign(body, "wrong"))]);
        let err = verify(Provider::Gitea, &h, body, &secret()).unwrap_err();
        assert!(
            matches!(
                err,
                Error::SignatureMismatch {
                    header: "X-Gitea-Signature"
                }
            ),
            "{err:?}"
        );
    }

    #[test]
    fn gitea_signature_has_no_prefix() {
        let body = b"{}";
        let h = headers(&[(
            "X-Gitea-Signature",
            &format!("sha256={}", sign(body, SECRET)),
        )]);
        let err = verify(Provider::Gitea, &h, body, &secret()).unwrap_err();
        assert!(matches!(err, Error::MalformedSignature { .. }), "{err:?}");
    }

    #[test]
    fn gitea_missing_signature() {
        let h = headers(&[("X-Gitea-Event", "push")]);
        let err = verify(Provider::Gitea, &h, b"{}", &secret()).unwrap_err();
        assert!(matches!(err, Error::MissingCredential { .. }), "{err:?}");
        assert_eq!(err.status(), 401);
    }

    // --- verify: GitLab ---

    #[test]
    fn gitlab_valid_token() {
        let h = headers(&[("X-Gitlab-Token", SECRET)]);
        verify(Provider::Gitlab, &h, GITLAB_PUSH.as_bytes(), &secret()).unwrap();
    }

    #[test]
    fn gitlab_wrong_token() {
        for token in [
            "s3cret-sentinel-7f3b",
            "s3cret-sentinel-7f3",
            "s3cret-sentinel-7f3aa",
            "",
        ] {
            let h = headers(&[("X-Gitlab-Token", token)]);
            let err = verify(Provider::Gitlab, &h, b"{}", &secret()).unwrap_err();
            assert!(matches!(err, Error::TokenMismatch), "{token}: {err:?}");
            assert_eq!(err.status(), 401);
        }
    }

    #[test]
    fn gitlab_missing_token() {
        // A GitHub-style signature does not stand in for the token.
        let sig = format!("sha256={}", sign(b"{}", SECRET));
        let h = headers(&[("X-Hub-Signature-256", &sig)]);
        let err = verify(Provider::Gitlab, &h, b"{}", &secret()).unwrap_err();
        assert!(
            matches!(
                err,
                Error::MissingCredential {
                    header: "X-Gitlab-Token"
                }
            ),
            "{err:?}"
        );
    }

    #[test]
    fn constant_time_eq_compares_contents_and_lengths() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(constant_time_eq(b"", b""));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"abcd"));
        assert!(!constant_time_eq(b"abc", b""));
    }

    // --- verify: generic ---

    #[test]
    fn generic_signature() {
        let body = br#"{"ref":"refs/heads/main"}"#;
        let good = format!("sha256={}", sign(body, SECRET));
        verify(
            Provider::Generic,
            &headers(&[("X-Driftless-Signature", &good)]),
            body,
            &secret(),
        )
        .unwrap();

        let bad = format!("sha256={}", sign(body, "nope"));
        let err = verify(
            Provider::Generic,
            &headers(&[("X-Driftless-Signature", &bad)]),
            body,
            &secret(),
        )
        .unwrap_err();
        assert!(matches!(err, Error::SignatureMismatch { .. }), "{err:?}");

        let err = verify(Provider::Generic, &HeaderMap::new(), body, &secret()).unwrap_err();
        assert!(
            matches!(
                err,
                Error::MissingCredential {
                    header: "X-Driftless-Signature"
                }
            ),
            "{err:?}"
        );

        let unprefixed = sign(body, SECRET);
        let err = verify(
            Provider::Generic,
            &headers(&[("X-Driftless-Signature", &unprefixed)]),
            body,
            &secret(),
        )
        .unwrap_err();
        assert!(matches!(err, Error::MalformedSignature { .. }), "{err:?}");
    }

    #[test]
    fn generic_empty_body_is_signed_too() {
        let good = format!("sha256={}", sign(b"", SECRET));
        let h = headers(&[("X-Driftless-Signature", &good)]);
        verify(Provider::Generic, &h, b"", &secret()).unwrap();
    }

    // --- parse_push ---

    #[test]
    fn github_ping_is_ignored() {
        let h = headers(&[("X-GitHub-Event", "ping")]);
        assert_eq!(
            parse_push(Provider::Github, &h, GITHUB_PING.as_bytes()).unwrap(),
            None
        );
        let h = headers(&[("X-GitHub-Event", "issues")]);
        assert_eq!(
            parse_push(Provider::Github, &h, b"{\"action\":\"opened\"}").unwrap(),
            None
        );
    }

    #[test]
    fn github_missing_event_header() {
        let err =
            parse_push(Provider::Github, &HeaderMap::new(), GITHUB_PUSH.as_bytes()).unwrap_err();
        assert!(
            matches!(
                err,
                Error::MissingEvent {
                    header: "X-GitHub-Event"
                }
            ),
            "{err:?}"
        );
        assert_eq!(err.status(), 400);
    }

    #[test]
    fn github_push_parses() {
        let h = headers(&[("X-GitHub-Event", "push")]);
        let push = parse_push(Provider::Github, &h, GITHUB_PUSH.as_bytes())
            .unwrap()
            .unwrap();
        assert_eq!(
            push,
            Push {
                repository_urls: vec![
                    "https://github.com/Acme/stacks.git".to_owned(),
                    "git@github.com:Acme/stacks.git".to_owned(),
                    "https://github.com/Acme/stacks".to_owned(),
                    "git://github.com/Acme/stacks.git".to_owned(),
                ],
                reference: Some("refs/heads/main".to_owned()),
                after: Some("0d1a26e67d8f5eaf1f6ba5c57fc3c7d91ac0fd1c".to_owned()),
            }
        );
        assert!(concerns(
            &push,
            "https://github.com/acme/stacks",
            FollowedRef::Branch("main")
        ));
    }

    #[test]
    fn github_branch_deletion_has_no_after() {
        let body = GITHUB_PUSH.replace(
            "0d1a26e67d8f5eaf1f6ba5c57fc3c7d91ac0fd1c",
            "0000000000000000000000000000000000000000",
        );
        let h = headers(&[("X-GitHub-Event", "push")]);
        let push = parse_push(Provider::Github, &h, body.as_bytes())
            .unwrap()
            .unwrap();
        assert_eq!(push.after, None);
        assert_eq!(push.reference.as_deref(), Some("refs/heads/main"));
    }

    #[test]
    fn github_form_encoded_body_gets_a_hint() {
        let h = headers(&[("X-GitHub-Event", "push")]);
        let err =
            parse_push(Provider::Github, &h, b"payload=%7B%22ref%22%3A%22x%22%7D").unwrap_err();
        assert!(err.to_string().contains("application/json"), "{err}");
        assert_eq!(err.status(), 400);
    }

    #[test]
    fn github_malformed_bodies() {
        let h = headers(&[("X-GitHub-Event", "push")]);
        for body in [
            "not json",
            r#"{"after": "abc", "repository": {"clone_url": "https://github.com/a/b.git"}}"#,
            r#"{"ref": "refs/heads/main", "repository": {}}"#,
            r#"{"ref": "refs/heads/main"}"#,
            r#"{"ref": "", "repository": {"clone_url": "https://github.com/a/b.git"}}"#,
        ] {
            let err = parse_push(Provider::Github, &h, body.as_bytes()).unwrap_err();
            assert!(matches!(err, Error::InvalidBody { .. }), "{body}: {err:?}");
            assert_eq!(err.status(), 400);
        }
    }

    #[test]
    fn gitea_push_parses() {
        for event in ["X-Gitea-Event", "X-Forgejo-Event"] {
            let h = headers(&[(event, "push")]);
            let push = parse_push(Provider::Gitea, &h, GITEA_PUSH.as_bytes())
                .unwrap()
                .unwrap();
            assert_eq!(
                push,
                Push {
                    repository_urls: vec![
                        "https://git.example.com/ops/stacks.git".to_owned(),
                        "ssh://git@git.example.com:2222/ops/stacks.git".to_owned(),
                        "https://git.example.com/ops/stacks".to_owned(),
                    ],
                    reference: Some("refs/heads/main".to_owned()),
                    after: Some("bffeb74224043ba2feb48d137756c8a9331c449a".to_owned()),
                }
            );
        }
        let h = headers(&[("X-Gitea-Event", "create")]);
        assert_eq!(
            parse_push(Provider::Gitea, &h, GITEA_PUSH.as_bytes()).unwrap(),
            None
        );
        let err =
            parse_push(Provider::Gitea, &HeaderMap::new(), GITEA_PUSH.as_bytes()).unwrap_err();
        assert!(matches!(err, Error::MissingEvent { .. }), "{err:?}");
    }

    #[test]
    fn gitlab_push_parses() {
        let h = headers(&[("X-Gitlab-Event", "Push Hook")]);
        let push = parse_push(Provider::Gitlab, &h, GITLAB_PUSH.as_bytes())
            .unwrap()
            .unwrap();
        assert_eq!(
            push,
            Push {
                repository_urls: vec![
                    "https://gitlab.example.com/infra/platform/stacks.git".to_owned(),
                    "git@gitlab.example.com:infra/platform/stacks.git".to_owned(),
                    "https://gitlab.example.com/infra/platform/stacks".to_owned(),
                ],
                reference: Some("refs/heads/main".to_owned()),
                after: Some("da1560886d4f094c3e6c9ef40349f7d38b5d27d7".to_owned()),
            }
        );
    }

    #[test]
    fn gitlab_tag_push_parses() {
        let body = GITLAB_PUSH
            .replace("\"refs/heads/main\"", "\"refs/tags/v1.2\"")
            .replace("\"object_kind\": \"push\"", "\"object_kind\": \"tag_push\"");
        let h = headers(&[("X-Gitlab-Event", "Tag Push Hook")]);
        let push = parse_push(Provider::Gitlab, &h, body.as_bytes())
            .unwrap()
            .unwrap();
        assert_eq!(push.reference.as_deref(), Some("refs/tags/v1.2"));
        let url = "git@gitlab.example.com:infra/platform/stacks.git";
        assert!(concerns(&push, url, FollowedRef::Tag("v1.2")));
        assert!(!concerns(&push, url, FollowedRef::Branch("v1.2")));
        assert!(!concerns(&push, url, FollowedRef::Tag("v1.3")));
    }

    #[test]
    fn gitlab_non_push_hooks_are_ignored() {
        let h = headers(&[("X-Gitlab-Event", "Merge Request Hook")]);
        let body = br#"{"object_kind": "merge_request"}"#;
        assert_eq!(parse_push(Provider::Gitlab, &h, body).unwrap(), None);

        let h = headers(&[("X-Gitlab-Event", "System Hook")]);
        let body = br#"{"event_name": "project_create", "name": "x"}"#;
        assert_eq!(parse_push(Provider::Gitlab, &h, body).unwrap(), None);
    }

    #[test]
    fn gitlab_system_hook_push_parses() {
        let h = headers(&[("X-Gitlab-Event", "System Hook")]);
        let push = parse_push(Provider::Gitlab, &h, GITLAB_PUSH.as_bytes())
            .unwrap()
            .unwrap();
        assert_eq!(push.reference.as_deref(), Some("refs/heads/main"));
    }

    #[test]
    fn generic_push_parses() {
        let body = br#"{"repository": "https://git.example.com/ops/stacks.git",
            "ref": "refs/heads/main", "after": "bffeb74224043ba2feb48d137756c8a9331c449a"}"#;
        let push = parse_push(Provider::Generic, &HeaderMap::new(), body)
            .unwrap()
            .unwrap();
        assert_eq!(
            push,
            Push {
                repository_urls: vec!["https://git.example.com/ops/stacks.git".to_owned()],
                reference: Some("refs/heads/main".to_owned()),
                after: Some("bffeb74224043ba2feb48d137756c8a9331c449a".to_owned()),
            }
        );
    }

    #[test]
    fn generic_empty_body_means_whatever_is_configured() {
        for body in ["", "  \n", "{}", r#"{"repository": null, "ref": ""}"#] {
            let push = parse_push(Provider::Generic, &HeaderMap::new(), body.as_bytes())
                .unwrap()
                .unwrap();
            assert_eq!(push, Push::default(), "{body:?}");
            assert!(concerns(
                &push,
                "git@github.com:acme/stacks.git",
                FollowedRef::Branch("main")
            ));
            assert!(concerns(&push, "anything", FollowedRef::Tag("v1")));
            // A pinned commit never moves, whatever the hook says.
            assert!(!concerns(&push, "anything", FollowedRef::Commit));
        }
    }

    #[test]
    fn generic_rejects_unknown_fields_bare_refs_and_bad_json() {
        for body in [
            r#"{"branch": "main"}"#,
            r#"{"ref": "main"}"#,
            r#"{"repository": 3}"#,
            "[",
        ] {
            let err =
                parse_push(Provider::Generic, &HeaderMap::new(), body.as_bytes()).unwrap_err();
            assert!(matches!(err, Error::InvalidBody { .. }), "{body}: {err:?}");
            assert_eq!(err.status(), 400);
        }
    }

    // --- concerns / normalize_repo_url ---

    #[test]
    fn normalize_forms() {
        let want = Some("github.com/acme/stacks".to_owned());
        for url in [
            "https://github.com/acme/stacks",
            "https://github.com/acme/stacks.git",
            "https://github.com/acme/stacks/",
            "https://github.com/acme/stacks.git/",
            "http://GitHub.COM/acme/stacks",
            "https://user:token@github.com/acme/stacks.git",
            "https://github.com:443/acme/stacks?foo=bar#frag",
            "ssh://git@github.com/acme/stacks.git",
            "ssh://git@GITHUB.com:22/acme/stacks.git",
            "git+ssh://git@github.com/acme/stacks",
            "git://github.com/acme/stacks.git",
            "git@github.com:acme/stacks.git",
            "github.com:acme/stacks",
            "  git@github.com:/acme/stacks.git  ",
        ] {
            assert_eq!(normalize_repo_url(url), want, "{url}");
        }
        assert_eq!(
            normalize_repo_url("git@gitlab.example.com:infra/platform/stacks.git").as_deref(),
            Some("gitlab.example.com/infra/platform/stacks")
        );
        assert_eq!(
            normalize_repo_url("ssh://git@[::1]:2222/ops/stacks.git").as_deref(),
            Some("::1/ops/stacks")
        );
        // Path case is kept; `concerns` decides how to compare it.
        assert_eq!(
            normalize_repo_url("https://github.com/Acme/Stacks").as_deref(),
            Some("github.com/Acme/Stacks")
        );
        for url in [
            "",
            "/srv/git/stacks",
            "./stacks",
            "file:///srv/git/stacks.git",
            "https://github.com",
            "https://github.com/",
            "https://github.com/.git",
            "://github.com/acme/stacks",
        ] {
            assert_eq!(normalize_repo_url(url), None, "{url}");
        }
    }

    fn push_of(urls: &[&str], reference: &str) -> Push {
        Push {
            repository_urls: urls.iter().map(|u| (*u).to_owned()).collect(),
            reference: Some(reference.to_owned()),
            after: None,
        }
    }

    #[test]
    fn concerns_matches_across_url_forms() {
        let main = FollowedRef::Branch("main");
        let configured = [
            "https://git.example.com/ops/stacks",
            "https://git.example.com/ops/stacks.git",
            "https://GIT.example.com/ops/stacks/",
            "ssh://git@git.example.com:2222/ops/stacks.git",
            "git@git.example.com:ops/stacks.git",
            "git@git.example.com:Ops/Stacks",
        ];
        let pushes = [
            push_of(
                &["https://git.example.com/ops/stacks.git"],
                "refs/heads/main",
            ),
            push_of(
                &["ssh://git@git.example.com:2222/ops/stacks.git"],
                "refs/heads/main",
            ),
            push_of(&["git@Git.Example.com:ops/stacks.git"], "refs/heads/main"),
            push_of(&["https://git.example.com/ops/stacks"], "refs/heads/main"),
        ];
        for url in configured {
            for push in &pushes {
                assert!(concerns(push, url, main), "{url} vs {push:?}");
            }
        }
    }

    #[test]
    fn concerns_rejects_other_repositories() {
        let main = FollowedRef::Branch("main");
        let push = push_of(
            &[
                "https://github.com/acme/stacks.git",
                "git@github.com:acme/stacks.git",
            ],
            "refs/heads/main",
        );
        for url in [
            "https://github.com/acme/stacks-two",
            "https://github.com/acme/stack",
            "https://github.com/other/stacks",
            "https://gitlab.com/acme/stacks",
            "git@github.com:acme/group/stacks.git",
        ] {
            assert!(!concerns(&push, url, main), "{url}");
        }
    }

    #[test]
    fn concerns_checks_the_ref() {
        let url = "https://github.com/acme/stacks";
        let branch = push_of(&[url], "refs/heads/main");
        assert!(concerns(&branch, url, FollowedRef::Branch("main")));
        assert!(!concerns(&branch, url, FollowedRef::Branch("dev")));
        assert!(!concerns(&branch, url, FollowedRef::Branch("mai")));
        assert!(!concerns(&branch, url, FollowedRef::Tag("main")));
        assert!(!concerns(&branch, url, FollowedRef::Commit));

        let tag = push_of(&[url], "refs/tags/v1.2");
        assert!(concerns(&tag, url, FollowedRef::Tag("v1.2")));
        assert!(!concerns(&tag, url, FollowedRef::Tag("v1.2.1")));
        assert!(!concerns(&tag, url, FollowedRef::Branch("v1.2")));
        assert!(!concerns(&tag, url, FollowedRef::Branch("main")));

        let slashed = push_of(&[url], "refs/heads/release/1.x");
        assert!(concerns(&slashed, url, FollowedRef::Branch("release/1.x")));
    }

    #[test]
    fn concerns_generic_with_repository_but_no_ref() {
        let push = Push {
            repository_urls: vec!["git@github.com:acme/stacks.git".to_owned()],
            reference: None,
            after: None,
        };
        assert!(concerns(
            &push,
            "https://github.com/acme/stacks",
            FollowedRef::Tag("v1")
        ));
        assert!(!concerns(
            &push,
            "https://github.com/acme/other",
            FollowedRef::Tag("v1")
        ));
    }

    #[test]
    fn concerns_falls_back_to_exact_spelling_for_non_urls() {
        let push = push_of(&["/srv/git/stacks"], "refs/heads/main");
        assert!(concerns(
            &push,
            "/srv/git/stacks",
            FollowedRef::Branch("main")
        ));
        assert!(!concerns(
            &push,
            "/srv/git/other",
            FollowedRef::Branch("main")
        ));
    }

    #[test]
    fn provider_serializes_lowercase() {
        assert_eq!(
            serde_json::to_string(&Provider::Github).unwrap(),
            "\"github\""
        );
        assert_eq!(
            serde_json::from_str::<Provider>("\"gitea\"").unwrap(),
            Provider::Gitea
        );
    }

    #[test]
    fn errors_never_reveal_secret_or_credentials() {
        let body = GITHUB_PUSH.as_bytes();
        let forged = sign(body, "forged-key-sentinel");
        let prefixed_forged = format!("sha256={forged}");
        let malformed = "sha256=sentinel-signature-value";
        let token = "sentinel-token-value";
        let mut errors = Vec::new();
        let mut check = |provider, pairs: &[(&str, &str)]| {
            if let Err(e) = verify(provider, &headers(pairs), body, &secret()) {
                errors.push(e);
            }
        };
        check(
            Provider::Github,
            &[("X-Hub-Signature-256", &prefixed_forged)],
        );
        check(Provider::Github, &[("X-Hub-Signature-256", malformed)]);
        check(Provider::Github, &[("X-Hub-Signature-256", &forged)]);
        check(Provider::Github, &[]);
        check(Provider::Gitea, &[("X-Gitea-Signature", &forged)]);
        check(Provider::Gitea, &[("X-Gitea-Signature", malformed)]);
        check(Provider::Gitea, &[]);
        check(Provider::Gitlab, &[("X-Gitlab-Token", token)]);
        check(Provider::Gitlab, &[]);
        check(Provider::Generic, &[("X-Driftless-Signature", malformed)]);
        check(
            Provider::Generic,
            &[("X-Driftless-Signature", &prefixed_forged)],
        );
        assert_eq!(errors.len(), 11);
        errors.push(
            verify(
                Provider::Gitlab,
                &HeaderMap::new(),
                body,
                &SecretString::from(""),
            )
            .unwrap_err(),
        );
        errors.push(parse_push(Provider::Github, &HeaderMap::new(), body).unwrap_err());
        errors.push(
            parse_push(Provider::Generic, &HeaderMap::new(), br#"{"ref": "main"}"#).unwrap_err(),
        );

        let real = sign(body, SECRET);
        for err in &errors {
            for text in [err.to_string(), format!("{err:?}")] {
                for sentinel in [SECRET, &forged, &real, "sentinel", token] {
                    assert!(!text.contains(sentinel), "{text:?} contains {sentinel:?}");
                }
            }
        }
    }
}
