//! The `driftless` binary: parses the command line, sets up logging and dispatches.

use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::Parser;
use driftless::cli::{Cli, Command, DiffFormat, EXIT_CHANGES, EXIT_ERROR, EXIT_OK, OutputFormat};
use driftless::config::HostConfig;
use driftless::reconcile;
use driftless::targets;

mod commands;
use commands::*;

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Err(err) = driftless::logging::init(cli.global.log_format, &cli.global.log_level) {
        eprintln!("error: {err}");
        return ExitCode::from(EXIT_ERROR);
    }
    match run(cli) {
        Ok(code) => ExitCode::from(code),
        Err(err) => {
            tracing::error!("{}", describe(&err));
            ExitCode::from(EXIT_ERROR)
        }
    }
}

/// The error and its causes, each cause once: most error types already name their cause in
/// their own message, and repeating it would only make the line longer.
fn describe(err: &anyhow::Error) -> String {
    let mut text = err.to_string();
    for cause in err.chain().skip(1) {
        let cause = cause.to_string();
        if !text.contains(&cause) {
            text.push_str(": ");
            text.push_str(&cause);
        }
    }
    text
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
            let d = load_desired(&config, &source, true)?;
            let findings = d.policies.check_offline(&d.stacks);
            print_validation(
                &driftless::output::Validation {
                    stacks: &d.stacks,
                    jobs: &d.jobs,
                    health: &d.health_checks.summaries(),
                    secrets_checked: d.secrets_checked,
                    findings: &findings,
                },
                output,
            );
            let denied = findings.iter().flat_map(|(_, f)| f).any(|f| f.denies());
            Ok(if denied { EXIT_ERROR } else { EXIT_OK })
        }
        Command::Policy {
            command: driftless::cli::PolicyCommand::Test { path, output },
        } => {
            let (policies, tests) = driftless::policy::fixtures::load_suite(&path)?;
            let report = driftless::policy::fixtures::run(&policies, &tests);
            match output {
                OutputFormat::Json => {
                    emit(&format!("{}\n", serde_json::to_string_pretty(&report)?))
                }
                OutputFormat::Human => emit(&report.human()),
            }
            Ok(if report.failed() == 0 {
                EXIT_OK
            } else {
                EXIT_ERROR
            })
        }
        Command::Diff {
            source,
            cluster,
            prune_removed_stacks,
            output,
        } => {
            let (config, target) = for_target(&config_path, cluster.target.as_deref())?;
            let d = load_desired(&config, &source, false)?;
            let stacks = targets::select_stacks(&target, d.stacks, &source.stacks)
                .map_err(anyhow::Error::msg)?;
            let options = reconcile::Options {
                dry_run: true,
                policies: Some(std::sync::Arc::new(d.policies)),
                health_checks: Some(std::sync::Arc::new(d.health_checks)),
                only: source.stacks.clone(),
                instance: config.instance(),
                secret_hash_key: driftless::cluster::apply::SecretHashKey::load_or_create(
                    &config.state_dir(),
                ),
                max_prune_share: config.prune.max_share,
                allow_mass_prune: config.prune.allow_mass_prune,
                source: reconcile::source_id(source.path.as_deref(), config.source.as_ref()),
                prune_removed_stacks,
                allow_recreate: config.prune.allow_recreate.clone(),
                ..reconcile::Options::default()
            };
            let report =
                runtime()?.block_on(reconcile_with(&config, &cluster, &stacks, &options))?;
            match output {
                DiffFormat::Human => print_report(&report, OutputFormat::Human, true),
                DiffFormat::Json => print_report(&report, OutputFormat::Json, true),
                DiffFormat::Markdown => emit(&driftless::runs::markdown::render(
                    &report,
                    driftless::runs::markdown::DEFAULT_LIMIT,
                )),
            }
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
            prune_removed_stacks,
            no_wait,
            wait_lease,
            output,
        } => {
            let (config, target) = for_target(&config_path, cluster.target.as_deref())?;
            let d = load_desired(&config, &source, false)?;
            let stacks = targets::select_stacks(&target, d.stacks, &source.stacks)
                .map_err(anyhow::Error::msg)?;
            let options = reconcile::Options {
                dry_run,
                policies: Some(std::sync::Arc::new(d.policies)),
                health_checks: Some(std::sync::Arc::new(d.health_checks)),
                force_prune: prune,
                allow_mass_prune: allow_mass_prune || config.prune.allow_mass_prune,
                max_prune_share: config.prune.max_share,
                wait: !no_wait,
                only: source.stacks.clone(),
                instance: config.instance(),
                plan_only: Vec::new(),
                secret_hash_key: driftless::cluster::apply::SecretHashKey::load_or_create(
                    &config.state_dir(),
                ),
                // A one-shot run has no watches to vouch for objects it does not read.
                incremental: false,
                source: reconcile::source_id(source.path.as_deref(), config.source.as_ref()),
                prune_removed_stacks,
                allow_recreate: config.prune.allow_recreate.clone(),
                fence: None,
            };
            // Takes the Leases of the stacks it writes (refusing, or with --wait-lease waiting,
            // when a daemon holds one), reconciles, gives them back. A dry run takes none.
            let report = runtime()?.block_on(async {
                let client =
                    driftless::cluster::connect(&cluster_target(&config, &cluster)).await?;
                let settings = config.leases.settings();
                anyhow::Ok(
                    reconcile::reconcile_leased(&client, &stacks, options, settings, wait_lease)
                        .await?,
                )
            })?;
            print_report(&report, output, dry_run);
            Ok(if report.failed() { EXIT_ERROR } else { EXIT_OK })
        }
        Command::Run => {
            runtime()?.block_on(driftless::daemon::run(config_path))?;
            Ok(EXIT_OK)
        }
        Command::Status {
            endpoint,
            target,
            output,
        } => {
            let config = HostConfig::load(&config_path, false)?;
            if let Some(t) = &target {
                targets::pick(&targets::of(&config), Some(t)).map_err(anyhow::Error::msg)?;
            }
            runtime()?.block_on(print_status(
                &config,
                endpoint.as_deref(),
                target.as_deref(),
                output,
            ))
        }
        Command::Trigger {
            endpoint,
            token_file,
            revision,
            stacks,
            wait,
            timeout,
        } => {
            // CI may have no host configuration: with both flags given, none is read.
            let config = match (&endpoint, &token_file) {
                (Some(_), Some(_)) => None,
                _ => Some(HostConfig::load(&config_path, false)?),
            };
            let base = endpoint_base(config.as_ref(), endpoint.as_deref())?;
            let token = match (&token_file, &config) {
                (Some(file), _) => read_token(file)?,
                (None, Some(c)) => match &c.daemon.status_token_file {
                    Some(file) => c.credentials().host_text("daemon.statusTokenFile", file)?,
                    None => bail!(
                        "POST /api/v1/sync needs the status token: pass --token-file or set daemon.statusTokenFile"
                    ),
                },
                (None, None) => bail!("--token-file is required"),
            };
            let request = driftless::runs::client::Request {
                base,
                token,
                revision,
                stacks,
                wait,
                timeout,
            };
            let outcome = runtime()?
                .block_on(driftless::runs::client::trigger(&request, &mut |line| {
                    eprintln!("{line}")
                }))?;
            Ok(match outcome {
                driftless::runs::client::Outcome::Triggered { run } => {
                    emit(&format!("{run}\n"));
                    EXIT_OK
                }
                driftless::runs::client::Outcome::Done(run) => {
                    emit(&format!("{}\n", driftless::runs::client::describe(&run)));
                    EXIT_OK
                }
                driftless::runs::client::Outcome::Failed { run, reason } => {
                    eprintln!("run {run} failed: {reason}");
                    EXIT_ERROR
                }
            })
        }
        Command::Jobs {
            command:
                driftless::cli::JobsCommand::List {
                    source,
                    target,
                    output,
                },
        } => {
            let (config, target) = for_target(&config_path, target.as_deref())?;
            let mut d = load_desired(&config, &source, true)?;
            d.jobs.retain(|j| target.takes(&j.stack));
            let last = last_runs(&d.jobs, &config.state_dir());
            let now = chrono::Utc::now();
            match output {
                OutputFormat::Json => emit(&format!(
                    "{:#}\n",
                    driftless::output::jobs_json(&d.jobs, &last, now)
                )),
                OutputFormat::Human if d.jobs.is_empty() => {
                    emit("no jobs declared (stack/<name>/jobs.yaml)\n")
                }
                OutputFormat::Human => emit(&driftless::output::jobs_text(&d.jobs, &last, now)),
            }
            Ok(EXIT_OK)
        }
        Command::Jobs {
            command:
                driftless::cli::JobsCommand::Run {
                    name,
                    dry_run,
                    strict,
                    source,
                    cluster,
                    output,
                },
        } => {
            // The job runs against the cluster of the target `--target` names, else its own
            // (`spec.target`, else its stack's): found in the first target's rendering.
            let all = HostConfig::load(&config_path, false)?;
            let listed = targets::of(&all);
            let first = listed.first().map(|t| t.name.clone());
            let wanted = cluster.target.clone().or(first);
            let (mut config, _) =
                targets::for_command(&all, wanted.as_deref()).map_err(anyhow::Error::msg)?;
            let mut d = load_desired(&config, &source, false)?;
            if cluster.target.is_none()
                && let Some(job) = d.jobs.iter().find(|j| j.name == name)
            {
                let own = targets::job_target(&listed, &job.stack, job.target.as_deref())
                    .map_err(|e| anyhow::anyhow!("job {name}: {e}"))?;
                if Some(&own.name) != wanted.as_ref() {
                    config = targets::narrow(&all, own);
                    d = load_desired(&config, &source, false)?;
                }
            }
            let Some(job) = d.jobs.iter().find(|j| j.name == name) else {
                bail!(
                    "no job {name:?} (declared: {})",
                    d.jobs
                        .iter()
                        .map(|j| j.name.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                );
            };
            let finished = runtime()?.block_on(async {
                // Protection from live workloads needs the cluster; the job's runner says so
                // if it cannot be reached.
                let client =
                    driftless::cluster::connect_for_jobs(&cluster_target(&config, &cluster)).await;
                if let Err(e) = &client {
                    tracing::warn!("cluster: {e}");
                }
                let state_dir = config.state_dir();
                let credentials = credentials_of(&config, &source);
                let ctx = driftless::jobs::runner::Context {
                    cluster: client.as_ref().ok(),
                    desired: &d.stacks,
                    credentials: &credentials,
                    state_dir: &state_dir,
                    commands: &config.jobs.commands,
                    strict,
                    revision: d.revision.clone(),
                    host: &driftless::jobs::host::HostSettings::from_config(&config),
                };
                driftless::jobs::runner::run(
                    job,
                    &ctx,
                    driftless::jobs::scheduler::Cause::Manual,
                    None,
                    dry_run,
                )
                .await
            })?;
            match output {
                OutputFormat::Json => emit(&format!(
                    "{:#}\n",
                    serde_json::json!({"run": finished.record, "report": finished.report})
                )),
                OutputFormat::Human => emit(&finished.text),
            }
            Ok(
                if finished.record.outcome == driftless::jobs::runs::Outcome::Succeeded {
                    EXIT_OK
                } else {
                    EXIT_ERROR
                },
            )
        }
        Command::Backup { command } => {
            let wanted = match &command {
                driftless::cli::BackupCommand::Restore { cluster, .. }
                | driftless::cli::BackupCommand::List { cluster, .. } => cluster.target.clone(),
            };
            let (config, _) = for_target(&config_path, wanted.as_deref())?;
            let source = command.source().clone();
            let d = load_desired(&config, &source, false)?;
            let credentials = credentials_of(&config, &source);
            let text = runtime()?.block_on(async {
                // Only a port-forward needs the cluster; it says so if missing.
                let cluster = match &command {
                    driftless::cli::BackupCommand::Restore { cluster, .. }
                    | driftless::cli::BackupCommand::List { cluster, .. } => cluster,
                };
                let client =
                    driftless::cluster::connect_for_jobs(&cluster_target(&config, cluster))
                        .await
                        .ok();
                let (state_dir, jobs) = (config.state_dir(), &d.jobs);
                driftless::jobs::backup::command::execute(
                    &command,
                    jobs,
                    client.as_ref(),
                    &credentials,
                    &state_dir,
                    &driftless::jobs::host::HostSettings::from_config(&config),
                )
                .await
            })?;
            emit(&text);
            Ok(EXIT_OK)
        }
        Command::Doctor { output } => {
            let report = runtime()?.block_on(driftless::doctor::probe::run(&config_path));
            match output {
                OutputFormat::Json => emit(&format!("{:#}\n", serde_json::to_value(&report)?)),
                OutputFormat::Human => emit(&report.text()),
            }
            Ok(report.exit_code())
        }
        Command::Init { dir } => {
            let written = driftless::init::write_starter(&dir)?;
            emit(&format!(
                "wrote a starter stack repository to {} ({} files)\n\n{}",
                dir.display(),
                written.len(),
                driftless::init::next_steps(&dir)
            ));
            Ok(EXIT_OK)
        }
        Command::Completions { shell } => {
            use clap::CommandFactory;
            let shell = match shell {
                driftless::cli::Shell::Bash => clap_complete::Shell::Bash,
                driftless::cli::Shell::Zsh => clap_complete::Shell::Zsh,
                driftless::cli::Shell::Fish => clap_complete::Shell::Fish,
            };
            let mut out = Vec::new();
            clap_complete::generate(shell, &mut Cli::command(), "driftless", &mut out);
            emit(&String::from_utf8_lossy(&out));
            Ok(EXIT_OK)
        }
        Command::Man { out_dir: Some(dir) } => {
            use clap::CommandFactory;
            std::fs::create_dir_all(&dir).with_context(|| format!("{}", dir.display()))?;
            clap_mangen::generate_to(Cli::command(), &dir)
                .with_context(|| format!("cannot write the manual pages to {}", dir.display()))?;
            Ok(EXIT_OK)
        }
        Command::Man { out_dir: None } => {
            use clap::CommandFactory;
            let mut out = Vec::new();
            clap_mangen::Man::new(Cli::command())
                .render(&mut out)
                .context("cannot render the manual page")?;
            emit(&String::from_utf8_lossy(&out));
            Ok(EXIT_OK)
        }
    }
}
