//! What a Git source follows: a branch, a tag or a pinned commit, and the check that its name
//! cannot make a refspec of its own. Pure.

use super::checkout;

/// What to follow on the remote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GitRef {
    Branch(String),
    Tag(String),
    /// A pinned commit (full sha).
    Commit(String),
}

impl GitRef {
    /// The ref a host configuration follows: its tag, commit or branch (default branch `main`).
    pub fn of(git: &super::config::GitConfig) -> GitRef {
        match (&git.branch, &git.tag, &git.commit) {
            (_, Some(t), _) => GitRef::Tag(t.clone()),
            (_, _, Some(c)) => GitRef::Commit(c.clone()),
            (Some(b), _, _) => GitRef::Branch(b.clone()),
            _ => GitRef::Branch("main".to_owned()),
        }
    }
}

impl GitRef {
    /// Whether the ref is well formed: a branch or tag name git accepts (`git check-ref-format`:
    /// no `:`, `*`, `..`, spaces…), a commit as a full sha. Anything else would make a refspec
    /// of its own.
    pub fn is_valid(&self) -> bool {
        match self {
            GitRef::Branch(name) | GitRef::Tag(name) => valid_ref_name(name),
            GitRef::Commit(c) => checkout::is_sha(&c.to_ascii_lowercase()),
        }
    }
}

/// `git check-ref-format` for a branch or tag name below `refs/heads/` or `refs/tags/`. Pure
/// (libgit2's own check would initialise libgit2 whenever the configuration is read).
pub(super) fn valid_ref_name(name: &str) -> bool {
    let forbidden = |c: char| {
        c.is_ascii_control() || matches!(c, ' ' | '~' | '^' | ':' | '?' | '*' | '[' | '\\')
    };
    !name.is_empty()
        && name != "@"
        && !name.contains("..")
        && !name.contains("@{")
        && !name.ends_with('.')
        && !name.chars().any(forbidden)
        && name
            .split('/')
            .all(|part| !part.is_empty() && !part.starts_with('.') && !part.ends_with(".lock"))
}

impl std::fmt::Display for GitRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            GitRef::Branch(b) => write!(f, "branch {b}"),
            GitRef::Tag(t) => write!(f, "tag {t}"),
            GitRef::Commit(c) => write!(f, "commit {c}"),
        }
    }
}
