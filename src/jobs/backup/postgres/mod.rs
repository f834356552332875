//! PostgreSQL: `pg_dump -Fc` streamed to the destination while `pg_restore -f /dev/null` reads
//! the same bytes (every block: a truncated or corrupt dump fails it), then `pg_dumpall
//! --globals-only`; restores with `pg_restore --single-transaction`. Every process's exit status
//! is checked; the password reaches the tools only through their environment.

use std::path::PathBuf;
use std::process::Stdio;

use secrecy::{ExposeSecret, SecretString};
use tokio::io::AsyncReadExt;
use tokio::process::Command;

use super::pod::{self, Forward};
use super::spec::Postgres;
use super::store;

pub mod drill;
pub mod dump;
pub mod globals;
pub mod restore;

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
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}: its pipes were not opened")]
    NoPipe(&'static str),
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
    /// Opens the port-forward if the spec asks for one and reads the password file. The tools
    /// are run from `bin_dir` (the host configuration's `jobs.postgresBinDir`), else found on
    /// `PATH`.
    pub async fn open(
        pg: &Postgres,
        cluster: Option<&kube::Client>,
        credentials: &crate::credentials::Credentials,
        bin_dir: Option<&std::path::Path>,
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
            bin_dir: bin_dir.map(std::path::Path::to_owned),
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
        let out = child.wait_with_output().await.map_err(|source| Error::Io {
            what: "psql".to_owned(),
            source,
        })?;
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

pub(super) async fn read_all(mut r: impl tokio::io::AsyncRead + Unpin) -> Vec<u8> {
    let mut v = Vec::new();
    let _ = r.read_to_end(&mut v).await;
    v
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
