//! Everything that talks to the Kubernetes API server: connection, discovery, server-side apply
//! and its dry-run, the inventory, prune and health. Decisions are made in `plan`; this module
//! observes and carries them out.

pub mod access;
pub mod apply;
pub mod discovery;
pub mod health;
pub mod inventory;
pub mod lease;
pub mod live;
pub mod wait;
pub mod watch;

use std::path::PathBuf;

use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};

/// Field manager of every driftless write.
pub const FIELD_MANAGER: &str = "driftless";

/// Errors talking to the cluster, each naming the object and what to do.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("kubeconfig {path}: {message}")]
    Kubeconfig { path: String, message: String },
    #[error("cannot reach the API server: {0}")]
    Connect(#[source] kube::Error),
    #[error("discovery failed: {0}")]
    Discovery(#[source] kube::Error),
    #[error(
        "{place}: unknown kind {kind} in {api_version}: the cluster does not serve it and no CRD in this revision defines it"
    )]
    UnknownKind {
        place: String,
        api_version: String,
        kind: String,
    },
    #[error(
        "{place}: {kind} is namespaced: give it metadata.namespace or set the stack's spec.namespace"
    )]
    NoNamespace { place: String, kind: String },
    #[error("{object}: {action} failed: {message}{hint}")]
    Request {
        object: String,
        action: &'static str,
        message: String,
        hint: String,
        #[source]
        source: kube::Error,
    },
    #[error("{object}: conflicts with other field managers (stack has force: false): {conflicts}")]
    Conflict { object: String, conflicts: String },
    #[error("inventory {name}: {message}")]
    Inventory { name: String, message: String },
    #[error("{object}: still exists {seconds}s after its deletion {purpose} (a finalizer?)")]
    StillExists {
        object: String,
        purpose: &'static str,
        seconds: u64,
    },
    #[error("{object}: {action} refused: {reason}")]
    Refused {
        object: String,
        action: &'static str,
        reason: String,
    },
    #[error("lease for stack {stack} lost to {holder}: nothing more of it is written")]
    LeaseLost { stack: String, holder: String },
    #[error(
        "stack {stack} is being written by {holder}, which holds its lease: try again later, or pass --wait-lease to wait for it"
    )]
    LeaseHeld { stack: String, holder: String },
    #[error("CRD {name} did not become Established within {seconds}s")]
    CrdNotEstablished { name: String, seconds: u64 },
}

/// A convenient result alias for this module.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Where to find the cluster: kubectl's `--kubeconfig` and `--context`.
#[derive(Debug, Clone, Default)]
pub struct Target {
    pub kubeconfig: Option<PathBuf>,
    pub context: Option<String>,
}

/// How long one API request may take before it fails (an API server that hangs must turn into
/// an error the daemon reports and retries, not a reconcile stuck forever).
pub const REQUEST_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// Connects as kubectl would: `--kubeconfig`, else `$KUBECONFIG`, else `~/.kube/config`, else
/// the in-cluster configuration. Requests time out after `REQUEST_TIMEOUT`.
pub async fn connect(target: &Target) -> Result<Client> {
    connect_with(target, Some(REQUEST_TIMEOUT)).await
}

/// A client for long-lived watches: no read timeout (the watcher has its own idle handling).
pub async fn connect_for_watches(target: &Target) -> Result<Client> {
    connect_with(target, None).await
}

/// A client for jobs: HTTP/1.1, because port-forwards and execs upgrade the connection (an
/// HTTP/2 connection cannot), with the usual request timeout on everything else.
pub async fn connect_for_jobs(target: &Target) -> Result<Client> {
    let mut config = load_config(target).await?;
    config.read_timeout = Some(REQUEST_TIMEOUT);
    config.write_timeout = Some(REQUEST_TIMEOUT);
    config.reset_reader_on_write = true;
    config.connect_timeout = Some(CONNECT_TIMEOUT);
    Client::try_from(config).map_err(Error::Connect)
}

async fn connect_with(target: &Target, timeout: Option<std::time::Duration>) -> Result<Client> {
    let mut config = load_config(target).await?;
    if config.proxy_url.is_none() && config.tls_server_name.is_none() {
        return http2_client(config, timeout);
    }
    // Through a proxy or with a TLS server name override: kube's own HTTP/1.1 stack handles them.
    if timeout.is_some() {
        config.read_timeout = timeout;
        config.write_timeout = timeout;
        config.reset_reader_on_write = true;
        config.connect_timeout = Some(CONNECT_TIMEOUT);
    }
    Client::try_from(config).map_err(Error::Connect)
}

async fn load_config(target: &Target) -> Result<Config> {
    let options = KubeConfigOptions {
        context: target.context.clone(),
        ..Default::default()
    };
    let config = match &target.kubeconfig {
        Some(path) => {
            let kc = Kubeconfig::read_from(path).map_err(|e| Error::Kubeconfig {
                path: path.display().to_string(),
                message: e.to_string(),
            })?;
            Config::from_custom_kubeconfig(kc, &options).await
        }
        None => Config::from_kubeconfig(&options).await,
    }
    .map_err(|e| Error::Kubeconfig {
        path: target
            .kubeconfig
            .as_ref()
            .map(|p| p.display().to_string())
            .or_else(|| std::env::var("KUBECONFIG").ok())
            .unwrap_or_else(|| "~/.kube/config".to_owned()),
        message: e.to_string(),
    })?;
    Ok(config)
}

const CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// A client that speaks HTTP/2 when the server offers it (as kubectl does): one TLS handshake
/// and every request multiplexed on it, instead of a connection (and a handshake) per
/// concurrent request. Authentication, impersonation headers and the base URL come from kube's
/// own layers; `timeout` bounds each request.
fn http2_client(config: Config, timeout: Option<std::time::Duration>) -> Result<Client> {
    use kube::client::ConfigExt;
    use tower::ServiceBuilder;
    if rustls::crypto::CryptoProvider::get_default().is_none() {
        // Fails only when another thread installed one meanwhile: either way one is installed.
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    }
    // ALPN (h2, then http/1.1) is set by the connector builder.
    let tls = config.rustls_client_config().map_err(Error::Connect)?;
    let mut http = hyper_util::client::legacy::connect::HttpConnector::new();
    http.enforce_http(false);
    http.set_connect_timeout(Some(CONNECT_TIMEOUT));
    http.set_nodelay(true);
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_all_versions()
        .wrap_connector(http);
    let hyper_client: hyper_util::client::legacy::Client<_, kube::client::Body> =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .http2_keep_alive_interval(std::time::Duration::from_secs(30))
            .http2_keep_alive_timeout(std::time::Duration::from_secs(10))
            .timer(hyper_util::rt::TokioTimer::new())
            .build(https);
    let service = ServiceBuilder::new()
        .layer(config.base_uri_layer())
        .option_layer(config.auth_layer().map_err(Error::Connect)?)
        .layer(config.extra_headers_layer().map_err(Error::Connect)?)
        .option_layer(timeout.map(tower::timeout::TimeoutLayer::new))
        .map_err(tower::BoxError::from)
        .service(hyper_client);
    Ok(Client::new(service, config.default_namespace))
}

/// A short human hint for common API errors.
pub(crate) fn hint_for(err: &kube::Error) -> String {
    match err {
        kube::Error::Api(status)
            if crate::plan::recreate::is_immutable_change(status.code, &status.message) =>
        {
            " (an immutable field changed: delete and recreate the object, or annotate it with \
             driftless.dev/recreate: \"true\" to let driftless do that)"
                .to_owned()
        }
        kube::Error::Api(status) if status.code == 403 => {
            " (the credentials lack RBAC permission for this)".to_owned()
        }
        kube::Error::Api(status) if status.code == 404 && status.message.contains("namespaces") => {
            " (its namespace does not exist: add the Namespace to a stack this one depends on)"
                .to_owned()
        }
        _ => String::new(),
    }
}

/// The message of an API error without the request body echo kube adds.
pub(crate) fn message_of(err: &kube::Error) -> String {
    match err {
        kube::Error::Api(status) => status.message.clone(),
        other => other.to_string(),
    }
}
