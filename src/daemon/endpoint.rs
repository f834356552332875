//! The daemon's side of the HTTP endpoint: binding `daemon.listen`, reporting the address it
//! got (the log and `<stateDir>/listen`), and applying reloads — settings at once, a new
//! address by binding it before the old one closes.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use tracing::{info, warn};

use crate::config::HostConfig;
use crate::server::{EndpointConfig, Error, State};

/// The file in the state directory naming the address the endpoint listens on.
pub const LISTEN_FILE: &str = "listen";

/// The running endpoint.
pub struct Endpoint {
    /// `daemon.listen` as configured (port 0 included).
    configured: SocketAddr,
    task: tokio::task::JoinHandle<()>,
    state: Arc<State>,
}

impl Endpoint {
    /// Binds `daemon.listen` and serves.
    pub async fn start(config: &HostConfig, state: Arc<State>) -> Result<Endpoint, Error> {
        let listener = bind(config).await?;
        Ok(Endpoint {
            configured: config.daemon.listen,
            task: tokio::spawn(crate::server::serve(listener, Arc::clone(&state))),
            state,
        })
    }

    /// Applies a reloaded configuration: secrets, token and limits at once; a changed `listen`
    /// is bound first (a failure refuses the reload and keeps the old address), then the old
    /// address and its connections are closed.
    pub async fn reload(
        &mut self,
        config: &HostConfig,
        endpoint: EndpointConfig,
    ) -> Result<(), Error> {
        if config.daemon.listen == self.configured {
            *self.state.endpoint.write().await = endpoint;
            return Ok(());
        }
        let listener = bind(config).await?;
        *self.state.endpoint.write().await = endpoint;
        self.task.abort();
        self.task = tokio::spawn(crate::server::serve(listener, Arc::clone(&self.state)));
        self.configured = config.daemon.listen;
        Ok(())
    }

    /// Stops serving and removes `<stateDir>/listen`.
    pub fn stop(&self, state_dir: &Path) {
        self.task.abort();
        let _ = std::fs::remove_file(state_dir.join(LISTEN_FILE));
    }
}

/// Binds `daemon.listen` and reports the address it got (`listen: 127.0.0.1:0` picks a free
/// port): in the log and in `<stateDir>/listen`.
async fn bind(config: &HostConfig) -> Result<tokio::net::TcpListener, Error> {
    let listener = crate::server::bind(config.daemon.listen).await?;
    let addr = listener.local_addr().map_err(|source| Error::Listen {
        addr: config.daemon.listen,
        source,
    })?;
    info!(listen = %addr, "serving status, metrics and webhooks");
    let file = config.state_dir().join(LISTEN_FILE);
    if let Err(e) = crate::state::write_bytes(&file, format!("{addr}\n").as_bytes()) {
        warn!("{e}");
    }
    Ok(listener)
}

/// Raises the soft limit of open files to the hard one (as Go programs do): the endpoint's
/// connection cap, the cluster and Git clients, watches and files all need descriptors, and
/// the soft limit is often 1,024. Returns the limit in force.
pub fn raise_open_files_limit() -> Option<u64> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit only read and write the struct passed to them.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return None;
        }
        if limit.rlim_cur < limit.rlim_max {
            let raised = libc::rlimit {
                rlim_cur: limit.rlim_max,
                rlim_max: limit.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                return Some(raised.rlim_cur);
            }
        }
    }
    Some(limit.rlim_cur)
}
