//! The `sops` metadata of a file: which values are encrypted (the rule), the MAC, and the data
//! key encrypted to each age recipient.

use std::io::Read;

use super::node::Node;
use super::{AgeIdentity, Error};

/// The rule of the file's metadata that says which values are encrypted.
#[derive(Debug, Default)]
pub(super) struct Rule {
    unencrypted_suffix: Option<String>,
    encrypted_suffix: Option<String>,
    unencrypted_regex: Option<regex::Regex>,
    encrypted_regex: Option<regex::Regex>,
}

impl Rule {
    /// sops' `shouldBeEncrypted`: the later rules override the earlier ones.
    pub(super) fn encrypts(&self, path: &[String]) -> bool {
        let mut encrypted = true;
        if let Some(s) = &self.unencrypted_suffix
            && path.iter().any(|p| p.ends_with(s.as_str()))
        {
            encrypted = false;
        }
        if let Some(s) = &self.encrypted_suffix {
            encrypted = path.iter().any(|p| p.ends_with(s.as_str()));
        }
        if let Some(r) = &self.unencrypted_regex
            && path.iter().any(|p| r.is_match(p))
        {
            encrypted = false;
        }
        if let Some(r) = &self.encrypted_regex {
            encrypted = path.iter().any(|p| r.is_match(p));
        }
        encrypted
    }
}

/// The `sops` mapping of the first document.
pub(super) struct Metadata {
    pub(super) rule: Rule,
    pub(super) mac: String,
    pub(super) lastmodified: String,
    pub(super) mac_only_encrypted: bool,
    /// `enc` of each age recipient: the data key, age-encrypted and armored.
    pub(super) age: Vec<String>,
}

/// The documents (without `sops`) and the metadata of the first.
pub(super) fn split_metadata(text: &str, json: bool) -> Result<(Vec<Node>, Metadata), Error> {
    let mut docs: Vec<Node> = if json {
        vec![serde_json::from_str(text).map_err(|e| Error::Json(e.to_string()))?]
    } else {
        crate::yaml::parse_documents_as::<Node>(std::path::Path::new(""), text)
            .map_err(|e| Error::Yaml(e.message))?
            .into_iter()
            .filter(|d| !matches!(d, Node::Null))
            .collect()
    };
    let mut metadata = None;
    for (i, doc) in docs.iter_mut().enumerate() {
        let Node::Map(entries) = doc else {
            return Err(Error::NotAMapping { document: i + 1 });
        };
        if let Some(pos) = entries.iter().position(|(k, _)| k == "sops") {
            let (_, meta) = entries.remove(pos);
            if i == 0 {
                metadata = Some(meta);
            }
        }
    }
    let meta = read_metadata(metadata.ok_or(Error::NoMetadata)?)?;
    Ok((docs, meta))
}

fn read_metadata(node: Node) -> Result<Metadata, Error> {
    let Node::Map(entries) = node else {
        return Err(Error::MetadataNotAMapping);
    };
    let text = |name: &str| -> Option<String> {
        entries
            .iter()
            .find(|(k, _)| k == name)
            .and_then(|(_, v)| match v {
                Node::Str(s) if !s.is_empty() => Some(s.clone()),
                _ => None,
            })
    };
    let regex = |name: &'static str| -> Result<Option<regex::Regex>, Error> {
        text(name)
            .map(|r| {
                regex::Regex::new(&r).map_err(|e| Error::Regex {
                    field: name,
                    message: e.to_string(),
                })
            })
            .transpose()
    };
    for unsupported in ["encrypted_comment_regex", "unencrypted_comment_regex"] {
        if text(unsupported).is_some() {
            return Err(Error::Unsupported { field: unsupported });
        }
    }
    let mut rule = Rule {
        unencrypted_suffix: text("unencrypted_suffix"),
        encrypted_suffix: text("encrypted_suffix"),
        unencrypted_regex: regex("unencrypted_regex")?,
        encrypted_regex: regex("encrypted_regex")?,
    };
    if rule.unencrypted_suffix.is_none()
        && rule.encrypted_suffix.is_none()
        && rule.unencrypted_regex.is_none()
        && rule.encrypted_regex.is_none()
    {
        rule.unencrypted_suffix = Some("_unencrypted".to_owned());
    }
    let age = entries
        .iter()
        .find(|(k, _)| k == "age")
        .map(|(_, v)| match v {
            Node::Seq(items) => items
                .iter()
                .filter_map(|i| match i {
                    Node::Map(m) => m.iter().find(|(k, _)| k == "enc").and_then(|(_, v)| {
                        if let Node::Str(s) = v {
                            Some(s.clone())
                        } else {
                            None
                        }
                    }),
                    _ => None,
                })
                .collect(),
            _ => Vec::new(),
        })
        .unwrap_or_default();
    Ok(Metadata {
        rule,
        mac: text("mac").ok_or(Error::NoMac)?,
        lastmodified: text("lastmodified").ok_or(Error::NoLastModified)?,
        mac_only_encrypted: entries
            .iter()
            .any(|(k, v)| k == "mac_only_encrypted" && matches!(v, Node::Bool(true))),
        age,
    })
}

/// The 32-byte data key, from the first age recipient the identity opens.
pub(super) fn data_key(meta: &Metadata, identity: &AgeIdentity) -> Result<Vec<u8>, Error> {
    if meta.age.is_empty() {
        return Err(Error::NoAgeRecipient);
    }
    for enc in &meta.age {
        let reader = age::armor::ArmoredReader::new(enc.as_bytes());
        let Ok(decryptor) = age::Decryptor::new(reader) else {
            continue;
        };
        let identities = identity.keys();
        let Ok(stream) = decryptor.decrypt(identities) else {
            continue;
        };
        let mut key = Vec::new();
        if stream.take(64).read_to_end(&mut key).is_ok() && key.len() == 32 {
            return Ok(key);
        }
    }
    Err(Error::WrongKey {
        recipients: meta.age.len(),
    })
}
