//! The `driftless` binary: parses the command line, sets up logging and dispatches.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::Parser;
use driftless::cli::{
    Cli, ClusterArgs, Command, EXIT_CHANGES, EXIT_ERROR, EXIT_OK, OutputFormat, SourceArgs,
};
use driftless::config::HostConfig;
use driftless::reconcile::{self, Report};
use driftless::stack::{self, LoadLimits, RenderedStack};

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Err(err) = driftless::logging::init(cli.global.log_format, &cli.global.log_level) {
        eprintln!("error: {err}");
        return ExitCode::from(EXIT_ERROR);
    }
    match run(cli) {
        Ok(code) => ExitCode::from(code),
        Err(err) => {
            tracing::error!("{err:#}");
            ExitCode::from(EXIT_ERROR)
        }
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

fn run(cli: Cli) -> anyhow::Result<u8> {
    let config_path = cli.global.config.clone();
    match cli.command {
        Command::Validate { source, output } => {
            let config = HostConfig::load(&config_path, false)?;
            let (stacks, secrets_checked) = render(&config, &source, true)?;
            print_validation(&stacks, secrets_checked, output);
            Ok(EXIT_OK)
        }
        Command::Diff {
            source,
            cluster,
            output,
        } => {
            let config = HostConfig::load(&config_path, false)?;
            let (stacks, _) = render(&config, &source, false)?;
            let options = reconcile::Options {
                dry_run: true,
                only: source.stacks.clone(),
                instance: config.instance(),
                max_prune_share: config.prune.max_share,
                allow_mass_prune: config.prune.allow_mass_prune,
                ..reconcile::Options::default()
            };
            let report =
                runtime()?.block_on(reconcile_with(&config, &cluster, &stacks, &options))?;
            print_report(&report, output, true);
            Ok(if report.failed() {
                EXIT_ERROR
            } else if report.has_changes() {
                EXIT_CHANGES
            } else {
                EXIT_OK
            })
        }
        Command::Sync {
            source,
            cluster,
            dry_run,
            prune,
            allow_mass_prune,
            no_wait,
            output,
        } => {
            let config = HostConfig::load(&config_path, false)?;
            let (stacks, _) = render(&config, &source, false)?;
            let options = reconcile::Options {
                dry_run,
                force_prune: prune,
                allow_mass_prune: allow_mass_prune || config.prune.allow_mass_prune,
                max_prune_share: config.prune.max_share,
                wait: !no_wait,
                only: source.stacks.clone(),
                instance: config.instance(),
            };
            let report =
                runtime()?.block_on(reconcile_with(&config, &cluster, &stacks, &options))?;
            print_report(&report, output, dry_run);
            Ok(if report.failed() { EXIT_ERROR } else { EXIT_OK })
        }
        command @ (Command::Run
        | Command::Status { .. }
        | Command::Jobs { .. }
        | Command::Backup { .. }) => {
            bail!("`driftless {}` is not yet implemented", command.name())
        }
    }
}

/// Loads and renders the stacks of `--path` or the configured source (a Git source is fetched
/// into the state directory first). Returns whether host secrets were read (validation without
/// a credentials directory uses empty stand-ins).
fn render(
    config: &HostConfig,
    source: &SourceArgs,
    offline: bool,
) -> anyhow::Result<(Vec<RenderedStack>, bool)> {
    let credentials = source
        .credentials_dir
        .clone()
        .or_else(|| config.credentials_dir());
    let root: PathBuf = match (&source.path, config.source.as_ref()) {
        (Some(p), _) => p.clone(),
        (None, Some(src)) => match (&src.path, &src.git) {
            (Some(p), _) => p.clone(),
            (None, Some(git)) => {
                let fetched = fetch_git(config, git, credentials.as_deref())?;
                tracing::info!(sha = %fetched.revision.sha, subject = %fetched.revision.subject, "revision");
                fetched.checkout
            }
            (None, None) => bail!("source: give `path` or `git` in the host configuration"),
        },
        (None, None) => {
            bail!("no source: pass --path DIR, or set `source` in the host configuration")
        }
    };
    let profile = source.profile.as_deref().or(config.profile.as_deref());
    let loaded = stack::load_repo(&root, profile, LoadLimits::default())?;
    let (secrets, checked) = match (&credentials, offline) {
        (None, true) => (stack::placeholder_host_secrets(&loaded), false),
        (dir, _) => (stack::read_host_secrets(&loaded, dir.as_deref())?, true),
    };
    // Every stack is rendered even with --stack: the others' objects must be known so that
    // nothing they own looks prunable; reconcile then acts on the named stacks only.
    let stacks = stack::render(&loaded, &secrets)?;
    for name in &source.stacks {
        if !stacks.iter().any(|s| &s.name == name) {
            bail!("--stack {name}: no such stack (have: {})", names(&stacks));
        }
    }
    Ok((stacks, checked))
}

fn fetch_git(
    config: &HostConfig,
    git: &driftless::config::GitConfig,
    credentials: Option<&std::path::Path>,
) -> anyhow::Result<driftless::source::Fetched> {
    use driftless::source::{GitCredentials, GitRef, GitSource};
    let read = |file: &str| -> anyhow::Result<String> {
        let dir = credentials.context(
            "source.git.auth names credential files but no credentials directory is set",
        )?;
        let path = dir.join(file);
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("git credential file {}", path.display()))?;
        Ok(text.trim_end().to_owned())
    };
    let auth = &git.auth;
    let creds = GitCredentials {
        username: auth.username_file.as_deref().map(read).transpose()?,
        password: auth
            .token_file
            .as_deref()
            .or(auth.password_file.as_deref())
            .map(read)
            .transpose()?
            .map(secrecy::SecretString::from),
        ssh_key: match (&auth.ssh_key_file, credentials) {
            (Some(f), Some(dir)) => Some(dir.join(f)),
            (Some(_), None) => bail!("source.git.auth.sshKeyFile needs a credentials directory"),
            _ => None,
        },
        known_hosts: auth.known_hosts_file.clone(),
    };
    let reference = match (&git.branch, &git.tag, &git.commit) {
        (_, Some(t), _) => GitRef::Tag(t.clone()),
        (_, _, Some(c)) => GitRef::Commit(c.clone()),
        (Some(b), _, _) => GitRef::Branch(b.clone()),
        _ => GitRef::Branch("main".to_owned()),
    };
    let state = config
        .state_dir
        .clone()
        .or_else(|| std::env::var_os("STATE_DIRECTORY").map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from("/var/lib/driftless"));
    let src = GitSource {
        url: git.url.clone(),
        reference,
        credentials: creds,
        dir: state.join("git"),
    };
    Ok(src.fetch(None)?)
}

fn names(stacks: &[RenderedStack]) -> String {
    stacks
        .iter()
        .map(|s| s.name.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

async fn reconcile_with(
    config: &HostConfig,
    cluster: &ClusterArgs,
    stacks: &[RenderedStack],
    options: &reconcile::Options,
) -> anyhow::Result<Report> {
    let target = driftless::cluster::Target {
        kubeconfig: cluster
            .kubeconfig
            .clone()
            .or_else(|| config.cluster.kubeconfig.clone()),
        context: cluster
            .context
            .clone()
            .or_else(|| config.cluster.context.clone()),
    };
    let client = driftless::cluster::connect(&target).await?;
    Ok(reconcile::reconcile(&client, stacks, options).await?)
}

/// Writes to standard output; a closed pipe (`driftless diff | head`) is not an error.
fn emit(text: &str) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    if let Err(e) = out.write_all(text.as_bytes()).and_then(|()| out.flush())
        && e.kind() != std::io::ErrorKind::BrokenPipe
    {
        tracing::error!("cannot write to standard output: {e}");
    }
}

fn print_report(report: &Report, output: OutputFormat, show_diffs: bool) {
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

fn print_validation(stacks: &[RenderedStack], secrets_checked: bool, output: OutputFormat) {
    let objects: usize = stacks.iter().map(|s| s.objects.len()).sum();
    match output {
        OutputFormat::Json => {
            let value = serde_json::json!({
                "valid": true,
                "hostSecretsChecked": secrets_checked,
                "stacks": stacks.iter().map(|s| serde_json::json!({
                    "name": s.name,
                    "dependsOn": s.spec.depends_on,
                    "objects": s.objects.iter().map(|o| o.key.to_string()).collect::<Vec<_>>(),
                })).collect::<Vec<_>>(),
            });
            emit(&format!("{value:#}\n"));
        }
        OutputFormat::Human => {
            let mut text = String::new();
            for s in stacks {
                text.push_str(&format!("stack {}: {} objects\n", s.name, s.objects.len()));
            }
            text.push_str(&format!(
                "valid: {} stacks, {objects} objects\n",
                stacks.len()
            ));
            if !secrets_checked {
                text.push_str(
                    "note: host secret files not checked (no credentials directory given)\n",
                );
            }
            emit(&text);
        }
    }
}
