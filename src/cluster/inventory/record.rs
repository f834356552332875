//! The inventory record: its ConfigMap format (JSON text, or gzip in `binaryData` when large),
//! how a record read from the cluster is checked (it is untrusted input: anyone who can write to
//! `driftless-system` can forge or break one), and the three-way merge of two writers' changes.
//! Pure: `inventory` does the reading and writing.

use std::collections::BTreeMap;
use std::io::Read as _;

use k8s_openapi::api::core::v1::ConfigMap;
use serde::{Deserialize, Serialize};

use super::{DEFAULT_INSTANCE, Entry, HookRecord, INSTANCE_LABEL, INVENTORY_LABEL, Inventory};
use super::{NAMESPACE, ReadState};
use crate::cluster::{Error, Result};

pub(super) const DATA_KEY: &str = "objects.json";
/// The same record gzip-compressed, in `binaryData`: used when the JSON would not leave room in
/// a ConfigMap (1 MiB in all), e.g. a stack of several thousand objects.
pub(super) const GZIP_KEY: &str = "objects.json.gz";
/// Largest plain JSON record written as text; larger ones are compressed.
const PLAIN_LIMIT: usize = 768 * 1024;
/// Compressed size from which a record is compressed again at the smallest setting (level 6):
/// the ConfigMap holds 1 MiB of data.
const COMPRESS_HARDER_FROM: usize = 960 * 1024;
/// Largest record read, decompressed: some 150 000 objects. A gzip bomb stops here.
pub(super) const READ_LIMIT: u64 = 32 * 1024 * 1024;

#[derive(Serialize, Deserialize)]
struct Stored {
    version: u32,
    /// The source the stack was last applied from (repository URL or path).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    source: Option<String>,
    objects: Vec<Entry>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    hooks: BTreeMap<String, HookRecord>,
}

/// The name of a stack's inventory ConfigMap.
pub(super) fn configmap_name(stack: &str) -> String {
    format!("inventory-{stack}")
}

/// Reads an inventory ConfigMap named `name`. Anything unexpected — a name that does not match
/// its stack label, JSON that does not parse, a record over `limit` bytes decompressed, an entry
/// whose fields could not name a real object — makes the whole record unreadable.
pub(super) fn decode(name: &str, cm: &ConfigMap, limit: u64) -> Result<Inventory> {
    let unreadable = |e: String| Error::Inventory {
        name: format!("{NAMESPACE}/{name}"),
        message: format!(
            "unreadable ({e}); it was not written by this driftless version or was edited by hand: nothing of its stack is applied or deleted until it is fixed or deleted"
        ),
    };
    let labels = cm.metadata.labels.as_ref();
    let stack = labels
        .and_then(|l| l.get(INVENTORY_LABEL))
        .cloned()
        .unwrap_or_else(|| name.trim_start_matches("inventory-").to_owned());
    if configmap_name(&stack) != name {
        return Err(unreadable(format!(
            "its label {INVENTORY_LABEL}={stack} names another stack"
        )));
    }
    let owner = labels
        .and_then(|l| l.get(INSTANCE_LABEL))
        .cloned()
        .unwrap_or_else(|| DEFAULT_INSTANCE.to_owned());
    let compressed = cm.binary_data.as_ref().and_then(|d| d.get(GZIP_KEY));
    let text = match compressed {
        Some(bytes) => {
            let mut text = String::new();
            flate2::read::GzDecoder::new(bytes.0.as_slice())
                .take(limit + 1)
                .read_to_string(&mut text)
                .map_err(|e| unreadable(e.to_string()))?;
            if text.len() as u64 > limit {
                return Err(unreadable(format!(
                    "more than {} MiB decompressed",
                    limit / (1024 * 1024)
                )));
            }
            text
        }
        None => cm
            .data
            .as_ref()
            .and_then(|d| d.get(DATA_KEY))
            .cloned()
            .unwrap_or_default(),
    };
    let read = cm.metadata.resource_version.clone().map(|rv| ReadState {
        resource_version: rv,
        ..ReadState::default()
    });
    let mut inventory = Inventory {
        stack,
        owner,
        ..Inventory::default()
    };
    if !text.is_empty() {
        let stored: Stored = serde_json::from_str(&text).map_err(|e| unreadable(e.to_string()))?;
        for e in &stored.objects {
            check_entry(e).map_err(|f| unreadable(f.to_string()))?;
        }
        for key in stored.hooks.keys() {
            check_hook_key(key).map_err(|f| unreadable(f.to_string()))?;
        }
        inventory.source = stored.source;
        inventory.entries =
            std::sync::Arc::new(stored.objects.into_iter().map(|e| (e.key(), e)).collect());
        inventory.hooks = stored.hooks;
    }
    inventory.read = read.map(|r| ReadState {
        entries: std::sync::Arc::clone(&inventory.entries),
        hooks: std::sync::Arc::new(inventory.hooks.clone()),
        ..r
    });
    Ok(inventory)
}

/// Whether `name` can be a path segment of an API request for exactly that object (what the
/// API server itself requires of names): a forged name must not lead a read or a delete
/// anywhere else.
fn is_path_segment(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name != "."
        && name != ".."
        && !name.contains(['/', '%', '?', '#'])
        && !name.chars().any(char::is_control)
}

/// What in a stored record cannot be an object's identity (a forged or corrupted record).
#[derive(Debug, thiserror::Error)]
enum Forged {
    #[error("entry {0:?} is not an object's identity")]
    Entry(String),
    #[error("hook {0:?} is not a namespace/name")]
    Hook(String),
}

fn check_entry(e: &Entry) -> std::result::Result<(), Forged> {
    let group = e.api_version.rsplit_once('/').map_or("", |(g, _)| g);
    let kind_ok = !e.kind.is_empty() && e.kind.chars().all(|c| c.is_ascii_alphanumeric());
    let version_ok = !e.api_version.is_empty() && e.api_version.matches('/').count() <= 1;
    let namespace_ok = e
        .namespace
        .as_deref()
        .is_none_or(crate::stack::load::is_dns_label);
    if !(kind_ok && version_ok && namespace_ok && is_path_segment(&e.name) && group == e.group) {
        return Err(Forged::Entry(format!("{}/{}", e.api_version, e.key())));
    }
    Ok(())
}

fn check_hook_key(key: &str) -> std::result::Result<(), Forged> {
    match key.split_once('/') {
        Some((ns, name)) if crate::stack::load::is_dns_label(ns) && is_path_segment(name) => Ok(()),
        _ => Err(Forged::Hook(key.to_owned())),
    }
}

/// The ConfigMap holding `inventory`: the record as JSON text, or gzip-compressed in
/// `binaryData` when the text is large; with the resourceVersion it was read at, so that the
/// write fails if someone wrote it since.
pub(super) fn encode(inventory: &Inventory) -> Result<ConfigMap> {
    let name = configmap_name(&inventory.stack);
    let failed = |message: String| Error::Inventory {
        name: format!("{NAMESPACE}/{name}"),
        message,
    };
    // The entries as they are (the same JSON as `Stored`, without copying thousands of them).
    #[derive(Serialize)]
    struct Writing<'a> {
        version: u32,
        #[serde(skip_serializing_if = "Option::is_none")]
        source: &'a Option<String>,
        objects: Vec<&'a Entry>,
        #[serde(skip_serializing_if = "BTreeMap::is_empty")]
        hooks: &'a BTreeMap<String, HookRecord>,
    }
    let stored = Writing {
        version: 1,
        source: &inventory.source,
        objects: inventory.entries.values().collect(),
        hooks: &inventory.hooks,
    };
    let text = serde_json::to_string(&stored).map_err(|e| failed(e.to_string()))?;
    let mut cm = serde_json::json!({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": name, "namespace": NAMESPACE,
            "labels": {INVENTORY_LABEL: inventory.stack, INSTANCE_LABEL: inventory.owner,
                "app.kubernetes.io/managed-by": "driftless"}},
    });
    if let Some(read) = &inventory.read {
        cm["metadata"]["resourceVersion"] = read.resource_version.clone().into();
    }
    // The whole content is written: the key not written is removed.
    if text.len() <= PLAIN_LIMIT {
        cm["data"] = serde_json::json!({DATA_KEY: text});
    } else {
        use base64::Engine as _;
        use std::io::Write as _;
        let compress = |level: u32| {
            let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::new(level));
            gz.write_all(text.as_bytes())
                .and_then(|()| gz.finish())
                .map_err(|e| failed(format!("cannot compress: {e}")))
        };
        // Level 3 (zlib-rs's fast strategy: at 10,000 objects 22 ms against the default 6's
        // 31 ms, 1.3 % larger); a record that comes near the ConfigMap's 1 MiB so is compressed
        // again at 6, the smallest zlib-rs makes of a record's hex digests (9 is larger). Level
        // 1 is a quicker strategy still, but left a 10,000-object record over 1 MiB.
        let mut bytes = compress(3)?;
        if bytes.len() > COMPRESS_HARDER_FROM {
            bytes = compress(6)?;
        }
        let encoded = base64::engine::general_purpose::STANDARD.encode(bytes);
        cm["binaryData"] = serde_json::json!({GZIP_KEY: encoded});
    }
    serde_json::from_value(cm).map_err(|e| failed(e.to_string()))
}

/// Three-way merge of one map: `ours` changed from `base` (what we last read or wrote), `theirs`
/// is what another writer stored meanwhile. Our changes win, except that an entry we removed
/// stays when they changed it since: a record kept by mistake costs a later prune check, a
/// record lost by mistake orphans an object.
pub(super) fn merge<K: Ord + Clone, V: PartialEq + Clone>(
    base: &BTreeMap<K, V>,
    ours: &BTreeMap<K, V>,
    theirs: &BTreeMap<K, V>,
) -> BTreeMap<K, V> {
    let mut merged = theirs.clone();
    for (k, v) in ours {
        if base.get(k) != Some(v) {
            merged.insert(k.clone(), v.clone());
        }
    }
    for (k, v) in base {
        if !ours.contains_key(k) && theirs.get(k) == Some(v) {
            merged.remove(k);
        }
    }
    merged
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stack::ObjectKey;

    fn inventory(n: usize) -> Inventory {
        let mut inv = Inventory::new("big", "default");
        for i in 0..n {
            let key = ObjectKey {
                group: String::new(),
                kind: "ConfigMap".to_owned(),
                namespace: Some(format!("ns-{}", i / 100)),
                name: format!("cm-{i}"),
            };
            let mut e = Entry::new(&key, "v1");
            // As random as real digests (they do not compress).
            let digest = |salt: &str| {
                use sha2::Digest as _;
                crate::hex::encode(&sha2::Sha256::digest(format!("{salt}{i}")))
            };
            e.hash = Some(format!("sha256:{}", digest("h")));
            e.resource_version = Some(format!("{}", 100_000 + i));
            e.signature = Some(format!("s1:{}", &digest("s")[..32]));
            inv.entries_mut().insert(key, e);
        }
        inv
    }

    fn roundtrip(inv: &Inventory) -> (ConfigMap, Inventory) {
        let cm = encode(inv).unwrap();
        let back = decode("inventory-big", &cm, READ_LIMIT).unwrap();
        (cm, back)
    }

    #[test]
    fn small_records_are_plain_json_and_large_ones_compressed() {
        let mut small = inventory(10);
        small.source = Some("/srv/stacks".to_owned());
        let (cm, back) = roundtrip(&small);
        assert!(cm.data.as_ref().unwrap().contains_key(DATA_KEY));
        assert!(cm.binary_data.is_none());
        assert_eq!(back.entries, small.entries);
        assert_eq!(back.source.as_deref(), Some("/srv/stacks"));

        // 10 000 objects: ~2 MB as text, under the ConfigMap limit compressed.
        let large = inventory(10_000);
        let (cm, back) = roundtrip(&large);
        assert!(cm.data.is_none());
        let bytes = &cm.binary_data.as_ref().unwrap()[GZIP_KEY].0;
        println!("10 000 entries: {} bytes compressed", bytes.len());
        assert!(bytes.len() < 768 * 1024, "{} bytes", bytes.len());
        assert_eq!(back.entries, large.entries);
        assert_eq!(back.stack, "big");
    }

    #[test]
    fn a_record_near_the_configmap_limit_is_compressed_harder() {
        // ~16 000 objects: over `COMPRESS_HARDER_FROM` at the quick setting.
        let near = inventory(16_000);
        let (cm, back) = roundtrip(&near);
        let bytes = &cm.binary_data.as_ref().unwrap()[GZIP_KEY].0;
        let mut quick = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::new(3));
        std::io::Write::write_all(&mut quick, &decompressed(bytes)).unwrap();
        let quick = quick.finish().unwrap();
        assert!(quick.len() > COMPRESS_HARDER_FROM, "{} bytes", quick.len());
        assert!(bytes.len() < quick.len(), "{} bytes", bytes.len());
        assert!(bytes.len() < 1024 * 1024, "{} bytes", bytes.len());
        assert_eq!(back.entries, near.entries);
    }

    fn decompressed(bytes: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(bytes)
            .read_to_end(&mut out)
            .unwrap();
        out
    }

    #[test]
    fn records_of_older_versions_have_no_signature() {
        // As a version before signatures wrote it: compared by resourceVersion, never taken as
        // unchanged for want of a signature.
        let text = r#"{"version":1,"objects":[{"group":"autoscaling","kind":"HorizontalPodAutoscaler","namespace":"web","name":"api","apiVersion":"autoscaling/v2","hash":"sha256:ab","resourceVersion":"41"}]}"#;
        let inv = decode(
            "inventory-a",
            &configmap("inventory-a", "a", text),
            READ_LIMIT,
        )
        .unwrap();
        let entry = inv.entries.values().next().unwrap();
        let last = entry.last_apply();
        assert_eq!((last.signature, last.resource_version), (None, Some("41")));
        // Written back with a signature, read again with it.
        let mut inv = inv;
        inv.entries_mut()
            .values_mut()
            .for_each(|e| e.signature = Some("s1:00".to_owned()));
        let cm = encode(&inv).unwrap();
        let back = decode("inventory-a", &cm, READ_LIMIT).unwrap();
        assert_eq!(back.entries, inv.entries);
    }

    fn configmap(name: &str, stack: &str, text: &str) -> ConfigMap {
        serde_json::from_value(serde_json::json!({"metadata": {"name": name,
            "labels": {INVENTORY_LABEL: stack}}, "data": {DATA_KEY: text}}))
        .unwrap()
    }

    #[test]
    fn hostile_records_are_unreadable_never_obeyed() {
        let entry = |group: &str, kind: &str, ns: &str, name: &str, api: &str| {
            format!(
                r#"{{"version":1,"objects":[{{"group":"{group}","kind":"{kind}","namespace":"{ns}","name":"{name}","apiVersion":"{api}"}}]}}"#
            )
        };
        let good = entry("apps", "Deployment", "web", "api", "apps/v1");
        let cases = [
            ("inventory-a", "a", good.clone(), None),
            ("inventory-a", "b", good.clone(), Some("names another stack")),
            ("inventory-a", "a", "{\"version\": 1, \"objects\": [".to_owned(), Some("unreadable")),
            ("inventory-a", "a", entry("", "Deployment", "web", "api", "apps/v1"), Some("not an object's identity")),
            ("inventory-a", "a", entry("", "ConfigMap", "web", "../../secrets/x", "v1"), Some("not an object's identity")),
            ("inventory-a", "a", entry("", "ConfigMap", "a/b", "x", "v1"), Some("not an object's identity")),
            ("inventory-a", "a", entry("", "ConfigMap", "web", "", "v1"), Some("not an object's identity")),
            ("inventory-a", "a", entry("", "Config/Map", "web", "x", "v1"), Some("not an object's identity")),
            ("inventory-a", "a", r#"{"version":1,"objects":[],"hooks":{"../x":{"hash":"h","succeeded":true,"finishedAt":"t"}}}"#.to_owned(), Some("is not a namespace/name")),
        ];
        for (name, stack, text, want) in cases {
            let got = decode(name, &configmap(name, stack, &text), READ_LIMIT);
            match (got, want) {
                (Ok(inv), None) => assert_eq!(inv.entries.len(), 1),
                (Err(e), Some(part)) => assert!(e.to_string().contains(part), "{text}: {e}"),
                (got, want) => panic!("{text}: {got:?}, wanted {want:?}"),
            }
        }
    }

    #[test]
    fn a_gzip_bomb_stops_at_the_limit() {
        use std::io::Write as _;
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        gz.write_all(&vec![b' '; 3 * 1024 * 1024]).unwrap();
        let bytes = gz.finish().unwrap();
        let cm: ConfigMap = serde_json::from_value(serde_json::json!({"metadata": {"name": "inventory-a",
            "labels": {INVENTORY_LABEL: "a"}}, "binaryData": {GZIP_KEY: base64::Engine::encode(&base64::engine::general_purpose::STANDARD, &bytes)}}))
        .unwrap();
        let err = decode("inventory-a", &cm, 1024 * 1024)
            .unwrap_err()
            .to_string();
        assert!(err.contains("more than 1 MiB decompressed"), "{err}");
    }

    #[test]
    fn merges_keep_both_writers_changes() {
        let m = |pairs: &[(&str, u8)]| -> BTreeMap<String, u8> {
            pairs.iter().map(|(k, v)| ((*k).to_owned(), *v)).collect()
        };
        let cases = [
            // (base, ours, theirs, merged)
            (
                "both add",
                m(&[]),
                m(&[("x", 1)]),
                m(&[("y", 1)]),
                m(&[("x", 1), ("y", 1)]),
            ),
            (
                "we update",
                m(&[("x", 1)]),
                m(&[("x", 2)]),
                m(&[("x", 1), ("y", 1)]),
                m(&[("x", 2), ("y", 1)]),
            ),
            (
                "they update",
                m(&[("x", 1)]),
                m(&[("x", 1)]),
                m(&[("x", 3)]),
                m(&[("x", 3)]),
            ),
            (
                "both update: ours",
                m(&[("x", 1)]),
                m(&[("x", 2)]),
                m(&[("x", 3)]),
                m(&[("x", 2)]),
            ),
            (
                "we remove",
                m(&[("x", 1), ("y", 1)]),
                m(&[("y", 1)]),
                m(&[("x", 1), ("y", 1), ("z", 1)]),
                m(&[("y", 1), ("z", 1)]),
            ),
            (
                "we remove, they changed it",
                m(&[("x", 1)]),
                m(&[]),
                m(&[("x", 2)]),
                m(&[("x", 2)]),
            ),
            (
                "they removed",
                m(&[("x", 1)]),
                m(&[("x", 1)]),
                m(&[]),
                m(&[]),
            ),
            ("both remove", m(&[("x", 1)]), m(&[]), m(&[]), m(&[])),
        ];
        for (what, base, ours, theirs, want) in cases {
            assert_eq!(merge(&base, &ours, &theirs), want, "{what}");
        }
    }
}
