//! The `Backup` job's own fields (pure parsing, errors naming the file, job and field).
//!
//! ```yaml
//! spec:
//!   schedule: "0 3 * * *"
//!   source:                            # exactly one of postgres, s3, exec
//!     postgres:
//!       host: 127.0.0.1                # direct connection (default 127.0.0.1) …
//!       port: 5432
//!       portForward: {namespace: storage, service: postgres, port: 5432}   # … or through the API server
//!       database: ducklake
//!       username: ducklake
//!       passwordFile: ducklake-pg-password   # in the credentials directory
//!       globals: true                  # also pg_dumpall --globals-only (roles, tablespaces)
//!   destination:                       # exactly one of local, s3
//!     local: {path: /var/backups/driftless}
//!     s3: {endpoint: http://127.0.0.1:9000, bucket: backups, prefix: driftless,
//!          accessKeyFile: minio-access-key, secretKeyFile: minio-secret-key}
//!   retention: {keepLast: 3, keepDaily: 7, keepWeekly: 4, keepMonthly: 12, keepWithin: 48h}
//!   maxAge: 26h                        # older newest complete backup: daemon status degraded
//!   restoreDrill: true                 # restore the new backup into a scratch target and compare
//!   timeout: 6h                        # a run is cut short after this (default 6h)
//!   encryption:                        # every file encrypted with age to these public keys
//!     ageRecipients: [age1…]
//! ```
//!
//! Nothing here names a host program or lets the repository pick a host path the host
//! configuration does not bound: the PostgreSQL tools come from `jobs.postgresBinDir` (a
//! `binDir` here is refused), a local destination must lie under `jobs.localBackupRoot` (checked
//! when the destination is opened, `destination`), and `host` is a network address, never a
//! socket directory. Encryption names public keys only (a secret key is refused, never echoed);
//! the identity and whether encryption is required are the host's (`crypt::HostRules`).

use std::path::{Path, PathBuf};
use std::time::Duration;

use chrono_tz::Tz;
use serde::Deserialize;

mod raw;
use raw::{Raw, RawExec, RawPostgres};

use super::retention::Policy;

/// A spec that cannot be used, naming the file, job and field.
#[derive(Debug, thiserror::Error)]
#[error("{file}: Backup {job}: {field}: {problem}")]
pub struct Error {
    pub file: PathBuf,
    pub job: String,
    /// `spec.source.postgres.database` and the like.
    pub field: String,
    /// Not a `#[source]`: the message already holds it (errors are printed with their chain).
    pub problem: Problem,
}

/// What is wrong with a field.
#[derive(Debug, thiserror::Error)]
pub enum Problem {
    #[error("{0}")]
    Format(#[source] serde_json::Error),
    #[error("name exactly one of {0}")]
    ExactlyOne(&'static str),
    #[error("give {0} or portForward, not both")]
    AddressAndForward(&'static str),
    #[error("{0:?} is not a name")]
    NotAName(String),
    #[error("name a command, copyOut paths, or both")]
    NothingToRun,
    #[error("{0:?} is not a path tar takes (empty, or starts with '-')")]
    NotTarPath(String),
    #[error("{} must be absolute", .0.display())]
    NotAbsolute(PathBuf),
    #[error("lies inside the source bucket/prefix (each backup would contain the previous ones)")]
    InsideSource,
    #[error(transparent)]
    Retention(#[from] super::retention::Error),
    #[error("{0}")]
    Duration(String),
    #[error("exec backups have no automatic restore to drill")]
    NoDrill,
    #[error("empty")]
    Empty,
    #[error("{0:?} must start with http:// or https://")]
    Scheme(String),
    #[error("must not carry credentials: use accessKeyFile and secretKeyFile")]
    CredentialsInEndpoint,
    #[error("give both accessKeyFile and secretKeyFile, or neither")]
    KeyPair,
    #[error(transparent)]
    NotPlainName(#[from] NotPlainName),
    #[error(
        "the programs a job runs on the ops host are chosen by the host configuration: remove binDir and set jobs.postgresBinDir in the host configuration (driftless.yaml) instead"
    )]
    HostProgram,
    #[error(
        "{0:?} is not a host name or IP address (a socket directory or connection list on the ops host is not allowed: the repository names no host paths)"
    )]
    NotAHost(String),
    #[error("{0:?} looks like a connection string: name the database only")]
    ConnectionString(String),
    #[error("{0}")]
    Recipient(#[from] super::crypt::BadRecipient),
}

pub use crate::jobs::common::NotPlainName;

/// The file and job a spec comes from, for errors.
struct Origin<'a> {
    file: &'a Path,
    job: &'a str,
}

impl Origin<'_> {
    fn fail(&self, field: impl Into<String>, problem: impl Into<Problem>) -> Error {
        Error {
            file: self.file.to_owned(),
            job: self.job.to_owned(),
            field: field.into(),
            problem: problem.into(),
        }
    }

    fn duration(&self, field: &str, text: &str) -> Result<Duration, Error> {
        crate::stack::model::duration_text::parse(text)
            .map_err(|e| self.fail(field, Problem::Duration(e)))
    }
}

/// A pod (or a service's ready pod) and port reached through the API server.
#[derive(Debug, Clone, Deserialize, serde::Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PodTarget {
    pub namespace: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
    /// Default: the source's usual port (PostgreSQL 5432, MinIO 9000), filled in by [`parse`].
    #[serde(default)]
    pub port: u16,
}

/// A bucket and prefix in an S3-compatible store; keys from files in the credentials directory.
#[derive(Debug, Clone, Deserialize, serde::Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct S3Location {
    /// `http(s)://host:port` (MinIO); none for AWS (or with `port_forward`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    /// Reach the S3 API through the API server instead: a local port forwarded to a pod (or a
    /// service's ready pod) serving it over plain HTTP (MinIO in the cluster).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port_forward: Option<PodTarget>,
    pub bucket: String,
    #[serde(default)]
    pub prefix: String,
    #[serde(default = "default_region")]
    pub region: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access_key_file: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_key_file: Option<String>,
}

fn default_region() -> String {
    "us-east-1".to_owned()
}

impl S3Location {
    /// The prefix without leading or trailing slashes.
    pub fn clean_prefix(&self) -> String {
        self.prefix.trim_matches('/').to_owned()
    }
}

/// A directory on the ops host.
#[derive(Debug, Clone, Deserialize, serde::Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct LocalDir {
    pub path: PathBuf,
}

/// A PostgreSQL database to dump.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Postgres {
    pub host: String,
    pub port: u16,
    /// When set, host and port are a local end of a port-forward to this target.
    pub port_forward: Option<PodTarget>,
    pub database: String,
    pub username: String,
    pub password_file: Option<String>,
    pub globals: bool,
}

/// A command run in a pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exec {
    pub namespace: String,
    /// The pod, or (exactly one of the two) a service whose first running, ready pod is used:
    /// a Deployment's pods have generated names.
    pub pod: Option<String>,
    pub service: Option<String>,
    pub container: Option<String>,
    /// Run first; its standard output is the backup's `stdout` (may be empty with `copy_out`).
    pub command: Vec<String>,
    /// Files or directories copied out of the container after the command succeeded, as one
    /// tar archive (`tar cf - PATHS` run through exec, as `kubectl cp` does).
    pub copy_out: Vec<String>,
    pub timeout: Duration,
}

/// What is backed up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    Postgres(Postgres),
    S3(S3Location),
    Exec(Exec),
}

impl Source {
    pub fn kind(&self) -> &'static str {
        match self {
            Source::Postgres(_) => "postgres",
            Source::S3(_) => "s3",
            Source::Exec(_) => "exec",
        }
    }
}

/// Where backups go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Destination {
    Local(LocalDir),
    S3(S3Location),
}

/// A usable Backup spec.
#[derive(Debug, Clone)]
pub struct Spec {
    pub source: Source,
    pub destination: Destination,
    pub retention: Policy,
    /// The job's time zone (calendar buckets of retention).
    pub time_zone: Tz,
    pub max_age: Option<Duration>,
    pub restore_drill: bool,
    /// Longest a run may take; a run still going then is cut short and fails. This host's
    /// incomplete backups older than this are removed by later runs.
    pub timeout: Duration,
    /// Encrypt every file with age (none: not encrypted).
    pub encryption: Option<Encryption>,
}

/// `spec.encryption`: the recipients (public keys) every file of a backup is encrypted to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Encryption {
    /// Checked X25519 public keys (`age1…`), at least one.
    pub age_recipients: Vec<String>,
}

impl Exec {
    /// The pod, or the service whose pod it runs in, as messages name it.
    pub fn target(&self) -> String {
        match (&self.pod, &self.service) {
            (Some(p), _) => format!("pod {}/{p}", self.namespace),
            (None, s) => format!(
                "a pod of service {}/{}",
                self.namespace,
                s.as_deref().unwrap_or("")
            ),
        }
    }
}

/// A run's timeout when the job sets none.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(6 * 3600);

/// Parses and checks the kind's own fields of job `job` in `file`; `time_zone` is the job's
/// (`jobs::model` reads the fields every kind has).
pub fn parse(
    file: &Path,
    job: &str,
    time_zone: Tz,
    spec: &serde_json::Value,
) -> Result<Spec, Error> {
    let at = Origin { file, job };
    let raw: Raw =
        serde_json::from_value(spec.clone()).map_err(|e| at.fail("spec", Problem::Format(e)))?;
    let source = match (raw.source.postgres, raw.source.s3, raw.source.exec) {
        (Some(p), None, None) => Source::Postgres(postgres(&at, p)?),
        (None, Some(mut s), None) => {
            check_s3(&at, "spec.source.s3", &mut s)?;
            Source::S3(s)
        }
        (None, None, Some(e)) => Source::Exec(exec(&at, e)?),
        _ => {
            return Err(at.fail("spec.source", Problem::ExactlyOne("postgres, s3, exec")));
        }
    };
    let destination = match (raw.destination.local, raw.destination.s3) {
        (Some(l), None) => {
            if !l.path.is_absolute() {
                return Err(at.fail("spec.destination.local.path", Problem::NotAbsolute(l.path)));
            }
            Destination::Local(l)
        }
        (None, Some(mut s)) => {
            check_s3(&at, "spec.destination.s3", &mut s)?;
            Destination::S3(s)
        }
        _ => {
            return Err(at.fail("spec.destination", Problem::ExactlyOne("local, s3")));
        }
    };
    if let (Source::S3(from), Destination::S3(to)) = (&source, &destination)
        && from.endpoint == to.endpoint
        && from.port_forward == to.port_forward
        && from.bucket == to.bucket
        && (from.clean_prefix().is_empty() || to.clean_prefix().starts_with(&from.clean_prefix()))
    {
        return Err(at.fail("spec.destination.s3", Problem::InsideSource));
    }
    let r = raw.retention;
    let retention = Policy::new(Policy {
        keep_last: r.keep_last,
        keep_hourly: r.keep_hourly,
        keep_daily: r.keep_daily,
        keep_weekly: r.keep_weekly,
        keep_monthly: r.keep_monthly,
        keep_yearly: r.keep_yearly,
        keep_within: r
            .keep_within
            .map(|t| at.duration("spec.retention.keepWithin", &t))
            .transpose()?,
    })
    .map_err(|e| at.fail("spec.retention", e))?;
    let max_age = raw
        .max_age
        .map(|t| at.duration("spec.maxAge", &t))
        .transpose()?;
    if matches!(source, Source::Exec(_)) && raw.restore_drill {
        return Err(at.fail("spec.restoreDrill", Problem::NoDrill));
    }
    let timeout = match raw.timeout {
        Some(t) => at.duration("spec.timeout", &t)?,
        None => DEFAULT_TIMEOUT,
    };
    if timeout.is_zero() {
        return Err(at.fail(
            "spec.timeout",
            Problem::Duration("must be longer than 0s".to_owned()),
        ));
    }
    let encryption = match raw.encryption {
        None => None,
        Some(e) => {
            if e.age_recipients.is_empty() {
                return Err(at.fail("spec.encryption.ageRecipients", Problem::Empty));
            }
            let mut keys = Vec::new();
            for (i, r) in e.age_recipients.iter().enumerate() {
                let key = super::crypt::parse_recipient(r)
                    .map_err(|p| at.fail(format!("spec.encryption.ageRecipients[{i}]"), p))?;
                keys.push(key.to_string());
            }
            Some(Encryption {
                age_recipients: keys,
            })
        }
    };
    Ok(Spec {
        source,
        destination,
        retention,
        time_zone,
        max_age,
        restore_drill: raw.restore_drill,
        timeout,
        encryption,
    })
}

fn postgres(at: &Origin<'_>, p: RawPostgres) -> Result<Postgres, Error> {
    if p.bin_dir.is_some() {
        return Err(at.fail("spec.source.postgres.binDir", Problem::HostProgram));
    }
    if let Some(h) = &p.host
        && !is_network_host(h)
    {
        return Err(at.fail("spec.source.postgres.host", Problem::NotAHost(h.clone())));
    }
    if p.database.contains('=') || p.database.contains("://") {
        return Err(at.fail(
            "spec.source.postgres.database",
            Problem::ConnectionString(p.database.clone()),
        ));
    }
    if p.port_forward.is_some() && (p.host.is_some() || p.port.is_some()) {
        return Err(at.fail(
            "spec.source.postgres",
            Problem::AddressAndForward("host/port"),
        ));
    }
    let mut port_forward = p.port_forward;
    if let Some(t) = &mut port_forward {
        check_pod_target(at, "spec.source.postgres.portForward", t, 5432)?;
    }
    if let Some(f) = &p.password_file {
        plain_credential(f).map_err(|e| at.fail("spec.source.postgres.passwordFile", e))?;
    }
    for (field, v) in [("database", &p.database), ("username", &p.username)] {
        if v.is_empty() || v.starts_with('-') {
            return Err(at.fail(
                format!("spec.source.postgres.{field}"),
                Problem::NotAName(v.clone()),
            ));
        }
    }
    Ok(Postgres {
        host: p.host.unwrap_or_else(|| "127.0.0.1".to_owned()),
        port: p.port.unwrap_or(5432),
        port_forward,
        database: p.database,
        username: p.username,
        password_file: p.password_file,
        globals: p.globals,
    })
}

fn exec(at: &Origin<'_>, e: RawExec) -> Result<Exec, Error> {
    if e.command.is_empty() && e.copy_out.is_empty() {
        return Err(at.fail("spec.source.exec", Problem::NothingToRun));
    }
    if e.pod.is_some() == e.service.is_some() {
        return Err(at.fail("spec.source.exec", Problem::ExactlyOne("pod, service")));
    }
    if let Some(bad) = e
        .copy_out
        .iter()
        .find(|p| p.is_empty() || p.starts_with('-') || p.contains('\0'))
    {
        return Err(at.fail("spec.source.exec.copyOut", Problem::NotTarPath(bad.clone())));
    }
    Ok(Exec {
        namespace: e.namespace,
        pod: e.pod,
        service: e.service,
        container: e.container,
        command: e.command,
        copy_out: e.copy_out,
        timeout: match e.timeout {
            Some(t) => at.duration("spec.source.exec.timeout", &t)?,
            None => Duration::from_secs(3600),
        },
    })
}

/// A host name or an IP address, as libpq's `PGHOST` takes it: not a socket directory (`/…`,
/// `@…`), not a list (`a,b`), nothing a shell or conninfo parser would split.
fn is_network_host(h: &str) -> bool {
    !h.is_empty()
        && h.len() <= 253
        && !h.starts_with(['-', '.'])
        && h.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | ':' | '[' | ']'))
}

/// Checks a port-forward target and fills in the default port.
fn check_pod_target(
    at: &Origin<'_>,
    field: &str,
    t: &mut PodTarget,
    default_port: u16,
) -> Result<(), Error> {
    if t.port == 0 {
        t.port = default_port;
    }
    match (&t.pod, &t.service) {
        (Some(_), None) | (None, Some(_)) => Ok(()),
        _ => Err(at.fail(field, Problem::ExactlyOne("pod, service"))),
    }
}

fn check_s3(at: &Origin<'_>, field: &str, s: &mut S3Location) -> Result<(), Error> {
    if s.bucket.is_empty() {
        return Err(at.fail(format!("{field}.bucket"), Problem::Empty));
    }
    if let Some(t) = &mut s.port_forward {
        if s.endpoint.is_some() {
            return Err(at.fail(field, Problem::AddressAndForward("endpoint")));
        }
        check_pod_target(at, &format!("{field}.portForward"), t, 9000)?;
    }
    if let Some(e) = &s.endpoint {
        if !(e.starts_with("http://") || e.starts_with("https://")) {
            return Err(at.fail(format!("{field}.endpoint"), Problem::Scheme(e.clone())));
        }
        if e.contains('@') {
            // Never echo it: it holds a credential.
            return Err(at.fail(format!("{field}.endpoint"), Problem::CredentialsInEndpoint));
        }
    }
    if s.access_key_file.is_some() != s.secret_key_file.is_some() {
        return Err(at.fail(field, Problem::KeyPair));
    }
    for (name, file) in [
        ("accessKeyFile", &s.access_key_file),
        ("secretKeyFile", &s.secret_key_file),
    ] {
        if let Some(f) = file {
            plain_credential(f).map_err(|e| at.fail(format!("{field}.{name}"), e))?;
        }
    }
    Ok(())
}

pub(crate) use crate::jobs::common::plain_credential;

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn job(spec: serde_json::Value) -> serde_json::Value {
        crate::jobs::model::kind_fields(&spec)
    }

    fn parse(spec: &serde_json::Value) -> Result<Spec, Error> {
        super::parse(
            Path::new("stack/s/jobs.yaml"),
            "pg",
            chrono_tz::Europe::Berlin,
            spec,
        )
    }

    #[test]
    fn a_full_spec_parses_with_defaults() {
        let s = parse(&job(json!({
            "schedule": "@daily",
            "source": {"postgres": {"database": "app", "username": "app", "passwordFile": "pw",
                "portForward": {"namespace": "db", "service": "postgres"}}},
            "destination": {"s3": {"endpoint": "http://127.0.0.1:9000", "bucket": "b", "prefix": "/x/",
                "accessKeyFile": "a", "secretKeyFile": "s"}},
            "retention": {"keepLast": 3, "keepWithin": "2d"},
            "maxAge": "26h",
        })))
        .unwrap();
        let Source::Postgres(p) = &s.source else {
            panic!("{:?}", s.source)
        };
        assert_eq!(p.port_forward.as_ref().unwrap().port, 5432);
        assert_eq!(p.host, "127.0.0.1");
        assert!(!p.globals);
        let Destination::S3(d) = &s.destination else {
            panic!()
        };
        assert_eq!(d.clean_prefix(), "x");
        assert_eq!(d.region, "us-east-1");
        assert_eq!(
            s.retention.keep_within,
            Some(Duration::from_secs(2 * 86400))
        );
        assert_eq!(s.max_age, Some(Duration::from_secs(26 * 3600)));
        assert_eq!(s.time_zone, chrono_tz::Europe::Berlin);
    }

    #[test]
    fn an_s3_location_may_be_reached_through_a_port_forward() {
        let s = parse(&job(json!({
            "schedule": "@daily",
            "source": {"s3": {"bucket": "data", "portForward": {"namespace": "storage", "service": "minio"}}},
            "destination": {"local": {"path": "/b"}},
            "retention": {"keepLast": 1},
        })))
        .unwrap();
        let Source::S3(l) = &s.source else {
            panic!("{:?}", s.source)
        };
        assert_eq!(l.port_forward.as_ref().unwrap().port, 9000, "MinIO's port");
        assert_eq!(l.endpoint, None);
        let err = parse(&job(json!({
            "schedule": "@daily",
            "source": {"s3": {"bucket": "data", "endpoint": "http://h:9000", "portForward": {"namespace": "storage", "pod": "minio-0"}}},
            "destination": {"local": {"path": "/b"}},
            "retention": {"keepLast": 1},
        })))
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("spec.source.s3: give endpoint or portForward, not both"),
            "{err}"
        );
    }

    #[test]
    fn credential_files_are_plain_names() {
        for (spec, want) in [
            (
                json!({"postgres": {"database": "app", "username": "app", "passwordFile": "/etc/driftless/kubeconfig"}}),
                "spec.source.postgres.passwordFile: \"/etc/driftless/kubeconfig\" must be a plain file name",
            ),
            (
                json!({"s3": {"bucket": "b", "endpoint": "http://h:9000", "accessKeyFile": "../../git-token", "secretKeyFile": "s"}}),
                "spec.source.s3.accessKeyFile: \"../../git-token\" must be a plain file name",
            ),
        ] {
            let err = parse(&job(json!({
                "schedule": "@daily",
                "source": spec,
                "destination": {"local": {"path": "/b"}},
                "retention": {"keepLast": 1},
            })))
            .unwrap_err()
            .to_string();
            assert!(err.contains(want), "{err}");
        }
    }

    #[test]
    fn the_repository_names_no_host_program_or_socket() {
        let with = |pg: serde_json::Value| {
            parse(&job(json!({
                "schedule": "@daily",
                "source": {"postgres": pg},
                "destination": {"local": {"path": "/b"}},
                "retention": {"keepLast": 1},
            })))
        };
        let err = with(json!({"database": "a", "username": "u", "binDir": "/tmp/evil"}))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("spec.source.postgres.binDir")
                && err.contains("set jobs.postgresBinDir in the host configuration"),
            "{err}"
        );
        for host in [
            "/var/run/postgresql",
            "@abstract",
            "a,b",
            "h dbname=x",
            "-oops",
        ] {
            let err = with(json!({"database": "a", "username": "u", "host": host}))
                .unwrap_err()
                .to_string();
            assert!(
                err.contains("is not a host name or IP address"),
                "{host}: {err}"
            );
        }
        for ok in ["127.0.0.1", "db.example.internal", "::1", "pg-0"] {
            assert!(
                with(json!({"database": "a", "username": "u", "host": ok})).is_ok(),
                "{ok}"
            );
        }
        for db in ["host=/tmp dbname=x", "postgresql://h/x"] {
            let err = with(json!({"database": db, "username": "u"}))
                .unwrap_err()
                .to_string();
            assert!(err.contains("looks like a connection string"), "{err}");
        }
        assert_eq!(
            with(json!({"database": "a", "username": "u"}))
                .unwrap()
                .timeout,
            DEFAULT_TIMEOUT
        );
    }

    #[test]
    fn encryption_names_public_keys_only_and_never_echoes_a_secret_one() {
        let key = age::x25519::Identity::generate();
        let public = key.to_public().to_string();
        let secret = secrecy::ExposeSecret::expose_secret(&key.to_string()).to_owned();
        let with = |encryption: serde_json::Value| {
            parse(&job(json!({
                "schedule": "@daily",
                "source": {"postgres": {"database": "a", "username": "u"}},
                "destination": {"local": {"path": "/b"}},
                "retention": {"keepLast": 1},
                "encryption": encryption,
            })))
        };
        let s = with(json!({"ageRecipients": [format!(" {public} ")]})).unwrap();
        assert_eq!(
            s.encryption.unwrap().age_recipients,
            std::slice::from_ref(&public)
        );
        // `null` (a profile's variable): not encrypted.
        assert_eq!(with(json!(null)).unwrap().encryption, None);
        for (value, want) in [
            (
                json!({"ageRecipients": [public.clone(), secret.clone()]}),
                "spec.encryption.ageRecipients[1]: is an age secret key",
            ),
            (
                json!({"ageRecipients": ["ssh-ed25519 AAAAC3"]}),
                "spec.encryption.ageRecipients[0]: is not an age X25519 recipient",
            ),
            (
                json!({"ageRecipients": []}),
                "spec.encryption.ageRecipients: empty",
            ),
            (
                json!({"ageRecipients": [public.clone()], "identityFile": "k"}),
                "unknown field",
            ),
        ] {
            let err = with(value).unwrap_err().to_string();
            assert!(err.contains(want), "{err} (want {want})");
            assert!(
                !err.contains(&secret[16..]),
                "the secret key is not echoed: {err}"
            );
        }
    }

    #[test]
    fn an_exec_source_names_a_pod_or_a_service() {
        let with = |exec: serde_json::Value| {
            parse(&job(json!({
                "schedule": "@daily",
                "source": {"exec": exec},
                "destination": {"local": {"path": "/b"}},
                "retention": {"keepLast": 1},
            })))
        };
        let s = with(json!({"namespace": "storage", "service": "docker-registry", "copyOut": ["/var/lib/registry"]}))
            .unwrap();
        let Source::Exec(e) = &s.source else {
            panic!("{:?}", s.source)
        };
        assert_eq!(e.target(), "a pod of service storage/docker-registry");
        for exec in [
            json!({"namespace": "n", "copyOut": ["/x"]}),
            json!({"namespace": "n", "pod": "p", "service": "s", "copyOut": ["/x"]}),
        ] {
            let err = with(exec).unwrap_err().to_string();
            assert!(
                err.contains("spec.source.exec: name exactly one of pod, service"),
                "{err}"
            );
        }
    }

    #[test]
    fn mistakes_name_the_field() {
        let pg = json!({"postgres": {"database": "app", "username": "app"}});
        let local = json!({"local": {"path": "/b"}});
        let keep = json!({"keepLast": 1});
        for (spec, want) in [
            (
                json!({"schedule": "@daily", "source": pg, "destination": local, "retention": {}}),
                "spec.retention: the retention policy keeps nothing",
            ),
            (
                json!({"schedule": "@daily", "source": {}, "destination": local, "retention": keep}),
                "spec.source: name exactly one",
            ),
            (
                json!({"schedule": "@daily", "source": pg, "destination": {"local": {"path": "rel"}}, "retention": keep}),
                "spec.destination.local.path",
            ),
            (
                json!({"schedule": "@daily", "source": pg, "destination": {"s3": {"bucket": "b", "endpoint": "http://u:p@h"}}, "retention": keep}),
                "must not carry credentials",
            ),
            (
                json!({"schedule": "@daily", "source": {"postgres": {"database": "a", "username": "u", "host": "h", "portForward": {"namespace": "n", "pod": "p"}}}, "destination": local, "retention": keep}),
                "host/port or portForward",
            ),
            (
                json!({"schedule": "@daily", "source": {"postgres": {"database": "a", "username": "u", "portForward": {"namespace": "n"}}}, "destination": local, "retention": keep}),
                "portForward: name exactly one of pod, service",
            ),
            (
                json!({"schedule": "@daily", "source": {"exec": {"namespace": "n", "pod": "p", "command": []}}, "destination": local, "retention": keep}),
                "spec.source.exec: name a command",
            ),
            (
                json!({"schedule": "@daily", "source": {"exec": {"namespace": "n", "pod": "p", "copyOut": ["--to-command=sh"]}}, "destination": local, "retention": keep}),
                "spec.source.exec.copyOut",
            ),
            (
                json!({"schedule": "@daily", "source": {"s3": {"bucket": "b"}}, "destination": {"s3": {"bucket": "b", "prefix": "bk"}}, "retention": keep}),
                "inside the source",
            ),
            (
                json!({"schedule": "@daily", "source": pg, "destination": local, "retention": keep, "password": "x"}),
                "unknown field",
            ),
            (
                json!({"schedule": "@daily", "source": pg, "destination": local, "retention": {"keepDaily": 0}}),
                "keepDaily must be at least 1",
            ),
        ] {
            let err = parse(&job(spec)).unwrap_err().to_string();
            assert!(
                err.contains(want)
                    && err.contains("stack/s/jobs.yaml")
                    && err.contains("Backup pg"),
                "{err} (want {want})"
            );
        }
    }
}
