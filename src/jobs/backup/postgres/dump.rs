//! `pg_dump -Fc` streamed to the destination while `pg_restore -f /dev/null` reads the same
//! bytes (every block: a truncated or corrupt dump fails it), then `pg_dumpall --globals-only`.

use std::process::Stdio;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::{Connection, DUMP, Error, GLOBALS, Result, read_all, tail};
use crate::jobs::backup::manifest::FileEntry;
use crate::jobs::backup::spec::Postgres;
use crate::jobs::backup::store::Store;

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
        return Err(Error::NoPipe("pg_dump/pg_restore"));
    };

    let mut upload = store.writer(id, DUMP).await?;
    let mut buf = vec![0u8; 256 * 1024];
    let mut checker_open = true;
    let streamed: Result<()> = async {
        loop {
            let n = out.read(&mut buf).await.map_err(|source| Error::Io {
                what: "reading pg_dump's output".to_owned(),
                source,
            })?;
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
    let dump_status = dumper.wait().await.map_err(|source| Error::Io {
        what: "pg_dump".to_owned(),
        source,
    })?;
    let check_status = checker.wait().await.map_err(|source| Error::Io {
        what: "pg_restore".to_owned(),
        source,
    })?;
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
        let out = child.stdout.take().ok_or(Error::NoPipe("pg_dumpall"))?;
        let uploaded = store.upload_from(id, GLOBALS, out).await;
        let status = child.wait().await.map_err(|source| Error::Io {
            what: "pg_dumpall".to_owned(),
            source,
        })?;
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
