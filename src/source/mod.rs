//! Sources of the stack repository: a Git remote (git2; every call blocks, so async callers run
//! it on `spawn_blocking`) or a plain local directory. The only module that runs Git.
//!
//! A Git source keeps a bare mirror under the state directory and materialises each revision it
//! uses into its own directory (`checkouts/<sha>`), so a reconcile reads one immutable tree.
//! The followed branch or tag is taken from what the remote advertises in this fetch, never from
//! the mirror's refs, so a ref deleted on the remote is reported, not silently kept.
//!
//! Files: `git_ref` (branch, tag or commit followed), `remote` (what a URL names; refused URLs), `transport` (libgit2 callbacks: host keys,
//! credentials, deadline), `known_hosts` (OpenSSH matching), `checkout` (bounded checkouts and
//! their cleanup), `verify` and `allowed_signers` (commit and tag signatures).

mod allowed_signers;
mod checkout;
pub mod config;
mod git_ref;
mod known_hosts;
mod remote;
mod transport;
pub mod verify;

pub use git_ref::GitRef;
pub use verify::{Refusal, Verifier};

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use git2::{FetchOptions, Oid, RemoteRedirect, Repository};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};

/// Errors fetching or checking out a revision. URLs in them never carry user information.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("git {url}: {action}: {message}")]
    Git {
        url: String,
        action: &'static str,
        message: String,
    },
    #[error(
        "git {url}: {reference} is not a valid Git ref (a branch or tag name as git accepts it, a commit as a full sha)"
    )]
    InvalidRef { url: String, reference: String },
    /// The followed branch or tag does not exist on the remote (deleted or renamed).
    #[error("git {url}: {reference} not found on the remote")]
    RefNotFound { url: String, reference: String },
    #[error("git {url}: {source}")]
    Credentials {
        url: String,
        #[source]
        source: crate::credentials::Error,
    },
    #[error("git {url}: known_hosts file {path}: {message}")]
    KnownHosts {
        url: String,
        path: PathBuf,
        message: String,
    },
    #[error(
        "git {url}: an SSH remote needs auth.knownHostsFile: host keys are never accepted unchecked"
    )]
    NoKnownHosts { url: String },
    /// The SSH server's host key is unknown, changed or revoked.
    #[error("git {url}: {problem}")]
    HostKey { url: String, problem: String },
    /// A URL refused before anything is sent (embedded credentials, an unknown scheme, a token
    /// for plain http).
    #[error("git {url}: {reason}")]
    RefusedUrl { url: String, reason: &'static str },
    #[error("git {url}: credentials not sent: {reason}")]
    CredentialsRefused { url: String, reason: String },
    #[error("git {url}: timed out: {what}")]
    TimedOut { url: String, what: String },
    #[error(
        "git {url}: commit {sha}: {path} is {size} bytes, over the limit of {limit} bytes for a file of the stack repository; nothing of this revision was checked out"
    )]
    FileTooLarge {
        url: String,
        sha: String,
        path: String,
        size: u64,
        limit: u64,
    },
    #[error("git {url}: commit {sha}: the tree holds an invalid entry name {path:?}")]
    BadTreeEntry {
        url: String,
        sha: String,
        path: String,
    },
    #[error("git {url}: commit {sha}: more than {limit} files and directories")]
    TooManyEntries {
        url: String,
        sha: String,
        limit: usize,
    },
    #[error("{path}: {message}")]
    Io { path: PathBuf, message: String },
    /// `source.git.verify`: the revision's commit or tag is unsigned, signed by a key not
    /// allowed, or its signature does not verify. Nothing of it was checked out.
    #[error("git {url}: {object} not applied: {reason}{}", signer.as_ref().map(|s| format!(" (signer: {s})")).unwrap_or_default())]
    Unverified {
        url: String,
        /// The commit the ref points to.
        sha: String,
        /// `commit <sha>` or `tag <name>`.
        object: String,
        signer: Option<String>,
        reason: String,
    },
    /// `source.git.verify` names a key file that cannot be read or holds no usable key.
    #[error("git {url}: source.git.verify.{field} {path}: {message}")]
    VerifyKeys {
        url: String,
        field: &'static str,
        path: String,
        message: String,
    },
}

/// A convenient result alias for this module.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Checks a configured remote URL before use: no credentials written into it, a scheme libgit2
/// can use, and no token or password (`has_secret_auth`) for plain `http://` or `git://`. The
/// error shows the URL without its user information.
pub fn check_url(url: &str, has_secret_auth: bool) -> Result<()> {
    match remote::refusal(url, has_secret_auth) {
        Some(reason) => Err(Error::RefusedUrl {
            url: remote::redacted(url),
            reason,
        }),
        None => Ok(()),
    }
}

/// Time and size limits of a fetch and its checkout.
#[derive(Debug, Clone, Copy)]
pub struct FetchLimits {
    /// Longest wait for a TCP connection.
    pub connect_timeout: Duration,
    /// Longest the server may stay silent (each read or write; SSH too).
    pub idle_timeout: Duration,
    /// Longest a whole fetch may take; checked at every progress report of libgit2.
    pub deadline: Duration,
    /// Largest file (blob) a checkout writes: the stack loader's `LoadLimits::max_file_bytes`.
    pub max_blob_bytes: u64,
    /// Most files and directories in one checkout.
    pub max_entries: usize,
    /// How many of the most recently fetched checkouts `remove_old_checkouts` keeps (besides the
    /// applied one).
    pub keep_checkouts: usize,
}

impl Default for FetchLimits {
    fn default() -> Self {
        FetchLimits {
            connect_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(60),
            deadline: Duration::from_secs(300),
            max_blob_bytes: crate::stack::LoadLimits::default().max_file_bytes,
            max_entries: 100_000,
            keep_checkouts: 3,
        }
    }
}

/// Credentials for a remote, already read from the credentials directory.
#[derive(Default)]
pub struct GitCredentials {
    pub username: Option<String>,
    /// Password or token (HTTPS; never sent over plain http).
    pub password: Option<SecretString>,
    /// SSH private key (OpenSSH or PEM text, without passphrase), read through the credentials
    /// reader and handed to libssh2 from memory.
    pub ssh_key: Option<SecretString>,
    /// known_hosts file for SSH host key checks.
    pub known_hosts: Option<PathBuf>,
}

/// Largest known_hosts file read, in bytes.
const MAX_KNOWN_HOSTS_BYTES: u64 = 1024 * 1024;

/// A Git remote followed at one ref.
pub struct GitSource {
    pub url: String,
    pub reference: GitRef,
    pub credentials: GitCredentials,
    /// Where the mirror and checkouts live (e.g. `/var/lib/driftless/git`).
    pub dir: PathBuf,
    pub limits: FetchLimits,
    /// `source.git.verify`: when set, a revision is checked out only when it verifies.
    pub verifier: Option<Verifier>,
}

impl GitSource {
    /// A source with the default limits.
    pub fn new(url: &str, reference: GitRef, credentials: GitCredentials, dir: &Path) -> GitSource {
        GitSource {
            url: url.to_owned(),
            reference,
            credentials,
            dir: dir.to_owned(),
            limits: FetchLimits::default(),
            verifier: None,
        }
    }

    /// The source a host configuration describes. Credential files are read through
    /// `credentials` now (the host's own files); the mirror lives under `<state_dir>/git`.
    pub fn from_config(
        git: &config::GitConfig,
        credentials: &crate::credentials::Credentials,
        state_dir: &Path,
    ) -> Result<GitSource> {
        let credentials_reader = credentials;
        let has_secret = git.auth.token_file.is_some() || git.auth.password_file.is_some();
        check_url(&git.url, has_secret)?;
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
            // Key parsers want the final line break that the text reader trims.
            ssh_key: auth
                .ssh_key_file
                .as_deref()
                .map(|f| read("source.git.auth.sshKeyFile", f))
                .transpose()?
                .map(|k| SecretString::from(format!("{}\n", k.expose_secret()))),
            known_hosts: auth.known_hosts_file.clone(),
        };
        let verifier = match &git.verify {
            Some(v) => Some(verify::read_verifier(git, v, credentials_reader)?),
            None => None,
        };
        let mut source = GitSource::new(
            &git.url,
            GitRef::of(git),
            credentials,
            &state_dir.join("git"),
        );
        source.verifier = verifier;
        Ok(source)
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
        let url = remote::redacted(&self.url);
        let message = e.message().to_lowercase();
        // Over TLS, libgit2's timed-out read reaches OpenSSL as EAGAIN ("resource temporarily
        // unavailable"): the socket is non-blocking only when timeouts are set.
        if e.code() == git2::ErrorCode::Timeout
            || message.contains("timed out")
            || message.contains("resource temporarily unavailable")
        {
            return Error::TimedOut {
                url,
                what: format!(
                    "{action}: {} (connect timeout {}s, idle timeout {}s)",
                    e.message(),
                    self.limits.connect_timeout.as_secs(),
                    self.limits.idle_timeout.as_secs()
                ),
            };
        }
        Error::Git {
            url,
            action,
            message: e.message().to_owned(),
        }
    }

    fn not_found(&self) -> Error {
        Error::RefNotFound {
            url: remote::redacted(&self.url),
            reference: self.reference.to_string(),
        }
    }

    /// Fetches the ref, and materialises its commit unless it is already checked out.
    /// `previous` is the sha the caller last used. A branch or tag the remote no longer has is
    /// `Error::RefNotFound`, also after earlier successful fetches; nothing is removed then (or
    /// on any other error): checkouts are removed only by `remove_old_checkouts`.
    pub fn fetch(&self, previous: Option<&str>) -> Result<Fetched> {
        let has_secret = self.credentials.password.is_some();
        check_url(&self.url, has_secret)?;
        if !self.reference.is_valid() {
            return Err(Error::InvalidRef {
                url: remote::redacted(&self.url),
                reference: self.reference.to_string(),
            });
        }
        let endpoint = remote::Endpoint::parse(&self.url);
        let known_hosts = self.read_known_hosts(&endpoint)?;
        self.apply_socket_timeouts()?;
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
        let (refspec, wanted) = match &self.reference {
            GitRef::Branch(b) => (
                format!("+refs/heads/{b}:refs/remotes/origin/{b}"),
                Some(format!("refs/heads/{b}")),
            ),
            GitRef::Tag(t) => (
                format!("+refs/tags/{t}:refs/tags/{t}"),
                Some(format!("refs/tags/{t}")),
            ),
            GitRef::Commit(_) => ("+refs/heads/*:refs/remotes/origin/*".to_owned(), None),
        };
        let mut remote = repo
            .remote_anonymous(&self.url)
            .map_err(|e| self.git_err("remote", e))?;
        let policy = transport::Policy {
            url: &self.url,
            endpoint: &endpoint,
            credentials: &self.credentials,
            known_hosts: known_hosts.as_ref(),
            started: Instant::now(),
            deadline: self.limits.deadline,
        };
        let refusal = transport::Refusal::default();
        let mut options = FetchOptions::new();
        options.remote_callbacks(transport::callbacks(&policy, &refusal));
        options.download_tags(git2::AutotagOption::None);
        // Redirects of the first request only (libgit2's default, made explicit); the
        // credentials callback refuses any server but the configured one.
        options.follow_redirects(RemoteRedirect::Initial);
        let fetched = remote.fetch(&[refspec.as_str()], Some(&mut options), None);
        drop(options);
        if let Err(e) = fetched {
            return Err(refusal.take().unwrap_or_else(|| self.git_err("fetch", e)));
        }
        // What the remote advertised in this fetch: a ref it no longer has is gone, whatever
        // the mirror still holds from earlier fetches.
        let advertised = match &wanted {
            Some(name) => Some(
                remote
                    .list()
                    .map_err(|e| self.git_err("list remote refs", e))?
                    .iter()
                    .find(|h| h.name() == name)
                    .map(|h| h.oid())
                    .ok_or_else(|| self.not_found())?,
            ),
            None => None,
        };
        let oid = match (&self.reference, advertised) {
            (GitRef::Commit(c), _) => Oid::from_str(c)
                .and_then(|oid| repo.find_commit(oid).map(|c| c.id()))
                .map_err(|_| self.not_found())?,
            (_, Some(oid)) => repo
                .find_object(oid, None)
                .and_then(|o| o.peel_to_commit())
                .map(|c| c.id())
                .map_err(|e| self.git_err("read the ref's commit", e))?,
            (_, None) => return Err(self.not_found()),
        };
        let commit = repo
            .find_commit(oid)
            .map_err(|e| self.git_err("read commit", e))?;
        if let Some(verifier) = &self.verifier {
            self.verify(verifier, &repo, &commit, advertised)?;
        }
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
        let checkout = self.checkouts().join(&revision.sha);
        let moved = previous != Some(revision.sha.as_str());
        if checkout.join(checkout::COMPLETE_MARKER).is_file() {
            checkout::touch(&checkout);
        } else {
            let bounds = checkout::Bounds {
                max_blob_bytes: self.limits.max_blob_bytes,
                max_entries: self.limits.max_entries,
            };
            checkout::materialise(&repo, &commit, &checkout, bounds)
                .map_err(|f| self.checkout_err(&revision.sha, f))?;
        }
        Ok(Fetched {
            revision,
            checkout,
            moved,
        })
    }

    /// Whether commit `newer` is `wanted` or a descendant of it, in the mirror as last fetched
    /// (nothing is fetched). `wanted` is hexadecimal (full or abbreviated); one the mirror does
    /// not hold is not contained.
    pub fn contains(&self, newer: &str, wanted: &str) -> Result<bool> {
        if !wanted.bytes().all(|b| b.is_ascii_hexdigit()) || wanted.len() < 4 {
            return Ok(false);
        }
        let repo = Repository::open_bare(self.dir.join("mirror.git"))
            .map_err(|e| self.git_err("open mirror", e))?;
        let commit = |rev: &str| {
            repo.revparse_single(rev)
                .and_then(|o| o.peel_to_commit())
                .map(|c| c.id())
        };
        let newer = commit(newer).map_err(|e| self.git_err("find commit", e))?;
        let Ok(wanted) = commit(wanted) else {
            return Ok(false);
        };
        Ok(newer == wanted
            || repo
                .graph_descendant_of(newer, wanted)
                .map_err(|e| self.git_err("compare commits", e))?)
    }

    fn checkouts(&self) -> PathBuf {
        self.dir.join("checkouts")
    }

    fn checkout_err(&self, sha: &str, failure: checkout::Failure) -> Error {
        let url = remote::redacted(&self.url);
        let sha = sha.to_owned();
        match failure {
            checkout::Failure::Git(e) => self.git_err("checkout", e),
            checkout::Failure::Io(path, e) => Error::Io {
                path,
                message: e.to_string(),
            },
            checkout::Failure::TooLarge { path, size } => Error::FileTooLarge {
                url,
                sha,
                path,
                size,
                limit: self.limits.max_blob_bytes,
            },
            checkout::Failure::BadName { path } => Error::BadTreeEntry { url, sha, path },
            checkout::Failure::TooManyEntries => Error::TooManyEntries {
                url,
                sha,
                limit: self.limits.max_entries,
            },
        }
    }

    /// Removes the checkouts no longer needed and returns their directory names: keeps
    /// `applied` (the revision the cluster runs, which the daemon falls back to when a newer one
    /// fails) and the `limits.keep_checkouts` most recently fetched; removes the others,
    /// incomplete checkouts, and temporary directories over an hour old. Never called by
    /// `fetch`: the caller knows which revision is applied.
    pub fn remove_old_checkouts(&self, applied: Option<&str>) -> Result<Vec<String>> {
        let dir = self.checkouts();
        let io = |path: &Path, e: std::io::Error| Error::Io {
            path: path.to_owned(),
            message: e.to_string(),
        };
        let found = checkout::scan(&dir).map_err(|e| io(&dir, e))?;
        let remove = checkout::to_remove(
            &found,
            applied,
            self.limits.keep_checkouts,
            std::time::SystemTime::now(),
        );
        for name in &remove {
            let path = dir.join(name);
            std::fs::remove_dir_all(&path).map_err(|e| io(&path, e))?;
        }
        Ok(remove)
    }

    /// The known_hosts file when configured (a bounded regular file); `NoKnownHosts` for an SSH
    /// remote without one.
    fn read_known_hosts(
        &self,
        endpoint: &remote::Endpoint,
    ) -> Result<Option<(PathBuf, known_hosts::KnownHosts)>> {
        let Some(path) = &self.credentials.known_hosts else {
            if endpoint.transport == remote::Transport::Ssh {
                return Err(Error::NoKnownHosts {
                    url: remote::redacted(&self.url),
                });
            }
            return Ok(None);
        };
        let fail = |message: String| Error::KnownHosts {
            url: remote::redacted(&self.url),
            path: path.clone(),
            message,
        };
        let meta = std::fs::metadata(path).map_err(|e| fail(e.to_string()))?;
        if !meta.is_file() {
            return Err(fail("not a regular file".to_owned()));
        }
        if meta.len() > MAX_KNOWN_HOSTS_BYTES {
            return Err(fail(format!("larger than {MAX_KNOWN_HOSTS_BYTES} bytes")));
        }
        let text = std::fs::read_to_string(path).map_err(|e| fail(e.to_string()))?;
        Ok(Some((path.clone(), known_hosts::KnownHosts::parse(&text))))
    }

    /// libgit2's socket timeouts are process-wide; each fetch sets its own before it starts
    /// (driftless fetches one source at a time).
    fn apply_socket_timeouts(&self) -> Result<()> {
        let ms = |d: Duration| i32::try_from(d.as_millis()).unwrap_or(i32::MAX).max(1);
        // SAFETY: both options store an int that libgit2 reads when it opens a stream; no
        // pointer is passed (git2 marks every option setter unsafe).
        unsafe {
            git2::opts::set_server_connect_timeout_in_milliseconds(ms(self.limits.connect_timeout))
                .and_then(|()| {
                    git2::opts::set_server_timeout_in_milliseconds(ms(self.limits.idle_timeout))
                })
        }
        .map_err(|e| self.git_err("set timeouts", e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ref_names() {
        let sha = "0123456789abcdef0123456789abcdef01234567";
        for ok in [
            GitRef::Branch("main".into()),
            GitRef::Branch("release/1.2".into()),
            GitRef::Tag("v1.2.3".into()),
            GitRef::Commit(sha.into()),
            GitRef::Commit(sha.to_uppercase()),
            GitRef::Branch("feature/x-1_2".into()),
            GitRef::Branch("a.b".into()),
            GitRef::Branch("user@host".into()),
        ] {
            assert!(ok.is_valid(), "{ok}");
        }
        for bad in [
            GitRef::Branch("main:refs/heads/x".into()),
            GitRef::Branch("*".into()),
            GitRef::Branch("a..b".into()),
            GitRef::Branch("".into()),
            GitRef::Tag("v1 2".into()),
            GitRef::Commit("0123abc".into()),
            GitRef::Commit(format!("{}g", &sha[..39])),
            GitRef::Branch("/main".into()),
            GitRef::Branch("main/".into()),
            GitRef::Branch("a//b".into()),
            GitRef::Branch(".hidden".into()),
            GitRef::Branch("x.lock".into()),
            GitRef::Branch("main.".into()),
            GitRef::Branch("a@{1}".into()),
            GitRef::Branch("@".into()),
            GitRef::Branch("a\\b".into()),
            GitRef::Tag("v1?".into()),
            GitRef::Tag("v[1]".into()),
            GitRef::Tag("v~1".into()),
            GitRef::Tag("v^1".into()),
            GitRef::Tag("v\u{7f}".into()),
        ] {
            assert!(!bad.is_valid(), "{bad}");
        }
        // The same verdicts as libgit2 for names.
        for name in [
            "main",
            "a..b",
            "a/.b",
            "x.lock",
            "a b",
            "release/1.2",
            "a@{1}",
            "v~1",
        ] {
            assert_eq!(
                git_ref::valid_ref_name(name),
                git2::Reference::is_valid_name(&format!("refs/heads/{name}")),
                "{name}"
            );
        }
    }
}
