//! Push webhooks that trigger a sync: authenticity checks and payload parsing, with no I/O. One
//! file per step: `verify` (signatures and tokens), `push` (the payloads), `concerns` (does a push
//! move what is followed).
//!
//! The route handler calls [`verify()`] first, then [`parse_push()`], then [`concerns()`] against the
//! configured source. Each step is separate so the handler can answer 401, 400 or 202 precisely.
//!
//! Nothing here ever formats the secret or a credential the request carried: errors name the
//! header at fault and why, so they are safe to log and to return to the caller.

mod concerns;
#[cfg(test)]
pub(crate) mod fixtures;
mod push;
mod verify;

pub use concerns::{FollowedRef, concerns, normalize_repo_url};
pub use push::{Push, parse_push};
pub use verify::verify;

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

pub use crate::status::run::Provider;

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

#[cfg(test)]
mod tests {
    use super::fixtures::*;
    use super::*;
    use axum::http::HeaderMap;
    use secrecy::SecretString;

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
