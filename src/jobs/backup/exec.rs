//! Exec sources: a command run in a pod through the API server (e.g. `nodetool snapshot`, or
//! `tar -cf - DIR` to copy files out); its standard output is the backup's `stdout` file, its
//! exit status must be success, and the tail of its standard error is kept in the manifest.

use std::time::Duration;

use tokio::io::AsyncReadExt;

use super::pod;
use super::spec::Exec;
use super::store::{self, FileEntry, Store};

/// Errors of an exec source, naming the pod.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Pod(#[from] pod::Error),
    #[error(transparent)]
    Store(#[from] store::Error),
    #[error("exec in pod {pod}: {message}; stderr: {stderr}")]
    Failed {
        pod: String,
        message: String,
        stderr: String,
    },
    #[error("exec in pod {pod}: no end within {timeout:?} (spec.source.exec.timeout)")]
    Timeout { pod: String, timeout: Duration },
}

/// The file holding the command's standard output.
pub const STDOUT: &str = "stdout";

/// Runs the command and stores its output as backup `id`.
pub async fn capture(
    cluster: Option<&kube::Client>,
    e: &Exec,
    store: &Store,
    id: &str,
) -> Result<(Vec<FileEntry>, serde_json::Value), Error> {
    let pod_name = format!("{}/{}", e.namespace, e.pod);
    let work = async {
        let mut running = pod::exec(
            cluster,
            &e.namespace,
            &e.pod,
            e.container.as_deref(),
            &e.command,
        )
        .await?;
        let mut upload = store.writer(id, STDOUT).await?;
        let streamed: Result<(), Error> = async {
            if let Some(mut out) = running.stdout() {
                let mut buf = vec![0u8; 256 * 1024];
                loop {
                    let n = out.read(&mut buf).await.map_err(|err| Error::Failed {
                        pod: pod_name.clone(),
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
                pod: pod_name.clone(),
                message: end.message,
                stderr: last_lines(&end.stderr_tail),
            });
        }
        let entry = upload.finish().await?;
        store.verify(&entry, id).await?;
        Ok((entry, end))
    };
    let (entry, end) =
        tokio::time::timeout(e.timeout, work)
            .await
            .map_err(|_| Error::Timeout {
                pod: pod_name.clone(),
                timeout: e.timeout,
            })??;
    let details = serde_json::json!({
        "pod": pod_name,
        "container": e.container,
        "command": e.command,
        "exit": end.message,
        "stderrTail": last_lines(&end.stderr_tail),
    });
    Ok((vec![entry], details))
}

fn last_lines(text: &str) -> String {
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    lines[lines.len().saturating_sub(10)..].join("\n")
}
