//! Chart stacks (`spec.helm`): the chart directory is checked before Helm runs — no symlink out
//! of the repository (Helm follows them and `.Files.Get` would read what they lead to), no loop,
//! every dependency from a chart repository vendored in `charts/` — then `helm template` renders
//! it and its output is split into one source file per template.
//!
//! `helm template` never downloads dependencies (that is `helm dependency build`): a missing one
//! fails the render anyway. The check says so before Helm runs, naming the dependency.
//!
//! Helm does load what a `values.schema.json` references: `$ref`s resolve against
//! `file:///values.schema.json`, so `"$ref": "etc/passwd"` reads a host file and an `https://` one
//! is fetched. Only references within the schema itself (`#/...`) are accepted, and `$schema`
//! only for the JSON Schema drafts Helm knows without fetching them.

use std::path::{Path, PathBuf};

use serde_json::Value;

use super::external::{self, Renderers};
use super::model::SourceFile;
use super::{Error, Result};
use crate::repo_walk::{Kind, Repo, Step, Walk};

/// One chart render: the stack, its chart directory and values files (canonical, inside the
/// repository), and the release.
pub struct ChartRender<'a> {
    pub stack: &'a str,
    /// The stack's `stack.yaml`, relative to the repository root.
    pub file: &'a Path,
    /// The chart directory, canonical.
    pub chart: &'a Path,
    pub release: &'a str,
    pub namespace: Option<&'a str>,
    /// Values files in order, canonical.
    pub values: &'a [PathBuf],
}

/// Checks the chart, runs `helm template` and returns its output, one source file per template.
pub fn render(repo: &Repo, r: &ChartRender<'_>, renderers: &Renderers) -> Result<Vec<SourceFile>> {
    check(repo, r.stack, r.file, r.chart)?;
    let chart_rel = repo.relative(r.chart);
    let mut args: Vec<std::ffi::OsString> = vec![
        "template".into(),
        r.release.into(),
        chart_rel.clone().into(),
        "--include-crds".into(),
        "--skip-tests".into(),
    ];
    if let Some(ns) = r.namespace {
        args.extend(["--namespace".into(), ns.into()]);
    }
    for v in r.values {
        args.extend(["--values".into(), repo.relative(v).into()]);
    }
    let output = external::run(
        &external::Invocation {
            stack: r.stack,
            file: r.file,
            field: "spec.helm",
            program: &renderers.helm,
            args,
            cwd: repo.root(),
            install_hint: "install Helm (3 or 4), or set renderers.helm in the host configuration (or $DRIFTLESS_HELM)",
        },
        renderers.timeout,
    )?;
    Ok(split_helm_output(&chart_rel, &output))
}

/// Everything Helm would read from the chart directory stays in the repository, and every
/// dependency of the chart and its vendored subcharts that comes from a chart repository is in
/// their `charts/`.
fn check(repo: &Repo, stack: &str, file: &Path, chart: &Path) -> Result<()> {
    let input = |error| Error::RendererInput {
        file: file.to_owned(),
        stack: stack.to_owned(),
        field: "spec.helm.chart",
        error,
    };
    let mut charts = vec![chart.to_owned()];
    let mut schemas = Vec::new();
    // Hidden names too: Helm loads them unless .helmignore says otherwise.
    let how = Walk {
        follow_symlinks: true,
        include_hidden: true,
    };
    repo.walk(chart, how, |e| {
        let vendored = e.kind == Kind::Dir
            && e.path.parent().and_then(Path::file_name) == Some("charts".as_ref())
            && e.real.join("Chart.yaml").is_file();
        if vendored {
            charts.push(e.real.to_owned());
        }
        if e.kind == Kind::File && e.name == "values.schema.json" {
            schemas.push(e.path.to_owned());
        }
        Ok::<_, crate::repo_walk::Error>(Step::Enter)
    })
    .map_err(input)?;
    for dir in &charts {
        check_dependencies(repo, stack, dir)?;
    }
    for schema in &schemas {
        check_schema(repo, stack, schema)?;
    }
    Ok(())
}

/// A `values.schema.json` references nothing outside itself.
fn check_schema(repo: &Repo, stack: &str, path: &Path) -> Result<()> {
    let file = repo.relative(path);
    let refuse = |pointer: String, reference: String| Error::ChartSchemaReference {
        file: file.clone(),
        pointer,
        reference,
        stack: stack.to_owned(),
    };
    let text = repo.read_text(path)?;
    // Refused rather than skipped: what driftless cannot read, it cannot check.
    let schema: Value = serde_json::from_str(&text).map_err(|e| Error::StackFile {
        file: file.clone(),
        message: format!(
            "not JSON that driftless can check before Helm reads it: line {} column {}: {e}",
            e.line(),
            e.column()
        ),
    })?;
    match external_schema_reference(&schema, String::new()) {
        Some((pointer, reference)) => Err(refuse(pointer, reference)),
        None => Ok(()),
    }
}

/// The first `$ref`-like keyword of `v` that leaves the document, or `$schema` that is not a
/// JSON Schema draft, with its JSON pointer.
fn external_schema_reference(v: &Value, at: String) -> Option<(String, String)> {
    match v {
        Value::Object(m) => m.iter().find_map(|(k, x)| {
            let here = format!("{at}/{k}");
            match (k.as_str(), x) {
                ("$ref" | "$dynamicRef" | "$recursiveRef", Value::String(r))
                    if !r.starts_with('#') =>
                {
                    Some((here, r.clone()))
                }
                ("$schema", Value::String(s))
                    if !(s.starts_with("http://json-schema.org/")
                        || s.starts_with("https://json-schema.org/")) =>
                {
                    Some((here, s.clone()))
                }
                _ => external_schema_reference(x, here),
            }
        }),
        Value::Array(a) => a
            .iter()
            .enumerate()
            .find_map(|(i, x)| external_schema_reference(x, format!("{at}/{i}"))),
        _ => None,
    }
}

/// The chart at `dir`: each dependency with a chart repository (not `file://`) must be in
/// `charts/`, as a directory of its name or a `<name>-<version>.tgz` archive.
fn check_dependencies(repo: &Repo, stack: &str, dir: &Path) -> Result<()> {
    let chart_file = dir.join("Chart.yaml");
    let rel = repo.relative(&chart_file);
    let chart: Value = parse(repo, &chart_file)?;
    let mut deps_file = (rel, chart);
    // apiVersion v1 charts list them in requirements.yaml.
    let requirements = dir.join("requirements.yaml");
    if deps_file.1.get("dependencies").is_none() && requirements.is_file() {
        deps_file = (repo.relative(&requirements), parse(repo, &requirements)?);
    }
    let (file, value) = deps_file;
    let Some(deps) = value.get("dependencies").and_then(Value::as_array) else {
        return Ok(());
    };
    let vendored: Vec<String> = match std::fs::read_dir(dir.join("charts")) {
        Ok(entries) => entries
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .collect(),
        Err(_) => Vec::new(),
    };
    for (index, dep) in deps.iter().enumerate() {
        let name = dep.get("name").and_then(Value::as_str).unwrap_or_default();
        let repository = dep
            .get("repository")
            .and_then(Value::as_str)
            .unwrap_or_default();
        if repository.is_empty() || repository.starts_with("file://") {
            continue;
        }
        let archive = format!("{name}-");
        let present = vendored
            .iter()
            .any(|v| v == name || (v.starts_with(&archive) && v.ends_with(".tgz")));
        if !present {
            return Err(Error::ChartDependency {
                file,
                stack: stack.to_owned(),
                index,
                name: name.to_owned(),
                repository: repository.to_owned(),
            });
        }
    }
    Ok(())
}

fn parse(repo: &Repo, path: &Path) -> Result<Value> {
    let text = repo.read_text(path)?;
    let rel = repo.relative(path);
    Ok(crate::yaml::parse_documents(&rel, &text)?
        .into_iter()
        .next()
        .unwrap_or(Value::Null))
}

/// Splits `helm template` output into one source file per template (`# Source: chart/x.yaml`
/// comments), named by the template's path below `chart_dir` so that errors point at it.
pub fn split_helm_output(chart_dir: &Path, output: &str) -> Vec<SourceFile> {
    let mut files: Vec<SourceFile> = Vec::new();
    for chunk in split_documents(output) {
        if chunk.trim().is_empty() {
            continue;
        }
        let source = chunk
            .lines()
            .find_map(|l| l.strip_prefix("# Source: "))
            .map(|s| {
                // `<chart name>/templates/x.yaml`: the chart's own directory name may differ.
                let rest = s.trim().split_once('/').map_or(s.trim(), |(_, rest)| rest);
                chart_dir.join(rest)
            })
            .unwrap_or_else(|| chart_dir.to_owned());
        match files.last_mut() {
            Some(last) if last.path == source => {
                last.text.push_str("---\n");
                last.text.push_str(chunk);
            }
            _ => files.push(SourceFile {
                path: source,
                text: chunk.to_owned(),
            }),
        }
    }
    files
}

/// Splits a YAML stream at `---` lines, keeping each document's text.
fn split_documents(text: &str) -> Vec<&str> {
    let mut docs = Vec::new();
    let mut start = 0;
    let mut pos = 0;
    for line in text.split_inclusive('\n') {
        let bare = line.trim_end();
        if bare == "---" || bare.starts_with("--- ") {
            docs.push(&text[start..pos]);
            start = pos + line.len();
        }
        pos += line.len();
    }
    docs.push(&text[start..]);
    docs
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn helm_output_is_split_by_template() {
        let out = "---\n# Source: floe/templates/a.yaml\nkind: A\n---\n# Source: floe/templates/a.yaml\nkind: A2\n---\n# Source: floe/charts/sub/templates/b.yaml\nkind: B\n";
        let files = split_helm_output(Path::new("stack/floe/chart"), out);
        let names: Vec<_> = files.iter().map(|f| f.path.display().to_string()).collect();
        assert_eq!(
            names,
            [
                "stack/floe/chart/templates/a.yaml",
                "stack/floe/chart/charts/sub/templates/b.yaml"
            ]
        );
        assert!(files[0].text.contains("kind: A\n---\n"));
        assert!(files[0].text.contains("kind: A2"));
    }
}
