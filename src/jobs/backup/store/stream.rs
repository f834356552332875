//! Streaming through a [`Store`]: reading files back ([`Sink`], decrypting and checking both
//! digests of an encrypted one) and writing them ([`Upload`], hashing and, in a store that
//! encrypts, encrypting as the bytes pass).

use futures::TryStreamExt;
use object_store::path::Path as ObjPath;
use object_store::{ObjectStoreExt, WriteMultipart};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncWrite, AsyncWriteExt};

use super::{Error, PARTS_IN_FLIGHT, Result, Store, join};
use crate::jobs::backup::crypt::{self, Encrypting};
use crate::jobs::backup::manifest::{Digest as FileDigest, FileEntry};

/// Where [`Store::read_entry`] puts what it reads.
pub enum Sink<'a> {
    /// Nowhere: only checked.
    Discard,
    Write(&'a mut (dyn AsyncWrite + Unpin + Send)),
    Upload(&'a mut Upload),
}

impl Sink<'_> {
    async fn put(&mut self, buf: &[u8], store: &str, path: &str) -> Result<()> {
        match self {
            Sink::Discard => Ok(()),
            Sink::Write(w) => w.write_all(buf).await.map_err(|source| Error::Io {
                store: store.to_owned(),
                path: path.to_owned(),
                source,
            }),
            Sink::Upload(up) => up.write(buf).await,
        }
    }

    async fn flush(&mut self, store: &str, path: &str) -> Result<()> {
        match self {
            Sink::Write(w) => w.flush().await.map_err(|source| Error::Io {
                store: store.to_owned(),
                path: path.to_owned(),
                source,
            }),
            _ => Ok(()),
        }
    }
}

impl Store {
    /// Reads `rel` completely into `sink`, as stored (no decryption); returns its size and
    /// sha256.
    pub async fn read_into(&self, rel: &str, mut sink: Sink<'_>) -> Result<(u64, String)> {
        let path = self.path(rel)?;
        self.read_plain(&path, &mut sink).await
    }

    /// Streams `rel`, as stored, into an upload (bounded memory: the upload's backpressure
    /// applies).
    pub async fn stream_into(&self, rel: &str, up: &mut Upload) -> Result<()> {
        self.read_into(rel, Sink::Upload(up)).await.map(|_| ())
    }

    /// Reads a file of a backup back and checks it against what was written (an encrypted one
    /// decrypted too, both digests checked).
    pub async fn verify(&self, entry: &FileEntry, prefix: &str) -> Result<()> {
        self.read_entry(prefix, entry, Sink::Discard).await
    }

    /// Reads the stored file of `entry` (in backup directory `prefix`) into `sink`: decrypted
    /// with the host's identity when the entry is encrypted. The stored file's size and sha256
    /// are checked against the entry, and for an encrypted file the plaintext's too; any
    /// difference fails. (Bytes already given to the sink before a failure are the caller's to
    /// discard.)
    pub async fn read_entry(
        &self,
        prefix: &str,
        entry: &FileEntry,
        mut sink: Sink<'_>,
    ) -> Result<()> {
        let rel = join(prefix, &entry.stored_name());
        let path = self.path(&rel)?;
        let Some(want) = &entry.plaintext else {
            let (bytes, sha256) = self.read_plain(&path, &mut sink).await?;
            if bytes != entry.bytes || sha256 != entry.sha256 {
                return Err(Error::Mismatch {
                    store: self.name.clone(),
                    path: rel,
                    wrote: entry.sha256.clone(),
                    wrote_bytes: entry.bytes,
                    read: sha256,
                    read_bytes: bytes,
                });
            }
            return Ok(());
        };
        let identity = self
            .crypt
            .as_ref()
            .and_then(|c| c.identity.as_ref())
            .ok_or_else(|| Error::NoIdentity {
                store: self.name.clone(),
                path: rel.clone(),
            })?;
        let got = self
            .inner
            .get(&path)
            .await
            .map_err(|e| self.object_error("reading", &path, e))?;
        let decrypt_error = |problem: String| Error::Decrypt {
            store: self.name.clone(),
            path: rel.clone(),
            problem,
        };
        let mut stored = (Sha256::new(), 0u64);
        let mut content = (Sha256::new(), 0u64);
        {
            use futures::AsyncReadExt as _;
            let ciphertext = got
                .into_stream()
                .map_err(std::io::Error::other)
                .inspect_ok(|chunk| {
                    stored.0.update(chunk);
                    stored.1 += chunk.len() as u64;
                })
                .into_async_read();
            let decryptor = age::Decryptor::new_async_buffered(ciphertext)
                .await
                .map_err(|e| decrypt_error(crypt::decrypt_problem(&e)))?;
            let mut plain = decryptor
                .decrypt_async(identity.age_identities())
                .map_err(|e| decrypt_error(crypt::decrypt_problem(&e)))?;
            let mut buf = vec![0u8; 256 * 1024];
            loop {
                let n = plain
                    .read(&mut buf)
                    .await
                    .map_err(|e| decrypt_error(format!("{e}")))?;
                if n == 0 {
                    break;
                }
                content.0.update(&buf[..n]);
                content.1 += n as u64;
                sink.put(&buf[..n], &self.name, &rel).await?;
            }
        }
        sink.flush(&self.name, &rel).await?;
        let (stored_sha, content_sha) = (
            crate::hex::encode(&stored.0.finalize()),
            crate::hex::encode(&content.0.finalize()),
        );
        if stored.1 != entry.bytes || stored_sha != entry.sha256 {
            return Err(Error::Mismatch {
                store: self.name.clone(),
                path: rel,
                wrote: entry.sha256.clone(),
                wrote_bytes: entry.bytes,
                read: stored_sha,
                read_bytes: stored.1,
            });
        }
        if content.1 != want.bytes || content_sha != want.sha256 {
            return Err(Error::ContentMismatch {
                store: self.name.clone(),
                path: rel,
                want: want.sha256.clone(),
                want_bytes: want.bytes,
                got: content_sha,
                got_bytes: content.1,
            });
        }
        Ok(())
    }

    /// Streams an object into `sink`; returns its size and sha256.
    async fn read_plain(&self, path: &ObjPath, sink: &mut Sink<'_>) -> Result<(u64, String)> {
        let got = self
            .inner
            .get(path)
            .await
            .map_err(|e| self.object_error("reading", path, e))?;
        let mut stream = got.into_stream();
        let mut hash = Sha256::new();
        let mut bytes = 0u64;
        let shown = path.to_string();
        while let Some(chunk) = stream
            .try_next()
            .await
            .map_err(|e| self.object_error("reading", path, e))?
        {
            hash.update(&chunk);
            bytes += chunk.len() as u64;
            sink.put(&chunk, &self.name, &shown).await?;
        }
        sink.flush(&self.name, &shown).await?;
        Ok((bytes, crate::hex::encode(&hash.finalize())))
    }
}

/// A file being uploaded: bytes in, hashed as they pass (and encrypted, in a store that
/// encrypts: then the ciphertext is hashed too).
pub struct Upload {
    pub(super) store: Store,
    pub(super) name: String,
    pub(super) path: ObjPath,
    pub(super) parts: WriteMultipart,
    /// The content (plaintext) written so far.
    pub(super) hash: Sha256,
    pub(super) bytes: u64,
    /// The encryptor and the ciphertext stored so far.
    pub(super) encrypting: Option<(Encrypting, Sha256, u64)>,
}

impl Upload {
    /// Appends bytes, waiting while too many parts are in flight (backpressure).
    pub async fn write(&mut self, buf: &[u8]) -> Result<()> {
        self.parts
            .wait_for_capacity(PARTS_IN_FLIGHT)
            .await
            .map_err(|e| self.store.object_error("uploading", &self.path, e))?;
        self.hash.update(buf);
        self.bytes += buf.len() as u64;
        match &mut self.encrypting {
            None => self.parts.write(buf),
            Some((encrypting, hash, bytes)) => {
                let cipher = encrypting.push(buf).map_err(|source| Error::Crypt {
                    store: self.store.name.clone(),
                    path: self.path.to_string(),
                    source,
                })?;
                hash.update(&cipher);
                *bytes += cipher.len() as u64;
                self.parts.write(&cipher);
            }
        }
        Ok(())
    }

    /// Completes the upload; the object becomes visible now.
    pub async fn finish(self) -> Result<FileEntry> {
        let Upload {
            store,
            name,
            path,
            mut parts,
            hash,
            bytes,
            encrypting,
        } = self;
        let content = crate::hex::encode(&hash.finalize());
        let entry = match encrypting {
            None => FileEntry {
                name,
                bytes,
                sha256: content,
                plaintext: None,
            },
            Some((encrypting, mut stored_hash, mut stored_bytes)) => {
                let last = match encrypting.finish() {
                    Ok(last) => last,
                    Err(source) => {
                        let _ = parts.abort().await;
                        return Err(Error::Crypt {
                            store: store.name.clone(),
                            path: path.to_string(),
                            source,
                        });
                    }
                };
                stored_hash.update(&last);
                stored_bytes += last.len() as u64;
                parts.write(&last);
                FileEntry {
                    name,
                    bytes: stored_bytes,
                    sha256: crate::hex::encode(&stored_hash.finalize()),
                    plaintext: Some(FileDigest {
                        bytes,
                        sha256: content,
                    }),
                }
            }
        };
        parts
            .finish()
            .await
            .map_err(|e| store.object_error("completing upload of", &path, e))?;
        Ok(entry)
    }

    /// Gives the upload up (its parts are discarded where the store allows).
    pub async fn abort(self) {
        let _ = self.parts.abort().await;
    }
}
