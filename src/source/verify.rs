//! Signature verification of the revision a Git source follows (`source.git.verify`): SSH
//! signatures (`gpg.format ssh`, namespace `git`) against an allowed-signers file, OpenPGP
//! signatures against armored public keys. A revision that does not verify is never checked
//! out: `fetch` returns `Error::Unverified` before anything of it is written.
//!
//! The decision (`Verifier::check`) is pure: it takes the signed bytes, the signature and the
//! signer's e-mail as git recorded them, and the time. Reading them out of the repository is
//! `commit_signature` / `tag_signature`; `read_verifier` reads the key files and
//! `GitSource::verify` checks a fetched revision as the mode asks (the I/O around the decision).

use chrono::{DateTime, Utc};
use pgp::composed::{Deserializable, DetachedSignature, SignedPublicKey};
use pgp::packet::SignatureType;
use pgp::types::KeyDetails;

use std::path::Path;

use git2::{Oid, Repository};
use secrecy::ExposeSecret;

use super::allowed_signers::{self, AllowedSigner};
use super::config::VerifyMode;
use super::{Error, GitRef, remote};

/// Namespace git signs SSH signatures in.
const GIT_NAMESPACE: &str = "git";

/// Why a signed object was refused, and by whom it claims to be signed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// The signer as far as the signature names it (key fingerprint, principal, user id).
    pub signer: Option<String>,
    pub reason: String,
}

impl Refusal {
    fn new(signer: Option<String>, reason: impl Into<String>) -> Refusal {
        Refusal {
            signer,
            reason: reason.into(),
        }
    }
}

/// What a revision's commit or tag holds for verification.
#[derive(Debug, Clone)]
pub struct SignedObject {
    /// The bytes the signature covers (the object without its signature).
    pub payload: Vec<u8>,
    /// The armored signature, when there is one.
    pub signature: Option<Vec<u8>>,
    /// The committer's (tagger's) e-mail address, matched against allowed-signers principals.
    pub email: String,
}

/// The keys and mode of `source.git.verify`.
#[derive(Debug, Clone)]
pub struct Verifier {
    pub mode: VerifyMode,
    ssh: Vec<AllowedSigner>,
    pgp: Vec<SignedPublicKey>,
}

impl Verifier {
    /// Reads the allowed-signers file and the OpenPGP keys (either may be absent; a signature of
    /// the missing kind is then refused). The error says what is wrong with which input.
    pub fn new(
        mode: VerifyMode,
        allowed_signers: Option<&str>,
        openpgp_keys: Option<&str>,
    ) -> Result<Verifier, String> {
        let ssh = match allowed_signers {
            Some(text) => allowed_signers::parse(text)?,
            None => Vec::new(),
        };
        let mut pgp = Vec::new();
        if let Some(text) = openpgp_keys {
            let (keys, _) = SignedPublicKey::from_string_many(text)
                .map_err(|e| format!("not armored OpenPGP public keys: {e}"))?;
            for key in keys {
                let key = key.map_err(|e| format!("unreadable OpenPGP public key: {e}"))?;
                pgp.push(key);
            }
            if pgp.is_empty() {
                return Err("holds no OpenPGP public key".to_owned());
            }
        }
        if ssh.is_empty() && pgp.is_empty() {
            return Err("no keys: give allowedSignersFile, openpgpKeysFile or both".to_owned());
        }
        Ok(Verifier { mode, ssh, pgp })
    }

    /// Whether `object` carries a good signature by an allowed key at `now`: the signer, or why
    /// not.
    pub fn check(&self, object: &SignedObject, now: DateTime<Utc>) -> Result<String, Refusal> {
        let Some(signature) = &object.signature else {
            return Err(Refusal::new(None, "not signed"));
        };
        let text = String::from_utf8_lossy(signature);
        if text.contains("-----BEGIN SSH SIGNATURE-----") {
            self.check_ssh(object, &text, now)
        } else if text.contains("-----BEGIN PGP SIGNATURE-----") {
            self.check_pgp(object, &text, now)
        } else {
            Err(Refusal::new(
                None,
                "signed in a format driftless does not verify (only SSH and OpenPGP signatures)",
            ))
        }
    }

    fn check_ssh(
        &self,
        object: &SignedObject,
        armored: &str,
        now: DateTime<Utc>,
    ) -> Result<String, Refusal> {
        let sig = ssh_key::SshSig::from_pem(armored.trim())
            .map_err(|e| Refusal::new(None, format!("unreadable SSH signature: {e}")))?;
        let fingerprint = sig
            .public_key()
            .fingerprint(ssh_key::HashAlg::Sha256)
            .to_string();
        let signer = Some(format!("SSH key {fingerprint}"));
        if sig.namespace() != GIT_NAMESPACE {
            return Err(Refusal::new(
                signer,
                format!(
                    "SSH signature in namespace {:?}, not \"git\"",
                    sig.namespace()
                ),
            ));
        }
        let entries: Vec<&AllowedSigner> = self
            .ssh
            .iter()
            .filter(|e| e.key.key_data() == sig.public_key())
            .collect();
        let Some(first) = entries.first() else {
            return Err(Refusal::new(
                signer,
                "signed by an SSH key that allowedSignersFile does not list",
            ));
        };
        if first
            .key
            .verify(GIT_NAMESPACE, &object.payload, &sig)
            .is_err()
        {
            return Err(Refusal::new(
                signer,
                "the SSH signature does not verify (the object was changed after signing, or the signature is forged)",
            ));
        }
        let mut reasons = Vec::new();
        for entry in &entries {
            match allowed_signers::refusal(entry, &object.email, now) {
                None => return Ok(format!("{} ({fingerprint})", object.email)),
                Some(r) => reasons.push(r),
            }
        }
        Err(Refusal::new(
            Some(format!("{} ({fingerprint})", object.email)),
            reasons.join("; "),
        ))
    }

    fn check_pgp(
        &self,
        object: &SignedObject,
        armored: &str,
        now: DateTime<Utc>,
    ) -> Result<String, Refusal> {
        let (sig, _) = DetachedSignature::from_string(armored)
            .map_err(|e| Refusal::new(None, format!("unreadable OpenPGP signature: {e}")))?;
        let issuers: Vec<String> = sig
            .signature
            .issuer_fingerprint()
            .iter()
            .map(|f| format!("{f:X}"))
            .chain(
                sig.signature
                    .issuer_key_id()
                    .iter()
                    .map(|k| k.as_ref().iter().map(|b| format!("{b:02X}")).collect()),
            )
            .collect();
        let named = issuers.first().map(|i| format!("OpenPGP key {i}"));
        let now_secs = now.timestamp();
        for key in &self.pgp {
            let user = key
                .details
                .users
                .first()
                .map(|u| String::from_utf8_lossy(u.id.id()).into_owned())
                .unwrap_or_default();
            let primary_fpr = format!("{:X}", key.primary_key.fingerprint());
            let signer = Some(format!("{user} ({primary_fpr})").trim().to_owned());
            // The signing key: the primary key or one of its subkeys.
            let primary_matches = matches_issuer(&sig, &key.primary_key);
            let subkey = key
                .public_subkeys
                .iter()
                .find(|s| matches_issuer(&sig, &s.key));
            if !primary_matches && subkey.is_none() {
                continue;
            }
            if key.verify_bindings().is_err() {
                return Err(Refusal::new(
                    signer,
                    "the OpenPGP key's self-signatures do not verify",
                ));
            }
            if !key.details.revocation_signatures.is_empty() {
                return Err(Refusal::new(signer, "the OpenPGP key is revoked"));
            }
            if let Some(expiry) = primary_expiry(key)
                && now_secs >= expiry
            {
                return Err(Refusal::new(
                    signer,
                    format!("the OpenPGP key expired at {}", time_text(expiry)),
                ));
            }
            let verified = match subkey {
                Some(sub) => {
                    if sub
                        .signatures
                        .iter()
                        .any(|s| s.typ() == Some(SignatureType::SubkeyRevocation))
                    {
                        return Err(Refusal::new(
                            signer,
                            "the OpenPGP signing subkey is revoked",
                        ));
                    }
                    if let Some(expiry) = subkey_expiry(sub)
                        && now_secs >= expiry
                    {
                        return Err(Refusal::new(
                            signer,
                            format!(
                                "the OpenPGP signing subkey expired at {}",
                                time_text(expiry)
                            ),
                        ));
                    }
                    sig.verify(&sub.key, &object.payload)
                }
                None => sig.verify(&key.primary_key, &object.payload),
            };
            return match verified {
                Ok(()) => Ok(format!("{user} ({primary_fpr})").trim().to_owned()),
                Err(_) => Err(Refusal::new(
                    signer,
                    "the OpenPGP signature does not verify (the object was changed after signing, or the signature is forged)",
                )),
            };
        }
        Err(Refusal::new(
            named,
            "signed by an OpenPGP key that openpgpKeysFile does not hold",
        ))
    }
}

fn matches_issuer(sig: &DetachedSignature, key: &impl KeyDetails) -> bool {
    let fpr = key.fingerprint();
    let id = key.legacy_key_id();
    sig.signature
        .issuer_fingerprint()
        .iter()
        .any(|f| **f == fpr)
        || sig.signature.issuer_key_id().iter().any(|k| **k == id)
}

/// When the primary key expires (seconds since the epoch): its newest self-signature's key
/// expiration time, if any.
fn primary_expiry(key: &SignedPublicKey) -> Option<i64> {
    let created = i64::from(key.primary_key.created_at().as_secs());
    let newest = key
        .details
        .users
        .iter()
        .flat_map(|u| u.signatures.iter())
        .chain(key.details.direct_signatures.iter())
        .filter(|s| s.created().is_some())
        .max_by_key(|s| s.created().map(|t| t.as_secs()))?;
    expiry_of(created, newest)
}

fn subkey_expiry(sub: &pgp::composed::SignedPublicSubKey) -> Option<i64> {
    let created = i64::from(sub.key.created_at().as_secs());
    let newest = sub
        .signatures
        .iter()
        .filter(|s| s.typ() == Some(SignatureType::SubkeyBinding))
        .max_by_key(|s| s.created().map(|t| t.as_secs()))?;
    expiry_of(created, newest)
}

fn expiry_of(created: i64, sig: &pgp::packet::Signature) -> Option<i64> {
    let d = sig.key_expiration_time()?;
    let secs = i64::from(d.as_secs());
    (secs > 0).then_some(created + secs)
}

fn time_text(secs: i64) -> String {
    DateTime::from_timestamp(secs, 0)
        .map(|t| t.format("%Y-%m-%d %H:%M:%S UTC").to_string())
        .unwrap_or_else(|| secs.to_string())
}

/// The signed payload, signature and committer e-mail of a commit.
pub(crate) fn commit_signature(
    repo: &git2::Repository,
    commit: &git2::Commit<'_>,
) -> Result<SignedObject, git2::Error> {
    let email = commit.committer().email().unwrap_or_default().to_owned();
    match repo.extract_signature(&commit.id(), None) {
        Ok((signature, payload)) => Ok(SignedObject {
            payload: payload.to_vec(),
            signature: Some(signature.to_vec()),
            email,
        }),
        Err(e) if e.code() == git2::ErrorCode::NotFound => Ok(SignedObject {
            payload: Vec::new(),
            signature: None,
            email,
        }),
        Err(e) => Err(e),
    }
}

/// The signed payload, signature and tagger e-mail of an annotated tag object (the signature is
/// the armored block at the end of its message); `None` for a lightweight tag.
pub(crate) fn tag_signature(
    repo: &git2::Repository,
    tag_id: git2::Oid,
) -> Result<Option<SignedObject>, git2::Error> {
    let Ok(tag) = repo.find_tag(tag_id) else {
        return Ok(None);
    };
    let email = tag
        .tagger()
        .and_then(|t| t.email().ok().map(str::to_owned))
        .unwrap_or_default();
    let raw = repo.odb()?.read(tag_id)?.data().to_vec();
    Ok(Some(split_tag(&raw, email)))
}

/// Splits a raw tag object at the first line that begins an armored signature.
fn split_tag(raw: &[u8], email: String) -> SignedObject {
    const MARKERS: [&[u8]; 2] = [
        b"-----BEGIN PGP SIGNATURE-----",
        b"-----BEGIN SSH SIGNATURE-----",
    ];
    let mut start = 0;
    while start < raw.len() {
        let rest = &raw[start..];
        if MARKERS.iter().any(|m| rest.starts_with(m)) {
            return SignedObject {
                payload: raw[..start].to_vec(),
                signature: Some(rest.to_vec()),
                email,
            };
        }
        match rest.iter().position(|&b| b == b'\n') {
            Some(i) => start += i + 1,
            None => break,
        }
    }
    SignedObject {
        payload: raw.to_vec(),
        signature: None,
        email,
    }
}

// Reading `source.git.verify`'s key files and checking a fetched revision: the I/O around
// `Verifier::check`.

/// Largest key file of `source.git.verify` read, in bytes.
const MAX_KEYS_BYTES: u64 = 1024 * 1024;

/// Reads the key files of `source.git.verify`: a plain name through the credentials reader, an
/// absolute path (a public key file of the configuration directory) as a bounded regular file.
pub(super) fn read_verifier(
    git: &super::config::GitConfig,
    v: &super::config::VerifyConfig,
    credentials: &crate::credentials::Credentials,
) -> super::Result<Verifier> {
    let url = remote::redacted(&git.url);
    let fail = |field: &'static str, path: &Path, message: String| Error::VerifyKeys {
        url: url.clone(),
        field,
        path: path.display().to_string(),
        message,
    };
    let read = |field: &'static str, path: &Path| -> super::Result<String> {
        if path.is_absolute() {
            let meta = std::fs::metadata(path).map_err(|e| fail(field, path, e.to_string()))?;
            if !meta.is_file() {
                return Err(fail(field, path, "not a regular file".to_owned()));
            }
            if meta.len() > MAX_KEYS_BYTES {
                return Err(fail(
                    field,
                    path,
                    format!("larger than {MAX_KEYS_BYTES} bytes"),
                ));
            }
            std::fs::read_to_string(path).map_err(|e| fail(field, path, e.to_string()))
        } else {
            credentials
                .host_text(
                    &format!("source.git.verify.{field}"),
                    &path.to_string_lossy(),
                )
                .map(|t| t.expose_secret().to_owned())
                .map_err(|e| Error::Credentials {
                    url: url.clone(),
                    source: e,
                })
        }
    };
    let ssh = v
        .allowed_signers_file
        .as_deref()
        .map(|p| read("allowedSignersFile", p).map(|t| (p, t)))
        .transpose()?;
    let pgp = v
        .openpgp_keys_file
        .as_deref()
        .map(|p| read("openpgpKeysFile", p).map(|t| (p, t)))
        .transpose()?;
    // Each file on its own first, so the error names the file at fault.
    if let Some((p, t)) = &ssh {
        Verifier::new(v.mode, Some(t), None).map_err(|m| fail("allowedSignersFile", p, m))?;
    }
    if let Some((p, t)) = &pgp {
        Verifier::new(v.mode, None, Some(t)).map_err(|m| fail("openpgpKeysFile", p, m))?;
    }
    Verifier::new(
        v.mode,
        ssh.as_ref().map(|(_, t)| t.as_str()),
        pgp.as_ref().map(|(_, t)| t.as_str()),
    )
    .map_err(|m| fail("mode", Path::new(""), m))
}

impl super::GitSource {
    /// Checks the signatures `verifier.mode` asks for: the commit (`head`), the annotated tag
    /// the ref names (`tag`), or both. `tag_id` is the object the remote advertised for the ref.
    pub(super) fn verify(
        &self,
        verifier: &Verifier,
        repo: &Repository,
        commit: &git2::Commit<'_>,
        tag_id: Option<Oid>,
    ) -> super::Result<()> {
        use super::config::VerifyMode;
        let now = chrono::Utc::now();
        let sha = commit.id().to_string();
        let refuse = |object: String, refusal: Refusal| Error::Unverified {
            url: remote::redacted(&self.url),
            sha: sha.clone(),
            object,
            signer: refusal.signer,
            reason: refusal.reason,
        };
        if matches!(verifier.mode, VerifyMode::Tag | VerifyMode::TagAndHead) {
            let name = match &self.reference {
                GitRef::Tag(t) => t.clone(),
                other => other.to_string(),
            };
            let object = format!("tag {name} ({sha})");
            let signed = match tag_id {
                Some(id) if id != commit.id() => {
                    tag_signature(repo, id).map_err(|e| self.git_err("read the tag", e))?
                }
                _ => None,
            };
            let Some(signed) = signed else {
                return Err(refuse(
                    object,
                    Refusal {
                        signer: None,
                        reason: "a lightweight tag (no tag object) carries no signature: sign it with `git tag -s`".to_owned(),
                    },
                ));
            };
            verifier
                .check(&signed, now)
                .map_err(|r| refuse(object, r))?;
        }
        if matches!(verifier.mode, VerifyMode::Head | VerifyMode::TagAndHead) {
            let signed = commit_signature(repo, commit)
                .map_err(|e| self.git_err("read the commit's signature", e))?;
            verifier
                .check(&signed, now)
                .map_err(|r| refuse(format!("commit {sha}"), r))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tag_signature_is_the_armored_tail() {
        let raw = b"object 0123\ntype commit\ntag v1\ntagger A <a@x> 1 +0000\n\nrelease\n-----BEGIN SSH SIGNATURE-----\nAAAA\n-----END SSH SIGNATURE-----\n";
        let s = split_tag(raw, "a@x".into());
        assert!(s.payload.ends_with(b"release\n"));
        assert!(s.signature.unwrap().starts_with(b"-----BEGIN SSH"));
        let unsigned = split_tag(
            b"object 0123\ntype commit\n\nmsg with -----BEGIN PGP SIGNATURE----- inside\n",
            "a@x".into(),
        );
        assert!(unsigned.signature.is_none());
    }

    #[test]
    fn decisions_without_keys_of_the_kind() {
        let allowed = "a@x ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIKeo8AtEcSr9qFlwmNBDq9rlErk+w0tD104Vpj+m0qLe\n";
        let v = Verifier::new(VerifyMode::Head, Some(allowed), None).unwrap();
        let now = Utc::now();
        let object = |sig: Option<&str>| SignedObject {
            payload: b"tree 0\n".to_vec(),
            signature: sig.map(|s| s.as_bytes().to_vec()),
            email: "a@x".into(),
        };
        let e = v.check(&object(None), now).unwrap_err();
        assert_eq!(e.reason, "not signed");
        let e = v.check(&object(Some("x509 something")), now).unwrap_err();
        assert!(e.reason.contains("format"), "{e:?}");
        let e = v
            .check(
                &object(Some(
                    "-----BEGIN PGP SIGNATURE-----\n\nnot base64\n-----END PGP SIGNATURE-----\n",
                )),
                now,
            )
            .unwrap_err();
        assert!(e.reason.contains("OpenPGP"), "{e:?}");
        assert!(Verifier::new(VerifyMode::Head, None, None).is_err());
        assert!(Verifier::new(VerifyMode::Head, None, Some("garbage")).is_err());
    }
}
