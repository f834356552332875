//! External renderers: `helm template` for a stack's local chart and `kubectl kustomize` for a
//! Kustomize directory. The only part of rendering that runs programs: their output becomes
//! source files of the stack, which then go through the same parsing, checks and plan as plain
//! manifests (`render`).

use std::ffi::OsString;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::load::SourceFile;
use super::{Error, Result};

/// Which programs render charts and Kustomize directories, and how long they may take.
#[derive(Debug, Clone)]
pub struct Renderers {
    /// `helm` (a name looked up in `PATH`, or a path).
    pub helm: PathBuf,
    /// `kubectl`, for `kubectl kustomize`.
    pub kubectl: PathBuf,
    /// Longest a single render may run.
    pub timeout: Duration,
}

/// Default `renderers.timeout`.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);

/// Largest rendered output accepted from one renderer run.
const MAX_OUTPUT: usize = 64 * 1024 * 1024;

impl Default for Renderers {
    /// `$DRIFTLESS_HELM` / `$DRIFTLESS_KUBECTL` when set, else `helm` / `kubectl` from `PATH`.
    fn default() -> Self {
        let from_env = |var: &str, name: &str| {
            std::env::var_os(var)
                .filter(|v| !v.is_empty())
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from(name))
        };
        Renderers {
            helm: from_env("DRIFTLESS_HELM", "helm"),
            kubectl: from_env("DRIFTLESS_KUBECTL", "kubectl"),
            timeout: DEFAULT_TIMEOUT,
        }
    }
}

/// What one render is: the stack it is for, the tool and its arguments.
pub struct Invocation<'a> {
    pub stack: &'a str,
    /// The stack's `stack.yaml`, relative to the repository root (for errors).
    pub file: &'a Path,
    /// `spec.helm` or `spec.kustomize` (for errors).
    pub field: &'static str,
    pub program: &'a Path,
    pub args: Vec<OsString>,
    /// Working directory: the repository root.
    pub cwd: &'a Path,
    /// Advice when the program is missing.
    pub install_hint: &'static str,
}

/// Runs a renderer and returns its standard output as text. A missing program, a non-zero exit,
/// a timeout, oversized or non-UTF-8 output are errors naming the stack and the command.
pub fn run(inv: &Invocation<'_>, timeout: Duration) -> Result<String> {
    let command_line = || {
        let mut line = inv.program.display().to_string();
        for a in &inv.args {
            line.push(' ');
            line.push_str(&a.to_string_lossy());
        }
        line
    };
    let failed = |message: String| Error::RenderFailed {
        file: inv.file.to_owned(),
        stack: inv.stack.to_owned(),
        field: inv.field,
        command: command_line(),
        message,
    };
    // Helm keeps caches and configuration in $HOME; a render needs none of it and the service
    // may not write there (ProtectHome): point them at an empty, private place.
    let scratch = std::env::temp_dir().join(format!("driftless-render-{}", std::process::id()));
    let mut child = Command::new(inv.program)
        .args(&inv.args)
        .current_dir(inv.cwd)
        .env("HELM_CACHE_HOME", scratch.join("cache"))
        .env("HELM_CONFIG_HOME", scratch.join("config"))
        .env("HELM_DATA_HOME", scratch.join("data"))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                Error::RendererMissing {
                    file: inv.file.to_owned(),
                    stack: inv.stack.to_owned(),
                    field: inv.field,
                    program: inv.program.display().to_string(),
                    hint: inv.install_hint,
                }
            } else {
                failed(format!("cannot start: {e}"))
            }
        })?;
    let stdout = child.stdout.take();
    let stderr = child.stderr.take();
    let out_reader = std::thread::spawn(move || read_capped(stdout, MAX_OUTPUT));
    let err_reader = std::thread::spawn(move || read_capped(stderr, 64 * 1024));
    let deadline = Instant::now() + timeout;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break Some(status),
            Ok(None) if Instant::now() >= deadline => {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(10)),
            Err(e) => {
                let _ = child.kill();
                return Err(failed(format!("cannot wait for it: {e}")));
            }
        }
    };
    let _ = std::fs::remove_dir_all(&scratch);
    let Some(status) = status else {
        // The readers are left to finish on their own: a child the renderer started may still
        // hold the pipes open.
        return Err(failed(format!(
            "did not finish within {:?} (renderers.timeout in the host configuration)",
            timeout
        )));
    };
    let (out, out_overflow) = out_reader.join().unwrap_or_default();
    let (err, _) = err_reader.join().unwrap_or_default();
    if !status.success() {
        return Err(failed(format!("{status}: {}", tail(&err, 20))));
    }
    if out_overflow {
        return Err(failed(format!(
            "rendered more than {} MiB",
            MAX_OUTPUT / 1024 / 1024
        )));
    }
    String::from_utf8(out).map_err(|_| failed("rendered output is not UTF-8".to_owned()))
}

/// Reads a pipe to its end, keeping at most `cap` bytes; says whether more came.
fn read_capped(pipe: Option<impl Read>, cap: usize) -> (Vec<u8>, bool) {
    let Some(mut pipe) = pipe else {
        return (Vec::new(), false);
    };
    let mut kept = Vec::new();
    let mut overflow = false;
    let mut buf = [0u8; 64 * 1024];
    loop {
        match pipe.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if kept.len() + n > cap {
                    overflow = true;
                } else {
                    kept.extend_from_slice(&buf[..n]);
                }
            }
        }
    }
    (kept, overflow)
}

/// The last `lines` non-empty lines of a program's error output.
fn tail(bytes: &[u8], lines: usize) -> String {
    let text = String::from_utf8_lossy(bytes);
    let all: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    let start = all.len().saturating_sub(lines);
    let joined = all[start..].join("\n");
    if joined.is_empty() {
        "no error output".to_owned()
    } else {
        joined
    }
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

    #[test]
    fn a_missing_program_is_named_with_advice() {
        let inv = Invocation {
            stack: "web",
            file: Path::new("stack/web/stack.yaml"),
            field: "spec.helm",
            program: Path::new("/nonexistent/helm"),
            args: vec![],
            cwd: Path::new("/"),
            install_hint: "install Helm",
        };
        let err = run(&inv, Duration::from_secs(5)).unwrap_err().to_string();
        assert!(err.contains("stack/web/stack.yaml"), "{err}");
        assert!(err.contains("/nonexistent/helm"), "{err}");
        assert!(err.contains("install Helm"), "{err}");
    }

    #[test]
    fn failures_and_timeouts_name_the_command() {
        let sh = Path::new("/bin/sh");
        let mut inv = Invocation {
            stack: "web",
            file: Path::new("stack/web/stack.yaml"),
            field: "spec.kustomize",
            program: sh,
            args: vec![
                "-c".into(),
                "echo 'Error: no kustomization' >&2; exit 3".into(),
            ],
            cwd: Path::new("/"),
            install_hint: "",
        };
        let err = run(&inv, Duration::from_secs(5)).unwrap_err().to_string();
        assert!(err.contains("no kustomization"), "{err}");
        assert!(err.contains("exit status: 3"), "{err}");
        inv.args = vec!["-c".into(), "sleep 5".into()];
        let t = Instant::now();
        let err = run(&inv, Duration::from_millis(200))
            .unwrap_err()
            .to_string();
        assert!(err.contains("did not finish within"), "{err}");
        assert!(t.elapsed() < Duration::from_secs(3));
        inv.args = vec!["-c".into(), "printf 'kind: A\\n'".into()];
        assert_eq!(run(&inv, Duration::from_secs(5)).unwrap(), "kind: A\n");
    }
}
