//! SOPS-encrypted manifests (YAML or JSON, as the `sops` tool writes them), decrypted with the ops
//! host's age identity. Pure: the caller passes the file's text and the identity.
//!
//! The format: a `sops` mapping (in the first document) holds the data key encrypted to each age
//! recipient, the rule that chose which values were encrypted (`unencrypted_suffix`,
//! `encrypted_suffix`, `unencrypted_regex`, `encrypted_regex`) and a MAC. Each encrypted value is
//! `ENC[AES256_GCM,data:…,iv:…,tag:…,type:…]`, AES-256-GCM with the value's path of keys
//! (`data:password:`) as associated data. The MAC is SHA-512 over every value (or only the
//! encrypted ones, `mac_only_encrypted`) in document order, stored encrypted with the
//! `lastmodified` time as associated data: a changed, added, removed or reordered value (in clear
//! or not) fails it.
//!
//! Errors name the file, the key path and what is wrong, never a value.

mod cipher;
mod metadata;
mod node;

use secrecy::{ExposeSecret, SecretString};
use serde_json::Value;

pub use cipher::decrypt;
use metadata::{Rule, split_metadata};
use node::{Node, path_text, to_value};

/// What is wrong with a SOPS file or the age identity. Names the key path and the fix, never a
/// value (nor a line of the identity file).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("line {line} is not an age identity (AGE-SECRET-KEY-1…)")]
    IdentityLine { line: usize },
    #[error("holds no age identity (AGE-SECRET-KEY-1…)")]
    NoIdentity,
    #[error("SOPS files are decrypted among a stack's manifests only, not in overlays")]
    InOverlay,
    /// No identity on this host: why (e.g. no `sops.ageKeyFile`).
    #[error("a SOPS-encrypted file, and {0}")]
    Unavailable(String),
    #[error("invalid JSON: {0}")]
    Json(String),
    #[error("{0}")]
    Yaml(String),
    #[error("document {document} is not a mapping")]
    NotAMapping { document: usize },
    #[error("no `sops` metadata in the first document")]
    NoMetadata,
    #[error("`sops` is not a mapping")]
    MetadataNotAMapping,
    #[error("sops.{field}: {message}")]
    Regex {
        field: &'static str,
        message: String,
    },
    #[error(
        "sops.{field} is not supported (comments are not read): use encrypted_regex or a suffix"
    )]
    Unsupported { field: &'static str },
    #[error("sops.mac is missing: the file cannot be checked")]
    NoMac,
    #[error("sops.lastmodified is missing")]
    NoLastModified,
    #[error(
        "the file has no age recipient (driftless decrypts age only; add the host's age public key with `sops updatekeys` or --age)"
    )]
    NoAgeRecipient,
    #[error(
        "none of its {recipients} age recipient(s) is the host's identity (sops.ageKeyFile): wrong key, or the file was not encrypted for this host"
    )]
    WrongKey { recipients: usize },
    #[error(
        "the MAC does not decrypt: the file's metadata was changed (or lastmodified edited) after it was encrypted"
    )]
    MacUndecryptable,
    #[error(
        "MAC mismatch: the file's values were changed after it was encrypted (re-encrypt it with sops)"
    )]
    MacMismatch,
    /// One value of the file.
    #[error("{path}: {problem}")]
    Value { path: String, problem: ValueProblem },
    #[error(
        "{path} is encrypted: driftless decrypts only a Secret's data and stringData and a ConfigMap's data (encrypt with --encrypted-regex '^(data|stringData)$')"
    )]
    EncryptedElsewhere { path: String },
    #[error(
        "{field}.{key} of the Secret is in clear in a SOPS file: encrypt it (a Secret from a SOPS file is applied only when all its values were encrypted)"
    )]
    SecretInClear { field: &'static str, key: String },
}

impl Error {
    fn value(path: &[String], problem: ValueProblem) -> Error {
        Error::Value {
            path: path_text(path),
            problem,
        }
    }
}

/// What is wrong with one value (`Error::Value` names its key path).
#[derive(Debug, thiserror::Error)]
pub enum ValueProblem {
    #[error("not an ENC[AES256_GCM,…] value")]
    NotEnc,
    /// `""` or what part is malformed, e.g. `" (base64)"`.
    #[error("malformed ENC value{0}")]
    Malformed(&'static str),
    #[error("bad data key length")]
    KeyLength,
    #[error("does not decrypt (tampered, or moved to another key)")]
    Tampered,
    #[error("decrypted value is not UTF-8")]
    NotUtf8,
    #[error("decrypted value is not a valid {0}")]
    Invalid(&'static str),
    #[error("unknown encrypted type {0:?}")]
    UnknownType(String),
    #[error("the file's rule encrypts this value, but it is in clear (edited after encryption?)")]
    InClear,
    #[error("not a finite number")]
    NotFinite,
}

/// The age identities of `sops.ageKeyFile`.
pub struct AgeIdentity(Vec<age::x25519::Identity>);

impl std::fmt::Debug for AgeIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "AgeIdentity({} keys)", self.0.len())
    }
}

impl AgeIdentity {
    /// Reads `AGE-SECRET-KEY-1…` lines (comments and blank lines skipped). The error never
    /// shows the text.
    pub fn parse(text: &SecretString) -> Result<AgeIdentity, Error> {
        let mut keys = Vec::new();
        for (i, line) in text.expose_secret().lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let key = line
                .parse::<age::x25519::Identity>()
                .map_err(|_| Error::IdentityLine { line: i + 1 })?;
            keys.push(key);
        }
        if keys.is_empty() {
            return Err(Error::NoIdentity);
        }
        Ok(AgeIdentity(keys))
    }

    fn keys(&self) -> impl Iterator<Item = &dyn age::Identity> {
        self.0.iter().map(|i| i as &dyn age::Identity)
    }
}

/// How a render gets at SOPS files' values.
pub enum Decryption {
    /// With the host's age identity.
    Key(AgeIdentity),
    /// Offline validation without credentials: every encrypted value reads as `""`, nothing is
    /// decrypted or checked but the structure.
    Placeholder,
    /// No identity: a SOPS file fails its stack's load with this reason.
    Unavailable(String),
}

/// Whether the text is a SOPS file: a top-level `sops:` key (YAML, at the start of a line) or a
/// `"sops":` member (JSON) next to its `lastmodified` and `mac`.
pub fn is_sops(text: &str) -> bool {
    let yaml = text.lines().any(|l| l.trim_end() == "sops:");
    let json = text.contains("\"sops\":") || text.contains("\"sops\" :");
    (yaml || json) && text.contains("lastmodified") && text.contains("mac")
}

/// The documents of a SOPS file with every encrypted value replaced by `""` (see
/// `Decryption::Placeholder`). A document whose `apiVersion`, `kind` or `metadata` is encrypted
/// cannot be told apart without the key: it is left out.
pub fn placeholder(text: &str, json: bool) -> Result<Vec<Decrypted>, Error> {
    let (docs, meta) = split_metadata(text, json)?;
    Ok(docs
        .into_iter()
        .map(|doc| {
            let mut encrypted = Vec::new();
            let value = blank(doc, &mut Vec::new(), &meta.rule, &mut encrypted);
            Decrypted { value, encrypted }
        })
        .filter(|d| {
            !d.encrypted.iter().any(|p| {
                matches!(
                    p.first().map(String::as_str),
                    Some("apiVersion" | "kind" | "metadata")
                )
            })
        })
        .collect())
}

fn blank(node: Node, path: &mut Vec<String>, rule: &Rule, enc: &mut Vec<Vec<String>>) -> Value {
    match node {
        Node::Map(entries) => Value::Object(
            entries
                .into_iter()
                .map(|(k, v)| {
                    path.push(k.clone());
                    let v = blank(v, path, rule, enc);
                    path.pop();
                    (k, v)
                })
                .collect(),
        ),
        Node::Seq(items) => Value::Array(
            items
                .into_iter()
                .map(|i| blank(i, path, rule, enc))
                .collect(),
        ),
        Node::Null => Value::Null,
        _ if rule.encrypts(path) => {
            enc.push(path.clone());
            Value::String(String::new())
        }
        leaf => to_value(leaf, path).unwrap_or(Value::Null),
    }
}

/// Where a decrypted value may be: driftless holds a Secret's `data`/`stringData` and a
/// ConfigMap's `data` apart as secret data (masked, never printed). `apiVersion`, `kind`, `type`,
/// `immutable` and `metadata` may be encrypted too (sops' default rule encrypts everything), but
/// they name the object: they are shown in diffs and status like any other field. Anything else
/// encrypted is refused, and so is a Secret value in clear in a SOPS file. Returns whether the
/// object holds decrypted data (every Secret of a SOPS file does).
pub fn check_placement(value: &Value, encrypted: &[Vec<String>]) -> Result<bool, Error> {
    let kind = value
        .get("kind")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let core = value.get("apiVersion").and_then(Value::as_str) == Some("v1");
    let secret = core && kind == "Secret";
    let config_map = core && kind == "ConfigMap";
    let held = |p: &[String]| -> bool {
        match p {
            [field, _] if secret => field == "data" || field == "stringData",
            [field, _] if config_map => field == "data",
            _ => false,
        }
    };
    let mut holds = false;
    for p in encrypted {
        let naming = matches!(
            p.first().map(String::as_str),
            Some("apiVersion" | "kind" | "type" | "immutable" | "metadata")
        );
        if held(p) {
            holds = true;
        } else if !naming {
            return Err(Error::EncryptedElsewhere { path: p.join(".") });
        }
    }
    if secret {
        for field in ["data", "stringData"] {
            if let Some(Value::Object(m)) = value.get(field) {
                for k in m.keys() {
                    let path = [field.to_owned(), k.clone()];
                    if !encrypted.iter().any(|p| p[..] == path[..]) {
                        return Err(Error::SecretInClear {
                            field,
                            key: k.clone(),
                        });
                    }
                }
            }
        }
        holds = true;
    }
    Ok(holds)
}

/// One decrypted document: its value and the key paths of the values that were encrypted.
#[derive(Debug)]
pub struct Decrypted {
    pub value: Value,
    pub encrypted: Vec<Vec<String>>,
}

#[cfg(test)]
mod tests;
