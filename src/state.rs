//! Local state files (`/var/lib/driftless`): written atomically (temp file, fsync, rename, fsync of
//! the directory), read back tolerantly: a missing or corrupt file is reported and replaced by a
//! fresh value, never a crash loop.

use std::io::Write;
use std::path::{Path, PathBuf};

use serde::Serialize;
use serde::de::DeserializeOwned;

/// Errors writing state.
#[derive(Debug, thiserror::Error)]
#[error("state file {path}: {message}")]
pub struct Error {
    pub path: PathBuf,
    pub message: String,
}

/// Writes `value` as JSON to `path` atomically: readers see the old or the new file, never a
/// torn one, even across a crash or power loss.
pub fn write_json<T: Serialize>(path: &Path, value: &T) -> Result<(), Error> {
    let bytes = serde_json::to_vec_pretty(value).map_err(|e| Error {
        path: path.to_owned(),
        message: e.to_string(),
    })?;
    write_bytes(path, &bytes)
}

/// Writes `bytes` to `path` atomically, as `write_json` does.
pub fn write_bytes(path: &Path, bytes: &[u8]) -> Result<(), Error> {
    let fail = |message: String| Error {
        path: path.to_owned(),
        message,
    };
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)
        .map_err(|e| fail(format!("cannot create {}: {e}", dir.display())))?;
    let file_name = path.file_name().and_then(|n| n.to_str()).unwrap_or("state");
    let tmp = dir.join(format!(".{file_name}.tmp-{}", std::process::id()));
    let result = (|| -> std::io::Result<()> {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)?;
        // The rename is durable only once the directory entry is.
        std::fs::File::open(dir)?.sync_all()
    })();
    if let Err(e) = result {
        let _ = std::fs::remove_file(&tmp);
        return Err(fail(e.to_string()));
    }
    Ok(())
}

/// What reading a state file found.
#[derive(Debug)]
pub enum Loaded<T> {
    /// The file held a valid value.
    Ok(T),
    /// No file yet: a fresh start.
    Missing,
    /// The file was unreadable or corrupt; it was moved aside to `<name>.corrupt` and the
    /// problem is described here.
    Corrupt(String),
}

/// Reads `path`; a corrupt file is moved aside (kept for inspection) so the next write starts
/// clean.
pub fn read_json<T: DeserializeOwned>(path: &Path) -> Loaded<T> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Loaded::Missing,
        Err(e) => return Loaded::Corrupt(format!("{}: {e}", path.display())),
    };
    match serde_json::from_slice(&bytes) {
        Ok(v) => Loaded::Ok(v),
        Err(e) => {
            let aside = path.with_extension("corrupt");
            let _ = std::fs::rename(path, &aside);
            Loaded::Corrupt(format!(
                "{}: {e} (moved to {})",
                path.display(),
                aside.display()
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_missing_and_corrupt() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/status.json");
        assert!(matches!(read_json::<Vec<u32>>(&path), Loaded::Missing));
        write_json(&path, &vec![1, 2, 3]).unwrap();
        assert!(matches!(read_json::<Vec<u32>>(&path), Loaded::Ok(v) if v == vec![1, 2, 3]));
        // No temp files left behind.
        let names: Vec<_> = std::fs::read_dir(path.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("status.json")]);

        std::fs::write(&path, b"{ torn").unwrap();
        match read_json::<Vec<u32>>(&path) {
            Loaded::Corrupt(msg) => assert!(msg.contains("status.json"), "{msg}"),
            other => panic!("expected corrupt, got {other:?}"),
        }
        assert!(
            path.with_extension("corrupt").exists(),
            "kept for inspection"
        );
        assert!(
            matches!(read_json::<Vec<u32>>(&path), Loaded::Missing),
            "a fresh start next time"
        );
    }
}
