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

use std::io::Read;

use aes_gcm::aead::generic_array::GenericArray;
use aes_gcm::aead::generic_array::typenum::U32;
use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::aes::Aes256;
use base64::Engine;
use secrecy::{ExposeSecret, SecretString};
use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::Value;
use sha2::{Digest, Sha512};

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
    pub fn parse(text: &SecretString) -> Result<AgeIdentity, String> {
        let mut keys = Vec::new();
        for (i, line) in text.expose_secret().lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let key = line.parse::<age::x25519::Identity>().map_err(|_| {
                format!("line {} is not an age identity (AGE-SECRET-KEY-1…)", i + 1)
            })?;
            keys.push(key);
        }
        if keys.is_empty() {
            return Err("holds no age identity (AGE-SECRET-KEY-1…)".to_owned());
        }
        Ok(AgeIdentity(keys))
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
pub fn placeholder(text: &str, json: bool) -> Result<Vec<Decrypted>, String> {
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
pub fn check_placement(value: &Value, encrypted: &[Vec<String>]) -> Result<bool, String> {
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
            return Err(format!(
                "{} is encrypted: driftless decrypts only a Secret's data and stringData and a ConfigMap's data (encrypt with --encrypted-regex '^(data|stringData)$')",
                p.join(".")
            ));
        }
    }
    if secret {
        for field in ["data", "stringData"] {
            if let Some(Value::Object(m)) = value.get(field) {
                for k in m.keys() {
                    let path = [field.to_owned(), k.clone()];
                    if !encrypted.iter().any(|p| p[..] == path[..]) {
                        return Err(format!(
                            "{field}.{k} of the Secret is in clear in a SOPS file: encrypt it (a Secret from a SOPS file is applied only when all its values were encrypted)"
                        ));
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

/// A document as parsed, keys in file order (the MAC depends on it).
#[derive(Debug, Clone)]
enum Node {
    Null,
    Bool(bool),
    Int(i64),
    UInt(u64),
    Float(f64),
    Str(String),
    Seq(Vec<Node>),
    Map(Vec<(String, Node)>),
}

impl<'de> Deserialize<'de> for Node {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Node, D::Error> {
        d.deserialize_any(NodeVisitor)
    }
}

struct NodeVisitor;

impl<'de> Visitor<'de> for NodeVisitor {
    type Value = Node;
    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a YAML or JSON value")
    }
    fn visit_unit<E>(self) -> Result<Node, E> {
        Ok(Node::Null)
    }
    fn visit_none<E>(self) -> Result<Node, E> {
        Ok(Node::Null)
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Node, D::Error> {
        Node::deserialize(d)
    }
    fn visit_bool<E>(self, v: bool) -> Result<Node, E> {
        Ok(Node::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Node, E> {
        Ok(Node::Int(v))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Node, E> {
        Ok(i64::try_from(v).map_or(Node::UInt(v), Node::Int))
    }
    fn visit_f64<E>(self, v: f64) -> Result<Node, E> {
        Ok(Node::Float(v))
    }
    fn visit_str<E>(self, v: &str) -> Result<Node, E> {
        Ok(Node::Str(v.to_owned()))
    }
    fn visit_string<E>(self, v: String) -> Result<Node, E> {
        Ok(Node::Str(v))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Node, A::Error> {
        let mut out = Vec::new();
        while let Some(v) = seq.next_element::<Node>()? {
            out.push(v);
        }
        Ok(Node::Seq(out))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Node, A::Error> {
        let mut out = Vec::new();
        while let Some((k, v)) = map.next_entry::<Node, Node>()? {
            let Node::Str(k) = k else {
                return Err(de::Error::custom("a mapping key is not a string"));
            };
            out.push((k, v));
        }
        Ok(Node::Map(out))
    }
}

/// The rule of the file's metadata that says which values are encrypted.
#[derive(Debug, Default)]
struct Rule {
    unencrypted_suffix: Option<String>,
    encrypted_suffix: Option<String>,
    unencrypted_regex: Option<regex::Regex>,
    encrypted_regex: Option<regex::Regex>,
}

impl Rule {
    /// sops' `shouldBeEncrypted`: the later rules override the earlier ones.
    fn encrypts(&self, path: &[String]) -> bool {
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

struct Metadata {
    rule: Rule,
    mac: String,
    lastmodified: String,
    mac_only_encrypted: bool,
    /// `enc` of each age recipient: the data key, age-encrypted and armored.
    age: Vec<String>,
}

const MAC_ONLY_ENCRYPTED_INIT: [u8; 32] = [
    0x8a, 0x3f, 0xd2, 0xad, 0x54, 0xce, 0x66, 0x52, 0x7b, 0x10, 0x34, 0xf3, 0xd1, 0x47, 0xbe, 0x0b,
    0x0b, 0x97, 0x5b, 0x3b, 0xf4, 0x4f, 0x72, 0xc6, 0xfd, 0xad, 0xec, 0x81, 0x76, 0xf2, 0x7d, 0x69,
];

/// Decrypts a SOPS file: `documents` are its parsed documents (a JSON file is one), with the
/// `sops` metadata in the first. Fails on a file without age recipients the identity opens, a
/// value that does not decrypt (tampered, or moved to another key), and a MAC that does not match.
pub fn decrypt(text: &str, json: bool, identity: &AgeIdentity) -> Result<Vec<Decrypted>, String> {
    let (docs, meta) = split_metadata(text, json)?;
    let key = data_key(&meta, identity)?;
    let mut hash = Sha512::new();
    if meta.mac_only_encrypted {
        hash.update(MAC_ONLY_ENCRYPTED_INIT);
    }
    let mut out = Vec::with_capacity(docs.len());
    for doc in docs {
        let mut encrypted = Vec::new();
        let mut path = Vec::new();
        let value = walk(doc, &mut path, &meta, &key, &mut hash, &mut encrypted)?;
        out.push(Decrypted { value, encrypted });
    }
    let computed: String = hash.finalize().iter().map(|b| format!("{b:02X}")).collect();
    let stored = match decrypt_value(&meta.mac, &key, &meta.lastmodified) {
        Ok((_, bytes)) => bytes,
        Err(_) => {
            return Err(
                "the MAC does not decrypt: the file's metadata was changed (or lastmodified edited) after it was encrypted"
                    .to_owned(),
            );
        }
    };
    if stored != computed.as_bytes() {
        return Err(
            "MAC mismatch: the file's values were changed after it was encrypted (re-encrypt it with sops)"
                .to_owned(),
        );
    }
    Ok(out)
}

/// The documents (without `sops`) and the metadata of the first.
fn split_metadata(text: &str, json: bool) -> Result<(Vec<Node>, Metadata), String> {
    let mut docs: Vec<Node> = if json {
        vec![serde_json::from_str(text).map_err(|e| format!("invalid JSON: {e}"))?]
    } else {
        crate::yaml::parse_documents_as::<Node>(std::path::Path::new(""), text)
            .map_err(|e| e.message)?
            .into_iter()
            .filter(|d| !matches!(d, Node::Null))
            .collect()
    };
    let mut metadata = None;
    for (i, doc) in docs.iter_mut().enumerate() {
        let Node::Map(entries) = doc else {
            return Err(format!("document {} is not a mapping", i + 1));
        };
        if let Some(pos) = entries.iter().position(|(k, _)| k == "sops") {
            let (_, meta) = entries.remove(pos);
            if i == 0 {
                metadata = Some(meta);
            }
        }
    }
    let meta = read_metadata(metadata.ok_or("no `sops` metadata in the first document")?)?;
    Ok((docs, meta))
}

fn read_metadata(node: Node) -> Result<Metadata, String> {
    let Node::Map(entries) = node else {
        return Err("`sops` is not a mapping".to_owned());
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
    let regex = |name: &str| -> Result<Option<regex::Regex>, String> {
        text(name)
            .map(|r| regex::Regex::new(&r).map_err(|e| format!("sops.{name}: {e}")))
            .transpose()
    };
    for unsupported in ["encrypted_comment_regex", "unencrypted_comment_regex"] {
        if text(unsupported).is_some() {
            return Err(format!(
                "sops.{unsupported} is not supported (comments are not read): use encrypted_regex or a suffix"
            ));
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
        mac: text("mac").ok_or("sops.mac is missing: the file cannot be checked")?,
        lastmodified: text("lastmodified").ok_or("sops.lastmodified is missing")?,
        mac_only_encrypted: entries
            .iter()
            .any(|(k, v)| k == "mac_only_encrypted" && matches!(v, Node::Bool(true))),
        age,
    })
}

/// The 32-byte data key, from the first age recipient the identity opens.
fn data_key(meta: &Metadata, identity: &AgeIdentity) -> Result<Vec<u8>, String> {
    if meta.age.is_empty() {
        return Err(
            "the file has no age recipient (driftless decrypts age only; add the host's age public key with `sops updatekeys` or --age)"
                .to_owned(),
        );
    }
    for enc in &meta.age {
        let reader = age::armor::ArmoredReader::new(enc.as_bytes());
        let Ok(decryptor) = age::Decryptor::new(reader) else {
            continue;
        };
        let identities = identity.0.iter().map(|i| i as &dyn age::Identity);
        let Ok(stream) = decryptor.decrypt(identities) else {
            continue;
        };
        let mut key = Vec::new();
        if stream.take(64).read_to_end(&mut key).is_ok() && key.len() == 32 {
            return Ok(key);
        }
    }
    Err(format!(
        "none of its {} age recipient(s) is the host's identity (sops.ageKeyFile): wrong key, or the file was not encrypted for this host",
        meta.age.len()
    ))
}

/// Decrypts one `ENC[AES256_GCM,…]` value with `aad`: its type and plaintext.
fn decrypt_value(value: &str, key: &[u8], aad: &str) -> Result<(String, Vec<u8>), String> {
    let inner = value
        .strip_prefix("ENC[AES256_GCM,")
        .and_then(|v| v.strip_suffix(']'))
        .ok_or("not an ENC[AES256_GCM,…] value")?;
    let mut parts = [None; 4];
    for field in inner.split(',') {
        let (name, v) = field.split_once(':').ok_or("malformed ENC value")?;
        let slot = match name {
            "data" => 0,
            "iv" => 1,
            "tag" => 2,
            "type" => 3,
            _ => return Err("malformed ENC value".to_owned()),
        };
        parts[slot] = Some(v);
    }
    let [Some(data), Some(iv), Some(tag), Some(typ)] = parts else {
        return Err("malformed ENC value".to_owned());
    };
    let b64 = |s: &str| {
        base64::engine::general_purpose::STANDARD
            .decode(s)
            .map_err(|_| "malformed ENC value (base64)".to_owned())
    };
    let (mut data, iv, tag) = (b64(data)?, b64(iv)?, b64(tag)?);
    if iv.len() != 32 || tag.len() != 16 {
        return Err("malformed ENC value (iv or tag length)".to_owned());
    }
    data.extend_from_slice(&tag);
    let cipher = aes_gcm::AesGcm::<Aes256, U32>::new_from_slice(key)
        .map_err(|_| "bad data key length".to_owned())?;
    let plain = cipher
        .decrypt(
            GenericArray::from_slice(&iv),
            Payload {
                msg: &data,
                aad: aad.as_bytes(),
            },
        )
        .map_err(|_| "does not decrypt (tampered, or moved to another key)".to_owned())?;
    Ok((typ.to_owned(), plain))
}

fn path_text(path: &[String]) -> String {
    if path.is_empty() {
        "(top)".to_owned()
    } else {
        path.join(".")
    }
}

/// Walks a document as sops does (sequence items share their parent's path), decrypting the
/// values the rule encrypts and feeding the MAC.
fn walk(
    node: Node,
    path: &mut Vec<String>,
    meta: &Metadata,
    key: &[u8],
    hash: &mut Sha512,
    encrypted: &mut Vec<Vec<String>>,
) -> Result<Value, String> {
    let leaf_bytes = |n: &Node| -> Option<Vec<u8>> {
        match n {
            Node::Null | Node::Seq(_) | Node::Map(_) => None,
            Node::Bool(b) => Some(if *b {
                b"True".to_vec()
            } else {
                b"False".to_vec()
            }),
            Node::Int(i) => Some(i.to_string().into_bytes()),
            Node::UInt(u) => Some(u.to_string().into_bytes()),
            Node::Float(f) => Some(f.to_string().into_bytes()),
            Node::Str(s) => Some(s.clone().into_bytes()),
        }
    };
    match node {
        Node::Map(entries) => {
            let mut out = serde_json::Map::new();
            for (k, v) in entries {
                path.push(k.clone());
                let v = walk(v, path, meta, key, hash, encrypted)?;
                path.pop();
                out.insert(k, v);
            }
            Ok(Value::Object(out))
        }
        Node::Seq(items) => {
            let mut out = Vec::with_capacity(items.len());
            for item in items {
                // An encrypted comment inside a sequence decrypts to nothing.
                if let Node::Str(s) = &item
                    && s.starts_with("ENC[")
                    && s.ends_with(",type:comment]")
                {
                    continue;
                }
                out.push(walk(item, path, meta, key, hash, encrypted)?);
            }
            Ok(Value::Array(out))
        }
        Node::Null => Ok(Value::Null),
        leaf if !meta.rule.encrypts(path) => {
            if !meta.mac_only_encrypted
                && let Some(bytes) = leaf_bytes(&leaf)
            {
                hash.update(&bytes);
            }
            to_value(leaf, path)
        }
        Node::Str(s) if s.is_empty() => {
            encrypted.push(path.clone());
            Ok(Value::String(String::new()))
        }
        Node::Str(s) => {
            let aad = format!("{}:", path.join(":"));
            let (typ, plain) =
                decrypt_value(&s, key, &aad).map_err(|e| format!("{}: {e}", path_text(path)))?;
            let text = || {
                String::from_utf8(plain.clone())
                    .map_err(|_| format!("{}: decrypted value is not UTF-8", path_text(path)))
            };
            let bad =
                |what: &str| format!("{}: decrypted value is not a valid {what}", path_text(path));
            let (value, mac): (Value, Vec<u8>) = match typ.as_str() {
                "str" | "bytes" | "time" => (Value::String(text()?), plain.clone()),
                "int" => {
                    let i: i64 = text()?.parse().map_err(|_| bad("int"))?;
                    (Value::from(i), i.to_string().into_bytes())
                }
                "float" => {
                    let f: f64 = text()?.parse().map_err(|_| bad("float"))?;
                    let n = serde_json::Number::from_f64(f).ok_or_else(|| bad("float"))?;
                    (Value::Number(n), f.to_string().into_bytes())
                }
                "bool" => {
                    let b = match text()?.as_str() {
                        "1" | "t" | "T" | "TRUE" | "true" | "True" => true,
                        "0" | "f" | "F" | "FALSE" | "false" | "False" => false,
                        _ => return Err(bad("bool")),
                    };
                    let mac = if b {
                        b"True".to_vec()
                    } else {
                        b"False".to_vec()
                    };
                    (Value::Bool(b), mac)
                }
                other => {
                    return Err(format!(
                        "{}: unknown encrypted type {other:?}",
                        path_text(path)
                    ));
                }
            };
            hash.update(&mac);
            encrypted.push(path.clone());
            Ok(value)
        }
        _ => Err(format!(
            "{}: the file's rule encrypts this value, but it is in clear (edited after encryption?)",
            path_text(path)
        )),
    }
}

fn to_value(node: Node, path: &[String]) -> Result<Value, String> {
    Ok(match node {
        Node::Null => Value::Null,
        Node::Bool(b) => Value::Bool(b),
        Node::Int(i) => Value::from(i),
        Node::UInt(u) => Value::from(u),
        Node::Float(f) => Value::Number(
            serde_json::Number::from_f64(f)
                .ok_or_else(|| format!("{}: not a finite number", path_text(path)))?,
        ),
        Node::Str(s) => Value::String(s),
        Node::Seq(_) | Node::Map(_) => Value::Null,
    })
}

#[cfg(test)]
mod tests;
