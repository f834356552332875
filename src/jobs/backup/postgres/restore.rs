//! Restores a PostgreSQL backup: the dump (checked against the manifest) with `pg_restore
//! --single-transaction`, and with `--globals` first the roles the server lacks
//! (`globals::plan`, run with psql).

use std::path::Path;
use std::process::Stdio;

use tokio::io::AsyncWriteExt;

use super::{Connection, DUMP, Error, GLOBALS, Result, check_name, globals, tail};
use crate::jobs::backup::manifest::{FileEntry, Manifest};
use crate::jobs::backup::store::{Sink, Store};

const USER_RELATIONS: &str = "SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
     WHERE n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg_toast%' \
     AND n.nspname NOT LIKE 'pg_temp%' AND c.relkind IN ('r', 'p', 'v', 'm', 'S', 'f')";

/// How [`restore`] treats the target.
#[derive(Debug, Clone, Copy, Default)]
pub struct RestoreOptions {
    /// Restore over a database holding tables (objects of the dump are dropped and recreated).
    pub force: bool,
    /// First apply the backup's `globals.sql`, creating the roles that do not exist.
    pub globals: bool,
}

/// Restores backup `id`'s dump into `database` (created when missing). A database holding
/// tables is refused unless `force` (then objects of the dump are dropped and recreated).
/// The dump is downloaded to `scratch_dir` and checked against the manifest first; the restore
/// is one transaction, so a failed restore leaves the database as it was. With `globals`, the
/// missing roles are created first (`globals::apply`), in a transaction of their own.
pub async fn restore(
    conn: &Connection,
    store: &Store,
    manifest: &Manifest,
    database: &str,
    options: RestoreOptions,
    scratch_dir: &Path,
) -> Result<serde_json::Value> {
    let force = options.force;
    check_name(database)?;
    let entry = dump_entry(manifest)?;
    let globals_entry = if options.globals {
        Some(
            manifest
                .files
                .iter()
                .find(|f| f.name == GLOBALS)
                .ok_or_else(|| Error::NoGlobals {
                    id: manifest.id.clone(),
                })?,
        )
    } else {
        None
    };
    let exists = conn
        .query(
            "postgres",
            &format!("SELECT count(*) FROM pg_database WHERE datname = '{database}'"),
        )
        .await?
        == "1";
    let mut clean = false;
    if exists {
        let relations: u64 = conn
            .query(database, USER_RELATIONS)
            .await?
            .parse()
            .unwrap_or(u64::MAX);
        if relations > 0 {
            if !force {
                return Err(Error::NotEmpty {
                    database: database.to_owned(),
                    relations,
                });
            }
            clean = true;
        }
    }
    // Roles before the database's objects, which may be owned by them.
    let roles = match globals_entry {
        Some(g) => Some(apply_globals(conn, store, &manifest.id, g).await?),
        None => None,
    };
    if !exists {
        conn.query("postgres", &format!("CREATE DATABASE \"{database}\""))
            .await?;
    }

    let restored = restore_dump(conn, store, manifest, entry, database, clean, scratch_dir).await?;
    Ok(serde_json::json!({
        "database": database,
        "server": conn.described,
        "bytes": restored,
        "replaced": clean,
        "roles": roles,
    }))
}

/// The backup's dump entry.
pub(super) fn dump_entry(manifest: &Manifest) -> Result<&FileEntry> {
    manifest
        .files
        .iter()
        .find(|f| f.name == DUMP)
        .ok_or_else(|| Error::NoDump {
            id: manifest.id.clone(),
        })
}

/// Downloads the dump to `scratch_dir`, checks it against the manifest and restores it into the
/// existing `database` in one transaction (with `clean`: dropping the dump's objects first).
/// Returns the dump's size.
pub(super) async fn restore_dump(
    conn: &Connection,
    store: &Store,
    manifest: &Manifest,
    entry: &FileEntry,
    database: &str,
    clean: bool,
    scratch_dir: &Path,
) -> Result<u64> {
    std::fs::create_dir_all(scratch_dir).map_err(|source| Error::Io {
        what: scratch_dir.display().to_string(),
        source,
    })?;
    let file = scratch_dir.join(format!(
        "restore-{}-{}.pgcustom",
        std::process::id(),
        rand::random::<u32>()
    ));
    let result = async {
        // Readable by this user only: an encrypted backup's dump is decrypted into it.
        let mut f = tokio::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&file)
            .await
            .map_err(|source| Error::Io {
                what: file.display().to_string(),
                source,
            })?;
        // Checked against the manifest (both digests of an encrypted dump) before pg_restore
        // sees it.
        store
            .read_entry(&manifest.id, entry, Sink::Write(&mut f))
            .await?;
        f.sync_all().await.map_err(|source| Error::Io {
            what: file.display().to_string(),
            source,
        })?;
        drop(f);
        let bytes = entry.content().bytes;
        let mut cmd = conn.command("pg_restore");
        cmd.args(["--single-transaction", "--exit-on-error", "-d", database]);
        if clean {
            cmd.args(["--clean", "--if-exists"]);
        }
        cmd.arg(&file).stdout(Stdio::null()).stderr(Stdio::piped());
        let out = conn
            .spawn("pg_restore", &mut cmd)?
            .wait_with_output()
            .await
            .map_err(|source| Error::Io {
                what: "pg_restore".to_owned(),
                source,
            })?;
        if !out.status.success() {
            return Err(Error::Failed {
                program: "pg_restore",
                status: out.status.to_string(),
                stderr: tail(&out.stderr),
            });
        }
        Ok(bytes)
    }
    .await;
    let _ = std::fs::remove_file(&file);
    result
}

/// Applies the backup's globals: reads `globals.sql` (checked against the manifest), leaves out
/// existing roles and tablespaces, and runs the rest with psql in one transaction, stopping at
/// the first error. The SQL (password hashes) goes to psql's standard input only.
pub async fn apply_globals(
    conn: &Connection,
    store: &Store,
    id: &str,
    entry: &FileEntry,
) -> Result<serde_json::Value> {
    // Checked against the manifest (decrypted when encrypted) before psql sees it.
    let mut text: Vec<u8> = Vec::new();
    store.read_entry(id, entry, Sink::Write(&mut text)).await?;
    let existing: Vec<String> = conn
        .query("postgres", "SELECT rolname FROM pg_roles")
        .await?
        .lines()
        .map(str::to_owned)
        .collect();
    let plan = globals::globals_plan(&String::from_utf8_lossy(&text), &existing);
    let mut cmd = conn.command("psql");
    cmd.args([
        "-X",
        "-q",
        "-v",
        "ON_ERROR_STOP=1",
        "--single-transaction",
        "-d",
        "postgres",
        "-f",
        "-",
    ])
    .stdin(Stdio::piped())
    .stdout(Stdio::null())
    .stderr(Stdio::piped());
    let mut child = conn.spawn("psql", &mut cmd)?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(plan.sql.as_bytes())
            .await
            .map_err(|source| Error::Io {
                what: "psql (globals)".to_owned(),
                source,
            })?;
    }
    let out = child.wait_with_output().await.map_err(|source| Error::Io {
        what: "psql (globals)".to_owned(),
        source,
    })?;
    if !out.status.success() {
        return Err(Error::Failed {
            program: "psql",
            status: out.status.to_string(),
            stderr: tail(&out.stderr),
        });
    }
    Ok(serde_json::json!({
        "created": plan.created,
        "existing": plan.existing,
        "skippedTablespaceLines": plan.skipped_tablespace_lines,
    }))
}
