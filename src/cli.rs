//! The command line: argument types only. `main` dispatches; the work lives in the stage modules.
//!
//! Exit codes are part of the interface (documented in README.md):
//! 0 success / no changes, 1 `diff` found changes, 2 error (including "not yet implemented").

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// Exit code for success, and for `diff` when nothing would change.
pub const EXIT_OK: u8 = 0;
/// Exit code of `diff` when it found changes (as `kubectl diff` does).
pub const EXIT_CHANGES: u8 = 1;
/// Exit code for every error: bad input, unreachable cluster, unimplemented command.
pub const EXIT_ERROR: u8 = 2;

/// GitOps reconciliation daemon that runs outside the cluster.
#[derive(Debug, Parser)]
#[command(name = "driftless", version, about, propagate_version = true)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalArgs,
    #[command(subcommand)]
    pub command: Command,
}

/// Options every subcommand accepts.
#[derive(Debug, Args)]
pub struct GlobalArgs {
    /// Host configuration file.
    #[arg(
        long,
        global = true,
        env = "DRIFTLESS_CONFIG",
        default_value = "/etc/driftless/driftless.yaml"
    )]
    pub config: PathBuf,
    /// Log format: `human` (default; coloured on a terminal) or `json` (one object per line).
    #[arg(long, global = true, value_enum, env = "DRIFTLESS_LOG_FORMAT", default_value_t = LogFormat::Human)]
    pub log_format: LogFormat,
    /// Log filter, in `RUST_LOG` syntax (e.g. `info`, `driftless=debug,kube=warn`).
    #[arg(long, global = true, env = "DRIFTLESS_LOG", default_value = "info")]
    pub log_level: String,
}

/// How log lines are written to standard error.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines; ANSI colour only when standard error is a terminal.
    Human,
    /// JSON lines, for journald/Loki and other machines.
    Json,
}

/// How a command prints its result on standard output.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Default)]
pub enum OutputFormat {
    /// Text for people.
    #[default]
    Human,
    /// One JSON document.
    Json,
}

/// How `diff` prints its plan.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Default)]
pub enum DiffFormat {
    /// Text for people.
    #[default]
    Human,
    /// One JSON document.
    Json,
    /// A pull-request comment: per stack the counts, each change in a collapsible block,
    /// policy findings and prune gates called out, cut to 60,000 characters.
    Markdown,
}

/// Cluster connection options, named as kubectl names them.
#[derive(Debug, Args, Clone, Default)]
pub struct ClusterArgs {
    /// Path to the kubeconfig file (default: `$KUBECONFIG`, then `~/.kube/config`).
    #[arg(long)]
    pub kubeconfig: Option<PathBuf>,
    /// Kubeconfig context to use (default: its current context).
    #[arg(long)]
    pub context: Option<String>,
    /// The target (host configuration `targets:`) whose cluster, profile and stacks to use;
    /// needed when several are configured.
    #[arg(long, value_name = "NAME")]
    pub target: Option<String>,
}

/// Selection of what to reconcile.
#[derive(Debug, Args, Clone, Default)]
pub struct SourceArgs {
    /// Local directory holding `stack/` and `policies/`, instead of the configured Git repository.
    #[arg(long)]
    pub path: Option<PathBuf>,
    /// Profile whose overlays and variables apply (overrides the host configuration).
    #[arg(long)]
    pub profile: Option<String>,
    /// Only this stack (repeatable).
    #[arg(long = "stack", value_name = "NAME")]
    pub stacks: Vec<String>,
    /// Directory of host secret files (default: the host configuration's, else
    /// `$CREDENTIALS_DIRECTORY`).
    #[arg(long)]
    pub credentials_dir: Option<PathBuf>,
}

/// The subcommands of DESIGN.md §7.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the daemon: poll/webhook/watch triggers, reconcile, scheduled jobs, HTTP endpoint.
    Run,
    /// Show what a sync would change (exit 0: no changes, 1: changes, 2: error).
    Diff {
        #[command(flatten)]
        source: SourceArgs,
        #[command(flatten)]
        cluster: ClusterArgs,
        /// Show the removal of stacks of this source that left the revision, as `sync
        /// --prune-removed-stacks` (and the daemon) would do it.
        #[arg(long)]
        prune_removed_stacks: bool,
        #[arg(long, short, value_enum, default_value_t)]
        output: DiffFormat,
    },
    /// Apply the desired state: ordered server-side apply, prune, wait for health.
    Sync {
        #[command(flatten)]
        source: SourceArgs,
        #[command(flatten)]
        cluster: ClusterArgs,
        /// Compute and print the plan through a server dry-run; change nothing.
        #[arg(long)]
        dry_run: bool,
        /// Delete objects that left the desired state (default: each stack's `prune`).
        #[arg(long)]
        prune: bool,
        /// Allow a prune that removes more than the configured share of a stack.
        #[arg(long)]
        allow_mass_prune: bool,
        /// Remove the stacks of this source that left the revision (their objects are pruned,
        /// their records removed); without it they are reported and kept.
        #[arg(long)]
        prune_removed_stacks: bool,
        /// Do not wait for the applied objects to become healthy.
        #[arg(long)]
        no_wait: bool,
        /// When a daemon (or another sync) holds a stack's lease, wait for it instead of
        /// refusing.
        #[arg(long)]
        wait_lease: bool,
        #[arg(long, short, value_enum, default_value_t)]
        output: OutputFormat,
    },
    /// Load, render and check the stacks offline (no cluster needed): for CI before merge.
    Validate {
        #[command(flatten)]
        source: SourceArgs,
        #[arg(long, short, value_enum, default_value_t)]
        output: OutputFormat,
    },
    /// Ask the running daemon for its status.
    Status {
        /// Base URL of the daemon's HTTP endpoint (default: from the host configuration's
        /// `daemon.listen`, else http://127.0.0.1:9427).
        #[arg(long)]
        endpoint: Option<String>,
        /// Only this target's stacks (the exit code is then the target's state).
        #[arg(long, value_name = "NAME")]
        target: Option<String>,
        #[arg(long, short, value_enum, default_value_t)]
        output: OutputFormat,
    },
    /// Ask the running daemon for a run, for CI (`POST /api/v1/sync`; needs the status token).
    /// With --wait: exit 0 once a run applied the revision (or a descendant) and the stacks are
    /// healthy, 2 when it failed or was refused (the reason is printed) or the wait timed out.
    Trigger {
        /// Base URL of the daemon's HTTP endpoint (default: from the host configuration's
        /// `daemon.listen`, else http://127.0.0.1:9427).
        #[arg(long)]
        endpoint: Option<String>,
        /// File holding the status token (default: the host configuration's
        /// `daemon.statusTokenFile`).
        #[arg(long, value_name = "FILE")]
        token_file: Option<PathBuf>,
        /// The commit to wait for (a run must apply it or a descendant of it).
        #[arg(long, value_name = "SHA")]
        revision: Option<String>,
        /// Only these stacks must be healthy (repeatable; default: every stack of the run).
        #[arg(long = "stack", value_name = "NAME")]
        stacks: Vec<String>,
        /// Wait for the outcome and print progress.
        #[arg(long)]
        wait: bool,
        /// How long --wait waits (e.g. 90s, 10m).
        #[arg(long, default_value = "10m", value_parser = crate::stack::model::duration_text::parse)]
        timeout: std::time::Duration,
    },
    /// Scheduled jobs declared in Git (ImageCleanup, Backup).
    Jobs {
        #[command(subcommand)]
        command: JobsCommand,
    },
    /// Policies (`policies/`): run their test fixtures.
    Policy {
        #[command(subcommand)]
        command: PolicyCommand,
    },
    /// Backups: list what exists, restore one.
    Backup {
        #[command(subcommand)]
        command: BackupCommand,
    },
    /// Check this host's setup before starting the service: configuration, credential files,
    /// Git source, cluster and permissions, renderers, state directory, endpoint address (exit
    /// 0: all good, 1: warnings, 2: errors).
    Doctor {
        #[arg(long, short, value_enum, default_value_t)]
        output: OutputFormat,
    },
    /// Write a starter stack repository into DIR (empty or absent): one stack with a profile,
    /// the shipped policies, commented job examples.
    Init {
        /// Directory to write (created when absent; refused when not empty).
        dir: PathBuf,
    },
    /// Print a shell completion script (bash, zsh or fish) on standard output.
    Completions {
        #[arg(value_enum)]
        shell: Shell,
    },
    /// Print the manual page (roff) on standard output, or write one page per subcommand.
    Man {
        /// Write `driftless.1` and `driftless-<subcommand>.1` pages into this directory.
        #[arg(long, value_name = "DIR")]
        out_dir: Option<PathBuf>,
    },
}

/// Shells `driftless completions` writes scripts for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Shell {
    Bash,
    Zsh,
    Fish,
}

/// `driftless jobs …`
#[derive(Debug, Subcommand)]
pub enum JobsCommand {
    /// List the jobs declared in Git, their schedules and next runs.
    List {
        #[command(flatten)]
        source: SourceArgs,
        /// Only jobs of stacks this target takes, rendered with its profile.
        #[arg(long, value_name = "NAME")]
        target: Option<String>,
        #[arg(long, short, value_enum, default_value_t)]
        output: OutputFormat,
    },
    /// Run one job now and record it like a scheduled run (exit 0: succeeded, 2: failed or
    /// already running).
    Run {
        /// Job name.
        name: String,
        /// Report what the job would do; change nothing (whatever the job's mode).
        #[arg(long)]
        dry_run: bool,
        /// With --dry-run: warnings fail the run (exit 2), e.g. an ImageCleanup keepTags rule
        /// that matches no tag of a repository losing images. For CI.
        #[arg(long, requires = "dry_run")]
        strict: bool,
        #[command(flatten)]
        source: SourceArgs,
        #[command(flatten)]
        cluster: ClusterArgs,
        #[arg(long, short, value_enum, default_value_t)]
        output: OutputFormat,
    },
}

/// `driftless policy …`
#[derive(Debug, Subcommand)]
pub enum PolicyCommand {
    /// Check every policy against its fixtures in `policies/tests/` (exit 0: all pass, 2: a
    /// case failed or a validation lacks an admit or deny case).
    Test {
        /// Repository root holding `policies/` (default: the current directory).
        #[arg(long, default_value = ".")]
        path: PathBuf,
        #[arg(long, short, value_enum, default_value_t)]
        output: OutputFormat,
    },
}

/// `driftless backup …`
#[derive(Debug, Subcommand)]
pub enum BackupCommand {
    /// List complete backups (and incomplete ones awaiting cleanup), of one job or of all.
    List {
        /// Job name (default: every Backup job).
        job: Option<String>,
        #[command(flatten)]
        source: SourceArgs,
        /// The cluster an S3 destination's port-forward goes through.
        #[command(flatten)]
        cluster: ClusterArgs,
        #[arg(long, short, value_enum, default_value_t)]
        output: OutputFormat,
    },
    /// Restore one backup: PostgreSQL into a database, S3 into a bucket/prefix (exit 0:
    /// restored, 2: failed or refused).
    Restore {
        /// Job name.
        job: String,
        /// Backup id (from `backup list`), or `latest`.
        id: String,
        /// PostgreSQL: the database to restore into (created when missing; default: the
        /// job's source database).
        #[arg(long)]
        database: Option<String>,
        /// S3: the bucket to restore into (default: the job's source bucket).
        #[arg(long)]
        bucket: Option<String>,
        /// S3: the prefix to restore into (default: the job's source prefix).
        #[arg(long)]
        prefix: Option<String>,
        /// Restore over a target that is not empty (PostgreSQL: objects of the dump are
        /// dropped and recreated; S3: objects not in the backup are deleted).
        #[arg(long)]
        force: bool,
        /// PostgreSQL: first apply the backup's `globals.sql` (roles, from `globals: true`) with
        /// psql, creating the roles that do not exist and leaving existing ones as they are.
        #[arg(long)]
        globals: bool,
        #[command(flatten)]
        source: SourceArgs,
        #[command(flatten)]
        cluster: ClusterArgs,
        #[arg(long, short, value_enum, default_value_t)]
        output: OutputFormat,
    },
}

impl BackupCommand {
    /// Where the jobs are read from.
    pub fn source(&self) -> &SourceArgs {
        match self {
            BackupCommand::List { source, .. } | BackupCommand::Restore { source, .. } => source,
        }
    }
}

impl Command {
    /// The subcommand's name as typed, for messages.
    pub fn name(&self) -> &'static str {
        match self {
            Command::Run => "run",
            Command::Diff { .. } => "diff",
            Command::Sync { .. } => "sync",
            Command::Validate { .. } => "validate",
            Command::Status { .. } => "status",
            Command::Trigger { .. } => "trigger",
            Command::Jobs {
                command: JobsCommand::List { .. },
            } => "jobs list",
            Command::Jobs {
                command: JobsCommand::Run { .. },
            } => "jobs run",
            Command::Policy {
                command: PolicyCommand::Test { .. },
            } => "policy test",
            Command::Backup {
                command: BackupCommand::List { .. },
            } => "backup list",
            Command::Backup {
                command: BackupCommand::Restore { .. },
            } => "backup restore",
            Command::Doctor { .. } => "doctor",
            Command::Init { .. } => "init",
            Command::Completions { .. } => "completions",
            Command::Man { .. } => "man",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn parses_the_design_subcommands() {
        let cases: &[(&[&str], &str)] = &[
            (&["driftless", "run"], "run"),
            (
                &["driftless", "diff", "--output", "json", "--stack", "a"],
                "diff",
            ),
            (
                &[
                    "driftless",
                    "sync",
                    "--dry-run",
                    "--prune",
                    "--allow-mass-prune",
                ],
                "sync",
            ),
            (&["driftless", "validate", "--path", "."], "validate"),
            (&["driftless", "status"], "status"),
            (&["driftless", "jobs", "list"], "jobs list"),
            (
                &["driftless", "jobs", "run", "cleanup", "--dry-run"],
                "jobs run",
            ),
            (&["driftless", "backup", "list"], "backup list"),
            (
                &["driftless", "policy", "test", "--path", "."],
                "policy test",
            ),
            (
                &["driftless", "backup", "restore", "pg", "20260101T000000Z"],
                "backup restore",
            ),
            (&["driftless", "init", "repo"], "init"),
            (&["driftless", "doctor", "-o", "json"], "doctor"),
            (&["driftless", "completions", "zsh"], "completions"),
            (&["driftless", "man"], "man"),
        ];
        for (argv, name) in cases {
            let cli = Cli::try_parse_from(*argv).unwrap_or_else(|e| panic!("{argv:?}: {e}"));
            assert_eq!(cli.command.name(), *name, "{argv:?}");
        }
    }

    #[test]
    fn log_format_json_is_global() {
        let cli = Cli::try_parse_from(["driftless", "validate", "--log-format", "json"]).unwrap();
        assert_eq!(cli.global.log_format, LogFormat::Json);
    }
}
