//! One revision of the stack repository, from its source to what a reconcile needs: the files
//! (a Git fetch and checkout, or a local directory), then the stacks loaded and rendered, their
//! jobs, and the policies. `validate`, `diff`, `sync`, `jobs`, `backup` and the daemon all load a
//! revision through here, so they agree on what a revision declares.
//!
//! Everything here blocks (Git, file reads, renderers): async callers use `spawn_blocking`.

use std::path::{Path, PathBuf};

use crate::config::SourceConfig;
use crate::credentials::Credentials;
use crate::jobs::model::Job;
use crate::policy::PolicySet;
use crate::stack::{RenderedStack, Renderers};

/// Why a revision cannot be had or does not load.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("no source: pass --path DIR, or set `source` in the host configuration")]
    NoSource,
    #[error("source: give `path` or `git` in the host configuration")]
    EmptySource,
    #[error(transparent)]
    Source(#[from] crate::source::Error),
    #[error(transparent)]
    Stack(#[from] crate::stack::Error),
    #[error(transparent)]
    Jobs(#[from] crate::jobs::model::Error),
    #[error(transparent)]
    Policy(#[from] crate::policy::Error),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The files of one revision.
#[derive(Debug, Clone)]
pub struct Checkout {
    /// The directory holding `stack/` and `policies/`.
    pub root: PathBuf,
    /// The Git commit; `None` for a local directory.
    pub revision: Option<crate::source::Revision>,
}

/// Where the files come from: `path` (a `--path` given on the command line) wins over the
/// configured source. A Git source is fetched into `<state_dir>/git`; `previous` is the sha the
/// caller last used (a ref that did not move reuses its checkout).
pub fn checkout(
    source: Option<&SourceConfig>,
    path: Option<&Path>,
    credentials: &Credentials,
    state_dir: &Path,
    previous: Option<&str>,
) -> Result<Checkout> {
    let local = |root: &Path| Checkout {
        root: root.to_owned(),
        revision: None,
    };
    match (path, source) {
        (Some(p), _) => Ok(local(p)),
        (None, Some(src)) => match (&src.path, &src.git) {
            (Some(p), _) => Ok(local(p)),
            (None, Some(git)) => {
                let fetched = crate::source::GitSource::from_config(git, credentials, state_dir)?
                    .fetch(previous)?;
                Ok(Checkout {
                    root: fetched.checkout,
                    revision: Some(fetched.revision),
                })
            }
            (None, None) => Err(Error::EmptySource),
        },
        (None, None) => Err(Error::NoSource),
    }
}

/// Removes the checkouts of a Git source that are no longer needed (see
/// `GitSource::remove_old_checkouts`): `applied` is kept, as are the few most recently fetched.
/// A local source has none.
pub fn remove_old_checkouts(
    source: Option<&SourceConfig>,
    credentials: &Credentials,
    state_dir: &Path,
    applied: Option<&str>,
) -> Result<Vec<String>> {
    match source.and_then(|s| s.git.as_ref()) {
        Some(git) if source.is_some_and(|s| s.path.is_none()) => Ok(
            crate::source::GitSource::from_config(git, credentials, state_dir)?
                .remove_old_checkouts(applied)?,
        ),
        _ => Ok(Vec::new()),
    }
}

/// Whether the configured Git source's commit `newer` is `wanted` or a descendant of it (from
/// the mirror, nothing fetched); `None` without a Git source.
pub fn contains(
    source: Option<&SourceConfig>,
    credentials: &Credentials,
    state_dir: &Path,
    newer: &str,
    wanted: &str,
) -> Result<Option<bool>> {
    match source.and_then(|s| s.git.as_ref()) {
        Some(git) if source.is_some_and(|s| s.path.is_none()) => Ok(Some(
            crate::source::GitSource::from_config(git, credentials, state_dir)?
                .contains(newer, wanted)?,
        )),
        _ => Ok(None),
    }
}

/// How to load a revision.
pub struct LoadOptions<'a> {
    /// The profile whose overlays and variables apply.
    pub profile: Option<&'a str>,
    /// Where host secret files are read.
    pub credentials: &'a Credentials,
    pub renderers: &'a Renderers,
    /// Without a credentials directory, render with empty stand-ins for host secrets (offline
    /// validation) instead of failing.
    pub placeholders: bool,
    /// Parsed manifests of earlier revisions, reused (the daemon); a round starts per load.
    pub cache: Option<&'a crate::yaml::ParseCache>,
}

/// What one revision declares.
pub struct Loaded {
    /// Every stack, rendered, in dependency order.
    pub stacks: Vec<RenderedStack>,
    pub jobs: Vec<Job>,
    /// `policies/` and the stacks' own, compiled.
    pub policies: PolicySet,
    /// Declared health checks of custom resources (`health/` at the root and in stacks).
    pub health_checks: crate::health_checks::HealthChecks,
    /// Digest of the policy files: an incremental reconcile is only sound while it stays.
    pub policy_digest: String,
    /// Whether host secrets were read (`placeholders` without a credentials directory: not).
    pub secrets_checked: bool,
}

/// Loads and renders every stack of the checkout at `root`, its jobs and its policies.
pub fn load(root: &Path, options: &LoadOptions<'_>) -> Result<Loaded> {
    let mut lap = crate::logging::Lap::start("revision");
    if let Some(cache) = options.cache {
        cache.begin();
    }
    // Every stack is loaded and rendered even when a command acts on some: the others' objects
    // must be known so that nothing they own looks prunable.
    let loaded = crate::stack::load_repo_with(
        root,
        options.profile,
        crate::stack::LoadLimits::default(),
        options.renderers,
    )?;
    let jobs = crate::jobs::model::load_jobs(&loaded)?;
    lap.log("read the stacks and jobs");
    let (stacks, secrets_checked) = crate::stack::render_loaded_with(
        &loaded,
        options.credentials,
        options.placeholders,
        options.cache,
    )?;
    lap.log("rendered the stacks");
    let policies = crate::policy::load_policies(root, &stacks)?;
    let health_checks = crate::stack::load_health_checks(
        root,
        stacks.iter().map(|s| (s.name.as_str(), s.file.as_path())),
    )?;
    let policy_digest = policy_digest(root);
    lap.log("loaded the policies and health checks");
    Ok(Loaded {
        stacks,
        jobs,
        policies,
        health_checks,
        policy_digest,
        secrets_checked,
    })
}

/// A digest of every policy file of a checkout (`policies/` and the stacks' own `policies/`
/// directories): an incremental reconcile is only sound while the policies stay the same.
pub fn policy_digest(root: &Path) -> String {
    use sha2::{Digest, Sha256};
    let mut hasher = Sha256::new();
    // The files `load_policies` read, found and read by the same bounded walk.
    match crate::policy::revision_policy_files(root) {
        Ok(files) => {
            for f in files {
                for part in [f.path.as_os_str().as_encoded_bytes(), f.text.as_bytes()] {
                    hasher.update((part.len() as u64).to_le_bytes());
                    hasher.update(part);
                }
            }
        }
        // Unreadable although just loaded: a digest no run shares, so the next one is full.
        Err(e) => hasher.update(format!("{e} {}", rand::random::<u64>())),
    }
    crate::hex::encode(&hasher.finalize())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(root: &Path, path: &str, text: &str) {
        let file = root.join(path);
        std::fs::create_dir_all(file.parent().unwrap()).unwrap();
        std::fs::write(file, text).unwrap();
    }

    #[test]
    fn a_command_line_path_wins_over_the_configured_source() {
        let creds = Credentials::default();
        let state = Path::new("/nonexistent-state");
        let configured = SourceConfig {
            path: Some(PathBuf::from("/srv/configured")),
            git: None,
        };
        let c = checkout(
            Some(&configured),
            Some(Path::new("/srv/given")),
            &creds,
            state,
            None,
        )
        .unwrap();
        assert_eq!(c.root, Path::new("/srv/given"));
        assert!(c.revision.is_none());
        let c = checkout(Some(&configured), None, &creds, state, None).unwrap();
        assert_eq!(c.root, Path::new("/srv/configured"));
        assert!(matches!(
            checkout(None, None, &creds, state, None),
            Err(Error::NoSource)
        ));
        let empty = SourceConfig {
            path: None,
            git: None,
        };
        assert!(matches!(
            checkout(Some(&empty), None, &creds, state, None),
            Err(Error::EmptySource)
        ));
    }

    #[test]
    fn a_revision_loads_its_stacks_jobs_and_policies() {
        let repo = tempfile::tempdir().unwrap();
        let root = repo.path();
        write(
            root,
            "stack/app/stack.yaml",
            "apiVersion: driftless.dev/v1alpha1\nkind: Stack\nmetadata: {name: app}\nspec: {namespace: app}\n",
        );
        write(
            root,
            "stack/app/cm.yaml",
            "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: settings}\ndata: {a: b}\n",
        );
        let creds = Credentials::default();
        let renderers = Renderers::default();
        let options = LoadOptions {
            profile: None,
            credentials: &creds,
            renderers: &renderers,
            placeholders: true,
            cache: None,
        };
        let loaded = load(root, &options).unwrap();
        assert_eq!(loaded.stacks.len(), 1);
        assert_eq!(loaded.stacks[0].name, "app");
        assert!(loaded.jobs.is_empty());
        assert!(!loaded.secrets_checked, "no credentials directory");
        let before = loaded.policy_digest;
        // A stack-local policy file changes the digest; a manifest does not.
        write(
            root,
            "stack/app/cm.yaml",
            "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: settings}\ndata: {a: c}\n",
        );
        assert_eq!(policy_digest(root), before);
        write(root, "stack/app/policies/p.yaml", "# nothing yet\n");
        assert_ne!(policy_digest(root), before);
    }

    #[test]
    fn a_broken_revision_names_what_is_wrong() {
        let repo = tempfile::tempdir().unwrap();
        write(
            repo.path(),
            "stack/app/stack.yaml",
            "apiVersion: driftless.dev/v1alpha1\nkind: Stack\nmetadata: {name: app}\nspec: {namespace: [x]}\n",
        );
        let creds = Credentials::default();
        let renderers = Renderers::default();
        let options = LoadOptions {
            profile: None,
            credentials: &creds,
            renderers: &renderers,
            placeholders: true,
            cache: None,
        };
        let err = load(repo.path(), &options).err().expect("a load error");
        assert!(matches!(err, Error::Stack(_)), "{err:?}");
        assert!(err.to_string().contains("stack.yaml"), "{err}");
    }
}
