//! Reaching in-cluster services from the ops host through the API server: a local port forwarded
//! to a pod (or a running pod of a service), and commands run in a pod (exec). The daemon runs
//! outside the cluster, where ClusterIP services are not reachable.

use std::time::Duration;

use k8s_openapi::api::core::v1::{Pod, Service};
use kube::Api;
use kube::api::{AttachParams, ListParams};
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::net::TcpListener;
use tracing::warn;

use super::spec::PodTarget;

/// Errors reaching a pod, naming it.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("no cluster connection (needed to reach {what})")]
    NoCluster { what: String },
    #[error("{what}: {source}")]
    Cluster {
        what: String,
        #[source]
        source: kube::Error,
    },
    #[error("{service}: has no selector: name a pod instead")]
    NoSelector { service: String },
    #[error("{service}: no running, ready pod matches {labels}")]
    NoReadyPod { service: String, labels: String },
    #[error("local listener for the port-forward: {0}")]
    Listen(#[source] std::io::Error),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A local port forwarded to a pod; closed on drop.
pub struct Forward {
    pub port: u16,
    /// `namespace/pod:port`.
    pub target: String,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Forward {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The pod a target names: the pod itself, or a running, ready pod selected by the service.
pub async fn resolve(client: &kube::Client, t: &PodTarget) -> Result<String> {
    if let Some(pod) = &t.pod {
        return Ok(pod.clone());
    }
    let service = t.service.clone().unwrap_or_default();
    let what = format!("service {}/{service}", t.namespace);
    let fail = |source: kube::Error| Error::Cluster {
        what: what.clone(),
        source,
    };
    let svc = Api::<Service>::namespaced(client.clone(), &t.namespace)
        .get(&service)
        .await
        .map_err(fail)?;
    let selector = svc
        .spec
        .and_then(|s| s.selector)
        .filter(|s| !s.is_empty())
        .ok_or_else(|| Error::NoSelector {
            service: what.clone(),
        })?;
    let labels = selector
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",");
    let pods = Api::<Pod>::namespaced(client.clone(), &t.namespace)
        .list(&ListParams::default().labels(&labels))
        .await
        .map_err(fail)?;
    let ready = |p: &Pod| {
        p.status.as_ref().is_some_and(|s| {
            s.phase.as_deref() == Some("Running")
                && s.conditions
                    .as_ref()
                    .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
        })
    };
    let mut names: Vec<String> = pods
        .items
        .iter()
        .filter(|p| ready(p))
        .filter_map(|p| p.metadata.name.clone())
        .collect();
    names.sort();
    names.into_iter().next().ok_or(Error::NoReadyPod {
        service: what,
        labels,
    })
}

/// Opens a local port whose connections are forwarded, each through its own port-forward
/// stream, to the target's port.
pub async fn forward(client: Option<&kube::Client>, t: &PodTarget) -> Result<Forward> {
    let described = format!(
        "{}/{}:{}",
        t.namespace,
        t.pod.as_deref().or(t.service.as_deref()).unwrap_or(""),
        t.port
    );
    let client = client.ok_or_else(|| Error::NoCluster {
        what: described.clone(),
    })?;
    let pod = resolve(client, t).await?;
    let pods: Api<Pod> = Api::namespaced(client.clone(), &t.namespace);
    // Fail early (and clearly) when the port-forward cannot be opened at all.
    let probe = pods
        .portforward(&pod, &[t.port])
        .await
        .map_err(|e| Error::Cluster {
            what: format!("port-forward to pod {}/{pod}:{}", t.namespace, t.port),
            source: e,
        })?;
    drop(probe);
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(Error::Listen)?;
    let port = listener.local_addr().map_err(Error::Listen)?.port();
    let remote_port = t.port;
    let target = format!("{}/{pod}:{remote_port}", t.namespace);
    let name = target.clone();
    let task = tokio::spawn(async move {
        loop {
            let Ok((mut local, _)) = listener.accept().await else {
                return;
            };
            let (pods, pod, name) = (pods.clone(), pod.clone(), name.clone());
            tokio::spawn(async move {
                let mut forward = match pods.portforward(&pod, &[remote_port]).await {
                    Ok(f) => f,
                    Err(e) => {
                        warn!("port-forward to {name}: {e}");
                        return;
                    }
                };
                let Some(mut remote) = forward.take_stream(remote_port) else {
                    return;
                };
                let _ = tokio::io::copy_bidirectional(&mut local, &mut remote).await;
                drop(remote);
                let _ = forward.join().await;
            });
        }
    });
    Ok(Forward { port, target, task })
}

/// A command running in a pod: its standard output to read, then its end.
pub struct Running {
    attached: kube::api::AttachedProcess,
    stderr: Option<tokio::task::JoinHandle<Vec<u8>>>,
}

/// How an exec ended.
#[derive(Debug, Clone)]
pub struct ExecEnd {
    pub success: bool,
    /// The API server's account (`command terminated with non-zero exit code …`).
    pub message: String,
    /// The last bytes of standard error.
    pub stderr_tail: String,
}

/// Keeps the last `STDERR_TAIL` bytes of standard error.
const STDERR_TAIL: usize = 16 * 1024;

/// Starts `command` in a pod through the API server.
pub async fn exec(
    client: Option<&kube::Client>,
    namespace: &str,
    pod: &str,
    container: Option<&str>,
    command: &[String],
) -> Result<Running> {
    let what = format!("exec in pod {namespace}/{pod}");
    let client = client.ok_or_else(|| Error::NoCluster { what: what.clone() })?;
    let mut params = AttachParams::default()
        .stdin(false)
        .stdout(true)
        .stderr(true);
    if let Some(c) = container {
        params = params.container(c);
    }
    let mut attached = Api::<Pod>::namespaced(client.clone(), namespace)
        .exec(pod, command.to_vec(), &params)
        .await
        .map_err(|source| Error::Cluster { what, source })?;
    let stderr = attached.stderr().map(|mut r| {
        tokio::spawn(async move {
            let mut tail = Vec::new();
            let mut buf = [0u8; 8192];
            while let Ok(n) = r.read(&mut buf).await {
                if n == 0 {
                    break;
                }
                tail.extend_from_slice(&buf[..n]);
                if tail.len() > STDERR_TAIL {
                    tail.drain(..tail.len() - STDERR_TAIL);
                }
            }
            tail
        })
    });
    Ok(Running { attached, stderr })
}

impl Running {
    /// Standard output (once).
    pub fn stdout(&mut self) -> Option<impl AsyncRead + Unpin + use<>> {
        self.attached.stdout()
    }

    /// Waits for the end and its status.
    pub async fn end(mut self, timeout: Duration) -> ExecEnd {
        let status = match self.attached.take_status() {
            Some(s) => tokio::time::timeout(timeout, s).await.ok().flatten(),
            None => None,
        };
        let stderr = match self.stderr.take() {
            Some(h) => h.await.unwrap_or_default(),
            None => Vec::new(),
        };
        let _ = self.attached.join().await;
        let (success, message) = match status {
            Some(s) => (
                s.status.as_deref() == Some("Success"),
                s.message.unwrap_or_else(|| s.status.unwrap_or_default()),
            ),
            None => (false, "no exit status from the API server".to_owned()),
        };
        ExecEnd {
            success,
            message,
            stderr_tail: String::from_utf8_lossy(&stderr).into_owned(),
        }
    }
}
