//! Encrypted backups with [age](https://age-encryption.org): every file of a backup is encrypted
//! in the stream, chunk by chunk, before it leaves the host's memory ([`Encrypting`], fed by
//! `store::Upload`), to the job's recipients (public keys, `spec.encryption.ageRecipients`), and
//! decrypted while it is read back, drilled or restored with the host's identity file
//! (`encryption.identityFile` in the host configuration, read through `credentials` like every
//! secret). Stored files are ordinary age files (`<name>.age`): the `age` program decrypts them.
//!
//! The repository names recipients only; the host decides the rest ([`HostRules`]): whether a
//! job must encrypt at all, which recipients are allowed, and the identity. The identity must be
//! one of the job's recipients, so that a backup this host makes is one this host can verify and
//! restore (a recipient nobody holds the key of is refused before anything is written).
//!
//! Key material never leaves its wrappers: the identity file is read as a `SecretSlice`, parsed
//! into age's own key type (which zeroizes itself and has no `Debug`), and [`Identity`] shows only
//! the public keys. Errors name files, fields, line numbers and public keys, never a secret key.

use std::io::Write;
use std::str::FromStr;
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

pub use crate::config::encryption::{BadRecipient, HostRules, parse_recipient};
use secrecy::{ExposeSecret, SecretSlice};

/// What an encrypted file's stored name ends with.
pub const SUFFIX: &str = ".age";

/// Errors of keys and of encryption and decryption; none carries key material.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Credentials(#[from] crate::credentials::Error),
    #[error(
        "encryption.identityFile {file:?}: line {line} is not an age X25519 identity (AGE-SECRET-KEY-1…; age-keygen writes them; plugin and SSH identities are not supported)"
    )]
    IdentityLine { file: String, line: usize },
    #[error("encryption.identityFile {file:?}: holds no identity (AGE-SECRET-KEY-1… line)")]
    NoIdentity { file: String },
    #[error("encryption.identityFile {file:?}: not UTF-8 text")]
    IdentityNotText { file: String },
    #[error(
        "this Backup job encrypts (spec.encryption), and the host configuration names no identity to verify, drill and restore with: set encryption.identityFile (an age identity file in the credentials directory)"
    )]
    IdentityNotConfigured,
    #[error(
        "the host's identity (public key {public}) is not among the job's recipients ({recipients}): this host could not verify or restore its backups; add {public} to spec.encryption.ageRecipients, or use the identity of one of them"
    )]
    IdentityNotRecipient { public: String, recipients: String },
    #[error(
        "the host configuration requires encrypted backups (encryption.required): add spec.encryption.ageRecipients to the job"
    )]
    Required,
    #[error(
        "recipient {recipient} is not allowed by encryption.allowedRecipients in the host configuration ({allowed})"
    )]
    NotAllowed { recipient: String, allowed: String },
    #[error(
        "backup {id} is encrypted to {recipients}; the host's identity (public key {public}) is none of them: set encryption.identityFile to one of their identities (nothing was changed)"
    )]
    WrongIdentity {
        id: String,
        recipients: String,
        public: String,
    },
    #[error("encrypting: {0}")]
    Encrypt(String),
}

/// A list of recipients as messages show it.
fn listed(keys: &[String]) -> String {
    if keys.is_empty() {
        "none".to_owned()
    } else {
        keys.join(", ")
    }
}

/// The host's identity (`encryption.identityFile`): one or more X25519 secret keys.
pub struct Identity {
    keys: Vec<age::x25519::Identity>,
    public: Vec<String>,
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Identity({})", self.public.join(", "))
    }
}

impl Identity {
    /// Parses an identity file as age-keygen writes it: `#` comments, blank lines and one
    /// `AGE-SECRET-KEY-1…` per line. `file` names it in errors.
    pub fn parse(file: &str, bytes: &SecretSlice<u8>) -> Result<Identity, Error> {
        let text =
            std::str::from_utf8(bytes.expose_secret()).map_err(|_| Error::IdentityNotText {
                file: file.to_owned(),
            })?;
        let mut keys = Vec::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let key = age::x25519::Identity::from_str(line).map_err(|_| Error::IdentityLine {
                file: file.to_owned(),
                line: n + 1,
            })?;
            keys.push(key);
        }
        if keys.is_empty() {
            return Err(Error::NoIdentity {
                file: file.to_owned(),
            });
        }
        let public = keys.iter().map(|k| k.to_public().to_string()).collect();
        Ok(Identity { keys, public })
    }

    /// Reads the host's identity file from the credentials directory.
    pub fn read(
        credentials: &crate::credentials::Credentials,
        file: &str,
    ) -> Result<Identity, Error> {
        let bytes = credentials.host_secret("encryption.identityFile", file)?;
        Identity::parse(file, &bytes)
    }

    /// Its public keys (`age1…`).
    pub fn public_keys(&self) -> &[String] {
        &self.public
    }

    /// The public keys as messages show them.
    pub fn described(&self) -> String {
        self.public.join(", ")
    }

    /// Whether one of its keys belongs to one of `recipients`.
    pub fn opens(&self, recipients: &[String]) -> bool {
        self.public.iter().any(|p| recipients.contains(p))
    }

    /// Its keys as age takes them.
    pub(super) fn age_identities(&self) -> impl Iterator<Item = &dyn age::Identity> {
        self.keys.iter().map(|k| k as &dyn age::Identity)
    }
}

/// What encrypts a job's new files and decrypts its stored ones.
#[derive(Debug, Default)]
pub struct Crypt {
    /// The job's recipients (none: new files are not encrypted).
    recipients: Vec<age::x25519::Recipient>,
    /// Their text form, for the manifest.
    recipient_keys: Vec<String>,
    /// The host's identity, when it is needed.
    pub identity: Option<Identity>,
}

impl Crypt {
    /// Decrypts only (restores, drills of backups made earlier).
    pub fn reading(identity: Identity) -> Crypt {
        Crypt {
            identity: Some(identity),
            ..Crypt::default()
        }
    }

    /// Encrypts new files to `recipients` (checked public keys) and decrypts with `identity`,
    /// after the host's rules: the identity must be one of the recipients, and each recipient
    /// allowed.
    pub fn for_job(
        recipients: &[String],
        identity: Identity,
        rules: &HostRules,
    ) -> Result<Crypt, Error> {
        if let Some(allowed) = &rules.allowed_recipients {
            // Compared in age's canonical form (the job's recipients are stored so).
            let canonical: Vec<String> = allowed
                .iter()
                .filter_map(|a| parse_recipient(a).ok().map(|k| k.to_string()))
                .collect();
            if let Some(r) = recipients.iter().find(|r| !canonical.contains(r)) {
                return Err(Error::NotAllowed {
                    recipient: r.clone(),
                    allowed: listed(&canonical),
                });
            }
        }
        if !identity.opens(recipients) {
            return Err(Error::IdentityNotRecipient {
                public: identity.described(),
                recipients: listed(recipients),
            });
        }
        let parsed = recipients
            .iter()
            .map(|r| parse_recipient(r).map_err(|e| Error::Encrypt(format!("{r}: {e}"))))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Crypt {
            recipients: parsed,
            recipient_keys: recipients.to_vec(),
            identity: Some(identity),
        })
    }

    /// Whether new files are encrypted.
    pub fn encrypts(&self) -> bool {
        !self.recipients.is_empty()
    }

    /// The manifest's record of it (none when new files are not encrypted).
    pub fn record(&self) -> Option<EncryptionRecord> {
        self.encrypts().then(|| EncryptionRecord {
            format: "age".to_owned(),
            recipients: self.recipient_keys.clone(),
        })
    }

    /// Starts encrypting one file (a header of its own, a fresh file key).
    pub fn start(&self) -> Result<Encrypting, Error> {
        let encryptor = age::Encryptor::with_recipients(
            self.recipients.iter().map(|r| r as &dyn age::Recipient),
        )
        .map_err(|e| Error::Encrypt(e.to_string()))?;
        let out = Sink::default();
        let writer = encryptor
            .wrap_output(out.clone())
            .map_err(|e| Error::Encrypt(e.to_string()))?;
        Ok(Encrypting { writer, out })
    }

    /// Checks, before anything is read or changed, that this host can decrypt a backup encrypted
    /// to `record` (the manifest's).
    pub fn check_opens(&self, id: &str, record: &EncryptionRecord) -> Result<&Identity, Error> {
        let identity = self.identity.as_ref().ok_or(Error::IdentityNotConfigured)?;
        if !identity.opens(&record.recipients) {
            return Err(Error::WrongIdentity {
                id: id.to_owned(),
                recipients: listed(&record.recipients),
                public: identity.described(),
            });
        }
        Ok(identity)
    }
}

/// How a backup is encrypted, as its manifest records it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EncryptionRecord {
    /// `age`.
    pub format: String,
    /// The recipients every file is encrypted to (public keys).
    pub recipients: Vec<String>,
}

/// Where the encryptor writes: the ciphertext waiting to be uploaded. Shared with the writer,
/// which owns its output.
#[derive(Clone, Default)]
struct Sink(Arc<Mutex<Vec<u8>>>);

impl Sink {
    fn take(&self) -> Vec<u8> {
        // A poisoned lock only means a panic elsewhere held it; the bytes are still ours.
        let mut buf = self.0.lock().unwrap_or_else(|e| e.into_inner());
        std::mem::take(&mut *buf)
    }
}

impl Write for Sink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// One file being encrypted: plaintext in, ciphertext out (in the order it must be stored).
pub struct Encrypting {
    writer: age::stream::StreamWriter<Sink>,
    out: Sink,
}

impl Encrypting {
    /// Encrypts `plain`; returns the ciphertext ready so far (the header first, then whole
    /// 64 KiB chunks; the last chunk waits for [`Encrypting::finish`]).
    pub fn push(&mut self, plain: &[u8]) -> Result<Vec<u8>, Error> {
        self.writer
            .write_all(plain)
            .map_err(|e| Error::Encrypt(e.to_string()))?;
        Ok(self.out.take())
    }

    /// Ends the file; returns the rest of the ciphertext.
    pub fn finish(self) -> Result<Vec<u8>, Error> {
        let out = self.out.clone();
        self.writer
            .finish()
            .map_err(|e| Error::Encrypt(e.to_string()))?;
        Ok(out.take())
    }
}

/// Why a stored file could not be decrypted (no key material in it).
pub fn decrypt_problem(e: &age::DecryptError) -> String {
    match e {
        age::DecryptError::NoMatchingKeys => {
            "no key of the host's identity opens it (not encrypted to this identity)".to_owned()
        }
        age::DecryptError::Io(io) => format!("reading it: {io}"),
        age::DecryptError::InvalidHeader | age::DecryptError::UnknownFormat => {
            "not an age file (header unreadable)".to_owned()
        }
        age::DecryptError::InvalidMac | age::DecryptError::DecryptionFailed => {
            "it does not authenticate (changed or damaged)".to_owned()
        }
        other => format!("{other}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    fn identity_text(n: usize) -> (String, Vec<String>) {
        let keys: Vec<age::x25519::Identity> =
            (0..n).map(|_| age::x25519::Identity::generate()).collect();
        let mut text = String::from("# created: now\n\n");
        let mut public = Vec::new();
        for k in &keys {
            public.push(k.to_public().to_string());
            text.push_str(&format!("# public key: {}\n", k.to_public()));
            text.push_str(k.to_string().expose_secret());
            text.push('\n');
        }
        (text, public)
    }

    #[test]
    fn identity_files_parse_as_age_keygen_writes_them_and_never_show_the_key() {
        let (text, public) = identity_text(2);
        let id = Identity::parse(
            "backup-identity",
            &SecretSlice::from(text.clone().into_bytes()),
        )
        .unwrap();
        assert_eq!(id.public_keys(), public.as_slice());
        let shown = format!("{id:?}");
        assert!(!shown.contains("AGE-SECRET-KEY"), "{shown}");
        assert!(shown.contains(&public[0]));

        let secret = text.lines().find(|l| l.starts_with("AGE-SECRET")).unwrap();
        let broken = text.replace(secret, &format!("{}x", &secret[..secret.len() - 1]));
        let err = Identity::parse("backup-identity", &SecretSlice::from(broken.into_bytes()))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("line 4") && !err.contains(&secret[16..40]),
            "{err}"
        );
        let err = Identity::parse("f", &SecretSlice::from(b"# nothing\n".to_vec()))
            .unwrap_err()
            .to_string();
        assert!(err.contains("holds no identity"), "{err}");
    }

    #[test]
    fn a_secret_key_is_no_recipient_and_is_never_echoed() {
        let (text, public) = identity_text(1);
        let secret = text.lines().find(|l| l.starts_with("AGE-SECRET")).unwrap();
        assert_eq!(
            parse_recipient(secret).unwrap_err(),
            BadRecipient::SecretKey
        );
        assert_eq!(
            parse_recipient(&secret.to_lowercase()).unwrap_err(),
            BadRecipient::SecretKey
        );
        assert_eq!(
            parse_recipient("ssh-ed25519 AAAA").unwrap_err(),
            BadRecipient::NotARecipient
        );
        assert!(parse_recipient(&public[0]).is_ok());
    }

    #[test]
    fn the_host_rules_decide() {
        let (text, public) = identity_text(1);
        let id = || Identity::parse("f", &SecretSlice::from(text.clone().into_bytes())).unwrap();
        let other = identity_text(1).1;
        let err = Crypt::for_job(&other, id(), &HostRules::default())
            .unwrap_err()
            .to_string();
        assert!(err.contains("not among the job's recipients"), "{err}");
        let both = [public[0].clone(), other[0].clone()];
        assert!(Crypt::for_job(&both, id(), &HostRules::default()).is_ok());
        let rules = HostRules {
            allowed_recipients: Some(vec![public[0].clone()]),
            ..HostRules::default()
        };
        let err = Crypt::for_job(&both, id(), &rules).unwrap_err().to_string();
        assert!(
            err.contains(&other[0]) && err.contains("allowedRecipients"),
            "{err}"
        );
    }

    #[test]
    fn pushed_chunks_make_an_age_file_that_decrypts_to_the_input() {
        let (text, public) = identity_text(1);
        let id = Identity::parse("f", &SecretSlice::from(text.into_bytes())).unwrap();
        let crypt = Crypt::for_job(&public, id, &HostRules::default()).unwrap();
        // Sizes around the 64 KiB chunk boundary, and empty.
        for size in [0usize, 1, 65_535, 65_536, 65_537, 3 * 65_536, 300_001] {
            let plain: Vec<u8> = (0..size).map(|i| (i * 31 % 251) as u8).collect();
            let mut enc = crypt.start().unwrap();
            let mut cipher = Vec::new();
            for part in plain.chunks(7_777) {
                cipher.extend(enc.push(part).unwrap());
            }
            cipher.extend(enc.finish().unwrap());
            assert!(cipher.starts_with(b"age-encryption.org/v1\n"));
            let dec = age::Decryptor::new(&cipher[..]).unwrap();
            let mut back = Vec::new();
            dec.decrypt(crypt.identity.as_ref().unwrap().age_identities())
                .unwrap()
                .read_to_end(&mut back)
                .unwrap();
            assert_eq!(back, plain, "{size}");
        }
    }
}
