//! PostgreSQL: `pg_dump -Fc` streamed to the destination while `pg_restore -f /dev/null` reads
//! the same bytes (every block: a truncated or corrupt dump fails it), then `pg_dumpall
//! --globals-only`; restores with `pg_restore --single-transaction`. Every process's exit status
//! is checked; the password reaches the tools only through their environment.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::process::Command;

use super::pod::{self, Forward};
use super::spec::Postgres;
use super::store::{self, FileEntry, Store};

/// Errors of the PostgreSQL tools, with what they said on standard error.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{program}: cannot start ({path}): {source}")]
    Spawn {
        program: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{program} failed ({status}): {stderr}")]
    Failed {
        program: &'static str,
        status: String,
        stderr: String,
    },
    #[error(
        "verification failed: pg_restore could not read the dump back ({status}): {stderr} — the dump is incomplete or corrupt"
    )]
    Verify { status: String, stderr: String },
    #[error("{0}")]
    Io(String),
    #[error(transparent)]
    Store(#[from] store::Error),
    #[error(transparent)]
    Pod(#[from] pod::Error),
    #[error(
        "database {database} is not empty ({relations} tables, views or sequences): pass --force to restore over it"
    )]
    NotEmpty { database: String, relations: u64 },
    #[error(
        "{0:?} is not a database name driftless restores into (letters, digits, _; at most 63)"
    )]
    BadName(String),
    #[error("backup {id} holds no dump.pgcustom")]
    NoDump { id: String },
    #[error(
        "backup {id} holds no globals.sql (the job did not set spec.source.postgres.globals: true)"
    )]
    NoGlobals { id: String },
    #[error("drill: row counts differ: {0}")]
    DrillMismatch(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The file names in a PostgreSQL backup.
pub const DUMP: &str = "dump.pgcustom";
pub const GLOBALS: &str = "globals.sql";

/// How to reach the server: host, port (a port-forward's local end, kept open while this
/// lives), user and password.
pub struct Connection {
    pub host: String,
    pub port: u16,
    pub username: String,
    password: Option<SecretString>,
    bin_dir: Option<PathBuf>,
    _forward: Option<Forward>,
    /// How messages name the server (`host:port` or the forwarded pod).
    pub described: String,
}

impl Connection {
    /// Opens the port-forward if the spec asks for one and reads the password file.
    pub async fn open(
        pg: &Postgres,
        cluster: Option<&kube::Client>,
        credentials: &crate::credentials::Credentials,
    ) -> Result<Connection> {
        let password = pg
            .password_file
            .as_deref()
            .map(|f| store::read_secret(credentials, "spec.source.postgres.passwordFile", f))
            .transpose()?;
        let (host, port, forward, described) = match &pg.port_forward {
            Some(t) => {
                let f = pod::forward(cluster, t).await?;
                let described = format!("{} (port-forward)", f.target);
                ("127.0.0.1".to_owned(), f.port, Some(f), described)
            }
            None => (
                pg.host.clone(),
                pg.port,
                None,
                format!("{}:{}", pg.host, pg.port),
            ),
        };
        Ok(Connection {
            host,
            port,
            username: pg.username.clone(),
            password,
            bin_dir: pg.bin_dir.clone(),
            _forward: forward,
            described,
        })
    }

    fn program(&self, name: &str) -> PathBuf {
        match &self.bin_dir {
            Some(d) => d.join(name),
            None => PathBuf::from(name),
        }
    }

    /// A command of the PostgreSQL tools with the connection in its environment (libpq reads
    /// it; the password never appears on a command line).
    pub(super) fn command(&self, name: &'static str) -> Command {
        let mut cmd = Command::new(self.program(name));
        for var in ["PGDATABASE", "PGSERVICE", "PGPASSFILE", "PGOPTIONS"] {
            cmd.env_remove(var);
        }
        cmd.env("PGHOST", &self.host)
            .env("PGPORT", self.port.to_string())
            .env("PGUSER", &self.username)
            .env("PGCONNECT_TIMEOUT", "15")
            .env("PGAPPNAME", "driftless-backup")
            .stdin(Stdio::null())
            .kill_on_drop(true);
        match &self.password {
            // Exposed only into the child's environment, where libpq reads it.
            Some(p) => cmd.env("PGPASSWORD", p.expose_secret()),
            None => cmd.env_remove("PGPASSWORD"),
        };
        cmd
    }

    pub(super) fn spawn(
        &self,
        name: &'static str,
        cmd: &mut Command,
    ) -> Result<tokio::process::Child> {
        cmd.spawn().map_err(|source| Error::Spawn {
            program: name,
            path: self.program(name),
            source,
        })
    }

    /// Runs a psql query in `database`; returns its unaligned, tuples-only output.
    pub async fn query(&self, database: &str, sql: &str) -> Result<String> {
        let mut cmd = self.command("psql");
        cmd.args([
            "-X",
            "-q",
            "-tA",
            "-v",
            "ON_ERROR_STOP=1",
            "-d",
            database,
            "-c",
            sql,
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
        let child = self.spawn("psql", &mut cmd)?;
        let out = child
            .wait_with_output()
            .await
            .map_err(|e| Error::Io(format!("psql: {e}")))?;
        if !out.status.success() {
            return Err(Error::Failed {
                program: "psql",
                status: out.status.to_string(),
                stderr: tail(&out.stderr),
            });
        }
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    }
}

/// The last lines of a tool's standard error, for an error message.
pub(super) fn tail(stderr: &[u8]) -> String {
    let text = String::from_utf8_lossy(stderr);
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    let start = lines.len().saturating_sub(5);
    let t = lines[start..].join(" / ");
    if t.is_empty() {
        "(no output)".to_owned()
    } else {
        t
    }
}

async fn read_all(mut r: impl tokio::io::AsyncRead + Unpin) -> Vec<u8> {
    let mut v = Vec::new();
    let _ = r.read_to_end(&mut v).await;
    v
}

/// Dumps `database` into backup `id`: the dump (verified while it streams, re-hashed after
/// upload) and, when asked, the globals. Returns the files and facts for the manifest.
pub async fn dump(
    conn: &Connection,
    pg: &Postgres,
    store: &Store,
    id: &str,
) -> Result<(Vec<FileEntry>, serde_json::Value)> {
    let mut dump_cmd = conn.command("pg_dump");
    dump_cmd
        .args(["-Fc", "-d", &pg.database])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut dumper = conn.spawn("pg_dump", &mut dump_cmd)?;
    let mut check_cmd = conn.command("pg_restore");
    check_cmd
        .args(["-f", "/dev/null"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut checker = conn.spawn("pg_restore", &mut check_cmd)?;

    let dump_err = dumper.stderr.take().map(|r| tokio::spawn(read_all(r)));
    let check_err = checker.stderr.take().map(|r| tokio::spawn(read_all(r)));
    let (Some(mut out), Some(mut check_in)) = (dumper.stdout.take(), checker.stdin.take()) else {
        return Err(Error::Io(
            "pg_dump/pg_restore pipes were not opened".to_owned(),
        ));
    };

    let mut upload = store.writer(id, DUMP).await?;
    let mut buf = vec![0u8; 256 * 1024];
    let mut checker_open = true;
    let streamed: Result<()> = async {
        loop {
            let n = out
                .read(&mut buf)
                .await
                .map_err(|e| Error::Io(format!("reading pg_dump's output: {e}")))?;
            if n == 0 {
                break;
            }
            // The checker and the upload see the same bytes; a checker that stopped early
            // (broken pipe) fails below through its exit status.
            let (checked, uploaded) = tokio::join!(
                async {
                    if checker_open {
                        check_in.write_all(&buf[..n]).await.is_ok()
                    } else {
                        false
                    }
                },
                upload.write(&buf[..n])
            );
            checker_open = checked;
            uploaded?;
        }
        Ok(())
    }
    .await;
    // Closed before waiting: a pg_dump still writing (the upload failed, e.g. a full
    // destination) ends on the broken pipe instead of blocking on it.
    drop(check_in);
    drop(out);
    let dump_status = dumper
        .wait()
        .await
        .map_err(|e| Error::Io(format!("pg_dump: {e}")))?;
    let check_status = checker
        .wait()
        .await
        .map_err(|e| Error::Io(format!("pg_restore: {e}")))?;
    let dump_stderr = match dump_err {
        Some(h) => h.await.unwrap_or_default(),
        None => Vec::new(),
    };
    let check_stderr = match check_err {
        Some(h) => h.await.unwrap_or_default(),
        None => Vec::new(),
    };
    // A failed upload comes first: pg_dump then dies of the broken pipe, which is its effect.
    let failure = if let Err(e) = streamed {
        Some(e)
    } else if !dump_status.success() {
        Some(Error::Failed {
            program: "pg_dump",
            status: dump_status.to_string(),
            stderr: tail(&dump_stderr),
        })
    } else if !check_status.success() {
        Some(Error::Verify {
            status: check_status.to_string(),
            stderr: tail(&check_stderr),
        })
    } else {
        None
    };
    if let Some(e) = failure {
        upload.abort().await;
        return Err(e);
    }
    let entry = upload.finish().await?;
    store.verify(&entry, id).await?;
    let mut files = vec![entry];

    if pg.globals {
        let mut cmd = conn.command("pg_dumpall");
        cmd.args(["--globals-only", "-l", &pg.database])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = conn.spawn("pg_dumpall", &mut cmd)?;
        let err = child.stderr.take().map(|r| tokio::spawn(read_all(r)));
        let out = child
            .stdout
            .take()
            .ok_or_else(|| Error::Io("pg_dumpall: no output pipe".to_owned()))?;
        let uploaded = store.upload_from(id, GLOBALS, out).await;
        let status = child
            .wait()
            .await
            .map_err(|e| Error::Io(format!("pg_dumpall: {e}")))?;
        let stderr = match err {
            Some(h) => h.await.unwrap_or_default(),
            None => Vec::new(),
        };
        if !status.success() {
            return Err(Error::Failed {
                program: "pg_dumpall",
                status: status.to_string(),
                stderr: tail(&stderr),
            });
        }
        let entry = uploaded?;
        store.verify(&entry, id).await?;
        files.push(entry);
    }
    let details = serde_json::json!({
        "database": pg.database,
        "server": conn.described,
        "verified": "pg_restore -f /dev/null read the whole dump; uploaded files re-hashed",
    });
    Ok((files, details))
}

/// Checks a restore target's name: it is quoted into SQL, so only plain identifiers.
pub fn check_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        && !name.starts_with(|c: char| c.is_ascii_digit());
    if ok {
        Ok(())
    } else {
        Err(Error::BadName(name.to_owned()))
    }
}

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
    manifest: &store::Manifest,
    database: &str,
    options: RestoreOptions,
    scratch_dir: &Path,
) -> Result<serde_json::Value> {
    let force = options.force;
    check_name(database)?;
    let entry = manifest
        .files
        .iter()
        .find(|f| f.name == DUMP)
        .ok_or_else(|| Error::NoDump {
            id: manifest.id.clone(),
        })?;
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
        Some(g) => Some(super::globals::apply(conn, store, &manifest.id, g).await?),
        None => None,
    };
    if !exists {
        conn.query("postgres", &format!("CREATE DATABASE \"{database}\""))
            .await?;
    }

    std::fs::create_dir_all(scratch_dir)
        .map_err(|e| Error::Io(format!("{}: {e}", scratch_dir.display())))?;
    let file = scratch_dir.join(format!(
        "restore-{}-{}.pgcustom",
        std::process::id(),
        rand::random::<u32>()
    ));
    let result = async {
        let mut f = tokio::fs::File::create(&file)
            .await
            .map_err(|e| Error::Io(format!("{}: {e}", file.display())))?;
        let (bytes, sha256) = store
            .read_into(&store::join(&manifest.id, DUMP), Some(&mut f))
            .await?;
        f.sync_all()
            .await
            .map_err(|e| Error::Io(format!("{}: {e}", file.display())))?;
        drop(f);
        if bytes != entry.bytes || sha256 != entry.sha256 {
            return Err(Error::from(store::Error::Mismatch {
                store: store.name().to_owned(),
                path: store::join(&manifest.id, DUMP),
                wrote: entry.sha256.clone(),
                wrote_bytes: entry.bytes,
                read: sha256,
                read_bytes: bytes,
            }));
        }
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
            .map_err(|e| Error::Io(format!("pg_restore: {e}")))?;
        if !out.status.success() {
            return Err(Error::Failed {
                program: "pg_restore",
                status: out.status.to_string(),
                stderr: tail(&out.stderr),
            });
        }
        Ok(serde_json::json!({
            "database": database,
            "server": conn.described,
            "bytes": bytes,
            "replaced": clean,
            "roles": roles,
        }))
    }
    .await;
    let _ = std::fs::remove_file(&file);
    result
}

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
    manifest: &store::Manifest,
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
