//! Reading a checkout: the stack definitions and the text of every file a render needs. Every
//! walk and read goes through `repo_walk` (the repository boundary — no symlink or `..` may lead
//! outside it —, loops, depth, entry and size limits). This and the renderers (`chart`,
//! `kustomize`) are the stack module's only I/O; rendering works on what this returns.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use secrecy::SecretSlice;

use super::external::Renderers;
use super::model::SourceFile;
use super::model::{API_VERSION, StackFile, StackSpec};
use super::{Error, Result, chart, kustomize};
use crate::repo_walk::{self, Kind, Repo, Step, Walk};

/// Bounds on what a checkout may make driftless read.
#[derive(Debug, Clone, Copy)]
pub struct LoadLimits {
    /// Largest file accepted, in bytes.
    pub max_file_bytes: u64,
    /// Most manifest files in one stack.
    pub max_files_per_stack: usize,
    /// Deepest directory level below the start of any walk (a stack's manifest directory, an
    /// overlay, a chart, `policies/`).
    pub max_depth: usize,
    /// Most directory entries one walk reads; ten times as many in one load.
    pub max_entries: usize,
}

impl Default for LoadLimits {
    fn default() -> Self {
        LoadLimits {
            max_file_bytes: repo_walk::MAX_FILE_BYTES,
            max_files_per_stack: 10_000,
            max_depth: repo_walk::MAX_DEPTH,
            max_entries: repo_walk::MAX_ENTRIES,
        }
    }
}

impl LoadLimits {
    /// The walker's limits for one load.
    pub fn walk(&self) -> repo_walk::Limits {
        repo_walk::Limits {
            max_depth: self.max_depth,
            max_entries: self.max_entries,
            max_total_entries: self.max_entries.saturating_mul(10),
            max_file_bytes: self.max_file_bytes,
        }
    }
}

/// One stack as read from the checkout: its definition and the raw files it renders from.
#[derive(Debug, Clone)]
pub struct LoadedStack {
    pub name: String,
    /// `stack.yaml`, relative to the repository root.
    pub file: PathBuf,
    pub spec: super::model::StackSpec,
    /// Manifest files in sorted path order.
    pub manifests: Vec<SourceFile>,
    /// Output of the stack's renderer (`spec.helm`, `spec.kustomize`), per template: read as
    /// manifests, but without `${VAR}` substitution (the renderer has its own values).
    pub rendered: Vec<SourceFile>,
    /// Overlay directory (as written in the profile) → its files, for the selected profile.
    pub overlays: Vec<(String, Vec<SourceFile>)>,
    /// The selected profile, if the stack defines profiles.
    pub profile: Option<String>,
    /// `jobs.yaml` beside `stack.yaml`, when there is one.
    pub jobs: Option<SourceFile>,
    /// The files of `spec.hooks.postSync`, in the same order.
    pub post_sync: Vec<SourceFile>,
}

/// Host secret file contents by file name, read from the credentials directory.
pub type HostSecrets = BTreeMap<String, SecretSlice<u8>>;

const STACK_FILE: &str = "stack.yaml";
const JOBS_FILE: &str = "jobs.yaml";
/// A stack's own policies directory (beside `stack.yaml`): never read as manifests.
pub const POLICIES_DIR: &str = "policies";

/// Reads every `stack.yaml` below `root/stack` (at any depth up to `MAX_STACK_DEPTH`) and the
/// files its stack renders from, for `profile` (a stack that defines profiles must define the
/// selected one). Chart and Kustomize stacks are rendered with the default `Renderers`.
pub fn load_repo(
    root: &Path,
    profile: Option<&str>,
    limits: LoadLimits,
) -> Result<Vec<LoadedStack>> {
    load_repo_with(root, profile, limits, &Renderers::default())
}

/// `load_repo` with the given renderer programs.
pub fn load_repo_with(
    root: &Path,
    profile: Option<&str>,
    limits: LoadLimits,
    renderers: &Renderers,
) -> Result<Vec<LoadedStack>> {
    let repo = Repo::open(root, limits.walk())?;
    let stacks_dir = repo.root().join("stack");
    let dirs = find_stack_dirs(&repo, &stacks_dir)?;
    if dirs.is_empty() {
        return Err(Error::NoStacks { path: stacks_dir });
    }
    let mut stacks: Vec<LoadedStack> = Vec::new();
    for dir in dirs {
        let stack = load_stack(&repo, &dir, profile, limits, renderers)?;
        if let Some(other) = stacks.iter().find(|s| s.name == stack.name) {
            return Err(Error::DuplicateStack {
                file: stack.file,
                name: stack.name,
                other: other.file.clone(),
            });
        }
        stacks.push(stack);
    }
    Ok(stacks)
}

/// The name and `stack.yaml` (relative to `root`) of every stack, found as `load_repo` finds
/// them but without loading or rendering anything else: what `driftless policy test` and the
/// daemon's policy digest need to find stack-local policies. A repository without `stack/` has
/// none.
pub fn stack_files(root: &Path) -> Result<Vec<(String, PathBuf)>> {
    let repo = Repo::open(root, LoadLimits::default().walk())?;
    let stacks_dir = repo.root().join("stack");
    if std::fs::symlink_metadata(&stacks_dir).is_err() {
        return Ok(Vec::new());
    }
    let mut out = Vec::new();
    for dir in find_stack_dirs(&repo, &stacks_dir)? {
        let file_abs = dir.join(STACK_FILE);
        let file = repo.relative(&file_abs);
        let text = repo.read_text(&file_abs)?;
        let def: StackFile = crate::yaml::parse_one(&file, &text)?;
        out.push((def.metadata.name, file));
    }
    Ok(out)
}

/// The declared health checks of a checkout: `health/` at its root (every stack) and beside each
/// stack's `stack.yaml` (`stacks`: name and `stack.yaml` relative to `root`), compiled. Files
/// are read through the bounded walk; a broken file is an error naming it.
pub fn load_health_checks<'a>(
    root: &Path,
    stacks: impl IntoIterator<Item = (&'a str, &'a Path)>,
) -> Result<crate::health_checks::HealthChecks> {
    let repo = Repo::open(root, LoadLimits::default().walk())?;
    let dir = crate::health_checks::DIR;
    let mut sources = Vec::new();
    let mut read = |at: PathBuf, stack: Option<&str>| -> Result<()> {
        if std::fs::symlink_metadata(&at).is_err() {
            return Ok(());
        }
        let how = Walk {
            follow_symlinks: true,
            include_hidden: false,
        };
        repo.walk(&at, how, |e| {
            match e.kind {
                Kind::Dir => return Ok::<_, Error>(Step::Enter),
                Kind::Other => return Ok(Step::Skip),
                Kind::File => {}
            }
            if [".yaml", ".yml", ".json"]
                .iter()
                .any(|ext| e.name.ends_with(ext))
            {
                sources.push(crate::health_checks::Source {
                    path: repo.relative(e.path),
                    text: repo.read_text(e.path)?,
                    stack: stack.map(str::to_owned),
                });
            }
            Ok(Step::Skip)
        })
    };
    read(repo.root().join(dir), None)?;
    for (name, file) in stacks {
        let stack_dir = repo
            .root()
            .join(file)
            .parent()
            .map_or_else(|| repo.root().to_owned(), Path::to_owned);
        read(stack_dir.join(dir), Some(name))?;
    }
    Ok(crate::health_checks::HealthChecks::compile(&sources)?)
}

/// Deepest directory level below `stack/` searched for `stack.yaml` files.
const MAX_STACK_DEPTH: usize = 6;

/// Every directory below `dir` (itself excluded, hidden ones skipped, at most `MAX_STACK_DEPTH`
/// levels down) that holds a `stack.yaml`, canonical, in sorted path order: stacks may be
/// grouped (`stack/ducklake/storage/stack.yaml`) and a stack's directory may hold further
/// stacks, which are never part of its manifests. Symlinked directories are not followed here:
/// a stack is where its file really is.
fn find_stack_dirs(repo: &Repo, dir: &Path) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    repo.walk(dir, Walk::default(), |e| {
        if e.kind != Kind::Dir {
            return Ok::<_, Error>(Step::Skip);
        }
        if exists(&e.real.join(STACK_FILE)) {
            out.push(e.real.to_owned());
        }
        Ok(if e.depth < MAX_STACK_DEPTH {
            Step::Enter
        } else {
            Step::Skip
        })
    })?;
    Ok(out)
}

/// Whether there is an entry at `path` (a broken symlink too: reading it then names it).
fn exists(path: &Path) -> bool {
    std::fs::symlink_metadata(path).is_ok()
}

fn load_stack(
    repo: &Repo,
    dir: &Path,
    profile: Option<&str>,
    limits: LoadLimits,
    renderers: &Renderers,
) -> Result<LoadedStack> {
    let file_abs = dir.join(STACK_FILE);
    let file = repo.relative(&file_abs);
    let text = repo.read_text(&file_abs)?;
    let def: StackFile = crate::yaml::parse_one(&file, &text)?;
    let bad = |message: String| Error::StackFile {
        file: file.clone(),
        message,
    };
    if def.api_version != API_VERSION || def.kind != "Stack" {
        return Err(bad(format!(
            "expected apiVersion {API_VERSION} and kind Stack, found {} {}",
            def.api_version, def.kind
        )));
    }
    let name = def.metadata.name.clone();
    if !is_dns_label(&name) {
        return Err(bad(format!(
            "metadata.name {name:?} must be a DNS label (lowercase letters, digits, '-', at most 63)"
        )));
    }
    let spec = def.spec;
    check_sources(&spec, &bad)?;
    let profile_spec = match (profile, spec.profiles.is_empty()) {
        (_, true) | (None, _) => None,
        (Some(p), false) => Some(spec.profiles.get(p).ok_or_else(|| Error::UnknownProfile {
            stack: name.clone(),
            profile: p.to_owned(),
            defined: spec.profiles.keys().cloned().collect::<Vec<_>>().join(", "),
        })?),
    };
    let inside = |rel: &str, field: &str| inside(repo, dir, rel, &file, field);

    // Overlay directories of every profile stay out of the base manifests.
    let mut excluded: Vec<PathBuf> = Vec::new();
    for p in spec.profiles.values() {
        for o in &p.overlays {
            excluded.push(inside(o, "spec.profiles[].overlays")?);
        }
    }
    // Hook files are Jobs run at points of the sync, not objects of the stack.
    let mut post_sync = Vec::new();
    for (i, hook) in spec.hooks.post_sync.iter().enumerate() {
        let field = format!("spec.hooks.postSync[{i}].file");
        let path = inside(&hook.file, &field)?;
        if !path.is_file() {
            return Err(bad(format!("{field}: {:?} is not a file", hook.file)));
        }
        excluded.push(path.clone());
        post_sync.push(SourceFile {
            path: repo.relative(&path),
            text: repo.read_text(&path)?,
        });
    }
    let mut manifests = Vec::new();
    let mut rendered = Vec::new();
    if let Some(helm) = &spec.helm {
        let chart = inside(&helm.chart, "spec.helm.chart")?;
        if !chart.join("Chart.yaml").is_file() {
            return Err(bad(format!(
                "spec.helm.chart: {:?} holds no Chart.yaml",
                helm.chart
            )));
        }
        let profile_values = profile_spec
            .and_then(|p| p.helm.as_ref())
            .map(|h| h.values_files.as_slice())
            .unwrap_or_default();
        let mut values = Vec::new();
        for (i, v) in helm.values_files.iter().chain(profile_values).enumerate() {
            let field = if i < helm.values_files.len() {
                "spec.helm.valuesFiles"
            } else {
                "spec.profiles[].helm.valuesFiles"
            };
            let path = inside(v, field)?;
            if !path.is_file() {
                return Err(bad(format!("{field}: {v:?} is not a file")));
            }
            values.push(path);
        }
        let release = helm.release_name.clone().unwrap_or_else(|| name.clone());
        let job = chart::ChartRender {
            stack: &name,
            file: &file,
            chart: &chart,
            release: &release,
            namespace: spec.namespace.as_deref(),
            values: &values,
        };
        rendered = chart::render(repo, &job, renderers)?;
    } else if let Some(kustomize) = &spec.kustomize {
        let chosen = profile_spec
            .and_then(|p| p.kustomize.as_ref())
            .unwrap_or(kustomize);
        let field = if std::ptr::eq(chosen, kustomize) {
            "spec.kustomize.path"
        } else {
            "spec.profiles[].kustomize.path"
        };
        let kdir = inside(&chosen.path, field)?;
        rendered = kustomize::render(repo, &name, &file, field, &chosen.path, &kdir, renderers)?;
    } else {
        let manifest_dir = inside(spec.path.as_deref().unwrap_or("."), "spec.path")?;
        let collect = Collect {
            repo,
            stack_dir: dir,
            excluded: &excluded,
            limits,
            stack: &name,
        };
        collect.yaml(&manifest_dir, &mut manifests)?;
    }

    let mut overlays = Vec::new();
    let selected = profile_spec.and(profile.map(str::to_owned));
    if let Some(p) = profile_spec {
        for o in &p.overlays {
            let odir = inside(o, "spec.profiles[].overlays")?;
            let collect = Collect {
                repo,
                stack_dir: dir,
                excluded: &[],
                limits,
                stack: &name,
            };
            let mut files = Vec::new();
            collect.yaml(&odir, &mut files)?;
            overlays.push((o.clone(), files));
        }
    }
    let jobs_path = dir.join(JOBS_FILE);
    let jobs = if exists(&jobs_path) {
        Some(SourceFile {
            path: repo.relative(&jobs_path),
            text: repo.read_text(&jobs_path)?,
        })
    } else {
        None
    };
    Ok(LoadedStack {
        name,
        file,
        spec,
        manifests,
        rendered,
        overlays,
        profile: selected,
        jobs,
        post_sync,
    })
}

/// At most one of `spec.path`, `spec.helm` and `spec.kustomize`; profiles override only the one
/// the stack has.
fn check_sources(spec: &StackSpec, bad: &impl Fn(String) -> Error) -> Result<()> {
    let sources = [
        spec.path.is_some(),
        spec.helm.is_some(),
        spec.kustomize.is_some(),
    ];
    if sources.iter().filter(|s| **s).count() > 1 {
        return Err(bad(
            "give at most one of spec.path, spec.helm and spec.kustomize".to_owned(),
        ));
    }
    for (p, profile) in &spec.profiles {
        if profile.helm.is_some() && spec.helm.is_none() {
            return Err(bad(format!(
                "spec.profiles.{p}.helm: the stack has no spec.helm"
            )));
        }
        if profile.kustomize.is_some() && spec.kustomize.is_none() {
            return Err(bad(format!(
                "spec.profiles.{p}.kustomize: the stack has no spec.kustomize"
            )));
        }
    }
    Ok(())
}

/// Resolves `rel` (from a stack file) against `dir`; it must exist and stay in the repository.
fn inside(repo: &Repo, dir: &Path, rel: &str, file: &Path, field: &str) -> Result<PathBuf> {
    let rel_path = Path::new(rel);
    if rel_path.is_absolute() {
        return Err(Error::StackFile {
            file: file.to_owned(),
            message: format!("{field}: {rel:?} must be relative to the stack directory"),
        });
    }
    let joined = dir.join(rel_path);
    let resolved = joined.canonicalize().map_err(|source| Error::Io {
        path: repo.relative(&joined),
        message: format!("{field} of {} does not exist", file.display()),
        source,
    })?;
    repo.check_inside(&joined, &resolved, "path leads outside the repository")?;
    Ok(resolved)
}

/// What one stack's manifest or overlay walk skips and how much it may read.
struct Collect<'a> {
    repo: &'a Repo,
    /// The stack's directory, canonical.
    stack_dir: &'a Path,
    /// Directories and files (canonical) that are not manifests: overlays, hooks.
    excluded: &'a [PathBuf],
    limits: LoadLimits,
    stack: &'a str,
}

impl Collect<'_> {
    /// Collects `*.yaml`/`*.yml`/`*.json` below `dir` in sorted path order, skipping hidden
    /// entries, excluded directories and files, nested stacks, the stack's own `policies/`,
    /// `stack.yaml` and `jobs.yaml`. Symlinks are followed inside the repository.
    fn yaml(&self, dir: &Path, out: &mut Vec<SourceFile>) -> Result<()> {
        let how = Walk {
            follow_symlinks: true,
            include_hidden: false,
        };
        let in_stack_dir = |p: &Path| p.parent() == Some(self.stack_dir);
        self.repo.walk(dir, how, |e| {
            if e.kind == Kind::Dir {
                // `policies/` beside stack.yaml holds the stack's own admission policies, and
                // `health/` its declared health checks.
                let own_policies = in_stack_dir(e.path)
                    && (e.name == POLICIES_DIR || e.name == crate::health_checks::DIR);
                let nested_stack = e.real != self.stack_dir && exists(&e.real.join(STACK_FILE));
                let skip =
                    own_policies || nested_stack || self.excluded.iter().any(|x| x == e.real);
                return Ok(if skip { Step::Skip } else { Step::Enter });
            }
            let is_manifest = [".yaml", ".yml", ".json"]
                .iter()
                .any(|ext| e.name.ends_with(ext));
            let own_file = in_stack_dir(e.path) && (e.name == STACK_FILE || e.name == JOBS_FILE);
            if !is_manifest || own_file || self.excluded.iter().any(|x| x == e.real) {
                return Ok(Step::Skip);
            }
            if out.len() >= self.limits.max_files_per_stack {
                return Err(Error::TooManyFiles {
                    path: self.repo.relative(dir),
                    stack: self.stack.to_owned(),
                    limit: self.limits.max_files_per_stack,
                });
            }
            // A FIFO or device named like a manifest is refused here, never opened.
            let text = self.repo.read_text(e.path)?;
            out.push(SourceFile {
                path: self.repo.relative(e.path),
                text,
            });
            Ok(Step::Skip)
        })
    }
}

/// Reads the host files every stack's `spec.secrets` names, through the repository's reader of
/// the credentials (plain file names only; never the host's own files; `credentials.allow`).
pub fn read_host_secrets(
    stacks: &[LoadedStack],
    credentials: &crate::credentials::Credentials,
) -> Result<HostSecrets> {
    let mut secrets = HostSecrets::new();
    for stack in stacks {
        for (i, secret) in stack.spec.secrets.iter().enumerate() {
            if !credentials.has_dir() {
                return Err(Error::NoCredentialsDir {
                    stack: stack.name.clone(),
                });
            }
            for (key, file) in &secret.from_files {
                let field = format!("spec.secrets[{i}].fromFiles.{key}");
                if secrets.contains_key(file) {
                    credentials
                        .check_repository_name(&field, file)
                        .map_err(|source| host_secret_error(stack, &secret.name, source))?;
                    continue;
                }
                let bytes = credentials
                    .repository_secret(&field, file)
                    .map_err(|source| host_secret_error(stack, &secret.name, source))?;
                secrets.insert(file.clone(), bytes);
            }
        }
    }
    Ok(secrets)
}

fn host_secret_error(
    stack: &LoadedStack,
    secret: &str,
    source: crate::credentials::Error,
) -> Error {
    Error::HostSecret {
        file: stack.file.clone(),
        stack: stack.name.clone(),
        secret: secret.to_owned(),
        source,
    }
}

/// Empty stand-ins for every host secret file, for offline validation where the host's
/// credentials are not available (CI before merge): the render is checked, not the files. The
/// names are still checked as `credentials` would (plain names; the host's own files refused).
pub fn placeholder_host_secrets(
    stacks: &[LoadedStack],
    credentials: &crate::credentials::Credentials,
) -> Result<HostSecrets> {
    let mut secrets = HostSecrets::new();
    for stack in stacks {
        for (i, secret) in stack.spec.secrets.iter().enumerate() {
            for (key, file) in &secret.from_files {
                let field = format!("spec.secrets[{i}].fromFiles.{key}");
                credentials
                    .check_repository_name(&field, file)
                    .map_err(|source| host_secret_error(stack, &secret.name, source))?;
                secrets.insert(file.clone(), SecretSlice::from(Vec::new()));
            }
        }
    }
    Ok(secrets)
}

/// RFC 1123 label: what Kubernetes accepts as a namespace or label-safe name.
pub fn is_dns_label(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-')
}
