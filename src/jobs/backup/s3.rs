//! S3 buckets: a bucket or prefix mirrored object by object into a backup (`objects/<key>`), each
//! object streamed in bounded memory with its sha256 (encrypted on the way when the backup store
//! encrypts), read back after upload; restored object by object into a bucket/prefix (decrypted
//! on the way) with every hash checked against the manifest.

use futures::{StreamExt, TryStreamExt};

use super::manifest::{FileEntry, Manifest};
use super::store::{self, Sink, Store};

/// Errors of a mirror or restore.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Store(#[from] store::Error),
    #[error(
        "{target} is not empty ({objects} objects, e.g. {example}): pass --force to restore over it (objects not in the backup are then deleted)"
    )]
    NotEmpty {
        target: String,
        objects: usize,
        example: String,
    },
    #[error("restored {key} differs from the backup: sha256 {got}, manifest says {want}")]
    Mismatch {
        key: String,
        got: String,
        want: String,
    },
    #[error("drill: {0}")]
    Drill(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Objects copied at once.
const CONCURRENCY: usize = 4;
/// Where objects go inside a backup.
pub const OBJECTS: &str = "objects";

/// Streams `from_rel` of `from` into `to_dir/to_name` of `to`; returns the entry (hash of what
/// passed) after reading the stored copy back.
pub async fn copy(
    from: &Store,
    from_rel: &str,
    to: &Store,
    to_dir: &str,
    to_name: &str,
) -> Result<FileEntry, store::Error> {
    let mut w = to.writer(to_dir, to_name).await?;
    if let Err(e) = from.stream_into(from_rel, &mut w).await {
        w.abort().await;
        return Err(e);
    }
    let entry = w.finish().await?;
    to.verify(&entry, to_dir).await?;
    Ok(entry)
}

/// Mirrors every object of `source` into backup `id` of `dest`.
pub async fn mirror(source: &Store, dest: &Store, id: &str) -> Result<Vec<FileEntry>> {
    let objects = source.list("").await?;
    let dir = store::join(id, OBJECTS);
    // Collected first: a lazily mapped iterator inside the stream would make the run's future
    // not provably `Send`.
    let copies: Vec<_> = objects
        .into_iter()
        .map(|(key, _)| {
            let dir = dir.clone();
            async move { copy(source, &key, dest, &dir, &key).await }
        })
        .collect();
    let mut files: Vec<FileEntry> = futures::stream::iter(copies)
        .buffer_unordered(CONCURRENCY)
        .try_collect()
        .await?;
    for f in files.iter_mut() {
        f.name = store::join(OBJECTS, &f.name);
    }
    files.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(files)
}

/// Restores backup `manifest` of `backups` into `target`. A non-empty target is refused unless
/// `force`; with it, objects the backup does not hold are deleted, so the target ends equal to
/// the backup.
pub async fn restore(
    backups: &Store,
    manifest: &Manifest,
    target: &Store,
    force: bool,
) -> Result<serde_json::Value> {
    let existing = target.list("").await?;
    let keys: Vec<&str> = manifest
        .files
        .iter()
        .filter_map(|f| f.name.strip_prefix("objects/"))
        .collect();
    if !existing.is_empty() {
        if !force {
            return Err(Error::NotEmpty {
                target: target.name().to_owned(),
                objects: existing.len(),
                example: existing[0].0.clone(),
            });
        }
        for (key, _) in &existing {
            if !keys.contains(&key.as_str()) {
                target.delete(key).await?;
            }
        }
    }
    let copies: Vec<_> = manifest
        .files
        .iter()
        .filter_map(|f| {
            let key = f.name.strip_prefix("objects/")?.to_owned();
            Some(async move {
                let got = restore_one(backups, &manifest.id, f, target, &key).await?;
                let want = f.content();
                if got.sha256 != want.sha256 {
                    return Err(Error::Mismatch {
                        key,
                        got: got.sha256,
                        want: want.sha256,
                    });
                }
                Ok(got.bytes)
            })
        })
        .collect();
    let sizes: Vec<u64> = futures::stream::iter(copies)
        .buffer_unordered(CONCURRENCY)
        .try_collect()
        .await?;
    Ok(serde_json::json!({
        "target": target.name(),
        "objects": sizes.len(),
        "bytes": sizes.iter().sum::<u64>(),
        "deletedExtra": force,
    }))
}

/// Streams one file of a backup (decrypted when encrypted, both digests checked) into `key` of
/// `target`; returns the entry of what was written there, after reading it back.
async fn restore_one(
    backups: &Store,
    id: &str,
    f: &FileEntry,
    target: &Store,
    key: &str,
) -> Result<FileEntry, store::Error> {
    let mut w = target.writer("", key).await?;
    if let Err(e) = backups.read_entry(id, f, Sink::Upload(&mut w)).await {
        w.abort().await;
        return Err(e);
    }
    let entry = w.finish().await?;
    target.verify(&entry, "").await?;
    Ok(entry)
}

/// The restore drill: restores into `scratch` (emptied first and afterwards) and reads every
/// restored object back, comparing its sha256 with the manifest's (the live source may have
/// moved on since the backup; the manifest is the reference). An encrypted backup is not
/// restored into the destination (decrypted data would be stored beside the backups): every
/// object is decrypted with the host's identity in memory and both its digests checked.
pub async fn drill(
    backups: &Store,
    manifest: &Manifest,
    scratch: &Store,
) -> Result<serde_json::Value> {
    if manifest.encryption.is_some() {
        let mut bytes = 0u64;
        for f in &manifest.files {
            backups.read_entry(&manifest.id, f, Sink::Discard).await?;
            bytes += f.content().bytes;
        }
        return Ok(serde_json::json!({
            "objects": manifest.files.len(),
            "bytes": bytes,
            "result": "every object decrypted with the host's identity; its sha256 and its plaintext's equal the manifest's",
        }));
    }
    scratch.remove_prefix("").await?;
    let result = async {
        restore(backups, manifest, scratch, false).await?;
        let mut differ = Vec::new();
        for f in &manifest.files {
            let Some(key) = f.name.strip_prefix("objects/") else {
                continue;
            };
            let (_, restored) = scratch.read_into(key, Sink::Discard).await?;
            if restored != f.sha256 {
                differ.push(format!("{key}: restored copy differs"));
            }
        }
        if differ.is_empty() {
            Ok(serde_json::json!({
                "scratch": scratch.name(),
                "objects": manifest.files.len(),
                "result": "every restored object's sha256 equals the manifest's",
            }))
        } else {
            Err(Error::Drill(differ.join("; ")))
        }
    }
    .await;
    let _ = scratch.remove_prefix("").await;
    result
}
