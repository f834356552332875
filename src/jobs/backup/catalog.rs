//! What a destination holds for one job, and the writes that change it: complete backups (a
//! readable manifest), incomplete ones (files without one) with the run marker that says who
//! started them, the marker written before a backup's files and the manifest written after them,
//! and removal — manifest first, marker last — so a removal cut short leaves an incomplete backup
//! still marked as its host's, never a complete one with files missing. Which incomplete backups
//! a run may clean up is decided by [`cleanup`] (pure).

use std::time::Duration;

use chrono::{DateTime, Utc};

use super::manifest::{Incomplete, Listing, MANIFEST, Manifest, RUN_MARKER, RunMarker};
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
        if with_manifest.contains(&id) {
            let text = store.get_small(&join(&id, MANIFEST)).await?;
            if let Ok(m) = serde_json::from_slice::<Manifest>(&text)
                && m.id == id
            {
                listing.complete.push(m);
                continue;
            }
        }
        // Unreadable or missing: the marker is only ever trusted to allow a removal, so a
        // marker that cannot be read leaves the backup alone.
        let marker = match store.get_small(&join(&id, RUN_MARKER)).await {
            Ok(text) => serde_json::from_slice::<RunMarker>(&text).ok(),
            Err(_) => None,
        };
        listing.incomplete.push(Incomplete { id, marker });
    }
    Ok(listing)
}

/// Why an incomplete backup is removed or left alone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cleanup {
    /// This host's and instance's run, older than the job's timeout: it died. Removed.
    Remove,
    /// This host's and instance's run, within the job's timeout.
    Recent { started_at: DateTime<Utc> },
    /// Another host's or instance's run: it may still be going; its own host cleans it up.
    OtherRun { host: String, instance: String },
    /// No readable run marker: not known to be this host's.
    NoMarker,
}

impl std::fmt::Display for Cleanup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Cleanup::Remove => f.write_str("a run of this host that did not finish"),
            Cleanup::Recent { started_at } => write!(
                f,
                "a run of this host started {} (within the job's timeout)",
                started_at.to_rfc3339()
            ),
            Cleanup::OtherRun { host, instance } => write!(
                f,
                "a run of host {host} (instance {instance}): left to that host"
            ),
            Cleanup::NoMarker => f.write_str(
                "no run marker: not known to be this host's (remove by hand once no run is writing it)",
            ),
        }
    }
}

/// Decides what to do with an incomplete backup (pure): only this host's and this instance's
/// runs are removed, and only once older than `timeout` (a run is cut short at its timeout, so
/// none of them can still be writing).
pub fn cleanup(
    incomplete: &Incomplete,
    host: &str,
    instance: &str,
    timeout: Duration,
    now: DateTime<Utc>,
) -> Cleanup {
    let Some(m) = &incomplete.marker else {
        return Cleanup::NoMarker;
    };
    if m.host != host || m.instance != instance {
        return Cleanup::OtherRun {
            host: m.host.clone(),
            instance: m.instance.clone(),
        };
    }
    let old = (now - m.started_at).to_std().is_ok_and(|age| age > timeout);
    if old {
        Cleanup::Remove
    } else {
        Cleanup::Recent {
            started_at: m.started_at,
        }
    }
}

/// Writes a backup's run marker, before any of its files.
pub async fn write_marker(store: &Store, id: &str, marker: &RunMarker) -> Result<()> {
    let text = serde_json::to_vec_pretty(marker).map_err(|e| Error::Invalid {
        store: store.name().to_owned(),
        path: join(id, RUN_MARKER),
        message: e.to_string(),
    })?;
    store.put_small(&join(id, RUN_MARKER), text.into()).await
}

/// Writes (or rewrites) a backup's manifest: the first write makes the backup complete.
pub async fn write_manifest(store: &Store, manifest: &Manifest) -> Result<()> {
    let text = serde_json::to_vec_pretty(manifest).map_err(|e| Error::Invalid {
        store: store.name().to_owned(),
        path: join(&manifest.id, MANIFEST),
        message: e.to_string(),
    })?;
    store
        .put_small(&join(&manifest.id, MANIFEST), text.into())
        .await
}

/// Removes every object of backup `id`: the manifest first, the run marker last.
pub async fn remove(store: &Store, id: &str) -> Result<()> {
    store.delete(&join(id, MANIFEST)).await?;
    for (key, _) in store.list(id).await? {
        if key != RUN_MARKER {
            store.delete(&join(id, &key)).await?;
        }
    }
    let io = |path: &std::path::Path, source| Error::Io {
        store: store.name().to_owned(),
        path: path.display().to_string(),
        source,
    };
    let dir = store.local_dir().map(|d| d.join(id));
    // Staging files of an upload cut short, which object_store does not list.
    if let Some(d) = &dir
        && let Ok(entries) = std::fs::read_dir(d)
    {
        for e in entries.flatten() {
            let p = e.path();
            if e.file_name() == RUN_MARKER {
                continue;
            }
            if p.is_dir() {
                std::fs::remove_dir_all(&p).map_err(|s| io(&p, s))?;
            } else {
                std::fs::remove_file(&p).map_err(|s| io(&p, s))?;
            }
        }
    }
    store.delete(&join(id, RUN_MARKER)).await?;
    if let Some(d) = &dir
        && d.exists()
    {
        std::fs::remove_dir_all(d).map_err(|s| io(d, s))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn only_this_hosts_stale_runs_are_removed() {
        let now = Utc.with_ymd_and_hms(2026, 3, 2, 12, 0, 0).unwrap();
        let hour = Duration::from_secs(3600);
        let marked = |host: &str, instance: &str, age_mins: i64| Incomplete {
            id: "x".into(),
            marker: Some(RunMarker {
                format: 1,
                host: host.into(),
                instance: instance.into(),
                pid: 7,
                started_at: now - chrono::Duration::minutes(age_mins),
            }),
        };
        let decide = |i: &Incomplete| cleanup(i, "ops-1", "default", hour, now);
        assert_eq!(decide(&marked("ops-1", "default", 61)), Cleanup::Remove);
        assert_eq!(
            decide(&marked("ops-1", "default", 59)),
            Cleanup::Recent {
                started_at: now - chrono::Duration::minutes(59)
            }
        );
        // Another host's run is never removed, however old.
        assert_eq!(
            decide(&marked("ops-2", "default", 60 * 24 * 30)),
            Cleanup::OtherRun {
                host: "ops-2".into(),
                instance: "default".into()
            }
        );
        // Another instance on this host (its own state directory and lock): not ours either.
        assert!(matches!(
            decide(&marked("ops-1", "staging", 600)),
            Cleanup::OtherRun { .. }
        ));
        // A marker from the future (clock stepped back) is recent, not stale.
        assert!(matches!(
            decide(&marked("ops-1", "default", -30)),
            Cleanup::Recent { .. }
        ));
        assert_eq!(
            decide(&Incomplete {
                id: "y".into(),
                marker: None
            }),
            Cleanup::NoMarker
        );
    }
}
