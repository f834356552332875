//! The facts file: what driftless remembers of each digest between runs
//! (`<state>/jobs/<job>.digests.json`). It is untrusted input (anything with write access to the
//! state directory can change it): it is read only up to `MAX_BYTES`, a file that is too large
//! or not valid JSON is moved aside (`.corrupt`) and the run reads everything afresh, and every
//! entry whose key or digests are malformed is dropped (digests from it go into URLs).

use std::collections::BTreeMap;
use std::io::Read;
use std::path::Path;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use tracing::warn;

use super::accessory::Subject;
use crate::registry::is_digest;

/// Bound on the facts file: about 200 bytes per digest, so room for several hundred thousand.
pub(super) const MAX_BYTES: u64 = 128 << 20;

/// The version of the facts below: entries written by an older driftless lack some (the
/// manifest's `subject`) and are completed once.
pub(super) const FACTS: u8 = 2;

/// What driftless remembers of a digest (immutable facts, so valid forever) between runs.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct Known {
    pub(super) first_seen: DateTime<Utc>,
    pub(super) created: Option<DateTime<Utc>>,
    #[serde(default)]
    pub(super) children: Vec<String>,
    /// The blobs (config and layers) with their sizes.
    #[serde(default)]
    pub(super) blobs: Vec<(String, u64)>,
    /// The digest this manifest names as its OCI 1.1 `subject`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) subject: Option<Subject>,
    #[serde(default)]
    pub(super) facts: u8,
    /// The image config whose build date has not been read, because no rule of the repository
    /// used age when the digest was first seen: read once one does (`created` is then set).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) undated_config: Option<String>,
    /// The tags that resolved to this digest at the last run: the next run asks the registry
    /// whether they still do (`If-None-Match`) instead of reading their manifests again. Only a
    /// hint: the registry's answer decides.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub(super) tags: Vec<String>,
}

/// `<repository>@<digest>` → facts.
pub(super) type KnownMap = BTreeMap<String, Known>;

pub(super) fn known_path(state_dir: &Path, job: &str) -> std::path::PathBuf {
    state_dir.join("jobs").join(format!("{job}.digests.json"))
}

/// The facts file of a job, bounded and checked (see the module comment); empty when missing,
/// too large or corrupt.
pub(super) fn load(path: &Path) -> KnownMap {
    match read_bounded(path) {
        Ok(Some(bytes)) => match serde_json::from_slice::<KnownMap>(&bytes) {
            Ok(known) => sanitized(known),
            Err(e) => {
                move_aside(path, &format!("{e}"));
                KnownMap::new()
            }
        },
        Ok(None) => KnownMap::new(),
        Err(problem) => {
            move_aside(path, &problem);
            KnownMap::new()
        }
    }
}

/// The file's bytes; `None` if it does not exist; an error if it is larger than `MAX_BYTES` or
/// cannot be read.
fn read_bounded(path: &Path) -> Result<Option<Vec<u8>>, String> {
    let file = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e.to_string()),
    };
    let mut bytes = Vec::new();
    file.take(MAX_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| e.to_string())?;
    if bytes.len() as u64 > MAX_BYTES {
        return Err(format!("larger than {MAX_BYTES} bytes"));
    }
    Ok(Some(bytes))
}

fn move_aside(path: &Path, problem: &str) {
    let aside = path.with_extension("corrupt");
    let moved = std::fs::rename(path, &aside);
    warn!(
        "{}: {problem} ({}); every manifest is read again and image ages fall back to this run",
        path.display(),
        match moved {
            Ok(()) => format!("moved to {}", aside.display()),
            Err(e) => format!("not moved aside: {e}"),
        }
    );
}

/// `known` without the entries whose key is not `<repository>@<digest>` or whose children,
/// subject, config or blobs are not digests (pure).
pub(super) fn sanitized(known: KnownMap) -> KnownMap {
    let valid = |key: &str, k: &Known| {
        let Some((repo, digest)) = key.rsplit_once('@') else {
            return false;
        };
        !repo.is_empty()
            && is_digest(digest)
            && k.children.iter().all(|c| is_digest(c))
            && k.blobs.iter().all(|(b, _)| is_digest(b))
            && k.subject.as_ref().is_none_or(|s| is_digest(&s.digest))
            && k.undated_config.as_deref().is_none_or(is_digest)
    };
    let before = known.len();
    let kept: KnownMap = known.into_iter().filter(|(key, k)| valid(key, k)).collect();
    if kept.len() < before {
        warn!(
            "facts file: {} malformed entries dropped (read again from the registry)",
            before - kept.len()
        );
    }
    kept
}

#[cfg(test)]
mod tests {
    use super::*;

    fn digest(c: char) -> String {
        format!("sha256:{}", c.to_string().repeat(64))
    }

    fn entry() -> Known {
        Known {
            first_seen: DateTime::<Utc>::UNIX_EPOCH,
            created: None,
            children: vec![digest('b')],
            blobs: vec![(digest('c'), 10)],
            subject: None,
            facts: FACTS,
            undated_config: Some(digest('c')),
            tags: vec!["v1".into()],
        }
    }

    #[test]
    fn malformed_entries_are_dropped() {
        let good = format!("app@{}", digest('a'));
        let known: KnownMap = [
            (good.clone(), entry()),
            ("app@sha256:../../x".to_owned(), entry()),
            (format!("@{}", digest('a')), entry()),
            (digest('a'), entry()),
            (
                format!("bad-child@{}", digest('a')),
                Known {
                    children: vec!["../v2/_catalog".into()],
                    ..entry()
                },
            ),
            (
                format!("bad-config@{}", digest('a')),
                Known {
                    undated_config: Some("x?y".into()),
                    ..entry()
                },
            ),
            (
                format!("bad-blob@{}", digest('a')),
                Known {
                    blobs: vec![("nope".into(), 1)],
                    ..entry()
                },
            ),
        ]
        .into();
        let kept = sanitized(known);
        assert_eq!(kept.keys().cloned().collect::<Vec<_>>(), [good]);
    }

    #[test]
    fn too_large_or_corrupt_files_are_moved_aside() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("job.digests.json");
        assert!(load(&path).is_empty());

        std::fs::write(&path, b"{not json").unwrap();
        assert!(load(&path).is_empty());
        assert!(!path.exists());
        assert!(path.with_extension("corrupt").exists());

        let f = std::fs::File::create(&path).unwrap();
        f.set_len(MAX_BYTES + 1).unwrap();
        assert!(load(&path).is_empty());
        assert!(!path.exists());

        let good: KnownMap = [(format!("app@{}", digest('a')), entry())].into();
        std::fs::write(&path, serde_json::to_vec(&good).unwrap()).unwrap();
        assert_eq!(load(&path).len(), 1);
    }
}
