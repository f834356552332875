//! What a destination holds for one job: complete backups (a readable manifest), incomplete
//! ones (files without one), and removal manifest-first, so a removal cut short leaves an
//! incomplete backup, never a complete one with files missing.

use super::manifest::{Listing, MANIFEST, Manifest};
use super::store::{Error, Result, Store, join};

/// Complete and incomplete backups of the job.
pub async fn listing(store: &Store) -> Result<Listing> {
    let mut ids: Vec<String> = Vec::new();
    let mut with_manifest: Vec<String> = Vec::new();
    for (key, _) in store.list("").await? {
        let Some((id, rest)) = key.split_once('/') else {
            continue;
        };
        if ids.last().map(String::as_str) != Some(id) {
            ids.push(id.to_owned());
        }
        if rest == MANIFEST {
            with_manifest.push(id.to_owned());
        }
    }
    // Local directories can hold only staging files of an upload cut short: object_store
    // does not list them, so look at the directories themselves.
    if let Some(dir) = store.local_dir()
        && let Ok(entries) = std::fs::read_dir(dir)
    {
        for e in entries.flatten() {
            if let Some(name) = e.file_name().to_str()
                && e.path().is_dir()
                && !ids.iter().any(|i| i == name)
            {
                ids.push(name.to_owned());
            }
        }
    }
    ids.sort();
    ids.dedup();
    let mut listing = Listing::default();
    for id in ids {
        if !with_manifest.contains(&id) {
            listing.incomplete.push(id);
            continue;
        }
        let text = store.get_small(&join(&id, MANIFEST)).await?;
        match serde_json::from_slice::<Manifest>(&text) {
            Ok(m) if m.id == id => listing.complete.push(m),
            _ => listing.incomplete.push(id),
        }
    }
    Ok(listing)
}

/// Removes every object of backup `id`, the manifest first.
pub async fn remove(store: &Store, id: &str) -> Result<()> {
    store.delete(&join(id, MANIFEST)).await?;
    store.remove_prefix(id).await?;
    if let Some(dir) = store.local_dir() {
        let d = dir.join(id);
        if d.exists() {
            std::fs::remove_dir_all(&d).map_err(|source| Error::Io {
                store: store.name().to_owned(),
                path: d.display().to_string(),
                source,
            })?;
        }
    }
    Ok(())
}
