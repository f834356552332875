//! Does a push concern what the daemon follows: the configured repository (any URL form) and
//! branch or tag.

use super::Push;

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

    fn push_of(urls: &[&str], reference: &str) -> Push {
        Push {
            repository_urls: urls.iter().map(|u| (*u).to_owned()).collect(),
            reference: Some(reference.to_owned()),
            after: None,
        }
    }

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
}
