//! Where backups live: a local directory or an S3 bucket, through one `object_store` API.
//!
//! Layout under the destination (and its `prefix`): `<job>/<id>/manifest.json` and the backup's
//! files beside it (`<job>/<id>/<file>`). Files are streamed in bounded memory (multipart uploads
//! of `PART` bytes, at most `PARTS_IN_FLIGHT` at once) while their sha256 is computed; an S3
//! multipart upload is invisible until completed and a local file is written to a staging name
//! and renamed, so no file is ever seen half-written. The manifest is written last: a backup
//! without one is incomplete, never listed as good, never counted by retention, and removed by
//! the next run ([`Store::remove`] deletes the manifest first, so a removal cut short leaves an
//! incomplete backup, never a complete one with files missing).
//!
//! A store of backups may carry a [`Crypt`]: then every file written is encrypted with age in the
//! stream (stored as `<name>.age`; the entry records the stored file's and the plaintext's size
//! and sha256), and every encrypted file read back ([`Store::read_entry`]) is decrypted with the
//! host's identity, both digests checked.

use std::path::PathBuf;
use std::sync::Arc;

use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use object_store::path::Path as ObjPath;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload, WriteMultipart};
use secrecy::{ExposeSecret, SecretString};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncRead, AsyncReadExt};

use super::crypt::{self, Crypt};
use super::destination::LocalRules;
use super::manifest::FileEntry;
use super::spec::{Destination, S3Location};

mod stream;
pub use stream::{Sink, Upload};

/// Size of one multipart part (S3's minimum except for the last part).
pub const PART: usize = 8 * 1024 * 1024;
/// Parts uploaded concurrently per file: memory per file stays below `(PARTS_IN_FLIGHT + 1) × PART`.
pub const PARTS_IN_FLIGHT: usize = 3;

/// Errors of the destination (or an S3 source), naming the object.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{store}: {what} {path}: {source}")]
    Object {
        store: String,
        what: &'static str,
        path: String,
        #[source]
        source: object_store::Error,
    },
    #[error(
        "{store}: the destination is full ({detail}) while {what} {path}: free space there or keep fewer backups (spec.retention); earlier backups are untouched"
    )]
    Full {
        store: String,
        what: &'static str,
        path: String,
        detail: String,
    },
    #[error("{store}: cannot open: {source}")]
    Open {
        store: String,
        #[source]
        source: object_store::Error,
    },
    #[error(transparent)]
    Credentials(#[from] crate::credentials::Error),
    /// Not a `#[source]`: the message already holds it (errors are printed with their chain).
    #[error("local destination refused: {0}")]
    Refused(super::destination::Refused),
    #[error("{field}: {source}")]
    Forward {
        field: String,
        #[source]
        source: super::pod::Error,
    },
    #[error("{store}: {path}: {message}")]
    Invalid {
        store: String,
        path: String,
        message: String,
    },
    #[error("{store}: {path}: {source}")]
    Io {
        store: String,
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{store}: {path}: {source}")]
    Crypt {
        store: String,
        path: String,
        #[source]
        source: crypt::Error,
    },
    #[error("{store}: {path}: cannot decrypt: {problem}")]
    Decrypt {
        store: String,
        path: String,
        problem: String,
    },
    #[error(
        "{store}: {path} is encrypted and the host configuration names no identity (set encryption.identityFile)"
    )]
    NoIdentity { store: String, path: String },
    #[error(
        "{store}: {path} decrypts to {got_bytes} bytes sha256 {got}, the manifest says {want_bytes} bytes sha256 {want}"
    )]
    ContentMismatch {
        store: String,
        path: String,
        want: String,
        want_bytes: u64,
        got: String,
        got_bytes: u64,
    },
    #[error(
        "{store}: {path} changed after upload: wrote {wrote_bytes} bytes sha256 {wrote}, read back {read_bytes} bytes sha256 {read}"
    )]
    Mismatch {
        store: String,
        path: String,
        wrote: String,
        wrote_bytes: u64,
        read: String,
        read_bytes: u64,
    },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// An object store and a root prefix in it.
#[derive(Clone)]
pub struct Store {
    inner: Arc<dyn ObjectStore>,
    root: String,
    /// For a local directory: the job's directory (to remove what object_store cannot list,
    /// such as the staging files of an upload cut short).
    local: Option<PathBuf>,
    name: String,
    /// The port-forward an S3 location is reached through, open while any clone lives.
    _forward: Option<Arc<super::pod::Forward>>,
    /// Encryption of what is written and decryption of what is read (a store of backups).
    crypt: Option<Arc<Crypt>>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.name)
    }
}

/// Reads a credential file the job names, wrapped (see `credentials`).
pub fn read_secret(
    credentials: &crate::credentials::Credentials,
    field: &str,
    file: &str,
) -> Result<SecretString> {
    Ok(credentials.repository_text(field, file)?)
}

impl Store {
    /// Opens a job's part of a destination (an S3 one through its port-forward, if it has one;
    /// a local one only when `rules` allow it, at its resolved path).
    pub async fn open(
        dest: &Destination,
        job: &str,
        credentials: &crate::credentials::Credentials,
        cluster: Option<&kube::Client>,
        rules: &LocalRules,
    ) -> Result<Store> {
        match dest {
            Destination::Local(l) => {
                let dir =
                    super::destination::check_local(&l.path, job, rules).map_err(Error::Refused)?;
                std::fs::create_dir_all(&dir).map_err(|source| Error::Io {
                    store: l.path.display().to_string(),
                    path: String::new(),
                    source,
                })?;
                let name = format!("{}/{job}", l.path.display());
                let fs = object_store::local::LocalFileSystem::new_with_prefix(&dir)
                    .map_err(|source| Error::Open {
                        store: name.clone(),
                        source,
                    })?
                    .with_fsync(true);
                Ok(Store {
                    inner: Arc::new(fs),
                    root: job.to_owned(),
                    local: Some(dir.join(job)),
                    name,
                    _forward: None,
                    crypt: None,
                })
            }
            Destination::S3(s) => {
                let (inner, forward) = s3(s, "spec.destination.s3", credentials, cluster).await?;
                let prefix = s.clean_prefix();
                let root = if prefix.is_empty() {
                    job.to_owned()
                } else {
                    format!("{prefix}/{job}")
                };
                Ok(Store {
                    inner,
                    name: format!("s3://{}/{root}", s.bucket),
                    root,
                    local: None,
                    _forward: forward,
                    crypt: None,
                })
            }
        }
    }

    /// A store over a bucket and prefix (the S3 source, a restore target).
    pub async fn s3_location(
        s: &S3Location,
        field: &str,
        credentials: &crate::credentials::Credentials,
        cluster: Option<&kube::Client>,
    ) -> Result<Store> {
        let root = s.clean_prefix();
        let (inner, forward) = s3(s, field, credentials, cluster).await?;
        Ok(Store {
            inner,
            name: format!("s3://{}/{root}", s.bucket),
            root,
            local: None,
            _forward: forward,
            crypt: None,
        })
    }

    /// The same store, encrypting what it writes and decrypting what it reads with `crypt`.
    pub fn with_crypt(mut self, crypt: Arc<Crypt>) -> Store {
        self.crypt = Some(crypt);
        self
    }

    /// Whether files written here are encrypted.
    pub fn encrypts(&self) -> bool {
        self.crypt.as_ref().is_some_and(|c| c.encrypts())
    }

    /// How messages name it.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// For a local directory: the directory the store's root is (object_store does not list
    /// staging files of an upload cut short; `catalog` looks there itself).
    pub fn local_dir(&self) -> Option<&std::path::Path> {
        self.local.as_deref()
    }

    fn path(&self, rel: &str) -> Result<ObjPath> {
        let full = if self.root.is_empty() {
            rel.to_owned()
        } else if rel.is_empty() {
            self.root.clone()
        } else {
            format!("{}/{rel}", self.root)
        };
        ObjPath::parse(&full).map_err(|e| Error::Invalid {
            store: self.name.clone(),
            path: full,
            message: e.to_string(),
        })
    }

    fn object_error(
        &self,
        what: &'static str,
        path: &ObjPath,
        source: object_store::Error,
    ) -> Error {
        if let Some(detail) = full(&source) {
            return Error::Full {
                store: self.name.clone(),
                what,
                path: path.to_string(),
                detail,
            };
        }
        Error::Object {
            store: self.name.clone(),
            what,
            path: path.to_string(),
            source,
        }
    }

    /// Starts a streamed upload of `dir/name`; its entry is named `name`. In a store that
    /// encrypts, the bytes are encrypted as they pass and stored as `dir/name.age`.
    pub async fn writer(&self, dir: &str, name: &str) -> Result<Upload> {
        let encrypting = match self.crypt.as_ref().filter(|c| c.encrypts()) {
            Some(c) => Some(c.start().map_err(|source| Error::Crypt {
                store: self.name.clone(),
                path: join(dir, name),
                source,
            })?),
            None => None,
        };
        let stored = match encrypting {
            Some(_) => format!("{name}{}", crypt::SUFFIX),
            None => name.to_owned(),
        };
        let path = self.path(&join(dir, &stored))?;
        let upload = self
            .inner
            .put_multipart(&path)
            .await
            .map_err(|e| self.object_error("starting upload of", &path, e))?;
        Ok(Upload {
            store: self.clone(),
            name: name.to_owned(),
            path,
            parts: WriteMultipart::new_with_chunk_size(upload, PART),
            hash: Sha256::new(),
            bytes: 0,
            encrypting: encrypting.map(|e| (e, Sha256::new(), 0)),
        })
    }

    /// Streams `reader` into `dir/name`; returns its size and sha256.
    pub async fn upload_from(
        &self,
        dir: &str,
        name: &str,
        mut reader: impl AsyncRead + Unpin,
    ) -> Result<FileEntry> {
        let mut w = self.writer(dir, name).await?;
        let mut buf = vec![0u8; 256 * 1024];
        loop {
            let n = match reader.read(&mut buf).await {
                Ok(0) => break,
                Ok(n) => n,
                Err(source) => {
                    let path = w.path.to_string();
                    w.abort().await;
                    return Err(Error::Io {
                        store: self.name.clone(),
                        path,
                        source,
                    });
                }
            };
            w.write(&buf[..n]).await?;
        }
        w.finish().await
    }

    /// Writes a small object in one request (atomic in both stores).
    pub async fn put_small(&self, rel: &str, data: Bytes) -> Result<()> {
        let path = self.path(rel)?;
        self.inner
            .put(&path, PutPayload::from_bytes(data))
            .await
            .map_err(|e| self.object_error("writing", &path, e))?;
        Ok(())
    }

    /// Reads a small object whole.
    pub async fn get_small(&self, rel: &str) -> Result<Bytes> {
        let path = self.path(rel)?;
        let got = self
            .inner
            .get(&path)
            .await
            .map_err(|e| self.object_error("reading", &path, e))?;
        got.bytes()
            .await
            .map_err(|e| self.object_error("reading", &path, e))
    }

    /// Every object under `rel` (relative names, sorted) with its size.
    pub async fn list(&self, rel: &str) -> Result<Vec<(String, u64)>> {
        let prefix = if self.root.is_empty() && rel.is_empty() {
            None
        } else {
            Some(self.path(rel)?)
        };
        let base = prefix.as_ref().map(|p| format!("{p}/")).unwrap_or_default();
        let mut out: Vec<(String, u64)> = self
            .inner
            .list(prefix.as_ref())
            .map(|r| {
                r.map(|m| {
                    let key = m.location.to_string();
                    (key.strip_prefix(&base).unwrap_or(&key).to_owned(), m.size)
                })
            })
            .try_collect()
            .await
            .map_err(|e| Error::Object {
                store: self.name.clone(),
                what: "listing",
                path: base.clone(),
                source: e,
            })?;
        out.sort();
        Ok(out)
    }

    /// Deletes one object (gone already is fine).
    pub async fn delete(&self, rel: &str) -> Result<()> {
        let path = self.path(rel)?;
        match self.inner.delete(&path).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(self.object_error("deleting", &path, e)),
        }
    }

    /// Deletes every object under `rel` (a restore target with `--force`, a drill's scratch).
    pub async fn remove_prefix(&self, rel: &str) -> Result<()> {
        for (key, _) in self.list(rel).await? {
            let path = self.path(&join(rel, &key))?;
            match self.inner.delete(&path).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => return Err(self.object_error("deleting", &path, e)),
            }
        }
        Ok(())
    }
}

/// Why an error means the destination has no room left: a local file system out of space or
/// quota (ENOSPC, EDQUOT anywhere in the error's chain), or an S3 server saying its storage or
/// the bucket's quota is full.
fn full(e: &object_store::Error) -> Option<String> {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(c) = cause {
        if let Some(io) = c.downcast_ref::<std::io::Error>() {
            match io.kind() {
                std::io::ErrorKind::StorageFull => {
                    return Some("ENOSPC: no space left on device".to_owned());
                }
                std::io::ErrorKind::QuotaExceeded => {
                    return Some("EDQUOT: disk quota exceeded".to_owned());
                }
                _ => {}
            }
        }
        cause = c.source();
    }
    let text = e.to_string();
    ["XMinioStorageFull", "QuotaExceeded", "EntityTooLarge"]
        .into_iter()
        .find(|code| text.contains(code))
        .map(|code| format!("the server answered {code}"))
}

/// `a/b`, with either side empty.
pub fn join(a: &str, b: &str) -> String {
    match (a.is_empty(), b.is_empty()) {
        (true, _) => b.to_owned(),
        (_, true) => a.to_owned(),
        _ => format!("{a}/{b}"),
    }
}

async fn s3(
    s: &S3Location,
    field: &str,
    credentials: &crate::credentials::Credentials,
    cluster: Option<&kube::Client>,
) -> Result<(Arc<dyn ObjectStore>, Option<Arc<super::pod::Forward>>)> {
    let mut b = object_store::aws::AmazonS3Builder::new()
        .with_bucket_name(&s.bucket)
        .with_region(&s.region)
        .with_virtual_hosted_style_request(false);
    let mut forward = None;
    if let Some(t) = &s.port_forward {
        let f = super::pod::forward(cluster, t)
            .await
            .map_err(|source| Error::Forward {
                field: format!("{field}.portForward"),
                source,
            })?;
        b = b
            .with_endpoint(format!("http://127.0.0.1:{}", f.port))
            .with_allow_http(true);
        forward = Some(Arc::new(f));
    } else if let Some(e) = &s.endpoint {
        b = b.with_endpoint(e).with_allow_http(e.starts_with("http://"));
    }
    if let (Some(a), Some(k)) = (&s.access_key_file, &s.secret_key_file) {
        let access = read_secret(credentials, &format!("{field}.accessKeyFile"), a)?;
        let secret = read_secret(credentials, &format!("{field}.secretKeyFile"), k)?;
        // Exposed only to hand them to the client that signs requests with them.
        b = b
            .with_access_key_id(access.expose_secret())
            .with_secret_access_key(secret.expose_secret());
    }
    let store = b.build().map_err(|source| Error::Open {
        store: format!("s3://{}", s.bucket),
        source,
    })?;
    Ok((Arc::new(store), forward))
}
