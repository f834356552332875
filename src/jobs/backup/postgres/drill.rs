//! The PostgreSQL restore drill: the new backup restored into a scratch database, its row counts
//! compared with the source database's.

use std::path::Path;
use std::time::Duration;

use super::restore::{RestoreOptions, restore};
use super::{Connection, Error, Result};
use crate::jobs::backup::manifest::Manifest;
use crate::jobs::backup::spec::Postgres;
use crate::jobs::backup::store::Store;

/// Exact row counts of every table of `database` (`schema.table` → rows), in one query.
pub async fn row_counts(conn: &Connection, database: &str) -> Result<Vec<(String, u64)>> {
    let sql = "SELECT table_schema || '.' || table_name || '|' || \
        (xpath('/row/c/text()', query_to_xml(format('SELECT count(*) AS c FROM %I.%I', table_schema, table_name), false, true, '')))[1]::text \
        FROM information_schema.tables WHERE table_type = 'BASE TABLE' \
        AND table_schema NOT IN ('pg_catalog', 'information_schema') ORDER BY 1";
    let out = conn.query(database, sql).await?;
    Ok(out
        .lines()
        .filter_map(|l| l.rsplit_once('|'))
        .map(|(t, n)| (t.to_owned(), n.trim().parse().unwrap_or(u64::MAX)))
        .collect())
}

/// The restore drill: restores the backup into a scratch database, compares its row counts with
/// the source database's, and drops the scratch database again.
pub async fn drill(
    conn: &Connection,
    pg: &Postgres,
    store: &Store,
    manifest: &Manifest,
    scratch_dir: &Path,
) -> Result<serde_json::Value> {
    let scratch = format!("{}_drill", pg.database.chars().take(56).collect::<String>())
        .replace(|c: char| !(c.is_ascii_alphanumeric() || c == '_'), "_");
    let drop_sql = format!("DROP DATABASE IF EXISTS \"{scratch}\" WITH (FORCE)");
    conn.query("postgres", &drop_sql).await?;
    let restored = restore(
        conn,
        store,
        manifest,
        &scratch,
        RestoreOptions::default(),
        scratch_dir,
    )
    .await;
    let compared = match restored {
        Ok(_) => {
            let source = row_counts(conn, &pg.database).await;
            let copy = row_counts(conn, &scratch).await;
            match (source, copy) {
                (Ok(a), Ok(b)) if a == b => Ok(serde_json::json!({
                    "scratchDatabase": scratch,
                    "tables": a.len(),
                    "rows": a.iter().map(|(_, n)| n).sum::<u64>(),
                    "result": "row counts equal",
                })),
                (Ok(a), Ok(b)) => {
                    let differ: Vec<String> = a
                        .iter()
                        .filter(|t| !b.contains(t))
                        .map(|(t, n)| {
                            let got = b.iter().find(|(u, _)| u == t).map(|(_, m)| *m);
                            format!("{t}: source {n}, restored {got:?}")
                        })
                        .collect();
                    Err(Error::DrillMismatch(differ.join("; ")))
                }
                (Err(e), _) | (_, Err(e)) => Err(e),
            }
        }
        Err(e) => Err(e),
    };
    let _ = tokio::time::timeout(Duration::from_secs(60), conn.query("postgres", &drop_sql)).await;
    compared
}
