//! Exec sources: a command run in a pod (named, or a service's first running, ready pod, resolved
//! once per run) through the API server (e.g. `nodetool snapshot`); its
//! standard output is the backup's `stdout` file, its exit status must be success, and the tail
//! of its standard error is kept in the manifest. Then, optionally, files copied out of the
//! container (`copyOut`): `tar cf - PATHS` run through exec, as `kubectl cp` does, streamed into
//! `files.tar` with its sha256 and read back.

use std::time::Duration;

use tokio::io::AsyncReadExt;

use super::manifest::FileEntry;
use super::pod;
use super::spec::Exec;
use super::store::{self, Store};

/// Errors of an exec source, naming the pod.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Pod(#[from] pod::Error),
    #[error(transparent)]
    Store(#[from] store::Error),
    #[error("exec in pod {pod} ({command}): {message}; stderr: {stderr}")]
    Failed {
        pod: String,
        command: String,
        message: String,
        stderr: String,
    },
    #[error("exec in {pod}: no end within {timeout:?} (spec.source.exec.timeout)")]
    Timeout { pod: String, timeout: Duration },
}

/// The file holding the command's standard output.
pub const STDOUT: &str = "stdout";
/// The file holding the `copyOut` paths, as one tar archive.
pub const FILES_TAR: &str = "files.tar";

/// Runs the command, then copies the `copyOut` paths out, storing both as backup `id`.
pub async fn capture(
    cluster: Option<&kube::Client>,
    e: &Exec,
    store: &Store,
    id: &str,
) -> Result<(Vec<FileEntry>, serde_json::Value), Error> {
    let work = async {
        let client = cluster.ok_or_else(|| pod::Error::NoCluster { what: e.target() })?;
        let pod = pod::resolve(
            client,
            &super::spec::PodTarget {
                namespace: e.namespace.clone(),
                pod: e.pod.clone(),
                service: e.service.clone(),
                port: 0,
            },
        )
        .await?;
        let mut files = Vec::new();
        let mut details = serde_json::json!({
            "pod": format!("{}/{pod}", e.namespace),
            "container": e.container,
            "encrypted": store.encrypts(),
        });
        if !e.command.is_empty() {
            let (entry, end) = run_into(cluster, e, &pod, &e.command, store, id, STDOUT).await?;
            files.push(entry);
            details["command"] = serde_json::json!(e.command);
            details["exit"] = serde_json::json!(end.message);
            details["stderrTail"] = serde_json::json!(last_lines(&end.stderr_tail));
        }
        if !e.copy_out.is_empty() {
            // What `kubectl cp` runs; only after the command succeeded (a snapshot to copy).
            let mut tar = vec!["tar".to_owned(), "cf".to_owned(), "-".to_owned()];
            tar.extend(e.copy_out.iter().cloned());
            let (entry, end) = run_into(cluster, e, &pod, &tar, store, id, FILES_TAR).await?;
            files.push(entry);
            details["copyOut"] = serde_json::json!({
                "paths": e.copy_out,
                "exit": end.message,
                "stderrTail": last_lines(&end.stderr_tail),
            });
        }
        Ok::<_, Error>((files, details))
    };
    tokio::time::timeout(e.timeout, work)
        .await
        .map_err(|_| Error::Timeout {
            pod: e.target(),
            timeout: e.timeout,
        })?
}

/// Runs one command in the pod and streams its standard output into `dir/name` (hashed as it
/// passes, read back and re-hashed); a non-zero exit fails it and discards the upload.
async fn run_into(
    cluster: Option<&kube::Client>,
    e: &Exec,
    pod: &str,
    command: &[String],
    store: &Store,
    id: &str,
    name: &str,
) -> Result<(FileEntry, pod::ExecEnd), Error> {
    let pod_name = format!("{}/{pod}", e.namespace);
    let mut running =
        pod::exec(cluster, &e.namespace, pod, e.container.as_deref(), command).await?;
    let mut upload = store.writer(id, name).await?;
    let streamed: Result<(), Error> = async {
        if let Some(mut out) = running.stdout() {
            let mut buf = vec![0u8; 256 * 1024];
            loop {
                let n = out.read(&mut buf).await.map_err(|err| Error::Failed {
                    pod: pod_name.clone(),
                    command: command.join(" "),
                    message: format!("reading its output: {err}"),
                    stderr: String::new(),
                })?;
                if n == 0 {
                    break;
                }
                upload.write(&buf[..n]).await?;
            }
        }
        Ok(())
    }
    .await;
    let end = running.end(Duration::from_secs(60)).await;
    if let Err(err) = streamed {
        upload.abort().await;
        return Err(err);
    }
    if !end.success {
        upload.abort().await;
        return Err(Error::Failed {
            pod: pod_name,
            command: command.join(" "),
            message: end.message,
            stderr: last_lines(&end.stderr_tail),
        });
    }
    let entry = upload.finish().await?;
    store.verify(&entry, id).await?;
    Ok((entry, end))
}

fn last_lines(text: &str) -> String {
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    lines[lines.len().saturating_sub(10)..].join("\n")
}
