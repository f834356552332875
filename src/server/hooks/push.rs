//! What a push webhook says: the repository URLs, the ref and the new sha, from GitHub, Gitea
//! and Forgejo, GitLab (project and system hooks) and driftless's own generic payload.

use axum::http::HeaderMap;
use serde::{Deserialize, Serialize};

use super::{Error, FORGEJO_EVENT, GITEA_EVENT, GITHUB_EVENT, GITLAB_EVENT, Provider};

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

#[cfg(test)]
mod tests {
    use super::super::fixtures::*;
    use super::super::{FollowedRef, concerns};
    use super::*;
    use axum::http::HeaderMap;

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
}
