//! Kustomize stacks (`spec.kustomize`): every kustomization reachable from the stack's directory
//! is read and checked before `kubectl kustomize` runs, then its output becomes one source file.
//!
//! Kustomize fetches what a kustomization names remotely — `resources`, `bases` and `components`
//! entries that are URLs or Git repositories (`https://…`, `git::…`, `github.com/org/repo//dir`,
//! `ssh://…`, and any entry that is not a local path: kustomize then tries it as a repository),
//! files loaded over HTTP (`patches[].path`, generators' `files`/`envs`, `openapi.path`, …) and
//! charts of `helmCharts` with a `repo`. Renders are offline: each of these is refused, naming
//! the kustomization file, the field and the entry. Local entries must stay in the repository,
//! and no symlink in a kustomization's directory may lead outside it.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use serde_json::Value;

use super::external::{self, Renderers};
use super::model::SourceFile;
use super::{Error, Result};
use crate::repo_walk::{Repo, Step, Walk};

/// Names kustomize looks for in a kustomization directory, in its order.
const KUSTOMIZATION_FILES: [&str; 3] = ["kustomization.yaml", "kustomization.yml", "Kustomization"];

/// Most kustomization directories one stack may reach.
const MAX_KUSTOMIZATIONS: usize = 1000;

/// Checks the Kustomize directory `dir` (canonical; `path` as written in `field` of the stack
/// file `file`) and everything it reaches, runs `kubectl kustomize` and returns its output.
pub fn render(
    repo: &Repo,
    stack: &str,
    file: &Path,
    field: &'static str,
    path: &str,
    dir: &Path,
    renderers: &Renderers,
) -> Result<Vec<SourceFile>> {
    if kustomization_file(dir).is_none() {
        return Err(Error::StackFile {
            file: file.to_owned(),
            message: format!("{field}: {path:?} holds no kustomization.yaml"),
        });
    }
    check(repo, stack, file, dir)?;
    let rel = repo.relative(dir);
    let output = external::run(
        &external::Invocation {
            stack,
            file,
            field: "spec.kustomize",
            program: &renderers.kubectl,
            args: vec!["kustomize".into(), rel.clone().into()],
            cwd: repo.root(),
            install_hint: "install kubectl, or set renderers.kubectl in the host configuration (or $DRIFTLESS_KUBECTL)",
        },
        renderers.timeout,
    )?;
    Ok(vec![SourceFile {
        path: rel,
        text: output,
    }])
}

fn kustomization_file(dir: &Path) -> Option<PathBuf> {
    KUSTOMIZATION_FILES
        .iter()
        .map(|k| dir.join(k))
        .find(|p| p.is_file())
}

/// How kustomize uses a string a kustomization names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Use {
    /// `resources`, `bases`, `components`: a file, a kustomization directory, or else a remote.
    Base,
    /// A file kustomize loads (from a URL too, if it is one).
    File,
    /// A generator's `files` entry: `key=path` or `path`.
    KeyedFile,
    /// `generators`, `transformers`, `validators`: a file or directory, or inline configuration.
    Plugin,
    /// A field whose any value is a remote source (`helmCharts[].repo`).
    Remote,
}

/// What is wrong with an entry.
struct Refusal {
    field: String,
    entry: String,
    problem: String,
}

/// Reads every kustomization reachable from `start` and refuses remote or outside references,
/// and symlinks out of the repository in their directories.
fn check(repo: &Repo, stack: &str, stack_file: &Path, start: &Path) -> Result<()> {
    let mut queue = vec![start.to_owned()];
    let mut seen = BTreeSet::new();
    while let Some(dir) = queue.pop() {
        if !seen.insert(dir.clone()) {
            continue;
        }
        if seen.len() > MAX_KUSTOMIZATIONS {
            return Err(Error::StackFile {
                file: stack_file.to_owned(),
                message: format!(
                    "spec.kustomize reaches more than {MAX_KUSTOMIZATIONS} kustomization directories"
                ),
            });
        }
        // Kustomize follows symlinks in the directory it loads from: none may lead outside.
        let how = Walk {
            follow_symlinks: true,
            include_hidden: true,
        };
        repo.walk(&dir, how, |_| Ok::<_, crate::repo_walk::Error>(Step::Enter))
            .map_err(|error| Error::RendererInput {
                file: stack_file.to_owned(),
                stack: stack.to_owned(),
                field: "spec.kustomize",
                error,
            })?;
        let Some(kfile) = kustomization_file(&dir) else {
            continue;
        };
        let rel = repo.relative(&kfile);
        let text = repo.read_text(&kfile)?;
        let Some(k) = crate::yaml::parse_documents(&rel, &text)?
            .into_iter()
            .next()
        else {
            continue;
        };
        let refuse = |r: Refusal| Error::KustomizeReference {
            file: rel.clone(),
            field: r.field,
            entry: r.entry,
            problem: r.problem,
            stack: stack.to_owned(),
            stack_file: stack_file.to_owned(),
        };
        for (field, entry, how) in references(&k) {
            if let Some(next) = check_entry(repo, &dir, &field, &entry, how).map_err(refuse)? {
                queue.push(next);
            }
        }
    }
    Ok(())
}

/// Every string of the kustomization `k` that names content, with its field and use.
fn references(k: &Value) -> Vec<(String, String, Use)> {
    let mut out = Vec::new();
    let strings = |v: Option<&Value>| -> Vec<(usize, String)> {
        v.and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .enumerate()
                    .filter_map(|(i, s)| Some((i, s.as_str()?.to_owned())))
                    .collect()
            })
            .unwrap_or_default()
    };
    let list = |name: &str, how: Use, out: &mut Vec<(String, String, Use)>| {
        for (i, s) in strings(k.get(name)) {
            out.push((format!("{name}[{i}]"), s, how));
        }
    };
    list("resources", Use::Base, &mut out);
    list("bases", Use::Base, &mut out);
    list("components", Use::Base, &mut out);
    list("crds", Use::File, &mut out);
    list("configurations", Use::File, &mut out);
    list("generators", Use::Plugin, &mut out);
    list("transformers", Use::Plugin, &mut out);
    list("validators", Use::Plugin, &mut out);
    for (i, s) in strings(k.get("patchesStrategicMerge")) {
        // An inline patch is content, not a path.
        if !s.contains('\n') {
            out.push((format!("patchesStrategicMerge[{i}]"), s, Use::File));
        }
    }
    let items = |name: &str| -> Vec<(usize, &Value)> {
        k.get(name)
            .and_then(Value::as_array)
            .map(|a| a.iter().enumerate().collect())
            .unwrap_or_default()
    };
    let field = |item: &Value, key: &str| item.get(key).and_then(Value::as_str).map(str::to_owned);
    for name in ["patches", "patchesJson6902", "replacements"] {
        for (i, item) in items(name) {
            if let Some(p) = field(item, "path") {
                out.push((format!("{name}[{i}].path"), p, Use::File));
            }
        }
    }
    for name in ["configMapGenerator", "secretGenerator"] {
        for (i, item) in items(name) {
            for (j, f) in strings(item.get("files")) {
                out.push((format!("{name}[{i}].files[{j}]"), f, Use::KeyedFile));
            }
            for (j, f) in strings(item.get("envs")) {
                out.push((format!("{name}[{i}].envs[{j}]"), f, Use::File));
            }
            if let Some(f) = field(item, "env") {
                out.push((format!("{name}[{i}].env"), f, Use::File));
            }
        }
    }
    for (i, item) in items("helmCharts") {
        if let Some(r) = field(item, "repo").filter(|r| !r.is_empty()) {
            out.push((format!("helmCharts[{i}].repo"), r, Use::Remote));
        }
        if let Some(v) = field(item, "valuesFile") {
            out.push((format!("helmCharts[{i}].valuesFile"), v, Use::File));
        }
        for (j, v) in strings(item.get("additionalValuesFiles")) {
            out.push((
                format!("helmCharts[{i}].additionalValuesFiles[{j}]"),
                v,
                Use::File,
            ));
        }
    }
    for (i, item) in items("helmChartInflationGenerator") {
        if let Some(r) = field(item, "chartRepoUrl").filter(|r| !r.is_empty()) {
            out.push((
                format!("helmChartInflationGenerator[{i}].chartRepoUrl"),
                r,
                Use::Remote,
            ));
        }
        if let Some(v) = field(item, "values") {
            out.push((
                format!("helmChartInflationGenerator[{i}].values"),
                v,
                Use::File,
            ));
        }
    }
    if let Some(globals) = k.get("helmGlobals") {
        for key in ["chartHome", "configHome"] {
            if let Some(p) = field(globals, key) {
                out.push((format!("helmGlobals.{key}"), p, Use::File));
            }
        }
    }
    if let Some(p) = k.get("openapi").and_then(|o| field(o, "path")) {
        out.push(("openapi.path".to_owned(), p, Use::File));
    }
    out
}

/// A URL or a Git remote as kustomize spells them.
fn looks_remote(s: &str) -> bool {
    s.contains("://") || s.starts_with("git::") || s.starts_with("git@") || s.starts_with("gh:")
}

const OFFLINE: &str =
    "a remote reference: renders are offline and never fetch; vendor it into the repository";

/// Checks one entry of the kustomization in `dir`; returns a directory to read next.
fn check_entry(
    repo: &Repo,
    dir: &Path,
    field: &str,
    entry: &str,
    how: Use,
) -> std::result::Result<Option<PathBuf>, Refusal> {
    let refusal = |field: String, entry: &str, problem: String| Refusal {
        field,
        entry: entry.to_owned(),
        problem,
    };
    if how == Use::Remote || looks_remote(entry) {
        return Err(refusal(field.to_owned(), entry, OFFLINE.to_owned()));
    }
    if how == Use::Plugin && entry.contains('\n') {
        // Inline plugin configuration: it may name files to load, by URL too.
        return match remote_in_text(Path::new(field), entry) {
            Some((at, url)) => Err(refusal(format!("{field} {at}"), &url, OFFLINE.to_owned())),
            None => Ok(None),
        };
    }
    let path = match how {
        Use::KeyedFile => dir.join(entry.split_once('=').map_or(entry, |(_, p)| p)),
        _ => dir.join(entry),
    };
    if std::fs::symlink_metadata(&path).is_err() {
        return match how {
            Use::Base => Err(refusal(
                field.to_owned(),
                entry,
                "neither a file nor a directory in the repository: kustomize would fetch it as a remote Git repository; vendor it into the repository".to_owned(),
            )),
            // Kustomize reports a missing file itself, without fetching anything.
            _ => Ok(None),
        };
    }
    let real = repo
        .resolve(&path)
        .map_err(|e| refusal(field.to_owned(), entry, e.to_string()))?;
    if real.is_dir() {
        return Ok(matches!(how, Use::Base | Use::Plugin).then_some(real));
    }
    if how == Use::Plugin {
        let text = repo
            .read_text(&real)
            .map_err(|e| refusal(field.to_owned(), entry, e.to_string()))?;
        if let Some((at, url)) = remote_in_text(&repo.relative(&real), &text) {
            return Err(refusal(
                format!("{field} ({}) {at}", repo.relative(&real).display()),
                &url,
                OFFLINE.to_owned(),
            ));
        }
    }
    Ok(None)
}

/// The first string of the YAML `text` that looks like a URL or Git remote, with where it is
/// (`.path`, `.spec.files[0]`). Text that does not parse is left to kustomize.
fn remote_in_text(name: &Path, text: &str) -> Option<(String, String)> {
    let docs = crate::yaml::parse_documents(name, text).ok()?;
    docs.iter().find_map(|d| remote_in_value(d, String::new()))
}

fn remote_in_value(v: &Value, at: String) -> Option<(String, String)> {
    match v {
        Value::String(s) if looks_remote(s) => Some((at, s.clone())),
        Value::Array(a) => a
            .iter()
            .enumerate()
            .find_map(|(i, x)| remote_in_value(x, format!("{at}[{i}]"))),
        Value::Object(m) => m
            .iter()
            .find_map(|(k, x)| remote_in_value(x, format!("{at}.{k}"))),
        _ => None,
    }
}
