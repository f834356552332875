//! Log set-up: human lines on standard error (colour only on a terminal), or JSON lines.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

use crate::cli::LogFormat;

/// Errors setting up logging.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The `--log-level` / `DRIFTLESS_LOG` filter did not parse.
    #[error(
        "invalid log filter {filter:?} (expected e.g. `info` or `driftless=debug,kube=warn`): {source}"
    )]
    Filter {
        filter: String,
        #[source]
        source: tracing_subscriber::filter::ParseError,
    },
    /// A global subscriber was already installed (only in tests that call `init` twice).
    #[error("logging was already initialised")]
    AlreadyInitialised,
}

/// Installs the global subscriber. Logs always go to standard error so that standard output
/// carries only command results (diffs, JSON) and can be piped.
pub fn init(format: LogFormat, filter: &str) -> Result<(), Error> {
    let env_filter = EnvFilter::try_new(filter).map_err(|source| Error::Filter {
        filter: filter.to_owned(),
        source,
    })?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(env_filter)
        .with_writer(std::io::stderr);
    let result = match format {
        LogFormat::Human => builder
            .with_ansi(std::io::stderr().is_terminal())
            .with_target(false)
            .try_init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .try_init(),
    };
    result.map_err(|_| Error::AlreadyInitialised)
}

/// Debug-level timing of the steps of a long operation (a reconcile, a revision's render): each
/// `log` reports the time since the previous one (`DRIFTLESS_LOG=driftless=debug`).
pub struct Lap<'a> {
    scope: &'a str,
    since: std::time::Instant,
}

impl<'a> Lap<'a> {
    pub fn start(scope: &'a str) -> Lap<'a> {
        Lap {
            scope,
            since: std::time::Instant::now(),
        }
    }

    pub fn log(&mut self, step: &str) {
        tracing::debug!(
            scope = self.scope,
            ms = self.since.elapsed().as_millis() as u64,
            "{step}"
        );
        self.since = std::time::Instant::now();
    }
}
