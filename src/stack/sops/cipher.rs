//! Decryption: the data key opens each `ENC[AES256_GCM,…]` value (its key path as associated
//! data), and the MAC over the values in document order is checked.

use aes_gcm::aead::generic_array::GenericArray;
use aes_gcm::aead::generic_array::typenum::U32;
use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::aes::Aes256;
use base64::Engine;
use serde_json::Value;
use sha2::{Digest, Sha512};

use super::metadata::{Metadata, data_key, split_metadata};
use super::node::{Node, to_value};
use super::{AgeIdentity, Decrypted, Error, ValueProblem};

/// What sops hashes first when `mac_only_encrypted` is set.
const MAC_ONLY_ENCRYPTED_INIT: [u8; 32] = [
    0x8a, 0x3f, 0xd2, 0xad, 0x54, 0xce, 0x66, 0x52, 0x7b, 0x10, 0x34, 0xf3, 0xd1, 0x47, 0xbe, 0x0b,
    0x0b, 0x97, 0x5b, 0x3b, 0xf4, 0x4f, 0x72, 0xc6, 0xfd, 0xad, 0xec, 0x81, 0x76, 0xf2, 0x7d, 0x69,
];

/// Decrypts a SOPS file: `documents` are its parsed documents (a JSON file is one), with the
/// `sops` metadata in the first. Fails on a file without age recipients the identity opens, a
/// value that does not decrypt (tampered, or moved to another key), and a MAC that does not match.
pub fn decrypt(text: &str, json: bool, identity: &AgeIdentity) -> Result<Vec<Decrypted>, Error> {
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
        Err(_) => return Err(Error::MacUndecryptable),
    };
    if stored != computed.as_bytes() {
        return Err(Error::MacMismatch);
    }
    Ok(out)
}

/// Decrypts one `ENC[AES256_GCM,…]` value with `aad`: its type and plaintext.
fn decrypt_value(value: &str, key: &[u8], aad: &str) -> Result<(String, Vec<u8>), ValueProblem> {
    let inner = value
        .strip_prefix("ENC[AES256_GCM,")
        .and_then(|v| v.strip_suffix(']'))
        .ok_or(ValueProblem::NotEnc)?;
    let mut parts = [None; 4];
    for field in inner.split(',') {
        let (name, v) = field.split_once(':').ok_or(ValueProblem::Malformed(""))?;
        let slot = match name {
            "data" => 0,
            "iv" => 1,
            "tag" => 2,
            "type" => 3,
            _ => return Err(ValueProblem::Malformed("")),
        };
        parts[slot] = Some(v);
    }
    let [Some(data), Some(iv), Some(tag), Some(typ)] = parts else {
        return Err(ValueProblem::Malformed(""));
    };
    let b64 = |s: &str| {
        base64::engine::general_purpose::STANDARD
            .decode(s)
            .map_err(|_| ValueProblem::Malformed(" (base64)"))
    };
    let (mut data, iv, tag) = (b64(data)?, b64(iv)?, b64(tag)?);
    if iv.len() != 32 || tag.len() != 16 {
        return Err(ValueProblem::Malformed(" (iv or tag length)"));
    }
    data.extend_from_slice(&tag);
    let cipher =
        aes_gcm::AesGcm::<Aes256, U32>::new_from_slice(key).map_err(|_| ValueProblem::KeyLength)?;
    let plain = cipher
        .decrypt(
            GenericArray::from_slice(&iv),
            Payload {
                msg: &data,
                aad: aad.as_bytes(),
            },
        )
        .map_err(|_| ValueProblem::Tampered)?;
    Ok((typ.to_owned(), plain))
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
) -> Result<Value, Error> {
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
            let (typ, plain) = decrypt_value(&s, key, &aad).map_err(|e| Error::value(path, e))?;
            let text = || {
                String::from_utf8(plain.clone())
                    .map_err(|_| Error::value(path, ValueProblem::NotUtf8))
            };
            let bad = |what: &'static str| Error::value(path, ValueProblem::Invalid(what));
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
                    return Err(Error::value(
                        path,
                        ValueProblem::UnknownType(other.to_owned()),
                    ));
                }
            };
            hash.update(&mac);
            encrypted.push(path.clone());
            Ok(value)
        }
        _ => Err(Error::value(path, ValueProblem::InClear)),
    }
}
