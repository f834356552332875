//! What the commands of `main` share: the host's credentials, loading one revision, the cluster
//! of a target, reconciling with the CLI's lease, and printing reports, status and validation.

use std::io::IsTerminal;

use anyhow::{Context, bail};
use driftless::cli::{ClusterArgs, EXIT_ERROR, EXIT_OK, OutputFormat, SourceArgs};
use driftless::config::HostConfig;
use driftless::reconcile::{self, Report};
use driftless::revision;
use driftless::stack::RenderedStack;
use driftless::targets;

/// The host's credentials: `--credentials-dir`, else the configured directory.
pub(crate) fn credentials_of(
    config: &HostConfig,
    source: &SourceArgs,
) -> driftless::credentials::Credentials {
    config.credentials_with_dir(
        source
            .credentials_dir
            .clone()
            .or_else(|| config.credentials_dir()),
    )
}

/// What one revision declares.
pub(crate) struct LoadedRevision {
    pub(crate) stacks: Vec<RenderedStack>,
    /// The Git revision (none for a local path).
    pub(crate) revision: Option<String>,
    pub(crate) jobs: Vec<driftless::jobs::model::Job>,
    /// Whether host secrets were read (validation without a credentials directory uses empty
    /// stand-ins).
    pub(crate) secrets_checked: bool,
    /// `policies/` of the revision, compiled.
    pub(crate) policies: driftless::policy::PolicySet,
    /// `health/` checks of the revision, compiled.
    pub(crate) health_checks: driftless::health_checks::HealthChecks,
}

/// Loads and renders the stacks, jobs and policies of `--path` or the configured source (a Git
/// source is fetched into the state directory first), through the one `revision` module.
pub(crate) fn load_desired(
    config: &HostConfig,
    source: &SourceArgs,
    offline: bool,
) -> anyhow::Result<LoadedRevision> {
    let credentials = credentials_of(config, source);
    // A directory has no signatures: say so when the configured source would check them.
    if source.path.is_some()
        && config
            .source
            .as_ref()
            .and_then(|s| s.git.as_ref())
            .is_some_and(|g| g.verify.is_some())
    {
        eprintln!(
            "driftless: nothing was verified (--path): source.git.verify applies to the configured Git source only"
        );
    }
    let checkout = revision::checkout(
        config.source.as_ref(),
        source.path.as_deref(),
        &credentials,
        &config.state_dir(),
        None,
    )?;
    if let Some(r) = &checkout.revision {
        tracing::info!(sha = %r.sha, subject = %r.subject, "revision");
    }
    let renderers = config.renderers.renderers();
    let loaded = revision::load(
        &checkout.root,
        &revision::LoadOptions {
            profile: source.profile.as_deref().or(config.profile.as_deref()),
            credentials: &credentials,
            renderers: &renderers,
            placeholders: offline,
            cache: None,
        },
    )?;
    // Every stack is rendered even with --stack; reconcile then acts on the named stacks only.
    for name in &source.stacks {
        if !loaded.stacks.iter().any(|s| &s.name == name) {
            bail!(
                "--stack {name}: no such stack (have: {})",
                names(&loaded.stacks)
            );
        }
    }
    Ok(LoadedRevision {
        stacks: loaded.stacks,
        revision: checkout.revision.map(|r| r.sha),
        jobs: loaded.jobs,
        secrets_checked: loaded.secrets_checked,
        policies: loaded.policies,
        health_checks: loaded.health_checks,
    })
}

pub(crate) fn names(stacks: &[RenderedStack]) -> String {
    stacks
        .iter()
        .map(|s| s.name.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

pub(crate) fn cluster_target(
    config: &HostConfig,
    cluster: &ClusterArgs,
) -> driftless::cluster::Target {
    driftless::cluster::Target {
        kubeconfig: cluster
            .kubeconfig
            .clone()
            .or_else(|| config.cluster.kubeconfig.clone()),
        context: cluster
            .context
            .clone()
            .or_else(|| config.cluster.context.clone()),
    }
}

pub(crate) async fn reconcile_with(
    config: &HostConfig,
    cluster: &ClusterArgs,
    stacks: &[RenderedStack],
    options: &reconcile::Options,
) -> anyhow::Result<Report> {
    let client = driftless::cluster::connect(&cluster_target(config, cluster)).await?;
    Ok(reconcile::reconcile(&client, stacks, options).await?)
}

/// Asks the daemon for its status (`/api/v1/status`) and prints it. Exit 0 when ready, 2 when
/// degraded, starting or unreachable.
/// The host configuration narrowed to the target `--target` names (or the only one).
pub(crate) fn for_target(
    config_path: &std::path::Path,
    wanted: Option<&str>,
) -> anyhow::Result<(HostConfig, targets::Target)> {
    let config = HostConfig::load(config_path, false)?;
    targets::for_command(&config, wanted).map_err(anyhow::Error::msg)
}

pub(crate) async fn print_status(
    config: &HostConfig,
    endpoint: Option<&str>,
    target: Option<&str>,
    output: OutputFormat,
) -> anyhow::Result<u8> {
    use driftless::status::DaemonState;
    let base = endpoint_base(Some(config), endpoint)?;
    let token = match &config.daemon.status_token_file {
        Some(file) => Some(
            config
                .credentials()
                .host_text("daemon.statusTokenFile", file)?,
        ),
        None => None,
    };
    let mut status = driftless::runs::client::status(&base, token.as_ref()).await?;
    if let Some(t) = target {
        // Only the target's stacks; its state decides the exit code.
        status.stacks.retain(|s| s.target == t);
        status.targets.retain(|x| x.name == t);
        status.state = status
            .targets
            .first()
            .map_or(DaemonState::Starting, |x| x.state);
        status.errors = status
            .targets
            .iter()
            .flat_map(|x| x.errors.clone())
            .collect();
    }
    match output {
        OutputFormat::Json => emit(&format!("{}\n", serde_json::to_string_pretty(&status)?)),
        OutputFormat::Human => emit(&driftless::output::status_text(&status)),
    }
    Ok(if status.state == DaemonState::Ready {
        EXIT_OK
    } else {
        EXIT_ERROR
    })
}

/// The daemon's base URL: `endpoint` when given, else from the host configuration's
/// `daemon.listen` (port 0: the address the daemon wrote into its state directory).
pub(crate) fn endpoint_base(
    config: Option<&HostConfig>,
    endpoint: Option<&str>,
) -> anyhow::Result<String> {
    Ok(match (endpoint, config) {
        (Some(e), _) => e.trim_end_matches('/').to_owned(),
        (None, Some(config)) if config.daemon.listen.port() == 0 => {
            let file = config.state_dir().join(driftless::daemon::LISTEN_FILE);
            let addr = std::fs::read_to_string(&file).with_context(|| {
                format!(
                    "daemon.listen {} lets the daemon pick a port, and {} names none (is `driftless run` running?)",
                    config.daemon.listen,
                    file.display()
                )
            })?;
            format!("http://{}", addr.trim())
        }
        (None, Some(config)) => format!("http://{}", config.daemon.listen),
        (None, None) => "http://127.0.0.1:9427".to_owned(),
    })
}

/// A token file given on the command line: its first line, never printed.
pub(crate) fn read_token(file: &std::path::Path) -> anyhow::Result<secrecy::SecretString> {
    let text = std::fs::read_to_string(file)
        .with_context(|| format!("--token-file {}", file.display()))?;
    let token = text.lines().next().unwrap_or("").trim().to_owned();
    if token.is_empty() {
        bail!("--token-file {}: the file is empty", file.display());
    }
    Ok(secrecy::SecretString::from(token))
}

/// Writes to standard output; a closed pipe (`driftless diff | head`) is not an error.
pub(crate) fn emit(text: &str) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    if let Err(e) = out.write_all(text.as_bytes()).and_then(|()| out.flush())
        && e.kind() != std::io::ErrorKind::BrokenPipe
    {
        tracing::error!("cannot write to standard output: {e}");
    }
}

pub(crate) fn print_report(report: &Report, output: OutputFormat, show_diffs: bool) {
    match output {
        OutputFormat::Json => match serde_json::to_string_pretty(report) {
            Ok(text) => emit(&format!("{text}\n")),
            Err(e) => tracing::error!("cannot render the report as JSON: {e}"),
        },
        OutputFormat::Human => {
            emit(&driftless::output::human(
                report,
                std::io::stdout().is_terminal(),
                show_diffs,
            ));
        }
    }
}

/// The last recorded run of each job (from the state directory).
pub(crate) fn last_runs(
    jobs: &[driftless::jobs::model::Job],
    state_dir: &std::path::Path,
) -> driftless::output::LastRuns {
    jobs.iter()
        .filter_map(|j| {
            let last = driftless::jobs::runs::load(state_dir, &j.name)
                .0
                .runs
                .pop()?;
            Some((j.name.clone(), last))
        })
        .collect()
}

pub(crate) fn print_validation(v: &driftless::output::Validation<'_>, output: OutputFormat) {
    match output {
        OutputFormat::Json => emit(&format!(
            "{:#}
",
            v.json()
        )),
        OutputFormat::Human => emit(&v.text()),
    }
}
