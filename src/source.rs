//! Sources of the stack repository: a Git remote (git2; every call blocks, so async callers run
//! it on `spawn_blocking`) or a plain local directory. The only module that runs Git.
//!
//! A Git source keeps a bare mirror under the state directory and materialises each revision it
//! uses into its own directory (`checkouts/<sha>`), so a reconcile reads one immutable tree.

use std::path::{Path, PathBuf};

use git2::{CertificateCheckStatus, Cred, FetchOptions, Oid, RemoteCallbacks, Repository};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};

/// Errors fetching or checking out a revision.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("git {url}: {action}: {message}")]
    Git {
        url: String,
        action: &'static str,
        message: String,
    },
    #[error("git {url}: {reference} not found on the remote")]
    RefNotFound { url: String, reference: String },
    #[error("git {url}: {source}")]
    Credentials {
        url: String,
        #[source]
        source: crate::credentials::Error,
    },
    #[error("git {url}: known_hosts file {path}: {source}")]
    KnownHosts {
        url: String,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "git {url}: an SSH remote needs auth.knownHostsFile: host keys are never accepted unchecked"
    )]
    NoKnownHosts { url: String },
    #[error("{path}: {message}")]
    Io { path: PathBuf, message: String },
}

/// A convenient result alias for this module.
pub type Result<T, E = Error> = std::result::Result<T, E>;

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
    pub fn of(git: &crate::config::GitConfig) -> GitRef {
        match (&git.branch, &git.tag, &git.commit) {
            (_, Some(t), _) => GitRef::Tag(t.clone()),
            (_, _, Some(c)) => GitRef::Commit(c.clone()),
            (Some(b), _, _) => GitRef::Branch(b.clone()),
            _ => GitRef::Branch("main".to_owned()),
        }
    }
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

/// Credentials for a remote, already read from the credentials directory.
#[derive(Default)]
pub struct GitCredentials {
    pub username: Option<String>,
    /// Password or token (HTTPS).
    pub password: Option<SecretString>,
    /// SSH private key file.
    pub ssh_key: Option<PathBuf>,
    /// known_hosts file for SSH host key checks.
    pub known_hosts: Option<PathBuf>,
}

impl GitSource {
    /// The source a host configuration describes. Credential files are read through
    /// `credentials` now (the host's own files); the mirror lives under `<state_dir>/git`.
    pub fn from_config(
        git: &crate::config::GitConfig,
        credentials: &crate::credentials::Credentials,
        state_dir: &Path,
    ) -> Result<GitSource> {
        let fail = |source: crate::credentials::Error| Error::Credentials {
            url: git.url.clone(),
            source,
        };
        let read = |field: &str, file: &str| -> Result<SecretString> {
            credentials.host_text(field, file).map_err(fail)
        };
        let auth = &git.auth;
        let credentials = GitCredentials {
            username: auth
                .username_file
                .as_deref()
                .map(|f| read("source.git.auth.usernameFile", f))
                .transpose()?
                .map(|u| u.expose_secret().to_owned()),
            password: match (&auth.token_file, &auth.password_file) {
                (Some(f), _) => Some(read("source.git.auth.tokenFile", f)?),
                (None, Some(f)) => Some(read("source.git.auth.passwordFile", f)?),
                (None, None) => None,
            },
            ssh_key: auth
                .ssh_key_file
                .as_deref()
                .map(|f| credentials.host_path("source.git.auth.sshKeyFile", f))
                .transpose()
                .map_err(fail)?,
            known_hosts: auth.known_hosts_file.clone(),
        };
        let reference = GitRef::of(git);
        Ok(GitSource {
            url: git.url.clone(),
            reference,
            credentials,
            dir: state_dir.join("git"),
        })
    }
}

/// One commit, as recorded in status and history.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Revision {
    pub sha: String,
    pub subject: String,
    pub author: String,
    /// Commit time, seconds since the Unix epoch.
    pub time: i64,
}

/// A Git remote followed at one ref.
pub struct GitSource {
    pub url: String,
    pub reference: GitRef,
    pub credentials: GitCredentials,
    /// Where the mirror and checkouts live (e.g. `/var/lib/driftless/git/<name>`).
    pub dir: PathBuf,
}

/// The result of a fetch.
#[derive(Debug, Clone)]
pub struct Fetched {
    pub revision: Revision,
    /// The materialised tree of the revision.
    pub checkout: PathBuf,
    /// False when the ref still points where the previous fetch found it (no new checkout).
    pub moved: bool,
}

impl GitSource {
    fn git_err(&self, action: &'static str, e: git2::Error) -> Error {
        let host_key_rejected =
            e.code() == git2::ErrorCode::Certificate || e.message().contains("hostkey");
        let message = match (host_key_rejected, &self.credentials.known_hosts) {
            // libgit2 replaces the certificate callback's message with a generic one.
            (true, Some(known_hosts)) => format!(
                "the server's SSH host key is not in the known_hosts file {} (or it changed): \
                 verify the key and add it with ssh-keyscan",
                known_hosts.display()
            ),
            _ => e.message().to_owned(),
        };
        Error::Git {
            url: self.url.clone(),
            action,
            message,
        }
    }

    /// Fetches the ref, and materialises its commit unless it is already checked out.
    /// `previous` is the sha the caller last used.
    pub fn fetch(&self, previous: Option<&str>) -> Result<Fetched> {
        let mirror = self.dir.join("mirror.git");
        let repo = match Repository::open_bare(&mirror) {
            Ok(r) => r,
            Err(_) => {
                std::fs::create_dir_all(&mirror).map_err(|e| Error::Io {
                    path: mirror.clone(),
                    message: e.to_string(),
                })?;
                Repository::init_bare(&mirror).map_err(|e| self.git_err("init mirror", e))?
            }
        };
        let refspec = match &self.reference {
            GitRef::Branch(b) => format!("+refs/heads/{b}:refs/remotes/origin/{b}"),
            GitRef::Tag(t) => format!("+refs/tags/{t}:refs/tags/{t}"),
            GitRef::Commit(_) => "+refs/heads/*:refs/remotes/origin/*".to_owned(),
        };
        let mut remote = repo
            .remote_anonymous(&self.url)
            .map_err(|e| self.git_err("remote", e))?;
        let mut options = FetchOptions::new();
        options.remote_callbacks(self.callbacks()?);
        options.download_tags(git2::AutotagOption::None);
        remote
            .fetch(&[refspec.as_str()], Some(&mut options), None)
            .map_err(|e| self.git_err("fetch", e))?;
        let oid = match &self.reference {
            GitRef::Branch(b) => repo.refname_to_id(&format!("refs/remotes/origin/{b}")),
            GitRef::Tag(t) => repo
                .revparse_single(&format!("refs/tags/{t}^{{commit}}"))
                .map(|o| o.id()),
            GitRef::Commit(c) => {
                Oid::from_str(c).and_then(|oid| repo.find_commit(oid).map(|c| c.id()))
            }
        }
        .map_err(|_| Error::RefNotFound {
            url: self.url.clone(),
            reference: self.reference.to_string(),
        })?;
        let commit = repo
            .find_commit(oid)
            .map_err(|e| self.git_err("read commit", e))?;
        let revision = Revision {
            sha: oid.to_string(),
            subject: commit
                .summary()
                .ok()
                .flatten()
                .unwrap_or_default()
                .to_owned(),
            author: commit.author().name().unwrap_or_default().to_owned(),
            time: commit.time().seconds(),
        };
        let checkout = self.dir.join("checkouts").join(&revision.sha);
        let moved = previous != Some(revision.sha.as_str());
        if !checkout.join(".driftless-complete").exists() {
            materialise(&repo, &commit, &checkout).map_err(|e| match e {
                Materialise::Git(e) => self.git_err("checkout", e),
                Materialise::Io(path, e) => Error::Io {
                    path,
                    message: e.to_string(),
                },
            })?;
        }
        Ok(Fetched {
            revision,
            checkout,
            moved,
        })
    }

    fn callbacks(&self) -> Result<RemoteCallbacks<'_>> {
        let mut callbacks = RemoteCallbacks::new();
        let ssh =
            self.url.starts_with("ssh://") || (!self.url.contains("://") && self.url.contains('@'));
        if ssh {
            let known_hosts =
                self.credentials
                    .known_hosts
                    .clone()
                    .ok_or_else(|| Error::NoKnownHosts {
                        url: self.url.clone(),
                    })?;
            let text =
                std::fs::read_to_string(&known_hosts).map_err(|source| Error::KnownHosts {
                    url: self.url.clone(),
                    path: known_hosts.clone(),
                    source,
                })?;
            callbacks.certificate_check(move |cert, host| {
                let Some(hostkey) = cert.as_hostkey() else {
                    return Ok(CertificateCheckStatus::CertificatePassthrough);
                };
                let Some(key) = hostkey.hostkey() else {
                    return Err(git2::Error::from_str("the SSH server sent no host key"));
                };
                if known_hosts_accepts(&text, host, key) {
                    Ok(CertificateCheckStatus::CertificateOk)
                } else {
                    Err(git2::Error::from_str(&format!(
                        "host key of {host} is not in the known_hosts file {}",
                        known_hosts.display()
                    )))
                }
            });
        }
        let mut tries = 0;
        callbacks.credentials(move |_url, username_from_url, allowed| {
            tries += 1;
            if tries > 3 {
                return Err(git2::Error::from_str(
                    "authentication failed (credentials rejected)",
                ));
            }
            let c = &self.credentials;
            if allowed.contains(git2::CredentialType::SSH_KEY)
                && let Some(key) = &c.ssh_key
            {
                let user = c.username.as_deref().or(username_from_url).unwrap_or("git");
                return Cred::ssh_key(user, None, key, None);
            }
            if allowed.contains(git2::CredentialType::USER_PASS_PLAINTEXT)
                && let Some(password) = &c.password
            {
                let user = c.username.as_deref().or(username_from_url).unwrap_or("git");
                return Cred::userpass_plaintext(user, password.expose_secret());
            }
            Err(git2::Error::from_str(
                "the remote asks for credentials and none are configured",
            ))
        });
        Ok(callbacks)
    }
}

/// Whether a known_hosts text holds `key` for `host` (plain host names, `[host]:port`; hashed
/// entries and markers are not matched).
fn known_hosts_accepts(text: &str, host: &str, key: &[u8]) -> bool {
    use base64::Engine;
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#') && !l.starts_with('@'))
        .filter_map(|l| {
            let mut parts = l.split_whitespace();
            Some((parts.next()?, parts.next()?, parts.next()?))
        })
        .any(|(hosts, _type, b64)| {
            let host_matches = hosts.split(',').any(|h| {
                h == host
                    || h.strip_prefix('[')
                        .and_then(|r| r.split_once("]:"))
                        .is_some_and(|(n, _)| n == host)
            });
            host_matches
                && base64::engine::general_purpose::STANDARD
                    .decode(b64)
                    .is_ok_and(|k| k == key)
        })
}

enum Materialise {
    Git(git2::Error),
    Io(PathBuf, std::io::Error),
}

/// Writes the commit's tree into `dest` (a temp dir renamed into place when complete).
fn materialise(
    repo: &Repository,
    commit: &git2::Commit<'_>,
    dest: &Path,
) -> Result<(), Materialise> {
    let io = |p: &Path| {
        let p = p.to_owned();
        move |e| Materialise::Io(p, e)
    };
    let parent = dest.parent().unwrap_or(dest);
    std::fs::create_dir_all(parent).map_err(io(parent))?;
    let tmp = parent.join(format!(".tmp-{}", commit.id()));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).map_err(io(&tmp))?;
    let tree = commit.tree().map_err(Materialise::Git)?;
    let mut failure: Option<Materialise> = None;
    tree.walk(git2::TreeWalkMode::PreOrder, |root, entry| {
        let Ok(name) = entry.name() else {
            return git2::TreeWalkResult::Skip;
        };
        let path = tmp.join(root).join(name);
        let result = (|| -> Result<(), Materialise> {
            match entry.kind() {
                Some(git2::ObjectType::Tree) => std::fs::create_dir_all(&path).map_err(io(&path)),
                Some(git2::ObjectType::Blob) => {
                    let blob = repo.find_blob(entry.id()).map_err(Materialise::Git)?;
                    if entry.filemode() == 0o120000 {
                        let target = String::from_utf8_lossy(blob.content()).into_owned();
                        std::os::unix::fs::symlink(target, &path).map_err(io(&path))
                    } else {
                        std::fs::write(&path, blob.content()).map_err(io(&path))
                    }
                }
                // Submodules (commits) are not followed.
                _ => Ok(()),
            }
        })();
        match result {
            Ok(()) => git2::TreeWalkResult::Ok,
            Err(e) => {
                failure = Some(e);
                git2::TreeWalkResult::Abort
            }
        }
    })
    .map_err(Materialise::Git)?;
    if let Some(e) = failure {
        return Err(e);
    }
    std::fs::write(tmp.join(".driftless-complete"), commit.id().to_string()).map_err(io(&tmp))?;
    let _ = std::fs::remove_dir_all(dest);
    std::fs::rename(&tmp, dest).map_err(io(dest))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_hosts_matching() {
        use base64::Engine;
        let key = b"\x00\x00\x00\x0bssh-ed25519key-bytes";
        let b64 = base64::engine::general_purpose::STANDARD.encode(key);
        let text = format!(
            "# comment\nother.example {t} {b64}\n[git.example]:2222,git.alias ssh-ed25519 {b64}\n",
            t = "ssh-rsa"
        );
        assert!(known_hosts_accepts(&text, "git.example", key));
        assert!(known_hosts_accepts(&text, "git.alias", key));
        assert!(known_hosts_accepts(&text, "other.example", key));
        assert!(!known_hosts_accepts(&text, "evil.example", key));
        assert!(!known_hosts_accepts(&text, "git.example", b"different key"));
    }
}
