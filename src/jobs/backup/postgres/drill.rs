//! The PostgreSQL restore drill: the new backup restored into a scratch database, its row counts
//! compared with the source database's.
//!
//! The drill drops only what it created: its scratch database gets a name no one else uses
//! (`driftless_drill_` and 64 random bits), is created with `CREATE DATABASE` (which fails
//! rather than reuse a database of that name), and carries a comment naming the job, instance and
//! host ([`owner_mark`]). It is dropped by that name after the drill; one left behind by a drill
//! that died is dropped by the next drill of the same job on the same host and instance, found by
//! its name prefix and exact comment. No other database is ever dropped.

use std::path::Path;
use std::time::Duration;

use super::restore::{dump_entry, restore_dump};
use super::{Connection, Error, Result, check_name};
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

/// The prefix of every scratch database name.
pub const SCRATCH_PREFIX: &str = "driftless_drill_";

/// Who runs a drill: the comment its scratch database carries.
pub struct DrillOwner<'a> {
    pub job: &'a str,
    pub instance: &'a str,
    pub host: &'a str,
}

/// The comment on a scratch database: `driftless restore drill: job=J instance=I host=H`.
pub fn owner_mark(owner: &DrillOwner<'_>) -> String {
    format!(
        "driftless restore drill: job={} instance={} host={}",
        owner.job, owner.instance, owner.host
    )
}

/// `text` as an SQL string literal.
fn literal(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

/// Scratch databases this job's drills on this host and instance left behind.
async fn leftovers(conn: &Connection, mark: &str) -> Result<Vec<String>> {
    let sql = format!(
        "SELECT d.datname FROM pg_database d JOIN pg_shdescription s \
         ON s.objoid = d.oid AND s.classoid = 'pg_database'::regclass \
         WHERE s.description = {} AND starts_with(d.datname, {}) ORDER BY 1",
        literal(mark),
        literal(SCRATCH_PREFIX)
    );
    Ok(conn
        .query("postgres", &sql)
        .await?
        .lines()
        .filter(|n| n.starts_with(SCRATCH_PREFIX) && check_name(n).is_ok())
        .map(str::to_owned)
        .collect())
}

async fn drop_scratch(conn: &Connection, name: &str) -> Result<String> {
    conn.query(
        "postgres",
        &format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"),
    )
    .await
}

/// The restore drill: restores the backup into a scratch database of its own, compares its row
/// counts with the source database's, and drops the scratch database again.
pub async fn drill(
    conn: &Connection,
    pg: &Postgres,
    store: &Store,
    manifest: &Manifest,
    scratch_dir: &Path,
    owner: &DrillOwner<'_>,
) -> Result<serde_json::Value> {
    let mark = owner_mark(owner);
    let mut dropped_leftovers = Vec::new();
    for name in leftovers(conn, &mark).await? {
        drop_scratch(conn, &name).await?;
        dropped_leftovers.push(name);
    }
    let entry = dump_entry(manifest)?;
    let scratch = format!("{SCRATCH_PREFIX}{:016x}", rand::random::<u64>());
    // Fails if the name is taken: the drill never takes over a database it did not create.
    conn.query("postgres", &format!("CREATE DATABASE \"{scratch}\""))
        .await?;
    let drilled = async {
        conn.query(
            "postgres",
            &format!("COMMENT ON DATABASE \"{scratch}\" IS {}", literal(&mark)),
        )
        .await?;
        restore_dump(conn, store, manifest, entry, &scratch, false, scratch_dir).await?;
        let source = row_counts(conn, &pg.database).await?;
        let copy = row_counts(conn, &scratch).await?;
        if source != copy {
            let differ: Vec<String> = source
                .iter()
                .filter(|t| !copy.contains(t))
                .map(|(t, n)| {
                    let got = copy.iter().find(|(u, _)| u == t).map(|(_, m)| *m);
                    format!("{t}: source {n}, restored {got:?}")
                })
                .collect();
            return Err(Error::DrillMismatch(differ.join("; ")));
        }
        Ok(serde_json::json!({
            "scratchDatabase": scratch,
            "droppedLeftovers": dropped_leftovers,
            "tables": source.len(),
            "rows": source.iter().map(|(_, n)| n).sum::<u64>(),
            "result": "row counts equal",
        }))
    }
    .await;
    // Created above by this drill, so dropped by its name; a drop that fails or hangs leaves it
    // to the next drill (its comment marks it).
    let _ = tokio::time::timeout(Duration::from_secs(60), drop_scratch(conn, &scratch)).await;
    drilled
}
