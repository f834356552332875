//! The callbacks libgit2 calls during a fetch, where driftless decides what to trust and what to
//! send: SSH host keys against known_hosts (every SSH URL form), credentials only to the
//! configured server (never to another host or port after a redirect, never over plain HTTP),
//! and the fetch's overall deadline (checked whenever libgit2 reports progress).
//!
//! A callback that refuses records why in `Refusal`; `fetch` reports that error instead of
//! libgit2's generic one.

use std::cell::RefCell;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use git2::{CertificateCheckStatus, Cred, CredentialType, RemoteCallbacks};
use secrecy::ExposeSecret;

use super::known_hosts::{self, KnownHosts, Verdict};
use super::remote::{Endpoint, Transport, redacted};
use super::{Error, GitCredentials};

/// Why a callback stopped the fetch (the first reason wins).
#[derive(Default)]
pub(super) struct Refusal(RefCell<Option<Error>>);

impl Refusal {
    fn set(&self, e: Error) {
        self.0.borrow_mut().get_or_insert(e);
    }

    /// The recorded reason, if a callback refused.
    pub(super) fn take(&self) -> Option<Error> {
        self.0.borrow_mut().take()
    }
}

/// What the callbacks check against.
pub(super) struct Policy<'a> {
    pub url: &'a str,
    pub endpoint: &'a Endpoint,
    pub credentials: &'a GitCredentials,
    /// The known_hosts file and its entries, when configured.
    pub known_hosts: Option<&'a (PathBuf, KnownHosts)>,
    pub started: Instant,
    pub deadline: Duration,
}

impl Policy<'_> {
    fn over_deadline(&self) -> Option<Error> {
        (self.started.elapsed() > self.deadline).then(|| Error::TimedOut {
            url: redacted(self.url),
            what: format!(
                "the fetch took longer than {}s (stopped at its next progress report)",
                self.deadline.as_secs()
            ),
        })
    }
}

/// The callbacks of one fetch.
pub(super) fn callbacks<'a>(policy: &'a Policy<'a>, refusal: &'a Refusal) -> RemoteCallbacks<'a> {
    let mut callbacks = RemoteCallbacks::new();
    callbacks.certificate_check(move |cert, host| {
        if let Some(e) = policy.over_deadline() {
            refusal.set(e);
            return Err(git2::Error::from_str("deadline"));
        }
        // TLS certificates: libgit2 verifies them against the trust store.
        let Some(hostkey) = cert.as_hostkey() else {
            return Ok(CertificateCheckStatus::CertificatePassthrough);
        };
        match check_host_key(policy, host, hostkey) {
            Ok(()) => Ok(CertificateCheckStatus::CertificateOk),
            Err(e) => {
                refusal.set(e);
                Err(git2::Error::from_str("SSH host key refused"))
            }
        }
    });
    let mut tries = 0;
    callbacks.credentials(move |asked, user_from_url, allowed| {
        tries += 1;
        match credential(policy, asked, user_from_url, allowed, tries) {
            Ok(cred) => Ok(cred),
            Err(e) => {
                let message = e.to_string();
                refusal.set(e);
                Err(git2::Error::from_str(&message))
            }
        }
    });
    callbacks.transfer_progress(move |_| match policy.over_deadline() {
        Some(e) => {
            refusal.set(e);
            false
        }
        None => true,
    });
    callbacks.sideband_progress(move |_| match policy.over_deadline() {
        Some(e) => {
            refusal.set(e);
            false
        }
        None => true,
    });
    callbacks
}

fn check_host_key(
    policy: &Policy<'_>,
    host: &str,
    hostkey: &git2::cert::CertHostkey<'_>,
) -> Result<(), Error> {
    let url = redacted(policy.url);
    // Whatever the URL looked like, an SSH connection needs a known_hosts file.
    let Some((path, known)) = policy.known_hosts else {
        return Err(Error::NoKnownHosts { url });
    };
    let Some(key) = hostkey.hostkey() else {
        return Err(Error::HostKey {
            url,
            problem: format!(
                "the SSH server sent no host key (known_hosts file {})",
                path.display()
            ),
        });
    };
    use base64::Engine;
    let fingerprint = hostkey
        .hash_sha256()
        .map(|h| base64::engine::general_purpose::STANDARD_NO_PAD.encode(h))
        .unwrap_or_default();
    let key_type = known_hosts::blob_type(key).unwrap_or("unknown type");
    let name = known_hosts::written_name(host, policy.endpoint.port);
    let shown = format!("{name} (key {key_type} SHA256:{fingerprint})");
    let problem = match known.check(host, policy.endpoint.port, key) {
        Verdict::Known => return Ok(()),
        Verdict::Revoked => format!(
            "the server's SSH host key for {shown} is marked @revoked in the known_hosts file {}",
            path.display()
        ),
        Verdict::Unknown => format!(
            "the server's SSH host key is not in the known_hosts file {} for {shown}; host, \
             port and key type must all match (or the key changed): verify the key and add \
             it, e.g. with `ssh-keyscan -p {port} {host}`",
            path.display(),
            port = policy.endpoint.port
        ),
    };
    Err(Error::HostKey { url, problem })
}

fn credential(
    policy: &Policy<'_>,
    asked: &str,
    user_from_url: Option<&str>,
    allowed: CredentialType,
    tries: u32,
) -> Result<Cred, Error> {
    let url = redacted(policy.url);
    if let Some(e) = policy.over_deadline() {
        return Err(e);
    }
    let refuse = |reason: String| Error::CredentialsRefused {
        url: url.clone(),
        reason,
    };
    if tries > 3 {
        return Err(refuse("the server rejected them".to_owned()));
    }
    // libgit2 asks with the URL it is talking to now: after a redirect, the new one.
    let now = Endpoint::parse(asked);
    if !now.same_server(policy.endpoint) {
        return Err(refuse(format!(
            "the server redirected to {}, another server than the configured {}; credentials \
             go to the configured server only (configure the URL it redirects to, if it is \
             trusted)",
            now.origin(),
            policy.endpoint.origin()
        )));
    }
    let c = policy.credentials;
    let user = c.username.as_deref().or(user_from_url).unwrap_or("git");
    // SSH without a user in the URL: libgit2 asks for the user name first.
    if allowed == CredentialType::USERNAME {
        return Cred::username(user).map_err(|e| refuse(e.message().to_owned()));
    }
    if allowed.intersects(CredentialType::SSH_MEMORY | CredentialType::SSH_KEY)
        && let Some(key) = &c.ssh_key
    {
        return Cred::ssh_key_from_memory(user, None, key.expose_secret(), None)
            .map_err(|e| refuse(format!("the SSH key could not be used: {}", e.message())));
    }
    if allowed.contains(CredentialType::USER_PASS_PLAINTEXT)
        && let Some(password) = &c.password
    {
        if !matches!(now.transport, Transport::Https | Transport::Ssh) {
            return Err(refuse(format!(
                "{} is not encrypted: a token or password is only sent over https://",
                now.origin()
            )));
        }
        return Cred::userpass_plaintext(user, password.expose_secret())
            .map_err(|e| refuse(e.message().to_owned()));
    }
    Err(refuse(
        "the remote asks for credentials and none are configured".to_owned(),
    ))
}
