//! Host credential files: the one reader for every secret driftless reads from the ops host —
//! stacks' `spec.secrets`, jobs' `*File` fields, the Git source's auth, webhook secrets and the
//! status token.
//!
//! Two kinds of reader, because two parties name files:
//! - the **host configuration** (trusted) names the files driftless itself uses: read with
//!   [`Credentials::host_secret`];
//! - the **stack repository** (untrusted: any writer of the branch) names files for its stacks
//!   and jobs: read with [`Credentials::repository_secret`], which refuses the host's own files
//!   (a commit must not copy the Git token into a Secret, or send the status token to a registry
//!   it chose) and, when `credentials.allow` is set, every file it does not list.
//!
//! Both accept plain file names only (no directory part, no `..`, not absolute), read only
//! regular files of bounded size (a FIFO or a device would hang or never end), and return the
//! content wrapped in `secrecy` types. Errors name the file and the field, never the content.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Component, Path, PathBuf};

use secrecy::{ExposeSecret, SecretSlice, SecretString};
use serde::Deserialize;

/// Largest credential file read, in bytes: tokens, passwords, keys and certificates fit easily.
pub const MAX_CREDENTIAL_BYTES: u64 = 1024 * 1024;

/// Errors reading a credential file. None carries the file's content.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(
        "{field}: {file:?} is read from the credentials directory, and none is set (set credentialsDir in the host configuration, or run under systemd with LoadCredential=)"
    )]
    NoDirectory { field: String, file: String },
    #[error(
        "{field}: {file:?} must be a plain file name in the credentials directory (no directory part, no '..', not absolute)"
    )]
    NotPlainName { field: String, file: String },
    #[error(
        "{field}: {file:?} is a credential the host configuration uses itself ({used_by}); a stack or job may not read it: give the stack its own file"
    )]
    Reserved {
        field: String,
        file: String,
        used_by: String,
    },
    #[error(
        "{field}: {file:?} is not allowed for stacks and jobs by credentials.allow in the host configuration ({allowed})"
    )]
    NotAllowed {
        field: String,
        file: String,
        allowed: String,
    },
    #[error("{field}: {path}: {source}")]
    Read {
        field: String,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{field}: {path} is not a regular file")]
    NotRegularFile { field: String, path: PathBuf },
    #[error("{field}: {path} is larger than {limit} bytes")]
    TooLarge {
        field: String,
        path: PathBuf,
        limit: u64,
    },
    #[error("{field}: {path} is not UTF-8 text")]
    NotText { field: String, path: PathBuf },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// `credentials:` in the host configuration.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct CredentialsConfig {
    /// File names (globs with `*` and `?`) that stacks and jobs may read. Unset: every file but
    /// the host's own. The host's own files are refused even when a pattern matches them.
    #[serde(default)]
    pub allow: Option<Vec<String>>,
}

/// The credentials directory and the rules for reading from it.
#[derive(Debug, Clone, Default)]
pub struct Credentials {
    dir: Option<PathBuf>,
    /// File name → the host configuration field that uses it.
    reserved: BTreeMap<String, String>,
    allow: Option<Vec<String>>,
    /// `sops.ageKeyFile` of the host configuration: the age identity SOPS files decrypt with.
    sops_age_key: Option<String>,
}

impl Credentials {
    /// The credentials of a directory (none: no credentials directory): `reserved` maps the
    /// host's own files to the field naming them (no stack or job may read those), `allow` the
    /// globs of what stacks and jobs may read, `sops_age_key` the file of the SOPS identity.
    /// `config::HostConfig::credentials` builds it from a host configuration.
    pub fn new(
        dir: Option<PathBuf>,
        reserved: BTreeMap<String, String>,
        allow: Option<Vec<String>>,
        sops_age_key: Option<String>,
    ) -> Credentials {
        Credentials {
            dir,
            reserved,
            allow,
            sops_age_key,
        }
    }

    /// Credentials from a directory alone: nothing reserved, everything allowed (tests, and
    /// commands that read no host configuration).
    pub fn in_dir(dir: Option<PathBuf>) -> Credentials {
        Credentials {
            dir,
            ..Credentials::default()
        }
    }

    /// Reads the age identity of `sops.ageKeyFile` (`None` when the host configuration sets
    /// none). A host file: stacks and jobs may not read it (it is reserved).
    pub fn sops_age_key(&self) -> Option<Result<SecretString>> {
        let file = self.sops_age_key.as_deref()?;
        Some(self.host_text("sops.ageKeyFile", file))
    }

    /// These credentials with `sops.ageKeyFile` set to `file` (commands and tests that build
    /// credentials without a host configuration).
    pub fn with_sops_age_key(mut self, file: &str) -> Credentials {
        self.sops_age_key = Some(file.to_owned());
        self.reserved
            .insert(file.to_owned(), "sops.ageKeyFile".to_owned());
        self
    }

    /// The credentials directory, if one is set.
    pub fn dir(&self) -> Option<&Path> {
        self.dir.as_deref()
    }

    /// Whether a credentials directory is set.
    pub fn has_dir(&self) -> bool {
        self.dir.is_some()
    }

    /// Checks that the repository may name `file` for `field`, without reading it: a plain name,
    /// not one of the host's own files, allowed by `credentials.allow`.
    pub fn check_repository_name(&self, field: &str, file: &str) -> Result<()> {
        let name = plain_name(file).ok_or_else(|| Error::NotPlainName {
            field: field.to_owned(),
            file: file.to_owned(),
        })?;
        if let Some(used_by) = self.reserved.get(name) {
            return Err(Error::Reserved {
                field: field.to_owned(),
                file: file.to_owned(),
                used_by: used_by.clone(),
            });
        }
        if let Some(allow) = &self.allow
            && !allow.iter().any(|p| glob_match(p, name))
        {
            return Err(Error::NotAllowed {
                field: field.to_owned(),
                file: file.to_owned(),
                allowed: if allow.is_empty() {
                    "an empty list".to_owned()
                } else {
                    allow.join(", ")
                },
            });
        }
        Ok(())
    }

    /// Reads a file the stack repository names (a stack's `spec.secrets`, a job's `*File`
    /// field), for `field` (used in errors).
    pub fn repository_secret(&self, field: &str, file: &str) -> Result<SecretSlice<u8>> {
        self.check_repository_name(field, file)?;
        self.read(field, file)
    }

    /// `repository_secret` as text without its trailing line break (passwords, keys).
    pub fn repository_text(&self, field: &str, file: &str) -> Result<SecretString> {
        let bytes = self.repository_secret(field, file)?;
        self.text(field, file, bytes)
    }

    /// Reads a file the host configuration names for driftless's own use.
    pub fn host_secret(&self, field: &str, file: &str) -> Result<SecretSlice<u8>> {
        plain_name(file).ok_or_else(|| Error::NotPlainName {
            field: field.to_owned(),
            file: file.to_owned(),
        })?;
        self.read(field, file)
    }

    /// `host_secret` as text without its trailing line break.
    pub fn host_text(&self, field: &str, file: &str) -> Result<SecretString> {
        let bytes = self.host_secret(field, file)?;
        self.text(field, file, bytes)
    }

    /// The path of a host-configured credential file that a library must open itself (an SSH
    /// key for libgit2), after the same checks as `host_secret`.
    pub fn host_path(&self, field: &str, file: &str) -> Result<PathBuf> {
        plain_name(file).ok_or_else(|| Error::NotPlainName {
            field: field.to_owned(),
            file: file.to_owned(),
        })?;
        let path = self.path(field, file)?;
        regular_file(field, &path)?;
        Ok(path)
    }

    fn path(&self, field: &str, file: &str) -> Result<PathBuf> {
        let dir = self.dir.as_ref().ok_or_else(|| Error::NoDirectory {
            field: field.to_owned(),
            file: file.to_owned(),
        })?;
        Ok(dir.join(file))
    }

    fn read(&self, field: &str, file: &str) -> Result<SecretSlice<u8>> {
        let path = self.path(field, file)?;
        let io = |source| Error::Read {
            field: field.to_owned(),
            path: path.clone(),
            source,
        };
        // Checked before opening: opening a FIFO blocks until a writer comes.
        regular_file(field, &path)?;
        let f = std::fs::File::open(&path).map_err(io)?;
        let mut bytes = Vec::new();
        f.take(MAX_CREDENTIAL_BYTES + 1)
            .read_to_end(&mut bytes)
            .map_err(io)?;
        if bytes.len() as u64 > MAX_CREDENTIAL_BYTES {
            return Err(Error::TooLarge {
                field: field.to_owned(),
                path,
                limit: MAX_CREDENTIAL_BYTES,
            });
        }
        Ok(SecretSlice::from(bytes))
    }

    fn text(&self, field: &str, file: &str, bytes: SecretSlice<u8>) -> Result<SecretString> {
        let text = std::str::from_utf8(bytes.expose_secret()).map_err(|_| Error::NotText {
            field: field.to_owned(),
            path: self.dir.as_deref().unwrap_or(Path::new("")).join(file),
        })?;
        Ok(SecretString::from(
            text.trim_end_matches(['\n', '\r']).to_owned(),
        ))
    }
}

fn regular_file(field: &str, path: &Path) -> Result<()> {
    let meta = std::fs::metadata(path).map_err(|source| Error::Read {
        field: field.to_owned(),
        path: path.to_owned(),
        source,
    })?;
    if !meta.is_file() {
        return Err(Error::NotRegularFile {
            field: field.to_owned(),
            path: path.to_owned(),
        });
    }
    Ok(())
}

/// `file` if it is one normal path component (what systemd's `LoadCredential=` gives).
pub fn plain_name(file: &str) -> Option<&str> {
    let mut parts = Path::new(file).components();
    match (parts.next(), parts.next()) {
        (Some(Component::Normal(_)), None) if !file.contains(['/', '\\', '\0']) => Some(file),
        _ => None,
    }
}

/// Shell-style glob over a whole name: `*` any run of characters, `?` one character.
pub fn glob_match(pattern: &str, name: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let n: Vec<char> = name.chars().collect();
    // Iterative matching with one backtrack point: linear in practice, never exponential.
    let (mut pi, mut ni) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ni < n.len() {
        match p.get(pi) {
            Some('*') => {
                star = Some((pi, ni));
                pi += 1;
            }
            Some(c) if *c == '?' || *c == n[ni] => {
                pi += 1;
                ni += 1;
            }
            _ => match star {
                Some((sp, sn)) => {
                    pi = sp + 1;
                    ni = sn + 1;
                    star = Some((sp, sn + 1));
                }
                None => return false,
            },
        }
    }
    p[pi..].iter().all(|c| *c == '*')
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::HostConfig;

    fn host_config(yaml: &str) -> HostConfig {
        crate::yaml::parse_one(Path::new("driftless.yaml"), yaml).expect("host config")
    }

    fn dir_with(files: &[(&str, &str)]) -> tempfile::TempDir {
        let d = tempfile::tempdir().expect("tempdir");
        for (name, text) in files {
            std::fs::write(d.path().join(name), text).expect("write");
        }
        d
    }

    #[test]
    fn plain_names_only() {
        for ok in ["token", "minio-password", "a.b", "..x"] {
            assert_eq!(plain_name(ok), Some(ok), "{ok}");
        }
        for bad in [
            "",
            ".",
            "..",
            "../x",
            "a/b",
            "/etc/passwd",
            "a/",
            "./a",
            "a\0b",
            "a\\b",
        ] {
            assert_eq!(plain_name(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn globs() {
        let cases = [
            ("*", "anything", true),
            ("minio-*", "minio-password", true),
            ("minio-*", "pg-password", false),
            ("pg-?", "pg-1", true),
            ("pg-?", "pg-12", false),
            ("*-password", "pg-password", true),
            ("a*b*c", "aXbYc", true),
            ("a*b*c", "aXbY", false),
            ("", "", true),
            ("", "a", false),
            ("exact", "exact", true),
        ];
        for (p, n, want) in cases {
            assert_eq!(glob_match(p, n), want, "{p} ~ {n}");
        }
        // Many stars never take exponential time.
        let long = "a".repeat(10_000);
        assert!(!glob_match(&format!("{}b", "*a".repeat(50)), &long));
    }

    #[test]
    fn the_repository_cannot_read_the_hosts_own_files() {
        let d = dir_with(&[
            ("git-token", "GIT-SENTINEL\n"),
            ("status-token", "STATUS-SENTINEL"),
            ("hook-secret", "HOOK-SENTINEL"),
            ("kubeconfig", "KUBE-SENTINEL"),
            ("age-key", "AGE-SENTINEL"),
            ("minio-password", "pw\n"),
        ]);
        let config = host_config(&format!(
            "source: {{git: {{url: 'https://example.invalid/r.git', auth: {{tokenFile: git-token}}}}}}\n\
             cluster: {{kubeconfig: {}/kubeconfig}}\n\
             sops: {{ageKeyFile: age-key}}\n\
             daemon: {{statusTokenFile: status-token, webhooks: {{github: {{secretFile: hook-secret}}}}}}\n",
            d.path().display()
        ));
        let creds = config.credentials_with_dir(Some(d.path().to_owned()));
        for file in [
            "git-token",
            "status-token",
            "hook-secret",
            "kubeconfig",
            "age-key",
        ] {
            let err = creds
                .repository_secret("spec.secrets[0].fromFiles.X", file)
                .expect_err(file);
            assert!(matches!(err, Error::Reserved { .. }), "{file}: {err}");
            let text = err.to_string();
            assert!(!text.contains("SENTINEL"), "{text}");
            assert!(text.contains(file), "{text}");
        }
        // The host reads them.
        assert_eq!(
            creds
                .host_text("source.git.auth.tokenFile", "git-token")
                .expect("host reads its own")
                .expose_secret(),
            "GIT-SENTINEL"
        );
        assert_eq!(
            creds
                .repository_text("spec.password", "minio-password")
                .expect("allowed")
                .expose_secret(),
            "pw"
        );
    }

    #[test]
    fn paths_outside_the_directory_are_refused() {
        let d = dir_with(&[("ok", "x")]);
        let creds = Credentials::in_dir(Some(d.path().to_owned()));
        for bad in ["/etc/passwd", "../ok", "sub/ok", "..", "."] {
            let err = creds.repository_secret("f", bad).expect_err(bad);
            assert!(matches!(err, Error::NotPlainName { .. }), "{bad}: {err}");
            let err = creds.host_secret("f", bad).expect_err(bad);
            assert!(matches!(err, Error::NotPlainName { .. }), "{bad}: {err}");
        }
    }

    #[test]
    fn allow_list_restricts_the_repository() {
        let d = dir_with(&[("minio-password", "x"), ("pg-password", "y")]);
        let config = host_config("credentials: {allow: ['minio-*']}\n");
        let creds = config.credentials_with_dir(Some(d.path().to_owned()));
        assert!(creds.repository_secret("f", "minio-password").is_ok());
        let err = creds
            .repository_secret("f", "pg-password")
            .expect_err("not allowed");
        assert!(matches!(err, Error::NotAllowed { .. }), "{err}");
    }

    #[test]
    fn only_bounded_regular_files_are_read() {
        let d = dir_with(&[]);
        std::fs::create_dir(d.path().join("adir")).expect("mkdir");
        std::fs::write(
            d.path().join("big"),
            vec![b'x'; MAX_CREDENTIAL_BYTES as usize + 1],
        )
        .expect("write");
        let fifo = d.path().join("fifo");
        let made = std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .expect("mkfifo");
        assert!(made.success());
        let creds = Credentials::in_dir(Some(d.path().to_owned()));
        assert!(matches!(
            creds.repository_secret("f", "adir"),
            Err(Error::NotRegularFile { .. })
        ));
        assert!(matches!(
            creds.repository_secret("f", "fifo"),
            Err(Error::NotRegularFile { .. })
        ));
        assert!(matches!(
            creds.repository_secret("f", "big"),
            Err(Error::TooLarge { .. })
        ));
        assert!(matches!(
            creds.repository_secret("f", "missing"),
            Err(Error::Read { .. })
        ));
        let none = Credentials::in_dir(None);
        assert!(matches!(
            none.repository_secret("f", "x"),
            Err(Error::NoDirectory { .. })
        ));
    }
}
