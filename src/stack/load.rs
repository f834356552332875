//! Reading a checkout: the stack definitions and the text of every file a render needs, with the
//! repository boundary enforced (no symlink or `..` may lead outside it) and size limits.
//! This is the stack module's only I/O; rendering works on what this returns.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use secrecy::SecretSlice;

use super::external::{self, Renderers};
use super::model::{API_VERSION, StackFile};
use super::{Error, Result};

/// Bounds on what a checkout may make driftless read.
#[derive(Debug, Clone, Copy)]
pub struct LoadLimits {
    /// Largest manifest file accepted, in bytes.
    pub max_file_bytes: u64,
    /// Most manifest files in one stack.
    pub max_files_per_stack: usize,
}

impl Default for LoadLimits {
    fn default() -> Self {
        LoadLimits {
            max_file_bytes: 4 * 1024 * 1024,
            max_files_per_stack: 10_000,
        }
    }
}

/// A file's text and its path relative to the repository root.
#[derive(Debug, Clone)]
pub struct SourceFile {
    pub path: PathBuf,
    pub text: String,
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
    let root = root.canonicalize().map_err(|source| Error::Io {
        path: root.to_owned(),
        message: "cannot open the repository".to_owned(),
        source,
    })?;
    let stacks_dir = root.join("stack");
    let mut entries = Vec::new();
    find_stack_dirs(&root, &stacks_dir, 0, &mut entries)?;
    if entries.is_empty() {
        return Err(Error::NoStacks { path: stacks_dir });
    }
    let mut stacks: Vec<LoadedStack> = Vec::new();
    for dir in entries {
        let stack = load_stack(&root, &dir, profile, limits, renderers)?;
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
/// them but without loading or rendering anything else: what `driftless policy test` needs to
/// find stack-local policies. A repository without `stack/` has none.
pub fn stack_files(root: &Path) -> Result<Vec<(String, PathBuf)>> {
    let stacks_dir = root.join("stack");
    if !stacks_dir.is_dir() {
        return Ok(Vec::new());
    }
    let mut dirs = Vec::new();
    find_stack_dirs(root, &stacks_dir, 0, &mut dirs)?;
    let mut out = Vec::new();
    for dir in dirs {
        let file_abs = dir.join(STACK_FILE);
        let file = relative(root, &file_abs);
        let text = read_text(root, &file_abs, LoadLimits::default())?;
        let def: StackFile = crate::yaml::parse_one(&file, &text)?;
        out.push((def.metadata.name, file));
    }
    Ok(out)
}

/// Deepest directory level below `stack/` searched for `stack.yaml` files.
const MAX_STACK_DEPTH: usize = 6;

/// Every directory below `dir` (itself excluded, hidden ones skipped) that holds a `stack.yaml`,
/// in sorted path order: stacks may be grouped (`stack/ducklake/storage/stack.yaml`) and a
/// stack's directory may hold further stacks, which are never part of its manifests.
fn find_stack_dirs(root: &Path, dir: &Path, depth: usize, out: &mut Vec<PathBuf>) -> Result<()> {
    if depth >= MAX_STACK_DEPTH {
        return Ok(());
    }
    for entry in read_dir_sorted(dir)? {
        let hidden = entry
            .file_name()
            .and_then(|n| n.to_str())
            .is_none_or(|n| n.starts_with('.'));
        // Symlinked directories are not followed here: a stack is where its file really is.
        let is_dir = std::fs::symlink_metadata(&entry)
            .map(|m| m.is_dir())
            .map_err(|source| Error::Io {
                path: relative(root, &entry),
                message: "cannot stat".to_owned(),
                source,
            })?;
        if hidden || !is_dir {
            continue;
        }
        if entry.join(STACK_FILE).is_file() {
            out.push(entry.clone());
        }
        find_stack_dirs(root, &entry, depth + 1, out)?;
    }
    Ok(())
}

fn load_stack(
    root: &Path,
    dir: &Path,
    profile: Option<&str>,
    limits: LoadLimits,
    renderers: &Renderers,
) -> Result<LoadedStack> {
    let file_abs = dir.join(STACK_FILE);
    let file = relative(root, &file_abs);
    let text = read_text(root, &file_abs, limits)?;
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

    let profile_spec = match (profile, spec.profiles.is_empty()) {
        (_, true) | (None, _) => None,
        (Some(p), false) => Some(spec.profiles.get(p).ok_or_else(|| Error::UnknownProfile {
            stack: name.clone(),
            profile: p.to_owned(),
            defined: spec.profiles.keys().cloned().collect::<Vec<_>>().join(", "),
        })?),
    };

    // Overlay directories of every profile stay out of the base manifests.
    let mut excluded: Vec<PathBuf> = Vec::new();
    for p in spec.profiles.values() {
        for o in &p.overlays {
            excluded.push(inside(root, dir, o, &file, "spec.profiles[].overlays")?);
        }
    }
    // Hook files are Jobs run at points of the sync, not objects of the stack.
    let mut post_sync = Vec::new();
    for (i, hook) in spec.hooks.post_sync.iter().enumerate() {
        let field = format!("spec.hooks.postSync[{i}].file");
        let path = inside(root, dir, &hook.file, &file, &field)?;
        if !path.is_file() {
            return Err(bad(format!("{field}: {:?} is not a file", hook.file)));
        }
        excluded.push(path.clone());
        post_sync.push(SourceFile {
            path: relative(root, &path),
            text: read_text(root, &path, limits)?,
        });
    }
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
    let mut manifests = Vec::new();
    let mut rendered = Vec::new();
    if let Some(helm) = &spec.helm {
        let chart = inside(root, dir, &helm.chart, &file, "spec.helm.chart")?;
        if !chart.join("Chart.yaml").is_file() {
            return Err(bad(format!(
                "spec.helm.chart: {:?} holds no Chart.yaml",
                helm.chart
            )));
        }
        let release = helm.release_name.clone().unwrap_or_else(|| name.clone());
        let mut args: Vec<std::ffi::OsString> = vec![
            "template".into(),
            release.into(),
            relative(root, &chart).into(),
            "--include-crds".into(),
            "--skip-tests".into(),
        ];
        if let Some(ns) = &spec.namespace {
            args.extend(["--namespace".into(), ns.into()]);
        }
        let profile_values = profile_spec
            .and_then(|p| p.helm.as_ref())
            .map(|h| h.values_files.as_slice())
            .unwrap_or_default();
        for (i, v) in helm.values_files.iter().chain(profile_values).enumerate() {
            let field = if i < helm.values_files.len() {
                "spec.helm.valuesFiles"
            } else {
                "spec.profiles[].helm.valuesFiles"
            };
            let path = inside(root, dir, v, &file, field)?;
            if !path.is_file() {
                return Err(bad(format!("{field}: {v:?} is not a file")));
            }
            args.extend(["--values".into(), relative(root, &path).into()]);
        }
        let output = external::run(
            &external::Invocation {
                stack: &name,
                file: &file,
                field: "spec.helm",
                program: &renderers.helm,
                args,
                cwd: root,
                install_hint: "install Helm (3 or 4), or set renderers.helm in the host configuration (or $DRIFTLESS_HELM)",
            },
            renderers.timeout,
        )?;
        rendered = external::split_helm_output(&relative(root, &chart), &output);
    } else if let Some(kustomize) = &spec.kustomize {
        let chosen = profile_spec
            .and_then(|p| p.kustomize.as_ref())
            .unwrap_or(kustomize);
        let field = if std::ptr::eq(chosen, kustomize) {
            "spec.kustomize.path"
        } else {
            "spec.profiles[].kustomize.path"
        };
        let kdir = inside(root, dir, &chosen.path, &file, field)?;
        let has_kustomization = ["kustomization.yaml", "kustomization.yml", "Kustomization"]
            .iter()
            .any(|k| kdir.join(k).is_file());
        if !has_kustomization {
            return Err(bad(format!(
                "{field}: {:?} holds no kustomization.yaml",
                chosen.path
            )));
        }
        let rel = relative(root, &kdir);
        let output = external::run(
            &external::Invocation {
                stack: &name,
                file: &file,
                field: "spec.kustomize",
                program: &renderers.kubectl,
                args: vec!["kustomize".into(), rel.clone().into()],
                cwd: root,
                install_hint: "install kubectl, or set renderers.kubectl in the host configuration (or $DRIFTLESS_KUBECTL)",
            },
            renderers.timeout,
        )?;
        rendered.push(SourceFile {
            path: rel,
            text: output,
        });
    } else {
        let path = spec.path.as_deref().unwrap_or(".");
        let manifest_dir = inside(root, dir, path, &file, "spec.path")?;
        collect_yaml(
            root,
            &manifest_dir,
            dir,
            &excluded,
            limits,
            &name,
            &mut manifests,
        )?;
    }

    let mut overlays = Vec::new();
    let selected = profile_spec.and(profile.map(str::to_owned));
    if let Some(p) = profile_spec {
        for o in &p.overlays {
            let odir = inside(root, dir, o, &file, "spec.profiles[].overlays")?;
            let mut files = Vec::new();
            collect_yaml(root, &odir, dir, &[], limits, &name, &mut files)?;
            overlays.push((o.clone(), files));
        }
    }
    let jobs_path = dir.join(JOBS_FILE);
    let jobs = if jobs_path.is_file() {
        Some(SourceFile {
            path: relative(root, &jobs_path),
            text: read_text(root, &jobs_path, limits)?,
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

/// Resolves `rel` (from a stack file) against `dir`; it must exist and stay in the repository.
fn inside(root: &Path, dir: &Path, rel: &str, file: &Path, field: &str) -> Result<PathBuf> {
    let rel_path = Path::new(rel);
    if rel_path.is_absolute() {
        return Err(Error::StackFile {
            file: file.to_owned(),
            message: format!("{field}: {rel:?} must be relative to the stack directory"),
        });
    }
    let joined = dir.join(rel_path);
    let resolved = joined.canonicalize().map_err(|source| Error::Io {
        path: relative(root, &joined),
        message: format!("{field} of {} does not exist", file.display()),
        source,
    })?;
    if !resolved.starts_with(root) {
        return Err(Error::OutsideRepository {
            path: relative(root, &joined),
            root: root.to_owned(),
            reason: "path leads outside the repository",
        });
    }
    Ok(resolved)
}

/// Collects `*.yaml`/`*.yml`/`*.json` below `dir` in sorted path order, skipping hidden entries,
/// excluded directories and files, nested stacks, and the stack's own `stack.yaml` and `jobs.yaml`.
fn collect_yaml(
    root: &Path,
    dir: &Path,
    stack_dir: &Path,
    excluded: &[PathBuf],
    limits: LoadLimits,
    stack: &str,
    out: &mut Vec<SourceFile>,
) -> Result<()> {
    for entry in read_dir_sorted(dir)? {
        let name = entry
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default();
        if name.starts_with('.') {
            continue;
        }
        let meta = std::fs::symlink_metadata(&entry).map_err(|source| Error::Io {
            path: relative(root, &entry),
            message: "cannot stat".to_owned(),
            source,
        })?;
        let real = if meta.file_type().is_symlink() {
            let target = entry.canonicalize().map_err(|source| Error::Io {
                path: relative(root, &entry),
                message: "broken symlink".to_owned(),
                source,
            })?;
            if !target.starts_with(root) {
                return Err(Error::OutsideRepository {
                    path: relative(root, &entry),
                    root: root.to_owned(),
                    reason: "symlink leads outside the repository",
                });
            }
            target
        } else {
            entry.clone()
        };
        if real.is_dir() {
            // `policies/` beside stack.yaml holds the stack's own admission policies.
            let own_policies = entry.parent() == Some(stack_dir) && name == POLICIES_DIR;
            if own_policies
                || excluded.contains(&real)
                || (real != stack_dir && real.join(STACK_FILE).is_file())
            {
                continue;
            }
            collect_yaml(root, &real, stack_dir, excluded, limits, stack, out)?;
            continue;
        }
        let is_manifest =
            name.ends_with(".yaml") || name.ends_with(".yml") || name.ends_with(".json");
        let own_file =
            entry.parent() == Some(stack_dir) && (name == STACK_FILE || name == JOBS_FILE);
        if !is_manifest || own_file || excluded.contains(&real) {
            continue;
        }
        if out.len() >= limits.max_files_per_stack {
            return Err(Error::TooManyFiles {
                path: relative(root, dir),
                stack: stack.to_owned(),
                limit: limits.max_files_per_stack,
            });
        }
        let text = read_text(root, &real, limits)?;
        out.push(SourceFile {
            path: relative(root, &entry),
            text,
        });
    }
    Ok(())
}

fn read_dir_sorted(dir: &Path) -> Result<Vec<PathBuf>> {
    let io = |source| Error::Io {
        path: dir.to_owned(),
        message: "cannot read directory".to_owned(),
        source,
    };
    let mut entries = std::fs::read_dir(dir)
        .map_err(io)?
        .map(|e| e.map(|e| e.path()))
        .collect::<std::io::Result<Vec<_>>>()
        .map_err(io)?;
    entries.sort();
    Ok(entries)
}

fn read_text(root: &Path, path: &Path, limits: LoadLimits) -> Result<String> {
    let rel = relative(root, path);
    let io = |source| Error::Io {
        path: rel.clone(),
        message: "cannot read".to_owned(),
        source,
    };
    let size = std::fs::metadata(path).map_err(io)?.len();
    if size > limits.max_file_bytes {
        return Err(Error::FileTooLarge {
            path: rel,
            size,
            limit: limits.max_file_bytes,
        });
    }
    let bytes = std::fs::read(path).map_err(io)?;
    String::from_utf8(bytes).map_err(|_| Error::NotText { path: rel })
}

fn relative(root: &Path, path: &Path) -> PathBuf {
    path.strip_prefix(root)
        .map(Path::to_owned)
        .unwrap_or_else(|_| path.to_owned())
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
